//! Delivery: storing one raw message for N local recipients atomically.
//!
//! Concurrent deliveries are *combined*: callers queue their (already
//! parsed) message and a delivery worker stores everything queued in one
//! transaction, then answers each caller. Writes to one account serialise
//! on its change counter, so without combining sixteen concurrent
//! deliveries to one mailbox would conflict and retry one fsync at a time;
//! combined, they share one transaction and one fsync. A batch that fails
//! is retried one job at a time so one bad message cannot fail the others.
//! Deliveries are combined per account (lanes): a lone delivery is
//! stored by its caller when the caller blocks (`Combiner::submit`),
//! by a worker when it awaits (`Combiner::queue`, for async callers);
//! a busy lane is served by a worker, batch after
//! batch while it has jobs queued, so it never waits for a thread to wake
//! between batches; batches for
//! different accounts are stored by other workers at once and meet again
//! in the backend's group commit, which gives them one fsync.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Condvar, Mutex, MutexGuard};
use tokio::sync::oneshot;

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

/// Most delivery workers. Lanes stored at once build their batches side
/// by side and meet in one group commit (one fsync): with many accounts
/// receiving at once, a few workers would leave most lanes waiting and
/// split them over more fsyncs. Idle workers only sleep.
const MAX_WORKERS: usize = 32;

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

struct Queued {
    job: Job,
    reply: Reply,
}

/// Where a queued job's outcome goes: a thread parked in
/// [`Combiner::submit`], or the future of [`Combiner::queue`]. Dropped
/// unsent (a batch that panicked), either wakes its waiter with an error.
enum Reply {
    Blocking(Sender<Result<Outcome>>),
    Async(oneshot::Sender<Result<Outcome>>),
}

impl Reply {
    fn send(self, outcome: Result<Outcome>) {
        match self {
            Reply::Blocking(tx) => tx.send(outcome),
            // The receiver may be gone (its SMTP session closed): the
            // message is stored all the same.
            Reply::Async(tx) => drop(tx.send(outcome)),
        }
    }
}

/// The outcome of a delivery stored by a worker, for an asynchronous
/// caller ([`Combiner::queue`]).
pub(crate) type Pending = oneshot::Receiver<Result<Outcome>>;

/// The error a caller gets when its batch failed hard (panicked).
pub(crate) fn failed_hard() -> Error {
    crate::kv::Error::Backend("storing the delivery failed hard".into()).into()
}

/// A job's lane: its lowest recipient account.
fn lane_of(job: &Job) -> AccountId {
    job.recipients
        .iter()
        .map(|r| r.account)
        .min()
        .unwrap_or(AccountId(0))
}

/// The lanes and their workers' bookkeeping, under one lock.
#[derive(Default)]
struct State {
    /// Jobs waiting, per lane (a lane without jobs has no entry).
    queues: HashMap<AccountId, Vec<Queued>>,
    /// Lanes with jobs that no worker serves, oldest first.
    ready: VecDeque<AccountId>,
    /// Lanes a worker is serving.
    serving: HashSet<AccountId>,
    /// Workers started (they live until the combiner is dropped).
    workers: usize,
    /// Workers waiting for a ready lane.
    idle: usize,
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when a lane becomes ready, and at closing.
    work: Condvar,
}

/// Combines concurrent deliveries into shared transactions, one lane per
/// account (a job's lane is its lowest recipient account): deliveries to
/// one account share a transaction, since they would conflict on its
/// counters. A delivery to an idle lane is stored by its caller at once
/// (no thread hand-off); jobs that queued meanwhile go to a delivery
/// worker, started as needed, which stores the lane's batches one after
/// another while it has jobs (under load a lane's next batch starts as
/// soon as the last is durable, with no hand-off between them), moving on
/// to waiting lanes in turn. Deliveries to other accounts are
/// stored by other workers at the same time, and their commits still
/// share a WAL sync in the backend's group commit. Jobs of two lanes that
/// do meet (a recipient in both) are kept apart by the transactions'
/// conflict checks, at the cost of a retry.
pub(crate) struct Combiner {
    kv: Kv,
    shared: Arc<Shared>,
    handles: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Combiner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Combiner").finish_non_exhaustive()
    }
}

impl Combiner {
    /// A combiner storing into `kv`; its workers start with the first
    /// deliveries.
    pub(crate) fn new(kv: Kv) -> Self {
        Self {
            kv,
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                work: Condvar::new(),
            }),
            handles: Mutex::new(Vec::new()),
        }
    }

    /// Stores `job`, possibly together with others, and returns its
    /// outcome once durable.
    pub(crate) fn submit(&self, job: Job) -> Result<Outcome> {
        // The wait parks at once (see `handoff`): a dozen waiting
        // deliveries spinning would take the CPU from their worker.
        let (reply, wait) = handoff::channel();
        let (mut st, lane, idle) = self.enqueue(job, Reply::Blocking(reply));
        if idle {
            // An idle lane: the caller stores this batch itself (a lone
            // delivery needs no thread hand-off); what is queued meanwhile
            // goes to a worker, which keeps storing while jobs come.
            st.serving.insert(lane);
            let mut roles = Roles::default();
            store_one_batch(&self.kv, &mut st, lane, &mut roles);
            st.serving.remove(&lane);
            if st.queues.contains_key(&lane) {
                self.hand_over(st, lane);
            }
        } else {
            drop(st);
        }
        wait.recv().unwrap_or_else(|_| Err(failed_hard()))
    }

    /// Queues `job` for a delivery worker and returns at once; the
    /// outcome arrives once durable. For asynchronous callers: nothing
    /// here waits for storage (an idle lane is handed to a worker, not
    /// stored by the caller), so a task on an async runtime awaits the
    /// outcome without holding a thread, where [`Combiner::submit`] takes a
    /// blocking thread per delivery.
    pub(crate) fn queue(&self, job: Job) -> Pending {
        let (reply, pending) = oneshot::channel();
        let (st, lane, idle) = self.enqueue(job, Reply::Async(reply));
        // A lane with jobs and nobody serving it is already ready unless
        // it was idle.
        if idle {
            self.hand_over(st, lane);
        }
        pending
    }

    /// Queues `job` in its lane; returns the state, still locked, the
    /// lane, and whether the lane was idle (no job before this one and
    /// nobody serving it).
    fn enqueue(&self, job: Job, reply: Reply) -> (MutexGuard<'_, State>, AccountId, bool) {
        let lane = lane_of(&job);
        let mut st = self.shared.state.lock();
        let queue = st.queues.entry(lane).or_default();
        let first = queue.is_empty();
        queue.push(Queued { job, reply });
        let idle = first && !st.serving.contains(&lane);
        (st, lane, idle)
    }

    /// Queues `lane` (with jobs, served by nobody) for a worker, waking or
    /// starting one. If no worker runs and none can start, the caller
    /// stores every ready lane itself.
    fn hand_over(&self, mut st: MutexGuard<'_, State>, lane: AccountId) {
        st.ready.push_back(lane);
        if st.idle > 0 {
            self.shared.work.notify_one();
            return;
        }
        if st.workers >= MAX_WORKERS {
            // Every worker is busy; the first to finish a batch finds the
            // lane ready.
            return;
        }
        st.workers += 1;
        drop(st);
        if let Err(e) = self.start_worker() {
            tracing::error!(error = %e, "cannot start a delivery worker");
            let mut st = self.shared.state.lock();
            st.workers -= 1;
            if st.workers == 0 {
                serve_ready(&self.kv, &mut st, &mut Roles::default());
            }
        }
    }

    fn start_worker(&self) -> Result<()> {
        let (kv, shared) = (self.kv.clone(), self.shared.clone());
        let handle = std::thread::Builder::new()
            .name("tern-deliver".into())
            .spawn(move || work(&kv, &shared))
            .map_err(|e| {
                crate::kv::Error::Backend(format!("cannot start a delivery worker: {e}"))
            })?;
        self.handles.lock().push(handle);
        Ok(())
    }
}

impl Drop for Combiner {
    /// Stops the workers once the lanes are empty (no store handle is
    /// left to queue more) and waits for them: they hold the store open.
    fn drop(&mut self) {
        self.shared.state.lock().closing = true;
        self.shared.work.notify_all();
        for handle in self.handles.get_mut().drain(..) {
            let _ = handle.join();
        }
    }
}

/// A delivery worker: serves ready lanes until the combiner closes.
fn work(kv: &Kv, shared: &Shared) {
    let mut roles = Roles::default();
    let mut st = shared.state.lock();
    loop {
        serve_ready(kv, &mut st, &mut roles);
        if st.closing {
            return;
        }
        st.idle += 1;
        shared.work.wait(&mut st);
        st.idle -= 1;
    }
}

/// Serves ready lanes, oldest first, until none is left.
fn serve_ready(kv: &Kv, st: &mut MutexGuard<'_, State>, roles: &mut Roles) {
    while let Some(lane) = st.ready.pop_front() {
        st.serving.insert(lane);
        serve(kv, st, lane, roles);
        st.serving.remove(&lane);
    }
}

/// Stores `lane`'s batches while it has jobs, or until another lane has
/// waited for a worker through one batch (then `lane` waits its turn).
fn serve(kv: &Kv, st: &mut MutexGuard<'_, State>, lane: AccountId, roles: &mut Roles) {
    while st.queues.contains_key(&lane) {
        store_one_batch(kv, st, lane, roles);
        if st.queues.contains_key(&lane) && !st.ready.is_empty() {
            st.ready.push_back(lane);
            return;
        }
    }
}

/// Takes a batch from `lane`'s queue (the caller serves the lane) and
/// stores it with the lock released.
fn store_one_batch(kv: &Kv, st: &mut MutexGuard<'_, State>, lane: AccountId, roles: &mut Roles) {
    let Some(queue) = st.queues.get_mut(&lane) else {
        return;
    };
    let batch = take_batch(queue);
    if queue.is_empty() {
        st.queues.remove(&lane);
    }
    MutexGuard::unlocked(st, || {
        // A panic fails this batch's deliveries (their reply slots close
        // as the batch unwinds), not the worker or the lane.
        let _ =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_batch(kv, batch, roles)));
    });
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

fn run_batch(kv: &Kv, batch: Vec<Queued>, roles: &mut Roles) {
    let jobs: Vec<&Job> = batch.iter().map(|q| &q.job).collect();
    match kv.transact(|tx| {
        roles.begin_transaction();
        jobs.iter()
            .map(|job| store_job(tx, job, roles))
            .collect::<Result<Vec<Outcome>>>()
    }) {
        Ok(outcomes) => {
            for (q, outcome) in batch.into_iter().zip(outcomes) {
                q.reply.send(Ok(outcome));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(q) = batch.into_iter().next() {
                q.reply.send(Err(e));
            }
        }
        Err(_) => {
            // Isolate the failing job: store each on its own.
            for q in batch {
                let r = kv.transact(|tx| {
                    roles.begin_transaction();
                    store_job(tx, &q.job, roles)
                });
                q.reply.send(r);
            }
        }
    }
}

/// The delivery mailbox of each (account, role), kept by a worker from
/// batch to batch: looking one up reads the account's whole mailbox list,
/// a visible share of a batch's time when done per batch. A kept answer
/// is checked once per transaction by reading that one mailbox (a read
/// conflict: a concurrent change of its role makes the batch retry) —
/// roles are unique in an account, so the mailbox that still has the role
/// is the one. Deliveries never create, rename or destroy mailboxes, so an
/// answer checked holds for the rest of the transaction.
#[derive(Default)]
struct Roles {
    known: HashMap<(AccountId, &'static str), DocumentId>,
    /// Answers checked (or looked up) in the current transaction.
    checked: HashSet<(AccountId, &'static str)>,
}

/// Most answers a worker keeps before starting afresh.
const ROLES_KEPT: usize = 4096;

impl Roles {
    /// Forgets which answers the previous transaction checked.
    fn begin_transaction(&mut self) {
        self.checked.clear();
    }

    /// The mailbox a delivery to `role` of `account` is filed in: the one
    /// with that role, else the inbox.
    fn mailbox(
        &mut self,
        tx: &mut crate::kv::Transaction<'_>,
        account: AccountId,
        role: &'static str,
    ) -> Result<DocumentId> {
        let key = (account, role);
        if let Some(&id) = self.known.get(&key) {
            if self.checked.contains(&key) {
                return Ok(id);
            }
            let still =
                mailbox::get(tx, account, id)?.is_some_and(|m| m.role.as_deref() == Some(role));
            if still {
                self.checked.insert(key);
                return Ok(id);
            }
        }
        let id = match mailbox::by_role(tx, account, role)? {
            Some(id) => id,
            None => mailbox::by_role(tx, account, "inbox")?
                .ok_or_else(|| Error::NotFound(format!("inbox of account {account}")))?,
        };
        if self.known.len() >= ROLES_KEPT {
            self.known.clear();
        }
        self.known.insert(key, id);
        self.checked.insert(key);
        Ok(id)
    }
}

/// Stores one job for all its recipients inside `tx`.
fn store_job(tx: &mut crate::kv::Transaction<'_>, job: &Job, roles: &mut Roles) -> Result<Outcome> {
    #[cfg(test)]
    if job.received_at == i64::MIN {
        panic!("test: storing this job fails hard");
    }
    // `written`: the bytes were put here, in this transaction; they are
    // taken back below if every recipient refuses the message.
    let (hash, written) = match (&job.raw, job.blob) {
        (_, Some(h)) => (h, false),
        (Some((hash, raw)), None) => (*hash, blob::put_hashed_in_tx(tx, hash, raw)?),
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
            Folder::Role(role) => roles.mailbox(w.tx, r.account, role)?,
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
    if written && out.iter().all(|o| o.is_err()) {
        blob::unput_in_tx(tx, &hash)?;
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

    /// A new store in a temporary directory with one account.
    fn store_with_bob() -> (tempfile::TempDir, MailStore, AccountId) {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        store.add_domain("example.com").unwrap();
        let account = store.create_account("bob@example.com", "pw").unwrap();
        (dir, store, account)
    }

    /// Queues `job` in its lane and hands the lane to a worker (as a
    /// busy lane is), returning the reply slot.
    fn hand_to_worker(
        combiner: &Combiner,
        account: AccountId,
        job: Job,
    ) -> handoff::Receiver<Result<Outcome>> {
        let (reply, wait) = handoff::channel();
        let mut st = combiner.shared.state.lock();
        st.queues.entry(account).or_default().push(Queued {
            job,
            reply: Reply::Blocking(reply),
        });
        combiner.hand_over(st, account);
        wait
    }

    /// A batch that panics fails its own deliveries (their callers get
    /// an error, not a hang), whether a caller or a worker stores it; the
    /// worker and the lane go on storing.
    #[test]
    fn a_panicking_batch_fails_its_deliveries_and_the_lane_goes_on() {
        let (_dir, store, account) = store_with_bob();
        let combiner = Combiner::new(store.kv.clone());
        let doomed = || {
            let mut j = job(account, 1);
            j.received_at = i64::MIN;
            j
        };
        // Stored by its caller (an idle lane).
        let err = combiner.submit(doomed()).unwrap_err();
        assert!(err.to_string().contains("failed hard"), "{err}");
        // Stored by a worker, which then stores the next job.
        let wait = hand_to_worker(&combiner, account, doomed());
        assert!(wait.recv().is_err(), "the reply slot closed");
        let wait = hand_to_worker(&combiner, account, job(account, 2));
        assert!(wait.recv().unwrap().is_ok());
        assert!(combiner.shared.state.lock().workers >= 1);
        // Deliveries at once are all stored.
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let handles: Vec<_> = (3..7)
                .map(|n| {
                    let combiner = &combiner;
                    s.spawn(move || combiner.submit(job(account, n)).unwrap())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(outcomes.len(), 4);
        let listed = store
            .kv
            .read(|tx| email::list_metas(tx, account, None, 10))
            .unwrap();
        assert_eq!(listed.len(), 5, "the doomed jobs left nothing behind");
        // A reply is sent before its batch's server takes the lock again
        // to leave the lane, so the state settles just after the last
        // answer; it must settle, with nothing left queued or served.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let st = combiner.shared.state.lock();
            if st.queues.is_empty() && st.ready.is_empty() && st.serving.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the lanes never settled: {} queued, {} ready, {} served",
                st.queues.len(),
                st.ready.len(),
                st.serving.len()
            );
            drop(st);
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// A queued delivery (an async caller's) goes to a worker even on an
    /// idle lane, and its outcome arrives once stored; one whose batch
    /// panics gets an error, and the lane goes on.
    #[test]
    fn queued_deliveries_are_stored_by_workers_and_answered() {
        let (_dir, store, account) = store_with_bob();
        let combiner = Combiner::new(store.kv.clone());
        let first = combiner.queue(job(account, 1));
        let outcome = first.blocking_recv().unwrap().unwrap();
        assert_eq!(outcome.len(), 1);
        assert_eq!(
            combiner.shared.state.lock().workers,
            1,
            "a worker stored it"
        );
        let mut doomed = job(account, 2);
        doomed.received_at = i64::MIN;
        // Alone in its batch (a batch that panics fails all its jobs).
        assert!(
            combiner.queue(doomed).blocking_recv().is_err(),
            "the reply slot closed"
        );
        let pending: Vec<Pending> = (3..8).map(|n| combiner.queue(job(account, n))).collect();
        for p in pending {
            assert!(p.blocking_recv().unwrap().is_ok());
        }
        let listed = store
            .kv
            .read(|tx| email::list_metas(tx, account, None, 10))
            .unwrap();
        assert_eq!(listed.len(), 6);
    }

    /// A worker keeps where each role's mailbox is from one transaction
    /// to the next (the same `Roles`), but checks it in every
    /// transaction: after the inbox role moves to another mailbox, the
    /// next lookup answers the new one. (Through `submit` each lone
    /// delivery would get a fresh `Roles` and never use a kept answer.)
    #[test]
    fn a_kept_role_mailbox_is_checked_in_every_transaction() {
        let (_dir, store, account) = store_with_bob();
        let mut roles = Roles::default();
        let lookup = |roles: &mut Roles| {
            store
                .kv
                .transact(|tx| {
                    roles.begin_transaction();
                    roles.mailbox(tx, account, "inbox")
                })
                .unwrap()
        };
        let old_inbox = lookup(&mut roles);
        assert_eq!(roles.known.get(&(account, "inbox")), Some(&old_inbox));
        // Kept and still right: the same answer.
        assert_eq!(lookup(&mut roles), old_inbox);
        let new_inbox = store
            .kv
            .transact(|tx| -> Result<DocumentId> {
                let mut w = Writer::begin(tx, account)?;
                let mut old = mailbox::get(w.tx, account, old_inbox)?.unwrap();
                let mut new = old.clone();
                old.role = None;
                mailbox::update(&mut w, old_inbox, &old)?;
                new.name = "New inbox".into();
                let id = mailbox::create(&mut w, &new)?;
                w.finish()?;
                Ok(id)
            })
            .unwrap();
        assert_ne!(new_inbox, old_inbox);
        assert_eq!(roles.known.get(&(account, "inbox")), Some(&old_inbox));
        assert_eq!(lookup(&mut roles), new_inbox, "the kept answer was checked");
        assert_eq!(roles.known.get(&(account, "inbox")), Some(&new_inbox));
    }

    /// Dropping the store stops its delivery workers, which hold the
    /// store open: it can be opened again right after.
    #[test]
    fn dropping_the_store_stops_the_delivery_workers() {
        let (dir, store, account) = store_with_bob();
        let wait = hand_to_worker(&store.combiner, account, job(account, 1));
        assert!(wait.recv().unwrap().is_ok());
        assert_eq!(store.combiner.shared.state.lock().workers, 1);
        drop(store);
        let store = MailStore::open(dir.path()).expect("no worker holds the store");
        store
            .deliver(
                b"Subject: again\r\n\r\nbody\r\n",
                &[Recipient::inbox(account)],
            )
            .unwrap();
    }
}
