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
