//! Prometheus metrics in the text exposition format (version 0.0.4), shared
//! by the control plane and the agent: an [`Encoder`] that writes metric
//! families, a lock-free latency [`Histogram`], and a strict [`parse`]r of
//! the same format for tests and tools.
//!
//! Both daemons keep their numbers in plain atomics where the work happens
//! and only turn them into text when scraped: counting costs a relaxed
//! atomic add, and nothing is allocated or locked on a hot path.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[cfg(test)]
mod tests;

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

/// One sample of a parsed exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The sample's name (for histograms, with `_bucket`, `_sum` or `_count`).
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its value.
    pub value: f64,
}

/// A parsed exposition: every family's type and every sample, in order.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    /// Family name → type.
    pub families: BTreeMap<String, Type>,
    /// Every sample, in the order written.
    pub samples: Vec<Sample>,
}

impl Scrape {
    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
    }

    /// The sum of the samples `name` whose labels include `labels` (0 when
    /// there are none).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
            })
            .map(|s| s.value)
            .sum()
    }
}

/// Why an exposition does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ParseError {
    /// The line, counted from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses a text exposition strictly: stricter than Prometheus itself, so
/// that tests catch what a lenient scraper would let through.
///
/// Besides the syntax of every line (metric and label names, escapes,
/// values), it checks that every sample belongs to a family declared by an
/// earlier `# TYPE` line, that a family's samples are written together and
/// declared once, that no series appears twice, that counters are neither
/// negative nor NaN, and that each histogram has increasing bounds, growing
/// cumulative counts ending in `+Inf`, a `_sum`, and a `_count` equal to its
/// `+Inf` bucket.
pub fn parse(text: &str) -> Result<Scrape, ParseError> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err(ParseError {
            line: text.lines().count(),
            reason: "the last line does not end with a newline".into(),
        });
    }
    let mut scrape = Scrape::default();
    let mut helped = BTreeSet::new();
    // The family whose samples are being read, and every family closed.
    let mut current: Option<String> = None;
    let mut closed = BTreeSet::new();
    let mut series = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let fail = |reason: String| ParseError {
            line: i + 1,
            reason,
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut words = rest.trim_start().splitn(3, ' ');
            match words.next() {
                Some("HELP") => {
                    let name = words.next().unwrap_or("");
                    check_metric_name(name).map_err(fail)?;
                    if !helped.insert(name.to_owned()) {
                        return Err(fail(format!("second HELP for {name}")));
                    }
                }
                Some("TYPE") => {
                    let name = words.next().unwrap_or("");
                    check_metric_name(name).map_err(fail)?;
                    let kind = match words.next() {
                        Some("counter") => Type::Counter,
                        Some("gauge") => Type::Gauge,
                        Some("histogram") => Type::Histogram,
                        other => return Err(fail(format!("unknown type {other:?} for {name}"))),
                    };
                    if scrape.families.insert(name.to_owned(), kind).is_some() {
                        return Err(fail(format!("second TYPE for {name}")));
                    }
                    if let Some(previous) = current.replace(name.to_owned()) {
                        closed.insert(previous);
                    }
                }
                _ => {}
            }
            continue;
        }
        let sample = parse_sample(line).map_err(fail)?;
        let (family, kind) = family_of(&scrape.families, &sample.name)
            .ok_or_else(|| fail(format!("{} has no TYPE line before it", sample.name)))?;
        if closed.contains(family) || current.as_deref() != Some(family) {
            return Err(fail(format!(
                "{} is apart from the other samples of {family}",
                sample.name
            )));
        }
        if kind == Type::Counter && (sample.value.is_nan() || sample.value < 0.0) {
            return Err(fail(format!(
                "counter {} has value {}",
                sample.name, sample.value
            )));
        }
        if !series.insert((sample.name.clone(), sample.labels.clone())) {
            return Err(fail(format!(
                "series {}{:?} appears twice",
                sample.name, sample.labels
            )));
        }
        scrape.samples.push(sample);
    }
    check_histograms(&scrape)?;
    Ok(scrape)
}

/// The family a sample belongs to, and its type.
fn family_of<'a>(families: &'a BTreeMap<String, Type>, name: &str) -> Option<(&'a str, Type)> {
    if let Some((family, kind)) = families.get_key_value(name)
        && *kind != Type::Histogram
    {
        return Some((family, *kind));
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        match families.get_key_value(base) {
            Some((family, Type::Histogram)) => Some((family.as_str(), Type::Histogram)),
            _ => None,
        }
    })
}

fn check_metric_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
    if ok {
        Ok(())
    } else {
        Err(format!("{name:?} is not a metric name"))
    }
}

fn check_label_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok && !name.starts_with("__") {
        Ok(())
    } else {
        Err(format!("{name:?} is not a label name"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    check_metric_name(name)?;
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        rest = match body.strip_prefix('}') {
            Some(after) => after,
            None => parse_labels(body, &mut labels)?,
        };
    }
    let rest = rest
        .strip_prefix(' ')
        .ok_or("expected one space before the value")?;
    let mut words = rest.split(' ');
    let value = words.next().unwrap_or("");
    let value = match value {
        "NaN" => f64::NAN,
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .ok_or_else(|| format!("{v:?} is not a value"))?,
    };
    if let Some(timestamp) = words.next()
        && timestamp.parse::<i64>().is_err()
    {
        return Err(format!("{timestamp:?} is not a timestamp"));
    }
    if words.next().is_some() {
        return Err("trailing text after the value".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// Reads `name="value",…}` into `labels`; returns what follows the `}`.
fn parse_labels<'a>(
    mut body: &'a str,
    labels: &mut BTreeMap<String, String>,
) -> Result<&'a str, String> {
    loop {
        let eq = body.find('=').ok_or("a label needs a value")?;
        let label = &body[..eq];
        check_label_name(label)?;
        let quoted = body[eq + 1..]
            .strip_prefix('"')
            .ok_or_else(|| format!("the value of label {label} is not quoted"))?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {label}")),
                },
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated value of label {label}")),
            }
        };
        if labels.insert(label.to_owned(), value).is_some() {
            return Err(format!("label {label} appears twice"));
        }
        body = &quoted[end + 1..];
        if let Some(after) = body.strip_prefix(',') {
            body = after;
        } else if let Some(after) = body.strip_prefix('}') {
            return Ok(after);
        } else {
            return Err(format!("expected , or }} after label {label}"));
        }
    }
}

/// Checks the buckets, sum and count of every histogram series.
fn check_histograms(scrape: &Scrape) -> Result<(), ParseError> {
    let fail = |reason: String| ParseError { line: 0, reason };
    type Key = (String, BTreeMap<String, String>);
    #[derive(Default)]
    struct Series {
        buckets: Vec<(f64, f64)>,
        sum: Option<f64>,
        count: Option<f64>,
    }
    let mut all: BTreeMap<Key, Series> = BTreeMap::new();
    for s in &scrape.samples {
        let Some((family, Type::Histogram)) = family_of(&scrape.families, &s.name) else {
            continue;
        };
        let mut labels = s.labels.clone();
        let le = labels.remove("le");
        let series = all.entry((family.to_owned(), labels)).or_default();
        match &s.name[family.len()..] {
            "_bucket" => {
                let le = le.ok_or_else(|| fail(format!("{} without le", s.name)))?;
                let bound = match le.as_str() {
                    "+Inf" => f64::INFINITY,
                    v => v
                        .parse::<f64>()
                        .map_err(|_| fail(format!("{} has le={v:?}", s.name)))?,
                };
                series.buckets.push((bound, s.value));
            }
            "_sum" => series.sum = Some(s.value),
            _ => series.count = Some(s.value),
        }
    }
    for ((family, labels), series) in all {
        let name = format!("{family}{labels:?}");
        let windows = series.buckets.windows(2);
        if windows.clone().any(|w| w[0].0 >= w[1].0) {
            return Err(fail(format!("{name}: bucket bounds do not increase")));
        }
        if windows.clone().any(|w| w[0].1 > w[1].1) {
            return Err(fail(format!("{name}: bucket counts decrease")));
        }
        let Some(&(f64::INFINITY, total)) = series.buckets.last() else {
            return Err(fail(format!("{name}: no +Inf bucket")));
        };
        if series.sum.is_none() {
            return Err(fail(format!("{name}: no _sum")));
        }
        if series.count != Some(total) {
            return Err(fail(format!(
                "{name}: _count {:?} differs from the +Inf bucket {total}",
                series.count
            )));
        }
    }
    Ok(())
}
