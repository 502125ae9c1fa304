//! The one integration-test binary: a module per feature, shared helpers in `helpers`.

mod api;
mod cli_api;
mod crash;
mod fuzz;
mod helpers;
mod ops;
mod pay;
mod pipeline;
mod readme;
mod redis;
mod rules;
mod scale;
mod state;
mod webhook;
