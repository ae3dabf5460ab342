//! Prometheus metrics in the text exposition format (version 0.0.4), shared
//! by the control plane and the agent: an [`Encoder`] that writes metric
//! families and a lock-free latency [`Histogram`]. A strict parser of the
//! same format, for tests, is behind the `test-util` feature
//! (`metrics::parse`).
//!
//! Both daemons keep their numbers in plain atomics where the work happens
//! and only turn them into text when scraped: counting costs a relaxed
//! atomic add, and nothing is allocated or locked on a hot path.
//!
//! Why not `prometheus-client`: its histogram takes a lock on every
//! observation and its labelled families look the label set up in a locked
//! map on every increment, where these counters are handles resolved once
//! per configuration; and its encoder writes OpenMetrics (a `# EOF` line,
//! another content type), which would change what scrapers already read.
//! Using it only to encode would still mean a collector per source written
//! against its API, for text this module writes in 200 lines.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(any(test, feature = "test-util"))]
mod parse;
#[cfg(test)]
mod tests;

#[cfg(any(test, feature = "test-util"))]
pub use parse::{ParseError, Sample, Scrape, parse};

/// The `Content-Type` of a scrape answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of the histogram buckets, in seconds: 0.5 ms to 10 s, about
/// 2.5× apart, which resolves a proxy's sub-millisecond requests as well as
/// a control plane's slow writes. Anything slower lands in `+Inf`.
pub const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// [`BUCKETS`] in nanoseconds, compared against on every observation.
const BUCKET_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// The type of a metric family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    /// Only goes up (resets when the process restarts).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations counted in [`BUCKETS`], with their sum and count.
    Histogram,
}

impl Type {
    fn as_str(self) -> &'static str {
        match self {
            Type::Counter => "counter",
            Type::Gauge => "gauge",
            Type::Histogram => "histogram",
        }
    }
}

/// A latency histogram over [`BUCKETS`]: one observation is two relaxed
/// atomic adds and a scan of 14 bounds; no lock, no allocation.
///
/// The count is not stored: it is the sum of the buckets, so a scrape that
/// races with observations still writes a `_count` equal to its `+Inf`
/// bucket (the sum may trail by the observations in flight).
#[derive(Debug)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of observations in nanoseconds (wraps after 584 years of latency).
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Counts one observation of `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let i = BUCKET_NANOS
            .iter()
            .position(|&bound| nanos <= bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// How many observations were made.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The sum of the observations, in seconds.
    pub fn sum(&self) -> f64 {
        self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
    }
}

/// A number written as a sample value.
pub trait Value: Copy {
    /// Appends the value as the text format spells it.
    fn write(self, out: &mut String);
}

impl Value for u64 {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for i64 {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for usize {
    fn write(self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// Writes metric families as text. Each family is written whole (its
/// `# HELP` and `# TYPE` lines, then all its samples) before the next starts,
/// which the format requires and the borrow of [`Family`] enforces.
#[derive(Debug, Default)]
pub struct Encoder {
    out: String,
}

impl Encoder {
    /// An empty exposition.
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Starts the family `name` of type `kind`, described by `help`.
    ///
    /// By convention counters' names end in `_total` and durations are in
    /// seconds (`_seconds`).
    pub fn family(&mut self, name: &'static str, kind: Type, help: &str) -> Family<'_> {
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        for c in help.chars() {
            match c {
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                c => self.out.push(c),
            }
        }
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind.as_str());
        self.out.push('\n');
        Family {
            out: &mut self.out,
            name,
        }
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// One family being written; see [`Encoder::family`].
#[derive(Debug)]
pub struct Family<'a> {
    out: &'a mut String,
    name: &'static str,
}

impl Family<'_> {
    /// Writes one sample of a counter or gauge with `labels`.
    pub fn sample(&mut self, labels: &[(&str, &str)], value: impl Value) -> &mut Self {
        self.line("", labels, None, value);
        self
    }

    /// Writes the buckets, sum and count of `histogram` with `labels`.
    pub fn histogram(&mut self, labels: &[(&str, &str)], histogram: &Histogram) -> &mut Self {
        let mut cumulative = 0;
        for (i, bucket) in histogram.buckets.iter().enumerate() {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            self.line("_bucket", labels, Some(le), cumulative);
        }
        self.line("_sum", labels, None, histogram.sum());
        self.line("_count", labels, None, cumulative);
        self
    }

    fn line(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<f64>, value: impl Value) {
        let out = &mut *self.out;
        out.push_str(self.name);
        out.push_str(suffix);
        if !labels.is_empty() || le.is_some() {
            out.push('{');
            for (i, (name, value)) in labels.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push_str("=\"");
                escape_label(out, value);
                out.push('"');
            }
            if let Some(le) = le {
                if !labels.is_empty() {
                    out.push(',');
                }
                out.push_str("le=\"");
                le.write(out);
                out.push('"');
            }
            out.push('}');
        }
        out.push(' ');
        value.write(out);
        out.push('\n');
    }
}

fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}
