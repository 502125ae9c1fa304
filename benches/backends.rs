//! The push path with a `forward` rule next to a plain rule, in the same run (issue 16): one
//! `Pipeline::process` per push, SQLite store without fsync (`SyncMode::Off`, so the numbers
//! are kefu's work, not the disk's), a backend in the process that answers at once (so they
//! are not the network's either). A plain push is one commit; a forwarded one is the push's
//! commit with its forward record, the call on the forwarder's task, the answer's own commit
//! and the wake-up of the waiting push — the ratio is what forwarding costs the push path.
//!
//! Run: `cargo bench --bench backends -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kefu::backends::{Answer, Backend, Backends, CallError, ForwardRequest};
use kefu::config::{
    BackendConfig, BackendKind, DeliveryConfig, HttpConfig, SyncMode, WindowConfig,
};
use kefu::delivery::CustomerService;
use kefu::metrics::Metrics;
use kefu::model::{Secret, SharedClock, SystemClock};
use kefu::pipeline::forward::Forwarder;
use kefu::pipeline::{Intake, Pipeline};
use kefu::rules::{RuleSet, Rules};
use kefu::store::{SqliteStore, Store};

const RULES: &str = r#"
[[rule]]
name = "plain"
[rule.when]
text_contains = "你好"
[[rule.reply]]
text = "您好，请问有什么可以帮您？"

[[rule]]
name = "ask-orders"
[rule.when]
text_contains = "订单"
[[rule.reply]]
forward = "orders"
fallback = "抱歉，暂时无法查询。"
"#;

/// A backend in the process: answers every request at once with one text.
struct Instant;

#[async_trait]
impl Backend for Instant {
    fn name(&self) -> &str {
        "orders"
    }
    async fn call(&self, req: &ForwardRequest) -> Result<Answer, CallError> {
        Ok(Answer::text(&req.rule, "订单已发货"))
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let clock: SharedClock = Arc::new(SystemClock);
    let window = WindowConfig::default();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(dir.path(), &window, 660, SyncMode::Off, clock.clone()).expect("store"),
    );
    let loaded = RuleSet::from_sources_with(
        vec![(PathBuf::from("bench.toml"), RULES.to_string())],
        &window,
        &["orders".to_string()],
    )
    .unwrap_or_else(|d| panic!("bench rules: {}", d[0]));
    let rules = Arc::new(Rules::new(loaded));
    let metrics = Arc::new(Metrics::new());
    let wake = Arc::new(tokio::sync::Notify::new());
    let delivery = DeliveryConfig::default();
    let cs = Arc::new(CustomerService::new(delivery.customer_service));
    let mut backends = Backends::default();
    backends.insert(
        BackendConfig {
            name: "orders".into(),
            kind: BackendKind::Http(HttpConfig {
                url: "http://in-process".into(),
                secret: Secret::default(),
            }),
            timeout: Duration::from_secs(10),
            retries: 0,
            rate_limit: None,
            rate_limited_text: String::new(),
            max_concurrent: 64,
        },
        Arc::new(Instant),
    );
    let pipeline = rt.block_on(async {
        let forwarder = Forwarder::new(
            store.clone(),
            backends,
            metrics.clone(),
            clock.clone(),
            wake.clone(),
            None,
            &delivery,
            cs.clone(),
            true,
            "default",
        );
        Pipeline::new(store.clone(), rules, true, metrics, wake)
            .with_delivery(&delivery, cs)
            .with_forwarder(forwarder)
    });
    let n = AtomicU64::new(1);
    let intake = |text: &str| {
        let i = n.fetch_add(1, Ordering::Relaxed);
        let from = format!("oBench{:022}", i % 1000);
        let now = clock.now_secs();
        let push =
            kefu::wechat::inbound::build::text("gh_bench", &from, now, text, i).expect("a push");
        Intake::from_push(&push, clock.now_ms()).expect("a follower")
    };

    let mut g = c.benchmark_group("push_path");
    g.throughput(Throughput::Elements(1));
    g.bench_function("plain_rule", |b| {
        b.iter(|| {
            let p = rt.block_on(pipeline.process(intake("你好"))).expect("processed");
            black_box(p.passive.expect("answered"))
        })
    });
    g.bench_function("forward_rule", |b| {
        b.iter(|| {
            let p = rt.block_on(pipeline.process(intake("我的订单"))).expect("processed");
            black_box(p.passive.expect("the backend's answer is the passive reply"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
