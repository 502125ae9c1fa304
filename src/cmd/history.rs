//! `kefu history show OPENID [--json]` and `kefu history clear OPENID` (interface §7.7): the
//! conversation turns `openai` backends keep for a follower. Both open the store `serve` uses
//! (Redis when configured), beside a running server.

use clap::Subcommand;
use serde_json::json;

use super::common::{CmdError, CmdResult};
use crate::config::Config;
use crate::model::OpenId;

#[derive(Subcommand, Debug)]
pub enum HistoryCmd {
    /// The follower's kept turns (their message and the model's answer), oldest first.
    Show {
        /// The follower's OpenID.
        openid: String,
        /// Print the turns as JSON: [{"backend","at_ms","user","assistant"}, ...].
        #[arg(long)]
        json: bool,
    },
    /// Forget the follower's kept turns: their next message starts a new conversation.
    Clear {
        /// The follower's OpenID.
        openid: String,
    },
}

pub async fn run(cfg: &Config, cmd: &HistoryCmd) -> CmdResult {
    let (HistoryCmd::Show { openid, .. } | HistoryCmd::Clear { openid }) = cmd;
    let openid = OpenId::parse(openid).map_err(|e| CmdError::Usage(e.to_string()))?;
    let reader = super::common::cli_store(cfg).await?;
    let store = &reader.store;
    match cmd {
        HistoryCmd::Show { json, .. } => {
            let turns = store.turns(None, &openid).await.map_err(|e| CmdError::Failed(e.into()))?;
            if *json {
                let v: Vec<_> = turns
                    .iter()
                    .map(|(b, t)| {
                        json!({"backend": b, "at_ms": t.at_ms, "user": t.user, "assistant": t.assistant})
                    })
                    .collect();
                crate::outln!("{}", serde_json::Value::Array(v))?;
            } else if turns.is_empty() {
                crate::outln!("{openid}: no kept turns (a new conversation)")?;
            } else {
                for (backend, t) in &turns {
                    let at = super::common::fmt_time(t.at_ms.div_euclid(1000));
                    crate::outln!("[{backend}] {at} 用户: {}", t.user)?;
                    crate::outln!("[{backend}] {at} 助手: {}", t.assistant)?;
                }
            }
        }
        HistoryCmd::Clear { .. } => {
            let n = store.clear_turns(&openid).await.map_err(|e| CmdError::Failed(e.into()))?;
            crate::outln!("{openid}: forgot {n} kept turns")?;
        }
    }
    Ok(())
}
