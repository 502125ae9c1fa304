//! The operations routes (interface §3): `GET /healthz` (200 while the process serves),
//! `GET /readyz` (can a push be recorded, and did the last rules reload work) and
//! `GET /metrics` (Prometheus text format or OpenMetrics, by `Accept`). Each handler takes only
//! what it reads from app data: the store, the rules handle, the metrics, the clock, and
//! [`RulesDir`] for messages.

use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::metrics::Metrics;
use crate::model::SharedClock;
use crate::rules::Rules;
use crate::store::Store;

/// `rules.dir`, for the fix `/readyz` names after a failed reload.
#[derive(Clone, Debug)]
pub struct RulesDir(pub PathBuf);

/// Mounts `/healthz` only: it needs no app data, so it is there on every server.
pub fn configure_health(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz));
}

/// Mounts `/readyz` and `/metrics`; the caller registers `web::Data<Arc<dyn Store>>`,
/// `web::Data<Arc<Rules>>`, `web::Data<Arc<Metrics>>`, `web::Data<SharedClock>` and
/// `web::Data<RulesDir>`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/readyz", web::get().to(readyz)).route("/metrics", web::get().to(metrics));
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; charset=utf-8").body("ok")
}

/// `GET /readyz`: 503 while a push cannot be recorded (the store does not answer); 200
/// otherwise. A failed rules reload is listed in `problems` (with its errors) until a reload
/// succeeds, and so is an empty rule set, but the answer stays 200: the previous rules keep answering pushes, and taking
/// every instance out of rotation over a bad edit would turn it into an outage.
async fn readyz(
    store: web::Data<Arc<dyn Store>>,
    rules: web::Data<Arc<Rules>>,
    dir: web::Data<RulesDir>,
) -> HttpResponse {
    let mut problems = Vec::new();
    let mut ready = true;
    if let Err(e) = store.ping().await {
        problems.push(format!("store unreachable: {e}"));
        ready = false;
    }
    let current = rules.current();
    let status = rules.status();
    if current.is_empty() {
        // Ready (pushes are recorded and answered), but an operator wants to know: with no
        // rule, every push is answered `success` and nothing is ever sent.
        problems.push(format!(
            "no rules are loaded from {}: every push is answered with `success` and nothing is \
             sent; add rule files there (`kefu rules check` shows what loads)",
            dir.0.display()
        ));
    }
    if !status.last_ok {
        let n = status.last_errors.len();
        problems.push(format!(
            "the last rules reload failed ({n} error{}); the previous {} rule{} stay active until \
             a reload succeeds: fix the files in {} (`kefu rules check`){}",
            if n == 1 { "" } else { "s" },
            current.len(),
            if current.len() == 1 { "" } else { "s" },
            dir.0.display(),
            status.last_errors.first().map(|e| format!("; first error: {e}")).unwrap_or_default()
        ));
    }
    let body = json!({
        "ready": ready,
        "rules": current.len(),
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

/// `GET /metrics` in the format the `Accept` header asks for ([`crate::metrics::Format`]);
/// the gauges read from the store are refreshed first.
async fn metrics(
    req: HttpRequest,
    m: web::Data<Arc<Metrics>>,
    store: web::Data<Arc<dyn Store>>,
    rules: web::Data<Arc<Rules>>,
    clock: web::Data<SharedClock>,
) -> HttpResponse {
    if let Ok(stats) = store.stats(clock.now_secs()).await {
        m.open_windows.set(stats.open_windows as i64);
        m.outbox_depth.set(stats.outbox_pending as i64);
        m.held_answers.set(stats.held_answers as i64);
    }
    m.sync_reloads(&rules.status());
    let accept = req.headers().get(actix_web::http::header::ACCEPT).and_then(|v| v.to_str().ok());
    let format = crate::metrics::Format::from_accept(accept);
    HttpResponse::Ok()
        .content_type(format.content_type())
        .insert_header((actix_web::http::header::VARY, "Accept"))
        .body(m.render_as(format))
}
