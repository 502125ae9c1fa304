//! The `dedupe` table and the push commit that writes a dedupe record together with the
//! ledger change and the planned outbox entries, in one transaction.

use rusqlite::{Connection, params};

use super::{CommitOutcome, PushCommit, StoreResult};
use crate::model::WindowEffect;

use super::Inner;
use super::engine::Post;
use super::grants::update_window;
use super::outbox::{cancel_pending_tx, insert_outbox};

pub(super) fn commit_push_tx(
    conn: &Connection,
    inner: &Inner,
    post: &mut Post,
    push: PushCommit,
) -> StoreResult<CommitOutcome> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO dedupe (key, received_at_ms, answer) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![push.dedupe_key, push.received_at_ms, push.answer])?;
    if inserted == 0 {
        let answer: Option<String> = conn
            .prepare_cached("SELECT answer FROM dedupe WHERE key = ?1")?
            .query_row([&push.dedupe_key], |r| r.get(0))?;
        return Ok(CommitOutcome::Duplicate { answer });
    }
    let now = push.received_at_ms.div_euclid(1000);
    let effect = push.effect;
    let ((), window_after) =
        update_window(conn, post, &push.openid, |w| w.apply(effect, now, &inner.window))?;
    let now_ms = inner.clock.now_ms();
    let cancelled = if effect == WindowEffect::CloseAll {
        cancel_pending_tx(conn, &push.openid, now_ms)? as u64
    } else {
        0
    };
    let mut outbox_ids = Vec::with_capacity(push.outbox.len());
    for e in &push.outbox {
        outbox_ids.push(insert_outbox(conn, &push.openid, &push.dedupe_key, e, now_ms)?);
    }
    let grant_expiry = window_after.next_expiry(now).map(|s| s.saturating_mul(1000));
    let dedupe_expiry = push.received_at_ms.saturating_add(inner.retention_ms);
    post.expiry_ms = Some(grant_expiry.map_or(dedupe_expiry, |g| g.min(dedupe_expiry)));
    Ok(CommitOutcome::Fresh { window_after, outbox_ids, cancelled })
}
