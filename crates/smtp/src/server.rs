//! The tokio driver: binds the listeners, admits connections, runs each
//! [`Session`] over TCP or TLS with timeouts, and carries out its actions
//! against the store (on the blocking pool: store calls wait for fsync).

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tern_store::{AccountId, Folder, MailStore, Recipient};
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
use crate::reply::Reply;
use crate::session::{
    Action, Answer, Incoming, ListenerKind, RecipientLookup, Session, SessionConfig, Step,
};

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
    sessions: [Arc<SessionConfig>; 3],
}

impl Shared {
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
    /// Loads (or generates) the certificate, sets up the resolver and binds
    /// the listeners.
    pub async fn bind(config: SmtpConfig, store: MailStore) -> Result<SmtpServer, Error> {
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
    mut stream: TcpStream,
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
            if kind != ListenerKind::Submissions {
                let mut out = Vec::new();
                refusal.reply().write_to(&mut out);
                let _ = tokio::time::timeout(limits.command_timeout, stream.write_all(&out)).await;
                let _ = stream.shutdown().await;
            }
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
    loop {
        match session.step() {
            Step::NeedInput => {
                if flush(&mut conn, &mut session, limits).await.is_err() {
                    return;
                }
                let wait = if session.in_data() {
                    limits.data_timeout
                } else {
                    limits.command_timeout
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
        Action::CheckRecipient { address } => {
            match blocking(move || lookup_recipient(&store, &address)).await {
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

fn lookup_recipient(store: &MailStore, address: &str) -> tern_store::Result<RecipientLookup> {
    // RFC 5321 §4.5.1: "postmaster" without a domain must be accepted.
    if address.eq_ignore_ascii_case("postmaster") {
        for domain in store.list_domains()? {
            if let Some(account) = store.lookup_address(&format!("postmaster@{domain}"))? {
                return Ok(RecipientLookup::Local(account));
            }
        }
        return Ok(RecipientLookup::UnknownUser);
    }
    let Some((_, domain)) = address.rsplit_once('@') else {
        return Ok(RecipientLookup::NotLocal);
    };
    if !store.is_local_domain(domain)? {
        return Ok(RecipientLookup::NotLocal);
    }
    Ok(match store.lookup_address(address)? {
        Some(account) => RecipientLookup::Local(account),
        None => RecipientLookup::UnknownUser,
    })
}

fn transaction_id() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().r#gen();
    format!("{n:016x}")
}

async fn deliver(shared: &Shared, incoming: Incoming) -> Reply {
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
    let received = headers::received(&incoming, &shared.hostname, &id, SystemTime::now());
    let mut raw = Vec::with_capacity(received.len() + auth_headers.len() + incoming.data.len());
    raw.extend_from_slice(received.as_bytes());
    raw.extend_from_slice(auth_headers.as_bytes());
    raw.extend_from_slice(&incoming.data);

    let junk = verdict == Verdict::Quarantine;
    // One copy per account, however many of its addresses were named.
    let mut seen: HashSet<AccountId> = HashSet::new();
    let recipients: Vec<Recipient> = incoming
        .envelope
        .recipients
        .iter()
        .filter(|r| seen.insert(r.account))
        .map(|r| Recipient {
            account: r.account,
            folder: Folder::Role(if junk { "junk" } else { "inbox" }),
            keywords: if junk {
                vec!["$junk".to_owned()]
            } else {
                Vec::new()
            },
        })
        .collect();
    let store = shared.store.clone();
    let size = raw.len();
    let count = recipients.len();
    let outcome = blocking(move || store.deliver(&raw, &recipients)).await;
    match outcome {
        Ok(results) => {
            let stored = results.iter().filter(|r| r.is_ok()).count();
            for failed in results.iter().filter_map(|r| r.as_ref().err()) {
                tracing::warn!(%id, error = %failed, "a recipient's copy was not stored");
            }
            if stored == 0 {
                let over_quota = results
                    .iter()
                    .all(|r| matches!(r, Err(tern_store::Error::OverQuota { .. })));
                return if over_quota {
                    Reply::new(552, [5, 2, 2], "Mailbox full")
                } else {
                    Reply::new(451, [4, 3, 0], "Temporary local problem; try again later")
                };
            }
            tracing::info!(
                %id,
                service = incoming.kind.name(),
                size,
                recipients = count,
                stored,
                junk,
                "message delivered"
            );
            Reply::owned(250, [2, 0, 0], format!("Message accepted, id {id}"))
        }
        Err(tern_store::Error::NotAMessage(reason)) => {
            tracing::info!(%id, %reason, "refused: not a message");
            Reply::new(554, [5, 6, 0], "Message refused: not a valid message")
        }
        Err(err) => {
            tracing::error!(%id, error = %err, "delivery failed");
            Reply::new(451, [4, 3, 0], "Temporary local problem; try again later")
        }
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

    fn unreachable_store() -> MailStore {
        unreachable!("only the types are checked")
    }
}
