//! Generic per-account objects: records the mail model does not interpret
//! (JMAP identities, the vacation response, ...), kept under the account
//! family `0x14 ++ collection ++ id` with their changes recorded through a
//! [`Writer`], so states and `/changes` work for them as for mailboxes.
//!
//! The value is opaque to the store: `0x01 ++ bytes` chosen by the caller
//! (tern-jmap writes the object's JSON). Objects of a [`Collection`] get
//! ids from the collection's id sequence (never reused); a singleton (one
//! object per account, e.g. the vacation response) lives at id 0 of a
//! pseudo-collection whose byte is its [`DataType`]'s byte.

use crate::changes::Writer;
use crate::error::{Error, Result};
use crate::keys::{self, family};
use crate::kv::{RangeOptions, Transaction};
use crate::types::{AccountId, Collection, DataType, DocumentId};

/// The value format version byte.
const VERSION: u8 = 1;

fn key(account: AccountId, collection: u8, id: DocumentId) -> Vec<u8> {
    keys::acct(account, family::OBJECT)
        .u8(collection)
        .u32(id)
        .build()
}

fn encode(bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(bytes.len() + 1);
    v.push(VERSION);
    v.extend_from_slice(bytes);
    v
}

fn decode(key: &[u8], value: Vec<u8>) -> Result<Vec<u8>> {
    match value.first() {
        Some(&VERSION) => Ok(value[1..].to_vec()),
        _ => Err(crate::kv::Error::corrupt(key, "unknown object version").into()),
    }
}

/// Stores a new object of `collection` and records it as created in type
/// `t`. Returns its id.
pub fn create(
    w: &mut Writer<'_, '_>,
    collection: Collection,
    t: DataType,
    value: &[u8],
) -> Result<DocumentId> {
    let id = w.next_id(collection)?;
    w.tx.set(&key(w.account, collection as u8, id), &encode(value))?;
    w.created(t, id);
    Ok(id)
}

/// Replaces an object and records it as updated in type `t`; fails with
/// [`Error::NotFound`] when it does not exist.
pub fn update(
    w: &mut Writer<'_, '_>,
    collection: Collection,
    t: DataType,
    id: DocumentId,
    value: &[u8],
) -> Result<()> {
    let k = key(w.account, collection as u8, id);
    if w.tx.get(&k)?.is_none() {
        return Err(Error::NotFound(format!("{collection:?} {id}")));
    }
    w.tx.set(&k, &encode(value))?;
    w.updated(t, id);
    Ok(())
}

/// Removes an object and records it as destroyed in type `t`; fails with
/// [`Error::NotFound`] when it does not exist.
pub fn destroy(
    w: &mut Writer<'_, '_>,
    collection: Collection,
    t: DataType,
    id: DocumentId,
) -> Result<()> {
    let k = key(w.account, collection as u8, id);
    if w.tx.get(&k)?.is_none() {
        return Err(Error::NotFound(format!("{collection:?} {id}")));
    }
    w.tx.clear(&k)?;
    w.destroyed(t, id);
    Ok(())
}

/// One object.
pub fn get(
    tx: &mut Transaction<'_>,
    account: AccountId,
    collection: Collection,
    id: DocumentId,
) -> Result<Option<Vec<u8>>> {
    let k = key(account, collection as u8, id);
    tx.get(&k)?.map(|v| decode(&k, v)).transpose()
}

/// Every object of a collection, by id.
pub fn list(
    tx: &mut Transaction<'_>,
    account: AccountId,
    collection: Collection,
) -> Result<Vec<(DocumentId, Vec<u8>)>> {
    let range = keys::acct(account, family::OBJECT)
        .u8(collection as u8)
        .prefix_range();
    tx.range(&range, RangeOptions::default())?
        .into_iter()
        .map(|(k, v)| Ok((keys::be_u32(&k, k.len() - 4), decode(&k, v)?)))
        .collect()
}

/// How many ids of `collection` the account has ever allocated (ids are
/// never reused, so 0 means no object was ever created).
pub fn allocated(
    tx: &mut Transaction<'_>,
    account: AccountId,
    collection: Collection,
) -> Result<u32> {
    let k = keys::acct(account, family::NEXT_ID)
        .u8(collection as u8)
        .build();
    Ok(tx.get_counter(&k)?.clamp(0, u32::MAX as i64) as u32)
}

/// The key of the singleton object of type `t` (a watch on it fires when
/// the object is written).
pub(crate) fn singleton_key(account: AccountId, t: DataType) -> Vec<u8> {
    key(account, t as u8, 0)
}

/// The singleton object of type `t` (at `0x14 ++ t ++ 0`), if it was ever
/// written.
pub fn get_singleton(
    tx: &mut Transaction<'_>,
    account: AccountId,
    t: DataType,
) -> Result<Option<Vec<u8>>> {
    let k = key(account, t as u8, 0);
    tx.get(&k)?.map(|v| decode(&k, v)).transpose()
}

/// Writes the singleton object of type `t` and records it as updated (id
/// 0) in `t`.
pub fn put_singleton(w: &mut Writer<'_, '_>, t: DataType, value: &[u8]) -> Result<()> {
    w.tx.set(&key(w.account, t as u8, 0), &encode(value))?;
    w.updated(t, 0);
    Ok(())
}
