//! Placeholder: filled by its owner.

pub mod admin;
