//! Customer-service sends (protocol §6): `custom/send` and `custom/typing`.
//!
//! # Retry policy
//!
//! A send that WeChat certainly did not act on is retried with exponential backoff, a bounded
//! number of times ([`super::RetryPolicy`]): the connection could not be made, or WeChat
//! answered `-1` (busy) or `45011` (minute quota). A send whose fate is unknown — a timeout or a
//! dropped connection after the request was written, or an answer that cannot be read — is
//! **not** retried by default and comes back as [`ApiError::Ambiguous`]: the follower may
//! already have the message, and a duplicate is worse than a missing one (set
//! `RetryPolicy::retry_ambiguous` to trade the other way). A refused token (40001/40014/42001)
//! is refreshed and the send retried exactly once; WeChat refused the first attempt, so this
//! cannot duplicate. `45015`/`45047` come back as typed errors for the ledger to record.

use serde_json::{Value, json};

use crate::model::{OpenId, OutMessage};

use super::client::{ApiClient, Req};
use super::error::ApiError;

pub const SEND_PATH: &str = "/cgi-bin/message/custom/send";
pub const TYPING_PATH: &str = "/cgi-bin/message/custom/typing";

/// A `custom/send` body (protocol §6.2) known to be well formed: checked once where it enters
/// (`kefu send --json`, `POST /admin/send`: [`SendBody::parse`]) or built valid from an
/// [`OutMessage`] ([`SendBody::of_message`]). Everything after — the window gate, the client —
/// takes this type and checks nothing again.
#[derive(Clone, Debug, PartialEq)]
pub struct SendBody {
    body: Value,
    to: OpenId,
}

impl SendBody {
    /// Checks a body before it goes out, so a malformed one is a clear local error (exit 2 for
    /// `kefu send`, 400 at `/admin/send`) instead of a WeChat errcode: an object with a valid
    /// `touser`, a `msgtype`, an object named after the msgtype, and a well-formed
    /// `customservice` when present.
    pub fn parse(body: Value) -> Result<SendBody, ApiError> {
        let to = validate(&body)?;
        Ok(SendBody { body, to })
    }

    /// The body of `msg` to `to`, optionally sent as a kf account; valid by construction.
    pub fn of_message(to: &OpenId, msg: &OutMessage, kf_account: Option<&str>) -> SendBody {
        SendBody { body: msg.custom_send_body(to.as_str(), kf_account), to: to.clone() }
    }

    /// The recipient (`touser`).
    pub fn to(&self) -> &OpenId {
        &self.to
    }

    /// The `msgtype`.
    pub fn msgtype(&self) -> &str {
        self.body.get("msgtype").and_then(Value::as_str).unwrap_or("message")
    }

    /// `customservice.kf_account`, when the message is sent as a kf account.
    pub fn kf_account(&self) -> Option<&str> {
        self.body.pointer("/customservice/kf_account").and_then(Value::as_str)
    }

    /// The JSON as it is sent.
    pub fn json(&self) -> &Value {
        &self.body
    }
}

impl ApiClient {
    /// `POST /cgi-bin/message/custom/send` (protocol §6.2), sent as raw UTF-8 JSON. See the
    /// module docs for what is retried.
    pub async fn send(&self, body: &SendBody) -> Result<(), ApiError> {
        self.call(&Req::post(SEND_PATH, body.json())).await.map(drop)
    }

    /// Sends one [`OutMessage`] to `to`, optionally as a kf account.
    pub async fn send_message(
        &self,
        to: &OpenId,
        msg: &OutMessage,
        kf_account: Option<&str>,
    ) -> Result<(), ApiError> {
        self.send(&SendBody::of_message(to, msg, kf_account)).await
    }

    /// `POST /cgi-bin/message/custom/typing`: `Typing` when `on`, else `CancelTyping`.
    pub async fn typing(&self, openid: &str, on: bool) -> Result<(), ApiError> {
        let openid = OpenId::parse(openid).map_err(|e| ApiError::Invalid(e.to_string()))?;
        let body = json!({
            "touser": openid.as_str(),
            "command": if on { "Typing" } else { "CancelTyping" },
        });
        self.call(&Req::post(TYPING_PATH, &body)).await.map(drop)
    }
}

fn validate(body: &Value) -> Result<OpenId, ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| ApiError::Invalid("a custom/send body must be a JSON object".into()))?;
    let touser = obj.get("touser").and_then(Value::as_str).ok_or_else(|| {
        ApiError::Invalid("the custom/send body needs \"touser\": the follower's OpenID".into())
    })?;
    let openid = OpenId::parse(touser).map_err(|e| ApiError::Invalid(e.to_string()))?;
    let msgtype = obj.get("msgtype").and_then(Value::as_str).ok_or_else(|| {
        ApiError::Invalid("the custom/send body needs \"msgtype\" (text, image, news, ...)".into())
    })?;
    if !obj.get(msgtype).is_some_and(Value::is_object) {
        return Err(ApiError::Invalid(format!(
            "the custom/send body has msgtype {msgtype:?} but no {msgtype:?} object with its \
             content"
        )));
    }
    if let Some(cs) = obj.get("customservice")
        && !cs.get("kf_account").is_some_and(Value::is_string)
    {
        return Err(ApiError::Invalid(
            "\"customservice\" must be {\"kf_account\": \"prefix@wechat_id\"}".into(),
        ));
    }
    Ok(openid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_bodies() {
        let ok = json!({"touser":"oU1","msgtype":"text","text":{"content":"hi"}});
        assert_eq!(validate(&ok).unwrap().as_str(), "oU1");
        for (bad, why) in [
            (json!([]), "JSON object"),
            (json!({"msgtype":"text","text":{}}), "touser"),
            (json!({"touser":"o/../x","msgtype":"text","text":{}}), "OpenID"),
            (json!({"touser":"oU1","text":{}}), "msgtype"),
            (json!({"touser":"oU1","msgtype":"image","text":{}}), "no \"image\" object"),
            (
                json!({"touser":"oU1","msgtype":"text","text":{},"customservice":"kf"}),
                "customservice",
            ),
        ] {
            let e = validate(&bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
