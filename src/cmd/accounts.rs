//! `kefu accounts` (interface §1). Placeholder until its owner lands it.

use crate::cli::{AccountsCmd, CmdError, CmdResult};
use crate::config::Config;

pub async fn run(_cfg: &Config, _args: &AccountsCmd) -> CmdResult {
    Err(CmdError::failed("`kefu accounts` is not built yet"))
}
