//! HTTP routes, thin: extract, call the pure protocol code, map errors to status codes.
//! `webhook` (GET handshake, POST pushes), `ops` (/healthz, /readyz, /metrics), `admin` (/admin/*), `windows`
//! (`GET /admin/windows/{openid}`), `pay` (/pay/notify/*).

pub mod admin;
pub mod ops;
pub mod pay;
pub mod webhook;
pub mod windows;
