//! `yardctl apply`: every manifest given, in one all-or-nothing Apply.

use serde_yaml_ng::Value;
use switchyard::pb;
use switchyard::resource::{Kind, Ref};

use super::{Console, batch_error};
use crate::cli::{ApplyArgs, Output};
use crate::client::{Target, request};
use crate::error::Error;
use crate::manifest::{self, kind_title};
use crate::mapping::{enum_value_name, mapping};

/// Reads the manifests (nothing is sent if one does not parse), applies
/// them in one batch and prints what happened to each.
pub async fn run(
    target: &Target,
    output: Option<Output>,
    args: ApplyArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let manifests = manifest::load(&args.files)?;
    let mut client = target.connect().await?;
    let items = manifests
        .iter()
        .map(|m| pb::ApplyItem {
            resource: Some(m.resource.clone()),
            expected_revision: None,
        })
        .collect();
    let response = client
        .apply(request(pb::ApplyRequest {
            items,
            dry_run: args.dry_run,
        }))
        .await
        .map_err(|status| {
            let items: Vec<_> = manifests
                .iter()
                .map(|m| (&m.target, Some(&m.source)))
                .collect();
            batch_error(&status, &items)
        })?
        .into_inner();

    let results: Vec<(Ref, String, u64)> = response
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
            let doc = summary(response.revision, args.dry_run, &results);
            let text = if format == Output::Yaml {
                manifest::to_yaml(&[doc])
            } else {
                manifest::to_json(&doc) + "\n"
            };
            console.out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

/// The outcome as a document: the store's revision and one entry per
/// resource.
fn summary(revision: u64, dry_run: bool, results: &[(Ref, String, u64)]) -> Value {
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
        ("revision", Value::Number(revision.into())),
        ("dryRun", Value::Bool(dry_run)),
        ("results", Value::Sequence(results)),
    ]))
}
