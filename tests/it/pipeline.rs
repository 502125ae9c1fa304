//! The mission end to end (issues 6 and 8): the real kefu from [`Service::build`] (SQLite store,
//! rules, API client, pipeline, sender, every route) on 127.0.0.1:0 against `MockWechat`, with
//! the rules of tests/fixtures/pipeline/rules. Each test asserts exactly what the mock API
//! received, in order, and what the ledger and the outbox say about the rest.
//!
//! Time is a `ManualClock` the tests move: the sender polls the clock at least once a second,
//! so "later" is reached by advancing the clock and waiting (with a timeout) for the outbox to
//! settle, never by sleeping through a delay. Negative claims ("nothing more was sent") are
//! proved from final outbox states, which the sender never revisits.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::mock_wechat::{MockWechat, STABLE_TOKEN_PATH};
use kefu::config::{Config, WindowRule};
use kefu::model::{ManualClock, OutMessage, PassiveReply, Secret, SharedClock};
use kefu::pay::v2::{self, SignType};
use kefu::service::{Service, Shared};
use kefu::store::{DenyReason, OutboxEntry, OutboxStatus, UNSUBSCRIBED};
use kefu::wechat::reply;
use serde_json::{Value, json};

use crate::helpers::{self, ACCOUNT, TestApp};

pub const SEND_PATH: &str = "/cgi-bin/message/custom/send";
pub const TYPING_PATH: &str = "/cgi-bin/message/custom/typing";
pub const ADMIN_TOKEN: &str = "pipeline-admin-token";
pub const APP_SECRET: &str = "pipeline-test-secret";
const V2_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
/// How long a test waits for something the sender should do at once.
const SETTLE: Duration = Duration::from_secs(15);

/// The fixture rule directory every test here runs with.
pub fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipeline/rules")
}

/// A plaintext text message push.
pub fn text_push(from: &str, text: &str, msg_id: u64, create_time: i64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{from}]]>\
         </FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[text]]>\
         </MsgType><Content><![CDATA[{text}]]></Content><MsgId>{msg_id}</MsgId></xml>"
    )
}

/// A plaintext event push (`key` empty = no EventKey element).
pub fn event_push(from: &str, event: &str, key: &str, create_time: i64) -> String {
    let key = if key.is_empty() {
        String::new()
    } else {
        format!("<EventKey><![CDATA[{key}]]></EventKey>")
    };
    format!(
        "<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><FromUserName><![CDATA[{from}]]>\
         </FromUserName><CreateTime>{create_time}</CreateTime><MsgType><![CDATA[event]]>\
         </MsgType><Event><![CDATA[{event}]]></Event>{key}</xml>"
    )
}

/// `<Content>` of a passive reply, or "" for `success`.
pub(crate) fn content(answer: &str) -> String {
    let Some(a) = answer.find("<Content><![CDATA[") else { return String::new() };
    let rest = &answer[a + "<Content><![CDATA[".len()..];
    rest[..rest.find("]]></Content>").expect("content end")].to_string()
}

/// The `custom/send` body of a text message.
pub fn text_body(to: &str, content: &str) -> Value {
    json!({"touser": to, "msgtype": "text", "text": {"content": content}})
}

/// A running kefu and what the tests need to reach into it.
pub(crate) struct Kefu {
    app: TestApp,
    pub(crate) shared: Arc<Shared>,
    pub(crate) clock: Arc<ManualClock>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _state: tempfile::TempDir,
}

/// The config the tests share: K1 token/key/appid, credentials set so sends are real,
/// the mock as API base, the fixture rules without hot reload, an admin token.
fn config(mock: &MockWechat, state: &std::path::Path, passive_first: bool) -> Config {
    let mut c = helpers::test_config();
    c.wechat.app_secret = Secret::new(APP_SECRET);
    c.wechat.api_base = mock.url();
    c.rules.dir = rules_dir();
    c.rules.hot_reload = false;
    c.rules.passive_first = passive_first;
    c.state.dir = state.to_path_buf();
    c.admin.token = Secret::new(ADMIN_TOKEN);
    c
}

impl Kefu {
    pub(crate) async fn start(mock: &MockWechat, passive_first: bool) -> Kefu {
        Self::start_with(mock, passive_first, |_| {}).await
    }

    pub(crate) async fn start_with(
        mock: &MockWechat,
        passive_first: bool,
        edit: impl FnOnce(&mut Config),
    ) -> Kefu {
        let state = tempfile::tempdir().expect("tempdir");
        let mut cfg = config(mock, state.path(), passive_first);
        edit(&mut cfg);
        let clock = Arc::new(ManualClock::new(helpers::now_secs() * 1000 + 250));
        let shared_clock: SharedClock = clock.clone();
        let service = Service::build(cfg.clone(), shared_clock).await.expect("kefu starts");
        let port = service.port();
        let handle = service.handle();
        let shared = service.shared();
        let task = tokio::spawn(service.run_until_stopped());
        let app = TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            cfg,
            client: reqwest::Client::new(),
            handle,
        };
        Kefu { app, shared, clock, task, _state: state }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn address(&self) -> &str {
        &self.app.address
    }

    pub(crate) fn now_secs(&self) -> i64 {
        kefu::model::Clock::now_secs(&*self.clock)
    }

    /// The running server's address and HTTP client.
    pub(crate) fn app(&self) -> &TestApp {
        &self.app
    }

    /// A plaintext push signed now; (status, body).
    pub(crate) async fn push(&self, xml: &str) -> (u16, String) {
        let resp = self.app.push_plain(xml).await;
        let status = resp.status().as_u16();
        (status, resp.text().await.expect("push answer body"))
    }

    /// `GET {path}` with the admin token; the answer as it came.
    pub(crate) async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.app
            .client
            .get(format!("{}{path}", self.app.address))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// `GET /admin/windows/{openid}` as JSON, `held_answers` included.
    pub(crate) async fn window_full(&self, openid: &str) -> Value {
        let resp = self.admin_get(&format!("/admin/windows/{openid}")).await;
        assert_eq!(resp.status().as_u16(), 200, "admin window answer");
        resp.json().await.expect("window JSON")
    }

    /// The §5 ledger as the tests compare it: [`Self::window_full`] without `held_answers`,
    /// whose length must be `held`.
    pub(crate) async fn window(&self, openid: &str) -> Value {
        let mut w = self.window_full(openid).await;
        let listed = w.as_object_mut().and_then(|o| o.remove("held_answers"));
        let listed = listed.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
        assert_eq!(json!(listed), w["held"], "held_answers lists what held counts: {w}");
        w
    }

    /// Waits until the follower has exactly `pending` planned messages not yet finished.
    pub(crate) async fn settle(&self, openid: &str, pending: u64) -> Value {
        let deadline = tokio::time::Instant::now() + SETTLE;
        loop {
            let w = self.window(openid).await;
            if w["pending"] == json!(pending) {
                return w;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{openid} did not reach {pending} pending messages within {SETTLE:?}: {w}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every outbox entry, by id (a fresh store numbers them from 1).
    pub(crate) async fn outbox(&self) -> Vec<OutboxEntry> {
        let mut out = Vec::new();
        for id in 1.. {
            match self.shared.store.outbox_entry(id).await.expect("outbox entry") {
                Some(e) => out.push(e),
                None => break,
            }
        }
        out
    }

    /// The graceful stop `serve` does on SIGTERM. The client goes first: actix holds a
    /// graceful stop open for idle keep-alive connections until its shutdown timeout.
    pub(crate) async fn stop(self) {
        let Kefu { app, task, .. } = self;
        let TestApp { client, handle, .. } = app;
        drop(client);
        handle.stop(true).await;
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("kefu did not stop cleanly: {other:?}"),
        }
    }
}

/// The JSON bodies the mock received at `custom/send`, in arrival order.
pub fn sends(mock: &MockWechat) -> Vec<Value> {
    mock.requests_to(SEND_PATH).iter().map(|r| r.json().expect("send body is JSON")).collect()
}

/// (status, reason) of each entry, for compact exact assertions.
pub(crate) fn states(entries: &[OutboxEntry]) -> Vec<(String, OutboxStatus, Option<String>)> {
    entries
        .iter()
        .map(|e| {
            let what = match &e.action.action {
                kefu::model::OutboxAction::Send { message: OutMessage::Text { content } } => {
                    content.clone()
                }
                other => format!("{other:?}"),
            };
            (what, e.status, e.reason.clone())
        })
        .collect()
}

pub(crate) fn sent(what: &str) -> (String, OutboxStatus, Option<String>) {
    (what.to_string(), OutboxStatus::Sent, None)
}

/// Held for the follower's next push, with the reason.
pub(crate) fn held(what: &str, why: &str) -> (String, OutboxStatus, Option<String>) {
    (what.to_string(), OutboxStatus::Held, Some(why.to_string()))
}

/// `delivery.more_text` as kefu appends it by default.
pub(crate) const MORE: &str = "（回复任意内容继续）";

/// One message grant as the ledger JSON shows it.
fn grant(trigger: &str, opened_at: i64, secs: i64, limit: Option<u32>, used: u32) -> Value {
    let mut g = json!({"trigger": trigger, "opened_at": opened_at,
        "expires_at": opened_at + secs, "used": used});
    if let Some(l) = limit {
        g["limit"] = json!(l);
    }
    g
}

const H48: i64 = 48 * 3600;

// ---- 1. a matching text push: the exact custom/send bodies, in order ------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_push_sends_the_exact_bodies_in_order() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, false).await;
    let user = "oPipeHello1";
    let (status, body) = kefu.push(&text_push(user, "hello", 1001, kefu.now_secs())).await;
    assert_eq!((status, body.as_str()), (200, "success"), "passive_first off: nothing passive");

    let w = kefu.settle(user, 0).await;
    assert_eq!(
        sends(&mock),
        vec![
            text_body(user, &format!("hi {user}, you said hello")),
            json!({"touser": user, "msgtype": "image", "image": {"media_id": "MEDIA_HELLO"}}),
            json!({"touser": user, "msgtype": "text", "text": {"content": "还有别的吗？"},
                   "customservice": {"kf_account": "kf01@gh_test"}}),
        ]
    );
    // Raw UTF-8 on the wire (WeChat answers 40033 to \u escapes), with the token of the one
    // fetch that came first.
    let raw = mock.requests_to(SEND_PATH);
    assert!(raw[2].body_text().contains("还有别的吗？"), "{}", raw[2].body_text());
    assert!(raw.iter().all(|r| r.query("access_token") == Some("MOCK_TOKEN_1")));
    assert_eq!(mock.requests()[0].path, STABLE_TOKEN_PATH);
    assert_eq!(mock.token_fetches(), 1);

    let t = kefu.now_secs();
    assert_eq!(
        w,
        json!({"openid": user, "open": true, "subscribed": true,
               "grants": [grant("message", t, H48, Some(5), 3)], "pending": 0, "held": 0})
    );
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_first_answers_the_first_reply_and_sends_the_rest() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let user = "oPipeHello2";
    let (status, body) = kefu.push(&text_push(user, "hello", 1002, kefu.now_secs())).await;
    let expected = reply::render(
        user,
        ACCOUNT,
        kefu.now_secs(),
        &PassiveReply::Message {
            message: OutMessage::Text { content: format!("hi {user}, you said hello") },
        },
    )
    .expect("render");
    assert_eq!((status, body), (200, expected));

    let w = kefu.settle(user, 0).await;
    assert_eq!(
        sends(&mock),
        vec![
            json!({"touser": user, "msgtype": "image", "image": {"media_id": "MEDIA_HELLO"}}),
            json!({"touser": user, "msgtype": "text", "text": {"content": "还有别的吗？"},
                   "customservice": {"kf_account": "kf01@gh_test"}}),
        ]
    );
    // The passive reply cost no quota.
    assert_eq!(w["grants"][0]["used"], json!(2), "{w}");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_push_gets_the_passive_reply_encrypted() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let user = "oPipeSafe";
    let resp = kefu.app.push_safe(&text_push(user, "hello", 1003, kefu.now_secs())).await;
    assert_eq!(resp.status().as_u16(), 200);
    let body = resp.text().await.expect("answer");
    let xml = kefu.app.open_reply(&body, &helpers::k1());
    let expected = reply::render(
        user,
        ACCOUNT,
        kefu.now_secs(),
        &PassiveReply::Message {
            message: OutMessage::Text { content: format!("hi {user}, you said hello") },
        },
    )
    .expect("render");
    assert_eq!(xml, expected);
    kefu.settle(user, 0).await;
    assert_eq!(sends(&mock).len(), 2);
    kefu.stop().await;
}

// ---- 2. the same push four times at once: one set of sends, four identical answers ---------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_concurrent_deliveries_send_once_and_answer_alike() {
    for passive_first in [false, true] {
        let mock = MockWechat::start();
        let kefu = Kefu::start(&mock, passive_first).await;
        let user = "oPipeDup";
        let xml = text_push(user, "hello", 2002, kefu.now_secs());
        let answers = futures::future::join_all((0..4).map(|_| kefu.push(&xml))).await;
        assert!(answers.iter().all(|a| a == &answers[0]), "{answers:?}");
        assert_eq!(answers[0].0, 200);
        if passive_first {
            assert!(answers[0].1.contains("you said hello"), "{}", answers[0].1);
        } else {
            assert_eq!(answers[0].1, "success");
        }
        kefu.settle(user, 0).await;
        // A fifth, late redelivery changes nothing either.
        assert_eq!(kefu.push(&xml).await, answers[0]);
        kefu.settle(user, 0).await;
        let want = if passive_first { 2 } else { 3 };
        let got = sends(&mock);
        assert_eq!(got.len(), want, "passive_first {passive_first}: {got:?}");
        assert_eq!(kefu.outbox().await.len(), want, "one plan only");
        kefu.stop().await;
    }
}

// ---- 3. six replies after one message: the quota is five -----------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_replies_five_sent_one_held_for_quota() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, false).await;
    let user = "oPipeSix1";
    assert_eq!(kefu.push(&text_push(user, "six", 3001, kefu.now_secs())).await.1, "success");
    let w = kefu.settle(user, 0).await;
    let t = kefu.now_secs();

    // The fifth, the last the quota carries, says more is coming; the sixth is held.
    let mut want: Vec<Value> = (1..=4).map(|i| text_body(user, &format!("m{i}"))).collect();
    want.push(text_body(user, &format!("m5{MORE}")));
    assert_eq!(sends(&mock), want);
    assert_eq!(
        states(&kefu.outbox().await),
        vec![
            sent("m1"),
            sent("m2"),
            sent("m3"),
            sent("m4"),
            sent(&format!("m5{MORE}")),
            held("m6", kefu::delivery::HELD_FOR_QUOTA)
        ]
    );
    assert_eq!(
        w,
        json!({"openid": user, "open": false, "subscribed": true,
               "grants": [grant("message", t, H48, Some(5), 5)], "pending": 0, "held": 1})
    );

    // The next message opens a new quota: m6 leaves first, then that push's own answers.
    assert_eq!(kefu.push(&text_push(user, "six", 3002, kefu.now_secs())).await.1, "success");
    kefu.settle(user, 0).await;
    let after: Vec<String> =
        sends(&mock)[5..].iter().map(|b| b["text"]["content"].as_str().unwrap().into()).collect();
    assert_eq!(after, ["m6", "m1", "m2", "m3", &format!("m4{MORE}")]);
    assert_eq!(kefu.window(user).await["held"], json!(2), "m5 and m6 wait for the next push");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_replies_with_passive_first_one_passive_five_sent() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let user = "oPipeSix2";
    let (status, body) = kefu.push(&text_push(user, "six", 3002, kefu.now_secs())).await;
    assert_eq!(status, 200);
    assert!(body.contains("<Content><![CDATA[m1]]></Content>"), "{body}");
    let w = kefu.settle(user, 0).await;

    let want: Vec<Value> = (2..=6).map(|i| text_body(user, &format!("m{i}"))).collect();
    assert_eq!(sends(&mock), want);
    assert!(kefu.outbox().await.iter().all(|e| e.status == OutboxStatus::Sent));
    assert_eq!(w["grants"][0]["used"], json!(5), "{w}");
    assert_eq!(w["open"], json!(false), "{w}");
    kefu.stop().await;
}

// ---- 4. a menu click: at most three within the menu window, none after ---------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn click_sends_at_most_three_within_the_menu_window_and_none_after() {
    let mock = MockWechat::start();
    let kefu = Kefu::start_with(&mock, false, |c| {
        c.window.menu = WindowRule { limit: Some(3), duration: Duration::from_secs(2) };
    })
    .await;
    let user = "oPipeClick";
    let t = kefu.now_secs();
    let (status, body) = kefu.push(&event_push(user, "CLICK", "MENU_A", t)).await;
    assert_eq!((status, body.as_str()), (200, "success"));

    // c1..c3 within the quota; c4 over it and c-late after it are held for the next push
    // (in order: nothing later may overtake c4).
    let w = kefu.settle(user, 0).await;
    assert_eq!(
        w,
        json!({"openid": user, "open": false, "subscribed": true,
               "grants": [grant("menu", t, 2, Some(3), 3)], "pending": 0, "held": 2})
    );
    let three: Vec<Value> =
        ["c1", "c2", &format!("c3{MORE}")].iter().map(|c| text_body(user, c)).collect();
    assert_eq!(sends(&mock), three);

    // Past the menu window: nothing leaves; the held answers wait for the follower.
    kefu.clock.advance(Duration::from_secs(5));
    let w = kefu.settle(user, 0).await;
    assert_eq!(w["grants"], json!([]), "{w}");
    let quota = kefu::delivery::HELD_FOR_QUOTA;
    assert_eq!(
        states(&kefu.outbox().await),
        vec![
            sent("c1"),
            sent("c2"),
            sent(&format!("c3{MORE}")),
            held("c4", quota),
            held("c-late", quota)
        ]
    );
    assert_eq!(sends(&mock), three, "nothing after the window");
    kefu.stop().await;
}

// ---- 5. unsubscribe cancels what is pending -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_cancels_pending_delayed_messages() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, false).await;
    let user = "oPipeUnsub";
    assert_eq!(kefu.push(&text_push(user, "later", 5001, kefu.now_secs())).await.1, "success");
    kefu.settle(user, 2).await; // typing and "now" done; "in 3s" and "in 6s" wait
    assert_eq!(sends(&mock), vec![text_body(user, "now")]);
    assert_eq!(
        mock.requests_to(TYPING_PATH).iter().map(|r| r.json().unwrap()).collect::<Vec<_>>(),
        vec![json!({"touser": user, "command": "Typing"})]
    );

    let (status, body) = kefu.push(&event_push(user, "unsubscribe", "", kefu.now_secs())).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    let w = kefu.window(user).await;
    assert_eq!(
        w,
        json!({"openid": user, "open": false, "subscribed": false, "grants": [], "pending": 0, "held": 0})
    );
    let entries = kefu.outbox().await;
    assert_eq!(
        entries.iter().map(|e| (e.status, e.reason.as_deref())).collect::<Vec<_>>(),
        vec![
            (OutboxStatus::Sent, None),
            (OutboxStatus::Sent, None),
            (OutboxStatus::Dropped, Some(UNSUBSCRIBED)),
            (OutboxStatus::Dropped, Some(UNSUBSCRIBED)),
        ]
    );
    assert!(
        kefu.shared
            .metrics
            .render()
            .contains("kefu_dropped_messages_total{reason=\"unsubscribed\"} 2\n"),
        "the two cancelled messages are counted as dropped"
    );

    // Their time comes and goes: the sender only ever picks pending entries, so nothing
    // leaves. Give it two of its polling periods to prove it.
    kefu.clock.advance(Duration::from_secs(10));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(sends(&mock), vec![text_body(user, "now")]);
    assert_eq!(mock.count(TYPING_PATH), 1);
    kefu.stop().await;
}

// ---- 6. WeChat's 45015 closes the window; 45047 exhausts it ---------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_45015_closes_the_window_and_later_messages_are_held() {
    let mock = MockWechat::start();
    mock.push_error(SEND_PATH, 45015, "response out of time limit or subscription is canceled");
    let kefu = Kefu::start(&mock, false).await;
    let user = "oPipe45015";
    assert_eq!(kefu.push(&text_push(user, "six", 6001, kefu.now_secs())).await.1, "success");
    let w = kefu.settle(user, 0).await;

    assert_eq!(sends(&mock), vec![text_body(user, "m1")], "one attempt, then nothing");
    let entries = kefu.outbox().await;
    assert_eq!(entries[0].status, OutboxStatus::Held, "held for the next push, not lost");
    assert!(entries[0].reason.as_deref().unwrap_or("").contains("45015"), "{:?}", entries[0]);
    let closed = DenyReason::Closed.to_string();
    assert_eq!(
        states(&entries[1..]),
        vec![
            held("m2", &closed),
            held("m3", &closed),
            held("m4", &closed),
            held(&format!("m5{MORE}"), &closed),
            held("m6", kefu::delivery::HELD_FOR_QUOTA),
        ]
    );
    assert_eq!(
        w,
        json!({"openid": user, "open": false, "subscribed": true, "grants": [], "pending": 0, "held": 6})
    );
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_45015_delayed_typing_and_messages_are_not_attempted() {
    let mock = MockWechat::start();
    mock.push_error(SEND_PATH, 45015, "response out of time limit or subscription is canceled");
    let kefu = Kefu::start(&mock, false).await;
    let user = "oPipeClosing";
    assert_eq!(kefu.push(&text_push(user, "closing", 6003, kefu.now_secs())).await.1, "success");
    kefu.settle(user, 2).await; // k1 failed; the typing indicator and k2 wait 2 s
    assert_eq!(kefu.window(user).await["grants"], json!([]));

    kefu.clock.advance(Duration::from_secs(3));
    kefu.settle(user, 0).await;
    let entries = kefu.outbox().await;
    assert_eq!(
        entries.iter().map(|e| e.status).collect::<Vec<_>>(),
        [OutboxStatus::Held, OutboxStatus::Dropped, OutboxStatus::Held]
    );
    assert!(entries[1].reason.as_deref().unwrap_or("").contains("typing indicator"));
    assert_eq!(entries[2].reason.as_deref(), Some(DenyReason::Closed.to_string().as_str()));
    assert_eq!(sends(&mock), vec![text_body(user, "k1")]);
    assert_eq!(mock.count(TYPING_PATH), 0, "no typing indicator outside the window");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_45047_exhausts_the_window() {
    let mock = MockWechat::start();
    mock.push(SEND_PATH, crate::mock_wechat::MockResponse::ok());
    mock.push_error(SEND_PATH, 45047, "out of response count limit");
    let kefu = Kefu::start(&mock, false).await;
    let user = "oPipe45047";
    assert_eq!(kefu.push(&text_push(user, "six", 6002, kefu.now_secs())).await.1, "success");
    let w = kefu.settle(user, 0).await;
    let t = kefu.now_secs();

    assert_eq!(sends(&mock), vec![text_body(user, "m1"), text_body(user, "m2")]);
    let entries = kefu.outbox().await;
    assert_eq!(entries[1].status, OutboxStatus::Held);
    assert!(entries[1].reason.as_deref().unwrap_or("").contains("45047"), "{:?}", entries[1]);
    let used_up = DenyReason::Exhausted.to_string();
    assert_eq!(
        states(&entries[2..]),
        vec![
            held("m3", &used_up),
            held("m4", &used_up),
            held(&format!("m5{MORE}"), &used_up),
            held("m6", kefu::delivery::HELD_FOR_QUOTA),
        ]
    );
    // The grant stays visible until it expires, but is used up: no live grant with quota.
    assert_eq!(
        w,
        json!({"openid": user, "open": false, "subscribed": true,
               "grants": [grant("message", t, H48, Some(5), 5)], "pending": 0, "held": 5})
    );
    kefu.stop().await;
}

// ---- 9. a WeChat Pay v2 notification opens the payment window and fires the payment rule ---

/// A v2 success notification for `openid`, signed with MD5 like fixture N1.
fn v2_notification(openid: &str, transaction_id: &str, out_trade_no: &str, fen: u64) -> String {
    v2_notification_signed(openid, transaction_id, out_trade_no, fen, SignType::Md5)
}

/// The same signed with `sign_type`'s algorithm and no `sign_type` element (as WeChat Pay
/// sends notifications of orders placed with HMAC-SHA256).
fn v2_notification_signed(
    openid: &str,
    transaction_id: &str,
    out_trade_no: &str,
    fen: u64,
    sign_type: SignType,
) -> String {
    let mut fields = std::collections::BTreeMap::new();
    for (k, v) in [
        // The account's own AppID: a payment through another app opens nothing.
        ("appid", helpers::APP_ID),
        ("bank_type", "CMC"),
        ("fee_type", "CNY"),
        ("is_subscribe", "Y"),
        ("mch_id", "10000100"),
        ("nonce_str", "5d2b6c2a8db53831f7eda20af46e531c"),
        ("result_code", "SUCCESS"),
        ("return_code", "SUCCESS"),
        ("time_end", "20240501120000"),
        ("trade_type", "JSAPI"),
    ] {
        fields.insert(k.to_string(), v.to_string());
    }
    fields.insert("openid".into(), openid.into());
    fields.insert("transaction_id".into(), transaction_id.into());
    fields.insert("out_trade_no".into(), out_trade_no.into());
    fields.insert("total_fee".into(), fen.to_string());
    fields.insert("cash_fee".into(), fen.to_string());
    let sign = v2::sign(&fields, &Secret::new(V2_KEY), sign_type);
    fields.insert("sign".into(), sign);
    let mut xml = String::from("<xml>");
    for (k, v) in &fields {
        xml.push_str(&format!("<{k}><![CDATA[{v}]]></{k}>"));
    }
    xml.push_str("</xml>");
    xml
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payment_notification_opens_a_payment_grant_and_sends_the_payment_rule_once() {
    let mock = MockWechat::start();
    let kefu = Kefu::start_with(&mock, true, |c| c.pay.v2_api_key = Secret::new(V2_KEY)).await;
    let payer = "oPipePayer";
    let xml = v2_notification(payer, "4200001234202405011234567890", "T202405010001", 990);
    let post = async || {
        let resp = kefu
            .app
            .client
            .post(format!("{}/pay/notify/v2", kefu.app.address))
            .header("content-type", "text/xml")
            .body(xml.clone())
            .send()
            .await
            .expect("POST /pay/notify/v2");
        (resp.status().as_u16(), resp.text().await.expect("pay answer"))
    };
    assert_eq!(post().await, (200, v2::SUCCESS_ANSWER.to_string()));

    let w = kefu.settle(payer, 0).await;
    let t = kefu.now_secs();
    // A payment says nothing about following: `subscribed` stays unknown.
    assert_eq!(
        w,
        json!({"openid": payer, "open": true, "subscribed": null,
               "grants": [grant("payment", t, H48, None, 2)], "pending": 0, "held": 0})
    );
    let want = vec![
        text_body(payer, "paid 9.90 yuan for order T202405010001"),
        text_body(payer, "thank you"),
    ];
    assert_eq!(sends(&mock), want, "a notification is no push: nothing passive");

    // WeChat Pay retries until it hears SUCCESS: the replay is acknowledged and plans nothing.
    assert_eq!(post().await, (200, v2::SUCCESS_ANSWER.to_string()));
    let w = kefu.settle(payer, 0).await;
    assert_eq!(w["grants"][0]["used"], json!(2), "{w}");
    assert_eq!(kefu.outbox().await.len(), 2);
    assert_eq!(sends(&mock), want);
    kefu.stop().await;
}

/// Issue 13 item 2: a notification signed with HMAC-SHA256 without a `sign_type` element is
/// acknowledged with SUCCESS and opens the payer's payment grant (it was refused with 401, and
/// WeChat Pay retried it for a day); one signed with another key still gets FAIL and opens
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_signed_payment_without_sign_type_opens_the_payment_grant() {
    let mock = MockWechat::start();
    let kefu = Kefu::start_with(&mock, true, |c| c.pay.v2_api_key = Secret::new(V2_KEY)).await;
    let post = async |xml: String| {
        let resp = kefu
            .app
            .client
            .post(format!("{}/pay/notify/v2", kefu.app.address))
            .header("content-type", "text/xml")
            .body(xml)
            .send()
            .await
            .expect("POST /pay/notify/v2");
        (resp.status().as_u16(), resp.text().await.expect("pay answer"))
    };
    let forger = "oPipeHmacForged";
    let mut forged = v2_notification_signed(
        forger,
        "4200001234202405011234567892",
        "T202405010003",
        990,
        SignType::HmacSha256,
    );
    // Re-signed with another key: the same shape, the wrong sign.
    let sign = helpers::between(&forged, "<sign><![CDATA[", "]]>").to_string();
    let mut fields = v2::parse_fields(forged.as_bytes()).expect("fields");
    fields.remove("sign");
    let other =
        v2::sign(&fields, &Secret::new("ffffffffffffffffffffffffffffffff"), SignType::HmacSha256);
    forged = forged.replace(&sign, &other);
    assert_eq!(post(forged).await, (401, v2::fail_answer("invalid signature")));

    let payer = "oPipeHmacPayer";
    let xml = v2_notification_signed(
        payer,
        "4200001234202405011234567891",
        "T202405010002",
        990,
        SignType::HmacSha256,
    );
    assert!(!xml.contains("sign_type"), "{xml}");
    assert_eq!(post(xml).await, (200, v2::SUCCESS_ANSWER.to_string()));
    let w = kefu.settle(payer, 0).await;
    let t = kefu.now_secs();
    assert_eq!(
        w,
        json!({"openid": payer, "open": true, "subscribed": null,
               "grants": [grant("payment", t, H48, None, 2)], "pending": 0, "held": 0})
    );
    assert_eq!(
        sends(&mock),
        vec![
            text_body(payer, "paid 9.90 yuan for order T202405010002"),
            text_body(payer, "thank you")
        ]
    );
    let w = kefu.settle(forger, 0).await;
    assert_eq!(w["grants"], json!([]), "{w}");
    kefu.stop().await;
}

// ---- shutdown keeps what is pending ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_stop_keeps_pending_messages_and_a_restart_sends_them_once() {
    let mock = MockWechat::start();
    let state = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(helpers::now_secs() * 1000 + 250));
    let user = "oPipeStop";
    let start = |clock: Arc<ManualClock>| {
        let cfg = config(&mock, state.path(), false);
        async move {
            let service = Service::build(cfg, clock).await.expect("kefu starts");
            let port = service.port();
            let handle = service.handle();
            let shared = service.shared();
            (port, handle, shared, tokio::spawn(service.run_until_stopped()))
        }
    };

    let (port, handle, shared, task) = start(clock.clone()).await;
    let q = helpers::signed_query(helpers::TOKEN, helpers::now_secs(), "n1");
    let resp = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/wechat"))
        .query(&q)
        .body(text_push(user, "later", 7001, helpers::now_secs()))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.text().await.unwrap(), "success");
    let who = kefu::model::OpenId::parse(user).unwrap();
    let deadline = tokio::time::Instant::now() + SETTLE;
    while shared.store.pending_count(&who).await.unwrap() != 2 {
        assert!(tokio::time::Instant::now() < deadline, "immediate sends did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.stop(true).await;
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
    drop(shared);

    // Restarted after both delays have passed: each is sent once, in order.
    clock.advance(Duration::from_secs(7));
    let (_, handle, shared, task) = start(clock.clone()).await;
    let deadline = tokio::time::Instant::now() + SETTLE;
    while shared.store.pending_count(&who).await.unwrap() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "delayed sends did not go out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        sends(&mock),
        vec![text_body(user, "now"), text_body(user, "in 3s"), text_body(user, "in 6s")]
    );
    assert_eq!(mock.token_fetches(), 1, "the stored access token survives the restart");
    handle.stop(true).await;
    tokio::time::timeout(Duration::from_secs(10), task).await.unwrap().unwrap().unwrap();
}
