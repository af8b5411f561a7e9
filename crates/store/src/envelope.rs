//! The SMTP envelope a message travelled with: the reverse-path (MAIL
//! FROM), the forward-paths (RCPT TO) and their delivery status
//! notification parameters (RFC 3461: RET and ENVID on MAIL, NOTIFY and
//! ORCPT on RCPT), plus the BODY and SMTPUTF8 parameters a relay must
//! repeat.
//!
//! Received mail keeps its envelope with each stored copy (key family
//! `20 ++ aid ++ 15 ++ email`, written in the delivery transaction; see
//! `docs/store-format.md`). Each account's copy lists only the recipients
//! that delivered to that account, so one recipient never learns of
//! another's (Bcc) address. The outbound queue carries the same type for
//! remote recipients.

use serde::{Deserialize, Serialize};

use crate::error::{Result, decode, encode};
use crate::keys::{self, family};
use crate::kv::Transaction;
use crate::types::{AccountId, DocumentId};

/// An SMTP envelope with its DSN parameters. Strings are as received,
/// with xtext (RFC 3461 §4) already decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Envelope {
    /// The reverse-path of MAIL FROM; empty for the null sender `<>`.
    pub mail_from: String,
    /// RET= (RFC 3461 §4.3): what a DSN returns of the message. `None`
    /// when not given (the reporting MTA chooses).
    pub ret: Option<DsnRet>,
    /// ENVID= (RFC 3461 §4.4), decoded; at most 100 characters.
    pub envid: Option<String>,
    /// BODY=8BITMIME was given (RFC 6152).
    pub body_8bitmime: bool,
    /// SMTPUTF8 was given (RFC 6531).
    pub smtputf8: bool,
    /// The forward-paths, in RCPT order.
    pub recipients: Vec<EnvelopeRecipient>,
}

/// RET= of MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DsnRet {
    /// `RET=FULL`: a DSN returns the whole message.
    Full,
    /// `RET=HDRS`: a DSN returns the headers only.
    Headers,
}

/// One forward-path with its DSN parameters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EnvelopeRecipient {
    /// The address as given in RCPT TO.
    pub address: String,
    /// NOTIFY= (RFC 3461 §4.1). `None` when not given: then a DSN is
    /// sent on failure (and on delay at the MTA's discretion).
    pub notify: Option<DsnNotify>,
    /// ORCPT= (RFC 3461 §4.2): the original recipient, an address of
    /// type `rfc822`, decoded.
    pub orcpt: Option<String>,
}

/// NOTIFY= of RCPT TO: which events produce a DSN. All false is
/// `NOTIFY=NEVER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DsnNotify {
    /// SUCCESS: on delivery (or relay to a server without DSN).
    pub success: bool,
    /// FAILURE: on permanent failure.
    pub failure: bool,
    /// DELAY: when delivery is delayed.
    pub delay: bool,
}

impl DsnNotify {
    /// `NOTIFY=NEVER`.
    pub const NEVER: DsnNotify = DsnNotify {
        success: false,
        failure: false,
        delay: false,
    };

    /// Whether this is `NOTIFY=NEVER`.
    pub fn is_never(self) -> bool {
        self == DsnNotify::NEVER
    }
}

/// `20 ++ aid ++ 15 ++ email id`.
fn key(account: AccountId, email: DocumentId) -> Vec<u8> {
    keys::doc(account, family::ENVELOPE, email)
}

/// Keeps `envelope` with the email `email` of `account`.
pub fn put(
    tx: &mut Transaction<'_>,
    account: AccountId,
    email: DocumentId,
    envelope: &Envelope,
) -> Result<()> {
    tx.set(&key(account, email), &encode(envelope))?;
    Ok(())
}

/// The envelope the email `email` of `account` was received with, if it
/// came in over SMTP.
pub fn get(
    tx: &mut Transaction<'_>,
    account: AccountId,
    email: DocumentId,
) -> Result<Option<Envelope>> {
    let key = key(account, email);
    match tx.get(&key)? {
        Some(value) => decode(&key, &value).map(Some),
        None => Ok(None),
    }
}

/// Forgets the envelope of a destroyed email.
pub(crate) fn clear(tx: &mut Transaction<'_>, account: AccountId, email: DocumentId) -> Result<()> {
    tx.clear(&key(account, email))?;
    Ok(())
}
