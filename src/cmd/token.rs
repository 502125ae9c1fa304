//! `kefu token` (interface §1). Placeholder until its owner lands it.

use crate::cli::{CmdError, CmdResult, TokenArgs};
use crate::config::Config;

pub async fn run(_cfg: &Config, _args: &TokenArgs) -> CmdResult {
    Err(CmdError::failed("`kefu token` is not built yet"))
}
