//! Delivery: storing one raw message for N local recipients atomically.
//!
//! Concurrent deliveries are *combined*: callers queue their (already
//! parsed) message and one of them — the leader — stores everything queued
//! in one transaction, then answers each caller. Writes to one account
//! serialise on its change counter, so without combining sixteen concurrent
//! deliveries to one mailbox would conflict and retry one fsync at a time;
//! combined, they share one transaction and one fsync. A batch that fails
//! is retried one job at a time so one bad message cannot fail the others.
//! Deliveries are combined per account (lanes): batches for different
//! accounts are built on their own threads at once and meet again in the
//! backend's group commit, which gives them one fsync.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::changes::Writer;
use crate::envelope::{self, Envelope};
use crate::error::{Error, Result};
use crate::handoff::{self, Sender};
use crate::kv::Kv;
use crate::parse::ParsedMessage;
use crate::types::{AccountId, BlobHash, DataType, DocumentId};
use crate::{blob, email, mailbox};

/// Most jobs stored in one transaction.
const MAX_BATCH_JOBS: usize = 256;
/// Most inline message bytes stored in one transaction (well under the
/// 10 MB transaction limit, leaving room for metadata).
const MAX_BATCH_BYTES: usize = 4 << 20;

/// Where a delivered message is filed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Folder {
    /// The mailbox with this role (`inbox`, `junk`, ...); the inbox when
    /// the account has no such mailbox.
    Role(&'static str),
    /// A mailbox by id.
    Mailbox(DocumentId),
}

/// One recipient of a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The account.
    pub account: AccountId,
    /// Where to file the message.
    pub folder: Folder,
    /// Keywords to set (e.g. `$junk`).
    pub keywords: Vec<String>,
}

impl Recipient {
    /// A recipient whose copy goes to the inbox.
    pub fn inbox(account: AccountId) -> Self {
        Self {
            account,
            folder: Folder::Role("inbox"),
            keywords: Vec::new(),
        }
    }
}

/// A stored copy of a delivered message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The account.
    pub account: AccountId,
    /// The new email.
    pub email: DocumentId,
    /// Its thread.
    pub thread: DocumentId,
    /// Its mailbox.
    pub mailbox: DocumentId,
}

/// The outcome of one delivery: one slot per recipient.
pub type Outcome = Vec<Result<Delivered>>;

/// How a delivery treats recipients' quotas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QuotaPolicy {
    /// Each copy must fit its account's quota; a recipient it does not
    /// fit gets `Err(OverQuota)` in its slot and the others are stored.
    #[default]
    EachMustFit,
    /// For SMTP, whose DATA has one reply for all recipients: a copy is
    /// stored when its account is under its quota before the message,
    /// even if the message takes it over (the recipient was accepted at
    /// RCPT, where the quota is checked). If any account is already at
    /// or over its quota, nothing is stored and the delivery fails with
    /// [`Error::OverQuota`]: the client is told to retry (452), and at
    /// its retry that recipient alone is refused at RCPT. Each recipient
    /// thus gets the message exactly once or a refusal of its own.
    UnderLimitAllOrNothing,
}

/// The options of [`crate::MailStore::deliver_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeliverOptions {
    /// Empty, or one envelope per recipient, kept with that recipient's
    /// copy (family `15`; list in it only that recipient's forward-paths).
    pub envelopes: Vec<Envelope>,
    /// How quotas apply.
    pub quota: QuotaPolicy,
}

/// A message ready to store.
#[derive(Debug)]
pub(crate) struct Job {
    /// The raw bytes and their hash, when small enough to store inside
    /// the transaction.
    pub raw: Option<(BlobHash, Arc<[u8]>)>,
    /// The blob, when stored beforehand (large messages).
    pub blob: Option<BlobHash>,
    pub size: u64,
    pub parsed: ParsedMessage,
    pub recipients: Vec<Recipient>,
    pub received_at: i64,
    /// Empty, or one per recipient.
    pub envelopes: Vec<Envelope>,
    pub quota: QuotaPolicy,
}

enum Message {
    Done(Result<Outcome>),
    /// The leader finished its own job and hands the queue to this waiter.
    Lead,
}

struct Queued {
    job: Arc<Job>,
    reply: Sender<Message>,
}

#[derive(Default)]
struct State {
    queue: Vec<Queued>,
    leading: bool,
}

/// Combines concurrent deliveries into shared transactions, one lane per
/// account (a job's lane is its lowest recipient account): deliveries to
/// one account share a transaction, since they would conflict on its
/// counters; deliveries to other accounts are stored by their own
/// leaders at the same time, on other threads, and their commits still
/// share a WAL sync in the backend's group commit. Jobs of two lanes that
/// do meet (a recipient in both) are kept apart by the transactions'
/// conflict checks, at the cost of a retry.
#[derive(Default)]
pub(crate) struct Combiner {
    lanes: Mutex<HashMap<AccountId, State>>,
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner").finish_non_exhaustive()
    }
}

impl Combiner {
    /// Stores `job`, possibly together with others, and returns its
    /// outcome once durable.
    pub(crate) fn submit(&self, kv: &Kv, job: Job) -> Result<Outcome> {
        let lane = job
            .recipients
            .iter()
            .map(|r| r.account)
            .min()
            .unwrap_or(AccountId(0));
        let job = Arc::new(job);
        // The wait parks at once (see `handoff`): a dozen waiting
        // deliveries spinning would take the CPU from their leader.
        let (reply, wait) = handoff::channel();
        let lead = {
            let mut lanes = self.lanes.lock();
            let s = lanes.entry(lane).or_default();
            s.queue.push(Queued {
                job: job.clone(),
                reply,
            });
            !std::mem::replace(&mut s.leading, true)
        };
        if !lead {
            match wait.recv() {
                Ok(Message::Done(r)) => return r,
                Ok(Message::Lead) => {}
                Err(_) => {
                    return Err(crate::kv::Error::Backend("delivery leader vanished".into()).into());
                }
            }
        }
        // Leading the lane: store batches until our own job is answered;
        // then (or when unwinding) the lead passes to the lane's next
        // waiter. (A lane's entry lives while it has a leader.)
        let _leadership = LaneLeadership {
            combiner: self,
            lane,
            own: &job,
        };
        loop {
            let batch = {
                let mut lanes = self.lanes.lock();
                lanes
                    .get_mut(&lane)
                    .map(|s| take_batch(&mut s.queue))
                    .unwrap_or_default()
            };
            run_batch(kv, batch);
            if let Some(Message::Done(r)) = wait.try_recv() {
                return r;
            }
        }
    }
}

/// Held by a lane's leader; on release (also when unwinding) passes the
/// lead to the oldest job waiting in the lane, or removes the lane when
/// none waits.
struct LaneLeadership<'a> {
    combiner: &'a Combiner,
    lane: AccountId,
    /// The leader's own job: if the leader unwinds before storing it, it
    /// leaves the queue with the leader (its caller is gone).
    own: &'a Arc<Job>,
}

impl Drop for LaneLeadership<'_> {
    fn drop(&mut self) {
        let mut lanes = self.combiner.lanes.lock();
        let Some(s) = lanes.get_mut(&self.lane) else {
            return;
        };
        // A leader that returns normally had its job taken into a batch;
        // only one that unwinds may leave it behind.
        if std::thread::panicking() {
            s.queue.retain(|q| !Arc::ptr_eq(&q.job, self.own));
        }
        match s.queue.first() {
            Some(next) => next.reply.send(Message::Lead),
            None => {
                lanes.remove(&self.lane);
            }
        }
    }
}

fn take_batch(queue: &mut Vec<Queued>) -> Vec<Queued> {
    let mut bytes = 0;
    let mut n = 0;
    for q in queue.iter() {
        let size = q.job.raw.as_ref().map_or(0, |(_, raw)| raw.len());
        if n > 0 && (n >= MAX_BATCH_JOBS || bytes + size > MAX_BATCH_BYTES) {
            break;
        }
        bytes += size;
        n += 1;
    }
    queue.drain(..n).collect()
}

fn run_batch(kv: &Kv, batch: Vec<Queued>) {
    let jobs: Vec<&Job> = batch.iter().map(|q| q.job.as_ref()).collect();
    match kv.transact(|tx| {
        let mut roles = Roles::default();
        jobs.iter()
            .map(|job| store_job(tx, job, &mut roles))
            .collect::<Result<Vec<Outcome>>>()
    }) {
        Ok(outcomes) => {
            for (q, outcome) in batch.iter().zip(outcomes) {
                q.reply.send(Message::Done(Ok(outcome)));
            }
        }
        Err(e) if batch.len() == 1 => {
            batch[0].reply.send(Message::Done(Err(e)));
        }
        Err(_) => {
            // Isolate the failing job: store each on its own.
            for q in &batch {
                let r = kv.transact(|tx| store_job(tx, &q.job, &mut Roles::default()));
                q.reply.send(Message::Done(r));
            }
        }
    }
}

/// The delivery mailbox found for each (account, role) within one
/// transaction: a batch to one account looks it up once, not per message
/// (a lookup reads the account's whole mailbox list). Deliveries never
/// create, rename or destroy mailboxes, so an answer holds for the whole
/// transaction.
type Roles = HashMap<(AccountId, &'static str), DocumentId>;

/// Stores one job for all its recipients inside `tx`.
fn store_job(tx: &mut crate::kv::Transaction<'_>, job: &Job, roles: &mut Roles) -> Result<Outcome> {
    let hash = match (&job.raw, job.blob) {
        (_, Some(h)) => h,
        (Some((hash, raw)), None) => {
            blob::put_hashed_in_tx(tx, hash, raw)?;
            *hash
        }
        (None, None) => return Err(Error::Invalid("delivery without a message".into())),
    };
    let check = match job.quota {
        QuotaPolicy::EachMustFit => email::QuotaCheck::MustFit,
        QuotaPolicy::UnderLimitAllOrNothing => email::QuotaCheck::UnderLimit,
    };
    let mut out = Vec::with_capacity(job.recipients.len());
    for (i, r) in job.recipients.iter().enumerate() {
        let mut w = Writer::begin(tx, r.account)?;
        let mailbox = match r.folder {
            Folder::Mailbox(id) => id,
            Folder::Role(role) => match roles.get(&(r.account, role)) {
                Some(&id) => id,
                None => {
                    let id = match mailbox::by_role(w.tx, r.account, role)? {
                        Some(id) => id,
                        None => mailbox::by_role(w.tx, r.account, "inbox")?.ok_or_else(|| {
                            Error::NotFound(format!("inbox of account {}", r.account))
                        })?,
                    };
                    roles.insert((r.account, role), id);
                    id
                }
            },
        };
        let stored = email::insert_checked(
            &mut w,
            email::NewEmail {
                blob: hash,
                size: job.size,
                received_at: job.received_at,
                mailbox_ids: vec![mailbox],
                keywords: r.keywords.clone(),
                parsed: &job.parsed,
            },
            check,
        );
        match stored {
            Ok((email, thread)) => {
                if let Some(e) = job.envelopes.get(i) {
                    envelope::put(w.tx, r.account, email, e)?;
                }
                w.touched(DataType::EmailDelivery);
                w.finish()?;
                out.push(Ok(Delivered {
                    account: r.account,
                    email,
                    thread,
                    mailbox,
                }));
            }
            Err(e @ Error::OverQuota { .. }) if job.quota == QuotaPolicy::EachMustFit => {
                out.push(Err(e))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MailStore, email, now, parse};

    fn job(account: AccountId, n: u32) -> Job {
        let raw = format!(
            "From: ann@example.org\r\nTo: bob@example.com\r\nSubject: lane {n}\r\n\
             Message-ID: <lane-{n}@example.org>\r\n\r\nbody {n}\r\n"
        )
        .into_bytes();
        Job {
            raw: Some((BlobHash::of(&raw), Arc::from(&raw[..]))),
            blob: None,
            size: raw.len() as u64,
            parsed: parse::parse_message(&raw).unwrap(),
            recipients: vec![Recipient::inbox(account)],
            received_at: now(),
            envelopes: Vec::new(),
            quota: QuotaPolicy::default(),
        }
    }

    /// A leader that unwinds (a panic while it stores a batch) drops its
    /// own job and hands the lane to the next waiter, which stores its
    /// job and answers; with nobody waiting, the lane goes away.
    #[test]
    fn an_unwinding_lane_leader_passes_the_lead_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        store.add_domain("example.com").unwrap();
        let account = store.create_account("bob@example.com", "pw").unwrap();
        let combiner = Arc::new(Combiner::default());
        // The test is the lane's leader, storing its own job (first in
        // the queue), when another delivery comes.
        let own = Arc::new(job(account, 1));
        let (own_reply, _own_wait) = handoff::channel();
        {
            let mut lanes = combiner.lanes.lock();
            let s = lanes.entry(account).or_default();
            s.queue.push(Queued {
                job: own.clone(),
                reply: own_reply,
            });
            s.leading = true;
        }
        let (done, outcome) = std::sync::mpsc::channel();
        {
            let (combiner, store) = (combiner.clone(), store.clone());
            std::thread::spawn(move || {
                let _ = done.send(combiner.submit(&store.kv, job(account, 2)));
            });
        }
        while combiner.lanes.lock()[&account].queue.len() < 2 {
            std::thread::yield_now();
        }
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _lead = LaneLeadership {
                combiner: &combiner,
                lane: account,
                own: &own,
            };
            panic!("storing the batch failed hard");
        }));
        assert!(unwound.is_err());
        let outcome = outcome
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("the waiting delivery was given the lead")
            .unwrap();
        let id = outcome[0].as_ref().unwrap().email;
        let meta = store
            .kv
            .read(|tx| email::get(tx, account, id))
            .unwrap()
            .unwrap();
        assert_eq!(meta.blob, job(account, 2).raw.unwrap().0);
        // The waiter led the lane and left it; the unwound job was dropped.
        assert!(combiner.lanes.lock().get(&account).is_none());
        let listed = store
            .kv
            .read(|tx| email::list_metas(tx, account, None, 10))
            .unwrap();
        assert_eq!(listed.len(), 1);
    }
}
