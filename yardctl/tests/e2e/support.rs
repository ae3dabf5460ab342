//! Running `yardctl` and looking at what it did.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use switchyard::pb;
use switchyard_control_plane::auth;
use switchyard_control_plane::server::Config;
use switchyard_control_plane::testing::{TestDb, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// How long any wait in these tests may take before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// What one run of `yardctl` did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts exit 0 and returns stdout.
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "yardctl failed: {self:?}");
        &self.stdout
    }

    /// Asserts exit `code` with exactly one `error: ` line on stderr, and
    /// returns that line.
    #[track_caller]
    pub fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "unexpected exit code: {self:?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:?}");
        assert!(lines[0].starts_with("error: "), "{self:?}");
        lines[0]
    }

    /// stdout's lines.
    pub fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// A `yardctl` command against `server`, with no `YARD_*` settings leaking
/// in from the environment.
pub fn command(server: &str, args: &[&str]) -> Command {
    let mut cmd = bare(&["--server", server]);
    cmd.args(args);
    cmd
}

/// A `yardctl ARGS` command with no `YARD_*` settings from the environment
/// and no `--server`.
pub fn bare(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_yardctl"));
    for var in [
        "YARD_SERVER",
        "YARD_TOKEN",
        "YARD_CA_CERT",
        "YARD_CLIENT_CERT",
        "YARD_CLIENT_KEY",
    ] {
        cmd.env_remove(var);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `yardctl ARGS` against `server` and waits for it.
pub async fn yardctl(server: &TestServer, args: &[&str]) -> Run {
    yardctl_at(&server.url(), args).await
}

/// Runs `yardctl --token SECRET ARGS` against `server`.
pub async fn yardctl_as(server: &TestServer, secret: &str, args: &[&str]) -> Run {
    let mut all = vec!["--token", secret];
    all.extend_from_slice(args);
    yardctl(server, &all).await
}

/// Runs `yardctl ARGS` against the address `server`.
pub async fn yardctl_at(server: &str, args: &[&str]) -> Run {
    run(command(server, args)).await
}

/// Runs `yardctl ARGS` with `input` on stdin.
pub async fn yardctl_stdin(server: &TestServer, args: &[&str], input: &str) -> Run {
    let mut cmd = command(&server.url(), args);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn yardctl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.as_bytes())
        .await
        .expect("write stdin");
    drop(stdin);
    finish(child).await
}

/// Runs `cmd` and waits for it.
pub async fn run(mut cmd: Command) -> Run {
    finish(cmd.spawn().expect("spawn yardctl")).await
}

async fn finish(child: tokio::process::Child) -> Run {
    let output = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("yardctl finished in time")
        .expect("yardctl ran");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

/// The repository's `examples/` folder.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// One file of `examples/`, as a path argument.
pub fn example(name: &str) -> String {
    examples().join(name).display().to_string()
}

/// The store's current revision, read through the API.
pub async fn revision(server: &TestServer) -> u64 {
    server
        .client()
        .await
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .expect("list nodes")
        .into_inner()
        .revision
}

/// Writes `text` to `name` in `dir` and returns the path as an argument.
pub fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write manifest");
    path.display().to_string()
}

/// Re-runs `check` until it returns `Some`, failing after [`PATIENCE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The number of documents in an examples file, counted from its text.
pub fn documents(path: &str) -> usize {
    std::fs::read_to_string(path)
        .expect("read example")
        .split("\n---\n")
        .count()
}

/// The configuration of a control plane with authentication on, which
/// writes its bootstrap admin token to `admin.token` in `dir` (or leaves it
/// there, when the store holds tokens already).
pub fn auth_config(dir: &Path) -> Config {
    Config {
        auth: auth::Config {
            enforce: true,
            ..auth::Config::default()
        },
        bootstrap_token_file: Some(dir.join("admin.token")),
        ..TestServer::config()
    }
}

/// A control plane with authentication on over `db`, bootstrapped into
/// `dir`; returns it with the bootstrap admin's secret.
pub async fn start_with_auth(db: &TestDb, dir: &Path) -> (TestServer, String) {
    let server = TestServer::start_with(db.url(), auth_config(dir)).await;
    let file = dir.join("admin.token");
    // The server writes the file (whole, newline last) as it starts.
    let secret = eventually("the bootstrap token is written", || {
        let text = std::fs::read_to_string(&file).ok();
        async move {
            text.filter(|t| t.ends_with('\n'))
                .map(|t| t.trim().to_owned())
        }
    })
    .await;
    (server, secret)
}

/// Sends SIGINT, as Ctrl-C does, and expects a clean exit 0.
pub async fn interrupt(child: &mut tokio::process::Child) {
    let pid = child.id().expect("running").to_string();
    let sent = Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("watch stopped on Ctrl-C")
        .unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C is a normal end");
}

/// Checks that `author` (a `lastChange` or watch `author` block, read back
/// as YAML or JSON) names `principal`, a client on 127.0.0.1, and a time
/// between `since` and now; returns its address and time as printed.
#[track_caller]
pub fn check_author(
    author: &serde_json::Value,
    principal: &str,
    since: std::time::SystemTime,
) -> (String, String) {
    assert_eq!(author["principal"], principal, "{author}");
    let address = author["address"].as_str().expect("an address").to_owned();
    check_local(&address);
    let at = author["at"].as_str().expect("a time").to_owned();
    check_time(&at, since);
    (address, at)
}

/// Checks that `address` is a client's `127.0.0.1:PORT`.
#[track_caller]
pub fn check_local(address: &str) {
    let addr: std::net::SocketAddr = address.parse().unwrap_or_else(|e| panic!("{address}: {e}"));
    assert_eq!(addr.ip().to_string(), "127.0.0.1", "{address}");
    assert_ne!(addr.port(), 0, "{address}");
}

/// Checks that the RFC 3339 time `at` lies between `since` (less a second,
/// as times may be printed in whole seconds) and now.
#[track_caller]
pub fn check_time(at: &str, since: std::time::SystemTime) {
    let when = humantime::parse_rfc3339(at).unwrap_or_else(|e| panic!("{at}: {e}"));
    assert!(
        when + Duration::from_secs(1) >= since && when <= std::time::SystemTime::now(),
        "{at} is not the time of the write"
    );
}
