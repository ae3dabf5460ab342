use http::HeaderMap;
use http::request::Parts;
use switchyard::pb;
use switchyard::pb::string_match::Kind as S;
use switchyard::resource::{HeaderRewrite, Route};

use super::*;

// ---- building routes ------------------------------------------------------

fn route(rules: Vec<pb::RouteRule>) -> Route {
    let pb = pb::Route {
        name: "r".into(),
        rules,
        ..Default::default()
    };
    Route::from_pb(&pb, "r").expect("valid route")
}

fn router(rules: Vec<pb::RouteRule>) -> Router {
    Router::new(&route(rules))
}

fn to(service: &str, matches: Vec<pb::RouteMatch>) -> pb::RouteRule {
    with_action(
        matches,
        pb::RouteAction {
            destinations: vec![dest(service, 0)],
            ..Default::default()
        },
    )
}

fn with_action(matches: Vec<pb::RouteMatch>, action: pb::RouteAction) -> pb::RouteRule {
    pb::RouteRule {
        matches,
        action: Some(action),
    }
}

fn dest(service: &str, weight: u32) -> pb::WeightedDestination {
    pb::WeightedDestination {
        service: service.into(),
        weight,
        ..Default::default()
    }
}

fn path(kind: pb::path_match::Kind) -> pb::RouteMatch {
    pb::RouteMatch {
        path: Some(pb::PathMatch { kind: Some(kind) }),
        ..Default::default()
    }
}

fn prefix_path(p: &str) -> pb::RouteMatch {
    path(pb::path_match::Kind::Prefix(p.into()))
}

fn host(h: &str) -> pb::RouteMatch {
    pb::RouteMatch {
        host: h.into(),
        ..Default::default()
    }
}

fn method(m: &str) -> pb::RouteMatch {
    pb::RouteMatch {
        method: m.into(),
        ..Default::default()
    }
}

fn header(name: &str, value: pb::string_match::Kind, invert: bool) -> pb::RouteMatch {
    pb::RouteMatch {
        headers: vec![pb::HeaderMatch {
            name: name.into(),
            value: Some(pb::StringMatch { kind: Some(value) }),
            invert,
        }],
        ..Default::default()
    }
}

fn query(name: &str, value: pb::string_match::Kind) -> pb::RouteMatch {
    pb::RouteMatch {
        query_params: vec![pb::QueryMatch {
            name: name.into(),
            value: Some(pb::StringMatch { kind: Some(value) }),
        }],
        ..Default::default()
    }
}

fn exact(s: &str) -> S {
    S::Exact(s.into())
}
fn prefix(s: &str) -> S {
    S::Prefix(s.into())
}
fn regex(s: &str) -> S {
    S::Regex(s.into())
}
fn present() -> S {
    S::Present(true)
}

// ---- building requests ----------------------------------------------------

fn req(method: &str, uri: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn get(uri: &str) -> Parts {
    req("GET", uri, &[("host", "example.com")])
}

/// The service of the first destination of the rule `r` picks for `parts`.
fn routed<'r>(r: &'r Router, parts: &Parts) -> Option<&'r str> {
    r.find(&RequestView::new(parts))
        .map(|rule| rule.action.destinations[0].service.as_str())
}

/// Whether a route made of the single match `m` matches `parts`.
fn hits(m: pb::RouteMatch, parts: &Parts) -> bool {
    routed(&router(vec![to("svc", vec![m])]), parts).is_some()
}

// ---- rule selection -------------------------------------------------------

#[test]
fn first_matching_rule_wins_in_order() {
    let r = router(vec![
        to("api", vec![prefix_path("/api")]),
        to("root", vec![prefix_path("/")]),
        // Never reached: "/api" above takes everything it would.
        to("api-v2", vec![prefix_path("/api/v2")]),
    ]);
    assert_eq!(routed(&r, &get("/api/v2/users")), Some("api"));
    assert_eq!(routed(&r, &get("/other")), Some("root"));
}

#[test]
fn no_matching_rule_is_none() {
    let r = router(vec![
        to("a", vec![prefix_path("/a")]),
        to("b", vec![method("POST")]),
    ]);
    assert_eq!(routed(&r, &get("/b")), None);
}

#[test]
fn rule_without_matches_catches_everything() {
    let r = router(vec![
        to("api", vec![prefix_path("/api")]),
        to("fallback", vec![]),
    ]);
    assert_eq!(routed(&r, &get("/api")), Some("api"));
    assert_eq!(
        routed(&r, &req("DELETE", "/anything?x=1", &[])),
        Some("fallback")
    );
}

#[test]
fn any_match_of_a_rule_suffices_and_all_parts_of_a_match_must_hold() {
    let post_api = pb::RouteMatch {
        method: "POST".into(),
        ..prefix_path("/api")
    };
    let r = router(vec![to("svc", vec![post_api, prefix_path("/health")])]);
    assert_eq!(routed(&r, &req("POST", "/api/x", &[])), Some("svc"));
    assert_eq!(routed(&r, &req("GET", "/health", &[])), Some("svc"));
    assert_eq!(routed(&r, &req("GET", "/api/x", &[])), None);
    assert_eq!(routed(&r, &req("POST", "/other", &[])), None);
}

// ---- host -----------------------------------------------------------------

#[test]
fn host_exact_ignores_case_and_port() {
    let m = || host("api.example.com");
    assert!(hits(m(), &req("GET", "/", &[("host", "api.example.com")])));
    assert!(hits(m(), &req("GET", "/", &[("host", "API.Example.COM")])));
    assert!(hits(
        m(),
        &req("GET", "/", &[("host", "api.example.com:8080")])
    ));
    assert!(!hits(m(), &req("GET", "/", &[("host", "www.example.com")])));
    assert!(!hits(
        m(),
        &req("GET", "/", &[("host", "api.example.com.evil")])
    ));
    assert!(!hits(m(), &req("GET", "/", &[])), "no host at all");
}

#[test]
fn host_falls_back_to_the_uri_authority_without_a_host_header() {
    let m = || host("api.example.com");
    assert!(hits(
        m(),
        &req("GET", "https://Api.Example.com:8443/x", &[])
    ));
    assert!(!hits(m(), &req("GET", "https://other.example.com/x", &[])));
    // The Host header, when present, is what counts.
    assert!(!hits(
        m(),
        &req(
            "GET",
            "https://api.example.com/x",
            &[("host", "other.example.com")]
        )
    ));
}

#[test]
fn host_suffix_matches_subdomains_only() {
    let m = || host("*.example.com");
    for yes in ["a.example.com", "a.b.example.com", "A.EXAMPLE.com:443"] {
        assert!(hits(m(), &req("GET", "/", &[("host", yes)])), "{yes}");
    }
    for no in [
        "example.com",
        "badexample.com",
        ".example.com",
        "example.com.org",
    ] {
        assert!(!hits(m(), &req("GET", "/", &[("host", no)])), "{no}");
    }
    assert!(hits(m(), &req("GET", "http://x.example.com:81/", &[])));
}

#[test]
fn strip_port_handles_ipv6_literals() {
    assert_eq!(strip_port(b"example.com:80"), b"example.com");
    assert_eq!(strip_port(b"example.com"), b"example.com");
    assert_eq!(strip_port(b"[::1]:8080"), b"[::1]");
    assert_eq!(strip_port(b"[::1]"), b"[::1]");
}

// ---- path -----------------------------------------------------------------

#[test]
fn path_exact_is_the_whole_path_without_the_query() {
    let m = || path(pb::path_match::Kind::Exact("/search".into()));
    assert!(hits(m(), &get("/search")));
    assert!(hits(m(), &get("/search?q=rust&page=2")));
    assert!(!hits(m(), &get("/search/")));
    assert!(!hits(m(), &get("/searches")));
    assert!(!hits(m(), &get("/Search")));
}

#[test]
fn path_prefix_is_unaware_of_segments() {
    let m = || prefix_path("/api");
    assert!(hits(m(), &get("/api")));
    assert!(hits(m(), &get("/api/users")));
    assert!(hits(m(), &get("/apix")));
    assert!(!hits(m(), &get("/ap")));
    assert!(!hits(m(), &get("/v1/api")));
    // The query is not part of the path.
    assert!(!hits(prefix_path("/a?b"), &get("/a?b=1")));
}

#[test]
fn path_regex_matches_the_whole_path() {
    let m = || path(pb::path_match::Kind::Regex("/users/[0-9]+".into()));
    assert!(hits(m(), &get("/users/42")));
    assert!(hits(m(), &get("/users/42?expand=true")));
    assert!(!hits(m(), &get("/users/42/posts")));
    assert!(!hits(m(), &get("/v1/users/42")));
    assert!(!hits(m(), &get("/users/abc")));
}

// ---- method ---------------------------------------------------------------

#[test]
fn method_must_be_equal() {
    assert!(hits(method("POST"), &req("POST", "/", &[])));
    assert!(!hits(method("POST"), &req("GET", "/", &[])));
    assert!(hits(method("PURGE"), &req("PURGE", "/", &[])));
}

// ---- headers --------------------------------------------------------------

#[test]
fn header_exact_prefix_regex_and_present() {
    let with = |v: &str| req("GET", "/", &[("x-env", v)]);
    let without = req("GET", "/", &[]);

    assert!(hits(
        header("x-env", exact("canary"), false),
        &with("canary")
    ));
    assert!(!hits(
        header("x-env", exact("canary"), false),
        &with("canary2")
    ));
    assert!(!hits(header("x-env", exact("canary"), false), &without));

    assert!(hits(header("x-env", prefix("can"), false), &with("canary")));
    assert!(!hits(header("x-env", prefix("can"), false), &with("scan")));

    assert!(hits(header("x-env", regex("v[0-9]+"), false), &with("v12")));
    assert!(!hits(
        header("x-env", regex("v[0-9]+"), false),
        &with("v12-beta")
    ));

    assert!(hits(header("x-env", present(), false), &with("")));
    assert!(!hits(header("x-env", present(), false), &without));
}

#[test]
fn header_names_match_regardless_of_configured_case() {
    assert!(hits(
        header("X-Env", exact("canary"), false),
        &req("GET", "/", &[("x-env", "canary")])
    ));
}

#[test]
fn header_invert_negates_the_whole_match() {
    let with = |v: &str| req("GET", "/", &[("x-env", v)]);
    let without = req("GET", "/", &[]);
    let not_canary = || header("x-env", exact("canary"), true);
    assert!(!hits(not_canary(), &with("canary")));
    assert!(hits(not_canary(), &with("stable")));
    assert!(hits(not_canary(), &without), "absent header + invert holds");

    let absent = || header("x-env", present(), true);
    assert!(hits(absent(), &without));
    assert!(!hits(absent(), &with("anything")));
}

#[test]
fn header_with_several_values_matches_if_any_value_does() {
    let two = req("GET", "/", &[("x-env", "stable"), ("x-env", "canary")]);
    assert!(hits(header("x-env", exact("canary"), false), &two));
    assert!(hits(header("x-env", exact("stable"), false), &two));
    assert!(!hits(header("x-env", exact("beta"), false), &two));
    assert!(!hits(header("x-env", exact("canary"), true), &two));
    // Values are not split on commas.
    let joined = req("GET", "/", &[("x-env", "stable, canary")]);
    assert!(!hits(header("x-env", exact("canary"), false), &joined));
}

#[test]
fn all_header_matches_of_a_match_must_hold() {
    let m = || pb::RouteMatch {
        headers: vec![
            header("x-a", exact("1"), false).headers.remove(0),
            header("x-b", present(), false).headers.remove(0),
        ],
        ..Default::default()
    };
    assert!(hits(m(), &req("GET", "/", &[("x-a", "1"), ("x-b", "")])));
    assert!(!hits(m(), &req("GET", "/", &[("x-a", "1")])));
    assert!(!hits(m(), &req("GET", "/", &[("x-b", "1")])));
}

// ---- query ----------------------------------------------------------------

#[test]
fn query_exact_and_present() {
    let m = || query("version", exact("2"));
    assert!(hits(m(), &get("/?version=2")));
    assert!(hits(m(), &get("/?a=1&version=2&b")));
    assert!(!hits(m(), &get("/?version=22")));
    assert!(!hits(m(), &get("/?versions=2")));
    assert!(!hits(m(), &get("/")));
    // Several occurrences: any one may match.
    assert!(hits(m(), &get("/?version=1&version=2")));

    let debug = || query("debug", present());
    assert!(hits(debug(), &get("/?debug")));
    assert!(hits(debug(), &get("/?x=1&debug=")));
    assert!(!hits(debug(), &get("/?x=debug")));
    assert!(!hits(debug(), &get("/")));

    // A parameter without '=' has the empty value.
    assert!(hits(query("flag", exact("")), &get("/?flag")));
}

#[test]
fn query_names_and_values_are_percent_decoded() {
    let m = || query("user name", exact("a b&c"));
    assert!(hits(m(), &get("/?user%20name=a+b%26c")));
    assert!(hits(m(), &get("/?user+name=a%20b%26c")));
    assert!(!hits(m(), &get("/?user%20name=a+b&c")));

    assert!(hits(
        query("q", prefix("héllo")),
        &get("/?q=h%C3%A9llo+world")
    ));
    assert!(hits(query("q", regex("h.llo")), &get("/?q=h%C3%A9llo")));
    // A regex never matches a value that is not UTF-8.
    assert!(!hits(query("q", regex(".*")), &get("/?q=%FF")));
    assert!(hits(query("q", present()), &get("/?q=%FF")));
}

#[test]
fn percent_decode_keeps_malformed_escapes() {
    let d = |s: &str| percent_decode(s.as_bytes()).into_owned();
    assert_eq!(d("plain"), b"plain");
    assert!(matches!(percent_decode(b"plain"), Cow::Borrowed(_)));
    assert_eq!(d("a+b%2Bc%2fd"), b"a b+c/d");
    assert_eq!(d("100%"), b"100%");
    assert_eq!(d("%zz%4"), b"%zz%4");
    assert_eq!(d("%%41"), b"%A");
}

// ---- weighted destinations ------------------------------------------------

fn weighted(weights: &[(&str, u32)]) -> Router {
    router(vec![with_action(
        vec![],
        pb::RouteAction {
            destinations: weights.iter().map(|&(s, w)| dest(s, w)).collect(),
            ..Default::default()
        },
    )])
}

#[test]
fn weighted_picks_follow_the_weights_exactly() {
    let r = weighted(&[("stable", 90), ("canary", 10)]);
    let rule = &r.rules()[0];
    assert_eq!(rule.total_weight(), 100);
    let mut stable = 0;
    let mut canary = 0;
    for roll in 0..100 {
        match rule.pick_destination(roll).unwrap().service.as_str() {
            "stable" => stable += 1,
            "canary" => canary += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((stable, canary), (90, 10));
    assert_eq!(rule.pick_destination(89).unwrap().service, "stable");
    assert_eq!(rule.pick_destination(90).unwrap().service, "canary");
    assert_eq!(rule.pick_index(99), Some(1));
    // A roll past the total wraps around.
    assert_eq!(rule.pick_index(100), Some(0));
}

#[test]
fn zero_weight_destinations_are_never_picked() {
    let r = weighted(&[("off", 0), ("a", 3), ("also-off", 0), ("b", 1)]);
    let rule = &r.rules()[0];
    assert_eq!(rule.total_weight(), 4);
    let picks: Vec<_> = (0..4)
        .map(|roll| rule.pick_destination(roll).unwrap().service.as_str())
        .collect();
    assert_eq!(picks, ["a", "a", "a", "b"]);
}

#[test]
fn all_zero_weights_pick_nothing() {
    // Validation turns all-unset weights into 1 each, so zero them afterwards
    // to reach the case a hand-built route could still present.
    let mut route = route(vec![to("a", vec![])]);
    for d in &mut route.rules[0].action.destinations {
        d.weight = 0;
    }
    let r = Router::new(&route);
    let rule = &r.rules()[0];
    assert_eq!(rule.total_weight(), 0);
    assert_eq!(rule.pick_index(0), None);
    assert!(rule.pick_destination(7).is_none());
}

#[test]
fn unset_weights_split_evenly() {
    let r = weighted(&[("a", 0), ("b", 0)]);
    let rule = &r.rules()[0];
    assert_eq!(rule.total_weight(), 2);
    assert_eq!(rule.pick_destination(0).unwrap().service, "a");
    assert_eq!(rule.pick_destination(1).unwrap().service, "b");
}

// ---- prefix rewrite -------------------------------------------------------

fn rewritten(prefix: &str, rewrite: &str, uri: &str) -> Option<String> {
    let r = router(vec![with_action(
        vec![prefix_path(prefix)],
        pb::RouteAction {
            destinations: vec![dest("svc", 1)],
            prefix_rewrite: rewrite.into(),
            ..Default::default()
        },
    )]);
    let parts = get(uri);
    let view = RequestView::new(&parts);
    let rule = r.find(&view).expect("the rule matches");
    rule.rewrite_path(&view).map(|p| p.as_str().to_owned())
}

#[test]
fn prefix_rewrite_replaces_the_matched_prefix() {
    let cases = [
        // (prefix, rewrite, request, upstream)
        ("/api", "/", "/api/users", "/users"),
        ("/api", "/", "/api", "/"),
        ("/api", "/v2", "/api/x", "/v2/x"),
        ("/api", "/v2", "/api", "/v2"),
        ("/api", "/v2/", "/api/x", "/v2/x"),
        ("/api/", "/", "/api/users", "/users"),
        ("/api/", "/v2", "/api/x", "/v2/x"),
        ("/api/", "/v2", "/api/", "/v2/"),
        ("/api/", "/v2/", "/api/x/y", "/v2/x/y"),
        ("/", "/base", "/x", "/base/x"),
        ("/", "/base/", "/x", "/base/x"),
        // Segment-unaware, like the match.
        ("/api", "/v2", "/apix", "/v2x"),
        // The query is kept.
        ("/api", "/", "/api/users?id=1&x=%20", "/users?id=1&x=%20"),
        ("/api", "/v2", "/api?q", "/v2?q"),
    ];
    for (prefix, rewrite, uri, want) in cases {
        assert_eq!(
            rewritten(prefix, rewrite, uri).as_deref(),
            Some(want),
            "prefix {prefix:?}, rewrite {rewrite:?}, path {uri:?}"
        );
    }
}

#[test]
fn prefix_rewrite_uses_the_prefix_of_the_match_that_held() {
    let r = router(vec![with_action(
        vec![prefix_path("/old"), prefix_path("/legacy/api")],
        pb::RouteAction {
            destinations: vec![dest("svc", 1)],
            prefix_rewrite: "/new".into(),
            ..Default::default()
        },
    )]);
    for (uri, want) in [("/old/a", "/new/a"), ("/legacy/api/b?c", "/new/b?c")] {
        let parts = get(uri);
        let view = RequestView::new(&parts);
        let rule = r.find(&view).unwrap();
        assert_eq!(rule.rewrite_path(&view).unwrap().as_str(), want);
    }
}

#[test]
fn no_prefix_rewrite_leaves_the_path_unchanged() {
    let r = router(vec![to("svc", vec![prefix_path("/api")])]);
    let parts = get("/api/x");
    let view = RequestView::new(&parts);
    assert_eq!(r.find(&view).unwrap().rewrite_path(&view), None);
}

// ---- header rewrite -------------------------------------------------------

fn labels(pairs: &[(&str, &str)]) -> switchyard::resource::Labels {
    pairs
        .iter()
        .map(|&(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn values<'h>(h: &'h HeaderMap, name: &str) -> Vec<&'h str> {
    h.get_all(name)
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect()
}

#[test]
fn header_rewrite_removes_then_sets_then_adds() {
    let rewrite = HeaderRewrite {
        remove: vec!["x-a".into(), "x-gone".into()],
        set: labels(&[("x-a", "set"), ("x-b", "set")]),
        add: labels(&[("x-a", "added"), ("x-c", "added")]),
    };
    let mut h = HeaderMap::new();
    h.append("x-a", "old1".parse().unwrap());
    h.append("x-a", "old2".parse().unwrap());
    h.append("x-b", "old".parse().unwrap());
    h.append("x-b", "old2".parse().unwrap());
    h.append("x-c", "old".parse().unwrap());
    h.append("x-gone", "old".parse().unwrap());
    h.append("x-kept", "old".parse().unwrap());

    apply_header_rewrite(&rewrite, &mut h);

    // Removed, then set, then added to: the old values are gone.
    assert_eq!(values(&h, "x-a"), ["set", "added"]);
    // Set replaces every old value.
    assert_eq!(values(&h, "x-b"), ["set"]);
    // Add appends to what is there.
    assert_eq!(values(&h, "x-c"), ["old", "added"]);
    assert!(!h.contains_key("x-gone"));
    assert_eq!(values(&h, "x-kept"), ["old"]);
}

#[test]
fn header_rewrite_skips_invalid_names_and_values() {
    let rewrite = HeaderRewrite {
        remove: vec!["bad name".into()],
        set: labels(&[("x-ok", "1"), ("x-bad", "a\nb"), ("bad name", "1")]),
        add: labels(&[("x-ok2", "2")]),
    };
    let mut h = HeaderMap::new();
    apply_header_rewrite(&rewrite, &mut h);
    assert_eq!(h.len(), 2);
    assert_eq!(values(&h, "x-ok"), ["1"]);
    assert_eq!(values(&h, "x-ok2"), ["2"]);
}

#[test]
fn rules_carry_compiled_request_and_response_header_edits() {
    let r = router(vec![with_action(
        vec![],
        pb::RouteAction {
            destinations: vec![dest("svc", 1)],
            request_headers: Some(pb::HeaderRewrite {
                set: labels(&[("X-Route", "r")]),
                ..Default::default()
            }),
            response_headers: Some(pb::HeaderRewrite {
                remove: vec!["Server".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    )]);
    let rule = &r.rules()[0];
    let mut request = HeaderMap::new();
    rule.request_headers().apply(&mut request);
    assert_eq!(values(&request, "x-route"), ["r"]);

    let mut response = HeaderMap::new();
    response.insert("server", "upstream".parse().unwrap());
    rule.response_headers().apply(&mut response);
    assert!(response.is_empty());

    assert!(!rule.request_headers().is_empty());
    assert!(HeaderEdits::default().is_empty());
}

#[test]
fn router_keeps_the_route_name() {
    assert_eq!(router(vec![to("svc", vec![])]).name(), "r");
}

// ---- the host index agrees with first-match order --------------------------

/// The matcher as it was before the host index, kept as the reference that
/// [`Router::find`] must agree with: every rule in declaration order, the
/// first that matches.
fn first_match(r: &Router, req: &RequestView<'_>) -> Option<usize> {
    r.rules().iter().position(|rule| rule.matches(req))
}

/// The position of the rule [`Router::find`] picks.
fn found(r: &Router, req: &RequestView<'_>) -> Option<usize> {
    let rule = r.find(req)?;
    r.rules().iter().position(|x| std::ptr::eq(x, rule))
}

fn on_host(h: &str) -> Parts {
    req("GET", "/", &[("host", h)])
}

#[test]
fn an_earlier_wildcard_wins_over_a_later_exact_host() {
    let r = router(vec![
        to("wild", vec![host("*.example.com")]),
        to("exact", vec![host("api.example.com")]),
    ]);
    assert_eq!(routed(&r, &on_host("api.example.com")), Some("wild"));
}

#[test]
fn an_earlier_host_less_rule_wins_over_a_later_exact_host() {
    let r = router(vec![
        to("health", vec![prefix_path("/health")]),
        to("exact", vec![host("api.example.com")]),
        to("fallback", vec![]),
    ]);
    let health = req("GET", "/health", &[("host", "api.example.com")]);
    assert_eq!(routed(&r, &health), Some("health"));
    assert_eq!(routed(&r, &on_host("api.example.com")), Some("exact"));
    assert_eq!(routed(&r, &on_host("www.example.com")), Some("fallback"));
}

#[test]
fn the_first_of_several_matching_wildcards_wins_not_the_longest() {
    let r = router(vec![
        to("short", vec![host("*.com")]),
        to("long", vec![host("*.a.example.com")]),
    ]);
    assert_eq!(routed(&r, &on_host("x.a.example.com")), Some("short"));
    let r = router(vec![
        to("long", vec![host("*.a.example.com")]),
        to("short", vec![host("*.com")]),
    ]);
    assert_eq!(routed(&r, &on_host("x.a.example.com")), Some("long"));
    assert_eq!(routed(&r, &on_host("a.example.com")), Some("short"));
}

#[test]
fn a_host_rule_that_does_not_hold_otherwise_falls_through_in_order() {
    let api_post = pb::RouteMatch {
        method: "POST".into(),
        ..host("api.example.com")
    };
    let r = router(vec![
        to("api-post", vec![api_post]),
        to("wild", vec![host("*.example.com")]),
        to("api", vec![host("api.example.com")]),
    ]);
    assert_eq!(
        routed(&r, &req("POST", "/", &[("host", "API.example.com:80")])),
        Some("api-post")
    );
    assert_eq!(routed(&r, &on_host("api.example.com")), Some("wild"));
}

#[test]
fn a_rule_with_several_hosts_is_found_under_each() {
    let r = router(vec![
        to("a", vec![host("a.example.com"), host("*.a.org")]),
        to("b", vec![host("b.example.com"), host("a.example.com")]),
    ]);
    assert_eq!(routed(&r, &on_host("a.example.com")), Some("a"));
    assert_eq!(routed(&r, &on_host("x.a.org")), Some("a"));
    assert_eq!(routed(&r, &on_host("b.example.com")), Some("b"));
    assert_eq!(routed(&r, &on_host("a.org")), None);
}

#[test]
fn ten_thousand_hosts_route_by_host_first_middle_last_and_wildcard() {
    let mut rules: Vec<_> = (0..10_000)
        .map(|i| {
            to(
                &format!("svc-{i}"),
                vec![host(&format!("h{i}.example.com"))],
            )
        })
        .collect();
    rules.push(to("wild", vec![host("*.example.com")]));
    let r = router(rules);
    for (h, want) in [
        ("h0.example.com", "svc-0"),
        ("H5000.Example.com:8080", "svc-5000"),
        ("h9999.example.com", "svc-9999"),
        ("other.example.com", "wild"),
    ] {
        assert_eq!(routed(&r, &on_host(h)), Some(want), "{h}");
    }
    assert_eq!(routed(&r, &on_host("example.com")), None);
}

#[test]
fn a_very_long_request_host_still_matches_wildcards() {
    let r = router(vec![
        to("wild", vec![host("*.example.com")]),
        to("exact", vec![host("example.com")]),
    ]);
    let long = format!("{}.example.com", "a".repeat(1000));
    assert_eq!(routed(&r, &on_host(&long)), Some("wild"));
    // As long as the index's buffer plus one: the suffix starts past it.
    let edge = format!("{}.example.com", "b".repeat(MAX_HOST_KEY + 1 - 12));
    assert_eq!(edge.len(), MAX_HOST_KEY + 1);
    assert_eq!(routed(&r, &on_host(&edge)), Some("wild"));
}

mod equivalence {
    //! Property test: for random rule sets and random requests, the indexed
    //! [`Router::find`] picks the same rule as the first-match scan.

    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;

    /// Hosts that rules name and requests send: overlapping exact hosts,
    /// nested wildcards, a trailing dot, an IP address, upper case (which
    /// validation lower-cases), and numbered hosts for larger sets.
    fn config_host() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "example.com",
                "a.example.com",
                "b.example.com",
                "x.a.example.com",
                "example.com.",
                "other.org",
                "a.other.org",
                "localhost",
                "127.0.0.1",
                "A.Example.COM",
                "*.example.com",
                "*.a.example.com",
                "*.com",
                "*.org",
                "*.other.org",
                "*.EXAMPLE.com",
            ])
            .prop_map(String::from),
            (0u32..40).prop_map(|n| format!("h{n}.example.com")),
            (0u32..10).prop_map(|n| format!("*.h{n}.example.com")),
        ]
    }

    fn route_match() -> impl Strategy<Value = pb::RouteMatch> {
        let path = prop::option::of(prop::sample::select(vec![
            pb::path_match::Kind::Prefix("/".into()),
            pb::path_match::Kind::Prefix("/api".into()),
            pb::path_match::Kind::Exact("/api/x".into()),
            pb::path_match::Kind::Regex("/b.*".into()),
        ]));
        let header = prop::option::of((
            prop::sample::select(vec![exact("prod"), prefix("pr"), present()]),
            any::<bool>(),
        ));
        (
            prop::option::of(config_host()),
            path,
            prop::option::of(prop::sample::select(vec!["GET", "POST"])),
            header,
        )
            .prop_map(|(host, path, method, header)| pb::RouteMatch {
                host: host.unwrap_or_default(),
                path: path.map(|kind| pb::PathMatch { kind: Some(kind) }),
                method: method.unwrap_or_default().into(),
                headers: header
                    .map(|(value, invert)| {
                        vec![pb::HeaderMatch {
                            name: "x-env".into(),
                            value: Some(pb::StringMatch { kind: Some(value) }),
                            invert,
                        }]
                    })
                    .unwrap_or_default(),
                ..Default::default()
            })
    }

    fn rule() -> impl Strategy<Value = pb::RouteRule> {
        // Mostly one match, as a virtual host is; sometimes none (a
        // catch-all) or several.
        prop_oneof![
            1 => Just(vec![]),
            6 => vec(route_match(), 1..=1),
            2 => vec(route_match(), 2..=3),
        ]
        .prop_map(|matches| to("svc", matches))
    }

    /// Where a request carries its host.
    #[derive(Debug, Clone)]
    enum HostIn {
        Header(String),
        /// An HTTP/2 request: `:authority` only.
        Authority(String),
        Nowhere,
    }

    #[derive(Debug, Clone)]
    struct Request {
        method: &'static str,
        host: HostIn,
        path: &'static str,
        env: Option<&'static str>,
    }

    fn request_host() -> impl Strategy<Value = String> {
        let host = prop_oneof![
            4 => config_host().prop_map(|h| h.trim_start_matches("*.").to_owned()),
            4 => config_host().prop_map(|h| match h.strip_prefix("*.") {
                Some(suffix) => format!("z.{suffix}"),
                None => h,
            }),
            1 => prop::sample::select(vec![
                "com", ".example.com", "zzz.example.com", "y.x.a.example.com", "[::1]",
                "example.com..", "",
            ])
            .prop_map(String::from),
        ];
        // Random upper case and an optional port.
        (host, any::<u64>(), prop::option::of(1u16..)).prop_map(|(h, case, port)| {
            let h: String = h
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if case >> (i % 64) & 1 == 1 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            match port {
                Some(p) => format!("{h}:{p}"),
                None => h,
            }
        })
    }

    fn request() -> impl Strategy<Value = Request> {
        (
            prop::sample::select(vec!["GET", "POST", "PUT"]),
            prop_oneof![
                6 => request_host().prop_map(HostIn::Header),
                2 => request_host()
                    .prop_filter("an authority", |h| !h.is_empty() && !h.starts_with('.'))
                    .prop_map(HostIn::Authority),
                1 => Just(HostIn::Nowhere),
            ],
            prop::sample::select(vec!["/", "/api", "/api/x", "/b", "/bx/y"]),
            prop::option::of(prop::sample::select(vec!["prod", "dev"])),
        )
            .prop_map(|(method, host, path, env)| Request {
                method,
                host,
                path,
                env,
            })
    }

    fn parts(r: &Request) -> Option<Parts> {
        let uri = match &r.host {
            HostIn::Authority(h) => format!("http://{h}{}", r.path),
            _ => r.path.to_owned(),
        };
        let mut b = http::Request::builder().method(r.method).uri(uri);
        if let HostIn::Header(h) = &r.host {
            b = b.header("host", h.as_str());
        }
        if let Some(env) = r.env {
            b = b.header("x-env", env);
        }
        // A host the URI grammar refuses is no request the proxy sees.
        Some(b.body(()).ok()?.into_parts().0)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn indexed_find_agrees_with_first_match(
            rules in vec(rule(), 1..60),
            requests in vec(request(), 1..30),
        ) {
            let r = router(rules);
            for request in &requests {
                let Some(parts) = parts(request) else { continue };
                let view = RequestView::new(&parts);
                prop_assert_eq!(found(&r, &view), first_match(&r, &view), "{:?}", request);
            }
        }
    }
}
