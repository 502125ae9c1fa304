//! The rule engine: every condition, every reply kind, ordering and `continue`, random_one,
//! placeholders, the exact diagnostics, `rules check` / `import` / `simulate`, and reload
//! while other threads evaluate.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kefu::config::WindowConfig;
use kefu::model::{
    Action, Article, MenuItem, OutMessage, OutboxAction, PassiveReply, PlannedAction, RuleInput,
};
use kefu::rules::{self, Diagnostic, RuleSet, Rules};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// The rule input of a text message, as `[[test]] text` and `kefu simulate --text` see it.
fn text_input(from: &str, text: &str) -> kefu::model::RuleInput {
    rules::input::text(from, text).expect("a text push")
}

/// The rule input of an event, as `[[test]] event` and `kefu simulate --event` see it.
fn event_input(from: &str, event: &str, key: Option<&str>) -> kefu::model::RuleInput {
    rules::input::event(from, event, key).expect("an event push")
}

const U: &str = "oUser0000000000000000000001";

fn compile(files: &[(&str, &str)]) -> Result<rules::Loaded, Vec<Diagnostic>> {
    let sources = files.iter().map(|(p, t)| (PathBuf::from(p), t.to_string())).collect();
    RuleSet::from_sources(sources, &WindowConfig::default())
}

fn set(src: &str) -> RuleSet {
    match compile(&[("t.toml", src)]) {
        Ok(l) => l.set,
        Err(d) => panic!("{}", d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

fn fired(set: &RuleSet, input: &RuleInput) -> Vec<String> {
    set.evaluate(input).fired
}

fn text(t: &str) -> RuleInput {
    text_input(U, t)
}

fn send(rule: &str, message: OutMessage) -> PlannedAction {
    PlannedAction {
        rule: rule.into(),
        action: Action::Send { message },
        delay: Duration::ZERO,
        kf_account: None,
        source: Default::default(),
    }
}

fn txt(s: &str) -> OutMessage {
    OutMessage::Text { content: s.into() }
}

// ---------------------------------------------------------------------------------------------
// Conditions

#[test]
fn each_condition_matches_and_refuses() {
    let s = set(r#"
[[rule]]
name = "msg_type"
[rule.when]
msg_type = "image"

[[rule]]
name = "contains"
[rule.when]
text_contains = ["退款", "Refund"]

[[rule]]
name = "equals"
[rule.when]
text_equals = "Hello"

[[rule]]
name = "regex"
[rule.when]
text_regex = '^\d{4}$'

[[rule]]
name = "event"
[rule.when]
event = "LOCATION"

[[rule]]
name = "event_key"
[rule.when]
event = "CLICK"
event_key = ["A", "B"]

[[rule]]
name = "event_key_regex"
[rule.when]
event_key_regex = '^ITEM_\d+$'

[[rule]]
name = "scene"
[rule.when]
scene = "42"

[[rule]]
name = "menu_choice"
[rule.when]
menu_choice = "101"

[[rule]]
name = "from"
[rule.when]
from = ["oVip00000000000000000000001"]
"#);
    let image = RuleInput { msg_type: "image".into(), from: U.into(), ..Default::default() };
    assert_eq!(fired(&s, &image), ["msg_type"]);
    assert_eq!(fired(&s, &text("我要退款了")), ["contains"]);
    // ASCII letters in keywords fold case.
    assert_eq!(fired(&s, &text("please REFUND me")), ["contains"]);
    // text_equals: trimmed, case-insensitive, and the whole text.
    assert_eq!(fired(&s, &text("  hELLo \n")), ["equals"]);
    assert!(fired(&s, &text("hello there")).is_empty());
    assert_eq!(fired(&s, &text("2024")), ["regex"]);
    assert!(fired(&s, &text("20245")).is_empty());
    assert_eq!(fired(&s, &event_input(U, "LOCATION", None)), ["event"]);
    assert_eq!(fired(&s, &event_input(U, "CLICK", Some("B"))), ["event_key"]);
    assert!(fired(&s, &event_input(U, "CLICK", Some("C"))).is_empty());
    assert_eq!(fired(&s, &event_input(U, "scancode_push", Some("ITEM_7"))), ["event_key_regex"]);
    assert_eq!(fired(&s, &event_input(U, "subscribe", Some("qrscene_42"))), ["scene"]);
    assert_eq!(fired(&s, &event_input(U, "SCAN", Some("42"))), ["scene"]);
    assert!(fired(&s, &event_input(U, "subscribe", Some("42"))).is_empty());
    let mut choice = text("满意");
    choice.menu_choice = Some("101".into());
    assert_eq!(fired(&s, &choice), ["menu_choice"]);
    assert_eq!(fired(&s, &text_input("oVip00000000000000000000001", "x")), ["from"]);
    // Text conditions never match an event, which has no text.
    assert!(fired(&s, &event_input(U, "VIEW", Some("https://x"))).is_empty());
}

#[test]
fn all_conditions_must_hold_and_a_list_means_any() {
    let s = set(r#"
[[rule]]
name = "vip-refund"
[rule.when]
msg_type = ["text", "voice"]
text_contains = ["退款", "退货"]
from = "oVip00000000000000000000001"
"#);
    let vip = "oVip00000000000000000000001";
    assert_eq!(fired(&s, &text_input(vip, "退货")), ["vip-refund"]);
    let mut voice = text_input(vip, "语音说退款");
    voice.msg_type = "voice".into();
    assert_eq!(fired(&s, &voice), ["vip-refund"]);
    assert!(fired(&s, &text("退货")).is_empty(), "wrong sender");
    assert!(fired(&s, &text_input(vip, "你好")).is_empty(), "no keyword");
}

#[test]
fn no_when_matches_every_push_including_events() {
    let s = set("[[rule]]\nname = \"all\"\n");
    assert_eq!(fired(&s, &text("x")), ["all"]);
    assert_eq!(fired(&s, &event_input(U, "unsubscribe", None)), ["all"]);
    assert_eq!(fired(&s, &event_input(U, "payment", None)), ["all"]);
}

// ---------------------------------------------------------------------------------------------
// Replies

#[test]
fn each_reply_kind_maps_to_its_action() {
    let s = set(r#"
[[rule]]
name = "r"
[[rule.reply]]
text = "t"
[[rule.reply]]
image = "IMG"
[[rule.reply]]
voice = "VOICE"
[[rule.reply]]
video = { media_id = "V", thumb_media_id = "TH", title = "标题", description = "d" }
[[rule.reply]]
music = { title = "m", description = "md", musicurl = "http://m", hqmusicurl = "http://hq", thumb_media_id = "MT" }
[[rule.reply]]
news = { title = "n", description = "nd", url = "https://u", picurl = "https://p" }
[[rule.reply]]
mpnews = "MPNEWS"
[[rule.reply]]
mpnewsarticle = "ART"
[[rule.reply]]
menu = { head = "h", items = [{ id = "1", content = "a" }, { id = "2", content = "b" }], tail = "t" }
[[rule.reply]]
wxcard = "CARD"
[[rule.reply]]
miniprogram = { title = "mp", appid = "wx0000000000000000", pagepath = "pages/i", thumb_media_id = "MPT" }
[[rule.reply]]
typing = true
delay = "1m30s"
[[rule.reply]]
text = "later"
delay = "30s"
as = "kf01@gh_acct"
[[rule.reply]]
transfer = "kf02@gh_acct"
[[rule.reply]]
transfer = true
"#);
    let ev = s.evaluate(&text("x"));
    let m = |message| send("r", message);
    let s2 = |x: &str| x.to_string();
    let expected = vec![
        m(txt("t")),
        m(OutMessage::Image { media_id: s2("IMG") }),
        m(OutMessage::Voice { media_id: s2("VOICE") }),
        m(OutMessage::Video {
            media_id: s2("V"),
            thumb_media_id: s2("TH"),
            title: s2("标题"),
            description: s2("d"),
        }),
        m(OutMessage::Music {
            title: s2("m"),
            description: s2("md"),
            musicurl: s2("http://m"),
            hqmusicurl: s2("http://hq"),
            thumb_media_id: s2("MT"),
        }),
        m(OutMessage::News {
            articles: vec![Article {
                title: s2("n"),
                description: s2("nd"),
                url: s2("https://u"),
                picurl: s2("https://p"),
            }],
        }),
        m(OutMessage::MpNews { media_id: s2("MPNEWS") }),
        m(OutMessage::MpNewsArticle { article_id: s2("ART") }),
        m(OutMessage::MsgMenu {
            head_content: s2("h"),
            list: vec![
                MenuItem { id: s2("1"), content: s2("a") },
                MenuItem { id: s2("2"), content: s2("b") },
            ],
            tail_content: s2("t"),
        }),
        m(OutMessage::WxCard { card_id: s2("CARD") }),
        m(OutMessage::MiniProgramPage {
            title: s2("mp"),
            appid: s2("wx0000000000000000"),
            pagepath: s2("pages/i"),
            thumb_media_id: s2("MPT"),
        }),
        PlannedAction {
            rule: s2("r"),
            action: Action::Typing,
            delay: Duration::from_secs(90),
            kf_account: None,
            source: Default::default(),
        },
        PlannedAction {
            delay: Duration::from_secs(30),
            kf_account: Some(s2("kf01@gh_acct")),
            ..m(txt("later"))
        },
        PlannedAction {
            action: Action::Transfer { kf_account: Some(s2("kf02@gh_acct")) },
            ..m(txt(""))
        },
        PlannedAction { action: Action::Transfer { kf_account: None }, ..m(txt("")) },
    ];
    assert_eq!(ev.actions, expected);

    // The transfer is the passive answer (the first one), and no message is.
    let (passive, rest) = ev.split_passive(true);
    assert_eq!(
        passive.map(|p| p.reply),
        Some(PassiveReply::Transfer { kf_account: Some(s2("kf02@gh_acct")) })
    );
    assert_eq!(rest.len(), 13);
    // No transfer is planned: `rest` holds outbox actions, which have no transfer variant.
}

#[test]
fn passive_first_takes_the_first_immediate_passive_kind_for_events_too() {
    let s = set(r#"
[[rule]]
name = "welcome"
[rule.when]
event = "subscribe"
[[rule.reply]]
text = "delayed"
delay = "2s"
[[rule.reply]]
menu = { items = [{ id = "1", content = "a" }] }
[[rule.reply]]
image = "IMG"
[[rule.reply]]
text = "after"
"#);
    let (p, rest) = s.evaluate(&event_input(U, "subscribe", None)).split_passive(true);
    assert_eq!(
        p.map(|p| p.reply),
        Some(PassiveReply::Message { message: OutMessage::Image { media_id: "IMG".into() } })
    );
    let kinds: Vec<_> = rest
        .iter()
        .map(|a| match &a.action {
            OutboxAction::Send { message } => message.msgtype(),
            OutboxAction::Typing => "other",
        })
        .collect();
    assert_eq!(kinds, ["text", "msgmenu", "text"]);
    let (p, rest) = s.evaluate(&event_input(U, "subscribe", None)).split_passive(false);
    assert_eq!(p.map(|p| p.reply), None);
    assert_eq!(rest.len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Ordering

#[test]
fn priority_then_file_name_then_order_and_continue() {
    let a = r#"
[[rule]]
name = "a-low"
priority = -1
continue = true
[[rule.reply]]
text = "a-low"

[[rule]]
name = "a-first"
continue = true
[[rule.reply]]
text = "a-first"

[[rule]]
name = "a-second"
continue = true
[[rule.reply]]
text = "a-second"
"#;
    let b = r#"
[[rule]]
name = "b-high"
priority = 5
continue = true
[[rule.reply]]
text = "b-high"

[[rule]]
name = "b-stop"
[[rule.reply]]
text = "b-stop"

[[rule]]
name = "b-never"
priority = -5
"#;
    // Given out of order: files sort by name.
    let l = compile(&[("dir/b.toml", b), ("dir/a.toml", a)]).expect("loads");
    let ev = l.set.evaluate(&text("x"));
    assert_eq!(ev.fired, ["b-high", "a-first", "a-second", "b-stop"]);
    let texts: Vec<_> = ev
        .actions
        .iter()
        .map(|a| match &a.action {
            Action::Send { message: OutMessage::Text { content } } => content.as_str(),
            _ => "?",
        })
        .collect();
    assert_eq!(texts, ["b-high", "a-first", "a-second", "b-stop"]);
    // a-low and b-never come after b-stop, which has no `continue`: both reported.
    let w: Vec<String> = l.warnings.iter().map(|d| d.to_string()).collect();
    assert_eq!(w.len(), 2, "{w:?}");
    assert!(
        w[0].starts_with("dir/a.toml:3:8: warning: rule `a-low` can never fire: rule `b-stop`")
    );
    assert!(w[1].starts_with("dir/b.toml:15:8: warning: rule `b-never` can never fire"));
}

#[test]
fn random_one_sends_exactly_one_reply_chosen_by_the_rng() {
    let s = set(r#"
[[rule]]
name = "dice"
reply_mode = "random_one"
[[rule.reply]]
text = "one"
[[rule.reply]]
text = "two"
[[rule.reply]]
text = "three"
"#);
    let pick = |seed| {
        let ev = s.evaluate_with(&text("x"), &mut StdRng::seed_from_u64(seed));
        assert_eq!(ev.actions.len(), 1);
        match &ev.actions[0].action {
            Action::Send { message: OutMessage::Text { content } } => content.clone(),
            other => panic!("{other:?}"),
        }
    };
    // The same seed gives the same pick; many seeds reach every reply.
    assert_eq!(pick(7), pick(7));
    let mut seen: Vec<String> = (0..64).map(pick).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen, ["one", "three", "two"]);
}

// ---------------------------------------------------------------------------------------------
// Placeholders

#[test]
fn placeholders_captures_and_variables() {
    let s = set(r#"
[[rule]]
name = "order"
[rule.when]
text_regex = ['^查(?P<what>订单|物流)\s*(\d+)$']
[[rule.reply]]
text = "{openid} asked {text}: {what} #{2} ({0}) {{literal}}"

[[rule]]
name = "qr"
[rule.when]
event_key_regex = '^qrscene_(?P<campaign>[a-z]+)_(\d+)$'
[[rule.reply]]
text = "scene={scene} key={event_key} campaign={campaign} n={2}"

[[rule]]
name = "paid"
[rule.when]
event = "payment"
[[rule.reply]]
text = "paid {amount} for {out_trade_no}{missing}"
"#);
    let ev = s.evaluate(&text("查物流 12345"));
    assert_eq!(
        ev.actions,
        [send(
            "order",
            txt(&format!("{U} asked 查物流 12345: 物流 #12345 (查物流 12345) {{literal}}"))
        )]
    );
    let ev = s.evaluate(&event_input(U, "subscribe", Some("qrscene_spring_7")));
    assert_eq!(
        ev.actions,
        [send("qr", txt("scene=spring_7 key=qrscene_spring_7 campaign=spring n=7"))]
    );
    let mut pay = event_input(U, "payment", None);
    pay.vars = vec![("amount".into(), "9.90".into()), ("out_trade_no".into(), "T1".into())];
    assert_eq!(s.evaluate(&pay).actions, [send("paid", txt("paid 9.90 for T1"))]);
}

// ---------------------------------------------------------------------------------------------
// Diagnostics

fn fixture(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rules").join(p)
}

#[test]
fn every_error_is_reported_at_once_with_its_position() {
    let dir = fixture("broken");
    let diags = RuleSet::load_dir(&dir, &WindowConfig::default()).expect_err("must not load");
    let a = dir.join("a.toml").display().to_string();
    let b = dir.join("b.toml").display().to_string();
    let c = dir.join("c.toml").display().to_string();
    let got: Vec<String> = diags.iter().map(|d| d.to_string()).collect();
    let want = vec![
        format!(
            "{a}:5:1: unknown key `prio` in [[rule]], expected one of `name`, `priority`, \
             `continue`, `reply_mode`, `when`, `reply`"
        ),
        format!("{a}:8:14: bad regex `(unclosed` in text_regex: unclosed group"),
        format!(
            "{a}:9:12: unknown msg_type `txt`: use text, image, voice, video, shortvideo, \
             location, link or event"
        ),
        format!(
            "{a}:10:9: unknown event `click`: events are case-sensitive, did you mean `CLICK`?"
        ),
        format!(
            "{a}:11:8: empty list for `from` never matches: give at least one value or remove \
             the condition"
        ),
        format!(
            "{a}:13:1: unknown reply kind `txt` in [[rule.reply]], expected one of `text`, \
             `image`, `voice`, `video`, `music`, `news`, `mpnews`, `mpnewsarticle`, `menu`, \
             `wxcard`, `miniprogram`, `typing`, `transfer`, `forward`, `fallback`, `delay`, `as`"
        ),
        format!("{a}:16:9: bad duration `soon` in delay: use humantime like 30s, 2m, 1h30m"),
        format!(
            "{a}:19:9: delay 72h is longer than the longest window (48h): it could never be \
             sent; shorten it or lengthen a [window] quota in the config"
        ),
        format!(
            "{a}:26:8: placeholder {{2}} is not provided: this rule's regexes capture only {{0}} \
             to {{1}}"
        ),
        format!(
            "{a}:26:8: placeholder {{who}} is not provided: use {{openid}}, {{text}}, \
             {{event_key}}, {{scene}}, a capture group of this rule's text_regex or \
             event_key_regex, or a payment variable in a rule with event = \"payment\"; write \
             {{{{ for a literal brace"
        ),
        format!(
            "{a}:27:6: `as` must be a kf account prefix@wechat_id with a prefix of 1 to 10 \
             letters, digits or '_' (got \"kf01\")"
        ),
        format!(
            "{a}:30:9: a reply has one kind, this one has 2 (text, image): split it into \
             separate [[rule.reply]] tables"
        ),
        format!("{a}:32:12: a transfer cannot be delayed: it is the answer to the push itself"),
        format!("{a}:35:1: a [[test]] takes `text` or `event`, not both"),
        format!("{b}:2:8: duplicate rule name `refund`: already used at {a}:4:8"),
        format!("{b}:4:10: typing = false does nothing: remove this reply"),
        format!(
            "{b}:6:2: unknown top-level key `rules`: a rule file holds only [[rule]] and [[test]]"
        ),
        format!("{c}:1:7: TOML syntax error: invalid table header; expected `.`, `]]`"),
    ];
    assert_eq!(got, want);
}

#[test]
fn more_error_messages() {
    let cases: &[(&str, &str)] = &[
        ("[[rule]]\nname = \"\"\n", "t.toml:2:8: a rule name must not be empty"),
        (
            "[[rule]]\nname = \"r\"\n[[rule.reply]]\ndelay = \"1s\"\n",
            "t.toml:4:9: a reply needs one kind: text, image, voice, video, music, news, mpnews, \
             mpnewsarticle, menu, wxcard, miniprogram, typing, transfer or forward",
        ),
        (
            "[[rule]]\nname = \"r\"\n[rule.when]\ntext_contains = [\"\"]\n",
            "t.toml:4:18: an empty keyword matches every text: remove it (a rule without \
             text_contains matches any text)",
        ),
        (
            "[[rule]]\nname = \"r\"\n[[rule.reply]]\ntransfer = \"nobody\"\n",
            "t.toml:4:12: `transfer` must be a kf account prefix@wechat_id with a prefix of 1 to \
             10 letters, digits or '_' (got \"nobody\")",
        ),
        (
            "[[rule]]\nname = \"r\"\nreply_mode = \"some\"\n",
            "t.toml:3:14: `reply_mode`: unknown variant `some`, expected `all` or `random_one`",
        ),
        (
            "[[rule]]\nname = \"r\"\npriority = \"high\"\n",
            "t.toml:3:12: `priority`: invalid type: string \"high\", expected i64",
        ),
        (
            "[[test]]\nexpect = []\n",
            "t.toml:1:1: a [[test]] needs `text` or `event` (with optional `key`)",
        ),
        (
            "[[rule]]\nname = \"r\"\n[rule.when]\nevent_key_regex = \"[\"\n",
            "t.toml:4:19: bad regex `[` in event_key_regex: unclosed character class",
        ),
    ];
    for (src, want) in cases {
        let got = compile(&[("t.toml", src)]).expect_err(src);
        let got: Vec<String> = got.iter().map(|d| d.to_string()).collect();
        assert_eq!(got, [want.to_string()], "for {src:?}");
    }
}

#[test]
fn unreachable_rules_are_warnings() {
    let dir = fixture("shadowed");
    let l = RuleSet::load_dir(&dir, &WindowConfig::default()).expect("warnings only");
    let a = dir.join("a.toml").display().to_string();
    let b = dir.join("b.toml").display().to_string();
    let got: Vec<String> = l.warnings.iter().map(|d| d.to_string()).collect();
    assert_eq!(
        got,
        [
            format!(
                "{a}:8:8: warning: rule `after-catch-all` can never fire: rule `anything` \
                 ({a}:2:8) comes first, matches every push, and has no `continue = true`"
            ),
            format!(
                "{b}:10:8: warning: rule `refund-urgent` can never fire: rule `refund` ({b}:2:8) \
                 comes first, matches every push it matches, and has no `continue = true`"
            ),
            format!(
                "{b}:26:8: warning: rule `click-contact` can never fire: rule `click-any` \
                 ({b}:18:8) comes first, matches every push it matches, and has no \
                 `continue = true`"
            ),
        ]
    );
    assert_eq!(l.set.len(), 8);
}

// ---------------------------------------------------------------------------------------------
// Commands

fn kefu(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kefu"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("KEFU_RULES_DIR")
        .env_remove("KEFU_RULES_PASSIVE_FIRST")
        .output()
        .expect("run kefu");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        crate::helpers::without_config_line(&String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn the_example_rules_pass_their_own_tests() {
    let (code, out, err) = kefu(&["rules", "check", "rules"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().all(|l| l.starts_with("ok   ") || l.contains("tests:")), "{out}");
    assert!(out.ends_with("11 rules in 6 files; 17 tests: 17 passed, 0 failed\n"), "{out}");
}

#[test]
fn rules_check_fails_on_errors_and_on_failed_tests() {
    let (code, out, err) = kefu(&["rules", "check", "tests/fixtures/rules/broken"]);
    assert_eq!(code, 1);
    assert_eq!(out.lines().count(), 18, "{out}");
    assert!(out.starts_with("tests/fixtures/rules/broken/a.toml:5:1: unknown key `prio`"), "{out}");
    assert_eq!(err, "kefu: the rules in tests/fixtures/rules/broken do not load: 18 errors\n");

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("r.toml"),
        "[[rule]]\nname = \"hi\"\n[rule.when]\ntext_equals = \"hi\"\n\n\
         [[test]]\ntext = \"hi\"\nexpect = [\"hi\"]\n\n[[test]]\ntext = \"ho\"\nexpect = \"hi\"\n",
    )
    .expect("write");
    let d = dir.path().display().to_string();
    let (code, out, err) = kefu(&["rules", "check", &d]);
    assert_eq!(code, 1);
    assert_eq!(
        out,
        format!(
            "ok   {d}/r.toml:6:1 text \"hi\" -> [hi]\n\
             FAIL {d}/r.toml:10:1 text \"ho\": expected [hi], fired []\n\
             1 rules in 1 files; 2 tests: 1 passed, 1 failed\n"
        )
    );
    assert_eq!(err, "kefu: 1 of 2 rule tests failed\n");

    let (code, out, _) = kefu(&["rules", "check", &d, "--json"]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["ok"], false);
    assert_eq!(v["tests"][1]["fired"], serde_json::json!([]));
    assert_eq!(v["tests"][0]["passed"], true);
}

#[test]
fn import_of_the_admin_panel_settings_passes_rules_check() {
    let json = std::fs::read_to_string(fixture("autoreply.json")).expect("fixture");
    let toml = rules::import::import_autoreply(&json).expect("imports");
    let l = compile(&[("imported.toml", &toml)]).expect("the import compiles");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.tests.len(), 7);
    for t in &l.tests {
        let o = t.run(&l.set);
        assert!(o.passed, "{o}");
    }
    // The panel's semantics, rule by rule.
    assert_eq!(fired(&l.set, &event_input(U, "subscribe", None)), ["follow-reply"]);
    assert_eq!(
        l.set.evaluate(&event_input(U, "subscribe", None)).actions,
        [send("follow-reply", txt("Thanks for your attention! {welcome}"))]
    );
    assert_eq!(fired(&l.set, &text("看看news测试吧")), ["autoreply-news"]);
    assert_eq!(fired(&l.set, &text(" 你好 ")), ["autoreply-text (exact)"]);
    assert_eq!(fired(&l.set, &text("你好呀")), ["default-reply"]);
    assert!(fired(&l.set, &event_input(U, "CLICK", Some("K"))).is_empty());
    let img = l.set.evaluate(&text("图片")).actions;
    assert_eq!(img.len(), 2);
    assert_eq!(
        img[0],
        send("autoreply-img", OutMessage::Image { media_id: "IMG_MEDIA_ID".into() })
    );
    let news = l.set.evaluate(&text("news测试")).actions;
    assert_eq!(
        news,
        [send(
            "autoreply-news",
            OutMessage::News {
                articles: vec![Article {
                    title: "it's news".into(),
                    description: "it's digest".into(),
                    url: "http://mp.weixin.qq.com/s?__biz=MjM5&mid=1#rd".into(),
                    picurl: "http://mmbiz.qpic.cn/cover.jpg".into(),
                }]
            }
        )]
    );
    // random_one carried over.
    assert_eq!(l.set.evaluate(&text("voice测试")).actions.len(), 1);
}

#[test]
fn simulate_prints_the_passive_reply_and_the_custom_send_bodies() {
    let (code, out, err) =
        kefu(&["simulate", "--rules", "rules", "--text", "订单号 2024050112345678", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["fired"], serde_json::json!(["order-number"]));
    assert_eq!(
        v["passive"]["reply"]["message"]["content"],
        "已收到订单 2024050112345678，客服会在 2 小时内联系您。"
    );
    assert!(
        v["passive"]["xml"].as_str().unwrap_or("").contains("<MsgType><![CDATA[text]]></MsgType>")
    );
    assert_eq!(
        v["messages"],
        serde_json::json!([{
            "rule": "order-number", "delay_ms": 30000, "delay": "30s",
            "kf_account": "kf01@gh_kefu_demo", "endpoint": "/cgi-bin/message/custom/send",
            "body": {"touser": "oSimulatedFollower000000000", "msgtype": "text",
                     "text": {"content": "如需加急，回复「人工」。"},
                     "customservice": {"kf_account": "kf01@gh_kefu_demo"}}
        }])
    );
    let (code, out, _) = kefu(&["simulate", "--rules", "rules", "--event", "VIEW"]);
    assert_eq!(code, 0);
    assert_eq!(out, "no rule fired: the push is answered with `success` and nothing is sent\n");
    let (code, _, err) = kefu(&["simulate", "--rules", "rules", "--xml", "push.xml"]);
    assert_eq!(code, 2);
    assert!(err.starts_with("kefu: --xml push.xml: "), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Reload

/// A rule file whose `n` rules all fire (`continue`) and all say `tag`.
fn versioned(tag: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "[[rule]]\nname = \"r{i}\"\ncontinue = true\n[[rule.reply]]\ntext = \"{tag}\"\n\n"
            )
        })
        .collect()
}

#[test]
fn reload_swaps_atomically_while_other_threads_evaluate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rules.toml");
    std::fs::write(&file, versioned("v1", 40)).expect("write");
    let loaded = RuleSet::load_dir(dir.path(), &WindowConfig::default()).expect("loads");
    let rules = Arc::new(Rules::new(loaded));
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (rules, stop) = (rules.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = [0usize; 2];
                while !stop.load(Ordering::Relaxed) {
                    let ev = rules.current().evaluate(&text_input(U, "x"));
                    let tags: Vec<&str> = ev
                        .actions
                        .iter()
                        .map(|a| match &a.action {
                            Action::Send { message: OutMessage::Text { content } } => {
                                content.as_str()
                            }
                            _ => "?",
                        })
                        .collect();
                    // A whole v1 set (40 rules) or a whole v2 set (25 rules), never a mix.
                    match tags.first().copied() {
                        Some("v1") => {
                            assert_eq!(tags, vec!["v1"; 40]);
                            seen[0] += 1;
                        }
                        Some("v2") => {
                            assert_eq!(tags, vec!["v2"; 25]);
                            seen[1] += 1;
                        }
                        other => panic!("half-swapped or empty set: {other:?}"),
                    }
                }
                seen
            })
        })
        .collect();
    for i in 0..30 {
        let (tag, n) = if i % 2 == 0 { ("v2", 25) } else { ("v1", 40) };
        std::fs::write(&file, versioned(tag, n)).expect("write");
        assert_eq!(rules.reload().expect("reloads"), n);
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let seen = r.join().expect("reader thread passed");
        assert!(seen[0] + seen[1] > 0);
    }
    assert_eq!(rules.status().reloads, 30);
}

#[test]
fn a_broken_edit_keeps_the_old_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rules.toml");
    std::fs::write(&file, versioned("v1", 3)).expect("write");
    let rules = Rules::new(RuleSet::load_dir(dir.path(), &WindowConfig::default()).expect("ok"));
    std::fs::write(&file, "[[rule]]\nname = \"x\"\n[rule.when]\ntext_regex = \"(\"\n")
        .expect("write");
    let errs = rules.reload().expect_err("broken");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0]
            .to_string()
            .ends_with("rules.toml:4:14: bad regex `(` in text_regex: unclosed group")
    );
    assert_eq!(rules.current().len(), 3);
    assert!(!rules.last_reload_ok());
    assert_eq!(rules.status().failures, 1);
    std::fs::write(&file, versioned("v2", 2)).expect("write");
    assert_eq!(rules.reload(), Ok(2));
    assert!(rules.last_reload_ok());
}

#[test]
fn editing_a_file_hot_reloads() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a.toml"), versioned("v1", 1)).expect("write");
    let rules =
        Arc::new(Rules::new(RuleSet::load_dir(dir.path(), &WindowConfig::default()).expect("ok")));
    let _guard = rules.spawn_watcher().expect("watcher");
    std::fs::write(dir.path().join("b.toml"), versioned("v1", 0) + "[[rule]]\nname = \"new\"\n")
        .expect("write");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rules.current().len() != 2 {
        assert!(Instant::now() < deadline, "no reload after a file was added");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(rules.current().names().collect::<Vec<_>>(), ["r0", "new"]);
}
