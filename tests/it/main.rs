//! The one integration-test binary: a module per feature, shared helpers in `helpers`.

mod api;
mod cli_api;
mod fuzz;
mod helpers;
mod ops;
mod pay;
mod rules;
mod state;
mod webhook;
