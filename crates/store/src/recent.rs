//! Messages this process delivered lately, by blob hash, for readers that
//! follow deliveries closely (the search indexer reads every new email's
//! message a fraction of a second after its delivery).
//!
//! Blobs are immutable and content-addressed, so an entry can never be
//! stale: a hit gives exactly the bytes the store holds under that hash.
//! An entry is added only after the delivery that wrote the blob is
//! durable. The cache holds at most its byte budget, oldest out first;
//! a miss costs the caller an ordinary blob read.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::types::BlobHash;

/// The default byte budget: at 10 KB a message, the last ~3,000
/// deliveries (the indexer, pausing 250 ms between passes, trails a
/// delivery burst by about a thousand).
pub const DEFAULT_BUDGET: usize = 32 << 20;

/// Recently delivered message bytes by hash, bounded by bytes.
#[derive(Debug)]
pub struct RecentBlobs {
    budget: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_hash: HashMap<BlobHash, Arc<[u8]>>,
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
    pub fn insert(&self, hash: BlobHash, data: Arc<[u8]>) {
        if data.len() > self.budget {
            return;
        }
        debug_assert_eq!(BlobHash::of(&data), hash);
        let mut inner = self.inner.lock();
        let len = data.len();
        if inner.by_hash.insert(hash, data).is_some() {
            // Already kept (the same message delivered again): keep its
            // place in the order.
            return;
        }
        inner.order.push_back(hash);
        inner.bytes += len;
        while inner.bytes > self.budget {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if let Some(d) = inner.by_hash.remove(&old) {
                inner.bytes -= d.len();
            }
        }
    }

    /// The bytes of blob `hash`, if kept.
    pub fn get(&self, hash: &BlobHash) -> Option<Arc<[u8]>> {
        self.inner.lock().by_hash.get(hash).cloned()
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
            cache.insert(*h, d.clone());
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
        cache.insert(blobs[4].0, blobs[4].1.clone());
        assert_eq!(cache.bytes(), 200);
        let (big, data) = blob(9, 251);
        cache.insert(big, data);
        assert!(cache.get(&big).is_none());
        assert_eq!(cache.bytes(), 200);
        assert!(cache.get(&blobs[3].0).is_some());
    }
}
