//! The conversation log's records (interface §8.1): what one follower wrote and what kefu
//! answered, with the outcome of each answer. Pure data and the pure functions that build
//! records; the stores keep them (`store/sqlite/convlog.rs`, `{ns}:log:` in `store/redis.rs`)
//! inside the transactions that decide them, so the log says what really happened.
//!
//! Times are Unix milliseconds. A record is one JSON object (the `--json` output of `kefu
//! conversations show`, `GET /admin/conversations/{openid}` and the `data` of an SSE `message`
//! event of `GET /admin/events`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::SendBody;
use crate::model::{OpenId, OutMessage, OutboxAction, PassiveReply, PlannedAction, Source};
use crate::wechat::inbound::{Event, Push, PushKind};

/// `log.retention` when the file does not say: 30 days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(30 * 86_400);

/// How an answer left (or would have left): as the HTTP answer to the push, or through
/// `custom/send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Passive,
    CustomSend,
}

/// What became of an answer. A follower's push has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogOutcome {
    /// Delivered to WeChat (or, in dry-run, logged as it would have been).
    Sent,
    /// WeChat refused it (`errcode`) or the send failed for good.
    Failed,
    /// Not attempted, with a reason (window closed, unsubscribed, expired, ...).
    Dropped,
    /// Waiting in the follower's mailbox for their next push (interface §7.4.3).
    Held,
}

impl LogOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            LogOutcome::Sent => "sent",
            LogOutcome::Failed => "failed",
            LogOutcome::Dropped => "dropped",
            LogOutcome::Held => "held",
        }
    }
}

/// One line of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Unique within the follower's log, increasing with time (SQLite: the row id; Redis: the
    /// time in ms times 1000 plus a counter). 0 before it is stored.
    #[serde(default)]
    pub id: i64,
    pub openid: OpenId,
    /// When it happened (Unix ms): a push's receipt, an answer's outcome.
    pub at_ms: i64,
    /// `follower` for a push; `rule`, `backend` or `console` for an answer.
    pub source: Source,
    /// A push's `MsgType` (`text`, `image`, `event`, ... or `payment`); an answer's msgtype
    /// (`text`, `news`, ... or `transfer`).
    pub kind: String,
    /// What to show: the text, or a summary of media, location, event and key.
    pub text: String,
    /// An answer's route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// The rule that planned an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// An answer's body: the `custom/send` JSON, or the passive reply as kefu stores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<LogOutcome>,
    /// Why it failed, was dropped or is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// WeChat's errcode when it refused the send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errcode: Option<i64>,
}

impl LogRecord {
    /// A follower's push, as [`summarize`] or [`payment_summary`] put it.
    pub fn push(openid: &OpenId, at_ms: i64, (kind, text): (String, String)) -> LogRecord {
        LogRecord {
            id: 0,
            openid: openid.clone(),
            at_ms,
            source: Source::Follower,
            kind,
            text,
            via: None,
            rule: None,
            body: None,
            outcome: None,
            reason: None,
            errcode: None,
        }
    }

    /// An answer (a message for `custom/send`) with its outcome.
    pub fn answer(
        openid: &OpenId,
        at_ms: i64,
        action: &PlannedAction<OutboxAction>,
        via: Via,
        outcome: LogOutcome,
        reason: Option<String>,
    ) -> LogRecord {
        let (kind, text, body) = match &action.action {
            OutboxAction::Send { message } => {
                let body = SendBody::of_message(openid, message, action.kf_account.as_deref())
                    .json()
                    .clone();
                (message.msgtype().to_string(), message_text(message), Some(body))
            }
            OutboxAction::Typing => ("typing".to_string(), "[正在输入]".to_string(), None),
        };
        LogRecord {
            id: 0,
            openid: openid.clone(),
            at_ms,
            source: action.source,
            kind,
            text,
            via: Some(via),
            rule: Some(action.rule.clone()),
            body,
            errcode: reason.as_deref().and_then(errcode_in),
            outcome: Some(outcome),
            reason,
        }
    }

    /// The passive answer given to a push, by `rule` (written by `source`).
    pub fn passive(
        openid: &OpenId,
        at_ms: i64,
        reply: &PassiveReply,
        rule: &str,
        source: Source,
    ) -> LogRecord {
        let (kind, text) = match reply {
            PassiveReply::Message { message } => {
                (message.msgtype().to_string(), message_text(message))
            }
            PassiveReply::Transfer { kf_account } => (
                "transfer".to_string(),
                match kf_account {
                    Some(k) => format!("[转人工客服 {k}]"),
                    None => "[转人工客服]".to_string(),
                },
            ),
        };
        LogRecord {
            id: 0,
            openid: openid.clone(),
            at_ms,
            source,
            kind,
            text,
            via: Some(Via::Passive),
            rule: Some(rule.to_string()),
            body: serde_json::to_value(reply).ok(),
            outcome: Some(LogOutcome::Sent),
            reason: None,
            errcode: None,
        }
    }

    /// A message sent from the console (or `POST /admin/conversations/{openid}/reply`).
    pub fn console(
        body: &SendBody,
        at_ms: i64,
        outcome: LogOutcome,
        reason: Option<String>,
    ) -> LogRecord {
        let json = body.json();
        let text = match json.get("text").and_then(|t| t.get("content")).and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => format!("[{}]", body.msgtype()),
        };
        LogRecord {
            id: 0,
            openid: body.to().clone(),
            at_ms,
            source: Source::Console,
            kind: body.msgtype().to_string(),
            text,
            via: Some(Via::CustomSend),
            rule: None,
            body: Some(json.clone()),
            errcode: reason.as_deref().and_then(errcode_in),
            outcome: Some(outcome),
            reason,
        }
    }

    /// Decodes a stored record (JSON); None for one kefu cannot read.
    pub fn decode(s: &str) -> Option<LogRecord> {
        serde_json::from_str(s).ok()
    }

    /// The record as stored (JSON).
    pub fn encode(&self) -> String {
        // A record is plain data; serializing it cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A follower's ledger JSON (interface §5, its fields in that order) with `held_answers`
/// added: what `held` counts, oldest first, each
/// `{"rule","msgtype","text","reason","held_at_ms","expires_at_ms"}`.
/// `GET /admin/windows/{openid}` and `kefu window show --json` both answer this.
#[derive(Serialize)]
pub struct WindowJson<'a> {
    #[serde(flatten)]
    pub view: &'a crate::store::WindowView,
    pub held_answers: Vec<Value>,
}

/// [`WindowJson`] of a follower's window and held answers.
pub fn window_json<'a>(
    view: &'a crate::store::WindowView,
    held: &[crate::delivery::HeldAnswer],
) -> WindowJson<'a> {
    let held_answers = held
        .iter()
        .map(|h| {
            let (msgtype, text) = match &h.action.action {
                OutboxAction::Send { message } => {
                    (message.msgtype().to_string(), message_text(message))
                }
                OutboxAction::Typing => ("typing".to_string(), String::new()),
            };
            serde_json::json!({"rule": h.rule, "msgtype": msgtype, "text": text,
                "reason": h.reason, "held_at_ms": h.held_at_ms, "expires_at_ms": h.expires_at_ms})
        })
        .collect();
    WindowJson { view, held_answers }
}

/// What a push commit (or a forwarded answer's commit) writes to the log, in both stores: the
/// push itself (`push`, none for an answer's commit), the passive answer (a held one, or the
/// commit's own written by `own`'s rule and source), the commit's messages that are held, and
/// held answers it dropped (expired, undeliverable). Released and planned messages are logged
/// when the sender finishes them.
pub fn commit_records(
    push: Option<&LogRecord>,
    openid: &OpenId,
    at_ms: i64,
    a: &crate::delivery::Assignment,
    held: &[crate::delivery::HeldAnswer],
    own: Option<&crate::delivery::OwnPassive>,
    hold_reason: &str,
) -> Vec<LogRecord> {
    let mut out: Vec<LogRecord> = push.into_iter().cloned().collect();
    if let Some(reply) = &a.passive {
        let from_held = a.passive_from_held.and_then(|id| held.iter().find(|h| h.id == id));
        let (rule, source) = match (from_held, own) {
            (Some(h), _) => (h.rule.as_str(), h.action.source),
            (None, Some(p)) => (p.rule.as_str(), p.source),
            (None, None) => ("", Source::Rule),
        };
        out.push(LogRecord::passive(openid, at_ms, reply, rule, source));
    }
    for e in &a.hold {
        let why = Some(hold_reason.to_string());
        out.push(LogRecord::answer(
            openid,
            at_ms,
            &e.action,
            Via::CustomSend,
            LogOutcome::Held,
            why,
        ));
    }
    let expired = a.expired.iter().map(|id| (id, crate::delivery::EXPIRED));
    let undeliverable = a.undeliverable.iter().map(|id| (id, crate::delivery::UNDELIVERABLE));
    for (id, why) in expired.chain(undeliverable) {
        if let Some(h) = held.iter().find(|h| h.id == *id) {
            let why = Some(why.to_string());
            out.push(LogRecord::answer(
                openid,
                at_ms,
                &h.action,
                Via::CustomSend,
                LogOutcome::Dropped,
                why,
            ));
        }
    }
    out
}

/// Whether an outbox action is a message the log records (a typing indicator is not).
pub fn is_message(action: &PlannedAction<OutboxAction>) -> bool {
    matches!(action.action, OutboxAction::Send { .. })
}

/// What to show of an answer: a text's content, else a short label of its kind and title.
pub fn message_text(m: &OutMessage) -> String {
    let v = m.custom_send_body("", None);
    let kind = m.msgtype();
    if let Some(t) = v.get("text").and_then(|t| t.get("content")).and_then(Value::as_str) {
        return t.to_string();
    }
    let title = v
        .get(kind)
        .and_then(|x| x.get("title").or_else(|| x.get("head_content")))
        .and_then(Value::as_str)
        .or_else(|| {
            v.get(kind)
                .and_then(|x| x.get("articles"))
                .and_then(|a| a.get(0))
                .and_then(|a| a.get("title"))
                .and_then(Value::as_str)
        });
    match title {
        Some(t) => format!("[{}] {t}", label(kind)),
        None => format!("[{}]", label(kind)),
    }
}

fn label(kind: &str) -> &str {
    match kind {
        "image" => "图片",
        "voice" => "语音",
        "video" | "shortvideo" => "视频",
        "music" => "音乐",
        "news" | "mpnews" | "mpnewsarticle" => "图文",
        "msgmenu" => "菜单",
        "wxcard" => "卡券",
        "miniprogrampage" => "小程序",
        "location" => "位置",
        "link" => "链接",
        other => other,
    }
}

/// A push's kind and what to show of it: a text's content; for media a label (voice with its
/// recognition); a location's label and coordinates; a link's title and URL; an event's name
/// and key.
pub fn summarize(push: &Push) -> (String, String) {
    let kind = push.msg_type.clone();
    let text = match &push.kind {
        PushKind::Text { content, .. } => content.clone(),
        PushKind::Voice { recognition: Some(r), .. } => format!("[语音] {r}"),
        PushKind::Location { latitude, longitude, label: l, .. } => {
            let at = match (latitude, longitude) {
                (Some(a), Some(b)) => format!(" ({a}, {b})"),
                _ => String::new(),
            };
            format!("[位置] {l}{at}").trim_end().to_string()
        }
        PushKind::Link { title, url, .. } => format!("[链接] {title} {url}"),
        PushKind::Event(e) => event_text(push, e),
        PushKind::Unknown { msg_type, event, event_key, .. } => {
            let mut s = format!("[{msg_type}");
            for part in [event, event_key].into_iter().flatten() {
                s.push(' ');
                s.push_str(part);
            }
            s.push(']');
            s
        }
        _ => format!("[{}]", label(&kind)),
    };
    (kind, text)
}

fn event_text(push: &Push, e: &Event) -> String {
    let name = push.event().unwrap_or("event");
    let label = match e {
        Event::Subscribe { .. } => "关注",
        Event::Unsubscribe => "取消关注",
        Event::Scan { .. } => "扫码",
        Event::Click { .. } => "点击菜单",
        Event::View { .. } => "打开链接",
        Event::Location { .. } => "上报位置",
        _ => "事件",
    };
    match push.event_key().filter(|k| !k.is_empty()) {
        Some(k) => format!("[{label}] {name} {k}"),
        None => format!("[{label}] {name}"),
    }
}

/// A payment notification's kind and summary.
pub fn payment_summary(amount_yuan: &str, transaction_id: &str) -> (String, String) {
    ("payment".to_string(), format!("[支付] {amount_yuan} 元 {transaction_id}"))
}

/// WeChat's errcode in a failure reason (`… errcode 45015 …`), when it names one.
pub fn errcode_in(reason: &str) -> Option<i64> {
    let rest = &reason[reason.find("errcode")? + "errcode".len()..];
    let digits: String = rest
        .trim_start_matches([' ', ':', '='])
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '-')
        .collect();
    digits.parse().ok()
}

/// A follower in the log, for `kefu conversations list` and the console.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerActivity {
    pub openid: OpenId,
    /// The newest record's time (Unix ms).
    pub last_at_ms: i64,
    /// The newest record.
    pub last: Option<LogRecord>,
    /// Records kept for the follower.
    pub records: u64,
}

/// The live feed of recorded messages (`GET /admin/events`, the console): every record is
/// published after the transaction that wrote it committed. A cheap handle; a slow subscriber
/// loses the oldest records (it is told how many), never blocks a push.
#[derive(Clone, Debug)]
pub struct LogBus(tokio::sync::broadcast::Sender<LogRecord>);

impl Default for LogBus {
    fn default() -> Self {
        LogBus(tokio::sync::broadcast::channel(1024).0)
    }
}

impl LogBus {
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<LogRecord> {
        self.0.subscribe()
    }
    pub fn publish(&self, records: impl IntoIterator<Item = LogRecord>) {
        for r in records {
            // No subscriber: nobody is watching, nothing to do.
            let _ = self.0.send(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errcodes_in_reasons() {
        assert_eq!(errcode_in("WeChat API errcode 45015 (reply time limit): x"), Some(45015));
        assert_eq!(errcode_in("errcode: -1"), Some(-1));
        assert_eq!(errcode_in("window closed"), None);
    }

    #[test]
    fn records_round_trip_as_json() {
        let o = OpenId::parse("oUser1234567890").unwrap();
        let r = LogRecord::push(&o, 5, ("text".into(), "<b>hi</b>".into()));
        let back = LogRecord::decode(&r.encode()).unwrap();
        assert_eq!(back, r);
        assert!(!r.encode().contains("\"via\""));
        let a = PlannedAction {
            rule: "r".into(),
            action: OutboxAction::Send { message: OutMessage::Text { content: "好".into() } },
            delay: Duration::ZERO,
            kf_account: None,
            source: Source::Backend,
        };
        let r = LogRecord::answer(
            &o,
            6,
            &a,
            Via::CustomSend,
            LogOutcome::Failed,
            Some("WeChat API errcode 45047 (x)".into()),
        );
        assert_eq!(r.errcode, Some(45047));
        assert_eq!(r.source, Source::Backend);
        assert_eq!(r.body.as_ref().unwrap()["text"]["content"], "好");
    }
}
