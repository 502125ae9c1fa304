//! The push path (inside the request): decoded push -> rules -> one durable commit of dedupe
//! record, ledger grant, stored answer and planned outbox entries -> the answer. Nothing here
//! talks to WeChat; the [`sender`] drains the outbox afterwards.

pub mod gate;
pub mod intake;
pub mod sender;
pub mod sink;

pub use intake::Intake;
pub use sink::{AckOnly, PaymentSink, PushSink};

use std::sync::Arc;

use tokio::sync::Notify;
use tracing::{info, warn};

use crate::media::MediaFiles;
use crate::metrics::Metrics;
use crate::model::{OutboxAction, PassiveReply, PlannedAction, WindowEffect};
use crate::rules::Rules;
use crate::store::{CommitOutcome, NewOutboxEntry, PushCommit, Store};
use crate::wechat::webhook::Opened;

/// The outcome of [`Pipeline::process`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    pub fresh: bool,
    pub fired: Vec<String>,
    pub passive: Option<PassiveReply>,
    pub planned: usize,
}

pub struct Pipeline {
    store: Arc<dyn Store>,
    rules: Arc<Rules>,
    passive_first: bool,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
    /// The account's AppID: payments made through another app carry an OpenID this account
    /// cannot message, so they open nothing.
    app_id: String,
    /// Media files named in replies: ready ids replace their references (memory only).
    media: Option<Arc<MediaFiles>>,
}

impl Pipeline {
    pub fn new(
        store: Arc<dyn Store>,
        rules: Arc<Rules>,
        passive_first: bool,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Self {
        Pipeline { store, rules, passive_first, metrics, wake, app_id: String::new(), media: None }
    }

    pub fn with_app_id(mut self, app_id: &str) -> Self {
        self.app_id = app_id.to_string();
        self
    }

    /// Resolves the media files of replies from `media`'s ready ids (interface §9).
    pub fn with_media(mut self, media: Arc<MediaFiles>) -> Self {
        self.media = Some(media);
        self
    }

    /// Runs rules and commits everything the push changes in one durable step.
    pub async fn process(&self, intake: Intake) -> anyhow::Result<Processed> {
        let rules = self.rules.current();
        let mut eval = rules.evaluate(&intake.input);
        if let Some(media) = &self.media {
            media.settle(&mut eval.actions);
        }
        let fired = eval.fired.clone();
        let Plan { passive, planned, dropped } = plan(
            eval,
            self.passive_first && intake.passive_allowed,
            intake.effect,
            intake.transfer_allowed,
        );
        let answer = match &passive {
            Some(p) => Some(serde_json::to_string(p)?),
            None => None,
        };
        let outbox: Vec<NewOutboxEntry> = planned
            .into_iter()
            .enumerate()
            .map(|(seq, p)| NewOutboxEntry {
                rule: p.rule.clone(),
                seq: seq as u32,
                due_at_ms: intake.received_at_ms + p.delay.as_millis() as i64,
                action: p,
            })
            .collect();
        let n_planned = outbox.len();
        let outcome = self
            .store
            .commit_push(PushCommit {
                dedupe_key: intake.dedupe_key.into(),
                openid: intake.openid.clone(),
                effect: intake.effect,
                received_at_ms: intake.received_at_ms,
                answer,
                outbox,
            })
            .await?;
        match outcome {
            CommitOutcome::Fresh { cancelled, .. } => {
                for r in &fired {
                    self.metrics.rule_hit(r);
                }
                self.metrics.push(&intake.kind, "fresh");
                // Counted only for a fresh push: a redelivery plans (and drops) nothing again.
                for reason in dropped {
                    warn!(kind = %intake.kind, reason, "a planned reply was dropped");
                    self.metrics.drop_message(reason);
                }
                if cancelled > 0 {
                    self.metrics.drop_messages("unsubscribed", cancelled);
                }
                if n_planned > 0 {
                    self.wake.notify_one();
                }
                info!(openid = %intake.openid, kind = %intake.kind, rules = ?fired, passive = passive.is_some(), planned = n_planned, "push recorded");
                Ok(Processed { fresh: true, fired, passive, planned: n_planned })
            }
            CommitOutcome::Duplicate { answer } => {
                self.metrics.push(&intake.kind, "duplicate");
                let passive = match answer {
                    Some(a) => serde_json::from_str(&a).ok(),
                    None => None,
                };
                info!(openid = %intake.openid, kind = %intake.kind, "redelivered push: answered as the first time, nothing planned again");
                Ok(Processed { fresh: false, fired: Vec::new(), passive, planned: 0 })
            }
        }
    }
}

/// What a push will answer and send, before anything is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub passive: Option<PassiveReply>,
    pub planned: Vec<PlannedAction<OutboxAction>>,
    /// Replies that cannot be carried out, by reason label.
    pub dropped: Vec<&'static str>,
}

/// Turns the rules' evaluation into the answer and the outbox plan (pure; `kefu simulate`
/// shows exactly this). An unfollow plans nothing; a transfer is only ever a passive answer,
/// and only to a user message (protocol §7.4).
pub fn plan(
    eval: crate::rules::Evaluation,
    passive_first: bool,
    effect: WindowEffect,
    transfer_allowed: bool,
) -> Plan {
    let mut dropped = Vec::new();
    if effect == WindowEffect::CloseAll {
        // An unfollowed user can be sent nothing; the fired rules still show in logs.
        dropped.extend(eval.actions.iter().map(|_| "unsubscribed"));
        return Plan { passive: None, planned: Vec::new(), dropped };
    }
    // `split_passive` makes the first transfer the passive answer and plans no transfer.
    let (mut passive, planned) = eval.split_passive(passive_first);
    if matches!(passive, Some(PassiveReply::Transfer { .. })) && !transfer_allowed {
        dropped.push("transfer_on_event");
        passive = None;
    }
    Plan { passive, planned, dropped }
}

#[async_trait::async_trait]
impl PushSink for Pipeline {
    async fn accept(
        &self,
        opened: &Opened,
        received_at_ms: i64,
    ) -> anyhow::Result<Option<PassiveReply>> {
        match Intake::from_push(&opened.push, received_at_ms) {
            Ok(intake) => Ok(self.process(intake).await?.passive),
            Err(n) => {
                // Not a follower we could ever message (a system sender); acknowledge and move on.
                self.metrics.push(&n.kind, "ignored");
                info!(from = %n.from, kind = %n.kind, "push from a sender that is not an OpenID; acknowledged, nothing recorded");
                Ok(None)
            }
        }
    }
}

#[async_trait::async_trait]
impl PaymentSink for Pipeline {
    async fn on_payment(
        &self,
        payment: &crate::pay::Payment,
        received_at_ms: i64,
    ) -> anyhow::Result<bool> {
        if let Some(appid) =
            payment.appid.as_deref().filter(|a| !self.app_id.is_empty() && *a != self.app_id)
        {
            warn!(appid, transaction_id = %payment.transaction_id,
                "payment made through another app (its OpenID is not this account's); acknowledged, no window opened");
            self.metrics
                .payments
                .get_or_create(&crate::metrics::OutcomeLabels { outcome: "foreign_app".into() })
                .inc();
            return Ok(false);
        }
        let processed = self.process(Intake::from_payment(payment, received_at_ms)).await?;
        self.metrics
            .payments
            .get_or_create(&crate::metrics::OutcomeLabels {
                outcome: if processed.fresh { "new" } else { "duplicate" }.into(),
            })
            .inc();
        Ok(processed.fresh)
    }
}
