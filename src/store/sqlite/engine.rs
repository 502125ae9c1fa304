//! The engine under the embedded store: connections in WAL mode, the `state.dir` lock, and the
//! single group-commit writer thread with its durability policy (`state.sync`). It knows
//! nothing of the tables; the jobs it runs do.
//!
//! The serving process's writer keeps one SQLite transaction open across batches. Each batch
//! runs its jobs in savepoints inside it; the journaled ones ([`Durability::Journal`]) are
//! then appended to the journal with one write (and, with `state.sync = "full"`, one fsync),
//! and the batch is answered. The transaction is committed, recording the last journal seq
//! it holds (the watermark), every [`COMMIT_EVERY`] under load, [`COMMIT_IDLE`] after the
//! writer goes idle, before a job that is not journaled is answered (then with the WAL
//! fsynced under `full`), when a reader in this process asks ([`Durability::Flush`]), and
//! when another process knocks ([`KNOCK_FILE`]). A CLI process's writer (no journal) commits
//! each batch, as every writer did before the journal.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::journal::Journal;
use super::{StoreError, StoreResult};
use crate::config::SyncMode;
use crate::ledger::Window;
use crate::model::OpenId;

use super::{BUSY_TIMEOUT, Inner, LOCK_FILE, MAX_BATCH};

/// Work done after the batch is durable: index updates and the earliest new expiry.
#[derive(Default)]
pub(super) struct Post {
    pub(super) windows: Vec<(OpenId, Window)>,
    /// Earliest expiry (Unix ms) this job created, to wake the purge task early.
    pub(super) expiry_ms: Option<i64>,
    pub(super) prune_index_at: Option<i64>,
    /// Conversation-log records written, published once committed.
    pub(super) log: Vec<crate::convlog::LogRecord>,
}

pub(super) type Finish = Box<dyn FnOnce(&Inner, Result<(), &StoreError>) + Send>;
/// A job's work: given no connection (the transaction could not begin) it only prepares to
/// report the batch's error. It returns its finish and whether it wrote (a failed job's
/// savepoint was rolled back: nothing to make durable).
pub(super) type Run = Box<dyn FnOnce(Option<&Connection>, &Inner) -> (Finish, bool) + Send>;

/// What makes a job's write durable before it is answered.
pub(super) enum Durability {
    /// A journaled op (its encoded record): appended to the journal before the answer;
    /// SQLite commits it later.
    Journal(Vec<u8>),
    /// Not journaled: SQLite commits (and with `full` fsyncs) before the answer.
    Direct,
    /// Reads the writer's own view (every acknowledged write); writes nothing.
    Read,
    /// Commits the open transaction, so that readers on other connections see every
    /// acknowledged write.
    Flush,
}

/// A job for the writer thread.
pub(super) struct Job {
    pub(super) durability: Durability,
    pub(super) run: Run,
}

/// The serving process's SQLite transaction is committed at least this often under load...
pub const COMMIT_EVERY: Duration = Duration::from_millis(100);
/// ...and this long after the last batch once the writer is idle, so that other processes
/// (the CLI, `kefu window show`) read what was acknowledged a moment ago.
pub const COMMIT_IDLE: Duration = Duration::from_millis(5);
/// The file a process writing beside the server locks (exclusively) around its transaction.
/// The server's writer checks it before each batch (a shared lock taken and dropped without
/// waiting); when it is held, the writer commits and waits for it. The other process's write
/// therefore never starves, and it reads a ledger that holds every acknowledged push: the
/// server has no open transaction while the other process writes.
pub const KNOCK_FILE: &str = "kefu.knock";

/// Opens a connection in WAL mode; the bool says whether the database really is in WAL mode
/// (a file system without shared memory support can refuse it).
pub(super) fn open_connection(path: &Path, sync: SyncMode) -> rusqlite::Result<(Connection, bool)> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // journal_mode is persistent in the file, but asking is cheap and covers a fresh file.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    set_synchronous(&conn, sync)?;
    Ok((conn, mode.eq_ignore_ascii_case("wal")))
}

/// `full` and `normal` are SQLite's own levels of the same names (`normal` in WAL mode: commits
/// write the log without fsync, which happens at checkpoints).
pub(super) fn set_synchronous(conn: &Connection, sync: SyncMode) -> rusqlite::Result<()> {
    conn.execute_batch(match sync {
        SyncMode::Full => "PRAGMA synchronous = FULL;",
        SyncMode::Normal => "PRAGMA synchronous = NORMAL;",
        SyncMode::Off => "PRAGMA synchronous = OFF;",
    })
}

/// Takes the owner's lock on `state.dir`, or says who holds it and what to do.
pub(super) fn lock_state_dir(dir: &Path) -> StoreResult<std::fs::File> {
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

pub(super) fn restrict_permissions(path: &Path) {
    // The file holds the access token: readable by its owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    #[cfg(not(unix))]
    let _ = path;
}

pub(super) fn apply_post(inner: &Inner, post: Post) {
    if !post.log.is_empty() {
        inner.log_bus.publish(post.log);
    }
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
pub(super) fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce() -> StoreResult<T>,
) -> StoreResult<T> {
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

/// Opens the knock file (created if needed).
pub(super) fn open_knock(dir: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(KNOCK_FILE))
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// The serving process's journal; None for a CLI process (each batch commits).
    pub(super) journal: Option<Journal>,
    pub(super) knock: Option<File>,
    pub(super) sync: SyncMode,
    pub(super) wal: PathBuf,
    /// Set with `state.sync = "normal"`: tells the sync thread there is something to fsync.
    pub(super) dirty: Option<Arc<AtomicBool>>,
    /// A transaction is open.
    open: bool,
    /// The last journal seq the open transaction holds.
    pending_seq: Option<u64>,
    last_commit: Instant,
    last_batch: Instant,
    /// SQLite lost its open transaction (a failed commit): the journal's records after the
    /// watermark must run again before the next batch.
    needs_replay: bool,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        journal: Option<Journal>,
        knock: Option<File>,
        sync: SyncMode,
        wal: PathBuf,
        dirty: Option<Arc<AtomicBool>>,
    ) -> Self {
        let now = Instant::now();
        Writer {
            conn,
            journal,
            knock,
            sync,
            wal,
            dirty,
            open: false,
            pending_seq: None,
            last_commit: now,
            last_batch: now,
            needs_replay: false,
        }
    }

    /// When the open transaction is to be committed if nothing else commits it first.
    fn deadline(&self) -> Instant {
        (self.last_commit + COMMIT_EVERY).min(self.last_batch + COMMIT_IDLE)
    }

    /// Whether another process waits to write (holds the knock file).
    fn knocked(&self) -> bool {
        match &self.knock {
            Some(f) if self.journal.is_some() => match f.try_lock_shared() {
                Ok(()) => {
                    let _ = f.unlock();
                    false
                }
                Err(_) => true,
            },
            _ => false,
        }
    }

    /// Waits until another process's knock (its write) is over.
    fn wait_knock(&self) {
        if let Some(f) = &self.knock
            && f.lock_shared().is_ok()
        {
            let _ = f.unlock();
        }
    }

    /// Begins the transaction the next batch runs in: the server's stays open across
    /// batches; a CLI process first takes the knock file, so the server lets it in.
    fn begin(&mut self, inner: &Inner) -> StoreResult<()> {
        if self.open {
            return Ok(());
        }
        if self.journal.is_some() {
            if self.knocked() {
                self.wait_knock();
            }
            if self.needs_replay {
                let (journal, n) = super::recover(&self.conn, inner, false)?;
                tracing::warn!(
                    records = n,
                    "state store: ran the journal again after a failed commit"
                );
                self.journal = Some(journal);
                self.needs_replay = false;
            }
        } else if let Some(f) = &self.knock {
            let _ = f.lock();
        }
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            if self.journal.is_none()
                && let Some(f) = &self.knock
            {
                let _ = f.unlock();
            }
            return Err(e.into());
        }
        self.open = true;
        Ok(())
    }

    /// Commits the open transaction with the watermark; `durable` fsyncs the WAL (not with
    /// `state.sync = "off"`). On an error the transaction is rolled back.
    pub(super) fn commit(&mut self, inner: Option<&Inner>, durable: bool) -> StoreResult<()> {
        if !self.open || inner.is_some_and(|i| i.abandoned.load(Ordering::SeqCst)) {
            return Ok(());
        }
        self.open = false;
        let result = (|| -> StoreResult<()> {
            if let Some(seq) = self.pending_seq {
                super::set_watermark(&self.conn, seq)?;
            }
            self.conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        if self.journal.is_none()
            && let Some(f) = &self.knock
        {
            let _ = f.unlock();
        }
        if let Some(inner) = inner {
            inner.uncommitted.store(false, Ordering::Release);
        }
        self.last_commit = Instant::now();
        if let Err(e) = result {
            let _ = self.conn.execute_batch("ROLLBACK");
            self.pending_seq = None;
            if self.journal.is_some() {
                // What the transaction held is in the journal: run it again.
                self.needs_replay = true;
            }
            tracing::error!(error = %e, "state store: a commit failed");
            return Err(e);
        }
        self.pending_seq = None;
        if let Some(d) = &self.dirty {
            d.store(true, Ordering::Release);
        }
        if durable && self.sync != SyncMode::Off {
            sync_wal(&self.wal).map_err(|e| {
                StoreError::Backend(format!("cannot fsync {}: {e}", self.wal.display()))
            })?;
        }
        Ok(())
    }

    /// Runs one batch: its jobs in the open transaction, then what makes them durable, then
    /// their answers.
    fn run_batch(&mut self, batch: Vec<Job>, inner: &Inner) {
        let mut records: Vec<Vec<u8>> = Vec::new();
        let (mut direct, mut flush) = (false, false);
        let (finishes, mut result): (Vec<Finish>, StoreResult<()>) = match self.begin(inner) {
            Ok(()) => {
                let finishes = batch
                    .into_iter()
                    .map(|job| {
                        let (finish, wrote) = (job.run)(Some(&self.conn), inner);
                        match job.durability {
                            Durability::Journal(r) if wrote => records.push(r),
                            Durability::Direct if wrote => direct = true,
                            Durability::Flush => flush = true,
                            _ => {}
                        }
                        finish
                    })
                    .collect();
                (finishes, Ok(()))
            }
            Err(e) => {
                tracing::error!(error = %e, "state store: cannot begin a write transaction");
                (batch.into_iter().map(|job| (job.run)(None, inner).0).collect(), Err(e))
            }
        };
        let full = self.sync == SyncMode::Full;
        // Whether the journal holds this batch's records (so they are acknowledged whatever
        // SQLite does next).
        let mut journaled = true;
        let mut rotate = false;
        if let (Some(journal), false) = (self.journal.as_mut(), records.is_empty()) {
            match journal.append(&records, full) {
                Ok(seq) => {
                    self.pending_seq = Some(seq);
                    rotate = journal.wants_rotation();
                    inner.journal_error.lock().take();
                }
                Err(e) => {
                    *inner.journal_error.lock() = Some(match &e {
                        StoreError::Backend(why) => why.clone(),
                        other => other.to_string(),
                    });
                    tracing::error!(error = %e, "state store: cannot append to the journal; committing the batch to SQLite instead");
                    journaled = false;
                }
            }
        }
        if result.is_ok() {
            inner.uncommitted.store(true, Ordering::Release);
            // Durable in SQLite: a job that is not journaled (with `full`), a batch the
            // journal refused, a rotation (the old segments are deleted after it), and every
            // batch of a CLI process.
            let server = self.journal.is_some();
            let durable = server && (((direct || !journaled) && full) || rotate);
            let commit_now = !server
                || durable
                || direct
                || flush
                || !journaled
                || Instant::now() >= self.last_commit + COMMIT_EVERY
                || self.knocked();
            if commit_now {
                // A CLI process's connection fsyncs at COMMIT itself (`synchronous`).
                let committed = self.commit(Some(inner), durable);
                if committed.is_err() && (direct || !journaled || self.journal.is_none()) {
                    result = committed;
                }
                if rotate
                    && self.pending_seq.is_none()
                    && !self.needs_replay
                    && let Some(j) = self.journal.as_mut()
                {
                    match j.rotate() {
                        Ok(()) => *inner.journal_segment.lock() = Some(j.current_path()),
                        Err(e) => {
                            tracing::warn!(error = %e, "state store: cannot start a new journal segment")
                        }
                    }
                }
            }
        }
        if result.is_ok() {
            inner.transactions.fetch_add(1, Ordering::Relaxed);
            inner.jobs_committed.fetch_add(finishes.len() as u64, Ordering::Relaxed);
        }
        self.last_batch = Instant::now();
        for finish in finishes {
            finish(inner, result.as_ref().map(|_| ()));
        }
    }
}

/// Group commit: takes the first queued job and everything queued behind it (up to
/// [`MAX_BATCH`]) as one batch; between batches, commits the open transaction when it is due.
pub(super) fn writer_loop(mut w: Writer, rx: mpsc::Receiver<Job>, store: Weak<Inner>) {
    loop {
        let first = if w.open {
            let wait = w.deadline().saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(job) => job,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = w.commit(store.upgrade().as_deref(), false);
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = w.commit(store.upgrade().as_deref(), true);
                    return;
                }
            }
        } else {
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return,
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let Some(inner) = store.upgrade() else {
            // The store is gone: only its last open transaction is left to keep.
            let _ = w.commit(None, true);
            return;
        };
        w.run_batch(batch, &inner);
    }
}

/// fsyncs the WAL file. Opened for each sync: SQLite may delete and recreate it when the
/// last connection of another process closes, and a stale handle would sync the wrong file.
pub(super) fn sync_wal(wal: &Path) -> std::io::Result<()> {
    match std::fs::File::open(wal) {
        Ok(f) => f.sync_data(),
        // No WAL file: everything was checkpointed into the database file, which SQLite
        // fsyncs at each checkpoint.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `state.sync = "normal"`: bounds what a power cut can take to about the last second. It
/// fsyncs the journal's current segment (the record of every acknowledged push) and the WAL.
pub(super) fn interval_sync_loop(wal: PathBuf, dirty: Arc<AtomicBool>, store: Weak<Inner>) {
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let Some(inner) = store.upgrade() else { return };
        let segment = inner.journal_segment.lock().clone();
        drop(inner);
        if dirty.swap(false, Ordering::AcqRel) {
            if let Some(seg) = segment
                && let Err(e) = File::open(&seg).and_then(|f| f.sync_data())
            {
                tracing::warn!(error = %e, segment = %seg.display(), "state store: periodic fsync of the journal failed");
            }
            if let Err(e) = sync_wal(&wal) {
                tracing::warn!(error = %e, wal = %wal.display(), "state store: periodic fsync of the write-ahead log failed");
            }
        }
    }
}

/// How often the checkpoint thread copies the WAL into the database file.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// The serving process's checkpoints, on a connection of their own: a passive checkpoint
/// every [`CHECKPOINT_EVERY`] (it never waits for the writer or blocks it), so the WAL stays
/// bounded without the writer's commits paying for the copy and its fsyncs.
pub(super) fn checkpoint_loop(db: PathBuf, store: Weak<Inner>) {
    let conn = match open_connection(&db, SyncMode::Normal) {
        Ok((c, _)) => c,
        Err(e) => {
            tracing::error!(error = %e, "state store: the checkpoint thread cannot open the database");
            return;
        }
    };
    loop {
        std::thread::sleep(CHECKPOINT_EVERY);
        if store.strong_count() == 0 {
            return;
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "state store: checkpoint failed; will retry");
        }
    }
}
