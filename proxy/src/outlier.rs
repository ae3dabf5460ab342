//! Passive outlier detection: an endpoint that keeps failing real requests
//! is ejected from its service's picks for a while, longer each time.
//!
//! Each endpoint's record outlives configurations: it lives in the
//! service's [`Hosts`], which the driver owns and keys by endpoint name and
//! address, and every compiled pool holds `Arc`s to its members' records.
//! Recording an outcome is a few relaxed atomic operations; the one lock is
//! taken only to eject (rare) and when a configuration is compiled.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use switchyard::resource::{Endpoint, OutlierDetection};

/// What one try at an endpoint came to, as outlier detection counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// A response began with this status.
    Status(u16),
    /// No connection could be opened, or it broke before a response began.
    ConnectFailure,
    /// A connection opened (TCP relays, which see no status).
    Connected,
}

/// Milliseconds on a process-wide monotonic clock, for ejection deadlines
/// kept in atomics.
pub(super) fn now() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    // Starts at 1 so that 0 can mean "never ejected".
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One endpoint's record.
#[derive(Debug, Default)]
pub(crate) struct Host {
    consecutive_5xx: AtomicU32,
    consecutive_connect_failures: AtomicU32,
    /// [`now`] at which the latest ejection ends (or ended); 0 if never
    /// ejected.
    ejected_until: AtomicU64,
    /// The multiplier of the latest ejection.
    ejections: AtomicU32,
}

impl Host {
    /// Whether the endpoint is ejected at `now`.
    pub(super) fn is_ejected(&self, now: u64) -> bool {
        now < self.ejected_until.load(Ordering::Relaxed)
    }

    fn reset_counts(&self) {
        // Loads first: most responses are successes on a clean record, and
        // a load does not take the cache line away from other cores.
        if self.consecutive_5xx.load(Ordering::Relaxed) != 0 {
            self.consecutive_5xx.store(0, Ordering::Relaxed);
        }
        if self.consecutive_connect_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_connect_failures
                .store(0, Ordering::Relaxed);
        }
    }
}

/// The key of `endpoint`'s record: its name and address, so that a record
/// does not follow a name to another address.
pub(crate) fn key(endpoint: &Endpoint) -> String {
    format!("{}@{}:{}", endpoint.name, endpoint.address, endpoint.port)
}

/// The records of one service's endpoints.
#[derive(Debug, Default)]
pub(crate) struct Hosts {
    /// Endpoint key → record. A mutex because ejecting must count the
    /// ejected endpoints and mark one in one step (or two endpoints failing
    /// at once could both pass the limit); it is taken to eject, to compile
    /// a configuration and by [`crate::Outliers`] (DNS answers), never per
    /// proxied request and never across `.await`.
    map: Mutex<HashMap<String, Arc<Host>>>,
}

impl Hosts {
    /// The records of `members`, in their order, creating missing ones and
    /// forgetting those of endpoints no longer in the service. An endpoint
    /// keeps its record while its name and address stay the same.
    pub(super) fn sync(&self, members: &[Arc<Endpoint>]) -> Vec<Arc<Host>> {
        let keys: Vec<String> = members.iter().map(|e| key(e)).collect();
        let mut map = self.map.lock().expect("outlier hosts");
        let hosts = keys
            .iter()
            .map(|k| map.entry(k.clone()).or_default().clone())
            .collect();
        map.retain(|k, _| keys.contains(k));
        hosts
    }

    /// Whether the endpoint whose record key is `key` (as [`Hosts::sync`]
    /// makes it: `name@address:port`) is ejected at `now`; an endpoint
    /// without a record never was.
    pub(super) fn is_ejected(&self, key: &str, now: u64) -> bool {
        let map = self.map.lock().expect("outlier hosts");
        map.get(key).is_some_and(|h| h.is_ejected(now))
    }

    /// Counts `outcome` against `host`, ejecting it when a threshold of
    /// `config` is reached. Returns the ejection's length in milliseconds
    /// if it ejected.
    ///
    /// A 5xx counts towards `consecutive_5xx` and clears the connect-failure
    /// streak (the endpoint answered); a connect failure or reset counts
    /// towards `consecutive_connect_failures`; any other status clears both.
    pub(super) fn record(
        &self,
        host: &Host,
        outcome: Outcome,
        config: &OutlierDetection,
    ) -> Option<u64> {
        let (count, threshold) = match outcome {
            Outcome::Status(s) if s >= 500 => {
                if host.consecutive_connect_failures.load(Ordering::Relaxed) != 0 {
                    host.consecutive_connect_failures
                        .store(0, Ordering::Relaxed);
                }
                (&host.consecutive_5xx, config.consecutive_5xx)
            }
            Outcome::Status(_) | Outcome::Connected => {
                host.reset_counts();
                return None;
            }
            Outcome::ConnectFailure => (
                &host.consecutive_connect_failures,
                config.consecutive_connect_failures,
            ),
        };
        let n = count.fetch_add(1, Ordering::Relaxed) + 1;
        if threshold != 0 && n >= threshold {
            self.eject(host, config, now())
        } else {
            None
        }
    }

    /// Ejects `host` unless it is ejected already or the service is at its
    /// ejection limit.
    ///
    /// The limit follows Envoy: at most `max_ejection_percent` of the
    /// service's endpoints (rounded down) are ejected at once, but one may
    /// always be, so that a small service can still shed its one bad
    /// endpoint (3 endpoints at the default 10% allow one ejection).
    ///
    /// An ejection lasts `base_ejection_time` × the number of times the
    /// endpoint was ejected in a row, at most `max_ejection_time`. The row
    /// is broken once the endpoint has served `max_ejection_time` without
    /// being ejected again: the next ejection starts over at the base.
    fn eject(&self, host: &Host, config: &OutlierDetection, now: u64) -> Option<u64> {
        let map = self.map.lock().expect("outlier hosts");
        if host.is_ejected(now) {
            return None;
        }
        // Counting starts over whatever happens next, so that a host over
        // the limit is reconsidered only after another full streak.
        host.reset_counts();
        let total = map.len();
        let ejected = map.values().filter(|h| h.is_ejected(now)).count();
        let limit = (total * usize::from(config.max_ejection_percent) / 100).max(1);
        if ejected >= limit {
            return None;
        }
        let max = millis(config.max_ejection_time);
        let last = host.ejected_until.load(Ordering::Relaxed);
        let times = if last != 0 && now < last.saturating_add(max) {
            host.ejections.load(Ordering::Relaxed).saturating_add(1)
        } else {
            1
        };
        let duration = millis(config.base_ejection_time)
            .saturating_mul(u64::from(times))
            .min(max);
        host.ejections.store(times, Ordering::Relaxed);
        host.ejected_until
            .store(now.saturating_add(duration), Ordering::Relaxed);
        Some(duration)
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(n: usize) -> Vec<Arc<Endpoint>> {
        (0..n)
            .map(|i| {
                let e = switchyard::pb::Endpoint {
                    name: format!("e{i}"),
                    service: "web".into(),
                    address: "127.0.0.1".into(),
                    port: 8000 + i as u32,
                    ..Default::default()
                };
                Arc::new(Endpoint::from_pb(&e, "endpoint").unwrap())
            })
            .collect()
    }

    fn config(percent: u8) -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: 2,
            consecutive_connect_failures: 1,
            base_ejection_time: Duration::from_secs(10),
            max_ejection_time: Duration::from_secs(25),
            max_ejection_percent: percent,
        }
    }

    #[test]
    fn a_streak_ejects_and_a_success_breaks_it() {
        let hosts = Hosts::default();
        let h = hosts.sync(&endpoints(3));
        let c = config(100);
        assert!(hosts.record(&h[0], Outcome::Status(500), &c).is_none());
        assert!(hosts.record(&h[0], Outcome::Status(200), &c).is_none());
        assert!(hosts.record(&h[0], Outcome::Status(503), &c).is_none());
        assert!(hosts.record(&h[0], Outcome::Status(502), &c).is_some());
        assert!(h[0].is_ejected(now()));
        assert!(hosts.record(&h[1], Outcome::ConnectFailure, &c).is_some());
        assert!(!h[2].is_ejected(now()));
    }

    #[test]
    fn at_least_one_but_at_most_the_share_is_ejected() {
        let hosts = Hosts::default();
        let h = hosts.sync(&endpoints(3));
        // 3 × 10% rounds down to 0: one may still go, not two.
        let c = config(10);
        assert!(hosts.record(&h[0], Outcome::ConnectFailure, &c).is_some());
        assert!(hosts.record(&h[1], Outcome::ConnectFailure, &c).is_none());
        assert!(!h[1].is_ejected(now()));
        // 3 × 70% allows two.
        let c = config(70);
        assert!(hosts.record(&h[1], Outcome::ConnectFailure, &c).is_some());
        assert!(hosts.record(&h[2], Outcome::ConnectFailure, &c).is_none());
    }

    #[test]
    fn ejections_in_a_row_grow_up_to_the_maximum() {
        let hosts = Hosts::default();
        let h = hosts.sync(&endpoints(1));
        let c = config(100);
        let t = now();
        let mut ends = vec![];
        for round in 0..4u64 {
            // Each ejection ends; the next streak starts right after.
            let at = ends.last().copied().unwrap_or(t);
            assert!(hosts.eject(&h[0], &c, at).is_some(), "round {round}");
            ends.push(h[0].ejected_until.load(Ordering::Relaxed));
        }
        let lengths: Vec<u64> = ends
            .iter()
            .zip(std::iter::once(&t).chain(&ends))
            .map(|(end, start)| end - start)
            .collect();
        assert_eq!(lengths, [10_000, 20_000, 25_000, 25_000]);
        // Long enough without trouble, and it starts over.
        let later = ends[3] + 25_000;
        assert!(hosts.eject(&h[0], &c, later).is_some());
        assert_eq!(h[0].ejected_until.load(Ordering::Relaxed) - later, 10_000);
    }

    #[test]
    fn records_survive_a_resync_and_removed_endpoints_are_forgotten() {
        let hosts = Hosts::default();
        let before = hosts.sync(&endpoints(3));
        let after = hosts.sync(&endpoints(2));
        assert!(Arc::ptr_eq(&before[1], &after[1]));
        assert_eq!(hosts.map.lock().unwrap().len(), 2);
    }
}
