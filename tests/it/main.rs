//! The one integration-test binary: a module per feature, shared helpers in `helpers`.

mod api;
mod backends;
mod cli_api;

mod console;
mod conversations;
mod crash;
mod delivery;
mod fuzz;
mod helpers;
mod identity;
mod intake;
mod llm;
mod media;
#[path = "../support/mock_wechat.rs"]
#[allow(dead_code)] // `set_recording` is for the load scenario's example
mod mock_wechat;
mod operator;
mod ops;
mod pay;
mod pipeline;
mod readme;
mod redis;
mod rules;
mod scale;
mod serving;
mod several_accounts;
mod state;
mod webhook;
