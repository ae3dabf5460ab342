//! [`Breaker`]: a store that fails fast while it is known to be down.
//!
//! Without it, every call made during a store outage waits for a pooled
//! connection until the pool gives up, then fails; clients wait seconds per
//! call, and the calls pile up. The server's upkeep reads the store's
//! revision periodically (with a short timeout) and reports the outcome
//! here ([`Breaker::set_up`]); while the last poll failed, every call
//! answers [`Error::Unavailable`] at once, without touching the database,
//! so that clients retry another replica. The upkeep's own poll goes to the
//! wrapped store ([`Breaker::inner`]), which is how the circuit closes again.
//!
//! Calls already running when the store goes down are not cut off: a write
//! in flight either commits or fails on its own (bounded by the pool's
//! acquire timeout when no connection can be had).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use switchyard::pb;
use switchyard::resource::{Kind, Ref};

use super::{
    Applied, Author, Bootstrap, Change, Dump, Error, HealthWrite, HealthWritten, NodeRow,
    Notifications, Page, Removal, Result, Store, TokenRow, Write,
};

/// A store whose calls fail fast while it is known to be unreachable.
#[derive(Debug)]
pub struct Breaker<S> {
    inner: S,
    /// Whether the last poll of the store succeeded. Shared with whoever
    /// reports readiness; relaxed ordering: it guards nothing but itself.
    up: Arc<AtomicBool>,
}

impl<S: Store> Breaker<S> {
    /// Wraps `inner`, taken to be reachable.
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// The wrapped store, whose calls always reach the database: for the
    /// poll that decides whether the store is up.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Whether the store is taken to be reachable.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The flag [`Breaker::is_up`] reads, for a readiness probe.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.up.clone()
    }

    /// Records whether the store answered its last poll; returns what was
    /// recorded before.
    pub fn set_up(&self, up: bool) -> bool {
        self.up.swap(up, Ordering::Relaxed)
    }

    fn check(&self) -> Result<()> {
        match self.is_up() {
            true => Ok(()),
            false => Err(Error::Unavailable),
        }
    }
}

impl<S: Store> Store for Breaker<S> {
    async fn apply(&self, writes: Vec<Write>, dry_run: bool, author: &Author) -> Result<Applied> {
        self.check()?;
        self.inner.apply(writes, dry_run, author).await
    }
    async fn delete(&self, removals: Vec<Removal>, dry_run: bool, author: &Author) -> Result<u64> {
        self.check()?;
        self.inner.delete(removals, dry_run, author).await
    }
    async fn get(&self, target: &Ref) -> Result<Option<pb::Resource>> {
        self.check()?;
        self.inner.get(target).await
    }
    async fn list(&self, kind: Kind, after: &str, limit: usize) -> Result<Page> {
        self.check()?;
        self.inner.list(kind, after, limit).await
    }
    async fn missing(&self, refs: &[Ref]) -> Result<Vec<Ref>> {
        self.check()?;
        self.inner.missing(refs).await
    }
    async fn changes(&self, after: u64, max_revisions: u64) -> Result<Vec<Change>> {
        self.check()?;
        self.inner.changes(after, max_revisions).await
    }
    async fn revision(&self) -> Result<u64> {
        self.check()?;
        self.inner.revision().await
    }
    async fn compact(&self, keep: u64) -> Result<u64> {
        self.check()?;
        self.inner.compact(keep).await
    }
    async fn nodes(&self) -> Result<Vec<pb::Node>> {
        self.check()?;
        self.inner.nodes().await
    }
    async fn dump(&self) -> Result<Dump> {
        self.check()?;
        self.inner.dump().await
    }
    async fn horizon(&self) -> Result<u64> {
        self.check()?;
        self.inner.horizon().await
    }
    async fn record_nodes(&self, rows: Vec<NodeRow>) -> Result<()> {
        self.check()?;
        self.inner.record_nodes(rows).await
    }
    async fn claim_node(&self, row: NodeRow, live_after_ms: i64) -> Result<Option<String>> {
        self.check()?;
        self.inner.claim_node(row, live_after_ms).await
    }
    async fn expire_nodes(&self, before_ms: i64) -> Result<u64> {
        self.check()?;
        self.inner.expire_nodes(before_ms).await
    }
    async fn write_health(&self, writes: Vec<HealthWrite>) -> Result<HealthWritten> {
        self.check()?;
        self.inner.write_health(writes).await
    }
    async fn stale_nodes(&self, before_ms: i64) -> Result<Vec<String>> {
        self.check()?;
        self.inner.stale_nodes(before_ms).await
    }
    async fn notifications(&self) -> Result<Notifications> {
        self.check()?;
        self.inner.notifications().await
    }
    async fn create_token(&self, row: TokenRow) -> Result<()> {
        self.check()?;
        self.inner.create_token(row).await
    }
    async fn tokens(&self) -> Result<Vec<TokenRow>> {
        self.check()?;
        self.inner.tokens().await
    }
    async fn revoke_token(&self, name: &str, at_ms: i64) -> Result<TokenRow> {
        self.check()?;
        self.inner.revoke_token(name, at_ms).await
    }
    async fn token_epoch(&self) -> Result<u64> {
        self.check()?;
        self.inner.token_epoch().await
    }
    async fn bootstrap_token(
        &self,
        row: TokenRow,
        created: impl FnOnce() -> std::result::Result<(), String> + Send,
    ) -> Result<Bootstrap> {
        self.check()?;
        self.inner.bootstrap_token(row, created).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TestDb;

    #[tokio::test]
    async fn calls_fail_fast_while_down_and_pass_again_once_up() {
        let db = TestDb::sqlite();
        let store = Breaker::new(db.store().await);
        assert_eq!(store.revision().await.unwrap(), 0);
        assert!(store.set_up(false));
        assert!(matches!(store.revision().await, Err(Error::Unavailable)));
        assert!(matches!(store.nodes().await, Err(Error::Unavailable)));
        // The poll goes around the circuit.
        assert_eq!(store.inner().revision().await.unwrap(), 0);
        assert!(!store.set_up(true));
        assert_eq!(store.revision().await.unwrap(), 0);
        store.inner().close().await;
    }
}
