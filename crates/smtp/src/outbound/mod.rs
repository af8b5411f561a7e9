//! Outbound delivery: the workers that drain the store's queue
//! (`tern_store::queue`) to other servers.
//!
//! - `run`: the scheduler. It leases due messages from the queue (one
//!   range read and one commit for many messages, see the store's queue
//!   module) *ahead* of need: it keeps up to
//!   [`OutboundConfig::concurrency`] leased messages waiting, so a slot
//!   that frees starts the next delivery at once instead of waiting for a
//!   lease commit. It runs up to `concurrency` deliveries at once and
//!   sleeps until the next message falls due, new work is queued (a watch
//!   on the queue's wake key), or shutdown; leases it did not start are
//!   given back at shutdown.
//! - one delivery (`deliver`): reads the message, checks it, finds which
//!   recipient domains are local and signs it with the author domain's
//!   DKIM key ([`dkim`]), all in one blocking step; delivers local
//!   recipients straight into their mailboxes and remote ones through
//!   [`route`] and [`client`] (at most [`OutboundConfig::per_domain`]
//!   connections per domain, reusing idle sessions, [`pool`]), then
//!   records the outcome: 2xx delivered, 5xx failed at once, 4xx and
//!   connection errors retried with exponential backoff and jitter until
//!   the message expires. Failures (and, if configured, delays) produce a
//!   DSN ([`dsn`]) in the local sender's inbox, listed in the JMAP
//!   submission's `dsnBlobIds`. A message that cannot be sent as it is
//!   (blob missing, not a message, signing failed) goes to the error
//!   queue.
//! - the recorder (`recorder`): deliveries hand their outcomes to one
//!   task that commits those arriving together (up to [`RECORD_MAX`],
//!   waiting at most [`RECORD_WAIT`] for more) in one transaction
//!   (`queue::finish_attempts`) and then answers each. An outcome counts
//!   as recorded only once committed: a crash after the remote server's
//!   250 and before the commit sends the message again when its lease
//!   lapses (at least once, never lost).
//! - [`metrics`]: counters and the `/metrics` endpoint.

pub mod client;
pub mod dkim;
pub mod dsn;
pub mod metrics;
pub mod pool;
pub mod route;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::MessageAuthenticator;
use parking_lot::Mutex;
use tern_store::queue::{
    self, Attempt, Finished, Leased, QueueId, QueuedMessage, RcptOutcome, RcptState,
};
use tern_store::{BlobHash, MailStore, Recipient, now};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::config::DnsConfig;
use crate::error::Error;
use client::{ClientConfig, Mail, Outcome, Rcpt, ServerReply, Session, Stale};
pub use metrics::Metrics;
use route::{Hop, RouteError};

/// Settings of outbound delivery.
#[derive(Debug, Clone)]
pub struct OutboundConfig {
    /// Our name (EHLO, DSN Reporting-MTA).
    pub hostname: String,
    /// The resolver for MX, A and AAAA.
    pub dns: DnsConfig,
    /// Static routes: domain (or `*`) to `host:port`.
    pub routes: BTreeMap<String, String>,
    /// The port of MX hosts. 25 except in tests.
    pub smtp_port: u16,
    /// The first retry delay; doubles with each attempt.
    pub retry_initial: Duration,
    /// The longest retry delay.
    pub retry_max: Duration,
    /// How long a message is tried (from its send time) before it bounces.
    pub expiry: Duration,
    /// Send a delay notice once a message has waited this long (`None`:
    /// never).
    pub delay_notice: Option<Duration>,
    /// How long a worker holds a message; a crashed worker's lease lapses
    /// after this and another worker takes the message.
    pub lease: Duration,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Connections to one destination domain at once (idle ones kept for
    /// reuse included).
    pub per_domain: usize,
    /// Offer STARTTLS to servers that support it (any certificate is
    /// accepted: opportunistic TLS).
    pub starttls: bool,
    /// Sign with the DKIM key of the From domain when it has one.
    pub dkim: bool,
    /// Timeout to connect.
    pub connect_timeout: Duration,
    /// Timeout of each command's reply.
    pub command_timeout: Duration,
    /// Timeout of the reply to the message data.
    pub data_timeout: Duration,
    /// Longest sleep between looks at the queue.
    pub poll: Duration,
    /// How long a session stays open after a transaction, waiting for the
    /// next message to the same server (Postfix's
    /// `smtp_connection_cache_time_limit`). Zero: one session per message.
    pub reuse_idle: Duration,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            hostname: "localhost".into(),
            dns: DnsConfig::default(),
            routes: BTreeMap::new(),
            smtp_port: 25,
            retry_initial: Duration::from_secs(300),
            retry_max: Duration::from_secs(4 * 3600),
            expiry: Duration::from_secs(5 * 86_400),
            delay_notice: None,
            lease: Duration::from_secs(900),
            concurrency: 64,
            per_domain: 8,
            starttls: true,
            dkim: true,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(600),
            poll: Duration::from_secs(30),
            reuse_idle: Duration::from_secs(2),
        }
    }
}

/// Most outcomes the recorder commits in one transaction.
pub const RECORD_MAX: usize = 256;

/// How long the recorder waits for more outcomes before committing those
/// it has.
pub const RECORD_WAIT: Duration = Duration::from_micros(300);

/// What every delivery shares.
struct Shared {
    config: OutboundConfig,
    store: MailStore,
    resolver: MessageAuthenticator,
    tls: tokio_rustls::TlsConnector,
    client: ClientConfig,
    signers: dkim::Signers,
    metrics: Arc<Metrics>,
    domains: Mutex<HashMap<String, Arc<Semaphore>>>,
    pool: pool::Pool,
    /// Outcomes handed to the recorder and not yet committed.
    recording: Semaphore,
}

impl Shared {
    fn domain_limit(&self, domain: &str) -> Arc<Semaphore> {
        self.domains
            .lock()
            .entry(domain.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_domain.max(1))))
            .clone()
    }

    /// Closes sessions (QUIT) in the background.
    fn close(self: &Arc<Self>, sessions: Vec<Session>) {
        for s in sessions {
            let shared = self.clone();
            tokio::spawn(async move { s.quit(&shared.client).await });
        }
    }
}

/// The outbound delivery service: build it, take its [`Metrics`], then
/// [`Outbound::run`] it.
pub struct Outbound {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// What a look at the queue found: the messages leased (up to the limit
/// asked for, given back) and, when fewer, when the next falls due.
type Found = tern_store::Result<(Vec<Leased>, usize, Option<i64>)>;

impl Outbound {
    /// Sets up the resolver and TLS.
    pub fn new(config: OutboundConfig, store: MailStore) -> Result<Outbound, Error> {
        let resolver = route::resolver(&config.dns).map_err(Error::Resolver)?;
        let client = ClientConfig {
            hostname: config.hostname.clone(),
            starttls: config.starttls,
            connect_timeout: config.connect_timeout,
            command_timeout: config.command_timeout,
            data_timeout: config.data_timeout,
        };
        Ok(Outbound {
            shared: Arc::new(Shared {
                resolver,
                tls: client::opportunistic_tls(),
                client,
                signers: dkim::Signers::default(),
                metrics: Arc::new(Metrics::default()),
                domains: Mutex::new(HashMap::new()),
                pool: pool::Pool::default(),
                recording: Semaphore::new(config.concurrency.max(1).max(RECORD_MAX / 2) * 2),
                store,
                config,
            }),
        })
    }

    /// The counters, for the metrics endpoint.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.shared.metrics.clone()
    }

    /// Delivers queued mail until `shutdown` turns true; then lets
    /// deliveries in flight finish (bounded by their timeouts), records
    /// their outcomes, and gives back the leases it did not start.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let shared = self.shared;
        let concurrency = shared.config.concurrency.max(1);
        let (record, records) = mpsc::unbounded_channel();
        let recording = tokio::spawn(recorder(shared.store.clone(), records));
        let reaper = tokio::spawn(reap(shared.clone()));
        // A delivery holds a slot until its outcome is handed to the
        // recorder; outcomes waiting to be committed are bounded too.
        let slots = Arc::new(Semaphore::new(concurrency));
        let mut tasks: JoinSet<()> = JoinSet::new();
        // Leased, waiting for a slot.
        let mut ready: VecDeque<Leased> = VecDeque::new();
        let mut leasing: Option<tokio::task::JoinHandle<Found>> = None;
        // Whether the queue may hold due work we have not leased.
        let mut look = true;
        let mut next_due: Option<i64> = None;
        let mut wake: Option<tern_store::kv::Watch> = None;
        tracing::info!(concurrency, "outbound delivery running");
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            while !ready.is_empty()
                && let Ok(slot) = slots.clone().try_acquire_owned()
            {
                let l = ready.pop_front().expect("not empty");
                let shared = shared.clone();
                let record = record.clone();
                tasks.spawn(async move { deliver(&shared, &record, slot, l).await });
            }
            // Lease ahead: keep up to `concurrency` messages waiting.
            if look && leasing.is_none() && ready.len() <= concurrency / 2 {
                let limit = concurrency - ready.len();
                // Watch before reading, so a message queued meanwhile wakes us.
                wake = Some(shared.store.kv().watch(queue::WAKE_KEY));
                let store = shared.store.clone();
                let lease = shared.config.lease.as_secs().max(1) as i64;
                // Nothing due after the next poll changes how long we sleep.
                let horizon = shared.config.poll.as_secs() as i64 + 1;
                leasing = Some(tokio::task::spawn_blocking(move || {
                    let at = now();
                    let leased = queue::lease_due(store.kv(), at, limit, lease)?;
                    let next = if leased.len() < limit {
                        queue::next_due(store.kv(), at + horizon)?
                    } else {
                        None
                    };
                    Ok((leased, limit, next))
                }));
                look = false;
            }
            let sleep = match next_due {
                Some(at) => Duration::from_secs((at - now()).clamp(0, i64::MAX) as u64 + 1)
                    .min(shared.config.poll),
                None => shared.config.poll,
            };
            tokio::select! {
                _ = stopping(&mut shutdown) => break,
                found = async { leasing.as_mut().expect("checked").await }, if leasing.is_some() => {
                    leasing = None;
                    match found {
                        Ok(Ok((leased, limit, next))) => {
                            // A full batch: there may be more at once.
                            look = leased.len() == limit;
                            next_due = next;
                            ready.extend(leased);
                        }
                        Ok(Err(e)) => tracing::error!(error = %e, "cannot read the queue"),
                        Err(e) => tracing::error!(error = %e, "queue task failed"),
                    }
                }
                _ = async { wake.as_mut().expect("checked").await }, if wake.is_some() && leasing.is_none() => {
                    wake = None;
                    look = true;
                }
                _ = tokio::time::sleep(sleep), if !look && leasing.is_none() => look = true,
                // A slot freed: start the next delivery.
                Ok(slot) = slots.clone().acquire_owned(), if !ready.is_empty() => drop(slot),
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Leases not started go back to the queue; deliveries in flight
        // finish (they have timeouts); a message cut short would be
        // retried after its lease anyway.
        if let Some(l) = leasing.take()
            && let Ok(Ok((leased, _, _))) = l.await
        {
            ready.extend(leased);
        }
        if !ready.is_empty() {
            let store = shared.store.clone();
            let leases: Vec<(QueueId, u64)> = ready.iter().map(|l| (l.id, l.token)).collect();
            if let Err(e) = blocking(move || queue::release(store.kv(), &leases)).await {
                tracing::warn!(error = %e, "cannot give back leases; they will lapse");
            }
        }
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), drain)
            .await
            .is_err()
        {
            tracing::warn!("outbound deliveries did not finish in time; their leases will lapse");
        }
        drop(record);
        let _ = recording.await;
        reaper.abort();
        // Idle sessions: QUIT, all at once, for two seconds at most.
        let mut quitting = JoinSet::new();
        for s in shared.pool.expired(Duration::ZERO) {
            let shared = shared.clone();
            quitting.spawn(async move { s.quit(&shared.client).await });
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), quitting.join_all()).await;
        tracing::debug!("outbound delivery stopped");
        Ok(())
    }
}

/// Resolves once shutdown has begun (the watch's guard is not kept).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await;
}

/// Closes idle sessions that waited too long, every half second.
async fn reap(shared: Arc<Shared>) {
    let every = Duration::from_millis(500);
    loop {
        tokio::time::sleep(every).await;
        let old = shared.pool.expired(shared.config.reuse_idle);
        shared.close(old);
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> tern_store::Result<T> + Send + 'static,
) -> tern_store::Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(tern_store::Error::Invalid(format!(
            "a blocking task failed: {e}"
        )))
    })
}

/// An attempt's outcome on its way to the recorder.
struct Record {
    id: QueueId,
    token: u64,
    attempt: Attempt,
    done: oneshot::Sender<tern_store::Result<Finished>>,
}

/// Commits the outcomes that arrive together in one transaction, then
/// answers each. Ends when every sender is gone and all is recorded.
async fn recorder(store: MailStore, mut records: mpsc::UnboundedReceiver<Record>) {
    while let Some(first) = records.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + RECORD_WAIT;
        while batch.len() < RECORD_MAX {
            match records.try_recv() {
                Ok(r) => batch.push(r),
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, records.recv()).await {
                        Ok(Some(r)) => batch.push(r),
                        _ => break,
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        let store = store.clone();
        let done = tokio::task::spawn_blocking(move || {
            let items: Vec<(QueueId, u64, &Attempt)> =
                batch.iter().map(|r| (r.id, r.token, &r.attempt)).collect();
            let outcomes = match queue::finish_attempts(store.kv(), &items) {
                Ok(o) => o.into_iter().map(Ok).collect(),
                // One bad record must not fail the others: one by one.
                Err(e) if batch.len() > 1 => {
                    tracing::warn!(error = %e, "a batch of outcomes failed; recording one by one");
                    items
                        .iter()
                        .map(|(id, token, a)| queue::finish_attempt(store.kv(), *id, *token, a))
                        .collect()
                }
                Err(e) => vec![Err(e)],
            };
            for (r, outcome) in batch.into_iter().zip(outcomes) {
                let _ = r.done.send(outcome);
            }
        })
        .await;
        if let Err(e) = done {
            tracing::error!(error = %e, "the recorder's commit task failed");
        }
    }
}

/// A recipient's fate in this attempt, before DSN bookkeeping.
#[derive(Debug, Clone)]
struct Fate {
    index: usize,
    state: RcptState,
    reply: String,
    status: String,
    remote_mta: Option<String>,
}

fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('.').to_ascii_lowercase())
        .unwrap_or_default()
}

/// The domain of the first address in the From header, else of MAIL FROM.
fn signing_domain(raw: &[u8], mail_from: &str) -> Option<String> {
    let parsed = mail_parser::MessageParser::default().parse_headers(raw)?;
    let from = parsed
        .from()
        .and_then(|a| a.first())
        .and_then(|a| a.address())
        .map(domain_of)
        .filter(|d| !d.is_empty());
    from.or_else(|| Some(domain_of(mail_from)).filter(|d| !d.is_empty()))
}

/// Backoff before attempt `attempt + 1`: `initial * 2^(attempt-1)`, at most
/// `max`, with ±20% jitter, at least one second.
fn backoff(config: &OutboundConfig, attempt: u32) -> i64 {
    use rand::Rng;
    let base = config.retry_initial.as_secs_f64() * 2f64.powi(attempt.saturating_sub(1) as i32);
    let capped = base.min(config.retry_max.as_secs_f64());
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    (capped * jitter).round().max(1.0) as i64
}

fn status_of(reply: &ServerReply, fallback: &str) -> String {
    reply.enhanced().unwrap_or_else(|| fallback.to_owned())
}

/// A message read and made ready to send, in one blocking step.
struct Prepared {
    raw: Vec<u8>,
    /// Pending recipients by domain, with whether the domain is local
    /// (an error: the lookup failed).
    groups: Vec<(String, Vec<usize>, Result<bool, String>)>,
    /// The message with its DKIM signature, when some recipient is remote
    /// and the author domain has a key.
    signed: Option<Vec<u8>>,
}

enum Prepare {
    Ready(Prepared),
    /// To the error queue, for this reason.
    Hold(String),
    /// The store failed; the lease will lapse and the message be retried.
    Failed(tern_store::Error),
}

/// Reads the message, checks it, looks up which recipient domains are
/// local, and signs it when some recipient is remote.
fn prepare(shared: &Shared, message: &QueuedMessage) -> Prepare {
    let store = &shared.store;
    let raw = match store
        .kv()
        .read(|tx| tern_store::blob::read(tx, &message.blob))
    {
        Ok(Some(raw)) => raw,
        Ok(None) => return Prepare::Hold("the message's blob is missing".into()),
        Err(e) => return Prepare::Failed(e),
    };
    if memchr::memmem::find(&raw, b"\r\n").is_none()
        || mail_parser::MessageParser::default()
            .parse_headers(raw.as_slice())
            .is_none()
    {
        return Prepare::Hold("not a valid message".into());
    }
    let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in message.recipients.iter().enumerate() {
        if r.state == RcptState::Pending {
            by_domain.entry(domain_of(&r.address)).or_default().push(i);
        }
    }
    let groups: Vec<(String, Vec<usize>, Result<bool, String>)> = by_domain
        .into_iter()
        .map(|(domain, indexes)| {
            let local = store.is_local_domain(&domain).map_err(|e| e.to_string());
            (domain, indexes, local)
        })
        .collect();
    let mut signed = None;
    if shared.config.dkim
        && groups.iter().any(|(_, _, local)| *local == Ok(false))
        && let Some(domain) = signing_domain(&raw, &message.mail_from)
    {
        match shared.signers.sign(store, &domain, &raw) {
            Ok(Some(header)) => {
                let mut out = Vec::with_capacity(header.len() + raw.len());
                out.extend_from_slice(header.as_bytes());
                out.extend_from_slice(&raw);
                Metrics::inc(&shared.metrics.dkim_signed);
                signed = Some(out);
            }
            Ok(None) => {}
            Err(e) => return Prepare::Hold(format!("DKIM signing for {domain} failed: {e}")),
        }
    }
    Prepare::Ready(Prepared {
        raw,
        groups,
        signed,
    })
}

/// One attempt on one leased message, holding one of the scheduler's
/// delivery `slot`s until its outcome is handed to the recorder.
async fn deliver(
    shared: &Arc<Shared>,
    record: &mpsc::UnboundedSender<Record>,
    slot: tokio::sync::OwnedSemaphorePermit,
    leased: Leased,
) {
    let Leased { id, token, message } = leased;
    let message = Arc::new(message);
    let prepared = {
        let shared = shared.clone();
        let message = message.clone();
        tokio::task::spawn_blocking(move || prepare(&shared, &message)).await
    };
    let Prepared {
        raw,
        groups,
        signed,
    } = match prepared {
        Ok(Prepare::Ready(p)) => p,
        Ok(Prepare::Hold(reason)) => return hold(shared, id, token, &reason).await,
        Ok(Prepare::Failed(e)) => {
            tracing::error!(queue_id = %format!("{id:x}"), error = %e, "cannot read a queued message");
            return;
        }
        Err(e) => {
            tracing::error!(queue_id = %format!("{id:x}"), error = %e, "a delivery task failed");
            return;
        }
    };
    let at = now();
    let expires = message.expires.unwrap_or_else(|| {
        message.send_at.max(message.created) + shared.config.expiry.as_secs() as i64
    });
    let mut fates: Vec<Fate> = Vec::new();
    for (domain, indexes, local) in groups {
        match local {
            Ok(true) => fates.extend(deliver_local(shared, &message, &raw, &indexes).await),
            Ok(false) => {
                let data = signed.as_deref().unwrap_or(&raw);
                fates.extend(deliver_remote(shared, &message, data, &domain, &indexes).await);
            }
            Err(e) => {
                for &i in &indexes {
                    fates.push(Fate {
                        index: i,
                        state: RcptState::Pending,
                        reply: format!("local lookup failed: {e}"),
                        status: "4.3.0".into(),
                        remote_mta: None,
                    });
                }
            }
        }
    }
    drop(signed);
    // Temporary failures past the expiry fail for good.
    for f in &mut fates {
        if f.state == RcptState::Pending && at >= expires {
            f.state = RcptState::Failed;
            f.reply = format!("message expired after retries; last reply: {}", f.reply);
            f.status = "4.4.7".into();
        }
        let counter = match f.state {
            RcptState::Delivered => &shared.metrics.delivered,
            RcptState::Pending => &shared.metrics.deferred,
            RcptState::Failed => &shared.metrics.failed,
        };
        Metrics::inc(counter);
    }
    let mut attempt = Attempt {
        retry_at: (at + backoff(&shared.config, message.attempts + 1)).min(expires.max(at + 1)),
        expires: Some(expires),
        error: fates
            .iter()
            .find(|f| f.state == RcptState::Pending)
            .map(|f| f.reply.clone()),
        ..Default::default()
    };
    // Failure DSNs for recipients that failed now, or failed before and
    // whose DSN did not go out. Without NOTIFY, RFC 3461 section 4.1
    // allows FAILURE,DELAY: delay notices then follow the configuration.
    let wants = |i: usize, delay: bool| match message.recipients[i].notify {
        None => true,
        Some(n) if delay => n.delay,
        Some(n) => n.failure,
    };
    let delay_due = shared
        .config
        .delay_notice
        .is_some_and(|after| at - message.created >= after.as_secs() as i64)
        && !message.delay_notified;
    // The sender is looked up only when a notice may be due.
    let needs_sender = fates
        .iter()
        .any(|f| f.state == RcptState::Failed || (delay_due && f.state == RcptState::Pending))
        || message
            .recipients
            .iter()
            .any(|r| r.state == RcptState::Failed && !r.notified);
    let sender = if needs_sender {
        sender_account(shared, &message).await
    } else {
        None
    };
    let mut failed_subjects = Vec::new();
    let mut failed_indexes = HashSet::new();
    for f in fates.iter().filter(|f| f.state == RcptState::Failed) {
        if wants(f.index, false) && sender.is_some() {
            failed_subjects.push(subject(&message, f));
            failed_indexes.insert(f.index);
        }
    }
    for (i, r) in message.recipients.iter().enumerate() {
        if r.state == RcptState::Failed && !r.notified && sender.is_some() {
            failed_subjects.push(dsn::Subject {
                address: r.address.clone(),
                orcpt: r.orcpt.clone(),
                status: "5.0.0".into(),
                diagnostic: r.reply.clone(),
                remote_mta: r.remote_mta.clone(),
            });
            failed_indexes.insert(i);
        }
    }
    let mut notified_ok = true;
    if let Some(account) = sender
        && !failed_subjects.is_empty()
    {
        match send_dsn(
            shared,
            dsn::Kind::Failure,
            account,
            &message,
            &raw,
            &failed_subjects,
            at,
        )
        .await
        {
            Some(blob) => {
                attempt.dsn_blobs.push(blob);
                Metrics::inc(&shared.metrics.dsn_failure);
            }
            None => notified_ok = false,
        }
    }
    // A delay notice, once, when configured and the message waited long.
    if let Some(account) = sender
        && delay_due
    {
        let delayed: Vec<dsn::Subject> = fates
            .iter()
            .filter(|f| f.state == RcptState::Pending && wants(f.index, true))
            .map(|f| subject(&message, f))
            .collect();
        if !delayed.is_empty() {
            let mut with_expiry = (*message).clone();
            with_expiry.expires = Some(expires);
            if let Some(blob) = send_dsn(
                shared,
                dsn::Kind::Delay,
                account,
                &with_expiry,
                &raw,
                &delayed,
                at,
            )
            .await
            {
                attempt.dsn_blobs.push(blob);
                attempt.delay_notified = true;
                Metrics::inc(&shared.metrics.dsn_delay);
            }
        }
    }
    for f in fates {
        attempt.recipients.push(RcptOutcome {
            index: f.index,
            notified: match f.state {
                RcptState::Failed => !failed_indexes.contains(&f.index) || notified_ok,
                _ => true,
            },
            state: f.state,
            reply: f.reply,
            remote_mta: f.remote_mta,
        });
    }
    // Earlier failures whose DSN now went out.
    for (i, r) in message.recipients.iter().enumerate() {
        if r.state == RcptState::Failed && !r.notified && (notified_ok || sender.is_none()) {
            attempt.recipients.push(RcptOutcome {
                index: i,
                state: RcptState::Failed,
                reply: r.reply.clone().unwrap_or_default(),
                remote_mta: r.remote_mta.clone(),
                notified: true,
            });
        }
    }
    // Waiting for the commit does not hold a delivery slot, but the
    // outcomes waiting are bounded.
    let waiting = shared.recording.acquire().await.expect("open");
    drop(slot);
    let (done, answer) = oneshot::channel();
    let sent = record.send(Record {
        id,
        token,
        attempt,
        done,
    });
    let finished = match sent {
        Ok(()) => answer
            .await
            .unwrap_or_else(|_| Err(tern_store::Error::Invalid("the recorder stopped".into()))),
        Err(_) => Err(tern_store::Error::Invalid("the recorder stopped".into())),
    };
    match finished {
        Ok(outcome) => {
            tracing::debug!(queue_id = %format!("{id:x}"), ?outcome, "attempt recorded")
        }
        Err(e) => {
            tracing::error!(queue_id = %format!("{id:x}"), error = %e, "cannot record an attempt")
        }
    }
    drop(waiting);
}

fn subject(message: &QueuedMessage, f: &Fate) -> dsn::Subject {
    dsn::Subject {
        address: message.recipients[f.index].address.clone(),
        orcpt: message.recipients[f.index].orcpt.clone(),
        status: f.status.clone(),
        diagnostic: Some(f.reply.clone()),
        remote_mta: f.remote_mta.clone(),
    }
}

async fn hold(shared: &Arc<Shared>, id: queue::QueueId, token: u64, reason: &str) {
    tracing::warn!(queue_id = %format!("{id:x}"), %reason, "message moved to the error queue");
    Metrics::inc(&shared.metrics.held);
    let store = shared.store.clone();
    let reason = reason.to_owned();
    if let Err(e) = blocking(move || queue::hold(store.kv(), id, token, &reason)).await {
        tracing::error!(error = %e, "cannot hold a message");
    }
}

/// The local account a DSN goes to: the sending account when it is still
/// the owner of the reverse-path, else whoever owns that address here.
/// `None` for the null sender and remote senders.
async fn sender_account(
    shared: &Arc<Shared>,
    message: &QueuedMessage,
) -> Option<tern_store::AccountId> {
    if message.mail_from.is_empty() {
        return None;
    }
    let store = shared.store.clone();
    let from = message.mail_from.clone();
    blocking(move || store.lookup_address(&from))
        .await
        .ok()
        .flatten()
}

/// Delivers a DSN to the sender's inbox; its blob when stored.
async fn send_dsn(
    shared: &Arc<Shared>,
    kind: dsn::Kind,
    account: tern_store::AccountId,
    message: &QueuedMessage,
    raw: &[u8],
    subjects: &[dsn::Subject],
    at: i64,
) -> Option<BlobHash> {
    let report = dsn::build(
        kind,
        &shared.config.hostname,
        &message.mail_from,
        message,
        raw,
        subjects,
        at,
    );
    let store = shared.store.clone();
    let blob = BlobHash::of(&report);
    match blocking(move || store.deliver(&report, &[Recipient::inbox(account)])).await {
        Ok(results) if results.iter().all(|r| r.is_ok()) => Some(blob),
        Ok(_) | Err(_) => {
            tracing::warn!("a DSN could not be stored; it will be retried");
            None
        }
    }
}

/// Local recipients (a delayed send, or mail the queue holds for a local
/// domain): stored in their mailboxes; unknown users fail at once.
async fn deliver_local(
    shared: &Arc<Shared>,
    message: &QueuedMessage,
    raw: &[u8],
    indexes: &[usize],
) -> Vec<Fate> {
    let store = shared.store.clone();
    let addresses: Vec<(usize, String)> = indexes
        .iter()
        .map(|&i| (i, message.recipients[i].address.clone()))
        .collect();
    let raw = raw.to_vec();
    let mail_from = message.mail_from.clone();
    let result = blocking(move || {
        let mut fates = Vec::new();
        let mut targets = Vec::new();
        for (i, address) in addresses {
            match store.lookup_address(&address)? {
                Some(account) => targets.push((i, account)),
                None => fates.push(Fate {
                    index: i,
                    state: RcptState::Failed,
                    reply: "550 5.1.1 no such user here".into(),
                    status: "5.1.1".into(),
                    remote_mta: None,
                }),
            }
        }
        if targets.is_empty() {
            return Ok(fates);
        }
        let mut seen = HashSet::new();
        let unique: Vec<_> = targets.iter().filter(|(_, a)| seen.insert(*a)).collect();
        let recipients: Vec<Recipient> = unique.iter().map(|(_, a)| Recipient::inbox(*a)).collect();
        let outcome = store.deliver(&raw, &recipients)?;
        for (i, account) in &targets {
            let pos = unique
                .iter()
                .position(|(_, a)| a == account)
                .expect("listed");
            let fate = match &outcome[pos] {
                Ok(_) => Fate {
                    index: *i,
                    state: RcptState::Delivered,
                    reply: "250 2.0.0 delivered to the local mailbox".into(),
                    status: "2.0.0".into(),
                    remote_mta: None,
                },
                Err(tern_store::Error::OverQuota { .. }) => Fate {
                    index: *i,
                    state: RcptState::Pending,
                    reply: "452 4.2.2 mailbox full".into(),
                    status: "4.2.2".into(),
                    remote_mta: None,
                },
                Err(e) => Fate {
                    index: *i,
                    state: RcptState::Pending,
                    reply: format!("451 4.3.0 {e}"),
                    status: "4.3.0".into(),
                    remote_mta: None,
                },
            };
            fates.push(fate);
        }
        // Vacation replies of the recipients that got it.
        for (_, account) in unique {
            let delivered = outcome
                .iter()
                .zip(recipients.iter())
                .any(|(o, r)| o.is_ok() && r.account == *account);
            if delivered
                && let Err(e) = tern_store::vacation::auto_reply(&store, *account, &mail_from, &raw)
            {
                tracing::warn!(error = %e, "vacation reply failed");
            }
        }
        Ok(fates)
    })
    .await;
    match result {
        Ok(f) => f,
        Err(e) => indexes
            .iter()
            .map(|&i| Fate {
                index: i,
                state: if matches!(e, tern_store::Error::NotAMessage(_)) {
                    RcptState::Failed
                } else {
                    RcptState::Pending
                },
                reply: format!("451 4.3.0 local delivery failed: {e}"),
                status: "4.3.0".into(),
                remote_mta: None,
            })
            .collect(),
    }
}

/// Remote recipients of one domain: each host in turn until one decides
/// their fate.
async fn deliver_remote(
    shared: &Arc<Shared>,
    message: &QueuedMessage,
    data: &[u8],
    domain: &str,
    indexes: &[usize],
) -> Vec<Fate> {
    let all = |state: RcptState, reply: String, status: &str, mta: Option<String>| -> Vec<Fate> {
        indexes
            .iter()
            .map(|&i| Fate {
                index: i,
                state,
                reply: reply.clone(),
                status: status.to_owned(),
                remote_mta: mta.clone(),
            })
            .collect()
    };
    let hops: Vec<Hop> = match route::resolve(
        &shared.resolver,
        &shared.config.routes,
        domain,
        shared.config.smtp_port,
    )
    .await
    {
        Ok(h) => h,
        Err(RouteError::Permanent(why)) => {
            return all(RcptState::Failed, format!("550 5.1.2 {why}"), "5.1.2", None);
        }
        Err(RouteError::Temporary(why)) => {
            return all(
                RcptState::Pending,
                format!("451 4.4.3 {why}"),
                "4.4.3",
                None,
            );
        }
    };
    let permit = shared
        .domain_limit(domain)
        .acquire_owned()
        .await
        .expect("open");
    let rcpts: Vec<Rcpt> = indexes
        .iter()
        .map(|&i| Rcpt {
            address: message.recipients[i].address.clone(),
            notify: message.recipients[i].notify,
            orcpt: message.recipients[i].orcpt.clone(),
        })
        .collect();
    let mail = Mail {
        mail_from: &message.mail_from,
        ret: message.ret,
        envid: message.envid.as_deref(),
        body_8bitmime: message.body_8bitmime,
        smtputf8: message.smtputf8,
        recipients: &rcpts,
        data,
    };
    let mut last = (
        RcptState::Pending,
        "451 4.4.1 no host answered".to_owned(),
        "4.4.1".to_owned(),
        None,
    );
    for hop in &hops {
        for addr in &hop.addrs {
            match send_on_session(shared, domain, *addr, &hop.host, &mail).await {
                Outcome::Replies(replies) => {
                    drop(permit);
                    return indexes
                        .iter()
                        .zip(replies)
                        .map(|(&i, r)| Fate {
                            index: i,
                            state: if r.positive_completion() {
                                RcptState::Delivered
                            } else if r.permanent() {
                                RcptState::Failed
                            } else {
                                RcptState::Pending
                            },
                            status: status_of(
                                &r,
                                if r.permanent() {
                                    "5.0.0"
                                } else if r.positive_completion() {
                                    "2.0.0"
                                } else {
                                    "4.0.0"
                                },
                            ),
                            reply: r.line(),
                            remote_mta: Some(hop.host.clone()),
                        })
                        .collect();
                }
                Outcome::Session {
                    reason,
                    reply: Some(r),
                } if r.permanent() && !reason.starts_with("greeting") => {
                    // A 5xx to MAIL FROM or DATA (or a size limit) is the
                    // same at every host: fail now.
                    drop(permit);
                    let status = status_of(&r, "5.0.0");
                    return all(RcptState::Failed, r.line(), &status, Some(hop.host.clone()));
                }
                Outcome::Session { reason, reply } => {
                    let text = match &reply {
                        Some(r) => r.line(),
                        None => format!("451 4.4.1 {reason}"),
                    };
                    let status = reply
                        .as_ref()
                        .map(|r| status_of(r, "4.4.1"))
                        .unwrap_or_else(|| "4.4.1".into());
                    tracing::debug!(host = %hop.host, %addr, %reason, "host failed; trying the next");
                    // A 5xx greeting is kept as temporary: another host
                    // or a later attempt may take it.
                    last = (RcptState::Pending, text, status, Some(hop.host.clone()));
                }
            }
        }
    }
    drop(permit);
    all(last.0, last.1, &last.2, last.3)
}

/// One transaction with the server at `addr` for `domain`: on an idle
/// session to it when there is one (a stale one is replaced by a fresh
/// session at once), else on a new session; the session is kept for reuse
/// when it ended cleanly. The caller holds a connection permit of the
/// domain.
async fn send_on_session(
    shared: &Arc<Shared>,
    domain: &str,
    addr: std::net::SocketAddr,
    host: &str,
    mail: &Mail<'_>,
) -> Outcome {
    let reuse = !shared.config.reuse_idle.is_zero();
    let limit = shared.domain_limit(domain);
    loop {
        let (idle, close) = if reuse {
            // Room for idle sessions: the domain's free permits.
            shared.pool.take(
                domain,
                addr,
                limit.available_permits(),
                shared.config.reuse_idle,
            )
        } else {
            (None, Vec::new())
        };
        shared.close(close);
        let (mut session, reused) = match idle {
            Some(s) => (s, true),
            None => match client::open(addr, host, &shared.client, &shared.tls).await {
                Ok(s) => (s, false),
                Err(outcome) => return outcome,
            },
        };
        match session.send(mail, &shared.client).await {
            Ok(outcome) => {
                let keep = if reuse {
                    shared.pool.put(domain, addr, session)
                } else {
                    Some(session)
                };
                if let Some(s) = keep {
                    shared.close(vec![s]);
                }
                return outcome;
            }
            Err(Stale(reason)) if reused => {
                tracing::debug!(%addr, %reason, "an idle session was gone; opening a new one");
            }
            Err(Stale(reason)) => {
                shared.close(vec![session]);
                return Outcome::Session {
                    reason,
                    reply: None,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let config = OutboundConfig {
            retry_initial: Duration::from_secs(100),
            retry_max: Duration::from_secs(1000),
            ..Default::default()
        };
        for (attempt, base) in [(1, 100.0), (2, 200.0), (3, 400.0), (4, 800.0), (9, 1000.0)] {
            let b = backoff(&config, attempt) as f64;
            assert!(
                b >= base * 0.8 - 1.0 && b <= base * 1.2 + 1.0,
                "{attempt}: {b}"
            );
        }
    }

    #[test]
    fn signing_domain_is_the_from_domain() {
        let raw = b"From: \"A\" <a@Sign.Test>\r\nTo: b@x.test\r\n\r\nhi\r\n";
        assert_eq!(
            signing_domain(raw, "bounce@other.test").as_deref(),
            Some("sign.test")
        );
        let raw = b"To: b@x.test\r\n\r\nhi\r\n";
        assert_eq!(
            signing_domain(raw, "bounce@other.test").as_deref(),
            Some("other.test")
        );
    }
}
