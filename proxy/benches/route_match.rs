//! Route-match time per request against the number of host rules: the
//! router's host index ([`Router::find`]) beside a scan of every rule in
//! order (the matcher before the index), for routes of 10, 1,000, 10,000 and
//! 100,000 virtual hosts, and the time to compile each route.
//!
//! Each route holds `h<i>.example.com` for every `i` (but the last two at
//! the 100,000-rule limit), then a wildcard `*.example.com`, then a
//! catch-all. The requests name hosts drawn at
//! random (fixed seed) so that lookups miss the CPU caches as a busy
//! gateway's do: nine in ten an exact host, one in twenty a subdomain the
//! wildcard takes, one in twenty a host nothing names but the catch-all.
//!
//! Run: `cargo bench -p switchyard-proxy --bench route_match`
//! (`-- 10 1000` for other sizes). Prints one line per size; the figures
//! are medians of five timed runs of at least 0.2 s each.

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard::resource::Route;
use switchyard_proxy::router::{RequestView, Router};

fn rule(host: String, service: &str) -> pb::RouteRule {
    pb::RouteRule {
        matches: if host.is_empty() {
            vec![]
        } else {
            vec![pb::RouteMatch {
                host,
                ..Default::default()
            }]
        },
        action: Some(pb::RouteAction {
            destinations: vec![pb::WeightedDestination {
                service: service.into(),
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

fn route(hosts: usize) -> Route {
    // At the limit, the wildcard and the catch-all take two hosts' places.
    let exact = hosts.min(switchyard::validate::MAX_RULES - 2);
    let mut rules: Vec<_> = (0..exact)
        .map(|i| rule(format!("h{i}.example.com"), "web"))
        .collect();
    rules.push(rule("*.example.com".into(), "wild"));
    rules.push(rule(String::new(), "fallback"));
    let pb = pb::Route {
        name: "bench".into(),
        rules,
        ..Default::default()
    };
    Route::from_pb(&pb, "route").expect("a valid route")
}

fn requests(hosts: usize, rng: &mut fastrand::Rng) -> Vec<http::request::Parts> {
    (0..4096)
        .map(|_| {
            let host = match rng.u32(0..20) {
                0 => format!("x{}.example.com", rng.usize(0..hosts)),
                1 => format!("h{}.example.org", rng.usize(0..hosts)),
                _ => format!("h{}.example.com", rng.usize(0..hosts)),
            };
            http::Request::get("/index.html")
                .header("host", host)
                .header("user-agent", "bench")
                .body(())
                .unwrap()
                .into_parts()
                .0
        })
        .collect()
}

/// Nanoseconds per call of `f` over `reqs`: the median of five runs, each
/// going round `reqs` until at least 0.2 s have passed.
fn per_request(reqs: &[http::request::Parts], f: impl Fn(&RequestView<'_>) -> usize) -> f64 {
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            let mut calls = 0u64;
            while started.elapsed() < Duration::from_millis(200) {
                for parts in reqs {
                    black_box(f(&RequestView::new(black_box(parts))));
                }
                calls += reqs.len() as u64;
            }
            started.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; test runners that build every target
    // list this one (`--list`) or run it bare, and must not wait for it.
    if !args.iter().any(|a| a == "--bench") {
        if !args.iter().any(|a| a == "--list") {
            println!("route_match is a benchmark: run it with cargo bench");
        }
        return;
    }
    let sizes: Vec<usize> = args
        .iter()
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.parse().expect("sizes are numbers of hosts"))
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 1_000, 10_000, 100_000]
    } else {
        sizes
    };
    let mut rng = fastrand::Rng::with_seed(22);
    println!(
        "{:>8} | {:>10} | {:>13} | {:>13} | {:>8}",
        "hosts", "compile ms", "index ns/req", "scan ns/req", "scan/idx"
    );
    for hosts in sizes {
        let route = route(hosts);
        let started = Instant::now();
        let router = Router::new(&route);
        let compile = started.elapsed();
        let reqs = requests(hosts, &mut rng);
        // Both must agree before either is timed.
        for parts in &reqs {
            let view = RequestView::new(parts);
            let indexed = router.find(&view).map(|r| r as *const _);
            let scanned = router.rules().iter().find(|r| r.matches(&view));
            assert_eq!(indexed, scanned.map(|r| r as *const _));
        }
        let index = per_request(&reqs, |view| {
            router.find(view).map_or(0, |r| r.action.destinations.len())
        });
        let scan = per_request(&reqs, |view| {
            router
                .rules()
                .iter()
                .find(|r| r.matches(view))
                .map_or(0, |r| r.action.destinations.len())
        });
        println!(
            "{hosts:>8} | {:>10.1} | {index:>13.1} | {scan:>13.1} | {:>8.0}",
            compile.as_secs_f64() * 1e3,
            scan / index
        );
    }
}
