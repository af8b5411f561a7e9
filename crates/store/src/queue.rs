//! The outbound queue: messages waiting to be delivered to other servers
//! (and delayed sends), durable across restarts and crashes.
//!
//! A queued message is one record (`0x40 ++ queue id`) holding a reference
//! to the raw message's blob, the envelope with its DSN parameters, and one
//! status per recipient. The blob stays referenced while the message is
//! queued: the queue holds its references as the pseudo-account
//! [`QUEUE_HOLDER`] (account ids start at 1), so the blob collector sees
//! them like any account's.
//!
//! Workers find due work with one range read of the due index
//! (`0x41 ++ time ++ queue id`), a [`QueueFamily`] read from its low-water
//! mark (`0x45`): the entries leased before are cleared as spans and never
//! walked again. Taking work is a *lease*: in one
//! transaction a worker moves each due message's index entry to the lease's
//! expiry and writes a random lease token into the record. Two workers
//! racing for the same message conflict on the index range, so exactly one
//! gets it. A worker that dies leaves its lease to lapse: at the lease's
//! expiry the entry is due again and another worker takes the message.
//! The outcome of an attempt is written in one short transaction that
//! checks the token first ([`finish_attempt`]); a worker whose lease was
//! taken over writes nothing.
//!
//! Messages that cannot be delivered as they are (a missing blob, an
//! unparsable message) are *held* in the error queue (`0x42 ++ queue id`)
//! and leave the due index until an operator retries or cancels them.
//!
//! A message sent through a JMAP EmailSubmission also has a delivery status
//! record in the sender's account (`20 ++ aid ++ 70 ++ submission id`):
//! its undo status and one delivery state per recipient, updated (with an
//! EmailSubmission change) as delivery progresses.

use serde::{Deserialize, Serialize};

use crate::changes::Writer;
use crate::envelope::{DsnNotify, DsnRet, Envelope};
use crate::error::{Error, Result, decode, encode};
use crate::keys::{self, Key};
use crate::kv::{KeyRange, Kv, QueueFamily, RangeOptions, Transaction};
use crate::types::{AccountId, BlobHash, DataType, DocumentId};
use crate::{blob, now};

/// A queued message's id: its creation time in microseconds shifted left
/// by 12 bits, plus 12 random bits. Ids sort by age.
pub type QueueId = u64;

/// The pseudo-account whose blob references keep queued messages' blobs.
pub const QUEUE_HOLDER: AccountId = AccountId(0);

/// Longest reply text kept per recipient, in bytes.
const MAX_REPLY: usize = 512;

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptState {
    /// Not delivered yet; will be tried (again).
    Pending,
    /// Accepted by the next hop (or stored locally).
    Delivered,
    /// Failed for good (a 5xx, or the message expired).
    Failed,
}

/// One recipient of a queued message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedRecipient {
    /// The forward-path.
    pub address: String,
    /// NOTIFY= as given (`None`: not given).
    pub notify: Option<DsnNotify>,
    /// ORCPT= as given.
    pub orcpt: Option<String>,
    /// Its state.
    pub state: RcptState,
    /// The last reply concerning it (`550 5.1.1 ...`), if any.
    pub reply: Option<String>,
    /// The host that gave that reply.
    pub remote_mta: Option<String>,
    /// Whether the DSN its final state calls for was sent (or none is
    /// due). A record is removed once every recipient is final and
    /// notified.
    pub notified: bool,
}

/// An attempt's lease on a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Random; [`finish_attempt`] must present it.
    pub token: u64,
    /// When the lease lapses (unix seconds).
    pub until: i64,
}

/// A queued message (record `0x40 ++ id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    /// The raw message, as it is to be sent (before DKIM signing).
    pub blob: BlobHash,
    /// Its size in bytes.
    pub size: u64,
    /// The local account that sent it, if any (DSNs go to its inbox).
    pub account: Option<AccountId>,
    /// The JMAP EmailSubmission it belongs to, in `account`.
    pub submission: Option<DocumentId>,
    /// MAIL FROM; empty for the null sender.
    pub mail_from: String,
    /// RET=.
    pub ret: Option<DsnRet>,
    /// ENVID=.
    pub envid: Option<String>,
    /// BODY=8BITMIME.
    pub body_8bitmime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// The recipients.
    pub recipients: Vec<QueuedRecipient>,
    /// When it was queued (unix seconds).
    pub created: i64,
    /// Not to be sent before this time (JMAP sendAt).
    pub send_at: i64,
    /// When it expires: set at the first attempt from the worker's
    /// configured lifetime (`send_at + [queue] expiry`).
    pub expires: Option<i64>,
    /// Delivery attempts made.
    pub attempts: u32,
    /// The time of its due index entry: the next attempt, or its lease's
    /// expiry while leased. Meaningless while held.
    pub due: i64,
    /// The last temporary error, for `tern queue show`.
    pub last_error: Option<String>,
    /// The current lease, if a worker holds it.
    pub lease: Option<Lease>,
    /// Whether a delay notice was sent.
    pub delay_notified: bool,
    /// Why it is in the error queue, when it is.
    pub held: Option<String>,
}

impl QueuedMessage {
    /// Whether any recipient is still pending.
    pub fn has_pending(&self) -> bool {
        self.recipients
            .iter()
            .any(|r| r.state == RcptState::Pending)
    }

    /// Whether the record has nothing left to do.
    pub fn is_done(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| r.state != RcptState::Pending && r.notified)
    }
}

/// What to queue.
#[derive(Debug, Clone)]
pub struct NewMessage<'a> {
    /// The blob of the raw message (must be complete).
    pub blob: BlobHash,
    /// Its size.
    pub size: u64,
    /// The sending local account, if any.
    pub account: Option<AccountId>,
    /// The EmailSubmission (in `account`) to keep informed.
    pub submission: Option<DocumentId>,
    /// Envelope and DSN parameters; `recipients` are the ones to queue.
    pub envelope: &'a Envelope,
    /// Not before (unix seconds); `now` or earlier for at once.
    pub send_at: i64,
}

// ------------------------------------------------------------- keys ---

const RECORD: u8 = 0x40;
const DUE: u8 = 0x41;
const HELD: u8 = 0x42;
const DEPTH: u8 = 0x43;
const WAKE: u8 = 0x44;
const DUE_MARK: u8 = 0x45;
const SUBMISSION_STATUS: u8 = 0x70;

/// `0x40 ++ id` -> chunked record [`QueuedMessage`].
pub fn record_key(id: QueueId) -> Vec<u8> {
    Key::default().u8(RECORD).u64(id).build()
}

fn records() -> KeyRange {
    KeyRange::prefix(&[RECORD])
}

/// `0x41 ++ time ++ id` -> empty.
fn due_key(at: i64, id: QueueId) -> Vec<u8> {
    Key::default().u8(DUE).time(at).u64(id).build()
}

/// The due index `0x41` as a queue family, its low-water mark at `0x45`:
/// every entry is written through it ([`QueueFamily::set`]), so scans
/// start at the mark and skip the spans leased before.
fn due_index() -> QueueFamily {
    QueueFamily::new(KeyRange::prefix(&[DUE]), vec![DUE_MARK])
}

/// `0x42 ++ id` -> empty.
fn held_key(id: QueueId) -> Vec<u8> {
    Key::default().u8(HELD).u64(id).build()
}

/// `0x43` -> counter: messages in the queue (held ones included).
const DEPTH_KEY: &[u8] = &[DEPTH];

/// `0x44` -> counter bumped by every write that makes work due: workers
/// watch it.
pub const WAKE_KEY: &[u8] = &[WAKE];

/// `20 ++ aid ++ 70 ++ submission id` -> record [`SubmissionStatus`].
fn status_key(account: AccountId, submission: DocumentId) -> Vec<u8> {
    keys::doc(account, SUBMISSION_STATUS, submission)
}

fn parse_id(key: &[u8], at: usize) -> Result<QueueId> {
    key.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| crate::kv::Error::corrupt(key, "bad queue key").into())
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_REPLY {
        let mut end = MAX_REPLY;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

// ---------------------------------------------------- record access ---

/// A queued message.
pub fn get(tx: &mut Transaction<'_>, id: QueueId) -> Result<Option<QueuedMessage>> {
    let key = record_key(id);
    tx.get_chunked(&key)?.map(|v| decode(&key, &v)).transpose()
}

fn put(tx: &mut Transaction<'_>, id: QueueId, msg: &QueuedMessage) -> Result<()> {
    tx.set_chunked(&record_key(id), &encode(msg))?;
    Ok(())
}

/// Removes a message: record, index entries, blob reference, count.
fn remove(tx: &mut Transaction<'_>, id: QueueId, msg: &QueuedMessage) -> Result<()> {
    tx.clear_chunked(&record_key(id))?;
    if msg.held.is_some() {
        tx.clear(&held_key(id))?;
    } else {
        tx.clear(&due_key(msg.due, id))?;
    }
    blob::add_ref(tx, QUEUE_HOLDER, &msg.blob, -1)?;
    tx.add(DEPTH_KEY, -1)?;
    Ok(())
}

fn new_id(tx: &mut Transaction<'_>) -> Result<QueueId> {
    use rand::Rng;
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    loop {
        let id = (micros << 12) | rand::thread_rng().gen_range(0..4096u64);
        if tx.get(&record_key(id))?.is_none() {
            return Ok(id);
        }
    }
}

/// Queues a message inside `tx` and returns its id. The blob must be
/// complete (the queue takes a reference to it). Recipients start
/// pending; a recipient with `NOTIFY=NEVER` (or without FAILURE) needs no
/// failure DSN, which its `notified` flag records from the start of its
/// final state.
pub fn enqueue_in(tx: &mut Transaction<'_>, msg: &NewMessage<'_>) -> Result<QueueId> {
    if msg.envelope.recipients.is_empty() {
        return Err(Error::Invalid("a queued message needs a recipient".into()));
    }
    blob::add_ref(tx, QUEUE_HOLDER, &msg.blob, 1)?;
    let id = new_id(tx)?;
    let created = now();
    let due = msg.send_at.max(created);
    let record = QueuedMessage {
        blob: msg.blob,
        size: msg.size,
        account: msg.account,
        submission: msg.submission,
        mail_from: msg.envelope.mail_from.clone(),
        ret: msg.envelope.ret,
        envid: msg.envelope.envid.clone(),
        body_8bitmime: msg.envelope.body_8bitmime,
        smtputf8: msg.envelope.smtputf8,
        recipients: msg
            .envelope
            .recipients
            .iter()
            .map(|r| QueuedRecipient {
                address: r.address.clone(),
                notify: r.notify,
                orcpt: r.orcpt.clone(),
                state: RcptState::Pending,
                reply: None,
                remote_mta: None,
                notified: false,
            })
            .collect(),
        created,
        send_at: msg.send_at,
        expires: None,
        attempts: 0,
        due,
        last_error: None,
        lease: None,
        delay_notified: false,
        held: None,
    };
    put(tx, id, &record)?;
    due_index().set(tx, &due_key(due, id), &[])?;
    tx.add(DEPTH_KEY, 1)?;
    tx.add(WAKE_KEY, 1)?;
    Ok(id)
}

/// Stores `raw` as a blob and queues it (two steps: the blob first, in its
/// own transactions when large; then the record). Returns once durable.
pub fn enqueue(
    kv: &Kv,
    raw: &[u8],
    account: Option<AccountId>,
    envelope: &Envelope,
    send_at: i64,
) -> Result<QueueId> {
    let hash = blob::put(kv, raw)?;
    kv.transact(|tx| {
        enqueue_in(
            tx,
            &NewMessage {
                blob: hash,
                size: raw.len() as u64,
                account,
                submission: None,
                envelope,
                send_at,
            },
        )
    })
}

/// One message leased to a worker.
#[derive(Debug, Clone)]
pub struct Leased {
    /// Its id.
    pub id: QueueId,
    /// The lease's token, for [`finish_attempt`].
    pub token: u64,
    /// The record as leased.
    pub message: QueuedMessage,
}

/// Leases up to `limit` messages due at `now` for `lease_secs` seconds, in
/// one transaction. A leased message's undo status (if it belongs to a
/// JMAP submission) becomes final: sending has begun.
///
/// The due entries taken are cleared as one span from the due index's
/// mark (one range clear, the mark moved past it), not one by one: point
/// tombstones would lie in the way of every later lease's scan.
pub fn lease_due(kv: &Kv, now: i64, limit: usize, lease_secs: i64) -> Result<Vec<Leased>> {
    kv.transact(|tx| {
        use rand::Rng;
        let index = due_index();
        let end = Key::default().u8(DUE).time(now + 1).build();
        let head = index.head(tx, Some(&end), limit)?;
        let due: Vec<Vec<u8>> = head.entries().iter().map(|(k, _)| k.clone()).collect();
        head.consume(tx, |_, _| false)?;
        let mut out = Vec::with_capacity(due.len());
        for key in due {
            let id = parse_id(&key, 9)?;
            let Some(mut msg) = get(tx, id)? else {
                // An index entry without its record: drop it.
                continue;
            };
            let token = rand::thread_rng().r#gen::<u64>() | 1;
            let until = now + lease_secs.max(1);
            msg.lease = Some(Lease { token, until });
            msg.due = until;
            index.set(tx, &due_key(until, id), &[])?;
            put(tx, id, &msg)?;
            if let (Some(account), Some(submission)) = (msg.account, msg.submission) {
                update_status(tx, account, submission, |s| {
                    if s.undo == UndoStatus::Pending {
                        s.undo = UndoStatus::Final;
                        true
                    } else {
                        false
                    }
                })?;
            }
            out.push(Leased {
                id,
                token,
                message: msg,
            });
        }
        Ok(out)
    })
}

/// When the next message falls due (a leased one: when its lease lapses),
/// if one falls due before `before`. The scan starts at the due index's
/// mark and stops at `before`: short of the entries of leases that lapse
/// later, among which lie the removed entries of leases already finished.
pub fn next_due(kv: &Kv, before: i64) -> Result<Option<i64>> {
    kv.read(|tx| {
        let end = Key::default().u8(DUE).time(before).build();
        let first = due_index().first_from_mark(tx, Some(&end))?;
        Ok(first.map(|(k, _)| keys::decode_time(&k[1..9])))
    })
}

/// A recipient's outcome in one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptOutcome {
    /// Index into the message's recipients.
    pub index: usize,
    /// The new state (`Pending`: a temporary failure).
    pub state: RcptState,
    /// The reply (or a description of the failure).
    pub reply: String,
    /// The host that answered.
    pub remote_mta: Option<String>,
    /// Whether the DSN this state calls for was sent, or none is due.
    pub notified: bool,
}

/// The outcome of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attempt {
    /// Per-recipient outcomes (recipients not listed keep their state).
    pub recipients: Vec<RcptOutcome>,
    /// When to try the pending recipients again.
    pub retry_at: i64,
    /// The expiry to record (set on the first attempt).
    pub expires: Option<i64>,
    /// A summary of what went wrong, for `tern queue show`.
    pub error: Option<String>,
    /// A delay notice was sent in this attempt.
    pub delay_notified: bool,
    /// The blobs of the DSNs this attempt delivered to the sender (listed
    /// in the submission's `dsnBlobIds`).
    pub dsn_blobs: Vec<BlobHash>,
}

/// What [`finish_attempt`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Every recipient is final: the message left the queue.
    Removed,
    /// Recipients are pending: the next attempt is at this time.
    Rescheduled(i64),
    /// The lease was no longer ours (it lapsed and another worker took
    /// the message, or the message was cancelled): nothing was written.
    LeaseLost,
}

/// Records the outcome of an attempt on a leased message, releases the
/// lease, and removes the message when nothing is left to do; updates the
/// JMAP submission's delivery status. One transaction.
pub fn finish_attempt(kv: &Kv, id: QueueId, token: u64, attempt: &Attempt) -> Result<Finished> {
    kv.transact(|tx| finish_in(tx, id, token, attempt))
}

/// [`finish_attempt`] for many attempts (on distinct messages) in one
/// transaction: the outbound workers' recorder commits the outcomes of
/// concurrent deliveries together. One [`Finished`] per attempt, in order;
/// nothing is recorded unless all are.
pub fn finish_attempts(kv: &Kv, attempts: &[(QueueId, u64, &Attempt)]) -> Result<Vec<Finished>> {
    kv.transact(|tx| {
        attempts
            .iter()
            .map(|(id, token, attempt)| finish_in(tx, *id, *token, attempt))
            .collect()
    })
}

/// [`finish_attempt`] inside a transaction.
pub fn finish_in(
    tx: &mut Transaction<'_>,
    id: QueueId,
    token: u64,
    attempt: &Attempt,
) -> Result<Finished> {
    let Some(mut msg) = get(tx, id)? else {
        return Ok(Finished::LeaseLost);
    };
    if msg.lease.map(|l| l.token) != Some(token) || msg.held.is_some() {
        return Ok(Finished::LeaseLost);
    }
    for o in &attempt.recipients {
        let Some(r) = msg.recipients.get_mut(o.index) else {
            continue;
        };
        r.state = o.state;
        r.reply = Some(truncate(o.reply.clone()));
        r.remote_mta = o.remote_mta.clone();
        r.notified = o.notified;
    }
    msg.attempts += 1;
    if msg.expires.is_none() {
        msg.expires = attempt.expires;
    }
    if attempt.error.is_some() {
        msg.last_error = attempt.error.clone().map(truncate);
    }
    msg.delay_notified |= attempt.delay_notified;
    msg.lease = None;
    if let (Some(account), Some(submission)) = (msg.account, msg.submission) {
        let recipients = msg.recipients.clone();
        update_status(tx, account, submission, |s| {
            s.undo = UndoStatus::Final;
            for r in &recipients {
                let delivered = match r.state {
                    RcptState::Pending => Delivery::Queued,
                    RcptState::Delivered => Delivery::Yes,
                    RcptState::Failed => Delivery::No,
                };
                let reply = r.reply.clone().unwrap_or_default();
                match s.recipients.iter_mut().find(|x| x.address == r.address) {
                    Some(x) => {
                        x.delivered = delivered;
                        x.reply = reply;
                    }
                    None => s.recipients.push(RecipientStatus {
                        address: r.address.clone(),
                        delivered,
                        reply,
                    }),
                }
            }
            for hash in &attempt.dsn_blobs {
                if !s.dsn_blobs.contains(hash) {
                    s.dsn_blobs.push(*hash);
                }
            }
            true
        })?;
    }
    tx.clear(&due_key(msg.due, id))?;
    if msg.is_done() {
        msg.due = 0;
        tx.clear_chunked(&record_key(id))?;
        blob::add_ref(tx, QUEUE_HOLDER, &msg.blob, -1)?;
        tx.add(DEPTH_KEY, -1)?;
        return Ok(Finished::Removed);
    }
    // Final recipients whose DSN failed to go out are retried with
    // the pending ones.
    msg.due = attempt.retry_at;
    due_index().set(tx, &due_key(msg.due, id), &[])?;
    put(tx, id, &msg)?;
    Ok(Finished::Rescheduled(msg.due))
}

/// Gives leased messages back unattempted (a worker stopping with leases
/// it did not start): each whose lease is still `token` is due again at
/// once. Returns how many were released.
pub fn release(kv: &Kv, leases: &[(QueueId, u64)]) -> Result<usize> {
    kv.transact(|tx| {
        let mut released = 0;
        let at = now();
        for &(id, token) in leases {
            let Some(mut msg) = get(tx, id)? else {
                continue;
            };
            if msg.lease.map(|l| l.token) != Some(token) || msg.held.is_some() {
                continue;
            }
            tx.clear(&due_key(msg.due, id))?;
            msg.lease = None;
            msg.due = at;
            due_index().set(tx, &due_key(at, id), &[])?;
            put(tx, id, &msg)?;
            released += 1;
        }
        if released > 0 {
            tx.add(WAKE_KEY, 1)?;
        }
        Ok(released)
    })
}

/// Moves a leased message to the error queue with `reason`.
pub fn hold(kv: &Kv, id: QueueId, token: u64, reason: &str) -> Result<bool> {
    kv.transact(|tx| {
        let Some(mut msg) = get(tx, id)? else {
            return Ok(false);
        };
        if msg.lease.map(|l| l.token) != Some(token) {
            return Ok(false);
        }
        tx.clear(&due_key(msg.due, id))?;
        msg.lease = None;
        msg.held = Some(truncate(reason.to_owned()));
        put(tx, id, &msg)?;
        tx.set(&held_key(id), &[])?;
        Ok(true)
    })
}

/// Makes a message due now: out of the error queue, or ahead of its
/// backoff. Its lease, if any, is dropped (the worker holding it will find
/// its lease lost). Fails with [`Error::NotFound`] for an unknown id.
pub fn retry(kv: &Kv, id: QueueId) -> Result<()> {
    kv.transact(|tx| {
        let mut msg = get(tx, id)?.ok_or_else(|| Error::NotFound(format!("queue id {id:x}")))?;
        if msg.held.take().is_some() {
            tx.clear(&held_key(id))?;
        } else {
            tx.clear(&due_key(msg.due, id))?;
        }
        msg.lease = None;
        msg.due = now();
        due_index().set(tx, &due_key(msg.due, id), &[])?;
        put(tx, id, &msg)?;
        tx.add(WAKE_KEY, 1)?;
        Ok(())
    })
}

/// Removes a message from the queue (no DSN). Returns it.
pub fn cancel(kv: &Kv, id: QueueId) -> Result<QueuedMessage> {
    kv.transact(|tx| cancel_in(tx, id))
}

/// [`cancel`] inside a transaction; fails with [`Error::NotFound`].
pub fn cancel_in(tx: &mut Transaction<'_>, id: QueueId) -> Result<QueuedMessage> {
    let msg = get(tx, id)?.ok_or_else(|| Error::NotFound(format!("queue id {id:x}")))?;
    remove(tx, id, &msg)?;
    Ok(msg)
}

/// Every queued message (held ones included), oldest first.
pub fn list(kv: &Kv) -> Result<Vec<(QueueId, QueuedMessage)>> {
    let mut out = Vec::new();
    let mut begin = records().begin;
    let end = records().end;
    loop {
        let page = kv.read(|tx| -> Result<Vec<(QueueId, QueuedMessage)>> {
            let keys = tx.range_snapshot(
                &KeyRange::new(begin.clone(), end.clone()),
                RangeOptions::limit(256),
            )?;
            let mut page = Vec::new();
            for (key, _) in keys {
                // Skip the chunks of large records (longer keys).
                if key.len() != 9 {
                    continue;
                }
                let id = parse_id(&key, 1)?;
                if let Some(msg) = get(tx, id)? {
                    page.push((id, msg));
                }
            }
            Ok(page)
        })?;
        let Some(last) = page.last().map(|(id, _)| *id) else {
            break;
        };
        begin = KeyRange::prefix(&record_key(last)).end;
        out.extend(page);
    }
    Ok(out)
}

/// Ids of the messages in the error queue.
pub fn held(kv: &Kv) -> Result<Vec<QueueId>> {
    kv.read(|tx| {
        tx.range_snapshot(&KeyRange::prefix(&[HELD]), RangeOptions::default())?
            .into_iter()
            .map(|(k, _)| parse_id(&k, 1))
            .collect()
    })
}

/// Figures for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Messages in the queue, held ones included.
    pub depth: u64,
    /// Messages in the error queue.
    pub held: u64,
    /// When the oldest queued message was queued (unix seconds).
    pub oldest: Option<i64>,
}

/// Queue depth, error queue size and the oldest message's age, from a
/// counter and two short range reads.
pub fn stats(kv: &Kv) -> Result<Stats> {
    kv.read(|tx| {
        let depth = tx.get_counter(DEPTH_KEY)?.max(0) as u64;
        let held = tx
            .range_snapshot(&KeyRange::prefix(&[HELD]), RangeOptions::default())?
            .len() as u64;
        let first = tx.range_snapshot(&records(), RangeOptions::limit(1))?;
        let oldest = match first.first() {
            Some((k, _)) => Some((parse_id(k, 1)? >> 12) as i64 / 1_000_000),
            None => None,
        };
        Ok(Stats {
            depth,
            held,
            oldest,
        })
    })
}

// ------------------------------------------------ submission status ---

/// A JMAP EmailSubmission's undo status (RFC 8621 section 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UndoStatus {
    /// Not sent yet; may be cancelled.
    Pending,
    /// Sending has begun.
    Final,
    /// Cancelled before sending.
    Canceled,
}

/// Whether a recipient got the message (RFC 8621 `DeliveryStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Still in the queue.
    Queued,
    /// Delivered (accepted by the next hop or stored locally).
    Yes,
    /// Failed.
    No,
    /// Not known.
    Unknown,
}

/// One recipient's delivery status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientStatus {
    /// The recipient's address.
    pub address: String,
    /// Whether it was delivered.
    pub delivered: Delivery,
    /// The last SMTP reply concerning it.
    pub reply: String,
}

/// The delivery status of a JMAP EmailSubmission (record at
/// `20 ++ aid ++ 70 ++ submission id`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmissionStatus {
    /// The queued message, when some recipients went through the queue.
    pub queue_id: Option<QueueId>,
    /// The undo status.
    pub undo: UndoStatus,
    /// Per recipient.
    pub recipients: Vec<RecipientStatus>,
    /// The DSNs delivered to the sender about this submission, oldest
    /// first (JMAP `dsnBlobIds`). Added in record version 2.
    pub dsn_blobs: Vec<BlobHash>,
}

/// [`SubmissionStatus`] as record version 1 wrote it (before `dsn_blobs`).
#[derive(Deserialize)]
struct SubmissionStatusV1 {
    queue_id: Option<QueueId>,
    undo: UndoStatus,
    recipients: Vec<RecipientStatus>,
}

/// The version byte of [`SubmissionStatus`] records written now.
const STATUS_VERSION: u8 = 2;

fn encode_status(status: &SubmissionStatus) -> Vec<u8> {
    let mut out = vec![STATUS_VERSION];
    postcard::to_io(status, &mut out).expect("serializing to a Vec cannot fail");
    out
}

fn decode_status(key: &[u8], bytes: &[u8]) -> Result<SubmissionStatus> {
    let corrupt = |e: postcard::Error| -> Error {
        crate::kv::Error::corrupt(key, format!("submission status: {e}")).into()
    };
    match bytes.split_first() {
        Some((1, rest)) => {
            let v1: SubmissionStatusV1 = postcard::from_bytes(rest).map_err(corrupt)?;
            Ok(SubmissionStatus {
                queue_id: v1.queue_id,
                undo: v1.undo,
                recipients: v1.recipients,
                dsn_blobs: Vec::new(),
            })
        }
        Some((&STATUS_VERSION, rest)) => postcard::from_bytes(rest).map_err(corrupt),
        _ => Err(crate::kv::Error::corrupt(key, "unknown submission status version").into()),
    }
}

/// The delivery status of a submission.
pub fn get_status(
    tx: &mut Transaction<'_>,
    account: AccountId,
    submission: DocumentId,
) -> Result<Option<SubmissionStatus>> {
    let key = status_key(account, submission);
    tx.get_chunked(&key)?
        .map(|v| decode_status(&key, &v))
        .transpose()
}

/// Writes a submission's delivery status (the caller records the change).
pub fn put_status(
    tx: &mut Transaction<'_>,
    account: AccountId,
    submission: DocumentId,
    status: &SubmissionStatus,
) -> Result<()> {
    tx.set_chunked(&status_key(account, submission), &encode_status(status))?;
    Ok(())
}

/// Removes a submission's delivery status.
pub fn clear_status(
    tx: &mut Transaction<'_>,
    account: AccountId,
    submission: DocumentId,
) -> Result<()> {
    tx.clear_chunked(&status_key(account, submission))?;
    Ok(())
}

/// Applies `f` to a submission's status when it still exists; when `f`
/// reports a change, writes it and records an EmailSubmission update in
/// the account's change log.
fn update_status(
    tx: &mut Transaction<'_>,
    account: AccountId,
    submission: DocumentId,
    f: impl FnOnce(&mut SubmissionStatus) -> bool,
) -> Result<()> {
    let Some(mut status) = get_status(tx, account, submission)? else {
        return Ok(());
    };
    if !f(&mut status) {
        return Ok(());
    }
    let mut w = Writer::begin(tx, account)?;
    put_status(w.tx, account, submission, &status)?;
    w.updated(DataType::EmailSubmission, submission);
    w.finish()?;
    Ok(())
}

/// Cancels a pending submission's queued message (JMAP undoStatus
/// `canceled`) inside the caller's transaction. Returns false when it can
/// no longer be cancelled: sending has begun (the message is leased or
/// was attempted) or it left the queue.
pub fn cancel_pending(tx: &mut Transaction<'_>, id: QueueId) -> Result<bool> {
    let Some(msg) = get(tx, id)? else {
        return Ok(false);
    };
    if msg.lease.is_some() || msg.attempts > 0 || msg.send_at <= now() {
        return Ok(false);
    }
    remove(tx, id, &msg)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MailStore;
    use crate::envelope::EnvelopeRecipient;

    fn store() -> (tempfile::TempDir, MailStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn envelope(to: &[&str]) -> Envelope {
        Envelope {
            mail_from: "a@local.test".into(),
            recipients: to
                .iter()
                .map(|a| EnvelopeRecipient {
                    address: (*a).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    const RAW: &[u8] = b"From: a@local.test\r\nTo: b@remote.test\r\nSubject: hi\r\n\r\nhello\r\n";

    fn outcome(index: usize, state: RcptState) -> RcptOutcome {
        RcptOutcome {
            index,
            state,
            reply: "250 2.0.0 ok".into(),
            remote_mta: Some("mx.remote.test".into()),
            notified: state != RcptState::Failed,
        }
    }

    #[test]
    fn queued_message_keeps_its_blob_until_it_leaves() {
        let (_dir, store) = store();
        let kv = store.kv();
        let id = enqueue(kv, RAW, None, &envelope(&["b@remote.test"]), 0).unwrap();
        let hash = BlobHash::of(RAW);
        assert_eq!(
            kv.read(|tx| blob::refs(tx, QUEUE_HOLDER, &hash)).unwrap(),
            1
        );
        // The collector must not take it, however old.
        assert_eq!(blob::collect(kv, -1).unwrap(), 0);
        assert_eq!(stats(kv).unwrap().depth, 1);

        let leased = lease_due(kv, now(), 10, 60).unwrap();
        assert_eq!(leased.len(), 1);
        let done = finish_attempt(
            kv,
            id,
            leased[0].token,
            &Attempt {
                recipients: vec![outcome(0, RcptState::Delivered)],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(done, Finished::Removed);
        assert_eq!(
            kv.read(|tx| blob::refs(tx, QUEUE_HOLDER, &hash)).unwrap(),
            0
        );
        assert_eq!(blob::collect(kv, -1).unwrap(), 1);
        assert_eq!(stats(kv).unwrap(), Stats::default());
        assert!(list(kv).unwrap().is_empty());
    }

    #[test]
    fn a_lease_is_exclusive_until_it_lapses() {
        let (_dir, store) = store();
        let kv = store.kv();
        let id = enqueue(kv, RAW, None, &envelope(&["b@remote.test"]), 0).unwrap();
        let t = now();
        let first = lease_due(kv, t, 10, 30).unwrap();
        assert_eq!(first.len(), 1);
        // Leased: not due for anyone else until the lease lapses.
        assert!(lease_due(kv, t, 10, 30).unwrap().is_empty());
        assert_eq!(next_due(kv, i64::MAX).unwrap(), Some(t + 30));
        // The first worker "crashed"; at the lapse another takes over.
        let second = lease_due(kv, t + 31, 10, 30).unwrap();
        assert_eq!(second.len(), 1);
        assert_ne!(second[0].token, first[0].token);
        // The first worker's late result is refused.
        let late = finish_attempt(
            kv,
            id,
            first[0].token,
            &Attempt {
                recipients: vec![outcome(0, RcptState::Delivered)],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(late, Finished::LeaseLost);
        assert_eq!(list(kv).unwrap().len(), 1);
    }

    #[test]
    fn concurrent_workers_lease_each_message_once() {
        let (_dir, store) = store();
        let kv = store.kv().clone();
        for i in 0..40 {
            let to = format!("r{i}@remote.test");
            enqueue(&kv, RAW, None, &envelope(&[&to]), 0).unwrap();
        }
        let t = now();
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let kv = kv.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let batch = lease_due(&kv, t, 3, 600).unwrap();
                        if batch.is_empty() {
                            return got;
                        }
                        got.extend(batch.into_iter().map(|l| l.id));
                    }
                })
            })
            .collect();
        let mut all: Vec<QueueId> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        assert_eq!(all.len(), 40);
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 40, "a message was leased twice");
    }

    #[test]
    fn temporary_failures_reschedule_and_per_recipient_states_stick() {
        let (_dir, store) = store();
        let kv = store.kv();
        let id = enqueue(
            kv,
            RAW,
            None,
            &envelope(&["b@remote.test", "c@remote.test"]),
            0,
        )
        .unwrap();
        let t = now();
        let l = lease_due(kv, t, 10, 60).unwrap().remove(0);
        let mut pending = outcome(1, RcptState::Pending);
        pending.reply = "451 4.3.0 try later".into();
        let r = finish_attempt(
            kv,
            id,
            l.token,
            &Attempt {
                recipients: vec![outcome(0, RcptState::Delivered), pending],
                retry_at: t + 120,
                expires: Some(t + 5 * 86400),
                error: Some("451 4.3.0 try later".into()),
                delay_notified: false,
                dsn_blobs: Vec::new(),
            },
        )
        .unwrap();
        assert_eq!(r, Finished::Rescheduled(t + 120));
        assert!(lease_due(kv, t + 119, 10, 60).unwrap().is_empty());
        let again = lease_due(kv, t + 120, 10, 60).unwrap().remove(0);
        let m = &again.message;
        assert_eq!(m.attempts, 1);
        assert_eq!(m.expires, Some(t + 5 * 86400));
        assert_eq!(m.recipients[0].state, RcptState::Delivered);
        assert_eq!(m.recipients[1].state, RcptState::Pending);
        assert_eq!(
            m.recipients[1].reply.as_deref(),
            Some("451 4.3.0 try later")
        );
    }

    #[test]
    fn held_messages_wait_for_an_operator() {
        let (_dir, store) = store();
        let kv = store.kv();
        let id = enqueue(kv, RAW, None, &envelope(&["b@remote.test"]), 0).unwrap();
        let l = lease_due(kv, now(), 10, 60).unwrap().remove(0);
        assert!(hold(kv, id, l.token, "unparsable message").unwrap());
        assert_eq!(held(kv).unwrap(), vec![id]);
        assert_eq!(stats(kv).unwrap().held, 1);
        assert_eq!(next_due(kv, i64::MAX).unwrap(), None);
        assert!(lease_due(kv, now() + 10_000, 10, 60).unwrap().is_empty());
        retry(kv, id).unwrap();
        assert!(held(kv).unwrap().is_empty());
        let again = lease_due(kv, now(), 10, 60).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message.held, None);
        let gone = cancel(kv, id).unwrap();
        assert_eq!(gone.recipients[0].address, "b@remote.test");
        assert_eq!(stats(kv).unwrap().depth, 0);
        assert!(matches!(cancel(kv, id), Err(Error::NotFound(_))));
    }

    #[test]
    fn delayed_sends_wait_and_can_be_cancelled_while_pending() {
        let (_dir, store) = store();
        let kv = store.kv();
        let t = now();
        let id = enqueue(kv, RAW, None, &envelope(&["b@remote.test"]), t + 3600).unwrap();
        assert!(lease_due(kv, t, 10, 60).unwrap().is_empty());
        assert_eq!(next_due(kv, i64::MAX).unwrap(), Some(t + 3600));
        assert_eq!(next_due(kv, t + 3601).unwrap(), Some(t + 3600));
        assert_eq!(
            next_due(kv, t + 3600).unwrap(),
            None,
            "not before the horizon"
        );
        assert!(kv.transact(|tx| cancel_pending(tx, id)).unwrap());
        assert!(list(kv).unwrap().is_empty());
        assert!(!kv.transact(|tx| cancel_pending(tx, id)).unwrap());
    }

    #[test]
    fn outcomes_of_many_attempts_commit_together() {
        let (_dir, store) = store();
        let kv = store.kv();
        let ids: Vec<QueueId> = (0..5)
            .map(|i| {
                let to = format!("r{i}@remote.test");
                enqueue(kv, RAW, None, &envelope(&[&to]), 0).unwrap()
            })
            .collect();
        let t = now();
        let leased = lease_due(kv, t, 10, 60).unwrap();
        assert_eq!(leased.len(), 5);
        let delivered = Attempt {
            recipients: vec![outcome(0, RcptState::Delivered)],
            ..Default::default()
        };
        let mut later = outcome(0, RcptState::Pending);
        later.reply = "451 4.3.0 try later".into();
        let deferred = Attempt {
            recipients: vec![later],
            retry_at: t + 300,
            ..Default::default()
        };
        // Three delivered, one deferred, one whose lease is stale.
        let batch: Vec<(QueueId, u64, &Attempt)> = leased
            .iter()
            .enumerate()
            .map(|(i, l)| match i {
                3 => (l.id, l.token, &deferred),
                4 => (l.id, l.token ^ 2, &delivered),
                _ => (l.id, l.token, &delivered),
            })
            .collect();
        let done = finish_attempts(kv, &batch).unwrap();
        assert_eq!(
            done,
            vec![
                Finished::Removed,
                Finished::Removed,
                Finished::Removed,
                Finished::Rescheduled(t + 300),
                Finished::LeaseLost,
            ]
        );
        let left: Vec<QueueId> = list(kv).unwrap().into_iter().map(|(id, _)| id).collect();
        let mut expected = vec![leased[3].id, leased[4].id];
        expected.sort_unstable();
        assert_eq!(left, expected);
        assert_eq!(stats(kv).unwrap().depth, 2);
        assert!(ids.contains(&leased[3].id));
    }

    #[test]
    fn released_leases_are_due_again_at_once() {
        let (_dir, store) = store();
        let kv = store.kv();
        let id = enqueue(kv, RAW, None, &envelope(&["b@remote.test"]), 0).unwrap();
        let t = now();
        let l = lease_due(kv, t, 10, 600).unwrap().remove(0);
        assert!(lease_due(kv, t, 10, 600).unwrap().is_empty());
        // A wrong token releases nothing.
        assert_eq!(release(kv, &[(id, l.token ^ 2)]).unwrap(), 0);
        assert_eq!(release(kv, &[(id, l.token)]).unwrap(), 1);
        let again = lease_due(kv, now(), 10, 600).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].message.attempts, 0, "not counted as an attempt");
        // The old token no longer records anything.
        let late = finish_attempt(
            kv,
            id,
            l.token,
            &Attempt {
                recipients: vec![outcome(0, RcptState::Delivered)],
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(late, Finished::LeaseLost);
    }

    /// The due index read from its start, not from its mark: (time, id).
    fn due_entries(kv: &Kv) -> Vec<(i64, QueueId)> {
        kv.read(|tx| -> Result<Vec<(i64, QueueId)>> {
            tx.range_snapshot(&KeyRange::prefix(&[DUE]), RangeOptions::default())?
                .iter()
                .map(|(k, _)| Ok((keys::decode_time(&k[1..9]), parse_id(k, 9)?)))
                .collect()
        })
        .unwrap()
    }

    /// The due index's invariant: its mark lies at or below every entry.
    fn assert_nothing_below_the_mark(kv: &Kv) {
        let from_mark: Vec<Vec<u8>> = kv
            .read(|tx| {
                let from = due_index().start_snapshot(tx)?;
                let range = KeyRange::new(from, KeyRange::prefix(&[DUE]).end);
                tx.range_snapshot(&range, RangeOptions::default())
            })
            .unwrap()
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let all: Vec<Vec<u8>> = due_entries(kv)
            .into_iter()
            .map(|(at, id)| due_key(at, id))
            .collect();
        assert_eq!(from_mark, all, "a due entry lies below the mark");
    }

    fn leased_ids(kv: &Kv, at: i64) -> Vec<QueueId> {
        let mut ids: Vec<QueueId> = lease_due(kv, at, 10, 60)
            .unwrap()
            .into_iter()
            .map(|l| l.id)
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn messages_due_before_the_mark_are_still_leased() {
        let (_dir, store) = store();
        let kv = store.kv();
        let t = now();
        let a = enqueue(kv, RAW, None, &envelope(&["a@remote.test"]), 0).unwrap();
        let b = enqueue(kv, RAW, None, &envelope(&["b@remote.test"]), t + 500).unwrap();
        // A lease far ahead (a worker whose clock runs fast) moves the mark
        // past everything due by then.
        let ahead = lease_due(kv, t + 1000, 10, 60).unwrap();
        assert_eq!(ahead.len(), 2);
        let token = |id| ahead.iter().find(|l| l.id == id).unwrap().token;
        assert_eq!(
            kv.read(|tx| tx.get(&[DUE_MARK])).unwrap(),
            Some(KeyRange::single(&due_key(t + 500, b)).end)
        );
        assert!(lease_due(kv, now(), 10, 60).unwrap().is_empty());

        // Made due now, below the mark: an operator's retry, ...
        retry(kv, a).unwrap();
        assert_nothing_below_the_mark(kv);
        assert_eq!(leased_ids(kv, now()), [a]);
        // ... a worker giving its lease back, ...
        assert_eq!(release(kv, &[(b, token(b))]).unwrap(), 1);
        assert_nothing_below_the_mark(kv);
        let again = lease_due(kv, now(), 10, 60).unwrap();
        assert_eq!(again.iter().map(|l| l.id).collect::<Vec<_>>(), [b]);
        // ... a new message, ...
        let c = enqueue(kv, RAW, None, &envelope(&["c@remote.test"]), 0).unwrap();
        assert_nothing_below_the_mark(kv);
        assert_eq!(leased_ids(kv, now()), [c]);
        // ... and an attempt rescheduled to a time already past.
        let mut later = outcome(0, RcptState::Pending);
        later.reply = "451 4.3.0 try later".into();
        let past = Attempt {
            recipients: vec![later],
            retry_at: t - 10,
            ..Default::default()
        };
        let r = finish_attempt(kv, b, again[0].token, &past).unwrap();
        assert_eq!(r, Finished::Rescheduled(t - 10));
        assert_nothing_below_the_mark(kv);
        assert_eq!(leased_ids(kv, t), [b]);
        assert_nothing_below_the_mark(kv);
    }

    #[test]
    fn workers_lease_each_due_entry_once_while_attempts_reschedule_into_the_past() {
        let (_dir, store) = store();
        let kv = store.kv().clone();
        const MESSAGES: usize = 30;
        const ATTEMPTS: u32 = 3;
        for i in 0..MESSAGES {
            let to = format!("r{i}@remote.test");
            enqueue(&kv, RAW, None, &envelope(&[&to]), 0).unwrap();
        }
        let t = now();
        let leases = std::sync::Mutex::new(std::collections::HashMap::<QueueId, u32>::new());
        std::thread::scope(|scope| {
            for w in 0..4i64 {
                let (kv, leases) = (&kv, &leases);
                scope.spawn(move || {
                    loop {
                        let batch = lease_due(kv, t, 3, 600).unwrap();
                        if batch.is_empty() {
                            if stats(kv).unwrap().depth == 0 {
                                return;
                            }
                            std::thread::yield_now();
                            continue;
                        }
                        for l in batch {
                            *leases.lock().unwrap().entry(l.id).or_default() += 1;
                            // Temporary failures are due again at once, at a
                            // time below the mark the leases have moved.
                            let attempt = if l.message.attempts + 1 < ATTEMPTS {
                                Attempt {
                                    recipients: vec![outcome(0, RcptState::Pending)],
                                    retry_at: t - 100 + w,
                                    ..Default::default()
                                }
                            } else {
                                Attempt {
                                    recipients: vec![outcome(0, RcptState::Delivered)],
                                    ..Default::default()
                                }
                            };
                            let done = finish_attempt(kv, l.id, l.token, &attempt).unwrap();
                            assert_ne!(done, Finished::LeaseLost, "a lease was taken twice");
                        }
                    }
                });
            }
        });
        let leases = leases.into_inner().unwrap();
        assert_eq!(leases.len(), MESSAGES);
        assert!(
            leases.values().all(|&n| n == ATTEMPTS),
            "each due entry is leased once: {leases:?}"
        );
        assert!(due_entries(&kv).is_empty());
        assert_eq!(stats(&kv).unwrap(), Stats::default());
    }

    #[test]
    fn submission_status_keeps_dsn_blobs_and_reads_version_1_records() {
        let (_dir, store) = store();
        let kv = store.kv();
        let account = AccountId(7);
        let submission: DocumentId = 3;
        // A version 1 record, as written before dsn_blobs existed.
        #[derive(Serialize)]
        struct V1<'a> {
            queue_id: Option<QueueId>,
            undo: UndoStatus,
            recipients: &'a [RecipientStatus],
        }
        let rcpt = RecipientStatus {
            address: "b@remote.test".into(),
            delivered: Delivery::Queued,
            reply: String::new(),
        };
        let mut v1 = vec![1u8];
        postcard::to_io(
            &V1 {
                queue_id: Some(9),
                undo: UndoStatus::Final,
                recipients: std::slice::from_ref(&rcpt),
            },
            &mut v1,
        )
        .unwrap();
        kv.transact(|tx| tx.set_chunked(&status_key(account, submission), &v1))
            .unwrap();
        let read = kv
            .read(|tx| get_status(tx, account, submission))
            .unwrap()
            .unwrap();
        assert_eq!(read.queue_id, Some(9));
        assert_eq!(read.recipients, vec![rcpt]);
        assert!(read.dsn_blobs.is_empty());
        // Written back as version 2 with the DSN's blob.
        let mut status = read;
        status.dsn_blobs.push(BlobHash::of(b"a report"));
        kv.transact(|tx| put_status(tx, account, submission, &status))
            .unwrap();
        let raw = kv
            .read(|tx| tx.get_chunked(&status_key(account, submission)))
            .unwrap()
            .unwrap();
        assert_eq!(raw[0], 2);
        let again = kv
            .read(|tx| get_status(tx, account, submission))
            .unwrap()
            .unwrap();
        assert_eq!(again, status);
    }
}
