//! The outbound WeChat API (protocol §6–§8): one client over a shared reqwest pool, the typed
//! error table, the access token (single-flight, shared cache), customer-service sends, kf
//! accounts, kf sessions and chat records.
//!
//! Layout: [`client`] (HTTP, envelope, the retry loop), [`error`] (errcodes and `ApiError`),
//! [`token`], [`send`], [`accounts`], [`sessions`], [`records`], [`media`] (temporary media
//! upload).

pub mod accounts;
pub mod client;
pub mod error;
pub mod media;
pub mod records;
pub mod send;
pub mod sessions;
pub mod token;

pub use accounts::{KfInfo, KfOnline};
pub use client::{ApiClient, ApiOptions, RetryPolicy};
pub use error::{ApiError, ErrorCode};
pub use records::Record;
pub use send::SendBody;
pub use sessions::{SessionEntry, SessionInfo, WaitCase, WaitQueue};
pub use token::{TokenInfo, TokenSource};
