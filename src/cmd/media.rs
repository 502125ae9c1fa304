//! `kefu media upload FILE [--type T]` and `kefu media list [--json]` (interface §9): upload a
//! file as temporary media and print its id, and show the media ids kefu keeps for the files
//! its rules name (the same cache `serve` uses: the store under `state.dir`, or Redis).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use serde_json::json;

use super::common::{CmdError, CmdResult, api_client, cli_store, fmt_time};
use crate::config::Config;
use crate::media::{Format, MediaError, MediaFiles, MediaType};
use crate::model::{Clock, SharedClock, SystemClock};
use crate::store::Store;

#[derive(Subcommand, Debug)]
pub enum MediaCmd {
    /// Upload a file as temporary media (kept 3 days by WeChat) and print its media id.
    Upload {
        /// The file: image bmp/png/jpeg/gif ≤ 10 MB, voice amr/mp3 ≤ 2 MB, video mp4 ≤ 10 MB,
        /// thumb jpg ≤ 64 KB.
        file: PathBuf,
        /// Upload type: image, voice, video or thumb (default: from the file's content).
        #[arg(long = "type", value_name = "T")]
        media_type: Option<String>,
    },
    /// The media ids kefu keeps for files named in rules, with their age.
    List {
        /// Print the records as a JSON array.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cfg: &Config, args: &MediaCmd) -> CmdResult {
    match args {
        MediaCmd::Upload { file, media_type } => upload(cfg, file, media_type.as_deref()).await,
        MediaCmd::List { json } => list(cfg, *json).await,
    }
}

async fn upload(cfg: &Config, file: &std::path::Path, media_type: Option<&str>) -> CmdResult {
    let media_type = match media_type {
        Some(t) => MediaType::parse(t).ok_or_else(|| {
            CmdError::Usage(format!("--type {t:?}: use image, voice, video or thumb"))
        })?,
        None => {
            let head = read_head(file)?;
            let format = Format::sniff(&head).ok_or_else(|| {
                CmdError::Usage(format!(
                    "{} is none of the formats WeChat takes (bmp/png/jpeg/gif, amr/mp3, mp4); \
                     convert it, or give --type",
                    file.display()
                ))
            })?;
            MediaType::of_format(format)
        }
    };
    let client = api_client(cfg).await?;
    let clock: SharedClock = Arc::new(SystemClock);
    // The cache `serve` uses when its state is here; otherwise the id is only printed (the
    // store is a scratch one, removed after the run).
    let (store, _state, _scratch): (Arc<dyn Store>, _, _) = match cli_store(cfg).await {
        Ok(s) => (s.store.clone(), Some(s), None),
        Err(_) => {
            let dir = ScratchDir(std::env::temp_dir().join(format!(
                "kefu-media-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            )));
            let store = crate::store::SqliteStore::open_client(&dir.0, &cfg.window, clock.clone())
                .map_err(|e| CmdError::Failed(e.into()))?;
            crate::errln!(
                "kefu: no kefu state here ({}): the media id is printed, not cached",
                cfg.key("state.dir")
            );
            (Arc::new(store), None, Some(dir))
        }
    };
    let media = MediaFiles::new(store, Some(client.clone()), clock, cfg.media.refresh_after);
    let rec = media.upload_file(&client, file, media_type).await.map_err(|e| match e {
        MediaError::File(m) => CmdError::Usage(m),
        MediaError::Api(e) => CmdError::from(e),
        other => CmdError::Failed(other.into()),
    })?;
    crate::outln!("{}", rec.media_id)?;
    Ok(())
}

/// A scratch store's directory, removed on drop (after the store: declared after it).
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read_head(file: &std::path::Path) -> Result<Vec<u8>, CmdError> {
    use std::io::Read;
    let mut head = Vec::with_capacity(16);
    std::fs::File::open(file)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(|e| CmdError::Usage(format!("cannot read {}: {e}", file.display())))?;
    Ok(head)
}

async fn list(cfg: &Config, json: bool) -> CmdResult {
    let reader = cli_store(cfg).await?;
    let records = reader.store.media_list().await.map_err(|e| CmdError::Failed(e.into()))?;
    let now = SystemClock.now_secs();
    let refresh = cfg.media.refresh_after.as_secs() as i64;
    if json {
        let rows: Vec<_> = records
            .iter()
            .map(|r| {
                let age = (now - r.uploaded_at).max(0);
                json!({
                    "type": r.media_type,
                    "media_id": r.media_id,
                    "sha256": r.sha256,
                    "file": r.file,
                    "bytes": r.bytes,
                    "uploaded_at": r.uploaded_at,
                    "age_secs": age,
                    "stale": age >= refresh,
                })
            })
            .collect();
        crate::outln!("{}", serde_json::Value::Array(rows))?;
        return Ok(());
    }
    if records.is_empty() {
        crate::outln!("no media ids cached: no rule names a file, or serve has not uploaded yet")?;
        return Ok(());
    }
    for r in &records {
        let age = (now - r.uploaded_at).max(0);
        let when = humantime::format_duration(std::time::Duration::from_secs(age as u64));
        let stale = if age >= refresh { " (stale: uploaded again when next used)" } else { "" };
        crate::outln!(
            "{:<5} {}  {} ago{stale}  uploaded {}  {} ({} bytes)",
            r.media_type.as_str(),
            r.media_id,
            when,
            fmt_time(r.uploaded_at),
            r.file,
            r.bytes
        )?;
    }
    Ok(())
}
