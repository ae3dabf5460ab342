//! Load balancing for the built-in proxy: which endpoint of a service takes
//! the next request.
//!
//! A [`Balancer`] is built once per configuration change from the service's
//! endpoints (as [`Target`]s) and its [`Policy`], then shared as an `Arc` by
//! every connection. Picking never allocates and never takes a lock: tables
//! are immutable and the little mutable state (a round-robin ticket counter,
//! random state, in-flight counts) is atomics.
//!
//! Which endpoints may take traffic right now (health, outlier ejection,
//! subset filters, a panic threshold that lets unhealthy ones back in) is the
//! caller's decision, passed to every [`Balancer::pick`] as `eligible`. So a
//! health change never rebuilds a table, and every policy keeps the relative
//! weights of the eligible targets.
//!
//! | policy | pick cost | when a target is ineligible |
//! |---|---|---|
//! | [`Policy::RoundRobin`] | one `fetch_add` | its turns go to the next in line |
//! | [`Policy::LeastRequest`] | two weighted draws, O(log n) | never drawn |
//! | [`Policy::Random`] | one weighted draw, O(log n) | redrawn |
//! | [`Policy::RingHash`] | binary search, O(log points) | its keys go to the next point's owner |
//! | [`Policy::Maglev`] | one table index | its keys are rehashed over the others |
//!
//! Every fast path gives up after a few misses (a heavy target ejected, most
//! endpoints down) and finishes with a scan of the targets: O(n), still
//! exact: a draw by weight among the eligible targets, which for the hashing
//! policies is made with the request's hash so that every node agrees.

mod hash;
mod maglev;
mod ring;
mod round_robin;

#[cfg(test)]
mod tests;

use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use switchyard::resource::Balance;

/// Random draws or round-robin tickets tried before the fallback scan.
///
/// Eight misses in a row are rare unless most of the weight is ineligible,
/// and then the scan, which looks at each target once, is the cheaper way
/// anyway.
const PROBES: usize = 8;

/// A stable 64-bit hash of a request's hashing key (a header value, a
/// cookie, the client address) for [`Policy::RingHash`] and
/// [`Policy::Maglev`].
///
/// It is XXH64 with seed 0, so the value is the same on every node, across
/// restarts and releases, and in any language with an XXH64 library: the
/// same client reaches the same endpoint whichever proxy it goes through.
pub fn hash_key(bytes: &[u8]) -> u64 {
    hash::xxh64(bytes, 0)
}

/// One period of smooth weighted round robin over `weights` (nginx's
/// order, as [`Policy::RoundRobin`] picks): positions into `weights`, each
/// appearing in proportion to its weight (weights of 0 count as 1), the
/// heavy ones interleaved with the others. For callers that rotate
/// through endpoints on their own, such as DNS answers.
pub fn smooth_order(weights: &[u32]) -> Vec<u32> {
    let weights: Vec<u32> = weights.iter().map(|&w| w.max(1)).collect();
    round_robin::smooth(&weights)
}

/// Zone preference, one rule for the built-in proxy's balancer and the
/// agent's DNS answers: a node whose `zone` label is `local` keeps to the
/// routable endpoints of its own zone when there is at least one, and
/// uses every routable endpoint otherwise (no zone label, or none of its
/// zone routable). `routable` gives the zones of the routable endpoints;
/// the answer is the zone to keep to, if any.
pub fn preferred_zone<'a, 'z>(
    local: Option<&'z str>,
    routable: impl IntoIterator<Item = Option<&'a str>>,
) -> Option<&'z str> {
    let local = local?;
    routable
        .into_iter()
        .any(|zone| zone == Some(local))
        .then_some(local)
}

/// One endpoint as the balancer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What [`Balancer::pick`] returns and `eligible` receives: typically
    /// the endpoint's index in the caller's list. Ids should be distinct,
    /// and small: in-flight counters are kept in a table indexed by id.
    pub id: usize,
    /// Relative weight. Validation keeps endpoint weights at 1 or more; a 0
    /// here is taken as 1 rather than silently dropping the endpoint.
    pub weight: u32,
    /// Stable identity for consistent hashing, such as `address:port` or the
    /// endpoint's name. It decides where the endpoint sits on the ring or in
    /// the Maglev table, so it must be the same on every node and distinct
    /// between targets.
    pub key: String,
}

/// A load-balancing policy; see the module documentation for costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Smooth weighted round robin (nginx's order).
    RoundRobin,
    /// Power of two choices: of two weighted random draws, the one with
    /// fewer requests in flight per unit of weight.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring of virtual nodes.
    RingHash,
    /// Maglev consistent hashing.
    Maglev,
}

impl Policy {
    /// Whether picks use the request's hash (without one, they fall back to
    /// a weighted random pick, as Envoy does when the header is missing).
    pub fn uses_hash(self) -> bool {
        matches!(self, Policy::RingHash | Policy::Maglev)
    }
}

impl From<&Balance> for Policy {
    /// The policy of a service. What to hash on stays with the caller, who
    /// computes the request's hash with [`hash_key`].
    fn from(balance: &Balance) -> Policy {
        match balance {
            Balance::RoundRobin => Policy::RoundRobin,
            Balance::LeastRequest => Policy::LeastRequest,
            Balance::Random => Policy::Random,
            Balance::RingHash(_) => Policy::RingHash,
            Balance::Maglev(_) => Policy::Maglev,
        }
    }
}

/// Picks targets for one service under one policy.
///
/// Immutable apart from atomics, so `Send + Sync`; build a new one when the
/// endpoints or their weights change. In-flight counts live in the balancer:
/// requests started on the previous one finish counting there, so right
/// after a change [`Policy::LeastRequest`] sees only the new requests.
pub struct Balancer {
    policy: Policy,
    /// Caller ids, by position.
    ids: Box<[usize]>,
    /// Weights (at least 1), by position.
    weights: Box<[u32]>,
    /// `cumulative[pos]` is the sum of `weights[..=pos]`.
    cumulative: Box<[u64]>,
    /// Requests in flight, by caller id.
    in_flight: Box<[AtomicU64]>,
    rng: Rng,
    table: Table,
}

/// The per-policy precomputed state.
enum Table {
    None,
    RoundRobin(round_robin::Sequence),
    Ring(ring::Ring),
    Maglev(maglev::Table),
}

impl Balancer {
    /// Builds a balancer whose random choices are seeded from the process's
    /// random state, so that proxies across the fleet do not make the same
    /// choices in lockstep.
    ///
    /// Cost: O(n) for most policies. Round robin computes its period
    /// (at most 65,536 slots, each costing one step per distinct weight);
    /// ring hash hashes and sorts its points (160 per unit of weight, at most
    /// about a million); Maglev fills 65,537 slots, O(M log M) probes. Meant
    /// for configuration changes, not per request.
    pub fn new(policy: Policy, targets: Vec<Target>) -> Balancer {
        Balancer::with_seed(policy, targets, RandomState::new().hash_one(0u64))
    }

    /// Like [`Balancer::new`] with a fixed seed: the same seed and the same
    /// sequence of calls make the same picks. For tests and simulations.
    pub fn with_seed(policy: Policy, targets: Vec<Target>, seed: u64) -> Balancer {
        let ids: Box<[usize]> = targets.iter().map(|t| t.id).collect();
        let weights: Box<[u32]> = targets.iter().map(|t| t.weight.max(1)).collect();
        let cumulative = weights
            .iter()
            .scan(0u64, |sum, &w| {
                *sum += u64::from(w);
                Some(*sum)
            })
            .collect();
        let slots = ids.iter().max().map_or(0, |&max| max + 1);
        let in_flight = (0..slots).map(|_| AtomicU64::new(0)).collect();
        let keyed = targets
            .iter()
            .zip(&weights)
            .map(|(t, &w)| (t.key.as_str(), w));
        let table = match policy {
            Policy::LeastRequest | Policy::Random => Table::None,
            Policy::RoundRobin => {
                Table::RoundRobin(round_robin::Sequence::new(&weights, hash::mix(!seed)))
            }
            Policy::RingHash => Table::Ring(ring::Ring::new(keyed)),
            Policy::Maglev => Table::Maglev(maglev::Table::new(keyed)),
        };
        Balancer {
            policy,
            ids,
            weights,
            cumulative,
            in_flight,
            rng: Rng(AtomicU64::new(seed)),
            table,
        }
    }

    /// The policy.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Number of targets.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether there are no targets (every pick returns `None`).
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Picks the id of a target for which `eligible(id)` is true, or `None`
    /// if there is none.
    ///
    /// `hash` is the request's hash for [`Policy::RingHash`] and
    /// [`Policy::Maglev`] (see [`hash_key`]); other policies ignore it, and
    /// without it the hashing policies pick at random by weight. For the
    /// hashing policies, nodes that agree on `eligible` agree on the pick.
    ///
    /// `eligible` may be called several times per pick, and more than once
    /// for the same id; it should be cheap (an atomic load or a bitset).
    pub fn pick(&self, hash: Option<u64>, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let ok = |pos: usize| eligible(self.ids[pos]);
        let pos = match (&self.table, hash) {
            (Table::RoundRobin(seq), _) => seq
                .pick(PROBES, ok)
                .or_else(|| self.scan(self.rng.next(), None, ok)),
            // The hashing policies' fallback draws with the hash itself, so
            // nodes that agree on eligibility still agree on the pick.
            (Table::Ring(ring), Some(h)) => ring
                .pick(h, ok)
                .or_else(|| self.scan(hash::mix(h), None, ok)),
            (Table::Maglev(table), Some(h)) => table
                .pick(h, ok)
                .or_else(|| self.scan(hash::mix(h), None, ok)),
            _ if self.policy == Policy::LeastRequest => self.least_request(ok),
            _ => self.random(ok),
        };
        pos.map(|pos| self.ids[pos])
    }

    /// Counts a request on target `id` as in flight until the returned guard
    /// is dropped. [`Policy::LeastRequest`] steers by these counts; other
    /// policies only report them through [`Balancer::in_flight`].
    ///
    /// An id the balancer was not built with is not counted (a mistake that
    /// should not take a request down with it).
    pub fn start(&self, id: usize) -> InFlight<'_> {
        InFlight {
            counter: self.count(id),
        }
    }

    /// Like [`Balancer::start`], with a guard that owns a reference to the
    /// balancer, for requests that outlive the borrow (a response body still
    /// streaming after the handler returned).
    pub fn start_owned(self: &Arc<Self>, id: usize) -> OwnedInFlight {
        self.count(id);
        OwnedInFlight {
            balancer: Arc::clone(self),
            id,
        }
    }

    /// Increments `id`'s in-flight counter, if it has one.
    fn count(&self, id: usize) -> Option<&AtomicU64> {
        // Relaxed: the counts steer picks approximately and order nothing.
        self.in_flight.get(id).inspect(|c| {
            c.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Requests in flight on target `id` (0 for an unknown id).
    pub fn in_flight(&self, id: usize) -> u64 {
        self.in_flight
            .get(id)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn load(&self, pos: usize) -> u64 {
        self.in_flight(self.ids[pos])
    }

    /// A weighted random eligible position: rejection sampling, which keeps
    /// the eligible targets' relative weights exactly, then the scan.
    fn random(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        for _ in 0..PROBES {
            let pos = self.draw(self.rng.next(), None)?;
            if ok(pos) {
                return Some(pos);
            }
        }
        self.scan(self.rng.next(), None, ok)
    }

    /// Power of two choices. Both candidates are drawn by weight; the one
    /// with fewer requests in flight per unit of weight wins, the first on a
    /// tie. Idle targets therefore receive traffic in proportion to their
    /// weights, and busy ones less, in proportion to how busy they are for
    /// their weight.
    ///
    /// Counts are small integers, so under light load an idle light target
    /// beats a heavy one with a single request in flight: with weights
    /// 1:2:7 and three or four requests open at a time, shares come out
    /// nearer 15:30:55. Under load the counts grow and the shares approach
    /// the weights (for endpoints of equal speed per unit of weight).
    fn least_request(&self, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let a = self.random(&ok)?;
        let b = (0..PROBES)
            .filter_map(|_| self.draw(self.rng.next(), Some(a)))
            .find(|&b| ok(b))
            .or_else(|| self.scan(self.rng.next(), Some(a), &ok));
        let Some(b) = b else { return Some(a) };
        // load_b / w_b < load_a / w_a, without division; u128 because a
        // count times a weight can exceed u64 in principle.
        let (wa, wb) = (self.weights[a], self.weights[b]);
        let lhs = u128::from(self.load(b)) * u128::from(wa);
        let rhs = u128::from(self.load(a)) * u128::from(wb);
        Some(if lhs < rhs { b } else { a })
    }

    /// A position drawn by weight from `r`, leaving out `except`: drawing
    /// from the other targets' total and stepping over `except`'s range
    /// keeps the others' proportions without retries. `None` when nothing
    /// is left.
    fn draw(&self, r: u64, except: Option<usize>) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let Some(e) = except else {
            let x = below(r, total);
            return Some(self.cumulative.partition_point(|&c| c <= x));
        };
        let w = u64::from(self.weights[e]);
        let mut x = below(r, total.checked_sub(w).filter(|&t| t > 0)?);
        if x >= self.cumulative[e] - w {
            x += w;
        }
        Some(self.cumulative.partition_point(|&c| c <= x))
    }

    /// The fallback of every policy: a draw by weight among the eligible
    /// targets, from `r`. One pass totals their weight, one finds the draw;
    /// O(n), exact. A scan for the first eligible target from some position
    /// would be cheaper but hands every run of ineligible targets to the
    /// target after it.
    fn scan(&self, r: u64, except: Option<usize>, ok: impl Fn(usize) -> bool) -> Option<usize> {
        let ok = |pos: usize| Some(pos) != except && ok(pos);
        let mut total = 0;
        let mut last = None;
        for pos in 0..self.len() {
            if ok(pos) {
                total += u64::from(self.weights[pos]);
                last = Some(pos);
            }
        }
        let mut x = below(r, total);
        for pos in 0..self.len() {
            if ok(pos) {
                let w = u64::from(self.weights[pos]);
                if x < w {
                    return Some(pos);
                }
                x -= w;
            }
        }
        // Eligibility changed between the two passes.
        last
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("policy", &self.policy)
            .field("targets", &self.ids.len())
            .finish_non_exhaustive()
    }
}

/// A request counted as in flight on one target until dropped; from
/// [`Balancer::start`].
#[must_use = "the request stops counting as in flight when the guard is dropped"]
#[derive(Debug)]
pub struct InFlight<'a> {
    counter: Option<&'a AtomicU64>,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(c) = self.counter {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// [`InFlight`] holding its own reference to the balancer; from
/// [`Balancer::start_owned`].
#[must_use = "the request stops counting as in flight when the guard is dropped"]
#[derive(Debug)]
pub struct OwnedInFlight {
    balancer: Arc<Balancer>,
    id: usize,
}

impl Drop for OwnedInFlight {
    fn drop(&mut self) {
        if let Some(c) = self.balancer.in_flight.get(self.id) {
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// wyrand over an atomic state: each call advances the state with one
/// `fetch_add`, so concurrent picks never wait on each other and never see
/// the same value (Wang Yi's wyhash, public domain). Kept rather than
/// fastrand (used everywhere else): a balancer is shared by every proxy
/// thread and seedable ([`Balancer::with_seed`]), and fastrand's generator
/// is either per thread (not seedable per balancer) or needs `&mut` (a
/// lock per pick).
struct Rng(AtomicU64);

impl Rng {
    fn next(&self) -> u64 {
        const INC: u64 = 0xA076_1D64_78BD_642F;
        let s = self.0.fetch_add(INC, Ordering::Relaxed).wrapping_add(INC);
        let t = u128::from(s) * u128::from(s ^ 0xE703_7ED1_A0B4_28DB);
        (t >> 64) as u64 ^ t as u64
    }
}

/// Maps random bits onto `0..n` by multiplication (Lemire): no division, and
/// a bias below n / 2^64.
fn below(r: u64, n: u64) -> u64 {
    ((u128::from(r) * u128::from(n)) >> 64) as u64
}
