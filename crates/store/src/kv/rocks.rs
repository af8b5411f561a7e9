//! The embedded backend: RocksDB with a resolver in front of it.
//!
//! RocksDB gives ordered storage, snapshots and atomic write batches; the
//! resolver adds FoundationDB's commit semantics on top:
//!
//! 1. A transaction reads from a RocksDB snapshot tagged with the commit
//!    version that was current when it was taken (the version is read
//!    *before* the snapshot, so the snapshot holds at least that version: a
//!    newer snapshot only causes spurious conflicts, never missed ones).
//! 2. Committing threads queue their commits; one of them at a time is the
//!    *leader*. The leader takes every commit waiting in the queue (a
//!    group), checks each one's read ranges against the write ranges of
//!    every commit after its read version (kept in a short history) and
//!    against the commits accepted earlier in the same group, and writes all
//!    accepted commits as one `WriteBatch` with one WAL sync: concurrent
//!    commits share an fsync (group commit). A lone committer is its own
//!    leader and writes on its own thread, with no hand-off to another
//!    thread; once its own commit is answered the leader passes the lead to
//!    the oldest waiting committer.
//! 3. Only after the write returns does the leader publish the new version,
//!    answer the waiting transactions and fire watches.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DB, Direction, IteratorMode, MergeOperands,
    Options, ReadOptions, WriteBatch, WriteOptions,
};
use tokio::sync::oneshot;

use super::tx::decode_counter;
use super::{
    Backend, Commit, Error, KeyRange, Mutation, Result, RocksOptions, ScanIter, Snapshot, Version,
    Watch, limits,
};
use crate::handoff::{self, Sender};

/// The largest group the leader writes in one batch, in bytes.
const MAX_GROUP_BYTES: usize = 32 << 20;

/// What a queued commit is told.
enum Reply {
    /// Its outcome.
    Done(Result<Version>),
    /// The leader has its own answer: the receiver leads now.
    Lead,
}

struct Pending {
    commit: Commit,
    bytes: usize,
    reply: Sender<Reply>,
}

/// Commits waiting for a leader, oldest first.
#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// Whether some thread is leading.
    leading: bool,
}

/// What recent commits wrote, newest last.
struct History {
    entries: VecDeque<(Version, Instant, Written)>,
    /// Commits at or below this version are no longer in `entries`.
    floor: Version,
}

/// The keys and ranges a commit wrote, kept for the conflict checks of
/// later commits: its mutations' own keys (moved, not copied, once their
/// values are in the batch) and its ranges.
struct Written {
    keys: Vec<Vec<u8>>,
    ranges: Vec<KeyRange>,
}

impl Written {
    fn of(commit: Commit) -> Self {
        let mut keys = Vec::with_capacity(commit.mutations.len());
        let mut ranges = commit.write_conflicts;
        for m in commit.mutations {
            match m {
                Mutation::Set { key, .. } | Mutation::Clear { key } | Mutation::Add { key, .. } => {
                    keys.push(key)
                }
                Mutation::ClearRange(r) => ranges.push(r),
            }
        }
        Self { keys, ranges }
    }

    /// Whether anything written intersects one of `reads`.
    fn hits(&self, reads: &[KeyRange]) -> bool {
        self.keys.iter().any(|k| key_read(reads, k))
            || self.ranges.iter().any(|w| range_read(reads, w))
    }
}

/// Whether `commit` (not yet written: its mutations, and its extra write
/// conflicts) writes into one of `reads`.
fn writes_into(commit: &Commit, reads: &[KeyRange]) -> bool {
    commit.mutations.iter().any(|m| match m {
        Mutation::Set { key, .. } | Mutation::Clear { key } | Mutation::Add { key, .. } => {
            key_read(reads, key)
        }
        Mutation::ClearRange(w) => range_read(reads, w),
    }) || commit.write_conflicts.iter().any(|w| range_read(reads, w))
}

fn key_read(reads: &[KeyRange], key: &[u8]) -> bool {
    reads.iter().any(|r| r.contains(key))
}

fn range_read(reads: &[KeyRange], written: &KeyRange) -> bool {
    reads.iter().any(|r| r.intersects(written))
}

/// What only the leader touches.
struct Resolver {
    history: History,
    groups: u64,
    write_opts: WriteOptions,
}

/// Watched keys in key order, so a written range finds its watchers by a
/// range lookup (not a scan of every watched key).
type WatchMap = BTreeMap<Vec<u8>, Vec<oneshot::Sender<()>>>;

struct Shared {
    db: DB,
    version: AtomicU64,
    watches: Mutex<WatchMap>,
    queue: Mutex<Queue>,
    resolver: Mutex<Resolver>,
}

pub(super) struct RocksBackend {
    shared: Shared,
}

fn merge_add(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    let mut sum = existing.map(decode_counter).unwrap_or(0);
    for op in operands {
        sum = sum.wrapping_add(decode_counter(op));
    }
    Some(sum.to_le_bytes().to_vec())
}

fn backend_err(e: rocksdb::Error) -> Error {
    Error::Backend(e.into_string())
}

impl RocksBackend {
    pub(super) fn open(path: &Path, options: RocksOptions) -> Result<Self> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.set_merge_operator_associative("tern_add", merge_add);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.increase_parallelism(2);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        // A bloom filter over the memtable's whole keys: a delivery's point
        // reads of keys not yet written (a new message's blob header and
        // its account link, new counters) skip the skiplist search.
        opts.set_memtable_prefix_bloom_ratio(0.05);
        opts.set_memtable_whole_key_filtering(true);
        // Write-ahead logs are reused once obsolete instead of new files
        // being created and grown: a sync of a recycled file writes data
        // only, where a growing file's sync also commits its new size to
        // the filesystem's journal. (RocksDB writes recycled logs in a
        // record format that tells stale records from the current file's.)
        opts.set_recycle_log_file_num(4);
        if let Some(min) = options.blob_min_bytes {
            // Large values go to blob files at flush, written once: the
            // tables then hold a reference, and compactions (which rewrite
            // tables, LZ4 and all) never copy a message body again until
            // blob garbage collection relocates the live part of an old
            // file, which happens when a compaction reaches the references.
            opts.set_enable_blob_files(true);
            opts.set_min_blob_size(min);
            opts.set_blob_file_size(256 << 20);
            opts.set_blob_compression_type(rocksdb::DBCompressionType::Lz4);
            opts.set_enable_blob_gc(true);
            opts.set_blob_gc_age_cutoff(0.25);
        }
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&Cache::new_lru_cache(options.cache_bytes));
        table.set_bloom_filter(10.0, false);
        table.set_cache_index_and_filter_blocks(true);
        // Index and filter blocks in partitions of a few KB, found through a
        // pinned top level: whole-table index and filter blocks (about 1 MB
        // each for a 64 MB table of small keys) outgrow the cache's shards,
        // are evicted by data blocks, and are then read again from the file
        // and checksummed by every point read.
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        opts.set_block_based_table_factory(&table);
        let db = DB::open(&opts, path).map_err(backend_err)?;
        let mut write_opts = WriteOptions::default();
        write_opts.set_sync(options.sync);
        Ok(Self {
            shared: Shared {
                db,
                version: AtomicU64::new(1),
                watches: Mutex::new(BTreeMap::new()),
                queue: Mutex::new(Queue::default()),
                resolver: Mutex::new(Resolver {
                    history: History {
                        entries: VecDeque::new(),
                        floor: 0,
                    },
                    groups: 0,
                    write_opts,
                }),
            },
        })
    }
}

/// Held by the leading thread; on release (also when unwinding) passes the
/// lead to the oldest waiting commit, or ends leading when none waits.
struct Leadership<'a> {
    shared: &'a Shared,
    /// The leader's own reply slot: a leader unwinding before its commit
    /// was taken leaves the queue with it (no one would take the lead
    /// handed to it).
    own: &'a handoff::Receiver<Reply>,
}

impl Drop for Leadership<'_> {
    fn drop(&mut self) {
        let mut queue = self.shared.queue.lock();
        if std::thread::panicking() {
            queue.pending.retain(|p| !p.reply.feeds(self.own));
        }
        match queue.pending.front() {
            Some(next) => {
                next.reply.send(Reply::Lead);
            }
            None => queue.leading = false,
        }
    }
}

struct RocksSnapshot<'a> {
    snap: rocksdb::SnapshotWithThreadMode<'a, DB>,
    version: Version,
}

impl Snapshot for RocksSnapshot<'_> {
    fn version(&self) -> Version {
        self.version
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.snap.get(key).map_err(backend_err)
    }

    fn scan<'a>(&'a self, range: &KeyRange, reverse: bool) -> Result<ScanIter<'a>> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(range.begin.clone());
        ro.set_iterate_upper_bound(range.end.clone());
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::From(&range.begin, Direction::Forward)
        };
        let iter = self.snap.iterator_opt(mode, ro);
        Ok(Box::new(iter.map(|item| {
            item.map(|(k, v)| (k.into_vec(), v.into_vec()))
                .map_err(backend_err)
        })))
    }
}

impl Backend for RocksBackend {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>> {
        // Version first, snapshot second: see the module comment.
        let version = self.shared.version.load(Ordering::SeqCst);
        let snap = self.shared.db.snapshot();
        Ok(Box::new(RocksSnapshot { snap, version }))
    }

    fn commit(&self, commit: Commit) -> Result<Version> {
        let bytes = commit
            .mutations
            .iter()
            .map(|m| match m {
                Mutation::Set { key, value } => key.len() + value.len(),
                Mutation::Clear { key } => key.len(),
                Mutation::ClearRange(r) => r.begin.len() + r.end.len(),
                Mutation::Add { key, .. } => key.len() + 8,
            })
            .sum::<usize>();
        if bytes > limits::MAX_TRANSACTION_BYTES {
            return Err(Error::TransactionTooLarge(bytes));
        }
        // The wait parks at once (see `handoff`): waiting committers
        // spinning would take the CPU from the leader they wait for.
        let (reply, wait) = handoff::channel();
        let lead = {
            let mut queue = self.shared.queue.lock();
            queue.pending.push_back(Pending {
                commit,
                bytes,
                reply,
            });
            !std::mem::replace(&mut queue.leading, true)
        };
        if !lead {
            match wait.recv() {
                Ok(Reply::Done(outcome)) => return outcome,
                Ok(Reply::Lead) => {}
                Err(_) => return Err(Error::Backend("commit leader stopped".into())),
            }
        }
        // Leading: write groups until our own commit is answered.
        let _leadership = Leadership {
            shared: &self.shared,
            own: &wait,
        };
        loop {
            let group = take_group(&mut self.shared.queue.lock());
            write_group(&self.shared, group);
            if let Some(Reply::Done(outcome)) = wait.try_recv() {
                return outcome;
            }
        }
    }

    /// Embedded: memtables, the block cache, local files.
    fn local_reads(&self) -> bool {
        true
    }

    fn watch(&self, key: &[u8]) -> Watch {
        let (tx, rx) = oneshot::channel();
        self.shared
            .watches
            .lock()
            .entry(key.to_vec())
            .or_default()
            .push(tx);
        Box::pin(async move {
            rx.await
                .map_err(|_| Error::Backend("store closed while watching".into()))
        })
    }
}

fn conflicts(history: &History, group: &[(Version, &Commit)], commit: &Commit) -> bool {
    if commit.read_conflicts.is_empty() {
        return false;
    }
    let reads = &commit.read_conflicts;
    history
        .entries
        .iter()
        .rev()
        .take_while(|(v, _, _)| *v > commit.read_version)
        .any(|(_, _, written)| written.hits(reads))
        || group
            .iter()
            .any(|(v, c)| *v > commit.read_version && writes_into(c, reads))
}

/// The oldest waiting commits, up to [`MAX_GROUP_BYTES`] (at least one).
fn take_group(queue: &mut Queue) -> Vec<Pending> {
    let mut bytes = 0;
    let mut n = 0;
    for p in &queue.pending {
        if n > 0 && bytes + p.bytes > MAX_GROUP_BYTES {
            break;
        }
        bytes += p.bytes;
        n += 1;
    }
    queue.pending.drain(..n).collect()
}

/// Resolves a group, writes the accepted commits as one batch with one WAL
/// sync, publishes the new version and answers every member.
fn write_group(shared: &Shared, group: Vec<Pending>) {
    let mut resolver = shared.resolver.lock();
    let Resolver {
        history,
        groups,
        write_opts,
    } = &mut *resolver;
    *groups += 1;
    if groups.is_multiple_of(4096) {
        prune_watches(shared);
    }
    let now = Instant::now();
    // Forget history no live transaction can need.
    while let Some((v, at, _)) = history.entries.front() {
        if now.duration_since(*at) > limits::MAX_TRANSACTION_AGE * 2 {
            history.floor = *v;
            history.entries.pop_front();
        } else {
            break;
        }
    }

    let mut next = shared.version.load(Ordering::SeqCst);
    // Sized up front: growing a batch of many 10 KB values by doubling
    // copies it again and again (a visible share of a delivery's CPU).
    let capacity: usize = group
        .iter()
        .map(|p| p.bytes + 16 * p.commit.mutations.len())
        .sum();
    let mut batch = WriteBatch::with_capacity_bytes(capacity + 64);
    let mut accepted: Vec<(Version, Pending)> = Vec::with_capacity(group.len());
    let mut rejected: Vec<(Pending, Error)> = Vec::new();
    for p in group {
        let verdict = if p.commit.read_version < history.floor {
            Err(Error::TransactionTooOld)
        } else {
            let in_group: Vec<(Version, &Commit)> =
                accepted.iter().map(|(v, p)| (*v, &p.commit)).collect();
            if conflicts(history, &in_group, &p.commit) {
                Err(Error::Conflict)
            } else {
                Ok(())
            }
        };
        match verdict {
            Ok(()) => {
                next += 1;
                for m in &p.commit.mutations {
                    match m {
                        Mutation::Set { key, value } => batch.put(key, value),
                        Mutation::Clear { key } => batch.delete(key),
                        Mutation::ClearRange(r) => batch.delete_range(&r.begin, &r.end),
                        Mutation::Add { key, delta } => batch.merge(key, delta.to_le_bytes()),
                    }
                }
                accepted.push((next, p));
            }
            Err(e) => rejected.push((p, e)),
        }
    }
    for (p, e) in rejected {
        p.reply.send(Reply::Done(Err(e)));
    }
    if accepted.is_empty() {
        return;
    }
    if let Err(e) = shared.db.write_opt(batch, write_opts) {
        // Nothing of the group was written: every member fails.
        let msg = e.into_string();
        tracing::error!(error = %msg, "commit write failed");
        for (_, p) in accepted {
            p.reply.send(Reply::Done(Err(Error::Backend(msg.clone()))));
        }
        return;
    }
    shared.version.store(next, Ordering::SeqCst);
    let written: Vec<(Version, Written, Sender<Reply>)> = accepted
        .into_iter()
        .map(|(v, p)| (v, Written::of(p.commit), p.reply))
        .collect();
    fire_watches(shared, written.iter().map(|(_, w, _)| w));
    for (v, written, reply) in written {
        history.entries.push_back((v, now, written));
        reply.send(Reply::Done(Ok(v)));
    }
}

fn fire_watches<'a>(shared: &Shared, written: impl Iterator<Item = &'a Written>) {
    let mut watches = shared.watches.lock();
    if watches.is_empty() {
        return;
    }
    let fire = |key: &[u8], watches: &mut WatchMap| {
        if let Some(waiters) = watches.remove(key) {
            for s in waiters {
                let _ = s.send(());
            }
        }
    };
    for w in written {
        for key in &w.keys {
            fire(key, &mut watches);
        }
        for range in &w.ranges {
            if range.is_empty() {
                continue; // never written (and BTreeMap::range panics on begin > end)
            }
            let hit: Vec<Vec<u8>> = watches
                .range::<[u8], _>((
                    Bound::Included(range.begin.as_slice()),
                    Bound::Excluded(range.end.as_slice()),
                ))
                .map(|(k, _)| k.clone())
                .collect();
            for key in hit {
                fire(&key, &mut watches);
            }
        }
    }
}

/// Drops watchers whose futures were abandoned.
fn prune_watches(shared: &Shared) {
    shared.watches.lock().retain(|_, waiters| {
        waiters.retain(|s| !s.is_closed());
        !waiters.is_empty()
    });
}
