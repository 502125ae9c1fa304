//! The access token (protocol §8): `stable_token` by default, the classic `/cgi-bin/token` as an
//! option. Three layers: an in-memory copy (the hot path), the shared [`TokenCache`](crate::model::TokenCache) (store or
//! Redis, so a restart or a CLI run reuses the token instead of burning the daily quota), and
//! a single-flight fetch guarded in-process by a mutex and across processes by the cache's
//! refresh lock.

use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use crate::config::TokenEndpoint;
use crate::model::{CachedToken, Secret};

use super::client::{ApiClient, Req};
use super::error::ApiError;

/// Where `token_status` found the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenSource {
    /// This process already held it.
    Memory,
    /// The shared cache (the store, Redis) held a valid one.
    Store,
    /// Fetched from WeChat just now.
    Fetched,
}

impl std::fmt::Display for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenSource::Memory => "memory",
            TokenSource::Store => "store",
            TokenSource::Fetched => "fetched",
        })
    }
}

/// The token and where it came from (`kefu token`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    pub source: TokenSource,
    pub token: Secret,
    /// Unix seconds.
    pub expires_at: i64,
    /// Unix seconds.
    pub fetched_at: i64,
}

/// How long a fetcher holds the cross-process refresh lock: far longer than a fetch takes,
/// short enough that a crashed holder does not block the others for long.
const REFRESH_LOCK_TTL: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(100);

pub const STABLE_TOKEN_PATH: &str = "/cgi-bin/stable_token";
pub const CLASSIC_TOKEN_PATH: &str = "/cgi-bin/token";

impl ApiClient {
    /// A valid access token: from memory, else the shared cache, else fetched (once, however
    /// many callers ask at the same time).
    pub async fn access_token(&self) -> Result<Secret, ApiError> {
        Ok(self.token_status().await?.token)
    }

    /// The token with its source and expiry.
    pub async fn token_status(&self) -> Result<TokenInfo, ApiError> {
        if !self.has_credentials() {
            return Err(ApiError::NoCredentials);
        }
        if let Some(t) = self.memory_token() {
            return Ok(info(TokenSource::Memory, t));
        }
        let _flight = self.inner.flight.lock().await;
        // Whoever held the flight before us may have fetched it.
        if let Some(t) = self.memory_token() {
            return Ok(info(TokenSource::Memory, t));
        }
        if let Some(t) = self.cached_token().await? {
            return Ok(info(TokenSource::Store, t));
        }
        let cache = &self.inner.cache;
        let holder = &self.inner.holder;
        let mut locked = cache
            .try_lock_refresh(holder, REFRESH_LOCK_TTL)
            .await
            .map_err(|e| ApiError::Cache(format!("{e:#}")))?;
        if !locked {
            // Another process is fetching: wait for its token rather than fetch a second one
            // (with the classic endpoint a second fetch would invalidate the first).
            let deadline = tokio::time::Instant::now() + self.inner.opts.lock_wait;
            while tokio::time::Instant::now() < deadline {
                tokio::time::sleep(LOCK_POLL).await;
                if let Some(t) = self.cached_token().await? {
                    return Ok(info(TokenSource::Store, t));
                }
                locked = cache
                    .try_lock_refresh(holder, REFRESH_LOCK_TTL)
                    .await
                    .map_err(|e| ApiError::Cache(format!("{e:#}")))?;
                if locked {
                    break;
                }
            }
            if !locked {
                tracing::warn!(
                    "the access-token refresh lock is still held elsewhere; fetching anyway"
                );
            }
        }
        // Re-check after taking the lock: the previous holder may have just saved one.
        let result = match self.cached_token().await {
            Ok(Some(t)) => Ok(info(TokenSource::Store, t)),
            Ok(None) => self.fetch_and_save().await.map(|t| info(TokenSource::Fetched, t)),
            Err(e) => Err(e),
        };
        if locked && let Err(e) = cache.unlock_refresh(holder).await {
            tracing::warn!(error = %format!("{e:#}"), "could not release the token refresh lock");
        }
        result
    }

    /// Forgets `failing` if it is still the current token (compare-and-invalidate), in memory
    /// and in the shared cache, so a late 40001 for an old token cannot discard a newer one.
    pub async fn invalidate_token(&self, failing: &Secret) {
        {
            let mut m = self.inner.memory.lock();
            if m.as_ref().is_some_and(|t| t.token == *failing) {
                *m = None;
            }
        }
        if let Err(e) = self.inner.cache.invalidate(failing.expose()).await {
            tracing::warn!(error = %format!("{e:#}"), "could not invalidate the cached access token");
        }
    }

    fn memory_token(&self) -> Option<CachedToken> {
        let now = self.inner.clock.now_secs();
        let m = self.inner.memory.lock();
        m.as_ref().filter(|t| usable(t, now, self.inner.opts.refresh_margin_secs)).cloned()
    }

    async fn cached_token(&self) -> Result<Option<CachedToken>, ApiError> {
        let loaded =
            self.inner.cache.load().await.map_err(|e| ApiError::Cache(format!("{e:#}")))?;
        let now = self.inner.clock.now_secs();
        Ok(loaded.filter(|t| usable(t, now, self.inner.opts.refresh_margin_secs)).inspect(|t| {
            *self.inner.memory.lock() = Some(t.clone());
        }))
    }

    async fn fetch_and_save(&self) -> Result<CachedToken, ApiError> {
        let i = &self.inner;
        let (path, answer) = match i.endpoint {
            TokenEndpoint::Stable => {
                // Without force_refresh WeChat returns the current token while it is valid, so
                // several fetchers converge on one token (interface §6.10).
                let body = json!({
                    "grant_type": "client_credential",
                    "appid": i.app_id,
                    "secret": i.app_secret.expose(),
                    "force_refresh": false,
                });
                (
                    STABLE_TOKEN_PATH,
                    self.call_anonymous(&Req::post(STABLE_TOKEN_PATH, &body)).await?,
                )
            }
            TokenEndpoint::Classic => {
                let req = Req::get(CLASSIC_TOKEN_PATH)
                    .query("grant_type", "client_credential")
                    .query("appid", i.app_id.clone())
                    .query("secret", i.app_secret.expose().to_string());
                (CLASSIC_TOKEN_PATH, self.call_anonymous(&req).await?)
            }
        };
        let token = parse_token(path, &answer, i.clock.now_secs())?;
        // Debug, not info: every CLI run fetches or reads one, and its stderr is for errors.
        tracing::debug!(
            endpoint = path,
            expires_at = token.expires_at,
            "fetched a new access token"
        );
        if let Err(e) = i.cache.save(&token).await {
            // The token is still good for this process; others will fetch their own.
            tracing::warn!(error = %format!("{e:#}"), "could not save the access token to the shared cache");
        }
        *i.memory.lock() = Some(token.clone());
        Ok(token)
    }
}

fn info(source: TokenSource, t: CachedToken) -> TokenInfo {
    TokenInfo { source, token: t.token, expires_at: t.expires_at, fetched_at: t.fetched_at }
}

/// Usable until `margin` seconds before expiry — but never less than half the lifetime, since
/// `stable_token` may hand out a token with only 300 s left and a fixed 300 s margin would
/// refetch it on every call.
pub(crate) fn usable(t: &CachedToken, now: i64, margin: i64) -> bool {
    let life = (t.expires_at - t.fetched_at).max(0);
    let margin = margin.min(life / 2).max(0);
    !t.token.is_empty() && now < t.expires_at - margin
}

fn parse_token(path: &str, v: &Value, now: i64) -> Result<CachedToken, ApiError> {
    let token = v.get("access_token").and_then(Value::as_str).unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::Decode {
            path: path.to_string(),
            detail: "the answer has no access_token".into(),
        });
    }
    let expires_in = v
        .get("expires_in")
        .and_then(|e| e.as_i64().or_else(|| e.as_str().and_then(|s| s.parse().ok())))
        .filter(|e| *e > 0)
        .unwrap_or(7200);
    Ok(CachedToken { token: Secret::new(token), expires_at: now + expires_in, fetched_at: now })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(fetched_at: i64, expires_at: i64) -> CachedToken {
        CachedToken { token: Secret::new("t"), expires_at, fetched_at }
    }

    #[test]
    fn refreshed_ahead_of_expiry() {
        let t = tok(1000, 8200);
        assert!(usable(&t, 1000, 300));
        assert!(usable(&t, 7899, 300));
        assert!(!usable(&t, 7900, 300));
        // A 300 s token from stable_token is used for its first half.
        let short = tok(1000, 1300);
        assert!(usable(&short, 1149, 300));
        assert!(!usable(&short, 1150, 300));
        assert!(!usable(&tok(1000, 900), 950, 300));
    }

    #[test]
    fn parses_answers() {
        let t =
            parse_token("/p", &json!({"access_token":"ACCESS","expires_in":7200}), 100).unwrap();
        assert_eq!((t.token.expose(), t.fetched_at, t.expires_at), ("ACCESS", 100, 7300));
        assert!(matches!(
            parse_token("/p", &json!({"expires_in":7200}), 0),
            Err(ApiError::Decode { .. })
        ));
    }
}
