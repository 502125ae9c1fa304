//! Raw rule files to a [`RuleSet`]: every check that does not need a push (names, regexes,
//! durations, kf accounts, placeholders, reply shapes) runs here, all of them, so one
//! `rules check` shows every mistake. Then the rules are ordered, the matcher is built, and
//! rules that can never fire are found.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use regex::Regex;
use toml::Spanned;

use super::actions::{BUILTINS, Reply, Template};
use super::check::TestCase;
use super::file::{RawMedia, RawReply, RawRule, RawTest, RawTransfer, RawWhen, ReplyMode, StrList};
use super::matcher::{Cond, Exact, Matcher, MatcherBuilder, normalize_equals};
use super::parse::{Located, parse_file};
use super::{Diagnostic, LineIndex, Loaded, Origin, Rule, RuleSet, Severity};
use crate::config::WindowConfig;
use crate::media::{MediaRef, MediaType};
use crate::model::{Action, Article, KfAccount, MenuItem, OutMessage};

const MSG_TYPES: [&str; 8] =
    ["text", "image", "voice", "video", "shortvideo", "location", "link", "event"];

/// Event values a rule may name without a case warning: every event kefu decodes, plus
/// `card_pay_order` (decoded as unknown but real) and kefu's own `payment`. Other values are
/// accepted: WeChat adds events.
fn known_events() -> impl Iterator<Item = &'static str> {
    crate::wechat::inbound::MODELLED_EVENTS.into_iter().chain(["card_pay_order", "payment"])
}

const REPLY_KINDS: &str = "text, image, voice, video, music, news, mpnews, mpnewsarticle, menu, \
                           wxcard, miniprogram, typing, transfer or forward";

/// A rule before ordering.
struct Pre {
    rule: Rule,
    file: usize,
    order: usize,
}

/// Per-file context for diagnostics.
struct Ctx<'a> {
    path: &'a Path,
    text: &'a str,
    lines: LineIndex,
    diags: &'a mut Vec<Diagnostic>,
    /// Media files already checked in this compile, so a file named twice is read once.
    media: &'a mut MediaChecked,
    /// The configured backends (`[backends.NAME]`) a `forward` may name.
    backends: &'a [String],
    /// Compiling a backend's answer: texts are literal (no placeholders) and a reply may not
    /// forward again.
    answer: bool,
}

/// A checked media file by (absolute path, type): its encoded reference and a warning, or the
/// error.
type MediaChecked = HashMap<(PathBuf, MediaType), Result<(String, Option<String>), String>>;

impl Ctx<'_> {
    fn pos(&self, offset: usize) -> (usize, usize) {
        self.lines.line_col(self.text, offset)
    }
    fn err(&mut self, offset: usize, msg: String) {
        self.diags.push(Diagnostic::error(self.path, self.text, offset, msg));
    }
    fn errors(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }
    fn warn(&mut self, offset: usize, msg: String) {
        self.diags.push(Diagnostic::warning(self.path, self.text, offset, msg));
    }
}

pub(crate) fn compile(
    mut sources: Vec<(PathBuf, String)>,
    window: &WindowConfig,
    dir: &Path,
    backends: &[String],
) -> Result<Loaded, Vec<Diagnostic>> {
    // Ties in priority go by file name: sort once, here.
    sources.sort_by(|a, b| a.0.file_name().cmp(&b.0.file_name()).then(a.0.cmp(&b.0)));
    let mut diags = Vec::new();
    let mut builder = MatcherBuilder::default();
    let mut pres = Vec::new();
    let mut tests = Vec::new();
    let mut names: HashMap<String, Origin> = HashMap::new();
    let mut media = MediaChecked::new();

    for (file, (path, text)) in sources.iter().enumerate() {
        let parsed = parse_file(path, text, &mut diags);
        let shared_path: Arc<Path> = Arc::from(path.as_path());
        let mut ctx = Ctx {
            path,
            text,
            lines: LineIndex::new(text),
            diags: &mut diags,
            media: &mut media,
            backends,
            answer: false,
        };
        for (order, Located { item, span }) in parsed.rules.into_iter().enumerate() {
            // Names are claimed before compiling, so a broken rule still claims its name.
            let (line, col) = ctx.pos(item.name.span().start);
            let origin = Origin { path: shared_path.clone(), line, col };
            if let Some(first) = names.get(item.name.get_ref()) {
                let msg = format!(
                    "duplicate rule name `{}`: already used at {first}",
                    item.name.get_ref()
                );
                ctx.err(item.name.span().start, msg);
            } else {
                names.insert(item.name.get_ref().clone(), origin);
            }
            if let Some(rule) =
                compile_rule(item, span.start, &shared_path, window, &mut builder, &mut ctx)
            {
                pres.push(Pre { rule, file, order });
            }
        }
        for Located { item, span } in parsed.tests {
            if let Some(t) = compile_test(item, span.start, &mut ctx) {
                tests.push(t);
            }
        }
    }

    pres.sort_by(|a, b| {
        b.rule.priority.cmp(&a.rule.priority).then(a.file.cmp(&b.file)).then(a.order.cmp(&b.order))
    });
    let rules: Vec<Rule> = pres.into_iter().map(|p| p.rule).collect();
    // Discovery order is parse-then-compile per file; readers want file and line order.
    diags.sort_by(|a, b| (&a.path, a.line, a.col).cmp(&(&b.path, b.line, b.col)));
    if diags.iter().any(Diagnostic::is_error) {
        return Err(diags);
    }
    let conds: Vec<&Cond> = rules.iter().map(|r| &r.cond).collect();
    let keywords = builder.keywords_snapshot();
    let matcher = builder.build(&conds).map_err(|e| {
        let mut d = std::mem::take(&mut diags);
        d.push(Diagnostic::file(dir, Severity::Error, e));
        d
    })?;
    if sources.is_empty() {
        diags.push(Diagnostic::file(
            dir,
            Severity::Warning,
            "no rule files (*.toml): every push will be answered with `success` only".into(),
        ));
    }
    shadow_warnings(&rules, &matcher, &keywords, &mut diags);
    diags.sort_by(|a, b| (&a.path, a.line, a.col).cmp(&(&b.path, b.line, b.col)));
    Ok(Loaded {
        set: RuleSet {
            rules,
            matcher,
            dir: dir.to_path_buf(),
            window: window.clone(),
            files: sources.len(),
            backends: backends.to_vec(),
        },
        warnings: diags,
        tests,
    })
}

fn compile_rule(
    raw: RawRule,
    header: usize,
    path: &Arc<Path>,
    window: &WindowConfig,
    b: &mut MatcherBuilder,
    ctx: &mut Ctx<'_>,
) -> Option<Rule> {
    let name_at = raw.name.span().start;
    let name = raw.name.into_inner();
    let start = ctx.errors();
    if name.trim().is_empty() {
        ctx.err(name_at, "a rule name must not be empty".into());
    }
    let (line, col) = ctx.pos(name_at);
    let origin = Origin { path: path.clone(), line, col };
    // A broken `when` still lets the replies be checked; only placeholder checks are off,
    // since the captures are unknown.
    let (cond, caps) = match raw.when {
        Some(w) => compile_when(w, b, ctx)
            .unwrap_or_else(|| (Cond::default(), Caps { unknown: true, ..Caps::default() })),
        None => (Cond::default(), Caps::default()),
    };
    let pays = cond.exact(Exact::Event).is_some_and(|e| e.iter().any(|v| v == "payment"));
    let can_be_event = cond.is_empty()
        || cond.exact(Exact::Event).is_some()
        || cond.exact(Exact::MsgType).is_some_and(|m| m.iter().any(|v| v == "event"));
    let mut replies = Vec::new();
    for r in raw.reply {
        match compile_reply(r, header, window, &caps, pays, ctx) {
            Some(reply) => {
                if matches!(reply.kind, Action::Transfer { .. }) && can_be_event {
                    ctx.warn(
                        name_at,
                        format!(
                            "rule `{name}` transfers to human service but can match events; \
                             WeChat transfers only user messages: add a msg_type or text condition"
                        ),
                    );
                }
                if matches!(reply.kind, Action::Forward { .. })
                    && replies.iter().any(|r: &Reply| matches!(r.kind, Action::Forward { .. }))
                {
                    ctx.err(
                        name_at,
                        format!(
                            "rule `{name}` forwards twice: a push is forwarded to one backend, \
                             so the second answer would never come; keep one forward"
                        ),
                    );
                }
                replies.push(reply);
            }
            None => continue,
        }
    }
    if ctx.errors() != start {
        return None;
    }
    Some(Rule {
        name,
        origin,
        priority: raw.priority,
        continue_: raw.continue_,
        random_one: raw.reply_mode == ReplyMode::RandomOne,
        cond,
        replies,
    })
}

/// What the rule's regexes can capture, for checking `{1}` / `{name}` placeholders.
#[derive(Default)]
struct Caps {
    max_groups: usize,
    names: Vec<String>,
    /// The conditions did not compile: do not guess what they capture.
    unknown: bool,
}

fn compile_when(w: RawWhen, b: &mut MatcherBuilder, ctx: &mut Ctx<'_>) -> Option<(Cond, Caps)> {
    let start = ctx.errors();
    let mut cond = Cond::default();
    let mut caps = Caps::default();
    let exacts = [
        (Exact::MsgType, "msg_type", w.msg_type),
        (Exact::Event, "event", w.event),
        (Exact::EventKey, "event_key", w.event_key),
        (Exact::Scene, "scene", w.scene),
        (Exact::MenuChoice, "menu_choice", w.menu_choice),
        (Exact::From, "from", w.from),
        (Exact::TextEquals, "text_equals", w.text_equals),
    ];
    for (kind, field, list) in exacts {
        let Some(list) = non_empty(field, list, ctx) else { continue };
        let mut vals = Vec::new();
        for (v, span) in list.iter() {
            match kind {
                Exact::MsgType if !MSG_TYPES.contains(&v) => ctx.err(
                    span.start,
                    format!(
                        "unknown msg_type `{v}`: use text, image, voice, video, shortvideo, \
                         location, link or event"
                    ),
                ),
                Exact::Event if !known_events().any(|k| k == v) => {
                    if let Some(k) = known_events().find(|k| k.eq_ignore_ascii_case(v)) {
                        ctx.err(
                            span.start,
                            format!(
                                "unknown event `{v}`: events are case-sensitive, did you mean \
                                 `{k}`?"
                            ),
                        );
                    }
                }
                _ => {}
            }
            vals.push(if kind == Exact::TextEquals { normalize_equals(v) } else { v.to_string() });
        }
        cond.exact[kind as usize] = Some(vals.into_boxed_slice());
    }
    if let Some(list) = non_empty("text_contains", w.text_contains, ctx) {
        let mut ids = Vec::new();
        for (v, span) in list.iter() {
            if v.is_empty() {
                ctx.err(
                    span.start,
                    "an empty keyword matches every text: remove it (a rule without \
                     text_contains matches any text)"
                        .into(),
                );
            } else {
                ids.push(b.keyword(v));
            }
        }
        cond.text_contains = Some(ids.into_boxed_slice());
    }
    for (field, list, text) in
        [("text_regex", w.text_regex, true), ("event_key_regex", w.event_key_regex, false)]
    {
        let Some(list) = non_empty(field, list, ctx) else { continue };
        let mut ids = Vec::new();
        for (v, span) in list.iter() {
            match Regex::new(v) {
                Ok(re) => {
                    caps.max_groups = caps.max_groups.max(re.captures_len());
                    caps.names.extend(re.capture_names().flatten().map(str::to_string));
                    ids.push(if text { b.text_regex(re) } else { b.key_regex(re) });
                }
                Err(e) => {
                    ctx.err(span.start, format!("bad regex `{v}` in {field}: {}", regex_reason(&e)))
                }
            }
        }
        let ids = Some(ids.into_boxed_slice());
        if text {
            cond.text_regex = ids;
        } else {
            cond.event_key_regex = ids;
        }
    }
    (ctx.errors() == start).then_some((cond, caps))
}

/// An empty list is refused: "any one of nothing" never matches, surely not what was meant.
fn non_empty(field: &str, list: Option<StrList>, ctx: &mut Ctx<'_>) -> Option<StrList> {
    let list = list?;
    if list.items.is_empty() {
        ctx.err(
            list.span.start,
            format!(
                "empty list for `{field}` never matches: give at least one value or remove the \
                 condition"
            ),
        );
        return None;
    }
    Some(list)
}

/// The regex crate's syntax errors are a multi-line drawing; keep the reason line.
fn regex_reason(e: &regex::Error) -> String {
    let s = e.to_string();
    s.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: ").map(str::to_string))
        .unwrap_or_else(|| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn compile_reply(
    r: RawReply,
    header: usize,
    window: &WindowConfig,
    caps: &Caps,
    pays: bool,
    ctx: &mut Ctx<'_>,
) -> Option<Reply> {
    let start = ctx.errors();
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    let tpl = |s: &Spanned<String>, ctx: &mut Ctx<'_>| template(s, caps, pays, ctx);
    let opt = |s: &Option<Spanned<String>>, ctx: &mut Ctx<'_>| match s {
        Some(s) => template(s, caps, pays, ctx),
        None => Template::parse(""),
    };
    let send = |message| Action::Send { message };
    let mut kind = None;
    if let Some(s) = &r.text {
        kinds.push(("text", s.span().start));
        kind = Some(send(OutMessage::Text { content: tpl(s, ctx) }));
    }
    let media = |m: &Spanned<RawMedia>, ty: MediaType, ctx: &mut Ctx<'_>| {
        media_template(m, ty, caps, pays, ctx)
    };
    if let Some(s) = &r.image {
        kinds.push(("image", s.span().start));
        kind = Some(send(OutMessage::Image { media_id: media(s, MediaType::Image, ctx) }));
    }
    if let Some(s) = &r.voice {
        kinds.push(("voice", s.span().start));
        kind = Some(send(OutMessage::Voice { media_id: media(s, MediaType::Voice, ctx) }));
    }
    if let Some(v) = &r.video {
        let at = v.media_id.as_ref().map(|m| m.span().start);
        let at = at.or(v.file.as_ref().map(|f| f.span().start)).unwrap_or(header);
        kinds.push(("video", at));
        let media_id = match (&v.media_id, &v.file) {
            (Some(m), None) => media(m, MediaType::Video, ctx),
            (None, Some(f)) => file_template(f.get_ref(), f.span().start, MediaType::Video, ctx),
            (Some(_), Some(f)) => {
                ctx.err(f.span().start, "a video takes `media_id` or `file`, not both".into());
                Template::parse("")
            }
            (None, None) => {
                ctx.err(at, "a video needs `media_id = \"…\"` or `file = \"…\"`".into());
                Template::parse("")
            }
        };
        let thumb = match one_thumb("video", &v.thumb_media_id, &v.thumb, ctx) {
            Some(t) => media(t, MediaType::Thumb, ctx),
            None => Template::parse(""),
        };
        kind = Some(send(OutMessage::Video {
            media_id,
            thumb_media_id: thumb,
            title: opt(&v.title, ctx),
            description: opt(&v.description, ctx),
        }));
    }
    if let Some(m) = &r.music {
        let thumb = one_thumb("music", &m.thumb_media_id, &m.thumb, ctx);
        let at = thumb.map(|t| t.span().start);
        let at = at.or(m.title.as_ref().map(|t| t.span().start)).unwrap_or(header);
        kinds.push(("music", at));
        let thumb_media_id = match thumb {
            Some(t) => media(t, MediaType::Thumb, ctx),
            None => {
                ctx.err(
                    at,
                    "music needs `thumb_media_id = \"…\"` or `thumb = { file = \"…\" }`".into(),
                );
                Template::parse("")
            }
        };
        kind = Some(send(OutMessage::Music {
            title: opt(&m.title, ctx),
            description: opt(&m.description, ctx),
            musicurl: opt(&m.musicurl, ctx),
            hqmusicurl: opt(&m.hqmusicurl, ctx),
            thumb_media_id,
        }));
    }
    if let Some(n) = &r.news {
        kinds.push(("news", n.title.span().start));
        kind = Some(send(OutMessage::News {
            articles: vec![Article {
                title: tpl(&n.title, ctx),
                description: opt(&n.description, ctx),
                url: tpl(&n.url, ctx),
                picurl: opt(&n.picurl, ctx),
            }],
        }));
    }
    if let Some(s) = &r.mpnews {
        kinds.push(("mpnews", s.span().start));
        kind = Some(send(OutMessage::MpNews { media_id: tpl(s, ctx) }));
    }
    if let Some(s) = &r.mpnewsarticle {
        kinds.push(("mpnewsarticle", s.span().start));
        kind = Some(send(OutMessage::MpNewsArticle { article_id: tpl(s, ctx) }));
    }
    if let Some(m) = &r.menu {
        let at = m.items.first().map_or(header, |i| i.id.span().start);
        kinds.push(("menu", at));
        if m.items.is_empty() {
            ctx.err(
                at,
                "a menu needs at least one item: items = [{ id = \"1\", content = \"…\" }]".into(),
            );
        }
        let head_content = opt(&m.head, ctx);
        let list = m
            .items
            .iter()
            .map(|i| MenuItem { id: tpl(&i.id, ctx), content: tpl(&i.content, ctx) })
            .collect();
        let tail_content = opt(&m.tail, ctx);
        kind = Some(send(OutMessage::MsgMenu { head_content, list, tail_content }));
    }
    if let Some(s) = &r.wxcard {
        kinds.push(("wxcard", s.span().start));
        kind = Some(send(OutMessage::WxCard { card_id: tpl(s, ctx) }));
    }
    if let Some(m) = &r.miniprogram {
        kinds.push(("miniprogram", m.title.span().start));
        let thumb_media_id = match one_thumb("miniprogram", &m.thumb_media_id, &m.thumb, ctx) {
            Some(t) => media(t, MediaType::Thumb, ctx),
            None => {
                ctx.err(
                    m.title.span().start,
                    "a miniprogram card needs `thumb_media_id = \"…\"` or `thumb = { file = \"…\" }`"
                        .into(),
                );
                Template::parse("")
            }
        };
        kind = Some(send(OutMessage::MiniProgramPage {
            title: tpl(&m.title, ctx),
            appid: tpl(&m.appid, ctx),
            pagepath: tpl(&m.pagepath, ctx),
            thumb_media_id,
        }));
    }
    if let Some(t) = &r.typing {
        kinds.push(("typing", t.span().start));
        if !*t.get_ref() {
            ctx.err(t.span().start, "typing = false does nothing: remove this reply".into());
        }
        kind = Some(Action::Typing);
    }
    if let Some(t) = &r.transfer {
        let at = t.span().start;
        kinds.push(("transfer", at));
        kind = Some(Action::Transfer {
            kf_account: match t.get_ref() {
                RawTransfer::Any(true) => None,
                RawTransfer::Any(false) => {
                    ctx.err(at, "transfer = false does nothing: remove this reply".into());
                    None
                }
                RawTransfer::To(s) => match KfAccount::parse(s) {
                    Ok(k) => Some(k.as_str().to_string()),
                    Err(_) => {
                        ctx.err(at, kf_message("transfer", s));
                        None
                    }
                },
            },
        });
        if r.delay.is_some() {
            ctx.err(at, "a transfer cannot be delayed: it is the answer to the push itself".into());
        }
        if r.as_kf.is_some() {
            ctx.err(
                at,
                "a transfer takes no `as`: name the kf account with transfer = \"kf@account\""
                    .into(),
            );
        }
    }
    if let Some(f) = &r.forward {
        let at = f.span().start;
        kinds.push(("forward", at));
        let name = f.get_ref();
        if ctx.answer {
            ctx.err(at, "a backend's answer cannot forward again".into());
        } else if !ctx.backends.iter().any(|b| b == name) {
            let known = if ctx.backends.is_empty() {
                "no backend is configured: add a [backends.NAME] table to the config file (README: Answer from your own service)"
                    .to_string()
            } else {
                format!("the configured backends are {}", ctx.backends.join(", "))
            };
            ctx.err(at, format!("forward to unknown backend `{name}`: {known}"));
        }
        kind = Some(Action::Forward {
            backend: name.clone(),
            fallback: r.fallback.as_ref().map(|s| tpl(s, ctx)),
            captures: Vec::new(),
        });
        if r.delay.is_some() {
            ctx.err(
                at,
                "a forward cannot be delayed: the push is sent to the backend at once".into(),
            );
        }
        if r.as_kf.is_some() {
            ctx.err(
                at,
                "a forward takes no `as`: the backend's answer may name one per reply".into(),
            );
        }
    } else if let Some(f) = &r.fallback {
        ctx.err(
            f.span().start,
            "`fallback` belongs to a forward reply: add forward = \"NAME\" or remove it".into(),
        );
    }
    match kinds.len() {
        0 => {
            let at = r.delay.as_ref().map(|d| d.span().start);
            let at = at.or(r.as_kf.as_ref().map(|a| a.span().start));
            ctx.err(at.unwrap_or(header), format!("a reply needs one kind: {REPLY_KINDS}"));
            return None;
        }
        1 => {}
        n => {
            let names: Vec<&str> = kinds.iter().map(|k| k.0).collect();
            ctx.err(
                kinds[1].1,
                format!(
                    "a reply has one kind, this one has {n} ({}): split it into separate \
                     [[rule.reply]] tables",
                    names.join(", ")
                ),
            );
            return None;
        }
    }
    let mut delay = Duration::ZERO;
    if let Some(d) = &r.delay {
        match humantime::parse_duration(d.get_ref().trim()) {
            Ok(v) if v > window.longest() => {
                ctx.err(
                    d.span().start,
                    format!(
                        "delay {} is longer than the longest window ({}): it could never be \
                         sent; shorten it or lengthen a [window] quota in the config",
                        d.get_ref().trim(),
                        short_duration(window.longest())
                    ),
                );
            }
            Ok(v) => delay = v,
            Err(_) => {
                ctx.err(
                    d.span().start,
                    format!(
                        "bad duration `{}` in delay: use humantime like 30s, 2m, 1h30m",
                        d.get_ref()
                    ),
                );
            }
        }
    }
    let mut kf_account = None;
    if let Some(a) = &r.as_kf {
        match KfAccount::parse(a.get_ref()) {
            Ok(k) => kf_account = Some(k.as_str().to_string()),
            Err(_) => {
                ctx.err(a.span().start, kf_message("as", a.get_ref()));
            }
        }
    }
    let kind = kind?;
    let at = ctx.pos(kinds[0].1);
    (ctx.errors() == start).then_some(Reply { kind, delay, kf_account, at })
}

/// Parses a reply string and checks that something provides each of its placeholders.
fn template(s: &Spanned<String>, caps: &Caps, pays: bool, ctx: &mut Ctx<'_>) -> Template {
    if ctx.answer {
        // A backend's words are sent as written: `{…}` in them is text, not a placeholder.
        return Template::literal(s.get_ref().clone());
    }
    let t = Template::parse(s.get_ref());
    for (name, group) in t.needs() {
        let provided = caps.unknown
            || match group {
                Some(n) => n < caps.max_groups,
                None => caps.names.contains(&name) || pays,
            };
        if !provided {
            ctx.err(s.span().start, placeholder_message(&name, group, caps));
        }
    }
    t
}

// ---- media ----

/// A media-id field: an id is a template like any text; `{ file = "…" }` is checked and
/// becomes a literal [`MediaRef`].
fn media_template(
    m: &Spanned<RawMedia>,
    ty: MediaType,
    caps: &Caps,
    pays: bool,
    ctx: &mut Ctx<'_>,
) -> Template {
    match m.get_ref() {
        RawMedia::Id(id) => template(&Spanned::new(m.span(), id.clone()), caps, pays, ctx),
        RawMedia::File(rel) => file_template(rel, m.span().start, ty, ctx),
    }
}

/// `thumb_media_id` or `thumb` (one of them, not both).
fn one_thumb<'r>(
    kind: &str,
    id: &'r Option<Spanned<RawMedia>>,
    thumb: &'r Option<Spanned<RawMedia>>,
    ctx: &mut Ctx<'_>,
) -> Option<&'r Spanned<RawMedia>> {
    match (id, thumb) {
        (Some(_), Some(t)) => {
            ctx.err(
                t.span().start,
                format!("a {kind} takes `thumb_media_id` or `thumb`, not both"),
            );
            None
        }
        (Some(t), None) | (None, Some(t)) => Some(t),
        (None, None) => None,
    }
}

/// Checks the file `rel` (relative to the rule file's directory, the rules directory) as `ty`
/// media and returns its reference; every problem is an error at `offset`, a GIF image a
/// warning.
fn file_template(rel: &str, offset: usize, ty: MediaType, ctx: &mut Ctx<'_>) -> Template {
    if rel.trim().is_empty() {
        ctx.err(
            offset,
            "an empty media file name: name a file relative to the rules directory".into(),
        );
        return Template::parse("");
    }
    let base = ctx.path.parent().unwrap_or(Path::new(""));
    let joined = base.join(rel);
    let path = std::path::absolute(&joined).unwrap_or(joined);
    let checked = ctx
        .media
        .entry((path.clone(), ty))
        .or_insert_with(|| {
            crate::media::inspect(&path, rel, ty).map(|(i, _)| {
                let r = MediaRef { media_type: ty, sha256: i.sha256, path: path.clone() };
                (r.encode(), i.warning)
            })
        })
        .clone();
    match checked {
        Ok((encoded, warning)) => {
            if let Some(w) = warning {
                ctx.warn(offset, w);
            }
            Template::literal(encoded)
        }
        Err(e) => {
            ctx.err(offset, e);
            Template::parse("")
        }
    }
}

/// A backend's answer (interface §7.3): each element of `replies` is a reply table as in rule
/// files, compiled by `compile_reply` like a `[[rule.reply]]` (its texts literal, no
/// `forward`), into the actions of rule `rule`. Media files are relative to `rules_dir`. Every
/// problem is returned, each as `replies[i]: message`.
pub fn compile_answer(
    replies: &[serde_json::Value],
    rule: &str,
    rules_dir: &Path,
) -> Result<Vec<crate::model::PlannedAction>, Vec<String>> {
    let mut errors = Vec::new();
    let mut out = Vec::with_capacity(replies.len());
    let path = rules_dir.join("backend-answer");
    let window = WindowConfig::default();
    let mut media = MediaChecked::new();
    let input = crate::model::RuleInput::default();
    for (i, v) in replies.iter().enumerate() {
        let table = match json_to_toml(v) {
            Some(toml::Value::Table(t)) => t,
            _ => {
                errors.push(format!(
                    "replies[{i}]: not a reply table (an object like {{\"text\": \"…\"}})"
                ));
                continue;
            }
        };
        let text = match toml::to_string(&table) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("replies[{i}]: cannot read it as a reply table ({e})"));
                continue;
            }
        };
        let mut diags = Vec::new();
        let raw = super::parse::parse_reply(&path, &text, &mut diags);
        let mut ctx = Ctx {
            path: &path,
            text: &text,
            lines: LineIndex::new(&text),
            diags: &mut diags,
            media: &mut media,
            backends: &[],
            answer: true,
        };
        let reply =
            raw.and_then(|r| compile_reply(r, 0, &window, &Caps::default(), false, &mut ctx));
        let failed: Vec<String> = diags
            .iter()
            .filter(|d| d.is_error())
            .map(|d| format!("replies[{i}]: {}", d.message))
            .collect();
        if !failed.is_empty() {
            errors.extend(failed);
        } else if let Some(reply) = reply {
            let ctx = super::actions::RenderCtx { input: &input, captures: None };
            out.push(reply.plan(rule, &ctx));
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

/// JSON as TOML: `null` fields are left out (TOML has no null), numbers stay numbers.
fn json_to_toml(v: &serde_json::Value) -> Option<toml::Value> {
    use serde_json::Value as J;
    Some(match v {
        J::Null => return None,
        J::Bool(b) => toml::Value::Boolean(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => toml::Value::Integer(i),
            None => toml::Value::Float(n.as_f64()?),
        },
        J::String(s) => toml::Value::String(s.clone()),
        J::Array(a) => toml::Value::Array(a.iter().filter_map(json_to_toml).collect()),
        J::Object(o) => toml::Value::Table(
            o.iter().filter_map(|(k, v)| Some((k.clone(), json_to_toml(v)?))).collect(),
        ),
    })
}

/// `48h`, `1m`, `90s`: the way durations are written in kefu.toml.
fn short_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn kf_message(field: &str, got: &str) -> String {
    format!(
        "`{field}` must be a kf account prefix@wechat_id with a prefix of 1 to 10 letters, digits \
         or '_' (got {got:?})"
    )
}

fn placeholder_message(name: &str, group: Option<usize>, caps: &Caps) -> String {
    let builtins = BUILTINS.map(|b| format!("{{{b}}}")).join(", ");
    match group {
        Some(_) if caps.max_groups > 0 => format!(
            "placeholder {{{name}}} is not provided: this rule's regexes capture only {{0}} to \
             {{{}}}",
            caps.max_groups - 1
        ),
        _ => format!(
            "placeholder {{{name}}} is not provided: use {builtins}, a capture group of this \
             rule's text_regex or event_key_regex, or a payment variable in a rule with \
             event = \"payment\"; write {{{{ for a literal brace"
        ),
    }
}

fn compile_test(t: RawTest, header: usize, ctx: &mut Ctx<'_>) -> Option<TestCase> {
    let (line, col) = ctx.pos(header);
    let from = t.from.clone().unwrap_or_else(|| super::check::TEST_OPENID.to_string());
    let mut input = match (&t.text, &t.event) {
        (Some(text), None) => {
            if t.key.is_some() {
                ctx.err(header, "`key` goes with `event`, not `text`".into());
                return None;
            }
            match super::input::text(&from, text) {
                Ok(mut i) => {
                    i.menu_choice = t.menu_choice.clone();
                    i
                }
                Err(why) => {
                    ctx.err(header, why);
                    return None;
                }
            }
        }
        (None, Some(event)) => match super::input::event(&from, event, t.key.as_deref()) {
            Ok(i) => i,
            Err(why) => {
                ctx.err(header, why);
                return None;
            }
        },
        (Some(_), Some(_)) => {
            ctx.err(header, "a [[test]] takes `text` or `event`, not both".into());
            return None;
        }
        (None, None) => {
            ctx.err(header, "a [[test]] needs `text` or `event` (with optional `key`)".into());
            return None;
        }
    };
    input.vars = t.vars.into_iter().collect();
    Some(TestCase { path: ctx.path.to_path_buf(), line, col, input, expect: t.expect.values() })
}

/// Warns about rules that can never fire: an earlier rule (higher priority, or same priority
/// earlier in order) without `continue` matches every push they match. Candidates are found
/// through shared values, so this stays near-linear for large rule sets.
fn shadow_warnings(rules: &[Rule], m: &Matcher, keywords: &[String], diags: &mut Vec<Diagnostic>) {
    let mut by_value: HashMap<(usize, &str), Vec<usize>> = HashMap::new();
    let mut by_kw: HashMap<u32, Vec<usize>> = HashMap::new();
    let mut by_re: HashMap<(bool, u32), Vec<usize>> = HashMap::new();
    let mut catch_all = None;
    for (i, r) in rules.iter().enumerate() {
        if let Some(a) = catch_all {
            warn_shadowed(&rules[a], r, diags);
            continue;
        }
        // Find earlier stoppers sharing something with `r`.
        let mut cands: Vec<usize> = Vec::new();
        for k in 0..r.cond.exact.len() {
            for v in r.cond.exact[k].iter().flatten() {
                cands.extend(by_value.get(&(k, v.as_str())).into_iter().flatten());
            }
        }
        if r.cond.exact(Exact::Event).is_some() {
            cands.extend(by_value.get(&(Exact::MsgType as usize, "event")).into_iter().flatten());
        }
        let mut texts: Vec<&str> = Vec::new();
        texts.extend(r.cond.text_contains.iter().flatten().map(|k| keywords[*k as usize].as_str()));
        texts.extend(r.cond.exact(Exact::TextEquals).into_iter().flatten().map(String::as_str));
        if let Some(ac) = m.keywords() {
            for t in texts {
                for hit in ac.find_overlapping_iter(t) {
                    cands.extend(by_kw.get(&hit.pattern().as_u32()).into_iter().flatten());
                }
            }
        }
        for (text, ids) in [(true, &r.cond.text_regex), (false, &r.cond.event_key_regex)] {
            for id in ids.iter().flatten() {
                cands.extend(by_re.get(&(text, *id)).into_iter().flatten());
            }
        }
        cands.sort_unstable();
        cands.dedup();
        if let Some(a) = cands.into_iter().find(|a| subsumes(&rules[*a].cond, &r.cond, keywords)) {
            warn_shadowed(&rules[a], r, diags);
        }
        if r.continue_ {
            continue;
        }
        if r.cond.is_empty() {
            catch_all = Some(i);
            continue;
        }
        for k in 0..r.cond.exact.len() {
            for v in r.cond.exact[k].iter().flatten() {
                by_value.entry((k, v.as_str())).or_default().push(i);
            }
        }
        for k in r.cond.text_contains.iter().flatten() {
            by_kw.entry(*k).or_default().push(i);
        }
        for id in r.cond.text_regex.iter().flatten() {
            by_re.entry((true, *id)).or_default().push(i);
        }
        for id in r.cond.event_key_regex.iter().flatten() {
            by_re.entry((false, *id)).or_default().push(i);
        }
    }
}

fn warn_shadowed(a: &Rule, b: &Rule, diags: &mut Vec<Diagnostic>) {
    let what =
        if a.cond.is_empty() { "matches every push" } else { "matches every push it matches" };
    diags.push(Diagnostic {
        path: b.origin.path.to_path_buf(),
        line: b.origin.line,
        col: b.origin.col,
        severity: Severity::Warning,
        message: format!(
            "rule `{}` can never fire: rule `{}` ({}) comes first, {what}, and has no \
             `continue = true`",
            b.name, a.name, a.origin
        ),
    });
}

/// Whether every push `b` matches is also matched by `a`.
fn subsumes(a: &Cond, b: &Cond, keywords: &[String]) -> bool {
    let subset = |x: &[String], y: &[String]| x.iter().all(|v| y.contains(v));
    for k in 0..a.exact.len() {
        let Some(la) = a.exact[k].as_deref() else { continue };
        let ok = match b.exact[k].as_deref() {
            Some(lb) => subset(lb, la),
            None => {
                k == Exact::MsgType as usize
                    && la.iter().any(|v| v == "event")
                    && b.exact(Exact::Event).is_some()
            }
        };
        if !ok {
            return false;
        }
    }
    if let Some(ka) = &a.text_contains {
        let contains_one = |s: &str| {
            let s = s.to_ascii_lowercase();
            ka.iter().any(|k| s.contains(keywords[*k as usize].as_str()))
        };
        let ok = match (&b.text_contains, b.exact(Exact::TextEquals)) {
            (Some(kb), _) => kb.iter().all(|k| contains_one(&keywords[*k as usize])),
            (None, Some(eq)) => eq.iter().all(|e| contains_one(e)),
            (None, None) => false,
        };
        if !ok {
            return false;
        }
    }
    let ids_subset = |x: &Option<Box<[u32]>>, y: &Option<Box<[u32]>>| match (x, y) {
        (None, _) => true,
        (Some(ya), Some(yb)) => yb.iter().all(|i| ya.contains(i)),
        (Some(_), None) => false,
    };
    ids_subset(&a.text_regex, &b.text_regex) && ids_subset(&a.event_key_regex, &b.event_key_regex)
}

#[cfg(test)]
mod answer_tests {
    use super::*;

    fn answer(json: &str) -> Result<Vec<crate::model::PlannedAction>, Vec<String>> {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        compile_answer(v.as_array().unwrap(), "ask", Path::new("/nonexistent"))
    }

    #[test]
    fn answers_compile_like_rule_replies() {
        let a = answer(
            r#"[{"text":"订单 {order} 已发货"},{"news":{"title":"t","url":"https://x"}},
                {"text":"later","delay":"30s"},{"menu":{"items":[{"id":"1","content":"a"}]}}]"#,
        )
        .unwrap();
        assert_eq!(a.len(), 4);
        assert_eq!(
            a[0].action,
            Action::Send {
                message: OutMessage::Text { content: "订单 {order} 已发货".into() }
            },
            "a backend's braces are text"
        );
        assert_eq!(a[2].delay, Duration::from_secs(30));
        assert!(a.iter().all(|p| p.rule == "ask"));
    }

    #[test]
    fn bad_answers_name_the_element() {
        let e = answer(r#"[{"text":"ok"},{"sticker":"x"}]"#).unwrap_err();
        assert!(
            e.iter().all(|m| m.starts_with("replies[1]: ")) && e[0].contains("sticker"),
            "{e:?}"
        );
        let e = answer(r#"[{"text":"a","image":"b"}]"#).unwrap_err();
        assert!(e[0].contains("one kind"), "{e:?}");
        let e = answer(r#"[{"forward":"x"}]"#).unwrap_err();
        assert!(e[0].contains("cannot forward"), "{e:?}");
        let e = answer(r#"["hello"]"#).unwrap_err();
        assert!(e[0].contains("not a reply table"), "{e:?}");
        let e = answer(r#"[{"text":"a","delay":"soon"}]"#).unwrap_err();
        assert!(e[0].contains("bad duration"), "{e:?}");
    }

    #[test]
    fn a_rule_forwards_once() {
        let rule = "[[rule]]\nname = \"ask\"\n[[rule.reply]]\nforward = \"a\"\n[[rule.reply]]\nforward = \"b\"\n";
        let sources = vec![(PathBuf::from("rules/a.toml"), rule.to_string())];
        let backends = ["a".to_string(), "b".to_string()];
        let d =
            compile(sources, &WindowConfig::default(), Path::new("rules"), &backends).unwrap_err();
        assert!(
            d[0].to_string().starts_with("rules/a.toml:2:8: rule `ask` forwards twice"),
            "{}",
            d[0]
        );
    }

    #[test]
    fn forwards_must_name_a_configured_backend() {
        let rule = "[[rule]]\nname = \"ask\"\n[[rule.reply]]\ntext = \"稍等\"\n[[rule.reply]]\nforward = \"orders\"\nfallback = \"抱歉\"\n";
        let sources = vec![(PathBuf::from("rules/a.toml"), rule.to_string())];
        let d = compile(sources.clone(), &WindowConfig::default(), Path::new("rules"), &[])
            .unwrap_err();
        assert!(
            d[0].to_string().starts_with("rules/a.toml:6:11: forward to unknown backend `orders`"),
            "{}",
            d[0]
        );
        let ok = compile(sources, &WindowConfig::default(), Path::new("rules"), &["orders".into()])
            .unwrap();
        let ev = ok.set.evaluate(&crate::model::RuleInput {
            msg_type: "text".into(),
            text: Some("x".into()),
            ..Default::default()
        });
        assert_eq!(ev.actions.len(), 2);
        assert_eq!(
            ev.actions[1].action,
            Action::Forward {
                backend: "orders".into(),
                fallback: Some("抱歉".into()),
                captures: Vec::new()
            }
        );
        let bad = "[[rule]]\nname = \"a\"\n[[rule.reply]]\ntext = \"x\"\nfallback = \"y\"\n";
        let d = compile(
            vec![(PathBuf::from("b.toml"), bad.into())],
            &WindowConfig::default(),
            Path::new(""),
            &[],
        )
        .unwrap_err();
        assert!(d[0].message.contains("belongs to a forward"), "{}", d[0]);
    }
}
