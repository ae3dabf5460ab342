//! The SQLite backend: the embedded default, one file, one replica.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// A store in an SQLite file.
#[derive(Debug, Clone)]
pub struct Sqlite {
    pool: SqlitePool,
}

impl Sqlite {
    /// Opens (creating if needed) the database at `url` (`sqlite://path`)
    /// and applies pending migrations.
    pub async fn connect(url: &str) -> super::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            // WAL lets readers run beside the one writer; FULL sync makes an
            // acknowledged write survive a power cut, not only a crash.
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Closes every pooled connection.
    pub async fn close(&self) {
        self.pool.close().await
    }

    /// Nothing to announce: an SQLite file has one replica.
    async fn announce(
        _tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>,
        _revision: u64,
    ) -> super::Result<()> {
        Ok(())
    }

    async fn listen(&self) -> super::Result<super::Notifications> {
        Ok(super::Notifications::None)
    }

    /// A transaction whose statements all read one snapshot (in WAL mode a
    /// read transaction sees the database as of its first read).
    async fn begin_read(&self) -> super::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin().await?)
    }
}

super::sql::impl_store!(super::Sqlite, sqlx::Sqlite);
