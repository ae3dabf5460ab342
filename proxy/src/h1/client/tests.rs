//! The HTTP/1.1 client side against a scripted endpoint on loopback: each
//! test scripts the endpoint's raw answers and checks what the proxy makes
//! of them (body, headers, whether the connection is reused) and what it
//! sent.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::{Method, Request, Response};
use switchyard::pb;
use switchyard::resource::Service;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;

use crate::error::{Error, Kind, Origin, Retry};
use crate::pool::{Connections, Conns, Upstream};

/// One scripted answer: written in these pieces, a few milliseconds
/// apart, so that the client sees it arrive in parts.
type Answer = Vec<&'static [u8]>;

/// An endpoint that answers each request it reads with the next scripted
/// answer, and closes the connection after answers marked to.
struct Scripted {
    port: u16,
    /// Connections accepted.
    accepted: Arc<AtomicUsize>,
    /// Every request received, raw (head and body).
    requests: Arc<Mutex<Vec<String>>>,
    _task: JoinHandle<()>,
}

impl Scripted {
    /// Answers requests in order with `answers`; after an answer whose
    /// flag is true, closes the connection.
    async fn start(answers: Vec<(Answer, bool)>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (accepted.clone(), requests.clone());
        let task = tokio::spawn(async move {
            let mut answers = answers.into_iter();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                loop {
                    let Some(request) = read_request(&mut stream).await else {
                        break;
                    };
                    seen.lock().unwrap().push(request);
                    let Some((pieces, close)) = answers.next() else {
                        return;
                    };
                    for piece in pieces {
                        if stream.write_all(piece).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    if close {
                        break;
                    }
                }
            }
        });
        Scripted {
            port,
            accepted,
            requests,
            _task: task,
        }
    }
}

/// Reads one request (head, and a body framed by content-length or
/// chunked), raw; `None` at end of stream.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut raw = Vec::new();
    let mut byte = [0u8; 1];
    while !raw.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        raw.push(byte[0]);
    }
    let head = String::from_utf8(raw.clone()).unwrap().to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
    {
        let mut body = vec![0u8; len.trim().parse().unwrap()];
        stream.read_exact(&mut body).await.ok()?;
        raw.extend(body);
    } else if head.contains("transfer-encoding: chunked") {
        while !raw.ends_with(b"\r\n0\r\n\r\n") {
            if stream.read(&mut byte).await.ok()? == 0 {
                return None;
            }
            raw.push(byte[0]);
        }
    }
    Some(String::from_utf8(raw).unwrap())
}

/// A service with default settings.
fn service() -> Service {
    let pb = pb::Service {
        name: "web".into(),
        ..Default::default()
    };
    Service::from_pb(&pb, "service").unwrap()
}

/// Sends requests to one endpoint through the proxy's pool.
struct Client {
    service: Service,
    connections: Connections,
    conns: Arc<Conns>,
    tasks: TaskTracker,
}

impl Client {
    fn to(endpoint: &Scripted) -> Client {
        let connections = Connections::default();
        connections.set_idle_timeout(Duration::from_secs(60));
        let conns = connections
            .sync([("127.0.0.1", endpoint.port)].into_iter(), false, 1)
            .remove(0);
        Client {
            service: service(),
            connections,
            conns,
            tasks: TaskTracker::new(),
        }
    }

    /// Sends `method path` with `body`; the response.
    async fn send(
        &self,
        method: Method,
        path: &'static str,
        body: &'static str,
    ) -> Result<Response<Upstream>, Error> {
        let mut req = Request::new(Either::Right(Full::new(Bytes::from_static(
            body.as_bytes(),
        ))));
        *req.method_mut() = method;
        *req.uri_mut() = self.conns.uri(path.parse().unwrap(), None).unwrap();
        req.headers_mut()
            .insert("host", "example.test".parse().unwrap());
        self.conns
            .send(&self.connections, &self.service, &self.tasks, req)
            .await
    }

    /// `GET path`'s status, headers and whole body.
    async fn get(&self, path: &'static str) -> (u16, hyper::HeaderMap, String) {
        let resp = self.send(Method::GET, path, "").await.expect("a response");
        read(resp).await
    }

    /// Connections open now (idle or in use).
    fn open(&self) -> usize {
        self.connections.limits.open()
    }
}

async fn read(resp: Response<Upstream>) -> (u16, hyper::HeaderMap, String) {
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("a whole body").to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn sized_answers_reuse_one_connection() {
    let answer = |body: &'static [u8]| -> (Answer, bool) {
        (
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\n",
                body,
            ],
            false,
        )
    };
    let endpoint = Scripted::start(vec![
        answer(b"one\r\n"),
        answer(b"two\r\n"),
        answer(b"three"),
    ])
    .await;
    let client = Client::to(&endpoint);
    for expected in ["one\r\n", "two\r\n", "three"] {
        let (status, headers, body) = client.get("/a?b=c").await;
        assert_eq!((status, body.as_str()), (200, expected));
        assert_eq!(headers["x-a"], "1");
        assert_eq!(headers["content-length"], "5");
    }
    assert_eq!(endpoint.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(client.open(), 1, "the connection is kept");
    let sent = endpoint.requests.lock().unwrap().clone();
    assert!(
        sent[0].starts_with("GET /a?b=c HTTP/1.1\r\n"),
        "request line: {sent:?}"
    );
    assert!(sent[0].contains("host: example.test\r\n"));
    assert!(
        !sent[0].contains("content-length"),
        "no length for a GET without body: {sent:?}"
    );
}

#[tokio::test]
async fn chunked_answers_arriving_in_pieces_are_decoded_and_the_connection_reused() {
    let chunked: Answer = vec![
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5;name=value\r\nhel",
        b"lo\r",
        b"\n6\r\n world\r\n0\r\n",
        b"x-trailer: t\r\n\r\n",
    ];
    let endpoint = Scripted::start(vec![
        (chunked, false),
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"],
            false,
        ),
    ])
    .await;
    let client = Client::to(&endpoint);
    let (status, headers, body) = client.get("/").await;
    assert_eq!((status, body.as_str()), (200, "hello world"));
    assert!(
        headers.get("transfer-encoding").is_none(),
        "this hop's framing is not passed on"
    );
    assert_eq!(client.get("/").await.2, "ok");
    assert_eq!(endpoint.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_ended_by_close_is_read_to_the_end_and_its_connection_not_reused() {
    let endpoint = Scripted::start(vec![
        (vec![b"HTTP/1.1 200 OK\r\n\r\nuntil ", b"the end"], true),
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"],
            true,
        ),
        (
            vec![b"HTTP/1.0 200 OK\r\ncontent-length: 3\r\n\r\nold"],
            true,
        ),
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nnew"],
            false,
        ),
    ])
    .await;
    let client = Client::to(&endpoint);
    assert_eq!(client.get("/").await.2, "until the end");
    assert_eq!(client.get("/").await.2, "ok");
    assert_eq!(client.get("/").await.2, "old");
    assert_eq!(client.get("/").await.2, "new");
    assert_eq!(
        endpoint.accepted.load(Ordering::SeqCst),
        4,
        "close-delimited, `connection: close` and HTTP/1.0 answers end their connection"
    );
    assert_eq!(client.open(), 1);
}

#[tokio::test]
async fn head_no_content_and_interim_answers_carry_no_body() {
    let endpoint = Scripted::start(vec![
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 42\r\n\r\n"],
            false,
        ),
        (vec![b"HTTP/1.1 204 No Content\r\n\r\n"], false),
        (
            vec![
                b"HTTP/1.1 100 Continue\r\n\r\n",
                b"HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone",
            ],
            false,
        ),
    ])
    .await;
    let client = Client::to(&endpoint);
    let resp = client.send(Method::HEAD, "/", "").await.unwrap();
    let (status, headers, body) = read(resp).await;
    assert_eq!((status, body.as_str()), (200, ""));
    assert_eq!(headers["content-length"], "42", "HEAD keeps the length");
    assert_eq!(client.get("/").await.0, 204);
    let resp = client.send(Method::POST, "/", "data").await.unwrap();
    let (status, _, body) = read(resp).await;
    assert_eq!((status, body.as_str()), (201, "done"));
    assert_eq!(endpoint.accepted.load(Ordering::SeqCst), 1);
    let sent = endpoint.requests.lock().unwrap().clone();
    assert!(
        sent[2].ends_with("content-length: 4\r\n\r\ndata"),
        "a buffered body goes with its length: {sent:?}"
    );
}

#[tokio::test]
async fn malformed_or_ambiguous_answers_fail_the_try() {
    let endpoint = Scripted::start(vec![
        (vec![b"garbage\r\n\r\n"], true),
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd"],
            true,
        ),
        (vec![b"HTTP/1.1 101 Switching Protocols\r\n\r\n"], true),
        (vec![b"HTTP/1.1 200 OK\r\n"], true),
    ])
    .await;
    let client = Client::to(&endpoint);
    for what in ["not HTTP", "conflicting lengths", "a switch", "a cut head"] {
        let failed = client.send(Method::GET, "/", "").await;
        let Err(error) = failed else {
            panic!("{what}: answered {:?}", failed.map(|r| r.status()));
        };
        assert!(error.is_reset(), "{what}: {error}");
        assert_eq!(error.origin(), Origin::Upstream, "{what}");
        // Bytes came back on a fresh connection: only an idempotent
        // request may be sent again.
        assert_eq!(error.retry(), Retry::Idempotent, "{what}");
        let invalid = matches!(error.kind(), Kind::Invalid(_));
        assert_eq!(invalid, what != "a cut head", "{what}: {error}");
    }
    assert_eq!(client.open(), 0, "no connection kept after a failure");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_and_its_connection_closed() {
    let endpoint = Scripted::start(vec![
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf"],
            true,
        ),
        (
            vec![b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n"],
            true,
        ),
    ])
    .await;
    let client = Client::to(&endpoint);
    for what in ["short body", "bad chunk size"] {
        let resp = client.send(Method::GET, "/", "").await.unwrap();
        assert!(resp.into_body().collect().await.is_err(), "{what}");
    }
    assert_eq!(client.open(), 0);
}

#[tokio::test]
async fn an_idle_connection_the_endpoint_closed_is_not_used() {
    let endpoint = Scripted::start(vec![
        (vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"], true),
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"],
            false,
        ),
    ])
    .await;
    let client = Client::to(&endpoint);
    // The endpoint closes after its first answer without saying so; the
    // pool's pruning finds that out (as a checkout does).
    assert_eq!(client.get("/").await.2, "a");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.open() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "never seen closed");
        client.connections.close_idle(|_, _| true);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(client.get("/").await.2, "b", "a new connection, no failure");
    assert_eq!(endpoint.accepted.load(Ordering::SeqCst), 2);
}

/// A reused connection that the endpoint closes before any byte of the
/// answer fails the try as "reused only": safe to send again on a fresh
/// connection (if idempotent); a fresh one that does the same is not.
#[tokio::test]
async fn a_reused_connection_closed_before_any_answer_is_retryable_on_a_fresh_one() {
    let endpoint = Scripted::start(vec![(
        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"],
        false,
    )])
    .await;
    let client = Client::to(&endpoint);
    assert_eq!(client.get("/").await.2, "a");
    let Err(error) = client.send(Method::GET, "/", "").await else {
        panic!("the endpoint closed without answering");
    };
    assert_eq!(error.kind(), Kind::Closed, "{error}");
    assert_eq!(error.retry(), Retry::ReusedOnly, "{error}");
    assert!(error.may_retry(true) && !error.may_retry(false));

    let silent = Scripted::start(vec![]).await;
    let Err(error) = Client::to(&silent).send(Method::GET, "/", "").await else {
        panic!("the endpoint closed without answering");
    };
    assert_eq!(error.kind(), Kind::Closed, "{error}");
    assert_eq!(
        error.retry(),
        Retry::Idempotent,
        "a fresh connection: {error}"
    );
}
