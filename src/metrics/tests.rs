use super::*;

#[test]
fn written_text_parses_back() {
    let h = Histogram::new();
    h.observe(Duration::from_micros(300));
    h.observe(Duration::from_millis(3));
    h.observe(Duration::from_secs(60));
    let mut enc = Encoder::new();
    enc.family("up_total", Type::Counter, "Things.\nWith a \\ in help.")
        .sample(&[], 3u64)
        .sample(&[("name", "a \"quoted\"\\\nvalue")], 4u64);
    enc.family("level", Type::Gauge, "A level.")
        .sample(&[("x", "1"), ("y", "2")], -2i64)
        .sample(&[("x", "2")], 0.25f64);
    enc.family("latency_seconds", Type::Histogram, "Latency.")
        .histogram(&[("op", "read")], &h)
        .histogram(&[("op", "idle")], &Histogram::new());
    let text = enc.finish();
    let scrape = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(scrape.get("up_total", &[]), Some(3.0));
    assert_eq!(
        scrape.get("up_total", &[("name", "a \"quoted\"\\\nvalue")]),
        Some(4.0)
    );
    assert_eq!(scrape.get("level", &[("x", "1"), ("y", "2")]), Some(-2.0));
    assert_eq!(scrape.sum("level", &[]), -1.75);
    let bucket = |le| scrape.get("latency_seconds_bucket", &[("op", "read"), ("le", le)]);
    assert_eq!(bucket("0.0005"), Some(1.0));
    assert_eq!(bucket("0.001"), Some(1.0));
    assert_eq!(bucket("0.005"), Some(2.0));
    assert_eq!(bucket("10"), Some(2.0));
    assert_eq!(bucket("+Inf"), Some(3.0));
    assert_eq!(
        scrape.get("latency_seconds_count", &[("op", "read")]),
        Some(3.0)
    );
    let sum = scrape
        .get("latency_seconds_sum", &[("op", "read")])
        .unwrap();
    assert!((sum - 60.0033).abs() < 1e-9, "{sum}");
    assert_eq!(scrape.families["latency_seconds"], Type::Histogram);
    assert_eq!(h.count(), 3);
}

#[test]
fn the_parser_is_strict() {
    let bad = [
        ("up 1\n", "no TYPE"),
        ("# TYPE up gauge\nup 1", "no final newline"),
        (
            "# TYPE up gauge\nup{a=\"1\"} 1\nup{a=\"1\"} 2\n",
            "a series twice",
        ),
        ("# TYPE up gauge\nup{a=1} 1\n", "an unquoted label"),
        ("# TYPE up gauge\nup{a=\"1\",a=\"2\"} 1\n", "a label twice"),
        ("# TYPE up gauge\nup{a=\"\\t\"} 1\n", "a bad escape"),
        ("# TYPE up gauge\nup{a=\"1\"\n", "unterminated labels"),
        ("# TYPE up gauge\nup  1\n", "two spaces"),
        ("# TYPE up gauge\nup one\n", "a word as value"),
        ("# TYPE up gauge\nup 1 2 3\n", "trailing text"),
        ("# TYPE up counter\nup -1\n", "a negative counter"),
        ("# TYPE up counter\nup NaN\n", "a NaN counter"),
        ("# TYPE up summary\nup 1\n", "an unknown type"),
        ("# TYPE up gauge\n# TYPE up gauge\nup 1\n", "two TYPE lines"),
        (
            "# TYPE a gauge\na 1\n# TYPE b gauge\nb 1\na{x=\"y\"} 1\n",
            "a family split in two",
        ),
        ("# TYPE 1up gauge\n", "a bad metric name"),
        (
            "# TYPE up gauge\nup{__x=\"1\"} 1\n",
            "a reserved label name",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "decreasing buckets",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
            "no +Inf bucket",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",
            "a count unlike +Inf",
        ),
        (
            "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
            "no sum",
        ),
        ("# TYPE h histogram\nh 1\n", "a bare histogram sample"),
    ];
    for (text, what) in bad {
        assert!(parse(text).is_err(), "accepted {what}: {text:?}");
    }
    let good =
        "# HELP up Up.\n# TYPE up gauge\nup{} 1 1700000000000\n# a comment\n\nup{a=\"\"} +Inf\n";
    let scrape = parse(good).unwrap();
    assert_eq!(scrape.get("up", &[]), Some(1.0));
    assert_eq!(scrape.get("up", &[("a", "")]), Some(f64::INFINITY));
}

#[test]
fn an_observation_lands_in_the_first_bucket_that_holds_it() {
    let h = Histogram::new();
    h.observe(Duration::from_micros(500)); // exactly the first bound
    h.observe(Duration::from_micros(501));
    h.observe(Duration::ZERO);
    let counts: Vec<u64> = h
        .buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    assert_eq!(counts[..3], [2, 1, 0]);
    assert_eq!(BUCKET_NANOS.len(), BUCKETS.len());
    for (nanos, secs) in BUCKET_NANOS.iter().zip(BUCKETS) {
        assert_eq!(*nanos, (secs * 1e9).round() as u64);
    }
}
