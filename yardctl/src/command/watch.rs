//! `yardctl watch`: every committed change, one line each (with who made
//! it and from where, when the control plane tells), until Ctrl-C.

use serde_yaml_ng::Value;
use switchyard::pb;
use switchyard::resource::{Kind, Ref};

use super::Console;
use crate::cli::{Output, WatchArgs, kind_arg};
use crate::client::{self, Target};
use crate::error::Error;
use crate::manifest::{self, kind_title};
use crate::mapping::{enum_value_name, mapping};

/// Follows the change stream until Ctrl-C (exit 0) or until the control
/// plane ends it (exit 3).
pub async fn run(
    target: &Target,
    output: Option<Output>,
    args: WatchArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let mut kinds = args
        .kinds
        .iter()
        .map(|k| kind_arg(k))
        .collect::<Result<Vec<Kind>, _>>()?;
    kinds.sort();
    kinds.dedup();
    let output = output.unwrap_or(Output::Table);
    let mut client = target.connect().await?;
    let from_revision = match args.from_revision {
        Some(r) => r,
        None => client::current_revision(&mut client).await?,
    };
    let mut stream = client
        .watch(pb::WatchRequest {
            from_revision,
            kinds: kinds.iter().map(|k| k.to_pb() as i32).collect(),
        })
        .await
        .map_err(|s| Error::status(&s))?
        .into_inner();
    writeln!(
        console.err,
        "watching changes after revision {from_revision} (Ctrl-C to stop)"
    )?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut first = true;
    loop {
        let response = tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            message = stream.message() => message.map_err(|s| Error::status(&s))?,
        };
        let Some(response) = response else {
            return Err(Error::unavailable("the control plane ended the watch"));
        };
        for change in &response.changes {
            print(change, output, &mut first, console)?;
        }
        console.out.flush()?;
    }
}

fn print(
    change: &pb::Change,
    output: Output,
    first: &mut bool,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let Some(target) = target(change) else {
        return Ok(());
    };
    match output {
        Output::Table => {
            if let Some(line) = line(change) {
                writeln!(console.out, "{line}")?;
            }
        }
        Output::Name => writeln!(console.out, "{target}")?,
        Output::Json | Output::Yaml => {
            let Some(doc) = document(change) else {
                return Ok(());
            };
            if output == Output::Json {
                let line = serde_json::to_string(&doc).expect("a document serializes as JSON");
                writeln!(console.out, "{line}")?;
            } else {
                if !*first {
                    writeln!(console.out, "---")?;
                }
                console
                    .out
                    .write_all(manifest::to_yaml(&[doc]).as_bytes())?;
            }
        }
    }
    *first = false;
    Ok(())
}

/// The resource a change is about, when its kind is one this yardctl knows.
fn target(change: &pb::Change) -> Option<Ref> {
    change
        .r#ref
        .as_ref()
        .and_then(|r| Kind::from_pb(r.kind).map(|k| Ref::new(k, r.name.clone())))
}

/// A change as one line: `7        upsert  endpoint/web-1`, then who made
/// it, from where and when, as far as the control plane tells
/// (`by token/alice from 10.0.0.5:51234 at 2026-12-04T18:09:56Z`).
fn line(change: &pb::Change) -> Option<String> {
    let target = target(change)?;
    let op = enum_value_name("switchyard.v1.ChangeOp", change.op);
    let mut line = format!("{:<8} {op:<7} {target}", change.revision);
    if let Some(author) = &change.author {
        if !author.principal.is_empty() {
            line.push_str(&format!(" by {}", author.principal));
        }
        if !author.address.is_empty() {
            line.push_str(&format!(" from {}", author.address));
        }
        if let Some(at) = author.at {
            // Whole seconds: a line read by people; -o json has the rest.
            let at = prost_types::Timestamp {
                seconds: at.seconds,
                nanos: 0,
            };
            line.push_str(&format!(" at {at}"));
        }
    }
    Some(line)
}

/// A change as a document: `revision`, `op`, `kind`, `name`, then `author`
/// (who, from where, when) and the `resource` as written, when given.
fn document(change: &pb::Change) -> Option<Value> {
    let target = target(change)?;
    let mut doc = mapping([
        ("revision", Value::Number(change.revision.into())),
        (
            "op",
            Value::String(enum_value_name("switchyard.v1.ChangeOp", change.op)),
        ),
        ("kind", Value::String(kind_title(target.kind).into())),
        ("name", Value::String(target.name)),
    ]);
    if let Some(author) = &change.author {
        doc.insert("author".into(), manifest::author_document(author));
    }
    if let Some(resource) = &change.resource {
        doc.insert("resource".into(), manifest::to_document(resource));
    }
    Some(Value::Mapping(doc))
}

#[cfg(test)]
mod tests;
