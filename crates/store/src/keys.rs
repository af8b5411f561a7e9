//! The key schema: every key family the mail model writes, byte by byte.
//! `docs/store-format.md` describes the same layout; change both together
//! and bump [`FORMAT_VERSION`] when an existing family changes meaning.
//!
//! The outbound queue (global `0x40`-`0x44`, account `0x70`), DKIM keys
//! (global `0x14`) and vacation reply records (account `0x71`) are laid
//! out next to their code, in `queue.rs`, `dkim.rs` and `vacation.rs`.
//!
//! Integers in keys are big-endian so that byte order is numeric order.
//! Everything of one account lives under `0x20 ++ account_id (u32 BE)`, so
//! one account's data is one contiguous range (one shard on FoundationDB).

use crate::kv::KeyRange;
use crate::types::{AccountId, BlobHash, DocumentId};

/// The on-disk format version, stored at [`FORMAT`] and checked at open.
pub const FORMAT_VERSION: u32 = 1;

/// `0x01`: the format version (u32 BE).
pub const FORMAT: &[u8] = &[0x01];
/// `0x02`: the next account id (counter).
pub const NEXT_ACCOUNT_ID: &[u8] = &[0x02];
/// `0x03`: push subscriptions' change counter, added to by every write of
/// a push subscription; push senders watch it (on every node).
pub const PUSH_EPOCH: &[u8] = &[0x03];
/// `0x04`: the credentials epoch (counter), added to by every password
/// change and account removal; caches of verified passwords (on every
/// node) watch it.
pub const CREDENTIALS_EPOCH: &[u8] = &[0x04];

const LOGIN: u8 = 0x10;
const ADDRESS: u8 = 0x11;
const DOMAIN: u8 = 0x12;
const TOKEN: u8 = 0x13;
const ACCOUNT: u8 = 0x20;
const BLOB: u8 = 0x30;
const BLOB_CHUNK: u8 = 0x31;
const BLOB_LINK: u8 = 0x32;
const INDEX_DIRTY: u8 = 0x38;
const PUSH_ACCOUNT: u8 = 0x39;
// 0x48 (global spam model), 0x49 (spam training flags) and the account
// families 0x78-0x7A (spam model, training queue, trained-as) are built in
// `crate::spam`.

/// Families inside an account's range (the byte after the account id).
pub mod family {
    /// The account record.
    pub const RECORD: u8 = 0x00;
    /// The account's change counter (u64 LE): read and bumped by every write.
    pub const CHANGE_COUNTER: u8 = 0x01;
    /// Next document id per collection: `++ collection`.
    pub const NEXT_ID: u8 = 0x02;
    /// Per-type state: `++ type` -> last change id touching the type (u64 BE).
    pub const TYPE_STATE: u8 = 0x03;
    /// Oldest change id still in the log per type: `++ type` (u64 BE).
    pub const TYPE_FLOOR: u8 = 0x04;
    /// Used bytes (counter).
    pub const USED_BYTES: u8 = 0x05;
    /// Mailbox records: `++ mailbox id`.
    pub const MAILBOX: u8 = 0x10;
    /// Email metadata (list properties): `++ email id`.
    pub const EMAIL: u8 = 0x11;
    /// Email detail (all headers, body structure), chunked: `++ email id`.
    pub const EMAIL_DETAIL: u8 = 0x12;
    /// Thread records: `++ thread id`.
    pub const THREAD: u8 = 0x13;
    /// Generic JMAP objects (identities, submissions, ...):
    /// `++ collection ++ id`.
    pub const OBJECT: u8 = 0x14;
    /// The SMTP envelope an email was received with: `++ email id` ->
    /// record `Envelope` (`crate::envelope`).
    pub const ENVELOPE: u8 = 0x15;
    /// Emails of a mailbox by date: `++ mailbox ++ received ++ email`.
    pub const MAILBOX_DATE: u8 = 0x20;
    /// Unseen emails of a mailbox by date: `++ mailbox ++ received ++ email`.
    pub const MAILBOX_UNSEEN_DATE: u8 = 0x21;
    /// All emails by date: `++ received ++ email`.
    pub const ALL_DATE: u8 = 0x22;
    /// Emails of a thread by date: `++ thread ++ received ++ email`.
    pub const THREAD_DATE: u8 = 0x23;
    /// Emails with a keyword: `++ keyword ++ 0x00 ++ email`.
    pub const KEYWORD: u8 = 0x24;
    /// Message-ID to thread: `++ sha256(message-id)[..16]` -> thread id.
    pub const MESSAGE_ID: u8 = 0x25;
    /// Mailbox counters: `++ mailbox ++ kind` (counter).
    pub const MAILBOX_COUNT: u8 = 0x30;
    /// Emails of a thread in a mailbox: `++ mailbox ++ thread` ->
    /// (total u32 BE, unread u32 BE).
    pub const MAILBOX_THREAD: u8 = 0x31;
    /// Change log: `++ type ++ change id (u64 BE)` -> change record.
    pub const CHANGE: u8 = 0x40;
    /// Blob references held by the account: `++ hash` -> count (u32 BE).
    pub const BLOB_REF: u8 = 0x50;
    /// Uploads held for the account: `++ hash` -> expiry (u64 BE, unix s)
    /// ++ size (u64 BE; absent in entries written before `0x54`).
    pub const BLOB_UPLOAD: u8 = 0x51;
    /// The same uploads by expiry: `++ expiry (u64 BE) ++ hash` -> size
    /// (u64 BE).
    pub const BLOB_UPLOAD_EXPIRY: u8 = 0x52;
    /// Bytes of the uploads listed in `0x52` (counter).
    pub const BLOB_UPLOAD_BYTES: u8 = 0x53;
    /// Present once the account's `0x52` and `0x53` cover every `0x51`
    /// entry (written by the first upload after an upgrade).
    pub const BLOB_UPLOAD_INDEXED: u8 = 0x54;
    /// Search index queue: `++ email id` -> operation byte.
    pub const INDEX_QUEUE: u8 = 0x60;
    /// The search index queue's low-water mark: the `0x60` key its scans
    /// start from (`crate::kv::QueueFamily`).
    pub const INDEX_QUEUE_MARK: u8 = 0x61;
}

/// Mailbox counter kinds ([`family::MAILBOX_COUNT`]).
pub mod count {
    /// Emails in the mailbox.
    pub const TOTAL_EMAILS: u8 = 0;
    /// Emails in the mailbox without `$seen`.
    pub const UNREAD_EMAILS: u8 = 1;
    /// Threads with at least one email in the mailbox.
    pub const TOTAL_THREADS: u8 = 2;
    /// Threads with an unread email in the mailbox.
    pub const UNREAD_THREADS: u8 = 3;
}

/// A key builder.
#[derive(Debug, Default, Clone)]
pub struct Key(Vec<u8>);

impl Key {
    fn with(byte: u8) -> Self {
        let mut v = Vec::with_capacity(32);
        v.push(byte);
        Key(v)
    }

    /// Appends raw bytes.
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    /// Appends one byte.
    pub fn u8(mut self, b: u8) -> Self {
        self.0.push(b);
        self
    }

    /// Appends a u32, big-endian.
    pub fn u32(mut self, n: u32) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// Appends a u64, big-endian.
    pub fn u64(mut self, n: u64) -> Self {
        self.0.extend_from_slice(&n.to_be_bytes());
        self
    }

    /// Appends a timestamp so that byte order is time order: the i64 with
    /// its sign bit flipped, big-endian.
    pub fn time(self, unix: i64) -> Self {
        self.u64((unix as u64) ^ (1 << 63))
    }

    /// The finished key.
    pub fn build(self) -> Vec<u8> {
        self.0
    }

    /// Every key starting with this one.
    pub fn prefix_range(self) -> KeyRange {
        KeyRange::prefix(&self.0)
    }
}

/// Decodes a timestamp written by [`Key::time`].
pub fn decode_time(b: &[u8]) -> i64 {
    (u64::from_be_bytes(b.try_into().expect("8 bytes")) ^ (1 << 63)) as i64
}

/// Reads a big-endian u32 at `at`.
pub fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

/// `0x10 ++ login (lowercase address)` -> account id (u32 BE).
pub fn login(address: &str) -> Vec<u8> {
    Key::with(LOGIN).bytes(address.as_bytes()).build()
}

/// `0x11 ++ address (lowercase)` -> account id (u32 BE): every address
/// that delivers to an account.
pub fn address(address: &str) -> Vec<u8> {
    Key::with(ADDRESS).bytes(address.as_bytes()).build()
}

/// `0x12 ++ domain (lowercase)` -> domain record.
pub fn domain(domain: &str) -> Vec<u8> {
    Key::with(DOMAIN).bytes(domain.as_bytes()).build()
}

/// All domains.
pub fn domains() -> KeyRange {
    KeyRange::prefix(&[DOMAIN])
}

/// All logins.
pub fn logins() -> KeyRange {
    KeyRange::prefix(&[LOGIN])
}

/// `0x13 ++ sha256(token)` -> token record.
pub fn token(hash: &[u8; 32]) -> Vec<u8> {
    Key::with(TOKEN).bytes(hash).build()
}

/// All tokens.
pub fn tokens() -> KeyRange {
    KeyRange::prefix(&[TOKEN])
}

/// Tokens whose SHA-256 starts with `hash_prefix` (a token's public id is
/// such a prefix).
pub fn tokens_with_prefix(hash_prefix: &[u8]) -> KeyRange {
    KeyRange::prefix(&Key::with(TOKEN).bytes(hash_prefix).build())
}

/// `0x20 ++ account id`: the start of every key of the account.
pub fn account(id: AccountId) -> Key {
    Key::with(ACCOUNT).u32(id.0)
}

/// Every key of the account.
pub fn account_range(id: AccountId) -> KeyRange {
    account(id).prefix_range()
}

/// `account ++ family`.
pub fn acct(id: AccountId, family: u8) -> Key {
    account(id).u8(family)
}

/// `account ++ family ++ document id`.
pub fn doc(id: AccountId, family: u8, doc: DocumentId) -> Vec<u8> {
    acct(id, family).u32(doc).build()
}

/// `0x30 ++ hash` -> blob header.
pub fn blob(hash: &BlobHash) -> Vec<u8> {
    Key::with(BLOB).bytes(&hash.0).build()
}

/// All blob headers.
pub fn blobs() -> KeyRange {
    KeyRange::prefix(&[BLOB])
}

/// `0x31 ++ hash ++ index (u32 BE)` -> up to 100 000 bytes of the blob.
pub fn blob_chunk(hash: &BlobHash, index: u32) -> Vec<u8> {
    Key::with(BLOB_CHUNK).bytes(&hash.0).u32(index).build()
}

/// Every chunk of a blob.
pub fn blob_chunks(hash: &BlobHash) -> KeyRange {
    Key::with(BLOB_CHUNK).bytes(&hash.0).prefix_range()
}

/// `0x32 ++ hash ++ account id` -> empty: the account holds a reference.
pub fn blob_link(hash: &BlobHash, account: AccountId) -> Vec<u8> {
    Key::with(BLOB_LINK).bytes(&hash.0).u32(account.0).build()
}

/// Every account link of a blob.
pub fn blob_links(hash: &BlobHash) -> KeyRange {
    Key::with(BLOB_LINK).bytes(&hash.0).prefix_range()
}

/// `0x38 ++ account id` -> empty: the account has index work queued.
pub fn index_dirty(account: AccountId) -> Vec<u8> {
    Key::with(INDEX_DIRTY).u32(account.0).build()
}

/// All accounts with index work queued.
pub fn index_dirty_all() -> KeyRange {
    KeyRange::prefix(&[INDEX_DIRTY])
}

/// `0x39 ++ account id` -> empty: the account has push subscriptions.
pub fn push_account(account: AccountId) -> Vec<u8> {
    Key::with(PUSH_ACCOUNT).u32(account.0).build()
}

/// All accounts with push subscriptions.
pub fn push_accounts() -> KeyRange {
    KeyRange::prefix(&[PUSH_ACCOUNT])
}
