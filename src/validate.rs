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
/// Most rules in one route: a gateway routes tens of thousands of virtual
/// hosts through one listener, and the proxy finds a request's rule by host
/// in time that does not grow with them. The request size limit (4 MiB by
/// default) may bind first: a rule of one host and one destination encodes
/// to about 33 to 60 bytes, so a 4 MiB Apply holds 70,000 to 100,000 of
/// them; larger rules need the control plane's `--max-request-size`.
pub const MAX_RULES: usize = 100_000;
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

impl Invalid {
    /// The violations as a client is told them, in order: each field and
    /// reason cut to [`MAX_VIOLATION_PART`] bytes, at most
    /// [`MAX_REPORTED`] of them, and no more than fit in `budget` bytes
    /// (each counted as its field, reason and `overhead` bytes, the text
    /// as a `grpc-message` header encodes it). The first is always
    /// reported, cut further when it alone is over the budget. Returns them
    /// and how many were left out.
    pub fn reported(&self, budget: usize, overhead: usize) -> (Vec<Violation>, usize) {
        let mut used = 0;
        let mut out = Vec::new();
        for v in &self.violations {
            let mut field = cap(&v.field, MAX_VIOLATION_PART);
            let mut reason = cap(&v.reason, MAX_VIOLATION_PART);
            let mut size = header_len(&field) + header_len(&reason) + overhead;
            if out.len() == MAX_REPORTED || (!out.is_empty() && used + size > budget) {
                break;
            }
            if size > budget {
                // Quoted values of wide characters (percent-encoded three
                // times over) can put one violation over the budget: the
                // field keeps what the reason leaves, or at least half.
                let room = budget.saturating_sub(overhead).max(2 * MIN_VIOLATION_PART);
                let field_room = room.saturating_sub(header_len(&reason)).max(room / 2);
                field = cap_encoded(&field, field_room).into_owned().into();
                reason = cap_encoded(&reason, room - header_len(&field))
                    .into_owned()
                    .into();
                size = header_len(&field) + header_len(&reason) + overhead;
            }
            used += size;
            out.push(Violation {
                field: field.into_owned(),
                reason: reason.into_owned(),
            });
        }
        let left = self.violations.len() - out.len();
        (out, left)
    }
}

/// Most bytes the text of an [`Invalid`] takes (as a `grpc-message` header
/// encodes it), before the count of the problems left out.
pub const MAX_MESSAGE: usize = 768;

/// Most bytes of the violations in the `google.rpc.BadRequest` detail of
/// an `INVALID_ARGUMENT` status (before base64): each violation counted as
/// its field, reason and about 6 bytes of protobuf framing (see
/// [`Invalid::reported`]). With the message, the whole status stays under
/// 4 KiB of metadata, half what gRPC clients accept by default.
pub const MAX_DETAILS: usize = 1280;

/// Every problem, as `field: reason` joined by `; `, as many as fit in
/// [`MAX_MESSAGE`] (see [`Invalid::reported`]), then how many more there are.
impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // "field: reason; ": 4 bytes besides the two.
        let (shown, left) = self.reported(MAX_MESSAGE, 4);
        for (i, v) in shown.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        match left {
            0 => Ok(()),
            1 => f.write_str("; and 1 more problem"),
            n => write!(f, "; and {n} more problems"),
        }
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

/// Most violations one error reports; the others are only counted.
pub const MAX_REPORTED: usize = 100;

/// Largest field path or reason, in bytes, that one reported violation
/// carries. Reasons quote values through [`quote`], which keeps them well
/// below this; the cap is the safety net for every other source.
pub const MAX_VIOLATION_PART: usize = 512;

/// `value` as an error message may quote it: whole when it has at most
/// `max` characters, otherwise its first `max` characters, an ellipsis and
/// its length, so that no error grows with its input.
pub fn truncate(value: &str, max: usize) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(max) {
        None => value.into(),
        Some((end, _)) => format!("{}… ({} bytes)", &value[..end], value.len()).into(),
    }
}

/// A client's value quoted for an error message, bounded whatever its size:
/// `"web"`, or for a value longer than [`MAX_ECHO`] characters its start,
/// an ellipsis and its length: `"aaaa…" (100000 bytes)`. Control characters
/// are escaped, so a message stays on one line.
///
/// Every message that names a client's value goes through this (or
/// [`entry`] for map keys in field paths), so that a 1 MB address cannot
/// turn into a 1 MB status that the client's metadata limit refuses.
pub fn quote(value: &str) -> Quoted<'_> {
    Quoted {
        value,
        length: true,
    }
}

/// The path of the entry `key` of the map at `field`, e.g.
/// `labels["app"]`, with the key bounded as [`quote`] does (without its
/// length: the reason says it).
pub fn entry(field: &str, key: &str) -> String {
    let key = Quoted {
        value: key,
        length: false,
    };
    format!("{field}[{key}]")
}

/// A bounded quotation of a client's value; see [`quote`].
#[derive(Debug, Clone, Copy)]
pub struct Quoted<'a> {
    value: &'a str,
    length: bool,
}

impl fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.value.char_indices().nth(MAX_ECHO) {
            None => write!(f, "{:?}", self.value),
            Some((end, _)) => {
                // Debug quotes and escapes; the ellipsis goes inside the
                // quotes, where the value was cut.
                let shown = format!("{:?}", &self.value[..end]);
                write!(f, "{}…\"", &shown[..shown.len() - 1])?;
                if self.length {
                    write!(f, " ({} bytes)", self.value.len())?;
                }
                Ok(())
            }
        }
    }
}

/// `text` cut to at most `max` bytes (on a character boundary) with an
/// ellipsis where it was cut.
fn cap(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end]).into()
}

/// Least room, as a `grpc-message` header encodes it, that a field or a
/// reason is cut to.
const MIN_VIOLATION_PART: usize = 32;

/// `text` cut (on a character boundary, with an ellipsis where it was cut)
/// to take at most `max` bytes in a `grpc-message` header.
fn cap_encoded(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if header_len(text) <= max {
        return text.into();
    }
    let room = max.saturating_sub(header_len("…"));
    let mut end = 0;
    let mut used = 0;
    for (at, c) in text.char_indices() {
        let mut bytes = [0; 4];
        let cost = header_len(c.encode_utf8(&mut bytes));
        if used + cost > room {
            break;
        }
        used += cost;
        end = at + c.len_utf8();
    }
    format!("{}…", &text[..end]).into()
}

/// Size of `text` in a `grpc-message` header, which percent-encodes every
/// byte outside printable ASCII (and `%`).
pub fn header_len(text: &str) -> usize {
    text.bytes()
        .map(|b| {
            if (0x20..0x7f).contains(&b) && b != b'%' {
                1
            } else {
                3
            }
        })
        .sum()
}

/// Checks a resource or node name: 1 to 253 characters, lowercase letters,
/// digits, `-`, `.` and `_`, starting and ending with a letter or digit.
pub fn name(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.push(field, "must not be empty");
        return;
    }
    if value.len() > MAX_NAME_LEN {
        v.push(
            field,
            format_args!(
                "must be at most {MAX_NAME_LEN} characters long, not {}",
                value.len()
            ),
        );
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
                "{} is not a valid name: use lowercase letters, digits, '-', '.' and '_', \
                 starting and ending with a letter or digit",
                quote(value)
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
        v.push(
            field,
            format_args!(
                "has {} entries; at most {MAX_LABELS} are allowed",
                labels.len()
            ),
        );
        return;
    }
    for (key, value) in labels {
        let at = entry(field, key);
        if let Err(reason) = label_key(key) {
            v.push(&at, reason);
        }
        if value.len() > MAX_LABEL_VALUE_LEN {
            v.push(
                &at,
                format_args!(
                    "label value must be at most {MAX_LABEL_VALUE_LEN} characters long, not {}",
                    value.len()
                ),
            );
        } else if value.chars().any(char::is_control) {
            v.push(&at, "label value must not contain control characters");
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
            "label key must be at most {MAX_LABEL_KEY_LEN} characters long, not {}",
            key.len()
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
            "{} is not a valid label key: use letters, digits, '-', '_', '.' and '/', \
             starting and ending with a letter or digit",
            quote(key)
        ))
    }
}

/// Checks a port number (1..=65535) and narrows it.
pub fn port(v: &mut Violations, field: &str, value: u32) -> u16 {
    match u16::try_from(value) {
        Ok(p) if p != 0 => p,
        _ => {
            v.push(field, format_args!("must be in 1..65535, not {value}"));
            0
        }
    }
}

/// Checks that `value` lies in `lo..=hi`; `0` is replaced by `default` first
/// (proto3 cannot tell "unset" from zero), and the message says so.
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
        v.push(
            field,
            format_args!("must be in {lo}..{hi} (0 or unset means {default}), not {value}"),
        );
    }
    value
}

/// Checks that `value` lies in `lo..=hi`, where zero is a value like any
/// other (no default replaces it).
pub fn within(v: &mut Violations, field: &str, value: u32, lo: u32, hi: u32) -> u32 {
    if !(lo..=hi).contains(&value) {
        v.push(field, format_args!("must be in {lo}..{hi}, not {value}"));
    }
    value
}

/// Checks that a list or map at `field` has at most `max` entries.
pub fn count(v: &mut Violations, field: &str, len: usize, max: usize) {
    if len > max {
        v.push(
            field,
            format_args!("has {len} entries; at most {max} are allowed"),
        );
    }
}

/// A duration as the proto comments write them: `50ms`, `60s`, `1h`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{d:?}")
    } else if ms == 0 {
        "0s".into()
    } else if ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
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
            v.push(
                field,
                format_args!(
                    "must be a duration between {} and {} (seconds and nanos not negative, \
                     nanos below 1e9), not {}s {}ns",
                    human(lo),
                    human(hi),
                    d.seconds,
                    d.nanos
                ),
            );
            default
        }
        Some(d) if d < lo || d > hi => {
            v.push(
                field,
                format_args!(
                    "must be between {} and {}, not {}",
                    human(lo),
                    human(hi),
                    human(d)
                ),
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
            format_args!(
                "must be at most {MAX_STRING_LEN} characters long, not {}",
                value.len()
            ),
        );
    } else if value.chars().any(char::is_control) {
        v.push(field, "must not contain control characters");
    }
}

/// Most bytes of the regex crate's explanation kept in a message.
const MAX_REGEX_REASON: usize = 160;

/// Compiles a regular expression that must match a whole value.
pub fn regex(v: &mut Violations, field: &str, source: &str) -> Option<regex::Regex> {
    if source.is_empty() {
        v.push(field, "must not be empty");
        return None;
    }
    if source.len() > MAX_REGEX_LEN {
        v.push(
            field,
            format_args!(
                "must be at most {MAX_REGEX_LEN} characters long, not {}",
                source.len()
            ),
        );
        return None;
    }
    match regex::RegexBuilder::new(&format!("^(?:{source})$"))
        .size_limit(MAX_REGEX_COMPILED)
        .build()
    {
        Ok(re) => Some(re),
        Err(e) => {
            v.push(
                field,
                format_args!(
                    "{} is not a valid regular expression: {}",
                    quote(source),
                    regex_reason(&e)
                ),
            );
            None
        }
    }
}

/// The regex crate's explanation on one bounded line.
///
/// Its syntax errors span several lines: the pattern (the one compiled,
/// with the anchors this module adds), a line of carets under the fault,
/// then `error: what is wrong`. The pattern is already quoted by the
/// caller and the carets mean nothing on one line, so only the `error:`
/// line is kept. Other errors (size limit) are one line already.
fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    let reason = text
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error:"))
        .map(str::trim)
        .unwrap_or(&text);
    let reason = match e {
        regex::Error::CompiledTooBig(_) => format!(
            "it compiles to more than {} KiB; simplify it",
            MAX_REGEX_COMPILED / 1024
        ),
        _ => reason.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    cap(&reason, MAX_REGEX_REASON).into_owned()
}

/// Largest header name.
pub const MAX_HEADER_NAME_LEN: usize = 256;

/// Whether `text` is made of RFC 9110 token characters (header names,
/// protocol names).
pub fn is_token(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
}

/// Checks an HTTP header name: an RFC 9110 token.
pub fn header_name(v: &mut Violations, field: &str, value: &str) {
    if value.is_empty() {
        v.push(field, "must not be empty");
    } else if value.len() > MAX_HEADER_NAME_LEN {
        v.push(
            field,
            format_args!(
                "a header name must be at most {MAX_HEADER_NAME_LEN} characters long, not {}",
                value.len()
            ),
        );
    } else if !is_token(value) {
        v.push(
            field,
            format_args!(
                "{} is not a valid header name: use letters, digits and !#$%&'*+-.^_`|~",
                quote(value)
            ),
        );
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
    if value.len() > MAX_NAME_LEN {
        v.push(
            field,
            format_args!(
                "must be an IP address or a host name of at most {MAX_NAME_LEN} characters, \
                 not {} characters",
                value.len()
            ),
        );
    } else if !value.trim_end_matches('.').split('.').all(label_ok) {
        v.push(
            field,
            format_args!(
                "{} is neither an IP address nor a valid host name (dot-separated labels of \
                 1 to 63 letters, digits and '-', not starting or ending with '-')",
                quote(value)
            ),
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
        assert_eq!(
            err.to_string(),
            r#"r: "(unclosed" is not a valid regular expression: unclosed group"#
        );
    }

    /// The regex crate's errors span lines and draw the pattern; what
    /// reaches a client is one bounded line, whatever the pattern.
    #[test]
    fn regex_errors_are_one_bounded_line() {
        for source in [
            "a{1000000}",
            "[z-a]",
            &format!("({})", "x".repeat(1000)),
            "\\p{Nope}",
            "(?P<1>x)",
        ] {
            let mut v = Violations::new();
            if regex(&mut v, "r", source).is_some() {
                continue;
            }
            let reason = &v.finish(()).unwrap_err().violations[0].reason;
            assert!(!reason.contains('\n'), "{reason}");
            assert!(!reason.contains('^'), "no caret drawing: {reason}");
            assert!(reason.len() < 400, "{reason}");
            assert!(
                reason.contains("is not a valid regular expression: "),
                "{reason}"
            );
        }
        let mut v = Violations::new();
        assert!(regex(&mut v, "r", "a{1000}{1000}").is_none());
        let reason = &v.finish(()).unwrap_err().violations[0].reason;
        assert!(
            reason.ends_with("it compiles to more than 256 KiB; simplify it"),
            "{reason}"
        );
    }

    #[test]
    fn quotes_are_bounded() {
        assert_eq!(quote("web").to_string(), r#""web""#);
        assert_eq!(quote("a\nb").to_string(), r#""a\nb""#);
        let long = "x".repeat(100_000);
        let q = quote(&long).to_string();
        assert_eq!(q, format!("\"{}…\" (100000 bytes)", "x".repeat(MAX_ECHO)));
        assert_eq!(
            entry("labels", &long),
            format!("labels[\"{}…\"]", "x".repeat(MAX_ECHO))
        );
        // Cut on characters, not bytes.
        let wide = "é".repeat(100);
        assert!(
            quote(&wide)
                .to_string()
                .starts_with(&format!("\"{}…\"", "é".repeat(MAX_ECHO)))
        );
    }

    #[test]
    fn a_huge_value_gives_a_small_error() {
        let key = "k".repeat(100_000);
        let host_value = "h".repeat(1 << 20);
        let labels = [(key.clone(), "v".to_string())];
        let mut v = Violations::new();
        super::labels(&mut v, "labels", labels.iter().map(|(k, v)| (k, v)));
        host(&mut v, "address", &host_value);
        name(&mut v, "name", &format!("{}!", "n".repeat(200)));
        header_name(&mut v, "header", &"é".repeat(100));
        let err = v.finish(()).unwrap_err();
        assert_eq!(err.violations.len(), 4);
        for violation in &err.violations {
            assert!(violation.field.len() < 100, "{violation}");
            assert!(violation.reason.len() < 300, "{violation}");
        }
        assert_eq!(
            err.violations[0].reason,
            "label key must be at most 128 characters long, not 100000"
        );
    }

    #[test]
    fn reports_are_capped_by_count_and_size() {
        let mut v = Violations::new();
        for i in 0..1000 {
            port(&mut v, &format!("items[{i}].port"), 0);
        }
        let err = v.finish(()).unwrap_err();
        let (shown, left) = err.reported(usize::MAX, 0);
        assert_eq!((shown.len(), left), (MAX_REPORTED, 900));
        let (shown, left) = err.reported(200, 6);
        assert_eq!(shown.len() + left, 1000);
        assert!(shown.len() < 10, "{}", shown.len());
        let text = err.to_string();
        assert!(text.len() <= MAX_MESSAGE + 40, "{}", text.len());
        assert!(
            text.ends_with(&format!(
                "; and {left} more problems",
                left = 1000 - text.matches("must be in").count()
            )),
            "{text}"
        );
        // One violation is always reported, cut if it must be.
        let one = Invalid::one("f".repeat(5000), "r".repeat(5000));
        let (shown, left) = one.reported(10, 0);
        assert_eq!(left, 0);
        assert!(
            shown[0].field.len() <= MAX_VIOLATION_PART
                && shown[0].reason.len() <= MAX_VIOLATION_PART
        );
    }

    /// A label key of wide characters, quoted in the field's path and
    /// counted in the reason, once made a message over the cap on its own
    /// (each character percent-encoded as 12 bytes).
    #[test]
    fn one_violation_of_wide_characters_stays_within_the_message_cap() {
        let key = "😀".repeat(MAX_ECHO + 1);
        let labels = [(key, "v".to_string())];
        let mut v = Violations::new();
        super::labels(
            &mut v,
            "items[0].resource.service.labels",
            labels.iter().map(|(k, v)| (k, v)),
        );
        let err = v.finish(()).unwrap_err();
        assert!(
            header_len(&err.violations[0].field) > MAX_MESSAGE,
            "a field over the cap"
        );
        let text = err.to_string();
        assert!(
            header_len(&text) <= MAX_MESSAGE,
            "{} bytes: {text}",
            header_len(&text)
        );
        assert!(
            text.starts_with("items[0].resource.service.labels[\"😀"),
            "{text}"
        );
        assert!(
            text.ends_with("…: label key must be at most 128 characters long, not 260"),
            "{text}"
        );
        let (shown, left) = err.reported(100, 6);
        assert_eq!((shown.len(), left), (1, 0));
        assert!(header_len(&shown[0].field) + header_len(&shown[0].reason) <= 94);
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
        assert_eq!(err.to_string(), "d: must be between 1ms and 60s, not 5ns");
        assert_eq!(human(Duration::from_secs(3600)), "1h");
        assert_eq!(human(Duration::from_millis(50)), "50ms");
        assert_eq!(human(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn lists_every_violation() {
        let mut v = Violations::new();
        port(&mut v, "a.port", 0);
        port(&mut v, "b.port", 70000);
        let err = v.finish(()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a.port: must be in 1..65535, not 0; b.port: must be in 1..65535, not 70000"
        );
    }
}
