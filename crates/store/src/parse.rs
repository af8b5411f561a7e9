//! Parsing a raw message once, at delivery or import, into what the store
//! keeps: the list properties ([`EmailMeta`](crate::email::EmailMeta) minus
//! the per-account parts) and the detail ([`EmailDetail`]: all headers and
//! the body structure).

use mail_parser::{Address, HeaderValue, MessageParser, MessagePart, MimeHeaders, PartType};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Characters kept for the preview (RFC 8621: at most 256).
pub const PREVIEW_CHARS: usize = 256;

/// A name and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailAddress {
    /// Display name, decoded.
    pub name: Option<String>,
    /// The address (may be empty for malformed input).
    pub email: String,
}

/// A named group of addresses (RFC 5322 group syntax); `name` is `None` for
/// addresses outside any group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressGroup {
    /// The group's display name.
    pub name: Option<String>,
    /// Members.
    pub addresses: Vec<EmailAddress>,
}

/// A date with the offset it was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentAt {
    /// Seconds since the epoch (UTC).
    pub unix: i64,
    /// Offset from UTC in minutes, as written in the header.
    pub offset_minutes: i16,
}

/// One header field as it appears in the message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawHeader {
    /// The field name as written.
    pub name: String,
    /// Everything after the colon up to the line end, folding kept.
    pub value: String,
}

/// One MIME part of the body structure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct BodyPart {
    /// The part's header fields.
    pub headers: Vec<RawHeader>,
    /// `type/subtype`, lowercase.
    pub content_type: String,
    /// The charset parameter of text parts.
    pub charset: Option<String>,
    /// File name (Content-Disposition filename or Content-Type name).
    pub name: Option<String>,
    /// `inline` or `attachment`, lowercase.
    pub disposition: Option<String>,
    /// Content-ID without angle brackets.
    pub cid: Option<String>,
    /// Content-Language values.
    pub language: Vec<String>,
    /// Content-Location.
    pub location: Option<String>,
    /// Indexes (into [`EmailDetail::parts`]) of the children of a multipart.
    pub sub_parts: Vec<u32>,
    /// Byte offset of the part's headers in the raw message.
    pub offset_header: u32,
    /// Byte offset of the part's body in the raw message.
    pub offset_body: u32,
    /// Byte offset of the end of the part in the raw message.
    pub offset_end: u32,
    /// Size of the decoded body in bytes.
    pub size: u64,
}

/// The per-message detail: read only when a client asks for headers or
/// body parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct EmailDetail {
    /// The top-level header fields in order.
    pub headers: Vec<RawHeader>,
    /// Every part, depth first; index 0 is the root. Parts of attached
    /// messages (message/rfc822) are not listed: the attached message is one
    /// leaf part.
    pub parts: Vec<BodyPart>,
    /// Parts to show as the plain-text body (RFC 8621 section 4.1.4).
    pub text_body: Vec<u32>,
    /// Parts to show as the HTML body.
    pub html_body: Vec<u32>,
    /// Parts that are attachments.
    pub attachments: Vec<u32>,
}

/// The header-derived properties of a message (everything of
/// [`crate::EmailMeta`] that does not depend on the account).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Envelope {
    /// Decoded Subject.
    pub subject: Option<String>,
    /// Subject with reply/forward prefixes removed, for threading.
    pub base_subject: String,
    /// From.
    pub from: Vec<EmailAddress>,
    /// Sender.
    pub sender: Vec<EmailAddress>,
    /// To.
    pub to: Vec<EmailAddress>,
    /// Cc.
    pub cc: Vec<EmailAddress>,
    /// Bcc.
    pub bcc: Vec<EmailAddress>,
    /// Reply-To.
    pub reply_to: Vec<EmailAddress>,
    /// Date.
    pub sent_at: Option<SentAt>,
    /// Message-ID values without angle brackets.
    pub message_id: Vec<String>,
    /// In-Reply-To values.
    pub in_reply_to: Vec<String>,
    /// References values.
    pub references: Vec<String>,
    /// Start of the text body, whitespace collapsed.
    pub preview: String,
    /// Whether the message has attachments.
    pub has_attachment: bool,
}

/// A parsed message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ParsedMessage {
    /// Header-derived properties.
    pub envelope: Envelope,
    /// Headers and body structure.
    pub detail: EmailDetail,
}

/// Parses a raw message. Malformed MIME yields what could be parsed; only
/// input that is not a message at all is refused.
pub fn parse_message(raw: &[u8]) -> Result<ParsedMessage> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(Error::NotAMessage("empty message".into()));
    }
    let message = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| Error::NotAMessage("no header or body".into()))?;
    if message.root_part().headers.is_empty() {
        return Err(Error::NotAMessage("no header fields".into()));
    }
    Ok(from_parsed(raw, &message))
}

/// [`parse_message`] of `prefix ++ data`, where `prefix` is whole header
/// fields put on top of a message (an MTA's trace fields) and `message` is
/// `data` already parsed with mail-parser's default parser (the SMTP
/// server parses each message once, for its spam filter and for this):
/// the same result without parsing `data` again. When `data` would not
/// parse the same after the prefix (it starts with a continuation line or
/// the blank line before a body, or has no header fields), or `prefix` is
/// not whole header lines, the whole is parsed instead.
pub fn parse_message_prefixed(
    prefix: &[u8],
    data: &[u8],
    message: &mail_parser::Message<'_>,
) -> Result<ParsedMessage> {
    let (Some(shift), Some(fields)) = (
        u32::try_from(prefix.len()).ok(),
        fields_over(prefix, data, message),
    ) else {
        return parse_message(&[prefix, data].concat());
    };
    let mut parsed = from_parsed(data, message);
    for (i, part) in parsed.detail.parts.iter_mut().enumerate() {
        // The root part starts the message either way.
        if i > 0 {
            part.offset_header += shift;
        }
        part.offset_body += shift;
        part.offset_end += shift;
    }
    if let Some(root) = parsed.detail.parts.first_mut() {
        root.headers.splice(0..0, fields.iter().cloned());
    }
    parsed.detail.headers.splice(0..0, fields);
    Ok(parsed)
}

/// The header fields of `prefix` when a parse of `prefix ++ data` is
/// `message` (the parse of `data`) with those fields on top: `None` when
/// `data` would not parse the same after the prefix (it starts with a
/// continuation line or the blank line before a body, or has no header
/// fields) or `prefix` is not whole header lines — then parse the whole.
/// The rule for every reuse of a parse under trace fields (the store's
/// [`parse_message_prefixed`], the search document's).
pub fn fields_over(
    prefix: &[u8],
    data: &[u8],
    message: &mail_parser::Message<'_>,
) -> Option<Vec<RawHeader>> {
    let starts_a_field = data
        .first()
        .is_some_and(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n'));
    if !starts_a_field || message.root_part().headers.is_empty() {
        return None;
    }
    prefix_fields(prefix)
}

/// The header fields making up `prefix`, as [`raw_headers`] gives them
/// from a parse: each a name, a colon and a value running to the end of
/// its last line (folded lines start with a space or a tab). Without
/// mail-parser, whose Received parser is not cheap. `None` unless
/// `prefix` is whole lines that are all fields.
fn prefix_fields(prefix: &[u8]) -> Option<Vec<RawHeader>> {
    let mut out = Vec::new();
    let mut rest = prefix;
    while !rest.is_empty() {
        let mut end = 0;
        loop {
            end += rest[end..].iter().position(|&b| b == b'\n')? + 1;
            if !rest.get(end).is_some_and(|b| matches!(b, b' ' | b'\t')) {
                break;
            }
        }
        let field = &rest[..end];
        let colon = field.iter().position(|&b| b == b':')?;
        let name = field_name(&field[..colon]);
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return None;
        }
        out.push(RawHeader {
            name,
            value: field_value(&field[colon + 1..]),
        });
        rest = &rest[end..];
    }
    Some(out)
}

/// What the store keeps of `message`, parsed from `raw`.
fn from_parsed(raw: &[u8], message: &mail_parser::Message<'_>) -> ParsedMessage {
    let addresses = |a: Option<&Address<'_>>| a.map(flatten_address).unwrap_or_default();
    let ids = |v: &HeaderValue<'_>| match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|s| s.to_string()).collect(),
        _ => Vec::new(),
    };
    let subject = message.subject().map(str::to_string);
    let envelope = Envelope {
        base_subject: base_subject(subject.as_deref().unwrap_or("")),
        subject,
        from: addresses(message.from()),
        sender: addresses(message.sender()),
        to: addresses(message.to()),
        cc: addresses(message.cc()),
        bcc: addresses(message.bcc()),
        reply_to: addresses(message.reply_to()),
        sent_at: message.date().map(|d| SentAt {
            unix: d.to_timestamp(),
            offset_minutes: {
                let m = d.tz_hour as i16 * 60 + d.tz_minute as i16;
                if d.tz_before_gmt { -m } else { m }
            },
        }),
        message_id: message
            .header(mail_parser::HeaderName::MessageId)
            .map(ids)
            .unwrap_or_default(),
        in_reply_to: ids(message.in_reply_to()),
        references: ids(message.references()),
        preview: message
            .body_preview(PREVIEW_CHARS)
            .map(|p| collapse_whitespace(&p, PREVIEW_CHARS))
            .unwrap_or_default(),
        has_attachment: message
            .attachments()
            .any(|p| !p.is_content_type("application", "pgp-signature")),
    };

    let mut detail = EmailDetail {
        headers: raw_headers(raw, &message.root_part().headers),
        ..Default::default()
    };
    // Flatten the part tree depth first, remembering where each
    // mail-parser part landed.
    let mut index_of = vec![u32::MAX; message.parts.len()];
    flatten(raw, &message.parts, 0, &mut detail.parts, &mut index_of);
    let map = |ids: &[u32]| {
        ids.iter()
            .filter_map(|&i| index_of.get(i as usize).copied().filter(|&x| x != u32::MAX))
            .collect::<Vec<u32>>()
    };
    detail.text_body = map(&message.text_body);
    detail.html_body = map(&message.html_body);
    detail.attachments = map(&message.attachments);
    ParsedMessage { envelope, detail }
}

fn flatten(
    raw: &[u8],
    parts: &[MessagePart<'_>],
    at: usize,
    out: &mut Vec<BodyPart>,
    index_of: &mut [u32],
) -> u32 {
    let part = &parts[at];
    let me = out.len() as u32;
    index_of[at] = me;
    let ct = part.content_type();
    let content_type = ct
        .map(|c| {
            format!(
                "{}/{}",
                c.ctype().to_ascii_lowercase(),
                c.subtype().unwrap_or("plain").to_ascii_lowercase()
            )
        })
        .unwrap_or_else(|| match &part.body {
            PartType::Multipart(_) => "multipart/mixed".into(),
            PartType::Message(_) => "message/rfc822".into(),
            PartType::Html(_) => "text/html".into(),
            PartType::Text(_) => "text/plain".into(),
            _ => "application/octet-stream".into(),
        });
    let charset = ct
        .and_then(|c| c.attribute("charset"))
        .map(|s| s.to_ascii_lowercase())
        .or_else(|| {
            content_type
                .starts_with("text/")
                .then(|| "us-ascii".to_string())
        });
    let language = match part.content_language() {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|s| s.to_string()).collect(),
        _ => Vec::new(),
    };
    out.push(BodyPart {
        headers: raw_headers(raw, &part.headers),
        charset,
        name: part.attachment_name().map(str::to_string),
        disposition: part
            .content_disposition()
            .map(|d| d.ctype().to_ascii_lowercase()),
        cid: part
            .content_id()
            .map(|c| c.trim_start_matches('<').trim_end_matches('>').to_string()),
        language,
        location: part.content_location().map(str::to_string),
        sub_parts: Vec::new(),
        offset_header: part.offset_header,
        offset_body: part.offset_body,
        offset_end: part.offset_end,
        size: part.len() as u64,
        content_type,
    });
    if let PartType::Multipart(children) = &part.body {
        let mut subs = Vec::with_capacity(children.len());
        for &child in children {
            let child = child as usize;
            if child < parts.len() && index_of[child] == u32::MAX {
                subs.push(flatten(raw, parts, child, out, index_of));
            }
        }
        out[me as usize].sub_parts = subs;
    }
    me
}

/// A field's name as kept: the bytes before its colon (the colon itself
/// may be included), trimmed.
fn field_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name)
        .trim_end_matches(':')
        .trim()
        .to_string()
}

/// A field's value as kept: the raw bytes after its colon, folding kept,
/// without the final line break.
fn field_value(value: &[u8]) -> String {
    String::from_utf8_lossy(value)
        .trim_end_matches(['\r', '\n'])
        .to_string()
}

fn raw_headers(raw: &[u8], headers: &[mail_parser::Header<'_>]) -> Vec<RawHeader> {
    headers
        .iter()
        .map(|h| {
            let name = raw
                .get(h.offset_field as usize..h.offset_start as usize)
                .map(field_name)
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| h.name().to_string());
            let value = raw
                .get(h.offset_start as usize..h.offset_end as usize)
                .map(field_value)
                .unwrap_or_default();
            RawHeader { name, value }
        })
        .collect()
}

fn flatten_address(a: &Address<'_>) -> Vec<EmailAddress> {
    let conv = |x: &mail_parser::Addr<'_>| EmailAddress {
        name: x.name.as_ref().map(|n| n.to_string()),
        email: x
            .address
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    };
    match a {
        Address::List(list) => list.iter().map(conv).collect(),
        Address::Group(groups) => groups
            .iter()
            .flat_map(|g| g.addresses.iter().map(conv))
            .collect(),
    }
}

/// Collapses runs of whitespace to one space and keeps at most `max` chars.
pub fn collapse_whitespace(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max.saturating_mul(4)));
    let mut count = 0;
    let mut space = false;
    for c in s.trim().chars() {
        if count >= max {
            break;
        }
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if space {
            out.push(' ');
            count += 1;
            space = false;
            if count >= max {
                break;
            }
        }
        out.push(c);
        count += 1;
    }
    out
}

/// The subject with `Re:`, `Fwd:`, `Fw:`, `[list]` prefixes and a trailing
/// `(fwd)` removed, whitespace collapsed, lowercased: replies keep the base
/// subject of the message they answer.
pub fn base_subject(subject: &str) -> String {
    let mut s = subject.trim();
    loop {
        let before = s;
        if s.starts_with('[')
            && let Some(end) = s.find(']')
        {
            s = s[end + 1..].trim_start();
        }
        let lower = s.to_ascii_lowercase();
        for prefix in ["re", "fwd", "fw", "aw", "sv", "antw", "wg", "tr", "rif"] {
            if lower.starts_with(prefix) {
                let rest = &s[prefix.len()..];
                // Optional "[n]" counter, then a colon.
                let rest = rest
                    .strip_prefix('[')
                    .and_then(|r| r.find(']').map(|e| &r[e + 1..]))
                    .unwrap_or(rest);
                if let Some(rest) = rest.trim_start().strip_prefix(':') {
                    s = rest.trim_start();
                    break;
                }
            }
        }
        if s == before {
            break;
        }
    }
    let s = s.strip_suffix("(fwd)").unwrap_or(s);
    collapse_whitespace(s, usize::MAX).to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_subject_strips_reply_prefixes() {
        assert_eq!(
            base_subject("Re: Re: [list] Fwd: Hello  World"),
            "hello world"
        );
        assert_eq!(base_subject("RE[2]: budget"), "budget");
        assert_eq!(base_subject("Rebuild: plan"), "rebuild: plan");
        assert_eq!(base_subject(""), "");
    }

    #[test]
    fn refuses_empty_and_headerless_input() {
        assert!(matches!(parse_message(b""), Err(Error::NotAMessage(_))));
        assert!(matches!(
            parse_message(b"  \r\n"),
            Err(Error::NotAMessage(_))
        ));
    }

    #[test]
    fn parses_multipart_structure() {
        let raw = b"From: Ann <ann@example.com>\r\nTo: bob@example.com\r\nSubject: Re: hi\r\n\
Message-ID: <a@b>\r\nReferences: <x@y> <z@w>\r\nDate: Tue, 1 Jul 2003 10:52:37 +0200\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n\
Hello   there\r\n--b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n\
Content-Disposition: attachment; filename=\"a.pdf\"\r\n\r\nPDF\r\n--b--\r\n";
        let p = parse_message(raw).unwrap();
        assert_eq!(p.envelope.subject.as_deref(), Some("Re: hi"));
        assert_eq!(p.envelope.base_subject, "hi");
        assert_eq!(p.envelope.from[0].email, "ann@example.com");
        assert_eq!(p.envelope.from[0].name.as_deref(), Some("Ann"));
        assert_eq!(p.envelope.message_id, vec!["a@b"]);
        assert_eq!(p.envelope.references, vec!["x@y", "z@w"]);
        assert_eq!(p.envelope.sent_at.unwrap().offset_minutes, 120);
        assert_eq!(p.envelope.preview, "Hello there");
        assert!(p.envelope.has_attachment);
        assert_eq!(p.detail.parts.len(), 3);
        assert_eq!(p.detail.parts[0].content_type, "multipart/mixed");
        assert_eq!(p.detail.parts[0].sub_parts, vec![1, 2]);
        assert_eq!(p.detail.parts[2].name.as_deref(), Some("a.pdf"));
        assert_eq!(p.detail.parts[2].disposition.as_deref(), Some("attachment"));
        assert_eq!(p.detail.text_body, vec![1]);
        assert_eq!(p.detail.attachments, vec![2]);
        assert_eq!(p.detail.headers[2].name, "Subject");
        assert_eq!(p.detail.headers[2].value, " Re: hi");
    }
}
