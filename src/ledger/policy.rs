//! The window policy, pure: what a push, a send and an API answer do to one follower's grants.
//! Every function takes `now` (Unix seconds) explicitly, so tests and property tests drive time
//! by hand and the stores (SQLite, Redis) apply exactly the same rules.
//!
//! The model (interface §5, protocol §4.2): one grant per trigger. A new trigger of a kind the
//! follower already holds replaces that grant (fresh times, nothing used) rather than adding to
//! it; whether WeChat accumulates overlapping quotas is undocumented (protocol §4.3), and
//! replacing is the reading that can never over-send. A send is allowed while some live grant
//! has quota left and is charged to the live grant that expires first, so the short menu/scan
//! windows are spent before the long message window that would outlive them.

use serde::{Deserialize, Serialize};

use crate::config::WindowConfig;
use crate::model::{OpenId, Trigger, WindowEffect};

/// One trigger's permission to send: `limit` messages (None = unlimited) until `expires_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub trigger: Trigger,
    /// When kefu received the push that opened it (Unix seconds).
    pub opened_at: i64,
    /// First second at which it no longer allows a send.
    pub expires_at: i64,
    /// Absent in JSON = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    pub used: u32,
}

impl Grant {
    pub fn is_live(&self, now: i64) -> bool {
        now < self.expires_at
    }
    pub fn has_quota(&self) -> bool {
        self.limit.is_none_or(|l| self.used < l)
    }
    /// Live with quota left: a send may be charged to it now.
    pub fn usable(&self, now: i64) -> bool {
        self.is_live(now) && self.has_quota()
    }
}

/// One follower's ledger entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Window {
    /// At most one per trigger, kept in trigger order so views are stable.
    pub grants: Vec<Grant>,
    /// Last known follow state; None until a push told us.
    pub subscribed: Option<bool>,
}

/// Why a send was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum DenyReason {
    /// No live grant: never opened, expired, or closed by a 45015.
    #[error(
        "the follower's customer-service window is closed (no interaction within the window \
         duration); wait for the follower to message the account again"
    )]
    Closed,
    /// The follower unsubscribed and has not interacted since.
    #[error(
        "the follower has unsubscribed; messages can be sent again only after they follow again"
    )]
    Unsubscribed,
    /// Live grants exist but every one has used its quota.
    #[error(
        "the follower's customer-service quota is used up (45047 territory); wait for the \
         follower's next message, which opens a fresh quota"
    )]
    Exhausted,
}

/// The answer to "may one more customer-service message be sent now?".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// Charged to the grant opened by `trigger` at `opened_at`; pass both to a refund so it
    /// cannot land on a newer grant of the same trigger.
    Allowed {
        trigger: Trigger,
        opened_at: i64,
    },
    Denied {
        reason: DenyReason,
    },
}

impl ChargeOutcome {
    pub fn is_allowed(&self) -> bool {
        matches!(self, ChargeOutcome::Allowed { .. })
    }
}

/// The ledger entry as operators see it (interface §5); field order is the documented JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowView {
    pub openid: OpenId,
    /// A customer-service message may be sent now.
    pub open: bool,
    /// null when kefu has never seen a push that tells.
    pub subscribed: Option<bool>,
    /// Live grants only (expired ones are history, not permission).
    pub grants: Vec<Grant>,
    /// Planned messages not yet sent (pending or in flight).
    pub pending: u64,
    /// Answers held for the follower's next push (interface §7.7).
    #[serde(default)]
    pub held: u64,
}

impl WindowView {
    /// The same view with the follower's held-answer count.
    pub fn with_held(mut self, held: u64) -> Self {
        self.held = held;
        self
    }
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

impl Window {
    /// Applies what a push does to the window. Any interaction but a payment proves the
    /// follower follows (only followers can message, click the menu or scan into a chat);
    /// a payment can come from a non-follower, so it leaves `subscribed` as it was.
    pub fn apply(&mut self, effect: WindowEffect, now: i64, cfg: &WindowConfig) {
        match effect {
            WindowEffect::Open(t) => self.open(t, now, cfg),
            WindowEffect::Follow(t) => {
                self.open(t, now, cfg);
                self.subscribed = Some(true);
            }
            WindowEffect::CloseAll => self.unsubscribe(),
            WindowEffect::None => {}
        }
    }

    /// Opens (or replaces) the grant of `trigger`, with the limit and duration configured now.
    pub fn open(&mut self, trigger: Trigger, now: i64, cfg: &WindowConfig) {
        let rule = cfg.rule(trigger);
        let grant = Grant {
            trigger,
            opened_at: now,
            expires_at: now.saturating_add(secs(rule.duration)),
            limit: rule.limit,
            used: 0,
        };
        self.prune(now);
        match self.grants.binary_search_by_key(&trigger, |g| g.trigger) {
            Ok(i) => self.grants[i] = grant,
            Err(i) => self.grants.insert(i, grant),
        }
        if trigger != Trigger::Payment {
            self.subscribed = Some(true);
        }
    }

    /// Unsubscribe: every grant closes.
    pub fn unsubscribe(&mut self) {
        self.grants.clear();
        self.subscribed = Some(false);
    }

    /// A 45015 answer: WeChat says the window is closed, whatever we counted.
    pub fn close(&mut self) {
        self.grants.clear();
    }

    /// A 45047 answer: WeChat says the quota is spent. Limited grants are marked used up (they
    /// stay visible until they expire); an unlimited grant cannot be used up, so it closes.
    pub fn exhaust(&mut self, now: i64) {
        self.grants.retain(|g| g.is_live(now) && g.limit.is_some());
        for g in &mut self.grants {
            if let Some(l) = g.limit {
                g.used = g.used.max(l);
            }
        }
    }

    /// The grant a send would be charged to now: the usable one that expires first (ties by
    /// trigger order, for determinism).
    pub fn chargeable(&self, now: i64) -> Option<&Grant> {
        self.grants.iter().filter(|g| g.usable(now)).min_by_key(|g| (g.expires_at, g.trigger))
    }

    /// Charges one send, or says why it may not happen.
    pub fn charge(&mut self, now: i64) -> ChargeOutcome {
        let pick = self
            .grants
            .iter_mut()
            .filter(|g| g.usable(now))
            .min_by_key(|g| (g.expires_at, g.trigger));
        match pick {
            Some(g) => {
                g.used += 1;
                ChargeOutcome::Allowed { trigger: g.trigger, opened_at: g.opened_at }
            }
            None => ChargeOutcome::Denied { reason: self.deny_reason(now) },
        }
    }

    fn deny_reason(&self, now: i64) -> DenyReason {
        if self.grants.iter().any(|g| g.is_live(now)) {
            DenyReason::Exhausted
        } else if self.subscribed == Some(false) {
            DenyReason::Unsubscribed
        } else {
            DenyReason::Closed
        }
    }

    /// Gives back a charge for a send WeChat refused for a reason that is not the window's
    /// (bad media id, content too long...). Only the grant charged is credited (identified by
    /// trigger and opening second); if it has since been replaced or closed there is nothing
    /// to give back. A replacement opened within the same second is indistinguishable and
    /// takes the credit: at worst one extra send on a grant the follower renewed that very
    /// second. Returns whether a charge was returned.
    pub fn refund(&mut self, trigger: Trigger, opened_at: i64) -> bool {
        match self.grants.iter_mut().find(|g| g.trigger == trigger && g.opened_at == opened_at) {
            Some(g) if g.used > 0 => {
                g.used -= 1;
                true
            }
            _ => false,
        }
    }

    /// Whether a send may happen now.
    pub fn is_open(&self, now: i64) -> bool {
        self.grants.iter().any(|g| g.usable(now))
    }

    pub fn live_grants(&self, now: i64) -> impl Iterator<Item = &Grant> {
        self.grants.iter().filter(move |g| g.is_live(now))
    }

    /// Drops expired grants; returns whether anything was dropped.
    pub fn prune(&mut self, now: i64) -> bool {
        let before = self.grants.len();
        self.grants.retain(|g| g.is_live(now));
        self.grants.len() != before
    }

    /// The earliest expiry among the grants still live at `now`.
    pub fn next_expiry(&self, now: i64) -> Option<i64> {
        self.live_grants(now).map(|g| g.expires_at).min()
    }

    /// Nothing worth keeping in memory: no grants and no known follow state.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty() && self.subscribed.is_none()
    }

    /// The operator view at `now`.
    pub fn view(&self, openid: OpenId, now: i64, pending: u64) -> WindowView {
        WindowView {
            openid,
            open: self.is_open(now),
            subscribed: self.subscribed,
            grants: self.live_grants(now).copied().collect(),
            pending,
            held: 0,
        }
    }

    /// How many more messages the live grants allow at `now`: `None` when one is unlimited.
    /// (Grants expire at different times, so a delayed message may find fewer; the charge at
    /// its send decides.)
    pub fn quota_left(&self, now: i64) -> Option<u64> {
        let mut left = 0u64;
        for g in self.live_grants(now) {
            match g.limit {
                None => return None,
                Some(l) => left += u64::from(l.saturating_sub(g.used)),
            }
        }
        Some(left)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WindowRule;
    use proptest::prelude::*;
    use std::time::Duration;

    const T0: i64 = 1_700_000_000;

    fn cfg() -> WindowConfig {
        WindowConfig::default()
    }

    fn oid() -> OpenId {
        OpenId::parse("oUser1").unwrap()
    }

    #[test]
    fn message_grant_allows_five_then_denies() {
        let mut w = Window::default();
        w.apply(WindowEffect::Open(Trigger::Message), T0, &cfg());
        for _ in 0..5 {
            assert_eq!(
                w.charge(T0 + 10),
                ChargeOutcome::Allowed { trigger: Trigger::Message, opened_at: T0 }
            );
        }
        assert_eq!(w.charge(T0 + 10), ChargeOutcome::Denied { reason: DenyReason::Exhausted });
        assert_eq!(w.grants[0].used, 5);
    }

    #[test]
    fn grant_expires_at_its_duration() {
        let mut w = Window::default();
        w.open(Trigger::Menu, T0, &cfg());
        assert!(w.is_open(T0 + 59));
        assert!(!w.is_open(T0 + 60));
        assert_eq!(w.charge(T0 + 60), ChargeOutcome::Denied { reason: DenyReason::Closed });
    }

    #[test]
    fn earliest_expiring_grant_is_charged_first() {
        let mut w = Window::default();
        w.open(Trigger::Message, T0, &cfg());
        w.open(Trigger::Menu, T0 + 5, &cfg());
        let c: Vec<_> = (0..5).map(|_| w.charge(T0 + 6)).collect();
        let menu = ChargeOutcome::Allowed { trigger: Trigger::Menu, opened_at: T0 + 5 };
        let msg = ChargeOutcome::Allowed { trigger: Trigger::Message, opened_at: T0 };
        assert_eq!(c, vec![menu, menu, menu, msg, msg]);
    }

    #[test]
    fn same_trigger_replaces_grant() {
        let mut w = Window::default();
        w.open(Trigger::Message, T0, &cfg());
        w.charge(T0 + 1);
        w.charge(T0 + 1);
        w.open(Trigger::Message, T0 + 100, &cfg());
        assert_eq!(
            w.grants,
            vec![Grant {
                trigger: Trigger::Message,
                opened_at: T0 + 100,
                expires_at: T0 + 100 + 48 * 3600,
                limit: Some(5),
                used: 0
            }]
        );
    }

    #[test]
    fn unsubscribe_closes_and_payment_keeps_follow_state() {
        let mut w = Window::default();
        w.open(Trigger::Subscribe, T0, &cfg());
        assert_eq!(w.subscribed, Some(true));
        w.apply(WindowEffect::CloseAll, T0 + 1, &cfg());
        assert_eq!(w.subscribed, Some(false));
        assert!(w.grants.is_empty());
        assert_eq!(w.charge(T0 + 2), ChargeOutcome::Denied { reason: DenyReason::Unsubscribed });
        w.open(Trigger::Payment, T0 + 3, &cfg());
        assert_eq!(w.subscribed, Some(false));
        assert_eq!(w.grants[0].limit, None);
        // Following again through a payment QR: the payment grant, and subscribed again.
        w.apply(WindowEffect::Follow(Trigger::Payment), T0 + 4, &cfg());
        assert_eq!(w.subscribed, Some(true));
        assert_eq!(
            (w.grants.len(), w.grants[0].trigger, w.grants[0].opened_at),
            (1, Trigger::Payment, T0 + 4)
        );
    }

    #[test]
    fn errors_45015_and_45047() {
        let mut w = Window::default();
        w.open(Trigger::Message, T0, &cfg());
        w.open(Trigger::Payment, T0, &cfg());
        w.charge(T0);
        w.exhaust(T0 + 1);
        assert_eq!(w.grants.len(), 1, "the unlimited payment grant closes");
        assert_eq!(w.grants[0].used, 5);
        assert_eq!(w.charge(T0 + 1), ChargeOutcome::Denied { reason: DenyReason::Exhausted });
        w.close();
        assert!(w.grants.is_empty());
        assert_eq!(w.charge(T0 + 1), ChargeOutcome::Denied { reason: DenyReason::Closed });
    }

    #[test]
    fn refund_hits_only_the_charged_grant() {
        let mut w = Window::default();
        w.open(Trigger::Message, T0, &cfg());
        let ChargeOutcome::Allowed { trigger, opened_at } = w.charge(T0) else { panic!() };
        assert!(w.refund(trigger, opened_at));
        assert_eq!(w.grants[0].used, 0);
        assert!(!w.refund(trigger, opened_at), "nothing left to refund");
        w.charge(T0);
        w.open(Trigger::Message, T0 + 10, &cfg());
        w.charge(T0 + 10);
        assert!(!w.refund(trigger, opened_at), "the charged grant was replaced");
        assert_eq!(w.grants[0].used, 1);
    }

    #[test]
    fn quota_left_sums_live_grants() {
        let mut w = Window::default();
        assert_eq!(w.quota_left(T0), Some(0));
        w.open(Trigger::Message, T0, &cfg());
        w.open(Trigger::Menu, T0, &cfg());
        w.charge(T0);
        // The charge went to the menu grant, which expires first.
        assert_eq!(w.quota_left(T0), Some(5 + 2));
        assert_eq!(w.quota_left(T0 + 120), Some(5), "the menu grant expired");
        w.open(Trigger::Payment, T0, &cfg());
        assert_eq!(w.quota_left(T0), None, "a payment grant is unlimited");
    }

    #[test]
    fn view_json_is_the_documented_shape() {
        let mut w = Window::default();
        w.open(Trigger::Message, 1700000001, &cfg());
        w.open(Trigger::Payment, 1700000001, &cfg());
        w.charge(1700000002);
        let v = w.view(oid(), 1700000002, 1);
        assert_eq!(
            serde_json::to_string(&v).unwrap(),
            r#"{"openid":"oUser1","open":true,"subscribed":true,"grants":[{"trigger":"message","opened_at":1700000001,"expires_at":1700172801,"limit":5,"used":1},{"trigger":"payment","opened_at":1700000001,"expires_at":1700172801,"used":0}],"pending":1,"held":0}"#
        );
        let never = Window::default().view(oid(), T0, 0);
        assert_eq!(
            serde_json::to_string(&never).unwrap(),
            r#"{"openid":"oUser1","open":false,"subscribed":null,"grants":[],"pending":0,"held":0}"#
        );
    }

    // ---- property tests -------------------------------------------------------------------

    #[derive(Clone, Debug)]
    enum Op {
        Open(Trigger),
        Charge,
        Advance(i64),
        Unsubscribe,
        Close,
        Exhaust,
        RefundLast,
    }

    fn trigger() -> impl Strategy<Value = Trigger> {
        prop::sample::select(Trigger::ALL.to_vec())
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => trigger().prop_map(Op::Open),
            6 => Just(Op::Charge),
            3 => (0i64..200_000).prop_map(Op::Advance),
            1 => Just(Op::Unsubscribe),
            1 => Just(Op::Close),
            1 => Just(Op::Exhaust),
            1 => Just(Op::RefundLast),
        ]
    }

    fn small_cfg() -> impl Strategy<Value = WindowConfig> {
        let rule = (prop::option::of(0u32..6), 1u64..100_000)
            .prop_map(|(limit, secs)| WindowRule { limit, duration: Duration::from_secs(secs) });
        (rule.clone(), rule.clone(), rule.clone(), rule.clone(), rule).prop_map(
            |(message, menu, subscribe, scan, payment)| WindowConfig {
                message,
                menu,
                subscribe,
                scan,
                payment,
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Never past a limit, never after expiry, earliest-expiring grant charged first,
        /// unsubscribe closes, and a grant's successful charges never exceed its limit.
        #[test]
        fn policy_invariants(cfg in small_cfg(), ops in prop::collection::vec(op(), 1..80)) {
            let mut w = Window::default();
            let mut now = T0;
            let mut last: Option<(Trigger, i64)> = None;
            // Net charges per (trigger, opened_at) as an outside observer counts them.
            let mut net: std::collections::HashMap<(Trigger, i64), i64> = Default::default();
            let mut closed_since_unsub = false;
            for op in ops {
                match op {
                    Op::Open(t) => {
                        w.open(t, now, &cfg);
                        // A replacement within the same second reuses the key (see `refund`).
                        net.remove(&(t, now));
                        closed_since_unsub = false;
                    }
                    Op::Advance(d) => now += d,
                    Op::Unsubscribe => {
                        w.unsubscribe();
                        closed_since_unsub = true;
                    }
                    Op::Close => w.close(),
                    Op::Exhaust => w.exhaust(now),
                    Op::RefundLast => {
                        if let Some((t, at)) = last.take()
                            && w.refund(t, at) {
                                *net.entry((t, at)).or_default() -= 1;
                            }
                    }
                    Op::Charge => {
                        let best = w
                            .grants
                            .iter()
                            .filter(|g| g.usable(now))
                            .map(|g| g.expires_at)
                            .min();
                        let before = w.clone();
                        match w.charge(now) {
                            ChargeOutcome::Allowed { trigger, opened_at } => {
                                prop_assert!(!closed_since_unsub, "charged after unsubscribe");
                                let g = before
                                    .grants
                                    .iter()
                                    .find(|g| g.trigger == trigger && g.opened_at == opened_at)
                                    .expect("charged grant exists");
                                prop_assert!(now < g.expires_at, "charged after expiry");
                                prop_assert!(g.has_quota(), "charged past the limit");
                                prop_assert_eq!(Some(g.expires_at), best, "not the earliest");
                                *net.entry((trigger, opened_at)).or_default() += 1;
                                last = Some((trigger, opened_at));
                            }
                            ChargeOutcome::Denied { .. } => {
                                prop_assert_eq!(best, None, "denied with a usable grant");
                                prop_assert_eq!(&w, &before, "a denial changed the window");
                            }
                        }
                    }
                }
                for g in &w.grants {
                    if let Some(l) = g.limit {
                        prop_assert!(g.used <= l, "used {} > limit {}", g.used, l);
                        let n = net.get(&(g.trigger, g.opened_at)).copied().unwrap_or(0);
                        prop_assert!(n <= i64::from(l), "{} charges on a limit of {}", n, l);
                    }
                }
                let mut triggers: Vec<_> = w.grants.iter().map(|g| g.trigger).collect();
                triggers.dedup();
                prop_assert_eq!(triggers.len(), w.grants.len(), "two grants of one trigger");
                prop_assert!(w.grants.windows(2).all(|p| p[0].trigger < p[1].trigger));
            }
        }
    }
}
