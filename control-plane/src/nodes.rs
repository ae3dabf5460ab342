//! Node status: what sessions learn about their agents, written to the store
//! in batches, and the lease that marks silent nodes disconnected.
//!
//! Sessions never wait on the database: they drop their node's newest row
//! into a map (one entry per node, so memory is bounded by the fleet, not by
//! the rate of acks), and [`Registry::run`] writes the map out periodically
//! in one transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use switchyard::validate::Invalid;

use crate::store::{self, NodeRow, Store, now_ms};

/// Why a request an agent made for its node was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// It names an endpoint another node owns (or no node: an operator's).
    #[error("{field}: endpoint {endpoint:?} is not owned by node {node:?}")]
    NotOwned {
        /// Where in the request.
        field: String,
        /// The endpoint.
        endpoint: String,
        /// The node that asked.
        node: String,
    },
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] store::Error),
}

/// Pending node rows and push counters of one replica.
#[derive(Debug)]
pub struct Registry {
    /// This replica's name, written into the rows of its sessions.
    pub replica: Arc<str>,
    /// Nodes not heard from for this long are marked disconnected.
    pub lease: Duration,
    /// How often pending rows are written: the staleness of rollout status
    /// traded against database writes (a fleet acking a change is one row
    /// per node per interval, however many changes it acked).
    flush_interval: Duration,
    // A std mutex: held only to insert or swap the map, never across .await.
    pending: Mutex<HashMap<Arc<str>, NodeRow>>,
    /// The node's live stream on this replica, per node: one at most.
    /// Locked before `pending` when both are; never across .await.
    live: Mutex<HashMap<Arc<str>, Live>>,
    /// Snapshots and deltas sent by this replica.
    pub pushes: AtomicU64,
    /// Encoded bytes of those pushes.
    pub push_bytes: AtomicU64,
    /// What this replica's agent streams did, for metrics.
    pub stats: SessionStats,
    next_session: AtomicU64,
}

/// The live stream of a node on this replica.
#[derive(Debug)]
struct Live {
    session: u64,
    /// The agent process (`pb::Hello::instance_id`), empty if unknown.
    instance: Arc<str>,
    /// Ends the stream when the same agent's new stream replaces it.
    replaced: CancellationToken,
}

/// Why a new stream was not admitted: the node has a live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The replica holding the node's live stream.
    pub replica: String,
}

/// Counters of one replica's agent streams. The sessions update them with
/// relaxed atomic operations; the metrics endpoint reads them.
#[derive(Debug, Default)]
pub struct SessionStats {
    /// Agent streams open now.
    pub connected: AtomicU64,
    /// Snapshots sent (each also counts in [`Registry::pushes`]).
    pub snapshots: AtomicU64,
    /// Deltas sent (each also counts in [`Registry::pushes`]).
    pub deltas: AtomicU64,
    /// Acks received.
    pub acks: AtomicU64,
    /// Nacks received: configurations agents refused.
    pub nacks: AtomicU64,
    /// Snapshots agents asked for because a delta did not apply.
    pub resyncs: AtomicU64,
    /// Streams refused because their node had a live stream already.
    pub refused: AtomicU64,
    /// Time from this replica learning of a commit (its own write, another
    /// replica's notification, or a poll of the store) to an agent's Ack of
    /// the revision that carried it. Only pushes made while the agent was
    /// already current count: a first push after a (re)connect measures
    /// how long the agent was away, not propagation.
    pub propagation: switchyard::metrics::Histogram,
}

impl Registry {
    /// A registry for `replica`.
    pub fn new(replica: String, lease: Duration, flush_interval: Duration) -> Self {
        Self {
            replica: replica.into(),
            lease,
            flush_interval,
            pending: Mutex::default(),
            live: Mutex::default(),
            pushes: AtomicU64::new(0),
            push_bytes: AtomicU64::new(0),
            stats: SessionStats::default(),
            next_session: AtomicU64::new(0),
        }
    }

    /// A session id unique across replicas and restarts (time and a counter,
    /// mixed so that ids from different replicas do not line up).
    pub fn session_id(&self) -> u64 {
        let n = self.next_session.fetch_add(1, Ordering::Relaxed);
        let mut x = (now_ms() as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ n
            ^ (std::process::id() as u64) << 40;
        x ^= x >> 31;
        x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (x ^ (x >> 29)) & (i64::MAX as u64)
    }

    /// Admits the new stream of `row`: refused while the node has a live
    /// stream on this replica from another agent instance; a live stream of
    /// the same instance (the agent reconnected before its old stream was
    /// seen dead) is ended and replaced. Returns what ends the new stream
    /// when it is replaced in turn.
    pub fn admit(&self, row: &NodeRow) -> Result<CancellationToken, Held> {
        let mut live = self.live.lock().expect("live streams");
        if let Some(old) = live.get(&row.id) {
            if row.instance.is_empty() || old.instance != row.instance {
                return Err(Held {
                    replica: self.replica.to_string(),
                });
            }
            info!(node = %row.id, "the agent reconnected: its previous stream is replaced");
            old.replaced.cancel();
        }
        let replaced = CancellationToken::new();
        live.insert(
            row.id.clone(),
            Live {
                session: row.session,
                instance: row.instance.clone(),
                replaced: replaced.clone(),
            },
        );
        Ok(replaced)
    }

    /// Forgets stream `session` of `node`; whether it was the node's live
    /// one (a replaced stream no longer speaks for its node).
    pub fn leave(&self, node: &str, session: u64) -> bool {
        let mut live = self.live.lock().expect("live streams");
        match live.get(node) {
            Some(current) if current.session == session => {
                live.remove(node);
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Queues `row` to be written; a newer row for the same node replaces it.
    /// Ignored when another stream of this replica is the node's live one.
    pub fn record(&self, row: NodeRow) {
        let live = self.live.lock().expect("live streams");
        if live.get(&row.id).is_some_and(|l| l.session != row.session) {
            return;
        }
        self.pending
            .lock()
            .expect("node rows")
            .insert(row.id.clone(), row);
    }

    /// Counts one push of `bytes`. Lock-free: ten thousand sessions push
    /// after every change.
    pub fn count_push(&self, bytes: usize) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
        self.push_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// Writes every pending row. On failure the rows are kept for the next
    /// try, unless a newer one for the same node arrived meanwhile.
    pub async fn flush<S: Store>(&self, store: &S) {
        let rows: Vec<NodeRow> = std::mem::take(&mut *self.pending.lock().expect("node rows"))
            .into_values()
            .collect();
        if rows.is_empty() {
            return;
        }
        if let Err(error) = store.record_nodes(rows.clone()).await {
            warn!(%error, nodes = rows.len(), "writing node status");
            let mut pending = self.pending.lock().expect("node rows");
            for row in rows {
                pending.entry(row.id.clone()).or_insert(row);
            }
        }
    }

    /// Writes node rows and expires silent nodes until `shutdown`.
    pub async fn run<S: Store>(&self, store: &S, shutdown: &CancellationToken) {
        let mut flush = tokio::time::interval(self.flush_interval);
        let mut sweep = tokio::time::interval(self.lease / 2);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = flush.tick() => self.flush(store).await,
                _ = sweep.tick() => {
                    let before = now_ms() - self.lease.as_millis() as i64;
                    match store.expire_nodes(before).await {
                        Ok(0) => {}
                        Ok(n) => info!(nodes = n, "lease expired; marked disconnected"),
                        Err(error) => warn!(%error, "expiring node leases"),
                    }
                }
            }
        }
    }
}
