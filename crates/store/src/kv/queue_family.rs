//! Queue families: key families that work is added to anywhere and taken
//! from at the low end (the outbound queue's due index, the search index
//! queue), scanned from a low-water mark instead of from the family's
//! start.
//!
//! Taking work removes keys from the low end. Removed one by one, each key
//! leaves a point tombstone on RocksDB that every later scan from the
//! family's start walks again until a compaction drops it, so a queue that
//! is scanned once per batch slows down with everything it ever handed
//! out. A [`QueueFamily`] instead keeps a *mark*, one key outside the
//! family whose value is the key its scans start from, and consumes the
//! span it read with one range clear, moving the mark past it. A scan from
//! the mark never meets what was consumed before, and range tombstones that
//! follow each other do not overlap (overlapping ones would pile up in
//! every fragment they share).
//!
//! The mark is a hint that the transactions writing the family keep
//! exact, on every backend and across crashes (it changes only together
//! with the entries):
//!
//! - no entry lies below the mark: [`QueueFamily::set`] lowers the mark to
//!   an entry it writes below it, reading the mark with a conflict (so two
//!   writers lowering it, or a writer and a consumer, serialise);
//! - a writer whose entry is at or above the mark it read takes a read
//!   conflict on that entry: a consumer that commits first and consumes a
//!   span holding it (moving the mark past it) makes the writer retry, and
//!   the retry sees the new mark and lowers it;
//! - a consumer reads the mark with a conflict (a concurrent lowering makes
//!   it retry) and consumes only what it read, itself with a conflict.
//!
//! It is never a reason to leave work behind: a consumer's read that finds
//! nothing from the mark looks below it as well (finding there only what a
//! writer that does not keep the mark, such as an older Tern during a
//! rolling upgrade, put there), and a mark that is absent or does not lie
//! in the family counts as the family's start. Looking below costs a walk
//! over the range clears of earlier spans, paid only when the queue has
//! nothing from the mark on. Removing a single entry (a plain
//! [`Transaction::clear`]) needs no care: it never puts an entry below
//! the mark.

use super::{KeyRange, RangeOptions, Result, Transaction};

/// Key-value pairs, in key order.
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A key family used as a queue, with its low-water mark key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueFamily {
    family: KeyRange,
    mark: Vec<u8>,
}

/// Entries read from the low end of a [`QueueFamily`] by
/// [`QueueFamily::head`], to be consumed in the same transaction.
#[derive(Debug, Clone)]
pub struct QueueHead {
    mark: Vec<u8>,
    start: Vec<u8>,
    entries: Entries,
}

impl QueueFamily {
    /// The queue made of the keys in `family`, its mark kept at `mark`.
    ///
    /// # Panics
    /// If `mark` lies in `family`.
    pub fn new(family: KeyRange, mark: Vec<u8>) -> Self {
        assert!(!family.contains(&mark), "a queue's mark lies outside it");
        Self { family, mark }
    }

    /// The family's keys.
    pub fn range(&self) -> &KeyRange {
        &self.family
    }

    /// Where the live entries begin, from a value read at the mark.
    fn start_from(&self, mark: Option<Vec<u8>>) -> Vec<u8> {
        mark.filter(|m| self.family.contains(m))
            .unwrap_or_else(|| self.family.begin.clone())
    }

    /// Where the live entries begin, read without a conflict.
    pub fn start_snapshot(&self, tx: &Transaction<'_>) -> Result<Vec<u8>> {
        Ok(self.start_from(tx.get_snapshot(&self.mark)?))
    }

    /// The first `limit` entries (in key order) before `end` (`None`: to the
    /// family's end) from the mark on, or, when there are none, from the
    /// family's start; for a transaction that will consume them: the mark
    /// and the entries are read with conflicts.
    pub fn head(
        &self,
        tx: &mut Transaction<'_>,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<QueueHead> {
        let (start, entries) = self.read(tx, self.family.begin.clone(), end, limit)?;
        Ok(QueueHead {
            mark: self.mark.clone(),
            start,
            entries,
        })
    }

    /// The first entry before `end` from the mark on, without conflicts and
    /// without looking below the mark: for hints such as when work falls
    /// due next (a consumer's [`QueueFamily::head`] still finds what lies
    /// below).
    pub fn first_from_mark(
        &self,
        tx: &Transaction<'_>,
        end: Option<&[u8]>,
    ) -> Result<Option<(Vec<u8>, Vec<u8>)>> {
        let range = KeyRange::new(self.start_snapshot(tx)?, self.end(end));
        Ok(tx.range_snapshot(&range, RangeOptions::limit(1))?.pop())
    }

    /// The entries after `after` (`None`: from the low end) up to `limit`,
    /// read with conflicts.
    pub fn entries_after(
        &self,
        tx: &mut Transaction<'_>,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries> {
        let floor = match after {
            Some(after) => KeyRange::single(after).end.max(self.family.begin.clone()),
            None => self.family.begin.clone(),
        };
        Ok(self.read(tx, floor, None, limit)?.1)
    }

    /// Whether the family holds no entry (read with conflicts: a
    /// transaction that acts on "empty" conflicts with a concurrent add).
    pub fn is_empty(&self, tx: &mut Transaction<'_>) -> Result<bool> {
        Ok(self.head(tx, None, 1)?.entries.is_empty())
    }

    /// Up to `limit` entries at or after `floor` and before `end`, read
    /// with conflicts from the mark on, and from `floor` when there are
    /// none from the mark. Returns where the read began, and the entries.
    fn read(
        &self,
        tx: &mut Transaction<'_>,
        floor: Vec<u8>,
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<u8>, Entries)> {
        let end = self.end(end);
        let from = self.start_from(tx.get(&self.mark)?).max(floor.clone());
        let entries = tx.range(
            &KeyRange::new(from.clone(), end.clone()),
            RangeOptions::limit(limit),
        )?;
        if !entries.is_empty() || from == floor {
            return Ok((from, entries));
        }
        let below = KeyRange::new(floor.clone(), from.min(end));
        Ok((floor, tx.range(&below, RangeOptions::limit(limit))?))
    }

    /// Adds (or overwrites) the entry at `key`, keeping the mark at or
    /// below it (see the module comment).
    pub fn set(&self, tx: &mut Transaction<'_>, key: &[u8], value: &[u8]) -> Result<()> {
        debug_assert!(self.family.contains(key), "an entry lies in its family");
        if key < self.start_snapshot(tx)?.as_slice() {
            tx.get(&self.mark)?;
            tx.set(&self.mark, key)?;
        } else {
            tx.add_read_conflict(KeyRange::single(key));
        }
        tx.set(key, value)
    }

    fn end(&self, end: Option<&[u8]>) -> Vec<u8> {
        match end {
            Some(end) if end < self.family.end.as_slice() => end.to_vec(),
            _ => self.family.end.clone(),
        }
    }
}

impl QueueHead {
    /// The entries read, in key order.
    pub fn entries(&self) -> &[(Vec<u8>, Vec<u8>)] {
        &self.entries
    }

    /// Consumes what was read: clears the span from the mark through the
    /// last entry read with one range clear, writes back the entries
    /// `keep` selects (work that must stay), and moves the mark to the
    /// first entry kept, or just past the span. Returns how many were
    /// kept. Call it before writing anything else into the span in the
    /// same transaction (the clear would take it too).
    pub fn consume(
        self,
        tx: &mut Transaction<'_>,
        mut keep: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<usize> {
        let Some((last, _)) = self.entries.last() else {
            return Ok(0);
        };
        let span = KeyRange::new(self.start, KeyRange::single(last).end);
        tx.clear_range(&span)?;
        let mut mark = None;
        let mut kept = 0;
        for (k, v) in &self.entries {
            if keep(k, v) {
                tx.set(k, v)?;
                mark.get_or_insert_with(|| k.clone());
                kept += 1;
            }
        }
        tx.set(&self.mark, &mark.unwrap_or(span.end))?;
        Ok(kept)
    }
}
