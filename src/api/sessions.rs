//! kf session control (protocol §7.2, §7.3): create, close, a follower's session, a kf's
//! sessions, the waiting queue.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::{KfAccount, OpenId};

use super::accounts::{lenient_i64, lenient_string};
use super::client::{ApiClient, Req, decode_as};
use super::error::ApiError;

pub const CREATE_PATH: &str = "/customservice/kfsession/create";
pub const CLOSE_PATH: &str = "/customservice/kfsession/close";
pub const GET_PATH: &str = "/customservice/kfsession/getsession";
pub const LIST_PATH: &str = "/customservice/kfsession/getsessionlist";
pub const WAITING_PATH: &str = "/customservice/kfsession/getwaitcase";

/// A follower's session: `kf_account` empty when nobody is serving them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionInfo {
    #[serde(deserialize_with = "lenient_string")]
    pub kf_account: String,
    /// Unix seconds.
    #[serde(deserialize_with = "lenient_i64")]
    pub createtime: i64,
}

/// One session of a kf account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SessionEntry {
    pub openid: String,
    #[serde(deserialize_with = "lenient_i64")]
    pub createtime: i64,
}

/// One follower waiting for a kf.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaitCase {
    pub openid: String,
    /// Unix seconds of their latest message.
    #[serde(deserialize_with = "lenient_i64")]
    pub latest_time: i64,
}

/// The waiting queue (at most 100 shown, in arrival order).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WaitQueue {
    /// How many are waiting in total.
    #[serde(deserialize_with = "lenient_i64")]
    pub count: i64,
    pub waitcaselist: Vec<WaitCase>,
}

#[derive(Deserialize)]
struct SessionList {
    #[serde(default)]
    sessionlist: Vec<SessionEntry>,
}

impl ApiClient {
    /// `POST /customservice/kfsession/create` `{kf_account, openid}` (the kf must be bound and
    /// online; an existing session is success).
    pub async fn create_session(&self, kf: &KfAccount, openid: &OpenId) -> Result<(), ApiError> {
        let body = json!({ "kf_account": kf.as_str(), "openid": openid.as_str() });
        self.call(&Req::post(CREATE_PATH, &body)).await.map(drop)
    }

    /// `POST /customservice/kfsession/close` `{kf_account, openid}`.
    pub async fn close_session(&self, kf: &KfAccount, openid: &OpenId) -> Result<(), ApiError> {
        let body = json!({ "kf_account": kf.as_str(), "openid": openid.as_str() });
        self.call(&Req::post(CLOSE_PATH, &body)).await.map(drop)
    }

    /// `GET /customservice/kfsession/getsession?openid=`.
    pub async fn get_session(&self, openid: &OpenId) -> Result<SessionInfo, ApiError> {
        let v = self.call(&Req::get(GET_PATH).query("openid", openid.as_str())).await?;
        decode_as(GET_PATH, v)
    }

    /// `GET /customservice/kfsession/getsessionlist?kf_account=`.
    pub async fn list_sessions(&self, kf: &KfAccount) -> Result<Vec<SessionEntry>, ApiError> {
        let v = self.call(&Req::get(LIST_PATH).query("kf_account", kf.as_str())).await?;
        Ok(decode_as::<SessionList>(LIST_PATH, v)?.sessionlist)
    }

    /// `GET /customservice/kfsession/getwaitcase`.
    pub async fn waiting(&self) -> Result<WaitQueue, ApiError> {
        let v = self.call(&Req::get(WAITING_PATH)).await?;
        decode_as(WAITING_PATH, v)
    }
}
