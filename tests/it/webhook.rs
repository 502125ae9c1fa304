//! The webhook end to end: the real server on 127.0.0.1:0 driven like WeChat — the handshake,
//! pushes in plaintext, compatible and safe mode, passive replies sealed per mode, and every
//! refusal with its status code (interface §3, §6.3).

use std::sync::Arc;

use kefu::model::{OutMessage, PassiveReply};
use kefu::wechat::crypto::AesKey;
use kefu::wechat::inbound::PushKind;
use kefu::wechat::webhook::{KeyUsed, Mode};

use crate::helpers::*;

const F01: &str = "wechat/pushes/F01-text.xml";

fn text_reply(s: &str) -> Option<PassiveReply> {
    Some(PassiveReply::Message { message: OutMessage::Text { content: s.into() } })
}

async fn status_and_body(r: reqwest::Response) -> (u16, String) {
    let s = r.status().as_u16();
    (s, r.text().await.expect("body"))
}

#[tokio::test]
async fn healthz_is_200() {
    let app = spawn_app(test_config()).await;
    assert_eq!(status_and_body(app.get("/healthz").await).await, (200, "ok".into()));
}

#[tokio::test]
async fn handshake_echoes_echostr_and_refuses_bad_signatures() {
    let app = spawn_app(test_config()).await;
    assert_eq!(
        status_and_body(app.handshake("4375120948345356249").await).await,
        (200, "4375120948345356249".into())
    );

    // H1 exactly, with its own token.
    let mut cfg = test_config();
    cfg.wechat.token = kefu::model::Secret::new("AAAAA");
    let h1 = spawn_app(cfg).await;
    let q = [
        ("signature", "f464b24fc39322e44b38aa78f5edd27bd1441696"),
        ("timestamp", "1714036504"),
        ("nonce", "1514711492"),
        ("echostr", "4375120948345356249"),
    ];
    let r = h1.client.get(h1.webhook_url()).query(&q).send().await.unwrap();
    assert_eq!(status_and_body(r).await, (200, "4375120948345356249".into()));

    let bad = [
        ("signature", "f464b24fc39322e44b38aa78f5edd27bd1441697"),
        ("timestamp", "1714036504"),
        ("nonce", "1514711492"),
        ("echostr", "4375120948345356249"),
    ];
    let r = h1.client.get(h1.webhook_url()).query(&bad).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = h1.client.get(h1.webhook_url()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn plaintext_push_is_acknowledged_and_reaches_the_sink() {
    let sink = Arc::new(ScriptedSink::default());
    let app = spawn_app_with(test_config(), sink.clone(), None).await;
    let r = app.push_plain(&fixture(F01)).await;
    assert_eq!(status_and_body(r).await, (200, "success".into()));
    let seen = sink.seen.lock();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].mode, Mode::Plain);
    assert_eq!(seen[0].key, None);
    assert_eq!(seen[0].push.from, USER);
    assert_eq!(
        seen[0].push.dedupe_key().as_str(),
        format!("m:{}:24345678901234567:{USER}:{ACCOUNT}", seen[0].push.create_time)
    );
}

#[tokio::test]
async fn every_fixture_is_acknowledged_in_every_mode() {
    let sink = Arc::new(ScriptedSink::default());
    let app = spawn_app_with(test_config(), sink.clone(), None).await;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wechat/pushes");
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".xml") && !n.starts_with("X05"))
        .collect();
    names.sort();
    assert_eq!(names.len(), 34);
    for name in &names {
        let xml = fixture(&format!("wechat/pushes/{name}"));
        for mode in [Mode::Plain, Mode::Safe, Mode::Compatible] {
            let r = match mode {
                Mode::Plain => app.push_plain(&xml).await,
                Mode::Safe => app.push_safe(&xml).await,
                Mode::Compatible => app.push_compatible(&xml).await,
            };
            assert_eq!(status_and_body(r).await, (200, "success".into()), "{name} {mode:?}");
            let last = sink.seen.lock().last().cloned().unwrap();
            assert_eq!(last.mode, mode, "{name}");
            assert_eq!(last.push, kefu::wechat::inbound::parse(xml.as_bytes()).unwrap(), "{name}");
        }
    }
    assert_eq!(sink.seen.lock().len(), names.len() * 3);
}

/// E3 exactly as EasyWeChat's test sends it (an old timestamp: freshness off).
#[tokio::test]
async fn safe_mode_vector_e3() {
    let mut cfg = test_config();
    cfg.server.max_clock_skew_secs = 0;
    let sink = Arc::new(ScriptedSink::default());
    let app = spawn_app_with(cfg, sink.clone(), None).await;
    let v: toml::Table = fixture("wechat/vectors.toml").parse().unwrap();
    let e3 = &v["e3"];
    let s = |k: &str| e3[k].as_str().unwrap().to_string();
    let q = vec![
        ("signature".to_string(), s("signature")),
        ("timestamp".into(), s("timestamp")),
        ("nonce".into(), s("nonce")),
        ("encrypt_type".into(), "aes".into()),
        ("msg_signature".into(), s("msg_signature")),
    ];
    let body = format!(
        "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
        s("to_user"),
        s("encrypt")
    );
    assert_eq!(status_and_body(app.post(&q, body.clone()).await).await, (200, "success".into()));
    let seen = sink.seen.lock().last().cloned().unwrap();
    assert_eq!(seen.mode, Mode::Safe);
    assert_eq!(seen.xml, s("msg"));
    assert!(matches!(&seen.push.kind, PushKind::Text { content, .. } if content == "hello"));

    let mut bad = q.clone();
    bad[4].1 = s("bad_msg_signature");
    assert_eq!(app.post(&bad, body).await.status().as_u16(), 401);
}

#[tokio::test]
async fn replies_are_plain_or_sealed_per_mode() {
    let sink =
        Arc::new(ScriptedSink { reply: text_reply("您好 ]]> 欢迎"), ..Default::default() });
    let app = spawn_app_with(test_config(), sink, None).await;
    let xml = fixture(F01);

    let r = app.push_plain(&xml).await;
    assert_eq!(r.headers()["content-type"].to_str().unwrap(), "application/xml; charset=utf-8");
    let plain = r.text().await.unwrap();
    let head = format!(
        "<xml><ToUserName><![CDATA[{USER}]]></ToUserName><FromUserName><![CDATA[{ACCOUNT}]]></FromUserName><CreateTime>"
    );
    assert!(plain.starts_with(&head), "{plain}");
    assert!(plain.ends_with(
        "</CreateTime><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[您好 ]]]]><![CDATA[> 欢迎]]></Content></xml>"
    ));
    let created: i64 = between(&plain, "<CreateTime>", "</CreateTime>").parse().unwrap();
    assert!((created - now_secs()).abs() < 5);

    for r in [app.push_safe(&xml).await, app.push_compatible(&xml).await] {
        let (status, body) = status_and_body(r).await;
        assert_eq!(status, 200);
        assert!(body.starts_with("<xml><Encrypt><![CDATA["), "{body}");
        assert_eq!(between(&body, "<Nonce><![CDATA[", "]]></Nonce>"), "n-aes");
        let inner = app.open_reply(&body, &k1());
        assert!(inner.starts_with(&head), "{inner}");
        assert!(inner.contains("<Content><![CDATA[您好 ]]]]><![CDATA[> 欢迎]]></Content>"));
    }
}

#[tokio::test]
async fn transfer_reply_and_non_passive_reply() {
    let sink = Arc::new(ScriptedSink {
        reply: Some(PassiveReply::Transfer { kf_account: Some("kf01@gh_account".into()) }),
        ..Default::default()
    });
    let app = spawn_app_with(test_config(), sink, None).await;
    let body = app.push_plain(&fixture(F01)).await.text().await.unwrap();
    assert!(body.ends_with(
        "<MsgType><![CDATA[transfer_customer_service]]></MsgType><TransInfo><KfAccount><![CDATA[kf01@gh_account]]></KfAccount></TransInfo></xml>"
    ), "{body}");

    // A kind WeChat cannot take passively is dropped (logged), and WeChat still gets success.
    let sink = Arc::new(ScriptedSink {
        reply: Some(PassiveReply::Message { message: OutMessage::WxCard { card_id: "c".into() } }),
        ..Default::default()
    });
    let app = spawn_app_with(test_config(), sink, None).await;
    assert_eq!(status_and_body(app.push_plain(&fixture(F01)).await).await, (200, "success".into()));
}

#[tokio::test]
async fn previous_key_is_accepted_and_used_for_the_reply() {
    let e5_key = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    let mut cfg = test_config();
    cfg.wechat.encoding_aes_key = kefu::model::Secret::new(e5_key);
    cfg.wechat.previous_encoding_aes_key = kefu::model::Secret::new(AES_KEY);
    let sink = Arc::new(ScriptedSink { reply: text_reply("rotated"), ..Default::default() });
    let app = spawn_app_with(cfg, sink.clone(), None).await;
    // Encrypted with the old key (K1), as WeChat does right after a rotation.
    let (q, body) = encrypted_push(TOKEN, &k1(), APP_ID, &fixture(F01), now_secs(), "n1", false);
    let (status, answer) = status_and_body(app.post(&q, body).await).await;
    assert_eq!(status, 200);
    assert_eq!(sink.seen.lock()[0].key, Some(KeyUsed::Previous));
    assert!(app.open_reply(&answer, &k1()).contains("rotated"));
    let new = AesKey::from_encoding_aes_key(e5_key).unwrap();
    assert!(new.decrypt(between(&answer, "<Encrypt><![CDATA[", "]]></Encrypt>")).is_err());
}

#[tokio::test]
async fn sink_failure_is_503_so_wechat_redelivers() {
    let sink = Arc::new(ScriptedSink { fail: true, ..Default::default() });
    let app = spawn_app_with(test_config(), sink, None).await;
    assert_eq!(app.push_plain(&fixture(F01)).await.status().as_u16(), 503);
}

#[tokio::test]
async fn authentication_refusals_are_401() {
    let app = spawn_app(test_config()).await;
    let xml = fixture(F01);
    let now = now_secs();

    // Bad signature, and no signature at all.
    let mut q = signed_query(TOKEN, now, "n1");
    q[0].1 = "0".repeat(40);
    assert_eq!(status_and_body(app.post(&q, xml.clone()).await).await.0, 401);
    assert_eq!(app.post(&[], xml.clone()).await.status().as_u16(), 401);

    // Stale and future beyond max_clock_skew_secs (300).
    for ts in [now - 400, now + 400] {
        let q = signed_query(TOKEN, ts, "n1");
        assert_eq!(app.post(&q, xml.clone()).await.status().as_u16(), 401, "{ts}");
    }
    // Within the skew both ways.
    for ts in [now - 200, now + 200] {
        let q = signed_query(TOKEN, ts, "n1");
        assert_eq!(app.post(&q, xml.clone()).await.status().as_u16(), 200, "{ts}");
    }

    // Bad msg_signature.
    let (mut q, body) = encrypted_push(TOKEN, &k1(), APP_ID, &xml, now, "n1", false);
    q.last_mut().unwrap().1 = "1".repeat(40);
    assert_eq!(app.post(&q, body).await.status().as_u16(), 401);

    // Missing msg_signature.
    let (mut q, body) = encrypted_push(TOKEN, &k1(), APP_ID, &xml, now, "n1", false);
    q.pop();
    assert_eq!(app.post(&q, body).await.status().as_u16(), 401);

    // Encrypted for another appid.
    let (q, body) = encrypted_push(TOKEN, &k1(), "wx0000000000000000", &xml, now, "n1", false);
    let (status, text) = status_and_body(app.post(&q, body).await).await;
    assert_eq!(status, 401);
    assert!(text.contains("wechat.app_id"), "{text}");
}

#[tokio::test]
async fn plaintext_under_require_encryption_is_403() {
    let mut cfg = test_config();
    cfg.wechat.require_encryption = true;
    let app = spawn_app(cfg).await;
    let xml = fixture(F01);
    assert_eq!(app.push_plain(&xml).await.status().as_u16(), 403);
    assert_eq!(app.push_safe(&xml).await.status().as_u16(), 200);
}

#[tokio::test]
async fn malformed_bodies_are_400() {
    let app = spawn_app(test_config()).await;
    let ok = fixture(F01);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("not xml", b"hello".to_vec()),
        ("unclosed", b"<xml><ToUserName>".to_vec()),
        ("invalid utf-8", b"<xml><Content>\xff\xfe</Content></xml>".to_vec()),
        (
            "doctype",
            format!("<!DOCTYPE xml [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>{ok}").into_bytes(),
        ),
        ("entity", ok.replace("<![CDATA[你好，我想查询订单 42]]>", "&e;").into_bytes()),
        (
            "no ToUserName",
            ok.replace("<ToUserName><![CDATA[gh_4d00ed8d6399]]></ToUserName>", "").into_bytes(),
        ),
        (
            "no FromUserName",
            ok.replace(&format!("<FromUserName><![CDATA[{USER}]]></FromUserName>"), "")
                .into_bytes(),
        ),
        ("no CreateTime", ok.replace("<CreateTime>1700000001</CreateTime>", "").into_bytes()),
        ("no MsgType", ok.replace("<MsgType><![CDATA[text]]></MsgType>", "").into_bytes()),
    ];
    for (name, body) in cases {
        let q = signed_query(TOKEN, now_secs(), "n1");
        let (status, text) = status_and_body(app.post(&q, body).await).await;
        assert_eq!(status, 400, "{name}: {text}");
    }

    // Encrypted bodies that do not decode: the msg_signature is valid, the content is not.
    let now = now_secs();
    let e3: toml::Table = fixture("wechat/vectors.toml").parse().unwrap();
    let e3 = e3["e3"]["encrypt"].as_str().unwrap().to_string();
    let raw = base64_decode(&e3);
    let truncated = base64_encode(&raw[..raw.len() - 16]); // padding no longer valid
    for (name, encrypt) in [
        ("bad base64", "!!!not-base64!!!".to_string()),
        ("bad length", "AAAAAAAA".to_string()),
        ("bad padding", truncated),
    ] {
        let ts = now.to_string();
        let mut q = signed_query(TOKEN, now, "n1");
        q.push(("encrypt_type".into(), "aes".into()));
        q.push((
            "msg_signature".into(),
            kefu::wechat::signature::sign(&[TOKEN, &ts, "n1", &encrypt]),
        ));
        let body =
            format!("<xml><ToUserName>{ACCOUNT}</ToUserName><Encrypt>{encrypt}</Encrypt></xml>");
        let (status, text) = status_and_body(app.post(&q, body).await).await;
        assert_eq!(status, 400, "{name}: {text}");
    }
    // An encrypted push whose decrypted XML lacks MsgType.
    let inner = ok.replace("<MsgType><![CDATA[text]]></MsgType>", "");
    let (q, body) = encrypted_push(TOKEN, &k1(), APP_ID, &inner, now, "n1", false);
    assert_eq!(app.post(&q, body).await.status().as_u16(), 400);
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

#[tokio::test]
async fn oversized_bodies_are_413_declared_or_chunked() {
    let mut cfg = test_config();
    cfg.server.max_body_bytes = 1024;
    let app = spawn_app(cfg).await;
    let q = signed_query(TOKEN, now_secs(), "n1");
    let big = format!("<xml>{}</xml>", "a".repeat(2000));
    assert_eq!(app.post(&q, big).await.status().as_u16(), 413);
    // Exactly at the limit is read (and refused only as a malformed push).
    let at_limit = format!("<xml>{}</xml>", "a".repeat(1024 - 11));
    assert_eq!(at_limit.len(), 1024);
    assert_eq!(app.post(&q, at_limit).await.status().as_u16(), 400);

    // Chunked: no Content-Length, so the limit is enforced while reading.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    let qs = q.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let head = format!(
        "POST /wechat?{qs} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for _ in 0..3 {
        // The server may answer and close before the last chunk: write errors are expected.
        if s.write_all(format!("3e8\r\n{}\r\n", "b".repeat(1000)).as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
}

#[tokio::test]
async fn kefu_push_command_drives_a_deployment() {
    use kefu::cmd::common::PushInput;
    use kefu::cmd::push::PushArgs;
    let sink = Arc::new(ScriptedSink { reply: text_reply("收到"), ..Default::default() });
    let app = spawn_app_with(test_config(), sink.clone(), None).await;
    let args = |encrypt: bool, text: Option<&str>, event: Option<&str>| PushArgs {
        url: app.webhook_url(),
        from: USER.into(),
        encrypt,
        input: PushInput { text: text.map(Into::into), event: event.map(Into::into), xml: None },
        key: event.map(|_| "CONTACT_US".to_string()),
    };
    let out = kefu::cmd::push::send(&app.cfg, &args(false, Some("你好"), None)).await.unwrap();
    assert_eq!(out.status, 200);
    assert!(!out.decrypted);
    assert!(out.body.contains("<Content><![CDATA[收到]]></Content>"), "{}", out.body);

    let out = kefu::cmd::push::send(&app.cfg, &args(true, None, Some("CLICK"))).await.unwrap();
    assert_eq!(out.status, 200);
    assert!(out.decrypted);
    assert!(out.body.contains("<Content><![CDATA[收到]]></Content>"), "{}", out.body);

    let seen = sink.seen.lock().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].mode, Mode::Plain);
    assert_eq!(kefu::rules::input::of_push(&seen[0].push).text.as_deref(), Some("你好"));
    assert_eq!(seen[1].mode, Mode::Safe);
    assert_eq!(seen[1].push.event(), Some("CLICK"));
    assert_eq!(seen[1].push.event_key().as_deref(), Some("CONTACT_US"));

    // A wrong token on the client side: the server's 401 comes back as a failure.
    let mut cfg = app.cfg.clone();
    cfg.wechat.token = kefu::model::Secret::new("wrong");
    let e = kefu::cmd::push::run(&cfg, &args(false, Some("x"), None)).await.unwrap_err();
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("401"), "{e}");
}

/// `kefu serve` exits within 10 s of SIGTERM (interface §6.12).
#[tokio::test]
async fn serve_binary_stops_on_sigterm() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kefu"))
        .arg("serve")
        .current_dir(dir.path())
        .env("KEFU_WECHAT_TOKEN", TOKEN)
        .env("KEFU_SERVER_LISTEN", "127.0.0.1:0")
        .env("KEFU_STATE_DIR", dir.path().join("state"))
        .env("KEFU_RULES_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/rules"))
        .env("KEFU_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(a) = v.get("address").and_then(|a| a.as_str())
            {
                let _ = tx.send(a.to_string());
            }
        }
    });
    let addr = rx.recv_timeout(std::time::Duration::from_secs(30)).expect("listening line");
    let health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);

    let pid = child.id() as libc::pid_t;
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(10), "still running after 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
