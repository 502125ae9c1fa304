//! Media files in replies (issue 18, interface §9): a rule names a file, kefu uploads it once
//! per content and type, keeps the media id (SQLite, or Redis shared by instances), uploads
//! again after `media.refresh_after` or when WeChat refuses the id (40007, then that send is
//! retried once), and `kefu rules check` refuses missing, mistyped and oversized files. The
//! mock API issues ids, logs every upload and answers 40007 for an id it does not know.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::helpers::{TOKEN, kefu_in, now_secs, signed_query, test_config};
use crate::mock_wechat::{CUSTOM_SEND_PATH, MEDIA_UPLOAD_PATH, MockResponse, MockWechat};
use crate::pipeline::{sends, text_push};
use crate::redis::test_redis_url;
use kefu::config::Config;
use kefu::model::{Secret, SharedClock, SystemClock};
use kefu::service::Service;

const FOLLOWER: &str = "oMediaFollower0000000000001";

/// A PNG signature and a little more: what the magic-byte check and the mock need.
fn png() -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    v.resize(300, 7);
    v
}

fn jpeg(len: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F'];
    v.resize(len, 1);
    v
}

fn mp4() -> Vec<u8> {
    let mut v = b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom".to_vec();
    v.resize(2048, 0);
    v
}

const IMAGE_RULE: &str = r#"
[[rule]]
name = "menu"
[rule.when]
text_contains = "菜单"
[[rule.reply]]
image = { file = "media/menu.png" }
"#;

/// `dir/rules` with `rule_file` and the media files under `dir/rules/media`.
fn rules_dir(dir: &Path, rule_file: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let rules = dir.join("rules");
    std::fs::create_dir_all(rules.join("media")).expect("rules/media");
    std::fs::write(rules.join("10-rules.toml"), rule_file).expect("rule file");
    for (name, bytes) in files {
        std::fs::write(rules.join("media").join(name), bytes).expect("media file");
    }
    rules
}

/// The real service against `mock`, its rules in `rules`, its state in `state`.
struct Kefu {
    base: String,
    path: String,
    http: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
}

impl Kefu {
    async fn start(
        mock: &MockWechat,
        rules: &Path,
        state: &Path,
        app_id: &str,
        edit: impl FnOnce(&mut Config),
    ) -> Kefu {
        let mut cfg = test_config();
        cfg.wechat.app_id = app_id.to_string();
        cfg.wechat.app_secret = Secret::new("media-app-secret");
        cfg.wechat.api_base = mock.url();
        cfg.state.dir = state.to_path_buf();
        cfg.rules.dir = rules.to_path_buf();
        cfg.rules.hot_reload = false;
        edit(&mut cfg);
        // A server stopped just before may still hold state.dir for a moment (its sender and
        // store close after the HTTP server): try again for a few seconds.
        let started = Instant::now();
        let service = loop {
            let clock: SharedClock = Arc::new(SystemClock);
            match Service::build(cfg.clone(), clock).await {
                Ok(s) => break s,
                Err(e) if started.elapsed() < Duration::from_secs(10) => {
                    assert!(format!("{e:#}").contains("another `kefu serve`"), "{e:#}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("the service does not start: {e:#}"),
            }
        };
        let base = format!("http://{}", service.local_addr());
        let handle = service.handle();
        tokio::spawn(service.run_until_stopped());
        Kefu { base, path: cfg.server.path.clone(), http: reqwest::Client::new(), handle }
    }

    /// A text push from [`FOLLOWER`]; the HTTP answer.
    async fn say(&self, text: &str, msg_id: u64) -> String {
        let q = signed_query(TOKEN, now_secs(), "media-nonce");
        let r = self
            .http
            .post(format!("{}{}", self.base, self.path))
            .query(&q)
            .body(text_push(FOLLOWER, text, msg_id, now_secs()))
            .send()
            .await
            .expect("POST push");
        assert_eq!(r.status().as_u16(), 200);
        r.text().await.expect("answer")
    }

    async fn metrics(&self) -> String {
        let r = self.http.get(format!("{}/metrics", self.base)).send().await.expect("GET");
        r.text().await.expect("metrics")
    }

    async fn stop(self) {
        self.handle.stop(false).await;
    }
}

fn app_id() -> String {
    format!("wxmedia{:010x}", rand::random::<u64>() & 0xff_ffff_ffff)
}

/// Waits until `cond` holds (10 s at most), naming `what` on failure.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The position in the mock's log of every request to `path`.
fn positions(mock: &MockWechat, path: &str) -> Vec<usize> {
    mock.requests().iter().enumerate().filter(|(_, r)| r.path == path).map(|(i, _)| i).collect()
}

#[tokio::test]
async fn an_image_file_is_uploaded_once_and_its_id_is_the_reply() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_dir(dir.path(), IMAGE_RULE, &[("menu.png", png())]);
    let kefu = Kefu::start(&mock, &rules, &dir.path().join("state"), &app_id(), |_| {}).await;

    // Uploaded when the rules load, before any push.
    wait_until("the upload", || mock.uploads().len() == 1).await;
    let up = &mock.uploads()[0];
    assert_eq!(
        (up.media_type.as_str(), up.bytes, up.filename.as_str()),
        ("image", 300, "menu.png")
    );
    let id = up.media_id.clone();
    assert!(id.starts_with("MOCK_MEDIA_IMAGE_"), "{id}");
    // The id is kept once the answer is in; give the cache that moment.
    tokio::time::sleep(Duration::from_millis(300)).await;

    for n in 0..6u64 {
        let answer = kefu.say("菜单", 1000 + n).await;
        assert!(answer.contains("<MsgType><![CDATA[image]]></MsgType>"), "{answer}");
        assert!(answer.contains(&format!("<MediaId><![CDATA[{id}]]></MediaId>")), "{answer}");
    }
    assert_eq!(mock.uploads().len(), 1, "5 more pushes upload nothing");
    assert_eq!(mock.count(CUSTOM_SEND_PATH), 0, "passive answers, no custom/send");
    let page = kefu.metrics().await;
    assert!(page.contains(r#"kefu_media_uploads_total{type="image",outcome="ok"} 1"#), "{page}");
    kefu.stop().await;
}

#[tokio::test]
async fn a_file_not_uploaded_yet_goes_out_through_custom_send_once_it_is() {
    let mock = MockWechat::start();
    // A slow upload: the first push comes before the id exists.
    mock.push(
        MEDIA_UPLOAD_PATH,
        MockResponse::json(serde_json::json!({"type": "image", "media_id": "SLOW_IMAGE_ID"}))
            .delayed(Duration::from_millis(1500)),
    );
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_dir(dir.path(), IMAGE_RULE, &[("menu.png", png())]);
    let kefu = Kefu::start(&mock, &rules, &dir.path().join("state"), &app_id(), |_| {}).await;
    let answer = kefu.say("菜单", 2000).await;
    assert_eq!(answer, "success", "no passive image without its id");
    wait_until("the custom/send", || mock.count(CUSTOM_SEND_PATH) == 1).await;
    let body = &sends(&mock)[0];
    assert_eq!(body["msgtype"], "image");
    assert_eq!(body["image"]["media_id"], "SLOW_IMAGE_ID");
    assert_eq!(mock.count(MEDIA_UPLOAD_PATH), 1, "the sender waited for the one upload");
    kefu.stop().await;
}

#[tokio::test]
async fn after_refresh_after_the_next_send_is_preceded_by_a_new_upload() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_dir(dir.path(), IMAGE_RULE, &[("menu.png", png())]);
    let kefu = Kefu::start(&mock, &rules, &dir.path().join("state"), &app_id(), |c| {
        c.media.refresh_after = Duration::from_secs(3);
        c.rules.passive_first = false;
    })
    .await;
    kefu.say("菜单", 3000).await;
    wait_until("the first send", || mock.count(CUSTOM_SEND_PATH) == 1).await;
    let first = sends(&mock)[0]["image"]["media_id"].as_str().unwrap().to_string();
    assert_eq!(first, mock.uploads()[0].media_id);

    tokio::time::sleep(Duration::from_millis(3500)).await;
    kefu.say("菜单", 3001).await;
    wait_until("the second send", || mock.count(CUSTOM_SEND_PATH) == 2).await;
    let second = sends(&mock)[1]["image"]["media_id"].as_str().unwrap().to_string();
    assert_ne!(second, first, "a stale id is not sent");
    let uploads = mock.uploads();
    assert!(uploads.len() >= 2, "{uploads:?}");
    let issued = uploads.iter().position(|u| u.media_id == second).expect("an uploaded id");
    let (upload_at, send_at) =
        (positions(&mock, MEDIA_UPLOAD_PATH)[issued], positions(&mock, CUSTOM_SEND_PATH)[1]);
    assert!(upload_at < send_at, "the new upload precedes the send");
    kefu.stop().await;
}

#[tokio::test]
async fn a_40007_uploads_again_and_retries_that_send_once() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_dir(dir.path(), IMAGE_RULE, &[("menu.png", png())]);
    let kefu = Kefu::start(&mock, &rules, &dir.path().join("state"), &app_id(), |c| {
        c.rules.passive_first = false;
    })
    .await;
    wait_until("the upload", || mock.uploads().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = mock.uploads()[0].media_id.clone();
    mock.forget_media(&old);

    kefu.say("菜单", 4000).await;
    wait_until("the retried send", || mock.count(CUSTOM_SEND_PATH) == 2).await;
    // Nothing else follows.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bodies = sends(&mock);
    assert_eq!(bodies.len(), 2, "one refused send, one retry: {bodies:?}");
    assert_eq!(bodies[0]["image"]["media_id"], old.as_str());
    let uploads = mock.uploads();
    assert_eq!(uploads.len(), 2, "exactly one new upload: {uploads:?}");
    let new = uploads[1].media_id.clone();
    assert_eq!(bodies[1]["image"]["media_id"], new.as_str());
    let upload_at = positions(&mock, MEDIA_UPLOAD_PATH)[1];
    let sends_at = positions(&mock, CUSTOM_SEND_PATH);
    assert!(sends_at[0] < upload_at && upload_at < sends_at[1], "refused, uploaded, retried");
    // The follower got exactly one image: the one send that named a live id.
    let delivered = bodies.iter().filter(|b| b["image"]["media_id"] == new.as_str()).count();
    assert_eq!(delivered, 1);
    kefu.stop().await;
}

#[tokio::test]
async fn a_video_with_a_thumb_uploads_both_and_sends_both_ids() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let rule = r#"
[[rule]]
name = "howto"
[rule.when]
text_contains = "怎么用"
[[rule.reply]]
video = { file = "media/howto.mp4", title = "使用说明", thumb = { file = "media/howto-thumb.jpg" } }
"#;
    let rules =
        rules_dir(dir.path(), rule, &[("howto.mp4", mp4()), ("howto-thumb.jpg", jpeg(2000))]);
    let kefu = Kefu::start(&mock, &rules, &dir.path().join("state"), &app_id(), |c| {
        c.rules.passive_first = false;
    })
    .await;
    kefu.say("怎么用", 5000).await;
    wait_until("the send", || mock.count(CUSTOM_SEND_PATH) == 1).await;
    let mut uploads: Vec<(String, usize, String)> =
        mock.uploads().into_iter().map(|u| (u.media_type, u.bytes, u.media_id)).collect();
    uploads.sort();
    assert_eq!(uploads.len(), 2, "{uploads:?}");
    assert_eq!((uploads[0].0.as_str(), uploads[0].1), ("thumb", 2000));
    assert_eq!((uploads[1].0.as_str(), uploads[1].1), ("video", 2048));
    let body = &sends(&mock)[0];
    assert_eq!(body["msgtype"], "video");
    assert_eq!(body["video"]["media_id"], uploads[1].2.as_str());
    assert_eq!(body["video"]["thumb_media_id"], uploads[0].2.as_str());
    assert_eq!(body["video"]["title"], "使用说明");
    kefu.stop().await;
}

#[test]
fn rules_check_refuses_a_missing_file_and_a_100_kb_thumb() {
    let dir = tempfile::tempdir().unwrap();
    let rule = r#"[[rule]]
name = "menu"
[[rule.reply]]
image = { file = "media/missing.png" }

[[rule]]
name = "howto"
[rule.when]
text_contains = "怎么用"
[[rule.reply]]
video = { file = "media/howto.mp4", thumb = { file = "media/big-thumb.jpg" } }
"#;
    let rules =
        rules_dir(dir.path(), rule, &[("howto.mp4", mp4()), ("big-thumb.jpg", jpeg(100 * 1024))]);
    let run = kefu_in(dir.path(), &[], &["rules", "check", rules.to_str().unwrap()]);
    assert_eq!(run.code, 1, "stdout: {}\nstderr: {}", run.stdout, run.stderr);
    let all = format!("{}{}", run.stdout, run.stderr);
    let file = rules.join("10-rules.toml");
    let at = |line: usize, col: usize| format!("{}:{line}:{col}: ", file.display());
    assert!(
        all.contains(&at(4, 9)) && all.contains("media file `media/missing.png` not found"),
        "{all}"
    );
    assert!(all.contains("media file `media/big-thumb.jpg` is 102400 bytes, over WeChat's 64 KB limit for thumb media"), "{all}");
    assert!(all.contains(&at(11, 45)), "the thumb's position: {all}");

    // A video file that is not mp4 and a GIF image: an error and a warning.
    let rule = r#"[[rule]]
name = "gif"
[[rule.reply]]
image = { file = "media/anim.gif" }
[[rule.reply]]
voice = { file = "media/menu.png" }
"#;
    let rules = rules_dir(
        dir.path(),
        rule,
        &[("anim.gif", b"GIF89a\x01\0\x01\0".to_vec()), ("menu.png", png())],
    );
    let run = kefu_in(dir.path(), &[], &["rules", "check", rules.to_str().unwrap()]);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert_eq!(run.code, 1, "{all}");
    assert!(all.contains("holds png data, but voice media must be amr or mp3"), "{all}");
    assert!(all.contains("is a GIF: WeChat does not support GIF images"), "{all}");
}

#[tokio::test]
async fn two_instances_on_redis_upload_a_file_once() {
    let Some(url) = test_redis_url() else { return };
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_dir(dir.path(), IMAGE_RULE, &[("menu.png", png())]);
    let app = app_id();
    let both = |c: &mut Config| {
        c.state.redis_url = Secret::new(url.clone());
        c.rules.passive_first = false;
    };
    let (state_a, state_b) = (dir.path().join("state-a"), dir.path().join("state-b"));
    let (a, b) = tokio::join!(
        Kefu::start(&mock, &rules, &state_a, &app, both),
        Kefu::start(&mock, &rules, &state_b, &app, both),
    );
    wait_until("the upload", || mock.uploads().len() == 1).await;
    // Both have loaded the rules and looked the file up by now; neither uploads again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.say("菜单", 6000).await;
    wait_until("a's send", || mock.count(CUSTOM_SEND_PATH) == 1).await;
    b.say("菜单", 6001).await;
    wait_until("b's send", || mock.count(CUSTOM_SEND_PATH) == 2).await;
    let uploads = mock.uploads();
    assert_eq!(uploads.len(), 1, "one upload for both instances: {uploads:?}");
    for body in sends(&mock) {
        assert_eq!(body["image"]["media_id"], uploads[0].media_id.as_str());
    }
    a.stop().await;
    b.stop().await;
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut con = client.get_connection().expect("redis");
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("kefu:{{{app}}}:*")).query(&mut con).unwrap_or_default();
    for k in keys {
        let _: Result<i64, _> = redis::cmd("DEL").arg(k).query(&mut con);
    }
}

#[test]
fn media_commands_upload_and_list() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("menu.png"), png()).unwrap();
    crate::helpers::seed_state(&dir.path().join("state"));
    let api = mock.url();
    let env = [
        ("KEFU_WECHAT_APP_ID", crate::helpers::APP_ID),
        ("KEFU_WECHAT_APP_SECRET", "media-cli-secret"),
        ("KEFU_WECHAT_API_BASE", api.as_str()),
        ("KEFU_STATE_DIR", "state"),
    ];
    let run = kefu_in(dir.path(), &env, &["media", "upload", "menu.png"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let uploads = mock.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].media_type, "image", "the type comes from the content");
    assert_eq!(run.stdout, format!("{}\n", uploads[0].media_id), "only the id on stdout");

    // A PNG is no thumb (jpg only): refused before any upload, as bad input.
    let run = kefu_in(dir.path(), &env, &["media", "upload", "menu.png", "--type", "thumb"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains("holds png data, but thumb media must be jpeg/jpg"),
        "{}",
        run.stderr
    );
    assert_eq!(mock.uploads().len(), 1);

    let run = kefu_in(dir.path(), &env, &["media", "list", "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list: Value = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["media_id"], uploads[0].media_id.as_str());
    assert_eq!(list[0]["type"], "image");
    assert_eq!(list[0]["bytes"], 300);
    assert_eq!(list[0]["stale"], false);
    let run = kefu_in(dir.path(), &env, &["media", "list"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(run.stdout.starts_with(&format!("image {}", uploads[0].media_id)), "{}", run.stdout);
}

#[tokio::test]
async fn cached_ids_survive_a_restart() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_dir(dir.path(), IMAGE_RULE, &[("menu.png", png())]);
    let (state, app) = (dir.path().join("state"), app_id());
    let kefu = Kefu::start(&mock, &rules, &state, &app, |_| {}).await;
    wait_until("the upload", || mock.uploads().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kefu.stop().await;
    let kefu = Kefu::start(&mock, &rules, &state, &app, |_| {}).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let answer = kefu.say("菜单", 7000).await;
    let id = &mock.uploads()[0].media_id;
    assert!(answer.contains(&format!("<MediaId><![CDATA[{id}]]></MediaId>")), "{answer}");
    assert_eq!(mock.uploads().len(), 1, "the id came from the store, not a new upload");
    kefu.stop().await;
}

/// A state.dir moved to another account (the sandbox test account to production): the other
/// account's cached media ids are not used, the file is uploaded for this account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_app_id_on_the_same_state_dir_uploads_again() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = rules_dir(dir.path(), IMAGE_RULE, &[("menu.png", png())]);
    let state = dir.path().join("state");
    let kefu = Kefu::start(&mock, &rules, &state, &app_id(), |_| {}).await;
    wait_until("the upload", || mock.uploads().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kefu.stop().await;
    let kefu = Kefu::start(&mock, &rules, &state, &app_id(), |_| {}).await;
    wait_until("an upload for the new account", || mock.uploads().len() == 2).await;
    let first = mock.uploads()[0].media_id.clone();
    let answer = kefu.say("菜单", 7001).await;
    assert!(!answer.contains(&first), "the other account's id is not used: {answer}");
    assert!(answer.contains(&mock.uploads()[1].media_id), "{answer}");
    kefu.stop().await;
}
