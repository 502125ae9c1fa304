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
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, env = "KEFU_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the webhook server: verify, record, answer and send.
    #[command(long_about = "Run the webhook server at server.listen + server.path.\n\n\
        Every push WeChat sends is verified (signature, and decrypted in safe mode), recorded \
        durably with the follower's customer-service window, answered by the rules in rules.dir \
        (the passive reply), and the customer-service messages the rules plan are sent through \
        custom/send while the window allows them. Also serves /healthz, /readyz, /metrics, the \
        admin API (with admin.token) and WeChat Pay notifications (with a pay key).\n\n\
        Without wechat.app_id and wechat.app_secret kefu runs in dry-run mode: pushes are \
        verified, recorded and answered, and each message it would send is logged as `dry-run` \
        instead of sent.")]
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
        /// The shell to write the script for.
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
        /// Print one JSON report (errors, warnings, every test's outcome) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Convert the admin panel's auto-reply JSON (get_current_autoreply_info) into a rule file.
    Import {
        /// The JSON answer of GET /cgi-bin/get_current_autoreply_info, saved to a file.
        file: PathBuf,
        /// Write the rule file here instead of printing it (an existing file needs --force).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Overwrite the --out file if it exists.
        #[arg(long, requires = "out")]
        force: bool,
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
    /// Print one JSON object (fired rules, passive reply, messages) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The server URL: `kefu serve`'s server.listen + server.path, e.g.
    /// http://127.0.0.1:8080/wechat.
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
        /// Print WeChat's list as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// kf accounts online now.
    Online {
        /// Print WeChat's list as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a kf account.
    #[command(long_about = "Add a kf account.\n\n\
        ACCOUNT is prefix@wechat_id. A bare prefix (kf01) is completed with wechat.account_id, \
        the account's WeChat ID (kf01@<wechat.account_id>).")]
    Add {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
        /// The name followers see (at most 16 characters).
        nickname: String,
    },
    /// Change a kf account's nickname.
    Update {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
        /// The new name followers see (at most 16 characters).
        nickname: String,
    },
    /// Invite a WeChat user to bind to a kf account.
    Invite {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
        /// The staff member's WeChat ID (微信号), not their nickname.
        wechat_id: String,
    },
    /// Delete a kf account.
    Delete {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
    },
    /// Upload a kf account's avatar.
    Avatar {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
        /// A JPEG image (640×640 recommended, at most 5 MB).
        image_file: PathBuf,
    },
}

#[derive(Args, Debug)]
#[group(id = "body", required = true, multiple = false)]
pub struct SendBody {
    /// A text message with this content.
    #[arg(long, group = "body")]
    pub text: Option<String>,
    /// An image message with this media id (uploaded material).
    #[arg(long, group = "body", value_name = "MEDIA_ID")]
    pub image: Option<String>,
    /// A complete custom/send body; its touser is replaced by OPENID.
    #[arg(long, group = "body", value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The follower's OpenID (the FromUserName of their pushes).
    pub openid: String,
    #[command(flatten)]
    pub body: SendBody,
    /// Send as this kf account (prefix@wechat_id, or a prefix completed from wechat.account_id).
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
        /// The follower's OpenID.
        openid: String,
        /// Print the ledger as JSON (the shape of GET /admin/windows/{openid}).
        #[arg(long)]
        json: bool,
    },
    /// Every follower with a live grant.
    List {
        /// Print the ledgers as a JSON array.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// Sessions a kf account is serving.
    List {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        kf_account: String,
        /// Print WeChat's list as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The session of a follower.
    Get {
        /// The follower's OpenID.
        openid: String,
        /// Print the session as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Open a session between a kf account and a follower.
    Create {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        kf_account: String,
        /// The follower's OpenID.
        openid: String,
    },
    /// Close a session.
    Close {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        kf_account: String,
        /// The follower's OpenID.
        openid: String,
    },
    /// Followers waiting for a kf.
    Waiting {
        /// Print WeChat's queue as JSON instead of a table.
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
    /// Print the records as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Print the token itself (a secret: keep it out of logs and tickets).
    #[arg(long)]
    pub reveal: bool,
    /// Print source, fetch time and expiry as JSON.
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
    /// stdout was closed before the output was complete (`kefu rules check | head -1`): exit
    /// 141 (128 + SIGPIPE, as a shell reports a tool killed by SIGPIPE) without a message.
    #[error("stdout was closed")]
    StdoutClosed,
}

impl CmdError {
    pub fn failed(msg: impl std::fmt::Display) -> Self {
        CmdError::Failed(anyhow::anyhow!("{msg}"))
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

/// Runs one parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> ExitCode {
    let result = dispatch(cli).await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away: it wants nothing more, not even an explanation.
        Err(CmdError::StdoutClosed) => ExitCode::from(CmdError::StdoutClosed.exit_code()),
        Err(e) => {
            crate::errln!("kefu: {e}");
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
        LogFormat::Text => crate::errln!("kefu: {what}"),
        LogFormat::Json => tracing::info!(config = ?cfg.file, "{what}"),
    }
}

async fn dispatch(cli: Cli) -> CmdResult {
    use crate::cmd;
    if let Command::Completions { shell } = cli.command {
        // Into a buffer first: clap_complete panics when its writer fails.
        let mut command = <Cli as clap::CommandFactory>::command();
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, "kefu", &mut script);
        return crate::cmd::out::write_bytes(&script);
    }
    let cfg = Config::load(cli.config.as_deref())?;
    announce_config(&cfg, cli.log_format);
    match &cli.command {
        Command::Serve => cmd::serve::run(cfg).await,
        Command::Rules(RulesCmd::Check { dir, json }) => {
            cmd::rules::check(&cfg, dir.as_deref(), *json)
        }
        Command::Rules(RulesCmd::Import { file, out, force }) => {
            cmd::rules::import(&cfg, file, out.as_deref(), *force)
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every (sub)command has a help line, and every subcommand an about:
    /// walks the whole tree, so a new flag without a description fails here.
    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let id = a.get_id().as_str();
                if matches!(id, "help" | "version") {
                    continue;
                }
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                if help.trim().is_empty() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none_or(|a| a.to_string().trim().is_empty()) {
                    missing.push(format!("{name} (about)"));
                }
                walk(sub, &name, missing);
            }
        }
        let cmd = Cli::command();
        let mut missing = Vec::new();
        walk(&cmd, "kefu", &mut missing);
        assert!(missing.is_empty(), "arguments without help: {missing:#?}");
        // The walk sees the arguments the issue named.
        let send = cmd.find_subcommand("send").unwrap();
        assert!(send.get_arguments().any(|a| a.get_id() == "openid"));
    }
}
