//! Binary data (RFC 8620 section 6): uploads held for an account until they
//! expire, downloads of whole blobs and of message parts, and Blob/copy.
//!
//! An upload stores the blob, then takes one reference for the account and
//! records its expiry and size under families `0x51` (by hash) and `0x52`
//! (by expiry), with the total in the counter `0x53` (docs/store-format.md),
//! so the collector keeps it while the upload is live. The next upload of the
//! account releases expired uploads, and the oldest ones when the
//! account's unreferenced uploads would exceed its upload quota
//! (section 6: "delete unreferenced blobs in date order, oldest first").

use serde_json::{Map, Value, json};
use tern_store::keys::{self, family};
use tern_store::kv::RangeOptions;
use tern_store::{AccountId, BlobHash, MailStore, blob, now};

use crate::args;
use crate::id;
use crate::method::{Arguments, Ctx, MethodError, MethodResult, SetError};

/// Why an upload failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum UploadError {
    /// The blob alone is larger than the account's upload quota.
    OverQuota,
    /// The store failed.
    Store(tern_store::Error),
}

impl From<tern_store::Error> for UploadError {
    fn from(e: tern_store::Error) -> Self {
        UploadError::Store(e)
    }
}

fn upload_key(account: AccountId, hash: &BlobHash) -> Vec<u8> {
    keys::acct(account, family::BLOB_UPLOAD)
        .bytes(&hash.0)
        .build()
}

fn expiry_key(account: AccountId, expiry: u64, hash: &BlobHash) -> Vec<u8> {
    keys::acct(account, family::BLOB_UPLOAD_EXPIRY)
        .u64(expiry)
        .bytes(&hash.0)
        .build()
}

fn be_u64(v: &[u8], at: usize) -> Option<u64> {
    v.get(at..at + 8)?.try_into().ok().map(u64::from_be_bytes)
}

/// Most expired uploads one upload releases (the rest go with the next).
const RELEASE_PER_UPLOAD: usize = 1_000;

/// Stores an upload for `account`, live for `ttl_secs`; returns its hash.
/// Blocks.
///
/// The account's uploads are listed by hash (`0x51`) and by expiry
/// (`0x52`), with their total size in a counter (`0x53`): an upload reads
/// only the expired entries it releases and the oldest ones it evicts, never
/// every upload the account holds.
pub fn upload(
    store: &MailStore,
    account: AccountId,
    data: &[u8],
    ttl_secs: u64,
    quota: u64,
) -> Result<BlobHash, UploadError> {
    if data.len() as u64 > quota {
        return Err(UploadError::OverQuota);
    }
    let hash = blob::put(store.kv(), data)?;
    let size = data.len() as u64;
    store.kv().transact(|tx| {
        let now = now().max(0) as u64;
        index_uploads(tx, account)?;
        let bytes_key = keys::acct(account, family::BLOB_UPLOAD_BYTES).build();
        // Release expired uploads, oldest first.
        let by_expiry = keys::acct(account, family::BLOB_UPLOAD_EXPIRY).prefix_range();
        let expired = tern_store::kv::KeyRange::new(
            by_expiry.begin.clone(),
            keys::acct(account, family::BLOB_UPLOAD_EXPIRY)
                .u64(now + 1)
                .build(),
        );
        for (k, v) in tx.range(&expired, RangeOptions::limit(RELEASE_PER_UPLOAD))? {
            release(tx, account, &k, &v, &bytes_key)?;
        }
        // This blob's earlier upload, if any, is replaced (a new expiry).
        let key = upload_key(account, &hash);
        match tx.get(&key)? {
            Some(v) => {
                if let Some(expiry) = be_u64(&v, 0) {
                    let old = expiry_key(account, expiry, &hash);
                    if let Some(s) = tx.get(&old)? {
                        tx.clear(&old)?;
                        tx.add(&bytes_key, -(be_u64(&s, 0).unwrap_or(0) as i64))?;
                    }
                }
            }
            None => blob::add_ref(tx, account, &hash, 1)?,
        }
        // Evict the oldest while the uploads would not fit.
        let mut total = tx.get_counter(&bytes_key)?.max(0) as u64;
        while total + size > quota {
            let Some((k, v)) = tx.range(&by_expiry, RangeOptions::limit(1))?.pop() else {
                break;
            };
            total = total.saturating_sub(be_u64(&v, 0).unwrap_or(0));
            release(tx, account, &k, &v, &bytes_key)?;
        }
        let expiry = now + ttl_secs;
        let mut value = expiry.to_be_bytes().to_vec();
        value.extend_from_slice(&size.to_be_bytes());
        tx.set(&key, &value)?;
        tx.set(&expiry_key(account, expiry, &hash), &size.to_be_bytes())?;
        tx.add(&bytes_key, size as i64)?;
        Ok::<_, tern_store::Error>(())
    })?;
    Ok(hash)
}

/// Drops the upload whose `0x52` entry is `(k, v)`: its reference, both of
/// its entries, its bytes from the counter.
fn release(
    tx: &mut tern_store::kv::Transaction<'_>,
    account: AccountId,
    k: &[u8],
    v: &[u8],
    bytes_key: &[u8],
) -> tern_store::Result<()> {
    let Ok(h) = <[u8; 32]>::try_from(&k[k.len().saturating_sub(32)..]) else {
        tx.clear(k)?;
        return Ok(());
    };
    let h = BlobHash(h);
    blob::add_ref(tx, account, &h, -1)?;
    tx.clear(&upload_key(account, &h))?;
    tx.clear(k)?;
    tx.add(bytes_key, -(be_u64(v, 0).unwrap_or(0) as i64))?;
    Ok(())
}

/// Builds the account's `0x52` entries and `0x53` counter from its `0x51`
/// entries once (an account whose uploads were recorded before those
/// families existed), and marks it done with `0x54`.
fn index_uploads(
    tx: &mut tern_store::kv::Transaction<'_>,
    account: AccountId,
) -> tern_store::Result<()> {
    let done = keys::acct(account, family::BLOB_UPLOAD_INDEXED).build();
    if tx.get(&done)?.is_some() {
        return Ok(());
    }
    let bytes_key = keys::acct(account, family::BLOB_UPLOAD_BYTES).build();
    let range = keys::acct(account, family::BLOB_UPLOAD).prefix_range();
    for (k, v) in tx.range(&range, RangeOptions::default())? {
        let Ok(h) = <[u8; 32]>::try_from(&k[k.len().saturating_sub(32)..]) else {
            continue;
        };
        let h = BlobHash(h);
        let expiry = be_u64(&v, 0).unwrap_or(0);
        let size = match be_u64(&v, 8) {
            Some(s) => s,
            None => blob::header(tx, &h)?.map_or(0, |hd| hd.size),
        };
        tx.set(&expiry_key(account, expiry, &h), &size.to_be_bytes())?;
        tx.add(&bytes_key, size as i64)?;
    }
    tx.set(&done, &[])?;
    Ok(())
}

/// What a blobId names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobRef {
    /// A whole stored blob.
    Whole(BlobHash),
    /// Part `n` of the message stored as a blob.
    Part(BlobHash, u32),
}

impl BlobRef {
    /// Parses a blobId.
    pub fn parse(s: &str) -> Option<Self> {
        if let Some(h) = id::parse_blob_id(s) {
            return Some(BlobRef::Whole(h));
        }
        id::parse_part_blob_id(s).map(|(h, n)| BlobRef::Part(h, n))
    }

    fn hash(&self) -> &BlobHash {
        match self {
            BlobRef::Whole(h) | BlobRef::Part(h, _) => h,
        }
    }
}

/// Whether the account may read the blob: it holds a reference to it (or
/// to the message it is a part of).
pub fn accessible(store: &MailStore, account: AccountId, r: &BlobRef) -> tern_store::Result<bool> {
    store
        .kv()
        .read(|tx| Ok(blob::refs(tx, account, r.hash())? > 0))
}

/// A blob's bytes (or a range of them) as the download endpoint serves
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    /// Size of the whole blob.
    pub total: u64,
    /// Offset of `bytes` in the blob.
    pub start: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
    /// For parts: the part's media type.
    pub content_type: Option<String>,
}

/// A byte range request (RFC 9110 section 14.1.2), one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `first-` or `first-last`.
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a Range header value; `None` for anything but one bytes
    /// range (the whole blob is then served).
    pub fn parse(s: &str) -> Option<Self> {
        let spec = s.trim().strip_prefix("bytes=")?.trim();
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        if a.is_empty() {
            return b.parse().ok().map(ByteRange::Suffix);
        }
        let first = a.parse().ok()?;
        let last = if b.is_empty() {
            None
        } else {
            Some(b.parse().ok()?)
        };
        if last.is_some_and(|l| l < first) {
            return None;
        }
        Some(ByteRange::From(first, last))
    }

    /// The `[start, end)` this range selects of `total` bytes, or `None`
    /// when it is unsatisfiable.
    pub fn resolve(self, total: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From(first, _) if first >= total => None,
            ByteRange::From(first, last) => {
                Some((first, last.map_or(total, |l| (l + 1).min(total))))
            }
            ByteRange::Suffix(0) => None,
            ByteRange::Suffix(n) => Some((total.saturating_sub(n), total)),
        }
    }
}

/// Why a fetch returned nothing.
#[derive(Debug)]
#[non_exhaustive]
pub enum FetchError {
    /// No such blob for this account.
    NotFound,
    /// The range cannot be satisfied; carries the blob's size.
    Unsatisfiable(u64),
    /// The store failed.
    Store(tern_store::Error),
}

impl From<tern_store::Error> for FetchError {
    fn from(e: tern_store::Error) -> Self {
        FetchError::Store(e)
    }
}

/// Reads a blob (or one range of it) for `account`. Blocks.
pub fn fetch(
    store: &MailStore,
    account: AccountId,
    blob_id: &str,
    range: Option<ByteRange>,
) -> Result<Fetched, FetchError> {
    let r = BlobRef::parse(blob_id).ok_or(FetchError::NotFound)?;
    if !accessible(store, account, &r)? {
        return Err(FetchError::NotFound);
    }
    match r {
        BlobRef::Whole(hash) => {
            let total = store
                .kv()
                .read(|tx| blob::header(tx, &hash))?
                .filter(|h| h.complete)
                .ok_or(FetchError::NotFound)?
                .size;
            let (start, end) = match range {
                None => (0, total),
                Some(r) => r.resolve(total).ok_or(FetchError::Unsatisfiable(total))?,
            };
            // Read a few MB per transaction (a transaction lives < 5 s).
            let mut bytes = Vec::with_capacity((end - start) as usize);
            let mut at = start;
            while at < end {
                let len = (end - at).min(4 << 20);
                let part = store
                    .kv()
                    .read(|tx| blob::read_range(tx, &hash, at, len))?
                    .ok_or(FetchError::NotFound)?;
                if part.is_empty() {
                    break;
                }
                at += part.len() as u64;
                bytes.extend_from_slice(&part);
            }
            Ok(Fetched {
                total,
                start,
                bytes,
                content_type: None,
            })
        }
        BlobRef::Part(hash, n) => {
            let raw = read_whole(store, &hash)?.ok_or(FetchError::NotFound)?;
            let part = crate::email::part_content(&raw, n).ok_or(FetchError::NotFound)?;
            let total = part.bytes.len() as u64;
            let (start, end) = match range {
                None => (0, total),
                Some(r) => r.resolve(total).ok_or(FetchError::Unsatisfiable(total))?,
            };
            Ok(Fetched {
                total,
                start,
                bytes: part.bytes[start as usize..end as usize].to_vec(),
                content_type: Some(part.content_type),
            })
        }
    }
}

fn read_whole(store: &MailStore, hash: &BlobHash) -> tern_store::Result<Option<Vec<u8>>> {
    let Some(h) = store
        .kv()
        .read(|tx| blob::header(tx, hash))?
        .filter(|h| h.complete)
    else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(h.size as usize);
    while (out.len() as u64) < h.size {
        let Some(part) = store
            .kv()
            .read(|tx| blob::read_range(tx, hash, out.len() as u64, 4 << 20))?
        else {
            return Ok(None);
        };
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    Ok(Some(out))
}

/// Blob/copy. Every account a user can reach is their own, so a copy is
/// within one account: each blob the account holds is "copied" to itself.
pub fn copy(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    args::allow_only(&args, &["fromAccountId", "accountId", "blobIds"])?;
    let from = match args.get("fromAccountId") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(MethodError::invalid_arguments("fromAccountId is required")),
    };
    let account = ctx.account(&args)?;
    if from != id::account_id(ctx.user) {
        return Err(MethodError::FromAccountNotFound);
    }
    let blob_ids = args::opt_strings(&args, "blobIds")?
        .ok_or_else(|| MethodError::invalid_arguments("blobIds is required"))?;
    if blob_ids.len() > ctx.limits.max_objects_in_set {
        return Err(MethodError::RequestTooLarge);
    }
    let mut copied = Map::new();
    let mut not_copied = Map::new();
    for b in blob_ids {
        let ok = match BlobRef::parse(&b) {
            Some(r) => accessible(ctx.store, account, &r)?,
            None => false,
        };
        if ok {
            copied.insert(b.clone(), json!(b));
        } else {
            not_copied.insert(b, SetError::new("notFound").to_value());
        }
    }
    let or_null = |m: Map<String, Value>| {
        if m.is_empty() {
            Value::Null
        } else {
            Value::Object(m)
        }
    };
    let mut out = Map::new();
    out.insert("fromAccountId".into(), json!(from));
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert("copied".into(), or_null(copied));
    out.insert("notCopied".into(), or_null(not_copied));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    #[test]
    fn ranges() {
        assert_eq!(
            ByteRange::parse("bytes=0-9"),
            Some(ByteRange::From(0, Some(9)))
        );
        assert_eq!(ByteRange::parse("bytes=5-"), Some(ByteRange::From(5, None)));
        assert_eq!(ByteRange::parse("bytes=-3"), Some(ByteRange::Suffix(3)));
        assert_eq!(ByteRange::parse("bytes=0-1,4-5"), None);
        assert_eq!(ByteRange::parse("bytes=9-1"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
        assert_eq!(ByteRange::From(0, Some(9)).resolve(5), Some((0, 5)));
        assert_eq!(ByteRange::From(5, None).resolve(5), None);
        assert_eq!(ByteRange::Suffix(3).resolve(10), Some((7, 10)));
        assert_eq!(ByteRange::Suffix(30).resolve(10), Some((0, 10)));
    }
}
