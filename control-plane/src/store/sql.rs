//! The statements and write logic shared by both backends.
//!
//! Postgres and SQLite accept the same SQL here (numbered `$n` parameters,
//! `RETURNING`, `ON CONFLICT`), but sqlx types every query by its database, so
//! the shared code is a macro instantiated once per backend with its
//! concrete types. Logic that touches no database lives in plain functions.

use prost::Message;
use switchyard::pb;
use switchyard::resource::{Kind, Ref, clear_pb_output, set_pb_revision};
use switchyard::validate::{Invalid, Violations};

use super::{Error, Op, Result, Role, TokenRow};

/// Node rows per multi-row statement: 11 parameters each stays under both
/// backends' parameter limits (SQLite 32766, Postgres 65535).
pub(super) const NODE_ROWS_PER_STATEMENT: usize = 1000;

/// Endpoints per statement of a health write: 9 parameters per change-log
/// row stays well under both backends' limits.
pub(super) const HEALTH_ROWS_PER_STATEMENT: usize = 1000;

/// The columns of `tokens`, in the order [`token`] takes them.
pub(super) const TOKEN_COLUMNS: &str =
    "name, role, node, hash, created_at_ms, created_by, revoked_at_ms";

/// Most revisions one `changes` call reads, whatever the caller asks.
pub(super) const MAX_CHANGE_REVISIONS: u64 = 1024;

/// Decodes a stored resource body.
pub(super) fn decode(body: &[u8]) -> Result<pb::Resource> {
    pb::Resource::decode(body).map_err(|e| Error::Corrupt(e.to_string()))
}

/// A Unix time in milliseconds as a protobuf timestamp.
pub(super) fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

/// The author recorded in audit columns; `None` for rows written before
/// authors were recorded (an empty principal).
pub(super) fn author(principal: String, address: String, at_ms: i64) -> Option<pb::ChangeAuthor> {
    (!principal.is_empty()).then(|| pb::ChangeAuthor {
        principal,
        address,
        at: Some(timestamp(at_ms)),
    })
}

/// Decodes a stored resource body and attaches its audit columns.
pub(super) fn audited(
    body: &[u8],
    principal: String,
    address: String,
    at_ms: i64,
) -> Result<pb::Resource> {
    let mut resource = decode(body)?;
    resource.last_change = author(principal, address, at_ms);
    Ok(resource)
}

/// Decodes a `tokens` row (columns as in [`TOKEN_COLUMNS`]).
pub(super) fn token(
    name: String,
    role: &str,
    node: String,
    hash: &[u8],
    created_at_ms: i64,
    created_by: String,
    revoked_at_ms: Option<i64>,
) -> Result<TokenRow> {
    let role = Role::parse(role)
        .ok_or_else(|| Error::Corrupt(format!("token {name:?}: role {role:?}")))?;
    let hash = hash
        .try_into()
        .map_err(|_| Error::Corrupt(format!("token {name:?}: hash of {} bytes", hash.len())))?;
    Ok(TokenRow {
        name,
        role,
        node,
        hash,
        created_at_ms,
        created_by,
        revoked_at_ms,
    })
}

/// Decodes a change-log row, whose audit columns [`author`] decoded.
pub(super) fn change(
    revision: i64,
    kind: &str,
    name: String,
    op: &str,
    body: Option<Vec<u8>>,
    author: Option<pb::ChangeAuthor>,
) -> Result<super::Change> {
    let kind = Kind::parse(kind).ok_or_else(|| Error::Corrupt(format!("unknown kind {kind:?}")))?;
    let op = match op {
        "upsert" => Op::Upsert,
        "delete" => Op::Delete,
        other => return Err(Error::Corrupt(format!("unknown op {other:?}"))),
    };
    Ok(super::Change {
        revision: revision as u64,
        op,
        target: Ref::new(kind, name),
        resource: body.as_deref().map(decode).transpose()?,
        author,
    })
}

/// Prepares the body to store for `new` at `revision`, given what is stored.
///
/// Returns `None` when the declared part equals what is stored (nothing to
/// write). Output-only fields the caller sent are dropped; an endpoint keeps
/// the health its agent reported. The author is never part of the body (it
/// has columns of its own), so who applies a resource does not make it
/// differ.
pub(super) fn next_body(
    new: &pb::Resource,
    stored: Option<&pb::Resource>,
    revision: u64,
) -> Option<pb::Resource> {
    let mut next = new.clone();
    clear_pb_output(&mut next);
    next.last_change = None;
    if let Some(stored) = stored {
        let mut declared = stored.clone();
        clear_pb_output(&mut declared);
        declared.last_change = None;
        // Maps are BTreeMaps (see build.rs), so equal messages encode equally.
        if declared.encode_to_vec() == next.encode_to_vec() {
            return None;
        }
        if let (Some(pb::resource::Kind::Endpoint(old)), Some(pb::resource::Kind::Endpoint(e))) =
            (&stored.kind, &mut next.kind)
        {
            e.health = old.health;
            e.health_changed_at = old.health_changed_at;
            e.health_reason = old.health_reason.clone();
        }
    }
    set_pb_revision(&mut next, revision);
    Some(next)
}

/// The body to store for a health report on `stored` at `revision`, or
/// `None` when the report does not apply: not an endpoint, owned by another
/// node, or the health and reason are already the reported ones.
pub(super) fn health_body(
    stored: &pb::Resource,
    write: &super::HealthWrite,
    revision: u64,
) -> Option<pb::Resource> {
    let Some(pb::resource::Kind::Endpoint(old)) = &stored.kind else {
        return None;
    };
    if old.node != write.node
        || (old.health == write.health as i32 && old.health_reason == write.reason)
    {
        return None;
    }
    let mut next = stored.clone();
    if let Some(pb::resource::Kind::Endpoint(e)) = &mut next.kind {
        e.health = write.health as i32;
        e.health_reason = write.reason.clone();
        e.health_changed_at = Some(timestamp(write.at_ms));
        e.revision = revision;
    }
    Some(next)
}

/// Checks that no resource appears twice in one batch.
pub(super) fn no_repeats<'a>(items: impl Iterator<Item = (&'a Ref, &'a str)>) -> Result<()> {
    let mut seen = std::collections::HashMap::new();
    let mut v = Violations::new();
    for (target, field) in items {
        if let Some(first) = seen.insert(target, field) {
            v.push(
                field,
                format_args!("{target} appears twice (also at {first})"),
            );
        }
    }
    v.finish(()).map_err(Error::from)
}

/// Builds the error for references to missing resources.
pub(super) fn missing(list: Vec<(String, Ref)>) -> Error {
    Error::Invalid(Invalid {
        violations: list
            .into_iter()
            .map(|(field, target)| super::missing_violation(field, &target))
            .collect(),
    })
}

/// Decodes node labels stored as `key=value` lines (keys cannot hold `=`,
/// values cannot hold control characters, so this is unambiguous).
pub(super) fn labels_from_text(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Encodes node labels as `key=value` lines.
pub(super) fn labels_to_text(labels: &std::collections::BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

/// Implements [`super::Store`] for `$store`, whose `pool` field is a
/// `sqlx::Pool<$db>` and which provides `begin_read` (a transaction whose
/// reads all see one snapshot), `announce` (tells other replicas, at commit,
/// that a revision was written) and `listen` (hears those announcements).
macro_rules! impl_store {
    ($store:ty, $db:ty) => {
        use prost::Message as _;
        use sqlx::Row as _;
        use switchyard::pb;
        use switchyard::resource::{Kind, Ref};
        use $crate::store::sql;
        use $crate::store::{
            Action, Applied, Author, Bootstrap, Change, Dump, Error, HealthWrite, HealthWritten,
            NodeRow, Notifications, Page, Removal, Result, Store, TokenRow, Write,
        };

        type Tx = sqlx::Transaction<'static, $db>;

        /// `INSERT` of node rows, replacing the row of the same node on
        /// conflict; the caller adds the `WHERE` that decides when.
        fn node_upsert(rows: &[NodeRow]) -> sqlx::QueryBuilder<'_, $db> {
            let mut insert = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO nodes (id, labels, agent_version, applied_revision, connected, replica, \
                 last_seen_ms, nack_revision, nack_error, nack_at_ms, session, instance, \
                 persist_revision, persist_error, persist_at_ms) ",
            );
            insert.push_values(rows, |mut b, row| {
                b.push_bind(&*row.id)
                    .push_bind(sql::labels_to_text(&row.labels))
                    .push_bind(&*row.agent_version)
                    .push_bind(row.applied_revision as i64)
                    .push_bind(row.connected)
                    .push_bind(&*row.replica)
                    .push_bind(row.last_seen_ms)
                    .push_bind(row.nack.as_ref().map(|n| n.0 as i64))
                    .push_bind(row.nack.as_ref().map(|n| n.1.clone()))
                    .push_bind(row.nack.as_ref().map(|n| n.2))
                    .push_bind(row.session as i64)
                    .push_bind(&*row.instance)
                    .push_bind(row.persist.as_ref().map(|p| p.0 as i64))
                    .push_bind(row.persist.as_ref().map(|p| p.1.clone()))
                    .push_bind(row.persist.as_ref().map(|p| p.2));
            });
            insert.push(
                " ON CONFLICT (id) DO UPDATE SET labels = excluded.labels, \
                 agent_version = excluded.agent_version, applied_revision = excluded.applied_revision, \
                 connected = excluded.connected, replica = excluded.replica, \
                 last_seen_ms = excluded.last_seen_ms, nack_revision = excluded.nack_revision, \
                 nack_error = excluded.nack_error, nack_at_ms = excluded.nack_at_ms, \
                 session = excluded.session, instance = excluded.instance, \
                 persist_revision = excluded.persist_revision, persist_error = excluded.persist_error, \
                 persist_at_ms = excluded.persist_at_ms",
            );
            insert
        }

        /// Takes the next revision. Must be the first statement of every
        /// write transaction: the row lock orders writers by commit.
        async fn bump(tx: &mut Tx) -> Result<u64> {
            let rev: i64 = sqlx::query_scalar(
                "UPDATE meta SET revision = revision + 1 WHERE id = 1 RETURNING revision",
            )
            .fetch_one(&mut **tx)
            .await?;
            Ok(rev as u64)
        }

        /// Takes the next token epoch. Must be the first statement of every
        /// token write: as with `bump`, the row lock orders token writers,
        /// and on SQLite a transaction that starts by writing waits for the
        /// lock instead of acting on a stale read.
        async fn bump_tokens(tx: &mut Tx) -> Result<u64> {
            let epoch: i64 = sqlx::query_scalar(
                "UPDATE meta SET tokens_epoch = tokens_epoch + 1 WHERE id = 1 RETURNING tokens_epoch",
            )
            .fetch_one(&mut **tx)
            .await?;
            Ok(epoch as u64)
        }

        /// Inserts `row`; false when its name is taken.
        async fn insert_token(tx: &mut Tx, row: &TokenRow) -> Result<bool> {
            let done = sqlx::query(
                "INSERT INTO tokens (name, role, node, hash, created_at_ms, created_by, revoked_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&row.name)
            .bind(row.role.as_str())
            .bind(&row.node)
            .bind(&row.hash[..])
            .bind(row.created_at_ms)
            .bind(&row.created_by)
            .bind(row.revoked_at_ms)
            .execute(&mut **tx)
            .await?;
            Ok(done.rows_affected() == 1)
        }

        fn token_from(row: &<$db as sqlx::Database>::Row) -> Result<TokenRow> {
            sql::token(
                row.get(0),
                row.get::<&str, _>(1),
                row.get(2),
                row.get::<&[u8], _>(3),
                row.get(4),
                row.get(5),
                row.get(6),
            )
        }

        async fn load(tx: &mut Tx, target: &Ref) -> Result<Option<(u64, pb::Resource)>> {
            let row = sqlx::query("SELECT revision, body FROM resources WHERE kind = $1 AND name = $2")
                .bind(target.kind.as_str())
                .bind(&target.name)
                .fetch_optional(&mut **tx)
                .await?;
            row.map(|row| {
                let rev: i64 = row.get(0);
                let body: Vec<u8> = row.get(1);
                Ok((rev as u64, sql::decode(&body)?))
            })
            .transpose()
        }

        async fn exists(tx: &mut Tx, target: &Ref) -> Result<bool> {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT revision FROM resources WHERE kind = $1 AND name = $2")
                    .bind(target.kind.as_str())
                    .bind(&target.name)
                    .fetch_optional(&mut **tx)
                    .await?;
            Ok(found.is_some())
        }

        /// The audit part of a write: who, from where, when.
        struct Stamp<'a> {
            author: &'a Author,
            at_ms: i64,
        }

        async fn log(
            tx: &mut Tx,
            revision: u64,
            seq: usize,
            target: &Ref,
            body: Option<&[u8]>,
            stamp: &Stamp<'_>,
        ) -> Result<()> {
            sqlx::query(
                "INSERT INTO changes (revision, seq, kind, name, op, body, principal, address, at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(revision as i64)
            .bind(seq as i32)
            .bind(target.kind.as_str())
            .bind(&target.name)
            .bind(if body.is_some() { "upsert" } else { "delete" })
            .bind(body)
            .bind(&stamp.author.principal)
            .bind(&stamp.author.address)
            .bind(stamp.at_ms)
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        async fn clear_refs(tx: &mut Tx, from: &Ref) -> Result<()> {
            sqlx::query("DELETE FROM refs WHERE from_kind = $1 AND from_name = $2")
                .bind(from.kind.as_str())
                .bind(&from.name)
                .execute(&mut **tx)
                .await?;
            Ok(())
        }

        fn check_expected(target: &Ref, expected: Option<u64>, actual: Option<u64>) -> Result<()> {
            match expected {
                Some(0) if actual.is_none() => Ok(()),
                Some(e) if actual != Some(e) || e == 0 => Err(Error::Conflict {
                    target: target.clone(),
                    expected: e,
                    actual,
                }),
                _ => Ok(()),
            }
        }

        async fn finish(tx: Tx, dry_run: bool) -> Result<()> {
            if dry_run {
                tx.rollback().await?;
            } else {
                tx.commit().await?;
            }
            Ok(())
        }

        impl Store for $store {
            async fn apply(&self, writes: Vec<Write>, dry_run: bool, author: &Author) -> Result<Applied> {
                sql::no_repeats(writes.iter().map(|w| (&w.target, w.field.as_str())))?;
                let mut tx: Tx = self.pool.begin().await?;
                let revision = bump(&mut tx).await?;
                // Taken once the counter is locked, so that times follow
                // revision order as closely as the clock allows.
                let stamp = Stamp { author, at_ms: $crate::store::now_ms() };
                let mut results = Vec::with_capacity(writes.len());
                let mut written = 0usize;
                for w in &writes {
                    let stored = load(&mut tx, &w.target).await?;
                    check_expected(&w.target, w.expected_revision, stored.as_ref().map(|s| s.0))?;
                    let Some(next) = sql::next_body(&w.resource, stored.as_ref().map(|s| &s.1), revision)
                    else {
                        let rev = stored.as_ref().map_or(0, |s| s.0);
                        results.push((w.target.clone(), Action::Unchanged, rev));
                        continue;
                    };
                    let body = next.encode_to_vec();
                    sqlx::query(
                        "INSERT INTO resources (kind, name, revision, body, changed_by, changed_from, changed_at_ms) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7) \
                         ON CONFLICT (kind, name) DO UPDATE SET revision = excluded.revision, body = excluded.body, \
                         changed_by = excluded.changed_by, changed_from = excluded.changed_from, \
                         changed_at_ms = excluded.changed_at_ms",
                    )
                    .bind(w.target.kind.as_str())
                    .bind(&w.target.name)
                    .bind(revision as i64)
                    .bind(&body)
                    .bind(&author.principal)
                    .bind(&author.address)
                    .bind(stamp.at_ms)
                    .execute(&mut *tx)
                    .await?;
                    clear_refs(&mut tx, &w.target).await?;
                    for (to, _) in &w.refs {
                        sqlx::query(
                            "INSERT INTO refs (from_kind, from_name, to_kind, to_name) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(w.target.kind.as_str())
                        .bind(&w.target.name)
                        .bind(to.kind.as_str())
                        .bind(&to.name)
                        .execute(&mut *tx)
                        .await?;
                    }
                    log(&mut tx, revision, written, &w.target, Some(&body), &stamp).await?;
                    written += 1;
                    let action = if stored.is_some() { Action::Configured } else { Action::Created };
                    results.push((w.target.clone(), action, revision));
                }
                // References are checked against the state after the whole
                // batch, so a batch may create a service and its endpoints.
                let mut missing = Vec::new();
                for w in &writes {
                    for (to, field) in &w.refs {
                        if !exists(&mut tx, to).await? {
                            missing.push((format!("{}.{field}", w.field), to.clone()));
                        }
                    }
                }
                if !missing.is_empty() {
                    return Err(sql::missing(missing));
                }
                if written == 0 {
                    tx.rollback().await?;
                    return Ok(Applied { revision: revision - 1, results });
                }
                <$store>::announce(&mut tx, revision).await?;
                finish(tx, dry_run).await?;
                let revision = if dry_run { revision - 1 } else { revision };
                Ok(Applied { revision, results })
            }

            async fn delete(&self, removals: Vec<Removal>, dry_run: bool, author: &Author) -> Result<u64> {
                sql::no_repeats(removals.iter().map(|r| (&r.target, r.field.as_str())))?;
                let mut tx: Tx = self.pool.begin().await?;
                let revision = bump(&mut tx).await?;
                let stamp = Stamp { author, at_ms: $crate::store::now_ms() };
                for (seq, r) in removals.iter().enumerate() {
                    let actual: Option<i64> = sqlx::query_scalar(
                        "DELETE FROM resources WHERE kind = $1 AND name = $2 RETURNING revision",
                    )
                    .bind(r.target.kind.as_str())
                    .bind(&r.target.name)
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(actual) = actual else {
                        return Err(Error::NotFound(r.target.clone()));
                    };
                    check_expected(&r.target, r.expected_revision, Some(actual as u64))?;
                    clear_refs(&mut tx, &r.target).await?;
                    log(&mut tx, revision, seq, &r.target, None, &stamp).await?;
                }
                for r in &removals {
                    let rows = sqlx::query(
                        "SELECT from_kind, from_name FROM refs WHERE to_kind = $1 AND to_name = $2 \
                         ORDER BY from_kind, from_name LIMIT 10",
                    )
                    .bind(r.target.kind.as_str())
                    .bind(&r.target.name)
                    .fetch_all(&mut *tx)
                    .await?;
                    if !rows.is_empty() {
                        let by = rows
                            .iter()
                            .filter_map(|row| {
                                Some(Ref::new(Kind::parse(row.get::<&str, _>(0))?, row.get::<String, _>(1)))
                            })
                            .collect();
                        return Err(Error::Referenced { target: r.target.clone(), by });
                    }
                }
                <$store>::announce(&mut tx, revision).await?;
                finish(tx, dry_run).await?;
                Ok(if dry_run { revision - 1 } else { revision })
            }

            async fn get(&self, target: &Ref) -> Result<Option<pb::Resource>> {
                let row = sqlx::query(
                    "SELECT body, changed_by, changed_from, changed_at_ms FROM resources \
                     WHERE kind = $1 AND name = $2",
                )
                .bind(target.kind.as_str())
                .bind(&target.name)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|row| sql::audited(row.get::<&[u8], _>(0), row.get(1), row.get(2), row.get(3)))
                    .transpose()
            }

            async fn list(&self, kind: Kind, after: &str, limit: usize) -> Result<Page> {
                let mut tx = self.begin_read().await?;
                let revision: i64 = sqlx::query_scalar("SELECT revision FROM meta WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
                let rows = sqlx::query(
                    "SELECT body, changed_by, changed_from, changed_at_ms FROM resources \
                     WHERE kind = $1 AND name > $2 ORDER BY name LIMIT $3",
                )
                .bind(kind.as_str())
                .bind(after)
                .bind(limit as i64 + 1)
                .fetch_all(&mut *tx)
                .await?;
                tx.rollback().await?;
                let more = rows.len() > limit;
                let resources = rows
                    .iter()
                    .take(limit)
                    .map(|row| sql::audited(row.get::<&[u8], _>(0), row.get(1), row.get(2), row.get(3)))
                    .collect::<Result<_>>()?;
                Ok(Page { resources, revision: revision as u64, more })
            }

            async fn missing(&self, refs: &[Ref]) -> Result<Vec<Ref>> {
                let mut tx = self.begin_read().await?;
                let mut out = Vec::new();
                for target in refs {
                    if !exists(&mut tx, target).await? {
                        out.push(target.clone());
                    }
                }
                tx.rollback().await?;
                Ok(out)
            }

            async fn changes(&self, after: u64, max_revisions: u64) -> Result<Vec<Change>> {
                let upto = after.saturating_add(max_revisions.clamp(1, sql::MAX_CHANGE_REVISIONS));
                let mut tx = self.begin_read().await?;
                let horizon: i64 = sqlx::query_scalar("SELECT horizon FROM meta WHERE id = 1")
                    .fetch_one(&mut *tx)
                    .await?;
                if after < horizon as u64 {
                    tx.rollback().await?;
                    return Err(Error::Compacted { requested: after, horizon: horizon as u64 });
                }
                let rows = sqlx::query(
                    "SELECT revision, kind, name, op, body, principal, address, at_ms FROM changes \
                     WHERE revision > $1 AND revision <= $2 ORDER BY revision, seq",
                )
                .bind(after as i64)
                .bind(upto.min(i64::MAX as u64) as i64)
                .fetch_all(&mut *tx)
                .await?;
                tx.rollback().await?;
                rows.into_iter()
                    .map(|row| {
                        sql::change(
                            row.get(0),
                            row.get::<&str, _>(1),
                            row.get(2),
                            row.get::<&str, _>(3),
                            row.get(4),
                            sql::author(row.get(5), row.get(6), row.get(7)),
                        )
                    })
                    .collect()
            }

            async fn revision(&self) -> Result<u64> {
                let rev: i64 = sqlx::query_scalar("SELECT revision FROM meta WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(rev as u64)
            }

            async fn compact(&self, keep: u64) -> Result<u64> {
                let mut tx: Tx = self.pool.begin().await?;
                // Lock the counter so no writer commits while the horizon moves.
                let (revision, horizon): (i64, i64) = sqlx::query_as(
                    "UPDATE meta SET horizon = horizon WHERE id = 1 RETURNING revision, horizon",
                )
                .fetch_one(&mut *tx)
                .await?;
                let target = (revision as u64).saturating_sub(keep);
                if target <= horizon as u64 {
                    tx.rollback().await?;
                    return Ok(horizon as u64);
                }
                sqlx::query("DELETE FROM changes WHERE revision <= $1")
                    .bind(target as i64)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("UPDATE meta SET horizon = $1 WHERE id = 1")
                    .bind(target as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(target)
            }

            async fn nodes(&self) -> Result<Vec<pb::Node>> {
                let rows = sqlx::query(
                    "SELECT id, labels, agent_version, applied_revision, connected, replica, \
                     last_seen_ms, nack_revision, nack_error, nack_at_ms, persist_revision, \
                     persist_error, persist_at_ms FROM nodes ORDER BY id",
                )
                .fetch_all(&self.pool)
                .await?;
                let ts = sql::timestamp;
                Ok(rows
                    .into_iter()
                    .map(|row| {
                        let nack_revision: Option<i64> = row.get(7);
                        let persist_revision: Option<i64> = row.get(10);
                        pb::Node {
                            id: row.get(0),
                            labels: sql::labels_from_text(row.get::<&str, _>(1)),
                            agent_version: row.get(2),
                            applied_revision: row.get::<i64, _>(3) as u64,
                            connected: row.get(4),
                            replica: row.get(5),
                            last_seen: Some(ts(row.get(6))),
                            last_nack: nack_revision.map(|rev| pb::NodeNack {
                                revision: rev as u64,
                                error: row.get::<Option<String>, _>(8).unwrap_or_default(),
                                at: row.get::<Option<i64>, _>(9).map(ts),
                            }),
                            persist_failure: persist_revision.map(|rev| pb::NodePersistFailure {
                                revision: rev as u64,
                                error: row.get::<Option<String>, _>(11).unwrap_or_default(),
                                since: row.get::<Option<i64>, _>(12).map(ts),
                            }),
                        }
                    })
                    .collect())
            }

            async fn dump(&self) -> Result<Dump> {
                let mut tx = self.begin_read().await?;
                let (revision, horizon): (i64, i64) =
                    sqlx::query_as("SELECT revision, horizon FROM meta WHERE id = 1")
                        .fetch_one(&mut *tx)
                        .await?;
                let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM resources")
                    .fetch_all(&mut *tx)
                    .await?;
                tx.rollback().await?;
                Ok(Dump {
                    revision: revision as u64,
                    horizon: horizon as u64,
                    resources: bodies.iter().map(|b| sql::decode(b)).collect::<Result<_>>()?,
                })
            }

            async fn horizon(&self) -> Result<u64> {
                let horizon: i64 = sqlx::query_scalar("SELECT horizon FROM meta WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(horizon as u64)
            }

            async fn record_nodes(&self, rows: Vec<NodeRow>) -> Result<()> {
                if rows.is_empty() {
                    return Ok(());
                }
                let mut tx: Tx = self.pool.begin().await?;
                // Multi-row statements: a fleet acking one change is one
                // round trip per thousand nodes, not one per node.
                for chunk in rows.chunks(sql::NODE_ROWS_PER_STATEMENT) {
                    let mut insert = node_upsert(chunk);
                    // A session updates its own row; a new one takes the
                    // row of a disconnected node, or of a stream of its own
                    // replica (which admits one stream per node). Never the
                    // row of a live stream on another replica: an old
                    // stream there, not yet seen dead, must not overwrite
                    // the node's new one.
                    insert.push(
                        " WHERE nodes.session = excluded.session OR (excluded.connected \
                         AND (NOT nodes.connected OR nodes.replica = excluded.replica))",
                    );
                    insert.build().execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            async fn claim_node(&self, row: NodeRow, live_after_ms: i64) -> Result<Option<String>> {
                let id = row.id.clone();
                let rows = [row];
                let mut claim = node_upsert(&rows);
                claim
                    .push(
                        " WHERE nodes.session = excluded.session OR NOT nodes.connected \
                         OR nodes.replica = excluded.replica \
                         OR (excluded.instance <> '' AND nodes.instance = excluded.instance) \
                         OR nodes.last_seen_ms < ",
                    )
                    .push_bind(live_after_ms);
                let mut tx: Tx = self.pool.begin().await?;
                let written = claim.build().execute(&mut *tx).await?.rows_affected();
                let holder = match written {
                    0 => Some(
                        sqlx::query_scalar("SELECT replica FROM nodes WHERE id = $1")
                            .bind(&*id)
                            .fetch_one(&mut *tx)
                            .await?,
                    ),
                    _ => None,
                };
                tx.commit().await?;
                Ok(holder)
            }

            async fn expire_nodes(&self, before_ms: i64) -> Result<u64> {
                let done = sqlx::query("UPDATE nodes SET connected = FALSE WHERE connected AND last_seen_ms < $1")
                    .bind(before_ms)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn write_health(&self, writes: Vec<HealthWrite>) -> Result<HealthWritten> {
                if writes.is_empty() {
                    return Ok(HealthWritten::default());
                }
                let endpoint = Kind::Endpoint.as_str();
                let mut tx: Tx = self.pool.begin().await?;
                let revision = bump(&mut tx).await?;
                let at_ms = $crate::store::now_ms();
                // Read every named endpoint, decide, then write the changed
                // ones: three multi-row statements per thousand reports.
                let mut next: Vec<(String, Vec<u8>, Author)> = Vec::new();
                for chunk in writes.chunks(sql::HEALTH_ROWS_PER_STATEMENT) {
                    let mut select = sqlx::QueryBuilder::<$db>::new(
                        "SELECT name, body FROM resources WHERE kind = ",
                    );
                    select.push_bind(endpoint).push(" AND name IN (");
                    let mut names = select.separated(", ");
                    for w in chunk {
                        names.push_bind(&w.endpoint);
                    }
                    names.push_unseparated(")");
                    let rows = select.build().fetch_all(&mut *tx).await?;
                    let mut stored = std::collections::HashMap::with_capacity(rows.len());
                    for row in rows {
                        let body: Vec<u8> = row.get(1);
                        stored.insert(row.get::<String, _>(0), sql::decode(&body)?);
                    }
                    for w in chunk {
                        let Some(old) = stored.get_mut(&w.endpoint) else { continue };
                        if let Some(body) = sql::health_body(old, w, revision) {
                            next.push((w.endpoint.clone(), body.encode_to_vec(), w.author()));
                            // A later report for the same endpoint in this
                            // batch compares with this one.
                            *old = body;
                        }
                    }
                }
                // Several reports of one endpoint in a batch: the last wins.
                let mut last = std::collections::HashMap::new();
                for (i, (name, _, _)) in next.iter().enumerate() {
                    last.insert(name.clone(), i);
                }
                let next: Vec<_> = next
                    .into_iter()
                    .enumerate()
                    .filter(|(i, (name, _, _))| last.get(name) == Some(i))
                    .map(|(_, x)| x)
                    .collect();
                if next.is_empty() {
                    tx.rollback().await?;
                    return Ok(HealthWritten::default());
                }
                for (n, chunk) in next.chunks(sql::HEALTH_ROWS_PER_STATEMENT).enumerate() {
                    let mut upsert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO resources (kind, name, revision, body, changed_by, changed_from, changed_at_ms) ",
                    );
                    upsert.push_values(chunk, |mut b, (name, body, author)| {
                        b.push_bind(endpoint)
                            .push_bind(name)
                            .push_bind(revision as i64)
                            .push_bind(body)
                            .push_bind(&author.principal)
                            .push_bind(&author.address)
                            .push_bind(at_ms);
                    });
                    upsert.push(
                        " ON CONFLICT (kind, name) DO UPDATE SET revision = excluded.revision, body = excluded.body, \
                         changed_by = excluded.changed_by, changed_from = excluded.changed_from, \
                         changed_at_ms = excluded.changed_at_ms",
                    );
                    upsert.build().execute(&mut *tx).await?;
                    let mut log = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO changes (revision, seq, kind, name, op, body, principal, address, at_ms) ",
                    );
                    let first = n * sql::HEALTH_ROWS_PER_STATEMENT;
                    log.push_values(chunk.iter().enumerate(), |mut b, (i, (name, body, author))| {
                        b.push_bind(revision as i64)
                            .push_bind((first + i) as i32)
                            .push_bind(endpoint)
                            .push_bind(name)
                            .push_bind("upsert")
                            .push_bind(body)
                            .push_bind(&author.principal)
                            .push_bind(&author.address)
                            .push_bind(at_ms);
                    });
                    log.build().execute(&mut *tx).await?;
                }
                <$store>::announce(&mut tx, revision).await?;
                tx.commit().await?;
                Ok(HealthWritten {
                    revision: Some(revision),
                    written: next.into_iter().map(|(name, _, _)| name).collect(),
                })
            }

            async fn stale_nodes(&self, before_ms: i64) -> Result<Vec<String>> {
                Ok(sqlx::query_scalar("SELECT id FROM nodes WHERE last_seen_ms < $1 ORDER BY id")
                    .bind(before_ms)
                    .fetch_all(&self.pool)
                    .await?)
            }

            async fn notifications(&self) -> Result<Notifications> {
                self.listen().await
            }

            async fn create_token(&self, row: TokenRow) -> Result<()> {
                let mut tx: Tx = self.pool.begin().await?;
                bump_tokens(&mut tx).await?;
                if !insert_token(&mut tx, &row).await? {
                    tx.rollback().await?;
                    return Err(Error::Exists(row.name));
                }
                tx.commit().await?;
                Ok(())
            }

            async fn tokens(&self) -> Result<Vec<TokenRow>> {
                let rows = sqlx::query(&format!("SELECT {} FROM tokens ORDER BY name", sql::TOKEN_COLUMNS))
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(token_from).collect()
            }

            async fn revoke_token(&self, name: &str, at_ms: i64) -> Result<TokenRow> {
                let mut tx: Tx = self.pool.begin().await?;
                bump_tokens(&mut tx).await?;
                let row = sqlx::query(&format!(
                    "UPDATE tokens SET revoked_at_ms = COALESCE(revoked_at_ms, $2) WHERE name = $1 \
                     RETURNING {}",
                    sql::TOKEN_COLUMNS
                ))
                .bind(name)
                .bind(at_ms)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    tx.rollback().await?;
                    return Err(Error::TokenNotFound(name.to_owned()));
                };
                let token = token_from(&row)?;
                tx.commit().await?;
                Ok(token)
            }

            async fn token_epoch(&self) -> Result<u64> {
                let epoch: i64 = sqlx::query_scalar("SELECT tokens_epoch FROM meta WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(epoch as u64)
            }

            async fn bootstrap_token(
                &self,
                row: TokenRow,
                created: impl FnOnce() -> std::result::Result<(), String> + Send,
            ) -> Result<Bootstrap> {
                let mut tx: Tx = self.pool.begin().await?;
                // First, so that a concurrent bootstrap (another replica, or
                // another process on the same SQLite file) waits here until
                // this one commits or rolls back, then counts our token.
                bump_tokens(&mut tx).await?;
                let tokens: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tokens")
                    .fetch_one(&mut *tx)
                    .await?;
                if tokens > 0 {
                    tx.rollback().await?;
                    return Ok(Bootstrap::Exists { tokens: tokens as u64 });
                }
                if !insert_token(&mut tx, &row).await? {
                    // Cannot happen: under the lock, no token existed.
                    tx.rollback().await?;
                    return Err(Error::Exists(row.name));
                }
                if let Err(reason) = created() {
                    tx.rollback().await?;
                    return Err(Error::Bootstrap(reason));
                }
                tx.commit().await?;
                Ok(Bootstrap::Created)
            }
        }
    };
}

pub(super) use impl_store;
