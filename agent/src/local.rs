//! The agent's local registration API.
//!
//! It lets processes on the node register and deregister
//! themselves (like a Consul agent's `/v1/agent/service/register`):
//!
//! - `GET /v1/registrations`: the instances registered, as JSON;
//! - `PUT /v1/registrations`: register one instance; the body is a JSON
//!   object with the fields of a `[[service]]` table of the `--services`
//!   file (`service`, `port`, `address`, `name`, `weight`, `zone`,
//!   `labels`, `health_check`, `create`);
//! - `DELETE /v1/registrations/NAME`: deregister endpoint `NAME`.
//!
//! Changes are registered with the control plane at once over the agent's
//! stream (202 Accepted: the control plane may still refuse them; the agent
//! logs and counts refusals). They last until the agent stops: on its next
//! start, the `--services` file is the node's registration again. The API
//! has no authentication, so it only listens on loopback.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use switchyard::http::{response, serve};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::registration::{Instance, Registration};

/// Largest request body accepted.
const MAX_BODY: usize = 64 << 10;

fn json(status: StatusCode, value: serde_json::Value) -> Response<Full<Bytes>> {
    response(status, "application/json", format!("{value}\n"))
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json(status, serde_json::json!({ "error": message.to_string() }))
}

/// Serves the registration API for node `node_id` on `listener` until
/// `shutdown`, changing `registrations`.
pub async fn serve_registrations(
    listener: TcpListener,
    node_id: String,
    registrations: Arc<watch::Sender<Option<Registration>>>,
    shutdown: CancellationToken,
) {
    let handle = move |req: Request<Incoming>| {
        let registrations = registrations.clone();
        let node_id = node_id.clone();
        async move { answer(req, &node_id, &registrations).await }
    };
    serve(listener, handle, shutdown).await;
}

async fn answer(
    req: Request<Incoming>,
    node_id: &str,
    registrations: &watch::Sender<Option<Registration>>,
) -> Response<Full<Bytes>> {
    const ROOT: &str = "/v1/registrations";
    let path = req.uri().path().to_owned();
    match (req.method().clone(), path.as_str()) {
        (Method::GET, ROOT) => {
            let list: Vec<serde_json::Value> = registrations
                .borrow()
                .iter()
                .flat_map(|r| &r.request.endpoints)
                .map(|e| {
                    serde_json::json!({
                        "name": e.name, "service": e.service,
                        "address": e.address, "port": e.port,
                    })
                })
                .collect();
            json(StatusCode::OK, serde_json::Value::Array(list))
        }
        (Method::PUT, ROOT) => {
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("body: {e}")),
            };
            let instance: Instance = match serde_json::from_slice(&body) {
                Ok(instance) => instance,
                Err(e) => return error(StatusCode::BAD_REQUEST, e),
            };
            let mut outcome = Ok(String::new());
            // Under the channel's lock, so concurrent requests do not lose
            // each other's changes; a refused instance changes nothing.
            registrations.send_if_modified(|r| {
                let mut next = r.clone().unwrap_or_else(|| Registration::empty(node_id));
                outcome = next.add(&instance);
                let ok = outcome.is_ok();
                if ok {
                    *r = Some(next);
                }
                ok
            });
            match outcome {
                Ok(name) => {
                    info!(endpoint = %name, "registered through the local API");
                    json(
                        StatusCode::ACCEPTED,
                        serde_json::json!({ "endpoint": name }),
                    )
                }
                Err(invalid) => error(StatusCode::BAD_REQUEST, invalid),
            }
        }
        (Method::DELETE, p) if p.starts_with(ROOT) && p.len() > ROOT.len() + 1 => {
            let name = &p[ROOT.len() + 1..];
            let removed =
                registrations.send_if_modified(|r| r.as_mut().is_some_and(|r| r.remove(name)));
            if removed {
                info!(endpoint = %name, "deregistered through the local API");
                json(
                    StatusCode::ACCEPTED,
                    serde_json::json!({ "endpoint": name }),
                )
            } else {
                error(
                    StatusCode::NOT_FOUND,
                    format_args!("no registration {name:?}"),
                )
            }
        }
        (_, p) if p.starts_with(ROOT) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET or PUT /v1/registrations, DELETE /v1/registrations/NAME",
        ),
        _ => error(StatusCode::NOT_FOUND, "not found; see /v1/registrations"),
    }
}

#[cfg(test)]
mod tests;
