//! Tern's full-text search: an inverted index in its own RocksDB, fed by
//! the store's durable index queue.
//!
//! - [`analyze`]: word segmentation, folding (case, diacritics), CJK
//!   n-grams, stemming by detected language. Documents, queries and
//!   snippets all go through it.
//! - [`doc`]: the searchable [`Document`] of an email (addresses, subject,
//!   body text with HTML turned into text, attachment names and text).
//! - [`postings`]: the posting-list value (roaring bitmap of documents plus
//!   word positions) and its merge operator.
//! - [`index`]: [`SearchIndex`], the RocksDB with its column families,
//!   batches and the per-account caught-up position (read your writes).
//! - [`query`]: [`Query`] trees of text conditions under AND/OR/NOT,
//!   evaluated to a `RoaringBitmap` of email ids.
//! - [`snippet`]: SearchSnippet subject and preview with `<mark>`.
//! - [`indexer`]: [`Indexer`], which drains the store's queue into the
//!   index, crash-safe and idempotent.
//! - [`reindex`](mod@reindex): rebuilding from the store, resumable.
//!
//! Every call blocks (RocksDB, fsync); async callers use
//! `spawn_blocking`. The on-disk layout is in `docs/search-format.md`.

pub mod analyze;
pub mod doc;
mod error;
mod fasthash;
pub mod html;
pub mod index;
pub mod indexer;
pub mod postings;
pub mod query;
pub mod reindex;
pub mod snippet;

pub use doc::{Document, Field};
pub use error::{Error, Result};
pub use index::{DateOrder, IndexBatch, IndexOptions, SearchIndex};
pub use indexer::{Indexer, IndexerConfig};
pub use query::{Query, TextField};
pub use reindex::{BatchLimits, Progress, Scope, reindex, reindex_with, schedule_if_created};
/// The set type query results come in.
pub use roaring::RoaringBitmap;
pub use snippet::Snippet;

/// Where `tern serve` keeps the index: `DATA_DIR/search`, beside the
/// store's `DATA_DIR/db`.
pub fn default_path(data_dir: &std::path::Path) -> std::path::PathBuf {
    data_dir.join("search")
}
