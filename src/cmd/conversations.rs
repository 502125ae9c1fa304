//! `kefu conversations list [--json] [--limit N] [--before CURSOR]`, `kefu conversations show
//! OPENID [--json] [--since TIME]` and `kefu conversations delete OPENID` (interface §8.1): the
//! conversation log, from the store `serve` uses (Redis when configured), beside a running
//! server. The human output escapes what followers wrote ([`printable`]): a message cannot
//! start a line of its own or drive the terminal. `--json` prints it as stored.

use clap::Subcommand;

use super::common::{CmdError, CmdResult, fmt_time};
use crate::config::Config;
use crate::model::{Clock, OpenId, SystemClock};
use crate::pipeline::conversations::{self, Conversation, Cursor, MAX_PAGE};

#[derive(Subcommand, Debug)]
pub enum ConversationsCmd {
    /// Followers by last activity (newest first), with their window.
    List {
        /// Print JSON: [{"openid","last_at_ms","last","records","window"}, ...].
        #[arg(long)]
        json: bool,
        /// At most this many followers (at least 1; read in pages of 500). When more remain, a
        /// last line (with --json: a note on stderr) gives the command that lists them.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Start after this follower: the CURSOR a cut list printed (LAST_AT_MS:OPENID),
        /// or Unix ms (followers last active before it).
        #[arg(long, value_name = "CURSOR")]
        before: Option<String>,
    },
    /// One follower's messages, oldest first: what they sent and every answer with its outcome.
    Show {
        /// The follower's OpenID.
        openid: String,
        /// Print JSON: {"openid","window","messages":[...]}.
        #[arg(long)]
        json: bool,
        /// Only messages at or after TIME: RFC 3339, "2024-05-01 08:00:00" (UTC), Unix seconds, or
        /// Unix ms (a number above 10^11, which as seconds would be after the year 5000).
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

/// A number above this is Unix ms: as seconds it would be after the year 5138.
const MS_ABOVE: i64 = 100_000_000_000;

/// `--since` in Unix ms: a time [`super::records::parse_time`] reads, or a number of Unix
/// seconds, or of ms when it is above [`MS_ABOVE`].
fn since_ms(s: &str) -> Result<i64, String> {
    let t = s.trim();
    if !t.is_empty()
        && t.bytes().all(|b| b.is_ascii_digit())
        && let Ok(n) = t.parse::<i64>()
        && n > MS_ABOVE
    {
        return Ok(n);
    }
    Ok(super::records::parse_time(s)?.saturating_mul(1000))
}

/// What a follower (or WeChat) wrote, safe to print on a terminal line: a newline shows as
/// `⏎`, tab and carriage return as `\t` and `\r`, any other control character (ESC, BEL, the
/// C1 controls that start OSC and CSI sequences) and the characters that reorder text (bidi
/// overrides, embeddings, isolates and marks such as U+202E) and line or paragraph separators as
/// `\u{202e}`. Everything else is kept, Chinese and emoji included.
pub fn printable(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push('⏎'),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control()
                || matches!(
                    c,
                    '\u{061c}'
                        | '\u{200e}'
                        | '\u{200f}'
                        | '\u{2028}'..='\u{202e}'
                        | '\u{2066}'..='\u{2069}'
                ) =>
            {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Up to `limit` followers after `before`, in pages of at most [`MAX_PAGE`]; with the cursor
/// of the rest when some remain.
async fn list_upto(
    store: &dyn crate::store::Store,
    limit: usize,
    mut before: Option<Cursor>,
    now: i64,
) -> Result<(Vec<Conversation>, Option<Cursor>), CmdError> {
    let mut out = Vec::new();
    while out.len() < limit {
        let page =
            conversations::page(store, (limit - out.len()).min(MAX_PAGE), before.as_ref(), now)
                .await
                .map_err(failed)?;
        out.extend(page.conversations);
        before = page.next_before;
        if before.is_none() {
            break;
        }
    }
    Ok((out, before))
}

pub async fn run(cfg: &Config, cmd: &ConversationsCmd) -> CmdResult {
    let openid = match cmd {
        ConversationsCmd::Show { openid, .. } | ConversationsCmd::Delete { openid } => {
            Some(OpenId::parse(openid).map_err(|e| CmdError::Usage(e.to_string()))?)
        }
        ConversationsCmd::List { .. } => None,
    };
    let since = match cmd {
        ConversationsCmd::Show { since: Some(s), .. } => {
            Some(since_ms(s).map_err(|e| CmdError::Usage(format!("--since: {e}")))?)
        }
        _ => None,
    };
    let before = match cmd {
        ConversationsCmd::List { limit, before, .. } => {
            conversations::page_size(*limit)
                .map_err(|e| CmdError::Usage(format!("--limit: {e}")))?;
            before
                .as_deref()
                .map(Cursor::parse)
                .transpose()
                .map_err(|e| CmdError::Usage(format!("--before: {e}")))?
        }
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
        (ConversationsCmd::List { json, limit, .. }, _) => {
            let from = before.as_ref().map(ToString::to_string);
            let (list, rest) = list_upto(store, *limit, before, now).await?;
            let account =
                cfg.account.as_ref().map(|n| format!(" --account {n}")).unwrap_or_default();
            let more = rest.map(|c| format!("kefu conversations list{account} --before {c}"));
            if *json {
                crate::outln!("{}", serde_json::to_string(&list).unwrap_or_default())?;
                if let Some(more) = &more {
                    crate::errln!("kefu: note: {} listed, more remain: {more}", list.len());
                }
            } else if list.is_empty() {
                match from {
                    Some(c) => crate::outln!("no conversations after --before {c}")?,
                    None => crate::outln!("no conversations logged")?,
                }
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
                            c.activity
                                .last
                                .as_ref()
                                .map(|r| printable(&r.text))
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                super::accounts::print_table(
                    &["LAST", "OPENID", "WINDOW", "HELD", "PENDING", "LAST MESSAGE"],
                    &rows,
                )?;
                if let Some(more) = &more {
                    crate::outln!("… more: {more}")?;
                }
            }
        }
        (ConversationsCmd::Show { json, .. }, Some(openid)) => {
            let t = conversations::show(store, &openid, since, now).await.map_err(failed)?;
            if *json {
                crate::outln!("{}", serde_json::to_string(&t).unwrap_or_default())?;
            } else if t.messages.is_empty() {
                let all = match since {
                    Some(_) => conversations::show(store, &openid, None, now)
                        .await
                        .map_err(failed)?
                        .messages
                        .len(),
                    None => 0,
                };
                match since {
                    Some(ms) if all > 0 => crate::outln!(
                        "{openid}: no messages since {} ({all} in all)",
                        fmt_time(ms.div_euclid(1000))
                    )?,
                    _ => crate::outln!("{openid}: no messages logged")?,
                }
            } else {
                for m in &t.messages {
                    let mut line = format!(
                        "{} {:<8} {:<6} {}",
                        fmt_time(m.at_ms.div_euclid(1000)),
                        m.source.as_str(),
                        printable(&m.kind),
                        printable(&m.text)
                    );
                    if let Some(o) = m.outcome {
                        line.push_str(&format!("  [{}", o.as_str()));
                        if let Some(r) = &m.reason {
                            line.push_str(&format!(": {}", printable(r)));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follower_text_cannot_start_a_line_or_drive_the_terminal() {
        assert_eq!(printable("您好 👋 a\\b"), "您好 👋 a\\b");
        assert_eq!(
            printable("a\nb\r\tc\u{1b}]0;t\u{7}\u{9b}\u{7f}\u{202e}d\u{2066}\u{200f}\u{2028}"),
            "a⏎b\\r\\tc\\u{1b}]0;t\\u{7}\\u{9b}\\u{7f}\\u{202e}d\\u{2066}\\u{200f}\\u{2028}"
        );
    }

    #[test]
    fn since_above_ten_to_the_eleven_is_ms() {
        assert_eq!(since_ms("1796058340000"), Ok(1796058340000));
        assert_eq!(since_ms("1796058340"), Ok(1796058340000));
        assert_eq!(since_ms("100000000000"), Ok(100000000000000));
        assert_eq!(since_ms("1970-01-01T00:00:01Z"), Ok(1000));
        assert!(since_ms("yesterday").is_err());
    }
}
