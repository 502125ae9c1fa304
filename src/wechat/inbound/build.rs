//! Pushes written the way WeChat writes them (protocol §3.2, §3.3), for what plays WeChat's
//! part: `kefu push` sends them, `kefu simulate` and the rule files' `[[test]]` cases decode
//! them. Built as XML and decoded through the same two passes as a real push, so none of them
//! can see a push differently from `kefu serve`.

use super::{DecodeError, Push, parse};
use crate::wechat::push_element;

/// A text message push: `ToUserName` `to` (the account's original ID), `FromUserName` `from`,
/// `CreateTime` in Unix seconds, `Content` (any text; `]]>` is split safely) and `MsgId`.
pub fn text_xml(to: &str, from: &str, create_time: i64, content: &str, msg_id: u64) -> String {
    let mut x = header(to, from, create_time, "text");
    push_element(&mut x, "Content", content);
    x.push_str(&format!("<MsgId>{msg_id}</MsgId></xml>"));
    x
}

/// An event push: `Event` as WeChat spells it (`subscribe`, `CLICK`, `SCAN`, ...) and, when
/// given, `EventKey`.
pub fn event_xml(to: &str, from: &str, create_time: i64, event: &str, key: Option<&str>) -> String {
    let mut x = header(to, from, create_time, "event");
    push_element(&mut x, "Event", event);
    if let Some(key) = key {
        push_element(&mut x, "EventKey", key);
    }
    x.push_str("</xml>");
    x
}

/// [`text_xml`], decoded.
pub fn text(
    to: &str,
    from: &str,
    create_time: i64,
    content: &str,
    msg_id: u64,
) -> Result<Push, DecodeError> {
    parse(text_xml(to, from, create_time, content, msg_id).as_bytes())
}

/// [`event_xml`], decoded.
pub fn event(
    to: &str,
    from: &str,
    create_time: i64,
    event: &str,
    key: Option<&str>,
) -> Result<Push, DecodeError> {
    parse(event_xml(to, from, create_time, event, key).as_bytes())
}

fn header(to: &str, from: &str, create_time: i64, msg_type: &str) -> String {
    let mut x = String::from("<xml>");
    push_element(&mut x, "ToUserName", to);
    push_element(&mut x, "FromUserName", from);
    x.push_str(&format!("<CreateTime>{create_time}</CreateTime>"));
    push_element(&mut x, "MsgType", msg_type);
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wechat::inbound::{Event, PushKind};

    #[test]
    fn built_pushes_decode_as_written() {
        let p = text("gh_x", "oU", 1_700_000_000, "退款 ]]> now", 42).unwrap();
        assert_eq!((p.to.as_str(), p.from.as_str(), p.create_time), ("gh_x", "oU", 1_700_000_000));
        assert!(matches!(&p.kind, PushKind::Text { content, msg_id: Some(42), .. }
            if content == "退款 ]]> now"));
        let p = event("gh_x", "oU", 1, "CLICK", Some("K1")).unwrap();
        assert_eq!(p.kind, PushKind::Event(Event::Click { event_key: "K1".into() }));
    }
}
