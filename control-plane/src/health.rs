//! Endpoint health: agents' reports, checked against ownership, damped when
//! they flap, and written to the store in batches; and the node lease that
//! turns a silent node's endpoints `unknown`.
//!
//! Sessions never wait on the database: a report is checked against the
//! replica's in-memory [`State`], then dropped into a map holding the newest
//! report per endpoint. [`Reporter::run`] writes that map out in one
//! transaction at a time, at most one per flush interval: a report after a
//! quiet spell is written at once, and under load the reports of one
//! interval share a transaction. The write rate is bounded by the
//! interval, not by how fast endpoints flip, and memory by the number of
//! endpoints. Written health flows to every agent through the change log
//! like any other change, so all replicas and agents agree.
//!
//! Flap damping works like BGP route-flap damping: each change an agent
//! reports adds one to the endpoint's penalty, which halves every
//! `half_life`. At `suppress` the endpoint is held `unhealthy` (its reports
//! are remembered but not written) until the penalty decays below `reuse`;
//! then its latest reported health is written.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchyard::pb;
use switchyard::resource::{Kind, Ref};
use switchyard::validate::{Invalid, Violations, join};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::fanout::{Head, State};
use crate::nodes::Error;
use crate::store::{HealthWrite, Store, now_ms};

/// Longest `reason` kept from a report; longer ones are cut.
const MAX_REASON: usize = 256;

/// How flapping endpoints are damped.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Damping {
    /// Time for an endpoint's penalty to halve. Zero disables damping.
    pub half_life: Duration,
    /// Penalty at which an endpoint is held unhealthy (each reported change adds 1).
    pub suppress: f64,
    /// Penalty below which a held endpoint is released.
    pub reuse: f64,
}

impl Default for Damping {
    /// Five changes in quick succession hold an endpoint unhealthy for about
    /// 40 s (the penalty decays from 5 to 2 with a 30 s half-life); a
    /// penalty is capped at twice `suppress`, so no hold lasts beyond about
    /// 70 s after the last change.
    fn default() -> Self {
        Self {
            half_life: Duration::from_secs(30),
            suppress: 5.0,
            reuse: 2.0,
        }
    }
}

impl Damping {
    /// Checks every field, reporting every problem at once.
    pub fn validate(&self, field: &str) -> Result<(), Invalid> {
        let mut v = Violations::new();
        // Written to refuse NaN too.
        if self.suppress.is_nan() || self.suppress < 1.0 {
            v.push(join(field, "suppress"), "must be at least 1");
        }
        if !(self.reuse > 0.0 && self.reuse < self.suppress) {
            v.push(join(field, "reuse"), "must be above 0 and below suppress");
        }
        v.finish(())
    }
}

/// Counters of one replica's health writes.
#[derive(Debug, Default)]
pub struct Stats {
    /// Endpoint health reports accepted from agents: one per endpoint of a
    /// report message, whether or not it changes anything.
    pub received: AtomicU64,
    /// Endpoint health changes committed.
    pub written: AtomicU64,
    /// Transactions that committed them.
    pub commits: AtomicU64,
    /// Reports held back by flap damping.
    pub damped: AtomicU64,
}

/// The health side of one replica: pending writes and damping state.
#[derive(Debug)]
pub struct Reporter {
    damping: Damping,
    flush_interval: Duration,
    lease: Duration,
    // A std mutex: held only to update maps, never across .await.
    inner: Mutex<Inner>,
    /// Signalled when a write is pending.
    pending: Notify,
    /// What this replica wrote.
    pub stats: Stats,
}

#[derive(Debug, Default)]
struct Inner {
    /// The newest write per endpoint, waiting for the next flush.
    pending: HashMap<String, HealthWrite>,
    /// Damping state of endpoints that changed recently.
    flaps: HashMap<String, Flap>,
}

#[derive(Debug)]
struct Flap {
    penalty: f64,
    /// When `penalty` was last brought up to date.
    at: Instant,
    /// The health the agent last reported.
    last: pb::Health,
    /// While held: the agent's latest report, written on release.
    held: Option<HealthWrite>,
}

impl Flap {
    /// Decays the penalty to `now`.
    fn decay(&mut self, now: Instant, half_life: Duration) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.penalty *= 0.5f64.powf(elapsed / half_life.as_secs_f64());
        self.at = now;
    }
}

impl Reporter {
    /// A reporter writing at most once per `flush_interval`, expiring nodes
    /// silent for `lease`.
    pub fn new(damping: Damping, flush_interval: Duration, lease: Duration) -> Self {
        Self {
            damping,
            flush_interval,
            lease,
            inner: Mutex::default(),
            pending: Notify::new(),
            stats: Stats::default(),
        }
    }

    /// Takes a report from `node`'s agent, calling from `address`: the whole
    /// report is refused when any entry is malformed or names an endpoint
    /// another node owns; entries for endpoints that no longer exist are
    /// dropped.
    pub fn report(
        &self,
        node: &str,
        address: &str,
        report: &pb::HealthReport,
        state: &State,
    ) -> Result<(), Error> {
        let mut v = Violations::new();
        let mut accepted = Vec::with_capacity(report.endpoints.len());
        for (i, entry) in report.endpoints.iter().enumerate() {
            let field = format!("health.endpoints[{i}]");
            switchyard::validate::name(&mut v, &join(&field, "endpoint"), &entry.endpoint);
            let health = match pb::Health::try_from(entry.health) {
                Ok(h @ (pb::Health::Healthy | pb::Health::Unhealthy | pb::Health::Draining)) => h,
                _ => {
                    v.push(
                        join(&field, "health"),
                        "must be HEALTH_HEALTHY, HEALTH_UNHEALTHY or HEALTH_DRAINING",
                    );
                    continue;
                }
            };
            let Some(pb::resource::Kind::Endpoint(e)) = state
                .get(&Ref::new(Kind::Endpoint, &entry.endpoint))
                .and_then(|r| r.kind.as_ref())
            else {
                debug!(%node, endpoint = %entry.endpoint, "health report for an unknown endpoint");
                continue;
            };
            if e.node != node {
                return Err(Error::NotOwned {
                    field,
                    endpoint: entry.endpoint.clone(),
                    node: node.to_owned(),
                });
            }
            let at_ms = entry.observed_at.as_ref().map_or_else(now_ms, |t| {
                t.seconds * 1000 + i64::from(t.nanos) / 1_000_000
            });
            let current = pb::Health::try_from(e.health).unwrap_or(pb::Health::Unknown);
            accepted.push((
                current,
                HealthWrite {
                    endpoint: entry.endpoint.clone(),
                    node: node.to_owned(),
                    health,
                    reason: entry.reason.chars().take(MAX_REASON).collect(),
                    at_ms,
                    address: address.to_owned(),
                    by_control_plane: false,
                },
            ));
        }
        v.finish(())?;
        self.stats
            .received
            .fetch_add(accepted.len() as u64, Ordering::Relaxed);
        let now = Instant::now();
        let mut inner = self.inner.lock().expect("health reports");
        for (current, write) in accepted {
            inner.take(write, current, now, &self.damping, &self.stats);
        }
        if !inner.pending.is_empty() {
            self.pending.notify_one();
        }
        Ok(())
    }

    /// Writes pending health and expires silent nodes until `shutdown`.
    pub async fn run<S: Store>(
        &self,
        store: &S,
        head: &Head,
        state: watch::Receiver<Arc<State>>,
        shutdown: &CancellationToken,
    ) {
        // The ticks write what damping releases, and retry failed writes.
        let mut flush = tokio::time::interval(self.flush_interval);
        let mut sweep = tokio::time::interval((self.lease / 4).max(Duration::from_millis(250)));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When the last write began.
        let mut last: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.pending.notified() => {}
                _ = flush.tick() => {}
                _ = sweep.tick() => {
                    self.expire(store, &state).await;
                    continue;
                }
            }
            // At most one transaction per interval: under load, the reports
            // arriving meanwhile join this one.
            if let Some(at) = last {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep_until(at + self.flush_interval) => {}
                }
            }
            let started = Instant::now();
            if self.flush(store, head).await {
                last = Some(started);
            }
        }
        // Reports already taken are not lost to a clean shutdown.
        self.flush(store, head).await;
    }

    /// Writes every pending report in one transaction; whether it tried
    /// to. On failure they are kept for the next try, unless a newer one
    /// for the same endpoint arrived meanwhile.
    pub async fn flush<S: Store>(&self, store: &S, head: &Head) -> bool {
        let writes: Vec<HealthWrite> = {
            let mut inner = self.inner.lock().expect("health reports");
            inner.release(Instant::now(), &self.damping);
            std::mem::take(&mut inner.pending).into_values().collect()
        };
        if writes.is_empty() {
            return false;
        }
        match store.write_health(writes.clone()).await {
            Ok(done) => {
                if let Some(revision) = done.revision {
                    self.stats.commits.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .written
                        .fetch_add(done.written.len() as u64, Ordering::Relaxed);
                    debug!(
                        revision,
                        endpoints = done.written.len(),
                        "wrote endpoint health"
                    );
                    head.advance(revision);
                }
            }
            Err(error) => {
                warn!(%error, endpoints = writes.len(), "writing endpoint health");
                let mut inner = self.inner.lock().expect("health reports");
                for w in writes {
                    inner.pending.entry(w.endpoint.clone()).or_insert(w);
                }
            }
        }
        true
    }

    /// Marks `unknown` the checked endpoints of nodes silent past the lease.
    /// Endpoints already `unknown` or `draining` are left alone: a drained
    /// endpoint stays out of rotation.
    async fn expire<S: Store>(&self, store: &S, state: &watch::Receiver<Arc<State>>) {
        let before = now_ms() - self.lease.as_millis() as i64;
        let stale = match store.stale_nodes(before).await {
            Ok(stale) => stale,
            Err(error) => {
                warn!(%error, "reading node leases");
                return;
            }
        };
        if stale.is_empty() {
            return;
        }
        let state = state.borrow().clone();
        let reason = format!("node lease expired: no stream for {:?}", self.lease);
        let mut inner = self.inner.lock().expect("health reports");
        let mut expired = 0usize;
        for node in &stale {
            for e in state.owned(node) {
                let live = matches!(
                    pb::Health::try_from(e.health),
                    Ok(pb::Health::Healthy | pb::Health::Unhealthy)
                );
                if !live || inner.pending.contains_key(&e.name) {
                    continue;
                }
                expired += 1;
                inner.flaps.remove(&e.name);
                inner.pending.insert(
                    e.name.clone(),
                    HealthWrite {
                        endpoint: e.name.clone(),
                        node: node.clone(),
                        health: pb::Health::Unknown,
                        reason: reason.clone(),
                        at_ms: now_ms(),
                        // The node said nothing: the control plane decided.
                        address: String::new(),
                        by_control_plane: true,
                    },
                );
            }
        }
        if expired > 0 {
            self.pending.notify_one();
            info!(
                endpoints = expired,
                "node leases expired; marking their endpoints unknown"
            );
        }
    }
}

impl Inner {
    /// Queues `write` (the agent's report; `current` is the stored health),
    /// unless damping holds it.
    fn take(
        &mut self,
        write: HealthWrite,
        current: pb::Health,
        now: Instant,
        damping: &Damping,
        stats: &Stats,
    ) {
        if damping.half_life.is_zero() {
            self.queue(write, current);
            return;
        }
        let flap = self.flaps.entry(write.endpoint.clone()).or_insert(Flap {
            penalty: 0.0,
            at: now,
            last: current,
            held: None,
        });
        flap.decay(now, damping.half_life);
        if write.health != flap.last {
            flap.penalty = (flap.penalty + 1.0).min(damping.suppress * 2.0);
            flap.last = write.health;
        }
        let held = flap.held.is_some();
        if held || flap.penalty >= damping.suppress {
            if !held {
                info!(endpoint = %write.endpoint, penalty = flap.penalty, "endpoint is flapping; holding it unhealthy");
                let hold = HealthWrite {
                    health: pb::Health::Unhealthy,
                    reason: format!("flapping: held unhealthy (last report: {})", write.reason),
                    ..write.clone()
                };
                self.pending.insert(hold.endpoint.clone(), hold);
            }
            stats.damped.fetch_add(1, Ordering::Relaxed);
            flap.held = Some(write);
            return;
        }
        self.queue(write, current);
    }

    /// Queues `write` unless it changes nothing.
    fn queue(&mut self, write: HealthWrite, current: pb::Health) {
        if write.health == current && !self.pending.contains_key(&write.endpoint) {
            return;
        }
        self.pending.insert(write.endpoint.clone(), write);
    }

    /// Releases held endpoints whose penalty decayed below `reuse`, queueing
    /// their latest report, and forgets endpoints that calmed down.
    fn release(&mut self, now: Instant, damping: &Damping) {
        if damping.half_life.is_zero() {
            return;
        }
        let mut released = Vec::new();
        self.flaps.retain(|name, flap| {
            flap.decay(now, damping.half_life);
            if flap.penalty < damping.reuse
                && let Some(write) = flap.held.take()
            {
                info!(endpoint = %name, "endpoint stopped flapping; releasing it");
                released.push(write);
            }
            flap.held.is_some() || flap.penalty >= 0.05
        });
        for write in released {
            // Written even if equal to the stored health: the stored one is
            // the hold's "unhealthy".
            self.pending.insert(write.endpoint.clone(), write);
        }
    }
}

#[cfg(test)]
mod tests;
