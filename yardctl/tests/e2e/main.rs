//! End to end: the real `yardctl` binary, run as a process against a
//! control plane served in this process over a fresh Postgres database or
//! SQLite file, with real agents where rollouts are concerned, and a
//! stand-in TokenService for the token commands (see `tokens`).

mod manifests;
mod reads;
mod rollout;
mod support;
mod tls;
mod tokens;
