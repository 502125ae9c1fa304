//! Durable state behind one trait: push dedupe records, the window ledger, the outbox of
//! planned customer-service messages and the shared access token.
//!
//! [`Store`] is what the webhook, the pipeline, the admin API and the CLI call, always as an
//! `Arc<dyn Store>`. [`sqlite::SqliteStore`] is the embedded implementation (one instance);
//! a Redis store for several instances implements the same trait, keeping ledger, dedupe and
//! token in Redis and delegating the outbox (which is per instance) to a `SqliteStore`.
//!
//! Times: ledger times are Unix seconds (the unit of interface §5); outbox and dedupe times
//! are Unix milliseconds (delays are given in ms and ordering within a second matters).

pub mod redis;
pub mod sqlite;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::config::Config;

pub use self::redis::RedisStore;
pub use crate::delivery::{Assignment, HeldAnswer, NewOutboxEntry, OwnPassive, Terms};
pub use crate::ledger::{ChargeOutcome, DenyReason, Grant, Window, WindowView};
use crate::model::{
    OpenId, OutboxAction, PassiveReply, PlannedAction, SharedClock, TokenCache, Trigger,
    WindowEffect,
};
pub use sqlite::SqliteStore;

pub use crate::media::reference::MediaKey;

/// Why a store operation failed. Cloneable because one failed group commit answers many
/// callers with the same error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error(
        "cannot open the state store in {dir}: {why}; check that state.dir exists or can be \
         created and is writable by the user running kefu"
    )]
    Open { dir: String, why: String },
    #[error(
        "another `kefu serve` is running on this state.dir (it holds {lock}); run one serve per \
         state.dir: stop the other one, or give this one its own state.dir (several instances \
         share state through state.redis_url, each with its own state.dir)"
    )]
    Locked { lock: String },
    /// The backend (SQLite, Redis) refused or failed.
    #[error("state store: {0}")]
    Backend(String),
    #[error(
        "the state store holds data kefu cannot read ({0}); was it written by another version \
         or edited by hand?"
    )]
    Corrupt(String),
    /// The journal is damaged, cut short or inconsistent with the database (the message names
    /// the file, the offset and the fix).
    #[error("{0}")]
    Journal(String),
    #[error("outbox entry {0} does not exist")]
    UnknownEntry(i64),
    #[error("the state store has shut down")]
    Closed,
}

pub type StoreResult<T> = Result<T, StoreError>;

/// How long a push's dedupe record must outlive its arrival. A push is accepted while its
/// signed timestamp is within `skew` of our clock, so a push stamped `skew` ahead of us can be
/// replayed (and accepted) until `2 * skew` after we first received it; 60 s more covers
/// WeChat's own retries (3 × 5 s) and clock jitter. With the freshness check off (`skew` 0)
/// nothing refuses an old replay, so records are kept a day.
pub fn dedupe_retention_secs(max_clock_skew_secs: u64) -> u64 {
    if max_clock_skew_secs == 0 { 86_400 } else { max_clock_skew_secs.saturating_mul(2) + 60 }
}

/// Everything one push changes, committed atomically before the HTTP answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushCommit {
    /// The push's [`DedupeKey`](crate::model::DedupeKey) (protocol §5.1): scoped by account
    /// and follower, `m:…` for messages, `e:…` for events, `pay:…` for payment notifications.
    pub dedupe_key: String,
    pub openid: OpenId,
    pub effect: WindowEffect,
    /// When kefu received the push; a grant it opens has `opened_at` = this in seconds.
    pub received_at_ms: i64,
    /// The passive answer the push's own rules chose; the commit may give the slot to a held
    /// answer ([`crate::delivery::assign`]) and stores the final one, so a redelivery gets
    /// exactly the same answer.
    pub passive: Option<OwnPassive>,
    /// The push's own planned messages, in order.
    pub outbox: Vec<NewOutboxEntry>,
    /// How the push's answers may be delivered (passive slot, `custom/send`, `more_text`,
    /// `hold_for`).
    pub terms: Terms,
    /// The push as the conversation log records it (interface §8.1), written in this commit
    /// with the answers it decides (the passive reply, held and dropped answers); None writes
    /// no log.
    pub log: Option<crate::convlog::LogRecord>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    /// First delivery: everything was written. `outbox_ids` are in sending order (released
    /// held answers first); `cancelled` counts the follower's pending entries an unsubscribe
    /// dropped; `delivery` is the final answer and what was released, expired and held.
    Fresh { window_after: Window, outbox_ids: Vec<i64>, cancelled: u64, delivery: Delivered },
    /// Seen before: nothing was written; answer as the first delivery was answered.
    Duplicate { answer: Option<PassiveReply> },
}

/// What a fresh push's commit did with the follower's mailbox and its own answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// The HTTP answer.
    pub passive: Option<PassiveReply>,
    /// Held answers this push delivered (passively or released to the outbox).
    pub from_held: u64,
    /// Held answers dropped with reason `expired`.
    pub expired: u64,
    /// This push's own messages that were held.
    pub held: u64,
    /// Held answers and own messages dropped because only `custom/send` could carry them
    /// and the account may not call it ([`crate::delivery::UNDELIVERABLE`]).
    pub undeliverable: u64,
}

impl Delivered {
    pub fn of(a: &Assignment) -> Self {
        Delivered {
            passive: a.passive.clone(),
            from_held: a.delivered_from_held(),
            expired: a.expired.len() as u64,
            held: a.hold.len() as u64,
            undeliverable: a.undeliverable.len() as u64 + a.undeliverable_own,
        }
    }
}

/// Serializes a stored HTTP answer (the dedupe record's `answer`).
pub fn encode_answer(p: Option<&PassiveReply>) -> StoreResult<Option<String>> {
    p.map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Backend(format!("cannot serialize a passive reply: {e}")))
}

/// Reads a stored HTTP answer back; an unreadable one (from another version) is `success`.
pub fn decode_answer(s: Option<&str>) -> Option<PassiveReply> {
    s.and_then(|s| serde_json::from_str(s).ok())
}

pub use crate::delivery::EXPIRED;

/// Where an outbox entry is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Waiting for its time (and the window).
    Pending,
    /// Claimed by the sender; the send may or may not have reached WeChat.
    InFlight,
    Sent,
    Failed,
    Dropped,
    /// Waiting in the follower's mailbox for their next push (interface §7.4.3); `due_at_ms`
    /// is when it expires. Only the embedded store keeps its mailbox in the outbox: with
    /// Redis the mailbox is shared and the local entry is finished as dropped ("held").
    Held,
}

impl OutboxStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxStatus::Pending => "pending",
            OutboxStatus::InFlight => "in_flight",
            OutboxStatus::Sent => "sent",
            OutboxStatus::Failed => "failed",
            OutboxStatus::Dropped => "dropped",
            OutboxStatus::Held => "held",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Pending, Self::InFlight, Self::Sent, Self::Failed, Self::Dropped, Self::Held]
            .into_iter()
            .find(|x| x.as_str() == s)
    }
    /// Sent, failed or dropped: nothing more will happen to it. (A held entry waits for the
    /// follower's next push.)
    pub fn is_final(self) -> bool {
        matches!(self, OutboxStatus::Sent | OutboxStatus::Failed | OutboxStatus::Dropped)
    }
}

impl fmt::Display for OutboxStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reason recorded on entries that were in flight when kefu stopped: WeChat may or may not
/// have delivered them, and sending again could deliver twice, so they are never re-sent.
pub const OUTCOME_UNKNOWN: &str = "outcome unknown: kefu stopped during the send";
/// Reason recorded on pending entries and held answers cancelled by an unsubscribe.
pub const UNSUBSCRIBED: &str = "unsubscribed";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub openid: OpenId,
    pub rule: String,
    pub seq: u32,
    pub action: PlannedAction<OutboxAction>,
    pub due_at_ms: i64,
    pub status: OutboxStatus,
    pub reason: Option<String>,
    /// Times it was claimed for sending.
    pub attempts: u32,
    /// The dedupe key of the push that planned it.
    pub push_key: String,
}

/// How a claimed send ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Sent,
    /// WeChat refused it, or the send failed beyond the retry policy.
    Failed {
        reason: String,
    },
    /// Not attempted, for a reason (window closed at its time, quota used up...).
    Dropped {
        reason: String,
    },
    /// Back to pending, to be tried again at `due_at_ms` (a retriable error).
    Retry {
        due_at_ms: i64,
        reason: String,
    },
    /// Not sendable now (WeChat answered 45015/45047/48001, or `customer_service` is off):
    /// held for the follower's next push until `expires_at_ms` (interface §7.4.3).
    Held {
        reason: String,
        expires_at_ms: i64,
    },
}

/// How [`Store::claim_send`] left an outbox entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendClaim {
    /// Claimed (in flight) and charged to this grant: send it now.
    Charged { trigger: Trigger, opened_at: i64 },
    /// The window refuses it now; the entry is already finished as dropped, with the reason.
    Denied(DenyReason),
    /// The window refuses it now; the entry is held for the follower's next push.
    Held(DenyReason),
    /// It was not pending any more (another worker or instance took it, or it was cancelled).
    Taken,
}

/// Durable state. Every method is atomic on its own; `commit_push` is atomic across
/// dedupe, ledger and outbox. Implementations must be safe to share across tasks and, for the
/// ledger, across processes using the same state (serve and the CLI).
#[async_trait]
pub trait Store: Send + Sync + 'static {
    // ---- pushes ------------------------------------------------------------------------

    /// Records a push: its dedupe record, its window effect, its delivery
    /// ([`crate::delivery::assign`] over the follower's held answers and the push's own), its
    /// answer and its planned messages, in one transaction, durable when this returns. An
    /// unsubscribe (`WindowEffect::CloseAll`) also drops the follower's pending entries and held
    /// answers (reason [`UNSUBSCRIBED`]). A key seen before writes nothing and returns the
    /// stored answer.
    async fn commit_push(&self, push: PushCommit) -> StoreResult<CommitOutcome>;

    // ---- ledger ------------------------------------------------------------------------

    /// Charges one send to the follower's earliest-expiring usable grant, or refuses.
    async fn charge(&self, openid: &OpenId, now: i64) -> StoreResult<ChargeOutcome>;
    /// Gives back a charge (from `ChargeOutcome::Allowed`) for a send WeChat refused for a
    /// reason that is not the window's. Returns whether anything was given back.
    async fn refund(&self, openid: &OpenId, trigger: Trigger, opened_at: i64) -> StoreResult<bool>;
    /// WeChat answered 45015: close every grant.
    async fn close_window(&self, openid: &OpenId) -> StoreResult<()>;
    /// WeChat answered 45047: mark every live grant used up.
    async fn exhaust_window(&self, openid: &OpenId, now: i64) -> StoreResult<()>;
    /// The follower's ledger entry as of `now` (interface §5), from the durable state.
    async fn window(&self, openid: &OpenId, now: i64) -> StoreResult<WindowView>;
    /// Every follower with a live grant, by OpenID.
    async fn list_windows(&self, now: i64) -> StoreResult<Vec<WindowView>>;
    /// The follower's window as this process last committed it, served from memory where the
    /// implementation can (the owner's index), else read. Nothing decides a send on it:
    /// `charge` and `claim_send` read the durable ledger inside their write.
    async fn peek_window(&self, openid: &OpenId) -> StoreResult<Option<Window>>;

    // ---- outbox ------------------------------------------------------------------------

    /// Pending entries due at `now_ms`, oldest due first (rule order within a push).
    async fn due(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<OutboxEntry>>;
    /// When the next pending entry falls due.
    async fn next_due_at(&self) -> StoreResult<Option<i64>>;
    /// pending → in_flight, durable before it returns, so a crash during the send can never
    /// lead to a second send. False if the entry was not pending (dropped, already claimed).
    async fn claim(&self, id: i64) -> StoreResult<bool>;
    /// Claims a message and charges the follower's window for it, or drops it when the window
    /// refuses. On an error the entry is left pending (possibly for a later time) and nothing
    /// is charged. A store holding outbox and ledger in one database does it in one
    /// transaction; this default takes up to three steps.
    ///
    /// With `hold_until_ms` a message the window refuses (closed or used up; not an
    /// unfollowed follower) is held until then instead of dropped ([`SendClaim::Held`]).
    async fn claim_send(
        &self,
        id: i64,
        openid: &OpenId,
        now: i64,
        hold_until_ms: Option<i64>,
    ) -> StoreResult<SendClaim> {
        if !self.claim(id).await? {
            return Ok(SendClaim::Taken);
        }
        match self.charge(openid, now).await {
            Ok(ChargeOutcome::Allowed { trigger, opened_at }) => {
                Ok(SendClaim::Charged { trigger, opened_at })
            }
            Ok(ChargeOutcome::Denied { reason }) => {
                let (outcome, claim) = refused(reason, hold_until_ms);
                self.finish(id, outcome).await?;
                Ok(claim)
            }
            Err(e) => {
                // Not charged, so not sent: back to pending, tried again in a second.
                let retry = Outcome::Retry {
                    due_at_ms: now.saturating_mul(1000).saturating_add(1000),
                    reason: format!("ledger unavailable: {e}"),
                };
                self.finish(id, retry).await?;
                Err(e)
            }
        }
    }
    async fn finish(&self, id: i64, outcome: Outcome) -> StoreResult<()>;
    /// The follower's entries not yet sent (pending or in flight).
    async fn pending_count(&self, openid: &OpenId) -> StoreResult<u64>;
    async fn pending_for(&self, openid: &OpenId) -> StoreResult<Vec<OutboxEntry>>;
    async fn outbox_entry(&self, id: i64) -> StoreResult<Option<OutboxEntry>>;
    /// The outbox as the console shows it: every entry pending, in flight or held, then the
    /// `recent` latest dropped or failed ones (newest first).
    async fn outbox_overview(&self, recent: usize) -> StoreResult<Vec<OutboxEntry>>;

    // ---- held answers (interface §7.4.3) ----------------------------------------------------

    /// The follower's mailbox, oldest first, expired answers left out.
    async fn held_for(&self, openid: &OpenId, now_ms: i64) -> StoreResult<Vec<HeldAnswer>>;
    /// Drops held answers past their expiry with reason [`EXPIRED`]; returns how many.
    async fn expire_held(&self, now_ms: i64) -> StoreResult<u64>;

    // ---- misc --------------------------------------------------------------------------

    /// The access-token cache kept in this store (interface §6.10).
    fn token_cache(&self) -> Arc<dyn TokenCache>;
    /// Ok when the store answers (for `/readyz`).
    async fn ping(&self) -> StoreResult<()>;

    /// Counts for `/metrics`. The default walks the windows; stores override it with a count.
    async fn stats(&self, now: i64) -> StoreResult<StoreStats> {
        let ws = self.list_windows(now).await?;
        Ok(StoreStats {
            open_windows: ws.iter().filter(|w| w.open).count() as u64,
            outbox_pending: ws.iter().map(|w| w.pending).sum(),
            held_answers: ws.iter().map(|w| w.held).sum(),
        })
    }

    // ---- conversation memory (interface §7.6) --------------------------------------------
    // The turns `openai` backends keep per backend and follower, shared through Redis.

    /// The follower's kept turns, by backend name then oldest first (`backend` None: of every
    /// backend). Callers cut them to `history` within `history_ttl` ([`crate::llm::kept`]).
    async fn turns(
        &self,
        backend: Option<&str>,
        openid: &OpenId,
    ) -> StoreResult<Vec<(String, crate::llm::Turn)>>;
    /// Appends a turn and forgets all but the newest `keep` turns of that backend and follower,
    /// and any at or before `oldest_ms`.
    async fn add_turn(
        &self,
        backend: &str,
        openid: &OpenId,
        turn: crate::llm::Turn,
        keep: usize,
        oldest_ms: i64,
    ) -> StoreResult<()>;
    /// Forgets every kept turn of the follower (`/reset`, `kefu history clear`, a
    /// data-subject request); returns how many.
    async fn clear_turns(&self, openid: &OpenId) -> StoreResult<u64>;

    // ---- forwards (interface §7.4) -----------------------------------------------------------
    // A push a rule forwards to a backend is recorded with the push, so a crash before the
    // answer still ends in exactly one answer: the forward is called again after the start
    // (same id) and its answer committed once ([`Store::settle_forward`]).

    /// [`Store::commit_push`] and, for a fresh push, its forward record. The embedded store
    /// writes both in one transaction; this default writes the record right after the push.
    async fn commit_push_forward(
        &self,
        push: PushCommit,
        forward: ForwardRecord,
    ) -> StoreResult<CommitOutcome> {
        let out = self.commit_push(push).await?;
        if matches!(out, CommitOutcome::Fresh { .. }) {
            self.record_forward(&forward).await?;
        }
        Ok(out)
    }
    /// Records a forward (idempotent per id).
    async fn record_forward(&self, forward: &ForwardRecord) -> StoreResult<()>;
    /// Forwards not yet settled, oldest first (called again after a start).
    async fn unfinished_forwards(&self) -> StoreResult<Vec<ForwardRecord>>;
    /// Commits a forward's answer — `answer` is a push commit of its own, keyed
    /// [`answer_key`] so that committing it twice writes nothing the second time — and marks
    /// the forward settled. The embedded store does both in one transaction.
    async fn settle_forward(&self, id: &str, answer: PushCommit) -> StoreResult<CommitOutcome> {
        let out = self.commit_push(answer).await?;
        self.finish_forward(id).await?;
        Ok(out)
    }
    /// Marks a forward settled.
    async fn finish_forward(&self, id: &str) -> StoreResult<()>;
    /// Counts one forward of `key` (backend and follower) at `now_ms` if fewer than `limit`
    /// were counted within the last `window_ms`, and says whether it was (true: within the
    /// limit). The embedded store counts in memory; Redis shares the count between instances.
    async fn rate_hit(
        &self,
        key: &str,
        limit: u32,
        window_ms: i64,
        now_ms: i64,
    ) -> StoreResult<bool>;
    // ---- conversation log (interface §8.1) -----------------------------------------------
    // Pushes and answers are logged by `commit_push`, `claim_send`, `finish` and
    // `expire_held` in their own writes; these read, erase and add the rest.

    /// Appends records written outside a push or a send (a reply from the console).
    async fn log_append(&self, records: Vec<crate::convlog::LogRecord>) -> StoreResult<()>;
    /// Followers by last activity, newest first, ties (the same ms) by OpenID descending
    /// (byte order): at most `limit`, only those after `before` in that order (paging).
    /// `before` is the previous page's last `(last_at_ms, openid)`; an empty OpenID means
    /// "every follower last active before that ms". The order is total, so no follower is
    /// skipped or repeated across pages.
    async fn log_followers(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> StoreResult<Vec<crate::convlog::FollowerActivity>>;
    /// The follower's records at or after `since_ms`, oldest first.
    async fn log_show(
        &self,
        openid: &OpenId,
        since_ms: Option<i64>,
    ) -> StoreResult<Vec<crate::convlog::LogRecord>>;
    /// Erases the follower's log; returns how many records it held.
    async fn log_delete(&self, openid: &OpenId) -> StoreResult<u64>;
    /// Deletes the records older than `log.retention` at `now_ms`; returns how many.
    async fn log_purge(&self, now_ms: i64) -> StoreResult<u64>;
    /// The live feed of records this process writes, published after their commit.
    fn log_bus(&self) -> crate::convlog::LogBus;
    /// `log.retention` in ms (0: no log is kept).
    fn log_retention_ms(&self) -> i64;

    // ---- media -------------------------------------------------------------------------
    // The media-id cache of files named in replies (interface §9): one record per content hash
    // and upload type, shared by every process using this state (Redis when configured).

    /// The cached upload of this content and type, if any (however old).
    async fn media_get(&self, key: &MediaKey) -> StoreResult<Option<MediaRecord>>;
    /// Records an upload, replacing the record of the same key.
    async fn media_put(&self, record: &MediaRecord) -> StoreResult<()>;
    /// Every cached upload, by type then hash.
    async fn media_list(&self) -> StoreResult<Vec<MediaRecord>>;
    /// Takes the upload lock of `key` for `ttl` (or renews it for the same `holder`); false
    /// when another process holds it, so only one instance uploads a file.
    async fn media_try_lock(
        &self,
        key: &MediaKey,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<bool>;
    /// Releases the upload lock of `key` if `holder` still holds it.
    async fn media_unlock(&self, key: &MediaKey, holder: &str) -> StoreResult<()>;
}

/// A forward as the store keeps it (interface §7.4): what is needed to call the backend again
/// after a restart and to deliver its answer in the forwarding rule's place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRecord {
    /// The forward's stable id (`backends::forward_id`), also the request's `id`.
    pub id: String,
    /// The dedupe key of the push that forwards.
    pub push_key: String,
    pub openid: OpenId,
    /// `backends.NAME`.
    pub backend: String,
    /// The forwarding rule.
    pub rule: String,
    /// The request body (JSON), sent again as it is.
    pub request: String,
    /// The rule's `fallback` text, rendered.
    pub fallback: Option<String>,
    /// The replies planned after the forward (JSON list of planned actions): they follow
    /// its answer.
    pub tail: String,
    /// When the push arrived (Unix ms).
    pub received_at_ms: i64,
}

/// The key of a forward's answer commit: the push's key and `#answer`, so the answer is a
/// push commit of its own that a second settle finds already written.
pub fn answer_key(push_key: &str) -> String {
    format!("{push_key}#answer")
}

/// Gauges for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Followers with a live grant.
    pub open_windows: u64,
    /// Outbox entries pending or in flight.
    pub outbox_pending: u64,
    /// Answers held for the followers' next pushes (`kefu_held_answers`).
    pub held_answers: u64,
}

/// What a window refusal at send time does to the message: held until `hold_until_ms` when
/// given, else dropped. An unfollowed follower can receive nothing, not even on a next push
/// that may never come, so that message is dropped either way.
pub fn refused(reason: DenyReason, hold_until_ms: Option<i64>) -> (Outcome, SendClaim) {
    match hold_until_ms.filter(|_| reason != DenyReason::Unsubscribed) {
        Some(expires_at_ms) => {
            (Outcome::Held { reason: reason.to_string(), expires_at_ms }, SendClaim::Held(reason))
        }
        None => (Outcome::Dropped { reason: reason.to_string() }, SendClaim::Denied(reason)),
    }
}

/// Which process opens the store: the server owns it (purges, recovers in-flight entries); a
/// CLI command only reads and charges beside a running server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Cli,
}

/// The file in `state.dir` where `serve` records which store holds the ledger (`sqlite` or
/// `redis`), so a CLI command without `state.redis_url` does not read a stale SQLite ledger.
pub const MODE_FILE: &str = "kefu.store";

/// Clears the embedded store's access token and media ids when they were cached for another
/// AppID than `wechat.app_id` (see [`APP_FILE`]), with one warning; then records this one.
async fn forget_another_accounts_caches(cfg: &Config, sqlite: &SqliteStore) {
    let app = &cfg.wechat.app_id;
    if app.is_empty() {
        return; // dry-run: nothing is fetched or uploaded
    }
    let file = cfg.state.dir.join(APP_FILE);
    let before = std::fs::read_to_string(&file).ok().map(|s| s.trim().to_string());
    if let Some(before) = before.as_deref().filter(|b| !b.is_empty() && *b != app) {
        match sqlite.forget_account_caches().await {
            Ok(()) => tracing::warn!(
                state_dir = %cfg.state.dir.display(), previous = before, app_id = %app,
                "this state.dir served another AppID: its cached access token and media ids \
                 were dropped (they belong to that account); they are fetched and uploaded again"
            ),
            Err(e) => {
                tracing::error!(error = %e, "cannot drop another account's cached token and media ids")
            }
        }
    }
    if before.as_deref() != Some(app.as_str())
        && let Err(e) = std::fs::write(&file, format!("{app}\n"))
    {
        tracing::warn!(file = %file.display(), error = %e, "cannot record the AppID");
    }
}

/// The file in `state.dir` where `serve` records the AppID whose access token and media ids the
/// embedded store caches: a `state.dir` moved from one account to another (the sandbox test
/// account to production, say) must not answer with the other account's token or media ids.
pub const APP_FILE: &str = "kefu.app";

/// Opens the configured store: SQLite under `state.dir`, and with `state.redis_url` the Redis
/// store for ledger, dedupe and token with this instance's outbox in SQLite. A CLI process
/// ([`Role::Cli`]) is refused when `serve` keeps this `state.dir`'s ledger in Redis and the
/// command has no `state.redis_url` (see [`MODE_FILE`]).
pub async fn open_store(
    cfg: &Config,
    role: Role,
    clock: SharedClock,
) -> anyhow::Result<(Arc<dyn Store>, SqliteStore)> {
    let window = &cfg.window;
    // The store's errors name `state.dir` / `state.redis_url`; say where those came from.
    let dir_source = |e| anyhow::anyhow!("{e}. The directory is {}", cfg.key("state.dir"));
    let mode_file = cfg.state.dir.join(MODE_FILE);
    let mode = if cfg.state.redis_url.is_empty() { "sqlite" } else { "redis" };
    if role == Role::Cli
        && mode == "sqlite"
        && std::fs::read_to_string(&mode_file).is_ok_and(|m| m.trim() == "redis")
    {
        // The SQLite file is there (it holds serve's outbox), but the ledger is in Redis: a
        // command reading it would answer from the wrong store without a word.
        anyhow::bail!(
            "`kefu serve` keeps the ledger of {} in Redis (it runs with state.redis_url set, says \
             {}), but this command has no state.redis_url ({}): {} to the URL serve uses, or \
             run it with serve's --config",
            cfg.state.dir.display(),
            mode_file.display(),
            cfg.key("state.redis_url"),
            cfg.how_to_set("state.redis_url")
        );
    }
    let sqlite = match role {
        Role::Server => SqliteStore::open_with(
            &cfg.state.dir,
            sqlite::OpenOptions {
                window: window.clone(),
                dedupe_retention_secs: dedupe_retention_secs(cfg.server.max_clock_skew_secs),
                sync: cfg.state.sync,
                owner: true,
                truncate_journal: cfg.state.truncate_journal,
            },
            clock.clone(),
        )
        .map_err(dir_source)?,
        Role::Cli => {
            SqliteStore::open_client(&cfg.state.dir, window, clock.clone()).map_err(dir_source)?
        }
    };
    if role == Role::Server {
        // Which store serve keeps the ledger in, for the CLI commands that open this state.dir.
        if let Err(e) = std::fs::write(&mode_file, format!("{mode}\n")) {
            tracing::warn!(file = %mode_file.display(), error = %e, "cannot record the store mode");
        }
        forget_another_accounts_caches(cfg, &sqlite).await;
    }
    // With Redis the log is shared there; SQLite keeps it otherwise.
    sqlite.configure_log(cfg.log.retention, cfg.state.redis_url.is_empty());
    if cfg.state.redis_url.is_empty() {
        return Ok((Arc::new(sqlite.clone()), sqlite));
    }
    // One namespace per WeChat account (its AppID), hash-tagged so the multi-key scripts stay
    // legal on a Redis Cluster ([`crate::config::AccountConfig::redis_namespace`]).
    let namespace = cfg.first_account().redis_namespace();
    let redis = RedisStore::open(
        cfg.state.redis_url.expose(),
        &namespace,
        Arc::new(sqlite.clone()),
        window,
        dedupe_retention_secs(cfg.server.max_clock_skew_secs),
        clock,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}. The URL is {}", cfg.key("state.redis_url")))?;
    Ok((Arc::new(redis), sqlite))
}

// ---- media ----------------------------------------------------------------------------------

/// One uploaded media file as the store caches it ([`Store::media_get`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// Lower-case hex SHA-256 of the uploaded content.
    pub sha256: String,
    pub media_type: crate::media::MediaType,
    /// The `media_id` WeChat issued (`thumb_media_id` for a thumb).
    pub media_id: String,
    /// When it was uploaded, Unix seconds; WeChat keeps temporary media 3 days from then.
    pub uploaded_at: i64,
    /// Size of the content in bytes.
    pub bytes: u64,
    /// The file it was uploaded from, as named then (for `kefu media list`).
    pub file: String,
}

impl MediaRecord {
    pub fn key(&self) -> MediaKey {
        MediaKey { sha256: self.sha256.clone(), media_type: self.media_type }
    }
}
