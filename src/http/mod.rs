//! The HTTP routes, thin: extract, call the pure protocol code, map errors to status codes.
//! `webhook` (GET handshake, POST pushes) and `health` (`/healthz`).

pub mod health;
pub mod webhook;
