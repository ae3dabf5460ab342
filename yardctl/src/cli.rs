//! The command line: global flags, commands and their arguments (clap).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use switchyard::resource::Kind;

/// What `yardctl --help` ends with: the exit codes scripts can rely on.
const EXIT_CODES: &str = "\
Exit codes:
  0  done
  1  usage error, or a manifest that does not parse (nothing was sent)
  2  refused: invalid, too large, conflicting or still-referenced resources,
     not found, not authenticated or not permitted, or (rollout status) a
     node refused the configuration; nothing was written
  3  the control plane cannot be reached or failed to answer; retrying may help
  4  rollout status timed out
diff, as kubectl diff: 0 no differences, 1 differences, 2 or more an error
(a manifest that does not parse is 2 there).

Kinds: service (services, svc), endpoint (endpoints, ep), route (routes),
listener (listeners); get also takes `all` and comma-separated kinds.";

/// The Switchyard operator CLI.
///
/// Talks to the control plane's public gRPC API (OperatorService) only.
#[derive(Debug, Parser)]
#[command(name = "yardctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// Flags every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The control plane's address: `http://HOST:PORT`, or
    /// `https://HOST:PORT` for TLS (needs `--ca-cert`); without a scheme,
    /// https when a TLS flag is given, else http.
    #[arg(
        long,
        env = "YARD_SERVER",
        default_value = "http://127.0.0.1:7700",
        global = true
    )]
    pub server: String,
    /// Sent as `authorization: Bearer TOKEN` with every call.
    #[arg(long, env = "YARD_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// CA certificates (PEM) to check the control plane's certificate with;
    /// required for `https://`.
    #[arg(long, env = "YARD_CA_CERT", value_name = "FILE", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `--client-key`.
    #[arg(long, env = "YARD_CLIENT_CERT", value_name = "FILE", global = true)]
    pub client_cert: Option<PathBuf>,
    /// Client private key (PEM) for mutual TLS, with `--client-cert`.
    #[arg(long, env = "YARD_CLIENT_KEY", value_name = "FILE", global = true)]
    pub client_key: Option<PathBuf>,
    /// Output format: table (the default), yaml, json, or name (kind/name lines).
    #[arg(short, long, value_enum, global = true)]
    pub output: Option<Output>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Columns for people.
    Table,
    /// YAML documents; resources as manifests that apply as they are.
    Yaml,
    /// JSON; resources as manifests that apply as they are.
    Json,
    /// One `kind/name` per line.
    Name,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or update the resources in manifests, as one all-or-nothing batch.
    ///
    /// Prints what happened to each: created, configured or unchanged.
    /// Manifests that do not fit one request (1000 resources, or the
    /// control plane's size limit) are applied in ordered batches, each
    /// all-or-nothing: services, then endpoints, routes and listeners.
    Apply(ApplyArgs),
    /// Show what an apply of the manifests would change, field by field.
    ///
    /// The control plane checks the batch as an apply would (a dry run), so
    /// an invalid batch fails here too. Prints each resource that would be
    /// created or configured and its changed fields (`~ path: old -> new`,
    /// `+ path: value`, `- path: value`); unchanged resources are left out.
    /// Exits 1 when there are differences.
    Diff(DiffArgs),
    /// Show resources: a table, or manifests with -o yaml|json.
    Get(GetArgs),
    /// Delete resources, all or none.
    Delete(DeleteArgs),
    /// Print changes as they are committed, one line each, until Ctrl-C.
    Watch(WatchArgs),
    /// Show the agents: connection, applied revision, endpoint health, refusals.
    Nodes(NodesArgs),
    /// Follow the rollout of a revision to the nodes.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Create, list and revoke bearer tokens (needs an admin token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print a completion script for a shell, e.g.
    /// `yardctl completion bash > /etc/bash_completion.d/yardctl`.
    Completion(CompletionArgs),
}

/// `yardctl completion`.
#[derive(Debug, Args)]
pub struct CompletionArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `yardctl apply`.
#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file (YAML or JSON), directory of them, or - for stdin; repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<String>,
    /// Check everything and report what would happen; write nothing. The
    /// manifests must fit one request.
    #[arg(long)]
    pub dry_run: bool,
    /// All or nothing in one request: refuse manifests that do not fit one
    /// (more than 1000 resources, or over the control plane's size limit)
    /// instead of applying them in ordered batches.
    #[arg(long)]
    pub atomic: bool,
}

/// `yardctl diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// Manifest file (YAML or JSON), directory of them, or - for stdin; repeatable.
    #[arg(short = 'f', long = "filename", value_name = "FILE", required = true)]
    pub files: Vec<String>,
}

/// `yardctl get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    /// KIND, KIND,KIND, `all`, or KIND/NAME.
    pub kind: String,
    /// Only these resources.
    pub names: Vec<String>,
    /// Label selector: `k=v`, `k!=v`, `k`, `!k`, comma-separated (all must hold).
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Add a LABELS column to tables.
    #[arg(long)]
    pub show_labels: bool,
}

/// `yardctl delete`.
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["targets", "files"]))]
pub struct DeleteArgs {
    /// KIND NAME... or KIND/NAME...
    pub targets: Vec<String>,
    /// Delete the resources these manifests declare (file, directory or -).
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE",
        conflicts_with = "targets"
    )]
    pub files: Vec<String>,
    /// Check that the delete would succeed; delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `yardctl watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only these kinds (default: all).
    pub kinds: Vec<String>,
    /// Start after this revision (0: the whole retained change log). Default:
    /// the current revision, so only new changes are shown.
    #[arg(long, value_name = "N")]
    pub from_revision: Option<u64>,
}

/// `yardctl nodes`.
#[derive(Debug, Args)]
pub struct NodesArgs {
    /// Only nodes whose labels match this selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// `yardctl rollout ...`.
#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Wait until every selected node has applied a revision.
    Status(RolloutStatusArgs),
}

/// `yardctl rollout status`.
#[derive(Debug, Args)]
pub struct RolloutStatusArgs {
    /// The revision to wait for. Default: the store's current revision.
    #[arg(long, value_name = "R")]
    pub revision: Option<u64>,
    /// Only nodes whose labels match this selector.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Give up after this long (e.g. 90s, 5m; 0 waits for ever).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// `yardctl token ...`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret, once, alone on stdout.
    ///
    /// `yardctl token create ci --role reader > ci.token` keeps exactly the
    /// secret; a note on stderr says it is not shown again.
    Create(TokenCreateArgs),
    /// List every token, revoked ones included; secrets are never shown.
    List,
    /// Revoke a token: the control plane refuses it from then on.
    Revoke(TokenRevokeArgs),
}

/// `yardctl token create`.
#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// The token's name, unique among all tokens (revoked ones included); it
    /// shows as `token/NAME` in the audit trail.
    pub name: String,
    /// What the token may do: admin (everything), reader (get, watch, nodes,
    /// rollout status) or agent (an agent's calls for one node).
    #[arg(long, value_enum)]
    pub role: Role,
    /// The node an agent token speaks for; required with --role agent only.
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
}

/// `yardctl token revoke`.
#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// The token's name.
    pub name: String,
}

/// The roles a token can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// Every operator call and token management.
    Admin,
    /// Reads only: get, watch, nodes, rollout status.
    Reader,
    /// The agent of one node (needs --node).
    Agent,
}

/// Parses a kind as typed on the command line: singular, plural or short,
/// in any case.
pub fn parse_kind(text: &str) -> Option<Kind> {
    match text.to_ascii_lowercase().as_str() {
        "service" | "services" | "svc" => Some(Kind::Service),
        "endpoint" | "endpoints" | "ep" => Some(Kind::Endpoint),
        "route" | "routes" => Some(Kind::Route),
        "listener" | "listeners" => Some(Kind::Listener),
        _ => None,
    }
}

/// Like [`parse_kind`], with a message naming the choices.
pub fn kind_arg(text: &str) -> Result<Kind, crate::Error> {
    parse_kind(text).ok_or_else(|| {
        crate::Error::usage(format_args!(
            "unknown kind `{text}`; expected service (svc), endpoint (ep), route or listener"
        ))
    })
}

/// The plural a kind is listed under (`endpoints`).
pub fn plural(kind: Kind) -> &'static str {
    match kind {
        Kind::Service => "services",
        Kind::Endpoint => "endpoints",
        Kind::Route => "routes",
        Kind::Listener => "listeners",
    }
}
