//! End to end: the real `yardctl` binary, run as a process against a
//! control plane served in this process over a fresh Postgres database or
//! SQLite file, with authentication on where tokens and the audit trail
//! are concerned, and with real agents where rollouts are.

mod audit;
mod completion;
mod diff;
mod haproxy_examples;
mod manifests;
mod persist;
mod reads;
mod rollout;
mod support;
mod tls;
mod tokens;
