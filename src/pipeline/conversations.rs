//! Conversations as operators see them (interface §8.1): followers by last activity with their
//! window, one follower's log, erasing a follower (log and kept LLM turns), and a reply sent
//! now through the window gate and logged as `console`. `kefu conversations`, the
//! `/admin/conversations*` routes and the console all come here, so they agree.

use serde::Serialize;
use serde_json::Value;

use crate::api::{ApiClient, SendBody};
use crate::config::{MAX_TEXT_BYTES, WindowConfig};
use crate::convlog::{FollowerActivity, LogRecord};
use crate::ledger::{DenyReason, WindowView};
use crate::model::{Action, OpenId, OutMessage, RuleInput};
use crate::pipeline::gate::{GateError, GateMode, Gated, send_logged};
use crate::store::{Store, StoreResult};

/// The most followers one page lists.
pub const MAX_PAGE: usize = 500;

/// A follower's window as the console shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WindowState {
    #[serde(flatten)]
    pub view: WindowView,
    /// Messages the live grants still allow; null when one is unlimited.
    pub quota_left: Option<u64>,
    /// When the last live grant expires (Unix seconds); null with none.
    pub expires_at: Option<i64>,
    /// Why a message cannot be sent now (`closed`, `exhausted`, `unsubscribed`), null when it can.
    pub blocked: Option<&'static str>,
    /// The same as a sentence for people.
    pub blocked_reason: Option<String>,
}

impl WindowState {
    pub fn of(view: WindowView) -> WindowState {
        let mut quota = Some(0u64);
        for g in &view.grants {
            quota = match (quota, g.limit) {
                (Some(q), Some(l)) => Some(q + u64::from(l.saturating_sub(g.used))),
                _ => None,
            };
        }
        let expires_at = view.grants.iter().map(|g| g.expires_at).max();
        let blocked = if view.open {
            None
        } else if view.subscribed == Some(false) {
            Some(DenyReason::Unsubscribed)
        } else if view.grants.is_empty() {
            Some(DenyReason::Closed)
        } else {
            Some(DenyReason::Exhausted)
        };
        WindowState {
            quota_left: quota,
            expires_at,
            blocked: blocked.map(|b| match b {
                DenyReason::Closed => "closed",
                DenyReason::Exhausted => "exhausted",
                DenyReason::Unsubscribed => "unsubscribed",
            }),
            blocked_reason: blocked.map(|b| b.to_string()),
            view,
        }
    }
}

/// One follower in the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Conversation {
    #[serde(flatten)]
    pub activity: FollowerActivity,
    pub window: WindowState,
}

/// Where a page of the list ends: the last follower's `last_at_ms` and OpenID, written
/// `"<last_at_ms>:<openid>"` (the `next_before` of `GET /admin/conversations`). The next page
/// starts right after that follower in the list's order (last activity descending, OpenID
/// descending within a millisecond), so followers active in the same millisecond are neither
/// skipped nor repeated. A plain `<ms>` (Unix ms) also parses: every follower last active
/// before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    /// Unix ms.
    pub last_at_ms: i64,
    /// The OpenID; None for a plain ms.
    pub openid: Option<OpenId>,
}

impl Cursor {
    /// Parses `"<ms>:<openid>"` or `"<ms>"`; the error names the expected form.
    pub fn parse(s: &str) -> Result<Cursor, String> {
        let bad = || {
            format!(
                "{s:?} is not a cursor: give the previous page's next_before \
                 (\"<last_at_ms>:<openid>\", e.g. \"1796058340000:oUser1\") or Unix ms"
            )
        };
        let (ms, openid) = match s.trim().split_once(':') {
            Some((ms, id)) => (ms, Some(OpenId::parse(id).map_err(|_| bad())?)),
            None => (s.trim(), None),
        };
        let last_at_ms = ms.parse::<i64>().map_err(|_| bad())?;
        Ok(Cursor { last_at_ms, openid })
    }

    /// The cursor after this follower.
    pub fn after(activity: &FollowerActivity) -> Cursor {
        Cursor { last_at_ms: activity.last_at_ms, openid: Some(activity.openid.clone()) }
    }

    fn key(&self) -> (i64, String) {
        let id = self.openid.as_ref().map(|o| o.as_str().to_string()).unwrap_or_default();
        (self.last_at_ms, id)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.openid {
            Some(o) => write!(f, "{}:{}", self.last_at_ms, o.as_str()),
            None => write!(f, "{}", self.last_at_ms),
        }
    }
}

/// A page size as asked (`?limit=`, `--limit`): 0 is refused (a page of nothing pages
/// nowhere), above [`MAX_PAGE`] is cut to it (the page then says where the rest starts).
pub fn page_size(limit: usize) -> Result<usize, String> {
    if limit == 0 {
        return Err(format!("limit must be 1 to {MAX_PAGE} (0 lists nothing)"));
    }
    Ok(limit.min(MAX_PAGE))
}

/// One page of the list and where the next starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Page {
    pub conversations: Vec<Conversation>,
    /// The cursor of the next page (`before=`); null when this page holds the last follower.
    #[serde(serialize_with = "cursor_text")]
    pub next_before: Option<Cursor>,
}

fn cursor_text<S: serde::Serializer>(c: &Option<Cursor>, s: S) -> Result<S::Ok, S::Error> {
    match c {
        Some(c) => s.collect_str(c),
        None => s.serialize_none(),
    }
}

/// Followers by last activity (newest first), at most `limit` (1 to [`MAX_PAGE`]; see
/// [`page_size`]), those after `before` (the previous page's `next_before`), with the cursor
/// of the next page when more followers remain.
pub async fn page(
    store: &dyn Store,
    limit: usize,
    before: Option<&Cursor>,
    now: i64,
) -> StoreResult<Page> {
    let limit = limit.clamp(1, MAX_PAGE);
    // One more than the page: whether it exists says whether there is a next page.
    let mut followers = store.log_followers(limit + 1, before.map(Cursor::key)).await?;
    let more = followers.len() > limit;
    followers.truncate(limit);
    let next_before = followers.last().filter(|_| more).map(Cursor::after);
    let mut conversations = Vec::with_capacity(followers.len());
    for activity in followers {
        let view = store.window(&activity.openid, now).await?;
        conversations.push(Conversation { activity, window: WindowState::of(view) });
    }
    Ok(Page { conversations, next_before })
}

/// The followers of one [`page`], without the cursor.
pub async fn list(
    store: &dyn Store,
    limit: usize,
    before: Option<&Cursor>,
    now: i64,
) -> StoreResult<Vec<Conversation>> {
    Ok(page(store, limit, before, now).await?.conversations)
}

/// One follower: the window and the records at or after `since_ms`, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Thread {
    pub openid: OpenId,
    pub window: WindowState,
    pub messages: Vec<LogRecord>,
}

pub async fn show(
    store: &dyn Store,
    openid: &OpenId,
    since_ms: Option<i64>,
    now: i64,
) -> StoreResult<Thread> {
    let messages = store.log_show(openid, since_ms).await?;
    let window = WindowState::of(store.window(openid, now).await?);
    Ok(Thread { openid: openid.clone(), window, messages })
}

/// What [`delete`] erased.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Erased {
    pub records: u64,
    pub turns: u64,
}

/// Erases the follower's log and every kept LLM turn (a data-subject request).
pub async fn delete(store: &dyn Store, openid: &OpenId) -> StoreResult<Erased> {
    let records = store.log_delete(openid).await?;
    let turns = store.clear_turns(openid).await?;
    Ok(Erased { records, turns })
}

/// Reads a reply: `{"text": "…"}`, or any reply table of a rule file (interface §4:
/// `image`, `news`, `menu`, … with optional `as`), into the `custom/send` body for `openid`.
/// `delay`, `transfer`, `typing` and `forward` are refused: a reply is one message, now.
pub fn parse_reply(
    openid: &OpenId,
    body: &Value,
    window: &WindowConfig,
) -> Result<SendBody, String> {
    let Some(table) = body.as_object() else {
        return Err("the body must be a JSON object such as {\"text\": \"…\"}".into());
    };
    if table.is_empty() {
        return Err("the body is empty: give {\"text\": \"…\"} or a reply table".into());
    }
    for refused in ["delay", "transfer", "typing", "forward"] {
        if table.contains_key(refused) {
            return Err(format!(
                "\"{refused}\" has no meaning in a reply sent now from the console"
            ));
        }
    }
    if table.len() == 1
        && let Some(text) = table.get("text")
    {
        let Some(text) = text.as_str().map(str::trim).filter(|t| !t.is_empty()) else {
            return Err("\"text\" must be a non-empty string".into());
        };
        let msg = OutMessage::Text { content: text.to_string() };
        return Ok(SendBody::of_message(openid, &msg, None));
    }
    // Any other table is compiled as one reply of a one-rule file, exactly as rule files are.
    let toml_table = toml::Value::try_from(body)
        .map_err(|e| format!("the reply is not a table a rule file could hold: {e}"))?;
    let reply = toml::to_string(&toml_table).map_err(|e| e.to_string())?;
    let file = format!("[[rule]]\nname = \"console\"\n[[rule.reply]]\n{reply}");
    let loaded = crate::rules::RuleSet::from_sources(vec![("reply.toml".into(), file)], window)
        .map_err(|diags| {
            diags
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        })?;
    let input = RuleInput {
        from: openid.as_str().to_string(),
        msg_type: "text".into(),
        ..RuleInput::default()
    };
    let ev = loaded.set.evaluate(&input);
    match ev.actions.into_iter().next() {
        Some(p) => match p.action {
            Action::Send { message } => {
                Ok(SendBody::of_message(openid, &message, p.kf_account.as_deref()))
            }
            _ => Err("a reply from the console must be a message".into()),
        },
        None => Err("the reply table names no message kind".into()),
    }
}

/// A reply sent now through the window gate (as `POST /admin/send`), recorded in the log as
/// `console` when it was sent (or dry-run) or WeChat refused it; a refusal by the window sends
/// and records nothing ([`crate::pipeline::gate::send_logged`]). A text longer than WeChat's
/// 2048 bytes goes as several messages split like a rule's long text (interface §7.5), each
/// charged to the window; the first part the window or WeChat refuses stops the rest, and its
/// result is the answer.
pub async fn reply(
    store: &dyn Store,
    client: &ApiClient,
    body: &SendBody,
    now_ms: i64,
) -> Result<Gated, GateError> {
    let text = body.json().get("text").and_then(|t| t.get("content")).and_then(|c| c.as_str());
    let parts = match text {
        Some(t) if t.len() > MAX_TEXT_BYTES as usize => {
            crate::delivery::split::split_text(t, MAX_TEXT_BYTES as usize)
                .into_iter()
                .map(|p| {
                    let msg = OutMessage::Text { content: p.to_string() };
                    SendBody::of_message(body.to(), &msg, body.kf_account())
                })
                .collect()
        }
        _ => vec![body.clone()],
    };
    let mut parts = parts.into_iter();
    let first = parts.next().unwrap_or_else(|| body.clone());
    let mut result = send_logged(store, client, &first, GateMode::Enforce, now_ms).await;
    for (i, part) in parts.enumerate() {
        if !matches!(result, Ok(Gated::Sent { .. } | Gated::DryRun { .. })) {
            break;
        }
        let at = now_ms + i as i64 + 1; // one record per part, in order
        result = send_logged(store, client, &part, GateMode::Enforce, at).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oid() -> OpenId {
        OpenId::parse("oUser1234567890").unwrap()
    }

    #[test]
    fn cursors_round_trip_and_name_the_form_when_bad() {
        let c = Cursor::parse("1796058340000:oUser1234567890").unwrap();
        assert_eq!(c, Cursor { last_at_ms: 1796058340000, openid: Some(oid()) });
        assert_eq!(c.to_string(), "1796058340000:oUser1234567890");
        assert_eq!(c.key(), (1796058340000, "oUser1234567890".to_string()));
        let plain = Cursor::parse("1796058340000").unwrap();
        assert_eq!(
            (plain.to_string(), plain.key()),
            ("1796058340000".into(), (1796058340000, "".into()))
        );
        for bad in ["", "abc", "12:", "12:bad id", ":oUser1", "1.5"] {
            let e = Cursor::parse(bad).unwrap_err();
            assert!(e.contains("<last_at_ms>:<openid>"), "{bad}: {e}");
        }
        assert!(page_size(0).is_err());
        assert_eq!((page_size(1), page_size(5000)), (Ok(1), Ok(MAX_PAGE)));
    }

    #[test]
    fn replies_parse_as_rule_file_tables() {
        let w = WindowConfig::default();
        let t = parse_reply(&oid(), &serde_json::json!({"text": "您好 {x}"}), &w).unwrap();
        assert_eq!(t.json()["text"]["content"], "您好 {x}");
        let i = parse_reply(&oid(), &serde_json::json!({"image": "MEDIA1"}), &w).unwrap();
        assert_eq!(i.json()["image"]["media_id"], "MEDIA1");
        assert_eq!(i.json()["touser"], "oUser1234567890");
        for bad in [
            serde_json::json!({}),
            serde_json::json!([1]),
            serde_json::json!({"text": ""}),
            serde_json::json!({"text": "x", "delay": "1m"}),
            serde_json::json!({"nonsense": 1}),
        ] {
            assert!(parse_reply(&oid(), &bad, &w).is_err(), "{bad}");
        }
    }
}
