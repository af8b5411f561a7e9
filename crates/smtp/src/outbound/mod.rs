//! Outbound delivery: the workers that drain the store's queue
//! (`tern_store::queue`) to other servers.
//!
//! - [`run`]: the scheduler. It leases due messages from the queue (one
//!   range read, see the store's queue module), runs up to
//!   [`OutboundConfig::concurrency`] deliveries at once, and sleeps until
//!   the next message falls due, new work is queued (a watch on the queue's
//!   wake key), or shutdown.
//! - one delivery ([`deliver`]): reads the message, signs it with the
//!   author domain's DKIM key ([`dkim`]), groups the pending recipients by
//!   domain, delivers local ones straight into their mailboxes and remote
//!   ones through [`route`] and [`client`] (at most
//!   [`OutboundConfig::per_domain`] connections per domain), then records
//!   the outcome: 2xx delivered, 5xx failed at once, 4xx and connection
//!   errors retried with exponential backoff and jitter until the message
//!   expires. Failures (and, if configured, delays) produce a DSN
//!   ([`dsn`]) in the local sender's inbox. A message that cannot be sent
//!   as it is (blob missing, not a message, signing failed) goes to the
//!   error queue.
//! - [`metrics`]: counters and the `/metrics` endpoint.

pub mod client;
pub mod dkim;
pub mod dsn;
pub mod metrics;
pub mod route;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::MessageAuthenticator;
use parking_lot::Mutex;
use tern_store::queue::{self, Attempt, Leased, QueuedMessage, RcptOutcome, RcptState};
use tern_store::{MailStore, Recipient, now};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::config::DnsConfig;
use crate::error::Error;
use client::{ClientConfig, Mail, Outcome, Rcpt, ServerReply};
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
    /// Connections to one destination domain at once.
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
        }
    }
}

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
}

impl Shared {
    fn domain_limit(&self, domain: &str) -> Arc<Semaphore> {
        self.domains
            .lock()
            .entry(domain.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_domain.max(1))))
            .clone()
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
    /// deliveries in flight finish (bounded by their timeouts).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        let shared = self.shared;
        let slots = Arc::new(Semaphore::new(shared.config.concurrency.max(1)));
        let mut tasks: JoinSet<()> = JoinSet::new();
        tracing::info!(
            concurrency = shared.config.concurrency,
            "outbound delivery running"
        );
        loop {
            if *shutdown.borrow_and_update() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            // Watch before reading, so a message queued meanwhile wakes us.
            let wake = shared.store.kv().watch(queue::WAKE_KEY);
            let free = slots.available_permits();
            let mut next_due = None;
            if free > 0 {
                let store = shared.store.clone();
                let lease = shared.config.lease.as_secs().max(1) as i64;
                let found = tokio::task::spawn_blocking(move || {
                    let leased = queue::lease_due(store.kv(), now(), free, lease)?;
                    let next = queue::next_due(store.kv())?;
                    Ok::<_, tern_store::Error>((leased, next))
                })
                .await;
                match found {
                    Ok(Ok((leased, next))) => {
                        let full = leased.len() == free;
                        for l in leased {
                            let permit = slots.clone().acquire_owned().await.expect("open");
                            let shared = shared.clone();
                            tasks.spawn(async move {
                                deliver(&shared, l).await;
                                drop(permit);
                            });
                        }
                        if full {
                            continue;
                        }
                        next_due = next;
                    }
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot read the queue"),
                    Err(e) => tracing::error!(error = %e, "queue task failed"),
                }
            }
            let sleep = match next_due {
                Some(at) => Duration::from_secs((at - now()).clamp(0, i64::MAX) as u64 + 1)
                    .min(shared.config.poll),
                None => shared.config.poll,
            };
            let busy = free == 0;
            tokio::select! {
                _ = stopping(&mut shutdown) => break,
                _ = wake => {}
                _ = tokio::time::sleep(sleep) => {}
                Some(_) = tasks.join_next(), if busy => {}
            }
        }
        // Deliveries in flight finish (they have timeouts); a message cut
        // short would be retried after its lease anyway.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(30), drain)
            .await
            .is_err()
        {
            tracing::warn!("outbound deliveries did not finish in time; their leases will lapse");
        }
        tracing::debug!("outbound delivery stopped");
        Ok(())
    }
}

/// Resolves once shutdown has begun (the watch's guard is not kept).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|&s| s).await;
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

/// One attempt on one leased message.
async fn deliver(shared: &Arc<Shared>, leased: Leased) {
    let Leased { id, token, message } = leased;
    let store = shared.store.clone();
    let hash = message.blob;
    let raw = blocking(move || store.kv().read(|tx| tern_store::blob::read(tx, &hash))).await;
    let raw = match raw {
        Ok(Some(raw)) => raw,
        Ok(None) => return hold(shared, id, token, "the message's blob is missing").await,
        Err(e) => {
            tracing::error!(queue_id = %format!("{id:x}"), error = %e, "cannot read a queued message");
            return;
        }
    };
    if !raw.windows(2).any(|w| w == b"\r\n")
        || mail_parser::MessageParser::default()
            .parse_headers(raw.as_slice())
            .is_none()
    {
        return hold(shared, id, token, "not a valid message").await;
    }
    let at = now();
    let expires = message.expires.unwrap_or_else(|| {
        message.send_at.max(message.created) + shared.config.expiry.as_secs() as i64
    });
    // DKIM: sign once for every remote recipient.
    let mut signed: Option<Vec<u8>> = None;
    let mut fates: Vec<Fate> = Vec::new();
    let mut by_domain: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, r) in message.recipients.iter().enumerate() {
        if r.state == RcptState::Pending {
            by_domain.entry(domain_of(&r.address)).or_default().push(i);
        }
    }
    for (domain, indexes) in by_domain {
        let store = shared.store.clone();
        let d = domain.clone();
        let local = blocking(move || store.is_local_domain(&d)).await;
        match local {
            Ok(true) => fates.extend(deliver_local(shared, &message, &raw, &indexes).await),
            Ok(false) => {
                if signed.is_none() {
                    match sign(shared, &message, &raw).await {
                        Ok(s) => signed = Some(s),
                        Err(reason) => return hold(shared, id, token, &reason).await,
                    }
                }
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
    let sender = sender_account(shared, &message).await;
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
        notified_ok = send_dsn(
            shared,
            dsn::Kind::Failure,
            account,
            &message,
            &raw,
            &failed_subjects,
            at,
        )
        .await;
        if notified_ok {
            Metrics::inc(&shared.metrics.dsn_failure);
        }
    }
    // A delay notice, once, when configured and the message waited long.
    if let (Some(after), Some(account)) = (shared.config.delay_notice, sender)
        && !message.delay_notified
        && at - message.created >= after.as_secs() as i64
    {
        let delayed: Vec<dsn::Subject> = fates
            .iter()
            .filter(|f| f.state == RcptState::Pending && wants(f.index, true))
            .map(|f| subject(&message, f))
            .collect();
        if !delayed.is_empty() {
            let mut with_expiry = message.clone();
            with_expiry.expires = Some(expires);
            if send_dsn(
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
                attempt.delay_notified = true;
                Metrics::inc(&shared.metrics.dsn_delay);
            }
        }
    }
    for f in &fates {
        attempt.recipients.push(RcptOutcome {
            index: f.index,
            state: f.state,
            reply: f.reply.clone(),
            remote_mta: f.remote_mta.clone(),
            notified: match f.state {
                RcptState::Failed => !failed_indexes.contains(&f.index) || notified_ok,
                _ => true,
            },
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
    let store = shared.store.clone();
    let finished = blocking(move || queue::finish_attempt(store.kv(), id, token, &attempt)).await;
    match finished {
        Ok(outcome) => {
            tracing::debug!(queue_id = %format!("{id:x}"), ?outcome, "attempt recorded")
        }
        Err(e) => {
            tracing::error!(queue_id = %format!("{id:x}"), error = %e, "cannot record an attempt")
        }
    }
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

async fn send_dsn(
    shared: &Arc<Shared>,
    kind: dsn::Kind,
    account: tern_store::AccountId,
    message: &QueuedMessage,
    raw: &[u8],
    subjects: &[dsn::Subject],
    at: i64,
) -> bool {
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
    match blocking(move || store.deliver(&report, &[Recipient::inbox(account)])).await {
        Ok(results) if results.iter().all(|r| r.is_ok()) => true,
        Ok(_) | Err(_) => {
            tracing::warn!("a DSN could not be stored; it will be retried");
            false
        }
    }
}

async fn sign(
    shared: &Arc<Shared>,
    message: &QueuedMessage,
    raw: &[u8],
) -> Result<Vec<u8>, String> {
    if !shared.config.dkim {
        return Ok(raw.to_vec());
    }
    let Some(domain) = signing_domain(raw, &message.mail_from) else {
        return Ok(raw.to_vec());
    };
    let shared2 = shared.clone();
    let data = raw.to_vec();
    let signed = tokio::task::spawn_blocking(move || {
        match shared2.signers.sign(&shared2.store, &domain, &data) {
            Ok(Some(header)) => {
                let mut out = Vec::with_capacity(header.len() + data.len());
                out.extend_from_slice(header.as_bytes());
                out.extend_from_slice(&data);
                Ok(Some(out))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(format!("DKIM signing for {domain} failed: {e}")),
        }
    })
    .await
    .map_err(|e| e.to_string())??;
    match signed {
        Some(s) => {
            Metrics::inc(&shared.metrics.dkim_signed);
            Ok(s)
        }
        None => Ok(raw.to_vec()),
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
            match client::send(*addr, &hop.host, &mail, &shared.client, &shared.tls).await {
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
