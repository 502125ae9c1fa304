//! From file text to raw rule items, collecting *every* shape error with its position.
//!
//! serde stops at the first error of whatever it deserializes, so a file is parsed once with
//! `toml_edit` (which keeps the byte span of every key and value) and each `[[rule]]` and
//! `[[test]]` is deserialized on its own. When an item fails, the offending key is removed and
//! the item tried again, so three typos in one rule give three diagnostics, not one.

use std::ops::Range;
use std::path::Path;

use serde::de::{DeserializeOwned, IntoDeserializer};
use toml_edit::{ImDocument, Item, Value};

use super::Diagnostic;
use super::file::{RawReply, RawRule, RawTest};

/// A raw item with the span of its header, for errors about the item as a whole.
pub(crate) struct Located<T> {
    pub item: T,
    pub span: Range<usize>,
}

pub(crate) struct ParsedFile {
    pub rules: Vec<Located<RawRule>>,
    pub tests: Vec<Located<RawTest>>,
}

/// Parses one file; every problem found is pushed to `diags`.
pub(crate) fn parse_file(path: &Path, text: &str, diags: &mut Vec<Diagnostic>) -> ParsedFile {
    let mut out = ParsedFile { rules: Vec::new(), tests: Vec::new() };
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let span = e.span().unwrap_or(0..0);
            diags.push(Diagnostic::error(
                path,
                text,
                span.start,
                format!("TOML syntax error: {}", one_line(e.message())),
            ));
            return out;
        }
    };
    for (key, item) in doc.as_table().iter() {
        let key_span = doc.as_table().key(key).and_then(|k| k.span()).unwrap_or(0..0);
        match key {
            "rule" | "test" => {
                let Some(elements) = array_elements(item) else {
                    diags.push(Diagnostic::error(
                        path,
                        text,
                        key_span.start,
                        format!("`{key}` must be an array of tables: write [[{key}]], not [{key}]"),
                    ));
                    continue;
                };
                for (value, span) in elements {
                    if key == "rule" {
                        if let Some(item) =
                            lenient::<RawRule>(value, span.clone(), "[[rule]]", path, text, diags)
                        {
                            out.rules.push(Located { item, span });
                        }
                    } else if let Some(item) =
                        lenient::<RawTest>(value, span.clone(), "[[test]]", path, text, diags)
                    {
                        out.tests.push(Located { item, span });
                    }
                }
            }
            other => diags.push(Diagnostic::error(
                path,
                text,
                key_span.start,
                format!(
                    "unknown top-level key `{other}`: a rule file holds only [[rule]] and [[test]]"
                ),
            )),
        }
    }
    out
}

/// One reply table written alone as TOML (`text = "…"` lines: a backend's answer element,
/// `compile_answer`), checked like a `[[rule.reply]]`; every problem is a diagnostic.
pub(crate) fn parse_reply(
    path: &Path,
    text: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<RawReply> {
    let doc = match ImDocument::parse(text) {
        Ok(d) => d,
        Err(e) => {
            let msg = format!("not a reply table: {}", one_line(e.message()));
            diags.push(Diagnostic::error(path, text, 0, msg));
            return None;
        }
    };
    let value = Item::Table(doc.as_table().clone()).into_value().ok()?;
    lenient::<RawReply>(value, 0..text.len(), "reply", path, text, diags)
}

/// toml_edit's messages span lines ("invalid table header\nexpected ..."); a diagnostic is one.
fn one_line(msg: &str) -> String {
    msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("; ")
}

/// The tables of `[[x]]` (or `x = [{...}]`) as values, each with its own span.
fn array_elements(item: &Item) -> Option<Vec<(Value, Range<usize>)>> {
    match item {
        Item::ArrayOfTables(a) => Some(
            a.iter()
                .map(|t| {
                    let span = t.span().unwrap_or(0..0);
                    (Item::Table(t.clone()).into_value().unwrap_or(Value::from(false)), span)
                })
                .collect(),
        ),
        Item::Value(Value::Array(a)) => {
            Some(a.iter().map(|v| (v.clone(), v.span().unwrap_or(0..0))).collect())
        }
        _ => None,
    }
}

/// Deserializes `value` as `T`, reporting each error and retrying without the offending key.
/// Returns the item when what remains deserializes, so later checks can still report on the
/// rest of it (the load fails anyway because errors were recorded).
fn lenient<T: DeserializeOwned>(
    mut value: Value,
    span: Range<usize>,
    what: &str,
    path: &Path,
    text: &str,
    diags: &mut Vec<Diagnostic>,
) -> Option<T> {
    let mut removed_any = false;
    // Each round removes one key, so this bound is only a guard against a value that keeps
    // failing at a span no key owns.
    for _ in 0..256 {
        let err = match T::deserialize(value.clone().into_deserializer()) {
            Ok(t) => return Some(t),
            Err(e) => e,
        };
        let msg = err.message().to_string();
        // A key removed for a bad value then shows up as missing: already reported.
        if removed_any && msg.starts_with("missing field") {
            return None;
        }
        let at = err.span().filter(|s| s.start != 0 || s.end != 0).unwrap_or(span.clone());
        let mut key_path = Vec::new();
        let removed = remove_at(&mut value, at.start, &mut key_path);
        diags.push(Diagnostic::error(path, text, at.start, describe(&msg, &key_path, what)));
        if !removed {
            return None;
        }
        removed_any = true;
    }
    None
}

/// Removes the innermost key whose key or value covers byte `offset`; `path` gets its key path.
fn remove_at(v: &mut Value, offset: usize, path: &mut Vec<String>) -> bool {
    match v {
        Value::InlineTable(t) => {
            let keys: Vec<String> = t.iter().map(|(k, _)| k.to_string()).collect();
            for k in keys {
                let key_span = t.key(&k).and_then(|key| key.span());
                let Some(child) = t.get_mut(&k) else { continue };
                path.push(k.clone());
                if remove_at(child, offset, path) {
                    return true;
                }
                let covers = |r: Option<Range<usize>>| r.is_some_and(|r| r.contains(&offset));
                if covers(key_span) || covers(child.span()) {
                    t.remove(&k);
                    return true;
                }
                path.pop();
            }
            false
        }
        Value::Array(a) => {
            for i in 0..a.len() {
                if let Some(child) = a.get_mut(i)
                    && remove_at(child, offset, path)
                {
                    // A reply that lost its kind would only add a "needs one kind" error.
                    if path.len() == 2 && path[0] == "reply" {
                        a.remove(i);
                    }
                    return true;
                }
            }
            false
        }
        _ => false,
    }
}

/// Turns serde's message into one that names the table and, for unknown keys, what they are.
fn describe(msg: &str, key_path: &[String], what: &str) -> String {
    if let Some(rest) = msg.strip_prefix("unknown field `") {
        let (key, tail) = rest.split_once('`').unwrap_or((rest, ""));
        let parent: Vec<&str> =
            key_path.iter().take(key_path.len().saturating_sub(1)).map(String::as_str).collect();
        let (kind, table) = match (what, parent.as_slice()) {
            ("[[rule]]", ["when"]) => ("condition", "[rule.when]".to_string()),
            ("[[rule]]", ["reply"]) => ("reply kind", "[[rule.reply]]".to_string()),
            (_, []) => ("key", what.to_string()),
            ("[[rule]]", p) => ("key", format!("rule.{}", p.join("."))),
            (_, p) => ("key", format!("{what} {}", p.join("."))),
        };
        return format!("unknown {kind} `{key}` in {table}{tail}");
    }
    if key_path.is_empty() {
        format!("{what}: {msg}")
    } else {
        format!("`{}`: {msg}", key_path.join("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        let mut d = Vec::new();
        parse_file(Path::new("r.toml"), text, &mut d);
        d.iter().map(|d| d.to_string()).collect()
    }

    #[test]
    fn every_unknown_key_of_one_rule_is_reported() {
        let text = "[[rule]]\nname = \"a\"\nprio = 1\n[rule.when]\ntext_contain = \"x\"\n\
                    [[rule.reply]]\ntxt = \"hi\"\n";
        let e = errors(text);
        assert_eq!(e.len(), 3, "{e:?}");
        assert!(
            e[0].starts_with("r.toml:3:1: unknown key `prio` in [[rule]], expected one of"),
            "{e:?}"
        );
        assert!(
            e[1].starts_with("r.toml:5:1: unknown condition `text_contain` in [rule.when]"),
            "{e:?}"
        );
        assert!(
            e[2].starts_with("r.toml:7:1: unknown reply kind `txt` in [[rule.reply]]"),
            "{e:?}"
        );
    }

    #[test]
    fn type_error_names_the_key_and_does_not_report_it_missing() {
        let e = errors("[[rule]]\nname = 5\n");
        assert_eq!(e, vec!["r.toml:2:8: `name`: invalid type: integer `5`, expected a string"]);
    }

    #[test]
    fn single_table_is_refused() {
        let e = errors("[rule]\nname = \"a\"\n");
        assert_eq!(
            e,
            vec!["r.toml:1:2: `rule` must be an array of tables: write [[rule]], not [rule]"]
        );
    }
}
