//! The `yard-demo` binary as a user runs it: it starts, prints where to send
//! requests, balances them as its manifests say, and stops cleanly on
//! Ctrl-C. Every run uses free ports (`--listen 127.0.0.1:0 --port-base 0`;
//! a demo started twice on one data directory gets one free pair of
//! listener ports for both runs).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

/// How long a start may take (a debug build, tests running side by side).
const START: Duration = Duration::from_secs(60);
/// How long the demo may take to exit after SIGINT.
const STOP: Duration = Duration::from_secs(20);

/// A running `yard-demo`, past its readiness line.
struct Demo {
    child: Child,
    /// Kept open so the demo never writes to a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
    /// Everything it printed, up to and including the readiness line.
    printed: String,
    /// The readiness line's `key=value` fields.
    ready: BTreeMap<String, String>,
}

fn command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_yard-demo"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

impl Demo {
    async fn start(extra: &[&str]) -> Demo {
        let mut args = vec!["--listen", "127.0.0.1:0"];
        if !extra.contains(&"--port-base") {
            args.extend(["--port-base", "0"]);
        }
        args.extend_from_slice(extra);
        let mut child = command(&args).spawn().expect("yard-demo starts");
        let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut printed = String::new();
        let ready = tokio::time::timeout(START, async {
            while let Some(line) = stdout.next_line().await.unwrap() {
                printed.push_str(&line);
                printed.push('\n');
                if let Some(fields) = line.strip_prefix(switchyard_demo::MARKER) {
                    return Some(fields.to_owned());
                }
            }
            None
        })
        .await;
        let ready = match ready {
            Ok(Some(fields)) => fields,
            outcome => {
                let _ = child.start_kill();
                let mut stderr = String::new();
                let _ = child
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut stderr)
                    .await;
                panic!(
                    "no readiness line ({}); stdout:\n{printed}\nstderr:\n{stderr}",
                    if outcome.is_err() {
                        "timed out"
                    } else {
                        "stdout closed"
                    }
                );
            }
        };
        let ready = ready
            .split_whitespace()
            .filter_map(|field| field.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Demo {
            child,
            _stdout: stdout,
            printed,
            ready,
        }
    }

    fn field(&self, key: &str) -> &str {
        self.ready
            .get(key)
            .unwrap_or_else(|| panic!("no {key}= in the readiness line: {:?}", self.ready))
    }

    /// Sends SIGINT, as Ctrl-C does, and waits for the exit; its status and
    /// what it wrote to stderr.
    async fn interrupt(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().expect("still running").to_string();
        let sent = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .await
            .unwrap();
        assert!(sent.success(), "kill -INT {pid} failed");
        let mut stderr = self.child.stderr.take().unwrap();
        let exited = tokio::time::timeout(STOP, async {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            (self.child.wait().await.unwrap(), text)
        })
        .await;
        match exited {
            Ok(done) => done,
            Err(_) => panic!("yard-demo did not exit within {STOP:?} of SIGINT"),
        }
    }
}

type Http = Client<HttpConnector, Empty<Bytes>>;

fn http() -> Http {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GETs `url` with `headers`; the body of a 200.
async fn get(client: &Http, url: &str, headers: &[(&str, &str)]) -> String {
    let mut request = hyper::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client
        .request(request.body(Empty::new()).unwrap())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"));
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "GET {url}: {body}");
    body
}

/// How many times each body came back from `n` GETs of `url`.
async fn tally(
    client: &Http,
    url: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        *seen.entry(get(client, url, headers).await).or_default() += 1;
    }
    seen
}

const V1_A: &str = "hello from web-v1-a (version v1)\n";
const V1_B: &str = "hello from web-v1-b (version v1)\n";
const V2_A: &str = "hello from web-v2-a (version v2)\n";

#[tokio::test]
async fn balances_and_splits_as_printed_then_stops_on_ctrl_c() {
    let demo = Demo::start(&[]).await;
    let round_robin = demo.field("round-robin").to_owned();
    let canary = demo.field("canary").to_owned();
    let data_dir = demo.field("data-dir").to_owned();
    // The instructions name the URLs they are about.
    for expected in [
        format!("curl -s {round_robin}\n"),
        format!("for i in $(seq 20); do curl -s {round_robin}; done | sort | uniq -c\n"),
        format!("curl -s -H 'x-canary: 1' {canary}\n"),
        format!("--server {} get endpoints\n", demo.field("control-plane")),
        format!("--server {} nodes\n", demo.field("control-plane")),
        "all 3 endpoints healthy".to_owned(),
    ] {
        assert!(
            demo.printed.contains(&expected),
            "{expected:?} not in:\n{}",
            demo.printed
        );
    }
    assert!(Path::new(&data_dir).join("switchyard.db").exists());

    let client = http();
    // Round robin: both v1 backends, nothing else.
    let seen = tally(&client, &round_robin, &[], 20).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), [V1_A, V1_B], "{seen:?}");
    assert!(
        seen.values().all(|&n| n >= 5),
        "uneven round robin: {seen:?}"
    );

    // The canary: about 10% to v2 (20 of 200 expected; 4..=50 allowed).
    let seen = tally(&client, &canary, &[], 200).await;
    let v2 = seen.get(V2_A).copied().unwrap_or(0);
    assert!((4..=50).contains(&v2), "v2 got {v2} of 200: {seen:?}");
    assert!(
        seen.keys()
            .all(|b| [V1_A, V1_B, V2_A].contains(&b.as_str())),
        "{seen:?}"
    );
    // The header forces v2.
    let seen = tally(&client, &canary, &[("x-canary", "1")], 10).await;
    assert_eq!(seen.get(V2_A), Some(&10), "{seen:?}");

    let (status, stderr) = demo.interrupt().await;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(
        !Path::new(&data_dir).exists(),
        "the temporary data directory {data_dir} is still there"
    );
}

#[tokio::test]
async fn a_kept_data_directory_starts_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_str().unwrap();
    // Both runs on the same listener ports: the second starts with the
    // first's configuration (kept on disk) until it has synced, and opens
    // its listeners at once. On ports of their own, those cannot answer
    // another test's demo that was given the ports the first run let go.
    let base = free_port_pair().to_string();
    let first = Demo::start(&["--data-dir", path, "--port-base", &base]).await;
    assert!(first.printed.contains("kept"), "{}", first.printed);
    let (status, stderr) = first.interrupt().await;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
    assert!(dir.path().join("switchyard.db").exists());

    // The store kept every resource; with new ports the endpoints and
    // listeners are updated, and the node serves them.
    let second = Demo::start(&["--data-dir", path, "--port-base", &base]).await;
    assert!(
        second.printed.contains("(0 created, "),
        "{}",
        second.printed
    );
    let seen = tally(&http(), second.field("round-robin"), &[], 4).await;
    assert_eq!(seen.keys().collect::<Vec<_>>(), [V1_A, V1_B], "{seen:?}");
    let (status, stderr) = second.interrupt().await;
    assert!(status.success(), "exit {status}; stderr:\n{stderr}");
}

/// The first of two consecutive ports free on 127.0.0.1.
fn free_port_pair() -> u16 {
    loop {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = first.local_addr().unwrap().port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

#[tokio::test]
async fn a_busy_control_plane_port_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = tokio::time::timeout(
        STOP,
        command(&["--listen", &addr, "--port-base", "0"]).output(),
    )
    .await
    .expect("yard-demo exits at once")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "exit {}", output.status);
    assert!(
        stderr.contains(&format!("{addr} (the control plane) is already in use")),
        "{stderr}"
    );
    assert!(stderr.contains("--listen"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}
