//! Smooth weighted round robin without a lock.
//!
//! nginx's algorithm keeps a `current` value per target: each pick adds every
//! target's weight to its `current`, takes the target with the largest one
//! (the first on ties) and subtracts the total weight from it. The result
//! interleaves targets (weights 5, 1, 1 give `a a b a c a a`, not
//! `a a a a a b c`), which keeps a heavy target from receiving bursts.
//!
//! Run as written, every pick mutates all the `current` values, which needs a
//! lock per service on the hot path. But the sequence only depends on the
//! weights, and it repeats with a period of the total weight. So it is
//! computed once, when the configuration changes, and a pick is one
//! `fetch_add` on a shared counter that indexes it.
//!
//! Weights are first divided by their greatest common divisor (weights 100,
//! 100 give the period 2, not 200). A period longer than [`MAX_PERIOD`] is
//! scaled down proportionally; each target keeps at least one slot, so a
//! share is off by less than one slot in [`MAX_PERIOD`] (0.002 percentage
//! points).
//!
//! An ineligible target's slot is skipped by taking the next ticket from the
//! same counter, never by looking further ahead locally: each slot of the
//! period is then used once per period, and the remaining targets keep their
//! relative weights. Looking ahead locally would hand every skipped slot to
//! whichever target follows it, which for weights 5, 1, 1 with `a` out would
//! split traffic 5:2 between `b` and `c` instead of 1:1.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Longest period kept; 256 KiB of `u32` at most per service.
pub(super) const MAX_PERIOD: u64 = 1 << 16;

/// A precomputed period of smooth weighted round robin.
#[derive(Debug)]
pub(super) struct Sequence {
    /// Target positions in pick order.
    order: Box<[u32]>,
    /// Next ticket. Wraps after 2^64 picks, which costs one slightly uneven
    /// period.
    next: AtomicUsize,
}

impl Sequence {
    /// Builds the sequence for `weights` (each at least 1), starting at slot
    /// `start % period` so that a fleet of proxies that received the same
    /// configuration at the same moment does not send its first requests to
    /// the same target.
    pub(super) fn new(weights: &[u32], start: u64) -> Sequence {
        let order = smooth(weights).into_boxed_slice();
        let start = if order.is_empty() {
            0
        } else {
            (start % order.len() as u64) as usize
        };
        Sequence {
            order,
            next: AtomicUsize::new(start),
        }
    }

    /// The next eligible target position, trying at most `probes` tickets.
    pub(super) fn pick(&self, probes: usize, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.order.is_empty() {
            return None;
        }
        for _ in 0..probes {
            // Relaxed: the counter only hands out distinct tickets; nothing
            // else is published through it.
            let ticket = self.next.fetch_add(1, Ordering::Relaxed);
            let pos = self.order[ticket % self.order.len()] as usize;
            if eligible(pos) {
                return Some(pos);
            }
        }
        None
    }
}

/// One period of nginx's smooth weighted round robin over `weights`.
///
/// Simulating nginx directly costs O(period × targets), which for a thousand
/// endpoints and a 64k period is tens of millions of steps per configuration
/// change. Instead, targets with equal weights form a class. Inside a class
/// every `current` grows at the same rate, so the class is served in plain
/// rotation, lowest position first; the target nginx would pick at step `t`
/// is therefore the front of the class whose front has the largest
/// `current = t × weight − total × picks_so_far`. A step costs O(classes),
/// and classes are few: distinct weights that sum to at most the period
/// number at most √(2 × period), 362 for a 64k period.
pub(super) fn smooth(weights: &[u32]) -> Vec<u32> {
    let units = normalize(weights);
    let total: u64 = units.iter().sum();

    struct Class {
        weight: u64,
        members: Vec<u32>,
        picks: u64,
    }
    let mut classes: Vec<Class> = Vec::new();
    let mut by_weight: Vec<(u64, u32)> = units
        .iter()
        .enumerate()
        .map(|(pos, &w)| (w, pos as u32))
        .collect();
    by_weight.sort_unstable();
    for (weight, pos) in by_weight {
        match classes.last_mut() {
            Some(class) if class.weight == weight => class.members.push(pos),
            _ => classes.push(Class {
                weight,
                members: vec![pos],
                picks: 0,
            }),
        }
    }

    let mut order = Vec::with_capacity(total as usize);
    for t in 1..=total {
        let mut best: Option<(i64, u32, usize)> = None;
        for (c, class) in classes.iter().enumerate() {
            let len = class.members.len() as u64;
            let front = class.members[(class.picks % len) as usize];
            let current = (t * class.weight) as i64 - (total * (class.picks / len)) as i64;
            // nginx keeps the first maximum in configuration order.
            let better = match best {
                None => true,
                Some((cur, pos, _)) => current > cur || (current == cur && front < pos),
            };
            if better {
                best = Some((current, front, c));
            }
        }
        let Some((_, pos, c)) = best else { break };
        order.push(pos);
        classes[c].picks += 1;
    }
    order
}

/// Weights divided by their gcd, then scaled to fit [`MAX_PERIOD`].
fn normalize(weights: &[u32]) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w))).max(1);
    let mut units: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
    let total: u64 = units.iter().sum();
    if total > MAX_PERIOD {
        for w in &mut units {
            *w = (*w * MAX_PERIOD / total).max(1);
        }
        let g = units.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        for w in &mut units {
            *w /= g;
        }
    }
    units
}

pub(super) fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
