//! Configuration (interface §2, §6.1): `kefu.toml` plus `KEFU_<SECTION>_<KEY>` overrides,
//! checked key by key so every error names the key and where its value came from.
//!
//! The schema is a table rather than serde derive because serde's errors cannot say *which
//! source* a bad value came from, and an operator fixing a value needs exactly that.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::model::{Secret, Trigger};
use crate::pay::v2::V2SignType;

pub mod accounts;
pub mod backends;
pub use accounts::{AccountConfig, DEFAULT_ACCOUNT};
pub use backends::{BackendConfig, BackendKind, HttpConfig, OpenAiConfig, RateLimit};

/// Where a value came from; printed in every error about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("the built-in default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(v) => write!(f, "environment variable {v}"),
        }
    }
}

/// A configuration error: one sentence naming the key, its source and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Path,
    Int,
    Bool,
    Window,
}

const SCHEMA: &[(&str, &[(&str, Kind)])] = &[
    (
        "server",
        &[
            ("listen", Kind::Str),
            ("path", Kind::Str),
            ("max_body_bytes", Kind::Int),
            ("max_clock_skew_secs", Kind::Int),
        ],
    ),
    (
        "wechat",
        &[
            ("app_id", Kind::Str),
            ("app_secret", Kind::Str),
            ("account_id", Kind::Str),
            ("original_id", Kind::Str),
            ("token", Kind::Str),
            ("encoding_aes_key", Kind::Str),
            ("previous_encoding_aes_key", Kind::Str),
            ("require_encryption", Kind::Bool),
            ("api_base", Kind::Str),
            ("token_endpoint", Kind::Str),
        ],
    ),
    (
        "window",
        &[
            ("message", Kind::Window),
            ("menu", Kind::Window),
            ("subscribe", Kind::Window),
            ("scan", Kind::Window),
            ("payment", Kind::Window),
        ],
    ),
    ("rules", &[("dir", Kind::Path), ("hot_reload", Kind::Bool), ("passive_first", Kind::Bool)]),
    ("state", &[("dir", Kind::Path), ("redis_url", Kind::Str), ("sync", Kind::Str)]),
    ("admin", &[("token", Kind::Str)]),
    (
        "delivery",
        &[
            ("max_text_bytes", Kind::Int),
            ("more_text", Kind::Str),
            ("customer_service", Kind::Str),
            ("hold_for", Kind::Str),
            ("passive_wait", Kind::Str),
            ("pending_text", Kind::Str),
            ("typing", Kind::Bool),
        ],
    ),
    (
        "pay",
        &[
            ("v2_api_key", Kind::Str),
            ("v2_sign_type", Kind::Str),
            ("v3_api_key", Kind::Str),
            ("v3_platform_public_key", Kind::Path),
        ],
    ),
    // ---- media ----
    ("media", &[("refresh_after", Kind::Str)]),
    // ---- conversation log and console ----
    ("log", &[("retention", Kind::Str)]),
    ("console", &[("secure_cookie", Kind::Bool)]),
];

/// `KEFU_*` variables of the command line, not config keys, though one shares a section's
/// prefix (`KEFU_LOG_FORMAT` and `[log]`).
const CLI_VARIABLES: &[&str] = &["KEFU_LOG_FORMAT"];

/// The shortest `admin.token` that `kefu serve` accepts (a bearer token for `/admin/*`).
pub const ADMIN_TOKEN_MIN_CHARS: usize = 16;

/// The complete, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub server: ServerConfig,
    pub wechat: WechatConfig,
    pub window: WindowConfig,
    pub rules: RulesConfig,
    pub state: StateConfig,
    pub admin: AdminConfig,
    pub delivery: DeliveryConfig,
    pub pay: PayConfig,
    pub media: MediaConfig,
    /// `[backends.NAME]` by name (interface §7.1).
    pub backends: BTreeMap<String, BackendConfig>,
    pub log: LogConfig,
    pub console: ConsoleConfig,
    /// The `[accounts.NAME]` tables, by name (interface §10); empty when there are none,
    /// and then the one account is `default`, made of `[wechat]`, `server.path`, `rules.dir`
    /// and `[window]` as they are now ([`Config::served`]). In an account's view: that one
    /// account, when it is a table.
    pub accounts: Vec<AccountConfig>,
    /// In an account's view ([`Config::select`]) of an `[accounts.NAME]` table: NAME. Its
    /// `wechat`, `window`, `server.path`, `rules.dir` and `state.dir` are the account's, and
    /// [`Config::key`] names its keys `accounts.NAME.KEY`.
    pub account: Option<String>,
    /// What is accepted but worth a word at start (`[wechat]` left out beside
    /// `[accounts.*]`); printed by the command line once the config is loaded.
    pub warnings: Vec<String>,
    /// The file it was read from, if any.
    pub file: Option<PathBuf>,
    /// Where each key set by the file or the environment came from, by `section.key`; a key
    /// not in it has its built-in default. Read through [`Config::origin`].
    pub origins: BTreeMap<String, Origin>,
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub listen: String,
    pub path: String,
    pub max_body_bytes: usize,
    /// 0 = freshness check off.
    pub max_clock_skew_secs: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenEndpoint {
    Stable,
    Classic,
}

#[derive(Clone, Debug)]
pub struct WechatConfig {
    /// The AppID (开发者ID). Alone (without `app_secret`) it still checks the AppID inside
    /// encrypted pushes; sending needs both.
    pub app_id: String,
    pub app_secret: Secret,
    /// The account's WeChat ID (微信号): completes a bare kf account prefix to
    /// `prefix@account_id`. Not the original ID.
    pub account_id: String,
    /// The account's original ID (原始ID, `gh_` + letters and digits): the `ToUserName` of every
    /// push WeChat sends it, which `kefu push` and `kefu simulate` use. Empty = a placeholder.
    pub original_id: String,
    pub token: Secret,
    pub encoding_aes_key: Secret,
    pub previous_encoding_aes_key: Secret,
    pub require_encryption: bool,
    pub api_base: String,
    pub token_endpoint: TokenEndpoint,
}

impl WechatConfig {
    /// Without credentials kefu runs in dry-run mode: sends are logged, not made.
    pub fn has_credentials(&self) -> bool {
        !self.app_id.is_empty() && !self.app_secret.is_empty()
    }

    /// An AppID without its AppSecret: pushes are verified, decrypted (the AppID checked) and
    /// answered passively, but nothing can be sent (an uncertified account, or a dry run in
    /// safe mode).
    pub fn app_id_only(&self) -> bool {
        !self.app_id.is_empty() && self.app_secret.is_empty()
    }
}

/// One trigger's quota: `limit` messages (None = unlimited) within `duration` of the trigger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowRule {
    pub limit: Option<u32>,
    pub duration: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WindowConfig {
    pub message: WindowRule,
    pub menu: WindowRule,
    pub subscribe: WindowRule,
    pub scan: WindowRule,
    pub payment: WindowRule,
}

impl WindowConfig {
    pub fn rule(&self, t: Trigger) -> WindowRule {
        match t {
            Trigger::Message => self.message,
            Trigger::Menu => self.menu,
            Trigger::Subscribe => self.subscribe,
            Trigger::Scan => self.scan,
            Trigger::Payment => self.payment,
        }
    }
    /// The longest window any trigger opens; a delay longer than this can never be sent.
    pub fn longest(&self) -> Duration {
        Trigger::ALL.iter().map(|t| self.rule(*t).duration).max().unwrap_or_default()
    }
}

impl Default for WindowConfig {
    /// Today's official rules (protocol §4.2).
    fn default() -> Self {
        let h48 = Duration::from_secs(48 * 3600);
        let m1 = Duration::from_secs(60);
        WindowConfig {
            message: WindowRule { limit: Some(5), duration: h48 },
            menu: WindowRule { limit: Some(3), duration: m1 },
            subscribe: WindowRule { limit: Some(3), duration: m1 },
            scan: WindowRule { limit: Some(3), duration: m1 },
            payment: WindowRule { limit: None, duration: h48 },
        }
    }
}

#[derive(Clone, Debug)]
pub struct RulesConfig {
    pub dir: PathBuf,
    pub hot_reload: bool,
    pub passive_first: bool,
}

#[derive(Clone, Debug)]
pub struct StateConfig {
    pub dir: PathBuf,
    /// May carry a password, hence a secret.
    pub redis_url: Secret,
    pub sync: SyncMode,
    /// Cut a damaged journal at the damage instead of refusing to start (`kefu serve
    /// --truncate-journal`, never a file key: it drops acknowledged records).
    pub truncate_journal: bool,
}

/// When a commit of the embedded store counts as durable, i.e. when kefu may answer WeChat
/// (`state.sync`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// `"full"`: the log is fsynced before the answer; a power cut loses nothing acknowledged.
    #[default]
    Full,
    /// `"normal"`: the answer goes once the commit is in the operating system's cache; a kefu
    /// crash or `kill -9` loses nothing, a power cut or kernel crash at most about the last
    /// second (the log is fsynced every second).
    Normal,
    /// Never fsynced: benches and tests only, not a config value.
    Off,
}

#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Empty = admin API off.
    pub token: Secret,
}

/// `[delivery]`: how answers that are ready after the push reach the follower (interface
/// §7.4, §7.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryConfig {
    /// Longest text message in UTF-8 bytes (`max_text_bytes`, default 2000: WeChat refuses a
    /// longer `custom/send` text with 45002, protocol §6.4); longer text replies are split.
    pub max_text_bytes: usize,
    /// Appended to the last message sent for a push when answers stay held (`more_text`);
    /// empty = nothing appended.
    pub more_text: String,
    /// Whether this account may call `custom/send` (`customer_service`).
    pub customer_service: CustomerServiceMode,
    /// How long a held answer waits for the follower's next push before it is dropped with
    /// reason `expired` (`hold_for`, default 48h).
    pub hold_for: Duration,
    /// How long a push waits for a forwarded answer before it is answered without it
    /// (`passive_wait`, default 4s; at most 4.5s, as WeChat waits 5 s).
    pub passive_wait: Duration,
    /// The passive answer while a forwarded answer is still being prepared (`pending_text`;
    /// empty = `success`).
    pub pending_text: String,
    /// Send `custom/typing` while waiting for a backend, when `custom/send` is allowed
    /// (`typing`, default true).
    pub typing: bool,
}

/// `delivery.customer_service`: `"auto"` (the default) calls `custom/send` until WeChat answers
/// 48001 or 48004 (the account lacks the customer-service API: an uncertified account), then
/// holds every answer for the follower's next push; `"on"` always calls it; `"off"` never does
/// and holds everything after the HTTP answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CustomerServiceMode {
    #[default]
    Auto,
    On,
    Off,
}

impl CustomerServiceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CustomerServiceMode::Auto => "auto",
            CustomerServiceMode::On => "on",
            CustomerServiceMode::Off => "off",
        }
    }
}

/// The smallest `delivery.max_text_bytes`: room for the longest grapheme clusters people
/// type (a family emoji with skin tones is 35 bytes) several times over.
pub const MIN_TEXT_BYTES: i64 = 64;
/// WeChat's limit for a text message (protocol §6.4); `max_text_bytes` may not exceed it.
pub const MAX_TEXT_BYTES: i64 = 2048;

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            max_text_bytes: 2000,
            more_text: "（回复任意内容继续）".into(),
            customer_service: CustomerServiceMode::Auto,
            hold_for: Duration::from_secs(48 * 3600),
            passive_wait: Duration::from_secs(4),
            pending_text: String::new(),
            typing: true,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PayConfig {
    pub v2_api_key: Secret,
    /// Which algorithm v2 notifications are checked with (`pay.v2_sign_type`: `"auto"`, the
    /// default, decides by the sign's length; `"MD5"` or `"HMAC-SHA256"` fix it).
    pub v2_sign_type: V2SignType,
    pub v3_api_key: Secret,
    pub v3_platform_public_key: Option<PathBuf>,
}

// ---- media ----

/// `[media]`: files named in replies (interface §9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    /// Upload a file again once its media id is this old (`media.refresh_after`, humantime,
    /// default 60h). WeChat keeps temporary media 3 days, so it must be shorter than 72h.
    pub refresh_after: Duration,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig { refresh_after: Duration::from_secs(60 * 3600) }
    }
}

// ---- conversation log and console ----

/// `[log]`: the conversation log (interface §8.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// How long records are kept (`log.retention`, humantime, default 30d); zero keeps none.
    pub retention: Duration,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { retention: crate::convlog::DEFAULT_RETENTION }
    }
}

/// `[console]`: the web console (interface §8.2).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsoleConfig {
    /// Mark the session cookie `Secure` (`console.secure_cookie`): set it when kefu is
    /// reached over HTTPS (behind a TLS proxy), so the browser never sends the cookie in clear.
    pub secure_cookie: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            server: ServerConfig {
                listen: "127.0.0.1:8080".into(),
                path: "/wechat".into(),
                max_body_bytes: 65536,
                max_clock_skew_secs: 300,
            },
            wechat: WechatConfig {
                app_id: String::new(),
                app_secret: Secret::default(),
                account_id: String::new(),
                original_id: String::new(),
                token: Secret::default(),
                encoding_aes_key: Secret::default(),
                previous_encoding_aes_key: Secret::default(),
                require_encryption: false,
                api_base: "https://api.weixin.qq.com".into(),
                token_endpoint: TokenEndpoint::Stable,
            },
            window: WindowConfig::default(),
            rules: RulesConfig { dir: "rules".into(), hot_reload: true, passive_first: true },
            state: StateConfig {
                dir: "kefu-data".into(),
                redis_url: Secret::default(),
                sync: SyncMode::Full,
                truncate_journal: false,
            },
            admin: AdminConfig { token: Secret::default() },
            delivery: DeliveryConfig::default(),
            pay: PayConfig {
                v2_api_key: Secret::default(),
                v2_sign_type: V2SignType::Auto,
                v3_api_key: Secret::default(),
                v3_platform_public_key: None,
            },
            media: MediaConfig::default(),
            backends: BTreeMap::new(),
            log: LogConfig::default(),
            console: ConsoleConfig::default(),
            accounts: Vec::new(),
            account: None,
            warnings: Vec::new(),
            file: None,
            origins: BTreeMap::new(),
        }
    }
}

impl Config {
    /// Interface §6.1: `explicit`, else `./kefu.toml` if present, else defaults; then the
    /// process environment's `KEFU_*` variables.
    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        Self::load_with(explicit, std::env::vars(), &cwd)
    }

    /// The same with the environment and working directory given (tests).
    pub fn load_with(
        explicit: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cwd: &Path,
    ) -> Result<Config, ConfigError> {
        let file = match explicit {
            Some(p) => {
                let p = if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) };
                if !p.is_file() {
                    return Err(ConfigError(format!(
                        "config file {} does not exist or is not a file: check the --config path",
                        p.display()
                    )));
                }
                Some(p)
            }
            None => Some(cwd.join("kefu.toml")).filter(|p| p.is_file()),
        };
        let text = match &file {
            Some(p) => Some(std::fs::read_to_string(p).map_err(|e| {
                ConfigError(format!("cannot read config file {}: {e}", p.display()))
            })?),
            None => None,
        };
        Self::from_parts(file.as_deref(), text.as_deref(), env, cwd)
    }

    /// Builds a config from a file's text (if any) and environment variables.
    pub fn from_parts(
        file: Option<&Path>,
        text: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
        cwd: &Path,
    ) -> Result<Config, ConfigError> {
        let mut values: BTreeMap<(String, String), (toml::Value, Origin)> = BTreeMap::new();
        let mut raw_backends: BTreeMap<String, backends::RawBackend> = BTreeMap::new();
        let mut raw_accounts: BTreeMap<String, accounts::RawAccount> = BTreeMap::new();
        let mut errors = Vec::new();

        if let (Some(path), Some(text)) = (file, text) {
            let origin = Origin::File(path.to_path_buf());
            match text.parse::<toml::Table>() {
                Err(e) => {
                    // Not `e`'s Display: it quotes the offending line, and that line may
                    // hold a secret. Where, and what is wrong, is enough to fix it.
                    let at = e
                        .span()
                        .map(|s| {
                            let (line, col) = line_col(text, s.start);
                            format!(":{line}:{col}")
                        })
                        .unwrap_or_default();
                    return Err(ConfigError(format!(
                        "{}{at}: not valid TOML: {}",
                        path.display(),
                        e.message().trim().replace('\n', "; ")
                    )));
                }
                Ok(table) => {
                    for (section, v) in table {
                        if section == "backends" {
                            backend_tables(path, v, &origin, &mut raw_backends, &mut errors);
                            continue;
                        }
                        if section == "accounts" {
                            accounts::file_tables(path, v, &origin, &mut raw_accounts, &mut errors);
                            continue;
                        }
                        let Some(keys) = schema_section(&section) else {
                            errors.push(format!(
                                "{}: unknown section [{section}]; known sections are {}, backends, \
                                 accounts",
                                path.display(),
                                SCHEMA.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
                            ));
                            continue;
                        };
                        let toml::Value::Table(t) = v else {
                            errors.push(format!("{}: `{section}` must be a table", path.display()));
                            continue;
                        };
                        for (key, v) in t {
                            if keys.iter().any(|(k, _)| *k == key) {
                                values.insert((section.clone(), key), (v, origin.clone()));
                            } else {
                                errors.push(format!(
                                    "{}: unknown key `{section}.{key}`; [{section}] takes {}",
                                    path.display(),
                                    keys.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
                                ));
                            }
                        }
                    }
                }
            }
        }

        let mut env: Vec<(String, String)> = env.into_iter().collect();
        env.sort();
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("KEFU_") else { continue };
            if let Some(a) = rest.strip_prefix("ACCOUNTS_") {
                let known: Vec<String> = raw_accounts.keys().cloned().collect();
                let parsed =
                    split_table_env(a, &known, &accounts::all_keys()).map(|(acct, key)| {
                        let kind = accounts::stands_for(&key)
                            .and_then(|(s, k)| schema_section(s)?.iter().find(|(n, _)| *n == k))
                            .map_or(Kind::Str, |(_, kind)| *kind);
                        (acct, key, env_value(kind, &raw))
                    });
                match parsed {
                    Some((acct, key, Ok(v))) => {
                        raw_accounts
                            .entry(acct)
                            .or_default()
                            .insert(key, (v, Origin::Env(name.clone())));
                    }
                    Some((_, _, Err(why))) => {
                        errors.push(format!("environment variable {name}: {why}"))
                    }
                    None => errors.push(format!(
                        "environment variable {name}: not KEFU_ACCOUNTS_<NAME>_<KEY>; <KEY> is one \
                         of {}",
                        accounts::env_keys().join(", ")
                    )),
                }
                continue;
            }
            if let Some(b) = rest.strip_prefix("BACKENDS_") {
                let known: Vec<String> = raw_backends.keys().cloned().collect();
                match backends::split_env(b, &known) {
                    Some((backend, key)) => {
                        let v = if key == "retries"
                            || key == "history"
                            || key == "max_tokens"
                            || key == "max_concurrent"
                        {
                            env_value(Kind::Int, &raw)
                        } else if key == "temperature" {
                            raw.trim()
                                .parse::<f64>()
                                .map(toml::Value::Float)
                                .map_err(|_| format!("{raw:?} is not a number"))
                        } else {
                            env_value(Kind::Str, &raw)
                        };
                        match v {
                            Ok(v) => {
                                raw_backends
                                    .entry(backend)
                                    .or_default()
                                    .insert(key, (v, Origin::Env(name.clone())));
                            }
                            Err(why) => errors.push(format!("environment variable {name}: {why}")),
                        }
                    }
                    None => errors.push(format!(
                        "environment variable {name}: not KEFU_BACKENDS_<NAME>_<KEY>; a backend \
                         takes {}",
                        backends::all_keys().join(", ")
                    )),
                }
                continue;
            }
            if CLI_VARIABLES.contains(&name.as_str()) {
                continue; // `[log]` is a section, but KEFU_LOG_FORMAT is the CLI's --log-format
            }
            let lower = rest.to_ascii_lowercase();
            let Some((section, keys)) = SCHEMA
                .iter()
                .find(|(s, _)| lower.starts_with(&format!("{s}_")))
                .map(|(s, k)| (*s, *k))
            else {
                continue; // KEFU_LOG_FORMAT and friends are not config keys
            };
            let key = &lower[section.len() + 1..];
            let Some((_, kind)) = keys.iter().find(|(k, _)| *k == key) else {
                errors.push(format!(
                    "environment variable {name}: [{section}] has no key `{key}`; it takes {}",
                    keys.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
                ));
                continue;
            };
            match env_value(*kind, &raw) {
                Ok(v) => {
                    values.insert((section.into(), key.into()), (v, Origin::Env(name.clone())));
                }
                Err(why) => errors.push(format!("environment variable {name}: {why}")),
            }
        }

        let mut cfg = Config {
            file: file.map(Path::to_path_buf),
            origins: values
                .iter()
                .map(|((s, k), (_, o))| (format!("{s}.{k}"), o.clone()))
                .collect(),
            ..Config::default()
        };
        let file_dir = file.and_then(Path::parent).map(Path::to_path_buf);
        for ((section, key), (value, origin)) in &values {
            if let Err(why) = apply(&mut cfg, section, key, value, origin, cwd, file_dir.as_deref())
            {
                errors.push(format!("`{section}.{key}` from {origin}: {why}"));
            }
        }
        for (name, raw) in &raw_backends {
            for (key, (_, o)) in raw {
                cfg.origins.insert(format!("backends.{name}.{key}"), o.clone());
            }
            match backends::build(name, raw, cwd, file_dir.as_deref()) {
                Ok(b) => {
                    cfg.backends.insert(name.clone(), b);
                }
                Err(e) => errors.extend(e),
            }
        }
        for (name, raw) in &raw_accounts {
            for (key, (_, o)) in raw {
                cfg.origins.insert(format!("accounts.{name}.{key}"), o.clone());
            }
        }
        let origin_of = |s: &str, k: &str| cfg.origin(&format!("{s}.{k}"));
        errors.extend(cfg.cross_checks(&origin_of));
        if !raw_accounts.is_empty() {
            match accounts::build(&cfg, &raw_accounts, cwd, file_dir.as_deref()) {
                Ok(list) => {
                    cfg.accounts = list;
                    for a in &cfg.accounts {
                        errors.extend(cfg.view(a).wechat_checks());
                    }
                }
                Err(e) => errors.extend(e),
            }
            // A typo in the NAME of a KEFU_ACCOUNTS_* variable makes a new account: say so
            // when the file has accounts and this one is not among them.
            let in_file: Vec<&String> = raw_accounts
                .iter()
                .filter(|(_, keys)| keys.values().any(|(_, o)| matches!(o, Origin::File(_))))
                .map(|(n, _)| n)
                .collect();
            for (name, keys) in &raw_accounts {
                if !in_file.is_empty() && !in_file.contains(&name) {
                    let vars: Vec<String> = keys.values().map(|(_, o)| o.to_string()).collect();
                    cfg.warnings.push(format!(
                        "account `{name}` is defined by environment variables alone ({}); the \
                         config file's accounts are {}. If that is a typo of one of them, fix the \
                         variable's name: as it is, kefu serves `{name}` as an account of its own",
                        vars.join(", "),
                        in_file.iter().map(|n| n.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            let wechat_keys: Vec<String> =
                cfg.origins.keys().filter(|k| k.starts_with("wechat.")).cloned().collect();
            if !wechat_keys.is_empty() {
                cfg.warnings.push(format!(
                    "[wechat] is left out: [accounts.*] tables are configured, and each account \
                     has its own keys; {} {} ignored. Move them into an [accounts.NAME] table \
                     (name it `default` to keep the state in state.dir) or remove them",
                    wechat_keys
                        .iter()
                        .map(|k| format!("`{k}` ({})", cfg.origin(k)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if wechat_keys.len() == 1 { "is" } else { "are" }
                ));
            }
        }

        if errors.is_empty() { Ok(cfg) } else { Err(ConfigError(errors.join("\n"))) }
    }

    /// The checks of one account's `[wechat]` keys (the top-level section, or an account's
    /// view): each names the key as the operator wrote it (`accounts.shop.app_id`).
    fn wechat_checks(&self) -> Vec<String> {
        let mut e = Vec::new();
        let w = &self.wechat;
        let name = |k: &str| self.key_name(k);
        // An AppID alone is fine (decrypt and answer passively, sending off); a secret alone
        // is always a mistake: no token can be fetched without the AppID it belongs to.
        if w.app_id.is_empty() && !w.app_secret.is_empty() {
            e.push(format!(
                "`{}` ({}) is set but `{}` is not: set `{}` ({}) to the AppID (开发者ID) the \
                 secret belongs to",
                name("wechat.app_secret"),
                self.origin("wechat.app_secret"),
                name("wechat.app_id"),
                name("wechat.app_id"),
                env_var_of(&name("wechat.app_id")),
            ));
        }
        if w.require_encryption && w.encoding_aes_key.is_empty() {
            e.push(format!(
                "`{}` ({}) needs `{}`: set the 43-character EncodingAESKey from the server \
                 configuration page",
                name("wechat.require_encryption"),
                self.origin("wechat.require_encryption"),
                name("wechat.encoding_aes_key"),
            ));
        }
        if !w.previous_encoding_aes_key.is_empty() && w.encoding_aes_key.is_empty() {
            e.push(format!(
                "`{}` ({}) is set but `{}` is not: the previous key is only for rotation",
                name("wechat.previous_encoding_aes_key"),
                self.origin("wechat.previous_encoding_aes_key"),
                name("wechat.encoding_aes_key"),
            ));
        }
        e
    }

    fn cross_checks(&self, origin_of: &dyn Fn(&str, &str) -> Origin) -> Vec<String> {
        let mut e = Vec::new();
        if self.origins.keys().all(|k| !k.starts_with("accounts.")) {
            e.extend(self.wechat_checks());
        }
        let d = &self.delivery;
        if d.max_text_bytes + d.more_text.len() > MAX_TEXT_BYTES as usize {
            e.push(format!(
                "`delivery.max_text_bytes` ({}) plus `delivery.more_text` ({}, {} bytes) is {} \
                 bytes, over WeChat's {MAX_TEXT_BYTES} for one text: the part that carries \
                 more_text would be refused with 45002. Lower max_text_bytes to at most {}",
                origin_of("delivery", "max_text_bytes"),
                origin_of("delivery", "more_text"),
                d.more_text.len(),
                d.max_text_bytes + d.more_text.len(),
                MAX_TEXT_BYTES as usize - d.more_text.len()
            ));
        }
        if d.pending_text.len() > MAX_TEXT_BYTES as usize {
            e.push(format!(
                "`delivery.pending_text` ({}) is {} bytes, over WeChat's {MAX_TEXT_BYTES} for one \
                 passive text: shorten it (a sentence such as \"正在查询，请稍候\" is enough)",
                origin_of("delivery", "pending_text"),
                d.pending_text.len()
            ));
        }
        // Two backend names that differ only in `-` / `_` share their KEFU_BACKENDS_* variables.
        let names: Vec<&String> = self.backends.keys().collect();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                if a.replace('-', "_") == b.replace('-', "_") {
                    e.push(format!(
                        "[backends.{a}] and [backends.{b}] have the same environment name \
                         (KEFU_BACKENDS_{}_…): rename one of them",
                        a.replace('-', "_").to_ascii_uppercase()
                    ));
                }
            }
        }
        if !self.pay.v3_api_key.is_empty() && self.pay.v3_platform_public_key.is_none() {
            e.push(format!(
                "`pay.v3_api_key` ({}) needs `pay.v3_platform_public_key`: the path of the WeChat Pay \
                 platform public key (PEM) that signs notifications",
                origin_of("pay", "v3_api_key")
            ));
        }
        e
    }

    /// Checks what `serve` needs beyond a well-formed file. Only `serve` serves the webhook and
    /// the admin API, so what only they need is checked here, not at load: a client command
    /// (`kefu push`, `kefu window`, ...) runs with the same file whatever its admin token.
    pub fn check_serve(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        for a in &self.served() {
            let view = self.view(a);
            if view.wechat.token.is_empty() {
                errors.push(format!(
                    "{} is empty: {} to the Token entered in the Official Account's server \
                     configuration; without it no push can be verified",
                    view.key("wechat.token"),
                    view.how_to_set("wechat.token")
                ));
            }
        }
        let admin = self.admin.token.expose();
        let len = admin.chars().count();
        if len > 0 && len < ADMIN_TOKEN_MIN_CHARS {
            errors.push(format!(
                "{} has {len} characters; the admin API needs at least {ADMIN_TOKEN_MIN_CHARS}, \
                 as a shorter bearer token is too easy to guess: {} to e.g. the output of \
                 `openssl rand -hex 24`, or to \"\" to turn the admin API off",
                self.key("admin.token"),
                self.how_to_set("admin.token")
            ));
        }
        if len > 0 && !admin.chars().all(|c| c.is_ascii_graphic()) {
            // A bearer token travels in an HTTP header, which trims white space and cannot
            // carry control characters: such a token could never be presented.
            errors.push(format!(
                "{} contains white space or a control character, which an Authorization header \
                 cannot carry (every request would get 401): {} to printable ASCII only, e.g. \
                 the output of `openssl rand -hex 24`",
                self.key("admin.token"),
                self.how_to_set("admin.token")
            ));
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigError(errors.join("\n"))) }
    }

    /// Where `key` (`section.key`, e.g. `rules.dir`) got its value; in an account's view,
    /// the account's key when it sets one.
    pub fn origin(&self, key: &str) -> Origin {
        self.origins.get(&self.key_name(key)).cloned().unwrap_or(Origin::Default)
    }

    /// The name the operator writes `key` under: itself, or in an account's view the
    /// account's own key (`wechat.token` → `accounts.shop.token`; `window.message` only when
    /// the account overrides it, else the `[window]` key it inherits).
    pub fn key_name(&self, key: &str) -> String {
        let Some(name) = &self.account else { return key.to_string() };
        match accounts::account_key(name, key) {
            Some(own) if !key.starts_with("window.") || self.origins.contains_key(&own) => own,
            _ => key.to_string(),
        }
    }

    /// The accounts this configuration serves: the `[accounts.NAME]` tables, or the one
    /// `default` account made of `[wechat]`, `server.path`, `rules.dir`, `[window]` and
    /// `state.dir` as they are now. Never empty.
    pub fn served(&self) -> Vec<AccountConfig> {
        if !self.accounts.is_empty() {
            return self.accounts.clone();
        }
        vec![AccountConfig {
            name: DEFAULT_ACCOUNT.to_string(),
            path: self.server.path.clone(),
            rules_dir: self.rules.dir.clone(),
            wechat: self.wechat.clone(),
            window: self.window.clone(),
            state_dir: self.state.dir.clone(),
            named: false,
        }]
    }

    /// The first account served (in an account's view: that account).
    pub fn first_account(&self) -> AccountConfig {
        self.served().swap_remove(0)
    }

    /// The name of the first account served (in an account's view: that account's).
    pub fn account_name(&self) -> String {
        self.accounts.first().map_or_else(|| DEFAULT_ACCOUNT.to_string(), |a| a.name.clone())
    }

    /// Whether several accounts are configured (commands then need `--account NAME`, admin
    /// requests `?account=NAME`).
    pub fn several(&self) -> bool {
        self.accounts.len() > 1
    }

    /// Whether the accounts come from `[accounts.*]` tables (metrics then carry an `account`
    /// label, even for one account, so dashboards do not change when a second is added).
    pub fn named_accounts(&self) -> bool {
        !self.accounts.is_empty()
    }

    /// The account called `name`, if configured.
    pub fn account(&self, name: &str) -> Option<AccountConfig> {
        self.served().into_iter().find(|a| a.name == name)
    }

    /// The configured account names, comma-separated (for messages).
    pub fn account_names(&self) -> String {
        self.served().iter().map(|a| a.name.clone()).collect::<Vec<_>>().join(", ")
    }

    /// This configuration as one account sees it: the account's `wechat`, `window`,
    /// `server.path`, `rules.dir` and `state.dir`, and its keys named in messages.
    pub fn view(&self, account: &AccountConfig) -> Config {
        let mut view = self.clone();
        view.wechat = account.wechat.clone();
        view.window = account.window.clone();
        view.server.path = account.path.clone();
        view.rules.dir = account.rules_dir.clone();
        view.state.dir = account.state_dir.clone();
        view.account = account.named.then(|| account.name.clone());
        view.accounts = if account.named { vec![account.clone()] } else { Vec::new() };
        view
    }

    /// The view of the account a command names with `--account NAME` (interface §11.10):
    /// with one account the flag may be left out (or name it); with several it is required.
    /// The error names the flag and the configured accounts (exit 2).
    pub fn select(&self, name: Option<&str>) -> Result<Config, ConfigError> {
        let source = match &self.file {
            Some(f) => format!("the [accounts.*] tables of {}", f.display()),
            None => "KEFU_ACCOUNTS_* variables".to_string(),
        };
        match name {
            Some(n) => match self.account(n) {
                Some(a) => Ok(self.view(&a)),
                None if !self.named_accounts() => Err(ConfigError(format!(
                    "--account {n:?}: no [accounts.*] tables are configured; the one account \
                     is {DEFAULT_ACCOUNT:?} ([wechat]): leave --account out, or add an \
                     [accounts.{n}] table"
                ))),
                None => Err(ConfigError(format!(
                    "--account {n:?}: no account named {n:?}; the configured accounts are {} \
                     (from {source})",
                    self.account_names()
                ))),
            },
            None if self.several() => Err(ConfigError(format!(
                "several accounts are configured ({}, from {source}): add --account NAME to say \
                 which one this command is for",
                self.account_names()
            ))),
            None => Ok(self.view(&self.first_account())),
        }
    }

    /// The key and where its value came from, for any message that names a config key:
    /// `` `rules.dir` (set in /etc/kefu/ok.toml) ``, `` `rules.dir` (set by KEFU_RULES_DIR) ``
    /// or `` `rules.dir` (the built-in default) ``. Never the value: it may be a secret.
    pub fn key(&self, key: &str) -> String {
        let key = self.key_name(key);
        match self.origin(&key) {
            Origin::Default => format!("`{key}` (the built-in default)"),
            Origin::File(p) => format!("`{key}` (set in {})", p.display()),
            Origin::Env(v) => format!("`{key}` (set by {v})"),
        }
    }

    /// How the operator changes `key`, given where its value comes from now: the variable
    /// that overrides the file, the file in use, or — for a default — the file in use (or
    /// where one is looked for) and the variable.
    pub fn how_to_set(&self, key: &str) -> String {
        let key = &self.key_name(key);
        let var = env_var_of(key);
        match (self.origin(key), &self.file) {
            (Origin::Env(v), _) => format!("change {v} (it overrides the config file)"),
            (Origin::File(p), _) => format!("change `{key}` in {}", p.display()),
            (Origin::Default, Some(p)) => format!("set `{key}` in {} or {var}", p.display()),
            (Origin::Default, None) => format!(
                "set `{key}` in a config file (--config PATH, or ./kefu.toml in the working \
                 directory; none is in use now) or {var}"
            ),
        }
    }

    /// For a message about a directory that cannot be read: where its path came from (`given`:
    /// how the command line gave it, else `key` and its source) and how to change it; empty
    /// when the directory exists.
    pub fn dir_hint(&self, key: &str, dir: &Path, given: Option<&str>) -> String {
        if dir.is_dir() {
            return String::new();
        }
        match given {
            Some(how) => format!(" ({} does not exist; it was given {how})", dir.display()),
            None => format!(
                " ({} does not exist; it is {}: {})",
                dir.display(),
                self.key(key),
                self.how_to_set(key)
            ),
        }
    }

    /// The directory of the embedded store.
    pub fn state_dir(&self) -> &Path {
        &self.state.dir
    }
}

/// The environment variable that sets `section.key`: `KEFU_SECTION_KEY`.
pub fn env_var_of(key: &str) -> String {
    format!("KEFU_{}", key.replace(['.', '-'], "_").to_ascii_uppercase())
}

/// Splits the part of `KEFU_<TABLE>_<REST>` after the table's prefix (`BACKENDS_`,
/// `ACCOUNTS_`) into (name, key): `keys` are the table's keys longest first (a `.` in a key is
/// written `_`); the name is matched against the tables the file names (a `-` written `_`),
/// else it is the rest before the longest key it ends with, lower-cased.
fn split_table_env(rest: &str, known: &[String], keys: &[String]) -> Option<(String, String)> {
    let lower = rest.to_ascii_lowercase();
    let suffix = |k: &String| format!("_{}", k.replace('.', "_"));
    for k in keys {
        if let Some(name) = lower.strip_suffix(&suffix(k))
            && let Some(n) = known.iter().find(|n| n.replace('-', "_") == name)
        {
            return Some((n.clone(), k.clone()));
        }
    }
    keys.iter().find_map(|k| {
        lower.strip_suffix(&suffix(k)).filter(|n| !n.is_empty()).map(|n| (n.to_string(), k.clone()))
    })
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = text.get(..at).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    (line, col)
}

fn schema_section(name: &str) -> Option<&'static [(&'static str, Kind)]> {
    SCHEMA.iter().find(|(s, _)| *s == name).map(|(_, k)| *k)
}

/// The `[SECTION.NAME]` tables of a file (`backends`, `accounts`), by name: a value that is
/// not such a table is an error naming it, and `hint` says what the table holds.
fn named_tables(
    path: &Path,
    section: &str,
    v: toml::Value,
    hint: &str,
    errors: &mut Vec<String>,
) -> Vec<(String, toml::Table)> {
    let toml::Value::Table(t) = v else {
        errors.push(format!(
            "{}: `{section}` must be a table of [{section}.NAME] tables",
            path.display()
        ));
        return Vec::new();
    };
    let mut out = Vec::new();
    for (name, v) in t {
        match v {
            toml::Value::Table(keys) => out.push((name, keys)),
            _ => errors.push(format!(
                "{}: `{section}.{name}` must be a table: [{section}.{name}] {hint}",
                path.display()
            )),
        }
    }
    out
}

/// Collects the `[backends.NAME]` tables of a file, key by key, for [`backends::build`].
fn backend_tables(
    path: &Path,
    v: toml::Value,
    origin: &Origin,
    out: &mut BTreeMap<String, backends::RawBackend>,
    errors: &mut Vec<String>,
) {
    let hint = "with kind = \"http\" or \"openai\"";
    for (name, keys) in named_tables(path, "backends", v, hint, errors) {
        let entry = out.entry(name).or_default();
        for (key, v) in keys {
            entry.insert(key, (v, origin.clone()));
        }
    }
}

fn env_value(kind: Kind, raw: &str) -> Result<toml::Value, String> {
    Ok(match kind {
        Kind::Str | Kind::Path => toml::Value::String(raw.to_string()),
        Kind::Int => toml::Value::Integer(
            raw.trim().parse::<i64>().map_err(|_| format!("{raw:?} is not a whole number"))?,
        ),
        Kind::Bool => toml::Value::Boolean(match raw.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => true,
            "false" | "0" | "no" | "off" => false,
            _ => return Err(format!("{raw:?} is not a boolean (true or false)")),
        }),
        Kind::Window => {
            let raw = raw.trim();
            if raw.starts_with('{') {
                let t: toml::Table = format!("v = {raw}").parse().map_err(|_| {
                    format!(
                        "{raw:?} is not an inline table like {{ limit = 5, duration = \"48h\" }}"
                    )
                })?;
                t["v"].clone()
            } else {
                // Shorthand "5/48h" or "48h" (unlimited).
                let mut t = toml::Table::new();
                let dur = match raw.split_once('/') {
                    Some((l, d)) => {
                        let l: i64 = l.trim().parse().map_err(|_| {
                            format!("{raw:?}: write LIMIT/DURATION like 5/48h, or DURATION alone")
                        })?;
                        t.insert("limit".into(), toml::Value::Integer(l));
                        d
                    }
                    None => raw,
                };
                t.insert("duration".into(), toml::Value::String(dur.trim().to_string()));
                toml::Value::Table(t)
            }
        }
    })
}

fn want_str(v: &toml::Value) -> Result<String, String> {
    v.as_str().map(str::to_string).ok_or_else(|| format!("expected a string, got {}", v.type_str()))
}

fn want_int(v: &toml::Value, min: i64) -> Result<i64, String> {
    let i =
        v.as_integer().ok_or_else(|| format!("expected a whole number, got {}", v.type_str()))?;
    if i < min {
        return Err(format!("{i} is below the minimum {min}"));
    }
    Ok(i)
}

fn want_bool(v: &toml::Value) -> Result<bool, String> {
    v.as_bool().ok_or_else(|| format!("expected true or false, got {}", v.type_str()))
}

/// Parses a humantime duration (interface §6.6).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. 30s, 2m, 48h or 1h30m"))
}

fn want_window(v: &toml::Value) -> Result<WindowRule, String> {
    let t = v.as_table().ok_or_else(|| {
        format!("expected a table like {{ limit = 5, duration = \"48h\" }}, got {}", v.type_str())
    })?;
    let mut limit = None;
    let mut duration = None;
    for (k, v) in t {
        match k.as_str() {
            "limit" => limit = Some(want_int(v, 1)? as u32),
            "duration" => {
                let d = parse_duration(&want_str(v)?)?;
                if d.is_zero() {
                    return Err("duration must be longer than zero".into());
                }
                duration = Some(d);
            }
            other => {
                return Err(format!("unknown key `{other}`; a window takes limit and duration"));
            }
        }
    }
    let duration = duration.ok_or("a window needs a duration, e.g. duration = \"48h\"")?;
    Ok(WindowRule { limit, duration })
}

/// What is wrong with a value that must be ASCII letters and digits of a given length, in a
/// sentence that never contains the value itself (a key or token is a secret).
///
/// The offending character is named with its 1-based position: it is never part of a valid
/// secret (it is exactly a character such a secret cannot hold: a space, `=`, `-`, a
/// full-width letter...), so showing it reveals nothing, and it is shown escaped with its code
/// point so that an invisible one (a no-break space, a full-width space) can be seen.
/// Letters and digits of the value are never shown. `None` when the value is well-formed.
fn alnum_problem(s: &str, len: std::ops::RangeInclusive<usize>) -> Option<String> {
    let count = s.chars().count();
    let mut bad = s.chars().enumerate().filter(|(_, c)| !c.is_ascii_alphanumeric());
    let mut problems = Vec::new();
    if let Some((i, c)) = bad.next() {
        let more = bad.count();
        let more = match more {
            0 => String::new(),
            1 => " (and 1 more character that is not a letter or digit)".to_string(),
            n => format!(" (and {n} more characters that are not letters or digits)"),
        };
        problems.push(format!(
            "character {} is {c:?} (U+{:04X}), which is not an ASCII letter or digit{more}",
            i + 1,
            c as u32
        ));
    }
    if !len.contains(&count) {
        let want = if len.start() == len.end() {
            format!("exactly {}", len.start())
        } else {
            format!("{} to {}", len.start(), len.end())
        };
        problems.push(format!("it has {count} characters, not {want}"));
    }
    (!problems.is_empty()).then(|| problems.join("; "))
}

/// An EncodingAESKey: empty (unset) or exactly 43 ASCII letters and digits (protocol §2).
fn check_aes_key(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    match alnum_problem(s, 43..=43) {
        None => Ok(()),
        Some(p) => Err(format!(
            "not a valid EncodingAESKey: {p}. An EncodingAESKey is exactly 43 letters (A-Z, \
             a-z) and digits (0-9): copy it again from the server configuration page \
             (设置与开发 → 基本配置 → 服务器配置)"
        )),
    }
}

/// The Token of the server configuration: WeChat's form takes 3 to 32 ASCII letters and
/// digits, so anything else can never match the account's.
fn check_token(s: &str) -> Result<(), String> {
    match alnum_problem(s, 3..=32) {
        None => Ok(()),
        Some(p) => Err(format!(
            "not a valid Token: {p}. WeChat's server configuration form takes 3 to 32 letters \
             (A-Z, a-z) and digits (0-9); set the same Token there and here"
        )),
    }
}

/// An AppID: `wx` followed by letters and digits (`wxb11529c136998cb6`). Not a secret, so the
/// message may quote it. Catches the usual mix-ups: the original ID (`gh_...`) or the
/// AppSecret pasted into `app_id`.
fn check_app_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Ok(());
    }
    if s.starts_with("gh_") {
        return Err(format!(
            "{s:?} is the account's original ID (gh_...), not its AppID: the AppID starts with \
             wx (设置与开发 → 基本配置 → 开发者ID)"
        ));
    }
    let alnum = s.chars().all(|c| c.is_ascii_alphanumeric());
    if !s.starts_with("wx") || !alnum || s.len() > 32 {
        // An AppSecret pasted here would be printed: say what is wrong without the value.
        let what = match alnum_problem(s, 3..=32) {
            Some(p) => p,
            None => "it does not start with wx".to_string(),
        };
        return Err(format!(
            "not an AppID: {what}. An AppID is wx followed by letters and digits, e.g. \
             wxb11529c136998cb6 (设置与开发 → 基本配置 → 开发者ID)"
        ));
    }
    Ok(())
}

/// An original ID (原始ID) is `gh_` followed by letters and digits, e.g. `gh_4d00ed8d6399`.
fn check_original_id(s: &str) -> Result<(), String> {
    let ok = s.is_empty()
        || s.strip_prefix("gh_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric())
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an original ID: it is `gh_` followed by letters and digits (e.g. \
             gh_4d00ed8d6399), shown in the MP admin under 设置与开发 → 公众号设置 → 原始ID; the \
             WeChat ID (微信号) belongs in `wechat.account_id`"
        ))
    }
}

fn apply(
    cfg: &mut Config,
    section: &str,
    key: &str,
    v: &toml::Value,
    origin: &Origin,
    cwd: &Path,
    file_dir: Option<&Path>,
) -> Result<(), String> {
    let path = |v: &toml::Value| -> Result<PathBuf, String> {
        let p = PathBuf::from(want_str(v)?);
        Ok(if p.is_absolute() {
            p
        } else {
            match (origin, file_dir) {
                (Origin::File(_), Some(dir)) => dir.join(p),
                _ => cwd.join(p),
            }
        })
    };
    match (section, key) {
        ("server", "listen") => {
            let s = want_str(v)?;
            let port_ok =
                s.rsplit_once(':').is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !port_ok {
                return Err(format!("{s:?} is not HOST:PORT, e.g. 127.0.0.1:8080 or [::]:8080"));
            }
            cfg.server.listen = s;
        }
        ("server", "path") => {
            let s = want_str(v)?;
            let reserved = ["/healthz", "/readyz", "/metrics", "/admin", "/pay", "/console"];
            if !s.starts_with('/') || s.len() < 2 || s.contains(['?', '#', ' ']) {
                return Err(format!("{s:?} must be a URL path starting with '/', e.g. /wechat"));
            }
            if reserved.iter().any(|r| s == *r || s.starts_with(&format!("{r}/"))) {
                return Err(format!(
                    "{s:?} collides with kefu's own endpoints; choose e.g. /wechat"
                ));
            }
            cfg.server.path = s;
        }
        ("server", "max_body_bytes") => cfg.server.max_body_bytes = want_int(v, 1024)? as usize,
        ("server", "max_clock_skew_secs") => {
            cfg.server.max_clock_skew_secs = want_int(v, 0)? as u64
        }
        ("wechat", "app_id") => {
            let s = want_str(v)?.trim().to_string();
            check_app_id(&s)?;
            cfg.wechat.app_id = s;
        }
        ("wechat", "app_secret") => cfg.wechat.app_secret = Secret::new(want_str(v)?.trim()),
        ("wechat", "account_id") => cfg.wechat.account_id = want_str(v)?.trim().to_string(),
        ("wechat", "original_id") => {
            let s = want_str(v)?.trim().to_string();
            check_original_id(&s)?;
            cfg.wechat.original_id = s;
        }
        ("wechat", "token") => {
            let s = want_str(v)?;
            // Empty = unset: `serve` asks for it (check_serve), the API commands need none.
            if !s.is_empty() {
                check_token(&s)?;
            }
            cfg.wechat.token = Secret::new(s);
        }
        ("wechat", "encoding_aes_key") => {
            let s = want_str(v)?;
            check_aes_key(s.trim())?;
            cfg.wechat.encoding_aes_key = Secret::new(s.trim());
        }
        ("wechat", "previous_encoding_aes_key") => {
            let s = want_str(v)?;
            check_aes_key(s.trim())?;
            cfg.wechat.previous_encoding_aes_key = Secret::new(s.trim());
        }
        ("wechat", "require_encryption") => cfg.wechat.require_encryption = want_bool(v)?,
        ("wechat", "api_base") => {
            let s = want_str(v)?;
            let u = url::Url::parse(&s).map_err(|e| format!("{s:?} is not a URL ({e})"))?;
            if !matches!(u.scheme(), "http" | "https") {
                return Err(format!("{s:?} must be an http or https URL"));
            }
            cfg.wechat.api_base = s.trim_end_matches('/').to_string();
        }
        ("wechat", "token_endpoint") => {
            cfg.wechat.token_endpoint = match want_str(v)?.as_str() {
                "stable" => TokenEndpoint::Stable,
                "classic" => TokenEndpoint::Classic,
                other => return Err(format!("{other:?} is neither \"stable\" nor \"classic\"")),
            }
        }
        ("window", k) => {
            let t = Trigger::parse(k).expect("schema lists only triggers");
            let rule = want_window(v)?;
            match t {
                Trigger::Message => cfg.window.message = rule,
                Trigger::Menu => cfg.window.menu = rule,
                Trigger::Subscribe => cfg.window.subscribe = rule,
                Trigger::Scan => cfg.window.scan = rule,
                Trigger::Payment => cfg.window.payment = rule,
            }
        }
        ("rules", "dir") => cfg.rules.dir = path(v)?,
        ("rules", "hot_reload") => cfg.rules.hot_reload = want_bool(v)?,
        ("rules", "passive_first") => cfg.rules.passive_first = want_bool(v)?,
        ("state", "dir") => cfg.state.dir = path(v)?,
        ("state", "redis_url") => {
            let s = want_str(v)?;
            if !s.is_empty()
                && !["redis://", "rediss://", "unix://", "redis+unix://"]
                    .iter()
                    .any(|p| s.starts_with(p))
            {
                return Err("a Redis URL starts with redis://, rediss:// or unix:// (e.g. redis://127.0.0.1:6379/0)".into());
            }
            cfg.state.redis_url = Secret::new(s);
        }
        ("state", "sync") => {
            cfg.state.sync = match want_str(v)?.as_str() {
                "full" => SyncMode::Full,
                "normal" => SyncMode::Normal,
                other => {
                    return Err(format!(
                        "{other:?} is neither \"full\" (fsync before every answer) nor \"normal\" (survives a kefu crash, not a power cut)"
                    ));
                }
            }
        }
        // Its minimum length is checked by `check_serve`: only `serve` serves the admin API.
        ("admin", "token") => cfg.admin.token = Secret::new(want_str(v)?),
        ("delivery", "max_text_bytes") => {
            let n = want_int(v, MIN_TEXT_BYTES)?;
            if n > MAX_TEXT_BYTES {
                return Err(format!(
                    "{n} is above WeChat's limit for a text message ({MAX_TEXT_BYTES} bytes): \
                     longer messages are refused with 45002; the default 2000 leaves room"
                ));
            }
            cfg.delivery.max_text_bytes = n as usize;
        }
        ("delivery", "more_text") => {
            let s = want_str(v)?;
            if s.len() > 200 {
                return Err(format!(
                    "{} bytes is too long for a note appended to a message; keep it under 200",
                    s.len()
                ));
            }
            cfg.delivery.more_text = s;
        }
        ("delivery", "customer_service") => {
            cfg.delivery.customer_service = match want_str(v)?.as_str() {
                "auto" => CustomerServiceMode::Auto,
                "on" => CustomerServiceMode::On,
                "off" => CustomerServiceMode::Off,
                other => {
                    return Err(format!(
                        "{other:?} is not \"auto\" (call custom/send until WeChat refuses it), \
                         \"on\" or \"off\" (never call it: hold answers for the next push)"
                    ));
                }
            }
        }
        ("delivery", "hold_for") => {
            let d = parse_duration(&want_str(v)?)?;
            if d.is_zero() {
                return Err("hold_for must be longer than zero, e.g. 48h".into());
            }
            cfg.delivery.hold_for = d;
        }
        ("delivery", "passive_wait") => {
            let d = parse_duration(&want_str(v)?)?;
            if d < Duration::from_millis(100) || d > Duration::from_millis(4500) {
                return Err(format!(
                    "{} is outside 100ms to 4.5s: WeChat gives up on an answer after 5 s, so the \
                     push must be answered before; the default is 4s",
                    humantime::format_duration(d)
                ));
            }
            cfg.delivery.passive_wait = d;
        }
        ("delivery", "pending_text") => cfg.delivery.pending_text = want_str(v)?,
        ("delivery", "typing") => cfg.delivery.typing = want_bool(v)?,
        ("pay", "v2_api_key") => cfg.pay.v2_api_key = Secret::new(want_str(v)?),
        ("pay", "v2_sign_type") => cfg.pay.v2_sign_type = V2SignType::parse(&want_str(v)?)?,
        ("pay", "v3_api_key") => {
            let s = want_str(v)?;
            if !s.is_empty() && s.len() != 32 {
                return Err(format!("an APIv3 key is exactly 32 bytes (this one has {})", s.len()));
            }
            cfg.pay.v3_api_key = Secret::new(s);
        }
        ("pay", "v3_platform_public_key") => {
            let s = want_str(v)?;
            cfg.pay.v3_platform_public_key = if s.is_empty() { None } else { Some(path(v)?) };
        }
        // ---- media ----
        ("media", "refresh_after") => {
            let s = want_str(v)?;
            let d = humantime::parse_duration(s.trim())
                .map_err(|_| format!("{s:?} is not a duration: use humantime like 60h, 2d, 90m"))?;
            if d.is_zero() || d >= Duration::from_secs(72 * 3600) {
                return Err(format!(
                    "{s:?} must be more than 0 and less than 72h: WeChat keeps temporary media 3 \
                     days, so an id must be replaced before then (default 60h)"
                ));
            }
            cfg.media.refresh_after = d;
        }
        // ---- conversation log and console ----
        ("log", "retention") => {
            let s = want_str(v)?;
            cfg.log.retention = humantime::parse_duration(s.trim()).map_err(|_| {
                format!(
                    "{s:?} is not a duration: use humantime like 30d, 72h, or 0s to keep no log"
                )
            })?;
        }
        ("console", "secure_cookie") => cfg.console.secure_cookie = want_bool(v)?,
        _ => unreachable!("schema and apply disagree on {section}.{key}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_parts(
            Some(Path::new("/etc/kefu/kefu.toml")),
            Some(text),
            env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
            Path::new("/work"),
        )
    }

    #[test]
    fn defaults_are_todays_rules() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.window.message.limit, Some(5));
        assert_eq!(c.window.payment.limit, None);
        assert_eq!(c.server.path, "/wechat");
        assert_eq!(c.wechat.token_endpoint, TokenEndpoint::Stable);
        assert!(c.rules.passive_first);
    }

    #[test]
    fn log_and_console_keys() {
        let c = load("", &[]).unwrap();
        assert_eq!(c.log.retention, Duration::from_secs(30 * 86_400));
        assert!(!c.console.secure_cookie);
        let c = load("[log]\nretention = \"0s\"\n[console]\nsecure_cookie = true\n", &[]).unwrap();
        assert!(c.log.retention.is_zero() && c.console.secure_cookie);
        let c = load("", &[("KEFU_LOG_RETENTION", "72h"), ("KEFU_LOG_FORMAT", "json")]).unwrap();
        assert_eq!(c.log.retention, Duration::from_secs(72 * 3600));
        let e = load("[log]\nretention = \"soon\"\n", &[]).unwrap_err().0;
        assert!(e.contains("log.retention") && e.contains("30d"), "{e}");
        let e = load("[console]\nsecret = 1\n", &[]).unwrap_err().0;
        assert!(e.contains("secret"), "{e}");
    }

    #[test]
    fn file_then_env_override() {
        let c = load(
            "[wechat]\ntoken = \"abc\"\n[server]\nmax_body_bytes = 2048\n[window]\nmenu = { limit = 2, duration = \"30s\" }\n",
            &[("KEFU_WECHAT_TOKEN", "fromenv"), ("KEFU_WINDOW_MESSAGE", "7/1h"), ("KEFU_LOG_FORMAT", "json")],
        )
        .unwrap();
        assert_eq!(c.wechat.token.expose(), "fromenv");
        assert_eq!(c.server.max_body_bytes, 2048);
        assert_eq!(c.window.menu, WindowRule { limit: Some(2), duration: Duration::from_secs(30) });
        assert_eq!(
            c.window.message,
            WindowRule { limit: Some(7), duration: Duration::from_secs(3600) }
        );
    }

    #[test]
    fn relative_paths_resolve_per_origin() {
        let c = load("[rules]\ndir = \"r\"\n", &[("KEFU_STATE_DIR", "d")]).unwrap();
        assert_eq!(c.rules.dir, PathBuf::from("/etc/kefu/r"));
        assert_eq!(c.state.dir, PathBuf::from("/work/d"));
    }

    #[test]
    fn errors_name_key_and_source() {
        let e = load("[server]\nlisten = 8080\nbogus = 1\n", &[("KEFU_WECHAT_TOKNE", "x")])
            .unwrap_err()
            .0;
        assert!(e.contains("`server.listen` from /etc/kefu/kefu.toml: expected a string"), "{e}");
        assert!(e.contains("unknown key `server.bogus`"), "{e}");
        assert!(
            e.contains("environment variable KEFU_WECHAT_TOKNE: [wechat] has no key `tokne`"),
            "{e}"
        );

        let e = load("", &[("KEFU_WECHAT_ENCODING_AES_KEY", "short")]).unwrap_err().0;
        assert!(e.contains("environment variable KEFU_WECHAT_ENCODING_AES_KEY"), "{e}");
        assert!(!e.contains("short"), "secrets are not echoed: {e}");

        let e = load("[window]\nmenu = { limit = 3, duration = \"soon\" }", &[]).unwrap_err().0;
        assert!(e.contains("`window.menu`") && e.contains("not a duration"), "{e}");

        let e = load("[wechat]\napp_secret = \"s3cret-value\"\n", &[]).unwrap_err().0;
        assert!(
            e.contains("`wechat.app_secret` (/etc/kefu/kefu.toml) is set but `wechat.app_id`"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");

        let e = load("[nope]\n", &[]).unwrap_err().0;
        assert!(e.contains("unknown section [nope]"), "{e}");
    }

    #[test]
    fn state_sync_is_full_unless_set() {
        assert_eq!(load("", &[]).unwrap().state.sync, SyncMode::Full);
        let c = load("[state]\nsync = \"normal\"\n", &[]).unwrap();
        assert_eq!(c.state.sync, SyncMode::Normal);
        let c = load("[state]\nsync = \"normal\"\n", &[("KEFU_STATE_SYNC", "full")]).unwrap();
        assert_eq!(c.state.sync, SyncMode::Full);
        let e = load("[state]\nsync = \"off\"\n", &[]).unwrap_err().0;
        assert!(e.contains("`state.sync`") && e.contains("neither \"full\""), "{e}");
    }

    #[test]
    fn toml_syntax_errors_say_where_without_quoting_the_line() {
        let e =
            load("[wechat]\napp_secret = \"s3cret-value\ntoken = \"tok\"\n", &[]).unwrap_err().0;
        assert!(e.starts_with("/etc/kefu/kefu.toml:2:"), "{e}");
        assert!(e.contains("not valid TOML: "), "{e}");
        assert!(!e.contains("s3cret"), "the line is not quoted: {e}");
    }

    #[test]
    fn aes_key_errors_name_the_character_and_position_never_the_key() {
        let good = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
        assert_eq!(check_aes_key(good), Ok(()));
        assert_eq!(check_aes_key(""), Ok(()));
        let with = |i: usize, c: &str| format!("{}{c}{}", &good[..i], &good[i + 1..]);
        for (key, want) in [
            (with(11, " "), "character 12 is ' ' (U+0020), which is not an ASCII letter or digit"),
            (with(42, "="), "character 43 is '=' (U+003D)"),
            (with(0, "-"), "character 1 is '-' (U+002D)"),
            // A full-width letter: one character, three bytes, position counted in characters.
            (with(5, "Ａ"), "character 6 is 'Ａ' (U+FF21)"),
            (with(5, "\u{a0}"), "character 6 is '\\u{a0}' (U+00A0)"),
        ] {
            let e = check_aes_key(&key).unwrap_err();
            assert!(e.contains(want), "{key:?}: {e}");
            assert!(e.contains("exactly 43 letters (A-Z, a-z) and digits (0-9)"), "{e}");
            assert!(!e.contains("abcdefghij") && !e.contains("ABCDEF"), "no key material: {e}");
        }
        let e = check_aes_key(&good[..42]).unwrap_err();
        assert!(e.contains("it has 42 characters, not exactly 43"), "{e}");
        let e = check_aes_key(&format!("{good}=")).unwrap_err();
        assert!(
            e.contains("character 44 is '='") && e.contains("it has 44 characters, not exactly 43"),
            "{e}"
        );
        let e = check_aes_key(&with(3, "+").replace('k', "/")).unwrap_err();
        assert!(e.contains("character 4 is '+'") && e.contains("(and 1 more character"), "{e}");
    }

    #[test]
    fn token_and_app_id_are_checked_like_wechat_does() {
        assert_eq!(check_token("pamtest"), Ok(()));
        let e = check_token("kefu-example-token").unwrap_err();
        assert!(e.contains("character 5 is '-'") && e.contains("3 to 32 letters"), "{e}");
        assert!(check_token("ab").unwrap_err().contains("it has 2 characters, not 3 to 32"));
        let e = load("[wechat]\ntoken = \"sec ret\"\n", &[]).unwrap_err().0;
        assert!(e.contains("`wechat.token` from /etc/kefu/kefu.toml: not a valid Token"), "{e}");
        assert!(!e.contains("sec ret") && !e.contains("secret"), "{e}");

        assert_eq!(check_app_id("wxb11529c136998cb6"), Ok(()));
        let e = check_app_id("gh_4d00ed8d6399").unwrap_err();
        assert!(e.contains("original ID"), "{e}");
        // An AppSecret pasted into app_id: refused without printing it.
        let e = check_app_id("0123456789abcdef0123456789abcdef").unwrap_err();
        assert!(e.contains("does not start with wx") && !e.contains("0123456789abcdef"), "{e}");
    }

    #[test]
    fn key_sources_for_messages() {
        let c = load("[rules]\ndir = \"r\"\n", &[("KEFU_STATE_DIR", "d")]).unwrap();
        assert_eq!(c.origin("rules.dir"), Origin::File("/etc/kefu/kefu.toml".into()));
        assert_eq!(c.key("rules.dir"), "`rules.dir` (set in /etc/kefu/kefu.toml)");
        assert_eq!(c.how_to_set("rules.dir"), "change `rules.dir` in /etc/kefu/kefu.toml");
        assert_eq!(c.key("state.dir"), "`state.dir` (set by KEFU_STATE_DIR)");
        assert_eq!(
            c.how_to_set("state.dir"),
            "change KEFU_STATE_DIR (it overrides the config file)"
        );
        assert_eq!(c.key("wechat.token"), "`wechat.token` (the built-in default)");
        assert_eq!(
            c.how_to_set("wechat.token"),
            "set `wechat.token` in /etc/kefu/kefu.toml or KEFU_WECHAT_TOKEN"
        );
        let none = Config::from_parts(None, None, Vec::new(), Path::new("/w")).unwrap();
        assert!(none.how_to_set("wechat.token").contains("none is in use now"));
        assert_eq!(env_var_of("pay.v3_api_key"), "KEFU_PAY_V3_API_KEY");
    }

    #[test]
    fn delivery_keys_from_file_and_env() {
        let d = load("", &[]).unwrap().delivery;
        assert_eq!(d, DeliveryConfig::default());
        assert_eq!((d.max_text_bytes, d.hold_for.as_secs()), (2000, 48 * 3600));
        let c = load(
            "[delivery]\nmax_text_bytes = 600\nmore_text = \"\"\ncustomer_service = \"off\"\n\
             hold_for = \"90m\"\n",
            &[("KEFU_DELIVERY_CUSTOMER_SERVICE", "on")],
        )
        .unwrap();
        assert_eq!(c.delivery.max_text_bytes, 600);
        assert_eq!(c.delivery.more_text, "");
        assert_eq!(c.delivery.customer_service, CustomerServiceMode::On, "the variable wins");
        assert_eq!(c.delivery.hold_for, Duration::from_secs(5400));
        for (bad, want) in [
            ("max_text_bytes = 4000", "45002"),
            ("max_text_bytes = 2048", "at most 2018"),
            ("max_text_bytes = 10", "below the minimum 64"),
            ("customer_service = \"maybe\"", "\"auto\""),
            ("hold_for = \"0s\"", "longer than zero"),
            ("hold_for = \"soon\"", "not a duration"),
            ("pending_text = \"\"\"\n{}\n\"\"\"", "pending_text"),
        ] {
            let bad = bad.replace("{}", &"等".repeat(700));
            let e = load(&format!("[delivery]\n{bad}\n"), &[]).unwrap_err().0;
            assert!(e.contains("delivery.") && e.contains(want), "{bad}: {e}");
        }
    }

    #[test]
    fn backend_names_that_share_an_environment_name_are_refused() {
        let b =
            |n: &str| format!("[backends.{n}]\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\n");
        let e = load(&(b("my-llm") + &b("my_llm")), &[]).unwrap_err().0;
        assert!(e.contains("KEFU_BACKENDS_MY_LLM_") && e.contains("rename one"), "{e}");
        load(&(b("my-llm") + &b("myllm")), &[]).unwrap();
    }

    #[test]
    fn pay_v2_sign_type_from_file_and_env() {
        use crate::pay::v2::SignType;
        assert_eq!(load("", &[]).unwrap().pay.v2_sign_type, V2SignType::Auto);
        let c = load("[pay]\nv2_sign_type = \"HMAC-SHA256\"\n", &[]).unwrap();
        assert_eq!(c.pay.v2_sign_type, V2SignType::Fixed(SignType::HmacSha256));
        let c =
            load("[pay]\nv2_sign_type = \"auto\"\n", &[("KEFU_PAY_V2_SIGN_TYPE", "MD5")]).unwrap();
        assert_eq!(c.pay.v2_sign_type, V2SignType::Fixed(SignType::Md5));
        let e = load("", &[("KEFU_PAY_V2_SIGN_TYPE", "sha1")]).unwrap_err().0;
        assert!(
            e.contains("`pay.v2_sign_type` from environment variable KEFU_PAY_V2_SIGN_TYPE")
                && e.contains("\"HMAC-SHA256\""),
            "{e}"
        );
        let e = load("[pay]\nv2_sign_type = 5\n", &[]).unwrap_err().0;
        assert!(e.contains("`pay.v2_sign_type` from /etc/kefu/kefu.toml"), "{e}");
    }

    #[test]
    fn app_id_without_secret_is_accepted_with_sending_off() {
        let c = load("[wechat]\napp_id = \"wx1\"\ntoken = \"tok\"\n", &[]).unwrap();
        assert!(c.wechat.app_id_only() && !c.wechat.has_credentials());
        c.check_serve().unwrap();
    }

    #[test]
    fn original_id_is_checked_and_kept_apart_from_account_id() {
        let c = load("[wechat]\noriginal_id = \"gh_4d00ed8d6399\"\naccount_id = \"myshop\"\n", &[])
            .unwrap();
        assert_eq!(
            (c.wechat.original_id.as_str(), c.wechat.account_id.as_str()),
            ("gh_4d00ed8d6399", "myshop")
        );
        for bad in ["myshop", "gh_", "gh_abc-1", "GH_abc", "gh_中文"] {
            let e = load(&format!("[wechat]\noriginal_id = \"{bad}\"\n"), &[]).unwrap_err().0;
            assert!(
                e.contains("`wechat.original_id` from /etc/kefu/kefu.toml") && e.contains("原始ID"),
                "{bad}: {e}"
            );
        }
        let e = load("", &[("KEFU_WECHAT_ORIGINAL_ID", "wx123")]).unwrap_err().0;
        assert!(e.contains("environment variable KEFU_WECHAT_ORIGINAL_ID"), "{e}");
    }

    #[test]
    fn a_short_admin_token_stops_only_serve() {
        // Loading (what every client command does) accepts it ...
        let c = load("[wechat]\ntoken = \"tok\"\n[admin]\ntoken = \"short-token\"\n", &[]).unwrap();
        // ... serving refuses it, naming the key, its source and the fix, not the value.
        let e = c.check_serve().unwrap_err().0;
        assert!(e.contains("`admin.token` (set in /etc/kefu/kefu.toml) has 11 characters"), "{e}");
        assert!(e.contains("at least 16") && e.contains("openssl rand -hex 24"), "{e}");
        assert!(!e.contains("short-token"), "{e}");
        let c = load("[wechat]\ntoken = \"tok\"\n", &[("KEFU_ADMIN_TOKEN", "abc")]).unwrap();
        let e = c.check_serve().unwrap_err().0;
        assert!(e.contains("`admin.token` (set by KEFU_ADMIN_TOKEN)"), "{e}");
        let c = load("[wechat]\ntoken = \"tok\"\n", &[("KEFU_ADMIN_TOKEN", "0123456789abcdef")])
            .unwrap();
        c.check_serve().unwrap();
        // Long enough, but no Authorization header can carry it.
        let spaces = " ".repeat(20);
        let c = load("[wechat]\ntoken = \"tok\"\n", &[("KEFU_ADMIN_TOKEN", &spaces)]).unwrap();
        let e = c.check_serve().unwrap_err().0;
        assert!(e.contains("white space or a control character"), "{e}");
    }

    #[test]
    fn serve_needs_a_token() {
        let c = load("", &[]).unwrap();
        assert!(c.check_serve().unwrap_err().0.contains("KEFU_WECHAT_TOKEN"));
    }
}
