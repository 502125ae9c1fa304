//! `[accounts.NAME]` (interface §10, §11.10): several Official Accounts served by one kefu.
//!
//! Kept beside `config.rs` like `[backends.NAME]`: an account table is one level deeper than
//! the other sections (`accounts.NAME.KEY`, and `accounts.NAME.window.TRIGGER`). Its keys are
//! `[wechat]`'s plus `path` and `rules_dir`; each is checked by the same code that checks the
//! top-level key it stands for (`wechat.token`, `server.path`, `rules.dir`, `window.message`),
//! so an account's value is held to exactly the rules of a single account's.
//!
//! Without `[accounts.*]` the configuration has one account, `default`, made of `[wechat]`,
//! `server.path`, `rules.dir` and `[window]` as before, and its state stays where it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{Config, Origin, WechatConfig, WindowConfig};

/// The name of the one account a configuration without `[accounts.*]` has; an
/// `[accounts.default]` table keeps its state in `state.dir` itself, so a single-account
/// deployment can move its `[wechat]` keys into `[accounts.default]` and keep its data.
pub const DEFAULT_ACCOUNT: &str = "default";

/// The `[wechat]` keys an account table takes (interface §10: "every key of `[wechat]`").
pub(super) const WECHAT_KEYS: [&str; 10] = [
    "app_id",
    "app_secret",
    "account_id",
    "original_id",
    "token",
    "encoding_aes_key",
    "previous_encoding_aes_key",
    "require_encryption",
    "api_base",
    "token_endpoint",
];

/// Every key of an account table, `window.TRIGGER` included, longest first so that an
/// environment variable's name is split at the longest key it ends with
/// (`…_PREVIOUS_ENCODING_AES_KEY` is `previous_encoding_aes_key`, not `encoding_aes_key`).
pub(super) fn all_keys() -> Vec<String> {
    let mut keys: Vec<String> = WECHAT_KEYS
        .iter()
        .map(|k| k.to_string())
        .chain(["path".to_string(), "rules_dir".to_string()])
        .chain(crate::model::Trigger::ALL.iter().map(|t| format!("window.{}", t.as_str())))
        .collect();
    keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
    keys
}

/// The `<KEY>` part of every `KEFU_ACCOUNTS_<NAME>_<KEY>`, in the order of the docs
/// (`APP_ID`, …, `PATH`, `RULES_DIR`, `WINDOW_MESSAGE`, …).
pub(super) fn env_keys() -> Vec<String> {
    WECHAT_KEYS
        .iter()
        .map(|k| k.to_string())
        .chain(["path".to_string(), "rules_dir".to_string()])
        .chain(crate::model::Trigger::ALL.iter().map(|t| format!("window_{}", t.as_str())))
        .map(|k| k.to_ascii_uppercase())
        .collect()
}

/// One account as configured: its own server path, rules, WeChat keys and window quotas.
#[derive(Clone, Debug)]
pub struct AccountConfig {
    /// `NAME` of `[accounts.NAME]` (`[a-z0-9_-]+`), or [`DEFAULT_ACCOUNT`].
    pub name: String,
    /// The server URL path WeChat pushes this account's events to (`path`; default
    /// `{server.path}/{NAME}`, and `server.path` itself for `default`, as for the `[wechat]`
    /// account).
    pub path: String,
    /// Its rules (`rules_dir`; default `[rules].dir`), hot-reloaded on their own.
    pub rules_dir: PathBuf,
    pub wechat: WechatConfig,
    pub window: WindowConfig,
    /// The embedded store's directory: `state.dir` for `default`, else
    /// `state.dir/accounts/NAME` (one SQLite database per account; see [`Self::state_dir_of`]).
    pub state_dir: PathBuf,
    /// True when it came from an `[accounts.NAME]` table (its keys are named
    /// `accounts.NAME.KEY` in messages, and metrics carry an `account` label).
    pub named: bool,
}

impl AccountConfig {
    /// Where account `name` keeps its embedded store under `state_dir`. The `default`
    /// account keeps the directory a single-account kefu always used, so its data survives
    /// the move to `[accounts.*]`; every other account gets a directory of its own, so one
    /// account's writer, fsyncs and files never touch another's.
    pub fn state_dir_of(state_dir: &Path, name: &str) -> PathBuf {
        if name == DEFAULT_ACCOUNT {
            state_dir.to_path_buf()
        } else {
            state_dir.join("accounts").join(name)
        }
    }

    /// The Redis key namespace of this account's shared state: `kefu:{APPID}`, hash-tagged
    /// so the multi-key scripts stay on one Redis Cluster slot. The AppID identifies the
    /// WeChat account, whose windows and access token every kefu serving it shares; without
    /// one (dry-run) the account's name keeps dry-run accounts apart.
    pub fn redis_namespace(&self) -> String {
        match (self.wechat.app_id.as_str(), self.name.as_str()) {
            ("", DEFAULT_ACCOUNT) => "kefu:{dry-run}".to_string(),
            ("", name) => format!("kefu:{{dry-run:{name}}}"),
            (app, _) => format!("kefu:{{{app}}}"),
        }
    }
}

/// `text` with the `[wechat]` keys it names written as account `name`'s: `wechat.app_id` →
/// `accounts.shop.app_id`, `KEFU_WECHAT_APP_ID` → `KEFU_ACCOUNTS_SHOP_APP_ID`. For the messages
/// of the layers below the configuration (the API client, the gate, the sender), which name
/// `[wechat]` keys, when they reach an operator of several accounts; `None` leaves `text` as
/// it is.
pub fn in_account<'a>(text: &'a str, name: Option<&str>) -> std::borrow::Cow<'a, str> {
    match name {
        Some(n) if text.contains("wechat.") || text.contains("KEFU_WECHAT_") => text
            .replace("wechat.", &format!("accounts.{n}."))
            .replace("KEFU_WECHAT_", &env_var(n, ""))
            .into(),
        _ => text.into(),
    }
}

/// The raw values of one account, by key (`window.message` for the window table), with
/// their origins.
pub(super) type RawAccount = BTreeMap<String, (toml::Value, Origin)>;

/// The environment variable that sets `key` of account `name`:
/// `KEFU_ACCOUNTS_<NAME>_<KEY>` (a `-` in the name and the `.` of `window.message` written `_`).
pub fn env_var(name: &str, key: &str) -> String {
    format!("KEFU_ACCOUNTS_{}_{}", name.replace('-', "_"), key.replace('.', "_"))
        .to_ascii_uppercase()
}

/// Collects the `[accounts.NAME]` tables of a file, key by key (the window table flattened
/// to `window.TRIGGER`).
pub(super) fn file_tables(
    path: &Path,
    v: toml::Value,
    origin: &Origin,
    out: &mut BTreeMap<String, RawAccount>,
    errors: &mut Vec<String>,
) {
    let hint = "with path, token, app_id, …";
    for (name, keys) in super::named_tables(path, "accounts", v, hint, errors) {
        let entry = out.entry(name.clone()).or_default();
        for (key, v) in keys {
            if key == "window" {
                match v {
                    toml::Value::Table(w) => {
                        for (trigger, v) in w {
                            entry.insert(format!("window.{trigger}"), (v, origin.clone()));
                        }
                    }
                    _ => errors.push(format!(
                        "{}: `accounts.{name}.window` must be a table: [accounts.{name}.window] \
                         with e.g. message = {{ limit = 5, duration = \"48h\" }}",
                        path.display()
                    )),
                }
                continue;
            }
            entry.insert(key, (v, origin.clone()));
        }
    }
}

/// Which top-level key an account key stands for: `(section, key)` of the schema, so that it
/// is checked and applied by the same code (`path` is `server.path`, `rules_dir` is
/// `rules.dir`, `window.message` is `window.message`, the rest are `[wechat]`'s).
pub(super) fn stands_for(key: &str) -> Option<(&'static str, String)> {
    if key == "path" {
        return Some(("server", "path".into()));
    }
    if key == "rules_dir" {
        return Some(("rules", "dir".into()));
    }
    if let Some(t) = key.strip_prefix("window.") {
        return crate::model::Trigger::parse(t).map(|_| ("window", t.to_string()));
    }
    WECHAT_KEYS.contains(&key).then(|| ("wechat", key.to_string()))
}

/// The account key for a top-level key of an account's view (`wechat.token` →
/// `accounts.shop.token`, `server.path` → `accounts.shop.path`, `rules.dir` →
/// `accounts.shop.rules_dir`, `window.message` → `accounts.shop.window.message`); `None` for
/// a key an account does not override.
pub(super) fn account_key(name: &str, key: &str) -> Option<String> {
    let (section, k) = key.split_once('.')?;
    let own = match (section, k) {
        ("server", "path") => "path".to_string(),
        ("rules", "dir") => "rules_dir".to_string(),
        ("window", t) => format!("window.{t}"),
        ("wechat", k) => k.to_string(),
        _ => return None,
    };
    Some(format!("accounts.{name}.{own}"))
}

/// Builds every account of `[accounts.*]` on top of `base` (the configuration with its
/// top-level sections applied): each starts from the built-in `[wechat]` defaults, `[window]`,
/// `[rules].dir` and the path `{server.path}/{NAME}`, and takes its own keys. Every error
/// names `accounts.NAME.KEY` and where its value came from.
pub(super) fn build(
    base: &Config,
    raw: &BTreeMap<String, RawAccount>,
    cwd: &Path,
    file_dir: Option<&Path>,
) -> Result<Vec<AccountConfig>, Vec<String>> {
    let mut errors = Vec::new();
    let mut out = Vec::new();
    for (name, keys) in raw {
        if !super::backends::valid_name(name) {
            errors.push(format!(
                "[accounts.{name}]: an account name is lower-case letters, digits, `_` and `-` \
                 (it is what --account and ?account= name)"
            ));
            continue;
        }
        let mut view = Config {
            wechat: Config::default().wechat,
            window: base.window.clone(),
            ..base.clone()
        };
        // `default` stands where the single account stood, so moving `[wechat]` into
        // `[accounts.default]` keeps WeChat's server URL; the others get their own below it.
        if name != DEFAULT_ACCOUNT {
            view.server.path = format!("{}/{name}", base.server.path.trim_end_matches('/'));
        }
        for (key, (value, origin)) in keys {
            let Some((section, k)) = stands_for(key) else {
                errors.push(format!(
                    "`accounts.{name}.{key}` from {origin}: unknown key; an account takes {}, \
                     path, rules_dir and a [accounts.{name}.window] table of {}",
                    WECHAT_KEYS.join(", "),
                    crate::model::Trigger::ALL
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                continue;
            };
            if let Err(why) = super::apply(&mut view, section, &k, value, origin, cwd, file_dir) {
                errors.push(format!("`accounts.{name}.{key}` from {origin}: {why}"));
            }
        }
        out.push(AccountConfig {
            name: name.clone(),
            path: view.server.path,
            rules_dir: view.rules.dir,
            wechat: view.wechat,
            window: view.window,
            state_dir: AccountConfig::state_dir_of(&base.state.dir, name),
            named: true,
        });
    }
    errors.extend(cross_checks(&out));
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// What no two accounts may share: a path (a push could not be routed), an AppID (one
/// WeChat account is one account: two names would keep two ledgers of one window), or a name
/// that differs only in `-`/`_` (they share their `KEFU_ACCOUNTS_*` variables).
fn cross_checks(accounts: &[AccountConfig]) -> Vec<String> {
    let mut e = Vec::new();
    for (i, a) in accounts.iter().enumerate() {
        for b in &accounts[i + 1..] {
            if a.path == b.path {
                e.push(format!(
                    "[accounts.{}] and [accounts.{}] have the same path {:?}: give each account \
                     its own `path` (the server URL WeChat pushes to)",
                    a.name, b.name, a.path
                ));
            }
            if !a.wechat.app_id.is_empty() && a.wechat.app_id == b.wechat.app_id {
                e.push(format!(
                    "[accounts.{}] and [accounts.{}] have the same app_id: an AppID is one \
                     Official Account, so it is configured once; remove one of the tables",
                    a.name, b.name
                ));
            }
            if !a.wechat.token.is_empty() && a.wechat.token.expose() == b.wechat.token.expose() {
                e.push(format!(
                    "[accounts.{}] and [accounts.{}] have the same token: a push signed for one \
                     would be accepted on the other's path. Give each account its own Token (in \
                     its server configuration page and in its `token` key)",
                    a.name, b.name
                ));
            }
            if a.name.replace('-', "_") == b.name.replace('-', "_") {
                e.push(format!(
                    "[accounts.{}] and [accounts.{}] have the same environment name \
                     (KEFU_ACCOUNTS_{}_…): rename one of them",
                    a.name,
                    b.name,
                    a.name.replace('-', "_").to_ascii_uppercase()
                ));
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        Config::from_parts(
            Some(Path::new("/etc/kefu/kefu.toml")),
            Some(text),
            env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
            Path::new("/work"),
        )
        .map_err(|e| e.0)
    }

    const TWO: &str = r#"
[server]
path = "/wx"
[rules]
dir = "rules"
[state]
dir = "/var/lib/kefu"
[window]
menu = { limit = 2, duration = "2m" }
[accounts.shop]
app_id = "wx1111111111111111"
app_secret = "s1"
token = "shoptoken"
rules_dir = "rules/shop"
[accounts.shop.window]
message = { limit = 3, duration = "24h" }
[accounts.cafe]
path = "/cafe"
token = "cafetoken"
"#;

    #[test]
    fn tables_inherit_and_override() {
        let cfg = load(TWO, &[]).unwrap();
        let names: Vec<&str> = cfg.accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["cafe", "shop"]);
        let shop = cfg.account("shop").unwrap();
        assert_eq!(shop.path, "/wx/shop");
        assert_eq!(shop.rules_dir, Path::new("/etc/kefu/rules/shop"));
        assert_eq!(shop.window.message.limit, Some(3));
        assert_eq!(shop.window.menu.limit, Some(2), "[window] is the base");
        assert_eq!(shop.state_dir, Path::new("/var/lib/kefu/accounts/shop"));
        assert_eq!(shop.redis_namespace(), "kefu:{wx1111111111111111}");
        let cafe = cfg.account("cafe").unwrap();
        assert_eq!(cafe.path, "/cafe");
        assert_eq!(cafe.rules_dir, Path::new("/etc/kefu/rules"), "default: [rules].dir");
        assert_eq!(cafe.redis_namespace(), "kefu:{dry-run:cafe}");
        assert!(cfg.several());
    }

    #[test]
    fn the_view_names_account_keys() {
        let cfg = load(TWO, &[("KEFU_ACCOUNTS_CAFE_APP_ID", "wx2222222222222222")]).unwrap();
        let cafe = cfg.select(Some("cafe")).unwrap();
        assert_eq!(cafe.wechat.app_id, "wx2222222222222222");
        assert_eq!(cafe.server.path, "/cafe");
        assert_eq!(
            cafe.key("wechat.app_id"),
            "`accounts.cafe.app_id` (set by KEFU_ACCOUNTS_CAFE_APP_ID)"
        );
        assert_eq!(cafe.key("wechat.token"), "`accounts.cafe.token` (set in /etc/kefu/kefu.toml)");
        assert!(cafe.how_to_set("wechat.app_secret").contains("KEFU_ACCOUNTS_CAFE_APP_SECRET"));
        assert_eq!(cafe.key("window.menu"), "`window.menu` (set in /etc/kefu/kefu.toml)");
        let shop = cfg.select(Some("shop")).unwrap();
        assert_eq!(
            shop.key("window.message"),
            "`accounts.shop.window.message` (set in /etc/kefu/kefu.toml)"
        );
        assert_eq!(shop.state.dir, Path::new("/var/lib/kefu/accounts/shop"));
    }

    #[test]
    fn selecting_needs_the_flag_with_several() {
        let cfg = load(TWO, &[]).unwrap();
        let e = cfg.select(None).unwrap_err().0;
        assert!(e.contains("--account") && e.contains("cafe, shop"), "{e}");
        let e = cfg.select(Some("nope")).unwrap_err().0;
        assert!(e.contains("no account named \"nope\"") && e.contains("cafe, shop"), "{e}");
        // One account: no flag needed; the [wechat] account answers to `default`.
        let one = load("[wechat]\ntoken = \"abc123\"\n", &[]).unwrap();
        assert!(!one.several() && !one.first_account().named);
        assert_eq!(one.select(None).unwrap().wechat.token.expose(), "abc123");
        assert!(one.select(Some("default")).is_ok());
        assert!(one.select(Some("shop")).is_err());
        assert_eq!(one.first_account().state_dir, Path::new("kefu-data"));
    }

    #[test]
    fn env_alone_defines_an_account_and_splits_long_keys() {
        let cfg = load(
            "[accounts.shop]\ntoken = \"abc123\"\n",
            &[
                ("KEFU_ACCOUNTS_MY_BRAND_TOKEN", "tok456"),
                (
                    "KEFU_ACCOUNTS_SHOP_PREVIOUS_ENCODING_AES_KEY",
                    "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
                ),
                (
                    "KEFU_ACCOUNTS_SHOP_ENCODING_AES_KEY",
                    "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
                ),
                ("KEFU_ACCOUNTS_SHOP_WINDOW_MESSAGE", "2/1h"),
            ],
        )
        .unwrap();
        assert_eq!(cfg.account("my_brand").unwrap().wechat.token.expose(), "tok456");
        let shop = cfg.account("shop").unwrap();
        assert!(!shop.wechat.previous_encoding_aes_key.is_empty());
        assert_eq!(shop.window.message.limit, Some(2));
    }

    #[test]
    fn errors_name_the_account_key() {
        let e = load(
            "[accounts.shop]\ntoken = \"a b\"\npath = \"/admin/x\"\ncolour = 1\n\
             [accounts.Bad]\ntoken = \"abc\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("`accounts.shop.token` from /etc/kefu/kefu.toml"), "{e}");
        assert!(e.contains("`accounts.shop.path`"), "{e}");
        assert!(e.contains("`accounts.shop.colour`") && e.contains("unknown key"), "{e}");
        assert!(e.contains("[accounts.Bad]"), "{e}");
        let e = load(
            "[accounts.a]\npath = \"/x\"\napp_id = \"wx1111111111111111\"\n\
             [accounts.b]\npath = \"/x\"\napp_id = \"wx1111111111111111\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.contains("same path") && e.contains("same app_id"), "{e}");
        let e = load("[accounts.a]\ntoken = \"same1\"\n[accounts.b]\ntoken = \"same1\"\n", &[])
            .unwrap_err();
        assert!(e.contains("same token") && !e.contains("same1"), "{e}");
        // An account's keys are checked by the rules of the key they stand for.
        let e = load("[accounts.a]\napp_secret = \"x\"\n", &[]).unwrap_err();
        assert!(e.contains("`accounts.a.app_secret`") && e.contains("`accounts.a.app_id`"), "{e}");
    }

    #[test]
    fn an_account_only_a_variable_names_is_worth_a_warning() {
        let cfg = load(TWO, &[("KEFU_ACCOUNTS_CAFFE_TOKEN", "abc12345")]).unwrap();
        assert!(cfg.account("caffe").is_some());
        let w = cfg.warnings.join("\n");
        assert!(w.contains("`caffe`") && w.contains("KEFU_ACCOUNTS_CAFFE_TOKEN"), "{w}");
        // `default` takes server.path, like the [wechat] account it replaces.
        let cfg = load("[server]\npath = \"/wx\"\n[accounts.default]\ntoken = \"abc123\"\n", &[])
            .unwrap();
        assert_eq!(cfg.account("default").unwrap().path, "/wx");
        assert_eq!(
            in_account("set wechat.app_id (KEFU_WECHAT_APP_ID)", Some("my-shop")),
            "set accounts.my-shop.app_id (KEFU_ACCOUNTS_MY_SHOP_APP_ID)"
        );
        assert_eq!(in_account("set wechat.app_id", None), "set wechat.app_id");
    }

    #[test]
    fn wechat_beside_accounts_is_left_out_with_a_warning() {
        let cfg = load("[wechat]\ntoken = \"abc123\"\n[accounts.shop]\ntoken = \"xyz789\"\n", &[])
            .unwrap();
        assert_eq!(cfg.accounts.len(), 1);
        assert!(cfg.warnings.iter().any(|w| w.contains("[wechat]") && w.contains("left out")));
    }
}
