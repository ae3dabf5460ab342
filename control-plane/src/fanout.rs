//! The replica's in-memory configuration and how it follows the store.
//!
//! Each replica holds the whole configuration as an immutable [`State`]
//! behind an `Arc`, replaced (never mutated) per batch of revisions and
//! published on a `watch` channel. Agent sessions read the newest `Arc` when
//! they can send, so a burst of writes costs each session one push, and a
//! session that cannot send holds nothing but its `Arc` (coalescing, not
//! queueing).
//!
//! [`follow`] keeps the state current: it wakes on local writes, on other
//! replicas' notifications and on a poll timer, waits briefly for a burst to
//! settle (debounce), then reads the change log from its revision.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use switchyard::label::matches_all;
use switchyard::pb;
use switchyard::resource::{Kind, Labels, Ref, pb_ref, pb_revision};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store::{self, Op, Store};

/// The whole configuration at one revision, with the indexes scoping needs.
#[derive(Debug, Clone, Default)]
pub struct State {
    /// The newest revision applied.
    pub revision: u64,
    /// When this replica learned that the commits of this state (past the
    /// previous one) existed, if it followed them; for propagation metrics.
    learned: Option<Instant>,
    resources: BTreeMap<Ref, Arc<pb::Resource>>,
    /// Service name → names of its endpoints.
    by_service: HashMap<String, BTreeSet<String>>,
    /// Node id → names of the endpoints it owns.
    by_node: HashMap<String, BTreeSet<String>>,
    /// The label-selected part of scopes, computed once per label set.
    memo: Memo,
    /// Deltas between shared views, computed once per state.
    deltas: Deltas,
}

/// Scopes by node labels for one state. Nodes of a fleet share a few label
/// sets, so thousands of sessions reading a new state compute a handful of
/// scopes and share one `Arc<View>` each. A clone (a new state) starts empty.
#[derive(Debug, Default)]
struct Memo(std::sync::Mutex<HashMap<Labels, Arc<View>>>);

impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

/// Deltas from one view to a label-selected view, for one state. Sessions
/// of nodes with the same labels hold the same `Arc<View>`s (a session
/// keeps the view it pushed), so a fleet moving to a new state asks for a
/// handful of distinct deltas, thousands of times. The entry keeps both
/// `Arc`s alive, so their addresses, which make the key, cannot be reused
/// by other views while the state lives. A clone starts empty.
#[derive(Debug, Default)]
struct Deltas(std::sync::Mutex<DeltaMap>);

type DeltaMap = HashMap<(usize, usize, u64), (Arc<View>, Arc<View>, Option<pb::Delta>)>;

impl Clone for Deltas {
    fn clone(&self) -> Self {
        Deltas::default()
    }
}

/// A node's view: every resource in its scope, with its revision.
pub type View = BTreeMap<Ref, u64>;

impl State {
    /// Builds the state from a full read of the store.
    pub fn from_dump(dump: store::Dump) -> State {
        let mut state = State {
            revision: dump.revision,
            ..State::default()
        };
        for r in dump.resources {
            state.upsert(r);
        }
        state
    }

    /// One resource.
    pub fn get(&self, target: &Ref) -> Option<&Arc<pb::Resource>> {
        self.resources.get(target)
    }

    /// The endpoints `node` owns, in name order.
    pub fn owned<'a>(&'a self, node: &str) -> impl Iterator<Item = &'a pb::Endpoint> + 'a {
        self.by_node
            .get(node)
            .into_iter()
            .flatten()
            .filter_map(
                |name| match self.resources.get(&Ref::new(Kind::Endpoint, name)) {
                    Some(r) => match &r.kind {
                        Some(pb::resource::Kind::Endpoint(e)) => Some(e),
                        _ => None,
                    },
                    None => None,
                },
            )
    }

    /// When this replica learned of the commits that made this state: the
    /// moment [`follow`] woke for them (a local write, another replica's
    /// notification or a poll), before debouncing and reading them. `None`
    /// for a state loaded whole at start.
    pub fn learned_at(&self) -> Option<Instant> {
        self.learned
    }

    /// How many resources the state holds.
    pub fn len(&self) -> usize {
        self.resources.len()
    }

    /// Whether the state holds no resource.
    pub fn is_empty(&self) -> bool {
        self.resources.is_empty()
    }

    fn upsert(&mut self, r: pb::Resource) {
        let Some(target) = pb_ref(&r) else { return };
        self.unindex(&target);
        if let Some(pb::resource::Kind::Endpoint(e)) = &r.kind {
            self.by_service
                .entry(e.service.clone())
                .or_default()
                .insert(e.name.clone());
            if !e.node.is_empty() {
                self.by_node
                    .entry(e.node.clone())
                    .or_default()
                    .insert(e.name.clone());
            }
        }
        self.resources.insert(target, Arc::new(r));
    }

    fn remove(&mut self, target: &Ref) {
        self.unindex(target);
        self.resources.remove(target);
    }

    fn unindex(&mut self, target: &Ref) {
        let Some(old) = self.resources.get(target) else {
            return;
        };
        if let Some(pb::resource::Kind::Endpoint(e)) = &old.kind {
            let (service, node, name) = (e.service.clone(), e.node.clone(), e.name.clone());
            for (index, key) in [(&mut self.by_service, service), (&mut self.by_node, node)] {
                if let Some(set) = index.get_mut(&key) {
                    set.remove(&name);
                    if set.is_empty() {
                        index.remove(&key);
                    }
                }
            }
        }
    }

    /// Applies change-log entries (in revision order) to a copy of this state.
    pub fn apply(&self, changes: Vec<store::Change>) -> State {
        let mut next = self.clone();
        for c in changes {
            match (c.op, c.resource) {
                (Op::Upsert, Some(r)) => next.upsert(r),
                _ => next.remove(&c.target),
            }
            next.revision = next.revision.max(c.revision);
        }
        next
    }

    /// What a node needs: the listeners whose selector matches its labels,
    /// the routes and services they reach, the services exported to the DNS
    /// of nodes with its labels (`Service.dns.node_selector`), those
    /// services' endpoints, and the
    /// endpoints the node owns with their services (for health checking;
    /// not the other endpoints of those services).
    ///
    /// When the label-selected part already holds everything the node owns
    /// (a node serving the service its own proxy routes to), the node shares
    /// that part's `Arc` with every node of the same labels: no copy, and a
    /// session sees at once that nothing in its scope changed.
    pub fn scope(&self, node_id: &str, labels: &Labels) -> Arc<View> {
        self.scope_shared(node_id, labels).0
    }

    /// Like [`State::scope`], and whether the view is the one shared by
    /// every node with `labels` (see [`State::shared_delta`]).
    pub fn scope_shared(&self, node_id: &str, labels: &Labels) -> (Arc<View>, bool) {
        let selected = self.selected(labels);
        let Some(owned) = self.by_node.get(node_id) else {
            return (selected, true);
        };
        let mut extra = Vec::new();
        let mut need = |target: Ref, revision: u64| {
            if selected.get(&target) != Some(&revision) {
                extra.push((target, revision));
            }
        };
        for name in owned {
            let target = Ref::new(Kind::Endpoint, name);
            let Some(pb::resource::Kind::Endpoint(e)) =
                self.resources.get(&target).and_then(|r| r.kind.as_ref())
            else {
                continue;
            };
            need(target, e.revision);
            let service = Ref::new(Kind::Service, &e.service);
            if let Some(s) = self.resources.get(&service) {
                need(service, pb_revision(s));
            }
        }
        if extra.is_empty() {
            return (selected, true);
        }
        let mut view = (*selected).clone();
        view.extend(extra);
        (Arc::new(view), false)
    }

    /// The part of a scope that depends on labels only (memoized).
    fn selected(&self, labels: &Labels) -> Arc<View> {
        if let Some(view) = self.memo.0.lock().expect("scope memo").get(labels) {
            return view.clone();
        }
        let mut view = View::new();
        let mut services = BTreeSet::new();
        let listeners = self
            .resources
            .range(Ref::new(Kind::Listener, "")..)
            .take_while(|(r, _)| r.kind == Kind::Listener);
        for (target, r) in listeners {
            let Some(pb::resource::Kind::Listener(l)) = &r.kind else {
                continue;
            };
            if !matches_all(&l.node_selector, labels) {
                continue;
            }
            view.insert(target.clone(), l.revision);
            match &l.target {
                Some(pb::listener::Target::Service(s)) => {
                    services.insert(s.clone());
                }
                Some(pb::listener::Target::Route(route)) => {
                    let target = Ref::new(Kind::Route, route);
                    if let Some(pb::resource::Kind::Route(rt)) =
                        self.resources.get(&target).and_then(|r| r.kind.as_ref())
                    {
                        view.insert(target, rt.revision);
                        for rule in &rt.rules {
                            for d in rule.action.iter().flat_map(|a| &a.destinations) {
                                services.insert(d.service.clone());
                            }
                        }
                    }
                }
                None => {}
            }
        }
        // Services exported to the DNS of nodes with these labels.
        let all_services = self
            .resources
            .range(Ref::new(Kind::Service, "")..)
            .take_while(|(r, _)| r.kind == Kind::Service);
        for (target, r) in all_services {
            if let Some(pb::resource::Kind::Service(s)) = &r.kind
                && s.dns
                    .as_ref()
                    .is_some_and(|d| matches_all(&d.node_selector, labels))
            {
                services.insert(target.name.clone());
            }
        }
        self.add_services(&mut view, services);
        let view = Arc::new(view);
        self.memo
            .0
            .lock()
            .expect("scope memo")
            .insert(labels.clone(), view.clone());
        view
    }

    /// Adds each existing service of `services` and all its endpoints.
    fn add_services(&self, view: &mut View, services: BTreeSet<String>) {
        let mut add = |target: Ref| match self.resources.get(&target) {
            Some(r) => {
                view.insert(target, pb_revision(r));
                true
            }
            None => false,
        };
        for service in services {
            if add(Ref::new(Kind::Service, &service)) {
                for name in self.by_service.get(&service).into_iter().flatten() {
                    add(Ref::new(Kind::Endpoint, name));
                }
            }
        }
    }

    /// Like [`State::delta`] from `from` to `to`; computed once per state
    /// when `to` is `shared` (the view of every node with the same labels,
    /// as [`State::scope_shared`] says), as it is for most nodes.
    pub fn shared_delta(
        &self,
        shared: bool,
        from_revision: u64,
        from: &Arc<View>,
        to: &Arc<View>,
    ) -> Option<pb::Delta> {
        if !shared {
            return self.delta(from_revision, from, to);
        }
        let key = (
            Arc::as_ptr(from) as usize,
            Arc::as_ptr(to) as usize,
            from_revision,
        );
        if let Some((_, _, delta)) = self.deltas.0.lock().expect("deltas").get(&key) {
            return delta.clone();
        }
        // Computed outside the lock: another session may compute the same
        // delta meanwhile, which costs time, not correctness.
        let delta = self.delta(from_revision, from, to);
        self.deltas
            .0
            .lock()
            .expect("deltas")
            .insert(key, (from.clone(), to.clone(), delta.clone()));
        delta
    }

    /// The resources of `view`, as sent to an agent.
    pub fn snapshot(&self, view: &View) -> pb::Snapshot {
        let resources = view.keys().filter_map(|target| self.resources.get(target));
        switchyard::resource::pb_snapshot(self.revision, resources.map(|r| &**r))
    }

    /// The Delta that turns `from` (what an agent holds, at `from_revision`)
    /// into `to` (its scope now), or `None` when they are equal.
    pub fn delta(&self, from_revision: u64, from: &View, to: &View) -> Option<pb::Delta> {
        let upserts: Vec<pb::Resource> = to
            .iter()
            .filter(|(target, rev)| from.get(target) != Some(rev))
            .filter_map(|(target, _)| self.resources.get(target).map(|r| (**r).clone()))
            .collect();
        let removals: Vec<pb::ResourceRef> = from
            .keys()
            .filter(|target| !to.contains_key(target))
            .map(Ref::to_pb)
            .collect();
        (!upserts.is_empty() || !removals.is_empty()).then_some(pb::Delta {
            from_revision,
            to_revision: self.revision,
            upserts,
            removals,
        })
    }
}

/// How [`follow`] batches and polls.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A burst is over when nothing new arrived for this long.
    pub quiet: Duration,
    /// A burst is cut after this long, however busy.
    pub max_delay: Duration,
    /// The change log is read at least this often, notified or not.
    pub poll: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            quiet: Duration::from_millis(5),
            max_delay: Duration::from_millis(50),
            poll: Duration::from_millis(500),
        }
    }
}

/// Loads the whole configuration from the store.
pub async fn load<S: Store>(store: &S) -> store::Result<State> {
    Ok(State::from_dump(store.dump().await?))
}

/// Keeps `state` following the store until `shutdown`.
pub async fn follow<S: Store>(
    store: &S,
    state: &watch::Sender<Arc<State>>,
    head: &Head,
    timing: Timing,
    shutdown: &CancellationToken,
) {
    let mut local = head.subscribe();
    let mut notes = match store.notifications().await {
        Ok(n) => n,
        Err(error) => {
            warn!(%error, "cannot listen for other replicas' commits; polling only");
            store::Notifications::None
        }
    };
    let mut poll = tokio::time::interval(timing.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // When this replica learned of the commits about to be read: for a
        // local write, the commit itself, give or take a wake-up.
        let learned = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = local.changed() => {
                let at = Instant::now();
                debounce(&mut local, timing).await;
                at
            }
            _ = notes.next() => Instant::now(),
            _ = poll.tick() => Instant::now(),
        };
        match catch_up(store, state, learned).await {
            // Watch streams on this replica wake on other replicas' writes
            // as soon as the state has them, not at their next poll.
            Ok(()) => head.advance(state.borrow().revision),
            Err(error) => warn!(%error, "reading the change log"),
        }
    }
}

/// Waits until writes stop arriving for `quiet`, or `max_delay` passed.
async fn debounce(local: &mut watch::Receiver<u64>, timing: Timing) {
    let deadline = Instant::now() + timing.max_delay;
    loop {
        let quiet = (Instant::now() + timing.quiet).min(deadline);
        tokio::select! {
            _ = tokio::time::sleep_until(quiet) => return,
            changed = local.changed() => if changed.is_err() || Instant::now() >= deadline { return },
        }
    }
}

/// Reads every change after the published state's revision and publishes
/// the result once, as learned of at `learned`.
pub async fn catch_up<S: Store>(
    store: &S,
    state: &watch::Sender<Arc<State>>,
    learned: Instant,
) -> store::Result<()> {
    let mut next: Option<State> = None;
    loop {
        let current = next
            .as_ref()
            .map_or(state.borrow().revision, |s| s.revision);
        match store.changes(current, 1024).await {
            Ok(changes) if changes.is_empty() => break,
            Ok(changes) => {
                let base = next.take().unwrap_or_else(|| (**state.borrow()).clone());
                next = Some(base.apply(changes));
            }
            Err(store::Error::Compacted { horizon, .. }) => {
                info!(
                    from = current,
                    horizon, "fell behind the change log; reloading"
                );
                next = Some(load(store).await?);
            }
            Err(e) => return Err(e),
        }
    }
    if let Some(mut next) = next {
        next.learned = Some(learned);
        debug!(
            revision = next.revision,
            resources = next.len(),
            "state advanced"
        );
        state.send_replace(Arc::new(next));
    }
    Ok(())
}

/// The newest revision this replica knows to be committed, published so that
/// watchers wake at once on local writes instead of at their next poll.
#[derive(Debug, Clone)]
pub struct Head(Arc<watch::Sender<u64>>);

impl Head {
    /// Starts at `revision`.
    pub fn new(revision: u64) -> Self {
        Self(Arc::new(watch::Sender::new(revision)))
    }

    /// Records that `revision` is committed (ignores older ones).
    pub fn advance(&self, revision: u64) {
        self.0.send_if_modified(|head| {
            let newer = revision > *head;
            if newer {
                *head = revision;
            }
            newer
        });
    }

    /// The newest revision known to be committed.
    pub fn current(&self) -> u64 {
        *self.0.borrow()
    }

    /// A receiver that wakes on every advance.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests;
