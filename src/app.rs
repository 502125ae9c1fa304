//! The server (zero2prod's shape): `Application::build` binds `server.listen` (port 0 works, for
//! tests) and mounts the routes; `run_until_stopped` serves until SIGTERM/SIGINT, then drains
//! in-flight requests for at most `SHUTDOWN_TIMEOUT_SECS` (3 s), which with the sender's own
//! bound keeps a stop inside the 10 s a SIGTERM allows (interface §6.12).

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};

use crate::config::Config;
use crate::http::webhook::{PushSink, WebhookState};
use crate::http::{health, webhook};
use crate::model::SystemClock;
use crate::wechat::webhook::Keys;

/// Extra routes (admin, pay, metrics, ...) mounted next to the webhook.
pub type ExtraRoutes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// How long a stopping server waits for in-flight requests.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 3;

pub struct Application {
    addr: SocketAddr,
    server: Server,
}

impl Application {
    pub fn build(
        cfg: Config,
        sink: Arc<dyn PushSink>,
        extra: Option<ExtraRoutes>,
    ) -> std::io::Result<Application> {
        let keys = Keys::from_config(&cfg).map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("wechat keys: {e}"))
        })?;
        let state = web::Data::new(WebhookState::new(
            keys,
            sink,
            cfg.server.max_body_bytes,
            Arc::new(SystemClock),
        ));
        Self::build_with(&cfg, state, extra)
    }

    /// Builds with a prepared webhook state (an injected clock, metrics).
    pub fn build_with(
        cfg: &Config,
        state: web::Data<WebhookState>,
        extra: Option<ExtraRoutes>,
    ) -> std::io::Result<Application> {
        let listener = TcpListener::bind(&cfg.server.listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {} (server.listen): {e}", cfg.server.listen),
            )
        })?;
        let addr = listener.local_addr()?;
        let path = cfg.server.path.clone();
        let server = HttpServer::new(move || {
            let mut app = App::new()
                .configure(health::configure)
                .configure(webhook::configure(&path, state.clone()));
            if let Some(extra) = extra.clone() {
                app = app.configure(move |c| extra(c));
            }
            app
        })
        .listen(listener)?
        .shutdown_timeout(SHUTDOWN_TIMEOUT_SECS)
        .run();
        Ok(Application { addr, server })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle to stop the server from elsewhere (tests, a supervisor).
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.server.await
    }
}
