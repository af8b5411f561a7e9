//! One parse of a message into what the rules and the tokenizer look at:
//! header values, the text a reader sees, links, attachments.

use mail_parser::{
    Address, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders, PartType,
};

use super::html;

/// The GTUBE test string (SpamAssassin's Generic Test for Unsolicited
/// Bulk Email): a message holding it is spam.
pub const GTUBE: &[u8] = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

/// Most text (plain and visible HTML) kept for rules and tokens.
const MAX_TEXT: usize = 256 * 1024;

/// An address as written in From or Reply-To.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Mailbox {
    /// The display name.
    pub name: Option<String>,
    /// The address, lowercase.
    pub address: Option<String>,
}

impl Mailbox {
    /// The domain of the address, lowercase.
    pub fn domain(&self) -> Option<&str> {
        self.address.as_deref()?.rsplit_once('@').map(|(_, d)| d)
    }
}

/// An attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// Its file name, if it has one.
    pub name: Option<String>,
    /// `type/subtype`, lowercase.
    pub content_type: String,
}

/// A link found in HTML.
pub use html::Link;

/// A message as the filter sees it.
#[derive(Debug, Clone, Default)]
pub struct Analyzed {
    /// Whether mail-parser could parse it at all.
    pub parsed: bool,
    /// Top-level header fields: lowercase name, raw value (unfolded,
    /// trimmed).
    pub headers: Vec<(String, String)>,
    /// The decoded Subject.
    pub subject: Option<String>,
    /// The first From address.
    pub from: Option<Mailbox>,
    /// The first Reply-To address.
    pub reply_to: Option<Mailbox>,
    /// The Date, unix seconds, if present and valid.
    pub date: Option<i64>,
    /// Whether a Date field is present (valid or not).
    pub has_date: bool,
    /// The Message-ID field's raw value.
    pub message_id: Option<String>,
    /// To + Cc addresses.
    pub recipients: usize,
    /// `type/subtype` of the top-level part, lowercase.
    pub content_type: String,
    /// Plain text bodies followed by the visible text of HTML bodies.
    pub text: String,
    /// Whether any body is HTML.
    pub has_html: bool,
    /// Whether there is HTML but no plain-text body.
    pub html_only: bool,
    /// Characters of HTML text a reader cannot see.
    pub hidden_chars: usize,
    /// Images in HTML bodies.
    pub images: usize,
    /// Links in HTML bodies.
    pub links: Vec<Link>,
    /// Attachments (non-body parts).
    pub attachments: Vec<Attachment>,
    /// The GTUBE string is in the raw message or its decoded text.
    pub gtube: bool,
    /// Charsets named by parts, lowercase.
    pub charsets: Vec<String>,
}

impl Analyzed {
    /// The first value of a header field (lowercase `name`).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the header field is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers.iter().any(|(n, _)| n == name)
    }
}

fn first_mailbox(address: Option<&Address<'_>>) -> Option<Mailbox> {
    let addr = address?.first()?;
    Some(Mailbox {
        name: addr
            .name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned),
        address: addr.address.as_deref().map(|a| a.trim().to_lowercase()),
    })
}

fn count_addresses(value: Option<&Address<'_>>) -> usize {
    match value {
        Some(Address::List(list)) => list.len(),
        Some(Address::Group(groups)) => groups.iter().map(|g| g.addresses.len()).sum(),
        None => 0,
    }
}

/// Analyzes a raw message.
pub fn analyze(raw: &[u8]) -> Analyzed {
    analyze_parsed(raw, MessageParser::default().parse(raw).as_ref())
}

/// Analyzes a raw message already parsed with mail-parser's default
/// parser (`None`: it could not be parsed).
pub fn analyze_parsed(raw: &[u8], message: Option<&Message<'_>>) -> Analyzed {
    let mut out = Analyzed {
        gtube: memchr::memmem::find(raw, GTUBE).is_some(),
        ..Analyzed::default()
    };
    let Some(message) = message else {
        out.text = String::from_utf8_lossy(&raw[..raw.len().min(MAX_TEXT)]).into_owned();
        return out;
    };
    out.parsed = true;
    for header in message.headers() {
        let name = match &header.name {
            HeaderName::Other(n) => n.to_ascii_lowercase(),
            known => known.as_static_str().to_ascii_lowercase(),
        };
        let start = header.offset_start as usize;
        let end = (header.offset_end as usize).min(raw.len());
        let value = raw
            .get(start..end)
            .map(|v| unfold(&String::from_utf8_lossy(v)))
            .unwrap_or_default();
        if name == "date" {
            out.has_date = true;
        }
        if name == "content-type"
            && let HeaderValue::ContentType(ct) = &header.value
        {
            out.content_type = match &ct.c_subtype {
                Some(sub) => format!("{}/{}", ct.c_type, sub),
                None => ct.c_type.to_string(),
            }
            .to_ascii_lowercase();
        }
        out.headers.push((name, value));
    }
    if out.content_type.is_empty() {
        out.content_type = "text/plain".into();
    }
    out.subject = message.subject().map(str::to_owned);
    out.from = first_mailbox(message.from());
    out.reply_to = first_mailbox(message.reply_to());
    out.date = message.date().map(|d| d.to_timestamp());
    out.message_id = out.header("message-id").map(str::to_owned);
    out.recipients = count_addresses(message.to()) + count_addresses(message.cc());

    let mut text = String::new();
    let mut plain = 0;
    for part in message.text_bodies() {
        if let PartType::Text(t) = &part.body {
            plain += 1;
            push_text(&mut text, t);
        }
    }
    for part in message.html_bodies() {
        if let PartType::Html(h) = &part.body {
            out.has_html = true;
            let scanned = html::scan(h);
            out.hidden_chars += scanned.hidden_chars;
            out.images += scanned.images;
            if plain == 0 || text.len() < MAX_TEXT / 2 {
                push_text(&mut text, &scanned.text);
            }
            out.links.extend(scanned.links);
        }
    }
    out.html_only = out.has_html && plain == 0;
    for part in &message.parts {
        if let Some(ct) = part.content_type()
            && let Some(cs) = ct.attribute("charset")
        {
            let cs = cs.to_ascii_lowercase();
            if !out.charsets.contains(&cs) {
                out.charsets.push(cs);
            }
        }
    }
    for part in message.attachments() {
        let content_type = part
            .content_type()
            .map(|ct| match &ct.c_subtype {
                Some(sub) => format!("{}/{}", ct.c_type, sub),
                None => ct.c_type.to_string(),
            })
            .unwrap_or_else(|| "application/octet-stream".into())
            .to_ascii_lowercase();
        out.attachments.push(Attachment {
            name: part.attachment_name().map(str::to_owned),
            content_type,
        });
    }
    if !out.gtube {
        out.gtube = memchr::memmem::find(text.as_bytes(), GTUBE).is_some();
    }
    out.text = text;
    out
}

fn push_text(out: &mut String, text: &str) {
    let room = MAX_TEXT.saturating_sub(out.len());
    if room == 0 {
        return;
    }
    if !out.is_empty() {
        out.push('\n');
    }
    let mut end = text.len().min(room);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    out.push_str(&text[..end]);
}

/// Unfolds a raw header value and trims it.
fn unfold(value: &str) -> String {
    if !value.contains('\n') {
        return value.trim().to_owned();
    }
    let mut out = String::with_capacity(value.len());
    for (i, line) in value.split('\n').enumerate() {
        let line = line.trim_end_matches('\r');
        if i > 0 {
            out.push(' ');
            out.push_str(line.trim_start());
        } else {
            out.push_str(line);
        }
    }
    out.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_bodies_links_and_attachments() {
        let raw = b"From: \"Bank\" <Alerts@Bank.Example>\r\n\
Reply-To: x@other.example\r\n\
To: a@example.com, b@example.com\r\n\
Subject: =?utf-8?q?Hello_World?=\r\n\
Date: Thu, 22 Aug 2002 13:17:22 +0000\r\n\
Message-ID: <1@bank.example>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=b\r\n\
\r\n\
--b\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>Click <a href=\"http://evil.example/\">here</a></p>\r\n\
--b\r\n\
Content-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=\"invoice.exe\"\r\n\
\r\n\
AAAA\r\n\
--b--\r\n";
        let a = analyze(raw);
        assert!(a.parsed);
        assert_eq!(a.subject.as_deref(), Some("Hello World"));
        assert_eq!(a.from.as_ref().unwrap().domain(), Some("bank.example"));
        assert_eq!(a.reply_to.as_ref().unwrap().domain(), Some("other.example"));
        assert_eq!(a.date, Some(1030022242));
        assert_eq!(a.recipients, 2);
        assert_eq!(a.content_type, "multipart/mixed");
        assert!(a.html_only);
        assert_eq!(a.text, "Click here");
        assert_eq!(a.links[0].href, "http://evil.example/");
        assert_eq!(a.attachments[0].name.as_deref(), Some("invoice.exe"));
        assert_eq!(a.header("message-id"), Some("<1@bank.example>"));
        assert!(!a.gtube);
    }

    #[test]
    fn gtube_is_found_raw_and_encoded() {
        let mut raw = b"Subject: t\r\n\r\n".to_vec();
        raw.extend_from_slice(GTUBE);
        assert!(analyze(&raw).gtube);
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, GTUBE);
        let raw = format!(
            "Subject: t\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n"
        );
        assert!(analyze(raw.as_bytes()).gtube);
    }
}
