//! The Redis store (issue 9) against a real Redis server: several instances behaving as one.
//!
//! The server comes from `KEFU_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/`), else the one
//! on 127.0.0.1:6379 when it answers. Without one each test reports itself on the terminal as
//! `SKIPPED` and returns, except under CI (`CI` set), where it fails: a CI run that silently
//! skipped them would prove nothing. The restart tests start their own
//! `redis-server` child on a free loopback port (`KEFU_TEST_REDIS_SERVER` names the binary,
//! default `redis-server` on PATH), since they kill it.
//!
//! Every test works in its own random namespace, so tests run in parallel against one server
//! without meeting, and deletes its keys when it ends (even on failure).
//!
//! `test_redis_url`, `RedisChild` and `free_port` are public so end-to-end tests of two
//! `kefu serve` processes can reuse them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::{Duration, Instant};

use kefu::config::WindowConfig;
use kefu::delivery::{OwnPassive, Terms};
use kefu::model::{
    CachedToken, Clock, ManualClock, OpenId, OutMessage, OutboxAction, PassiveReply, PlannedAction,
    Secret, SharedClock, SystemClock, Trigger, WindowEffect,
};
use kefu::store::{
    ChargeOutcome, CommitOutcome, DenyReason, NewOutboxEntry, PushCommit, RedisStore, SqliteStore,
    Store, StoreError, dedupe_retention_secs,
};
use rand::{Rng, SeedableRng};
use redis::Commands as _;
use tempfile::TempDir;

// ---------------------------------------------------------------------------------------------
// Test support (reusable)

/// The Redis server for tests: `KEFU_TEST_REDIS_URL`, else `redis://127.0.0.1:6379/` when a
/// server answers PING there. Without either, the calling test is reported as skipped on the
/// terminal (past the harness's output capture, so it is never a silent pass) and this returns
/// None; under CI it panics instead, because a CI run that skipped them would prove nothing.
pub fn test_redis_url() -> Option<String> {
    static FOUND: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let found = FOUND.get_or_init(|| match std::env::var("KEFU_TEST_REDIS_URL") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => redis_answers("127.0.0.1:6379").then(|| "redis://127.0.0.1:6379/".to_string()),
    });
    if found.is_none() {
        if std::env::var_os("CI").is_some() {
            panic!(
                "no Redis for the tests but CI is set: the Redis tests must run under CI. Start \
                 redis-server and set KEFU_TEST_REDIS_URL=redis://127.0.0.1:PORT/ (.ci/run does \
                 both)"
            );
        }
        report_skipped("no Redis: set KEFU_TEST_REDIS_URL or start redis-server on 127.0.0.1:6379");
    }
    found.clone()
}

/// Whether a Redis server at `addr` answers PING within a second.
fn redis_answers(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(addr) = addr.parse() else { return false };
    let Ok(mut con) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = con.set_read_timeout(Some(Duration::from_secs(1)));
    let mut reply = [0u8; 5];
    con.write_all(b"PING\r\n").is_ok() && con.read_exact(&mut reply).is_ok() && &reply == b"+PONG"
}

/// Writes `test NAME ... SKIPPED (why)` straight to the process's stderr: libtest captures
/// only the print macros, so the line shows in every run, not only for failures.
pub fn report_skipped(why: &str) {
    use std::io::Write;
    let name = std::thread::current().name().unwrap_or("a test").to_string();
    let _ = writeln!(std::io::stderr().lock(), "test {name} ... SKIPPED ({why})");
}

/// The `redis-server` binary for tests that run their own, or None (after printing why)
/// outside CI. Panics under CI when it is missing.
pub fn redis_server_binary() -> Option<PathBuf> {
    let bin = std::env::var("KEFU_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let found = Command::new(&bin)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(PathBuf::from(bin));
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{bin} is not runnable but CI is set: install redis-server (apt-get install redis-server)"
        );
    }
    report_skipped(&format!("{bin} not found: install redis-server or set KEFU_TEST_REDIS_SERVER"));
    None
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local addr").port()
}

/// A `redis-server` child on a fixed loopback port, killed when dropped.
pub struct RedisChild {
    bin: PathBuf,
    port: u16,
    dir: TempDir,
    /// Append-only file with an fsync per write: acknowledged writes survive a kill.
    persistent: bool,
    child: Option<Child>,
}

impl RedisChild {
    /// Starts a server on a free port and waits until it answers.
    pub fn start(bin: &Path, persistent: bool) -> RedisChild {
        let mut r = RedisChild {
            bin: bin.to_path_buf(),
            port: free_port(),
            dir: TempDir::new().expect("tempdir"),
            persistent,
            child: None,
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// SIGKILL, as a crash: no shutdown save.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it (again) on the same port and data directory, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let (aof, fsync) = if self.persistent { ("yes", "always") } else { ("no", "everysec") };
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", aof, "--appendfsync", fsync])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let up = redis::Client::open(self.url())
                .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(200)))
                .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
            if up.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not start", self.port);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisChild {
    fn drop(&mut self) {
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture

/// Stores sharing one namespace (one "deployment"), each with its own outbox directory.
struct Fixture {
    url: String,
    ns: String,
    clock: Arc<ManualClock>,
    window: WindowConfig,
    dirs: Vec<TempDir>,
}

impl Fixture {
    fn new(url: &str) -> Fixture {
        let id: u64 = rand::thread_rng().r#gen();
        Fixture {
            url: url.to_string(),
            ns: format!("kefu-test:{{{id:016x}}}"),
            clock: Arc::new(ManualClock::new(SystemClock.now_ms())),
            window: WindowConfig::default(),
            dirs: Vec::new(),
        }
    }

    fn shared_clock(&self) -> SharedClock {
        self.clock.clone()
    }

    fn outbox(&mut self) -> Arc<SqliteStore> {
        let dir = TempDir::new().expect("tempdir");
        let s = SqliteStore::open(
            dir.path(),
            &self.window,
            300,
            kefu::config::SyncMode::Off,
            self.shared_clock(),
        )
        .expect("open the outbox store");
        self.dirs.push(dir);
        Arc::new(s)
    }

    /// A new instance: its own outbox, the shared namespace.
    async fn instance(&mut self) -> RedisStore {
        let outbox = self.outbox();
        self.instance_with(outbox).await
    }

    async fn instance_with(&mut self, outbox: Arc<SqliteStore>) -> RedisStore {
        RedisStore::open(
            &self.url,
            &self.ns,
            outbox,
            &self.window,
            dedupe_retention_secs(300),
            self.shared_clock(),
        )
        .await
        .expect("open the redis store")
    }

    fn now(&self) -> i64 {
        self.clock.now_secs()
    }

    fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn raw(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
            .expect("a raw redis connection")
    }

    fn pttl(&self, key: &str) -> i64 {
        redis::cmd("PTTL").arg(key).query(&mut self.raw()).expect("PTTL")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // Best effort (the server may be gone in the restart tests).
        let Ok(mut con) = redis::Client::open(self.url.as_str())
            .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
        else {
            return;
        };
        let pattern = format!("{}:*", self.ns);
        let keys: Vec<String> = con.scan_match(&pattern).map(|i| i.collect()).unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&keys).query(&mut con);
        }
    }
}

fn oid(s: &str) -> OpenId {
    OpenId::parse(s).expect("valid openid")
}

fn text(rule: &str, seq: u32, content: &str, due_at_ms: i64) -> NewOutboxEntry {
    NewOutboxEntry {
        rule: rule.into(),
        seq,
        action: PlannedAction {
            rule: rule.into(),
            action: OutboxAction::Send { message: OutMessage::Text { content: content.into() } },
            delay: Duration::ZERO,
            kf_account: None,
            source: Default::default(),
        },
        due_at_ms,
    }
}

fn push(
    key: &str,
    openid: &OpenId,
    effect: WindowEffect,
    at_ms: i64,
    answer: Option<&str>,
    out: usize,
) -> PushCommit {
    PushCommit {
        dedupe_key: key.into(),
        openid: openid.clone(),
        effect,
        received_at_ms: at_ms,
        passive: answer.map(|a| OwnPassive::text("r", a)),
        outbox: (0..out).map(|i| text("r", i as u32, &format!("m{i}"), at_ms)).collect(),
        terms: Terms::default(),
        log: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Show: the same push delivered to two instances → one set of sends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_same_push_on_two_instances_is_fresh_once() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let a = fx.instance().await;
    let b = fx.instance().await;
    let o = oid("oDedupe1");
    let p = push(
        "msg:4242",
        &o,
        WindowEffect::Open(Trigger::Message),
        fx.now_ms(),
        Some("<xml>hi</xml>"),
        2,
    );

    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let p = p.clone();
        tasks.push(tokio::spawn(async move { s.commit_push(p).await }));
    }
    let mut fresh = Vec::new();
    let mut duplicates = 0;
    for t in tasks {
        match t.await.expect("task").expect("commit") {
            CommitOutcome::Fresh { outbox_ids, .. } => fresh.push(outbox_ids),
            CommitOutcome::Duplicate { answer } => {
                assert_eq!(answer, Some(PassiveReply::text("<xml>hi</xml>")));
                duplicates += 1;
            }
        }
    }
    assert_eq!(fresh.len(), 1, "exactly one instance owns the push");
    assert_eq!(fresh[0].len(), 2);
    assert_eq!(duplicates, 15);
    let planned = a.pending_for(&o).await.unwrap().len() + b.pending_for(&o).await.unwrap().len();
    assert_eq!(planned, 2, "one set of planned messages across both outboxes");

    // The grant was opened once, and both instances see it.
    let view = b.window(&o, fx.now()).await.unwrap();
    assert!(view.open);
    assert_eq!(view.grants.len(), 1);
    assert_eq!((view.grants[0].trigger, view.grants[0].used), (Trigger::Message, 0));

    // A push without a stored answer is answered None on redelivery.
    let q = push("evt:oDedupe1:1:VIEW:x", &o, WindowEffect::None, fx.now_ms(), None, 0);
    assert!(matches!(a.commit_push(q.clone()).await.unwrap(), CommitOutcome::Fresh { .. }));
    assert_eq!(b.commit_push(q).await.unwrap(), CommitOutcome::Duplicate { answer: None });
}

// ---------------------------------------------------------------------------------------------
// Show: a follower's quota of 5 respected under concurrent sends from both instances

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_quota_of_five_holds_across_instances() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let a = fx.instance().await;
    let b = fx.instance().await;
    let o = oid("oQuota1");
    let opened = fx.now();
    a.commit_push(push("msg:1", &o, WindowEffect::Open(Trigger::Message), fx.now_ms(), None, 0))
        .await
        .unwrap();

    let now = fx.now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let o = o.clone();
        tasks.push(tokio::spawn(async move { s.charge(&o, now).await }));
    }
    let mut allowed = 0;
    for t in tasks {
        match t.await.expect("task").expect("charge") {
            ChargeOutcome::Allowed { trigger, opened_at } => {
                assert_eq!((trigger, opened_at), (Trigger::Message, opened));
                allowed += 1;
            }
            ChargeOutcome::Denied { reason } => assert_eq!(reason, DenyReason::Exhausted),
        }
    }
    assert_eq!(allowed, 5, "exactly the quota, never more");
    let view = a.window(&o, now).await.unwrap();
    assert_eq!(view.grants[0].used, 5);
    assert!(!view.open);

    // A refund on one instance is visible to the other.
    assert!(b.refund(&o, Trigger::Message, opened).await.unwrap());
    assert_eq!(
        a.charge(&o, now).await.unwrap(),
        ChargeOutcome::Allowed { trigger: Trigger::Message, opened_at: opened }
    );
    assert_eq!(
        b.charge(&o, now).await.unwrap(),
        ChargeOutcome::Denied { reason: DenyReason::Exhausted }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_pushes_and_charges_never_overspend() {
    // Pushes re-opening the grant race with charges: every allowed charge must be covered by
    // the grant it was charged to, whichever opening it landed on.
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let a = fx.instance().await;
    let b = fx.instance().await;
    let o = oid("oQuota2");
    let t0 = fx.now_ms();
    let mut tasks = Vec::new();
    for i in 0..40i64 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            if i % 10 == 0 {
                // Each push opens at its own second, so grants are told apart by opened_at.
                let p = push(
                    &format!("msg:{i}"),
                    &o,
                    WindowEffect::Open(Trigger::Message),
                    t0 + i * 100,
                    None,
                    0,
                );
                s.commit_push(p).await.map(|_| None)
            } else {
                s.charge(&o, t0 / 1000 + 10).await.map(Some)
            }
        }));
    }
    let mut per_grant = std::collections::HashMap::<i64, u32>::new();
    for t in tasks {
        if let Some(ChargeOutcome::Allowed { opened_at, .. }) = t.await.unwrap().unwrap() {
            *per_grant.entry(opened_at).or_default() += 1;
        }
    }
    for (opened_at, n) in per_grant {
        assert!(n <= 5, "{n} charges on the grant opened at {opened_at}");
    }
}

// ---------------------------------------------------------------------------------------------
// Show: one token — the refresh lock has one holder; invalidation compares

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_token_refresh_lock_has_one_holder() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let a = fx.instance().await.token_cache();
    let b = fx.instance().await.token_cache();
    let ttl = Duration::from_secs(30);

    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(
            async move { (i, c.try_lock_refresh(&format!("h{i}"), ttl).await) },
        ));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, got) = t.await.unwrap();
        if got.expect("lock call") {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "one holder: {winners:?}");
    let w = format!("h{}", winners[0]);
    let loser = if winners[0] == 0 { "h1" } else { "h0" };

    assert!(b.try_lock_refresh(&w, ttl).await.unwrap(), "the holder may extend its lock");
    a.unlock_refresh(loser).await.unwrap();
    assert!(!a.try_lock_refresh(loser, ttl).await.unwrap(), "a non-holder cannot unlock it");
    b.unlock_refresh(&w).await.unwrap();
    assert!(a.try_lock_refresh(loser, Duration::from_millis(300)).await.unwrap());
    assert!(!b.try_lock_refresh(&w, ttl).await.unwrap());
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(b.try_lock_refresh(&w, ttl).await.unwrap(), "an abandoned lock expires");
}

/// The refresh protocol the API client follows on a shared cache: read; on a miss take the
/// lock, read again (another holder may have just saved one), fetch only if still missing,
/// save, unlock; without the lock, wait and read again.
async fn token_via(
    cache: Arc<dyn kefu::model::TokenCache>,
    fetches: Arc<AtomicUsize>,
    me: String,
) -> String {
    loop {
        if let Some(t) = cache.load().await.expect("load") {
            return t.token.expose().to_string();
        }
        if cache.try_lock_refresh(&me, Duration::from_secs(10)).await.expect("lock") {
            let token = match cache.load().await.expect("load") {
                Some(t) => t.token.expose().to_string(),
                None => {
                    // The "fetch": slow enough that every other task meets the empty cache.
                    let n = fetches.fetch_add(1, AtomicOrdering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let now = SystemClock.now_secs();
                    let t = CachedToken {
                        token: Secret::new(format!("FETCHED-{n}")),
                        expires_at: now + 7200,
                        fetched_at: now,
                    };
                    cache.save(&t).await.expect("save");
                    t.token.expose().to_string()
                }
            };
            cache.unlock_refresh(&me).await.expect("unlock");
            return token;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hundred_concurrent_token_users_cause_one_fetch() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let a = fx.instance().await.token_cache();
    let b = fx.instance().await.token_cache();
    let fetches = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let c = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(token_via(c, fetches.clone(), format!("instance{}-task{i}", i % 2)))
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), "FETCHED-1");
    }
    assert_eq!(fetches.load(AtomicOrdering::SeqCst), 1, "one token fetch for every instance");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_token_is_shared_and_invalidation_compares() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let a_store = fx.instance().await;
    let a = a_store.token_cache();
    let b = fx.instance().await.token_cache();
    let now = fx.now();
    let t1 = CachedToken { token: Secret::new("TOKEN-1"), expires_at: now + 7200, fetched_at: now };
    let t2 =
        CachedToken { token: Secret::new("TOKEN-2"), expires_at: now + 7200, fetched_at: now + 1 };

    assert_eq!(b.load().await.unwrap(), None);
    a.save(&t1).await.unwrap();
    assert_eq!(b.load().await.unwrap(), Some(t1.clone()), "one token for every instance");
    let pttl = fx.pttl(&format!("{}:token", a_store.namespace()));
    assert!((7_190_000..=7_200_000).contains(&pttl), "token key expires with the token: {pttl}");

    b.invalidate("TOKEN-0").await.unwrap();
    assert_eq!(a.load().await.unwrap(), Some(t1.clone()), "another token's 40001 changes nothing");
    a.save(&t2).await.unwrap();
    b.invalidate("TOKEN-1").await.unwrap();
    assert_eq!(a.load().await.unwrap(), Some(t2.clone()), "a late 40001 keeps the newer token");
    b.invalidate("TOKEN-2").await.unwrap();
    assert_eq!(a.load().await.unwrap(), None);

    // An already expired token is not stored.
    let dead =
        CachedToken { token: Secret::new("TOKEN-3"), expires_at: now - 1, fetched_at: now - 7201 };
    a.save(&dead).await.unwrap();
    assert_eq!(b.load().await.unwrap(), None);
}

// ---------------------------------------------------------------------------------------------
// Keys expire, the namespace is scanned, unsubscribe reaches every instance

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_expire_with_the_last_grant() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let a = fx.instance().await;
    let o = oid("oTtl1");
    a.commit_push(push("msg:1", &o, WindowEffect::Open(Trigger::Message), fx.now_ms(), None, 0))
        .await
        .unwrap();
    a.commit_push(push("evt:m", &o, WindowEffect::Open(Trigger::Menu), fx.now_ms(), None, 0))
        .await
        .unwrap();
    let h48 = 48 * 3600 * 1000;
    let w = fx.pttl(&a.window_key(&o));
    assert!((h48 - 5_000..=h48).contains(&w), "window key lives until the 48 h grant ends: {w}");
    let d = fx.pttl(&a.dedupe_key("msg:1"));
    let retention = dedupe_retention_secs(300) as i64 * 1000;
    assert!((retention - 5_000..=retention).contains(&d), "dedupe record TTL {d}");

    // Only the follow state is left after an unsubscribe: kept a week to explain refusals.
    a.commit_push(push("evt:u", &o, WindowEffect::CloseAll, fx.now_ms(), None, 0)).await.unwrap();
    let w = fx.pttl(&a.window_key(&o));
    let week = 7 * 86_400 * 1000;
    assert!((week - 5_000..=week).contains(&w), "follow-state TTL {w}");

    // A follower who never had a grant and whose push opened nothing leaves no window key.
    let q = oid("oTtl2");
    a.commit_push(push("evt:v", &q, WindowEffect::None, fx.now_ms(), None, 0)).await.unwrap();
    assert_eq!(fx.pttl(&a.window_key(&q)), -2, "no key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_list_windows_scans_only_its_namespace() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let mut other = Fixture::new(&url);
    let a = fx.instance().await;
    let x = other.instance().await;
    let at = fx.now_ms();
    for (id, effect) in [
        ("oList3", WindowEffect::Open(Trigger::Message)),
        ("oList1", WindowEffect::Open(Trigger::Menu)),
        ("oList2", WindowEffect::Open(Trigger::Message)),
        ("oList4", WindowEffect::CloseAll),
    ] {
        a.commit_push(push(&format!("k{id}"), &oid(id), effect, at, None, 1)).await.unwrap();
    }
    x.commit_push(push("kx", &oid("oOther"), WindowEffect::Open(Trigger::Message), at, None, 0))
        .await
        .unwrap();

    let ids = |v: &[kefu::store::WindowView]| {
        v.iter().map(|w| w.openid.as_str().to_string()).collect::<Vec<_>>()
    };
    let now = fx.now();
    let all = a.list_windows(now).await.unwrap();
    assert_eq!(ids(&all), ["oList1", "oList2", "oList3"]);
    assert!(all.iter().all(|w| w.pending == 1 && w.open));
    // The menu grant lasts a minute.
    let later = a.list_windows(now + 61).await.unwrap();
    assert_eq!(ids(&later), ["oList2", "oList3"]);
    assert_eq!(ids(&x.list_windows(now).await.unwrap()), ["oOther"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unsubscribe_on_one_instance_stops_sends_on_the_other() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let a = fx.instance().await;
    let b = fx.instance().await;
    let o = oid("oUnsub1");
    let at = fx.now_ms();
    a.commit_push(push("msg:1", &o, WindowEffect::Open(Trigger::Message), at, None, 1))
        .await
        .unwrap();
    let CommitOutcome::Fresh { window_after, .. } =
        b.commit_push(push("evt:u", &o, WindowEffect::CloseAll, at, None, 0)).await.unwrap()
    else {
        panic!("the unsubscribe is a fresh push");
    };
    assert!(window_after.grants.is_empty());
    assert_eq!(window_after.subscribed, Some(false));
    // A's entry is still in A's outbox, but the shared ledger refuses its send.
    assert_eq!(a.pending_count(&o).await.unwrap(), 1);
    assert_eq!(
        a.charge(&o, fx.now()).await.unwrap(),
        ChargeOutcome::Denied { reason: DenyReason::Unsubscribed }
    );
    let v = a.window(&o, fx.now()).await.unwrap();
    assert_eq!((v.open, v.subscribed, v.grants.len()), (false, Some(false), 0));
    // A's cached copy (peek) is stale until A touches the follower again; charge fixed it.
    assert_eq!(a.peek_window(&o).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outbox_failure_releases_the_push_for_redelivery() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    let broken = fx.outbox();
    let a = fx.instance_with(broken.clone()).await;
    let b = fx.instance().await;
    broken.close();
    let o = oid("oCrash1");
    let p = push("msg:77", &o, WindowEffect::Open(Trigger::Message), fx.now_ms(), Some("ok"), 2);
    assert_eq!(a.commit_push(p.clone()).await, Err(StoreError::Closed));
    // WeChat's retry, on the other instance, is processed afresh: the messages get planned.
    let CommitOutcome::Fresh { outbox_ids, .. } = b.commit_push(p.clone()).await.unwrap() else {
        panic!("the retry must not be a duplicate");
    };
    assert_eq!(outbox_ids.len(), 2);
    assert_eq!(b.pending_count(&o).await.unwrap(), 2);
    assert_eq!(
        a.commit_push(p).await.unwrap(),
        CommitOutcome::Duplicate { answer: Some(PassiveReply::text("ok")) }
    );
}

// ---------------------------------------------------------------------------------------------
// The same policy: Redis and SQLite agree on a random operation sequence

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_ledger_matches_sqlite_ledger() {
    let Some(url) = test_redis_url() else { return };
    let mut fx = Fixture::new(&url);
    fx.window.menu.limit = Some(2);
    let r = fx.instance().await;
    // The same window rules on the embedded store, as the reference.
    let s = fx.outbox();
    let followers = [oid("oDiff1"), oid("oDiff2"), oid("oDiff3")];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6b656675);
    let mut last: Option<(usize, Trigger, i64)> = None;
    for step in 0..400 {
        let fi = rng.gen_range(0..followers.len());
        let o = &followers[fi];
        let now = fx.now();
        let what = match rng.gen_range(0..100) {
            0..=19 => {
                let effect = match rng.gen_range(0..7) {
                    0..=4 => WindowEffect::Open(Trigger::ALL[rng.gen_range(0..5)]),
                    5 => WindowEffect::CloseAll,
                    _ => WindowEffect::None,
                };
                let p = push(&format!("k{step}"), o, effect, fx.now_ms(), None, 0);
                let (x, y) =
                    (r.commit_push(p.clone()).await.unwrap(), s.commit_push(p).await.unwrap());
                let (
                    CommitOutcome::Fresh { window_after: wx, .. },
                    CommitOutcome::Fresh { window_after: wy, .. },
                ) = (x, y)
                else {
                    panic!("step {step}: both fresh");
                };
                assert_eq!(wx.view(o.clone(), now, 0), wy.view(o.clone(), now, 0), "step {step}");
                format!("{effect:?}")
            }
            20..=64 => {
                let (x, y) = (r.charge(o, now).await.unwrap(), s.charge(o, now).await.unwrap());
                assert_eq!(x, y, "step {step}: charge");
                if let ChargeOutcome::Allowed { trigger, opened_at } = x {
                    last = Some((fi, trigger, opened_at));
                }
                "charge".into()
            }
            65..=71 => {
                if let Some((li, t, at)) = last.take() {
                    let lo = &followers[li];
                    assert_eq!(
                        r.refund(lo, t, at).await.unwrap(),
                        s.refund(lo, t, at).await.unwrap(),
                        "step {step}: refund"
                    );
                }
                "refund".into()
            }
            72..=75 => {
                r.close_window(o).await.unwrap();
                s.close_window(o).await.unwrap();
                "close".into()
            }
            76..=79 => {
                r.exhaust_window(o, now).await.unwrap();
                s.exhaust_window(o, now).await.unwrap();
                "exhaust".into()
            }
            _ => {
                fx.clock.advance(Duration::from_secs(rng.gen_range(0..40_000)));
                "advance".into()
            }
        };
        let now = fx.now();
        for f in &followers {
            assert_eq!(
                r.window(f, now).await.unwrap(),
                s.window(f, now).await.unwrap(),
                "step {step} ({what}): {f}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Show: Redis restarted mid-run → not ready, then recovered by itself

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_not_ready_then_recovers_without_reopening() {
    let Some(bin) = redis_server_binary() else { return };
    let mut server = RedisChild::start(&bin, false);
    let mut fx = Fixture::new(&server.url());
    let a = fx.instance().await;
    let o = oid("oRestart1");
    a.commit_push(push("msg:1", &o, WindowEffect::Open(Trigger::Message), fx.now_ms(), None, 1))
        .await
        .unwrap();
    a.ping().await.expect("ready while redis is up");

    server.kill();
    let started = Instant::now();
    let err = a.ping().await.expect_err("not ready while redis is down");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "ping answers promptly: {:?}",
        started.elapsed()
    );
    assert!(
        matches!(err, StoreError::Backend(ref m) if m.contains("redis at redis://127.0.0.1:")),
        "{err}"
    );
    assert!(a.charge(&o, fx.now()).await.is_err());
    let p2 = push("msg:2", &o, WindowEffect::Open(Trigger::Message), fx.now_ms(), None, 1);
    assert!(a.commit_push(p2.clone()).await.is_err(), "a push is not acknowledged while down");
    assert!(a.token_cache().load().await.is_err());
    assert!(a.list_windows(fx.now()).await.is_err());
    assert!(a.ping().await.is_err(), "still not ready");
    // The outbox is local and still answers.
    assert_eq!(a.pending_count(&o).await.unwrap(), 1);

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store did not reconnect by itself");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // This server keeps nothing on disk, so the shared state is gone: the window is closed
    // (never over-sends) and the retried push is processed afresh.
    assert_eq!(
        a.charge(&o, fx.now()).await.unwrap(),
        ChargeOutcome::Denied { reason: DenyReason::Closed }
    );
    assert!(matches!(a.commit_push(p2).await.unwrap(), CommitOutcome::Fresh { .. }));
    assert!(a.charge(&o, fx.now()).await.unwrap().is_allowed());
    assert_eq!(a.pending_count(&o).await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_aof_keeps_every_acknowledged_push() {
    let Some(bin) = redis_server_binary() else { return };
    let mut server = RedisChild::start(&bin, true);
    let mut fx = Fixture::new(&server.url());
    let a = fx.instance().await;
    let b = fx.instance().await;
    let at = fx.now_ms();
    let pushes: Vec<PushCommit> = (0..20)
        .map(|i| {
            let o = oid(&format!("oAof{i}"));
            push(
                &format!("msg:{i}"),
                &o,
                WindowEffect::Open(Trigger::Message),
                at,
                Some(&format!("a{i}")),
                1,
            )
        })
        .collect();
    for (i, p) in pushes.iter().enumerate() {
        let s = if i % 2 == 0 { &a } else { &b };
        assert!(matches!(s.commit_push(p.clone()).await.unwrap(), CommitOutcome::Fresh { .. }));
    }
    server.kill();
    assert!(a.ping().await.is_err());
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while a.ping().await.is_err() || b.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the stores did not reconnect by themselves");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, p) in pushes.iter().enumerate() {
        let s = if i % 2 == 0 { &b } else { &a };
        assert_eq!(
            s.commit_push(p.clone()).await.unwrap(),
            CommitOutcome::Duplicate { answer: Some(PassiveReply::text(format!("a{i}"))) },
            "push {i} was acknowledged before the crash"
        );
        let v = s.window(&p.openid, fx.now()).await.unwrap();
        assert!(v.open && v.grants[0].used == 0, "grant of push {i} survived");
    }
}

/// Kept LLM turns on Redis: shared by instances, per backend and follower, trimmed to `keep`,
/// expiring with the history ttl, cleared for one follower only.
#[tokio::test]
async fn kept_turns_are_shared_trimmed_and_expire() {
    use kefu::llm::Turn;
    let Some(url) = test_redis_url() else { return };
    let mut f = Fixture::new(&url);
    let (a, b) = (f.instance().await, f.instance().await);
    let now = f.now_ms();
    let turn = |i: i64| Turn { at_ms: now + i, user: format!("q{i}"), assistant: format!("a{i}") };
    for i in 0..4 {
        a.add_turn("assistant", &oid("oRedisAmy"), turn(i), 3, now - 60_000).await.unwrap();
    }
    b.add_turn("other", &oid("oRedisAmy"), turn(9), 3, now - 60_000).await.unwrap();
    b.add_turn("assistant", &oid("oRedisBen"), turn(5), 3, now - 60_000).await.unwrap();
    let amy = b.turns(None, &oid("oRedisAmy")).await.unwrap();
    let seen: Vec<(&str, &str)> = amy.iter().map(|(b, t)| (b.as_str(), t.user.as_str())).collect();
    assert_eq!(
        seen,
        [("assistant", "q1"), ("assistant", "q2"), ("assistant", "q3"), ("other", "q9")]
    );
    let ttl = f.pttl(&format!("{}:t:assistant:oRedisAmy", f.ns));
    assert!((55_000..=60_003).contains(&ttl), "expires with the history ttl: {ttl}");
    assert_eq!(a.clear_turns(&oid("oRedisAmy")).await.unwrap(), 4);
    assert!(b.turns(None, &oid("oRedisAmy")).await.unwrap().is_empty());
    assert_eq!(a.turns(Some("assistant"), &oid("oRedisBen")).await.unwrap().len(), 1);
    a.delete_namespace().await.unwrap();
}
