//! Passive reply XML (protocol §5.2, §7.4): the HTTP answer to a push. Strings go in CDATA with
//! `]]>` split safely; numbers are bare. Kinds WeChat cannot take passively are an error here,
//! so a caller cannot silently send something the follower will never see.

use crate::model::{OutMessage, PassiveReply};
use crate::wechat::push_element;

/// WeChat drops articles beyond eight in a passive news reply (one when replying to a message).
pub const MAX_NEWS_ARTICLES: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error(
        "a {0} message cannot be a passive reply (only text, image, voice, video, music, news \
         and transfer); send it through custom/send"
    )]
    NotPassive(&'static str),
    #[error("a news reply needs 1 to {MAX_NEWS_ARTICLES} articles, got {0}")]
    Articles(usize),
}

/// Renders `reply` addressed to `to_user` (the push's FromUserName) from `from_account` (the
/// push's ToUserName).
pub fn render(
    to_user: &str,
    from_account: &str,
    create_time: i64,
    reply: &PassiveReply,
) -> Result<String, ReplyError> {
    let msg_type = match reply {
        PassiveReply::Transfer { .. } => "transfer_customer_service",
        PassiveReply::Message { message } if message.passive_capable() => message.msgtype(),
        PassiveReply::Message { message } => return Err(ReplyError::NotPassive(message.msgtype())),
    };
    let mut x = String::with_capacity(256);
    x.push_str("<xml>");
    push_element(&mut x, "ToUserName", to_user);
    push_element(&mut x, "FromUserName", from_account);
    x.push_str(&format!("<CreateTime>{create_time}</CreateTime>"));
    push_element(&mut x, "MsgType", msg_type);
    match reply {
        PassiveReply::Transfer { kf_account } => {
            if let Some(kf) = kf_account.as_deref().filter(|k| !k.is_empty()) {
                x.push_str("<TransInfo>");
                push_element(&mut x, "KfAccount", kf);
                x.push_str("</TransInfo>");
            }
        }
        PassiveReply::Message { message } => body(&mut x, message)?,
    }
    x.push_str("</xml>");
    Ok(x)
}

fn body(x: &mut String, m: &OutMessage) -> Result<(), ReplyError> {
    // Optional elements are left out when empty rather than sent as empty CDATA.
    let opt = |x: &mut String, name: &str, v: &str| {
        if !v.is_empty() {
            push_element(x, name, v);
        }
    };
    match m {
        OutMessage::Text { content } => push_element(x, "Content", content),
        OutMessage::Image { media_id } => {
            x.push_str("<Image>");
            push_element(x, "MediaId", media_id);
            x.push_str("</Image>");
        }
        OutMessage::Voice { media_id } => {
            x.push_str("<Voice>");
            push_element(x, "MediaId", media_id);
            x.push_str("</Voice>");
        }
        OutMessage::Video { media_id, title, description, .. } => {
            // The passive video reply has no thumbnail element (protocol §5.2).
            x.push_str("<Video>");
            push_element(x, "MediaId", media_id);
            opt(x, "Title", title);
            opt(x, "Description", description);
            x.push_str("</Video>");
        }
        OutMessage::Music { title, description, musicurl, hqmusicurl, thumb_media_id } => {
            x.push_str("<Music>");
            opt(x, "Title", title);
            opt(x, "Description", description);
            opt(x, "MusicUrl", musicurl);
            opt(x, "HQMusicUrl", hqmusicurl);
            push_element(x, "ThumbMediaId", thumb_media_id);
            x.push_str("</Music>");
        }
        OutMessage::News { articles } => {
            if articles.is_empty() || articles.len() > MAX_NEWS_ARTICLES {
                return Err(ReplyError::Articles(articles.len()));
            }
            x.push_str(&format!("<ArticleCount>{}</ArticleCount><Articles>", articles.len()));
            for a in articles {
                x.push_str("<item>");
                push_element(x, "Title", &a.title);
                push_element(x, "Description", &a.description);
                push_element(x, "PicUrl", &a.picurl);
                push_element(x, "Url", &a.url);
                x.push_str("</item>");
            }
            x.push_str("</Articles>");
        }
        other => return Err(ReplyError::NotPassive(other.msgtype())),
    }
    Ok(())
}

/// `<xml><Encrypt/><MsgSignature/><TimeStamp/><Nonce/></xml>`, the safe-mode answer
/// (protocol §2.6 step 5). `timestamp` must be digits (the webhook only passes checked ones).
pub fn encrypted_envelope(
    encrypt: &str,
    msg_signature: &str,
    timestamp: &str,
    nonce: &str,
) -> String {
    let mut x = String::with_capacity(encrypt.len() + 160);
    x.push_str("<xml>");
    push_element(&mut x, "Encrypt", encrypt);
    push_element(&mut x, "MsgSignature", msg_signature);
    x.push_str("<TimeStamp>");
    x.push_str(timestamp);
    x.push_str("</TimeStamp>");
    push_element(&mut x, "Nonce", nonce);
    x.push_str("</xml>");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Article, MenuItem};

    fn msg(m: OutMessage) -> PassiveReply {
        PassiveReply::Message { message: m }
    }

    fn r(reply: PassiveReply) -> String {
        render("oUser123", "gh_abc123", 1409304348, &reply).unwrap()
    }

    const HEAD: &str = "<xml><ToUserName><![CDATA[oUser123]]></ToUserName><FromUserName><![CDATA[gh_abc123]]></FromUserName><CreateTime>1409304348</CreateTime>";

    #[test]
    fn text_matches_the_e4_reply_exactly() {
        let xml = r(msg(OutMessage::Text { content: "hello".into() }));
        assert_eq!(xml, crate::wechat::vectors::get("e4", "msg"));
    }

    #[test]
    fn cdata_terminator_is_split() {
        let xml = r(msg(OutMessage::Text { content: "a]]>b".into() }));
        assert!(xml.contains("<Content><![CDATA[a]]]]><![CDATA[>b]]></Content>"), "{xml}");
        // And it reads back as the original text.
        let back = xml.replace(
            "<MsgType><![CDATA[text]]></MsgType>",
            "<MsgType>text</MsgType><MsgId>1</MsgId>",
        );
        let push = crate::wechat::inbound::parse(back.as_bytes()).unwrap();
        assert_eq!(crate::rules::input::of_push(&push).text.as_deref(), Some("a]]>b"));
    }

    #[test]
    fn media_kinds() {
        assert_eq!(
            r(msg(OutMessage::Image { media_id: "M1".into() })),
            format!(
                "{HEAD}<MsgType><![CDATA[image]]></MsgType><Image><MediaId><![CDATA[M1]]></MediaId></Image></xml>"
            )
        );
        assert_eq!(
            r(msg(OutMessage::Voice { media_id: "V1".into() })),
            format!(
                "{HEAD}<MsgType><![CDATA[voice]]></MsgType><Voice><MediaId><![CDATA[V1]]></MediaId></Voice></xml>"
            )
        );
        assert_eq!(
            r(msg(OutMessage::Video {
                media_id: "VID".into(),
                thumb_media_id: "T".into(),
                title: "t".into(),
                description: String::new()
            })),
            format!(
                "{HEAD}<MsgType><![CDATA[video]]></MsgType><Video><MediaId><![CDATA[VID]]></MediaId><Title><![CDATA[t]]></Title></Video></xml>"
            )
        );
        assert_eq!(
            r(msg(OutMessage::Music {
                title: "歌".into(),
                description: "d".into(),
                musicurl: "http://m/1.mp3".into(),
                hqmusicurl: "http://m/1hq.mp3".into(),
                thumb_media_id: "TH".into()
            })),
            format!(
                "{HEAD}<MsgType><![CDATA[music]]></MsgType><Music><Title><![CDATA[歌]]></Title><Description><![CDATA[d]]></Description><MusicUrl><![CDATA[http://m/1.mp3]]></MusicUrl><HQMusicUrl><![CDATA[http://m/1hq.mp3]]></HQMusicUrl><ThumbMediaId><![CDATA[TH]]></ThumbMediaId></Music></xml>"
            )
        );
    }

    #[test]
    fn news() {
        let a = Article {
            title: "T".into(),
            description: "D".into(),
            url: "https://e/x".into(),
            picurl: "https://e/p.jpg".into(),
        };
        assert_eq!(
            r(msg(OutMessage::News { articles: vec![a.clone()] })),
            format!(
                "{HEAD}<MsgType><![CDATA[news]]></MsgType><ArticleCount>1</ArticleCount><Articles><item><Title><![CDATA[T]]></Title><Description><![CDATA[D]]></Description><PicUrl><![CDATA[https://e/p.jpg]]></PicUrl><Url><![CDATA[https://e/x]]></Url></item></Articles></xml>"
            )
        );
        let none = render("u", "a", 1, &msg(OutMessage::News { articles: vec![] }));
        assert_eq!(none, Err(ReplyError::Articles(0)));
        let nine = render("u", "a", 1, &msg(OutMessage::News { articles: vec![a; 9] }));
        assert_eq!(nine, Err(ReplyError::Articles(9)));
    }

    #[test]
    fn transfer_with_and_without_kf() {
        assert_eq!(
            r(PassiveReply::Transfer { kf_account: None }),
            format!("{HEAD}<MsgType><![CDATA[transfer_customer_service]]></MsgType></xml>")
        );
        assert_eq!(
            r(PassiveReply::Transfer { kf_account: Some("kf01@gh_account".into()) }),
            format!(
                "{HEAD}<MsgType><![CDATA[transfer_customer_service]]></MsgType><TransInfo><KfAccount><![CDATA[kf01@gh_account]]></KfAccount></TransInfo></xml>"
            )
        );
    }

    #[test]
    fn kinds_that_cannot_be_passive() {
        let menu = OutMessage::MsgMenu {
            head_content: "h".into(),
            list: vec![MenuItem { id: "1".into(), content: "c".into() }],
            tail_content: "t".into(),
        };
        for (m, name) in [
            (menu, "msgmenu"),
            (OutMessage::MpNews { media_id: "m".into() }, "mpnews"),
            (OutMessage::WxCard { card_id: "c".into() }, "wxcard"),
        ] {
            let e = render("u", "a", 1, &msg(m)).unwrap_err();
            assert_eq!(e, ReplyError::NotPassive(name));
            assert!(e.to_string().contains("custom/send"));
        }
    }

    #[test]
    fn envelope_shape() {
        assert_eq!(
            encrypted_envelope("E==", "sig", "1409304348", "xx"),
            "<xml><Encrypt><![CDATA[E==]]></Encrypt><MsgSignature><![CDATA[sig]]></MsgSignature><TimeStamp>1409304348</TimeStamp><Nonce><![CDATA[xx]]></Nonce></xml>"
        );
    }
}
