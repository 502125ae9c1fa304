//! `kefu simulate`: which rules fire for a push and exactly what would be sent, with no
//! network: the passive reply as XML, then each customer-service message as its `custom/send`
//! body, in order, with its delay.

use std::path::Path;

use serde_json::{Value, json};

use crate::cli::{CmdError, CmdResult, SimulateArgs};
use crate::config::Config;
use crate::model::{Action, OpenId, OutMessage, PassiveReply, PlannedAction, RuleInput};
use crate::rules::{self, RuleSet};

/// The account id put in the passive reply's `FromUserName` when none is configured.
const SIMULATED_ACCOUNT: &str = "gh_simulated";

pub fn run(cfg: &Config, args: &SimulateArgs) -> CmdResult {
    let from = OpenId::parse(&args.from).map_err(|e| CmdError::Usage(format!("--from: {e}")))?;
    let input = if let Some(text) = &args.input.text {
        rules::text_input(from.as_str(), text)
    } else if let Some(event) = &args.input.event {
        rules::event_input(from.as_str(), event, args.key.as_deref())
    } else if let Some(file) = &args.input.xml {
        xml_input(file)?
    } else {
        return Err(CmdError::Usage("give one of --text, --event or --xml".into()));
    };

    let dir = args.rules.as_deref().unwrap_or(&cfg.rules.dir);
    let loaded = RuleSet::load_dir(dir, &cfg.window).map_err(|diags| {
        diags.iter().for_each(|d| eprintln!("{d}"));
        CmdError::failed(format!(
            "the rules in {} do not load; `kefu rules check {}` lists every error",
            dir.display(),
            dir.display()
        ))
    })?;
    loaded.warnings.iter().for_each(|w| eprintln!("{w}"));

    let ev = loaded.set.evaluate(&input);
    let fired = ev.fired.clone();
    let (passive, planned) = ev.split_passive(cfg.rules.passive_first);
    let account = if cfg.wechat.account_id.is_empty() {
        SIMULATED_ACCOUNT
    } else {
        cfg.wechat.account_id.as_str()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let xml = passive.as_ref().map(|p| passive_xml(&input.from, account, now, p));
    let sends: Vec<Value> = planned.iter().map(|a| planned_json(&input.from, a)).collect();

    if args.json {
        let out = json!({
            "fired": fired,
            "passive": passive.as_ref().map(|p| json!({ "reply": p, "xml": xml })),
            "messages": sends,
        });
        println!("{out}");
        return Ok(());
    }
    if fired.is_empty() {
        println!("no rule fired: the push is answered with `success` and nothing is sent");
        return Ok(());
    }
    println!("rules fired: {}", fired.join(", "));
    match &xml {
        Some(x) => println!("passive reply (the HTTP answer):\n{x}"),
        None => println!("passive reply: none (the push is answered with `success`)"),
    }
    for (i, (a, s)) in planned.iter().zip(&sends).enumerate() {
        let when = if a.delay.is_zero() {
            "now".to_string()
        } else {
            format!("after {}", humantime::format_duration(a.delay))
        };
        let as_kf = a.kf_account.as_deref().map(|k| format!(", as {k}")).unwrap_or_default();
        println!(
            "{}. {when} (rule {}{as_kf}): POST {}\n{}",
            i + 1,
            a.rule,
            s["endpoint"].as_str().unwrap_or_default(),
            s["body"]
        );
    }
    Ok(())
}

/// One planned action as the request kefu would make for it.
fn planned_json(openid: &str, a: &PlannedAction) -> Value {
    let (endpoint, body) = match &a.action {
        Action::Send { message } => (
            "/cgi-bin/message/custom/send",
            message.custom_send_body(openid, a.kf_account.as_deref()),
        ),
        Action::Typing => {
            ("/cgi-bin/message/custom/typing", json!({ "touser": openid, "command": "Typing" }))
        }
        // split_passive never leaves one; shown rather than hidden if it ever does.
        Action::Transfer { kf_account } => {
            ("(passive reply only)", json!({ "transfer_customer_service": kf_account }))
        }
    };
    json!({
        "rule": a.rule,
        "delay_ms": a.delay.as_millis() as u64,
        "delay": humantime::format_duration(a.delay).to_string(),
        "kf_account": a.kf_account,
        "endpoint": endpoint,
        "body": body,
    })
}

/// Reads a push from an XML file. Parsing pushes belongs to `wechat::inbound`; until this is
/// pointed at it, --xml is refused with a clear message.
fn xml_input(file: &Path) -> Result<RuleInput, CmdError> {
    Err(CmdError::Usage(format!(
        "--xml {}: reading a push from XML is not available in this build yet; use --text or \
         --event [--key KEY]",
        file.display()
    )))
}

/// The passive reply as the XML WeChat receives (protocol §5.2). The one place the renderer
/// is called, so it can be pointed at `wechat::reply::render`.
fn passive_xml(to: &str, from: &str, create_time: i64, reply: &PassiveReply) -> String {
    let cdata = |s: &str| format!("<![CDATA[{}]]>", s.replace("]]>", "]]]]><![CDATA[>"));
    let head = |t: &str| {
        format!(
            "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName>\
             <CreateTime>{create_time}</CreateTime><MsgType>{}</MsgType>",
            cdata(to),
            cdata(from),
            cdata(t)
        )
    };
    let body = match reply {
        PassiveReply::Transfer { kf_account } => {
            let mut s = head("transfer_customer_service");
            if let Some(k) = kf_account {
                s.push_str(&format!("<TransInfo><KfAccount>{}</KfAccount></TransInfo>", cdata(k)));
            }
            s
        }
        PassiveReply::Message { message } => {
            let mut s = head(message.msgtype());
            s.push_str(&match message {
                OutMessage::Text { content } => format!("<Content>{}</Content>", cdata(content)),
                OutMessage::Image { media_id } => {
                    format!("<Image><MediaId>{}</MediaId></Image>", cdata(media_id))
                }
                OutMessage::Voice { media_id } => {
                    format!("<Voice><MediaId>{}</MediaId></Voice>", cdata(media_id))
                }
                OutMessage::Video { media_id, title, description, .. } => format!(
                    "<Video><MediaId>{}</MediaId><Title>{}</Title><Description>{}</Description>\
                     </Video>",
                    cdata(media_id),
                    cdata(title),
                    cdata(description)
                ),
                OutMessage::Music { title, description, musicurl, hqmusicurl, thumb_media_id } => {
                    format!(
                        "<Music><Title>{}</Title><Description>{}</Description><MusicUrl>{}\
                         </MusicUrl><HQMusicUrl>{}</HQMusicUrl><ThumbMediaId>{}</ThumbMediaId>\
                         </Music>",
                        cdata(title),
                        cdata(description),
                        cdata(musicurl),
                        cdata(hqmusicurl),
                        cdata(thumb_media_id)
                    )
                }
                OutMessage::News { articles } => {
                    let items: String = articles
                        .iter()
                        .map(|a| {
                            format!(
                                "<item><Title>{}</Title><Description>{}</Description><PicUrl>{}\
                                 </PicUrl><Url>{}</Url></item>",
                                cdata(&a.title),
                                cdata(&a.description),
                                cdata(&a.picurl),
                                cdata(&a.url)
                            )
                        })
                        .collect();
                    format!(
                        "<ArticleCount>{}</ArticleCount><Articles>{items}</Articles>",
                        articles.len()
                    )
                }
                // split_passive only picks passive-capable kinds.
                other => format!("<!-- {} cannot be a passive reply -->", other.msgtype()),
            });
            s
        }
    };
    format!("{body}</xml>")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn passive_text_xml() {
        let p = PassiveReply::Message { message: OutMessage::Text { content: "a]]>b".into() } };
        assert_eq!(
            passive_xml("oU", "gh_x", 7, &p),
            "<xml><ToUserName><![CDATA[oU]]></ToUserName><FromUserName><![CDATA[gh_x]]>\
             </FromUserName><CreateTime>7</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[a]]]]><![CDATA[>b]]></Content></xml>"
        );
    }

    #[test]
    fn typing_request() {
        let a = PlannedAction {
            rule: "r".into(),
            action: Action::Typing,
            delay: Duration::from_secs(2),
            kf_account: None,
        };
        let v = planned_json("oU", &a);
        assert_eq!(v["endpoint"], "/cgi-bin/message/custom/typing");
        assert_eq!(v["body"], json!({"touser": "oU", "command": "Typing"}));
        assert_eq!(v["delay"], "2s");
    }
}
