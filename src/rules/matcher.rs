//! The compiled matcher: one Aho-Corasick automaton over every `text_contains` keyword, one
//! `RegexSet` over every `text_regex` (and one over every `event_key_regex`), and hash maps for
//! the exact conditions. A push is scanned once by each; each rule is filed under one
//! "anchor" condition, so the scans yield the candidate rules directly. Only candidates are
//! then checked condition by condition, in rule order.

use std::collections::HashMap;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexSet, RegexSetBuilder, SetMatches};

use crate::model::RuleInput;

/// The exact-match condition kinds, in the order a rule's anchor is chosen (most selective
/// first): a rule is filed under the first of these it has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Exact {
    TextEquals = 0,
    MenuChoice,
    EventKey,
    Scene,
    From,
    Event,
    MsgType,
}
const EXACT_KINDS: usize = 7;

/// A rule's conditions, with keywords and regexes replaced by ids into the shared automata.
#[derive(Clone, Debug, Default)]
pub(crate) struct Cond {
    pub exact: [Option<Box<[String]>>; EXACT_KINDS],
    pub text_contains: Option<Box<[u32]>>,
    pub text_regex: Option<Box<[u32]>>,
    pub event_key_regex: Option<Box<[u32]>>,
}

impl Cond {
    pub fn exact(&self, k: Exact) -> Option<&[String]> {
        self.exact[k as usize].as_deref()
    }
    pub fn is_empty(&self) -> bool {
        self.exact.iter().all(Option::is_none)
            && self.text_contains.is_none()
            && self.text_regex.is_none()
            && self.event_key_regex.is_none()
    }
}

/// `text_equals` compares the trimmed text case-insensitively.
pub(crate) fn normalize_equals(s: &str) -> String {
    s.trim().to_lowercase()
}

/// Collects keywords and regexes while rules compile, deduplicating them.
#[derive(Default)]
pub(crate) struct MatcherBuilder {
    keywords: Vec<String>,
    keyword_ids: HashMap<String, u32>,
    text_res: Vec<Regex>,
    text_re_ids: HashMap<String, u32>,
    key_res: Vec<Regex>,
    key_re_ids: HashMap<String, u32>,
}

impl MatcherBuilder {
    pub fn keyword(&mut self, k: &str) -> u32 {
        // The automaton folds ASCII case, so keywords differing only in it are one pattern.
        let k = k.to_ascii_lowercase();
        let next = self.keywords.len() as u32;
        *self.keyword_ids.entry(k.clone()).or_insert_with(|| {
            self.keywords.push(k);
            next
        })
    }
    pub fn text_regex(&mut self, re: Regex) -> u32 {
        intern(&mut self.text_res, &mut self.text_re_ids, re)
    }
    pub fn key_regex(&mut self, re: Regex) -> u32 {
        intern(&mut self.key_res, &mut self.key_re_ids, re)
    }
    /// The deduplicated keywords (ASCII-lowercased), by id.
    pub fn keywords_snapshot(&self) -> Vec<String> {
        self.keywords.clone()
    }

    /// Builds the automata and files each rule (given in evaluation order) under its anchor.
    pub fn build(self, conds: &[&Cond]) -> Result<Matcher, String> {
        let keywords = if self.keywords.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .ascii_case_insensitive(true)
                    .match_kind(MatchKind::Standard)
                    .build(&self.keywords)
                    .map_err(|e| format!("cannot build the keyword automaton: {e}"))?,
            )
        };
        let text_set = regex_set(&self.text_res)?;
        let key_set = regex_set(&self.key_res)?;
        let mut m = Matcher {
            kw_anchor: vec![Vec::new(); self.keywords.len()],
            text_re_anchor: vec![Vec::new(); self.text_res.len()],
            key_re_anchor: vec![Vec::new(); self.key_res.len()],
            keywords,
            text_set,
            text_res: self.text_res,
            key_set,
            key_res: self.key_res,
            exact: Default::default(),
            always: Vec::new(),
        };
        for (i, c) in conds.iter().enumerate() {
            let i = i as u32;
            let anchored_exact = |k: Exact| c.exact(k).map(|v| (k, v));
            if let Some((k, vals)) = [Exact::TextEquals, Exact::MenuChoice, Exact::EventKey]
                .into_iter()
                .chain([Exact::Scene, Exact::From])
                .find_map(anchored_exact)
            {
                m.file_exact(k, vals, i);
            } else if let Some(ids) = &c.text_contains {
                ids.iter().for_each(|k| m.kw_anchor[*k as usize].push(i));
            } else if let Some(ids) = &c.text_regex {
                ids.iter().for_each(|k| m.text_re_anchor[*k as usize].push(i));
            } else if let Some(ids) = &c.event_key_regex {
                ids.iter().for_each(|k| m.key_re_anchor[*k as usize].push(i));
            } else if let Some((k, vals)) =
                [Exact::Event, Exact::MsgType].into_iter().find_map(anchored_exact)
            {
                m.file_exact(k, vals, i);
            } else {
                m.always.push(i);
            }
        }
        Ok(m)
    }
}

fn intern(list: &mut Vec<Regex>, ids: &mut HashMap<String, u32>, re: Regex) -> u32 {
    let next = list.len() as u32;
    *ids.entry(re.as_str().to_string()).or_insert_with(|| {
        list.push(re);
        next
    })
}

fn regex_set(res: &[Regex]) -> Result<Option<RegexSet>, String> {
    if res.is_empty() {
        return Ok(None);
    }
    // Each pattern already compiled alone; the set only needs room for all of them.
    RegexSetBuilder::new(res.iter().map(Regex::as_str))
        .size_limit(1 << 30)
        .dfa_size_limit(64 << 20)
        .build()
        .map(Some)
        .map_err(|e| format!("cannot combine the regular expressions into one set: {e}"))
}

pub(crate) struct Matcher {
    keywords: Option<AhoCorasick>,
    kw_anchor: Vec<Vec<u32>>,
    text_set: Option<RegexSet>,
    text_res: Vec<Regex>,
    text_re_anchor: Vec<Vec<u32>>,
    key_set: Option<RegexSet>,
    key_res: Vec<Regex>,
    key_re_anchor: Vec<Vec<u32>>,
    exact: [HashMap<String, Vec<u32>>; EXACT_KINDS],
    always: Vec<u32>,
}

/// What the one-pass scans found in a push, for checking candidates' other conditions.
pub(crate) struct Facts {
    equals: Option<String>,
    /// Keyword ids found in the text, sorted.
    kw_hits: Vec<u32>,
    text_hits: Option<SetMatches>,
    key_hits: Option<SetMatches>,
}

impl Matcher {
    fn file_exact(&mut self, k: Exact, vals: &[String], rule: u32) {
        for v in vals {
            let list = self.exact[k as usize].entry(v.clone()).or_default();
            // A value listed twice in one rule must not make it a candidate twice.
            if list.last() != Some(&rule) {
                list.push(rule);
            }
        }
    }

    pub fn text_regex(&self, id: u32) -> &Regex {
        &self.text_res[id as usize]
    }
    pub fn key_regex(&self, id: u32) -> &Regex {
        &self.key_res[id as usize]
    }
    pub fn keywords(&self) -> Option<&AhoCorasick> {
        self.keywords.as_ref()
    }

    /// Scans the push once and returns the candidate rules (ids in evaluation order).
    pub fn candidates(&self, input: &RuleInput) -> (Vec<u32>, Facts) {
        let text = input.text.as_deref();
        let mut kw_hits = Vec::new();
        if let (Some(ac), Some(t)) = (&self.keywords, text) {
            kw_hits.extend(ac.find_overlapping_iter(t).map(|m| m.pattern().as_u32()));
            kw_hits.sort_unstable();
            kw_hits.dedup();
        }
        let text_hits = match (&self.text_set, text) {
            (Some(s), Some(t)) => Some(s.matches(t)),
            _ => None,
        };
        let key_hits = match (&self.key_set, input.event_key.as_deref()) {
            (Some(s), Some(k)) => Some(s.matches(k)),
            _ => None,
        };
        let equals = text.map(normalize_equals);

        let mut cands: Vec<u32> = self.always.clone();
        for k in &kw_hits {
            cands.extend_from_slice(&self.kw_anchor[*k as usize]);
        }
        if let Some(h) = &text_hits {
            h.iter().for_each(|i| cands.extend_from_slice(&self.text_re_anchor[i]));
        }
        if let Some(h) = &key_hits {
            h.iter().for_each(|i| cands.extend_from_slice(&self.key_re_anchor[i]));
        }
        let exact_inputs: [(Exact, Option<&str>); EXACT_KINDS] = [
            (Exact::TextEquals, equals.as_deref()),
            (Exact::MenuChoice, input.menu_choice.as_deref()),
            (Exact::EventKey, input.event_key.as_deref()),
            (Exact::Scene, input.scene.as_deref()),
            (Exact::From, Some(input.from.as_str())),
            (Exact::Event, input.event.as_deref()),
            (Exact::MsgType, Some(input.msg_type.as_str())),
        ];
        for (k, v) in exact_inputs {
            if let Some(list) = v.and_then(|v| self.exact[k as usize].get(v)) {
                cands.extend_from_slice(list);
            }
        }
        cands.sort_unstable();
        cands.dedup();
        (cands, Facts { equals, kw_hits, text_hits, key_hits })
    }

    /// Whether every condition of `c` holds for the push.
    pub fn holds(&self, c: &Cond, input: &RuleInput, f: &Facts) -> bool {
        let one_of = |k: Exact, v: Option<&str>| match c.exact(k) {
            None => true,
            Some(list) => v.is_some_and(|v| list.iter().any(|x| x == v)),
        };
        one_of(Exact::MsgType, Some(&input.msg_type))
            && one_of(Exact::Event, input.event.as_deref())
            && one_of(Exact::EventKey, input.event_key.as_deref())
            && one_of(Exact::Scene, input.scene.as_deref())
            && one_of(Exact::MenuChoice, input.menu_choice.as_deref())
            && one_of(Exact::From, Some(&input.from))
            && one_of(Exact::TextEquals, f.equals.as_deref())
            && c.text_contains
                .as_ref()
                .is_none_or(|ids| ids.iter().any(|k| f.kw_hits.binary_search(k).is_ok()))
            && c.text_regex.as_ref().is_none_or(|ids| {
                f.text_hits.as_ref().is_some_and(|h| ids.iter().any(|i| h.matched(*i as usize)))
            })
            && c.event_key_regex.as_ref().is_none_or(|ids| {
                f.key_hits.as_ref().is_some_and(|h| ids.iter().any(|i| h.matched(*i as usize)))
            })
    }

    /// The first of the rule's regexes that matched (text ones first): its captures feed
    /// `{1}` and `{name}`.
    pub fn matched_regex(&self, c: &Cond, f: &Facts) -> Option<(bool, u32)> {
        let first = |ids: &Option<Box<[u32]>>, hits: &Option<SetMatches>| {
            let h = hits.as_ref()?;
            ids.as_ref()?.iter().copied().find(|i| h.matched(*i as usize))
        };
        first(&c.text_regex, &f.text_hits)
            .map(|i| (true, i))
            .or_else(|| first(&c.event_key_regex, &f.key_hits).map(|i| (false, i)))
    }
}
