//! The decoder of before the one-pass reader ([`super::decode`]): a hardening scan, then serde
//! into the header and again into the concrete shape of its kind (`raw`). Kept for tests only,
//! as the oracle the one-pass decoder is compared with on every fixture and on mutated
//! pushes (`tests::one_pass_agrees_with_two_pass`).

use std::str::FromStr;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::decode::check_well_formed;
use super::raw::*;
use super::{DecodeError, Event, Push, PushKind, ScanCodeInfo, SendLocationInfo, SendPicsInfo};

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
    let extras = unknown_extras(text);
    PushKind::Unknown {
        msg_type: msg_type.to_string(),
        event,
        event_key: extras.event_key,
        msg_id: extras.msg_id,
        raw: text.to_string(),
    }
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
