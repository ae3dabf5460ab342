//! The HTTP/1.1 server side against raw clients on loopback: each test
//! writes bytes as a client could and checks the responses, whether the
//! connection stays open, and what reached the handler.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{Body, Limits, Served, serve};

const LIMITS: Limits = Limits {
    max_head: 8 * 1024,
    head_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(10),
};

/// A connection served by [`serve`] with the test handler, and the
/// client's end of it.
struct Conn {
    client: TcpStream,
    /// Bytes the client has read and not yet taken.
    read: Vec<u8>,
    /// Requests that reached the handler.
    calls: Arc<AtomicUsize>,
    /// Requests refused before the handler.
    refused: Arc<AtomicUsize>,
    /// Lets a `/wait` request answer.
    release: Arc<Notify>,
    /// Tasks that `/detach` requests left reading their bodies.
    detached: Detached,
    stop: CancellationToken,
    served: JoinHandle<Option<Bytes>>,
}

impl Conn {
    async fn open(limits: Limits) -> Conn {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (io, _) = listener.accept().await.unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let refusals = refused.clone();
        let release = Arc::new(Notify::new());
        let detached = Detached::default();
        let stop = CancellationToken::new();
        let (count, wait, token) = (calls.clone(), release.clone(), stop.clone());
        let held = detached.clone();
        let served = tokio::spawn(async move {
            let refused = || {
                refusals.fetch_add(1, Ordering::SeqCst);
            };
            let served = serve(io, limits, &token, refused, |req| {
                count.fetch_add(1, Ordering::SeqCst);
                handler(req, wait.clone(), held.clone())
            })
            .await;
            match served {
                Served::Done => None,
                Served::Http2(_, read) => Some(read),
            }
        });
        Conn {
            client,
            read: Vec::new(),
            calls,
            refused,
            release,
            detached,
            stop,
            served,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.client.write_all(bytes).await.unwrap();
    }

    /// Reads more bytes; false at the end of the stream.
    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), self.client.read(&mut chunk))
            .await
            .expect("an answer in time")
            .unwrap_or(0);
        self.read.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// Reads one response: its status, headers (lower-case names) and
    /// body, framed by its headers (to the end of the stream without
    /// either, or none for `bodiless`).
    async fn response(&mut self, bodiless: bool) -> Answer {
        let (status, headers, len) = loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut fields);
            if let httparse::Status::Complete(len) = parsed.parse(&self.read).unwrap() {
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value).into_owned();
                        (h.name.to_ascii_lowercase(), value)
                    })
                    .collect();
                break (parsed.code.unwrap(), headers, len);
            }
            assert!(self.fill().await, "the stream ended within a head");
        };
        self.read.drain(..len);
        let answer = |body| Answer {
            status,
            headers: headers.clone(),
            body,
        };
        let header = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        if bodiless || status < 200 || status == 204 || status == 304 {
            return answer(Vec::new());
        }
        if let Some(length) = header("content-length") {
            let length: usize = length.parse().unwrap();
            while self.read.len() < length {
                assert!(self.fill().await, "the stream ended within a body");
            }
            return answer(self.read.drain(..length).collect());
        }
        if header("transfer-encoding").as_deref() == Some("chunked") {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(at) = self.read.windows(2).position(|w| w == b"\r\n") {
                        break at;
                    }
                    assert!(self.fill().await, "the stream ended within a chunk");
                };
                let size =
                    usize::from_str_radix(std::str::from_utf8(&self.read[..line_end]).unwrap(), 16)
                        .unwrap();
                while self.read.len() < line_end + 2 + size + 2 {
                    assert!(self.fill().await, "the stream ended within a chunk");
                }
                self.read.drain(..line_end + 2);
                body.extend(self.read.drain(..size));
                assert_eq!(self.read.drain(..2).as_slice(), b"\r\n");
                if size == 0 {
                    return answer(body);
                }
            }
        }
        while self.fill().await {}
        answer(std::mem::take(&mut self.read))
    }

    /// Whether the server closed the connection (having sent nothing
    /// more).
    async fn closed(&mut self) -> bool {
        !self.fill().await && self.read.is_empty()
    }
}

/// A response as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

type TestBody = BoxBody<Bytes, std::io::Error>;

/// Where `/detach` leaves the tasks reading request bodies.
type Detached = Arc<std::sync::Mutex<Vec<JoinHandle<Result<Bytes, String>>>>>;

/// The test handler, by path: `/echo` answers with what it received
/// (method, target, host, body); `/stream` with a body of unknown size;
/// `/big` with 100,000 bytes, `/huge` with 64 MiB; `/refuse` with a 403
/// without reading the body; `/wait` once released; `/detach` at once,
/// leaving a task of its own to read the body (as an HTTP/2 upstream
/// does); `/broken` with a body that fails after two bytes.
async fn handler(
    req: Request<Body>,
    release: Arc<Notify>,
    detached: Detached,
) -> Response<TestBody> {
    let full = |text: Vec<u8>| {
        Full::new(Bytes::from(text))
            .map_err(|never: Infallible| match never {})
            .boxed()
    };
    match req.uri().path() {
        "/stream" => {
            let pieces = ["ab", "cd"].map(|p| Ok(Frame::data(Bytes::from(p))));
            Response::new(StreamBody::new(tokio_stream::iter(pieces)).boxed())
        }
        "/broken" => {
            let pieces = [
                Ok(Frame::data(Bytes::from("ab"))),
                Err(std::io::Error::other("upstream reset")),
            ];
            Response::new(StreamBody::new(tokio_stream::iter(pieces)).boxed())
        }
        "/detach" => {
            let mut body = req.into_body();
            let (first, got_first) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(async move {
                // Answered once the reader has had some of the body, so
                // that it waits on the socket when the request ends.
                let mut read = Vec::new();
                let mut first = Some(first);
                loop {
                    match body.frame().await {
                        Some(Ok(frame)) => {
                            read.extend_from_slice(&frame.into_data().unwrap_or_default());
                            first.take().map(|tx| tx.send(()));
                        }
                        Some(Err(error)) => return Err(error.to_string()),
                        None => return Ok(Bytes::from(read)),
                    }
                }
            });
            detached.lock().unwrap().push(task);
            let _ = got_first.await;
            Response::new(full(b"detached".to_vec()))
        }
        "/big" => Response::new(full(vec![b'x'; 100_000])),
        "/huge" => Response::new(full(vec![b'x'; 64 << 20])),
        "/refuse" => {
            let mut resp = Response::new(full(b"no".to_vec()));
            *resp.status_mut() = StatusCode::FORBIDDEN;
            resp
        }
        "/wait" => {
            release.notified().await;
            Response::new(full(b"waited".to_vec()))
        }
        _ => {
            let (parts, body) = req.into_parts();
            let host = parts
                .headers
                .get("host")
                .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(error) => Bytes::from(format!("<{error}>")),
            };
            let seen = format!(
                "{} {} host={} body={}",
                parts.method,
                parts.uri,
                host.unwrap_or_default(),
                String::from_utf8_lossy(&body)
            );
            Response::new(full(seen.into_bytes()))
        }
    }
}

#[tokio::test]
async fn keep_alive_serves_pipelined_requests_in_order() {
    let mut conn = Conn::open(LIMITS).await;
    conn.send(
        b"GET /echo?a=1 HTTP/1.1\r\nhost: one\r\n\r\n\
          POST /echo HTTP/1.1\r\nhost: two\r\ncontent-length: 5\r\n\r\nhello\
          GET /stream HTTP/1.1\r\nhost: three\r\n\r\n",
    )
    .await;
    let first = conn.response(false).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "GET /echo?a=1 host=one body=");
    assert_eq!(
        first.header("connection"),
        None,
        "keep-alive is HTTP/1.1's default"
    );
    let date = first.header("date").expect("a date is added");
    assert!(httpdate::parse_http_date(date).is_ok(), "{date}");
    let second = conn.response(false).await;
    assert_eq!(second.text(), "POST /echo host=two body=hello");
    let third = conn.response(false).await;
    assert_eq!(
        third.header("transfer-encoding"),
        Some("chunked"),
        "size unknown"
    );
    assert_eq!(third.text(), "abcd");

    // The connection still serves; a large body arrives whole.
    conn.send(b"GET /big HTTP/1.1\r\nhost: four\r\n\r\n").await;
    let big = conn.response(false).await;
    assert_eq!(big.header("content-length"), Some("100000"));
    assert!(big.body.len() == 100_000 && big.body.iter().all(|&b| b == b'x'));
    assert_eq!(conn.calls.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn chunked_request_bodies_are_decoded_as_they_arrive() {
    let mut conn = Conn::open(LIMITS).await;
    let pieces: [&[u8]; 5] = [
        b"POST /echo HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\n",
        b"5;ext=1\r\nhel",
        b"lo\r\n6\r\n world\r\n",
        b"0\r\ntrailer: x\r\n",
        b"\r\nGET /echo HTTP/1.1\r\nhost: next\r\n\r\n",
    ];
    // A moment apart, so that the server usually reads them one by one;
    // what is asserted holds however they arrive.
    for piece in pieces {
        conn.send(piece).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        conn.response(false).await.text(),
        "POST /echo host=h body=hello world"
    );
    assert_eq!(
        conn.response(false).await.text(),
        "GET /echo host=next body="
    );

    // A malformed chunk ends the body with an error and the connection
    // with it.
    conn.send(b"POST /echo HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n")
        .await;
    let broken = conn.response(false).await;
    assert!(
        broken.text().contains("<invalid client message"),
        "{}",
        broken.text()
    );
    assert_eq!(broken.header("connection"), Some("close"));
    assert!(conn.closed().await, "no request can follow a broken body");
}

#[tokio::test]
async fn ambiguous_or_malformed_requests_are_refused_and_closed() {
    let cases: &[(&[u8], u16, &str)] = &[
        (
            b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n",
            400,
            "both transfer-encoding and content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\n",
            400,
            "content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: h\r\ncontent-length: +3\r\n\r\n",
            400,
            "content-length",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
            501,
            "transfer coding not supported",
        ),
        (
            b"POST / HTTP/1.1\r\nhost: h\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
            501,
            "transfer coding not supported",
        ),
        (
            b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n",
            400,
            "transfer-encoding in an HTTP/1.0 request",
        ),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "missing host header"),
        (
            b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n",
            400,
            "more than one host header",
        ),
        (
            b"GET / HTTP/1.1\r\nhost : a\r\n\r\n",
            400,
            "malformed request head",
        ),
        (
            b"GET / HTTP/1.1\r\nhost: a\r\nexpect: magic\r\n\r\n",
            417,
            "expectation not supported",
        ),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nhost: example.com:443\r\n\r\n",
            501,
            "CONNECT is not supported",
        ),
        (b"GET / HTTP/3.0\r\nhost: a\r\n\r\n", 505, "HTTP version not supported"),
        (b"GET / HTTP/2.0\r\nhost: a\r\n\r\n", 505, "HTTP version not supported"),
        (
            b"GET /a b HTTP/1.1\r\nhost: a\r\n\r\n",
            400,
            "malformed request line",
        ),
        (
            b"GET / HTTP/1.x\r\nhost: a\r\n\r\n",
            400,
            "malformed request line",
        ),
    ];
    for &(request, status, reason) in cases {
        let mut conn = Conn::open(LIMITS).await;
        conn.send(request).await;
        // A valid request after it must not be served.
        let _ = conn
            .client
            .write_all(b"GET /echo HTTP/1.1\r\nhost: h\r\n\r\n")
            .await;
        let answer = conn.response(false).await;
        let shown = String::from_utf8_lossy(request);
        assert_eq!(answer.status, status, "{shown:?}: {}", answer.text());
        assert_eq!(
            answer.text(),
            format!("switchyard: {reason}\n"),
            "{shown:?}"
        );
        assert_eq!(answer.header("connection"), Some("close"), "{shown:?}");
        assert!(conn.closed().await, "{shown:?}: the connection closes");
        assert_eq!(
            conn.calls.load(Ordering::SeqCst),
            0,
            "{shown:?}: not handled"
        );
        assert_eq!(conn.refused.load(Ordering::SeqCst), 1, "{shown:?}: counted");
    }
}

#[tokio::test]
async fn oversized_heads_are_refused() {
    let mut conn = Conn::open(LIMITS).await;
    let big = "a".repeat(LIMITS.max_head);
    conn.send(format!("GET / HTTP/1.1\r\nhost: h\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await;
    let answer = conn.response(false).await;
    assert_eq!(answer.status, 431);
    assert_eq!(answer.text(), "switchyard: request head too large\n");
    assert!(conn.closed().await);

    let mut conn = Conn::open(LIMITS).await;
    let many: String = (0..120).map(|i| format!("x-{i}: v\r\n")).collect();
    conn.send(format!("GET / HTTP/1.1\r\nhost: h\r\n{many}\r\n").as_bytes())
        .await;
    let answer = conn.response(false).await;
    assert_eq!(answer.status, 431);
    assert_eq!(answer.text(), "switchyard: too many header fields\n");
    assert_eq!(conn.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn http10_clients_get_responses_they_can_read() {
    // Without keep-alive: the connection closes after the response, and
    // a body of unknown size is delimited by the close (no chunked).
    let mut conn = Conn::open(LIMITS).await;
    conn.send(b"GET /stream HTTP/1.0\r\n\r\n").await;
    let answer = conn.response(false).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("transfer-encoding"), None);
    assert_eq!(answer.header("connection"), Some("close"));
    assert_eq!(answer.text(), "abcd");
    assert!(conn.read.is_empty(), "the body ran to the close");

    // With keep-alive and a known size, the connection is kept.
    let mut conn = Conn::open(LIMITS).await;
    for _ in 0..2 {
        conn.send(b"GET /echo HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .await;
        let answer = conn.response(false).await;
        assert_eq!(answer.header("connection"), Some("keep-alive"));
        assert_eq!(answer.text(), "GET /echo host= body=");
    }
    assert_eq!(conn.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn absolute_targets_set_the_host() {
    let mut conn = Conn::open(LIMITS).await;
    conn.send(b"GET http://real.example:8080/echo?q HTTP/1.1\r\nhost: other\r\n\r\n")
        .await;
    assert_eq!(
        conn.response(false).await.text(),
        "GET http://real.example:8080/echo?q host=real.example:8080 body="
    );
}

#[tokio::test]
async fn head_responses_have_no_body_and_keep_the_connection() {
    let mut conn = Conn::open(LIMITS).await;
    conn.send(b"HEAD /big HTTP/1.1\r\nhost: h\r\n\r\nGET /echo HTTP/1.1\r\nhost: h\r\n\r\n")
        .await;
    let head = conn.response(true).await;
    assert_eq!(head.status, 200);
    let next = conn.response(false).await;
    assert_eq!(
        next.text(),
        "GET /echo host=h body=",
        "no body bytes came between"
    );
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_body_is_wanted() {
    let mut conn = Conn::open(LIMITS).await;
    conn.send(
        b"PUT /echo HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
    )
    .await;
    let interim = conn.response(false).await;
    assert_eq!(interim.status, 100, "asked for the body before it was sent");
    conn.send(b"data").await;
    let answer = conn.response(false).await;
    assert_eq!(answer.text(), "PUT /echo host=h body=data");

    // A request answered without its body gets no 100, and the unread
    // body's connection closes after the answer.
    conn.send(
        b"PUT /refuse HTTP/1.1\r\nhost: h\r\nexpect: 100-continue\r\ncontent-length: 4\r\n\r\n",
    )
    .await;
    let answer = conn.response(false).await;
    assert_eq!(answer.status, 403);
    assert!(conn.closed().await);
}

#[tokio::test]
async fn an_answer_before_the_body_ends_closes_the_connection() {
    let mut conn = Conn::open(LIMITS).await;
    conn.send(b"POST /refuse HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nhalf")
        .await;
    let answer = conn.response(false).await;
    assert_eq!(answer.status, 403);
    assert_eq!(answer.header("connection"), Some("close"));
    // The rest of the body must not be read as a request.
    conn.send(b"GET /echo HTTP/1.1\r\nhost: h\r\n\r\n").await;
    assert!(conn.closed().await);
    assert_eq!(conn.calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn stop_closes_idle_connections_and_finishes_requests_in_flight() {
    let mut idle = Conn::open(LIMITS).await;
    idle.send(b"GET /echo HTTP/1.1\r\nhost: h\r\n\r\n").await;
    assert_eq!(idle.response(false).await.status, 200);
    idle.stop.cancel();
    assert!(idle.closed().await, "an idle connection closes at once");

    let mut busy = Conn::open(LIMITS).await;
    busy.send(b"GET /wait HTTP/1.1\r\nhost: h\r\n\r\n").await;
    while busy.calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    busy.stop.cancel();
    busy.release.notify_one();
    let answer = busy.response(false).await;
    assert_eq!(answer.text(), "waited", "the request in flight is answered");
    assert_eq!(answer.header("connection"), Some("close"));
    assert!(busy.closed().await);
    busy.client.shutdown().await.unwrap();
    assert!(busy.served.await.unwrap().is_none());
}

#[tokio::test]
async fn slow_heads_time_out() {
    let limits = Limits {
        head_timeout: Duration::from_millis(200),
        ..LIMITS
    };
    let mut idle = Conn::open(limits).await;
    assert!(idle.closed().await, "an idle connection closes silently");

    let mut slow = Conn::open(limits).await;
    slow.send(b"GET / HTTP/1.1\r\nhost:").await;
    let answer = slow.response(false).await;
    assert_eq!(answer.status, 408);
    assert!(slow.closed().await);
}

#[tokio::test]
async fn the_http2_preface_is_handed_back_with_what_followed() {
    let mut conn = Conn::open(LIMITS).await;
    // In two pieces a moment apart, so that the server usually sees part
    // of the preface first and waits for the rest; what is asserted holds
    // however they arrive.
    conn.send(b"PRI * HTTP/2").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    conn.send(b".0\r\n\r\nSM\r\n\r\n\x00\x00\x00").await;
    let read = conn.served.await.unwrap().expect("handed to HTTP/2");
    assert_eq!(&read[..], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00");
    assert_eq!(conn.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_body_held_past_its_request_lets_go_of_the_connection() {
    let mut conn = Conn::open(LIMITS).await;
    conn.send(b"POST /detach HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nhalf")
        .await;
    let answer = conn.response(false).await;
    assert_eq!(answer.text(), "detached");
    assert!(conn.closed().await, "the unread body's connection closes");
    let task = conn
        .detached
        .lock()
        .unwrap()
        .pop()
        .expect("a detached reader");
    // Well within the idle timeout: the reader is told its request is over.
    let read = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the detached reader is woken")
        .unwrap();
    assert!(
        read.is_err(),
        "a cut body is not taken for a whole one: {read:?}"
    );
}

#[tokio::test]
async fn stalled_bodies_and_readers_are_given_up() {
    let limits = Limits {
        idle_timeout: Duration::from_millis(300),
        ..LIMITS
    };
    // A body that stops arriving.
    let mut conn = Conn::open(limits).await;
    conn.send(b"POST /echo HTTP/1.1\r\nhost: h\r\ncontent-length: 10\r\n\r\nhalf")
        .await;
    let answer = conn.response(false).await;
    assert!(
        answer.text().contains("<client timed out"),
        "{}",
        answer.text()
    );
    assert!(conn.closed().await);

    // A client that stops reading a large response.
    let conn = Conn::open(limits).await;
    let mut client = conn.client;
    client
        .write_all(b"GET /huge HTTP/1.1\r\nhost: h\r\n\r\n")
        .await
        .unwrap();
    let served = tokio::time::timeout(Duration::from_secs(10), conn.served)
        .await
        .expect("the connection is given up");
    assert!(served.unwrap().is_none());
    drop(client);
}

#[tokio::test]
async fn a_response_that_breaks_is_reset_not_closed() {
    // An HTTP/1.0 client reads to the close: a clean close would pass a
    // cut body for a whole one.
    let mut conn = Conn::open(LIMITS).await;
    conn.send(b"GET /broken HTTP/1.0\r\n\r\n").await;
    let mut chunk = [0u8; 1024];
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), conn.client.read(&mut chunk))
            .await
            .expect("an end in time")
        {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(error) => break Err(error.kind()),
        }
    };
    assert_eq!(ended, Err(std::io::ErrorKind::ConnectionReset));
}
