//! HTTP listeners: HTTP/1.1 and cleartext HTTP/2 (gRPC included) on one
//! socket, routed per request and forwarded over pooled keep-alive
//! connections (see [`super::pool`]). HTTP/1.x clients are served by the
//! proxy's own server side ([`super::h1::server`]); a connection that
//! opens with the HTTP/2 preface goes to hyper's HTTP/2 server.
//!
//! A request is refused at once when its service has `max_requests` in
//! flight, or `max_connections` open and `max_pending_requests` waiting for
//! one (the circuit breaker). A route's retry policy sends it again only
//! when that is safe: the method is idempotent, or the try failed to
//! connect (nothing was sent); and only when its body can be sent again
//! (empty, or of known size up to [`MAX_REPLAY`], buffered). Retries go to
//! another endpoint when there is one, after a fully jittered exponential
//! backoff, within the route's timeout and the service's retry budget.
//!
//! What the proxy answers itself is a short text, or a gRPC status for a
//! gRPC call ([`super::grpc`]), whose `grpc-timeout` also bounds the
//! route's timeout.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Body as _;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::{Authority, PathAndQuery};
use hyper::{Method, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use switchyard::resource::{HashOn, Protocol, RetryOn, RetryPolicy};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::body::{Inbound, Outbound};
use super::error::{Error, Kind, Origin, Retry};
use super::grpc;
use super::h1::server;
use super::limit::Guard;
use super::metrics::{Refusal, TryFailure};
use super::outlier::Outcome;
use super::pool::{self, Conns};
use super::workers::Lane;
use super::{Backend, Context, DRAIN, Pool, Upstream, random};
use crate::balance::hash_key;
use crate::router::{RequestView, Rule};

/// The response body type: the upstream's, streamed, or a short error.
pub(super) type Body = BoxBody<Bytes, Error>;

/// The largest request head (request line and headers) accepted; a larger
/// one is answered `431 Request Header Fields Too Large` (HTTP/1.x) or
/// refused (HTTP/2).
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// How long a client may take to send a request head, so that slow clients
/// cannot hold connections open for free.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a client may go without sending a byte of a request body, or
/// taking a byte of a response, before its connection is given up.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts connections until `stop`, then drains them.
pub(super) async fn serve(
    listener: TcpListener,
    mut lane: Lane,
    ctx: Context,
    stop: CancellationToken,
) {
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD as u32);
    // Shared: every connection's task holds a handle, not a copy.
    let http2 = std::sync::Arc::new(http2);
    let limits = server::Limits {
        max_head: MAX_HEAD,
        head_timeout: HEAD_TIMEOUT,
        idle_timeout: IDLE_TIMEOUT,
    };
    let mut connections = JoinSet::new();
    while let Some((stream, peer, served)) = lane.next(&listener, &stop, &mut connections).await {
        ctx.stats.connection();
        let _ = stream.set_nodelay(true);
        let (ctx, stop, http2) = (ctx.clone(), stop.clone(), http2.clone());
        connections.spawn(async move {
            let _served = served;
            // Made once per connection: every request's `X-Forwarded-For`
            // shares it.
            let client = HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            let refused = || ctx.stats.refused(Refusal::InvalidRequest);
            match server::serve(stream, limits, &stop, refused, |req| {
                handle(req.map(Inbound::Http1), &client, &ctx)
            })
            .await
            {
                server::Served::Done => {}
                // Boxed: an HTTP/2 connection's state is large, and would
                // otherwise enlarge every HTTP/1.x connection's.
                server::Served::Http2(stream, read) => {
                    let io = TokioIo::new(Rewind { read, stream });
                    Box::pin(serve_http2(&http2, io, client, ctx, &stop)).await;
                }
            }
        });
    }
    drop(listener);
    // In-flight requests finish; idle keep-alive connections close.
    let drained = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, drained).await.is_err() {
        debug!("drain timed out; closing the remaining connections");
    }
    connections.shutdown().await;
}

/// Serves an HTTP/2 connection until it ends; at `stop`, streams in flight
/// finish and no new ones start.
async fn serve_http2(
    http2: &hyper::server::conn::http2::Builder<TokioExecutor>,
    io: TokioIo<Rewind>,
    client: HeaderValue,
    ctx: Context,
    stop: &CancellationToken,
) {
    // Streams run as tasks of their own: each takes its own handles.
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let (ctx, client) = (ctx.clone(), client.clone());
        async move {
            let req = req.map(Inbound::Http2);
            Ok::<_, Infallible>(handle(req, &client, &ctx).await)
        }
    });
    let conn = http2.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let ended = tokio::select! {
        ended = conn.as_mut() => ended,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(error) = ended {
        debug!(%error, "connection ended with an error");
    }
}

/// A connection handed to the HTTP/2 server with the bytes already read
/// from it, which it reads first.
struct Rewind {
    read: Bytes,
    stream: TcpStream,
}

impl tokio::io::AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read.split_to(n));
        Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// A new `X-Request-Id`: 128 random bits in hex.
fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (half, bits) in id.chunks_mut(16).zip([random(), random()]) {
        for (i, digit) in half.iter_mut().enumerate() {
            *digit = HEX[(bits >> (60 - 4 * i) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&id).expect("hex digits are a valid header value")
}

/// The proxy's own short answer for `why`: a line of text, or for a gRPC
/// `call` a gRPC status (see [`grpc::reply`]).
fn error(why: Refusal, call: Option<&grpc::Call>) -> Response<Body> {
    if call.is_some() {
        return grpc::reply(why);
    }
    let body = Full::new(Bytes::from(format!("switchyard: {}\n", why.message())))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = why.status();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Headers that describe one hop, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes the headers that describe one hop. With `switching`, a protocol
/// switch asked for or agreed to (`Upgrade`) is kept, as the next hop's
/// `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, switching: bool) {
    let upgrade = switching
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    // Headers named by Connection are hop-by-hop too. The usual tokens
    // (`close`, `keep-alive`) name nothing else to remove, so most messages
    // make no list.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|n| {
            !n.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP
                    .iter()
                    .any(|h| n.eq_ignore_ascii_case(h.as_str()))
        })
        .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if let Some(protocol) = upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, protocol);
    }
}

/// Whether a request's ask to switch protocols may go on to the endpoint:
/// each protocol its `Upgrade` offers is one the rule `allow`s (by name,
/// without regard to case or version: `WebSocket` and `foo/2` are
/// `websocket` and `foo`). Any other ask is taken out with the hop-by-hop
/// fields, so the request goes on as an ordinary one and an `h2c` ask, say,
/// gets an ordinary HTTP/1.1 answer.
fn upgrade_allowed(headers: &HeaderMap, allow: &[String]) -> bool {
    let mut offered = 0;
    for value in &headers.get_all(header::UPGRADE) {
        let Ok(value) = value.to_str() else {
            return false;
        };
        for protocol in value.split(',') {
            let name = protocol.split('/').next().unwrap_or_default().trim();
            if name.is_empty() {
                continue;
            }
            if !allow.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                return false;
            }
            offered += 1;
        }
    }
    offered > 0
}

/// Whether a request's `TE` lists `trailers`. That one preference passes
/// on (as `te: trailers`, the only `TE` HTTP/2 allows, RFC 9113 §8.2.2),
/// as Envoy does: gRPC servers on the C core (grpcio) refuse a request
/// without it. Any other transfer coding is this hop's business.
fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// The hash of a request for consistent hashing; `client` is its client's
/// address as text.
fn hash_of(on: &HashOn, headers: &HeaderMap, client: &HeaderValue) -> u64 {
    match on {
        HashOn::Header(name) => headers
            .get(name.as_str())
            .map_or(0, |v| hash_key(v.as_bytes())),
        HashOn::Cookie(name) => headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| {
                let (k, v) = c.trim().split_once('=')?;
                (k == name).then(|| hash_key(v.as_bytes()))
            })
            .unwrap_or(0),
        HashOn::SourceIp => hash_key(client.as_bytes()),
    }
}

async fn handle(req: Request<Inbound>, client: &HeaderValue, ctx: &Context) -> Response<Body> {
    let started = Instant::now();
    let call = grpc::Call::of(req.headers(), started);
    let table = ctx.table();
    let resp = forward(req, client, &table, ctx, started, call.as_ref()).await;
    // A gRPC refusal is a `200`; it counts as the HTTP answer it stands for.
    let status = resp
        .extensions()
        .get::<Refusal>()
        .map_or(resp.status(), |why| why.status());
    ctx.stats.response(status, started.elapsed());
    resp
}

/// Forwards one request, in named stages: [`route`] (rule, destination,
/// circuit breaker), the upstream head ([`upstream_head`]), then per try
/// [`pick`] (an endpoint), [`acquire`] (the try's request; the pool finds
/// or opens a connection as it sends), [`send`] (within the try's time),
/// [`receive`] (what the try came to: answer, retry, or failure), and
/// finally [`respond`]. The proxy's own answers to a gRPC `call` are gRPC
/// statuses, and its deadline bounds the route's timeout.
async fn forward(
    req: Request<Inbound>,
    client: &HeaderValue,
    table: &super::Table,
    ctx: &Context,
    started: Instant,
    call: Option<&grpc::Call>,
) -> Response<Body> {
    let fail = |why: Refusal| {
        ctx.stats.refused(why);
        error(why, call)
    };
    // A request body that broke off is the client's failure: 400. The
    // HTTP/1.x server side counts it itself (it sees every body that
    // breaks, also once the answer has begun).
    let http1_client = matches!(req.body(), Inbound::Http1(_));
    let invalid = || {
        if http1_client {
            error(Refusal::InvalidRequest, call)
        } else {
            fail(Refusal::InvalidRequest)
        }
    };
    let (mut parts, body) = req.into_parts();
    let routed = match route(table, &ctx.listener, &parts, random()) {
        Ok(routed) => routed,
        Err(why) => return fail(why),
    };
    let Routed {
        rule,
        upstream,
        pool,
        path,
    } = routed;
    let service = &upstream.service;
    let Some(request_guard) = upstream
        .shared
        .counters
        .try_request(service.circuit_breaker.max_requests)
    else {
        upstream.count_circuit_open();
        return fail(Refusal::CircuitOpen);
    };
    let hash = match &service.balance {
        switchyard::resource::Balance::RingHash(on) | switchyard::resource::Balance::Maglev(on) => {
            Some(hash_of(on, &parts.headers, client))
        }
        _ => None,
    };
    let authority = upstream_head(&mut parts, rule, service.protocol, client);
    let path_and_query = path.unwrap_or_else(|| {
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"))
    });

    let deadline = deadline(rule.action.timeout.map(|t| started + t), call);
    let retry = rule.action.retry.as_ref().filter(|p| p.attempts > 0);
    // A request is sent again only if its body can be: it is buffered when
    // small and its size known, streamed (and tried once) otherwise. One
    // that expects `100 Continue` is streamed: reading it would tell the
    // client to go ahead before the endpoint has.
    let expect = parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let mut body = match retry {
        Some(_) if !expect => match replayable(body, deadline).await {
            Ok(bytes) => Payload::Buffered(bytes),
            Err(Unbuffered::Stream(body)) => Payload::Stream(Some(body)),
            Err(Unbuffered::TimedOut) => return fail(Refusal::Timeout),
            Err(Unbuffered::Failed) => return invalid(),
        },
        // Without a body there is nothing to buffer: the request can be
        // sent again on a fresh connection (see `fresh_retry` below).
        _ if body.is_end_stream() => Payload::Buffered(Bytes::new()),
        _ => Payload::Stream(Some(body)),
    };
    // An HTTP/2 endpoint's client (hyper's) resets the stream when the
    // request body breaks off, which looks like the endpoint's failure:
    // the body's state tells them apart. (The HTTP/1.1 client side tells
    // it itself.)
    let watch = match (&body, service.protocol) {
        (Payload::Stream(Some(Inbound::Http1(b))), Protocol::Http2 | Protocol::Grpc) => {
            Some(b.watch())
        }
        _ => None,
    };
    let idempotent = is_idempotent(&parts.method);
    // An endpoint may close a kept-alive connection just as it is reused
    // (idle timeout, or it would not read a body it had not consumed): the
    // try fails before any byte of the answer. An idempotent request whose
    // body can be sent again then gets one more try on the same endpoint
    // (the dead connection is dropped; another one carries it), whatever the
    // route's retry policy, as HAProxy and browsers do; it does not count
    // against the endpoint or the retry budget.
    let mut fresh_retry = idempotent;
    let mut parts = Some(parts);
    let mut failed_on = None;
    let mut retries = 0;
    // Held from the decision to retry until the retry ends, for the retry
    // budget.
    let mut _retry_guard = None;
    loop {
        let Some(id) = pick(pool, hash, failed_on) else {
            return fail(Refusal::NoHealthyUpstream);
        };
        let in_flight = pool.balancer().start(id);
        let replayable = matches!(body, Payload::Buffered(_));
        // The policy's last try; the request is kept for another one unless
        // no try at all may follow.
        let last = match (replayable, retry) {
            (true, Some(policy)) => retries >= policy.attempts,
            _ => true,
        };
        let keep = !last || (fresh_retry && replayable);
        let conns = &pool.conns[id];
        let Some(request) = acquire(
            &mut parts,
            &mut body,
            !keep,
            conns,
            &path_and_query,
            authority.as_ref(),
        ) else {
            return fail(Refusal::Internal);
        };
        let per_try = retry.and_then(|p| p.per_try_timeout);
        let mut result = send(
            upstream,
            conns,
            request,
            &ctx.upstream_tasks,
            per_try,
            deadline,
        )
        .await;
        if let Err(e) = &result
            && e.is_reset()
            && watch.as_ref().is_some_and(|w| w.broke())
        {
            result = result.map_err(Error::into_downstream);
        }
        if fresh_retry
            && replayable
            && let Err(e) = &result
            && e.origin() == Origin::Upstream
            && e.retry() == Retry::ReusedOnly
            && deadline.is_none_or(|d| Instant::now() < d)
        {
            fresh_retry = false;
            debug!(error = %e, "reused connection closed before answering; trying another");
            continue;
        }
        receive(upstream, pool, id, &result);
        if let Err(e) = &result {
            match e.origin() {
                // The client's body broke off: not the endpoint's failure,
                // and nothing to try again.
                Origin::Downstream => return invalid(),
                // Refused before anything was sent (the service's limits):
                // no retry.
                Origin::Internal => {
                    upstream.count_circuit_open();
                    return fail(Refusal::of(e));
                }
                Origin::Upstream => {}
            }
        }

        // Another try: if the policy asks for it, it is safe, the budget
        // allows it, and there is time for a backoff.
        let again = retry.filter(|policy| {
            should_retry(policy, &result, idempotent, last)
                && deadline.is_none_or(|d| Instant::now() < d)
        });
        if let Some(policy) = again {
            let stats = &upstream.shared.stats;
            match upstream
                .shared
                .counters
                .try_retry(policy.budget_percent, service.circuit_breaker.max_retries)
            {
                Some(guard) => {
                    let pause = backoff(policy, retries);
                    if deadline.is_none_or(|d| Instant::now() + pause < d) {
                        drop(in_flight);
                        _retry_guard = Some(guard);
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                        pause_reading(pause, result).await;
                        retries += 1;
                        failed_on = Some(id);
                        continue;
                    }
                }
                None => {
                    stats.retries_refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        return match result {
            Ok(resp) => respond(resp, rule, request_guard),
            Err(e) => fail(Refusal::of(&e)),
        };
    }
}

/// What [`route`] found for a request.
#[derive(Debug)]
struct Routed<'t> {
    /// The matching rule.
    rule: &'t Rule,
    /// The destination's service.
    upstream: &'t Upstream,
    /// The destination's endpoints (a labelled subset, or all).
    pool: &'t Pool,
    /// The path the rule rewrites the request's to, if it does.
    path: Option<PathAndQuery>,
}

/// Stage 1, route: the listener's router, the first rule that matches,
/// a destination by weight (`roll` is a random number), and its service.
fn route<'t>(
    table: &'t super::Table,
    listener: &str,
    parts: &hyper::http::request::Parts,
    roll: u64,
) -> Result<Routed<'t>, Refusal> {
    let Some(Backend::Http(router)) = table.listeners.get(listener) else {
        return Err(Refusal::NotConfigured);
    };
    let view = RequestView::new(parts);
    let rule = router.find(&view).ok_or(Refusal::NoRoute)?;
    let path = rule.rewrite_path(&view);
    let total = rule.total_weight();
    let dest = (total > 0)
        .then(|| rule.pick_destination(roll % total))
        .flatten()
        .ok_or(Refusal::NoDestination)?;
    let upstream = table
        .upstreams
        .get(&dest.service)
        .ok_or(Refusal::UnknownService)?;
    Ok(Routed {
        rule,
        upstream,
        pool: upstream.pool(&dest.subset),
        path,
    })
}

/// Makes the client's request head the upstream one: the client's
/// authority as `Host` (an HTTP/2 client's `:authority` becomes one, which
/// header rules see and an HTTP/1.1 endpoint gets); hop-by-hop fields
/// removed, except a protocol switch the client asked for when the endpoint
/// speaks HTTP/1.1 and the rule allows it ([`upgrade_allowed`]), and `te:
/// trailers`; `X-Forwarded-For` and
/// `X-Request-Id` added; the rule's header edits. Over HTTP/2 the authority
/// is `:authority` alone (a `host` beside it makes the request malformed,
/// RFC 9113 §8.3.1, and strict servers refuse it): it is taken out and
/// returned.
fn upstream_head(
    parts: &mut hyper::http::request::Parts,
    rule: &Rule,
    protocol: Protocol,
    client: &HeaderValue,
) -> Option<Authority> {
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    let switching = parts.extensions.get::<server::UpgradeRequested>().is_some()
        && protocol == Protocol::Http
        && upgrade_allowed(&parts.headers, &rule.action.upgrades);
    let trailers = accepts_trailers(&parts.headers);
    strip_hop_by_hop(&mut parts.headers, switching);
    if trailers {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let xff = HeaderName::from_static("x-forwarded-for");
    let forwarded = match parts.headers.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prior) => {
            HeaderValue::from_str(&format!("{prior}, {}", client.to_str().unwrap_or_default())).ok()
        }
        None => Some(client.clone()),
    };
    if let Some(v) = forwarded {
        parts.headers.insert(xff, v);
    }
    let request_id = HeaderName::from_static("x-request-id");
    if !parts.headers.contains_key(&request_id) {
        parts.headers.insert(request_id, new_request_id());
    }
    rule.request_headers().apply(&mut parts.headers);
    match protocol {
        Protocol::Http2 | Protocol::Grpc => parts
            .headers
            .remove(header::HOST)
            .and_then(|host| Authority::try_from(host.as_bytes()).ok()),
        _ => None,
    }
}

/// When the proxy gives up on a request: at the `route`'s deadline, or a
/// gRPC `call`'s own (its client's `grpc-timeout`) when that comes first.
fn deadline(route: Option<Instant>, call: Option<&grpc::Call>) -> Option<Instant> {
    match (route, call.and_then(|c| c.deadline)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a request may be sent twice with the effect of once (RFC 9110
/// §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Stage 2, pick: an endpoint of `pool` for this try (see [`Pool::pick`]),
/// avoiding the one the previous try failed on.
fn pick(pool: &Pool, hash: Option<u64>, failed_on: Option<usize>) -> Option<usize> {
    pool.pick(hash, failed_on)
}

/// Stage 3, acquire: the request of one try, to the endpoint `conns`
/// reaches. The last try takes the request; earlier ones copy it (their
/// body is buffered). An HTTP/1.1 endpoint gets the client's `Host`, or its
/// own address when the client gave none. The pool finds or opens the
/// connection when the request is sent.
fn acquire(
    parts: &mut Option<hyper::http::request::Parts>,
    body: &mut Payload,
    last: bool,
    conns: &Conns,
    path: &PathAndQuery,
    authority: Option<&Authority>,
) -> Option<Request<Outbound>> {
    let uri = conns.uri(path.clone(), authority)?;
    let mut request = match (last, parts.take()) {
        (true, Some(mut p)) => {
            p.uri = uri;
            Request::from_parts(p, body.take())
        }
        (false, Some(p)) => {
            let mut r = Request::new(body.take());
            *r.method_mut() = p.method.clone();
            *r.uri_mut() = uri;
            *r.version_mut() = p.version;
            *r.headers_mut() = p.headers.clone();
            *parts = Some(p);
            r
        }
        (_, None) => return None,
    };
    if !conns.is_http2()
        && !request.headers().contains_key(header::HOST)
        && let Some(host) = conns
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        request.headers_mut().insert(header::HOST, host);
    }
    Some(request)
}

/// Stage 4, send: sends `request` on a connection of `conns` and waits for
/// the answer's head, within the try's timeout (`per_try`) and the route's
/// `deadline`.
async fn send(
    upstream: &Upstream,
    conns: &Arc<Conns>,
    request: Request<Outbound>,
    tasks: &TaskTracker,
    per_try: Option<Duration>,
    deadline: Option<Instant>,
) -> Result<Response<pool::Upstream>, Error> {
    let sent = conns.send(
        &upstream.shared.connections,
        &upstream.service,
        tasks,
        request,
    );
    let per_try = per_try.map(|t| Instant::now() + t);
    let limit = match (per_try, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match limit {
        Some(at) => match tokio::time::timeout_at(at.into(), sent).await {
            Ok(r) => r,
            // A slow endpoint may have acted on the request.
            Err(_) => Err(Error::upstream(Kind::Timeout, Retry::Idempotent)),
        },
        None => sent.await,
    }
}

/// Stage 5, receive: counts what a try at `pool`'s endpoint `id` came to
/// (its answer's status, or how it failed, as the error classifies it) and
/// tells outlier detection. A failure that is not the endpoint's (the
/// client's, the proxy's limits) and a slow endpoint are not held against
/// it.
fn receive(
    upstream: &Upstream,
    pool: &Pool,
    id: usize,
    result: &Result<Response<pool::Upstream>, Error>,
) {
    let counters = &pool.stats[id];
    match result {
        Ok(resp) => {
            counters.response(resp.status());
            upstream.record(pool, id, Outcome::Status(resp.status().as_u16()));
        }
        Err(e) => {
            debug!(
                endpoint = %pool.endpoints[id].name,
                kind = ?e.kind(),
                origin = ?e.origin(),
                retry = ?e.retry(),
                error = %e,
                "try failed"
            );
            let failure = TryFailure::of(e);
            if let Some(how) = failure {
                counters.failed(how);
            }
            if matches!(failure, Some(TryFailure::Connect | TryFailure::Reset)) {
                upstream.record(pool, id, Outcome::ConnectFailure);
            }
        }
    }
}

/// Whether `policy` sends a request (`idempotent` or not) again after a try
/// that came to `result`, when this was not the `last` try allowed: the
/// policy must ask for it and the error must say it is safe (an answer is
/// only retried for an idempotent request).
fn should_retry(
    policy: &RetryPolicy,
    result: &Result<Response<pool::Upstream>, Error>,
    idempotent: bool,
    last: bool,
) -> bool {
    !last
        && result
            .as_ref()
            .err()
            .map_or(idempotent, |e| e.may_retry(idempotent))
        && wants_retry(policy, result)
}

/// Stage 6, respond: the endpoint's answer as the client gets it, with its
/// hop-by-hop fields removed (a protocol switch kept) and the rule's edits;
/// the request counts as in flight until its body ends.
fn respond(resp: Response<pool::Upstream>, rule: &Rule, guard: Guard) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let switched = parts.status == hyper::StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_by_hop(&mut parts.headers, switched);
    rule.response_headers().apply(&mut parts.headers);
    let body = Counted {
        inner: body,
        _guard: guard,
    };
    Response::from_parts(parts, body.boxed())
}

/// The largest refused answer's body read so that its connection can serve
/// the retry (see [`pause_reading`]).
const MAX_DRAIN: usize = 16 * 1024;

/// How long reading a refused answer's body may hold up a retry when the
/// backoff is shorter.
const DRAIN_FLOOR: Duration = Duration::from_millis(10);

/// Waits out a retry's backoff `pause` while reading the rest of the answer
/// being retried (up to [`MAX_DRAIN`] bytes, until the pause or
/// [`DRAIN_FLOOR`] is over), so that its keep-alive connection goes back to
/// the pool (at the body's end) instead of being closed with the body
/// unread.
async fn pause_reading(pause: Duration, refused: Result<Response<pool::Upstream>, Error>) {
    let drain = async {
        if let Ok(resp) = refused {
            let _ = Limited::new(resp.into_body(), MAX_DRAIN).collect().await;
        }
    };
    // Past the time allowed, the answer is dropped and its connection
    // closed.
    let _ = tokio::join!(
        tokio::time::sleep(pause),
        tokio::time::timeout(pause.max(DRAIN_FLOOR), drain)
    );
}

/// The largest request body buffered so that it can be sent again.
const MAX_REPLAY: u64 = 64 * 1024;

/// A request body for one try.
enum Payload {
    /// Buffered: every try sends a copy.
    Buffered(Bytes),
    /// Streamed: the one try takes it.
    Stream(Option<Inbound>),
}

impl Payload {
    fn take(&mut self) -> Outbound {
        match self {
            Payload::Buffered(bytes) => Either::Right(Full::new(bytes.clone())),
            Payload::Stream(body) => match body.take() {
                Some(body) => Either::Left(body),
                None => Either::Right(Full::new(Bytes::new())),
            },
        }
    }
}

/// Why a request body was not buffered.
enum Unbuffered {
    /// Too large or of unknown size: stream it.
    Stream(Inbound),
    /// The route's deadline passed while reading it.
    TimedOut,
    /// The client broke off.
    Failed,
}

/// Reads `body` into memory if it is empty or its size is known and at
/// most [`MAX_REPLAY`].
async fn replayable(body: Inbound, deadline: Option<Instant>) -> Result<Bytes, Unbuffered> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    if body.size_hint().exact().is_none_or(|n| n > MAX_REPLAY) {
        return Err(Unbuffered::Stream(body));
    }
    let read = Limited::new(body, MAX_REPLAY as usize).collect();
    let collected = match deadline {
        Some(at) => tokio::time::timeout_at(at.into(), read)
            .await
            .map_err(|_| Unbuffered::TimedOut)?,
        None => read.await,
    };
    collected
        .map(|c| c.to_bytes())
        .map_err(|_| Unbuffered::Failed)
}

/// Whether `policy` retries after `result`.
///
/// Following Envoy: `gateway-error` and `5xx` also cover failures that the
/// proxy would answer with a 502 or 504 itself (connect failure, reset,
/// per-try timeout).
fn wants_retry(policy: &RetryPolicy, result: &Result<Response<pool::Upstream>, Error>) -> bool {
    let result = result.as_ref();
    policy.retry_on.iter().any(|on| match (on, result) {
        (RetryOn::ServerError, Ok(r)) => r.status().is_server_error(),
        (RetryOn::GatewayError, Ok(r)) => matches!(r.status().as_u16(), 502..=504),
        (RetryOn::RetriableStatus, Ok(r)) => {
            policy.retriable_status_codes.contains(&r.status().as_u16())
        }
        (RetryOn::ServerError | RetryOn::GatewayError, Err(_)) => true,
        (RetryOn::ConnectFailure, Err(e)) => e.kind() == Kind::Connect,
        (RetryOn::Reset, Err(e)) => e.is_reset(),
        _ => false,
    })
}

/// The pause before retry number `n + 1`: full jitter, uniform in
/// `0..=min(backoff_max, backoff_base × 2^n)`.
fn backoff(policy: &RetryPolicy, n: u32) -> Duration {
    let cap = policy
        .backoff_base
        .saturating_mul(1u32 << n.min(16))
        .min(policy.backoff_max);
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(random() % nanos.saturating_add(1))
}

/// A response body that counts its request as in flight (for the circuit
/// breaker) until it ends or is dropped.
struct Counted {
    inner: pool::Upstream,
    _guard: Guard,
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
