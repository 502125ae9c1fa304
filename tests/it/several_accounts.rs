//! Issue 20, several Official Accounts in one kefu (interface §10, §11.10): two accounts, shop
//! and cafe, each with its own mock WeChat API (own AppID, secret and api_base), path, token,
//! rules and state. Every test asserts on what each mock received, so an answer sent through
//! the wrong account's API fails it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{self, kefu_in, signed_query};
use crate::mock_wechat::{CUSTOM_SEND_PATH, MockResponse, MockWechat, STABLE_TOKEN_PATH};
use crate::pipeline::{ADMIN_TOKEN, content};
use kefu::config::Config;
use kefu::service::Service;

const SHOP_APP: &str = "wx5h0p000000000001";
const CAFE_APP: &str = "wxcafe00000000002";
const SHOP_TOKEN: &str = "shoptoken1";
const CAFE_TOKEN: &str = "cafetoken2";
const SHOP_GH: &str = "gh_5h0p00000001";
const CAFE_GH: &str = "gh_cafe0000002";
const USER: &str = "oSameOpenIdUnderBothAccounts";
const KF_LIST: &str = "/cgi-bin/customservice/getkflist";
/// The `CreateTime` of every push here: the test process's start.
static T0: std::sync::LazyLock<i64> = std::sync::LazyLock::new(helpers::now_secs);

/// A rules directory with one rule: a text containing "hi" is answered `{who}: hi` passively,
/// then `{who}: more` through custom/send.
fn rules(who: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    write_rule(dir.path(), who);
    dir
}

fn write_rule(dir: &Path, who: &str) {
    std::fs::write(
        dir.join("10-hi.toml"),
        format!(
            "[[rule]]\nname = \"hi\"\n[rule.when]\ntext_contains = \"hi\"\n\
             [[rule.reply]]\ntext = \"{who}: hi\"\n[[rule.reply]]\ntext = \"{who}: more\"\n"
        ),
    )
    .expect("rule file");
}

/// Two accounts and what the tests read of them.
struct Two {
    shop: MockWechat,
    cafe: MockWechat,
    shop_rules: tempfile::TempDir,
    cafe_rules: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Two {
    fn new() -> Two {
        Two {
            shop: MockWechat::start(),
            cafe: MockWechat::start(),
            shop_rules: rules("shop"),
            cafe_rules: rules("cafe"),
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// The config file's text; `extra` is appended (a `[state]` redis_url, say).
    fn toml(&self, extra: &str) -> String {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/wechat\"\n\
             [state]\ndir = \"{state}\"\n{extra}\n\
             [admin]\ntoken = \"{ADMIN_TOKEN}\"\n\
             [accounts.shop]\napp_id = \"{SHOP_APP}\"\napp_secret = \"shop-secret\"\n\
             token = \"{SHOP_TOKEN}\"\noriginal_id = \"{SHOP_GH}\"\naccount_id = \"shop_wx\"\n\
             api_base = \"{shop_api}\"\nrules_dir = \"{shop_rules}\"\n\
             [accounts.cafe]\npath = \"/cafe\"\napp_id = \"{CAFE_APP}\"\n\
             app_secret = \"cafe-secret\"\ntoken = \"{CAFE_TOKEN}\"\noriginal_id = \"{CAFE_GH}\"\n\
             api_base = \"{cafe_api}\"\nrules_dir = \"{cafe_rules}\"\n\
             [accounts.cafe.window]\nmessage = {{ limit = 2, duration = \"48h\" }}\n",
            state = self.state.path().display(),
            shop_api = self.shop.url(),
            cafe_api = self.cafe.url(),
            shop_rules = self.shop_rules.path().display(),
            cafe_rules = self.cafe_rules.path().display(),
        )
    }

    /// The config file under the state dir's parent, written and parsed.
    fn config(&self, extra: &str) -> (PathBuf, Config) {
        let file = self.state.path().join("kefu.toml");
        std::fs::write(&file, self.toml(extra)).expect("config file");
        let cfg = Config::from_parts(Some(&file), Some(&self.toml(extra)), [], self.state.path())
            .expect("the two-account config parses");
        (file, cfg)
    }
}

/// A running kefu serving both accounts.
struct Running {
    base: String,
    client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    service_accounts: Vec<Arc<kefu::service::Shared>>,
}

impl Running {
    async fn start(cfg: Config) -> Running {
        let clock: kefu::model::SharedClock = Arc::new(kefu::model::SystemClock);
        let service = Service::build(cfg, clock).await.expect("kefu starts");
        let base = format!("http://127.0.0.1:{}", service.port());
        let service_accounts =
            ["shop", "cafe", "default"].iter().filter_map(|n| service.account(n)).collect();
        let handle = service.handle();
        let task = tokio::spawn(service.run_until_stopped());
        Running { base, client: reqwest::Client::new(), handle, task, service_accounts }
    }

    async fn stop(self) {
        self.handle.stop(true).await;
        self.task.await.expect("join").expect("kefu stops cleanly");
    }

    /// A text push from [`USER`] to `to` (the original ID) with `CreateTime` = [`T0`] (so a
    /// push sent again is WeChat's redelivery of it), signed now with `token`, POSTed to
    /// `path`; (status, body).
    async fn push(
        &self,
        path: &str,
        token: &str,
        to: &str,
        text: &str,
        msg_id: u64,
    ) -> (u16, String) {
        let create = *T0;
        let now = helpers::now_secs();
        let xml = format!(
            "<xml><ToUserName><![CDATA[{to}]]></ToUserName><FromUserName><![CDATA[{USER}]]>\
             </FromUserName><CreateTime>{create}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[{text}]]></Content><MsgId>{msg_id}</MsgId></xml>"
        );
        let q = signed_query(token, now, "n-two");
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .query(&q)
            .body(xml)
            .send()
            .await
            .expect("POST push");
        (resp.status().as_u16(), resp.text().await.expect("body"))
    }

    /// `GET` with the admin token (which `/readyz` ignores); (status, JSON or null).
    async fn admin(&self, path_and_query: &str) -> (u16, Value) {
        let resp = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .expect("GET admin");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text")
    }
}

/// Waits until `mock` has received `n` requests to `path`.
async fn until_count(mock: &MockWechat, path: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while mock.count(path) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path}: {} requests, not {n}, within 15 s",
            mock.count(path)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `text.content` of every custom/send `mock` received.
fn sent_texts(mock: &MockWechat) -> Vec<String> {
    mock.requests_to(CUSTOM_SEND_PATH)
        .iter()
        .map(|r| r.json().expect("JSON")["text"]["content"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The URL inside `redis_url = "…"`.
fn extra_url(extra: &str) -> String {
    extra.split('"').nth(1).expect("redis_url").to_string()
}

/// Deletes every key under `namespace` (what an earlier run of the test left).
fn flush_namespace(url: &str, namespace: &str) {
    use redis::Commands as _;
    let mut con = redis::Client::open(url).and_then(|c| c.get_connection()).expect("redis");
    let keys: Vec<String> = con.scan_match(format!("{namespace}*")).expect("scan").collect();
    for k in keys {
        let _: () = con.del(&k).expect("del");
    }
}

async fn each_account_answers_through_its_own_api(redis: Option<String>) {
    let two = Two::new();
    let extra = redis.map(|u| format!("redis_url = \"{u}\"")).unwrap_or_default();
    let (_, cfg) = two.config(&extra);
    if !extra.is_empty() {
        // Each account's namespace is its AppID: clear what an earlier run left.
        for app in [SHOP_APP, CAFE_APP] {
            flush_namespace(&extra_url(&extra), &format!("kefu:{{{app}}}"));
        }
    }
    let kefu = Running::start(cfg).await;

    // shop's push on shop's path: shop's rules answer, and the rest goes through shop's API.
    let (status, answer) = kefu.push("/wechat/shop", SHOP_TOKEN, SHOP_GH, "hi", 41).await;
    assert_eq!((status, content(&answer).as_str()), (200, "shop: hi"));
    until_count(&two.shop, CUSTOM_SEND_PATH, 1).await;
    assert_eq!(sent_texts(&two.shop), ["shop: more"]);
    assert_eq!(two.shop.requests_to(CUSTOM_SEND_PATH)[0].json().unwrap()["touser"], USER);

    // The same push on cafe's path is refused: it is signed with shop's token.
    let (status, body) = kefu.push("/cafe", SHOP_TOKEN, SHOP_GH, "hi", 41).await;
    assert_eq!(status, 401, "a push signed for shop is refused on cafe's path");
    assert!(body.contains("accounts.cafe.token"), "names cafe's key: {body}");

    // cafe's push — same OpenID, same MsgId — is a new push of another follower.
    let (status, answer) = kefu.push("/cafe", CAFE_TOKEN, CAFE_GH, "hi", 41).await;
    assert_eq!((status, content(&answer).as_str()), (200, "cafe: hi"));
    until_count(&two.cafe, CUSTOM_SEND_PATH, 1).await;
    assert_eq!(sent_texts(&two.cafe), ["cafe: more"]);

    // Redelivered, each is a duplicate of its own account only: answered, nothing sent again.
    let (status, answer) = kefu.push("/wechat/shop", SHOP_TOKEN, SHOP_GH, "hi", 41).await;
    assert_eq!((status, content(&answer).as_str()), (200, "shop: hi"));

    // Windows and quotas are separate: one message charged on each, cafe's own limit.
    let (status, shop_w) = kefu.admin(&format!("/admin/windows/{USER}?account=shop")).await;
    assert_eq!(status, 200, "{shop_w}");
    assert_eq!(shop_w["grants"][0]["limit"], 5);
    assert_eq!(shop_w["grants"][0]["used"], 1);
    let (_, cafe_w) = kefu.admin(&format!("/admin/windows/{USER}?account=cafe")).await;
    assert_eq!(cafe_w["grants"][0]["limit"], 2, "cafe's [accounts.cafe.window]");
    assert_eq!(cafe_w["grants"][0]["used"], 1);

    // Without ?account= the admin API says which parameter is missing, and lists the names
    // only to the admin.
    let (status, body) = kefu.admin(&format!("/admin/windows/{USER}")).await;
    assert_eq!(status, 400, "{body}");
    let e = body["error"].as_str().unwrap();
    assert!(e.contains("?account=NAME") && e.contains("cafe, shop"), "{e}");
    let anon = kefu.client.get(format!("{}/admin/windows/{USER}", kefu.base)).send().await.unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    assert!(!anon.text().await.unwrap().contains("cafe"));
    let (status, body) = kefu.admin(&format!("/admin/windows/{USER}?account=nope")).await;
    assert_eq!(status, 404, "{body}");

    // Each mock saw one token fetch, for its own AppID.
    assert_eq!(two.shop.count(STABLE_TOKEN_PATH), 1);
    assert_eq!(two.cafe.count(STABLE_TOKEN_PATH), 1);
    let fetched = two.cafe.requests_to(STABLE_TOKEN_PATH)[0].json().unwrap();
    assert_eq!(fetched["appid"], CAFE_APP);

    // Nothing of one account reached the other's API.
    assert!(sent_texts(&two.shop).iter().all(|t| t.starts_with("shop")));
    assert_eq!(two.shop.count(CUSTOM_SEND_PATH), 1, "the redelivery sent nothing");
    assert_eq!(two.cafe.count(CUSTOM_SEND_PATH), 1);

    // Metrics carry the account.
    let m = kefu.metrics().await;
    assert!(
        m.contains(r#"kefu_pushes_total{account="shop",kind="text",outcome="fresh"} 1"#),
        "{m}"
    );
    assert!(m.contains(r#"kefu_pushes_total{account="shop",kind="text",outcome="duplicate"} 1"#));
    assert!(m.contains(r#"kefu_pushes_total{account="cafe",kind="text",outcome="fresh"} 1"#));
    assert!(
        m.contains(
            r#"kefu_sends_total{account="cafe",msgtype="text",outcome="sent",errcode="0"} 1"#
        ),
        "{m}"
    );
    assert!(
        m.contains(
            r#"kefu_refusals_total{account="cafe",endpoint="webhook",reason="bad_signature"} 1"#
        ),
        "{m}"
    );
    assert_eq!(m.matches("# TYPE kefu_pushes_total counter").count(), 1, "{m}");

    // /readyz reports each account.
    let (_, ready) = kefu.admin("/readyz").await;
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["rules"], 2);
    assert_eq!(ready["accounts"]["cafe"]["rules"], 1, "{ready}");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_account_answers_and_sends_through_its_own_api_only() {
    each_account_answers_through_its_own_api(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_each_account_keeps_its_own_namespace() {
    let Some(url) = crate::redis::test_redis_url() else { return };
    each_account_answers_through_its_own_api(Some(url)).await;
}

/// Starts both accounts, has shop answer one push, and stops: each account's state is there.
async fn run_once(two: &Two) {
    let (_, cfg) = two.config("");
    let kefu = Running::start(cfg).await;
    let (status, _) = kefu.push("/wechat/shop", SHOP_TOKEN, SHOP_GH, "hi", 1).await;
    assert_eq!(status, 200);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_one_directory_per_account() {
    let two = Two::new();
    run_once(&two).await;
    let db = kefu::store::sqlite::DB_FILE;
    assert!(two.state.path().join("accounts/shop").join(db).is_file());
    assert!(two.state.path().join("accounts/cafe").join(db).is_file());
    assert!(!two.state.path().join(db).exists(), "no `default` account, no state.dir database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_reload_per_account() {
    let two = Two::new();
    let (_, mut cfg) = two.config("");
    cfg.rules.hot_reload = true;
    let kefu = Running::start(cfg).await;
    write_rule(two.cafe_rules.path(), "new cafe");
    // The watcher of cafe's directory reloads cafe only.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut n = 100;
    loop {
        n += 1;
        let (_, answer) = kefu.push("/cafe", CAFE_TOKEN, CAFE_GH, "hi", n).await;
        if content(&answer) == "new cafe: hi" {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "cafe's rules did not reload: {answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, answer) = kefu.push("/wechat/shop", SHOP_TOKEN, SHOP_GH, "hi", 1).await;
    assert_eq!(content(&answer), "shop: hi");
    // The admin reload names its account, and reloads that one.
    let resp = kefu
        .client
        .post(format!("{}/admin/rules/reload?account=shop", kefu.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["rules"], 1);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_backend_is_told_the_account_and_each_account_keeps_its_own_llm_turns() {
    let two = Two::new();
    let model = MockWechat::start();
    for dir in [two.shop_rules.path(), two.cafe_rules.path()] {
        std::fs::write(
            dir.join("10-hi.toml"),
            "[[rule]]\nname = \"ask\"\n[rule.when]\nmsg_type = \"text\"\n\
             [[rule.reply]]\nforward = \"assistant\"\nfallback = \"sorry\"\n",
        )
        .unwrap();
    }
    let backend = format!(
        "[backends.assistant]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key = \"sk-x\"\n\
         model = \"m\"\ntimeout = \"5s\"\nretries = 0\n",
        model.url()
    );
    let (_, cfg) = two.config(&format!("[delivery]\npassive_wait = \"4s\"\n{backend}"));
    let kefu = Running::start(cfg).await;
    let chat = "/v1/chat/completions";
    let (_, a) = kefu.push("/wechat/shop", SHOP_TOKEN, SHOP_GH, "shop question", 1).await;
    assert_eq!(content(&a), "答：shop question");
    let (_, a) = kefu.push("/cafe", CAFE_TOKEN, CAFE_GH, "cafe question", 1).await;
    assert_eq!(content(&a), "答：cafe question");
    let (_, a) = kefu.push("/cafe", CAFE_TOKEN, CAFE_GH, "again", 2).await;
    assert_eq!(content(&a), "答：again");
    let reqs = model.requests_to(chat);
    assert_eq!(reqs.len(), 3);
    let last: Vec<String> = reqs[2].json().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        last,
        ["cafe question", "答：cafe question", "again"],
        "cafe's follower remembers cafe's turn only"
    );
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_backend_request_names_the_account() {
    let two = Two::new();
    let backend = MockWechat::start();
    backend.set_default("/answer", MockResponse::json(json!({"replies": [{"text": "ok"}]})));
    std::fs::write(
        two.cafe_rules.path().join("10-hi.toml"),
        "[[rule]]\nname = \"ask\"\n[[rule.reply]]\nforward = \"orders\"\n",
    )
    .unwrap();
    let (_, cfg) = two.config(&format!(
        "[backends.orders]\nkind = \"http\"\nurl = \"{}/answer\"\n",
        backend.url()
    ));
    let kefu = Running::start(cfg).await;
    let (_, a) = kefu.push("/cafe", CAFE_TOKEN, CAFE_GH, "where is my order", 1).await;
    assert_eq!(content(&a), "ok");
    let req = backend.requests_to("/answer")[0].json().unwrap();
    assert_eq!(
        (req["account"].as_str(), req["account_name"].as_str()),
        (Some(CAFE_GH), Some("cafe"))
    );
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_its_account_with_the_flag() {
    let two = Two::new();
    let (file, _) = two.config("");
    let dir = two.state.path();
    let config = file.display().to_string();
    two.cafe.set_default(
        KF_LIST,
        MockResponse::json(json!({"kf_list": [
            {"kf_account": "kf01@cafe_wx", "kf_nick": "咖啡", "kf_id": 1}
        ]})),
    );

    let r = kefu_in(dir, &[], &["accounts", "list", "--config", &config, "--account", "cafe"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("kf01@cafe_wx"), "{}", r.stdout);
    assert_eq!(two.cafe.count(KF_LIST), 1);
    assert_eq!((two.shop.count(KF_LIST), two.shop.count(STABLE_TOKEN_PATH)), (0, 0));

    // The flag is accepted anywhere after the command.
    let r = kefu_in(dir, &[], &["--account", "cafe", "accounts", "list", "--config", &config]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    // Without it, or naming no account, exit 2 naming the flag and the accounts.
    let r = kefu_in(dir, &[], &["accounts", "list", "--config", &config]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("--account NAME") && r.stderr.contains("cafe, shop"), "{}", r.stderr);
    let r = kefu_in(dir, &[], &["window", "show", USER, "--config", &config, "--account", "tea"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no account named \"tea\""), "{}", r.stderr);

    // An account's key is named as the operator wrote it.
    let r = kefu_in(
        dir,
        &[("KEFU_ACCOUNTS_SHOP_APP_SECRET", "")],
        &["token", "--config", &config, "--account", "shop"],
    );
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("`accounts.shop.app_secret`"), "{}", r.stderr);
    assert!(r.stderr.contains("KEFU_ACCOUNTS_SHOP_APP_SECRET"), "{}", r.stderr);
    // `serve` serves them all.
    let r = kefu_in(dir, &[], &["serve", "--config", &config, "--account", "shop"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("serves every configured account"), "{}", r.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_account_state_dir_keeps_its_answers_and_windows() {
    // A kefu of before several accounts: [wechat] at server.path, state in state.dir.
    let mock = MockWechat::start();
    let rules = rules("one");
    let state = tempfile::tempdir().unwrap();
    let legacy = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\npath = \"/wechat\"\n[state]\ndir = \"{}\"\n\
         [admin]\ntoken = \"{ADMIN_TOKEN}\"\n[rules]\ndir = \"{}\"\n\
         [wechat]\napp_id = \"{SHOP_APP}\"\napp_secret = \"s\"\ntoken = \"{SHOP_TOKEN}\"\n\
         api_base = \"{}\"\n",
        state.path().display(),
        rules.path().display(),
        mock.url()
    );
    let file = state.path().join("kefu.toml");
    let load = |text: &str| Config::from_parts(Some(&file), Some(text), [], state.path()).unwrap();

    let kefu = Running::start(load(&legacy)).await;
    let (_, a) = kefu.push("/wechat", SHOP_TOKEN, SHOP_GH, "hi", 7).await;
    assert_eq!(content(&a), "one: hi");
    until_count(&mock, CUSTOM_SEND_PATH, 1).await;
    let (status, before) = kefu.admin(&format!("/admin/windows/{USER}")).await;
    assert_eq!(status, 200, "one account: no ?account= needed");
    let m = kefu.metrics().await;
    assert!(!m.contains("account=\""), "no [accounts.*]: no account label: {m}");
    kefu.stop().await;

    // The same config again: the same window, and the old push is a duplicate.
    let kefu = Running::start(load(&legacy)).await;
    let (_, after) = kefu.admin(&format!("/admin/windows/{USER}?account=default")).await;
    assert_eq!(after["grants"], before["grants"]);
    let (_, a) = kefu.push("/wechat", SHOP_TOKEN, SHOP_GH, "hi", 7).await;
    assert_eq!(content(&a), "one: hi");
    kefu.stop().await;

    // Moved into [accounts.default] (path = server.path) beside a second account: the state
    // stays in state.dir, so the window and the dedupe record are still there.
    let moved = legacy.replace("[wechat]", "[accounts.default]\npath = \"/wechat\"")
        + &format!("[accounts.cafe]\ntoken = \"{CAFE_TOKEN}\"\napi_base = \"{}\"\n", mock.url());
    let kefu = Running::start(load(&moved)).await;
    let (status, moved_w) = kefu.admin(&format!("/admin/windows/{USER}?account=default")).await;
    assert_eq!(status, 200, "{moved_w}");
    assert_eq!(moved_w["grants"], before["grants"]);
    let (_, a) = kefu.push("/wechat", SHOP_TOKEN, SHOP_GH, "hi", 7).await;
    assert_eq!(content(&a), "one: hi");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mock.count(CUSTOM_SEND_PATH), 1, "a duplicate after the move sends nothing");
    let (_, cafe_w) = kefu.admin(&format!("/admin/windows/{USER}?account=cafe")).await;
    assert_eq!(cafe_w["grants"], json!([]), "cafe never saw this follower");
    assert_eq!(kefu.service_accounts.len(), 2);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_app_ids_stop_the_start_and_errors_name_the_accounts_keys() {
    let two = Two::new();
    run_once(&two).await;
    // Both state directories remember their AppID; the tables' app_ids swapped:
    let swapped = two
        .toml("")
        .replace(SHOP_APP, "SWAP")
        .replace(CAFE_APP, SHOP_APP)
        .replace("SWAP", CAFE_APP);
    let file = two.state.path().join("kefu.toml");
    let cfg = Config::from_parts(Some(&file), Some(&swapped), [], two.state.path()).unwrap();
    let clock: kefu::model::SharedClock = Arc::new(kefu::model::SystemClock);
    let e = match Service::build(cfg, clock).await {
        Ok(_) => panic!("kefu started with swapped app_ids"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("look swapped") && e.contains("[accounts.cafe]"), "{e}");

    // A dry-run account's admin errors name its own keys, not [wechat]'s.
    let dry = two.toml("").replace("app_secret = \"cafe-secret\"\n", "");
    let cfg = Config::from_parts(Some(&file), Some(&dry), [], two.state.path()).unwrap();
    let kefu = Running::start(cfg).await;
    let (status, body) = kefu.admin("/admin/kf/accounts?account=cafe").await;
    assert_eq!(status, 503, "{body}");
    let text = body.to_string();
    assert!(text.contains("accounts.cafe.app_secret"), "{text}");
    assert!(text.contains("KEFU_ACCOUNTS_CAFE_APP_SECRET") && !text.contains("wechat."), "{text}");
    let resp = kefu
        .client
        .post(format!("{}/admin/send?account=cafe&force=true", kefu.base))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"touser": USER, "msgtype": "text", "text": {"content": "x"}}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    let message = body["message"].as_str().unwrap();
    assert!(message.contains("text to oSameOpenIdUnderBothAccounts"), "{message}");
    assert!(message.contains("accounts.cafe.app_id"), "{message}");
    kefu.stop().await;
}
