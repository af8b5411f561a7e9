//! Trace headers added to received mail: `Received` (RFC 5321 §4.4) with
//! the TLS parameters, and the RFC 5322 date they carry.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::session::Incoming;

/// The `Received` header for `incoming`, CRLF-terminated. `id` identifies
/// the transaction in logs.
pub(crate) fn received(incoming: &Incoming, hostname: &str, id: &str, now: SystemTime) -> String {
    let mut h = String::with_capacity(256);
    let _ = write!(
        h,
        "Received: from {} ({})\r\n",
        clean(&incoming.helo),
        address_literal(incoming.peer.ip())
    );
    if let Some(tls) = &incoming.tls {
        let _ = write!(
            h,
            "\t(using {} with cipher {})\r\n",
            clean(&tls.version),
            clean(&tls.cipher)
        );
    }
    let _ = write!(
        h,
        "\tby {} (Tern) with {} id {}",
        clean(hostname),
        incoming.protocol(),
        id
    );
    // Naming the recipient is only harmless with exactly one.
    if let [only] = incoming.envelope.recipients.as_slice() {
        let _ = write!(h, "\r\n\tfor <{}>", clean(&only.address));
    }
    let _ = write!(h, ";\r\n\t{}\r\n", rfc5322_date(now));
    h
}

fn address_literal(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("[{v4}]"),
        std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Client-supplied text fit for a header: no controls, no comment or
/// angle brackets, bounded.
fn clean(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() && !matches!(c, '(' | ')' | '<' | '>' | '\\' | ';'))
        .take(255)
        .collect()
}

/// `Sat, 22 Nov 2026 03:40:00 +0000`.
pub(crate) fn rfc5322_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    tern_store::dates::rfc5322_date(secs, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_318_800);
        assert_eq!(rfc5322_date(t), "Sun, 22 Nov 2026 03:40:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn client_text_cannot_break_the_header() {
        assert_eq!(clean("evil\r\nBcc: x (y) <z>;"), "evilBcc: x y z");
    }
}
