//! Errors of the search crate.

/// An error from the search index or the store it reads.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The mail store failed.
    #[error(transparent)]
    Store(#[from] tern_store::Error),
    /// The index's RocksDB failed.
    #[error("search index: {0}")]
    Index(String),
    /// A stored value could not be decoded.
    #[error("search index corrupt: {0}")]
    Corrupt(String),
    /// The index was written by another format version: rebuild it with
    /// `tern reindex`.
    #[error(
        "search index format version {found} is not supported (this build reads version \
         {expected}); rebuild it with `tern reindex`"
    )]
    FormatVersion {
        /// Version on disk.
        found: u32,
        /// Version this build knows.
        expected: u32,
    },
    /// A query is malformed (e.g. a header condition without a name).
    #[error("invalid query: {0}")]
    InvalidQuery(String),
}

impl From<tern_store::kv::Error> for Error {
    fn from(e: tern_store::kv::Error) -> Self {
        Error::Store(e.into())
    }
}

impl From<rocksdb::Error> for Error {
    fn from(e: rocksdb::Error) -> Self {
        Error::Index(e.into_string())
    }
}

impl tern_store::kv::TxError for Error {
    fn as_kv(&self) -> Option<&tern_store::kv::Error> {
        match self {
            Error::Store(tern_store::Error::Kv(e)) => Some(e),
            _ => None,
        }
    }
}

/// The search crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
