//! Operator experience (issue 13, items 6–12 and 14): the `kefu` binary as an operator meets
//! it — output into a closed pipe, dry-run sends, messages that name where a key was set,
//! client errors that say what happened, a taken port, bad keys, `--help` and `rules import`.

use std::path::Path;
use std::process::Stdio;

use crate::mock_wechat::{MockResponse, MockWechat};
use serde_json::{Value, json};

use crate::helpers;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

use crate::helpers::kefu_command as command;

fn run(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let out = command(dir, env, args).output().expect("run kefu");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs with stdout connected to a pipe whose reader is already closed, so every write to
/// stdout fails with EPIPE (deterministically, whatever the output's size); stderr is kept.
fn run_into_closed_pipe(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = command(dir, env, args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run kefu");
    Run {
        code: out.status.code(),
        stdout: String::new(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rules_dir() -> String {
    repo().join("rules").display().to_string()
}

// ---------------------------------------------------------------------------------------------
// Item 6: a closed stdout

#[test]
fn every_printing_command_exits_quietly_into_a_closed_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockWechat::start();
    let base = mock.url();
    let state = dir.path().join("state");
    helpers::seed_state(&state);
    let state = state.to_str().unwrap();
    let api_env = [
        ("KEFU_WECHAT_APP_ID", "wxCLI0000000000001"),
        ("KEFU_WECHAT_APP_SECRET", "CLISECRET_0123456789"),
        ("KEFU_WECHAT_API_BASE", base.as_str()),
        ("KEFU_WECHAT_TOKEN", "pipeToken1"),
        ("KEFU_STATE_DIR", state),
    ];
    let push_url = format!("{base}/wechat");
    let rules = rules_dir();
    let cases: Vec<Vec<&str>> = vec![
        vec!["rules", "check", &rules],
        vec!["rules", "check", &rules, "--json"],
        vec!["simulate", "--rules", &rules, "--text", "订单号 2024050112345678"],
        vec!["simulate", "--rules", &rules, "--event", "subscribe", "--json"],
        vec!["completions", "bash"],
        vec!["push", "--url", &push_url, "--text", "你好"],
        vec!["accounts", "list"],
        vec!["accounts", "list", "--json"],
        vec!["token"],
        vec!["send", "oPipeFollower", "--text", "hi", "--force"],
        vec!["window", "list"],
    ];
    for args in &cases {
        let r = run_into_closed_pipe(dir.path(), &api_env, args);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
        assert_eq!(r.code, Some(141), "{args:?}: stderr: {}", r.stderr);
        assert!(
            r.stderr.is_empty() || !r.stderr.contains("kefu: stdout"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // clap's own output (help, version) swallows a closed pipe and exits 0.
    for args in [&["--help"][..], &["rules", "check", "--help"], &["--version"]] {
        let r = run_into_closed_pipe(dir.path(), &[], args);
        assert!(!r.stderr.contains("panicked"), "{args:?}: {}", r.stderr);
        assert_eq!(r.code, Some(0), "{args:?}");
    }
}

#[test]
fn a_closed_stderr_does_not_panic_either() {
    let dir = tempfile::tempdir().unwrap();
    // An error message (stderr) and a log line (tracing, stderr) into closed pipes.
    let cases = [
        &["simulate", "--rules", "no-such-dir", "--text", "x"][..],
        &["send", "oPipe", "--text", "x", "--force"],
    ];
    for args in cases {
        let (r1, w1) = std::io::pipe().unwrap();
        let (r2, w2) = std::io::pipe().unwrap();
        drop((r1, r2));
        let state = dir.path().join("s");
        let status = command(dir.path(), &[("KEFU_STATE_DIR", state.to_str().unwrap())], args)
            .stdout(Stdio::from(w1))
            .stderr(Stdio::from(w2))
            .status()
            .unwrap();
        assert!(matches!(status.code(), Some(1 | 141)), "{args:?}: {status:?} (101 is a panic)");
    }
}

// ---------------------------------------------------------------------------------------------
// Item 7: dry-run sends go through the window gate

mod dry_run {
    use super::*;
    use kefu::config::Config;
    use kefu::model::{Secret, SharedClock, SystemClock};
    use kefu::service::Service;
    use std::sync::Arc;

    const ADMIN: &str = "admin-token-dryrun-0123456789";

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cli_and_admin_sends_are_gated_charged_and_logged_not_sent() {
        let mock = MockWechat::start();
        let state = tempfile::tempdir().unwrap();
        let rules = tempfile::tempdir().unwrap(); // no rules: only the manual sends charge
        let mut cfg: Config = helpers::test_config();
        cfg.wechat.api_base = mock.url();
        cfg.rules.dir = rules.path().to_path_buf();
        cfg.rules.hot_reload = false;
        cfg.state.dir = state.path().to_path_buf();
        cfg.admin.token = Secret::new(ADMIN);
        assert!(cfg.wechat.app_secret.is_empty(), "dry-run: no app_secret");
        let clock: SharedClock = Arc::new(SystemClock);
        let service = Service::build(cfg.clone(), clock).await.expect("kefu starts");
        let port = service.port();
        let handle = service.handle();
        let task = tokio::spawn(service.run_until_stopped());
        let app = helpers::TestApp {
            address: format!("http://127.0.0.1:{port}"),
            port,
            cfg: cfg.clone(),
            client: reqwest::Client::new(),
            handle: handle.clone(),
        };

        // oAlice writes: her message window opens (5 within 48 h).
        let xml = format!(
            "<xml><ToUserName><![CDATA[gh_x]]></ToUserName><FromUserName><![CDATA[oAlice]]>\
             </FromUserName><CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[hi]]></Content><MsgId>777001</MsgId></xml>",
            helpers::now_secs()
        );
        assert_eq!(app.push_plain(&xml).await.status(), 200);

        let admin_send = |to: &str| {
            let body = json!({"touser": to, "msgtype": "text", "text": {"content": "hello"}});
            app.client
                .post(format!("{}/admin/send", app.address))
                .bearer_auth(ADMIN)
                .json(&body)
                .send()
        };
        let resp = admin_send("oAlice").await.unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["dry_run"], true, "{v}");
        assert_eq!(v["sent"], false, "{v}");
        assert_eq!(v["touser"], "oAlice");
        assert_eq!(v["msgtype"], "text");
        assert_eq!(v["charged"], "message");
        assert!(v.get("errcode").is_none(), "no errcode: it is not WeChat's answer: {v}");
        assert!(v["message"].as_str().unwrap().starts_with("dry-run: would send text to oAlice"));

        // A closed window refuses as for real.
        let resp = admin_send("oBob").await.unwrap();
        assert_eq!(resp.status(), 409);

        // The CLI, beside the running server, on the same state.dir.
        let dir = tempfile::tempdir().unwrap();
        let base = mock.url();
        let env = [
            ("KEFU_STATE_DIR", state.path().to_str().unwrap()),
            ("KEFU_WECHAT_API_BASE", base.as_str()),
        ];
        let r = run(dir.path(), &env, &["send", "oAlice", "--text", "again"]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        assert_eq!(
            r.stdout,
            "dry-run: would send text to oAlice (charged to the message grant); not sent: no \
             wechat.app_id/app_secret configured\n"
        );
        assert!(r.stderr.contains("dry-run: would send"), "the log line: {}", r.stderr);
        assert!(r.stderr.contains("oAlice") && r.stderr.contains("text"), "{}", r.stderr);

        let r = run(dir.path(), &env, &["send", "oBob", "--text", "no window"]);
        assert_eq!(r.code, Some(1), "{}", r.stdout);
        assert!(r.stderr.contains("not sent to oBob"), "{}", r.stderr);

        // Both dry sends were charged: 2 of 5 used.
        let w: Value = app
            .client
            .get(format!("{}/admin/windows/oAlice", app.address))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(w["grants"][0]["used"], 2, "{w}");

        assert!(mock.requests().is_empty(), "nothing reached WeChat: {:?}", mock.requests());
        handle.stop(true).await;
        let _ = task.await;
    }
}

// ---------------------------------------------------------------------------------------------
// Item 8: messages name the real source of a key

#[test]
fn messages_name_the_file_in_use_or_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ok.toml"), "[rules]\ndir = \"no-such-rules\"\n").unwrap();
    let r = run(dir.path(), &[], &["--config", "ok.toml", "rules", "check"]);
    assert_eq!(r.code, Some(1));
    let file = dir.path().join("ok.toml");
    let file = file.display();
    assert!(
        r.stderr
            .contains(&format!("it is `rules.dir` (set in {file}): change `rules.dir` in {file}")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("kefu.toml"), "{}", r.stderr);

    let r = run(dir.path(), &[("KEFU_RULES_DIR", "elsewhere")], &["simulate", "--text", "x"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains("`rules.dir` (set by KEFU_RULES_DIR): change KEFU_RULES_DIR"),
        "{}",
        r.stderr
    );

    // A default, with no config file: say so, and where one is looked for.
    let r = run(dir.path(), &[], &["push", "--url", "http://127.0.0.1:9/wechat", "--text", "x"]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("`wechat.token` (the built-in default) is empty"), "{}", r.stderr);
    assert!(r.stderr.contains("none is in use now) or KEFU_WECHAT_TOKEN"), "{}", r.stderr);

    // A store that cannot be opened: the key and where it was set.
    let not_a_dir = dir.path().join("a-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let r = run(
        dir.path(),
        &[("KEFU_STATE_DIR", not_a_dir.to_str().unwrap())],
        &["send", "oX", "--text", "x", "--force"],
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(
        r.stderr.contains("The directory is `state.dir` (set by KEFU_STATE_DIR)"),
        "{}",
        r.stderr
    );

    // An API command without credentials names the file in use.
    let r = run(dir.path(), &[], &["--config", "ok.toml", "token"]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains(&format!("set `wechat.app_id` in {file} or KEFU_WECHAT_APP_ID")));
    assert!(!r.stderr.contains("kefu.toml"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// Item 9: client errors say what happened

#[test]
fn push_to_nothing_says_connection_refused_and_a_404_names_the_path() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let env = [("KEFU_WECHAT_TOKEN", "pushToken1")];
    let url = format!("http://127.0.0.1:{port}/wechat");
    let r = run(dir.path(), &env, &["push", "--url", &url, "--text", "你好"]);
    assert_eq!(r.code, Some(1));
    let want = format!(
        "kefu: cannot POST the push to {url}: connection refused by http://127.0.0.1:{port}: \
         nothing listens there; check that `kefu serve` runs at that address (its \
         `server.listen`) and that --url names it, e.g. http://127.0.0.1:8080/wechat\n"
    );
    assert!(r.stderr.ends_with(&want), "{}", r.stderr);

    let mock = MockWechat::start();
    mock.set_default("/wrong", MockResponse::status(404));
    let url = format!("{}/wrong", mock.url());
    let r = run(dir.path(), &env, &["push", "--url", &url, "--text", "你好"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stdout.starts_with("HTTP 404 Not Found"), "{}", r.stdout);
    assert!(
        r.stderr.contains("answered 404 Not Found for the path \"/wrong\"")
            && r.stderr.contains(
                "must end with the server's `server.path`; this config's is \"/wechat\", \
                 `server.path` (the built-in default)"
            ),
        "{}",
        r.stderr
    );

    // A server that never answers: a timeout says so (the push waits 10 s).
    mock.set_default("/slow", MockResponse::ok().delayed(std::time::Duration::from_secs(15)));
    let url = format!("{}/slow", mock.url());
    let r = run(dir.path(), &env, &["push", "--url", &url, "--text", "你好"]);
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("timed out waiting for"), "{}", r.stderr);
    assert!(r.stderr.contains("no answer within 10 s"), "{}", r.stderr);
}

#[test]
fn an_unreachable_api_base_says_connection_refused_and_names_it() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let env = [
        ("KEFU_WECHAT_APP_ID", "wxCLI0000000000001"),
        ("KEFU_WECHAT_APP_SECRET", "CLISECRET_0123456789"),
        ("KEFU_WECHAT_API_BASE", base.as_str()),
        ("KEFU_STATE_DIR", dir.path().to_str().unwrap()),
    ];
    let r = run(dir.path(), &env, &["token"]);
    assert_eq!(r.code, Some(1));
    assert!(
        r.stderr.contains(&format!(
            "could not reach WeChat for /cgi-bin/stable_token: connection refused by {base}"
        )),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("CLISECRET"), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// Item 10: a bad EncodingAESKey names the character and its position

#[test]
fn a_bad_aes_key_names_the_character_and_position_not_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEF="; // 43, '=' at 43
    let r = run(dir.path(), &[("KEFU_WECHAT_ENCODING_AES_KEY", key)], &["rules", "check"]);
    assert_eq!(r.code, Some(2));
    assert!(
        r.stderr.contains(
            "environment variable KEFU_WECHAT_ENCODING_AES_KEY: not a valid EncodingAESKey: \
             character 43 is '=' (U+003D), which is not an ASCII letter or digit."
        ),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("abcdefghij"), "the key is a secret: {}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// Item 11: a taken port

#[test]
fn serve_on_a_taken_port_says_so_and_leaves_no_state() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("fresh-state");
    std::fs::write(
        dir.path().join("kefu.toml"),
        format!(
            "[server]\nlisten = \"{addr}\"\n[wechat]\ntoken = \"serveToken1\"\n[rules]\n\
             dir = \"{}\"\nhot_reload = false\n[state]\ndir = \"fresh-state\"\n",
            rules_dir()
        ),
    )
    .unwrap();
    let r = run(dir.path(), &[], &["serve"]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    let file = dir.path().join("kefu.toml");
    assert!(
        r.stderr.contains(&format!(
            "cannot listen on {addr}, `server.listen` (set in {}):",
            file.display()
        )),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("already listens there: stop it, or choose a free port"));
    assert!(r.stderr.contains(&format!("change `server.listen` in {}", file.display())));
    assert!(!state.exists(), "no state.dir is created before the port is bound");
    drop(taken);
}

// ---------------------------------------------------------------------------------------------
// Item 12: --help describes every argument

#[test]
fn help_describes_serve_and_the_account_prefix_completion() {
    let dir = tempfile::tempdir().unwrap();
    let r = run(dir.path(), &[], &["serve", "--help"]);
    assert_eq!(r.code, Some(0));
    for want in ["verified", "recorded", "answered", "sent", "dry-run", "app_secret"] {
        assert!(r.stdout.contains(want), "{want}: {}", r.stdout);
    }
    let r = run(dir.path(), &[], &["accounts", "add", "--help"]);
    assert!(r.stdout.contains("completed with wechat.account_id"), "{}", r.stdout);
    assert!(r.stdout.contains("The name followers see"), "{}", r.stdout);
    let r = run(dir.path(), &[], &["send", "--help"]);
    for want in ["The follower's OpenID", "A text message", "media id", "custom/send body"] {
        assert!(r.stdout.contains(want), "{want}: {}", r.stdout);
    }
}

// ---------------------------------------------------------------------------------------------
// Item 14: rules import

fn copy_rules(to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(repo().join("rules")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn import_into_the_example_rules_keeps_them_passing() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    copy_rules(&rules);
    let json = repo().join("tests/fixtures/rules/autoreply.json");
    let json = json.to_str().unwrap();
    // Without the keyword that collides with the example fallback's test: nothing may break.
    let settings: Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    let mut no_hello = settings.clone();
    no_hello["keyword_autoreply_info"]["list"][2]["keyword_list_info"] =
        json!([{"type": "text", "match_mode": "contain", "content": "text测试"}]);
    let no_hello_path = dir.path().join("autoreply.json");
    std::fs::write(&no_hello_path, no_hello.to_string()).unwrap();

    let r = run(
        dir.path(),
        &[],
        &["rules", "import", no_hello_path.to_str().unwrap(), "--out", "rules/20-imported.toml"],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stderr.contains("wrote rules/20-imported.toml"), "{}", r.stderr);
    let check = run(dir.path(), &[], &["rules", "check", "rules"]);
    assert_eq!(check.code, Some(0), "{}\n{}", check.stdout, check.stderr);
    assert!(check.stdout.contains(" 0 failed"), "{}", check.stdout);
    let text = std::fs::read_to_string(rules.join("20-imported.toml")).unwrap();
    assert!(text.contains("priority = 90") && text.contains("priority = -110"), "{text}");
    // The imported follow reply sits below the example welcome: a note, not a failing test.
    assert!(text.contains("# note: event = \"subscribe\" is answered by [follow-welcome]"));

    // The panel's "你好" keyword takes a text the example fallback's test expects: named.
    let r = run(
        dir.path(),
        &[],
        &["rules", "import", json, "--out", "rules/20-imported.toml", "--force"],
    );
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stderr.contains("90-fallback.toml:") && r.stderr.contains("expects [fallback]"),
        "{}",
        r.stderr
    );
}

#[test]
fn import_refuses_to_overwrite_and_to_import_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = repo().join("tests/fixtures/rules/autoreply.json");
    let out = dir.path().join("mine.toml");
    std::fs::write(&out, "# hand-written\n").unwrap();
    let r = run(
        dir.path(),
        &[],
        &["rules", "import", json.to_str().unwrap(), "--out", out.to_str().unwrap()],
    );
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("already exists: add --force"), "{}", r.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "# hand-written\n", "unchanged");

    let empty = dir.path().join("empty.json");
    std::fs::write(&empty, "{}").unwrap();
    let fresh = dir.path().join("fresh.toml");
    let r = run(
        dir.path(),
        &[],
        &["rules", "import", empty.to_str().unwrap(), "--out", fresh.to_str().unwrap()],
    );
    assert_eq!(r.code, Some(1));
    assert!(r.stderr.contains("nothing to import"), "{}", r.stderr);
    assert!(!fresh.exists(), "no empty file is written");
}

#[test]
fn import_leaves_out_a_video_url_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let url = "http://61.182.130.30/vweixinp.tc.qq.com/1007_114bcede.f10.mp4?vkey=ABC&sha=0";
    let settings = json!({
        "is_add_friend_reply_open": 1,
        "add_friend_autoreply_info": {"type": "text", "content": "welcome"},
        "keyword_autoreply_info": {"list": [{
            "rule_name": "video-rule",
            "reply_mode": "reply_all",
            "keyword_list_info": [{"type": "text", "match_mode": "equal", "content": "视频"}],
            "reply_list_info": [{"type": "video", "content": url}]
        }]}
    });
    let file = dir.path().join("a.json");
    std::fs::write(&file, settings.to_string()).unwrap();
    let r = run(dir.path(), &[], &["rules", "import", file.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(!r.stdout.contains("media_id = \"http"), "{}", r.stdout);
    assert!(r.stdout.contains(&format!("#   {url}")), "the URL is kept in a comment");
    assert!(r.stderr.contains("\"video-rule\": a video reply was left out"), "{}", r.stderr);
}
