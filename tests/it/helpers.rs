//! Shared test helpers: `spawn_app` starts the real server on 127.0.0.1:0 (zero2prod's
//! `spawn_app`), plus builders for signed, encrypted and compatible-mode pushes so every feature
//! test drives the webhook the way WeChat does.

#![allow(dead_code)] // each test module uses a different subset

use std::sync::Arc;

use kefu::app::{Application, ExtraRoutes};
use kefu::config::Config;
use kefu::model::{PassiveReply, Secret};
use kefu::pipeline::{AckOnly, PushSink};
use kefu::wechat::crypto::AesKey;
use kefu::wechat::signature;
use kefu::wechat::webhook::Opened;

/// K1 (protocol §2.7): the official sample token, key and appid.
pub const TOKEN: &str = "pamtest";
pub const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
pub const APP_ID: &str = "wxb11529c136998cb6";
/// The account and follower of the F01–F20 fixtures.
pub const ACCOUNT: &str = "gh_4d00ed8d6399";
pub const USER: &str = "oMgHVjngRipVsoxg6TuX3vz6glDg";

/// A config for tests: K1 token, key and appid (no app_secret, so API sends are dry-run),
/// listening on 127.0.0.1:0. Callers that store state should point `state.dir` at a tempdir.
pub fn test_config() -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".into();
    c.wechat.token = Secret::new(TOKEN);
    c.wechat.encoding_aes_key = Secret::new(AES_KEY);
    c.wechat.app_id = APP_ID.into();
    c
}

pub fn k1() -> AesKey {
    AesKey::from_encoding_aes_key(AES_KEY).expect("K1")
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// A fixture under tests/fixtures/.
pub fn fixture(rel: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    pub port: u16,
    pub cfg: Config,
    pub client: reqwest::Client,
    pub handle: actix_web::dev::ServerHandle,
}

/// Starts the real application with `AckOnly`.
pub async fn spawn_app(cfg: Config) -> TestApp {
    spawn_app_with(cfg, Arc::new(AckOnly), None).await
}

/// Starts the real application with the given sink and extra routes.
pub async fn spawn_app_with(
    cfg: Config,
    sink: Arc<dyn PushSink>,
    extra: Option<ExtraRoutes>,
) -> TestApp {
    let app = Application::build(cfg.clone(), sink, extra).expect("build the application");
    let port = app.port();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        cfg,
        client: reqwest::Client::new(),
        handle,
    }
}

/// `signature`, `timestamp`, `nonce` (and `openid`) as WeChat sends them.
pub fn signed_query(token: &str, timestamp: i64, nonce: &str) -> Vec<(String, String)> {
    let ts = timestamp.to_string();
    vec![
        ("signature".into(), signature::sign(&[token, &ts, nonce])),
        ("timestamp".into(), ts),
        ("nonce".into(), nonce.into()),
        ("openid".into(), USER.into()),
    ]
}

/// A safe-mode push: the query (with `encrypt_type=aes` and `msg_signature`) and the body
/// `<xml><ToUserName/><Encrypt/></xml>`; with `compatible` the plaintext fields ride along.
pub fn encrypted_push(
    token: &str,
    key: &AesKey,
    app_id: &str,
    xml: &str,
    timestamp: i64,
    nonce: &str,
    compatible: bool,
) -> (Vec<(String, String)>, String) {
    let encrypt = key.encrypt(xml, app_id);
    let mut q = signed_query(token, timestamp, nonce);
    let ts = timestamp.to_string();
    q.push(("encrypt_type".into(), "aes".into()));
    q.push(("msg_signature".into(), signature::sign(&[token, &ts, nonce, &encrypt])));
    let element = format!("<Encrypt><![CDATA[{encrypt}]]></Encrypt>");
    let body = if compatible {
        xml.trim().replacen("</xml>", &format!("{element}</xml>"), 1)
    } else {
        format!("<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>{element}</xml>")
    };
    (q, body)
}

/// The text between `a` and `b`.
pub fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    let start = s.find(a).map(|i| i + a.len()).unwrap_or_else(|| panic!("no {a} in {s}"));
    let len = s[start..].find(b).unwrap_or_else(|| panic!("no {b} in {s}"));
    &s[start..start + len]
}

impl TestApp {
    pub fn webhook_url(&self) -> String {
        format!("{}{}", self.address, self.cfg.server.path)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(format!("{}{path}", self.address)).send().await.expect("GET")
    }

    /// The GET handshake signed with the configured token.
    pub async fn handshake(&self, echostr: &str) -> reqwest::Response {
        let mut q = signed_query(self.cfg.wechat.token.expose(), now_secs(), "hs1");
        q.push(("echostr".into(), echostr.into()));
        self.client.get(self.webhook_url()).query(&q).send().await.expect("GET handshake")
    }

    pub async fn post(
        &self,
        query: &[(String, String)],
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.client.post(self.webhook_url()).query(query).body(body).send().await.expect("POST")
    }

    /// A plaintext push signed now.
    pub async fn push_plain(&self, xml: &str) -> reqwest::Response {
        let q = signed_query(self.cfg.wechat.token.expose(), now_secs(), "n-plain");
        self.post(&q, xml.to_string()).await
    }

    /// A safe-mode push encrypted with the configured key and appid.
    pub async fn push_safe(&self, xml: &str) -> reqwest::Response {
        self.push_encrypted(xml, false).await
    }

    /// A compatible-mode push (plaintext fields and Encrypt).
    pub async fn push_compatible(&self, xml: &str) -> reqwest::Response {
        self.push_encrypted(xml, true).await
    }

    async fn push_encrypted(&self, xml: &str, compatible: bool) -> reqwest::Response {
        let key = AesKey::from_encoding_aes_key(self.cfg.wechat.encoding_aes_key.expose())
            .expect("configured key");
        let (q, body) = encrypted_push(
            self.cfg.wechat.token.expose(),
            &key,
            &self.cfg.wechat.app_id,
            xml,
            now_secs(),
            "n-aes",
            compatible,
        );
        self.post(&q, body).await
    }

    /// Verifies and decrypts an encrypted answer with `key`; returns the reply XML.
    pub fn open_reply(&self, body: &str, key: &AesKey) -> String {
        let encrypt = between(body, "<Encrypt><![CDATA[", "]]></Encrypt>");
        let sig = between(body, "<MsgSignature><![CDATA[", "]]></MsgSignature>");
        let ts = between(body, "<TimeStamp>", "</TimeStamp>");
        let nonce = between(body, "<Nonce><![CDATA[", "]]></Nonce>");
        assert!(
            signature::verify(sig, &[self.cfg.wechat.token.expose(), ts, nonce, encrypt]),
            "reply MsgSignature"
        );
        let (xml, appid) = key.decrypt(encrypt).expect("reply decrypts");
        assert_eq!(appid, self.cfg.wechat.app_id);
        xml
    }
}

/// A sink that records what it saw and answers as told.
#[derive(Default)]
pub struct ScriptedSink {
    pub seen: parking_lot::Mutex<Vec<Opened>>,
    pub reply: Option<PassiveReply>,
    pub fail: bool,
}

#[async_trait::async_trait]
impl PushSink for ScriptedSink {
    async fn accept(&self, opened: &Opened, _: i64) -> anyhow::Result<Option<PassiveReply>> {
        if self.fail {
            anyhow::bail!("store unavailable (scripted)");
        }
        self.seen.lock().push(opened.clone());
        Ok(self.reply.clone())
    }
}

/// `stderr` without the line each command starts with, naming the config file in use
/// (`kefu: config: …`), for tests about the messages after it.
pub fn without_config_line(stderr: &str) -> String {
    stderr.lines().filter(|l| !l.starts_with("kefu: config: ")).map(|l| format!("{l}\n")).collect()
}

/// What one run of the `kefu` binary printed.
pub struct KefuRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The `kefu` binary as a command in `dir` with only the given environment of ours:
/// inherited `KEFU_*`, `RUST_LOG` and `NO_COLOR` are removed, so the outer shell cannot change
/// what is tested.
pub fn kefu_command(
    dir: &std::path::Path,
    env: &[(&str, &str)],
    args: &[&str],
) -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kefu"));
    cmd.current_dir(dir).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("KEFU_") || k == "RUST_LOG" || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// Runs [`kefu_command`] to the end.
pub fn kefu_in(dir: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> KefuRun {
    let out = kefu_command(dir, env, args).output().expect("run kefu");
    KefuRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An empty store under `dir`, as `kefu serve` leaves it on its first start: the CLI commands
/// that read or charge the ledger refuse to run without one (they never create `state.dir`).
pub fn seed_state(dir: &std::path::Path) {
    let clock: kefu::model::SharedClock = Arc::new(kefu::model::SystemClock);
    let store = kefu::store::SqliteStore::open_client(dir, &Default::default(), clock)
        .expect("create the store");
    store.close();
}
