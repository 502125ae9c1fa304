//! `kefu token [--reveal] [--json]` (interface §1): reads the cached access token or fetches
//! one, and prints where it came from and when it expires; the token itself only with
//! `--reveal`. Also the one place the API commands build their client and turn an
//! [`ApiError`] into an exit code.

use std::sync::Arc;

use serde_json::json;

use crate::api::{ApiClient, ApiError};
use crate::cli::{CmdError, CmdResult, TokenArgs};
use crate::config::Config;
use crate::model::{Clock, SharedClock, SystemClock};
use crate::store::Store;

/// The API client every API command uses. It refuses to start without credentials (exit 2,
/// naming the variables to set). Its token cache is the store's, so a CLI run reuses the
/// token `serve` holds instead of fetching one (interface §6.10).
pub async fn api_client(cfg: &Config) -> Result<ApiClient, CmdError> {
    if !cfg.wechat.has_credentials() {
        return Err(ApiError::NoCredentials.into());
    }
    let store = cli_store(cfg).await?;
    api_client_with(cfg, &store)
}

/// The client over an already opened store.
pub fn api_client_with(cfg: &Config, store: &Arc<dyn Store>) -> Result<ApiClient, CmdError> {
    if !cfg.wechat.has_credentials() {
        return Err(ApiError::NoCredentials.into());
    }
    let clock: SharedClock = Arc::new(SystemClock);
    ApiClient::new(&cfg.wechat, store.token_cache(), clock).map_err(CmdError::Failed)
}

/// The store as a CLI process opens it, beside a running `serve`.
pub async fn cli_store(cfg: &Config) -> Result<Arc<dyn Store>, CmdError> {
    let clock: SharedClock = Arc::new(SystemClock);
    crate::service::open_store(cfg, crate::service::Role::Cli, clock)
        .await
        .map(|(store, _)| store)
        .map_err(|e| CmdError::failed(format!("{e:#}")))
}

/// Bad input and missing configuration are usage errors (exit 2); everything WeChat or the
/// network says is an operation failure (exit 1).
impl From<ApiError> for CmdError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::NoCredentials | ApiError::Invalid(_) => CmdError::Usage(e.to_string()),
            other => CmdError::Failed(anyhow::Error::new(other)),
        }
    }
}

/// Unix seconds as RFC 3339 UTC (`-` for none).
pub(crate) fn fmt_time(secs: i64) -> String {
    if secs <= 0 {
        return "-".into();
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub async fn run(cfg: &Config, args: &TokenArgs) -> CmdResult {
    let client = api_client(cfg).await?;
    let info = client.token_status().await?;
    let now = SystemClock.now_secs();
    let left = (info.expires_at - now).max(0);
    if args.json {
        let mut v = json!({
            "source": info.source,
            "fetched_at": info.fetched_at,
            "expires_at": info.expires_at,
            "expires_in": left,
        });
        if args.reveal {
            v["access_token"] = json!(info.token.expose());
        }
        println!("{v}");
        return Ok(());
    }
    let from = match info.source {
        crate::api::TokenSource::Memory => "this process",
        crate::api::TokenSource::Store => "the token cache",
        crate::api::TokenSource::Fetched => "fetched from WeChat just now",
    };
    println!("source:     {} ({from})", info.source);
    println!("fetched at: {}", fmt_time(info.fetched_at));
    println!(
        "expires at: {} (in {})",
        fmt_time(info.expires_at),
        humantime::format_duration(std::time::Duration::from_secs(left as u64))
    );
    if args.reveal {
        println!("token:      {}", info.token.expose());
    }
    Ok(())
}
