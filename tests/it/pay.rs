//! `POST /pay/notify/v2|v3` over HTTP (actix test service) with a recording in-memory
//! `PaymentSink`: genuine notifications reach the sink once, replays are acknowledged but not
//! new, anything tampered is refused with the FAIL answer and never reaches the sink.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use actix_web::test as awt;
use actix_web::{App, http::StatusCode, web};
use kefu::config::PayConfig;
use kefu::http::pay::configure;
use kefu::model::{ManualClock, OpenId, Secret, SharedClock};
use kefu::pay::v3::build;
use kefu::pay::{Payment, PaymentSource, v2};
use kefu::pipeline::PaymentSink;
use parking_lot::Mutex;
use rsa::RsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::json;

const V2_KEY: &str = "192006250b4c09247ec02edce69f6a2d";
const V3_KEY: &str = "0123456789abcdef0123456789ABCDEF";
const NOW_MS: i64 = 1_700_000_000_000;
const NOW: i64 = NOW_MS / 1000;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pay").join(name)
}
fn read(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).expect("fixture")
}

/// Records what it is given and dedupes by transaction id, like the real sink.
#[derive(Default)]
struct RecordingSink {
    calls: Mutex<Vec<(Payment, i64)>>,
    seen: Mutex<HashSet<String>>,
    fail: AtomicBool,
}

#[async_trait::async_trait]
impl PaymentSink for RecordingSink {
    async fn on_payment(&self, payment: &Payment, received_at_ms: i64) -> anyhow::Result<bool> {
        if self.fail.load(Ordering::SeqCst) {
            anyhow::bail!("store unavailable");
        }
        self.calls.lock().push((payment.clone(), received_at_ms));
        Ok(self.seen.lock().insert(payment.transaction_id.clone()))
    }
}

impl RecordingSink {
    fn payments(&self) -> Vec<Payment> {
        self.calls.lock().iter().map(|(p, _)| p.clone()).collect()
    }
}

fn pay_cfg(v2: bool, v3: bool) -> PayConfig {
    PayConfig {
        v2_api_key: Secret::new(if v2 { V2_KEY } else { "" }),
        v2_sign_type: v2::V2SignType::Auto,
        v3_api_key: Secret::new(if v3 { V3_KEY } else { "" }),
        v3_platform_public_key: v3.then(|| fixture("test_platform_pub.pem")),
    }
}

/// An initialised test service with the notify routes of `$cfg`, the sink and a manual clock.
macro_rules! service {
    ($cfg:expr, $sink:expr) => {{
        let sink: Arc<dyn PaymentSink> = $sink.clone();
        let clock: SharedClock = Arc::new(ManualClock::new(NOW_MS));
        let cfg: PayConfig = $cfg;
        awt::init_service(
            App::new()
                .app_data(web::Data::new(sink))
                .app_data(web::Data::new(clock))
                .configure(|c| configure(c, &cfg, 300).expect("pay routes configure")),
        )
        .await
    }};
}

fn v2_req(body: impl Into<String>) -> awt::TestRequest {
    awt::TestRequest::post()
        .uri("/pay/notify/v2")
        .insert_header(("content-type", "text/xml"))
        .set_payload(body.into())
}

fn private_key() -> RsaPrivateKey {
    RsaPrivateKey::from_pkcs8_pem(&read("test_platform_key.pem")).expect("fixture key")
}

fn transaction(id: &str, total: u64) -> serde_json::Value {
    json!({
        "appid": "wxd930ea5d5a258f4f", "mchid": "1230000109", "out_trade_no": "order-9",
        "transaction_id": id, "trade_type": "JSAPI", "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功", "bank_type": "CMC", "attach": "",
        "success_time": "2023-11-15T06:13:20+08:00",
        "payer": { "openid": "oUpF8uMEb4qRXf22hE3X68TekukE" },
        "amount": { "total": total, "payer_total": total, "currency": "CNY", "payer_currency": "CNY" }
    })
}

/// A v3 request as WeChat Pay would send it, signed by `key` at time `ts`.
fn v3_req(key: &RsaPrivateKey, body: &[u8], ts: i64) -> awt::TestRequest {
    let ts = ts.to_string();
    let nonce = "593BEC0C930BF1AFEB40B4A08C8FB242";
    awt::TestRequest::post()
        .uri("/pay/notify/v3")
        .insert_header(("content-type", "application/json"))
        .insert_header(("Wechatpay-Timestamp", ts.as_str()))
        .insert_header(("Wechatpay-Nonce", nonce))
        .insert_header(("Wechatpay-Serial", "PUB_KEY_ID_0114232134912410000000000000"))
        .insert_header(("Wechatpay-Signature", build::signature(key, &ts, nonce, body)))
        .set_payload(body.to_vec())
}

fn v3_body(tx: &serde_json::Value) -> Vec<u8> {
    build::body(V3_KEY.as_bytes(), tx, "fdasflkja484", "transaction").expect("build body")
}

/// Sends `$req` to `$app`: (status, content type, body).
macro_rules! call {
    ($app:expr, $req:expr) => {{
        let resp = awt::call_service($app, $req.to_request()).await;
        let status = resp.status();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let body = String::from_utf8(awt::read_body(resp).await.to_vec()).expect("utf-8 answer");
        (status, ct, body)
    }};
}

#[test]
fn official_sign_vectors_from_fixture() {
    let v: serde_json::Value = serde_json::from_str(&read("sign_vectors.json")).unwrap();
    let key = Secret::new(v["key"].as_str().unwrap());
    let params: std::collections::BTreeMap<String, String> = v["official"]["params"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, x)| (k.clone(), x.as_str().unwrap().to_string()))
        .collect();
    assert_eq!(v2::sign(&params, &key, v2::SignType::Md5), v["official"]["md5"]);
    assert_eq!(v2::sign(&params, &key, v2::SignType::HmacSha256), v["official"]["hmac_sha256"]);
    for (file, sign, st) in [
        ("md5_file", "md5", v2::SignType::Md5),
        ("hmac_sha256_file", "hmac_sha256", v2::SignType::HmacSha256),
    ] {
        let fields = v2::parse_fields(read(v["n1"][file].as_str().unwrap()).as_bytes()).unwrap();
        assert_eq!(v2::sign(&fields, &key, st), v["n1"][sign]);
        assert_eq!(fields["sign"], v["n1"][sign]);
    }
}

#[actix_web::test]
async fn v2_n1_md5_and_hmac_are_recorded_once_and_replays_acknowledged() {
    let sink = Arc::new(RecordingSink::default());
    let app = service!(pay_cfg(true, false), sink);
    for name in ["n1.xml", "n1_hmac_sha256.xml"] {
        let (status, ct, body) = call!(&app, v2_req(read(name)));
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(body, v2::SUCCESS_ANSWER, "{name}");
        assert_eq!(ct, "text/xml; charset=utf-8");
    }
    // Both carry the same transaction id: one new payment, one replay.
    let calls = sink.calls.lock().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(sink.seen.lock().len(), 1);
    let (p, at) = &calls[0];
    assert_eq!(*at, NOW_MS);
    assert_eq!(p.transaction_id, "1004400740201409030005092168");
    assert_eq!(p.openid, OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap());
    assert_eq!((p.amount_fen, p.amount_yuan().as_str()), (1, "0.01"));
    assert_eq!(p.out_trade_no, "1409811653");
    assert_eq!(p.source, PaymentSource::V2);
    let r = kefu::rules::input::of_payment(p);
    assert_eq!((r.msg_type.as_str(), r.event.as_deref()), ("event", Some("payment")));
}

#[actix_web::test]
async fn v2_tampered_or_wrong_key_is_refused_and_records_nothing() {
    let sink = Arc::new(RecordingSink::default());
    let app = service!(pay_cfg(true, false), sink);
    let n1 = read("n1.xml");
    let fail_sig = v2::fail_answer("invalid signature");
    let cases = [
        (
            "changed amount",
            n1.replace("<total_fee>1</total_fee>", "<total_fee>9999</total_fee>"),
            StatusCode::UNAUTHORIZED,
            fail_sig.clone(),
        ),
        (
            "changed payer",
            n1.replace("oUpF8uMEb4qRXf22hE3X68TekukE", "oAttackerAttackerAttacker00"),
            StatusCode::UNAUTHORIZED,
            fail_sig.clone(),
        ),
        (
            "hmac relabelled md5",
            read("n1_hmac_sha256.xml").replace("HMAC-SHA256", "MD5"),
            StatusCode::UNAUTHORIZED,
            v2::fail_answer("sign type mismatch"),
        ),
        (
            "unsigned",
            "<xml><return_code>SUCCESS</return_code></xml>".into(),
            StatusCode::UNAUTHORIZED,
            v2::fail_answer("missing sign"),
        ),
        (
            "doctype",
            format!("<!DOCTYPE xml [<!ENTITY x \"y\">]>{n1}"),
            StatusCode::BAD_REQUEST,
            v2::fail_answer("malformed body"),
        ),
        ("not xml", "{\"a\":1}".into(), StatusCode::BAD_REQUEST, v2::fail_answer("malformed body")),
        ("empty", String::new(), StatusCode::BAD_REQUEST, v2::fail_answer("malformed body")),
    ];
    for (what, body, want_status, want_body) in cases {
        let (status, _, got) = call!(&app, v2_req(body));
        assert_eq!(status, want_status, "{what}");
        assert_eq!(got, want_body, "{what}");
    }
    let (status, _, body) = call!(&app, v2_req(" ".repeat(kefu::pay::MAX_NOTIFY_BYTES + 1)));
    assert_eq!((status, body), (StatusCode::PAYLOAD_TOO_LARGE, v2::fail_answer("body too large")));

    let wrong = Arc::new(RecordingSink::default());
    let mut cfg = pay_cfg(true, false);
    cfg.v2_api_key = Secret::new("ffffffffffffffffffffffffffffffff");
    let app2 = service!(cfg, wrong);
    let (status, _, got) = call!(&app2, v2_req(n1));
    assert_eq!((status, got), (StatusCode::UNAUTHORIZED, fail_sig));

    assert!(sink.payments().is_empty());
    assert!(wrong.payments().is_empty());
}

/// N1's fields signed with `st` under `key`, with or without a `sign_type` element.
fn n1_signed(key: &str, st: v2::SignType, with_sign_type: bool) -> String {
    let mut f = v2::parse_fields(read("n1.xml").as_bytes()).unwrap();
    f.remove("sign");
    if with_sign_type {
        f.insert("sign_type".into(), st.as_str().into());
    }
    let sign = v2::sign(&f, &Secret::new(key), st);
    f.insert("sign".into(), sign);
    std::iter::once("<xml>".to_string())
        .chain(f.iter().map(|(k, v)| format!("<{k}><![CDATA[{v}]]></{k}>")))
        .chain(std::iter::once("</xml>".to_string()))
        .collect()
}

/// Issue 13 item 2: WeChat Pay signs notifications of HMAC-SHA256 orders with HMAC-SHA256 and
/// may leave `sign_type` out; under the default `pay.v2_sign_type = "auto"` the sign's length
/// decides, so such a notification verifies and reaches the sink, MD5 ones still do, and a
/// notification signed with another key is still refused.
#[actix_web::test]
async fn v2_hmac_without_sign_type_is_accepted_by_default() {
    let sink = Arc::new(RecordingSink::default());
    let app = service!(pay_cfg(true, false), sink);
    let hmac = n1_signed(V2_KEY, v2::SignType::HmacSha256, false);
    assert!(!hmac.contains("sign_type"), "{hmac}");
    let (status, _, body) = call!(&app, v2_req(hmac));
    assert_eq!((status, body.as_str()), (StatusCode::OK, v2::SUCCESS_ANSWER));
    assert_eq!(sink.payments().len(), 1);
    assert_eq!(sink.payments()[0].transaction_id, "1004400740201409030005092168");

    // MD5 without sign_type (fixture N1) still verifies.
    let (status, _, body) = call!(&app, v2_req(read("n1.xml")));
    assert_eq!((status, body.as_str()), (StatusCode::OK, v2::SUCCESS_ANSWER));
    assert_eq!(sink.payments().len(), 2);

    // The wrong key: FAIL, whichever algorithm.
    for st in [v2::SignType::HmacSha256, v2::SignType::Md5] {
        let forged = n1_signed("ffffffffffffffffffffffffffffffff", st, false);
        let (status, _, body) = call!(&app, v2_req(forged));
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{st:?}");
        assert_eq!(body, v2::fail_answer("invalid signature"), "{st:?}");
    }
    assert_eq!(sink.payments().len(), 2);
}

/// With `pay.v2_sign_type` fixed, a sign of the other kind or a `sign_type` element naming the
/// other algorithm is refused with `sign type mismatch` and records nothing; the configured
/// kind verifies.
#[actix_web::test]
async fn v2_fixed_sign_type_refuses_the_other_kind() {
    use v2::SignType::{HmacSha256, Md5};
    for (fixed, other) in [(Md5, HmacSha256), (HmacSha256, Md5)] {
        let sink = Arc::new(RecordingSink::default());
        let mut cfg = pay_cfg(true, false);
        cfg.v2_sign_type = v2::V2SignType::Fixed(fixed);
        let app = service!(cfg, sink);
        let mismatch = v2::fail_answer("sign type mismatch");
        for with_sign_type in [false, true] {
            let body = n1_signed(V2_KEY, other, with_sign_type);
            let (status, _, answer) = call!(&app, v2_req(body));
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{fixed:?} {with_sign_type}");
            assert_eq!(answer, mismatch, "{fixed:?} {with_sign_type}");
        }
        // A correct sign of the configured kind under a sign_type that names the other one.
        let mut relabelled = n1_signed(V2_KEY, fixed, true);
        relabelled = relabelled.replace(
            &format!("<sign_type><![CDATA[{}]]>", fixed.as_str()),
            &format!("<sign_type><![CDATA[{}]]>", other.as_str()),
        );
        let (status, _, answer) = call!(&app, v2_req(relabelled));
        assert_eq!((status, answer), (StatusCode::UNAUTHORIZED, mismatch.clone()), "{fixed:?}");
        assert!(sink.payments().is_empty(), "{fixed:?}");
        for with_sign_type in [false, true] {
            let (status, _, answer) = call!(&app, v2_req(n1_signed(V2_KEY, fixed, with_sign_type)));
            assert_eq!(
                (status, answer.as_str()),
                (StatusCode::OK, v2::SUCCESS_ANSWER),
                "{fixed:?}"
            );
        }
        assert_eq!(sink.payments().len(), 2, "{fixed:?}");
    }
}

#[actix_web::test]
async fn v2_signed_business_failure_is_acknowledged_not_recorded() {
    let sink = Arc::new(RecordingSink::default());
    let app = service!(pay_cfg(true, false), sink);
    let mut f = v2::parse_fields(read("n1.xml").as_bytes()).unwrap();
    f.insert("result_code".into(), "FAIL".into());
    f.insert("err_code".into(), "SYSTEMERROR".into());
    let sign = v2::sign(&f, &Secret::new(V2_KEY), v2::SignType::Md5);
    f.insert("sign".into(), sign);
    let xml: String = std::iter::once("<xml>".to_string())
        .chain(f.iter().map(|(k, v)| format!("<{k}><![CDATA[{v}]]></{k}>")))
        .chain(std::iter::once("</xml>".to_string()))
        .collect();
    let (status, _, body) = call!(&app, v2_req(xml));
    assert_eq!((status, body.as_str()), (StatusCode::OK, v2::SUCCESS_ANSWER));
    assert!(sink.payments().is_empty());
}

#[actix_web::test]
async fn sink_failure_is_a_500_so_wechat_pay_retries() {
    let sink = Arc::new(RecordingSink::default());
    sink.fail.store(true, Ordering::SeqCst);
    let app = service!(pay_cfg(true, true), sink);
    let (status, _, body) = call!(&app, v2_req(read("n1.xml")));
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, v2::fail_answer("try again later"));
    let key = private_key();
    let v3 = v3_body(&transaction("4200000001", 500));
    let (status, _, body) = call!(&app, v3_req(&key, &v3, NOW));
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body, r#"{"code":"FAIL","message":"try again later"}"#);

    // The retry after the store recovers is recorded.
    sink.fail.store(false, Ordering::SeqCst);
    let (status, _, _) = call!(&app, v2_req(read("n1.xml")));
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = call!(&app, v3_req(&key, &v3, NOW));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sink.seen.lock().len(), 2);
}

#[actix_web::test]
async fn v3_genuine_is_recorded_once_and_replay_acknowledged() {
    let sink = Arc::new(RecordingSink::default());
    let app = service!(pay_cfg(false, true), sink);
    let key = private_key();
    let body = v3_body(&transaction("4200000002", 1990));
    for _ in 0..2 {
        let (status, ct, answer) = call!(&app, v3_req(&key, &body, NOW - 10));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(answer, r#"{"code":"SUCCESS","message":"成功"}"#);
        assert_eq!(ct, "application/json");
    }
    let calls = sink.calls.lock().clone();
    assert_eq!(calls.len(), 2);
    assert_eq!(sink.seen.lock().len(), 1);
    let p = &calls[0].0;
    assert_eq!(p.transaction_id, "4200000002");
    assert_eq!((p.amount_fen, p.amount_yuan().as_str()), (1990, "19.90"));
    assert_eq!(p.attach, None, "an empty attach is no attach");
    assert_eq!(p.source, PaymentSource::V3);
}

#[actix_web::test]
async fn v3_tampering_is_refused_and_records_nothing() {
    let sink = Arc::new(RecordingSink::default());
    let app = service!(pay_cfg(false, true), sink);
    let key = private_key();
    let body = v3_body(&transaction("4200000003", 1));
    let bad_sig = r#"{"code":"FAIL","message":"invalid signature"}"#;

    // Changed amount after signing.
    let forged = v3_body(&transaction("4200000003", 100_000));
    let req = v3_req(&key, &body, NOW).set_payload(forged);
    assert_eq!(call!(&app, req).0, StatusCode::UNAUTHORIZED);

    // Signed by another key.
    let other = RsaPrivateKey::new(&mut rand::thread_rng(), 1024).expect("keygen");
    let (status, _, answer) = call!(&app, v3_req(&other, &body, NOW));
    assert_eq!((status, answer.as_str()), (StatusCode::UNAUTHORIZED, bad_sig));

    // A corrupted signature.
    let req = v3_req(&key, &body, NOW).insert_header(("Wechatpay-Signature", "AAAA"));
    let (status, _, answer) = call!(&app, req);
    assert_eq!((status, answer.as_str()), (StatusCode::UNAUTHORIZED, bad_sig));

    // Stale and future timestamps (max 300 s), genuinely signed.
    for ts in [NOW - 301, NOW + 301] {
        let (status, _, answer) = call!(&app, v3_req(&key, &body, ts));
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{ts}");
        assert_eq!(answer, r#"{"code":"FAIL","message":"timestamp out of range"}"#);
    }

    // Bad GCM tag, re-signed so only decryption can notice.
    let mut env: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut ct =
        base64::Engine::decode(&b64, env["resource"]["ciphertext"].as_str().unwrap()).unwrap();
    let last = ct.len() - 1; // the 16-byte tag ends the ciphertext
    ct[last] ^= 0x01;
    let flipped = base64::Engine::encode(&b64, &ct);
    env["resource"]["ciphertext"] = json!(flipped);
    let b = env.to_string().into_bytes();
    let (status, _, answer) = call!(&app, v3_req(&key, &b, NOW));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer, r#"{"code":"FAIL","message":"resource does not decrypt"}"#);

    // No signature headers at all.
    let req = awt::TestRequest::post().uri("/pay/notify/v3").set_payload(body.clone());
    let (status, _, answer) = call!(&app, req);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer, r#"{"code":"FAIL","message":"missing Wechatpay header"}"#);

    assert!(sink.payments().is_empty());
}

#[actix_web::test]
async fn v3_with_a_key_pair_generated_here() {
    let started = Instant::now();
    let key = RsaPrivateKey::new(&mut rand::thread_rng(), 2048).expect("keygen");
    eprintln!("RSA-2048 keygen took {:?}", started.elapsed());
    let dir = tempfile::tempdir().unwrap();
    let pub_path = dir.path().join("wechatpay_pub.pem");
    std::fs::write(&pub_path, key.to_public_key().to_public_key_pem(LineEnding::LF).unwrap())
        .unwrap();
    let mut cfg = pay_cfg(false, true);
    cfg.v3_platform_public_key = Some(pub_path);
    let sink = Arc::new(RecordingSink::default());
    let app = service!(cfg, sink);
    let body = v3_body(&transaction("4200000004", 1));
    let (status, _, _) = call!(&app, v3_req(&key, &body, NOW));
    assert_eq!(status, StatusCode::OK);
    // The fixture key is not the configured one now.
    let (status, _, _) = call!(&app, v3_req(&private_key(), &body, NOW));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(sink.seen.lock().len(), 1);
}

#[actix_web::test]
async fn routes_exist_only_when_configured() {
    let sink = Arc::new(RecordingSink::default());
    let none = service!(pay_cfg(false, false), sink);
    for uri in ["/pay/notify/v2", "/pay/notify/v3"] {
        let resp = awt::call_service(&none, awt::TestRequest::post().uri(uri).to_request()).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{uri}");
    }
    let v2_only = service!(pay_cfg(true, false), sink);
    let resp =
        awt::call_service(&v2_only, awt::TestRequest::post().uri("/pay/notify/v3").to_request())
            .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // GET is not a notification.
    let resp =
        awt::call_service(&v2_only, awt::TestRequest::get().uri("/pay/notify/v2").to_request())
            .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
}

/// Runs `configure` alone and returns its error text.
fn configure_error(cfg: PayConfig) -> String {
    let mut out = Ok(());
    let _app = App::new().configure(|c| out = configure(c, &cfg, 300));
    format!("{:#}", out.expect_err("configure should fail"))
}

#[test]
fn bad_platform_key_is_a_startup_error_naming_the_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = pay_cfg(false, true);

    cfg.v3_platform_public_key = Some(dir.path().join("missing.pem"));
    let e = configure_error(cfg.clone());
    assert!(e.contains("`pay.v3_platform_public_key`") && e.contains("missing.pem"), "{e}");

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
        .unwrap();
    cfg.v3_platform_public_key = Some(garbage);
    let e = configure_error(cfg.clone());
    assert!(e.contains("`pay.v3_platform_public_key`") && e.contains("BEGIN PUBLIC KEY"), "{e}");

    cfg.v3_platform_public_key = Some(fixture("test_platform_key.pem"));
    let e = configure_error(cfg.clone());
    assert!(e.contains("private key"), "{e}");

    let mut half = pay_cfg(false, true);
    half.v3_api_key = Secret::default();
    let e = configure_error(half);
    assert!(e.contains("`pay.v3_api_key` is not"), "{e}");

    let logged = format!("{:?}", pay_cfg(true, true));
    assert!(!logged.contains(V2_KEY) && !logged.contains(V3_KEY), "{logged}");
}
