//! Label selectors: `key=value,key!=value,key,!key`, all of which must hold.
//!
//! Used to filter `List` and `ListNodes`; node selectors on listeners are
//! plain equality maps and use [`matches_all`].

use std::collections::BTreeMap;
use std::fmt;

use crate::validate::{label_key, quote};

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// A parsed label selector. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector(Vec<Requirement>);

/// Why a selector could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("requirement {index} ({}): {reason}", quote(.text))]
pub struct ParseError {
    /// Zero-based position of the requirement in the comma-separated list.
    pub index: usize,
    /// The requirement's text.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Selector {
    /// Parses `key=value,key!=value,key,!key` (spaces around parts are ignored).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for (index, part) in s.split(',').enumerate() {
            let text = part.trim();
            let err = |reason: String| ParseError {
                index,
                text: text.to_owned(),
                reason,
            };
            let req = if let Some((k, v)) = text.split_once("!=") {
                Requirement::NotEquals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = text.split_once('=') {
                let v = v.strip_prefix('=').unwrap_or(v);
                Requirement::Equals(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some(k) = text.strip_prefix('!') {
                Requirement::Absent(k.trim().to_owned())
            } else {
                Requirement::Exists(text.to_owned())
            };
            let key = match &req {
                Requirement::Equals(k, _)
                | Requirement::NotEquals(k, _)
                | Requirement::Exists(k)
                | Requirement::Absent(k) => k,
            };
            label_key(key).map_err(err)?;
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether `labels` satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::Absent(k) => !labels.contains_key(k),
        })
    }

    /// Whether this is the empty selector.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::Absent(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

/// Whether `labels` contains every entry of `wanted` (an equality selector,
/// as in listener node selectors and destination subsets).
pub fn matches_all(wanted: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_requirement_kind() {
        let s = Selector::parse("app=web, tier!=db,zone,!canary").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("zone", "a")])));
        assert!(!s.matches(&labels(&[("app", "web")])), "zone missing");
        assert!(!s.matches(&labels(&[("app", "web"), ("zone", "a"), ("canary", "")])));
        assert!(!s.matches(&labels(&[("app", "web"), ("zone", "a"), ("tier", "db")])));
        assert_eq!(s.to_string(), "app=web,tier!=db,zone,!canary");
        assert!(
            Selector::parse("app==web")
                .unwrap()
                .matches(&labels(&[("app", "web")]))
        );
    }

    #[test]
    fn empty_selects_all_and_bad_keys_are_named() {
        assert!(Selector::parse("").unwrap().matches(&BTreeMap::new()));
        let err = Selector::parse("app=web,=x").unwrap_err();
        assert_eq!(err.index, 1);
        assert!(err.to_string().contains("label key must not be empty"));
    }
}
