//! The OpenAI-compatible chat-completions client and the conversation memory rules of the
//! `openai` backend (interface §7.6, §11.7).
//!
//! Every OpenAI-compatible server (OpenAI, DeepSeek, Qwen in DashScope's compatible mode,
//! Moonshot, Ollama, vLLM, LM Studio) takes the same `POST {base_url}/chat/completions` with
//! `{"model", "messages", "max_tokens"?, "temperature"?}` and answers
//! `choices[0].message.content` and `usage`. kefu needs exactly that one call, so it speaks it
//! with reqwest and typed serde structs rather than a full OpenAI SDK (async-openai): one HTTP
//! stack with the rest of kefu (rustls), and the retry policy of §11.5 (backoff 1 s, 2 s, …;
//! `Retry-After` on 429) and the failure causes operators need (401 → `api_key`, 404 →
//! `base_url`/`model`) stay in kefu's hands instead of an SDK's own retry loop.
//!
//! What a request contains is decided by [`messages`]: the system prompt, then the follower's
//! kept turns oldest first as user/assistant pairs, then the follower's message, and never
//! another follower's turns (the store keeps turns per OpenID).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::Secret;

/// One message of a chat-completions request (`role` is `system`, `user` or `assistant`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        ChatMessage { role: role.to_string(), content: content.into() }
    }
}

/// The request body of `POST {base_url}/chat/completions`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
}

/// The parts of the answer kefu reads.
#[derive(Clone, Debug, Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Clone, Debug, Deserialize)]
struct Choice {
    message: AnswerMessage,
}

#[derive(Clone, Debug, Deserialize)]
struct AnswerMessage {
    #[serde(default)]
    content: Option<String>,
}

/// Token counts as the server reported them (`usage`), for `kefu_llm_tokens_total`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// One answered exchange: what the follower said and what the model answered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// When the follower's message arrived (Unix ms).
    pub at_ms: i64,
    pub user: String,
    pub assistant: String,
}

/// A completed call: the answer text and the usage reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub content: String,
    pub usage: Usage,
}

/// Why a call failed, with what to check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    #[error("401 Unauthorized from {url}: check api_key (backends.{backend}.api_key)")]
    Unauthorized { backend: String, url: String },
    #[error(
        "404 Not Found from {url}: check base_url (backends.{backend}.base_url, kefu POSTs \
         {{base_url}}/chat/completions) and model (backends.{backend}.model)"
    )]
    NotFound { backend: String, url: String },
    /// 429: try again after `retry_after` (the server's `Retry-After`, else the backoff).
    #[error("429 Too Many Requests from {url} (rate limited by the model's server)")]
    RateLimited { url: String, retry_after: Option<Duration> },
    /// Another 4xx: not retried.
    #[error("{status} from {url}: {body}")]
    Refused { status: u16, url: String, body: String },
    /// A 5xx: retried.
    #[error("{status} from {url}: the model's server failed")]
    ServerError { status: u16, url: String },
    #[error("no answer from {url} within {timeout:?} (backends.{backend}.timeout)")]
    Timeout { backend: String, url: String, timeout: Duration },
    #[error("cannot reach {url}: {cause}; check base_url and that the server is running")]
    Connect { url: String, cause: String },
    #[error("the answer from {url} is not a chat completion: {why}")]
    Malformed { url: String, why: String },
}

impl LlmError {
    /// Timeouts, connection errors, 5xx and 429 are tried again (interface §7.3, §7.6).
    pub fn is_retriable(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. }
                | LlmError::ServerError { .. }
                | LlmError::Timeout { .. }
                | LlmError::Connect { .. }
        )
    }

    /// A stable label for metrics and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            LlmError::Unauthorized { .. } => "unauthorized",
            LlmError::NotFound { .. } => "not_found",
            LlmError::RateLimited { .. } => "rate_limited_upstream",
            LlmError::Refused { .. } => "refused",
            LlmError::ServerError { .. } => "server_error",
            LlmError::Timeout { .. } => "timeout",
            LlmError::Connect { .. } => "connect",
            LlmError::Malformed { .. } => "malformed",
        }
    }
}

/// A short description for the model of a push that has no words (interface §7.6): `[图片]`,
/// `[语音]`, `[视频]`, `[位置] label`, `[链接]`, `[文件]`, `[事件] EVENT KEY`, else `[msgtype]`.
pub fn describe(
    msgtype: &str,
    event: Option<&str>,
    event_key: Option<&str>,
    label: Option<&str>,
) -> String {
    match msgtype {
        "image" => "[图片]".into(),
        "voice" => "[语音]".into(),
        "video" | "shortvideo" => "[视频]".into(),
        "location" => match label.map(str::trim).filter(|l| !l.is_empty()) {
            Some(l) => format!("[位置] {l}"),
            None => "[位置]".into(),
        },
        "link" => "[链接]".into(),
        "file" => "[文件]".into(),
        "event" => {
            let mut s = String::from("[事件]");
            for part in
                [event, event_key].into_iter().flatten().map(str::trim).filter(|p| !p.is_empty())
            {
                s.push(' ');
                s.push_str(part);
            }
            s
        }
        other => format!("[{other}]"),
    }
}

/// Whether the follower asks to start over (interface §7.6: exactly `/reset` or `重新开始`).
pub fn is_reset(text: &str) -> bool {
    matches!(text.trim(), "/reset" | "重新开始")
}

/// The confirmation a reset is answered with (the model is not called).
pub const RESET_TEXT: &str = "好的，我们重新开始吧。";

/// The `messages` of a request (interface §11.7): the system prompt if any, the kept turns as
/// user/assistant pairs oldest first, the follower's message. `history` must be this
/// follower's turns only, already cut to `history` turns within `history_ttl`.
pub fn messages(system: Option<&str>, history: &[Turn], user: &str) -> Vec<ChatMessage> {
    let mut out = Vec::with_capacity(history.len() * 2 + 2);
    if let Some(s) = system.filter(|s| !s.trim().is_empty()) {
        out.push(ChatMessage::new("system", s));
    }
    for t in history {
        out.push(ChatMessage::new("user", t.user.clone()));
        out.push(ChatMessage::new("assistant", t.assistant.clone()));
    }
    out.push(ChatMessage::new("user", user));
    out
}

/// The kept turns a request may use at `now_ms`: at most `keep` of the newest, none older
/// than `ttl`, oldest first.
pub fn kept(turns: &[Turn], keep: usize, ttl: Duration, now_ms: i64) -> Vec<Turn> {
    let oldest = now_ms.saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    let fresh: Vec<&Turn> = turns.iter().filter(|t| t.at_ms > oldest).collect();
    fresh[fresh.len().saturating_sub(keep)..].iter().map(|t| (*t).clone()).collect()
}

/// The longest `Retry-After` kefu honours; a server asking for more is retried after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// One OpenAI-compatible endpoint, as `[backends.NAME]` with `kind = "openai"` describes it.
#[derive(Clone, Debug)]
pub struct ChatClient {
    http: reqwest::Client,
    /// `backends.NAME`, for messages.
    backend: String,
    /// `{base_url}/chat/completions`
    url: String,
    api_key: Secret,
    timeout: Duration,
}

impl ChatClient {
    /// `base_url` without the trailing `/chat/completions`; `api_key` may be empty (local
    /// servers); `timeout` bounds one attempt.
    pub fn new(
        backend: &str,
        base_url: &str,
        api_key: Secret,
        timeout: Duration,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .timeout(timeout)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(ChatClient {
            http,
            backend: backend.to_string(),
            url: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            timeout,
        })
    }

    /// The URL requests go to.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// One attempt (the caller retries what [`LlmError::is_retriable`] allows).
    pub async fn complete(&self, request: &ChatRequest) -> Result<Completion, LlmError> {
        let mut req = self.http.post(&self.url).json(request);
        if !self.api_key.expose().is_empty() {
            req = req.bearer_auth(self.api_key.expose());
        }
        let resp = req.send().await.map_err(|e| self.transport(e))?;
        let status = resp.status().as_u16();
        let retry_after = crate::api::error::retry_after(&resp);
        let body = resp.text().await.map_err(|e| self.transport(e))?;
        let url = self.url.clone();
        let backend = self.backend.clone();
        match status {
            200..=299 => {}
            401 | 403 => return Err(LlmError::Unauthorized { backend, url }),
            404 => return Err(LlmError::NotFound { backend, url }),
            429 => return Err(LlmError::RateLimited { url, retry_after }),
            500..=599 => return Err(LlmError::ServerError { status, url }),
            _ => {
                let body: String = body.chars().take(200).collect();
                return Err(LlmError::Refused { status, url, body });
            }
        }
        let parsed: ChatResponse = serde_json::from_str(&body)
            .map_err(|e| LlmError::Malformed { url: url.clone(), why: e.to_string() })?;
        let content =
            parsed.choices.into_iter().next().and_then(|c| c.message.content).ok_or_else(|| {
                LlmError::Malformed {
                    url: url.clone(),
                    why: "no choices[0].message.content".into(),
                }
            })?;
        Ok(Completion { content, usage: parsed.usage.unwrap_or_default() })
    }

    fn transport(&self, e: reqwest::Error) -> LlmError {
        if e.is_timeout() {
            LlmError::Timeout {
                backend: self.backend.clone(),
                url: self.url.clone(),
                timeout: self.timeout,
            }
        } else {
            LlmError::Connect {
                url: self.url.clone(),
                cause: crate::api::error::transport_cause(&e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(at_ms: i64, n: u32) -> Turn {
        Turn { at_ms, user: format!("q{n}"), assistant: format!("a{n}") }
    }

    #[test]
    fn messages_are_system_history_oldest_first_then_the_user() {
        let m = messages(Some("你是客服"), &[turn(1, 1), turn(2, 2)], "q3");
        let roles: Vec<(&str, &str)> =
            m.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect();
        assert_eq!(
            roles,
            [
                ("system", "你是客服"),
                ("user", "q1"),
                ("assistant", "a1"),
                ("user", "q2"),
                ("assistant", "a2"),
                ("user", "q3")
            ]
        );
        assert_eq!(messages(None, &[], "hi").len(), 1, "no system prompt, no history");
    }

    #[test]
    fn kept_turns_are_the_newest_within_the_ttl() {
        let turns = [turn(1_000, 1), turn(5_000, 2), turn(9_000, 3), turn(9_500, 4)];
        let k = kept(&turns, 2, Duration::from_secs(60), 10_000);
        assert_eq!(k, [turn(9_000, 3), turn(9_500, 4)]);
        let k = kept(&turns, 10, Duration::from_secs(2), 10_000);
        assert_eq!(k, [turn(9_000, 3), turn(9_500, 4)], "older than 2 s are forgotten");
        assert!(kept(&turns, 0, Duration::from_secs(60), 10_000).is_empty());
    }

    #[test]
    fn resets_and_descriptions() {
        assert!(is_reset("/reset") && is_reset(" 重新开始 ") && !is_reset("请重新开始吧"));
        assert_eq!(describe("image", None, None, None), "[图片]");
        assert_eq!(describe("location", None, None, Some("广州塔")), "[位置] 广州塔");
        assert_eq!(describe("event", Some("CLICK"), Some("V1001"), None), "[事件] CLICK V1001");
        assert_eq!(describe("miniprogrampage", None, None, None), "[miniprogrampage]");
    }

    #[test]
    fn the_request_json_leaves_out_unset_options() {
        let r = ChatRequest {
            model: "deepseek-chat".into(),
            messages: messages(None, &[], "hi"),
            max_tokens: None,
            temperature: None,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"model":"deepseek-chat","messages":[{"role":"user","content":"hi"}]}"#
        );
    }
}
