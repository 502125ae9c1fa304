//! The sender: drains the durable outbox into `custom/send`, one ordered worker per follower and
//! followers in parallel under a global bound. Every send is gated by the ledger at the moment it
//! leaves, so a delayed message goes out only if the window still allows it then.
//!
//! At most once per message, never twice: `claim_send` marks an entry in flight and charges
//! the ledger *before* the request (a crash mid-send leaves it in flight, and the store turns it
//! into "outcome unknown" on the next start instead of sending it again), and `finish` records
//! the outcome. A duplicate message is worse than a missing one.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;
use tracing::{Instrument, info, info_span, warn};

use crate::api::{ApiClient, SendBody};
use crate::config::DeliveryConfig;
use crate::delivery::{CustomerService, OnRefusal};
use crate::media::MediaFiles;
use crate::metrics::Metrics;
use crate::model::{OpenId, OutMessage, OutboxAction, SharedClock, Trigger};
use crate::store::{DenyReason, EXPIRED, OutboxEntry, Outcome, SendClaim, Store};

/// How many followers are served at once.
pub const DEFAULT_PARALLEL_FOLLOWERS: usize = 32;
/// How many due entries one pass of the dispatcher reads.
const BATCH: usize = 512;
/// How often the dispatcher looks again while due entries are in workers' hands.
const BUSY_TICK: Duration = Duration::from_millis(50);

pub struct Sender {
    store: Arc<dyn Store>,
    /// None = dry-run: sends are logged, not made.
    client: Option<ApiClient>,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    wake: Arc<Notify>,
    parallel: usize,
    /// Whether the account may call `custom/send`; learns from WeChat's 48001/48004.
    customer_service: Arc<CustomerService>,
    /// `delivery.hold_for` in ms: how long a message the window refuses waits in the
    /// follower's mailbox.
    hold_for_ms: i64,
    /// Media files named in messages: resolved (uploaded if need be) when they leave.
    media: Option<Arc<MediaFiles>>,
}

/// How often held answers past `hold_for` are dropped with reason `expired`.
const EXPIRE_EVERY_MS: i64 = 1000;

/// Stops the sender: no new sends start, the ones in flight finish within the bound, the rest
/// stays in the outbox for the next start.
pub struct SenderHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SenderHandle {
    pub async fn shutdown(self, bound: Duration) {
        let _ = self.stop.send(true);
        if tokio::time::timeout(bound, self.task).await.is_err() {
            warn!(
                bound_secs = bound.as_secs(),
                "sender did not stop in time; unsent messages stay in the outbox"
            );
        }
    }
}

impl Sender {
    pub fn new(
        store: Arc<dyn Store>,
        client: Option<ApiClient>,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        wake: Arc<Notify>,
    ) -> Self {
        let delivery = DeliveryConfig::default();
        Sender {
            store,
            client,
            metrics,
            clock,
            wake,
            parallel: DEFAULT_PARALLEL_FOLLOWERS,
            customer_service: Arc::new(CustomerService::new(delivery.customer_service)),
            hold_for_ms: i64::try_from(delivery.hold_for.as_millis()).unwrap_or(i64::MAX),
            media: None,
        }
    }

    /// `[delivery]`, and the account's customer-service state shared with the pipeline.
    pub fn with_delivery(
        mut self,
        delivery: &DeliveryConfig,
        customer_service: Arc<CustomerService>,
    ) -> Self {
        self.hold_for_ms = i64::try_from(delivery.hold_for.as_millis()).unwrap_or(i64::MAX);
        self.customer_service = customer_service;
        self
    }

    /// When a message held now expires.
    fn hold_until(&self) -> i64 {
        self.clock.now_ms().saturating_add(self.hold_for_ms)
    }

    /// Resolves media files in messages through `media` (and retries a 40007 once).
    pub fn with_media(mut self, media: Arc<MediaFiles>) -> Self {
        self.media = Some(media);
        self
    }

    pub fn spawn(self) -> SenderHandle {
        let (stop, stop_rx) = watch::channel(false);
        // In the caller's span: with several accounts, the account's.
        let task = tokio::spawn(tracing::Instrument::in_current_span(Arc::new(self).run(stop_rx)));
        SenderHandle { stop, task }
    }

    async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.parallel));
        let busy: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut workers = JoinSet::new();
        let mut next_expiry_sweep = 0;
        loop {
            if *stop.borrow() {
                break;
            }
            let now = self.clock.now_ms();
            if now >= next_expiry_sweep {
                next_expiry_sweep = now + EXPIRE_EVERY_MS;
                match self.store.expire_held(now).await {
                    Ok(0) => {}
                    Ok(n) => {
                        info!(answers = n, "held answers expired (delivery.hold_for passed)");
                        self.metrics.drop_messages(EXPIRED, n);
                    }
                    Err(e) => warn!(error = %e, "cannot expire held answers; retrying"),
                }
            }
            let due = match self.store.due(now, BATCH).await {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot read the outbox; retrying in 1 s");
                    Vec::new()
                }
            };
            let batch_full = due.len() >= BATCH;
            // Group by follower, keeping the store's (due time, plan order) order.
            let mut groups: Vec<(String, Vec<OutboxEntry>)> = Vec::new();
            let mut slot: std::collections::HashMap<String, usize> = Default::default();
            for e in due {
                let key = e.openid.as_str();
                match slot.get(key) {
                    Some(&i) => groups[i].1.push(e),
                    None => {
                        slot.insert(key.to_string(), groups.len());
                        groups.push((key.to_string(), vec![e]));
                    }
                }
            }
            for (openid, entries) in groups {
                if !busy.lock().insert(openid.clone()) {
                    continue; // that follower's worker is running; it is picked up next pass
                }
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let this = self.clone();
                let busy = busy.clone();
                let stop = stop.clone();
                // In the sender's span (with several accounts, the account's).
                workers.spawn(
                    async move {
                        for entry in entries {
                            if *stop.borrow() {
                                break;
                            }
                            this.deliver(entry).await;
                        }
                        busy.lock().remove(&openid);
                        drop(permit);
                        this.wake.notify_one();
                    }
                    .in_current_span(),
                );
            }
            while workers.try_join_next().is_some() {}

            let sleep_for = if batch_full {
                Duration::ZERO // more is due than one pass reads
            } else {
                match self.store.next_due_at().await {
                    // Due already: these are the entries workers hold (claimed one by one) or
                    // that wait for their follower's worker, which wakes us when it ends.
                    // Reading them again at once would spin; a short tick still catches
                    // entries falling due meanwhile.
                    Ok(Some(t)) if t <= self.clock.now_ms() => BUSY_TICK,
                    Ok(Some(t)) => {
                        Duration::from_millis((t - self.clock.now_ms()).clamp(0, 1000) as u64)
                    }
                    _ => Duration::from_secs(1),
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(sleep_for) => {}
                _ = stop.changed() => {}
            }
        }
        // Let the sends already in flight finish; the handle bounds how long we wait.
        while workers.join_next().await.is_some() {}
    }

    async fn deliver(&self, entry: OutboxEntry) {
        let span =
            info_span!("send", openid = %entry.openid, rule = %entry.action.rule, id = entry.id);
        async {
            let outcome = match &entry.action.action {
                // The account may not call custom/send: the message waits for the follower's
                // next push (interface §7.4.3).
                OutboxAction::Send { message } if !self.customer_service.allowed() => {
                    if message.passive_capable() && entry.action.kf_account.is_none() {
                        info!("held: customer-service messages are off for this account");
                        Outcome::Held {
                            reason: self.customer_service.off_reason(),
                            expires_at_ms: self.hold_until(),
                        }
                    } else {
                        warn!(msgtype = message.msgtype(), "dropped: only custom/send can carry this message, and this account may not call it");
                        self.metrics.drop_message(crate::delivery::UNDELIVERABLE);
                        Outcome::Dropped { reason: format!("{}: {}", crate::delivery::UNDELIVERABLE, self.customer_service.off_reason()) }
                    }
                }
                // A message is claimed and charged in one step (one transaction where the store
                // can); typing is not charged. What the window refuses is held for the
                // follower's next push, in that same step.
                OutboxAction::Send { message } => {
                    let now = self.clock.now_secs();
                    let hold = Some(self.hold_until());
                    match self.store.claim_send(entry.id, &entry.openid, now, hold).await {
                        Ok(SendClaim::Charged { trigger, opened_at }) => {
                            self.send(&entry, message, (trigger, opened_at)).await
                        }
                        Ok(SendClaim::Held(reason)) => {
                            info!(reason = %reason, "held for the follower's next push: the window does not allow this message now");
                            return;
                        }
                        Ok(SendClaim::Denied(reason)) => {
                            info!(reason = %reason, "dropped: the window does not allow this message");
                            self.metrics.drop_message(deny_label(reason));
                            return;
                        }
                        Ok(SendClaim::Taken) => return, // another worker or instance took it
                        Err(e) => {
                            // Not charged, so not sent: it waits for the next pass.
                            warn!(error = %e, "ledger or outbox unavailable; the message waits");
                            return;
                        }
                    }
                }
                OutboxAction::Typing if !self.customer_service.allowed() => {
                    Outcome::Dropped { reason: self.customer_service.off_reason() }
                }
                OutboxAction::Typing if self.claim(entry.id).await => {
                    self.typing(&entry.openid).await
                }
                OutboxAction::Typing => return, // not claimed
            };
            if let Err(e) = self.store.finish(entry.id, outcome).await {
                warn!(error = %e, "cannot record a send's outcome");
            }
        }
        .instrument(span)
        .await
    }

    /// pending → in flight for an action that is not charged; false if it was not pending
    /// (another worker took it) or the store failed (it stays pending).
    async fn claim(&self, id: i64) -> bool {
        self.store.claim(id).await.unwrap_or_else(|e| {
            warn!(error = %e, "cannot claim an outbox entry; it stays pending");
            false
        })
    }

    /// A claimed typing indicator: not charged.
    async fn typing(&self, openid: &OpenId) -> Outcome {
        // Pointless (and refused by WeChat) when no message may follow it: a delayed indicator
        // after the window closed is not shown.
        if let Ok(view) = self.store.window(openid, self.clock.now_secs()).await
            && !view.open
        {
            self.metrics.drop_message("typing_window_closed");
            return Outcome::Dropped {
                reason: "the window allows no message now, so the typing indicator is not shown"
                    .into(),
            };
        }
        if let Some(client) = &self.client {
            if let Err(e) = client.typing(openid.as_str(), true).await {
                info!(error = %e, "typing indicator refused");
            }
        } else {
            info!(openid = %openid, "dry-run: would show the typing indicator");
        }
        Outcome::Sent
    }

    /// Sends a claimed message already charged to `charged`'s grant.
    async fn send(
        &self,
        entry: &OutboxEntry,
        message: &OutMessage,
        charged: (Trigger, i64),
    ) -> Outcome {
        let (openid, trigger) = (&entry.openid, charged.0);
        let body = SendBody::of_message(openid, message, entry.action.kf_account.as_deref());
        let Some(client) = &self.client else {
            info!(body = %body.json(), trigger = %trigger, "dry-run: would send (sending is off: wechat.app_id and wechat.app_secret are not both set)");
            self.metrics.send(message.msgtype(), "dry_run", 0);
            return Outcome::Sent;
        };
        let sent = match &self.media {
            Some(media) => {
                let kf = entry.action.kf_account.as_deref();
                media.send(client, openid, message, kf).await
            }
            None => client.send(&body).await,
        };
        match sent {
            Ok(()) => {
                self.metrics.send(message.msgtype(), "sent", 0);
                info!(msgtype = message.msgtype(), trigger = %trigger, "sent");
                Outcome::Sent
            }
            Err(e) => {
                super::gate::feed_back(
                    self.store.as_ref(),
                    openid,
                    Some(charged),
                    &e,
                    self.clock.now_secs(),
                )
                .await;
                self.metrics.send(message.msgtype(), "failed", e.errcode().unwrap_or(-2));
                match self.customer_service.on_refusal(e.errcode()) {
                    OnRefusal::Hold => {
                        info!(error = %e, "send failed; held for the follower's next push");
                        Outcome::Held { reason: e.to_string(), expires_at_ms: self.hold_until() }
                    }
                    OnRefusal::Fail => {
                        warn!(error = %e, "send failed");
                        Outcome::Failed { reason: e.to_string() }
                    }
                }
            }
        }
    }
}

/// A stable metrics label for a refusal.
fn deny_label(r: DenyReason) -> &'static str {
    match r {
        DenyReason::Closed => "window_closed",
        DenyReason::Unsubscribed => "unsubscribed",
        DenyReason::Exhausted => "quota_used",
    }
}
