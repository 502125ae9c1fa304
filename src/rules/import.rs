//! `kefu rules import`: the admin panel's auto-reply settings, as returned by
//! `GET /cgi-bin/get_current_autoreply_info`, turned into a rule file. The panel's replies
//! stop when a server URL is enabled, so this is how an account keeps them.
//!
//! The panel has three parts: the follow reply (关注后自动回复), the default reply
//! (消息自动回复) and keyword rules (关键词自动回复, `contain`/`equal` keywords, `reply_all` or
//! `random_one`). The output carries `[[test]]` cases for what it imported, each checked
//! against the generated rules, so the file passes `kefu rules check` as written.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde::Deserialize;

use super::{RuleSet, check::TEST_OPENID, event_input, text_input};
use crate::config::WindowConfig;

#[derive(Debug, Default, Deserialize)]
struct Info {
    #[serde(default)]
    is_add_friend_reply_open: i64,
    #[serde(default)]
    is_autoreply_open: i64,
    add_friend_autoreply_info: Option<PanelReply>,
    message_default_autoreply_info: Option<PanelReply>,
    keyword_autoreply_info: Option<KeywordInfo>,
    errcode: Option<i64>,
    errmsg: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct KeywordInfo {
    #[serde(default)]
    list: Vec<KeywordRule>,
}

#[derive(Debug, Default, Deserialize)]
struct KeywordRule {
    #[serde(default)]
    rule_name: String,
    #[serde(default)]
    reply_mode: String,
    #[serde(default)]
    keyword_list_info: Vec<Keyword>,
    #[serde(default)]
    reply_list_info: Vec<PanelReply>,
}

#[derive(Debug, Default, Deserialize)]
struct Keyword {
    #[serde(default)]
    match_mode: String,
    #[serde(default)]
    content: String,
}

#[derive(Debug, Default, Deserialize)]
struct PanelReply {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    content: String,
    news_info: Option<NewsInfo>,
}

#[derive(Debug, Default, Deserialize)]
struct NewsInfo {
    #[serde(default)]
    list: Vec<NewsItem>,
}

#[derive(Debug, Default, Deserialize)]
struct NewsItem {
    #[serde(default)]
    title: String,
    #[serde(default)]
    digest: String,
    #[serde(default)]
    cover_url: String,
    #[serde(default)]
    content_url: String,
}

/// Why a file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(
        "not the JSON of get_current_autoreply_info: {0} (fetch it with GET \
         /cgi-bin/get_current_autoreply_info?access_token=...)"
    )]
    Json(#[from] serde_json::Error),
    #[error("the file is a WeChat API error, not auto-reply settings: errcode {0}: {1}")]
    Api(i64, String),
}

/// Converts the JSON text into a rule file's text.
pub fn import_autoreply(json: &str) -> Result<String, ImportError> {
    let info: Info = serde_json::from_str(json)?;
    if let Some(code) = info.errcode.filter(|c| *c != 0) {
        return Err(ImportError::Api(code, info.errmsg.unwrap_or_default()));
    }
    let mut out = String::from(
        "# Imported from the admin panel's auto-reply settings (get_current_autoreply_info).\n\
         # Check with `kefu rules check`; try a message with `kefu simulate --text ...`.\n\
         # Image, voice and video ids from that API are temporary material that expires after\n\
         # 3 days: upload permanent material and put its media ids here.\n",
    );
    let mut names = Names::default();
    // Probes for the generated tests: (input, expected rule).
    let mut probes: Vec<(Probe, String)> = Vec::new();

    match (&info.add_friend_autoreply_info, info.is_add_friend_reply_open) {
        (Some(r), 1) => {
            let name = names.take("follow-reply");
            out.push_str("\n# 关注后自动回复: the reply to a new follower.\n");
            rule_header(&mut out, &name, 100, None);
            out.push_str("[rule.when]\nevent = \"subscribe\"\n");
            reply(&mut out, r);
            probes.push((Probe::Event("subscribe".into()), name));
        }
        (Some(_), _) => {
            out.push_str("\n# The follow reply is switched off in the panel: not imported.\n")
        }
        (None, _) => {}
    }

    if let Some(k) = &info.keyword_autoreply_info {
        out.push_str("\n# 关键词自动回复: keyword rules, in the panel's order.\n");
        for (i, rule) in k.list.iter().enumerate() {
            let base = match rule.rule_name.trim() {
                "" => format!("keyword-{}", i + 1),
                n => n.to_string(),
            };
            let mode = if rule.reply_mode == "random_one" { Some("random_one") } else { None };
            let kw = |m: &str| -> Vec<&str> {
                rule.keyword_list_info
                    .iter()
                    .filter(|k| k.match_mode == m && !k.content.is_empty())
                    .map(|k| k.content.as_str())
                    .collect()
            };
            let (equal, contain) = (kw("equal"), kw("contain"));
            // Conditions in one rule must all hold, so the panel's "equal OR contain" is two
            // rules with the same replies; the exact one first.
            let both = !equal.is_empty() && !contain.is_empty();
            for (cond, words) in [("text_equals", &equal), ("text_contains", &contain)] {
                if words.is_empty() {
                    continue;
                }
                let name = if both && cond == "text_equals" {
                    names.take(&format!("{base} (exact)"))
                } else {
                    names.take(&base)
                };
                rule_header(&mut out, &name, 10, mode);
                let list: Vec<String> = words.iter().map(|w| toml_str(w)).collect();
                let _ = writeln!(out, "[rule.when]\n{cond} = [{}]", list.join(", "));
                for r in &rule.reply_list_info {
                    reply(&mut out, r);
                }
                probes.push((Probe::Text(words[0].to_string()), name));
            }
            if equal.is_empty() && contain.is_empty() {
                let _ = writeln!(out, "# rule {base:?} has no text keyword: not imported");
            }
        }
    }

    match (&info.message_default_autoreply_info, info.is_autoreply_open) {
        (Some(r), 1) => {
            let name = names.take("default-reply");
            out.push_str(
                "\n# 消息自动回复: the reply to any other message. The panel sent it at most once\n\
                 # an hour per follower; this rule answers every message no other rule takes.\n",
            );
            rule_header(&mut out, &name, -100, None);
            out.push_str(
                "[rule.when]\nmsg_type = [\"text\", \"image\", \"voice\", \"video\", \
                 \"shortvideo\", \"location\", \"link\"]\n",
            );
            reply(&mut out, r);
            probes.push((Probe::Text("kefu import probe: no keyword here".into()), name));
        }
        (Some(_), _) => {
            out.push_str("\n# The default reply is switched off in the panel: not imported.\n")
        }
        (None, _) => {}
    }

    out.push_str(&tests_for(&out, probes));
    Ok(out)
}

enum Probe {
    Text(String),
    Event(String),
}

/// Writes a `[[test]]` for each probe the generated rules answer as intended, and a comment
/// for each they do not (another rule takes the keyword first), so the operator sees it.
fn tests_for(rules_text: &str, probes: Vec<(Probe, String)>) -> String {
    let mut out = String::new();
    let loaded = RuleSet::from_sources(
        vec![(PathBuf::from("imported.toml"), rules_text.to_string())],
        &WindowConfig::default(),
    );
    let Ok(loaded) = loaded else { return out };
    out.push_str("\n# Tests: run by `kefu rules check`.\n");
    for (probe, name) in probes {
        let (input, line) = match &probe {
            Probe::Text(t) => (text_input(TEST_OPENID, t), format!("text = {}", toml_str(t))),
            Probe::Event(e) => {
                (event_input(TEST_OPENID, e, None), format!("event = {}", toml_str(e)))
            }
        };
        let fired = loaded.set.evaluate(&input).fired;
        if fired == [name.clone()] {
            let _ = writeln!(out, "[[test]]\n{line}\nexpect = [{}]\n", toml_str(&name));
        } else {
            let _ = writeln!(
                out,
                "# note: {line} is answered by [{}], not by {name:?}\n",
                fired.join(", ")
            );
        }
    }
    out
}

#[derive(Default)]
struct Names(HashSet<String>);

impl Names {
    /// The name itself, or with ` (2)`, ` (3)`... when the panel repeats it.
    fn take(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut n = 2;
        while !self.0.insert(name.clone()) {
            name = format!("{base} ({n})");
            n += 1;
        }
        name
    }
}

fn rule_header(out: &mut String, name: &str, priority: i64, mode: Option<&str>) {
    let _ = writeln!(out, "\n[[rule]]\nname = {}\npriority = {priority}", toml_str(name));
    if let Some(m) = mode {
        let _ = writeln!(out, "reply_mode = \"{m}\"");
    }
}

fn reply(out: &mut String, r: &PanelReply) {
    // Panel text has no placeholders: keep its braces literal.
    let lit = |s: &str| toml_str(&s.replace('{', "{{").replace('}', "}}"));
    match r.kind.as_str() {
        "text" => {
            let _ = writeln!(out, "[[rule.reply]]\ntext = {}", lit(&r.content));
        }
        "img" => {
            let _ = writeln!(out, "[[rule.reply]]\nimage = {}", lit(&r.content));
        }
        "voice" => {
            let _ = writeln!(out, "[[rule.reply]]\nvoice = {}", lit(&r.content));
        }
        "video" => {
            let _ = writeln!(
                out,
                "[[rule.reply]]\n# add thumb_media_id, title and description for customer-service sends\n\
                 video = {{ media_id = {} }}",
                lit(&r.content)
            );
        }
        "news" => match r.news_info.as_ref().and_then(|n| n.list.first()) {
            Some(a) => {
                let extra = r.news_info.as_ref().map_or(0, |n| n.list.len().saturating_sub(1));
                if extra > 0 {
                    let _ = writeln!(
                        out,
                        "# {extra} more article(s) dropped: a message carries one article"
                    );
                }
                let _ = writeln!(
                    out,
                    "[[rule.reply]]\nnews = {{ title = {}, description = {}, url = {}, picurl = {} }}",
                    lit(&a.title),
                    lit(&a.digest),
                    lit(&a.content_url),
                    lit(&a.cover_url)
                );
            }
            None if !r.content.is_empty() => {
                let _ = writeln!(out, "[[rule.reply]]\nmpnews = {}", lit(&r.content));
            }
            None => out.push_str("# a news reply without articles: not imported\n"),
        },
        other => {
            let _ = writeln!(out, "# a reply of type {other:?} is not supported: not imported");
        }
    }
}

/// A TOML string literal (quotes and escapes chosen by the toml crate).
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_is_named() {
        let e = import_autoreply(r#"{"errcode":40001,"errmsg":"invalid credential"}"#).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the file is a WeChat API error, not auto-reply settings: errcode 40001: invalid credential"
        );
    }

    #[test]
    fn duplicate_names_get_suffixes() {
        let mut n = Names::default();
        assert_eq!(n.take("a"), "a");
        assert_eq!(n.take("a"), "a (2)");
        assert_eq!(n.take("a"), "a (3)");
    }
}
