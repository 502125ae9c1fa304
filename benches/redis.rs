//! Latency of the Redis store's hot operations against a real Redis server.
//!
//! Needs `KEFU_TEST_REDIS_URL` (e.g. `redis://127.0.0.1:6379/`); without it the bench prints a
//! notice and measures nothing. Works in a random namespace and deletes it at the end.
//!
//! `cargo bench --bench redis -- --warm-up-time 1 --measurement-time 3`

use std::sync::Arc;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput};
use kefu::config::WindowConfig;
use kefu::model::{
    OpenId, OutMessage, OutboxAction, PlannedAction, SharedClock, SystemClock, Trigger,
    WindowEffect,
};
use kefu::store::{NewOutboxEntry, PushCommit, RedisStore, SqliteStore, Store, Terms};
use rand::Rng;

fn oid(s: &str) -> OpenId {
    OpenId::parse(s).expect("valid openid")
}

fn push(key: String, openid: &OpenId, effect: WindowEffect, at_ms: i64, out: u32) -> PushCommit {
    PushCommit {
        dedupe_key: key,
        openid: openid.clone(),
        effect,
        received_at_ms: at_ms,
        passive: None,
        terms: Terms::default(),
        log: None,
        outbox: (0..out)
            .map(|seq| NewOutboxEntry {
                rule: "r".into(),
                seq,
                action: PlannedAction {
                    rule: "r".into(),
                    action: OutboxAction::Send {
                        message: OutMessage::Text { content: "hi".into() },
                    },
                    delay: Duration::ZERO,
                    kf_account: None,
                    source: Default::default(),
                },
                due_at_ms: at_ms,
            })
            .collect(),
    }
}

fn main() {
    let Ok(url) = std::env::var("KEFU_TEST_REDIS_URL") else {
        eprintln!(
            "skipping: set KEFU_TEST_REDIS_URL=redis://127.0.0.1:6379/ to bench the Redis store"
        );
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let clock: SharedClock = Arc::new(SystemClock);
    let window = WindowConfig::default();
    let ns = format!("kefu-bench:{{{:016x}}}", rand::thread_rng().r#gen::<u64>());
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let open = |dir: &std::path::Path| {
        let outbox = Arc::new(
            SqliteStore::open(dir, &window, 300, kefu::config::SyncMode::Full, clock.clone())
                .unwrap(),
        );
        rt.block_on(RedisStore::open(&url, &ns, outbox, &window, 660, clock.clone()))
            .expect("open the redis store")
    };
    let a = open(dirs[0].path());
    let b = open(dirs[1].path());

    // A follower with an unlimited grant, so every charge is allowed and writes.
    let payer = oid("oBenchPayer");
    let now_ms = clock.now_ms();
    rt.block_on(a.commit_push(push(
        "pay:1".into(),
        &payer,
        WindowEffect::Open(Trigger::Payment),
        now_ms,
        0,
    )))
    .unwrap();
    let stranger = oid("oBenchNever");

    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("redis_store");
    g.bench_function("charge_allowed_same_instance", |bch| {
        bch.iter(|| rt.block_on(a.charge(&payer, clock.now_secs())).unwrap())
    });
    // Alternating instances: every charge starts from a stale guess (two round trips).
    let mut flip = false;
    g.bench_function("charge_allowed_alternating_instances", |bch| {
        bch.iter(|| {
            flip = !flip;
            let s = if flip { &a } else { &b };
            rt.block_on(s.charge(&payer, clock.now_secs())).unwrap()
        })
    });
    g.bench_function("charge_denied_no_window", |bch| {
        bch.iter(|| rt.block_on(a.charge(&stranger, clock.now_secs())).unwrap())
    });
    let mut n = 0u64;
    g.bench_function("commit_push_open_no_outbox", |bch| {
        bch.iter(|| {
            n += 1;
            let o = oid(&format!("oBenchP{}", n % 1000));
            let p = push(
                format!("msg:a{n}"),
                &o,
                WindowEffect::Open(Trigger::Message),
                clock.now_ms(),
                0,
            );
            rt.block_on(a.commit_push(p)).unwrap()
        })
    });
    g.bench_function("commit_push_open_one_entry_durable_outbox", |bch| {
        bch.iter(|| {
            n += 1;
            let o = oid(&format!("oBenchP{}", n % 1000));
            let p = push(
                format!("msg:b{n}"),
                &o,
                WindowEffect::Open(Trigger::Message),
                clock.now_ms(),
                1,
            );
            rt.block_on(a.commit_push(p)).unwrap()
        })
    });
    // Throughput: 64 concurrent charges on one contended follower, split across instances.
    for followers in [1usize, 64] {
        let ids: Vec<OpenId> = (0..followers).map(|i| oid(&format!("oBenchC{i}"))).collect();
        for o in &ids {
            rt.block_on(a.commit_push(push(
                format!("pay:c{o}"),
                o,
                WindowEffect::Open(Trigger::Payment),
                clock.now_ms(),
                0,
            )))
            .unwrap();
        }
        g.throughput(Throughput::Elements(64));
        g.bench_with_input(
            BenchmarkId::new("64_concurrent_charges_followers", followers),
            &ids,
            |bch, ids| {
                bch.iter(|| {
                    rt.block_on(async {
                        let mut tasks = Vec::with_capacity(64);
                        for i in 0..64 {
                            let s = if i % 2 == 0 { a.clone() } else { b.clone() };
                            let o = ids[i % ids.len()].clone();
                            let now = clock.now_secs();
                            tasks.push(tokio::spawn(async move { s.charge(&o, now).await }));
                        }
                        for t in tasks {
                            t.await.unwrap().unwrap();
                        }
                    })
                })
            },
        );
    }
    g.finish();
    c.final_summary();
    rt.block_on(a.delete_namespace()).unwrap();
}
