//! Collecting validation problems, each tied to the path of the field at fault.
//!
//! Validation never stops at the first problem: an operator fixing a manifest
//! wants to see every mistake at once, so checks push [`Violation`]s into a
//! [`Violations`] list and the caller turns a non-empty list into an
//! [`Invalid`] error.

use std::fmt;
use std::time::Duration;

/// Largest accepted name (resources, nodes), as for DNS names.
pub const MAX_NAME_LEN: usize = 253;
/// Most labels (or selector entries, or subset entries) one object may carry.
pub const MAX_LABELS: usize = 64;
/// Largest label key.
pub const MAX_LABEL_KEY_LEN: usize = 128;
/// Largest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// Largest regular expression source.
pub const MAX_REGEX_LEN: usize = 1024;
/// Largest compiled regular expression, in bytes (bounds memory and match time).
pub const MAX_REGEX_COMPILED: usize = 256 * 1024;
/// Most rules in one route.
pub const MAX_RULES: usize = 256;
/// Most matches in one rule.
pub const MAX_MATCHES: usize = 32;
/// Most header or query matches in one match.
pub const MAX_FIELD_MATCHES: usize = 32;
/// Most destinations in one rule.
pub const MAX_DESTINATIONS: usize = 64;
/// Largest endpoint or destination weight.
pub const MAX_WEIGHT: u32 = 10_000;
/// Most items in one Apply or Delete.
pub const MAX_BATCH: usize = 1000;
/// Largest free-form string (paths, header values, host names).
pub const MAX_STRING_LEN: usize = 4096;

/// One problem with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Path of the field, e.g. `items[0].route.rules[2].matches[0].path.regex`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Every problem found in one request; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// The problems, in the order they were found.
    pub violations: Vec<Violation>,
}

impl Invalid {
    /// A single problem.
    pub fn one(field: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            violations: vec![Violation {
                field: field.into(),
                reason: reason.to_string(),
            }],
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        Ok(())
    }
}

/// An accumulator of [`Violation`]s.
#[derive(Debug, Default)]
pub struct Violations(Vec<Violation>);

impl Violations {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `field` is wrong because of `reason`.
    pub fn push(&mut self, field: impl Into<String>, reason: impl fmt::Display) {
        self.0.push(Violation {
            field: field.into(),
            reason: reason.to_string(),
        });
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds every violation of `other`.
    pub fn extend(&mut self, other: Invalid) {
        self.0.extend(other.violations);
    }

    /// `Ok(value)` when nothing was recorded, else every violation.
    pub fn finish<T>(self, value: T) -> Result<T, Invalid> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(Invalid { violations: self.0 })
        }
    }
}

/// Joins a parent path and a field name: `join("a.b", "c")` is `a.b.c`.
pub fn join(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    }
}

/// Most characters of a client's value quoted back in an error message.
pub const MAX_ECHO: usize = 64;

/// `value` as an error message may quote it: whole when it has at most
/// `max` characters, otherwise its first `max` characters, an ellipsis and
/// its length, so that no error grows with its input.
pub fn truncate(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(max) {
        None => value.into(),
        Some((end, _)) => format!("{}… ({} bytes)", &value[..end], value.len()).into(),
    }
}

/// Checks a resource or node name: 1 to 253 characters, lowercase letters,
/// digits, `-`, `.` and `_`, starting and ending with a letter or digit.
pub fn name(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.push(field, "must not be empty");
        return;
    }
    if value.len() > MAX_NAME_LEN {
        v.push(field, format_args!("longer than {MAX_NAME_LEN} characters"));
        return;
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let first = value.chars().next().unwrap_or('-');
    let last = value.chars().last().unwrap_or('-');
    if !ok_char(first)
        || !ok_char(last)
        || !value
            .chars()
            .all(|c| ok_char(c) || matches!(c, '-' | '.' | '_'))
    {
        v.push(
            field,
            format_args!(
                "invalid name {value:?}: use lowercase letters, digits, '-', '.', '_', \
                 starting and ending with a letter or digit"
            ),
        );
    }
}

/// Checks a reference to another resource: a valid name.
pub fn reference(v: &mut Violations, field: &str, value: &str) {
    name(v, field, value)
}

/// Checks a label map (also used for selectors and subsets).
pub fn labels<'a>(
    v: &mut Violations,
    field: &str,
    labels: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) {
    if labels.len() > MAX_LABELS {
        v.push(field, format_args!("more than {MAX_LABELS} entries"));
        return;
    }
    for (key, value) in labels {
        let at = format!("{field}[{key:?}]");
        if let Err(reason) = label_key(key) {
            v.push(&at, reason);
        }
        if value.len() > MAX_LABEL_VALUE_LEN {
            v.push(
                &at,
                format_args!("value longer than {MAX_LABEL_VALUE_LEN} characters"),
            );
        } else if value.chars().any(char::is_control) {
            v.push(&at, "value contains a control character");
        }
    }
}

/// Checks one label key: 1 to 128 characters of letters, digits, `-`, `_`,
/// `.`, `/`, starting and ending with a letter or digit.
pub fn label_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("label key must not be empty".into());
    }
    if key.len() > MAX_LABEL_KEY_LEN {
        return Err(format!(
            "label key longer than {MAX_LABEL_KEY_LEN} characters"
        ));
    }
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = key.starts_with(alnum)
        && key.ends_with(alnum)
        && key
            .chars()
            .all(|c| alnum(c) || matches!(c, '-' | '_' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid label key {key:?}: use letters, digits, '-', '_', '.', '/', \
             starting and ending with a letter or digit"
        ))
    }
}

/// Checks a port number (1..=65535) and narrows it.
pub fn port(v: &mut Violations, field: &str, value: u32) -> u16 {
    match u16::try_from(value) {
        Ok(p) if p != 0 => p,
        _ => {
            v.push(field, format_args!("port {value} is not in 1..65535"));
            0
        }
    }
}

/// Checks that `value` lies in `lo..=hi`; `0` is replaced by `default` first
/// (proto3 cannot tell "unset" from zero).
pub fn in_range(
    v: &mut Violations,
    field: &str,
    value: u32,
    default: u32,
    lo: u32,
    hi: u32,
) -> u32 {
    let value = if value == 0 { default } else { value };
    if !(lo..=hi).contains(&value) {
        v.push(field, format_args!("{value} is not in {lo}..{hi}"));
    }
    value
}

/// Converts a protobuf duration, checking it lies in `lo..=hi`; an absent one
/// becomes `default`.
pub fn duration(
    v: &mut Violations,
    field: &str,
    value: Option<&prost_types::Duration>,
    default: Duration,
    lo: Duration,
    hi: Duration,
) -> Duration {
    let Some(d) = value else { return default };
    let parsed = if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        None
    } else {
        Some(Duration::new(d.seconds as u64, d.nanos as u32))
    };
    match parsed {
        None => {
            v.push(field, "must be a non-negative duration");
            default
        }
        Some(d) if d < lo || d > hi => {
            v.push(
                field,
                format_args!("{d:?} is not between {lo:?} and {hi:?}"),
            );
            default
        }
        Some(d) => d,
    }
}

/// Checks a free-form string's size and that it has no control characters.
pub fn text(v: &mut Violations, field: &str, value: &str) {
    if value.len() > MAX_STRING_LEN {
        v.push(
            field,
            format_args!("longer than {MAX_STRING_LEN} characters"),
        );
    } else if value.chars().any(char::is_control) {
        v.push(field, "contains a control character");
    }
}

/// Compiles a regular expression that must match a whole value.
pub fn regex(v: &mut Violations, field: &str, source: &str) -> Option<regex::Regex> {
    if source.is_empty() {
        v.push(field, "must not be empty");
        return None;
    }
    if source.len() > MAX_REGEX_LEN {
        v.push(
            field,
            format_args!("longer than {MAX_REGEX_LEN} characters"),
        );
        return None;
    }
    match regex::RegexBuilder::new(&format!("^(?:{source})$"))
        .size_limit(MAX_REGEX_COMPILED)
        .build()
    {
        Ok(re) => Some(re),
        Err(e) => {
            // The regex crate's message spans several lines; keep it on one.
            let msg = e
                .to_string()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            v.push(field, format_args!("invalid regex: {msg}"));
            None
        }
    }
}

/// Checks an HTTP header name: an RFC 9110 token.
pub fn header_name(v: &mut Violations, field: &str, value: &str) {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if value.is_empty() {
        v.push(field, "must not be empty");
    } else if value.len() > 256 || !value.chars().all(token) {
        v.push(field, format_args!("invalid header name {value:?}"));
    }
}

/// Checks a DNS host name or IP address.
pub fn host(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.push(field, "must not be empty");
        return;
    }
    if value.parse::<std::net::IpAddr>().is_ok() {
        return;
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if value.len() > MAX_NAME_LEN || !value.trim_end_matches('.').split('.').all(label_ok) {
        v.push(
            field,
            format_args!("{value:?} is neither an IP address nor a valid host name"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let mut v = Violations::new();
        name(&mut v, "a", "web-1.prod_x");
        assert!(v.is_empty());
        for bad in ["", "Web", "-web", "web-", "we b", &"x".repeat(254)] {
            let mut v = Violations::new();
            name(&mut v, "f", bad);
            let err = v.finish(()).unwrap_err();
            assert_eq!(err.violations[0].field, "f", "{bad:?}");
        }
    }

    #[test]
    fn regex_must_match_whole_value() {
        let mut v = Violations::new();
        let re = regex(&mut v, "r", "/api/v[0-9]+").unwrap();
        assert!(re.is_match("/api/v2"));
        assert!(!re.is_match("/api/v2/x"));
        let _ = regex(&mut v, "r", "(unclosed");
        let err = v.finish(()).unwrap_err();
        assert!(err.to_string().starts_with("r: invalid regex:"), "{err}");
        assert!(!err.to_string().contains('\n'));
    }

    #[test]
    fn durations() {
        let mut v = Violations::new();
        let d = duration(
            &mut v,
            "d",
            Some(&prost_types::Duration {
                seconds: 0,
                nanos: 5,
            }),
            Duration::from_secs(1),
            Duration::from_millis(1),
            Duration::from_secs(60),
        );
        assert_eq!(d, Duration::from_secs(1));
        let err = v.finish(()).unwrap_err();
        assert!(err.to_string().contains("is not between"), "{err}");
    }

    #[test]
    fn lists_every_violation() {
        let mut v = Violations::new();
        port(&mut v, "a.port", 0);
        port(&mut v, "b.port", 70000);
        let err = v.finish(()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.port: port 0 is not in 1..65535; b.port: port 70000 is not in 1..65535"
        );
    }
}
