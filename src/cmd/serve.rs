//! `kefu serve`: check the config, build the application, serve until SIGTERM.

use std::sync::Arc;

use crate::app::Application;
use crate::cli::{CmdError, CmdResult};
use crate::config::Config;
use crate::http::webhook::AckOnly;

pub async fn run(cfg: Config) -> CmdResult {
    cfg.check_serve()?;
    if !cfg.wechat.has_credentials() {
        tracing::info!(
            "no wechat.app_id/app_secret: dry-run mode, customer-service messages are logged, not sent"
        );
    }
    let app = Application::build(cfg.clone(), Arc::new(AckOnly), None)
        .map_err(|e| CmdError::failed(format!("cannot start the server: {e}")))?;
    tracing::info!(address = %app.local_addr(), path = %cfg.server.path, "kefu listening");
    app.run_until_stopped().await.map_err(|e| CmdError::failed(format!("server stopped: {e}")))?;
    tracing::info!("kefu stopped");
    Ok(())
}
