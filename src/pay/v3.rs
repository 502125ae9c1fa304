//! WeChat Pay v3 notifications (protocol §3.6): SHA256-with-RSA over
//! `timestamp\nnonce\nbody\n` with the platform public key, timestamp freshness, and the
//! AEAD_AES_256_GCM `resource` decrypted with the APIv3 key into a transaction.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rsa::RsaPublicKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use serde::Deserialize;
use sha2::Sha256;

use super::{MAX_NOTIFY_BYTES, Outcome, PayError, Payment, PaymentSource, check_transaction_id};
use crate::model::{OpenId, Secret};

/// The JSON answer that acknowledges a notification. Current docs also accept an empty 200/204;
/// WxJava sends this body and WeChat Pay accepts it (protocol §3.6).
pub const SUCCESS_ANSWER: &str = r#"{"code":"SUCCESS","message":"成功"}"#;

/// A refusal answer carrying `reason`.
pub fn fail_answer(reason: &str) -> String {
    serde_json::json!({ "code": "FAIL", "message": reason }).to_string()
}

/// Why the configured platform public key is unusable. Names the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// The WeChat Pay platform public key that signs notifications.
#[derive(Clone)]
pub struct PlatformKey {
    key: VerifyingKey<Sha256>,
    bits: usize,
}

impl std::fmt::Debug for PlatformKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PlatformKey(RSA-{})", self.bits)
    }
}

impl PlatformKey {
    /// Reads a PEM RSA public key: SPKI (`BEGIN PUBLIC KEY`, what the merchant platform's
    /// "微信支付公钥" download is) or PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    pub fn from_pem(pem: &str) -> Result<PlatformKey, KeyError> {
        if pem.contains("BEGIN CERTIFICATE") {
            return Err(KeyError(
                "this is an X.509 platform certificate, not a public key: extract the key with \
                 `openssl x509 -in cert.pem -pubkey -noout > wechatpay_pub.pem` and point to that"
                    .into(),
            ));
        }
        if pem.contains("PRIVATE KEY") {
            return Err(KeyError(
                "this is a private key; kefu needs the WeChat Pay platform *public* key (merchant \
                 platform → API安全 → 微信支付公钥), and a private key should not be on this path"
                    .into(),
            ));
        }
        let pem = pem.trim();
        let key = RsaPublicKey::from_public_key_pem(pem)
            .or_else(|_| RsaPublicKey::from_pkcs1_pem(pem))
            .map_err(|e| {
                KeyError(format!(
                    "not a PEM RSA public key (expected `-----BEGIN PUBLIC KEY-----` or \
                     `-----BEGIN RSA PUBLIC KEY-----`): {e}"
                ))
            })?;
        let bits = key.size() * 8;
        if bits < 2048 {
            return Err(KeyError(format!(
                "an RSA-{bits} key is too small; WeChat Pay platform keys are 2048 bits"
            )));
        }
        Ok(PlatformKey { key: VerifyingKey::new(key), bits })
    }

    /// Checks `signature_b64` over `timestamp\nnonce\nbody\n`.
    pub fn verify(
        &self,
        timestamp: &str,
        nonce: &str,
        body: &[u8],
        signature_b64: &str,
    ) -> Result<(), PayError> {
        let bad = || PayError::BadSignature("pay.v3_platform_public_key");
        let raw = B64.decode(signature_b64.trim()).map_err(|_| bad())?;
        let sig = Signature::try_from(raw.as_slice()).map_err(|_| bad())?;
        self.key.verify(&signed_message(timestamp, nonce, body), &sig).map_err(|_| bad())
    }
}

/// `timestamp\nnonce\nbody\n`, the bytes WeChat Pay signs.
pub fn signed_message(timestamp: &str, nonce: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(timestamp.len() + nonce.len() + body.len() + 3);
    m.extend_from_slice(timestamp.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(nonce.as_bytes());
    m.push(b'\n');
    m.extend_from_slice(body);
    m.push(b'\n');
    m
}

/// The `Wechatpay-*` request headers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct V3Headers {
    /// `Wechatpay-Timestamp`, Unix seconds.
    pub timestamp: String,
    /// `Wechatpay-Nonce`.
    pub nonce: String,
    /// `Wechatpay-Signature`, base64.
    pub signature: String,
    /// `Wechatpay-Serial`: which platform key signed; only logged, since one key is configured.
    pub serial: Option<String>,
}

/// `now` and `timestamp` may differ by at most `max_skew_secs`, in either direction; 0 turns
/// the check off.
pub fn check_freshness(timestamp: &str, now_secs: i64, max_skew_secs: u64) -> Result<(), PayError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| PayError::Invalid {
        field: "Wechatpay-Timestamp",
        why: format!("{timestamp:?} is not Unix seconds"),
    })?;
    let skew = now_secs.abs_diff(ts);
    if max_skew_secs != 0 && skew > max_skew_secs {
        return Err(PayError::Stale { timestamp: ts, skew, max: max_skew_secs });
    }
    Ok(())
}

/// The notification envelope; only what we act on is read, so new fields pass.
#[derive(Debug, Deserialize)]
struct Envelope {
    #[serde(default)]
    event_type: Option<String>,
    resource: Resource,
}

/// The encrypted `resource` of a notification.
#[derive(Debug, Deserialize)]
pub struct Resource {
    pub algorithm: String,
    pub ciphertext: String,
    #[serde(default)]
    pub associated_data: Option<String>,
    pub nonce: String,
}

/// Decrypts `resource` with the 32-byte APIv3 key (its ASCII bytes); AAD = `associated_data`.
pub fn decrypt_resource(api_v3_key: &Secret, r: &Resource) -> Result<Vec<u8>, PayError> {
    if r.algorithm != "AEAD_AES_256_GCM" {
        return Err(PayError::UnsupportedAlgorithm(r.algorithm.clone()));
    }
    // The config refuses keys that are not 32 bytes; an unusable key cannot decrypt anything.
    let cipher =
        Aes256Gcm::new_from_slice(api_v3_key.expose().as_bytes()).map_err(|_| PayError::Decrypt)?;
    if r.nonce.len() != 12 {
        return Err(PayError::Invalid {
            field: "resource.nonce",
            why: format!("{} bytes, AES-GCM takes 12", r.nonce.len()),
        });
    }
    let ct = B64
        .decode(r.ciphertext.trim())
        .map_err(|_| PayError::Malformed("resource.ciphertext is not base64".into()))?;
    let aad = r.associated_data.as_deref().unwrap_or("").as_bytes();
    cipher
        .decrypt(Nonce::from_slice(r.nonce.as_bytes()), Payload { msg: &ct, aad })
        .map_err(|_| PayError::Decrypt)
}

/// The decrypted transaction (protocol §3.6); every field optional so other notification kinds
/// and new fields still parse, and the checks below say what is missing.
#[derive(Debug, Default, Deserialize)]
struct Transaction {
    appid: Option<String>,
    out_trade_no: Option<String>,
    transaction_id: Option<String>,
    trade_state: Option<String>,
    trade_state_desc: Option<String>,
    attach: Option<String>,
    success_time: Option<String>,
    payer: Option<Payer>,
    amount: Option<Amount>,
}

#[derive(Debug, Default, Deserialize)]
struct Payer {
    openid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Amount {
    total: Option<u64>,
    currency: Option<String>,
}

/// Verifies v3 notifications.
#[derive(Debug, Clone)]
pub struct V3Verifier {
    key: PlatformKey,
    api_v3_key: Secret,
    max_skew_secs: u64,
}

impl V3Verifier {
    /// `max_skew_secs` is `server.max_clock_skew_secs`, with the same meaning as for pushes:
    /// `Wechatpay-Timestamp` further than that from now (either way) is refused, and 0 turns
    /// the check off. An operator who set 0 did so because this machine's clock cannot be
    /// trusted, which holds here too; a replay that gets through is harmless because payments
    /// are deduplicated by transaction id.
    pub fn new(key: PlatformKey, api_v3_key: Secret, max_skew_secs: u64) -> Self {
        V3Verifier { key, api_v3_key, max_skew_secs }
    }

    /// Freshness, then the RSA signature, then decryption, then the transaction. Only
    /// `trade_state == SUCCESS` is a payment.
    pub fn verify(&self, h: &V3Headers, body: &[u8], now_secs: i64) -> Result<Outcome, PayError> {
        if body.len() > MAX_NOTIFY_BYTES {
            return Err(PayError::TooLarge { len: body.len(), max: MAX_NOTIFY_BYTES });
        }
        for (name, v) in [
            ("Wechatpay-Timestamp", &h.timestamp),
            ("Wechatpay-Nonce", &h.nonce),
            ("Wechatpay-Signature", &h.signature),
        ] {
            if v.is_empty() {
                return Err(PayError::MissingHeader(name));
            }
        }
        check_freshness(&h.timestamp, now_secs, self.max_skew_secs)?;
        self.key.verify(&h.timestamp, &h.nonce, body, &h.signature)?;
        let env: Envelope = serde_json::from_slice(body)
            .map_err(|e| PayError::Malformed(format!("notification JSON: {e}")))?;
        let plain = decrypt_resource(&self.api_v3_key, &env.resource)?;
        let tx: Transaction = serde_json::from_slice(&plain)
            .map_err(|e| PayError::Malformed(format!("decrypted transaction JSON: {e}")))?;
        self.outcome(env.event_type.as_deref(), tx)
    }

    fn outcome(&self, event_type: Option<&str>, tx: Transaction) -> Result<Outcome, PayError> {
        if tx.trade_state.as_deref() != Some("SUCCESS") {
            let reason = match &tx.trade_state {
                Some(s) => format!(
                    "trade_state {s} ({})",
                    tx.trade_state_desc.as_deref().unwrap_or_default()
                ),
                None => format!("no trade_state (event_type {})", event_type.unwrap_or("absent")),
            };
            return Ok(Outcome::NotPaid { transaction_id: tx.transaction_id, reason });
        }
        let amount = tx.amount.unwrap_or_default();
        let openid = tx.payer.and_then(|p| p.openid).ok_or(PayError::Missing("payer.openid"))?;
        Ok(Outcome::Paid(Payment {
            transaction_id: check_transaction_id(tx.transaction_id.as_deref().unwrap_or(""))?,
            out_trade_no: tx.out_trade_no.ok_or(PayError::Missing("out_trade_no"))?,
            openid: OpenId::parse(&openid)?,
            appid: tx.appid,
            amount_fen: amount.total.ok_or(PayError::Missing("amount.total"))?,
            currency: amount.currency.unwrap_or_else(|| "CNY".into()),
            attach: tx.attach.filter(|a| !a.is_empty()),
            paid_at: tx.success_time.unwrap_or_default(),
            source: PaymentSource::V3,
        }))
    }
}

/// Builds signed, encrypted v3 notifications the way WeChat Pay does, for tests and for trying
/// a deployment. Needs the private key matching the configured platform public key.
pub mod build {
    use super::*;
    use rsa::RsaPrivateKey;
    use rsa::pkcs1v15::SigningKey;
    use rsa::signature::{SignatureEncoding, Signer};

    /// Encrypts `transaction` (JSON) into a notification body with the given `nonce` (12 bytes)
    /// and `associated_data`.
    pub fn body(
        api_v3_key: &[u8],
        transaction: &serde_json::Value,
        nonce: &str,
        associated_data: &str,
    ) -> anyhow::Result<Vec<u8>> {
        let cipher = Aes256Gcm::new_from_slice(api_v3_key)
            .map_err(|_| anyhow::anyhow!("an APIv3 key is 32 bytes"))?;
        anyhow::ensure!(nonce.len() == 12, "an AES-GCM nonce is 12 bytes");
        let plain = transaction.to_string();
        let ct = cipher
            .encrypt(
                Nonce::from_slice(nonce.as_bytes()),
                Payload { msg: plain.as_bytes(), aad: associated_data.as_bytes() },
            )
            .map_err(|_| anyhow::anyhow!("AES-GCM encryption failed"))?;
        let env = serde_json::json!({
            "id": "EV-2018022511223320873",
            "create_time": "2015-05-20T13:29:35+08:00",
            "resource_type": "encrypt-resource",
            "event_type": "TRANSACTION.SUCCESS",
            "summary": "支付成功",
            "resource": {
                "original_type": "transaction",
                "algorithm": "AEAD_AES_256_GCM",
                "ciphertext": B64.encode(ct),
                "associated_data": associated_data,
                "nonce": nonce,
            }
        });
        Ok(env.to_string().into_bytes())
    }

    /// The base64 `Wechatpay-Signature` of `body`.
    pub fn signature(key: &RsaPrivateKey, timestamp: &str, nonce: &str, body: &[u8]) -> String {
        let sk = SigningKey::<Sha256>::new(key.clone());
        B64.encode(sk.sign(&signed_message(timestamp, nonce, body)).to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::RsaPrivateKey;
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
    use serde_json::json;
    use std::sync::LazyLock;

    const APIV3: &str = "0123456789abcdef0123456789ABCDEF";
    const NOW: i64 = 1_700_000_000;

    /// A 2048-bit test key stored as a fixture: generating one in a debug build takes seconds.
    static PRIV: LazyLock<RsaPrivateKey> = LazyLock::new(|| {
        RsaPrivateKey::from_pkcs8_pem(include_str!(
            "../../tests/fixtures/pay/test_platform_key.pem"
        ))
        .expect("fixture key")
    });
    const PUB_PEM: &str = include_str!("../../tests/fixtures/pay/test_platform_pub.pem");

    fn verifier(max_skew: u64) -> V3Verifier {
        V3Verifier::new(PlatformKey::from_pem(PUB_PEM).unwrap(), Secret::new(APIV3), max_skew)
    }

    fn tx(trade_state: &str, total: u64) -> serde_json::Value {
        json!({
            "appid": "wxd930ea5d5a258f4f", "mchid": "1230000109",
            "out_trade_no": "1217752501201407033233368018",
            "transaction_id": "1217752501201407033233368018",
            "trade_type": "JSAPI", "trade_state": trade_state, "trade_state_desc": "支付成功",
            "bank_type": "CMC", "attach": "order-42", "success_time": "2018-06-08T10:34:56+08:00",
            "payer": { "openid": "oUpF8uMEb4qRXf22hE3X68TekukE" },
            "amount": { "total": total, "payer_total": total, "currency": "CNY",
                        "payer_currency": "CNY" },
            "scene_info": { "device_id": "013467007045764" }, "promotion_detail": []
        })
    }

    /// A genuine notification: (headers, body).
    fn notification(t: &serde_json::Value, ts: i64) -> (V3Headers, Vec<u8>) {
        let body = build::body(APIV3.as_bytes(), t, "fdasflkja484", "transaction").unwrap();
        let ts = ts.to_string();
        let nonce = "5K8264ILTKCH16CQ2502SI8ZNMTM67VS".to_string();
        let signature = build::signature(&PRIV, &ts, &nonce, &body);
        (V3Headers { timestamp: ts, nonce, signature, serial: Some("PUB_KEY_ID_1".into()) }, body)
    }

    #[test]
    fn genuine_notification_is_a_payment() {
        let (h, body) = notification(&tx("SUCCESS", 100), NOW);
        let Outcome::Paid(p) = verifier(300).verify(&h, &body, NOW + 5).unwrap() else {
            panic!("a success")
        };
        assert_eq!(
            p,
            Payment {
                transaction_id: "1217752501201407033233368018".into(),
                out_trade_no: "1217752501201407033233368018".into(),
                openid: OpenId::parse("oUpF8uMEb4qRXf22hE3X68TekukE").unwrap(),
                appid: Some("wxd930ea5d5a258f4f".into()),
                amount_fen: 100,
                currency: "CNY".into(),
                attach: Some("order-42".into()),
                paid_at: "2018-06-08T10:34:56+08:00".into(),
                source: PaymentSource::V3,
            }
        );
    }

    #[test]
    fn other_trade_states_are_not_payments() {
        let (h, body) = notification(&tx("NOTPAY", 100), NOW);
        assert!(matches!(
            verifier(300).verify(&h, &body, NOW).unwrap(),
            Outcome::NotPaid { reason, .. } if reason.starts_with("trade_state NOTPAY")
        ));
        let refund = json!({"refund_status": "SUCCESS", "transaction_id": "42"});
        let (h, body) = notification(&refund, NOW);
        assert!(matches!(
            verifier(300).verify(&h, &body, NOW).unwrap(),
            Outcome::NotPaid { transaction_id: Some(t), .. } if t == "42"
        ));
    }

    #[test]
    fn tampering_is_refused() {
        let v = verifier(300);
        let (h, body) = notification(&tx("SUCCESS", 1), NOW);
        let sig_err = PayError::BadSignature("pay.v3_platform_public_key");

        // Changed amount: re-encrypting with the right key still breaks the RSA signature.
        let (_, other_body) = notification(&tx("SUCCESS", 100_000), NOW);
        assert_eq!(v.verify(&h, &other_body, NOW).unwrap_err(), sig_err);
        // One byte of the body.
        let mut b = body.clone();
        let i = b.len() / 2;
        b[i] ^= 1;
        assert_eq!(v.verify(&h, &b, NOW).unwrap_err(), sig_err);
        // Signed timestamp or nonce changed.
        let mut h2 = h.clone();
        h2.timestamp = (NOW + 1).to_string();
        assert_eq!(v.verify(&h2, &body, NOW).unwrap_err(), sig_err);
        let mut h2 = h.clone();
        h2.nonce.push('x');
        assert_eq!(v.verify(&h2, &body, NOW).unwrap_err(), sig_err);
        // A mangled signature, a non-base64 one, and WeChat Pay's deliberate probe.
        for s in [
            {
                let mut raw = B64.decode(&h.signature).unwrap();
                raw[0] ^= 0x80;
                B64.encode(raw)
            },
            "not base64 !".to_string(),
            "WECHATPAY/SIGNTEST/abc".to_string(),
        ] {
            let mut h2 = h.clone();
            h2.signature = s;
            assert_eq!(v.verify(&h2, &body, NOW).unwrap_err(), sig_err);
        }
        // Missing headers.
        let mut h2 = h.clone();
        h2.signature.clear();
        assert_eq!(
            v.verify(&h2, &body, NOW).unwrap_err(),
            PayError::MissingHeader("Wechatpay-Signature")
        );
    }

    #[test]
    fn wrong_apiv3_key_or_bad_tag_does_not_decrypt() {
        let (h, body) = notification(&tx("SUCCESS", 1), NOW);
        let wrong = V3Verifier::new(
            PlatformKey::from_pem(PUB_PEM).unwrap(),
            Secret::new("ffffffffffffffffffffffffffffffff"),
            300,
        );
        assert_eq!(wrong.verify(&h, &body, NOW).unwrap_err(), PayError::Decrypt);

        // A flipped tag bit, and altered AAD, re-signed so only GCM can notice.
        let mut env: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let mut ct = B64.decode(env["resource"]["ciphertext"].as_str().unwrap()).unwrap();
        let last = ct.len() - 1;
        ct[last] ^= 1;
        env["resource"]["ciphertext"] = json!(B64.encode(&ct));
        let mut env2: serde_json::Value = serde_json::from_slice(&body).unwrap();
        env2["resource"]["associated_data"] = json!("refund");
        for e in [env, env2] {
            let b = e.to_string().into_bytes();
            let mut h2 = h.clone();
            h2.signature = build::signature(&PRIV, &h.timestamp, &h.nonce, &b);
            assert_eq!(verifier(300).verify(&h2, &b, NOW).unwrap_err(), PayError::Decrypt);
        }
    }

    #[test]
    fn freshness_both_directions_and_off() {
        let (h, body) = notification(&tx("SUCCESS", 1), NOW);
        let v = verifier(300);
        assert!(v.verify(&h, &body, NOW + 300).is_ok());
        assert!(v.verify(&h, &body, NOW - 300).is_ok());
        assert_eq!(
            v.verify(&h, &body, NOW + 301).unwrap_err(),
            PayError::Stale { timestamp: NOW, skew: 301, max: 300 }
        );
        assert!(matches!(v.verify(&h, &body, NOW - 301), Err(PayError::Stale { .. })));
        assert!(verifier(0).verify(&h, &body, NOW + 86_400 * 365).is_ok());
        assert!(matches!(
            check_freshness("yesterday", NOW, 300),
            Err(PayError::Invalid { field: "Wechatpay-Timestamp", .. })
        ));
    }

    #[test]
    fn pem_forms() {
        let pk = PRIV.to_public_key();
        let spki = pk.to_public_key_pem(LineEnding::LF).unwrap();
        let pkcs1 = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_pem(&pk, LineEnding::LF).unwrap();
        assert!(pkcs1.contains("BEGIN RSA PUBLIC KEY"));
        for pem in [spki.as_str(), pkcs1.as_str(), PUB_PEM] {
            assert_eq!(
                format!("{:?}", PlatformKey::from_pem(pem).unwrap()),
                "PlatformKey(RSA-2048)"
            );
        }
        let e =
            PlatformKey::from_pem("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----")
                .unwrap_err();
        assert!(e.to_string().contains("openssl x509"), "{e}");
        let e =
            PlatformKey::from_pem(include_str!("../../tests/fixtures/pay/test_platform_key.pem"))
                .unwrap_err();
        assert!(e.to_string().contains("public"), "{e}");
        let e = PlatformKey::from_pem("hello").unwrap_err();
        assert!(e.to_string().contains("BEGIN PUBLIC KEY"), "{e}");
    }

    #[test]
    fn answers() {
        assert_eq!(SUCCESS_ANSWER, r#"{"code":"SUCCESS","message":"成功"}"#);
        assert_eq!(
            fail_answer("invalid signature"),
            r#"{"code":"FAIL","message":"invalid signature"}"#
        );
    }

    #[test]
    fn unsupported_algorithm_and_bad_nonce() {
        let r = Resource {
            algorithm: "AEAD_CHACHA".into(),
            ciphertext: String::new(),
            associated_data: None,
            nonce: "x".into(),
        };
        assert_eq!(
            decrypt_resource(&Secret::new(APIV3), &r).unwrap_err(),
            PayError::UnsupportedAlgorithm("AEAD_CHACHA".into())
        );
        let r = Resource { algorithm: "AEAD_AES_256_GCM".into(), ..r };
        assert!(matches!(
            decrypt_resource(&Secret::new(APIV3), &r),
            Err(PayError::Invalid { field: "resource.nonce", .. })
        ));
    }
}
