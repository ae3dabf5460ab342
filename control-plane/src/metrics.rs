//! The control plane's Prometheus metrics: the counters it keeps for them
//! that live nowhere else (operator API requests), how every number is
//! written out, and the small HTTP server answering `GET /metrics`.
//!
//! The numbers themselves stay where the work happens — the registry's
//! session counters, the health reporter's write counters, the store's call
//! latencies — as relaxed atomics; a scrape reads them and writes text, so
//! metrics cost the sync and API paths an atomic add each.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use switchyard::metrics::{Encoder, Type};
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::fanout::{Head, State};
use crate::health::Reporter;
use crate::nodes::Registry;
use crate::store::{Call, Latency};

/// The default address of the metrics endpoint (`--metrics-listen`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9700";

/// The methods of the operator API, as metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `Apply`.
    Apply,
    /// `Delete`.
    Delete,
    /// `Get`.
    Get,
    /// `List`.
    List,
    /// `Watch` (counted when the stream opens or is refused).
    Watch,
    /// `ListNodes`.
    ListNodes,
}

impl Method {
    /// Every method.
    pub const ALL: [Method; 6] = [
        Method::Apply,
        Method::Delete,
        Method::Get,
        Method::List,
        Method::Watch,
        Method::ListNodes,
    ];

    /// The method's name in the API: the `method` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Apply => "Apply",
            Method::Delete => "Delete",
            Method::Get => "Get",
            Method::List => "List",
            Method::Watch => "Watch",
            Method::ListNodes => "ListNodes",
        }
    }
}

/// The gRPC status codes, by number, as the `code` label spells them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Operator API requests answered, by method and status code.
#[derive(Debug, Default)]
pub struct Requests {
    counts: [[AtomicU64; CODES.len()]; Method::ALL.len()],
}

impl Requests {
    /// Counts one answer of `method`.
    pub fn record<T>(&self, method: Method, result: &Result<T, Status>) {
        let code = match result {
            Ok(_) => Code::Ok,
            Err(status) => status.code(),
        };
        let code = (code as usize).min(CODES.len() - 1);
        self.counts[method as usize][code].fetch_add(1, Ordering::Relaxed);
    }

    /// How many answers of `method` had `code`.
    pub fn count(&self, method: Method, code: Code) -> u64 {
        self.counts[method as usize][(code as usize).min(CODES.len() - 1)].load(Ordering::Relaxed)
    }
}

/// Everything the metrics endpoint reads; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sources {
    /// This replica's name: the `replica` label of the revision gauges.
    pub replica: String,
    /// Agent streams and pushes.
    pub registry: Arc<Registry>,
    /// Health reports and their writes.
    pub health: Arc<Reporter>,
    /// The newest revision this replica knows to be committed.
    pub head: Head,
    /// The replica's in-memory configuration.
    pub state: watch::Receiver<Arc<State>>,
    /// Operator API requests.
    pub requests: Arc<Requests>,
    /// Store call latencies.
    pub store: Arc<Latency>,
}

impl Sources {
    /// Every metric, in the text exposition format.
    pub fn render(&self) -> String {
        let mut enc = Encoder::new();
        let sessions = &self.registry.stats;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        enc.family(
            "switchyard_cp_agents_connected",
            Type::Gauge,
            "Agent sync streams open on this replica.",
        )
        .sample(&[], load(&sessions.connected));
        enc.family(
            "switchyard_cp_pushes_total",
            Type::Counter,
            "Configuration pushes sent to agents, by kind.",
        )
        .sample(&[("kind", "snapshot")], load(&sessions.snapshots))
        .sample(&[("kind", "delta")], load(&sessions.deltas));
        enc.family(
            "switchyard_cp_push_bytes_total",
            Type::Counter,
            "Encoded bytes of the pushes sent to agents.",
        )
        .sample(&[], load(&self.registry.push_bytes));
        enc.family(
            "switchyard_cp_acks_total",
            Type::Counter,
            "Pushes agents acknowledged as applied.",
        )
        .sample(&[], load(&sessions.acks));
        enc.family(
            "switchyard_cp_nacks_total",
            Type::Counter,
            "Pushes agents refused (Nack).",
        )
        .sample(&[], load(&sessions.nacks));
        enc.family(
            "switchyard_cp_resyncs_total",
            Type::Counter,
            "Snapshots agents asked for because a delta did not apply to what they held.",
        )
        .sample(&[], load(&sessions.resyncs));
        enc.family(
            "switchyard_cp_sessions_refused_total",
            Type::Counter,
            "Agent streams refused (ALREADY_EXISTS) because their node had a live stream from another agent.",
        )
        .sample(&[], load(&sessions.refused));
        enc.family(
            "switchyard_cp_propagation_seconds",
            Type::Histogram,
            "Time from this replica learning of a commit (its own write, a notification \
             or a poll) to an agent acknowledging the revision that carries it; pushes \
             that catch up a newly connected agent are not counted.",
        )
        .histogram(&[], &sessions.propagation);

        let health = &self.health.stats;
        enc.family(
            "switchyard_cp_health_reports_total",
            Type::Counter,
            "Endpoint health reports accepted from agents (one per endpoint).",
        )
        .sample(&[], load(&health.received));
        enc.family(
            "switchyard_cp_health_changes_total",
            Type::Counter,
            "Endpoint health changes this replica committed.",
        )
        .sample(&[], load(&health.written));
        enc.family(
            "switchyard_cp_health_commits_total",
            Type::Counter,
            "Transactions that committed endpoint health changes.",
        )
        .sample(&[], load(&health.commits));
        enc.family(
            "switchyard_cp_health_damped_total",
            Type::Counter,
            "Health reports held back because their endpoint was flapping.",
        )
        .sample(&[], load(&health.damped));

        let replica = [("replica", self.replica.as_str())];
        enc.family(
            "switchyard_cp_store_revision",
            Type::Gauge,
            "The newest revision this replica knows the store committed (re-read every poll interval).",
        )
        .sample(&replica, self.head.current());
        enc.family(
            "switchyard_cp_state_revision",
            Type::Gauge,
            "The revision of this replica's in-memory configuration, which agents are \
             served from; the store revision minus this is the replica's lag.",
        )
        .sample(&replica, self.state.borrow().revision);

        let mut f = enc.family(
            "switchyard_cp_store_duration_seconds",
            Type::Histogram,
            "Duration of store calls, by call.",
        );
        for call in Call::ALL {
            f.histogram(&[("op", call.as_str())], self.store.durations(call));
        }
        let mut f = enc.family(
            "switchyard_cp_store_errors_total",
            Type::Counter,
            "Store calls that failed or were refused (conflicts, invalid or compacted requests included), by call.",
        );
        for call in Call::ALL {
            f.sample(&[("op", call.as_str())], self.store.errors(call));
        }

        let mut f = enc.family(
            "switchyard_cp_api_requests_total",
            Type::Counter,
            "Operator API requests answered, by method and gRPC status code.",
        );
        for method in Method::ALL {
            for (code, name) in CODES.iter().enumerate() {
                let n = load(&self.requests.counts[method as usize][code]);
                // OK is always written, so that every method has a series
                // from the start; other codes once they occur.
                if n > 0 || code == 0 {
                    f.sample(&[("method", method.as_str()), ("code", name)], n);
                }
            }
        }
        enc.finish()
    }
}

pub use switchyard::http::serve_metrics as serve;

#[cfg(test)]
mod tests;
