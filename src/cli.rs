//! The command line (interface §1): argument definitions, config loading, and the dispatch to
//! one `cmd::*` module per command. Exit codes: 0 success, 1 the operation failed, 2 bad usage
//! or bad configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;

#[derive(Parser, Debug)]
#[command(name = "kefu", version, about = "WeChat Official Account customer-service bot")]
pub struct Cli {
    /// Config file (default: ./kefu.toml if present, else built-in defaults; KEFU_* variables override).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum, env = "KEFU_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the webhook server.
    Serve,
    /// Check or import rule files.
    #[command(subcommand)]
    Rules(RulesCmd),
    /// Show which rules fire for a push and what would be sent (no network).
    Simulate(SimulateArgs),
    /// Act as WeChat: sign (and optionally encrypt) a push, POST it, print the answer.
    Push(PushArgs),
    /// Manage customer-service (kf) accounts.
    #[command(subcommand)]
    Accounts(AccountsCmd),
    /// Send one customer-service message now.
    Send(SendArgs),
    /// Show followers' customer-service windows.
    #[command(subcommand)]
    Window(WindowCmd),
    /// Control kf sessions.
    #[command(subcommand)]
    Sessions(SessionsCmd),
    /// Customer-service chat records, paged through to the end.
    Records(RecordsArgs),
    /// Fetch or read the cached access token and show its source and expiry.
    Token(TokenArgs),
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand, Debug)]
pub enum RulesCmd {
    /// Load every rule file, report every error, run the [[test]] cases.
    Check {
        /// Rules directory (default: rules.dir from the config).
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Convert the admin panel's auto-reply JSON (get_current_autoreply_info) into a rule file.
    Import {
        file: PathBuf,
        /// Write the rule file here instead of printing it.
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
    },
}

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

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Rules directory (default: rules.dir from the config).
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Sender OpenID.
    #[arg(long, value_name = "OPENID", default_value = "oSimulatedFollower000000000")]
    pub from: String,
    #[command(flatten)]
    pub input: PushInput,
    /// EventKey for --event.
    #[arg(long, requires = "event")]
    pub key: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The server URL, e.g. http://127.0.0.1:8080/wechat.
    #[arg(long)]
    pub url: String,
    /// Sender OpenID.
    #[arg(long, value_name = "OPENID", default_value = "oSimulatedFollower000000000")]
    pub from: String,
    /// Encrypt the push (safe mode) with the configured EncodingAESKey.
    #[arg(long)]
    pub encrypt: bool,
    #[command(flatten)]
    pub input: PushInput,
    /// EventKey for --event.
    #[arg(long, requires = "event")]
    pub key: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AccountsCmd {
    /// All kf accounts.
    List {
        #[arg(long)]
        json: bool,
    },
    /// kf accounts online now.
    Online {
        #[arg(long)]
        json: bool,
    },
    /// Add a kf account.
    Add { account: String, nickname: String },
    /// Change a kf account's nickname.
    Update { account: String, nickname: String },
    /// Invite a WeChat user to bind to a kf account.
    Invite { account: String, wechat_id: String },
    /// Delete a kf account.
    Delete { account: String },
    /// Upload a kf account's avatar.
    Avatar { account: String, image_file: PathBuf },
}

#[derive(Args, Debug)]
#[group(id = "body", required = true, multiple = false)]
pub struct SendBody {
    #[arg(long, group = "body")]
    pub text: Option<String>,
    #[arg(long, group = "body", value_name = "MEDIA_ID")]
    pub image: Option<String>,
    /// A complete custom/send body; its touser is replaced by OPENID.
    #[arg(long, group = "body", value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    pub openid: String,
    #[command(flatten)]
    pub body: SendBody,
    /// Send as this kf account.
    #[arg(long = "as", value_name = "KF_ACCOUNT")]
    pub as_kf: Option<String>,
    /// Send even when the follower's window does not allow it.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum WindowCmd {
    /// One follower's window ledger.
    Show {
        openid: String,
        #[arg(long)]
        json: bool,
    },
    /// Every follower with a live grant.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// Sessions a kf account is serving.
    List {
        kf_account: String,
        #[arg(long)]
        json: bool,
    },
    /// The session of a follower.
    Get {
        openid: String,
        #[arg(long)]
        json: bool,
    },
    /// Open a session between a kf account and a follower.
    Create { kf_account: String, openid: String },
    /// Close a session.
    Close { kf_account: String, openid: String },
    /// Followers waiting for a kf.
    Waiting {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Debug)]
pub struct RecordsArgs {
    /// Start: RFC 3339 (2024-05-01T08:00:00Z), "2024-05-01 08:00:00" (UTC) or Unix seconds.
    #[arg(long)]
    pub since: String,
    /// End (default: now). Spans over 24 h are fetched day by day.
    #[arg(long)]
    pub until: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Print the token itself.
    #[arg(long)]
    pub reveal: bool,
    #[arg(long)]
    pub json: bool,
}

/// How a command ends when it does not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// Bad usage or bad configuration: exit 2.
    #[error("{0}")]
    Usage(String),
    /// The operation failed (API error, window closed, failed rule test): exit 1.
    #[error("{0:#}")]
    Failed(anyhow::Error),
}

impl CmdError {
    pub fn failed(msg: impl std::fmt::Display) -> Self {
        CmdError::Failed(anyhow::anyhow!("{msg}"))
    }
    pub fn exit_code(&self) -> u8 {
        match self {
            CmdError::Usage(_) => 2,
            CmdError::Failed(_) => 1,
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

/// Runs one parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result = dispatch(cli).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kefu: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Says on stderr which config file is in use, or that none was found and built-in defaults
/// (with any `KEFU_*` variables) apply: a command run from the wrong directory would otherwise
/// answer from another (or an empty) state without a word. A line of its own in text mode; a
/// log event in JSON mode, so every stderr line stays JSON.
fn announce_config(cfg: &Config, format: LogFormat) {
    let what = match &cfg.file {
        Some(f) => format!("config: {}", f.display()),
        None => "config: no --config given and no ./kefu.toml here: built-in defaults and \
                 KEFU_* variables apply"
            .to_string(),
    };
    match format {
        LogFormat::Text => eprintln!("kefu: {what}"),
        LogFormat::Json => tracing::info!(config = ?cfg.file, "{what}"),
    }
}

async fn dispatch(cli: Cli) -> CmdResult {
    use crate::cmd;
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "kefu", &mut std::io::stdout());
        return Ok(());
    }
    let cfg = Config::load(cli.config.as_deref())?;
    announce_config(&cfg, cli.log_format);
    match &cli.command {
        Command::Serve => cmd::serve::run(cfg).await,
        Command::Rules(RulesCmd::Check { dir, json }) => {
            cmd::rules::check(&cfg, dir.as_deref(), *json)
        }
        Command::Rules(RulesCmd::Import { file, out }) => cmd::rules::import(file, out.as_deref()),
        Command::Simulate(a) => cmd::simulate::run(&cfg, a),
        Command::Push(a) => cmd::push::run(&cfg, a).await,
        Command::Accounts(a) => cmd::accounts::run(&cfg, a).await,
        Command::Send(a) => cmd::send::run(&cfg, a).await,
        Command::Window(a) => cmd::window::run(&cfg, a).await,
        Command::Sessions(a) => cmd::sessions::run(&cfg, a).await,
        Command::Records(a) => cmd::records::run(&cfg, a).await,
        Command::Token(a) => cmd::token::run(&cfg, a).await,
        Command::Completions { .. } => unreachable!("handled above"),
    }
}
