//! Active health checks of the endpoints this node owns.
//!
//! [`run`] follows the node's configuration: every endpoint whose `node` is
//! this node and that has a health check (its own, or its service's) gets
//! one checking task, restarted when its address or check changes and
//! stopped when it goes away. Results are published as a map on a `watch`
//! channel: the sync client reports what changed since it last reported,
//! and re-sends the whole map on each new stream, so a control plane that
//! missed a report (or a new replica) learns the current state.
//!
//! Thresholds: the first result decides at once (a new endpoint, or a
//! restarted agent, should not wait `rise` checks to be known); after that
//! an endpoint becomes unhealthy after `fall` consecutive failures and
//! healthy after `rise` consecutive successes.

mod probe;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use switchyard::pb;
use switchyard::resource::HealthCheck;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::state::NodeConfig;

pub use probe::probe;

/// What the checks of one endpoint last concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// Healthy or unhealthy.
    pub health: pb::Health,
    /// Why (e.g. "HTTP 503", "connect: connection refused").
    pub reason: String,
    /// When the endpoint's health last changed.
    pub at: SystemTime,
}

/// The conclusions for every checked endpoint, by endpoint name.
pub type Results = BTreeMap<String, Observed>;

/// How many checks of one endpoint ran and failed, for metrics.
#[derive(Debug, Default)]
pub struct CheckStats {
    /// Checks that ran to a result (passed, failed or timed out).
    pub runs: AtomicU64,
    /// Checks that failed or timed out.
    pub failures: AtomicU64,
}

/// The [`CheckStats`] of every endpoint this node checks, kept while the
/// endpoint is checked (across restarts of its check on a change of address
/// or spec) and forgotten when it no longer is.
#[derive(Debug, Default)]
pub struct Checks(Mutex<BTreeMap<String, Arc<CheckStats>>>);

impl Checks {
    /// Every checked endpoint with its counts, in name order.
    pub fn all(&self) -> Vec<(String, Arc<CheckStats>)> {
        let map = self.0.lock().expect("check counts");
        map.iter().map(|(n, c)| (n.clone(), c.clone())).collect()
    }

    fn track(&self, endpoint: &str) -> Arc<CheckStats> {
        let mut map = self.0.lock().expect("check counts");
        map.entry(endpoint.to_owned()).or_default().clone()
    }

    fn retain(&self, keep: impl Fn(&str) -> bool) {
        self.0.lock().expect("check counts").retain(|n, _| keep(n));
    }
}

/// One endpoint to check: where, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Address (IP or host name).
    pub address: String,
    /// Port.
    pub port: u16,
    /// The check.
    pub check: HealthCheck,
}

/// The endpoints `node_id` must check in `config`.
pub fn targets(node_id: &str, config: &NodeConfig) -> BTreeMap<String, Target> {
    config
        .endpoints
        .values()
        .filter(|e| e.node.as_deref() == Some(node_id))
        .filter_map(|e| {
            let check = e.health_check.clone().or_else(|| {
                config
                    .services
                    .get(&e.service)
                    .and_then(|s| s.health_check.clone())
            })?;
            Some((
                e.name.clone(),
                Target {
                    address: e.address.clone(),
                    port: e.port,
                    check,
                },
            ))
        })
        .collect()
}

/// Checks this node's endpoints, following `config`, publishing on
/// `results` and counting in `checks`, until `shutdown`.
pub async fn run(
    node_id: String,
    mut config: watch::Receiver<Arc<NodeConfig>>,
    results: watch::Sender<Results>,
    checks: Arc<Checks>,
    shutdown: CancellationToken,
) {
    let results = Arc::new(results);
    // Every checking task lives in this set and ends with this function.
    let mut tasks = JoinSet::new();
    let mut running: HashMap<String, (Target, CancellationToken)> = HashMap::new();
    loop {
        let wanted = targets(&node_id, &config.borrow_and_update());
        running.retain(|name, (target, token)| {
            let keep = wanted.get(name) == Some(target);
            if !keep {
                token.cancel();
                results.send_if_modified(|r| r.remove(name).is_some());
            }
            keep
        });
        checks.retain(|name| wanted.contains_key(name));
        for (name, target) in wanted {
            if running.contains_key(&name) {
                continue;
            }
            debug!(endpoint = %name, address = %target.address, port = target.port, "checking endpoint");
            let token = shutdown.child_token();
            tasks.spawn(check(
                name.clone(),
                target.clone(),
                results.clone(),
                checks.track(&name),
                token.clone(),
            ));
            running.insert(name, (target, token));
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = config.changed() => if changed.is_err() { break },
            // Reap finished (cancelled) tasks so the set does not grow.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
}

/// Consecutive results of one endpoint's checks.
#[derive(Debug, Default)]
struct Streak {
    current: Option<pb::Health>,
    successes: u32,
    failures: u32,
}

impl Streak {
    /// Counts one result; returns the new health when it changes.
    fn record(&mut self, ok: bool, check: &HealthCheck) -> Option<pb::Health> {
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let next = match self.current {
            None if ok => pb::Health::Healthy,
            None => pb::Health::Unhealthy,
            Some(pb::Health::Healthy) if self.failures >= check.unhealthy_threshold => {
                pb::Health::Unhealthy
            }
            Some(pb::Health::Unhealthy) if self.successes >= check.healthy_threshold => {
                pb::Health::Healthy
            }
            Some(_) => return None,
        };
        self.current = Some(next);
        Some(next)
    }
}

/// Checks one endpoint every interval (jittered) until `token` is cancelled.
async fn check(
    name: String,
    target: Target,
    results: Arc<watch::Sender<Results>>,
    stats: Arc<CheckStats>,
    token: CancellationToken,
) {
    let interval = target.check.interval;
    // A random first delay spreads the checks of many endpoints over the
    // interval instead of firing them together.
    let mut delay = interval.mul_f64(unit());
    let mut streak = Streak::default();
    let mut probe = probe::Prober::new(&target);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        let outcome = tokio::select! {
            _ = token.cancelled() => return,
            outcome = tokio::time::timeout(target.check.timeout, probe.run()) => outcome
                .unwrap_or_else(|_| Err(format!("timed out after {:?}", target.check.timeout))),
        };
        let ok = outcome.is_ok();
        stats.runs.fetch_add(1, Ordering::Relaxed);
        if !ok {
            stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(health) = streak.record(ok, &target.check) {
            let reason = match outcome {
                Ok(detail) | Err(detail) => detail,
            };
            info!(endpoint = %name, ?health, %reason, "endpoint health changed");
            let observed = Observed {
                health,
                reason,
                at: SystemTime::now(),
            };
            // Checked under the channel's lock: once `run` has cancelled
            // this task and removed its entry, no late result comes back.
            results.send_if_modified(|r| {
                if token.is_cancelled() {
                    return false;
                }
                r.insert(name.clone(), observed);
                true
            });
        }
        // ±10% so endpoints started together drift apart.
        delay = interval.mul_f64(0.9 + 0.2 * unit());
    }
}

/// A number in `[0, 1)`.
fn unit() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests;
