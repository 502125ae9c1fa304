//! `kefu simulate`. Placeholder until its owner lands it.

use crate::cli::{CmdError, CmdResult, SimulateArgs};
use crate::config::Config;

pub fn run(_cfg: &Config, _args: &SimulateArgs) -> CmdResult {
    Err(CmdError::failed("`kefu simulate` is not built yet"))
}
