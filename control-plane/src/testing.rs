//! Test helpers: throwaway databases (a fresh Postgres database or SQLite
//! file per test) and in-process servers on loopback.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::Connection;
use switchyard::pb::operator_service_client::OperatorServiceClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::server::{self, Config};
use crate::store;

static NEXT: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!(
        "{prefix}_{}_{}_{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The Postgres server tests use: `DATABASE_URL`, or the local default.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database that exists for one test.
#[derive(Debug)]
pub enum TestDb {
    /// A fresh Postgres database, dropped with the value.
    Postgres {
        /// Its URL.
        url: String,
        /// Its name.
        name: String,
    },
    /// An SQLite file in a directory removed with the value.
    Sqlite {
        /// Its URL.
        url: String,
        /// The directory.
        dir: TempDir,
    },
}

impl TestDb {
    /// Creates a fresh database on the test Postgres server.
    pub async fn postgres() -> TestDb {
        let name = unique("sy_test");
        let mut admin = sqlx::PgConnection::connect(&admin_url())
            .await
            .unwrap_or_else(|e| {
                panic!("tests need Postgres at DATABASE_URL ({}): {e}", admin_url())
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        admin.close().await.ok();
        let base = admin_url();
        let url = match base.rfind('/') {
            Some(i) if base[..i].contains("//") && !base[i..].contains('@') => {
                let (head, tail) = base.split_at(i);
                let query = tail.find('?').map(|q| &tail[q..]).unwrap_or("");
                format!("{head}/{name}{query}")
            }
            _ => format!("{base}/{name}"),
        };
        TestDb::Postgres { url, name }
    }

    /// Creates a fresh SQLite file.
    pub fn sqlite() -> TestDb {
        let dir = TempDir::new();
        let url = format!("sqlite://{}", dir.path().join("switchyard.db").display());
        TestDb::Sqlite { url, dir }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        match self {
            TestDb::Postgres { url, .. } | TestDb::Sqlite { url, .. } => url,
        }
    }

    /// Opens a store on it.
    pub async fn store(&self) -> store::Any {
        store::Any::connect(self.url()).await.expect("open store")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let TestDb::Postgres { name, .. } = self {
            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            // Drop cannot await; a short-lived thread with its own runtime
            // removes the database so test runs leave nothing behind.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let mut admin = sqlx::PgConnection::connect(&admin_url()).await.ok()?;
                    sqlx::query(&sql).execute(&mut admin).await.ok()
                })
            })
            .join();
        }
    }
}

/// A directory removed when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates a fresh directory under the system's temporary directory.
    pub fn new() -> TempDir {
        let path = std::env::temp_dir().join(unique("switchyard"));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Postgres server of a test's own, on a free loopback port, that the
/// test may stop and start again: outage tests use it, never the shared
/// server at `DATABASE_URL`. Built with the Debian `postgresql` binaries
/// (`initdb`, `pg_ctl` under `/usr/lib/postgresql/*/bin`, or on `PATH`);
/// run as the `postgres` user when the test runs as root (initdb refuses
/// root). Removed, data and all, when dropped.
#[derive(Debug)]
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The user the server runs as, when the test runs as root.
    user: Option<&'static str>,
}

impl PgServer {
    /// Initialises and starts a server; panics, saying what is missing,
    /// when the Postgres binaries are not installed.
    pub async fn start() -> PgServer {
        tokio::task::spawn_blocking(Self::start_blocking)
            .await
            .expect("starting Postgres")
    }

    fn start_blocking() -> PgServer {
        let bin = pg_bindir().expect(
            "outage tests need the Postgres server binaries (initdb, pg_ctl): \
             install the Debian package `postgresql`",
        );
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        let user = root.then_some("postgres");
        // Under /tmp: reachable by the postgres user, short enough for the
        // server's socket path.
        let dir = PathBuf::from("/tmp").join(unique("sy_pg"));
        std::fs::create_dir_all(&dir).expect("create Postgres directory");
        let server = PgServer {
            bin,
            dir,
            port: std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port(),
            user,
        };
        if let Some(user) = user {
            server.run("chown", &[user, &server.dir.display().to_string()]);
        }
        let data = server.data();
        let initdb = server.bin.join("initdb").display().to_string();
        server.run_as(&[
            &initdb,
            "-D",
            &data,
            "--auth=trust",
            "-U",
            "postgres",
            "--encoding=UTF8",
            "--locale=C",
        ]);
        server.start_again_blocking();
        server
    }

    /// Its URL (the `postgres` database, superuser `postgres`).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast shutdown: sessions are ended, as when a
    /// database is stopped for maintenance) and waits until it is down.
    pub async fn stop(&self) {
        let ctl = self.ctl();
        let data = self.data();
        let user = self.user;
        tokio::task::spawn_blocking(move || {
            run_as(user, &[&ctl, "-D", &data, "-m", "fast", "-w", "stop"])
        })
        .await
        .expect("stopping Postgres");
    }

    /// Starts the stopped server again on the same port, with the same
    /// data, and waits until it accepts connections.
    pub async fn start_again(&self) {
        let (ctl, data, log) = (self.ctl(), self.data(), self.log());
        let (options, user) = (self.options(), self.user);
        tokio::task::spawn_blocking(move || start_server(user, &ctl, &data, &log, &options))
            .await
            .expect("starting Postgres");
    }

    fn start_again_blocking(&self) {
        start_server(
            self.user,
            &self.ctl(),
            &self.data(),
            &self.log(),
            &self.options(),
        );
    }

    fn options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.display()
        )
    }

    fn log(&self) -> String {
        self.dir.join("postgres.log").display().to_string()
    }

    fn ctl(&self) -> String {
        self.bin.join("pg_ctl").display().to_string()
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn run_as(&self, argv: &[&str]) {
        run_as(self.user, argv)
    }

    fn run(&self, program: &str, args: &[&str]) {
        run_as(None, &[&[program], args].concat())
    }
}

/// `pg_ctl start`, waiting until the server accepts connections.
fn start_server(user: Option<&str>, ctl: &str, data: &str, log: &str, options: &str) {
    run_as(
        user,
        &[
            ctl, "-D", data, "-l", log, "-w", "-t", "60", "-o", options, "start",
        ],
    );
}

/// Runs `argv` (as `user`, if set), panicking with its output on failure.
fn run_as(user: Option<&str>, argv: &[&str]) {
    let mut command = match user {
        Some(user) => {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", user, "--"]).args(argv);
            c
        }
        None => {
            let mut c = std::process::Command::new(argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    // The server's working directory must be readable by its user.
    let output = command
        .current_dir("/tmp")
        .output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"));
    assert!(
        output.status.success(),
        "{argv:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The directory of `initdb` and `pg_ctl`: on `PATH`, else the newest
/// `/usr/lib/postgresql/*/bin` (as `scripts/lib/postgres.sh` finds them).
fn pg_bindir() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path)
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    {
        return Some(dir);
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let ctl = self.ctl();
        let data = self.data();
        // Whether it runs or not: an immediate stop, then the files go.
        let _ = std::process::Command::new(if self.user.is_some() { "runuser" } else { &ctl })
            .args(match self.user {
                Some(user) => vec![
                    "-u",
                    user,
                    "--",
                    &ctl,
                    "-D",
                    &data,
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
                None => vec!["-D", &data, "-m", "immediate", "-w", "stop"],
            })
            .current_dir("/tmp")
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A control-plane server running in this process on a loopback port.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves its metrics (`GET /metrics`).
    pub metrics_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), server::Error>>>,
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0` over the database at `url`; it is
    /// ready to serve when this returns.
    pub async fn start(url: &str) -> TestServer {
        Self::start_with(url, Self::config()).await
    }

    /// The defaults tests start from: node status written every 50 ms so
    /// that tests observe it promptly.
    pub fn config() -> Config {
        Config {
            node_status_interval: std::time::Duration::from_millis(50),
            ..Config::default()
        }
    }

    /// Like [`TestServer::start`], with `config`; its `listen` address is
    /// used unless it is the default, which becomes `127.0.0.1:0`. Metrics
    /// are served on `config.metrics_listen`, or else on `127.0.0.1:0`.
    pub async fn start_with(url: &str, config: Config) -> TestServer {
        let store = store::Any::connect(url).await.expect("open store");
        let listen = if config.listen == Config::default().listen {
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            config.listen
        };
        let listener = TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let metrics_listen = config
            .metrics_listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let metrics = TcpListener::bind(metrics_listen)
            .await
            .expect("bind metrics");
        let metrics_addr = metrics.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let config = Config {
            database_url: url.into(),
            ..config
        };
        let token = shutdown.clone();
        let task = tokio::spawn(async move {
            let listeners = server::Listeners {
                grpc: listener,
                metrics: Some(metrics),
            };
            let result = server::serve_with(listeners, store.clone(), &config, token).await;
            store.close().await;
            result
        });
        TestServer {
            addr,
            metrics_addr,
            shutdown,
            task: Some(task),
        }
    }

    /// A connected operator client.
    pub async fn client(&self) -> OperatorServiceClient<tonic::transport::Channel> {
        OperatorServiceClient::connect(format!("http://{}", self.addr))
            .await
            .expect("connect")
    }

    /// The server's address as an `http://` URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its metrics, as text (one `GET /metrics`).
    pub async fn metrics(&self) -> String {
        scrape(self.metrics_addr).await
    }

    /// Shuts the server down and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A `switchyard-cp` process, for tests that need a real crash (`kill -9`)
/// or a real signal.
#[derive(Debug)]
pub struct CpProcess {
    /// The process.
    pub child: tokio::process::Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where it serves its metrics: a free loopback port unless `extra`
    /// set `--metrics-listen` otherwise.
    pub metrics_addr: Option<SocketAddr>,
    // Drains the process's log so it never blocks on a full pipe; ends with it.
    _log: JoinHandle<()>,
}

/// The `switchyard-cp` binary next to the running test's directory
/// (`target/<profile>/`), built by `cargo test` / `cargo nextest` for the workspace.
pub fn cp_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target directory");
    let bin = dir.join("switchyard-cp");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build --workspace --bins`",
        bin.display()
    );
    bin
}

impl CpProcess {
    /// Starts `switchyard-cp` over `database_url` on `listen` (port 0 picks a
    /// free one) with `extra` flags, and waits for its "listening" log line.
    /// Its metrics go to a free loopback port, so that several processes
    /// can run at once.
    pub async fn start(database_url: &str, listen: SocketAddr, extra: &[&str]) -> CpProcess {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = tokio::process::Command::new(cp_binary())
            .args([
                "--listen",
                &listen.to_string(),
                "--database-url",
                database_url,
            ])
            .args(extra)
            .env("SWITCHYARD_LOG_FORMAT", "json")
            .env("SWITCHYARD_METRICS_LISTEN", "127.0.0.1:0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchyard-cp");
        let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
        let addr_of = |line: &str| -> SocketAddr {
            let start = line.find("\"addr\":\"").expect("addr field") + 8;
            let end = start + line[start..].find('"').expect("addr end");
            line[start..end].parse().expect("addr")
        };
        let mut metrics_addr = None;
        let addr = tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read log") {
                if line.contains("\"serving metrics at /metrics\"") {
                    metrics_addr = Some(addr_of(&line));
                }
                if line.contains("\"listening\"") {
                    return addr_of(&line);
                }
            }
            panic!("switchyard-cp exited before listening");
        })
        .await
        .expect("switchyard-cp did not start in time");
        let log = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        CpProcess {
            child,
            addr,
            metrics_addr,
            _log: log,
        }
    }

    /// Its address as an `http://` URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected operator client.
    pub async fn client(&self) -> OperatorServiceClient<tonic::transport::Channel> {
        OperatorServiceClient::connect(self.url())
            .await
            .expect("connect")
    }

    /// `kill -9`, and waits for the process to be gone.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("kill");
        self.child.wait().await.expect("wait");
    }
}

/// One `GET /metrics` from `addr`: the body, after checking that the
/// answer is a 200 in the Prometheus text format.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to metrics");
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: metrics\r\nconnection: close\r\n\r\n")
        .await
        .expect("send scrape");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("read scrape");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains(&format!(
            "content-type: {}",
            switchyard::metrics::CONTENT_TYPE
        )),
        "{head}"
    );
    body.to_owned()
}

/// Instantiates each `async fn name(db: TestDb)` in the calling test file
/// twice, as `postgres::name` (a fresh Postgres database) and `sqlite::name`
/// (a fresh SQLite file), so that both backends pass the same tests.
#[macro_export]
macro_rules! both_backends {
    ($($test:ident),* $(,)?) => {
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $test() {
                  super::$test($crate::testing::TestDb::postgres().await).await
              })*
        }
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
              async fn $test() {
                  super::$test($crate::testing::TestDb::sqlite()).await
              })*
        }
    };
}

/// Small valid resources for tests and benchmarks.
pub mod fixtures {
    use switchyard::pb;

    /// An Apply item holding `kind`, with no revision expectation.
    pub fn item(kind: pb::resource::Kind) -> pb::ApplyItem {
        pb::ApplyItem {
            resource: Some(pb::Resource {
                kind: Some(kind),
                ..Default::default()
            }),
            expected_revision: None,
        }
    }

    /// An HTTP service with default settings.
    pub fn service(name: &str) -> pb::resource::Kind {
        pb::resource::Kind::Service(pb::Service {
            name: name.into(),
            ..Default::default()
        })
    }

    /// An endpoint of `service` on `127.0.0.1:port`, owned by no node.
    pub fn endpoint(name: &str, service: &str, port: u32) -> pb::Endpoint {
        pb::Endpoint {
            name: name.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port,
            ..Default::default()
        }
    }

    /// A route sending every request to `service`.
    pub fn route_to(name: &str, service: &str) -> pb::resource::Kind {
        pb::resource::Kind::Route(pb::Route {
            name: name.into(),
            rules: vec![pb::RouteRule {
                matches: vec![],
                action: Some(pb::RouteAction {
                    destinations: vec![pb::WeightedDestination {
                        service: service.into(),
                        weight: 1,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }],
            ..Default::default()
        })
    }

    /// An HTTP listener on `address:port` in front of `route`, for every node.
    pub fn listener(name: &str, address: &str, port: u32, route: &str) -> pb::Listener {
        pb::Listener {
            name: name.into(),
            address: address.into(),
            port,
            target: Some(pb::listener::Target::Route(route.into())),
            ..Default::default()
        }
    }
}
