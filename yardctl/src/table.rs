//! Tables for people: aligned columns, kubectl style, and the cells that
//! summarize each kind of resource.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::time::{Duration, SystemTime};

use switchyard::pb;
use switchyard::pb::resource::Kind as Resource;
use switchyard::resource::Kind;

use crate::mapping::enum_value_name;

/// Rows under a header, written with each column as wide as its widest cell.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with these column names.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; it has as many cells as the header.
    pub fn row(&mut self, cells: Vec<String>) {
        debug_assert_eq!(cells.len(), self.header.len());
        self.rows.push(cells);
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the header and the rows, three spaces between columns.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}   "));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// A table of resources of `kind`: the cells of the kind, then who made
/// the last change (BY).
pub fn resources(kind: Kind, resources: &[pb::Resource], show_labels: bool) -> Table {
    let mut header: Vec<&str> = match kind {
        Kind::Service => vec![
            "NAME",
            "PROTOCOL",
            "LB-POLICY",
            "HASH-ON",
            "HEALTH-CHECK",
            "REVISION",
        ],
        Kind::Endpoint => vec![
            "NAME", "SERVICE", "ADDRESS", "PORT", "WEIGHT", "NODE", "HEALTH", "REVISION",
        ],
        Kind::Route => vec!["NAME", "RULES", "DESTINATIONS", "REVISION"],
        Kind::Listener => vec![
            "NAME",
            "ADDRESS",
            "PORT",
            "PROTOCOL",
            "TARGET",
            "NODE-SELECTOR",
            "REVISION",
        ],
    };
    header.push("BY");
    if show_labels {
        header.push("LABELS");
    }
    let mut table = Table::new(&header);
    for resource in resources {
        let (mut cells, labels) = match &resource.kind {
            Some(Resource::Service(s)) => (service(s), &s.labels),
            Some(Resource::Endpoint(e)) => (endpoint(e), &e.labels),
            Some(Resource::Route(r)) => (route(r), &r.labels),
            Some(Resource::Listener(l)) => (listener(l), &l.labels),
            None => continue,
        };
        cells.push(principal(resource.last_change.as_ref()));
        if show_labels {
            cells.push(labels_cell(labels));
        }
        table.row(cells);
    }
    table
}

fn service(s: &pb::Service) -> Vec<String> {
    let hash = match s.hash_policy.as_ref().and_then(|h| h.source.as_ref()) {
        Some(pb::hash_policy::Source::Header(h)) => format!("header {h}"),
        Some(pb::hash_policy::Source::Cookie(c)) => format!("cookie {c}"),
        Some(pb::hash_policy::Source::SourceIp(_)) => "source-ip".into(),
        None => "-".into(),
    };
    let check = match s.health_check.as_ref().and_then(|h| h.check.as_ref()) {
        Some(pb::health_check::Check::Http(h)) => {
            format!("http {}", if h.path.is_empty() { "/" } else { &h.path })
        }
        Some(pb::health_check::Check::Tcp(_)) => "tcp".into(),
        Some(pb::health_check::Check::Grpc(_)) => "grpc".into(),
        None => "-".into(),
    };
    vec![
        s.name.clone(),
        protocol(s.protocol),
        match s.lb_policy {
            0 => "round_robin".into(),
            p => enum_value_name("switchyard.v1.LbPolicy", p),
        },
        hash,
        check,
        s.revision.to_string(),
    ]
}

fn endpoint(e: &pb::Endpoint) -> Vec<String> {
    vec![
        e.name.clone(),
        e.service.clone(),
        e.address.clone(),
        e.port.to_string(),
        // 0 is the default, which is 1.
        e.weight.max(1).to_string(),
        dash(&e.node),
        health(e.health),
        e.revision.to_string(),
    ]
}

fn route(r: &pb::Route) -> Vec<String> {
    let mut destinations: Vec<String> = Vec::new();
    for rule in &r.rules {
        for d in rule.action.iter().flat_map(|a| &a.destinations) {
            let mut name = d.service.clone();
            if !d.subset.is_empty() {
                name.push_str(&format!("[{}]", labels_cell(&d.subset)));
            }
            if !destinations.contains(&name) {
                destinations.push(name);
            }
        }
    }
    vec![
        r.name.clone(),
        r.rules.len().to_string(),
        destinations.join(","),
        r.revision.to_string(),
    ]
}

fn listener(l: &pb::Listener) -> Vec<String> {
    let target = match &l.target {
        Some(pb::listener::Target::Route(r)) => format!("route/{r}"),
        Some(pb::listener::Target::Service(s)) => format!("service/{s}"),
        None => "-".into(),
    };
    vec![
        l.name.clone(),
        if l.address.is_empty() {
            "0.0.0.0".into()
        } else {
            l.address.clone()
        },
        l.port.to_string(),
        protocol(l.protocol),
        target,
        labels_cell(&l.node_selector),
        l.revision.to_string(),
    ]
}

fn protocol(p: i32) -> String {
    match p {
        0 => "http".into(),
        p => enum_value_name("switchyard.v1.Protocol", p),
    }
}

/// An endpoint's health, in words.
pub fn health(h: i32) -> String {
    enum_value_name("switchyard.v1.Health", h)
}

/// Who made a change (`token/alice`), or `-` when the control plane does
/// not say (one without an audit trail).
pub fn principal(author: Option<&pb::ChangeAuthor>) -> String {
    dash(author.map_or("", |a| a.principal.as_str()))
}

/// `k=v,k=v`, or `<none>`.
pub fn labels_cell(labels: &BTreeMap<String, String>) -> String {
    if labels.is_empty() {
        return "<none>".into();
    }
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The text, or `-` when empty.
pub fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

/// How long ago `at` was, kubectl style: `45s`, `3m`, `5h`, `2d`.
pub fn age(at: &prost_types::Timestamp, now: SystemTime) -> String {
    let Ok(at) = SystemTime::try_from(*at) else {
        return "-".into();
    };
    let elapsed = now.duration_since(at).unwrap_or(Duration::ZERO).as_secs();
    match elapsed {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
mod tests;
