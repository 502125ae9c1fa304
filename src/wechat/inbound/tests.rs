//! Decoding every fixture of protocol §3 (F01–F20, X01–X15) and the refusals.

use super::*;
use crate::model::{Trigger, WindowEffect};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("../../../tests/fixtures/wechat/pushes/", $name, ".xml"))
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Message));
    assert!(push.is_user_message());
    assert_eq!(
        push.dedupe_key().as_str(),
        format!("m:{}:24345678901234567:{USER}:{ACCOUNT}", push.create_time)
    );
    let input = crate::rules::input::of_push(&push);
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Message));
    assert_eq!(crate::rules::input::of_push(&push).text, None);
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Message));
    assert_eq!(crate::rules::input::of_push(&push).text.as_deref(), Some("腾讯微信团队"));
    assert_eq!(
        push.dedupe_key().as_str(),
        format!("m:{}:7250021412600020992:{USER}:{ACCOUNT}", push.create_time)
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
    assert_eq!(crate::pipeline::intake::window_effect(&v), open(Trigger::Message));
    assert_eq!(crate::pipeline::intake::window_effect(&s), open(Trigger::Message));
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Message));
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Message));
}

#[test]
fn f08_plain_subscribe() {
    let push = p(fixture!("F08-subscribe"));
    assert_eq!(push.kind, PushKind::Event(Event::Subscribe { event_key: None, ticket: None }));
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Subscribe));
    assert!(!push.is_user_message());
    assert_eq!(push.dedupe_key().as_str(), format!("e:1700000008:{USER}:{ACCOUNT}:subscribe:"));
    let input = crate::rules::input::of_push(&push);
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Scan));
    let input = crate::rules::input::of_push(&push);
    assert_eq!(input.scene.as_deref(), Some("123123"));
    assert_eq!(input.event_key.as_deref(), Some("qrscene_123123"));
    assert_eq!(
        push.dedupe_key().as_str(),
        format!("e:1700000009:{USER}:{ACCOUNT}:subscribe:qrscene_123123")
    );
}

#[test]
fn f10_unsubscribe_closes_everything() {
    let push = p(fixture!("F10-unsubscribe"));
    assert_eq!(push.kind, PushKind::Event(Event::Unsubscribe));
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::CloseAll);
}

#[test]
fn f11_scan() {
    let push = p(fixture!("F11-scan"));
    assert_eq!(
        push.kind,
        PushKind::Event(Event::Scan { event_key: "123123".into(), ticket: Some("TICKET".into()) })
    );
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Scan));
    assert_eq!(crate::rules::input::of_push(&push).scene.as_deref(), Some("123123"));
    assert_eq!(crate::rules::input::of_push(&push).event.as_deref(), Some("SCAN"));
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::None);
}

#[test]
fn f13_click_is_a_menu_trigger() {
    let push = p(fixture!("F13-click"));
    assert_eq!(push.kind, PushKind::Event(Event::Click { event_key: "CONTACT_SUPPORT".into() }));
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Menu));
    assert_eq!(crate::rules::input::of_push(&push).event_key.as_deref(), Some("CONTACT_SUPPORT"));
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::None);
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Menu));
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Menu));
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
        assert_eq!(crate::pipeline::intake::window_effect(&p(xml)), WindowEffect::None);
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::None);
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::None);
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::None);
    // Not a message: the dedupe key is the event form, not the job id.
    assert_eq!(
        push.dedupe_key().as_str(),
        format!("e:1700000019:{USER}:{ACCOUNT}:TEMPLATESENDJOBFINISH:")
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::None);
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
    assert_eq!(crate::rules::input::of_push(&push).menu_choice.as_deref(), Some("101"));
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Message));
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
        assert_eq!(crate::pipeline::intake::window_effect(&p(xml)), WindowEffect::None);
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), open(Trigger::Payment));
    // What serve hands the rules: a payment, with the pay cell's amount and TransId.
    let input = crate::rules::input::of_push(&push);
    assert_eq!(input.event.as_deref(), Some("payment"));
    let var = |k: &str| input.vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(var("amount"), Some("10000"));
    assert_eq!(var("amount_yuan"), Some("100.00"));
    assert_eq!(var("transaction_id"), Some("10022403432015000000000"));
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
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::None);
    let push = p(fixture!("X08-subscribe-after-payment"));
    assert_eq!(
        crate::pipeline::intake::window_effect(&push),
        WindowEffect::Follow(Trigger::Payment)
    );
    assert_eq!(crate::rules::input::of_push(&push).scene, None);
    assert_eq!(
        crate::rules::input::of_push(&push).vars,
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
    assert_eq!(crate::rules::input::of_push(&push).text, None);
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
            event_key: None,
            msg_id: None,
            raw: xml.into()
        }
    );
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::None);
    assert!(!push.is_user_message());
    assert_eq!(push.event(), Some("card_pass_check"));
    assert_eq!(
        push.dedupe_key().as_str(),
        format!("e:1700000114:{USER}:{ACCOUNT}:card_pass_check:")
    );
    assert_eq!(crate::rules::input::of_push(&push).event.as_deref(), Some("card_pass_check"));

    let push = p(fixture!("X15-unknown-msgtype"));
    assert!(
        matches!(&push.kind, PushKind::Unknown { msg_type, event: None, .. } if msg_type == "miniprogrampage")
    );
    assert_eq!(crate::pipeline::intake::window_effect(&push), WindowEffect::None);
    assert_eq!(
        push.dedupe_key().as_str(),
        format!("m:{}:24345678901234615:{USER}:{ACCOUNT}", push.create_time)
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
    assert_eq!(crate::pipeline::intake::window_effect(&p(xml)), WindowEffect::None);
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
    assert_eq!(
        crate::rules::input::of_push(&p(&literal)).text.as_deref(),
        Some("&xxe;，我想查询订单 42")
    );
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
    assert!(matches!(parse(bad_id.as_bytes()), Err(DecodeError::BadNumber { field: "MsgId", .. })));
    for bad in ["<xml>", "<xml></yml>", "success", "<a/><b/>", "<xml><x></xml>", "<xml/>junk"] {
        let e = parse(bad.as_bytes()).unwrap_err();
        assert!(matches!(e, DecodeError::Malformed(_) | DecodeError::Missing(_)), "{bad}: {e:?}");
    }
    let deep = format!("<xml>{}{}</xml>", "<a>".repeat(40), "</a>".repeat(40));
    assert_eq!(parse(deep.as_bytes()), Err(DecodeError::TooDeep));
    assert_eq!(DecodeError::Doctype.reason(), "doctype");
}

/// Hand-written messages without `MsgId`: two different texts from one follower in one second
/// are two pushes; the same push again is one.
#[test]
fn messages_without_msgid_are_keyed_by_their_content() {
    let xml = |text: &str| {
        format!(
            "<xml><ToUserName>{ACCOUNT}</ToUserName><FromUserName>{USER}</FromUserName>\
             <CreateTime>1700000001</CreateTime><MsgType>text</MsgType>\
             <Content>{text}</Content></xml>"
        )
    };
    let refund = p(&xml("退款")).dedupe_key();
    assert_ne!(refund, p(&xml("发票")).dedupe_key());
    assert_eq!(refund, p(&xml("退款")).dedupe_key());
    assert!(refund.as_str().starts_with(&format!("e:1700000001:{USER}:{ACCOUNT}:text:sha1-")));
}

/// Every fixture of `tests/fixtures/wechat/pushes/`, by file name.
fn all_fixtures() -> Vec<(String, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/wechat/pushes");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "xml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("fixture"))
        })
        .collect();
    out.sort();
    out
}

/// Variants of a push that stress the reader: fields doubled, emptied, split into text and
/// CDATA pieces, given entities, children, attributes, comments, or moved.
fn mutations(xml: &str) -> Vec<String> {
    let mut out = vec![xml.to_string()];
    let body_start = xml.find('>').map_or(0, |i| i + 1);
    let (open, rest) = xml.split_at(body_start);
    // Each child element of the root, as text.
    let mut children = Vec::new();
    let mut i = 0;
    let bytes = rest.as_bytes();
    while let Some(lt) = rest[i..].find('<').map(|k| k + i) {
        if bytes.get(lt + 1) == Some(&b'/') {
            break; // </xml>
        }
        let name_end = rest[lt + 1..].find(['>', ' ', '/']).map_or(rest.len(), |k| k + lt + 1);
        let name = &rest[lt + 1..name_end];
        let close = format!("</{name}>");
        let end = match rest[lt..].find(&close) {
            Some(k) => k + lt + close.len(),
            None => match rest[lt..].find("/>") {
                Some(k) => k + lt + 2,
                None => break,
            },
        };
        children.push((name.to_string(), rest[lt..end].to_string()));
        i = end;
    }
    for (name, el) in &children {
        out.push(xml.replacen(el.as_str(), &format!("{el}{el}"), 1));
        out.push(xml.replacen(el.as_str(), &format!("<{name}></{name}>"), 1));
        out.push(xml.replacen(el.as_str(), &format!("<{name}/>"), 1));
        out.push(xml.replacen(el.as_str(), "", 1));
        out.push(xml.replacen(el.as_str(), &format!("<{name}><b>x</b></{name}>"), 1));
        out.push(xml.replacen(
            el.as_str(),
            &format!("<{name}> a &amp; b &#x4e2d;<![CDATA[ c ]]> d </{name}>"),
            1,
        ));
        out.push(xml.replacen(el.as_str(), &format!("<{name} lang=\"zh\">  7 </{name}>"), 1));
        out.push(xml.replacen(
            el.as_str(),
            &format!("<!-- c --><{name}><!-- c -->9<!-- c --></{name}>"),
            1,
        ));
        out.push(format!("{open}{el}{}", rest.replacen(el.as_str(), "", 1)));
        out.push(xml.replacen(
            el.as_str(),
            &format!("{el}<Unknown><Content>x</Content></Unknown>"),
            1,
        ));
    }
    out
}

#[test]
fn one_pass_agrees_with_two_pass() {
    let mut compared = 0;
    let mut refused = 0;
    for (name, xml) in all_fixtures() {
        for variant in mutations(&xml) {
            let one = parse(variant.as_bytes());
            let two = super::two_pass::parse(variant.as_bytes());
            match (&one, &two) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{name}: {variant}"),
                // The same refusal; malformed XML is described in the reader's own words.
                (Err(a), Err(b)) => {
                    refused += 1;
                    if !matches!((a, b), (DecodeError::Malformed(_), DecodeError::Malformed(_))) {
                        assert_eq!(a, b, "{name}: {variant}");
                    }
                }
                _ => panic!("{name}: one pass {one:?}, two passes {two:?}: {variant}"),
            }
            compared += 1;
        }
    }
    assert!(compared > 1000 && refused > 10, "{compared} compared, {refused} refused by both");
}
