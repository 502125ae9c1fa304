//! One module per `kefu` command: each owns its arguments (clap `Args`/`Subcommand`) and a
//! `run` that loads what it needs and returns a [`common::CmdResult`]. What they share is in
//! [`common`]; output to stdout and stderr goes through [`out`]. `crate::cli` parses the
//! command line and calls one `run`; no command module looks back at it.

pub mod accounts;
pub mod backends;
pub mod common;
pub mod conversations;
pub mod history;
pub mod media;
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
