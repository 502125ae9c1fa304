//! The customer-service window ledger (interface §5, protocol §4): the quota policy as pure
//! functions over a follower's [`Window`] ([`policy`]), the in-memory index that serves hot-path
//! reads ([`index`]). The `GET /admin/windows/{openid}` handler is `http::windows`.
//!
//! Durability lives in [`crate::store`]; this module never does I/O.

pub mod index;
pub mod policy;

pub use index::LedgerIndex;
pub use policy::{ChargeOutcome, DenyReason, Grant, Window, WindowView};
