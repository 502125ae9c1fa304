//! The `outbox` table: planned messages, their claims and outcomes.

use rusqlite::{Connection, params};

use super::{
    EXPIRED, NewOutboxEntry, OutboxEntry, OutboxStatus, Outcome, StoreError, StoreResult,
    UNSUBSCRIBED,
};
use crate::delivery::{Assignment, HeldAnswer, UNDELIVERABLE};
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
    let action = serialize_action(e)?;
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
             WHERE openid = ?3 AND status IN ('pending', 'held')",
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
        // The mailbox of the embedded store is the outbox itself: due = expiry.
        Outcome::Held { reason, expires_at_ms } => {
            (OutboxStatus::Held, Some(reason), Some(expires_at_ms))
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

fn serialize_action(e: &NewOutboxEntry) -> StoreResult<String> {
    serde_json::to_string(&e.action)
        .map_err(|err| StoreError::Backend(format!("cannot serialize a planned action: {err}")))
}

/// The follower's mailbox (held entries), oldest first, expired ones included (the push
/// commit drops them with the reason).
pub(super) fn mailbox_tx(conn: &Connection, openid: &OpenId) -> StoreResult<Vec<HeldAnswer>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, rule, action, push_key, reason, updated_at_ms, due_at_ms FROM outbox \
         WHERE openid = ?1 AND status = 'held' ORDER BY id",
    )?;
    let rows = stmt.query_map([openid.as_str()], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, i64>(5)?,
            r.get::<_, i64>(6)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, rule, action, push_key, reason, held_at_ms, expires_at_ms) = row?;
        out.push(HeldAnswer {
            id,
            openid: openid.clone(),
            rule,
            action: serde_json::from_str(&action)
                .map_err(|e| corrupt(format!("held entry {id} action: {e}")))?,
            push_key,
            reason: reason.unwrap_or_default(),
            held_at_ms,
            expires_at_ms,
        });
    }
    Ok(out)
}

/// Writes what a push's delivery did to the mailbox: the answer given passively is sent,
/// the released ones are pending again (due at once, so they lead the push's own messages:
/// the sender orders by due time, then id), the expired ones are dropped.
pub(super) fn settle_mailbox_tx(
    conn: &Connection,
    a: &Assignment,
    push_key: &str,
    received_at_ms: i64,
    now_ms: i64,
) -> StoreResult<()> {
    if let Some(id) = a.passive_from_held {
        conn.prepare_cached(
            "UPDATE outbox SET status = 'sent', reason = ?2, updated_at_ms = ?3 WHERE id = ?1",
        )?
        .execute(params![
            id,
            format!("held; delivered as the passive reply to {push_key}"),
            now_ms
        ])?;
    }
    for (id, e) in a.released.iter().zip(&a.outbox) {
        // The action is written again: `more_text` may have been appended to it.
        conn.prepare_cached(
            "UPDATE outbox SET status = 'pending', action = ?2, due_at_ms = ?3, reason = ?4, \
             updated_at_ms = ?5 WHERE id = ?1 AND status = 'held'",
        )?
        .execute(params![
            id,
            serialize_action(e)?,
            received_at_ms,
            format!("held; released by {push_key}"),
            now_ms
        ])?;
    }
    let dropped = a.expired.iter().map(|id| (id, EXPIRED));
    for (id, why) in dropped.chain(a.undeliverable.iter().map(|id| (id, UNDELIVERABLE))) {
        conn.prepare_cached(
            "UPDATE outbox SET status = 'dropped', reason = ?2, updated_at_ms = ?3 \
             WHERE id = ?1 AND status = 'held'",
        )?
        .execute(params![id, why, now_ms])?;
    }
    Ok(())
}

/// Holds one of a push's own messages: an entry already in the mailbox (status `held`,
/// due = expiry).
pub(super) fn hold_new_tx(
    conn: &Connection,
    openid: &OpenId,
    push_key: &str,
    e: &NewOutboxEntry,
    reason: &str,
    expires_at_ms: i64,
    now_ms: i64,
) -> StoreResult<i64> {
    conn.prepare_cached(
        "INSERT INTO outbox (openid, rule, seq, action, due_at_ms, status, reason, attempts, \
         push_key, created_at_ms, updated_at_ms) \
         VALUES (?1, ?2, ?3, ?4, ?5, 'held', ?6, 0, ?7, ?8, ?8)",
    )?
    .execute(params![
        openid.as_str(),
        e.rule,
        e.seq,
        serialize_action(e)?,
        expires_at_ms,
        reason,
        push_key,
        now_ms
    ])?;
    Ok(conn.last_insert_rowid())
}

/// Drops every held entry past its expiry with reason `expired`; returns how many.
pub(super) fn expire_held_tx(conn: &Connection, now_ms: i64) -> StoreResult<u64> {
    Ok(conn
        .prepare_cached(
            "UPDATE outbox SET status = 'dropped', reason = ?1, updated_at_ms = ?2 \
             WHERE status = 'held' AND due_at_ms <= ?2",
        )?
        .execute(params![EXPIRED, now_ms])? as u64)
}

/// Held entries of one follower (None: of everyone), not expired at `now_ms`.
pub(super) fn count_held(
    conn: &Connection,
    openid: Option<&OpenId>,
    now_ms: i64,
) -> StoreResult<u64> {
    let n: i64 = match openid {
        Some(o) => conn
            .prepare_cached(
                "SELECT COUNT(*) FROM outbox WHERE openid = ?1 AND status = 'held' \
                 AND due_at_ms > ?2",
            )?
            .query_row(params![o.as_str(), now_ms], |r| r.get(0))?,
        None => conn
            .prepare_cached("SELECT COUNT(*) FROM outbox WHERE status = 'held' AND due_at_ms > ?1")?
            .query_row([now_ms], |r| r.get(0))?,
    };
    Ok(u64::try_from(n).unwrap_or(0))
}
