//! `kefu window` (interface §1). Placeholder until its owner lands it.

use crate::cli::{CmdError, CmdResult, WindowCmd};
use crate::config::Config;

pub async fn run(_cfg: &Config, _args: &WindowCmd) -> CmdResult {
    Err(CmdError::failed("`kefu window` is not built yet"))
}
