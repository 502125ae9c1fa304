//! The command line (interface §1): the top-level parser, config loading, and the dispatch to
//! one `cmd::*` module per command (each owns its arguments). Exit codes: 0 success, 1 the
//! operation failed, 2 bad usage or bad configuration, 141 stdout closed.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cmd::common::{CmdError, CmdResult};
use crate::cmd::{accounts, records, rules, send, sessions, simulate, token, window};
use crate::config::Config;
pub use crate::telemetry::LogFormat;

#[derive(Parser, Debug)]
#[command(name = "kefu", version, about = "WeChat Official Account customer-service bot")]
pub struct Cli {
    /// Config file (default: ./kefu.toml if present, else built-in defaults; KEFU_* variables override).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// The account a command is for (an [accounts.NAME] table); required when several
    /// accounts are configured. `serve` serves them all.
    #[arg(long = "account", global = true, value_name = "NAME")]
    pub account_name: Option<String>,
    /// Log format (logs go to stderr).
    #[arg(long, global = true, value_enum, env = "KEFU_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
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
    Serve(ServeArgs),
    /// Check or import rule files.
    #[command(subcommand)]
    Rules(rules::RulesCmd),
    /// Show which rules fire for a push and what would be sent (no network).
    Simulate(simulate::SimulateArgs),
    /// Act as WeChat: sign (and optionally encrypt) a push, POST it, print the answer.
    Push(crate::cmd::push::PushArgs),
    /// Manage customer-service (kf) accounts.
    #[command(subcommand)]
    Accounts(accounts::AccountsCmd),
    /// Send one customer-service message now.
    Send(send::SendArgs),
    /// Show followers' customer-service windows.
    #[command(subcommand)]
    Window(window::WindowCmd),
    /// Control kf sessions.
    #[command(subcommand)]
    Sessions(sessions::SessionsCmd),
    /// Customer-service chat records, paged through to the end.
    Records(records::RecordsArgs),
    /// Fetch or read the cached access token and show its source and expiry.
    Token(token::TokenArgs),
    /// Show or forget the conversation turns an openai backend keeps for a follower.
    #[command(subcommand)]
    History(crate::cmd::history::HistoryCmd),
    /// Call the configured backends once with a test push (`kefu backends check [NAME]`).
    #[command(subcommand)]
    Backends(crate::cmd::backends::BackendsCmd),
    /// The conversation log: followers by last activity, one follower's messages, erasure.
    #[command(subcommand)]
    Conversations(crate::cmd::conversations::ConversationsCmd),
    /// Upload media files and show the media ids kept for the files rules name.
    #[command(subcommand)]
    Media(crate::cmd::media::MediaCmd),
    /// Print a shell completion script.
    Completions {
        /// The shell to write the script for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

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
        LogFormat::Json => match &cfg.file {
            Some(f) => tracing::info!(config = %f.display(), "{what}"),
            None => tracing::info!("{what}"),
        },
    }
    for w in &cfg.warnings {
        match format {
            LogFormat::Text => crate::errln!("kefu: warning: {w}"),
            LogFormat::Json => tracing::warn!("{w}"),
        }
    }
}

/// Loads the configuration (every command but `completions` needs it) and runs the one
/// command module the line names.
async fn dispatch(cli: Cli) -> CmdResult {
    let Cli { config, account_name, log_format, command } = cli;
    if let Command::Completions { shell } = command {
        return completions(shell);
    }
    let all = Config::load(config.as_deref())?;
    announce_config(&all, log_format);
    let account = account_name.as_deref();
    // The layers below the configuration name `[wechat]` keys: an account's error names its own.
    let named = all.select(account).ok().and_then(|v| v.account);
    run_command(&all, account, command).await.map_err(|e| e.in_account(named.as_deref()))
}

/// `kefu serve`'s options.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Start even though a journal segment is damaged in the middle (a disk fault, a file
    /// edited by hand): drop the damaged record and every record after it, which may include
    /// acknowledged pushes, and start from what is left. Without it kefu refuses to start and
    /// names the segment and the offset. A record cut short at the very end by a crash needs
    /// no flag: it was never acknowledged and is dropped on its own.
    #[arg(long)]
    pub truncate_journal: bool,
}

async fn run_command(all: &Config, account: Option<&str>, command: Command) -> CmdResult {
    use crate::cmd;
    // The account's view for the commands that act on one account (interface §11.10).
    let one = || all.select(account);
    match command {
        Command::Serve(args) => {
            if let Some(name) = account {
                return Err(CmdError::Usage(format!(
                    "--account {name:?}: `kefu serve` serves every configured account ({}) at \
                     its own path; --account is for the other commands",
                    all.account_names()
                )));
            }
            let mut all = all.clone();
            all.state.truncate_journal = args.truncate_journal;
            cmd::serve::run(all).await
        }
        // A DIR given without --account is checked against the shared [window] and backends.
        Command::Rules(
            rules::RulesCmd::Check { dir: Some(_), .. } | rules::RulesCmd::Import { .. },
        ) if account.is_none() => {
            let Command::Rules(a) = command else { unreachable!() };
            cmd::rules::run(all, &a)
        }
        Command::Rules(a) => cmd::rules::run(&one()?, &a),
        Command::Simulate(a) => cmd::simulate::run(&one()?, &a).await,
        // Backends are shared; the account (the first, unless named) only fills the request.
        Command::Backends(a) => {
            let cfg = match account {
                Some(_) => one()?,
                None => all.view(&all.first_account()),
            };
            cmd::backends::run(&cfg, &a).await
        }
        Command::Push(a) => cmd::push::run(&one()?, &a).await,
        Command::Accounts(a) => cmd::accounts::run(&one()?, &a).await,
        Command::Send(a) => cmd::send::run(&one()?, &a).await,
        Command::Window(a) => cmd::window::run(&one()?, &a).await,
        Command::Sessions(a) => cmd::sessions::run(&one()?, &a).await,
        Command::Records(a) => cmd::records::run(&one()?, &a).await,
        Command::Token(a) => cmd::token::run(&one()?, &a).await,
        Command::Media(a) => cmd::media::run(&one()?, &a).await,
        Command::History(a) => cmd::history::run(&one()?, &a).await,
        Command::Conversations(a) => cmd::conversations::run(&one()?, &a).await,
        Command::Completions { shell } => completions(shell),
    }
}

fn completions(shell: clap_complete::Shell) -> CmdResult {
    // Into a buffer first: clap_complete panics when its writer fails.
    let mut command = <Cli as clap::CommandFactory>::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, "kefu", &mut script);
    crate::cmd::out::write_bytes(&script)
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
