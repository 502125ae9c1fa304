//! `POST /pay/notify/v2` and `POST /pay/notify/v3`: extract, verify with `crate::pay`, hand a
//! verified success to the [`PaymentSink`], and answer in the form WeChat Pay expects. A route
//! exists only when its keys are configured. Every refused request is counted in
//! `kefu_refusals_total{endpoint="pay_v2"|"pay_v3"}` when metrics are attached.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use anyhow::Context as _;

use crate::config::PayConfig;
use crate::metrics::Metrics;
use crate::model::{SharedClock, SystemClock};
use crate::pay::v2::{self, V2Verifier};
use crate::pay::v3::{self, PlatformKey, V3Headers, V3Verifier};
use crate::pay::{MAX_NOTIFY_BYTES, Outcome, PayError, Refusal};
use crate::pipeline::PaymentSink;

pub const V2_PATH: &str = "/pay/notify/v2";
pub const V3_PATH: &str = "/pay/notify/v3";

/// The notify routes the config enables, loaded once at startup: the v3 platform public key is
/// read and parsed here, so a bad one stops startup with the key name and the fix instead of
/// failing every notification. [`PayRoutes::register`] then mounts them in each worker.
///
/// The handlers read `web::Data<Arc<dyn PaymentSink>>` and, when present,
/// `web::Data<SharedClock>` (else the system clock) from app data.
#[derive(Clone, Default)]
pub struct PayRoutes {
    v2: Option<web::Data<V2Verifier>>,
    v3: Option<web::Data<V3Verifier>>,
    metrics: Option<web::Data<PayMetrics>>,
}

/// Where the notify routes count refusals (absent in tests that do not look).
struct PayMetrics(Arc<Metrics>);

impl PayRoutes {
    /// Counts refusals into `metrics` (`kefu_refusals_total`).
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(web::Data::new(PayMetrics(metrics)));
        self
    }
}

impl PayRoutes {
    pub fn from_config(pay_cfg: &PayConfig, max_skew_secs: u64) -> anyhow::Result<PayRoutes> {
        let mut routes = PayRoutes::default();
        if !pay_cfg.v2_api_key.is_empty() {
            routes.v2 = Some(web::Data::new(
                V2Verifier::new(pay_cfg.v2_api_key.clone()).with_sign_type(pay_cfg.v2_sign_type),
            ));
            tracing::info!(
                path = V2_PATH,
                sign_type = pay_cfg.v2_sign_type.as_str(),
                "WeChat Pay v2 notifications enabled"
            );
        }
        match (pay_cfg.v3_api_key.is_empty(), &pay_cfg.v3_platform_public_key) {
            (true, None) => {}
            (false, None) => anyhow::bail!(
                "`pay.v3_api_key` is set but `pay.v3_platform_public_key` is not: set it to the \
                 path of the WeChat Pay platform public key (PEM), or clear `pay.v3_api_key`"
            ),
            (true, Some(path)) => anyhow::bail!(
                "`pay.v3_platform_public_key` ({}) is set but `pay.v3_api_key` is not: set the \
                 32-byte APIv3 key from the merchant platform (API安全), or clear the key path",
                path.display()
            ),
            (false, Some(path)) => {
                let pem = std::fs::read_to_string(path).with_context(|| {
                    format!(
                        "cannot read `pay.v3_platform_public_key` ({}): point it to the WeChat \
                         Pay platform public key PEM downloaded from the merchant platform",
                        path.display()
                    )
                })?;
                let key = PlatformKey::from_pem(&pem).with_context(|| {
                    format!("`pay.v3_platform_public_key` ({}) is unusable", path.display())
                })?;
                routes.v3 = Some(web::Data::new(V3Verifier::new(
                    key,
                    pay_cfg.v3_api_key.clone(),
                    max_skew_secs,
                )));
                tracing::info!(
                    path = V3_PATH,
                    max_skew_secs,
                    "WeChat Pay v3 notifications enabled"
                );
            }
        }
        Ok(routes)
    }

    /// Mounts the enabled routes (cheap: the verifiers are shared).
    pub fn register(&self, cfg: &mut web::ServiceConfig) {
        if let Some(verifier) = &self.v2 {
            let mut r = web::resource(V2_PATH).app_data(verifier.clone());
            if let Some(m) = &self.metrics {
                r = r.app_data(m.clone());
            }
            cfg.service(r.route(web::post().to(notify_v2)));
        }
        if let Some(verifier) = &self.v3 {
            let mut r = web::resource(V3_PATH).app_data(verifier.clone());
            if let Some(m) = &self.metrics {
                r = r.app_data(m.clone());
            }
            cfg.service(r.route(web::post().to(notify_v3)));
        }
    }
}

/// Loads and mounts in one step (a single-worker app, tests).
pub fn configure(
    cfg: &mut web::ServiceConfig,
    pay_cfg: &PayConfig,
    max_skew_secs: u64,
) -> anyhow::Result<()> {
    PayRoutes::from_config(pay_cfg, max_skew_secs)?.register(cfg);
    Ok(())
}

fn refusal_status(e: &PayError) -> StatusCode {
    match e.refusal() {
        Refusal::Unauthenticated => StatusCode::UNAUTHORIZED,
        Refusal::BadRequest => StatusCode::BAD_REQUEST,
        Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
    }
}

fn now_ms(req: &HttpRequest) -> i64 {
    use crate::model::Clock as _;
    match req.app_data::<web::Data<SharedClock>>() {
        Some(c) => c.now_ms(),
        None => SystemClock.now_ms(),
    }
}

fn peer(req: &HttpRequest) -> String {
    req.peer_addr().map(|a| a.ip().to_string()).unwrap_or_default()
}

/// What happened to a verified notification, for the answer.
enum Handled {
    Ok,
    SinkFailed,
}

/// Hands a verified outcome to the sink. A sink error is ours, not the sender's: it gets a
/// 5xx so WeChat Pay delivers again later.
async fn handle(req: &HttpRequest, version: &'static str, outcome: Outcome) -> Handled {
    match outcome {
        Outcome::NotPaid { transaction_id, reason } => {
            tracing::info!(
                version,
                transaction_id = transaction_id.as_deref().unwrap_or(""),
                reason,
                "pay notification acknowledged, not a successful payment"
            );
            Handled::Ok
        }
        Outcome::Paid(p) => {
            let Some(sink) = req.app_data::<web::Data<Arc<dyn PaymentSink>>>() else {
                tracing::error!(
                    version,
                    "no PaymentSink registered in app data; payment not recorded (a wiring bug)"
                );
                return Handled::SinkFailed;
            };
            match sink.on_payment(&p, now_ms(req)).await {
                Ok(new) => {
                    tracing::info!(
                        version,
                        transaction_id = p.transaction_id,
                        out_trade_no = p.out_trade_no,
                        openid = %p.openid,
                        amount_fen = p.amount_fen,
                        new,
                        "payment notification verified"
                    );
                    Handled::Ok
                }
                Err(e) => {
                    tracing::error!(
                        version,
                        transaction_id = p.transaction_id,
                        error = format!("{e:#}"),
                        "payment verified but not recorded; answering 500 so WeChat Pay retries"
                    );
                    Handled::SinkFailed
                }
            }
        }
    }
}

fn xml(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status).content_type("text/xml; charset=utf-8").body(body)
}

fn json(status: StatusCode, body: String) -> HttpResponse {
    HttpResponse::build(status).content_type("application/json").body(body)
}

/// Reads the body up to [`MAX_NOTIFY_BYTES`] ([`super::read_capped`]), so an oversized body
/// is refused like any other bad notification: with the version's FAIL answer, logged and
/// counted.
async fn read_body(req: &HttpRequest, payload: web::Payload) -> Result<web::Bytes, PayError> {
    super::read_capped(req, payload, MAX_NOTIFY_BYTES).await.map_err(|e| match e {
        super::BodyError::TooLarge { len } => PayError::TooLarge { len, max: MAX_NOTIFY_BYTES },
        super::BodyError::Read(e) => PayError::Malformed(format!("could not read the body: {e}")),
    })
}

/// Counts one refusal at `endpoint` when metrics are attached.
fn count_refusal(req: &HttpRequest, endpoint: &str, reason: &str) {
    if let Some(m) = req.app_data::<web::Data<PayMetrics>>() {
        m.0.refusal(endpoint, reason);
    }
}

/// Logs, counts and answers a refused notification.
fn refused(req: &HttpRequest, version: &'static str, serial: &str, e: &PayError) -> StatusCode {
    tracing::warn!(version, peer = peer(req), serial, reason = %e, "pay notification refused");
    count_refusal(req, if version == "v2" { "pay_v2" } else { "pay_v3" }, e.reason());
    refusal_status(e)
}

async fn notify_v2(
    req: HttpRequest,
    payload: web::Payload,
    verifier: web::Data<V2Verifier>,
) -> HttpResponse {
    let verified = match read_body(&req, payload).await {
        Ok(body) => verifier.verify_with_sign_type(&body),
        Err(e) => Err(e),
    };
    match verified {
        Err(e) => xml(refused(&req, "v2", "", &e), v2::fail_answer(e.short())),
        Ok((outcome, sign_type)) => {
            tracing::debug!(
                version = "v2",
                sign_type = sign_type.as_str(),
                "pay notification sign verified"
            );
            match handle(&req, "v2", outcome).await {
                Handled::Ok => xml(StatusCode::OK, v2::SUCCESS_ANSWER.to_string()),
                Handled::SinkFailed => {
                    count_refusal(&req, "pay_v2", "unavailable");
                    xml(StatusCode::INTERNAL_SERVER_ERROR, v2::fail_answer("try again later"))
                }
            }
        }
    }
}

async fn notify_v3(
    req: HttpRequest,
    payload: web::Payload,
    verifier: web::Data<V3Verifier>,
) -> HttpResponse {
    let header = |name: &str| {
        req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_string()
    };
    let headers = V3Headers {
        timestamp: header("Wechatpay-Timestamp"),
        nonce: header("Wechatpay-Nonce"),
        signature: header("Wechatpay-Signature"),
        serial: Some(header("Wechatpay-Serial")).filter(|s| !s.is_empty()),
    };
    let verified = match read_body(&req, payload).await {
        Ok(body) => verifier.verify(&headers, &body, now_ms(&req).div_euclid(1000)),
        Err(e) => Err(e),
    };
    match verified {
        Err(e) => {
            let serial = headers.serial.as_deref().unwrap_or("");
            json(refused(&req, "v3", serial, &e), v3::fail_answer(e.short()))
        }
        Ok(outcome) => match handle(&req, "v3", outcome).await {
            Handled::Ok => json(StatusCode::OK, v3::SUCCESS_ANSWER.to_string()),
            Handled::SinkFailed => {
                count_refusal(&req, "pay_v3", "unavailable");
                json(StatusCode::INTERNAL_SERVER_ERROR, v3::fail_answer("try again later"))
            }
        },
    }
}
