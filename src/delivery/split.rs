//! Long text (interface §7.5, §11.4): a text longer than `delivery.max_text_bytes` UTF-8
//! bytes is cut into parts WeChat accepts (protocol §6.4: a `custom/send` text over 2048 bytes
//! is refused with 45002, a longer passive text is cut by the client).
//!
//! Each part but the last ends at the best kind of break found within the limit, at the last
//! break of that kind: a paragraph break (an empty line), else a line break, else a sentence
//! end (`。！？` anywhere, `.!?` before white space), else a space, else a grapheme-cluster
//! boundary. Clusters come from `unicode-segmentation` (UAX #29 extended grapheme clusters),
//! so a cut never falls inside a character, a combining sequence, a flag or an emoji ZWJ
//! sequence with its skin tones. Only a single cluster longer than the whole limit (which no
//! keyboard produces) is cut inside itself, and then at a character boundary.
//!
//! [`split_text`] is exact: the parts concatenated are the input, the break staying at the end
//! of the part before it. [`split_for_sending`] trims the white space a part ends with (the
//! break it was cut at), since a message ending in blank lines looks broken.

use unicode_segmentation::UnicodeSegmentation;

use crate::model::{Action, OutMessage, PlannedAction};

/// A text reply that was split: by which rule, how long it was, into how many parts.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SplitNote {
    pub rule: String,
    pub bytes: usize,
    pub parts: usize,
}

/// Replaces every text reply longer than `max_bytes` by its parts ([`split_for_sending`]), in
/// place and in order, each part keeping the reply's rule, delay and `as` account. Text grown
/// by placeholders at run time is split here too, since this runs on the rendered replies.
pub fn split_actions(
    actions: Vec<PlannedAction>,
    max_bytes: usize,
) -> (Vec<PlannedAction>, Vec<SplitNote>) {
    let mut notes = Vec::new();
    if !actions.iter().any(|a| long_text(a, max_bytes).is_some()) {
        return (actions, notes); // the common case: nothing to copy
    }
    let mut out = Vec::with_capacity(actions.len() + 4);
    for a in actions {
        let Some(content) = long_text(&a, max_bytes) else {
            out.push(a);
            continue;
        };
        let parts = split_for_sending(content, max_bytes);
        notes.push(SplitNote { rule: a.rule.clone(), bytes: content.len(), parts: parts.len() });
        for part in parts {
            out.push(PlannedAction {
                action: Action::Send { message: OutMessage::Text { content: part } },
                ..a.clone()
            });
        }
    }
    (out, notes)
}

fn long_text(a: &PlannedAction, max_bytes: usize) -> Option<&str> {
    match &a.action {
        Action::Send { message: OutMessage::Text { content } } if content.len() > max_bytes => {
            Some(content)
        }
        _ => None,
    }
}

/// The kinds of break, best first (interface §11.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Break {
    Paragraph,
    Line,
    Sentence,
    Space,
    Cluster,
}

/// Splits `text` into parts of at most `max_bytes` UTF-8 bytes whose concatenation is
/// `text`. A text within the limit is one part; an empty text is one empty part. `max_bytes`
/// below 4 is treated as 4 (one character always fits).
pub fn split_text(text: &str, max_bytes: usize) -> Vec<&str> {
    let max = max_bytes.max(4);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let cut = cut_point(rest, max);
        let (part, tail) = rest.split_at(cut);
        parts.push(part);
        rest = tail;
    }
    parts.push(rest);
    parts
}

/// The parts to send for `text`: [`split_text`] with the white space each part but the last
/// ends with trimmed (a part is never trimmed to nothing: white space alone stays as it is).
pub fn split_for_sending(text: &str, max_bytes: usize) -> Vec<String> {
    let parts = split_text(text, max_bytes);
    let last = parts.len() - 1;
    parts
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let t = p.trim_end();
            if i == last || t.is_empty() { p.to_string() } else { t.to_string() }
        })
        .collect()
}

/// How many messages `text` is sent as.
pub fn part_count(text: &str, max_bytes: usize) -> usize {
    if text.len() <= max_bytes.max(4) { 1 } else { split_text(text, max_bytes).len() }
}

/// Where to cut `s` (longer than `max`): the byte offset just after the best break within
/// the first `max` bytes. Always in `1..=max` and on a character boundary.
fn cut_point(s: &str, max: usize) -> usize {
    let mut best: [Option<usize>; 5] = [None; 5];
    let mut prev_newline = false;
    let mut iter = s.grapheme_indices(true).peekable();
    while let Some((at, g)) = iter.next() {
        let end = at + g.len();
        if end > max {
            break;
        }
        let newline = g == "\n" || g == "\r\n";
        let kind = if newline && prev_newline {
            Break::Paragraph
        } else if newline {
            Break::Line
        } else if matches!(g, "。" | "！" | "？")
            || (matches!(g, "." | "!" | "?")
                && iter.peek().is_none_or(|(_, n)| n.chars().all(char::is_whitespace)))
        {
            Break::Sentence
        } else if g.chars().all(char::is_whitespace) {
            Break::Space
        } else {
            Break::Cluster
        };
        prev_newline = newline;
        // A better kind of break is also a break of every lesser kind.
        for slot in best.iter_mut().skip(kind as usize) {
            *slot = Some(end);
        }
    }
    match best.into_iter().flatten().next() {
        // White space right after the break goes with it, not to the start of the next part.
        Some(cut) => {
            let extra = s[cut..]
                .graphemes(true)
                .take_while(|g| g.chars().all(char::is_whitespace))
                .scan(0, |n, g| {
                    *n += g.len();
                    Some(*n)
                })
                .take_while(|n| cut + n <= max)
                .last()
                .unwrap_or(0);
            cut + extra
        }
        // The first cluster alone is longer than the limit: cut it at a character boundary.
        None => {
            let mut cut = max;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            if cut == 0 { s.chars().next().map_or(s.len(), char::len_utf8) } else { cut }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_text("你好", 2000), vec!["你好"]);
        assert_eq!(split_text("", 2000), vec![""]);
        assert_eq!(part_count("你好", 2000), 1);
    }

    #[test]
    fn paragraphs_win_over_lines_and_sentences() {
        let text = "第一段。\n\n第二段第一行。\n第二段第二行。";
        // Room for the first paragraph and part of the second: cut after the blank line.
        let parts = split_text(text, 30);
        assert_eq!(parts[0], "第一段。\n\n");
        assert_eq!(parts.concat(), text);
        assert_eq!(split_for_sending(text, 30)[0], "第一段。");
    }

    #[test]
    fn the_last_break_of_the_best_kind_is_taken() {
        let text = "a b. c d. e f g h i j k l m n o p";
        let parts = split_text(text, 20);
        assert_eq!(parts[0], "a b. c d. ", "last sentence end within 20 bytes");
        let parts = split_text("aaaa bbbb cccc dddd eeee", 12);
        assert_eq!(parts[0], "aaaa bbbb ", "last space");
    }

    #[test]
    fn a_dot_inside_a_word_is_not_a_sentence_end() {
        let parts = split_text("see example.com and more words here", 20);
        assert_eq!(parts[0], "see example.com and ");
    }

    #[test]
    fn emoji_sequences_are_never_cut() {
        let family = "👨🏻‍👩🏻‍👧🏻‍👦🏻"; // 41 bytes, one cluster
        let text = family.repeat(5);
        let parts = split_text(&text, 100);
        assert!(parts.iter().all(|p| p.len() <= 100 && p.len() % family.len() == 0));
        assert_eq!(parts.concat(), text);
    }

    #[test]
    fn a_cluster_longer_than_the_limit_is_cut_at_a_character() {
        let text = format!("e{}", "\u{301}".repeat(10)); // 21 bytes, one cluster
        let parts = split_text(&text, 8);
        assert!(parts.iter().all(|p| p.len() <= 8 && !p.is_empty()));
        assert_eq!(parts.concat(), text);
    }

    fn unicode_text() -> impl Strategy<Value = String> {
        let atoms = prop::sample::select(vec![
            "a",
            "Z",
            " ",
            ".",
            "!",
            "\n",
            "\n\n",
            "\r\n",
            "中",
            "文",
            "。",
            "？",
            "😀",
            "👍🏽",
            "👩‍💻",
            "👨🏻‍👩🏻‍👧🏻‍👦🏻",
            "🇨🇳",
            "e\u{301}",
            "\u{300}",
            "ก\u{e31}",
            "한",
            "\u{3000}",
            "1️⃣",
        ]);
        prop::collection::vec(atoms, 0..400).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn parts_fit_are_aligned_and_rebuild_the_input(text in unicode_text(), max in 48usize..300) {
            let parts = split_text(&text, max);
            prop_assert_eq!(parts.concat(), text.clone());
            let clusters: std::collections::HashSet<usize> =
                text.grapheme_indices(true).map(|(i, _)| i).chain([text.len()]).collect();
            let mut at = 0;
            for p in &parts {
                prop_assert!(p.len() <= max, "part of {} bytes over {}", p.len(), max);
                prop_assert!(!p.is_empty() || parts.len() == 1);
                at += p.len();
                prop_assert!(clusters.contains(&at), "cut at {} is inside a grapheme cluster", at);
            }
            prop_assert_eq!(parts.len(), part_count(&text, max));
        }
    }
}
