//! Backends (interface §7): the services a rule's `forward = "NAME"` reply sends a push to,
//! and the one shape every kind shares — the request ([`ForwardRequest`], the JSON of §7.3),
//! the answer ([`Answer`]: reply tables checked by the rules' own compiler, [`parse_answer`]),
//! the failure ([`CallError`]) and the retry policy ([`backoff`], [`with_retries`]).
//!
//! Each kind is a [`Backend`]: [`http::HttpBackend`] (the operator's own service, §7.3) and
//! [`openai::OpenAiBackend`] (an OpenAI-compatible chat API, §7.6). [`Backends`] holds the
//! configured ones by name. What happens around a call — the passive wait, redeliveries,
//! durability, the per-follower rate limit, delivery of the answer — is the pipeline's
//! ([`crate::pipeline::forward`]); a backend only turns one request into one answer.
//!
//! Layering: below the pipeline, above rules (for the answer's parser), config, store and
//! metrics.

pub mod http;
pub mod openai;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::config::{BackendConfig, Config};
use crate::metrics::Metrics;
use crate::model::{Action, OutMessage, PlannedAction, SharedClock, Source};
use crate::store::Store;

/// One backend kind's implementation. Object-safe: the pipeline holds `Arc<dyn Backend>`.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// `backends.NAME`.
    fn name(&self) -> &str;

    /// One forward: every attempt the backend's `retries` allow ([`with_retries`]), each
    /// failure logged with its cause and counted; the last failure is returned. Never longer
    /// than `(retries + 1) × timeout` plus the backoff between attempts.
    async fn call(&self, req: &ForwardRequest) -> Result<Answer, CallError>;

    /// An answer without a call (the openai backend's `/reset`): answered like a backend
    /// answer, not rate-limited, nothing called. The default: none.
    fn shortcut(&self, _req: &ForwardRequest) -> Option<Answer> {
        None
    }

    /// Called once the answer to `req` is committed (chosen as the passive reply, or written
    /// to the outbox or held), never for a fallback: the openai backend keeps the turn only
    /// then. The default does nothing.
    async fn answered(&self, _req: &ForwardRequest, _answer: &Answer) {}
}

/// The request of interface §7.3 / §11.1, exactly as the http backend POSTs it. Stored with
/// the forward (JSON) so that a call after a restart sends the same body with the same `id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// Stable id of the push ([`forward_id`]): the same on every attempt, redelivery and
    /// restart.
    pub id: String,
    /// The push's `ToUserName` (`gh_…`).
    pub account: String,
    /// The kefu account the push came to (`[accounts.NAME]`'s NAME, or `default`): a backend
    /// shared by several accounts tells them apart by it (interface §10). Extra to §11.1;
    /// empty in a request stored before it existed.
    #[serde(default)]
    pub account_name: String,
    pub openid: String,
    /// When kefu received the push, Unix seconds.
    pub received_at: i64,
    /// The rule whose reply forwards.
    pub rule: String,
    pub push: PushFacts,
    pub window: WindowFacts,
}

/// `push` of the request: every field present, `null` when the push has none (§11.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushFacts {
    /// `MsgType` as WeChat sent it (`text`, `voice`, `event`, …).
    pub msgtype: String,
    /// A text message's `Content`.
    pub content: Option<String>,
    /// `MsgId` as a string.
    pub msg_id: Option<String>,
    pub event: Option<String>,
    pub event_key: Option<String>,
    pub media_id: Option<String>,
    pub pic_url: Option<String>,
    /// A voice message's speech recognition (`Recognition`).
    pub recognition: Option<String>,
    /// A location message or `LOCATION` event: `{latitude, longitude, scale?, label?}`.
    pub location: Option<serde_json::Value>,
    /// The named groups the rule's regex captured.
    pub captures: BTreeMap<String, String>,
}

impl PushFacts {
    /// The follower's words: the text, else the voice recognition.
    pub fn text(&self) -> Option<&str> {
        self.content.as_deref().or(self.recognition.as_deref()).filter(|t| !t.trim().is_empty())
    }
}

/// `window` of the request: the follower's window after this push opened its grant (§11.1).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowFacts {
    pub open: bool,
    /// Messages the window can still carry (`null`: no limit).
    pub quota_left: Option<u64>,
    /// When the last live grant expires, Unix seconds (`null`: none open).
    pub expires_at: Option<i64>,
    /// Whether kefu may call `custom/send` for this account now.
    pub customer_service: bool,
}

/// A backend's answer: the replies of the forwarding rule, in order (rule name = the rule
/// that forwarded), each compiled from a reply table by the rules' compiler. Empty = nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    pub replies: Vec<PlannedAction>,
}

impl Answer {
    /// One text reply written by the backend (the conversation log's source `backend`).
    pub fn text(rule: &str, text: impl Into<String>) -> Answer {
        Answer {
            replies: vec![PlannedAction {
                rule: rule.to_string(),
                action: Action::Send { message: OutMessage::Text { content: text.into() } },
                delay: Duration::ZERO,
                kf_account: None,
                source: Source::Backend,
            }],
        }
    }

    /// The text of the answer's text replies, one per line (for `kefu backends check`, logs
    /// and the openai backend's kept turns).
    pub fn text_summary(&self) -> String {
        self.replies
            .iter()
            .map(|r| match &r.action {
                Action::Send { message: OutMessage::Text { content } } => content.clone(),
                Action::Send { message } => format!("[{}]", message.msgtype()),
                Action::Typing => "[typing]".into(),
                Action::Transfer { .. } => "[transfer]".into(),
                Action::Forward { backend, .. } => format!("[forward → {backend}]"),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The fallback of a forward that failed for good: the rule's `fallback` text as one text
/// reply, or nothing.
pub fn fallback_answer(rule: &str, fallback: Option<&str>) -> Answer {
    let mut answer = match fallback.filter(|f| !f.is_empty()) {
        Some(f) => Answer::text(rule, f),
        None => Answer::default(),
    };
    // The fallback is the rule's own text, not the backend's.
    for r in &mut answer.replies {
        r.source = Source::Rule;
    }
    answer
}

/// Why a call failed. Every variant names the cause an operator fixes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("no answer from {url} within {}", humantime::format_duration(*after))]
    Timeout { url: String, after: Duration },
    /// Connection refused, DNS, TLS: the cause as [`crate::api::error::transport_cause`]
    /// words it.
    #[error("{cause}")]
    Connect { cause: String },
    #[error("{url} answered HTTP {code}{}", body_note(body))]
    Status {
        url: String,
        code: u16,
        /// The start of the body, for the log.
        body: String,
        /// A 429's `Retry-After`.
        retry_after: Option<Duration>,
    },
    #[error("{url} answered something that is not {{\"replies\":[…]}}: {reason}")]
    Malformed { url: String, reason: String },
    /// The backend cannot be used at all (a kind not built, a bad key).
    #[error("{0}")]
    Unusable(String),
}

fn body_note(body: &str) -> String {
    if body.trim().is_empty() { String::new() } else { format!(": {}", body.trim()) }
}

impl CallError {
    /// A timeout, a connection error, a 5xx or a 429 is worth another attempt; a 4xx or a
    /// malformed body is not (interface §7.3).
    pub fn is_retriable(&self) -> bool {
        match self {
            CallError::Timeout { .. } | CallError::Connect { .. } => true,
            CallError::Status { code, .. } => *code >= 500 || *code == 429,
            CallError::Malformed { .. } | CallError::Unusable(_) => false,
        }
    }

    /// The `outcome` label of `kefu_backend_requests_total`.
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Timeout { .. } => "timeout",
            CallError::Connect { .. } => "connect",
            CallError::Status { code, .. } if *code >= 500 => "http_5xx",
            CallError::Status { .. } => "http_4xx",
            CallError::Malformed { .. } => "malformed",
            CallError::Unusable(_) => "unusable",
        }
    }
}

/// The wait before retry `n` (0-based): 1 s, 2 s, 4 s …, at most 60 s (interface §11.5).
pub fn backoff(n: u32) -> Duration {
    Duration::from_secs(1u64 << n.min(6)).min(Duration::from_secs(60))
}

/// The stable id of a push's forward (interface §7.3): derived from the push's dedupe key
/// (account, follower and the push's own identity, protocol §5.1), so every attempt, every
/// redelivery of the push and every call after a restart carries the same id, and no other
/// push's. Opaque: `fw_` and 32 hex digits of SHA-256.
pub fn forward_id(dedupe_key: &str) -> String {
    let digest = Sha256::digest(dedupe_key.as_bytes());
    format!("fw_{}", hex::encode(&digest[..16]))
}

/// Parses a backend's `200` body: `{"replies":[…]}`, each element a reply table as in rule
/// files (interface §4), compiled by the rules' own compiler ([`crate::rules::compile_answer`]),
/// so what a rule file may say, an answer may say, checked the same way. Media files named in
/// it are relative to `rules_dir`.
pub fn parse_answer(
    body: &[u8],
    rule: &str,
    rules_dir: &std::path::Path,
    url: &str,
) -> Result<Answer, CallError> {
    let malformed = |reason: String| CallError::Malformed { url: url.to_string(), reason };
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| malformed(format!("not JSON ({e})")))?;
    let replies = value
        .as_object()
        .and_then(|o| o.get("replies"))
        .ok_or_else(|| malformed("no \"replies\" field".into()))?;
    let list = replies.as_array().ok_or_else(|| malformed("\"replies\" is not a list".into()))?;
    let mut replies = crate::rules::compile_answer(list, rule, rules_dir)
        .map_err(|errors| malformed(errors.join("; ")))?;
    for r in &mut replies {
        r.source = Source::Backend;
    }
    Ok(Answer { replies })
}

/// Runs `attempt` until it succeeds, fails for good, or `retries` more attempts have failed,
/// waiting [`backoff`] between attempts (a 429's `Retry-After` when longer). Every attempt is
/// counted in `kefu_backend_requests_total` / `kefu_backend_seconds`, and every failure is
/// logged with its cause (never a secret: the errors carry none).
pub async fn with_retries<T, F, Fut>(
    backend: &str,
    request_id: &str,
    retries: u32,
    metrics: &Metrics,
    mut attempt: F,
) -> Result<T, CallError>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Result<T, CallError>>,
{
    let mut n = 0;
    loop {
        let started = Instant::now();
        let result = attempt(n).await;
        let took = started.elapsed();
        match result {
            Ok(answer) => {
                metrics.backend_call(backend, "ok", Some(took));
                return Ok(answer);
            }
            Err(e) => {
                metrics.backend_call(backend, e.outcome(), Some(took));
                let last = n >= retries || !e.is_retriable();
                tracing::warn!(
                    backend, id = request_id, attempt = n + 1, of = retries + 1,
                    outcome = e.outcome(), error = %e,
                    "backend call failed{}",
                    if last { "" } else { "; retrying" }
                );
                if last {
                    return Err(e);
                }
                let mut wait = backoff(n);
                if let CallError::Status { retry_after: Some(r), .. } = &e {
                    wait = wait.max(*r);
                }
                tokio::time::sleep(wait).await;
                n += 1;
            }
        }
    }
}

/// What a backend may need beyond its config: metrics, the store (the openai backend keeps
/// turns there; `None` in commands that open none), the clock and the rules directory (media
/// files in answers).
#[derive(Clone)]
pub struct BackendDeps {
    pub metrics: Arc<Metrics>,
    pub store: Option<Arc<dyn Store>>,
    pub clock: SharedClock,
    pub rules_dir: PathBuf,
}

/// One configured backend: the implementation, its config and its call slots
/// (`max_concurrent`).
#[derive(Clone)]
pub struct Entry {
    pub backend: Arc<dyn Backend>,
    pub config: BackendConfig,
    pub slots: Arc<Semaphore>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry").field("config", &self.config).finish()
    }
}

/// The configured backends by name (`[backends.NAME]`).
#[derive(Clone, Debug, Default)]
pub struct Backends {
    entries: BTreeMap<String, Entry>,
}

impl Backends {
    /// Builds every `[backends.NAME]` of `cfg`; an error names the backend and the cause.
    pub fn from_config(cfg: &Config, deps: &BackendDeps) -> anyhow::Result<Backends> {
        let mut entries = BTreeMap::new();
        for (name, b) in &cfg.backends {
            let backend: Arc<dyn Backend> = match &b.kind {
                crate::config::BackendKind::Http(h) => Arc::new(
                    http::HttpBackend::new(b, h, deps)
                        .map_err(|e| anyhow::anyhow!("[backends.{name}] cannot be used: {e}"))?,
                ),
                crate::config::BackendKind::OpenAi(o) => Arc::new(
                    openai::OpenAiBackend::new(b, o, deps)
                        .map_err(|e| anyhow::anyhow!("[backends.{name}] cannot be used: {e}"))?,
                ),
            };
            entries.insert(
                name.clone(),
                Entry {
                    backend,
                    config: b.clone(),
                    slots: Arc::new(Semaphore::new(b.max_concurrent.max(1))),
                },
            );
        }
        Ok(Backends { entries })
    }

    /// Makes every backend of `self` take its call slots (`max_concurrent`) from the backend of
    /// the same name in `first`: the accounts of one kefu share each backend's limit, as they
    /// share the backend (interface §10).
    pub fn share_slots(&mut self, first: &Backends) {
        for (name, entry) in &mut self.entries {
            if let Some(f) = first.entries.get(name) {
                entry.slots = f.slots.clone();
            }
        }
    }

    /// Adds (or replaces) a backend by hand (tests, benches).
    pub fn insert(&mut self, config: BackendConfig, backend: Arc<dyn Backend>) {
        let slots = Arc::new(Semaphore::new(config.max_concurrent.max(1)));
        self.entries.insert(config.name.clone(), Entry { backend, config, slots });
    }

    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.get(name)
    }

    /// Configured names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second() {
        let waits: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn forward_ids_are_stable_and_per_push() {
        let a = forward_id("m:gh_1:o1:1700000000:42");
        assert_eq!(a, forward_id("m:gh_1:o1:1700000000:42"));
        assert_ne!(a, forward_id("m:gh_1:o2:1700000000:42"));
        assert!(a.starts_with("fw_") && a.len() == 35, "{a}");
    }

    #[test]
    fn retriable_failures() {
        let status = |code| CallError::Status {
            url: "u".into(),
            code,
            body: String::new(),
            retry_after: None,
        };
        assert!(status(500).is_retriable() && status(503).is_retriable());
        assert!(status(429).is_retriable());
        assert!(!status(400).is_retriable() && !status(404).is_retriable());
        assert!(
            CallError::Timeout { url: "u".into(), after: Duration::from_secs(1) }.is_retriable()
        );
        assert!(CallError::Connect { cause: "refused".into() }.is_retriable());
        let m = CallError::Malformed { url: "u".into(), reason: "x".into() };
        assert!(!m.is_retriable());
        assert_eq!(m.outcome(), "malformed");
        assert_eq!(status(502).outcome(), "http_5xx");
        assert_eq!(status(400).outcome(), "http_4xx");
    }

    #[test]
    fn the_request_json_has_every_push_field() {
        let req = ForwardRequest {
            id: "fw_1".into(),
            account: "gh_1".into(),
            account_name: "default".into(),
            openid: "o1".into(),
            received_at: 1_700_000_000,
            rule: "ask".into(),
            push: PushFacts {
                msgtype: "text".into(),
                content: Some("我的订单到哪了".into()),
                msg_id: Some("2403".into()),
                ..PushFacts::default()
            },
            window: WindowFacts {
                open: true,
                quota_left: Some(4),
                expires_at: Some(1),
                customer_service: true,
            },
        };
        let v = serde_json::to_value(&req).unwrap();
        for k in [
            "msgtype",
            "content",
            "msg_id",
            "event",
            "event_key",
            "media_id",
            "pic_url",
            "recognition",
            "location",
            "captures",
        ] {
            assert!(v["push"].get(k).is_some(), "push.{k} missing: {v}");
        }
        assert_eq!(v["push"]["event"], serde_json::Value::Null);
        assert_eq!(v["window"]["quota_left"], 4);
        let back: ForwardRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);
    }
}
