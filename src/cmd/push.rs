//! `kefu push` (interface §1): act as WeChat against a deployment. Builds a push (text, event or
//! an XML file), signs it with the configured token, with `--encrypt` encrypts it safe-mode style
//! with the configured EncodingAESKey, POSTs it, and prints the status and the (decrypted) answer.

use clap::Args;

use super::common::PushInput;
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;

use super::common::{CmdError, CmdResult};
use crate::api::error::transport_cause;
use crate::config::Config;
use crate::model::Clock;
use crate::model::SystemClock;
use crate::wechat::crypto::AesKey;
use crate::wechat::{push_element, signature};

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The server URL: `kefu serve`'s server.listen + server.path, e.g.
    /// http://127.0.0.1:8080/wechat.
    #[arg(long)]
    pub url: String,
    /// Sender OpenID.
    #[arg(long, value_name = "OPENID", default_value = "oSimulatedFollower000000000")]
    pub from: String,
    /// Encrypt the push (safe mode) with the configured EncodingAESKey.
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub input: PushInput,
    /// EventKey for --event.
    #[arg(long, requires = "event")]
    pub key: Option<String>,
}

/// The `ToUserName` when `wechat.original_id` is not set: shaped like an original ID, so the
/// push looks like WeChat's.
const DEFAULT_TO: &str = "gh_kefu_push";

/// What the server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOutcome {
    pub status: u16,
    /// The answer body; decrypted when the server sent an encrypted envelope.
    pub body: String,
    pub decrypted: bool,
}

pub async fn run(cfg: &Config, args: &PushArgs) -> CmdResult {
    let out = send(cfg, args).await?;
    let note = if out.decrypted { " (reply decrypted)" } else { "" };
    let reason = reqwest::StatusCode::from_u16(out.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    crate::outln!("HTTP {} {reason}{note}", out.status)?;
    crate::outln!("{}", out.body)?;
    if out.status == 404 {
        let path = url::Url::parse(&args.url).map(|u| u.path().to_string()).unwrap_or_default();
        return Err(CmdError::failed(format!(
            "the server at {} answered 404 Not Found for the path {path:?}: it has no webhook \
             there. --url must end with the server's `server.path`; this config's is {:?}, {}",
            args.url,
            cfg.server.path,
            cfg.key("server.path")
        )));
    }
    if out.status >= 400 {
        return Err(CmdError::failed(format!(
            "the server refused the push with HTTP {}: {}",
            out.status,
            out.body.trim()
        )));
    }
    Ok(())
}

/// How long `kefu push` waits for the whole answer.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// A failed POST in an operator's words: the cause ([`transport_cause`]) and what to check.
fn post_error(url: &str, e: &reqwest::Error) -> CmdError {
    let cause = transport_cause(e);
    let hint = if e.is_timeout() {
        format!(
            "no answer within {} s: the server is stuck or overloaded; check its logs",
            PUSH_TIMEOUT.as_secs()
        )
    } else if e.is_connect() {
        "check that `kefu serve` runs at that address (its `server.listen`) and that --url \
         names it, e.g. http://127.0.0.1:8080/wechat"
            .to_string()
    } else {
        "the server closed the connection before answering; check its logs".to_string()
    };
    CmdError::failed(format!("cannot POST the push to {url}: {cause}; {hint}"))
}

/// Builds, signs, (encrypts,) POSTs; returns the answer without printing.
pub async fn send(cfg: &Config, args: &PushArgs) -> Result<PushOutcome, CmdError> {
    let token = cfg.wechat.token.expose();
    if token.is_empty() {
        return Err(CmdError::Usage(format!(
            "{} is empty: kefu push signs with it; {} to the Token the server is configured with",
            cfg.key("wechat.token"),
            cfg.how_to_set("wechat.token")
        )));
    }
    let key =
        if args.encrypt {
            if cfg.wechat.encoding_aes_key.is_empty() {
                return Err(CmdError::Usage(format!(
                    "--encrypt needs {}, which is empty: {} to the 43-character EncodingAESKey the \
                 server is configured with",
                    cfg.key("wechat.encoding_aes_key"),
                    cfg.how_to_set("wechat.encoding_aes_key")
                )));
            }
            Some(AesKey::from_encoding_aes_key(cfg.wechat.encoding_aes_key.expose()).map_err(
                |e| CmdError::Usage(format!("{}: {e}", cfg.key("wechat.encoding_aes_key"))),
            )?)
        } else {
            None
        };
    let mut url = url::Url::parse(&args.url).map_err(|e| {
        CmdError::Usage(format!(
            "--url {:?} is not a URL ({e}); write e.g. http://127.0.0.1:8080/wechat",
            args.url
        ))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CmdError::Usage(format!("--url {:?} must be http or https", args.url)));
    }

    let now = SystemClock.now_secs();
    // ToUserName is the account's original ID (gh_…), never its WeChat ID (`account_id`).
    let to = if cfg.wechat.original_id.is_empty() { DEFAULT_TO } else { &cfg.wechat.original_id };
    let xml = build_xml(args, to, now)?;
    let timestamp = now.to_string();
    let nonce = rand::thread_rng().gen_range(100_000_000u32..4_000_000_000).to_string();
    let body = {
        let mut q = url.query_pairs_mut();
        q.append_pair("signature", &signature::sign(&[token, &timestamp, &nonce]))
            .append_pair("timestamp", &timestamp)
            .append_pair("nonce", &nonce)
            .append_pair("openid", &args.from);
        match &key {
            None => xml,
            Some(key) => {
                let encrypt = key.encrypt(&xml, &cfg.wechat.app_id);
                let msg_sig = signature::sign(&[token, &timestamp, &nonce, &encrypt]);
                q.append_pair("encrypt_type", "aes").append_pair("msg_signature", &msg_sig);
                let mut b = String::from("<xml>");
                push_element(&mut b, "ToUserName", to);
                push_element(&mut b, "Encrypt", &encrypt);
                b.push_str("</xml>");
                b
            }
        }
    };

    let client = reqwest::Client::builder()
        .timeout(PUSH_TIMEOUT)
        .build()
        .map_err(|e| CmdError::failed(format!("cannot build the HTTP client: {e}")))?;
    let resp = client
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=utf-8")
        .body(body)
        .send()
        .await
        .map_err(|e| post_error(&args.url, &e))?;
    let status = resp.status().as_u16();
    let text = resp.text().await.map_err(|e| {
        CmdError::failed(format!(
            "cannot read the answer from {}: {}",
            args.url,
            transport_cause(&e)
        ))
    })?;
    match (&key, open_envelope(&text)) {
        (Some(_), Some(env)) => {
            let plain = decrypt_reply(cfg, token, &env)?;
            Ok(PushOutcome { status, body: plain, decrypted: true })
        }
        _ => Ok(PushOutcome { status, body: text, decrypted: false }),
    }
}

/// The push XML for `--text`, `--event [--key]` or `--xml FILE`.
fn build_xml(args: &PushArgs, to: &str, now: i64) -> Result<String, CmdError> {
    if let Some(path) = &args.input.xml {
        return std::fs::read_to_string(path)
            .map_err(|e| CmdError::Usage(format!("cannot read --xml {}: {e}", path.display())));
    }
    use crate::wechat::inbound::build;
    if let Some(text) = &args.input.text {
        // A fresh MsgId, so the server's dedupe does not swallow a repeated try.
        let msg_id: u64 = rand::thread_rng().gen_range(1u64 << 40..1u64 << 62);
        Ok(build::text_xml(to, &args.from, now, text, msg_id))
    } else if let Some(event) = &args.input.event {
        Ok(build::event_xml(to, &args.from, now, event, args.key.as_deref()))
    } else {
        Err(CmdError::Usage("give one of --text, --event or --xml".into()))
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "Encrypt")]
    encrypt: String,
    #[serde(rename = "MsgSignature")]
    msg_signature: Option<String>,
    #[serde(rename = "TimeStamp")]
    timestamp: Option<String>,
    #[serde(rename = "Nonce")]
    nonce: Option<String>,
}

fn open_envelope(text: &str) -> Option<Envelope> {
    if !text.contains("<Encrypt>") {
        return None;
    }
    crate::wechat::inbound::check_well_formed(text).ok()?;
    quick_xml::de::from_str(text).ok()
}

/// Verifies and decrypts the server's encrypted answer with the current or previous key.
fn decrypt_reply(cfg: &Config, token: &str, env: &Envelope) -> Result<String, CmdError> {
    let (ts, nonce) = (env.timestamp.as_deref().unwrap_or(""), env.nonce.as_deref().unwrap_or(""));
    let sig = env.msg_signature.as_deref().unwrap_or("");
    let encrypt = env.encrypt.trim();
    if !signature::verify(sig, &[token, ts.trim(), nonce.trim(), encrypt]) {
        return Err(CmdError::failed(format!(
            "the encrypted answer's MsgSignature does not verify with {}: the server is \
             configured with another Token",
            cfg.key("wechat.token")
        )));
    }
    let mut last = None;
    for k in [&cfg.wechat.encoding_aes_key, &cfg.wechat.previous_encoding_aes_key] {
        if k.is_empty() {
            continue;
        }
        match AesKey::from_encoding_aes_key(k.expose()).and_then(|key| key.decrypt(encrypt)) {
            Ok((xml, _appid)) => return Ok(xml),
            Err(e) => last = Some(e),
        }
    }
    Err(CmdError::failed(format!(
        "cannot decrypt the answer: {}",
        last.map(|e| e.to_string()).unwrap_or_else(|| "no key".into())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::common::PushInput;

    fn args(text: Option<&str>, event: Option<&str>, key: Option<&str>) -> PushArgs {
        PushArgs {
            url: "http://127.0.0.1:1/wechat".into(),
            from: "oFrom".into(),
            encrypt: false,
            input: PushInput {
                text: text.map(Into::into),
                event: event.map(Into::into),
                xml: None,
            },
            key: key.map(Into::into),
        }
    }

    #[test]
    fn built_pushes_decode() {
        let xml = build_xml(&args(Some("退款 ]]> now"), None, None), "gh_x", 1700000000).unwrap();
        let p = crate::wechat::inbound::parse(xml.as_bytes()).unwrap();
        assert_eq!((p.to.as_str(), p.from.as_str(), p.create_time), ("gh_x", "oFrom", 1700000000));
        assert_eq!(crate::rules::input::of_push(&p).text.as_deref(), Some("退款 ]]> now"));
        assert!(p.msg_id().is_some());

        let xml = build_xml(&args(None, Some("CLICK"), Some("K1")), "gh_x", 1).unwrap();
        let p = crate::wechat::inbound::parse(xml.as_bytes()).unwrap();
        assert_eq!(p.event(), Some("CLICK"));
        assert_eq!(p.event_key().as_deref(), Some("K1"));
    }

    #[tokio::test]
    async fn usage_errors_exit_2_and_name_the_key() {
        let mut cfg = Config::default();
        let e = send(&cfg, &args(Some("hi"), None, None)).await.unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("wechat.token"), "{e}");

        cfg.wechat.token = crate::model::Secret::new("t");
        let mut a = args(Some("hi"), None, None);
        a.encrypt = true;
        let e = send(&cfg, &a).await.unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("wechat.encoding_aes_key"), "{e}");

        let mut a = args(Some("hi"), None, None);
        a.url = "not a url".into();
        assert_eq!(send(&cfg, &a).await.unwrap_err().exit_code(), 2);
    }
}
