//! Prometheus metrics (issue 7): one registry per running app (not a global, so several apps in
//! one test process do not count into each other), rendered in the format the scraper asks for
//! (issue 13): OpenMetrics 1.0.0 when its `Accept` names it, else the Prometheus text format
//! 0.0.4.
//!
//! prometheus-client encodes OpenMetrics only, so the 0.0.4 page is converted from it
//! ([`openmetrics_to_prometheus`]) rather than encoded twice: one encoder, one set of names.

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
pub struct RefusalLabels {
    /// `webhook` (GET handshake and POST pushes at `server.path`), `pay_v2`, `pay_v3`.
    pub endpoint: String,
    /// Why: `bad_signature`, `stale_timestamp`, `too_large`, ... (snake_case, stable).
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

/// The families a shared (not per-account) [`Metrics`] contributes to a page of several
/// accounts: the refusals of the pay endpoints, which no account owns.
const SHARED_FAMILIES: &[&str] = &["kefu_refusals"];

/// The metrics of every account, rendered as one page (interface §11.12: with several
/// accounts every push, send and window metric carries an `account` label).
///
/// Each account counts into a [`Metrics`] of its own, so the pipeline, sender and webhook
/// code is the same for one account or many; the page merges them family by family, adding
/// `account="NAME"` to each sample. Without `[accounts.*]` there is one [`Metrics`] and the
/// page is exactly its own, as before.
pub struct MetricsSet {
    accounts: Vec<(Option<String>, Arc<Metrics>)>,
    shared: Option<Arc<Metrics>>,
}

impl MetricsSet {
    /// One account's metrics, unlabelled (no `[accounts.*]`).
    pub fn single(m: Arc<Metrics>) -> MetricsSet {
        MetricsSet { accounts: vec![(None, m)], shared: None }
    }

    /// Several accounts' metrics, each labelled with its name, and the shared metrics of the
    /// routes no account owns (pay).
    pub fn labelled(accounts: Vec<(String, Arc<Metrics>)>, shared: Arc<Metrics>) -> MetricsSet {
        MetricsSet {
            accounts: accounts.into_iter().map(|(n, m)| (Some(n), m)).collect(),
            shared: Some(shared),
        }
    }

    /// Each account's name (None when unlabelled) and metrics.
    pub fn accounts(&self) -> impl Iterator<Item = (Option<&str>, &Arc<Metrics>)> {
        self.accounts.iter().map(|(n, m)| (n.as_deref(), m))
    }

    /// The OpenMetrics 1.0.0 page of every account.
    pub fn render(&self) -> String {
        match (&self.accounts[..], &self.shared) {
            ([(None, m)], None) => m.render(),
            _ => {
                let mut pages: Vec<Page> =
                    self.accounts.iter().map(|(n, m)| (n.as_deref(), m.render(), None)).collect();
                if let Some(s) = &self.shared {
                    pages.push((None, s.render(), Some(SHARED_FAMILIES)));
                }
                merge_pages(&pages)
            }
        }
    }

    /// The page in `format`.
    pub fn render_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.render(),
            Format::Prometheus => openmetrics_to_prometheus(&self.render()),
        }
    }
}

/// One page to merge: the account label (None: unlabelled), its OpenMetrics text, and the
/// families it may contribute (None: all).
type Page<'a> = (Option<&'a str>, String, Option<&'a [&'a str]>);

/// Merges OpenMetrics pages of the same registry layout into one: each family's `# HELP`,
/// `# TYPE` and `# UNIT` once (from the first page that has it), then the samples of every
/// page, each with `account="NAME"` added when its page has a name. `only` limits a page to
/// the families it names.
fn merge_pages(pages: &[Page]) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut families: std::collections::HashMap<&str, (usize, Vec<String>, Vec<String>)> =
        std::collections::HashMap::new();
    for (i, (label, text, only)) in pages.iter().enumerate() {
        let mut current: Option<&str> = None;
        for line in text.lines() {
            if line == "# EOF" || line.is_empty() {
                continue;
            }
            let name = match line.strip_prefix("# ") {
                Some(meta) => meta.split(' ').nth(1).unwrap_or(""),
                None => current.unwrap_or(""),
            };
            current = Some(name);
            if only.is_some_and(|o| !o.contains(&name)) {
                continue;
            }
            let family = families.entry(name).or_insert_with(|| {
                order.push(name);
                (i, Vec::new(), Vec::new())
            });
            if line.starts_with('#') {
                if family.0 == i {
                    family.1.push(line.to_string());
                }
            } else {
                family.2.push(match label {
                    Some(l) => with_account_label(line, l),
                    None => line.to_string(),
                });
            }
        }
    }
    let mut out = String::new();
    for name in order {
        let (_, headers, samples) = &families[name];
        for l in headers.iter().chain(samples) {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str("# EOF\n");
    out
}

/// `name{a="b"} 1` → `name{account="NAME",a="b"} 1`; `name 1` → `name{account="NAME"} 1`.
fn with_account_label(sample: &str, account: &str) -> String {
    let end = sample.find(['{', ' ']).unwrap_or(sample.len());
    let (name, rest) = sample.split_at(end);
    match rest.strip_prefix('{') {
        Some(labels) if labels.starts_with('}') => format!("{name}{{account=\"{account}\"{labels}"),
        Some(labels) => format!("{name}{{account=\"{account}\",{labels}"),
        None => format!("{name}{{account=\"{account}\"}}{rest}"),
    }
}

/// Every metric kefu exports.
/// Histograms by label set, each with the same buckets.
pub type HistogramFamily = Family<Vec<(String, String)>, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub pushes: Family<PushLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
    pub answer_seconds: Histogram,
    pub rule_hits: Family<RuleLabels, Counter>,
    pub sends: Family<SendLabels, Counter>,
    pub dropped: Family<ReasonLabels, Counter>,
    pub open_windows: Gauge,
    pub outbox_depth: Gauge,
    /// Answers held for the followers' next pushes (`kefu_held_answers`, interface §7.7).
    pub held_answers: Gauge,
    /// Held answers delivered by a follower's next push (`kefu_held_delivered_total`).
    pub held_delivered: Counter,
    pub token_refreshes: Counter,
    pub rule_reloads: Family<OutcomeLabels, Counter>,
    pub payments: Family<OutcomeLabels, Counter>,
    /// `kefu_media_uploads_total{type,outcome}`: media uploads by type (image, voice, video,
    /// thumb) and outcome (ok, failed).
    pub media_uploads: Family<Vec<(String, String)>, Counter>,
    /// `kefu_backend_requests_total{backend,outcome}` (interface §7.7): one per backend
    /// attempt (`ok`, `timeout`, `connect`, `http_4xx`, `http_5xx`, `malformed`) and one per
    /// forward not made (`rate_limited`).
    pub backend_requests: Family<Vec<(String, String)>, Counter>,
    /// `kefu_backend_seconds{backend}`: the time of each backend attempt.
    pub backend_seconds: HistogramFamily,
    /// `kefu_llm_tokens_total{backend,kind}` (interface §7.7, §11.7): the `usage` an `openai`
    /// backend's server reported, `kind` = `prompt` or `completion`.
    pub llm_tokens: Family<Vec<(String, String)>, Counter>,
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
        let refusals = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "refusals",
            "Requests refused at the webhook and pay endpoints, by endpoint and reason",
            refusals.clone(),
        );
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
        let held_answers = Gauge::default();
        registry.register(
            "held_answers",
            "Answers held for the follower's next push (the window or the account could not \
             carry them)",
            held_answers.clone(),
        );
        let held_delivered = Counter::default();
        registry.register(
            "held_delivered",
            "Held answers delivered by the follower's next push (passively or through \
             custom/send)",
            held_delivered.clone(),
        );
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
        // ---- media ----
        let media_uploads = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "media_uploads",
            "Media files uploaded as temporary media, by type and outcome",
            media_uploads.clone(),
        );
        // ---- backends ----
        let backend_requests = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "backend_requests",
            "Backend calls (one per attempt) and forwards not made, by backend and outcome",
            backend_requests.clone(),
        );
        // Buckets from 5 ms to ~82 s: an order service answers in milliseconds, an LLM in
        // tens of seconds.
        let backend_seconds =
            Family::<Vec<(String, String)>, Histogram, fn() -> Histogram>::new_with_constructor(
                || {
                    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                        0.005, 2.0, 15,
                    ))
                },
            );
        registry.register(
            "backend_seconds",
            "Time of one backend attempt, by backend",
            backend_seconds.clone(),
        );
        let llm_tokens = Family::<Vec<(String, String)>, Counter>::default();
        registry.register(
            "llm_tokens",
            "Tokens an openai backend's server reported using, by backend and kind (prompt, completion)",
            llm_tokens.clone(),
        );
        Metrics {
            registry,
            llm_tokens,
            backend_requests,
            backend_seconds,
            pushes,
            refusals,
            answer_seconds,
            rule_hits,
            sends,
            dropped,
            open_windows,
            outbox_depth,
            held_answers,
            held_delivered,
            token_refreshes,
            rule_reloads,
            payments,
            media_uploads,
            reload_sync: parking_lot::Mutex::new(()),
        }
    }

    pub fn push(&self, kind: &str, outcome: &str) {
        let labels = PushLabels { kind: label_value(kind), outcome: label_value(outcome) };
        self.pushes.get_or_create(&labels).inc();
    }

    /// Counts one refused request at `endpoint` (`webhook`, `pay_v2`, `pay_v3`).
    pub fn refusal(&self, endpoint: &str, reason: &str) {
        self.refusals
            .get_or_create(&RefusalLabels {
                endpoint: label_value(endpoint),
                reason: label_value(reason),
            })
            .inc();
    }

    pub fn rule_hit(&self, rule: &str) {
        self.rule_hits.get_or_create(&RuleLabels { rule: label_value(rule) }).inc();
    }

    pub fn send(&self, msgtype: &str, outcome: &str, errcode: i64) {
        self.sends
            .get_or_create(&SendLabels {
                msgtype: label_value(msgtype),
                outcome: label_value(outcome),
                errcode: errcode.to_string(),
            })
            .inc();
    }

    /// Counts one media upload of `media_type` (`ok` or `failed`).
    pub fn media_upload(&self, media_type: &str, outcome: &str) {
        let labels = vec![
            ("type".to_string(), label_value(media_type)),
            ("outcome".to_string(), label_value(outcome)),
        ];
        self.media_uploads.get_or_create(&labels).inc();
    }

    /// Counts one backend attempt (or a forward not made) of `backend` with `outcome`, and
    /// its time when it was an attempt.
    pub fn backend_call(&self, backend: &str, outcome: &str, took: Option<std::time::Duration>) {
        let labels = vec![
            ("backend".to_string(), label_value(backend)),
            ("outcome".to_string(), label_value(outcome)),
        ];
        self.backend_requests.get_or_create(&labels).inc();
        if let Some(t) = took {
            let labels = vec![("backend".to_string(), label_value(backend))];
            self.backend_seconds.get_or_create(&labels).observe(t.as_secs_f64());
        }
    }

    /// Adds one completion's `usage` to `kefu_llm_tokens_total`.
    pub fn llm_tokens(&self, backend: &str, prompt: u64, completion: u64) {
        for (kind, n) in [("prompt", prompt), ("completion", completion)] {
            let labels = vec![
                ("backend".to_string(), label_value(backend)),
                ("kind".to_string(), kind.to_string()),
            ];
            self.llm_tokens.get_or_create(&labels).inc_by(n);
        }
    }

    pub fn drop_message(&self, reason: &str) {
        self.drop_messages(reason, 1);
    }

    pub fn drop_messages(&self, reason: &str, n: u64) {
        self.dropped.get_or_create(&ReasonLabels { reason: label_value(reason) }).inc_by(n);
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

    /// The OpenMetrics 1.0.0 text exposition (ends with `# EOF`).
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The page in `format`.
    pub fn render_as(&self, format: Format) -> String {
        match format {
            Format::OpenMetrics => self.render(),
            Format::Prometheus => openmetrics_to_prometheus(&self.render()),
        }
    }
}

/// A label value escaped for the exposition (`\\`, `"`, newline), which prometheus-client
/// writes as given: an event name from a push or a rule name with a quote would otherwise
/// break the page for every scraper. Called on every push, so a value with nothing to escape
/// (all of them, in practice) costs one copy, as before, not three passes.
pub fn label_value(s: &str) -> String {
    if !s.contains(['\\', '"', '\n']) {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The two exposition formats `/metrics` serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 (`application/openmetrics-text`).
    OpenMetrics,
    /// The Prometheus text format 0.0.4 (`text/plain; version=0.0.4`): the default, which every
    /// scraper and tool reads.
    Prometheus,
}

impl Format {
    /// Picks the format from an `Accept` header (RFC 9110 §12.5.1): OpenMetrics only when a
    /// media range names `application/openmetrics-text` with a quality at least that of any
    /// range `text/plain` matches (`text/plain`, `text/*`, `*/*`); otherwise (no header, a
    /// wildcard, `text/plain`, anything else) the Prometheus text format. Prometheus itself
    /// sends `application/openmetrics-text;version=1.0.0;q=0.5,...,text/plain;version=0.0.4;
    /// q=0.3,*/*;q=0.2` and gets OpenMetrics.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let Some(accept) = accept else { return Format::Prometheus };
        let mut openmetrics: f32 = 0.0;
        let mut text: f32 = 0.0;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let mut q: f32 = 1.0;
            for p in parts {
                if let Some((k, v)) = p.split_once('=')
                    && k.trim().eq_ignore_ascii_case("q")
                {
                    // A malformed quality counts as 0 (not acceptable), never as a preference.
                    q = v
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))
                        .unwrap_or(0.0);
                }
            }
            match media.as_str() {
                "application/openmetrics-text" => openmetrics = openmetrics.max(q),
                "text/plain" | "text/*" | "*/*" => text = text.max(q),
                _ => {}
            }
        }
        if openmetrics > 0.0 && openmetrics >= text {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    /// The `Content-Type` of a page in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Converts an OpenMetrics 1.0.0 text page into the Prometheus text format 0.0.4.
///
/// What differs (OpenMetrics spec §"Text format"; Prometheus "Exposition formats"):
/// - a counter family is declared without `_total` (`# TYPE x counter`, samples `x_total`);
///   in 0.0.4 `# HELP`/`# TYPE` name the samples' own name, so the family becomes `x_total`;
/// - `_created` samples (counters, histograms, summaries) have no place in a 0.0.4 family:
///   they become a gauge family of their own, `x_created`, as the Prometheus Python client
///   writes them;
/// - `info` (samples `x_info`) becomes the gauge family `x_info`; `stateset` a gauge;
///   `gaugehistogram` a histogram (`_gsum`/`_gcount` as `_sum`/`_count`); `unknown` `untyped`;
/// - `# UNIT` lines, `# EOF` and exemplars (` # {...} v` after a value) do not exist in 0.0.4
///   and are dropped;
/// - `# HELP` text escapes only `\\` and `\n` in 0.0.4 (a `\"` would be an invalid escape);
/// - timestamps are seconds in OpenMetrics and milliseconds in 0.0.4.
///
/// Label syntax and escaping are the same in both. Lines it does not understand are dropped
/// rather than passed on, so the output stays parseable.
pub fn openmetrics_to_prometheus(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut family: Option<OmFamily> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if let Some(f) = family.take() {
                f.write_to(&mut out);
            }
            family = Some(OmFamily::new(name, help));
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            match &mut family {
                Some(f) if f.name == name => f.kind = kind.trim().to_string(),
                _ => {
                    if let Some(f) = family.take() {
                        f.write_to(&mut out);
                    }
                    let mut f = OmFamily::new(name, "");
                    f.kind = kind.trim().to_string();
                    family = Some(f);
                }
            }
        } else if line.starts_with('#') || line.trim().is_empty() {
            // `# UNIT`, `# EOF`: nothing in 0.0.4.
        } else if let Some(sample) = OmSample::parse(line) {
            match &mut family {
                Some(f) if sample.name.starts_with(f.name.as_str()) => f.push(sample),
                _ => {
                    // A sample with no descriptor: its own untyped family.
                    if let Some(f) = family.take() {
                        f.write_to(&mut out);
                    }
                    let mut f = OmFamily::new(&sample.name, "");
                    f.push(sample);
                    family = Some(f);
                }
            }
        }
    }
    if let Some(f) = family.take() {
        f.write_to(&mut out);
    }
    out
}

/// One OpenMetrics metric family being converted.
struct OmFamily {
    name: String,
    /// HELP text, unescaped.
    help: String,
    kind: String,
    samples: Vec<String>,
    created: Vec<String>,
}

/// One sample line: its name, the label set as written (`{...}` or empty) and the value,
/// with the timestamp converted and any exemplar dropped.
struct OmSample {
    name: String,
    labels: String,
    value: String,
}

impl OmSample {
    fn parse(line: &str) -> Option<OmSample> {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let mut rest = &line[name_end..];
        let mut labels = "";
        if rest.starts_with('{') {
            // The closing brace is the first one outside a quoted value.
            let (mut quoted, mut escaped, mut end) = (false, false, None);
            for (i, c) in rest.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    '}' if !quoted => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end?;
            labels = &rest[..=end];
            rest = &rest[end + 1..];
        }
        // `value [timestamp] [# exemplar]`
        let rest = rest.split(" # ").next().unwrap_or("");
        let mut fields = rest.split_whitespace();
        let value = fields.next()?.to_string();
        let value = match fields.next() {
            None => value,
            Some(ts) => {
                let ms = (ts.parse::<f64>().ok()? * 1000.0).round() as i64;
                format!("{value} {ms}")
            }
        };
        Some(OmSample { name: name.to_string(), labels: labels.to_string(), value })
    }

    fn line(&self, name: &str) -> String {
        format!("{name}{} {}\n", self.labels, self.value)
    }
}

impl OmFamily {
    fn new(name: &str, help: &str) -> OmFamily {
        OmFamily {
            name: name.to_string(),
            help: unescape_help(help),
            kind: "unknown".into(),
            samples: Vec::new(),
            created: Vec::new(),
        }
    }

    fn push(&mut self, s: OmSample) {
        let suffix = &s.name[self.name.len()..];
        let name = match (self.kind.as_str(), suffix) {
            ("counter" | "histogram" | "summary" | "gaugehistogram", "_created") => {
                self.created.push(s.line(&s.name));
                return;
            }
            ("gaugehistogram", "_gsum") => format!("{}_sum", self.name),
            ("gaugehistogram", "_gcount") => format!("{}_count", self.name),
            _ => s.name.clone(),
        };
        self.samples.push(s.line(&name));
    }

    /// Writes the family as 0.0.4: HELP and TYPE named as its samples are, then the samples,
    /// then any `_created` samples as a gauge family of their own.
    fn write_to(self, out: &mut String) {
        let (name, kind) = match self.kind.as_str() {
            "counter" => (format!("{}_total", self.name), "counter"),
            "gauge" => (self.name.clone(), "gauge"),
            "histogram" | "gaugehistogram" => (self.name.clone(), "histogram"),
            "summary" => (self.name.clone(), "summary"),
            "info" => (format!("{}_info", self.name), "gauge"),
            "stateset" => (self.name.clone(), "gauge"),
            _ => (self.name.clone(), "untyped"),
        };
        let help = escape_help(&self.help);
        if !self.help.is_empty() {
            out.push_str(&format!("# HELP {name} {help}\n"));
        }
        out.push_str(&format!("# TYPE {name} {kind}\n"));
        for s in &self.samples {
            out.push_str(s);
        }
        if !self.created.is_empty() {
            let created = format!("{}_created", self.name);
            if !self.help.is_empty() {
                out.push_str(&format!("# HELP {created} {help}\n"));
            }
            out.push_str(&format!("# TYPE {created} gauge\n"));
            for s in &self.created {
                out.push_str(s);
            }
        }
    }
}

/// OpenMetrics HELP escapes `\\`, `\n` and `\"`.
fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// 0.0.4 HELP escapes `\\` and `\n` only.
fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_accounts_merge_into_one_page_with_an_account_label() {
        let (shop, cafe, shared) =
            (Arc::new(Metrics::new()), Arc::new(Metrics::new()), Arc::new(Metrics::new()));
        shop.push("text", "fresh");
        shop.push("text", "fresh");
        cafe.push("text", "fresh");
        cafe.open_windows.set(3);
        shared.refusal("pay_v2", "bad_signature");
        shared.push("text", "fresh"); // not a shared family: left out
        let set = MetricsSet::labelled(
            vec![("shop".into(), shop.clone()), ("cafe".into(), cafe)],
            shared,
        );
        let page = set.render();
        assert!(
            page.contains(r#"kefu_pushes_total{account="shop",kind="text",outcome="fresh"} 2"#),
            "{page}"
        );
        assert!(
            page.contains(r#"kefu_pushes_total{account="cafe",kind="text",outcome="fresh"} 1"#)
        );
        assert!(page.contains(r#"kefu_open_windows{account="cafe"} 3"#), "{page}");
        assert!(
            page.contains(r#"kefu_refusals_total{endpoint="pay_v2",reason="bad_signature"} 1"#)
        );
        assert_eq!(page.matches("# TYPE kefu_pushes counter").count(), 1, "{page}");
        assert_eq!(page.matches("kefu_pushes_total{").count(), 2, "{page}");
        assert!(page.ends_with("# EOF\n"));
        // Histogram buckets keep their own labels after the account's.
        assert!(page.contains(r#"kefu_answer_seconds_bucket{account="shop",le="#), "{page}");
        let prom = set.render_as(Format::Prometheus);
        assert!(
            prom.contains(r#"kefu_pushes_total{account="shop",kind="text",outcome="fresh"} 2"#)
        );
        // One account without [accounts.*]: the page is exactly its own.
        assert_eq!(MetricsSet::single(shop.clone()).render(), shop.render());
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.rule_hit("say \"hi\"\\n\nnow");
        let text = m.render_as(Format::Prometheus);
        assert!(text.contains(r#"kefu_rule_hits_total{rule="say \"hi\"\\n\nnow"} 1"#), "{text}");
    }

    #[test]
    fn accept_negotiation() {
        let om = Format::OpenMetrics;
        let prom = Format::Prometheus;
        for (accept, want) in [
            (None, prom),
            (Some(""), prom),
            (Some("*/*"), prom),
            (Some("text/plain"), prom),
            (Some("text/plain; version=0.0.4"), prom),
            (Some("application/json"), prom),
            (Some("application/openmetrics-text"), om),
            (Some("application/openmetrics-text; version=1.0.0; charset=utf-8"), om),
            (Some("Application/OpenMetrics-Text;version=0.0.1"), om),
            // What Prometheus 2.x/3.x sends by default.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;\
                     version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                om,
            ),
            // A scraper that prefers the text format.
            (Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"), prom),
            (Some("application/openmetrics-text;q=0"), prom),
            (Some("application/openmetrics-text;q=bogus"), prom),
            (Some("*/*;q=0.1, application/openmetrics-text;q=0.9"), om),
        ] {
            assert_eq!(Format::from_accept(accept), want, "{accept:?}");
        }
    }

    #[test]
    fn converts_every_openmetrics_family_kind() {
        let om = "\
# HELP a_requests Requests \\\"quoted\\\" and a back\\\\slash.
# TYPE a_requests counter
a_requests_total{path=\"/x\",v=\"a}b # c\"} 3 # {trace=\"1\"} 1.0
a_requests_created{path=\"/x\",v=\"a}b # c\"} 1700000000.5
# HELP b_seconds Latency.
# TYPE b_seconds histogram
# UNIT b_seconds seconds
b_seconds_sum 0.5
b_seconds_count 2
b_seconds_bucket{le=\"0.1\"} 1
b_seconds_bucket{le=\"+Inf\"} 2
# HELP c_build Build.
# TYPE c_build info
c_build_info{version=\"1\"} 1
# TYPE d_state stateset
d_state{d_state=\"on\"} 1
d_state{d_state=\"off\"} 0
# HELP e_queue Queue.
# TYPE e_queue gaugehistogram
e_queue_bucket{le=\"+Inf\"} 4
e_queue_gcount 4
e_queue_gsum 9
# TYPE f_thing unknown
f_thing 1 1700000000
# HELP g_up Up.
# TYPE g_up gauge
g_up 1
# EOF
";
        let want = "\
# HELP a_requests_total Requests \"quoted\" and a back\\\\slash.
# TYPE a_requests_total counter
a_requests_total{path=\"/x\",v=\"a}b # c\"} 3
# HELP a_requests_created Requests \"quoted\" and a back\\\\slash.
# TYPE a_requests_created gauge
a_requests_created{path=\"/x\",v=\"a}b # c\"} 1700000000.5
# HELP b_seconds Latency.
# TYPE b_seconds histogram
b_seconds_sum 0.5
b_seconds_count 2
b_seconds_bucket{le=\"0.1\"} 1
b_seconds_bucket{le=\"+Inf\"} 2
# HELP c_build_info Build.
# TYPE c_build_info gauge
c_build_info{version=\"1\"} 1
# TYPE d_state gauge
d_state{d_state=\"on\"} 1
d_state{d_state=\"off\"} 0
# HELP e_queue Queue.
# TYPE e_queue histogram
e_queue_bucket{le=\"+Inf\"} 4
e_queue_count 4
e_queue_sum 9
# TYPE f_thing untyped
f_thing 1 1700000000000
# HELP g_up Up.
# TYPE g_up gauge
g_up 1
";
        assert_eq!(openmetrics_to_prometheus(om), want);
    }

    #[test]
    fn kefu_page_in_both_formats() {
        let m = Metrics::new();
        m.push("text", "fresh");
        m.refusal("webhook", "bad_signature");
        m.answer_seconds.observe(0.001);
        let om = m.render_as(Format::OpenMetrics);
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE kefu_pushes counter\n"), "{om}");
        let text = m.render_as(Format::Prometheus);
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        assert!(text.contains("# TYPE kefu_pushes_total counter\n"), "{text}");
        assert!(
            text.contains("kefu_refusals_total{endpoint=\"webhook\",reason=\"bad_signature\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE kefu_answer_seconds histogram\n"), "{text}");
    }

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
