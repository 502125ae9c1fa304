//! The operations routes (interface §3): `GET /healthz` (200 while the process serves),
//! `GET /readyz` (can a push be recorded, and did the last rules reload work) and
//! `GET /metrics` (Prometheus text format or OpenMetrics, by `Accept`). Each handler takes only
//! what it reads from app data: [`Ops`], every account's store, rules and metrics.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::metrics::{Metrics, MetricsSet};
use crate::model::SharedClock;
use crate::rules::Rules;
use crate::store::Store;

/// What `/readyz` and `/metrics` read of one account: its store, rules (and their directory,
/// for the fix a failed reload names) and metrics.
#[derive(Clone)]
pub struct OpsAccount {
    /// The account's name; None for the one account of a configuration without
    /// `[accounts.*]` (its readiness is reported as before, at the top level).
    pub name: Option<String>,
    pub store: Arc<dyn Store>,
    pub rules: Arc<Rules>,
    pub rules_dir: PathBuf,
    pub metrics: Arc<Metrics>,
}

/// The app data of `/readyz` and `/metrics`: every account, and the page that merges their
/// metrics.
pub struct Ops {
    pub accounts: Vec<OpsAccount>,
    pub metrics: Arc<MetricsSet>,
    pub clock: SharedClock,
}

/// Mounts `/healthz` only: it needs no app data, so it is there on every server.
pub fn configure_health(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz));
}

/// Mounts `/readyz` and `/metrics`; the caller registers `web::Data<Ops>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/readyz", web::get().to(readyz)).route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("ok")
}

/// `GET /readyz`: 503 while a push cannot be recorded (a store does not answer); 200
/// otherwise. A failed rules reload is listed in `problems` (with its errors) until a reload
/// succeeds, and so is an empty rule set, but the answer stays 200: the previous rules keep
/// answering pushes, and taking every instance out of rotation over a bad edit would turn it
/// into an outage. With `[accounts.*]` each account is reported under `accounts.NAME` and
/// the top level sums them (ready only when every account is; problems prefixed with the
/// account's name).
async fn readyz(ops: web::Data<Ops>) -> HttpResponse {
    let mut top = Readiness::default();
    let mut each = serde_json::Map::new();
    for a in &ops.accounts {
        let r = Readiness::of(a).await;
        match &a.name {
            None => top = r,
            Some(name) => {
                each.insert(name.clone(), r.json());
                top.ready &= r.ready;
                top.rules += r.rules;
                top.last_reload_ok &= r.last_reload_ok;
                top.reload_errors.extend(r.reload_errors.iter().map(|e| format!("{name}: {e}")));
                top.problems.extend(r.problems.iter().map(|p| format!("account {name}: {p}")));
            }
        }
    }
    let mut body = top.json();
    if !each.is_empty() {
        body["accounts"] = serde_json::Value::Object(each);
    }
    if top.ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// One account's readiness, or the sum of several.
struct Readiness {
    ready: bool,
    rules: usize,
    last_reload_ok: bool,
    reload_errors: Vec<String>,
    problems: Vec<String>,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            ready: true,
            rules: 0,
            last_reload_ok: true,
            reload_errors: Vec::new(),
            problems: Vec::new(),
        }
    }
}

impl Readiness {
    async fn of(a: &OpsAccount) -> Readiness {
        let mut problems = Vec::new();
        let mut ready = true;
        if let Err(e) = a.store.ping().await {
            problems.push(format!("store unreachable: {e}"));
            ready = false;
        }
        let current = a.rules.current();
        let status = a.rules.status();
        if current.is_empty() {
            // Ready (pushes are recorded and answered), but an operator wants to know: with
            // no rule, every push is answered `success` and nothing is ever sent.
            problems.push(format!(
                "no rules are loaded from {}: every push is answered with `success` and nothing \
                 is sent; add rule files there (`kefu rules check` shows what loads)",
                a.rules_dir.display()
            ));
        }
        if !status.last_ok {
            let n = status.last_errors.len();
            problems.push(format!(
                "the last rules reload failed ({n} error{}); the previous {} rule{} stay active \
                 until a reload succeeds: fix the files in {} (`kefu rules check`){}",
                if n == 1 { "" } else { "s" },
                current.len(),
                if current.len() == 1 { "" } else { "s" },
                a.rules_dir.display(),
                status
                    .last_errors
                    .first()
                    .map(|e| format!("; first error: {e}"))
                    .unwrap_or_default()
            ));
        }
        Readiness {
            ready,
            rules: current.len(),
            last_reload_ok: status.last_ok,
            reload_errors: status.last_errors.clone(),
            problems,
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({
            "ready": self.ready,
            "rules": self.rules,
            "last_reload_ok": self.last_reload_ok,
            "reload_errors": self.reload_errors,
            "problems": self.problems,
        })
    }
}

/// `GET /metrics` in the format the `Accept` header asks for ([`crate::metrics::Format`]);
/// the gauges read from each account's store are refreshed first.
async fn metrics(req: HttpRequest, ops: web::Data<Ops>) -> HttpResponse {
    for a in &ops.accounts {
        if let Ok(stats) = a.store.stats(ops.clock.now_secs()).await {
            a.metrics.open_windows.set(stats.open_windows as i64);
            a.metrics.outbox_depth.set(stats.outbox_pending as i64);
            a.metrics.held_answers.set(stats.held_answers as i64);
        }
        a.metrics.sync_reloads(&a.rules.status());
    }
    let accept = req.headers().get(actix_web::http::header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((actix_web::http::header::VARY, "Accept"))
        .body(ops.metrics.render_as(format))
}
