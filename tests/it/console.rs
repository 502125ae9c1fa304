//! Issue 19, the console (interface §8.2) in a real browser: headless Chromium driven through
//! chromedriver (WebDriver, with fantoccini) against the real kefu on 127.0.0.1:0 and
//! `MockWechat`. Each test asserts what the page shows and what the mock received; every page
//! is screenshotted under `target/console-screenshots/`.
//!
//! Chromium and chromedriver: `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian's
//! `chromium` and `chromium-driver`), or `KEFU_TEST_CHROMIUM` / `KEFU_TEST_CHROMEDRIVER`.
//! Without them a test says it skipped; under CI (`CI` set) it fails.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::mock_wechat::MockWechat;
use crate::pipeline::{Kefu, SEND_PATH, sends, text_body, text_push};
use crate::redis::report_skipped;

const ADD_PATH: &str = "/customservice/kfaccount/add";
const UPDATE_PATH: &str = "/customservice/kfaccount/update";
const INVITE_PATH: &str = "/customservice/kfaccount/inviteworker";
const DELETE_PATH: &str = "/customservice/kfaccount/del";
const LIST_PATH: &str = "/cgi-bin/customservice/getkflist";
const ONLINE_PATH: &str = "/cgi-bin/customservice/getonlinekflist";
/// How long a test waits for the page to show something.
const WAIT: Duration = Duration::from_secs(15);

/// The binary named by `var`, else `default` when it exists.
fn binary(var: &str, default: &str) -> Option<PathBuf> {
    match std::env::var(var) {
        Ok(p) if !p.trim().is_empty() => Some(PathBuf::from(p)),
        _ => Some(PathBuf::from(default)).filter(|p| p.is_file()),
    }
}

/// Headless Chromium behind its own chromedriver; both end with the test.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// None (after saying so) when Chromium or chromedriver is missing outside CI.
    async fn start() -> Option<Browser> {
        let chromium = binary("KEFU_TEST_CHROMIUM", "/usr/bin/chromium");
        let driver = binary("KEFU_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let (Some(chromium), Some(driver)) = (chromium, driver) else {
            let why = "no Chromium/chromedriver: apt-get install chromium chromium-driver, or set \
                       KEFU_TEST_CHROMIUM and KEFU_TEST_CHROMEDRIVER";
            if std::env::var_os("CI").is_some() {
                panic!("{why} (CI is set: the browser tests must run)");
            }
            report_skipped(why);
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "chromedriver did not listen on {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().expect("profile dir");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
            &format!("--user-data-dir={}", profile.path().display()),
        ];
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium.display().to_string(), "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&url)
            .await
            .expect("a Chromium session");
        Some(Browser { client, driver, _profile: profile })
    }

    async fn goto(&self, url: &str) {
        self.client.goto(url).await.unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.client
            .wait()
            .at_most(WAIT)
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css} did not appear: {e}"))
    }

    /// The text of the element once it is there (read in one script step: a live update may
    /// replace the element meanwhile).
    async fn text(&self, css: &str) -> String {
        self.wait_for(css).await;
        self.text_now(css).await
    }

    /// The element's text read in one script step, immune to a live update replacing it.
    async fn text_now(&self, css: &str) -> String {
        let script = "var e = document.querySelector(arguments[0]); return e ? e.innerText : '';";
        let v = self.client.execute(script, vec![json!(css)]).await.expect("script");
        v.as_str().unwrap_or("").to_string()
    }

    async fn fill(&self, css: &str, value: &str) {
        let el = self.wait_for(css).await;
        el.clear().await.expect("clear");
        el.send_keys(value).await.expect("type");
    }

    async fn click(&self, css: &str) {
        self.wait_for(css).await.click().await.expect("click");
    }

    /// Clicks a form's submit button and waits until the next page replaced this one (so what
    /// is read next is not a leftover of this page). `confirm`: accept the page's dialog first.
    async fn submit(&self, css: &str, confirm: bool) {
        let old = self.wait_for("html").await;
        self.click(css).await;
        if confirm {
            self.client.accept_alert().await.expect("the confirmation");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        while old.text().await.is_ok() {
            assert!(tokio::time::Instant::now() < deadline, "{css}: no new page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script")
    }

    async fn path(&self) -> String {
        self.client.current_url().await.expect("url").path().to_string()
    }

    /// Writes the page as `target/console-screenshots/{name}.png`.
    async fn screenshot(&self, name: &str) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let png = self.client.screenshot().await.expect("screenshot");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
    }

    /// Signs in with `token` from the sign-in page.
    async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/console/login")).await;
        self.fill("#token", token).await;
        self.submit("#signin", false).await;
    }

    async fn session_cookie(&self) -> String {
        let c = self.client.get_named_cookie("kefu_console").await.expect("the session cookie");
        assert_eq!(c.http_only(), Some(true), "HttpOnly");
        assert_eq!(format!("{:?}", c.same_site()), "Some(Strict)", "SameSite=Strict");
        c.value().to_string()
    }

    /// Ends the browser session; chromedriver goes with the drop.
    async fn stop(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// A failing test must not leave chromedriver running.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// The kefu the browser tests run against, with an empty kf account list and a copy of the
/// pipeline fixture rules in a directory of its own (a test may break them).
async fn kefu(mock: &MockWechat) -> (Kefu, String, tempfile::TempDir) {
    let ok = |v| crate::mock_wechat::MockResponse::json(v);
    mock.set_default(LIST_PATH, ok(json!({"kf_list": []})));
    mock.set_default(ONLINE_PATH, ok(json!({"kf_online_list": []})));
    let rules = tempfile::tempdir().expect("rules dir");
    let fixture = crate::pipeline::rules_dir().join("pipeline.toml");
    std::fs::copy(fixture, rules.path().join("pipeline.toml")).expect("copy the rules");
    let dir = rules.path().to_path_buf();
    let kefu = Kefu::start_with(mock, true, move |c| c.rules.dir = dir).await;
    let base = kefu.app().address.clone();
    (kefu, base, rules)
}

/// Sends to `openid` the mock received.
fn sends_to(mock: &MockWechat, openid: &str) -> Vec<Value> {
    sends(mock).into_iter().filter(|b| b["touser"] == openid).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sign_in_live_list_literal_text_reply_and_closed_window() {
    let Some(browser) = Browser::start().await else { return };
    let mock = MockWechat::start();
    let (kefu, base, _rules) = kefu(&mock).await;
    let user = "oConsoleReply";
    let xss = "<img src=x onerror=alert(1)><script>document.title='pwned'</script>";
    kefu.push(&text_push(user, xss, 1, kefu.now_secs())).await;

    // Sign-in: a wrong token is refused, the right one lets in.
    browser.sign_in(&base, "not-the-token").await;
    assert!(browser.text("#login-error").await.contains("令牌不正确"));
    assert_eq!(browser.path().await, "/console/login");
    browser.screenshot("sign-in").await;
    browser.sign_in(&base, crate::pipeline::ADMIN_TOKEN).await;
    browser.wait_for("#conversations").await;
    assert_eq!(browser.path().await, "/console/conversations");
    browser.session_cookie().await;

    // A pushed message appears without a reload.
    browser.js("window.__notReloaded = true; return null;").await;
    let live = "oConsoleLive";
    kefu.push(&text_push(live, "实时到达的消息", 2, kefu.now_secs())).await;
    let row = format!("tr[data-openid='{live}']");
    browser.wait_for(&row).await;
    assert!(browser.text_now(&row).await.contains("实时到达的消息"));
    assert_eq!(browser.js("return window.__notReloaded === true;").await, json!(true), "no reload");
    browser.screenshot("conversations").await;
    // The phone layout of the same list.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.screenshot("conversations-phone").await;
    browser.client.set_window_size(1280, 900).await.unwrap();

    // The follower's text is shown literally; nothing in it runs.
    browser.goto(&format!("{base}/console/conversations/{user}")).await;
    assert_eq!(browser.text("#messages .msg.in .text").await, xss);
    let imgs =
        browser.client.find_all(Locator::Css("#messages img, #messages script")).await.unwrap();
    assert!(imgs.is_empty(), "no element made of the follower's text");
    assert_eq!(
        browser.js("return document.title;").await,
        json!(format!("会话 {user} · kefu 控制台"))
    );

    // On the conversation's page too, the follower's next message appears without a reload.
    browser.js("window.__notReloaded = true; return null;").await;
    kefu.push(&text_push(user, "第二条消息", 3, kefu.now_secs())).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !browser.text_now("#messages").await.contains("第二条消息") {
        assert!(tokio::time::Instant::now() < deadline, "the new message did not appear");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(browser.js("return window.__notReloaded === true;").await, json!(true), "no reload");

    // A reply goes out through custom/send with exactly that body.
    browser.fill("#reply-text", "您好，这里是人工客服。").await;
    browser.submit("#reply-send", false).await;
    assert!(browser.text("#flash-ok").await.contains("已发送"));
    assert_eq!(sends_to(&mock, user), [text_body(user, "您好，这里是人工客服。")]);
    let out = browser.text("#messages .msg.out:last-child .text").await;
    assert_eq!(out, "您好，这里是人工客服。");
    browser.screenshot("conversation").await;

    // 49 hours later the window is closed: the box is disabled and says why.
    kefu.clock.advance(Duration::from_secs(49 * 3600));
    browser.goto(&format!("{base}/console/conversations/{user}")).await;
    let textarea = browser.wait_for("#reply-text").await;
    assert!(!textarea.is_enabled().await.unwrap(), "the reply box is disabled");
    assert!(!browser.wait_for("#reply-send").await.is_enabled().await.unwrap());
    assert!(browser.text("#reply-blocked").await.contains("窗口已关闭"), "the reason is visible");
    browser.screenshot("conversation-closed").await;
    assert_eq!(sends_to(&mock, user).len(), 1, "nothing more sent");

    browser.stop().await;
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_accounts_rules_and_outbox_pages() {
    let Some(browser) = Browser::start().await else { return };
    let mock = MockWechat::start();
    let (kefu, base, rule_dir) = kefu(&mock).await;
    kefu.push(&text_push("oConsoleSix", "six", 1, kefu.now_secs())).await;
    browser.sign_in(&base, crate::pipeline::ADMIN_TOKEN).await;
    browser.wait_for("#conversations").await;

    // Adding a kf account reaches kfaccount/add with what was typed.
    browser.goto(&format!("{base}/console/accounts")).await;
    browser.fill("#kf_account", "kf01@gh_console").await;
    browser.fill("#nickname", "小王").await;
    browser.submit("#add-submit", false).await;
    assert!(browser.text("#flash-ok").await.contains("kf01@gh_console"));
    let adds = mock.requests_to(ADD_PATH);
    assert_eq!(adds.len(), 1);
    assert_eq!(
        adds[0].json().unwrap(),
        json!({"kf_account": "kf01@gh_console", "nickname": "小王"})
    );
    // WeChat's refusal is explained in the page.
    mock.push_error(ADD_PATH, 65406, "kf account exsited");
    browser.fill("#kf_account", "kf01@gh_console").await;
    browser.fill("#nickname", "小王").await;
    browser.submit("#add-submit", false).await;
    let err = browser.text("#flash-err").await;
    assert!(err.contains("65406") && err.contains("已经存在"), "{err}");

    // The list shows each account with its online status; update, invite and delete reach
    // WeChat with what was typed (delete after the page's confirmation).
    let kf = "kf02@gh_console";
    mock.set_default(
        LIST_PATH,
        crate::mock_wechat::MockResponse::json(json!({"kf_list": [
        {"kf_account": kf, "kf_nick": "老李", "kf_id": "1002", "kf_headimgurl": ""}]})),
    );
    mock.set_default(
        ONLINE_PATH,
        crate::mock_wechat::MockResponse::json(json!({"kf_online_list": [
        {"kf_account": kf, "status": 1, "kf_id": "1002", "accepted_case": 2}]})),
    );
    browser.goto(&format!("{base}/console/accounts")).await;
    let row = browser.text_now("#accounts tbody tr").await;
    assert!(row.contains(kf) && row.contains("老李") && row.contains("在线"), "{row}");
    browser.screenshot("accounts").await;
    browser.fill("form[action='/console/accounts/update'] input[name=nickname]", "李师傅").await;
    browser.submit("form[action='/console/accounts/update'] button", false).await;
    assert!(browser.text("#flash-ok").await.contains("昵称已修改"));
    assert_eq!(
        mock.requests_to(UPDATE_PATH)[0].json().unwrap(),
        json!({"kf_account": kf, "nickname": "李师傅"})
    );
    browser.fill("form[action='/console/accounts/invite'] input[name=invite_wx]", "li_wx").await;
    browser.submit("form[action='/console/accounts/invite'] button", false).await;
    assert!(browser.text("#flash-ok").await.contains("已发出绑定邀请"));
    assert_eq!(
        mock.requests_to(INVITE_PATH)[0].json().unwrap(),
        json!({"kf_account": kf, "invite_wx": "li_wx"})
    );
    browser.submit("form[action='/console/accounts/delete'] button", true).await;
    assert!(browser.text("#flash-ok").await.contains("已删除"));
    assert_eq!(mock.requests_to(DELETE_PATH)[0].json().unwrap(), json!({"kf_account": kf}));

    browser.goto(&format!("{base}/console/rules")).await;
    let rules = browser.text("#rules").await;
    assert!(rules.contains("six") && rules.contains("pipeline.toml:"), "{rules}");
    browser.submit("#reload", false).await;
    assert!(browser.text("#flash-ok").await.contains("已重新加载"));
    // A broken file: the reload fails, the old rules stay, the errors show as path:line:col.
    std::fs::write(
        rule_dir.path().join("bad.toml"),
        "[[rule]]\nname = \"bad\"\npriority = \"high\"\n",
    )
    .unwrap();
    browser.submit("#reload", false).await;
    assert!(browser.text("#flash-err").await.contains("旧规则继续生效"));
    let errors = browser.text("#rule-errors").await;
    assert!(errors.contains("bad.toml:3:"), "{errors}");
    assert!(browser.text("#rules").await.contains("six"), "the old rules stay");
    browser.screenshot("rules").await;

    browser.goto(&format!("{base}/console/outbox")).await;
    browser.wait_for("main h1").await;
    browser.screenshot("outbox").await;
    browser.stop().await;
    kefu.stop().await;
}

/// Serves `html` to every request on a loopback port: a page of another site.
async fn foreign_site(html: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{html}",
                html.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_refuses_cross_site_posts_and_sign_out_ends_the_session() {
    let Some(browser) = Browser::start().await else { return };
    let mock = MockWechat::start();
    let (kefu, base, _rules) = kefu(&mock).await;
    let user = "oConsoleCsrf";
    kefu.push(&text_push(user, "hi", 1, kefu.now_secs())).await;
    browser.sign_in(&base, crate::pipeline::ADMIN_TOKEN).await;
    browser.wait_for("#conversations").await;
    let cookie = browser.session_cookie().await;

    // A page of another site posts a reply form to the console: refused, nothing sent.
    let attack = format!(
        "<form id=f method=post action=\"{base}/console/conversations/{user}/reply\">\
         <input name=text value=attack><input name=csrf value=guess></form>\
         <script>document.getElementById('f').submit()</script>"
    );
    let port = foreign_site(attack).await;
    browser.goto(&format!("http://localhost:{port}/")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !browser.client.source().await.unwrap().contains("拒绝") {
        assert!(tokio::time::Instant::now() < deadline, "the cross-site post was not refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mock.count(SEND_PATH), 0, "nothing sent");

    // Even with the session cookie, a foreign Origin without the CSRF token is refused (§11.8).
    let http =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = http
        .post(format!("{base}/console/conversations/{user}/reply"))
        .header("Cookie", format!("kefu_console={cookie}"))
        .header("Origin", "http://evil.example")
        .form(&[("text", "attack")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .post(format!("{base}/console/conversations/{user}/reply"))
        .header("Cookie", format!("kefu_console={cookie}"))
        .header("Origin", base.as_str())
        .form(&[("text", "attack"), ("csrf", "wrong")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "same origin, wrong CSRF token");
    assert_eq!(mock.count(SEND_PATH), 0);
    // Security headers on every page; no secret in it.
    let page = http
        .get(format!("{base}/console/conversations"))
        .header("Cookie", format!("kefu_console={cookie}"))
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    let body = page.text().await.unwrap();
    assert!(
        !body.contains(crate::pipeline::ADMIN_TOKEN) && !body.contains(crate::pipeline::APP_SECRET)
    );
    // Messages come from the session, not the URL: a link cannot make the console say things.
    let page = http
        .get(format!("{base}/console/conversations?err=请到某某网站重新登录"))
        .header("Cookie", format!("kefu_console={cookie}"))
        .send()
        .await
        .unwrap();
    assert!(!page.text().await.unwrap().contains("某某网站"));

    // A live event stream opened by that session ...
    let mut events = http
        .get(format!("{base}/console/events"))
        .header("Cookie", format!("kefu_console={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status().as_u16(), 200);

    // Sign-out ends the session: the old cookie opens nothing any more.
    browser.goto(&format!("{base}/console/conversations")).await;
    browser.submit("#logout", false).await;
    browser.wait_for("#token").await;
    assert_eq!(browser.path().await, "/console/login");
    let r = http
        .get(format!("{base}/console/conversations"))
        .header("Cookie", format!("kefu_console={cookie}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/console/login");
    // ... and the stream it had open carries nothing more: it ends at the next event.
    kefu.push(&text_push(user, "签出之后的消息", 2, kefu.now_secs())).await;
    let mut seen = String::new();
    let ended = tokio::time::timeout(WAIT, async {
        while let Some(chunk) = events.chunk().await.unwrap_or(None) {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream of a signed-out session stays open: {seen}");
    assert!(!seen.contains("签出之后的消息"), "a record reached a signed-out stream: {seen}");
    browser.goto(&format!("{base}/console/conversations")).await;
    browser.wait_for("#token").await;
    browser.stop().await;
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_is_off_without_an_admin_token() {
    let mock = MockWechat::start();
    let kefu =
        Kefu::start_with(&mock, true, |c| c.admin.token = kefu::model::Secret::default()).await;
    let base = kefu.app().address.clone();
    for path in
        ["/console", "/console/login", "/console/conversations", "/console/assets/console.js"]
    {
        let r = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(r.status().as_u16(), 404, "{path}");
    }
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_through_the_admin_api_is_in_the_conversation_log() {
    // `/admin/send` and `kefu send` go through one gate (pipeline::gate::send_logged), which
    // records what a person sent as source `console`; a send the window refuses is not.
    let mock = MockWechat::start();
    let (kefu, base, _rules) = kefu(&mock).await;
    let user = "oConsoleManualSend";
    kefu.push(&text_push(user, "hi", 1, kefu.now_secs())).await;
    let http = reqwest::Client::new();
    let send = |text: &str| {
        http.post(format!("{base}/admin/send"))
            .bearer_auth(crate::pipeline::ADMIN_TOKEN)
            .json(&text_body(user, text))
            .send()
    };
    assert_eq!(send("管理接口发的").await.unwrap().status().as_u16(), 200);
    let unknown = "oConsoleNoWindow";
    let refused = http
        .post(format!("{base}/admin/send"))
        .bearer_auth(crate::pipeline::ADMIN_TOKEN)
        .json(&text_body(unknown, "不该记录"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 409);
    let openid = kefu::model::OpenId::parse(user).unwrap();
    let log = kefu.shared.store.log_show(&openid, None).await.unwrap();
    let by_console: Vec<&str> = log
        .iter()
        .filter(|r| r.source == kefu::model::Source::Console)
        .map(|r| r.text.as_str())
        .collect();
    assert_eq!(by_console, ["管理接口发的"], "{log:?}");
    let other = kefu::model::OpenId::parse(unknown).unwrap();
    assert!(kefu.shared.store.log_show(&other, None).await.unwrap().is_empty());
    assert_eq!(sends(&mock).len(), 1);
    kefu.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_goes_as_parts_within_wechats_limit() {
    // 1800 Chinese characters (5400 bytes): WeChat refuses one text over 2048 bytes (45002),
    // so the reply goes as three messages split like a rule's long text, each charged.
    let mock = MockWechat::start();
    let (kefu, base, _rules) = kefu(&mock).await;
    let user = "oConsoleLongReply";
    kefu.push(&text_push(user, "hi", 1, kefu.now_secs())).await;
    let text: String = "回".repeat(1800);
    let r = reqwest::Client::new()
        .post(format!("{base}/admin/conversations/{user}/reply"))
        .bearer_auth(crate::pipeline::ADMIN_TOKEN)
        .json(&json!({ "text": text }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await.unwrap_or_default());
    let parts: Vec<String> = sends_to(&mock, user)
        .iter()
        .filter_map(|b| b["text"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(parts.len(), 3, "{parts:?}");
    assert!(parts.iter().all(|p| p.len() <= 2048));
    assert_eq!(parts.concat(), text);
    let w = kefu.window(user).await;
    assert_eq!(w["grants"][0]["used"], json!(3), "each part is charged: {w}");
    kefu.stop().await;
}

// ---- several accounts (issue 20: the console's account switcher, interface §10) ----------

/// The two accounts of the switcher tests, in the order kefu serves them (by name).
const CAFE: &str = "cafe";
const SHOP: &str = "shop";

/// kefu serving `[accounts.cafe]` and `[accounts.shop]`, each with its own mock WeChat (own
/// app_id, app_secret, token and api_base) and its own path; both on the fixture rules.
async fn two_accounts(cafe: &MockWechat, shop: &MockWechat) -> (Kefu, String) {
    for mock in [cafe, shop] {
        let ok = |v| crate::mock_wechat::MockResponse::json(v);
        mock.set_default(LIST_PATH, ok(json!({"kf_list": []})));
        mock.set_default(ONLINE_PATH, ok(json!({"kf_online_list": []})));
    }
    let rules = crate::pipeline::rules_dir();
    let table = |name: &str, mock: &MockWechat| {
        format!(
            "[accounts.{name}]\npath = \"/wechat/{name}\"\napp_id = \"wx{name}0000000001\"\n\
             app_secret = \"{name}-secret\"\ntoken = \"{name}token\"\napi_base = \"{}\"\n\
             rules_dir = \"{}\"\n",
            mock.url(),
            rules.display()
        )
    };
    let toml = format!("{}\n{}", table(SHOP, shop), table(CAFE, cafe));
    let dir = tempfile::tempdir().expect("config dir");
    let parsed = kefu::config::Config::from_parts(
        Some(&dir.path().join("kefu.toml")),
        Some(&toml),
        [],
        dir.path(),
    )
    .expect("the accounts parse");
    let kefu = Kefu::start_with(shop, true, move |c| {
        c.accounts = parsed.accounts;
        for a in &mut c.accounts {
            a.state_dir = kefu::config::AccountConfig::state_dir_of(&c.state.dir, &a.name);
        }
    })
    .await;
    let base = kefu.app().address.clone();
    (kefu, base)
}

/// A plaintext push to account `name`'s path, signed with its token.
async fn push_to(base: &str, name: &str, xml: &str) {
    let q = crate::helpers::signed_query(&format!("{name}token"), crate::helpers::now_secs(), "n");
    let r = reqwest::Client::new()
        .post(format!("{base}/wechat/{name}"))
        .query(&q)
        .body(xml.to_string())
        .send()
        .await
        .expect("push");
    assert_eq!(r.status().as_u16(), 200, "the push to {name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_switches_accounts_and_a_reply_goes_through_the_chosen_accounts_api_only() {
    let Some(browser) = Browser::start().await else { return };
    let (cafe, shop) = (MockWechat::start(), MockWechat::start());
    let (kefu, base) = two_accounts(&cafe, &shop).await;
    // One follower writes to both accounts (the OpenIDs of two accounts may coincide in a
    // test; each account keeps its own conversation).
    let user = "oConsoleTwoAccounts";
    push_to(&base, CAFE, &text_push(user, "来一杯拿铁", 1, kefu.now_secs())).await;
    push_to(&base, SHOP, &text_push(user, "买一件衬衫", 1, kefu.now_secs())).await;

    // Signed in without naming an account: the first account by name (cafe), named in the
    // header, selected in the switcher, and only its conversation listed.
    browser.sign_in(&base, crate::pipeline::ADMIN_TOKEN).await;
    browser.wait_for("#conversations").await;
    assert_eq!(browser.text("#account-name").await, CAFE);
    assert_eq!(
        browser.js("return document.getElementById('account-select').value;").await,
        json!(CAFE)
    );
    let options = browser
        .js("return Array.from(document.querySelectorAll('#account-select option')).map(o => o.value);")
        .await;
    assert_eq!(options, json!([CAFE, SHOP]), "every account, in order");
    let rows = browser.text_now("#conversation-rows").await;
    assert!(rows.contains("来一杯拿铁") && !rows.contains("买一件衬衫"), "{rows}");
    browser.screenshot("accounts-switcher-cafe").await;

    // Choosing shop in the switcher shows shop's list (the script submits the form at once).
    let old = browser.wait_for("html").await;
    browser.wait_for("#account-select").await.select_by_value(SHOP).await.expect("choose shop");
    let deadline = tokio::time::Instant::now() + WAIT;
    while old.text().await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "choosing an account changed no page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.wait_for("#conversations").await;
    let url = browser.client.current_url().await.unwrap();
    assert_eq!((url.path(), url.query()), ("/console/conversations", Some("account=shop")));
    assert_eq!(browser.text("#account-name").await, SHOP);
    let rows = browser.text_now("#conversation-rows").await;
    assert!(rows.contains("买一件衬衫") && !rows.contains("来一杯拿铁"), "{rows}");
    // Every console link and form of the page names shop.
    let unmarked = browser
        .js("return Array.from(document.querySelectorAll('a[href^=\"/console\"], form[method=post]'))\
             .map(e => e.getAttribute('href') || e.getAttribute('action'))\
             .filter(u => !u.endsWith('?account=shop'));")
        .await;
    assert_eq!(unmarked, json!([]), "links or forms without ?account=shop");

    // Live updates come from shop's log: cafe's new message stays out, shop's appears.
    browser.js("window.__notReloaded = true; return null;").await;
    push_to(&base, CAFE, &text_push("oConsoleCafeOnly", "咖啡店的新消息", 2, kefu.now_secs()))
        .await;
    push_to(&base, SHOP, &text_push("oConsoleShopOnly", "商店的新消息", 2, kefu.now_secs())).await;
    browser.wait_for("tr[data-openid='oConsoleShopOnly']").await;
    assert!(!browser.text_now("#conversation-rows").await.contains("咖啡店的新消息"));
    assert_eq!(browser.js("return window.__notReloaded === true;").await, json!(true), "no reload");
    browser.screenshot("accounts-switcher-shop").await;

    // Shop's conversation, and a reply from it: through shop's API client only.
    browser.submit(&format!("tr[data-openid='{user}'] a"), false).await;
    browser.wait_for("#reply-text").await;
    let url = browser.client.current_url().await.unwrap();
    assert_eq!(url.query(), Some("account=shop"));
    assert_eq!(browser.text("#messages .msg.in .text").await, "买一件衬衫");
    browser.fill("#reply-text", "衬衫有货，欢迎下单。").await;
    browser.submit("#reply-send", false).await;
    assert!(browser.text("#flash-ok").await.contains("已发送"));
    assert_eq!(sends(&shop), [text_body(user, "衬衫有货，欢迎下单。")]);
    assert_eq!(cafe.count(SEND_PATH), 0, "nothing went through cafe's API client");
    let token = shop.requests_to(crate::mock_wechat::STABLE_TOKEN_PATH);
    assert_eq!(token[0].json().unwrap()["appid"], "wxshop0000000001", "shop's own credentials");
    // The page after the reply is still shop's.
    let url = browser.client.current_url().await.unwrap();
    assert_eq!(
        (url.path(), url.query()),
        (format!("/console/conversations/{user}").as_str(), Some("account=shop"))
    );
    assert_eq!(browser.text("#account-name").await, SHOP);
    let out = browser.text("#messages .msg.out:last-child .text").await;
    assert_eq!(out, "衬衫有货，欢迎下单。");
    browser.screenshot("accounts-switcher-reply").await;

    // Switching on a conversation's page leads to cafe's list; cafe's log has no reply.
    let old = browser.wait_for("html").await;
    browser.wait_for("#account-select").await.select_by_value(CAFE).await.expect("choose cafe");
    let deadline = tokio::time::Instant::now() + WAIT;
    while old.text().await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "choosing an account changed no page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.wait_for("#conversations").await;
    assert_eq!(browser.path().await, "/console/conversations");
    assert_eq!(browser.text("#account-name").await, CAFE);
    browser.submit(&format!("tr[data-openid='{user}'] a"), false).await;
    let thread = browser.text("#messages").await;
    assert!(thread.contains("来一杯拿铁") && !thread.contains("衬衫"), "{thread}");
    assert_eq!(browser.client.current_url().await.unwrap().query(), Some("account=cafe"));
    browser.stop().await;
    kefu.stop().await;
}

/// The value of `name="csrf"` in a console page.
fn csrf_of(page: &str) -> String {
    crate::helpers::between(page, "name=\"csrf\" value=\"", "\"").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_accounts_a_console_post_without_account_is_refused_and_changes_nothing() {
    let (cafe, shop) = (MockWechat::start(), MockWechat::start());
    let (kefu, base) = two_accounts(&cafe, &shop).await;
    let user = "oConsoleNoAccount";
    push_to(&base, CAFE, &text_push(user, "hi cafe", 1, kefu.now_secs())).await;
    push_to(&base, SHOP, &text_push(user, "hi shop", 1, kefu.now_secs())).await;
    let http =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();

    // Signed out: the sign-in redirect keeps an account the URL named, and names none itself.
    let r = http.get(format!("{base}/console/conversations?account=shop")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/console/login?account=shop");
    let r = http.get(format!("{base}/console/conversations")).send().await.unwrap();
    assert_eq!(r.headers()["location"], "/console/login");
    let login = http.get(format!("{base}/console/login")).send().await.unwrap();
    let login = login.text().await.unwrap();
    assert!(!login.contains(CAFE) && !login.contains(SHOP), "the sign-in page names no account");

    // Signing in needs no account (it acts on none) and leads to the account asked for.
    let r = http
        .post(format!("{base}/console/login?account=shop"))
        .header("Origin", base.as_str())
        .form(&[("token", crate::pipeline::ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(r.headers()["location"], "/console/conversations?account=shop");
    let r = http
        .post(format!("{base}/console/login"))
        .header("Origin", base.as_str())
        .form(&[("token", crate::pipeline::ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303, "a sign-in without ?account= is not refused");
    assert_eq!(r.headers()["location"], "/console/conversations");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_string();
    let page = http
        .get(format!("{base}/console/conversations/{user}?account=shop"))
        .header("Cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let page = page.text().await.unwrap();
    assert!(page.contains(&format!("action=\"/console/conversations/{user}/reply?account=shop\"")));
    let csrf = csrf_of(&page);

    // A reply posted without ?account= (a valid session, origin and CSRF token): 400, and
    // neither account sent, charged or logged anything.
    let reply = |query: &'static str| {
        http.post(format!("{base}/console/conversations/{user}/reply{query}"))
            .header("Cookie", &cookie)
            .header("Origin", base.as_str())
            .form(&[("text", "没有说是哪个公众号"), ("csrf", csrf.as_str())])
            .send()
    };
    let r = reply("").await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("?account=NAME"));
    let rules = http
        .post(format!("{base}/console/rules/reload"))
        .header("Cookie", &cookie)
        .header("Origin", base.as_str())
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(rules.status().as_u16(), 400, "every console form needs the account");
    assert_eq!(cafe.count(SEND_PATH) + shop.count(SEND_PATH), 0, "nothing sent");
    for name in [CAFE, SHOP] {
        let w = kefu.admin_get(&format!("/admin/windows/{user}?account={name}")).await;
        let w: Value = w.json().await.unwrap();
        assert_eq!(w["grants"][0]["used"], json!(0), "{name} charged nothing: {w}");
        let log = kefu.admin_get(&format!("/admin/conversations/{user}?account={name}")).await;
        assert_eq!(log.status().as_u16(), 200, "/admin/conversations takes ?account=");
        let log = log.text().await.unwrap();
        assert!(log.contains(&format!("hi {name}")), "{name}'s own log: {log}");
        assert!(!log.contains("没有说是哪个公众号"), "{name} logged the refused reply: {log}");
    }

    // The same form naming shop is sent, through shop only (so the 400 was the account).
    let r = reply("?account=shop").await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(
        r.headers()["location"],
        format!("/console/conversations/{user}?account=shop").as_str()
    );
    assert_eq!(sends(&shop), [text_body(user, "没有说是哪个公众号")]);
    assert_eq!(cafe.count(SEND_PATH), 0);
    kefu.stop().await;
}
