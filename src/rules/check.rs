//! The `[[test]]` cases written inside rule files, and running them against a rule set
//! (what `kefu rules check` reports, one line per case).

use std::fmt;
use std::path::PathBuf;

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::RuleSet;
use crate::model::RuleInput;

/// The sender of a `[[test]]` without `from`.
pub const TEST_OPENID: &str = "oRuleTestFollower0000000000";

/// One `[[test]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestCase {
    pub path: PathBuf,
    pub line: usize,
    pub col: usize,
    pub input: RuleInput,
    /// Names of the rules expected to fire, in order.
    pub expect: Vec<String>,
}

impl TestCase {
    /// How the case reads in a report: `text "我想退款"` or `event CLICK key CONTACT_US`.
    pub fn describe(&self) -> String {
        let i = &self.input;
        let mut s = match (&i.text, &i.event) {
            (Some(t), _) => format!("text {t:?}"),
            (None, Some(e)) => format!("event {e}"),
            (None, None) => format!("{} push", i.msg_type),
        };
        if i.event.is_some()
            && let Some(k) = &i.event_key
        {
            s.push_str(&format!(" key {k:?}"));
        }
        if let Some(m) = &i.menu_choice {
            s.push_str(&format!(" menu_choice {m:?}"));
        }
        if i.from != TEST_OPENID {
            s.push_str(&format!(" from {}", i.from));
        }
        s
    }

    /// Runs the case. `random_one` choices do not change which rules fire; the RNG is seeded
    /// so a run is repeatable anyway.
    pub fn run(&self, set: &RuleSet) -> TestOutcome {
        let ev = set.evaluate_with(&self.input, &mut StdRng::seed_from_u64(0));
        let forwards = ev
            .actions
            .iter()
            .filter_map(|a| match &a.action {
                crate::model::Action::Forward { backend, .. } => Some(backend.clone()),
                _ => None,
            })
            .collect();
        TestOutcome {
            case: self.clone(),
            passed: ev.fired == self.expect,
            fired: ev.fired,
            forwards,
        }
    }
}

/// The result of one case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestOutcome {
    pub case: TestCase,
    pub fired: Vec<String>,
    pub passed: bool,
    /// The backends the fired rules forward to (shown as `forward → NAME`, not called).
    pub forwards: Vec<String>,
}

impl fmt::Display for TestOutcome {
    /// `ok   rules/faq.toml:40:1 text "我想退款" -> [refund]`, or `FAIL ... expected [..], fired [..]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.case;
        let at = format!("{}:{}:{}", c.path.display(), c.line, c.col);
        if self.passed {
            write!(f, "ok   {at} {} -> [{}]", c.describe(), self.fired.join(", "))?;
            for b in &self.forwards {
                write!(f, " forward → {b}")?;
            }
            Ok(())
        } else {
            write!(
                f,
                "FAIL {at} {}: expected [{}], fired [{}]",
                c.describe(),
                c.expect.join(", "),
                self.fired.join(", ")
            )
        }
    }
}
