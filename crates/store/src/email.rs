//! Emails: metadata records, mailbox membership and keywords with their
//! indexes and counters, threads.
//!
//! Every change to membership or keywords goes through one function,
//! `reindex`, which moves an email from an old (mailboxes, keywords) state
//! to a new one and updates every index and counter that depends on it, so
//! insert, update and destroy cannot disagree about the indexes.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::blob;
use crate::changes::Writer;
use crate::error::{Error, Result, decode, encode};
use crate::keys::{self, Key, count, family};
use crate::kv::{KeyRange, QueueFamily, RangeOptions, Transaction};
use crate::parse::{EmailDetail, Envelope, ParsedMessage};
use crate::types::{AccountId, BlobHash, Collection, DataType, DocumentId};

/// The keyword that marks an email read.
pub const SEEN: &str = "$seen";
/// The keyword that marks a draft.
pub const DRAFT: &str = "$draft";

/// The list properties of an email: everything needed to show it in a
/// mailbox listing, without reading its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailMeta {
    /// The raw message's blob.
    pub blob: BlobHash,
    /// The thread.
    pub thread_id: DocumentId,
    /// Mailboxes holding the email, sorted.
    pub mailbox_ids: Vec<DocumentId>,
    /// Keywords, lowercase, sorted.
    pub keywords: Vec<String>,
    /// Size of the raw message in bytes.
    pub size: u64,
    /// When the message arrived, unix seconds.
    pub received_at: i64,
    /// Header-derived properties.
    pub envelope: Envelope,
}

impl EmailMeta {
    /// Whether the email has `keyword`.
    pub fn has_keyword(&self, keyword: &str) -> bool {
        self.keywords.iter().any(|k| k == keyword)
    }
}

/// A thread record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThreadRecord {
    /// The base subject of the thread's first email.
    pub base_subject: String,
}

/// What to store for a new email.
#[derive(Debug)]
pub struct NewEmail<'a> {
    /// The raw message's blob (must be complete).
    pub blob: BlobHash,
    /// Raw size.
    pub size: u64,
    /// Arrival time.
    pub received_at: i64,
    /// Mailboxes (at least one).
    pub mailbox_ids: Vec<DocumentId>,
    /// Keywords.
    pub keywords: Vec<String>,
    /// The parsed message.
    pub parsed: &'a ParsedMessage,
}

/// Normalizes keywords: lowercase, sorted, unique.
pub fn normalize_keywords<S: AsRef<str>>(keywords: &[S]) -> Vec<String> {
    let set: BTreeSet<String> = keywords.iter().map(|k| k.as_ref().to_lowercase()).collect();
    set.into_iter().collect()
}

fn meta_key(account: AccountId, id: DocumentId) -> Vec<u8> {
    keys::doc(account, family::EMAIL, id)
}

fn detail_key(account: AccountId, id: DocumentId) -> Vec<u8> {
    keys::doc(account, family::EMAIL_DETAIL, id)
}

fn mailbox_date(
    account: AccountId,
    family: u8,
    mailbox: DocumentId,
    received: i64,
    id: DocumentId,
) -> Vec<u8> {
    keys::acct(account, family)
        .u32(mailbox)
        .time(received)
        .u32(id)
        .build()
}

fn keyword_key(account: AccountId, keyword: &str, id: DocumentId) -> Vec<u8> {
    keys::acct(account, family::KEYWORD)
        .bytes(keyword.as_bytes())
        .u8(0)
        .u32(id)
        .build()
}

fn message_id_key(account: AccountId, message_id: &str) -> Vec<u8> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(message_id.as_bytes());
    keys::acct(account, family::MESSAGE_ID)
        .bytes(&digest[..16])
        .build()
}

fn count_key(account: AccountId, mailbox: DocumentId, kind: u8) -> Vec<u8> {
    keys::acct(account, family::MAILBOX_COUNT)
        .u32(mailbox)
        .u8(kind)
        .build()
}

/// Membership and keywords of an email at one point.
#[derive(Debug, Clone, Copy)]
struct Placement<'a> {
    mailboxes: &'a [DocumentId],
    keywords: &'a [String],
}

impl Placement<'_> {
    fn seen(&self) -> bool {
        self.keywords.iter().any(|k| k == SEEN)
    }
    /// RFC 8621: unread = neither `$seen` nor `$draft`.
    fn unread(&self) -> bool {
        !self.seen() && !self.keywords.iter().any(|k| k == DRAFT)
    }
    fn holds(&self, mailbox: DocumentId) -> bool {
        self.mailboxes.contains(&mailbox)
    }
}

/// Moves an email from `old` to `new` placement (either may be absent: an
/// insert or a destroy), updating the per-mailbox date and unseen indexes,
/// the keyword index, the mailbox counters and the mailbox-thread counts.
fn reindex(
    w: &mut Writer<'_, '_>,
    id: DocumentId,
    thread: DocumentId,
    received: i64,
    old: Option<Placement<'_>>,
    new: Option<Placement<'_>>,
) -> Result<()> {
    let account = w.account;
    let empty = Placement {
        mailboxes: &[],
        keywords: &[],
    };
    let old = old.unwrap_or(empty);
    let new = new.unwrap_or(empty);
    let mailboxes: BTreeSet<DocumentId> = old
        .mailboxes
        .iter()
        .chain(new.mailboxes.iter())
        .copied()
        .collect();
    for mailbox in mailboxes {
        let (was_in, is_in) = (old.holds(mailbox), new.holds(mailbox));
        let was_unseen = was_in && !old.seen();
        let is_unseen = is_in && !new.seen();
        let was_unread = was_in && old.unread();
        let is_unread = is_in && new.unread();
        if was_in == is_in && was_unseen == is_unseen && was_unread == is_unread {
            continue;
        }
        let date = mailbox_date(account, family::MAILBOX_DATE, mailbox, received, id);
        let unseen = mailbox_date(account, family::MAILBOX_UNSEEN_DATE, mailbox, received, id);
        match (was_in, is_in) {
            (false, true) => w.tx.set(&date, &[])?,
            (true, false) => w.tx.clear(&date)?,
            _ => {}
        }
        match (was_unseen, is_unseen) {
            (false, true) => w.tx.set(&unseen, &[])?,
            (true, false) => w.tx.clear(&unseen)?,
            _ => {}
        }
        let delta = |a: bool, b: bool| b as i64 - a as i64;
        if was_in != is_in {
            w.tx.add(
                &count_key(account, mailbox, count::TOTAL_EMAILS),
                delta(was_in, is_in),
            )?;
        }
        if was_unread != is_unread {
            w.tx.add(
                &count_key(account, mailbox, count::UNREAD_EMAILS),
                delta(was_unread, is_unread),
            )?;
        }
        // Per (mailbox, thread): how many of the thread's emails are in the
        // mailbox, and how many of those are unread.
        let mt_key = keys::acct(account, family::MAILBOX_THREAD)
            .u32(mailbox)
            .u32(thread)
            .build();
        let (total, unread) = match w.tx.get(&mt_key)? {
            Some(v) if v.len() == 8 => (keys::be_u32(&v, 0), keys::be_u32(&v, 4)),
            Some(_) => return Err(crate::kv::Error::corrupt(&mt_key, "expected 8 bytes").into()),
            None => (0, 0),
        };
        let new_total = (total as i64 + delta(was_in, is_in)).max(0) as u32;
        let new_unread = (unread as i64 + delta(was_unread, is_unread)).max(0) as u32;
        if (total > 0) != (new_total > 0) {
            w.tx.add(
                &count_key(account, mailbox, count::TOTAL_THREADS),
                delta(total > 0, new_total > 0),
            )?;
        }
        if (unread > 0) != (new_unread > 0) {
            w.tx.add(
                &count_key(account, mailbox, count::UNREAD_THREADS),
                delta(unread > 0, new_unread > 0),
            )?;
        }
        if new_total == 0 {
            w.tx.clear(&mt_key)?;
        } else {
            let mut v = new_total.to_be_bytes().to_vec();
            v.extend_from_slice(&new_unread.to_be_bytes());
            w.tx.set(&mt_key, &v)?;
        }
        w.counts_changed(mailbox);
    }
    let old_kw: BTreeSet<&String> = old.keywords.iter().collect();
    let new_kw: BTreeSet<&String> = new.keywords.iter().collect();
    for k in old_kw.difference(&new_kw) {
        w.tx.clear(&keyword_key(account, k, id))?;
    }
    for k in new_kw.difference(&old_kw) {
        w.tx.set(&keyword_key(account, k, id), &[])?;
    }
    Ok(())
}

/// Finds the thread of a new email by its Message-ID, In-Reply-To and
/// References, guarded by the base subject; creates one when none matches.
/// Registers the email's ids so later replies find the thread.
fn resolve_thread(w: &mut Writer<'_, '_>, envelope: &Envelope) -> Result<DocumentId> {
    let account = w.account;
    let ids: Vec<&String> = envelope
        .message_id
        .iter()
        .chain(&envelope.in_reply_to)
        .chain(&envelope.references)
        .filter(|s| !s.is_empty())
        .collect();
    let mut found = None;
    let mut unregistered = Vec::new();
    for id in &ids {
        let key = message_id_key(account, id);
        match w.tx.get(&key)? {
            Some(v) if v.len() == 4 => {
                let thread = keys::be_u32(&v, 0);
                if found.is_none() {
                    let tkey = keys::doc(account, family::THREAD, thread);
                    if let Some(t) = w.tx.get(&tkey)? {
                        let t: ThreadRecord = decode(&tkey, &t)?;
                        if t.base_subject == envelope.base_subject {
                            found = Some(thread);
                        }
                    }
                }
            }
            _ => unregistered.push(key),
        }
    }
    let thread = match found {
        Some(t) => {
            w.updated(DataType::Thread, t);
            t
        }
        None => {
            let t = w.next_id(Collection::Thread)?;
            w.tx.set(
                &keys::doc(account, family::THREAD, t),
                &encode(&ThreadRecord {
                    base_subject: envelope.base_subject.clone(),
                }),
            )?;
            w.created(DataType::Thread, t);
            t
        }
    };
    for key in unregistered {
        w.tx.set(&key, &thread.to_be_bytes())?;
    }
    Ok(thread)
}

/// How [`insert_checked`] applies the account's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaCheck {
    /// The email must fit: used + size <= quota.
    #[default]
    MustFit,
    /// The account must be under its quota before the email, which may
    /// take it over (the last message crosses the line).
    UnderLimit,
}

/// Stores a new email in the account being written: metadata, detail,
/// thread, indexes, counters, blob reference, quota use and a search index
/// queue entry. The blob must already be stored. Fails with
/// [`Error::OverQuota`] when the account's quota would be exceeded.
pub fn insert(w: &mut Writer<'_, '_>, email: NewEmail<'_>) -> Result<(DocumentId, DocumentId)> {
    insert_checked(w, email, QuotaCheck::MustFit)
}

/// [`insert`] with the quota applied as `check` says.
pub fn insert_checked(
    w: &mut Writer<'_, '_>,
    email: NewEmail<'_>,
    check: QuotaCheck,
) -> Result<(DocumentId, DocumentId)> {
    let account = w.account;
    if email.mailbox_ids.is_empty() {
        return Err(Error::Invalid(
            "an email must be in at least one mailbox".into(),
        ));
    }
    let record = crate::account::get_account(w.tx, account)?
        .ok_or_else(|| Error::NotFound(format!("account {account}")))?;
    let used = crate::account::used_bytes(w.tx, account)?;
    let over = match check {
        QuotaCheck::MustFit => used + email.size > record.quota_bytes,
        QuotaCheck::UnderLimit => used >= record.quota_bytes,
    };
    if over {
        return Err(Error::OverQuota {
            used,
            limit: record.quota_bytes,
        });
    }
    for &m in &email.mailbox_ids {
        if crate::mailbox::get(w.tx, account, m)?.is_none() {
            return Err(Error::NotFound(format!("mailbox {m}")));
        }
    }
    blob::add_ref(w.tx, account, &email.blob, 1)?;
    let id = w.next_id(Collection::Email)?;
    let thread = resolve_thread(w, &email.parsed.envelope)?;
    let mut mailbox_ids = email.mailbox_ids;
    mailbox_ids.sort_unstable();
    mailbox_ids.dedup();
    let meta = EmailMeta {
        blob: email.blob,
        thread_id: thread,
        mailbox_ids,
        keywords: normalize_keywords(&email.keywords),
        size: email.size,
        received_at: email.received_at,
        envelope: email.parsed.envelope.clone(),
    };
    w.tx.set(&meta_key(account, id), &encode(&meta))?;
    // A new id: no older detail to clear.
    w.tx.set_chunked_new(&detail_key(account, id), &encode(&email.parsed.detail))?;
    w.tx.set(
        &keys::acct(account, family::ALL_DATE)
            .time(meta.received_at)
            .u32(id)
            .build(),
        &[],
    )?;
    w.tx.set(
        &keys::acct(account, family::THREAD_DATE)
            .u32(thread)
            .time(meta.received_at)
            .u32(id)
            .build(),
        &[],
    )?;
    reindex(
        w,
        id,
        thread,
        meta.received_at,
        None,
        Some(Placement {
            mailboxes: &meta.mailbox_ids,
            keywords: &meta.keywords,
        }),
    )?;
    w.tx.add(
        &keys::acct(account, family::USED_BYTES).build(),
        email.size as i64,
    )?;
    queue_index(w, id, IndexOp::Index)?;
    w.created(DataType::Email, id);
    Ok((id, thread))
}

/// Search index queue operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum IndexOp {
    /// Index the email's text.
    Index = 1,
    /// Remove the email from the index.
    Remove = 2,
}

/// The account's search index queue (family `60`) as a queue family, its
/// low-water mark at family `61`: every entry is written through it, so the
/// indexer's scans start at the mark and skip the spans it dequeued.
fn index_queue_family(account: AccountId) -> QueueFamily {
    QueueFamily::new(
        keys::acct(account, family::INDEX_QUEUE).prefix_range(),
        keys::acct(account, family::INDEX_QUEUE_MARK).build(),
    )
}

fn queue_index(w: &mut Writer<'_, '_>, id: DocumentId, op: IndexOp) -> Result<()> {
    let key = keys::doc(w.account, family::INDEX_QUEUE, id);
    index_queue_family(w.account).set(w.tx, &key, &[op as u8])?;
    w.tx.set(&keys::index_dirty(w.account), &[])?;
    Ok(())
}

impl IndexOp {
    /// The operation stored as `byte` in the queue (family `60`).
    pub fn from_u8(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(IndexOp::Index),
            2 => Some(IndexOp::Remove),
            _ => None,
        }
    }
}

/// Up to `limit` accounts that have search-index work queued (the `38`
/// markers), in id order, starting after `after`.
pub fn accounts_with_index_work(
    tx: &mut Transaction<'_>,
    after: Option<AccountId>,
    limit: usize,
) -> Result<Vec<AccountId>> {
    let all = keys::index_dirty_all();
    let range = match after {
        None => all,
        Some(a) => KeyRange::new(KeyRange::single(&keys::index_dirty(a)).end, all.end),
    };
    tx.range(&range, RangeOptions::limit(limit))?
        .into_iter()
        .map(|(k, _)| {
            if k.len() != 5 {
                return Err(crate::kv::Error::corrupt(&k, "bad index marker key").into());
            }
            Ok(AccountId(keys::be_u32(&k, 1)))
        })
        .collect()
}

/// Whether `account` has search-index work queued (its `38` marker is set).
pub fn has_index_work(tx: &mut Transaction<'_>, account: AccountId) -> Result<bool> {
    Ok(tx.get(&keys::index_dirty(account))?.is_some())
}

/// Up to `limit` queued search-index operations of `account`, in email id
/// order, starting after `after`.
pub fn index_queue(
    tx: &mut Transaction<'_>,
    account: AccountId,
    after: Option<DocumentId>,
    limit: usize,
) -> Result<Vec<(DocumentId, IndexOp)>> {
    let after = after.map(|id| keys::doc(account, family::INDEX_QUEUE, id));
    index_queue_family(account)
        .entries_after(tx, after.as_deref(), limit)?
        .iter()
        .map(|(k, v)| index_entry(account, k, v))
        .collect()
}

/// An index queue entry's email id and operation.
fn index_entry(account: AccountId, key: &[u8], value: &[u8]) -> Result<(DocumentId, IndexOp)> {
    let key_len = keys::doc(account, family::INDEX_QUEUE, 0).len();
    match value.first().copied().and_then(IndexOp::from_u8) {
        Some(op) if key.len() == key_len => Ok((keys::be_u32(key, key_len - 4), op)),
        _ => Err(crate::kv::Error::corrupt(key, "bad index queue entry").into()),
    }
}

/// Removes the queue entries the indexer has applied: each `(id, op)` is
/// cleared only if the queue still holds `op` for `id` (an email destroyed
/// meanwhile has `Remove` queued over `Index`, which stays). Clears the
/// account's `38` marker when the queue is then empty, and returns whether
/// it is. The read of the queue makes a concurrent enqueue conflict, so the
/// marker is never cleared over new work.
///
/// The queue is consumed from its low-water mark through the last applied
/// entry with one range clear (whatever must stay is written back and the
/// mark stops at it), not a clear per entry: on RocksDB every point delete
/// leaves a tombstone that later scans would walk until a compaction drops
/// it, while scans from the mark never meet the consumed span.
pub fn dequeue_index(
    tx: &mut Transaction<'_>,
    account: AccountId,
    done: &[(DocumentId, IndexOp)],
) -> Result<bool> {
    let queue = index_queue_family(account);
    let mut kept = 0;
    if let Some(last) = done.iter().map(|d| d.0).max() {
        let upto = KeyRange::single(&keys::doc(account, family::INDEX_QUEUE, last)).end;
        let applied: std::collections::HashMap<DocumentId, IndexOp> =
            done.iter().copied().collect();
        let head = queue.head(tx, Some(&upto), usize::MAX)?;
        kept = head.consume(tx, |k, v| {
            let entry = index_entry(account, k, v).ok();
            !entry.is_some_and(|(id, op)| applied.get(&id) == Some(&op))
        })?;
    }
    let empty = kept == 0 && queue.is_empty(tx)?;
    if empty {
        tx.clear(&keys::index_dirty(account))?;
    }
    Ok(empty)
}

/// The metadata of an email.
pub fn get(
    tx: &mut Transaction<'_>,
    account: AccountId,
    id: DocumentId,
) -> Result<Option<EmailMeta>> {
    let key = meta_key(account, id);
    tx.get(&key)?.map(|v| decode(&key, &v)).transpose()
}

/// The detail (headers, body structure) of an email.
pub fn detail(
    tx: &mut Transaction<'_>,
    account: AccountId,
    id: DocumentId,
) -> Result<Option<EmailDetail>> {
    let key = detail_key(account, id);
    tx.get_chunked(&key)?.map(|v| decode(&key, &v)).transpose()
}

/// Changes an email's mailboxes and/or keywords.
pub fn update(
    w: &mut Writer<'_, '_>,
    id: DocumentId,
    mailbox_ids: Option<Vec<DocumentId>>,
    keywords: Option<Vec<String>>,
) -> Result<EmailMeta> {
    let account = w.account;
    let mut meta = get(w.tx, account, id)?.ok_or_else(|| Error::NotFound(format!("email {id}")))?;
    let old_mailboxes = meta.mailbox_ids.clone();
    let old_keywords = meta.keywords.clone();
    if let Some(mut m) = mailbox_ids {
        m.sort_unstable();
        m.dedup();
        if m.is_empty() {
            return Err(Error::Invalid(
                "an email must be in at least one mailbox".into(),
            ));
        }
        for &mailbox in &m {
            if !old_mailboxes.contains(&mailbox)
                && crate::mailbox::get(w.tx, account, mailbox)?.is_none()
            {
                return Err(Error::NotFound(format!("mailbox {mailbox}")));
            }
        }
        meta.mailbox_ids = m;
    }
    if let Some(k) = keywords {
        meta.keywords = normalize_keywords(&k);
    }
    if meta.mailbox_ids == old_mailboxes && meta.keywords == old_keywords {
        return Ok(meta);
    }
    reindex(
        w,
        id,
        meta.thread_id,
        meta.received_at,
        Some(Placement {
            mailboxes: &old_mailboxes,
            keywords: &old_keywords,
        }),
        Some(Placement {
            mailboxes: &meta.mailbox_ids,
            keywords: &meta.keywords,
        }),
    )?;
    if meta.mailbox_ids != old_mailboxes {
        // Into or out of Junk: queue spam training (see `spam`).
        crate::spam::on_mailboxes_changed(w, id, &old_mailboxes, &meta.mailbox_ids)?;
    }
    w.tx.set(&meta_key(account, id), &encode(&meta))?;
    w.updated(DataType::Email, id);
    Ok(meta)
}

/// Destroys an email: every index entry, its detail, its blob reference, its
/// quota use; queues its removal from the search index; destroys its thread
/// when it was the last email in it.
pub fn destroy(w: &mut Writer<'_, '_>, id: DocumentId) -> Result<EmailMeta> {
    let account = w.account;
    let meta = get(w.tx, account, id)?.ok_or_else(|| Error::NotFound(format!("email {id}")))?;
    reindex(
        w,
        id,
        meta.thread_id,
        meta.received_at,
        Some(Placement {
            mailboxes: &meta.mailbox_ids,
            keywords: &meta.keywords,
        }),
        None,
    )?;
    w.tx.clear(&meta_key(account, id))?;
    w.tx.clear_chunked(&detail_key(account, id))?;
    crate::envelope::clear(w.tx, account, id)?;
    w.tx.clear(
        &keys::acct(account, family::ALL_DATE)
            .time(meta.received_at)
            .u32(id)
            .build(),
    )?;
    w.tx.clear(
        &keys::acct(account, family::THREAD_DATE)
            .u32(meta.thread_id)
            .time(meta.received_at)
            .u32(id)
            .build(),
    )?;
    blob::add_ref(w.tx, account, &meta.blob, -1)?;
    w.tx.add(
        &keys::acct(account, family::USED_BYTES).build(),
        -(meta.size as i64),
    )?;
    queue_index(w, id, IndexOp::Remove)?;
    crate::spam::forget(w.tx, account, id)?;
    w.destroyed(DataType::Email, id);
    if thread_emails(w.tx, account, meta.thread_id)?.is_empty() {
        w.tx.clear(&keys::doc(account, family::THREAD, meta.thread_id))?;
        w.destroyed(DataType::Thread, meta.thread_id);
    } else {
        w.updated(DataType::Thread, meta.thread_id);
    }
    Ok(meta)
}

/// The emails of a thread, oldest first.
pub fn thread_emails(
    tx: &mut Transaction<'_>,
    account: AccountId,
    thread: DocumentId,
) -> Result<Vec<DocumentId>> {
    let range = keys::acct(account, family::THREAD_DATE)
        .u32(thread)
        .prefix_range();
    Ok(tx
        .range(&range, RangeOptions::default())?
        .into_iter()
        .map(|(k, _)| keys::be_u32(&k, k.len() - 4))
        .collect())
}

/// Whether a thread exists.
pub fn thread_exists(
    tx: &mut Transaction<'_>,
    account: AccountId,
    thread: DocumentId,
) -> Result<bool> {
    Ok(tx
        .get(&keys::doc(account, family::THREAD, thread))?
        .is_some())
}

/// Which date index a listing reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// Every email of the account.
    All,
    /// The emails of a mailbox.
    Mailbox(DocumentId),
    /// The emails of a mailbox without `$seen`.
    MailboxUnseen(DocumentId),
}

/// A position in a date listing: (received_at, email id).
pub type Cursor = (i64, DocumentId);

/// Up to `limit` emails of a listing by arrival date, newest first when
/// `newest_first`, starting after `after` (exclusive). One range read: the
/// cost does not depend on the size of the mailbox.
pub fn list_by_date(
    tx: &mut Transaction<'_>,
    account: AccountId,
    listing: Listing,
    newest_first: bool,
    after: Option<Cursor>,
    limit: usize,
) -> Result<Vec<Cursor>> {
    let base: Key = match listing {
        Listing::All => keys::acct(account, family::ALL_DATE),
        Listing::Mailbox(m) => keys::acct(account, family::MAILBOX_DATE).u32(m),
        Listing::MailboxUnseen(m) => keys::acct(account, family::MAILBOX_UNSEEN_DATE).u32(m),
    };
    let prefix_len = base.clone().build().len();
    let full = base.clone().prefix_range();
    let range = match after {
        None => full,
        Some((received, id)) => {
            let at = base.time(received).u32(id).build();
            if newest_first {
                KeyRange::new(full.begin, at)
            } else {
                KeyRange::new(KeyRange::single(&at).end, full.end)
            }
        }
    };
    let options = RangeOptions {
        reverse: newest_first,
        limit,
    };
    tx.range(&range, options)?
        .into_iter()
        .map(|(k, _)| {
            if k.len() != prefix_len + 12 {
                return Err(crate::kv::Error::corrupt(&k, "bad date index key").into());
            }
            Ok((
                keys::decode_time(&k[prefix_len..prefix_len + 8]),
                keys::be_u32(&k, prefix_len + 8),
            ))
        })
        .collect()
}

/// Whether `listing` holds the email at `at` (its receivedAt and id): one
/// point read of the date index key, no metadata read.
pub fn in_listing(
    tx: &mut Transaction<'_>,
    account: AccountId,
    listing: Listing,
    at: Cursor,
) -> Result<bool> {
    let base: Key = match listing {
        Listing::All => keys::acct(account, family::ALL_DATE),
        Listing::Mailbox(m) => keys::acct(account, family::MAILBOX_DATE).u32(m),
        Listing::MailboxUnseen(m) => keys::acct(account, family::MAILBOX_UNSEEN_DATE).u32(m),
    };
    Ok(tx.get(&base.time(at.0).u32(at.1).build())?.is_some())
}

/// Every email with `keyword` (lowercase), by id.
pub fn with_keyword(
    tx: &mut Transaction<'_>,
    account: AccountId,
    keyword: &str,
) -> Result<Vec<DocumentId>> {
    let range = keys::acct(account, family::KEYWORD)
        .bytes(keyword.as_bytes())
        .u8(0)
        .prefix_range();
    Ok(tx
        .range(&range, RangeOptions::default())?
        .into_iter()
        .map(|(k, _)| keys::be_u32(&k, k.len() - 4))
        .collect())
}

/// Up to `limit` emails' metadata in id order, starting after `after`
/// (exclusive): one range read over the metadata records, for queries
/// that must look at every email of an account (a scan continues from
/// the last id returned).
pub fn list_metas(
    tx: &mut Transaction<'_>,
    account: AccountId,
    after: Option<DocumentId>,
    limit: usize,
) -> Result<Vec<(DocumentId, EmailMeta)>> {
    let full = keys::acct(account, family::EMAIL).prefix_range();
    let range = match after {
        None => full,
        Some(id) => KeyRange::new(KeyRange::single(&meta_key(account, id)).end, full.end),
    };
    let key_len = meta_key(account, 0).len();
    tx.range(&range, RangeOptions::limit(limit))?
        .into_iter()
        .map(|(k, v)| {
            if k.len() != key_len {
                return Err(crate::kv::Error::corrupt(&k, "bad email key").into());
            }
            Ok((keys::be_u32(&k, k.len() - 4), decode(&k, &v)?))
        })
        .collect()
}
