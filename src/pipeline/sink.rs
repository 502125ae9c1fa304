//! The contracts the HTTP layer calls: where a verified push ([`PushSink`]) and a verified
//! payment ([`PaymentSink`]) go. The pipeline implements both; the HTTP layer knows only these
//! traits, so its handlers can be tested with stand-ins ([`AckOnly`]).

use crate::model::PassiveReply;
use crate::pay::Payment;
use crate::wechat::webhook::Opened;

/// Where verified pushes go. The pipeline implements it; `AckOnly` is the stand-in.
#[async_trait::async_trait]
pub trait PushSink: Send + Sync + 'static {
    /// Records the push durably and decides the answer. Err => 503 so WeChat redelivers.
    async fn accept(
        &self,
        opened: &Opened,
        received_at_ms: i64,
    ) -> anyhow::Result<Option<PassiveReply>>;
}

/// Acknowledges every push with `success` and keeps nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct AckOnly;

#[async_trait::async_trait]
impl PushSink for AckOnly {
    async fn accept(&self, _: &Opened, _: i64) -> anyhow::Result<Option<PassiveReply>> {
        Ok(None)
    }
}

/// Where verified payments go (the pipeline: durable record, `payment` grant, payment rules).
#[async_trait::async_trait]
pub trait PaymentSink: Send + Sync + 'static {
    /// Records a verified successful payment (idempotent by transaction id) and opens the payer's
    /// payment grant / fires payment rules. Ok(true) = new, Ok(false) = already seen.
    async fn on_payment(&self, payment: &Payment, received_at_ms: i64) -> anyhow::Result<bool>;
}

/// Routes a verified payment to the account its `appid` names (interface §10: one merchant's
/// notifications may cover several Official Accounts). With one account every payment goes
/// to it (whose pipeline acknowledges another app's payment without opening a window); with
/// several, a payment of an AppID no account has, or without one (a pay-cell payment names
/// none), is acknowledged with a warning and opens nothing: an OpenID belongs to one account,
/// and guessing would open a window on the wrong one.
pub struct PaymentRouter {
    accounts: Vec<(String, std::sync::Arc<dyn PaymentSink>)>,
}

impl PaymentRouter {
    /// `accounts`: each account's `wechat.app_id` (may be empty in dry-run) and pipeline.
    pub fn new<S: PaymentSink>(accounts: Vec<(String, std::sync::Arc<S>)>) -> PaymentRouter {
        PaymentRouter {
            accounts: accounts
                .into_iter()
                .map(|(a, s)| (a, s as std::sync::Arc<dyn PaymentSink>))
                .collect(),
        }
    }
}

#[async_trait::async_trait]
impl PaymentSink for PaymentRouter {
    async fn on_payment(&self, payment: &Payment, received_at_ms: i64) -> anyhow::Result<bool> {
        let target = match &self.accounts[..] {
            [(_, only)] => Some(only),
            several => payment.appid.as_deref().and_then(|appid| {
                several.iter().find(|(a, _)| !a.is_empty() && a == appid).map(|(_, s)| s)
            }),
        };
        match target {
            Some(sink) => sink.on_payment(payment, received_at_ms).await,
            None => {
                tracing::warn!(
                    appid = payment.appid.as_deref().unwrap_or("(none)"),
                    transaction_id = %payment.transaction_id,
                    "payment for an AppID no configured account has; acknowledged, no window \
                     opened (set that account's app_id to route its payments)"
                );
                Ok(false)
            }
        }
    }
}
