//! `yardctl rollout status`: waits until every selected node has applied a
//! revision, showing how many have.
//!
//! It polls `ListNodes` with `rollout_revision`: node status is itself
//! written in batches by the control plane, so a stream would not be
//! fresher, and polling survives a control-plane restart mid-rollout.

use std::time::Duration;

use switchyard::pb;
use tokio::time::Instant;

use super::Console;
use crate::cli::RolloutStatusArgs;
use crate::client::{self, Client, Target, request};
use crate::error::{Error, Exit};

/// Time between two looks at the nodes.
const POLL: Duration = Duration::from_millis(500);
/// The least time one look at the nodes is given, even past the deadline.
const CALL_GRACE: Duration = Duration::from_secs(1);
/// Nodes named in a timeout message; the rest are counted.
const NAMED: usize = 5;

/// Waits for the rollout; exit 0 when every selected node is at the
/// revision (at once when no node is selected), 2 when a node refused it,
/// 4 on timeout.
pub async fn status(
    target: &Target,
    args: RolloutStatusArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let selector = client::selector("--selector", args.selector.as_deref())?;
    let deadline = (!args.timeout.is_zero()).then(|| Instant::now() + args.timeout);
    let mut client = target.connect().await?;
    let revision = match args.revision {
        Some(r) => r,
        None => poll(&mut client, &selector, 0, deadline).await?.revision,
    };
    let mut shown = None;
    loop {
        match poll(&mut client, &selector, revision, deadline).await {
            Ok(nodes) => {
                let total = nodes.nodes.len();
                let at = nodes.nodes_at_revision as usize;
                if shown != Some((at, total)) {
                    progress(console, at, total, revision)?;
                    shown = Some((at, total));
                }
                if at >= total {
                    end_line(console)?;
                    writeln!(console.out, "rollout of revision {revision} complete")?;
                    return Ok(());
                }
                if let Some(refused) = refusal(&nodes.nodes, revision) {
                    end_line(console)?;
                    return Err(refused);
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    end_line(console)?;
                    return Err(timed_out(&args, revision, &nodes));
                }
            }
            // A control plane restarting mid-rollout is waited for too.
            Err(e) if e.exit == Exit::Unavailable => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    end_line(console)?;
                    return Err(Error::timeout(format_args!(
                        "timed out after {} waiting for revision {revision}: {}",
                        humantime::format_duration(args.timeout),
                        e.message
                    )));
                }
            }
            Err(e) => return Err(e),
        }
        let next = Instant::now() + POLL;
        tokio::time::sleep_until(deadline.map_or(next, |d| d.min(next))).await;
    }
}

/// Ends the progress line redrawn on a terminal.
fn end_line(console: &mut Console<'_>) -> Result<(), Error> {
    if console.tty {
        writeln!(console.out)?;
    }
    Ok(())
}

async fn poll(
    client: &mut Client,
    selector: &str,
    revision: u64,
    deadline: Option<Instant>,
) -> Result<pb::ListNodesResponse, Error> {
    let call = client.list_nodes(request(pb::ListNodesRequest {
        label_selector: selector.to_string(),
        rollout_revision: revision,
    }));
    // Each look gets a moment even at the deadline, so the last one counts.
    let response = match deadline {
        Some(d) => tokio::time::timeout_at(d.max(Instant::now() + CALL_GRACE), call)
            .await
            .map_err(|_| Error::unavailable("the control plane did not answer in time"))?,
        None => call.await,
    };
    Ok(response.map_err(|s| Error::status(&s))?.into_inner())
}

fn progress(
    console: &mut Console<'_>,
    at: usize,
    total: usize,
    revision: u64,
) -> Result<(), Error> {
    let line = format!("{at}/{total} nodes at revision {revision}");
    if console.tty {
        // Carriage return and erase-line redraw the line in place.
        write!(console.out, "\r\x1b[2K{line}")?;
        console.out.flush()?;
    } else {
        writeln!(console.out, "{line}")?;
    }
    Ok(())
}

/// A node that refused the revision (or a later one) cannot reach it
/// without another change: waiting on would only end in a timeout.
fn refusal(nodes: &[pb::Node], revision: u64) -> Option<Error> {
    nodes.iter().find_map(|n| {
        let nack = n.last_nack.as_ref()?;
        (n.applied_revision < revision && nack.revision >= revision).then(|| {
            Error::rejected(format_args!(
                "node {} refused revision {}: {} (it still serves revision {})",
                n.id, nack.revision, nack.error, n.applied_revision
            ))
        })
    })
}

fn timed_out(args: &RolloutStatusArgs, revision: u64, nodes: &pb::ListNodesResponse) -> Error {
    let behind: Vec<&pb::Node> = nodes
        .nodes
        .iter()
        .filter(|n| n.applied_revision < revision)
        .collect();
    let mut named: Vec<String> = behind
        .iter()
        .take(NAMED)
        .map(|n| {
            let state = if n.connected { "" } else { ", disconnected" };
            format!("{} (at revision {}{state})", n.id, n.applied_revision)
        })
        .collect();
    if behind.len() > NAMED {
        named.push(format!("and {} more", behind.len() - NAMED));
    }
    Error::timeout(format_args!(
        "timed out after {} waiting for revision {revision}: {}/{} nodes at it; behind: {}",
        humantime::format_duration(args.timeout),
        nodes.nodes_at_revision,
        nodes.nodes.len(),
        named.join(", ")
    ))
}
