//! Errors of the mail model.

use crate::kv;

/// An error from the mail store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The key-value layer failed.
    #[error(transparent)]
    Kv(#[from] kv::Error),
    /// The thing named does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The address's domain is not a local domain.
    #[error("not a local domain: {0}")]
    UnknownDomain(String),
    /// An argument is malformed (address, name, ...).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The input is not a message (empty, or no header and no body).
    #[error("not a message: {0}")]
    NotAMessage(String),
    /// The account's quota would be exceeded.
    #[error("over quota: {used} of {limit} bytes used")]
    OverQuota {
        /// Bytes in use.
        used: u64,
        /// The quota.
        limit: u64,
    },
    /// The database was written by another format version.
    #[error("data format version {found} is not supported (this build reads version {expected})")]
    FormatVersion {
        /// Version on disk.
        found: u32,
        /// Version this build knows.
        expected: u32,
    },
    /// The requested change log range was truncated.
    #[error("cannot calculate changes from that state")]
    CannotCalculateChanges,
    /// Password hashing failed.
    #[error("password hash: {0}")]
    Password(String),
}

impl kv::TxError for Error {
    fn as_kv(&self) -> Option<&kv::Error> {
        match self {
            Error::Kv(e) => Some(e),
            _ => None,
        }
    }
}

/// The mail store's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Encodes a record: one version byte, then postcard.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![1u8];
    postcard::to_io(value, &mut out).expect("serializing to a Vec cannot fail");
    out
}

/// Decodes a record written by [`encode`].
pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T> {
    match bytes.split_first() {
        Some((1, rest)) => postcard::from_bytes(rest)
            .map_err(|e| kv::Error::corrupt(key, format!("record: {e}")).into()),
        _ => Err(kv::Error::corrupt(key, "unknown record version").into()),
    }
}
