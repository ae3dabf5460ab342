//! `AgentService.Sync`: one session per agent stream.
//!
//! A session remembers what its agent holds (a [`View`]: each resource in
//! scope with its revision) and at most one push in flight. When it may send
//! (nothing in flight) and the replica's [`State`] is newer than what it last
//! checked, it computes the node's scope and sends the difference as one
//! Delta, or nothing when the node's scope did not change. Changes made while
//! a push is in flight coalesce into the next one, so a slow or stuck agent
//! costs one message and one `Arc<State>`, whatever the write rate.
//!
//! The session is the response stream itself (an `unfold`), so it runs only
//! while tonic polls it and is dropped with the stream: no task to leak.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use switchyard::pb;
use switchyard::resource::Ref;
use switchyard::validate::{Violations, join};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::auth::Caller;
use crate::fanout::Head;
use crate::fanout::{State, View};
use crate::health::Reporter;
use crate::nodes::{Held, Registry};
use crate::status::{invalid_argument, node_status, status};
use crate::store::now_ms;
use crate::store::{NodeRow, Store};

/// How long a new stream may take to send its Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The `AgentService` implementation.
#[derive(Debug)]
pub struct Agents<S> {
    store: Arc<S>,
    state: watch::Receiver<Arc<State>>,
    registry: Arc<Registry>,
    health: Arc<Reporter>,
    head: Head,
    shutdown: CancellationToken,
}

impl<S: Store> Agents<S> {
    /// Serves agents from `state`, recording their status in `registry` and
    /// their health reports in `health`; registrations advance `head`.
    pub fn new(
        store: Arc<S>,
        state: watch::Receiver<Arc<State>>,
        registry: Arc<Registry>,
        health: Arc<Reporter>,
        head: Head,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            state,
            registry,
            health,
            head,
            shutdown,
        }
    }
}

type SyncStream = Pin<Box<dyn Stream<Item = Result<pb::SyncResponse, Status>> + Send>>;

#[tonic::async_trait]
impl<S: Store> pb::agent_service_server::AgentService for Agents<S> {
    type SyncStream = SyncStream;

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let caller = Caller::of(&request);
        caller.speak_for("node_id", &request.get_ref().node_id)?;
        let address = caller.address;
        crate::registration::register(
            self.store.as_ref(),
            &self.head,
            &self.state,
            request.into_inner(),
            &address,
        )
        .await
        .map(Response::new)
        .map_err(node_status)
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let caller = Caller::of(&request);
        caller.speak_for("node_id", &request.get_ref().node_id)?;
        crate::registration::deregister(
            self.store.as_ref(),
            &self.head,
            request.into_inner(),
            &caller.address,
        )
        .await
        .map(Response::new)
        .map_err(node_status)
    }

    async fn sync(
        &self,
        request: Request<Streaming<pb::SyncRequest>>,
    ) -> Result<Response<SyncStream>, Status> {
        let caller = Caller::of(&request);
        let address = caller.address.clone();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10s"))??;
        let hello = match first.and_then(|m| m.message) {
            Some(pb::sync_request::Message::Hello(hello)) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a Sync stream must be a hello",
                ));
            }
        };
        let mut v = Violations::new();
        switchyard::validate::name(&mut v, "hello.node_id", &hello.node_id);
        switchyard::validate::labels(&mut v, "hello.labels", hello.labels.iter());
        let mut view = View::new();
        for (i, r) in hello.resources.iter().enumerate() {
            let field = format!("hello.resources[{i}].ref");
            match r.r#ref.as_ref().map(|x| Ref::from_pb(x, &field)) {
                Some(Ok(target)) => {
                    view.insert(target, r.revision);
                }
                Some(Err(e)) => v.extend(e),
                None => v.push(field, "must be set"),
            }
        }
        v.finish(()).map_err(invalid_argument)?;
        // Only after the checks above: the name is then short and valid.
        caller.speak_for("hello.node_id", &hello.node_id)?;

        // An agent behind the change-log horizon, or with nothing, starts
        // over from a snapshot; any other resumes from what it holds.
        // The first push waits until this replica's state has every write
        // committed before the agent arrived (it trails by a debounce).
        let read = async {
            Ok::<_, crate::store::Error>((
                self.store.horizon().await?,
                self.store.revision().await?,
            ))
        };
        let (horizon, floor) = match read.await {
            Ok(read) => read,
            // The store is down: serve the agent from memory. Nothing newer
            // than this replica's state can be committed meanwhile, and the
            // agent's inventory makes the delta exact whatever the horizon.
            Err(e) if e.is_unavailable() => (0, self.state.borrow().revision),
            Err(e) => return Err(status(e)),
        };
        // An agent ahead of the store holds another history (e.g. the
        // database was restored from a backup): it starts over too.
        let have = hello.last_applied_revision;
        let fresh = have == 0 || have < horizon || have > floor;
        if have > floor {
            warn!(node = %hello.node_id, have, store = floor, "agent is ahead of the store; sending a snapshot");
        }
        let id = self.registry.session_id();
        let row = NodeRow {
            id: hello.node_id.into(),
            labels: Arc::new(hello.labels),
            agent_version: hello.agent_version.into(),
            applied_revision: if fresh { 0 } else { have },
            connected: true,
            replica: self.registry.replica.clone(),
            last_seen_ms: now_ms(),
            session: id,
            nack: None,
            instance: hello
                .instance_id
                .chars()
                .take(64)
                .collect::<String>()
                .into(),
            persist: None,
        };
        let replaced = self.admit(&row).await?;
        let session = Session {
            inbound,
            state: self.state.clone(),
            changes: WatchStream::from_changes(self.state.clone()),
            registry: self.registry.clone(),
            health: self.health.clone(),
            address,
            shutdown: Box::pin(self.shutdown.clone().cancelled_owned()),
            view: Arc::new(if fresh { View::new() } else { view }),
            revision: hello.last_applied_revision,
            floor,
            checked: None,
            in_flight: None,
            want_snapshot: fresh,
            nacked: None,
            greeted: false,
            heard: Instant::now(),
            lease: Box::pin(tokio::time::sleep(self.registry.lease)),
            replaced: Box::pin(replaced.cancelled_owned()),
            row,
            recorded_at: Instant::now(),
        };
        session.registry.record(session.row.clone());
        session
            .registry
            .stats
            .connected
            .fetch_add(1, Ordering::Relaxed);
        info!(node = %session.row.id, revision = session.revision, fresh, "agent connected");
        // Boxed, so that the stream's state and the future of its next
        // message share one copy of the session rather than holding two.
        Ok(Response::new(Box::pin(futures::stream::unfold(
            Box::new(session),
            Session::next,
        ))))
    }
}

impl<S: Store> Agents<S> {
    /// Admits a new stream for `row.id`, on this replica and then in the
    /// store, or refuses it with `ALREADY_EXISTS` while the node has a live
    /// stream from another agent instance on any replica.
    async fn admit(&self, row: &NodeRow) -> Result<CancellationToken, Status> {
        let lease = self.registry.lease;
        let refuse = |held: Held| {
            self.registry.stats.refused.fetch_add(1, Ordering::Relaxed);
            warn!(node = %row.id, holder = %held.replica, "refused a second stream for a node with a live one");
            Status::already_exists(format!(
                "node {:?} already has a live Sync stream, on replica {}: another agent with \
                 the same node id is refused until that stream ends or has been silent for \
                 {lease:?}",
                &*row.id, held.replica
            ))
        };
        let replaced = self.registry.admit(row).map_err(refuse)?;
        let live_after = now_ms() - lease.as_millis() as i64;
        match self.store.claim_node(row.clone(), live_after).await {
            Ok(None) => Ok(replaced),
            Ok(Some(replica)) => {
                self.registry.leave(&row.id, row.session);
                Err(refuse(Held { replica }))
            }
            // The store is down: this replica's own streams are all it can
            // check; the row is written with the session's first status.
            Err(e) if e.is_unavailable() => Ok(replaced),
            Err(e) => {
                self.registry.leave(&row.id, row.session);
                Err(status(e))
            }
        }
    }
}

/// A push waiting for its Ack or Nack.
#[derive(Debug)]
struct InFlight {
    /// The revision the agent will be at once it applies the push.
    revision: u64,
    /// What the agent will hold then.
    view: Arc<View>,
    /// When the replica learned of the newest commit the push carries, if
    /// its Ack measures propagation (see `SessionStats::propagation`).
    learned: Option<Instant>,
}

/// One agent stream.
struct Session {
    inbound: Streaming<pb::SyncRequest>,
    /// The newest state, read when the session looks for a push.
    state: watch::Receiver<Arc<State>>,
    /// Wakes the session when the state moves. One future waits across
    /// wake-ups: a new `changed()` on every Ack would register with (and
    /// leave) the watch's waiter list, a lock every session shares.
    changes: WatchStream<Arc<State>>,
    registry: Arc<Registry>,
    health: Arc<Reporter>,
    /// The agent's address: its health reports are recorded as coming from it.
    address: String,
    /// Created once: re-registering with the process-wide token on every
    /// wake would make ten thousand sessions contend on its lock.
    shutdown: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// What the agent holds (as of its last Ack); shared with other
    /// sessions of nodes with the same scope.
    view: Arc<View>,
    /// The revision the agent holds.
    revision: u64,
    /// Nothing is pushed from a state older than this: the store's revision
    /// when the agent connected (which is at least the agent's own, or the
    /// agent starts over from a snapshot).
    floor: u64,
    /// The state revision the view was last compared with, if any.
    checked: Option<u64>,
    in_flight: Option<InFlight>,
    /// The agent asked for (or needs) a full snapshot.
    want_snapshot: bool,
    /// The last revision the agent refused; not pushed again until the
    /// state moves past it.
    nacked: Option<u64>,
    /// Whether anything was pushed on this stream yet.
    greeted: bool,
    /// When the agent last sent anything.
    heard: Instant,
    /// Fires at the end of the lease as of some earlier `heard`; re-armed
    /// only when it fires, so a busy stream costs no timer work per message.
    lease: Pin<Box<tokio::time::Sleep>>,
    /// Fires when the same agent's new stream replaces this one.
    replaced: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    row: NodeRow,
    recorded_at: Instant,
}

impl Session {
    async fn next(mut self: Box<Self>) -> Option<(Result<pb::SyncResponse, Status>, Box<Self>)> {
        loop {
            if self.in_flight.is_none()
                && let Some(message) = self.push()
            {
                return Some((Ok(message), self));
            }
            tokio::select! {
                _ = self.shutdown.as_mut() => return None,
                _ = self.replaced.as_mut() => return None,
                _ = self.lease.as_mut() => {
                    let end = self.heard + self.registry.lease;
                    if end > Instant::now() {
                        self.lease.as_mut().reset(end);
                    } else {
                        warn!(node = %self.row.id, "agent silent past its lease; closing its stream");
                        return None;
                    }
                }
                // Without a push in flight, a new state may mean a new push.
                // (`push` reads the newest state from `state`.)
                changed = self.changes.next(), if self.in_flight.is_none() => {
                    changed.as_ref()?;
                }
                message = self.inbound.message() => match message {
                    Ok(Some(message)) => {
                        if let Err(status) = self.receive(message) {
                            return Some((Err(status), self));
                        }
                    }
                    Ok(None) => return None,
                    Err(error) => {
                        debug!(node = %self.row.id, %error, "agent stream failed");
                        return None;
                    }
                },
            }
        }
    }

    /// The next push, if the agent needs one.
    fn push(&mut self) -> Option<pb::SyncResponse> {
        let state = self.state.borrow().clone();
        if self.checked == Some(state.revision) && !self.want_snapshot {
            return None;
        }
        if state.revision < self.floor {
            return None;
        }
        if self.nacked.is_some_and(|n| state.revision <= n) {
            return None;
        }
        self.checked = Some(state.revision);
        let (scope, shared) = state.scope_shared(&self.row.id, &self.row.labels);
        let message = if self.want_snapshot {
            self.want_snapshot = false;
            pb::sync_response::Message::Snapshot(state.snapshot(&scope))
        } else {
            // The first push of a resumed session is sent even when empty:
            // it tells the agent it is current.
            let first = !self.greeted;
            let unchanged = Arc::ptr_eq(&self.view, &scope);
            match (!unchanged)
                .then(|| state.shared_delta(shared, self.revision, &self.view, &scope))
                .flatten()
            {
                Some(delta) => pb::sync_response::Message::Delta(delta),
                None if first => pb::sync_response::Message::Delta(pb::Delta {
                    from_revision: self.revision,
                    to_revision: state.revision,
                    ..Default::default()
                }),
                None => {
                    // Nothing in scope changed: the node is current at this
                    // revision without any message.
                    self.current_at(state.revision);
                    return None;
                }
            }
        };
        let stats = &self.registry.stats;
        match &message {
            pb::sync_response::Message::Snapshot(_) => &stats.snapshots,
            _ => &stats.deltas,
        }
        .fetch_add(1, Ordering::Relaxed);
        // A session's first push catches the agent up from wherever it
        // was: no propagation to measure.
        let learned = state.learned_at().filter(|_| self.greeted);
        self.greeted = true;
        self.in_flight = Some(InFlight {
            revision: state.revision,
            view: scope,
            learned,
        });
        let message = pb::SyncResponse {
            message: Some(message),
        };
        self.registry.count_push(message.encoded_len());
        Some(message)
    }

    fn receive(&mut self, message: pb::SyncRequest) -> Result<(), Status> {
        use pb::sync_request::Message as M;
        self.heard = Instant::now();
        self.row.last_seen_ms = now_ms();
        match message.message {
            Some(M::Ack(ack)) => match self.in_flight.take() {
                Some(pushed) if pushed.revision == ack.revision => {
                    let stats = &self.registry.stats;
                    stats.acks.fetch_add(1, Ordering::Relaxed);
                    if let Some(learned) = pushed.learned {
                        stats.propagation.observe(learned.elapsed());
                    }
                    self.view = pushed.view;
                    self.revision = ack.revision;
                    self.nacked = None;
                    self.row.nack = None;
                    self.persisted(ack.revision, &ack.persist_error);
                    self.current_at(ack.revision);
                }
                other => {
                    debug!(node = %self.row.id, ack = ack.revision, "ack for nothing in flight");
                    self.in_flight = other;
                }
            },
            Some(M::Nack(nack)) => match self.in_flight.take() {
                Some(pushed) if pushed.revision == nack.revision => {
                    self.registry.stats.nacks.fetch_add(1, Ordering::Relaxed);
                    warn!(node = %self.row.id, revision = nack.revision, error = %nack.error, "agent refused configuration");
                    self.nacked = Some(nack.revision);
                    // A refused snapshot leaves the agent's holdings unknown:
                    // the next push is a snapshot again.
                    if self.view.is_empty() {
                        self.want_snapshot = true;
                    }
                    let error: String = nack.error.chars().take(4096).collect();
                    self.row.nack = Some((nack.revision, error, now_ms()));
                    self.record();
                }
                other => self.in_flight = other,
            },
            Some(M::Resync(resync)) => {
                self.registry.stats.resyncs.fetch_add(1, Ordering::Relaxed);
                info!(node = %self.row.id, have = resync.have_revision, reason = %resync.reason, "agent asked for a snapshot");
                self.in_flight = None;
                self.nacked = None;
                self.view = Arc::default();
                self.want_snapshot = true;
            }
            Some(M::Heartbeat(_)) if self.recorded_at.elapsed() > self.registry.lease / 3 => {
                self.record();
            }
            Some(M::Heartbeat(_)) => {}
            Some(M::Health(report)) => {
                // Checked against this replica's newest state; a report for
                // another node's endpoint ends the stream, nothing written.
                let state = self.state.borrow().clone();
                if let Err(error) = self
                    .health
                    .report(&self.row.id, &self.address, &report, &state)
                {
                    warn!(node = %self.row.id, %error, "refused health report");
                    return Err(node_status(error));
                }
            }
            Some(M::Persisted(persisted)) => {
                self.persisted(persisted.revision, &persisted.error);
                self.record();
            }
            Some(M::Hello(_)) => {
                return Err(invalid_argument(switchyard::validate::Invalid::one(
                    join("message", "hello"),
                    "hello may only be the first message",
                )));
            }
            None => {}
        }
        Ok(())
    }

    /// Notes whether the agent saved the configuration at `revision` to
    /// its disk (`error` empty) or not; the row is written by the caller.
    fn persisted(&mut self, revision: u64, error: &str) {
        if error.is_empty() {
            if self.row.persist.take().is_some() {
                info!(node = %self.row.id, revision, "agent saved its configuration again");
            }
            return;
        }
        let error: String = error.chars().take(1024).collect();
        let since = match &self.row.persist {
            Some((_, _, since)) => *since,
            None => {
                warn!(node = %self.row.id, revision, %error, "agent serves a configuration it could not save to its disk");
                now_ms()
            }
        };
        self.row.persist = Some((revision, error, since));
    }

    /// Records that the node's configuration is current at `revision`.
    fn current_at(&mut self, revision: u64) {
        self.row.applied_revision = self.row.applied_revision.max(revision);
        self.record();
    }

    fn record(&mut self) {
        self.recorded_at = Instant::now();
        self.registry.record(self.row.clone());
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        info!(node = %self.row.id, revision = self.revision, "agent disconnected");
        self.registry
            .stats
            .connected
            .fetch_sub(1, Ordering::Relaxed);
        // A stream replaced by its agent's new one leaves the row alone.
        if !self.registry.leave(&self.row.id, self.row.session) {
            return;
        }
        self.row.connected = false;
        self.row.last_seen_ms = now_ms();
        self.registry.record(self.row.clone());
    }
}
