//! `kefu serve`: the webhook server with the whole pipeline behind it.

use std::sync::Arc;

use super::common::{CmdError, CmdResult};
use crate::config::Config;
use crate::model::SystemClock;
use crate::service::Service;

pub async fn run(cfg: Config) -> CmdResult {
    cfg.check_serve()?;
    let service = Service::build(cfg, Arc::new(SystemClock))
        .await
        .map_err(|e| CmdError::Usage(format!("cannot start: {e:#}")))?;
    service
        .run_until_stopped()
        .await
        .map_err(|e| CmdError::failed(format!("server stopped: {e:#}")))
}
