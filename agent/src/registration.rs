//! Service instances declared on the node, registered as endpoints it owns.
//!
//! A TOML file lists what runs on the node, the way a Consul agent's service
//! definitions do:
//!
//! ```toml
//! address = "10.0.0.7"        # default address of the instances below
//! on_shutdown = "drain"       # or "deregister", or "keep"
//!
//! [[service]]
//! service = "web"             # the service it is an instance of
//! port = 8080
//! labels = { version = "v2" }
//! create = { protocol = "http" }   # create the service when it does not exist
//! health_check = { http = { path = "/healthz" }, interval = "2s" }
//! ```
//!
//! The agent sends the whole list with `AgentService.Register` each time it
//! connects (so instances dropped from the file are removed), and on a clean
//! shutdown drains or deregisters them as `on_shutdown` says.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use switchyard::pb;
use switchyard::resource::Resource;
use switchyard::validate::{Invalid, Violations, join};

/// What to do with the node's registrations when the agent stops cleanly.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdown {
    /// Keep them, marked `draining`: proxies send them no new requests, and
    /// the agent's next start registers and checks them again.
    #[default]
    Drain,
    /// Delete them.
    Deregister,
    /// Leave them as they are.
    Keep,
}

/// The node's registrations, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// Endpoints (owner left empty: the control plane sets this node) and
    /// services to create.
    pub request: pb::RegisterRequest,
    /// What a clean shutdown does.
    pub on_shutdown: OnShutdown,
}

impl Registration {
    /// Names of the endpoints registered.
    pub fn endpoint_names(&self) -> Vec<String> {
        self.request
            .endpoints
            .iter()
            .map(|e| e.name.clone())
            .collect()
    }
}

/// Why a registration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not valid TOML of the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, with line and column.
        message: String,
    },
    /// Its content is invalid.
    #[error("{path}: {invalid}")]
    Invalid {
        /// The file.
        path: String,
        /// Every problem.
        invalid: Invalid,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    address: Option<String>,
    #[serde(default)]
    on_shutdown: OnShutdown,
    #[serde(default, rename = "service")]
    services: Vec<Instance>,
}

/// One service instance, as the file's `[[service]]` tables and the local
/// API's request bodies declare it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Instance {
    service: String,
    name: Option<String>,
    address: Option<String>,
    port: u32,
    #[serde(default)]
    weight: u32,
    zone: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    health_check: Option<Check>,
    create: Option<Create>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Create {
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Check {
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<u32>,
    fall: Option<u32>,
    http: Option<HttpCheck>,
    tcp: Option<Empty>,
    grpc: Option<GrpcCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpCheck {
    #[serde(default)]
    path: String,
    #[serde(default)]
    host: String,
    #[serde(default)]
    status: Option<[u32; 2]>,
    #[serde(default)]
    body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcCheck {
    #[serde(default)]
    service: String,
}

/// Reads and checks the registration file at `path` for node `node_id`.
pub fn load(path: &Path, node_id: &str) -> Result<Registration, Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, node_id).map_err(|e| match e {
        Error::Parse { message, .. } => Error::Parse {
            path: shown.clone(),
            message,
        },
        Error::Invalid { invalid, .. } => Error::Invalid {
            path: shown.clone(),
            invalid,
        },
        other => other,
    })
}

/// Parses and checks a registration file's text, reporting every problem
/// with the place it is in the file (`service[1].port`).
pub fn parse(text: &str, node_id: &str) -> Result<Registration, Error> {
    let file: File = toml::from_str(text).map_err(|e| Error::Parse {
        path: String::new(),
        message: e.to_string().trim_end().to_owned(),
    })?;
    let mut v = Violations::new();
    let mut request = pb::RegisterRequest {
        node_id: node_id.to_owned(),
        replace: true,
        ..Default::default()
    };
    for (i, instance) in file.services.iter().enumerate() {
        let field = format!("service[{i}]");
        let Some((endpoint, service)) =
            convert(&mut v, &field, node_id, file.address.as_deref(), instance)
        else {
            continue;
        };
        if let Some(service) = service
            && !request.services.iter().any(|s| s.name == service.name)
        {
            request.services.push(service);
        }
        if request.endpoints.iter().any(|e| e.name == endpoint.name) {
            v.push(
                join(&field, "name"),
                format_args!("endpoint {:?} is declared twice", endpoint.name),
            );
        }
        request.endpoints.push(endpoint);
    }
    v.finish(()).map_err(|invalid| Error::Invalid {
        path: String::new(),
        invalid,
    })?;
    Ok(Registration {
        request,
        on_shutdown: file.on_shutdown,
    })
}

/// The endpoint `instance` declares (at `field`), and the service to create
/// for it if it asks; `None` when it is unusable (problems go to `v`).
fn convert(
    v: &mut Violations,
    field: &str,
    node_id: &str,
    default_address: Option<&str>,
    instance: &Instance,
) -> Option<(pb::Endpoint, Option<pb::Service>)> {
    let Some(address) = instance
        .address
        .clone()
        .or_else(|| default_address.map(str::to_owned))
    else {
        v.push(
            join(field, "address"),
            "required (or set `address` at the top of the file)",
        );
        return None;
    };
    let health_check = instance
        .health_check
        .as_ref()
        .map(|c| check(v, &join(field, "health_check"), c));
    let endpoint = pb::Endpoint {
        name: instance
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{node_id}-{}", instance.service, instance.port)),
        labels: instance.labels.clone(),
        service: instance.service.clone(),
        address,
        port: instance.port,
        weight: instance.weight,
        node: node_id.to_owned(),
        zone: instance.zone.clone().unwrap_or_default(),
        health_check,
        ..Default::default()
    };
    // Checked here too, so a mistake is reported against the file.
    let resource = pb::Resource {
        kind: Some(pb::resource::Kind::Endpoint(endpoint.clone())),
        ..Default::default()
    };
    if let Err(invalid) = Resource::from_pb(&resource, field) {
        let inner = join(field, "endpoint");
        for problem in invalid.violations {
            let at = match problem.field.strip_prefix(&inner) {
                Some(rest) => format!("{field}{rest}").trim_start_matches('.').to_owned(),
                None => problem.field,
            };
            v.push(at, problem.reason);
        }
    }
    let service = instance.create.as_ref().map(|create| {
        let protocol = match create.protocol.as_deref() {
            None | Some("http") => pb::Protocol::Http,
            Some("http2") => pb::Protocol::Http2,
            Some("grpc") => pb::Protocol::Grpc,
            Some("tcp") => pb::Protocol::Tcp,
            Some(other) => {
                v.push(
                    join(field, "create.protocol"),
                    format_args!("{other:?} is not one of http, http2, grpc, tcp"),
                );
                pb::Protocol::Http
            }
        };
        pb::Service {
            name: instance.service.clone(),
            protocol: protocol as i32,
            ..Default::default()
        }
    });
    Some((endpoint, service))
}

impl Registration {
    /// No instances yet: what a node starts from when only the local API
    /// registers them.
    pub fn empty(node_id: &str) -> Registration {
        Registration {
            request: pb::RegisterRequest {
                node_id: node_id.to_owned(),
                replace: true,
                ..Default::default()
            },
            on_shutdown: OnShutdown::default(),
        }
    }

    /// Adds (or replaces, by endpoint name) one instance; returns the
    /// endpoint's name, or every problem with it.
    pub fn add(&mut self, instance: &Instance) -> Result<String, Invalid> {
        let mut v = Violations::new();
        let node = self.request.node_id.clone();
        let converted = convert(&mut v, "", &node, None, instance);
        v.finish(())?;
        let Some((endpoint, service)) = converted else {
            return Err(Invalid::one("address", "must be set"));
        };
        if let Some(service) = service
            && !self.request.services.iter().any(|s| s.name == service.name)
        {
            self.request.services.push(service);
        }
        let name = endpoint.name.clone();
        self.request.endpoints.retain(|e| e.name != name);
        self.request.endpoints.push(endpoint);
        Ok(name)
    }

    /// Removes the instance registered as endpoint `name`; whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.request.endpoints.len();
        self.request.endpoints.retain(|e| e.name != name);
        self.request.endpoints.len() != before
    }
}

fn check(v: &mut Violations, field: &str, c: &Check) -> pb::HealthCheck {
    let duration = |v: &mut Violations, name: &str, text: &Option<String>| {
        let text = text.as_deref()?;
        match humantime::parse_duration(text) {
            Ok(d) => Some(proto_duration(d)),
            Err(e) => {
                v.push(join(field, name), format_args!("{text:?}: {e}"));
                None
            }
        }
    };
    let kinds = [c.http.is_some(), c.tcp.is_some(), c.grpc.is_some()];
    if kinds.iter().filter(|k| **k).count() != 1 {
        v.push(field, "exactly one of http, tcp, grpc is required");
    }
    let check = if let Some(h) = &c.http {
        let [min, max] = h.status.unwrap_or([0, 0]);
        Some(pb::health_check::Check::Http(pb::HttpHealthCheck {
            path: h.path.clone(),
            host: h.host.clone(),
            expected_status_min: min,
            expected_status_max: max,
            expected_body: h.body.clone(),
        }))
    } else if let Some(g) = &c.grpc {
        Some(pb::health_check::Check::Grpc(pb::GrpcHealthCheck {
            service_name: g.service.clone(),
        }))
    } else {
        c.tcp
            .as_ref()
            .map(|_| pb::health_check::Check::Tcp(pb::TcpHealthCheck {}))
    };
    pb::HealthCheck {
        interval: duration(v, "interval", &c.interval),
        timeout: duration(v, "timeout", &c.timeout),
        healthy_threshold: c.rise.unwrap_or(0),
        unhealthy_threshold: c.fall.unwrap_or(0),
        check,
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests;
