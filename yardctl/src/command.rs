//! The commands, one module each, and what they share: the console they
//! write to and the reading of a refused batch.

pub mod apply;
pub mod delete;
pub mod diff;
pub mod get;
pub mod nodes;
pub mod rollout;
pub mod token;
pub mod watch;

use std::io::Write;

use switchyard::resource::Ref;
use tonic_types::StatusExt;

use crate::cli::{Cli, Command, Output, RolloutCommand, TokenCommand};
use crate::client::Target;
use crate::error::Error;
use crate::manifest::{self, Source, manifest_path};

/// Where a command writes.
pub struct Console<'a> {
    /// Results: tables, manifests, one line per resource.
    pub out: &'a mut dyn Write,
    /// Notices that are not results ("no resources found", where a watch
    /// starts).
    pub err: &'a mut dyn Write,
    /// Whether `out` is a terminal, where progress is redrawn in place.
    pub tty: bool,
}

impl std::fmt::Debug for Console<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Console").field("tty", &self.tty).finish()
    }
}

/// Runs the command `cli` names.
pub async fn run(cli: Cli, console: &mut Console<'_>) -> Result<(), Error> {
    // Needs no control plane: clap writes the script from the flags.
    if let Command::Completion(args) = &cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(args.shell, &mut command, "yardctl", console.out);
        return Ok(());
    }
    let target = Target::new(&cli.global)?;
    let output = cli.global.output;
    match cli.command {
        Command::Apply(args) => apply::run(&target, output, args, console).await,
        Command::Diff(args) => diff::run(&target, output, args, console).await,
        Command::Get(args) => get::run(&target, output, args, console).await,
        Command::Delete(args) => delete::run(&target, output, args, console).await,
        Command::Watch(args) => watch::run(&target, output, args, console).await,
        Command::Nodes(args) => nodes::run(&target, output, args, console).await,
        Command::Rollout(RolloutCommand::Status(args)) => {
            if output.is_some_and(|o| o != Output::Table) {
                return Err(Error::usage(
                    "rollout status prints progress only; -o is not supported",
                ));
            }
            rollout::status(&target, args, console).await
        }
        Command::Token(TokenCommand::Create(args)) => {
            token::create(&target, output, args, console).await
        }
        Command::Token(TokenCommand::List) => token::list(&target, output, console).await,
        Command::Token(TokenCommand::Revoke(args)) => {
            token::revoke(&target, output, args, console).await
        }
        Command::Completion(_) => unreachable!("answered above"),
    }
}

/// `doc` on `console.out` as YAML, or as indented JSON for any other
/// `format`.
pub fn write_document(
    console: &mut Console<'_>,
    format: Output,
    doc: &serde_yaml_ng::Value,
) -> Result<(), Error> {
    let text = if format == Output::Yaml {
        manifest::to_yaml(std::slice::from_ref(doc))
    } else {
        manifest::to_json(doc) + "\n"
    };
    console.out.write_all(text.as_bytes())?;
    Ok(())
}

/// One line for a refused Apply or Delete whose items are `items`, in
/// request order: each problem the server reports for `items[i]` is told
/// as the resource, where it was declared, and the field in manifest terms
/// (`endpoint/web-3 (web.yaml, document 2): spec.port: port 0 is not in
/// 1..65535`).
pub fn batch_error(status: &tonic::Status, items: &[(&Ref, Option<&Source>)]) -> Error {
    let violations = status
        .get_details_bad_request()
        .map(|b| b.field_violations)
        .unwrap_or_default();
    if violations.is_empty() {
        return Error::status(status);
    }
    let mut parts: Vec<String> = Vec::new();
    let mut last_item = None;
    for v in violations {
        // The server's note that it left problems out ("and 12 more
        // problems not shown") names no field.
        if v.field.is_empty() {
            parts.push(v.description);
            last_item = None;
            continue;
        }
        let Some((i, rest)) = item_of(&v.field).filter(|(i, _)| *i < items.len()) else {
            parts.push(format!("{}: {}", v.field, v.description));
            last_item = None;
            continue;
        };
        let (target, source) = items[i];
        let path = field_in_manifest(rest, target);
        let problem = if path.is_empty() {
            v.description
        } else {
            format!("{path}: {}", v.description)
        };
        match parts.last_mut() {
            Some(part) if last_item == Some(i) => {
                part.push_str("; ");
                part.push_str(&problem);
            }
            _ => parts.push(match source {
                Some(source) => format!("{target} ({source}): {problem}"),
                None => format!("{target}: {problem}"),
            }),
        }
        last_item = Some(i);
    }
    Error::rejected(parts.join("; "))
}

/// `items[3].resource.endpoint.port` → `(3, "resource.endpoint.port")`.
fn item_of(field: &str) -> Option<(usize, &str)> {
    let rest = field.strip_prefix("items[")?;
    let (index, rest) = rest.split_once(']')?;
    Some((index.parse().ok()?, rest.trim_start_matches('.')))
}

/// The server's path inside an item (`resource.endpoint.hash_policy`) as a
/// manifest path (`spec.hashPolicy`); empty for the item as a whole.
fn field_in_manifest(rest: &str, target: &Ref) -> String {
    let Some(inside) = rest.strip_prefix("resource") else {
        return String::new();
    };
    let inside = inside.trim_start_matches('.');
    let inside = inside
        .strip_prefix(target.kind.as_str())
        .unwrap_or(inside)
        .trim_start_matches('.');
    if inside.is_empty() {
        return String::new();
    }
    manifest_path(&camel_case(inside))
}

/// `health_check.expected_status_min` → `healthCheck.expectedStatusMin`.
fn camel_case(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut upper = false;
    for c in path.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests;
