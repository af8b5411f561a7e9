//! Errors of the key-value layer.

/// A key-value error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A commit after this transaction's snapshot wrote something it read.
    /// Retryable: run the transaction again.
    #[error("transaction conflict")]
    Conflict,
    /// The transaction lived longer than the backend keeps history for.
    /// Retryable.
    #[error("transaction too old")]
    TransactionTooOld,
    /// A key over [`super::limits::MAX_KEY`].
    #[error("key of {0} bytes exceeds the {max} byte limit", max = super::limits::MAX_KEY)]
    KeyTooLarge(usize),
    /// A value over [`super::limits::MAX_VALUE`].
    #[error("value of {0} bytes exceeds the {max} byte limit", max = super::limits::MAX_VALUE)]
    ValueTooLarge(usize),
    /// A transaction writing more than [`super::limits::MAX_TRANSACTION_BYTES`].
    #[error("transaction writes {0} bytes, over the {max} byte limit", max = super::limits::MAX_TRANSACTION_BYTES)]
    TransactionTooLarge(usize),
    /// A stored value that does not decode.
    #[error("corrupt value at {key}: {reason}")]
    Corrupt {
        /// The key, printable.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The backend failed (I/O, shutdown).
    #[error("storage backend: {0}")]
    Backend(String),
}

impl Error {
    /// Whether running the transaction again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Conflict | Error::TransactionTooOld)
    }

    /// A corrupt-value error for `key`.
    pub fn corrupt(key: &[u8], reason: impl Into<String>) -> Self {
        Error::Corrupt {
            key: super::Printable(key).to_string(),
            reason: reason.into(),
        }
    }
}

/// The key-value layer's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
