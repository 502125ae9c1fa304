//! Placeholder: filled by its owner.
pub mod pay;
