//! The raw rule-file types: exactly what an operator writes in `rules/*.toml` (interface §4),
//! with spans on every value a later check may need to point at. Nothing here is validated
//! beyond its TOML shape; `compile` turns these into the immutable `RuleSet`.

use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

/// One `[[rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRule {
    /// Unique across all files; named by `[[test]] expect` and in logs.
    pub name: Spanned<String>,
    /// Higher is tried first; ties go by file name, then order in the file.
    #[serde(default)]
    pub priority: i64,
    /// `true`: rules after this one may fire too; otherwise evaluation stops here.
    #[serde(default, rename = "continue")]
    pub continue_: bool,
    /// `all` (every reply, in order) or `random_one` (one reply picked at random).
    #[serde(default)]
    pub reply_mode: ReplyMode,
    /// The conditions; absent = the rule matches every push, events included.
    pub when: Option<RawWhen>,
    /// What to send, in order.
    #[serde(default)]
    pub reply: Vec<RawReply>,
}

/// `reply_mode`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyMode {
    /// Send every reply.
    #[default]
    All,
    /// Send one reply chosen at random (the admin panel's 随机回复一条).
    RandomOne,
}

/// `[rule.when]`: every condition given must hold; a list means any one of its values.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhen {
    /// `MsgType`: text image voice video shortvideo location link event.
    pub msg_type: Option<StrList>,
    /// The text contains one of these (ASCII letters compared case-insensitively).
    pub text_contains: Option<StrList>,
    /// The text, trimmed, equals one of these, case-insensitively.
    pub text_equals: Option<StrList>,
    /// The text matches one of these regular expressions; captures feed `{1}` / `{name}`.
    pub text_regex: Option<StrList>,
    /// The `Event` value (case-sensitive, as WeChat sends it), or `payment`.
    pub event: Option<StrList>,
    /// The raw `EventKey`, exactly.
    pub event_key: Option<StrList>,
    /// The raw `EventKey` matches one of these regular expressions.
    pub event_key_regex: Option<StrList>,
    /// The QR scene: `qrscene_<scene>` on subscribe, the key itself on SCAN.
    pub scene: Option<StrList>,
    /// `bizmsgmenuid` of a msgmenu click.
    pub menu_choice: Option<StrList>,
    /// Sender OpenIDs.
    pub from: Option<StrList>,
}

/// One `[[rule.reply]]`: exactly one kind, plus optional `delay` and `as`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReply {
    /// A text message (placeholders allowed).
    pub text: Option<Spanned<String>>,
    /// An image by media id, or `{ file = "…" }`.
    pub image: Option<Spanned<RawMedia>>,
    /// A voice message by media id, or `{ file = "…" }`.
    pub voice: Option<Spanned<RawMedia>>,
    /// A video.
    pub video: Option<RawVideo>,
    /// A music message.
    pub music: Option<RawMusic>,
    /// One news article (external link).
    pub news: Option<RawNews>,
    /// An article page by material media id (customer-service only).
    pub mpnews: Option<Spanned<String>>,
    /// A published article by article id (customer-service only).
    pub mpnewsarticle: Option<Spanned<String>>,
    /// A msgmenu: choices the follower taps (customer-service only).
    pub menu: Option<RawMenu>,
    /// A card by card id (customer-service only).
    pub wxcard: Option<Spanned<String>>,
    /// A mini-program card (customer-service only).
    pub miniprogram: Option<RawMiniProgram>,
    /// `true`: show the typing indicator.
    pub typing: Option<Spanned<bool>>,
    /// `true` or `"kf@account"`: hand the conversation to human customer service.
    pub transfer: Option<Spanned<RawTransfer>>,
    /// `"NAME"`: send the push to `[backends.NAME]`; its answer becomes the replies here
    /// (interface §7.2).
    pub forward: Option<Spanned<String>>,
    /// With `forward`: the text sent when the backend fails for good.
    pub fallback: Option<Spanned<String>>,
    /// Send this much later (humantime: `30s`, `2m`, `1h30m`), if the window still allows.
    pub delay: Option<Spanned<String>>,
    /// Send as this kf account (`prefix@wechat_id`).
    #[serde(rename = "as")]
    pub as_kf: Option<Spanned<String>>,
}

/// `video = { media_id | file, thumb_media_id | thumb, title, description }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVideo {
    /// The video's media id (or `{ file = "…" }`); give this or `file`.
    #[serde(default)]
    pub media_id: Option<Spanned<RawMedia>>,
    /// The video file, relative to the rules directory; give this or `media_id`.
    #[serde(default)]
    pub file: Option<Spanned<String>>,
    /// The thumbnail's media id (customer-service sends need it).
    #[serde(default)]
    pub thumb_media_id: Option<Spanned<RawMedia>>,
    /// The thumbnail as `{ file = "…" }` (or a media id); give this or `thumb_media_id`.
    #[serde(default)]
    pub thumb: Option<Spanned<RawMedia>>,
    /// Title shown with the video.
    #[serde(default)]
    pub title: Option<Spanned<String>>,
    /// Description shown with the video.
    #[serde(default)]
    pub description: Option<Spanned<String>>,
}

/// `music = { title, description, musicurl, hqmusicurl, thumb_media_id }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMusic {
    /// Title.
    #[serde(default)]
    pub title: Option<Spanned<String>>,
    /// Description.
    #[serde(default)]
    pub description: Option<Spanned<String>>,
    /// Link to the music.
    #[serde(default)]
    pub musicurl: Option<Spanned<String>>,
    /// High-quality link, used on Wi-Fi.
    #[serde(default)]
    pub hqmusicurl: Option<Spanned<String>>,
    /// The thumbnail's media id (or `{ file = "…" }`); give this or `thumb`.
    #[serde(default)]
    pub thumb_media_id: Option<Spanned<RawMedia>>,
    /// The thumbnail as `{ file = "…" }` (or a media id).
    #[serde(default)]
    pub thumb: Option<Spanned<RawMedia>>,
}

/// `news = { title, description, url, picurl }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNews {
    /// Title.
    pub title: Spanned<String>,
    /// Description.
    #[serde(default)]
    pub description: Option<Spanned<String>>,
    /// Where a tap leads.
    pub url: Spanned<String>,
    /// The picture's URL.
    #[serde(default)]
    pub picurl: Option<Spanned<String>>,
}

/// `menu = { head, items = [{ id, content }], tail }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMenu {
    /// Text above the choices.
    #[serde(default)]
    pub head: Option<Spanned<String>>,
    /// The choices; a tap comes back as a text push with `bizmsgmenuid` = `id`.
    pub items: Vec<RawMenuItem>,
    /// Text below the choices.
    #[serde(default)]
    pub tail: Option<Spanned<String>>,
}

/// One msgmenu choice.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMenuItem {
    /// What comes back as `bizmsgmenuid` (match it with `menu_choice`).
    pub id: Spanned<String>,
    /// The choice's text.
    pub content: Spanned<String>,
}

/// `miniprogram = { title, appid, pagepath, thumb_media_id }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMiniProgram {
    /// Card title.
    pub title: Spanned<String>,
    /// The mini program's appid (it must be linked to the account).
    pub appid: Spanned<String>,
    /// The page to open.
    pub pagepath: Spanned<String>,
    /// The card image's media id (or `{ file = "…" }`); give this or `thumb`.
    #[serde(default)]
    pub thumb_media_id: Option<Spanned<RawMedia>>,
    /// The card image as `{ file = "…" }` (or a media id).
    #[serde(default)]
    pub thumb: Option<Spanned<RawMedia>>,
}

// ---- media ----

/// A media id, or a file to upload for one (interface §9): `"MEDIA_ID"` or
/// `{ file = "media/menu.png" }`, the path relative to the rules directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawMedia {
    /// A media id as WeChat issued it (placeholders allowed).
    Id(String),
    /// A file kefu uploads and keeps a media id for.
    File(String),
}

impl<'de> Deserialize<'de> for RawMedia {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawMedia;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a media id string or { file = \"path relative to the rules directory\" }",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawMedia, E> {
                Ok(RawMedia::Id(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<RawMedia, A::Error> {
                let mut file = None;
                while let Some(k) = map.next_key::<String>()? {
                    if k != "file" {
                        return Err(de::Error::unknown_field(&k, &["file"]));
                    }
                    if file.is_some() {
                        return Err(de::Error::duplicate_field("file"));
                    }
                    file = Some(map.next_value::<String>()?);
                }
                file.map(RawMedia::File).ok_or_else(|| de::Error::missing_field("file"))
            }
        }
        d.deserialize_any(V)
    }
}

/// `transfer = true | "kf@account"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawTransfer {
    /// `true` (any kf) or `false` (which is refused: it would do nothing).
    Any(bool),
    /// One kf account.
    To(String),
}

impl<'de> Deserialize<'de> for RawTransfer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawTransfer;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true or a kf account \"prefix@wechat_id\"")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawTransfer, E> {
                Ok(RawTransfer::Any(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTransfer, E> {
                Ok(RawTransfer::To(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[test]]`, run by `kefu rules check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTest {
    /// A text message with this content.
    pub text: Option<String>,
    /// Or an event with this `Event` value.
    pub event: Option<String>,
    /// The event's `EventKey`.
    pub key: Option<String>,
    /// The `bizmsgmenuid` of a msgmenu click (with `text`).
    pub menu_choice: Option<String>,
    /// Sender OpenID (default: a fixed test OpenID).
    pub from: Option<String>,
    /// Extra placeholder values, as payment notifications provide (`amount`, `out_trade_no`).
    #[serde(default)]
    pub vars: std::collections::BTreeMap<String, String>,
    /// Names of the rules that fire, in order; `[]` = none.
    pub expect: StrList,
}

/// A string or a list of strings (interface §6.7), each with its span.
#[derive(Debug, Clone, Default)]
pub struct StrList {
    /// The values, each with its own span.
    pub items: Vec<Spanned<String>>,
    /// The span of the whole value (the string, or the list).
    pub span: Range<usize>,
}

impl StrList {
    pub fn iter(&self) -> impl Iterator<Item = (&str, Range<usize>)> {
        self.items.iter().map(|s| (s.get_ref().as_str(), s.span()))
    }
    pub fn values(&self) -> Vec<String> {
        self.items.iter().map(|s| s.get_ref().clone()).collect()
    }
}

impl<'de> Deserialize<'de> for StrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // The span of a lone string is the whole value's; list elements carry their own.
        let outer: Spanned<OneOrMany> = Spanned::deserialize(d)?;
        let span = outer.span();
        let items = match outer.into_inner() {
            OneOrMany::One(s) => vec![Spanned::new(span.clone(), s)],
            OneOrMany::Many(v) => v,
        };
        Ok(StrList { items, span })
    }
}

enum OneOrMany {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany::One(v.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<Spanned<String>>()? {
                    out.push(s);
                }
                Ok(OneOrMany::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}
