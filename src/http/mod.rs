//! HTTP routes: the webhook, admin, pay, health and metrics.

pub mod admin;
pub mod pay;
