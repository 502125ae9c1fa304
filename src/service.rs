//! Assembles a running kefu from its parts: the store (SQLite, or Redis + SQLite), the rules,
//! the API client, the pipeline and its sender, and every HTTP route. `kefu serve` and the
//! end-to-end tests both start kefu through [`Service::build`], so tests run the real thing.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::api::ApiClient;
use crate::app::{Application, ExtraRoutes};
use crate::config::Config;
use crate::http::pay::PaymentSink;
use crate::http::webhook::{PushSink, WebhookState};
use crate::metrics::Metrics;
use crate::model::{SharedClock, TokenCache};
use crate::pipeline::Pipeline;
use crate::pipeline::sender::{Sender, SenderHandle};
use crate::rules::{RuleSet, Rules, WatchGuard};
use crate::store::{RedisStore, SqliteStore, Store, dedupe_retention_secs};
use crate::wechat::webhook::Keys;

/// How long in-flight sends may take to finish after the server stopped; with actix's own
/// bound this keeps `serve` inside the 10 s a SIGTERM allows (interface §6.12).
const SENDER_STOP_BOUND: Duration = Duration::from_secs(3);

/// Which process opens the store: the server owns it (purges, recovers in-flight entries); a
/// CLI command only reads and charges beside a running server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Cli,
}

/// Opens the configured store: SQLite under `state.dir`, and with `state.redis_url` the Redis
/// store for ledger, dedupe and token with this instance's outbox in SQLite.
pub async fn open_store(
    cfg: &Config,
    role: Role,
    clock: SharedClock,
) -> anyhow::Result<(Arc<dyn Store>, SqliteStore)> {
    let window = &cfg.window;
    // The store's errors name `state.dir` / `state.redis_url`; say where those came from.
    let dir_source = |e| anyhow::anyhow!("{e}. The directory is {}", cfg.key("state.dir"));
    let sqlite = match role {
        Role::Server => SqliteStore::open(
            &cfg.state.dir,
            window,
            dedupe_retention_secs(cfg.server.max_clock_skew_secs),
            cfg.state.sync,
            clock.clone(),
        )
        .map_err(dir_source)?,
        Role::Cli => {
            SqliteStore::open_client(&cfg.state.dir, window, clock.clone()).map_err(dir_source)?
        }
    };
    if cfg.state.redis_url.is_empty() {
        return Ok((Arc::new(sqlite.clone()), sqlite));
    }
    // Hash-tagged so the multi-key scripts stay legal on a Redis Cluster.
    let app = if cfg.wechat.app_id.is_empty() { "dry-run" } else { cfg.wechat.app_id.as_str() };
    let redis = RedisStore::open(
        cfg.state.redis_url.expose(),
        &format!("kefu:{{{app}}}"),
        Arc::new(sqlite.clone()),
        window,
        dedupe_retention_secs(cfg.server.max_clock_skew_secs),
        clock,
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}. The URL is {}", cfg.key("state.redis_url")))?;
    Ok((Arc::new(redis), sqlite))
}

/// The access-token cache every process shares: the store's, counted for metrics.
struct CountingTokenCache {
    inner: Arc<dyn TokenCache>,
    metrics: Arc<Metrics>,
}

#[async_trait::async_trait]
impl TokenCache for CountingTokenCache {
    async fn load(&self) -> anyhow::Result<Option<crate::model::CachedToken>> {
        self.inner.load().await
    }
    async fn save(&self, token: &crate::model::CachedToken) -> anyhow::Result<()> {
        // The client saves exactly once per token it fetched.
        self.metrics.token_refreshes.inc();
        self.inner.save(token).await
    }
    async fn invalidate(&self, token: &str) -> anyhow::Result<()> {
        self.inner.invalidate(token).await
    }
    async fn try_lock_refresh(&self, holder: &str, ttl: Duration) -> anyhow::Result<bool> {
        self.inner.try_lock_refresh(holder, ttl).await
    }
    async fn unlock_refresh(&self, holder: &str) -> anyhow::Result<()> {
        self.inner.unlock_refresh(holder).await
    }
}

/// Everything a running kefu shares; also what the HTTP handlers read.
pub struct Shared {
    pub cfg: Config,
    pub store: Arc<dyn Store>,
    pub rules: Arc<Rules>,
    /// Sends for real; None in dry-run.
    pub client: Option<ApiClient>,
    /// Always present, for the admin API (answers NoCredentials in dry-run).
    pub api: ApiClient,
    pub metrics: Arc<Metrics>,
    pub clock: SharedClock,
    pub pipeline: Arc<Pipeline>,
    /// The embedded store under `state.dir` (the whole store, or the outbox beside Redis).
    sqlite: SqliteStore,
}

pub struct Service {
    app: Application,
    shared: Arc<Shared>,
    sender: SenderHandle,
    purge_stop: watch::Sender<bool>,
    purger: tokio::task::JoinHandle<()>,
    _watcher: Option<WatchGuard>,
}

impl Service {
    /// Opens the store, loads the rules (every error reported, none tolerated at start), and
    /// starts the server, the sender and the background tasks.
    pub async fn build(cfg: Config, clock: SharedClock) -> anyhow::Result<Service> {
        cfg.check_serve()?;
        // Everything that can fail on configuration alone comes before the store is opened,
        // so a taken port or a broken rule leaves no new state.dir behind.
        let listener = crate::app::bind(&cfg)?;
        let keys = Keys::from_config(&cfg)?;
        let metrics = Arc::new(Metrics::new());

        let loaded = RuleSet::load_dir(&cfg.rules.dir, &cfg.window).map_err(|diags| {
            let list: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            let n = list.len();
            anyhow::anyhow!(
                "the rules in {} do not load ({n} problem{}){}; fix them (`kefu rules check`) \
                 and start again:\n{}",
                cfg.rules.dir.display(),
                if n == 1 { "" } else { "s" },
                crate::cmd::rules::dir_hint(&cfg, &cfg.rules.dir, None),
                list.join("\n")
            )
        })?;
        for w in &loaded.warnings {
            tracing::warn!(target: "kefu::rules", "{w}");
        }
        let rules = Arc::new(Rules::new(loaded));

        let (store, sqlite) = open_store(&cfg, Role::Server, clock.clone()).await?;
        let watcher = if cfg.rules.hot_reload { Some(rules.spawn_watcher()?) } else { None };

        // Without credentials the client still exists (the kf-account calls answer
        // NoCredentials, so the admin API says 503 with the fix); sends run dry: the sender's
        // and the manual ones (`/admin/send`, `kefu send`) pass the window gate and are logged.
        let api = ApiClient::new(
            &cfg.wechat,
            Arc::new(CountingTokenCache { inner: store.token_cache(), metrics: metrics.clone() }),
            clock.clone(),
        )?;
        let client = if api.has_credentials() {
            Some(api.clone())
        } else if cfg.wechat.app_id_only() {
            // Said once, here: every message that is not sent is logged as `dry-run` by the
            // sender, so the operator needs the reason and the fix only one time.
            tracing::warn!(
                app_id = %cfg.wechat.app_id,
                "sending is off: wechat.app_id is set but wechat.app_secret is missing; pushes are \
                 verified, decrypted (the AppID checked) and answered with passive replies, and \
                 customer-service messages are logged as dry-run instead of sent. To send, set \
                 wechat.app_secret (or KEFU_WECHAT_APP_SECRET) to the AppSecret (开发者密码) and \
                 restart"
            );
            None
        } else {
            tracing::info!(
                "no wechat.app_id/app_secret: dry-run mode, customer-service messages are logged, not sent"
            );
            None
        };

        let wake = Arc::new(Notify::new());
        let pipeline = Arc::new(
            Pipeline::new(
                store.clone(),
                rules.clone(),
                cfg.rules.passive_first,
                metrics.clone(),
                wake.clone(),
            )
            .with_app_id(&cfg.wechat.app_id),
        );
        let sender =
            Sender::new(store.clone(), client.clone(), metrics.clone(), clock.clone(), wake)
                .spawn();

        let (purge_stop, purge_rx) = watch::channel(false);
        let purger = sqlite.spawn_purger(purge_rx);

        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            store,
            rules,
            client,
            api,
            metrics: metrics.clone(),
            clock: clock.clone(),
            pipeline: pipeline.clone(),
            sqlite,
        });

        let sink: Arc<dyn PushSink> = pipeline.clone();
        let state = web::Data::new(
            WebhookState::new(keys, sink, cfg.server.max_body_bytes, clock.clone())
                .with_metrics(metrics.clone()),
        );
        let extra = routes(shared.clone())?;
        let app = Application::build_on(listener, &cfg, state, Some(extra))?;
        tracing::info!(address = %app.local_addr(), path = %cfg.server.path, rules = shared.rules.current().len(), "kefu listening");
        // Refusals later say "does not match the configured wechat.token" and the like; this
        // line says where each of those keys came from (never their values).
        tracing::info!(
            token = %cfg.key("wechat.token"),
            encoding_aes_key = %cfg.key("wechat.encoding_aes_key"),
            app_id = %cfg.key("wechat.app_id"),
            max_clock_skew_secs = %cfg.key("server.max_clock_skew_secs"),
            "push verification uses"
        );
        Ok(Service { app, shared, sender, purge_stop, purger, _watcher: watcher })
    }

    pub fn port(&self) -> u16 {
        self.app.port()
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.app.local_addr()
    }

    pub fn shared(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// Serves until SIGTERM/SIGINT (or [`Self::handle`]'s stop), then stops the sender within
    /// its bound, leaving unsent messages in the outbox for the next start.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Service { app, shared, sender, purge_stop, purger, _watcher } = self;
        let served = app.run_until_stopped().await;
        sender.shutdown(SENDER_STOP_BOUND).await;
        let _ = purge_stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(1), purger).await;
        shared.sqlite.close();
        served?;
        tracing::info!("kefu stopped");
        Ok(())
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.app.handle()
    }
}

/// The routes beside the webhook: readiness, metrics, admin, pay.
fn routes(shared: Arc<Shared>) -> anyhow::Result<ExtraRoutes> {
    let data = web::Data::from(shared.clone());
    let store = web::Data::new(shared.store.clone());
    let clock = web::Data::new(shared.clock.clone());
    let auth = web::Data::new(
        crate::http::admin::AdminAuth::from_config(&shared.cfg)
            .with_account_id(&shared.cfg.wechat.account_id),
    );
    let client = web::Data::new(shared.api.clone());
    let pay_sink: web::Data<Arc<dyn PaymentSink>> =
        web::Data::new(shared.pipeline.clone() as Arc<dyn PaymentSink>);
    // Loaded once here, so a bad PEM stops the start with its message.
    let pay = crate::http::pay::PayRoutes::from_config(
        &shared.cfg.pay,
        shared.cfg.server.max_clock_skew_secs,
    )?
    .with_metrics(shared.metrics.clone());
    Ok(Arc::new(move |c: &mut web::ServiceConfig| {
        c.app_data(data.clone())
            .app_data(store.clone())
            .app_data(clock.clone())
            .app_data(auth.clone())
            .app_data(pay_sink.clone());
        c.app_data(client.clone());
        c.route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
            .route("/admin/windows/{openid}", web::get().to(admin_window))
            .route("/admin/rules/reload", web::post().to(reload));
        crate::http::admin::configure(c);
        pay.register(c);
    }))
}

/// `GET /readyz`: 503 while a push cannot be recorded (the store does not answer); 200
/// otherwise. A failed rules reload is listed in `problems` (with its errors) until a reload
/// succeeds, but the answer stays 200: the previous rules keep answering pushes, and taking
/// every instance out of rotation over a bad edit would turn it into an outage.
async fn readyz(shared: web::Data<Shared>) -> HttpResponse {
    let mut problems = Vec::new();
    let mut ready = true;
    if let Err(e) = shared.store.ping().await {
        problems.push(format!("store unreachable: {e}"));
        ready = false;
    }
    let rules = shared.rules.current();
    let status = shared.rules.status();
    if !status.last_ok {
        let n = status.last_errors.len();
        problems.push(format!(
            "the last rules reload failed ({n} error{}); the previous {} rule{} stay active until \
             a reload succeeds: fix the files in {} (`kefu rules check`){}",
            if n == 1 { "" } else { "s" },
            rules.len(),
            if rules.len() == 1 { "" } else { "s" },
            shared.cfg.rules.dir.display(),
            status.last_errors.first().map(|e| format!("; first error: {e}")).unwrap_or_default()
        ));
    }
    let body = json!({
        "ready": ready,
        "rules": rules.len(),
        "last_reload_ok": status.last_ok,
        "reload_errors": status.last_errors,
        "problems": problems,
    });
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// `GET /metrics` in the format the `Accept` header asks for ([`crate::metrics::Format`]).
async fn metrics(req: HttpRequest, shared: web::Data<Shared>) -> HttpResponse {
    let m = &shared.metrics;
    let now = shared.clock.now_secs();
    if let Ok(stats) = shared.store.stats(now).await {
        m.open_windows.set(stats.open_windows as i64);
        m.outbox_depth.set(stats.outbox_pending as i64);
    }
    m.sync_reloads(&shared.rules.status());
    let accept = req.headers().get(actix_web::http::header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((actix_web::http::header::VARY, "Accept"))
        .body(m.render_as(format))
}

async fn admin_window(
    req: HttpRequest,
    path: web::Path<String>,
    store: web::Data<Arc<dyn Store>>,
    clock: web::Data<SharedClock>,
) -> Result<HttpResponse, actix_web::Error> {
    crate::http::admin::require_admin(&req)?;
    Ok(crate::http::windows::window_handler(path, store, clock).await)
}

async fn reload(
    req: HttpRequest,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, actix_web::Error> {
    crate::http::admin::require_admin(&req)?;
    let rules = shared.rules.clone();
    let result = web::block(move || rules.reload()).await?;
    Ok(match result {
        Ok(n) => HttpResponse::Ok().json(json!({ "ok": true, "rules": n })),
        Err(diags) => HttpResponse::UnprocessableEntity().json(json!({
            "ok": false,
            "errors": diags.iter().filter(|d| d.is_error()).map(|d| d.to_string()).collect::<Vec<_>>(),
            "message": "the rules did not reload; the previous rules stay active",
        })),
    })
}
