//! `kefu conversations list [--json]`, `kefu conversations show OPENID [--json] [--since TIME]`
//! and `kefu conversations delete OPENID` (interface §8.1): the conversation log, from the
//! store `serve` uses (Redis when configured), beside a running server.

use clap::Subcommand;

use super::common::{CmdError, CmdResult, fmt_time};
use crate::config::Config;
use crate::model::{Clock, OpenId, SystemClock};
use crate::pipeline::conversations::{self, MAX_PAGE};

#[derive(Subcommand, Debug)]
pub enum ConversationsCmd {
    /// Followers by last activity (newest first), with their window.
    List {
        /// Print JSON: [{"openid","last_at_ms","last","records","window"}, ...].
        #[arg(long)]
        json: bool,
        /// At most this many followers.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One follower's messages, oldest first: what they sent and every answer with its outcome.
    Show {
        /// The follower's OpenID.
        openid: String,
        /// Print JSON: {"openid","window","messages":[...]}.
        #[arg(long)]
        json: bool,
        /// Only messages at or after TIME (RFC 3339, "2024-05-01 08:00:00" UTC, or Unix seconds).
        #[arg(long, value_name = "TIME")]
        since: Option<String>,
    },
    /// Erase the follower's conversation log and the turns LLM backends keep for them.
    Delete {
        /// The follower's OpenID.
        openid: String,
    },
}

fn failed(e: crate::store::StoreError) -> CmdError {
    CmdError::Failed(e.into())
}

pub async fn run(cfg: &Config, cmd: &ConversationsCmd) -> CmdResult {
    let openid = match cmd {
        ConversationsCmd::Show { openid, .. } | ConversationsCmd::Delete { openid } => {
            Some(OpenId::parse(openid).map_err(|e| CmdError::Usage(e.to_string()))?)
        }
        ConversationsCmd::List { .. } => None,
    };
    let since = match cmd {
        ConversationsCmd::Show { since: Some(s), .. } => Some(
            super::records::parse_time(s)
                .map_err(|e| CmdError::Usage(format!("--since: {e}")))?
                .saturating_mul(1000),
        ),
        _ => None,
    };
    if cfg.log.retention.is_zero() {
        crate::errln!(
            "kefu: note: log.retention is 0s ({}): no conversation log is kept",
            cfg.key("log.retention")
        );
    }
    let reader = super::common::cli_store(cfg).await?;
    let store = reader.store.as_ref();
    let now = SystemClock.now_secs();
    match (cmd, openid) {
        (ConversationsCmd::List { json, limit }, _) => {
            let list = conversations::list(store, (*limit).min(MAX_PAGE), None, now)
                .await
                .map_err(failed)?;
            if *json {
                crate::outln!("{}", serde_json::to_string(&list).unwrap_or_default())?;
            } else if list.is_empty() {
                crate::outln!("no conversations logged")?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        let w = &c.window;
                        let state = match (w.blocked, w.quota_left) {
                            (Some(b), _) => b.to_string(),
                            (None, Some(q)) => format!("open, {q} left"),
                            (None, None) => "open, unlimited".to_string(),
                        };
                        vec![
                            fmt_time(c.activity.last_at_ms.div_euclid(1000)),
                            c.activity.openid.to_string(),
                            state,
                            w.view.held.to_string(),
                            w.view.pending.to_string(),
                            c.activity.last.as_ref().map(|r| r.text.clone()).unwrap_or_default(),
                        ]
                    })
                    .collect();
                super::accounts::print_table(
                    &["LAST", "OPENID", "WINDOW", "HELD", "PENDING", "LAST MESSAGE"],
                    &rows,
                )?;
            }
        }
        (ConversationsCmd::Show { json, .. }, Some(openid)) => {
            let t = conversations::show(store, &openid, since, now).await.map_err(failed)?;
            if *json {
                crate::outln!("{}", serde_json::to_string(&t).unwrap_or_default())?;
            } else if t.messages.is_empty() {
                crate::outln!("{openid}: no messages logged")?;
            } else {
                for m in &t.messages {
                    let mut line = format!(
                        "{} {:<8} {:<6} {}",
                        fmt_time(m.at_ms.div_euclid(1000)),
                        m.source.as_str(),
                        m.kind,
                        m.text
                    );
                    if let Some(o) = m.outcome {
                        line.push_str(&format!("  [{}", o.as_str()));
                        if let Some(r) = &m.reason {
                            line.push_str(&format!(": {r}"));
                        }
                        line.push(']');
                    }
                    crate::outln!("{line}")?;
                }
            }
        }
        (ConversationsCmd::Delete { .. }, Some(openid)) => {
            let e = conversations::delete(store, &openid).await.map_err(failed)?;
            crate::outln!(
                "{openid}: erased {} logged messages and {} kept LLM turns",
                e.records,
                e.turns
            )?;
        }
        _ => unreachable!("every command with an OPENID parsed it above"),
    }
    Ok(())
}
