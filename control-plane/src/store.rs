//! The revisioned configuration store: resources, the change log and nodes,
//! in Postgres (production, several replicas) or SQLite (embedded default).
//!
//! Every write is one transaction that first increments the single counter
//! row in `meta`. That row lock is held until commit, so concurrent writers
//! take revisions in commit order: a reader that sees revision N has seen
//! every revision below it (the gap/reorder pitfall of sequences cannot
//! happen). The same transaction appends one change-log row per resource it
//! touched, with the resource as written, so the log alone can replay history
//! back to the compaction horizon.
//!
//! Every write also records its [`Author`] (principal, client address, wall
//! clock) on the resource rows and change-log rows it writes, beside the
//! stored body rather than in it: identical content stays unchanged whoever
//! applies it, and agents never receive the audit trail.
//!
//! The store also keeps the bearer tokens ([`TokenRow`]: a hash of each
//! secret, never the secret) and a token epoch that every token write bumps,
//! so that replicas know when to reload them.
//!
//! The two backends share every statement (see `sql.rs`); they differ in how
//! they connect, migrate and isolate reads.

use std::future::Future;
use std::sync::Arc;

use switchyard::pb;
use switchyard::resource::{Kind, Ref};
use switchyard::validate::Invalid;

mod breaker;
mod postgres;
mod sql;
mod sqlite;
mod timed;

pub use breaker::Breaker;
pub use postgres::Postgres;
pub use sqlite::Sqlite;
pub use timed::{Call, Latency, Timed};

/// The current time in Unix milliseconds, as the store stamps rows with it.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request names resources that do not exist, or is otherwise invalid
    /// against the stored state.
    #[error("{0}")]
    Invalid(#[from] Invalid),
    /// An `expected_revision` did not match the stored one.
    #[error("{target}: expected revision {expected}, found {}", display_revision(*.actual))]
    Conflict {
        /// The resource.
        target: Ref,
        /// What the caller expected (0: absent).
        expected: u64,
        /// What is stored (`None`: absent).
        actual: Option<u64>,
    },
    /// A delete would leave other resources naming a missing one.
    #[error("{target} is still referenced by {}", list_refs(by))]
    Referenced {
        /// The resource that was to be deleted.
        target: Ref,
        /// Who still names it.
        by: Vec<Ref>,
    },
    /// The resource does not exist.
    #[error("{0} not found")]
    NotFound(Ref),
    /// The change log no longer holds revisions after `requested`.
    #[error("revision {requested} is compacted: the change log starts after revision {horizon}")]
    Compacted {
        /// The revision asked for.
        requested: u64,
        /// The newest compacted revision.
        horizon: u64,
    },
    /// A token with that name exists (revoked tokens included: a name is
    /// never given to a second token).
    #[error("token {0:?} already exists")]
    Exists(String),
    /// No token has that name.
    #[error("token {0:?} not found")]
    TokenNotFound(String),
    /// The bootstrap token was not created: the caller's `created` step
    /// failed, so nothing was written.
    #[error("bootstrap token not created: {0}")]
    Bootstrap(String),
    /// Stored data could not be decoded.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store is known to be unreachable (the server's last poll of it
    /// failed), so the call was not tried; see [`Breaker`].
    #[error("the store cannot be reached")]
    Unavailable,
}

impl Error {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Database(_) | Error::Conflict { .. } | Error::Unavailable
        )
    }

    /// Whether the store could not be reached at all (as opposed to
    /// answering with a failure): no connection could be had or kept, or
    /// the server is shutting down or starting up. Another replica, or the
    /// same one a little later, may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Unavailable => true,
            Error::Database(e) => match e {
                sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::Io(_)
                | sqlx::Error::Tls(_)
                | sqlx::Error::WorkerCrashed => true,
                // SQLSTATE class 08: connection exception; 57P01..57P03:
                // the server is shutting down, crashed or starting up.
                // SQLite: SQLITE_BUSY (and its extended codes) past the
                // busy timeout, e.g. another process holds the file locked.
                sqlx::Error::Database(db) => db.code().is_some_and(|c| {
                    c.starts_with("08")
                        || matches!(&*c, "57P01" | "57P02" | "57P03")
                        || c.parse::<u32>().is_ok_and(|n| n & 0xff == 5)
                }),
                _ => false,
            },
            _ => false,
        }
    }
}

/// The violation for a reference, at `field` of a request, to `target`,
/// which does not exist.
pub fn missing_violation(field: String, target: &Ref) -> switchyard::validate::Violation {
    switchyard::validate::Violation {
        field,
        reason: format!(
            "{} {} does not exist (nor is it in this request)",
            target.kind,
            switchyard::validate::quote(&target.name)
        ),
    }
}

fn display_revision(r: Option<u64>) -> String {
    match r {
        Some(r) => r.to_string(),
        None => "none (it does not exist)".into(),
    }
}

fn list_refs(refs: &[Ref]) -> String {
    refs.iter()
        .map(Ref::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The result type of store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Who makes a write: recorded with every resource row and change-log row
/// it writes (see `pb::ChangeAuthor`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    /// The principal: `token/NAME`, `node/ID`, `anonymous`, or
    /// [`Author::CONTROL_PLANE`].
    pub principal: String,
    /// The client's address (`ip:port`); empty for the control plane's own
    /// writes.
    pub address: String,
}

impl Author {
    /// The principal of writes the control plane makes by itself.
    pub const CONTROL_PLANE: &'static str = "control-plane";

    /// `principal`, calling from `address`.
    pub fn new(principal: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            principal: principal.into(),
            address: address.into(),
        }
    }

    /// The control plane itself (e.g. marking a silent node's endpoints
    /// unknown), with no client address.
    pub fn control_plane() -> Self {
        Self::new(Self::CONTROL_PLANE, "")
    }
}

/// One resource to create or replace.
#[derive(Debug, Clone)]
pub struct Write {
    /// The validated resource. Output-only fields are ignored.
    pub resource: pb::Resource,
    /// Its kind and name.
    pub target: Ref,
    /// The resources it names, each with the field (relative to `field`) that names it.
    pub refs: Vec<(Ref, String)>,
    /// Path of the resource in the request, used to name problems (e.g. `items[2].endpoint`).
    pub field: String,
    /// Optimistic concurrency: `Some(0)` means "must not exist".
    pub expected_revision: Option<u64>,
}

/// One resource to delete.
#[derive(Debug, Clone)]
pub struct Removal {
    /// The resource.
    pub target: Ref,
    /// Path of the item in the request, used to name problems.
    pub field: String,
    /// When set, the stored revision must equal it.
    pub expected_revision: Option<u64>,
}

/// What an apply did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// It did not exist.
    Created,
    /// It existed and differed.
    Configured,
    /// It was identical and was not written.
    Unchanged,
}

/// The outcome of [`Store::apply`].
#[derive(Debug, Clone)]
pub struct Applied {
    /// The store's revision afterwards (unchanged when nothing was written).
    pub revision: u64,
    /// Per write, in order: what happened and the resource's revision.
    pub results: Vec<(Ref, Action, u64)>,
}

/// Whether a change log entry created/replaced or deleted a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Created or replaced.
    Upsert,
    /// Deleted.
    Delete,
}

/// One change-log entry.
#[derive(Debug, Clone)]
pub struct Change {
    /// The revision that made it.
    pub revision: u64,
    /// Upsert or delete.
    pub op: Op,
    /// The resource.
    pub target: Ref,
    /// The resource as written (upserts only). Its `last_change` is not
    /// set: the author is beside it.
    pub resource: Option<pb::Resource>,
    /// Who made the write and when; `None` for entries written before the
    /// store recorded authors.
    pub author: Option<pb::ChangeAuthor>,
}

/// One page of a [`Store::list`].
#[derive(Debug, Clone)]
pub struct Page {
    /// Resources in name order.
    pub resources: Vec<pb::Resource>,
    /// The store's revision when the page was read.
    pub revision: u64,
    /// Whether resources remain after this page.
    pub more: bool,
}

/// Everything in the store at one revision.
#[derive(Debug, Clone, Default)]
pub struct Dump {
    /// The revision read.
    pub revision: u64,
    /// The change-log horizon at that revision.
    pub horizon: u64,
    /// Every resource, of every kind.
    pub resources: Vec<pb::Resource>,
}

/// The status of one node, as a control-plane session last saw it.
///
/// Its session queues a copy at every Ack to be written later: the parts
/// that do not change during a session are shared, so a copy allocates
/// nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRow {
    /// Node id.
    pub id: Arc<str>,
    /// Its labels.
    pub labels: Arc<std::collections::BTreeMap<String, String>>,
    /// Its agent's version.
    pub agent_version: Arc<str>,
    /// The revision its configuration is current at.
    pub applied_revision: u64,
    /// Whether its stream is open.
    pub connected: bool,
    /// The replica holding (or that last held) its stream.
    pub replica: Arc<str>,
    /// When it was last heard from, in Unix milliseconds.
    pub last_seen_ms: i64,
    /// Identifies the stream; a disconnect only applies to the current one.
    pub session: u64,
    /// The last configuration it refused: revision, error, Unix milliseconds.
    pub nack: Option<(u64, String, i64)>,
    /// The agent process holding the stream (see `pb::Hello::instance_id`).
    pub instance: Arc<str>,
    /// The configuration it serves but could not save to its disk:
    /// revision, error, since when (Unix milliseconds).
    pub persist: Option<(u64, String, i64)>,
}

/// One endpoint's health as its node's agent reported it (or as the control
/// plane decided when the node's lease expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthWrite {
    /// The endpoint's name.
    pub endpoint: String,
    /// The node that must own the endpoint: the write is skipped when the
    /// endpoint is gone or now belongs to another node.
    pub node: String,
    /// The new health.
    pub health: pb::Health,
    /// Why (e.g. "HTTP 503").
    pub reason: String,
    /// When the change was observed, in Unix milliseconds.
    pub at_ms: i64,
    /// The reporting agent's address (`ip:port`), recorded as the write's
    /// client address.
    pub address: String,
    /// Whether the control plane decided this itself (the node's lease
    /// expired) rather than the node reporting it: the write is then
    /// attributed to [`Author::CONTROL_PLANE`], not to `node/<node>`.
    pub by_control_plane: bool,
}

impl HealthWrite {
    /// Who the write is attributed to: `node/<node>` from its address, or
    /// the control plane.
    pub fn author(&self) -> Author {
        if self.by_control_plane {
            Author::control_plane()
        } else {
            Author::new(format!("node/{}", self.node), self.address.clone())
        }
    }
}

/// The outcome of [`Store::write_health`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthWritten {
    /// The revision of the write, `None` when nothing changed.
    pub revision: Option<u64>,
    /// The endpoints whose health changed.
    pub written: Vec<String>,
}

/// What a bearer token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Every operator call and token management.
    Admin,
    /// Reads only: Get, List, Watch, ListNodes.
    Reader,
    /// The agent service, for one node.
    Agent,
}

impl Role {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Reader => "reader",
            Role::Agent => "agent",
        }
    }

    /// The role stored as `text`, if any.
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "admin" => Some(Role::Admin),
            "reader" => Some(Role::Reader),
            "agent" => Some(Role::Agent),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A stored bearer token. The secret itself is never stored.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// Unique among all tokens, revoked ones included.
    pub name: String,
    /// What it allows.
    pub role: Role,
    /// For [`Role::Agent`]: the node it speaks for; empty otherwise.
    pub node: String,
    /// SHA-256 of the secret.
    pub hash: [u8; 32],
    /// When it was created, in Unix milliseconds.
    pub created_at_ms: i64,
    /// The principal that created it.
    pub created_by: String,
    /// When it was revoked, in Unix milliseconds.
    pub revoked_at_ms: Option<i64>,
}

// By hand, so that logs never show even the hash of a secret.
impl std::fmt::Debug for TokenRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRow")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("node", &self.node)
            .field("created_at_ms", &self.created_at_ms)
            .field("created_by", &self.created_by)
            .field("revoked_at_ms", &self.revoked_at_ms)
            .finish_non_exhaustive()
    }
}

/// The outcome of [`Store::bootstrap_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// The store had no token; the bootstrap token is now the only one.
    Created,
    /// The store already had tokens (this many): nothing was written.
    Exists {
        /// How many tokens the store holds, revoked ones included.
        tokens: u64,
    },
}

/// The configuration store. Implemented by [`Postgres`] and [`Sqlite`], and
/// by [`Any`], which the server uses to pick one at start.
pub trait Store: Send + Sync + 'static {
    /// Creates or replaces every resource of `writes` in one transaction that
    /// takes one new revision, or writes nothing. With `dry_run`, checks
    /// everything and reports what would happen, then rolls back. Every
    /// resource written and its change-log entry record `author` and the
    /// time.
    fn apply(
        &self,
        writes: Vec<Write>,
        dry_run: bool,
        author: &Author,
    ) -> impl Future<Output = Result<Applied>> + Send;

    /// Deletes every resource of `removals` in one transaction, or nothing.
    /// Returns the store's revision afterwards. The change-log entries
    /// record `author` and the time.
    fn delete(
        &self,
        removals: Vec<Removal>,
        dry_run: bool,
        author: &Author,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// One resource, if it exists, with its `last_change`.
    fn get(&self, target: &Ref) -> impl Future<Output = Result<Option<pb::Resource>>> + Send;

    /// Up to `limit` resources of `kind` whose names sort after `after`, in
    /// name order, read in one snapshot with the store's revision; each
    /// with its `last_change`.
    fn list(
        &self,
        kind: Kind,
        after: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Page>> + Send;

    /// Those of `refs` that are not stored, in the order given, read in one
    /// snapshot. Used to report every missing reference of a request that
    /// is refused for other reasons too, without writing anything.
    fn missing(&self, refs: &[Ref]) -> impl Future<Output = Result<Vec<Ref>>> + Send;

    /// Change-log entries of the revisions `after + 1 ..= after + max_revisions`,
    /// in revision order. Fails with [`Error::Compacted`] when `after` is
    /// below the compaction horizon.
    fn changes(
        &self,
        after: u64,
        max_revisions: u64,
    ) -> impl Future<Output = Result<Vec<Change>>> + Send;

    /// The newest committed revision.
    fn revision(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Drops change-log entries so that only the newest `keep` revisions stay.
    /// Returns the new horizon.
    fn compact(&self, keep: u64) -> impl Future<Output = Result<u64>> + Send;

    /// Every node the control plane knows, in id order.
    fn nodes(&self) -> impl Future<Output = Result<Vec<pb::Node>>> + Send;

    /// Every resource, read in one snapshot, without `last_change` (this
    /// feeds agents, which have no use for the audit trail).
    fn dump(&self) -> impl Future<Output = Result<Dump>> + Send;

    /// The change-log horizon: revisions at or below it are compacted.
    fn horizon(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Writes node rows in one transaction. A row that says "disconnected"
    /// only replaces one written by the same session.
    fn record_nodes(&self, rows: Vec<NodeRow>) -> impl Future<Output = Result<()>> + Send;

    /// Writes the row of a new stream for `row.id`, unless another stream
    /// holds the node: its row is connected, was written by another
    /// replica and another agent instance (an empty instance matches none),
    /// and was seen at or after `live_after_ms`. Returns `None` when
    /// written, else the replica holding the node. One statement, so two
    /// replicas admitting the same node at once cannot both win.
    fn claim_node(
        &self,
        row: NodeRow,
        live_after_ms: i64,
    ) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Marks connected nodes not heard from since `before_ms` disconnected
    /// (their replica died or lost them). Returns how many.
    fn expire_nodes(&self, before_ms: i64) -> impl Future<Output = Result<u64>> + Send;

    /// Writes endpoint health in one transaction taking one revision, with
    /// one change-log entry per endpoint whose health changed; nothing (and
    /// no revision) when none did. Writes whose endpoint is gone or owned by
    /// another node are skipped. Each is recorded as made by
    /// [`HealthWrite::author`].
    fn write_health(
        &self,
        writes: Vec<HealthWrite>,
    ) -> impl Future<Output = Result<HealthWritten>> + Send;

    /// Ids of the nodes not heard from since `before_ms`, connected or not.
    fn stale_nodes(&self, before_ms: i64) -> impl Future<Output = Result<Vec<String>>> + Send;

    /// Starts listening for other replicas' commits (Postgres NOTIFY).
    fn notifications(&self) -> impl Future<Output = Result<Notifications>> + Send;

    /// Stores a new token. Fails with [`Error::Exists`] when a token (even
    /// a revoked one) has its name.
    fn create_token(&self, row: TokenRow) -> impl Future<Output = Result<()>> + Send;

    /// Every token, revoked ones included, in name order.
    fn tokens(&self) -> impl Future<Output = Result<Vec<TokenRow>>> + Send;

    /// Revokes token `name` at `at_ms` (a token revoked before keeps its
    /// first time) and returns it. Fails with [`Error::TokenNotFound`].
    fn revoke_token(&self, name: &str, at_ms: i64)
    -> impl Future<Output = Result<TokenRow>> + Send;

    /// A counter that every token write increases in its own transaction:
    /// a replica whose cached tokens were read at an older epoch reloads them.
    fn token_epoch(&self) -> impl Future<Output = Result<u64>> + Send;

    /// Creates the first token, once per store however many replicas race
    /// to: in one transaction, bumps the token epoch (whose row lock makes
    /// concurrent bootstraps take turns), counts the tokens, and only if
    /// there are none stores `row` and calls `created` (the caller writes
    /// the secret where the operator finds it) before committing. When
    /// `created` fails, nothing is written and the error is
    /// [`Error::Bootstrap`]; when tokens exist, nothing is written and the
    /// answer is [`Bootstrap::Exists`]. Should the commit itself fail after
    /// `created`, the caller must undo what `created` did. `created` runs
    /// on the async runtime while the transaction holds its lock: it must
    /// be short (writing one small file).
    fn bootstrap_token(
        &self,
        row: TokenRow,
        created: impl FnOnce() -> std::result::Result<(), String> + Send,
    ) -> impl Future<Output = Result<Bootstrap>> + Send;
}

/// Wake-ups on commits made through any replica.
///
/// A notification is a hint: it may be lost (e.g. while the listening
/// connection is re-established), so readers also poll the change log.
#[derive(Debug)]
pub enum Notifications {
    /// Postgres `LISTEN`.
    Postgres(Box<sqlx::postgres::PgListener>),
    /// No other writer can exist (SQLite).
    None,
}

/// The channel commits are announced on.
pub(crate) const NOTIFY_CHANNEL: &str = "switchyard_revision";

impl Notifications {
    /// Resolves when a commit may have happened: on a notification, or when
    /// the listening connection was lost and notifications may have been missed.
    pub async fn next(&mut self) {
        match self {
            Notifications::Postgres(listener) => match listener.try_recv().await {
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, "listening for commits");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            },
            Notifications::None => std::future::pending().await,
        }
    }
}

/// Either backend, chosen from a database URL at run time.
#[derive(Debug, Clone)]
pub enum Any {
    /// Postgres.
    Postgres(Postgres),
    /// SQLite.
    Sqlite(Sqlite),
}

impl Any {
    /// Connects to `url` (`postgres://…` or `sqlite://…`) and migrates the
    /// schema to the newest version.
    pub async fn connect(url: &str) -> Result<Any> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Any::Postgres(Postgres::connect(url).await?))
        } else if url.starts_with("sqlite:") {
            Ok(Any::Sqlite(Sqlite::connect(url).await?))
        } else {
            Err(Error::Invalid(Invalid::one(
                "database_url",
                "must start with postgres://, postgresql:// or sqlite:",
            )))
        }
    }

    /// The backend's name, for logs and metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Any::Postgres(_) => "postgres",
            Any::Sqlite(_) => "sqlite",
        }
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        match self {
            Any::Postgres(s) => s.close().await,
            Any::Sqlite(s) => s.close().await,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Any::Postgres($s) => $e.await,
            Any::Sqlite($s) => $e.await,
        }
    };
}

impl Store for Any {
    async fn apply(&self, writes: Vec<Write>, dry_run: bool, author: &Author) -> Result<Applied> {
        delegate!(self, s => s.apply(writes, dry_run, author))
    }
    async fn delete(&self, removals: Vec<Removal>, dry_run: bool, author: &Author) -> Result<u64> {
        delegate!(self, s => s.delete(removals, dry_run, author))
    }
    async fn get(&self, target: &Ref) -> Result<Option<pb::Resource>> {
        delegate!(self, s => s.get(target))
    }
    async fn list(&self, kind: Kind, after: &str, limit: usize) -> Result<Page> {
        delegate!(self, s => s.list(kind, after, limit))
    }
    async fn missing(&self, refs: &[Ref]) -> Result<Vec<Ref>> {
        delegate!(self, s => s.missing(refs))
    }
    async fn changes(&self, after: u64, max_revisions: u64) -> Result<Vec<Change>> {
        delegate!(self, s => s.changes(after, max_revisions))
    }
    async fn revision(&self) -> Result<u64> {
        delegate!(self, s => s.revision())
    }
    async fn compact(&self, keep: u64) -> Result<u64> {
        delegate!(self, s => s.compact(keep))
    }
    async fn nodes(&self) -> Result<Vec<pb::Node>> {
        delegate!(self, s => s.nodes())
    }
    async fn dump(&self) -> Result<Dump> {
        delegate!(self, s => s.dump())
    }
    async fn horizon(&self) -> Result<u64> {
        delegate!(self, s => s.horizon())
    }
    async fn record_nodes(&self, rows: Vec<NodeRow>) -> Result<()> {
        delegate!(self, s => s.record_nodes(rows))
    }
    async fn claim_node(&self, row: NodeRow, live_after_ms: i64) -> Result<Option<String>> {
        delegate!(self, s => s.claim_node(row, live_after_ms))
    }
    async fn expire_nodes(&self, before_ms: i64) -> Result<u64> {
        delegate!(self, s => s.expire_nodes(before_ms))
    }
    async fn write_health(&self, writes: Vec<HealthWrite>) -> Result<HealthWritten> {
        delegate!(self, s => s.write_health(writes))
    }
    async fn stale_nodes(&self, before_ms: i64) -> Result<Vec<String>> {
        delegate!(self, s => s.stale_nodes(before_ms))
    }
    async fn notifications(&self) -> Result<Notifications> {
        delegate!(self, s => s.notifications())
    }
    async fn create_token(&self, row: TokenRow) -> Result<()> {
        delegate!(self, s => s.create_token(row))
    }
    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        delegate!(self, s => s.tokens())
    }
    async fn revoke_token(&self, name: &str, at_ms: i64) -> Result<TokenRow> {
        delegate!(self, s => s.revoke_token(name, at_ms))
    }
    async fn token_epoch(&self) -> Result<u64> {
        delegate!(self, s => s.token_epoch())
    }
    async fn bootstrap_token(
        &self,
        row: TokenRow,
        created: impl FnOnce() -> std::result::Result<(), String> + Send,
    ) -> Result<Bootstrap> {
        delegate!(self, s => s.bootstrap_token(row, created))
    }
}
