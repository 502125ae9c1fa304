//! Operations (issue 7), end to end: `/metrics` counts exactly what a scripted run did,
//! `/readyz` tells ready from not ready, no output line of a full scenario against the `kefu`
//! binary carries a secret (every secret configured, debug logging, text and JSON), JSON logs
//! are JSON and carry the push span, and `kefu completions` prints usable scripts.
//!
//! The in-process tests start the real service through `Service::build` (store, rules, API
//! client, pipeline, sender) against `MockWechat`; the binary tests run `kefu serve` and the CLI
//! as an operator would.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mock_wechat::{MockResponse, MockWechat};
use base64::Engine;
use kefu::config::Config;
use kefu::model::{ManualClock, Secret, SharedClock};
use kefu::service::Service;
use kefu::wechat::crypto::AesKey;
use parking_lot::Mutex;
use serde_json::{Value, json};

use crate::helpers::{ACCOUNT, APP_ID, TOKEN, encrypted_push, now_secs, signed_query, test_config};

const SEND: &str = "/cgi-bin/message/custom/send";
const STABLE: &str = "/cgi-bin/stable_token";
/// Generous: the machine is shared and loaded; a pass takes well under a second.
const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) fn fixture_dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ops").join(rel)
}

/// Copies every file of `from` into `to` (created if needed).
pub(crate) fn copy_files(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for e in std::fs::read_dir(from).expect("read fixture dir") {
        let p = e.expect("dir entry").path();
        if p.is_file() {
            std::fs::copy(&p, to.join(p.file_name().expect("file name"))).expect("copy fixture");
        }
    }
}

/// A text push from `from`, stamped now, to the fixtures' account.
pub(crate) fn text_xml(from: &str, content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{from}]]>\
         </FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>",
        now_secs()
    )
}

fn event_xml(from: &str, event: &str, key: &str) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{from}]]>\
         </FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[{event}]]></Event><EventKey><![CDATA[{key}]]></EventKey></xml>",
        now_secs()
    )
}

/// Polls `check` until it holds; fails with `what` after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The samples of one metric family in a Prometheus/OpenMetrics text page, keyed by their
/// label set as written (`{kind="text",outcome="fresh"}`, or "" for none).
fn samples(page: &str, name: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else { continue };
        let Some(labels) = key.strip_prefix(name) else { continue };
        if labels.is_empty() || labels.starts_with('{') {
            let v: f64 = value.parse().unwrap_or_else(|_| panic!("bad sample value: {line}"));
            out.insert(labels.to_string(), v);
        }
    }
    out
}

fn expect(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

// ---------------------------------------------------------------------------------------------
// The in-process service

/// The in-process service of [`start_service_with`].
pub(crate) struct Running {
    pub(crate) base: String,
    pub(crate) cfg: Config,
    pub(crate) http: reqwest::Client,
    pub(crate) handle: actix_web::dev::ServerHandle,
    pub(crate) admin: String,
}

pub(crate) const ADMIN: &str = "ops-admin-token-4f1c9a7e";

/// The service against `mock`, rules copied from the fixture into `dir/rules`, state in
/// `dir/state`, the clock frozen at the real now (the menu window of a minute never ends).
async fn start_service(mock: &MockWechat, dir: &Path) -> Running {
    start_service_with(mock, dir, |_| {}).await
}

/// [`start_service`] with `edit` applied to the config last.
pub(crate) async fn start_service_with(
    mock: &MockWechat,
    dir: &Path,
    edit: impl FnOnce(&mut Config),
) -> Running {
    copy_files(&fixture_dir("rules"), &dir.join("rules"));
    let mut cfg = test_config();
    cfg.wechat.app_secret = Secret::new("ops-metrics-app-secret");
    cfg.wechat.api_base = mock.url();
    cfg.state.dir = dir.join("state");
    cfg.rules.dir = dir.join("rules");
    // Reloads only through the admin API, so the reload counters are exact.
    cfg.rules.hot_reload = false;
    cfg.admin.token = Secret::new(ADMIN);
    cfg.server.max_body_bytes = 4096;
    edit(&mut cfg);
    let clock: SharedClock = Arc::new(ManualClock::new(now_secs() * 1000));
    let service = Service::build(cfg.clone(), clock).await.expect("the service starts");
    let base = format!("http://{}", service.local_addr());
    let handle = service.handle();
    tokio::spawn(service.run_until_stopped());
    let admin = cfg.admin.token.expose().to_string();
    Running { base, cfg, http: reqwest::Client::new(), handle, admin }
}

impl Running {
    async fn push(&self, xml: &str) -> (u16, String) {
        self.push_signed(&signed_query(TOKEN, now_secs(), "ops-nonce"), xml.to_string()).await
    }

    async fn push_signed(&self, q: &[(String, String)], body: String) -> (u16, String) {
        let url = format!("{}{}", self.base, self.cfg.server.path);
        let r = self.http.post(url).query(q).body(body).send().await.expect("POST push");
        let status = r.status().as_u16();
        (status, r.text().await.expect("push answer"))
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = self.http.get(format!("{}{path}", self.base)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.text().await.expect("body"))
    }

    async fn admin_post(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut rb = self.http.post(format!("{}{path}", self.base));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        let r = rb.send().await.expect("POST admin");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn window(&self, openid: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/admin/windows/{openid}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .expect("GET window");
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.expect("window JSON")
    }

    async fn pending(&self, openid: &str) -> u64 {
        self.window(openid).await["pending"].as_u64().unwrap_or(u64::MAX)
    }

    async fn metrics(&self) -> String {
        let (status, page) = self.get("/metrics").await;
        assert_eq!(status, 200, "{page}");
        page
    }
}

const U1: &str = "oOpsFollower00000000000001";
const U2: &str = "oOpsFollower00000000000002";
const U3: &str = "oOpsFollower00000000000003";
const U4: &str = "oOpsFollower00000000000004";
const U5: &str = "oOpsFollower00000000000005";
const U6: &str = "oOpsFollower00000000000006";
const PASSIVE: &str = "<Content><![CDATA[价格表见菜单。]]></Content>";

/// The Show of issue 7: a scripted run, then every counter asserted to its exact value.
#[tokio::test]
async fn metrics_count_exactly_what_a_scripted_run_did() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start_service(&mock, dir.path()).await;

    // U1: `price` fires; the passive reply answers, two customer-service messages follow.
    let first = text_xml(U1, "请问价格", 1001);
    let (status, body) = app.push(&first).await;
    assert_eq!(status, 200);
    assert!(body.contains(PASSIVE), "{body}");
    eventually("U1's two sends", || async { mock.count(SEND) == 2 && app.pending(U1).await == 0 })
        .await;

    // WeChat redelivers it: the same answer, nothing planned or sent again.
    let (status, again) = app.push(&first).await;
    assert_eq!((status, again.contains(PASSIVE)), (200, true), "{again}");

    // An event no rule matches: acknowledged, a menu window opened, nothing sent.
    let (status, body) = app.push(&event_xml(U2, "CLICK", "NOTHING_MATCHES")).await;
    assert_eq!((status, body.as_str()), (200, "success"));

    // U3: WeChat says the window is closed (45015) at the first send: it is held for U3's next
    // push, and so is the second, which the closed window refuses.
    mock.push_error(SEND, 45015, "response out of time limit or subscription is canceled");
    let (status, body) = app.push(&text_xml(U3, "价格多少", 3001)).await;
    assert_eq!((status, body.contains(PASSIVE)), (200, true), "{body}");
    eventually("U3's failed send", || async {
        mock.count(SEND) == 3 && app.pending(U3).await == 0
    })
    .await;

    // U4: the quota is used up (45047); both messages are held for U4's next push.
    mock.push_error(SEND, 45047, "out of response count limit");
    let (status, body) = app.push(&text_xml(U4, "价格", 4001)).await;
    assert_eq!((status, body.contains(PASSIVE)), (200, true), "{body}");
    eventually("U4's failed send", || async {
        mock.count(SEND) == 4 && app.pending(U4).await == 0
    })
    .await;
    let w4 = app.window(U4).await;
    assert_eq!(w4["open"], json!(false), "an exhausted window is not open: {w4}");
    assert_eq!(w4["grants"][0]["used"], w4["grants"][0]["limit"], "{w4}");

    // Refused pushes: a bad signature, and a body over server.max_body_bytes.
    let mut bad = signed_query(TOKEN, now_secs(), "ops-nonce");
    bad[0].1 = "0".repeat(40);
    let (status, _) = app.push_signed(&bad, text_xml(U1, "价格", 1002)).await;
    assert_eq!(status, 401);
    let big = text_xml(U1, &"价".repeat(2000), 1003);
    let (status, _) = app.push(&big).await;
    assert_eq!(status, 413);

    // Reloads: without the admin token nothing happens; a good one; a broken one that keeps
    // the old rules and reports every error.
    let (status, _) = app.admin_post("/admin/rules/reload", None).await;
    assert_eq!(status, 401);
    let rules_dir = dir.path().join("rules");
    std::fs::copy(fixture_dir("extra.toml"), rules_dir.join("30-extra.toml")).expect("copy");
    let (status, body) = app.admin_post("/admin/rules/reload", Some(ADMIN)).await;
    assert_eq!((status, body), (200, json!({"ok": true, "rules": 3})));
    copy_files(&fixture_dir("broken"), &rules_dir);
    let (status, body) = app.admin_post("/admin/rules/reload", Some(ADMIN)).await;
    assert_eq!(status, 422, "{body}");
    let shown = |f: &str| rules_dir.join(f).display().to_string();
    let errors: Vec<String> = body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e.as_str().expect("error line").to_string())
        .collect();
    let expected_errors = broken_reload_errors(&shown("10-ops.toml"), &shown("20-more.toml"));
    assert_eq!(errors, expected_errors, "{body}");
    assert_eq!(body["ok"], json!(false));

    // The old rules are still active: U5 gets `price` as before, both sends go out.
    let (status, body) = app.push(&text_xml(U5, "价格", 5001)).await;
    assert_eq!((status, body.contains(PASSIVE)), (200, true), "{body}");
    eventually("U5's two sends", || async { mock.count(SEND) == 6 && app.pending(U5).await == 0 })
        .await;

    // U6: a message planned an hour ahead waits in the outbox.
    let (status, body) = app.push(&text_xml(U6, "稍后", 6001)).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    assert_eq!(app.pending(U6).await, 1);

    let page = app.metrics().await;
    let check = |name: &str, want: &[(&str, f64)]| {
        assert_eq!(samples(&page, name), expect(want), "{name} in\n{page}");
    };
    check(
        "kefu_pushes_total",
        &[
            (r#"{kind="CLICK",outcome="fresh"}"#, 1.0),
            (r#"{kind="text",outcome="duplicate"}"#, 1.0),
            (r#"{kind="text",outcome="fresh"}"#, 5.0),
        ],
    );
    check(
        "kefu_refusals_total",
        &[
            (r#"{endpoint="webhook",reason="bad_signature"}"#, 1.0),
            (r#"{endpoint="webhook",reason="too_large"}"#, 1.0),
        ],
    );
    check("kefu_rule_hits_total", &[(r#"{rule="later"}"#, 1.0), (r#"{rule="price"}"#, 4.0)]);
    check(
        "kefu_sends_total",
        &[
            (r#"{msgtype="text",outcome="failed",errcode="45015"}"#, 1.0),
            (r#"{msgtype="text",outcome="failed",errcode="45047"}"#, 1.0),
            (r#"{msgtype="text",outcome="sent",errcode="0"}"#, 4.0),
        ],
    );
    // Nothing was dropped: what WeChat or the window refused waits for the next push.
    check("kefu_dropped_messages_total", &[]);
    check("kefu_held_answers", &[("", 4.0)]);
    check("kefu_held_delivered_total", &[("", 0.0)]);
    // Every POST is timed: 7 accepted (one a redelivery) and 2 refused.
    check("kefu_answer_seconds_count", &[("", 9.0)]);
    check("kefu_token_refreshes_total", &[("", 1.0)]);
    check("kefu_rule_reloads_total", &[(r#"{outcome="failed"}"#, 1.0), (r#"{outcome="ok"}"#, 1.0)]);
    // U1, U2 (menu), U5 and U6 can be messaged; U3 is closed, U4 used up.
    check("kefu_open_windows", &[("", 4.0)]);
    check("kefu_outbox_depth", &[("", 1.0)]);
    check("kefu_payments_total", &[]);
    assert_eq!(mock.token_fetches(), 1);

    // Scraping changes nothing.
    let again = app.metrics().await;
    for name in ["kefu_pushes_total", "kefu_rule_reloads_total", "kefu_sends_total"] {
        assert_eq!(samples(&again, name), samples(&page, name), "{name}");
    }
    app.handle.stop(true).await;
}

/// The 422 errors for the `broken` fixture, in the order the rules loader reports them.
fn broken_reload_errors(ops: &str, more: &str) -> Vec<String> {
    vec![
        format!("{ops}:6:14: bad regex `(unclosed` in text_regex: unclosed group"),
        format!(
            "{more}:6:1: unknown reply kind `txt` in [[rule.reply]], expected one of `text`, \
             `image`, `voice`, `video`, `music`, `news`, `mpnews`, `mpnewsarticle`, `menu`, \
             `wxcard`, `miniprogram`, `typing`, `transfer`, `forward`, `fallback`, `delay`, `as`"
        ),
    ]
}

/// `/readyz` (interface §3): 200 with the rules loaded, and the rule count.
#[tokio::test]
async fn readyz_is_ready_with_the_rules_loaded() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start_service(&mock, dir.path()).await;
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(
        v,
        json!({"ready": true, "rules": 2, "last_reload_ok": true, "reload_errors": [],
               "problems": []})
    );
    app.handle.stop(true).await;
}

/// `/readyz` answers 503 naming the store when the database is gone from under a running
/// server (`SqliteStore::ping` checks the database file, not only a pooled connection).
#[tokio::test]
async fn readyz_is_unavailable_when_the_database_is_gone() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start_service(&mock, dir.path()).await;
    let (status, _) = app.get("/readyz").await;
    assert_eq!(status, 200);
    std::fs::remove_dir_all(dir.path().join("state")).expect("remove the state dir");
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).expect("readyz JSON");
    assert_eq!(v["ready"], json!(false));
    let problem = v["problems"][0].as_str().unwrap_or("");
    assert!(problem.starts_with("store unreachable: "), "{v}");
    app.handle.stop(true).await;
}

// ---------------------------------------------------------------------------------------------
// The binary: `kefu serve` and the CLI as an operator runs them

/// One line a process wrote, as raw bytes (a leak need not be UTF-8).
pub(crate) type Lines = Arc<Mutex<Vec<Vec<u8>>>>;

/// Reads a pipe to the end on its own thread, one entry per line (without its newline).
pub(crate) fn collect_lines(
    from: impl std::io::Read + Send + 'static,
    into: Lines,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(from);
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if line.last() == Some(&b'\n') {
                        line.pop();
                    }
                    into.lock().push(line);
                }
            }
        }
    })
}

pub(crate) use crate::helpers::kefu_command;

/// What a finished process wrote.
pub(crate) struct Ran {
    pub(crate) what: String,
    pub(crate) code: i32,
    pub(crate) stdout: Vec<Vec<u8>>,
    pub(crate) stderr: Vec<Vec<u8>>,
}

impl Ran {
    fn text(lines: &[Vec<u8>]) -> String {
        lines.iter().map(|l| String::from_utf8_lossy(l).into_owned() + "\n").collect()
    }
    pub(crate) fn stdout(&self) -> String {
        Self::text(&self.stdout)
    }
    pub(crate) fn stderr(&self) -> String {
        Self::text(&self.stderr)
    }
}

pub(crate) fn run_kefu(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Ran {
    let out = kefu_command(dir, env, args).output().expect("run kefu");
    let split = |b: &[u8]| -> Vec<Vec<u8>> {
        if b.is_empty() {
            return Vec::new();
        }
        b.strip_suffix(b"\n").unwrap_or(b).split(|c| *c == b'\n').map(<[u8]>::to_vec).collect()
    };
    Ran {
        what: format!("kefu {}", args.join(" ")),
        code: out.status.code().unwrap_or(-1),
        stdout: split(&out.stdout),
        stderr: split(&out.stderr),
    }
}

/// Removes ANSI colour sequences (`ESC [ ... letter`), which the text format writes between a
/// field's name and its value.
pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running `kefu serve`.
pub(crate) struct Served {
    child: Child,
    addr: String,
    stdout: Lines,
    stderr: Lines,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Starts `kefu serve` and waits for its "kefu listening" line (text or JSON) for the address.
pub(crate) fn serve(dir: &Path, env: &[(&str, &str)], extra_args: &[&str]) -> Served {
    let mut args = vec!["serve"];
    args.extend_from_slice(extra_args);
    let mut child = kefu_command(dir, env, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kefu serve");
    let stdout: Lines = Arc::default();
    let stderr: Lines = Arc::default();
    let readers = vec![
        collect_lines(child.stdout.take().expect("stdout"), stdout.clone()),
        collect_lines(child.stderr.take().expect("stderr"), stderr.clone()),
    ];
    let started = Instant::now();
    let addr = loop {
        let found = stderr.lock().iter().find_map(|l| {
            let line = strip_ansi(&String::from_utf8_lossy(l));
            if !line.contains("kefu listening") {
                return None;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                return v["address"].as_str().map(str::to_string);
            }
            let at = line.find("address=")? + "address=".len();
            line[at..].split_whitespace().next().map(str::to_string)
        });
        if let Some(a) = found {
            break a;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("kefu serve exited ({status}) before listening:\n{}", Ran::text(&stderr.lock()));
        }
        assert!(
            started.elapsed() < PATIENCE,
            "kefu serve is not listening:\n{}",
            Ran::text(&stderr.lock())
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    Served { child, addr, stdout, stderr, readers }
}

impl Served {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What it has written to stderr so far, colours stripped.
    pub(crate) fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lock().iter().map(|l| strip_ansi(&String::from_utf8_lossy(l))).collect()
    }

    /// SIGTERM, then everything it wrote.
    pub(crate) fn stop(mut self) -> Ran {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let started = Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if started.elapsed() > Duration::from_secs(15) {
                let _ = self.child.kill();
                panic!("kefu serve still running 15 s after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        Ran {
            what: "kefu serve".into(),
            code: status.code().unwrap_or(-1),
            stdout: std::mem::take(&mut *self.stdout.lock()),
            stderr: std::mem::take(&mut *self.stderr.lock()),
        }
    }
}

/// A test that fails half-way must not leave a server running.
impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// The secrets of the scenario: distinctive, so any form of them in the output is found.
const APP_SECRET: &str = "AppSecretOps7Qp2Lk9Xz4VbNw";
const WX_TOKEN: &str = "WxTokenOps8fJ2kQ7wZrM3";
const AES_NOW: &str = "R2kpWfBY37mQRTUzQuFow2a5WUMvRR1H7E1FaXuH3AA";
const AES_PREV: &str = "eBHMFG6kV2aihbSWQyP0eoxQTjhwGfSaXUt36NI6h2U";
const ADMIN_TOKEN: &str = "AdminTokOpsZq81Lm27Xv93Kd";
const PAY_V2: &str = "PayV2KeyOpsJ4hT8nR2xW6cV0bM5qL7Z";
const PAY_V3: &str = "PayV3KeyOpsQ1w2E3r4T5y6U7i8O9p0A";
const AT1: &str = "AccessTokOpsFirst5Hn2Rt8Jw";
const AT2: &str = "AccessTokOpsSecond9Kd3Xc6Vq";
const AT3: &str = "AccessTokOpsThird4Mp7Gs1Bz";

/// A needle to look for: a description and the bytes.
struct Needle {
    secret: &'static str,
    form: String,
    bytes: Vec<u8>,
    /// Compared case-insensitively (text forms); raw bytes are compared exactly.
    fold: bool,
}

/// Every form of a secret worth looking for: itself, its halves (a truncated or split leak),
/// its hex and base64; for an EncodingAESKey also the 32 key bytes raw, as hex, as base64
/// (standard and URL-safe), as a Rust byte-array `Debug`, and the IV (the first 16 bytes).
fn needles(name: &'static str, secret: &str) -> Vec<Needle> {
    let text = |form: &str, s: String| Needle {
        secret: name,
        form: form.into(),
        bytes: s.to_ascii_lowercase().into_bytes(),
        fold: true,
    };
    let half = secret.len() / 2;
    let mut out = vec![
        text("itself", secret.to_string()),
        text("first half", secret[..half].to_string()),
        text("second half", secret[half..].to_string()),
        text("hex", hex::encode(secret)),
        text("base64", base64::engine::general_purpose::STANDARD.encode(secret)),
    ];
    if let Ok(key) = AesKey::from_encoding_aes_key(secret) {
        let b = key.as_bytes();
        let b64 = &base64::engine::general_purpose::STANDARD;
        let url = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        out.extend([
            Needle { secret: name, form: "key bytes".into(), bytes: b.to_vec(), fold: false },
            Needle { secret: name, form: "IV bytes".into(), bytes: b[..16].to_vec(), fold: false },
            text("key hex", hex::encode(b)),
            text("IV hex", hex::encode(&b[..16])),
            text("key base64", b64.encode(b)),
            text("key base64url", url.encode(b)),
            text("IV base64", b64.encode(&b[..16])[..20].to_string()),
            text("key Debug", format!("{:?}", &b[..8]).trim_end_matches(']').to_string()),
        ]);
    }
    out
}

fn all_needles(extra: &[(&'static str, String)]) -> Vec<Needle> {
    let mut all = Vec::new();
    for (name, s) in [
        ("wechat.app_secret", APP_SECRET),
        ("wechat.token", WX_TOKEN),
        ("wechat.encoding_aes_key", AES_NOW),
        ("wechat.previous_encoding_aes_key", AES_PREV),
        ("admin.token", ADMIN_TOKEN),
        ("pay.v2_api_key", PAY_V2),
        ("pay.v3_api_key", PAY_V3),
        ("access token 1", AT1),
        ("access token 2", AT2),
        ("access token 3", AT3),
    ] {
        all.extend(needles(name, s));
    }
    for (name, s) in extra {
        all.push(Needle {
            secret: name,
            form: "itself".into(),
            bytes: s.to_ascii_lowercase().into_bytes(),
            fold: true,
        });
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Every (process, stream, secret, form, line) where a secret shows up.
fn leaks(runs: &[&Ran], needles: &[Needle]) -> Vec<String> {
    let mut found = Vec::new();
    for run in runs {
        for (stream, lines) in [("stdout", &run.stdout), ("stderr", &run.stderr)] {
            for line in lines.iter() {
                let folded = strip_ansi(&String::from_utf8_lossy(line)).to_ascii_lowercase();
                for n in needles {
                    let hit = if n.fold {
                        contains(folded.as_bytes(), &n.bytes)
                    } else {
                        contains(line, &n.bytes)
                    };
                    if hit {
                        found.push(format!(
                            "{} {stream}: {} ({}) in: {}",
                            run.what,
                            n.secret,
                            n.form,
                            String::from_utf8_lossy(line)
                        ));
                    }
                }
            }
        }
    }
    found
}

/// `kefu.toml` with every secret set, in `dir`, next to a copy of the rules.
fn write_config(dir: &Path, mock: &MockWechat) {
    copy_files(&fixture_dir("rules"), &dir.join("rules"));
    let pem =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pay/test_platform_pub.pem");
    let toml = format!(
        r#"[server]
listen = "127.0.0.1:0"
max_body_bytes = 4096

[wechat]
app_id = "{APP_ID}"
app_secret = "{APP_SECRET}"
account_id = "{ACCOUNT}"
token = "{WX_TOKEN}"
encoding_aes_key = "{AES_NOW}"
previous_encoding_aes_key = "{AES_PREV}"
api_base = "{api}"

[rules]
dir = "rules"

[state]
dir = "state"

[admin]
token = "{ADMIN_TOKEN}"

[pay]
v2_api_key = "{PAY_V2}"
v3_api_key = "{PAY_V3}"
v3_platform_public_key = "{pem}"
"#,
        api = mock.url(),
        pem = pem.display(),
    );
    std::fs::write(dir.join("kefu.toml"), toml).expect("write kefu.toml");
}

fn key(s: &str) -> AesKey {
    AesKey::from_encoding_aes_key(s).expect("a valid EncodingAESKey")
}

/// A WeChat Pay v2 notification for U1 signed with `PAY_V2` (from the documented sample).
fn v2_notification(total_fee: &str) -> (String, BTreeMap<String, String>) {
    use kefu::pay::v2;
    let sample = crate::helpers::fixture("pay/n1.xml");
    let mut fields = v2::parse_fields(sample.as_bytes()).expect("sample fields");
    fields.remove("sign");
    fields.insert("openid".into(), U1.into());
    fields.insert("total_fee".into(), total_fee.into());
    fields.insert("cash_fee".into(), total_fee.into());
    let sign = v2::sign(&fields, &Secret::new(PAY_V2), v2::SignType::Md5);
    let mut signed = fields.clone();
    signed.insert("sign".into(), sign);
    (v2_xml(&signed), fields)
}

fn v2_xml(fields: &BTreeMap<String, String>) -> String {
    let inner: String = fields.iter().map(|(k, v)| format!("<{k}><![CDATA[{v}]]></{k}>")).collect();
    format!("<xml>{inner}</xml>")
}

/// A v3 notification encrypted with `apiv3_key` and signed with the test platform key.
fn v3_request(
    http: &reqwest::Client,
    url: &str,
    apiv3_key: &str,
    id: &str,
) -> reqwest::RequestBuilder {
    use rsa::pkcs8::DecodePrivateKey;
    let pem = crate::helpers::fixture("pay/test_platform_key.pem");
    let signer = rsa::RsaPrivateKey::from_pkcs8_pem(&pem).expect("test platform key");
    let tx = json!({
        "appid": APP_ID, "mchid": "1230000109", "out_trade_no": "order-ops",
        "transaction_id": id, "trade_type": "JSAPI", "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功", "bank_type": "CMC", "attach": "",
        "success_time": "2024-05-01T08:00:00+08:00",
        "payer": { "openid": U2 },
        "amount": { "total": 100, "payer_total": 100, "currency": "CNY", "payer_currency": "CNY" }
    });
    let body = kefu::pay::v3::build::body(apiv3_key.as_bytes(), &tx, "opsnonce1234", "transaction")
        .expect("v3 body");
    let ts = now_secs().to_string();
    let nonce = "OPSNONCE0000000000000000000000V3";
    let sig = kefu::pay::v3::build::signature(&signer, &ts, nonce, &body);
    http.post(url)
        .header("content-type", "application/json")
        .header("Wechatpay-Timestamp", ts)
        .header("Wechatpay-Nonce", nonce)
        .header("Wechatpay-Serial", "PUB_KEY_ID_OPS")
        .header("Wechatpay-Signature", sig)
        .body(body)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum LogFormat {
    Text,
    Json,
}

/// Everything an operator's day touches, with every secret configured and debug logging on;
/// returns what each process wrote and the signs a forger would have wanted to see.
async fn full_scenario(format: LogFormat) -> (Vec<Ran>, Vec<(&'static str, String)>) {
    let mock = MockWechat::start();
    mock.push_json(STABLE, json!({"access_token": AT1, "expires_in": 7200}));
    mock.push_json(STABLE, json!({"access_token": AT2, "expires_in": 7200}));
    mock.set_default(STABLE, MockResponse::json(json!({"access_token": AT3, "expires_in": 7200})));
    mock.set_default(
        "/cgi-bin/customservice/getkflist",
        MockResponse::json(json!({"kf_list": [{"kf_account": "kf01@gh_4d00ed8d6399",
            "kf_nick": "小助手", "kf_id": 1001, "kf_headimgurl": ""}]})),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &mock);
    // The text run logs as the brief asks for (debug, kefu at trace); the JSON run logs every
    // target at trace (reqwest, hyper, actix-http included), the most anything can show.
    let log: &[(&str, &str)] = match format {
        LogFormat::Text => &[("RUST_LOG", "debug,kefu=trace")],
        LogFormat::Json => &[("RUST_LOG", "trace")],
    };
    let flags: &[&str] = if format == LogFormat::Json { &["--log-format", "json"] } else { &[] };
    let server = serve(dir.path(), log, flags);
    let http = reqwest::Client::new();
    let hook = server.url("/wechat");
    let post = |q: Vec<(String, String)>, body: String| {
        let (http, hook) = (http.clone(), hook.clone());
        async move {
            let r = http.post(hook).query(&q).body(body).send().await.expect("POST");
            let status = r.status().as_u16();
            (status, r.text().await.expect("answer"))
        }
    };
    let signed = |nonce: &str| signed_query(WX_TOKEN, now_secs(), nonce);
    let safe = |xml: &str, k: &str, app_id: &str, compatible: bool| {
        encrypted_push(WX_TOKEN, &key(k), app_id, xml, now_secs(), "ops-aes", compatible)
    };

    // The handshake, right and wrong.
    let mut q = signed("hs");
    q.push(("echostr".into(), "ops-echo-1".into()));
    let r = http.get(&hook).query(&q).send().await.expect("handshake");
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap_or_default()),
        (200, "ops-echo-1".into())
    );
    q[0].1 = "f".repeat(40);
    let r = http.get(&hook).query(&q).send().await.expect("handshake");
    assert_eq!(r.status().as_u16(), 401);

    // A plaintext push; its first send meets 40001, the token is refreshed, the send retried.
    mock.push_error(SEND, 40001, "invalid credential, access_token is invalid or not latest");
    let (status, body) = post(signed("p1"), text_xml(U1, "请问价格", 7001)).await;
    assert_eq!((status, body.contains(PASSIVE)), (200, true), "{body}");
    eventually("U1's sends, one retried after 40001", || async { mock.count(SEND) == 3 }).await;
    assert_eq!(mock.token_fetches(), 2);
    let tokens: Vec<String> = mock
        .requests_to(SEND)
        .iter()
        .map(|r| r.query("access_token").unwrap_or("").to_string())
        .collect();
    assert_eq!(tokens, [AT1, AT2, AT2]);

    // A safe-mode push with the current key; its first send fails (45015).
    mock.push_error(SEND, 45015, "response out of time limit or subscription is canceled");
    let (q, body) = safe(&text_xml(U2, "价格", 7002), AES_NOW, APP_ID, false);
    let (status, answer) = post(q, body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("<Encrypt><![CDATA["), "{answer}");
    eventually("U2's failed send", || async { mock.count(SEND) == 4 }).await;
    // The previous key still decrypts (rotation); compatible mode too.
    let (q, body) = safe(&event_xml(U3, "CLICK", "OPS_MENU"), AES_PREV, APP_ID, false);
    assert_eq!(post(q, body).await, (200, "success".into()));
    let (q, body) = safe(&text_xml(U3, "你好", 7003), AES_NOW, APP_ID, true);
    assert_eq!(post(q, body).await, (200, "success".into()));

    // Bad requests of every kind.
    let (s, _) = post(signed("b1"), "<xml><ToUserName>".into()).await;
    assert_eq!(s, 400);
    let (s, _) = post(signed("b2"), text_xml(U1, &"长".repeat(2000), 7004)).await;
    assert_eq!(s, 413);
    let (mut q, body) = safe(&text_xml(U1, "价格", 7005), AES_NOW, APP_ID, false);
    if let Some(p) = q.iter_mut().find(|(k, _)| k == "msg_signature") {
        p.1 = "0".repeat(40);
    }
    assert_eq!(post(q, body).await.0, 401);
    let (q, body) = safe(&text_xml(U1, "价格", 7006), AES_NOW, "wxSomeoneElse000001", false);
    assert_eq!(post(q, body).await.0, 401);
    let stranger = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
    let (q, body) = safe(&text_xml(U1, "价格", 7007), stranger, APP_ID, false);
    assert_eq!(post(q, body).await.0, 400);
    let stale = signed_query(WX_TOKEN, now_secs() - 3600, "b3");
    assert_eq!(post(stale, text_xml(U1, "价格", 7008)).await.0, 401);
    let doctype = format!("<!DOCTYPE x [<!ENTITY e \"boom\">]>{}", text_xml(U1, "&e;", 7009));
    assert_eq!(post(signed("b4"), doctype).await.0, 400);

    // Admin calls with the right token, a wrong one (the right one plus a character), none.
    let admin = |method: reqwest::Method, path: &str, token: Option<String>| {
        let mut rb = http.request(method, server.url(path));
        if let Some(t) = token {
            rb = rb.header("Authorization", format!("Bearer {t}"));
        }
        rb
    };
    let right = || Some(ADMIN_TOKEN.to_string());
    let wrong = || Some(format!("{ADMIN_TOKEN}x"));
    let get = reqwest::Method::GET;
    let post_m = reqwest::Method::POST;
    let status = |rb: reqwest::RequestBuilder| async move {
        rb.send().await.expect("admin call").status().as_u16()
    };
    assert_eq!(status(admin(get.clone(), &format!("/admin/windows/{U1}"), right())).await, 200);
    assert_eq!(status(admin(get.clone(), &format!("/admin/windows/{U1}"), wrong())).await, 401);
    assert_eq!(status(admin(get.clone(), &format!("/admin/windows/{U1}"), None)).await, 401);
    assert_eq!(status(admin(get.clone(), "/admin/kf/accounts", right())).await, 200);
    assert_eq!(status(admin(get.clone(), "/admin/kf/accounts", wrong())).await, 401);
    let send_body = json!({"touser": U1, "msgtype": "text", "text": {"content": "人工回复"}});
    let r = admin(post_m.clone(), "/admin/send", right()).json(&send_body);
    assert_eq!(status(r).await, 200);
    let r = admin(post_m.clone(), "/admin/send", wrong()).json(&send_body);
    assert_eq!(status(r).await, 401);
    assert_eq!(status(admin(post_m.clone(), "/admin/rules/reload", right())).await, 200);
    assert_eq!(status(admin(post_m.clone(), "/admin/rules/reload", wrong())).await, 401);

    // WeChat Pay: a genuine v2 notification, a tampered one, a genuine v3 one, and a v3 one
    // sealed with another APIv3 key.
    let (genuine, _) = v2_notification("100");
    let r = http.post(server.url("/pay/notify/v2")).body(genuine.clone()).send().await.expect("v2");
    let (s, b) = (r.status().as_u16(), r.text().await.unwrap_or_default());
    assert!(s == 200 && b.contains("SUCCESS"), "{s} {b}");
    let tampered = genuine.replace("<total_fee><![CDATA[100]]>", "<total_fee><![CDATA[1]]>");
    assert_ne!(tampered, genuine);
    let r = http.post(server.url("/pay/notify/v2")).body(tampered).send().await.expect("v2");
    assert_ne!(r.status().as_u16(), 200);
    let (_, mut forged_fields) = v2_notification("100");
    forged_fields.insert("total_fee".into(), "1".into());
    let forged =
        kefu::pay::v2::sign(&forged_fields, &Secret::new(PAY_V2), kefu::pay::v2::SignType::Md5);
    let r =
        v3_request(&http, &server.url("/pay/notify/v3"), PAY_V3, "4200000000202405010000000001");
    let s = r.send().await.expect("v3").status().as_u16();
    assert!((200..300).contains(&s), "{s}");
    let other_key = "ZZZZ3KeyOpsQ1w2E3r4T5y6U7i8O9p0A";
    let r =
        v3_request(&http, &server.url("/pay/notify/v3"), other_key, "4200000000202405010000000002");
    assert!(!r.send().await.expect("v3").status().is_success());

    // The CLI beside the running server: `push --encrypt`, `token`, `accounts list`, `window`.
    let cli = |args: &[&str]| run_kefu(dir.path(), log, args);
    let mut runs = vec![];
    let pushed = cli(&["push", "--url", &hook, "--encrypt", "--from", U4, "--text", "价格"]);
    assert_eq!(pushed.code, 0, "{}", pushed.stderr());
    assert!(pushed.stdout().contains("价格表见菜单。"), "{}", pushed.stdout());
    runs.push(pushed);
    for args in [
        &["token"][..],
        &["token", "--json"],
        &["accounts", "list"],
        &["window", "show", U1, "--json"],
    ] {
        let r = cli(args);
        assert_eq!(r.code, 0, "{}: {}", r.what, r.stderr());
        runs.push(r);
    }
    assert!(runs[1].stdout().starts_with("source:"), "{}", runs[1].stdout());
    assert!(runs[3].stdout().contains("kf01@gh_4d00ed8d6399"), "{}", runs[3].stdout());

    let served = server.stop();
    assert_eq!(served.code, 0, "{}", served.stderr());
    runs.insert(0, served);
    (runs, vec![("the v2 sign a forged notification needs", forged)])
}

/// Lines of `ran`'s stderr (colours stripped) that contain `s`.
pub(crate) fn count_lines(ran: &Ran, s: &str) -> usize {
    ran.stderr.iter().filter(|l| strip_ansi(&String::from_utf8_lossy(l)).contains(s)).count()
}

fn assert_no_leaks(runs: &[&Ran], extra: &[(&'static str, String)]) {
    let found = leaks(runs, &all_needles(extra));
    assert!(found.is_empty(), "secrets in the output:\n{}", found.join("\n"));
}

/// The scenario's own evidence that it went where the secrets are used: debug logging was
/// on, the token was refreshed, a send failed, pushes were refused and admin calls refused.
fn assert_scenario_logged(served: &Ran) {
    for (what, at_least) in [
        ("fetched a new access token", 2),
        ("access token refused", 1),
        ("send failed", 1),
        ("push accepted", 5),
        ("push refused", 6),
        ("handshake verified", 1),
        ("payment notification verified", 2),
        ("pay notification refused", 2),
    ] {
        let n = count_lines(served, what);
        assert!(n >= at_least, "{n} lines with {what:?} (want {at_least}):\n{}", served.stderr());
    }
}

/// The detector itself finds each form it looks for, colours or not, so a clean run means
/// something.
#[test]
fn the_leak_detector_finds_every_form() {
    let needles = all_needles(&[("extra", "ExtraSecretOps123".to_string())]);
    for n in &needles {
        let line = if n.fold {
            // Upper case, and a colour code right before it, as the text format writes values.
            let mut l = b"level=INFO field=\x1b[2m".to_vec();
            l.extend(String::from_utf8_lossy(&n.bytes).to_ascii_uppercase().into_bytes());
            l
        } else {
            let mut l = b"raw: ".to_vec();
            l.extend(&n.bytes);
            l
        };
        let ran = Ran { what: "probe".into(), code: 0, stdout: vec![], stderr: vec![line] };
        let found = leaks(
            &[&ran],
            &[Needle {
                secret: n.secret,
                form: n.form.clone(),
                bytes: n.bytes.clone(),
                fold: n.fold,
            }],
        );
        assert_eq!(found.len(), 1, "{} ({}) not found", n.secret, n.form);
    }
    let clean = Ran {
        what: "probe".into(),
        code: 0,
        stdout: vec![b"nothing here".to_vec()],
        stderr: vec![],
    };
    assert!(leaks(&[&clean], &needles).is_empty());
}

/// The Show of issue 7: every secret configured, debug logging, a full scenario, text logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_output_line_carries_a_secret_text_logs() {
    let (runs, extra) = full_scenario(LogFormat::Text).await;
    assert_scenario_logged(&runs[0]);
    assert_no_leaks(&runs.iter().collect::<Vec<_>>(), &extra);
}

/// The same with `--log-format json`; every stderr line of the server is a JSON object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_output_line_carries_a_secret_json_logs() {
    let (runs, extra) = full_scenario(LogFormat::Json).await;
    let served = &runs[0];
    assert_scenario_logged(served);
    for line in &served.stderr {
        let v: Value = serde_json::from_slice(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(line)));
        assert!(v.is_object(), "{v}");
    }
    assert_no_leaks(&runs.iter().collect::<Vec<_>>(), &extra);
}

/// Configuration errors name the key and where it came from, never the value: a TOML syntax
/// error on a secret's line, bad secret values from the file and from the environment.
#[test]
fn config_errors_print_no_secret() {
    /// What is wrong, the kefu.toml, and extra environment.
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>);
    let cases: Vec<Case> = vec![
        (
            "a TOML syntax error on the app_secret line",
            format!(
                "[wechat]\napp_id = \"{APP_ID}\"\napp_secret = \"{APP_SECRET}\ntoken = \"{WX_TOKEN}\"\n"
            ),
            vec![],
        ),
        (
            "a syntax error after the secrets",
            format!(
                "[wechat]\ntoken = \"{WX_TOKEN}\"\nencoding_aes_key = \"{AES_NOW}\"\n\
                 [admin]\ntoken = \"{ADMIN_TOKEN}\" oops\n"
            ),
            vec![],
        ),
        (
            "an EncodingAESKey one character short, and a short admin token",
            format!(
                "[wechat]\ntoken = \"{WX_TOKEN}\"\nencoding_aes_key = \"{}\"\n[admin]\ntoken = \"{}\"\n",
                &AES_NOW[..42],
                &ADMIN_TOKEN[..15]
            ),
            vec![],
        ),
        (
            "an APIv3 key of the wrong length from the environment",
            format!("[wechat]\ntoken = \"{WX_TOKEN}\"\n"),
            vec![("KEFU_PAY_V3_API_KEY", &PAY_V3[..31]), ("KEFU_WECHAT_APP_SECRET", APP_SECRET)],
        ),
        (
            "a secret where a table belongs",
            format!("wechat = \"{APP_SECRET}\"\n[pay]\nv2_api_key = [\"{PAY_V2}\"]\n"),
            vec![],
        ),
    ];
    for (what, toml, env) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kefu.toml"), &toml).expect("write kefu.toml");
        let mut env = env;
        env.push(("RUST_LOG", "debug,kefu=trace"));
        for args in [&["serve"][..], &["token"], &["accounts", "list"]] {
            let ran = run_kefu(dir.path(), &env, args);
            assert_eq!(ran.code, 2, "{what}: {}: {}{}", ran.what, ran.stdout(), ran.stderr());
            assert!(
                ran.stderr().contains("kefu.toml") || ran.stderr().contains("KEFU_"),
                "{what}: {}",
                ran.stderr()
            );
            assert_no_leaks(&[&ran], &[]);
        }
    }
}

/// A second `kefu serve` on the state.dir of a running one refuses to start, says why and what
/// to do, and leaves the first one serving; the CLI still reads the same state beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_serve_on_the_same_state_dir_refuses_to_start() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &mock);
    let first = serve(dir.path(), &[], &[]);
    let second = run_kefu(dir.path(), &[], &["serve"]);
    // 2, like every startup failure of `serve`: the configured state.dir is not usable.
    assert_eq!(second.code, 2, "{}", second.stderr());
    let err = second.stderr();
    assert!(err.contains("another `kefu serve` is running on this state.dir"), "{err}");
    assert!(err.contains("kefu.lock") && err.contains("give this one its own state.dir"), "{err}");
    let r = reqwest::get(first.url("/readyz")).await.expect("readyz");
    assert_eq!(r.status().as_u16(), 200, "the first one still serves");
    let cli = run_kefu(dir.path(), &[], &["window", "list"]);
    assert_eq!(cli.code, 0, "{}", cli.stderr());
    assert_eq!(first.stop().code, 0);
}

/// `KEFU_LOG_FORMAT=json`: every stderr line is a JSON object, and the push span's fields
/// (openid, kind) ride on the lines logged while handling a push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_push_span() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &mock);
    // "push recorded" is the pipeline's debug line (issue 21: none per push at info).
    let server = serve(
        dir.path(),
        &[("KEFU_LOG_FORMAT", "json"), ("RUST_LOG", "info,kefu::pipeline=debug")],
        &[],
    );
    let http = reqwest::Client::new();
    let hook = server.url("/wechat");
    let q = signed_query(WX_TOKEN, now_secs(), "j1");
    let r =
        http.post(&hook).query(&q).body(text_xml(U1, "请问价格", 8001)).send().await.expect("push");
    assert_eq!(r.status().as_u16(), 200);
    let (q, body) = encrypted_push(
        WX_TOKEN,
        &key(AES_NOW),
        APP_ID,
        &event_xml(U2, "CLICK", "K"),
        now_secs(),
        "j2",
        false,
    );
    let r = http.post(&hook).query(&q).body(body).send().await.expect("push");
    assert_eq!(r.status().as_u16(), 200);
    let q = signed_query("not-the-token", now_secs(), "j3");
    let r = http.post(&hook).query(&q).body(text_xml(U1, "x", 8002)).send().await.expect("push");
    assert_eq!(r.status().as_u16(), 401);
    eventually("U1's sends", || async { mock.count(SEND) == 2 }).await;
    let served = server.stop();

    let lines: Vec<Value> = served
        .stderr
        .iter()
        .map(|l| {
            serde_json::from_slice(l)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(l)))
        })
        .collect();
    assert!(lines.iter().all(Value::is_object));
    let spans_of = |message: &str| -> Vec<(String, String)> {
        lines
            .iter()
            .filter(|v| v["message"] == message)
            .map(|v| {
                assert_eq!(v["span"]["name"], "push", "{v}");
                let f = |k: &str| v["span"][k].as_str().unwrap_or("").to_string();
                (f("openid"), f("kind"))
            })
            .collect()
    };
    let want = vec![(U1.to_string(), "text".to_string()), (U2.to_string(), "CLICK".to_string())];
    // With the pipeline at debug, each push has exactly one line of its own: "push accepted"
    // is the webhook's debug line.
    assert_eq!(spans_of("push accepted"), vec![]);
    assert_eq!(spans_of("push recorded"), want);
    let recorded: Vec<&Value> = lines.iter().filter(|v| v["message"] == "push recorded").collect();
    assert_eq!(recorded[0]["rules"], "[\"price\"]", "{}", recorded[0]);
    let refused: Vec<&Value> = lines.iter().filter(|v| v["message"] == "push refused").collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0]["reason"], "bad_signature", "{}", refused[0]);
    assert_eq!(refused[0]["span"]["name"], "push", "{}", refused[0]);
}

/// `kefu completions bash|zsh|fish` print a script that knows every subcommand.
#[test]
fn completions_print_scripts_with_the_subcommands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let subcommands = [
        "serve",
        "rules",
        "simulate",
        "push",
        "accounts",
        "send",
        "window",
        "sessions",
        "records",
        "token",
        "completions",
    ];
    for (shell, marker) in
        [("bash", "complete -F _kefu"), ("zsh", "#compdef kefu"), ("fish", "complete -c kefu")]
    {
        let ran = run_kefu(dir.path(), &[], &["completions", shell]);
        assert_eq!(ran.code, 0, "{shell}: {}", ran.stderr());
        let script = ran.stdout();
        assert!(script.contains(marker), "{shell} script lacks {marker:?}:\n{script}");
        for sub in subcommands {
            assert!(script.contains(sub), "{shell} script lacks {sub}");
        }
        assert_eq!(ran.stderr(), "", "{shell}");
    }
    let ran = run_kefu(dir.path(), &[], &["completions", "tcsh"]);
    assert_eq!(ran.code, 2, "{}", ran.stderr());
}
