//! Which account an admin or console request is about (interface §10: `?account=NAME`).
//!
//! Every account has its own store, API client, rules and kf-account domain; the handlers of
//! `/admin/*` and `/console*` read those from app data (`web::Data<Arc<dyn Store>>`,
//! `web::Data<ApiClient>`, …) and never learn that there are several. [`select`] — mounted on
//! the whole app with `middleware::from_fn` — reads `?account=` and puts that account's app
//! data in front of the app's, the way an actix scope's own data shadows the app's. With one
//! account the parameter may be left out; with several it is required on `/admin/*` (400
//! naming it, after the admin check, so the names are only shown to the admin), and on the
//! console a page without it shows the first account (the switcher links carry it; a form
//! posted without it is refused, so a reply never lands on the wrong account — signing in
//! and out excepted, which act on no account).

use std::rc::Rc;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{Extensions, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, web};
use serde_json::json;

/// What a handler may read about the account of its request: its name, the kf-account domain
/// (`wechat.account_id`), and the configured names (for the console's switcher).
#[derive(Clone, Debug)]
pub struct AccountChoice {
    /// The account's name (`default` for the `[wechat]` account).
    pub name: String,
    /// Its `wechat.account_id`: completes a bare kf prefix to `prefix@account_id`.
    pub account_id: String,
    /// Every configured account's name, in order.
    pub all: Arc<Vec<String>>,
    /// It is an `[accounts.NAME]` table: messages name its keys `accounts.NAME.*`.
    pub named: bool,
}

impl AccountChoice {
    /// Whether several accounts are configured (pages then show the switcher and carry
    /// `?account=` in every link and form).
    pub fn several(&self) -> bool {
        self.all.len() > 1
    }

    /// `text` with the `[wechat]` keys it names written as this account's
    /// ([`crate::config::accounts::in_account`]).
    pub fn keys_in<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        crate::config::accounts::in_account(text, self.named.then_some(self.name.as_str()))
    }

    /// `?account=NAME` (URL-safe: names are `[a-z0-9_-]+`) with several accounts, else "".
    pub fn query(&self) -> String {
        if self.several() { format!("?account={}", self.name) } else { String::new() }
    }
}

/// `text` with the `[wechat]` keys it names written as the keys of `req`'s account (as it is
/// when the request has none, or its account is the `[wechat]` one): for the answers of
/// handlers that are not errors (a dry-run send), which [`select`] leaves as they are.
pub fn keys_for<'a>(req: &actix_web::HttpRequest, text: &'a str) -> std::borrow::Cow<'a, str> {
    match req.app_data::<web::Data<AccountChoice>>() {
        Some(c) => c.keys_in(text),
        None => text.into(),
    }
}

/// One account's app data: what the account middleware puts in front of the app's for its
/// requests. `insert` is called once per server worker (app data lives in a worker's
/// `Rc<Extensions>`), with `web::Data` values that share the account's `Arc`s.
#[derive(Clone)]
pub struct AccountData {
    pub choice: AccountChoice,
    pub insert: Arc<dyn Fn(&mut Extensions) + Send + Sync>,
}

/// The accounts' app data, one container per account, built for one worker.
pub struct Containers(Vec<(String, Rc<Extensions>)>);

impl Containers {
    pub fn build(accounts: &[AccountData]) -> Containers {
        Containers(
            accounts
                .iter()
                .map(|a| {
                    let mut ext = Extensions::new();
                    (a.insert)(&mut ext);
                    ext.insert(web::Data::new(a.choice.clone()));
                    (a.choice.name.clone(), Rc::new(ext))
                })
                .collect(),
        )
    }

    fn names(&self) -> String {
        self.0.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
    }
}

/// The value of `account` in a query string, if present (percent-decoded; an empty value is
/// absent).
pub(crate) fn account_param(query: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "account")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

/// The console forms that act on no account: signing in (whose page names no account to a
/// visitor) and signing out.
fn acts_on_none(path: &str) -> bool {
    path == "/console/login" || path == "/console/logout"
}

/// The middleware: for `/admin/*` and `/console*`, resolves the account and adds its app data
/// to the request; everything else (the webhooks, health, metrics, pay) passes untouched.
pub async fn select(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let path = req.path();
    let admin = path.starts_with("/admin/");
    if !(admin || path == "/console" || path.starts_with("/console/")) {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    // A server built without accounts (tests of single routes) reads the app's own data.
    let Some(containers) = req.app_data::<Rc<Containers>>().filter(|c| !c.0.is_empty()).cloned()
    else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let asked = account_param(req.query_string());
    let found = match &asked {
        Some(name) => containers.0.iter().find(|(n, _)| n == name),
        None if containers.0.len() == 1 => containers.0.first(),
        // The console shows the first account until one is chosen; a form is never guessed,
        // except signing in and out, which act on no account.
        None if !admin && (req.method() == actix_web::http::Method::GET || acts_on_none(path)) => {
            containers.0.first()
        }
        None => None,
    };
    match found {
        Some((_, ext)) => {
            let choice = ext.get::<web::Data<AccountChoice>>().cloned();
            req.add_data_container(ext.clone());
            let res = next.call(req).await?;
            match choice.filter(|c| admin && c.named) {
                Some(c) if res.status().as_u16() >= 400 => keys_in_error(res, &c).await,
                _ => Ok(res.map_into_boxed_body()),
            }
        }
        None if !admin => {
            // The console names no account to a visitor who may not be signed in.
            let resp = match asked {
                Some(_) => HttpResponse::NotFound()
                    .content_type("text/plain; charset=utf-8")
                    .body("no such account: choose one in the console's account switcher"),
                None => HttpResponse::BadRequest()
                    .content_type("text/plain; charset=utf-8")
                    .body("several accounts are configured: this form needs ?account=NAME"),
            };
            Ok(req.into_response(resp).map_into_boxed_body())
        }
        None => {
            // Unauthenticated callers get the admin check's own answer (401/404), not the
            // list of account names.
            if let Err(e) = crate::http::admin::require_admin(req.request()) {
                return Ok(req.error_response(e).map_into_boxed_body());
            }
            let names = containers.names();
            let resp = match asked {
                Some(name) => HttpResponse::NotFound().json(json!({
                    "error": format!(
                        "no account named {name:?}; the configured accounts are {names}"
                    ),
                })),
                None => HttpResponse::BadRequest().json(json!({
                    "error": format!(
                        "several accounts are configured ({names}): add ?account=NAME to say \
                         which one this request is for"
                    ),
                })),
            };
            Ok(req.into_response(resp).map_into_boxed_body())
        }
    }
}

/// An admin error of a named account, its `[wechat]` key names (from the layers below the
/// configuration: the API client's remedies, say) written as the account's. Error bodies are
/// small JSON built by kefu: they carry no follower text that the renaming could change.
async fn keys_in_error<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
    choice: &AccountChoice,
) -> Result<ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    use actix_web::body::BodySize;
    if !matches!(res.response().body().size(), BodySize::Sized(n) if n <= 64 * 1024) {
        return Ok(res.map_into_boxed_body());
    }
    let (req, res) = res.into_parts();
    let (head, body) = res.into_parts();
    let bytes = match actix_web::body::to_bytes(body).await {
        Ok(b) => b,
        Err(_) => {
            return Ok(ServiceResponse::new(req, head.set_body(Vec::new()).map_into_boxed_body()));
        }
    };
    let text = String::from_utf8_lossy(&bytes);
    let body = choice.keys_in(&text).into_owned();
    Ok(ServiceResponse::new(req, head.set_body(body).map_into_boxed_body()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parameter_is_decoded_and_empty_is_absent() {
        assert_eq!(account_param("account=shop&force=true").as_deref(), Some("shop"));
        assert_eq!(account_param("force=true&account=caf%65").as_deref(), Some("cafe"));
        assert_eq!(account_param("account="), None);
        assert_eq!(account_param(""), None);
    }
}
