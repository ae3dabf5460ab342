//! `yardctl delete`: named resources, or those manifests declare, in one
//! all-or-nothing Delete.

use switchyard::pb;
use switchyard::resource::Ref;

use super::{Console, batch_error};
use crate::cli::{DeleteArgs, Output, kind_arg};
use crate::client::{Target, request};
use crate::error::Error;
use crate::manifest::{self, Source};

/// Deletes the resources and prints each one's name.
pub async fn run(
    target: &Target,
    output: Option<Output>,
    args: DeleteArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let suffix = match (output.unwrap_or(Output::Table), args.dry_run) {
        (Output::Name, _) => "",
        (Output::Table, false) => " deleted",
        (Output::Table, true) => " deleted (dry run)",
        (Output::Yaml | Output::Json, _) => {
            return Err(Error::usage(
                "delete prints names only; use -o name or no -o",
            ));
        }
    };
    let targets: Vec<(Ref, Option<Source>)> = if args.files.is_empty() {
        targets(&args.targets)?
            .into_iter()
            .map(|t| (t, None))
            .collect()
    } else {
        manifest::load(&args.files)?
            .into_iter()
            .map(|m| (m.target, Some(m.source)))
            .collect()
    };
    let mut client = target.connect().await?;
    let items = targets
        .iter()
        .map(|(t, _)| pb::DeleteItem {
            r#ref: Some(t.to_pb()),
            expected_revision: None,
        })
        .collect();
    client
        .delete(request(pb::DeleteRequest {
            items,
            dry_run: args.dry_run,
        }))
        .await
        .map_err(|status| {
            let items: Vec<_> = targets.iter().map(|(t, s)| (t, s.as_ref())).collect();
            batch_error(&status, &items)
        })?;
    for (t, _) in &targets {
        writeln!(console.out, "{t}{suffix}")?;
    }
    Ok(())
}

/// `KIND NAME...` or `KIND/NAME...`.
fn targets(args: &[String]) -> Result<Vec<Ref>, Error> {
    let Some(first) = args.first() else {
        return Err(Error::usage(
            "name what to delete: KIND NAME..., KIND/NAME... or -f FILE",
        ));
    };
    if first.contains('/') {
        args.iter()
            .map(|a| {
                let (kind, name) = a.split_once('/').ok_or_else(|| {
                    Error::usage(format_args!(
                        "`{a}`: after KIND/NAME, every argument is KIND/NAME"
                    ))
                })?;
                Ok(Ref::new(kind_arg(kind)?, name))
            })
            .collect()
    } else {
        let kind = kind_arg(first)?;
        if args.len() == 1 {
            return Err(Error::usage(format_args!(
                "name the {} to delete: {first} NAME...",
                kind
            )));
        }
        Ok(args[1..]
            .iter()
            .map(|n| Ref::new(kind, n.clone()))
            .collect())
    }
}
