//! The `dedupe` table and the push commit that writes a dedupe record together with the
//! ledger change and the planned outbox entries, in one transaction.

use rusqlite::{Connection, params};

use super::{CommitOutcome, Delivered, PushCommit, StoreResult, decode_answer, encode_answer};
use crate::delivery::assign;
use crate::model::WindowEffect;

use super::Inner;
use super::convlog::insert_tx;
use super::engine::Post;
use super::grants::update_window;
use super::outbox::{
    cancel_pending_tx, count_pending, hold_new_tx, insert_outbox, mailbox_tx, settle_mailbox_tx,
};

pub(super) fn commit_push_tx(
    conn: &Connection,
    inner: &Inner,
    post: &mut Post,
    push: PushCommit,
    now_ms: i64,
) -> StoreResult<CommitOutcome> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO dedupe (key, received_at_ms, answer) VALUES (?1, ?2, ?3) \
             ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![
            push.dedupe_key,
            push.received_at_ms,
            encode_answer(push.passive.as_ref().map(|p| &p.reply))?
        ])?;
    if inserted == 0 {
        let answer: Option<String> = conn
            .prepare_cached("SELECT answer FROM dedupe WHERE key = ?1")?
            .query_row([&push.dedupe_key], |r| r.get(0))?;
        return Ok(CommitOutcome::Duplicate { answer: decode_answer(answer.as_deref()) });
    }
    let now = push.received_at_ms.div_euclid(1000);
    let effect = push.effect;
    let ((), window_after) =
        update_window(conn, post, &push.openid, |w| w.apply(effect, now, &inner.window))?;
    let cancelled = if effect == WindowEffect::CloseAll {
        cancel_pending_tx(conn, &push.openid, now_ms)? as u64
    } else {
        0
    };
    // Delivery (interface §7.4): the mailbox and the window as this transaction sees them.
    let unsubscribe = effect == WindowEffect::CloseAll;
    let held = if unsubscribe || !inner.may_hold(&push.openid) {
        Vec::new()
    } else {
        mailbox_tx(conn, &push.openid)?
    };
    let capacity = if held.is_empty() && push.outbox.is_empty() {
        None // nothing to fit: skip the count
    } else {
        window_after
            .quota_left(now)
            .map(|q| q.saturating_sub(count_pending(conn, &push.openid).unwrap_or(0)))
    };
    let own = push.passive.clone();
    let a = assign(&held, push.passive, push.outbox, capacity, &push.terms, push.received_at_ms);
    if a.passive.as_ref() != own.as_ref().map(|p| &p.reply) {
        // A held answer took the passive slot (or more_text grew it): store the final answer.
        conn.prepare_cached("UPDATE dedupe SET answer = ?2 WHERE key = ?1")?
            .execute(params![push.dedupe_key, encode_answer(a.passive.as_ref())?])?;
    }
    settle_mailbox_tx(conn, &a, &push.dedupe_key, push.received_at_ms, now_ms)?;
    let mut outbox_ids = Vec::with_capacity(a.outbox.len());
    let released = a.released.len();
    outbox_ids.extend(a.released.iter().copied());
    for e in &a.outbox[released..] {
        outbox_ids.push(insert_outbox(conn, &push.openid, &push.dedupe_key, e, now_ms)?);
    }
    let hold_until = push.received_at_ms.saturating_add(push.terms.hold_for_ms);
    let why = push.terms.hold_reason.as_str();
    for e in &a.hold {
        hold_new_tx(conn, &push.openid, &push.dedupe_key, e, why, hold_until, now_ms)?;
    }
    if !a.hold.is_empty() {
        inner.note_held(push.openid.as_str());
    }
    if inner.logs() {
        let records = crate::convlog::commit_records(
            push.log.as_ref(),
            &push.openid,
            push.received_at_ms,
            &a,
            &held,
            own.as_ref(),
            &push.terms.hold_reason,
        );
        for r in records {
            insert_tx(conn, inner, post, r)?;
        }
    }
    let grant_expiry = window_after.next_expiry(now).map(|s| s.saturating_mul(1000));
    let dedupe_expiry = push.received_at_ms.saturating_add(inner.retention_ms);
    post.expiry_ms = Some(grant_expiry.map_or(dedupe_expiry, |g| g.min(dedupe_expiry)));
    let delivery = Delivered::of(&a);
    Ok(CommitOutcome::Fresh { window_after, outbox_ids, cancelled, delivery })
}
