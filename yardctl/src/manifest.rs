//! Manifests: the YAML or JSON documents that declare resources, read from
//! files, directories or stdin, and written back by `get -o yaml|json`.
//!
//! ```yaml
//! kind: Endpoint          # Service, Endpoint, Route or Listener
//! name: web-1
//! labels: {version: v1}   # optional (also accepted inside spec)
//! spec:                   # every other field of the resource, camelCase
//!   service: web
//!   address: 10.0.0.1
//!   port: 8080
//! ```
//!
//! `revision`, `lastChange` (who made the write that last changed the
//! resource, from which address, and when) and, for endpoints, `status`
//! appear in what `get` prints; they are set by Switchyard and ignored when
//! applied, so printed manifests can be applied again as they are. A file holds any number of documents
//! (separated by `---`); a document may also be a list of manifests, which
//! is what `get -o json` prints for several resources.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use switchyard::pb;
use switchyard::pb::resource::Kind as Resource;
use switchyard::resource::{Kind, Ref, pb_ref};

use crate::error::Error;
use crate::mapping::{self, FieldError, enum_value_name, mapping};

/// The top-level fields of a manifest: the four an operator writes, then the
/// three `get` adds.
const TOP_LEVEL: [&str; 7] = [
    "kind",
    "name",
    "labels",
    "spec",
    "revision",
    "lastChange",
    "status",
];
/// Spec fields that belong elsewhere in a manifest. (`labels` may be given
/// in `spec` instead of at the top, as long as it is given once.)
const NOT_IN_SPEC: [&str; 2] = ["name", "revision"];
/// Endpoint fields written by Switchyard, shown under `status`.
const ENDPOINT_STATUS: [(&str, &str); 3] = [
    ("health", "health"),
    ("healthChangedAt", "changedAt"),
    ("healthReason", "reason"),
];

/// Where a manifest came from, for messages that point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The file as the operator named it, or `stdin`.
    pub file: Arc<str>,
    /// The document in the file, from 1.
    pub document: usize,
    /// The entry, from 1, when the document is a list of manifests.
    pub item: Option<usize>,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}, document {}", self.file, self.document)?;
        if let Some(item) = self.item {
            write!(f, ", item {item}")?;
        }
        Ok(())
    }
}

/// One resource read from a manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The resource, output-only fields left unset.
    pub resource: pb::Resource,
    /// What it names.
    pub target: Ref,
    /// Where it was read.
    pub source: Source,
}

/// The name a manifest gives `kind` (`Service`).
pub fn kind_title(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "Service",
        Kind::Endpoint => "Endpoint",
        Kind::Route => "Route",
        Kind::Listener => "Listener",
    }
}

/// The protobuf message of `kind`.
pub fn type_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "switchyard.v1.Service",
        Kind::Endpoint => "switchyard.v1.Endpoint",
        Kind::Route => "switchyard.v1.Route",
        Kind::Listener => "switchyard.v1.Listener",
    }
}

/// Reads every manifest in `paths`: files, directories (their `.yaml`,
/// `.yml` and `.json` files, in name order, not recursively) or `-` for
/// stdin. Fails on the first problem, naming the file, the document and the
/// field; a resource declared twice is refused too.
pub fn load(paths: &[String]) -> Result<Vec<Manifest>, Error> {
    let mut manifests = Vec::new();
    for path in paths {
        if path == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|e| Error::usage(format_args!("cannot read stdin: {e}")))?;
            manifests.extend(parse(&text, "stdin")?);
        } else if Path::new(path).is_dir() {
            for file in manifest_files(Path::new(path))? {
                manifests.extend(parse(&read(&file)?, &file)?);
            }
        } else {
            manifests.extend(parse(&read(path)?, path)?);
        }
    }
    if manifests.is_empty() {
        return Err(Error::usage(format_args!(
            "no resources in {}",
            paths
                .iter()
                .map(|p| if p == "-" { "stdin" } else { p })
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut seen: HashMap<&Ref, &Source> = HashMap::new();
    for m in &manifests {
        if let Some(first) = seen.insert(&m.target, &m.source) {
            return Err(Error::usage(format_args!(
                "{} is declared twice: {first} and {}",
                m.target, m.source
            )));
        }
    }
    Ok(manifests)
}

fn read(path: &str) -> Result<String, Error> {
    std::fs::read_to_string(path).map_err(|e| Error::usage(format_args!("cannot read {path}: {e}")))
}

fn manifest_files(dir: &Path) -> Result<Vec<String>, Error> {
    let unreadable = |e: std::io::Error| {
        Error::usage(format_args!("cannot read directory {}: {e}", dir.display()))
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        let wanted = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        );
        if wanted && path.is_file() {
            files.push(path.display().to_string());
        }
    }
    files.sort();
    Ok(files)
}

/// Parses the manifests in `text`, read from `file`.
pub fn parse(text: &str, file: &str) -> Result<Vec<Manifest>, Error> {
    let file: Arc<str> = Arc::from(file);
    let mut manifests = Vec::new();
    for (i, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let at = Source {
            file: file.clone(),
            document: i + 1,
            item: None,
        };
        let value =
            Value::deserialize(document).map_err(|e| Error::usage(format_args!("{at}: {e}")))?;
        match value {
            Value::Null => {}
            Value::Sequence(items) => {
                for (j, item) in items.into_iter().enumerate() {
                    let source = Source {
                        item: Some(j + 1),
                        ..at.clone()
                    };
                    manifests.push(one(item, source)?);
                }
            }
            value => manifests.push(one(value, at)?),
        }
    }
    Ok(manifests)
}

fn one(document: Value, source: Source) -> Result<Manifest, Error> {
    match from_document(document) {
        Ok(resource) => Ok(Manifest {
            target: pb_ref(&resource).expect("a parsed resource has a kind"),
            resource,
            source,
        }),
        Err(e) => Err(Error::usage(match e.target {
            Some(target) => format!("{target} ({source}): {}", e.field),
            None => format!("{source}: {}", e.field),
        })),
    }
}

/// Why a document is not a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentError {
    /// The resource, when the document got as far as naming it.
    pub target: Option<Ref>,
    /// The field at fault, as a path in the manifest (`spec.port`).
    pub field: FieldError,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.path, self.reason)
        }
    }
}

fn field_error(path: &str, reason: impl fmt::Display) -> FieldError {
    FieldError {
        path: path.to_string(),
        reason: reason.to_string(),
    }
}

/// Reads one manifest document into the resource it declares.
pub fn from_document(document: Value) -> Result<pb::Resource, DocumentError> {
    let untargeted = |field| DocumentError {
        target: None,
        field,
    };
    let Value::Mapping(mut top) = document else {
        return Err(untargeted(field_error(
            "",
            "a manifest is a mapping with kind, name and spec",
        )));
    };
    for key in top.keys() {
        match key.as_str() {
            Some(k) if TOP_LEVEL.contains(&k) => {}
            _ => {
                return Err(untargeted(field_error(
                    &plain(key),
                    format_args!(
                        "unknown field; a manifest has {}",
                        TOP_LEVEL[..4].join(", ")
                    ),
                )));
            }
        }
    }
    let kind = match top.shift_remove("kind") {
        Some(Value::String(k)) => parse_kind(&k).ok_or_else(|| {
            untargeted(field_error(
                "kind",
                format_args!(
                    "unknown kind `{k}`; expected one of Service, Endpoint, Route, Listener"
                ),
            ))
        })?,
        None | Some(Value::Null) => return Err(untargeted(field_error("kind", "required"))),
        Some(other) => {
            return Err(untargeted(field_error(
                "kind",
                format_args!("expected a string, found {}", plain(&other)),
            )));
        }
    };
    let name = match top.shift_remove("name") {
        Some(Value::String(n)) if !n.is_empty() => n,
        None | Some(Value::Null) => return Err(untargeted(field_error("name", "required"))),
        Some(other) => {
            return Err(untargeted(field_error(
                "name",
                format_args!("expected a non-empty string, found {}", plain(&other)),
            )));
        }
    };
    let target = Ref::new(kind, name.clone());
    let targeted = |field| DocumentError {
        target: Some(target.clone()),
        field,
    };
    let mut body = match top.shift_remove("spec") {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(spec)) => spec,
        Some(other) => {
            return Err(targeted(field_error(
                "spec",
                format_args!("expected a mapping, found {}", plain(&other)),
            )));
        }
    };
    for key in body.keys().filter_map(Value::as_str) {
        let output_only = kind == Kind::Endpoint
            && ENDPOINT_STATUS
                .iter()
                .any(|(f, _)| *f == key || snake(f) == key);
        if NOT_IN_SPEC.contains(&key) {
            return Err(targeted(field_error(
                &format!("spec.{key}"),
                "belongs at the top level of the manifest, beside kind",
            )));
        } else if output_only {
            return Err(targeted(field_error(
                &format!("spec.{key}"),
                "is set by Switchyard (shown under status); leave it out",
            )));
        }
    }
    body.insert("name".into(), Value::String(name));
    if let Some(labels) = top.shift_remove("labels").filter(|l| !l.is_null()) {
        if body.contains_key("labels") {
            return Err(targeted(field_error(
                "spec.labels",
                "labels are given twice, at the top level and in spec; keep one",
            )));
        }
        body.insert("labels".into(), labels);
    }
    let body = Value::Mapping(body);
    let resource = match kind {
        Kind::Service => mapping::from_value(body, type_name(kind)).map(Resource::Service),
        Kind::Endpoint => mapping::from_value(body, type_name(kind)).map(Resource::Endpoint),
        Kind::Route => mapping::from_value(body, type_name(kind)).map(Resource::Route),
        Kind::Listener => mapping::from_value(body, type_name(kind)).map(Resource::Listener),
    }
    .map_err(|e| {
        targeted(FieldError {
            path: manifest_path(&e.path),
            reason: e.reason,
        })
    })?;
    Ok(pb::Resource {
        kind: Some(resource),
        ..Default::default()
    })
}

/// Where a field of the resource message sits in a manifest: `name` and
/// `labels` at the top, everything else under `spec`.
pub fn manifest_path(path: &str) -> String {
    let head = path.split(['.', '[']).next().unwrap_or("");
    match head {
        "name" | "labels" => path.to_string(),
        "" => "spec".to_string(),
        _ => format!("spec.{path}"),
    }
}

/// Parses a manifest's `kind` (`Service`; any case).
pub fn parse_kind(text: &str) -> Option<Kind> {
    Kind::ALL
        .into_iter()
        .find(|k| k.as_str().eq_ignore_ascii_case(text))
}

/// The manifest that declares `resource`, with its output-only fields
/// (`revision`, `lastChange` when the control plane tells, endpoint
/// `status`) filled in.
pub fn to_document(resource: &pb::Resource) -> Value {
    let (kind, spec) = match &resource.kind {
        Some(Resource::Service(s)) => (
            Kind::Service,
            mapping::to_value(s, type_name(Kind::Service)),
        ),
        Some(Resource::Endpoint(e)) => (
            Kind::Endpoint,
            mapping::to_value(e, type_name(Kind::Endpoint)),
        ),
        Some(Resource::Route(r)) => (Kind::Route, mapping::to_value(r, type_name(Kind::Route))),
        Some(Resource::Listener(l)) => (
            Kind::Listener,
            mapping::to_value(l, type_name(Kind::Listener)),
        ),
        None => return Value::Null,
    };
    let Value::Mapping(mut spec) = spec else {
        unreachable!("a message is a mapping")
    };
    let mut doc = mapping([("kind", Value::String(kind_title(kind).into()))]);
    for key in ["name", "labels", "revision"] {
        if let Some(v) = spec.shift_remove(key) {
            doc.insert(key.into(), v);
        }
    }
    if let Some(author) = &resource.last_change {
        doc.insert("lastChange".into(), author_document(author));
    }
    let mut status = Mapping::new();
    if let Some(Resource::Endpoint(e)) = &resource.kind {
        // Shown even when unknown (the default, which the mapping leaves out).
        status.insert(
            "health".into(),
            Value::String(enum_value_name("switchyard.v1.Health", e.health)),
        );
        for (field, shown) in &ENDPOINT_STATUS[1..] {
            if let Some(v) = spec.shift_remove(*field) {
                status.insert((*shown).into(), v);
            }
        }
        spec.shift_remove("health");
    }
    doc.insert("spec".into(), Value::Mapping(spec));
    if !status.is_empty() {
        doc.insert("status".into(), Value::Mapping(status));
    }
    Value::Mapping(doc)
}

/// Who made a write, as a document: `principal`, `address` (left out for
/// the control plane's own writes) and `at` in RFC 3339.
pub fn author_document(author: &pb::ChangeAuthor) -> Value {
    mapping::to_value(author, "switchyard.v1.ChangeAuthor")
}

/// `documents` as a YAML stream, `---` between documents.
pub fn to_yaml(documents: &[Value]) -> String {
    let mut text = String::new();
    for (i, doc) in documents.iter().enumerate() {
        if i > 0 {
            text.push_str("---\n");
        }
        text.push_str(&serde_yaml_ng::to_string(doc).expect("a document serializes"));
    }
    text
}

/// `document` as indented JSON.
pub fn to_json(document: &Value) -> String {
    serde_json::to_string_pretty(document).expect("a document serializes as JSON")
}

/// A key or value as it reads in a message.
fn plain(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => serde_yaml_ng::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

#[cfg(test)]
mod tests;
