//! [`Timed`]: a store that measures how long each of its calls takes, for
//! the control plane's metrics. The server wraps whichever backend it runs
//! on, so every call site is measured without knowing it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use switchyard::metrics::Histogram;
use switchyard::pb;
use switchyard::resource::{Kind, Ref};

use super::{
    Applied, Author, Bootstrap, Change, Dump, HealthWrite, HealthWritten, NodeRow, Notifications,
    Page, Removal, Result, Store, TokenRow, Write,
};

/// The calls of [`Store`], as metrics name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// [`Store::apply`].
    Apply,
    /// [`Store::delete`].
    Delete,
    /// [`Store::get`].
    Get,
    /// [`Store::list`].
    List,
    /// [`Store::changes`].
    Changes,
    /// [`Store::missing`].
    Missing,
    /// [`Store::revision`].
    Revision,
    /// [`Store::compact`].
    Compact,
    /// [`Store::nodes`].
    Nodes,
    /// [`Store::dump`].
    Dump,
    /// [`Store::horizon`].
    Horizon,
    /// [`Store::record_nodes`].
    RecordNodes,
    /// [`Store::expire_nodes`].
    ExpireNodes,
    /// [`Store::write_health`].
    WriteHealth,
    /// [`Store::stale_nodes`].
    StaleNodes,
    /// [`Store::create_token`].
    CreateToken,
    /// [`Store::tokens`].
    Tokens,
    /// [`Store::revoke_token`].
    RevokeToken,
    /// [`Store::token_epoch`].
    TokenEpoch,
    /// [`Store::bootstrap_token`].
    BootstrapToken,
    /// [`Store::claim_node`].
    ClaimNode,
}

impl Call {
    /// Every call, in the order metrics list them.
    pub const ALL: [Call; 21] = [
        Call::Apply,
        Call::Delete,
        Call::Get,
        Call::List,
        Call::Changes,
        Call::Missing,
        Call::Revision,
        Call::Compact,
        Call::Nodes,
        Call::Dump,
        Call::Horizon,
        Call::RecordNodes,
        Call::ExpireNodes,
        Call::WriteHealth,
        Call::StaleNodes,
        Call::CreateToken,
        Call::Tokens,
        Call::RevokeToken,
        Call::TokenEpoch,
        Call::BootstrapToken,
        Call::ClaimNode,
    ];

    /// The call's name: the `op` label of the store metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Call::Apply => "apply",
            Call::Delete => "delete",
            Call::Get => "get",
            Call::List => "list",
            Call::Changes => "changes",
            Call::Missing => "missing",
            Call::Revision => "revision",
            Call::Compact => "compact",
            Call::Nodes => "nodes",
            Call::Dump => "dump",
            Call::Horizon => "horizon",
            Call::RecordNodes => "record_nodes",
            Call::ExpireNodes => "expire_nodes",
            Call::WriteHealth => "write_health",
            Call::StaleNodes => "stale_nodes",
            Call::CreateToken => "create_token",
            Call::Tokens => "tokens",
            Call::RevokeToken => "revoke_token",
            Call::TokenEpoch => "token_epoch",
            Call::BootstrapToken => "bootstrap_token",
            Call::ClaimNode => "claim_node",
        }
    }
}

/// How long store calls took, and how many failed, per [`Call`].
#[derive(Debug, Default)]
pub struct Latency {
    durations: [Histogram; Call::ALL.len()],
    errors: [AtomicU64; Call::ALL.len()],
}

impl Latency {
    /// The durations of `call`, failed ones included.
    pub fn durations(&self, call: Call) -> &Histogram {
        &self.durations[call as usize]
    }

    /// How many `call`s returned an error (refusals such as a conflict or a
    /// compacted revision included).
    pub fn errors(&self, call: Call) -> u64 {
        self.errors[call as usize].load(Ordering::Relaxed)
    }
}

/// A store whose calls are timed into a shared [`Latency`].
#[derive(Debug)]
pub struct Timed<S> {
    inner: S,
    latency: Arc<Latency>,
}

impl<S: Store> Timed<S> {
    /// Wraps `inner`, recording into `latency`.
    pub fn new(inner: S, latency: Arc<Latency>) -> Self {
        Self { inner, latency }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    async fn time<T>(&self, call: Call, f: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let result = f.await;
        self.latency.durations[call as usize].observe(started.elapsed());
        if result.is_err() {
            self.latency.errors[call as usize].fetch_add(1, Ordering::Relaxed);
        }
        result
    }
}

impl<S: Store> Store for Timed<S> {
    async fn apply(&self, writes: Vec<Write>, dry_run: bool, author: &Author) -> Result<Applied> {
        self.time(Call::Apply, self.inner.apply(writes, dry_run, author))
            .await
    }
    async fn delete(&self, removals: Vec<Removal>, dry_run: bool, author: &Author) -> Result<u64> {
        self.time(Call::Delete, self.inner.delete(removals, dry_run, author))
            .await
    }
    async fn get(&self, target: &Ref) -> Result<Option<pb::Resource>> {
        self.time(Call::Get, self.inner.get(target)).await
    }
    async fn list(&self, kind: Kind, after: &str, limit: usize) -> Result<Page> {
        self.time(Call::List, self.inner.list(kind, after, limit))
            .await
    }
    async fn missing(&self, refs: &[Ref]) -> Result<Vec<Ref>> {
        self.time(Call::Missing, self.inner.missing(refs)).await
    }
    async fn changes(&self, after: u64, max_revisions: u64) -> Result<Vec<Change>> {
        self.time(Call::Changes, self.inner.changes(after, max_revisions))
            .await
    }
    async fn revision(&self) -> Result<u64> {
        self.time(Call::Revision, self.inner.revision()).await
    }
    async fn compact(&self, keep: u64) -> Result<u64> {
        self.time(Call::Compact, self.inner.compact(keep)).await
    }
    async fn nodes(&self) -> Result<Vec<pb::Node>> {
        self.time(Call::Nodes, self.inner.nodes()).await
    }
    async fn dump(&self) -> Result<Dump> {
        self.time(Call::Dump, self.inner.dump()).await
    }
    async fn horizon(&self) -> Result<u64> {
        self.time(Call::Horizon, self.inner.horizon()).await
    }
    async fn record_nodes(&self, rows: Vec<NodeRow>) -> Result<()> {
        self.time(Call::RecordNodes, self.inner.record_nodes(rows))
            .await
    }
    async fn expire_nodes(&self, before_ms: i64) -> Result<u64> {
        self.time(Call::ExpireNodes, self.inner.expire_nodes(before_ms))
            .await
    }
    async fn claim_node(&self, row: NodeRow, live_after_ms: i64) -> Result<Option<String>> {
        self.time(Call::ClaimNode, self.inner.claim_node(row, live_after_ms))
            .await
    }
    async fn write_health(&self, writes: Vec<HealthWrite>) -> Result<HealthWritten> {
        self.time(Call::WriteHealth, self.inner.write_health(writes))
            .await
    }
    async fn stale_nodes(&self, before_ms: i64) -> Result<Vec<String>> {
        self.time(Call::StaleNodes, self.inner.stale_nodes(before_ms))
            .await
    }
    /// Not timed: it opens a listener that lives as long as the server.
    async fn notifications(&self) -> Result<Notifications> {
        self.inner.notifications().await
    }
    async fn create_token(&self, row: TokenRow) -> Result<()> {
        self.time(Call::CreateToken, self.inner.create_token(row))
            .await
    }
    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.time(Call::Tokens, self.inner.tokens()).await
    }
    async fn revoke_token(&self, name: &str, at_ms: i64) -> Result<TokenRow> {
        self.time(Call::RevokeToken, self.inner.revoke_token(name, at_ms))
            .await
    }
    async fn token_epoch(&self) -> Result<u64> {
        self.time(Call::TokenEpoch, self.inner.token_epoch()).await
    }
    async fn bootstrap_token(
        &self,
        row: TokenRow,
        created: impl FnOnce() -> std::result::Result<(), String> + Send,
    ) -> Result<Bootstrap> {
        self.time(
            Call::BootstrapToken,
            self.inner.bootstrap_token(row, created),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    #[tokio::test]
    async fn calls_are_timed_and_failures_counted() {
        let db = TestDb::sqlite();
        let latency = Arc::new(Latency::default());
        let store = Timed::new(db.store().await, latency.clone());
        store.revision().await.unwrap();
        store.revision().await.unwrap();
        let missing = Ref::new(Kind::Service, "nope");
        store.get(&missing).await.unwrap();
        let removal = Removal {
            target: missing,
            field: "items[0]".into(),
            expected_revision: None,
        };
        // Deleting what does not exist is refused: timed, and counted.
        assert!(
            store
                .delete(vec![removal], false, &Author::control_plane())
                .await
                .is_err()
        );
        assert_eq!(latency.durations(Call::Revision).count(), 2);
        assert_eq!(latency.durations(Call::Get).count(), 1);
        assert_eq!(latency.durations(Call::Delete).count(), 1);
        assert_eq!(latency.errors(Call::Delete), 1);
        assert_eq!(latency.errors(Call::Revision), 0);
        assert_eq!(latency.durations(Call::Apply).count(), 0);
        store.inner().close().await;
    }

    #[test]
    fn every_call_has_its_own_slot() {
        for (i, call) in Call::ALL.iter().enumerate() {
            assert_eq!(*call as usize, i, "{}", call.as_str());
        }
    }
}
