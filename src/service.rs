//! Assembles a running kefu from its parts: for each account (interface §10) its store
//! (SQLite, or Redis + SQLite), rules, API client, media files, pipeline and sender; then one
//! server with a webhook per account path and every other HTTP route. `kefu serve` and the
//! end-to-end tests both start kefu through [`Service::build`], so tests run the real thing.

use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

use crate::api::ApiClient;
use crate::app::{Application, ExtraRoutes};
use crate::config::Config;
use crate::http::accounts::{AccountChoice, AccountData};
use crate::http::webhook::WebhookState;
use crate::media::MediaFiles;
use crate::metrics::{Metrics, MetricsSet};
use crate::model::{SharedClock, TokenCache};
use crate::pipeline::Pipeline;
use crate::pipeline::PushSink;
use crate::pipeline::sender::{Sender, SenderHandle};
use crate::pipeline::{PaymentRouter, PaymentSink};
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

/// One account of a running kefu: its configuration view, store, rules, API client, metrics
/// and pipeline (tests read it through [`Service::shared`] and [`Service::account`]); the
/// HTTP handlers get only the parts they need, as app data.
pub struct Shared {
    /// The account's name (`default` for the `[wechat]` account).
    pub name: String,
    /// The account's view of the configuration ([`Config::view`]).
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
    /// The embedded store under the account's state directory (the whole store, or the
    /// outbox beside Redis).
    sqlite: SqliteStore,
}

/// What runs for one account beside the server, stopped in order at shutdown.
struct AccountTasks {
    shared: Arc<Shared>,
    sender: SenderHandle,
    purge_stop: watch::Sender<bool>,
    purger: tokio::task::JoinHandle<()>,
    /// Tasks that hold nothing to flush (the media refresher, the log purge): aborted at stop.
    background: Vec<tokio::task::JoinHandle<()>>,
    _watcher: Option<WatchGuard>,
}

/// What [`Service::build`] checks of an account before any state exists: its keys and rules.
struct Prepared {
    view: Config,
    keys: Keys,
    rules: Arc<Rules>,
}

pub struct Service {
    app: Application,
    accounts: Vec<AccountTasks>,
}

impl Service {
    /// Checks every account's keys and rules (every error reported, none tolerated at
    /// start), opens each account's store, and starts the server (one webhook per account
    /// path), the senders and the background tasks.
    pub async fn build(cfg: Config, clock: SharedClock) -> anyhow::Result<Service> {
        cfg.check_serve()?;
        // Everything that can fail on configuration alone comes before a store is opened,
        // so a taken port or a broken rule leaves no new state.dir behind.
        let listener = crate::app::bind(&cfg)?;
        check_state_dirs(&cfg)?;
        let mut prepared = Vec::new();
        for account in &cfg.served() {
            prepared.push(prepare(&cfg, account)?);
        }
        let labelled = cfg.named_accounts();
        let shared_metrics = Arc::new(Metrics::new());

        let mut accounts: Vec<AccountTasks> = Vec::new();
        let mut webhooks = Vec::new();
        let mut slots: Option<crate::backends::Backends> = None;
        for p in prepared {
            let metrics = if labelled { Arc::new(Metrics::new()) } else { shared_metrics.clone() };
            // Each account's own log lines (its store, media uploads) say which account.
            // (Only for [accounts.*]: a single account's lines stay as they were.)
            let span = match &p.view.account {
                Some(name) => tracing::info_span!("account", account = %name),
                None => tracing::Span::none(),
            };
            let (tasks, webhook) =
                start_account(p, metrics, clock.clone(), &mut slots).instrument(span).await?;
            webhooks.push(webhook);
            accounts.push(tasks);
        }
        let metrics = Arc::new(if labelled {
            MetricsSet::labelled(
                accounts
                    .iter()
                    .map(|a| (a.shared.name.clone(), a.shared.metrics.clone()))
                    .collect(),
                shared_metrics.clone(),
            )
        } else {
            MetricsSet::single(shared_metrics.clone())
        });

        let list: Vec<Arc<Shared>> = accounts.iter().map(|a| a.shared.clone()).collect();
        let (extra, data) = routes(&cfg, &list, metrics, shared_metrics, clock.clone())?;
        let app = Application::build_on(listener, webhooks, Some(extra), data)?;
        for a in &list {
            tracing::info!(
                account = %a.name,
                address = %app.local_addr(),
                path = %a.cfg.server.path,
                rules = a.rules.current().len(),
                "kefu listening"
            );
            // Refusals later say "does not match the configured wechat.token" and the like;
            // this line says where each of those keys came from (never their values).
            tracing::info!(
                account = %a.name,
                token = %a.cfg.key("wechat.token"),
                encoding_aes_key = %a.cfg.key("wechat.encoding_aes_key"),
                app_id = %a.cfg.key("wechat.app_id"),
                max_clock_skew_secs = %a.cfg.key("server.max_clock_skew_secs"),
                "push verification uses"
            );
        }
        Ok(Service { app, accounts })
    }

    pub fn port(&self) -> u16 {
        self.app.port()
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.app.local_addr()
    }

    /// The first (or only) account.
    pub fn shared(&self) -> Arc<Shared> {
        self.accounts[0].shared.clone()
    }

    /// The account called `name`, if it is served.
    pub fn account(&self, name: &str) -> Option<Arc<Shared>> {
        self.accounts.iter().find(|a| a.shared.name == name).map(|a| a.shared.clone())
    }

    /// Serves until SIGTERM/SIGINT (or [`Self::handle`]'s stop), then stops each account's
    /// sender within its bound, leaving unsent messages in the outbox for the next start.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Service { app, accounts } = self;
        let served = app.run_until_stopped().await;
        for a in &accounts {
            for task in &a.background {
                task.abort();
            }
        }
        // The senders stop side by side: the bound holds for all of them together.
        let mut rest = Vec::new();
        let mut stopping = Vec::new();
        for a in accounts {
            let AccountTasks { shared, sender, purge_stop, purger, background: _, _watcher } = a;
            stopping.push(sender.shutdown(SENDER_STOP_BOUND));
            rest.push((shared, purge_stop, purger, _watcher));
        }
        futures::future::join_all(stopping).await;
        for (shared, purge_stop, purger, _watcher) in rest {
            let _ = purge_stop.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(1), purger).await;
            shared.sqlite.close();
        }
        served?;
        tracing::info!("kefu stopped");
        Ok(())
    }

    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.app.handle()
    }
}

/// What the accounts' state directories say about the configuration, before any is opened:
/// a single account's database that no account reads any more (its `[wechat]` moved into a
/// table not named `default`) is worth a warning; an account whose directory served another
/// configured account's AppID (two tables' `app_id`s swapped) stops the start, since it would
/// answer one account's followers from the other's ledger.
fn check_state_dirs(cfg: &Config) -> anyhow::Result<()> {
    use crate::config::DEFAULT_ACCOUNT;
    let accounts = cfg.served();
    let legacy_db = cfg.state.dir.join(crate::store::sqlite::DB_FILE);
    if cfg.named_accounts() && cfg.account(DEFAULT_ACCOUNT).is_none() && legacy_db.is_file() {
        tracing::warn!(
            database = %legacy_db.display(),
            "state.dir holds the database of a single-account kefu (its windows, outbox and \
             conversation log), and no account reads it: the account that was [wechat] keeps \
             that state only when its table is named [accounts.default] (with path = the old \
             server.path). Rename that table, or move the database away if it is not needed"
        );
    }
    for a in accounts.iter().filter(|a| a.named && !a.wechat.app_id.is_empty()) {
        let file = a.state_dir.join(crate::store::APP_FILE);
        let Ok(before) = std::fs::read_to_string(&file) else { continue };
        let before = before.trim();
        if before == a.wechat.app_id {
            continue;
        }
        if let Some(owner) = accounts.iter().find(|o| o.name != a.name && o.wechat.app_id == before)
        {
            anyhow::bail!(
                "the state of account {} ({}) was recorded for AppID {before}, which is now \
                 [accounts.{}]'s app_id: the app_ids of [accounts.{}] and [accounts.{}] look \
                 swapped. Put each AppID back in the table whose state it owns (kefu would \
                 otherwise answer one account's followers from the other's ledger)",
                a.name,
                a.state_dir.display(),
                owner.name,
                a.name,
                owner.name
            );
        }
    }
    Ok(())
}

/// Checks one account's keys and loads its rules; nothing is opened or written.
fn prepare(cfg: &Config, account: &crate::config::AccountConfig) -> anyhow::Result<Prepared> {
    let view = cfg.view(account);
    let keys = Keys::from_config(&view)?;
    let loaded = RuleSet::load_dir_with(
        &view.rules.dir,
        &view.window,
        &view.backends.keys().cloned().collect::<Vec<_>>(),
    )
    .map_err(|diags| {
        let list: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
        let n = list.len();
        anyhow::anyhow!(
            "the rules in {}{} do not load ({n} problem{}){}; fix them (`kefu rules check{}`) \
             and start again:\n{}",
            view.rules.dir.display(),
            if account.named { format!(" (account {})", account.name) } else { String::new() },
            if n == 1 { "" } else { "s" },
            view.dir_hint("rules.dir", &view.rules.dir, None),
            if account.named { format!(" --account {}", account.name) } else { String::new() },
            list.join("\n")
        )
    })?;
    for w in &loaded.warnings {
        tracing::warn!(target: "kefu::rules", account = %account.name, "{w}");
    }
    Ok(Prepared { view, keys, rules: Arc::new(Rules::new(loaded)) })
}

/// Opens one account's store and starts its pipeline, forwarder, sender and background
/// tasks; returns them and the account's webhook (path and state). `slots` carries the
/// first account's backends, whose call slots (`max_concurrent`) every account shares.
async fn start_account(
    p: Prepared,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    slots: &mut Option<crate::backends::Backends>,
) -> anyhow::Result<(AccountTasks, (String, web::Data<WebhookState>))> {
    let Prepared { view: cfg, keys, rules } = p;
    let name = cfg.account_name();
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
            "sending is off: {} is set but {} is missing; pushes are verified, decrypted (the \
             AppID checked) and answered with passive replies, and customer-service messages \
             are logged as dry-run instead of sent. To send, {} to the AppSecret (开发者密码) \
             and restart",
            cfg.key_name("wechat.app_id"),
            cfg.key_name("wechat.app_secret"),
            cfg.how_to_set("wechat.app_secret")
        );
        None
    } else {
        tracing::info!(
            "no {}/app_secret: dry-run mode, customer-service messages are logged, not sent",
            cfg.key_name("wechat.app_id")
        );
        None
    };

    // ---- media ---- files named in replies: uploaded now (in the background) and on every
    // reload, kept fresh by the refresher; pushes use only ready ids.
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
    // ---- backends ---- shared by every account (one config, one set of call slots); each
    // account's instance keeps its followers' turns in its own store. Forwards run beside
    // the push path; unfinished ones are called again.
    if !cfg.backends.is_empty() {
        let deps = crate::backends::BackendDeps {
            metrics: metrics.clone(),
            store: Some(store.clone()),
            clock: clock.clone(),
            rules_dir: cfg.rules.dir.clone(),
        };
        let mut backends = crate::backends::Backends::from_config(&cfg, &deps)?;
        match slots {
            Some(first) => backends.share_slots(first),
            None => *slots = Some(backends.clone()),
        }
        let forwarder = crate::pipeline::forward::Forwarder::new(
            store.clone(),
            backends,
            metrics.clone(),
            clock.clone(),
            wake.clone(),
            client.clone(),
            &cfg.delivery,
            customer_service.clone(),
            cfg.rules.passive_first,
            &name,
        );
        forwarder.recover().await;
        pipeline = pipeline.with_forwarder(forwarder);
    }
    let pipeline = Arc::new(pipeline);
    let sender = Sender::new(store.clone(), client.clone(), metrics.clone(), clock.clone(), wake)
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

    let sink: Arc<dyn PushSink> = pipeline.clone();
    let state = web::Data::new(
        WebhookState::new(keys, sink, cfg.server.max_body_bytes, clock.clone())
            .with_metrics(metrics.clone())
            .for_account(cfg.account.clone()),
    );
    let path = cfg.server.path.clone();
    let shared =
        Arc::new(Shared { name, cfg, store, rules, client, api, metrics, clock, pipeline, sqlite });
    let tasks = AccountTasks {
        shared,
        sender,
        purge_stop,
        purger,
        background: vec![media_refresher, log_purger],
        _watcher: watcher,
    };
    Ok((tasks, (path, state)))
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
    tokio::spawn(
        async move {
            loop {
                match store.log_purge(clock.now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::debug!(records = n, "conversation log: purged past log.retention")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "conversation log purge failed; will retry")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    r = stop.changed() => if r.is_err() || *stop.borrow() { return },
                }
            }
        }
        .in_current_span(),
    )
}

/// The routes beside the webhooks (readiness, metrics, admin, console, pay) and each
/// account's app data for the account middleware ([`crate::http::accounts`]).
fn routes(
    cfg: &Config,
    accounts: &[Arc<Shared>],
    metrics: Arc<MetricsSet>,
    shared_metrics: Arc<Metrics>,
    clock: SharedClock,
) -> anyhow::Result<(ExtraRoutes, Vec<AccountData>)> {
    let names = Arc::new(accounts.iter().map(|a| a.name.clone()).collect::<Vec<_>>());
    let data: Vec<AccountData> = accounts
        .iter()
        .map(|a| {
            let store = web::Data::new(a.store.clone());
            let api = web::Data::new(a.api.clone());
            let rules = web::Data::new(a.rules.clone());
            let metrics = web::Data::new(a.metrics.clone());
            let auth = web::Data::new(crate::http::admin::AdminAuth::from_config(&a.cfg));
            let insert = move |ext: &mut actix_web::dev::Extensions| {
                ext.insert(store.clone());
                ext.insert(api.clone());
                ext.insert(rules.clone());
                ext.insert(auth.clone());
                ext.insert(metrics.clone());
            };
            AccountData {
                choice: AccountChoice {
                    name: a.name.clone(),
                    account_id: a.cfg.wechat.account_id.clone(),
                    all: names.clone(),
                    named: a.cfg.account.is_some(),
                },
                insert: Arc::new(insert),
            }
        })
        .collect();
    let ops = web::Data::new(crate::http::ops::Ops {
        accounts: accounts
            .iter()
            .map(|a| crate::http::ops::OpsAccount {
                name: a.cfg.account.clone(),
                store: a.store.clone(),
                rules: a.rules.clone(),
                rules_dir: a.cfg.rules.dir.clone(),
                metrics: a.metrics.clone(),
            })
            .collect(),
        metrics: metrics.clone(),
        clock: clock.clone(),
    });
    let clock = web::Data::new(clock);
    // The admin check for requests no account middleware sees (it adds each account's own).
    let auth = web::Data::new(crate::http::admin::AdminAuth::from_config(cfg));
    let pay_sink: web::Data<Arc<dyn PaymentSink>> = web::Data::new(Arc::new(PaymentRouter::new(
        accounts.iter().map(|a| (a.cfg.wechat.app_id.clone(), a.pipeline.clone())).collect(),
    )) as Arc<dyn PaymentSink>);
    // Loaded once here, so a bad PEM stops the start with its message.
    let pay = crate::http::pay::PayRoutes::from_config(&cfg.pay, cfg.server.max_clock_skew_secs)?
        .with_metrics(shared_metrics);
    let console = web::Data::new(Arc::new(crate::console::ConsoleState::new(
        &cfg.admin.token,
        cfg.console.secure_cookie,
    )));
    let extra: ExtraRoutes = Arc::new(move |c: &mut web::ServiceConfig| {
        c.app_data(clock.clone())
            .app_data(auth.clone())
            .app_data(pay_sink.clone())
            .app_data(ops.clone())
            .app_data(console.clone());
        crate::http::ops::configure(c);
        c.route("/admin/windows/{openid}", web::get().to(crate::http::admin::window))
            .route("/admin/rules/reload", web::post().to(crate::http::admin::reload));
        crate::http::admin::configure(c);
        crate::http::conversations::configure(c);
        crate::console::configure(c);
        pay.register(c);
    });
    Ok((extra, data))
}
