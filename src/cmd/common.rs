//! What every command shares: how a command ends ([`CmdError`], exit codes 0/1/2, and 141 for
//! a closed stdout), the push input of `simulate` and `push`, the store a CLI process opens
//! beside `serve` (the same one: Redis when configured), the API client, and time formatting.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::api::{ApiClient, ApiError};
use crate::config::Config;
use crate::model::{SharedClock, SystemClock};
use crate::store::Store;

/// How a command ends when it does not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// Bad usage or bad configuration: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The operation failed (API error, window closed, failed rule test): exit 1.
    #[error("{0:#}")]
    Failed(anyhow::Error),
    /// stdout was closed before the output was complete (`kefu rules check | head -1`): exit
    /// 141 (128 + SIGPIPE, as a shell reports a tool killed by SIGPIPE) without a message.
    #[error("stdout was closed")]
    StdoutClosed,
}

impl CmdError {
    pub fn failed(msg: impl std::fmt::Display) -> Self {
        CmdError::Failed(anyhow::anyhow!("{msg}"))
    }
    /// The error with the `[wechat]` keys it names written as account `name`'s
    /// ([`crate::config::accounts::in_account`]); `None` leaves it as it is.
    pub fn in_account(self, name: Option<&str>) -> Self {
        use crate::config::accounts::in_account;
        match (self, name) {
            (CmdError::Usage(m), Some(n)) => CmdError::Usage(in_account(&m, Some(n)).into_owned()),
            (CmdError::Failed(e), Some(n)) => {
                let text = format!("{e:#}");
                match in_account(&text, Some(n)) {
                    std::borrow::Cow::Owned(t) => CmdError::Failed(anyhow::anyhow!(t)),
                    std::borrow::Cow::Borrowed(_) => CmdError::Failed(e),
                }
            }
            (e, _) => e,
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            CmdError::Usage(_) => 2,
            CmdError::Failed(_) => 1,
            CmdError::StdoutClosed => 141,
        }
    }
}

impl From<anyhow::Error> for CmdError {
    fn from(e: anyhow::Error) -> Self {
        CmdError::Failed(e)
    }
}

impl From<crate::config::ConfigError> for CmdError {
    fn from(e: crate::config::ConfigError) -> Self {
        CmdError::Usage(e.0)
    }
}

pub type CmdResult = Result<(), CmdError>;

/// The push to simulate or send: exactly one of --text, --event, --xml.
#[derive(Args, Debug, Clone)]
#[group(required = true, multiple = false, id = "input")]
pub struct PushInput {
    /// A text message with this content.
    #[arg(long, group = "input")]
    pub text: Option<String>,
    /// An event with this Event value (subscribe, CLICK, SCAN, ...).
    #[arg(long, group = "input")]
    pub event: Option<String>,
    /// An XML push body read from FILE.
    #[arg(long, group = "input", value_name = "FILE")]
    pub xml: Option<PathBuf>,
}

/// The API client every API command uses. It refuses to start without credentials (exit 2,
/// naming the variables to set). Its token cache is the store's when `serve`'s state is here
/// (`state.dir` has a database, or `state.redis_url` is set), so a CLI run reuses the token
/// `serve` holds instead of fetching one (interface §6.10); otherwise the token lives for this
/// run only, and no `state.dir` is created.
pub async fn api_client(cfg: &Config) -> Result<ApiClient, CmdError> {
    if !cfg.wechat.has_credentials() {
        return Err(no_credentials(cfg));
    }
    let clock: SharedClock = Arc::new(SystemClock);
    if !has_state(cfg) {
        let cache = Arc::new(crate::model::MemoryTokenCache::default());
        return ApiClient::new(&cfg.wechat, cache, clock).map_err(CmdError::Failed);
    }
    let store = open_cli(cfg).await?;
    ApiClient::new(&cfg.wechat, store.token_cache(), clock).map_err(CmdError::Failed)
}

/// The client `kefu send` uses: without credentials it is the dry-run client (the window gate
/// still charges, nothing is sent; see [`crate::pipeline::gate`]).
pub fn send_client(cfg: &Config, store: &Arc<dyn Store>) -> Result<ApiClient, CmdError> {
    let clock: SharedClock = Arc::new(SystemClock);
    ApiClient::new(&cfg.wechat, store.token_cache(), clock).map_err(CmdError::Failed)
}

/// Whether `serve`'s state is reachable from here: Redis, or a database under `state.dir`.
fn has_state(cfg: &Config) -> bool {
    !cfg.state.redis_url.is_empty() || cfg.state.dir.join(crate::store::sqlite::DB_FILE).is_file()
}

/// Missing credentials, naming each missing key with where to set it (the file in use, or
/// the variable): exit 2.
fn no_credentials(cfg: &Config) -> CmdError {
    let mut fixes = Vec::new();
    if cfg.wechat.app_id.is_empty() {
        fixes.push(cfg.how_to_set("wechat.app_id"));
    }
    if cfg.wechat.app_secret.is_empty() {
        fixes.push(cfg.how_to_set("wechat.app_secret"));
    }
    CmdError::Usage(format!(
        "no WeChat credentials configured: this command calls the WeChat API, which needs \
         `{}` and `{}`: {}",
        cfg.key_name("wechat.app_id"),
        cfg.key_name("wechat.app_secret"),
        fixes.join("; ")
    ))
}

/// The store as a CLI process opens it, beside a running `serve`.
async fn open_cli(cfg: &Config) -> Result<Arc<dyn Store>, CmdError> {
    let clock: SharedClock = Arc::new(SystemClock);
    crate::store::open_store(cfg, crate::store::Role::Cli, clock)
        .await
        .map(|(store, _)| store)
        .map_err(|e| CmdError::failed(format!("{e:#}")))
}

/// The store of a command that reads or charges the ledger (`kefu window`, `kefu send`): the
/// same store `serve` uses — Redis when `state.redis_url` is set, else SQLite under
/// `state.dir` — and it never creates `state.dir`. Without Redis, a missing database is an
/// error that names the path and where `state.dir` came from (the usual cause: the command
/// ran without the `--config` that `serve` uses), instead of an answer from empty state. With
/// Redis the ledger is Redis's; a missing local database only means this machine's outbox is
/// empty, so a scratch one lives in a temporary directory for the run.
pub struct CliStore {
    pub store: Arc<dyn Store>,
    // Declared after `store` so it is dropped (and the directory removed) after the store.
    _scratch: Option<ScratchDir>,
}

/// A temporary directory removed on drop.
struct ScratchDir(std::path::PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Opens the [`CliStore`].
pub async fn cli_store(cfg: &Config) -> Result<CliStore, CmdError> {
    let db = cfg.state.dir.join(crate::store::sqlite::DB_FILE);
    if db.is_file() {
        return Ok(CliStore { store: open_cli(cfg).await?, _scratch: None });
    }
    if cfg.state.redis_url.is_empty() {
        return Err(CmdError::failed(format!(
            "no kefu state at {}: `kefu serve` has not recorded anything there. The directory is \
             {}; run this command with the same --config (or KEFU_STATE_DIR) that `kefu serve` \
             uses",
            db.display(),
            cfg.key("state.dir"),
        )));
    }
    let scratch = ScratchDir(std::env::temp_dir().join(format!(
        "kefu-cli-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )));
    let mut local = cfg.clone();
    local.state.dir = scratch.0.clone();
    let store = open_cli(&local).await?;
    Ok(CliStore { store, _scratch: Some(scratch) })
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
