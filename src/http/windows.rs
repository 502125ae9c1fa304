//! `GET /admin/windows/{openid}` (interface §3, §5): the follower's ledger entry as JSON (with
//! the held answers listed, [`crate::convlog::window_json`]), 400
//! for a malformed OpenID, 503 when the store cannot answer. Mounted behind the admin
//! bearer-token check; it reads the store and the clock from app data
//! (`web::Data<Arc<dyn Store>>`, `web::Data<SharedClock>`).

use std::sync::Arc;

use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::model::{OpenId, SharedClock};
use crate::store::Store;

/// The handler.
pub async fn window_handler(
    path: web::Path<String>,
    store: web::Data<Arc<dyn Store>>,
    clock: web::Data<SharedClock>,
) -> HttpResponse {
    let raw = path.into_inner();
    let openid = match OpenId::parse(&raw) {
        Ok(o) => o,
        Err(e) => {
            return HttpResponse::BadRequest().json(json!({ "error": e.to_string() }));
        }
    };
    let now = clock.now_secs();
    let view = match store.window(&openid, now).await {
        Ok(view) => store.held_for(&openid, now.saturating_mul(1000)).await.map(|h| (view, h)),
        Err(e) => Err(e),
    };
    match view {
        Ok((view, held)) => HttpResponse::Ok().json(crate::convlog::window_json(&view, &held)),
        Err(e) => {
            tracing::error!(error = %e, openid = %openid, "window lookup failed");
            HttpResponse::ServiceUnavailable()
                .json(json!({ "error": format!("the window ledger is unavailable: {e}") }))
        }
    }
}
