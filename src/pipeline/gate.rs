//! The window gate of manual sends: charge the follower's ledger, send, and let WeChat's answer
//! correct the ledger. `kefu send` and `POST /admin/send` go through [`send_gated`]; the sender
//! charges in the transaction that claims its outbox entry (`Store::claim_send`) and shares
//! [`feed_back`], so a manual send uses the same quota the bot does and WeChat's answer
//! corrects the ledger the same way.
//!
//! In dry-run (the client has no credentials, [`ApiClient::has_credentials`]) a manual send
//! is gated and charged exactly as for real, then logged instead of sent, as the sender does
//! for the bot's messages: a dry run shows what production would do, quota included.

use tracing::{info, warn};

use crate::api::{ApiClient, ApiError, SendBody};
use crate::model::{OpenId, Trigger};
use crate::store::{ChargeOutcome, DenyReason, Store, StoreError};

/// Whether a closed window stops the send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GateMode {
    Enforce,
    /// Send even when the ledger says no (`--force`, `?force=true`); still charged when it can be.
    Force,
}

#[derive(Debug)]
pub enum Gated {
    /// Sent; charged to this grant (None when forced past a closed window).
    Sent { charged: Option<Trigger> },
    /// Dry-run: charged like a send (same meaning of `charged`) and logged, not sent.
    DryRun { charged: Option<Trigger> },
    /// Not sent: the window does not allow it.
    Refused(DenyReason),
}

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Api(#[from] ApiError),
}

/// [`send_gated`], and the message recorded in the conversation log (interface §8.1) with
/// source `console` — a person's send from the console, the admin API or `kefu send` — when
/// it was sent (or dry-run) or WeChat refused it. A refusal by the window sends and records
/// nothing. `now_ms` is the time of the record.
pub async fn send_logged(
    store: &dyn Store,
    client: &ApiClient,
    body: &SendBody,
    mode: GateMode,
    now_ms: i64,
) -> Result<Gated, GateError> {
    use crate::convlog::{LogOutcome, LogRecord};
    let result = send_gated(store, client, body, mode, now_ms.div_euclid(1000)).await;
    let record = match &result {
        Ok(Gated::Sent { .. } | Gated::DryRun { .. }) => {
            Some(LogRecord::console(body, now_ms, LogOutcome::Sent, None))
        }
        Ok(Gated::Refused(_)) | Err(GateError::Store(_)) => None,
        Err(GateError::Api(e)) => {
            Some(LogRecord::console(body, now_ms, LogOutcome::Failed, Some(e.to_string())))
        }
    };
    if let Some(r) = record
        && let Err(e) = store.log_append(vec![r]).await
    {
        warn!(error = %e, "cannot record a manual send in the conversation log");
    }
    result
}

/// Charges the recipient's ledger, sends `body`, and feeds WeChat's answer back into the
/// ledger.
pub async fn send_gated(
    store: &dyn Store,
    client: &ApiClient,
    body: &SendBody,
    mode: GateMode,
    now: i64,
) -> Result<Gated, GateError> {
    let openid = body.to();
    let charged = match store.charge(openid, now).await? {
        ChargeOutcome::Allowed { trigger, opened_at } => Some((trigger, opened_at)),
        ChargeOutcome::Denied { reason } if mode == GateMode::Enforce => {
            return Ok(Gated::Refused(reason));
        }
        ChargeOutcome::Denied { .. } => None,
    };
    if !client.has_credentials() {
        info!(
            touser = %openid,
            msgtype = body.msgtype(),
            kf_account = body.kf_account(),
            charged = charged.map(|c| c.0.as_str()),
            "dry-run: would send (no wechat.app_id/app_secret configured)"
        );
        return Ok(Gated::DryRun { charged: charged.map(|c| c.0) });
    }
    match client.send(body).await {
        Ok(()) => Ok(Gated::Sent { charged: charged.map(|c| c.0) }),
        Err(e) => {
            feed_back(store, openid, charged, &e, now).await;
            Err(GateError::Api(e))
        }
    }
}

/// API outcomes correct the ledger, because WeChat's view of the window wins over ours: 45015
/// closes the window, 45047 exhausts it, an outright refusal gives the charge back, and an
/// ambiguous failure keeps it (WeChat may have delivered and counted the message).
pub async fn feed_back(
    store: &dyn Store,
    openid: &OpenId,
    charged: Option<(Trigger, i64)>,
    e: &ApiError,
    now: i64,
) {
    let r = match (e.errcode(), charged) {
        (Some(45015), _) => store.close_window(openid).await,
        (Some(45047), _) => store.exhaust_window(openid, now).await,
        _ if e.is_ambiguous() => Ok(()),
        (_, Some((trigger, opened_at))) => store.refund(openid, trigger, opened_at).await.map(drop),
        (_, None) => Ok(()),
    };
    if let Err(err) = r {
        warn!(error = %err, openid = %openid, "cannot update the ledger after a send error");
    }
}
