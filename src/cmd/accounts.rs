//! `kefu accounts list|online|add|update|invite|delete|avatar` (interface §1): kf account
//! management through the WeChat API. A bare account prefix is completed from
//! `wechat.account_id`.

use std::path::PathBuf;

use super::common::{CmdError, CmdResult};
use crate::config::Config;
use crate::model::KfAccount;
use clap::Subcommand;

use super::common::{api_client, fmt_time};

#[derive(Subcommand, Debug)]
pub enum AccountsCmd {
    /// All kf accounts.
    List {
        /// Print WeChat's list as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// kf accounts online now.
    Online {
        /// Print WeChat's list as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a kf account.
    #[command(long_about = "Add a kf account.\n\n\
        ACCOUNT is prefix@wechat_id. A bare prefix (kf01) is completed with wechat.account_id, \
        the account's WeChat ID (kf01@<wechat.account_id>).")]
    Add {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
        /// The name followers see (at most 16 characters).
        nickname: String,
    },
    /// Change a kf account's nickname.
    Update {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
        /// The new name followers see (at most 16 characters).
        nickname: String,
    },
    /// Invite a WeChat user to bind to a kf account.
    Invite {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
        /// The staff member's WeChat ID (微信号), not their nickname.
        wechat_id: String,
    },
    /// Delete a kf account.
    Delete {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
    },
    /// Upload a kf account's avatar.
    Avatar {
        /// prefix@wechat_id, or a bare prefix completed from wechat.account_id.
        account: String,
        /// A JPEG image (640×640 recommended, at most 5 MB).
        image_file: PathBuf,
    },
}

/// Parses an ACCOUNT argument: `prefix@wechat_id`, or a bare prefix completed from
/// `wechat.account_id`.
pub(crate) fn account_arg(cfg: &Config, s: &str) -> Result<KfAccount, CmdError> {
    KfAccount::parse_with(s, Some(cfg.wechat.account_id.as_str()))
        .map_err(|e| CmdError::Usage(e.to_string()))
}

/// Terminal columns a string takes: CJK and full-width characters take two (nicknames and
/// message texts are mostly Chinese, and a table padded by characters would not line up).
fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0x1100..=0x115F
            | 0x2E80..=0x303E
            | 0x3041..=0x33FF
            | 0x3400..=0x4DBF
            | 0x4E00..=0x9FFF
            | 0xA000..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
            | 0x1F300..=0x1F64F
            | 0x20000..=0x3FFFD => 2,
            _ => 1,
        })
        .sum()
}

/// Prints rows under a header, columns padded to their widest cell.
pub(crate) fn print_table(header: &[&str], rows: &[Vec<String>]) -> CmdResult {
    let mut widths: Vec<usize> = header.iter().map(|h| display_width(h)).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(display_width(c));
        }
    }
    let mut table = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(w - display_width(c) + 2));
            }
        }
        table.push_str(out.trim_end());
        table.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    crate::out!("{table}")
}

pub(crate) fn print_json(v: &impl serde::Serialize) -> CmdResult {
    let s = serde_json::to_string_pretty(v).map_err(CmdError::failed)?;
    crate::outln!("{s}")?;
    Ok(())
}

pub async fn run(cfg: &Config, args: &AccountsCmd) -> CmdResult {
    let client = api_client(cfg).await?;
    match args {
        AccountsCmd::List { json } => {
            let list = client.list_accounts().await?;
            if *json {
                return print_json(&list);
            }
            if list.is_empty() {
                crate::outln!("no kf accounts")?;
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|k| {
                    let binding = match (&k.kf_wx, &k.invite_wx) {
                        (Some(wx), _) => format!("bound to {wx}"),
                        (None, Some(inv)) => format!(
                            "invited {inv} ({}, expires {})",
                            k.invite_status.as_deref().unwrap_or("waiting"),
                            fmt_time(k.invite_expire_time.unwrap_or(0))
                        ),
                        (None, None) => "not bound".into(),
                    };
                    vec![k.kf_account.clone(), k.kf_nick.clone(), k.kf_id.clone(), binding]
                })
                .collect();
            print_table(&["ACCOUNT", "NICKNAME", "ID", "WECHAT"], &rows)?;
        }
        AccountsCmd::Online { json } => {
            let list = client.online_accounts().await?;
            if *json {
                return print_json(&list);
            }
            if list.is_empty() {
                crate::outln!("no kf account is online")?;
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|k| {
                    vec![
                        k.kf_account.clone(),
                        k.kf_id.clone(),
                        k.status.to_string(),
                        k.accepted_case.to_string(),
                    ]
                })
                .collect();
            print_table(&["ACCOUNT", "ID", "STATUS", "SESSIONS"], &rows)?;
        }
        AccountsCmd::Add { account, nickname } => {
            let kf = account_arg(cfg, account)?;
            client.add_account(&kf, nickname).await?;
            crate::outln!("added kf account {kf} ({})", nickname.trim())?;
        }
        AccountsCmd::Update { account, nickname } => {
            let kf = account_arg(cfg, account)?;
            client.update_account(&kf, nickname).await?;
            crate::outln!("renamed kf account {kf} to {}", nickname.trim())?;
        }
        AccountsCmd::Invite { account, wechat_id } => {
            let kf = account_arg(cfg, account)?;
            client.invite_worker(&kf, wechat_id).await?;
            crate::outln!(
                "invited WeChat user {} to bind to {kf}; they must accept in WeChat",
                wechat_id.trim()
            )?;
        }
        AccountsCmd::Delete { account } => {
            let kf = account_arg(cfg, account)?;
            client.delete_account(&kf).await?;
            crate::outln!("deleted kf account {kf}")?;
        }
        AccountsCmd::Avatar { account, image_file } => {
            let kf = account_arg(cfg, account)?;
            let bytes = std::fs::read(image_file).map_err(|e| {
                CmdError::Usage(format!("cannot read {}: {e}", image_file.display()))
            })?;
            let name = image_file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "avatar.jpg".into());
            client.upload_avatar(&kf, &bytes, &name).await?;
            crate::outln!("uploaded {} as the avatar of {kf}", image_file.display())?;
        }
    }
    Ok(())
}
