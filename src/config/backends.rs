//! `[backends.NAME]` (interface §7.1): the operator's services (`kind = "http"`) and
//! OpenAI-compatible chat APIs (`kind = "openai"`) that a rule's `forward` reply sends a push to.
//!
//! Kept beside `config.rs` (one file per nested table) because a backend table is one level
//! deeper than the other sections (`backends.NAME.KEY`) and its keys depend on its `kind`:
//! the values are collected per backend first, then checked against the keys of its kind,
//! each error naming `backends.NAME.KEY` and where its value came from.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Origin, parse_duration, want_int, want_str};
use crate::model::Secret;

/// The keys every kind takes.
const COMMON_KEYS: [&str; 6] =
    ["kind", "timeout", "retries", "rate_limit", "rate_limited_text", "max_concurrent"];
/// The keys of `kind = "http"`.
const HTTP_KEYS: [&str; 2] = ["url", "secret"];
/// The keys of `kind = "openai"`.
const OPENAI_KEYS: [&str; 9] = [
    "base_url",
    "api_key",
    "model",
    "system_prompt",
    "system_prompt_file",
    "history",
    "history_ttl",
    "max_tokens",
    "temperature",
];

/// Every key a backend table may hold (any kind), longest first so that an environment
/// variable's name is split at the longest key it ends with (`…_BASE_URL` is `base_url`).
pub(super) fn all_keys() -> Vec<&'static str> {
    let mut keys: Vec<&str> =
        COMMON_KEYS.iter().chain(&HTTP_KEYS).chain(&OPENAI_KEYS).copied().collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    keys
}

/// One `[backends.NAME]` table, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendConfig {
    /// `NAME`: `[a-z0-9_-]+`, what a rule's `forward = "NAME"` names.
    pub name: String,
    pub kind: BackendKind,
    /// One attempt's time limit (`timeout`; default 10s for http, 60s for openai).
    pub timeout: Duration,
    /// More attempts after a timeout, a connection error or a 5xx (`retries`; default 2 for
    /// http, 1 for openai), with backoff 1 s, 2 s, 4 s … (interface §11.5).
    pub retries: u32,
    /// At most this many forwards per follower within the window (`rate_limit`, `"N/1m"`;
    /// `""` = none).
    pub rate_limit: Option<RateLimit>,
    /// Answered (as text) instead of forwarding when the follower is over `rate_limit`.
    pub rate_limited_text: String,
    /// At most this many calls of this backend in flight at once (`max_concurrent`, default
    /// 64); more forwards wait for a free slot.
    pub max_concurrent: usize,
}

/// What kind of service a backend is, with the keys of that kind.
#[derive(Clone, Debug, PartialEq)]
pub enum BackendKind {
    Http(HttpConfig),
    OpenAi(OpenAiConfig),
}

impl BackendKind {
    /// `"http"` or `"openai"`, as written in the config.
    pub fn as_str(&self) -> &'static str {
        match self {
            BackendKind::Http(_) => "http",
            BackendKind::OpenAi(_) => "openai",
        }
    }
}

/// `kind = "http"`: the operator's own service (interface §7.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// The `POST` target (`url`, http or https).
    pub url: String,
    /// Set: every request carries `X-Kefu-Timestamp` and `X-Kefu-Signature` (`secret`).
    pub secret: Secret,
}

/// `kind = "openai"`: an OpenAI-compatible chat-completions API (interface §7.6).
#[derive(Clone, Debug, PartialEq)]
pub struct OpenAiConfig {
    /// Without `/chat/completions` and without a trailing `/` (`base_url`).
    pub base_url: String,
    /// Sent as `Authorization: Bearer`; may be empty for local servers (`api_key`).
    pub api_key: Secret,
    pub model: String,
    /// `system_prompt`, or the contents of `system_prompt_file` (read at load).
    pub system_prompt: Option<String>,
    /// The file the prompt was read from, if it came from `system_prompt_file`.
    pub system_prompt_file: Option<PathBuf>,
    /// Previous turns kept per follower (`history`, default 10).
    pub history: usize,
    /// Older turns are forgotten (`history_ttl`, default 24h).
    pub history_ttl: Duration,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
}

/// `rate_limit = "N/DURATION"`: at most `count` forwards per follower within `per`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub count: u32,
    pub per: Duration,
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, humantime::format_duration(self.per))
    }
}

impl RateLimit {
    /// Parses `"10/1m"` (`""` = no limit).
    pub fn parse(s: &str) -> Result<Option<RateLimit>, String> {
        let s = s.trim();
        if s.is_empty() {
            return Ok(None);
        }
        let bad = || format!("{s:?} is not COUNT/DURATION, e.g. \"10/1m\" (or \"\" for no limit)");
        let (n, d) = s.split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = parse_duration(d)?;
        if count == 0 || per.is_zero() {
            return Err(format!("{s:?}: both the count and the duration must be above zero"));
        }
        Ok(Some(RateLimit { count, per }))
    }
}

/// Whether `name` is a valid backend name (`[a-z0-9_-]+`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The environment variable that sets `key` of backend `name`:
/// `KEFU_BACKENDS_<NAME>_<KEY>` (a `-` in the name is written `_`).
pub fn env_var(name: &str, key: &str) -> String {
    format!("KEFU_BACKENDS_{}_{}", name.replace('-', "_"), key).to_ascii_uppercase()
}

/// The raw values of one backend, by key, with their origins.
pub(super) type RawBackend = BTreeMap<String, (toml::Value, Origin)>;

/// Splits the part of `KEFU_BACKENDS_<REST>` after the prefix into (backend, key): the name
/// is matched against the backends the file names (a `-` written `_`), else it is the rest
/// before the longest known key it ends with, lower-cased.
pub(super) fn split_env(rest: &str, known: &[String]) -> Option<(String, String)> {
    let keys: Vec<String> = all_keys().iter().map(|k| k.to_string()).collect();
    super::split_table_env(rest, known, &keys)
}

/// Checks one backend's values against the keys of its kind: every error, one per line, names
/// `backends.NAME.KEY` and where its value came from.
pub(super) fn build(
    name: &str,
    raw: &RawBackend,
    cwd: &Path,
    file_dir: Option<&Path>,
) -> Result<BackendConfig, Vec<String>> {
    let mut errors = Vec::new();
    let at = |key: &str| -> String {
        match raw.get(key) {
            Some((_, o)) => format!("`backends.{name}.{key}` from {o}"),
            None => format!("`backends.{name}.{key}`"),
        }
    };
    if !valid_name(name) {
        errors.push(format!(
            "[backends.{name}]: a backend name is lower-case letters, digits, `_` and `-` \
             (it is what rules name in forward = \"…\")"
        ));
    }
    let kind = match raw.get("kind").map(|(v, _)| want_str(v)) {
        None => {
            errors.push(format!(
                "[backends.{name}] needs `kind`: \"http\" (your own service) or \"openai\" (an \
                 OpenAI-compatible chat API){}",
                raw.values().next().map(|(_, o)| format!(" (in {o})")).unwrap_or_default()
            ));
            return Err(errors);
        }
        Some(Err(why)) => {
            errors.push(format!("{}: {why}", at("kind")));
            return Err(errors);
        }
        Some(Ok(k)) if k == "http" || k == "openai" => k,
        Some(Ok(k)) => {
            errors.push(format!(
                "{}: unknown kind {k:?}; a backend is kind = \"http\" or kind = \"openai\"",
                at("kind")
            ));
            return Err(errors);
        }
    };
    let own: &[&str] = if kind == "http" { &HTTP_KEYS } else { &OPENAI_KEYS };
    for key in raw.keys() {
        if !COMMON_KEYS.contains(&key.as_str()) && !own.contains(&key.as_str()) {
            let mut takes: Vec<&str> = COMMON_KEYS.iter().chain(own).copied().collect();
            takes.sort();
            errors.push(format!(
                "{}: unknown key for kind = \"{kind}\"; [backends.{name}] takes {}",
                at(key),
                takes.join(", ")
            ));
        }
    }
    // Each key: Ok(None) when absent, Ok(Some(v)) when valid, Err pushed.
    let mut get = |key: &str, f: &dyn Fn(&toml::Value, &Origin) -> Result<(), String>| {
        if let Some((v, o)) = raw.get(key)
            && let Err(why) = f(v, o)
        {
            errors.push(format!("{}: {why}", at(key)));
        }
    };
    let cell = std::cell::RefCell::new(BackendConfig {
        name: name.to_string(),
        kind: if kind == "http" {
            BackendKind::Http(HttpConfig { url: String::new(), secret: Secret::default() })
        } else {
            BackendKind::OpenAi(OpenAiConfig {
                base_url: String::new(),
                api_key: Secret::default(),
                model: String::new(),
                system_prompt: None,
                system_prompt_file: None,
                history: 10,
                history_ttl: Duration::from_secs(24 * 3600),
                max_tokens: None,
                temperature: None,
            })
        },
        timeout: Duration::from_secs(if kind == "http" { 10 } else { 60 }),
        retries: if kind == "http" { 2 } else { 1 },
        rate_limit: None,
        rate_limited_text: "消息太频繁了，请稍后再试。".into(),
        max_concurrent: 64,
    });
    get("timeout", &|v, _| {
        let d = parse_duration(&want_str(v)?)?;
        if d < Duration::from_millis(100) {
            return Err("a timeout under 100ms fails every call; use e.g. 10s".into());
        }
        cell.borrow_mut().timeout = d;
        Ok(())
    });
    get("retries", &|v, _| {
        let n = want_int(v, 0)?;
        if n > 10 {
            return Err(format!(
                "{n} retries with doubling backoff would wait over 17 minutes; use at most 10"
            ));
        }
        cell.borrow_mut().retries = n as u32;
        Ok(())
    });
    get("rate_limit", &|v, _| {
        cell.borrow_mut().rate_limit = RateLimit::parse(&want_str(v)?)?;
        Ok(())
    });
    get("rate_limited_text", &|v, _| {
        cell.borrow_mut().rate_limited_text = want_str(v)?;
        Ok(())
    });
    get("max_concurrent", &|v, _| {
        cell.borrow_mut().max_concurrent = want_int(v, 1)? as usize;
        Ok(())
    });
    let url = |v: &toml::Value, what: &str| -> Result<String, String> {
        let s = want_str(v)?.trim().to_string();
        let u = url::Url::parse(&s).map_err(|e| format!("{s:?} is not a URL ({e}); {what}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err(format!("{s:?} must be an http or https URL"));
        }
        Ok(s)
    };
    if kind == "http" {
        get("url", &|v, _| {
            let s = url(v, "write e.g. http://127.0.0.1:9000/kefu")?;
            if let BackendKind::Http(h) = &mut cell.borrow_mut().kind {
                h.url = s;
            }
            Ok(())
        });
        get("secret", &|v, _| {
            if let BackendKind::Http(h) = &mut cell.borrow_mut().kind {
                h.secret = Secret::new(want_str(v)?);
            }
            Ok(())
        });
    } else {
        get("base_url", &|v, _| {
            let s = url(v, "write e.g. https://api.deepseek.com/v1")?;
            if let BackendKind::OpenAi(o) = &mut cell.borrow_mut().kind {
                o.base_url = s.trim_end_matches('/').trim_end_matches("/chat/completions").into();
            }
            Ok(())
        });
        get("api_key", &|v, _| {
            if let BackendKind::OpenAi(o) = &mut cell.borrow_mut().kind {
                o.api_key = Secret::new(want_str(v)?.trim());
            }
            Ok(())
        });
        get("model", &|v, _| {
            let s = want_str(v)?.trim().to_string();
            if let BackendKind::OpenAi(o) = &mut cell.borrow_mut().kind {
                o.model = s;
            }
            Ok(())
        });
        get("system_prompt", &|v, _| {
            let s = want_str(v)?;
            if let BackendKind::OpenAi(o) = &mut cell.borrow_mut().kind {
                o.system_prompt = Some(s).filter(|s| !s.trim().is_empty());
            }
            Ok(())
        });
        get("system_prompt_file", &|v, o| {
            let p = PathBuf::from(want_str(v)?);
            let p = if p.is_absolute() {
                p
            } else {
                match (o, file_dir) {
                    (Origin::File(_), Some(dir)) => dir.join(p),
                    _ => cwd.join(p),
                }
            };
            let text = std::fs::read_to_string(&p).map_err(|e| {
                format!(
                    "cannot read {} ({e}); a relative path is relative to the config file",
                    p.display()
                )
            })?;
            if let BackendKind::OpenAi(o) = &mut cell.borrow_mut().kind {
                o.system_prompt = Some(text).filter(|s| !s.trim().is_empty());
                o.system_prompt_file = Some(p);
            }
            Ok(())
        });
        get("history", &|v, _| {
            let n = want_int(v, 0)?;
            if let BackendKind::OpenAi(o) = &mut cell.borrow_mut().kind {
                o.history = n as usize;
            }
            Ok(())
        });
        get("history_ttl", &|v, _| {
            let d = parse_duration(&want_str(v)?)?;
            if let BackendKind::OpenAi(o) = &mut cell.borrow_mut().kind {
                o.history_ttl = d;
            }
            Ok(())
        });
        get("max_tokens", &|v, _| {
            let n = want_int(v, 1)?;
            if let BackendKind::OpenAi(o) = &mut cell.borrow_mut().kind {
                o.max_tokens = Some(u32::try_from(n).map_err(|_| format!("{n} is too large"))?);
            }
            Ok(())
        });
        get("temperature", &|v, _| {
            let t = v
                .as_float()
                .or_else(|| v.as_integer().map(|i| i as f64))
                .ok_or_else(|| format!("expected a number like 0.7, got {}", v.type_str()))?;
            if !(0.0..=2.0).contains(&t) {
                return Err(format!("{t} is outside 0 to 2"));
            }
            if let BackendKind::OpenAi(o) = &mut cell.borrow_mut().kind {
                o.temperature = Some(t as f32);
            }
            Ok(())
        });
    }
    let cfg = cell.into_inner();
    let missing = |key: &str, example: &str| {
        format!(
            "[backends.{name}] (kind = \"{kind}\") needs `{key}`: set `backends.{name}.{key}` \
             (e.g. {key} = {example}) or {}",
            env_var(name, key)
        )
    };
    match &cfg.kind {
        BackendKind::Http(h) if h.url.is_empty() && !raw.contains_key("url") => {
            errors.push(missing("url", "\"http://127.0.0.1:9000/kefu\""))
        }
        BackendKind::OpenAi(o) => {
            if o.base_url.is_empty() && !raw.contains_key("base_url") {
                errors.push(missing("base_url", "\"https://api.deepseek.com/v1\""));
            }
            if o.model.is_empty() && !raw.contains_key("model") {
                errors.push(missing("model", "\"deepseek-chat\""));
            } else if o.model.is_empty() {
                errors.push(format!("{}: the model name is empty", at("model")));
            }
            if raw.contains_key("system_prompt") && raw.contains_key("system_prompt_file") {
                errors.push(format!(
                    "{} and {} are both set: give the prompt one way, not both",
                    at("system_prompt"),
                    at("system_prompt_file")
                ));
            }
        }
        _ => {}
    }
    if errors.is_empty() { Ok(cfg) } else { Err(errors) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits() {
        assert_eq!(RateLimit::parse("").unwrap(), None);
        assert_eq!(
            RateLimit::parse("10/1m").unwrap(),
            Some(RateLimit { count: 10, per: Duration::from_secs(60) })
        );
        assert!(RateLimit::parse("10").unwrap_err().contains("COUNT/DURATION"));
        assert!(RateLimit::parse("0/1m").unwrap_err().contains("above zero"));
        assert!(RateLimit::parse("3/soon").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn env_names_split_at_the_longest_key() {
        let known = vec!["my-orders".to_string()];
        assert_eq!(split_env("MY_ORDERS_URL", &known), Some(("my-orders".into(), "url".into())));
        assert_eq!(split_env("AI_BASE_URL", &[]), Some(("ai".into(), "base_url".into())));
        assert_eq!(
            split_env("AI_RATE_LIMITED_TEXT", &[]),
            Some(("ai".into(), "rate_limited_text".into()))
        );
        assert_eq!(split_env("AI_API_KEY", &[]), Some(("ai".into(), "api_key".into())));
        assert_eq!(split_env("NOPE", &[]), None);
        assert_eq!(env_var("my-orders", "url"), "KEFU_BACKENDS_MY_ORDERS_URL");
    }

    fn load(text: &str, env: &[(&str, &str)]) -> Result<crate::config::Config, String> {
        crate::config::Config::from_parts(
            Some(Path::new("/etc/kefu/kefu.toml")),
            Some(text),
            env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
            Path::new("/work"),
        )
        .map_err(|e| e.0)
    }

    #[test]
    fn both_kinds_key_by_key_with_env_overrides() {
        let c = load(
            "[backends.orders]\nkind = \"http\"\nurl = \"http://127.0.0.1:9000/kefu\"\n\
             secret = \"s3cret-value\"\nrate_limit = \"3/1m\"\n\
             [backends.assistant]\nkind = \"openai\"\nbase_url = \"https://api.deepseek.com/v1/\"\n\
             model = \"deepseek-chat\"\nsystem_prompt = \"你好\"\nhistory = 4\ntemperature = 0.5\n\
             [delivery]\npassive_wait = \"2s\"\npending_text = \"稍等\"\ntyping = false\n",
            &[
                ("KEFU_BACKENDS_ORDERS_TIMEOUT", "3s"),
                ("KEFU_BACKENDS_ASSISTANT_API_KEY", "sk-live"),
                ("KEFU_BACKENDS_ORDERS_RETRIES", "0"),
            ],
        )
        .unwrap();
        let o = &c.backends["orders"];
        assert_eq!((o.timeout, o.retries), (Duration::from_secs(3), 0));
        assert_eq!(o.rate_limit, Some(RateLimit { count: 3, per: Duration::from_secs(60) }));
        let BackendKind::Http(h) = &o.kind else { panic!("http") };
        assert_eq!(h.secret.expose(), "s3cret-value");
        assert!(!format!("{c:?}").contains("s3cret") && !format!("{c:?}").contains("sk-live"));
        let a = &c.backends["assistant"];
        let BackendKind::OpenAi(ai) = &a.kind else { panic!("openai") };
        assert_eq!(ai.base_url, "https://api.deepseek.com/v1");
        assert_eq!((ai.history, ai.temperature, a.retries), (4, Some(0.5), 1));
        assert_eq!(ai.api_key.expose(), "sk-live");
        assert_eq!(
            c.key("backends.assistant.api_key"),
            "`backends.assistant.api_key` (set by KEFU_BACKENDS_ASSISTANT_API_KEY)"
        );
        assert_eq!(c.delivery.passive_wait, Duration::from_secs(2));
        assert_eq!((c.delivery.pending_text.as_str(), c.delivery.typing), ("稍等", false));
    }

    #[test]
    fn errors_name_the_key_and_source() {
        for (text, want) in [
            ("[backends.x]\nkind = \"grpc\"\n", "unknown kind \"grpc\""),
            ("[backends.x]\nurl = \"http://a\"\n", "[backends.x] needs `kind`"),
            ("[backends.x]\nkind = \"http\"\n", "needs `url`"),
            (
                "[backends.x]\nkind = \"http\"\nurl = \"http://a\"\nmodel = \"m\"\n",
                "`backends.x.model` from /etc/kefu/kefu.toml: unknown key for kind = \"http\"",
            ),
            ("[backends.x]\nkind = \"openai\"\nbase_url = \"http://a\"\n", "needs `model`"),
            ("[backends.x]\nkind = \"openai\"\nmodel = \"m\"\n", "needs `base_url`"),
            (
                "[backends.x]\nkind = \"http\"\nurl = \"ftp://a\"\n",
                "`backends.x.url` from /etc/kefu/kefu.toml",
            ),
            (
                "[backends.x]\nkind = \"http\"\nurl = \"http://a\"\nrate_limit = \"lots\"\n",
                "COUNT/DURATION",
            ),
            ("[backends.X]\nkind = \"http\"\nurl = \"http://a\"\n", "lower-case letters"),
            (
                "[backends.x]\nkind = \"openai\"\nbase_url = \"http://a\"\nmodel = \"m\"\nsystem_prompt = \"a\"\nsystem_prompt_file = \"/dev/null\"\n",
                "both set",
            ),
            ("[delivery]\npassive_wait = \"5s\"\n", "outside 100ms to 4.5s"),
        ] {
            let e = load(text, &[]).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        let e = load(
            "[backends.x]\nkind = \"http\"\nurl = \"http://a\"\n",
            &[("KEFU_BACKENDS_X_RETRIES", "many")],
        )
        .unwrap_err();
        assert!(e.contains("environment variable KEFU_BACKENDS_X_RETRIES"), "{e}");
    }
}
