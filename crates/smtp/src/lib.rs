//! Tern's SMTP server: the MX listener (mail from other servers, for local
//! domains only), submission with STARTTLS, and submissions over implicit
//! TLS.
//!
//! - [`session`]: the protocol as a state machine without I/O — bytes in,
//!   replies and [`Action`]s out. Every reply code is decided there.
//! - [`server`]: the tokio driver: listeners, TLS, timeouts, per-IP
//!   limits, and the actions (store look-ups and delivery through
//!   `spawn_blocking`).
//! - [`checks`]: SPF, DKIM, ARC, DMARC and iprev with mail-auth, producing
//!   the `Authentication-Results` header and the DMARC verdict.
//! - [`spam`]: spam scoring (rules as data, a Bayes classifier with
//!   global and per-account models), DNSBL, outbound limits; [`virus`]:
//!   the clamd client. [`spam::Filter`] runs between the checks and
//!   delivery.
//! - [`tls`]: the certificate, loaded from PEM files or generated once and
//!   kept in the data directory.
//!
//! The binary calls [`serve`] (or [`SmtpServer::bind`] then
//! [`SmtpServer::run`]) with an [`SmtpConfig`].

pub mod checks;
mod config;
mod dsn;
mod error;
mod headers;
mod limits;
pub mod outbound;
pub mod reply;
pub mod server;
pub mod session;
pub mod spam;
pub mod tls;
pub mod virus;

pub use checks::{CheckOutcome, MailAuthChecker, Verdict};
pub use config::{ChecksConfig, DnsConfig, Limits, ListenConfig, SmtpConfig, TlsConfig};
pub use error::Error;
pub use reply::Reply;
pub use server::{SmtpServer, serve};
pub use session::{
    Action, Answer, ListenerKind, RecipientLookup, Session, SessionConfig, Step, TlsInfo,
};
pub use spam::{SpamConfig, SpamFilter, SpamVerdict};
pub use virus::{ClamdAddress, Unreachable, VirusConfig};

/// The default size limit of a message: 50 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 50 << 20;
