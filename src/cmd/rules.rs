//! `kefu rules check|import`. Placeholder until its owner lands it.

use std::path::Path;

use crate::cli::{CmdError, CmdResult};
use crate::config::Config;

pub fn check(_cfg: &Config, _dir: Option<&Path>, _json: bool) -> CmdResult {
    Err(CmdError::failed("`kefu rules check` is not built yet"))
}

pub fn import(_file: &Path, _out: Option<&Path>) -> CmdResult {
    Err(CmdError::failed("`kefu rules import` is not built yet"))
}
