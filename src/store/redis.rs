//! The shared store for several kefu instances behind one load balancer: push dedupe, the
//! window ledger and the access token live in Redis, so the instances behave as one (one reply
//! set per push, one quota per follower, one token — protocol §8.2); each instance's outbox
//! stays in its own embedded [`SqliteStore`], because a planned message belongs to the process
//! that will send it and must survive that process's crash.
//!
//! # Keys (all under the namespace, e.g. `kefu:{wx123}`)
//! - `{ns}:d:{dedupe key}` — a push's dedupe record: claim nonce + stored HTTP answer, with a
//!   TTL of the dedupe retention.
//! - `{ns}:w:{openid}` — a follower's [`Window`] as JSON, expiring with its last grant (or,
//!   with no grant but a known follow state, [`FOLLOW_STATE_TTL_SECS`] after the last change).
//! - `{ns}:h:{openid}` — a follower's held answers (interface §7.4.3) as a JSON array, oldest
//!   first, expiring with the last of them. The push commit compares-and-sets it in the same
//!   script as the dedupe record and the window, so whichever instance receives the follower's
//!   next push delivers each held answer, once.
//! - `{ns}:log:{openid}` — a follower's conversation log (interface §8.1): a list of JSON
//!   records oldest first, expiring `log.retention` after the last one and trimmed of older
//!   records by the purge; `{ns}:log:index` — a sorted set of OpenIDs by last activity (ms);
//!   `{ns}:log:oldest` — the same OpenIDs by their oldest kept record, so the purge reads only
//!   the lists that hold something past the retention.
//!   A push's records are written by the push commit's script; an answer's after its outcome.
//! - `{ns}:token`, `{ns}:token:lock` — the access token and its refresh lock.
//! - `{ns}:media` (hash, field `{type}:{sha256}`), `{ns}:media:lock:{type}:{sha256}` — the
//!   media ids of files named in replies and their upload locks (one upload for all instances).
//!
//! A namespace like `kefu:{app_id}` carries a Redis Cluster hash tag, so every key of one
//! account lands in one slot and the multi-key scripts below stay legal on a cluster.
//!
//! # Ledger: the Rust policy under optimistic concurrency
//! The quota rules exist once, in [`crate::ledger::policy`]. A ledger change reads the window,
//! applies the policy in Rust and writes it back with a compare-and-set Lua script that writes
//! only if the stored value is still the one read; otherwise the script answers with the
//! current value and the change is recomputed on it. Redis runs scripts one at a time, so two
//! instances charging the same follower are serialized: a quota of 5 gives exactly 5 sends.
//! The first attempt guesses the stored value from this process's last committed copy (the
//! local index), so the common case is one round trip; a stale guess costs one more. Within one
//! instance, changes of one follower take turns on a striped async lock, so only instances
//! (not every task of every instance) ever race on a follower: under 64 concurrent charges of
//! one follower, retries stay rare instead of growing with the square of the tasks. The same
//! script with "keep" verifies a decision that writes nothing (a refusal), so a refusal is
//! never based on a stale copy either. (`WATCH`/`MULTI` would need a dedicated connection per
//! transaction; the compare-and-set script runs on the shared multiplexed connection.)
//!
//! # A push, and the crash window
//! One script checks the dedupe record, compares-and-sets the window and sets the dedupe record
//! (`SET … PX retention`), atomically: no instance can see a push deduplicated without its
//! ledger effect, or the other way round. Only then are the planned messages written to the
//! local outbox, and only after that does the webhook answer. The order is deliberate:
//! - kefu dies between the two writes → the push is recorded as seen in Redis but its outbox
//!   entries do not exist and WeChat got no answer. WeChat's retry, on any instance, is a
//!   duplicate and is answered with the stored answer; the planned customer-service messages
//!   of that push are never sent. It fails towards **at most once**: never twice.
//! - The other order (outbox first) would, on the same crash, leave sendable entries in the
//!   dead instance's outbox while the retry, finding no dedupe record, plans and sends them
//!   again on another instance: twice.
//!
//! When the local write fails without a crash (disk full, store closed), the dedupe record is
//! released (compare-and-delete on this attempt's nonce) and the error returned, so WeChat's
//! retry runs the push afresh and its messages are planned once. Its ledger effect is applied a
//! second time then, which is harmless: an opening replaces the grant of its trigger with a
//! fresh one, and an unsubscribe closes what is already closed.
//!
//! An unsubscribe cancels the pending entries of the instance that receives it; entries of the
//! same follower planned on other instances are refused at send time by the shared ledger
//! (the sender charges before sending), so none of them goes out either. `pending` in a
//! window view counts this instance's outbox only.
//!
//! # Time
//! Expiries are given to Redis as relative TTLs (`PX`) computed from the injected clock, not as
//! absolute `PEXPIREAT` times: the instance's clock and Redis's may disagree, and tests drive a
//! manual clock. Either way a key lives until its last grant's expiry.
//!
//! # Outages
//! A [`ConnectionManager`] reconnects by itself. Every call is bounded by [`OP_TIMEOUT`]
//! (`ping` by [`PING_TIMEOUT`]), so while Redis is down each operation fails with a clear
//! error instead of hanging, `/readyz` reports not ready, and the next call after Redis is back
//! succeeds without reopening the store. A call that timed out may or may not have been
//! applied; every caller treats the error as "not done", which at worst under-sends (a charge
//! that counted but whose send was not made), never over-sends.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisResult, Script};

use super::{
    CommitOutcome, Delivered, HeldAnswer, OutboxEntry, Outcome, PushCommit, SqliteStore, Store,
    StoreError, StoreResult, decode_answer, encode_answer,
};
use crate::config::WindowConfig;
use crate::convlog::{FollowerActivity, LogRecord, Via};
use crate::delivery::assign;
use crate::ledger::{ChargeOutcome, LedgerIndex, Window, WindowView};
use crate::model::{CachedToken, OpenId, SharedClock, TokenCache, Trigger, WindowEffect};

/// Longest wait for any Redis operation; past it the operation fails (and may or may not have
/// been applied — see the module notes).
pub const OP_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest wait for the readiness probe.
pub const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for one connection attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A follower's follow state with no grant left (after an unsubscribe, say) is kept this long,
/// so a refused send can still say "unsubscribed" rather than "closed".
pub const FOLLOW_STATE_TTL_SECS: i64 = 7 * 86_400;
/// Compare-and-set attempts before a ledger change gives up. Each failed attempt means another
/// change of the same follower won, so this bounds a task's wait under heavy contention.
const MAX_CAS_ATTEMPTS: u32 = 200;
/// How often the local index (a cache of this instance's windows) drops expired grants.
const INDEX_PRUNE_EVERY_SECS: i64 = 60;
/// Followers whose log the purge trims per page, and pages per pass (the rest waits for the
/// next pass, a minute later at most).
const PURGE_PAGE: usize = 500;
const PURGE_ROUNDS: usize = 20;
/// Stripes of the in-process lock that makes one instance's changes of a follower take turns.
const LOCK_STRIPES: usize = 256;

// The window encoding the scripts compare: '0' = no key, '1' followed by the stored value.

/// Compare-and-set of one window. KEYS[1] window; ARGV[1] expected encoding; ARGV[2] op:
/// `keep` (verify only), `del`, `set`; ARGV[3] value; ARGV[4] TTL in ms. Returns {1, ''} when
/// done, {0, current encoding} when the window had changed.
static LEDGER_CAS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
local enc = cur and ('1' .. cur) or '0'
if enc ~= ARGV[1] then return {0, enc} end
if ARGV[2] == 'set' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
elseif ARGV[2] == 'del' then
  redis.call('DEL', KEYS[1])
end
return {1, ''}
",
    )
});

/// A push: dedupe check, window compare-and-set, mailbox compare-and-set and dedupe record,
/// atomically. KEYS[1] dedupe, KEYS[2] window, KEYS[3] mailbox; ARGV[1] dedupe value; ARGV[2]
/// dedupe TTL ms; ARGV[3..6] as [`LEDGER_CAS`] (with `keep` the window is not compared, only
/// returned); ARGV[7..10] the same for the mailbox, which is always compared (the answer
/// depends on it). Returns {0, stored dedupe value} for a duplicate, {2, current encoding}
/// when the window had changed, {3, current mailbox encoding} when the mailbox had, {1, window
/// encoding before the push} when recorded. With ARGV[11] (`log.retention` in ms) above zero,
/// ARGV[14..] are conversation-log records appended to KEYS[4] (its TTL set to the retention),
/// KEYS[5] (the log index) gets member ARGV[13] with score ARGV[12], and KEYS[6] (the oldest
/// records) that member unless it has one.
static COMMIT_PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local seen = redis.call('GET', KEYS[1])
if seen then return {0, seen} end
local cur = redis.call('GET', KEYS[2])
local enc = cur and ('1' .. cur) or '0'
if ARGV[4] ~= 'keep' and enc ~= ARGV[3] then return {2, enc} end
local box = redis.call('GET', KEYS[3])
local benc = box and ('1' .. box) or '0'
if benc ~= ARGV[7] then return {3, benc} end
if ARGV[4] == 'set' then
  redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[6])
elseif ARGV[4] == 'del' then
  redis.call('DEL', KEYS[2])
end
if ARGV[8] == 'set' then
  redis.call('SET', KEYS[3], ARGV[9], 'PX', ARGV[10])
elseif ARGV[8] == 'del' then
  redis.call('DEL', KEYS[3])
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if tonumber(ARGV[11]) > 0 and #ARGV >= 14 then
  for i = 14, #ARGV do redis.call('RPUSH', KEYS[4], ARGV[i]) end
  redis.call('PEXPIRE', KEYS[4], ARGV[11])
  redis.call('ZADD', KEYS[5], ARGV[12], ARGV[13])
  redis.call('ZADD', KEYS[6], 'NX', ARGV[12], ARGV[13])
end
return {1, enc}
",
    )
});

/// Compare-and-delete: KEYS[1] is deleted only if it still holds ARGV[1].
static COMPARE_AND_DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// Deletes the cached token (JSON) only if its `token` is still ARGV[1].
static TOKEN_INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local ok, t = pcall(cjson.decode, v)
if ok and type(t) == 'table' and t.token == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// The refresh lock: taken when free, extended when ARGV[1] already holds it.
static TRY_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
",
    )
});

/// The per-follower forward count (`rate_hit`): a sorted set of hit times, trimmed to the
/// window; a hit is added only while fewer than the limit remain, so instances share it.
static RATE_HIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
",
    )
});

/// What a ledger change does to the stored window.
enum Write {
    Keep,
    Delete,
    Set { value: String, ttl_ms: i64 },
}

impl Write {
    /// (op, value, ttl) as the scripts take them.
    fn args(&self) -> (&'static str, &str, i64) {
        match self {
            Write::Keep => ("keep", "", 0),
            Write::Delete => ("del", "", 0),
            Write::Set { value, ttl_ms } => ("set", value.as_str(), *ttl_ms),
        }
    }
}

fn encode_expected(raw: Option<&str>) -> String {
    match raw {
        Some(v) => format!("1{v}"),
        None => "0".to_string(),
    }
}

fn decode_encoding(enc: &str) -> StoreResult<Option<String>> {
    match enc.split_at_checked(1) {
        Some(("0", "")) => Ok(None),
        Some(("1", v)) => Ok(Some(v.to_string())),
        _ => Err(StoreError::Corrupt(format!("unexpected window encoding from redis: {enc:?}"))),
    }
}

fn decode_window(raw: Option<&str>) -> StoreResult<Window> {
    match raw {
        None => Ok(Window::default()),
        Some(v) => serde_json::from_str(v)
            .map_err(|e| StoreError::Corrupt(format!("a window in redis is not valid JSON: {e}"))),
    }
}

fn encode_window(w: &Window) -> StoreResult<String> {
    serde_json::to_string(w)
        .map_err(|e| StoreError::Backend(format!("cannot serialize a window: {e}")))
}

/// The dedupe value: 16 hex digits of this attempt's nonce, then `0` (no stored answer) or
/// `1` and the answer.
fn encode_dedupe(nonce: u64, answer: Option<&str>) -> String {
    match answer {
        Some(a) => format!("{nonce:016x}1{a}"),
        None => format!("{nonce:016x}0"),
    }
}

fn decode_dedupe(v: &str) -> StoreResult<Option<String>> {
    let bad = || StoreError::Corrupt(format!("a dedupe record in redis is malformed ({v:?})"));
    let (_nonce, rest) = v.split_at_checked(16).ok_or_else(bad)?;
    match rest.split_at_checked(1) {
        Some(("0", "")) => Ok(None),
        Some(("1", answer)) => Ok(Some(answer.to_string())),
        _ => Err(bad()),
    }
}

fn decode_mailbox(raw: Option<&str>) -> StoreResult<Vec<HeldAnswer>> {
    match raw {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_str(v).map_err(|e| {
            StoreError::Corrupt(format!(
                "a mailbox of held answers in redis is not valid JSON: {e}"
            ))
        }),
    }
}

/// How a mailbox is stored: until its last answer expires, or not at all when empty.
fn mailbox_write(held: &[HeldAnswer], now_ms: i64) -> StoreResult<Write> {
    match held.iter().map(|h| h.expires_at_ms).max() {
        None => Ok(Write::Delete),
        Some(last) => Ok(Write::Set {
            value: serde_json::to_string(held)
                .map_err(|e| StoreError::Backend(format!("cannot serialize held answers: {e}")))?,
            ttl_ms: last.saturating_sub(now_ms).max(1000),
        }),
    }
}

/// A fresh id for a held answer (unique enough within one follower's mailbox).
fn held_id() -> i64 {
    rand::thread_rng().gen_range(1..i64::MAX)
}

/// The URL with any password replaced, for messages and logs.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("redacted"));
            }
            u.to_string()
        }
        Err(_) => "(the configured state.redis_url)".to_string(),
    }
}

/// Escapes glob characters so a namespace matches itself only in `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

struct Inner {
    con: ConnectionManager,
    /// The Redis URL with its password redacted.
    target: String,
    ns: String,
    outbox: Arc<SqliteStore>,
    window: WindowConfig,
    retention_ms: i64,
    clock: SharedClock,
    /// This instance's last committed copy of each window it touched: hot reads and the first
    /// compare-and-set guess. Never the authority.
    index: LedgerIndex,
    next_index_prune: AtomicI64,
    /// Per-follower turn-taking inside this instance (striped by OpenID hash).
    stripes: Box<[tokio::sync::Mutex<()>]>,
    hasher: std::collections::hash_map::RandomState,
}

/// Ledger, dedupe and token in Redis; the outbox in a per-instance [`SqliteStore`]. A cheap
/// handle (clone it freely).
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.inner.target)
            .field("namespace", &self.inner.ns)
            .field("outbox", &self.inner.outbox)
            .finish()
    }
}

impl RedisStore {
    /// Connects to Redis at `redis_url` (`state.redis_url`) and keeps every key under
    /// `namespace` (e.g. `kefu:{app_id}`). `outbox` is this instance's embedded store; its
    /// purge task is the caller's to spawn. Fails when Redis does not answer now; once open,
    /// the store reconnects by itself.
    pub async fn open(
        redis_url: &str,
        namespace: &str,
        outbox: Arc<SqliteStore>,
        window: &WindowConfig,
        dedupe_retention_secs: u64,
        clock: SharedClock,
    ) -> StoreResult<RedisStore> {
        let target = redact(redis_url);
        if namespace.is_empty() {
            return Err(StoreError::Backend(
                "the Redis key namespace is empty; kefu needs a prefix such as kefu:{app_id} so \
                 several accounts can share one Redis"
                    .into(),
            ));
        }
        let client = redis::Client::open(redis_url).map_err(|e| {
            StoreError::Backend(format!(
                "state.redis_url {target} is not a usable Redis URL ({e}); expected \
                 redis://[[user]:password@]host[:port][/db] or rediss://..."
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(OP_TIMEOUT)
            .set_number_of_retries(2)
            .set_max_delay(500);
        let unreachable = |why: String| {
            StoreError::Backend(format!(
                "cannot reach Redis at {target} ({why}); check state.redis_url \
                 (KEFU_STATE_REDIS_URL) and that Redis is running"
            ))
        };
        let con = tokio::time::timeout(
            OP_TIMEOUT * 2,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| unreachable(format!("no connection within {:?}", OP_TIMEOUT * 2)))?
        .map_err(|e| unreachable(e.to_string()))?;
        let retention_ms = i64::try_from(dedupe_retention_secs)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000)
            .max(1);
        let store = RedisStore {
            inner: Arc::new(Inner {
                con,
                target,
                ns: namespace.to_string(),
                outbox,
                window: window.clone(),
                retention_ms,
                clock,
                index: LedgerIndex::new(),
                next_index_prune: AtomicI64::new(0),
                stripes: (0..LOCK_STRIPES).map(|_| tokio::sync::Mutex::new(())).collect(),
                hasher: Default::default(),
            }),
        };
        store.ping().await?;
        Ok(store)
    }

    /// This instance's outbox store.
    pub fn outbox(&self) -> &Arc<SqliteStore> {
        &self.inner.outbox
    }

    /// The key namespace.
    pub fn namespace(&self) -> &str {
        &self.inner.ns
    }

    /// The Redis key of a follower's window.
    pub fn window_key(&self, openid: &OpenId) -> String {
        format!("{}:w:{}", self.inner.ns, openid.as_str())
    }

    /// The Redis key of a follower's held answers.
    pub fn mailbox_key(&self, openid: &OpenId) -> String {
        format!("{}:h:{}", self.inner.ns, openid.as_str())
    }

    /// The Redis key of a follower's kept turns with one backend.
    fn turns_key(&self, backend: &str, openid: &OpenId) -> String {
        format!("{}:t:{backend}:{}", self.inner.ns, openid.as_str())
    }

    /// Matches the follower's kept turns with every backend.
    fn turns_pattern(&self, openid: &OpenId) -> String {
        format!("{}:t:*:{}", glob_escape(&self.inner.ns), glob_escape(openid.as_str()))
    }

    /// The Redis key of a push's dedupe record.
    pub fn dedupe_key(&self, dedupe_key: &str) -> String {
        format!("{}:d:{dedupe_key}", self.inner.ns)
    }

    fn token_key(&self) -> String {
        format!("{}:token", self.inner.ns)
    }

    fn lock_key(&self) -> String {
        format!("{}:token:lock", self.inner.ns)
    }

    /// This instance's turn on the follower's window.
    async fn turn(&self, openid: &OpenId) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::BuildHasher;
        let i = self.inner.hasher.hash_one(openid) as usize % self.inner.stripes.len();
        self.inner.stripes[i].lock().await
    }

    fn con(&self) -> ConnectionManager {
        self.inner.con.clone()
    }

    /// Runs one Redis call with the operation timeout and a clear error.
    async fn io<T>(
        &self,
        limit: Duration,
        fut: impl Future<Output = RedisResult<T>>,
    ) -> StoreResult<T> {
        match tokio::time::timeout(limit, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Backend(format!("redis at {}: {e}", self.inner.target))),
            Err(_) => Err(StoreError::Backend(format!(
                "redis at {} did not answer within {limit:?}; is it running and reachable?",
                self.inner.target
            ))),
        }
    }

    /// The stored value this instance last committed for the follower, as the first guess.
    fn guess(&self, openid: &OpenId) -> StoreResult<Option<String>> {
        self.inner.index.get(openid).map(|w| encode_window(&w)).transpose()
    }

    /// Records a committed (or verified) window in the local index, pruning it now and then.
    fn remember(&self, openid: &OpenId, w: &Window) {
        self.inner.index.put(openid.clone(), w.clone());
        let now = self.inner.clock.now_secs();
        let due = self.inner.next_index_prune.load(Ordering::Relaxed);
        if now >= due
            && self
                .inner
                .next_index_prune
                .compare_exchange(
                    due,
                    now + INDEX_PRUNE_EVERY_SECS,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
        {
            self.inner.index.prune(now);
        }
    }

    /// How a changed window is stored: until its last grant expires, or for
    /// [`FOLLOW_STATE_TTL_SECS`] when only the follow state is left, or not at all.
    fn plan_write(&self, w: &mut Window, now: i64) -> StoreResult<Write> {
        w.prune(now);
        let now_ms = self.inner.clock.now_ms();
        let ttl_ms = match w.grants.iter().map(|g| g.expires_at).max() {
            // At least a second: a grant live at the caller's `now` keeps its key even if the
            // clock has moved on a little since.
            Some(last) => last.saturating_mul(1000).saturating_sub(now_ms).max(1000),
            None if w.subscribed.is_some() => FOLLOW_STATE_TTL_SECS * 1000,
            None => return Ok(Write::Delete),
        };
        Ok(Write::Set { value: encode_window(w)?, ttl_ms })
    }

    /// Backs off a little after repeated conflicts so contending tasks spread out.
    async fn backoff(attempt: u32) {
        if attempt >= 3 {
            let ms = rand::thread_rng().gen_range(0..=u64::from(attempt.min(20)));
            tokio::time::sleep(Duration::from_millis(ms)).await;
        } else {
            tokio::task::yield_now().await;
        }
    }

    fn contention(openid: &OpenId) -> StoreError {
        StoreError::Backend(format!(
            "redis: the window of {openid} kept changing under {MAX_CAS_ATTEMPTS} concurrent \
             updates; try again"
        ))
    }

    /// Reads, changes (with the policy, in `f`) and compare-and-sets one follower's window;
    /// `f` says whether it changed anything. Retries on the current value after a conflict.
    async fn update<T>(
        &self,
        openid: &OpenId,
        now: i64,
        mut f: impl FnMut(&mut Window) -> (T, bool) + Send,
    ) -> StoreResult<(T, Window)> {
        let key = self.window_key(openid);
        let _turn = self.turn(openid).await;
        let guess = self.guess(openid)?;
        let (out, w) = self
            .compare_and_set(&key, openid, guess, |current| {
                let mut w = decode_window(current)?;
                let (out, changed) = f(&mut w);
                let write = if changed { self.plan_write(&mut w, now)? } else { Write::Keep };
                Ok((write, (out, w)))
            })
            .await?;
        self.remember(openid, &w);
        Ok((out, w))
    }

    /// The compare-and-set loop of one key: `step` turns the stored value (None: no key)
    /// into the write to make and a result; the write happens only if the value is still the
    /// one read, else `step` runs again on the current value. `guess` is the value assumed
    /// for the first attempt (one round trip when right).
    async fn compare_and_set<T>(
        &self,
        key: &str,
        openid: &OpenId,
        guess: Option<String>,
        mut step: impl FnMut(Option<&str>) -> StoreResult<(Write, T)> + Send,
    ) -> StoreResult<T> {
        let mut current = guess;
        for attempt in 0..MAX_CAS_ATTEMPTS {
            let (write, out) = step(current.as_deref())?;
            let (op, value, ttl) = write.args();
            let mut con = self.con();
            let (done, enc): (i64, String) = self
                .io(
                    OP_TIMEOUT,
                    LEDGER_CAS
                        .key(key)
                        .arg(encode_expected(current.as_deref()))
                        .arg(op)
                        .arg(value)
                        .arg(ttl)
                        .invoke_async(&mut con),
                )
                .await?;
            if done == 1 {
                return Ok(out);
            }
            current = decode_encoding(&enc)?;
            Self::backoff(attempt).await;
        }
        Err(Self::contention(openid))
    }

    /// Appends one answer to the follower's mailbox (compare-and-set, taking turns with this
    /// instance's other changes of the follower).
    async fn append_held(&self, openid: &OpenId, held: HeldAnswer) -> StoreResult<()> {
        let key = self.mailbox_key(openid);
        let _turn = self.turn(openid).await;
        let now_ms = self.inner.clock.now_ms();
        self.compare_and_set(&key, openid, None, |current| {
            let mut all = decode_mailbox(current)?;
            all.push(held.clone());
            Ok((mailbox_write(&all, now_ms)?, ()))
        })
        .await
    }

    /// The Redis key of a follower's conversation log.
    fn log_key(&self, openid: &OpenId) -> String {
        format!("{}:log:{}", self.inner.ns, openid.as_str())
    }

    /// Trims a follower's records at or before `cutoff` (ms) off the head of the list (an
    /// unreadable one counts as old) and records the new oldest time; returns how many went.
    async fn trim_log(&self, openid: &str, cutoff: i64) -> StoreResult<u64> {
        let key = format!("{}:log:{openid}", self.inner.ns);
        let mut con = self.con();
        let head: Vec<String> = self
            .io(OP_TIMEOUT, redis::cmd("LRANGE").arg(&key).arg(0).arg(99).query_async(&mut con))
            .await?;
        let old = head
            .iter()
            .take_while(|r| LogRecord::decode(r).is_none_or(|r| r.at_ms <= cutoff))
            .count();
        if old > 0 {
            let _: () = self
                .io(
                    OP_TIMEOUT,
                    redis::cmd("LTRIM").arg(&key).arg(old).arg(-1).query_async(&mut con),
                )
                .await?;
        }
        let first: Option<String> = self
            .io(OP_TIMEOUT, redis::cmd("LINDEX").arg(&key).arg(0).query_async(&mut con))
            .await?;
        match first.as_deref().map(LogRecord::decode) {
            None => {
                self.erase_log(openid).await?;
            }
            Some(r) => {
                // An unreadable head is trimmed on the next pass (it sorts as old).
                let at = r.map_or(i64::MIN, |r| r.at_ms);
                let _: i64 = self
                    .io(
                        OP_TIMEOUT,
                        redis::cmd("ZADD")
                            .arg(self.log_oldest_key())
                            .arg(at)
                            .arg(openid)
                            .query_async(&mut con),
                    )
                    .await?;
            }
        }
        Ok(old as u64)
    }

    /// Deletes a follower's log and its index entry (by the OpenID as the index holds it);
    /// returns how many records it held.
    async fn erase_log(&self, openid: &str) -> StoreResult<u64> {
        let key = format!("{}:log:{openid}", self.inner.ns);
        let mut con = self.con();
        let (n, _, _, _): (u64, i64, i64, i64) = self
            .io(
                OP_TIMEOUT,
                redis::pipe()
                    .atomic()
                    .cmd("LLEN")
                    .arg(&key)
                    .cmd("DEL")
                    .arg(&key)
                    .cmd("ZREM")
                    .arg(self.log_index_key())
                    .arg(openid)
                    .cmd("ZREM")
                    .arg(self.log_oldest_key())
                    .arg(openid)
                    .query_async(&mut con),
            )
            .await?;
        Ok(n)
    }

    /// The sorted set of followers by last activity.
    fn log_index_key(&self) -> String {
        format!("{}:log:index", self.inner.ns)
    }

    /// Up to `n` members of the activity index after `cursor` in the order (score, member)
    /// descending (ZREVRANGEBYSCORE's order), with their scores (ms): first the cursor's own
    /// millisecond's members that sort below its member, then the older ones.
    async fn log_index_after(
        &self,
        cursor: Option<&(i64, String)>,
        n: usize,
    ) -> StoreResult<Vec<(String, i64)>> {
        let index = self.log_index_key();
        let mut con = self.con();
        let range = |max: String, min: String, limit: Option<usize>| {
            let mut cmd = redis::cmd("ZREVRANGEBYSCORE");
            cmd.arg(&index).arg(max).arg(min).arg("WITHSCORES");
            if let Some(l) = limit {
                cmd.arg("LIMIT").arg(0).arg(l);
            }
            cmd
        };
        let mut out: Vec<(String, i64)> = Vec::new();
        let older = match cursor {
            None => "+inf".to_string(),
            Some((ms, member)) => {
                let ties: Vec<(String, f64)> = self
                    .io(
                        OP_TIMEOUT,
                        range(ms.to_string(), ms.to_string(), None).query_async(&mut con),
                    )
                    .await?;
                let mut ties: Vec<String> = ties
                    .into_iter()
                    .map(|(m, _)| m)
                    .filter(|m| m.as_str() < member.as_str())
                    .collect();
                ties.sort_unstable_by(|a, b| b.cmp(a));
                out.extend(ties.into_iter().take(n).map(|m| (m, *ms)));
                format!("({ms}")
            }
        };
        if out.len() < n {
            let rest: Vec<(String, f64)> = self
                .io(
                    OP_TIMEOUT,
                    range(older, "-inf".into(), Some(n - out.len())).query_async(&mut con),
                )
                .await?;
            out.extend(rest.into_iter().map(|(m, score)| (m, score as i64)));
        }
        Ok(out)
    }

    /// The sorted set of followers by the time of their oldest kept record: the purge trims
    /// only the lists that hold something past the retention.
    fn log_oldest_key(&self) -> String {
        format!("{}:log:oldest", self.inner.ns)
    }

    /// A commit's records ([`crate::convlog::commit_records`], as the SQLite commit writes
    /// them), with ids from the push's time (ms × 1000 + position).
    fn push_records(
        &self,
        a: &crate::delivery::Assignment,
        held: &[HeldAnswer],
        push: &PushCommit,
    ) -> Vec<LogRecord> {
        let at = push.received_at_ms;
        let mut out = crate::convlog::commit_records(
            push.log.as_ref(),
            &push.openid,
            at,
            a,
            held,
            push.passive.as_ref(),
            &push.terms.hold_reason,
        );
        for (i, r) in out.iter_mut().enumerate() {
            r.id = at.saturating_mul(1000).saturating_add(i as i64);
        }
        out
    }

    /// Appends records to their followers' logs and the index, then publishes them.
    async fn append_log(&self, mut records: Vec<LogRecord>) -> StoreResult<()> {
        let retention = self.inner.outbox.log_retention_ms();
        if retention <= 0 || records.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        for r in &mut records {
            if r.id == 0 {
                r.id = r
                    .at_ms
                    .saturating_mul(1000)
                    .saturating_add(rand::thread_rng().gen_range(0..1000));
            }
            let key = self.log_key(&r.openid);
            pipe.cmd("RPUSH").arg(&key).arg(r.encode()).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(retention).ignore();
            pipe.cmd("ZADD").arg(self.log_index_key()).arg(r.at_ms).arg(r.openid.as_str()).ignore();
            pipe.cmd("ZADD")
                .arg(self.log_oldest_key())
                .arg("NX")
                .arg(r.at_ms)
                .arg(r.openid.as_str())
                .ignore();
        }
        let mut con = self.con();
        let _: () = self.io(OP_TIMEOUT, pipe.query_async(&mut con)).await?;
        self.inner.outbox.log_bus().publish(records);
        Ok(())
    }

    /// Logs a send's outcome from its local outbox entry; a failure to log is a warning, not
    /// a failed send.
    async fn log_outcome(&self, id: i64, outcome: &Outcome) {
        if self.inner.outbox.log_retention_ms() <= 0 {
            return;
        }
        let Some((kind, reason)) = super::sqlite::outcome_parts(outcome) else { return };
        let entry = match self.inner.outbox.outbox_entry(id).await {
            Ok(Some(e)) if crate::convlog::is_message(&e.action) => e,
            _ => return,
        };
        let now = self.inner.clock.now_ms();
        let rec =
            LogRecord::answer(&entry.openid, now, &entry.action, Via::CustomSend, kind, reason);
        if let Err(e) = self.append_log(vec![rec]).await {
            tracing::warn!(error = %e, "cannot record a send's outcome in the conversation log");
        }
    }

    /// Removes every key under `namespace` (tests, and tearing an account down). Returns
    /// how many were deleted.
    pub async fn delete_namespace(&self) -> StoreResult<usize> {
        let keys = self.scan(&format!("{}:*", glob_escape(&self.inner.ns))).await?;
        let mut n = 0;
        for chunk in keys.chunks(500) {
            let mut con = self.con();
            let d: usize =
                self.io(OP_TIMEOUT, redis::cmd("DEL").arg(chunk).query_async(&mut con)).await?;
            n += d;
        }
        Ok(n)
    }

    async fn scan(&self, pattern: &str) -> StoreResult<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut con = self.con();
            let (next, batch): (u64, Vec<String>) = self
                .io(
                    OP_TIMEOUT,
                    redis::cmd("SCAN")
                        .cursor_arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut con),
                )
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(keys)
    }

    async fn load_window(&self, openid: &OpenId) -> StoreResult<Window> {
        let mut con = self.con();
        let raw: Option<String> = self
            .io(OP_TIMEOUT, redis::cmd("GET").arg(self.window_key(openid)).query_async(&mut con))
            .await?;
        decode_window(raw.as_deref())
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn commit_push(&self, push: PushCommit) -> StoreResult<CommitOutcome> {
        let dkey = self.dedupe_key(&push.dedupe_key);
        let wkey = self.window_key(&push.openid);
        let hkey = self.mailbox_key(&push.openid);
        let now = push.received_at_ms.div_euclid(1000);
        let now_ms = self.inner.clock.now_ms();
        let effect = push.effect;
        let unsubscribe = effect == WindowEffect::CloseAll;
        let nonce: u64 = rand::thread_rng().r#gen();
        // This instance's own pending messages for the follower: the window carries those first.
        let pending = if push.outbox.is_empty() {
            0
        } else {
            self.inner.outbox.pending_count(&push.openid).await?
        };
        let log_retention = self.inner.outbox.log_retention_ms();
        let turn = self.turn(&push.openid).await;
        let mut current = self.guess(&push.openid)?;
        // Most followers have no held answers: guess an empty mailbox, one round trip.
        let mut mailbox: Option<String> = None;
        let mut attempt = 0;
        let (window_after, a, dropped_held) = loop {
            if attempt == MAX_CAS_ATTEMPTS {
                return Err(Self::contention(&push.openid));
            }
            let mut w = decode_window(current.as_deref())?;
            let write = if effect == WindowEffect::None {
                Write::Keep
            } else {
                w.apply(effect, now, &self.inner.window);
                self.plan_write(&mut w, now)?
            };
            let mailbox_held = decode_mailbox(mailbox.as_deref())?;
            let held_before = mailbox_held.clone();
            // An unfollow drops what was held for the follower, as it cancels what was pending.
            let (held, dropped_held) = if unsubscribe {
                (Vec::new(), mailbox_held.len() as u64)
            } else {
                (mailbox_held, 0)
            };
            let capacity = w.quota_left(now).map(|q| q.saturating_sub(pending));
            let a = assign(
                &held,
                push.passive.clone(),
                push.outbox.clone(),
                capacity,
                &push.terms,
                push.received_at_ms,
            );
            let box_write = if unsubscribe {
                if mailbox.is_some() { Write::Delete } else { Write::Keep }
            } else {
                let gone: std::collections::HashSet<i64> = a
                    .expired
                    .iter()
                    .chain(&a.undeliverable)
                    .chain(&a.released)
                    .chain(a.passive_from_held.as_ref())
                    .copied()
                    .collect();
                let mut keep: Vec<HeldAnswer> =
                    held.into_iter().filter(|h| !gone.contains(&h.id)).collect();
                let why = push.terms.hold_reason.as_str();
                keep.extend(a.hold.iter().map(|e| HeldAnswer {
                    id: held_id(),
                    openid: push.openid.clone(),
                    rule: e.rule.clone(),
                    action: e.action.clone(),
                    push_key: push.dedupe_key.clone(),
                    reason: why.to_string(),
                    held_at_ms: now_ms,
                    expires_at_ms: push.received_at_ms.saturating_add(push.terms.hold_for_ms),
                }));
                if keep.is_empty() && mailbox.is_none() {
                    Write::Keep
                } else {
                    mailbox_write(&keep, now_ms)?
                }
            };
            let claim = encode_dedupe(nonce, encode_answer(a.passive.as_ref())?.as_deref());
            let (op, value, ttl) = write.args();
            let (box_op, box_value, box_ttl) = box_write.args();
            let log = if log_retention > 0 {
                self.push_records(&a, &held_before, &push)
            } else {
                Vec::new()
            };
            let mut con = self.con();
            let (state, reply): (i64, String) = self
                .io(
                    OP_TIMEOUT,
                    COMMIT_PUSH
                        .key(&dkey)
                        .key(&wkey)
                        .key(&hkey)
                        .arg(&claim)
                        .arg(self.inner.retention_ms)
                        .arg(encode_expected(current.as_deref()))
                        .arg(op)
                        .arg(value)
                        .arg(ttl)
                        .arg(encode_expected(mailbox.as_deref()))
                        .arg(box_op)
                        .arg(box_value)
                        .arg(box_ttl)
                        .key(self.log_key(&push.openid))
                        .key(self.log_index_key())
                        .key(self.log_oldest_key())
                        .arg(log_retention)
                        .arg(push.received_at_ms)
                        .arg(push.openid.as_str())
                        .arg(log.iter().map(LogRecord::encode).collect::<Vec<_>>())
                        .invoke_async(&mut con),
                )
                .await?;
            match state {
                0 => {
                    let answer = decode_dedupe(&reply)?;
                    return Ok(CommitOutcome::Duplicate {
                        answer: decode_answer(answer.as_deref()),
                    });
                }
                1 => {
                    self.inner.outbox.log_bus().publish(log);
                    match write {
                        Write::Keep => {
                            break (
                                decode_window(decode_encoding(&reply)?.as_deref())?,
                                a,
                                dropped_held,
                            );
                        }
                        _ => break (w, a, dropped_held),
                    }
                }
                3 => {
                    mailbox = decode_encoding(&reply)?;
                    Self::backoff(attempt).await;
                    attempt += 1;
                }
                _ => {
                    current = decode_encoding(&reply)?;
                    Self::backoff(attempt).await;
                    attempt += 1;
                }
            }
        };
        let delivery = Delivered::of(&a);
        let claim = encode_dedupe(nonce, encode_answer(a.passive.as_ref())?.as_deref());
        self.remember(&push.openid, &window_after);
        drop(turn);

        if a.outbox.is_empty() && !unsubscribe {
            return Ok(CommitOutcome::Fresh {
                window_after,
                outbox_ids: Vec::new(),
                cancelled: 0,
                delivery,
            });
        }
        // Held answers released by this push are written as this push's entries (they lead
        // its own), since the shared mailbox no longer holds them.
        match self
            .inner
            .outbox
            .append_outbox_counted(&push.openid, &push.dedupe_key, unsubscribe, a.outbox)
            .await
        {
            Ok((outbox_ids, cancelled)) => Ok(CommitOutcome::Fresh {
                window_after,
                outbox_ids,
                cancelled: cancelled + dropped_held,
                delivery,
            }),
            Err(e) => {
                // Nothing of this push reached the outbox: let WeChat's retry run it afresh
                // rather than answer it as a duplicate with its messages lost.
                let mut con = self.con();
                let released: StoreResult<i64> = self
                    .io(
                        OP_TIMEOUT,
                        COMPARE_AND_DELETE.key(&dkey).arg(&claim).invoke_async(&mut con),
                    )
                    .await;
                tracing::error!(
                    error = %e,
                    push = %push.dedupe_key,
                    released = matches!(released, Ok(1)),
                    "cannot write a push's planned messages to the local outbox; its dedupe \
                     record was released so a redelivery is processed again"
                );
                Err(e)
            }
        }
    }

    async fn charge(&self, openid: &OpenId, now: i64) -> StoreResult<ChargeOutcome> {
        let (out, _) = self
            .update(openid, now, |w| {
                let out = w.charge(now);
                (out, out.is_allowed())
            })
            .await?;
        Ok(out)
    }

    async fn refund(&self, openid: &OpenId, trigger: Trigger, opened_at: i64) -> StoreResult<bool> {
        let now = self.inner.clock.now_secs();
        let (done, _) = self
            .update(openid, now, |w| {
                let done = w.refund(trigger, opened_at);
                (done, done)
            })
            .await?;
        Ok(done)
    }

    async fn close_window(&self, openid: &OpenId) -> StoreResult<()> {
        let now = self.inner.clock.now_secs();
        self.update(openid, now, |w| {
            let had = !w.grants.is_empty();
            w.close();
            ((), had)
        })
        .await?;
        Ok(())
    }

    async fn exhaust_window(&self, openid: &OpenId, now: i64) -> StoreResult<()> {
        self.update(openid, now, |w| {
            let before = w.clone();
            w.exhaust(now);
            ((), *w != before)
        })
        .await?;
        Ok(())
    }

    async fn window(&self, openid: &OpenId, now: i64) -> StoreResult<WindowView> {
        let w = self.load_window(openid).await?;
        let pending = self.inner.outbox.pending_count(openid).await?;
        let held = self.held_for(openid, now.saturating_mul(1000)).await?.len() as u64;
        Ok(w.view(openid.clone(), now, pending).with_held(held))
    }

    async fn list_windows(&self, now: i64) -> StoreResult<Vec<WindowView>> {
        let prefix = format!("{}:w:", self.inner.ns);
        let keys = self.scan(&format!("{}*", glob_escape(&prefix))).await?;
        let mut out = Vec::new();
        for chunk in keys.chunks(500) {
            let mut con = self.con();
            let values: Vec<Option<String>> =
                self.io(OP_TIMEOUT, redis::cmd("MGET").arg(chunk).query_async(&mut con)).await?;
            for (key, value) in chunk.iter().zip(values) {
                // Gone between SCAN and MGET: it expired or was deleted; nothing to list.
                let Some(value) = value else { continue };
                let w = decode_window(Some(&value))?;
                if w.live_grants(now).next().is_none() {
                    continue;
                }
                let id = key.strip_prefix(&prefix).unwrap_or(key);
                let openid = OpenId::parse(id).map_err(|e| {
                    StoreError::Corrupt(format!("redis key {key:?} names no OpenID: {e}"))
                })?;
                let pending = self.inner.outbox.pending_count(&openid).await?;
                let held = self.held_for(&openid, now.saturating_mul(1000)).await?.len() as u64;
                out.push(w.view(openid, now, pending).with_held(held));
            }
        }
        out.sort_by(|a, b| a.openid.cmp(&b.openid));
        Ok(out)
    }

    async fn peek_window(&self, openid: &OpenId) -> StoreResult<Option<Window>> {
        Ok(self.inner.index.get(openid))
    }

    async fn due(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<OutboxEntry>> {
        self.inner.outbox.due(now_ms, limit).await
    }

    async fn next_due_at(&self) -> StoreResult<Option<i64>> {
        self.inner.outbox.next_due_at().await
    }

    async fn claim(&self, id: i64) -> StoreResult<bool> {
        self.inner.outbox.claim(id).await
    }

    async fn finish(&self, id: i64, outcome: Outcome) -> StoreResult<()> {
        self.log_outcome(id, &outcome).await;
        let Outcome::Held { reason, expires_at_ms } = outcome else {
            return self.inner.outbox.finish(id, outcome).await;
        };
        // The mailbox is shared: the answer moves there, and the local entry ends as moved.
        let Some(e) = self.inner.outbox.outbox_entry(id).await? else {
            return Err(StoreError::UnknownEntry(id));
        };
        let held = HeldAnswer {
            id: held_id(),
            openid: e.openid.clone(),
            rule: e.rule.clone(),
            action: e.action.clone(),
            push_key: e.push_key.clone(),
            reason: reason.clone(),
            held_at_ms: self.inner.clock.now_ms(),
            expires_at_ms,
        };
        if let Err(err) = self.append_held(&e.openid, held).await {
            // Not held, so not lost either: back to pending, tried again in a second.
            let retry = Outcome::Retry {
                due_at_ms: self.inner.clock.now_ms().saturating_add(1000),
                reason: format!("cannot hold it in redis: {err}"),
            };
            self.inner.outbox.finish(id, retry).await?;
            return Err(err);
        }
        let moved = format!("held in the shared mailbox (redis): {reason}");
        self.inner.outbox.finish(id, Outcome::Dropped { reason: moved }).await
    }

    async fn held_for(&self, openid: &OpenId, now_ms: i64) -> StoreResult<Vec<HeldAnswer>> {
        let mut con = self.con();
        let raw: Option<String> = self
            .io(OP_TIMEOUT, redis::cmd("GET").arg(self.mailbox_key(openid)).query_async(&mut con))
            .await?;
        let mut held = decode_mailbox(raw.as_deref())?;
        held.retain(|h| h.expires_at_ms > now_ms);
        Ok(held)
    }

    /// Redis drops a mailbox with its last answer (its TTL); answers that expired before
    /// others are dropped and counted by the follower's next push, which never delivers them.
    async fn expire_held(&self, _now_ms: i64) -> StoreResult<u64> {
        Ok(0)
    }

    async fn pending_count(&self, openid: &OpenId) -> StoreResult<u64> {
        self.inner.outbox.pending_count(openid).await
    }

    async fn pending_for(&self, openid: &OpenId) -> StoreResult<Vec<OutboxEntry>> {
        self.inner.outbox.pending_for(openid).await
    }

    async fn outbox_entry(&self, id: i64) -> StoreResult<Option<OutboxEntry>> {
        self.inner.outbox.outbox_entry(id).await
    }

    /// This instance's outbox; answers held in the shared mailboxes are counted per follower
    /// by `window` (`held`), not listed here.
    async fn outbox_overview(&self, recent: usize) -> StoreResult<Vec<OutboxEntry>> {
        self.inner.outbox.outbox_overview(recent).await
    }

    fn token_cache(&self) -> Arc<dyn TokenCache> {
        Arc::new(self.clone())
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut con = self.con();
        let pong: String = self.io(PING_TIMEOUT, redis::cmd("PING").query_async(&mut con)).await?;
        if pong != "PONG" {
            return Err(StoreError::Backend(format!(
                "redis at {} answered PING with {pong:?}",
                self.inner.target
            )));
        }
        // The outbox is part of this store too.
        self.inner.outbox.ping().await
    }

    // ---- forwards ----
    // The forward records are per instance, like the outbox (in its SQLite); the rate count
    // is shared: `{ns}:rl:{key}`, a sorted set of hit times.

    async fn record_forward(&self, forward: &super::ForwardRecord) -> StoreResult<()> {
        self.inner.outbox.record_forward(forward).await
    }

    async fn unfinished_forwards(&self) -> StoreResult<Vec<super::ForwardRecord>> {
        self.inner.outbox.unfinished_forwards().await
    }

    async fn finish_forward(&self, id: &str) -> StoreResult<()> {
        self.inner.outbox.finish_forward(id).await
    }

    async fn rate_hit(
        &self,
        key: &str,
        limit: u32,
        window_ms: i64,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let rkey = format!("{}:rl:{key}", self.inner.ns);
        let member = format!("{now_ms}-{}", rand::thread_rng().r#gen::<u64>());
        let mut con = self.con();
        let ok: i64 = self
            .io(
                OP_TIMEOUT,
                RATE_HIT
                    .key(&rkey)
                    .arg(now_ms)
                    .arg(window_ms)
                    .arg(limit)
                    .arg(member)
                    .invoke_async(&mut con),
            )
            .await?;
        Ok(ok == 1)
    }

    // ---- conversation memory ----
    // A follower's turns with one backend are a list, `{ns}:t:{backend}:{openid}`, of JSON
    // turns oldest first, trimmed to `keep` and expiring `history_ttl` after the last turn.

    async fn turns(
        &self,
        backend: Option<&str>,
        openid: &OpenId,
    ) -> StoreResult<Vec<(String, crate::llm::Turn)>> {
        let keys = match backend {
            Some(b) => vec![self.turns_key(b, openid)],
            None => {
                let mut k = self.scan(&self.turns_pattern(openid)).await?;
                k.sort();
                k
            }
        };
        let prefix = format!("{}:t:", self.inner.ns);
        let mut out = Vec::new();
        for key in keys {
            let mut con = self.con();
            let raw: Vec<String> = self
                .io(OP_TIMEOUT, redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(&mut con))
                .await?;
            let name = key
                .strip_prefix(&prefix)
                .and_then(|r| r.rsplit_once(':'))
                .map_or("", |(b, _)| b)
                .to_string();
            for r in raw {
                let turn = serde_json::from_str(&r).map_err(|e| {
                    StoreError::Corrupt(format!("a kept turn in redis ({key}) is not JSON: {e}"))
                })?;
                out.push((name.clone(), turn));
            }
        }
        Ok(out)
    }

    async fn add_turn(
        &self,
        backend: &str,
        openid: &OpenId,
        turn: crate::llm::Turn,
        keep: usize,
        oldest_ms: i64,
    ) -> StoreResult<()> {
        let key = self.turns_key(backend, openid);
        let value = serde_json::to_string(&turn)
            .map_err(|e| StoreError::Backend(format!("cannot serialize a turn: {e}")))?;
        let ttl_ms = turn.at_ms.saturating_sub(oldest_ms).max(1000);
        let keep = i64::try_from(keep.max(1)).unwrap_or(i64::MAX);
        let mut con = self.con();
        let _: () = self
            .io(
                OP_TIMEOUT,
                redis::pipe()
                    .atomic()
                    .cmd("RPUSH")
                    .arg(&key)
                    .arg(value)
                    .ignore()
                    .cmd("LTRIM")
                    .arg(&key)
                    .arg(-keep)
                    .arg(-1)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl_ms)
                    .ignore()
                    .query_async(&mut con),
            )
            .await?;
        Ok(())
    }

    async fn clear_turns(&self, openid: &OpenId) -> StoreResult<u64> {
        let keys = self.scan(&self.turns_pattern(openid)).await?;
        let mut n = 0u64;
        for key in keys {
            let mut con = self.con();
            let len: u64 =
                self.io(OP_TIMEOUT, redis::cmd("LLEN").arg(&key).query_async(&mut con)).await?;
            let _: i64 =
                self.io(OP_TIMEOUT, redis::cmd("DEL").arg(&key).query_async(&mut con)).await?;
            n += len;
        }
        Ok(n)
    }

    // ---- conversation log ----
    async fn log_append(&self, records: Vec<LogRecord>) -> StoreResult<()> {
        self.append_log(records).await
    }

    async fn log_followers(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> StoreResult<Vec<FollowerActivity>> {
        let mut cursor = before;
        let mut out = Vec::new();
        // A follower whose list expired with its TTL is still in the index until the purge;
        // it is skipped, and the next batch fills the page.
        while out.len() < limit {
            let want = limit - out.len();
            let batch = self.log_index_after(cursor.as_ref(), want).await?;
            let exhausted = batch.len() < want;
            let mut con = self.con();
            for (member, at_ms) in batch {
                cursor = Some((at_ms, member.clone()));
                let Ok(openid) = OpenId::parse(&member) else { continue };
                let key = self.log_key(&openid);
                let (n, last): (u64, Option<String>) = self
                    .io(
                        OP_TIMEOUT,
                        redis::pipe()
                            .cmd("LLEN")
                            .arg(&key)
                            .cmd("LINDEX")
                            .arg(&key)
                            .arg(-1)
                            .query_async(&mut con),
                    )
                    .await?;
                if n == 0 {
                    continue; // expired with its TTL; the purge drops it from the index
                }
                let last = last.as_deref().and_then(LogRecord::decode);
                out.push(FollowerActivity { openid, last_at_ms: at_ms, last, records: n });
            }
            if exhausted {
                break;
            }
        }
        Ok(out)
    }

    async fn log_show(
        &self,
        openid: &OpenId,
        since_ms: Option<i64>,
    ) -> StoreResult<Vec<LogRecord>> {
        let mut con = self.con();
        let raw: Vec<String> = self
            .io(
                OP_TIMEOUT,
                redis::cmd("LRANGE").arg(self.log_key(openid)).arg(0).arg(-1).query_async(&mut con),
            )
            .await?;
        let since = since_ms.unwrap_or(i64::MIN);
        Ok(raw.iter().filter_map(|r| LogRecord::decode(r)).filter(|r| r.at_ms >= since).collect())
    }

    async fn log_delete(&self, openid: &OpenId) -> StoreResult<u64> {
        self.erase_log(openid.as_str()).await
    }

    /// Drops followers idle past the retention from the index (their lists expired with
    /// their TTL) and trims the older records off the others' lists.
    async fn log_purge(&self, now_ms: i64) -> StoreResult<u64> {
        let cutoff = now_ms.saturating_sub(self.inner.outbox.log_retention_ms());
        let index = self.log_index_key();
        let mut con = self.con();
        let gone: Vec<String> = self
            .io(
                OP_TIMEOUT,
                redis::cmd("ZRANGEBYSCORE")
                    .arg(&index)
                    .arg("-inf")
                    .arg(cutoff)
                    .query_async(&mut con),
            )
            .await?;
        let mut n = 0u64;
        for openid in &gone {
            n += self.erase_log(openid).await?;
        }
        // Only followers whose oldest record is past the cutoff are read, a page at a time.
        let oldest = self.log_oldest_key();
        for _ in 0..PURGE_ROUNDS {
            let due: Vec<String> = self
                .io(
                    OP_TIMEOUT,
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(&oldest)
                        .arg("-inf")
                        .arg(cutoff)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(PURGE_PAGE)
                        .query_async(&mut con),
                )
                .await?;
            for openid in &due {
                n += self.trim_log(openid, cutoff).await?;
            }
            if due.len() < PURGE_PAGE {
                break;
            }
        }
        Ok(n)
    }

    fn log_bus(&self) -> crate::convlog::LogBus {
        self.inner.outbox.log_bus()
    }

    fn log_retention_ms(&self) -> i64 {
        self.inner.outbox.log_retention_ms()
    }

    // ---- media ----
    // The media-id cache in one hash, `{ns}:media`, field `{type}:{sha256}` → the record as
    // JSON (no TTL: `kefu media list` shows old records too, and each is replaced by the next
    // upload); the upload lock per file is `{ns}:media:lock:{type}:{sha256}`, taken and
    // released with the token lock's scripts, so instances share one upload per file.

    async fn media_get(&self, key: &super::MediaKey) -> StoreResult<Option<super::MediaRecord>> {
        let mut con = self.con();
        let raw: Option<String> = self
            .io(
                OP_TIMEOUT,
                redis::cmd("HGET").arg(self.media_key()).arg(key.to_string()).query_async(&mut con),
            )
            .await?;
        raw.map(|v| decode_media(&v)).transpose()
    }

    async fn media_put(&self, record: &super::MediaRecord) -> StoreResult<()> {
        let value = serde_json::to_string(record)
            .map_err(|e| StoreError::Backend(format!("cannot encode a media record: {e}")))?;
        let mut con = self.con();
        let _: i64 = self
            .io(
                OP_TIMEOUT,
                redis::cmd("HSET")
                    .arg(self.media_key())
                    .arg(record.key().to_string())
                    .arg(value)
                    .query_async(&mut con),
            )
            .await?;
        Ok(())
    }

    async fn media_list(&self) -> StoreResult<Vec<super::MediaRecord>> {
        let mut con = self.con();
        let all: Vec<(String, String)> = self
            .io(OP_TIMEOUT, redis::cmd("HGETALL").arg(self.media_key()).query_async(&mut con))
            .await?;
        let mut out = all.iter().map(|(_, v)| decode_media(v)).collect::<StoreResult<Vec<_>>>()?;
        out.sort_by_key(super::MediaRecord::key);
        Ok(out)
    }

    async fn media_try_lock(
        &self,
        key: &super::MediaKey,
        holder: &str,
        ttl: Duration,
    ) -> StoreResult<bool> {
        self.try_lock(self.media_lock_key(key), holder, ttl).await
    }

    async fn media_unlock(&self, key: &super::MediaKey, holder: &str) -> StoreResult<()> {
        self.unlock(self.media_lock_key(key), holder).await
    }
}

// ---------------------------------------------------------------------------------------------
// ---- media ---- keys and decoding of the media-id cache (see the `Store` impl's media part).

impl RedisStore {
    fn media_key(&self) -> String {
        format!("{}:media", self.inner.ns)
    }

    fn media_lock_key(&self, key: &super::MediaKey) -> String {
        format!("{}:media:lock:{key}", self.inner.ns)
    }
}

fn decode_media(v: &str) -> StoreResult<super::MediaRecord> {
    serde_json::from_str(v)
        .map_err(|e| StoreError::Corrupt(format!("a media record in redis: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Access-token cache (protocol §8.2): one token for every instance. The API client
// single-flights in-process and takes the lock so only one instance fetches; the others wait
// and re-read.

#[async_trait]
impl TokenCache for RedisStore {
    async fn load(&self) -> anyhow::Result<Option<CachedToken>> {
        let mut con = self.con();
        let raw: Option<String> = self
            .io(OP_TIMEOUT, redis::cmd("GET").arg(self.token_key()).query_async(&mut con))
            .await?;
        match raw {
            None => Ok(None),
            Some(v) => match serde_json::from_str::<CachedToken>(&v) {
                Ok(t) => Ok(Some(t)),
                Err(e) => {
                    // Never echo the value: it holds the token.
                    tracing::warn!(error = %e, "ignoring an unreadable access token in redis");
                    Ok(None)
                }
            },
        }
    }

    async fn save(&self, token: &CachedToken) -> anyhow::Result<()> {
        let value = serde_json::to_string(token)?;
        let ttl_ms =
            token.expires_at.saturating_mul(1000).saturating_sub(self.inner.clock.now_ms());
        let mut con = self.con();
        if ttl_ms <= 0 {
            // Already expired: storing it would only hand out a dead token.
            let _: i64 = self
                .io(OP_TIMEOUT, redis::cmd("DEL").arg(self.token_key()).query_async(&mut con))
                .await?;
            return Ok(());
        }
        let _: () = self
            .io(
                OP_TIMEOUT,
                redis::cmd("SET")
                    .arg(self.token_key())
                    .arg(value)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut con),
            )
            .await?;
        Ok(())
    }

    async fn invalidate(&self, token: &str) -> anyhow::Result<()> {
        let mut con = self.con();
        let _: i64 = self
            .io(
                OP_TIMEOUT,
                TOKEN_INVALIDATE.key(self.token_key()).arg(token).invoke_async(&mut con),
            )
            .await?;
        Ok(())
    }

    async fn try_lock_refresh(&self, holder: &str, ttl: Duration) -> anyhow::Result<bool> {
        Ok(self.try_lock(self.lock_key(), holder, ttl).await?)
    }

    async fn unlock_refresh(&self, holder: &str) -> anyhow::Result<()> {
        Ok(self.unlock(self.lock_key(), holder).await?)
    }
}

impl RedisStore {
    /// Takes the lock at `key` for `holder` for `ttl` ([`TRY_LOCK`]): true when it was free or
    /// already this holder's.
    async fn try_lock(&self, key: String, holder: &str, ttl: Duration) -> StoreResult<bool> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let mut con = self.con();
        let got: i64 = self
            .io(OP_TIMEOUT, TRY_LOCK.key(key).arg(holder).arg(ttl_ms).invoke_async(&mut con))
            .await?;
        Ok(got == 1)
    }

    /// Releases the lock at `key` if `holder` still holds it ([`COMPARE_AND_DELETE`]).
    async fn unlock(&self, key: String, holder: &str) -> StoreResult<()> {
        let mut con = self.con();
        let _: i64 = self
            .io(OP_TIMEOUT, COMPARE_AND_DELETE.key(key).arg(holder).invoke_async(&mut con))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_round_trip() {
        assert_eq!(encode_expected(None), "0");
        assert_eq!(encode_expected(Some("{}")), "1{}");
        assert_eq!(decode_encoding("0").unwrap(), None);
        assert_eq!(decode_encoding("1{\"a\":1}").unwrap().as_deref(), Some("{\"a\":1}"));
        assert!(decode_encoding("").is_err());
        assert!(decode_encoding("0x").is_err());

        let v = encode_dedupe(0xabc, Some("<xml>1</xml>"));
        assert_eq!(v, "0000000000000abc1<xml>1</xml>");
        assert_eq!(decode_dedupe(&v).unwrap().as_deref(), Some("<xml>1</xml>"));
        assert_eq!(decode_dedupe(&encode_dedupe(u64::MAX, None)).unwrap(), None);
        assert_eq!(decode_dedupe(&encode_dedupe(1, Some(""))).unwrap().as_deref(), Some(""));
        assert!(decode_dedupe("short").is_err());
        assert!(decode_dedupe("0000000000000abc2").is_err());
    }

    #[test]
    fn stored_window_is_byte_stable() {
        // The first compare-and-set guess re-encodes the cached copy; it must equal the bytes
        // stored, or every change would cost a second round trip.
        let mut w = Window::default();
        w.open(Trigger::Message, 1_700_000_000, &WindowConfig::default());
        w.open(Trigger::Payment, 1_700_000_000, &WindowConfig::default());
        w.charge(1_700_000_001);
        let s = encode_window(&w).unwrap();
        assert_eq!(encode_window(&decode_window(Some(&s)).unwrap()).unwrap(), s);
    }

    #[test]
    fn passwords_are_redacted_and_globs_escaped() {
        assert_eq!(redact("redis://:hunter2@10.0.0.1:6380/2"), "redis://:redacted@10.0.0.1:6380/2");
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        assert!(!redact("not a url hunter2").contains("hunter2"));
        assert_eq!(glob_escape("kefu:{wx1}*?[a]\\"), "kefu:{wx1}\\*\\?\\[a\\]\\\\");
    }
}
