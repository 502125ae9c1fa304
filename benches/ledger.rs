//! Ledger and store benches (issue "Durable state"):
//! - the in-memory index with 1,000,000 followers holding a live grant: resident memory
//!   (printed, measured from /proc/self/statm around the build) and lookup time;
//! - push commit throughput through the SQLite store with durability on (`synchronous=FULL`,
//!   every commit fsynced) and off, at 1, 64 and 256 concurrent pushes, in one run, so the cost of
//!   durability and what group commit wins back are read side by side.
//!
//! - the same push commit with the conversation log on and off (`push_commit_log`): the log's
//!   rows ride in the push's own transaction, so they should cost no extra fsync.
//!
//! Run: `cargo bench --bench ledger -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt;
use kefu::config::{SyncMode, WindowConfig};
use kefu::ledger::{LedgerIndex, Window};
use kefu::model::{
    Clock, OpenId, OutMessage, OutboxAction, PlannedAction, SharedClock, SystemClock, Trigger,
    WindowEffect,
};
use kefu::store::{NewOutboxEntry, OwnPassive, PushCommit, SqliteStore, Store, Terms};

const FOLLOWERS: usize = 1_000_000;
const T0: i64 = 1_700_000_000;

/// Resident set size of this process in bytes.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * u64::try_from(page).unwrap_or(4096)
}

/// A 28-character OpenID like WeChat's.
fn openid(i: usize) -> OpenId {
    OpenId::parse(&format!("oBench{i:022}")).expect("valid")
}

fn index(c: &mut Criterion) {
    let cfg = WindowConfig::default();
    let before = rss_bytes();
    let started = Instant::now();
    let idx = LedgerIndex::new();
    for i in 0..FOLLOWERS {
        let mut w = Window::default();
        w.open(Trigger::Message, T0 + (i % 3600) as i64, &cfg);
        idx.put(openid(i), w);
    }
    let built = started.elapsed();
    let after = rss_bytes();
    let grew = after.saturating_sub(before);
    eprintln!(
        "ledger index: {FOLLOWERS} followers with a live grant: RSS {:.1} MB -> {:.1} MB \
         (+{:.1} MB, {} bytes/follower), built in {:.2?}",
        before as f64 / 1e6,
        after as f64 / 1e6,
        grew as f64 / 1e6,
        grew / FOLLOWERS as u64,
        built
    );

    let probes: Vec<OpenId> = (0..4096).map(|i| openid(i * 241 % FOLLOWERS)).collect();
    let misses: Vec<OpenId> =
        (0..4096).map(|i| OpenId::parse(&format!("oMiss{i:023}")).expect("valid")).collect();
    let mut g = c.benchmark_group("index_1m");
    g.bench_function("is_open_hit", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(idx.is_open(&probes[i], T0 + 10))
        })
    });
    g.bench_function("is_open_miss", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(idx.is_open(&misses[i], T0 + 10))
        })
    });
    g.bench_function("get_clone", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(idx.get(&probes[i]))
        })
    });
    g.finish();
    drop(idx);
}

fn push(n: u64, now_ms: i64) -> PushCommit {
    let who = openid((n % 100_000) as usize);
    PushCommit {
        dedupe_key: format!("msg:{n}"),
        openid: who,
        effect: WindowEffect::Open(Trigger::Message),
        received_at_ms: now_ms,
        passive: Some(OwnPassive::text("greeting", "success")),
        terms: Terms::default(),
        log: None,
        outbox: vec![NewOutboxEntry {
            rule: "greeting".into(),
            seq: 0,
            action: PlannedAction {
                rule: "greeting".into(),
                action: OutboxAction::Send {
                    message: OutMessage::Text { content: "您好，我们马上处理。".into() },
                },
                delay: Duration::ZERO,
                kf_account: None,
                source: Default::default(),
            },
            due_at_ms: now_ms,
        }],
    }
}

/// `push` with its conversation-log record (what the pipeline commits).
fn push_logged(n: u64, now_ms: i64) -> PushCommit {
    let p = push(n, now_ms);
    let summary = ("text".to_string(), "我想问一下订单什么时候发货".to_string());
    PushCommit { log: Some(kefu::convlog::LogRecord::push(&p.openid, now_ms, summary)), ..p }
}

/// Commits pushes `conc` at a time, `iters` in all; the time it took.
fn run_commits(
    rt: &tokio::runtime::Runtime,
    store: &Arc<dyn Store>,
    counter: &Arc<AtomicU64>,
    iters: u64,
    conc: usize,
    make: fn(u64, i64) -> PushCommit,
) -> Duration {
    let (store, counter) = (store.clone(), counter.clone());
    rt.block_on(async move {
        let start = Instant::now();
        futures::stream::iter(0..iters)
            .map(|_| {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let store = store.clone();
                let now = SystemClock.now_ms();
                async move { store.commit_push(make(n, now)).await.expect("commit") }
            })
            .buffer_unordered(conc)
            .for_each(|_| async {})
            .await;
        start.elapsed()
    })
}

/// The runtime the commit benches drive the store on: two workers, like the target machine.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A fresh SQLite store in `dir` with the default window settings and `sync`.
fn open(dir: &std::path::Path, sync: SyncMode, clock: &SharedClock) -> SqliteStore {
    SqliteStore::open(dir, &WindowConfig::default(), 660, sync, clock.clone()).expect("store")
}

fn commit_log(c: &mut Criterion) {
    let rt = runtime();
    let clock: SharedClock = Arc::new(SystemClock);
    let counter = Arc::new(AtomicU64::new(0));
    let mut g = c.benchmark_group("push_commit_log");
    g.throughput(Throughput::Elements(1));
    for (sync, label) in [(SyncMode::Full, "sync_full"), (SyncMode::Normal, "sync_normal")] {
        for logged in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let store = open(dir.path(), sync, &clock);
            store.configure_log(Duration::from_secs(30 * 86_400), true);
            let store: Arc<dyn Store> = Arc::new(store);
            let make = if logged { push_logged } else { push };
            let name = format!("{label}_{}", if logged { "log_on" } else { "log_off" });
            for conc in [1usize, 64] {
                g.bench_with_input(BenchmarkId::new(&name, conc), &conc, |b, &conc| {
                    b.iter_custom(|iters| run_commits(&rt, &store, &counter, iters, conc, make))
                });
            }
        }
    }
    g.finish();
}

fn commit(c: &mut Criterion) {
    let rt = runtime();
    let clock: SharedClock = Arc::new(SystemClock);
    let counter = Arc::new(AtomicU64::new(0));
    let mut g = c.benchmark_group("push_commit");
    g.throughput(Throughput::Elements(1));
    // `state.sync` full and normal, and never fsynced (not a config value) for the cost of it.
    for (sync, label) in [
        (SyncMode::Full, "sync_full"),
        (SyncMode::Normal, "sync_normal"),
        (SyncMode::Off, "sync_off"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), sync, &clock);
        let store: Arc<dyn Store> = Arc::new(store);
        for concurrency in [1usize, 64, 256] {
            g.bench_with_input(BenchmarkId::new(label, concurrency), &concurrency, |b, &conc| {
                b.iter_custom(|iters| run_commits(&rt, &store, &counter, iters, conc, push))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, index, commit, commit_log);
criterion_main!(benches);
