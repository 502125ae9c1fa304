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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// Records the transaction ids it was given.
    #[derive(Default)]
    struct Seen(Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl PaymentSink for Seen {
        async fn on_payment(&self, p: &Payment, _: i64) -> anyhow::Result<bool> {
            self.0.lock().unwrap().push(p.transaction_id.clone());
            Ok(true)
        }
    }

    fn paid(tx: &str, appid: Option<&str>) -> Payment {
        let openid = crate::model::OpenId::parse("oPayer000000000000000000001").unwrap();
        Payment {
            transaction_id: tx.into(),
            appid: appid.map(str::to_string),
            ..Payment::simulated(openid, None)
        }
    }

    #[tokio::test]
    async fn payments_go_to_the_account_of_their_appid() {
        let (shop, cafe) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
        let router = PaymentRouter::new(vec![
            ("wxshop".to_string(), shop.clone()),
            ("wxcafe".to_string(), cafe.clone()),
        ]);
        assert!(router.on_payment(&paid("t1", Some("wxcafe")), 0).await.unwrap());
        assert!(router.on_payment(&paid("t2", Some("wxshop")), 0).await.unwrap());
        // Another app's, or none (pay cell): acknowledged, given to no account.
        assert!(!router.on_payment(&paid("t3", Some("wxother")), 0).await.unwrap());
        assert!(!router.on_payment(&paid("t4", None), 0).await.unwrap());
        assert_eq!(*cafe.0.lock().unwrap(), ["t1"]);
        assert_eq!(*shop.0.lock().unwrap(), ["t2"]);
        // One account takes every payment (its pipeline judges the appid, as before).
        let only = Arc::new(Seen::default());
        let router = PaymentRouter::new(vec![(String::new(), only.clone())]);
        assert!(router.on_payment(&paid("t5", None), 0).await.unwrap());
        assert_eq!(*only.0.lock().unwrap(), ["t5"]);
    }
}
