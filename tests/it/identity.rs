//! Identity keys (issue 13, fault 1): every key that identifies a push — its dedupe record, its
//! stored answer, its outbox entries, its Redis record — is scoped by the account and the
//! follower. WeChat reuses `MsgId`s across followers, so two followers' messages with the same
//! `MsgId` and `CreateTime` are two pushes: each gets its own rule run, answer, grant and sends.
//! A real redelivery (the same push again) is still answered from the stored answer and plans
//! nothing. The same holds with the ledger and dedupe records in Redis.
//!
//! Also (faults 3 and 4): every command reads the store `serve` uses — `kefu window` with
//! `state.redis_url` reads Redis — and a command that only reads never creates `state.dir`; each
//! run says on stderr which config file it uses, or that none was found.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::mock_wechat::MockWechat;
use kefu::config::Config;
use kefu::model::{DedupeKey, OpenId, Secret, SharedClock, SystemClock};
use kefu::service::Service;
use serde_json::Value;

use crate::helpers::{TOKEN, kefu_in, now_secs, signed_query, test_config};
use crate::pipeline::text_push;
use crate::redis::test_redis_url;

const SEND: &str = "/cgi-bin/message/custom/send";
const ALICE: &str = "oIdentityAlice000000000000001";
const BOB: &str = "oIdentityBob00000000000000002";
const ADMIN: &str = "identity-admin-token-7c2e91";

const RULES: &str = r#"
[[rule]]
name = "echo"
[rule.when]
msg_type = "text"
[[rule.reply]]
text = "你说：{text}"
[[rule.reply]]
text = "第二条：{text}"

[[rule]]
name = "human"
[rule.when]
event = "CLICK"
[[rule.reply]]
transfer = true
"#;

/// The real service on port 0 (plaintext pushes signed with the K1 token), its rules written
/// from text into `dir/rules`, its state in `dir/state`, the WeChat API at `mock`.
pub(crate) struct Running {
    app_id: String,
    state_dir: std::path::PathBuf,
    base: String,
    path: String,
    http: reqwest::Client,
    pub(crate) handle: actix_web::dev::ServerHandle,
}

impl Running {
    async fn start(mock: &MockWechat, dir: &Path, redis_url: Option<&str>) -> Running {
        Self::start_with(mock, dir, redis_url, RULES).await
    }

    pub(crate) async fn start_with(
        mock: &MockWechat,
        dir: &Path,
        redis_url: Option<&str>,
        rule_file: &str,
    ) -> Running {
        Self::start_edited(mock, dir, redis_url, rule_file, |_| {}).await
    }

    /// [`Running::start_with`], the config changed by `edit` last.
    pub(crate) async fn start_edited(
        mock: &MockWechat,
        dir: &Path,
        redis_url: Option<&str>,
        rule_file: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Running {
        let rules = dir.join("rules");
        std::fs::create_dir_all(&rules).expect("rules dir");
        std::fs::write(rules.join("10-rules.toml"), rule_file).expect("rule file");
        let mut cfg: Config = test_config();
        // A namespace of its own on the shared Redis server.
        cfg.wechat.app_id = format!("wxidentity{:08x}", rand::random::<u32>());
        cfg.wechat.app_secret = Secret::new("identity-app-secret");
        cfg.wechat.api_base = mock.url();
        cfg.state.dir = dir.join("state");
        cfg.rules.dir = rules;
        cfg.rules.hot_reload = false;
        cfg.admin.token = Secret::new(ADMIN);
        if let Some(url) = redis_url {
            cfg.state.redis_url = Secret::new(url);
        }
        edit(&mut cfg);
        let clock: SharedClock = Arc::new(SystemClock);
        let service = Service::build(cfg.clone(), clock).await.expect("the service starts");
        let base = format!("http://{}", service.local_addr());
        let handle = service.handle();
        tokio::spawn(service.run_until_stopped());
        Running {
            app_id: cfg.wechat.app_id.clone(),
            state_dir: cfg.state.dir.clone(),
            base,
            path: cfg.server.path.clone(),
            http: reqwest::Client::new(),
            handle,
        }
    }

    /// POSTs a signed plaintext push; the status and the answer.
    pub(crate) async fn push_status(&self, xml: &str) -> (u16, String) {
        let q = signed_query(TOKEN, now_secs(), "identity-nonce");
        let r = self
            .http
            .post(format!("{}{}", self.base, self.path))
            .query(&q)
            .body(xml.to_string())
            .send()
            .await
            .expect("POST push");
        (r.status().as_u16(), r.text().await.expect("answer"))
    }

    async fn push(&self, xml: &str) -> String {
        let (status, answer) = self.push_status(xml).await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    async fn metrics(&self) -> String {
        let r = self.http.get(format!("{}/metrics", self.base)).send().await.expect("GET");
        r.text().await.expect("metrics page")
    }

    async fn window(&self, openid: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/admin/windows/{openid}", self.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("GET window");
        assert_eq!(r.status().as_u16(), 200);
        r.json().await.expect("window JSON")
    }
}

/// The `custom/send` bodies the mock received, as (touser, content).
fn sends(mock: &MockWechat) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = mock
        .requests_to(SEND)
        .iter()
        .filter_map(|r| r.json())
        .map(|j| {
            let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
            (s(&j["touser"]), s(&j["text"]["content"]))
        })
        .collect();
    v.sort();
    v
}

async fn wait_for_sends(mock: &MockWechat, n: usize) {
    let started = Instant::now();
    while mock.count(SEND) < n {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "expected {n} sends, the mock got {:?}",
            sends(mock)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn two_followers_same_msgid(redis_url: Option<&str>) {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = Running::start(&mock, dir.path(), redis_url).await;
    let t = now_secs();
    const MSG_ID: u64 = 24_345_678_901_234_999;

    let alice = text_push(ALICE, "苹果", MSG_ID, t);
    let answer = app.push(&alice).await;
    assert!(answer.contains("你说：苹果"), "{answer}");

    // Bob's push shares Alice's MsgId and CreateTime: it is his own push, not a redelivery.
    let answer = app.push(&text_push(BOB, "香蕉", MSG_ID, t)).await;
    assert!(answer.contains("你说：香蕉"), "Bob got someone else's answer: {answer}");
    assert!(!answer.contains("苹果"), "{answer}");

    wait_for_sends(&mock, 2).await;
    // A real redelivery of Alice's push: the stored answer, nothing planned or sent again.
    let again = app.push(&alice).await;
    assert!(again.contains("你说：苹果"), "{again}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sends(&mock),
        vec![
            (ALICE.to_string(), "第二条：苹果".to_string()),
            (BOB.to_string(), "第二条：香蕉".to_string())
        ],
        "each follower gets exactly their own second message"
    );
    for who in [ALICE, BOB] {
        let w = app.window(who).await;
        assert_eq!(w["open"], Value::Bool(true), "{who}: {w}");
        assert_eq!(w["grants"][0]["trigger"], "message", "{who}: {w}");
        assert_eq!(w["grants"][0]["used"], 1, "{who}: one send charged: {w}");
    }
    app.handle.stop(true).await;
}

#[tokio::test]
async fn two_followers_with_one_msgid_each_get_their_own_answer() {
    two_followers_same_msgid(None).await;
}

#[tokio::test]
async fn two_followers_with_one_msgid_each_get_their_own_answer_on_redis() {
    let Some(url) = test_redis_url() else { return };
    two_followers_same_msgid(Some(&url)).await;
}

#[test]
fn payment_keys_are_scoped_by_app_and_payer() {
    let alice = OpenId::parse(ALICE).expect("openid");
    let bob = OpenId::parse(BOB).expect("openid");
    let a = DedupeKey::payment(Some("wx1"), &alice, "4200001");
    assert_eq!(a, DedupeKey::payment(Some("wx1"), &alice, "4200001"), "a retry is a duplicate");
    assert_ne!(a, DedupeKey::payment(Some("wx1"), &bob, "4200001"));
    assert_ne!(a, DedupeKey::payment(Some("wx2"), &alice, "4200001"));
    assert_eq!(DedupeKey::payment(None, &alice, "1").as_str(), format!("pay:1:{ALICE}:-"));
}

#[test]
fn push_keys_are_scoped_by_account_and_follower() {
    let a = DedupeKey::message("gh_a", ALICE, 1, 7);
    assert_ne!(a, DedupeKey::message("gh_a", BOB, 1, 7), "another follower");
    assert_ne!(a, DedupeKey::message("gh_b", ALICE, 1, 7), "another account");
    assert_ne!(a, DedupeKey::message("gh_a", ALICE, 2, 7), "another CreateTime");
    assert_eq!(a, DedupeKey::message("gh_a", ALICE, 1, 7), "a redelivery");
    assert_ne!(
        DedupeKey::event("gh_a", ALICE, 1, "CLICK", "K"),
        DedupeKey::event("gh_b", ALICE, 1, "CLICK", "K")
    );
}

// ---------------------------------------------------------------------------------------------
// Commands read the store serve uses (faults 3 and 4)

#[tokio::test]
async fn window_commands_read_redis_when_serve_does() {
    let Some(url) = test_redis_url() else { return };
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = Running::start(&mock, dir.path(), Some(&url)).await;
    app.push(&text_push(ALICE, "苹果", 1, now_secs())).await;
    wait_for_sends(&mock, 1).await;
    let admin = app.window(ALICE).await;
    assert_eq!(admin["open"], Value::Bool(true), "{admin}");

    // Beside serve, on its state.dir: the same view as /admin/windows.
    let state_dir = app.state_dir.display().to_string();
    let env = [
        ("KEFU_STATE_REDIS_URL", url.as_str()),
        ("KEFU_WECHAT_APP_ID", app.app_id.as_str()),
        ("KEFU_WECHAT_APP_SECRET", "identity-app-secret"),
        ("KEFU_STATE_DIR", state_dir.as_str()),
    ];
    let shown = kefu_in(dir.path(), &env, &["window", "show", ALICE, "--json"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let shown: Value = serde_json::from_str(&shown.stdout).expect("window JSON");
    assert_eq!(shown, admin, "kefu window show equals GET /admin/windows");
    let listed = kefu_in(dir.path(), &env, &["window", "list", "--json"]);
    assert_eq!(listed.code, 0, "{}", listed.stderr);
    let listed: Value = serde_json::from_str(&listed.stdout).expect("list JSON");
    let mut entry = admin.clone();
    entry.as_object_mut().expect("object").remove("held_answers");
    assert_eq!(listed, Value::Array(vec![entry]), "window list lists the follower");

    // Beside serve but without its state.redis_url (a shell without serve's environment): the
    // SQLite file there holds only serve's outbox, so reading its ledger would be wrong.
    let no_redis = [("KEFU_STATE_DIR", state_dir.as_str())];
    let wrong = kefu_in(dir.path(), &no_redis, &["window", "show", ALICE]);
    assert_eq!(wrong.code, 1, "{}{}", wrong.stdout, wrong.stderr);
    assert!(wrong.stderr.contains("keeps the ledger of"), "{}", wrong.stderr);
    assert!(wrong.stderr.contains("KEFU_STATE_REDIS_URL"), "{}", wrong.stderr);
    assert!(wrong.stdout.is_empty(), "no answer from the wrong store: {}", wrong.stdout);

    // On another machine (no local state.dir): still Redis's ledger, and nothing created.
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let env = [
        ("KEFU_STATE_REDIS_URL", url.as_str()),
        ("KEFU_WECHAT_APP_ID", app.app_id.as_str()),
        ("KEFU_WECHAT_APP_SECRET", "identity-app-secret"),
    ];
    let shown = kefu_in(elsewhere.path(), &env, &["window", "show", ALICE, "--json"]);
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let shown: Value = serde_json::from_str(&shown.stdout).expect("window JSON");
    assert_eq!(shown["grants"], admin["grants"], "{shown}");
    assert_eq!(shown["open"], Value::Bool(true), "{shown}");
    assert!(!elsewhere.path().join("kefu-data").exists(), "a read-only command created state.dir");
    app.handle.stop(true).await;
}

#[test]
fn a_read_only_command_never_creates_state_and_says_which_config_it_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    for args in [&["window", "show", ALICE][..], &["window", "list"][..]] {
        let r = kefu_in(dir.path(), &[], args);
        assert_eq!(r.code, 1, "{args:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("kefu: config: no --config given and no ./kefu.toml here"),
            "{}",
            r.stderr
        );
        assert!(r.stderr.contains("no kefu state at "), "{}", r.stderr);
        assert!(r.stderr.contains("no kefu state at kefu-data/"), "{}", r.stderr);
        assert!(r.stderr.contains("`state.dir` (the built-in default)"), "{}", r.stderr);
        assert!(r.stdout.is_empty(), "no answer from empty state: {}", r.stdout);
        assert!(!dir.path().join("kefu-data").exists(), "{args:?} created ./kefu-data");
    }

    // With a config file: the file is named, and so is the key's source.
    let cfg = dir.path().join("ops.toml");
    std::fs::write(&cfg, "[state]\ndir = \"st\"\n").expect("config");
    let r = kefu_in(dir.path(), &[], &["--config", "ops.toml", "window", "list"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains(&format!("kefu: config: {}", cfg.display())), "{}", r.stderr);
    assert!(r.stderr.contains(&format!("`state.dir` (set in {})", cfg.display())), "{}", r.stderr);
    assert!(!dir.path().join("st").exists());
}

/// A redelivered push counts nothing again: not its rule hits, not the replies it drops.
#[tokio::test]
async fn a_redelivery_counts_no_drop_again() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = Running::start(&mock, dir.path(), None).await;
    let click = format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><FromUserName><![CDATA[{ALICE}]]>\
         </FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[event]]></MsgType>\
         <Event><![CDATA[CLICK]]></Event><EventKey><![CDATA[HUMAN]]></EventKey></xml>",
        crate::helpers::ACCOUNT,
        now_secs()
    );
    // WeChat does not transfer events, so the rule's transfer is dropped, once.
    assert_eq!(app.push(&click).await, "success");
    assert_eq!(app.push(&click).await, "success");
    let page = app.metrics().await;
    let line = page
        .lines()
        .find(|l| l.starts_with("kefu_dropped_messages_total{reason=\"transfer_on_event\"}"))
        .unwrap_or_else(|| panic!("no transfer_on_event drop counted:\n{page}"));
    assert!(line.ends_with(" 1"), "counted once, not per delivery: {line}");
    app.handle.stop(true).await;
}

/// With no rule loaded kefu still records and answers pushes (`/readyz` 200), but says so in
/// `problems`: every push would get `success` and nothing would ever be sent.
#[tokio::test]
async fn readyz_names_an_empty_rule_set() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = Running::start_with(&mock, dir.path(), None, "").await;
    let r = app.http.get(format!("{}/readyz", app.base)).send().await.expect("GET /readyz");
    assert_eq!(r.status().as_u16(), 200);
    let body: Value = r.json().await.expect("readyz JSON");
    assert_eq!(body["rules"], 0, "{body}");
    let problems = body["problems"].to_string();
    assert!(problems.contains("no rules are loaded"), "{body}");
    app.handle.stop(true).await;
}
