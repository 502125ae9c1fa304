//! Issue 19, the conversation log (interface §8.1): every push and every answer with its
//! outcome, `kefu conversations list|show|delete`, `/admin/conversations*`, the reply endpoint
//! through the window gate, `/admin/events`, retention and erasure. The real kefu on
//! 127.0.0.1:0 against `MockWechat`; tests assert what the mock received and what the log says.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::kefu_in;
use crate::mock_wechat::MockWechat;
use crate::pipeline::{ADMIN_TOKEN, Kefu, SEND_PATH, sends, text_body, text_push};

/// `GET {path}` with the admin token: (status, JSON).
async fn admin_get(kefu: &Kefu, path: &str) -> (u16, Value) {
    let r = kefu.admin_get(path).await;
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// `POST {path}` with the admin token and a JSON body: (status, JSON).
async fn admin_post(kefu: &Kefu, path: &str, body: &str) -> (u16, Value) {
    let app = kefu.app();
    let r = app
        .client
        .post(format!("{}{path}", app.address))
        .bearer_auth(ADMIN_TOKEN)
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// The follower's log through the admin API, as (source, kind, text, via, outcome) tuples.
async fn log_lines(kefu: &Kefu, openid: &str) -> Vec<(String, String, String, String, String)> {
    let (status, v) = admin_get(kefu, &format!("/admin/conversations/{openid}")).await;
    assert_eq!(status, 200, "{v}");
    let s = |m: &Value, k: &str| m[k].as_str().unwrap_or("").to_string();
    v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (s(m, "source"), s(m, "kind"), s(m, "text"), s(m, "via"), s(m, "outcome")))
        .collect()
}

fn line(
    source: &str,
    kind: &str,
    text: &str,
    via: &str,
    outcome: &str,
) -> (String, String, String, String, String) {
    (source.into(), kind.into(), text.into(), via.into(), outcome.into())
}

/// Waits until the follower's log has `n` records.
async fn wait_for_records(
    kefu: &Kefu,
    openid: &str,
    n: usize,
) -> Vec<(String, String, String, String, String)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let l = log_lines(kefu, openid).await;
        if l.len() == n {
            return l;
        }
        assert!(tokio::time::Instant::now() < deadline, "{openid}: wanted {n} records, have {l:?}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_and_every_answer_are_logged_with_their_outcomes() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let user = "oConvHello";
    let (status, _) = kefu.push(&text_push(user, "hello", 1, kefu.now_secs())).await;
    assert_eq!(status, 200);
    kefu.settle(user, 0).await;
    let lines = wait_for_records(&kefu, user, 4).await;
    assert_eq!(
        lines,
        [
            line("follower", "text", "hello", "", ""),
            line("rule", "text", &format!("hi {user}, you said hello"), "passive", "sent"),
            line("rule", "image", "[图片]", "custom_send", "sent"),
            line("rule", "text", "还有别的吗？", "custom_send", "sent"),
        ]
    );
    // The logged body is exactly what the mock received.
    let (_, v) = admin_get(&kefu, &format!("/admin/conversations/{user}")).await;
    assert_eq!(v["messages"][2]["body"], sends(&mock)[0]);
    assert_eq!(v["messages"][2]["rule"], "hello");
    assert_eq!(v["window"]["open"], json!(true));

    // The list: followers by last activity, with their window.
    let other = "oConvOther";
    kefu.clock.advance(Duration::from_secs(1));
    kefu.push(&text_push(other, "nothing fires", 2, kefu.now_secs() + 1)).await;
    let (status, list) = admin_get(&kefu, "/admin/conversations?limit=10").await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["openid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [other, user], "newest first");
    assert_eq!(list["conversations"][1]["window"]["quota_left"], json!(3), "{list}");
    assert_eq!(list["conversations"][1]["records"], json!(4));
    // Paging: before the first one's last activity gives the second.
    let before = list["conversations"][0]["last_at_ms"].as_i64().unwrap();
    let (_, page) =
        admin_get(&kefu, &format!("/admin/conversations?limit=10&before={before}")).await;
    assert_eq!(page["conversations"].as_array().unwrap().len(), 1);
    assert_eq!(page["conversations"][0]["openid"], user);

    // Without the token: 401; a bad OpenID: 400.
    let app = kefu.app();
    let r = app.client.get(format!("{}/admin/conversations", app.address)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(admin_get(&kefu, "/admin/conversations/bad%20id").await.0, 400);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_goes_through_the_window_gate_and_is_logged_as_console() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let user = "oConvReply";
    kefu.push(&text_push(user, "nothing fires", 1, kefu.now_secs())).await;

    let path = format!("/admin/conversations/{user}/reply");
    let (status, v) = admin_post(&kefu, &path, r#"{"text": "人工回复 <b>"}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(sends(&mock), [text_body(user, "人工回复 <b>")], "exactly that custom/send body");
    let (status, v) = admin_post(&kefu, &path, r#"{"image": "MEDIA_X"}"#).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        sends(&mock)[1],
        json!({"touser": user, "msgtype": "image", "image": {"media_id": "MEDIA_X"}})
    );
    let lines = wait_for_records(&kefu, user, 3).await;
    assert_eq!(lines[1], line("console", "text", "人工回复 <b>", "custom_send", "sent"));
    assert_eq!(lines[2], line("console", "image", "[image]", "custom_send", "sent"));
    let (_, w) = admin_get(&kefu, &format!("/admin/windows/{user}")).await;
    assert_eq!(w["grants"][0]["used"], json!(2), "charged to the window: {w}");

    // A follower whose window is closed: 409 with the reason, nothing sent, nothing logged.
    let (status, v) =
        admin_post(&kefu, "/admin/conversations/oConvNeverSeen/reply", r#"{"text":"hi"}"#).await;
    assert_eq!(status, 409, "{v}");
    assert!(v["error"].as_str().unwrap().contains("window"), "{v}");
    assert_eq!(mock.count(SEND_PATH), 2);
    // Bad bodies: 400, nothing sent.
    for bad in
        ["not json", "{}", r#"{"text": ""}"#, r#"{"text": "x", "delay": "1m"}"#, r#"{"bogus": 1}"#]
    {
        assert_eq!(admin_post(&kefu, &path, bad).await.0, 400, "{bad}");
    }
    assert_eq!(mock.count(SEND_PATH), 2);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_events_stream_one_message_event_per_record() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let resp = kefu.admin_get("/admin/events").await;
    assert_eq!(resp.status().as_u16(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut resp = resp;
    let user = "oConvEvents";
    kefu.push(&text_push(user, "实时消息", 1, kefu.now_secs())).await;
    let mut got = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !got.contains("实时消息") {
        let chunk =
            tokio::time::timeout_at(deadline, resp.chunk()).await.expect("an event in time");
        got.push_str(&String::from_utf8_lossy(&chunk.expect("chunk").expect("stream open")));
    }
    let event = got.split("\n\n").find(|e| e.contains("实时消息")).unwrap();
    assert!(event.starts_with("event: message\nid: "), "{event}");
    let data: Value = serde_json::from_str(event.split("data: ").nth(1).unwrap()).unwrap();
    assert_eq!((data["openid"].as_str(), data["source"].as_str()), (Some(user), Some("follower")));
    // Without the token: 401.
    let app = kefu.app();
    let r = app.client.get(format!("{}/admin/events", app.address)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    drop(resp);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_older_than_log_retention_are_purged() {
    let mock = MockWechat::start();
    let kefu = Kefu::start_with(&mock, true, |c| c.log.retention = Duration::from_secs(2)).await;
    let user = "oConvRetention";
    kefu.push(&text_push(user, "hello", 1, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    wait_for_records(&kefu, user, 4).await;
    kefu.clock.advance(Duration::from_secs(3));
    wait_for_records(&kefu, user, 0).await;
    let (_, list) = admin_get(&kefu, "/admin/conversations").await;
    assert_eq!(list["conversations"], json!([]), "{list}");
    kefu.stop().await;

    // "0s" keeps no log at all.
    let kefu = Kefu::start_with(&mock, true, |c| c.log.retention = Duration::ZERO).await;
    kefu.push(&text_push(user, "hello", 2, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    assert_eq!(log_lines(&kefu, user).await, []);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_shows_and_deletes_log_and_llm_turns() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let user = "oConvCli";
    kefu.push(&text_push(user, "hello", 1, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    wait_for_records(&kefu, user, 4).await;
    let openid = kefu::model::OpenId::parse(user).unwrap();
    let turn = kefu::llm::Turn { at_ms: 1, user: "问".into(), assistant: "答".into() };
    kefu.shared.store.add_turn("assistant", &openid, turn, 10, 0).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let state = kefu.shared.cfg.state.dir.display().to_string();
    let env = [("KEFU_STATE_DIR", state.as_str())];
    let run = kefu_in(dir.path(), &env, &["conversations", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(list[0]["openid"], user);
    assert_eq!(list[0]["window"]["open"], json!(true));
    let run = kefu_in(dir.path(), &env, &["conversations", "list"]);
    assert!(run.stdout.contains(user) && run.stdout.contains("open, 3 left"), "{}", run.stdout);

    let run = kefu_in(dir.path(), &env, &["conversations", "show", user, "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let t: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(t["messages"].as_array().unwrap().len(), 4);
    assert_eq!(t["messages"][0]["text"], "hello");
    let run = kefu_in(dir.path(), &env, &["conversations", "show", user]);
    assert!(run.stdout.lines().next().unwrap().contains("follower text   hello"), "{}", run.stdout);
    let run = kefu_in(dir.path(), &env, &["conversations", "show", user, "--since", "2999-01-01"]);
    assert!(
        run.stdout.contains("no messages since 2999-01-01T00:00:00Z (4 in all)"),
        "{}",
        run.stdout
    );
    let run = kefu_in(dir.path(), &env, &["conversations", "show", user, "--since", "yesterday"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(kefu_in(dir.path(), &env, &["conversations", "show", "bad id"]).code, 2);

    let run = kefu_in(dir.path(), &env, &["conversations", "delete", user]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), format!("{user}: erased 4 logged messages and 1 kept LLM turns"));
    assert_eq!(log_lines(&kefu, user).await, []);
    assert!(kefu.shared.store.turns(None, &openid).await.unwrap().is_empty());
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_log_is_shared_and_erasable() {
    let Some(url) = crate::redis::test_redis_url() else { return };
    let mock = MockWechat::start();
    let kefu = on_redis(&mock, &url, |_| {}).await;
    let user = "oConvRedis";
    kefu.push(&text_push(user, "hello", 1, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    let lines = wait_for_records(&kefu, user, 4).await;
    assert_eq!(lines[0], line("follower", "text", "hello", "", ""));
    assert_eq!(lines[1].3, "passive");
    assert_eq!(lines[3], line("rule", "text", "还有别的吗？", "custom_send", "sent"));
    let (_, list) = admin_get(&kefu, "/admin/conversations").await;
    assert_eq!(list["conversations"][0]["openid"], user, "{list}");
    // The reply is logged in Redis too; delete erases it.
    let path = format!("/admin/conversations/{user}/reply");
    assert_eq!(admin_post(&kefu, &path, r#"{"text":"好"}"#).await.0, 200);
    wait_for_records(&kefu, user, 5).await;
    let openid = kefu::model::OpenId::parse(user).unwrap();
    let erased =
        kefu::pipeline::conversations::delete(kefu.shared.store.as_ref(), &openid).await.unwrap();
    assert_eq!(erased.records, 5);
    assert_eq!(log_lines(&kefu, user).await, []);
    kefu.stop().await;
}

/// The store writes what the sender and the push commit decide, with the source each answer
/// carries: a backend's answer (passive in time, or sent later) is logged as `backend`, a held
/// answer as `held`, a refused one as `dropped` with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_logs_each_answer_with_its_source_and_outcome() {
    use kefu::convlog::{LogOutcome, LogRecord, Via};
    use kefu::delivery::{OwnPassive, Terms};
    use kefu::model::{
        OutMessage, OutboxAction, PassiveReply, PlannedAction, Source, Trigger, WindowEffect,
    };
    use kefu::store::{NewOutboxEntry, Outcome, PushCommit, SqliteStore, Store};

    let dir = tempfile::tempdir().unwrap();
    let clock: kefu::model::SharedClock = std::sync::Arc::new(kefu::model::SystemClock);
    let now = kefu::model::Clock::now_ms(&*clock);
    let store =
        SqliteStore::open(dir.path(), &Default::default(), 660, Default::default(), clock).unwrap();
    store.configure_log(Duration::from_secs(3600), true);
    let mut live = store.log_bus().subscribe();
    let who = kefu::model::OpenId::parse("oConvStore").unwrap();
    let answer = |rule: &str, text: &str| PlannedAction {
        rule: rule.into(),
        action: OutboxAction::Send { message: OutMessage::Text { content: text.into() } },
        delay: Duration::ZERO,
        kf_account: None,
        source: Source::Backend,
    };
    let entry = |seq: u32, text: &str| NewOutboxEntry {
        rule: "ask".into(),
        seq,
        action: answer("ask", text),
        due_at_ms: now,
    };
    let commit = PushCommit {
        dedupe_key: "m:store:1".into(),
        openid: who.clone(),
        effect: WindowEffect::Open(Trigger::Message),
        received_at_ms: now,
        passive: Some(OwnPassive {
            rule: "ask".into(),
            reply: PassiveReply::text("第一段"),
            source: Source::Backend,
        }),
        outbox: vec![entry(0, "第二段"), entry(1, "第三段")],
        terms: Terms { passive_slot: true, customer_service: true, ..Terms::default() },
        log: Some(LogRecord::push(&who, now, ("text".into(), "问题".into()))),
    };
    let kefu::store::CommitOutcome::Fresh { outbox_ids, .. } =
        store.commit_push(commit).await.unwrap()
    else {
        panic!("a fresh push")
    };
    assert_eq!(outbox_ids.len(), 2);
    store.finish(outbox_ids[0], Outcome::Sent).await.unwrap();
    store
        .finish(
            outbox_ids[1],
            Outcome::Failed { reason: "WeChat API errcode 45047 (quota)".into() },
        )
        .await
        .unwrap();
    let log = store.log_show(&who, None).await.unwrap();
    let got: Vec<_> =
        log.iter().map(|r| (r.source, r.via, r.outcome, r.text.as_str(), r.errcode)).collect();
    assert_eq!(
        got,
        [
            (Source::Follower, None, None, "问题", None),
            (Source::Backend, Some(Via::Passive), Some(LogOutcome::Sent), "第一段", None),
            (Source::Backend, Some(Via::CustomSend), Some(LogOutcome::Sent), "第二段", None),
            (
                Source::Backend,
                Some(Via::CustomSend),
                Some(LogOutcome::Failed),
                "第三段",
                Some(45047)
            ),
        ]
    );
    // Each record was published once committed, in order.
    for want in &log {
        let r = tokio::time::timeout(Duration::from_secs(5), live.recv()).await.unwrap().unwrap();
        assert_eq!(&r, want);
    }
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_window_cannot_carry_is_logged_as_held() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, false).await;
    let user = "oConvHeld";
    kefu.push(&text_push(user, "six", 1, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    let lines = wait_for_records(&kefu, user, 7).await;
    assert_eq!(lines[0], line("follower", "text", "six", "", ""));
    let outcomes: Vec<(&str, &str)> =
        lines[1..].iter().map(|l| (l.2.as_str(), l.4.as_str())).collect();
    // m6 is held in the push's commit (the quota of 5 is spoken for); m1–m5 are sent, the
    // last with more_text.
    let m5 = format!("m5{}", crate::pipeline::MORE);
    assert_eq!(
        outcomes,
        [
            ("m6", "held"),
            ("m1", "sent"),
            ("m2", "sent"),
            ("m3", "sent"),
            ("m4", "sent"),
            (m5.as_str(), "sent")
        ]
    );
    let (_, v) = admin_get(&kefu, &format!("/admin/conversations/{user}")).await;
    assert_eq!(v["messages"][1]["reason"], kefu::delivery::HELD_FOR_QUOTA);
    assert_eq!(v["window"]["held"], json!(1));
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_purge_trims_what_is_past_retention() {
    let Some(url) = crate::redis::test_redis_url() else { return };
    let mock = MockWechat::start();
    let kefu = on_redis(&mock, &url, |c| c.log.retention = Duration::from_secs(200)).await;
    let (user, idle) = ("oConvTrim", "oConvIdle");
    kefu.push(&text_push(idle, "很久以前", 1, kefu.now_secs())).await;
    kefu.push(&text_push(user, "旧消息", 2, kefu.now_secs())).await;
    // (Within server.max_clock_skew_secs of the real clock, or the push would be refused.)
    kefu.clock.advance(Duration::from_secs(150));
    kefu.push(&text_push(user, "新消息", 3, kefu.now_secs())).await;
    kefu.clock.advance(Duration::from_secs(100));
    let store = kefu.shared.store.clone();
    let purged = store.log_purge(kefu::model::Clock::now_ms(&*kefu.clock)).await.unwrap();
    assert_eq!(purged, 2, "the idle follower's record and the old one");
    let texts: Vec<String> = log_lines(&kefu, user).await.into_iter().map(|l| l.2).collect();
    assert_eq!(texts, ["新消息"]);
    assert_eq!(log_lines(&kefu, idle).await, []);
    let (_, list) = admin_get(&kefu, "/admin/conversations").await;
    let ids: Vec<&str> = list["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["openid"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [user]);
    // A second pass finds nothing more to do.
    assert_eq!(store.log_purge(kefu::model::Clock::now_ms(&*kefu.clock)).await.unwrap(), 0);
    let openid = kefu::model::OpenId::parse(user).unwrap();
    kefu::pipeline::conversations::delete(store.as_ref(), &openid).await.unwrap();
    kefu.stop().await;
}

/// Logs one follower message per (OpenID, Unix ms), straight into the store as a push would.
async fn log_messages(kefu: &Kefu, followers: &[(String, i64)], text: &str) {
    let records = followers
        .iter()
        .map(|(o, at_ms)| {
            let who = kefu::model::OpenId::parse(o).unwrap();
            kefu::convlog::LogRecord::push(&who, *at_ms, ("text".into(), text.into()))
        })
        .collect();
    kefu.shared.store.log_append(records).await.unwrap();
}

/// `n` followers `{prefix}{i}` last active at `at_ms(i)`.
fn followers(prefix: &str, n: usize, at_ms: impl Fn(i64) -> i64) -> Vec<(String, i64)> {
    (0..n as i64).map(|i| (format!("{prefix}{i:04}"), at_ms(i))).collect()
}

/// The OpenIDs of `followers`.
fn ids_of(followers: &[(String, i64)]) -> Vec<String> {
    followers.iter().map(|(o, _)| o.clone()).collect()
}

/// `KEFU_STATE_DIR` of the running kefu, for the CLI beside it.
fn state_env(kefu: &Kefu) -> [(&'static str, String); 1] {
    [("KEFU_STATE_DIR", kefu.shared.cfg.state.dir.display().to_string())]
}

/// Every follower of the list, page by page with `limit`, following `next_before`; also
/// the size of each page.
async fn all_pages(kefu: &Kefu, limit: usize) -> (Vec<String>, Vec<usize>) {
    let (mut ids, mut sizes, mut before) = (Vec::new(), Vec::new(), None::<String>);
    loop {
        let path = match &before {
            Some(b) => format!("/admin/conversations?limit={limit}&before={b}"),
            None => format!("/admin/conversations?limit={limit}"),
        };
        let (status, page) = admin_get(kefu, &path).await;
        assert_eq!(status, 200, "{path}: {page}");
        let list = page["conversations"].as_array().unwrap();
        sizes.push(list.len());
        ids.extend(list.iter().map(|c| c["openid"].as_str().unwrap().to_string()));
        match page["next_before"].as_str() {
            Some(b) => before = Some(b.to_string()),
            None => {
                assert_eq!(page["next_before"], Value::Null, "{page}");
                return (ids, sizes);
            }
        }
        assert!(sizes.len() < 1000, "paging does not end");
    }
}

/// Asserts the pages listed each follower once, newest first, ties by OpenID descending.
fn assert_listed_once(ids: &[String], want: &[String]) {
    let mut sorted = ids.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len(), "a follower listed twice");
    let mut expected = want.to_vec();
    expected.sort();
    assert_eq!(sorted, expected, "every follower listed");
}

/// From the new-operator trial: a `limit` above the cap (500) gives 500 and the cursor of the
/// rest, not a silent end; the CLI reads past the cap in pages, takes `--before`, and says
/// when it cut the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_above_the_cap_says_where_the_rest_starts() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let now_ms = kefu.now_secs() * 1000;
    let all = followers("oCap", 501, |i| now_ms - i);
    log_messages(&kefu, &all, "你好").await;

    let (status, page) = admin_get(&kefu, "/admin/conversations?limit=5000").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["conversations"].as_array().unwrap().len(), 500);
    assert_eq!(page["next_before"], format!("{}:oCap0499", now_ms - 499));
    let (ids, sizes) = all_pages(&kefu, 5000).await;
    assert_eq!(sizes, [500, 1]);
    assert_eq!(ids, ids_of(&all), "newest first");
    // 501 is cut to 500 as well; the cursor gives the last one.
    let (_, page) = admin_get(&kefu, "/admin/conversations?limit=501").await;
    assert!(page["next_before"].is_string(), "{}", page["next_before"]);
    let (_, page) = admin_get(
        &kefu,
        &format!("/admin/conversations?before={}", page["next_before"].as_str().unwrap()),
    )
    .await;
    assert_eq!(
        (page["conversations"].as_array().unwrap().len(), &page["next_before"]),
        (1, &Value::Null)
    );

    let dir = tempfile::tempdir().unwrap();
    let env = state_env(&kefu);
    let env = [(env[0].0, env[0].1.as_str())];
    let run = kefu_in(dir.path(), &env, &["conversations", "list", "--json", "--limit", "5000"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 501);
    assert!(!run.stderr.contains("more remain"), "{}", run.stderr);
    let run = kefu_in(dir.path(), &env, &["conversations", "list", "--limit", "500"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1 + 500 + 1, "header, rows, the note");
    let last = run.stdout.lines().last().unwrap();
    let more = last.strip_prefix("… more: kefu conversations list --before ").expect(last);
    assert_eq!(more, format!("{}:oCap0499", now_ms - 499));
    let run = kefu_in(dir.path(), &env, &["conversations", "list", "--before", more]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rows: Vec<&str> = run.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{}", run.stdout);
    assert!(rows[0].contains("oCap0500"), "{}", run.stdout);
    let run = kefu_in(dir.path(), &env, &["conversations", "list", "--json", "--limit", "3"]);
    assert_eq!(serde_json::from_str::<Value>(&run.stdout).unwrap().as_array().unwrap().len(), 3);
    let note =
        format!("3 listed, more remain: kefu conversations list --before {}:oCap0002", now_ms - 2);
    assert!(run.stderr.contains(&note), "{}", run.stderr);
    kefu.stop().await;
}

/// From the new-operator trial: followers last active in the same millisecond are neither
/// skipped nor repeated across pages (ordered by OpenID, descending, within the millisecond).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_active_in_the_same_millisecond_page_once() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let now_ms = kefu.now_secs() * 1000;
    let mut all = followers("oTie", 12, |_| now_ms);
    all.push(("oEarlier".into(), now_ms - 1000));
    log_messages(&kefu, &all, "同一毫秒").await;
    let mut want = ids_of(&all[..12]);
    want.reverse();
    want.push("oEarlier".into());
    for limit in [1, 5, 12, 13, 50] {
        let (ids, sizes) = all_pages(&kefu, limit).await;
        assert_eq!(ids, want, "limit {limit}");
        assert_eq!(sizes.len(), 13usize.div_ceil(limit), "limit {limit}: {sizes:?}");
    }
    // A plain ms still pages: followers last active before it.
    let (_, page) = admin_get(&kefu, &format!("/admin/conversations?before={now_ms}")).await;
    assert_eq!(page["conversations"][0]["openid"], "oEarlier", "{page}");
    assert_eq!(page["next_before"], Value::Null);
    kefu.stop().await;
}

/// From the new-operator trial: `limit=0` is refused (it listed one follower), and a malformed
/// or unknown query parameter is a 400 `{"error"}` naming it and the form expected, not a
/// text/plain "Query deserialize error"; the CLI refuses the same with exit 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_zero_and_malformed_parameters_are_refused_naming_them() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let now_ms = kefu.now_secs() * 1000;
    log_messages(&kefu, &[("oParams".into(), now_ms)], "你好").await;
    for (query, names, form) in [
        ("/admin/conversations?limit=0", "limit=\"0\"", "1 to 500"),
        ("/admin/conversations?limit=abc", "limit=\"abc\"", "1 to 500"),
        ("/admin/conversations?limit=-1", "limit=", "1 to 500"),
        ("/admin/conversations?before=abc", "before=\"abc\"", "<last_at_ms>:<openid>"),
        ("/admin/conversations?before=1:bad%20id", "before=", "<last_at_ms>:<openid>"),
        ("/admin/conversations?befor=1", "\"befor\"", "limit, before"),
        ("/admin/conversations?limit=1&limit=2", "\"limit\"", "twice"),
        ("/admin/conversations/oParams?since=yesterday", "since=", "Unix milliseconds"),
        ("/admin/conversations/oParams?since=1.5", "since=", "Unix milliseconds"),
    ] {
        let r = kefu.admin_get(query).await;
        assert_eq!(r.status().as_u16(), 400, "{query}");
        let ct = r.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "{query}: {ct}");
        let v: Value = r.json().await.unwrap();
        let error = v["error"].as_str().unwrap_or_else(|| panic!("{query}: {v}"));
        assert!(error.contains(names) && error.contains(form), "{query}: {error}");
    }
    let (status, v) =
        admin_get(&kefu, &format!("/admin/conversations/oParams?since={now_ms}")).await;
    assert_eq!((status, v["messages"].as_array().unwrap().len()), (200, 1), "{v}");
    let (status, v) = admin_get(&kefu, "/admin/conversations?limit=1").await;
    assert_eq!((status, v["conversations"].as_array().unwrap().len()), (200, 1), "{v}");

    let dir = tempfile::tempdir().unwrap();
    let env = state_env(&kefu);
    let env = [(env[0].0, env[0].1.as_str())];
    for bad in [&["--limit", "0"][..], &["--before", "soon"]] {
        let args: Vec<&str> = ["conversations", "list"].iter().chain(bad).copied().collect();
        let run = kefu_in(dir.path(), &env, &args);
        assert_eq!(run.code, 2, "{bad:?}: {}", run.stdout);
        assert!(run.stderr.contains(bad[0]), "{}", run.stderr);
    }
    kefu.stop().await;
}

/// From the new-operator trial: a follower's text cannot forge lines or drive the terminal
/// in the human output of `list` and `show`; `--json` keeps it as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_escapes_follower_text_in_list_and_show() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let now_ms = kefu.now_secs() * 1000;
    let user = "oConvForger";
    let forged = "hi\n2026-01-01T00:00:00Z rule     text   forged  [sent]\u{1b}]0;pwned\u{7}\
                  \u{1b}[2J\u{9b}\u{202e}evil\r\ttab 你好";
    log_messages(&kefu, &[(user.to_string(), now_ms)], forged).await;

    let dir = tempfile::tempdir().unwrap();
    let state = kefu.shared.cfg.state.dir.display().to_string();
    let env = [("KEFU_STATE_DIR", state.as_str())];
    let escaped = "hi⏎2026-01-01T00:00:00Z rule     text   forged  [sent]\\u{1b}]0;pwned\\u{7}\
                   \\u{1b}[2J\\u{9b}\\u{202e}evil\\r\\ttab 你好";
    let run = kefu_in(dir.path(), &env, &["conversations", "show", user]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.trim_end().ends_with(escaped), "{}", run.stdout);
    let run = kefu_in(dir.path(), &env, &["conversations", "list"]);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    assert!(run.stdout.contains(escaped), "{}", run.stdout);
    let show = kefu_in(dir.path(), &env, &["conversations", "show", user]).stdout;
    for out in [&run.stdout, &show] {
        assert!(!out.contains(['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}', '\r', '\t']), "{out:?}");
    }
    let run = kefu_in(dir.path(), &env, &["conversations", "show", user, "--json"]);
    let t: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(t["messages"][0]["text"], forged, "JSON keeps the text as sent");

    let run = kefu_in(dir.path(), &env, &["conversations", "show", "oNobody"]);
    assert_eq!(run.stdout.trim(), "oNobody: no messages logged");
    kefu.stop().await;
}

/// On Redis, followers active in the same millisecond page as on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_paging_is_tie_safe() {
    let Some(url) = crate::redis::test_redis_url() else { return };
    let mock = MockWechat::start();
    let kefu = on_redis(&mock, &url, |_| {}).await;
    let now_ms = kefu.now_secs() * 1000;
    let mut all = followers("oRedisTie", 5, |_| now_ms);
    all.push(("oRedisEarlier".into(), now_ms - 1000));
    log_messages(&kefu, &all, "同一毫秒").await;
    let everyone = ids_of(&all);
    for limit in [1, 2, 4, 6, 10] {
        let (ids, sizes) = all_pages(&kefu, limit).await;
        assert_listed_once(&ids, &everyone);
        assert_eq!(ids[0], "oRedisTie0004", "limit {limit}: ties by OpenID descending");
        assert_eq!(sizes.len(), 6usize.div_ceil(limit).max(1), "limit {limit}: {sizes:?}");
    }
    // An expired follower still in the index does not cut a page short.
    let mut raw = ::redis::Client::open(url.as_str()).unwrap().get_connection().unwrap();
    let app_id = kefu.app().cfg.wechat.app_id.clone();
    let key = format!("kefu:{{{app_id}}}:log:oRedisTie0003");
    let _: i64 = ::redis::cmd("DEL").arg(&key).query(&mut raw).unwrap();
    let (ids, sizes) = all_pages(&kefu, 2).await;
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(sizes, [2, 2, 1]);
    for o in &everyone {
        let o = kefu::model::OpenId::parse(o).unwrap();
        kefu.shared.store.log_delete(&o).await.unwrap();
    }
    kefu.stop().await;
}

/// From the new-operator trial: `--since 1796058340000` (ms) was read as seconds and showed
/// nothing; a number above 10^11 is ms. A filter that hides everything says so, with the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_since_reads_ms_and_says_what_the_filter_hid() {
    let mock = MockWechat::start();
    let kefu = Kefu::start(&mock, true).await;
    let now_ms = kefu.now_secs() * 1000;
    let user = "oConvSince";
    log_messages(&kefu, &[(user.to_string(), now_ms)], "你好").await;
    let dir = tempfile::tempdir().unwrap();
    let env = state_env(&kefu);
    let env = [(env[0].0, env[0].1.as_str())];
    // --since in ms (above 10^11) is ms; in seconds it still works.
    for since in [now_ms - 1000, now_ms / 1000 - 1] {
        let run = kefu_in(
            dir.path(),
            &env,
            &["conversations", "show", user, "--since", &since.to_string()],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        assert!(run.stdout.contains("你好"), "--since {since}: {}", run.stdout);
    }
    let run = kefu_in(
        dir.path(),
        &env,
        &["conversations", "show", user, "--since", &(now_ms + 1000).to_string()],
    );
    assert!(run.stdout.contains(": no messages since 20") && run.stdout.contains("(1 in all)"));
    let run = kefu_in(dir.path(), &env, &["conversations", "show", user, "--since", "2999-01-01"]);
    assert_eq!(
        run.stdout.trim(),
        format!("{user}: no messages since 2999-01-01T00:00:00Z (1 in all)")
    );
    kefu.stop().await;
}

#[tokio::test]
async fn delete_overwrites_the_followers_text_in_the_database_file() {
    use kefu::store::{SqliteStore, Store};
    // A data-subject request: once SQLite has checkpointed (it does by itself as the WAL
    // grows; here by hand), the deleted text is nowhere in the database file.
    let dir = tempfile::tempdir().unwrap();
    let clock: kefu::model::SharedClock = std::sync::Arc::new(kefu::model::SystemClock);
    let now = kefu::model::Clock::now_ms(&*clock);
    let store =
        SqliteStore::open(dir.path(), &Default::default(), 660, Default::default(), clock).unwrap();
    store.configure_log(Duration::from_secs(3600), true);
    let who = kefu::model::OpenId::parse("oConvErased").unwrap();
    const SECRET_TEXT: &str = "我的身份证号是一二三四五六七八九零";
    let body = kefu::api::SendBody::parse(serde_json::json!(
        {"touser": "oConvErased", "msgtype": "text", "text": {"content": SECRET_TEXT}}
    ))
    .unwrap();
    let records: Vec<_> = (0..50)
        .map(|i| {
            kefu::convlog::LogRecord::console(&body, now + i, kefu::convlog::LogOutcome::Sent, None)
        })
        .collect();
    store.log_append(records).await.unwrap();
    assert_eq!(store.log_delete(&who).await.unwrap(), 50);
    store.close();
    let db = dir.path().join("kefu.sqlite3");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
    drop(conn);
    let bytes = std::fs::read(&db).unwrap();
    let needle = SECRET_TEXT.as_bytes();
    assert!(!bytes.windows(needle.len()).any(|w| w == needle), "the deleted text is still on disk");
}

/// kefu on the shared Redis at `url`, in a namespace of its own (a random app id).
async fn on_redis(
    mock: &MockWechat,
    url: &str,
    edit: impl FnOnce(&mut kefu::config::Config),
) -> Kefu {
    let app_id = format!("wxconv{:08x}", rand::random::<u32>());
    Kefu::start_with(mock, true, |c| {
        c.state.redis_url = kefu::model::Secret::new(url);
        c.wechat.app_id = app_id;
        edit(c);
    })
    .await
}
