//! The live rules: an atomically swapped `Arc<RuleSet>`, reloaded on demand
//! (`POST /admin/rules/reload`) or when files in the directory change (notify, debounced).
//! A reload that fails keeps the old set running and logs every error.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use notify::{EventKind, RecursiveMode, Watcher};
use parking_lot::Mutex;

use super::{Diagnostic, Loaded, RuleSet};
use crate::config::WindowConfig;

/// Editors save in bursts (write, rename, chmod); one reload after the burst is enough.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// What the last reload did, for `/readyz` and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadStatus {
    /// Whether the last reload (or the initial load) succeeded.
    pub last_ok: bool,
    /// Rules in the set now running.
    pub rules: usize,
    /// Successful reloads since start (the initial load not counted).
    pub reloads: u64,
    /// Failed reloads since start.
    pub failures: u64,
    /// The errors of the last failed reload, cleared by a successful one.
    pub last_errors: Vec<String>,
    /// When the running set was loaded.
    pub loaded_at: SystemTime,
}

/// The handle the pipeline and the admin API share.
pub struct Rules {
    dir: PathBuf,
    window: WindowConfig,
    /// The configured backends a `forward` may name.
    backends: Vec<String>,
    current: ArcSwap<RuleSet>,
    status: Mutex<ReloadStatus>,
    /// Serializes reloads so a slow, stale load cannot overwrite a newer one.
    reload_lock: Mutex<()>,
    /// Called after each successful reload (the media files' uploader is woken by it).
    on_reload: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("dir", &self.dir)
            .field("status", &*self.status.lock())
            .finish()
    }
}

impl Rules {
    /// Starts from a loaded set (logging its warnings); reloads read the same directory with
    /// the same windows.
    pub fn new(loaded: Loaded) -> Self {
        for w in &loaded.warnings {
            tracing::warn!(target: "kefu::rules", "{w}");
        }
        let set = loaded.set;
        let status = ReloadStatus {
            last_ok: true,
            rules: set.len(),
            reloads: 0,
            failures: 0,
            last_errors: Vec::new(),
            loaded_at: SystemTime::now(),
        };
        Rules {
            dir: set.dir().to_path_buf(),
            window: set.window().clone(),
            backends: set.backends().to_vec(),
            current: ArcSwap::from_pointee(set),
            status: Mutex::new(status),
            reload_lock: Mutex::new(()),
            on_reload: Mutex::new(None),
        }
    }

    /// Sets what runs after each successful reload (it must not block: it runs on the
    /// watcher's thread or inside the admin request).
    pub fn set_on_reload(&self, hook: Arc<dyn Fn() + Send + Sync>) {
        *self.on_reload.lock() = Some(hook);
    }

    /// The rule set to evaluate a push with; cheap, and never a half-swapped set.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// Loads the directory again and swaps the new set in. On any error the old set keeps
    /// running, every error is logged, and the errors are returned.
    pub fn reload(&self) -> Result<usize, Vec<Diagnostic>> {
        let _one_at_a_time = self.reload_lock.lock();
        match RuleSet::load_dir_with(&self.dir, &self.window, &self.backends) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    tracing::warn!(target: "kefu::rules", "{w}");
                }
                let n = loaded.set.len();
                self.current.store(Arc::new(loaded.set));
                let mut s = self.status.lock();
                s.last_ok = true;
                s.rules = n;
                s.reloads += 1;
                s.last_errors.clear();
                s.loaded_at = SystemTime::now();
                tracing::info!(target: "kefu::rules", rules = n, dir = %self.dir.display(), "rules reloaded");
                let hook = self.on_reload.lock().clone();
                if let Some(hook) = hook {
                    hook();
                }
                Ok(n)
            }
            Err(diags) => {
                let errors: Vec<&Diagnostic> = diags.iter().filter(|d| d.is_error()).collect();
                for d in &errors {
                    tracing::error!(target: "kefu::rules", "{d}");
                }
                tracing::error!(
                    target: "kefu::rules",
                    errors = errors.len(),
                    "rules not reloaded; the previous rules stay active"
                );
                let mut s = self.status.lock();
                s.last_ok = false;
                s.failures += 1;
                s.last_errors = errors.iter().map(|d| d.to_string()).collect();
                Err(diags)
            }
        }
    }

    /// Whether the last reload succeeded (true until one fails).
    pub fn last_reload_ok(&self) -> bool {
        self.status.lock().last_ok
    }

    pub fn status(&self) -> ReloadStatus {
        self.status.lock().clone()
    }

    /// Watches the rules directory and reloads after each burst of changes. Dropping the
    /// guard stops watching.
    pub fn spawn_watcher(self: &Arc<Self>) -> anyhow::Result<WatchGuard> {
        let (tx, rx) = mpsc::channel::<()>();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            match res {
                // Reads change nothing; everything else (including the directory's own
                // symlink swap, as Kubernetes ConfigMaps do) may have.
                Ok(ev) if matches!(ev.kind, EventKind::Access(_)) => {}
                Ok(_) => {
                    let _ = tx.send(());
                }
                Err(e) => tracing::warn!(target: "kefu::rules", "watching the rules: {e}"),
            }
        })
        .context("cannot start watching the rules directory")?;
        watcher
            .watch(&self.dir, RecursiveMode::NonRecursive)
            .with_context(|| format!("cannot watch {}", self.dir.display()))?;
        // The thread holds only a weak handle so it never keeps the rules alive.
        let rules = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("kefu-rules-watch".into())
            .spawn(move || {
                // Ends when the watcher (and with it the sender) is dropped.
                while rx.recv().is_ok() {
                    while rx.recv_timeout(DEBOUNCE).is_ok() {}
                    let Some(rules) = rules.upgrade() else { break };
                    // Errors are logged inside; the old set keeps running.
                    let _ = rules.reload();
                }
            })
            .context("cannot start the rules watcher thread")?;
        Ok(WatchGuard { _watcher: Box::new(watcher) })
    }
}

/// Keeps the directory watched. Dropping it drops the watcher and with it the event sender,
/// which ends the debounce thread's loop.
pub struct WatchGuard {
    _watcher: Box<dyn Watcher + Send>,
}

impl std::fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WatchGuard")
    }
}
