//! Start time and memory of the embedded store with a large state (issue "push path at the
//! limit": a start with 1 M followers' state, memory with 1 M followers).
//!
//! ```text
//! cargo run --release --example start_state -- DIR [FOLLOWERS] [TAIL]
//! ```
//!
//! Phase `build` (skipped when DIR already holds a state) commits one push per follower
//! (FOLLOWERS, default 1 000 000: a message grant, its dedupe record and stored answer, two log
//! lines) through the store as `kefu serve` does, then stops cleanly, keeps a copy of the
//! database at that point, commits TAIL more pushes (default 50 000, the journal records after
//! the copy's watermark) and stops again. Phase `start` then opens the store twice, each in a
//! fresh child process so the figures are one start's own: once as a clean restart, and once
//! with the database copy put back under the same journal, so that opening must run the TAIL
//! records again as after a crash. For each it prints the time to open (rebuilding the
//! in-memory ledger index and running the journal), the records replayed, and the process's
//! resident memory (VmRSS, VmHWM) once open.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use kefu::config::{SyncMode, WindowConfig};
use kefu::delivery::{OwnPassive, Terms};
use kefu::model::{OpenId, SharedClock, SystemClock, Trigger, WindowEffect};
use kefu::store::{PushCommit, SqliteStore, Store};

const DB: &str = "kefu.sqlite3";

fn open(dir: &Path) -> SqliteStore {
    let clock: SharedClock = Arc::new(SystemClock);
    let store = SqliteStore::open(dir, &WindowConfig::default(), 660, SyncMode::Normal, clock)
        .unwrap_or_else(|e| panic!("open {}: {e}", dir.display()));
    store.configure_log(std::time::Duration::from_secs(30 * 86_400), true);
    store
}

fn push(i: u64, now_ms: i64) -> PushCommit {
    let openid = OpenId::parse(&format!("oStart{i:022}")).expect("a valid OpenID");
    PushCommit {
        dedupe_key: format!("m:{}:{i}:{}", now_ms / 1000, openid.as_str()),
        log: Some(kefu::convlog::LogRecord::push(
            &openid,
            now_ms,
            ("text".into(), format!("what is the price of item {i}?")),
        )),
        openid,
        effect: WindowEffect::Open(Trigger::Message),
        received_at_ms: now_ms,
        passive: Some(OwnPassive::text("price", "Our prices are on the website.")),
        outbox: Vec::new(),
        terms: Terms::default(),
    }
}

/// Commits pushes `from..to` from 64 concurrent tasks.
async fn commit(store: &SqliteStore, from: u64, to: u64) {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(from));
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= to {
                        return;
                    }
                    let now_ms = kefu::model::Clock::now_ms(&SystemClock);
                    store.commit_push(push(i, now_ms)).await.expect("commit");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a commit task");
    }
}

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

async fn build(dir: &Path, followers: u64, tail: u64) {
    let t = Instant::now();
    let store = open(dir);
    commit(&store, 0, followers).await;
    store.close();
    drop(store);
    // Let the writer's last commit land before copying.
    std::thread::sleep(std::time::Duration::from_secs(1));
    eprintln!("built {followers} followers in {:.1} s", t.elapsed().as_secs_f64());
    let snapshot = dir.join("snapshot");
    std::fs::create_dir_all(&snapshot).expect("snapshot dir");
    std::fs::copy(dir.join(DB), snapshot.join(DB)).expect("copy the database");
    // Every record so far is in the database (a clean stop commits durably): start the tail
    // in a segment of its own, so that no rotation between here and the end deletes records
    // the copy lacks (TAIL must stay under one segment, 64 MB: about 80 000 pushes).
    std::fs::remove_dir_all(dir.join("journal")).expect("remove the journal");
    let store = open(dir);
    commit(&store, followers, followers + tail).await;
    store.close();
    drop(store);
    std::thread::sleep(std::time::Duration::from_secs(1));
}

/// One start in this process: prints a line of figures.
fn start(dir: &Path, label: &str) {
    let t = Instant::now();
    let store = open(dir);
    let took = t.elapsed();
    println!(
        "{label}: opened in {:.2} s, {} journal records replayed, {} index entries, VmRSS {}, \
         VmHWM {}",
        took.as_secs_f64(),
        store.replayed_at_open(),
        store.index().len(),
        status("VmRSS:"),
        status("VmHWM:")
    );
    store.close();
}

fn child(dir: &Path, label: &str) {
    let exe = std::env::current_exe().expect("this program");
    let ok = std::process::Command::new(exe)
        .args(["--start", &dir.display().to_string(), label])
        .status()
        .expect("run a start")
        .success();
    assert!(ok, "the {label} start failed");
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--start") {
        start(Path::new(&args[1]), &args[2]);
        return;
    }
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: start_state DIR [FOLLOWERS] [TAIL]");
        std::process::exit(2);
    };
    let followers = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let tail = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    if !dir.join(DB).exists() {
        build(&dir, followers, tail).await;
    }
    let journal_bytes: u64 = std::fs::read_dir(dir.join("journal"))
        .map(|d| d.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0);
    println!(
        "state: {} MB database, {} MB journal",
        std::fs::metadata(dir.join(DB)).map(|m| m.len() >> 20).unwrap_or(0),
        journal_bytes >> 20
    );
    child(&dir, "clean restart");
    // As after a crash: the database as it was before the last TAIL pushes, the journal with
    // them. The copy is put back each time, so this can be run again.
    let crashed = dir.join("crashed");
    let _ = std::fs::remove_dir_all(&crashed);
    std::fs::create_dir_all(crashed.join("journal")).expect("crashed dir");
    std::fs::copy(dir.join("snapshot").join(DB), crashed.join(DB)).expect("copy");
    for e in std::fs::read_dir(dir.join("journal")).expect("journal") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), crashed.join("journal").join(e.file_name())).expect("copy");
    }
    child(&crashed, "restart after a crash");
}
