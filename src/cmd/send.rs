//! `kefu send` (interface §1). Placeholder until its owner lands it.

use crate::cli::{CmdError, CmdResult, SendArgs};
use crate::config::Config;

pub async fn run(_cfg: &Config, _args: &SendArgs) -> CmdResult {
    Err(CmdError::failed("`kefu send` is not built yet"))
}
