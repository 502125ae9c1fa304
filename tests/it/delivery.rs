//! Issue 15, delivery (interface §7.4, §7.5): long text split to WeChat's limit, answers held
//! for the follower's next push when the window or the account cannot carry them, and
//! `delivery.customer_service`. The real kefu on 127.0.0.1:0 against `MockWechat`; each test
//! asserts what the mock received, the passive answers, and the ledger's `held`.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::crash::{Child, admin_window, child_env, post_push};
use crate::mock_wechat::MockWechat;
use crate::pipeline::{
    Kefu, MORE, SEND_PATH, content, held, sends, sent, states, text_body, text_push,
};
use kefu::config::CustomerServiceMode;
use kefu::store::OutboxStatus;

/// Writes `toml` as the only rule file of a fresh directory.
fn rules(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("10-delivery.toml"), toml).expect("rule file");
    dir
}

/// A rule answering `keyword` with each of `texts`, one reply each.
fn rule(name: &str, keyword: &str, texts: &[String]) -> String {
    let mut s =
        format!("[[rule]]\nname = \"{name}\"\n[rule.when]\ntext_contains = \"{keyword}\"\n");
    for t in texts {
        s += &format!("[[rule.reply]]\ntext = {}\n", toml::Value::String(t.clone()));
    }
    s
}

/// The texts the mock received through custom/send, in order.
pub(crate) fn sent_texts(mock: &MockWechat) -> Vec<String> {
    sends(mock).iter().map(|b| b["text"]["content"].as_str().unwrap_or("").to_string()).collect()
}

/// `n` bytes of Chinese text (n a multiple of 3) starting with a tag, so parts are told apart.
fn para(tag: char, n: usize) -> String {
    assert_eq!(n % 3, 0);
    let mut s = String::from(tag);
    while s.len() < n {
        s.push('字');
    }
    assert_eq!(s.len(), n, "tags are 3-byte characters");
    s
}

async fn start(
    mock: &MockWechat,
    rule_dir: &Path,
    edit: impl FnOnce(&mut kefu::config::Config),
) -> Kefu {
    let dir = rule_dir.to_path_buf();
    Kefu::start_with(mock, true, move |c| {
        c.rules.dir = dir;
        edit(c);
    })
    .await
}

// ---- long text --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5000_byte_text_splits_at_paragraph_breaks() {
    let paras =
        [para('甲', 702), para('乙', 801), para('丙', 900), para('丁', 1200), para('戊', 1401)];
    let long = paras.join("\n\n");
    assert!(long.len() > 5000, "{}", long.len());
    let dir = rules(&rule("long", "长文", std::slice::from_ref(&long)));
    let mock = MockWechat::start();
    let kefu = start(&mock, dir.path(), |_| {}).await;
    let user = "oDeliveryLong";

    let (status, answer) = kefu.push(&text_push(user, "长文", 1, kefu.now_secs())).await;
    assert_eq!(status, 200);
    kefu.settle(user, 0).await;
    let mut parts = vec![content(&answer)];
    parts.extend(sent_texts(&mock));
    // Each part ends at the last paragraph break within 2000 bytes, in order.
    assert_eq!(
        parts,
        [
            format!("{}\n\n{}", paras[0], paras[1]),
            paras[2].clone(),
            paras[3].clone(),
            paras[4].clone()
        ]
    );
    assert!(parts.iter().all(|p| p.len() <= 2000));
    assert_eq!(parts.join("\n\n"), long, "the parts rebuild the text, modulo the breaks");
    assert_eq!(kefu.window(user).await["held"], json!(0));
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_parts_with_a_fresh_quota_of_five_hold_two_for_the_next_push() {
    let parts: Vec<String> = "一二三四五六七八".chars().map(|c| para(c, 1500)).collect();
    let long = parts.join("\n\n");
    let toml = rule("long", "长文", &[long]) + &rule("next", "继续", &["好的".to_string()]);
    let dir = rules(&toml);
    let mock = MockWechat::start();
    let kefu = start(&mock, dir.path(), |_| {}).await;
    let user = "oDeliveryEight";

    let (_, answer) = kefu.push(&text_push(user, "长文", 1, kefu.now_secs())).await;
    assert_eq!(content(&answer), parts[0], "part 1 is the passive answer");
    let w = kefu.settle(user, 0).await;
    let mut want: Vec<String> = parts[1..5].to_vec();
    want.push(format!("{}{MORE}", parts[5]));
    assert_eq!(sent_texts(&mock), want, "parts 2-6 through custom/send, more_text on part 6");
    assert_eq!(w["held"], json!(2), "parts 7 and 8 wait: {w}");
    assert_eq!(w["grants"][0]["used"], json!(5));
    let full = kefu.window_full(user).await;
    let listed: Vec<(&str, &str)> = full["held_answers"]
        .as_array()
        .expect("held_answers")
        .iter()
        .map(|h| (h["rule"].as_str().unwrap(), h["text"].as_str().unwrap()))
        .collect();
    assert_eq!(listed, [("long", parts[6].as_str()), ("long", parts[7].as_str())], "oldest first");

    // The next push: part 7 passively, part 8 through custom/send, then its own answer.
    let next = text_push(user, "继续", 2, kefu.now_secs());
    let (_, answer) = kefu.push(&next).await;
    assert_eq!(content(&answer), parts[6]);
    let w = kefu.settle(user, 0).await;
    want.push(parts[7].clone());
    want.push("好的".into());
    assert_eq!(sent_texts(&mock), want);
    assert_eq!(w["held"], json!(0), "{w}");

    // WeChat's retry of that push: the same answer, nothing sent or delivered again.
    let (_, again) = kefu.push(&next).await;
    assert_eq!(content(&again), parts[6]);
    kefu.settle(user, 0).await;
    assert_eq!(sent_texts(&mock), want, "nothing twice");
    let metrics = kefu.shared.metrics.render();
    assert!(metrics.contains("kefu_held_delivered_total 2\n"), "{metrics}");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn placeholders_that_grow_a_text_past_the_limit_split_it_at_run_time() {
    let dir = rules(&rule("echo", "回声", &["{text}".to_string()]));
    let mock = MockWechat::start();
    let kefu = start(&mock, dir.path(), |c| c.delivery.max_text_bytes = 100).await;
    let user = "oDeliveryEcho";
    let text = format!("回声{}", "啊".repeat(60)); // 186 bytes, no break but characters
    let (_, answer) = kefu.push(&text_push(user, &text, 1, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    let mut parts = vec![content(&answer)];
    parts.extend(sent_texts(&mock));
    assert_eq!(parts.len(), 2, "{parts:?}");
    assert!(parts.iter().all(|p| p.len() <= 100), "{parts:?}");
    assert_eq!(parts.concat(), text, "split between characters, nothing lost");
    kefu.stop().await;
}

// ---- customer_service -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customer_service_off_delivers_held_answers_passively_one_per_push() {
    let texts: Vec<String> = ["一", "二", "三"].iter().map(|s| s.to_string()).collect();
    let dir = rules(&rule("three", "三条", &texts));
    let mock = MockWechat::start();
    let kefu =
        start(&mock, dir.path(), |c| c.delivery.customer_service = CustomerServiceMode::Off).await;
    let user = "oDeliveryOff";

    let (_, a) = kefu.push(&text_push(user, "三条", 1, kefu.now_secs())).await;
    assert_eq!(content(&a), format!("一{MORE}"));
    assert_eq!(kefu.settle(user, 0).await["held"], json!(2));
    let (_, b) = kefu.push(&text_push(user, "好", 2, kefu.now_secs())).await;
    assert_eq!(content(&b), format!("二{MORE}"));
    let (_, c) = kefu.push(&text_push(user, "嗯", 3, kefu.now_secs())).await;
    assert_eq!(content(&c), "三", "nothing left held: no more_text");
    let (_, d) = kefu.push(&text_push(user, "还在吗", 4, kefu.now_secs())).await;
    assert_eq!(d, "success");
    assert_eq!(kefu.window(user).await["held"], json!(0));
    assert_eq!(mock.count(SEND_PATH), 0, "no custom/send call at all");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_for_expiry_drops_with_reason_expired() {
    let texts: Vec<String> = ["一", "二"].iter().map(|s| s.to_string()).collect();
    let dir = rules(&rule("two", "两条", &texts));
    let mock = MockWechat::start();
    let kefu = start(&mock, dir.path(), |c| {
        c.delivery.customer_service = CustomerServiceMode::Off;
        c.delivery.hold_for = Duration::from_secs(3);
    })
    .await;
    let user = "oDeliveryExpire";
    let (_, a) = kefu.push(&text_push(user, "两条", 1, kefu.now_secs())).await;
    assert_eq!(content(&a), format!("一{MORE}"));
    assert_eq!(kefu.settle(user, 0).await["held"], json!(1));

    kefu.clock.advance(Duration::from_secs(4));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while kefu.outbox().await[0].status == OutboxStatus::Held {
        assert!(tokio::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        states(&kefu.outbox().await)[0],
        ("二".into(), OutboxStatus::Dropped, Some("expired".into()))
    );
    assert_eq!(kefu.window(user).await["held"], json!(0));
    let (_, b) = kefu.push(&text_push(user, "好", 2, kefu.now_secs())).await;
    assert_eq!(b, "success", "an expired answer is not delivered");
    let metrics = kefu.shared.metrics.render();
    assert!(metrics.contains("kefu_dropped_messages_total{reason=\"expired\"} 1\n"), "{metrics}");
    kefu.stop().await;
}

/// The real binary: its log is the evidence of the one warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_holds_the_account_after_48001_with_one_warning() {
    let mock = MockWechat::start();
    mock.push_error(SEND_PATH, 48001, "api unauthorized");
    let state = tempfile::tempdir().expect("tempdir");
    let texts: Vec<String> = ["一", "二", "三"].iter().map(|s| s.to_string()).collect();
    let dir = rules(&rule("three", "三条", &texts));
    let mut env = child_env(&mock, state.path(), false);
    env.push(("KEFU_RULES_DIR", dir.path().display().to_string()));
    let child = Child::spawn(&[], &env, state.path());
    let http = reqwest::Client::new();
    let hook = child.webhook();

    for (user, msg_id) in [("oDeliveryAuto1", 1), ("oDeliveryAuto2", 2)] {
        let xml = text_push(
            user,
            "三条",
            msg_id,
            kefu::model::Clock::now_secs(&kefu::model::SystemClock),
        );
        let (status, body) = post_push(&http, &hook, crate::helpers::TOKEN, &xml).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "success"), "passive_first off");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let w = admin_window(&http, &child, user).await;
            if w["held"] == json!(3) && w["pending"] == json!(0) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{w}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(mock.count(SEND_PATH), 1, "after the 48001 no further custom/send call");
    let warnings: Vec<String> = child
        .log_text()
        .lines()
        .filter(|l| l.contains("\"WARN\"") && l.contains("48001"))
        .map(str::to_string)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("certify the account"), "{}", warnings[0]);
    child.kill();
}

// ---- durability and several instances ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_answers_survive_sigkill_and_are_delivered_once() {
    let mock = MockWechat::start();
    let state = tempfile::tempdir().expect("tempdir");
    let texts: Vec<String> = ["一", "二", "三"].iter().map(|s| s.to_string()).collect();
    let dir = rules(&rule("three", "三条", &texts));
    let mut env = child_env(&mock, state.path(), true);
    env.push(("KEFU_RULES_DIR", dir.path().display().to_string()));
    env.push(("KEFU_DELIVERY_CUSTOMER_SERVICE", "off".into()));
    let http = reqwest::Client::new();
    let user = "oDeliveryKilled";
    let now = || kefu::model::Clock::now_secs(&kefu::model::SystemClock);

    let child = Child::spawn(&[], &env, state.path());
    let (_, a) = post_push(
        &http,
        &child.webhook(),
        crate::helpers::TOKEN,
        &text_push(user, "三条", 1, now()),
    )
    .await
    .unwrap();
    assert_eq!(content(&a), format!("一{MORE}"));
    child.kill();

    let child = Child::spawn(&[], &env, state.path());
    assert_eq!(admin_window(&http, &child, user).await["held"], json!(2), "still held");
    let mut got = Vec::new();
    for id in 2..=4 {
        let xml = text_push(user, "好", id, now());
        let (_, answer) =
            post_push(&http, &child.webhook(), crate::helpers::TOKEN, &xml).await.unwrap();
        got.push(content(&answer));
    }
    assert_eq!(got, [format!("二{MORE}"), "三".to_string(), String::new()], "once each, in order");
    assert_eq!(mock.count(SEND_PATH), 0);
    child.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_whichever_instance_gets_the_next_push_delivers_once() {
    let Some(url) = crate::redis::test_redis_url() else { return };
    let mock = MockWechat::start();
    let app_id = format!("wxdelivery{:08x}", rand::random::<u32>());
    let toml = rule("two", "两条", &["一".to_string(), "二".to_string()]);
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let edit = |c: &mut kefu::config::Config| {
        c.wechat.app_id = app_id.clone();
        c.delivery.customer_service = CustomerServiceMode::Off;
    };
    let a = crate::identity::Running::start_edited(&mock, da.path(), Some(&url), &toml, edit).await;
    let b = crate::identity::Running::start_edited(&mock, db.path(), Some(&url), &toml, edit).await;
    let user = "oDeliveryRedis";
    let now = crate::helpers::now_secs();

    let (_, first) = a.push_status(&text_push(user, "两条", 1, now)).await;
    assert_eq!(content(&first), format!("一{MORE}"));
    let next = text_push(user, "好", 2, now);
    let (_, on_b) = b.push_status(&next).await;
    assert_eq!(content(&on_b), "二", "instance b delivers what a held");
    let (_, retry_on_a) = a.push_status(&next).await;
    assert_eq!(content(&retry_on_a), "二", "a redelivery to a gets the same answer");
    let (_, later) = a.push_status(&text_push(user, "嗯", 3, now)).await;
    assert_eq!(later, "success", "delivered once: nothing left for a");
    // Held again on a; the unfollow reaches b and drops it from the shared mailbox.
    let (_, again) = a.push_status(&text_push(user, "两条", 4, now)).await;
    assert_eq!(content(&again), format!("一{MORE}"));
    let unfollow = crate::pipeline::event_push(user, "unsubscribe", "", now);
    assert_eq!(b.push_status(&unfollow).await.0, 200);
    let (_, back) = a.push_status(&text_push(user, "嗯", 5, now)).await;
    assert_eq!(back, "success", "nothing held survives the unfollow");
    assert_eq!(mock.count(SEND_PATH), 0);
    a.handle.stop(true).await;
    b.handle.stop(true).await;
}

/// A quota-held message is released by the next push: the same outbox entry is pending again
/// and sent once, before that push's own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_answer_is_the_same_entry_sent_once_before_the_new_answer() {
    let texts: Vec<String> = (1..=6).map(|i| format!("m{i}")).collect();
    let dir = rules(&(rule("six", "六条", &texts) + &rule("ok", "好", &["收到".to_string()])));
    let mock = MockWechat::start();
    let kefu = Kefu::start_with(&mock, false, |c| c.rules.dir = dir.path().to_path_buf()).await;
    let user = "oDeliveryRelease";
    kefu.push(&text_push(user, "六条", 1, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    let quota = kefu::delivery::HELD_FOR_QUOTA;
    assert_eq!(states(&kefu.outbox().await)[5], held("m6", quota));
    kefu.push(&text_push(user, "好", 2, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    let entries = kefu.outbox().await;
    assert_eq!((entries[5].status, entries[5].attempts), (OutboxStatus::Sent, 1));
    assert_eq!(states(&entries)[6], sent("收到"));
    let bodies: Vec<Value> = sends(&mock);
    assert_eq!(bodies[5], text_body(user, "m6"));
    assert_eq!(bodies[6], text_body(user, "收到"));
    kefu.stop().await;
}

// ---- the commands show the split ---------------------------------------------------------

#[test]
fn rules_check_and_simulate_say_into_how_many_parts_a_text_splits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir_all(&rules_dir).unwrap();
    let long = ["一", "二", "三"].map(|t| para(t.chars().next().unwrap(), 1500)).join("\n\n");
    let toml = rule("long", "长文", &[long])
        + &rule("grow", "回声", &[format!("{}{{text}}", "啊".repeat(700))]);
    std::fs::write(rules_dir.join("10-long.toml"), &toml).unwrap();

    let check = crate::helpers::kefu_in(dir.path(), &[], &["rules", "check", "rules"]);
    assert_eq!(check.code, 0, "a note is not an error: {}", check.stderr);
    let notes: Vec<&str> = check.stdout.lines().filter(|l| l.contains(": note: ")).collect();
    assert_eq!(notes.len(), 2, "{}", check.stdout);
    assert!(
        notes[0].contains("10-long.toml:6:8:")
            && notes[0].contains("4504 bytes")
            && notes[0].contains("sent as 3 parts"),
        "{}",
        notes[0]
    );
    assert!(
        notes[1].contains("at least 2100 bytes") && notes[1].contains("at least 2 parts"),
        "{}",
        notes[1]
    );

    let sim = crate::helpers::kefu_in(
        dir.path(),
        &[("KEFU_DELIVERY_MAX_TEXT_BYTES", "1600")],
        &["simulate", "--text", "长文", "--json"],
    );
    assert_eq!(sim.code, 0, "{}", sim.stderr);
    let v: Value = serde_json::from_str(&sim.stdout).unwrap();
    assert_eq!(v["splits"], json!([{"rule": "long", "bytes": 4504, "parts": 3}]));
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(2), "part 1 is passive: {v}");
    let text = crate::helpers::kefu_in(dir.path(), &[], &["simulate", "--text", "长文"]);
    assert!(
        text.stdout.contains("rule long: a text of 4504 bytes is split into 3 parts"),
        "{}",
        text.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfollow_drops_the_held_answers() {
    let texts: Vec<String> = ["一", "二", "三"].iter().map(|s| s.to_string()).collect();
    let dir = rules(&rule("three", "三条", &texts));
    let mock = MockWechat::start();
    let kefu =
        start(&mock, dir.path(), |c| c.delivery.customer_service = CustomerServiceMode::Off).await;
    let user = "oDeliveryUnfollow";
    kefu.push(&text_push(user, "三条", 1, kefu.now_secs())).await;
    assert_eq!(kefu.settle(user, 0).await["held"], json!(2));
    let t = kefu.now_secs();
    kefu.push(&crate::pipeline::event_push(user, "unsubscribe", "", t)).await;
    assert_eq!(kefu.window(user).await["held"], json!(0));
    let metrics = kefu.shared.metrics.render();
    assert!(
        metrics.contains("kefu_dropped_messages_total{reason=\"unsubscribed\"} 2\n"),
        "{metrics}"
    );
    // Following again: the old answers are gone, not delivered to the returning follower.
    let (_, answer) = kefu.push(&text_push(user, "你好", 2, t + 1)).await;
    assert_eq!(answer, "success");
    kefu.stop().await;
}

/// Under `customer_service = "off"` a menu can never reach the follower (only custom/send
/// carries it): it is dropped with its reason instead of blocking the mailbox, and the answers
/// after it keep coming, one per push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_custom_send_a_menu_is_dropped_not_held_in_front() {
    let toml = r#"
[[rule]]
name = "welcome"
[rule.when]
text_contains = "你好"
[[rule.reply]]
text = "欢迎"
[[rule.reply]]
menu = { items = [{ id = "1", content = "查订单" }] }
[[rule.reply]]
text = "还有吗"
"#;
    let dir = rules(toml);
    let mock = MockWechat::start();
    let kefu =
        start(&mock, dir.path(), |c| c.delivery.customer_service = CustomerServiceMode::Off).await;
    let user = "oDeliveryMenuOff";
    let (_, a) = kefu.push(&text_push(user, "你好", 1, kefu.now_secs())).await;
    assert_eq!(content(&a), format!("欢迎{MORE}"));
    assert_eq!(kefu.settle(user, 0).await["held"], json!(1));
    let (_, b) = kefu.push(&text_push(user, "嗯", 2, kefu.now_secs())).await;
    assert_eq!(content(&b), "还有吗");
    let metrics = kefu.shared.metrics.render();
    assert!(
        metrics.contains("kefu_dropped_messages_total{reason=\"needs_custom_send\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(mock.count(SEND_PATH), 0);
    kefu.stop().await;
}
