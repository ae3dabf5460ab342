//! `AgentService.Register` and `Deregister`: service discovery from the
//! node. An agent declares the service instances running on its node; they
//! become Endpoints owned by that node, which its agent then health-checks.
//!
//! A node may only touch endpoints it owns: the check is made here, against
//! the store, and the write carries the revision that was checked
//! (optimistic concurrency), so an endpoint that changes hands in between
//! makes the whole request fail with ABORTED instead of being overwritten.
//!
//! Every write is attributed to `node/<node_id>`, from the agent's address.

use switchyard::pb;
use switchyard::resource::{Kind, Ref};
use switchyard::validate::{Invalid, MAX_BATCH, Violations, join};
use tracing::info;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::fanout::Head;
use crate::fanout::State;
use crate::grpc::{results, write};
use crate::nodes::Error;
use crate::store::now_ms;
use crate::store::{Author, HealthWrite, Removal, Store};

/// How long a registration waits for the replica's state to catch up with
/// the store (normally a few milliseconds).
const CATCH_UP: Duration = Duration::from_secs(5);

/// The label Register puts on every endpoint it writes: it tells a node's
/// own registrations from endpoints an operator assigned to the node.
pub const REGISTERED_BY: (&str, &str) = ("switchyard.io/registered-by", "agent");

/// Creates or updates the endpoints of `req` (owned by `req.node_id`) and
/// creates its missing services, in one transaction. With `replace`, then
/// deletes the node's earlier registrations that `req` no longer lists, as
/// the replica's `state` knows them once it has caught up with the store.
/// `address` is the agent's, for the audit trail.
pub async fn register<S: Store>(
    store: &S,
    head: &Head,
    state: &watch::Receiver<Arc<State>>,
    req: pb::RegisterRequest,
    address: &str,
) -> Result<pb::RegisterResponse, Error> {
    let node = req.node_id.as_str();
    let mut v = Violations::new();
    switchyard::validate::name(&mut v, "node_id", node);
    let total = req.endpoints.len() + req.services.len();
    if req.endpoints.is_empty() && !req.replace {
        v.push("endpoints", "at least one endpoint is required");
    } else if total > MAX_BATCH {
        v.push(
            "endpoints",
            format_args!("{total} endpoints and services; at most {MAX_BATCH} per request"),
        );
    }
    v.finish(())?;
    let author = Author::new(format!("node/{node}"), address);

    let mut v = Violations::new();
    let mut writes = Vec::with_capacity(total);
    // Endpoints drained when their agent stopped, registered again now.
    let mut back = Vec::new();
    for (i, service) in req.services.iter().enumerate() {
        let field = format!("services[{i}]");
        if store
            .get(&Ref::new(Kind::Service, &service.name))
            .await?
            .is_some()
        {
            continue;
        }
        let resource = pb::Resource {
            kind: Some(pb::resource::Kind::Service(service.clone())),
            ..Default::default()
        };
        // Some(0): "must not exist", so a service an operator creates
        // meanwhile is not overwritten.
        match write(&resource, &field, Some(0)) {
            Ok(w) => writes.push(w),
            Err(e) => v.extend(e),
        }
    }
    for (i, endpoint) in req.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        let mut endpoint = endpoint.clone();
        if endpoint.node.is_empty() {
            endpoint.node = node.to_owned();
        } else if endpoint.node != node {
            v.push(
                join(&field, "node"),
                format_args!("must be empty or {node:?}, the registering node"),
            );
            continue;
        }
        endpoint
            .labels
            .insert(REGISTERED_BY.0.into(), REGISTERED_BY.1.into());
        let (stored, health) = owned(store, node, &endpoint.name, &field).await?;
        if health == pb::Health::Draining {
            back.push(endpoint.name.clone());
        }
        let resource = pb::Resource {
            kind: Some(pb::resource::Kind::Endpoint(endpoint)),
            ..Default::default()
        };
        match write(&resource, &field, Some(stored)) {
            Ok(w) => writes.push(w),
            Err(e) => v.extend(e),
        }
    }
    v.finish(())?;
    let mut revision = store.revision().await?;
    let mut done = Vec::new();
    if !writes.is_empty() {
        let applied = store.apply(writes, false, &author).await?;
        revision = applied.revision;
        done = results(applied.results);
    }
    if !back.is_empty() {
        let writes = back
            .iter()
            .map(|name| HealthWrite {
                endpoint: name.clone(),
                node: node.to_owned(),
                health: pb::Health::Unknown,
                reason: "registered again by its agent".into(),
                at_ms: now_ms(),
                address: address.to_owned(),
                by_control_plane: false,
            })
            .collect();
        if let Some(r) = store.write_health(writes).await?.revision {
            revision = r;
        }
    }
    if req.replace {
        // Read our own writes: the in-memory state trails the store by a
        // debounce, and a registration made just before must be seen.
        let floor = store.revision().await?;
        let mut follow = state.clone();
        let caught_up = tokio::time::timeout(CATCH_UP, follow.wait_for(|s| s.revision >= floor))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|state| state.clone());
        let state = match caught_up {
            Some(state) => state,
            None => {
                tracing::warn!(%node, floor, "state behind the store; stale registrations are left for the next registration");
                follow.borrow().clone()
            }
        };
        let listed: std::collections::HashSet<&str> =
            req.endpoints.iter().map(|e| e.name.as_str()).collect();
        let stale: Vec<Removal> = state
            .owned(node)
            .filter(|e| {
                e.labels.get(REGISTERED_BY.0).map(String::as_str) == Some(REGISTERED_BY.1)
                    && !listed.contains(e.name.as_str())
            })
            .map(|e| Removal {
                target: Ref::new(Kind::Endpoint, &e.name),
                field: "endpoints".into(),
                expected_revision: Some(e.revision),
            })
            .collect();
        if !stale.is_empty() {
            // Best effort: what was registered stands; an endpoint that
            // changed meanwhile is left for the next registration.
            match store.delete(stale.clone(), false, &author).await {
                Ok(r) => {
                    revision = r;
                    info!(%node, endpoints = stale.len(), "removed registrations no longer declared");
                }
                Err(error) => tracing::warn!(%node, %error, "removing stale registrations"),
            }
        }
    }
    head.advance(revision);
    info!(%node, revision, endpoints = req.endpoints.len(), "registered");
    Ok(pb::RegisterResponse {
        revision,
        results: done,
    })
}

/// Deletes, or marks draining, endpoints owned by `req.node_id`, whose
/// agent calls from `address`.
pub async fn deregister<S: Store>(
    store: &S,
    head: &Head,
    req: pb::DeregisterRequest,
    address: &str,
) -> Result<pb::DeregisterResponse, Error> {
    let node = req.node_id.as_str();
    let mut v = Violations::new();
    switchyard::validate::name(&mut v, "node_id", node);
    if req.endpoints.len() > MAX_BATCH {
        v.push(
            "endpoints",
            format_args!("{} endpoints; at most {MAX_BATCH}", req.endpoints.len()),
        );
    }
    for (i, name) in req.endpoints.iter().enumerate() {
        switchyard::validate::name(&mut v, &format!("endpoints[{i}]"), name);
    }
    let mode = pb::DeregisterMode::try_from(req.mode)
        .map_err(|_| Invalid::one("mode", format_args!("unknown deregister mode {}", req.mode)))?;
    v.finish(())?;

    let mut present = Vec::new();
    for (i, name) in req.endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}]");
        match owned(store, node, name, &field).await? {
            (0, _) => {}
            (revision, _) => present.push((name.clone(), field, revision)),
        }
    }
    if present.is_empty() {
        return Ok(pb::DeregisterResponse {
            revision: store.revision().await?,
        });
    }
    let revision = match mode {
        pb::DeregisterMode::Unspecified | pb::DeregisterMode::Delete => {
            let removals = present
                .into_iter()
                .map(|(name, field, revision)| Removal {
                    target: Ref::new(Kind::Endpoint, name),
                    field,
                    expected_revision: Some(revision),
                })
                .collect();
            store
                .delete(
                    removals,
                    false,
                    &Author::new(format!("node/{node}"), address),
                )
                .await?
        }
        pb::DeregisterMode::Drain => {
            let writes = present
                .into_iter()
                .map(|(name, _, _)| HealthWrite {
                    endpoint: name,
                    node: node.to_owned(),
                    health: pb::Health::Draining,
                    reason: "draining: deregistered by its agent".into(),
                    at_ms: now_ms(),
                    address: address.to_owned(),
                    by_control_plane: false,
                })
                .collect();
            match store.write_health(writes).await?.revision {
                Some(revision) => revision,
                None => store.revision().await?,
            }
        }
    };
    head.advance(revision);
    info!(%node, revision, ?mode, endpoints = req.endpoints.len(), "deregistered");
    Ok(pb::DeregisterResponse { revision })
}

/// The revision and health of endpoint `name` if `node` owns it, revision
/// 0 if it does not exist; an error naming `field` if another node (or an
/// operator) owns it.
async fn owned<S: Store>(
    store: &S,
    node: &str,
    name: &str,
    field: &str,
) -> Result<(u64, pb::Health), Error> {
    let Some(stored) = store.get(&Ref::new(Kind::Endpoint, name)).await? else {
        return Ok((0, pb::Health::Unknown));
    };
    match stored.kind {
        Some(pb::resource::Kind::Endpoint(e)) if e.node == node => Ok((e.revision, e.health())),
        _ => Err(Error::NotOwned {
            field: field.to_owned(),
            endpoint: name.to_owned(),
            node: node.to_owned(),
        }),
    }
}
