//! Media files in replies (interface §9, issue 18): kefu keeps a live `media_id` for every
//! file a rule names, so operators name files instead of pasting ids that die after 3 days.
//!
//! Who does what:
//! - `rules::compile` checks each named file ([`reference::inspect`]) and writes a
//!   [`MediaRef`] (`kefu-media:{type}:{sha256}:{path}`) into the reply's media-id field.
//! - [`MediaFiles`] (one per running kefu) uploads each file once per content and type
//!   (`POST /cgi-bin/media/upload`), caches the id in the store (SQLite, or Redis shared by the
//!   instances, with an upload lock so one instance uploads), and uploads again when the id is
//!   older than `media.refresh_after`. Uploads happen when the rules load and reload and on a
//!   refresh tick ([`MediaFiles::spawn_refresher`]), with at most [`UPLOAD_CONCURRENCY`] at once.
//! - The push path ([`MediaFiles::settle`]) only reads the in-memory copy: a reference whose id
//!   is ready is replaced by the id (so it may be the passive answer); one that is not stays a
//!   reference, cannot be passive (`rules::actions::split_passive`), and goes to the outbox.
//! - The sender ([`MediaFiles::send`]) resolves what is left when the message leaves: a
//!   reference, or an id kefu issued that has grown stale; on 40007 it uploads again and retries
//!   that one send once.

pub mod reference;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use futures::StreamExt;
use tokio::sync::Notify;
use tracing::{info, warn};

pub use reference::{Format, Inspected, MediaKey, MediaRef, MediaType, inspect, names_file};

use crate::api::{ApiClient, ApiError, SendBody};
use crate::metrics::Metrics;
use crate::model::{OpenId, OutMessage, PlannedAction, SharedClock};
use crate::rules::Rules;
use crate::store::{MediaRecord, Store, StoreError};

/// Uploads in flight at once when the rules load (WeChat's daily upload quota is large; the
/// bound keeps a big rule set from opening a connection per file).
pub const UPLOAD_CONCURRENCY: usize = 4;
/// How long one process holds a file's upload lock at most (an upload of 10 MB takes seconds).
const LOCK_TTL: Duration = Duration::from_secs(60);
/// How long a process waits for another one's upload of the same file before uploading itself.
const LOCK_WAIT: Duration = Duration::from_secs(30);
const LOCK_POLL: Duration = Duration::from_millis(200);
/// The refresh tick is a tenth of `refresh_after`, within these bounds.
const TICK_MIN: Duration = Duration::from_secs(1);
const TICK_MAX: Duration = Duration::from_secs(60);

/// Why a file could not be turned into a media id.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The file is missing, unreadable, of the wrong type or too large (one sentence).
    #[error("{0}")]
    File(String),
    #[error("uploading a media file: {0}")]
    Api(#[from] ApiError),
    #[error("the media-id cache: {0}")]
    Store(#[from] StoreError),
    #[error(
        "media files cannot be uploaded without wechat.app_id and wechat.app_secret; messages \
         naming files are logged as dry-run"
    )]
    NoCredentials,
}

impl MediaError {
    /// The error as the sender's gate sees it: WeChat's own, or a refusal that was not the
    /// window's (the charge is given back).
    fn into_api(self) -> ApiError {
        match self {
            MediaError::Api(e) => e,
            other => ApiError::Invalid(other.to_string()),
        }
    }
}

/// The media ids of the files named in the rules: cached in memory and in the store, uploaded
/// when missing or stale. Cheap to share (`Arc`).
pub struct MediaFiles {
    store: Arc<dyn Store>,
    /// None = dry-run: nothing is uploaded, cached ids are still used.
    client: Option<ApiClient>,
    metrics: Option<Arc<Metrics>>,
    clock: SharedClock,
    refresh_after: Duration,
    /// What the push path reads: the latest record of each key this process knows.
    ready: DashMap<MediaKey, MediaRecord>,
    /// Where each key's file is, from the references seen.
    paths: DashMap<MediaKey, PathBuf>,
    /// Ids kefu uploaded → their key, so an id already in a message can be refreshed.
    by_id: DashMap<String, MediaKey>,
    /// One upload per key at a time in this process.
    flights: parking_lot::Mutex<HashMap<MediaKey, Arc<tokio::sync::Mutex<()>>>>,
    /// This process's name for the store's upload locks.
    holder: String,
    /// Wakes the refresher (a reload).
    wake: Arc<Notify>,
    said_dry_run: AtomicBool,
}

impl std::fmt::Debug for MediaFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaFiles")
            .field("refresh_after", &self.refresh_after)
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl MediaFiles {
    /// A cache over `store`; uploads through `client` (None: dry-run, no uploads). Ids older
    /// than `refresh_after` are uploaded again.
    pub fn new(
        store: Arc<dyn Store>,
        client: Option<ApiClient>,
        clock: SharedClock,
        refresh_after: Duration,
    ) -> Self {
        MediaFiles {
            store,
            client,
            metrics: None,
            clock,
            refresh_after,
            ready: DashMap::new(),
            paths: DashMap::new(),
            by_id: DashMap::new(),
            flights: parking_lot::Mutex::new(HashMap::new()),
            holder: format!("kefu-media-{}-{:016x}", std::process::id(), rand::random::<u64>()),
            wake: Arc::new(Notify::new()),
            said_dry_run: AtomicBool::new(false),
        }
    }

    /// Counts uploads in `kefu_media_uploads_total{type,outcome}`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Whether an id uploaded at `uploaded_at` (Unix seconds) is still young enough to use.
    fn is_fresh(&self, rec: &MediaRecord) -> bool {
        let age = self.clock.now_secs().saturating_sub(rec.uploaded_at);
        age >= 0 && (age as u64) < self.refresh_after.as_secs().max(1)
    }

    fn remember(&self, key: MediaKey, rec: &MediaRecord) {
        self.by_id.insert(rec.media_id.clone(), key.clone());
        self.ready.insert(key, rec.clone());
    }

    /// The id of `r` if this process has a fresh one in memory (no I/O: the push path).
    pub fn ready_id(&self, r: &MediaRef) -> Option<String> {
        let rec = self.ready.get(&r.key())?;
        self.is_fresh(&rec).then(|| rec.media_id.clone())
    }

    /// The push path: replaces every file reference in `actions` whose id is ready by the id.
    /// A reference that is not ready stays, so that message is not the passive answer and
    /// the sender resolves it (interface §9: "goes out through custom/send once it is").
    pub fn settle(&self, actions: &mut [PlannedAction]) {
        for a in actions {
            if let crate::model::Action::Send { message } = &mut a.action
                && names_file(message)
            {
                *message = message.map(|f| match MediaRef::parse(f) {
                    Some(r) => self.ready_id(&r).unwrap_or_else(|| f.clone()),
                    None => f.clone(),
                });
            }
        }
    }

    /// Sends `message` to `to` through `custom/send`, its files resolved first: a reference
    /// becomes a fresh media id (uploaded now if need be), an id kefu issued that is older than
    /// `refresh_after` is replaced. On 40007 for a message carrying ids kefu issued, those files
    /// are uploaded again and the send is retried once with the new ids. A file that cannot be
    /// uploaded fails the send with [`ApiError::Invalid`] (so the window charge is given back).
    pub async fn send(
        &self,
        client: &ApiClient,
        to: &OpenId,
        message: &OutMessage,
        kf_account: Option<&str>,
    ) -> Result<(), ApiError> {
        // Most messages name no file and carry no id of ours: nothing to resolve.
        if !names_file(message) && !self.carries_our_id(message) {
            return client.send(&SendBody::of_message(to, message, kf_account)).await;
        }
        let (resolved, ours) =
            self.resolve_for_send(message, &[]).await.map_err(MediaError::into_api)?;
        let first = client.send(&SendBody::of_message(to, &resolved, kf_account)).await;
        match first {
            Err(e) if e.errcode() == Some(40007) && !ours.is_empty() => {
                warn!(
                    media_ids = ?ours,
                    "WeChat refused a media id kefu uploaded (40007); uploading the file again \
                     and retrying this send once"
                );
                let (again, _) =
                    self.resolve_for_send(message, &ours).await.map_err(MediaError::into_api)?;
                client.send(&SendBody::of_message(to, &again, kf_account)).await
            }
            other => other,
        }
    }

    fn carries_our_id(&self, message: &OutMessage) -> bool {
        let mut ours = false;
        if !self.by_id.is_empty() {
            message.map(|f| ours |= self.by_id.contains_key(f));
        }
        ours
    }

    /// `message` with every file resolved to a usable id, and the ids kefu issued that it now
    /// carries. `refused`: ids WeChat refused (40007), uploaded again even if young.
    pub async fn resolve_for_send(
        &self,
        message: &OutMessage,
        refused: &[String],
    ) -> Result<(OutMessage, Vec<String>), MediaError> {
        let mut fields = Vec::new();
        message.map(|f| fields.push(f.clone()));
        let mut replace: HashMap<String, String> = HashMap::new();
        let mut ours = Vec::new();
        for f in fields {
            if replace.contains_key(&f) {
                continue;
            }
            let r = match MediaRef::parse(&f) {
                Some(r) => r,
                None => {
                    // An id kefu uploaded (resolved at push time): refresh it if stale or
                    // refused; any other string is not kefu's to touch.
                    let Some(key) = self.by_id.get(&f).map(|k| k.clone()) else { continue };
                    let Some(path) = self.paths.get(&key).map(|p| p.clone()) else { continue };
                    let usable = self.ready.get(&key).is_some_and(|rec| {
                        rec.media_id == f && self.is_fresh(&rec) && !refused.contains(&f)
                    });
                    if usable {
                        ours.push(f.clone());
                        continue;
                    }
                    MediaRef { media_type: key.media_type, sha256: key.sha256.clone(), path }
                }
            };
            let id = self.ensure(&r, refused).await?;
            ours.push(id.clone());
            replace.insert(f, id);
        }
        let resolved = message.map(|f| replace.get(f).cloned().unwrap_or_else(|| f.clone()));
        Ok((resolved, ours))
    }

    fn flight(&self, key: &MediaKey) -> Arc<tokio::sync::Mutex<()>> {
        self.flights.lock().entry(key.clone()).or_default().clone()
    }

    /// A fresh id for `r` that is not one of `refused`: from memory, else the store, else
    /// uploaded now — one upload per key in this process (single flight) and across processes
    /// sharing the store (its upload lock; the others wait for the record).
    pub async fn ensure(&self, r: &MediaRef, refused: &[String]) -> Result<String, MediaError> {
        let key = r.key();
        self.paths.insert(key.clone(), r.path.clone());
        let usable = |rec: &MediaRecord| self.is_fresh(rec) && !refused.contains(&rec.media_id);
        let cached = |me: &Self| {
            me.ready.get(&key).filter(|rec| usable(rec)).map(|rec| rec.media_id.clone())
        };
        if let Some(id) = cached(self) {
            return Ok(id);
        }
        let flight = self.flight(&key);
        let _one_at_a_time = flight.lock().await;
        if let Some(id) = cached(self) {
            return Ok(id);
        }
        if let Some(rec) = self.store.media_get(&key).await?
            && usable(&rec)
        {
            self.remember(key.clone(), &rec);
            return Ok(rec.media_id);
        }
        let Some(client) = &self.client else {
            return Err(MediaError::NoCredentials);
        };
        let waited_since = tokio::time::Instant::now();
        loop {
            if self.store.media_try_lock(&key, &self.holder, LOCK_TTL).await? {
                break;
            }
            if waited_since.elapsed() > LOCK_WAIT {
                warn!(file = %r.path.display(), "another kefu holds this file's upload lock too long; uploading it here");
                break;
            }
            tokio::time::sleep(LOCK_POLL).await;
            if let Some(rec) = self.store.media_get(&key).await?
                && usable(&rec)
            {
                self.remember(key.clone(), &rec);
                return Ok(rec.media_id);
            }
        }
        // Another process may have finished between our read and the lock.
        let result = match self.store.media_get(&key).await {
            Ok(Some(rec)) if usable(&rec) => {
                self.remember(key.clone(), &rec);
                Ok(rec.media_id)
            }
            _ => self.upload(client, r).await.map(|rec| rec.media_id),
        };
        if let Err(e) = self.store.media_unlock(&key, &self.holder).await {
            warn!(error = %e, "cannot release a media upload lock (it expires by itself)");
        }
        result
    }

    /// Reads, checks and uploads the file of `r` now and records the id.
    async fn upload(&self, client: &ApiClient, r: &MediaRef) -> Result<MediaRecord, MediaError> {
        let rec = self.upload_file(client, &r.path, r.media_type).await?;
        if rec.sha256 != r.sha256 {
            warn!(
                file = %r.path.display(),
                "the media file changed since the rules loaded; uploaded its current content \
                 (reload the rules to pick the change up everywhere)"
            );
            // The rules still name the old hash: let it find the new upload too.
            self.remember(r.key(), &rec);
        }
        Ok(rec)
    }

    /// Uploads `path` as `media_type` whatever the cache holds (`kefu media upload`), records
    /// the id in the store and in memory, and returns the record.
    pub async fn upload_file(
        &self,
        client: &ApiClient,
        path: &Path,
        media_type: MediaType,
    ) -> Result<MediaRecord, MediaError> {
        let shown = path.display().to_string();
        let (p, s) = (path.to_path_buf(), shown.clone());
        let (inspected, content) = tokio::task::spawn_blocking(move || inspect(&p, &s, media_type))
            .await
            .map_err(|e| MediaError::File(format!("reading {shown}: {e}")))?
            .map_err(MediaError::File)?;
        let filename = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("media.{}", inspected.format.name()));
        let uploaded =
            client.upload_media(media_type, &content, &filename, inspected.format.mime()).await;
        let outcome = if uploaded.is_ok() { "ok" } else { "failed" };
        if let Some(m) = &self.metrics {
            m.media_upload(media_type.as_str(), outcome);
        }
        let uploaded = uploaded?;
        let rec = MediaRecord {
            sha256: inspected.sha256,
            media_type,
            media_id: uploaded.media_id,
            uploaded_at: self.clock.now_secs(),
            bytes: inspected.bytes,
            file: shown,
        };
        info!(file = %rec.file, media_type = %media_type, media_id = %rec.media_id, bytes = rec.bytes, "media file uploaded");
        if let Err(e) = self.store.media_put(&rec).await {
            // The id works; only sharing and surviving a restart are lost.
            warn!(error = %e, "cannot cache an uploaded media id; it is used from memory");
        }
        self.paths.insert(rec.key(), path.to_path_buf());
        self.remember(rec.key(), &rec);
        Ok(rec)
    }

    /// Makes sure every file in `refs` has a fresh id, at most [`UPLOAD_CONCURRENCY`] uploads
    /// at once; failures are logged (the sender tries again when a message needs the file).
    pub async fn prepare(&self, refs: Vec<MediaRef>) {
        let mut seen = HashSet::new();
        let refs: Vec<MediaRef> = refs.into_iter().filter(|r| seen.insert(r.key())).collect();
        let results: Vec<(MediaRef, Result<String, MediaError>)> = futures::stream::iter(refs)
            .map(|r| async move {
                let res = self.ensure(&r, &[]).await;
                (r, res)
            })
            .buffer_unordered(UPLOAD_CONCURRENCY)
            .collect()
            .await;
        for (r, res) in results {
            match res {
                Ok(_) => {}
                Err(MediaError::NoCredentials) => {
                    if !self.said_dry_run.swap(true, Ordering::Relaxed) {
                        info!("{}", MediaError::NoCredentials);
                    }
                }
                Err(e) => {
                    warn!(file = %r.path.display(), error = %e, "media file not uploaded; retried at the next refresh or send")
                }
            }
        }
    }

    /// Wakes the refresher now (after a rules reload), so new files are uploaded at once.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The handle a rules reload calls: wakes the refresher.
    pub fn reload_hook(self: &Arc<Self>) -> Arc<dyn Fn() + Send + Sync> {
        let wake = self.wake.clone();
        Arc::new(move || wake.notify_one())
    }

    /// Uploads the files of the running rules now, then again whenever an id nears
    /// `refresh_after` (a tick of a tenth of it, 1 s to 60 s) or the rules reload. Abort the
    /// handle to stop it.
    pub fn spawn_refresher(self: &Arc<Self>, rules: Arc<Rules>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let tick = (self.refresh_after / 10).clamp(TICK_MIN, TICK_MAX);
        // In the caller's span: with several accounts, the account's.
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            loop {
                let refs = rules.current().media_refs();
                if !refs.is_empty() {
                    this.prepare(refs).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(tick) => {}
                    _ = this.wake.notified() => {}
                }
            }
        }))
    }
}
