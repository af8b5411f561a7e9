//! Mailboxes: records, the default set with RFC 6154 roles, and counts.

use serde::{Deserialize, Serialize};

use crate::changes::Writer;
use crate::error::{Error, Result, decode, encode};
use crate::keys::{self, count, family};
use crate::kv::{RangeOptions, Transaction};
use crate::types::{AccountId, Collection, DataType, DocumentId};

/// A stored mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mailbox {
    /// Name (unique among siblings).
    pub name: String,
    /// Parent mailbox, `None` at the top level.
    pub parent_id: Option<DocumentId>,
    /// RFC 6154 / IANA role, lowercase (`inbox`, `drafts`, ...).
    pub role: Option<String>,
    /// Sort order hint for clients.
    pub sort_order: u32,
    /// Whether the user is subscribed.
    pub is_subscribed: bool,
}

/// The mailboxes every account starts with: name, role, sort order.
pub const DEFAULTS: [(&str, &str, u32); 6] = [
    ("Inbox", "inbox", 1),
    ("Drafts", "drafts", 2),
    ("Sent", "sent", 3),
    ("Archive", "archive", 4),
    ("Junk", "junk", 5),
    ("Trash", "trash", 6),
];

/// Counts shown with a mailbox (RFC 8621 section 2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxCounts {
    /// Emails in the mailbox.
    pub total_emails: u64,
    /// Emails in it with neither `$seen` nor `$draft`.
    pub unread_emails: u64,
    /// Threads with an email in it.
    pub total_threads: u64,
    /// Threads with an unread email in it.
    pub unread_threads: u64,
}

/// Creates the default mailboxes.
pub fn create_defaults(w: &mut Writer<'_, '_>) -> Result<()> {
    for (name, role, sort_order) in DEFAULTS {
        create(
            w,
            &Mailbox {
                name: name.into(),
                parent_id: None,
                role: Some(role.into()),
                sort_order,
                is_subscribed: true,
            },
        )?;
    }
    Ok(())
}

/// Creates a mailbox; returns its id.
pub fn create(w: &mut Writer<'_, '_>, mailbox: &Mailbox) -> Result<DocumentId> {
    let id = w.next_id(Collection::Mailbox)?;
    w.tx.set(&keys::doc(w.account, family::MAILBOX, id), &encode(mailbox))?;
    w.created(DataType::Mailbox, id);
    Ok(id)
}

/// Replaces a mailbox record.
pub fn update(w: &mut Writer<'_, '_>, id: DocumentId, mailbox: &Mailbox) -> Result<()> {
    let key = keys::doc(w.account, family::MAILBOX, id);
    if w.tx.get(&key)?.is_none() {
        return Err(Error::NotFound(format!("mailbox {id}")));
    }
    w.tx.set(&key, &encode(mailbox))?;
    w.updated(DataType::Mailbox, id);
    Ok(())
}

/// Removes a mailbox record and its counters. The caller first moves or
/// destroys its emails (the JMAP layer decides which, per
/// `onDestroyRemoveEmails`).
pub fn destroy(w: &mut Writer<'_, '_>, id: DocumentId) -> Result<()> {
    let key = keys::doc(w.account, family::MAILBOX, id);
    if w.tx.get(&key)?.is_none() {
        return Err(Error::NotFound(format!("mailbox {id}")));
    }
    w.tx.clear(&key)?;
    w.tx.clear_range(
        &keys::acct(w.account, family::MAILBOX_COUNT)
            .u32(id)
            .prefix_range(),
    )?;
    w.tx.clear_range(
        &keys::acct(w.account, family::MAILBOX_THREAD)
            .u32(id)
            .prefix_range(),
    )?;
    w.destroyed(DataType::Mailbox, id);
    Ok(())
}

/// One mailbox.
pub fn get(
    tx: &mut Transaction<'_>,
    account: AccountId,
    id: DocumentId,
) -> Result<Option<Mailbox>> {
    let key = keys::doc(account, family::MAILBOX, id);
    tx.get(&key)?.map(|v| decode(&key, &v)).transpose()
}

/// Every mailbox of the account, by id.
pub fn list(tx: &mut Transaction<'_>, account: AccountId) -> Result<Vec<(DocumentId, Mailbox)>> {
    let range = keys::acct(account, family::MAILBOX).prefix_range();
    tx.range(&range, RangeOptions::default())?
        .into_iter()
        .map(|(k, v)| Ok((keys::be_u32(&k, k.len() - 4), decode(&k, &v)?)))
        .collect()
}

/// The mailbox with `role`, if any.
pub fn by_role(
    tx: &mut Transaction<'_>,
    account: AccountId,
    role: &str,
) -> Result<Option<DocumentId>> {
    Ok(list(tx, account)?
        .into_iter()
        .find(|(_, m)| m.role.as_deref() == Some(role))
        .map(|(id, _)| id))
}

/// A mailbox's counts.
pub fn counts(
    tx: &mut Transaction<'_>,
    account: AccountId,
    id: DocumentId,
) -> Result<MailboxCounts> {
    let mut read = |kind: u8| -> Result<u64> {
        let key = keys::acct(account, family::MAILBOX_COUNT)
            .u32(id)
            .u8(kind)
            .build();
        Ok(tx.get_counter(&key)?.max(0) as u64)
    };
    Ok(MailboxCounts {
        total_emails: read(count::TOTAL_EMAILS)?,
        unread_emails: read(count::UNREAD_EMAILS)?,
        total_threads: read(count::TOTAL_THREADS)?,
        unread_threads: read(count::UNREAD_THREADS)?,
    })
}
