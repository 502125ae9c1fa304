//! The customer-service window ledger (interface §5, protocol §4): the quota policy as pure
//! functions over a follower's [`Window`] ([`policy`]), the in-memory index that serves hot-path
//! reads ([`index`]), and the `GET /admin/windows/{openid}` handler ([`http`]).
//!
//! Durability lives in [`crate::store`]; this module never does I/O.

pub mod http;
pub mod index;
pub mod policy;

pub use index::LedgerIndex;
pub use policy::{ChargeOutcome, DenyReason, Grant, Window, WindowView};
