//! The one integration-test binary: a module per feature, shared helpers in `helpers`.

mod api;
mod cli_api;
mod fuzz;
mod helpers;
mod pay;
mod redis;
mod rules;
mod scale;
mod state;
mod webhook;
