//! The HAProxy driver: renders each node configuration as `haproxy.cfg`
//! ([`render`]), runs HAProxy in master-worker mode (or attaches to one
//! through its master socket), and applies changes the cheapest way HAProxy
//! allows: server changes (endpoints added, removed, re-weighted, drained,
//! healthy or not) through the runtime API with no reload, anything else
//! (listeners, routes, policies) by a seamless reload of a file
//! `haproxy -c` accepted first. A change is acknowledged only once HAProxy
//! took it; a file HAProxy refuses is a refusal carrying its message, and
//! the running configuration stays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::metrics::{Encoder, Type};
use switchyard::node::NodeConfig;
use switchyard::validate::Invalid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{Applying, Driver};

pub mod render;

pub use render::{Rendered, Server, State};

/// The field a refusal by HAProxy itself names.
const REFUSAL_FIELD: &str = "haproxy.cfg";
/// How long one master CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a reload may take to show a new worker.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a removed server may keep connections before they are cut.
const REMOVAL_GRACE: Duration = Duration::from_secs(5);
/// How often the supervisor refreshes the statistics behind `/metrics`.
const STATS_PERIOD: Duration = Duration::from_secs(2);
/// Back-off between restarts of a HAProxy that died, doubling up to the max.
const RESTART_BASE: Duration = Duration::from_millis(200);
const RESTART_MAX: Duration = Duration::from_secs(10);

/// Errors of the driver's own work (not refusals of a configuration).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// HAProxy answered a command with an error.
    #[error("HAProxy refused `{command}`: {answer}")]
    Command {
        /// The command.
        command: String,
        /// HAProxy's answer.
        answer: String,
    },
    /// A reload did not take.
    #[error("HAProxy did not reload: {0}")]
    Reload(String),
}

/// How the driver finds and runs HAProxy.
#[derive(Debug, Clone)]
pub struct Config {
    /// The `haproxy` program.
    pub bin: PathBuf,
    /// Where the rendered file, sockets and pid file live (the agent's
    /// data directory).
    pub dir: PathBuf,
    /// The master socket of a HAProxy this driver did not start, to attach
    /// to; `None`: the driver's own, under `dir`.
    pub master_socket: Option<PathBuf>,
    /// Leave a HAProxy the driver started running when the agent stops
    /// (an agent upgrade then interrupts no traffic).
    pub keep_running: bool,
}

impl Config {
    /// HAProxy from `PATH`, files under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Config {
        Config {
            bin: PathBuf::from("haproxy"),
            dir: dir.into(),
            master_socket: None,
            keep_running: false,
        }
    }

    fn cfg(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    fn master(&self) -> PathBuf {
        self.master_socket
            .clone()
            .unwrap_or_else(|| self.dir.join("haproxy-master.sock"))
    }

    fn sockets(&self) -> render::Sockets {
        render::Sockets {
            stats: self.dir.join("haproxy-stats.sock").display().to_string(),
        }
    }
}

/// What the driver and its supervisor share.
#[derive(Debug)]
struct Inner {
    config: Config,
    /// What HAProxy serves now; `None` until known (then the next apply
    /// reloads).
    current: Mutex<Option<Rendered>>,
    /// The last `show stat` answer, for `/metrics`.
    stats: Mutex<String>,
    /// Backend → service, of the current rendering.
    services: Mutex<BTreeMap<String, String>>,
    /// Reloads and runtime commands sent, for tests and metrics.
    counters: Counters,
    /// The last lines HAProxy wrote on its stderr (when this driver started
    /// it): a failed reload's reason is there.
    log: Mutex<Log>,
}

/// HAProxy's recent stderr lines.
#[derive(Debug, Default)]
struct Log {
    lines: std::collections::VecDeque<String>,
    /// Lines ever read.
    total: u64,
}

impl Log {
    const KEEP: usize = 200;

    fn push(&mut self, line: String) {
        if self.lines.len() == Self::KEEP {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
        self.total += 1;
    }

    /// The lines read after `mark` (a former `total`) that are alerts.
    fn since(&self, mark: u64) -> String {
        let new = usize::try_from(self.total - mark).unwrap_or(usize::MAX);
        let skip = self.lines.len().saturating_sub(new);
        let text: Vec<&str> = self.lines.iter().skip(skip).map(String::as_str).collect();
        let alerts: Vec<&str> = text
            .iter()
            .copied()
            .filter(|l| l.contains("[ALERT]"))
            .collect();
        alerts.join("; ")
    }
}

/// What the driver did.
#[derive(Debug, Default)]
pub struct Counters {
    /// Seamless reloads asked of HAProxy.
    pub reloads: std::sync::atomic::AtomicU64,
    /// Runtime API commands sent.
    pub commands: std::sync::atomic::AtomicU64,
}

/// HAProxy, driven.
#[derive(Debug, Clone)]
pub struct Haproxy {
    inner: Arc<Inner>,
}

impl Haproxy {
    /// Drives HAProxy as `config` says. The future returned starts (or
    /// attaches to) HAProxy, restarts it when it dies and stops it at
    /// `shutdown`; its caller owns it.
    pub fn new(
        config: Config,
        shutdown: CancellationToken,
    ) -> (
        Haproxy,
        impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        // HAProxy reads a socket address as a Unix path only when it starts
        // with `/`: a relative data directory would name a TCP host.
        let mut config = config;
        if let Ok(dir) = std::path::absolute(&config.dir) {
            config.dir = dir;
        }
        let inner = Arc::new(Inner {
            config,
            current: Mutex::new(None),
            stats: Mutex::new(String::new()),
            services: Mutex::new(BTreeMap::new()),
            counters: Counters::default(),
            log: Mutex::new(Log::default()),
        });
        let driver = Haproxy {
            inner: inner.clone(),
        };
        (driver, supervise(inner, shutdown))
    }

    /// What the driver did so far.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }

    /// Sends one command to the master CLI and returns the answer.
    pub async fn master(&self, command: &str) -> Result<String, Error> {
        cli(&self.inner.config.master(), command).await
    }

    async fn apply_now(&self, config: &NodeConfig) -> Result<(), Invalid> {
        let inner = &self.inner;
        let next = render::render(config, &inner.config.sockets())?;
        let current = inner.current.lock().expect("current").clone();
        let runtime = current.as_ref().and_then(|c| runtime_commands(c, &next));
        let outcome = match runtime {
            Some(commands) => self.run_commands(commands).await,
            None => self.reload(&next).await,
        };
        match outcome {
            Ok(()) => {}
            Err(Refusal::Invalid(invalid)) => return Err(invalid),
            Err(Refusal::Failed(e)) => {
                return Err(Invalid::one(REFUSAL_FIELD, format_args!("{e}")));
            }
        }
        // The file always holds the current servers too: servers added at
        // runtime would be lost at the next reload or restart otherwise.
        write(&inner.config.cfg(), &next.text).map_err(|e| Invalid::one(REFUSAL_FIELD, e))?;
        *inner.services.lock().expect("services") = next
            .backends
            .keys()
            .map(|b| (b.clone(), service_of(config, b)))
            .collect();
        *inner.current.lock().expect("current") = Some(next);
        Ok(())
    }

    async fn run_commands(&self, commands: Vec<Command>) -> Result<(), Refusal> {
        let master = self.inner.config.master();
        for c in commands {
            match c {
                Command::Send(text) => {
                    self.send(&master, &text).await?;
                }
                Command::Remove(server) => {
                    // Maintenance first, so it takes no new traffic; then
                    // wait (bounded) for its connections to end.
                    self.send(&master, &format!("set server {server} state maint"))
                        .await?;
                    let deadline = tokio::time::Instant::now() + REMOVAL_GRACE;
                    loop {
                        let answer = cli_waiting(&master, &format!("@1 del server {server}"))
                            .await
                            .map_err(Refusal::Failed)?;
                        self.inner
                            .counters
                            .commands
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if answer.contains("Server deleted") {
                            break;
                        }
                        if tokio::time::Instant::now() >= deadline {
                            self.send(&master, &format!("shutdown sessions server {server}"))
                                .await?;
                        }
                        if tokio::time::Instant::now() >= deadline + REMOVAL_GRACE {
                            return Err(Refusal::Failed(Error::Command {
                                command: format!("del server {server}"),
                                answer,
                            }));
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        Ok(())
    }

    async fn send(&self, master: &Path, command: &str) -> Result<(), Refusal> {
        let answer = cli_waiting(master, &format!("@1 {command}"))
            .await
            .map_err(Refusal::Failed)?;
        self.inner
            .counters
            .commands
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = answer.trim();
        if answer.is_empty() || answer.starts_with("New server registered") {
            Ok(())
        } else {
            Err(Refusal::Failed(Error::Command {
                command: command.to_owned(),
                answer: answer.to_owned(),
            }))
        }
    }

    /// Checks `next` with `haproxy -c`, then installs it and reloads.
    async fn reload(&self, next: &Rendered) -> Result<(), Refusal> {
        let config = &self.inner.config;
        let candidate = config.dir.join("haproxy.cfg.new");
        write(&candidate, &next.text).map_err(Refusal::Failed)?;
        check_file(&config.bin, &candidate).await?;
        let before = proc_status_waiting(&config.master())
            .await
            .map_err(Refusal::Failed)?;
        let mark = self.inner.log.lock().expect("log").total;
        std::fs::rename(&candidate, config.cfg()).map_err(|source| {
            Refusal::Failed(Error::Io {
                what: format!("installing {}", config.cfg().display()),
                source,
            })
        })?;
        let _ = cli(&config.master(), "reload").await;
        self.inner
            .counters
            .reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
        loop {
            if let Ok(now) = proc_status(&config.master()).await {
                if now.failed > before.failed {
                    // What `haproxy -c` cannot see (a socket that cannot
                    // bind) fails the reload itself: the master keeps the
                    // old worker, the file goes back, and HAProxy's own
                    // words are the refusal.
                    let previous = self.inner.current.lock().expect("current").clone();
                    if let Some(previous) = previous {
                        write(&config.cfg(), &previous.text).map_err(Refusal::Failed)?;
                    }
                    // The master writes why on its stderr, which the
                    // supervisor reads: give it a moment to arrive.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    let logs = self.inner.log.lock().expect("log").since(mark);
                    let logs = if logs.is_empty() {
                        "the master kept the running configuration (see HAProxy's log)".to_owned()
                    } else {
                        logs
                    };
                    return Err(Refusal::Invalid(Invalid::one(
                        REFUSAL_FIELD,
                        format_args!(
                            "HAProxy refused the configuration: {}",
                            switchyard::validate::truncate(&alerts(&logs), 2000)
                        ),
                    )));
                }
                if now.reloads > before.reloads
                    && now.worker.is_some()
                    && now.worker != before.worker
                {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Refusal::Failed(Error::Reload(format!(
                    "no new worker within {RELOAD_TIMEOUT:?}"
                ))));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Why a change did not take.
enum Refusal {
    Invalid(Invalid),
    Failed(Error),
}

impl Driver for Haproxy {
    fn name(&self) -> &'static str {
        "haproxy"
    }

    fn apply<'a>(&'a self, config: &'a Arc<NodeConfig>) -> Applying<'a> {
        Box::pin(self.apply_now(config))
    }

    fn restore(&self, config: &Arc<NodeConfig>) {
        // The saved configuration goes into the file HAProxy starts from;
        // one already running (reattached) is reloaded at the next change.
        match render::render(config, &self.inner.config.sockets()) {
            Ok(r) => {
                if let Err(e) = write(&self.inner.config.cfg(), &r.text) {
                    warn!(error = %e, "cannot write the restored configuration");
                }
            }
            Err(e) => warn!(error = %e, "the saved configuration cannot be rendered"),
        }
    }

    fn metrics(&self, enc: &mut Encoder) {
        let stats = self.inner.stats.lock().expect("stats").clone();
        let services = self.inner.services.lock().expect("services").clone();
        encode_stats(&stats, &services, enc);
    }
}

/// The runtime API commands that turn `from` into `to`, or `None` when
/// only a reload can (anything beside servers changed, or a server change
/// the runtime API cannot make).
fn runtime_commands(from: &Rendered, to: &Rendered) -> Option<Vec<Command>> {
    if from.skeleton != to.skeleton {
        return None;
    }
    let mut out = Vec::new();
    for (backend, next) in &to.backends {
        let prev = from.backends.get(backend)?;
        for (name, s) in next {
            let id = format!("{backend}/{name}");
            match prev.get(name) {
                None => {
                    // `add server` takes addresses, not names to resolve.
                    if s.address.parse::<std::net::IpAddr>().is_err() {
                        return None;
                    }
                    let mut added = s.clone();
                    added.state = State::Ready;
                    out.push(Command::Send(format!(
                        "add server {id} {}",
                        added.arguments()
                    )));
                    // Servers are added in maintenance.
                    out.push(Command::Send(format!(
                        "set server {id} state {}",
                        s.state.as_str()
                    )));
                }
                Some(p) if p == s => {}
                Some(p) => {
                    if p.fixed != s.fixed || p.maxqueue != s.maxqueue {
                        return None;
                    }
                    if p.address != s.address || p.port != s.port {
                        if s.address.parse::<std::net::IpAddr>().is_err() {
                            return None;
                        }
                        out.push(Command::Send(format!(
                            "set server {id} addr {} port {}",
                            s.address, s.port
                        )));
                    }
                    if p.maxconn != s.maxconn {
                        let n = s.maxconn?;
                        out.push(Command::Send(format!("set maxconn server {id} {n}")));
                    }
                    if p.weight != s.weight || (p.state != s.state && s.state == State::Ready) {
                        out.push(Command::Send(format!(
                            "set server {id} weight {}",
                            s.weight
                        )));
                    }
                    if p.state != s.state {
                        out.push(Command::Send(format!(
                            "set server {id} state {}",
                            s.state.as_str()
                        )));
                    }
                }
            }
        }
        for name in prev.keys().filter(|n| !next.contains_key(*n)) {
            out.push(Command::Remove(format!("{backend}/{name}")));
        }
    }
    if from.backends.keys().any(|b| !to.backends.contains_key(b)) {
        return None;
    }
    Some(out)
}

/// One runtime step.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Command {
    /// A command whose empty answer means done.
    Send(String),
    /// Removes a server: maintenance, connections drained (bounded), deleted.
    Remove(String),
}

/// The service a backend serves, for metrics labels.
fn service_of(config: &NodeConfig, backend: &str) -> String {
    let find = || -> Option<String> {
        if let Some(listener) = backend.strip_prefix("l.") {
            return match &config.listeners.get(listener)?.target {
                switchyard::resource::ListenerTarget::Service(s) => Some(s.clone()),
                switchyard::resource::ListenerTarget::Route(_) => None,
            };
        }
        // `r.<route>.<rule>.<destination>`; route names may hold dots.
        let mut parts = backend.strip_prefix("r.")?.rsplitn(3, '.');
        let dest: usize = parts.next()?.parse().ok()?;
        let rule: usize = parts.next()?.parse().ok()?;
        let route = parts.next()?;
        let d = config
            .routes
            .get(route)?
            .rules
            .get(rule)?
            .action
            .destinations
            .get(dest)?;
        Some(d.service.clone())
    };
    find().unwrap_or_else(|| backend.to_owned())
}

/// Writes `text` to `path` through a temporary file and a rename, so
/// HAProxy never reads half a file.
fn write(path: &Path, text: &str) -> Result<(), Error> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|source| Error::Io {
            what: format!("writing {}", path.display()),
            source,
        })
}

/// Runs `haproxy -c -f file`: a refusal carries HAProxy's own message.
async fn check_file(bin: &Path, file: &Path) -> Result<(), Refusal> {
    let out = tokio::process::Command::new(bin)
        // Not `-q`: it silences the alerts, which are the refusal's text.
        .arg("-c")
        .arg("-f")
        .arg(file)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| {
            Refusal::Failed(Error::Io {
                what: format!("running {} -c", bin.display()),
                source,
            })
        })?;
    if out.status.success() {
        return Ok(());
    }
    let message = alerts(&String::from_utf8_lossy(&out.stderr));
    Err(Refusal::Invalid(Invalid::one(
        REFUSAL_FIELD,
        format_args!(
            "HAProxy refused the configuration: {}",
            switchyard::validate::truncate(&message, 2000)
        ),
    )))
}

/// HAProxy's `[ALERT]` lines in `text` (all of it when there is none),
/// joined.
fn alerts(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("[ALERT]"))
        .map(str::trim)
        .collect();
    if lines.is_empty() {
        text.trim().to_owned()
    } else {
        lines.join("; ")
    }
}

/// Checks a rendered configuration with `haproxy -c`; for tests and the
/// example check.
pub async fn check(bin: &Path, dir: &Path, text: &str) -> Result<(), Invalid> {
    let file = dir.join("haproxy-check.cfg");
    write(&file, text).map_err(|e| Invalid::one(REFUSAL_FIELD, e))?;
    match check_file(bin, &file).await {
        Ok(()) => Ok(()),
        Err(Refusal::Invalid(i)) => Err(i),
        Err(Refusal::Failed(e)) => Err(Invalid::one(REFUSAL_FIELD, e)),
    }
}

/// Sends `command` to a master CLI and reads its whole answer: one try.
async fn cli(socket: &Path, command: &str) -> Result<String, Error> {
    match tokio::time::timeout(CLI_TIMEOUT, cli_once(socket, command)).await {
        Ok(r) => r,
        Err(_) => Err(no_answer(socket, command)),
    }
}

/// [`cli`] for a change being applied: a master that is starting (the
/// supervisor may not have started it yet) or re-executing itself (every
/// reload does) refuses or resets connections for a moment. A command that
/// cannot have run (no connection) is tried again, and so is a read-only
/// one (`show …`) whatever failed; a command that may have run is not.
async fn cli_waiting(socket: &Path, command: &str) -> Result<String, Error> {
    let read_only = command.starts_with("show ") || command.starts_with("@1 show ");
    let deadline = tokio::time::Instant::now() + CLI_TIMEOUT;
    loop {
        let e = match tokio::time::timeout_at(deadline, cli_once(socket, command)).await {
            Ok(Ok(out)) => return Ok(out),
            Ok(Err(e)) => e,
            Err(_) => return Err(no_answer(socket, command)),
        };
        let again = match &e {
            Error::Io { source, .. } => {
                read_only
                    || matches!(
                        source.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    )
            }
            _ => false,
        };
        if !again || tokio::time::Instant::now() + CLI_RETRY >= deadline {
            return Err(e);
        }
        tokio::time::sleep(CLI_RETRY).await;
    }
}

fn no_answer(socket: &Path, command: &str) -> Error {
    Error::Io {
        what: format!("master socket {}", socket.display()),
        source: std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer to {command:?} within {CLI_TIMEOUT:?}"),
        ),
    }
}

/// How long to wait before asking a master that did not answer again.
const CLI_RETRY: Duration = Duration::from_millis(50);

/// One connection to the master CLI: `command`, then its whole answer.
async fn cli_once(socket: &Path, command: &str) -> Result<String, Error> {
    let io = |source| Error::Io {
        what: format!("master socket {}", socket.display()),
        source,
    };
    let mut s = UnixStream::connect(socket).await.map_err(io)?;
    s.write_all(format!("{command}\n").as_bytes())
        .await
        .map_err(io)?;
    // The master answers once the client half-closes: it reads commands
    // until then.
    s.shutdown().await.map_err(io)?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.map_err(io)?;
    Ok(out)
}

/// What `show proc` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// The master's pid.
    pub master: u32,
    /// Reloads since the master started.
    pub reloads: u64,
    /// Reloads that failed.
    pub failed: u64,
    /// The current worker's pid.
    pub worker: Option<u32>,
}

/// Parses `show proc` (HAProxy 2.6).
pub fn parse_proc(text: &str) -> Option<Proc> {
    let mut master = None;
    let mut worker = None;
    let mut in_workers = false;
    for line in text.lines() {
        if line.starts_with("# workers") {
            in_workers = true;
            continue;
        }
        if line.starts_with('#') {
            in_workers = false;
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            [pid, "master", reloads, "[failed:", failed, ..] => {
                master = Some((
                    pid.parse().ok()?,
                    reloads.parse().ok()?,
                    failed.trim_end_matches(']').parse().ok()?,
                ));
            }
            [pid, "worker", ..] if in_workers && worker.is_none() => worker = pid.parse().ok(),
            _ => {}
        }
    }
    let (master, reloads, failed) = master?;
    Some(Proc {
        master,
        reloads,
        failed,
        worker,
    })
}

/// `show proc` through the master socket at `socket`.
pub async fn proc_status(socket: &Path) -> Result<Proc, Error> {
    read_proc(&cli(socket, "show proc").await?)
}

/// [`proc_status`] of a master that may be starting or reloading.
async fn proc_status_waiting(socket: &Path) -> Result<Proc, Error> {
    read_proc(&cli_waiting(socket, "show proc").await?)
}

fn read_proc(text: &str) -> Result<Proc, Error> {
    parse_proc(text).ok_or_else(|| {
        Error::Reload(format!(
            "unreadable show proc: {:?}",
            switchyard::validate::truncate(text, 200)
        ))
    })
}

/// Starts HAProxy (or attaches to a running one), restarts it when it dies,
/// refreshes its statistics, and stops it at `shutdown`.
async fn supervise(inner: Arc<Inner>, shutdown: CancellationToken) {
    let config = inner.config.clone();
    let mut backoff = RESTART_BASE;
    loop {
        // A master already answering (one this agent started before it
        // restarted, or one it was told to attach to) is kept as it is.
        if let Ok(p) = proc_status(&config.master()).await {
            info!(master = p.master, "attached to a running HAProxy");
            watch_attached(&inner, &shutdown).await;
            return;
        }
        if config.master_socket.is_some() {
            warn!(socket = %config.master().display(), "HAProxy master socket does not answer; retrying");
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RESTART_MAX);
            continue;
        }
        if !config.cfg().exists() {
            let empty = render::render(&NodeConfig::default(), &config.sockets())
                .expect("an empty configuration renders");
            if let Err(e) = write(&config.cfg(), &empty.text) {
                warn!(error = %e, "cannot write haproxy.cfg");
            }
        }
        let _ = std::fs::remove_file(config.master());
        let mut cmd = tokio::process::Command::new(&config.bin);
        cmd.arg("-W")
            .arg("-S")
            .arg(format!("{},mode,600", config.master().display()))
            .arg("-f")
            .arg(config.cfg())
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            // Its own process group: a signal to the agent's group (Ctrl-C)
            // is not one to HAProxy, which the agent stops itself.
            .process_group(0);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                warn!(bin = %config.bin.display(), error = %e, "cannot start HAProxy");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RESTART_MAX);
                continue;
            }
        };
        let pid = child.id();
        info!(pid, "started HAProxy");
        // What it serves now is the file: the next change reloads.
        *inner.current.lock().expect("current") = None;
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(STATS_PERIOD);
        let mut stderr = child
            .stderr
            .take()
            .map(|e| tokio::io::BufReader::new(e).lines());
        let status = loop {
            tokio::select! {
                line = async { stderr.as_mut().expect("guarded").next_line().await },
                    if stderr.is_some() => match line {
                    Ok(Some(line)) => {
                        info!(target: "haproxy", "{}", line.trim());
                        inner.log.lock().expect("log").push(line);
                    }
                    // Closed: stop reading it.
                    _ => stderr = None,
                },
                status = child.wait() => break Some(status),
                () = shutdown.cancelled() => break None,
                _ = tick.tick() => refresh_stats(&inner).await,
            }
        };
        match status {
            None => {
                if config.keep_running {
                    info!(pid, "leaving HAProxy running");
                    return;
                }
                // SIGUSR1: a soft stop, connections finish.
                if let Some(pid) = pid {
                    let _ = tokio::process::Command::new("kill")
                        .arg("-USR1")
                        .arg(pid.to_string())
                        .status()
                        .await;
                }
                if tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
                info!("stopped HAProxy");
                return;
            }
            Some(status) => {
                warn!(?status, "HAProxy exited; restarting");
                if started.elapsed() > RESTART_MAX {
                    backoff = RESTART_BASE;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(RESTART_MAX);
            }
        }
    }
}

/// Follows a HAProxy the driver did not start until `shutdown`, leaving
/// it running then.
async fn watch_attached(inner: &Inner, shutdown: &CancellationToken) {
    let mut tick = tokio::time::interval(STATS_PERIOD);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => refresh_stats(inner).await,
        }
    }
}

async fn refresh_stats(inner: &Inner) {
    if let Ok(text) = cli(&inner.config.master(), "@1 show stat").await {
        *inner.stats.lock().expect("stats") = text;
    }
}

/// Writes `show stat` as the built-in proxy's metric names.
fn encode_stats(stats: &str, services: &BTreeMap<String, String>, enc: &mut Encoder) {
    let mut lines = stats.lines();
    let Some(header) = lines.next() else { return };
    let columns: Vec<&str> = header.trim_start_matches("# ").split(',').collect();
    let col = |name: &str| columns.iter().position(|c| *c == name);
    let (Some(px), Some(sv), Some(stot), Some(scur)) =
        (col("pxname"), col("svname"), col("stot"), col("scur"))
    else {
        return;
    };
    let classes = ["hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx"].map(col);
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let num = |r: &[&str], i: usize| r.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut f = enc.family(
        "switchyard_agent_proxy_connections_total",
        Type::Counter,
        "Client connections accepted, by listener.",
    );
    for r in rows.iter().filter(|r| r.get(sv) == Some(&"FRONTEND")) {
        if let Some(l) = r[px].strip_prefix("f.") {
            f.sample(&[("listener", l)], num(r, stot));
        }
    }
    let mut f = enc.family(
        "switchyard_agent_proxy_upstream_connections",
        Type::Gauge,
        "Connections open to the service's endpoints (HTTP, busy or idle, and TCP relays), by service.",
    );
    let mut open: BTreeMap<&str, u64> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.get(sv) == Some(&"BACKEND")) {
        if let Some(s) = services.get(r[px]) {
            *open.entry(s).or_default() += num(r, scur);
        }
    }
    for (s, n) in &open {
        f.sample(&[("service", s)], *n);
    }
    let mut f = enc.family(
        "switchyard_agent_proxy_upstream_requests_total",
        Type::Counter,
        "Tries sent to endpoints that got an answer, by service, endpoint and status class.",
    );
    let mut by: BTreeMap<(&str, &str, usize), u64> = BTreeMap::new();
    for r in rows
        .iter()
        .filter(|r| r.len() > sv && r[sv] != "FRONTEND" && r[sv] != "BACKEND")
    {
        let Some(service) = services.get(r[px]) else {
            continue;
        };
        for (i, c) in classes.iter().enumerate() {
            if let Some(c) = c {
                *by.entry((service, r[sv], i)).or_default() += num(r, *c);
            }
        }
    }
    for ((service, endpoint, class), n) in by {
        if n > 0 {
            let class = ["1xx", "2xx", "3xx", "4xx", "5xx"][class];
            f.sample(
                &[
                    ("service", service),
                    ("endpoint", endpoint),
                    ("class", class),
                ],
                n,
            );
        }
    }
}

#[cfg(test)]
mod tests;
