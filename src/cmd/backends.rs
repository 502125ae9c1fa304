//! `kefu backends check [NAME]` (interface §7.7): calls each configured backend once with a
//! test push and prints its latency and answer; exits 1 naming the cause of each failure
//! (connection refused, a 4xx/5xx, a timeout, a malformed answer).

use std::time::Instant;

use clap::Subcommand;
use serde_json::json;

use super::common::{CmdError, CmdResult};
use crate::backends::{BackendDeps, Backends, ForwardRequest, PushFacts, WindowFacts};
use crate::config::Config;

/// The follower named in test pushes: no real follower has it.
pub const CHECK_OPENID: &str = "oKefuBackendsCheck0000000000";
/// The rule named in test pushes.
pub const CHECK_RULE: &str = "kefu-backends-check";

#[derive(Subcommand, Debug)]
pub enum BackendsCmd {
    /// Call each backend (or NAME) once with a test push; print the latency and the answer.
    Check {
        /// Only this backend (`[backends.NAME]`).
        name: Option<String>,
        /// One JSON object per backend: {"backend","kind","ok","ms","answer"|"error"}.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cfg: &Config, cmd: &BackendsCmd) -> CmdResult {
    let BackendsCmd::Check { name, json } = cmd;
    if cfg.backends.is_empty() {
        return Err(CmdError::Usage(
            "no backend is configured: add a [backends.NAME] table (kind = \"http\", url = …) \
             to the config file"
                .into(),
        ));
    }
    if let Some(n) = name
        && !cfg.backends.contains_key(n)
    {
        return Err(CmdError::Usage(format!(
            "no backend `{n}`: the configured backends are {}",
            cfg.backends.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    // Once each: the check shows what one attempt does, not what retries hide.
    let mut once = cfg.clone();
    once.backends.retain(|n, _| name.as_ref().is_none_or(|want| want == n));
    for b in once.backends.values_mut() {
        b.retries = 0;
    }
    let deps = BackendDeps {
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        store: None,
        clock: std::sync::Arc::new(crate::model::SystemClock),
        rules_dir: cfg.rules.dir.clone(),
    };
    let backends = Backends::from_config(&once, &deps).map_err(CmdError::Failed)?;
    let now = crate::model::Clock::now_secs(&crate::model::SystemClock);
    let mut failed = Vec::new();
    for (n, entry) in backends.iter() {
        let req = test_request(cfg, n, entry.config.kind.as_str(), now);
        let started = Instant::now();
        let result = entry.backend.call(&req).await;
        let ms = started.elapsed().as_millis() as u64;
        let kind = entry.config.kind.as_str();
        match result {
            Ok(answer) => {
                let text = answer.text_summary();
                if *json {
                    crate::outln!(
                        "{}",
                        json!({"backend": n, "kind": kind, "ok": true, "ms": ms,
                               "replies": answer.replies.len(), "answer": text})
                    )?;
                } else {
                    let shown = if answer.replies.is_empty() {
                        "(no replies: `{\"replies\":[]}`)".to_string()
                    } else {
                        text
                    };
                    crate::outln!(
                        "{n} ({kind}): ok in {ms} ms, {}:\n{shown}",
                        match answer.replies.len() {
                            1 => "1 reply".to_string(),
                            k => format!("{k} replies"),
                        }
                    )?;
                }
            }
            Err(e) => {
                if *json {
                    crate::outln!(
                        "{}",
                        json!({"backend": n, "kind": kind, "ok": false, "ms": ms,
                               "outcome": e.outcome(), "error": e.to_string()})
                    )?;
                } else {
                    crate::outln!("{n} ({kind}): FAILED after {ms} ms: {e}")?;
                }
                failed.push(format!("{n}: {e}"));
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(CmdError::failed(format!(
            "{} of {} backends failed: {}",
            failed.len(),
            backends.names().len(),
            failed.join("; ")
        )))
    }
}

/// The test push: a text message from [`CHECK_OPENID`], as a forward of [`CHECK_RULE`]; for a
/// model (`openai`) a one-word prompt (interface §7.7), so the check costs a few tokens.
fn test_request(cfg: &Config, backend: &str, kind: &str, now: i64) -> ForwardRequest {
    let account = if cfg.wechat.original_id.is_empty() {
        crate::rules::input::SIMULATED_ACCOUNT.to_string()
    } else {
        cfg.wechat.original_id.clone()
    };
    ForwardRequest {
        id: format!("fw_check_{backend}_{now}"),
        account,
        account_name: cfg.account_name(),
        openid: CHECK_OPENID.into(),
        received_at: now,
        rule: CHECK_RULE.into(),
        push: PushFacts {
            msgtype: "text".into(),
            content: Some(if kind == "openai" { "你好" } else { "kefu backends check" }.into()),
            ..PushFacts::default()
        },
        window: WindowFacts {
            open: true,
            quota_left: Some(5),
            expires_at: Some(now + 48 * 3600),
            customer_service: true,
        },
    }
}
