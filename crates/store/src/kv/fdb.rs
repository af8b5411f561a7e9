//! The FoundationDB backend.
//!
//! FoundationDB already is the model the key-value contract copies, so this
//! backend is thin:
//! - a [`Snapshot`] is a FoundationDB transaction at its read version, read
//!   with snapshot reads (no implicit conflict ranges);
//! - a [`Commit`] runs in a fresh FoundationDB transaction set to the
//!   snapshot's read version, with the read and write conflict ranges the
//!   [`super::Transaction`] recorded and its mutations. FoundationDB's
//!   resolvers then decide conflicts exactly as the RocksDB backend's
//!   resolver does;
//! - a watch is a FoundationDB watch, which fires for a change made by any
//!   client of the cluster (other Tern nodes included).
//!
//! FoundationDB's futures are driven with a plain blocking executor: store
//! calls block by contract (async callers use `spawn_blocking`).
//!
//! Errors: `not_committed` (1020) is [`Error::Conflict`],
//! `transaction_too_old` (1007) is [`Error::TransactionTooOld`], both
//! retried by [`super::Kv::transact`]. `commit_unknown_result` (1021) is not
//! retried: the commit may have landed, and store transactions are not all
//! idempotent; it surfaces as [`Error::Backend`].
//!
//! This module needs libfdb_c to link; without a cluster it is compiled
//! (`cargo check -p tern-store --no-default-features --features
//! foundationdb`) and the conformance suite skips its run.

use std::collections::VecDeque;
use std::path::Path;

use foundationdb::options::{ConflictRangeType, MutationType, StreamingMode};
use foundationdb::{Database, FdbError, RangeOption, Transaction as FdbTransaction};
use futures_executor::block_on;

use super::{
    Backend, Commit, Error, KeyRange, Mutation, Result, ScanIter, Snapshot, Version, Watch,
};

/// FoundationDB error codes the contract maps.
const NOT_COMMITTED: i32 = 1020;
const TRANSACTION_TOO_OLD: i32 = 1007;

fn fdb_error(err: FdbError) -> Error {
    match err.code() {
        NOT_COMMITTED => Error::Conflict,
        TRANSACTION_TOO_OLD => Error::TransactionTooOld,
        code => Error::Backend(format!("FoundationDB error {code}: {}", err.message())),
    }
}

/// A FoundationDB database.
pub(super) struct FdbBackend {
    db: Database,
}

impl FdbBackend {
    pub(super) fn open(cluster_file: Option<&Path>) -> Result<Self> {
        if !tern_fdb_network::Network::is_running() {
            return Err(Error::Backend(
                "the FoundationDB network is not running (start tern_fdb_network::Network first)"
                    .into(),
            ));
        }
        let path = cluster_file
            .map(|p| {
                p.to_str().ok_or_else(|| {
                    Error::Backend(format!("cluster file path is not UTF-8: {}", p.display()))
                })
            })
            .transpose()?;
        let db = Database::new(path).map_err(fdb_error)?;
        Ok(Self { db })
    }
}

impl Backend for FdbBackend {
    fn snapshot(&self) -> Result<Box<dyn Snapshot + '_>> {
        let trx = self.db.create_trx().map_err(fdb_error)?;
        let version = block_on(trx.get_read_version()).map_err(fdb_error)?;
        Ok(Box::new(FdbSnapshot {
            trx,
            version: version as Version,
        }))
    }

    fn commit(&self, commit: Commit) -> Result<Version> {
        let trx = self.db.create_trx().map_err(fdb_error)?;
        trx.set_read_version(commit.read_version as i64);
        for range in &commit.read_conflicts {
            trx.add_conflict_range(&range.begin, &range.end, ConflictRangeType::Read)
                .map_err(fdb_error)?;
        }
        for range in &commit.write_conflicts {
            trx.add_conflict_range(&range.begin, &range.end, ConflictRangeType::Write)
                .map_err(fdb_error)?;
        }
        for mutation in &commit.mutations {
            match mutation {
                Mutation::Set { key, value } => trx.set(key, value),
                Mutation::Clear { key } => trx.clear(key),
                Mutation::ClearRange(range) => trx.clear_range(&range.begin, &range.end),
                // FoundationDB's ADD: little-endian, absent counts as zero,
                // wraps around — the contract's `Add`.
                Mutation::Add { key, delta } => {
                    trx.atomic_op(key, &delta.to_le_bytes(), MutationType::Add)
                }
            }
        }
        match block_on(trx.commit()) {
            Ok(committed) => {
                let version = committed.committed_version().map_err(fdb_error)?;
                Ok(version as Version)
            }
            Err(err) => Err(fdb_error(FdbError::from(err))),
        }
    }

    /// Every read is a round trip to the cluster.
    fn local_reads(&self) -> bool {
        false
    }

    fn watch(&self, key: &[u8]) -> Watch {
        let key = key.to_vec();
        let trx = self.db.create_trx();
        Box::pin(async move {
            let trx = trx.map_err(fdb_error)?;
            let fired = trx.watch(&key);
            // A watch starts once its transaction commits.
            trx.commit()
                .await
                .map_err(|err| fdb_error(FdbError::from(err)))?;
            fired.await.map_err(fdb_error)
        })
    }
}

/// Reads at one read version, without conflict ranges (the contract's
/// transaction layer records its own and hands them to [`Backend::commit`]).
struct FdbSnapshot {
    trx: FdbTransaction,
    version: Version,
}

impl Snapshot for FdbSnapshot {
    fn version(&self) -> Version {
        self.version
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let value = block_on(self.trx.get(key, true)).map_err(fdb_error)?;
        Ok(value.map(|v| v.to_vec()))
    }

    fn scan<'a>(&'a self, range: &KeyRange, reverse: bool) -> Result<ScanIter<'a>> {
        let mut option = RangeOption::from((range.begin.clone(), range.end.clone()));
        option.reverse = reverse;
        option.mode = StreamingMode::Iterator;
        Ok(Box::new(FdbScan {
            trx: &self.trx,
            next: Some(option),
            iteration: 1,
            buffered: VecDeque::new(),
        }))
    }
}

/// A scan fetched batch by batch (FoundationDB's iterator streaming mode
/// grows the batches), so a caller that stops early reads little.
struct FdbScan<'a> {
    trx: &'a FdbTransaction,
    next: Option<RangeOption<'static>>,
    iteration: usize,
    buffered: VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl Iterator for FdbScan<'_> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(pair) = self.buffered.pop_front() {
                return Some(Ok(pair));
            }
            let option = self.next.take()?;
            let values = match block_on(self.trx.get_range(&option, self.iteration, true)) {
                Ok(values) => values,
                Err(err) => return Some(Err(fdb_error(err))),
            };
            self.iteration += 1;
            self.buffered.extend(
                values
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
            );
            self.next = option.next_range(&values);
        }
    }
}
