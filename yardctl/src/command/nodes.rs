//! `yardctl nodes`: the agents the control plane knows, and the health of
//! the endpoints each one checks.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use serde_yaml_ng::Value;
use switchyard::pb;
use switchyard::pb::resource::Kind as Resource;
use switchyard::resource::Kind;

use super::Console;
use crate::cli::{NodesArgs, Output};
use crate::client::{self, Target, request};
use crate::error::Error;
use crate::manifest;
use crate::mapping::{self, enum_value_name};
use crate::table::{self, Table, age, dash};

/// Health values in the order the summary lists them.
const HEALTH_ORDER: [pb::Health; 4] = [
    pb::Health::Healthy,
    pb::Health::Unhealthy,
    pb::Health::Draining,
    pb::Health::Unknown,
];

/// Lists the nodes, with a count of their endpoints by health.
pub async fn run(
    target: &Target,
    output: Option<Output>,
    args: NodesArgs,
    console: &mut Console<'_>,
) -> Result<(), Error> {
    let selector = client::selector("--selector", args.selector.as_deref())?;
    let mut client = target.connect().await?;
    let nodes = client
        .list_nodes(request(pb::ListNodesRequest {
            label_selector: selector,
            rollout_revision: 0,
        }))
        .await
        .map_err(|s| Error::status(&s))?
        .into_inner();
    let health = endpoint_health(&mut client).await?;
    let none = BTreeMap::new();

    match output.unwrap_or(Output::Table) {
        Output::Table => {
            if nodes.nodes.is_empty() {
                writeln!(console.err, "No nodes found.")?;
                return Ok(());
            }
            let now = SystemTime::now();
            let mut t = Table::new(&[
                "NODE",
                "CONNECTED",
                "REPLICA",
                "REVISION",
                "LAST-SEEN",
                "ENDPOINTS",
                "LAST-NACK",
                "SAVED",
            ]);
            for node in &nodes.nodes {
                t.row(vec![
                    node.id.clone(),
                    if node.connected { "yes" } else { "no" }.into(),
                    dash(&node.replica),
                    node.applied_revision.to_string(),
                    node.last_seen
                        .as_ref()
                        .map_or("-".into(), |at| age(at, now)),
                    summary(health.get(&node.id).unwrap_or(&none)),
                    node.last_nack.as_ref().map_or("-".into(), |n| {
                        let when =
                            n.at.as_ref()
                                .map_or(String::new(), |at| format!(", {} ago", age(at, now)));
                        format!("revision {}{when}: {}", n.revision, n.error)
                    }),
                    // Whether the agent could save what it serves to its
                    // disk: a restart without a control plane serves that.
                    node.persist_failure.as_ref().map_or("yes".into(), |p| {
                        let since = p
                            .since
                            .as_ref()
                            .map_or(String::new(), |at| format!(" for {}", age(at, now)));
                        format!("NO{since}: revision {}: {}", p.revision, p.error)
                    }),
                ]);
            }
            t.write(console.out)?;
        }
        Output::Name => {
            for node in &nodes.nodes {
                writeln!(console.out, "{}", node.id)?;
            }
        }
        format @ (Output::Yaml | Output::Json) => {
            let docs: Vec<Value> = nodes
                .nodes
                .iter()
                .map(|node| {
                    let mut doc = mapping::to_value(node, "switchyard.v1.Node");
                    if let Value::Mapping(fields) = &mut doc {
                        // `connected: false` is the default, which the
                        // mapping leaves out; say it.
                        fields.insert("connected".into(), Value::Bool(node.connected));
                        let counts = health.get(&node.id).unwrap_or(&none);
                        let counts = counts
                            .iter()
                            .map(|(h, n)| (Value::String(h.clone()), Value::Number((*n).into())))
                            .collect();
                        fields.insert("endpoints".into(), Value::Mapping(counts));
                    }
                    doc
                })
                .collect();
            let text = if format == Output::Yaml {
                manifest::to_yaml(&docs)
            } else {
                manifest::to_json(&Value::Sequence(docs)) + "\n"
            };
            console.out.write_all(text.as_bytes())?;
        }
    }
    Ok(())
}

/// For each node, how many of the endpoints it owns are in each health.
async fn endpoint_health(
    client: &mut client::Client,
) -> Result<HashMap<String, BTreeMap<String, u64>>, Error> {
    let (endpoints, _) = client::list_all(client, Kind::Endpoint, "").await?;
    let mut by_node: HashMap<String, BTreeMap<String, u64>> = HashMap::new();
    for resource in endpoints {
        if let Some(Resource::Endpoint(e)) = resource.kind
            && !e.node.is_empty()
        {
            *by_node
                .entry(e.node)
                .or_default()
                .entry(table::health(e.health))
                .or_default() += 1;
        }
    }
    Ok(by_node)
}

/// `2 healthy, 1 unhealthy`, or `-` for a node that owns no endpoint.
fn summary(counts: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = HEALTH_ORDER
        .iter()
        .filter_map(|h| {
            let name = enum_value_name("switchyard.v1.Health", *h as i32);
            counts.get(&name).map(|n| format!("{n} {name}"))
        })
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}
