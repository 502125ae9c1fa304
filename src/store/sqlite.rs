//! The embedded store: one SQLite database in WAL mode under `state.dir`.
//!
//! Why SQLite/WAL: the state is small, relational and must survive `kill -9`; SQLite gives
//! atomic multi-table transactions and a proven crash-recovery story with no server to run,
//! and WAL lets readers (the admin API, `kefu window show` in another process) read a
//! committed snapshot while the writer appends, and turns a commit into one sequential append
//! plus one fsync of the log.
//!
//! Group commit: every write goes to a single writer thread over a channel. The thread takes
//! the first job, then everything else already queued (up to [`MAX_BATCH`]), runs each job in
//! its own savepoint inside one `BEGIN IMMEDIATE` transaction, and commits once. A failing job
//! rolls back to its savepoint and fails alone; a failing COMMIT fails the whole batch.
//!
//! Durability (`state.sync`): with `full` (the default, `synchronous=FULL`) each COMMIT
//! fsyncs the WAL before anyone in the batch is answered, so a power cut loses nothing
//! acknowledged. With `normal` (`synchronous=NORMAL`) the batch is answered once its commit
//! is in the WAL file in the OS cache, which a crash or `kill -9` of kefu does not lose; a
//! thread fsyncs the WAL every second, so a power cut or kernel crash takes at most about the
//! last second. (An fsync thread overlapping the next batch was measured and dropped: at 32
//! concurrent pushes every caller waits on the fsync anyway, and the extra hop cost 7 %.)
//!
//! Reads run on a small pool of read connections via `spawn_blocking`; WAL snapshots mean they
//! never wait for the writer. The in-memory [`LedgerIndex`] is updated after each commit and
//! rebuilt on open; the ledger's truth is always the database, read inside the write
//! transaction, so a charge made by another process (`kefu send`) is never lost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, oneshot, watch};

use super::{
    CommitOutcome, NewOutboxEntry, OUTCOME_UNKNOWN, OutboxEntry, OutboxStatus, Outcome, PushCommit,
    SendClaim, Store, StoreError, StoreResult, UNSUBSCRIBED,
};
use crate::config::{SyncMode, WindowConfig};
use crate::ledger::{ChargeOutcome, Grant, LedgerIndex, Window, WindowView};
use crate::model::{CachedToken, OpenId, Secret, SharedClock, TokenCache, Trigger, WindowEffect};

/// The most jobs one transaction takes; bounds the latency a batch adds to its first caller.
pub const MAX_BATCH: usize = 512;
/// Finished outbox entries are kept this long for inspection, then purged.
pub const FINISHED_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// The database file inside `state.dir`.
pub const DB_FILE: &str = "kefu.sqlite3";
/// Locked by the serving process while its store is open, so a second `serve` on the same
/// `state.dir` is refused instead of settling the first one's in-flight sends as its own.
pub const LOCK_FILE: &str = "kefu.lock";
/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The purge task wakes at least this often even with nothing due.
const MAX_PURGE_SLEEP_MS: i64 = 3600 * 1000;
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS followers (
    openid      TEXT PRIMARY KEY,
    subscribed  INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS grants (
    openid      TEXT NOT NULL,
    trigger     TEXT NOT NULL,
    opened_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    quota       INTEGER,
    used        INTEGER NOT NULL,
    PRIMARY KEY (openid, trigger)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS grants_expiry ON grants (expires_at);
CREATE TABLE IF NOT EXISTS dedupe (
    key             TEXT PRIMARY KEY,
    received_at_ms  INTEGER NOT NULL,
    answer          TEXT
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dedupe_age ON dedupe (received_at_ms);
CREATE TABLE IF NOT EXISTS outbox (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    openid         TEXT NOT NULL,
    rule           TEXT NOT NULL,
    seq            INTEGER NOT NULL,
    action         TEXT NOT NULL,
    due_at_ms      INTEGER NOT NULL,
    status         TEXT NOT NULL,
    reason         TEXT,
    attempts       INTEGER NOT NULL DEFAULT 0,
    push_key       TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, due_at_ms);
CREATE INDEX IF NOT EXISTS outbox_follower ON outbox (openid, status);
CREATE INDEX IF NOT EXISTS outbox_push ON outbox (push_key);
CREATE TABLE IF NOT EXISTS token (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    token       TEXT NOT NULL,
    expires_at  INTEGER NOT NULL,
    fetched_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS locks (
    name      TEXT PRIMARY KEY,
    holder    TEXT NOT NULL,
    until_ms  INTEGER NOT NULL
) WITHOUT ROWID;
";

const OUTBOX_COLS: &str =
    "id, openid, rule, seq, action, due_at_ms, status, reason, attempts, push_key";

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Backend(format!("sqlite: {e}"))
    }
}

/// How to open the store.
#[derive(Clone, Debug)]
pub struct OpenOptions {
    pub window: WindowConfig,
    pub dedupe_retention_secs: u64,
    /// When a commit counts as durable (`state.sync`); `Off` is for benches only: a power cut
    /// can then lose acknowledged pushes.
    pub sync: SyncMode,
    /// The serving process: rebuilds the index, settles sends interrupted by a crash, runs
    /// the purge task. A CLI opens as a client so it never touches the server's in-flight
    /// sends.
    pub owner: bool,
}

/// Work done after the batch commits: index updates and the earliest new expiry.
#[derive(Default)]
struct Post {
    windows: Vec<(OpenId, Window)>,
    /// Earliest expiry (Unix ms) this job created, to wake the purge task early.
    expiry_ms: Option<i64>,
    prune_index_at: Option<i64>,
}

type Finish = Box<dyn FnOnce(&Inner, Result<(), &StoreError>) + Send>;
/// A write; given no connection (the transaction could not begin) it only prepares to
/// report the batch's error.
type Job = Box<dyn FnOnce(Option<&Connection>, &Inner) -> Finish + Send>;

struct Inner {
    dir: PathBuf,
    window: WindowConfig,
    retention_ms: i64,
    clock: SharedClock,
    index: LedgerIndex,
    /// Whether `index` holds the ledger (owner) or hot reads must go to the database.
    indexed: bool,
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    /// The owner's lock on [`LOCK_FILE`]; released by [`SqliteStore::close`] or on drop.
    lock: Mutex<Option<std::fs::File>>,
    readers: Mutex<Vec<Connection>>,
    db_path: PathBuf,
    purge_wake: Arc<Notify>,
    /// When the purge task plans to wake (Unix ms); a commit creating an earlier expiry
    /// notifies it.
    next_purge_ms: AtomicI64,
    /// Write transactions committed, and the jobs they carried (group-commit evidence).
    transactions: AtomicU64,
    jobs_committed: AtomicU64,
}

/// The embedded store; a cheap handle (clone it freely).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("db", &self.inner.db_path).finish()
    }
}

/// Opens a connection in WAL mode; the bool says whether the database really is in WAL mode
/// (a file system without shared memory support can refuse it).
fn open_connection(path: &Path, sync: SyncMode) -> rusqlite::Result<(Connection, bool)> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // journal_mode is persistent in the file, but asking is cheap and covers a fresh file.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    set_synchronous(&conn, sync)?;
    Ok((conn, mode.eq_ignore_ascii_case("wal")))
}

/// `full` and `normal` are SQLite's own levels of the same names (`normal` in WAL mode: commits
/// write the log without fsync, which happens at checkpoints).
fn set_synchronous(conn: &Connection, sync: SyncMode) -> rusqlite::Result<()> {
    conn.execute_batch(match sync {
        SyncMode::Full => "PRAGMA synchronous = FULL;",
        SyncMode::Normal => "PRAGMA synchronous = NORMAL;",
        SyncMode::Off => "PRAGMA synchronous = OFF;",
    })
}

/// Takes the owner's lock on `state.dir`, or says who holds it and what to do.
fn lock_state_dir(dir: &Path) -> StoreResult<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let failed = |e: std::io::Error| StoreError::Open {
        dir: dir.display().to_string(),
        why: format!("cannot lock {}: {e}", path.display()),
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(failed)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StoreError::Locked { lock: path.display().to_string() })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(failed(e)),
    }
}

fn restrict_permissions(path: &Path) {
    // The file holds the access token: readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

impl SqliteStore {
    /// Opens (creating if needed) the store under `dir` as the serving process.
    pub fn open(
        dir: &Path,
        window: &WindowConfig,
        dedupe_retention_secs: u64,
        sync: SyncMode,
        clock: SharedClock,
    ) -> StoreResult<SqliteStore> {
        let opts = OpenOptions { window: window.clone(), dedupe_retention_secs, sync, owner: true };
        Self::open_with(dir, opts, clock)
    }

    /// Opens the store for a CLI command while `serve` may be running on it.
    pub fn open_client(
        dir: &Path,
        window: &WindowConfig,
        clock: SharedClock,
    ) -> StoreResult<SqliteStore> {
        let opts = OpenOptions {
            window: window.clone(),
            dedupe_retention_secs: super::dedupe_retention_secs(0),
            sync: SyncMode::Full,
            owner: false,
        };
        Self::open_with(dir, opts, clock)
    }

    pub fn open_with(dir: &Path, opts: OpenOptions, clock: SharedClock) -> StoreResult<Self> {
        let open_err = |why: String| StoreError::Open { dir: dir.display().to_string(), why };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let lock = if opts.owner { Some(lock_state_dir(dir)?) } else { None };
        let db_path = dir.join(DB_FILE);
        // `normal` needs the log to be a WAL file (commits append to it, fsynced each second);
        // without one, every commit fsyncs itself.
        let (mut conn, wal) =
            open_connection(&db_path, opts.sync).map_err(|e| open_err(e.to_string()))?;
        let sync = if opts.sync == SyncMode::Normal && !wal { SyncMode::Full } else { opts.sync };
        if sync != opts.sync {
            set_synchronous(&conn, sync).map_err(|e| open_err(e.to_string()))?;
        }
        restrict_permissions(&db_path);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| open_err(e.to_string()))?;
        if version > SCHEMA_VERSION {
            return Err(open_err(format!(
                "{} has schema version {version}, newer than this kefu understands \
                 ({SCHEMA_VERSION}); run the newer kefu or point state.dir elsewhere",
                db_path.display()
            )));
        }
        {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(|e| open_err(e.to_string()))?;
            tx.execute_batch(SCHEMA).map_err(|e| open_err(e.to_string()))?;
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(|e| open_err(e.to_string()))?;
            if opts.owner {
                // A send claimed before the crash may or may not have reached WeChat; sending
                // it again could deliver it twice, so it ends here with the reason.
                let n = tx
                    .execute(
                        "UPDATE outbox SET status = 'failed', reason = ?1, updated_at_ms = ?2 \
                         WHERE status = 'in_flight'",
                        params![OUTCOME_UNKNOWN, clock.now_ms()],
                    )
                    .map_err(|e| open_err(e.to_string()))?;
                if n > 0 {
                    tracing::warn!(
                        entries = n,
                        "outbox entries were in flight when kefu stopped; marked failed, not \
                         re-sent"
                    );
                }
            }
            tx.commit().map_err(|e| open_err(e.to_string()))?;
        }

        let index = LedgerIndex::new();
        if opts.owner {
            rebuild_index(&conn, &index, clock.now_secs()).map_err(|e| open_err(e.to_string()))?;
        }

        let (tx, rx) = mpsc::channel::<Job>();
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            window: opts.window,
            retention_ms: i64::try_from(opts.dedupe_retention_secs)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            clock,
            index,
            indexed: opts.owner,
            jobs: Mutex::new(Some(tx)),
            lock: Mutex::new(lock),
            readers: Mutex::new(Vec::new()),
            db_path,
            purge_wake: Arc::new(Notify::new()),
            next_purge_ms: AtomicI64::new(i64::MAX),
            transactions: AtomicU64::new(0),
            jobs_committed: AtomicU64::new(0),
        });
        let wal_path = inner.db_path.with_file_name(format!("{DB_FILE}-wal"));
        let dirty = if sync == SyncMode::Normal {
            let dirty = Arc::new(AtomicBool::new(false));
            let (weak, flag) = (Arc::downgrade(&inner), dirty.clone());
            std::thread::Builder::new()
                .name("kefu-store-sync".into())
                .spawn(move || interval_sync_loop(wal_path, flag, weak))
                .map_err(|e| open_err(format!("cannot start the sync thread: {e}")))?;
            Some(dirty)
        } else {
            None
        };
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("kefu-store-writer".into())
            .spawn(move || writer_loop(conn, rx, weak, dirty))
            .map_err(|e| open_err(format!("cannot start the writer thread: {e}")))?;
        Ok(SqliteStore { inner })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The in-memory ledger index (empty for a client).
    pub fn index(&self) -> &LedgerIndex {
        &self.inner.index
    }

    /// (write transactions committed, jobs they carried) since open: with concurrent writers
    /// the second is a multiple of the first.
    pub fn commit_stats(&self) -> (u64, u64) {
        (
            self.inner.transactions.load(Ordering::Relaxed),
            self.inner.jobs_committed.load(Ordering::Relaxed),
        )
    }

    /// Stops taking writes; queued jobs still commit. Later writes fail with `Closed`.
    pub fn close(&self) {
        self.inner.jobs.lock().take();
        self.inner.lock.lock().take();
    }

    /// Runs `f` on the writer thread inside the current batch's transaction.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Inner, &mut Post) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, rx) = oneshot::channel::<StoreResult<T>>();
        let job: Job = Box::new(move |conn: Option<&Connection>, inner: &Inner| -> Finish {
            let mut post = Post::default();
            let result = match conn {
                Some(conn) => in_savepoint(conn, || f(conn, inner, &mut post)),
                None => Err(StoreError::Closed),
            };
            Box::new(move |inner: &Inner, commit: Result<(), &StoreError>| {
                let result = match commit {
                    Ok(()) => {
                        if result.is_ok() {
                            apply_post(inner, post);
                        }
                        result
                    }
                    Err(e) => Err(e.clone()),
                };
                let _ = reply.send(result);
            })
        });
        let sender = self.inner.jobs.lock().clone().ok_or(StoreError::Closed)?;
        sender.send(job).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a pooled read connection off the async threads.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match inner.readers.lock().pop() {
                Some(c) => c,
                None => open_connection(&inner.db_path, SyncMode::Full)?.0,
            };
            let r = f(&conn);
            let mut pool = inner.readers.lock();
            if pool.len() < 8 {
                pool.push(conn);
            }
            r
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }

    /// Purges expired grants, dedupe records past retention and finished outbox entries
    /// older than [`FINISHED_RETENTION_MS`]. Returns (grants, dedupe records, entries) removed.
    pub async fn purge(&self, now_ms: i64) -> StoreResult<(usize, usize, usize)> {
        self.write(move |conn, inner, post| {
            let now = now_ms.div_euclid(1000);
            let g = conn.execute("DELETE FROM grants WHERE expires_at <= ?1", [now])?;
            let d = conn.execute(
                "DELETE FROM dedupe WHERE received_at_ms <= ?1",
                [now_ms.saturating_sub(inner.retention_ms)],
            )?;
            let o = conn.execute(
                "DELETE FROM outbox WHERE status IN ('sent', 'failed', 'dropped') \
                 AND updated_at_ms <= ?1",
                [now_ms.saturating_sub(FINISHED_RETENTION_MS)],
            )?;
            post.prune_index_at = Some(now);
            Ok((g, d, o))
        })
        .await
    }

    /// Writes a push's planned entries without touching dedupe or ledger, for a store that
    /// keeps those elsewhere (Redis) and delegates the per-instance outbox here. Idempotent
    /// per `push_key`: if entries of that push exist, nothing is written and their ids are
    /// returned, so such a store can write the outbox first and its dedupe record second, and
    /// a crash between the two is healed by the redelivery. `cancel_pending` drops the
    /// follower's pending entries first (an unsubscribe).
    pub async fn append_outbox(
        &self,
        openid: &OpenId,
        push_key: &str,
        cancel_pending: bool,
        entries: Vec<NewOutboxEntry>,
    ) -> StoreResult<Vec<i64>> {
        Ok(self.append_outbox_counted(openid, push_key, cancel_pending, entries).await?.0)
    }

    /// [`Self::append_outbox`], also saying how many pending entries it cancelled.
    pub async fn append_outbox_counted(
        &self,
        openid: &OpenId,
        push_key: &str,
        cancel_pending: bool,
        entries: Vec<NewOutboxEntry>,
    ) -> StoreResult<(Vec<i64>, u64)> {
        let (openid, push_key) = (openid.clone(), push_key.to_string());
        self.write(move |conn, inner, _| {
            let existing: Vec<i64> = conn
                .prepare_cached("SELECT id FROM outbox WHERE push_key = ?1 ORDER BY id")?
                .query_map([&push_key], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            if !existing.is_empty() {
                return Ok((existing, 0));
            }
            let now_ms = inner.clock.now_ms();
            let cancelled =
                if cancel_pending { cancel_pending_tx(conn, &openid, now_ms)? as u64 } else { 0 };
            let ids = entries
                .iter()
                .map(|e| insert_outbox(conn, &openid, &push_key, e, now_ms))
                .collect::<StoreResult<Vec<i64>>>()?;
            Ok((ids, cancelled))
        })
        .await
    }

    /// The earliest time (Unix ms) at which something becomes purgeable.
    pub async fn next_expiry_ms(&self) -> StoreResult<Option<i64>> {
        let retention = self.inner.retention_ms;
        self.read(move |conn| {
            let g: Option<i64> =
                conn.query_row("SELECT MIN(expires_at) FROM grants", [], |r| r.get(0))?;
            let d: Option<i64> =
                conn.query_row("SELECT MIN(received_at_ms) FROM dedupe", [], |r| r.get(0))?;
            let g = g.map(|s| s.saturating_mul(1000));
            let d = d.map(|ms| ms.saturating_add(retention));
            Ok(g.into_iter().chain(d).min())
        })
        .await
    }

    /// Starts the purge task: it sleeps until the next grant or dedupe record expires (or a
    /// commit creates an earlier one), purges, and repeats, until `shutdown` turns true (or its
    /// sender is dropped) or the store is dropped. Purging is housekeeping only: every read
    /// already ignores expired grants, so waking a little late never changes an answer.
    pub fn spawn_purger(&self, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
        // Only a weak handle between passes: a sleeping purger must not keep the store (and
        // its writer thread) alive.
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let wake = self.inner.purge_wake.clone();
        tokio::spawn(async move {
            loop {
                if *shutdown.borrow() {
                    return;
                }
                let wait_ms = {
                    let Some(inner) = weak.upgrade() else { return };
                    let store = SqliteStore { inner };
                    let now = store.inner.clock.now_ms();
                    match store.purge(now).await {
                        Ok((g, d, o)) if g + d + o > 0 => {
                            tracing::debug!(
                                grants = g,
                                dedupe = d,
                                outbox = o,
                                "purged expired state"
                            )
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "state purge failed; will retry"),
                    }
                    let next = match store.next_expiry_ms().await {
                        Ok(Some(t)) => t.min(now + MAX_PURGE_SLEEP_MS),
                        Ok(None) => now + MAX_PURGE_SLEEP_MS,
                        Err(_) => now + 60_000,
                    };
                    store.inner.next_purge_ms.store(next, Ordering::SeqCst);
                    (next - store.inner.clock.now_ms()).clamp(0, MAX_PURGE_SLEEP_MS)
                };
                // Waking slightly after the expiry lets one pass take a cluster of them.
                let sleep = tokio::time::sleep(Duration::from_millis(wait_ms as u64 + 200));
                tokio::select! {
                    _ = sleep => {}
                    _ = wake.notified() => {}
                    r = shutdown.changed() => {
                        if r.is_err() || *shutdown.borrow() { return }
                    }
                }
            }
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets a sleeping purge task notice the store is gone.
        self.purge_wake.notify_one();
    }
}

fn apply_post(inner: &Inner, post: Post) {
    if inner.indexed {
        for (openid, w) in post.windows {
            inner.index.put(openid, w);
        }
        if let Some(now) = post.prune_index_at {
            inner.index.prune(now);
        }
    }
    if let Some(t) = post.expiry_ms
        && t < inner.next_purge_ms.load(Ordering::SeqCst)
    {
        inner.next_purge_ms.store(t, Ordering::SeqCst);
        inner.purge_wake.notify_one();
    }
}

/// Runs one job in a savepoint so its failure leaves the rest of the batch intact. The
/// statements are cached: at thousands of jobs a second, re-parsing them shows up.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce() -> StoreResult<T>) -> StoreResult<T> {
    conn.prepare_cached("SAVEPOINT job")?.execute([])?;
    match f() {
        Ok(v) => {
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            conn.prepare_cached("ROLLBACK TO job")?.execute([])?;
            conn.prepare_cached("RELEASE job")?.execute([])?;
            Err(e)
        }
    }
}

/// Group commit: one transaction per batch of queued jobs, each in its own savepoint.
/// `dirty` (with `state.sync = "normal"`) tells the sync thread there is something to fsync.
fn writer_loop(
    conn: Connection,
    rx: mpsc::Receiver<Job>,
    store: Weak<Inner>,
    dirty: Option<Arc<AtomicBool>>,
) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let Some(inner) = store.upgrade() else { return };
        let (finishes, commit): (Vec<Finish>, StoreResult<()>) =
            match conn.execute_batch("BEGIN IMMEDIATE") {
                Ok(()) => {
                    let finishes = batch.into_iter().map(|job| job(Some(&conn), &inner)).collect();
                    let commit = conn.execute_batch("COMMIT").map_err(StoreError::from);
                    if commit.is_err() {
                        let _ = conn.execute_batch("ROLLBACK");
                    }
                    (finishes, commit)
                }
                Err(e) => {
                    tracing::error!(error = %e, "state store: cannot begin a write transaction");
                    let finishes = batch.into_iter().map(|job| job(None, &inner)).collect();
                    (finishes, Err(e.into()))
                }
            };
        if commit.is_ok() {
            inner.transactions.fetch_add(1, Ordering::Relaxed);
            inner.jobs_committed.fetch_add(finishes.len() as u64, Ordering::Relaxed);
        }
        if let Err(e) = &commit {
            tracing::error!(error = %e, jobs = finishes.len(), "state store: a write batch failed");
        }
        if let Some(d) = &dirty {
            d.store(true, Ordering::Release);
        }
        for finish in finishes {
            finish(&inner, commit.as_ref().map(|_| ()));
        }
    }
}

/// fsyncs the WAL file. Opened for each sync: SQLite may delete and recreate it when the
/// last connection of another process closes, and a stale handle would sync the wrong file.
fn sync_wal(wal: &Path) -> std::io::Result<()> {
    match std::fs::File::open(wal) {
        Ok(f) => f.sync_data(),
        // No WAL file: everything was checkpointed into the database file, which SQLite
        // fsyncs at each checkpoint.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `state.sync = "normal"`: bounds what a power cut can take to about the last second.
fn interval_sync_loop(wal: PathBuf, dirty: Arc<AtomicBool>, store: Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if store.strong_count() == 0 {
            return;
        }
        if dirty.swap(false, Ordering::AcqRel)
            && let Err(e) = sync_wal(&wal)
        {
            tracing::warn!(error = %e, wal = %wal.display(), "state store: periodic fsync of the write-ahead log failed");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Row mapping

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

fn load_window(conn: &Connection, openid: &OpenId) -> StoreResult<Window> {
    let subscribed: Option<Option<bool>> = conn
        .prepare_cached("SELECT subscribed FROM followers WHERE openid = ?1")?
        .query_row([openid.as_str()], |r| r.get(0))
        .optional()?;
    let mut stmt = conn.prepare_cached(
        "SELECT trigger, opened_at, expires_at, quota, used FROM grants WHERE openid = ?1",
    )?;
    let rows = stmt.query_map([openid.as_str()], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, Option<u32>>(3)?,
            r.get::<_, u32>(4)?,
        ))
    })?;
    let mut grants = Vec::new();
    for row in rows {
        let (t, opened_at, expires_at, limit, used) = row?;
        let trigger = Trigger::parse(&t).ok_or_else(|| corrupt(format!("grant trigger {t:?}")))?;
        grants.push(Grant { trigger, opened_at, expires_at, limit, used });
    }
    grants.sort_by_key(|g| g.trigger);
    Ok(Window { grants, subscribed: subscribed.flatten() })
}

/// Writes what changed between `before` and `after` (usually one grant row).
fn save_window(
    conn: &Connection,
    openid: &OpenId,
    before: &Window,
    after: &Window,
) -> StoreResult<()> {
    for g in &before.grants {
        if !after.grants.iter().any(|a| a.trigger == g.trigger) {
            conn.prepare_cached("DELETE FROM grants WHERE openid = ?1 AND trigger = ?2")?
                .execute([openid.as_str(), g.trigger.as_str()])?;
        }
    }
    for g in &after.grants {
        if before.grants.contains(g) {
            continue;
        }
        conn.prepare_cached(
            "INSERT INTO grants (openid, trigger, opened_at, expires_at, quota, used) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (openid, trigger) DO UPDATE SET \
             opened_at = excluded.opened_at, expires_at = excluded.expires_at, \
             quota = excluded.quota, used = excluded.used",
        )?
        .execute(params![
            openid.as_str(),
            g.trigger.as_str(),
            g.opened_at,
            g.expires_at,
            g.limit,
            g.used
        ])?;
    }
    if after.subscribed != before.subscribed
        && let Some(s) = after.subscribed
    {
        conn.prepare_cached(
            "INSERT INTO followers (openid, subscribed) VALUES (?1, ?2) \
                 ON CONFLICT (openid) DO UPDATE SET subscribed = excluded.subscribed",
        )?
        .execute(params![openid.as_str(), s])?;
    }
    Ok(())
}

/// Loads, changes and saves one follower's window; records it for the index.
fn update_window<T>(
    conn: &Connection,
    post: &mut Post,
    openid: &OpenId,
    f: impl FnOnce(&mut Window) -> T,
) -> StoreResult<(T, Window)> {
    let before = load_window(conn, openid)?;
    let mut w = before.clone();
    let out = f(&mut w);
    if w != before {
        save_window(conn, openid, &before, &w)?;
        post.windows.push((openid.clone(), w.clone()));
    }
    Ok((out, w))
}

/// Every follower with a live grant, in OpenID order, with their live grants and follow state:
/// one scan instead of a query per follower. Returns how many unreadable rows it skipped.
fn for_each_live_window(
    conn: &Connection,
    now: i64,
    mut each: impl FnMut(OpenId, Window),
) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(
        "SELECT g.openid, g.trigger, g.opened_at, g.expires_at, g.quota, g.used, f.subscribed \
         FROM grants g LEFT JOIN followers f ON f.openid = g.openid \
         WHERE g.expires_at > ?1 ORDER BY g.openid",
    )?;
    let mut rows = stmt.query([now])?;
    let mut current: Option<(OpenId, Window)> = None;
    let mut skipped = 0usize;
    let mut emit = |(id, mut w): (OpenId, Window)| {
        w.grants.sort_by_key(|g| g.trigger);
        each(id, w);
    };
    while let Some(r) = rows.next()? {
        let openid: String = r.get(0)?;
        let t: String = r.get(1)?;
        let (Ok(openid), Some(trigger)) = (OpenId::parse(&openid), Trigger::parse(&t)) else {
            skipped += 1;
            continue;
        };
        let grant = Grant {
            trigger,
            opened_at: r.get(2)?,
            expires_at: r.get(3)?,
            limit: r.get(4)?,
            used: r.get(5)?,
        };
        let subscribed: Option<bool> = r.get(6)?;
        match &mut current {
            Some((id, w)) if *id == openid => w.grants.push(grant),
            _ => {
                if let Some(done) = current.take() {
                    emit(done);
                }
                current = Some((openid, Window { grants: vec![grant], subscribed }));
            }
        }
    }
    if let Some(done) = current.take() {
        emit(done);
    }
    Ok(skipped)
}

fn rebuild_index(conn: &Connection, index: &LedgerIndex, now: i64) -> rusqlite::Result<()> {
    let skipped = for_each_live_window(conn, now, |id, w| index.put(id, w))?;
    if skipped > 0 {
        tracing::warn!(rows = skipped, "ignored unreadable grant rows while rebuilding the index");
    }
    Ok(())
}

fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OutboxEntry, StoreError>> {
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

fn query_outbox(
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

fn count_pending(conn: &Connection, openid: &OpenId) -> StoreResult<u64> {
    let n: i64 = conn
        .prepare_cached(
            "SELECT COUNT(*) FROM outbox WHERE openid = ?1 AND status IN ('pending', 'in_flight')",
        )?
        .query_row([openid.as_str()], |r| r.get(0))?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn insert_outbox(
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

fn cancel_pending_tx(conn: &Connection, openid: &OpenId, now_ms: i64) -> StoreResult<usize> {
    Ok(conn
        .prepare_cached(
            "UPDATE outbox SET status = 'dropped', reason = ?1, updated_at_ms = ?2 \
             WHERE openid = ?3 AND status = 'pending'",
        )?
        .execute(params![UNSUBSCRIBED, now_ms, openid.as_str()])?)
}

/// pending → in_flight; false if the entry was not pending.
fn claim_tx(conn: &Connection, id: i64, now_ms: i64) -> StoreResult<bool> {
    let n = conn
        .prepare_cached(
            "UPDATE outbox SET status = 'in_flight', attempts = attempts + 1, \
             updated_at_ms = ?2 WHERE id = ?1 AND status = 'pending'",
        )?
        .execute(params![id, now_ms])?;
    Ok(n == 1)
}

fn finish_tx(conn: &Connection, id: i64, outcome: Outcome, now_ms: i64) -> StoreResult<()> {
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

fn commit_push_tx(
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

// ---------------------------------------------------------------------------------------------
// The trait

#[async_trait]
impl Store for SqliteStore {
    async fn commit_push(&self, push: PushCommit) -> StoreResult<CommitOutcome> {
        self.write(move |conn, inner, post| commit_push_tx(conn, inner, post, push)).await
    }

    async fn charge(&self, openid: &OpenId, now: i64) -> StoreResult<ChargeOutcome> {
        let openid = openid.clone();
        self.write(move |conn, _, post| {
            let (out, _) = update_window(conn, post, &openid, |w| w.charge(now))?;
            Ok(out)
        })
        .await
    }

    async fn refund(&self, openid: &OpenId, trigger: Trigger, opened_at: i64) -> StoreResult<bool> {
        let openid = openid.clone();
        self.write(move |conn, _, post| {
            let (done, _) = update_window(conn, post, &openid, |w| w.refund(trigger, opened_at))?;
            Ok(done)
        })
        .await
    }

    async fn close_window(&self, openid: &OpenId) -> StoreResult<()> {
        let openid = openid.clone();
        self.write(move |conn, _, post| {
            update_window(conn, post, &openid, Window::close)?;
            Ok(())
        })
        .await
    }

    async fn exhaust_window(&self, openid: &OpenId, now: i64) -> StoreResult<()> {
        let openid = openid.clone();
        self.write(move |conn, _, post| {
            update_window(conn, post, &openid, |w| w.exhaust(now))?;
            Ok(())
        })
        .await
    }

    async fn window(&self, openid: &OpenId, now: i64) -> StoreResult<WindowView> {
        let openid = openid.clone();
        self.read(move |conn| {
            let w = load_window(conn, &openid)?;
            let pending = count_pending(conn, &openid)?;
            Ok(w.view(openid, now, pending))
        })
        .await
    }

    async fn stats(&self, now: i64) -> StoreResult<super::StoreStats> {
        self.read(move |conn| {
            // Open as the ledger says `open` (and the trait's default counts): a live grant
            // with quota left. A used-up grant is live but allows nothing.
            let open: i64 = conn.query_row(
                "SELECT COUNT(DISTINCT openid) FROM grants \
                 WHERE expires_at > ?1 AND (quota IS NULL OR used < quota)",
                [now],
                |r| r.get(0),
            )?;
            let pending: i64 = conn.query_row(
                "SELECT COUNT(*) FROM outbox WHERE status IN ('pending', 'in_flight')",
                [],
                |r| r.get(0),
            )?;
            Ok(super::StoreStats {
                open_windows: u64::try_from(open).unwrap_or(0),
                outbox_pending: u64::try_from(pending).unwrap_or(0),
            })
        })
        .await
    }

    async fn list_windows(&self, now: i64) -> StoreResult<Vec<WindowView>> {
        self.read(move |conn| {
            let mut pending = std::collections::HashMap::<String, u64>::new();
            {
                let mut stmt = conn.prepare_cached(
                    "SELECT openid, COUNT(*) FROM outbox WHERE status IN ('pending', 'in_flight') \
                     GROUP BY openid",
                )?;
                let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?)))?;
                for row in rows {
                    let (k, n): (String, i64) = row?;
                    pending.insert(k, u64::try_from(n).unwrap_or(0));
                }
            }
            let mut out = Vec::new();
            let skipped = for_each_live_window(conn, now, |openid, w| {
                let n = pending.get(openid.as_str()).copied().unwrap_or(0);
                out.push(w.view(openid, now, n));
            })?;
            if skipped > 0 {
                tracing::warn!(rows = skipped, "window list: skipped unreadable grant rows");
            }
            Ok(out)
        })
        .await
    }

    async fn peek_window(&self, openid: &OpenId) -> StoreResult<Option<Window>> {
        if self.inner.indexed {
            return Ok(self.inner.index.get(openid));
        }
        let openid = openid.clone();
        self.read(move |conn| {
            let w = load_window(conn, &openid)?;
            Ok(Some(w).filter(|w| !w.grants.is_empty()))
        })
        .await
    }

    async fn due(&self, now_ms: i64, limit: usize) -> StoreResult<Vec<OutboxEntry>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read(move |conn| {
            query_outbox(
                conn,
                "status = 'pending' AND due_at_ms <= ?1 ORDER BY due_at_ms, id LIMIT ?2",
                params![now_ms, limit],
            )
        })
        .await
    }

    async fn next_due_at(&self) -> StoreResult<Option<i64>> {
        self.read(|conn| {
            Ok(conn.query_row(
                "SELECT MIN(due_at_ms) FROM outbox WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn claim(&self, id: i64) -> StoreResult<bool> {
        self.write(move |conn, inner, _| claim_tx(conn, id, inner.clock.now_ms())).await
    }

    async fn claim_send(&self, id: i64, openid: &OpenId, now: i64) -> StoreResult<SendClaim> {
        let openid = openid.clone();
        self.write(move |conn, inner, post| {
            let now_ms = inner.clock.now_ms();
            if !claim_tx(conn, id, now_ms)? {
                return Ok(SendClaim::Taken);
            }
            let (charged, _) = update_window(conn, post, &openid, |w| w.charge(now))?;
            Ok(match charged {
                ChargeOutcome::Allowed { trigger, opened_at } => {
                    SendClaim::Charged { trigger, opened_at }
                }
                ChargeOutcome::Denied { reason } => {
                    let dropped = Outcome::Dropped { reason: reason.to_string() };
                    finish_tx(conn, id, dropped, now_ms)?;
                    SendClaim::Denied(reason)
                }
            })
        })
        .await
    }

    async fn finish(&self, id: i64, outcome: Outcome) -> StoreResult<()> {
        self.write(move |conn, inner, _| finish_tx(conn, id, outcome, inner.clock.now_ms())).await
    }

    async fn pending_count(&self, openid: &OpenId) -> StoreResult<u64> {
        let openid = openid.clone();
        self.read(move |conn| count_pending(conn, &openid)).await
    }

    async fn pending_for(&self, openid: &OpenId) -> StoreResult<Vec<OutboxEntry>> {
        let openid = openid.clone();
        self.read(move |conn| {
            query_outbox(
                conn,
                "openid = ?1 AND status IN ('pending', 'in_flight') ORDER BY due_at_ms, id",
                [openid.as_str()],
            )
        })
        .await
    }

    async fn outbox_entry(&self, id: i64) -> StoreResult<Option<OutboxEntry>> {
        self.read(move |conn| Ok(query_outbox(conn, "id = ?1", [id])?.pop())).await
    }

    fn token_cache(&self) -> Arc<dyn TokenCache> {
        Arc::new(self.clone())
    }

    async fn ping(&self) -> StoreResult<()> {
        if self.inner.jobs.lock().is_none() {
            return Err(StoreError::Closed);
        }
        // An open connection keeps answering after its file was deleted (the inode lives on),
        // and writes into it would be lost at the next start: the file itself must be there.
        if !self.inner.db_path.is_file() {
            return Err(StoreError::Backend(format!(
                "the database file {} is gone; restore it or restart kefu to create a new one",
                self.inner.db_path.display()
            )));
        }
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(|_| ())?))
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// Access-token cache (interface §6.10): one row, shared by serve and every CLI process.

const TOKEN_LOCK: &str = "access_token_refresh";

#[async_trait]
impl TokenCache for SqliteStore {
    async fn load(&self) -> anyhow::Result<Option<CachedToken>> {
        let t = self
            .read(|conn| {
                Ok(conn
                    .query_row(
                        "SELECT token, expires_at, fetched_at FROM token WHERE id = 1",
                        [],
                        |r| {
                            Ok(CachedToken {
                                token: Secret::new(r.get::<_, String>(0)?),
                                expires_at: r.get(1)?,
                                fetched_at: r.get(2)?,
                            })
                        },
                    )
                    .optional()?)
            })
            .await?;
        Ok(t)
    }

    async fn save(&self, token: &CachedToken) -> anyhow::Result<()> {
        let t = token.clone();
        self.write(move |conn, _, _| {
            conn.execute(
                "INSERT INTO token (id, token, expires_at, fetched_at) VALUES (1, ?1, ?2, ?3) \
                 ON CONFLICT (id) DO UPDATE SET token = excluded.token, \
                 expires_at = excluded.expires_at, fetched_at = excluded.fetched_at",
                params![t.token.expose(), t.expires_at, t.fetched_at],
            )?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn invalidate(&self, token: &str) -> anyhow::Result<()> {
        let token = token.to_string();
        self.write(move |conn, _, _| {
            conn.execute("DELETE FROM token WHERE id = 1 AND token = ?1", [token])?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn try_lock_refresh(&self, holder: &str, ttl: Duration) -> anyhow::Result<bool> {
        let holder = holder.to_string();
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let got = self
            .write(move |conn, inner, _| {
                let now = inner.clock.now_ms();
                let n = conn.execute(
                    "INSERT INTO locks (name, holder, until_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                     until_ms = excluded.until_ms \
                     WHERE locks.until_ms <= ?4 OR locks.holder = excluded.holder",
                    params![TOKEN_LOCK, holder, now.saturating_add(ttl_ms), now],
                )?;
                Ok(n == 1)
            })
            .await?;
        Ok(got)
    }

    async fn unlock_refresh(&self, holder: &str) -> anyhow::Result<()> {
        let holder = holder.to_string();
        self.write(move |conn, _, _| {
            conn.execute(
                "DELETE FROM locks WHERE name = ?1 AND holder = ?2",
                [TOKEN_LOCK, &holder],
            )?;
            Ok(())
        })
        .await?;
        Ok(())
    }
}
