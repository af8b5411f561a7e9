//! Identifiers and small value types shared by the mail model.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An account's numeric id (the partition key of all its data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AccountId(pub u32);

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A document id inside one account and collection (mailbox, email,
/// thread, ...). JMAP ids are short strings derived from these.
pub type DocumentId = u32;

/// The SHA-256 of a blob's bytes: its content address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BlobHash(pub [u8; 32]);

impl BlobHash {
    /// The hash of `data`.
    pub fn of(data: &[u8]) -> Self {
        use sha2::Digest;
        BlobHash(sha2::Sha256::digest(data).into())
    }

    /// Lowercase hex.
    pub fn to_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(64);
        for b in self.0 {
            out.push(DIGITS[usize::from(b >> 4)] as char);
            out.push(DIGITS[usize::from(b & 15)] as char);
        }
        out
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        if s.len() != 64 || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(BlobHash(out))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({})", &self.to_hex()[..16])
    }
}

/// The kinds of data that have JMAP states and change logs. The byte values
/// are part of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum DataType {
    /// Mailboxes.
    Mailbox = 1,
    /// Emails.
    Email = 2,
    /// Threads.
    Thread = 3,
    /// Identities.
    Identity = 4,
    /// Email submissions.
    EmailSubmission = 5,
    /// The vacation response.
    VacationResponse = 6,
    /// Push subscriptions.
    PushSubscription = 7,
    /// Quotas.
    Quota = 8,
    /// Email deliveries (a state that changes only when mail arrives; RFC
    /// 8621 section 1.5).
    EmailDelivery = 9,
}

impl DataType {
    /// Every data type.
    pub const ALL: [DataType; 9] = [
        DataType::Mailbox,
        DataType::Email,
        DataType::Thread,
        DataType::Identity,
        DataType::EmailSubmission,
        DataType::VacationResponse,
        DataType::PushSubscription,
        DataType::Quota,
        DataType::EmailDelivery,
    ];

    /// The type with this on-disk byte.
    pub fn from_u8(b: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == b)
    }
}

/// Collections with their own document id sequence. The byte values are part
/// of the on-disk format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Collection {
    /// Mailboxes.
    Mailbox = 1,
    /// Emails.
    Email = 2,
    /// Threads.
    Thread = 3,
    /// Identities.
    Identity = 4,
    /// Email submissions.
    EmailSubmission = 5,
    /// Push subscriptions.
    PushSubscription = 7,
}

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
