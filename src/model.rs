//! Domain types every layer shares: validated identifiers, secrets, window triggers, the
//! outbound message kinds, planned actions, the injected clock and the seams (traits) between
//! the webhook, the pipeline and the stores.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Secrets

/// A secret string (app secret, token, AES key, admin token, access token). `Debug` and
/// `Display` never print it, so it cannot leak through a log line or an error chain.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself; call only where it is put on the wire or compared.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { f.write_str("\"\"") } else { f.write_str("[redacted]") }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// ---------------------------------------------------------------------------------------------
// Identifiers

/// The identity of one push or payment: the key of its dedupe record, its stored answer, its
/// outbox entries and, on Redis, its `{ns}:d:{key}` record.
///
/// Every key is scoped by everything that makes the push unique: the account (`ToUserName`,
/// the original ID `gh_…`, for pushes; the payer's AppID for payments), the follower, and what
/// identifies the push for that follower. WeChat reuses `MsgId`s across followers (wechatpy,
/// WxJava and Senparc key on `MsgId` + `FromUserName` + `CreateTime` for that reason), so a
/// `MsgId` alone would answer one follower's message with another follower's stored reply.
/// A redelivery repeats all of these fields byte for byte (protocol §5.1), so it still maps to
/// the same key. The time-ordered part comes first (`CreateTime`, the transaction id, which
/// starts with the date), so new keys land at the end of the dedupe table's B-tree instead of
/// dirtying a random page per push. Shapes:
///
/// - message: `m:{create_time}:{msg_id}:{from}:{to}`
/// - event (and anything without a `MsgId`): `e:{create_time}:{from}:{to}:{event}:{event_key}`
/// - payment notification: `pay:{transaction_id}:{openid}:{appid}` (`-` when the notification
///   names no AppID)
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DedupeKey(String);

impl DedupeKey {
    /// A follower's message (it carries a `MsgId`).
    pub fn message(to: &str, from: &str, create_time: i64, msg_id: u64) -> DedupeKey {
        DedupeKey(format!("m:{create_time}:{msg_id}:{from}:{to}"))
    }

    /// An event, or any push without a `MsgId`. `Event` and `EventKey` are part of the key
    /// because one follower can cause two events within the same second.
    pub fn event(
        to: &str,
        from: &str,
        create_time: i64,
        event: &str,
        event_key: &str,
    ) -> DedupeKey {
        DedupeKey(format!("e:{create_time}:{from}:{to}:{event}:{event_key}"))
    }

    /// A WeChat Pay notification (v2 or v3) of `transaction_id`, paid by `openid` of `appid`.
    pub fn payment(appid: Option<&str>, openid: &OpenId, transaction_id: &str) -> DedupeKey {
        let appid = appid.filter(|a| !a.is_empty()).unwrap_or("-");
        DedupeKey(format!("pay:{transaction_id}:{openid}:{appid}"))
    }

    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<DedupeKey> for String {
    fn from(k: DedupeKey) -> String {
        k.0
    }
}

/// Why an identifier was refused at the boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("an OpenID must be 1 to 64 characters of letters, digits, '-' or '_' (got {0:?})")]
    OpenId(String),
    #[error(
        "a kf account must be prefix@wechat_id with a prefix of 1 to 10 letters, digits or '_' \
         (got {0:?}); a bare prefix needs wechat.account_id set"
    )]
    KfAccount(String),
}

/// A follower's OpenID, validated: WeChat OpenIDs are 28 characters of `[A-Za-z0-9_-]`; we accept
/// 1..=64 of those so test accounts and future formats still pass, and nothing that could smuggle
/// a path segment, a query or a control character.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OpenId(Arc<str>);

impl OpenId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok { Ok(OpenId(Arc::from(s))) } else { Err(IdError::OpenId(s.to_string())) }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for OpenId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        OpenId::parse(&s)
    }
}
impl From<OpenId> for String {
    fn from(o: OpenId) -> String {
        o.0.to_string()
    }
}
impl fmt::Display for OpenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A customer-service (kf) account, `prefix@wechat_id` (protocol §7.1).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KfAccount(String);

impl KfAccount {
    /// Parses `prefix@id`; a bare `prefix` is completed with `account_id` when one is given.
    pub fn parse_with(s: &str, account_id: Option<&str>) -> Result<Self, IdError> {
        let s = s.trim();
        let full = match (s.split_once('@'), account_id) {
            (Some(_), _) => s.to_string(),
            (None, Some(acc)) if !acc.is_empty() => format!("{s}@{acc}"),
            _ => return Err(IdError::KfAccount(s.to_string())),
        };
        let (prefix, id) = full.split_once('@').expect("has @");
        let prefix_ok = !prefix.is_empty()
            && prefix.len() <= 10
            && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        let id_ok = !id.is_empty()
            && id.len() <= 30
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if prefix_ok && id_ok {
            Ok(KfAccount(full))
        } else {
            Err(IdError::KfAccount(s.to_string()))
        }
    }
    pub fn parse(s: &str) -> Result<Self, IdError> {
        Self::parse_with(s, None)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KfAccount {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        KfAccount::parse(&s)
    }
}
impl From<KfAccount> for String {
    fn from(k: KfAccount) -> String {
        k.0
    }
}
impl fmt::Display for KfAccount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Window triggers

/// The interaction that opened a customer-service window (interface §6.5). The names are the
/// ledger's grant names and are part of the operator contract.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Message,
    Menu,
    Subscribe,
    Scan,
    Payment,
}

impl Trigger {
    pub const ALL: [Trigger; 5] =
        [Trigger::Message, Trigger::Menu, Trigger::Subscribe, Trigger::Scan, Trigger::Payment];

    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Message => "message",
            Trigger::Menu => "menu",
            Trigger::Subscribe => "subscribe",
            Trigger::Scan => "scan",
            Trigger::Payment => "payment",
        }
    }

    pub fn parse(s: &str) -> Option<Trigger> {
        Trigger::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a push does to the follower's window: open a grant, close everything (unsubscribe), or
/// nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowEffect {
    Open(Trigger),
    /// A follow that opens this grant: like `Open`, and the follower is subscribed whatever the
    /// trigger (a subscribe through a payment QR opens the payment grant, and unlike a payment
    /// alone it proves the payer follows).
    Follow(Trigger),
    CloseAll,
    None,
}

// ---------------------------------------------------------------------------------------------
// Outbound messages

/// One news article (external link). `T` is what each field holds: `String` in a message,
/// a template in a compiled rule (see [`OutMessage`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(bound(deserialize = "T: Deserialize<'de> + Default"))]
pub struct Article<T = String> {
    pub title: T,
    #[serde(default)]
    pub description: T,
    pub url: T,
    #[serde(default)]
    pub picurl: T,
}

/// One choice of a `msgmenu` message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MenuItem<T = String> {
    pub id: T,
    pub content: T,
}

/// A message kefu can send to a follower, either as a `custom/send` body (protocol §6.2) or,
/// for the kinds WeChat allows, as a passive reply (protocol §5.2).
///
/// The one definition of the message kinds. `T` is what each text field holds: `String` when
/// the message is sent (the default), a placeholder template in a compiled rule; a rule's
/// reply becomes a message by [`OutMessage::map`]. The field names are WeChat's `custom/send`
/// names, and the serde tag (`kind`) is the `msgtype`, so [`OutMessage::custom_send_body`]
/// is the serialized message rearranged, and the outbox stores the same JSON. Adding a kind:
/// a variant here (with its `msgtype`, `passive_capable` and `map` arms), its raw TOML shape in
/// `rules::file`, its compilation in `rules::compile`, and its passive XML in `wechat::reply`
/// when WeChat allows it passively.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
#[serde(bound(deserialize = "T: Deserialize<'de> + Default"))]
pub enum OutMessage<T = String> {
    Text { content: T },
    Image { media_id: T },
    Voice { media_id: T },
    Video { media_id: T, thumb_media_id: T, title: T, description: T },
    Music { title: T, description: T, musicurl: T, hqmusicurl: T, thumb_media_id: T },
    News { articles: Vec<Article<T>> },
    MpNews { media_id: T },
    MpNewsArticle { article_id: T },
    MsgMenu { head_content: T, list: Vec<MenuItem<T>>, tail_content: T },
    WxCard { card_id: T },
    MiniProgramPage { title: T, appid: T, pagepath: T, thumb_media_id: T },
}

impl<T> OutMessage<T> {
    /// The `msgtype` of the `custom/send` body (also the serde tag).
    pub fn msgtype(&self) -> &'static str {
        match self {
            OutMessage::Text { .. } => "text",
            OutMessage::Image { .. } => "image",
            OutMessage::Voice { .. } => "voice",
            OutMessage::Video { .. } => "video",
            OutMessage::Music { .. } => "music",
            OutMessage::News { .. } => "news",
            OutMessage::MpNews { .. } => "mpnews",
            OutMessage::MpNewsArticle { .. } => "mpnewsarticle",
            OutMessage::MsgMenu { .. } => "msgmenu",
            OutMessage::WxCard { .. } => "wxcard",
            OutMessage::MiniProgramPage { .. } => "miniprogrampage",
        }
    }

    /// Whether a passive (HTTP-answer) reply can carry this kind (interface §6.8).
    pub fn passive_capable(&self) -> bool {
        matches!(
            self,
            OutMessage::Text { .. }
                | OutMessage::Image { .. }
                | OutMessage::Voice { .. }
                | OutMessage::Video { .. }
                | OutMessage::Music { .. }
                | OutMessage::News { .. }
        )
    }

    /// The same message with every field passed through `f` (a rule's templates rendered
    /// into text, say), in declaration order.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> OutMessage<U> {
        use OutMessage as M;
        match self {
            M::Text { content } => M::Text { content: f(content) },
            M::Image { media_id } => M::Image { media_id: f(media_id) },
            M::Voice { media_id } => M::Voice { media_id: f(media_id) },
            M::Video { media_id, thumb_media_id, title, description } => M::Video {
                media_id: f(media_id),
                thumb_media_id: f(thumb_media_id),
                title: f(title),
                description: f(description),
            },
            M::Music { title, description, musicurl, hqmusicurl, thumb_media_id } => M::Music {
                title: f(title),
                description: f(description),
                musicurl: f(musicurl),
                hqmusicurl: f(hqmusicurl),
                thumb_media_id: f(thumb_media_id),
            },
            M::News { articles } => M::News {
                articles: articles
                    .iter()
                    .map(|a| Article {
                        title: f(&a.title),
                        description: f(&a.description),
                        url: f(&a.url),
                        picurl: f(&a.picurl),
                    })
                    .collect(),
            },
            M::MpNews { media_id } => M::MpNews { media_id: f(media_id) },
            M::MpNewsArticle { article_id } => M::MpNewsArticle { article_id: f(article_id) },
            M::MsgMenu { head_content, list, tail_content } => {
                let head_content = f(head_content);
                let list = list
                    .iter()
                    .map(|i| MenuItem { id: f(&i.id), content: f(&i.content) })
                    .collect();
                M::MsgMenu { head_content, list, tail_content: f(tail_content) }
            }
            M::WxCard { card_id } => M::WxCard { card_id: f(card_id) },
            M::MiniProgramPage { title, appid, pagepath, thumb_media_id } => M::MiniProgramPage {
                title: f(title),
                appid: f(appid),
                pagepath: f(pagepath),
                thumb_media_id: f(thumb_media_id),
            },
        }
    }
}

impl OutMessage {
    /// The exact `custom/send` JSON body (protocol §6.2): `touser`, `msgtype`, the message's
    /// fields under its `msgtype`, and `customservice.kf_account` when sent as a kf account.
    /// `serde_json` writes non-ASCII as raw UTF-8, which WeChat requires (40033 on `\u`
    /// escapes).
    pub fn custom_send_body(&self, touser: &str, kf_account: Option<&str>) -> Value {
        let mut inner = match serde_json::to_value(self) {
            Ok(Value::Object(fields)) => fields,
            // A message is a struct variant of strings: it always serializes to an object.
            _ => serde_json::Map::new(),
        };
        inner.remove("kind");
        let mut body = serde_json::Map::new();
        body.insert("touser".into(), Value::String(touser.to_string()));
        body.insert("msgtype".into(), Value::String(self.msgtype().to_string()));
        body.insert(self.msgtype().to_string(), Value::Object(inner));
        if let Some(kf) = kf_account {
            body.insert("customservice".into(), json!({ "kf_account": kf }));
        }
        Value::Object(body)
    }
}

/// What one rule reply asks for; `T` as in [`OutMessage`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
#[serde(bound(deserialize = "T: Deserialize<'de> + Default"))]
pub enum Action<T = String> {
    /// Send a message (passively when allowed and first, else through `custom/send`).
    Send { message: OutMessage<T> },
    /// Show the typing indicator (`custom/typing`).
    Typing,
    /// Hand the conversation to human customer service (a `transfer_customer_service` passive
    /// reply), optionally to one kf account.
    Transfer { kf_account: Option<String> },
    /// Send the push to backend `backend` (`forward = "NAME"`, interface §7.2): its answer
    /// becomes the rule's replies in this place, `fallback` (as text) when it fails for good.
    /// Never a passive reply nor an outbox entry: the pipeline takes it out before planning.
    /// `captures` are the named groups of the rule's regex, filled in when the rule fires.
    Forward { backend: String, fallback: Option<T>, captures: Vec<(String, String)> },
}

impl PassiveReply {
    /// A text answer.
    pub fn text(content: impl Into<String>) -> Self {
        PassiveReply::Message { message: OutMessage::Text { content: content.into() } }
    }
}

impl<T> Action<T> {
    /// The same action with every message field passed through `f`.
    pub fn map<U>(&self, mut f: impl FnMut(&T) -> U) -> Action<U> {
        match self {
            Action::Send { message } => Action::Send { message: message.map(f) },
            Action::Typing => Action::Typing,
            Action::Transfer { kf_account } => Action::Transfer { kf_account: kf_account.clone() },
            Action::Forward { backend, fallback, captures } => Action::Forward {
                backend: backend.clone(),
                fallback: fallback.as_ref().map(&mut f),
                captures: captures.clone(),
            },
        }
    }
}

/// The HTTP answer to a push when it is more than `success` (protocol §5.2, §7.4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "lowercase")]
pub enum PassiveReply {
    /// One of the passive-capable kinds (`OutMessage::passive_capable`).
    Message { message: OutMessage },
    /// `transfer_customer_service`, optionally to one kf account (`TransInfo.KfAccount`).
    Transfer { kf_account: Option<String> },
}

/// What the outbox holds for a push: a message to send, or the typing indicator. A transfer
/// has no variant: WeChat carries it only as the passive answer, so
/// [`crate::rules::Evaluation::split_passive`] never plans one. Serialized like the matching
/// [`Action`] variants, so the outbox JSON is the same.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
pub enum OutboxAction {
    /// Send a message through `custom/send`.
    Send { message: OutMessage },
    /// Show the typing indicator (`custom/typing`).
    Typing,
}

/// One action a rule planned for a push, in rule order: an [`Action`] as the rules evaluate
/// it, an [`OutboxAction`] once the passive answer is split off and it goes to the outbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedAction<A = Action> {
    /// The rule that planned it.
    pub rule: String,
    pub action: A,
    /// Zero = immediate.
    #[serde(with = "duration_ms")]
    pub delay: Duration,
    /// Send as this kf account (`customservice.kf_account`).
    pub kf_account: Option<String>,
    /// Who wrote it, for the conversation log (interface §8.1): a rule's own reply, or a
    /// backend's answer to a forward. Absent in stored JSON means a rule.
    #[serde(default, skip_serializing_if = "Source::is_rule")]
    pub source: Source,
}

/// Who wrote a message in a conversation (interface §8.1, §8.2): the follower, a rule's reply,
/// a backend's answer (`forward`), or a person in the console (or the admin API's reply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Follower,
    #[default]
    Rule,
    Backend,
    Console,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Follower => "follower",
            Source::Rule => "rule",
            Source::Backend => "backend",
            Source::Console => "console",
        }
    }
    /// The default (serde skips it).
    pub fn is_rule(&self) -> bool {
        *self == Source::Rule
    }
}

impl PlannedAction {
    /// The outbox form of this action, `None` for a transfer (it can only be the passive
    /// answer).
    pub fn into_outbox(self) -> Option<PlannedAction<OutboxAction>> {
        let PlannedAction { rule, action, delay, kf_account, source } = self;
        let action = match action {
            Action::Send { message } => OutboxAction::Send { message },
            Action::Typing => OutboxAction::Typing,
            Action::Transfer { .. } | Action::Forward { .. } => return None,
        };
        Some(PlannedAction { rule, action, delay, kf_account, source })
    }
}

mod duration_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// The facts of a push that rules match on, independent of the XML model. Built by
/// `wechat::inbound::Push::rule_input` (and by the payment handlers, `kefu simulate`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuleInput {
    pub from: String,
    /// `text`, `image`, `voice`, `video`, `shortvideo`, `location`, `link` or `event`.
    pub msg_type: String,
    /// The text of a text message, or a voice message's `Recognition`.
    pub text: Option<String>,
    /// The `Event` value, or `payment` for payment notifications.
    pub event: Option<String>,
    /// The raw `EventKey`.
    pub event_key: Option<String>,
    /// The QR scene: `EventKey` without `qrscene_` on subscribe, the key itself on SCAN.
    pub scene: Option<String>,
    /// `bizmsgmenuid` of a msgmenu click.
    pub menu_choice: Option<String>,
    /// Extra placeholders (`amount`, `out_trade_no`, ...), by name.
    pub vars: Vec<(String, String)>,
}

// ---------------------------------------------------------------------------------------------
// Time

/// The injected clock: ledger, dedupe and scheduler read time only through it, so tests advance
/// time instead of sleeping.
pub trait Clock: Send + Sync + fmt::Debug {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let d =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        d.as_millis() as i64
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }
    pub fn set_ms(&self, ms: i64) {
        self.0.store(ms, Ordering::SeqCst);
    }
    pub fn advance(&self, d: Duration) {
        self.0.fetch_add(d.as_millis() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

pub type SharedClock = Arc<dyn Clock>;

// ---------------------------------------------------------------------------------------------
// Access-token cache seam

/// An access token as cached (protocol §8).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedToken {
    pub token: Secret,
    /// Unix seconds after which WeChat no longer accepts it.
    pub expires_at: i64,
    /// Unix seconds when it was fetched.
    pub fetched_at: i64,
}

/// Where the access token lives between processes: the embedded store for one instance (shared
/// by `serve` and every CLI run), Redis for several. The API client keeps an in-memory copy and
/// single-flights refreshes in-process; this trait makes the copy durable and shared.
#[async_trait::async_trait]
pub trait TokenCache: Send + Sync {
    async fn load(&self) -> anyhow::Result<Option<CachedToken>>;
    async fn save(&self, token: &CachedToken) -> anyhow::Result<()>;
    /// Removes the cached token only if it is still `token` (compare-and-invalidate), so a
    /// late 40001 for an old token cannot throw away a newer one.
    async fn invalidate(&self, token: &str) -> anyhow::Result<()>;
    /// Takes the cross-process refresh lock for `ttl`; false when another holder has it. A
    /// single-process cache may always say true.
    async fn try_lock_refresh(&self, _holder: &str, _ttl: Duration) -> anyhow::Result<bool> {
        Ok(true)
    }
    async fn unlock_refresh(&self, _holder: &str) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A token cache that lives only in this process (tests, and a client with no store).
#[derive(Default)]
pub struct MemoryTokenCache(parking_lot::Mutex<Option<CachedToken>>);

#[async_trait::async_trait]
impl TokenCache for MemoryTokenCache {
    async fn load(&self) -> anyhow::Result<Option<CachedToken>> {
        Ok(self.0.lock().clone())
    }
    async fn save(&self, token: &CachedToken) -> anyhow::Result<()> {
        *self.0.lock() = Some(token.clone());
        Ok(())
    }
    async fn invalidate(&self, token: &str) -> anyhow::Result<()> {
        let mut g = self.0.lock();
        if g.as_ref().is_some_and(|t| t.token.expose() == token) {
            *g = None;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn openid_validation() {
        assert!(OpenId::parse("oMgHVjngRipVsoxg6TuX3vz6glDg").is_ok());
        for bad in ["", "a/b", "a b", "x?y", &"a".repeat(65)] {
            assert!(OpenId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn kf_account_completion() {
        assert_eq!(
            KfAccount::parse_with("kf01", Some("gh_acct")).unwrap().as_str(),
            "kf01@gh_acct"
        );
        assert_eq!(KfAccount::parse("kf01@wx").unwrap().as_str(), "kf01@wx");
        assert!(KfAccount::parse("kf01").is_err());
        assert!(KfAccount::parse("toolongprefix1@wx").is_err());
        assert!(KfAccount::parse("bad-@wx").is_err());
    }

    #[test]
    fn custom_send_bodies() {
        let m = OutMessage::Text { content: "您好".into() };
        assert_eq!(
            serde_json::to_string(&m.custom_send_body("oU", Some("kf@gh"))).unwrap(),
            r#"{"customservice":{"kf_account":"kf@gh"},"msgtype":"text","text":{"content":"您好"},"touser":"oU"}"#
        );
        let m = OutMessage::MsgMenu {
            head_content: "h".into(),
            list: vec![MenuItem { id: "101".into(), content: "满意".into() }],
            tail_content: "t".into(),
        };
        let v = m.custom_send_body("oU", None);
        assert_eq!(v["msgmenu"]["list"][0]["id"], "101");
        assert!(v.get("customservice").is_none());
    }

    /// Every kind, with a marker in each field: the body carries exactly WeChat's field names
    /// (protocol §6.2) under the `msgtype`, which is also the serde tag the outbox stores.
    #[test]
    fn every_kind_serializes_as_its_custom_send_fields() {
        let s = |v: &str| v.to_string();
        let all: Vec<(OutMessage, Value)> = vec![
            (OutMessage::Text { content: s("c") }, json!({"content": "c"})),
            (OutMessage::Image { media_id: s("m") }, json!({"media_id": "m"})),
            (OutMessage::Voice { media_id: s("m") }, json!({"media_id": "m"})),
            (
                OutMessage::Video {
                    media_id: s("m"),
                    thumb_media_id: s("t"),
                    title: s("ti"),
                    description: s("d"),
                },
                json!({"media_id": "m", "thumb_media_id": "t", "title": "ti", "description": "d"}),
            ),
            (
                OutMessage::Music {
                    title: s("ti"),
                    description: s("d"),
                    musicurl: s("u"),
                    hqmusicurl: s("h"),
                    thumb_media_id: s("t"),
                },
                json!({"title": "ti", "description": "d", "musicurl": "u", "hqmusicurl": "h",
                       "thumb_media_id": "t"}),
            ),
            (
                OutMessage::News {
                    articles: vec![Article {
                        title: s("ti"),
                        description: s("d"),
                        url: s("u"),
                        picurl: s("p"),
                    }],
                },
                json!({"articles": [{"title": "ti", "description": "d", "url": "u", "picurl": "p"}]}),
            ),
            (OutMessage::MpNews { media_id: s("m") }, json!({"media_id": "m"})),
            (OutMessage::MpNewsArticle { article_id: s("a") }, json!({"article_id": "a"})),
            (OutMessage::WxCard { card_id: s("c") }, json!({"card_id": "c"})),
            (
                OutMessage::MiniProgramPage {
                    title: s("ti"),
                    appid: s("wx"),
                    pagepath: s("p"),
                    thumb_media_id: s("t"),
                },
                json!({"title": "ti", "appid": "wx", "pagepath": "p", "thumb_media_id": "t"}),
            ),
        ];
        for (m, inner) in all {
            let body = m.custom_send_body("oU", None);
            assert_eq!(body, json!({"touser": "oU", "msgtype": m.msgtype(), m.msgtype(): inner}));
            let stored = serde_json::to_value(&m).unwrap();
            assert_eq!(stored["kind"], m.msgtype(), "the serde tag is the msgtype");
            assert_eq!(serde_json::from_value::<OutMessage>(stored).unwrap(), m, "round trip");
            assert_eq!(m.map(|t| t.clone()), m, "map visits every field");
        }
    }
}
