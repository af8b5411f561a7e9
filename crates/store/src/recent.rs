//! Messages this process delivered lately, by blob hash, for readers that
//! follow deliveries closely (the search indexer reads every new email's
//! message a fraction of a second after its delivery).
//!
//! Blobs are immutable and content-addressed, so an entry can never be
//! stale: a hit gives exactly the bytes the store holds under that hash.
//! An entry is added only after the delivery that wrote the blob is
//! durable. The cache holds at most its byte budget, oldest out first;
//! a miss costs the caller an ordinary blob read.
//!
//! With the bytes an entry may hold what the deliverer derived from the
//! message for those readers ([`Derived`]; the SMTP server gives the
//! search document it builds from its own parse, so the indexer does not
//! parse the message again). The store does not look inside it.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::types::BlobHash;

/// The default byte budget: at 10 KB a message with its search document
/// (counted twice), the last ~3,000 deliveries. The indexer, pausing
/// 250 ms between passes and at a lower priority, trails a burst of
/// 6,500 deliveries a second by one to two thousand; an entry evicted
/// before it is indexed costs a blob read and a parse.
pub const DEFAULT_BUDGET: usize = 64 << 20;

/// A value derived from a delivered message by its deliverer, for a
/// reader that knows its type (downcast); a function of the message's
/// bytes alone, as the bytes are of their hash.
pub type Derived = Arc<dyn Any + Send + Sync>;

/// Recently delivered message bytes by hash, bounded by bytes.
#[derive(Debug)]
pub struct RecentBlobs {
    budget: usize,
    inner: Mutex<Inner>,
}

struct Entry {
    data: Arc<[u8]>,
    derived: Option<Derived>,
}

impl Entry {
    /// What the entry counts against the budget: the bytes, twice with a
    /// derived value (taken to be no larger than the message: a search
    /// document's text is the decoded text of the message).
    fn weight(&self) -> usize {
        self.data.len() * if self.derived.is_some() { 2 } else { 1 }
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("entries", &self.by_hash.len())
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    by_hash: HashMap<BlobHash, Entry>,
    /// Insertion order (oldest first) of the hashes in `by_hash`.
    order: VecDeque<BlobHash>,
    bytes: usize,
}

impl Default for RecentBlobs {
    fn default() -> Self {
        Self::with_budget(DEFAULT_BUDGET)
    }
}

impl RecentBlobs {
    /// An empty cache holding at most `budget` bytes of messages.
    pub fn with_budget(budget: usize) -> Self {
        Self {
            budget,
            inner: Mutex::default(),
        }
    }

    /// Keeps `data`, the blob `hash` (a message larger than the budget is
    /// not kept), evicting the oldest entries over the budget.
    pub fn insert(&self, hash: BlobHash, data: Arc<[u8]>, derived: Option<Derived>) {
        let entry = Entry { data, derived };
        let weight = entry.weight();
        if weight > self.budget {
            return;
        }
        debug_assert_eq!(BlobHash::of(&entry.data), hash);
        let mut inner = self.inner.lock();
        match inner.by_hash.insert(hash, entry) {
            // Already kept (the same message delivered again): it keeps
            // its place in the order.
            Some(old) => inner.bytes = inner.bytes - old.weight() + weight,
            None => {
                inner.order.push_back(hash);
                inner.bytes += weight;
            }
        }
        while inner.bytes > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(e) = inner.by_hash.remove(&old) {
                inner.bytes -= e.weight();
            }
        }
    }

    /// The bytes of blob `hash`, if kept.
    pub fn get(&self, hash: &BlobHash) -> Option<Arc<[u8]>> {
        self.inner.lock().by_hash.get(hash).map(|e| e.data.clone())
    }

    /// What the deliverer of blob `hash` derived from it, if kept.
    pub fn derived(&self, hash: &BlobHash) -> Option<Derived> {
        self.inner.lock().by_hash.get(hash)?.derived.clone()
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(n: u8, len: usize) -> (BlobHash, Arc<[u8]>) {
        let data: Arc<[u8]> = vec![n; len].into();
        (BlobHash::of(&data), data)
    }

    #[test]
    fn keeps_the_newest_within_its_budget() {
        let cache = RecentBlobs::with_budget(250);
        let blobs: Vec<_> = (0..5).map(|n| blob(n, 100)).collect();
        for (h, d) in &blobs {
            cache.insert(*h, d.clone(), None);
        }
        // 500 bytes offered, 250 kept: the two newest.
        assert_eq!(cache.bytes(), 200);
        for (h, _) in &blobs[..3] {
            assert!(cache.get(h).is_none());
        }
        for (h, d) in &blobs[3..] {
            assert_eq!(cache.get(h).as_deref(), Some(&d[..]));
        }
        // The same blob again changes nothing; one larger than the budget
        // is not kept and evicts nothing.
        cache.insert(blobs[4].0, blobs[4].1.clone(), None);
        assert_eq!(cache.bytes(), 200);
        let (big, data) = blob(9, 251);
        cache.insert(big, data, None);
        assert!(cache.get(&big).is_none());
        assert_eq!(cache.bytes(), 200);
        assert!(cache.get(&blobs[3].0).is_some());
    }

    /// A derived value is kept with its bytes, which then count twice.
    #[test]
    fn keeps_what_was_derived_with_the_bytes() {
        let cache = RecentBlobs::with_budget(450);
        let (h1, d1) = blob(1, 100);
        let (h2, d2) = blob(2, 100);
        cache.insert(h1, d1, Some(Arc::new(String::from("one"))));
        assert_eq!(cache.bytes(), 200);
        let derived = cache.derived(&h1).unwrap();
        assert_eq!(derived.downcast_ref::<String>().unwrap(), "one");
        cache.insert(h2, d2.clone(), None);
        assert!(cache.derived(&h2).is_none());
        assert_eq!(cache.bytes(), 300);
        // Given again with a derived value: it counts twice now.
        cache.insert(h2, d2, Some(Arc::new(2u8)));
        assert_eq!(cache.bytes(), 400);
        assert_eq!(cache.derived(&h2).unwrap().downcast_ref::<u8>(), Some(&2));
        // Over the budget: the oldest goes, with its derived value.
        let (h3, d3) = blob(3, 100);
        cache.insert(h3, d3, None);
        assert!(cache.get(&h1).is_none() && cache.derived(&h1).is_none());
        assert_eq!(cache.bytes(), 300);
    }
}
