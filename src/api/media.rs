//! Temporary media upload (interface §9): `POST /cgi-bin/media/upload?type=…`, multipart field
//! `media`, through the client's one retry loop (token refresh once, backoff for refusals).
//! WeChat keeps temporary media 3 days; kefu's cache (`crate::media`) replaces ids before then.

use serde::Deserialize;

use super::client::{ApiClient, Method, Payload, Req, decode_as};
use super::error::ApiError;
use crate::media::MediaType;

pub const UPLOAD_PATH: &str = "/cgi-bin/media/upload";

/// WeChat's answer to an upload: `{"type","media_id","created_at"}`; a thumb's id comes as
/// `thumb_media_id` instead.
#[derive(Debug, Deserialize)]
struct RawUploaded {
    #[serde(default)]
    media_id: Option<String>,
    #[serde(default)]
    thumb_media_id: Option<String>,
    #[serde(default)]
    created_at: Option<i64>,
}

/// An upload WeChat accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub media_id: String,
    /// Unix seconds, as WeChat reported it (None when it did not).
    pub created_at: Option<i64>,
}

impl ApiClient {
    /// Uploads `bytes` as temporary media of type `media_type`, named `filename` with the
    /// multipart part's `mime` type. Errors: WeChat's (40004 bad type, 40005 bad file type,
    /// 40006 bad size, 45009 daily quota, …) as [`ApiError::Api`], transport errors as the
    /// client reports them, an answer without a media id as [`ApiError::Decode`].
    pub async fn upload_media(
        &self,
        media_type: MediaType,
        bytes: &[u8],
        filename: &str,
        mime: &'static str,
    ) -> Result<Uploaded, ApiError> {
        let req = Req {
            method: Method::Post,
            path: UPLOAD_PATH,
            query: vec![("type", media_type.as_str().to_string())],
            payload: Payload::File { field: "media", bytes, filename, mime },
            // An upload that may have happened twice only leaves an unused temporary media at
            // WeChat (it expires in 3 days), so even an ambiguous failure is retried.
            read: true,
        };
        let v = self.call(&req).await?;
        let raw: RawUploaded = decode_as(UPLOAD_PATH, v)?;
        let media_id =
            raw.media_id.or(raw.thumb_media_id).filter(|m| !m.is_empty()).ok_or_else(|| {
                ApiError::Decode {
                    path: UPLOAD_PATH.to_string(),
                    detail: "the answer has neither media_id nor thumb_media_id".into(),
                }
            })?;
        Ok(Uploaded { media_id, created_at: raw.created_at })
    }
}
