//! Issue 16, backends (interface §7.1–§7.4, §7.7): the real kefu on 127.0.0.1:0 forwarding
//! pushes to a mock backend (a second `MockWechat`, whose `/kefu` path is scripted: delays,
//! statuses, bodies) and delivering the answers to the mock WeChat API. Each test asserts
//! what the backend received (bodies, ids, signatures, counts), the HTTP answers, and what
//! reached `custom/send`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::crash::{Child, child_env, post_push};
use crate::delivery::sent_texts;
use crate::helpers::{ACCOUNT, TOKEN};
use crate::mock_wechat::{MockResponse, MockWechat};
use crate::pipeline::{Kefu, SEND_PATH, TYPING_PATH, content, sends, text_push};
use kefu::config::{
    BackendConfig, BackendKind, Config, CustomerServiceMode, HttpConfig, RateLimit,
};
use kefu::model::Secret;

/// The backend's path on its mock.
const BACKEND_PATH: &str = "/kefu";
const SECRET: &str = "backend-signing-secret";
const FALLBACK: &str = "抱歉，暂时无法查询，请稍后再试。";
const RATE_LIMITED: &str = "消息太频繁了，请稍后再试。";

/// A rule forwarding every text containing 订单 to `orders`, the digits after it captured as
/// `order`.
const RULES: &str = r#"
[[rule]]
name = "ask-orders"
[rule.when]
text_regex = '订单\s*(?P<order>\d*)'
[[rule.reply]]
forward = "orders"
fallback = "抱歉，暂时无法查询，请稍后再试。"
"#;

/// `{"replies":[{"text": t}, ...]}`, answered after `delay`.
fn answer(texts: &[&str], delay: Duration) -> MockResponse {
    let replies: Vec<Value> = texts.iter().map(|t| json!({ "text": t })).collect();
    MockResponse::json(json!({ "replies": replies })).delayed(delay)
}

/// The `orders` backend at `url`, signed with [`SECRET`].
fn orders(url: String) -> BackendConfig {
    BackendConfig {
        name: "orders".into(),
        kind: BackendKind::Http(HttpConfig { url, secret: Secret::new(SECRET) }),
        timeout: Duration::from_secs(10),
        retries: 2,
        rate_limit: None,
        rate_limited_text: RATE_LIMITED.into(),
        max_concurrent: 64,
    }
}

fn rules_dir(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("10-orders.toml"), toml).expect("rule file");
    dir
}

/// kefu with [`RULES`] forwarding to `backend`'s `/kefu`, `edit` applied last.
async fn start(
    mock: &MockWechat,
    backend: &MockWechat,
    rules: &Path,
    edit: impl FnOnce(&mut Config),
) -> Kefu {
    let dir = rules.to_path_buf();
    let url = format!("{}{BACKEND_PATH}", backend.url());
    Kefu::start_with(mock, true, move |c| {
        c.rules.dir = dir;
        c.backends.insert("orders".into(), orders(url));
        edit(c);
    })
    .await
}

/// Waits until `f` holds (panics after `limit`).
async fn until(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

// ---- the request -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_is_the_exact_json_signed_with_the_secret() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.set_default(BACKEND_PATH, answer(&["订单 20240501 已发货"], Duration::ZERO));
    let dir = rules_dir(RULES);
    let kefu = start(&mock, &backend, dir.path(), |_| {}).await;
    let user = "oBackendRequest1";
    let now = kefu.now_secs();

    let (status, a) = kefu.push(&text_push(user, "我的订单20240501到哪了", 7, now)).await;
    assert_eq!((status, content(&a).as_str()), (200, "订单 20240501 已发货"));

    let reqs = backend.requests_to(BACKEND_PATH);
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    let key = kefu::model::DedupeKey::message(ACCOUNT, user, now, 7);
    assert_eq!(
        r.json().expect("JSON body"),
        json!({
            "id": kefu::backends::forward_id(key.as_str()),
            "account": ACCOUNT, "account_name": "default", "openid": user, "received_at": now,
            "rule": "ask-orders",
            "push": {"msgtype": "text", "content": "我的订单20240501到哪了", "msg_id": "7",
                     "event": null, "event_key": null, "media_id": null, "pic_url": null,
                     "recognition": null, "location": null, "captures": {"order": "20240501"}},
            "window": {"open": true, "quota_left": 5, "expires_at": now + 48 * 3600,
                       "customer_service": true}
        })
    );
    assert!(r.body_text().contains("我的订单"), "raw UTF-8: {}", r.body_text());
    assert!(r.header("content-type").unwrap_or("").starts_with("application/json"));
    // The signature, checked as a backend would: HMAC-SHA256(secret, "<timestamp>.<body>").
    let ts = r.header("x-kefu-timestamp").expect("X-Kefu-Timestamp");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(&r.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.header("x-kefu-signature"), Some(want.as_str()));
    assert!((ts.parse::<i64>().unwrap() - now).abs() <= 1, "{ts} vs {now}");
    assert_eq!(mock.count(SEND_PATH), 0);
    let metrics = kefu.shared.metrics.render();
    assert!(
        metrics.contains("kefu_backend_requests_total{backend=\"orders\",outcome=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("kefu_backend_seconds_count{backend=\"orders\"} 1"), "{metrics}");
    kefu.stop().await;
}

// ---- delivery ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_answer_is_the_passive_reply_and_the_rest_goes_through_custom_send_once() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.push(BACKEND_PATH, answer(&["一", "二", "三"], Duration::from_millis(200)));
    let dir = rules_dir(RULES);
    let kefu = start(&mock, &backend, dir.path(), |_| {}).await;
    let user = "oBackendFast1";

    let started = Instant::now();
    let (_, a) = kefu.push(&text_push(user, "订单", 1, kefu.now_secs())).await;
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(content(&a), "一", "the first reply is the passive answer");
    until("two sends", Duration::from_secs(10), || mock.count(SEND_PATH) >= 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sent_texts(&mock), ["二", "三"], "the rest once each, in order");
    assert_eq!(backend.count(BACKEND_PATH), 1);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_goes_through_custom_send_after_the_push_is_answered_with_typing() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.push(BACKEND_PATH, answer(&["已发货"], Duration::from_secs(6)));
    let dir = rules_dir(RULES);
    let kefu = start(&mock, &backend, dir.path(), |c| {
        c.delivery.passive_wait = Duration::from_secs(4);
        c.delivery.pending_text = "正在查询，请稍候……".into();
    })
    .await;
    let user = "oBackendSlow1";

    let started = Instant::now();
    let (status, a) = kefu.push(&text_push(user, "订单 42", 1, kefu.now_secs())).await;
    let took = started.elapsed();
    assert_eq!((status, content(&a).as_str()), (200, "正在查询，请稍候……"));
    assert!(took >= Duration::from_millis(3900) && took < Duration::from_millis(4500), "{took:?}");
    until("the answer via custom/send", Duration::from_secs(10), || mock.count(SEND_PATH) >= 1)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sent_texts(&mock), ["已发货"], "once");
    let typing = mock.requests_to(TYPING_PATH);
    assert_eq!(typing.len(), 1, "typing once while the backend worked");
    assert_eq!(typing[0].json().unwrap(), json!({"touser": user, "command": "Typing"}));
    assert_eq!(backend.count(BACKEND_PATH), 1);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_beside_a_forward_keep_their_order() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.set_default(BACKEND_PATH, answer(&["答一", "答二"], Duration::from_millis(100)));
    let dir = rules_dir(
        r#"
[[rule]]
name = "ask-orders"
[rule.when]
text_contains = "订单"
[[rule.reply]]
text = "稍等，正在查询……"
[[rule.reply]]
forward = "orders"
[[rule.reply]]
text = "还需要别的帮助吗？"
"#,
    );
    let kefu = start(&mock, &backend, dir.path(), |_| {}).await;
    let started = Instant::now();
    let (_, a) = kefu.push(&text_push("oBackendOrder", "订单", 1, kefu.now_secs())).await;
    assert_eq!(content(&a), "稍等，正在查询……", "the text before the forward answers at once");
    assert!(started.elapsed() < Duration::from_secs(1), "no wait: {:?}", started.elapsed());
    until("three sends", Duration::from_secs(10), || mock.count(SEND_PATH) >= 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sent_texts(&mock), ["答一", "答二", "还需要别的帮助吗？"]);
    kefu.stop().await;
}

// ---- failures ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_is_retried_and_answered_once() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.push(BACKEND_PATH, MockResponse::status(500));
    backend.set_default(BACKEND_PATH, answer(&["第二次成功"], Duration::ZERO));
    let dir = rules_dir(RULES);
    let kefu = start(&mock, &backend, dir.path(), |_| {}).await;
    let user = "oBackendRetry1";

    let started = Instant::now();
    let (_, a) = kefu.push(&text_push(user, "订单", 1, kefu.now_secs())).await;
    assert_eq!(content(&a), "第二次成功");
    assert!(started.elapsed() >= Duration::from_secs(1), "backoff 1 s: {:?}", started.elapsed());
    assert_eq!(backend.count(BACKEND_PATH), 2);
    let ids: Vec<Value> =
        backend.requests_to(BACKEND_PATH).iter().map(|r| r.json().unwrap()["id"].clone()).collect();
    assert_eq!(ids[0], ids[1], "the same id on every attempt");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.count(SEND_PATH), 0, "one answer: the passive one");
    let metrics = kefu.shared.metrics.render();
    assert!(metrics.contains("outcome=\"http_5xx\"} 1"), "{metrics}");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_not_retried_and_the_fallback_is_sent() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.push(BACKEND_PATH, MockResponse::status(400));
    backend.set_default(BACKEND_PATH, answer(&["never"], Duration::ZERO));
    let dir = rules_dir(RULES);
    let kefu = start(&mock, &backend, dir.path(), |_| {}).await;

    let (_, a) = kefu.push(&text_push("oBackend400", "订单", 1, kefu.now_secs())).await;
    assert_eq!(content(&a), FALLBACK);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(backend.count(BACKEND_PATH), 1, "no retry after a 4xx");
    assert_eq!(mock.count(SEND_PATH), 0);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_not_retried_and_the_fallback_is_sent() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.push(BACKEND_PATH, MockResponse::json(json!({"replies": [{"sticker": "x"}]})));
    backend.set_default(BACKEND_PATH, answer(&["never"], Duration::ZERO));
    let dir = rules_dir(RULES);
    let kefu = start(&mock, &backend, dir.path(), |_| {}).await;

    let (_, a) = kefu.push(&text_push("oBackendBad", "订单", 1, kefu.now_secs())).await;
    assert_eq!(content(&a), FALLBACK);
    assert_eq!(backend.count(BACKEND_PATH), 1);
    let metrics = kefu.shared.metrics.render();
    assert!(metrics.contains("outcome=\"malformed\"} 1"), "{metrics}");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_refused_sends_the_fallback_after_the_retries() {
    let mock = MockWechat::start();
    let dir = rules_dir(RULES);
    let url = format!("http://127.0.0.1:{}/kefu", closed_port());
    let kefu = Kefu::start_with(&mock, true, |c| {
        c.rules.dir = dir.path().to_path_buf();
        c.backends.insert("orders".into(), orders(url));
    })
    .await;

    let started = Instant::now();
    let (_, a) = kefu.push(&text_push("oBackendRefused", "订单", 1, kefu.now_secs())).await;
    let took = started.elapsed();
    assert_eq!(content(&a), FALLBACK);
    // Three attempts: backoff 1 s, then 2 s.
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(4), "{took:?}");
    let metrics = kefu.shared.metrics.render();
    assert!(
        metrics.contains("kefu_backend_requests_total{backend=\"orders\",outcome=\"connect\"} 3"),
        "{metrics}"
    );
    kefu.stop().await;
}

// ---- redeliveries ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_push_four_times_at_once_calls_the_backend_once_and_answers_once() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.set_default(BACKEND_PATH, answer(&["只答一次"], Duration::from_secs(1)));
    let dir = rules_dir(RULES);
    let kefu = Arc::new(start(&mock, &backend, dir.path(), |_| {}).await);
    let xml = text_push("oBackendFour", "订单", 1, kefu.now_secs());

    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (k, x) = (kefu.clone(), xml.clone());
        tasks.push(tokio::spawn(async move { k.push(&x).await }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(content(&t.await.unwrap().1));
    }
    assert_eq!(answers, ["只答一次"; 4], "every delivery gets the one answer");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(backend.count(BACKEND_PATH), 1, "one backend call");
    assert_eq!(mock.count(SEND_PATH), 0, "and nothing sent besides");
    Arc::try_unwrap(kefu).ok().expect("the only handle").stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_custom_send_the_second_delivery_gets_the_answer_passively() {
    // WeChat's timing: it waits 5 s for the HTTP answer, hangs up, and delivers the push again.
    // Without custom/send kefu must not answer the first delivery with `success` at
    // passive_wait (that would end the retries): it keeps it open, and the second delivery
    // gets the 7-second answer as its passive reply.
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.set_default(BACKEND_PATH, answer(&["七秒后的回答"], Duration::from_secs(7)));
    let dir = rules_dir(RULES);
    let kefu = start(&mock, &backend, dir.path(), |c| {
        c.delivery.customer_service = CustomerServiceMode::Off;
        c.delivery.passive_wait = Duration::from_secs(2);
    })
    .await;
    let user = "oBackendOff1";
    let xml = text_push(user, "订单", 1, kefu.now_secs());

    let started = Instant::now();
    let first = tokio::time::timeout(Duration::from_secs(5), kefu.push(&xml)).await;
    assert!(first.is_err(), "no answer to the first delivery within WeChat's 5 s: {first:?}");
    let (_, second) = kefu.push(&xml).await;
    assert_eq!(content(&second), "七秒后的回答", "the redelivery gets the answer");
    let took = started.elapsed();
    assert!(took > Duration::from_secs(7) && took < Duration::from_millis(7800), "{took:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.count(BACKEND_PATH), 1);
    assert_eq!(mock.count(SEND_PATH) + mock.count(TYPING_PATH), 0, "custom/send is off");
    assert_eq!(kefu.window(user).await["held"], json!(0), "delivered, not held");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_custom_send_an_answer_within_5_s_is_the_first_deliverys() {
    // A 3-second answer with passive_wait = 2s: the first delivery is still open, so it is
    // the passive reply there — no retry needed, nothing held.
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.set_default(BACKEND_PATH, answer(&["三秒后的回答"], Duration::from_secs(3)));
    let dir = rules_dir(RULES);
    let kefu = start(&mock, &backend, dir.path(), |c| {
        c.delivery.customer_service = CustomerServiceMode::Off;
        c.delivery.passive_wait = Duration::from_secs(2);
    })
    .await;
    let user = "oBackendOff2";
    let started = Instant::now();
    let (_, first) = kefu.push(&text_push(user, "订单", 1, kefu.now_secs())).await;
    assert_eq!(content(&first), "三秒后的回答");
    assert!(started.elapsed() < Duration::from_millis(3800), "{:?}", started.elapsed());
    assert_eq!(kefu.window(user).await["held"], json!(0));

    // The third delivery is answered at passive_wait: WeChat may not deliver it again, and
    // `success` keeps the follower from seeing an error. The answer waits for the next push.
    backend.set_default(BACKEND_PATH, answer(&["二十秒后的回答"], Duration::from_secs(20)));
    let xml = text_push(user, "订单", 2, kefu.now_secs());
    for _ in 0..2 {
        let gone = tokio::time::timeout(Duration::from_millis(300), kefu.push(&xml)).await;
        assert!(gone.is_err(), "deliveries 1 and 2 are held open");
    }
    let started = Instant::now();
    let (_, third) = kefu.push(&xml).await;
    assert_eq!(third, "success");
    assert!(started.elapsed() < Duration::from_millis(2500), "{:?}", started.elapsed());
    kefu.stop().await;
}

// ---- durability --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_the_backend_gets_the_same_id_and_one_answer_is_sent() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    // The first call is held far longer than the test; the call after the restart answers.
    backend.push(BACKEND_PATH, answer(&["held"], Duration::from_secs(120)));
    backend.set_default(BACKEND_PATH, answer(&["重启后的回答"], Duration::ZERO));
    let state = tempfile::tempdir().unwrap();
    let dir = rules_dir(RULES);
    let mut env = child_env(&mock, state.path(), true);
    env.retain(|(k, _)| *k != "KEFU_RULES_DIR");
    env.extend([
        ("KEFU_RULES_DIR", dir.path().display().to_string()),
        ("KEFU_BACKENDS_ORDERS_KIND", "http".to_string()),
        ("KEFU_BACKENDS_ORDERS_URL", format!("{}{BACKEND_PATH}", backend.url())),
        ("KEFU_DELIVERY_PASSIVE_WAIT", "1s".to_string()),
    ]);
    let http = reqwest::Client::new();
    let user = "oBackendCrash1";
    let xml = text_push(user, "订单 9", 1, crate::helpers::now_secs());

    let child = Child::spawn(&[], &env, state.path());
    let (status, a) = post_push(&http, &child.webhook(), TOKEN, &xml).await.unwrap();
    assert_eq!((status, a.as_str()), (200, "success"), "answered at passive_wait");
    until("the first call", Duration::from_secs(5), || backend.count(BACKEND_PATH) == 1).await;
    child.kill();

    let child = Child::spawn(&[], &env, state.path());
    until("the call after the restart", Duration::from_secs(10), || {
        backend.count(BACKEND_PATH) == 2
    })
    .await;
    until("one answer", Duration::from_secs(10), || mock.count(SEND_PATH) == 1).await;
    let ids: Vec<Value> =
        backend.requests_to(BACKEND_PATH).iter().map(|r| r.json().unwrap()["id"].clone()).collect();
    assert_eq!(ids[0], ids[1], "the same id after the restart");
    // WeChat's redelivery now: answered, nothing called or sent again.
    let (status, _) = post_push(&http, &child.webhook(), TOKEN, &xml).await.unwrap();
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sent_texts(&mock), ["重启后的回答"], "exactly one answer reached WeChat");
    assert_eq!(backend.count(BACKEND_PATH), 2);
    child.kill();
}

// ---- load --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_pushes_from_fifty_followers_are_answered_once_within_passive_wait() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.set_default(BACKEND_PATH, answer(&["好的"], Duration::from_secs(1)));
    let dir = rules_dir(RULES);
    let passive_wait = Duration::from_secs(2);
    let kefu = Arc::new(
        start(&mock, &backend, dir.path(), |c| {
            c.delivery.passive_wait = passive_wait;
            c.state.sync = kefu::config::SyncMode::Normal;
        })
        .await,
    );
    let now = kefu.now_secs();
    let mut tasks = Vec::new();
    for i in 0..200u64 {
        let user = format!("oBackendLoad{:02}", i % 50);
        let xml = text_push(&user, "订单", 1000 + i, now);
        let k = kefu.clone();
        tasks.push(tokio::spawn(async move {
            // Within a quarter second, as a busy minute's peak arrives (not one instant).
            tokio::time::sleep(Duration::from_millis(i + i / 4)).await;
            let started = Instant::now();
            let (status, a) = k.push(&xml).await;
            (user, status, content(&a), started.elapsed())
        }));
    }
    let mut took = Vec::new();
    let mut passive = std::collections::HashMap::<String, usize>::new();
    for t in tasks {
        let (user, status, answer, d) = t.await.unwrap();
        assert_eq!(status, 200);
        took.push(d);
        if answer == "好的" {
            *passive.entry(user).or_default() += 1;
        } else {
            assert_eq!(answer, "", "success while the answer is not ready");
        }
    }
    took.sort();
    let p99 = took[197];
    assert!(p99 < passive_wait + Duration::from_millis(100), "p99 {p99:?}");
    let n_passive: usize = passive.values().sum();
    // The rest arrive through custom/send, each once.
    until("every answer", Duration::from_secs(20), || n_passive + mock.count(SEND_PATH) >= 200)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(n_passive + mock.count(SEND_PATH), 200, "each push answered once");
    let mut per_user = passive.clone();
    for b in sends(&mock) {
        *per_user.entry(b["touser"].as_str().unwrap().to_string()).or_default() += 1;
    }
    assert!(per_user.len() == 50 && per_user.values().all(|n| *n == 4), "{per_user:?}");
    assert_eq!(backend.count(BACKEND_PATH), 200, "one call per push");
    eprintln!(
        "200 pushes, 50 followers, 1 s backend: p50 {:?}, p99 {p99:?}, max {:?}; {n_passive} \
         answered passively, {} through custom/send",
        took[100],
        took[199],
        mock.count(SEND_PATH)
    );
    Arc::try_unwrap(kefu).ok().expect("the only handle").stop().await;
}

// ---- rate limit --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_the_rule_answers_rate_limited_text_for_that_follower_only() {
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.set_default(BACKEND_PATH, answer(&["查到了"], Duration::ZERO));
    let dir = rules_dir(RULES);
    let kefu = start(&mock, &backend, dir.path(), |c| {
        let b = c.backends.get_mut("orders").unwrap();
        b.rate_limit = Some(RateLimit { count: 3, per: Duration::from_secs(60) });
    })
    .await;
    let now = kefu.now_secs();
    let mut got = Vec::new();
    for id in 1..=4 {
        got.push(content(&kefu.push(&text_push("oBackendRate1", "订单", id, now)).await.1));
    }
    assert_eq!(got, ["查到了", "查到了", "查到了", RATE_LIMITED]);
    assert_eq!(backend.count(BACKEND_PATH), 3, "the 4th is not forwarded");
    let (_, other) = kefu.push(&text_push("oBackendRate2", "订单", 5, now)).await;
    assert_eq!(content(&other), "查到了", "another follower is not limited");
    assert_eq!(backend.count(BACKEND_PATH), 4);
    let metrics = kefu.shared.metrics.render();
    assert!(metrics.contains("outcome=\"rate_limited\"} 1"), "{metrics}");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_two_instances_share_the_rate_count() {
    let Some(url) = crate::redis::test_redis_url() else { return };
    let (mock, backend) = (MockWechat::start(), MockWechat::start());
    backend.set_default(BACKEND_PATH, answer(&["查到了"], Duration::ZERO));
    let app_id = format!("wxbackends{:08x}", rand::random::<u32>());
    let backend_url = format!("{}{BACKEND_PATH}", backend.url());
    let edit = |c: &mut Config| {
        c.wechat.app_id = app_id.clone();
        let mut b = orders(backend_url.clone());
        b.rate_limit = Some(RateLimit { count: 3, per: Duration::from_secs(60) });
        c.backends.insert("orders".into(), b);
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = crate::identity::Running::start_edited(&mock, da.path(), Some(&url), RULES, edit).await;
    let b = crate::identity::Running::start_edited(&mock, db.path(), Some(&url), RULES, edit).await;
    let user = "oBackendRedisRate";
    let now = crate::helpers::now_secs();
    let mut got = Vec::new();
    for (id, inst) in [(1, &a), (2, &b), (3, &a), (4, &b)] {
        got.push(content(&inst.push_status(&text_push(user, "订单", id, now)).await.1));
    }
    assert_eq!(got, ["查到了", "查到了", "查到了", RATE_LIMITED], "one count for both");
    assert_eq!(backend.count(BACKEND_PATH), 3);
    a.handle.stop(true).await;
    b.handle.stop(true).await;
}

// ---- the commands ------------------------------------------------------------------------------

/// A config file forwarding to `url`, and a rules dir with [`RULES`], in `dir`.
fn write_config(dir: &Path, url: &str) {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::write(dir.join("rules/10-orders.toml"), RULES).unwrap();
    std::fs::write(
        dir.join("kefu.toml"),
        format!(
            "[rules]\ndir = \"rules\"\n[backends.orders]\nkind = \"http\"\nurl = \"{url}\"\n\
             secret = \"{SECRET}\"\ntimeout = \"2s\"\n"
        ),
    )
    .unwrap();
}

#[test]
fn backends_check_prints_the_answer_or_names_the_cause() {
    let backend = MockWechat::start();
    backend.set_default(BACKEND_PATH, answer(&["检查通过"], Duration::ZERO));
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &format!("{}{BACKEND_PATH}", backend.url()));
    let run = crate::helpers::kefu_in(dir.path(), &[], &["backends", "check"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.starts_with("orders (http): ok in "), "{}", run.stdout);
    assert!(run.stdout.contains("检查通过"), "{}", run.stdout);
    let body = backend.requests_to(BACKEND_PATH)[0].json().unwrap();
    assert_eq!(body["push"]["content"], "kefu backends check");
    assert!(!run.stdout.contains(SECRET) && !run.stderr.contains(SECRET));

    backend.push(BACKEND_PATH, MockResponse::status(404));
    let run = crate::helpers::kefu_in(dir.path(), &[], &["backends", "check", "orders"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("FAILED") && run.stdout.contains("answered HTTP 404"),
        "{}",
        run.stdout
    );
    assert_eq!(backend.count(BACKEND_PATH), 2, "once: no retry in a check");

    let refused = format!("KEFU_BACKENDS_ORDERS_URL=http://127.0.0.1:{}/kefu", closed_port());
    let (k, v) = refused.split_once('=').unwrap();
    let run = crate::helpers::kefu_in(dir.path(), &[(k, v)], &["backends", "check"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("connection refused"), "{}", run.stderr);

    let run = crate::helpers::kefu_in(dir.path(), &[], &["backends", "check", "nope"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("no backend `nope`: the configured backends are orders"),
        "{}",
        run.stderr
    );
}

#[test]
fn rules_check_and_simulate_show_forwards() {
    let backend = MockWechat::start();
    backend.set_default(BACKEND_PATH, answer(&["模拟的回答"], Duration::ZERO));
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &format!("{}{BACKEND_PATH}", backend.url()));

    let run = crate::helpers::kefu_in(
        dir.path(),
        &[],
        &["simulate", "--text", "订单 1", "--from", "oSimulatedFollower000000000"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("forward → orders (rule ask-orders)"), "{}", run.stdout);
    assert_eq!(backend.count(BACKEND_PATH), 0, "not called without --call-backends");

    let run = crate::helpers::kefu_in(
        dir.path(),
        &[],
        &["simulate", "--text", "订单 1", "--call-backends"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.contains("模拟的回答"), "{}", run.stdout);
    assert!(run.stdout.contains("passive reply (the HTTP answer)"), "{}", run.stdout);
    assert_eq!(backend.count(BACKEND_PATH), 1);

    // Slower than passive_wait: simulate says what serve does — not the HTTP answer.
    backend.push(BACKEND_PATH, answer(&["迟到的回答"], Duration::from_millis(400)));
    let run = crate::helpers::kefu_in(
        dir.path(),
        &[("KEFU_DELIVERY_PASSIVE_WAIT", "100ms")],
        &["simulate", "--text", "订单 1", "--call-backends"],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("answered after delivery.passive_wait (100ms)"), "{}", run.stderr);
    assert!(run.stdout.contains("passive reply: none"), "{}", run.stdout);
    assert!(run.stdout.contains("迟到的回答"), "sent later: {}", run.stdout);
    assert_eq!(backend.count(BACKEND_PATH), 2);

    // A [[test]] case shows the forward, not calling it.
    let with_case = format!("{RULES}\n[[test]]\ntext = \"订单 1\"\nexpect = [\"ask-orders\"]\n");
    std::fs::write(dir.path().join("rules/10-orders.toml"), with_case).unwrap();
    let run = crate::helpers::kefu_in(dir.path(), &[], &["rules", "check"]);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("-> [ask-orders] forward → orders"), "{}", run.stdout);
    assert_eq!(backend.count(BACKEND_PATH), 2, "still two calls (the --call-backends ones)");

    // A forward to a backend that is not configured: path:line:col.
    std::fs::write(
        dir.path().join("rules/20-bad.toml"),
        "[[rule]]\nname = \"bad\"\n[[rule.reply]]\nforward = \"tickets\"\n",
    )
    .unwrap();
    let run = crate::helpers::kefu_in(dir.path(), &[], &["rules", "check"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(
        all.contains("20-bad.toml:4:11: forward to unknown backend `tickets`: the configured backends are orders"),
        "{all}"
    );
}

// ---- the example backend -------------------------------------------------------------------

/// An example program, built by `cargo test` into target/debug/examples beside this binary.
fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path"); // target/debug/deps/it-…
    let bin =
        exe.parent().and_then(Path::parent).expect("target/debug").join("examples").join(name);
    assert!(
        bin.is_file(),
        "{} is not built: `cargo test` builds the examples (or run `cargo build --example {name}`)",
        bin.display()
    );
    bin
}

/// A running example, killed on drop; its stdout drained by a thread.
struct Example(std::process::Child);

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_backend_example_answers_signed_requests() {
    use std::io::BufRead;
    let mut child = std::process::Command::new(example_binary("order_backend"))
        .env("ORDER_BACKEND_LISTEN", "127.0.0.1:0")
        .env("ORDER_BACKEND_SECRET", SECRET)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the example");
    let stdout = child.stdout.take().expect("piped");
    let _example = Example(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(20)).expect("the example prints its address");
    let url = first.strip_prefix("order_backend listening on ").expect(&first).to_string();

    // Unsigned: refused.
    let http = reqwest::Client::new();
    let r = http.post(&url).body("{}").send().await.expect("POST");
    assert_eq!(r.status().as_u16(), 401);

    // Through kefu: the order's status is the passive answer, the second reply follows.
    let mock = MockWechat::start();
    let dir = rules_dir(RULES);
    let kefu = Kefu::start_with(&mock, true, |c| {
        c.rules.dir = dir.path().to_path_buf();
        c.backends.insert("orders".into(), orders(url.clone()));
    })
    .await;
    let (_, a) =
        kefu.push(&text_push("oBackendExample", "订单 20240501", 1, kefu.now_secs())).await;
    assert_eq!(content(&a), "订单 20240501：已发货。顺丰 SF1234567890，预计明天送达。");
    until("the second reply", Duration::from_secs(10), || mock.count(SEND_PATH) == 1).await;
    assert_eq!(sent_texts(&mock), ["还有其他问题吗？回复「人工」转人工客服。"]);
    let (_, a) = kefu.push(&text_push("oBackendExample", "订单 99", 2, kefu.now_secs())).await;
    assert_eq!(content(&a), "没有找到订单 99，请核对订单号。");
    kefu.stop().await;
}
