//! `kefu records` (interface §1). Placeholder until its owner lands it.

use crate::cli::{CmdError, CmdResult, RecordsArgs};
use crate::config::Config;

pub async fn run(_cfg: &Config, _args: &RecordsArgs) -> CmdResult {
    Err(CmdError::failed("`kefu records` is not built yet"))
}
