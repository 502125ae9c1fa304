//! The server (zero2prod's shape): `Application::build` binds `server.listen` (port 0 works, for
//! tests) and mounts the routes; `run_until_stopped` serves until SIGTERM/SIGINT, then drains
//! in-flight requests for at most `SHUTDOWN_TIMEOUT_SECS` (3 s), which with the sender's own
//! bound keeps a stop inside the 10 s a SIGTERM allows (interface §6.12).

use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::sync::Arc;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{App, HttpServer, web};

use crate::config::Config;
use crate::http::accounts::{AccountData, Containers};
use crate::http::webhook::WebhookState;
use crate::http::{ops, webhook};
use crate::model::SystemClock;
use crate::pipeline::PushSink;
use crate::wechat::webhook::Keys;

/// Extra routes (admin, pay, metrics, ...) mounted next to the webhook.
pub type ExtraRoutes = Arc<dyn Fn(&mut web::ServiceConfig) + Send + Sync>;

/// How long a stopping server waits for in-flight requests.
pub const SHUTDOWN_TIMEOUT_SECS: u64 = 3;

/// Binds `server.listen`. The error names the key, where it was set, and the fix: for an
/// address in use, stopping the other process or choosing another port; for an address this
/// machine does not have, one it has.
pub fn bind(cfg: &Config) -> std::io::Result<TcpListener> {
    let listen = &cfg.server.listen;
    TcpListener::bind(listen).map_err(|e| {
        let fix = match e.kind() {
            std::io::ErrorKind::AddrInUse => format!(
                "another process (another `kefu serve`?) already listens there: stop it, or \
                 choose a free port: {}",
                cfg.how_to_set("server.listen")
            ),
            std::io::ErrorKind::AddrNotAvailable => format!(
                "this machine has no such address: listen on one of its own (127.0.0.1, \
                 0.0.0.0, [::]): {}",
                cfg.how_to_set("server.listen")
            ),
            std::io::ErrorKind::PermissionDenied => format!(
                "ports below 1024 need privileges: listen on a port above 1024 behind a reverse \
                 proxy: {}",
                cfg.how_to_set("server.listen")
            ),
            _ => cfg.how_to_set("server.listen"),
        };
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on {listen}, {}: {e}; {fix}", cfg.key("server.listen")),
        )
    })
}

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
        Self::build_on(bind(&cfg)?, vec![(cfg.server.path.clone(), state)], extra, Vec::new())
    }

    /// Builds on a listener already bound by [`bind`] (`serve` binds before it creates any
    /// state, so a taken port leaves nothing behind): one webhook per account at its path,
    /// the extra routes, and — with `accounts` — the middleware that gives each `/admin/*`
    /// and `/console*` request its account's app data ([`crate::http::accounts`]).
    pub fn build_on(
        listener: TcpListener,
        webhooks: Vec<(String, web::Data<WebhookState>)>,
        extra: Option<ExtraRoutes>,
        accounts: Vec<AccountData>,
    ) -> std::io::Result<Application> {
        let addr = listener.local_addr()?;
        let server = HttpServer::new(move || {
            let mut app = App::new()
                .app_data(Rc::new(Containers::build(&accounts)))
                .wrap(actix_web::middleware::from_fn(crate::http::accounts::select))
                .configure(ops::configure_health);
            for (path, state) in &webhooks {
                app = app.configure(webhook::configure(path, state.clone()));
            }
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
