//! The SMTP client (RFC 5321): a [`Session`] with one server, opened with
//! opportunistic STARTTLS (RFC 3207; a failed handshake is retried at once
//! in plain text, RFC 7435), carrying one mail transaction after another
//! (RSET before each later one) with PIPELINING (RFC 2920), SIZE (RFC
//! 1870) and the DSN parameters (RFC 3461) when the server offers them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use smtp_proto::{EXT_8BIT_MIME, EXT_DSN, EXT_PIPELINING, EXT_SIZE, EXT_SMTP_UTF8, EXT_START_TLS};
use tern_store::envelope::{DsnNotify, DsnRet};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A reply from the server, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// The code.
    pub code: u16,
    /// The text of every line (codes removed), joined by spaces; starts
    /// with the enhanced status code when the server sent one.
    pub text: String,
}

impl ServerReply {
    /// `550 5.1.1 text` on one line.
    pub fn line(&self) -> String {
        format!("{} {}", self.code, self.text)
    }

    fn positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// Whether the reply is a positive completion (2yz).
    pub fn positive_completion(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Whether the failure is permanent (5yz).
    pub fn permanent(&self) -> bool {
        self.code >= 500
    }

    /// The enhanced status code the server sent, if any.
    pub fn enhanced(&self) -> Option<String> {
        let first = self.text.split_whitespace().next()?;
        let parts: Vec<&str> = first.split('.').collect();
        (parts.len() == 3
            && parts[0].len() == 1
            && matches!(parts[0], "2" | "4" | "5")
            && parts
                .iter()
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        .then(|| first.to_owned())
    }
}

/// One recipient of the transaction.
#[derive(Debug, Clone)]
pub struct Rcpt {
    /// The forward-path.
    pub address: String,
    /// NOTIFY= to pass on.
    pub notify: Option<DsnNotify>,
    /// ORCPT= to pass on (an rfc822 address).
    pub orcpt: Option<String>,
}

/// What to send.
#[derive(Debug)]
pub struct Mail<'a> {
    /// MAIL FROM; empty for `<>`.
    pub mail_from: &'a str,
    /// RET=.
    pub ret: Option<DsnRet>,
    /// ENVID=.
    pub envid: Option<&'a str>,
    /// The message needs 8BITMIME.
    pub body_8bitmime: bool,
    /// The envelope needs SMTPUTF8.
    pub smtputf8: bool,
    /// Recipients.
    pub recipients: &'a [Rcpt],
    /// The message, with CRLF line ends.
    pub data: &'a [u8],
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Our name for EHLO.
    pub hostname: String,
    /// Try STARTTLS when offered.
    pub starttls: bool,
    /// Timeout to connect.
    pub connect_timeout: Duration,
    /// Timeout for each reply (and the TLS handshake).
    pub command_timeout: Duration,
    /// Timeout for the reply to the end of the data.
    pub data_timeout: Duration,
}

/// The outcome of a transaction that reached the data stage, or failed
/// for every recipient at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Per recipient (in order): the reply that decides its fate (the
    /// RCPT reply if negative, else the reply to the data).
    Replies(Vec<ServerReply>),
    /// The session failed before any recipient's fate was decided:
    /// connection, greeting, TLS, MAIL FROM or a protocol error. A reply
    /// when the server gave one.
    Session {
        /// What failed.
        reason: String,
        /// The server's reply, if it gave one.
        reply: Option<ServerReply>,
    },
}

/// TLS settings for opportunistic STARTTLS: any certificate is accepted
/// (an unverified encrypted channel is better than plain text, RFC 7435).
pub fn opportunistic_tls() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(AcceptAny(provider.clone()));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// Moved out for the TLS handshake, which failed.
    Closed,
}

/// A connection with a read buffer.
struct Conn {
    stream: Stream,
    buf: Vec<u8>,
    start: usize,
}

async fn read_some<S: AsyncRead + Unpin>(s: &mut S, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = s.read(&mut chunk).await?;
    out.extend_from_slice(&chunk[..n]);
    Ok(n)
}

async fn write_all<S: AsyncWrite + Unpin>(s: &mut S, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data).await?;
    s.flush().await
}

const MAX_REPLY_LINES: usize = 100;

impl Conn {
    async fn write(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.stream {
            Stream::Plain(s) => write_all(s, data).await,
            Stream::Tls(s) => write_all(s.as_mut(), data).await,
            Stream::Closed => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn line(&mut self) -> std::io::Result<String> {
        loop {
            if let Some(pos) = self.buf[self.start..].iter().position(|&b| b == b'\n') {
                let end = self.start + pos;
                let line = String::from_utf8_lossy(&self.buf[self.start..end])
                    .trim_end_matches('\r')
                    .to_owned();
                self.start = end + 1;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                return Ok(line);
            }
            if self.buf.len() - self.start > 8192 {
                return Err(std::io::Error::other("reply line too long"));
            }
            let n = match &mut self.stream {
                Stream::Plain(s) => read_some(s, &mut self.buf).await?,
                Stream::Tls(s) => read_some(s.as_mut(), &mut self.buf).await?,
                Stream::Closed => return Err(std::io::ErrorKind::NotConnected.into()),
            };
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads one (possibly multi-line) reply. Returns it and the text of
    /// each line (for EHLO).
    async fn reply(&mut self, timeout: Duration) -> Result<(ServerReply, Vec<String>), String> {
        let read = async {
            let mut lines = Vec::new();
            loop {
                let line = self.line().await.map_err(|e| e.to_string())?;
                let code = line
                    .get(..3)
                    .and_then(|c| c.parse::<u16>().ok())
                    .filter(|c| (200..600).contains(c))
                    .ok_or_else(|| format!("malformed reply {:?}", truncate(&line)))?;
                let last = line.as_bytes().get(3) != Some(&b'-');
                lines.push((code, line.get(4..).unwrap_or_default().to_owned()));
                if last {
                    break;
                }
                if lines.len() > MAX_REPLY_LINES {
                    return Err("reply too long".to_owned());
                }
            }
            let code = lines[lines.len() - 1].0;
            let texts: Vec<String> = lines.into_iter().map(|(_, t)| t).collect();
            let text = texts.join(" ");
            Ok((ServerReply { code, text }, texts))
        };
        match tokio::time::timeout(timeout, read).await {
            Ok(r) => r,
            Err(_) => Err("timed out waiting for a reply".to_owned()),
        }
    }

    fn is_tls(&self) -> bool {
        matches!(self.stream, Stream::Tls(_))
    }
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// EHLO keywords parsed with smtp-proto.
fn capabilities(lines: &[String]) -> (u32, usize) {
    let mut text = String::new();
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        text.push_str(&format!("250{sep}{l}\r\n"));
    }
    match smtp_proto::EhloResponse::parse(&mut text.as_bytes().iter()) {
        Ok(r) => (r.capabilities, r.size),
        Err(_) => (0, 0),
    }
}

/// xtext (RFC 3461 §4): `+XX` for `+`, `=`, and bytes outside `!`..`~`.
fn xtext(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

fn session_fail(reason: impl Into<String>, reply: Option<ServerReply>) -> Outcome {
    Outcome::Session {
        reason: reason.into(),
        reply,
    }
}

/// Dot-stuffs `data` and appends the terminating `CRLF.CRLF`.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 50 + 5);
    let mut at_line_start = true;
    for &b in data {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// An open session with a server, past the greeting, EHLO and (when
/// offered and wanted) STARTTLS: ready for mail transactions. A session
/// whose last transaction ended cleanly can carry another one (connection
/// reuse, see `outbound::pool`); each later one starts with RSET.
pub struct Session {
    conn: Conn,
    caps: u32,
    max_size: usize,
    clean: bool,
    used: bool,
    opened: std::time::Instant,
    transactions: u32,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("tls", &self.conn.is_tls())
            .field("clean", &self.clean)
            .field("transactions", &self.transactions)
            .finish_non_exhaustive()
    }
}

/// Why a reused session could not start a transaction: the server closed
/// it, or refused the RSET. Nothing was sent; a fresh session may be tried
/// at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stale(pub String);

/// The longest wait for the reply to the RSET that starts a transaction on
/// a reused session (Postfix's `smtp_rset_timeout`).
const RSET_TIMEOUT: Duration = Duration::from_secs(20);

impl Session {
    /// Whether the session can carry another transaction.
    pub fn reusable(&self) -> bool {
        self.clean
    }

    /// Whether the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// When it was opened.
    pub fn opened(&self) -> std::time::Instant {
        self.opened
    }

    /// Mail transactions it carried.
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// Runs one mail transaction. On a reused session it starts with RSET
    /// (pipelined with MAIL FROM when the server offers PIPELINING); a
    /// session that fails there is [`Stale`].
    pub async fn send(&mut self, mail: &Mail<'_>, config: &ClientConfig) -> Result<Outcome, Stale> {
        let reset = self.used;
        self.used = true;
        self.clean = false;
        let outcome = transaction(self, mail, config, reset).await?;
        if self.clean {
            self.transactions += 1;
        }
        Ok(outcome)
    }

    /// Ends the session politely: QUIT, and the reply awaited briefly.
    pub async fn quit(mut self, config: &ClientConfig) {
        if self.conn.write(b"QUIT\r\n").await.is_ok() {
            let wait = config.command_timeout.min(Duration::from_secs(2));
            let _ = self.conn.reply(wait).await;
        }
    }
}

/// Runs one mail transaction with the server at `addr` (called `host` for
/// TLS) on a session of its own, then QUITs.
pub async fn send(
    addr: SocketAddr,
    host: &str,
    mail: &Mail<'_>,
    config: &ClientConfig,
    tls: &TlsConnector,
) -> Outcome {
    let mut session = match open(addr, host, config, tls).await {
        Ok(s) => s,
        Err(outcome) => return outcome,
    };
    let outcome = match session.send(mail, config).await {
        Ok(o) => o,
        Err(Stale(reason)) => session_fail(reason, None),
    };
    session.quit(config).await;
    outcome
}

/// Opens a session with the server at `addr`, using STARTTLS when it is
/// offered (and `config.starttls`). Opportunistic TLS: when the handshake
/// fails, the server is connected to again and used in plain text (RFC
/// 7435; as Postfix does). The error is the outcome for every recipient.
pub async fn open(
    addr: SocketAddr,
    host: &str,
    config: &ClientConfig,
    tls: &TlsConnector,
) -> Result<Session, Outcome> {
    match open_once(addr, host, config, tls, config.starttls).await {
        Err(Opening::Tls(reason)) => {
            tracing::debug!(%addr, %reason, "STARTTLS failed; trying again in plain text");
            open_once(addr, host, config, tls, false)
                .await
                .map_err(Opening::into_outcome)
        }
        other => other.map_err(Opening::into_outcome),
    }
}

/// Why a session could not be opened.
enum Opening {
    /// The STARTTLS handshake failed (the connection is unusable).
    Tls(String),
    /// Anything else: the outcome for every recipient.
    Failed(Outcome),
}

impl Opening {
    fn into_outcome(self) -> Outcome {
        match self {
            Opening::Tls(reason) => session_fail(reason, None),
            Opening::Failed(outcome) => outcome,
        }
    }
}

async fn open_once(
    addr: SocketAddr,
    host: &str,
    config: &ClientConfig,
    tls: &TlsConnector,
    try_tls: bool,
) -> Result<Session, Opening> {
    let stream = match tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(Opening::Failed(session_fail(
                format!("cannot connect to {addr}: {e}"),
                None,
            )));
        }
        Err(_) => {
            return Err(Opening::Failed(session_fail(
                format!("connecting to {addr} timed out"),
                None,
            )));
        }
    };
    let _ = stream.set_nodelay(true);
    let mut session = Session {
        conn: Conn {
            stream: Stream::Plain(stream),
            buf: Vec::with_capacity(1024),
            start: 0,
        },
        caps: 0,
        max_size: 0,
        clean: false,
        used: false,
        opened: std::time::Instant::now(),
        transactions: 0,
    };
    match hello(&mut session, host, config, tls, try_tls).await {
        Ok(()) => Ok(session),
        Err(Opening::Failed(outcome)) => {
            session.quit(config).await;
            Err(Opening::Failed(outcome))
        }
        Err(e) => Err(e),
    }
}

/// Greeting, EHLO (HELO when refused) and STARTTLS.
async fn hello(
    session: &mut Session,
    host: &str,
    config: &ClientConfig,
    tls: &TlsConnector,
    try_tls: bool,
) -> Result<(), Opening> {
    let t = config.command_timeout;
    let conn = &mut session.conn;
    macro_rules! reply {
        () => {
            match conn.reply(t).await {
                Ok(r) => r,
                Err(e) => return Err(Opening::Failed(session_fail(e, None))),
            }
        };
    }
    macro_rules! send {
        ($data:expr) => {
            if let Err(e) = conn.write($data).await {
                return Err(Opening::Failed(session_fail(
                    format!("write failed: {e}"),
                    None,
                )));
            }
        };
    }
    let (greeting, _) = reply!();
    if greeting.code != 220 {
        return Err(Opening::Failed(session_fail(
            "greeting refused",
            Some(greeting),
        )));
    }
    let ehlo = format!("EHLO {}\r\n", config.hostname);
    send!(ehlo.as_bytes());
    let (reply, lines) = reply!();
    if reply.code == 250 {
        (session.caps, session.max_size) = capabilities(&lines);
    } else {
        send!(format!("HELO {}\r\n", config.hostname).as_bytes());
        let (helo, _) = reply!();
        if helo.code != 250 {
            return Err(Opening::Failed(session_fail("HELO refused", Some(helo))));
        }
    }
    if try_tls && session.caps & EXT_START_TLS != 0 && !conn.is_tls() {
        send!(b"STARTTLS\r\n");
        let (r, _) = reply!();
        if r.code == 220 {
            let Stream::Plain(tcp) = std::mem::replace(&mut conn.stream, Stream::Closed) else {
                unreachable!("checked plain above");
            };
            let name = ServerName::try_from(host.to_owned())
                .unwrap_or_else(|_| ServerName::try_from("localhost").expect("valid name"));
            match tokio::time::timeout(t, tls.connect(name, tcp)).await {
                Ok(Ok(s)) => conn.stream = Stream::Tls(Box::new(s)),
                Ok(Err(e)) => return Err(Opening::Tls(format!("TLS handshake failed: {e}"))),
                Err(_) => return Err(Opening::Tls("TLS handshake timed out".into())),
            }
            conn.buf.clear();
            conn.start = 0;
            send!(ehlo.as_bytes());
            let (reply, lines) = reply!();
            if reply.code != 250 {
                return Err(Opening::Failed(session_fail(
                    "EHLO after STARTTLS refused",
                    Some(reply),
                )));
            }
            (session.caps, session.max_size) = capabilities(&lines);
        }
    }
    Ok(())
}

/// One mail transaction on an open session. Sets `session.clean` when it
/// ends with the session back in its initial state.
async fn transaction(
    session: &mut Session,
    mail: &Mail<'_>,
    config: &ClientConfig,
    reset: bool,
) -> Result<Outcome, Stale> {
    let t = config.command_timeout;
    let (caps, max_size) = (session.caps, session.max_size);
    let conn = &mut session.conn;
    macro_rules! reply {
        () => {
            match conn.reply(t).await {
                Ok(r) => r,
                Err(e) => return Ok(session_fail(e, None)),
            }
        };
    }
    macro_rules! send {
        ($data:expr) => {
            if let Err(e) = conn.write($data).await {
                return Ok(session_fail(format!("write failed: {e}"), None));
            }
        };
    }
    if caps & EXT_SIZE != 0 && max_size > 0 && mail.data.len() > max_size {
        return Ok(session_fail(
            "message too big for the server",
            Some(ServerReply {
                code: 552,
                text: format!(
                    "5.3.4 message size {} exceeds the server's limit {max_size}",
                    mail.data.len()
                ),
            }),
        ));
    }
    if mail.smtputf8 && caps & EXT_SMTP_UTF8 == 0 {
        return Ok(session_fail(
            "the server does not support SMTPUTF8",
            Some(ServerReply {
                code: 553,
                text: "5.6.7 the recipient's server does not accept internationalized addresses"
                    .into(),
            }),
        ));
    }
    let dsn = caps & EXT_DSN != 0;
    let mut from = String::with_capacity(64 + mail.mail_from.len());
    from.push_str("MAIL FROM:<");
    from.push_str(mail.mail_from);
    from.push('>');
    if caps & EXT_SIZE != 0 {
        from.push_str(&format!(" SIZE={}", mail.data.len()));
    }
    if mail.body_8bitmime && caps & EXT_8BIT_MIME != 0 {
        from.push_str(" BODY=8BITMIME");
    }
    if mail.smtputf8 {
        from.push_str(" SMTPUTF8");
    }
    if dsn {
        match mail.ret {
            Some(DsnRet::Full) => from.push_str(" RET=FULL"),
            Some(DsnRet::Headers) => from.push_str(" RET=HDRS"),
            None => {}
        }
        if let Some(envid) = mail.envid {
            from.push_str(&format!(" ENVID={}", xtext(envid)));
        }
    }
    from.push_str("\r\n");
    let mut rcpts = Vec::with_capacity(mail.recipients.len());
    for r in mail.recipients {
        let mut line = format!("RCPT TO:<{}>", r.address);
        if dsn {
            if let Some(n) = r.notify {
                let mut what = Vec::new();
                if n.success {
                    what.push("SUCCESS");
                }
                if n.failure {
                    what.push("FAILURE");
                }
                if n.delay {
                    what.push("DELAY");
                }
                if what.is_empty() {
                    what.push("NEVER");
                }
                line.push_str(&format!(" NOTIFY={}", what.join(",")));
            }
            if let Some(o) = &r.orcpt {
                line.push_str(&format!(" ORCPT=rfc822;{}", xtext(o)));
            }
        }
        line.push_str("\r\n");
        rcpts.push(line);
    }
    // A reused session starts with RSET; a failure there means the session
    // is gone (closed by the server while idle) and nothing was sent.
    let rset_wait = t.min(RSET_TIMEOUT);
    let pipelining = caps & EXT_PIPELINING != 0;
    let mut rcpt_replies = Vec::with_capacity(rcpts.len());
    let accepted;
    if pipelining {
        // [RSET,] MAIL, every RCPT and DATA in one write (RFC 2920).
        let mut batch = Vec::with_capacity(256);
        if reset {
            batch.extend_from_slice(b"RSET\r\n");
        }
        batch.extend_from_slice(from.as_bytes());
        for r in &rcpts {
            batch.extend_from_slice(r.as_bytes());
        }
        batch.extend_from_slice(b"DATA\r\n");
        if let Err(e) = conn.write(&batch).await {
            return if reset {
                Err(Stale(format!("write failed: {e}")))
            } else {
                Ok(session_fail(format!("write failed: {e}"), None))
            };
        }
        if reset {
            match conn.reply(rset_wait).await {
                Ok((r, _)) if r.code == 250 => {}
                Ok((r, _)) => return Err(Stale(format!("RSET refused: {}", r.line()))),
                Err(e) => return Err(Stale(e)),
            }
        }
        let (mail_reply, _) = reply!();
        for _ in &rcpts {
            let (r, _) = reply!();
            rcpt_replies.push(r);
        }
        let (data_reply, _) = reply!();
        if !mail_reply.positive() {
            return Ok(session_fail("MAIL FROM refused", Some(mail_reply)));
        }
        accepted = rcpt_replies.iter().filter(|r| r.positive()).count();
        if data_reply.code != 354 {
            if accepted == 0 {
                session.clean = true;
                return Ok(Outcome::Replies(rcpt_replies));
            }
            return Ok(session_fail("DATA refused", Some(data_reply)));
        }
        if accepted == 0 {
            // DATA was accepted though no recipient was: end it empty.
            send!(b".\r\n");
            let _ = conn.reply(t).await;
            return Ok(Outcome::Replies(rcpt_replies));
        }
    } else {
        if reset {
            if let Err(e) = conn.write(b"RSET\r\n").await {
                return Err(Stale(format!("write failed: {e}")));
            }
            match conn.reply(rset_wait).await {
                Ok((r, _)) if r.code == 250 => {}
                Ok((r, _)) => return Err(Stale(format!("RSET refused: {}", r.line()))),
                Err(e) => return Err(Stale(e)),
            }
        }
        send!(from.as_bytes());
        let (mail_reply, _) = reply!();
        if !mail_reply.positive() {
            return Ok(session_fail("MAIL FROM refused", Some(mail_reply)));
        }
        for r in &rcpts {
            send!(r.as_bytes());
            let (reply, _) = reply!();
            rcpt_replies.push(reply);
        }
        accepted = rcpt_replies.iter().filter(|r| r.positive()).count();
        if accepted == 0 {
            send!(b"RSET\r\n");
            if let Ok((r, _)) = conn.reply(t).await {
                session.clean = r.code == 250;
            }
            return Ok(Outcome::Replies(rcpt_replies));
        }
        send!(b"DATA\r\n");
        let (data_reply, _) = reply!();
        if data_reply.code != 354 {
            return Ok(session_fail("DATA refused", Some(data_reply)));
        }
    }
    send!(&dot_stuff(mail.data));
    let end = match conn.reply(config.data_timeout).await {
        Ok((r, _)) => r,
        Err(e) => return Ok(session_fail(e, None)),
    };
    session.clean = true;
    Ok(Outcome::Replies(
        rcpt_replies
            .into_iter()
            .map(|r| if r.positive() { end.clone() } else { r })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_stuffing_and_xtext() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".x"), b"..x\r\n.\r\n");
        assert_eq!(xtext("a+b=c d"), "a+2Bb+3Dc+20d");
    }

    #[test]
    fn enhanced_codes_are_recognised() {
        let r = ServerReply {
            code: 550,
            text: "5.1.1 no such user".into(),
        };
        assert_eq!(r.enhanced().as_deref(), Some("5.1.1"));
        let r = ServerReply {
            code: 550,
            text: "no such user".into(),
        };
        assert_eq!(r.enhanced(), None);
    }
}
