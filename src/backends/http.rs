//! The `http` backend (interface §7.3): `POST url` with the [`ForwardRequest`] as raw UTF-8
//! JSON, signed when `secret` is set (`X-Kefu-Timestamp`, `X-Kefu-Signature: sha256=<hex
//! HMAC-SHA256(secret, "<timestamp>.<body>")>`), answered `200 {"replies":[…]}`. Timeouts,
//! connection errors and 5xx are retried with backoff; a 4xx or a malformed body is not.
//! The secret is only ever put into the HMAC: no log line, error or `Debug` output holds it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{Answer, Backend, BackendDeps, CallError, ForwardRequest, parse_answer, with_retries};
use crate::config::{BackendConfig, HttpConfig};
use crate::metrics::Metrics;
use crate::model::{Secret, SharedClock};

/// The request header carrying the signing time (Unix seconds).
pub const TIMESTAMP_HEADER: &str = "X-Kefu-Timestamp";
/// The request header carrying `sha256=<hex HMAC>`.
pub const SIGNATURE_HEADER: &str = "X-Kefu-Signature";

/// `sha256=` and the lower-case hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`
/// (interface §7.3). What a backend recomputes to check a request.
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .expect("HMAC-SHA256 takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `url` as messages show it: no user info, no query (either may hold a credential).
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "the backend's url".to_string(),
    }
}

/// `kind = "http"`.
pub struct HttpBackend {
    name: String,
    url: String,
    /// `url` without user info and query (which may carry credentials): what errors and logs
    /// name.
    shown_url: String,
    secret: Secret,
    timeout: Duration,
    retries: u32,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    rules_dir: PathBuf,
}

impl std::fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpBackend")
            .field("name", &self.name)
            .field("url", &self.shown_url)
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .finish()
    }
}

impl HttpBackend {
    pub fn new(cfg: &BackendConfig, http: &HttpConfig, deps: &BackendDeps) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(cfg.timeout))
            .timeout(cfg.timeout)
            .user_agent(concat!("kefu/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(HttpBackend {
            name: cfg.name.clone(),
            url: http.url.clone(),
            shown_url: shown_url(&http.url),
            secret: http.secret.clone(),
            timeout: cfg.timeout,
            retries: cfg.retries,
            http: client,
            metrics: deps.metrics.clone(),
            clock: deps.clock.clone(),
            rules_dir: deps.rules_dir.clone(),
        })
    }

    /// One attempt.
    async fn attempt(&self, req: &ForwardRequest, body: &[u8]) -> Result<Answer, CallError> {
        let mut r = self
            .http
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
            .body(body.to_vec());
        if !self.secret.is_empty() {
            let ts = self.clock.now_ms().div_euclid(1000);
            r = r
                .header(TIMESTAMP_HEADER, ts.to_string())
                .header(SIGNATURE_HEADER, signature(self.secret.expose(), ts, body));
        }
        let resp = r.send().await.map_err(|e| self.transport(e))?;
        let code = resp.status().as_u16();
        let retry_after = crate::api::error::retry_after(&resp);
        let bytes = resp.bytes().await.map_err(|e| self.transport(e))?;
        if !(200..300).contains(&code) {
            let body: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(CallError::Status { url: self.shown_url.clone(), code, body, retry_after });
        }
        parse_answer(&bytes, &req.rule, &self.rules_dir, &self.shown_url)
    }

    fn transport(&self, e: reqwest::Error) -> CallError {
        if e.is_timeout() {
            CallError::Timeout { url: self.shown_url.clone(), after: self.timeout }
        } else {
            CallError::Connect { cause: crate::api::error::transport_cause(&e) }
        }
    }
}

#[async_trait]
impl Backend for HttpBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn call(&self, req: &ForwardRequest) -> Result<Answer, CallError> {
        // Serialized once: every attempt sends the same bytes (signed afresh with its time).
        let body = serde_json::to_vec(req)
            .map_err(|e| CallError::Unusable(format!("cannot serialize the request: {e}")))?;
        with_retries(&self.name, &req.id, self.retries, &self.metrics, |_| self.attempt(req, &body))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_urls_hide_credentials() {
        assert_eq!(
            shown_url("https://user:pw@orders.example.com:8443/kefu?token=s3cret#x"),
            "https://orders.example.com:8443/kefu"
        );
        assert_eq!(shown_url("http://127.0.0.1:9000/kefu"), "http://127.0.0.1:9000/kefu");
    }

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body() {
        // Python: hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
        let sig = signature("s3cret", 1_700_000_000, b"{}");
        assert_eq!(sig, "sha256=97926816e98fbb41ccb1673225ff29a2f35369099990e1b1561651e7bd097ebf");
        assert_ne!(sig, signature("s3cret", 1_700_000_001, b"{}"));
        assert_ne!(sig, signature("other", 1_700_000_000, b"{}"));
    }
}
