//! Rebuilding the index from the store (`tern reindex`).
//!
//! A rebuild of an account clears its index and records a cursor in the
//! index (in the same durable write), then walks the account's emails in
//! id order as a chain of short read transactions, writing each batch of
//! documents together with the new cursor (in the background while the
//! next batch is read and analyzed, in order: [`crate::index::BatchWriter`]).
//! Interrupted, it resumes from the cursor (the indexer resumes
//! unfinished rebuilds when it starts).
//! The queue keeps working meanwhile: an email indexed by both is
//! indexed once ([`crate::postings::merge`] is idempotent), and a
//! destroyed email is in the deleted set whichever wrote first.

use tern_store::email::{self, Listing};
use tern_store::{AccountId, DocumentId, MailStore, blob};

use crate::Result;
use crate::doc::Document;
use crate::index::{IndexBatch, SearchIndex};

/// Emails read per page (one short read transaction each).
const PAGE: usize = 1000;

/// Where a rebuild cuts its batches: a batch is analyzed and written once
/// it holds `documents` emails or `text_bytes` of text, whichever comes
/// first. Larger batches index faster — fewer, longer posting operands
/// per term, so fewer memtable inserts and less compaction (the index
/// bench: 13,700 docs/s at 1,000 documents per batch, 18,600 at 8,000,
/// 21,600 at 16,000) — at the cost of memory: up to three batches are
/// alive at once (one analyzed, one queued, one written); the bench's
/// peak resident set grew by 80 MB from 1,000 to 16,000 documents per
/// batch (BENCHMARKS.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Emails per batch.
    pub documents: usize,
    /// Text per batch (bytes of [`Document::text_bytes`]).
    pub text_bytes: usize,
}

impl BatchLimits {
    /// Whether a batch of `documents` holding `text_bytes` of text is
    /// full (the email that crosses a limit ends its batch).
    pub fn is_full(&self, documents: usize, text_bytes: usize) -> bool {
        documents >= self.documents || text_bytes >= self.text_bytes
    }
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            documents: 16_000,
            text_bytes: 32 << 20,
        }
    }
}

/// What to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every account.
    All,
    /// One account.
    Account(AccountId),
}

/// Progress of a rebuild, reported after every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The account being rebuilt.
    pub account: AccountId,
    /// Accounts finished before this one.
    pub accounts_done: usize,
    /// Accounts to rebuild.
    pub accounts: usize,
    /// Emails of this account indexed so far.
    pub done: u64,
    /// Emails of this account when its rebuild started.
    pub total: u64,
}

/// Rebuilds the index of `scope` from the store, reporting progress to
/// `progress` after each batch. Returns the emails indexed.
pub fn reindex(
    store: &MailStore,
    index: &SearchIndex,
    scope: Scope,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64> {
    reindex_with(store, index, scope, BatchLimits::default(), progress)
}

/// [`reindex`] with batches cut at `limits`.
pub fn reindex_with(
    store: &MailStore,
    index: &SearchIndex,
    scope: Scope,
    limits: BatchLimits,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64> {
    let accounts: Vec<AccountId> = match scope {
        Scope::Account(a) => vec![a],
        Scope::All => store.list_accounts()?.into_iter().map(|a| a.id).collect(),
    };
    let n = accounts.len();
    let mut total = 0;
    for (i, account) in accounts.into_iter().enumerate() {
        total += rebuild_account(store, index, account, limits, &mut |mut p| {
            p.accounts_done = i;
            p.accounts = n;
            progress(p)
        })?;
    }
    Ok(total)
}

/// When `index` was just created ([`SearchIndex::take_created`]) beside a
/// store that already has accounts — the index was deleted or lost, or the
/// store is older than it — marks a rebuild of every account as started;
/// the indexer runs marked rebuilds when it starts
/// ([`crate::Indexer::run_blocking`]). Returns the accounts marked.
pub fn schedule_if_created(store: &MailStore, index: &SearchIndex) -> Result<usize> {
    if !index.take_created() {
        return Ok(0);
    }
    let accounts = store.list_accounts()?;
    for a in &accounts {
        index.clear_account(a.id, true)?;
    }
    if !accounts.is_empty() {
        tracing::info!(
            accounts = accounts.len(),
            "new search index beside existing mail: rebuilding it"
        );
    }
    Ok(accounts.len())
}

/// Counts an account's emails (a chain of short range reads).
fn count_emails(store: &MailStore, account: AccountId) -> Result<u64> {
    let mut count = 0u64;
    let mut after = None;
    loop {
        let page = store
            .kv()
            .read(|tx| email::list_by_date(tx, account, Listing::All, false, after, 10_000))?;
        count += page.len() as u64;
        match page.last() {
            Some(&last) if page.len() == 10_000 => after = Some(last),
            _ => return Ok(count),
        }
    }
}

/// Rebuilds (or resumes rebuilding) one account.
pub(crate) fn rebuild_account(
    store: &MailStore,
    index: &SearchIndex,
    account: AccountId,
    limits: BatchLimits,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64> {
    let limits = BatchLimits {
        documents: limits.documents.max(1),
        text_bytes: limits.text_bytes.max(1),
    };
    let mut cursor: Option<DocumentId> = match index.rebuild_cursor(account)? {
        Some(c) => c,
        None => {
            index.clear_account(account, true)?;
            None
        }
    };
    let total = count_emails(store, account)?;
    let done = match cursor {
        None => 0,
        Some(_) => index.live(account)?.len(),
    };
    let mut report = Progress {
        account,
        accounts_done: 0,
        accounts: 1,
        done,
        total,
    };
    progress(report);
    let mut indexed = 0;
    // Earlier batches are written in order while this one is read and
    // analyzed; each is reported once durable.
    let mut writer = index.batch_writer()?;
    let mut landed = |batches: Vec<u64>, report: &mut Progress| {
        for documents in batches {
            indexed += documents;
            report.done += documents;
            report.total = total.max(report.done);
            progress(*report);
        }
    };
    let mut more = true;
    while more {
        let mut batch = IndexBatch::new(account);
        let mut docs: Vec<(DocumentId, Document)> = Vec::new();
        let mut text = 0;
        // Pages of emails (short read transactions) until the batch is full
        // or the account's emails run out.
        'fill: while !limits.is_full(docs.len(), text) {
            let want = PAGE.min(limits.documents - docs.len());
            let page = store
                .kv()
                .read(|tx| email::list_metas(tx, account, cursor, want))?;
            for (id, meta) in &page {
                let raw = store.kv().read(|tx| blob::read(tx, &meta.blob))?;
                let doc = raw
                    .as_deref()
                    .and_then(Document::from_message)
                    .unwrap_or_default();
                text += doc.text_bytes();
                batch.set_received_at(*id, meta.received_at);
                docs.push((*id, doc));
                cursor = Some(*id);
                if limits.is_full(docs.len(), text) {
                    // The rest of the page is read again for the next batch.
                    break 'fill;
                }
            }
            if page.len() < want {
                more = false;
                break;
            }
        }
        if docs.is_empty() {
            break;
        }
        let refs: Vec<(DocumentId, &Document)> = docs.iter().map(|(i, d)| (*i, d)).collect();
        batch.add_all(&refs);
        batch.set_rebuild_cursor(cursor);
        let documents = batch.documents() as u64;
        landed(writer.submit(batch, documents)?, &mut report);
    }
    landed(writer.finish()?, &mut report);
    let mut finish = IndexBatch::new(account);
    finish.set_rebuild_cursor(None);
    index.write(&finish)?;
    index.notify_progress();
    Ok(indexed)
}
