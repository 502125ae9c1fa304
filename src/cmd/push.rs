//! `kefu push` (interface §1). Placeholder until its owner lands it.

use crate::cli::{CmdError, CmdResult, PushArgs};
use crate::config::Config;

pub async fn run(_cfg: &Config, _args: &PushArgs) -> CmdResult {
    Err(CmdError::failed("`kefu push` is not built yet"))
}
