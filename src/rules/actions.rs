//! Compiled replies: placeholder templates, the reply kinds mapped to `model::Action`, and the
//! split of an evaluation into the passive HTTP answer and the planned customer-service sends
//! (interface §6.8).

use std::time::Duration;

use crate::delivery::OwnPassive;
use crate::model::{Action, OutboxAction, PassiveReply, PlannedAction, RuleInput};

/// The placeholders every push provides (interface §4, §6.7).
pub(crate) const BUILTINS: [&str; 4] = ["openid", "text", "event_key", "scene"];

/// A string with `{placeholder}`s, parsed once. `{{` and `}}` are literal braces; a `{` that
/// does not start `{name}` is kept as written, so prose with braces needs no escaping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Template(Vec<Piece>);

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Builtin(Builtin),
    /// `{1}`: a numbered capture group.
    Group(usize),
    /// `{name}`: a named capture group, else an input variable (`amount`, ...).
    Named(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Builtin {
    OpenId,
    Text,
    EventKey,
    Scene,
}

/// What a template is rendered from: the push and the captures of the regex that matched.
pub(crate) struct RenderCtx<'a> {
    pub input: &'a RuleInput,
    pub captures: Option<&'a Captured>,
}

/// The captures of one regex match, owned so evaluation can move on.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub groups: Vec<Option<String>>,
    pub names: Vec<Option<String>>,
}

impl Captured {
    pub fn from_regex(re: &regex::Regex, hay: &str) -> Option<Captured> {
        let caps = re.captures(hay)?;
        Some(Captured {
            groups: caps.iter().map(|m| m.map(|m| m.as_str().to_string())).collect(),
            names: re.capture_names().map(|n| n.map(str::to_string)).collect(),
        })
    }
    fn named(&self, name: &str) -> Option<&str> {
        let i = self.names.iter().position(|n| n.as_deref() == Some(name))?;
        self.groups.get(i)?.as_deref()
    }
}

impl Template {
    pub fn parse(s: &str) -> Template {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut rest = s;
        while let Some(c) = rest.chars().next() {
            if rest.starts_with("{{") || rest.starts_with("}}") {
                lit.push(c);
                rest = &rest[2..];
                continue;
            }
            if c == '{' {
                let inner = &rest[1..];
                let len = inner
                    .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                    .unwrap_or(inner.len());
                if len > 0 && inner[len..].starts_with('}') {
                    if !lit.is_empty() {
                        pieces.push(Piece::Lit(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::from_name(&inner[..len]));
                    rest = &inner[len + 1..];
                    continue;
                }
            }
            lit.push(c);
            rest = &rest[c.len_utf8()..];
        }
        if !lit.is_empty() {
            pieces.push(Piece::Lit(lit));
        }
        Template(pieces)
    }

    /// The text without its placeholders, and whether it has none (then it is the text).
    pub fn literal_text(&self) -> (String, bool) {
        let mut out = String::new();
        let mut fixed = true;
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                _ => fixed = false,
            }
        }
        (out, fixed)
    }

    /// A template of exactly `s`, braces and all (a media-file reference: a path may hold
    /// `{`).
    pub fn literal(s: String) -> Template {
        Template(vec![Piece::Lit(s)])
    }

    /// The text when the template has no placeholder.
    pub fn as_literal(&self) -> Option<&str> {
        match self.0.as_slice() {
            [Piece::Lit(s)] => Some(s),
            [] => Some(""),
            _ => None,
        }
    }

    /// The placeholders that are neither builtins: `(name, group number if numeric)`.
    pub fn needs(&self) -> impl Iterator<Item = (String, Option<usize>)> + '_ {
        self.0.iter().filter_map(|p| match p {
            Piece::Group(n) => Some((n.to_string(), Some(*n))),
            Piece::Named(s) => Some((s.clone(), None)),
            _ => None,
        })
    }

    pub fn render(&self, ctx: &RenderCtx<'_>) -> String {
        // Fast path: most replies have no placeholder at all.
        if let [Piece::Lit(s)] = self.0.as_slice() {
            return s.clone();
        }
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Lit(s) => out.push_str(s),
                Piece::Builtin(b) => out.push_str(match b {
                    Builtin::OpenId => &ctx.input.from,
                    Builtin::Text => ctx.input.text.as_deref().unwrap_or(""),
                    Builtin::EventKey => ctx.input.event_key.as_deref().unwrap_or(""),
                    Builtin::Scene => ctx.input.scene.as_deref().unwrap_or(""),
                }),
                Piece::Group(n) => {
                    if let Some(g) = ctx.captures.and_then(|c| c.groups.get(*n)?.as_deref()) {
                        out.push_str(g);
                    }
                }
                Piece::Named(name) => {
                    let v = ctx.captures.and_then(|c| c.named(name)).or_else(|| {
                        ctx.input.vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
                    });
                    out.push_str(v.unwrap_or(""));
                }
            }
        }
        out
    }
}

impl Piece {
    fn from_name(name: &str) -> Piece {
        match name {
            "openid" => Piece::Builtin(Builtin::OpenId),
            "text" => Piece::Builtin(Builtin::Text),
            "event_key" => Piece::Builtin(Builtin::EventKey),
            "scene" => Piece::Builtin(Builtin::Scene),
            n => match n.parse::<usize>() {
                Ok(i) => Piece::Group(i),
                Err(_) => Piece::Named(n.to_string()),
            },
        }
    }
}

/// One compiled `[[rule.reply]]`: the action with its texts as templates (the one definition
/// of the reply kinds is [`OutMessage`]; rendering is [`Action::map`]).
#[derive(Clone, Debug)]
pub(crate) struct Reply {
    pub kind: Action<Template>,
    pub delay: Duration,
    pub kf_account: Option<String>,
    /// Line and column of its kind's value in the rule file.
    pub at: (usize, usize),
}

impl Reply {
    pub fn plan(&self, rule: &str, ctx: &RenderCtx<'_>) -> PlannedAction {
        PlannedAction {
            rule: rule.to_string(),
            action: self.kind.map(|t| t.render(ctx)),
            delay: self.delay,
            kf_account: self.kf_account.clone(),
            source: Default::default(),
        }
    }
}

/// Splits planned actions into the passive HTTP answer and what remains to send
/// (interface §6.8). A transfer can only ever be a passive reply, so it always is, and then
/// no message is; otherwise, with `passive_first`, the first immediate send of a passive kind
/// is. A send `as` a kf account stays a customer-service message: a passive reply cannot
/// carry the kf account.
pub(crate) fn split_passive(
    actions: Vec<PlannedAction>,
    passive_first: bool,
) -> (Option<OwnPassive>, Vec<PlannedAction<OutboxAction>>) {
    let mut passive = None;
    let mut rest = Vec::with_capacity(actions.len());
    for a in &actions {
        if let Action::Transfer { kf_account } = &a.action
            && passive.is_none()
        {
            passive = Some(OwnPassive {
                rule: a.rule.clone(),
                reply: PassiveReply::Transfer { kf_account: kf_account.clone() },
                source: a.source,
            });
        }
    }
    let mut taken = passive.is_some() || !passive_first;
    for a in actions {
        match &a.action {
            // Only the first transfer means anything; custom/send cannot transfer.
            Action::Transfer { .. } => {}
            Action::Send { message }
                if !taken
                    && a.delay.is_zero()
                    && a.kf_account.is_none()
                    && message.passive_capable()
                    // A file whose media id is not ready waits for the sender (interface §9).
                    && !crate::media::names_file(message) =>
            {
                taken = true;
                passive = Some(OwnPassive {
                    rule: a.rule.clone(),
                    reply: PassiveReply::Message { message: message.clone() },
                    source: a.source,
                });
            }
            _ => rest.extend(a.into_outbox()),
        }
    }
    (passive, rest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OutMessage;

    fn input() -> RuleInput {
        RuleInput {
            from: "oU".into(),
            msg_type: "text".into(),
            text: Some("订单 42".into()),
            vars: vec![("amount".into(), "9.90".into())],
            ..Default::default()
        }
    }

    #[test]
    fn template_placeholders_and_escapes() {
        let caps = Captured {
            groups: vec![Some("订单 42".into()), Some("42".into())],
            names: vec![None, Some("no".into())],
        };
        let i = input();
        let ctx = RenderCtx { input: &i, captures: Some(&caps) };
        let t = Template::parse("{openid}:{text}|{1}|{no}|{amount}|{{x}}|{ not }|{missing}|{");
        assert_eq!(t.render(&ctx), "oU:订单 42|42|42|9.90|{x}|{ not }||{");
        let needs: Vec<_> = t.needs().collect();
        assert_eq!(
            needs,
            vec![
                ("1".to_string(), Some(1)),
                ("no".to_string(), None),
                ("amount".to_string(), None),
                ("missing".to_string(), None)
            ]
        );
    }

    fn send(text: &str, delay: u64, kf: Option<&str>) -> PlannedAction {
        PlannedAction {
            rule: "r".into(),
            action: Action::Send { message: OutMessage::Text { content: text.into() } },
            delay: Duration::from_secs(delay),
            kf_account: kf.map(str::to_string),
            source: Default::default(),
        }
    }

    #[test]
    fn passive_is_first_immediate_capable_send() {
        let menu = PlannedAction {
            action: Action::Send { message: OutMessage::WxCard { card_id: "c".into() } },
            ..send("", 0, None)
        };
        let acts = vec![
            send("later", 30, None),
            menu.clone(),
            send("as kf", 0, Some("k@g")),
            send("now", 0, None),
            send("next", 0, None),
        ];
        let (p, rest) = split_passive(acts.clone(), true);
        assert_eq!(
            p.map(|p| p.reply),
            Some(PassiveReply::Message { message: OutMessage::Text { content: "now".into() } })
        );
        assert_eq!(rest.len(), 4);
        assert_eq!(Some(rest[3].clone()), send("next", 0, None).into_outbox());
        let (p, rest) = split_passive(acts, false);
        assert_eq!(p.map(|p| p.reply), None);
        assert_eq!(rest.len(), 5);
    }

    /// A file whose media id was not ready at push time is never the passive answer: it stays
    /// planned, for the sender to resolve (interface §9).
    #[test]
    fn a_file_reference_is_not_passive() {
        let file = crate::media::MediaRef {
            media_type: crate::media::MediaType::Image,
            sha256: "0".repeat(64),
            path: "/rules/media/menu.png".into(),
        };
        let image = PlannedAction {
            action: Action::Send { message: OutMessage::Image { media_id: file.encode() } },
            ..send("", 0, None)
        };
        let (p, rest) = split_passive(vec![image.clone(), send("hi", 0, None)], true);
        assert_eq!(
            p.map(|p| p.reply),
            Some(PassiveReply::Message { message: OutMessage::Text { content: "hi".into() } })
        );
        assert_eq!(rest, image.into_outbox().into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn transfer_is_always_passive_and_alone() {
        let t = PlannedAction {
            action: Action::Transfer { kf_account: Some("kf@gh".into()) },
            ..send("", 0, None)
        };
        let (p, rest) = split_passive(vec![send("hi", 0, None), t.clone(), t], false);
        assert_eq!(
            p.map(|p| p.reply),
            Some(PassiveReply::Transfer { kf_account: Some("kf@gh".into()) })
        );
        assert_eq!(rest, send("hi", 0, None).into_outbox().into_iter().collect::<Vec<_>>());
    }
}
