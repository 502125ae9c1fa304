//! The in-memory ledger index: every follower with something to remember, by OpenID. It
//! answers the hot-path question "is this follower's window open, and how?" without touching
//! the disk. The durable store owns the truth and updates the index after each commit; the
//! index is rebuilt from the store on start.
//!
//! DashMap shards the map so concurrent readers and the single writer rarely meet. Every
//! method takes and releases its shard guard inside the call, so no lock is ever held across
//! an `.await` (a guard held across an await can deadlock a shard against its own task).

use dashmap::DashMap;

use super::policy::{Grant, Window};
use crate::model::OpenId;

/// A window as the index keeps it: the grants in a boxed slice (exactly as long as needed,
/// 16 bytes inline) instead of a `Vec` (24 bytes inline and room for four grants on the heap).
/// At a million followers that is the difference between fitting the memory target or not.
#[derive(Debug)]
struct Slot {
    grants: Box<[Grant]>,
    subscribed: Option<bool>,
}

impl Slot {
    fn window(&self) -> Window {
        Window { grants: self.grants.to_vec(), subscribed: self.subscribed }
    }
}

#[derive(Debug, Default)]
pub struct LedgerIndex {
    map: DashMap<OpenId, Slot>,
}

impl LedgerIndex {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(n: usize) -> Self {
        LedgerIndex { map: DashMap::with_capacity(n) }
    }

    /// A copy of the follower's window (cheap: a handful of grants).
    pub fn get(&self, openid: &OpenId) -> Option<Window> {
        self.map.get(openid).map(|s| s.window())
    }

    /// Reads the follower's grants in place without copying them.
    pub fn read<R>(&self, openid: &OpenId, f: impl FnOnce(&[Grant]) -> R) -> R {
        match self.map.get(openid) {
            Some(s) => f(&s.grants),
            None => f(&[]),
        }
    }

    /// Whether a send may happen now, per the last committed state.
    pub fn is_open(&self, openid: &OpenId, now: i64) -> bool {
        self.read(openid, |g| g.iter().any(|g| g.usable(now)))
    }

    /// Records the committed state of a follower's window. Only windows with grants are kept:
    /// the index answers "may we send?", and without a grant the answer is no; the follow
    /// state of everyone else stays in the store.
    pub fn put(&self, openid: OpenId, window: Window) {
        if window.grants.is_empty() {
            self.map.remove(&openid);
        } else {
            let slot =
                Slot { grants: window.grants.into_boxed_slice(), subscribed: window.subscribed };
            self.map.insert(openid, slot);
        }
    }

    pub fn remove(&self, openid: &OpenId) {
        self.map.remove(openid);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Drops expired grants everywhere, and followers left without grants. Returns the number
    /// of grants dropped.
    pub fn prune(&self, now: i64) -> usize {
        let mut dropped = 0;
        self.map.retain(|_, s| {
            if s.grants.iter().any(|g| !g.is_live(now)) {
                let live: Box<[Grant]> =
                    s.grants.iter().filter(|g| g.is_live(now)).copied().collect();
                dropped += s.grants.len() - live.len();
                s.grants = live;
            }
            !s.grants.is_empty()
        });
        dropped
    }

    /// Every follower with a live grant at `now`, sorted by OpenID.
    pub fn live(&self, now: i64) -> Vec<(OpenId, Window)> {
        let mut v: Vec<_> = self
            .map
            .iter()
            .filter(|e| e.value().grants.iter().any(|g| g.is_live(now)))
            .map(|e| (e.key().clone(), e.value().window()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WindowConfig;
    use crate::model::Trigger;

    #[test]
    fn put_get_prune() {
        let idx = LedgerIndex::new();
        let a = OpenId::parse("oA").unwrap();
        let b = OpenId::parse("oB").unwrap();
        let mut w = Window::default();
        w.open(Trigger::Menu, 100, &WindowConfig::default());
        idx.put(a.clone(), w.clone());
        let mut unsub = Window::default();
        unsub.unsubscribe();
        idx.put(b.clone(), unsub);
        assert!(idx.is_open(&a, 159));
        assert!(!idx.is_open(&a, 160));
        assert_eq!(idx.get(&a), Some(w));
        assert_eq!(idx.live(120).len(), 1);
        assert_eq!(idx.get(&b), None, "a window without grants is not indexed");
        assert_eq!(idx.len(), 1);
        assert_eq!(idx.prune(160), 1);
        assert_eq!(idx.get(&a), None, "forgotten once its last grant expired");
        assert!(idx.is_empty());
    }
}
