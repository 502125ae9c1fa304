//! The web console at `/console` (interface §8.2): server-rendered pages (askama templates
//! under `templates/console/`, every value HTML-escaped by the engine) and one small script,
//! all compiled into the binary, for the people who run the account.
//!
//! It owns the browser side of security: sign-in with the admin token (compared in constant
//! time, failures rate-limited per client address), a server-side session store (sign-out ends
//! the session), a session cookie that is HttpOnly, SameSite=Strict and, with
//! `console.secure_cookie`, Secure; a per-session CSRF token on every state-changing form plus
//! an Origin/Referer check (a foreign origin is refused even with the cookie, §11.8); and a
//! Content-Security-Policy that allows no inline script. Off (404) while `admin.token` is
//! empty, like the admin API. The pages call the same functions as the admin API
//! ([`crate::pipeline::conversations`], [`crate::api::ApiClient`], [`crate::rules::Rules`]).

mod pages;
mod security;

use std::sync::Arc;

use actix_web::{HttpResponse, web};

pub use security::{ConsoleState, SESSION_COOKIE};

/// The console's stylesheet and script, served from the binary.
const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// The largest console form (bytes, URL-encoded): the reply box's 2000 characters at 9 bytes
/// each (a Chinese character is 3 UTF-8 bytes, each written %XX), with room to spare.
const FORM_LIMIT: usize = 64 * 1024;

/// Registers every `/console` route. Needs `ConsoleState` and `SharedClock` as the app's data,
/// and per account (put in front by [`crate::http::accounts::select`] for the `?account=` of
/// each request) `AdminAuth`, `Arc<dyn Store>`, `ApiClient`, `Arc<Rules>`, `Arc<Metrics>` and
/// `AccountChoice`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // A reply of 2000 Chinese characters is 18 KB URL-encoded: above actix's 16 KB default.
    cfg.app_data(web::FormConfig::default().limit(FORM_LIMIT))
        .route("/console", web::get().to(pages::home))
        .route("/console/", web::get().to(pages::home))
        .route("/console/login", web::get().to(pages::login_page))
        .route("/console/login", web::post().to(pages::login))
        .route("/console/logout", web::post().to(pages::logout))
        .route("/console/conversations", web::get().to(pages::conversations))
        .route("/console/conversations/{openid}", web::get().to(pages::thread))
        .route("/console/conversations/{openid}/reply", web::post().to(pages::reply))
        .route("/console/fragments/conversations", web::get().to(pages::conversation_rows))
        .route("/console/fragments/thread/{openid}", web::get().to(pages::thread))
        .route("/console/accounts", web::get().to(pages::accounts))
        .route("/console/accounts/{action}", web::post().to(pages::account_action))
        .route("/console/rules", web::get().to(pages::rules))
        .route("/console/rules/reload", web::post().to(pages::reload))
        .route("/console/outbox", web::get().to(pages::outbox))
        .route("/console/events", web::get().to(pages::events))
        .route("/console/assets/console.css", web::get().to(css))
        .route("/console/assets/console.js", web::get().to(js));
}

async fn css(state: web::Data<Arc<ConsoleState>>) -> HttpResponse {
    asset(&state, "text/css; charset=utf-8", CSS)
}

async fn js(state: web::Data<Arc<ConsoleState>>) -> HttpResponse {
    asset(&state, "text/javascript; charset=utf-8", JS)
}

fn asset(state: &ConsoleState, content_type: &str, body: &'static str) -> HttpResponse {
    if !state.enabled() {
        return HttpResponse::NotFound().finish();
    }
    let mut r = HttpResponse::Ok();
    security::headers(&mut r);
    r.insert_header(("Content-Type", content_type)).insert_header(("Cache-Control", "no-cache"));
    r.body(body)
}
