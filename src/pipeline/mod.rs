//! The push path (inside the request): decoded push -> rules -> one durable commit of dedupe
//! record, ledger grant, stored answer and planned outbox entries -> the answer. Nothing here
//! talks to WeChat; the [`sender`] drains the outbox afterwards.

pub mod conversations;
pub mod forward;
pub mod gate;
pub mod intake;
pub mod sender;
pub mod sink;

pub use intake::Intake;
pub use sink::{AckOnly, PaymentRouter, PaymentSink, PushSink};

use std::sync::Arc;

use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::config::DeliveryConfig;
use crate::delivery::split::{SplitNote, split_actions};
use crate::delivery::{CustomerService, OwnPassive, Terms};
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
    delivery: DeliveryConfig,
    /// Shared with the sender, which learns from WeChat whether the account may call
    /// `custom/send`.
    customer_service: Arc<CustomerService>,
    /// Media files named in replies: ready ids replace their references (memory only).
    media: Option<Arc<MediaFiles>>,
    /// Backend calls of `forward` replies (interface §7); None: no backend configured.
    forwarder: Option<Arc<forward::Forwarder>>,
}

impl Pipeline {
    pub fn new(
        store: Arc<dyn Store>,
        rules: Arc<Rules>,
        passive_first: bool,
        metrics: Arc<Metrics>,
        wake: Arc<Notify>,
    ) -> Self {
        let delivery = DeliveryConfig::default();
        let customer_service = Arc::new(CustomerService::new(delivery.customer_service));
        Pipeline {
            store,
            rules,
            passive_first,
            metrics,
            wake,
            app_id: String::new(),
            delivery,
            customer_service,
            media: None,
            forwarder: None,
        }
    }

    /// Runs the `forward` replies of rules through `forwarder` (interface §7.4).
    pub fn with_forwarder(mut self, forwarder: Arc<forward::Forwarder>) -> Self {
        self.forwarder = Some(forwarder);
        self
    }

    /// How answers are delivered (`[delivery]`), and the account's customer-service state
    /// shared with the sender.
    pub fn with_delivery(
        mut self,
        delivery: &DeliveryConfig,
        customer_service: Arc<CustomerService>,
    ) -> Self {
        self.delivery = delivery.clone();
        self.customer_service = customer_service;
        self
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
        // `passive_wait` counts from here (less what the clock says passed since receipt).
        let arrived = self
            .forwarder
            .as_ref()
            .map(|fw| fw.arrival(intake.received_at_ms, std::time::Instant::now()));
        // A redelivery of a push whose forward is in flight waits for the same answer.
        if let Some(fw) = &self.forwarder
            && let Some(flight) = fw.in_flight(intake.dedupe_key.as_str())
        {
            return Ok(self.wait_redelivered(fw, &flight, &intake, arrived).await);
        }
        let rules = self.rules.current();
        let mut eval = rules.evaluate(&intake.input);
        if let Some(media) = &self.media {
            media.settle(&mut eval.actions);
        }
        let (mut call, mut shortcut) = (None, None);
        if intake.effect != WindowEffect::CloseAll
            && let Some(split) = forward::split_forward(&mut eval)
        {
            let answer = match &self.forwarder {
                None => {
                    warn!(backend = %split.backend, "a rule forwards, but no backend runs here; sending its fallback");
                    crate::backends::fallback_answer(&split.rule, split.fallback.as_deref())
                }
                Some(fw) => match fw.prepare(&intake, &split).await {
                    forward::Prepared::Call(p) => match fw.claim(intake.dedupe_key.as_str()) {
                        forward::Claim::Owner(flight) => {
                            call = Some((*p, flight));
                            crate::backends::Answer::default()
                        }
                        // The same push, delivered again while this one was evaluated.
                        forward::Claim::Waiter(flight) => {
                            return Ok(self.wait_redelivered(fw, &flight, &intake, arrived).await);
                        }
                    },
                    forward::Prepared::Shortcut(a, req) => {
                        shortcut = Some((split.backend.clone(), req, a.clone()));
                        a
                    }
                    forward::Prepared::RateLimited(a) | forward::Prepared::Unknown(a) => a,
                },
            };
            // Without a call, the answer and the replies after the forward are this push's own.
            if call.is_none() {
                eval.actions.extend(answer.replies);
                eval.actions.extend(split.tail);
            }
        }
        let fired = eval.fired.clone();
        let Plan { passive, planned, dropped, splits } = plan(
            eval,
            self.passive_first && intake.passive_allowed,
            intake.effect,
            intake.transfer_allowed,
            self.delivery.max_text_bytes,
        );
        let mut terms = terms(&intake, self.passive_first, &self.customer_service, &self.delivery);
        terms.answer_coming = call.is_some() && !self.customer_service.allowed();
        let outbox = outbox_entries(planned, intake.received_at_ms);
        let n_planned = outbox.len();
        let commit = PushCommit {
            dedupe_key: intake.dedupe_key.to_string(),
            openid: intake.openid.clone(),
            effect: intake.effect,
            received_at_ms: intake.received_at_ms,
            passive,
            outbox,
            terms,
            log: Some(crate::convlog::LogRecord::push(
                &intake.openid,
                intake.received_at_ms,
                intake.summary,
            )),
        };
        let outcome = match &call {
            Some((p, flight)) => {
                match self.store.commit_push_forward(commit, p.record.clone()).await {
                    Ok(o) => o,
                    Err(e) => {
                        // Nothing recorded: deliveries waiting on the flight answer `success`.
                        if let Some(fw) = &self.forwarder {
                            fw.abandon(intake.dedupe_key.as_str(), flight, None);
                        }
                        return Err(e.into());
                    }
                }
            }
            None => self.store.commit_push(commit).await?,
        };
        match outcome {
            CommitOutcome::Fresh { cancelled, mut delivery, outbox_ids, window_after } => {
                if let (Some(fw), Some((backend, req, answer))) = (&self.forwarder, &shortcut) {
                    fw.answered(backend, req, answer).await;
                }
                if let (Some(fw), Some((p, _)), Some(arrived)) = (&self.forwarder, call, arrived) {
                    let flight = fw.start(p, Some(window_after));
                    if delivery.passive.is_none() && intake.passive_allowed {
                        // Nothing answers the push yet: wait for the backend (passive_wait).
                        // (A payment notification has no passive reply: it never waits.)
                        delivery.passive = fw.wait_as_owner(&flight, arrived).await;
                    } else {
                        fw.not_waiting(&flight);
                    }
                }
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
                for s in &splits {
                    info!(rule = %s.rule, bytes = s.bytes, parts = s.parts, "long text split");
                }
                if delivery.expired > 0 {
                    self.metrics.drop_messages(crate::store::EXPIRED, delivery.expired);
                }
                if delivery.undeliverable > 0 {
                    warn!(openid = %intake.openid, answers = delivery.undeliverable,
                        "dropped: only custom/send could carry these answers (a menu, a mini program card, a message as a kf account), and this account may not call it");
                    self.metrics
                        .drop_messages(crate::delivery::UNDELIVERABLE, delivery.undeliverable);
                }
                if delivery.from_held > 0 {
                    self.metrics.held_delivered.inc_by(delivery.from_held);
                }
                let planned = outbox_ids.len();
                if planned > 0 {
                    self.wake.notify_one();
                }
                let passive = delivery.passive;
                // Debug (issue 21): at a push path's full rate one line per push costs more
                // than the rest of the answer; the conversation log and the metrics keep the
                // per-push record at info.
                debug!(openid = %intake.openid, kind = %intake.kind, rules = ?fired,
                    passive = passive.is_some(), planned, own = n_planned,
                    from_held = delivery.from_held, held = delivery.held, "push recorded");
                Ok(Processed { fresh: true, fired, passive, planned })
            }
            CommitOutcome::Duplicate { answer: passive } => {
                if let (Some(fw), Some((_, flight))) = (&self.forwarder, &call) {
                    fw.abandon(intake.dedupe_key.as_str(), flight, passive.clone());
                }
                self.metrics.push(&intake.kind, "duplicate");
                info!(openid = %intake.openid, kind = %intake.kind, "redelivered push: answered as the first time, nothing planned again");
                Ok(Processed { fresh: false, fired: Vec::new(), passive, planned: 0 })
            }
        }
    }
}

impl Pipeline {
    /// A delivery of a push whose forward is in flight: it waits for the same answer
    /// (interface §7.4.4).
    async fn wait_redelivered(
        &self,
        fw: &forward::Forwarder,
        flight: &forward::Flight,
        intake: &Intake,
        arrived: Option<std::time::Instant>,
    ) -> Processed {
        self.metrics.push(&intake.kind, "duplicate");
        info!(openid = %intake.openid, kind = %intake.kind, "redelivered push: waiting for its forward's answer");
        let arrived = arrived.unwrap_or_else(std::time::Instant::now);
        let passive = fw.wait(flight, arrived).await;
        Processed { fresh: false, fired: Vec::new(), passive, planned: 0 }
    }
}

/// The push's planned actions as outbox entries: in plan order, due at receipt plus delay.
pub fn outbox_entries(
    planned: Vec<PlannedAction<OutboxAction>>,
    received_at_ms: i64,
) -> Vec<NewOutboxEntry> {
    planned
        .into_iter()
        .enumerate()
        .map(|(seq, p)| NewOutboxEntry {
            rule: p.rule.clone(),
            seq: seq as u32,
            due_at_ms: received_at_ms + p.delay.as_millis() as i64,
            action: p,
        })
        .collect()
}

/// How a push's answers may be delivered (interface §7.4). A held answer becomes the passive
/// reply only to a push the follower made in the chat (one that opens a grant: a message, a
/// menu click, a follow, a scan; not a payment notification or a VIEW, whose passive reply
/// the follower may never see), and with `passive_first` off only when `custom/send` is not
/// allowed (the operator chose customer-service messages, and the push's grant carries them).
pub fn terms(
    intake: &Intake,
    passive_first: bool,
    cs: &CustomerService,
    delivery: &DeliveryConfig,
) -> Terms {
    let in_chat = matches!(intake.effect, WindowEffect::Open(_) | WindowEffect::Follow(_));
    let passive = intake.passive_allowed && in_chat && (passive_first || !cs.allowed());
    delivery_terms(passive, cs, delivery)
}

/// [`Terms`] with the passive slot given or not: the account's `custom/send` state and the
/// `[delivery]` settings (a push's commit, and a forwarded answer's, [`forward`]).
pub fn delivery_terms(
    passive_slot: bool,
    cs: &CustomerService,
    delivery: &DeliveryConfig,
) -> Terms {
    let customer_service = cs.allowed();
    Terms {
        passive_slot,
        customer_service,
        more_text: delivery.more_text.clone(),
        answer_coming: false,
        hold_for_ms: i64::try_from(delivery.hold_for.as_millis()).unwrap_or(i64::MAX),
        hold_reason: if customer_service {
            crate::delivery::HELD_FOR_QUOTA.to_string()
        } else {
            cs.off_reason()
        },
    }
}

/// What a push will answer and send, before anything is written (and before held answers
/// and the window decide what is delivered now: [`crate::delivery::assign`], in the commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub passive: Option<OwnPassive>,
    pub planned: Vec<PlannedAction<OutboxAction>>,
    /// Replies that cannot be carried out, by reason label.
    pub dropped: Vec<&'static str>,
    /// Text replies split into parts of at most `max_text_bytes` (interface §7.5).
    pub splits: Vec<SplitNote>,
}

/// Turns the rules' evaluation into the answer and the outbox plan (pure; `kefu simulate`
/// shows exactly this). An unfollow plans nothing; a transfer is only ever a passive answer,
/// and only to a user message (protocol §7.4).
///
/// Text longer than `max_text_bytes` is split first (interface §7.5), so the first part may
/// be the passive answer and the rest follow.
pub fn plan(
    mut eval: crate::rules::Evaluation,
    passive_first: bool,
    effect: WindowEffect,
    transfer_allowed: bool,
    max_text_bytes: usize,
) -> Plan {
    let mut dropped = Vec::new();
    if effect == WindowEffect::CloseAll {
        // An unfollowed user can be sent nothing; the fired rules still show in logs.
        dropped.extend(eval.actions.iter().map(|_| "unsubscribed"));
        return Plan { passive: None, planned: Vec::new(), dropped, splits: Vec::new() };
    }
    let (actions, splits) = split_actions(std::mem::take(&mut eval.actions), max_text_bytes);
    eval.actions = actions;
    // `split_passive` makes the first transfer the passive answer and plans no transfer.
    let (mut passive, planned) = eval.split_passive(passive_first);
    if matches!(passive, Some(OwnPassive { reply: PassiveReply::Transfer { .. }, .. }))
        && !transfer_allowed
    {
        dropped.push("transfer_on_event");
        passive = None;
    }
    Plan { passive, planned, dropped, splits }
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
