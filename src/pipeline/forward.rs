//! The forwarder (interface §7.4): runs the backend call of each push a rule forwards, and
//! delivers its answer by the one delivery rule every late answer follows.
//!
//! - **One call per push.** A push's call is a [`Flight`] keyed by the push's dedupe key;
//!   WeChat's redeliveries of the push find it and wait for the same answer (each up to
//!   `passive_wait` from its own arrival, §7.4.4), so the backend is called once.
//! - **In time → passive.** While a delivery of the push waits, an answer that arrives is
//!   committed with the passive slot: its first passive-capable reply is the HTTP answer
//!   (§7.4.1). When no delivery waits any more (each is answered at `passive_wait` with
//!   `pending_text` or `success`), the answer goes to the outbox (`custom/send`) or is held,
//!   decided by [`crate::delivery::assign`] inside the store's commit, like every answer.
//! - **Durable.** The forward is recorded in the push's own commit, before the HTTP answer
//!   ([`crate::store::Store::commit_push_forward`]); [`Forwarder::recover`] calls unfinished
//!   forwards again after a start with the same id. The answer is a commit of its own under
//!   [`crate::store::answer_key`], written with the forward's settlement, so it is delivered
//!   once even when the backend is called twice.
//! - **Bounded, ordered, never blocking.** Calls run in their own tasks, at most
//!   `max_concurrent` per backend; a follower's answers are committed in the order of their
//!   pushes (calls run concurrently). The push path only ever waits `passive_wait`.
//! - **Typing.** Once the push is answered without the answer, and `custom/send` is allowed,
//!   `custom/typing` is sent while the call goes on, at most once per 15 s per follower.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures::FutureExt;
use futures::future::Shared;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot, watch};
use tracing::{error, info, warn};

use crate::api::ApiClient;
use crate::backends::{
    Answer, Backends, CallError, ForwardRequest, PushFacts, WindowFacts, fallback_answer,
    forward_id,
};
use crate::config::DeliveryConfig;
use crate::delivery::CustomerService;
use crate::ledger::Window;
use crate::metrics::Metrics;
use crate::model::{Action, PassiveReply, PlannedAction, SharedClock, WindowEffect};
use crate::rules::Evaluation;
use crate::store::{CommitOutcome, ForwardRecord, PushCommit, Store, answer_key};

use super::Intake;

/// At most one `custom/typing` per follower within this time (interface §11.5).
pub const TYPING_EVERY: Duration = Duration::from_secs(15);
/// How long a finished flight stays findable, so a late redelivery gets the same answer.
const KEEP_DONE: Duration = Duration::from_secs(60);
/// How long a waiting delivery whose answer is being committed as its passive reply waits
/// past `passive_wait` for that commit (a few milliseconds in practice).
const SETTLE_GRACE: Duration = Duration::from_millis(300);
/// When `custom/send` is not allowed, WeChat's own retries are the only way a slow answer
/// reaches the follower now (interface §7.4.4): WeChat waits 5 s for an HTTP answer, then
/// drops the connection and delivers the push again, three times in all (protocol §5.1). So a
/// delivery before [`LAST_DELIVERY`] gives no `pending_text`/`success` — that would end the
/// retries — but keeps waiting for the answer until WeChat has given up on it.
pub const HOLD_OPEN: Duration = Duration::from_secs(6);
/// The delivery of a push (counted from 1) that is answered at `passive_wait` even when
/// `custom/send` is not allowed: WeChat may not deliver it again.
pub const LAST_DELIVERY: u32 = 3;

/// Where a push's forward is: calling (with the deliveries waiting for it), committing the
/// answer (as the passive reply of the waiting deliveries, or not), done.
#[derive(Debug)]
enum Phase {
    Calling { waiters: usize },
    Settling { claimed: bool },
    Done { passive: Option<PassiveReply> },
}

/// One push's backend call, shared by the push's deliveries.
#[derive(Debug)]
pub struct Flight {
    phase: Mutex<Phase>,
    /// Bumped at every phase change.
    signal: watch::Sender<u64>,
    /// Its call task was started (a flight is claimed before the push's commit, started
    /// after it).
    started: std::sync::atomic::AtomicBool,
    /// Deliveries of the push that waited for it so far.
    deliveries: std::sync::atomic::AtomicU32,
}

/// Who handles a forwarded push: the first delivery owns its flight (commits the push, then
/// starts the call); a delivery that finds the flight already there waits for it.
#[derive(Debug)]
pub enum Claim {
    Owner(Arc<Flight>),
    Waiter(Arc<Flight>),
}

impl Flight {
    fn new() -> Arc<Self> {
        Arc::new(Flight {
            phase: Mutex::new(Phase::Calling { waiters: 0 }),
            signal: watch::channel(0).0,
            started: std::sync::atomic::AtomicBool::new(false),
            deliveries: std::sync::atomic::AtomicU32::new(0),
        })
    }

    fn set(&self, phase: Phase) {
        *self.phase.lock() = phase;
        self.signal.send_modify(|v| *v += 1);
    }

    fn done(&self) -> Option<Option<PassiveReply>> {
        match &*self.phase.lock() {
            Phase::Done { passive } => Some(passive.clone()),
            _ => None,
        }
    }
}

/// One delivery waiting on a flight: dropping it (returned, or its handler dropped when the
/// client hung up) takes it off the flight's waiters while the call is still running, so an
/// answer is never claimed as the passive reply of a delivery nobody waits for.
struct Waiting<'a>(&'a Flight);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Phase::Calling { waiters } = &mut *self.0.phase.lock() {
            *waiters = waiters.saturating_sub(1);
        }
    }
}

/// What [`Forwarder::prepare`] decided for a forward before anything is committed.
#[derive(Debug)]
pub enum Prepared {
    /// Answered without a call (a backend's shortcut): deliver these replies in the
    /// forward's place, then tell the backend ([`Forwarder::answered`]).
    Shortcut(Answer, Box<ForwardRequest>),
    /// Over the backend's `rate_limit` for this follower: `rate_limited_text` instead.
    RateLimited(Answer),
    /// The backend is not configured (rules loaded before a config change): the fallback.
    Unknown(Answer),
    /// Call it: commit this record with the push, then [`Forwarder::start`].
    Call(Box<Pending>),
}

/// A forward to start once the push is committed.
#[derive(Debug)]
pub struct Pending {
    pub record: ForwardRecord,
    pub request: ForwardRequest,
}

/// The forward of one evaluation: the first `forward` reply, what came after it, and the
/// replies before it left in `eval`.
#[derive(Debug)]
pub struct Split {
    pub rule: String,
    pub backend: String,
    pub fallback: Option<String>,
    pub captures: Vec<(String, String)>,
    /// The replies after the forward, delivered after its answer.
    pub tail: Vec<PlannedAction>,
}

/// Takes the first `forward` reply out of `eval` (interface §7.2): `eval` keeps the replies
/// before it. A second forward in one push is dropped with a warning: one call per push.
pub fn split_forward(eval: &mut Evaluation) -> Option<Split> {
    let at = eval.actions.iter().position(|a| matches!(a.action, Action::Forward { .. }))?;
    let mut rest = eval.actions.split_off(at);
    let first = rest.remove(0);
    let Action::Forward { backend, fallback, captures } = first.action else { return None };
    let tail: Vec<PlannedAction> = rest
        .into_iter()
        .filter(|a| {
            let extra = matches!(a.action, Action::Forward { .. });
            if extra {
                warn!(rule = %a.rule, "a second forward fired for one push; only the first is made");
            }
            !extra
        })
        .collect();
    Some(Split { rule: first.rule, backend, fallback, captures, tail })
}

/// Resolves when a forward's answer is committed (or its task ended).
type Settled = Shared<oneshot::Receiver<()>>;

/// Runs backend calls for the pipeline (see the module docs).
pub struct Forwarder {
    store: Arc<dyn Store>,
    backends: Backends,
    metrics: Arc<Metrics>,
    clock: SharedClock,
    /// Wakes the sender when an answer reached the outbox.
    wake: Arc<Notify>,
    /// None = dry-run: typing is logged, not sent.
    client: Option<ApiClient>,
    delivery: DeliveryConfig,
    customer_service: Arc<CustomerService>,
    passive_first: bool,
    /// The kefu account this forwarder serves (the requests' `account_name`).
    account_name: String,
    flights: DashMap<String, Arc<Flight>>,
    /// Per follower: the settlement of their latest forward, which the next one waits for.
    order: Mutex<HashMap<String, (u64, Settled)>>,
    seq: AtomicU64,
    /// Per follower: when typing was last sent (Unix ms).
    typing_at: DashMap<String, i64>,
    /// The runtime calls run on: the one the service was built on, never the HTTP workers'
    /// (their threads answer WeChat; a backend's work must not delay an answer).
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("backends", &self.backends.names())
            .field("in_flight", &self.flights.len())
            .finish()
    }
}

impl Forwarder {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn Store>,
        backends: Backends,
        metrics: Arc<Metrics>,
        clock: SharedClock,
        wake: Arc<Notify>,
        client: Option<ApiClient>,
        delivery: &DeliveryConfig,
        customer_service: Arc<CustomerService>,
        passive_first: bool,
        account_name: &str,
    ) -> Arc<Self> {
        Arc::new(Forwarder {
            store,
            backends,
            metrics,
            clock,
            wake,
            client,
            delivery: delivery.clone(),
            customer_service,
            passive_first,
            account_name: account_name.to_string(),
            flights: DashMap::new(),
            order: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            typing_at: DashMap::new(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn backends(&self) -> &Backends {
        &self.backends
    }

    /// Forwards in flight (or finished within the last minute), by push.
    pub fn in_flight(&self, push_key: &str) -> Option<Arc<Flight>> {
        self.flights.get(push_key).map(|f| f.clone())
    }

    /// When a delivery arrived, as a monotonic instant: `now` less the time since
    /// `received_at_ms` on the clock (the webhook's receipt time), so `passive_wait` counts
    /// from the receipt even when the commit before the wait was slow.
    pub fn arrival(&self, received_at_ms: i64, now: Instant) -> Instant {
        let since = u64::try_from(self.clock.now_ms() - received_at_ms).unwrap_or(0).min(60_000);
        now.checked_sub(Duration::from_millis(since)).unwrap_or(now)
    }

    /// Claims the flight of a push about to be committed with its forward: the first
    /// delivery owns it, a concurrent redelivery (which may have passed [`Self::in_flight`]
    /// before the flight existed) waits for it instead of committing.
    pub fn claim(&self, push_key: &str) -> Claim {
        match self.flights.entry(push_key.to_string()) {
            dashmap::Entry::Occupied(o) => Claim::Waiter(o.get().clone()),
            // The owner counts as waiting from the start: a backend answering before the
            // owner's commit returns must still find someone to give the passive slot to.
            dashmap::Entry::Vacant(v) => {
                let flight = Flight::new();
                *flight.phase.lock() = Phase::Calling { waiters: 1 };
                Claim::Owner(v.insert(flight).clone())
            }
        }
    }

    /// The owner's commit found the push recorded before (no call is made): deliveries
    /// waiting on the flight get the stored answer.
    pub fn abandon(
        self: &Arc<Self>,
        push_key: &str,
        flight: &Flight,
        answer: Option<PassiveReply>,
    ) {
        flight.set(Phase::Done { passive: answer });
        let (this, key) = (self.clone(), push_key.to_string());
        self.runtime.spawn(async move {
            tokio::time::sleep(KEEP_DONE).await;
            this.flights.remove(&key);
        });
    }

    /// Decides a forward of `intake` before the push is committed: a shortcut answer, the
    /// rate limit, an unknown backend, or a call (with its record).
    pub async fn prepare(&self, intake: &Intake, split: &Split) -> Prepared {
        let request = request_for(intake, split, &self.account_name);
        let Some(entry) = self.backends.get(&split.backend) else {
            warn!(backend = %split.backend, rule = %split.rule,
                "the rule forwards to a backend that is not configured; sending its fallback");
            return Prepared::Unknown(fallback_answer(&split.rule, split.fallback.as_deref()));
        };
        if let Some(answer) = entry.backend.shortcut(&request) {
            return Prepared::Shortcut(answer, Box::new(request));
        }
        if let Some(limit) = entry.config.rate_limit {
            let key = format!("{}:{}", split.backend, intake.openid);
            let window_ms = i64::try_from(limit.per.as_millis()).unwrap_or(i64::MAX);
            match self.store.rate_hit(&key, limit.count, window_ms, intake.received_at_ms).await {
                Ok(true) => {}
                Ok(false) => {
                    info!(backend = %split.backend, openid = %intake.openid, %limit,
                        "over the backend's rate_limit: answered with rate_limited_text, not forwarded");
                    self.metrics.backend_call(&split.backend, "rate_limited", None);
                    return Prepared::RateLimited(Answer::text(
                        &split.rule,
                        entry.config.rate_limited_text.clone(),
                    ));
                }
                // A store that cannot count must not stop answers: forward.
                Err(e) => warn!(error = %e, "cannot count the rate limit; forwarding"),
            }
        }
        let record = ForwardRecord {
            id: request.id.clone(),
            push_key: intake.dedupe_key.as_str().to_string(),
            openid: intake.openid.clone(),
            backend: split.backend.clone(),
            rule: split.rule.clone(),
            request: String::new(),
            fallback: split.fallback.clone(),
            tail: serde_json::to_string(&split.tail).unwrap_or_else(|_| "[]".into()),
            received_at_ms: intake.received_at_ms,
        };
        let mut pending = Pending { record, request };
        pending.record.request = serde_json::to_string(&pending.request).unwrap_or_default();
        Prepared::Call(Box::new(pending))
    }

    /// Tells the backend its answer was committed (a shortcut's, after the push's commit).
    pub async fn answered(&self, backend: &str, request: &ForwardRequest, answer: &Answer) {
        if let Some(e) = self.backends.get(backend) {
            e.backend.answered(request, answer).await;
        }
    }

    /// Starts the call of a committed forward; `window` is the follower's window after the
    /// push (None: read it now). The flight is findable by the push's key at once.
    pub fn start(self: &Arc<Self>, pending: Pending, window: Option<Window>) -> Arc<Flight> {
        let key = pending.record.push_key.clone();
        let flight = self.flights.entry(key).or_insert_with(Flight::new).clone();
        if flight.started.swap(true, Ordering::SeqCst) {
            return flight; // already running (a forward recovered twice)
        }
        let (tx, rx) = oneshot::channel();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let prev = self
            .order
            .lock()
            .insert(pending.record.openid.as_str().to_string(), (seq, rx.shared()))
            .map(|(_, r)| r);
        let this = self.clone();
        let f = flight.clone();
        self.runtime.spawn(async move {
            this.run(f, pending, window, prev, tx, seq).await;
        });
        flight
    }

    /// Waits for `flight`'s answer as one delivery of the push that arrived at `arrived`: its
    /// passive reply when the answer is committed within `passive_wait` of that, else
    /// `pending_text` (None = `success`).
    pub async fn wait(&self, flight: &Flight, arrived: Instant) -> Option<PassiveReply> {
        self.wait_counted(flight, arrived, false).await
    }

    /// [`Self::wait`] for the owner of a claimed flight, already counted as waiting.
    pub async fn wait_as_owner(&self, flight: &Flight, arrived: Instant) -> Option<PassiveReply> {
        self.wait_counted(flight, arrived, true).await
    }

    /// The owner of a claimed flight does not wait (its push has an answer already).
    pub fn not_waiting(&self, flight: &Flight) {
        if let Phase::Calling { waiters } = &mut *flight.phase.lock() {
            *waiters = waiters.saturating_sub(1);
        }
    }

    async fn wait_counted(
        &self,
        flight: &Flight,
        arrived: Instant,
        counted: bool,
    ) -> Option<PassiveReply> {
        let mut rx = flight.signal.subscribe();
        match &mut *flight.phase.lock() {
            Phase::Done { passive } => return passive.clone(),
            Phase::Calling { waiters } if !counted => *waiters += 1,
            Phase::Calling { .. } | Phase::Settling { .. } => {}
        }
        // However this wait ends (an answer, the deadline, or WeChat hanging up and the
        // handler being dropped), it stops counting as a delivery the answer can go to.
        let _waiting = Waiting(flight);
        let n = flight.deliveries.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let wait = if !self.customer_service.allowed() && n < LAST_DELIVERY {
            self.delivery.passive_wait.max(HOLD_OPEN)
        } else {
            self.delivery.passive_wait
        };
        let deadline = tokio::time::Instant::from_std(arrived + wait);
        loop {
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        return self.pending();
                    }
                    if let Some(p) = flight.done() {
                        return p;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let claimed = match &*flight.phase.lock() {
                        Phase::Calling { .. } => return self.pending(),
                        Phase::Settling { claimed } => *claimed,
                        Phase::Done { passive } => return passive.clone(),
                    };
                    if !claimed {
                        return self.pending();
                    }
                    // The answer is being committed as this push's passive reply: a few ms.
                    let _ = tokio::time::timeout(SETTLE_GRACE, async {
                        while flight.done().is_none() {
                            if rx.changed().await.is_err() {
                                break;
                            }
                        }
                    })
                    .await;
                    return flight.done().unwrap_or_else(|| self.pending());
                }
            }
        }
    }

    /// The HTTP answer of a push whose forwarded answer is not ready: `pending_text`, or
    /// `success` when it is empty (interface §11.2).
    fn pending(&self) -> Option<PassiveReply> {
        let t = &self.delivery.pending_text;
        (!t.is_empty()).then(|| PassiveReply::text(t.clone()))
    }

    /// Calls every forward left unfinished by the last run again (same id), in the order of
    /// their pushes.
    pub async fn recover(self: &Arc<Self>) {
        let unfinished = match self.store.unfinished_forwards().await {
            Ok(f) => f,
            Err(e) => {
                error!(error = %e, "cannot read unfinished forwards; they are retried at the next start");
                return;
            }
        };
        if !unfinished.is_empty() {
            info!(forwards = unfinished.len(), "calling the forwards the last run left unanswered");
        }
        for record in unfinished {
            let request: ForwardRequest = match serde_json::from_str(&record.request) {
                Ok(r) => r,
                Err(e) => {
                    error!(id = %record.id, error = %e, "a stored forward cannot be read; dropped");
                    let _ = self.store.finish_forward(&record.id).await;
                    continue;
                }
            };
            self.start(Pending { record, request }, None);
        }
    }

    async fn run(
        self: Arc<Self>,
        flight: Arc<Flight>,
        pending: Pending,
        window: Option<Window>,
        prev: Option<Settled>,
        done: oneshot::Sender<()>,
        seq: u64,
    ) {
        let Pending { record, mut request } = pending;
        let now = self.clock.now_ms().div_euclid(1000);
        let window = match window {
            Some(w) => Some(w),
            None => self.store.peek_window(&record.openid).await.ok().flatten(),
        };
        request.window = window_facts(window.as_ref(), now, self.customer_service.allowed());
        let entry = self.backends.get(&record.backend).cloned();
        let call = async {
            let Some(entry) = &entry else {
                return Err(CallError::Unusable(format!(
                    "backend `{}` is not configured any more",
                    record.backend
                )));
            };
            let _slot = entry.slots.acquire().await;
            entry.backend.call(&request).await
        };
        let result = tokio::select! {
            r = call => r,
            never = self.type_while_waiting(&flight, &record) => match never {},
        };
        let (answer, from_backend) = match result {
            Ok(a) => (a, true),
            Err(e) => {
                error!(backend = %record.backend, id = %record.id, rule = %record.rule,
                    outcome = e.outcome(), error = %e,
                    "forward failed for good; the rule's fallback is sent");
                (fallback_answer(&record.rule, record.fallback.as_deref()), false)
            }
        };
        // A follower's answers are committed in the order of their pushes.
        if let Some(prev) = prev {
            let _ = prev.await;
        }
        let claimed = {
            let mut phase = flight.phase.lock();
            let claimed = matches!(*phase, Phase::Calling { waiters } if waiters > 0);
            *phase = Phase::Settling { claimed };
            claimed
        };
        let (passive, committed) = self.settle(&record, &request, &answer, claimed).await;
        flight.set(Phase::Done { passive });
        let _ = done.send(());
        {
            let mut order = self.order.lock();
            if order.get(record.openid.as_str()).is_some_and(|(s, _)| *s == seq) {
                order.remove(record.openid.as_str());
            }
        }
        if committed
            && from_backend
            && let Some(e) = &entry
        {
            e.backend.answered(&request, &answer).await;
        }
        tokio::time::sleep(KEEP_DONE).await;
        self.flights.remove(&record.push_key);
    }

    /// Sends `custom/typing` from the moment the push was answered without the answer, at
    /// most once per [`TYPING_EVERY`] per follower, while `custom/send` is allowed; never
    /// returns (the call ends it).
    async fn type_while_waiting(
        &self,
        flight: &Flight,
        record: &ForwardRecord,
    ) -> std::convert::Infallible {
        let wait_ms = i64::try_from(self.delivery.passive_wait.as_millis()).unwrap_or(4000);
        // Just after the deliveries waiting at `passive_wait` gave up.
        let from = record.received_at_ms + wait_ms + 50;
        let left = from - self.clock.now_ms();
        if left > 0 {
            tokio::time::sleep(Duration::from_millis(left as u64)).await;
        }
        loop {
            let waiting = matches!(*flight.phase.lock(), Phase::Calling { waiters } if waiters > 0);
            if self.delivery.typing && self.customer_service.allowed() && !waiting {
                self.typing(record).await;
            }
            tokio::time::sleep(TYPING_EVERY).await;
        }
    }

    async fn typing(&self, record: &ForwardRecord) {
        let now = self.clock.now_ms();
        let every = TYPING_EVERY.as_millis() as i64;
        let openid = record.openid.as_str();
        match self.typing_at.entry(openid.to_string()) {
            dashmap::Entry::Occupied(mut o) => {
                if now - *o.get() < every {
                    return;
                }
                o.insert(now);
            }
            dashmap::Entry::Vacant(v) => {
                v.insert(now);
            }
        }
        match &self.client {
            Some(c) => match c.typing(openid, true).await {
                Ok(()) => self.metrics.send("typing", "sent", 0),
                Err(e) => {
                    warn!(openid, error = %e, "custom/typing failed while waiting for a backend")
                }
            },
            None => info!(openid, "dry-run: would send custom/typing while the backend works"),
        }
    }

    /// Commits the answer (with the replies that followed the forward) and settles the
    /// forward. Returns the passive reply for the waiting deliveries (when `claimed`) and
    /// whether the answer is committed.
    async fn settle(
        &self,
        record: &ForwardRecord,
        request: &ForwardRequest,
        answer: &Answer,
        claimed: bool,
    ) -> (Option<PassiveReply>, bool) {
        let tail: Vec<PlannedAction> = serde_json::from_str(&record.tail).unwrap_or_default();
        let mut actions = answer.replies.clone();
        actions.extend(tail);
        let now_ms = self.clock.now_ms();
        let transfer_allowed = request.push.msgtype != "event";
        let super::Plan { mut passive, planned, dropped, splits } = super::plan(
            Evaluation { fired: Vec::new(), actions },
            // As for a push's own replies (`pipeline::terms`): passive with passive_first, or
            // when custom/send is not allowed (the passive reply is then the only way).
            claimed && (self.passive_first || !self.customer_service.allowed()),
            WindowEffect::None,
            transfer_allowed,
            self.delivery.max_text_bytes,
        );
        if !claimed && passive.take().is_some() {
            // Only a transfer is passive without passive_first: nobody waits for it now.
            warn!(id = %record.id, "the answer transfers to human service, but the push was already answered; dropped");
            self.metrics.drop_message("transfer_too_late");
        }
        for reason in dropped {
            warn!(id = %record.id, rule = %record.rule, reason,
                "a reply of the backend's answer is dropped");
            self.metrics.drop_message(reason);
        }
        for s in &splits {
            info!(rule = %s.rule, bytes = s.bytes, parts = s.parts, "long text split");
        }
        let commit = PushCommit {
            dedupe_key: answer_key(&record.push_key),
            openid: record.openid.clone(),
            effect: WindowEffect::None,
            received_at_ms: now_ms,
            passive,
            outbox: super::outbox_entries(planned, now_ms),
            terms: super::delivery_terms(claimed, &self.customer_service, &self.delivery),
            // No push record: the push was logged when it came; its answer's outcomes are.
            log: None,
        };
        let mut attempt = 0;
        loop {
            match self.store.settle_forward(&record.id, commit.clone()).await {
                Ok(CommitOutcome::Fresh { delivery, outbox_ids, .. }) => {
                    if !outbox_ids.is_empty() {
                        self.wake.notify_one();
                    }
                    if delivery.expired > 0 {
                        self.metrics.drop_messages(crate::store::EXPIRED, delivery.expired);
                    }
                    if delivery.undeliverable > 0 {
                        warn!(id = %record.id, backend = %record.backend, openid = %record.openid,
                            dropped = delivery.undeliverable,
                            "replies of the backend's answer only custom/send can carry (a menu, \
                             a mini program card, a message as a kf account) are dropped: the \
                             account may not call custom/send now (delivery.customer_service)");
                        self.metrics
                            .drop_messages(crate::delivery::UNDELIVERABLE, delivery.undeliverable);
                    }
                    if delivery.from_held > 0 {
                        self.metrics.held_delivered.inc_by(delivery.from_held);
                    }
                    info!(id = %record.id, backend = %record.backend, openid = %record.openid,
                        passive = delivery.passive.is_some(), planned = outbox_ids.len(),
                        held = delivery.held, "forwarded answer committed");
                    return (delivery.passive.filter(|_| claimed), true);
                }
                Ok(CommitOutcome::Duplicate { answer }) => {
                    info!(id = %record.id, "this forward's answer was committed before; not again");
                    return (answer.filter(|_| claimed), false);
                }
                Err(e) if attempt < 3 => {
                    warn!(id = %record.id, error = %e, "cannot commit a forwarded answer; retrying");
                    tokio::time::sleep(crate::backends::backoff(attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    error!(id = %record.id, error = %e,
                        "cannot commit a forwarded answer; the forward is called again at the next start");
                    return (None, false);
                }
            }
        }
    }
}

/// The request of a forward (interface §7.3), its `window` still empty (filled in when it
/// is called, from the window after the push).
pub fn request_for(intake: &Intake, split: &Split, account_name: &str) -> ForwardRequest {
    ForwardRequest {
        id: forward_id(intake.dedupe_key.as_str()),
        account: intake.account.clone(),
        account_name: account_name.to_string(),
        openid: intake.openid.as_str().to_string(),
        received_at: intake.received_at_ms.div_euclid(1000),
        rule: split.rule.clone(),
        push: PushFacts {
            captures: split.captures.iter().cloned().collect(),
            ..intake.facts.clone()
        },
        window: WindowFacts::default(),
    }
}

/// The request's `window` (interface §11.1) from the follower's window at `now` (seconds).
pub fn window_facts(w: Option<&Window>, now: i64, customer_service: bool) -> WindowFacts {
    match w {
        Some(w) => WindowFacts {
            open: w.is_open(now),
            quota_left: w.quota_left(now),
            expires_at: w.live_grants(now).map(|g| g.expires_at).max(),
            customer_service,
        },
        None => {
            WindowFacts { open: false, quota_left: Some(0), expires_at: None, customer_service }
        }
    }
}
