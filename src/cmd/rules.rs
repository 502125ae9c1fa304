//! `kefu rules check [DIR]` and `kefu rules import FILE` (interface §1).

use clap::Subcommand;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::common::{CmdError, CmdResult};
use crate::config::Config;
use crate::rules::import::{ImportError, import_beside};
use crate::rules::{Diagnostic, RuleSet, TestOutcome};

#[derive(Subcommand, Debug)]
pub enum RulesCmd {
    /// Load every rule file, report every error, run the [[test]] cases.
    Check {
        /// Rules directory (default: rules.dir from the config).
        dir: Option<PathBuf>,
        /// Print one JSON report (errors, warnings, every test's outcome) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Convert the admin panel's auto-reply JSON (get_current_autoreply_info) into a rule file.
    Import {
        /// The JSON answer of GET /cgi-bin/get_current_autoreply_info, saved to a file.
        file: PathBuf,
        /// Write the rule file here instead of printing it (an existing file needs --force).
        #[arg(long, value_name = "PATH")]
        out: Option<PathBuf>,
        /// Overwrite the --out file if it exists.
        #[arg(long, requires = "out")]
        force: bool,
    },
}

/// `kefu rules check [DIR]` or `kefu rules import FILE`.
pub fn run(cfg: &Config, cmd: &RulesCmd) -> CmdResult {
    match cmd {
        RulesCmd::Check { dir, json } => check(cfg, dir.as_deref(), *json),
        RulesCmd::Import { file, out, force } => import(cfg, file, out.as_deref(), *force),
    }
}

/// Loads every rule file, prints every error as `path:line:col: message`, runs the
/// `[[test]]` cases (one line each) and fails unless everything loads and passes.
pub fn check(cfg: &Config, given: Option<&Path>, json: bool) -> CmdResult {
    let dir = given.unwrap_or(&cfg.rules.dir);
    let loaded = match RuleSet::load_dir_with(
        dir,
        &cfg.window,
        &cfg.backends.keys().cloned().collect::<Vec<_>>(),
    ) {
        Ok(l) => l,
        Err(diags) => {
            let errors = diags.iter().filter(|d| d.is_error()).count();
            if json {
                let (errs, warns): (Vec<&Diagnostic>, Vec<&Diagnostic>) =
                    diags.iter().partition(|d| d.is_error());
                let report = json!({
                    "dir": dir, "ok": false, "rules": null, "files": null,
                    "errors": errs, "warnings": warns, "tests": [],
                });
                crate::outln!("{report}")?;
            } else {
                diags.iter().try_for_each(|d| crate::outln!("{d}"))?;
            }
            return Err(CmdError::failed(format!(
                "the rules in {} do not load: {errors} error{}{}",
                dir.display(),
                if errors == 1 { "" } else { "s" },
                cfg.dir_hint("rules.dir", dir, given.map(|_| "as the DIR argument"))
            )));
        }
    };
    let notes = loaded.set.long_texts(cfg.delivery.max_text_bytes);
    let outcomes: Vec<TestOutcome> = loaded.tests.iter().map(|t| t.run(&loaded.set)).collect();
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if json {
        let tests: Vec<_> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "path": o.case.path, "line": o.case.line, "col": o.case.col,
                    "input": o.case.describe(), "expect": o.case.expect,
                    "fired": o.fired, "passed": o.passed, "forwards": o.forwards,
                })
            })
            .collect();
        let report = json!({
            "dir": dir, "ok": failed == 0, "rules": loaded.set.len(),
            "files": loaded.set.files(), "errors": [], "warnings": loaded.warnings,
            "notes": notes, "tests": tests,
        });
        crate::outln!("{report}")?;
    } else {
        loaded.warnings.iter().try_for_each(|w| crate::outln!("{w}"))?;
        notes.iter().try_for_each(|n| crate::outln!("{n}"))?;
        outcomes.iter().try_for_each(|o| crate::outln!("{o}"))?;
        crate::outln!(
            "{} rules in {} files; {} tests: {} passed, {failed} failed",
            loaded.set.len(),
            loaded.set.files(),
            outcomes.len(),
            outcomes.len() - failed
        )?;
    }
    if failed > 0 {
        return Err(CmdError::failed(format!("{failed} of {} rule tests failed", outcomes.len())));
    }
    Ok(())
}

/// Converts the admin panel's auto-reply JSON into a rule file, printed or written to `out`.
///
/// The file is made for the directory it goes to (`--out`'s, or `rules.dir` when printed):
/// its names, priorities and tests fit the rule files already there, and each existing test
/// it changes is named on stderr. An existing `--out` file is replaced only with `--force`;
/// settings with nothing to import are a failure (exit 1), not an empty file.
pub fn import(cfg: &Config, file: &Path, out: Option<&Path>, force: bool) -> CmdResult {
    if let Some(path) = out
        && path.exists()
        && !force
    {
        return Err(CmdError::Usage(format!(
            "{} already exists: add --force to replace it, or choose another --out",
            path.display()
        )));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| CmdError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let (dir, name) = match out {
        Some(p) => {
            let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            (dir.to_path_buf(), p.file_name().map(PathBuf::from).unwrap_or_default())
        }
        None => (cfg.rules.dir.clone(), PathBuf::from("imported.toml")),
    };
    let existing = rule_files(&dir, &name);
    let imported = import_beside(&text, existing, &dir.join(&name))
        .map_err(|e: ImportError| CmdError::failed(format!("{}: {e}", file.display())))?;
    for w in &imported.warnings {
        crate::errln!("warning: {w}");
    }
    match out {
        Some(path) => {
            std::fs::write(path, &imported.text)
                .map_err(|e| CmdError::failed(format!("cannot write {}: {e}", path.display())))?;
            crate::errln!(
                "wrote {} ({} rule{}); check the directory with `kefu rules check {}`",
                path.display(),
                imported.rules,
                if imported.rules == 1 { "" } else { "s" },
                dir.display()
            );
        }
        None => crate::out!("{}", imported.text)?,
    }
    Ok(())
}

/// The `*.toml` files directly in `dir` but `except` (the file being replaced), as `(path,
/// text)`; unreadable ones are skipped (`rules check` reports them).
fn rule_files(dir: &Path, except: &Path) -> Vec<(PathBuf, String)> {
    let Ok((files, _unreadable)) = crate::rules::read_dir_sources(dir) else { return Vec::new() };
    files.into_iter().filter(|(p, _)| p.file_name().map(Path::new) != Some(except)).collect()
}
