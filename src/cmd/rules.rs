//! `kefu rules check [DIR]` and `kefu rules import FILE` (interface §1).

use std::path::Path;

use serde_json::json;

use crate::cli::{CmdError, CmdResult};
use crate::config::Config;
use crate::rules::{Diagnostic, RuleSet, TestOutcome, import::import_autoreply};

/// Loads every rule file, prints every error as `path:line:col: message`, runs the
/// `[[test]]` cases (one line each) and fails unless everything loads and passes.
pub fn check(cfg: &Config, dir: Option<&Path>, json: bool) -> CmdResult {
    let dir = dir.unwrap_or(&cfg.rules.dir);
    let loaded = match RuleSet::load_dir(dir, &cfg.window) {
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
                println!("{report}");
            } else {
                diags.iter().for_each(|d| println!("{d}"));
            }
            return Err(CmdError::failed(format!(
                "the rules in {} do not load: {errors} error{}",
                dir.display(),
                if errors == 1 { "" } else { "s" }
            )));
        }
    };
    let outcomes: Vec<TestOutcome> = loaded.tests.iter().map(|t| t.run(&loaded.set)).collect();
    let failed = outcomes.iter().filter(|o| !o.passed).count();
    if json {
        let tests: Vec<_> = outcomes
            .iter()
            .map(|o| {
                json!({
                    "path": o.case.path, "line": o.case.line, "col": o.case.col,
                    "input": o.case.describe(), "expect": o.case.expect,
                    "fired": o.fired, "passed": o.passed,
                })
            })
            .collect();
        let report = json!({
            "dir": dir, "ok": failed == 0, "rules": loaded.set.len(),
            "files": loaded.set.files(), "errors": [], "warnings": loaded.warnings,
            "tests": tests,
        });
        println!("{report}");
    } else {
        loaded.warnings.iter().for_each(|w| println!("{w}"));
        outcomes.iter().for_each(|o| println!("{o}"));
        println!(
            "{} rules in {} files; {} tests: {} passed, {failed} failed",
            loaded.set.len(),
            loaded.set.files(),
            outcomes.len(),
            outcomes.len() - failed
        );
    }
    if failed > 0 {
        return Err(CmdError::failed(format!("{failed} of {} rule tests failed", outcomes.len())));
    }
    Ok(())
}

/// Converts the admin panel's auto-reply JSON into a rule file, printed or written to `out`.
pub fn import(file: &Path, out: Option<&Path>) -> CmdResult {
    let text = std::fs::read_to_string(file)
        .map_err(|e| CmdError::Usage(format!("cannot read {}: {e}", file.display())))?;
    let rules = import_autoreply(&text)
        .map_err(|e| CmdError::failed(format!("{}: {e}", file.display())))?;
    match out {
        Some(path) => {
            std::fs::write(path, &rules)
                .map_err(|e| CmdError::failed(format!("cannot write {}: {e}", path.display())))?;
            eprintln!("wrote {}; check it with `kefu rules check`", path.display());
        }
        None => print!("{rules}"),
    }
    Ok(())
}
