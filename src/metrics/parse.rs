//! A strict parser of the text exposition format, for tests: whatever the
//! encoder writes must parse, and the samples can be read back by name and
//! labels. Not part of the daemons (behind the `test-util` feature).

use std::collections::{BTreeMap, BTreeSet};

use super::Type;

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
