//! Assembles a running kefu from its parts: the store (SQLite, or Redis + SQLite), the rules,
//! the API client, the pipeline and its sender, and every HTTP route. `kefu serve` and the
//! end-to-end tests both start kefu through [`Service::build`], so tests run the real thing.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use tokio::sync::{Notify, watch};

use crate::api::ApiClient;
use crate::app::{Application, ExtraRoutes};
use crate::config::Config;
use crate::http::webhook::WebhookState;
use crate::media::MediaFiles;
use crate::metrics::Metrics;
use crate::model::{SharedClock, TokenCache};
use crate::pipeline::PaymentSink;
use crate::pipeline::Pipeline;
use crate::pipeline::PushSink;
use crate::pipeline::sender::{Sender, SenderHandle};
use crate::rules::{RuleSet, Rules, WatchGuard};
use crate::store::{SqliteStore, Store};
use crate::wechat::webhook::Keys;

/// How long in-flight sends may take to finish after the server stopped; with actix's own
/// bound this keeps `serve` inside the 10 s a SIGTERM allows (interface §6.12).
const SENDER_STOP_BOUND: Duration = Duration::from_secs(3);

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

/// Everything a running kefu shares (tests read it through [`Service::shared`]); the HTTP
/// handlers get only the parts they need, as app data.
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
    /// Tasks that hold nothing to flush (the media refresher, the log purge): aborted at stop.
    background: Vec<tokio::task::JoinHandle<()>>,
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

        let loaded = RuleSet::load_dir_with(
            &cfg.rules.dir,
            &cfg.window,
            &cfg.backends.keys().cloned().collect::<Vec<_>>(),
        )
        .map_err(|diags| {
            let list: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
            let n = list.len();
            anyhow::anyhow!(
                "the rules in {} do not load ({n} problem{}){}; fix them (`kefu rules check`) \
                 and start again:\n{}",
                cfg.rules.dir.display(),
                if n == 1 { "" } else { "s" },
                cfg.dir_hint("rules.dir", &cfg.rules.dir, None),
                list.join("\n")
            )
        })?;
        for w in &loaded.warnings {
            tracing::warn!(target: "kefu::rules", "{w}");
        }
        let rules = Arc::new(Rules::new(loaded));

        let (store, sqlite) =
            crate::store::open_store(&cfg, crate::store::Role::Server, clock.clone()).await?;
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

        // ---- media ---- files named in replies: uploaded now (in the background) and on
        // every reload, kept fresh by the refresher; pushes use only ready ids.
        let media = Arc::new(
            MediaFiles::new(store.clone(), client.clone(), clock.clone(), cfg.media.refresh_after)
                .with_metrics(metrics.clone()),
        );
        rules.set_on_reload(media.reload_hook());
        let media_refresher = media.spawn_refresher(rules.clone());
        let wake = Arc::new(Notify::new());
        let customer_service =
            Arc::new(crate::delivery::CustomerService::new(cfg.delivery.customer_service));
        let mut pipeline = Pipeline::new(
            store.clone(),
            rules.clone(),
            cfg.rules.passive_first,
            metrics.clone(),
            wake.clone(),
        )
        .with_app_id(&cfg.wechat.app_id)
        .with_delivery(&cfg.delivery, customer_service.clone())
        .with_media(media.clone());
        // ---- backends ---- forwards run beside the push path; unfinished ones are called again.
        if !cfg.backends.is_empty() {
            let deps = crate::backends::BackendDeps {
                metrics: metrics.clone(),
                store: Some(store.clone()),
                clock: clock.clone(),
                rules_dir: cfg.rules.dir.clone(),
            };
            let forwarder = crate::pipeline::forward::Forwarder::new(
                store.clone(),
                crate::backends::Backends::from_config(&cfg, &deps)?,
                metrics.clone(),
                clock.clone(),
                wake.clone(),
                client.clone(),
                &cfg.delivery,
                customer_service.clone(),
                cfg.rules.passive_first,
            );
            forwarder.recover().await;
            pipeline = pipeline.with_forwarder(forwarder);
        }
        let pipeline = Arc::new(pipeline);
        let sender =
            Sender::new(store.clone(), client.clone(), metrics.clone(), clock.clone(), wake)
                .with_delivery(&cfg.delivery, customer_service)
                .with_media(media)
                .spawn();

        let (purge_stop, purge_rx) = watch::channel(false);
        if cfg.log.retention.is_zero() {
            tracing::info!(
                "log.retention is 0s: no conversation log is kept (kefu conversations and the \
                 console's conversation pages stay empty); set it, e.g. \"30d\", to keep one"
            );
        }
        let log_purger =
            spawn_log_purger(store.clone(), clock.clone(), cfg.log.retention, purge_rx.clone());
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
        let background = vec![media_refresher, log_purger];
        Ok(Service { app, shared, sender, purge_stop, purger, background, _watcher: watcher })
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
        let Service { app, shared, sender, purge_stop, purger, background, _watcher } = self;
        let served = app.run_until_stopped().await;
        for task in background {
            task.abort();
        }
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

/// The conversation log's purge (interface §11.11: at least once a minute; more often under a
/// short `log.retention`, so a record outlives it by at most half of it).
fn spawn_log_purger(
    store: Arc<dyn Store>,
    clock: SharedClock,
    retention: Duration,
    mut stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let every = (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(60));
    tokio::spawn(async move {
        loop {
            match store.log_purge(clock.now_ms()).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::debug!(records = n, "conversation log: purged past log.retention")
                }
                Err(e) => tracing::warn!(error = %e, "conversation log purge failed; will retry"),
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                r = stop.changed() => if r.is_err() || *stop.borrow() { return },
            }
        }
    })
}

/// The routes beside the webhook: readiness, metrics, admin, pay.
fn routes(shared: Arc<Shared>) -> anyhow::Result<ExtraRoutes> {
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
    let rules = web::Data::new(shared.rules.clone());
    let metrics = web::Data::new(shared.metrics.clone());
    let rules_dir = web::Data::new(crate::http::ops::RulesDir(shared.cfg.rules.dir.clone()));
    let console = web::Data::new(Arc::new(
        crate::console::ConsoleState::new(
            &shared.cfg.admin.token,
            shared.cfg.console.secure_cookie,
        )
        .with_account_id(&shared.cfg.wechat.account_id),
    ));
    Ok(Arc::new(move |c: &mut web::ServiceConfig| {
        c.app_data(store.clone())
            .app_data(clock.clone())
            .app_data(auth.clone())
            .app_data(pay_sink.clone())
            .app_data(rules.clone())
            .app_data(metrics.clone())
            .app_data(rules_dir.clone())
            .app_data(console.clone())
            .app_data(client.clone());
        crate::http::ops::configure(c);
        c.route("/admin/windows/{openid}", web::get().to(crate::http::admin::window))
            .route("/admin/rules/reload", web::post().to(crate::http::admin::reload));
        crate::http::admin::configure(c);
        crate::http::conversations::configure(c);
        crate::console::configure(c);
        pay.register(c);
    }))
}
