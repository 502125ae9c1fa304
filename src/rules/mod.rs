//! Operator rules (interface §4): rule files are parsed into raw types (`file`), compiled once
//! into an immutable [`RuleSet`] (`compile`, `matcher`, `actions`), evaluated per push, checked
//! by `kefu rules check` (`check`), imported from the admin panel (`import`), and hot-reloaded
//! behind the [`Rules`] handle (`watch`). What the rules see of a push is [`input`].

mod actions;
pub mod check;
mod compile;
pub mod file;
pub mod import;
pub mod input;
mod matcher;
mod parse;
mod watch;

pub use compile::compile_answer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;

use crate::config::WindowConfig;
use crate::model::{Action, OutboxAction, PlannedAction, RuleInput};

pub use check::{TestCase, TestOutcome};
pub use watch::{ReloadStatus, Rules, WatchGuard};

/// One rule file: its path and its text.
pub type Source = (PathBuf, String);

/// The rule files of `dir` as `(path, text)`: every `*.toml` directly in it, hidden files
/// skipped; a file that cannot be read is a diagnostic beside them. Errs when the directory
/// itself cannot be read. [`RuleSet::load_dir`] and `kefu rules import` (which checks its
/// output beside the files already there) both read a directory through here.
pub fn read_dir_sources(dir: &Path) -> Result<(Vec<Source>, Vec<Diagnostic>), Vec<Diagnostic>> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        vec![Diagnostic::file(
            dir,
            Severity::Error,
            // The caller knows where the path came from (an argument, `rules.dir` from a
            // file or a variable) and says so; here only what went wrong.
            format!("cannot read the rules directory: {e}"),
        )]
    })?;
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".toml") || !path.is_file() {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => sources.push((path, text)),
            Err(e) => errors.push(Diagnostic::file(
                &path,
                Severity::Error,
                format!("cannot read the rule file: {e}"),
            )),
        }
    }
    Ok((sources, errors))
}

/// How bad a [`Diagnostic`] is: an error keeps the rules from loading, a warning does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    /// Information about what a rule will do (a long text split into parts).
    Note,
}

/// One finding about a rule file, displayed as `path:line:col: message` (warnings as
/// `path:line:col: warning: message`). `line` 0 means the whole file or directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub message: String,
}

impl Diagnostic {
    /// An error at byte `offset` of `text`.
    pub(crate) fn error(path: &Path, text: &str, offset: usize, message: String) -> Self {
        let (line, col) = line_col(text, offset);
        Diagnostic { path: path.to_path_buf(), line, col, severity: Severity::Error, message }
    }
    pub(crate) fn warning(path: &Path, text: &str, offset: usize, message: String) -> Self {
        Diagnostic { severity: Severity::Warning, ..Diagnostic::error(path, text, offset, message) }
    }
    /// About a file or directory as a whole.
    pub(crate) fn file(path: &Path, severity: Severity, message: String) -> Self {
        Diagnostic { path: path.to_path_buf(), line: 0, col: 0, severity, message }
    }
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.col)?;
        }
        let sev = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
            Severity::Note => "note: ",
        };
        write!(f, ": {sev}{}", self.message)
    }
}

/// 1-based line and column (in characters, so CJK text points at the right place).
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut off = offset.min(text.len());
    while !text.is_char_boundary(off) {
        off -= 1;
    }
    let before = &text[..off];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Line starts of one file, so positions of thousands of rules cost a binary search each
/// rather than a scan from the top of the file.
pub(crate) struct LineIndex(Vec<usize>);

impl LineIndex {
    pub fn new(text: &str) -> Self {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        LineIndex(starts)
    }
    /// The same answer as [`line_col`].
    pub fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut off = offset.min(text.len());
        while !text.is_char_boundary(off) {
            off -= 1;
        }
        let line = self.0.partition_point(|s| *s <= off);
        let start = self.0[line - 1];
        (line, text[start..off].chars().count() + 1)
    }
}

/// A freshly loaded rule set with its warnings and the `[[test]]` cases of its files.
#[derive(Debug)]
pub struct Loaded {
    pub set: RuleSet,
    pub warnings: Vec<Diagnostic>,
    pub tests: Vec<TestCase>,
}

/// Where a rule was defined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub path: Arc<Path>,
    pub line: usize,
    pub col: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.path.display(), self.line, self.col)
    }
}

/// One compiled rule.
#[derive(Debug)]
pub(crate) struct Rule {
    pub name: String,
    pub origin: Origin,
    pub priority: i64,
    pub continue_: bool,
    pub random_one: bool,
    pub cond: matcher::Cond,
    pub replies: Vec<actions::Reply>,
}

/// The compiled, immutable rules of one directory, in evaluation order.
pub struct RuleSet {
    rules: Vec<Rule>,
    matcher: matcher::Matcher,
    dir: PathBuf,
    window: WindowConfig,
    files: usize,
    /// The backends a `forward` could name when it was compiled (reloads check against them).
    backends: Vec<String>,
}

impl fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleSet")
            .field("dir", &self.dir)
            .field("files", &self.files)
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// The rules that fired for one push and what they planned, in rule then reply order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Evaluation {
    pub fired: Vec<String>,
    pub actions: Vec<PlannedAction>,
}

impl Evaluation {
    /// Splits off the passive HTTP answer (interface §6.8): a transfer always is one; else,
    /// with `passive_first`, the first immediate send of a kind a passive reply supports
    /// (not one sent `as` a kf account). Delayed replies never are. The rest stay planned.
    pub fn split_passive(
        self,
        passive_first: bool,
    ) -> (Option<crate::delivery::OwnPassive>, Vec<PlannedAction<OutboxAction>>) {
        actions::split_passive(self.actions, passive_first)
    }
}

impl RuleSet {
    /// Loads and compiles every `*.toml` file directly in `dir` (hidden files skipped).
    /// Every error of every file is returned at once, warnings included.
    /// No backend is configured: a `forward` is an error (see [`RuleSet::load_dir_with`]).
    pub fn load_dir(dir: &Path, window: &WindowConfig) -> Result<Loaded, Vec<Diagnostic>> {
        Self::load_dir_with(dir, window, &[])
    }

    /// The same where `backends` are the configured `[backends.NAME]` names: a `forward` to
    /// any other is an error at its `path:line:col`.
    pub fn load_dir_with(
        dir: &Path,
        window: &WindowConfig,
        backends: &[String],
    ) -> Result<Loaded, Vec<Diagnostic>> {
        let (sources, errors) = read_dir_sources(dir)?;
        if !errors.is_empty() {
            return Err(errors);
        }
        compile::compile(sources, window, dir, backends)
    }

    /// Compiles rule files given as `(path, text)`, as if they were one directory's files,
    /// with no backend configured.
    pub fn from_sources(
        sources: Vec<(PathBuf, String)>,
        window: &WindowConfig,
    ) -> Result<Loaded, Vec<Diagnostic>> {
        compile::compile(sources, window, Path::new(""), &[])
    }

    /// The same with the backends a `forward` may name.
    pub fn from_sources_with(
        sources: Vec<(PathBuf, String)>,
        window: &WindowConfig,
        backends: &[String],
    ) -> Result<Loaded, Vec<Diagnostic>> {
        compile::compile(sources, window, Path::new(""), backends)
    }

    /// The backends a `forward` could name when this set was compiled.
    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
    /// The number of rule files it was compiled from.
    pub fn files(&self) -> usize {
        self.files
    }

    /// A note for every text reply longer than `max_bytes` (`delivery.max_text_bytes`): into
    /// how many parts it is split (interface §7.5). A text with placeholders is measured
    /// without them ("at least"), since what they grow to is only known at run time.
    pub fn long_texts(&self, max_bytes: usize) -> Vec<Diagnostic> {
        let mut out = Vec::new();
        for rule in &self.rules {
            for reply in &rule.replies {
                let Action::Send { message: crate::model::OutMessage::Text { content } } =
                    &reply.kind
                else {
                    continue;
                };
                let (literal, fixed) = content.literal_text();
                if literal.len() <= max_bytes {
                    continue;
                }
                let parts = crate::delivery::split::part_count(&literal, max_bytes);
                let (bytes, parts) = if fixed {
                    (format!("{} bytes", literal.len()), format!("{parts} parts"))
                } else {
                    (format!("at least {} bytes", literal.len()), format!("at least {parts} parts"))
                };
                out.push(Diagnostic {
                    path: rule.origin.path.to_path_buf(),
                    line: reply.at.0,
                    col: reply.at.1,
                    severity: Severity::Note,
                    message: format!(
                        "rule `{}`: this text is {bytes}, over delivery.max_text_bytes = \
                         {max_bytes}: it is sent as {parts}, split at paragraph, line and \
                         sentence breaks",
                        rule.name
                    ),
                });
            }
        }
        out
    }
    /// The directory it was loaded from (empty for [`RuleSet::from_sources`]).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn window(&self) -> &WindowConfig {
        &self.window
    }
    /// Every rule as (name, `path:line:col` of its definition, priority), in evaluation order
    /// (the console's rules page).
    pub fn outline(&self) -> Vec<(String, String, i64)> {
        self.rules.iter().map(|r| (r.name.clone(), r.origin.to_string(), r.priority)).collect()
    }

    /// Rule names in evaluation order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Every media file the replies name (interface §9), each once, in rule order.
    pub fn media_refs(&self) -> Vec<crate::media::MediaRef> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for reply in self.rules.iter().flat_map(|r| &r.replies) {
            reply.kind.map(|t| {
                if let Some(r) = t.as_literal().and_then(crate::media::MediaRef::parse)
                    && seen.insert(r.key())
                {
                    out.push(r);
                }
            });
        }
        out
    }

    /// Evaluates one push; `random_one` rules pick with the thread's RNG.
    pub fn evaluate(&self, input: &RuleInput) -> Evaluation {
        self.evaluate_with(input, &mut rand::thread_rng())
    }

    /// Evaluates one push with the given RNG (seed it in tests).
    pub fn evaluate_with<R: Rng + ?Sized>(&self, input: &RuleInput, rng: &mut R) -> Evaluation {
        let (cands, facts) = self.matcher.candidates(input);
        let mut ev = Evaluation::default();
        for i in cands {
            let rule = &self.rules[i as usize];
            if !self.matcher.holds(&rule.cond, input, &facts) {
                continue;
            }
            let captured = self.matcher.matched_regex(&rule.cond, &facts).and_then(|(text, id)| {
                if text {
                    actions::Captured::from_regex(
                        self.matcher.text_regex(id),
                        input.text.as_deref()?,
                    )
                } else {
                    actions::Captured::from_regex(
                        self.matcher.key_regex(id),
                        input.event_key.as_deref()?,
                    )
                }
            });
            let ctx = actions::RenderCtx { input, captures: captured.as_ref() };
            ev.fired.push(rule.name.clone());
            if rule.random_one && !rule.replies.is_empty() {
                let pick = rng.gen_range(0..rule.replies.len());
                ev.actions.push(rule.replies[pick].plan(&rule.name, &ctx));
            } else {
                ev.actions.extend(rule.replies.iter().map(|r| r.plan(&rule.name, &ctx)));
            }
            if !rule.continue_ {
                break;
            }
        }
        ev
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let t = "ab\n退款x";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 6), (2, 2));
        assert_eq!(line_col(t, 100), (2, 4));
        let idx = LineIndex::new(t);
        for off in 0..t.len() + 2 {
            assert_eq!(idx.line_col(t, off), line_col(t, off), "offset {off}");
        }
    }

    #[test]
    fn diagnostic_display() {
        let d = Diagnostic::error(Path::new("rules/a.toml"), "x\ny", 2, "bad".into());
        assert_eq!(d.to_string(), "rules/a.toml:2:1: bad");
        let w = Diagnostic::file(Path::new("rules"), Severity::Warning, "empty".into());
        assert_eq!(w.to_string(), "rules: warning: empty");
    }
}
