//! Small pieces for messages the server writes itself (vacation replies,
//! delivery status notifications): RFC 5322 dates in UTC, Message-IDs,
//! encoded header words, base64 bodies; and the `UTCDate` formatting and
//! parsing of [`crate::dates`], which they use too.

pub use crate::dates::{parse_utc_date, utc_date};

/// An RFC 5322 date in UTC: `Sun, 22 Nov 2026 07:03:40 +0000`.
pub fn rfc5322_date(unix: i64) -> String {
    crate::dates::rfc5322_date(unix, 0)
}

/// A fresh Message-ID value (with angle brackets) on `domain`.
pub fn message_id(domain: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::thread_rng().r#gen();
    format!("<{n:032x}@{domain}>")
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding, on one line.
pub fn base64(data: &[u8]) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Base64 in lines of 76 characters, each ending in CRLF (a MIME body).
pub fn base64_body(data: &[u8]) -> String {
    let flat = base64(data);
    let mut out = String::with_capacity(flat.len() + flat.len() / 38 + 2);
    for line in flat.as_bytes().chunks(76) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push_str("\r\n");
    }
    out
}

/// A header value safe to write: as is when printable ASCII, else an RFC
/// 2047 encoded word (UTF-8, base64). Line breaks are removed either way.
pub fn header_text(value: &str) -> String {
    let clean: String = value
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    if clean.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        clean
    } else {
        format!("=?UTF-8?B?{}?=", base64(clean.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_331_020),
            "Sun, 22 Nov 2026 07:03:40 +0000"
        );
        assert_eq!(parse_utc_date("2026-11-22T07:03:40Z"), Some(1_795_331_020));
        assert_eq!(utc_date(1_795_331_020), "2026-11-22T07:03:40Z");
        assert_eq!(parse_utc_date("1970-01-01T00:00:00.5Z"), Some(0));
        assert_eq!(parse_utc_date("2026-13-22T07:03:40Z"), None);
        assert_eq!(parse_utc_date("yesterday"), None);
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), want);
        }
        assert_eq!(header_text("plain"), "plain");
        assert_eq!(header_text("é"), "=?UTF-8?B?w6k=?=");
    }
}
