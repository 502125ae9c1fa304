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
//!
//! Layout: this module is the store itself (open, the [`Store`] trait, purging); `engine`
//! the group-commit writer, fsync and the `state.dir` lock; one module per table's SQL:
//! `schema` (the tables), `grants` (followers and grants: the ledger), `outbox`, `dedupe`
//! (dedupe records and the push commit that writes them with the rest), and `token` (the
//! access token and the refresh lock).

mod convlog;
pub use self::convlog::outcome_parts;
mod dedupe;
mod engine;
mod forwards;
mod grants;
pub mod journal;
mod media;
mod ops;
mod outbox;
mod schema;
mod token;
mod turns;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{Connection, params};
use tokio::sync::{Notify, oneshot, watch};

use super::{
    CommitOutcome, Delivered, EXPIRED, HeldAnswer, NewOutboxEntry, OUTCOME_UNKNOWN, OutboxEntry,
    OutboxStatus, Outcome, PushCommit, SendClaim, Store, StoreError, StoreResult, UNSUBSCRIBED,
    decode_answer, encode_answer, refused,
};
use crate::config::{SyncMode, WindowConfig};
use crate::ledger::{ChargeOutcome, LedgerIndex, Window, WindowView};
use crate::model::{OpenId, SharedClock, TokenCache, Trigger};

use self::engine::{
    Durability, Finish, Job, Post, Writer, apply_post, in_savepoint, interval_sync_loop,
    lock_state_dir, open_connection, open_knock, restrict_permissions, set_synchronous,
    writer_loop,
};
use self::grants::{for_each_live_window, load_window, rebuild_index, update_window};
use self::journal::Journal;
use self::ops::{Done, Op};
use self::outbox::{
    cancel_pending_tx, count_held, count_pending, expire_held_tx, insert_outbox, mailbox_tx,
    query_outbox,
};
use self::schema::{SCHEMA, SCHEMA_VERSION};

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
    /// The serving process: keeps the journal, rebuilds the index, settles sends interrupted
    /// by a crash, runs the purge task. A CLI opens as a client so it never touches the
    /// server's in-flight sends.
    pub owner: bool,
    /// Cut a damaged journal at the damage instead of refusing to open
    /// (`kefu serve --truncate-journal`; see [`journal`]).
    pub truncate_journal: bool,
}

struct Inner {
    dir: PathBuf,
    window: WindowConfig,
    retention_ms: i64,
    clock: SharedClock,
    index: LedgerIndex,
    /// Whether `index` holds the ledger (owner) or hot reads must go to the database.
    indexed: bool,
    /// The owner's record of which followers may have held answers (everyone who ever had
    /// one since the store opened, rebuilt from the table at open): a push of anyone else
    /// skips the mailbox query. Only ever added to inside a write, so a rolled-back write
    /// leaves a harmless extra entry, never a missing one. None for a client process.
    held_followers: Option<dashmap::DashSet<String>>,
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
    /// Per-follower forward counts of `rate_hit` (one instance: memory is enough).
    rates: dashmap::DashMap<String, std::collections::VecDeque<i64>>,
    /// `log.retention` in ms (0: no conversation log) and whether this store keeps the log
    /// (not when it lives in Redis); set by [`SqliteStore::configure_log`].
    log_retention_ms: AtomicI64,
    log_local: AtomicBool,
    /// Records are published here after their commit.
    log_bus: crate::convlog::LogBus,
    /// The writer's transaction holds acknowledged writes that readers on other connections
    /// do not see yet ([`SqliteStore::read`] asks for a commit first).
    uncommitted: AtomicBool,
    /// The journal segment being appended to (the `normal` sync thread fsyncs it).
    journal_segment: Mutex<Option<PathBuf>>,
    /// Journal records run again when the store opened (the writes SQLite lost to a crash).
    replayed: AtomicU64,
    /// Set by [`SqliteStore::abandon`]: the writer stops without committing.
    abandoned: AtomicBool,
    /// Why the last journal append failed (None once one succeeds): `/readyz` reports it.
    journal_error: Mutex<Option<String>>,
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

impl SqliteStore {
    /// Opens (creating if needed) the store under `dir` as the serving process.
    pub fn open(
        dir: &Path,
        window: &WindowConfig,
        dedupe_retention_secs: u64,
        sync: SyncMode,
        clock: SharedClock,
    ) -> StoreResult<SqliteStore> {
        let opts = OpenOptions {
            window: window.clone(),
            dedupe_retention_secs,
            sync,
            owner: true,
            truncate_journal: false,
        };
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
            truncate_journal: false,
        };
        Self::open_with(dir, opts, clock)
    }

    pub fn open_with(dir: &Path, opts: OpenOptions, clock: SharedClock) -> StoreResult<Self> {
        let open_err = |why: String| StoreError::Open { dir: dir.display().to_string(), why };
        std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
        let lock = if opts.owner { Some(lock_state_dir(dir)?) } else { None };
        // Until the journal has run, a command writing beside this server (which knocks first)
        // waits: its write must come after the replay, or the replay would undo it.
        let knock = open_knock(dir).ok();
        if let Some(k) = knock.as_ref().filter(|_| opts.owner) {
            let _ = k.lock();
        }
        let db_path = dir.join(DB_FILE);
        // `normal` needs the log to be a WAL file (commits append to it, fsynced each second);
        // without one, every commit fsyncs itself.
        let (mut conn, wal) =
            open_connection(&db_path, opts.sync).map_err(|e| open_err(e.to_string()))?;
        let sync = if opts.sync == SyncMode::Normal && !wal { SyncMode::Full } else { opts.sync };
        // The server's commits are made durable by the journal, or by an explicit fsync of
        // the WAL when they must be (engine): SQLite itself never waits on the disk.
        let conn_sync = match (opts.owner && wal, sync) {
            (_, SyncMode::Off) => SyncMode::Off,
            (true, _) => SyncMode::Normal,
            (false, s) => s,
        };
        if conn_sync != opts.sync {
            set_synchronous(&conn, conn_sync).map_err(|e| open_err(e.to_string()))?;
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
            tx.execute_batch(media::SCHEMA).map_err(|e| open_err(e.to_string()))?;
            tx.execute_batch(turns::SCHEMA).map_err(|e| open_err(e.to_string()))?;
            tx.execute_batch(forwards::SCHEMA).map_err(|e| open_err(e.to_string()))?;
            tx.execute_batch(convlog::SCHEMA).map_err(|e| open_err(e.to_string()))?;
            tx.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION}"))
                .map_err(|e| open_err(e.to_string()))?;
            tx.commit().map_err(|e| open_err(e.to_string()))?;
        }

        let (tx, rx) = mpsc::channel::<Job>();
        let inner = Arc::new(Inner {
            dir: dir.to_path_buf(),
            window: opts.window,
            retention_ms: i64::try_from(opts.dedupe_retention_secs)
                .unwrap_or(i64::MAX / 1000)
                .saturating_mul(1000),
            clock,
            index: LedgerIndex::new(),
            indexed: opts.owner,
            held_followers: opts.owner.then(dashmap::DashSet::new),
            jobs: Mutex::new(Some(tx)),
            lock: Mutex::new(lock),
            readers: Mutex::new(Vec::new()),
            db_path,
            purge_wake: Arc::new(Notify::new()),
            next_purge_ms: AtomicI64::new(i64::MAX),
            transactions: AtomicU64::new(0),
            jobs_committed: AtomicU64::new(0),
            rates: dashmap::DashMap::new(),
            log_retention_ms: AtomicI64::new(0),
            log_local: AtomicBool::new(true),
            log_bus: crate::convlog::LogBus::default(),
            uncommitted: AtomicBool::new(false),
            journal_segment: Mutex::new(None),
            replayed: AtomicU64::new(0),
            abandoned: AtomicBool::new(false),
            journal_error: Mutex::new(None),
        });

        let journal = if opts.owner {
            // Who may have held answers, known before the replay: a replayed push must read
            // its follower's mailbox whenever the live one did (a superset is harmless: the
            // mailbox is read from the same rows).
            if let Some(set) = &inner.held_followers {
                let mut stmt = conn
                    .prepare("SELECT DISTINCT openid FROM outbox WHERE status = 'held'")
                    .map_err(|e| open_err(e.to_string()))?;
                let rows = stmt
                    .query_map([], |r| r.get::<_, String>(0))
                    .map_err(|e| open_err(e.to_string()))?;
                for r in rows {
                    set.insert(r.map_err(|e| open_err(e.to_string()))?);
                }
            }
            // Every acknowledged write SQLite lost to the crash runs again, before anything
            // else reads the state.
            let (mut journal, replayed) = recover(&conn, &inner, opts.truncate_journal)?;
            if replayed > 0 {
                // Durable in SQLite now (`recover` fsynced the WAL): the old segments can go.
                journal.rotate()?;
                tracing::info!(
                    records = replayed,
                    "state store: replayed the journal after a crash"
                );
            }
            *inner.journal_segment.lock() = Some(journal.current_path());
            // A send claimed before the crash may or may not have reached WeChat; sending it
            // again could deliver it twice, so it ends here with the reason.
            let n = conn
                .execute(
                    "UPDATE outbox SET status = 'failed', reason = ?1, updated_at_ms = ?2 \
                     WHERE status = 'in_flight'",
                    params![OUTCOME_UNKNOWN, inner.clock.now_ms()],
                )
                .map_err(|e| open_err(e.to_string()))?;
            if n > 0 {
                tracing::warn!(
                    entries = n,
                    "outbox entries were in flight when kefu stopped; marked failed, not re-sent"
                );
            }
            rebuild_index(&conn, &inner.index, inner.clock.now_secs())
                .map_err(|e| open_err(e.to_string()))?;
            Some(journal)
        } else {
            // A command while no server runs on this state.dir: what a crashed server left in
            // the journal runs first, so the command neither shows nor changes a state behind
            // acknowledged pushes (an erasure would otherwise be undone by the next start).
            if let Ok(lock) = lock_state_dir(dir) {
                let has_journal = dir.join(journal::JOURNAL_DIR).is_dir();
                match read_watermark(&conn) {
                    Ok(w) if has_journal || w > 0 => match recover(&conn, &inner, false) {
                        Ok((_, n)) if n > 0 => {
                            tracing::info!(
                                records = n,
                                "state store: ran the journal a stopped server left"
                            );
                        }
                        Ok(_) => {}
                        // A damaged journal: a change made now could be undone once the
                        // journal is repaired and runs, so the command refuses, saying why.
                        Err(e @ StoreError::Journal(_)) => return Err(e),
                        Err(e) => tracing::warn!(
                            error = %e,
                            "state store: the journal cannot be run; this command sees the \
                             database as the server last committed it (start `kefu serve` to \
                             see why)"
                        ),
                    },
                    _ => {}
                }
                drop(lock);
            }
            None
        };
        if journal.is_some() {
            // Checkpoints (copying the WAL into the database file, with their fsyncs) run on
            // their own thread and connection, not inside a commit on the push path.
            conn.execute_batch("PRAGMA wal_autocheckpoint = 0")
                .map_err(|e| open_err(e.to_string()))?;
            // Each job runs in a savepoint of a transaction that stays open across batches,
            // so its first change to a page saves the page to the statement journal: in
            // memory, not a temp file written per page (measured: a quarter of the writer's
            // time). The page cache holds what a commit interval dirties (32 MB).
            conn.execute_batch("PRAGMA temp_store = MEMORY; PRAGMA cache_size = -32768")
                .map_err(|e| open_err(e.to_string()))?;
            let (weak, path) = (Arc::downgrade(&inner), inner.db_path.clone());
            std::thread::Builder::new()
                .name("kefu-store-checkpoint".into())
                .spawn(move || engine::checkpoint_loop(path, weak))
                .map_err(|e| open_err(format!("cannot start the checkpoint thread: {e}")))?;
        }
        // The journal has run: commands writing beside the server may knock from now on.
        if let Some(k) = knock.as_ref().filter(|_| opts.owner) {
            let _ = k.unlock();
        }
        let wal_path = inner.wal_path();
        let dirty = if sync == SyncMode::Normal {
            let dirty = Arc::new(AtomicBool::new(false));
            let (weak, flag, wal) = (Arc::downgrade(&inner), dirty.clone(), wal_path.clone());
            std::thread::Builder::new()
                .name("kefu-store-sync".into())
                .spawn(move || interval_sync_loop(wal, flag, weak))
                .map_err(|e| open_err(format!("cannot start the sync thread: {e}")))?;
            Some(dirty)
        } else {
            None
        };
        let writer = Writer::new(conn, journal, knock, sync, wal_path, dirty);
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("kefu-store-writer".into())
            .spawn(move || writer_loop(writer, rx, weak))
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

    /// How many journal records opening ran again: the acknowledged writes SQLite had not
    /// committed when the previous process stopped (0 after a clean stop).
    pub fn replayed_at_open(&self) -> u64 {
        self.inner.replayed.load(Ordering::Relaxed)
    }

    /// Stops the store as a SIGKILL would, for crash tests in one process: the writer stops
    /// without committing its open transaction (SQLite rolls it back), so what it held exists
    /// only in the journal, and the `state.dir` lock is released.
    #[doc(hidden)]
    pub fn abandon(&self) {
        self.inner.abandoned.store(true, Ordering::SeqCst);
        self.close();
    }

    /// Stops taking writes; queued jobs still commit. Later writes fail with `Closed`.
    pub fn close(&self) {
        self.inner.jobs.lock().take();
        self.inner.lock.lock().take();
    }

    /// Runs `f` on the writer thread inside the current batch's transaction; answered once
    /// SQLite has committed it (a write that is not journaled).
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &Inner, &mut Post) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        self.submit(Durability::Direct, move |conn, inner, post| {
            in_savepoint(conn, || f(conn, inner, post))
        })
        .await
    }

    /// Runs a journaled op on the writer thread; answered once its journal record is durable
    /// (`state.sync`). A CLI process has no journal: its ops commit like any write.
    async fn write_op(&self, op: Op) -> StoreResult<Done> {
        let durability =
            if self.inner.indexed { Durability::Journal(op.encode()?) } else { Durability::Direct };
        self.submit(durability, move |conn, inner, post| {
            in_savepoint(conn, || op.run(conn, inner, post))
        })
        .await
    }

    /// Runs `f` on the writer's connection, which sees every acknowledged write, without
    /// writing: the sender's reads of the outbox, which must see the entries a push just
    /// committed.
    async fn read_fresh<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        // A CLI process has no open transaction; a closed store has committed everything.
        if !self.inner.indexed || self.inner.jobs.lock().is_none() {
            return self.read(f).await;
        }
        self.submit(Durability::Read, move |conn, _, _| f(conn)).await
    }

    /// Commits the writer's open transaction, so readers on other connections see every
    /// acknowledged write.
    async fn flush(&self) -> StoreResult<()> {
        self.submit(Durability::Flush, |_, _, _| Ok(())).await
    }

    async fn submit<T: Send + 'static>(
        &self,
        durability: Durability,
        f: impl FnOnce(&Connection, &Inner, &mut Post) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        let (reply, rx) = oneshot::channel::<StoreResult<T>>();
        let run: engine::Run = Box::new(move |conn: Option<&Connection>, inner: &Inner| {
            let mut post = Post::default();
            let result = match conn {
                Some(conn) => f(conn, inner, &mut post),
                None => Err(StoreError::Closed),
            };
            let wrote = result.is_ok();
            let finish: Finish = Box::new(move |inner: &Inner, commit: Result<(), &StoreError>| {
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
            });
            (finish, wrote)
        });
        let sender = self.inner.jobs.lock().clone().ok_or(StoreError::Closed)?;
        sender.send(Job { durability, run }).map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a pooled read connection off the async threads. In the serving process it
    /// first has the writer commit what it holds, so the read sees every acknowledged write.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    ) -> StoreResult<T> {
        if self.inner.indexed
            && self.inner.uncommitted.load(Ordering::Acquire)
            && self.inner.jobs.lock().is_some()
        {
            self.flush().await?;
        }
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

    /// Drops the cached access token and media ids (they belong to one AppID; see
    /// [`super::APP_FILE`]).
    pub async fn forget_account_caches(&self) -> StoreResult<()> {
        self.write(|conn, _, _| {
            conn.execute_batch("DELETE FROM token; DELETE FROM media;")?;
            Ok(())
        })
        .await
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
            forwards::purge_tx(conn, now_ms)?;
            inner.rates.retain(|_, hits| hits.back().is_some_and(|t| *t > now_ms - 3_600_000));
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
        tokio::spawn(tracing::Instrument::in_current_span(async move {
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
        }))
    }
}

impl SqliteStore {
    /// The journaled op of a push commit, with its forward record or the forward it settles.
    fn push_op(
        &self,
        push: PushCommit,
        forward: Option<super::ForwardRecord>,
        settles: Option<String>,
    ) -> Op {
        Op::Push {
            at_ms: self.inner.clock.now_ms(),
            logs: self.inner.logs(),
            push: Box::new(push),
            forward: forward.map(Box::new),
            settles,
        }
    }
}

/// The table holding the last journal seq SQLite holds (the watermark), written in the
/// transaction that commits it.
const WATERMARK_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS journal_applied ( \
     id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL)";

/// The last journal seq SQLite holds (0: none, or no journal yet).
fn read_watermark(conn: &Connection) -> rusqlite::Result<u64> {
    let exists: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE name = 'journal_applied')",
        [],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(0);
    }
    let seq: Option<i64> = conn
        .query_row("SELECT seq FROM journal_applied WHERE id = 1", [], |r| r.get(0))
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

/// Records the watermark in the open transaction.
pub(super) fn set_watermark(conn: &Connection, seq: u64) -> StoreResult<()> {
    conn.prepare_cached(
        "INSERT INTO journal_applied (id, seq) VALUES (1, ?1) \
         ON CONFLICT (id) DO UPDATE SET seq = excluded.seq",
    )?
    .execute([i64::try_from(seq).unwrap_or(i64::MAX)])?;
    Ok(())
}

/// Brings SQLite up to the journal: in one transaction, reads the watermark, opens the
/// journal (checking every record after it; see [`Journal::open`]) and runs those records
/// again, in order, each in its own savepoint (a record that failed live was never written, so
/// a failure here is skipped as it was then), then commits them with the new watermark and
/// fsyncs the WAL. Returns the journal, ready to append, and how many records ran (also
/// [`SqliteStore::replayed_at_open`]).
fn recover(conn: &Connection, inner: &Inner, truncate: bool) -> StoreResult<(Journal, u64)> {
    conn.execute_batch(WATERMARK_SCHEMA)?;
    // Inside the write lock: a writer of the same state.dir that is still closing (a restart
    // in the same process) has committed by then, and its watermark is the one read.
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| -> StoreResult<(Journal, u64)> {
        let watermark = read_watermark(conn)?;
        let opened = Journal::open(&inner.dir, watermark, truncate)?;
        let n = opened.tail.len() as u64;
        let last_seq = opened.tail.last().map(|r| r.seq);
        if let Some(last) = last_seq {
            for r in opened.tail {
                let op = Op::decode(r.seq, &r.payload)?;
                let mut post = Post::default();
                let ran = in_savepoint(conn, || op.run(conn, inner, &mut post));
                match ran {
                    Ok(_) => apply_post(inner, post),
                    Err(e) => {
                        tracing::debug!(seq = r.seq, error = %e, "journal: a replayed record failed, as it did live")
                    }
                }
            }
            set_watermark(conn, last)?;
        }
        conn.execute_batch("COMMIT")?;
        Ok((opened.journal, n))
    })();
    match &result {
        Err(_) => {
            let _ = conn.execute_batch("ROLLBACK");
        }
        Ok((_, n)) if *n > 0 => {
            inner.replayed.store(*n, Ordering::Relaxed);
            // What ran is durable before anything relies on it (segments deleted, answers).
            engine::sync_wal(&inner.wal_path()).map_err(|e| {
                StoreError::Backend(format!("cannot fsync {}: {e}", inner.wal_path().display()))
            })?;
        }
        Ok(_) => {}
    }
    result
}

impl Inner {
    /// The database's write-ahead log file.
    fn wal_path(&self) -> PathBuf {
        self.db_path.with_file_name(format!("{DB_FILE}-wal"))
    }

    /// The follower may have held answers from now on.
    fn note_held(&self, openid: &str) {
        if let Some(set) = &self.held_followers
            && !set.contains(openid)
        {
            set.insert(openid.to_string());
        }
    }

    /// Whether a push of this follower must read the mailbox.
    fn may_hold(&self, openid: &OpenId) -> bool {
        self.held_followers.as_ref().is_none_or(|set| set.contains(openid.as_str()))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Lets a sleeping purge task notice the store is gone.
        self.purge_wake.notify_one();
    }
}

fn corrupt(what: impl Into<String>) -> StoreError {
    StoreError::Corrupt(what.into())
}

// ---------------------------------------------------------------------------------------------
// The trait

#[async_trait]
impl Store for SqliteStore {
    // ---- forwards ----
    async fn commit_push_forward(
        &self,
        push: PushCommit,
        forward: super::ForwardRecord,
    ) -> StoreResult<CommitOutcome> {
        self.commit_push_forward_sql(push, forward).await
    }
    async fn record_forward(&self, forward: &super::ForwardRecord) -> StoreResult<()> {
        self.record_forward_sql(forward).await
    }
    async fn unfinished_forwards(&self) -> StoreResult<Vec<super::ForwardRecord>> {
        self.unfinished_forwards_sql().await
    }
    async fn settle_forward(&self, id: &str, answer: PushCommit) -> StoreResult<CommitOutcome> {
        self.settle_forward_sql(id, answer).await
    }
    async fn finish_forward(&self, id: &str) -> StoreResult<()> {
        self.finish_forward_sql(id).await
    }
    async fn rate_hit(
        &self,
        key: &str,
        limit: u32,
        window_ms: i64,
        now_ms: i64,
    ) -> StoreResult<bool> {
        Ok(forwards::rate_hit_mem(&self.inner, key, limit, window_ms, now_ms))
    }

    async fn commit_push(&self, push: PushCommit) -> StoreResult<CommitOutcome> {
        self.write_op(self.push_op(push, None, None)).await?.commit()
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
        self.read_fresh(move |conn| {
            let w = load_window(conn, &openid)?;
            let pending = count_pending(conn, &openid)?;
            let held = count_held(conn, Some(&openid), now.saturating_mul(1000))?;
            Ok(w.view(openid, now, pending).with_held(held))
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
                held_answers: count_held(conn, None, now.saturating_mul(1000))?,
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
            let mut held = std::collections::HashMap::<String, u64>::new();
            {
                let mut stmt = conn.prepare_cached(
                    "SELECT openid, COUNT(*) FROM outbox WHERE status = 'held' AND due_at_ms > ?1 \
                     GROUP BY openid",
                )?;
                let rows = stmt.query_map([now.saturating_mul(1000)], |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?))
                })?;
                for row in rows {
                    let (k, n): (String, i64) = row?;
                    held.insert(k, u64::try_from(n).unwrap_or(0));
                }
            }
            let mut out = Vec::new();
            let skipped = for_each_live_window(conn, now, |openid, w| {
                let n = pending.get(openid.as_str()).copied().unwrap_or(0);
                let h = held.get(openid.as_str()).copied().unwrap_or(0);
                out.push(w.view(openid, now, n).with_held(h));
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
        self.read_fresh(move |conn| {
            query_outbox(
                conn,
                "status = 'pending' AND due_at_ms <= ?1 ORDER BY due_at_ms, id LIMIT ?2",
                params![now_ms, limit],
            )
        })
        .await
    }

    async fn next_due_at(&self) -> StoreResult<Option<i64>> {
        self.read_fresh(|conn| {
            Ok(conn.query_row(
                "SELECT MIN(due_at_ms) FROM outbox WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    async fn claim(&self, id: i64) -> StoreResult<bool> {
        let at_ms = self.inner.clock.now_ms();
        self.write_op(Op::Claim { at_ms, id }).await?.claimed()
    }

    async fn claim_send(
        &self,
        id: i64,
        openid: &OpenId,
        now: i64,
        hold_until_ms: Option<i64>,
    ) -> StoreResult<SendClaim> {
        let op = Op::ClaimSend {
            at_ms: self.inner.clock.now_ms(),
            logs: self.inner.logs(),
            id,
            openid: openid.clone(),
            now,
            hold_until_ms,
        };
        self.write_op(op).await?.claim()
    }

    async fn finish(&self, id: i64, outcome: Outcome) -> StoreResult<()> {
        let op =
            Op::Finish { at_ms: self.inner.clock.now_ms(), logs: self.inner.logs(), id, outcome };
        self.write_op(op).await.map(|_| ())
    }

    async fn pending_count(&self, openid: &OpenId) -> StoreResult<u64> {
        let openid = openid.clone();
        self.read_fresh(move |conn| count_pending(conn, &openid)).await
    }

    async fn pending_for(&self, openid: &OpenId) -> StoreResult<Vec<OutboxEntry>> {
        let openid = openid.clone();
        self.read_fresh(move |conn| {
            query_outbox(
                conn,
                "openid = ?1 AND status IN ('pending', 'in_flight') ORDER BY due_at_ms, id",
                [openid.as_str()],
            )
        })
        .await
    }

    async fn outbox_entry(&self, id: i64) -> StoreResult<Option<OutboxEntry>> {
        self.read_fresh(move |conn| Ok(query_outbox(conn, "id = ?1", [id])?.pop())).await
    }

    async fn outbox_overview(&self, recent: usize) -> StoreResult<Vec<OutboxEntry>> {
        let recent = i64::try_from(recent).unwrap_or(i64::MAX);
        self.read(move |conn| {
            let mut out = query_outbox(
                conn,
                "status IN ('pending', 'in_flight', 'held') ORDER BY due_at_ms, id LIMIT 1000",
                [],
            )?;
            out.extend(query_outbox(
                conn,
                "status IN ('dropped', 'failed') ORDER BY updated_at_ms DESC, id DESC LIMIT ?1",
                [recent],
            )?);
            Ok(out)
        })
        .await
    }

    async fn held_for(&self, openid: &OpenId, now_ms: i64) -> StoreResult<Vec<HeldAnswer>> {
        let openid = openid.clone();
        self.read_fresh(move |conn| {
            let mut held = mailbox_tx(conn, &openid)?;
            held.retain(|h| h.expires_at_ms > now_ms);
            Ok(held)
        })
        .await
    }

    async fn expire_held(&self, now_ms: i64) -> StoreResult<u64> {
        self.write(move |conn, inner, post| {
            if inner.logs() {
                let expired = EXPIRED.to_string();
                for e in query_outbox(conn, "status = 'held' AND due_at_ms <= ?1", [now_ms])? {
                    let rec = crate::convlog::LogRecord::answer(
                        &e.openid,
                        now_ms,
                        &e.action,
                        crate::convlog::Via::CustomSend,
                        crate::convlog::LogOutcome::Dropped,
                        Some(expired.clone()),
                    );
                    convlog::insert_tx(conn, inner, post, rec)?;
                }
            }
            expire_held_tx(conn, now_ms)
        })
        .await
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
        if let Some(e) = self.inner.journal_error.lock().clone() {
            return Err(StoreError::Journal(format!(
                "{e}; each push is committed to SQLite instead (slower). Free space on the disk \
                 or fix the permissions of {}",
                self.inner.dir.join(journal::JOURNAL_DIR).display()
            )));
        }
        if !self.inner.db_path.is_file() {
            return Err(StoreError::Backend(format!(
                "the database file {} is gone; restore it or restart kefu to create a new one",
                self.inner.db_path.display()
            )));
        }
        self.read(|conn| Ok(conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(|_| ())?))
            .await
    }

    // ---- conversation memory ----
    async fn turns(
        &self,
        backend: Option<&str>,
        openid: &OpenId,
    ) -> StoreResult<Vec<(String, crate::llm::Turn)>> {
        self.turns_sql(backend, openid).await
    }

    async fn add_turn(
        &self,
        backend: &str,
        openid: &OpenId,
        turn: crate::llm::Turn,
        keep: usize,
        oldest_ms: i64,
    ) -> StoreResult<()> {
        self.add_turn_sql(backend, openid, turn, keep, oldest_ms).await
    }

    async fn clear_turns(&self, openid: &OpenId) -> StoreResult<u64> {
        self.clear_turns_sql(openid).await
    }

    // ---- conversation log ----
    async fn log_append(&self, records: Vec<crate::convlog::LogRecord>) -> StoreResult<()> {
        self.log_append_sql(records).await
    }

    async fn log_followers(
        &self,
        limit: usize,
        before: Option<(i64, String)>,
    ) -> StoreResult<Vec<crate::convlog::FollowerActivity>> {
        self.log_followers_sql(limit, before).await
    }

    async fn log_show(
        &self,
        openid: &OpenId,
        since_ms: Option<i64>,
    ) -> StoreResult<Vec<crate::convlog::LogRecord>> {
        self.log_show_sql(openid, since_ms).await
    }

    async fn log_delete(&self, openid: &OpenId) -> StoreResult<u64> {
        self.log_delete_sql(openid).await
    }

    async fn log_purge(&self, now_ms: i64) -> StoreResult<u64> {
        self.log_purge_sql(now_ms).await
    }

    fn log_bus(&self) -> crate::convlog::LogBus {
        self.inner.log_bus.clone()
    }

    fn log_retention_ms(&self) -> i64 {
        self.inner.log_retention_ms.load(Ordering::Relaxed)
    }

    // ---- media ----
    async fn media_get(&self, key: &super::MediaKey) -> StoreResult<Option<super::MediaRecord>> {
        self.media_get_sql(key).await
    }

    async fn media_put(&self, record: &super::MediaRecord) -> StoreResult<()> {
        self.media_put_sql(record).await
    }

    async fn media_list(&self) -> StoreResult<Vec<super::MediaRecord>> {
        self.media_list_sql().await
    }

    async fn media_try_lock(
        &self,
        key: &super::MediaKey,
        holder: &str,
        ttl: std::time::Duration,
    ) -> StoreResult<bool> {
        self.media_try_lock_sql(key, holder, ttl).await
    }

    async fn media_unlock(&self, key: &super::MediaKey, holder: &str) -> StoreResult<()> {
        self.media_unlock_sql(key, holder).await
    }
}
