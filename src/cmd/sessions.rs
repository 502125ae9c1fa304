//! `kefu sessions list KF | get OPENID | create KF OPENID | close KF OPENID | waiting`
//! (interface §1, protocol §7.2): kf session control.

use clap::Subcommand;
use serde_json::json;

use super::common::{CmdError, CmdResult};
use crate::config::Config;
use crate::model::OpenId;

use super::accounts::{account_arg, print_json, print_table};
use super::common::{api_client, fmt_time};

#[derive(Subcommand, Debug)]
pub enum SessionsCmd {
    /// Sessions a kf account is serving.
    List {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        kf_account: String,
        /// Print WeChat's list as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The session of a follower.
    Get {
        /// The follower's OpenID.
        openid: String,
        /// Print the session as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Open a session between a kf account and a follower.
    Create {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        kf_account: String,
        /// The follower's OpenID.
        openid: String,
    },
    /// Close a session.
    Close {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        kf_account: String,
        /// The follower's OpenID.
        openid: String,
    },
    /// Followers waiting for a kf.
    Waiting {
        /// Print WeChat's queue as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn openid_arg(s: &str) -> Result<OpenId, CmdError> {
    OpenId::parse(s).map_err(|e| CmdError::Usage(e.to_string()))
}

pub async fn run(cfg: &Config, args: &SessionsCmd) -> CmdResult {
    let client = api_client(cfg).await?;
    match args {
        SessionsCmd::List { kf_account, json } => {
            let kf = account_arg(cfg, kf_account)?;
            let list = client.list_sessions(&kf).await?;
            if *json {
                return print_json(&list);
            }
            if list.is_empty() {
                crate::outln!("{kf} is serving nobody")?;
                return Ok(());
            }
            let rows: Vec<Vec<String>> =
                list.iter().map(|s| vec![s.openid.clone(), fmt_time(s.createtime)]).collect();
            print_table(&["OPENID", "SINCE"], &rows)?;
        }
        SessionsCmd::Get { openid, json } => {
            let o = openid_arg(openid)?;
            let s = client.get_session(&o).await?;
            if *json {
                return print_json(&json!({
                    "openid": o.as_str(), "kf_account": s.kf_account, "createtime": s.createtime,
                }));
            }
            if s.kf_account.is_empty() {
                crate::outln!("{o} has no kf session")?;
            } else {
                crate::outln!(
                    "{o} is served by {} since {}",
                    s.kf_account,
                    fmt_time(s.createtime)
                )?;
            }
        }
        SessionsCmd::Create { kf_account, openid } => {
            let (kf, o) = (account_arg(cfg, kf_account)?, openid_arg(openid)?);
            client.create_session(&kf, &o).await?;
            crate::outln!("{kf} now serves {o}")?;
        }
        SessionsCmd::Close { kf_account, openid } => {
            let (kf, o) = (account_arg(cfg, kf_account)?, openid_arg(openid)?);
            client.close_session(&kf, &o).await?;
            crate::outln!("closed the session of {o} with {kf}")?;
        }
        SessionsCmd::Waiting { json } => {
            let q = client.waiting().await?;
            if *json {
                return print_json(&q);
            }
            crate::outln!("{} waiting", q.count)?;
            if !q.waitcaselist.is_empty() {
                let rows: Vec<Vec<String>> = q
                    .waitcaselist
                    .iter()
                    .map(|w| vec![w.openid.clone(), fmt_time(w.latest_time)])
                    .collect();
                print_table(&["OPENID", "LATEST MESSAGE"], &rows)?;
            }
        }
    }
    Ok(())
}
