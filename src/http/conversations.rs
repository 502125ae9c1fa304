//! The conversation routes of the admin API (interface §8.1), behind the admin token:
//! `GET /admin/conversations?limit=&before=`, `GET /admin/conversations/{openid}?since=`,
//! `POST /admin/conversations/{openid}/reply` and `GET /admin/events` (Server-Sent Events).
//! Handlers parse, call [`crate::pipeline::conversations`] and map errors; the console's pages
//! use the same calls.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::api::ApiClient;
use crate::convlog::{LogBus, LogRecord};
use crate::http::admin::{AdminError, require_admin};
use crate::model::{OpenId, SharedClock};
use crate::pipeline::conversations;
use crate::pipeline::gate::{GateError, Gated};
use crate::rules::Rules;
use crate::store::Store;

/// How often an idle event stream sends a comment, so proxies keep it open.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// Registers the four routes. Needs `Arc<dyn Store>`, `SharedClock`, `ApiClient`,
/// `Arc<Rules>` and `AdminAuth` as app data.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/conversations", web::get().to(list))
        .route("/admin/conversations/{openid}", web::get().to(show))
        .route("/admin/conversations/{openid}/reply", web::post().to(reply))
        .route("/admin/events", web::get().to(events));
}

/// The query string's parameters, each checked against `allowed`: a parameter not allowed, or
/// one given twice, is a 400 naming it (a typo such as `?befor=` would otherwise list from the
/// start without a word). `account` is the account middleware's (interface §10), accepted on
/// every route and left out of the list.
fn query_params(req: &HttpRequest, allowed: &[&str]) -> Result<Vec<(String, String)>, AdminError> {
    let mut pairs = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| AdminError::BadRequest(format!("the query string cannot be read: {e}")))?
        .into_inner();
    pairs.retain(|(k, _)| k != "account");
    for (i, (k, _)) in pairs.iter().enumerate() {
        if !allowed.contains(&k.as_str()) {
            return Err(AdminError::BadRequest(format!(
                "unknown query parameter {k:?}: this route takes {}",
                allowed.join(", ")
            )));
        }
        if pairs[..i].iter().any(|(p, _)| p == k) {
            return Err(AdminError::BadRequest(format!("query parameter {k:?} is given twice")));
        }
    }
    Ok(pairs)
}

/// The value of `name` among the query's parameters.
fn param<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// `?limit=` (default 50): 1 to [`conversations::MAX_PAGE`], more is cut to it; 0 or not a
/// number is a 400.
fn limit_param(pairs: &[(String, String)]) -> Result<usize, AdminError> {
    let Some(raw) = param(pairs, "limit") else { return Ok(50) };
    let bad = || {
        AdminError::BadRequest(format!(
            "limit={raw:?}: expected a whole number of followers, 1 to {} (more is cut to {})",
            conversations::MAX_PAGE,
            conversations::MAX_PAGE
        ))
    };
    let n = raw.trim().parse::<usize>().map_err(|_| bad())?;
    conversations::page_size(n).map_err(|_| bad())
}

/// `?NAME=` as Unix ms, or a 400 naming it.
fn ms_param(pairs: &[(String, String)], name: &str) -> Result<Option<i64>, AdminError> {
    param(pairs, name)
        .map(|raw| {
            raw.trim().parse::<i64>().map_err(|_| {
                AdminError::BadRequest(format!(
                    "{name}={raw:?}: expected Unix milliseconds, e.g. {name}=1796058340000"
                ))
            })
        })
        .transpose()
}

fn store_error(e: crate::store::StoreError) -> HttpResponse {
    HttpResponse::ServiceUnavailable()
        .json(json!({ "error": format!("the conversation log is unavailable: {e}") }))
}

fn openid(path: &str) -> Result<OpenId, AdminError> {
    OpenId::parse(path).map_err(|e| AdminError::BadRequest(e.to_string()))
}

async fn list(
    req: HttpRequest,
    store: web::Data<Arc<dyn Store>>,
    clock: web::Data<SharedClock>,
) -> Result<HttpResponse, actix_web::Error> {
    require_admin(&req)?;
    let pairs = query_params(&req, &["limit", "before"])?;
    let limit = limit_param(&pairs)?;
    let before = param(&pairs, "before")
        .map(|b| conversations::Cursor::parse(b).map_err(|e| format!("before={b:?}: {e}")))
        .transpose()
        .map_err(AdminError::BadRequest)?;
    let store = store.as_ref().as_ref();
    Ok(match conversations::page(store, limit, before.as_ref(), clock.now_secs()).await {
        Ok(page) => HttpResponse::Ok().json(page),
        Err(e) => store_error(e),
    })
}

async fn show(
    req: HttpRequest,
    path: web::Path<String>,
    store: web::Data<Arc<dyn Store>>,
    clock: web::Data<SharedClock>,
) -> Result<HttpResponse, actix_web::Error> {
    require_admin(&req)?;
    let openid = openid(&path)?;
    let since = ms_param(&query_params(&req, &["since"])?, "since")?;
    Ok(match conversations::show(store.as_ref().as_ref(), &openid, since, clock.now_secs()).await {
        Ok(t) => HttpResponse::Ok().json(t),
        Err(e) => store_error(e),
    })
}

/// `POST /admin/conversations/{openid}/reply`: sends the reply through the window gate and
/// answers as `/admin/send` does: 200 sent (or dry-run), 409 with the reason when the window
/// What a dry-run reply answers.
const DRY_RUN: &str = "dry-run: not sent: no wechat.app_id/app_secret configured";

/// refuses, 400 for a bad body, 502 with WeChat's errcode explained.
async fn reply(
    req: HttpRequest,
    path: web::Path<String>,
    store: web::Data<Arc<dyn Store>>,
    api: web::Data<ApiClient>,
    rules: web::Data<Arc<Rules>>,
    clock: web::Data<SharedClock>,
    body: web::Bytes,
) -> Result<HttpResponse, actix_web::Error> {
    require_admin(&req)?;
    let openid = openid(&path)?;
    let body: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| AdminError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    let send = conversations::parse_reply(&openid, &body, rules.current().window())
        .map_err(AdminError::BadRequest)?;
    match conversations::reply(store.as_ref().as_ref(), &api, &send, clock.now_ms()).await {
        Ok(Gated::Sent { charged }) => Ok(HttpResponse::Ok().json(json!({
            "errcode": 0, "errmsg": "ok", "sent": true, "dry_run": false,
            "touser": openid.as_str(), "charged": charged.map(|t| t.as_str()),
        }))),
        Ok(Gated::DryRun { charged }) => Ok(HttpResponse::Ok().json(json!({
            "sent": false, "dry_run": true,
            "touser": openid.as_str(), "charged": charged.map(|t| t.as_str()),
            "message": crate::http::accounts::keys_for(&req, DRY_RUN),
        }))),
        Ok(Gated::Refused(reason)) => Ok(HttpResponse::Conflict().json(json!({
            "error": format!("not sent: {reason}"),
            "touser": openid.as_str(),
        }))),
        Err(GateError::Api(e)) => Err(AdminError::Api(e).into()),
        Err(GateError::Store(e)) => Ok(store_error(e)),
    }
}

async fn events(
    req: HttpRequest,
    store: web::Data<Arc<dyn Store>>,
) -> Result<HttpResponse, actix_web::Error> {
    require_admin(&req)?;
    Ok(event_stream(store.log_bus()))
}

/// A Server-Sent Events response: one `message` event per record (`data` is the record's
/// JSON, `id` its id), a comment every 15 s, and a `lagged` event when a slow reader
/// missed records (reload to catch up).
pub fn event_stream(bus: LogBus) -> HttpResponse {
    use tokio::sync::broadcast::error::RecvError;
    let rx = bus.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
            Err(_) => ": keepalive\n\n".to_string(),
            Ok(Ok(rec)) => sse_message(&rec),
            Ok(Err(RecvError::Lagged(n))) => format!("event: lagged\ndata: {n}\n\n"),
            Ok(Err(RecvError::Closed)) => return None,
        };
        Some((Ok::<_, actix_web::Error>(web::Bytes::from(chunk)), rx))
    });
    HttpResponse::Ok()
        .insert_header(("Content-Type", "text/event-stream"))
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(futures::StreamExt::chain(
            futures::stream::once(async { Ok(web::Bytes::from_static(b": open\n\n")) }),
            stream,
        ))
}

/// One SSE `message` event of a record.
fn sse_message(rec: &LogRecord) -> String {
    // JSON has no raw newline, so one `data:` line carries it.
    format!("event: message\nid: {}\ndata: {}\n\n", rec.id, rec.encode())
}
