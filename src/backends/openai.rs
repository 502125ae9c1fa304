//! The `openai` backend (interface §7.6): an OpenAI-compatible chat-completions API behind the
//! [`Backend`] trait. Built in issue 17 on [`crate::llm`]; until then a backend of this kind
//! refuses to start with a sentence saying so.

use async_trait::async_trait;

use super::{Answer, Backend, BackendDeps, CallError, ForwardRequest};
use crate::config::{BackendConfig, OpenAiConfig};

/// `kind = "openai"`.
pub struct OpenAiBackend {
    name: String,
}

impl OpenAiBackend {
    /// Not built yet: always an error naming the backend.
    pub fn new(
        cfg: &BackendConfig,
        _openai: &OpenAiConfig,
        _deps: &BackendDeps,
    ) -> Result<Self, String> {
        let _ = OpenAiBackend { name: cfg.name.clone() };
        Err(format!(
            "kind = \"openai\" is not built in this version yet (backends.{}); use kind = \"http\"",
            cfg.name
        ))
    }
}

#[async_trait]
impl Backend for OpenAiBackend {
    fn name(&self) -> &str {
        &self.name
    }

    async fn call(&self, _req: &ForwardRequest) -> Result<Answer, CallError> {
        Err(CallError::Unusable("kind = \"openai\" is not built yet".into()))
    }
}
