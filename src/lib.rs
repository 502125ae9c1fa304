//! kefu — a WeChat Official Account customer-service bot.
//!
//! The crate map, outside in:
//! - [`cli`], [`cmd`]: the `kefu` command line, one module per command.
//! - [`config`]: `kefu.toml` + `KEFU_*` overrides, validated key by key.
//! - [`app`], [`http`]: the actix-web server: webhook, admin, pay, health, metrics routes.
//! - [`console`]: the web console at `/console` (server-rendered pages, sessions, CSRF).
//! - [`convlog`]: the conversation log's records and its live feed.
//! - [`wechat`]: the push protocol, no I/O: signatures, safe-mode crypto, two-pass XML decoding,
//!   passive reply XML.
//! - [`pipeline`]: push -> dedupe -> ledger -> rules -> durable outbox -> ordered, gated sender.
//! - [`rules`]: rule files (raw), compiled matcher, `rules check`, `simulate`, `import`.
//! - [`ledger`]: the customer-service window: grants and quota policy (pure) and the index.
//! - [`store`]: durable state: embedded SQLite, and Redis for several instances.
//! - [`api`]: the outbound WeChat API: client, error table, token cache, sends, kf accounts.
//! - [`pay`]: WeChat Pay v2/v3 notification verification.
//! - [`backends`]: the services a `forward` reply sends a push to (http, openai): request,
//!   answer, retries.
//! - [`media`]: files named in replies: their checks, references and the media-id cache.
//! - [`model`]: identifiers, secrets, triggers, outbound messages, the clock, shared seams.

pub mod api;
pub mod app;
pub mod backends;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod console;
pub mod convlog;
pub mod delivery;
pub mod http;
pub mod ledger;
pub mod llm;
pub mod media;
pub mod metrics;
pub mod model;
pub mod pay;
pub mod pipeline;
pub mod rules;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod wechat;
