//! `kefu sessions` (interface §1). Placeholder until its owner lands it.

use crate::cli::{CmdError, CmdResult, SessionsCmd};
use crate::config::Config;

pub async fn run(_cfg: &Config, _args: &SessionsCmd) -> CmdResult {
    Err(CmdError::failed("`kefu sessions` is not built yet"))
}
