//! The daemons' small HTTP surfaces (metrics, the agent's local API): one
//! HTTP/1.1 server loop owned by its caller's shutdown, the `/metrics`
//! answer, and binding a listener with a listen backlog fit for bursts. Behind the `http` feature, so that API clients do not build
//! hyper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::metrics::CONTENT_TYPE;

/// How long requests in progress may take to finish after shutdown.
const DRAIN: Duration = Duration::from_secs(1);

/// The largest listen backlog asked for by default.
const MAX_DEFAULT_BACKLOG: u32 = 4096;

/// The listen backlog for ports that take bursts of connections: 4096, or
/// the kernel's cap (`net.core.somaxconn`) when that is lower. A fleet of
/// agents reconnecting at once after a control-plane restart overflows
/// tokio's 1024 on loopback: the kernel drops the overflowing handshakes and
/// each of those clients waits out a SYN retransmission (a second, then
/// two, four...) before it is even accepted.
pub fn default_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map_or(MAX_DEFAULT_BACKLOG, |cap| cap.clamp(1, MAX_DEFAULT_BACKLOG))
}

/// Binds a TCP listener on `addr` with `SO_REUSEADDR` (a restarted daemon
/// rebinds at once) and a listen queue of `backlog` connections.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Serves HTTP/1.1 on `listener`, answering each request with `handle`,
/// until `shutdown`; then lets requests in progress finish (briefly).
pub async fn serve<H, F>(listener: TcpListener, handle: H, shutdown: CancellationToken)
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let handle = Arc::new(handle);
    let graceful = GracefulShutdown::new();
    // Every connection task lives in this set and ends with this function.
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let handle = handle.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let response = handle(req);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(10))
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(error) = conn.await {
                debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(DRAIN, graceful.shutdown()).await;
    connections.shutdown().await;
}

/// A response with `status`, `content_type` and `body`.
pub fn response(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// Answers `GET /metrics` on `listener` with `render()`, and the probes
/// `GET /healthz` (the process serves: always 200) and `GET /ready` (200
/// when `ready()` is `Ok`, else 503 with its reason), until `shutdown`; then
/// lets requests in progress finish (briefly) and returns. Probes carry no
/// configuration data, so that load balancers and Kubernetes, which cannot
/// present client certificates, may call them.
pub async fn serve_metrics<F, R>(
    listener: TcpListener,
    render: F,
    ready: R,
    shutdown: CancellationToken,
) where
    F: Fn() -> String + Send + Sync + 'static,
    R: Fn() -> Result<(), String> + Send + Sync + 'static,
{
    let render = Arc::new(render);
    let ready = Arc::new(ready);
    let handle = move |req: Request<Incoming>| {
        let response = metrics_answer(&req, render.as_ref(), ready.as_ref());
        async move { response }
    };
    serve(listener, handle, shutdown).await;
}

/// The answer to one request: the metrics at `GET /metrics`, the probes at
/// `/healthz` and `/ready`, 405 for another method there, 404 anywhere
/// else.
fn metrics_answer(
    req: &Request<Incoming>,
    render: &dyn Fn() -> String,
    ready: &dyn Fn() -> Result<(), String>,
) -> Response<Full<Bytes>> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let get = matches!(req.method(), &hyper::Method::GET | &hyper::Method::HEAD);
    let (status, content_type, body) = match (get, req.uri().path()) {
        (true, "/metrics") => (StatusCode::OK, CONTENT_TYPE, render()),
        (true, "/healthz") => (StatusCode::OK, TEXT, "ok\n".to_owned()),
        (true, "/ready") => match ready() {
            Ok(()) => (StatusCode::OK, TEXT, "ready\n".to_owned()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("not ready: {reason}\n"),
            ),
        },
        (false, "/metrics" | "/healthz" | "/ready") => (
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            "only GET and HEAD\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            "not found; metrics are at /metrics, probes at /healthz and /ready\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
    }
    response
}
