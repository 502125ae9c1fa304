//! The `kefu` binary's API commands (accounts, send, token, sessions, records) run against
//! `MockWechat` through `KEFU_WECHAT_API_BASE`: what they send, what they print, the exact
//! error sentence an operator reads, and the exit codes (1 API failure, 2 usage/config).

use crate::mock_wechat::{MockResponse, MockWechat};
use serde_json::{Value, json};

const SEND: &str = "/cgi-bin/message/custom/send";
const STABLE: &str = "/cgi-bin/stable_token";

type Run = crate::helpers::KefuRun;

/// [`crate::helpers::kefu_in`], without the config line, so tests compare the message after it.
fn run_in(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Run {
    let mut r = crate::helpers::kefu_in(dir, env, args);
    r.stderr = crate::helpers::without_config_line(&r.stderr);
    r
}

/// Runs kefu in an empty directory, configured for the mock.
fn kefu(mock: &MockWechat, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::seed_state(&dir.path().join("kefu-data"));
    let base = mock.url();
    run_in(
        dir.path(),
        &[
            ("KEFU_WECHAT_APP_ID", "wxCLI0000000000001"),
            ("KEFU_WECHAT_APP_SECRET", "CLISECRET_0123456789"),
            ("KEFU_WECHAT_ACCOUNT_ID", "gh_test"),
            ("KEFU_WECHAT_API_BASE", &base),
        ],
        args,
    )
}

fn ok(r: &Run) {
    assert_eq!(r.code, 0, "stdout: {}\nstderr: {}", r.stdout, r.stderr);
}

fn last_json(mock: &MockWechat, path: &str) -> Value {
    mock.requests_to(path).last().and_then(|r| r.json()).unwrap_or(Value::Null)
}

#[test]
fn token_shows_source_and_expiry_and_reveals_only_on_request() {
    let mock = MockWechat::start();
    let r = kefu(&mock, &["token"]);
    ok(&r);
    assert!(
        r.stdout.starts_with("source:     fetched (fetched from WeChat just now)\n"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("\nexpires at: "), "{}", r.stdout);
    assert!(r.stdout.contains("(in 2h)\n") || r.stdout.contains("(in 1h 59m"), "{}", r.stdout);
    assert!(!r.stdout.contains("MOCK_TOKEN") && !r.stderr.contains("MOCK_TOKEN"));
    assert_eq!(
        last_json(&mock, STABLE),
        json!({"grant_type":"client_credential","appid":"wxCLI0000000000001",
               "secret":"CLISECRET_0123456789","force_refresh":false})
    );

    let r = kefu(&mock, &["token", "--reveal"]);
    ok(&r);
    assert!(r.stdout.contains("\ntoken:      MOCK_TOKEN_2\n"), "{}", r.stdout);

    let r = kefu(&mock, &["token", "--json"]);
    ok(&r);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["source"], "fetched");
    assert_eq!(v["expires_at"].as_i64().unwrap() - v["fetched_at"].as_i64().unwrap(), 7200);
    assert!(v.get("access_token").is_none());
}

#[test]
fn the_operator_reads_errcode_meaning_and_remedy() {
    let mock = MockWechat::start();
    mock.push_error(
        STABLE,
        40164,
        "invalid ip 203.0.113.7 ipv6 ::ffff:203.0.113.7, not in whitelist",
    );
    let r = kefu(&mock, &["accounts", "list"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "kefu: WeChat API errcode 40164 (this machine's IP address is not in the API IP \
         whitelist): add this machine's egress IP to the API IP whitelist in the MP admin \
         (设置与开发 → 基本配置 → IP白名单), then try again [errmsg: invalid ip 203.0.113.7 ipv6 \
         ::ffff:203.0.113.7, not in whitelist]\n"
    );
    assert_eq!(r.stdout, "");

    mock.push_error(SEND, 48001, "api unauthorized");
    let r = kefu(&mock, &["send", "oUser1", "--text", "hi", "--force"]);
    assert_eq!(r.code, 1);
    assert_eq!(
        r.stderr,
        "kefu: WeChat API errcode 48001 (the account lacks the permission for this API): the \
         customer-service API needs a certified (微信认证) account of a non-personal subject: \
         certify the account, or check its interface permissions in the MP admin [errmsg: api \
         unauthorized]\n"
    );
}

#[test]
fn missing_credentials_exit_2_naming_the_variables() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let base = mock.url();
    for args in [&["token"][..], &["accounts", "list"]] {
        let r = run_in(dir.path(), &[("KEFU_WECHAT_API_BASE", &base)], args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(
            r.stderr.ends_with(
                "kefu: no WeChat credentials configured: this command calls the WeChat API, \
                 which needs `wechat.app_id` and `wechat.app_secret`: set `wechat.app_id` in a \
                 config file (--config PATH, or ./kefu.toml in the working directory; none is in \
                 use now) or KEFU_WECHAT_APP_ID; set `wechat.app_secret` in a config file \
                 (--config PATH, or ./kefu.toml in the working directory; none is in use now) or \
                 KEFU_WECHAT_APP_SECRET\n"
            ),
            "{}",
            r.stderr
        );
    }
    // `send` is a dry run without credentials (tests/it/operator.rs): gated like a real one,
    // so a closed window still refuses it.
    crate::helpers::seed_state(&dir.path().join("kefu-data"));
    let r = run_in(dir.path(), &[("KEFU_WECHAT_API_BASE", &base)], &["send", "oU1", "--text", "x"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("not sent to oU1"), "{}", r.stderr);
    assert!(mock.requests().is_empty());
}

/// Like `kefu window`, `kefu send` reads and charges the ledger `serve` keeps: from a directory
/// without that state it names the path instead of answering from (and creating) empty state.
/// An API-only command there keeps its token for the run and creates nothing either.
#[test]
fn send_without_serves_state_says_where_it_looked_and_creates_nothing() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let base = mock.url();
    let env = [
        ("KEFU_WECHAT_APP_ID", "wxCLI0000000000001"),
        ("KEFU_WECHAT_APP_SECRET", "CLISECRET_0123456789"),
        ("KEFU_WECHAT_API_BASE", base.as_str()),
    ];
    for args in [&["send", "oU1", "--text", "x"][..], &["send", "oU1", "--text", "x", "--force"]] {
        let r = run_in(dir.path(), &env, args);
        assert_eq!(r.code, 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("no kefu state at kefu-data/kefu.sqlite3"), "{}", r.stderr);
    }
    assert_eq!(mock.count(SEND), 0, "nothing sent");
    // An empty text is bad usage wherever it runs (WeChat would refuse it).
    let r = run_in(dir.path(), &env, &["send", "oU1", "--text", " "]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("--text is empty"), "{}", r.stderr);
    let r = run_in(dir.path(), &env, &["accounts", "list"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!dir.path().join("kefu-data").exists(), "a CLI command created state.dir");
}

#[test]
fn accounts_commands() {
    let mock = MockWechat::start();
    mock.set_default(
        "/cgi-bin/customservice/getkflist",
        MockResponse::json(json!({"kf_list":[
            {"kf_account":"kf01@gh_test","kf_nick":"小王","kf_id":"1001","kf_headimgurl":"","kf_wx":"wang_wx"},
            {"kf_account":"kf02@gh_test","kf_nick":"小李","kf_id":1002,"kf_headimgurl":"",
             "invite_wx":"li_wx","invite_expire_time":1700000000,"invite_status":"waiting"}]})),
    );
    let r = kefu(&mock, &["accounts", "list"]);
    ok(&r);
    assert_eq!(
        r.stdout,
        "ACCOUNT       NICKNAME  ID    WECHAT\n\
         kf01@gh_test  小王      1001  bound to wang_wx\n\
         kf02@gh_test  小李      1002  invited li_wx (waiting, expires 2023-11-14T22:13:20Z)\n"
    );
    let r = kefu(&mock, &["accounts", "list", "--json"]);
    ok(&r);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[1]["kf_id"], "1002");
    assert_eq!(v[1]["invite_expire_time"], 1700000000);

    ok(&kefu(&mock, &["accounts", "add", "kf03", "客服三号"]));
    assert_eq!(
        last_json(&mock, "/customservice/kfaccount/add"),
        json!({"kf_account":"kf03@gh_test","nickname":"客服三号"})
    );
    ok(&kefu(&mock, &["accounts", "update", "kf03@gh_test", "三号"]));
    assert_eq!(
        last_json(&mock, "/customservice/kfaccount/update"),
        json!({"kf_account":"kf03@gh_test","nickname":"三号"})
    );
    let r = kefu(&mock, &["accounts", "invite", "kf03", "zhang_wx"]);
    ok(&r);
    assert_eq!(
        r.stdout,
        "invited WeChat user zhang_wx to bind to kf03@gh_test; they must accept in WeChat\n"
    );
    assert_eq!(
        last_json(&mock, "/customservice/kfaccount/inviteworker"),
        json!({"kf_account":"kf03@gh_test","invite_wx":"zhang_wx"})
    );
    let r = kefu(&mock, &["accounts", "delete", "kf03"]);
    ok(&r);
    assert_eq!(r.stdout, "deleted kf account kf03@gh_test\n");
    assert_eq!(
        last_json(&mock, "/customservice/kfaccount/del"),
        json!({"kf_account":"kf03@gh_test"})
    );

    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("face.jpg");
    std::fs::write(&img, [0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3]).unwrap();
    ok(&kefu(&mock, &["accounts", "avatar", "kf03", img.to_str().unwrap()]));
    let r = &mock.requests_to("/customservice/kfaccount/uploadheadimg")[0];
    assert_eq!(r.query("kf_account"), Some("kf03@gh_test"));
    assert!(r.body_text().contains("name=\"media\"; filename=\"face.jpg\""));

    mock.push_error("/customservice/kfaccount/add", 65406, "kf account exsited");
    let r = kefu(&mock, &["accounts", "add", "kf01", "小王"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.starts_with("kefu: WeChat API errcode 65406 (the kf account already exists)"),
        "{}",
        r.stderr
    );

    let r = kefu(&mock, &["accounts", "add", "bad-prefix!", "x"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("a kf account must be prefix@wechat_id"), "{}", r.stderr);
}

#[test]
fn send_is_refused_outside_the_window() {
    let mock = MockWechat::start();
    let r = kefu(&mock, &["send", "oUser1", "--text", "hi"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.starts_with(
            "kefu: not sent to oUser1: the follower's customer-service window is closed"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("--force sends anyway"), "{}", r.stderr);
    assert!(mock.requests_to(SEND).is_empty());
}

#[test]
fn send_under_customer_service_off_is_refused_unless_forced() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    crate::helpers::seed_state(&dir.path().join("kefu-data"));
    let base = mock.url();
    let env = [
        ("KEFU_WECHAT_APP_ID", "wxCLI0000000000001"),
        ("KEFU_WECHAT_APP_SECRET", "CLISECRET_0123456789"),
        ("KEFU_WECHAT_API_BASE", base.as_str()),
        ("KEFU_DELIVERY_CUSTOMER_SERVICE", "off"),
    ];
    let r = run_in(dir.path(), &env, &["send", "oUser1", "--text", "你好"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("`delivery.customer_service` (set by KEFU_DELIVERY_CUSTOMER_SERVICE)")
            && r.stderr.contains("--force"),
        "{}",
        r.stderr
    );
    assert_eq!(mock.count(SEND), 0, "nothing sent");
    let r = run_in(dir.path(), &env, &["send", "oUser1", "--text", "你好", "--force"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mock.count(SEND), 1);
}

#[test]
fn send_text_image_and_json_file() {
    let mock = MockWechat::start();
    let r = kefu(
        &mock,
        &["send", "oUser1", "--text", "您好，请问有什么可以帮您？", "--as", "kf01", "--force"],
    );
    ok(&r);
    assert_eq!(
        r.stdout,
        "sent text to oUser1 as kf01@gh_test (forced: no live grant was charged)\n"
    );
    let sent = &mock.requests_to(SEND)[0];
    assert_eq!(sent.query("access_token"), Some("MOCK_TOKEN_1"));
    assert_eq!(
        sent.json().unwrap(),
        json!({"touser":"oUser1","msgtype":"text","text":{"content":"您好，请问有什么可以帮您？"},
               "customservice":{"kf_account":"kf01@gh_test"}})
    );
    assert!(sent.body_text().contains("您好"), "raw UTF-8");

    ok(&kefu(&mock, &["send", "oUser1", "--image", "MEDIA_123", "--force"]));
    assert_eq!(
        last_json(&mock, SEND),
        json!({"touser":"oUser1","msgtype":"image","image":{"media_id":"MEDIA_123"}})
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("menu.json");
    std::fs::write(&file, r#"{"touser":"PLACEHOLDER","msgtype":"msgmenu","msgmenu":{"head_content":"满意吗","list":[{"id":"101","content":"满意"}],"tail_content":""}}"#).unwrap();
    ok(&kefu(&mock, &["send", "oUser2", "--json", file.to_str().unwrap(), "--force"]));
    assert_eq!(
        last_json(&mock, SEND),
        json!({"touser":"oUser2","msgtype":"msgmenu","msgmenu":{"head_content":"满意吗","list":[{"id":"101","content":"满意"}],"tail_content":""}})
    );

    mock.push_error(SEND, 45015, "response out of time limit or subscription is canceled");
    let r = kefu(&mock, &["send", "oUser1", "--text", "late", "--force"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("kefu: WeChat API errcode 45015 (the follower is outside the customer-service window, or has unfollowed): wait until the follower writes or clicks again"), "{}", r.stderr);

    let before = mock.count(SEND);
    let r = kefu(&mock, &["send", "not an openid", "--text", "x"]);
    assert_eq!(r.code, 2);
    std::fs::write(&file, r#"{"msgtype":"text"}"#).unwrap();
    let r = kefu(&mock, &["send", "oUser1", "--json", file.to_str().unwrap()]);
    assert_eq!(r.code, 2);
    assert!(
        r.stderr.contains(
            "menu.json: the custom/send body has msgtype \"text\" but no \"text\" object"
        ),
        "{}",
        r.stderr
    );
    assert_eq!(mock.count(SEND), before);
}

#[test]
fn sessions_commands() {
    let mock = MockWechat::start();
    ok(&kefu(&mock, &["sessions", "create", "kf01", "oUser1"]));
    assert_eq!(
        last_json(&mock, "/customservice/kfsession/create"),
        json!({"kf_account":"kf01@gh_test","openid":"oUser1"})
    );
    ok(&kefu(&mock, &["sessions", "close", "kf01", "oUser1"]));
    assert_eq!(
        last_json(&mock, "/customservice/kfsession/close"),
        json!({"kf_account":"kf01@gh_test","openid":"oUser1"})
    );

    mock.push_json(
        "/customservice/kfsession/getsession",
        json!({"kf_account":"kf01@gh_test","createtime":1700000000}),
    );
    let r = kefu(&mock, &["sessions", "get", "oUser1"]);
    ok(&r);
    assert_eq!(r.stdout, "oUser1 is served by kf01@gh_test since 2023-11-14T22:13:20Z\n");
    assert_eq!(
        mock.requests_to("/customservice/kfsession/getsession")[0].query("openid"),
        Some("oUser1")
    );

    mock.push_json(
        "/customservice/kfsession/getsessionlist",
        json!({"sessionlist":[{"openid":"oUser1","createtime":1700000000}]}),
    );
    let r = kefu(&mock, &["sessions", "list", "kf01", "--json"]);
    ok(&r);
    assert_eq!(
        serde_json::from_str::<Value>(&r.stdout).unwrap(),
        json!([{"openid":"oUser1","createtime":1700000000}])
    );
    assert_eq!(
        mock.requests_to("/customservice/kfsession/getsessionlist")[0].query("kf_account"),
        Some("kf01@gh_test")
    );

    mock.push_json(
        "/customservice/kfsession/getwaitcase",
        json!({"count":1,"waitcaselist":[{"openid":"oUser9","latest_time":1700000000}]}),
    );
    let r = kefu(&mock, &["sessions", "waiting"]);
    ok(&r);
    assert_eq!(r.stdout, "1 waiting\nOPENID  LATEST MESSAGE\noUser9  2023-11-14T22:13:20Z\n");
}

#[test]
fn records_parse_times_and_page() {
    let mock = MockWechat::start();
    mock.push_json(
        "/customservice/msgrecord/getmsglist",
        json!({"recordlist":[{"openid":"oUser1","opercode":2002,"text":"您好","time":1714550400,"worker":"kf01@gh_test"}],
               "number":1,"msgid":2}),
    );
    let r = kefu(
        &mock,
        &["records", "--since", "2024-05-01 08:00:00", "--until", "2024-05-01T20:00:00+08:00"],
    );
    ok(&r);
    assert_eq!(
        r.stdout,
        "TIME                  KF            DIRECTION  OPENID  TEXT\n\
         2024-05-01T08:00:00Z  kf01@gh_test  sent       oUser1  您好\n"
    );
    assert_eq!(
        last_json(&mock, "/customservice/msgrecord/getmsglist"),
        json!({"starttime":1714550400,"endtime":1714564800,"msgid":1,"number":10000})
    );

    let r = kefu(&mock, &["records", "--since", "1714550400", "--until", "1714723200", "--json"]);
    ok(&r);
    assert_eq!(r.stdout.trim(), "[]");
    assert_eq!(
        mock.count("/customservice/msgrecord/getmsglist"),
        1 + 3,
        "48 h + 1 s = three spans"
    );

    let r = kefu(&mock, &["records", "--since", "last tuesday"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("kefu: --since: \"last tuesday\" is not a time"), "{}", r.stderr);
}
