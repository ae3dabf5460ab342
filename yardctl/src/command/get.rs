//! `yardctl get`: resources as a table, or as manifests that can be applied
//! again as they are.

use serde_yaml_ng::Value;
use switchyard::pb;
use switchyard::resource::{Kind, Ref, pb_ref};

use super::Console;
use crate::cli::{GetArgs, Output, kind_arg, plural};
use crate::client::{self, Target, request};
use crate::error::Error;
use crate::manifest;
use crate::table;

/// What `get` was asked for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// Every resource of these kinds (matching the selector).
    Kinds(Vec<Kind>),
    /// These resources.
    Named(Vec<Ref>),
}

/// Reads the resources and prints them.
pub async fn run(
    target: &Target,
    output: Option<Output>,
    args: GetArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let wanted = wanted(&args.kind, &args.names)?;
    let selector = client::selector("--selector", args.selector.as_deref())?;
    if matches!(wanted, Wanted::Named(_)) && !selector.is_empty() {
        return Err(Error::usage("give names or --selector, not both"));
    }
    let mut client = target.connect().await?;
    let (kinds, resources) = match &wanted {
        Wanted::Kinds(kinds) => {
            let mut all = Vec::new();
            for kind in kinds {
                all.extend(client::list_all(&mut client, *kind, &selector).await?.0);
            }
            (kinds.clone(), all)
        }
        Wanted::Named(refs) => {
            let mut all = Vec::new();
            for r in refs {
                let resource = client
                    .get(request(pb::GetRequest {
                        r#ref: Some(r.to_pb()),
                    }))
                    .await
                    .map_err(|s| Error::status(&s))?
                    .into_inner()
                    .resource;
                all.extend(resource);
            }
            let mut kinds: Vec<Kind> = refs.iter().map(|r| r.kind).collect();
            kinds.sort();
            kinds.dedup();
            (kinds, all)
        }
    };
    let single = matches!(&wanted, Wanted::Named(refs) if refs.len() == 1);

    match output.unwrap_or(Output::Table) {
        Output::Table => {
            let mut printed = false;
            for kind in &kinds {
                let of_kind: Vec<pb::Resource> = resources
                    .iter()
                    .filter(|r| pb_ref(r).is_some_and(|t| t.kind == *kind))
                    .cloned()
                    .collect();
                if of_kind.is_empty() {
                    continue;
                }
                if printed {
                    writeln!(console.out)?;
                }
                table::resources(*kind, &of_kind, args.show_labels).write(console.out)?;
                printed = true;
            }
            if !printed {
                let what = match kinds.as_slice() {
                    [kind] => plural(*kind),
                    _ => "resources",
                };
                writeln!(console.err, "No {what} found.")?;
            }
        }
        Output::Name => {
            for r in resources.iter().filter_map(pb_ref) {
                writeln!(console.out, "{r}")?;
            }
        }
        Output::Yaml => {
            let docs: Vec<Value> = resources.iter().map(manifest::to_document).collect();
            console.out.write_all(manifest::to_yaml(&docs).as_bytes())?;
        }
        Output::Json => {
            let mut docs: Vec<Value> = resources.iter().map(manifest::to_document).collect();
            let doc = match docs.pop() {
                Some(doc) if single => doc,
                last => Value::Sequence(docs.into_iter().chain(last).collect()),
            };
            writeln!(console.out, "{}", manifest::to_json(&doc))?;
        }
    }
    Ok(())
}

/// `KIND`, `KIND,KIND`, `all`, `KIND NAME...` or `KIND/NAME...`.
fn wanted(kind: &str, names: &[String]) -> Result<Wanted, Error> {
    if kind.contains('/') {
        return std::iter::once(kind)
            .chain(names.iter().map(String::as_str))
            .map(|t| {
                let (k, name) = t.split_once('/').ok_or_else(|| {
                    Error::usage(format_args!(
                        "`{t}`: after KIND/NAME, every argument is KIND/NAME"
                    ))
                })?;
                Ok(Ref::new(kind_arg(k)?, name))
            })
            .collect::<Result<_, _>>()
            .map(Wanted::Named);
    }
    let kinds: Vec<Kind> = if kind.eq_ignore_ascii_case("all") {
        Kind::ALL.to_vec()
    } else {
        let mut kinds = kind
            .split(',')
            .map(|k| kind_arg(k.trim()))
            .collect::<Result<Vec<_>, _>>()?;
        kinds.dedup();
        kinds
    };
    match (kinds.as_slice(), names) {
        (_, []) => Ok(Wanted::Kinds(kinds)),
        ([kind], names) => Ok(Wanted::Named(
            names.iter().map(|n| Ref::new(*kind, n.clone())).collect(),
        )),
        _ => Err(Error::usage("names can follow one kind only")),
    }
}

#[cfg(test)]
mod tests;
