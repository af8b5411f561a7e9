//! The key-value contract every backend honours (FoundationDB's model).
//!
//! An ordered map of byte keys to byte values with serializable optimistic
//! transactions. A [`Transaction`] reads from one snapshot, buffers its writes
//! (reads see them: read-your-writes), records which key ranges it read, and
//! at commit the backend checks that nothing it read was written by a commit
//! that landed after its snapshot. On a conflict the whole closure passed to
//! [`Kv::transact`] runs again.
//!
//! The limits of FoundationDB hold on every backend so that code written
//! against RocksDB runs unchanged on a cluster: see [`limits`].
//!
//! Nothing outside the backend modules names a backend's library.

mod error;
#[cfg(feature = "foundationdb")]
mod fdb;
mod queue_family;
#[cfg(feature = "rocksdb")]
mod rocks;
mod tx;

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

pub use error::{Error, Result};
pub use queue_family::{QueueFamily, QueueHead};
pub use tx::{RangeOptions, Transaction};

/// FoundationDB's limits, enforced on every backend.
pub mod limits {
    /// Largest key, in bytes.
    pub const MAX_KEY: usize = 10_000;
    /// Largest single value, in bytes. Larger values are chunked by
    /// [`super::Transaction::set_chunked`].
    pub const MAX_VALUE: usize = 100_000;
    /// Most bytes (keys plus values plus range bounds) written by one
    /// transaction.
    pub const MAX_TRANSACTION_BYTES: usize = 10_000_000;
    /// A transaction older than this at commit fails with
    /// [`super::Error::TransactionTooOld`] (retryable).
    pub const MAX_TRANSACTION_AGE: std::time::Duration = std::time::Duration::from_secs(5);
}

/// A commit version. Versions increase with every committed transaction.
pub type Version = u64;

/// A half-open key range `[begin, end)`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KeyRange {
    /// First key in the range (inclusive).
    pub begin: Vec<u8>,
    /// First key after the range (exclusive).
    pub end: Vec<u8>,
}

impl KeyRange {
    /// The range `[begin, end)`.
    pub fn new(begin: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        Self {
            begin: begin.into(),
            end: end.into(),
        }
    }

    /// The range holding exactly `key`.
    pub fn single(key: &[u8]) -> Self {
        let mut end = Vec::with_capacity(key.len() + 1);
        end.extend_from_slice(key);
        end.push(0);
        Self {
            begin: key.to_vec(),
            end,
        }
    }

    /// Every key that starts with `prefix`.
    ///
    /// # Panics
    /// If the prefix is empty or all `0xFF` (there is no key after it).
    pub fn prefix(prefix: &[u8]) -> Self {
        Self {
            begin: prefix.to_vec(),
            end: strinc(prefix).expect("prefix has a successor"),
        }
    }

    /// Whether `key` lies in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.begin.as_slice() && key < self.end.as_slice()
    }

    /// Whether the two ranges share at least one key.
    pub fn intersects(&self, other: &KeyRange) -> bool {
        self.begin < other.end && other.begin < self.end
    }

    /// Whether the range holds no key.
    pub fn is_empty(&self) -> bool {
        self.begin >= self.end
    }
}

impl fmt::Debug for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {})", Printable(&self.begin), Printable(&self.end))
    }
}

/// Renders a key with printable ASCII as is and other bytes as `\xNN`.
pub struct Printable<'a>(pub &'a [u8]);

impl fmt::Display for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &b in self.0 {
            if b.is_ascii_graphic() && b != b'\\' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Printable<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The first key after every key that starts with `prefix`: the prefix with
/// trailing `0xFF` bytes dropped and its last byte incremented. `None` when
/// the prefix is empty or all `0xFF`.
pub fn strinc(prefix: &[u8]) -> Option<Vec<u8>> {
    let keep = prefix.iter().rposition(|&b| b != 0xFF)?;
    let mut out = prefix[..=keep].to_vec();
    out[keep] += 1;
    Some(out)
}

/// One write sent to the backend at commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// Set `key` to `value`.
    Set { key: Vec<u8>, value: Vec<u8> },
    /// Remove `key`.
    Clear { key: Vec<u8> },
    /// Remove every key in the range.
    ClearRange(KeyRange),
    /// Add `delta` to the little-endian `i64` stored at `key` (an absent or
    /// malformed value counts as zero). Takes no read conflict.
    Add { key: Vec<u8>, delta: i64 },
}

/// What a transaction hands the backend to commit.
#[derive(Debug, Default)]
pub struct Commit {
    /// The version of the snapshot the transaction read from.
    pub read_version: Version,
    /// Every range the transaction read; the commit fails with
    /// [`Error::Conflict`] if a later commit wrote into any of them.
    pub read_conflicts: Vec<KeyRange>,
    /// Ranges the transaction writes besides those of its mutations:
    /// every key and range a mutation writes is a write conflict too (as
    /// in FoundationDB), so they are not listed again here.
    pub write_conflicts: Vec<KeyRange>,
    /// The writes, applied in order. Clear-ranges come first.
    pub mutations: Vec<Mutation>,
}

/// A read view of the store at one version.
pub trait Snapshot: Send {
    /// The version this snapshot reads at.
    fn version(&self) -> Version;
    /// The value at `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    /// Every pair in `range`, in key order (descending when `reverse`).
    fn scan<'a>(&'a self, range: &KeyRange, reverse: bool) -> Result<ScanIter<'a>>;
}

/// A lazy scan of key-value pairs.
pub type ScanIter<'a> = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + 'a>;

/// A future that resolves once a watched key has been written.
pub type Watch = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// A storage backend: the whole of what differs between RocksDB and
/// FoundationDB. Transactions, read-your-writes and retries are built on these
/// three calls by [`Kv`].
pub trait Backend: Send + Sync + 'static {
    /// A consistent view of everything committed so far.
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>>;
    /// Validate `commit` against everything committed after its read version
    /// and apply it atomically. Returns once the commit is durable.
    fn commit(&self, commit: Commit) -> Result<Version>;
    /// A future that resolves when a commit after this call writes `key`
    /// (sets, clears, adds, or clears a range holding it).
    fn watch(&self, key: &[u8]) -> Watch;
    /// Whether reads are served from this process's memory or local disk
    /// (an embedded store) rather than over the network.
    fn local_reads(&self) -> bool;
}

/// Options for opening the embedded RocksDB backend.
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// Whether commits wait for the write-ahead log to reach the disk
    /// (fsync). Always on in production; benchmarks may compare.
    pub sync: bool,
    /// Block cache size in bytes.
    pub cache_bytes: usize,
    /// Values of at least this many bytes (message bodies, in practice) are
    /// kept in RocksDB's blob files instead of its tables, so flushes and
    /// compactions move a small reference instead of rewriting the value
    /// (RocksDB's integrated BlobDB). `None` keeps every value in the
    /// tables. Changing it between opens is safe: existing values are read
    /// from wherever they were written.
    pub blob_min_bytes: Option<u64>,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            sync: true,
            cache_bytes: 256 << 20,
            blob_min_bytes: Some(4096),
        }
    }
}

/// A handle to the key-value store. Cheap to clone.
#[derive(Clone)]
pub struct Kv {
    backend: Arc<dyn Backend>,
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kv").finish_non_exhaustive()
    }
}

/// Errors that a transaction closure may return: the store's own errors
/// convert into them, and the retry loop needs to see which are retryable.
pub trait TxError: From<Error> {
    /// The key-value error inside, if this is one.
    fn as_kv(&self) -> Option<&Error>;
}

impl TxError for Error {
    fn as_kv(&self) -> Option<&Error> {
        Some(self)
    }
}

/// How many times [`Kv::transact`] runs a closure before giving up on
/// conflicts.
const MAX_ATTEMPTS: u32 = 100;

impl Kv {
    /// Opens the FoundationDB cluster named by `cluster_file` (`None`: the
    /// default cluster file). The process must hold a running
    /// `tern_fdb_network::Network`.
    #[cfg(feature = "foundationdb")]
    pub fn open_foundationdb(cluster_file: Option<&Path>) -> Result<Self> {
        Ok(Self::from_backend(Arc::new(fdb::FdbBackend::open(
            cluster_file,
        )?)))
    }

    /// Opens (creating if needed) the embedded RocksDB backend at `path`.
    #[cfg(feature = "rocksdb")]
    pub fn open_rocksdb(path: &Path, options: RocksOptions) -> Result<Self> {
        Ok(Self::from_backend(Arc::new(rocks::RocksBackend::open(
            path, options,
        )?)))
    }

    /// Wraps any backend.
    pub fn from_backend(backend: Arc<dyn Backend>) -> Self {
        Self { backend }
    }

    /// Starts a transaction. Prefer [`Kv::transact`], which commits and
    /// retries.
    pub fn begin(&self) -> Result<Transaction<'_>> {
        Ok(Transaction::new(self.backend.snapshot()?))
    }

    /// Runs `f` in a transaction and commits it, running `f` again (with a
    /// fresh snapshot) when the commit conflicts or the transaction grew too
    /// old. Returns once the commit is durable. `f` must not have effects
    /// outside the transaction that are unsafe to repeat.
    pub fn transact<T, E: TxError>(
        &self,
        mut f: impl FnMut(&mut Transaction<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.begin().map_err(E::from).and_then(|mut tx| {
                let value = f(&mut tx)?;
                self.commit(tx)?;
                Ok(value)
            });
            match outcome {
                Err(e) if attempt < MAX_ATTEMPTS && e.as_kv().is_some_and(Error::is_retryable) => {
                    backoff(attempt);
                }
                other => return other,
            }
        }
    }

    /// Runs `f` against a snapshot and discards any writes: for reads.
    pub fn read<T, E: TxError>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut tx = self.begin()?;
        f(&mut tx)
    }

    /// Commits a transaction made with [`Kv::begin`]. A transaction that
    /// wrote nothing commits without touching the backend.
    pub fn commit(&self, tx: Transaction<'_>) -> Result<Option<Version>> {
        match tx.into_commit()? {
            None => Ok(None),
            Some(commit) => self.backend.commit(commit).map(Some),
        }
    }

    /// A future that resolves when a later commit writes `key`. Create the
    /// watch before reading the value it guards, so no change is missed.
    pub fn watch(&self, key: &[u8]) -> Watch {
        self.backend.watch(key)
    }

    /// Whether reads are served from this process's memory or local disk
    /// (the embedded backend), not over the network: a point read of a
    /// hot key then takes microseconds, short enough to make on an async
    /// runtime's thread; with a networked backend every read is a round
    /// trip and belongs on a blocking thread.
    pub fn local_reads(&self) -> bool {
        self.backend.local_reads()
    }
}

/// Sleeps a little longer after each conflict, with jitter, so that
/// contending writers spread out.
fn backoff(attempt: u32) {
    use rand::Rng;
    let cap_us = 50u64 << attempt.min(10);
    let us = rand::thread_rng().gen_range(0..=cap_us.min(100_000));
    std::thread::sleep(std::time::Duration::from_micros(us));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strinc_skips_trailing_ff() {
        assert_eq!(strinc(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(strinc(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(strinc(b"\xff"), None);
        assert_eq!(strinc(b""), None);
    }

    #[test]
    fn ranges_intersect_half_open() {
        let a = KeyRange::new(b"a".to_vec(), b"c".to_vec());
        assert!(a.intersects(&KeyRange::single(b"b")));
        assert!(!a.intersects(&KeyRange::single(b"c")));
        assert!(a.intersects(&KeyRange::new(b"0".to_vec(), b"a\0".to_vec())));
        assert!(!a.intersects(&KeyRange::new(b"0".to_vec(), b"a".to_vec())));
    }
}
