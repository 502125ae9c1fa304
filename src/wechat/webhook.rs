//! The webhook's protocol steps, pure and without I/O (protocol §1.2, §2.1–§2.6, interface §6.2–
//! §6.4): verify the handshake; open a push (signature, freshness, mode, msg_signature, decrypt
//! with the current or previous key, appid, decode); seal a reply for the mode the push came in.
//! The HTTP layer only extracts the query and body, calls these, and maps `PushError::status`.

use serde::Deserialize;

use crate::config::Config;
use crate::model::Secret;
use crate::wechat::crypto::{AesKey, CryptoError};
use crate::wechat::inbound::{self, DecodeError, Push};
use crate::wechat::{reply, signature};

/// What the webhook verifies with, built once from the configuration.
#[derive(Debug, Clone)]
pub struct Keys {
    pub token: Secret,
    /// From `wechat.encoding_aes_key`; `None` = only plaintext pushes can be read.
    pub current: Option<AesKey>,
    /// From `wechat.previous_encoding_aes_key`: still accepted during a key rotation.
    pub previous: Option<AesKey>,
    /// Expected appid trailer of decrypted pushes; empty (dry-run) = not checked.
    pub app_id: String,
    pub require_encryption: bool,
    /// 0 = freshness not checked.
    pub max_clock_skew_secs: u64,
}

impl Keys {
    pub fn from_config(cfg: &Config) -> Result<Keys, CryptoError> {
        let key = |s: &Secret| {
            if s.is_empty() {
                Ok(None)
            } else {
                AesKey::from_encoding_aes_key(s.expose()).map(Some)
            }
        };
        Ok(Keys {
            token: cfg.wechat.token.clone(),
            current: key(&cfg.wechat.encoding_aes_key)?,
            previous: key(&cfg.wechat.previous_encoding_aes_key)?,
            app_id: cfg.wechat.app_id.clone(),
            require_encryption: cfg.wechat.require_encryption,
            max_clock_skew_secs: cfg.server.max_clock_skew_secs,
        })
    }

    fn key(&self, used: KeyUsed) -> Option<&AesKey> {
        match used {
            KeyUsed::Current => self.current.as_ref(),
            KeyUsed::Previous => self.previous.as_ref(),
        }
    }
}

/// The query string WeChat sends (protocol §2.1). Everything is optional here so a missing
/// parameter becomes a precise `PushError`, not an extractor failure.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Query {
    pub signature: Option<String>,
    pub timestamp: Option<String>,
    pub nonce: Option<String>,
    pub echostr: Option<String>,
    pub encrypt_type: Option<String>,
    pub msg_signature: Option<String>,
    /// Unsigned: a hint only; the sender is the (decrypted) FromUserName (protocol §9.9).
    pub openid: Option<String>,
}

/// How the push arrived (protocol §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    /// `encrypt_type=aes` and the body carries plaintext fields besides `Encrypt`.
    Compatible,
    /// `encrypt_type=aes` and the body carries only `ToUserName` and `Encrypt`.
    Safe,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Compatible => "compatible",
            Mode::Safe => "safe",
        }
    }
}

/// Which configured key decrypted the push; the reply is sealed with the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsed {
    Current,
    Previous,
}

/// A verified, decoded push.
#[derive(Debug, Clone, PartialEq)]
pub struct Opened {
    pub push: Push,
    /// The push XML that was decoded (decrypted in compatible and safe mode).
    pub xml: String,
    pub mode: Mode,
    pub key: Option<KeyUsed>,
    /// The signed `timestamp` (Unix seconds, as sent).
    pub timestamp: String,
    pub nonce: String,
    /// The appid trailer of a decrypted push (empty in plaintext mode); replies carry it back.
    pub appid: String,
}

/// Why a handshake or push was refused. `status` is the HTTP answer (interface §6.3); the
/// messages name the cause without echoing secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("the query lacks {0}; WeChat always sends signature, timestamp and nonce")]
    MissingParam(&'static str),
    #[error("the signature does not match the configured wechat.token")]
    BadSignature,
    #[error("encrypt_type=aes without msg_signature")]
    MissingMsgSignature,
    #[error("the msg_signature does not match the configured wechat.token and the Encrypt value")]
    BadMsgSignature,
    #[error("the push is for appid {got:?}, not the configured wechat.app_id")]
    WrongAppId { got: String },
    #[error("the timestamp {0:?} is not Unix seconds")]
    BadTimestamp(String),
    #[error("the timestamp is {0} s old, beyond server.max_clock_skew_secs")]
    Stale(i64),
    #[error("the timestamp is {0} s in the future, beyond server.max_clock_skew_secs")]
    Future(i64),
    #[error("a plaintext push was refused because wechat.require_encryption is on")]
    PlaintextRefused,
    #[error("unsupported encrypt_type {0:?}; expected aes or raw")]
    UnsupportedEncryptType(String),
    #[error(
        "the push is encrypted but wechat.encoding_aes_key is not set: copy the EncodingAESKey \
         from the server configuration page"
    )]
    NoAesKey,
    #[error("the encrypted push has no <Encrypt> element")]
    MissingEncrypt,
    #[error("the handshake lacks echostr")]
    MissingEchostr,
    #[error("the body is larger than server.max_body_bytes ({0} bytes)")]
    TooLarge(usize),
    #[error("cannot decrypt the push: {0}")]
    Crypto(#[from] CryptoError),
    #[error("{0}")]
    Decode(#[from] DecodeError),
}

impl PushError {
    /// The HTTP status (interface §6.3): authentication failures 401, plaintext under
    /// `require_encryption` 403, a body too large 413, any other bad input 400.
    pub fn status(&self) -> u16 {
        match self {
            PushError::MissingParam(_)
            | PushError::BadSignature
            | PushError::MissingMsgSignature
            | PushError::BadMsgSignature
            | PushError::WrongAppId { .. }
            | PushError::BadTimestamp(_)
            | PushError::Stale(_)
            | PushError::Future(_) => 401,
            PushError::PlaintextRefused => 403,
            PushError::TooLarge(_) => 413,
            PushError::UnsupportedEncryptType(_)
            | PushError::NoAesKey
            | PushError::MissingEncrypt
            | PushError::MissingEchostr
            | PushError::Crypto(_)
            | PushError::Decode(_) => 400,
        }
    }

    /// A short stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            PushError::MissingParam(_) => "missing_signature_params",
            PushError::BadSignature => "bad_signature",
            PushError::MissingMsgSignature => "missing_msg_signature",
            PushError::BadMsgSignature => "bad_msg_signature",
            PushError::WrongAppId { .. } => "wrong_appid",
            PushError::BadTimestamp(_) => "bad_timestamp",
            PushError::Stale(_) => "stale_timestamp",
            PushError::Future(_) => "future_timestamp",
            PushError::PlaintextRefused => "plaintext_refused",
            PushError::UnsupportedEncryptType(_) => "unsupported_encrypt_type",
            PushError::NoAesKey => "no_aes_key",
            PushError::MissingEncrypt => "missing_encrypt",
            PushError::MissingEchostr => "missing_echostr",
            PushError::TooLarge(_) => "too_large",
            PushError::Crypto(e) => e.reason(),
            PushError::Decode(e) => e.reason(),
        }
    }
}

/// The signed triple, present and matching the token.
fn check_signature<'q>(keys: &Keys, q: &'q Query) -> Result<(&'q str, &'q str), PushError> {
    let sig = q.signature.as_deref().ok_or(PushError::MissingParam("signature"))?;
    let ts = q.timestamp.as_deref().ok_or(PushError::MissingParam("timestamp"))?;
    let nonce = q.nonce.as_deref().ok_or(PushError::MissingParam("nonce"))?;
    if !signature::verify(sig, &[keys.token.expose(), ts, nonce]) {
        return Err(PushError::BadSignature);
    }
    Ok((ts, nonce))
}

/// The GET handshake (protocol §1.2): the raw `echostr` when the signature holds. The same in
/// every encryption mode for Official Accounts, and not subject to freshness (interface §6.2).
pub fn handshake(keys: &Keys, q: &Query) -> Result<String, PushError> {
    check_signature(keys, q)?;
    q.echostr.clone().ok_or(PushError::MissingEchostr)
}

/// Verifies, decrypts and decodes one POSTed push (protocol §2.5).
pub fn open(keys: &Keys, q: &Query, body: &[u8], now_secs: i64) -> Result<Opened, PushError> {
    let (ts, nonce) = check_signature(keys, q)?;
    let ts_secs: i64 =
        ts.parse().map_err(|_| PushError::BadTimestamp(ts.chars().take(24).collect()))?;
    if keys.max_clock_skew_secs > 0 {
        let skew = i64::try_from(keys.max_clock_skew_secs).unwrap_or(i64::MAX);
        let age = now_secs.saturating_sub(ts_secs);
        if age > skew {
            return Err(PushError::Stale(age));
        }
        if age < -skew {
            return Err(PushError::Future(age.saturating_neg()));
        }
    }

    let encrypted = match q.encrypt_type.as_deref().map(str::trim) {
        None | Some("") | Some("raw") => false,
        Some(t) if t.eq_ignore_ascii_case("aes") => true,
        Some(other) => {
            return Err(PushError::UnsupportedEncryptType(other.chars().take(24).collect()));
        }
    };
    let opened = |push, xml, mode, key, appid| Opened {
        push,
        xml,
        mode,
        key,
        timestamp: ts.to_string(),
        nonce: nonce.to_string(),
        appid,
    };

    if !encrypted {
        if keys.require_encryption {
            return Err(PushError::PlaintextRefused);
        }
        let push = inbound::parse(body)?;
        let xml = String::from_utf8_lossy(body).into_owned();
        return Ok(opened(push, xml, Mode::Plain, None, String::new()));
    }

    if keys.current.is_none() {
        return Err(PushError::NoAesKey);
    }
    let msg_sig = q.msg_signature.as_deref().ok_or(PushError::MissingMsgSignature)?;
    let outer = outer_envelope(body)?;
    let encrypt = outer.encrypt.as_deref().ok_or(PushError::MissingEncrypt)?;
    if !signature::verify(msg_sig, &[keys.token.expose(), ts, nonce, encrypt]) {
        return Err(PushError::BadMsgSignature);
    }
    let (xml, appid, used) = decrypt(keys, encrypt)?;
    let push = inbound::parse(xml.as_bytes())?;
    let mode = if outer.has_plain_fields { Mode::Compatible } else { Mode::Safe };
    Ok(opened(push, xml, mode, Some(used), appid))
}

/// Tries the current key, then the previous one (protocol §2.3 step 5). A key "works" when the
/// ciphertext decrypts and (unless `app_id` is empty) carries our appid; otherwise the current
/// key's failure is reported.
fn decrypt(keys: &Keys, encrypt: &str) -> Result<(String, String, KeyUsed), PushError> {
    let attempt = |used: KeyUsed| -> Option<Result<(String, String, KeyUsed), PushError>> {
        let key = keys.key(used)?;
        Some(match key.decrypt(encrypt) {
            Err(e) => Err(PushError::Crypto(e)),
            Ok((_, appid)) if !keys.app_id.is_empty() && appid != keys.app_id => {
                Err(PushError::WrongAppId { got: appid.chars().take(40).collect() })
            }
            Ok((xml, appid)) => Ok((xml, appid, used)),
        })
    };
    match attempt(KeyUsed::Current) {
        Some(Ok(v)) => Ok(v),
        Some(Err(first)) => match attempt(KeyUsed::Previous) {
            Some(Ok(v)) => Ok(v),
            _ => Err(first),
        },
        None => Err(PushError::NoAesKey),
    }
}

struct Outer {
    encrypt: Option<String>,
    /// MsgType present next to Encrypt: compatible mode.
    has_plain_fields: bool,
}

/// The outer body of an encrypted push: `Encrypt`, and whether plaintext fields ride along.
/// Goes through the same hardening as a plaintext push.
fn outer_envelope(body: &[u8]) -> Result<Outer, PushError> {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "Encrypt")]
        encrypt: Option<String>,
        #[serde(rename = "MsgType")]
        msg_type: Option<String>,
    }
    let text = std::str::from_utf8(body).map_err(|_| DecodeError::NotUtf8)?;
    if text.trim().is_empty() {
        return Err(DecodeError::Empty.into());
    }
    inbound::check_well_formed(text)?;
    let raw: Raw = quick_xml::de::from_str(text)
        .map_err(|e| DecodeError::Malformed(e.to_string().chars().take(160).collect()))?;
    Ok(Outer {
        encrypt: raw.encrypt.map(|e| e.trim().to_string()).filter(|e| !e.is_empty()),
        has_plain_fields: raw.msg_type.is_some_and(|m| !m.trim().is_empty()),
    })
}

/// The answer body for `opened`: `reply_xml` as is for a plaintext push; for an encrypted push
/// the four-element envelope (protocol §2.6), encrypted with the key that decrypted the push and
/// signed over the push's own timestamp and nonce.
pub fn seal(keys: &Keys, opened: &Opened, reply_xml: &str) -> String {
    let Some(key) = opened.key.and_then(|k| keys.key(k)) else {
        return reply_xml.to_string();
    };
    let appid = if keys.app_id.is_empty() { &opened.appid } else { &keys.app_id };
    let encrypt = key.encrypt(reply_xml, appid);
    seal_with(keys, opened, &encrypt)
}

fn seal_with(keys: &Keys, opened: &Opened, encrypt: &str) -> String {
    let sig = signature::sign(&[keys.token.expose(), &opened.timestamp, &opened.nonce, encrypt]);
    reply::encrypted_envelope(encrypt, &sig, &opened.timestamp, &opened.nonce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::inbound::PushKind;
    use crate::wechat::vectors::get;

    const F01: &str = include_str!("../../tests/fixtures/wechat/pushes/F01-text.xml");
    const X05: &str = include_str!("../../tests/fixtures/wechat/pushes/X05-compatible-mode.xml");

    fn keys() -> Keys {
        Keys {
            token: Secret::new(get("k1", "token")),
            current: Some(AesKey::from_encoding_aes_key(&get("k1", "encoding_aes_key")).unwrap()),
            previous: None,
            app_id: get("k1", "app_id"),
            require_encryption: false,
            max_clock_skew_secs: 300,
        }
    }

    fn signed(keys: &Keys, ts: &str, nonce: &str) -> Query {
        Query {
            signature: Some(signature::sign(&[keys.token.expose(), ts, nonce])),
            timestamp: Some(ts.into()),
            nonce: Some(nonce.into()),
            ..Query::default()
        }
    }

    /// E3 as a full safe-mode request.
    fn e3() -> (Query, String) {
        let q = Query {
            signature: Some(get("e3", "signature")),
            timestamp: Some(get("e3", "timestamp")),
            nonce: Some(get("e3", "nonce")),
            encrypt_type: Some("aes".into()),
            msg_signature: Some(get("e3", "msg_signature")),
            ..Query::default()
        };
        let body = format!(
            "<xml><ToUserName><![CDATA[{}]]></ToUserName><Encrypt><![CDATA[{}]]></Encrypt></xml>",
            get("e3", "to_user"),
            get("e3", "encrypt")
        );
        (q, body)
    }

    fn e3_now() -> i64 {
        get("e3", "timestamp").parse().unwrap()
    }

    #[test]
    fn handshake_h1() {
        let k = Keys { token: Secret::new("AAAAA"), ..keys() };
        let mut q = signed(&k, "1714036504", "1514711492");
        assert_eq!(q.signature.as_deref(), Some("f464b24fc39322e44b38aa78f5edd27bd1441696"));
        q.echostr = Some("4375120948345356249".into());
        assert_eq!(handshake(&k, &q).unwrap(), "4375120948345356249");
        q.signature = Some("f464b24fc39322e44b38aa78f5edd27bd1441697".into());
        assert_eq!(handshake(&k, &q), Err(PushError::BadSignature));
        q.signature = None;
        assert_eq!(handshake(&k, &q).unwrap_err().status(), 401);
    }

    #[test]
    fn plaintext_h2_shape() {
        let k = Keys { token: Secret::new("AAAAA"), max_clock_skew_secs: 0, ..keys() };
        let q = signed(&k, "1714037059", "486452656");
        assert_eq!(q.signature.as_deref(), Some("899cf89e464efb63f54ddac96b0a0a235f53aa78"));
        let o = open(&k, &q, F01.as_bytes(), 0).unwrap();
        assert_eq!(o.mode, Mode::Plain);
        assert_eq!(o.key, None);
        assert_eq!(o.push.from, "oMgHVjngRipVsoxg6TuX3vz6glDg");
        assert_eq!(seal(&k, &o, "<xml>r</xml>"), "<xml>r</xml>");
    }

    #[test]
    fn safe_mode_e3() {
        let (q, body) = e3();
        let o = open(&keys(), &q, body.as_bytes(), e3_now()).unwrap();
        assert_eq!(o.mode, Mode::Safe);
        assert_eq!(o.key, Some(KeyUsed::Current));
        assert_eq!(o.xml, get("e3", "msg"));
        assert_eq!(o.appid, get("k1", "app_id"));
        assert_eq!(o.push.from, "asdasdasdsadasd");
        assert_eq!(o.push.create_time, 1234567898);
        assert!(
            matches!(&o.push.kind, PushKind::Text { content, msg_id: Some(12345), .. } if content == "hello")
        );
    }

    #[test]
    fn e3_negative_cases() {
        let (mut q, body) = e3();
        q.msg_signature = Some(get("e3", "bad_msg_signature"));
        let e = open(&keys(), &q, body.as_bytes(), e3_now()).unwrap_err();
        assert_eq!((e.status(), e.reason()), (401, "bad_msg_signature"));

        let (q, body) = e3();
        let k = Keys { app_id: get("e3", "bad_app_id"), ..keys() };
        let e = open(&k, &q, body.as_bytes(), e3_now()).unwrap_err();
        assert_eq!(e, PushError::WrongAppId { got: get("k1", "app_id") });
        assert_eq!(e.status(), 401);

        // Dry-run config (no app_id): decrypted, appid not checked.
        let k = Keys { app_id: String::new(), ..keys() };
        assert!(open(&k, &q, body.as_bytes(), e3_now()).is_ok());

        // No key configured.
        let k = Keys { current: None, ..keys() };
        assert_eq!(open(&k, &q, body.as_bytes(), e3_now()), Err(PushError::NoAesKey));

        let mut q2 = q.clone();
        q2.msg_signature = None;
        assert_eq!(
            open(&keys(), &q2, body.as_bytes(), e3_now()),
            Err(PushError::MissingMsgSignature)
        );
    }

    #[test]
    fn freshness_both_directions() {
        let (q, body) = e3();
        let now = e3_now();
        assert!(open(&keys(), &q, body.as_bytes(), now + 300).is_ok());
        assert!(open(&keys(), &q, body.as_bytes(), now - 300).is_ok());
        assert_eq!(open(&keys(), &q, body.as_bytes(), now + 301), Err(PushError::Stale(301)));
        assert_eq!(open(&keys(), &q, body.as_bytes(), now - 301), Err(PushError::Future(301)));
        let off = Keys { max_clock_skew_secs: 0, ..keys() };
        assert!(open(&off, &q, body.as_bytes(), 0).is_ok());
        let k = keys();
        let q = signed(&k, "yesterday", "n");
        assert_eq!(open(&k, &q, F01.as_bytes(), now).unwrap_err().reason(), "bad_timestamp");
    }

    #[test]
    fn previous_key_during_rotation_and_reply_with_it() {
        let (q, body) = e3();
        let other = AesKey::from_encoding_aes_key(&get("e5", "encoding_aes_key")).unwrap();
        let rotated = Keys { current: Some(other.clone()), previous: keys().current, ..keys() };
        let o = open(&rotated, &q, body.as_bytes(), e3_now()).unwrap();
        assert_eq!(o.key, Some(KeyUsed::Previous));
        // The reply is encrypted with the previous key, the one that decrypted the push.
        let sealed = seal(&rotated, &o, "<xml>reply</xml>");
        let enc = between(&sealed, "<Encrypt><![CDATA[", "]]></Encrypt>");
        assert_eq!(keys().current.unwrap().decrypt(enc).unwrap().0, "<xml>reply</xml>");
        assert!(other.decrypt(enc).is_err());
        // Neither key: the current key's failure is reported.
        let wrong = Keys { current: Some(other), previous: None, ..keys() };
        assert_eq!(open(&wrong, &q, body.as_bytes(), e3_now()).unwrap_err().status(), 400);
    }

    fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
        let start = s.find(a).unwrap() + a.len();
        &s[start..start + s[start..].find(b).unwrap()]
    }

    #[test]
    fn seal_is_the_e4_envelope() {
        let (q, body) = e3();
        let mut o = open(&keys(), &q, body.as_bytes(), e3_now()).unwrap();
        o.timestamp = get("e4", "timestamp");
        o.nonce = get("e4", "nonce");
        let enc = keys().current.unwrap().encrypt_with_random(
            b"aaaabbbbccccdddd",
            &get("e4", "msg"),
            &get("k1", "app_id"),
        );
        assert_eq!(enc, get("e4", "encrypt"));
        assert_eq!(
            seal_with(&keys(), &o, &enc),
            format!(
                "<xml><Encrypt><![CDATA[{}]]></Encrypt><MsgSignature><![CDATA[{}]]></MsgSignature><TimeStamp>1409304348</TimeStamp><Nonce><![CDATA[xxxxxx]]></Nonce></xml>",
                get("e4", "encrypt"),
                get("e4", "msg_signature")
            )
        );
        // With random bytes the envelope still verifies and decrypts.
        let sealed = seal(&keys(), &o, &get("e4", "msg"));
        let enc = between(&sealed, "<Encrypt><![CDATA[", "]]></Encrypt>");
        let sig = between(&sealed, "<MsgSignature><![CDATA[", "]]></MsgSignature>");
        assert!(signature::verify(sig, &["pamtest", "1409304348", "xxxxxx", enc]));
        assert_eq!(
            keys().current.unwrap().decrypt(enc).unwrap(),
            (get("e4", "msg"), get("k1", "app_id"))
        );
    }

    #[test]
    fn compatible_mode_x05_uses_the_decrypted_xml() {
        let k = keys();
        let q = Query {
            signature: Some(get("x05", "signature")),
            timestamp: Some(get("x05", "timestamp")),
            nonce: Some(get("x05", "nonce")),
            encrypt_type: Some("aes".into()),
            msg_signature: Some(get("x05", "msg_signature")),
            ..Query::default()
        };
        let o = open(&k, &q, X05.as_bytes(), 1700000105).unwrap();
        assert_eq!(o.mode, Mode::Compatible);
        let f19 = include_str!("../../tests/fixtures/wechat/pushes/F19-templatesendjobfinish.xml");
        assert_eq!(o.xml, f19.trim());
        assert_eq!(o.push.event(), Some("TEMPLATESENDJOBFINISH"));
    }

    #[test]
    fn require_encryption_refuses_plaintext_with_403() {
        let k = Keys { require_encryption: true, max_clock_skew_secs: 0, ..keys() };
        let q = signed(&k, "1700000001", "n1");
        let e = open(&k, &q, F01.as_bytes(), 0).unwrap_err();
        assert_eq!((e.status(), e.reason()), (403, "plaintext_refused"));
        let (q, body) = e3();
        assert!(open(&k, &q, body.as_bytes(), 0).is_ok());
    }

    #[test]
    fn bad_bodies_are_400() {
        let k = Keys { max_clock_skew_secs: 0, ..keys() };
        let q = signed(&k, "1700000001", "n1");
        for (body, reason) in [
            (&b""[..], "empty_body"),
            (b"\xff\xfe", "invalid_utf8"),
            (b"<xml><ToUserName>a</ToUserName></xml>", "missing_field"),
            (b"<!DOCTYPE x><xml/>", "doctype"),
            (b"<xml><a></xml>", "malformed_xml"),
        ] {
            let e = open(&k, &q, body, 0).unwrap_err();
            assert_eq!((e.status(), e.reason()), (400, reason), "{body:?}");
        }
        let mut aes = q.clone();
        aes.encrypt_type = Some("aes".into());
        aes.msg_signature = Some("x".into());
        let body = b"<xml><ToUserName>a</ToUserName></xml>";
        assert_eq!(open(&k, &aes, body, 0), Err(PushError::MissingEncrypt));
        // Bad base64 / length with a valid msg_signature reach the crypto errors.
        for (enc, reason) in [("!!!!", "bad_base64"), ("AAAA", "bad_cipher_length")] {
            let body = format!("<xml><Encrypt>{enc}</Encrypt></xml>");
            aes.msg_signature = Some(signature::sign(&["pamtest", "1700000001", "n1", enc]));
            let e = open(&k, &aes, body.as_bytes(), 0).unwrap_err();
            assert_eq!((e.status(), e.reason()), (400, reason));
        }
        let mut odd = q.clone();
        odd.encrypt_type = Some("rot13".into());
        assert_eq!(open(&k, &odd, F01.as_bytes(), 0).unwrap_err().status(), 400);
        assert_eq!(PushError::TooLarge(10).status(), 413);
    }
}
