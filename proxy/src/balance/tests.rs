//! Balancing behaviour as a user of the proxy would see it: traffic shares,
//! the round-robin order, which requests move when endpoints come and go.
//!
//! Everything is deterministic (fixed seeds and keys), so a tolerance that
//! holds once holds on every run; the tolerances are what a user would call
//! "follows the weights", not the tightest values that happen to pass.
//! Run with `--no-capture` to see the measured figures.

use std::collections::VecDeque;
use std::sync::Arc;

use switchyard::resource::{Balance, HashOn};

use super::{Balancer, Policy, Target, hash, hash_key, maglev, ring, round_robin};

const ALL: [Policy; 5] = [
    Policy::RoundRobin,
    Policy::LeastRequest,
    Policy::Random,
    Policy::RingHash,
    Policy::Maglev,
];

const SEED: u64 = 0x5EED;

fn targets(weights: &[u32]) -> Vec<Target> {
    weights
        .iter()
        .enumerate()
        .map(|(id, &weight)| Target {
            id,
            weight,
            key: format!("10.0.{}.{}:8080", id / 256, id % 256),
        })
        .collect()
}

/// The hash of the `i`-th client, as the proxy would compute it from a
/// header.
fn client(i: usize) -> u64 {
    hash_key(format!("user-{i}").as_bytes())
}

/// Per-target shares, in percent, of `picks` picks (client `i`'s hash for
/// pick `i`).
fn shares(b: &Balancer, n: usize, picks: usize, eligible: impl Fn(usize) -> bool) -> Vec<f64> {
    let mut counts = vec![0usize; n];
    for i in 0..picks {
        let id = b
            .pick(Some(client(i)), &eligible)
            .expect("an eligible target");
        counts[id] += 1;
    }
    percent(&counts)
}

fn percent(counts: &[usize]) -> Vec<f64> {
    let total: usize = counts.iter().sum();
    counts
        .iter()
        .map(|&c| 100.0 * c as f64 / total as f64)
        .collect()
}

fn assert_shares(what: &str, got: &[f64], want: &[f64], tolerance: f64) {
    println!("{what}: shares {got:.2?} (want {want:.2?} ± {tolerance})");
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g - w).abs() <= tolerance,
            "{what}: shares {got:.2?}, want {want:.2?} ± {tolerance} points"
        );
    }
}

#[test]
fn hash_key_is_xxh64() {
    // Reference values from the xxHash reference implementation.
    assert_eq!(hash_key(b""), 0xEF46_DB37_51D8_E999);
    assert_eq!(hash_key(b"a"), 0xD24E_C4F1_A98C_6E5B);
    assert_eq!(hash_key(b"abc"), 0x44BC_2CF5_AD77_0999);
    assert_eq!(hash_key(b"10.0.0.1:8080"), 0xCB97_2177_068E_B685);
    assert_eq!(
        hash_key(b"Nobody inspects the spammish repetition"),
        0xFBCE_A83C_8A37_8BF1
    );
    assert_eq!(
        hash_key(b"0123456789abcdef0123456789abcdef0123456789"),
        0xA761_90C3_ACF0_8A1C
    );
    // Maglev's second permutation hash.
    assert_eq!(hash::xxh64(b"abc", 1), 0xBEA9_CA81_9932_8908);
    assert_eq!(
        hash::xxh64(b"Nobody inspects the spammish repetition", 1),
        0x43F4_2544_8D95_4DB6
    );
}

#[test]
fn policy_follows_the_service() {
    let ip = HashOn::SourceIp;
    assert_eq!(Policy::from(&Balance::RoundRobin), Policy::RoundRobin);
    assert_eq!(Policy::from(&Balance::LeastRequest), Policy::LeastRequest);
    assert_eq!(Policy::from(&Balance::Random), Policy::Random);
    assert_eq!(
        Policy::from(&Balance::RingHash(ip.clone())),
        Policy::RingHash
    );
    assert_eq!(Policy::from(&Balance::Maglev(ip)), Policy::Maglev);
    assert!(Policy::Maglev.uses_hash() && !Policy::Random.uses_hash());
}

#[test]
fn every_policy_follows_weights() {
    for policy in ALL {
        let b = Balancer::with_seed(policy, targets(&[1, 2, 7]), SEED);
        let got = shares(&b, 3, 100_000, |_| true);
        assert_shares(&format!("{policy:?} 1:2:7"), &got, &[10.0, 20.0, 70.0], 2.0);
    }
}

#[test]
fn hashing_policies_without_a_hash_pick_by_weight() {
    for policy in [Policy::RingHash, Policy::Maglev] {
        let b = Balancer::with_seed(policy, targets(&[1, 2, 7]), SEED);
        let mut counts = [0; 3];
        for _ in 0..100_000 {
            counts[b.pick(None, |_| true).unwrap()] += 1;
        }
        let what = format!("{policy:?} without hash");
        assert_shares(&what, &percent(&counts), &[10.0, 20.0, 70.0], 2.0);
    }
}

/// nginx's smooth weighted round robin, run step by step as nginx does.
fn nginx(weights: &[u32], picks: usize) -> Vec<u32> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    (0..picks)
        .map(|_| {
            let mut best = 0;
            for (i, c) in current.iter_mut().enumerate() {
                *c += i64::from(weights[i]);
            }
            for i in 1..weights.len() {
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            best as u32
        })
        .collect()
}

#[test]
fn round_robin_is_nginx_smooth_order() {
    // The reference itself: 5, 1, 1 interleaves as a a b a c a a.
    let period = nginx(&[5, 1, 1], 7);
    assert_eq!(period, [0, 0, 1, 0, 2, 0, 0]);

    // A balancer starts at a random slot of the period (so a fleet does not
    // hit one endpoint first), then follows it exactly.
    let b = Balancer::with_seed(Policy::RoundRobin, targets(&[5, 1, 1]), SEED);
    let picks: Vec<u32> = (0..70)
        .map(|_| b.pick(None, |_| true).unwrap() as u32)
        .collect();
    let offset = (0..7)
        .find(|&k| (0..70).all(|i| picks[i] == period[(k + i) % 7]))
        .unwrap_or_else(|| panic!("{picks:?} does not follow {period:?}"));
    println!("round robin 5:1:1 from slot {offset}: {:?}", &picks[..14]);
    let longest_run = picks
        .chunk_by(|a, b| a == b)
        .map(<[u32]>::len)
        .max()
        .unwrap_or(0);
    assert!(longest_run < 5, "a run of {longest_run} in {picks:?}");

    // Balancers built with different seeds, as on different nodes, do not
    // all start on the same slot.
    let firsts: std::collections::BTreeSet<_> = (0..20)
        .map(|seed| {
            let b = Balancer::with_seed(Policy::RoundRobin, targets(&[1; 10]), seed);
            b.pick(None, |_| true).unwrap()
        })
        .collect();
    assert!(firsts.len() >= 5, "first picks of 20 nodes: {firsts:?}");
}

#[test]
fn smooth_sequence_matches_nginx() {
    let mut cases: Vec<Vec<u32>> = vec![
        vec![1],
        vec![1, 1, 1],
        vec![5, 1, 1],
        vec![1, 5, 1],
        vec![3, 3, 2, 2, 1],
        vec![100, 100],
        vec![10_000, 1],
        vec![4, 6, 10, 4],
    ];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..200 {
        x = hash::mix(x);
        let n = 1 + (x % 12) as usize;
        cases.push(
            (0..n)
                .map(|i| 1 + (hash::mix(x ^ i as u64) % 40) as u32)
                .collect(),
        );
    }
    for weights in cases {
        let got = round_robin::smooth(&weights);
        let g = weights
            .iter()
            .fold(0, |g, &w| round_robin::gcd(g, u64::from(w)));
        let period = weights.iter().map(|&w| u64::from(w)).sum::<u64>() / g;
        assert_eq!(got, nginx(&weights, period as usize), "weights {weights:?}");
    }
}

#[test]
fn long_round_robin_periods_are_scaled_down() {
    // Primes: no common divisor, a period of 11 × ~9,980 without scaling.
    let weights = [
        9973, 9967, 9949, 9941, 9931, 9929, 9923, 9907, 9901, 9887, 3,
    ];
    let order = round_robin::smooth(&weights);
    assert!(order.len() as u64 <= round_robin::MAX_PERIOD);
    let mut counts = vec![0; weights.len()];
    for &pos in &order {
        counts[pos as usize] += 1;
    }
    let total: u32 = weights.iter().sum();
    let want: Vec<f64> = weights
        .iter()
        .map(|&w| 100.0 * f64::from(w) / f64::from(total))
        .collect();
    assert_shares("scaled period", &percent(&counts), &want, 0.01);
    // The lightest target keeps its slot.
    assert!(counts[10] >= 1);
}

#[test]
fn ineligible_targets_are_never_picked() {
    for policy in ALL {
        let b = Balancer::with_seed(policy, targets(&[1, 2, 7]), SEED);
        let got = shares(&b, 3, 50_000, |id| id != 1);
        // The others keep their relative weights: 1:7.
        let what = format!("{policy:?} 1:2:7 with the 2 out");
        assert_eq!(got[1], 0.0, "{what}: {got:?}");
        assert_shares(&what, &got, &[12.5, 0.0, 87.5], 2.0);
    }
}

#[test]
fn an_ejected_heavy_target_leaves_the_others_even() {
    // Most draws and round-robin slots hit the ineligible target, so this
    // goes through the fallback scans.
    for policy in ALL {
        let b = Balancer::with_seed(policy, targets(&[1000, 1, 1]), SEED);
        let got = shares(&b, 3, 20_000, |id| id != 0);
        let what = format!("{policy:?} 1000:1:1 with the 1000 out");
        assert_eq!(got[0], 0.0, "{what}: {got:?}");
        assert_shares(&what, &got, &[0.0, 50.0, 50.0], 3.0);
    }
}

#[test]
fn nothing_eligible_picks_nothing() {
    for policy in ALL {
        let b = Balancer::with_seed(policy, targets(&[1, 2, 7]), SEED);
        assert_eq!(b.pick(Some(client(1)), |_| false), None, "{policy:?}");
        assert_eq!(b.pick(None, |_| false), None, "{policy:?}");
        let empty = Balancer::with_seed(policy, Vec::new(), SEED);
        assert!(empty.is_empty());
        assert_eq!(empty.pick(Some(client(1)), |_| true), None, "{policy:?}");
        // A lone eligible target is always the pick.
        assert_eq!(b.pick(Some(client(1)), |id| id == 2), Some(2), "{policy:?}");
    }
}

#[test]
fn ids_are_the_callers() {
    let mut t = targets(&[1, 1]);
    t[0].id = 7;
    t[1].id = 3;
    for policy in ALL {
        let b = Balancer::with_seed(policy, t.clone(), SEED);
        for i in 0..100 {
            let id = b.pick(Some(client(i)), |id| id != 3).unwrap();
            assert_eq!(id, 7, "{policy:?}");
        }
    }
}

#[test]
fn in_flight_counts_follow_guards() {
    let b = Arc::new(Balancer::with_seed(
        Policy::LeastRequest,
        targets(&[1, 1]),
        SEED,
    ));
    let first = b.start(1);
    let second = b.start(1);
    let owned = b.start_owned(0);
    assert_eq!((b.in_flight(0), b.in_flight(1)), (1, 2));
    drop(first);
    drop(owned);
    assert_eq!((b.in_flight(0), b.in_flight(1)), (0, 1));
    drop(second);
    assert_eq!(b.in_flight(1), 0);
    // An id the balancer does not know is not counted, and nothing breaks.
    drop(b.start(99));
    assert_eq!(b.in_flight(99), 0);
}

#[test]
fn least_request_avoids_a_busy_target() {
    let b = Balancer::with_seed(Policy::LeastRequest, targets(&[1, 1, 1, 1]), SEED);
    let busy: Vec<_> = (0..50).map(|_| b.start(0)).collect();
    let got = shares(&b, 4, 20_000, |_| true);
    // Two distinct candidates, so the busy one only wins against another
    // busy one: never, here.
    let third = 100.0 / 3.0;
    assert_shares(
        "least request, 50 in flight on 0",
        &got,
        &[0.0, third, third, third],
        2.0,
    );
    drop(busy);
    let got = shares(&b, 4, 20_000, |_| true);
    assert_shares(
        "least request, all idle",
        &got,
        &[25.0, 25.0, 25.0, 25.0],
        2.0,
    );
}

#[test]
fn least_request_sends_less_to_a_slow_target() {
    // Four equal targets; target 0 takes 10 ticks per request, the others
    // 1. Each tick sends 8 requests. Random would give each 25 %.
    let b = Balancer::with_seed(Policy::LeastRequest, targets(&[1, 1, 1, 1]), SEED);
    let mut running: VecDeque<(usize, _)> = VecDeque::new();
    let mut counts = [0usize; 4];
    for tick in 0..5_000 {
        while running.front().is_some_and(|&(end, _)| end <= tick) {
            running.pop_front();
        }
        for _ in 0..8 {
            let id = b.pick(None, |_| true).unwrap();
            counts[id] += 1;
            let end = tick + if id == 0 { 10 } else { 1 };
            // Keep `running` ordered by end tick.
            let at = running.partition_point(|&(e, _)| e <= end);
            running.insert(at, (end, b.start(id)));
        }
    }
    let got = percent(&counts);
    println!("least request, slow target 0: shares {got:.2?}");
    assert!(got[0] < 15.0, "the slow target got {:.2} %", got[0]);
    for share in &got[1..] {
        assert!(
            (share - got[1]).abs() < 2.0,
            "uneven fast targets: {got:.2?}"
        );
    }
}

#[test]
fn least_request_compares_load_per_weight() {
    // Target 1 has twice the weight and twice the requests: equally loaded,
    // so the idle-equivalent rule applies and shares follow the weights.
    // One more request on it tips every contest to target 0.
    let b = Balancer::with_seed(Policy::LeastRequest, targets(&[1, 2]), SEED);
    let _a = b.start(0);
    let _b: Vec<_> = (0..2).map(|_| b.start(1)).collect();
    let got = shares(&b, 2, 30_000, |_| true);
    assert_shares(
        "least request 1:2, loads 1:2",
        &got,
        &[100.0 / 3.0, 200.0 / 3.0],
        2.0,
    );
    let _c = b.start(1);
    let got = shares(&b, 2, 10_000, |_| true);
    assert_shares("least request 1:2, loads 1:3", &got, &[100.0, 0.0], 0.0);
}

/// The target each of `keys` clients maps to.
fn assignment(b: &Balancer, keys: usize, eligible: impl Fn(usize) -> bool) -> Vec<usize> {
    (0..keys)
        .map(|i| b.pick(Some(client(i)), &eligible).unwrap())
        .collect()
}

fn moved(before: &[usize], after: &[usize]) -> f64 {
    let n = before.iter().zip(after).filter(|(a, b)| a != b).count();
    100.0 * n as f64 / before.len() as f64
}

#[test]
fn a_key_always_maps_to_the_same_target() {
    for policy in [Policy::RingHash, Policy::Maglev] {
        // Two nodes, different random state: same table, same answers.
        let one = Balancer::with_seed(policy, targets(&[1; 10]), 1);
        let two = Balancer::new(policy, targets(&[1; 10]));
        let first = assignment(&one, 10_000, |_| true);
        assert_eq!(first, assignment(&one, 10_000, |_| true), "{policy:?}");
        assert_eq!(first, assignment(&two, 10_000, |_| true), "{policy:?}");
        // Eligibility is part of the answer, and still agreed on.
        let out = |id| id % 3 != 0;
        assert_eq!(assignment(&one, 10_000, out), assignment(&two, 10_000, out));
    }
}

#[test]
fn adding_a_target_moves_about_one_key_in_n() {
    for policy in [Policy::RingHash, Policy::Maglev] {
        let ten = Balancer::with_seed(policy, targets(&[1; 10]), SEED);
        let eleven = Balancer::with_seed(policy, targets(&[1; 11]), SEED);
        let before = assignment(&ten, 10_000, |_| true);
        let after = assignment(&eleven, 10_000, |_| true);
        let total = moved(&before, &after);
        let to_new = 100.0 * after.iter().filter(|&&id| id == 10).count() as f64 / 10_000.0;
        println!(
            "{policy:?} 10 → 11 targets: {total:.2} % of keys moved, {to_new:.2} % to the new one"
        );
        assert!(
            (5.0..=15.0).contains(&total),
            "{policy:?}: {total:.2} % moved"
        );
        // Nearly every move is onto the new target; the ring moves nothing
        // else at all.
        let between_old = total - to_new;
        let limit = if policy == Policy::RingHash { 0.0 } else { 3.0 };
        assert!(
            between_old <= limit,
            "{policy:?}: {between_old:.2} % moved between old targets"
        );
    }
}

#[test]
fn removing_a_target_moves_mostly_its_keys() {
    for policy in [Policy::RingHash, Policy::Maglev] {
        let all = Balancer::with_seed(policy, targets(&[1; 10]), SEED);
        let mut rest = targets(&[1; 10]);
        rest.remove(3);
        let rest = Balancer::with_seed(policy, rest, SEED);
        let before = assignment(&all, 10_000, |_| true);
        let after = assignment(&rest, 10_000, |_| true);
        let total = moved(&before, &after);
        let others = before
            .iter()
            .zip(&after)
            .filter(|&(&b, &a)| b != 3 && a != b)
            .count() as f64
            / 100.0;
        println!(
            "{policy:?} 10 → 9 targets: {total:.2} % moved, {others:.2} % from the remaining ones"
        );
        assert!(
            (5.0..=15.0).contains(&total),
            "{policy:?}: {total:.2} % moved"
        );
        // Ring: only the removed target's keys. Maglev: a few percent more.
        let limit = if policy == Policy::RingHash { 0.0 } else { 3.0 };
        assert!(
            others <= limit,
            "{policy:?}: {others:.2} % of other keys moved"
        );
    }
}

#[test]
fn an_ineligible_target_moves_only_its_keys_and_spreads_them() {
    for policy in [Policy::RingHash, Policy::Maglev] {
        let b = Balancer::with_seed(policy, targets(&[1; 10]), SEED);
        let before = assignment(&b, 10_000, |_| true);
        let after = assignment(&b, 10_000, |id| id != 3);
        let mut landed = [0usize; 10];
        for (&was, &is) in before.iter().zip(&after) {
            if was == 3 {
                landed[is] += 1;
            } else {
                assert_eq!(was, is, "{policy:?}: a key left a healthy target");
            }
        }
        assert_eq!(landed[3], 0);
        // Not piled onto one neighbour: no remaining target takes more than
        // a third of them (an even spread gives each 1/9).
        let displaced: usize = landed.iter().sum();
        println!("{policy:?} target 3 out: its {displaced} keys went to {landed:?}");
        assert!(
            landed.iter().all(|&n| n * 3 <= displaced),
            "{policy:?}: {landed:?}"
        );
    }
}

#[test]
fn hashing_tables_are_sized_by_weight() {
    let ring = |w: &[u32]| {
        let t = targets(w);
        ring::Ring::new(t.iter().map(|t| (t.key.as_str(), t.weight))).len()
    };
    // Points per unit of weight, whatever the unit.
    assert_eq!(ring(&[1, 1]), 320);
    assert_eq!(ring(&[100, 100]), 320);
    assert_eq!(ring(&[1, 2, 7]), 1600);
    assert!(ring(&[10_000, 1, 1]) as u64 <= ring::MAX_POINTS + 3);

    // Maglev: equal weights get equal slot counts to within one.
    let t = targets(&[1; 10]);
    let counts = maglev::Table::new(t.iter().map(|t| (t.key.as_str(), t.weight))).counts(10);
    let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
    assert!(max - min <= 1, "{counts:?}");
    let t = targets(&[1, 2, 7]);
    let counts = maglev::Table::new(t.iter().map(|t| (t.key.as_str(), t.weight))).counts(3);
    assert_shares(
        "maglev slots 1:2:7",
        &percent(&counts),
        &[10.0, 20.0, 70.0],
        0.01,
    );
}

#[test]
fn concurrent_picks_keep_the_shares() {
    for policy in ALL {
        let b = Arc::new(Balancer::with_seed(policy, targets(&[1, 2, 7]), SEED));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    let mut counts = [0usize; 3];
                    for i in 0..25_000 {
                        counts[b.pick(Some(client(t * 25_000 + i)), |_| true).unwrap()] += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut counts = [0usize; 3];
        for t in threads {
            for (sum, c) in counts.iter_mut().zip(t.join().unwrap()) {
                *sum += c;
            }
        }
        let what = format!("{policy:?} 1:2:7 from 4 threads");
        if policy == Policy::RoundRobin {
            // Every ticket is used once: 10,000 whole periods.
            assert_eq!(counts, [10_000, 20_000, 70_000], "{what}");
        }
        assert_shares(&what, &percent(&counts), &[10.0, 20.0, 70.0], 2.0);
    }
}

#[test]
fn concurrent_requests_are_counted_exactly() {
    let b = Arc::new(Balancer::with_seed(
        Policy::LeastRequest,
        targets(&[1, 2, 7]),
        SEED,
    ));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let mut held = VecDeque::new();
                for _ in 0..25_000 {
                    let id = b.pick(None, |_| true).unwrap();
                    held.push_back(b.start_owned(id));
                    // Each thread keeps its last 16 requests open.
                    if held.len() > 16 {
                        held.pop_front();
                    }
                }
                held
            })
        })
        .collect();
    let held: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let open: u64 = (0..3).map(|id| b.in_flight(id)).sum();
    assert_eq!(open, 4 * 16);
    drop(held);
    assert!((0..3).all(|id| b.in_flight(id) == 0));
}

#[test]
fn balancers_are_shareable() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Balancer>();
    send_sync::<super::OwnedInFlight>();
}

#[test]
fn preferred_zone_keeps_to_the_local_zone_only_when_it_has_a_routable_endpoint() {
    use super::preferred_zone;
    assert_eq!(preferred_zone(Some("a"), [Some("b"), Some("a")]), Some("a"));
    assert_eq!(preferred_zone(Some("a"), [Some("b"), None]), None);
    assert_eq!(preferred_zone(None, [Some("a")]), None);
    assert_eq!(preferred_zone(Some("a"), std::iter::empty()), None);
}
