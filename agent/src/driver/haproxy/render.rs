//! Renders a node configuration as `haproxy.cfg` text, together with the
//! model of every backend's servers that the runtime API can change without
//! a reload (see [`Rendered`]).
//!
//! Layout of the rendered file, and why:
//! - one `frontend` per listener (`f.<listener>`), `mode http` or `mode tcp`;
//! - HTTP: each route rule becomes one backend per destination
//!   (`r.<route>.<rule>.<destination>`), holding the destination service's
//!   endpoints (filtered by the destination's label subset). A backend per
//!   rule and destination is what lets per-rule settings (timeout, retries,
//!   header edits, prefix rewrite) live where HAProxy keeps them: in the
//!   backend. A weighted split draws one random number per request and rule
//!   (`http-request set-var(txn.sy_r<i>) rand(<sum of weights>)`) and each
//!   destination's `use_backend` line takes its share of that range, so the
//!   split is exactly the configured ratio and independent of the
//!   endpoints' own weights, as the built-in proxy does it;
//! - TCP: one backend per listener (`l.<listener>`) with the service's
//!   endpoints;
//! - requests no rule matches go to `sy.no-route`, which answers 404.
//!
//! HAProxy's own health checks are off: the agent's checks are the one
//! source of truth (their results reach every driver through the
//! endpoints' health in the node configuration, and the control plane and
//! DNS see the same verdict). Two checkers could disagree, and a server
//! HAProxy marked down on its own would serve differently from what
//! `yardctl` shows. Health therefore becomes each server's admin state
//! (`Unhealthy` → maintenance, `Draining` → drain), which the runtime API
//! changes without a reload.
//!
//! What HAProxy cannot express is refused with an [`Invalid`] naming the
//! field, never dropped; what it expresses approximately is listed on
//! [`APPROXIMATIONS`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use switchyard::node::NodeConfig;
use switchyard::resource::{
    Balance, Destination, Endpoint, HashOn, HeaderRewrite, Health, HostMatch, ListenerTarget,
    PathMatch, Protocol, RetryOn, RetryPolicy, Route, RouteAction, RouteMatch, RouteRule, Service,
    StringMatch,
};
use switchyard::validate::{Invalid, Violations};

/// How the rendered configuration departs from the built-in proxy's
/// behaviour, as `(feature, what HAProxy does)`; the README's table.
pub const APPROXIMATIONS: &[(&str, &str)] = &[
    (
        "least_request",
        "`balance leastconn`: fewest connections over all servers, not the best of two random picks on requests in flight",
    ),
    ("random", "`balance random(1)`: one weighted random draw"),
    (
        "ring_hash, maglev",
        "`hash-type consistent` with `balance hdr(..)`, `balance hash req.cook(..)` or `balance source`: HAProxy's ring; Maglev's table is not reproduced, only its stickiness",
    ),
    (
        "circuit_breaker.max_connections / max_requests",
        "the lower of the two, divided evenly over the servers of each backend, as each server's `maxconn`; a service reached from several rules gets it once per rule",
    ),
    (
        "circuit_breaker.max_pending_requests",
        "likewise divided, as each server's `maxqueue`",
    ),
    (
        "retry.per_try_timeout, timeout",
        "`timeout server`, an inactivity timeout per try; both set is refused",
    ),
    (
        "retry_on 5xx",
        "`retry-on 500 501 502 503 504` (HAProxy retries no other 5xx)",
    ),
    ("retry_on reset", "`retry-on empty-response junk-response`"),
    (
        "retry budget, backoff",
        "not enforced: only their defaults are accepted",
    ),
    (
        "panic_threshold_percent",
        "applied by the renderer: below it, unhealthy servers are left in service",
    ),
    (
        "zone preference",
        "not applied: every zone is balanced alike",
    ),
    (
        "no retry policy",
        "HAProxy's own connection retries (`retries 3` on connect failures)",
    ),
];

/// A server's admin state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Takes traffic.
    Ready,
    /// Finishes what it has, takes no new traffic.
    Drain,
    /// Takes nothing.
    Maint,
}

impl State {
    /// The runtime API's word for it (`set server … state <word>`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ready => "ready",
            State::Drain => "drain",
            State::Maint => "maint",
        }
    }
}

/// One server of a backend, as rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Address (IP or host name).
    pub address: String,
    /// Port.
    pub port: u16,
    /// HAProxy weight (0..=256), scaled from the endpoint's.
    pub weight: u32,
    /// Admin state from the endpoint's health.
    pub state: State,
    /// Per-server connection limit (circuit breaking), if any.
    pub maxconn: Option<u32>,
    /// Per-server queue limit, if any.
    pub maxqueue: Option<u32>,
    /// Keywords fixed by the backend (`proto h2`), repeated on `add server`.
    pub fixed: String,
}

impl Server {
    /// The arguments after `server <name>` (file) or `add server b/s`
    /// (runtime API).
    pub fn arguments(&self) -> String {
        let mut out = format!("{}:{}", self.address, self.port);
        let _ = write!(out, " weight {}", self.weight_now());
        if let Some(n) = self.maxconn {
            let _ = write!(out, " maxconn {n}");
        }
        if let Some(n) = self.maxqueue {
            let _ = write!(out, " maxqueue {n}");
        }
        if !self.fixed.is_empty() {
            out.push(' ');
            out.push_str(&self.fixed);
        }
        if self.state == State::Maint {
            out.push_str(" disabled");
        }
        out
    }

    /// The weight written in the file: a draining server is written with
    /// weight 0, the file's way of taking no new traffic (there is no
    /// `drain` keyword).
    fn weight_now(&self) -> u32 {
        match self.state {
            State::Drain => 0,
            _ => self.weight,
        }
    }
}

/// A backend's servers, by name (the endpoint's name).
pub type Servers = BTreeMap<String, Server>;

/// A rendered configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rendered {
    /// The whole `haproxy.cfg`.
    pub text: String,
    /// The file without its `server` lines: two renderings with the same
    /// skeleton differ only in servers, which the runtime API can change.
    pub skeleton: String,
    /// Every backend's servers, by backend name.
    pub backends: BTreeMap<String, Servers>,
}

/// Where the rendered configuration puts HAProxy's sockets.
#[derive(Debug, Clone)]
pub struct Sockets {
    /// The worker's stats socket (`level admin`, `expose-fd listeners`).
    pub stats: String,
}

/// Upper bound of HAProxy's server weight.
const MAX_HAPROXY_WEIGHT: u32 = 256;
/// What an absent timeout becomes: HAProxy warns without one.
const NO_TIMEOUT: Duration = Duration::from_secs(3600);
/// Defaults of the retry policy HAProxy cannot express (accepted as
/// "not enforced"; other values are refused).
const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
const DEFAULT_BACKOFF_MAX: Duration = Duration::from_millis(250);
const DEFAULT_BUDGET: u8 = 20;
/// Statuses HAProxy's `retry-on` knows.
const RETRY_STATUSES: [u16; 10] = [401, 403, 404, 408, 425, 500, 501, 502, 503, 504];

/// Renders `config`, or says every field HAProxy cannot express.
pub fn render(config: &NodeConfig, sockets: &Sockets) -> Result<Rendered, Invalid> {
    let mut v = Violations::new();
    let mut out = Rendered::default();
    let mut text = String::new();
    let mut skeleton = String::new();
    let mut line = |text_only: bool, s: &str| {
        text.push_str(s);
        text.push('\n');
        if !text_only {
            skeleton.push_str(s);
            skeleton.push('\n');
        }
    };

    line(
        false,
        "# Rendered by switchyard-agent; edits are overwritten.",
    );
    line(false, "global");
    line(false, "  master-worker");
    line(
        false,
        &format!(
            "  stats socket {} mode 600 level admin expose-fd listeners",
            sockets.stats
        ),
    );
    line(false, "  log stderr format short local0 notice");
    line(false, "defaults");
    line(false, "  log global");
    line(false, "  timeout client 60s");
    line(false, "  timeout http-request 30s");
    line(false, "  timeout http-keep-alive 60s");
    line(false, "  timeout queue 5s");
    line(false, "  timeout tunnel 1h");
    line(
        false,
        &format!("  timeout connect {}", ms(Duration::from_secs(1))),
    );
    line(false, &format!("  timeout server {}", ms(NO_TIMEOUT)));

    // Service-level refusals, once per service.
    for s in config.services.values() {
        let at = format!("service/{}", s.name);
        if s.outlier_detection.is_some() {
            v.push(
                format!("{at}.outlier_detection"),
                "HAProxy ejects servers only through its own health checks, which stay off \
                 (the agent's checks are the source of truth)",
            );
        }
        if s.circuit_breaker.max_retries.is_some() {
            v.push(
                format!("{at}.circuit_breaker.max_retries"),
                "HAProxy cannot limit retries in flight",
            );
        }
    }

    let mut backends: Vec<(String, Vec<String>, Servers)> = Vec::new();
    for l in config.listeners.values() {
        let at = format!("listener/{}", l.name);
        let mut lines = vec![format!("frontend f.{}", l.name)];
        lines.push(format!("  bind {}:{}", l.address, l.port));
        match &l.target {
            ListenerTarget::Service(name) => {
                lines.push("  mode tcp".into());
                let Some(service) = config.services.get(name) else {
                    v.push(
                        format!("{at}.service"),
                        format_args!("service {name} is not known"),
                    );
                    continue;
                };
                let be = format!("l.{}", l.name);
                lines.push(format!("  default_backend {be}"));
                let (head, servers) =
                    backend(&mut v, config, service, &be, None, &Default::default());
                backends.push((be, head, servers));
            }
            ListenerTarget::Route(name) => {
                lines.push("  mode http".into());
                lines.push("  option forwardfor".into());
                let Some(route) = config.routes.get(name) else {
                    v.push(
                        format!("{at}.route"),
                        format_args!("route {name} is not known"),
                    );
                    continue;
                };
                http_frontend(&mut v, config, route, &mut lines, &mut backends);
                lines.push("  default_backend sy.no-route".into());
            }
        }
        for s in &lines {
            line(false, s);
        }
    }

    line(false, "backend sy.no-route");
    line(false, "  mode http");
    line(
        false,
        "  http-request return status 404 content-type text/plain string 'no route\\n'",
    );
    // Two listeners naming one route share its backends: render each once.
    let mut seen = std::collections::BTreeSet::new();
    for (name, head, servers) in backends {
        if !seen.insert(name.clone()) {
            continue;
        }
        for s in &head {
            line(false, s);
        }
        for (server, s) in &servers {
            line(true, &format!("  server {server} {}", s.arguments()));
        }
        out.backends.insert(name, servers);
    }
    v.finish(())?;
    out.text = text;
    out.skeleton = skeleton;
    Ok(out)
}

/// The `use_backend` lines of a route's rules, and their backends.
fn http_frontend(
    v: &mut Violations,
    config: &NodeConfig,
    route: &Route,
    lines: &mut Vec<String>,
    backends: &mut Vec<(String, Vec<String>, Servers)>,
) {
    for (i, rule) in route.rules.iter().enumerate() {
        let at = format!("route/{}.rules[{i}]", route.name);
        let conditions: Vec<String> = if rule.matches.is_empty() {
            vec![String::new()]
        } else {
            rule.matches.iter().map(acls).collect()
        };
        let total: u64 = rule
            .action
            .destinations
            .iter()
            .map(|d| u64::from(d.weight))
            .sum();
        let split = rule.action.destinations.len() > 1;
        if split {
            lines.push(format!("  http-request set-var(txn.sy_r{i}) rand({total})"));
        }
        let mut below = 0u64;
        for (j, d) in rule.action.destinations.iter().enumerate() {
            let be = format!("r.{}.{i}.{j}", route.name);
            let share = if split {
                let from = below;
                below += u64::from(d.weight);
                if d.weight == 0 {
                    continue;
                }
                format!(
                    " {{ var(txn.sy_r{i}) -m int ge {from} }} {{ var(txn.sy_r{i}) -m int lt {below} }}"
                )
            } else {
                String::new()
            };
            for c in &conditions {
                let cond = format!("{c}{share}");
                if cond.trim().is_empty() {
                    lines.push(format!("  use_backend {be}"));
                } else {
                    lines.push(format!("  use_backend {be} if{cond}"));
                }
            }
            let Some(service) = config.services.get(&d.service) else {
                v.push(
                    format!("{at}.action.destinations[{j}].service"),
                    format_args!("service {} is not known", d.service),
                );
                continue;
            };
            let (mut head, servers) = backend(v, config, service, &be, Some(d), &d.subset);
            rule_settings(v, &at, rule, &mut head);
            backends.push((be, head, servers));
        }
    }
}

/// The ACLs of one match, all of which must hold, as ` {…} {…}` (leading
/// space) for an `if`.
fn acls(m: &RouteMatch) -> String {
    let mut out = String::new();
    match &m.host {
        Some(HostMatch::Exact(h)) => {
            let _ = write!(out, " {{ req.hdr(host),field(1,:),lower -m str {} }}", q(h));
        }
        Some(HostMatch::Suffix(s)) => {
            let _ = write!(out, " {{ req.hdr(host),field(1,:),lower -m end {} }}", q(s));
        }
        None => {}
    }
    match &m.path {
        Some(PathMatch::Exact(p)) => {
            let _ = write!(out, " {{ path -m str {} }}", q(p));
        }
        Some(PathMatch::Prefix(p)) => {
            let _ = write!(out, " {{ path -m beg {} }}", q(p));
        }
        Some(PathMatch::Regex(r)) => {
            let _ = write!(out, " {{ path -m reg {} }}", q(&whole(r.as_str())));
        }
        None => {}
    }
    if let Some(method) = &m.method {
        let _ = write!(out, " {{ method {} }}", q(method));
    }
    for h in &m.headers {
        // `req.fhdr`: the whole value, not split at commas as `req.hdr` is.
        let fetch = format!("req.fhdr({})", h.name);
        let not = if h.invert { "!" } else { "" };
        let _ = write!(out, " {not}{{ {} }}", string_acl(&fetch, &h.value));
    }
    for p in &m.query_params {
        let fetch = format!("url_param({})", p.name);
        let _ = write!(out, " {{ {} }}", string_acl(&fetch, &p.value));
    }
    out
}

fn string_acl(fetch: &str, m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(s) => format!("{fetch} -m str {}", q(s)),
        StringMatch::Prefix(s) => format!("{fetch} -m beg {}", q(s)),
        StringMatch::Regex(r) => format!("{fetch} -m reg {}", q(&whole(r.as_str()))),
        StringMatch::Present => format!("{fetch} -m found"),
    }
}

/// A regular expression anchored to match the whole value, as Switchyard's
/// regex matches are.
fn whole(re: &str) -> String {
    format!("^(?:{re})$")
}

/// A single-quoted HAProxy word: nothing inside is interpreted, and a quote
/// closes, is escaped, and reopens.
fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// A log-format value (header values): `%` starts a variable there.
fn lf(s: &str) -> String {
    q(&s.replace('%', "%%"))
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

/// The per-rule settings a rule's backends carry.
fn rule_settings(v: &mut Violations, at: &str, rule: &RouteRule, head: &mut Vec<String>) {
    let a: &RouteAction = &rule.action;
    let per_try = a.retry.as_ref().and_then(|r| r.per_try_timeout);
    match (a.timeout, per_try) {
        (Some(_), Some(_)) => v.push(
            format!("{at}.action.timeout"),
            "HAProxy has no overall deadline beside a per-try timeout: set one of timeout \
             and retry.per_try_timeout",
        ),
        (Some(t), None) | (None, Some(t)) => head.push(format!("  timeout server {}", ms(t))),
        (None, None) => {}
    }
    if let Some(r) = &a.retry {
        retries(v, &format!("{at}.action.retry"), r, head);
    }
    if let Some(rewrite) = &a.prefix_rewrite {
        let prefixes: Vec<Option<&str>> = rule
            .matches
            .iter()
            .map(|m| match &m.path {
                Some(PathMatch::Prefix(p)) => Some(p.as_str()),
                _ => None,
            })
            .collect();
        match prefixes.first() {
            Some(Some(p)) if prefixes.iter().all(|x| x == &Some(*p)) => {
                head.push(replace_path(p, rewrite));
            }
            _ => v.push(
                format!("{at}.action.prefix_rewrite"),
                "HAProxy rewrites a prefix only when every match of the rule has the same \
                 path prefix",
            ),
        }
    }
    header_edits(head, "http-request", &a.request_headers);
    header_edits(head, "http-response", &a.response_headers);
    // WebSocket is what HAProxy relays by default; other lists restrict
    // `Upgrade` to theirs.
    if a.upgrades != ["websocket"] {
        if a.upgrades.is_empty() {
            head.push("  http-request del-header upgrade".into());
        } else {
            let allowed: Vec<String> = a.upgrades.iter().map(|u| q(u)).collect();
            head.push(format!(
                "  http-request del-header upgrade if {{ req.hdr(upgrade) -m found }} !{{ req.hdr(upgrade) -i {} }}",
                allowed.join(" ")
            ));
        }
    }
}

/// `http-request replace-path` for a prefix rewrite, keeping one slash at
/// the boundary as the built-in proxy does.
fn replace_path(prefix: &str, rewrite: &str) -> String {
    let p = regex_escape(prefix);
    let r = rewrite.replace('\\', "\\\\");
    let (pattern, with) = if rewrite.ends_with('/') {
        (format!("^{p}/?(.*)"), format!("{r}\\1"))
    } else if prefix.ends_with('/') {
        (format!("^{p}(.*)"), format!("{r}/\\1"))
    } else {
        (format!("^{p}(.*)"), format!("{r}\\1"))
    };
    format!("  http-request replace-path {} {}", q(&pattern), lf(&with))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn header_edits(head: &mut Vec<String>, verb: &str, h: &HeaderRewrite) {
    for name in &h.remove {
        head.push(format!("  {verb} del-header {name}"));
    }
    for (name, value) in &h.set {
        head.push(format!("  {verb} set-header {name} {}", lf(value)));
    }
    for (name, value) in &h.add {
        head.push(format!("  {verb} add-header {name} {}", lf(value)));
    }
}

fn retries(v: &mut Violations, at: &str, r: &RetryPolicy, head: &mut Vec<String>) {
    if r.backoff_base != DEFAULT_BACKOFF_BASE {
        v.push(
            format!("{at}.backoff_base"),
            "HAProxy retries without backoff",
        );
    }
    if r.backoff_max != DEFAULT_BACKOFF_MAX {
        v.push(
            format!("{at}.backoff_max"),
            "HAProxy retries without backoff",
        );
    }
    if r.budget_percent != DEFAULT_BUDGET {
        v.push(
            format!("{at}.budget_percent"),
            "HAProxy has no retry budget",
        );
    }
    let mut on: Vec<String> = Vec::new();
    for c in &r.retry_on {
        match c {
            RetryOn::ConnectFailure => on.push("conn-failure".into()),
            RetryOn::Reset => on.extend(["empty-response".into(), "junk-response".into()]),
            RetryOn::GatewayError => on.extend(["502", "503", "504"].map(String::from)),
            RetryOn::ServerError => {
                on.extend(["500", "501", "502", "503", "504"].map(String::from));
            }
            RetryOn::RetriableStatus => {
                for (i, code) in r.retriable_status_codes.iter().enumerate() {
                    if RETRY_STATUSES.contains(code) {
                        on.push(code.to_string());
                    } else {
                        v.push(
                            format!("{at}.retriable_status_codes[{i}]"),
                            format_args!(
                                "HAProxy retries only on 401, 403, 404, 408, 425 and 500 to 504, not {code}"
                            ),
                        );
                    }
                }
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    on.retain(|x| seen.insert(x.clone()));
    head.push(format!("  retries {}", r.attempts));
    if !on.is_empty() {
        head.push(format!("  retry-on {}", on.join(" ")));
        head.push("  option redispatch 1".into());
    }
}

/// A backend's head (everything but its servers) and its servers.
fn backend(
    v: &mut Violations,
    config: &NodeConfig,
    service: &Service,
    name: &str,
    destination: Option<&Destination>,
    subset: &switchyard::resource::Labels,
) -> (Vec<String>, Servers) {
    let mut head = vec![format!("backend {name}")];
    let tcp = destination.is_none();
    head.push(format!("  mode {}", if tcp { "tcp" } else { "http" }));
    match &service.balance {
        Balance::RoundRobin => head.push("  balance roundrobin".into()),
        Balance::LeastRequest => head.push("  balance leastconn".into()),
        Balance::Random => head.push("  balance random(1)".into()),
        Balance::RingHash(on) | Balance::Maglev(on) => {
            head.push(match on {
                HashOn::Header(h) => format!("  balance hdr({h})"),
                HashOn::Cookie(c) => format!("  balance hash req.cook({c})"),
                HashOn::SourceIp => "  balance source".into(),
            });
            head.push("  hash-type consistent".into());
        }
    }
    head.push(format!("  timeout connect {}", ms(service.connect_timeout)));
    let fixed = match service.protocol {
        Protocol::Http2 | Protocol::Grpc if !tcp => "proto h2".to_owned(),
        _ => String::new(),
    };
    let _ = v;
    let endpoints: Vec<&Endpoint> = config
        .endpoints
        .values()
        .filter(|e| e.service == service.name)
        .filter(|e| subset.iter().all(|(k, val)| e.labels.get(k) == Some(val)))
        .map(|e| &**e)
        .collect();
    (head, servers(service, &endpoints, &fixed))
}

/// The servers of a backend holding `endpoints`.
fn servers(service: &Service, endpoints: &[&Endpoint], fixed: &str) -> Servers {
    let healthy = endpoints
        .iter()
        .filter(|e| matches!(e.health, Health::Unknown | Health::Healthy))
        .count();
    // Panic mode: too few healthy endpoints → route to all of them, as the
    // built-in proxy does.
    let panic = !endpoints.is_empty()
        && healthy * 100 < usize::from(service.panic_threshold_percent) * endpoints.len();
    let max_weight = endpoints.iter().map(|e| e.weight).max().unwrap_or(1);
    let scale = |w: u32| -> u32 {
        if max_weight <= MAX_HAPROXY_WEIGHT {
            w
        } else {
            ((u64::from(w) * u64::from(MAX_HAPROXY_WEIGHT)) / u64::from(max_weight)).max(1) as u32
        }
    };
    let cb = &service.circuit_breaker;
    let limit = match (cb.max_connections, cb.max_requests) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let n = endpoints.len().max(1) as u32;
    let per_server = |total: u32| total.div_ceil(n).max(1);
    endpoints
        .iter()
        .map(|e| {
            let state = match e.health {
                Health::Unknown | Health::Healthy => State::Ready,
                Health::Draining => State::Drain,
                Health::Unhealthy if panic => State::Ready,
                Health::Unhealthy => State::Maint,
            };
            (
                e.name.clone(),
                Server {
                    address: e.address.clone(),
                    port: e.port,
                    weight: scale(e.weight),
                    state,
                    maxconn: limit.map(per_server),
                    maxqueue: cb.max_pending_requests.map(per_server),
                    fixed: fixed.to_owned(),
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
