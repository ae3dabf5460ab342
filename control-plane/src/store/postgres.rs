//! The Postgres backend: the production store, shared by several replicas.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions};

/// How long a call waits for a pooled connection (or for a new one to be
/// opened, retried while Postgres refuses) before it fails as unavailable.
/// Short, so that a call made as Postgres goes away fails within it rather
/// than hanging; once the server's poll notices the outage, calls fail at
/// once (see `Breaker`). Queries are short, so waiting this long for one of
/// the pool's connections means the database is overloaded anyway.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A store in Postgres.
#[derive(Debug, Clone)]
pub struct Postgres {
    pool: PgPool,
}

impl Postgres {
    /// Connects to `url` and applies pending migrations.
    pub async fn connect(url: &str) -> super::Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.pool.close().await
    }

    /// Queues a notification of `revision`; Postgres delivers it at commit.
    async fn announce(
        tx: &mut sqlx::Transaction<'static, sqlx::Postgres>,
        revision: u64,
    ) -> super::Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::NOTIFY_CHANNEL)
            .bind(revision.to_string())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    async fn listen(&self) -> super::Result<super::Notifications> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool).await?;
        listener.listen(super::NOTIFY_CHANNEL).await?;
        Ok(super::Notifications::Postgres(Box::new(listener)))
    }

    /// A transaction whose statements all read one snapshot.
    async fn begin_read(&self) -> super::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }
}

super::sql::impl_store!(super::Postgres, sqlx::Postgres);
