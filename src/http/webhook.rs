//! `GET|POST {server.path}` (interface §3, §6.3–§6.4): the handshake, and pushes verified,
//! decrypted and decoded by `wechat::webhook`, handed to a `PushSink`, answered with `success`
//! or a passive reply (sealed for the push's mode). No outbound I/O happens here; bad input is
//! never a 5xx, and every refusal is logged with its reason.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::model::SharedClock;
use crate::pipeline::PushSink;
use crate::wechat::reply;
use crate::wechat::webhook::{self, Keys, PushError, Query};

/// What the webhook routes share.
pub struct WebhookState {
    keys: Keys,
    sink: Arc<dyn PushSink>,
    max_body_bytes: usize,
    clock: SharedClock,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// NAME of the `[accounts.NAME]` this webhook serves: refusals then name its keys
    /// (`accounts.NAME.token`, not `wechat.token`) and the account.
    account: Option<String>,
}

impl WebhookState {
    pub fn new(
        keys: Keys,
        sink: Arc<dyn PushSink>,
        max_body_bytes: usize,
        clock: SharedClock,
    ) -> Self {
        WebhookState { keys, sink, max_body_bytes, clock, metrics: None, account: None }
    }

    /// The webhook of `[accounts.NAME]` (None: the `[wechat]` account).
    pub fn for_account(mut self, name: Option<String>) -> Self {
        self.account = name;
        self
    }

    /// Counts refusals and answer latency into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }
}

/// Why a push was refused, carried on the response so the metrics see every refusal path.
#[derive(Clone, Copy)]
struct Refusal(&'static str);

/// Mounts the handshake and the push endpoint at `path`.
pub fn configure(
    path: &str,
    state: web::Data<WebhookState>,
) -> impl FnOnce(&mut web::ServiceConfig) + use<> {
    let path = path.to_string();
    move |cfg| {
        cfg.service(
            web::resource(path)
                .app_data(state)
                .route(web::get().to(handshake))
                .route(web::post().to(push)),
        );
    }
}

fn query(req: &HttpRequest) -> Result<Query, HttpResponse> {
    web::Query::<Query>::from_query(req.query_string()).map(web::Query::into_inner).map_err(|e| {
        tracing::warn!(status = 400, reason = "bad_query", error = %e, "webhook request refused");
        refused(plain(StatusCode::BAD_REQUEST, "malformed query string"), "bad_query")
    })
}

/// Marks `resp` as a refusal for `reason`, so the metrics count it.
fn refused(mut resp: HttpResponse, reason: &'static str) -> HttpResponse {
    resp.extensions_mut().insert(Refusal(reason));
    resp
}

/// Counts a refused answer in `kefu_refusals_total{endpoint="webhook"}`. Every refusal path of
/// GET and POST goes through here: a refusal the handler did not label is counted by its
/// status class, so no path can go uncounted.
fn count_refusal(state: &WebhookState, resp: &HttpResponse) {
    let Some(m) = &state.metrics else { return };
    if let Some(Refusal(reason)) = resp.extensions().get::<Refusal>().copied() {
        m.refusal(ENDPOINT, reason);
    } else if !resp.status().is_success() {
        m.refusal(
            ENDPOINT,
            if resp.status().is_server_error() { "unavailable" } else { "bad_request" },
        );
    }
}

/// The `endpoint` label of this route's refusals.
const ENDPOINT: &str = "webhook";

fn plain(status: StatusCode, body: impl Into<String>) -> HttpResponse {
    HttpResponse::build(status).content_type("text/plain; charset=utf-8").body(body.into())
}

/// Logs a refusal and answers it. The body names the cause (with the keys as the operator
/// wrote them: an account's are `accounts.NAME.*`) but carries nothing secret.
fn refuse(state: &WebhookState, e: &PushError, q: Option<&Query>) -> HttpResponse {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let openid = q.and_then(|q| q.openid.as_deref()).unwrap_or("");
    let message =
        crate::config::accounts::in_account(&e.to_string(), state.account.as_deref()).into_owned();
    tracing::warn!(status = e.status(), reason = e.reason(), error = %message, openid, "push refused");
    refused(plain(status, message), e.reason())
}

async fn handshake(req: HttpRequest, state: web::Data<WebhookState>) -> HttpResponse {
    let resp = handshake_inner(&req, &state);
    count_refusal(&state, &resp);
    resp
}

fn handshake_inner(req: &HttpRequest, state: &WebhookState) -> HttpResponse {
    let q = match query(req) {
        Ok(q) => q,
        Err(resp) => return resp,
    };
    match webhook::handshake(&state.keys, &q) {
        Ok(echostr) => {
            tracing::info!("handshake verified");
            plain(StatusCode::OK, echostr)
        }
        Err(e) => refuse(state, &e, Some(&q)),
    }
}

async fn push(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<WebhookState>,
) -> HttpResponse {
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let span = tracing::info_span!(
        "push",
        account = state.account.as_deref(),
        openid = tracing::field::Empty,
        kind = tracing::field::Empty,
        status = tracing::field::Empty
    );
    let resp = push_inner(req, payload, state.clone()).instrument(span.clone()).await;
    span.record("status", resp.status().as_u16());
    if let Some(m) = &state.metrics {
        m.answer_seconds.observe(started.elapsed().as_secs_f64());
    }
    count_refusal(&state, &resp);
    resp
}

async fn push_inner(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<WebhookState>,
) -> HttpResponse {
    let received_at_ms = state.clock.now_ms();
    let q = match query(&req) {
        Ok(q) => q,
        Err(resp) => return resp,
    };
    let body = match super::read_capped(&req, payload, state.max_body_bytes).await {
        Ok(body) => body,
        Err(super::BodyError::TooLarge { .. }) => {
            return refuse(&state, &PushError::TooLarge(state.max_body_bytes), Some(&q));
        }
        Err(super::BodyError::Read(e)) => {
            tracing::warn!(status = 400, reason = "body_read", error = %e, "push refused");
            return refused(
                plain(StatusCode::BAD_REQUEST, "could not read the request body"),
                "body_read",
            );
        }
    };

    let now_secs = received_at_ms.div_euclid(1000);
    let opened = match webhook::open(&state.keys, &q, &body, now_secs) {
        Ok(o) => o,
        Err(e) => return refuse(&state, &e, Some(&q)),
    };
    let p = &opened.push;
    let span = tracing::Span::current();
    span.record("openid", p.from.as_str());
    span.record("kind", p.event().unwrap_or(p.msg_type.as_str()));
    if let crate::wechat::inbound::PushKind::Unknown { msg_type, event, .. } = &p.kind {
        tracing::info!(msg_type, event = event.as_deref().unwrap_or(""), from = %p.from,
            "push of a kind this version does not model; acknowledged");
    }
    // One info line per push is the pipeline's "push recorded" (or a refusal/error); this one
    // is for following a push step by step.
    tracing::debug!(
        mode = opened.mode.as_str(),
        msg_type = %p.msg_type,
        event = p.event().unwrap_or(""),
        from = %p.from,
        key = %p.dedupe_key(),
        "push accepted"
    );

    let reply = match state.sink.accept(&opened, received_at_ms).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), key = %p.dedupe_key(),
                "could not record the push; answering 503 so WeChat redelivers it");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "temporarily unavailable");
        }
    };
    let Some(reply) = reply else { return plain(StatusCode::OK, "success") };
    match reply::render(&p.from, &p.to, now_secs, &reply) {
        Ok(xml) => HttpResponse::Ok()
            .content_type("application/xml; charset=utf-8")
            .body(webhook::seal(&state.keys, &opened, &xml)),
        Err(e) => {
            // A bug upstream, not bad input: WeChat still gets a valid answer.
            tracing::error!(error = %e, key = %p.dedupe_key(), "passive reply dropped");
            plain(StatusCode::OK, "success")
        }
    }
}
