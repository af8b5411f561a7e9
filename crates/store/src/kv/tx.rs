//! Transactions: a snapshot, a write buffer read through (read-your-writes),
//! and the read and write conflict ranges handed to the backend at commit.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Bound;
use std::time::Instant;

use super::{Commit, Error, KeyRange, Mutation, Result, Snapshot, limits};

/// A buffered write to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Set(Vec<u8>),
    Clear,
    /// An atomic add not yet resolved against the stored value.
    Add(i64),
}

/// How to read a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeOptions {
    /// Descending key order.
    pub reverse: bool,
    /// At most this many pairs (`usize::MAX`: all).
    pub limit: usize,
}

impl Default for RangeOptions {
    fn default() -> Self {
        Self {
            reverse: false,
            limit: usize::MAX,
        }
    }
}

impl RangeOptions {
    /// Ascending, at most `limit` pairs.
    pub fn limit(limit: usize) -> Self {
        Self {
            reverse: false,
            limit,
        }
    }

    /// Descending, at most `limit` pairs.
    pub fn reverse(limit: usize) -> Self {
        Self {
            reverse: true,
            limit,
        }
    }
}

/// A serializable optimistic transaction. Made by [`super::Kv::begin`] or
/// handed to the closure of [`super::Kv::transact`].
pub struct Transaction<'s> {
    snapshot: Box<dyn Snapshot + 's>,
    started: Instant,
    writes: BTreeMap<Vec<u8>, Op>,
    cleared: Vec<KeyRange>,
    reads: Vec<KeyRange>,
    extra_write_conflicts: Vec<KeyRange>,
    /// Counters read by [`Transaction::get_counter`] before this
    /// transaction wrote them, with the value read.
    counters_read: BTreeMap<Vec<u8>, i64>,
    /// Small values already read from the snapshot (which never changes):
    /// a transaction that stores a batch of deliveries to one account reads
    /// the same account record, counters and mailbox many times.
    read_cache: RefCell<HashMap<Vec<u8>, Option<Vec<u8>>>>,
    bytes: usize,
}

/// Values up to this size are kept in a transaction's read cache.
const CACHED_VALUE_BYTES: usize = 1024;
/// Most entries in a transaction's read cache.
const CACHED_ENTRIES: usize = 4096;

impl fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transaction")
            .field("version", &self.snapshot.version())
            .field("writes", &self.writes.len())
            .field("cleared", &self.cleared)
            .field("bytes", &self.bytes)
            .finish()
    }
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.len() > limits::MAX_KEY {
        return Err(Error::KeyTooLarge(key.len()));
    }
    Ok(())
}

/// Decodes a stored counter: little-endian, up to 8 bytes; anything else
/// counts as zero (as FoundationDB's ADD treats short values).
pub(crate) fn decode_counter(value: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    let n = value.len().min(8);
    buf[..n].copy_from_slice(&value[..n]);
    i64::from_le_bytes(buf)
}

impl<'s> Transaction<'s> {
    pub(super) fn new(snapshot: Box<dyn Snapshot + 's>) -> Self {
        Self {
            snapshot,
            started: Instant::now(),
            writes: BTreeMap::new(),
            cleared: Vec::new(),
            reads: Vec::new(),
            extra_write_conflicts: Vec::new(),
            counters_read: BTreeMap::new(),
            read_cache: RefCell::new(HashMap::new()),
            bytes: 0,
        }
    }

    /// The version this transaction reads at.
    pub fn read_version(&self) -> super::Version {
        self.snapshot.version()
    }

    /// The snapshot's value at `key`, through the read cache.
    fn snapshot_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.read_cache.borrow().get(key) {
            return Ok(v.clone());
        }
        let v = self.snapshot.get(key)?;
        let mut cache = self.read_cache.borrow_mut();
        if v.as_ref().is_none_or(|v| v.len() <= CACHED_VALUE_BYTES) && cache.len() < CACHED_ENTRIES
        {
            cache.insert(key.to_vec(), v.clone());
        }
        Ok(v)
    }

    fn is_cleared(&self, key: &[u8]) -> bool {
        self.cleared.iter().any(|r| r.contains(key))
    }

    /// The value at `key`; the read conflicts with later writes to it.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        self.reads.push(KeyRange::single(key));
        self.get_snapshot(key)
    }

    /// The value at `key` without a read conflict: a later write to it does
    /// not abort this transaction.
    pub fn get_snapshot(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        check_key(key)?;
        match self.writes.get(key) {
            Some(Op::Set(v)) => Ok(Some(v.clone())),
            Some(Op::Clear) => Ok(None),
            Some(Op::Add(delta)) => {
                let base = if self.is_cleared(key) {
                    None
                } else {
                    self.snapshot_get(key)?
                };
                let base = base.as_deref().map(decode_counter).unwrap_or(0);
                Ok(Some(base.wrapping_add(*delta).to_le_bytes().to_vec()))
            }
            None if self.is_cleared(key) => Ok(None),
            None => self.snapshot_get(key),
        }
    }

    /// The counter at `key` (see [`Transaction::add`]), zero when absent.
    pub fn get_counter(&mut self, key: &[u8]) -> Result<i64> {
        let untouched = !self.writes.contains_key(key) && !self.is_cleared(key);
        let value = self.get(key)?.as_deref().map(decode_counter).unwrap_or(0);
        if untouched {
            self.counters_read.insert(key.to_vec(), value);
        }
        Ok(value)
    }

    /// Pairs in `range`, merged with this transaction's own writes. The read
    /// conflicts with later writes to the part of the range it covered (up to
    /// the last key returned when the limit cut it short).
    pub fn range(
        &mut self,
        range: &KeyRange,
        options: RangeOptions,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let out = self.range_snapshot(range, options)?;
        let covered = if out.len() >= options.limit && options.limit > 0 {
            let last = &out[out.len() - 1].0;
            if options.reverse {
                KeyRange::new(last.clone(), range.end.clone())
            } else {
                KeyRange::new(range.begin.clone(), KeyRange::single(last).end)
            }
        } else {
            range.clone()
        };
        if !covered.is_empty() {
            self.reads.push(covered);
        }
        Ok(out)
    }

    /// Like [`Transaction::range`] without a read conflict.
    pub fn range_snapshot(
        &self,
        range: &KeyRange,
        options: RangeOptions,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        check_key(&range.begin)?;
        check_key(&range.end)?;
        let mut out = Vec::new();
        if range.is_empty() || options.limit == 0 {
            return Ok(out);
        }
        let bounds = (
            Bound::Included(range.begin.clone()),
            Bound::Excluded(range.end.clone()),
        );
        let mut local = self
            .writes
            .range::<Vec<u8>, _>(bounds)
            .peekable_dir(options.reverse);
        let mut stored = self.snapshot.scan(range, options.reverse)?.peekable();
        while out.len() < options.limit {
            // Pick whichever stream's next key comes first in scan order.
            let next_stored = match stored.peek() {
                Some(Err(_)) => return Err(stored.next().expect("peeked").unwrap_err()),
                Some(Ok((k, _))) => Some(k.as_slice()),
                None => None,
            };
            let next_local = local.peek().map(|(k, _)| k.as_slice());
            let take_local = match (next_stored, next_local) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some(l)) => {
                    if options.reverse {
                        l >= s
                    } else {
                        l <= s
                    }
                }
            };
            if take_local {
                let (key, op) = local.next().expect("peeked");
                let stored_value = match stored.peek() {
                    Some(Ok((k, _))) if k == key => Some(stored.next().expect("peeked")?.1),
                    _ => None,
                };
                let stored_value = stored_value.filter(|_| !self.is_cleared(key));
                match op {
                    Op::Set(v) => out.push((key.clone(), v.clone())),
                    Op::Clear => {}
                    Op::Add(delta) => {
                        let base = stored_value.as_deref().map(decode_counter).unwrap_or(0);
                        out.push((
                            key.clone(),
                            base.wrapping_add(*delta).to_le_bytes().to_vec(),
                        ));
                    }
                }
            } else {
                let (key, value) = stored.next().expect("peeked")?;
                if !self.is_cleared(&key) {
                    out.push((key, value));
                }
            }
        }
        Ok(out)
    }

    fn account(&mut self, bytes: usize) -> Result<()> {
        self.bytes += bytes;
        if self.bytes > limits::MAX_TRANSACTION_BYTES {
            return Err(Error::TransactionTooLarge(self.bytes));
        }
        Ok(())
    }

    /// Sets `key` to `value`.
    pub fn set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        check_key(key)?;
        if value.len() > limits::MAX_VALUE {
            return Err(Error::ValueTooLarge(value.len()));
        }
        self.account(key.len() + value.len())?;
        self.writes.insert(key.to_vec(), Op::Set(value.to_vec()));
        Ok(())
    }

    /// Removes `key`.
    pub fn clear(&mut self, key: &[u8]) -> Result<()> {
        check_key(key)?;
        self.account(key.len())?;
        self.writes.insert(key.to_vec(), Op::Clear);
        Ok(())
    }

    /// Removes every key in `range`.
    pub fn clear_range(&mut self, range: &KeyRange) -> Result<()> {
        check_key(&range.begin)?;
        check_key(&range.end)?;
        if range.is_empty() {
            return Ok(());
        }
        self.account(range.begin.len() + range.end.len())?;
        let doomed: Vec<Vec<u8>> = self
            .writes
            .range::<Vec<u8>, _>((
                Bound::Included(range.begin.clone()),
                Bound::Excluded(range.end.clone()),
            ))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.writes.remove(&k);
        }
        self.cleared.push(range.clone());
        Ok(())
    }

    /// Adds `delta` to the little-endian `i64` counter at `key` without
    /// reading it: concurrent adds never conflict with each other.
    ///
    /// A counter this transaction has read with [`Transaction::get_counter`]
    /// (and so conflicts on anyway) is written as the sum instead of an
    /// add: the backend then stores a value rather than one more operand
    /// that every later read of the counter must fold in (RocksDB keeps
    /// merge operands until a flush or compaction).
    pub fn add(&mut self, key: &[u8], delta: i64) -> Result<()> {
        check_key(key)?;
        self.account(key.len() + 8)?;
        let cleared = self.is_cleared(key);
        let op = match self.writes.get(key) {
            Some(Op::Set(v)) => {
                Op::Set(decode_counter(v).wrapping_add(delta).to_le_bytes().to_vec())
            }
            Some(Op::Clear) => Op::Set(delta.to_le_bytes().to_vec()),
            Some(Op::Add(d)) => Op::Add(d.wrapping_add(delta)),
            None if cleared => Op::Set(delta.to_le_bytes().to_vec()),
            None => match self.counters_read.get(key) {
                Some(read) => Op::Set(read.wrapping_add(delta).to_le_bytes().to_vec()),
                None => Op::Add(delta),
            },
        };
        self.writes.insert(key.to_vec(), op);
        Ok(())
    }

    /// Makes the transaction conflict with later writes to `range`, as if
    /// it had read it.
    pub fn add_read_conflict(&mut self, range: KeyRange) {
        self.reads.push(range);
    }

    /// Makes transactions that read `range` conflict with this one, as if
    /// it had written it.
    pub fn add_write_conflict(&mut self, range: KeyRange) {
        self.extra_write_conflicts.push(range);
    }

    /// Stores a value of any size at `key`: small values in one key, larger
    /// ones as a header at `key` and chunks of at most
    /// [`limits::MAX_VALUE`] bytes at `key ++ 0x00 ++ index (u32 BE)`.
    /// Keys that are extended by callers must not be used for chunked values.
    ///
    /// Reads the old value's header (a read conflict on `key`): its chunks
    /// are cleared only when it has some, because a range clear costs every
    /// later read of the backend (a RocksDB range tombstone) even when it
    /// removes nothing.
    pub fn set_chunked(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.has_chunks(key)? {
            self.clear_chunks(key)?;
        }
        self.set_chunked_new(key, value)
    }

    /// [`Transaction::set_chunked`] for a key that has never held a value
    /// (one under an id this transaction allocated): no read of an old
    /// header. Were there one, its chunks past the new value's would be
    /// left unread (reads take the chunks the header counts), not wrong.
    pub fn set_chunked_new(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if value.len() < limits::MAX_VALUE {
            let mut v = Vec::with_capacity(value.len() + 1);
            v.push(0);
            v.extend_from_slice(value);
            return self.set(key, &v);
        }
        let chunk = limits::MAX_VALUE;
        let count = value.len().div_ceil(chunk) as u32;
        let mut header = vec![1u8];
        header.extend_from_slice(&(value.len() as u64).to_be_bytes());
        header.extend_from_slice(&count.to_be_bytes());
        self.set(key, &header)?;
        for (i, part) in value.chunks(chunk).enumerate() {
            self.set(&chunk_key(key, i as u32), part)?;
        }
        Ok(())
    }

    /// Reads a value written by [`Transaction::set_chunked`].
    pub fn get_chunked(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let Some(head) = self.get(key)? else {
            return Ok(None);
        };
        match head.first() {
            Some(0) => Ok(Some(head[1..].to_vec())),
            Some(1) if head.len() == 13 => {
                let len = u64::from_be_bytes(head[1..9].try_into().expect("8 bytes")) as usize;
                let count = u32::from_be_bytes(head[9..13].try_into().expect("4 bytes"));
                let mut out = Vec::with_capacity(len);
                let parts = self.range(
                    &KeyRange::new(chunk_key(key, 0), chunk_key(key, count)),
                    RangeOptions::default(),
                )?;
                if parts.len() != count as usize {
                    return Err(Error::corrupt(key, "missing chunks"));
                }
                for (_, part) in parts {
                    out.extend_from_slice(&part);
                }
                if out.len() != len {
                    return Err(Error::corrupt(key, "chunked value has the wrong length"));
                }
                Ok(Some(out))
            }
            _ => Err(Error::corrupt(key, "bad chunked value header")),
        }
    }

    /// Removes a value written by [`Transaction::set_chunked`] (reading its
    /// header first, like [`Transaction::set_chunked`]).
    pub fn clear_chunked(&mut self, key: &[u8]) -> Result<()> {
        let chunked = self.has_chunks(key)?;
        self.clear(key)?;
        if chunked {
            self.clear_chunks(key)?;
        }
        Ok(())
    }

    /// Whether the value at `key` may have chunks: it is there and its
    /// header does not say it is stored whole. Chunks exist only under
    /// such a header.
    fn has_chunks(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.get(key)?.is_some_and(|head| head.first() != Some(&0)))
    }

    fn clear_chunks(&mut self, key: &[u8]) -> Result<()> {
        let mut begin = key.to_vec();
        begin.push(0);
        let mut end = key.to_vec();
        end.push(1);
        self.clear_range(&KeyRange::new(begin, end))
    }

    /// Bytes written so far (keys, values, range bounds).
    pub fn size(&self) -> usize {
        self.bytes
    }

    /// Whether this transaction has written anything.
    pub fn is_read_only(&self) -> bool {
        self.writes.is_empty() && self.cleared.is_empty() && self.extra_write_conflicts.is_empty()
    }

    /// The commit request, or `None` for a read-only transaction.
    pub(super) fn into_commit(self) -> Result<Option<Commit>> {
        if self.is_read_only() {
            return Ok(None);
        }
        if self.started.elapsed() > limits::MAX_TRANSACTION_AGE {
            return Err(Error::TransactionTooOld);
        }
        // The mutations' keys and ranges are write conflicts by
        // themselves ([`Commit::write_conflicts`]).
        let mut mutations = Vec::with_capacity(self.cleared.len() + self.writes.len());
        for r in self.cleared {
            mutations.push(Mutation::ClearRange(r));
        }
        for (key, op) in self.writes {
            mutations.push(match op {
                Op::Set(value) => Mutation::Set { key, value },
                Op::Clear => Mutation::Clear { key },
                Op::Add(delta) => Mutation::Add { key, delta },
            });
        }
        Ok(Some(Commit {
            read_version: self.snapshot.version(),
            read_conflicts: self.reads,
            write_conflicts: self.extra_write_conflicts,
            mutations,
        }))
    }
}

fn chunk_key(key: &[u8], index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 5);
    k.extend_from_slice(key);
    k.push(0);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// A peekable iterator over a `BTreeMap` range, forwards or backwards.
trait PeekableDir<'a>: DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Op)> + Sized {
    fn peekable_dir(self, reverse: bool) -> std::iter::Peekable<DirIter<Self>> {
        DirIter {
            inner: self,
            reverse,
        }
        .peekable()
    }
}

impl<'a, I: DoubleEndedIterator<Item = (&'a Vec<u8>, &'a Op)>> PeekableDir<'a> for I {}

struct DirIter<I> {
    inner: I,
    reverse: bool,
}

impl<I: DoubleEndedIterator> Iterator for DirIter<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        if self.reverse {
            self.inner.next_back()
        } else {
            self.inner.next()
        }
    }
}
