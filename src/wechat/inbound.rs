//! Inbound pushes (protocol §3): a typed model of every message and event, decoded in two passes
//! (style practice 1). A hardening scan refuses DOCTYPE/ENTITY, unknown entities and absurd
//! nesting; pass one reads the common header (`MsgType`, `Event`, ...); pass two decodes the same
//! text into the concrete struct for that kind. quick-xml cannot drive serde's internally tagged
//! enums (numbers arrive as strings), which is why the kind is chosen by hand in between.
//!
//! Tolerances (protocol §9): numbers may be bare or CDATA, text is trimmed, element order is
//! free, unknown elements are ignored, optional elements may be missing. Unknown kinds are data.

use std::str::FromStr;

use quick_xml::events::Event as XmlEvent;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::model::{DedupeKey, RuleInput, Trigger, WindowEffect};

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
const MAX_DEPTH: usize = 16;

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
    /// error. `raw` is the (decrypted) XML.
    Unknown {
        msg_type: String,
        event: Option<String>,
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
            PushKind::Unknown { raw, .. } => unknown_extras(raw).event_key,
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
            PushKind::Unknown { raw, .. } => unknown_extras(raw).msg_id,
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
    pub fn dedupe_key(&self) -> DedupeKey {
        match self.msg_id() {
            Some(id) => DedupeKey::message(&self.to, &self.from, self.create_time, id),
            None => DedupeKey::event(
                &self.to,
                &self.from,
                self.create_time,
                self.event().unwrap_or(&self.msg_type),
                self.event_key().as_deref().unwrap_or_default(),
            ),
        }
    }

    /// What this push does to the follower's window (protocol §4.1, interface §6.5). Only
    /// CLICK, scancode_push and scancode_waitmsg are menu triggers; unknown kinds open nothing.
    pub fn window_effect(&self) -> WindowEffect {
        if self.is_user_message() {
            return WindowEffect::Open(Trigger::Message);
        }
        let PushKind::Event(e) = &self.kind else { return WindowEffect::None };
        match e {
            Event::Subscribe { event_key, .. } => {
                let key = event_key.as_deref().unwrap_or("");
                if key.starts_with("qrscene_") {
                    WindowEffect::Open(Trigger::Scan)
                } else if key.starts_with("last_trade_no_") {
                    WindowEffect::Follow(Trigger::Payment)
                } else {
                    WindowEffect::Open(Trigger::Subscribe)
                }
            }
            Event::Scan { .. } => WindowEffect::Open(Trigger::Scan),
            Event::Click { .. } | Event::ScancodePush { .. } | Event::ScancodeWaitmsg { .. } => {
                WindowEffect::Open(Trigger::Menu)
            }
            Event::UserPayFromPayCell { .. } => WindowEffect::Open(Trigger::Payment),
            Event::Unsubscribe => WindowEffect::CloseAll,
            _ => WindowEffect::None,
        }
    }

    /// The facts rules match on (interface §4, §6.7).
    pub fn rule_input(&self) -> RuleInput {
        let mut input = RuleInput {
            from: self.from.clone(),
            msg_type: self.msg_type.clone(),
            event: self.event().map(str::to_string),
            event_key: self.event_key(),
            ..RuleInput::default()
        };
        match &self.kind {
            PushKind::Text { content, bizmsgmenuid, .. } => {
                input.text = Some(content.clone());
                input.menu_choice = bizmsgmenuid.clone();
            }
            PushKind::Voice { recognition, .. } => input.text = recognition.clone(),
            PushKind::Event(Event::Subscribe { event_key: Some(key), .. }) => {
                if let Some(scene) = key.strip_prefix("qrscene_") {
                    input.scene = Some(scene.to_string());
                } else if let Some(trans) = key.strip_prefix("last_trade_no_") {
                    input.vars.push(("trans_id".into(), trans.to_string()));
                }
            }
            PushKind::Event(Event::Scan { event_key, .. }) if !event_key.is_empty() => {
                input.scene = Some(event_key.clone());
            }
            PushKind::Event(Event::UserPayFromPayCell { trans_id, fee, .. }) => {
                if let Some(fee) = fee {
                    input.vars.push(("amount".into(), fee.to_string()));
                }
                input.vars.push(("trans_id".into(), trans_id.clone()));
            }
            _ => {}
        }
        input
    }
}

/// Decodes a push body (protocol §3). Refuses empty bodies, invalid UTF-8, DOCTYPE/ENTITY
/// declarations, unknown entities and a missing ToUserName/FromUserName/CreateTime/MsgType.
pub fn parse(xml: &[u8]) -> Result<Push, DecodeError> {
    let text = std::str::from_utf8(xml).map_err(|_| DecodeError::NotUtf8)?;
    if text.trim().is_empty() {
        return Err(DecodeError::Empty);
    }
    check_well_formed(text)?;

    // Pass one: the header says which concrete struct to decode.
    let h: RawHeader = de(text)?;
    let to = required("ToUserName", h.to)?;
    let from = required("FromUserName", h.from)?;
    let create_time =
        num("CreateTime", &h.create_time)?.ok_or(DecodeError::Missing("CreateTime"))?;
    let msg_type = required("MsgType", h.msg_type)?;
    let event = opt(h.event);

    // Pass two: the same text into the struct for that kind.
    let kind = match (msg_type.as_str(), event.as_deref()) {
        ("text", _) => {
            let r: RawText = de(text)?;
            PushKind::Text {
                content: s(r.content),
                msg_id: num("MsgId", &r.msg_id)?,
                bizmsgmenuid: opt(r.bizmsgmenuid),
            }
        }
        ("image", _) => {
            let r: RawImage = de(text)?;
            PushKind::Image {
                pic_url: s(r.pic_url),
                media_id: s(r.media_id),
                msg_id: num("MsgId", &r.msg_id)?,
            }
        }
        ("voice", _) => {
            let r: RawVoice = de(text)?;
            PushKind::Voice {
                media_id: s(r.media_id),
                format: s(r.format),
                recognition: opt(r.recognition),
                msg_id: num("MsgId", &r.msg_id)?,
            }
        }
        ("video" | "shortvideo", _) => {
            let r: RawVideo = de(text)?;
            let (media_id, thumb_media_id) = (s(r.media_id), s(r.thumb_media_id));
            let msg_id = num("MsgId", &r.msg_id)?;
            if msg_type == "video" {
                PushKind::Video { media_id, thumb_media_id, msg_id }
            } else {
                PushKind::ShortVideo { media_id, thumb_media_id, msg_id }
            }
        }
        ("location", _) => {
            let r: RawLocation = de(text)?;
            PushKind::Location {
                latitude: num("Location_X", &r.x)?,
                longitude: num("Location_Y", &r.y)?,
                scale: num("Scale", &r.scale)?,
                label: s(r.label),
                msg_id: num("MsgId", &r.msg_id)?,
            }
        }
        ("link", _) => {
            let r: RawLink = de(text)?;
            PushKind::Link {
                title: s(r.title),
                description: s(r.description),
                url: s(r.url),
                msg_id: num("MsgId", &r.msg_id)?,
            }
        }
        ("event", Some(name)) => match decode_event(name, text)? {
            Some(e) => PushKind::Event(e),
            None => unknown(&msg_type, event.clone(), text),
        },
        _ => unknown(&msg_type, event.clone(), text),
    };
    Ok(Push { to, from, create_time, msg_type, kind })
}

fn unknown(msg_type: &str, event: Option<String>, text: &str) -> PushKind {
    PushKind::Unknown { msg_type: msg_type.to_string(), event, raw: text.to_string() }
}

/// Pass two for events; `None` for an event this version does not model.
fn decode_event(name: &str, text: &str) -> Result<Option<Event>, DecodeError> {
    let keyed = || de::<RawKeyed>(text);
    Ok(Some(match name {
        "subscribe" => {
            let r = keyed()?;
            Event::Subscribe { event_key: opt(r.event_key), ticket: opt(r.ticket) }
        }
        "unsubscribe" => Event::Unsubscribe,
        "SCAN" => {
            let r = keyed()?;
            Event::Scan { event_key: s(r.event_key), ticket: opt(r.ticket) }
        }
        "CLICK" => Event::Click { event_key: s(keyed()?.event_key) },
        "VIEW" => {
            let r = keyed()?;
            Event::View { event_key: s(r.event_key), menu_id: opt(r.menu_id) }
        }
        "view_miniprogram" => {
            let r = keyed()?;
            Event::ViewMiniprogram { event_key: s(r.event_key), menu_id: opt(r.menu_id) }
        }
        "LOCATION" => {
            let r: RawLocationEvent = de(text)?;
            Event::Location {
                latitude: num("Latitude", &r.latitude)?,
                longitude: num("Longitude", &r.longitude)?,
                precision: num("Precision", &r.precision)?,
            }
        }
        "scancode_push" | "scancode_waitmsg" => {
            let r: RawScanCode = de(text)?;
            let info = r.info.unwrap_or_default();
            let scan =
                ScanCodeInfo { scan_type: s(info.scan_type), scan_result: s(info.scan_result) };
            let event_key = s(r.event_key);
            if name == "scancode_push" {
                Event::ScancodePush { event_key, scan }
            } else {
                Event::ScancodeWaitmsg { event_key, scan }
            }
        }
        "pic_sysphoto" | "pic_photo_or_album" | "pic_weixin" => {
            let r: RawPics = de(text)?;
            let info = r.info.unwrap_or_default();
            let pics = SendPicsInfo {
                count: num("Count", &info.count)?,
                pic_md5_sums: info
                    .list
                    .unwrap_or_default()
                    .items
                    .into_iter()
                    .filter_map(|i| opt(i.md5))
                    .collect(),
            };
            let event_key = s(r.event_key);
            match name {
                "pic_sysphoto" => Event::PicSysphoto { event_key, pics },
                "pic_photo_or_album" => Event::PicPhotoOrAlbum { event_key, pics },
                _ => Event::PicWeixin { event_key, pics },
            }
        }
        "location_select" => {
            let r: RawLocationSelect = de(text)?;
            let i = r.info.unwrap_or_default();
            Event::LocationSelect {
                event_key: s(r.event_key),
                location: SendLocationInfo {
                    latitude: num("Location_X", &i.x)?,
                    longitude: num("Location_Y", &i.y)?,
                    scale: num("Scale", &i.scale)?,
                    label: s(i.label),
                    poiname: s(i.poiname),
                },
            }
        }
        "TEMPLATESENDJOBFINISH" => {
            let r: RawJobFinish = de(text)?;
            Event::TemplateSendJobFinish { msg_id: num("MsgID", &r.msg_id)?, status: s(r.status) }
        }
        "MASSSENDJOBFINISH" => {
            let r: RawJobFinish = de(text)?;
            Event::MassSendJobFinish {
                msg_id: num("MsgID", &r.msg_id)?,
                status: s(r.status),
                total_count: num("TotalCount", &r.total_count)?,
                filter_count: num("FilterCount", &r.filter_count)?,
                sent_count: num("SentCount", &r.sent_count)?,
                error_count: num("ErrorCount", &r.error_count)?,
            }
        }
        "kf_create_session" | "kf_close_session" | "kf_switch_session" => {
            let r: RawKf = de(text)?;
            match name {
                "kf_create_session" => Event::KfCreateSession { kf_account: s(r.kf_account) },
                "kf_close_session" => Event::KfCloseSession { kf_account: s(r.kf_account) },
                _ => Event::KfSwitchSession {
                    from_kf_account: s(r.from_kf_account),
                    to_kf_account: s(r.to_kf_account),
                },
            }
        }
        "user_pay_from_pay_cell" => {
            let r: RawPayCell = de(text)?;
            Event::UserPayFromPayCell {
                card_id: s(r.card_id),
                user_card_code: s(r.user_card_code),
                trans_id: s(r.trans_id),
                location_id: opt(r.location_id),
                fee: num("Fee", &r.fee)?,
                original_fee: num("OriginalFee", &r.original_fee)?,
            }
        }
        "merchant_order" => {
            let r: RawMerchantOrder = de(text)?;
            Event::MerchantOrder {
                order_id: s(r.order_id),
                order_status: num("OrderStatus", &r.order_status)?,
                product_id: s(r.product_id),
                sku_info: s(r.sku_info),
            }
        }
        _ => return Ok(None),
    }))
}

/// The hardening pass, shared with the outer body of encrypted pushes: one root element, no DOCTYPE (and so no ENTITY declarations), no entity
/// references beyond the predefined five and character references, bounded depth.
pub fn check_well_formed(text: &str) -> Result<(), DecodeError> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut depth = 0usize;
    let mut roots = 0usize;
    loop {
        match reader.read_event().map_err(DecodeError::malformed)? {
            XmlEvent::Start(_) => {
                roots += usize::from(depth == 0);
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
            }
            XmlEvent::Empty(_) => roots += usize::from(depth == 0),
            XmlEvent::End(_) => depth = depth.saturating_sub(1),
            XmlEvent::DocType(_) => return Err(DecodeError::Doctype),
            XmlEvent::GeneralRef(r) => {
                if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(_)) => {}
                        _ => return Err(DecodeError::malformed("invalid character reference")),
                    }
                } else {
                    let name = r.decode().map_err(DecodeError::malformed)?;
                    if !matches!(&*name, "lt" | "gt" | "amp" | "apos" | "quot") {
                        return Err(DecodeError::Entity(name.chars().take(32).collect()));
                    }
                }
            }
            XmlEvent::Text(t) if depth == 0 && !t.iter().all(u8::is_ascii_whitespace) => {
                return Err(DecodeError::malformed("text outside the root element"));
            }
            XmlEvent::CData(_) if depth == 0 => {
                return Err(DecodeError::malformed("CDATA outside the root element"));
            }
            XmlEvent::Eof => break,
            _ => {}
        }
    }
    match (roots, depth) {
        (1, 0) => Ok(()),
        (0, _) => Err(DecodeError::malformed("no root element")),
        (_, 0) => Err(DecodeError::malformed("more than one root element")),
        _ => Err(DecodeError::malformed("unclosed element")),
    }
}

fn de<T: DeserializeOwned>(text: &str) -> Result<T, DecodeError> {
    quick_xml::de::from_str(text).map_err(DecodeError::malformed)
}

/// Trimmed text; absent counts as empty.
fn s(v: Option<String>) -> String {
    match v {
        Some(v) if v.trim().len() == v.len() => v,
        Some(v) => v.trim().to_string(),
        None => String::new(),
    }
}

/// Trimmed text; absent or empty is `None`.
fn opt(v: Option<String>) -> Option<String> {
    Some(s(v)).filter(|v| !v.is_empty())
}

fn required(field: &'static str, v: Option<String>) -> Result<String, DecodeError> {
    opt(v).ok_or(DecodeError::Missing(field))
}

/// A number that may arrive bare or in CDATA, with whitespace; absent or empty is `None`.
fn num<T: FromStr>(field: &'static str, v: &Option<String>) -> Result<Option<T>, DecodeError> {
    let Some(v) = v.as_deref().map(str::trim).filter(|v| !v.is_empty()) else { return Ok(None) };
    v.parse()
        .map(Some)
        .map_err(|_| DecodeError::BadNumber { field, value: v.chars().take(24).collect() })
}

/// `EventKey` and `MsgId` of an unknown kind, for `dedupe_key` and `rule_input`.
struct UnknownExtras {
    event_key: Option<String>,
    msg_id: Option<u64>,
}

fn unknown_extras(raw: &str) -> UnknownExtras {
    #[derive(Deserialize)]
    struct Raw {
        #[serde(rename = "EventKey")]
        event_key: Option<String>,
        #[serde(rename = "MsgId")]
        msg_id: Option<String>,
    }
    match de::<Raw>(raw) {
        Ok(r) => UnknownExtras {
            event_key: opt(r.event_key),
            msg_id: num("MsgId", &r.msg_id).ok().flatten(),
        },
        Err(_) => UnknownExtras { event_key: None, msg_id: None },
    }
}

// --- The raw shapes, one per kind. Every field is an optional string: the typed values are
// --- built above, where a bad number can be reported by element name.

#[derive(Deserialize)]
struct RawHeader {
    #[serde(rename = "ToUserName")]
    to: Option<String>,
    #[serde(rename = "FromUserName")]
    from: Option<String>,
    #[serde(rename = "CreateTime")]
    create_time: Option<String>,
    #[serde(rename = "MsgType")]
    msg_type: Option<String>,
    #[serde(rename = "Event")]
    event: Option<String>,
}

#[derive(Deserialize)]
struct RawText {
    #[serde(rename = "Content")]
    content: Option<String>,
    #[serde(rename = "MsgId")]
    msg_id: Option<String>,
    bizmsgmenuid: Option<String>,
}

#[derive(Deserialize)]
struct RawImage {
    #[serde(rename = "PicUrl")]
    pic_url: Option<String>,
    #[serde(rename = "MediaId")]
    media_id: Option<String>,
    #[serde(rename = "MsgId")]
    msg_id: Option<String>,
}

#[derive(Deserialize)]
struct RawVoice {
    #[serde(rename = "MediaId")]
    media_id: Option<String>,
    #[serde(rename = "Format")]
    format: Option<String>,
    #[serde(rename = "Recognition")]
    recognition: Option<String>,
    #[serde(rename = "MsgId")]
    msg_id: Option<String>,
}

#[derive(Deserialize)]
struct RawVideo {
    #[serde(rename = "MediaId")]
    media_id: Option<String>,
    #[serde(rename = "ThumbMediaId")]
    thumb_media_id: Option<String>,
    #[serde(rename = "MsgId")]
    msg_id: Option<String>,
}

#[derive(Deserialize)]
struct RawLocation {
    #[serde(rename = "Location_X")]
    x: Option<String>,
    #[serde(rename = "Location_Y")]
    y: Option<String>,
    #[serde(rename = "Scale")]
    scale: Option<String>,
    #[serde(rename = "Label")]
    label: Option<String>,
    #[serde(rename = "MsgId")]
    msg_id: Option<String>,
}

#[derive(Deserialize)]
struct RawLink {
    #[serde(rename = "Title")]
    title: Option<String>,
    #[serde(rename = "Description")]
    description: Option<String>,
    #[serde(rename = "Url")]
    url: Option<String>,
    #[serde(rename = "MsgId")]
    msg_id: Option<String>,
}

/// subscribe, SCAN, CLICK, VIEW, view_miniprogram.
#[derive(Deserialize)]
struct RawKeyed {
    #[serde(rename = "EventKey")]
    event_key: Option<String>,
    #[serde(rename = "Ticket")]
    ticket: Option<String>,
    #[serde(rename = "MenuId")]
    menu_id: Option<String>,
}

#[derive(Deserialize)]
struct RawLocationEvent {
    #[serde(rename = "Latitude")]
    latitude: Option<String>,
    #[serde(rename = "Longitude")]
    longitude: Option<String>,
    #[serde(rename = "Precision")]
    precision: Option<String>,
}

#[derive(Deserialize)]
struct RawScanCode {
    #[serde(rename = "EventKey")]
    event_key: Option<String>,
    #[serde(rename = "ScanCodeInfo")]
    info: Option<RawScanCodeInfo>,
}

#[derive(Deserialize, Default)]
struct RawScanCodeInfo {
    #[serde(rename = "ScanType")]
    scan_type: Option<String>,
    #[serde(rename = "ScanResult")]
    scan_result: Option<String>,
}

#[derive(Deserialize)]
struct RawPics {
    #[serde(rename = "EventKey")]
    event_key: Option<String>,
    #[serde(rename = "SendPicsInfo")]
    info: Option<RawPicsInfo>,
}

#[derive(Deserialize, Default)]
struct RawPicsInfo {
    #[serde(rename = "Count")]
    count: Option<String>,
    #[serde(rename = "PicList")]
    list: Option<RawPicList>,
}

#[derive(Deserialize, Default)]
struct RawPicList {
    #[serde(rename = "item", default)]
    items: Vec<RawPicItem>,
}

#[derive(Deserialize)]
struct RawPicItem {
    #[serde(rename = "PicMd5Sum")]
    md5: Option<String>,
}

#[derive(Deserialize)]
struct RawLocationSelect {
    #[serde(rename = "EventKey")]
    event_key: Option<String>,
    #[serde(rename = "SendLocationInfo")]
    info: Option<RawLocationInfo>,
}

#[derive(Deserialize, Default)]
struct RawLocationInfo {
    #[serde(rename = "Location_X")]
    x: Option<String>,
    #[serde(rename = "Location_Y")]
    y: Option<String>,
    #[serde(rename = "Scale")]
    scale: Option<String>,
    #[serde(rename = "Label")]
    label: Option<String>,
    #[serde(rename = "Poiname")]
    poiname: Option<String>,
}

#[derive(Deserialize)]
struct RawJobFinish {
    #[serde(rename = "MsgID")]
    msg_id: Option<String>,
    #[serde(rename = "Status")]
    status: Option<String>,
    #[serde(rename = "TotalCount")]
    total_count: Option<String>,
    #[serde(rename = "FilterCount")]
    filter_count: Option<String>,
    #[serde(rename = "SentCount")]
    sent_count: Option<String>,
    #[serde(rename = "ErrorCount")]
    error_count: Option<String>,
}

#[derive(Deserialize)]
struct RawKf {
    #[serde(rename = "KfAccount")]
    kf_account: Option<String>,
    #[serde(rename = "FromKfAccount")]
    from_kf_account: Option<String>,
    #[serde(rename = "ToKfAccount")]
    to_kf_account: Option<String>,
}

#[derive(Deserialize)]
struct RawPayCell {
    #[serde(rename = "CardId")]
    card_id: Option<String>,
    #[serde(rename = "UserCardCode")]
    user_card_code: Option<String>,
    #[serde(rename = "TransId")]
    trans_id: Option<String>,
    #[serde(rename = "LocationId")]
    location_id: Option<String>,
    #[serde(rename = "Fee")]
    fee: Option<String>,
    #[serde(rename = "OriginalFee")]
    original_fee: Option<String>,
}

#[derive(Deserialize)]
struct RawMerchantOrder {
    #[serde(rename = "OrderId")]
    order_id: Option<String>,
    #[serde(rename = "OrderStatus")]
    order_status: Option<String>,
    #[serde(rename = "ProductId")]
    product_id: Option<String>,
    #[serde(rename = "SkuInfo")]
    sku_info: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! fixture {
        ($name:literal) => {
            include_str!(concat!("../../tests/fixtures/wechat/pushes/", $name, ".xml"))
        };
    }

    const ACCOUNT: &str = "gh_4d00ed8d6399";
    const USER: &str = "oMgHVjngRipVsoxg6TuX3vz6glDg";

    fn p(xml: &str) -> Push {
        parse(xml.as_bytes()).unwrap_or_else(|e| panic!("{e}: {xml}"))
    }

    fn event(xml: &str) -> Event {
        match p(xml).kind {
            PushKind::Event(e) => e,
            other => panic!("not an event: {other:?}"),
        }
    }

    fn open(t: Trigger) -> WindowEffect {
        WindowEffect::Open(t)
    }

    #[test]
    fn f01_text() {
        let push = p(fixture!("F01-text"));
        assert_eq!(push.to, ACCOUNT);
        assert_eq!(push.from, USER);
        assert_eq!(push.create_time, 1700000001);
        assert_eq!(push.msg_type, "text");
        assert_eq!(
            push.kind,
            PushKind::Text {
                content: "你好，我想查询订单 42".into(),
                msg_id: Some(24345678901234567),
                bizmsgmenuid: None
            }
        );
        assert_eq!(push.window_effect(), open(Trigger::Message));
        assert!(push.is_user_message());
        assert_eq!(
            push.dedupe_key().as_str(),
            format!("m:{ACCOUNT}:{USER}:{}:24345678901234567", push.create_time)
        );
        let input = push.rule_input();
        assert_eq!(input.text.as_deref(), Some("你好，我想查询订单 42"));
        assert_eq!(input.msg_type, "text");
        assert_eq!(input.from, USER);
        assert_eq!(input.event, None);
    }

    #[test]
    fn f02_image() {
        let push = p(fixture!("F02-image"));
        assert_eq!(
            push.kind,
            PushKind::Image {
                pic_url: "http://mmbiz.qpic.cn/mmbiz_jpg/example/0".into(),
                media_id: "MEDIA_ID_IMAGE_1".into(),
                msg_id: Some(24345678901234568)
            }
        );
        assert_eq!(push.window_effect(), open(Trigger::Message));
        assert_eq!(push.rule_input().text, None);
    }

    #[test]
    fn f03_voice_with_recognition_after_msgid() {
        let push = p(fixture!("F03-voice-with-recognition"));
        assert_eq!(
            push.kind,
            PushKind::Voice {
                media_id: "MEDIA_ID_VOICE_1".into(),
                format: "amr".into(),
                recognition: Some("腾讯微信团队".into()),
                msg_id: Some(7250021412600020992)
            }
        );
        assert_eq!(push.window_effect(), open(Trigger::Message));
        assert_eq!(push.rule_input().text.as_deref(), Some("腾讯微信团队"));
        assert_eq!(
            push.dedupe_key().as_str(),
            format!("m:{ACCOUNT}:{USER}:{}:7250021412600020992", push.create_time)
        );
    }

    #[test]
    fn f04_video_and_f05_shortvideo() {
        let v = p(fixture!("F04-video"));
        assert_eq!(
            v.kind,
            PushKind::Video {
                media_id: "MEDIA_ID_VIDEO_1".into(),
                thumb_media_id: "THUMB_MEDIA_ID_1".into(),
                msg_id: Some(24345678901234570)
            }
        );
        let s = p(fixture!("F05-shortvideo"));
        assert_eq!(
            s.kind,
            PushKind::ShortVideo {
                media_id: "MEDIA_ID_SHORTVIDEO_1".into(),
                thumb_media_id: "THUMB_MEDIA_ID_2".into(),
                msg_id: Some(24345678901234571)
            }
        );
        assert_eq!(v.window_effect(), open(Trigger::Message));
        assert_eq!(s.window_effect(), open(Trigger::Message));
    }

    #[test]
    fn f06_location_with_bare_numbers() {
        let push = p(fixture!("F06-location"));
        assert_eq!(
            push.kind,
            PushKind::Location {
                latitude: Some(23.134521),
                longitude: Some(113.358803),
                scale: Some(20.0),
                label: "广州市海珠区".into(),
                msg_id: Some(24345678901234572)
            }
        );
        assert_eq!(push.window_effect(), open(Trigger::Message));
    }

    #[test]
    fn f07_link() {
        let push = p(fixture!("F07-link"));
        assert_eq!(
            push.kind,
            PushKind::Link {
                title: "公众平台官网链接".into(),
                description: "公众平台官网链接".into(),
                url: "https://mp.weixin.qq.com/".into(),
                msg_id: Some(24345678901234573)
            }
        );
        assert_eq!(push.window_effect(), open(Trigger::Message));
    }

    #[test]
    fn f08_plain_subscribe() {
        let push = p(fixture!("F08-subscribe"));
        assert_eq!(push.kind, PushKind::Event(Event::Subscribe { event_key: None, ticket: None }));
        assert_eq!(push.window_effect(), open(Trigger::Subscribe));
        assert!(!push.is_user_message());
        assert_eq!(push.dedupe_key().as_str(), format!("e:{ACCOUNT}:{USER}:1700000008:subscribe:"));
        let input = push.rule_input();
        assert_eq!(input.event.as_deref(), Some("subscribe"));
        assert_eq!((input.event_key, input.scene), (None, None));
    }

    #[test]
    fn f09_subscribe_via_qr_is_a_scan() {
        let push = p(fixture!("F09-subscribe-via-parametric-qr-code"));
        let PushKind::Event(Event::Subscribe { event_key, ticket }) = &push.kind else {
            panic!("{push:?}")
        };
        assert_eq!(event_key.as_deref(), Some("qrscene_123123"));
        assert!(ticket.as_deref().is_some_and(|t| t.starts_with("gQH47joAAAAAAAAAASxodHRw")));
        assert_eq!(push.window_effect(), open(Trigger::Scan));
        let input = push.rule_input();
        assert_eq!(input.scene.as_deref(), Some("123123"));
        assert_eq!(input.event_key.as_deref(), Some("qrscene_123123"));
        assert_eq!(
            push.dedupe_key().as_str(),
            format!("e:{ACCOUNT}:{USER}:1700000009:subscribe:qrscene_123123")
        );
    }

    #[test]
    fn f10_unsubscribe_closes_everything() {
        let push = p(fixture!("F10-unsubscribe"));
        assert_eq!(push.kind, PushKind::Event(Event::Unsubscribe));
        assert_eq!(push.window_effect(), WindowEffect::CloseAll);
    }

    #[test]
    fn f11_scan() {
        let push = p(fixture!("F11-scan"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::Scan {
                event_key: "123123".into(),
                ticket: Some("TICKET".into())
            })
        );
        assert_eq!(push.window_effect(), open(Trigger::Scan));
        assert_eq!(push.rule_input().scene.as_deref(), Some("123123"));
        assert_eq!(push.rule_input().event.as_deref(), Some("SCAN"));
    }

    #[test]
    fn f12_location_report_opens_nothing() {
        let push = p(fixture!("F12-location-report"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::Location {
                latitude: Some(23.137466),
                longitude: Some(113.352425),
                precision: Some(119.385040)
            })
        );
        assert_eq!(push.window_effect(), WindowEffect::None);
    }

    #[test]
    fn f13_click_is_a_menu_trigger() {
        let push = p(fixture!("F13-click"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::Click { event_key: "CONTACT_SUPPORT".into() })
        );
        assert_eq!(push.window_effect(), open(Trigger::Menu));
        assert_eq!(push.rule_input().event_key.as_deref(), Some("CONTACT_SUPPORT"));
    }

    #[test]
    fn f14_view_opens_nothing() {
        let push = p(fixture!("F14-view"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::View {
                event_key: "https://example.com/help".into(),
                menu_id: Some("410418124".into())
            })
        );
        assert_eq!(push.window_effect(), WindowEffect::None);
    }

    #[test]
    fn f15_scancode_waitmsg_and_scancode_push() {
        let push = p(fixture!("F15-scancode-waitmsg"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::ScancodeWaitmsg {
                event_key: "rselfmenu_0_0".into(),
                scan: ScanCodeInfo {
                    scan_type: "qrcode".into(),
                    scan_result: "http://weixin.qq.com/r/example".into()
                }
            })
        );
        assert_eq!(push.window_effect(), open(Trigger::Menu));
        let push = p(fixture!("X09-scancode-push"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::ScancodePush {
                event_key: "rselfmenu_0_1".into(),
                scan: ScanCodeInfo {
                    scan_type: "barcode".into(),
                    scan_result: "EAN_13,6901234567892".into()
                }
            })
        );
        assert_eq!(push.window_effect(), open(Trigger::Menu));
    }

    #[test]
    fn f16_pic_events_open_nothing() {
        let e = event(fixture!("F16-pic-photo-or-album"));
        assert_eq!(
            e,
            Event::PicPhotoOrAlbum {
                event_key: "rselfmenu_1_1".into(),
                pics: SendPicsInfo {
                    count: Some(2),
                    pic_md5_sums: vec![
                        "5a75aaca956d97be686719218f275c6b".into(),
                        "1b5f7c23b5bf75682a53e7b6d163e185".into()
                    ]
                }
            }
        );
        let e = event(fixture!("X10-pic-sysphoto"));
        assert_eq!(
            e,
            Event::PicSysphoto {
                event_key: "rselfmenu_1_0".into(),
                pics: SendPicsInfo {
                    count: Some(1),
                    pic_md5_sums: vec!["1b5f7c23b5bf75682a53e7b6d163e185".into()]
                }
            }
        );
        let e = event(fixture!("X11-pic-weixin"));
        assert_eq!(
            e,
            Event::PicWeixin {
                event_key: "rselfmenu_1_2".into(),
                pics: SendPicsInfo { count: Some(0), pic_md5_sums: vec![] }
            }
        );
        for xml in [
            fixture!("F16-pic-photo-or-album"),
            fixture!("X10-pic-sysphoto"),
            fixture!("X11-pic-weixin"),
        ] {
            assert_eq!(p(xml).window_effect(), WindowEffect::None);
        }
    }

    #[test]
    fn f17_location_select() {
        let push = p(fixture!("F17-location-select"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::LocationSelect {
                event_key: "rselfmenu_2_0".into(),
                location: SendLocationInfo {
                    latitude: Some(23.0),
                    longitude: Some(113.0),
                    scale: Some(15.0),
                    label: "广州市海珠区客村艺苑路 106号".into(),
                    poiname: String::new()
                }
            })
        );
        assert_eq!(push.window_effect(), WindowEffect::None);
    }

    #[test]
    fn f18_view_miniprogram() {
        let push = p(fixture!("F18-view-miniprogram"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::ViewMiniprogram {
                event_key: "pages/index/index".into(),
                menu_id: Some("433418371".into())
            })
        );
        assert_eq!(push.window_effect(), WindowEffect::None);
    }

    #[test]
    fn f19_template_job_finish_uses_msgid_capital_id() {
        let push = p(fixture!("F19-templatesendjobfinish"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::TemplateSendJobFinish {
                msg_id: Some(200163836),
                status: "failed:user block".into()
            })
        );
        assert_eq!(push.window_effect(), WindowEffect::None);
        // Not a message: the dedupe key is the event form, not the job id.
        assert_eq!(
            push.dedupe_key().as_str(),
            format!("e:{ACCOUNT}:{USER}:1700000019:TEMPLATESENDJOBFINISH:")
        );
    }

    #[test]
    fn f20_mass_send_job_finish() {
        let push = p(fixture!("F20-masssendjobfinish"));
        assert_eq!(push.from, "mphelper");
        assert_eq!(
            push.kind,
            PushKind::Event(Event::MassSendJobFinish {
                msg_id: Some(1000001625),
                status: "send success".into(),
                total_count: Some(100),
                filter_count: Some(80),
                sent_count: Some(75),
                error_count: Some(5)
            })
        );
        assert_eq!(push.window_effect(), WindowEffect::None);
    }

    #[test]
    fn x01_text_from_a_msgmenu_click() {
        let push = p(fixture!("X01-text-bizmsgmenuid"));
        assert_eq!(
            push.kind,
            PushKind::Text {
                content: "满意".into(),
                msg_id: Some(24345678901234601),
                bizmsgmenuid: Some("101".into())
            }
        );
        assert_eq!(push.rule_input().menu_choice.as_deref(), Some("101"));
        assert_eq!(push.window_effect(), open(Trigger::Message));
    }

    #[test]
    fn x02_x03_x06_kf_session_events() {
        assert_eq!(
            event(fixture!("X02-kf-create-session")),
            Event::KfCreateSession { kf_account: "kf01@gh_account".into() }
        );
        assert_eq!(
            event(fixture!("X03-kf-switch-session")),
            Event::KfSwitchSession {
                from_kf_account: "kf01@gh_account".into(),
                to_kf_account: "kf02@gh_account".into()
            }
        );
        assert_eq!(
            event(fixture!("X06-kf-close-session")),
            Event::KfCloseSession { kf_account: "kf01@gh_account".into() }
        );
        for xml in [
            fixture!("X02-kf-create-session"),
            fixture!("X03-kf-switch-session"),
            fixture!("X06-kf-close-session"),
        ] {
            assert_eq!(p(xml).window_effect(), WindowEffect::None);
        }
    }

    #[test]
    fn x04_user_pay_from_pay_cell() {
        let push = p(fixture!("X04-user-pay-from-pay-cell"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::UserPayFromPayCell {
                card_id: "po2VNuCuRo-8sxxxxxxxxxxx".into(),
                user_card_code: "38050000000".into(),
                trans_id: "10022403432015000000000".into(),
                location_id: Some("291710000".into()),
                fee: Some(10000),
                original_fee: Some(10000)
            })
        );
        assert_eq!(push.window_effect(), open(Trigger::Payment));
        let input = push.rule_input();
        assert_eq!(input.event.as_deref(), Some("user_pay_from_pay_cell"));
        assert_eq!(
            input.vars,
            vec![
                ("amount".to_string(), "10000".to_string()),
                ("trans_id".to_string(), "10022403432015000000000".to_string())
            ]
        );
    }

    /// The outer body of a compatible-mode push decodes as the plaintext it carries; the
    /// Encrypt element is ignored here (the webhook decrypts it).
    #[test]
    fn x05_compatible_mode_body() {
        let push = p(fixture!("X05-compatible-mode"));
        assert_eq!(push, p(fixture!("F19-templatesendjobfinish")));
    }

    #[test]
    fn x07_merchant_order_and_x08_subscribe_after_payment() {
        let push = p(fixture!("X07-merchant-order"));
        assert_eq!(
            push.kind,
            PushKind::Event(Event::MerchantOrder {
                order_id: "13808800001234567".into(),
                order_status: Some(2),
                product_id: "pDF3iY_m2M7EQ5EKKKWd95kAxfNw".into(),
                sku_info: "10001:1000012;10002:100021".into()
            })
        );
        assert_eq!(push.window_effect(), WindowEffect::None);
        let push = p(fixture!("X08-subscribe-after-payment"));
        assert_eq!(push.window_effect(), WindowEffect::Follow(Trigger::Payment));
        assert_eq!(push.rule_input().scene, None);
        assert_eq!(
            push.rule_input().vars,
            vec![("trans_id".to_string(), "4200000123201409030005092168".to_string())]
        );
    }

    #[test]
    fn x12_whitespace_cdata_numbers_order_and_unknown_elements() {
        let push = p(fixture!("X12-whitespace-and-order"));
        assert_eq!(push.to, ACCOUNT);
        assert_eq!(push.from, USER);
        assert_eq!(push.create_time, 1700000112);
        assert_eq!(push.msg_type, "text");
        assert_eq!(
            push.kind,
            PushKind::Text {
                content: "spaced".into(),
                msg_id: Some(24345678901234612),
                bizmsgmenuid: None
            }
        );
    }

    #[test]
    fn x13_empty_recognition_is_none() {
        let push = p(fixture!("X13-voice-empty-recognition"));
        let PushKind::Voice { recognition, format, .. } = &push.kind else { panic!() };
        assert_eq!((recognition, format.as_str()), (&None, "speex"));
        assert_eq!(push.rule_input().text, None);
    }

    #[test]
    fn x14_x15_unknown_kinds_are_data() {
        let xml = fixture!("X14-unknown-event");
        let push = p(xml);
        assert_eq!(
            push.kind,
            PushKind::Unknown {
                msg_type: "event".into(),
                event: Some("card_pass_check".into()),
                raw: xml.into()
            }
        );
        assert_eq!(push.window_effect(), WindowEffect::None);
        assert!(!push.is_user_message());
        assert_eq!(push.event(), Some("card_pass_check"));
        assert_eq!(
            push.dedupe_key().as_str(),
            format!("e:{ACCOUNT}:{USER}:1700000114:card_pass_check:")
        );
        assert_eq!(push.rule_input().event.as_deref(), Some("card_pass_check"));

        let push = p(fixture!("X15-unknown-msgtype"));
        assert!(
            matches!(&push.kind, PushKind::Unknown { msg_type, event: None, .. } if msg_type == "miniprogrampage")
        );
        assert_eq!(push.window_effect(), WindowEffect::None);
        assert_eq!(
            push.dedupe_key().as_str(),
            format!("m:{ACCOUNT}:{USER}:{}:24345678901234615", push.create_time)
        );
    }

    #[test]
    fn event_names_round_trip() {
        // Every modelled event decodes back to the name it reports.
        let names = MODELLED_EVENTS;
        for name in names {
            let xml = format!(
                "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>\
                 <CreateTime>1</CreateTime><MsgType>event</MsgType><Event>{name}</Event></xml>"
            );
            assert_eq!(event(&xml).name(), name);
        }
        // Case matters: "click" is not CLICK.
        let xml = "<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName>\
                   <CreateTime>1</CreateTime><MsgType>event</MsgType><Event>click</Event></xml>";
        assert!(matches!(p(xml).kind, PushKind::Unknown { .. }));
        assert_eq!(p(xml).window_effect(), WindowEffect::None);
    }

    #[test]
    fn refusals() {
        let ok = fixture!("F01-text");
        assert_eq!(parse(b""), Err(DecodeError::Empty));
        assert_eq!(parse(b"  \n"), Err(DecodeError::Empty));
        assert_eq!(parse(b"<xml>\xff\xfe</xml>"), Err(DecodeError::NotUtf8));
        let doctype = format!("<!DOCTYPE xml [<!ENTITY x \"boom\">]>{ok}");
        assert_eq!(parse(doctype.as_bytes()), Err(DecodeError::Doctype));
        let xxe = ok.replace("<![CDATA[你好，我想查询订单 42]]>", "&xxe;");
        assert_eq!(parse(xxe.as_bytes()), Err(DecodeError::Entity("xxe".into())));
        // Inside CDATA an entity reference is just text.
        let literal = ok.replace("你好", "&xxe;");
        assert_eq!(p(&literal).rule_input().text.as_deref(), Some("&xxe;，我想查询订单 42"));
        let amp = ok.replace("<MsgType><![CDATA[text]]></MsgType>", "<MsgType>te&#120;t</MsgType>");
        assert_eq!(p(&amp).msg_type, "text");
        for (field, xml) in [
            ("ToUserName", ok.replace("<ToUserName><![CDATA[gh_4d00ed8d6399]]></ToUserName>", "")),
            ("FromUserName", ok.replace(USER, "")),
            ("CreateTime", ok.replace("<CreateTime>1700000001</CreateTime>", "")),
            ("MsgType", ok.replace("<MsgType><![CDATA[text]]></MsgType>", "")),
        ] {
            assert_eq!(parse(xml.as_bytes()), Err(DecodeError::Missing(field)), "{xml}");
        }
        let bad_time = ok.replace("1700000001", "soon");
        assert_eq!(
            parse(bad_time.as_bytes()),
            Err(DecodeError::BadNumber { field: "CreateTime", value: "soon".into() })
        );
        let bad_id = ok.replace("24345678901234567", "x1");
        assert!(matches!(
            parse(bad_id.as_bytes()),
            Err(DecodeError::BadNumber { field: "MsgId", .. })
        ));
        for bad in ["<xml>", "<xml></yml>", "success", "<a/><b/>", "<xml><x></xml>", "<xml/>junk"] {
            let e = parse(bad.as_bytes()).unwrap_err();
            assert!(
                matches!(e, DecodeError::Malformed(_) | DecodeError::Missing(_)),
                "{bad}: {e:?}"
            );
        }
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(40), "</a>".repeat(40));
        assert_eq!(parse(deep.as_bytes()), Err(DecodeError::TooDeep));
        assert_eq!(DecodeError::Doctype.reason(), "doctype");
    }
}
