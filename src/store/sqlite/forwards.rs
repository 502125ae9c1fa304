//! The `forwards` table: pushes a rule forwarded to a backend, from the push's commit until
//! their answer is committed (interface §7.4), and the in-memory per-follower rate count.
//! Created by its own `CREATE TABLE IF NOT EXISTS` at open, like the media table, so the
//! schema version stays.

use rusqlite::{Connection, params};

use super::{Inner, SqliteStore};
use crate::model::OpenId;
use crate::store::{CommitOutcome, ForwardRecord, PushCommit, StoreResult};

pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS forwards (
    id              TEXT PRIMARY KEY,
    push_key        TEXT NOT NULL,
    openid          TEXT NOT NULL,
    backend         TEXT NOT NULL,
    rule            TEXT NOT NULL,
    request         TEXT NOT NULL,
    fallback        TEXT,
    tail            TEXT NOT NULL,
    received_at_ms  INTEGER NOT NULL,
    done            INTEGER NOT NULL DEFAULT 0,
    updated_at_ms   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS forwards_open ON forwards (done, received_at_ms);
";

/// How long a settled forward is kept (for the record) before the purge removes it.
pub(super) const SETTLED_RETENTION_MS: i64 = 24 * 3600 * 1000;

pub(super) fn insert_tx(conn: &Connection, f: &ForwardRecord, now_ms: i64) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO forwards (id, push_key, openid, backend, rule, request, fallback, tail, \
         received_at_ms, done, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10) \
         ON CONFLICT (id) DO NOTHING",
    )?
    .execute(params![
        f.id,
        f.push_key,
        f.openid.as_str(),
        f.backend,
        f.rule,
        f.request,
        f.fallback,
        f.tail,
        f.received_at_ms,
        now_ms
    ])?;
    Ok(())
}

pub(super) fn finish_tx(conn: &Connection, id: &str, now_ms: i64) -> StoreResult<()> {
    conn.prepare_cached("UPDATE forwards SET done = 1, updated_at_ms = ?2 WHERE id = ?1")?
        .execute(params![id, now_ms])?;
    Ok(())
}

/// Removes settled forwards older than [`SETTLED_RETENTION_MS`].
pub(super) fn purge_tx(conn: &Connection, now_ms: i64) -> StoreResult<usize> {
    Ok(conn.execute(
        "DELETE FROM forwards WHERE done = 1 AND updated_at_ms <= ?1",
        [now_ms.saturating_sub(SETTLED_RETENTION_MS)],
    )?)
}

impl SqliteStore {
    pub(super) async fn commit_push_forward_sql(
        &self,
        push: PushCommit,
        forward: ForwardRecord,
    ) -> StoreResult<CommitOutcome> {
        self.write_op(self.push_op(push, Some(forward), None)).await?.commit()
    }

    pub(super) async fn record_forward_sql(&self, f: &ForwardRecord) -> StoreResult<()> {
        let f = f.clone();
        self.write(move |conn, inner, _| insert_tx(conn, &f, inner.clock.now_ms())).await
    }

    pub(super) async fn unfinished_forwards_sql(&self) -> StoreResult<Vec<ForwardRecord>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, push_key, openid, backend, rule, request, fallback, tail, \
                 received_at_ms FROM forwards WHERE done = 0 ORDER BY received_at_ms, id",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, String>(7)?,
                    r.get::<_, i64>(8)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (id, push_key, openid, backend, rule, request, fallback, tail, at) = row?;
                let openid = OpenId::parse(&openid)
                    .map_err(|_| super::corrupt(format!("forward {id} has a bad openid")))?;
                out.push(ForwardRecord {
                    id,
                    push_key,
                    openid,
                    backend,
                    rule,
                    request,
                    fallback,
                    tail,
                    received_at_ms: at,
                });
            }
            Ok(out)
        })
        .await
    }

    pub(super) async fn settle_forward_sql(
        &self,
        id: &str,
        answer: PushCommit,
    ) -> StoreResult<CommitOutcome> {
        self.write_op(self.push_op(answer, None, Some(id.to_string()))).await?.commit()
    }

    pub(super) async fn finish_forward_sql(&self, id: &str) -> StoreResult<()> {
        let id = id.to_string();
        self.write(move |conn, inner, _| finish_tx(conn, &id, inner.clock.now_ms())).await
    }
}

/// The sliding-window count of [`crate::store::Store::rate_hit`], in memory (one instance).
pub(super) fn rate_hit_mem(
    inner: &Inner,
    key: &str,
    limit: u32,
    window_ms: i64,
    now_ms: i64,
) -> bool {
    let mut hits = inner.rates.entry(key.to_string()).or_default();
    while hits.front().is_some_and(|t| *t <= now_ms - window_ms) {
        hits.pop_front();
    }
    if hits.len() >= limit as usize {
        return false;
    }
    hits.push_back(now_ms);
    true
}
