//! `yardctl`, the Switchyard operator CLI, as a library: the binary parses
//! the command line and hands it to [`run`].
//!
//! It speaks only the public gRPC API (`switchyard.v1.OperatorService`), like
//! any other client: [`manifest`] reads and writes the YAML/JSON documents
//! operators keep in files, [`mapping`] turns them into API messages and
//! back, [`command`] holds one module per command, and [`error`] says how
//! each failure reads and which exit code it gives.

pub mod cli;
pub mod client;
pub mod command;
pub mod error;
pub mod manifest;
pub mod mapping;
pub mod table;

pub use cli::Cli;
pub use command::Console;
pub use error::{Error, Exit};

/// Runs the command `cli` names, writing results to `console`.
pub async fn run(cli: Cli, console: &mut Console<'_>) -> Result<(), Error> {
    command::run(cli, console).await
}
