//! HTTP listeners: HTTP/1.1 and cleartext HTTP/2 (gRPC included) on one
//! socket, routed per request and forwarded over pooled keep-alive
//! connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use switchyard::resource::{HashOn, Protocol, Service};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{Backend, Context, DRAIN, random};
use crate::balance::hash_key;
use crate::router::RequestView;

/// The response body type: the upstream's, streamed, or a short error.
pub(super) type Body = BoxBody<Bytes, hyper::Error>;

/// A pooled HTTP client (HTTP/1.1, or HTTP/2 prior knowledge).
pub(super) type Client = hyper_util::client::legacy::Client<HttpConnector, Incoming>;

/// Clients shared across configurations, one per protocol and connect
/// timeout, so that a configuration change keeps the connection pools warm.
#[derive(Debug, Default)]
pub(super) struct Clients(Mutex<HashMap<(bool, Duration), Client>>);

impl Clients {
    /// The client for `service`.
    pub(super) fn get(&self, service: &Service) -> Client {
        let http2 = matches!(service.protocol, Protocol::Http2 | Protocol::Grpc);
        let key = (http2, service.connect_timeout);
        let mut clients = self.0.lock().expect("clients");
        clients
            .entry(key)
            .or_insert_with(|| {
                let mut connector = HttpConnector::new();
                connector.set_connect_timeout(Some(service.connect_timeout));
                connector.set_nodelay(true);
                hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .http2_only(http2)
                    .build(connector)
            })
            .clone()
    }
}

/// Accepts connections until `stop`, then drains them.
pub(super) async fn serve(listener: TcpListener, ctx: Context, stop: CancellationToken) {
    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(error) => {
                    debug!(%error, "accept failed");
                    continue;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let service = hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, Infallible>(handle(req, peer, &ctx).await) }
        });
        let conn = server
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            if let Err(error) = conn.await {
                debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // In-flight requests finish; idle keep-alive connections close.
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        debug!("drain timed out; closing the remaining connections");
    }
    connections.shutdown().await;
}

fn error(status: StatusCode, reason: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("switchyard: {reason}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by Connection are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

fn hash_of(on: &HashOn, headers: &HeaderMap, peer: SocketAddr) -> u64 {
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
        HashOn::SourceIp => hash_key(peer.ip().to_string().as_bytes()),
    }
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, ctx: &Context) -> Response<Body> {
    let table = ctx.table();
    let resp = forward(req, peer, &table, ctx).await;
    ctx.stats.forwarded.fetch_add(1, Ordering::Relaxed);
    resp
}

async fn forward(
    req: Request<Incoming>,
    peer: SocketAddr,
    table: &super::Table,
    ctx: &Context,
) -> Response<Body> {
    let fail = |status, reason: &str| {
        ctx.stats.failed.fetch_add(1, Ordering::Relaxed);
        error(status, reason)
    };
    let Some(Backend::Http(router)) = table.listeners.get(&ctx.listener) else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "listener is not configured",
        );
    };
    let (mut parts, body) = req.into_parts();
    let view = RequestView::new(&parts);
    let Some(rule) = router.find(&view) else {
        return fail(StatusCode::NOT_FOUND, "no route matches");
    };
    let path = rule.rewrite_path(&view);
    let total = rule.total_weight();
    let Some(dest) = (total > 0)
        .then(|| rule.pick_destination(random() % total))
        .flatten()
    else {
        return fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "the route has no destination with weight",
        );
    };
    let Some(upstream) = table.upstreams.get(&dest.service) else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, "unknown service");
    };
    let pool = upstream.pool(&dest.subset);
    let hash = match &upstream.service.balance {
        switchyard::resource::Balance::RingHash(on) | switchyard::resource::Balance::Maglev(on) => {
            Some(hash_of(on, &parts.headers, peer))
        }
        _ => None,
    };
    let Some(id) = pool.pick(hash) else {
        return fail(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    };
    let endpoint = &pool.endpoints[id];
    let _in_flight = pool.balancer().start(id);

    // The upstream request: same method, headers and body; the endpoint's
    // authority; proxy headers added.
    let path_and_query = path.unwrap_or_else(|| {
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"))
    });
    let uri = Uri::builder()
        .scheme("http")
        .authority(format!("{}:{}", endpoint.address, endpoint.port))
        .path_and_query(path_and_query)
        .build();
    let Ok(uri) = uri else {
        return fail(StatusCode::BAD_GATEWAY, "cannot address the endpoint");
    };
    // HTTP/2 clients send the authority, not a Host header; keep it for
    // HTTP/1.1 upstreams.
    if !parts.headers.contains_key(header::HOST)
        && let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    parts.uri = uri;
    strip_hop_by_hop(&mut parts.headers);
    let xff = HeaderName::from_static("x-forwarded-for");
    let client_ip = peer.ip().to_string();
    let forwarded = match parts.headers.get(&xff).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {client_ip}"),
        None => client_ip,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        parts.headers.insert(xff, v);
    }
    let request_id = HeaderName::from_static("x-request-id");
    if !parts.headers.contains_key(&request_id) {
        let id = format!("{:016x}{:016x}", random(), random());
        if let Ok(v) = HeaderValue::from_str(&id) {
            parts.headers.insert(request_id, v);
        }
    }
    rule.request_headers().apply(&mut parts.headers);

    let sent = upstream.client.request(Request::from_parts(parts, body));
    let result = match rule.action.timeout {
        Some(limit) => match tokio::time::timeout(limit, sent).await {
            Ok(r) => r,
            Err(_) => return fail(StatusCode::GATEWAY_TIMEOUT, "upstream timed out"),
        },
        None => sent.await,
    };
    match result {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            rule.response_headers().apply(&mut parts.headers);
            Response::from_parts(parts, body.boxed())
        }
        Err(e) if e.is_connect() => {
            debug!(endpoint = %endpoint.name, error = %e, "connect failed");
            fail(StatusCode::BAD_GATEWAY, "upstream connect error")
        }
        Err(e) => {
            debug!(endpoint = %endpoint.name, error = %e, "upstream failed");
            fail(StatusCode::BAD_GATEWAY, "upstream reset or protocol error")
        }
    }
}
