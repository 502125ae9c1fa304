//! Issue 17, the `openai` backend (interface §7.6, §11.7): an OpenAI-compatible model answers
//! followers, with per-follower memory. The real kefu on 127.0.0.1:0; `MockWechat` plays both
//! WeChat's API and the model (`{base_url}/chat/completions`: it echoes `答：<last user message>`
//! unless a test scripts the answer). Every test asserts what the model received.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::mock_wechat::{MockResponse, MockWechat, chat_completion};
use crate::pipeline::{Kefu, content, sends, text_push};

/// The model's path under the mock (`base_url` = mock + `/v1`).
const CHAT: &str = "/v1/chat/completions";
const SYSTEM: &str = "你是测试店的客服助手。";
const FALLBACK: &str = "抱歉，暂时无法回答。";
const RATE_LIMITED: &str = "消息太频繁了，请稍后再试。";

/// A rule directory whose only rule forwards every text to `assistant`.
fn forward_rules() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("90-assistant.toml"),
        format!(
            "[[rule]]\nname = \"ask-assistant\"\n[rule.when]\nmsg_type = [\"text\", \"voice\"]\n\
             [[rule.reply]]\nforward = \"assistant\"\nfallback = \"{FALLBACK}\"\n"
        ),
    )
    .expect("rule file");
    dir
}

/// `[backends.assistant]` pointing at the mock, plus `extra` lines.
fn backend_toml(mock: &MockWechat, extra: &str) -> String {
    format!(
        "[backends.assistant]\nkind = \"openai\"\nbase_url = \"{}/v1\"\napi_key = \"sk-test-key\"\n\
         model = \"test-model\"\nsystem_prompt = \"{SYSTEM}\"\ntimeout = \"5s\"\nretries = 1\n{extra}\n",
        mock.url()
    )
}

/// kefu with the forward rule and the backend of `backend_toml(mock, extra)`.
async fn start(
    mock: &MockWechat,
    rules: &Path,
    extra: &str,
    edit: impl FnOnce(&mut kefu::config::Config),
) -> Kefu {
    let toml = backend_toml(mock, extra);
    let file = rules.join("kefu.toml");
    let parsed = kefu::config::Config::from_parts(Some(&file), Some(&toml), [], rules)
        .expect("backend config parses");
    let dir = rules.to_path_buf();
    Kefu::start_with(mock, true, move |c| {
        c.rules.dir = dir;
        c.backends = parsed.backends;
        edit(c);
    })
    .await
}

/// The `messages` of every request the model received, as (role, content) pairs.
fn conversations(mock: &MockWechat) -> Vec<Vec<(String, String)>> {
    mock.requests_to(CHAT)
        .iter()
        .map(|r| {
            let body = r.json().expect("chat request is JSON");
            body["messages"]
                .as_array()
                .expect("messages")
                .iter()
                .map(|m| {
                    (
                        m["role"].as_str().unwrap().to_string(),
                        m["content"].as_str().unwrap().to_string(),
                    )
                })
                .collect()
        })
        .collect()
}

fn pair(role: &str, content: &str) -> (String, String) {
    (role.to_string(), content.to_string())
}

async fn metrics(kefu: &Kefu) -> String {
    let resp = reqwest::get(format!("{}/metrics", kefu.address())).await.expect("GET /metrics");
    resp.text().await.expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_exchange_conversation_sends_system_history_oldest_first_then_the_user() {
    let mock = MockWechat::start();
    let rules = forward_rules();
    let kefu = start(&mock, rules.path(), "history = 10", |_| {}).await;
    let user = "oLlmThreeExchanges";
    for (i, q) in ["你好", "我的订单到哪了", "谢谢"].iter().enumerate() {
        let (status, answer) =
            kefu.push(&text_push(user, q, 100 + i as u64, kefu.now_secs())).await;
        assert_eq!(status, 200);
        assert_eq!(content(&answer), format!("答：{q}"), "the model's answer is the passive reply");
    }
    let system = pair("system", SYSTEM);
    assert_eq!(
        conversations(&mock),
        [
            vec![system.clone(), pair("user", "你好")],
            vec![
                system.clone(),
                pair("user", "你好"),
                pair("assistant", "答：你好"),
                pair("user", "我的订单到哪了")
            ],
            vec![
                system,
                pair("user", "你好"),
                pair("assistant", "答：你好"),
                pair("user", "我的订单到哪了"),
                pair("assistant", "答：我的订单到哪了"),
                pair("user", "谢谢"),
            ],
        ]
    );
    let body = mock.requests_to(CHAT)[0].json().unwrap();
    assert_eq!(body["model"], json!("test-model"));
    assert_eq!(mock.requests_to(CHAT)[0].header("authorization"), Some("Bearer sk-test-key"));
    assert!(sends(&mock).is_empty(), "every answer was passive: {:?}", sends(&mock));
    // usage: 10 prompt tokens per message (2 + 4 + 6 messages), 5 completion tokens each.
    let m = metrics(&kefu).await;
    assert!(m.contains(r#"kefu_llm_tokens_total{backend="assistant",kind="prompt"} 120"#), "{m}");
    assert!(
        m.contains(r#"kefu_llm_tokens_total{backend="assistant",kind="completion"} 15"#),
        "{m}"
    );
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_keeps_the_last_n_turns_within_history_ttl() {
    let mock = MockWechat::start();
    let rules = forward_rules();
    let kefu = start(&mock, rules.path(), "history = 2\nhistory_ttl = \"2s\"", |_| {}).await;
    let user = "oLlmHistoryTwo";
    for (i, q) in ["一", "二", "三", "四"].iter().enumerate() {
        kefu.push(&text_push(user, q, 200 + i as u64, kefu.now_secs())).await;
    }
    let convs = conversations(&mock);
    let users = |c: &Vec<(String, String)>| {
        c.iter().filter(|(r, _)| r == "user").map(|(_, t)| t.clone()).collect::<Vec<_>>()
    };
    assert_eq!(users(&convs[3]), ["二", "三", "四"], "only the last 2 turns: {:?}", convs[3]);
    // Three seconds later every kept turn is older than history_ttl.
    kefu.clock.advance(Duration::from_secs(3));
    kefu.push(&text_push(user, "五", 210, kefu.now_secs())).await;
    let convs = conversations(&mock);
    assert_eq!(convs[4], [pair("system", SYSTEM), pair("user", "五")]);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_never_see_each_others_turns_and_twenty_at_once_each_get_their_own_answer() {
    let mock = MockWechat::start();
    let rules = forward_rules();
    let kefu = std::sync::Arc::new(start(&mock, rules.path(), "", |_| {}).await);
    // Two followers, interleaved.
    let (a, b) = ("oLlmAlice", "oLlmBob");
    kefu.push(&text_push(a, "我是爱丽丝", 1, kefu.now_secs())).await;
    kefu.push(&text_push(b, "我是鲍勃", 1, kefu.now_secs())).await;
    kefu.push(&text_push(a, "我是谁", 2, kefu.now_secs())).await;
    kefu.push(&text_push(b, "我是谁", 2, kefu.now_secs())).await;
    let convs = conversations(&mock);
    let text = |c: &Vec<(String, String)>| format!("{c:?}");
    assert!(
        text(&convs[2]).contains("爱丽丝") && !text(&convs[2]).contains("鲍勃"),
        "{:?}",
        convs[2]
    );
    assert!(
        text(&convs[3]).contains("鲍勃") && !text(&convs[3]).contains("爱丽丝"),
        "{:?}",
        convs[3]
    );

    // Twenty followers at once: each answer is that follower's own, once.
    let mut tasks = Vec::new();
    for n in 0..20 {
        let kefu = kefu.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("oLlmCrowd{n:02}");
            let q = format!("问题{n}");
            let (status, answer) = kefu.push(&text_push(&user, &q, 500, kefu.now_secs())).await;
            (status, content(&answer), q)
        }));
    }
    for t in tasks {
        let (status, answer, q) = t.await.expect("task");
        assert_eq!(status, 200);
        assert_eq!(answer, format!("答：{q}"));
    }
    assert_eq!(mock.count(CHAT), 24, "one call per push");
    for c in conversations(&mock).iter().skip(4) {
        assert_eq!(
            c.len(),
            2,
            "a new follower's request holds only the system prompt and their text: {c:?}"
        );
    }
    let kefu = std::sync::Arc::into_inner(kefu).expect("no other owner");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_starts_over_without_calling_the_model() {
    let mock = MockWechat::start();
    let rules = forward_rules();
    let kefu = start(&mock, rules.path(), "", |_| {}).await;
    let user = "oLlmReset";
    kefu.push(&text_push(user, "记住我叫小明", 1, kefu.now_secs())).await;
    for (i, reset) in ["/reset", "重新开始"].iter().enumerate() {
        let (_, answer) = kefu.push(&text_push(user, reset, 2 + i as u64, kefu.now_secs())).await;
        assert_eq!(content(&answer), "好的，我们重新开始吧。");
    }
    assert_eq!(mock.count(CHAT), 1, "a reset is not sent to the model");
    let openid = kefu::model::OpenId::parse(user).unwrap();
    assert!(kefu.shared.store.turns(None, &openid).await.unwrap().is_empty(), "history empty");
    kefu.push(&text_push(user, "我叫什么", 9, kefu.now_secs())).await;
    assert_eq!(conversations(&mock)[1], [pair("system", SYSTEM), pair("user", "我叫什么")]);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_a_follower_gets_rate_limited_text_and_no_call() {
    let mock = MockWechat::start();
    let rules = forward_rules();
    let extra = format!("rate_limit = \"3/1m\"\nrate_limited_text = \"{RATE_LIMITED}\"");
    let kefu = start(&mock, rules.path(), &extra, |_| {}).await;
    let (a, b) = ("oLlmBusy", "oLlmCalm");
    let mut answers = Vec::new();
    for i in 0..4 {
        let (_, answer) =
            kefu.push(&text_push(a, &format!("第{i}条"), 10 + i, kefu.now_secs())).await;
        answers.push(content(&answer));
    }
    assert_eq!(answers, ["答：第0条", "答：第1条", "答：第2条", RATE_LIMITED]);
    assert_eq!(mock.count(CHAT), 3, "the 4th message is not forwarded");
    let (_, answer) = kefu.push(&text_push(b, "你好", 1, kefu.now_secs())).await;
    assert_eq!(content(&answer), "答：你好", "another follower is unaffected");
    let m = metrics(&kefu).await;
    assert!(
        m.contains(r#"kefu_backend_requests_total{backend="assistant",outcome="rate_limited"} 1"#),
        "{m}"
    );
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_retried_after_that_wait() {
    let mock = MockWechat::start();
    mock.push(CHAT, MockResponse::status(429).with_header("Retry-After", "1"));
    mock.push(CHAT, MockResponse::json(chat_completion("稍等后的回答", 7, 3)));
    let rules = forward_rules();
    let kefu =
        start(&mock, rules.path(), "", |c| c.delivery.passive_wait = Duration::from_secs(4)).await;
    let started = Instant::now();
    let (_, answer) = kefu.push(&text_push("oLlm429", "你好", 1, kefu.now_secs())).await;
    assert_eq!(content(&answer), "稍等后的回答", "one answer, passive");
    assert!(
        started.elapsed() >= Duration::from_millis(950),
        "Retry-After honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(mock.count(CHAT), 2);
    assert!(sends(&mock).is_empty());
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_sends_the_fallback_and_keeps_no_turn() {
    let mock = MockWechat::start();
    mock.set_default(CHAT, MockResponse::status(401));
    let rules = forward_rules();
    let kefu = start(&mock, rules.path(), "", |_| {}).await;
    let user = "oLlm401";
    let (_, answer) = kefu.push(&text_push(user, "你好", 1, kefu.now_secs())).await;
    assert_eq!(content(&answer), FALLBACK);
    assert_eq!(mock.count(CHAT), 1, "a 401 is not retried");
    let openid = kefu::model::OpenId::parse(user).unwrap();
    assert!(kefu.shared.store.turns(None, &openid).await.unwrap().is_empty(), "no half turn");
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_6000_byte_completion_is_split_to_wechats_limit() {
    let mock = MockWechat::start();
    let para = |c: char| std::iter::repeat_n(c, 600).collect::<String>(); // 1800 bytes
    let long = [para('甲'), para('乙'), para('丙'), para('丁')].join("\n\n");
    assert!(long.len() > 6000);
    mock.push(CHAT, MockResponse::json(chat_completion(&long, 10, 2000)));
    let rules = forward_rules();
    let kefu = start(&mock, rules.path(), "", |_| {}).await;
    let user = "oLlmLong";
    let (_, answer) = kefu.push(&text_push(user, "写长一点", 1, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    let mut parts = vec![content(&answer)];
    parts.extend(sends(&mock).iter().map(|b| b["text"]["content"].as_str().unwrap().to_string()));
    assert_eq!(parts, [para('甲'), para('乙'), para('丙'), para('丁')]);
    kefu.stop().await;
}

// ---- through the binary: backends check, history, and the api_key kept secret -------------

/// A config file with the backend (api_key left out: it comes from the environment, as the
/// README advises) and the forward rule, in a fresh directory.
fn binary_setup(mock: &MockWechat) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let rules = forward_rules();
    let rules_dir = dir.path().join("rules");
    std::fs::create_dir(&rules_dir).expect("rules dir");
    for f in std::fs::read_dir(rules.path()).expect("rules") {
        let f = f.expect("entry").path();
        std::fs::copy(&f, rules_dir.join(f.file_name().expect("name"))).expect("copy rule");
    }
    let toml = backend_toml(mock, "").replace("api_key = \"sk-test-key\"\n", "");
    let file = dir.path().join("kefu.toml");
    std::fs::write(&file, format!("[rules]\ndir = \"rules\"\n\n{toml}")).expect("config file");
    (dir, file)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_appears_in_no_log_line_and_no_command_output() {
    const KEY: &str = "sk-CANARY-0123456789abcdef";
    let mock = MockWechat::start();
    // The second call is refused, so the failure paths log too.
    mock.push(CHAT, MockResponse::json(chat_completion("答：你好", 10, 5)));
    mock.push(CHAT, MockResponse::status(401));
    let (dir, file) = binary_setup(&mock);
    let state = dir.path().join("state");
    let mut env = crate::crash::child_env(&mock, &state, true);
    env.retain(|(k, _)| *k != "KEFU_RULES_DIR");
    env.push(("KEFU_BACKENDS_ASSISTANT_API_KEY", KEY.to_string()));
    env.push(("RUST_LOG", "trace".to_string()));
    let config = file.display().to_string();
    let child = crate::crash::Child::spawn(&["--config", &config], &env, dir.path());
    let http = reqwest::Client::new();
    let user = "oLlmSecretKey";
    for (i, q) in ["你好", "再见"].iter().enumerate() {
        let xml = text_push(
            user,
            q,
            1 + i as u64,
            kefu::model::Clock::now_secs(&kefu::model::SystemClock),
        );
        let (status, _) =
            crate::crash::post_push(&http, &child.webhook(), crate::helpers::TOKEN, &xml)
                .await
                .expect("push answered");
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = child.log_text();
    child.kill();
    assert_eq!(
        mock.requests_to(CHAT)[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert!(log.contains("check api_key"), "the 401 is logged with its cause");

    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let runs = [
        crate::helpers::kefu_in(dir.path(), &env, &["history", "show", user, "--config", &config]),
        crate::helpers::kefu_in(dir.path(), &env, &["backends", "check", "--config", &config]),
        crate::helpers::kefu_in(
            dir.path(),
            &env,
            &["backends", "check", "--json", "--config", &config],
        ),
    ];
    assert!(runs[0].stdout.contains("答：你好"), "the kept turn: {}", runs[0].stdout);
    assert!(!runs[0].stdout.contains("再见"), "the failed call kept no turn: {}", runs[0].stdout);
    for run in &runs {
        for text in [&run.stdout, &run.stderr] {
            assert!(!text.contains(KEY) && !text.contains("CANARY"), "{text}");
        }
    }
    assert!(!log.contains("CANARY"), "a log line shows the api_key");
}

#[test]
fn backends_check_on_a_401_exits_1_naming_api_key() {
    let mock = MockWechat::start();
    mock.set_default(CHAT, MockResponse::status(401));
    let (dir, file) = binary_setup(&mock);
    let config = file.display().to_string();
    let run = crate::helpers::kefu_in(
        dir.path(),
        &[],
        &["backends", "check", "assistant", "--config", &config],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert!(said.contains("401") && said.contains("backends.assistant.api_key"), "{said}");
    let body = mock.requests_to(CHAT)[0].json().unwrap();
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "你好"}),
        "a one-word prompt"
    );

    // A wrong base_url: 404 names base_url and model.
    mock.set_default(CHAT, MockResponse::status(404));
    let run = crate::helpers::kefu_in(dir.path(), &[], &["backends", "check", "--config", &config]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 1);
    assert!(said.contains("base_url") && said.contains("model"), "{said}");

    // Nothing listening: the connection is refused, and the check says so.
    drop(mock);
    let run = crate::helpers::kefu_in(dir.path(), &[], &["backends", "check", "--config", &config]);
    let said = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 1);
    assert!(said.contains("refused") || said.contains("cannot reach"), "{said}");
    // And with a working model it prints the answer and the latency.
    let mock = MockWechat::start();
    let (dir, file) = binary_setup(&mock);
    let run = crate::helpers::kefu_in(
        dir.path(),
        &[],
        &["backends", "check", "--config", &file.display().to_string()],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("assistant (openai): ok in") && run.stdout.contains("答：你好"),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_two_instances_share_the_turns_and_the_rate_limit() {
    let Some(url) = crate::redis::test_redis_url() else { return };
    let mock = MockWechat::start();
    let extra = format!("rate_limit = \"3/1m\"\nrate_limited_text = \"{RATE_LIMITED}\"");
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    let parsed = kefu::config::Config::from_parts(
        Some(&cfg_dir.path().join("kefu.toml")),
        Some(&backend_toml(&mock, &extra)),
        [],
        cfg_dir.path(),
    )
    .expect("backend config parses");
    let rule = std::fs::read_to_string(forward_rules().path().join("90-assistant.toml")).unwrap();
    let app_id = format!("wxllm{:08x}", rand::random::<u32>());
    let edit = |c: &mut kefu::config::Config| {
        c.wechat.app_id = app_id.clone();
        c.backends = parsed.backends.clone();
    };
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = crate::identity::Running::start_edited(&mock, da.path(), Some(&url), &rule, edit).await;
    let b = crate::identity::Running::start_edited(&mock, db.path(), Some(&url), &rule, edit).await;
    let user = "oLlmOnRedis";
    let now = crate::helpers::now_secs();
    let (_, on_a) = a.push_status(&text_push(user, "我叫小明", 1, now)).await;
    assert_eq!(content(&on_a), "答：我叫小明");
    let (_, on_b) = b.push_status(&text_push(user, "我叫什么", 2, now)).await;
    assert_eq!(content(&on_b), "答：我叫什么");
    assert_eq!(
        conversations(&mock)[1],
        [
            pair("system", SYSTEM),
            pair("user", "我叫小明"),
            pair("assistant", "答：我叫小明"),
            pair("user", "我叫什么")
        ],
        "instance b sends the turn instance a kept"
    );
    let (_, third) = a.push_status(&text_push(user, "第三条", 3, now)).await;
    assert_eq!(content(&third), "答：第三条");
    let (_, fourth) = b.push_status(&text_push(user, "第四条", 4, now)).await;
    assert_eq!(content(&fourth), RATE_LIMITED, "3/1m counted across both instances");
    assert_eq!(mock.count(CHAT), 3);
    a.handle.stop(true).await;
    b.handle.stop(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_prompt_file_is_read_relative_to_the_config_file() {
    let mock = MockWechat::start();
    let rules = forward_rules();
    let cfg_dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(cfg_dir.path().join("prompts")).unwrap();
    std::fs::write(cfg_dir.path().join("prompts/assistant.md"), "你是文件里的提示词。\n").unwrap();
    let toml = backend_toml(&mock, "system_prompt_file = \"prompts/assistant.md\"")
        .replace(&format!("system_prompt = \"{SYSTEM}\"\n"), "");
    let parsed = kefu::config::Config::from_parts(
        Some(&cfg_dir.path().join("kefu.toml")),
        Some(&toml),
        [],
        rules.path(), // the working directory is elsewhere: the path is the config file's
    )
    .expect("backend config parses");
    let dir = rules.path().to_path_buf();
    let kefu = Kefu::start_with(&mock, true, move |c| {
        c.rules.dir = dir;
        c.backends = parsed.backends;
    })
    .await;
    kefu.push(&text_push("oLlmPromptFile", "你好", 1, kefu.now_secs())).await;
    assert_eq!(conversations(&mock)[0][0], pair("system", "你是文件里的提示词。\n"));
    kefu.stop().await;

    // Both set: an error naming both keys.
    let both = backend_toml(&mock, "system_prompt_file = \"prompts/assistant.md\"");
    let err = kefu::config::Config::from_parts(
        Some(&cfg_dir.path().join("kefu.toml")),
        Some(&both),
        [],
        cfg_dir.path(),
    )
    .expect_err("system_prompt and system_prompt_file together");
    assert!(err.to_string().contains("system_prompt_file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_log_shows_the_models_answers_as_the_backends() {
    let mock = MockWechat::start();
    let para = |c: char| std::iter::repeat_n(c, 600).collect::<String>(); // 1800 bytes
    mock.push(
        CHAT,
        MockResponse::json(chat_completion(&[para('甲'), para('乙')].join("\n\n"), 1, 1)),
    );
    let rules = forward_rules();
    let kefu = start(&mock, rules.path(), "", |_| {}).await;
    let user = "oLlmLogged";
    kefu.push(&text_push(user, "写两段", 1, kefu.now_secs())).await;
    kefu.settle(user, 0).await;
    let openid = kefu::model::OpenId::parse(user).unwrap();
    let log = kefu.shared.store.log_show(&openid, None).await.expect("log");
    let rows: Vec<(String, String, Option<String>)> = log
        .iter()
        .map(|r| {
            let source = serde_json::to_value(r.source).unwrap().as_str().unwrap().to_string();
            let via = r.via.map(|v| serde_json::to_value(v).unwrap().as_str().unwrap().to_string());
            (source, r.text.chars().take(1).collect(), via)
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("follower".to_string(), "写".to_string(), None),
            ("backend".to_string(), "甲".to_string(), Some("passive".to_string())),
            ("backend".to_string(), "乙".to_string(), Some("custom_send".to_string())),
        ],
        "{log:?}"
    );
    kefu.stop().await;
}
