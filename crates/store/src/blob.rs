//! Content-addressed blobs: SHA-256 → chunks of at most 100 000 bytes,
//! referenced per account, collected when no account holds them.
//!
//! Write order makes a crash harmless: a blob's header is written first as
//! *pending* (with its creation time), then its chunks, then the header is
//! marked complete. Metadata may only reference a complete blob (it reads
//! the header in its own transaction). The collector removes blobs nobody
//! links to once they are older than a grace period, and pending blobs left
//! by a crash the same way.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, decode, encode};
use crate::keys::{self, family};
use crate::kv::{KeyRange, Kv, RangeOptions, Transaction, limits};
use crate::types::{AccountId, BlobHash, now};

/// Bytes per chunk.
pub const CHUNK: usize = limits::MAX_VALUE;
/// Chunk bytes written per transaction when a blob is stored on its own.
const BYTES_PER_TX: usize = 4 << 20;

/// A blob's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobHeader {
    /// Size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u32,
    /// When the blob was first written, unix seconds.
    pub created: i64,
    /// Whether every chunk is written.
    pub complete: bool,
}

/// The header of a blob.
pub fn header(tx: &mut Transaction<'_>, hash: &BlobHash) -> Result<Option<BlobHeader>> {
    let key = keys::blob(hash);
    tx.get(&key)?.map(|v| decode(&key, &v)).transpose()
}

fn chunk_count(len: usize) -> u32 {
    len.div_ceil(CHUNK) as u32
}

/// Writes a blob inside `tx` (for blobs small enough to share the
/// transaction with the metadata that references them). Idempotent.
pub fn put_in_tx(tx: &mut Transaction<'_>, data: &[u8]) -> Result<BlobHash> {
    let hash = BlobHash::of(data);
    put_hashed_in_tx(tx, &hash, data)?;
    Ok(hash)
}

/// [`put_in_tx`] of `data` whose hash the caller took ([`BlobHash::of`]).
/// Returns whether the blob is new here: false when it was stored
/// already, or is being stored ([`put`]'s pending header), so that taking
/// a new one back ([`unput_in_tx`]) never touches another writer's bytes.
pub fn put_hashed_in_tx(tx: &mut Transaction<'_>, hash: &BlobHash, data: &[u8]) -> Result<bool> {
    debug_assert_eq!(BlobHash::of(data), *hash);
    let hash = *hash;
    let before = header(tx, &hash)?;
    if before.as_ref().is_some_and(|h| h.complete) {
        return Ok(false);
    }
    for (i, part) in data.chunks(CHUNK).enumerate() {
        tx.set(&keys::blob_chunk(&hash, i as u32), part)?;
    }
    let h = BlobHeader {
        size: data.len() as u64,
        chunks: chunk_count(data.len()),
        created: now(),
        complete: true,
    };
    tx.set(&keys::blob(&hash), &encode(&h))?;
    Ok(before.is_none())
}

/// Takes back a blob that [`put_hashed_in_tx`] wrote new earlier in the
/// same transaction (it returned true) when nothing came to reference it: its
/// header and chunks are cleared, so the commit leaves no trace of it.
pub fn unput_in_tx(tx: &mut Transaction<'_>, hash: &BlobHash) -> Result<()> {
    tx.clear_range(&keys::blob_chunks(hash))?;
    tx.clear(&keys::blob(hash))?;
    Ok(())
}

/// Writes a blob of any size in its own transactions (a pending header, the
/// chunks a few MB at a time, then the complete header). Idempotent: a blob
/// already complete is not written again. Returns once durable.
pub fn put(kv: &Kv, data: &[u8]) -> Result<BlobHash> {
    let hash = BlobHash::of(data);
    let mut h = BlobHeader {
        size: data.len() as u64,
        chunks: chunk_count(data.len()),
        created: now(),
        complete: false,
    };
    if data.len() <= BYTES_PER_TX {
        kv.transact(|tx| put_in_tx(tx, data))?;
        return Ok(hash);
    }
    let done = kv.transact(|tx| -> Result<bool> {
        match header(tx, &hash)? {
            Some(existing) if existing.complete => Ok(true),
            _ => {
                tx.set(&keys::blob(&hash), &encode(&h))?;
                Ok(false)
            }
        }
    })?;
    if done {
        return Ok(hash);
    }
    let per_tx = BYTES_PER_TX / CHUNK;
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    for (group_index, group) in chunks.chunks(per_tx).enumerate() {
        kv.transact(|tx| -> Result<()> {
            for (j, part) in group.iter().enumerate() {
                let index = (group_index * per_tx + j) as u32;
                tx.set(&keys::blob_chunk(&hash, index), part)?;
            }
            Ok(())
        })?;
    }
    h.complete = true;
    kv.transact(|tx| -> Result<()> {
        tx.set(&keys::blob(&hash), &encode(&h))?;
        Ok(())
    })?;
    Ok(hash)
}

/// Reads `len` bytes from `offset` of a blob (clamped to its size); `None`
/// if the blob does not exist or is incomplete. Reads only the chunks it
/// needs.
pub fn read_range(
    tx: &mut Transaction<'_>,
    hash: &BlobHash,
    offset: u64,
    len: u64,
) -> Result<Option<Vec<u8>>> {
    let Some(h) = header(tx, hash)?.filter(|h| h.complete) else {
        return Ok(None);
    };
    let start = offset.min(h.size);
    let end = offset.saturating_add(len).min(h.size);
    if start >= end {
        return Ok(Some(Vec::new()));
    }
    let first = (start / CHUNK as u64) as u32;
    let last = ((end - 1) / CHUNK as u64) as u32;
    let parts = tx.range(
        &KeyRange::new(
            keys::blob_chunk(hash, first),
            keys::blob_chunk(hash, last + 1),
        ),
        RangeOptions::default(),
    )?;
    if parts.len() != (last - first + 1) as usize {
        return Err(crate::kv::Error::corrupt(&keys::blob(hash), "missing blob chunks").into());
    }
    let mut out = Vec::with_capacity((end - start) as usize);
    for (i, (_, part)) in parts.iter().enumerate() {
        let chunk_start = (first as u64 + i as u64) * CHUNK as u64;
        let from = start.saturating_sub(chunk_start) as usize;
        let to = ((end - chunk_start) as usize).min(part.len());
        out.extend_from_slice(&part[from.min(to)..to]);
    }
    Ok(Some(out))
}

/// Reads a whole blob.
pub fn read(tx: &mut Transaction<'_>, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
    read_range(tx, hash, 0, u64::MAX)
}

/// Changes the number of references `account` holds to a blob by `delta`,
/// keeping the blob's account link in step. Taking a reference requires the
/// blob to be complete (this read conflicts with a concurrent collection).
pub fn add_ref(
    tx: &mut Transaction<'_>,
    account: AccountId,
    hash: &BlobHash,
    delta: i32,
) -> Result<()> {
    let key = keys::acct(account, family::BLOB_REF).bytes(&hash.0).build();
    let held = match tx.get(&key)? {
        Some(v) if v.len() == 4 => u32::from_be_bytes(v.try_into().expect("4 bytes")),
        Some(_) => return Err(crate::kv::Error::corrupt(&key, "expected u32").into()),
        None => 0,
    };
    let now_held = (held as i64 + delta as i64).max(0) as u32;
    if held == 0 && now_held > 0 {
        if !header(tx, hash)?.is_some_and(|h| h.complete) {
            return Err(Error::NotFound(format!("blob {}", hash.to_hex())));
        }
        tx.set(&keys::blob_link(hash, account), &[])?;
    }
    if now_held == 0 {
        tx.clear(&key)?;
        tx.clear(&keys::blob_link(hash, account))?;
    } else {
        tx.set(&key, &now_held.to_be_bytes())?;
    }
    Ok(())
}

/// How many references `account` holds to a blob.
pub fn refs(tx: &mut Transaction<'_>, account: AccountId, hash: &BlobHash) -> Result<u32> {
    let key = keys::acct(account, family::BLOB_REF).bytes(&hash.0).build();
    Ok(tx
        .get(&key)?
        .and_then(|v| v.try_into().ok().map(u32::from_be_bytes))
        .unwrap_or(0))
}

/// Removes blobs that no account links to and that are older than
/// `grace_secs`, as a chain of short transactions. Returns how many blobs
/// were removed.
pub fn collect(kv: &Kv, grace_secs: i64) -> Result<usize> {
    let mut removed = 0;
    let mut cursor = keys::blobs().begin;
    let end = keys::blobs().end;
    loop {
        let page = kv.read(|tx| {
            tx.range_snapshot(
                &KeyRange::new(cursor.clone(), end.clone()),
                RangeOptions::limit(128),
            )
            .map_err(Error::from)
        })?;
        let Some((last, _)) = page.last() else {
            break;
        };
        let next_cursor = KeyRange::single(last).end;
        for (key, _) in &page {
            let hash = BlobHash(
                key[1..]
                    .try_into()
                    .map_err(|_| crate::kv::Error::corrupt(key, "bad blob key"))?,
            );
            let gone = kv.transact(|tx| -> Result<bool> {
                let Some(h) = header(tx, &hash)? else {
                    return Ok(false);
                };
                if now() - h.created < grace_secs {
                    return Ok(false);
                }
                if !tx
                    .range(&keys::blob_links(&hash), RangeOptions::limit(1))?
                    .is_empty()
                {
                    return Ok(false);
                }
                tx.clear_range(&keys::blob_chunks(&hash))?;
                tx.clear(&keys::blob(&hash))?;
                Ok(true)
            })?;
            removed += gone as usize;
        }
        cursor = next_cursor;
    }
    Ok(removed)
}
