//! The router's match on arbitrary requests, against a fixed table of rules
//! that uses every kind of match, compared with a plain reference matcher
//! written from the API's documented semantics.
//!
//! The input is text, one field a line: the method, the `Host` header
//! (none when empty), the request target, then header lines `name: value`.
//! For every request the router accepts to build: each rule matches exactly
//! when the reference says it does, the router picks the first such rule,
//! and the picked rule's path rewrite and weighted pick do not panic.
#![no_main]

use std::collections::HashMap;
use std::sync::LazyLock;

use http::header::{HOST, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Uri};
use regex::Regex;
use switchyard::pb;
use switchyard::pb::path_match::Kind as P;
use switchyard::pb::string_match::Kind as S;
use switchyard::resource::Route;
use switchyard_proxy::router::{RequestView, Router};

/// A string match of the table.
#[derive(Clone, Copy)]
enum Str {
    Exact(&'static str),
    Prefix(&'static str),
    Regex(&'static str),
    Present,
}

/// A path match of the table.
#[derive(Clone, Copy)]
enum Path {
    Exact(&'static str),
    Prefix(&'static str),
    Regex(&'static str),
}

/// One match of the table: every part set must hold.
#[derive(Clone, Copy, Default)]
struct Match {
    /// Exact, or `*.suffix`.
    host: Option<&'static str>,
    path: Option<Path>,
    method: Option<&'static str>,
    headers: &'static [(&'static str, Str, bool)],
    query: &'static [(&'static str, Str)],
}

/// One rule: any of its matches holds.
struct Rule {
    matches: &'static [Match],
    rewrite: Option<&'static str>,
    destinations: &'static [(&'static str, u32)],
}

const EMPTY: Match = Match {
    host: None,
    path: None,
    method: None,
    headers: &[],
    query: &[],
};

/// The table, in match order; no rule matches everything, so a request may
/// match none.
const RULES: &[Rule] = &[
    Rule {
        matches: &[Match {
            method: Some("GET"),
            host: Some("api.example.com"),
            path: Some(Path::Prefix("/v1/")),
            ..EMPTY
        }],
        rewrite: Some("/"),
        destinations: &[("api-v1", 1)],
    },
    Rule {
        matches: &[Match {
            host: Some("*.example.com"),
            headers: &[("x-canary", Str::Exact("1"), false)],
            ..EMPTY
        }],
        rewrite: None,
        destinations: &[("web", 90), ("web-canary", 10)],
    },
    Rule {
        matches: &[
            Match {
                path: Some(Path::Regex("/users/[0-9]+")),
                query: &[("debug", Str::Present)],
                ..EMPTY
            },
            Match {
                path: Some(Path::Exact("/users")),
                method: Some("POST"),
                ..EMPTY
            },
        ],
        rewrite: None,
        destinations: &[("users", 1)],
    },
    Rule {
        matches: &[Match {
            headers: &[
                ("x-env", Str::Prefix("stag"), false),
                ("x-block", Str::Present, true),
            ],
            ..EMPTY
        }],
        rewrite: None,
        destinations: &[("staging", 1)],
    },
    Rule {
        matches: &[Match {
            query: &[("q", Str::Regex("a+b?")), ("lang", Str::Exact("en gb"))],
            ..EMPTY
        }],
        rewrite: None,
        destinations: &[("search", 1)],
    },
    Rule {
        matches: &[
            Match {
                path: Some(Path::Prefix("/static/")),
                host: Some("cdn.example.com"),
                ..EMPTY
            },
            Match {
                path: Some(Path::Prefix("/assets")),
                ..EMPTY
            },
        ],
        rewrite: Some("/files"),
        destinations: &[("static", 1), ("static-old", 0)],
    },
    Rule {
        matches: &[Match {
            headers: &[("user-agent", Str::Regex(".*[Bb]ot.*"), false)],
            query: &[("p", Str::Prefix("x"))],
            ..EMPTY
        }],
        rewrite: None,
        destinations: &[("bots", 1)],
    },
    Rule {
        matches: &[Match {
            host: Some("localhost"),
            method: Some("DELETE"),
            ..EMPTY
        }],
        rewrite: None,
        destinations: &[("local", 1)],
    },
];

fn string_match(s: Str) -> pb::StringMatch {
    let kind = match s {
        Str::Exact(v) => S::Exact(v.into()),
        Str::Prefix(v) => S::Prefix(v.into()),
        Str::Regex(v) => S::Regex(v.into()),
        Str::Present => S::Present(true),
    };
    pb::StringMatch { kind: Some(kind) }
}

/// The table as the API takes it.
fn route() -> pb::Route {
    let rules = RULES
        .iter()
        .map(|rule| pb::RouteRule {
            matches: rule
                .matches
                .iter()
                .map(|m| pb::RouteMatch {
                    host: m.host.unwrap_or_default().into(),
                    path: m.path.map(|p| pb::PathMatch {
                        kind: Some(match p {
                            Path::Exact(v) => P::Exact(v.into()),
                            Path::Prefix(v) => P::Prefix(v.into()),
                            Path::Regex(v) => P::Regex(v.into()),
                        }),
                    }),
                    method: m.method.unwrap_or_default().into(),
                    headers: m
                        .headers
                        .iter()
                        .map(|&(name, value, invert)| pb::HeaderMatch {
                            name: name.into(),
                            value: Some(string_match(value)),
                            invert,
                        })
                        .collect(),
                    query_params: m
                        .query
                        .iter()
                        .map(|&(name, value)| pb::QueryMatch {
                            name: name.into(),
                            value: Some(string_match(value)),
                        })
                        .collect(),
                })
                .collect(),
            action: Some(pb::RouteAction {
                destinations: rule
                    .destinations
                    .iter()
                    .map(|&(service, weight)| pb::WeightedDestination {
                        service: service.into(),
                        weight,
                        ..Default::default()
                    })
                    .collect(),
                prefix_rewrite: rule.rewrite.unwrap_or_default().into(),
                ..Default::default()
            }),
        })
        .collect();
    pb::Route {
        name: "fuzz".into(),
        rules,
        ..Default::default()
    }
}

static ROUTER: LazyLock<Router> = LazyLock::new(|| {
    let route = Route::from_pb(&route(), "route").expect("the table is a valid route");
    Router::new(&route)
});

/// The table's regular expressions, compiled for the reference to match
/// whole strings.
static REGEXES: LazyLock<HashMap<&'static str, Regex>> = LazyLock::new(|| {
    let mut sources = Vec::new();
    for m in RULES.iter().flat_map(|r| r.matches) {
        if let Some(Path::Regex(r)) = m.path {
            sources.push(r);
        }
        let values = m
            .headers
            .iter()
            .map(|h| h.1)
            .chain(m.query.iter().map(|q| q.1));
        sources.extend(values.filter_map(|v| match v {
            Str::Regex(r) => Some(r),
            _ => None,
        }));
    }
    sources
        .into_iter()
        .map(|r| {
            (
                r,
                Regex::new(&format!("^(?:{r})$")).expect("the table's regexes compile"),
            )
        })
        .collect()
});

/// The whole-string regular expression of the table's `source`.
fn whole(source: &str) -> &'static Regex {
    &REGEXES[source]
}

fn string_holds(m: Str, value: &[u8]) -> bool {
    match m {
        Str::Exact(s) => value == s.as_bytes(),
        Str::Prefix(s) => value.len() >= s.len() && &value[..s.len()] == s.as_bytes(),
        Str::Regex(r) => std::str::from_utf8(value).is_ok_and(|v| whole(r).is_match(v)),
        Str::Present => true,
    }
}

/// `%XX` and `+` decoded, as HTML forms encode; anything else kept.
fn form_decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && bytes[i + 1].is_ascii_hexdigit()
            && bytes[i + 2].is_ascii_hexdigit()
        {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    out
}

/// The request's host, lower case and without its port.
fn host(uri: &Uri, headers: &HeaderMap) -> Option<String> {
    let raw = match headers.get_all(HOST).iter().next() {
        Some(value) => {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            if value.starts_with('[') {
                match value.find(']') {
                    Some(end) => value[..=end].to_owned(),
                    None => value,
                }
            } else {
                value.split(':').next().unwrap_or("").to_owned()
            }
        }
        None => uri.authority()?.host().to_owned(),
    };
    Some(raw.to_ascii_lowercase())
}

/// Whether `m` holds for the request, straight from the API's words.
fn reference(m: &Match, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
    if m.method.is_some_and(|want| method.as_str() != want) {
        return false;
    }
    if let Some(want) = m.host {
        let Some(host) = host(uri, headers) else {
            return false;
        };
        let holds = match want.strip_prefix('*') {
            Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
            None => host == want,
        };
        if !holds {
            return false;
        }
    }
    let path = uri.path();
    let path_holds = match m.path {
        None => true,
        Some(Path::Exact(p)) => path == p,
        Some(Path::Prefix(p)) => path.starts_with(p),
        Some(Path::Regex(r)) => whole(r).is_match(path),
    };
    if !path_holds {
        return false;
    }
    for &(name, value, invert) in m.headers {
        let found = headers
            .get_all(name)
            .iter()
            .any(|v| string_holds(value, v.as_bytes()));
        if found == invert {
            return false;
        }
    }
    let query = uri.query().unwrap_or("");
    m.query.iter().all(|&(name, value)| {
        query.split('&').any(|pair| {
            if pair.is_empty() {
                return false;
            }
            let (n, v) = match pair.find('=') {
                Some(at) => (&pair[..at], &pair[at + 1..]),
                None => (pair, ""),
            };
            form_decode(n) == name.as_bytes() && string_holds(value, &form_decode(v))
        })
    })
}

/// The request the input describes, when it is one `http` can hold.
fn request(data: &[u8]) -> Option<(Method, Uri, HeaderMap)> {
    let mut lines = data.split(|&b| b == b'\n');
    let method = Method::from_bytes(lines.next()?).ok()?;
    let host = lines.next().unwrap_or_default();
    let uri = Uri::try_from(lines.next().unwrap_or(b"/")).ok()?;
    let mut headers = HeaderMap::new();
    if !host.is_empty() {
        headers.append(HOST, HeaderValue::from_bytes(host).ok()?);
    }
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii_start()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    Some((method, uri, headers))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((method, uri, headers)) = request(data) else {
        return;
    };
    let view = RequestView {
        method: &method,
        uri: &uri,
        headers: &headers,
    };
    let router = &*ROUTER;
    let mut first = None;
    for (i, (rule, compiled)) in RULES.iter().zip(router.rules()).enumerate() {
        let want = rule
            .matches
            .iter()
            .any(|m| reference(m, &method, &uri, &headers));
        assert_eq!(
            compiled.matches(&view),
            want,
            "rule {i} for {method} {uri} {headers:?}"
        );
        if want && first.is_none() {
            first = Some(i);
        }
    }
    let found = router.find(&view).map(|r| {
        router
            .rules()
            .iter()
            .position(|x| std::ptr::eq(x, r))
            .unwrap()
    });
    assert_eq!(found, first, "{method} {uri} {headers:?}");
    let Some(i) = found else {
        return;
    };
    let rule = &router.rules()[i];
    if let Some(path) = rule.rewrite_path(&view) {
        let rewrite = RULES[i]
            .rewrite
            .expect("only a rule with a rewrite rewrites");
        assert!(path.path().starts_with(rewrite), "{path} from {uri}");
        assert_eq!(path.query(), uri.query());
    }
    let roll = data
        .iter()
        .fold(0u64, |h, &b| h.rotate_left(5) ^ u64::from(b));
    let destination = rule.pick_destination(roll).expect("a weighted destination");
    assert_ne!(destination.weight, 0, "a destination of weight 0 picked");
});
