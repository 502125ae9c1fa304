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

#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<usize>,
    /// Unix ms: followers last active before it (the previous page's last `last_at_ms`).
    before: Option<i64>,
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
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    require_admin(&req)?;
    let limit = query.limit.unwrap_or(50);
    Ok(
        match conversations::list(store.as_ref().as_ref(), limit, query.before, clock.now_secs())
            .await
        {
            Ok(list) => {
                let next =
                    list.last().filter(|_| list.len() >= limit).map(|c| c.activity.last_at_ms);
                HttpResponse::Ok().json(json!({ "conversations": list, "next_before": next }))
            }
            Err(e) => store_error(e),
        },
    )
}

#[derive(serde::Deserialize)]
struct ShowQuery {
    /// Unix ms.
    since: Option<i64>,
}

async fn show(
    req: HttpRequest,
    path: web::Path<String>,
    store: web::Data<Arc<dyn Store>>,
    clock: web::Data<SharedClock>,
    query: web::Query<ShowQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    require_admin(&req)?;
    let openid = openid(&path)?;
    Ok(
        match conversations::show(store.as_ref().as_ref(), &openid, query.since, clock.now_secs())
            .await
        {
            Ok(t) => HttpResponse::Ok().json(t),
            Err(e) => store_error(e),
        },
    )
}

/// Sends a reply through the window gate and answers as `/admin/send` does: 200 sent (or
/// dry-run), 409 with the reason when the window refuses, 400 for a bad body, 502 with
/// WeChat's errcode explained.
pub async fn send_reply(
    store: &dyn Store,
    api: &ApiClient,
    rules: &Rules,
    clock: &SharedClock,
    openid: &OpenId,
    body: &serde_json::Value,
) -> Result<HttpResponse, AdminError> {
    let send = conversations::parse_reply(openid, body, rules.current().window())
        .map_err(AdminError::BadRequest)?;
    match conversations::reply(store, api, &send, clock.now_ms()).await {
        Ok(Gated::Sent { charged }) => Ok(HttpResponse::Ok().json(json!({
            "errcode": 0, "errmsg": "ok", "sent": true, "dry_run": false,
            "touser": openid.as_str(), "charged": charged.map(|t| t.as_str()),
        }))),
        Ok(Gated::DryRun { charged }) => Ok(HttpResponse::Ok().json(json!({
            "sent": false, "dry_run": true,
            "touser": openid.as_str(), "charged": charged.map(|t| t.as_str()),
            "message": "dry-run: not sent: no wechat.app_id/app_secret configured",
        }))),
        Ok(Gated::Refused(reason)) => Ok(HttpResponse::Conflict().json(json!({
            "error": format!("not sent: {reason}"),
            "touser": openid.as_str(),
        }))),
        Err(GateError::Api(e)) => Err(AdminError::Api(e)),
        Err(GateError::Store(e)) => Ok(store_error(e)),
    }
}

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
    Ok(send_reply(store.as_ref().as_ref(), &api, &rules, &clock, &openid, &body).await?)
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
