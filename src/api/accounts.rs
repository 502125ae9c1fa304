//! Customer-service (kf) account management (protocol §7.1–§7.3): list, online list, add,
//! update, invite a staff member to bind, delete, avatar upload. Response structs deserialize
//! leniently: WeChat's docs and answers disagree on whether ids and times are strings or
//! numbers, and fields come and go.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Value, json};

use crate::model::KfAccount;

use super::client::{ApiClient, Method, Payload, Req, decode_as};
use super::error::{ApiError, ErrorCode};

pub const LIST_PATH: &str = "/cgi-bin/customservice/getkflist";
pub const ONLINE_PATH: &str = "/cgi-bin/customservice/getonlinekflist";
pub const ADD_PATH: &str = "/customservice/kfaccount/add";
pub const UPDATE_PATH: &str = "/customservice/kfaccount/update";
pub const DELETE_PATH: &str = "/customservice/kfaccount/del";
pub const INVITE_PATH: &str = "/customservice/kfaccount/inviteworker";
pub const AVATAR_PATH: &str = "/customservice/kfaccount/uploadheadimg";

/// The avatar upload limit (protocol §7.2).
pub const MAX_AVATAR_BYTES: usize = 5 * 1024 * 1024;

/// One kf account from `getkflist`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KfInfo {
    pub kf_account: String,
    pub kf_nick: String,
    #[serde(deserialize_with = "lenient_string")]
    pub kf_id: String,
    pub kf_headimgurl: String,
    /// The bound staff member's WeChat ID.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt_string")]
    pub kf_wx: Option<String>,
    /// A pending invitation's WeChat ID.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt_string")]
    pub invite_wx: Option<String>,
    /// Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt_i64")]
    pub invite_expire_time: Option<i64>,
    /// `waiting`, `rejected` or `expired`.
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt_string")]
    pub invite_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt_string")]
    pub kf_openid: Option<String>,
}

/// One kf account from `getonlinekflist`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KfOnline {
    pub kf_account: String,
    /// 0 offline, 1 web online (older SDKs: 1 PC, 2 mobile, 3 both).
    #[serde(deserialize_with = "lenient_i64")]
    pub status: i64,
    #[serde(deserialize_with = "lenient_string")]
    pub kf_id: String,
    /// Sessions being handled now.
    #[serde(deserialize_with = "lenient_i64")]
    pub accepted_case: i64,
    #[serde(skip_serializing_if = "Option::is_none", deserialize_with = "lenient_opt_i64")]
    pub auto_accept: Option<i64>,
}

#[derive(Deserialize)]
struct KfList {
    #[serde(default)]
    kf_list: Vec<KfInfo>,
}

#[derive(Deserialize)]
struct KfOnlineList {
    #[serde(default)]
    kf_online_list: Vec<KfOnline>,
}

impl ApiClient {
    /// `GET /cgi-bin/customservice/getkflist`.
    pub async fn list_accounts(&self) -> Result<Vec<KfInfo>, ApiError> {
        let v = self.call(&Req::get(LIST_PATH)).await?;
        Ok(decode_as::<KfList>(LIST_PATH, v)?.kf_list)
    }

    /// `GET /cgi-bin/customservice/getonlinekflist`.
    pub async fn online_accounts(&self) -> Result<Vec<KfOnline>, ApiError> {
        let v = self.call(&Req::get(ONLINE_PATH)).await?;
        Ok(decode_as::<KfOnlineList>(ONLINE_PATH, v)?.kf_online_list)
    }

    /// `POST /customservice/kfaccount/add` `{kf_account, nickname}`.
    pub async fn add_account(&self, kf: &KfAccount, nickname: &str) -> Result<(), ApiError> {
        let nickname = check_nickname(nickname)?;
        let body = json!({ "kf_account": kf.as_str(), "nickname": nickname });
        self.call(&Req::post(ADD_PATH, &body)).await.map(drop)
    }

    /// `POST /customservice/kfaccount/update` `{kf_account, nickname}`.
    pub async fn update_account(&self, kf: &KfAccount, nickname: &str) -> Result<(), ApiError> {
        let nickname = check_nickname(nickname)?;
        let body = json!({ "kf_account": kf.as_str(), "nickname": nickname });
        self.call(&Req::post(UPDATE_PATH, &body)).await.map(drop)
    }

    /// `POST /customservice/kfaccount/inviteworker` `{kf_account, invite_wx}`: asks the staff
    /// member with WeChat ID `invite_wx` to bind to the account.
    pub async fn invite_worker(&self, kf: &KfAccount, invite_wx: &str) -> Result<(), ApiError> {
        let invite_wx = invite_wx.trim();
        if invite_wx.is_empty() || invite_wx.len() > 64 || invite_wx.contains(char::is_whitespace) {
            return Err(ApiError::Invalid(format!(
                "{invite_wx:?} is not a WeChat ID: give the staff member's 微信号 (no spaces)"
            )));
        }
        let body = json!({ "kf_account": kf.as_str(), "invite_wx": invite_wx });
        self.call(&Req::post(INVITE_PATH, &body)).await.map(drop)
    }

    /// Deletes a kf account: the documented `POST /customservice/kfaccount/del` with
    /// `{kf_account}` first; the SDKs' `GET ...?kf_account=` only when the POST is refused as
    /// an unknown method or path (HTTP 404/405, or errcode 43001 "require GET") — interface
    /// §6.11. Any other refusal is returned as is.
    pub async fn delete_account(&self, kf: &KfAccount) -> Result<(), ApiError> {
        let body = json!({ "kf_account": kf.as_str() });
        match self.call(&Req::post(DELETE_PATH, &body)).await {
            Ok(_) => Ok(()),
            Err(e) if refused_as_unknown_method(&e) => {
                tracing::info!(error = %e, "POST kfaccount/del refused; using the GET form");
                // A write despite the GET: an ambiguous failure must not be retried.
                let req = Req::get(DELETE_PATH).query("kf_account", kf.as_str()).write();
                self.call(&req).await.map(drop)
            }
            Err(e) => Err(e),
        }
    }

    /// `POST /customservice/kfaccount/uploadheadimg?kf_account=...`, multipart field `media`.
    pub async fn upload_avatar(
        &self,
        kf: &KfAccount,
        bytes: &[u8],
        filename: &str,
    ) -> Result<(), ApiError> {
        if bytes.is_empty() {
            return Err(ApiError::Invalid(format!("the avatar file {filename} is empty")));
        }
        if bytes.len() > MAX_AVATAR_BYTES {
            return Err(ApiError::Invalid(format!(
                "the avatar file {filename} is {} bytes; WeChat takes at most 5 MB",
                bytes.len()
            )));
        }
        let mime = image_mime(bytes).ok_or_else(|| {
            ApiError::Invalid(format!(
                "{filename} is not a JPEG or PNG image; upload a JPEG (640×640 recommended)"
            ))
        })?;
        let req = Req {
            method: Method::Post,
            path: AVATAR_PATH,
            query: vec![("kf_account", kf.as_str().to_string())],
            payload: Payload::File { field: "media", bytes, filename, mime },
            read: false,
        };
        self.call(&req).await.map(drop)
    }
}

fn refused_as_unknown_method(e: &ApiError) -> bool {
    match e {
        ApiError::Status { status, .. } => matches!(status, 404 | 405),
        _ => e.error_code() == Some(ErrorCode::RequireGet),
    }
}

fn check_nickname(nickname: &str) -> Result<&str, ApiError> {
    let n = nickname.trim();
    let chars = n.chars().count();
    if chars == 0 || chars > 16 {
        return Err(ApiError::Invalid(format!(
            "a kf nickname has 1 to 16 characters (got {chars})"
        )));
    }
    Ok(n)
}

/// Sniffs the image type from its first bytes (the file name may lie or be missing).
fn image_mime(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else {
        None
    }
}

// Lenient field decoders: a string, a number or null all become the Rust type.

pub(crate) fn lenient_string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    Ok(lenient_opt_string(d)?.unwrap_or_default())
}

pub(crate) fn lenient_opt_string<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    })
}

pub(crate) fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    Ok(lenient_opt_i64(d)?.unwrap_or_default())
}

pub(crate) fn lenient_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Ok(match Value::deserialize(d)? {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kf_list_decodes_both_doc_shapes() {
        let v = json!({"kf_list":[
            {"kf_account":"a@gh","kf_nick":"A","kf_id":"1001","kf_headimgurl":"http://x",
             "invite_wx":"wx_a","invite_expire_time":"1700000000","invite_status":"waiting"},
            {"kf_account":"b@gh","kf_nick":"B","kf_id":1002,"kf_headimgurl":"","kf_wx":"wx_b",
             "invite_expire_time":1700000001,"unknown_future_field":[1]},
            {"kf_account":"c@gh"}
        ]});
        let l = decode_as::<KfList>("/p", v).unwrap().kf_list;
        assert_eq!(l[0].kf_id, "1001");
        assert_eq!(l[0].invite_expire_time, Some(1700000000));
        assert_eq!(l[1].kf_id, "1002");
        assert_eq!(l[1].kf_wx.as_deref(), Some("wx_b"));
        assert_eq!(l[1].invite_expire_time, Some(1700000001));
        assert_eq!(l[2], KfInfo { kf_account: "c@gh".into(), ..KfInfo::default() });
    }

    #[test]
    fn online_list_decodes() {
        let v = json!({"kf_online_list":[
            {"kf_account":"a@gh","status":1,"kf_id":"1001","accepted_case":"2","auto_accept":0}
        ]});
        let l = decode_as::<KfOnlineList>("/p", v).unwrap().kf_online_list;
        assert_eq!((l[0].status, l[0].accepted_case, l[0].auto_accept), (1, 2, Some(0)));
    }

    #[test]
    fn nickname_and_image_checks() {
        assert!(check_nickname("客服小王").is_ok());
        assert!(check_nickname("").is_err());
        assert!(check_nickname(&"x".repeat(17)).is_err());
        assert_eq!(image_mime(&[0xFF, 0xD8, 0xFF, 0xE0]), Some("image/jpeg"));
        assert_eq!(image_mime(b"GIF89a"), None);
    }
}
