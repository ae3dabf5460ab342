//! Jittered exponential backoff between attempts to reach a control plane.
//!
//! "Full jitter": each delay is drawn uniformly between the base and the
//! current cap, and the cap doubles up to the maximum. Spreading the delays
//! keeps a fleet of agents that lost the same control plane from coming back
//! to the next one in lockstep.

use std::time::Duration;

/// The delays before successive attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    cap: Duration,
}

impl Backoff {
    /// Starts at `base`, growing to at most `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        let max = max.max(base);
        Backoff {
            base,
            max,
            cap: base,
        }
    }

    /// The delay before the next attempt; the cap for the one after doubles.
    pub fn next_delay(&mut self) -> Duration {
        let spread = self.cap.saturating_sub(self.base);
        let delay = self.base + spread.mul_f64(unit());
        self.cap = self.cap.saturating_mul(2).min(self.max);
        delay
    }

    /// Back to `base`, after an attempt that worked.
    pub fn reset(&mut self) {
        self.cap = self.base;
    }
}

/// A number in `[0, 1)`, random enough for jitter.
fn unit() -> f64 {
    fastrand::f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_within_bounds_and_resets() {
        let base = Duration::from_millis(100);
        let max = Duration::from_millis(800);
        let mut b = Backoff::new(base, max);
        let mut caps = Vec::new();
        for _ in 0..6 {
            let cap = b.cap;
            let d = b.next_delay();
            assert!(d >= base && d <= cap, "{d:?} not in {base:?}..={cap:?}");
            caps.push(cap.as_millis());
        }
        assert_eq!(caps, [100, 200, 400, 800, 800, 800]);
        b.reset();
        assert_eq!(b.next_delay(), base);
    }

    #[test]
    fn jitter_spreads() {
        let mut b = Backoff::new(Duration::ZERO, Duration::from_secs(1));
        b.cap = Duration::from_secs(1);
        let delays: std::collections::BTreeSet<_> = (0..20)
            .map(|_| {
                b.cap = Duration::from_secs(1);
                b.next_delay()
            })
            .collect();
        assert!(delays.len() > 10, "{delays:?}");
    }
}
