//! Delivery: one rule for every answer that is ready later than the push (interface §7.4) and
//! the split of long text (§7.5, [`split`]).
//!
//! An answer goes out as the push's passive reply, else through `custom/send` charged to the
//! follower's window, else it is **held**: kept in the follower's mailbox (a FIFO in the store,
//! shared through Redis when configured) until the follower's next push, whose passive reply
//! it becomes (that costs no quota). The others held follow through `custom/send` when that
//! push opens a grant and the account may call it, then come that push's own answers; what the
//! window still cannot carry stays held, and the last message sent ends with `more_text`. A held
//! answer not delivered within `hold_for` is dropped with reason `expired`.
//!
//! [`assign`] is that decision for one push, a pure function: the stores call it inside the
//! transaction that records the push, with the mailbox and the window as that transaction sees
//! them, so what is held, released and answered is decided and written atomically. The sender
//! holds in the same way when the window refuses a message at its time
//! (`Store::claim_send`), and [`CustomerService`] remembers that WeChat refused the account
//! the customer-service API (48001/48004 under `customer_service = "auto"`).
//!
//! Why here and not in the pipeline: the stores (below the pipeline) run this inside their
//! commit, so it must sit under them, next to the ledger's policy, with no I/O.

pub mod split;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use serde::{Deserialize, Serialize};

pub use crate::config::CustomerServiceMode;
use crate::model::{OpenId, OutMessage, OutboxAction, PassiveReply, PlannedAction};

/// One planned customer-service message (or typing indicator) of a push, as the pipeline
/// hands it to `Store::commit_push`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewOutboxEntry {
    pub rule: String,
    /// Position within the push's plan (rule order), so a follower's messages leave in order.
    pub seq: u32,
    pub action: PlannedAction<OutboxAction>,
    /// When it may be sent (Unix ms): receipt time plus the reply's delay.
    pub due_at_ms: i64,
}

/// An answer waiting in a follower's mailbox for their next push (interface §7.4.3). Its
/// action is always a message (`OutboxAction::Send`): a typing indicator is never held.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldAnswer {
    /// Unique within the store (SQLite: the row id; Redis: a random id).
    pub id: i64,
    pub openid: OpenId,
    pub rule: String,
    pub action: PlannedAction<OutboxAction>,
    /// The dedupe key of the push that planned it.
    pub push_key: String,
    /// Why it could not be sent when it was ready (the window's refusal, WeChat's errcode,
    /// `customer_service` off, ...).
    pub reason: String,
    /// When it was held (Unix ms).
    pub held_at_ms: i64,
    /// When it is dropped with reason `expired` if still held (Unix ms): held time plus
    /// `delivery.hold_for`.
    pub expires_at_ms: i64,
}

/// The passive answer the push's own rules chose, and the rule that planned it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnPassive {
    pub rule: String,
    pub reply: PassiveReply,
    /// Who wrote it (a rule, or a backend's answer in time for the HTTP answer), for the
    /// conversation log.
    pub source: crate::model::Source,
}

impl OwnPassive {
    /// A text answer planned by `rule`.
    pub fn text(rule: &str, content: impl Into<String>) -> Self {
        OwnPassive {
            rule: rule.to_string(),
            reply: PassiveReply::text(content),
            source: crate::model::Source::Rule,
        }
    }
}

/// What [`assign`] needs to know about the push beyond its plan. The default: a passive
/// slot, `custom/send` allowed, no `more_text`, held answers kept 48 h.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    /// The push can carry a passive reply (a message or an event WeChat waits on; not a
    /// payment notification), so a held answer may become its HTTP answer.
    pub passive_slot: bool,
    /// The account may call `custom/send` now ([`CustomerService::allowed`]).
    pub customer_service: bool,
    /// Appended to the last message of this push's delivery when answers stay held.
    pub more_text: String,
    /// An answer to this push is still being prepared (a backend's call) and the account may
    /// not send it through `custom/send`: it will be held, so when a held answer is this
    /// push's passive reply, that reply ends with `more_text` too.
    pub answer_coming: bool,
    /// `delivery.hold_for` in ms.
    pub hold_for_ms: i64,
    /// Recorded on a message this push's commit holds ([`HELD_FOR_QUOTA`], or why the
    /// account may not call `custom/send`: [`CustomerService::off_reason`]).
    pub hold_reason: String,
}

/// The reason recorded on a held answer dropped because `hold_for` passed.
pub const EXPIRED: &str = "expired";

/// Why an answer was dropped instead of held: it could only go through `custom/send` (a menu,
/// a mini program card, a message as a named kf account...), which the account may not call.
pub const UNDELIVERABLE: &str = "needs_custom_send";

/// Why the push commit held one of the push's own messages, when the account may call
/// `custom/send`.
pub const HELD_FOR_QUOTA: &str = "the window's quota cannot carry it now";

impl Default for Terms {
    fn default() -> Self {
        Terms {
            passive_slot: true,
            customer_service: true,
            more_text: String::new(),
            answer_coming: false,
            hold_for_ms: 48 * 3_600_000,
            hold_reason: HELD_FOR_QUOTA.to_string(),
        }
    }
}

/// The decision for one push: its HTTP answer, what goes to the outbox now, what is held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Assignment {
    /// The final HTTP answer (stored so a redelivery gets the same one).
    pub passive: Option<PassiveReply>,
    /// The held answer that became the passive reply.
    pub passive_from_held: Option<i64>,
    /// Held answers moved to the outbox now (they lead `outbox`, in mailbox order).
    pub released: Vec<i64>,
    /// Held answers past `expires_at_ms`: dropped with reason `expired`.
    pub expired: Vec<i64>,
    /// Held answers no passive reply can carry while the account may not call `custom/send`:
    /// dropped with reason [`UNDELIVERABLE`].
    pub undeliverable: Vec<i64>,
    /// This push's own messages dropped for the same reason.
    pub undeliverable_own: u64,
    /// The outbox entries to write, in sending order, renumbered `seq` 0, 1, ...
    pub outbox: Vec<NewOutboxEntry>,
    /// This push's own messages that the window cannot carry: to hold, in order, after the
    /// answers still held.
    pub hold: Vec<NewOutboxEntry>,
}

impl Assignment {
    /// Held answers delivered by this push (passively or released to the outbox).
    pub fn delivered_from_held(&self) -> u64 {
        (self.released.len() + usize::from(self.passive_from_held.is_some())) as u64
    }
}

/// Decides a push's delivery (interface §7.4): the oldest held answer a passive reply can
/// carry becomes the passive reply (the push's own passive answer then goes through
/// `custom/send` in its turn); the other held answers, then the push's own messages, go to
/// the outbox while `capacity` (messages the window can still carry: `None` = no limit, 0 when
/// the account may not call `custom/send`) lasts; from the first one that does not fit, every
/// later message is held, so a follower never receives a later answer before an earlier one.
/// A transfer to a human agent stays the passive answer whatever is held.
///
/// `held` is the mailbox oldest first; `received_at_ms` is the push's receipt time (expiry
/// and the due time of released answers).
pub fn assign(
    held: &[HeldAnswer],
    own_passive: Option<OwnPassive>,
    own: Vec<NewOutboxEntry>,
    capacity: Option<u64>,
    terms: &Terms,
    received_at_ms: i64,
) -> Assignment {
    let mut out = Assignment::default();
    let mut live: Vec<&HeldAnswer> = Vec::with_capacity(held.len());
    for h in held {
        if h.expires_at_ms <= received_at_ms {
            out.expired.push(h.id);
        } else {
            live.push(h);
        }
    }

    // Without custom/send only what a passive reply can carry will ever reach the follower:
    // the rest is dropped now, not held forever at the head of the mailbox.
    if !terms.customer_service {
        live.retain(|h| {
            let deliverable = passive_message(&h.action).is_some();
            if !deliverable {
                out.undeliverable.push(h.id);
            }
            deliverable
        });
    }

    // The passive slot: a transfer keeps it; else the oldest held answer if a passive reply
    // can carry it (if it cannot, nothing is passive this time, so nothing overtakes it).
    let mut own_front: Option<NewOutboxEntry> = None;
    match own_passive {
        Some(p @ OwnPassive { reply: PassiveReply::Transfer { .. }, .. }) => {
            out.passive = Some(p.reply);
        }
        own_passive if terms.passive_slot && !live.is_empty() => {
            if let Some(message) = passive_message(&live[0].action) {
                out.passive = Some(PassiveReply::Message { message: message.clone() });
                out.passive_from_held = Some(live.remove(0).id);
            }
            // The push's own passive answer follows through custom/send in its turn.
            if let Some(OwnPassive { rule, reply: PassiveReply::Message { message }, source }) =
                own_passive
            {
                own_front = Some(NewOutboxEntry {
                    rule: rule.clone(),
                    seq: 0,
                    action: PlannedAction {
                        rule,
                        action: OutboxAction::Send { message },
                        delay: std::time::Duration::ZERO,
                        kf_account: None,
                        source,
                    },
                    due_at_ms: received_at_ms,
                });
            }
        }
        own_passive => out.passive = own_passive.map(|p| p.reply),
    }

    // Everything else in order: held answers first, then the push's own.
    let mut left = if terms.customer_service { capacity } else { Some(0) };
    let mut holding = false;
    let mut fits = |is_message: bool| -> bool {
        if holding {
            return false;
        }
        if !is_message {
            return terms.customer_service; // typing costs no quota
        }
        match &mut left {
            None => true,
            Some(0) => {
                holding = true;
                false
            }
            Some(n) => {
                *n -= 1;
                true
            }
        }
    };
    for h in live {
        if fits(true) {
            out.released.push(h.id);
            out.outbox.push(NewOutboxEntry {
                rule: h.rule.clone(),
                seq: 0,
                action: h.action.clone(),
                due_at_ms: received_at_ms,
            });
        }
    }
    for e in own_front.into_iter().chain(own) {
        let is_message = matches!(e.action.action, OutboxAction::Send { .. });
        if is_message && !terms.customer_service && passive_message(&e.action).is_none() {
            out.undeliverable_own += 1; // could only ever go through custom/send
            continue;
        }
        if fits(is_message) {
            out.outbox.push(e);
        } else if is_message {
            out.hold.push(e);
        } // a typing indicator before held messages shows nothing: left out
    }
    for (seq, e) in out.outbox.iter_mut().enumerate() {
        e.seq = seq as u32;
    }
    let still_held = held.len()
        - out.expired.len()
        - out.undeliverable.len()
        - out.delivered_from_held() as usize;
    let coming = terms.answer_coming && out.passive_from_held.is_some();
    if (still_held > 0 || !out.hold.is_empty() || coming) && !terms.more_text.is_empty() {
        append_more_text(&mut out, &terms.more_text);
    }
    out
}

/// `more_text` on the last message this push delivers, if it is text (interface §11.3: that
/// message may exceed `max_text_bytes` by the length of `more_text`).
fn append_more_text(out: &mut Assignment, more: &str) {
    let last_sent = out.outbox.iter_mut().rev().find_map(|e| match &mut e.action.action {
        OutboxAction::Send { message } => Some(message),
        OutboxAction::Typing => None,
    });
    let target = match last_sent {
        Some(m) => Some(m),
        None => match &mut out.passive {
            Some(PassiveReply::Message { message }) => Some(message),
            _ => None,
        },
    };
    if let Some(OutMessage::Text { content }) = target {
        content.push_str(more);
    }
}

/// The message of a held action if a passive reply can carry it (interface §6.8: a
/// passive-capable kind, not sent as a named kf account, not naming a media file, whose id
/// only the sender resolves: interface §9).
fn passive_message(a: &PlannedAction<OutboxAction>) -> Option<&OutMessage> {
    match &a.action {
        OutboxAction::Send { message }
            if message.passive_capable()
                && a.kf_account.is_none()
                && !crate::media::names_file(message) =>
        {
            Some(message)
        }
        _ => None,
    }
}

/// Whether the account may call `custom/send` (`delivery.customer_service`), and what WeChat
/// said about it: under `"auto"` a 48001 or 48004 answer turns it off until restart (interface
/// §11.3), with one warning.
#[derive(Debug)]
pub struct CustomerService {
    mode: CustomerServiceMode,
    refused: AtomicBool,
    code: AtomicI64,
}

/// What a `custom/send` error means for the message it refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnRefusal {
    /// Hold the message for the follower's next push.
    Hold,
    /// A failure of this message alone.
    Fail,
}

impl CustomerService {
    pub fn new(mode: CustomerServiceMode) -> Self {
        CustomerService { mode, refused: AtomicBool::new(false), code: AtomicI64::new(0) }
    }

    pub fn mode(&self) -> CustomerServiceMode {
        self.mode
    }

    /// May `custom/send` be called now.
    pub fn allowed(&self) -> bool {
        match self.mode {
            CustomerServiceMode::On => true,
            CustomerServiceMode::Off => false,
            CustomerServiceMode::Auto => !self.refused.load(Ordering::Relaxed),
        }
    }

    /// Why nothing goes through `custom/send` for this account now (for held answers' reasons
    /// and logs): the errcode WeChat answered under `"auto"`, or `"off"` in the config.
    pub fn off_reason(&self) -> String {
        match self.refused_with() {
            Some(code) => format!(
                "WeChat answered {code}: this account may not call custom/send (certify it; \
                 delivery.customer_service = \"auto\")"
            ),
            None => "customer-service messages are off for this account \
                     (delivery.customer_service = \"off\")"
                .to_string(),
        }
    }

    /// The errcode that turned `"auto"` off, if one did.
    pub fn refused_with(&self) -> Option<i64> {
        self.refused.load(Ordering::Relaxed).then(|| self.code.load(Ordering::Relaxed))
    }

    /// WeChat answered a `custom/send` with `errcode`. 45015 (window closed) and 45047 (quota
    /// used up) hold the message, as the follower's remaining ones are held by the ledger;
    /// 48001/48004 under `"auto"` hold it and turn the account's customer-service calls off,
    /// warning once. Anything else is this message's failure.
    pub fn on_refusal(&self, errcode: Option<i64>) -> OnRefusal {
        match errcode {
            Some(45015 | 45047) => OnRefusal::Hold,
            Some(code @ (48001 | 48004)) if self.mode == CustomerServiceMode::Auto => {
                self.code.store(code, Ordering::Relaxed);
                if !self.refused.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        errcode = code,
                        "WeChat answered {code} to custom/send: this account may not use the \
                         customer-service API ({}). kefu now holds every answer it cannot send \
                         passively and delivers it as the passive reply to the follower's next \
                         message, until restart. Fix: certify the account (微信认证) in the MP \
                         admin, or set delivery.customer_service = \"off\" to say so in the config",
                        if code == 48001 {
                            "48001: api unauthorized, the account is not certified for it"
                        } else {
                            "48004: the API is banned for this account"
                        }
                    );
                }
                OnRefusal::Hold
            }
            _ => OnRefusal::Fail,
        }
    }
}

#[cfg(test)]
mod tests;
