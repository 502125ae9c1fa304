//! The journaled writes: the operations of the push and send paths as data, so that one
//! journal record replays exactly what the live write did.
//!
//! Each [`Op`] carries every input its statements read besides the database itself: the time
//! it ran (`at_ms`, used for row timestamps and claim times) and whether the conversation log
//! was on. Run live, it is encoded (JSON, self-describing so a later kefu can read an earlier
//! journal) by the caller, run on the writer thread inside the open transaction, and appended
//! to the journal if it succeeded. Replayed after a crash, the same [`Op::run`] runs against
//! the state SQLite rolled back to, which is the state the live run saw (the watermark says
//! which records that state already holds), so it decides the same: the same dedupe answer,
//! the same grant, the same outbox ids (SQLite's `AUTOINCREMENT` counter rolled back with the
//! rows), the same log lines.
//!
//! Writes that are not journaled (a charge from the admin API, token and media caches, purges,
//! the CLI's own writes) commit SQLite durably before they answer, as before.

use rusqlite::Connection;
use serde::{Deserialize, Serialize};

use super::engine::Post;
use super::{
    CommitOutcome, Inner, Outcome, PushCommit, SendClaim, StoreError, StoreResult, convlog,
    forwards, refused,
};
use super::{dedupe::commit_push_tx, grants::update_window, outbox};
use crate::ledger::ChargeOutcome;
use crate::model::OpenId;
use crate::store::ForwardRecord;

/// One journaled write.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum Op {
    /// A push's commit (`Store::commit_push`); with `forward`, also its forward record
    /// (`commit_push_forward`); with `settles`, the answer of that forward, marking it settled
    /// (`settle_forward`).
    Push {
        at_ms: i64,
        logs: bool,
        push: Box<PushCommit>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forward: Option<Box<ForwardRecord>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settles: Option<String>,
    },
    /// `Store::claim_send`: claim an outbox entry and charge its follower's window.
    ClaimSend {
        at_ms: i64,
        logs: bool,
        id: i64,
        openid: OpenId,
        now: i64,
        hold_until_ms: Option<i64>,
    },
    /// `Store::claim`: pending → in flight.
    Claim { at_ms: i64, id: i64 },
    /// `Store::finish`: how a send ended.
    Finish { at_ms: i64, logs: bool, id: i64, outcome: Outcome },
}

thread_local! {
    /// Whether the op running on this thread (the writer, or the opening thread replaying)
    /// writes the conversation log.
    static RUNNING_LOGS: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// While an op runs on this thread: whether it writes the conversation log (what
/// `Inner::logs` answers then, whatever the configuration says now).
pub(super) fn running_logs() -> Option<bool> {
    RUNNING_LOGS.get()
}

/// What a journaled write answers.
pub(super) enum Done {
    Commit(CommitOutcome),
    Claim(SendClaim),
    Claimed(bool),
    Finished,
}

impl Op {
    /// Whether the conversation log was on when the op was made (replay writes the log the
    /// live run wrote, whatever the configuration is at the restart).
    pub(super) fn logs(&self) -> bool {
        match self {
            Op::Push { logs, .. } | Op::ClaimSend { logs, .. } | Op::Finish { logs, .. } => *logs,
            Op::Claim { .. } => false,
        }
    }

    /// Runs the op's statements in the current transaction, with the conversation log as it
    /// was when the op was made (live and replayed alike: [`running_logs`]).
    pub(super) fn run(
        self,
        conn: &Connection,
        inner: &Inner,
        post: &mut Post,
    ) -> StoreResult<Done> {
        RUNNING_LOGS.set(Some(self.logs()));
        let out = self.execute(conn, inner, post);
        RUNNING_LOGS.set(None);
        out
    }

    fn execute(self, conn: &Connection, inner: &Inner, post: &mut Post) -> StoreResult<Done> {
        match self {
            Op::Push { at_ms, push, forward, settles, .. } => {
                let out = commit_push_tx(conn, inner, post, *push, at_ms)?;
                if let Some(f) = forward
                    && matches!(out, CommitOutcome::Fresh { .. })
                {
                    forwards::insert_tx(conn, &f, at_ms)?;
                }
                if let Some(id) = settles {
                    forwards::finish_tx(conn, &id, at_ms)?;
                }
                Ok(Done::Commit(out))
            }
            Op::ClaimSend { at_ms, id, openid, now, hold_until_ms, .. } => {
                if !outbox::claim_tx(conn, id, at_ms)? {
                    return Ok(Done::Claim(SendClaim::Taken));
                }
                let (charged, _) = update_window(conn, post, &openid, |w| w.charge(now))?;
                Ok(Done::Claim(match charged {
                    ChargeOutcome::Allowed { trigger, opened_at } => {
                        SendClaim::Charged { trigger, opened_at }
                    }
                    // Held or dropped in the transaction that decides it cannot be sent now.
                    ChargeOutcome::Denied { reason } => {
                        let (outcome, claim) = refused(reason, hold_until_ms);
                        convlog::outcome_tx(conn, inner, post, id, &outcome, at_ms)?;
                        outbox::finish_tx(conn, id, outcome, at_ms)?;
                        if matches!(claim, SendClaim::Held(_)) {
                            inner.note_held(openid.as_str());
                        }
                        claim
                    }
                }))
            }
            Op::Claim { at_ms, id } => Ok(Done::Claimed(outbox::claim_tx(conn, id, at_ms)?)),
            Op::Finish { at_ms, id, outcome, .. } => {
                let held = matches!(outcome, Outcome::Held { .. });
                convlog::outcome_tx(conn, inner, post, id, &outcome, at_ms)?;
                outbox::finish_tx(conn, id, outcome, at_ms)?;
                if held {
                    let openid: String =
                        conn.query_row("SELECT openid FROM outbox WHERE id = ?1", [id], |r| {
                            r.get(0)
                        })?;
                    inner.note_held(&openid);
                }
                Ok(Done::Finished)
            }
        }
    }

    /// The op as a journal payload.
    pub(super) fn encode(&self) -> StoreResult<Vec<u8>> {
        serde_json::to_vec(self)
            .map_err(|e| StoreError::Backend(format!("cannot encode a journal record: {e}")))
    }

    /// A journal payload back as an op; `seq` names the record in the error.
    pub(super) fn decode(seq: u64, payload: &[u8]) -> StoreResult<Op> {
        serde_json::from_slice(payload).map_err(|e| {
            StoreError::Corrupt(format!(
                "journal record {seq} has a valid checksum but is not an operation this kefu \
                 knows ({e}); was the journal written by a newer kefu?"
            ))
        })
    }
}

impl Done {
    fn unexpected(what: &str) -> StoreError {
        StoreError::Backend(format!("internal: a journaled write answered other than {what}"))
    }
    pub(super) fn commit(self) -> StoreResult<CommitOutcome> {
        match self {
            Done::Commit(c) => Ok(c),
            _ => Err(Self::unexpected("a commit")),
        }
    }
    pub(super) fn claim(self) -> StoreResult<SendClaim> {
        match self {
            Done::Claim(c) => Ok(c),
            _ => Err(Self::unexpected("a claim")),
        }
    }
    pub(super) fn claimed(self) -> StoreResult<bool> {
        match self {
            Done::Claimed(c) => Ok(c),
            _ => Err(Self::unexpected("a claim")),
        }
    }
}
