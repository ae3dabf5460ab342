//! The operator gRPC API (`switchyard.v1.OperatorService`); errors become
//! statuses through [`crate::status`].

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use switchyard::label::Selector;
use switchyard::pb;
use switchyard::resource::{Kind, Ref, Resource, pb_labels};
use switchyard::validate::{Invalid, MAX_BATCH, Violations, join};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::{error, info};

use crate::auth::Caller;
use crate::fanout::Head;
use crate::metrics::{Method, Requests};
use crate::status::{invalid_argument, status};
use crate::store::{self, Action, Op, Store};

mod page;

/// Default and largest `List` page.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// A Watch response is cut after this many encoded bytes (whole revisions
/// only), well under the 4 MiB that gRPC clients accept by default.
const WATCH_RESPONSE_BYTES: usize = 1 << 20;
/// How often a Watch with nothing to send re-reads the change log anyway, in
/// case a write by another replica was not signalled.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// The `OperatorService` implementation over any [`Store`].
#[derive(Debug, Clone)]
pub struct Operator<S> {
    store: Arc<S>,
    head: Head,
    shutdown: CancellationToken,
    requests: Arc<Requests>,
}

impl<S: Store> Operator<S> {
    /// Serves `store`; Watch streams end when `shutdown` is cancelled.
    pub fn new(store: Arc<S>, head: Head, shutdown: CancellationToken) -> Self {
        Self {
            store,
            head,
            shutdown,
            requests: Arc::default(),
        }
    }

    /// Counts the calls it answers in `requests` (by default, in counters
    /// of its own).
    pub fn with_requests(self, requests: Arc<Requests>) -> Self {
        Self { requests, ..self }
    }
}

/// Parses `resource`, found at `field` of a request, into a store write.
pub(crate) fn write(
    resource: &pb::Resource,
    field: &str,
    expected_revision: Option<u64>,
) -> Result<store::Write, Invalid> {
    let parsed = Resource::from_pb(resource, field)?;
    Ok(store::Write {
        resource: resource.clone(),
        target: parsed.reference(),
        refs: parsed.references(),
        field: join(field, parsed.kind().as_str()),
        expected_revision,
    })
}

/// What an apply did, as the API reports it.
pub(crate) fn results(
    results: Vec<(switchyard::resource::Ref, Action, u64)>,
) -> Vec<pb::ApplyResult> {
    results
        .into_iter()
        .map(|(target, action, revision)| pb::ApplyResult {
            r#ref: Some(target.to_pb()),
            action: match action {
                Action::Created => pb::ApplyAction::Created,
                Action::Configured => pb::ApplyAction::Configured,
                Action::Unchanged => pb::ApplyAction::Unchanged,
            } as i32,
            revision,
        })
        .collect()
}

fn batch_size(v: &mut Violations, n: usize) {
    if n == 0 {
        v.push("items", "must have at least one item");
    } else if n > MAX_BATCH {
        v.push(
            "items",
            format_args!("has {n} items; at most {MAX_BATCH} are allowed per request"),
        );
    }
}

fn page_size(requested: u32) -> Result<usize, Status> {
    match requested as usize {
        0 => Ok(DEFAULT_PAGE),
        n if n <= MAX_PAGE => Ok(n),
        n => Err(invalid_argument(Invalid::one(
            "page_size",
            format_args!("must be in 1..{MAX_PAGE} (0 or unset means {DEFAULT_PAGE}), not {n}"),
        ))),
    }
}

/// Most distinct references checked for existence when an Apply is refused
/// for other reasons too (see [`Operator::missing_references`]).
const MAX_REFERENCES_CHECKED: usize = 1000;

fn selector(field: &str, text: &str) -> Result<Selector, Status> {
    Selector::parse(text).map_err(|e| invalid_argument(Invalid::one(field, e)))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// The calls themselves; the trait implementation below counts them.
impl<S: Store> Operator<S> {
    /// The references of `items` (valid or not) to resources that neither
    /// exist nor are declared in `items`, by item. A store failure is
    /// logged and reported as no problem: the request is refused anyway.
    async fn missing_references(&self, items: &[pb::ApplyItem]) -> Vec<(usize, Invalid)> {
        let declared: std::collections::HashSet<Ref> = items
            .iter()
            .filter_map(|item| {
                item.resource
                    .as_ref()
                    .and_then(switchyard::resource::pb_ref)
            })
            .collect();
        let mut wanted: Vec<(usize, String, Ref)> = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let Some(resource) = &item.resource else {
                continue;
            };
            let Some(at) = switchyard::resource::pb_ref(resource) else {
                continue;
            };
            for (target, field) in switchyard::resource::pb_references(resource) {
                if !declared.contains(&target) {
                    let field = format!("items[{i}].resource.{}.{field}", at.kind);
                    wanted.push((i, field, target));
                }
            }
        }
        let mut distinct: Vec<Ref> = wanted.iter().map(|w| w.2.clone()).collect();
        distinct.sort();
        distinct.dedup();
        distinct.truncate(MAX_REFERENCES_CHECKED);
        let missing = match self.store.missing(&distinct).await {
            Ok(missing) => missing
                .into_iter()
                .collect::<std::collections::HashSet<_>>(),
            Err(error) => {
                error!(%error, "checking the references of a refused apply");
                return Vec::new();
            }
        };
        wanted
            .into_iter()
            .filter(|(_, _, target)| missing.contains(target))
            .map(|(i, field, target)| {
                (
                    i,
                    Invalid {
                        violations: vec![store::missing_violation(field, &target)],
                    },
                )
            })
            .collect()
    }

    async fn call_apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let author = Caller::of(&request).author();
        let req = request.into_inner();
        let mut v = Violations::new();
        batch_size(&mut v, req.items.len());
        let mut writes = Vec::with_capacity(req.items.len());
        // Problems by item, so that those found later (missing references)
        // are told beside the item's others.
        let mut problems: Vec<(usize, Invalid)> = Vec::new();
        for (i, item) in req.items.iter().take(MAX_BATCH).enumerate() {
            let field = format!("items[{i}].resource");
            let Some(resource) = &item.resource else {
                problems.push((i, Invalid::one(field, "must be set")));
                continue;
            };
            match write(resource, &field, item.expected_revision) {
                Ok(w) => writes.push(w),
                Err(e) => problems.push((i, e)),
            }
        }
        if !problems.is_empty() {
            // As a compiler does, report every problem at once: the
            // references to missing resources too, which the store would
            // only find once the field problems are fixed.
            let items = &req.items[..req.items.len().min(MAX_BATCH)];
            problems.extend(self.missing_references(items).await);
            problems.sort_by_key(|(i, _)| *i);
            for (_, e) in problems {
                v.extend(e);
            }
        }
        v.finish(()).map_err(invalid_argument)?;
        let applied = self
            .store
            .apply(writes, req.dry_run, &author)
            .await
            .map_err(status)?;
        if !req.dry_run {
            self.head.advance(applied.revision);
        }
        let changed = applied
            .results
            .iter()
            .filter(|r| r.1 != Action::Unchanged)
            .count();
        info!(
            revision = applied.revision,
            items = applied.results.len(),
            changed,
            dry_run = req.dry_run,
            "apply"
        );
        Ok(Response::new(pb::ApplyResponse {
            revision: applied.revision,
            results: results(applied.results),
        }))
    }

    async fn call_delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let author = Caller::of(&request).author();
        let req = request.into_inner();
        let mut v = Violations::new();
        batch_size(&mut v, req.items.len());
        let mut removals = Vec::with_capacity(req.items.len());
        for (i, item) in req.items.iter().take(MAX_BATCH).enumerate() {
            let field = format!("items[{i}].ref");
            match item.r#ref.as_ref().map(|r| Ref::from_pb(r, &field)) {
                None => v.push(field, "must be set"),
                Some(Err(e)) => v.extend(e),
                Some(Ok(target)) => removals.push(store::Removal {
                    target,
                    field,
                    expected_revision: item.expected_revision,
                }),
            }
        }
        v.finish(()).map_err(invalid_argument)?;
        let revision = self
            .store
            .delete(removals, req.dry_run, &author)
            .await
            .map_err(status)?;
        if !req.dry_run {
            self.head.advance(revision);
        }
        info!(
            revision,
            items = req.items.len(),
            dry_run = req.dry_run,
            "delete"
        );
        Ok(Response::new(pb::DeleteResponse { revision }))
    }

    async fn call_get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let req = request.into_inner();
        let target = match &req.r#ref {
            None => return Err(invalid_argument(Invalid::one("ref", "must be set"))),
            Some(r) => Ref::from_pb(r, "ref").map_err(invalid_argument)?,
        };
        match self.store.get(&target).await.map_err(status)? {
            Some(resource) => Ok(Response::new(pb::GetResponse {
                resource: Some(resource),
            })),
            None => Err(status(store::Error::NotFound(target))),
        }
    }

    async fn call_list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let req = request.into_inner();
        let kind = Kind::from_pb(req.kind).ok_or_else(|| {
            invalid_argument(Invalid::one(
                "kind",
                format_args!(
                    "must be one of KIND_SERVICE, KIND_ENDPOINT, KIND_ROUTE or KIND_LISTENER, not {}",
                    req.kind
                ),
            ))
        })?;
        let selector = selector("label_selector", &req.label_selector)?;
        let limit = page_size(req.page_size)?;
        let mut after = if req.page_token.is_empty() {
            String::new()
        } else {
            page::decode(&req.page_token, kind, &selector)
                .map_err(|e| invalid_argument(Invalid::one("page_token", e)))?
        };
        let mut resources = Vec::new();
        // Whether a resource follows the page: only then is there a next
        // page, so that the last page says it is the last.
        let mut more = false;
        let revision;
        if selector.is_empty() {
            let page = self.store.list(kind, &after, limit).await.map_err(status)?;
            revision = page.revision;
            resources = page.resources;
            more = page.more;
        } else {
            // Filtering happens here, so a selective query may read several
            // store pages, until one match past the page shows there is a
            // next one. The reported revision is the first (oldest) one, so
            // a Watch from it misses nothing.
            let scan = limit.max(DEFAULT_PAGE);
            let mut first = None;
            'scan: loop {
                let page = self.store.list(kind, &after, scan).await.map_err(status)?;
                first.get_or_insert(page.revision);
                for r in page.resources {
                    after = switchyard::resource::pb_ref(&r)
                        .map(|r| r.name)
                        .unwrap_or_default();
                    if pb_labels(&r).is_some_and(|l| selector.matches(l)) {
                        if resources.len() == limit {
                            more = true;
                            break 'scan;
                        }
                        resources.push(r);
                    }
                }
                if !page.more {
                    break;
                }
            }
            revision = first.unwrap_or_default();
        }
        let next_page_token = match resources.last().and_then(switchyard::resource::pb_ref) {
            Some(last) if more => page::encode(kind, &selector, &last.name),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListResponse {
            resources,
            next_page_token,
            revision,
        }))
    }

    async fn call_watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let mut kinds = Vec::new();
        for (i, k) in req.kinds.iter().enumerate() {
            match Kind::from_pb(*k) {
                Some(k) => kinds.push(k),
                None => v.push(
                    format!("kinds[{i}]"),
                    format_args!(
                        "must be one of KIND_SERVICE, KIND_ENDPOINT, KIND_ROUTE or KIND_LISTENER, not {k}"
                    ),
                ),
            }
        }
        v.finish(()).map_err(invalid_argument)?;
        // A revision beyond the store's is one this store never made: the
        // client's state comes from elsewhere (a store restored from an
        // older backup, another cluster). Waiting for it would hide that.
        let current = self.store.revision().await.map_err(status)?;
        if req.from_revision > current {
            return Err(Status::out_of_range(format!(
                "from_revision {} is beyond the store's current revision {current}: the \
                 client's state does not come from this store (restored from a backup?); \
                 list again and watch from the list's revision",
                req.from_revision
            )));
        }
        // Fail fast on a compacted revision rather than on the first read.
        self.store
            .changes(req.from_revision, 1)
            .await
            .map_err(status)?;
        let state = Watcher {
            store: self.store.clone(),
            head: self.head.subscribe(),
            shutdown: self.shutdown.clone(),
            after: req.from_revision,
            kinds,
            ready: VecDeque::new(),
            failed: false,
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(
            state,
            Watcher::next,
        ))))
    }

    async fn call_list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let req = request.into_inner();
        let selector = selector("label_selector", &req.label_selector)?;
        let revision = self.store.revision().await.map_err(status)?;
        let nodes: Vec<pb::Node> = self
            .store
            .nodes()
            .await
            .map_err(status)?
            .into_iter()
            .filter(|n| selector.matches(&n.labels))
            .collect();
        let at = nodes
            .iter()
            .filter(|n| n.applied_revision >= req.rollout_revision)
            .count();
        Ok(Response::new(pb::ListNodesResponse {
            nodes,
            revision,
            nodes_at_revision: at as u32,
        }))
    }
}

#[tonic::async_trait]
impl<S: Store> pb::operator_service_server::OperatorService for Operator<S> {
    async fn apply(
        &self,
        request: Request<pb::ApplyRequest>,
    ) -> Result<Response<pb::ApplyResponse>, Status> {
        let result = self.call_apply(request).await;
        self.requests.record(Method::Apply, &result);
        result
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let result = self.call_delete(request).await;
        self.requests.record(Method::Delete, &result);
        result
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let result = self.call_get(request).await;
        self.requests.record(Method::Get, &result);
        result
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let result = self.call_list(request).await;
        self.requests.record(Method::List, &result);
        result
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let result = self.call_watch(request).await;
        self.requests.record(Method::Watch, &result);
        result
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let result = self.call_list_nodes(request).await;
        self.requests.record(Method::ListNodes, &result);
        result
    }
}

/// The state of one Watch stream: where it is in the change log and what is
/// ready to send. It holds no more than one store read's worth of changes.
struct Watcher<S> {
    store: Arc<S>,
    head: watch::Receiver<u64>,
    shutdown: CancellationToken,
    after: u64,
    kinds: Vec<Kind>,
    ready: VecDeque<pb::WatchResponse>,
    failed: bool,
}

impl<S: Store> Watcher<S> {
    async fn next(mut self) -> Option<(Result<pb::WatchResponse, Status>, Self)> {
        loop {
            if self.failed || self.shutdown.is_cancelled() {
                return None;
            }
            if let Some(resp) = self.ready.pop_front() {
                return Some((Ok(resp), self));
            }
            match self.store.changes(self.after, 64).await {
                // Nothing can be committed while the store is down: the
                // stream stays open and reads again after a pause.
                Err(e) if e.is_unavailable() => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(WATCH_POLL) => {}
                    }
                }
                Err(e) => {
                    self.failed = true;
                    return Some((Err(status(e)), self));
                }
                Ok(changes) if changes.is_empty() => {
                    tokio::select! {
                        _ = self.shutdown.cancelled() => return None,
                        _ = self.head.changed() => {}
                        _ = tokio::time::sleep(WATCH_POLL) => {}
                    }
                }
                Ok(changes) => {
                    self.after = changes.last().map_or(self.after, |c| c.revision);
                    self.batch(changes);
                }
            }
        }
    }

    /// Groups changes into responses of whole revisions, cut by size.
    fn batch(&mut self, changes: Vec<store::Change>) {
        let mut current = pb::WatchResponse::default();
        let mut bytes = 0;
        let mut i = 0;
        while i < changes.len() {
            let rev = changes[i].revision;
            let end = changes[i..]
                .iter()
                .position(|c| c.revision != rev)
                .map_or(changes.len(), |n| i + n);
            let group: Vec<pb::Change> = changes[i..end]
                .iter()
                .filter(|c| self.kinds.is_empty() || self.kinds.contains(&c.target.kind))
                .map(|c| pb::Change {
                    revision: c.revision,
                    op: match c.op {
                        Op::Upsert => pb::ChangeOp::Upsert,
                        Op::Delete => pb::ChangeOp::Delete,
                    } as i32,
                    r#ref: Some(c.target.to_pb()),
                    resource: c.resource.clone(),
                    author: c.author.clone(),
                })
                .collect();
            i = end;
            if group.is_empty() {
                continue;
            }
            let size: usize = group.iter().map(Message::encoded_len).sum();
            if bytes > 0 && bytes + size > WATCH_RESPONSE_BYTES {
                self.ready.push_back(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += size;
            current.revision = rev;
            current.changes.extend(group);
        }
        if !current.changes.is_empty() {
            self.ready.push_back(current);
        }
    }
}
