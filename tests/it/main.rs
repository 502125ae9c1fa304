//! The one integration-test binary: a module per feature, shared helpers in `helpers`.

mod api;
mod cli_api;
mod crash;
mod fuzz;
mod helpers;
mod identity;
mod intake;
mod operator;
mod ops;
mod pay;
mod pipeline;
mod redis;
mod rules;
mod scale;
mod serving;
mod state;
mod webhook;
