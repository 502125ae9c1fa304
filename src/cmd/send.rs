//! `kefu send OPENID (--text STR | --image MEDIA_ID | --json FILE) [--as KF] [--force]`
//! (interface §1, §6.9): sends one customer-service message now.
//!
//! Two steps with a seam between them: [`prepare`] turns the arguments into the exact
//! `custom/send` body (no network), [`run`] sends it through the window gate
//! ([`send_logged`]: refuse unless the follower's window allows it, or `--force`), which needs
//! the durable store. Without credentials the gate makes it a dry run.

use std::path::PathBuf;

use clap::Args;
use serde_json::{Value, json};

use super::common::{CmdError, CmdResult};
use crate::api::SendBody;
use crate::config::Config;
use crate::model::{Clock, OpenId, OutMessage, SystemClock};
use crate::pipeline::gate::{GateError, GateMode, Gated, send_logged};

use super::accounts::account_arg;
use super::common::{cli_store, send_client};

#[derive(Args, Debug)]
#[group(id = "body", required = true, multiple = false)]
pub struct MessageArgs {
    /// A text message with this content.
    #[arg(long, group = "body")]
    pub text: Option<String>,
    /// An image message with this media id (uploaded material).
    #[arg(long, group = "body", value_name = "MEDIA_ID")]
    pub image: Option<String>,
    /// A complete custom/send body; its touser is replaced by OPENID.
    #[arg(long, group = "body", value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The follower's OpenID (the FromUserName of their pushes).
    pub openid: String,
    #[command(flatten)]
    pub body: MessageArgs,
    /// Send as this kf account (prefix@wechat_id, or a prefix completed from wechat.account_id).
    #[arg(long = "as", value_name = "KF_ACCOUNT")]
    pub as_kf: Option<String>,
    /// Send even when the follower's window does not allow it.
    #[arg(long)]
    pub force: bool,
}

/// Builds and checks the body. `--json FILE` is a complete body whose `touser` is replaced by
/// OPENID (interface §6.9); `--as` sets `customservice.kf_account` (a bare prefix is completed
/// from `wechat.account_id`).
pub fn prepare(cfg: &Config, args: &SendArgs) -> Result<SendBody, CmdError> {
    let openid = OpenId::parse(&args.openid).map_err(|e| CmdError::Usage(e.to_string()))?;
    let kf = args.as_kf.as_deref().map(|k| account_arg(cfg, k)).transpose()?;
    let kf_str = kf.as_ref().map(|k| k.as_str());
    let body = if let Some(text) = &args.body.text {
        if text.trim().is_empty() {
            return Err(CmdError::Usage(
                "--text is empty: WeChat refuses a text message without content".into(),
            ));
        }
        OutMessage::Text { content: text.clone() }.custom_send_body(openid.as_str(), kf_str)
    } else if let Some(media) = &args.body.image {
        OutMessage::Image { media_id: media.clone() }.custom_send_body(openid.as_str(), kf_str)
    } else if let Some(path) = &args.body.json {
        let raw = std::fs::read(path)
            .map_err(|e| CmdError::Usage(format!("cannot read {}: {e}", path.display())))?;
        let mut v: Value = serde_json::from_slice(&raw)
            .map_err(|e| CmdError::Usage(format!("{} is not valid JSON: {e}", path.display())))?;
        let Some(obj) = v.as_object_mut() else {
            return Err(CmdError::Usage(format!(
                "{} must hold a JSON object: a complete custom/send body",
                path.display()
            )));
        };
        obj.insert("touser".into(), json!(openid.as_str()));
        if let Some(k) = kf_str {
            obj.insert("customservice".into(), json!({ "kf_account": k }));
        }
        v
    } else {
        return Err(CmdError::Usage("give one of --text, --image or --json".into()));
    };
    SendBody::parse(body).map_err(|e| match &args.body.json {
        Some(p) => CmdError::Usage(format!("{}: {e}", p.display())),
        None => CmdError::Usage(e.to_string()),
    })
}

/// Sends through the window gate. Without credentials this is a dry run: gated and charged
/// the same, printed as `dry-run: would send ...`, exit 0.
pub async fn run(cfg: &Config, args: &SendArgs) -> CmdResult {
    let prepared = prepare(cfg, args)?;
    if cfg.delivery.customer_service == crate::config::CustomerServiceMode::Off && !args.force {
        return Err(CmdError::Usage(format!(
            "not sent: {} is \"off\": this account does not call custom/send (WeChat answers \
             48001 to an account without the customer-service API). Set it to \"auto\" if the \
             account is certified, or pass --force to try anyway",
            cfg.key("delivery.customer_service")
        )));
    }
    let cli = cli_store(cfg).await?;
    let store = &cli.store;
    let client = send_client(cfg, store)?;
    let mode = if args.force { GateMode::Force } else { GateMode::Enforce };
    let now_ms = SystemClock.now_ms();
    let openid = prepared.to();
    let (charged, dry_run) =
        match send_logged(store.as_ref(), &client, &prepared, mode, now_ms).await {
            Ok(Gated::Sent { charged }) => (charged, false),
            Ok(Gated::DryRun { charged }) => (charged, true),
            Ok(Gated::Refused(reason)) => {
                return Err(CmdError::failed(format!(
                    "not sent to {}: {reason}. `kefu window show {}` shows the ledger; --force \
                     sends anyway (WeChat will likely refuse it with 45015 or 45047)",
                    openid, openid
                )));
            }
            Err(GateError::Api(e)) => return Err(e.into()),
            Err(GateError::Store(e)) => return Err(CmdError::failed(e)),
        };
    let grant = match charged {
        Some(t) => format!(" (charged to the {t} grant)"),
        None => " (forced: no live grant was charged)".into(),
    };
    let as_kf = match prepared.kf_account() {
        Some(kf) => format!(" as {kf}"),
        None => String::new(),
    };
    if dry_run {
        crate::outln!(
            "dry-run: would send {} to {}{as_kf}{grant}; not sent: no {}/app_secret configured",
            prepared.msgtype(),
            openid,
            cfg.key_name("wechat.app_id")
        )
    } else {
        crate::outln!("sent {} to {}{as_kf}{grant}", prepared.msgtype(), openid)
    }
}
