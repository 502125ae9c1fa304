//! The one integration-test binary: a module per feature, shared helpers in `helpers`.

mod helpers;
mod redis;
