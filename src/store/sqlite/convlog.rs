//! The `convlog` table: the conversation log (interface §8.1), one row per record, written
//! inside the transactions that decide what it says (the push commit, a send's claim or
//! finish), so it adds no fsync of its own to the push path. Created by its own `CREATE TABLE
//! IF NOT EXISTS` at open, like the media table, so the schema version stays.
//!
//! With `state.redis_url` the log lives in Redis (shared by the instances) and this table is
//! not written ([`SqliteStore::configure_log`] with `local = false`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use rusqlite::{Connection, params};

use super::engine::Post;
use super::{Inner, SqliteStore};
use crate::convlog::{FollowerActivity, LogBus, LogOutcome, LogRecord, Via};
use crate::model::OpenId;
use crate::store::{Outcome, StoreResult};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS convlog (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    openid  TEXT NOT NULL,
    at_ms   INTEGER NOT NULL,
    record  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS convlog_follower ON convlog (openid, id);
";

impl Inner {
    /// Whether this store writes the log (configured, retention above zero, not in Redis).
    pub(super) fn logs(&self) -> bool {
        // A journaled op writes the log as it was when the op was made, live and replayed.
        if let Some(logs) = super::ops::running_logs() {
            return logs;
        }
        self.log_local.load(Ordering::Relaxed) && self.log_retention_ms.load(Ordering::Relaxed) > 0
    }
}

/// Writes one record in the current transaction (when this store keeps the log); it is
/// published on the bus after the commit.
pub(super) fn insert_tx(
    conn: &Connection,
    inner: &Inner,
    post: &mut Post,
    mut rec: LogRecord,
) -> StoreResult<()> {
    if !inner.logs() {
        return Ok(());
    }
    rec.id = 0;
    conn.prepare_cached("INSERT INTO convlog (openid, at_ms, record) VALUES (?1, ?2, ?3)")?
        .execute(params![rec.openid.as_str(), rec.at_ms, rec.encode()])?;
    rec.id = conn.last_insert_rowid();
    post.log.push(rec);
    Ok(())
}

/// Logs how a send ended, from its outbox entry, in the transaction that records it. A retry
/// is not an outcome yet.
pub(super) fn outcome_tx(
    conn: &Connection,
    inner: &Inner,
    post: &mut Post,
    id: i64,
    outcome: &Outcome,
    now_ms: i64,
) -> StoreResult<()> {
    if !inner.logs() {
        return Ok(());
    }
    let Some((kind, reason)) = outcome_parts(outcome) else { return Ok(()) };
    let Some(entry) = super::outbox::query_outbox(conn, "id = ?1", [id])?.pop() else {
        return Ok(());
    };
    if !crate::convlog::is_message(&entry.action) {
        return Ok(());
    }
    let rec =
        LogRecord::answer(&entry.openid, now_ms, &entry.action, Via::CustomSend, kind, reason);
    insert_tx(conn, inner, post, rec)
}

/// The log's outcome of a send's outcome; None for a retry.
pub fn outcome_parts(outcome: &Outcome) -> Option<(LogOutcome, Option<String>)> {
    Some(match outcome {
        Outcome::Sent => (LogOutcome::Sent, None),
        Outcome::Failed { reason } => (LogOutcome::Failed, Some(reason.clone())),
        Outcome::Dropped { reason } => (LogOutcome::Dropped, Some(reason.clone())),
        Outcome::Held { reason, .. } => (LogOutcome::Held, Some(reason.clone())),
        Outcome::Retry { .. } => return None,
    })
}

fn decode_rows(
    rows: impl Iterator<Item = rusqlite::Result<(i64, String)>>,
) -> StoreResult<Vec<LogRecord>> {
    let mut out = Vec::new();
    for row in rows {
        let (id, raw) = row?;
        // A record another version wrote and this one cannot read is skipped, not fatal.
        if let Some(mut r) = LogRecord::decode(&raw) {
            r.id = id;
            out.push(r);
        }
    }
    Ok(out)
}

impl SqliteStore {
    /// How long log records are kept, and whether this store keeps them (`local`: no Redis).
    /// Until called, nothing is logged.
    pub fn configure_log(&self, retention: Duration, local: bool) {
        let ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
        self.inner.log_retention_ms.store(ms, Ordering::Relaxed);
        self.inner.log_local.store(local, Ordering::Relaxed);
    }

    /// `log.retention` in ms as configured (0: no log).
    pub fn log_retention_ms(&self) -> i64 {
        self.inner.log_retention_ms.load(Ordering::Relaxed)
    }

    /// The live feed of this process's records.
    pub fn log_bus(&self) -> LogBus {
        self.inner.log_bus.clone()
    }

    pub(super) async fn log_append_sql(&self, records: Vec<LogRecord>) -> StoreResult<()> {
        self.write(move |conn, inner, post| {
            for r in records {
                insert_tx(conn, inner, post, r)?;
            }
            Ok(())
        })
        .await
    }

    pub(super) async fn log_followers_sql(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> StoreResult<Vec<FollowerActivity>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        // No cursor: everything (no follower is last active at i64::MAX ms).
        let (before_ms, before_id) = before.unwrap_or((i64::MAX, String::new()));
        self.read(move |conn| {
            // (last ms, openid) descending, the order Redis's ZREVRANGEBYSCORE gives: a total
            // order, so a page ends between two followers, never inside a millisecond.
            let mut stmt = conn.prepare_cached(
                "SELECT openid, MAX(at_ms) AS last, MAX(id), COUNT(*) FROM convlog \
                 GROUP BY openid HAVING last < ?1 OR (last = ?1 AND openid < ?2) \
                 ORDER BY last DESC, openid DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![before_ms, before_id, limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (openid, last_at_ms, last_id, n) = row?;
                let Ok(openid) = OpenId::parse(&openid) else { continue };
                let raw: Option<String> = conn
                    .prepare_cached("SELECT record FROM convlog WHERE id = ?1")?
                    .query_row([last_id], |r| r.get(0))
                    .ok();
                let last = raw.as_deref().and_then(LogRecord::decode).map(|mut r| {
                    r.id = last_id;
                    r
                });
                out.push(FollowerActivity { openid, last_at_ms, last, records: n as u64 });
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn log_show_sql(
        &self,
        openid: &OpenId,
        since_ms: Option<i64>,
    ) -> StoreResult<Vec<LogRecord>> {
        let openid = openid.clone();
        let since = since_ms.unwrap_or(i64::MIN);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, record FROM convlog WHERE openid = ?1 AND at_ms >= ?2 ORDER BY id",
            )?;
            let rows =
                stmt.query_map(params![openid.as_str(), since], |r| Ok((r.get(0)?, r.get(1)?)))?;
            decode_rows(rows)
        })
        .await
    }

    pub(super) async fn log_delete_sql(&self, openid: &OpenId) -> StoreResult<u64> {
        let openid = openid.clone();
        self.write(move |conn, _, _| {
            // A data-subject request: the deleted text is overwritten with zeros, not just
            // unlinked (secure_delete, for this statement only; the purge does not pay for it).
            conn.execute_batch("PRAGMA secure_delete = ON")?;
            let n = conn
                .prepare_cached("DELETE FROM convlog WHERE openid = ?1")?
                .execute([openid.as_str()]);
            conn.execute_batch("PRAGMA secure_delete = OFF")?;
            Ok(n? as u64)
        })
        .await
    }

    /// Deletes the records older than `log.retention` at `now_ms` (all of them with a
    /// retention of zero); returns how many. Records are appended in time order, so the old
    /// ones are the rows before the first newer one: found by reading the table from its start
    /// (only the rows to delete, then one), with no time index for every push to maintain.
    pub(super) async fn log_purge_sql(&self, now_ms: i64) -> StoreResult<u64> {
        let retention = self.log_retention_ms();
        self.write(move |conn, _, _| {
            Ok(conn
                .prepare_cached(
                    "DELETE FROM convlog WHERE id < COALESCE(\
                     (SELECT id FROM convlog WHERE at_ms > ?1 ORDER BY id LIMIT 1), \
                     (SELECT MAX(id) + 1 FROM convlog))",
                )?
                .execute([now_ms.saturating_sub(retention)])? as u64)
        })
        .await
    }
}
