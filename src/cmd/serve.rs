//! `kefu serve`. Placeholder until the webhook core lands.

use crate::cli::{CmdError, CmdResult};
use crate::config::Config;

pub async fn run(cfg: Config) -> CmdResult {
    cfg.check_serve()?;
    Err(CmdError::failed("`kefu serve` is not built yet"))
}
