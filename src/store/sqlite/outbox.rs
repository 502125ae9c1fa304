//! The `outbox` table: planned messages, their claims and outcomes.

use rusqlite::{Connection, params};

use super::{
    NewOutboxEntry, OutboxEntry, OutboxStatus, Outcome, StoreError, StoreResult, UNSUBSCRIBED,
};
use crate::model::OpenId;

use super::corrupt;

pub(super) const OUTBOX_COLS: &str =
    "id, openid, rule, seq, action, due_at_ms, status, reason, attempts, push_key";

pub(super) fn outbox_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<Result<OutboxEntry, StoreError>> {
    let id: i64 = r.get(0)?;
    let openid: String = r.get(1)?;
    let action: String = r.get(4)?;
    let status: String = r.get(6)?;
    let build = || -> Result<OutboxEntry, StoreError> {
        Ok(OutboxEntry {
            id,
            openid: OpenId::parse(&openid)
                .map_err(|e| corrupt(format!("outbox entry {id}: {e}")))?,
            rule: r.get(2)?,
            seq: r.get(3)?,
            action: serde_json::from_str(&action)
                .map_err(|e| corrupt(format!("outbox entry {id} action: {e}")))?,
            due_at_ms: r.get(5)?,
            status: OutboxStatus::parse(&status)
                .ok_or_else(|| corrupt(format!("outbox entry {id} status {status:?}")))?,
            reason: r.get(7)?,
            attempts: r.get(8)?,
            push_key: r.get(9)?,
        })
    };
    Ok(build())
}

pub(super) fn query_outbox(
    conn: &Connection,
    where_: &str,
    params: impl rusqlite::Params,
) -> StoreResult<Vec<OutboxEntry>> {
    let sql = format!("SELECT {OUTBOX_COLS} FROM outbox WHERE {where_}");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params, outbox_row)?;
    let mut out = Vec::new();
    for row in rows {
        out.push(row??);
    }
    Ok(out)
}

pub(super) fn count_pending(conn: &Connection, openid: &OpenId) -> StoreResult<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM outbox WHERE openid = ?1 AND status IN ('pending', 'in_flight')",
        )?
        .query_row([openid.as_str()], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

pub(super) fn insert_outbox(
    conn: &Connection,
    openid: &OpenId,
    push_key: &str,
    e: &NewOutboxEntry,
    now_ms: i64,
) -> StoreResult<i64> {
    let action = serde_json::to_string(&e.action)
        .map_err(|err| StoreError::Backend(format!("cannot serialize a planned action: {err}")))?;
    conn.prepare_cached(
        "INSERT INTO outbox (openid, rule, seq, action, due_at_ms, status, attempts, push_key, \
         created_at_ms, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 0, ?6, ?7, ?7)",
    )?
    .execute(params![
        openid.as_str(),
        e.rule,
        e.seq,
        action,
        e.due_at_ms,
        push_key,
        now_ms
    ])?;
    Ok(conn.last_insert_rowid())
}

pub(super) fn cancel_pending_tx(
    conn: &Connection,
    openid: &OpenId,
    now_ms: i64,
) -> StoreResult<usize> {
    Ok(conn
        .prepare_cached(
            "UPDATE outbox SET status = 'dropped', reason = ?1, updated_at_ms = ?2 \
             WHERE openid = ?3 AND status = 'pending'",
        )?
        .execute(params![UNSUBSCRIBED, now_ms, openid.as_str()])?)
}

/// pending → in_flight; false if the entry was not pending.
pub(super) fn claim_tx(conn: &Connection, id: i64, now_ms: i64) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE outbox SET status = 'in_flight', attempts = attempts + 1, \
             updated_at_ms = ?2 WHERE id = ?1 AND status = 'pending'",
        )?
        .execute(params![id, now_ms])?;
    Ok(n == 1)
}

pub(super) fn finish_tx(
    conn: &Connection,
    id: i64,
    outcome: Outcome,
    now_ms: i64,
) -> StoreResult<()> {
    let (status, reason, due) = match outcome {
        Outcome::Sent => (OutboxStatus::Sent, None, None),
        Outcome::Failed { reason } => (OutboxStatus::Failed, Some(reason), None),
        Outcome::Dropped { reason } => (OutboxStatus::Dropped, Some(reason), None),
        Outcome::Retry { due_at_ms, reason } => {
            (OutboxStatus::Pending, Some(reason), Some(due_at_ms))
        }
    };
    let n = conn
        .prepare_cached(
            "UPDATE outbox SET status = ?2, reason = ?3, \
             due_at_ms = COALESCE(?4, due_at_ms), updated_at_ms = ?5 WHERE id = ?1",
        )?
        .execute(params![id, status.as_str(), reason, due, now_ms])?;
    if n == 0 {
        return Err(StoreError::UnknownEntry(id));
    }
    Ok(())
}
