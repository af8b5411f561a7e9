//! The SMTP server session as a state machine without I/O.
//!
//! A [`Session`] is fed the bytes a client sends ([`Session::feed`]) and
//! asked what to do next ([`Session::step`]). It answers with a [`Step`]:
//! read more input, carry out an [`Action`] (look up a recipient, check a
//! password, deliver a message) and report back with
//! [`Session::resolve`], upgrade to TLS, or close. Replies accumulate in an
//! output buffer the driver sends ([`Session::take_output`]) whenever it is
//! about to wait for input, so pipelined commands (RFC 2920) get their
//! replies in one write.
//!
//! The session decides every reply code; the driver only answers questions
//! of fact (does this mailbox exist, is this password right, was the
//! message stored). This keeps the protocol testable with scripted
//! transcripts (`rfc-conformance/smtp/`).

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use smtp_proto::request::receiver::{BdatReceiver, DataReceiver};
use smtp_proto::{
    AUTH_LOGIN, AUTH_PLAIN, Error as ParseError, MAIL_BODY_8BITMIME, MAIL_BODY_BINARYMIME,
    MAIL_BY_NOTIFY, MAIL_BY_RETURN, MAIL_BY_TRACE, MAIL_CONPERM, MAIL_REQUIRETLS, MAIL_RET_FULL,
    MAIL_RET_HDRS, MAIL_SMTPUTF8, MailFrom, RCPT_CONNEG, RCPT_NOTIFY_DELAY, RCPT_NOTIFY_FAILURE,
    RCPT_NOTIFY_NEVER, RCPT_NOTIFY_SUCCESS, RCPT_RRVS_CONTINUE, RCPT_RRVS_REJECT, RcptTo, Request,
};
use tern_store::AccountId;
pub use tern_store::{DsnNotify, DsnRet};

use crate::reply::{self, Reply};

/// Which service a listener offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    /// Port 25: mail from other servers, for local domains only. No AUTH.
    Mx,
    /// Port 587: mail from users; AUTH required, STARTTLS offered.
    Submission,
    /// Port 465: submission over implicit TLS (RFC 8314).
    Submissions,
}

impl ListenerKind {
    /// Whether this is a submission service (AUTH required before MAIL).
    pub fn is_submission(self) -> bool {
        matches!(self, ListenerKind::Submission | ListenerKind::Submissions)
    }

    /// A short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            ListenerKind::Mx => "smtp",
            ListenerKind::Submission => "submission",
            ListenerKind::Submissions => "submissions",
        }
    }
}

/// What one session needs to know about its listener and its limits.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// The service.
    pub kind: ListenerKind,
    /// Whether STARTTLS can be offered (a certificate is loaded).
    pub tls_available: bool,
    /// Offer AUTH on connections without TLS.
    pub allow_plaintext_auth: bool,
    /// Largest message accepted, in bytes (SIZE, DATA, BDAT).
    pub max_message_size: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Negative replies before the session is closed with 421.
    pub max_errors: usize,
    /// Longest command line, CRLF included.
    pub max_line_length: usize,
}

impl SessionConfig {
    /// Defaults for a listener of `kind` named `hostname`.
    pub fn new(hostname: impl Into<String>, kind: ListenerKind) -> SessionConfig {
        SessionConfig {
            hostname: hostname.into(),
            kind,
            tls_available: true,
            allow_plaintext_auth: false,
            max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: 100,
            max_errors: 10,
            max_line_length: 4096,
        }
    }
}

/// The negotiated TLS parameters of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// The user a session authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthUser {
    /// The login given.
    pub login: String,
    /// Its account.
    pub account: AccountId,
}

/// BODY of MAIL FROM (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// Not given, or `7BIT`.
    #[default]
    SevenBit,
    /// `8BITMIME`.
    EightBitMime,
}

/// One accepted recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeRecipient {
    /// The address as given in RCPT TO.
    pub address: String,
    /// The local account it delivers to; `None` for a remote recipient
    /// of an authenticated submission (sent through the outbound queue).
    pub account: Option<AccountId>,
    /// DSN NOTIFY (RFC 3461), when given.
    pub notify: Option<DsnNotify>,
    /// DSN ORCPT (RFC 3461), when given: the original recipient (type
    /// `rfc822`), xtext-decoded.
    pub orcpt: Option<String>,
}

/// The envelope of a message: MAIL FROM, RCPT TO and their parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Envelope {
    /// The reverse-path; empty for the null sender `<>`.
    pub mail_from: String,
    /// BODY=.
    pub body: BodyType,
    /// SMTPUTF8 given.
    pub smtputf8: bool,
    /// SIZE= as declared (0 when not given).
    pub declared_size: usize,
    /// DSN RET=.
    pub dsn_ret: Option<DsnRet>,
    /// DSN ENVID=, xtext-decoded.
    pub dsn_envid: Option<String>,
    /// The accepted recipients, in RCPT order.
    pub recipients: Vec<EnvelopeRecipient>,
}

/// A message received, with what the session knows about its client.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The listener it came through.
    pub kind: ListenerKind,
    /// The client's address.
    pub peer: SocketAddr,
    /// The EHLO/HELO name.
    pub helo: String,
    /// Whether the client said EHLO (ESMTP) rather than HELO.
    pub esmtp: bool,
    /// TLS parameters, if the connection is encrypted.
    pub tls: Option<TlsInfo>,
    /// The authenticated user, if any.
    pub auth: Option<AuthUser>,
    /// Envelope and DSN parameters.
    pub envelope: Envelope,
    /// The message as received (dot-unstuffed, CRLF line ends as sent).
    pub data: Vec<u8>,
}

impl Incoming {
    /// The protocol name for the Received header (RFC 3848).
    pub fn protocol(&self) -> &'static str {
        match (self.esmtp, self.tls.is_some(), self.auth.is_some()) {
            (false, _, _) => "SMTP",
            (true, false, false) => "ESMTP",
            (true, true, false) => "ESMTPS",
            (true, false, true) => "ESMTPA",
            (true, true, true) => "ESMTPSA",
        }
    }
}

/// Something the driver must do and report back with [`Session::resolve`].
#[derive(Debug, Clone)]
pub enum Action {
    /// Check a login and password; answer [`Answer::Login`].
    Authenticate {
        /// The login (authcid).
        login: String,
        /// The password.
        password: String,
    },
    /// Which account owns `address`; answer [`Answer::Sender`].
    CheckSender {
        /// The MAIL FROM address.
        address: String,
    },
    /// Is `address` local, does it exist, and has its mailbox room for
    /// `size` bytes; answer [`Answer::Recipient`].
    CheckRecipient {
        /// The RCPT TO address.
        address: String,
        /// The SIZE= of MAIL FROM; 0 when not declared.
        size: usize,
    },
    /// Check, store and acknowledge a message; answer [`Answer::Delivered`]
    /// once the store's commit is durable (or with the failure's reply).
    Deliver(Box<Incoming>),
}

/// What the driver found, for the pending [`Action`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// For [`Action::Authenticate`]: the account, or `None` if the
    /// credentials are wrong.
    Login(Option<AccountId>),
    /// For [`Action::CheckSender`]: the account that owns the address.
    Sender(Option<AccountId>),
    /// For [`Action::CheckRecipient`].
    Recipient(RecipientLookup),
    /// For [`Action::Deliver`]: the reply to give (250 only once durable).
    Delivered(Reply),
    /// For any action: the lookup failed for a temporary reason.
    TempFail,
}

/// Where a recipient address leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientLookup {
    /// A local mailbox.
    Local(AccountId),
    /// A local domain, but no such mailbox.
    UnknownUser,
    /// A local mailbox at or over its quota, or one the declared size
    /// would take over it: 452 4.2.2, try later.
    MailboxFull,
    /// A local mailbox whose whole quota is smaller than the declared
    /// size: 552 5.2.2, the message can never fit.
    TooBigForMailbox,
    /// Not one of our domains.
    NotLocal,
}

/// What the driver does next.
#[derive(Debug)]
pub enum Step {
    /// Send the output, then read more input.
    NeedInput,
    /// Carry out the action, then call [`Session::resolve`].
    Act(Action),
    /// Send the output, run the TLS handshake, then call
    /// [`Session::tls_started`].
    StartTls,
    /// Send the output, then close the connection.
    Close,
}

#[derive(Debug)]
enum State {
    /// Reading command lines.
    Command,
    /// Discarding the rest of an over-long command line.
    SkipLine,
    /// Reading DATA until `<CRLF>.<CRLF>`.
    Data(Opaque<DataReceiver>),
    /// Reading a BDAT chunk; `keep` is false when it is discarded.
    Bdat {
        rx: Opaque<BdatReceiver>,
        keep: bool,
        size: usize,
    },
    /// AUTH PLAIN sent 334, waiting for the response line.
    AuthPlain,
    /// AUTH LOGIN asked for the user name.
    AuthLoginUser,
    /// AUTH LOGIN asked for the password.
    AuthLoginPassword { login: String },
    /// The connection is over.
    Closed,
}

#[derive(Debug, Clone)]
enum Pending {
    Login { login: String },
    Sender { envelope: Envelope },
    Recipient { recipient: PendingRecipient },
    Delivery,
}

#[derive(Debug, Clone)]
struct PendingRecipient {
    address: String,
    notify: Option<DsnNotify>,
    orcpt: Option<String>,
}

/// An open mail transaction.
#[derive(Debug, Default)]
struct Transaction {
    envelope: Envelope,
    /// RCPT commands seen (accepted or not).
    rcpt_attempts: usize,
    data: Vec<u8>,
    /// BDAT was used: DATA is no longer allowed.
    bdat: bool,
    /// The data went over the size limit: the rest is discarded.
    too_big: bool,
}

/// One SMTP session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    config: Arc<SessionConfig>,
    peer: SocketAddr,
    input: Vec<u8>,
    pos: usize,
    out: Vec<u8>,
    state: State,
    helo: Option<String>,
    esmtp: bool,
    tls: Option<TlsInfo>,
    auth: Option<AuthUser>,
    tx: Option<Transaction>,
    pending: Option<Pending>,
    start_tls: bool,
    errors: usize,
}

impl Session {
    /// A new session; the greeting is already in the output. `tls` is set
    /// for implicit TLS (the handshake came first).
    pub fn new(config: Arc<SessionConfig>, peer: SocketAddr, tls: Option<TlsInfo>) -> Session {
        let mut out = Vec::new();
        out.extend_from_slice(format!("220 {} ESMTP Tern\r\n", config.hostname).as_bytes());
        Session {
            config,
            peer,
            input: Vec::new(),
            pos: 0,
            out,
            state: State::Command,
            helo: None,
            esmtp: false,
            tls,
            auth: None,
            tx: None,
            pending: None,
            start_tls: false,
            errors: 0,
        }
    }

    /// Adds client input.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.pos >= self.input.len() / 2 {
            self.input.drain(..self.pos);
            self.pos = 0;
        }
        self.input.extend_from_slice(bytes);
    }

    /// Takes the replies produced so far.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The replies produced so far, without taking them.
    pub fn output(&self) -> &[u8] {
        &self.out
    }

    /// Whether the session is reading message data (DATA or BDAT), for
    /// the choice between the command and the data timeout.
    pub fn in_data(&self) -> bool {
        matches!(self.state, State::Data(_) | State::Bdat { .. })
    }

    /// Whether part of a command line (or of an AUTH response) has
    /// arrived but not its end.
    pub fn in_partial_line(&self) -> bool {
        match self.state {
            State::SkipLine => true,
            State::Command
            | State::AuthPlain
            | State::AuthLoginUser
            | State::AuthLoginPassword { .. } => self.pos < self.input.len(),
            _ => false,
        }
    }

    /// Whether no mail transaction is open: shutting down now loses
    /// nothing.
    pub fn is_idle(&self) -> bool {
        self.tx.is_none() && self.pending.is_none() && !self.in_data()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// The authenticated user, if any.
    pub fn auth_user(&self) -> Option<&AuthUser> {
        self.auth.as_ref()
    }

    /// The client waited too long: 421 and close.
    pub fn timed_out(&mut self) {
        let what = if self.in_data() { "data" } else { "command" };
        self.close_with(&Reply::owned(
            421,
            [4, 4, 2],
            format!(
                "{} Timeout waiting for {what}; closing connection",
                self.config.hostname
            ),
        ));
    }

    /// The server is stopping: 421 and close.
    pub fn shutting_down(&mut self) {
        self.close_with(&reply::SHUTTING_DOWN);
    }

    /// Ends the session with `reply` (a 421 the driver decided on, such as
    /// a connection limit).
    pub fn close_with(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
        self.state = State::Closed;
        self.pending = None;
    }

    /// The TLS handshake after STARTTLS succeeded: the session starts over
    /// (RFC 3207 §4.2), the client must say EHLO again.
    pub fn tls_started(&mut self, tls: TlsInfo) {
        self.tls = Some(tls);
        self.helo = None;
        self.esmtp = false;
        self.auth = None;
        self.tx = None;
        self.start_tls = false;
    }

    /// Processes input until the driver has something to do.
    ///
    /// # Panics
    /// If an action is pending: call [`Session::resolve`] first.
    pub fn step(&mut self) -> Step {
        assert!(
            self.pending.is_none(),
            "Session::step called while an action is pending"
        );
        loop {
            if self.start_tls {
                return Step::StartTls;
            }
            let progress = match &mut self.state {
                State::Closed => return Step::Close,
                State::Command => self.command(),
                State::SkipLine => self.skip_line(),
                State::Data(_) => self.data(),
                State::Bdat { .. } => self.bdat(),
                State::AuthPlain | State::AuthLoginUser | State::AuthLoginPassword { .. } => {
                    self.auth_line()
                }
            };
            match progress {
                Progress::Continue => continue,
                Progress::NeedInput => return Step::NeedInput,
                Progress::Act(action) => return Step::Act(action),
            }
        }
    }

    /// Reports the outcome of the action [`Session::step`] returned.
    pub fn resolve(&mut self, answer: Answer) {
        let Some(pending) = self.pending.take() else {
            debug_assert!(false, "Session::resolve without a pending action");
            return;
        };
        match (pending, answer) {
            (Pending::Login { .. }, Answer::TempFail) => self.reply(&reply::AUTH_TEMP_FAILURE),
            // A sender or recipient lookup leaves the transaction as it
            // was; a failed delivery has already ended it.
            (_, Answer::TempFail) => self.reply(&reply::TEMP_FAILURE),
            (Pending::Login { login }, Answer::Login(account)) => match account {
                Some(account) => {
                    self.auth = Some(AuthUser { login, account });
                    self.reply(&reply::AUTH_OK);
                }
                None => self.error(&reply::AUTH_FAILED),
            },
            (Pending::Sender { envelope }, Answer::Sender(owner)) => {
                let allowed = match (&self.auth, owner) {
                    (Some(user), Some(owner)) => user.account == owner,
                    _ => false,
                };
                if allowed {
                    self.tx = Some(Transaction {
                        envelope,
                        ..Transaction::default()
                    });
                    self.reply(&reply::SENDER_OK);
                } else {
                    self.error(&reply::SENDER_NOT_OWNED);
                }
            }
            (Pending::Recipient { recipient }, Answer::Recipient(lookup)) => {
                self.recipient_found(recipient, lookup)
            }
            (Pending::Delivery, Answer::Delivered(reply)) => {
                self.tx = None;
                if reply.is_negative() {
                    self.error(&reply);
                } else {
                    self.reply(&reply);
                }
            }
            (pending, answer) => {
                debug_assert!(false, "answer {answer:?} does not fit {pending:?}");
                self.reply(&reply::TEMP_FAILURE);
            }
        }
    }

    fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
    }

    /// A negative reply that counts towards the error limit.
    fn error(&mut self, reply: &Reply) {
        reply.write_to(&mut self.out);
        self.errors += 1;
        if self.errors >= self.config.max_errors {
            self.close_with(&reply::TOO_MANY_ERRORS);
        }
    }

    fn act(&mut self, pending: Pending, action: Action) -> Progress {
        self.pending = Some(pending);
        Progress::Act(action)
    }

    fn rest(&self) -> &[u8] {
        &self.input[self.pos..]
    }

    /// The next complete line (LF included), if any.
    fn next_line(&mut self) -> Option<std::ops::Range<usize>> {
        let rest = self.rest();
        let end = rest.iter().position(|&b| b == b'\n')?;
        let range = self.pos..self.pos + end + 1;
        self.pos = range.end;
        Some(range)
    }

    fn line_too_long(&mut self) -> Progress {
        if self.rest().len() >= self.config.max_line_length {
            self.pos = self.input.len();
            self.state = State::SkipLine;
            self.error(&reply::LINE_TOO_LONG);
            return Progress::Continue;
        }
        Progress::NeedInput
    }

    fn skip_line(&mut self) -> Progress {
        match self.rest().iter().position(|&b| b == b'\n') {
            Some(end) => {
                self.pos += end + 1;
                if !self.is_closed() {
                    self.state = State::Command;
                }
                Progress::Continue
            }
            None => {
                self.pos = self.input.len();
                Progress::NeedInput
            }
        }
    }

    fn command(&mut self) -> Progress {
        let Some(range) = self.next_line() else {
            return self.line_too_long();
        };
        if range.len() > self.config.max_line_length {
            self.error(&reply::LINE_TOO_LONG);
            return Progress::Continue;
        }
        if let Err(reply) = crate::dsn::check(&self.input[range.clone()]) {
            self.error(&reply);
            return Progress::Continue;
        }
        let parsed = Request::parse(&mut self.input[range].iter()).map(Request::into_owned);
        match parsed {
            Ok(request) => self.request(request),
            Err(err) => {
                let reply = parse_error_reply(err);
                self.error(&reply);
                Progress::Continue
            }
        }
    }

    fn request(&mut self, request: Request<String>) -> Progress {
        match request {
            Request::Ehlo { host } => {
                self.tx = None;
                self.helo = Some(host);
                self.esmtp = true;
                self.ehlo_reply();
            }
            Request::Helo { host } => {
                self.tx = None;
                self.helo = Some(host);
                self.esmtp = false;
                let text = format!("250 {}\r\n", self.config.hostname);
                self.out.extend_from_slice(text.as_bytes());
            }
            Request::Mail { from } => return self.mail(from),
            Request::Rcpt { to } => return self.rcpt(to),
            Request::Data => self.data_command(),
            Request::Bdat {
                chunk_size,
                is_last,
            } => self.bdat_command(chunk_size, is_last),
            Request::Rset => {
                self.tx = None;
                self.reply(&reply::OK);
            }
            Request::Noop { .. } => self.reply(&reply::OK),
            Request::Vrfy { .. } => self.reply(&reply::VRFY),
            Request::Help { .. } => self.reply(&reply::HELP),
            Request::Quit => {
                self.close_with(&reply::BYE);
            }
            Request::StartTls => self.starttls(),
            Request::Auth {
                mechanism,
                initial_response,
            } => return self.auth_command(mechanism, initial_response),
            Request::Lhlo { .. }
            | Request::Expn { .. }
            | Request::Etrn { .. }
            | Request::Atrn { .. }
            | Request::Burl { .. } => self.error(&reply::NOT_IMPLEMENTED),
        }
        Progress::Continue
    }

    fn auth_offered(&self) -> bool {
        self.config.kind.is_submission() && (self.tls.is_some() || self.config.allow_plaintext_auth)
    }

    fn starttls_offered(&self) -> bool {
        self.config.tls_available && self.tls.is_none()
    }

    fn ehlo_reply(&mut self) {
        let mut lines = vec![
            self.config.hostname.clone(),
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "CHUNKING".to_owned(),
            "DSN".to_owned(),
        ];
        if self.starttls_offered() {
            lines.push("STARTTLS".to_owned());
        }
        if self.auth_offered() && self.auth.is_none() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        let last = lines.len() - 1;
        for (i, line) in lines.iter().enumerate() {
            let sep = if i == last { ' ' } else { '-' };
            self.out
                .extend_from_slice(format!("250{sep}{line}\r\n").as_bytes());
        }
    }

    fn mail(&mut self, from: MailFrom<String>) -> Progress {
        if self.helo.is_none() {
            self.error(&reply::HELO_FIRST);
            return Progress::Continue;
        }
        if self.tx.is_some() {
            self.error(&reply::NESTED_MAIL);
            return Progress::Continue;
        }
        if self.config.kind.is_submission() && self.auth.is_none() {
            self.error(&reply::AUTH_REQUIRED);
            return Progress::Continue;
        }
        let unsupported = [
            (MAIL_BODY_BINARYMIME, "BODY=BINARYMIME"),
            (MAIL_REQUIRETLS, "REQUIRETLS"),
            (MAIL_CONPERM, "CONPERM"),
            (MAIL_BY_NOTIFY | MAIL_BY_RETURN | MAIL_BY_TRACE, "BY"),
        ];
        for (flag, name) in unsupported {
            if from.flags & flag != 0 {
                self.error(&unsupported_parameter(name));
                return Progress::Continue;
            }
        }
        if from.hold_for != 0 || from.hold_until != 0 {
            self.error(&unsupported_parameter("HOLDFOR/HOLDUNTIL"));
            return Progress::Continue;
        }
        if from.mtrk.is_some() {
            self.error(&unsupported_parameter("MTRK"));
            return Progress::Continue;
        }
        if from.mt_priority != 0 {
            self.error(&unsupported_parameter("MT-PRIORITY"));
            return Progress::Continue;
        }
        if from.size > self.config.max_message_size {
            self.error(&reply::TOO_BIG);
            return Progress::Continue;
        }
        let smtputf8 = from.flags & MAIL_SMTPUTF8 != 0;
        if !smtputf8 && !from.address.is_ascii() {
            self.error(&reply::NON_ASCII_SENDER);
            return Progress::Continue;
        }
        let envelope = Envelope {
            mail_from: from.address,
            body: if from.flags & MAIL_BODY_8BITMIME != 0 {
                BodyType::EightBitMime
            } else {
                BodyType::SevenBit
            },
            smtputf8,
            declared_size: from.size,
            dsn_ret: if from.flags & MAIL_RET_FULL != 0 {
                Some(DsnRet::Full)
            } else if from.flags & MAIL_RET_HDRS != 0 {
                Some(DsnRet::Headers)
            } else {
                None
            },
            dsn_envid: from.env_id,
            recipients: Vec::new(),
        };
        if self.config.kind.is_submission() {
            if envelope.mail_from.is_empty() {
                self.error(&reply::SENDER_NOT_OWNED);
                return Progress::Continue;
            }
            let address = envelope.mail_from.clone();
            return self.act(
                Pending::Sender { envelope },
                Action::CheckSender { address },
            );
        }
        self.tx = Some(Transaction {
            envelope,
            ..Transaction::default()
        });
        self.reply(&reply::SENDER_OK);
        Progress::Continue
    }

    fn rcpt(&mut self, to: RcptTo<String>) -> Progress {
        let Some(tx) = &mut self.tx else {
            self.error(&reply::MAIL_FIRST);
            return Progress::Continue;
        };
        tx.rcpt_attempts += 1;
        let smtputf8 = tx.envelope.smtputf8;
        let size = tx.envelope.declared_size;
        let accepted = tx.envelope.recipients.len();
        if accepted >= self.config.max_recipients {
            self.reply(&reply::TOO_MANY_RECIPIENTS);
            return Progress::Continue;
        }
        if to.flags & (RCPT_CONNEG | RCPT_RRVS_REJECT | RCPT_RRVS_CONTINUE) != 0 || to.rrvs != 0 {
            self.error(&unsupported_parameter("RRVS/CONNEG"));
            return Progress::Continue;
        }
        if !smtputf8 && !to.address.is_ascii() {
            self.error(&reply::NON_ASCII_RECIPIENT);
            return Progress::Continue;
        }
        let notify_flags =
            RCPT_NOTIFY_NEVER | RCPT_NOTIFY_SUCCESS | RCPT_NOTIFY_FAILURE | RCPT_NOTIFY_DELAY;
        let notify = (to.flags & notify_flags != 0).then_some(DsnNotify {
            success: to.flags & RCPT_NOTIFY_SUCCESS != 0,
            failure: to.flags & RCPT_NOTIFY_FAILURE != 0,
            delay: to.flags & RCPT_NOTIFY_DELAY != 0,
        });
        // smtp-proto reads `<postmaster>` (RFC 5321 §4.5.1: no domain)
        // as the empty address; `<>` is no valid forward-path either.
        let address = if to.address.is_empty() {
            "postmaster".to_owned()
        } else {
            to.address
        };
        let recipient = PendingRecipient {
            address: address.clone(),
            notify,
            orcpt: to.orcpt,
        };
        self.act(
            Pending::Recipient { recipient },
            Action::CheckRecipient { address, size },
        )
    }

    fn recipient_found(&mut self, recipient: PendingRecipient, lookup: RecipientLookup) {
        match lookup {
            RecipientLookup::Local(account) => {
                if let Some(tx) = &mut self.tx {
                    tx.envelope.recipients.push(EnvelopeRecipient {
                        address: recipient.address,
                        account: Some(account),
                        notify: recipient.notify,
                        orcpt: recipient.orcpt,
                    });
                    self.reply(&reply::RECIPIENT_OK);
                } else {
                    self.error(&reply::MAIL_FIRST);
                }
            }
            RecipientLookup::UnknownUser => self.error(&reply::UNKNOWN_USER),
            RecipientLookup::MailboxFull => self.reply(&reply::MAILBOX_FULL),
            RecipientLookup::TooBigForMailbox => self.error(&reply::TOO_BIG_FOR_MAILBOX),
            RecipientLookup::NotLocal => {
                if self.auth.is_some() {
                    // Submission: a remote recipient, for the outbound
                    // queue.
                    if let Some(tx) = &mut self.tx {
                        tx.envelope.recipients.push(EnvelopeRecipient {
                            address: recipient.address,
                            account: None,
                            notify: recipient.notify,
                            orcpt: recipient.orcpt,
                        });
                        self.reply(&reply::RECIPIENT_OK);
                    } else {
                        self.error(&reply::MAIL_FIRST);
                    }
                } else {
                    self.error(&reply::RELAY_DENIED);
                }
            }
        }
    }

    /// Checks that a DATA or BDAT may start; the reply when not.
    fn transaction_ready(&self) -> Result<(), Reply> {
        match &self.tx {
            None => Err(reply::MAIL_FIRST),
            Some(tx) if tx.envelope.recipients.is_empty() => {
                if tx.rcpt_attempts == 0 {
                    Err(reply::RCPT_FIRST)
                } else {
                    Err(reply::NO_VALID_RECIPIENTS)
                }
            }
            Some(_) => Ok(()),
        }
    }

    fn data_command(&mut self) {
        if let Err(reply) = self.transaction_ready() {
            self.error(&reply);
            return;
        }
        if self.tx.as_ref().is_some_and(|tx| tx.bdat) {
            self.error(&reply::BDAT_IN_PROGRESS);
            return;
        }
        let mut rx = DataReceiver::new();
        // The receiver recognises "." only after a CRLF: prime it with
        // the CRLF that ended the DATA line, so an empty message and a
        // dot-stuffed first line work.
        rx.ingest(&mut b"\r\n".iter(), &mut Vec::new());
        self.state = State::Data(Opaque(rx));
        self.reply(&reply::START_DATA);
    }

    fn data(&mut self) -> Progress {
        let State::Data(rx) = &mut self.state else {
            unreachable!("data() outside the data state");
        };
        let Some(tx) = &mut self.tx else {
            unreachable!("data state without a transaction");
        };
        let rest = &self.input[self.pos..];
        let mut it = rest.iter();
        let done = rx.0.ingest(&mut it, &mut tx.data);
        self.pos += rest.len() - it.len();
        if tx.data.len() > self.config.max_message_size {
            tx.too_big = true;
        }
        if tx.too_big {
            // Keep reading to the end, holding nothing.
            tx.data.clear();
        }
        if !done {
            return Progress::NeedInput;
        }
        self.state = State::Command;
        self.message_complete()
    }

    fn message_complete(&mut self) -> Progress {
        let Some(tx) = self.tx.take() else {
            unreachable!("message without a transaction");
        };
        if tx.too_big {
            self.error(&reply::TOO_BIG);
            return Progress::Continue;
        }
        let incoming = Incoming {
            kind: self.config.kind,
            peer: self.peer,
            helo: self.helo.clone().unwrap_or_default(),
            esmtp: self.esmtp,
            tls: self.tls.clone(),
            auth: self.auth.clone(),
            envelope: tx.envelope,
            data: tx.data,
        };
        self.act(Pending::Delivery, Action::Deliver(Box::new(incoming)))
    }

    fn bdat_command(&mut self, size: usize, is_last: bool) {
        // The chunk follows the command whatever the reply: read it, and
        // keep it only when the transaction can take it.
        let mut keep = self.transaction_ready().is_ok();
        if let Some(tx) = &mut self.tx
            && keep
        {
            tx.bdat = true;
            if tx.data.len().saturating_add(size) > self.config.max_message_size {
                tx.too_big = true;
                tx.data = Vec::new();
            }
            keep = !tx.too_big;
            if keep {
                tx.data.reserve(size.min(1 << 20));
            }
        }
        self.state = State::Bdat {
            rx: Opaque(BdatReceiver::new(size, is_last)),
            keep,
            size,
        };
    }

    fn bdat(&mut self) -> Progress {
        let State::Bdat { rx, keep, size } = &mut self.state else {
            unreachable!("bdat() outside the bdat state");
        };
        let rest = &self.input[self.pos..];
        let mut it = rest.iter();
        let done = match (&mut self.tx, *keep) {
            (Some(tx), true) => rx.0.ingest(&mut it, &mut tx.data),
            _ => {
                let mut discard = Vec::new();
                rx.0.ingest(&mut it, &mut discard)
            }
        };
        self.pos += rest.len() - it.len();
        if !done {
            return Progress::NeedInput;
        }
        let (keep, size, is_last) = (*keep, *size, rx.0.is_last);
        self.state = State::Command;
        if !keep {
            match self.transaction_ready() {
                Err(reply) => self.error(&reply),
                Ok(()) => {
                    // Too big: the transaction ends here.
                    self.tx = None;
                    self.error(&reply::TOO_BIG);
                }
            }
            return Progress::Continue;
        }
        if is_last {
            return self.message_complete();
        }
        self.reply(&Reply::owned(
            250,
            [2, 0, 0],
            format!("{size} octets received"),
        ));
        Progress::Continue
    }

    fn starttls(&mut self) {
        if self.tls.is_some() {
            self.error(&reply::TLS_ACTIVE);
            return;
        }
        if !self.config.tls_available {
            self.reply(&reply::TLS_UNAVAILABLE);
            return;
        }
        self.reply(&reply::START_TLS);
        // Whatever the client sent after STARTTLS before the handshake is
        // discarded (RFC 3207 §4.2; the 2011 STARTTLS command injection).
        self.pos = self.input.len();
        self.start_tls = true;
    }

    fn auth_command(&mut self, mechanism: u64, initial: String) -> Progress {
        if !self.config.kind.is_submission() {
            self.error(&reply::NOT_IMPLEMENTED);
            return Progress::Continue;
        }
        if self.auth.is_some() {
            self.error(&reply::ALREADY_AUTHENTICATED);
            return Progress::Continue;
        }
        if self.tx.is_some() {
            self.error(&reply::AUTH_IN_TRANSACTION);
            return Progress::Continue;
        }
        if !self.auth_offered() {
            self.error(&reply::AUTH_NEEDS_TLS);
            return Progress::Continue;
        }
        match mechanism {
            AUTH_PLAIN if initial.is_empty() => {
                self.out.extend_from_slice(b"334 \r\n");
                self.state = State::AuthPlain;
                Progress::Continue
            }
            AUTH_PLAIN => self.auth_plain(&initial),
            AUTH_LOGIN if initial.is_empty() => {
                self.out.extend_from_slice(b"334 VXNlcm5hbWU6\r\n");
                self.state = State::AuthLoginUser;
                Progress::Continue
            }
            AUTH_LOGIN => match decode_base64(&initial) {
                Some(login) => {
                    self.out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                    self.state = State::AuthLoginPassword { login };
                    Progress::Continue
                }
                None => {
                    self.error(&reply::AUTH_BAD_BASE64);
                    Progress::Continue
                }
            },
            _ => {
                self.error(&reply::AUTH_UNKNOWN_MECHANISM);
                Progress::Continue
            }
        }
    }

    fn auth_plain(&mut self, response: &str) -> Progress {
        let Some(decoded) = decode_base64(response) else {
            self.error(&reply::AUTH_BAD_BASE64);
            return Progress::Continue;
        };
        let mut parts = decoded.split('\0');
        let (Some(authzid), Some(login), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            self.error(&reply::AUTH_FAILED);
            return Progress::Continue;
        };
        if !authzid.is_empty() && authzid != login {
            // Acting as another user is not supported.
            self.error(&reply::AUTH_FAILED);
            return Progress::Continue;
        }
        let (login, password) = (login.to_owned(), password.to_owned());
        self.act(
            Pending::Login {
                login: login.clone(),
            },
            Action::Authenticate { login, password },
        )
    }

    fn auth_line(&mut self) -> Progress {
        let Some(range) = self.next_line() else {
            return self.line_too_long();
        };
        let line = String::from_utf8_lossy(&self.input[range])
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        let state = std::mem::replace(&mut self.state, State::Command);
        if line == "*" {
            self.error(&reply::AUTH_CANCELLED);
            return Progress::Continue;
        }
        match state {
            State::AuthPlain => self.auth_plain(&line),
            State::AuthLoginUser => match decode_base64(&line) {
                Some(login) => {
                    self.out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                    self.state = State::AuthLoginPassword { login };
                    Progress::Continue
                }
                None => {
                    self.error(&reply::AUTH_BAD_BASE64);
                    Progress::Continue
                }
            },
            State::AuthLoginPassword { login } => match decode_base64(&line) {
                Some(password) => self.act(
                    Pending::Login {
                        login: login.clone(),
                    },
                    Action::Authenticate { login, password },
                ),
                None => {
                    self.error(&reply::AUTH_BAD_BASE64);
                    Progress::Continue
                }
            },
            _ => unreachable!("auth_line outside an AUTH exchange"),
        }
    }
}

/// A receiver of smtp-proto, which has no `Debug`.
struct Opaque<T>(T);

impl<T> std::fmt::Debug for Opaque<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

enum Progress {
    Continue,
    NeedInput,
    Act(Action),
}

fn decode_base64(text: &str) -> Option<String> {
    if text == "=" {
        return Some(String::new());
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn unsupported_parameter(name: &str) -> Reply {
    Reply::owned(555, [5, 5, 4], format!("Parameter {name} not supported"))
}

fn parse_error_reply(err: ParseError) -> Reply {
    match err {
        ParseError::UnknownCommand => reply::UNKNOWN_COMMAND,
        ParseError::InvalidSenderAddress => Reply::new(501, [5, 1, 7], "Bad sender address syntax"),
        ParseError::InvalidRecipientAddress => {
            Reply::new(501, [5, 1, 3], "Bad recipient address syntax")
        }
        ParseError::SyntaxError { syntax } => {
            Reply::owned(501, [5, 5, 2], format!("Syntax error, expected: {syntax}"))
        }
        ParseError::InvalidParameter { param } => {
            Reply::owned(501, [5, 5, 4], format!("Invalid parameter {param}"))
        }
        ParseError::UnsupportedParameter { param } => {
            let param: String = param.chars().filter(|c| !c.is_control()).take(64).collect();
            unsupported_parameter(&param)
        }
        ParseError::ResponseTooLong => reply::LINE_TOO_LONG,
        ParseError::NeedsMoreData { .. } | ParseError::InvalidResponse { .. } => {
            Reply::new(500, [5, 5, 2], "Syntax error")
        }
    }
}
