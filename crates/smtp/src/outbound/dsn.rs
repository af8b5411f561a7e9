//! Delivery status notifications (RFC 3464): a `multipart/report` with a
//! human-readable part (from the templates in `resources/dsn/`), the
//! `message/delivery-status` part, and the original message's headers
//! (`text/rfc822-headers`; the whole message as `message/rfc822` when the
//! sender asked for `RET=FULL`).

use tern_store::compose::{header_text, message_id, rfc5322_date};
use tern_store::envelope::DsnRet;
use tern_store::queue::QueuedMessage;

const FAILURE_TEMPLATE: &str = include_str!("../../../../resources/dsn/failure.txt");
const DELAY_TEMPLATE: &str = include_str!("../../../../resources/dsn/delay.txt");

/// Which notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Permanent failure (or expiry): `Action: failed`.
    Failure,
    /// Still trying: `Action: delayed`.
    Delay,
}

/// One recipient the notice is about.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The address.
    pub address: String,
    /// ORCPT, when the sender gave one.
    pub orcpt: Option<String>,
    /// The enhanced status code (`5.1.1`).
    pub status: String,
    /// The server's reply (or our description), for Diagnostic-Code.
    pub diagnostic: Option<String>,
    /// The host that answered.
    pub remote_mta: Option<String>,
}

/// The header part of a message (up to the blank line), CRLF ends.
fn header_block(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(raw.len());
    &raw[..end]
}

fn subject_of(raw: &[u8]) -> String {
    let headers = String::from_utf8_lossy(header_block(raw));
    let mut lines = headers.lines().peekable();
    while let Some(line) = lines.next() {
        if line.len() > 8 && line[..8].eq_ignore_ascii_case("subject:") {
            let mut value = line[8..].trim().to_owned();
            while let Some(next) = lines.peek() {
                if next.starts_with([' ', '\t']) {
                    value.push(' ');
                    value.push_str(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            return value;
        }
    }
    String::new()
}

fn fill(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out.replace('\n', "\r\n").replace("\r\r\n", "\r\n")
}

/// Builds the notice to `to` (the sender) about `recipients` of `msg`,
/// whose raw bytes are `raw`. `hostname` names the reporting MTA.
pub fn build(
    kind: Kind,
    hostname: &str,
    to: &str,
    msg: &QueuedMessage,
    raw: &[u8],
    recipients: &[Subject],
    now: i64,
) -> Vec<u8> {
    let boundary = format!("=_tern_dsn_{now:x}_{}", msg.created);
    let list: String = recipients
        .iter()
        .map(|r| {
            let why = r.diagnostic.as_deref().unwrap_or(r.status.as_str());
            format!("  <{}>: {}\n", r.address, why)
        })
        .collect();
    let until = msg.expires.map(rfc5322_date).unwrap_or_default();
    let vars = [
        ("hostname", hostname.to_owned()),
        ("recipients", list),
        ("subject", subject_of(raw)),
        ("until", until.clone()),
    ];
    let (title, human) = match kind {
        Kind::Failure => (
            "Undelivered Mail Returned to Sender",
            fill(FAILURE_TEMPLATE, &vars),
        ),
        Kind::Delay => (
            "Delayed Mail (still being retried)",
            fill(DELAY_TEMPLATE, &vars),
        ),
    };
    let mut m = String::new();
    m.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    m.push_str(&format!("To: <{to}>\r\n"));
    m.push_str(&format!("Subject: {}\r\n", header_text(title)));
    m.push_str(&format!("Date: {}\r\n", rfc5322_date(now)));
    m.push_str(&format!("Message-ID: {}\r\n", message_id(hostname)));
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    m.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    m.push_str("This is a MIME-encapsulated delivery status notification.\r\n\r\n");
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{human}\r\n"
    ));
    // message/delivery-status: per-message fields, then one block per
    // recipient.
    m.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    m.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    if let Some(envid) = &msg.envid {
        m.push_str(&format!("Original-Envelope-Id: {envid}\r\n"));
    }
    m.push_str(&format!("Arrival-Date: {}\r\n", rfc5322_date(msg.created)));
    for r in recipients {
        m.push_str("\r\n");
        if let Some(o) = &r.orcpt {
            m.push_str(&format!("Original-Recipient: rfc822; {o}\r\n"));
        }
        m.push_str(&format!("Final-Recipient: rfc822; {}\r\n", r.address));
        let action = match kind {
            Kind::Failure => "failed",
            Kind::Delay => "delayed",
        };
        m.push_str(&format!("Action: {action}\r\nStatus: {}\r\n", r.status));
        if let Some(mta) = &r.remote_mta {
            m.push_str(&format!("Remote-MTA: dns; {mta}\r\n"));
        }
        if let Some(d) = &r.diagnostic {
            let d: String = d.chars().filter(|c| !c.is_control()).collect();
            m.push_str(&format!("Diagnostic-Code: smtp; {d}\r\n"));
        }
        m.push_str(&format!("Last-Attempt-Date: {}\r\n", rfc5322_date(now)));
        if kind == Kind::Delay && !until.is_empty() {
            m.push_str(&format!("Will-Retry-Until: {until}\r\n"));
        }
    }
    m.push_str("\r\n");
    let mut out = m.into_bytes();
    if msg.ret == Some(DsnRet::Full) {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(raw);
        if !raw.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    } else {
        out.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(header_block(raw));
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_store::BlobHash;
    use tern_store::queue::{QueuedRecipient, RcptState};

    fn queued() -> QueuedMessage {
        QueuedMessage {
            blob: BlobHash([0; 32]),
            size: 10,
            account: None,
            submission: None,
            mail_from: "a@here.test".into(),
            ret: None,
            envid: Some("env-1".into()),
            body_8bitmime: false,
            smtputf8: false,
            recipients: vec![QueuedRecipient {
                address: "b@there.test".into(),
                notify: None,
                orcpt: None,
                state: RcptState::Failed,
                reply: None,
                remote_mta: None,
                notified: false,
            }],
            created: 1_000,
            send_at: 1_000,
            expires: Some(1_000 + 86_400),
            attempts: 1,
            due: 0,
            last_error: None,
            lease: None,
            delay_notified: false,
            held: None,
        }
    }

    #[test]
    fn rfc3464_report_parses_with_its_three_parts() {
        let raw = b"From: a@here.test\r\nTo: b@there.test\r\nSubject: Plans\r\n\r\nsecret body\r\n";
        let dsn = build(
            Kind::Failure,
            "mx.here.test",
            "a@here.test",
            &queued(),
            raw,
            &[Subject {
                address: "b@there.test".into(),
                orcpt: Some("b@there.test".into()),
                status: "5.1.1".into(),
                diagnostic: Some("550 5.1.1 no such user".into()),
                remote_mta: Some("mx.there.test".into()),
            }],
            2_000,
        );
        let text = String::from_utf8(dsn.clone()).unwrap();
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains("Reporting-MTA: dns; mx.here.test\r\n"));
        assert!(text.contains("Original-Envelope-Id: env-1\r\n"));
        assert!(text.contains("Final-Recipient: rfc822; b@there.test\r\n"));
        assert!(text.contains("Action: failed\r\nStatus: 5.1.1\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user\r\n"));
        assert!(text.contains("Content-Type: text/rfc822-headers"));
        assert!(text.contains("Subject: Plans"));
        assert!(!text.contains("secret body"), "RET=HDRS by default");
        assert!(
            text.contains("\"Plans\""),
            "the human part names the subject"
        );
        let parsed = mail_parser::MessageParser::default().parse(&dsn).unwrap();
        assert_eq!(parsed.parts.len(), 4, "multipart + three parts");
    }
}
