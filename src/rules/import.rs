//! `kefu rules import`: the admin panel's auto-reply settings, as returned by
//! `GET /cgi-bin/get_current_autoreply_info`, turned into a rule file. The panel's replies
//! stop when a server URL is enabled, so this is how an account keeps them.
//!
//! The panel has three parts: the follow reply (关注后自动回复), the default reply
//! (消息自动回复) and keyword rules (关键词自动回复, `contain`/`equal` keywords, `reply_all` or
//! `random_one`). The output carries `[[test]]` cases for what it imported, each checked
//! against the generated rules *and the rule files it will sit beside*, so the directory
//! passes `kefu rules check` as written.
//!
//! Imported rules get priorities just below the example rules' bands ([`FOLLOW_PRIORITY`],
//! [`KEYWORD_PRIORITY`], [`DEFAULT_PRIORITY`]): a rule written by hand for the same push wins,
//! and an imported duplicate of it (a second welcome, a second catch-all) is reported by
//! `rules check` as never firing instead of silently taking over. Names already used in the
//! directory are not reused. An existing `[[test]]` that an imported rule changes (a panel
//! keyword now answers a text the test expects elsewhere) is reported, so the operator decides.
//!
//! What the panel's JSON holds (get_current_autoreply_info): `content` is the text for
//! `text`, a temporary (3-day) media id for `img` and `voice`, and for `video` a download URL
//! of the video file — not a media id, so it cannot become a `video` reply; such a reply is
//! left out with a warning that keeps the URL for the operator to upload the video.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{RuleSet, check::TEST_OPENID, input};
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

/// The imported follow reply: below a hand-written welcome (the example's is 100).
pub const FOLLOW_PRIORITY: i64 = 90;
/// Imported keyword rules: below hand-written keyword rules (the example FAQ's are 10 to 30).
pub const KEYWORD_PRIORITY: i64 = 5;
/// The imported default reply: below a hand-written catch-all (the example fallback is -100).
pub const DEFAULT_PRIORITY: i64 = -110;

/// A rule file made from the panel's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The rule file's text.
    pub text: String,
    /// How many rules it holds.
    pub rules: usize,
    /// What the operator must know: replies left out, existing tests the import changes.
    pub warnings: Vec<String>,
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
    /// Valid JSON, but no reply that could become a rule.
    #[error("nothing to import: {0}")]
    Nothing(String),
}

/// Converts the JSON text into a rule file's text, on its own (no other rule files).
pub fn import_autoreply(json: &str) -> Result<String, ImportError> {
    import_beside(json, Vec::new(), Path::new("imported.toml")).map(|i| i.text)
}

/// Converts the JSON text into the rule file `name` that will sit beside `existing` (the other
/// rule files of its directory, as `(path, text)`): names already used there are not reused,
/// the generated tests are checked against all the files together, and every existing test the
/// new rules change is reported in [`Imported::warnings`].
pub fn import_beside(
    json: &str,
    existing: Vec<(PathBuf, String)>,
    name: &Path,
) -> Result<Imported, ImportError> {
    let info: Info = serde_json::from_str(json)?;
    if let Some(code) = info.errcode.filter(|c| *c != 0) {
        return Err(ImportError::Api(code, info.errmsg.unwrap_or_default()));
    }
    let window = WindowConfig::default();
    // The directory as it is; when it does not compile, the import is checked on its own.
    let before =
        RuleSet::from_sources(existing.clone(), &window).ok().filter(|_| !existing.is_empty());
    let mut warnings = Vec::new();
    let mut rules = 0usize;
    let mut out = String::from(
        "# Imported from the admin panel's auto-reply settings (get_current_autoreply_info).\n\
         # Check with `kefu rules check`; try a message with `kefu simulate --text ...`.\n\
         # Image, voice and video ids from that API are temporary material that expires after\n\
         # 3 days: upload permanent material and put its media ids here.\n",
    );
    let mut names = Names::default();
    if let Some(b) = &before {
        names.0.extend(b.set.names().map(str::to_string));
    }
    // Probes for the generated tests: (input, expected rule).
    let mut probes: Vec<(Probe, String)> = Vec::new();

    match (&info.add_friend_autoreply_info, info.is_add_friend_reply_open) {
        (Some(r), 1) => {
            let name = names.take("follow-reply");
            let mut body = String::from("[rule.when]\nevent = \"subscribe\"\n");
            if reply(&mut body, r, &name, &mut warnings) {
                out.push_str("\n# 关注后自动回复: the reply to a new follower.\n");
                rule_header(&mut out, &name, FOLLOW_PRIORITY, None);
                out.push_str(&body);
                probes.push((Probe::Event("subscribe".into()), name));
                rules += 1;
            } else {
                let _ = writeln!(
                    out,
                    "\n# The follow reply has nothing importable:\n{}",
                    comment_out(&body)
                );
            }
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
                let list: Vec<String> = words.iter().map(|w| toml_str(w)).collect();
                let mut body = format!("[rule.when]\n{cond} = [{}]\n", list.join(", "));
                let mut any = false;
                for r in &rule.reply_list_info {
                    any |= reply(&mut body, r, &name, &mut warnings);
                }
                if !any {
                    let _ = writeln!(
                        out,
                        "\n# rule {name:?} has no importable reply: not imported\n{}",
                        comment_out(&body)
                    );
                    continue;
                }
                rule_header(&mut out, &name, KEYWORD_PRIORITY, mode);
                out.push_str(&body);
                probes.push((Probe::Text(words[0].to_string()), name));
                rules += 1;
            }
            if equal.is_empty() && contain.is_empty() {
                let _ = writeln!(out, "# rule {base:?} has no text keyword: not imported");
            }
        }
    }

    match (&info.message_default_autoreply_info, info.is_autoreply_open) {
        (Some(r), 1) => {
            let name = names.take("default-reply");
            let mut body = String::from(
                "[rule.when]\nmsg_type = [\"text\", \"image\", \"voice\", \"video\", \
                 \"shortvideo\", \"location\", \"link\"]\n",
            );
            if reply(&mut body, r, &name, &mut warnings) {
                out.push_str(
                    "\n# 消息自动回复: the reply to any other message. The panel sent it at most once\n\
                     # an hour per follower; this rule answers every message no other rule takes.\n",
                );
                rule_header(&mut out, &name, DEFAULT_PRIORITY, None);
                out.push_str(&body);
                probes.push((Probe::Text("kefu import probe: no keyword here".into()), name));
                rules += 1;
            } else {
                let _ = writeln!(
                    out,
                    "\n# The default reply has nothing importable:\n{}",
                    comment_out(&body)
                );
            }
        }
        (Some(_), _) => {
            out.push_str("\n# The default reply is switched off in the panel: not imported.\n")
        }
        (None, _) => {}
    }

    if rules == 0 {
        let mut found = Vec::new();
        match (&info.add_friend_autoreply_info, info.is_add_friend_reply_open) {
            (None, _) => found.push("no follow reply"),
            (Some(_), 1) => found.push("a follow reply with no importable content"),
            (Some(_), _) => found.push("a follow reply switched off in the panel"),
        }
        match (&info.message_default_autoreply_info, info.is_autoreply_open) {
            (None, _) => found.push("no default reply"),
            (Some(_), 1) => found.push("a default reply with no importable content"),
            (Some(_), _) => found.push("a default reply switched off in the panel"),
        }
        match info.keyword_autoreply_info.as_ref().map_or(0, |k| k.list.len()) {
            0 => found.push("no keyword rule"),
            _ => found.push("keyword rules without a text keyword or an importable reply"),
        }
        let mut why = found.join(", ");
        for w in &warnings {
            why.push_str("; ");
            why.push_str(w);
        }
        return Err(ImportError::Nothing(format!(
            "the settings hold {why}. Check that the file is the whole answer of \
             get_current_autoreply_info"
        )));
    }

    let (tests, changed) = tests_for(&out, name, existing, before.as_ref(), probes);
    out.push_str(&tests);
    warnings.extend(changed);
    Ok(Imported { text: out, rules, warnings })
}

/// A block of TOML as comments (a rule left out, kept for the operator to finish by hand).
fn comment_out(body: &str) -> String {
    body.lines().map(|l| format!("# {l}\n")).collect()
}

enum Probe {
    Text(String),
    Event(String),
}

/// Writes a `[[test]]` for each probe the generated rules answer as intended, and a comment
/// for each they do not (another rule takes the keyword first — in this file or beside it), so
/// the operator sees it. Also returns one warning per existing test that passed before and
/// fails with the imported rules in the directory.
fn tests_for(
    rules_text: &str,
    name: &Path,
    existing: Vec<(PathBuf, String)>,
    before: Option<&super::Loaded>,
    probes: Vec<(Probe, String)>,
) -> (String, Vec<String>) {
    let mut out = String::new();
    let mut changed = Vec::new();
    let mut sources = if before.is_some() { existing } else { Vec::new() };
    sources.push((name.to_path_buf(), rules_text.to_string()));
    let loaded = RuleSet::from_sources(sources, &WindowConfig::default());
    let Ok(loaded) = loaded else { return (out, changed) };
    if let Some(before) = before {
        for t in &before.tests {
            let (was, now) = (t.run(&before.set), t.run(&loaded.set));
            if was.passed && !now.passed {
                changed.push(format!(
                    "{}:{}: the test of {} expects [{}] but with the imported rules [{}] fire: \
                     an imported keyword takes it; change that rule's priority or keyword, or \
                     the test",
                    t.path.display(),
                    t.line,
                    t.describe(),
                    t.expect.join(", "),
                    now.fired.join(", ")
                ));
            }
        }
    }
    out.push_str("\n# Tests: run by `kefu rules check`.\n");
    for (probe, name) in probes {
        let (input, line) = match &probe {
            Probe::Text(t) => (input::text(TEST_OPENID, t), format!("text = {}", toml_str(t))),
            Probe::Event(e) => {
                (input::event(TEST_OPENID, e, None), format!("event = {}", toml_str(e)))
            }
        };
        let input = match input {
            Ok(i) => i,
            Err(why) => {
                let _ = writeln!(out, "# note: no test for {line}: {why}\n");
                continue;
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
    (out, changed)
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

/// Writes one reply; false (and a comment, and a warning) when it cannot be imported.
fn reply(out: &mut String, r: &PanelReply, rule: &str, warnings: &mut Vec<String>) -> bool {
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
        // The panel gives a video as the download URL of its file, which no message can carry
        // as a media id.
        "video" if is_url(&r.content) => {
            let _ = writeln!(
                out,
                "# a video reply was left out: the panel gives only its download URL\n\
                 #   {}\n\
                 # upload it as permanent material, then add\n\
                 # video = {{ media_id = \"...\", thumb_media_id = \"...\", title = \"...\" }}",
                r.content.trim().replace('\n', " ")
            );
            warnings.push(format!(
                "rule {rule:?}: a video reply was left out: the panel gives only the video's \
                 download URL (written in a comment), not a media id; upload the video as \
                 permanent material and add a `video` reply with its media_id"
            ));
            return false;
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
            None => {
                out.push_str("# a news reply without articles: not imported\n");
                warnings.push(format!("rule {rule:?}: a news reply without articles was left out"));
                return false;
            }
        },
        other => {
            let _ = writeln!(out, "# a reply of type {other:?} is not supported: not imported");
            warnings.push(format!(
                "rule {rule:?}: a reply of type {other:?} is not supported and was left out"
            ));
            return false;
        }
    }
    true
}

fn is_url(s: &str) -> bool {
    let s = s.trim();
    s.starts_with("http://") || s.starts_with("https://")
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
    fn nothing_to_import_is_an_error() {
        for json in [
            "{}",
            r#"{"is_add_friend_reply_open":0,"add_friend_autoreply_info":{"type":"text","content":"x"}}"#,
            r#"{"keyword_autoreply_info":{"list":[]}}"#,
        ] {
            let e = import_autoreply(json).unwrap_err();
            assert!(matches!(e, ImportError::Nothing(_)), "{json}: {e}");
            assert!(e.to_string().starts_with("nothing to import: the settings hold "), "{e}");
        }
    }

    #[test]
    fn a_video_url_is_left_out_but_a_media_id_is_kept() {
        let json = |content: &str| {
            serde_json::json!({
                "is_add_friend_reply_open": 1,
                "add_friend_autoreply_info": {"type": "video", "content": content},
                "keyword_autoreply_info": {"list": [{
                    "rule_name": "k", "keyword_list_info": [{"match_mode": "equal", "content": "a"}],
                    "reply_list_info": [{"type": "text", "content": "t"}]
                }]}
            })
            .to_string()
        };
        let i =
            import_beside(&json("https://v.qq.com/x.mp4?vkey=1"), Vec::new(), Path::new("i.toml"))
                .unwrap();
        assert!(!i.text.contains("media_id = \"https"), "{}", i.text);
        assert!(i.text.contains("#   https://v.qq.com/x.mp4?vkey=1"), "{}", i.text);
        assert_eq!(i.rules, 1, "only the keyword rule");
        assert!(i.warnings[0].contains("\"follow-reply\": a video reply was left out"));
        let i = import_beside(&json("VIDEO_MEDIA_ID"), Vec::new(), Path::new("i.toml")).unwrap();
        assert!(i.text.contains("video = { media_id = \"VIDEO_MEDIA_ID\" }"), "{}", i.text);
        assert_eq!(i.rules, 2);
    }

    #[test]
    fn beside_other_files_names_are_not_reused_and_priorities_stay_below() {
        let existing = vec![(
            PathBuf::from("r/10-mine.toml"),
            "[[rule]]\nname = \"follow-reply\"\npriority = 100\n[rule.when]\nevent = \"subscribe\"\n\
             [[rule.reply]]\ntext = \"mine\"\n"
                .to_string(),
        )];
        let json = r#"{"is_add_friend_reply_open":1,"add_friend_autoreply_info":{"type":"text","content":"panel"}}"#;
        let i = import_beside(json, existing, Path::new("r/20-imported.toml")).unwrap();
        assert!(i.text.contains("name = \"follow-reply (2)\"\npriority = 90"), "{}", i.text);
        assert!(
            i.text.contains("# note: event = \"subscribe\" is answered by [follow-reply]"),
            "{}",
            i.text
        );
        assert!(!i.text.contains("[[test]]"), "no test that would fail: {}", i.text);
    }

    #[test]
    fn duplicate_names_get_suffixes() {
        let mut n = Names::default();
        assert_eq!(n.take("a"), "a");
        assert_eq!(n.take("a"), "a (2)");
        assert_eq!(n.take("a"), "a (3)");
    }
}
