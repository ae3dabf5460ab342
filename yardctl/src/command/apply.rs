//! `yardctl apply`: every manifest given, in one all-or-nothing Apply when
//! they fit one request; otherwise in ordered batches, each all-or-nothing.
//!
//! A request holds at most [`MAX_BATCH`] items and must fit the control
//! plane's message limit. Manifests that do not fit are sent in batches,
//! dependencies first (services, then endpoints, routes and listeners; file
//! order within a kind), so each batch refers only to what is stored or in
//! it. `--atomic` and `--dry-run` refuse what does not fit one request.

use prost::Message;
use serde_yaml_ng::Value;
use switchyard::pb;
use switchyard::resource::{Kind, Ref};
use switchyard::validate::MAX_BATCH;

use super::{Console, batch_error, write_document};
use crate::cli::{ApplyArgs, Output};
use crate::client::{Client, Target, request};
use crate::error::{Error, request_limit};
use crate::manifest::{self, Manifest, kind_title};
use crate::mapping::{enum_value_name, mapping};

/// What a batch is cut to while the control plane's limit is unknown: its
/// default request limit (4 MiB).
const DEFAULT_REQUEST_BYTES: usize = 4 << 20;

/// What the request around the items takes beyond their own bytes (the
/// `dry_run` flag), with room to spare.
const REQUEST_OVERHEAD: usize = 64;

/// What the Apply (or Applies) answered for each manifest, in manifest
/// order.
struct Applied {
    /// The store's revision after the last batch.
    revision: u64,
    results: Vec<pb::ApplyResult>,
    /// How many requests it took.
    batches: usize,
}

/// Reads the manifests (nothing is sent if one does not parse), applies
/// them and prints what happened to each.
pub async fn run(
    target: &Target,
    output: Option<Output>,
    args: ApplyArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let manifests = manifest::load(&args.files)?;
    let one_request = args.atomic || args.dry_run;
    if one_request && manifests.len() > MAX_BATCH {
        let why = if args.atomic {
            "--atomic applies all or nothing in one request: split the manifests, or leave \
             --atomic out to apply them in ordered batches, each all-or-nothing"
        } else {
            "a dry run checks one request: split the manifests"
        };
        return Err(Error::usage(format_args!(
            "{} resources do not fit one request (at most {MAX_BATCH} per Apply); {why}",
            manifests.len()
        )));
    }
    let mut client = target.connect().await?;
    let all: Vec<&Manifest> = manifests.iter().collect();
    let applied = if manifests.len() > MAX_BATCH {
        in_batches(&mut client, &manifests, DEFAULT_REQUEST_BYTES, console).await?
    } else {
        match send(&mut client, &all, args.dry_run).await {
            Ok(response) => Applied {
                revision: response.revision,
                results: response.results,
                batches: 1,
            },
            // Nothing was written: split by the limit the control plane
            // named, unless one request was asked for.
            Err(status) => match request_limit(&status) {
                Some(limit) if !one_request && limit > 0 && manifests.len() > 1 => {
                    in_batches(&mut client, &manifests, limit, console).await?
                }
                _ => return Err(refused(&status, &all)),
            },
        }
    };

    let results: Vec<(Ref, String, u64)> = applied
        .results
        .iter()
        .zip(&manifests)
        .map(|(r, m)| {
            let target = r
                .r#ref
                .as_ref()
                .and_then(|r| Kind::from_pb(r.kind).map(|k| Ref::new(k, r.name.clone())))
                .unwrap_or_else(|| m.target.clone());
            let action = enum_value_name("switchyard.v1.ApplyAction", r.action);
            (target, action, r.revision)
        })
        .collect();
    match output.unwrap_or(Output::Table) {
        Output::Table => {
            let suffix = if args.dry_run { " (dry run)" } else { "" };
            for (target, action, _) in &results {
                writeln!(console.out, "{target} {action}{suffix}")?;
            }
        }
        Output::Name => {
            for (target, _, _) in &results {
                writeln!(console.out, "{target}")?;
            }
        }
        format @ (Output::Yaml | Output::Json) => {
            write_document(console, format, &summary(&applied, args.dry_run, &results))?;
        }
    }
    Ok(())
}

/// Applies `manifests` in ordered batches of at most [`MAX_BATCH`] items
/// and `limit` bytes each, one all-or-nothing Apply per batch, showing
/// progress. A batch refused for its size is cut again to the limit the
/// control plane names; any other refusal stops there, saying what was
/// applied before it.
async fn in_batches(
    client: &mut Client,
    manifests: &[Manifest],
    limit: usize,
    console: &mut Console<'_>,
) -> Result<Applied, Error> {
    let mut order: Vec<usize> = (0..manifests.len()).collect();
    // Stable: file order within a kind.
    order.sort_by_key(|&i| manifests[i].target.kind);
    let sizes: Vec<usize> = order.iter().map(|&i| item_size(&manifests[i])).collect();
    let mut budget = limit.saturating_sub(REQUEST_OVERHEAD).max(1);
    let mut results: Vec<Option<pb::ApplyResult>> = vec![None; manifests.len()];
    let (mut done, mut batch, mut revision) = (0, 0, 0);
    while done < order.len() {
        let plan = cut(&sizes[done..], MAX_BATCH, budget);
        let len = plan[0];
        let total = batch + plan.len();
        progress(console, batch, total, done, manifests.len())?;
        let indices = &order[done..done + len];
        let items: Vec<&Manifest> = indices.iter().map(|&i| &manifests[i]).collect();
        match send(client, &items, false).await {
            Ok(response) => {
                for (result, &i) in response.results.into_iter().zip(indices) {
                    results[i] = Some(result);
                }
                revision = response.revision;
                done += len;
                batch += 1;
                if !console.tty {
                    writeln!(
                        console.err,
                        "batch {batch} of {total}: {len} resources applied, revision {revision}"
                    )?;
                }
            }
            Err(status) => {
                let smaller = request_limit(&status)
                    .map(|l| l.saturating_sub(REQUEST_OVERHEAD))
                    .filter(|&b| b > 0 && b < budget && len > 1);
                if let Some(smaller) = smaller {
                    budget = smaller;
                    continue;
                }
                clear_progress(console)?;
                let error = refused(&status, &items);
                let before = if batch == 0 {
                    "nothing was written".to_string()
                } else {
                    format!(
                        "batches 1 to {batch} ({done} of {} resources) were applied, through \
                         revision {revision}",
                        manifests.len()
                    )
                };
                return Err(Error {
                    message: format!(
                        "batch {} of {total} was refused and nothing after it was sent; {before}: {}",
                        batch + 1,
                        error.message
                    ),
                    ..error
                });
            }
        }
    }
    clear_progress(console)?;
    Ok(Applied {
        revision,
        results: results
            .into_iter()
            .map(|r| r.expect("every batch answered"))
            .collect(),
        batches: batch,
    })
}

/// The lengths of consecutive batches of items of `sizes` bytes: at most
/// `max_items` items and `budget` bytes each (an item over the budget goes
/// alone, for the control plane to refuse with its limit).
pub fn cut(sizes: &[usize], max_items: usize, budget: usize) -> Vec<usize> {
    let mut batches = Vec::new();
    let (mut len, mut bytes) = (0, 0);
    for &size in sizes {
        if len > 0 && (len == max_items || bytes + size > budget) {
            batches.push(len);
            (len, bytes) = (0, 0);
        }
        len += 1;
        bytes += size;
    }
    if len > 0 {
        batches.push(len);
    }
    batches
}

/// The bytes `manifest` adds to an ApplyRequest: the item as a repeated
/// field, holding the resource as a field.
fn item_size(manifest: &Manifest) -> usize {
    let field = |len: usize| 1 + prost::encoding::encoded_len_varint(len as u64) + len;
    field(field(manifest.resource.encoded_len()))
}

/// Where a batched apply is: redrawn in place on a terminal.
fn progress(
    console: &mut Console<'_>,
    batch: usize,
    total: usize,
    done: usize,
    all: usize,
) -> Result<(), Error> {
    if console.tty {
        write!(
            console.out,
            "\r\x1b[2Kapplying batch {} of {total}: {done} of {all} resources applied",
            batch + 1
        )?;
        console.out.flush()?;
    }
    Ok(())
}

fn clear_progress(console: &mut Console<'_>) -> Result<(), Error> {
    if console.tty {
        write!(console.out, "\r\x1b[2K")?;
    }
    Ok(())
}

/// Applies `manifests` in one request (or checks them, with `dry_run`).
pub async fn send(
    client: &mut Client,
    manifests: &[&Manifest],
    dry_run: bool,
) -> Result<pb::ApplyResponse, tonic::Status> {
    let items = manifests
        .iter()
        .map(|m| pb::ApplyItem {
            resource: Some(m.resource.clone()),
            expected_revision: None,
        })
        .collect();
    let response = client
        .apply(request(pb::ApplyRequest { items, dry_run }))
        .await?;
    Ok(response.into_inner())
}

/// A refused Apply of `manifests`: each problem named by its resource,
/// file and field.
pub fn refused(status: &tonic::Status, manifests: &[&Manifest]) -> Error {
    let items: Vec<_> = manifests
        .iter()
        .map(|m| (&m.target, Some(&m.source)))
        .collect();
    batch_error(status, &items)
}

/// The outcome as a document: the store's revision, how many requests it
/// took, and one entry per resource.
fn summary(applied: &Applied, dry_run: bool, results: &[(Ref, String, u64)]) -> Value {
    let results = results
        .iter()
        .map(|(target, action, revision)| {
            Value::Mapping(mapping([
                ("kind", Value::String(kind_title(target.kind).into())),
                ("name", Value::String(target.name.clone())),
                ("action", Value::String(action.clone())),
                ("revision", Value::Number((*revision).into())),
            ]))
        })
        .collect();
    Value::Mapping(mapping([
        ("revision", Value::Number(applied.revision.into())),
        ("dryRun", Value::Bool(dry_run)),
        ("batches", Value::Number(applied.batches.into())),
        ("results", Value::Sequence(results)),
    ]))
}

#[cfg(test)]
mod tests;
