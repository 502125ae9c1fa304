//! `kefu token [--reveal] [--json]` (interface §1): reads the cached access token or fetches
//! one, and prints where it came from and when it expires; the token itself only with
//! `--reveal`.

use clap::Args;
use serde_json::json;

use super::common::{CmdResult, api_client, fmt_time};
use crate::config::Config;
use crate::model::{Clock, SystemClock};

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Print the token itself (a secret: keep it out of logs and tickets).
    #[arg(long)]
    pub reveal: bool,
    /// Print source, fetch time and expiry as JSON.
    #[arg(long)]
    pub json: bool,
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
        crate::outln!("{v}")?;
        return Ok(());
    }
    let from = match info.source {
        crate::api::TokenSource::Memory => "this process",
        crate::api::TokenSource::Store => "the token cache",
        crate::api::TokenSource::Fetched => "fetched from WeChat just now",
    };
    crate::outln!("source:     {} ({from})", info.source)?;
    crate::outln!("fetched at: {}", fmt_time(info.fetched_at))?;
    crate::outln!(
        "expires at: {} (in {})",
        fmt_time(info.expires_at),
        humantime::format_duration(std::time::Duration::from_secs(left as u64))
    )?;
    if args.reveal {
        crate::outln!("token:      {}", info.token.expose())?;
    }
    Ok(())
}
