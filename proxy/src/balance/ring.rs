//! Consistent hashing on a ring of virtual nodes (Karger et al., as in
//! Envoy's `RING_HASH`).
//!
//! Each target owns points on a 64-bit ring, at the hashes of `key#0`,
//! `key#1`, …; a request hash belongs to the first point at or after it. A
//! target's point count depends only on its own weight relative to the
//! others' greatest common divisor: [`POINTS_PER_UNIT`] per unit. So adding
//! or removing a target of the usual weight leaves everyone else's points
//! where they were, and only the hashes that fall on the new target's points
//! (or were on the removed target's) move: about 1/(N+1) when one of N+1
//! equal targets is added.
//!
//! Envoy sizes the ring by a minimum total instead (1024 points by default);
//! that makes every target's point count depend on how many targets there
//! are, so a change of membership also reshuffles points of the others.
//! 160 points per unit gives each target's share a relative spread of about
//! 1/√160 ≈ 8 %, the usual price of ring hashing; Maglev balances better.
//! The ring is capped at [`MAX_POINTS`] (12 MiB); past it, counts are scaled
//! down proportionally, each target keeping at least one point.

use std::fmt::Write as _;

use super::hash_key;
use super::round_robin::gcd;

/// Points per unit of weight (weights divided by their gcd).
pub(super) const POINTS_PER_UNIT: u64 = 160;

/// Most points on one ring.
pub(super) const MAX_POINTS: u64 = 1 << 20;

/// How many points a lookup walks past ineligible targets before giving up
/// on the ring; bounds the cost when most targets are out.
const WALK: usize = 128;

/// A sorted ring of points.
#[derive(Debug)]
pub(super) struct Ring {
    /// Point hashes, ascending.
    points: Box<[u64]>,
    /// `owners[i]` is the target position owning `points[i]`.
    owners: Box<[u32]>,
}

impl Ring {
    /// Builds the ring for targets given as `(key, weight)` by position.
    pub(super) fn new<'a>(targets: impl ExactSizeIterator<Item = (&'a str, u32)> + Clone) -> Ring {
        let g = targets
            .clone()
            .fold(0, |g, (_, w)| gcd(g, u64::from(w)))
            .max(1);
        let mut counts: Vec<u64> = targets
            .clone()
            .map(|(_, w)| u64::from(w) / g * POINTS_PER_UNIT)
            .collect();
        let total: u64 = counts.iter().sum();
        if total > MAX_POINTS {
            for c in &mut counts {
                *c = (*c * MAX_POINTS / total).max(1);
            }
        }
        let mut ring: Vec<(u64, u32)> = Vec::with_capacity(counts.iter().sum::<u64>() as usize);
        let mut name = String::new();
        for (pos, ((key, _), count)) in targets.zip(counts).enumerate() {
            for i in 0..count {
                name.clear();
                // Writing to a String cannot fail.
                let _ = write!(name, "{key}#{i}");
                ring.push((hash_key(name.as_bytes()), pos as u32));
            }
        }
        // Sorting on the owner too keeps the rare equal hashes in a fixed
        // order, so every node builds the same ring.
        ring.sort_unstable();
        Ring {
            points: ring.iter().map(|&(h, _)| h).collect(),
            owners: ring.iter().map(|&(_, pos)| pos).collect(),
        }
    }

    /// The owner of the first point at or after `hash` whose owner is
    /// eligible, walking at most [`WALK`] points.
    pub(super) fn pick(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.points.len();
        let start = self.points.partition_point(|&p| p < hash);
        for step in 0..WALK.min(len) {
            // start ≤ len and step < len, so one subtraction wraps.
            let mut i = start + step;
            if i >= len {
                i -= len;
            }
            let pos = self.owners[i] as usize;
            if eligible(pos) {
                return Some(pos);
            }
        }
        None
    }

    /// Number of points (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.points.len()
    }
}
