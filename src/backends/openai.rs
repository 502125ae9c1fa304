//! The `openai` backend (interface §7.6, §11.7): a forwarded push becomes one chat-completions
//! call to an OpenAI-compatible server ([`crate::llm::ChatClient`]), with the follower's kept
//! turns as memory.
//!
//! What a request holds is [`crate::llm::messages`]: the system prompt, this follower's kept
//! turns (read from the store by backend and OpenID, cut to `history` within `history_ttl`),
//! then the follower's words ([`user_message`]). Nothing else goes in, so a request never holds
//! another follower's turns. The turn is written by [`Backend::answered`], which the pipeline
//! calls only once the answer is committed (passive reply, outbox or held): a call that failed,
//! or whose answer was lost in a crash, leaves no half turn. `/reset` and `重新开始` are answered
//! by [`Backend::shortcut`] without a call and clear the follower's turns once committed.
//!
//! Failures map onto the backends' [`CallError`] so the retry policy, the metrics and the
//! fallback are the ones every kind shares ([`super::with_retries`]; a 429's `Retry-After` is
//! honoured there).

use std::time::Duration;

use async_trait::async_trait;

use super::{Answer, Backend, BackendDeps, CallError, ForwardRequest, PushFacts, with_retries};
use crate::config::{BackendConfig, OpenAiConfig};
use crate::llm::{self, ChatClient, ChatRequest, LlmError, Turn};
use crate::model::OpenId;

/// `kind = "openai"`: one configured OpenAI-compatible endpoint and model.
pub struct OpenAiBackend {
    name: String,
    client: ChatClient,
    model: String,
    /// `system_prompt`, or the contents of `system_prompt_file` read at start.
    system: Option<String>,
    history: usize,
    history_ttl: Duration,
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    retries: u32,
    deps: BackendDeps,
}

impl OpenAiBackend {
    /// Builds the backend; reads `system_prompt_file` now. An error names the key, the file
    /// and the cause.
    pub fn new(cfg: &BackendConfig, o: &OpenAiConfig, deps: &BackendDeps) -> Result<Self, String> {
        let system = match (&o.system_prompt, &o.system_prompt_file) {
            (Some(p), _) => Some(p.clone()),
            (None, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                format!(
                    "backends.{}.system_prompt_file: cannot read {}: {e}; check the path \
                     (relative to the config file)",
                    cfg.name,
                    path.display()
                )
            })?),
            (None, None) => None,
        };
        let client = ChatClient::new(&cfg.name, &o.base_url, o.api_key.clone(), cfg.timeout)?;
        Ok(OpenAiBackend {
            name: cfg.name.clone(),
            client,
            model: o.model.clone(),
            system,
            history: o.history,
            history_ttl: o.history_ttl,
            max_tokens: o.max_tokens,
            temperature: o.temperature,
            retries: cfg.retries,
            deps: deps.clone(),
        })
    }

    /// The request for `user` after the follower's kept `history` (oldest first).
    pub fn request(&self, history: &[Turn], user: &str) -> ChatRequest {
        ChatRequest {
            model: self.model.clone(),
            messages: llm::messages(self.system.as_deref(), history, user),
            max_tokens: self.max_tokens,
            temperature: self.temperature,
        }
    }

    /// This follower's turns of this backend that a request may carry now.
    async fn kept_turns(&self, openid: &str) -> Result<Vec<Turn>, CallError> {
        let (Some(store), Ok(openid)) = (&self.deps.store, OpenId::parse(openid)) else {
            return Ok(Vec::new());
        };
        let turns = store
            .turns(Some(&self.name), &openid)
            .await
            .map_err(|e| CallError::Unusable(format!("cannot read the kept turns: {e}")))?;
        let turns: Vec<Turn> = turns.into_iter().map(|(_, t)| t).collect();
        Ok(llm::kept(&turns, self.history, self.history_ttl, self.deps.clock.now_ms()))
    }
}

/// The follower's words for the model (interface §7.6): the text, a voice message's
/// recognition, else a short description of what was sent (`[图片]`, `[位置] …`, `[事件] …`).
pub fn user_message(push: &PushFacts) -> String {
    if let Some(t) = push.text() {
        return t.to_string();
    }
    let label = push
        .location
        .as_ref()
        .and_then(|l| l.get("label"))
        .and_then(|l| l.as_str())
        .filter(|l| !l.is_empty());
    llm::describe(&push.msgtype, push.event.as_deref(), push.event_key.as_deref(), label)
}

impl From<LlmError> for CallError {
    fn from(e: LlmError) -> Self {
        match e {
            LlmError::Unauthorized { backend, url } => CallError::Status {
                url,
                code: 401,
                body: format!("check api_key (backends.{backend}.api_key)"),
                retry_after: None,
            },
            LlmError::NotFound { backend, url } => CallError::Status {
                url,
                code: 404,
                body: format!(
                    "check base_url (backends.{backend}.base_url; kefu POSTs \
                     {{base_url}}/chat/completions) and model (backends.{backend}.model)"
                ),
                retry_after: None,
            },
            LlmError::RateLimited { url, retry_after } => CallError::Status {
                url,
                code: 429,
                body: "rate limited by the model's server".into(),
                retry_after: retry_after.map(|r| r.min(llm::MAX_RETRY_AFTER)),
            },
            LlmError::Refused { status, url, body } => {
                CallError::Status { url, code: status, body, retry_after: None }
            }
            LlmError::ServerError { status, url } => CallError::Status {
                url,
                code: status,
                body: "the model's server failed".into(),
                retry_after: None,
            },
            LlmError::Timeout { url, timeout, .. } => CallError::Timeout { url, after: timeout },
            LlmError::Connect { url, cause } => {
                CallError::Connect { cause: format!("cannot reach {url}: {cause}") }
            }
            LlmError::Malformed { url, why } => CallError::Malformed { url, reason: why },
        }
    }
}

#[async_trait]
impl Backend for OpenAiBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn call(&self, req: &ForwardRequest) -> Result<Answer, CallError> {
        let history = self.kept_turns(&req.openid).await?;
        let request = self.request(&history, &user_message(&req.push));
        let completion =
            with_retries(&self.name, &req.id, self.retries, &self.deps.metrics, |_| {
                let request = &request;
                async move {
                    let c = self.client.complete(request).await.map_err(CallError::from)?;
                    self.deps.metrics.llm_tokens(
                        &self.name,
                        c.usage.prompt_tokens,
                        c.usage.completion_tokens,
                    );
                    Ok(c)
                }
            })
            .await?;
        if completion.content.trim().is_empty() {
            return Ok(Answer::default());
        }
        Ok(Answer::text(&req.rule, completion.content))
    }

    fn shortcut(&self, req: &ForwardRequest) -> Option<Answer> {
        let text = req.push.text()?;
        llm::is_reset(text).then(|| Answer::text(&req.rule, llm::RESET_TEXT))
    }

    async fn answered(&self, req: &ForwardRequest, answer: &Answer) {
        let (Some(store), Ok(openid)) = (&self.deps.store, OpenId::parse(&req.openid)) else {
            return;
        };
        let user = user_message(&req.push);
        if llm::is_reset(&user) {
            if let Err(e) = store.clear_turns(&openid).await {
                tracing::warn!(backend = %self.name, "cannot clear the follower's kept turns: {e}");
            }
            return;
        }
        let assistant = answer.text_summary();
        if assistant.is_empty() || self.history == 0 {
            return;
        }
        let now_ms = self.deps.clock.now_ms();
        let turn = Turn { at_ms: req.received_at.saturating_mul(1000), user, assistant };
        let ttl_ms = i64::try_from(self.history_ttl.as_millis()).unwrap_or(i64::MAX);
        if let Err(e) = store
            .add_turn(&self.name, &openid, turn, self.history, now_ms.saturating_sub(ttl_ms))
            .await
        {
            tracing::warn!(backend = %self.name, "cannot keep the turn: {e}");
        }
    }
}
