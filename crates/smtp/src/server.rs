//! The tokio driver: binds the listeners, admits connections, runs each
//! [`Session`] over TCP or TLS with timeouts, and carries out its actions
//! against the store (on the blocking pool: store calls wait for fsync).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tern_store::watched::WatchedCache;
use tern_store::{
    DeliverOptions, Envelope as StoreEnvelope, EnvelopeRecipient, Folder, MailStore, QuotaPolicy,
    Recipient,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::checks::{CheckInput, MailAuthChecker, Verdict};
use crate::config::{Limits, SmtpConfig};
use crate::error::Error;
use crate::headers;
use crate::limits::Limiter;
use crate::reply::{self, Reply};
use crate::session::{
    Action, Answer, BodyType, Envelope, Incoming, ListenerKind, RecipientLookup, Session,
    SessionConfig, Step,
};

/// Accounts whose vacation window is kept in memory.
const VACATION_CACHE: usize = 1024;

/// A bound SMTP server, not yet accepting. [`SmtpServer::run`] accepts.
pub struct SmtpServer {
    listeners: Vec<(ListenerKind, TcpListener)>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SmtpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpServer")
            .field("listeners", &self.listeners)
            .field("hostname", &self.shared.hostname)
            .finish_non_exhaustive()
    }
}

/// What every connection shares.
struct Shared {
    store: MailStore,
    hostname: String,
    tls: TlsAcceptor,
    limits: Limits,
    limiter: Arc<Limiter>,
    checker: Option<MailAuthChecker>,
    /// Spam and virus filtering (crate::spam).
    filter: crate::spam::Filter,
    sessions: [Arc<SessionConfig>; 3],
    /// Recipients' vacation windows, kept until their VacationResponse
    /// changes: a delivery checks whether a reply is owed without a read.
    vacations: Arc<tern_store::vacation::VacationCache>,
    /// Local domains, addresses and quotas, for RCPT.
    directory: Arc<Directory>,
    /// Work started off a reply's path (vacation auto-replies): `run`
    /// waits for it before returning, so nothing holds the store after.
    background: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Shared {
    fn in_background(&self, f: impl FnOnce() + Send + 'static) {
        let mut tasks = self.background.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(tokio::task::spawn_blocking(f));
    }

    fn session_config(&self, kind: ListenerKind) -> Arc<SessionConfig> {
        Arc::clone(&self.sessions[kind_index(kind)])
    }
}

fn kind_index(kind: ListenerKind) -> usize {
    match kind {
        ListenerKind::Mx => 0,
        ListenerKind::Submission => 1,
        ListenerKind::Submissions => 2,
    }
}

/// Binds every configured listener and serves until `shutdown` turns
/// true; then stops accepting, ends idle sessions with 421, lets sessions
/// in the middle of a message finish, and returns.
pub async fn serve(
    config: SmtpConfig,
    store: MailStore,
    shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    SmtpServer::bind(config, store).await?.run(shutdown).await
}

impl SmtpServer {
    /// Loads (or generates) the certificate, sets up the resolver and the
    /// filters ([`crate::spam::Filter`]) and binds the listeners.
    pub async fn bind(config: SmtpConfig, store: MailStore) -> Result<SmtpServer, Error> {
        let filter = crate::spam::Filter::load(&config, store.clone()).await?;
        SmtpServer::bind_with_filter(config, store, filter).await
    }

    /// [`SmtpServer::bind`] with a filter made by the caller, which may
    /// share it (its per-account sending limits) with JMAP submissions.
    pub async fn bind_with_filter(
        config: SmtpConfig,
        store: MailStore,
        filter: crate::spam::Filter,
    ) -> Result<SmtpServer, Error> {
        let tls_config = {
            let (tls, dir, host) = (
                config.tls.clone(),
                config.data_dir.clone(),
                config.hostname.clone(),
            );
            tokio::task::spawn_blocking(move || crate::tls::server_config(&tls, &dir, &host))
                .await
                .map_err(|e| Error::Tls(e.to_string()))??
        };
        let checker = if config.checks.enabled {
            Some(MailAuthChecker::new(
                &config.hostname,
                &config.dns,
                config.checks.clone(),
            )?)
        } else {
            None
        };
        let limits = config.limits.clone();
        let session = |kind| {
            Arc::new(SessionConfig {
                hostname: config.hostname.clone(),
                kind,
                tls_available: true,
                allow_plaintext_auth: config.allow_plaintext_auth,
                max_message_size: limits.max_message_size,
                max_recipients: limits.max_recipients,
                max_errors: limits.max_errors.max(1),
                max_line_length: limits.max_line_length.max(512),
            })
        };
        let shared = Arc::new(Shared {
            store,
            filter,
            hostname: config.hostname.clone(),
            tls: TlsAcceptor::from(tls_config),
            limiter: Arc::new(Limiter::new(
                limits.max_connections,
                limits.max_connections_per_ip,
                limits.rate_limit,
                limits.rate_period,
            )),
            limits: limits.clone(),
            checker,
            background: std::sync::Mutex::default(),
            vacations: Arc::new(tern_store::vacation::VacationCache::new(VACATION_CACHE)),
            directory: Arc::new(Directory::default()),
            sessions: [
                session(ListenerKind::Mx),
                session(ListenerKind::Submission),
                session(ListenerKind::Submissions),
            ],
        });
        let mut listeners = Vec::new();
        for (kind, addr) in [
            (ListenerKind::Mx, config.listen.smtp),
            (ListenerKind::Submission, config.listen.submission),
            (ListenerKind::Submissions, config.listen.submissions),
        ] {
            let Some(addr) = addr else { continue };
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind {
                    service: kind.name(),
                    addr,
                    source,
                })?;
            listeners.push((kind, listener));
        }
        if listeners.is_empty() {
            return Err(Error::Config("no SMTP listener is configured".into()));
        }
        Ok(SmtpServer { listeners, shared })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn local_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(k, _)| *k == kind)
            .and_then(|(_, l)| l.local_addr().ok())
    }

    /// Accepts connections until `shutdown` turns true, then waits for the
    /// sessions (see [`serve`]).
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), Error> {
        // Every session holds a sender; when all are dropped, all are done.
        let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
        let mut accept_loops = tokio::task::JoinSet::new();
        for (kind, listener) in self.listeners {
            if let Ok(addr) = listener.local_addr() {
                tracing::info!(service = kind.name(), %addr, "SMTP listening");
            }
            accept_loops.spawn(accept_loop(
                kind,
                listener,
                Arc::clone(&self.shared),
                shutdown.clone(),
                done_tx.clone(),
            ));
        }
        drop(done_tx);
        while accept_loops.join_next().await.is_some() {}
        // Sessions still running finish their message or get 421.
        let _ = done_rx.recv().await;
        let background = std::mem::take(
            &mut *self
                .shared
                .background
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for task in background {
            let _ = task.await;
        }
        tracing::debug!("SMTP stopped");
        Ok(())
    }
}

async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    // A dropped sender also means stop.
    let _ = shutdown.wait_for(|&stop| stop).await;
}

async fn accept_loop(
    kind: ListenerKind,
    listener: TcpListener,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    done: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stopping(&mut shutdown) => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let shared = Arc::clone(&shared);
                let shutdown = shutdown.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    connection(kind, stream, peer, shared, shutdown).await;
                    drop(done);
                });
            }
            Err(err) => {
                // Out of file descriptors and the like: do not spin.
                tracing::warn!(service = kind.name(), error = %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
}

/// A connection, plain or encrypted.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Conn {
    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf).await,
            Conn::Tls(s) => s.read(buf).await,
        }
    }

    async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.write_all(data).await,
            Conn::Tls(s) => {
                s.write_all(data).await?;
                s.flush().await
            }
        }
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.shutdown().await,
            Conn::Tls(s) => s.shutdown().await,
        }
    }
}

async fn connection(
    kind: ListenerKind,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let limits = &shared.limits;
    let _admitted = match shared.limiter.admit(peer.ip(), Instant::now()) {
        Ok(admitted) => admitted,
        Err(refusal) => {
            tracing::debug!(service = kind.name(), ?refusal, "connection refused");
            let mut out = Vec::new();
            refusal.reply().write_to(&mut out);
            // Implicit TLS: the 421 can only be said inside TLS.
            let mut conn = if kind == ListenerKind::Submissions {
                match handshake(&shared, stream).await {
                    Some((conn, _)) => conn,
                    None => return,
                }
            } else {
                Conn::Plain(stream)
            };
            let _ = tokio::time::timeout(limits.command_timeout, conn.write_all(&out)).await;
            let _ = tokio::time::timeout(limits.command_timeout, conn.shutdown()).await;
            return;
        }
    };
    let (conn, tls) = if kind == ListenerKind::Submissions {
        match handshake(&shared, stream).await {
            Some((conn, info)) => (conn, Some(info)),
            None => return,
        }
    } else {
        (Conn::Plain(stream), None)
    };
    let session = Session::new(shared.session_config(kind), peer, tls);
    drive(conn, session, &shared, shutdown).await;
}

async fn handshake(shared: &Shared, stream: TcpStream) -> Option<(Conn, crate::TlsInfo)> {
    match tokio::time::timeout(shared.limits.handshake_timeout, shared.tls.accept(stream)).await {
        Ok(Ok(tls)) => {
            let info = crate::tls::info(tls.get_ref().1);
            Some((Conn::Tls(Box::new(tls)), info))
        }
        Ok(Err(err)) => {
            tracing::debug!(error = %err, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

async fn drive(
    mut conn: Conn,
    mut session: Session,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = &shared.limits;
    let mut buf = vec![0u8; 16 * 1024];
    // When the command being read must be complete: a line sent a byte
    // at a time gets the command timeout in all, not per byte.
    let mut deadline: Option<Instant> = None;
    loop {
        match session.step() {
            Step::NeedInput => {
                if flush(&mut conn, &mut session, limits).await.is_err() {
                    return;
                }
                let wait = if session.in_data() {
                    // RFC 5321 §4.5.3.2.5: per piece of data.
                    deadline = None;
                    limits.data_timeout
                } else {
                    let now = Instant::now();
                    let until = match deadline {
                        Some(until) if session.in_partial_line() => until,
                        _ => now + limits.command_timeout,
                    };
                    deadline = Some(until);
                    until.saturating_duration_since(now)
                };
                let read = if session.in_data() {
                    // A message on its way is let finish.
                    tokio::time::timeout(wait, conn.read(&mut buf)).await
                } else {
                    tokio::select! {
                        read = tokio::time::timeout(wait, conn.read(&mut buf)) => read,
                        _ = stopping(&mut shutdown) => {
                            session.shutting_down();
                            continue;
                        }
                    }
                };
                match read {
                    Err(_) => session.timed_out(),
                    Ok(Ok(0)) | Ok(Err(_)) => return,
                    Ok(Ok(n)) => session.feed(&buf[..n]),
                }
            }
            Step::Act(action) => {
                let answer = perform(shared, action).await;
                session.resolve(answer);
            }
            Step::StartTls => {
                if flush(&mut conn, &mut session, limits).await.is_err() {
                    return;
                }
                match conn {
                    Conn::Plain(tcp) => match handshake(shared, tcp).await {
                        Some((tls, info)) => {
                            conn = tls;
                            session.tls_started(info);
                        }
                        None => return,
                    },
                    Conn::Tls(_) => unreachable!("the session offers STARTTLS only in plain text"),
                }
            }
            Step::Close => {
                let _ = flush(&mut conn, &mut session, limits).await;
                let _ = tokio::time::timeout(limits.command_timeout, conn.shutdown()).await;
                return;
            }
        }
    }
}

async fn flush(conn: &mut Conn, session: &mut Session, limits: &Limits) -> io::Result<()> {
    let out = session.take_output();
    if out.is_empty() {
        return Ok(());
    }
    // A client that does not read its replies is as slow as one that
    // does not write.
    match tokio::time::timeout(limits.command_timeout, conn.write_all(&out)).await {
        Ok(result) => result,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> tern_store::Result<T> + Send + 'static,
) -> tern_store::Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(err) => Err(tern_store::Error::Invalid(format!(
            "a blocking task failed: {err}"
        ))),
    }
}

async fn perform(shared: &Shared, action: Action) -> Answer {
    let store = shared.store.clone();
    match action {
        Action::Authenticate { login, password } => {
            match blocking(move || store.authenticate(&login, &password)).await {
                Ok(account) => Answer::Login(account),
                Err(err) => {
                    tracing::warn!(error = %err, "authentication lookup failed");
                    Answer::TempFail
                }
            }
        }
        Action::CheckSender { address } => {
            match blocking(move || store.lookup_address(&address)).await {
                Ok(owner) => Answer::Sender(owner),
                Err(err) => {
                    tracing::warn!(error = %err, "sender lookup failed");
                    Answer::TempFail
                }
            }
        }
        Action::CheckRecipient { address, size } => {
            // With the embedded store a recipient the directory knows
            // costs one in-memory read: made here, not on a blocking
            // thread (a hand-off per RCPT).
            let cached = store
                .kv()
                .local_reads()
                .then(|| lookup_recipient_cached(&store, &shared.directory, &address, size))
                .flatten();
            let found = match cached {
                Some(found) => found,
                None => {
                    let directory = Arc::clone(&shared.directory);
                    blocking(move || lookup_recipient(&store, &directory, &address, size)).await
                }
            };
            match found {
                Ok(found) => Answer::Recipient(found),
                Err(err) => {
                    tracing::warn!(error = %err, "recipient lookup failed");
                    Answer::TempFail
                }
            }
        }
        Action::Deliver(incoming) => Answer::Delivered(deliver(shared, *incoming).await),
    }
}

/// Local domains, addresses and quota limits as RCPT finds them, kept in
/// memory until a commit writes their keys (store watches, see
/// [`tern_store::watched`]): a recipient costs one read, its account's
/// used bytes, which every delivery changes. Only what was found is kept
/// (unknown domains and addresses are read each time), so adding a
/// domain, an account or an alias, or removing one, shows at the next
/// RCPT.
struct Directory {
    domains: WatchedCache<String, bool>,
    addresses: WatchedCache<String, Option<tern_store::AccountId>>,
    /// An account's quota, `None` for an account that is gone.
    quotas: WatchedCache<tern_store::AccountId, Option<u64>>,
}

/// Entries of the [`Directory`]'s address and quota caches (each entry
/// is a watch in the backend; FoundationDB allows 10,000 per process by
/// default, and a refused watch only means a read at every lookup).
const DIRECTORY_CACHE: usize = 1024;

impl Default for Directory {
    fn default() -> Self {
        Self {
            domains: WatchedCache::new(256),
            addresses: WatchedCache::new(DIRECTORY_CACHE),
            quotas: WatchedCache::new(DIRECTORY_CACHE),
        }
    }
}

/// Where `address` leads, and whether its mailbox has room for `size`
/// bytes: the address from the [`Directory`], the used bytes read.
fn lookup_recipient(
    store: &MailStore,
    directory: &Directory,
    address: &str,
    size: usize,
) -> tern_store::Result<RecipientLookup> {
    use tern_store::{account, keys};
    let kv = store.kv();
    let found = if address.eq_ignore_ascii_case("postmaster") {
        // RFC 5321 §4.5.1: "postmaster" without a domain must be
        // accepted; it goes to the first domain's postmaster.
        kv.read(|tx| -> tern_store::Result<_> {
            for domain in account::list_domains(tx)? {
                let Ok(postmaster) = account::normalize_address(&format!("postmaster@{domain}"))
                else {
                    continue;
                };
                if let Some(id) = account::lookup_address(tx, &postmaster)? {
                    return Ok(Some(id));
                }
            }
            Ok(None)
        })?
    } else {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return Ok(RecipientLookup::NotLocal);
        };
        let Ok(domain) = account::normalize_domain(domain) else {
            return Ok(RecipientLookup::NotLocal);
        };
        let local = directory.domains.get_kept(
            kv,
            &domain,
            &keys::domain(&domain),
            |tx| account::is_local_domain(tx, &domain),
            |&local| local,
        )?;
        if !local {
            return Ok(RecipientLookup::NotLocal);
        }
        match account::normalize_address(address) {
            Ok(address) => directory.addresses.get_kept(
                kv,
                &address,
                &keys::address(&address),
                |tx| account::lookup_address(tx, &address),
                Option::is_some,
            )?,
            Err(_) => None,
        }
    };
    let Some(id) = found else {
        return Ok(RecipientLookup::UnknownUser);
    };
    let limit = directory.quotas.get_kept(
        kv,
        &id,
        &keys::acct(id, keys::family::RECORD).build(),
        |tx| Ok(account::get_account(tx, id)?.map(|r| r.quota_bytes)),
        Option::is_some,
    )?;
    let Some(limit) = limit else {
        return Ok(RecipientLookup::UnknownUser);
    };
    room(store, id, limit, size)
}

/// [`lookup_recipient`] when the [`Directory`] knows the address, its
/// domain and its account's quota: one point read (the account's used
/// bytes, a counter every delivery writes, so in memory). `None` when
/// something is not cached (or for the bare "postmaster"): ask
/// [`lookup_recipient`].
fn lookup_recipient_cached(
    store: &MailStore,
    directory: &Directory,
    address: &str,
    size: usize,
) -> Option<tern_store::Result<RecipientLookup>> {
    use tern_store::account;
    let (_, domain) = address.rsplit_once('@')?;
    let domain = account::normalize_domain(domain).ok()?;
    if !directory.domains.cached(&domain)? {
        return None;
    }
    let address = account::normalize_address(address).ok()?;
    let id = directory.addresses.cached(&address)??;
    let limit = directory.quotas.cached(&id)??;
    Some(room(store, id, limit, size))
}

/// Whether account `id`, whose quota is `limit` bytes, has room for a
/// message of `size` bytes.
fn room(
    store: &MailStore,
    id: tern_store::AccountId,
    limit: u64,
    size: usize,
) -> tern_store::Result<RecipientLookup> {
    let used = store
        .kv()
        .read(|tx| tern_store::account::used_bytes(tx, id))?;
    let size = size as u64;
    Ok(if size > limit {
        RecipientLookup::TooBigForMailbox
    } else if used >= limit || used.saturating_add(size) > limit {
        RecipientLookup::MailboxFull
    } else {
        RecipientLookup::Local(id)
    })
}

fn transaction_id() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().r#gen();
    format!("{n:016x}")
}

async fn deliver(shared: &Shared, incoming: Incoming) -> Reply {
    let started = Instant::now();
    let id = transaction_id();
    let mut verdict = Verdict::Accept;
    let mut auth_headers = String::new();
    if incoming.kind == ListenerKind::Mx
        && incoming.auth.is_none()
        && let Some(checker) = &shared.checker
    {
        let outcome = checker
            .check(CheckInput {
                ip: incoming.peer.ip(),
                helo: &incoming.helo,
                mail_from: &incoming.envelope.mail_from,
                message: &incoming.data,
            })
            .await;
        auth_headers = outcome.headers;
        verdict = outcome.verdict;
    }
    if let Verdict::Reject(reply) = verdict {
        tracing::info!(%id, service = incoming.kind.name(), "message refused by DMARC policy");
        return reply;
    }
    // Virus scan, submission limits, blocklists (crate::spam): may refuse.
    let screened = match shared.filter.screen(&incoming, &auth_headers).await {
        Ok(screened) => screened,
        Err(reply) => return reply,
    };
    let junk = verdict == Verdict::Quarantine;
    let screened_at = Instant::now();
    let accepted = Accepted {
        incoming,
        head: Head {
            id,
            auth_headers,
            junk,
            delays: Delays {
                started,
                screened: screened_at,
                handed: screened_at,
            },
        },
    };
    let (store, hostname) = (shared.store.clone(), shared.hostname.clone());
    let vacations = Arc::clone(&shared.vacations);
    let (reply, autoreply) = if accepted.scored_in_task(&store) {
        accepted
            .store_async(&store, &vacations, &hostname, screened)
            .await
    } else {
        // One hand-off to the blocking pool for the rest.
        let job = move || {
            let mut accepted = accepted;
            accepted.head.delays.handed = Instant::now();
            accepted.store(&store, &vacations, &hostname, screened)
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(done) => done,
            Err(err) => {
                tracing::error!(error = %err, "a delivery task failed");
                return reply::TEMP_FAILURE;
            }
        }
    };
    // Vacation replies (RFC 3834), off the reply's path.
    if let Some(autoreply) = autoreply {
        let store = shared.store.clone();
        shared.in_background(move || autoreply.send(&store));
    }
    reply
}

/// A message past the checks that may refuse it asynchronously, on its
/// way into the store.
struct Accepted {
    incoming: Incoming,
    head: Head,
}

/// When a message passed each stage after its data was read, for the
/// `delays` of the delivery log line (as Postfix's `delays=`): where the
/// time between the end of DATA and the reply went.
#[derive(Debug, Clone, Copy)]
struct Delays {
    /// The end of the data.
    started: Instant,
    /// After the asynchronous checks (DNS, clamd, blocklists).
    screened: Instant,
    /// When a blocking thread took the rest (on the session's task, the
    /// same as `screened`: no wait).
    handed: Instant,
}

impl Delays {
    /// "checks/wait/spam/store" in milliseconds: asynchronous checks,
    /// waiting for a blocking thread, the spam score, the store (with its
    /// commit) — `scored` and `stored` being when the last two ended.
    fn format(&self, scored: Instant, stored: Instant) -> String {
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1e3;
        format!(
            "{:.2}/{:.2}/{:.2}/{:.2}",
            ms(self.started, self.screened),
            ms(self.screened, self.handed),
            ms(self.handed, scored),
            ms(scored, stored)
        )
    }
}

/// Vacation replies owed for a delivered message.
struct AutoReplies {
    accounts: Vec<tern_store::AccountId>,
    mail_from: String,
    raw: Vec<u8>,
}

impl AutoReplies {
    fn send(self, store: &MailStore) {
        for account in self.accounts {
            if let Err(err) =
                tern_store::vacation::auto_reply(store, account, &self.mail_from, &self.raw)
            {
                tracing::warn!(error = %err, "vacation reply failed");
            }
        }
    }
}

/// Messages up to this size are scored for spam on the session's task and
/// stored by a delivery worker while the task awaits the outcome (no
/// thread is held through the commit); the score costs about 5 µs of CPU
/// per KB, so this bounds the time the task holds its runtime thread to
/// well under a millisecond. Larger messages take a blocking thread.
const SCORED_IN_TASK: usize = 128 << 10;

impl Accepted {
    /// Whether this message is scored and queued for the store on the
    /// session's task ([`Accepted::store_async`]): small, with no remote
    /// recipient (queueing one syncs the outbound queue), and the store's
    /// reads local (scoring may read an account's spam model, the vacation
    /// check its window: over FoundationDB each a network round trip).
    fn scored_in_task(&self, store: &MailStore) -> bool {
        store.kv().local_reads()
            && self.incoming.data.len() <= SCORED_IN_TASK.min(tern_store::INLINE_BLOB_LIMIT)
            && self
                .incoming
                .envelope
                .recipients
                .iter()
                .all(|r| r.account.is_some())
    }

    /// Takes the message apart for the store: the data delivered is the
    /// one the filter stripped of the X-Spam-* (X-Virus-Status) fields it
    /// came with, if it had any (only ours are delivered).
    fn unpacked(self, screened: &mut crate::spam::Screened) -> (Incoming, Head) {
        let Accepted { mut incoming, head } = self;
        if let Some(message) = screened.take_message() {
            incoming.data = message;
        }
        (incoming, head)
    }

    /// Scores the message for spam, adds the trace header fields and
    /// stores it: local copies delivered, remote recipients of a
    /// submission queued. Blocks. Returns the reply and the vacation
    /// replies owed.
    fn store(
        self,
        store: &MailStore,
        vacations: &tern_store::vacation::VacationCache,
        hostname: &str,
        screened: crate::spam::Screened,
    ) -> (Reply, Option<AutoReplies>) {
        let prepared = self.prepared(store, hostname, screened, |incoming, parsed, ready| {
            let delivered = match parsed {
                Some(message) => store.deliver_prefixed(
                    &ready.raw,
                    &incoming.data,
                    message,
                    &ready.recipients,
                    &ready.options,
                ),
                None => store.deliver_with(&ready.raw, &ready.recipients, &ready.options),
            };
            (ready, delivered)
        });
        match prepared {
            Ok((incoming, (ready, delivered))) => {
                ready.finish(store, vacations, &incoming, delivered)
            }
            Err(reply) => (reply, None),
        }
    }

    /// [`Accepted::store`] on the session's task, for a message that
    /// [`Accepted::scored_in_task`]: the store's commit is awaited.
    async fn store_async(
        self,
        store: &MailStore,
        vacations: &tern_store::vacation::VacationCache,
        hostname: &str,
        screened: crate::spam::Screened,
    ) -> (Reply, Option<AutoReplies>) {
        let prepared = self.prepared(store, hostname, screened, |incoming, parsed, ready| {
            let pending = parsed.map(|message| {
                // The search document, from this parse: the indexer takes
                // it instead of parsing the message again.
                let prefix = &ready.raw[..ready.raw.len() - incoming.data.len()];
                let document =
                    tern_search::Document::from_prefixed(prefix, &incoming.data, message)
                        .map(|d| Arc::new(d) as tern_store::recent::Derived);
                store.deliver_prefixed_async(
                    &ready.raw,
                    &incoming.data,
                    message,
                    &ready.recipients,
                    &ready.options,
                    document,
                )
            });
            (ready, pending)
        });
        let (incoming, (ready, pending)) = match prepared {
            Ok(prepared) => prepared,
            Err(reply) => return (reply, None),
        };
        let delivered = match pending {
            Some(pending) => pending.await,
            // Not parsed at all: the store's own parse decides (blocking).
            None => {
                let (store, raw) = (store.clone(), ready.raw.clone());
                let (recipients, options) = (ready.recipients.clone(), ready.options.clone());
                tokio::task::spawn_blocking(move || store.deliver_with(&raw, &recipients, &options))
                    .await
                    .unwrap_or_else(|err| {
                        Err(tern_store::Error::Invalid(format!(
                            "delivery task failed: {err}"
                        )))
                    })
            }
        };
        ready.finish(store, vacations, &incoming, delivered)
    }

    /// Parses the message once and scores it ([`Ready::new`]), then hands
    /// the data, its parse and the result to `then`; returns the message
    /// with what `then` returned, or the reply when nothing is left to
    /// store.
    fn prepared<R>(
        self,
        store: &MailStore,
        hostname: &str,
        mut screened: crate::spam::Screened,
        then: impl FnOnce(&Incoming, Option<&mail_parser::Message<'_>>, Ready) -> R,
    ) -> Result<(Incoming, R), Reply> {
        let (incoming, head) = self.unpacked(&mut screened);
        let out = {
            let parsed = mail_parser::MessageParser::default().parse(&incoming.data);
            let ready = Ready::new(store, hostname, &incoming, screened, parsed.as_ref(), head)?;
            then(&incoming, parsed.as_ref(), ready)
        };
        Ok((incoming, out))
    }
}

/// What an [`Accepted`] message carries beside its data (the envelope
/// and the data are its [`Incoming`]).
struct Head {
    /// The transaction id (logs, the reply, the Received field).
    id: String,
    /// The Authentication-Results field, or nothing.
    auth_headers: String,
    /// DMARC's quarantine: every copy goes to Junk.
    junk: bool,
    delays: Delays,
}

/// A scored message with its trace fields, ready for the store.
struct Ready {
    id: String,
    /// The message as stored: trace and spam fields on top of the data.
    raw: Vec<u8>,
    recipients: Vec<Recipient>,
    options: DeliverOptions,
    /// DMARC's quarantine: every copy goes to Junk.
    junk: bool,
    /// Accounts the spam filter sent the message to Junk for.
    junk_for: std::collections::HashSet<tern_store::AccountId>,
    delays: Delays,
    scored: Instant,
}

impl Ready {
    /// Scores `incoming` (parsed as `parsed`) and builds what the store
    /// gets; queues a submission's remote recipients (blocking). Errs with
    /// the reply when nothing is left to deliver locally.
    fn new(
        store: &MailStore,
        hostname: &str,
        incoming: &Incoming,
        screened: crate::spam::Screened,
        parsed: Option<&mail_parser::Message<'_>>,
        head: Head,
    ) -> Result<Self, Reply> {
        let Head {
            id,
            auth_headers,
            junk,
            delays,
        } = head;
        let filtered = screened.finish(&incoming.data, parsed)?;
        let scored = Instant::now();
        let received = headers::received(incoming, hostname, &id, SystemTime::now());
        let mut raw =
            Vec::with_capacity(received.len() + auth_headers.len() + incoming.data.len() + 128);
        raw.extend_from_slice(received.as_bytes());
        raw.extend_from_slice(auth_headers.as_bytes());
        raw.extend_from_slice(filtered.headers.as_bytes());
        raw.extend_from_slice(&incoming.data);

        let (mut recipients, envelopes) = store_recipients(&incoming.envelope, junk);
        filtered.apply(&mut recipients);
        // Remote recipients of a submission go to the outbound queue.
        let remote = remote_envelope(&incoming.envelope);
        if !remote.recipients.is_empty() {
            let sender = incoming.auth.as_ref().map(|a| a.account);
            // Queued first: a failed local delivery below is retried by the
            // client, which may then send the remote copies twice, never
            // none.
            match tern_store::queue::enqueue(store.kv(), &raw, sender, &remote, 0) {
                Ok(queued) if recipients.is_empty() => {
                    tracing::info!(%id, queue_id = %format!("{queued:016x}"), "message queued");
                    return Err(accepted_reply(&id));
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::error!(%id, error = %err, "queueing failed");
                    return Err(reply::TEMP_FAILURE);
                }
            }
        }
        let options = DeliverOptions {
            envelopes,
            // One reply for every recipient: each is delivered exactly once
            // or the whole message is deferred (see QuotaPolicy).
            quota: QuotaPolicy::UnderLimitAllOrNothing,
        };
        Ok(Ready {
            id,
            raw,
            recipients,
            options,
            junk,
            junk_for: filtered.junk,
            delays,
            scored,
        })
    }

    /// The reply to the store's outcome `delivered`, and the vacation
    /// replies owed.
    fn finish(
        self,
        store: &MailStore,
        vacations: &tern_store::vacation::VacationCache,
        incoming: &Incoming,
        delivered: tern_store::Result<tern_store::deliver::Outcome>,
    ) -> (Reply, Option<AutoReplies>) {
        let Ready {
            id,
            raw,
            recipients,
            junk,
            junk_for,
            delays,
            scored,
            ..
        } = self;
        match delivered {
            Ok(results) => {
                if let Some(err) = results.iter().find_map(|r| r.as_ref().err()) {
                    // Not produced under UnderLimitAllOrNothing: the store
                    // fails the whole delivery instead. Never acknowledge a
                    // message some recipient did not get.
                    tracing::error!(%id, error = %err, "a recipient's copy was not stored");
                    return (reply::TEMP_FAILURE, None);
                }
                tracing::info!(
                    %id,
                    service = incoming.kind.name(),
                    size = raw.len(),
                    recipients = recipients.len(),
                    junk,
                    delays = %delays.format(scored, Instant::now()),
                    "message delivered"
                );
                // Only accounts with a vacation response on are owed a
                // reply (from the cache, a read when the account's
                // VacationResponse changed; the reply itself is built
                // later).
                let accounts: Vec<_> = if junk {
                    Vec::new()
                } else {
                    recipients
                        .iter()
                        .filter(|r| !junk_for.contains(&r.account))
                        .map(|r| r.account)
                        .filter(|&a| {
                            vacations.is_on(store, a).unwrap_or_else(|err| {
                                tracing::warn!(error = %err, "vacation lookup failed");
                                false
                            })
                        })
                        .collect()
                };
                let autoreply = (!accounts.is_empty()).then(|| AutoReplies {
                    accounts,
                    mail_from: incoming.envelope.mail_from.clone(),
                    raw,
                });
                (accepted_reply(&id), autoreply)
            }
            Err(tern_store::Error::OverQuota { .. }) => {
                // A mailbox filled up after its RCPT was accepted: nothing
                // was stored; at the client's retry that recipient is
                // refused at RCPT and the others get the message.
                tracing::info!(%id, "deferred: a recipient's mailbox is full");
                (reply::MAILBOX_FULL, None)
            }
            Err(tern_store::Error::NotAMessage(reason)) => {
                tracing::info!(%id, %reason, "refused: not a message");
                (
                    Reply::new(554, [5, 6, 0], "Message refused: not a valid message"),
                    None,
                )
            }
            Err(err) => {
                tracing::error!(%id, error = %err, "delivery failed");
                (reply::TEMP_FAILURE, None)
            }
        }
    }
}

fn accepted_reply(id: &str) -> Reply {
    Reply::owned(250, [2, 0, 0], format!("Message accepted, id {id}"))
}

/// One store recipient per account (however many of its addresses were
/// named), each with the envelope listing only its own forward-paths.
fn store_recipients(envelope: &Envelope, junk: bool) -> (Vec<Recipient>, Vec<StoreEnvelope>) {
    let mut recipients: Vec<Recipient> = Vec::new();
    let mut envelopes: Vec<StoreEnvelope> = Vec::new();
    for r in &envelope.recipients {
        let Some(account) = r.account else {
            continue;
        };
        let forward = EnvelopeRecipient {
            address: r.address.clone(),
            notify: r.notify,
            orcpt: r.orcpt.clone(),
        };
        if let Some(i) = recipients.iter().position(|x| x.account == account) {
            envelopes[i].recipients.push(forward);
            continue;
        }
        recipients.push(Recipient {
            account,
            folder: Folder::Role(if junk { "junk" } else { "inbox" }),
            keywords: if junk {
                vec!["$junk".to_owned()]
            } else {
                Vec::new()
            },
        });
        envelopes.push(StoreEnvelope {
            mail_from: envelope.mail_from.clone(),
            ret: envelope.dsn_ret,
            envid: envelope.dsn_envid.clone(),
            body_8bitmime: envelope.body == BodyType::EightBitMime,
            smtputf8: envelope.smtputf8,
            recipients: vec![forward],
        });
    }
    (recipients, envelopes)
}

/// The envelope of a submission's remote recipients (those without a
/// local account), for the outbound queue.
fn remote_envelope(envelope: &Envelope) -> StoreEnvelope {
    StoreEnvelope {
        mail_from: envelope.mail_from.clone(),
        ret: envelope.dsn_ret,
        envid: envelope.dsn_envid.clone(),
        body_8bitmime: envelope.body == BodyType::EightBitMime,
        smtputf8: envelope.smtputf8,
        recipients: envelope
            .recipients
            .iter()
            .filter(|r| r.account.is_none())
            .map(|r| EnvelopeRecipient {
                address: r.address.clone(),
                notify: r.notify,
                orcpt: r.orcpt.clone(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `tern serve` spawns the server on a multi-threaded runtime.
    #[test]
    fn serve_is_a_send_static_future() {
        fn spawnable<F: std::future::Future + Send + 'static>(_: impl FnOnce() -> F) {}
        spawnable(|| {
            let (_tx, rx) = watch::channel(false);
            let store: MailStore = unreachable_store();
            serve(SmtpConfig::default(), store, rx)
        });
    }

    #[test]
    fn delays_are_the_four_stages_in_milliseconds() {
        let started = Instant::now();
        let at = |ms: u64| started + std::time::Duration::from_micros(ms * 1000);
        let delays = Delays {
            started,
            screened: at(2),
            handed: at(3),
        };
        assert_eq!(delays.format(at(5), at(12)), "2.00/1.00/2.00/7.00");
        // A clock read out of order never yields a negative delay.
        assert_eq!(delays.format(at(1), at(1)), "2.00/1.00/0.00/0.00");
    }

    fn unreachable_store() -> MailStore {
        unreachable!("only the types are checked")
    }
}
