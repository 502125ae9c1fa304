//! Issue 9, shown end to end: two real `kefu serve` processes (the built binary, as operators
//! run it) on one Redis and one mock WeChat API behave as one kefu — one reply set per push,
//! one token fetch, one quota per follower — and ride out a Redis restart without losing or
//! repeating an acknowledged push.
//!
//! Each test starts its own pair with a fresh random `app_id`, so its Redis namespace
//! (`kefu:{app_id}`) is its own; the keys are deleted when the pair is dropped. The Redis server
//! comes from `KEFU_TEST_REDIS_URL` (the restart test runs a private `redis-server`); the
//! helpers in `redis.rs` make these tests fail under CI and skip with a notice elsewhere when
//! Redis is missing.
//!
//! Everything waits by polling with generous deadlines: the machine running these may be small
//! and busy, and a deadline only bounds how long a failing test takes.

use std::collections::{BTreeMap, VecDeque};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::mock_wechat::{MockWechat, RecordedRequest};
use parking_lot::Mutex;
use rand::Rng;
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::helpers::{ACCOUNT, TOKEN, now_secs, signed_query};
use crate::redis::{RedisChild, redis_server_binary, test_redis_url};

const SEND_PATH: &str = "/cgi-bin/message/custom/send";
const ADMIN_TOKEN: &str = "scale-admin-token-0123456789";
const APP_SECRET: &str = "scale-app-secret";
/// How long a kefu child may take to start (it opens Redis and SQLite, loads the rules).
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long the sends of a test may take to reach the mock.
const SEND_DEADLINE: Duration = Duration::from_secs(60);

fn rules_dir() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/scale/rules")
}

/// `wx` and 16 random hex digits: a fresh namespace per test.
fn random_app_id() -> String {
    format!("wx{:016x}", rand::thread_rng().r#gen::<u64>())
}

// ---------------------------------------------------------------------------------------------
// One `kefu serve` child

struct Kefu {
    name: &'static str,
    child: Option<Child>,
    /// `http://127.0.0.1:PORT`
    base: String,
    /// The last log lines, shown when a test fails.
    log: Arc<Mutex<VecDeque<String>>>,
    _dir: TempDir,
}

impl Kefu {
    /// Starts `kefu serve` on a free port with its own state dir and waits for its
    /// "listening" line. Every inherited `KEFU_*` variable is removed, so only this config
    /// applies.
    fn spawn(
        name: &'static str,
        redis_url: &str,
        app_id: &str,
        api_base: &str,
        extra_env: &[(&str, &str)],
    ) -> Kefu {
        let dir = TempDir::new().expect("tempdir");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kefu"));
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("KEFU_") {
                cmd.env_remove(k);
            }
        }
        cmd.arg("serve")
            .current_dir(dir.path())
            .env("KEFU_SERVER_LISTEN", "127.0.0.1:0")
            .env("KEFU_WECHAT_TOKEN", TOKEN)
            .env("KEFU_WECHAT_APP_ID", app_id)
            .env("KEFU_WECHAT_APP_SECRET", APP_SECRET)
            .env("KEFU_WECHAT_API_BASE", api_base)
            .env("KEFU_STATE_DIR", dir.path().join("state"))
            .env("KEFU_STATE_REDIS_URL", redis_url)
            .env("KEFU_RULES_DIR", rules_dir())
            .env("KEFU_RULES_HOT_RELOAD", "false")
            .env("KEFU_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("KEFU_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start kefu serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let lines = log.clone();
        // Drains stderr for the child's whole life (a full pipe would block its logging).
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && let Some(a) = v.get("address").and_then(Value::as_str)
                {
                    let _ = tx.send(a.to_string());
                }
                let mut l = lines.lock();
                if l.len() == 200 {
                    l.pop_front();
                }
                l.push_back(line);
            }
        });
        let mut k = Kefu { name, child: Some(child), base: String::new(), log, _dir: dir };
        match rx.recv_timeout(START_DEADLINE) {
            Ok(addr) => k.base = format!("http://{addr}"),
            Err(_) => panic!("kefu {name} did not start:\n{}", k.tail()),
        }
        k
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn tail(&self) -> String {
        let l = self.log.lock();
        l.iter().skip(l.len().saturating_sub(40)).cloned().collect::<Vec<_>>().join("\n")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Kefu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- last log lines of kefu {} ----\n{}", self.name, self.tail());
        }
        self.kill();
    }
}

// ---------------------------------------------------------------------------------------------
// Two instances, one Redis, one mock API

struct Pair {
    mock: MockWechat,
    a: Kefu,
    b: Kefu,
    redis_url: String,
    app_id: String,
    http: reqwest::Client,
}

impl Pair {
    fn start(redis_url: &str, extra_env: &[(&str, &str)]) -> Pair {
        let mock = MockWechat::start();
        let app_id = random_app_id();
        let a = Kefu::spawn("A", redis_url, &app_id, &mock.url(), extra_env);
        let b = Kefu::spawn("B", redis_url, &app_id, &mock.url(), extra_env);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Pair { mock, a, b, redis_url: redis_url.to_string(), app_id, http }
    }

    fn both(&self) -> [&Kefu; 2] {
        [&self.a, &self.b]
    }

    /// A plaintext push signed now, as WeChat delivers it: (status, body).
    async fn push(&self, to: &Kefu, xml: &str) -> (u16, String) {
        push_to(&self.http, &to.base, xml).await
    }

    /// `POST /admin/send[?force=true]` with a text message: (status, body).
    async fn admin_send(&self, to: &Kefu, openid: &str, text: &str, force: bool) -> (u16, Value) {
        let body = json!({"touser": openid, "msgtype": "text", "text": {"content": text}});
        let r = self
            .http
            .post(to.url(if force { "/admin/send?force=true" } else { "/admin/send" }))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("POST /admin/send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `GET /admin/windows/{openid}` from one instance.
    async fn window(&self, at: &Kefu, openid: &str) -> Value {
        let r = self
            .http
            .get(at.url(&format!("/admin/windows/{openid}")))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("GET /admin/windows");
        assert_eq!(r.status().as_u16(), 200, "window of {openid} from kefu {}", at.name);
        r.json().await.expect("window JSON")
    }

    /// Waits until neither instance has a planned message for `openid` left (pending or in
    /// flight): after that no more sends for it can reach the mock.
    async fn wait_drained(&self, openid: &str) {
        let deadline = Instant::now() + SEND_DEADLINE;
        loop {
            let mut left = 0;
            for k in self.both() {
                left += self.window(k, openid).await["pending"].as_u64().expect("pending");
            }
            if left == 0 {
                return;
            }
            assert!(Instant::now() < deadline, "{left} messages for {openid} still planned");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until both instances' outbox gauge is 0: every planned message was sent or
    /// dropped.
    async fn wait_all_drained(&self) {
        let deadline = Instant::now() + SEND_DEADLINE;
        loop {
            let mut left = 0.0;
            for k in self.both() {
                let text = self
                    .http
                    .get(k.url("/metrics"))
                    .send()
                    .await
                    .expect("GET /metrics")
                    .text()
                    .await
                    .expect("metrics text");
                left += metric(&text, "outbox_depth").expect("an outbox_depth gauge");
            }
            if left == 0.0 {
                return;
            }
            assert!(Instant::now() < deadline, "{left} planned messages still not sent");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The `custom/send` bodies the mock received for `openid`, in arrival order.
    fn sends_to(&self, openid: &str) -> Vec<RecordedRequest> {
        self.mock
            .requests_to(SEND_PATH)
            .into_iter()
            .filter(|r| r.json().is_some_and(|v| v["touser"] == openid))
            .collect()
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        // The children first, so nothing writes the namespace while it is deleted.
        self.a.kill();
        self.b.kill();
        delete_namespace(&self.redis_url, &format!("kefu:{{{}}}", self.app_id));
    }
}

/// Best effort: the server may be gone (the restart test).
fn delete_namespace(url: &str, ns: &str) {
    let Ok(mut con) = ::redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_millis(500)))
    else {
        return;
    };
    let keys: Vec<String> = ::redis::Commands::scan_match(&mut con, format!("{ns}:*"))
        .map(|i| i.collect())
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: ::redis::RedisResult<i64> = ::redis::cmd("DEL").arg(&keys).query(&mut con);
    }
}

async fn push_to(http: &reqwest::Client, base: &str, xml: &str) -> (u16, String) {
    let nonce = format!("n{}", rand::thread_rng().r#gen::<u32>());
    let q = signed_query(TOKEN, now_secs(), &nonce);
    let r = http
        .post(format!("{base}/wechat"))
        .query(&q)
        .body(xml.to_string())
        .send()
        .await
        .expect("POST a push");
    let status = r.status().as_u16();
    (status, r.text().await.expect("push answer"))
}

fn text_xml(from: &str, text: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>\
         <FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{}</CreateTime>\
         <MsgType><![CDATA[text]]></MsgType><Content><![CDATA[{text}]]></Content>\
         <MsgId>{msg_id}</MsgId></xml>",
        now_secs()
    )
}

fn view_xml(from: &str, url: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>\
         <FromUserName><![CDATA[{from}]]></FromUserName><CreateTime>{}</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[VIEW]]></Event>\
         <EventKey><![CDATA[{url}]]></EventKey></xml>",
        now_secs()
    )
}

/// A passive answer without its `<CreateTime>`: a redelivery is rendered again (at its own
/// second) from the stored reply, so only the time may differ.
fn timeless(answer: &str) -> String {
    match (answer.find("<CreateTime>"), answer.find("</CreateTime>")) {
        (Some(a), Some(b)) if a < b => {
            format!("{}{}", &answer[..a], &answer[b + "</CreateTime>".len()..])
        }
        _ => answer.to_string(),
    }
}

fn passive_text(content: &str) -> String {
    format!("<Content><![CDATA[{content}]]></Content>")
}

/// The text of each `custom/send` body.
fn contents(sends: &[RecordedRequest]) -> Vec<String> {
    sends
        .iter()
        .map(|r| {
            r.json()
                .and_then(|v| v["text"]["content"].as_str().map(str::to_string))
                .unwrap_or_else(|| panic!("a custom/send body without text: {}", r.body_text()))
        })
        .collect()
}

/// The value of a sample whose metric name ends with `suffix` (no labels), summed.
fn metric(text: &str, suffix: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.split_once(' ') else { continue };
        if name.ends_with(suffix) {
            let v: f64 = value.trim().parse().ok()?;
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

async fn readyz(http: &reqwest::Client, k: &Kefu) -> u16 {
    match http.get(k.url("/readyz")).timeout(Duration::from_secs(5)).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Polls `/readyz` on both instances until both answer `want`; returns how long it took.
async fn wait_ready(pair: &Pair, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let a = readyz(&pair.http, &pair.a).await;
        let b = readyz(&pair.http, &pair.b).await;
        if a == want && b == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "/readyz still answers A {a}, B {b} after {within:?}; want {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// 1. One push, two instances: one set of sends

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_same_push_on_both_instances_sends_once() {
    let Some(url) = test_redis_url() else { return };
    let pair = Pair::start(&url, &[]);
    let user = "oScaleSamePush000000000000001";

    // Delivered to both at once (WeChat's retry racing the first delivery, say).
    let xml = text_xml(user, "echo one", 7_000_000_001);
    let ((sa, ba), (sb, bb)) = tokio::join!(pair.push(&pair.a, &xml), pair.push(&pair.b, &xml));
    assert_eq!((sa, sb), (200, 200), "A: {ba}\nB: {bb}");
    assert!(ba.contains(&passive_text("first echo one")), "{ba}");
    assert_eq!(timeless(&ba), timeless(&bb), "both instances answer the push the same");

    // Then again, one after the other, and the first push once more on each.
    let xml2 = text_xml(user, "echo two", 7_000_000_002);
    let mut answers = Vec::new();
    for (k, x) in [(&pair.a, &xml2), (&pair.b, &xml2), (&pair.a, &xml2), (&pair.b, &xml)] {
        let (s, body) = pair.push(k, x).await;
        assert_eq!(s, 200, "kefu {}: {body}", k.name);
        answers.push(timeless(&body));
    }
    assert!(answers[0].contains(&passive_text("first echo two")), "{}", answers[0]);
    assert_eq!(answers[1], answers[0]);
    assert_eq!(answers[2], answers[0]);
    assert_eq!(answers[3], timeless(&ba));

    pair.wait_drained(user).await;
    let sends = pair.sends_to(user);
    // Each push's messages leave in plan order from the instance that recorded it; the two
    // pushes may have been recorded by different instances, so across pushes they interleave.
    let sent = contents(&sends);
    for push in ["one", "two"] {
        let of_push: Vec<&str> =
            sent.iter().map(String::as_str).filter(|c| c.ends_with(push)).collect();
        assert_eq!(
            of_push,
            [format!("second echo {push}"), format!("third echo {push}")],
            "exactly one set of customer-service messages for push {push:?}: {sent:?}"
        );
    }
    assert_eq!(pair.mock.count(SEND_PATH), 4);
    // One token for both instances.
    assert_eq!(pair.mock.token_fetches(), 1);
    let token = pair.mock.last_token().expect("a token was handed out");
    assert!(sends.iter().all(|r| r.query("access_token") == Some(token.as_str())));

    // Both read the one ledger: the second message reopened the grant with a fresh quota,
    // charged by the sends that left after it (two to four, depending on timing).
    let (wa, wb) = (pair.window(&pair.a, user).await, pair.window(&pair.b, user).await);
    assert_eq!(wa, wb, "both instances show the same window");
    assert_eq!(wa["grants"].as_array().map(Vec::len), Some(1), "{wa}");
    assert_eq!(wa["grants"][0]["trigger"], "message", "{wa}");
    assert_eq!(wa["grants"][0]["limit"], 5, "{wa}");
    let used = wa["grants"][0]["used"].as_u64().expect("used");
    assert!((2..=4).contains(&used), "{wa}");
}

// ---------------------------------------------------------------------------------------------
// 2. 100 concurrent sends, empty token cache: one token fetch

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_hundred_concurrent_sends_fetch_one_token() {
    let Some(url) = test_redis_url() else { return };
    let pair = Pair::start(&url, &[]);
    assert_eq!(pair.mock.token_fetches(), 0, "nothing fetched a token before the sends");

    let pair = &pair;
    let sends = (0..100).map(|i| {
        let k = if i % 2 == 0 { &pair.a } else { &pair.b };
        let openid = format!("oScaleToken{i:03}");
        async move { (i, pair.admin_send(k, &openid, &format!("hello {i}"), true).await) }
    });
    for (i, (status, body)) in futures::future::join_all(sends).await {
        assert_eq!(status, 200, "send {i}: {body}");
        assert_eq!(body["errcode"], 0, "send {i}: {body}");
    }

    assert_eq!(pair.mock.token_fetches(), 1, "the two instances fetched one token between them");
    let token = pair.mock.last_token().expect("a token was handed out");
    let reqs = pair.mock.requests_to(SEND_PATH);
    assert_eq!(reqs.len(), 100);
    let mut by_token: BTreeMap<String, usize> = BTreeMap::new();
    for r in &reqs {
        *by_token.entry(r.query("access_token").unwrap_or("(none)").to_string()).or_default() += 1;
    }
    assert_eq!(by_token, BTreeMap::from([(token, 100)]), "every send carries the one token");
    let mut users: Vec<String> =
        reqs.iter().filter_map(|r| r.json()?["touser"].as_str().map(str::to_string)).collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 100, "each follower got its message once");

    // Each instance counts only the tokens it fetched itself.
    let mut refreshes = 0.0;
    for k in pair.both() {
        let text = pair.http.get(k.url("/metrics")).send().await.unwrap().text().await.unwrap();
        refreshes += metric(&text, "token_refreshes_total").expect("token_refreshes_total");
    }
    assert_eq!(refreshes, 1.0);
}

// ---------------------------------------------------------------------------------------------
// 3. One follower's quota of 5 under concurrent pushes and sends on both

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_quota_of_five_holds_across_both_instances() {
    let Some(url) = test_redis_url() else { return };
    // Passive replies off: every planned reply is a customer-service message and costs quota.
    let pair = Pair::start(&url, &[("KEFU_RULES_PASSIVE_FIRST", "false")]);
    let user = "oScaleQuota0000000000000000001";
    let pair = &pair;

    // All at once, on both instances: the one message (delivered to both, as WeChat's retry or
    // a load balancer may) opens the one grant (limit 5) and plans 8 sends on whichever instance
    // records it; a VIEW event to each instance opens nothing and plans 8 more there; 12 manual
    // sends are spread over both. Only the message opens quota, and the instance that records
    // it tries all 8 of its sends after the opening, so exactly 5 messages may leave whatever
    // the interleaving. (Were dedupe or ledger per instance, each would open its own grant.)
    let msg = text_xml(user, "burst", 7_000_000_101);
    let pushes = futures::future::join_all(
        [
            (&pair.a, msg.clone()),
            (&pair.b, msg),
            (&pair.a, view_xml(user, "https://example.com/scale-a")),
            (&pair.b, view_xml(user, "https://example.com/scale-b")),
        ]
        .into_iter()
        .map(|(k, xml)| async move { pair.push(k, &xml).await }),
    );
    let manual = futures::future::join_all((0..12).map(|i| {
        let k = if i % 2 == 0 { &pair.a } else { &pair.b };
        async move { pair.admin_send(k, user, &format!("manual {i}"), false).await }
    }));
    let (pushes, manual) = tokio::join!(pushes, manual);
    for (status, body) in &pushes {
        assert_eq!((*status, body.as_str()), (200, "success"));
    }
    let mut manual_sent = 0;
    for (status, body) in &manual {
        match status {
            200 => manual_sent += 1,
            409 => {
                assert!(body["error"].as_str().is_some_and(|e| e.starts_with("not sent")), "{body}")
            }
            _ => panic!("/admin/send answered {status}: {body}"),
        }
    }

    pair.wait_drained(user).await;
    let sent = contents(&pair.sends_to(user));
    assert_eq!(sent.len(), 5, "the quota of 5 is shared by both instances: {sent:?}");
    assert_eq!(sent.iter().filter(|c| c.starts_with("manual ")).count(), manual_sent, "{sent:?}");
    // The burst leaves in plan order, whichever of its messages got quota.
    let burst: Vec<&String> = sent.iter().filter(|c| c.starts_with("burst ")).collect();
    let mut sorted = burst.clone();
    sorted.sort();
    assert_eq!(burst, sorted);
    for k in pair.both() {
        let w = pair.window(k, user).await;
        assert_eq!(w["grants"][0]["trigger"], "message", "{w}");
        assert_eq!(w["grants"][0]["limit"], 5, "{w}");
        assert_eq!(w["grants"][0]["used"], 5, "{w}");
    }
    // Used up for both: one more manual send is refused on either.
    for k in pair.both() {
        let (status, body) = pair.admin_send(k, user, "one more", false).await;
        assert_eq!(status, 409, "kefu {}: {body}", k.name);
    }
    assert_eq!(pair.sends_to(user).len(), 5);
}

// ---------------------------------------------------------------------------------------------
// 4. Redis restarted mid-run

/// One push of the stream and how it was first answered.
#[derive(Clone, Debug)]
struct Delivery {
    n: u64,
    openid: String,
    xml: String,
    status: u16,
    body: String,
}

fn stream_push(n: u64) -> (String, String) {
    let openid = format!("oScaleStream{n:05}");
    let xml = text_xml(&openid, &format!("stream {n:05}"), 7_100_000_000 + n);
    (openid, xml)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_redis_restart_not_ready_then_recovers_without_losing_a_push() {
    let Some(bin) = redis_server_binary() else { return };
    // Append-only with an fsync per write: what Redis acknowledged survives the kill.
    let mut redis = RedisChild::start(&bin, true);
    let pair = Pair::start(&redis.url(), &[]);

    // A stream of pushes, alternating instances, each from its own follower, for the whole run.
    let log: Arc<Mutex<Vec<Delivery>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let streamer = {
        let (log, next, stop) = (log.clone(), next.clone(), stop.clone());
        let (http, bases) = (pair.http.clone(), [pair.a.base.clone(), pair.b.base.clone()]);
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let (openid, xml) = stream_push(n);
                let (status, body) = push_to(&http, &bases[(n % 2) as usize], &xml).await;
                log.lock().push(Delivery { n, openid, xml, status, body });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let acked = |log: &Mutex<Vec<Delivery>>| log.lock().iter().filter(|d| d.status == 200).count();
    let wait_acked = |target: usize| {
        let log = log.clone();
        async move {
            let deadline = Instant::now() + SEND_DEADLINE;
            while acked(&log) < target {
                assert!(Instant::now() < deadline, "the stream stalled below {target} acks");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_acked(15).await;

    redis.kill();
    let down_after = wait_ready(&pair, 503, Duration::from_secs(20)).await;
    // While Redis is down a push cannot be recorded, so it is refused for redelivery.
    let mut outage = Vec::new();
    for i in 0..4 {
        let n = next.fetch_add(1, Ordering::SeqCst);
        let (openid, xml) = stream_push(n);
        let k = if i % 2 == 0 { &pair.a } else { &pair.b };
        let (status, body) = pair.push(k, &xml).await;
        assert_eq!(status, 503, "kefu {} answered a push while Redis was down: {body}", k.name);
        outage.push(Delivery { n, openid, xml, status, body });
    }

    redis.restart();
    let up_after = wait_ready(&pair, 200, Duration::from_secs(10)).await;
    let acked_at_restart = acked(&log);
    wait_acked(acked_at_restart + 15).await;
    stop.store(true, Ordering::SeqCst);
    streamer.await.expect("the streamer");
    eprintln!(
        "redis restart: not ready {down_after:?} after the kill, ready again {up_after:?} after \
         the restart"
    );

    let mut all = log.lock().clone();
    all.extend(outage);
    all.sort_by_key(|d| d.n);
    for d in &all {
        assert!(
            d.status == 200 || d.status == 503,
            "push {} answered {}: {}",
            d.n,
            d.status,
            d.body
        );
        if d.status == 200 {
            assert!(
                d.body.contains(&passive_text(&format!("ack stream {:05}", d.n))),
                "{}",
                d.body
            );
        }
    }
    let refused = all.iter().filter(|d| d.status == 503).count();
    assert!(refused >= 4, "the outage refused pushes");

    // WeChat redelivers everything (acknowledged or not) to the other instance: all are
    // answered now, an acknowledged one exactly as the first time.
    for d in &all {
        let other = if d.n % 2 == 0 { &pair.b } else { &pair.a };
        let (status, body) = pair.push(other, &d.xml).await;
        assert_eq!(status, 200, "redelivery of push {}: {body}", d.n);
        assert!(body.contains(&passive_text(&format!("ack stream {:05}", d.n))), "{body}");
        if d.status == 200 {
            assert_eq!(timeless(&body), timeless(&d.body), "push {}", d.n);
        }
    }

    pair.wait_all_drained().await;
    let mut sent: BTreeMap<String, usize> = BTreeMap::new();
    for c in contents(&pair.mock.requests_to(SEND_PATH)) {
        *sent.entry(c).or_default() += 1;
    }
    for d in &all {
        let text = format!("cs stream {:05}", d.n);
        let times = sent.get(&text).copied().unwrap_or(0);
        if d.status == 200 {
            assert_eq!(times, 1, "acknowledged push {} ({}) sent {times} times", d.n, d.openid);
        } else {
            // Refused, then redelivered: once, or never if Redis recorded it just before the
            // kill but the answer was lost (at most once, never twice).
            assert!(times <= 1, "push {} ({}) sent {times} times", d.n, d.openid);
        }
    }
    assert_eq!(sent.values().sum::<usize>(), pair.mock.count(SEND_PATH));
    assert!(sent.keys().all(|k| k.starts_with("cs stream ")), "{sent:?}");
    eprintln!(
        "redis restart: {} pushes, {} acknowledged first time, {refused} refused with 503, {} \
         sends",
        all.len(),
        all.len() - refused,
        pair.mock.count(SEND_PATH)
    );
}
