//! `kefu simulate`: which rules fire for a push and exactly what would be sent, with no
//! network: the passive reply as XML, then each customer-service message as its `custom/send`
//! body, in order, with its delay.

use std::path::PathBuf;

use super::common::PushInput;
use clap::Args;
use serde_json::{Value, json};

use super::common::{CmdError, CmdResult};
use crate::config::Config;
use crate::model::{OpenId, OutboxAction, PassiveReply, PlannedAction};
use crate::pipeline::intake::Intake;
use crate::rules::RuleSet;

#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Rules directory (default: rules.dir from the config).
    #[arg(long, value_name = "DIR")]
    pub rules: Option<PathBuf>,
    /// Sender OpenID.
    #[arg(long, value_name = "OPENID", default_value = "oSimulatedFollower000000000")]
    pub from: String,
    #[command(flatten)]
    pub input: PushInput,
    /// EventKey for --event.
    #[arg(long, requires = "event")]
    pub key: Option<String>,
    /// Print one JSON object (fired rules, passive reply, messages) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Call the backend a `forward` reply names, for real, and show its answer in place
    /// (without it a forward is shown as `forward → NAME`).
    #[arg(long)]
    pub call_backends: bool,
}

pub async fn run(cfg: &Config, args: &SimulateArgs) -> CmdResult {
    let from = OpenId::parse(&args.from).map_err(|e| CmdError::Usage(format!("--from: {e}")))?;
    // The passive reply's FromUserName, and the simulated push's ToUserName, is the account's
    // original ID (gh_…), not its WeChat ID.
    let account = if cfg.wechat.original_id.is_empty() {
        crate::rules::input::SIMULATED_ACCOUNT
    } else {
        cfg.wechat.original_id.as_str()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let intake = intake(args, &from, account, now)?;
    let input = &intake.input;

    let dir = args.rules.as_deref().unwrap_or(&cfg.rules.dir);
    let loaded =
        RuleSet::load_dir_with(dir, &cfg.window, &cfg.backends.keys().cloned().collect::<Vec<_>>())
            .map_err(|diags| {
                diags.iter().for_each(|d| crate::errln!("{d}"));
                CmdError::failed(format!(
                    "the rules in {} do not load{}; `kefu rules check {}` lists every error",
                    dir.display(),
                    cfg.dir_hint("rules.dir", dir, args.rules.as_ref().map(|_| "with --rules")),
                    dir.display()
                ))
            })?;
    loaded.warnings.iter().for_each(|w| crate::errln!("{w}"));

    let mut ev = loaded.set.evaluate(input);
    // The window this push opens for a follower kefu has not seen before, and whether the
    // account may call custom/send: what a backend is told (§7.2) and what delivery uses.
    let mut window = crate::ledger::Window::default();
    window.apply(intake.effect, now, &cfg.window);
    let service = crate::delivery::CustomerService::new(cfg.delivery.customer_service);
    let cs = service.allowed();
    let fired = ev.fired.clone();
    // A forward: called for real with --call-backends (its answer and the replies after it
    // take its place), else shown as `forward → NAME` after what comes before it.
    let mut forward = None;
    let mut late = false;
    if intake.effect != crate::model::WindowEffect::CloseAll
        && let Some(split) = crate::pipeline::forward::split_forward(&mut ev)
    {
        if args.call_backends {
            let started = std::time::Instant::now();
            let answer = call_backend(cfg, &intake, &split, &window, cs).await?;
            // As serve does: an answer later than passive_wait is not the HTTP answer.
            if started.elapsed() > cfg.delivery.passive_wait {
                late = true;
                crate::errln!(
                    "note: the backend answered after delivery.passive_wait ({}): serve answers \
                     the push with pending_text (or `success`) and sends this answer through \
                     custom/send, or holds it (without custom/send, WeChat's redeliveries give \
                     it about 14 s to be the passive reply)",
                    humantime::format_duration(cfg.delivery.passive_wait)
                );
            }
            ev.actions.extend(answer.replies);
            ev.actions.extend(split.tail);
        } else {
            forward = Some(split);
        }
    }
    let plan = crate::pipeline::plan(
        ev,
        cfg.rules.passive_first && intake.passive_allowed && !late,
        intake.effect,
        intake.transfer_allowed,
        cfg.delivery.max_text_bytes,
    );
    plan.dropped.iter().for_each(|r| crate::errln!("dropped a planned reply: {r}"));
    let splits = plan.splits;
    // Delivery as serve decides it for a follower kefu has not seen before: what the window
    // this push opens can carry goes out, the rest is held for the next push (§7.4).
    let terms = crate::pipeline::terms(&intake, cfg.rules.passive_first, &service, &cfg.delivery);
    let delivery = crate::delivery::assign(
        &[],
        plan.passive,
        crate::pipeline::outbox_entries(plan.planned, intake.received_at_ms),
        window.quota_left(now),
        &terms,
        intake.received_at_ms,
    );
    let passive = delivery.passive;
    let planned: Vec<_> = delivery.outbox.into_iter().map(|e| e.action).collect();
    let held: Vec<_> = delivery.hold.into_iter().map(|e| e.action).collect();
    let xml = passive.as_ref().map(|p| passive_xml(&input.from, account, now, p));
    let sends: Vec<Value> = planned.iter().map(|a| planned_json(&input.from, a)).collect();
    let held_json: Vec<Value> = held.iter().map(|a| planned_json(&input.from, a)).collect();

    let forward_json = forward.as_ref().map(|f| {
        let then: Vec<Value> = f
            .tail
            .iter()
            .filter_map(|a| a.clone().into_outbox())
            .map(|a| planned_json(&input.from, &a))
            .collect();
        json!({"backend": f.backend, "rule": f.rule, "fallback": f.fallback, "then": then})
    });
    if args.json {
        let out = json!({
            "fired": fired,
            "passive": passive.as_ref().map(|p| json!({ "reply": p, "xml": xml })),
            "messages": sends,
            "held": held_json,
            "splits": splits,
            "forward": forward_json,
        });
        crate::outln!("{out}")?;
        return Ok(());
    }
    if fired.is_empty() {
        crate::outln!("no rule fired: the push is answered with `success` and nothing is sent")?;
        return Ok(());
    }
    crate::outln!("rules fired: {}", fired.join(", "))?;
    for s in &splits {
        crate::outln!(
            "rule {}: a text of {} bytes is split into {} parts (delivery.max_text_bytes = {})",
            s.rule,
            s.bytes,
            s.parts,
            cfg.delivery.max_text_bytes
        )?;
    }
    match &xml {
        Some(x) => crate::outln!("passive reply (the HTTP answer):\n{x}")?,
        None => crate::outln!("passive reply: none (the push is answered with `success`)")?,
    }
    for (i, (a, s)) in planned.iter().zip(&sends).enumerate() {
        let when = if a.delay.is_zero() {
            "now".to_string()
        } else {
            format!("after {}", humantime::format_duration(a.delay))
        };
        let as_kf = a.kf_account.as_deref().map(|k| format!(", as {k}")).unwrap_or_default();
        crate::outln!(
            "{}. {when} (rule {}{as_kf}): POST {}\n{}",
            i + 1,
            a.rule,
            s["endpoint"].as_str().unwrap_or_default(),
            s["body"]
        )?;
    }
    if let (Some(f), Some(fj)) = (&forward, &forward_json) {
        let fallback =
            f.fallback.as_deref().map(|t| format!("; fallback {t:?}")).unwrap_or_default();
        crate::outln!(
            "forward → {} (rule {}): the push goes to the backend, its answer is sent here \
             (not called: --call-backends calls it){fallback}",
            f.backend,
            f.rule
        )?;
        for (i, t) in fj["then"].as_array().into_iter().flatten().enumerate() {
            crate::outln!(
                "then {}. (rule {}): POST {}\n{}",
                i + 1,
                t["rule"].as_str().unwrap_or(""),
                t["endpoint"].as_str().unwrap_or_default(),
                t["body"]
            )?;
        }
    }
    if !held.is_empty() {
        crate::outln!(
            "held for the follower's next push ({}): {} more",
            if cs {
                "the window this push opens cannot carry them"
            } else {
                "delivery.customer_service is off"
            },
            held.len()
        )?;
        for (i, h) in held_json.iter().enumerate() {
            crate::outln!(
                "h{}. (rule {})\n{}",
                i + 1,
                h["rule"].as_str().unwrap_or(""),
                h["body"]
            )?;
        }
    }
    Ok(())
}

/// `--call-backends`: calls the forward's backend once (with its retries), telling it the
/// facts of `window` and whether the account may call custom/send (`cs`), and returns its
/// answer, or the rule's fallback with the failure on stderr.
async fn call_backend(
    cfg: &Config,
    intake: &Intake,
    split: &crate::pipeline::forward::Split,
    window: &crate::ledger::Window,
    cs: bool,
) -> Result<crate::backends::Answer, CmdError> {
    let mut one = cfg.clone();
    one.backends.retain(|n, _| *n == split.backend);
    let deps = crate::backends::BackendDeps {
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
        store: None,
        clock: std::sync::Arc::new(crate::model::SystemClock),
        rules_dir: cfg.rules.dir.clone(),
    };
    let backends = crate::backends::Backends::from_config(&one, &deps).map_err(CmdError::Failed)?;
    let Some(entry) = backends.get(&split.backend) else {
        return Err(CmdError::Usage(format!("backend `{}` is not configured", split.backend)));
    };
    let mut req = crate::pipeline::forward::request_for(intake, split, &cfg.account_name());
    let now = intake.received_at_ms.div_euclid(1000);
    req.window = crate::pipeline::forward::window_facts(Some(window), now, cs);
    let started = std::time::Instant::now();
    match entry.backend.call(&req).await {
        Ok(a) => {
            crate::errln!(
                "forward → {}: answered in {} ms with {} replies",
                split.backend,
                started.elapsed().as_millis(),
                a.replies.len()
            );
            Ok(a)
        }
        Err(e) => {
            crate::errln!("forward → {}: failed ({e}); the rule's fallback is sent", split.backend);
            Ok(crate::backends::fallback_answer(&split.rule, split.fallback.as_deref()))
        }
    }
}

/// One planned action as the request kefu would make for it.
fn planned_json(openid: &str, a: &PlannedAction<OutboxAction>) -> Value {
    let (endpoint, body) = match &a.action {
        OutboxAction::Send { message } => (
            "/cgi-bin/message/custom/send",
            message.custom_send_body(openid, a.kf_account.as_deref()),
        ),
        OutboxAction::Typing => {
            ("/cgi-bin/message/custom/typing", json!({ "touser": openid, "command": "Typing" }))
        }
    };
    json!({
        "rule": a.rule,
        "delay_ms": a.delay.as_millis() as u64,
        "delay": humantime::format_duration(a.delay).to_string(),
        "kf_account": a.kf_account,
        "endpoint": endpoint,
        "body": body,
    })
}

/// The push as `serve` would take it in: `--text` and `--event` are written as WeChat writes
/// them and decoded like any push, `--xml` is a plaintext push body as WeChat sends it. The
/// `payment` event is a WeChat Pay notification (no push; its amount is 0 here).
fn intake(args: &SimulateArgs, from: &OpenId, account: &str, now: i64) -> Result<Intake, CmdError> {
    use crate::wechat::inbound::{build, parse};
    let received_at_ms = now.saturating_mul(1000);
    let push = if let Some(text) = &args.input.text {
        build::text(account, from.as_str(), now, text, 1)
            .map_err(|e| CmdError::Usage(format!("--text: this text cannot be a push: {e}")))?
    } else if let Some(event) = args.input.event.as_deref().filter(|e| *e != "payment") {
        build::event(account, from.as_str(), now, event, args.key.as_deref())
            .map_err(|e| CmdError::Usage(format!("--event: this event cannot be a push: {e}")))?
    } else if args.input.event.is_some() {
        let payment = crate::pay::Payment::simulated(from.clone(), args.key.as_deref());
        return Ok(Intake::from_payment(&payment, received_at_ms));
    } else if let Some(file) = &args.input.xml {
        let raw = std::fs::read(file).map_err(|e| {
            CmdError::Usage(format!("--xml {}: cannot read it: {e}", file.display()))
        })?;
        parse(&raw).map_err(|e| CmdError::Usage(format!("--xml {}: {e}", file.display())))?
    } else {
        return Err(CmdError::Usage("give one of --text, --event or --xml".into()));
    };
    Intake::from_push(&push, received_at_ms).map_err(|n| {
        CmdError::Usage(format!(
            "the push's FromUserName {:?} is not an OpenID: serve acknowledges such a push and \
             records nothing",
            n.from
        ))
    })
}

/// The passive reply as the XML WeChat receives (protocol §5.2).
fn passive_xml(to: &str, from: &str, create_time: i64, reply: &PassiveReply) -> String {
    crate::wechat::reply::render(to, from, create_time, reply)
        .unwrap_or_else(|e| format!("<!-- not a valid passive reply: {e} -->"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OutMessage;
    use std::time::Duration;

    #[test]
    fn passive_text_xml() {
        let p = PassiveReply::Message { message: OutMessage::Text { content: "a]]>b".into() } };
        assert_eq!(
            passive_xml("oU", "gh_x", 7, &p),
            "<xml><ToUserName><![CDATA[oU]]></ToUserName><FromUserName><![CDATA[gh_x]]>\
             </FromUserName><CreateTime>7</CreateTime><MsgType><![CDATA[text]]></MsgType>\
             <Content><![CDATA[a]]]]><![CDATA[>b]]></Content></xml>"
        );
    }

    #[test]
    fn typing_request() {
        let a = PlannedAction {
            rule: "r".into(),
            action: OutboxAction::Typing,
            delay: Duration::from_secs(2),
            kf_account: None,
            source: Default::default(),
        };
        let v = planned_json("oU", &a);
        assert_eq!(v["endpoint"], "/cgi-bin/message/custom/typing");
        assert_eq!(v["body"], json!({"touser": "oU", "command": "Typing"}));
        assert_eq!(v["delay"], "2s");
    }
}
