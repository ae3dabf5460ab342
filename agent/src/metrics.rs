//! The agent's Prometheus metrics: how its sync, health-check, data-plane
//! and DNS counters are written out, and the small HTTP server answering
//! `GET /metrics`.
//!
//! The numbers stay where the work happens (the sync client's [`Stats`],
//! the health checks' [`Checks`], the data plane's, through its [`Driver`],
//! the DNS interface's [`dns::Stats`]) as relaxed atomics; a scrape reads
//! them and writes text.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use switchyard::metrics::{Encoder, Type};
use switchyard::pb;
use tokio::sync::watch;

use crate::dns;
use crate::driver::Driver;
use crate::health::{Checks, Results};
use crate::state::NodeConfig;
use crate::sync::{Agent, Stats};

/// The default address of the metrics endpoint (`--metrics-listen`).
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9701";

/// Everything the metrics endpoint reads; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The control planes the agent may sync with.
    pub control_planes: Arc<[String]>,
    /// The sync client's counters.
    pub stats: Arc<Stats>,
    /// The configuration the node serves.
    pub config: watch::Receiver<Arc<NodeConfig>>,
    /// What the health checks concluded.
    pub health: watch::Receiver<Results>,
    /// How many checks ran and failed.
    pub checks: Arc<Checks>,
    /// The data plane's driver, when one runs.
    pub driver: Option<Arc<dyn Driver>>,
    /// The DNS interface's counters, when it runs.
    pub dns: Option<Arc<dns::Stats>>,
}

impl Sources {
    /// The sources of `agent`, with those of the data plane it drives.
    pub fn new(agent: &Agent, driver: Option<Arc<dyn Driver>>) -> Sources {
        Sources {
            control_planes: agent.control_planes(),
            stats: agent.stats(),
            config: agent.config(),
            health: agent.health(),
            checks: agent.checks(),
            driver,
            dns: None,
        }
    }

    /// Every metric, in the text exposition format.
    pub fn render(&self) -> String {
        let mut enc = Encoder::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        enc.family(
            "switchyard_agent_applied_revision",
            Type::Gauge,
            "The revision of the configuration the node serves.",
        )
        .sample(&[], self.config.borrow().revision);
        let connected = self.stats.connected_to();
        let mut f = enc.family(
            "switchyard_agent_connected",
            Type::Gauge,
            "1 for the control plane the agent has a sync stream with, 0 for the others.",
        );
        for addr in self.control_planes.iter() {
            let up = u64::from(connected.as_deref() == Some(addr.as_str()));
            f.sample(&[("control_plane", addr)], up);
        }
        for (name, help, counter) in [
            (
                "switchyard_agent_sync_connects_total",
                "Sync streams opened.",
                &self.stats.connects,
            ),
            (
                "switchyard_agent_sync_failures_total",
                "Sync streams that could not be opened (connection, TLS, token, refusal) or failed once open.",
                &self.stats.sync_failures,
            ),
            (
                "switchyard_agent_sync_snapshots_total",
                "Snapshots received.",
                &self.stats.snapshots,
            ),
            (
                "switchyard_agent_sync_deltas_total",
                "Deltas received.",
                &self.stats.deltas,
            ),
            (
                "switchyard_agent_sync_acks_total",
                "Configurations applied and acknowledged.",
                &self.stats.acks,
            ),
            (
                "switchyard_agent_sync_nacks_total",
                "Configurations refused (Nack); the previous one stayed live.",
                &self.stats.nacks,
            ),
            (
                "switchyard_agent_sync_resyncs_total",
                "Snapshots asked for because a delta did not apply.",
                &self.stats.resyncs,
            ),
            (
                "switchyard_agent_persist_failures_total",
                "Attempts to save the applied configuration to disk that failed (e.g. disk full).",
                &self.stats.persist_failures,
            ),
            (
                "switchyard_agent_registration_failures_total",
                "Registrations of this node's services the control plane refused.",
                &self.stats.registration_failures,
            ),
        ] {
            enc.family(name, Type::Counter, help)
                .sample(&[], load(counter));
        }

        enc.family(
            "switchyard_agent_config_saved",
            Type::Gauge,
            "1 when the configuration served is saved to disk (a restart without a control plane serves it), 0 when saving it failed.",
        )
        .sample(&[], u64::from(self.stats.unsaved().is_none()));

        let mut f = enc.family(
            "switchyard_agent_endpoint_healthy",
            Type::Gauge,
            "What this node's health checks concluded for each endpoint it checks: 1 healthy, 0 unhealthy.",
        );
        for (endpoint, observed) in self.health.borrow().iter() {
            let up = u64::from(observed.health == pb::Health::Healthy);
            f.sample(&[("endpoint", endpoint)], up);
        }
        let checks = self.checks.all();
        let mut f = enc.family(
            "switchyard_agent_health_checks_total",
            Type::Counter,
            "Health checks run, by endpoint.",
        );
        for (endpoint, counts) in &checks {
            f.sample(&[("endpoint", endpoint)], load(&counts.runs));
        }
        let mut f = enc.family(
            "switchyard_agent_health_check_failures_total",
            Type::Counter,
            "Health checks that failed or timed out, by endpoint.",
        );
        for (endpoint, counts) in &checks {
            f.sample(&[("endpoint", endpoint)], load(&counts.failures));
        }

        if let Some(driver) = &self.driver {
            driver.metrics(&mut enc);
        }
        if let Some(dns) = &self.dns {
            dns.encode(&mut enc);
        }
        enc.finish()
    }
}

pub use switchyard::http::serve_metrics as serve;

/// Refuses to serve the metrics port beyond loopback unless the operator
/// passed `--insecure-metrics`: it is plaintext HTTP without authentication,
/// and its metrics name services, endpoints and control planes. Kubernetes
/// probes and a Prometheus on another host need it; the message names the
/// flag.
pub fn check_exposure(listen: Option<SocketAddr>, insecure: bool) -> Result<(), String> {
    match listen {
        Some(addr) if !addr.ip().is_loopback() && !insecure => Err(format!(
            "refusing to serve metrics on {addr} beyond loopback (plaintext, no \
             authentication): use a loopback address, or pass --insecure-metrics"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests;
