//! The checks themselves: an HTTP GET, a TCP connect, or the standard
//! `grpc.health.v1.Health/Check` call. Each returns a short description of
//! the outcome, which becomes the reason reported with a health change.

use std::net::IpAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use switchyard::resource::Check;
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::Target;

/// Most of a response body read to look for the expected substring.
const MAX_BODY: usize = 64 << 10;

/// Runs one check against `target`: `Ok` with what passed, `Err` with what failed.
pub async fn probe(target: &Target) -> Result<String, String> {
    Prober::new(target).run().await
}

/// Runs the checks of one endpoint; keeps what may be reused between them
/// (the gRPC channel, which reconnects by itself).
pub(super) struct Prober {
    target: Target,
    grpc: Option<HealthClient<tonic::transport::Channel>>,
}

impl Prober {
    pub(super) fn new(target: &Target) -> Self {
        Self {
            target: target.clone(),
            grpc: None,
        }
    }

    pub(super) async fn run(&mut self) -> Result<String, String> {
        let t = &self.target;
        match &t.check.check {
            Check::Tcp => {
                connect(&t.address, t.port).await?;
                Ok("TCP connect".into())
            }
            Check::Http {
                path,
                host,
                status,
                body,
            } => http(t, path, host.as_deref(), status, body.as_deref()).await,
            Check::Grpc { service } => {
                let client = match &mut self.grpc {
                    Some(client) => client,
                    None => {
                        let uri = format!("http://{}:{}", host_for_uri(&t.address), t.port);
                        let channel = tonic::transport::Endpoint::from_shared(uri)
                            .map_err(|e| format!("address: {e}"))?
                            .connect_timeout(t.check.timeout)
                            .connect_lazy();
                        self.grpc.insert(HealthClient::new(channel))
                    }
                };
                let response = client
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: service.clone(),
                    })
                    .await
                    .map_err(|s| format!("gRPC {:?}: {}", s.code(), s.message()))?;
                match response.into_inner().status() {
                    ServingStatus::Serving => Ok("gRPC SERVING".into()),
                    other => Err(format!("gRPC {}", other.as_str_name())),
                }
            }
        }
    }
}

async fn connect(address: &str, port: u16) -> Result<TcpStream, String> {
    let stream = TcpStream::connect((address, port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// An address as the host part of a URI: IPv6 in brackets.
fn host_for_uri(address: &str) -> String {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => address.to_owned(),
    }
}

/// One HTTP/1.1 GET on a fresh connection, closed afterwards (as HAProxy
/// and Envoy check by default): a check must see what a new client sees.
async fn http(
    t: &super::Target,
    path: &str,
    host: Option<&str>,
    status: &std::ops::RangeInclusive<u16>,
    expected: Option<&str>,
) -> Result<String, String> {
    let stream = connect(&t.address, t.port).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let host = match host {
        Some(h) => h.to_owned(),
        None => format!("{}:{}", host_for_uri(&t.address), t.port),
    };
    let request = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "switchyard-health-check")
        .header(http::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP request: {e}"))?;
    let exchange = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let code = response.status().as_u16();
        if !status.contains(&code) {
            return Err(format!("HTTP {code}"));
        }
        let Some(expected) = expected else {
            return Ok(format!("HTTP {code}"));
        };
        let mut body = response.into_body();
        let mut seen = Vec::new();
        while seen.len() < MAX_BODY {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        seen.extend_from_slice(data);
                    }
                }
                Some(Err(e)) => return Err(format!("HTTP body: {e}")),
                None => break,
            }
        }
        seen.truncate(MAX_BODY);
        if contains(&seen, expected.as_bytes()) {
            Ok(format!("HTTP {code}, body matched"))
        } else {
            Err(format!("HTTP {code}, body lacks {expected:?}"))
        }
    };
    // The connection is driven here, not by a spawned task: the check owns
    // everything it starts.
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    tokio::select! {
        outcome = &mut exchange => outcome,
        closed = &mut conn => match closed {
            Ok(()) => exchange.await,
            Err(e) => Err(format!("HTTP: {e}")),
        },
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
