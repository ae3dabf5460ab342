//! `AgentService.Register` and `Deregister`: service discovery from the
//! node. An agent declares the service instances running on its node; they
//! become Endpoints owned by that node, which its agent then health-checks.
//!
//! A node may only touch endpoints it owns: the check is made here, against
//! the store, and the write carries the revision that was checked
//! (optimistic concurrency), so an endpoint that changes hands in between
//! makes the whole request fail with ABORTED instead of being overwritten.

use switchyard::pb;
use switchyard::resource::{Kind, Ref};
use switchyard::validate::{Invalid, MAX_BATCH, Violations, join};
use tracing::info;

use crate::grpc::{Head, results, write};
use crate::nodes::{Error, now_ms};
use crate::store::{HealthWrite, Removal, Store};

/// Creates or updates the endpoints of `req` (owned by `req.node_id`) and
/// creates its missing services, in one transaction.
pub async fn register<S: Store>(
    store: &S,
    head: &Head,
    req: pb::RegisterRequest,
) -> Result<pb::RegisterResponse, Error> {
    let node = req.node_id.as_str();
    let mut v = Violations::new();
    switchyard::validate::name(&mut v, "node_id", node);
    let total = req.endpoints.len() + req.services.len();
    if req.endpoints.is_empty() {
        v.push("endpoints", "at least one endpoint is required");
    } else if total > MAX_BATCH {
        v.push(
            "endpoints",
            format_args!("{total} endpoints and services; at most {MAX_BATCH} per request"),
        );
    }
    v.finish(())?;

    let mut v = Violations::new();
    let mut writes = Vec::with_capacity(total);
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
        let stored = owned_revision(store, node, &endpoint.name, &field).await?;
        let resource = pb::Resource {
            kind: Some(pb::resource::Kind::Endpoint(endpoint)),
        };
        match write(&resource, &field, Some(stored)) {
            Ok(w) => writes.push(w),
            Err(e) => v.extend(e),
        }
    }
    v.finish(())?;
    let applied = store.apply(writes, false).await?;
    head.advance(applied.revision);
    info!(%node, revision = applied.revision, endpoints = req.endpoints.len(), "registered");
    Ok(pb::RegisterResponse {
        revision: applied.revision,
        results: results(applied.results),
    })
}

/// Deletes, or marks draining, endpoints owned by `req.node_id`.
pub async fn deregister<S: Store>(
    store: &S,
    head: &Head,
    req: pb::DeregisterRequest,
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
        match owned_revision(store, node, name, &field).await? {
            0 => {}
            revision => present.push((name.clone(), field, revision)),
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
            store.delete(removals, false).await?
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

/// The revision of endpoint `name` if `node` owns it, 0 if it does not
/// exist; an error naming `field` if another node (or an operator) owns it.
async fn owned_revision<S: Store>(
    store: &S,
    node: &str,
    name: &str,
    field: &str,
) -> Result<u64, Error> {
    let Some(stored) = store.get(&Ref::new(Kind::Endpoint, name)).await? else {
        return Ok(0);
    };
    match stored.kind {
        Some(pb::resource::Kind::Endpoint(e)) if e.node == node => Ok(e.revision),
        _ => Err(Error::NotOwned {
            field: field.to_owned(),
            endpoint: name.to_owned(),
            node: node.to_owned(),
        }),
    }
}
