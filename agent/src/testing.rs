//! Test helpers: small, valid protobuf resources to build Snapshots and
//! Deltas from, and a raw HTTP/1.1 call for the agent's local API.

use switchyard::pb;
use switchyard::resource::set_pb_revision;

/// One request to an HTTP/1.1 server on loopback `port` (the connection
/// closed after it): the answer's status and its body, trimmed.
pub async fn http_call(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: local\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let (_, body) = out.split_once("\r\n\r\n").expect("an HTTP answer");
    (status, body.trim().to_owned())
}

/// Wraps a resource kind into a `pb::Resource` carrying `revision`.
fn at(revision: u64, kind: pb::resource::Kind) -> pb::Resource {
    let mut r = pb::Resource {
        kind: Some(kind),
        ..Default::default()
    };
    set_pb_revision(&mut r, revision);
    r
}

/// An HTTP service with default settings.
pub fn service(name: &str, revision: u64) -> pb::Resource {
    at(
        revision,
        pb::resource::Kind::Service(pb::Service {
            name: name.into(),
            ..Default::default()
        }),
    )
}

/// An endpoint of `service` on `10.0.0.1:8080`.
pub fn endpoint(name: &str, service: &str, revision: u64) -> pb::Resource {
    at(
        revision,
        pb::resource::Kind::Endpoint(pb::Endpoint {
            name: name.into(),
            service: service.into(),
            address: "10.0.0.1".into(),
            port: 8080,
            ..Default::default()
        }),
    )
}

/// A route sending everything to `service`.
pub fn route(name: &str, service: &str, revision: u64) -> pb::Resource {
    at(
        revision,
        pb::resource::Kind::Route(pb::Route {
            name: name.into(),
            rules: vec![pb::RouteRule {
                matches: vec![],
                action: Some(pb::RouteAction {
                    destinations: vec![pb::WeightedDestination {
                        service: service.into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }],
            ..Default::default()
        }),
    )
}

/// An HTTP listener on `address:port` in front of `route`.
pub fn listener(name: &str, address: &str, port: u32, route: &str, revision: u64) -> pb::Resource {
    at(
        revision,
        pb::resource::Kind::Listener(pb::Listener {
            name: name.into(),
            address: address.into(),
            port,
            target: Some(pb::listener::Target::Route(route.into())),
            ..Default::default()
        }),
    )
}

/// A Snapshot at `revision` holding `resources`.
pub fn snapshot(revision: u64, resources: impl IntoIterator<Item = pb::Resource>) -> pb::Snapshot {
    use pb::resource::Kind as K;
    let mut s = pb::Snapshot {
        revision,
        ..Default::default()
    };
    for r in resources {
        match r.kind {
            Some(K::Service(x)) => s.services.push(x),
            Some(K::Endpoint(x)) => s.endpoints.push(x),
            Some(K::Route(x)) => s.routes.push(x),
            Some(K::Listener(x)) => s.listeners.push(x),
            None => {}
        }
    }
    s
}

/// A Delta from `from` to `to`.
pub fn delta(
    from: u64,
    to: u64,
    upserts: impl IntoIterator<Item = pb::Resource>,
    removals: impl IntoIterator<Item = (switchyard::resource::Kind, &'static str)>,
) -> pb::Delta {
    pb::Delta {
        from_revision: from,
        to_revision: to,
        upserts: upserts.into_iter().collect(),
        removals: removals
            .into_iter()
            .map(|(kind, name)| switchyard::resource::Ref::new(kind, name).to_pb())
            .collect(),
    }
}

/// A complete, valid configuration at `revision`: service, endpoint and
/// route `web`, listener `web` on `127.0.0.1:8080`, all at `revision`.
pub fn web(revision: u64) -> pb::Snapshot {
    snapshot(
        revision,
        [
            service("web", revision),
            endpoint("web-1", "web", revision),
            route("web", "web", revision),
            listener("web", "127.0.0.1", 8080, "web", revision),
        ],
    )
}
