//! Circuit breaking and the retry budget: per-service counts of requests,
//! retries and connections in flight, kept by the proxy across
//! configurations so that a configuration change does not reset them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// The fewest retries a service may have in flight whatever its budget, so
/// that a quiet service can still retry (as Linkerd and Envoy do).
const MIN_RETRIES: u64 = 3;

/// Requests and retries in flight to one service, from this proxy.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
}

impl Counters {
    /// Counts a request until the guard drops, or `None` when `max`
    /// requests are in flight already.
    pub(super) fn try_request(self: &Arc<Self>, max: Option<u32>) -> Option<Guard> {
        self.try_start(Kind::Request, max.map(u64::from))
    }

    /// Counts a retry until the guard drops, or `None` when the budget is
    /// spent: retries in flight may be at most `budget_percent` of the
    /// requests in flight (at least [`MIN_RETRIES`]), and at most
    /// `max_retries`.
    pub(super) fn try_retry(
        self: &Arc<Self>,
        budget_percent: u8,
        max_retries: Option<u32>,
    ) -> Option<Guard> {
        let requests = self.requests.load(Ordering::Relaxed);
        let budget = (requests * u64::from(budget_percent) / 100).max(MIN_RETRIES);
        let limit = max_retries.map_or(budget, |m| budget.min(u64::from(m)));
        self.try_start(Kind::Retry, Some(limit))
    }

    /// Requests in flight.
    #[cfg(test)]
    pub(super) fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn counter(&self, kind: Kind) -> &AtomicU64 {
        match kind {
            Kind::Request => &self.requests,
            Kind::Retry => &self.retries,
        }
    }

    fn try_start(self: &Arc<Self>, kind: Kind, max: Option<u64>) -> Option<Guard> {
        // Relaxed: the counts limit load approximately and order nothing
        // else; an increment that overshoots is taken back at once.
        let before = self.counter(kind).fetch_add(1, Ordering::Relaxed);
        let guard = Guard {
            counters: Arc::clone(self),
            kind,
        };
        match max {
            Some(max) if before >= max => None, // the guard takes it back
            _ => Some(guard),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Request,
    Retry,
}

/// A request or retry counted as in flight until dropped.
#[must_use = "the request stops counting as in flight when the guard is dropped"]
#[derive(Debug)]
pub(crate) struct Guard {
    counters: Arc<Counters>,
    kind: Kind,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.counters
            .counter(self.kind)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A service's open connections and waiting requests, kept across
/// configurations.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    /// Connections open to its endpoints (HTTP and TCP relays).
    pub(crate) open: AtomicUsize,
    /// Requests waiting for a connection.
    pub(crate) pending: AtomicUsize,
    /// Signalled when a connection closes or goes back idle while requests
    /// wait.
    pub(crate) freed: Notify,
}

impl Slots {
    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Counts a new connection, or `None` when `max` are open already.
    pub(crate) fn try_connect(self: &Arc<Self>, max: Option<u32>) -> Option<Slot> {
        let max = max.map_or(usize::MAX, |m| m as usize);
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(Slot(self.clone()))
    }

    pub(crate) fn wake_pending(&self) {
        if self.pending.load(Ordering::SeqCst) > 0 {
            self.freed.notify_waiters();
        }
    }
}

/// One counted connection; dropping it uncounts it and wakes a pending
/// request.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Slots>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.wake_pending();
    }
}

/// Marks a request waiting for a connection until dropped.
pub(crate) struct Pending<'a>(pub(crate) &'a Slots);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_limited_and_released() {
        let c = Arc::new(Counters::default());
        let a = c.try_request(Some(2)).unwrap();
        let _b = c.try_request(Some(2)).unwrap();
        assert!(c.try_request(Some(2)).is_none());
        assert_eq!(c.requests(), 2);
        drop(a);
        assert!(c.try_request(Some(2)).is_some());
        assert!(c.try_request(None).is_some());
    }

    #[test]
    fn retries_follow_the_budget_with_a_floor() {
        let c = Arc::new(Counters::default());
        let requests: Vec<_> = (0..100).map(|_| c.try_request(None).unwrap()).collect();
        // 20% of 100 in flight.
        let retries: Vec<_> = (0..20).map(|_| c.try_retry(20, None).unwrap()).collect();
        assert!(c.try_retry(20, None).is_none());
        drop(retries);
        drop(requests);
        // Nothing in flight: the floor of 3, unless max_retries is lower.
        let floor: Vec<_> = (0..3).map(|_| c.try_retry(20, None).unwrap()).collect();
        assert!(c.try_retry(20, None).is_none());
        drop(floor);
        let _one = c.try_retry(20, Some(1)).unwrap();
        assert!(c.try_retry(20, Some(1)).is_none());
    }
}
