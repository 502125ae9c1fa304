//! The HTTP core of the WeChat API client: one shared reqwest client, the `{errcode, errmsg}`
//! envelope, and the one retry loop every call goes through (token refresh once, bounded
//! backoff for refusals, never a retry of a request that may have been acted on).

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::Value;

use crate::config::{TokenEndpoint, WechatConfig};
use crate::model::{CachedToken, Secret, SharedClock, TokenCache};

use super::error::{ApiError, transport};

/// How often and how fast calls are retried.
///
/// Retried: requests that never reached WeChat (connect errors) and answers that say WeChat did
/// nothing (`-1` busy, `45011` minute quota). Not retried: anything that may have been acted
/// on — a timeout or a dropped connection after the request was written — unless the call is a
/// read, or `retry_ambiguous` is set (for sends a duplicate message is worse than a missing
/// one, so it is off by default).
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in total for retriable failures (1 = no retry).
    pub max_attempts: u32,
    /// Delay before the first retry; doubled each time up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// Also retry writes (sends, account changes) whose outcome is unknown.
    pub retry_ambiguous: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(4),
            retry_ambiguous: false,
        }
    }
}

impl RetryPolicy {
    fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(16)).unwrap_or(u32::MAX);
        self.base_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// Client tuning; [`ApiClient::new`] uses the defaults.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    pub connect_timeout: Duration,
    /// Whole-request timeout. WeChat answers in well under a second; a send stuck longer than
    /// this is reported as ambiguous.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
    /// A token is refreshed this many seconds before it expires (at most half its lifetime).
    pub refresh_margin_secs: i64,
    /// How long to wait for another process that holds the cross-process refresh lock.
    pub lock_wait: Duration,
}

impl Default for ApiOptions {
    fn default() -> Self {
        ApiOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            refresh_margin_secs: 300,
            lock_wait: Duration::from_secs(5),
        }
    }
}

/// The WeChat API client. Cheap to clone: everything lives behind one `Arc`, so `serve`, its
/// workers and the admin routes share one connection pool and one access token.
#[derive(Clone)]
pub struct ApiClient {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) app_id: String,
    pub(super) app_secret: Secret,
    pub(super) endpoint: TokenEndpoint,
    pub(super) cache: Arc<dyn TokenCache>,
    pub(super) clock: SharedClock,
    pub(super) opts: ApiOptions,
    /// The in-process copy of the token, so a hot path never touches the store.
    pub(super) memory: parking_lot::Mutex<Option<CachedToken>>,
    /// In-process single flight: one fetch at a time, everyone else waits and reuses it.
    pub(super) flight: tokio::sync::Mutex<()>,
    /// This client's name for the cross-process refresh lock.
    pub(super) holder: String,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.inner.base)
            .field("app_id", &self.inner.app_id)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
}

/// What a request carries.
pub(crate) enum Payload<'a> {
    Empty,
    Json(&'a Value),
    /// One file in a multipart form (avatar upload). Rebuilt per attempt because a form is
    /// consumed by sending it.
    File {
        field: &'static str,
        bytes: &'a [u8],
        filename: &'a str,
        mime: &'static str,
    },
}

/// One API request, before the token is added.
pub(crate) struct Req<'a> {
    pub method: Method,
    pub path: &'a str,
    pub query: Vec<(&'static str, String)>,
    pub payload: Payload<'a>,
    /// Changes nothing at WeChat, so even an ambiguous failure may be retried.
    pub read: bool,
}

impl<'a> Req<'a> {
    pub fn get(path: &'a str) -> Self {
        Req { method: Method::Get, path, query: Vec::new(), payload: Payload::Empty, read: true }
    }
    pub fn post(path: &'a str, body: &'a Value) -> Self {
        Req {
            method: Method::Post,
            path,
            query: Vec::new(),
            payload: Payload::Json(body),
            read: false,
        }
    }
    pub fn query(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }
    /// Marks a GET that changes something at WeChat (the fallback kf delete).
    pub fn write(mut self) -> Self {
        self.read = false;
        self
    }
}

impl ApiClient {
    /// A client for `cfg.api_base` with default timeouts and retries. `cache` holds the access
    /// token between processes (the store's cache in `serve` and the CLI, a
    /// `MemoryTokenCache` in tests).
    pub fn new(
        cfg: &WechatConfig,
        cache: Arc<dyn TokenCache>,
        clock: SharedClock,
    ) -> anyhow::Result<ApiClient> {
        Self::with_options(cfg, cache, clock, ApiOptions::default())
    }

    pub fn with_options(
        cfg: &WechatConfig,
        cache: Arc<dyn TokenCache>,
        clock: SharedClock,
        opts: ApiOptions,
    ) -> anyhow::Result<ApiClient> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(opts.connect_timeout)
            .timeout(opts.request_timeout)
            .user_agent(concat!("kefu/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {}", e.without_url()))?;
        let holder = format!("kefu-{}-{:016x}", std::process::id(), rand::random::<u64>());
        Ok(ApiClient {
            inner: Arc::new(Inner {
                http,
                base: cfg.api_base.trim_end_matches('/').to_string(),
                app_id: cfg.app_id.clone(),
                app_secret: cfg.app_secret.clone(),
                endpoint: cfg.token_endpoint,
                cache,
                clock,
                opts,
                memory: parking_lot::Mutex::new(None),
                flight: tokio::sync::Mutex::new(()),
                holder,
            }),
        })
    }

    /// The API root this client talks to.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Whether app_id and app_secret are configured (else every call is `NoCredentials`).
    /// The one dry-run decision: without them `serve`'s sender, `kefu send` and
    /// `POST /admin/send` log what they would send instead of sending it.
    pub fn has_credentials(&self) -> bool {
        !self.inner.app_id.is_empty() && !self.inner.app_secret.is_empty()
    }

    /// One authenticated call with the full policy:
    /// - a token error (40001/40014/42001) invalidates the token if it is still the cached one,
    ///   refreshes it and retries the call once — only once;
    /// - a retriable failure (not sent, -1, 45011) is retried with exponential backoff, at most
    ///   `retry.max_attempts` attempts in total;
    /// - an ambiguous failure is returned at once, except for reads (or with
    ///   `retry_ambiguous`).
    ///
    /// Every path through the loop consumes one of those two bounded budgets, so it ends.
    pub(crate) async fn call(&self, req: &Req<'_>) -> Result<Value, ApiError> {
        let policy = &self.inner.opts.retry;
        let mut token_retried = false;
        let mut attempt: u32 = 1;
        loop {
            let token = self.access_token().await?;
            let err = match self.once(req, Some(&token)).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if err.is_token_error() && !token_retried {
                token_retried = true;
                tracing::warn!(
                    path = req.path,
                    errcode = err.errcode(),
                    "access token refused; refreshing it and retrying once"
                );
                self.invalidate_token(&token).await;
                continue;
            }
            let again =
                err.is_retriable() || (err.is_ambiguous() && (req.read || policy.retry_ambiguous));
            if again && attempt < policy.max_attempts {
                let delay = policy.delay(attempt - 1);
                tracing::warn!(path = req.path, attempt, error = %err, ?delay, "retrying");
                tokio::time::sleep(delay).await;
                attempt += 1;
                continue;
            }
            return Err(err);
        }
    }

    /// A call without a token (the token endpoints), retried like [`Self::call`] minus the token
    /// step.
    pub(super) async fn call_anonymous(&self, req: &Req<'_>) -> Result<Value, ApiError> {
        let policy = &self.inner.opts.retry;
        let mut attempt: u32 = 1;
        loop {
            match self.once(req, None).await {
                Ok(v) => return Ok(v),
                Err(e) if e.is_retriable() && attempt < policy.max_attempts => {
                    let delay = policy.delay(attempt - 1);
                    tracing::warn!(path = req.path, attempt, error = %e, ?delay, "retrying");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Exactly one HTTP exchange, decoded through the `{errcode, errmsg}` envelope.
    async fn once(&self, req: &Req<'_>, token: Option<&Secret>) -> Result<Value, ApiError> {
        let url = format!("{}{}", self.inner.base, req.path);
        let mut query: Vec<(&str, &str)> = Vec::with_capacity(req.query.len() + 1);
        if let Some(t) = token {
            query.push(("access_token", t.expose()));
        }
        query.extend(req.query.iter().map(|(k, v)| (*k, v.as_str())));
        let mut rb = match req.method {
            Method::Get => self.inner.http.get(&url),
            Method::Post => self.inner.http.post(&url),
        };
        if !query.is_empty() {
            rb = rb.query(&query);
        }
        rb = match &req.payload {
            Payload::Empty => rb,
            Payload::Json(v) => {
                // serde_json writes non-ASCII as raw UTF-8; WeChat refuses \u escapes (40033).
                let bytes = serde_json::to_vec(v)
                    .map_err(|e| ApiError::Invalid(format!("cannot encode the body: {e}")))?;
                rb.header(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"))
                    .body(bytes)
            }
            Payload::File { field, bytes, filename, mime } => {
                let part = reqwest::multipart::Part::bytes(bytes.to_vec())
                    .file_name(filename.to_string())
                    .mime_str(mime)
                    .map_err(|e| ApiError::Invalid(format!("bad media type {mime}: {e}")))?;
                rb.multipart(reqwest::multipart::Form::new().part(*field, part))
            }
        };
        let resp = rb.send().await.map_err(|e| transport(req.path, e))?;
        let status = resp.status().as_u16();
        // A failure while reading the body means the request was processed (or at least
        // received): ambiguous, never "not sent".
        let body = resp.bytes().await.map_err(|e| transport_after_send(req.path, e))?;
        decode_envelope(req.path, status, &body)
    }
}

fn transport_after_send(path: &str, e: reqwest::Error) -> ApiError {
    match transport(path, e) {
        ApiError::NotSent { path, detail } => ApiError::Ambiguous { path, detail },
        other => other,
    }
}

/// The `{errcode, errmsg}` envelope: errcode 0 or absent = success (check errcode only; some
/// successes carry an empty errmsg).
pub(crate) fn decode_envelope(path: &str, status: u16, body: &[u8]) -> Result<Value, ApiError> {
    let parsed: Result<Value, _> = serde_json::from_slice(body);
    if let Ok(v) = &parsed
        && let Some(code) = v.get("errcode").and_then(errcode_of)
        && code != 0
    {
        let errmsg = v.get("errmsg").and_then(Value::as_str).unwrap_or_default().to_string();
        return Err(ApiError::Api { code, errmsg });
    }
    if status != 200 {
        return Err(ApiError::Status { path: path.to_string(), status });
    }
    match parsed {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(other) => Err(ApiError::Decode {
            path: path.to_string(),
            detail: format!("expected a JSON object, got {}", kind_of(&other)),
        }),
        Err(e) => {
            Err(ApiError::Decode { path: path.to_string(), detail: format!("not JSON ({e})") })
        }
    }
}

/// errcode arrives as a number; tolerate a numeric string.
fn errcode_of(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Decodes a successful answer into `T`, naming the path on failure.
pub(crate) fn decode_as<T: serde::de::DeserializeOwned>(
    path: &str,
    v: Value,
) -> Result<T, ApiError> {
    serde_json::from_value(v)
        .map_err(|e| ApiError::Decode { path: path.to_string(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope() {
        assert!(decode_envelope("/p", 200, br#"{"errcode":0,"errmsg":""}"#).is_ok());
        assert!(decode_envelope("/p", 200, br#"{"access_token":"x","expires_in":7200}"#).is_ok());
        assert_eq!(
            decode_envelope("/p", 200, br#"{"errcode":45015,"errmsg":"out of time"}"#),
            Err(ApiError::Api { code: 45015, errmsg: "out of time".into() })
        );
        assert_eq!(
            decode_envelope("/p", 200, br#"{"errcode":"-1","errmsg":"busy"}"#),
            Err(ApiError::Api { code: -1, errmsg: "busy".into() })
        );
        assert_eq!(
            decode_envelope("/p", 404, b"<html>not found</html>"),
            Err(ApiError::Status { path: "/p".into(), status: 404 })
        );
        assert!(matches!(decode_envelope("/p", 200, b"[1]"), Err(ApiError::Decode { .. })));
        assert!(matches!(decode_envelope("/p", 200, b"oops"), Err(ApiError::Decode { .. })));
    }

    #[test]
    fn backoff_is_bounded() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay(0), Duration::from_millis(500));
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(40), Duration::from_secs(4));
    }
}
