//! Decoding a push in one pass over the XML (protocol §3, §9).
//!
//! One quick-xml event loop does the hardening (one root element, no DOCTYPE and so no ENTITY
//! declaration, no entity reference beyond the five predefined and character references,
//! bounded depth) and collects the text of every element a push kind reads, by its path under
//! the root (`Content`, `ScanCodeInfo/ScanType`, `SendPicsInfo/PicList/item/PicMd5Sum`); the
//! push is then built from those fields. Texts borrow from the body unless an entity or a
//! CDATA section splits them. The serde decoder it replaced read the body three times (scan,
//! header, kind); it is kept as the tests' oracle (`two_pass`).
//!
//! Field rules, as the serde decoder had them: an element the kind reads may appear once (a
//! second one is malformed), must hold text only, and may be empty; text and CDATA pieces of
//! one element are joined; unknown elements and attributes are ignored.

use std::borrow::Cow;
use std::str::FromStr;

use quick_xml::events::Event as XmlEvent;

use super::{
    DecodeError, Event, MAX_DEPTH, Push, PushKind, ScanCodeInfo, SendLocationInfo, SendPicsInfo,
};

/// Every element path a push kind reads (children of the root; nested ones with their
/// parents). An element not listed is skipped, and so is everything inside it.
const PATHS: &[&str] = &[
    "ToUserName",
    "FromUserName",
    "CreateTime",
    "MsgType",
    "Event",
    "Content",
    "MsgId",
    "bizmsgmenuid",
    "PicUrl",
    "MediaId",
    "Format",
    "Recognition",
    "ThumbMediaId",
    "Location_X",
    "Location_Y",
    "Scale",
    "Label",
    "Title",
    "Description",
    "Url",
    "EventKey",
    "Ticket",
    "MenuId",
    "Latitude",
    "Longitude",
    "Precision",
    "ScanCodeInfo",
    "ScanCodeInfo/ScanType",
    "ScanCodeInfo/ScanResult",
    "SendPicsInfo",
    "SendPicsInfo/Count",
    "SendPicsInfo/PicList",
    "SendPicsInfo/PicList/item",
    "SendPicsInfo/PicList/item/PicMd5Sum",
    "SendLocationInfo",
    "SendLocationInfo/Location_X",
    "SendLocationInfo/Location_Y",
    "SendLocationInfo/Scale",
    "SendLocationInfo/Label",
    "SendLocationInfo/Poiname",
    "MsgID",
    "Status",
    "TotalCount",
    "FilterCount",
    "SentCount",
    "ErrorCount",
    "KfAccount",
    "FromKfAccount",
    "ToKfAccount",
    "CardId",
    "UserCardCode",
    "TransId",
    "LocationId",
    "Fee",
    "OriginalFee",
    "OrderId",
    "OrderStatus",
    "ProductId",
    "SkuInfo",
];

/// The path of child `name` under `parent` (None: under the root), if a kind reads it.
fn child_path(parent: Option<&'static str>, name: &[u8]) -> Option<&'static str> {
    PATHS.iter().copied().find(|p| match parent {
        None => p.as_bytes() == name,
        Some(parent) => p
            .strip_prefix(parent)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| rest.as_bytes() == name),
    })
}

/// One element's text as read.
struct Field<'a> {
    path: &'static str,
    text: Cow<'a, str>,
    /// It held elements of its own (a container, or a text field that must not have any).
    children: bool,
    /// Which `item` of `SendPicsInfo/PicList` it belongs to (0 elsewhere).
    item: usize,
}

/// The fields of one push, in document order.
struct Fields<'a>(Vec<Field<'a>>);

impl<'a> Fields<'a> {
    /// The text of `path`: None when absent; malformed when it appears twice or holds elements.
    fn get(&self, path: &'static str) -> Result<Option<&str>, DecodeError> {
        let mut found = None;
        for f in self.0.iter().filter(|f| f.path == path) {
            if found.is_some() {
                return Err(DecodeError::malformed(format!("duplicate field `{path}`")));
            }
            if f.children {
                return Err(DecodeError::malformed(format!("<{path}> holds elements, not text")));
            }
            found = Some(f.text.as_ref());
        }
        Ok(found)
    }

    /// Whether the container `path` is present (once).
    fn has(&self, path: &'static str) -> Result<bool, DecodeError> {
        match self.0.iter().filter(|f| f.path == path).count() {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::malformed(format!("duplicate field `{path}`"))),
        }
    }

    /// Trimmed text; absent counts as empty.
    fn s(&self, path: &'static str) -> Result<String, DecodeError> {
        Ok(self.get(path)?.map(|v| v.trim().to_string()).unwrap_or_default())
    }

    /// Trimmed text; absent or empty is `None`.
    fn opt(&self, path: &'static str) -> Result<Option<String>, DecodeError> {
        Ok(self.get(path)?.map(str::trim).filter(|v| !v.is_empty()).map(str::to_string))
    }

    fn required(&self, path: &'static str) -> Result<String, DecodeError> {
        self.opt(path)?.ok_or(DecodeError::Missing(path))
    }

    /// A number that may arrive bare or in CDATA, with whitespace; absent or empty is `None`.
    /// The error names the element as WeChat spells it (`Location_X`, not its path).
    fn num<T: FromStr>(&self, path: &'static str) -> Result<Option<T>, DecodeError> {
        let Some(v) = self.get(path)?.map(str::trim).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let field = path.rsplit('/').next().unwrap_or(path);
        v.parse()
            .map(Some)
            .map_err(|_| DecodeError::BadNumber { field, value: v.chars().take(24).collect() })
    }
}

/// Reads `text` once: the hardening checks always, and with `collect` the fields a push kind
/// reads.
fn read(text: &str, collect: bool) -> Result<Fields<'_>, DecodeError> {
    let mut reader = quick_xml::Reader::from_str(text);
    let mut fields: Vec<Field<'_>> = Vec::with_capacity(if collect { 12 } else { 0 });
    // The known path of each open element below the root (None: skipped), and for a known
    // one the index of its field.
    let mut open: Vec<Option<(&'static str, usize)>> = Vec::with_capacity(8);
    let mut depth = 0usize;
    let mut roots = 0usize;
    let mut items = 0usize;
    loop {
        let event = reader.read_event().map_err(DecodeError::malformed)?;
        match event {
            XmlEvent::Start(ref e) | XmlEvent::Empty(ref e) => {
                let empty = matches!(event, XmlEvent::Empty(_));
                if depth == 0 {
                    roots += 1;
                } else if collect {
                    // The parent (None: the root) decides whether this element is read.
                    let parent = match open.last() {
                        None => Some(None),
                        Some(Some((p, i))) => {
                            fields[*i].children = true;
                            Some(Some(*p))
                        }
                        Some(None) => None,
                    };
                    let entry = parent.and_then(|p| child_path(p, e.name().as_ref())).map(|path| {
                        if path == "SendPicsInfo/PicList/item" {
                            items += 1;
                        }
                        fields.push(Field {
                            path,
                            text: Cow::Borrowed(""),
                            children: false,
                            item: items,
                        });
                        (path, fields.len() - 1)
                    });
                    if !empty {
                        open.push(entry);
                    }
                }
                if !empty {
                    depth += 1;
                    if depth > MAX_DEPTH {
                        return Err(DecodeError::TooDeep);
                    }
                }
            }
            XmlEvent::End(_) => {
                depth = depth.saturating_sub(1);
                if collect && depth > 0 {
                    open.pop();
                }
            }
            XmlEvent::DocType(_) => return Err(DecodeError::Doctype),
            XmlEvent::GeneralRef(r) => {
                let c = if r.is_char_ref() {
                    match r.resolve_char_ref() {
                        Ok(Some(c)) => c,
                        _ => return Err(DecodeError::malformed("invalid character reference")),
                    }
                } else {
                    let name = r.decode().map_err(DecodeError::malformed)?;
                    match &*name {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(DecodeError::Entity(other.chars().take(32).collect())),
                    }
                };
                if collect && let Some(Some((_, i))) = open.last() {
                    fields[*i].text.to_mut().push(c);
                }
            }
            XmlEvent::Text(t) => {
                if depth == 0 {
                    if !t.iter().all(u8::is_ascii_whitespace) {
                        return Err(DecodeError::malformed("text outside the root element"));
                    }
                } else if collect && let Some(Some((_, i))) = open.last() {
                    let piece = t.decode().map_err(DecodeError::malformed)?;
                    join(&mut fields[*i].text, piece);
                }
            }
            XmlEvent::CData(c) => {
                if depth == 0 {
                    return Err(DecodeError::malformed("CDATA outside the root element"));
                }
                if collect && let Some(Some((_, i))) = open.last() {
                    let piece = c.decode().map_err(DecodeError::malformed)?;
                    join(&mut fields[*i].text, piece);
                }
            }
            XmlEvent::Eof => break,
            _ => {}
        }
    }
    match (roots, depth) {
        (1, 0) => Ok(Fields(fields)),
        (0, _) => Err(DecodeError::malformed("no root element")),
        (_, 0) => Err(DecodeError::malformed("more than one root element")),
        _ => Err(DecodeError::malformed("unclosed element")),
    }
}

/// Adds `piece` to `text`, borrowing while there is one piece.
fn join<'a>(text: &mut Cow<'a, str>, piece: Cow<'a, str>) {
    if text.is_empty() {
        *text = piece;
    } else {
        text.to_mut().push_str(&piece);
    }
}

/// The hardening checks alone, shared with the outer body of encrypted pushes: one root
/// element, no DOCTYPE (and so no ENTITY declarations), no entity references beyond the
/// predefined five and character references, bounded depth.
pub fn check_well_formed(text: &str) -> Result<(), DecodeError> {
    read(text, false).map(drop)
}

/// Decodes a push body (protocol §3). Refuses empty bodies, invalid UTF-8, DOCTYPE/ENTITY
/// declarations, unknown entities and a missing ToUserName/FromUserName/CreateTime/MsgType.
pub fn parse(xml: &[u8]) -> Result<Push, DecodeError> {
    let text = std::str::from_utf8(xml).map_err(|_| DecodeError::NotUtf8)?;
    if text.trim().is_empty() {
        return Err(DecodeError::Empty);
    }
    let f = read(text, true)?;
    let to = f.required("ToUserName")?;
    let from = f.required("FromUserName")?;
    let create_time = f.num("CreateTime")?.ok_or(DecodeError::Missing("CreateTime"))?;
    let msg_type = f.required("MsgType")?;
    let event = f.opt("Event")?;

    let kind = match (msg_type.as_str(), event.as_deref()) {
        ("text", _) => PushKind::Text {
            content: f.s("Content")?,
            msg_id: f.num("MsgId")?,
            bizmsgmenuid: f.opt("bizmsgmenuid")?,
        },
        ("image", _) => PushKind::Image {
            pic_url: f.s("PicUrl")?,
            media_id: f.s("MediaId")?,
            msg_id: f.num("MsgId")?,
        },
        ("voice", _) => PushKind::Voice {
            media_id: f.s("MediaId")?,
            format: f.s("Format")?,
            recognition: f.opt("Recognition")?,
            msg_id: f.num("MsgId")?,
        },
        ("video" | "shortvideo", _) => {
            let (media_id, thumb_media_id) = (f.s("MediaId")?, f.s("ThumbMediaId")?);
            let msg_id = f.num("MsgId")?;
            if msg_type == "video" {
                PushKind::Video { media_id, thumb_media_id, msg_id }
            } else {
                PushKind::ShortVideo { media_id, thumb_media_id, msg_id }
            }
        }
        ("location", _) => PushKind::Location {
            latitude: f.num("Location_X")?,
            longitude: f.num("Location_Y")?,
            scale: f.num("Scale")?,
            label: f.s("Label")?,
            msg_id: f.num("MsgId")?,
        },
        ("link", _) => PushKind::Link {
            title: f.s("Title")?,
            description: f.s("Description")?,
            url: f.s("Url")?,
            msg_id: f.num("MsgId")?,
        },
        ("event", Some(name)) => match decode_event(name, &f)? {
            Some(e) => PushKind::Event(e),
            None => unknown(&msg_type, event.clone(), &f, text),
        },
        _ => unknown(&msg_type, event.clone(), &f, text),
    };
    Ok(Push { to, from, create_time, msg_type, kind })
}

fn unknown(msg_type: &str, event: Option<String>, f: &Fields<'_>, text: &str) -> PushKind {
    PushKind::Unknown {
        msg_type: msg_type.to_string(),
        event,
        event_key: f.opt("EventKey").ok().flatten(),
        msg_id: f.num("MsgId").ok().flatten(),
        raw: text.to_string(),
    }
}

/// An event's fields; `None` for an event this version does not model.
fn decode_event(name: &str, f: &Fields<'_>) -> Result<Option<Event>, DecodeError> {
    Ok(Some(match name {
        "subscribe" => Event::Subscribe { event_key: f.opt("EventKey")?, ticket: f.opt("Ticket")? },
        "unsubscribe" => Event::Unsubscribe,
        "SCAN" => Event::Scan { event_key: f.s("EventKey")?, ticket: f.opt("Ticket")? },
        "CLICK" => Event::Click { event_key: f.s("EventKey")? },
        "VIEW" => Event::View { event_key: f.s("EventKey")?, menu_id: f.opt("MenuId")? },
        "view_miniprogram" => {
            Event::ViewMiniprogram { event_key: f.s("EventKey")?, menu_id: f.opt("MenuId")? }
        }
        "LOCATION" => Event::Location {
            latitude: f.num("Latitude")?,
            longitude: f.num("Longitude")?,
            precision: f.num("Precision")?,
        },
        "scancode_push" | "scancode_waitmsg" => {
            let event_key = f.s("EventKey")?;
            f.has("ScanCodeInfo")?;
            let scan = ScanCodeInfo {
                scan_type: f.s("ScanCodeInfo/ScanType")?,
                scan_result: f.s("ScanCodeInfo/ScanResult")?,
            };
            if name == "scancode_push" {
                Event::ScancodePush { event_key, scan }
            } else {
                Event::ScancodeWaitmsg { event_key, scan }
            }
        }
        "pic_sysphoto" | "pic_photo_or_album" | "pic_weixin" => {
            let event_key = f.s("EventKey")?;
            f.has("SendPicsInfo")?;
            f.has("SendPicsInfo/PicList")?;
            let pics = SendPicsInfo { count: f.num("SendPicsInfo/Count")?, pic_md5_sums: pics(f)? };
            match name {
                "pic_sysphoto" => Event::PicSysphoto { event_key, pics },
                "pic_photo_or_album" => Event::PicPhotoOrAlbum { event_key, pics },
                _ => Event::PicWeixin { event_key, pics },
            }
        }
        "location_select" => {
            let event_key = f.s("EventKey")?;
            f.has("SendLocationInfo")?;
            Event::LocationSelect {
                event_key,
                location: SendLocationInfo {
                    latitude: f.num("SendLocationInfo/Location_X")?,
                    longitude: f.num("SendLocationInfo/Location_Y")?,
                    scale: f.num("SendLocationInfo/Scale")?,
                    label: f.s("SendLocationInfo/Label")?,
                    poiname: f.s("SendLocationInfo/Poiname")?,
                },
            }
        }
        "TEMPLATESENDJOBFINISH" => {
            Event::TemplateSendJobFinish { msg_id: f.num("MsgID")?, status: f.s("Status")? }
        }
        "MASSSENDJOBFINISH" => Event::MassSendJobFinish {
            msg_id: f.num("MsgID")?,
            status: f.s("Status")?,
            total_count: f.num("TotalCount")?,
            filter_count: f.num("FilterCount")?,
            sent_count: f.num("SentCount")?,
            error_count: f.num("ErrorCount")?,
        },
        "kf_create_session" => Event::KfCreateSession { kf_account: f.s("KfAccount")? },
        "kf_close_session" => Event::KfCloseSession { kf_account: f.s("KfAccount")? },
        "kf_switch_session" => Event::KfSwitchSession {
            from_kf_account: f.s("FromKfAccount")?,
            to_kf_account: f.s("ToKfAccount")?,
        },
        "user_pay_from_pay_cell" => Event::UserPayFromPayCell {
            card_id: f.s("CardId")?,
            user_card_code: f.s("UserCardCode")?,
            trans_id: f.s("TransId")?,
            location_id: f.opt("LocationId")?,
            fee: f.num("Fee")?,
            original_fee: f.num("OriginalFee")?,
        },
        "merchant_order" => Event::MerchantOrder {
            order_id: f.s("OrderId")?,
            order_status: f.num("OrderStatus")?,
            product_id: f.s("ProductId")?,
            sku_info: f.s("SkuInfo")?,
        },
        _ => return Ok(None),
    }))
}

/// The non-empty `PicMd5Sum` of each `item`, in order; an item may hold one at most.
fn pics(f: &Fields<'_>) -> Result<Vec<String>, DecodeError> {
    const SUM: &str = "SendPicsInfo/PicList/item/PicMd5Sum";
    let mut out: Vec<String> = Vec::new();
    let mut last_item = 0;
    for field in f.0.iter().filter(|x| x.path == SUM) {
        if field.item == last_item {
            return Err(DecodeError::malformed("duplicate field `PicMd5Sum`"));
        }
        if field.children {
            return Err(DecodeError::malformed("<PicMd5Sum> holds elements, not text"));
        }
        last_item = field.item;
        let v = field.text.trim();
        if !v.is_empty() {
            out.push(v.to_string());
        }
    }
    Ok(out)
}
