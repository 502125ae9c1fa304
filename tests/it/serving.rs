//! Issue 13, as an operator meets `kefu serve`: `/metrics` in the format the scraper asks for, both
//! parsed by a strict parser; every refused webhook and pay request counted; `/readyz` telling
//! a failed rules reload; the admin token's minimum checked only by `serve`; an AppID without
//! its secret (decrypt, answer passively, sending off); `wechat.original_id` as `ToUserName`.
//!
//! The parsers here are written for these tests rather than taken from a crate: the Rust
//! exposition parsers on crates.io (`prometheus-parse`, the scrape parsers inside other
//! projects) are lenient by design — they skip `# EOF` and `# UNIT` as comments and accept a
//! `# TYPE` that names no sample — so they would pass exactly the faults to be caught.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::mock_wechat::{MockResponse, MockWechat};
use kefu::config::Config;
use kefu::model::Secret;
use serde_json::{Value, json};

use crate::helpers::{AES_KEY, APP_ID, TOKEN, now_secs, signed_query};
use crate::ops::{
    Ran, Running, copy_files, count_lines, fixture_dir, run_kefu, serve, start_service_with,
    strip_ansi, text_xml,
};

const ADMIN: &str = "operator-admin-token-5e2d";
const PAY_V2: &str = "192006250b4c09247ec02edce69f6a2d";
const PAY_V3: &str = "0123456789abcdef0123456789ABCDEF";
const PATIENCE: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Strict exposition parsers

/// One sample: its name, labels and value.
#[derive(Clone, Debug, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed page: family name → (type, samples in order).
type Page = BTreeMap<String, (String, Vec<Sample>)>;

fn is_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `name{labels} value[ rest]` → the sample and what follows the value. Label values use the
/// escapes `\\`, `\"`, `\n` and nothing else (both formats).
fn parse_sample(line: &str) -> Result<(Sample, String), String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = &line[..end];
    if !is_name(name) {
        return Err(format!("bad metric name {name:?}"));
    }
    let mut rest = &line[end..];
    let mut labels = BTreeMap::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        loop {
            let start = chars.peek().map(|(i, _)| *i).ok_or("unterminated labels")?;
            if body[start..].starts_with('}') {
                rest = &body[start + 1..];
                break;
            }
            let eq = body[start..].find("=\"").ok_or("label without =\"")? + start;
            let lname = &body[start..eq];
            if !is_name(lname) || lname.contains(':') {
                return Err(format!("bad label name {lname:?}"));
            }
            while chars.peek().is_some_and(|(i, _)| *i < eq + 2) {
                chars.next();
            }
            let mut value = String::new();
            loop {
                let (_, c) = chars.next().ok_or("unterminated label value")?;
                match c {
                    '"' => break,
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        other => return Err(format!("invalid escape \\{other} in a label value")),
                    },
                    '\n' => return Err("newline in a label value".into()),
                    c => value.push(c),
                }
            }
            if labels.insert(lname.to_string(), value).is_some() {
                return Err(format!("label {lname} twice"));
            }
            match chars.next() {
                Some((_, ',')) => {}
                Some((i, '}')) => {
                    rest = &body[i + 1..];
                    break;
                }
                other => return Err(format!("expected , or }} after a label, got {other:?}")),
            }
        }
    }
    let rest = rest.strip_prefix(' ').ok_or("no space before the value")?;
    let (value, after) = rest.split_once(' ').unwrap_or((rest, ""));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse::<f64>().map_err(|_| format!("bad value {v:?}"))?,
    };
    Ok((Sample { name: name.to_string(), labels, value }, after.to_string()))
}

/// Which family a sample name belongs to, given the family's name and type (`suffixes`).
fn belongs(family: &str, suffixes: &[&str], sample: &str) -> bool {
    suffixes.iter().any(|s| sample == format!("{family}{s}"))
}

/// Checks a histogram family, series by series (its labels but `le`): `le` on every bucket,
/// cumulative counts, a `+Inf` bucket equal to `_count`. A family with no series yet (a
/// labeled histogram nothing was observed in) has only its HELP and TYPE lines, which is valid.
fn check_histogram(name: &str, samples: &[Sample]) -> Result<(), String> {
    let series = |s: &Sample| {
        let mut l = s.labels.clone();
        l.remove("le");
        l
    };
    let mut keys: Vec<BTreeMap<String, String>> = samples.iter().map(series).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let of = |suffix: &str| {
            samples
                .iter()
                .filter(|s| s.name == format!("{name}{suffix}") && series(s) == key)
                .collect::<Vec<_>>()
        };
        let buckets = of("_bucket");
        let mut last = 0.0;
        for b in &buckets {
            b.labels.get("le").ok_or(format!("{name}: a bucket without le"))?;
            if b.value < last {
                return Err(format!("{name}: buckets are not cumulative"));
            }
            last = b.value;
        }
        let inf = buckets
            .iter()
            .find(|b| b.labels["le"] == "+Inf")
            .ok_or(format!("{name}{key:?}: no +Inf bucket"))?;
        let count = of("_count").first().copied().ok_or(format!("{name}{key:?}: no _count"))?;
        if inf.value != count.value {
            return Err(format!("{name}: +Inf bucket {} != _count {}", inf.value, count.value));
        }
    }
    Ok(())
}

/// The Prometheus text format 0.0.4, strictly: only `# HELP` and `# TYPE` comments (no
/// `# UNIT`, no `# EOF`), each at most once per family and before its samples; a TYPE of
/// counter, gauge, histogram, summary or untyped that names the samples' own family (a
/// counter's `x_total`, a histogram's `x` for `x_bucket`/`x_sum`/`x_count`); families
/// contiguous; integer millisecond timestamps; no exemplars.
fn parse_prometheus(page: &str) -> Result<Page, String> {
    let mut out: Page = BTreeMap::new();
    let mut helps = std::collections::HashSet::new();
    let mut current: Option<String> = None;
    for (n, line) in page.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or("");
            if !is_name(name) || !helps.insert(name.to_string()) {
                return Err(at("a bad or second HELP".into()));
            }
            let help = &rest[name.len()..];
            let mut chars = help.chars();
            while let Some(c) = chars.next() {
                if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                    return Err(at("HELP escapes only \\\\ and \\n in 0.0.4".into()));
                }
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) =
                rest.split_once(' ').ok_or_else(|| at("TYPE without a type".into()))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("type {kind:?} is not a 0.0.4 type")));
            }
            if !is_name(name) || out.contains_key(name) {
                return Err(at("a bad or second TYPE".into()));
            }
            out.insert(name.to_string(), (kind.to_string(), Vec::new()));
            current = Some(name.to_string());
            continue;
        }
        if line.starts_with('#') {
            return Err(at("a comment that 0.0.4 exposition does not have".into()));
        }
        let (sample, after) = parse_sample(line).map_err(at)?;
        if !after.is_empty() && (after.contains('#') || after.parse::<i64>().is_err()) {
            return Err(at(format!("{after:?} is not a millisecond timestamp")));
        }
        let family = current.as_ref().ok_or_else(|| at("a sample before any TYPE".into()))?;
        let (kind, samples) = out.get_mut(family).expect("current family");
        let suffixes: &[&str] = match kind.as_str() {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        if !belongs(family, suffixes, &sample.name) {
            return Err(at(format!("sample of family {family} ({kind}) has the wrong name")));
        }
        if kind == "counter" && (sample.value.is_nan() || sample.value < 0.0) {
            return Err(at("a negative counter".into()));
        }
        samples.push(sample);
    }
    for (name, (kind, samples)) in &out {
        if kind == "histogram" {
            check_histogram(name, samples)?;
        }
    }
    Ok(out)
}

/// OpenMetrics 1.0.0, strictly: ends with `# EOF` and nothing after it; no blank lines; HELP,
/// TYPE and UNIT at most once per family, before its samples; a counter family named without
/// `_total` whose samples are `_total`/`_created`; exemplars only after a counter or bucket
/// value.
fn parse_openmetrics(page: &str) -> Result<Page, String> {
    let body = page.strip_suffix("# EOF\n").ok_or("the page does not end with # EOF")?;
    let mut out: Page = BTreeMap::new();
    let mut current: Option<String> = None;
    let mut described = std::collections::HashSet::new();
    for (n, line) in body.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", n + 1);
        if line.is_empty() {
            return Err(at("a blank line".into()));
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            let (what, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let arg = parts.next().unwrap_or("");
            if !["HELP", "TYPE", "UNIT"].contains(&what) || !is_name(name) {
                return Err(at("not a HELP, TYPE or UNIT line".into()));
            }
            if !described.insert(format!("{what} {name}")) {
                return Err(at(format!("a second {what}")));
            }
            if out.get(name).is_some_and(|(_, s)| !s.is_empty()) {
                return Err(at("metadata after the family's samples".into()));
            }
            if current.as_deref() != Some(name) && out.contains_key(name) {
                return Err(at("the family is not contiguous".into()));
            }
            if what == "TYPE" {
                let kinds = [
                    "counter",
                    "gauge",
                    "histogram",
                    "gaugehistogram",
                    "summary",
                    "info",
                    "stateset",
                    "unknown",
                ];
                if !kinds.contains(&arg) {
                    return Err(at(format!("type {arg:?}")));
                }
                if arg == "counter" && name.ends_with("_total") {
                    return Err(at("a counter family is named without _total".into()));
                }
            }
            let entry = out.entry(name.to_string()).or_insert(("unknown".into(), Vec::new()));
            if what == "TYPE" {
                entry.0 = arg.to_string();
            }
            current = Some(name.to_string());
            continue;
        }
        let (sample, after) = parse_sample(line).map_err(at)?;
        let family = current.as_ref().ok_or_else(|| at("a sample before its family".into()))?;
        let (kind, samples) = out.get_mut(family).expect("current family");
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "gaugehistogram" => &["_bucket", "_gsum", "_gcount"],
            "summary" => &["", "_sum", "_count", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        if !belongs(family, suffixes, &sample.name) {
            return Err(at(format!("sample of family {family} ({kind}) has the wrong name")));
        }
        if let Some(exemplar) = after.strip_prefix("# ") {
            let exemplar_ok = sample.name.ends_with("_total") || sample.name.ends_with("_bucket");
            if !exemplar_ok || !exemplar.starts_with('{') {
                return Err(at("an exemplar where none may be".into()));
            }
        } else if !after.is_empty() && after.parse::<f64>().is_err() {
            return Err(at(format!("{after:?} is not a timestamp")));
        }
        samples.push(sample);
    }
    for (name, (kind, samples)) in &out {
        if kind == "histogram" {
            check_histogram(name, samples)?;
        }
    }
    Ok(out)
}

/// Every sample of a page, keyed by name and labels.
fn all_samples(page: &Page) -> BTreeMap<(String, Vec<(String, String)>), f64> {
    page.values()
        .flat_map(|(_, s)| s.iter())
        .map(|s| ((s.name.clone(), s.labels.clone().into_iter().collect()), s.value))
        .collect()
}

#[test]
fn the_strict_parsers_refuse_what_they_must() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{k=\"v\"} 1\n";
    parse_prometheus(ok).unwrap();
    for (what, page) in [
        ("EOF", format!("{ok}# EOF\n")),
        ("UNIT", "# TYPE a_seconds gauge\n# UNIT a_seconds seconds\na_seconds 1\n".into()),
        ("OpenMetrics counter TYPE", "# TYPE a counter\na_total 1\n".into()),
        ("info type", "# TYPE a info\na_info 1\n".into()),
        ("exemplar", "# TYPE a_total counter\na_total 1 # {t=\"1\"} 1\n".into()),
        ("bad escape", "# TYPE a gauge\na{k=\"\\q\"} 1\n".into()),
        ("HELP quote escape", "# HELP a say \\\"hi\\\"\n# TYPE a gauge\na 1\n".into()),
        ("untyped sample", "a 1\n".into()),
        ("no +Inf", "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n".into()),
    ] {
        assert!(parse_prometheus(&page).is_err(), "0.0.4 accepted {what}:\n{page}");
    }
    let om = "# HELP a A.\n# TYPE a counter\na_total 1 # {t=\"1\"} 1.0\n# EOF\n";
    parse_openmetrics(om).unwrap();
    for (what, page) in [
        ("no EOF", om.trim_end_matches("# EOF\n").to_string()),
        ("blank line", om.replace("# TYPE", "\n# TYPE")),
        ("counter named _total", "# TYPE a_total counter\na_total 1\n# EOF\n".into()),
        ("sample without suffix", "# TYPE a counter\na 1\n# EOF\n".into()),
    ] {
        assert!(parse_openmetrics(&page).is_err(), "OpenMetrics accepted {what}:\n{page}");
    }
}

// ---------------------------------------------------------------------------------------------
// The in-process service

/// The service with the ops fixture rules in `dir/rules`, state in `dir/state`, an admin
/// token, both pay routes, and `edit` applied last.
async fn start(mock: &MockWechat, dir: &Path, edit: impl FnOnce(&mut Config)) -> Running {
    start_service_with(mock, dir, |cfg| {
        cfg.admin.token = Secret::new(ADMIN);
        cfg.pay.v2_api_key = Secret::new(PAY_V2);
        cfg.pay.v3_api_key = Secret::new(PAY_V3);
        cfg.pay.v3_platform_public_key = Some(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pay/test_platform_pub.pem"),
        );
        edit(cfg);
    })
    .await
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hook(&self) -> String {
        self.url(&self.cfg.server.path)
    }

    /// GET `/metrics` with `accept` (None: no header): (content type, page).
    async fn metrics_as(&self, accept: Option<&str>) -> (String, String) {
        let mut rb = self.http.get(self.url("/metrics"));
        if let Some(a) = accept {
            rb = rb.header("accept", a);
        }
        let r = rb.send().await.expect("GET /metrics");
        assert_eq!(r.status().as_u16(), 200);
        let ct = r.headers()["content-type"].to_str().expect("content type").to_string();
        (ct, r.text().await.expect("page"))
    }

    async fn readyz(&self) -> (u16, Value) {
        let r = self.http.get(self.url("/readyz")).send().await.expect("GET /readyz");
        let status = r.status().as_u16();
        (status, r.json().await.expect("readyz JSON"))
    }

    async fn reload(&self) -> u16 {
        let r = self
            .http
            .post(self.url("/admin/rules/reload"))
            .bearer_auth(ADMIN)
            .send()
            .await
            .expect("POST reload");
        r.status().as_u16()
    }
}

const PROMETHEUS_0_0_4: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS_1_0_0: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Issue 13 item 5: `/metrics` answers the Prometheus text format 0.0.4 unless `Accept` asks
/// for OpenMetrics; both pages parse strictly, and they carry the same samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_negotiate_the_format_and_both_parse_strictly() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(&mock, dir.path(), |_| {}).await;
    // Something in every kind of family: counters with labels, the histogram, gauges.
    let q = signed_query(TOKEN, now_secs(), "m1");
    // No rule fires for 你好, so nothing is sent and no gauge moves between two scrapes.
    let r = app.http.post(app.hook()).query(&q).body(text_xml("oMetrics1", "你好", 1)).send();
    assert_eq!(r.await.expect("push").status().as_u16(), 200);
    let bad = signed_query("not-the-token", now_secs(), "m2");
    let r = app.http.post(app.hook()).query(&bad).body(text_xml("oMetrics1", "x", 2)).send();
    assert_eq!(r.await.expect("push").status().as_u16(), 401);

    for accept in [
        None,
        Some("*/*"),
        Some("text/plain"),
        Some("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
        Some("application/json"),
    ] {
        let (ct, page) = app.metrics_as(accept).await;
        assert_eq!(ct, PROMETHEUS_0_0_4, "{accept:?}");
        parse_prometheus(&page).unwrap_or_else(|e| panic!("{accept:?}: {e}\n{page}"));
    }
    let (_, text) = app.metrics_as(None).await;
    let text_page = parse_prometheus(&text).expect("0.0.4");
    assert_eq!(text_page["kefu_pushes_total"].0, "counter", "{text}");
    assert_eq!(text_page["kefu_answer_seconds"].0, "histogram", "{text}");
    assert_eq!(text_page["kefu_open_windows"].0, "gauge", "{text}");

    for accept in [
        "application/openmetrics-text; version=1.0.0",
        "application/openmetrics-text",
        // Prometheus's own default Accept header.
        "application/openmetrics-text;version=1.0.0;q=0.5,application/openmetrics-text;\
         version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
    ] {
        let (ct, page) = app.metrics_as(Some(accept)).await;
        assert_eq!(ct, OPENMETRICS_1_0_0, "{accept}");
        parse_openmetrics(&page).unwrap_or_else(|e| panic!("{accept}: {e}\n{page}"));
    }
    let (_, om) = app.metrics_as(Some("application/openmetrics-text")).await;
    let om_page = parse_openmetrics(&om).expect("OpenMetrics");
    assert_eq!(om_page["kefu_pushes"].0, "counter", "{om}");

    // The same numbers either way (nothing happened between the two scrapes but scraping).
    let (a, b) = (all_samples(&text_page), all_samples(&om_page));
    assert_eq!(a, b);
    let key = (
        "kefu_refusals_total".to_string(),
        vec![("endpoint".into(), "webhook".into()), ("reason".into(), "bad_signature".into())],
    );
    assert_eq!(a.get(&key), Some(&1.0), "{text}");
    app.handle.stop(true).await;
}

/// A v2 notification body over `fields`, with the given sign.
fn v2_body(sign: &str) -> String {
    format!(
        "<xml><return_code>SUCCESS</return_code><openid>oPayer</openid><sign>{sign}</sign></xml>"
    )
}

/// Issue 13 item 16: every refusal path of the GET handshake, POST pushes and both notify URLs
/// is counted in `kefu_refusals_total{endpoint,reason}`; an accepted request is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_of_the_webhook_and_the_pay_urls_is_counted() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let app = start(&mock, dir.path(), |_| {}).await;
    let http = &app.http;
    let get = |q: Vec<(String, String)>| http.get(app.hook()).query(&q).send();

    // The handshake: a good one (not counted), a wrong signature, missing parameters, a
    // query that does not parse, no echostr.
    let mut good = signed_query(TOKEN, now_secs(), "h1");
    good.push(("echostr".into(), "e1".into()));
    let r = get(good.clone()).await.expect("GET");
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "e1".to_string()));
    let mut wrong = signed_query("wrong-token", now_secs(), "h2");
    wrong.push(("echostr".into(), "e2".into()));
    assert_eq!(get(wrong).await.expect("GET").status().as_u16(), 401);
    assert_eq!(get(vec![("echostr".into(), "e3".into())]).await.expect("GET").status(), 401);
    let mut twice = good.clone();
    twice.push(("signature".into(), "again".into()));
    assert_eq!(get(twice).await.expect("GET").status().as_u16(), 400);
    let no_echo = signed_query(TOKEN, now_secs(), "h4");
    assert_eq!(get(no_echo).await.expect("GET").status().as_u16(), 400);

    // Pushes: a wrong signature, a stale one, too large, a body that is no push.
    let post =
        |q: Vec<(String, String)>, body: String| http.post(app.hook()).query(&q).body(body).send();
    let bad = signed_query("wrong-token", now_secs(), "p1");
    assert_eq!(post(bad, text_xml("oR", "x", 1)).await.expect("POST").status(), 401);
    let stale = signed_query(TOKEN, now_secs() - 3600, "p2");
    assert_eq!(post(stale, text_xml("oR", "x", 2)).await.expect("POST").status(), 401);
    let q = signed_query(TOKEN, now_secs(), "p3");
    assert_eq!(post(q.clone(), "x".repeat(5000)).await.expect("POST").status(), 413);
    assert_eq!(post(q, "<xml><nope/></xml>".into()).await.expect("POST").status(), 400);

    // WeChat Pay v2: a wrong sign, no sign, a sign of neither kind, too large, not XML.
    let v2 = app.url("/pay/notify/v2");
    let v2_post = |body: String| http.post(&v2).body(body).send();
    let wrong_sign = "0".repeat(32);
    assert_eq!(v2_post(v2_body(&wrong_sign)).await.expect("v2").status(), 401);
    let unsigned = "<xml><return_code>SUCCESS</return_code></xml>".to_string();
    assert_eq!(v2_post(unsigned).await.expect("v2").status(), 401);
    assert_eq!(v2_post(v2_body("ABC")).await.expect("v2").status(), 401);
    let big = " ".repeat(kefu::pay::MAX_NOTIFY_BYTES + 1);
    assert_eq!(v2_post(big).await.expect("v2").status(), 413);
    assert_eq!(v2_post("{}".into()).await.expect("v2").status(), 400);
    // v3: no signature headers.
    let r = http.post(app.url("/pay/notify/v3")).body("{}").send().await.expect("v3");
    assert_eq!(r.status().as_u16(), 401);

    let (_, text) = app.metrics_as(None).await;
    let page = parse_prometheus(&text).expect("0.0.4");
    let got: BTreeMap<(String, String), f64> = page["kefu_refusals_total"]
        .1
        .iter()
        .map(|s| ((s.labels["endpoint"].clone(), s.labels["reason"].clone()), s.value))
        .collect();
    let want: BTreeMap<(String, String), f64> = [
        ("webhook", "bad_signature", 2.0),
        ("webhook", "missing_signature_params", 1.0),
        ("webhook", "bad_query", 1.0),
        ("webhook", "missing_echostr", 1.0),
        ("webhook", "stale_timestamp", 1.0),
        ("webhook", "too_large", 1.0),
        ("webhook", "missing_field", 1.0),
        ("pay_v2", "bad_signature", 1.0),
        ("pay_v2", "missing_signature", 1.0),
        ("pay_v2", "sign_type_mismatch", 1.0),
        ("pay_v2", "too_large", 1.0),
        ("pay_v2", "malformed", 1.0),
        ("pay_v3", "missing_signature_header", 1.0),
    ]
    .into_iter()
    .map(|(e, r, n)| ((e.to_string(), r.to_string()), n))
    .collect();
    assert_eq!(got, want, "{text}");
    app.handle.stop(true).await;
}

/// Polls `/readyz` until `check` holds for its body; fails after [`PATIENCE`].
async fn readyz_until(app: &Running, what: &str, check: impl Fn(&Value) -> bool) -> (u16, Value) {
    let started = Instant::now();
    loop {
        let (status, v) = app.readyz().await;
        if check(&v) {
            return (status, v);
        }
        assert!(started.elapsed() < PATIENCE, "{what}: /readyz still says {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 13 item 16: after a failed reload `/readyz` lists the problem (with the errors, still
/// 200: the previous rules keep serving), and a successful reload clears it — through
/// `POST /admin/rules/reload` and through the file watcher alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_reports_a_failed_rules_reload_until_one_succeeds() {
    let mock = MockWechat::start();
    for watch in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let app = start(&mock, dir.path(), |c| c.rules.hot_reload = watch).await;
        let rules = dir.path().join("rules");
        let (status, v) = app.readyz().await;
        assert_eq!((status, &v["problems"]), (200, &json!([])), "{v}");

        let good = std::fs::read_to_string(rules.join("10-ops.toml")).expect("rules");
        std::fs::write(rules.join("10-ops.toml"), "[[rule]]\nname = \n").expect("break");
        if !watch {
            assert_eq!(app.reload().await, 422);
        }
        let (status, v) =
            readyz_until(&app, "the failed reload", |v| v["last_reload_ok"] == json!(false)).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["ready"], json!(true), "{v}");
        assert_eq!(v["rules"], json!(2), "the previous rules stay: {v}");
        let problems = v["problems"].as_array().expect("problems");
        assert_eq!(problems.len(), 1, "{v}");
        let p = problems[0].as_str().unwrap_or("");
        assert!(p.contains("the last rules reload failed") && p.contains("10-ops.toml"), "{v}");
        assert!(!v["reload_errors"].as_array().expect("errors").is_empty(), "{v}");

        std::fs::write(rules.join("10-ops.toml"), &good).expect("fix");
        if !watch {
            assert_eq!(app.reload().await, 200);
        }
        let (status, v) =
            readyz_until(&app, "the good reload", |v| v["last_reload_ok"] == json!(true)).await;
        assert_eq!(status, 200);
        assert_eq!(v["problems"], json!([]), "{v}");
        assert_eq!(v["reload_errors"], json!([]), "{v}");
        app.handle.stop(true).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The binary

/// A kefu.toml in `dir` for `kefu serve`: K1 token/key, the mock as API base, the ops rules,
/// and `extra` appended to `[wechat]`.
fn write_config(dir: &Path, mock: &MockWechat, wechat_extra: &str) {
    copy_files(&fixture_dir("rules"), &dir.join("rules"));
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[wechat]\ntoken = \"{TOKEN}\"\n\
         encoding_aes_key = \"{AES_KEY}\"\napi_base = \"{}\"\n{wechat_extra}\n\n\
         [rules]\ndir = \"rules\"\nhot_reload = false\n\n[state]\ndir = \"state\"\n",
        mock.url()
    );
    std::fs::write(dir.join("kefu.toml"), toml).expect("write kefu.toml");
}

/// Issue 13 item 15: a short admin token stops only `kefu serve` (exit 2, naming the key, its
/// source and the fix); client commands run with it.
#[test]
fn a_short_admin_token_stops_serve_but_not_client_commands() {
    let mock = MockWechat::start();
    mock.set_default("/wechat", MockResponse::status(200));
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &mock, "");
    let short = [("KEFU_ADMIN_TOKEN", "short-admin")];
    let url = format!("{}/wechat", mock.url());
    let pushed = run_kefu(dir.path(), &short, &["push", "--url", &url, "--text", "你好"]);
    assert_eq!(pushed.code, 0, "{}{}", pushed.stdout(), pushed.stderr());
    assert_eq!(mock.count("/wechat"), 1);
    let checked = run_kefu(dir.path(), &short, &["rules", "check"]);
    assert_eq!(checked.code, 0, "{}{}", checked.stdout(), checked.stderr());

    let served = run_kefu(dir.path(), &short, &["serve"]);
    assert_eq!(served.code, 2, "{}", served.stderr());
    let err = served.stderr();
    assert!(err.contains("`admin.token` (set by KEFU_ADMIN_TOKEN) has 11 characters"), "{err}");
    assert!(err.contains("change KEFU_ADMIN_TOKEN"), "{err}");
    assert!(err.contains("at least 16") && err.contains("openssl rand -hex 24"), "{err}");
    assert!(!err.contains("short-admin"), "the token is not echoed: {err}");
    // From the file, the file is named.
    let toml = std::fs::read_to_string(dir.path().join("kefu.toml")).unwrap();
    std::fs::write(
        dir.path().join("kefu.toml"),
        format!("{toml}\n[admin]\ntoken = \"tooshort\"\n"),
    )
    .unwrap();
    let served = run_kefu(dir.path(), &[], &["serve"]);
    assert_eq!(served.code, 2, "{}", served.stderr());
    assert!(served.stderr().contains("kefu.toml) has 8 characters"), "{}", served.stderr());
}

/// Issue 13 item 17: `wechat.app_id` without `app_secret` serves: an encrypted push (the AppID
/// inside it checked) gets its passive reply, the customer-service messages the rule plans are
/// logged as dry-run and nothing reaches the WeChat API, and one warning says why and what to
/// set.
#[test]
fn app_id_without_secret_answers_encrypted_pushes_with_sending_off() {
    let mock = MockWechat::start();
    let dir = tempfile::tempdir().expect("tempdir");
    write_config(dir.path(), &mock, &format!("app_id = \"{APP_ID}\""));
    let server = serve(dir.path(), &[], &[]);
    let hook = server.url("/wechat");
    let pushed = run_kefu(
        dir.path(),
        &[],
        &["push", "--url", &hook, "--encrypt", "--from", "oAppIdOnly0001", "--text", "价格"],
    );
    assert_eq!(pushed.code, 0, "{}{}", pushed.stdout(), pushed.stderr());
    let out = pushed.stdout();
    assert!(out.contains("(reply decrypted)") && out.contains("价格表见菜单。"), "{out}");
    // Two more messages were planned; wait until the sender has logged both as dry-run.
    let started = Instant::now();
    let ran = loop {
        std::thread::sleep(Duration::from_millis(200));
        let dry = server
            .stderr_lines()
            .iter()
            .filter(|l| l.contains("dry-run") && l.contains("本周特价"))
            .count();
        if dry >= 1 || started.elapsed() > PATIENCE {
            break server.stop();
        }
    };
    assert!(count_lines(&ran, "dry-run") >= 2, "{}", ran.stderr());
    assert_eq!(mock.total_count(), 0, "nothing may reach the WeChat API: {:?}", mock.requests());
    let warnings: Vec<String> = ran
        .stderr
        .iter()
        .map(|l| strip_ansi(&String::from_utf8_lossy(l)))
        .filter(|l| l.contains("WARN"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:#?}");
    let w = &warnings[0];
    assert!(
        w.contains("sending is off")
            && w.contains("wechat.app_secret")
            && w.contains("KEFU_WECHAT_APP_SECRET"),
        "{w}"
    );

    // The AppID is checked: a push encrypted for another app is refused.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    write_config(&other, &mock, "app_id = \"wx0000000000000000\"");
    let server = serve(dir.path(), &[], &[]);
    let hook = server.url("/wechat");
    let pushed = run_kefu(
        &other,
        &[],
        &["push", "--url", &hook, "--encrypt", "--from", "oAppIdOnly0002", "--text", "价格"],
    );
    assert_eq!(pushed.code, 1, "{}{}", pushed.stdout(), pushed.stderr());
    assert!(pushed.stdout().contains("HTTP 401"), "{}", pushed.stdout());
    drop(server.stop());
}

/// Issue 13 item 18: `kefu push` sends `wechat.original_id` as `ToUserName` (plaintext and
/// encrypted), `kefu simulate` answers from it; `wechat.account_id` (the WeChat ID) is not
/// used for either; without `original_id` a `gh_` placeholder is used.
#[test]
fn push_and_simulate_name_the_account_by_its_original_id() {
    let mock = MockWechat::start();
    mock.set_default("/wechat", MockResponse::status(200));
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = format!(
        "app_id = \"{APP_ID}\"\noriginal_id = \"gh_0riginal1d\"\naccount_id = \"myshopwx\""
    );
    write_config(dir.path(), &mock, &ids);
    let url = format!("{}/wechat", mock.url());
    for extra in [&[][..], &["--encrypt"]] {
        let mut args = vec!["push", "--url", &url, "--text", "你好"];
        args.extend_from_slice(extra);
        let r = run_kefu(dir.path(), &[], &args);
        assert_eq!(r.code, 0, "{}{}", r.stdout(), r.stderr());
        let body = mock.requests_to("/wechat").last().expect("the push").body_text();
        assert!(body.contains("<ToUserName><![CDATA[gh_0riginal1d]]></ToUserName>"), "{body}");
        assert!(!body.contains("myshopwx"), "{body}");
        if !extra.is_empty() {
            let key = kefu::wechat::crypto::AesKey::from_encoding_aes_key(AES_KEY).unwrap();
            let enc = crate::helpers::between(&body, "<Encrypt><![CDATA[", "]]></Encrypt>");
            let (inner, appid) = key.decrypt(enc).expect("decrypts");
            assert_eq!(appid, APP_ID);
            assert!(
                inner.contains("<ToUserName><![CDATA[gh_0riginal1d]]></ToUserName>"),
                "{inner}"
            );
        }
    }
    let sim = run_kefu(dir.path(), &[], &["simulate", "--text", "价格"]);
    assert_eq!(sim.code, 0, "{}", sim.stderr());
    assert!(
        sim.stdout().contains("<FromUserName><![CDATA[gh_0riginal1d]]></FromUserName>"),
        "{}",
        sim.stdout()
    );
    assert!(!sim.stdout().contains("myshopwx"), "{}", sim.stdout());

    // Without original_id: the placeholder, still not the account_id.
    write_config(dir.path(), &mock, "account_id = \"myshopwx\"");
    let r = run_kefu(dir.path(), &[], &["push", "--url", &url, "--text", "你好"]);
    assert_eq!(r.code, 0, "{}", r.stderr());
    let body = mock.requests_to("/wechat").last().expect("the push").body_text();
    assert!(body.contains("<ToUserName><![CDATA[gh_kefu_push]]></ToUserName>"), "{body}");

    // A WeChat ID where the original ID belongs is refused with the fix.
    write_config(dir.path(), &mock, "original_id = \"myshopwx\"");
    let r: Ran = run_kefu(dir.path(), &[], &["push", "--url", &url, "--text", "你好"]);
    assert_eq!(r.code, 2, "{}", r.stderr());
    assert!(
        r.stderr().contains("`wechat.original_id`") && r.stderr().contains("原始ID"),
        "{}",
        r.stderr()
    );
}
