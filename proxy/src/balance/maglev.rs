//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted as in
//! Envoy.
//!
//! Each target has its own permutation of the [`TABLE_SIZE`] slots, from
//! two hashes of its key: `offset` and `skip`, slot `j` being
//! `(offset + j × skip) mod M`. Targets take turns claiming the next free slot
//! of their permutation until the table is full; a lookup is one index,
//! `table[hash mod M]`. Weights set how often a target takes its turn: the
//! heaviest at every round, one of weight `w` whenever its slot count lags
//! `round × w / max_weight`.
//!
//! Compared with the ring, shares follow weights to within one slot per
//! target (equal weights get equal counts ±1) and a lookup is O(1); the price
//! is a little more movement on membership changes (a few percent of the
//! keys beyond the 1/N that must move) and a fixed 256 KiB table.
//!
//! `M` is fixed: changing it remaps nearly every key, so it cannot follow the
//! number of targets. 65537, Envoy's default and prime as the permutations
//! require, leaves about 100 slots per target up to 650 targets; beyond
//! that a target's share is off by up to one slot (0.0015 points) and more
//! keys move on changes. Past 65537 targets some get no slot at all.

use super::hash::{mix, xxh64};

/// Slots in the table; prime so that every `skip` generates a full
/// permutation.
pub(super) const TABLE_SIZE: u64 = 65_537;

/// Rehashes tried when a lookup lands on an ineligible target, before the
/// caller's deterministic scan.
const REHASHES: usize = 8;

/// A filled Maglev lookup table.
#[derive(Debug)]
pub(super) struct Table {
    /// Target position per slot.
    slots: Box<[u32]>,
}

impl Table {
    /// Builds the table for targets given as `(key, weight)` by position.
    pub(super) fn new<'a>(targets: impl ExactSizeIterator<Item = (&'a str, u32)>) -> Table {
        const EMPTY: u32 = u32::MAX;
        const M: u64 = TABLE_SIZE;

        struct Turn {
            weight: u64,
            /// Current slot of the permutation.
            slot: u64,
            skip: u64,
            filled: u64,
        }
        let mut turns: Vec<Turn> = targets
            .map(|(key, weight)| {
                let offset = xxh64(key.as_bytes(), 0) % M;
                let skip = xxh64(key.as_bytes(), 1) % (M - 1) + 1;
                Turn {
                    weight: u64::from(weight),
                    slot: offset,
                    skip,
                    filled: 0,
                }
            })
            .collect();
        if turns.is_empty() {
            return Table {
                slots: Box::new([]),
            };
        }
        let max_weight = turns.iter().map(|t| t.weight).max().unwrap_or(1).max(1);

        let mut slots = vec![EMPTY; M as usize];
        let mut filled = 0;
        'fill: for round in 1u64.. {
            for (pos, turn) in turns.iter_mut().enumerate() {
                // Skip this turn while `filled / round` is ahead of
                // `weight / max_weight`; integers keep every node exact.
                if round * turn.weight < turn.filled * max_weight {
                    continue;
                }
                // A permutation visits every slot once in M steps, and the
                // table is not full, so this finds a free slot.
                while slots[turn.slot as usize] != EMPTY {
                    turn.slot = (turn.slot + turn.skip) % M;
                }
                slots[turn.slot as usize] = pos as u32;
                turn.slot = (turn.slot + turn.skip) % M;
                turn.filled += 1;
                filled += 1;
                if filled == M {
                    break 'fill;
                }
            }
        }
        Table {
            slots: slots.into_boxed_slice(),
        }
    }

    /// The target owning `hash`'s slot if eligible; otherwise, the owner of
    /// the slot of a rehashed `hash`, up to [`REHASHES`] times. Rehashing
    /// spreads an ineligible target's keys over all the others in proportion
    /// to their slots, where probing the next slots would pile them onto
    /// that target's table neighbours.
    pub(super) fn pick(&self, hash: u64, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mut h = hash;
        for _ in 0..=REHASHES {
            let pos = self.slots[(h % TABLE_SIZE) as usize] as usize;
            if eligible(pos) {
                return Some(pos);
            }
            h = mix(h);
        }
        None
    }

    /// Slot count per target position (for tests).
    #[cfg(test)]
    pub(super) fn counts(&self, targets: usize) -> Vec<usize> {
        let mut counts = vec![0; targets];
        for &pos in &self.slots {
            counts[pos as usize] += 1;
        }
        counts
    }
}
