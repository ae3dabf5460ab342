//! The built-in proxy's routing table: a [`Route`] compiled once per
//! configuration into an immutable [`Router`] that picks the rule for a
//! request, a weighted destination for it, the path to send upstream and the
//! header edits to make.
//!
//! Everything here is pure and synchronous: the proxy shares a `Router` as an
//! `Arc` inside its configuration snapshot and calls it per request. Matching
//! allocates nothing unless a query parameter needs percent-decoding; header
//! names and header rewrites are parsed here, not per request.
//!
//! A route may hold tens of thousands of rules, one or a few per virtual
//! host. So that a request's cost does not grow with them, [`Router`] indexes
//! the rules by host once per configuration ([`HostIndex`]): a request only
//! tests the rules of its exact host, those of the wildcard suffixes its
//! host ends with, and the rules that do not depend on the host, and still
//! gets the rule that a scan in declaration order would find first.

use std::borrow::Cow;
use std::collections::HashMap;

use http::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use switchyard::resource::{
    Destination, HeaderRewrite, HostMatch, PathMatch, QueryMatch, Route, RouteAction, RouteMatch,
    StringMatch,
};

#[cfg(test)]
mod tests;

/// A route compiled for matching; built once per configuration and shared as
/// an `Arc`.
#[derive(Debug)]
pub struct Router {
    name: String,
    rules: Box<[Rule]>,
    hosts: HostIndex,
}

impl Router {
    /// Compiles `route`. The route is already valid, so this cannot fail: a
    /// header name that still does not parse makes its header match see the
    /// header as absent.
    pub fn new(route: &Route) -> Router {
        let rules: Box<[Rule]> = route
            .rules
            .iter()
            .map(|r| Rule::new(&r.matches, &r.action))
            .collect();
        Router {
            name: route.name.clone(),
            hosts: HostIndex::new(&rules),
            rules,
        }
    }

    /// The route's name, for logs and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The rules in match order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The first rule in declaration order that matches the request (see
    /// [`Rule::matches`]), or `None`, which the proxy answers with 404.
    ///
    /// Found through the host index: the rules of the request's exact host,
    /// then those of each wildcard suffix it ends with (longest first), then
    /// the rules that do not depend on the host, each list tested only below
    /// the best rule found so far. Any rule left out has only host matches,
    /// none of them for this host, so it cannot match: the result is the
    /// first match of a scan over every rule, in time that does not grow
    /// with the number of hosts.
    pub fn find(&self, req: &RequestView<'_>) -> Option<&Rule> {
        let mut best = self.rules.len();
        let mut first_in = |list: &[u32]| {
            for &i in list {
                let i = i as usize;
                if i >= best {
                    break;
                }
                if self.rules[i].matches(req) {
                    best = i;
                    break;
                }
            }
        };
        if let Some(host) = req.host() {
            self.hosts.candidates(host, &mut first_in);
        }
        first_in(&self.hosts.hostless);
        self.rules.get(best)
    }
}

/// The longest host or wildcard suffix the index holds, in bytes: a valid
/// host name has at most 253 (`.` and 253 for a suffix), and an IP address
/// fewer. A request host is lower-cased into a buffer of this size on the
/// stack; a configured host longer than this is not indexed (its rule is
/// tested for every request instead).
const MAX_HOST_KEY: usize = 255;

/// The rules of a [`Router`] by host, built once per configuration.
///
/// Every rule is either *host-less*, testable for any request (it has no
/// matches, or a match with no host), or indexed under the host of each of
/// its matches: an exact host, or a wildcard's suffix (`.example.com` for
/// `*.example.com`). Lists hold rule indices in declaration order.
#[derive(Debug, Default)]
struct HostIndex {
    /// Lower-case exact host → its rules, as a span of `postings`.
    exact: HashMap<Box<[u8]>, Span>,
    /// Lower-case suffix, starting with `.` → its rules.
    suffix: HashMap<Box<[u8]>, Span>,
    /// The length of the longest key of `suffix` (0 when empty): a request
    /// host's shorter tails are the only ones worth looking up.
    longest_suffix: usize,
    /// Every list of `exact` and `suffix`, end to end: one allocation
    /// rather than one per host.
    postings: Box<[u32]>,
    /// Rules tested whatever the host.
    hostless: Box<[u32]>,
}

/// A list of rule indices inside [`HostIndex::postings`].
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl HostIndex {
    fn new(rules: &[Rule]) -> HostIndex {
        let mut hostless = Vec::new();
        let mut exact: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        let mut suffix: HashMap<Box<[u8]>, Vec<u32>> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            // Validation allows 100,000 rules: u32 indices halve the lists.
            let i = u32::try_from(i).expect("fewer than 2^32 rules");
            let indexable = !rule.matches.is_empty()
                && rule.matches.iter().all(|m| match &m.host {
                    Some(HostMatch::Exact(h) | HostMatch::Suffix(h)) => h.len() <= MAX_HOST_KEY,
                    None => false,
                });
            if !indexable {
                hostless.push(i);
                continue;
            }
            for m in &rule.matches {
                let (map, key) = match &m.host {
                    Some(HostMatch::Exact(h)) => (&mut exact, h),
                    Some(HostMatch::Suffix(s)) => (&mut suffix, s),
                    None => unreachable!("checked above"),
                };
                // Validation lower-cases hosts; do it again so that the
                // index agrees with the case-insensitive comparison of
                // `host_holds` whatever built the route.
                let list = map
                    .entry(key.as_bytes().to_ascii_lowercase().into_boxed_slice())
                    .or_default();
                // A rule naming one host twice is listed once.
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        let mut postings = Vec::new();
        let mut spans = |map: HashMap<Box<[u8]>, Vec<u32>>| -> HashMap<Box<[u8]>, Span> {
            map.into_iter()
                .map(|(key, list)| {
                    let span = Span {
                        start: postings.len() as u32,
                        len: list.len() as u32,
                    };
                    postings.extend(list);
                    (key, span)
                })
                .collect()
        };
        let exact = spans(exact);
        let suffix = spans(suffix);
        HostIndex {
            longest_suffix: suffix.keys().map(|k| k.len()).max().unwrap_or(0),
            exact,
            suffix,
            postings: postings.into(),
            hostless: hostless.into(),
        }
    }

    fn list(&self, span: Span) -> &[u32] {
        &self.postings[span.start as usize..][..span.len as usize]
    }

    /// Calls `visit` with the rules indexed under `host` (without its
    /// port, any case): those of the exact host, then those of each suffix
    /// the host ends with, longest first. A suffix must leave at least one
    /// byte of the host before it, as in [`host_holds`].
    fn candidates(&self, host: &[u8], mut visit: impl FnMut(&[u32])) {
        // Only the last MAX_HOST_KEY bytes can be a key or end in one.
        let start = host.len().saturating_sub(MAX_HOST_KEY);
        let mut buf = [0u8; MAX_HOST_KEY];
        let tail = &mut buf[..host.len() - start];
        tail.copy_from_slice(&host[start..]);
        tail.make_ascii_lowercase();
        let tail = &*tail;
        if start == 0
            && let Some(&span) = self.exact.get(tail)
        {
            visit(self.list(span));
        }
        if self.suffix.is_empty() {
            return;
        }
        let first = tail.len().saturating_sub(self.longest_suffix);
        for (at, _) in tail
            .iter()
            .enumerate()
            .skip(first)
            .filter(|&(_, &b)| b == b'.')
        {
            if start + at == 0 {
                continue;
            }
            if let Some(&span) = self.suffix.get(&tail[at..]) {
                visit(self.list(span));
            }
        }
    }
}

/// What matching needs from a request, borrowed from
/// [`http::request::Parts`] or assembled from parts of a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The request method.
    pub method: &'a http::Method,
    /// The request target; its authority stands in for a missing `Host`
    /// header (HTTP/2 `:authority`).
    pub uri: &'a http::Uri,
    /// The request headers.
    pub headers: &'a HeaderMap,
}

impl<'a> RequestView<'a> {
    /// A view of `parts`.
    pub fn new(parts: &'a http::request::Parts) -> Self {
        RequestView {
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        }
    }

    /// The request host without its port: the `Host` header, or the URI's
    /// authority when the header is absent. Bytes, because a header value
    /// need not be UTF-8.
    fn host(&self) -> Option<&'a [u8]> {
        match self.headers.get(HOST) {
            Some(h) => Some(strip_port(h.as_bytes())),
            None => self.uri.authority().map(|a| a.host().as_bytes()),
        }
    }
}

/// One rule of a [`Router`]: when it matches, and what the proxy does then.
#[derive(Debug)]
pub struct Rule {
    matches: Box<[Match]>,
    /// What to do with a matching request.
    pub action: RouteAction,
    /// `cumulative[i]` is the sum of the weights of destinations `0..=i`, so
    /// a roll picks the first destination whose running sum exceeds it.
    cumulative: Box<[u64]>,
    request_headers: HeaderEdits,
    response_headers: HeaderEdits,
}

impl Rule {
    fn new(matches: &[RouteMatch], action: &RouteAction) -> Rule {
        let cumulative = action
            .destinations
            .iter()
            .scan(0u64, |sum, d| {
                *sum += u64::from(d.weight);
                Some(*sum)
            })
            .collect();
        Rule {
            matches: matches.iter().map(Match::new).collect(),
            action: action.clone(),
            cumulative,
            request_headers: HeaderEdits::new(&action.request_headers),
            response_headers: HeaderEdits::new(&action.response_headers),
        }
    }

    /// Whether the request matches: any one of the rule's matches holds, and
    /// a rule with no matches matches every request.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.holds(req))
    }

    /// The sum of the destinations' weights.
    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The index in `action.destinations` that `roll` picks by weight, or
    /// `None` when every weight is 0. `roll` should be uniform in
    /// `[0, total_weight())`; the caller supplies it so that picking stays
    /// deterministic and testable. A larger roll is reduced modulo the total.
    pub fn pick_index(&self, roll: u64) -> Option<usize> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        let roll = roll % total;
        // Destinations of weight 0 share their predecessor's running sum and
        // are therefore never the first one above the roll.
        Some(self.cumulative.partition_point(|&sum| sum <= roll))
    }

    /// The destination that `roll` picks by weight; see
    /// [`pick_index`](Self::pick_index).
    pub fn pick_destination(&self, roll: u64) -> Option<&Destination> {
        self.pick_index(roll)
            .and_then(|i| self.action.destinations.get(i))
    }

    /// The path and query to send upstream, or `None` to send the request's
    /// own unchanged.
    ///
    /// Only a rule with a `prefix_rewrite` rewrites: the path prefix of the
    /// first of its matches that holds is replaced by the rewrite, and the
    /// query string is kept. The boundary keeps exactly one slash where
    /// either side had one: with prefix `/api`, rewrite `/` turns
    /// `/api/users` into `/users` and rewrite `/v2` turns `/api/x` into
    /// `/v2/x`; with prefix `/api/`, rewrite `/v2` turns `/api/x` into
    /// `/v2/x`. Like the prefix match itself this ignores segments: prefix
    /// `/api` with rewrite `/v2` turns `/apix` into `/v2x`.
    ///
    /// Also `None` when the request does not match the rule, or when the
    /// result is not a valid path (a rewrite holding `#`, say), which
    /// validation should have made impossible.
    pub fn rewrite_path(&self, req: &RequestView<'_>) -> Option<PathAndQuery> {
        let rewrite = self.action.prefix_rewrite.as_deref()?;
        let prefix = match self.matches.iter().find(|m| m.holds(req))?.path {
            Some(PathMatch::Prefix(ref p)) => p.as_str(),
            _ => return None,
        };
        let rest = req.uri.path().strip_prefix(prefix)?;
        let query = req.uri.query();
        let mut out = String::with_capacity(
            rewrite.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1,
        );
        out.push_str(rewrite);
        let rest = match rest.strip_prefix('/') {
            Some(r) if rewrite.ends_with('/') => r,
            _ => rest,
        };
        // A prefix ending in '/' took the boundary slash with it; put it back
        // unless the rewrite or the remainder brings one.
        if prefix.ends_with('/') && !out.ends_with('/') && !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        PathAndQuery::try_from(out).ok()
    }

    /// The compiled `action.request_headers`, to apply to the request before
    /// it goes upstream.
    pub fn request_headers(&self) -> &HeaderEdits {
        &self.request_headers
    }

    /// The compiled `action.response_headers`, to apply to the response
    /// before it goes back to the client.
    pub fn response_headers(&self) -> &HeaderEdits {
        &self.response_headers
    }
}

/// A [`HeaderRewrite`] with its names and values parsed once, so applying it
/// per request only clones reference-counted bytes.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

impl HeaderEdits {
    /// Parses `rewrite`, skipping any name or value that is not valid in
    /// HTTP (validation should have rejected those already).
    pub fn new(rewrite: &HeaderRewrite) -> HeaderEdits {
        let pairs = |m: &switchyard::resource::Labels| -> Box<[(HeaderName, HeaderValue)]> {
            m.iter()
                .filter_map(|(name, value)| {
                    Some((
                        HeaderName::from_bytes(name.as_bytes()).ok()?,
                        HeaderValue::from_str(value).ok()?,
                    ))
                })
                .collect()
        };
        HeaderEdits {
            remove: rewrite
                .remove
                .iter()
                .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
                .collect(),
            set: pairs(&rewrite.set),
            add: pairs(&rewrite.add),
        }
    }

    /// Whether applying changes nothing.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Edits `headers`: first removes, then sets (replacing every value of
    /// the name), then adds (appending to the values already there). So a
    /// name both removed and set ends up with the set value, and a name both
    /// set and added ends up with both values.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

/// Applies `rewrite` to `headers` in the order of [`HeaderEdits::apply`]:
/// remove, then set, then add. Invalid names and values are skipped. This
/// parses the rewrite on every call; on the hot path use the rule's
/// precompiled [`Rule::request_headers`] and [`Rule::response_headers`].
pub fn apply_header_rewrite(rewrite: &HeaderRewrite, headers: &mut HeaderMap) {
    HeaderEdits::new(rewrite).apply(headers);
}

/// One compiled [`RouteMatch`]: every part that is set must hold.
#[derive(Debug)]
struct Match {
    host: Option<HostMatch>,
    path: Option<PathMatch>,
    method: Option<String>,
    headers: Box<[Header]>,
    query_params: Box<[QueryMatch]>,
}

impl Match {
    fn new(m: &RouteMatch) -> Match {
        Match {
            host: m.host.clone(),
            path: m.path.clone(),
            method: m.method.clone(),
            headers: m
                .headers
                .iter()
                .map(|h| Header {
                    name: HeaderName::from_bytes(h.name.as_bytes()).ok(),
                    value: h.value.clone(),
                    invert: h.invert,
                })
                .collect(),
            query_params: m.query_params.clone().into(),
        }
    }

    /// Cheapest checks first.
    fn holds(&self, req: &RequestView<'_>) -> bool {
        if let Some(method) = &self.method
            && req.method.as_str() != method
        {
            return false;
        }
        if let Some(host) = &self.host
            && !req.host().is_some_and(|h| host_holds(host, h))
        {
            return false;
        }
        if let Some(path) = &self.path
            && !path_holds(path, req.uri.path())
        {
            return false;
        }
        if !self.headers.iter().all(|h| h.holds(req.headers)) {
            return false;
        }
        if self.query_params.is_empty() {
            return true;
        }
        let query = req.uri.query().unwrap_or("");
        self.query_params.iter().all(|q| query_holds(q, query))
    }
}

/// A [`switchyard::resource::HeaderMatch`] with its name parsed.
#[derive(Debug)]
struct Header {
    /// `None` if the name did not parse: no request has such a header.
    name: Option<HeaderName>,
    value: StringMatch,
    invert: bool,
}

impl Header {
    /// A header sent several times (several field lines) matches when any
    /// one of its values does; values are not split on commas. `invert`
    /// negates the outcome, so an inverted match holds when the header is
    /// absent.
    fn holds(&self, headers: &HeaderMap) -> bool {
        let found = self.name.as_ref().is_some_and(|name| {
            headers
                .get_all(name)
                .iter()
                .any(|v| string_holds(&self.value, v.as_bytes()))
        });
        found != self.invert
    }
}

/// `host` is already without its port. Configured hosts are lower case;
/// request hosts are compared ignoring ASCII case.
fn host_holds(m: &HostMatch, host: &[u8]) -> bool {
    match m {
        HostMatch::Exact(h) => host.eq_ignore_ascii_case(h.as_bytes()),
        // The suffix starts with '.', so "example.com" itself does not match
        // ".example.com"; a subdomain needs at least one byte before it.
        HostMatch::Suffix(s) => {
            host.len() > s.len() && host[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
        }
    }
}

/// The host of a `Host` header value: `example.com:8080` → `example.com`,
/// `[::1]:8080` → `[::1]`.
fn strip_port(host: &[u8]) -> &[u8] {
    let end = if host.starts_with(b"[") {
        host.iter()
            .position(|&b| b == b']')
            .map_or(host.len(), |i| i + 1)
    } else {
        host.iter().position(|&b| b == b':').unwrap_or(host.len())
    };
    &host[..end]
}

/// `path` is the URI's path as received (not percent-decoded), without the
/// query.
fn path_holds(m: &PathMatch, path: &str) -> bool {
    match m {
        PathMatch::Exact(p) => path == p,
        PathMatch::Prefix(p) => path.starts_with(p.as_str()),
        // Compiled anchored, so this matches the whole path.
        PathMatch::Regex(r) => r.is_match(path),
    }
}

/// Compares bytes, since header values and decoded query values need not be
/// UTF-8; a regex only ever matches a UTF-8 value.
fn string_holds(m: &StringMatch, value: &[u8]) -> bool {
    match m {
        StringMatch::Exact(s) => value == s.as_bytes(),
        StringMatch::Prefix(s) => value.starts_with(s.as_bytes()),
        StringMatch::Regex(r) => std::str::from_utf8(value).is_ok_and(|v| r.is_match(v)),
        StringMatch::Present => true,
    }
}

/// Whether some parameter of `query` (`a=1&b&c=%20`) is named `m.name` and
/// has a value `m.value` accepts. Names and values are percent-decoded with
/// `+` as a space; a parameter without `=` has the empty value.
fn query_holds(m: &QueryMatch, query: &str) -> bool {
    query.split('&').filter(|p| !p.is_empty()).any(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        *percent_decode(name.as_bytes()) == *m.name.as_bytes()
            && string_holds(&m.value, &percent_decode(value.as_bytes()))
    })
}

/// Decodes `%XX` escapes and `+` (a space, as in HTML forms). A `%` not
/// followed by two hex digits stays as it is. Borrows unless there is
/// something to decode.
fn percent_decode(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.iter().any(|&b| b == b'%' || b == b'+') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                if let (Some(hi), Some(lo)) = (hex(s.get(i + 1)), hex(s.get(i + 2))) {
                    out.push(hi << 4 | lo);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: Option<&u8>) -> Option<u8> {
    match *b? {
        b @ b'0'..=b'9' => Some(b - b'0'),
        b @ b'a'..=b'f' => Some(b - b'a' + 10),
        b @ b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}
