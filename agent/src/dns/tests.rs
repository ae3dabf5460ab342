//! The answers of the DNS interface, without sockets: which endpoints, in
//! which order, with which code; and no name, however odd, makes it fail.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::SystemTime;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use switchyard::pb;

use super::answer::{Answer, Counters, Index, Settings, parse_domain};
use crate::health::{Observed, Results};
use crate::state::{NodeConfig, Store};
use crate::testing::{listener, route, service, snapshot};

fn settings(limit: usize) -> Settings {
    Settings {
        domain: parse_domain("switchyard").unwrap(),
        ttl: 2,
        record_limit: limit,
        node_id: "here".into(),
        labels: Default::default(),
    }
}

/// An endpoint of `service` at `address:port`, with weight, health,
/// owner and labels.
fn ep(
    name: &str,
    service: &str,
    address: &str,
    port: u32,
    weight: u32,
    health: pb::Health,
    labels: &[(&str, &str)],
) -> pb::Resource {
    pb::Resource {
        kind: Some(pb::resource::Kind::Endpoint(pb::Endpoint {
            name: name.into(),
            service: service.into(),
            address: address.into(),
            port,
            weight,
            health: health as i32,
            node: "owner".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Service `api` (behind route and listener `front`) with `endpoints`,
/// plus service `other` that no listener reaches.
fn config(endpoints: Vec<pb::Resource>) -> NodeConfig {
    let mut resources = vec![
        service("api", 1),
        service("other", 1),
        route("front", "api", 1),
        listener("front", "127.0.0.1", 8080, "front", 1),
    ];
    resources.extend(endpoints);
    let mut store = Store::new();
    let config = store.apply_snapshot(snapshot(1, resources)).unwrap();
    NodeConfig::clone(&config)
}

fn index(config: &NodeConfig, limit: usize) -> Index {
    Index::build(
        settings(limit),
        config,
        &Results::new(),
        &Counters::default(),
    )
}

fn ask(index: &Index, name: &str, qtype: RecordType) -> Answer {
    index.answer(&Name::from_str(name).unwrap(), qtype, |_| false)
}

fn addresses(a: &Answer) -> Vec<String> {
    a.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn three() -> Vec<pb::Resource> {
    (1..=3)
        .map(|i| {
            let name = format!("api-{i}");
            ep(
                &name,
                "api",
                &format!("127.0.0.{i}"),
                9000 + i,
                1,
                pb::Health::Healthy,
                &[],
            )
        })
        .collect()
}

#[test]
fn consecutive_answers_start_at_consecutive_endpoints() {
    let index = index(&config(three()), 8);
    let firsts: Vec<String> = (0..6)
        .map(|_| addresses(&ask(&index, "api.service.switchyard.", RecordType::A))[0].clone())
        .collect();
    // Whatever the start, the rotation goes 1, 2, 3, 1, 2, 3.
    for pair in firsts.windows(2) {
        let a: u8 = pair[0].rsplit('.').next().unwrap().parse().unwrap();
        let b: u8 = pair[1].rsplit('.').next().unwrap().parse().unwrap();
        assert_eq!(b, a % 3 + 1, "{firsts:?}");
    }
    let whole = addresses(&ask(&index, "api.service.switchyard.", RecordType::A));
    assert_eq!(whole.len(), 3, "every endpoint in each answer: {whole:?}");
}

#[test]
fn weights_decide_the_first_record() {
    let endpoints = vec![
        ep("api-1", "api", "127.0.0.1", 1, 3, pb::Health::Healthy, &[]),
        ep("api-2", "api", "127.0.0.2", 1, 1, pb::Health::Healthy, &[]),
    ];
    let index = index(&config(endpoints), 8);
    let mut first = BTreeMap::<String, usize>::new();
    for _ in 0..400 {
        let a = addresses(&ask(&index, "api.service.switchyard.", RecordType::A));
        *first.entry(a[0].clone()).or_default() += 1;
    }
    assert_eq!(first["127.0.0.1"], 300, "{first:?}");
    assert_eq!(first["127.0.0.2"], 100, "{first:?}");
}

#[test]
fn only_routable_endpoints_and_at_most_the_limit() {
    let mut endpoints: Vec<pb::Resource> = (1..=20)
        .map(|i| {
            let name = format!("api-{i}");
            ep(
                &name,
                "api",
                &format!("127.0.1.{i}"),
                1,
                1,
                pb::Health::Unknown,
                &[],
            )
        })
        .collect();
    endpoints.push(ep(
        "sick",
        "api",
        "127.0.0.100",
        1,
        1,
        pb::Health::Unhealthy,
        &[],
    ));
    endpoints.push(ep(
        "leaving",
        "api",
        "127.0.0.101",
        1,
        1,
        pb::Health::Draining,
        &[],
    ));
    let index = index(&config(endpoints), 5);
    for _ in 0..30 {
        let a = addresses(&ask(&index, "api.service.switchyard.", RecordType::A));
        assert_eq!(a.len(), 5);
        assert!(a.iter().all(|ip| ip.starts_with("127.0.1.")), "{a:?}");
    }
}

#[test]
fn this_nodes_own_checks_win_except_over_draining() {
    let mut endpoints = three();
    endpoints.push(ep(
        "api-4",
        "api",
        "127.0.0.4",
        9004,
        1,
        pb::Health::Draining,
        &[],
    ));
    for e in &mut endpoints {
        if let Some(pb::resource::Kind::Endpoint(e)) = &mut e.kind {
            e.node = "here".into();
        }
    }
    let config = config(endpoints);
    let observed = |health| Observed {
        health,
        reason: String::new(),
        at: SystemTime::now(),
    };
    let local = Results::from([
        ("api-1".to_string(), observed(pb::Health::Unhealthy)),
        ("api-2".to_string(), observed(pb::Health::Healthy)),
        ("api-4".to_string(), observed(pb::Health::Healthy)),
    ]);
    let index = Index::build(settings(8), &config, &local, &Counters::default());
    let a = addresses(&ask(&index, "api.service.switchyard.", RecordType::A));
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(!a.contains(&"127.0.0.1".to_string()));
    assert!(!a.contains(&"127.0.0.4".to_string()), "draining stays out");
}

#[test]
fn srv_carries_ports_and_weights_with_addresses_in_additional() {
    let endpoints = vec![
        ep(
            "api-1",
            "api",
            "127.0.0.1",
            9001,
            5,
            pb::Health::Healthy,
            &[],
        ),
        ep("api-6", "api", "::1", 9006, 10000, pb::Health::Healthy, &[]),
    ];
    let index = index(&config(endpoints), 8);
    let a = ask(&index, "api.service.switchyard.", RecordType::SRV);
    let mut srv: Vec<(u16, u16, String)> = a
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.port, s.weight, s.target.to_string()),
            other => panic!("{other:?}"),
        })
        .collect();
    srv.sort();
    assert_eq!(
        srv,
        [
            (9001, 5, "7f000001.addr.switchyard.".to_string()),
            (
                9006,
                10000,
                "00000000000000000000000000000001.addr.switchyard.".to_string()
            ),
        ]
    );
    assert_eq!(a.additionals.len(), 2);
    // The targets resolve.
    let v4 = ask(&index, "7f000001.addr.switchyard.", RecordType::A);
    assert_eq!(addresses(&v4), ["127.0.0.1"]);
    let v6 = ask(
        &index,
        "00000000000000000000000000000001.addr.switchyard.",
        RecordType::AAAA,
    );
    assert_eq!(addresses(&v6), ["::1"]);
    // AAAA of the service: the IPv6 endpoint only.
    let aaaa = ask(&index, "api.service.switchyard.", RecordType::AAAA);
    assert_eq!(addresses(&aaaa), ["::1"]);
}

#[test]
fn codes_nxdomain_nodata_refused() {
    let index = index(&config(three()), 8);
    let nx = ask(&index, "nope.service.switchyard.", RecordType::A);
    assert_eq!(nx.code, ResponseCode::NXDomain);
    assert!(nx.soa.is_some());
    // Held, but reached by no listener: not answered.
    let other = ask(&index, "other.service.switchyard.", RecordType::A);
    assert_eq!(other.code, ResponseCode::NXDomain);
    let out = ask(&index, "example.com.", RecordType::A);
    assert_eq!(out.code, ResponseCode::Refused);
    assert!(out.soa.is_none() && out.answers.is_empty());
    let txt = ask(&index, "api.service.switchyard.", RecordType::TXT);
    assert_eq!(txt.code, ResponseCode::NoError);
    assert!(txt.answers.is_empty() && txt.soa.is_some());
    let soa = ask(&index, "switchyard.", RecordType::SOA);
    assert_eq!(soa.answers.len(), 1);

    let sick = vec![ep(
        "api-1",
        "api",
        "127.0.0.1",
        1,
        1,
        pb::Health::Unhealthy,
        &[],
    )];
    let index = super::answer::Index::build(
        settings(8),
        &config(sick),
        &Results::new(),
        &Counters::default(),
    );
    let empty = ask(&index, "api.service.switchyard.", RecordType::A);
    assert_eq!(empty.code, ResponseCode::NoError);
    assert!(empty.answers.is_empty() && empty.soa.is_some());
}

#[test]
fn names_are_case_insensitive() {
    let index = index(&config(three()), 8);
    let a = ask(&index, "API.Service.SwitchYard.", RecordType::A);
    assert_eq!(addresses(&a).len(), 3);
}

#[test]
fn label_values_select_subsets() {
    let endpoints = vec![
        ep(
            "api-1",
            "api",
            "127.0.0.1",
            1,
            1,
            pb::Health::Healthy,
            &[("version", "v1")],
        ),
        ep(
            "api-2",
            "api",
            "127.0.0.2",
            1,
            1,
            pb::Health::Healthy,
            &[("version", "v2")],
        ),
        // Label values keep their case; DNS names do not.
        ep(
            "api-3",
            "api",
            "127.0.0.3",
            1,
            1,
            pb::Health::Healthy,
            &[("version", "V2")],
        ),
    ];
    let index = index(&config(endpoints), 8);
    let mut v2 = addresses(&ask(&index, "v2.api.service.switchyard.", RecordType::A));
    v2.sort();
    assert_eq!(v2, ["127.0.0.2", "127.0.0.3"]);
    let v3 = ask(&index, "v3.api.service.switchyard.", RecordType::A);
    assert_eq!(v3.code, ResponseCode::NoError);
    assert!(v3.answers.is_empty());
}

#[test]
fn ejected_endpoints_are_left_out_when_the_service_detects_outliers() {
    let mut resources = three();
    let mut store = Store::new();
    let mut api = service("api", 1);
    if let Some(pb::resource::Kind::Service(s)) = &mut api.kind {
        s.outlier_detection = Some(pb::OutlierDetection {
            consecutive_5xx: 5,
            ..Default::default()
        });
    }
    resources.extend([
        api,
        route("front", "api", 1),
        listener("front", "127.0.0.1", 8080, "front", 1),
    ]);
    let config = store.apply_snapshot(snapshot(1, resources)).unwrap();
    let index = Index::build(settings(8), &config, &Results::new(), &Counters::default());
    for _ in 0..6 {
        let a = index.answer(
            &Name::from_str("api.service.switchyard.").unwrap(),
            RecordType::A,
            |e| e.name == "api-2",
        );
        let ips = addresses(&a);
        assert_eq!(ips.len(), 2);
        assert!(!ips.contains(&"127.0.0.2".to_string()));
    }
}

/// Property: any name (random labels, in and out of the domain, any
/// type) gets an answer within the limit, and never a panic.
#[test]
fn any_name_gets_a_bounded_answer() {
    // A limit below the service's three endpoints, so that it binds.
    let index = index(&config(three()), 2);
    let mut rng = fastrand::Rng::with_seed(7);
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-_.*\\ \x00\xff";
    let suffixes = [
        "service.switchyard.",
        "addr.switchyard.",
        "switchyard.",
        "",
        "com.",
    ];
    for _ in 0..5000 {
        let labels = rng.usize(0..5);
        let mut raw: Vec<Vec<u8>> = (0..labels)
            .map(|_| {
                let len = rng.usize(1..20);
                (0..len)
                    .map(|_| alphabet[rng.usize(..alphabet.len())])
                    .collect()
            })
            .collect();
        if rng.bool() {
            raw.insert(0, b"api".to_vec());
        }
        let suffix = suffixes[rng.usize(..suffixes.len())];
        let mut name = match Name::from_labels(raw.iter().map(|l| l.as_slice())) {
            Ok(n) => n,
            Err(_) => continue,
        };
        if !suffix.is_empty() {
            match name.clone().append_domain(&Name::from_str(suffix).unwrap()) {
                Ok(n) => name = n,
                Err(_) => continue,
            }
        }
        name.set_fqdn(true);
        let qtype = [
            RecordType::A,
            RecordType::AAAA,
            RecordType::SRV,
            RecordType::ANY,
            RecordType::SOA,
            RecordType::TXT,
        ][rng.usize(..6)];
        let a = index.answer(&name, qtype, |_| false);
        assert!(a.answers.len() <= 2, "{name} {qtype}: {}", a.answers.len());
        assert!(a.additionals.len() <= 2);
    }
}

#[test]
fn domains_parse_and_refuse_nonsense() {
    assert_eq!(parse_domain("Consul").unwrap().to_string(), "consul.");
    assert_eq!(
        parse_domain("mesh.example.").unwrap().to_string(),
        "mesh.example."
    );
    assert!(parse_domain("").is_err());
    assert!(parse_domain(".").is_err());
    assert!(parse_domain(&"a".repeat(70)).is_err());
}

#[test]
fn the_nodes_zone_is_preferred_while_it_has_a_routable_endpoint() {
    let zoned = |name: &str, ip: &str, zone: &str, health| {
        let mut e = ep(name, "api", ip, 1, 1, health, &[]);
        if let Some(pb::resource::Kind::Endpoint(e)) = &mut e.kind {
            e.zone = zone.into();
        }
        e
    };
    let in_a = Settings {
        labels: [("zone".to_string(), "a".to_string())].into(),
        ..settings(8)
    };
    let both = config(vec![
        zoned("api-1", "127.0.0.1", "a", pb::Health::Healthy),
        zoned("api-2", "127.0.0.2", "b", pb::Health::Healthy),
        zoned("api-3", "127.0.0.3", "a", pb::Health::Healthy),
    ]);
    let index = Index::build(in_a.clone(), &both, &Results::new(), &Counters::default());
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..10 {
        for ip in addresses(&ask(&index, "api.service.switchyard.", RecordType::A)) {
            *seen.entry(ip).or_default() += 1;
        }
    }
    assert_eq!(seen.keys().collect::<Vec<_>>(), ["127.0.0.1", "127.0.0.3"]);
    // SRV follows the same rule.
    let a = index.answer(
        &Name::from_str("api.service.switchyard.").unwrap(),
        RecordType::SRV,
        |_| false,
    );
    assert_eq!(a.answers.len(), 2);
    // Down, the zone's endpoints give way to the others.
    let a_down = config(vec![
        zoned("api-1", "127.0.0.1", "a", pb::Health::Unhealthy),
        zoned("api-2", "127.0.0.2", "b", pb::Health::Healthy),
    ]);
    let index = Index::build(in_a, &a_down, &Results::new(), &Counters::default());
    assert_eq!(
        addresses(&ask(&index, "api.service.switchyard.", RecordType::A)),
        ["127.0.0.2"]
    );
    // Without a zone label: every endpoint.
    let index = Index::build(settings(8), &both, &Results::new(), &Counters::default());
    assert_eq!(
        addresses(&ask(&index, "api.service.switchyard.", RecordType::A)).len(),
        3
    );
}
