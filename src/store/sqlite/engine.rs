//! The engine under the embedded store: connections in WAL mode, the `state.dir` lock, and the
//! single group-commit writer thread with its fsync policy (`state.sync`). It knows nothing of
//! the tables; the jobs it runs do.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use rusqlite::Connection;

use super::{StoreError, StoreResult};
use crate::config::SyncMode;
use crate::ledger::Window;
use crate::model::OpenId;

use super::{BUSY_TIMEOUT, Inner, LOCK_FILE, MAX_BATCH};

/// Work done after the batch commits: index updates and the earliest new expiry.
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
/// A write; given no connection (the transaction could not begin) it only prepares to
/// report the batch's error.
pub(super) type Job = Box<dyn FnOnce(Option<&Connection>, &Inner) -> Finish + Send>;

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

/// Group commit: one transaction per batch of queued jobs, each in its own savepoint.
/// `dirty` (with `state.sync = "normal"`) tells the sync thread there is something to fsync.
pub(super) fn writer_loop(
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
pub(super) fn sync_wal(wal: &Path) -> std::io::Result<()> {
    match std::fs::File::open(wal) {
        Ok(f) => f.sync_data(),
        // No WAL file: everything was checkpointed into the database file, which SQLite
        // fsyncs at each checkpoint.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// `state.sync = "normal"`: bounds what a power cut can take to about the last second.
pub(super) fn interval_sync_loop(wal: PathBuf, dirty: Arc<AtomicBool>, store: Weak<Inner>) {
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
