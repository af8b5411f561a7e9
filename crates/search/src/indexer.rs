//! The indexer: drains the store's search-index queue into the index.
//!
//! The store writes one queue entry per created or destroyed email
//! (family `60`, plus the account marker `38`) in the transaction that
//! creates or destroys it; keyword and mailbox changes queue nothing, so
//! they never re-index text. For each account with work the indexer:
//!
//! 1. reads the Email state and up to `batch_documents` queue entries
//!    from one snapshot;
//! 2. loads each email's document (metadata, then its blob) and analyzes
//!    it into one [`IndexBatch`]; a destroyed email goes to the batch's
//!    deleted set;
//! 3. writes the batch to the index with a synced WAL;
//! 4. only then removes the entries from the queue (each only if it still
//!    holds the same operation), clearing the marker when the queue is
//!    empty.
//!
//! A crash between 3 and 4 re-applies the batch on restart, which changes
//! nothing ([`crate::postings::merge`] keeps one entry per document); a
//! crash before 3 loses nothing since the queue is intact. When one pass
//! covered the whole queue read at state S, the account's index reflects
//! S: [`SearchIndex::wait_caught_up`] waits on that.
//!
//! The removal of an account sets its marker too: once its queue is empty
//! and the account is gone, the indexer clears its index, then the marker.
//! When it starts, the indexer first finishes rebuilds left unfinished
//! (or scheduled by [`crate::schedule_if_created`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tern_store::email::IndexOp;
use tern_store::{AccountId, DataType, DocumentId, MailStore, account, changes, email};
use tokio::sync::watch;

use crate::doc::Document;
use crate::index::{IndexBatch, SearchIndex};
use crate::reindex;
use crate::{Error, Result};

/// Indexer settings.
#[derive(Debug, Clone)]
pub struct IndexerConfig {
    /// Most queue entries applied per batch (one index write, one store
    /// transaction).
    pub batch_documents: usize,
    /// A batch ends early once its documents hold this much text.
    pub batch_text_bytes: usize,
    /// How often the queue is checked when nobody kicks the indexer.
    pub poll_interval: Duration,
    /// The pause after a pass that applied work, unless a query waiting
    /// for the index kicks the indexer first: under a steady flow of mail
    /// the queue is taken in batches of many documents (each batch costs
    /// two synced writes, the index's and the dequeue) instead of a few.
    pub pass_interval: Duration,
    /// Queue-drain steps per account before the next account gets a turn.
    pub steps_per_turn: usize,
    /// How much the indexer's threads lower their CPU priority (a nice
    /// increment, 0 to 19; 0 keeps the server's). Indexing is background
    /// work: under load, SMTP sessions and deliveries get the CPU first
    /// and the queue (durable) is indexed in larger batches when they
    /// leave room. Linux only; elsewhere ignored.
    pub nice: i32,
    /// Test hook: fail right after the index write of a batch, before the
    /// queue entries are removed (what a crash there leaves behind).
    #[doc(hidden)]
    pub fail_before_dequeue: bool,
}

impl Default for IndexerConfig {
    fn default() -> Self {
        Self {
            // Batches of 1,000 index about twice as fast per document as
            // batches of 256 (fewer, larger posting operands per term).
            batch_documents: 1000,
            batch_text_bytes: 16 << 20,
            poll_interval: Duration::from_millis(250),
            // Under a steady flow (3,000 messages/s in the SMTP bench) a
            // pass finds several hundred documents.
            pass_interval: Duration::from_millis(250),
            steps_per_turn: 8,
            nice: 10,
            fail_before_dequeue: false,
        }
    }
}

/// Drains the store's index queue into a [`SearchIndex`].
#[derive(Debug, Clone)]
pub struct Indexer {
    store: MailStore,
    index: SearchIndex,
    config: IndexerConfig,
}

/// What one drain step left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The account's queue is empty.
    Empty,
    /// Entries remain.
    More,
}

impl Indexer {
    /// An indexer with default settings.
    pub fn new(store: MailStore, index: SearchIndex) -> Self {
        Self::with_config(store, index, IndexerConfig::default())
    }

    /// An indexer with `config`.
    pub fn with_config(store: MailStore, index: SearchIndex, config: IndexerConfig) -> Self {
        Self {
            store,
            index,
            config,
        }
    }

    /// The index it writes.
    pub fn index(&self) -> &SearchIndex {
        &self.index
    }

    /// Starts the indexer on its own thread until `shutdown` turns true
    /// (or its sender is dropped).
    pub fn spawn(
        store: MailStore,
        index: SearchIndex,
        shutdown: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<Result<()>> {
        tokio::spawn(Indexer::new(store, index).run(shutdown))
    }

    /// Runs until `shutdown` turns true, then finishes the batch in flight.
    /// The work runs on a thread of its own ("tern-indexer", at the
    /// configured lower priority, which its analysis threads inherit), so
    /// no thread of the runtime's blocking pool keeps a changed priority.
    /// This is what `tern serve` runs.
    ///
    /// Returns once that thread has ended, so its store and index handles
    /// are gone: a caller dropping its own handles next closes the
    /// databases then, not while the process exits.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let index = self.index.clone();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tern-indexer".into())
            .spawn(move || {
                lower_priority(self.config.nice);
                self.run_blocking(&|| flag.load(Ordering::Relaxed))
            })
            .map_err(|e| Error::Index(format!("cannot start the indexer thread: {e}")))?;
        // A blocking-pool thread waits for the join; it keeps the
        // server's priority.
        let mut ended = tokio::task::spawn_blocking(move || thread.join());
        let outcome = |r: std::result::Result<std::thread::Result<Result<()>>, _>| match r {
            Ok(Ok(result)) => result,
            _ => Err(Error::Index("the indexer thread failed".into())),
        };
        tokio::select! {
            r = &mut ended => return outcome(r),
            _ = shutdown.wait_for(|&s| s) => {}
        }
        stop.store(true, Ordering::Relaxed);
        index.kick();
        outcome(ended.await)
    }

    /// The indexer loop on the calling thread, until `stop()`: finishes
    /// unfinished rebuilds, then drains queues, sleeping between passes
    /// until kicked or the poll interval passes. Errors are logged and
    /// retried with backoff (the queue keeps the work).
    pub fn run_blocking(&self, stop: &dyn Fn() -> bool) -> Result<()> {
        let mut backoff = Duration::from_millis(100);
        let mut resumed = false;
        while !stop() {
            let pass = if resumed {
                self.drain_pass(stop)
            } else {
                self.resume_rebuilds().map(|_| {
                    resumed = true;
                    1
                })
            };
            match pass {
                Ok(0) => {
                    backoff = Duration::from_millis(100);
                    self.index.wait_kick(self.config.poll_interval);
                }
                Ok(_) => {
                    backoff = Duration::from_millis(100);
                    if !self.config.pass_interval.is_zero() && !stop() {
                        self.index.wait_kick(self.config.pass_interval);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "search indexer failed; retrying");
                    self.index.wait_kick(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        Ok(())
    }

    fn resume_rebuilds(&self) -> Result<()> {
        for account in self.index.unfinished_rebuilds()? {
            tracing::info!(account = account.0, "resuming a search index rebuild");
            reindex::rebuild_account(
                &self.store,
                &self.index,
                account,
                reindex::BatchLimits::default(),
                &mut |_| {},
            )?;
        }
        Ok(())
    }

    /// One pass over every account with queued work, a few steps each.
    /// Returns the queue entries applied.
    fn drain_pass(&self, stop: &dyn Fn() -> bool) -> Result<usize> {
        let mut applied = 0;
        let mut after = None;
        loop {
            let accounts = self
                .store
                .kv()
                .read(|tx| email::accounts_with_index_work(tx, after, 128))?;
            let Some(&last) = accounts.last() else {
                break;
            };
            for account in accounts {
                for _ in 0..self.config.steps_per_turn.max(1) {
                    if stop() {
                        return Ok(applied.max(1));
                    }
                    let (n, step) = self.step(account)?;
                    applied += n;
                    if step == Step::Empty {
                        break;
                    }
                }
            }
            after = Some(last);
        }
        Ok(applied)
    }

    /// Applies every queued entry of every account (until the queues are
    /// empty). Returns the entries applied.
    pub fn drain(&self) -> Result<usize> {
        let mut total = 0;
        loop {
            let n = self.drain_pass(&|| false)?;
            total += n;
            let more = self
                .store
                .kv()
                .read(|tx| email::accounts_with_index_work(tx, None, 1))?;
            if more.is_empty() {
                return Ok(total);
            }
        }
    }

    /// Applies `account`'s queue until it is empty. Returns the entries
    /// applied.
    pub fn drain_account(&self, account: AccountId) -> Result<usize> {
        let mut total = 0;
        loop {
            let (n, step) = self.step(account)?;
            total += n;
            if step == Step::Empty {
                return Ok(total);
            }
        }
    }

    /// One batch of `account`'s queue.
    fn step(&self, account: AccountId) -> Result<(usize, Step)> {
        let kv = self.store.kv();
        let limit = self.config.batch_documents.max(1);
        let (state, entries, exists) = kv.read(|tx| -> Result<_> {
            Ok((
                changes::state(tx, account, DataType::Email)?,
                email::index_queue(tx, account, None, limit + 1)?,
                account::get_account(tx, account)?.is_some(),
            ))
        })?;
        if entries.is_empty() {
            if !exists {
                // A removed account (its removal sets the marker): its
                // index goes too, before the marker, so that a crash in
                // between leaves the marker for the next run.
                self.index.clear_account(account, false)?;
            }
            let empty = kv.transact(|tx| email::dequeue_index(tx, account, &[]))?;
            if exists && empty {
                self.index.set_caught_up(account, state);
            }
            return Ok((0, Step::Empty));
        }
        let mut batch = IndexBatch::new(account);
        let mut taken: Vec<(DocumentId, IndexOp)> = Vec::with_capacity(limit);
        let mut docs: Vec<(DocumentId, Arc<Document>)> = Vec::new();
        let mut text = 0;
        for &(id, op) in entries.iter().take(limit) {
            match op {
                IndexOp::Remove => batch.remove(id),
                IndexOp::Index => match kv
                    .read(|tx| Document::load_dated_from(tx, account, id, Some(&self.store)))?
                {
                    Some((doc, received_at)) => {
                        batch.set_received_at(id, received_at);
                        text += doc.text_bytes();
                        docs.push((id, doc));
                    }
                    // Destroyed since: its Remove entry is queued too.
                    None => batch.remove(id),
                },
            }
            taken.push((id, op));
            if text >= self.config.batch_text_bytes {
                break;
            }
        }
        let refs: Vec<(DocumentId, &Document)> = docs.iter().map(|(i, d)| (*i, &**d)).collect();
        batch.add_all(&refs);
        let complete = taken.len() == entries.len();
        self.index.write(&batch)?;
        if self.config.fail_before_dequeue {
            return Err(Error::Index(
                "interrupted before dequeue (test hook)".into(),
            ));
        }
        let empty = kv.transact(|tx| email::dequeue_index(tx, account, &taken))?;
        if complete {
            self.index.set_caught_up(account, state);
        } else {
            self.index.notify_progress();
        }
        let step = if empty { Step::Empty } else { Step::More };
        Ok((taken.len(), step))
    }
}

/// Lowers the calling thread's CPU priority by `nice` (threads it starts
/// inherit it). Failure only costs priority, so it is logged, not fatal.
fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // Linux's setpriority(PRIO_PROCESS, tid) applies to one thread.
        let tid = rustix::thread::gettid();
        let current = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
        let wanted = (current + nice).min(19);
        if let Err(err) = rustix::process::setpriority_process(Some(tid), wanted) {
            tracing::warn!(error = %err, "cannot lower the search indexer's priority");
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::lower_priority;

    #[test]
    fn lowering_the_priority_affects_only_the_calling_thread() {
        let own = || rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap();
        let before = own();
        let (lowered, inherited) = std::thread::spawn(move || {
            lower_priority(5);
            let lowered = own();
            let inherited = std::thread::spawn(own).join().unwrap();
            (lowered, inherited)
        })
        .join()
        .unwrap();
        assert_eq!(lowered, (before + 5).min(19));
        assert_eq!(inherited, lowered, "threads it starts inherit it");
        assert_eq!(own(), before, "the caller's other threads keep theirs");
        std::thread::spawn(|| lower_priority(0)).join().unwrap();
        assert_eq!(own(), before);
    }
}
