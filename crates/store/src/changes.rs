//! The per-account change counter and change log.
//!
//! Every transaction that writes to an account goes through a [`Writer`]: it
//! reads the account's change counter when it starts (so concurrent writers
//! to one account conflict and are serialised) and, when it finishes, bumps
//! the counter and appends one change record per data type it touched. A
//! type's JMAP state is the id of the last change that touched it, so states
//! are exact and `/changes` is a range read of the log.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, decode, encode};
use crate::keys::{self, family};
use crate::kv::{RangeOptions, Transaction};
use crate::types::{AccountId, Collection, DataType, DocumentId};

/// What one change did to one data type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRecord {
    /// Ids created.
    pub created: Vec<DocumentId>,
    /// Ids updated.
    pub updated: Vec<DocumentId>,
    /// Ids destroyed.
    pub destroyed: Vec<DocumentId>,
    /// Of `updated`, the ids whose only change was to derived counts
    /// (mailbox email/thread counts): JMAP's `updatedProperties`.
    pub counts_only: Vec<DocumentId>,
}

#[derive(Debug, Default)]
struct Pending {
    created: BTreeSet<DocumentId>,
    updated: BTreeSet<DocumentId>,
    destroyed: BTreeSet<DocumentId>,
    counts: BTreeSet<DocumentId>,
}

/// A write context for one account inside a transaction.
#[derive(Debug)]
pub struct Writer<'t, 's> {
    /// The transaction.
    pub tx: &'t mut Transaction<'s>,
    /// The account written.
    pub account: AccountId,
    change: u64,
    pending: BTreeMap<DataType, Pending>,
}

impl<'t, 's> Writer<'t, 's> {
    /// Starts writing to `account`: reads its change counter.
    pub fn begin(tx: &'t mut Transaction<'s>, account: AccountId) -> Result<Self> {
        let key = keys::acct(account, family::CHANGE_COUNTER).build();
        let change = tx.get_counter(&key)? as u64;
        Ok(Self {
            tx,
            account,
            change,
            pending: BTreeMap::new(),
        })
    }

    /// The id the change being written will get.
    pub fn change_id(&self) -> u64 {
        self.change + 1
    }

    /// Records that `id` of type `t` was created.
    pub fn created(&mut self, t: DataType, id: DocumentId) {
        self.pending.entry(t).or_default().created.insert(id);
    }

    /// Records that `id` of type `t` was updated.
    pub fn updated(&mut self, t: DataType, id: DocumentId) {
        self.pending.entry(t).or_default().updated.insert(id);
    }

    /// Records that mailbox `id`'s counts changed.
    pub fn counts_changed(&mut self, mailbox: DocumentId) {
        self.pending
            .entry(DataType::Mailbox)
            .or_default()
            .counts
            .insert(mailbox);
    }

    /// Records that `id` of type `t` was destroyed.
    pub fn destroyed(&mut self, t: DataType, id: DocumentId) {
        self.pending.entry(t).or_default().destroyed.insert(id);
    }

    /// Records a change of a type without ids (e.g. `EmailDelivery`).
    pub fn touched(&mut self, t: DataType) {
        self.pending.entry(t).or_default();
    }

    /// Allocates the next document id of `collection`.
    pub fn next_id(&mut self, collection: Collection) -> Result<DocumentId> {
        let key = keys::acct(self.account, family::NEXT_ID)
            .u8(collection as u8)
            .build();
        let id = self.tx.get_counter(&key)?;
        let id = u32::try_from(id)
            .map_err(|_| Error::Invalid(format!("{collection:?} ids exhausted")))?;
        self.tx.set(&key, &(id as i64 + 1).to_le_bytes())?;
        Ok(id)
    }

    /// Writes the change records and bumps the counter. Returns the change
    /// id, or `None` when nothing was recorded.
    pub fn finish(self) -> Result<Option<u64>> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let change = self.change + 1;
        let account = self.account;
        self.tx.set(
            &keys::acct(account, family::CHANGE_COUNTER).build(),
            &(change as i64).to_le_bytes(),
        )?;
        for (t, p) in self.pending {
            let counts_only: Vec<DocumentId> = p
                .counts
                .iter()
                .filter(|id| !p.updated.contains(id) && !p.created.contains(id))
                .copied()
                .collect();
            let mut updated: BTreeSet<DocumentId> = p.updated;
            updated.extend(counts_only.iter().copied());
            for id in &p.created {
                updated.remove(id);
            }
            for id in &p.destroyed {
                updated.remove(id);
            }
            let record = ChangeRecord {
                created: p.created.into_iter().collect(),
                updated: updated.into_iter().collect(),
                destroyed: p.destroyed.into_iter().collect(),
                counts_only,
            };
            let key = change_key(account, t, change);
            self.tx.set(&key, &encode(&record))?;
            self.tx.set(
                &keys::acct(account, family::TYPE_STATE).u8(t as u8).build(),
                &change.to_be_bytes(),
            )?;
        }
        Ok(Some(change))
    }
}

fn change_key(account: AccountId, t: DataType, change: u64) -> Vec<u8> {
    keys::acct(account, family::CHANGE)
        .u8(t as u8)
        .u64(change)
        .build()
}

fn read_u64(tx: &mut Transaction<'_>, key: &[u8]) -> Result<u64> {
    Ok(match tx.get(key)? {
        Some(v) if v.len() == 8 => u64::from_be_bytes(v.try_into().expect("8 bytes")),
        Some(_) => return Err(crate::kv::Error::corrupt(key, "expected u64").into()),
        None => 0,
    })
}

/// The current state of type `t` in `account`: the id of the last change
/// that touched it (0 before any).
pub fn state(tx: &mut Transaction<'_>, account: AccountId, t: DataType) -> Result<u64> {
    read_u64(
        tx,
        &keys::acct(account, family::TYPE_STATE).u8(t as u8).build(),
    )
}

/// The account's change counter: the id of its last change of any type.
pub fn account_change(tx: &mut Transaction<'_>, account: AccountId) -> Result<u64> {
    Ok(tx.get_counter(&keys::acct(account, family::CHANGE_COUNTER).build())? as u64)
}

/// What changed in one type since a state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// The state these changes bring the client to.
    pub new_state: u64,
    /// Whether more changes follow `new_state`.
    pub has_more: bool,
    /// Created since.
    pub created: Vec<DocumentId>,
    /// Updated since (not created, not destroyed).
    pub updated: Vec<DocumentId>,
    /// Destroyed since (and not created since).
    pub destroyed: Vec<DocumentId>,
    /// Whether every update was to counts only (mailboxes).
    pub counts_only: bool,
}

/// The changes to type `t` after state `since`, merged, stopping after the
/// change record that brings the id count to `max` (a record is never
/// split, so one record larger than `max` is returned whole).
pub fn changes(
    tx: &mut Transaction<'_>,
    account: AccountId,
    t: DataType,
    since: u64,
    max: usize,
) -> Result<Changes> {
    let floor = read_u64(
        tx,
        &keys::acct(account, family::TYPE_FLOOR).u8(t as u8).build(),
    )?;
    let current = state(tx, account, t)?;
    if since < floor || since > current {
        return Err(Error::CannotCalculateChanges);
    }
    let mut out = Changes {
        new_state: since,
        counts_only: true,
        ..Default::default()
    };
    if since == current {
        out.counts_only = false;
        return Ok(out);
    }
    // created/updated/destroyed status per id, in first-seen order.
    #[derive(PartialEq)]
    enum S {
        Created,
        Updated,
        Destroyed,
        Gone,
    }
    let mut status: BTreeMap<DocumentId, S> = BTreeMap::new();
    let mut counted = 0usize;
    let begin = change_key(account, t, since + 1);
    let end = change_key(account, t, u64::MAX);
    let range = crate::kv::KeyRange::new(begin, end);
    // Page through the log so a long history is not loaded at once.
    let mut cursor = range.begin.clone();
    'outer: loop {
        let page = tx.range(
            &crate::kv::KeyRange::new(cursor.clone(), range.end.clone()),
            RangeOptions::limit(256),
        )?;
        let full = page.len() == 256;
        for (key, value) in page {
            if counted >= max {
                out.has_more = true;
                break 'outer;
            }
            let change = u64::from_be_bytes(key[key.len() - 8..].try_into().expect("8 bytes"));
            let record: ChangeRecord = decode(&key, &value)?;
            for &id in &record.created {
                status.insert(id, S::Created);
            }
            for &id in &record.updated {
                status.entry(id).or_insert(S::Updated);
                if !record.counts_only.contains(&id) {
                    out.counts_only = false;
                }
            }
            for &id in &record.destroyed {
                let entry = status.entry(id).or_insert(S::Destroyed);
                *entry = if *entry == S::Created {
                    S::Gone
                } else {
                    S::Destroyed
                };
            }
            counted += record.created.len() + record.updated.len() + record.destroyed.len();
            out.new_state = change;
            cursor = crate::kv::KeyRange::single(&key).end;
        }
        if !full {
            break;
        }
    }
    for (id, s) in status {
        match s {
            S::Created => out.created.push(id),
            S::Updated => out.updated.push(id),
            S::Destroyed => out.destroyed.push(id),
            S::Gone => {}
        }
    }
    if out.updated.is_empty() {
        out.counts_only = false;
    }
    Ok(out)
}

/// Drops change records of `t` up to and including `upto`; a later
/// `changes` from a state before it fails with
/// [`Error::CannotCalculateChanges`].
pub fn truncate(
    tx: &mut Transaction<'_>,
    account: AccountId,
    t: DataType,
    upto: u64,
) -> Result<()> {
    tx.clear_range(&crate::kv::KeyRange::new(
        change_key(account, t, 0),
        change_key(account, t, upto.saturating_add(1)),
    ))?;
    tx.set(
        &keys::acct(account, family::TYPE_FLOOR).u8(t as u8).build(),
        &upto.to_be_bytes(),
    )?;
    Ok(())
}

/// Keeps the account's change log to its last `keep` changes (of all
/// types together): every type's records up to change `last - keep` are
/// dropped, never past the type's own state, so a client that is up to
/// date with a type keeps getting `/changes` for it. Answers how many
/// types were truncated. States do not change.
pub fn retain_latest(tx: &mut Transaction<'_>, account: AccountId, keep: u64) -> Result<usize> {
    let last = account_change(tx, account)?;
    let upto = last.saturating_sub(keep);
    if upto == 0 {
        return Ok(0);
    }
    let mut truncated = 0;
    for t in DataType::ALL {
        let floor = read_u64(
            tx,
            &keys::acct(account, family::TYPE_FLOOR).u8(t as u8).build(),
        )?;
        let upto_t = upto.min(state(tx, account, t)?);
        if upto_t > floor {
            truncate(tx, account, t, upto_t)?;
            truncated += 1;
        }
    }
    Ok(truncated)
}
