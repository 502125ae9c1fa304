//! The admin API's kf-account and send routes (interface §3), and the bearer-token check every
//! `/admin/*` route shares ([`require_admin`]). Handlers only authenticate, parse, call the
//! [`ApiClient`] and map errors: WeChat errors become `{errcode, errmsg, meaning, remedy}` with
//! 502, bad input 400.

use actix_web::http::StatusCode;
use actix_web::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::{ApiClient, ApiError, SendBody};
use crate::config::Config;
use crate::model::{KfAccount, Secret};

/// The admin token (and what the routes need to read account names), shared as
/// `web::Data<AdminAuth>`. An empty token turns the admin API off: every route answers 404.
pub struct AdminAuth {
    token: Secret,
    /// SHA-256 of the token: comparing digests in constant time hides the token's length too.
    digest: [u8; 32],
    /// Completes a bare kf prefix in a path (`wechat.account_id`).
    account_id: String,
}

impl AdminAuth {
    pub fn new(token: Secret) -> AdminAuth {
        let digest = Sha256::digest(token.expose().as_bytes()).into();
        AdminAuth { token, digest, account_id: String::new() }
    }

    /// `admin.token`, and `wechat.account_id` for kf account names.
    pub fn from_config(cfg: &Config) -> AdminAuth {
        Self::new(cfg.admin.token.clone()).with_account_id(&cfg.wechat.account_id)
    }

    pub fn with_account_id(mut self, account_id: &str) -> AdminAuth {
        self.account_id = account_id.to_string();
        self
    }

    pub fn enabled(&self) -> bool {
        !self.token.is_empty()
    }

    /// Whether an `Authorization` header value carries the admin token.
    pub fn accepts(&self, authorization: Option<&str>) -> bool {
        let Some(given) = authorization.and_then(bearer) else { return false };
        let d: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        self.enabled() && bool::from(d.ct_eq(&self.digest))
    }

    fn kf(&self, s: &str) -> Result<KfAccount, AdminError> {
        KfAccount::parse_with(s, Some(&self.account_id))
            .map_err(|e| AdminError::BadRequest(e.to_string()))
    }
}

fn bearer(h: &str) -> Option<&str> {
    let (scheme, rest) = h.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim()).filter(|t| !t.is_empty())
}

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("the admin API is off: set admin.token (KEFU_ADMIN_TOKEN) to enable it")]
    Off,
    #[error("missing or wrong bearer token: send Authorization: Bearer <admin.token>")]
    Unauthorized,
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Api(#[from] ApiError),
}

impl ResponseError for AdminError {
    fn status_code(&self) -> StatusCode {
        match self {
            AdminError::Off => StatusCode::NOT_FOUND,
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Api(e) => match e {
                ApiError::Invalid(_) => StatusCode::BAD_REQUEST,
                ApiError::NoCredentials | ApiError::Cache(_) => StatusCode::SERVICE_UNAVAILABLE,
                ApiError::Ambiguous { .. } => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::BAD_GATEWAY,
            },
        }
    }

    fn error_response(&self) -> HttpResponse {
        let mut resp = HttpResponse::build(self.status_code());
        if matches!(self, AdminError::Unauthorized) {
            resp.insert_header((WWW_AUTHENTICATE, "Bearer"));
        }
        let body = match self {
            AdminError::Api(e) => {
                let errmsg = match e {
                    ApiError::Api { errmsg, .. } => errmsg.clone(),
                    other => other.to_string(),
                };
                json!({
                    "error": e.to_string(),
                    "errcode": e.errcode(),
                    "errmsg": errmsg,
                    "meaning": e.meaning(),
                    "remedy": e.remedy(),
                })
            }
            other => json!({ "error": other.to_string() }),
        };
        resp.json(body)
    }
}

/// The shared `/admin/*` check: 404 when the admin API is off (or not wired), 401 unless the
/// request carries `Authorization: Bearer <admin.token>` (compared in constant time).
pub fn require_admin(req: &HttpRequest) -> Result<(), actix_web::Error> {
    check(req).map(drop).map_err(actix_web::Error::from)
}

fn check(req: &HttpRequest) -> Result<&AdminAuth, AdminError> {
    let auth = req.app_data::<web::Data<AdminAuth>>().ok_or(AdminError::Off)?;
    if !auth.enabled() {
        return Err(AdminError::Off);
    }
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if auth.accepts(header) { Ok(auth.get_ref()) } else { Err(AdminError::Unauthorized) }
}

/// Registers `GET/POST /admin/kf/accounts`, `POST /admin/kf/accounts/{kf_account}/invite`,
/// `DELETE /admin/kf/accounts/{kf_account}` and `POST /admin/send`. Needs
/// `web::Data<ApiClient>` and `web::Data<AdminAuth>` in the app.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/admin/kf/accounts")
            .route(web::get().to(list_accounts))
            .route(web::post().to(add_account)),
    )
    .service(web::resource("/admin/kf/accounts/{kf_account}/invite").route(web::post().to(invite)))
    .service(web::resource("/admin/kf/accounts/{kf_account}").route(web::delete().to(delete)))
    .service(web::resource("/admin/send").route(web::post().to(send)));
}

fn json_body(body: &[u8]) -> Result<Value, AdminError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| AdminError::BadRequest(format!("the body is not valid JSON: {e}")))?;
    if v.is_object() {
        Ok(v)
    } else {
        Err(AdminError::BadRequest("the body must be a JSON object".into()))
    }
}

fn field<'a>(v: &'a Value, name: &str) -> Result<&'a str, AdminError> {
    v.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| AdminError::BadRequest(format!("the body needs a string \"{name}\"")))
}

fn ok(extra: Value) -> HttpResponse {
    let mut body = json!({"errcode": 0, "errmsg": "ok"});
    if let (Some(b), Value::Object(e)) = (body.as_object_mut(), extra) {
        b.extend(e);
    }
    HttpResponse::Ok().json(body)
}

async fn list_accounts(
    req: HttpRequest,
    api: web::Data<ApiClient>,
) -> Result<HttpResponse, AdminError> {
    check(&req)?;
    let list = api.list_accounts().await?;
    Ok(HttpResponse::Ok().json(json!({ "kf_list": list })))
}

async fn add_account(
    req: HttpRequest,
    api: web::Data<ApiClient>,
    body: web::Bytes,
) -> Result<HttpResponse, AdminError> {
    let auth = check(&req)?;
    let v = json_body(&body)?;
    let kf = auth.kf(field(&v, "kf_account")?)?;
    api.add_account(&kf, field(&v, "nickname")?).await?;
    Ok(ok(json!({ "kf_account": kf.as_str() })))
}

async fn invite(
    req: HttpRequest,
    api: web::Data<ApiClient>,
    path: web::Path<String>,
    body: web::Bytes,
) -> Result<HttpResponse, AdminError> {
    let auth = check(&req)?;
    let kf = auth.kf(&path)?;
    let v = json_body(&body)?;
    let invite_wx = field(&v, "invite_wx")?;
    api.invite_worker(&kf, invite_wx).await?;
    Ok(ok(json!({ "kf_account": kf.as_str(), "invite_wx": invite_wx.trim() })))
}

async fn delete(
    req: HttpRequest,
    api: web::Data<ApiClient>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let auth = check(&req)?;
    let kf = auth.kf(&path)?;
    api.delete_account(&kf).await?;
    Ok(ok(json!({ "kf_account": kf.as_str() })))
}

/// What a dry-run send answers; `{}` is "MSGTYPE to OPENID".
const DRY_RUN: &str = "dry-run: would send {}; not sent: no wechat.app_id/app_secret configured";

/// Parses and checks a `/admin/send` body, once.
pub fn parse_send(body: &[u8]) -> Result<SendBody, AdminError> {
    SendBody::parse(json_body(body)?).map_err(|e| AdminError::BadRequest(e.to_string()))
}

#[derive(serde::Deserialize)]
struct SendQuery {
    #[serde(default)]
    force: bool,
}

/// `POST /admin/send[?force=true]`: a complete `custom/send` body, sent through the window
/// gate: charged to the follower's ledger, refused with 409 when the window does not allow it
/// (unless forced). In dry-run (no app_id/app_secret) it is gated and charged the same and
/// answered 200 `{"dry_run": true, "sent": false, "touser", "msgtype", "charged", "message"}`.
async fn send(
    req: HttpRequest,
    api: web::Data<ApiClient>,
    store: web::Data<std::sync::Arc<dyn crate::store::Store>>,
    clock: web::Data<crate::model::SharedClock>,
    query: web::Query<SendQuery>,
    body: web::Bytes,
) -> Result<HttpResponse, AdminError> {
    use crate::pipeline::gate::{GateError, GateMode, Gated, send_logged};
    check(&req)?;
    let body = parse_send(&body)?;
    let openid = body.to();
    let mode = if query.force { GateMode::Force } else { GateMode::Enforce };
    match send_logged(store.as_ref().as_ref(), &api, &body, mode, clock.now_ms()).await {
        Ok(Gated::Sent { charged }) => Ok(ok(json!({
            "touser": openid.as_str(),
            "charged": charged.map(|t| t.as_str()),
            "dry_run": false,
        }))),
        // Not WeChat's answer, so no errcode: a client must not mistake it for a delivery.
        Ok(Gated::DryRun { charged }) => {
            let msgtype = body.msgtype();
            Ok(HttpResponse::Ok().json(json!({
                "dry_run": true,
                "sent": false,
                "touser": openid.as_str(),
                "msgtype": msgtype,
                "charged": charged.map(|t| t.as_str()),
                "message": crate::http::accounts::keys_for(&req, DRY_RUN)
                    .replacen("{}", &format!("{msgtype} to {openid}"), 1),
            })))
        }
        Ok(Gated::Refused(reason)) => Ok(HttpResponse::Conflict().json(json!({
            "error": format!("not sent: {reason}"),
            "touser": openid.as_str(),
            "remedy": "wait for the follower to interact, or add ?force=true to send anyway",
        }))),
        Err(GateError::Api(e)) => Err(AdminError::Api(e)),
        Err(GateError::Store(e)) => Ok(HttpResponse::ServiceUnavailable()
            .json(json!({ "error": format!("the window ledger is unavailable: {e}") }))),
    }
}

/// `GET /admin/windows/{openid}` behind the admin check ([`crate::http::windows`]).
pub async fn window(
    req: HttpRequest,
    path: web::Path<String>,
    store: web::Data<std::sync::Arc<dyn crate::store::Store>>,
    clock: web::Data<crate::model::SharedClock>,
) -> Result<HttpResponse, actix_web::Error> {
    require_admin(&req)?;
    Ok(crate::http::windows::window_handler(path, store, clock).await)
}

/// `POST /admin/rules/reload`: 200 with the rule count, or 422 with every error (the previous
/// rules stay active). Reads `web::Data<Arc<Rules>>`.
pub async fn reload(
    req: HttpRequest,
    rules: web::Data<std::sync::Arc<crate::rules::Rules>>,
) -> Result<HttpResponse, actix_web::Error> {
    require_admin(&req)?;
    let rules = rules.get_ref().clone();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_check() {
        let a = AdminAuth::new(Secret::new("0123456789abcdef0123"));
        assert!(a.accepts(Some("Bearer 0123456789abcdef0123")));
        assert!(a.accepts(Some("bearer  0123456789abcdef0123 ")));
        for bad in
            [None, Some(""), Some("Bearer"), Some("Bearer x"), Some("Basic 0123456789abcdef0123")]
        {
            assert!(!a.accepts(bad), "{bad:?}");
        }
        let off = AdminAuth::new(Secret::default());
        assert!(!off.enabled() && !off.accepts(Some("Bearer ")));
    }
}
