//! Inbound pushes (protocol §3): a typed model of every message and event, decoded in one pass
//! over the XML that hardens (refuses DOCTYPE/ENTITY, unknown entities and absurd nesting) and
//! collects the elements a kind reads; the kind (`MsgType`, `Event`) then picks which of them
//! become its fields.
//!
//! Tolerances (protocol §9): numbers may be bare or CDATA, text is trimmed, element order is
//! free, unknown elements are ignored, optional elements may be missing. Unknown kinds are data.

//!
//! Layout: this module holds the types (a [`Push`] and its kinds); `decode` the one-pass reader
//! and the hardening checks; [`build`] writes pushes the way WeChat does, for what plays
//! WeChat's part (`kefu push`, `simulate`, tests). The serde decoder it replaced (`two_pass`,
//! with its shapes in `raw`) is kept for the tests, as the oracle the reader is compared with.

pub mod build;
mod decode;
#[cfg(test)]
mod raw;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod two_pass;

pub use self::decode::{check_well_formed, parse};

use crate::model::DedupeKey;

/// Every `Event` value this version decodes into a typed event (protocol §3.3, §3.4); others
/// are kept as `PushKind::Unknown`. Case matters: WeChat sends `CLICK`, not `click`.
pub const MODELLED_EVENTS: [&str; 20] = [
    "subscribe",
    "unsubscribe",
    "SCAN",
    "LOCATION",
    "CLICK",
    "VIEW",
    "scancode_push",
    "scancode_waitmsg",
    "pic_sysphoto",
    "pic_photo_or_album",
    "pic_weixin",
    "location_select",
    "view_miniprogram",
    "TEMPLATESENDJOBFINISH",
    "MASSSENDJOBFINISH",
    "kf_create_session",
    "kf_close_session",
    "kf_switch_session",
    "user_pay_from_pay_cell",
    "merchant_order",
];

/// Deeper nesting than any real push (five levels: xml/SendPicsInfo/PicList/item/PicMd5Sum).
pub const MAX_DEPTH: usize = 16;

/// Why a body is not a push. Every variant maps to HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("the body is empty; WeChat pushes are an XML document")]
    Empty,
    #[error("the body is not valid UTF-8")]
    NotUtf8,
    #[error("DOCTYPE and ENTITY declarations are refused")]
    Doctype,
    #[error(
        "the entity reference &{0}; is not allowed; only the five XML entities and character references are"
    )]
    Entity(String),
    #[error("the XML nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("the required element <{0}> is missing or empty")]
    Missing(&'static str),
    #[error("<{field}> must be a number, got {value:?}")]
    BadNumber { field: &'static str, value: String },
}

impl DecodeError {
    /// A short stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Empty => "empty_body",
            DecodeError::NotUtf8 => "invalid_utf8",
            DecodeError::Doctype => "doctype",
            DecodeError::Entity(_) => "entity",
            DecodeError::TooDeep => "too_deep",
            DecodeError::Malformed(_) => "malformed_xml",
            DecodeError::Missing(_) => "missing_field",
            DecodeError::BadNumber { .. } => "bad_number",
        }
    }

    fn malformed(e: impl std::fmt::Display) -> Self {
        let mut s = e.to_string();
        if s.len() > 160 {
            let cut = (0..=160).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
            s.truncate(cut);
            s.push('…');
        }
        DecodeError::Malformed(s)
    }
}

/// One push: the common header (protocol §3.1) and what kind of push it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    /// `ToUserName`: the account's original id (`gh_…`).
    pub to: String,
    /// `FromUserName`: the sender's OpenID.
    pub from: String,
    /// `CreateTime`: Unix seconds.
    pub create_time: i64,
    /// `MsgType` as sent.
    pub msg_type: String,
    pub kind: PushKind,
}

/// Every push of protocol §3.2–§3.4, plus anything else kept as data.
#[derive(Debug, Clone, PartialEq)]
pub enum PushKind {
    Text {
        content: String,
        msg_id: Option<u64>,
        /// Set when the text is a click on a `msgmenu` choice (protocol §6.2).
        bizmsgmenuid: Option<String>,
    },
    Image {
        pic_url: String,
        media_id: String,
        msg_id: Option<u64>,
    },
    Voice {
        media_id: String,
        format: String,
        /// Speech-to-text, only when enabled; `None` when absent or empty.
        recognition: Option<String>,
        msg_id: Option<u64>,
    },
    Video {
        media_id: String,
        thumb_media_id: String,
        msg_id: Option<u64>,
    },
    ShortVideo {
        media_id: String,
        thumb_media_id: String,
        msg_id: Option<u64>,
    },
    Location {
        /// `Location_X`.
        latitude: Option<f64>,
        /// `Location_Y`.
        longitude: Option<f64>,
        scale: Option<f64>,
        label: String,
        msg_id: Option<u64>,
    },
    Link {
        title: String,
        description: String,
        url: String,
        msg_id: Option<u64>,
    },
    Event(Event),
    /// A `MsgType` or `Event` this version does not model: logged and acknowledged, never an
    /// error. `raw` is the (decrypted) XML; its `EventKey` and `MsgId`, when it has them, are
    /// read once while decoding (for the dedupe key and the rules).
    Unknown {
        msg_type: String,
        event: Option<String>,
        event_key: Option<String>,
        msg_id: Option<u64>,
        raw: String,
    },
}

/// `ScanCodeInfo` of the scancode menu events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanCodeInfo {
    pub scan_type: String,
    pub scan_result: String,
}

/// `SendPicsInfo` of the pic_* menu events.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SendPicsInfo {
    pub count: Option<u32>,
    pub pic_md5_sums: Vec<String>,
}

/// `SendLocationInfo` of the location_select menu event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SendLocationInfo {
    pub latitude: Option<f64>,
    pub longitude: Option<f64>,
    pub scale: Option<f64>,
    pub label: String,
    pub poiname: String,
}

/// Every event of protocol §3.3–§3.4. Keys are raw (`qrscene_` kept); see `RuleInput::scene`.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Subscribe {
        event_key: Option<String>,
        ticket: Option<String>,
    },
    Unsubscribe,
    Scan {
        event_key: String,
        ticket: Option<String>,
    },
    Location {
        latitude: Option<f64>,
        longitude: Option<f64>,
        precision: Option<f64>,
    },
    Click {
        event_key: String,
    },
    View {
        event_key: String,
        menu_id: Option<String>,
    },
    ScancodePush {
        event_key: String,
        scan: ScanCodeInfo,
    },
    ScancodeWaitmsg {
        event_key: String,
        scan: ScanCodeInfo,
    },
    PicSysphoto {
        event_key: String,
        pics: SendPicsInfo,
    },
    PicPhotoOrAlbum {
        event_key: String,
        pics: SendPicsInfo,
    },
    PicWeixin {
        event_key: String,
        pics: SendPicsInfo,
    },
    LocationSelect {
        event_key: String,
        location: SendLocationInfo,
    },
    ViewMiniprogram {
        event_key: String,
        menu_id: Option<String>,
    },
    /// `MsgID` (capital ID) is the template job id, not a message id.
    TemplateSendJobFinish {
        msg_id: Option<u64>,
        status: String,
    },
    MassSendJobFinish {
        msg_id: Option<u64>,
        status: String,
        total_count: Option<i64>,
        filter_count: Option<i64>,
        sent_count: Option<i64>,
        error_count: Option<i64>,
    },
    KfCreateSession {
        kf_account: String,
    },
    KfCloseSession {
        kf_account: String,
    },
    KfSwitchSession {
        from_kf_account: String,
        to_kf_account: String,
    },
    UserPayFromPayCell {
        card_id: String,
        user_card_code: String,
        trans_id: String,
        location_id: Option<String>,
        /// Paid, in fen.
        fee: Option<i64>,
        /// Due, in fen.
        original_fee: Option<i64>,
    },
    MerchantOrder {
        order_id: String,
        order_status: Option<i64>,
        product_id: String,
        sku_info: String,
    },
}

impl Event {
    /// The `Event` value, exactly as WeChat spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Subscribe { .. } => "subscribe",
            Event::Unsubscribe => "unsubscribe",
            Event::Scan { .. } => "SCAN",
            Event::Location { .. } => "LOCATION",
            Event::Click { .. } => "CLICK",
            Event::View { .. } => "VIEW",
            Event::ScancodePush { .. } => "scancode_push",
            Event::ScancodeWaitmsg { .. } => "scancode_waitmsg",
            Event::PicSysphoto { .. } => "pic_sysphoto",
            Event::PicPhotoOrAlbum { .. } => "pic_photo_or_album",
            Event::PicWeixin { .. } => "pic_weixin",
            Event::LocationSelect { .. } => "location_select",
            Event::ViewMiniprogram { .. } => "view_miniprogram",
            Event::TemplateSendJobFinish { .. } => "TEMPLATESENDJOBFINISH",
            Event::MassSendJobFinish { .. } => "MASSSENDJOBFINISH",
            Event::KfCreateSession { .. } => "kf_create_session",
            Event::KfCloseSession { .. } => "kf_close_session",
            Event::KfSwitchSession { .. } => "kf_switch_session",
            Event::UserPayFromPayCell { .. } => "user_pay_from_pay_cell",
            Event::MerchantOrder { .. } => "merchant_order",
        }
    }

    /// The raw `EventKey`, when the event has a non-empty one.
    pub fn event_key(&self) -> Option<&str> {
        let k = match self {
            Event::Subscribe { event_key, .. } => event_key.as_deref()?,
            Event::Scan { event_key, .. }
            | Event::Click { event_key }
            | Event::View { event_key, .. }
            | Event::ScancodePush { event_key, .. }
            | Event::ScancodeWaitmsg { event_key, .. }
            | Event::PicSysphoto { event_key, .. }
            | Event::PicPhotoOrAlbum { event_key, .. }
            | Event::PicWeixin { event_key, .. }
            | Event::LocationSelect { event_key, .. }
            | Event::ViewMiniprogram { event_key, .. } => event_key,
            _ => return None,
        };
        (!k.is_empty()).then_some(k)
    }
}

impl Push {
    /// The `Event` value for events (known or not).
    pub fn event(&self) -> Option<&str> {
        match &self.kind {
            PushKind::Event(e) => Some(e.name()),
            PushKind::Unknown { event, .. } => event.as_deref(),
            _ => None,
        }
    }

    /// The raw `EventKey`, for events that carry one.
    pub fn event_key(&self) -> Option<String> {
        match &self.kind {
            PushKind::Event(e) => e.event_key().map(str::to_string),
            PushKind::Unknown { event_key, .. } => event_key.clone(),
            _ => None,
        }
    }

    /// The `MsgId` of a normal message.
    pub fn msg_id(&self) -> Option<u64> {
        match &self.kind {
            PushKind::Text { msg_id, .. }
            | PushKind::Image { msg_id, .. }
            | PushKind::Voice { msg_id, .. }
            | PushKind::Video { msg_id, .. }
            | PushKind::ShortVideo { msg_id, .. }
            | PushKind::Location { msg_id, .. }
            | PushKind::Link { msg_id, .. } => *msg_id,
            PushKind::Unknown { msg_id, .. } => *msg_id,
            PushKind::Event(_) => None,
        }
    }

    /// Whether a follower sent this as a normal message (not an event, not an unknown kind).
    pub fn is_user_message(&self) -> bool {
        matches!(
            self.kind,
            PushKind::Text { .. }
                | PushKind::Image { .. }
                | PushKind::Voice { .. }
                | PushKind::Video { .. }
                | PushKind::ShortVideo { .. }
                | PushKind::Location { .. }
                | PushKind::Link { .. }
        )
    }

    /// The key WeChat's redeliveries share (protocol §5.1), scoped by account and follower:
    /// see [`DedupeKey`] for its shape and why a `MsgId` alone is not enough.
    ///
    /// A follower's message always carries a `MsgId` from WeChat; one without (hand-written
    /// XML, a test tool) is keyed by a digest of its content instead, so two different texts
    /// in one second stay two pushes while a redelivery (the same bytes) is still one.
    pub fn dedupe_key(&self) -> DedupeKey {
        match self.msg_id() {
            Some(id) => DedupeKey::message(&self.to, &self.from, self.create_time, id),
            None if self.is_user_message() => {
                use sha1::{Digest, Sha1};
                let digest = Sha1::digest(format!("{:?}", self.kind).as_bytes());
                DedupeKey::event(
                    &self.to,
                    &self.from,
                    self.create_time,
                    &self.msg_type,
                    &format!("sha1-{}", hex::encode(&digest[..8])),
                )
            }
            None => DedupeKey::event(
                &self.to,
                &self.from,
                self.create_time,
                self.event().unwrap_or(&self.msg_type),
                self.event_key().as_deref().unwrap_or_default(),
            ),
        }
    }
}
