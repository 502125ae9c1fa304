//! Prometheus metrics (issue 7): one registry per running app (not a global, so several apps in
//! one test process do not count into each other), rendered in the text exposition format.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PushLabels {
    /// text, image, ..., or the event name.
    pub kind: String,
    /// fresh, duplicate, ignored, error.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RuleLabels {
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SendLabels {
    pub msgtype: String,
    /// sent, failed, dry_run, passive.
    pub outcome: String,
    /// WeChat errcode for failures, "0" otherwise.
    pub errcode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

/// Every metric kefu exports.
pub struct Metrics {
    registry: Registry,
    pub pushes: Family<PushLabels, Counter>,
    pub refusals: Family<ReasonLabels, Counter>,
    pub answer_seconds: Histogram,
    pub rule_hits: Family<RuleLabels, Counter>,
    pub sends: Family<SendLabels, Counter>,
    pub dropped: Family<ReasonLabels, Counter>,
    pub open_windows: Gauge,
    pub outbox_depth: Gauge,
    pub token_refreshes: Counter,
    pub rule_reloads: Family<OutcomeLabels, Counter>,
    pub payments: Family<OutcomeLabels, Counter>,
    reload_sync: parking_lot::Mutex<()>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kefu");
        let pushes = Family::<PushLabels, Counter>::default();
        registry.register("pushes", "Pushes received, by kind and outcome", pushes.clone());
        let refusals = Family::<ReasonLabels, Counter>::default();
        registry.register("refusals", "Pushes refused, by reason", refusals.clone());
        // Buckets from 50 µs to ~1.6 s: the answer budget is 5 s, the target p99 a few ms.
        let answer_seconds = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.00005, 2.0, 16),
        );
        registry.register(
            "answer_seconds",
            "Time from receiving a push to answering it",
            answer_seconds.clone(),
        );
        let rule_hits = Family::<RuleLabels, Counter>::default();
        registry.register("rule_hits", "Rules fired, by rule name", rule_hits.clone());
        let sends = Family::<SendLabels, Counter>::default();
        registry.register(
            "sends",
            "Customer-service messages, by msgtype, outcome and errcode",
            sends.clone(),
        );
        let dropped = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "dropped_messages",
            "Planned messages dropped, by reason",
            dropped.clone(),
        );
        let open_windows = Gauge::default();
        registry.register(
            "open_windows",
            "Followers whose window is open (a live grant with quota left)",
            open_windows.clone(),
        );
        let outbox_depth = Gauge::default();
        registry.register("outbox_depth", "Planned messages not yet sent", outbox_depth.clone());
        let token_refreshes = Counter::default();
        registry.register(
            "token_refreshes",
            "Access tokens fetched from WeChat",
            token_refreshes.clone(),
        );
        let rule_reloads = Family::<OutcomeLabels, Counter>::default();
        registry.register("rule_reloads", "Rule reloads, ok or failed", rule_reloads.clone());
        let payments = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "payments",
            "Verified payment notifications, new or duplicate",
            payments.clone(),
        );
        Metrics {
            registry,
            pushes,
            refusals,
            answer_seconds,
            rule_hits,
            sends,
            dropped,
            open_windows,
            outbox_depth,
            token_refreshes,
            rule_reloads,
            payments,
            reload_sync: parking_lot::Mutex::new(()),
        }
    }

    pub fn push(&self, kind: &str, outcome: &str) {
        self.pushes.get_or_create(&PushLabels { kind: kind.into(), outcome: outcome.into() }).inc();
    }

    pub fn refusal(&self, reason: &str) {
        self.refusals.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }

    pub fn rule_hit(&self, rule: &str) {
        self.rule_hits.get_or_create(&RuleLabels { rule: rule.into() }).inc();
    }

    pub fn send(&self, msgtype: &str, outcome: &str, errcode: i64) {
        self.sends
            .get_or_create(&SendLabels {
                msgtype: msgtype.into(),
                outcome: outcome.into(),
                errcode: errcode.to_string(),
            })
            .inc();
    }

    pub fn drop_message(&self, reason: &str) {
        self.drop_messages(reason, 1);
    }

    pub fn drop_messages(&self, reason: &str, n: u64) {
        self.dropped.get_or_create(&ReasonLabels { reason: reason.into() }).inc_by(n);
    }

    pub fn reload(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.rule_reloads.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc();
    }

    /// Brings the reload counters up to the rule handle's own counts (the watcher reloads
    /// without knowing about metrics).
    pub fn sync_reloads(&self, status: &crate::rules::ReloadStatus) {
        let _one_at_a_time = self.reload_sync.lock();
        for (outcome, total) in [("ok", status.reloads), ("failed", status.failures)] {
            let c = self.rule_reloads.get_or_create(&OutcomeLabels { outcome: outcome.into() });
            let seen = c.get();
            if total > seen {
                c.inc_by(total - seen);
            }
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new();
        m.push("text", "fresh");
        m.push("text", "fresh");
        m.send("text", "failed", 45015);
        let text = m.render();
        assert!(text.contains("kefu_pushes_total{kind=\"text\",outcome=\"fresh\"} 2"), "{text}");
        assert!(
            text.contains(
                "kefu_sends_total{msgtype=\"text\",outcome=\"failed\",errcode=\"45015\"} 1"
            ),
            "{text}"
        );
    }
}
