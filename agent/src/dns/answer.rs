//! What the node's DNS answers, computed without any I/O: an [`Index`] of
//! the services the node's DNS knows, built once per configuration or
//! health change, and [`Index::answer`], which turns one question into the
//! records of one response.
//!
//! Per question the work is a hash lookup and a walk over at most the
//! service's routable endpoints (usually stopping after the record limit);
//! nothing is recursive, nothing is fetched, and an answer never holds more
//! than the record limit of records in its answer section (and as many in
//! the additional section for SRV).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use switchyard::resource::{Endpoint, Health, Labels, ListenerTarget};
use switchyard::{label, pb};

use crate::health::Results;
use crate::state::NodeConfig;

/// How the index is built: the settings of the DNS interface that shape
/// answers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The domain answered for, lower case, fully qualified (`switchyard.`).
    pub domain: Name,
    /// TTL of every record, in seconds.
    pub ttl: u32,
    /// Most address (or SRV) records in one answer.
    pub record_limit: usize,
    /// This node's id: endpoints it checks itself take their health from
    /// its own checks.
    pub node_id: String,
    /// This node's labels: its `zone` is preferred (see
    /// [`switchyard_proxy::balance::preferred_zone`]).
    pub labels: Labels,
}

impl Settings {
    /// The node's zone, if it has one.
    fn zone(&self) -> Option<&str> {
        self.labels.get("zone").map(String::as_str)
    }
}

/// What one endpoint contributes to answers.
#[derive(Debug, Clone)]
pub struct Member {
    /// The endpoint as configured (for the outlier check).
    pub endpoint: Arc<Endpoint>,
    /// Its address when it is an IP address (host-name endpoints give SRV
    /// targets only).
    pub ip: Option<IpAddr>,
}

/// One rotation: the routable members of a name for one kind of record,
/// a smooth weighted order over them, and the name's counter.
#[derive(Debug)]
struct Rotation {
    /// Indexes into the entry's members, in endpoint-name order.
    members: Vec<usize>,
    /// One period of smooth weighted round robin, as positions into
    /// `members`: the first record of consecutive answers follows it.
    order: Vec<u32>,
    /// Answers given from this rotation; kept across rebuilds of the index
    /// (by name and kind), so that a health change does not send every
    /// client back to the first endpoint.
    counter: Arc<AtomicU64>,
}

/// Everything answered for one name (a service, or a subset of one).
#[derive(Debug)]
struct Entry {
    /// Whether the service has outlier detection (then the proxy's
    /// ejections are consulted per answer).
    outlier_detection: bool,
    /// Its routable endpoints.
    members: Vec<Member>,
    v4: Rotation,
    v6: Rotation,
    all: Rotation,
    /// The same for the members in the node's zone, when some are.
    local: Option<Box<Entry>>,
}

/// Counters by name and record kind, kept across rebuilds. Only index
/// builds take the lock.
#[derive(Debug, Default)]
pub struct Counters(Mutex<HashMap<String, Arc<AtomicU64>>>);

impl Counters {
    /// The counter of `key`, created at a random start (so that agents
    /// started together do not hand their first answers to one endpoint).
    fn get(&self, key: String) -> Arc<AtomicU64> {
        let mut map = self.0.lock().expect("dns counters");
        map.entry(key)
            .or_insert_with(|| Arc::new(AtomicU64::new(fastrand::u64(..u64::MAX / 2))))
            .clone()
    }

    /// Forgets the counters of names no longer answered.
    fn retain(&self, keep: &HashMap<String, ()>) {
        let mut map = self.0.lock().expect("dns counters");
        map.retain(|k, _| keep.contains_key(k));
    }
}

/// The answers of one configuration, ready for questions.
#[derive(Debug)]
pub struct Index {
    settings: Settings,
    domain: LowerName,
    /// The zone's SOA record (in every negative answer).
    soa: Record,
    /// Service name → its entry.
    services: HashMap<String, Entry>,
    /// `(service, label value)` → the entry of that subset.
    subsets: HashMap<(String, String), Entry>,
}

/// Which endpoint may be in an answer: healthy or unknown, never unhealthy
/// or draining. The health is this node's own check's when the node
/// checks the endpoint (it is fresher than the control plane's copy, and
/// still current while no control plane is reachable), except that a
/// draining endpoint stays draining: draining is an operator's decision.
fn routable(endpoint: &Endpoint, node_id: &str, local: &Results) -> bool {
    let mut health = endpoint.health;
    if health != Health::Draining
        && endpoint.node.as_deref() == Some(node_id)
        && let Some(observed) = local.get(&endpoint.name)
    {
        health = match observed.health {
            pb::Health::Healthy => Health::Healthy,
            pb::Health::Unhealthy => Health::Unhealthy,
            _ => health,
        };
    }
    matches!(health, Health::Healthy | Health::Unknown)
}

/// The services a node's DNS answers for: those its listeners reach
/// (directly or through routes), and those exported to the DNS of nodes
/// with its `labels` (`Service.dns.node_selector`); the node holds their
/// endpoints in full. A service the node holds only because it owns some
/// of its endpoints is left out: its endpoint set there is partial.
pub fn known_services<'c>(config: &'c NodeConfig, labels: &Labels) -> Vec<&'c str> {
    let mut names: Vec<&str> = config
        .services
        .values()
        .filter(|s| {
            s.dns
                .as_ref()
                .is_some_and(|selector| label::matches_all(selector, labels))
        })
        .map(|s| s.name.as_str())
        .collect();
    for l in config.listeners.values() {
        match &l.target {
            ListenerTarget::Service(s) => names.push(s),
            ListenerTarget::Route(r) => {
                for rule in config.routes.get(r).iter().flat_map(|r| &r.rules) {
                    for d in &rule.action.destinations {
                        names.push(&d.service);
                    }
                }
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    names.retain(|n| config.services.contains_key(*n));
    names
}

impl Index {
    /// Builds the answers of `config`, with this node's own health
    /// results.
    pub fn build(
        settings: Settings,
        config: &NodeConfig,
        local: &Results,
        counters: &Counters,
    ) -> Index {
        let domain = LowerName::new(&settings.domain);
        let soa = soa_record(&settings, config.revision);
        let mut by_service: HashMap<&str, Vec<Member>> = HashMap::new();
        let known = known_services(config, &settings.labels);
        for name in &known {
            by_service.insert(name, Vec::new());
        }
        for e in config.endpoints.values() {
            let Some(members) = by_service.get_mut(e.service.as_str()) else {
                continue;
            };
            if !routable(e, &settings.node_id, local) {
                continue;
            }
            members.push(Member {
                ip: e.address.parse().ok(),
                endpoint: e.clone(),
            });
        }
        let mut used = HashMap::new();
        let mut services = HashMap::new();
        let mut subsets = HashMap::new();
        for name in known {
            let members = by_service.remove(name).unwrap_or_default();
            let outlier_detection = config
                .services
                .get(name)
                .is_some_and(|s| s.outlier_detection.is_some());
            // Subsets: every label value of the service's routable
            // endpoints names the endpoints that carry it. Lowercased, as
            // questions are: DNS names are case-insensitive, so `Canary`
            // and `canary` are one subset.
            let mut values: Vec<String> = members
                .iter()
                .flat_map(|m| m.endpoint.labels.values().map(|v| v.to_ascii_lowercase()))
                .collect();
            values.sort_unstable();
            values.dedup();
            for value in values {
                // Only values that can be one DNS label.
                if Name::from_ascii(&value).map_or(true, |n| n.num_labels() != 1) {
                    continue;
                }
                let selected: Vec<Member> = members
                    .iter()
                    .filter(|m| {
                        m.endpoint
                            .labels
                            .values()
                            .any(|v| v.eq_ignore_ascii_case(&value))
                    })
                    .cloned()
                    .collect();
                let key = format!("{value}.{name}");
                let entry = Entry::new(
                    outlier_detection,
                    selected,
                    &key,
                    settings.zone(),
                    counters,
                    &mut used,
                );
                subsets.insert((name.to_owned(), value), entry);
            }
            let entry = Entry::new(
                outlier_detection,
                members,
                name,
                settings.zone(),
                counters,
                &mut used,
            );
            services.insert(name.to_owned(), entry);
        }
        counters.retain(&used);
        Index {
            settings,
            domain,
            soa,
            services,
            subsets,
        }
    }

    /// The answer to one question (`name` as asked, `qtype`), leaving out
    /// endpoints `ejected` says the proxy ejected. Names outside the
    /// domain are refused (this server never recurses).
    pub fn answer(
        &self,
        name: &Name,
        qtype: RecordType,
        ejected: impl Fn(&Endpoint) -> bool,
    ) -> Answer {
        let lower = LowerName::new(name);
        if !self.domain.zone_of(&lower) {
            return Answer::code(ResponseCode::Refused);
        }
        let depth = usize::from(lower.num_labels() - self.domain.num_labels());
        let labels: Vec<&[u8]> = lower.iter().take(depth).collect();
        match labels.as_slice() {
            [] => {
                if qtype == RecordType::SOA {
                    let mut a = Answer::code(ResponseCode::NoError);
                    a.answers.push(self.soa.clone());
                    a
                } else {
                    self.nodata()
                }
            }
            // Empty non-terminals: names exist below them.
            [b"service"] | [b"addr"] => self.nodata(),
            [hex, b"addr"] => self.addr(name, qtype, hex),
            [.., b"service"] => {
                let parts = &labels[..labels.len() - 1];
                let join = |ls: &[&[u8]]| -> String {
                    ls.iter()
                        .map(|l| String::from_utf8_lossy(l))
                        .collect::<Vec<_>>()
                        .join(".")
                };
                if let Some(entry) = self.services.get(&join(parts)) {
                    return self.records(entry, name, qtype, ejected);
                }
                if parts.len() >= 2 {
                    let key = (join(&parts[1..]), join(&parts[..1]));
                    if let Some(entry) = self.subsets.get(&key) {
                        return self.records(entry, name, qtype, ejected);
                    }
                    if self.services.contains_key(&key.0) {
                        // A known service, a value none of its routable
                        // endpoints carries: the name exists, empty.
                        return self.nodata();
                    }
                }
                self.nxdomain()
            }
            _ => self.nxdomain(),
        }
    }

    fn nodata(&self) -> Answer {
        let mut a = Answer::code(ResponseCode::NoError);
        a.soa = Some(self.soa.clone());
        a
    }

    fn nxdomain(&self) -> Answer {
        let mut a = Answer::code(ResponseCode::NXDomain);
        a.soa = Some(self.soa.clone());
        a
    }

    /// `<hex>.addr.<domain>`: the address the label spells (the SRV
    /// targets of IP endpoints), 8 hex digits for IPv4, 32 for IPv6.
    fn addr(&self, name: &Name, qtype: RecordType, hex: &[u8]) -> Answer {
        let Some(ip) = parse_hex_ip(hex) else {
            return self.nxdomain();
        };
        let ttl = self.settings.ttl;
        let record = match (ip, qtype) {
            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                Record::from_rdata(name.clone(), ttl, RData::A(A(v4)))
            }
            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6)))
            }
            _ => return self.nodata(),
        };
        let mut a = Answer::code(ResponseCode::NoError);
        a.answers.push(record);
        a
    }

    /// The records of a service (or subset) name.
    fn records(
        &self,
        entry: &Entry,
        name: &Name,
        qtype: RecordType,
        ejected: impl Fn(&Endpoint) -> bool,
    ) -> Answer {
        let ttl = self.settings.ttl;
        let limit = self.settings.record_limit;
        let eligible = |m: &Member| !(entry.outlier_detection && ejected(&m.endpoint));
        let mut a = Answer::code(ResponseCode::NoError);
        match qtype {
            RecordType::A | RecordType::AAAA | RecordType::ANY => {
                let rotations: &[&Rotation] = match qtype {
                    RecordType::A => &[&entry.v4],
                    RecordType::AAAA => &[&entry.v6],
                    _ => &[&entry.v4, &entry.v6],
                };
                for rotation in rotations {
                    let room = limit - a.answers.len();
                    let (entry, rotation) = self.side(entry, rotation, &eligible);
                    for m in entry.pick(rotation, room, &eligible) {
                        if let Some(ip) = m.ip {
                            a.answers
                                .push(Record::from_rdata(name.clone(), ttl, ip_rdata(ip)));
                        }
                    }
                }
            }
            RecordType::SRV => {
                let (entry, rotation) = self.side(entry, &entry.all, &eligible);
                for m in entry.pick(rotation, limit, &eligible) {
                    let weight = u16::try_from(m.endpoint.weight).unwrap_or(u16::MAX);
                    let target = match m.ip {
                        Some(ip) => {
                            let target = self.addr_name(ip);
                            a.additionals.push(Record::from_rdata(
                                target.clone(),
                                ttl,
                                ip_rdata(ip),
                            ));
                            target
                        }
                        // A host-name endpoint: its own name is the target,
                        // resolved elsewhere.
                        None => match Name::from_ascii(&m.endpoint.address) {
                            Ok(mut n) => {
                                n.set_fqdn(true);
                                n
                            }
                            Err(_) => continue,
                        },
                    };
                    let srv = SRV::new(1, weight, m.endpoint.port, target);
                    a.answers
                        .push(Record::from_rdata(name.clone(), ttl, RData::SRV(srv)));
                }
            }
            _ => {}
        }
        if a.answers.is_empty() {
            // A known name without records of this type, or without a
            // routable endpoint: NOERROR, empty, with the SOA (RFC 2308),
            // even when the proxy's panic threshold would still route to
            // unhealthy endpoints.
            return self.nodata();
        }
        a
    }

    /// Where to answer from: the entry of the node's zone when one of its
    /// members of this kind is eligible, else the whole entry (the rule
    /// the proxy's balancer follows too).
    fn side<'e>(
        &self,
        entry: &'e Entry,
        rotation: &'e Rotation,
        eligible: &dyn Fn(&Member) -> bool,
    ) -> (&'e Entry, &'e Rotation) {
        let Some(local) = &entry.local else {
            return (entry, rotation);
        };
        let zones = rotation
            .members
            .iter()
            .map(|&i| &entry.members[i])
            .filter(|m| eligible(m))
            .map(|m| m.endpoint.zone.as_deref());
        if switchyard_proxy::balance::preferred_zone(self.settings.zone(), zones).is_none() {
            return (entry, rotation);
        }
        // The same kind of rotation, over the zone's members.
        let same = if std::ptr::eq(rotation, &entry.v4) {
            &local.v4
        } else if std::ptr::eq(rotation, &entry.v6) {
            &local.v6
        } else {
            &local.all
        };
        (local, same)
    }

    /// `<hex>.addr.<domain>` for `ip`.
    fn addr_name(&self, ip: IpAddr) -> Name {
        let hex = match ip {
            IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
            IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
        };
        let relative = Name::from_labels([hex.as_bytes(), b"addr"]).expect("two short labels");
        relative
            .append_domain(&self.settings.domain)
            .unwrap_or_else(|_| self.settings.domain.clone())
    }
}

impl Entry {
    fn new(
        outlier_detection: bool,
        members: Vec<Member>,
        key: &str,
        zone: Option<&str>,
        counters: &Counters,
        used: &mut HashMap<String, ()>,
    ) -> Entry {
        let local = zone.and_then(|zone| {
            let mine: Vec<Member> = members
                .iter()
                .filter(|m| m.endpoint.zone.as_deref() == Some(zone))
                .cloned()
                .collect();
            (!mine.is_empty()).then(|| {
                let key = format!("zone:{zone}/{key}");
                Box::new(Entry::new(
                    outlier_detection,
                    mine,
                    &key,
                    None,
                    counters,
                    used,
                ))
            })
        });
        let mut rotation = |kind: &str, keep: &dyn Fn(&Member) -> bool| {
            let picked: Vec<usize> = (0..members.len()).filter(|&i| keep(&members[i])).collect();
            let weights: Vec<u32> = picked.iter().map(|&i| members[i].endpoint.weight).collect();
            let name = format!("{kind}/{key}");
            used.insert(name.clone(), ());
            Rotation {
                order: switchyard_proxy::balance::smooth_order(&weights),
                members: picked,
                counter: counters.get(name),
            }
        };
        let v4 = rotation("a", &|m| m.ip.is_some_and(|ip| ip.is_ipv4()));
        let v6 = rotation("aaaa", &|m| m.ip.is_some_and(|ip| ip.is_ipv6()));
        let all = rotation("srv", &|_| true);
        Entry {
            outlier_detection,
            members,
            v4,
            v6,
            all,
            local,
        }
    }

    /// Up to `limit` members of `rotation` that are `eligible`, starting at
    /// the next slot of its weighted order and going on in name order, so
    /// that consecutive answers start at consecutive endpoints (weighted).
    fn pick<'a>(
        &'a self,
        rotation: &Rotation,
        limit: usize,
        eligible: &dyn Fn(&Member) -> bool,
    ) -> Vec<&'a Member> {
        let n = rotation.members.len();
        if n == 0 || limit == 0 {
            return Vec::new();
        }
        // Relaxed: the counter only hands out distinct tickets.
        let ticket = rotation.counter.fetch_add(1, Ordering::Relaxed);
        let start = rotation.order[(ticket % rotation.order.len() as u64) as usize] as usize;
        (0..n)
            .map(|k| &self.members[rotation.members[(start + k) % n]])
            .filter(|m| eligible(m))
            .take(limit)
            .collect()
    }
}

/// The records of one response, and its code.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The response code.
    pub code: ResponseCode,
    /// The answer section.
    pub answers: Vec<Record>,
    /// The SOA in the authority section (negative answers).
    pub soa: Option<Record>,
    /// The additional section (addresses of SRV targets).
    pub additionals: Vec<Record>,
}

impl Answer {
    /// An answer with `code` and no records.
    pub fn code(code: ResponseCode) -> Answer {
        Answer {
            code,
            answers: Vec::new(),
            soa: None,
            additionals: Vec::new(),
        }
    }
}

fn ip_rdata(ip: IpAddr) -> RData {
    match ip {
        IpAddr::V4(v4) => RData::A(A(v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
    }
}

/// The address an `addr` label spells: 8 hex digits (IPv4) or 32 (IPv6).
fn parse_hex_ip(hex: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(hex).ok()?;
    if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match text.len() {
        8 => u32::from_str_radix(text, 16)
            .ok()
            .map(|v| IpAddr::V4(v.into())),
        32 => u128::from_str_radix(text, 16)
            .ok()
            .map(|v| IpAddr::V6(v.into())),
        _ => None,
    }
}

/// The zone's SOA: `ns.<domain>` as primary, `hostmaster.<domain>` as
/// contact, the configuration's revision as serial, and the TTL as the
/// negative-caching time, so that a name that appears is not hidden by a
/// cached NXDOMAIN for longer than an answer would be cached.
fn soa_record(settings: &Settings, revision: u64) -> Record {
    let domain = &settings.domain;
    let under = |label: &str| {
        Name::from_ascii(label)
            .and_then(|n| n.append_domain(domain))
            .unwrap_or_else(|_| domain.clone())
    };
    let soa = SOA::new(
        under("ns"),
        under("hostmaster"),
        // Serials are 32 bits and wrap (RFC 1982).
        revision as u32,
        3600,
        600,
        86400,
        settings.ttl,
    );
    Record::from_rdata(domain.clone(), settings.ttl, RData::SOA(soa))
}

/// Whether `value` is usable as the domain: one or more labels, fully
/// qualified once a final dot is added.
pub fn parse_domain(value: &str) -> Result<Name, String> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed == "." {
        return Err("must name a domain, such as `switchyard.`".into());
    }
    let mut name = Name::from_ascii(trimmed).map_err(|e| format!("{trimmed:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name.to_lowercase())
}
