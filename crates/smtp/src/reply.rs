//! SMTP replies: a code, an enhanced status code (RFC 3463) and a text.

use std::borrow::Cow;
use std::fmt;

/// One SMTP reply line: `250 2.1.0 Sender OK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code (RFC 5321 §4.2).
    pub code: u16,
    /// The enhanced status code (RFC 3463), `[class, subject, detail]`.
    pub esc: [u8; 3],
    /// Human-readable text. Must not contain CR or LF.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with a static text.
    pub const fn new(code: u16, esc: [u8; 3], text: &'static str) -> Reply {
        Reply {
            code,
            esc,
            text: Cow::Borrowed(text),
        }
    }

    /// A reply with a computed text.
    pub fn owned(code: u16, esc: [u8; 3], text: String) -> Reply {
        Reply {
            code,
            esc,
            text: Cow::Owned(text),
        }
    }

    /// Whether the reply is a positive completion (2yz).
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Whether the reply is a permanent (5yz) or transient (4yz) failure.
    pub fn is_negative(&self) -> bool {
        self.code >= 400
    }

    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c] = self.esc;
        // No CR/LF may reach the wire from a computed text.
        let text: Cow<'_, str> = if self.text.contains(['\r', '\n']) {
            Cow::Owned(self.text.replace(['\r', '\n'], " "))
        } else {
            Cow::Borrowed(&self.text)
        };
        write!(f, "{} {a}.{b}.{c} {text}", self.code)
    }
}

// The replies of the session, named by what they say. Codes follow RFC 5321
// §4.2 and the extension RFCs; enhanced codes follow RFC 3463 / RFC 5248.
pub(crate) const OK: Reply = Reply::new(250, [2, 0, 0], "OK");
pub(crate) const BYE: Reply = Reply::new(221, [2, 0, 0], "Bye");
pub(crate) const SENDER_OK: Reply = Reply::new(250, [2, 1, 0], "Sender OK");
pub(crate) const RECIPIENT_OK: Reply = Reply::new(250, [2, 1, 5], "Recipient OK");
pub(crate) const VRFY: Reply = Reply::new(
    252,
    [2, 1, 5],
    "Cannot VRFY user, but will accept message and attempt delivery",
);
pub(crate) const HELP: Reply = Reply::new(
    214,
    [2, 0, 0],
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP VRFY QUIT STARTTLS AUTH",
);
pub(crate) const START_DATA: Reply =
    Reply::new(354, [2, 0, 0], "Start mail input; end with <CRLF>.<CRLF>");
pub(crate) const START_TLS: Reply = Reply::new(220, [2, 0, 0], "Ready to start TLS");
pub(crate) const AUTH_OK: Reply = Reply::new(235, [2, 7, 0], "Authentication successful");

pub(crate) const UNKNOWN_COMMAND: Reply = Reply::new(500, [5, 5, 1], "Command unrecognized");
pub(crate) const LINE_TOO_LONG: Reply = Reply::new(500, [5, 5, 2], "Line too long");
pub(crate) const NOT_IMPLEMENTED: Reply = Reply::new(502, [5, 5, 1], "Command not implemented");
pub(crate) const HELO_FIRST: Reply = Reply::new(503, [5, 5, 1], "Send EHLO or HELO first");
pub(crate) const NESTED_MAIL: Reply = Reply::new(503, [5, 5, 1], "Nested MAIL command");
pub(crate) const MAIL_FIRST: Reply = Reply::new(503, [5, 5, 1], "Send MAIL first");
pub(crate) const RCPT_FIRST: Reply = Reply::new(503, [5, 5, 1], "Send RCPT first");
pub(crate) const NO_VALID_RECIPIENTS: Reply = Reply::new(554, [5, 5, 1], "No valid recipients");
pub(crate) const BDAT_IN_PROGRESS: Reply = Reply::new(
    503,
    [5, 5, 1],
    "DATA is not allowed after BDAT in the same transaction",
);
pub(crate) const TLS_ACTIVE: Reply = Reply::new(503, [5, 5, 1], "TLS is already active");
pub(crate) const TLS_UNAVAILABLE: Reply = Reply::new(454, [4, 7, 0], "TLS not available");
pub(crate) const ALREADY_AUTHENTICATED: Reply = Reply::new(503, [5, 5, 1], "Already authenticated");
pub(crate) const AUTH_IN_TRANSACTION: Reply = Reply::new(
    503,
    [5, 5, 1],
    "AUTH is not allowed during a mail transaction",
);
pub(crate) const AUTH_NEEDS_TLS: Reply = Reply::new(
    538,
    [5, 7, 11],
    "Encryption required for requested authentication mechanism",
);
pub(crate) const AUTH_UNKNOWN_MECHANISM: Reply =
    Reply::new(504, [5, 5, 4], "Unrecognized authentication type");
pub(crate) const AUTH_CANCELLED: Reply = Reply::new(501, [5, 7, 0], "Authentication cancelled");
pub(crate) const AUTH_BAD_BASE64: Reply = Reply::new(501, [5, 5, 2], "Invalid base64 data");
pub(crate) const AUTH_FAILED: Reply =
    Reply::new(535, [5, 7, 8], "Authentication credentials invalid");
pub(crate) const AUTH_TEMP_FAILURE: Reply =
    Reply::new(454, [4, 7, 0], "Temporary authentication failure");
pub(crate) const AUTH_REQUIRED: Reply = Reply::new(530, [5, 7, 0], "Authentication required");
pub(crate) const SENDER_NOT_OWNED: Reply = Reply::new(
    553,
    [5, 7, 1],
    "Sender address is not an address of the authenticated user",
);
pub(crate) const NON_ASCII_SENDER: Reply = Reply::new(
    553,
    [5, 6, 7],
    "Non-ASCII sender address requires the SMTPUTF8 parameter",
);
pub(crate) const NON_ASCII_RECIPIENT: Reply = Reply::new(
    553,
    [5, 6, 7],
    "Non-ASCII recipient address requires the SMTPUTF8 parameter",
);
pub(crate) const TOO_BIG: Reply = Reply::new(
    552,
    [5, 3, 4],
    "Message size exceeds fixed maximum message size",
);
pub(crate) const TOO_MANY_RECIPIENTS: Reply = Reply::new(452, [4, 5, 3], "Too many recipients");
pub(crate) const UNKNOWN_USER: Reply = Reply::new(550, [5, 1, 1], "Mailbox does not exist");
pub(crate) const MAILBOX_FULL: Reply = Reply::new(452, [4, 2, 2], "Mailbox full; try again later");
pub(crate) const TOO_BIG_FOR_MAILBOX: Reply = Reply::new(
    552,
    [5, 2, 2],
    "Message is larger than the recipient's mailbox quota",
);
pub(crate) const RELAY_DENIED: Reply = Reply::new(
    554,
    [5, 7, 1],
    "Relay access denied: this server only accepts mail for its own domains",
);
pub(crate) const TEMP_FAILURE: Reply =
    Reply::new(451, [4, 3, 0], "Temporary local problem; try again later");
pub(crate) const TOO_MANY_ERRORS: Reply =
    Reply::new(421, [4, 7, 0], "Too many errors; closing connection");
pub(crate) const SHUTTING_DOWN: Reply =
    Reply::new(421, [4, 3, 2], "Server shutting down; closing connection");
