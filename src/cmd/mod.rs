//! One module per `kefu` command; each loads what it needs and returns a `CmdResult`.

pub mod accounts;
pub mod out;
pub mod push;
pub mod records;
pub mod rules;
pub mod send;
pub mod serve;
pub mod sessions;
pub mod simulate;
pub mod token;
pub mod window;
