//! `kefu window show OPENID | list` (interface §1, §5): reads the ledger from the store under
//! `state.dir`. It opens the store as a client, so it works while `serve` runs and never
//! touches the server's in-flight sends.

use clap::Subcommand;
use std::fmt::Write as _;
use std::sync::Arc;

use super::common::{CmdError, CmdResult};
use crate::config::Config;
use crate::ledger::WindowView;
use crate::model::{OpenId, SharedClock, SystemClock};

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

pub async fn run(cfg: &Config, args: &WindowCmd) -> CmdResult {
    let clock: SharedClock = Arc::new(SystemClock);
    let now = clock.now_secs();
    let reader = super::common::cli_store(cfg).await?;
    let store = &reader.store;
    let out = match args {
        WindowCmd::Show { openid, json } => {
            let openid = OpenId::parse(openid).map_err(|e| CmdError::Usage(e.to_string()))?;
            let view = store.window(&openid, now).await.map_err(|e| CmdError::Failed(e.into()))?;
            let held = store
                .held_for(&openid, now.saturating_mul(1000))
                .await
                .map_err(|e| CmdError::Failed(e.into()))?;
            if *json {
                to_json(&crate::convlog::window_json(&view, &held))?
            } else {
                render(&view, now) + &render_held(&held, now)
            }
        }
        WindowCmd::List { json } => {
            let views = store.list_windows(now).await.map_err(|e| CmdError::Failed(e.into()))?;
            if *json {
                to_json(&views)?
            } else if views.is_empty() {
                "no follower has a live customer-service window\n".to_string()
            } else {
                views.iter().map(|v| render(v, now)).collect::<Vec<_>>().join("\n")
            }
        }
    };
    crate::out!("{out}")?;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, CmdError> {
    serde_json::to_string(v)
        .map(|s| s + "\n")
        .map_err(|e| CmdError::failed(format!("cannot encode the window as JSON: {e}")))
}

/// "1h 2m" style, rounded to what an operator cares about.
fn left(secs: i64) -> String {
    let secs = secs.max(0) as u64;
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// The human view of one follower's window.
pub fn render(v: &WindowView, now: i64) -> String {
    let mut s = String::new();
    let subscribed = match v.subscribed {
        Some(true) => "following",
        Some(false) => "unsubscribed",
        None => "follow state unknown",
    };
    let state = if v.open { "OPEN" } else { "closed" };
    let _ = writeln!(
        s,
        "{}  {state}  ({subscribed}, {} pending, {} held)",
        v.openid, v.pending, v.held
    );
    if v.grants.is_empty() {
        let _ = writeln!(s, "  no live grant");
    }
    for g in &v.grants {
        let quota = match g.limit {
            Some(l) => format!("{}/{} used", g.used, l),
            None => format!("{} used, unlimited", g.used),
        };
        let _ = writeln!(
            s,
            "  {:<9} {quota:<20} opened {} ago, expires in {} (at {})",
            g.trigger.as_str(),
            left(now - g.opened_at),
            left(g.expires_at - now),
            g.expires_at
        );
    }
    s
}

/// The follower's held answers, oldest first: what their next push delivers.
pub fn render_held(held: &[crate::store::HeldAnswer], now: i64) -> String {
    use crate::model::{OutMessage, OutboxAction};
    let mut s = String::new();
    if held.is_empty() {
        return s;
    }
    let _ = writeln!(s, "  held for the next push (oldest first):");
    for (i, h) in held.iter().enumerate() {
        let what = match &h.action.action {
            OutboxAction::Send { message: OutMessage::Text { content } } => {
                // Printed as written (emoji sequences intact), on one line.
                let short: String = content
                    .chars()
                    .take(40)
                    .map(|c| if c.is_control() { ' ' } else { c })
                    .collect();
                let more = if short.len() < content.len() { "…" } else { "" };
                format!("text “{short}{more}”")
            }
            OutboxAction::Send { message } => message.msgtype().to_string(),
            OutboxAction::Typing => "typing".to_string(),
        };
        let _ = writeln!(
            s,
            "  {}. {what} (rule {}; held {} ago: {}; expires in {})",
            i + 1,
            h.rule,
            left(now - h.held_at_ms.div_euclid(1000)),
            h.reason,
            left(h.expires_at_ms.div_euclid(1000) - now)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::Grant;
    use crate::model::Trigger;

    #[test]
    fn human_output() {
        let v = WindowView {
            openid: OpenId::parse("oUser").unwrap(),
            open: true,
            subscribed: Some(true),
            grants: vec![
                Grant {
                    trigger: Trigger::Message,
                    opened_at: 1000,
                    expires_at: 1000 + 48 * 3600,
                    limit: Some(5),
                    used: 2,
                },
                Grant {
                    trigger: Trigger::Payment,
                    opened_at: 1000,
                    expires_at: 1090,
                    limit: None,
                    used: 0,
                },
            ],
            pending: 1,
            held: 0,
        };
        assert_eq!(
            render(&v, 1030),
            "oUser  OPEN  (following, 1 pending, 0 held)\n  \
             message   2/5 used             opened 30s ago, expires in 1d 23h (at 173800)\n  \
             payment   0 used, unlimited    opened 30s ago, expires in 1m 0s (at 1090)\n"
        );
    }
}
