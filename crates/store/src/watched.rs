//! Values read from the store and kept in memory until a commit writes
//! the key they were read from.
//!
//! Each entry holds a store watch ([`Kv::watch`]) made *before* its value
//! was read, so no later write is missed: a commit that writes the key
//! fires the watch before it returns to its writer, and the next lookup
//! finds the watch fired and reads again. Checking an entry polls its
//! watch once, without waiting and without a runtime (the watch is a
//! plain future); it costs no store read. For answers asked for every
//! message (an account's spam model generation, its vacation response)
//! that seldom change.
//!
//! Every cached key is a watch in the backend, so caches are small and
//! bounded ([`WatchedCache::new`]'s `capacity`).

use std::collections::HashMap;
use std::hash::Hash;
use std::pin::Pin;
use std::task::{Context, Waker};

use parking_lot::Mutex;

use crate::error::Result;
use crate::kv::{Kv, Transaction, Watch};

struct Entry<V> {
    value: V,
    watch: Watch,
    /// When last used (a counter), to evict the least recently used.
    used: u64,
}

/// A bounded map of values read from the store, each valid until its key
/// is written.
pub struct WatchedCache<K, V> {
    entries: Mutex<(HashMap<K, Entry<V>>, u64)>,
    capacity: usize,
}

impl<K, V> std::fmt::Debug for WatchedCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WatchedCache")
            .field("entries", &self.entries.lock().0.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

/// Whether `watch` has fired (or failed: a dead watch guards nothing).
/// Polled outside tokio's cooperative budget, which could otherwise
/// answer "not yet" for a watch that has fired.
fn fired(watch: &mut Watch) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let mut poll = tokio::task::unconstrained(watch.as_mut());
    Pin::new(&mut poll).poll(&mut cx).is_ready()
}

impl<K: Hash + Eq + Clone, V: Clone> WatchedCache<K, V> {
    /// An empty cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new((HashMap::new(), 0)),
            capacity: capacity.max(1),
        }
    }

    /// The value for `id`: the cached one while no commit has written
    /// `key` since it was read, else `read` in a fresh snapshot (whose
    /// answer is then cached). `read` must depend on `key` alone.
    pub fn get(
        &self,
        kv: &Kv,
        id: &K,
        key: &[u8],
        read: impl FnOnce(&mut Transaction<'_>) -> Result<V>,
    ) -> Result<V> {
        if let Some(value) = self.cached(id) {
            return Ok(value);
        }
        // The watch first, then the read: a write in between fires it.
        let watch = self.watch(kv, key);
        let value = kv.read(read)?;
        self.insert(id, value.clone(), watch);
        Ok(value)
    }

    /// As [`WatchedCache::get`], but only values `keep` accepts are
    /// cached (say, addresses found, not the unknown ones a client may
    /// try by the thousand): any other costs one read and no watch. A
    /// value kept is read twice the first time (before and after its
    /// watch is made).
    pub fn get_kept(
        &self,
        kv: &Kv,
        id: &K,
        key: &[u8],
        read: impl Fn(&mut Transaction<'_>) -> Result<V>,
        keep: impl Fn(&V) -> bool,
    ) -> Result<V> {
        if let Some(value) = self.cached(id) {
            return Ok(value);
        }
        let value = kv.read(&read)?;
        if !keep(&value) {
            return Ok(value);
        }
        let watch = self.watch(kv, key);
        let value = kv.read(&read)?;
        if keep(&value) {
            self.insert(id, value.clone(), watch);
        }
        Ok(value)
    }

    /// The cached value of `id`, if its watch has not fired; never reads
    /// the store.
    pub fn cached(&self, id: &K) -> Option<V> {
        let mut guard = self.entries.lock();
        let (entries, clock) = &mut *guard;
        *clock += 1;
        let now = *clock;
        let entry = entries.get_mut(id)?;
        if fired(&mut entry.watch) {
            entries.remove(id);
            return None;
        }
        entry.used = now;
        Some(entry.value.clone())
    }

    /// A started watch on `key`.
    fn watch(&self, kv: &Kv, key: &[u8]) -> Watch {
        let mut watch = kv.watch(key);
        // Started now (a backend may set it up on the first poll); a
        // watch already fired only means the next lookup reads again.
        let _ = fired(&mut watch);
        watch
    }

    fn insert(&self, id: &K, value: V, watch: Watch) {
        let mut guard = self.entries.lock();
        let (entries, clock) = &mut *guard;
        if entries.len() >= self.capacity
            && !entries.contains_key(id)
            && let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone())
        {
            entries.remove(&oldest);
        }
        entries.insert(
            id.clone(),
            Entry {
                value,
                watch,
                used: *clock,
            },
        );
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.entries.lock().0.len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MailStore;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const KEY: &[u8] = b"\xfe\x01watched-test";
    const OTHER: &[u8] = b"\xfe\x01watched-other";

    fn set(store: &MailStore, key: &[u8], value: &[u8]) {
        store
            .kv()
            .transact(|tx| tx.set(key, value).map_err(crate::Error::from))
            .unwrap();
    }

    /// Reads `key`, counting the reads.
    fn lookup(
        cache: &WatchedCache<u8, Option<Vec<u8>>>,
        store: &MailStore,
        id: u8,
        key: &[u8],
        reads: &AtomicUsize,
    ) -> Option<Vec<u8>> {
        cache
            .get(store.kv(), &id, key, |tx| {
                reads.fetch_add(1, Ordering::SeqCst);
                Ok(tx.get(key)?)
            })
            .unwrap()
    }

    #[test]
    fn a_value_is_read_once_until_its_key_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        let cache = WatchedCache::new(8);
        let reads = AtomicUsize::new(0);
        assert_eq!(lookup(&cache, &store, 1, KEY, &reads), None);
        assert_eq!(lookup(&cache, &store, 1, KEY, &reads), None);
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "the second lookup is cached"
        );
        // Another key's write leaves the entry alone.
        set(&store, OTHER, b"x");
        assert_eq!(lookup(&cache, &store, 1, KEY, &reads), None);
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // A write of the key is seen by the very next lookup.
        set(&store, KEY, b"one");
        assert_eq!(
            lookup(&cache, &store, 1, KEY, &reads).as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        set(&store, KEY, b"two");
        assert_eq!(
            lookup(&cache, &store, 1, KEY, &reads).as_deref(),
            Some(&b"two"[..])
        );
        store
            .kv()
            .transact(|tx| tx.clear(KEY).map_err(crate::Error::from))
            .unwrap();
        assert_eq!(lookup(&cache, &store, 1, KEY, &reads), None);
        assert_eq!(lookup(&cache, &store, 1, KEY, &reads), None);
        assert_eq!(reads.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn a_full_cache_drops_its_least_recently_used_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        set(&store, KEY, b"k");
        set(&store, OTHER, b"o");
        let cache = WatchedCache::new(1);
        let reads = AtomicUsize::new(0);
        for _ in 0..2 {
            assert_eq!(
                lookup(&cache, &store, 1, KEY, &reads).as_deref(),
                Some(&b"k"[..])
            );
            assert_eq!(
                lookup(&cache, &store, 2, OTHER, &reads).as_deref(),
                Some(&b"o"[..])
            );
        }
        assert_eq!(cache.len(), 1);
        assert_eq!(
            reads.load(Ordering::SeqCst),
            4,
            "each lookup evicted the other"
        );
        // The survivor still follows writes.
        set(&store, OTHER, b"o2");
        assert_eq!(
            lookup(&cache, &store, 2, OTHER, &reads).as_deref(),
            Some(&b"o2"[..])
        );
    }

    #[test]
    fn get_kept_caches_only_the_values_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        let cache: WatchedCache<u8, Option<Vec<u8>>> = WatchedCache::new(8);
        let reads = AtomicUsize::new(0);
        let lookup = || {
            cache
                .get_kept(
                    store.kv(),
                    &1,
                    KEY,
                    |tx| {
                        reads.fetch_add(1, Ordering::SeqCst);
                        Ok(tx.get(KEY)?)
                    },
                    Option::is_some,
                )
                .unwrap()
        };
        assert_eq!(lookup(), None);
        assert_eq!(lookup(), None);
        assert_eq!(reads.load(Ordering::SeqCst), 2, "absent: read every time");
        assert!(cache.is_empty());
        set(&store, KEY, b"v");
        assert_eq!(lookup().as_deref(), Some(&b"v"[..]));
        assert_eq!(lookup().as_deref(), Some(&b"v"[..]));
        assert_eq!(
            reads.load(Ordering::SeqCst),
            4,
            "kept: read twice, then cached"
        );
        store
            .kv()
            .transact(|tx| tx.clear(KEY).map_err(crate::Error::from))
            .unwrap();
        assert_eq!(lookup(), None, "a removal is seen at once");
        assert!(cache.is_empty());
    }
}
