//! `yardctl diff`: what an apply of the manifests would change, field by
//! field.
//!
//! The control plane checks the whole batch in a dry run, exactly as the
//! apply would (so an invalid batch fails here with the same problems), and
//! says which resources it would create, configure or leave unchanged. Each
//! resource it would configure is then read and compared with its manifest,
//! in manifest terms (`spec.port`, `labels.team`). Output-only fields
//! (`revision`, `lastChange`, an endpoint's `status`) are not compared: an
//! apply does not change them.

use serde_yaml_ng::{Mapping, Value};
use switchyard::pb;
use switchyard::resource::Ref;
use switchyard::validate::MAX_BATCH;

use super::apply::{refused, send};
use super::{Console, write_document};
use crate::cli::{DiffArgs, Output};
use crate::client::{Client, Target, request};
use crate::error::{Error, Exit};
use crate::manifest::{self, Manifest, kind_title};
use crate::mapping::mapping;

/// One field an apply would change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Where, in manifest terms: `spec.rules[0].match.path`, `labels["a.b/c"]`.
    pub path: String,
    /// The stored value; `None` when the apply adds the field.
    pub from: Option<Value>,
    /// The declared value; `None` when the apply removes the field.
    pub to: Option<Value>,
}

/// A resource an apply would create or configure.
#[derive(Debug)]
struct Difference<'a> {
    manifest: &'a Manifest,
    created: bool,
    changes: Vec<Change>,
}

/// Checks the manifests in a dry run, prints what would change, and exits
/// [`Exit::Differences`] when anything would.
pub async fn run(
    target: &Target,
    output: Option<Output>,
    args: DiffArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    // 1 means "differences" here, as for kubectl diff; a manifest that does
    // not parse must not read as one.
    let manifests = manifest::load(&args.files).map_err(|e| match e.exit {
        Exit::Usage => Error::rejected(e.message),
        _ => e,
    })?;
    if manifests.len() > MAX_BATCH {
        return Err(Error::rejected(format_args!(
            "{} resources do not fit one request (at most {MAX_BATCH} per Apply); a diff checks \
             one request: split the manifests",
            manifests.len()
        )));
    }
    let mut client = target.connect().await?;
    let all: Vec<&Manifest> = manifests.iter().collect();
    let response = send(&mut client, &all, true)
        .await
        .map_err(|status| refused(&status, &all))?;

    let mut differences = Vec::new();
    for (result, m) in response.results.iter().zip(&manifests) {
        let stored = match pb::ApplyAction::try_from(result.action) {
            Ok(pb::ApplyAction::Unchanged) => continue,
            Ok(pb::ApplyAction::Configured) => stored(&mut client, &m.target).await?,
            // Created, or an action this yardctl does not know: compare
            // with nothing, so every declared field shows.
            _ => None,
        };
        let changes = compare(
            stored.as_ref().map(compared).as_ref(),
            &compared(&m.resource),
        );
        differences.push(Difference {
            manifest: m,
            created: stored.is_none(),
            changes,
        });
    }
    print(output, &differences, manifests.len(), console)?;
    if differences.is_empty() {
        Ok(())
    } else {
        Err(Error::differences())
    }
}

/// The stored resource `target`, or `None` if it was deleted since the dry
/// run.
async fn stored(client: &mut Client, target: &Ref) -> Result<Option<pb::Resource>, Error> {
    let answer = client
        .get(request(pb::GetRequest {
            r#ref: Some(target.to_pb()),
        }))
        .await;
    match answer {
        Ok(response) => Ok(response.into_inner().resource),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
        Err(status) => Err(Error::status(&status)),
    }
}

/// `resource` as a manifest, without the fields an apply does not set.
fn compared(resource: &pb::Resource) -> Value {
    let mut doc = manifest::to_document(resource);
    if let Value::Mapping(fields) = &mut doc {
        for output_only in ["revision", "lastChange", "status"] {
            fields.shift_remove(output_only);
        }
    }
    doc
}

/// Every leaf field that differs between `stored` (absent for a resource
/// to create) and `declared`, in the declared document's order, then the
/// fields only `stored` has.
pub fn compare(stored: Option<&Value>, declared: &Value) -> Vec<Change> {
    let mut changes = Vec::new();
    walk(&mut String::new(), stored, Some(declared), &mut changes);
    changes
}

fn walk(path: &mut String, from: Option<&Value>, to: Option<&Value>, out: &mut Vec<Change>) {
    // A whole subtree added or removed is walked against an empty one of
    // its kind, so that each of its fields gets a line of its own.
    let (no_fields, no_items) = (Value::Mapping(Mapping::new()), Value::Sequence(Vec::new()));
    let hollow = |v: Option<&Value>| match v {
        Some(Value::Mapping(m)) if !m.is_empty() => Some(&no_fields),
        Some(Value::Sequence(s)) if !s.is_empty() => Some(&no_items),
        _ => None,
    };
    let len = path.len();
    match (from.or_else(|| hollow(to)), to.or_else(|| hollow(from))) {
        (Some(Value::Mapping(a)), Some(Value::Mapping(b))) => {
            let removed = a.keys().filter(|k| !b.contains_key(*k));
            for key in b.keys().chain(removed) {
                push_key(path, key);
                walk(path, a.get(key), b.get(key), out);
                path.truncate(len);
            }
        }
        (Some(Value::Sequence(a)), Some(Value::Sequence(b))) => {
            for i in 0..a.len().max(b.len()) {
                path.push_str(&format!("[{i}]"));
                walk(path, a.get(i), b.get(i), out);
                path.truncate(len);
            }
        }
        _ if from == to => {}
        _ => out.push(Change {
            path: path.clone(),
            from: from.cloned(),
            to: to.cloned(),
        }),
    }
}

/// `.key`, or `["key"]` for a key that is not a plain word (label keys
/// such as `app.kubernetes.io/name`).
fn push_key(path: &mut String, key: &Value) {
    let key = match key {
        Value::String(s) => s.clone(),
        other => compact(other),
    };
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(&key);
    } else {
        path.push_str(&format!("[{}]", compact(&Value::String(key))));
    }
}

/// A value on one line, as JSON: strings quoted, so `"80"` and `80` differ.
fn compact(value: &Value) -> String {
    serde_json::to_string(value).expect("a YAML value serializes as JSON")
}

/// One line per change: `~ path: old -> new`, `+ path: new`, `- path: old`.
pub fn change_line(change: &Change) -> String {
    match (&change.from, &change.to) {
        (Some(from), Some(to)) => {
            format!("~ {}: {} -> {}", change.path, compact(from), compact(to))
        }
        (None, Some(to)) => format!("+ {}: {}", change.path, compact(to)),
        (Some(from), None) => format!("- {}: {}", change.path, compact(from)),
        (None, None) => format!("~ {}", change.path),
    }
}

fn print(
    output: Option<Output>,
    differences: &[Difference<'_>],
    total: usize,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    match output.unwrap_or(Output::Table) {
        Output::Table => {
            for d in differences {
                let m = d.manifest;
                let action = if d.created { "created" } else { "configured" };
                writeln!(console.out, "{} {action} ({})", m.target, m.source)?;
                for change in &d.changes {
                    writeln!(console.out, "  {}", change_line(change))?;
                }
            }
            writeln!(
                console.err,
                "{} of {total} resources would change",
                differences.len()
            )?;
        }
        Output::Name => {
            for d in differences {
                writeln!(console.out, "{}", d.manifest.target)?;
            }
        }
        format @ (Output::Yaml | Output::Json) => {
            write_document(console, format, &document(differences))?;
        }
    }
    Ok(())
}

/// The differences as a document for scripts: one entry per resource that
/// would change, each field with its `path` and its `from` / `to` values
/// (left out when absent).
fn document(differences: &[Difference<'_>]) -> Value {
    let entries = differences
        .iter()
        .map(|d| {
            let target = &d.manifest.target;
            let changes = d
                .changes
                .iter()
                .map(|c| {
                    let mut entry = Mapping::new();
                    entry.insert("path".into(), Value::String(c.path.clone()));
                    if let Some(from) = &c.from {
                        entry.insert("from".into(), from.clone());
                    }
                    if let Some(to) = &c.to {
                        entry.insert("to".into(), to.clone());
                    }
                    Value::Mapping(entry)
                })
                .collect();
            let action = if d.created { "created" } else { "configured" };
            Value::Mapping(mapping([
                ("kind", Value::String(kind_title(target.kind).into())),
                ("name", Value::String(target.name.clone())),
                ("action", Value::String(action.into())),
                ("changes", Value::Sequence(changes)),
            ]))
        })
        .collect();
    Value::Mapping(mapping([("differences", Value::Sequence(entries))]))
}

#[cfg(test)]
mod tests;
