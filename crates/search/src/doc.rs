//! What of an email is searchable: a [`Document`], made from the raw
//! message (the store keeps it as a blob), and the per-field texts the
//! analyzer indexes.

use std::sync::Arc;

use mail_parser::{Address, Message, MessageParser, MimeHeaders, PartType};
use tern_store::kv::Transaction;
use tern_store::{AccountId, DocumentId, MailStore, blob, email};

use crate::Result;
use crate::analyze::{Language, detect_language};
use crate::html::html_to_text;

/// Text kept per body part (bytes); the rest is not indexed.
pub const MAX_PART_TEXT: usize = 256 << 10;
/// Text kept for all body parts together, and for all attachments.
pub const MAX_FIELD_TEXT: usize = 1 << 20;

/// An index field. The byte values are part of the index format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Field {
    /// From: display names and addresses.
    From = 1,
    /// To.
    To = 2,
    /// Cc.
    Cc = 3,
    /// Bcc.
    Bcc = 4,
    /// Subject.
    Subject = 5,
    /// The text body parts (HTML turned into text).
    Body = 6,
    /// File names of attachments.
    AttachmentName = 7,
    /// Text of `text/*` attachments and of attached messages.
    AttachmentText = 8,
    /// Names of the top-level header fields (lowercase, not analyzed).
    HeaderName = 9,
}

impl Field {
    /// Every field.
    pub const ALL: [Field; 9] = [
        Field::From,
        Field::To,
        Field::Cc,
        Field::Bcc,
        Field::Subject,
        Field::Body,
        Field::AttachmentName,
        Field::AttachmentText,
        Field::HeaderName,
    ];

    /// The field with this byte.
    pub fn from_u8(b: u8) -> Option<Field> {
        Field::ALL.into_iter().find(|f| *f as u8 == b)
    }
}

/// A name and address.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Addr {
    /// Display name.
    pub name: Option<String>,
    /// The address.
    pub email: String,
}

/// The searchable content of one email.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Document {
    /// From.
    pub from: Vec<Addr>,
    /// To.
    pub to: Vec<Addr>,
    /// Cc.
    pub cc: Vec<Addr>,
    /// Bcc.
    pub bcc: Vec<Addr>,
    /// Subject, decoded.
    pub subject: String,
    /// Text of each body part (HTML parts as text), in order.
    pub body: Vec<String>,
    /// Attachment file names.
    pub attachment_names: Vec<String>,
    /// Text of `text/*` attachments and attached messages.
    pub attachment_text: Vec<String>,
    /// Top-level header field names, lowercase, unique.
    pub header_names: Vec<String>,
}

/// One analyzed text of a document: its field, the text and the stemming
/// language. Indexing and snippets both go through [`Document::texts`],
/// so they analyze alike.
#[derive(Debug, Clone, Copy)]
pub struct FieldText<'a> {
    /// The field.
    pub field: Field,
    /// The text.
    pub text: &'a str,
    /// Stemming language.
    pub language: Option<Language>,
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

fn addresses(a: Option<&Address<'_>>) -> Vec<Addr> {
    let conv = |x: &mail_parser::Addr<'_>| Addr {
        name: x.name.as_ref().map(|n| n.to_string()),
        email: x
            .address
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_default(),
    };
    match a {
        None => Vec::new(),
        Some(Address::List(list)) => list.iter().map(conv).collect(),
        Some(Address::Group(groups)) => groups
            .iter()
            .flat_map(|g| g.addresses.iter().map(conv))
            .collect(),
    }
}

fn part_text(body: &PartType<'_>) -> Option<String> {
    match body {
        PartType::Text(t) => Some(t.to_string()),
        PartType::Html(h) => Some(html_to_text(h)),
        _ => None,
    }
}

/// A header field's name as the document keeps it: lower case; `None`
/// when empty or longer than 64 bytes.
fn header_name(name: &str) -> Option<String> {
    (!name.is_empty() && name.len() <= 64).then(|| name.to_ascii_lowercase())
}

/// Appends `text` to `out` within the byte budget `left`.
fn push_limited(out: &mut Vec<String>, mut text: String, left: &mut usize) {
    if *left == 0 || text.trim().is_empty() {
        return;
    }
    truncate(&mut text, MAX_PART_TEXT.min(*left));
    *left -= text.len();
    out.push(text);
}

impl Document {
    /// The document of a raw message; `None` if it does not parse at all.
    pub fn from_message(raw: &[u8]) -> Option<Document> {
        let message = MessageParser::default().parse(raw)?;
        Some(Self::from_parsed(&message))
    }

    /// The document of `prefix ++ data`, where `prefix` is whole header
    /// fields put on top of a message (an MTA's trace fields) and
    /// `message` is `data` parsed by mail-parser's default parser: the
    /// same as [`Document::from_message`] of the whole, without parsing
    /// `data` again (the prefix adds header names only). `None` when the
    /// parse does not hold under the prefix
    /// ([`tern_store::parse::fields_over`]): parse the whole.
    pub fn from_prefixed(prefix: &[u8], data: &[u8], message: &Message<'_>) -> Option<Document> {
        let names: Vec<String> = tern_store::parse::fields_over(prefix, data, message)?
            .iter()
            .filter_map(|f| header_name(&f.name))
            .collect();
        let mut doc = Self::from_parsed(message);
        if !names.is_empty() {
            doc.header_names.extend(names);
            doc.header_names.sort_unstable();
            doc.header_names.dedup();
        }
        Some(doc)
    }

    fn from_parsed(m: &Message<'_>) -> Document {
        let mut doc = Document {
            from: addresses(m.from()),
            to: addresses(m.to()),
            cc: addresses(m.cc()),
            bcc: addresses(m.bcc()),
            subject: m.subject().unwrap_or("").to_string(),
            ..Default::default()
        };
        truncate(&mut doc.subject, 4096);
        let mut names: Vec<String> = m
            .headers()
            .iter()
            .filter_map(|h| header_name(h.name.as_str()))
            .collect();
        names.sort_unstable();
        names.dedup();
        doc.header_names = names;
        let mut left = MAX_FIELD_TEXT;
        for &i in &m.text_body {
            if let Some(text) = m.parts.get(i as usize).and_then(|p| part_text(&p.body)) {
                push_limited(&mut doc.body, text, &mut left);
            }
        }
        let mut left = MAX_FIELD_TEXT;
        for &i in &m.attachments {
            let Some(part) = m.parts.get(i as usize) else {
                continue;
            };
            if let Some(name) = part.attachment_name() {
                doc.attachment_names.push(name.to_string());
            }
            match &part.body {
                PartType::Message(nested) => {
                    let inner = Self::from_parsed(nested);
                    push_limited(&mut doc.attachment_text, inner.subject, &mut left);
                    for t in inner.body.into_iter().chain(inner.attachment_text) {
                        push_limited(&mut doc.attachment_text, t, &mut left);
                    }
                    doc.attachment_names.extend(inner.attachment_names);
                }
                body => {
                    if let Some(text) = part_text(body) {
                        push_limited(&mut doc.attachment_text, text, &mut left);
                    }
                }
            }
        }
        doc
    }

    /// Reads an email's document from the store: its metadata, then its
    /// blob. `None` if the email does not exist (destroyed).
    pub fn load(
        tx: &mut Transaction<'_>,
        account: AccountId,
        id: DocumentId,
    ) -> Result<Option<Document>> {
        Ok(Self::load_dated(tx, account, id)?.map(|(doc, _)| doc))
    }

    /// [`Document::load`], with the email's receivedAt (unix seconds).
    pub fn load_dated(
        tx: &mut Transaction<'_>,
        account: AccountId,
        id: DocumentId,
    ) -> Result<Option<(Document, i64)>> {
        // Without a store nothing else holds the document: no copy.
        Ok(Self::load_dated_from(tx, account, id, None)?
            .map(|(doc, at)| (Arc::unwrap_or_clone(doc), at)))
    }

    /// [`Document::load_dated`], taking the message from `store`'s
    /// recently delivered ones ([`MailStore::recent_blob`]) when it is
    /// there instead of reading its blob. The document may be shared with
    /// that cache (not copied).
    pub fn load_dated_from(
        tx: &mut Transaction<'_>,
        account: AccountId,
        id: DocumentId,
        store: Option<&MailStore>,
    ) -> Result<Option<(Arc<Document>, i64)>> {
        let Some(meta) = email::get(tx, account, id)? else {
            return Ok(None);
        };
        // Delivered lately by this process: the document its deliverer
        // built from its own parse, else the message's bytes.
        let derived = store.and_then(|s| s.recent_derived(&meta.blob));
        if let Some(Ok(doc)) = derived.map(|d| d.downcast::<Document>()) {
            return Ok(Some((doc, meta.received_at)));
        }
        let doc = match store.and_then(|s| s.recent_blob(&meta.blob)) {
            Some(raw) => Document::from_message(&raw),
            None => match blob::read(tx, &meta.blob)? {
                Some(raw) => Document::from_message(&raw),
                None => return Ok(None),
            },
        };
        Ok(Some((Arc::new(doc.unwrap_or_default()), meta.received_at)))
    }

    /// Bytes of text the document holds (what the index is measured
    /// against).
    pub fn text_bytes(&self) -> usize {
        let addrs = |v: &[Addr]| -> usize {
            v.iter()
                .map(|a| a.email.len() + a.name.as_ref().map_or(0, String::len))
                .sum()
        };
        addrs(&self.from)
            + addrs(&self.to)
            + addrs(&self.cc)
            + addrs(&self.bcc)
            + self.subject.len()
            + self.body.iter().map(String::len).sum::<usize>()
            + self.attachment_names.iter().map(String::len).sum::<usize>()
            + self.attachment_text.iter().map(String::len).sum::<usize>()
    }

    /// The stemming language of the body: detected on the first body part
    /// with text, else on the subject.
    pub fn language(&self) -> Option<Language> {
        let sample = self
            .body
            .iter()
            .find(|b| b.chars().filter(|c| c.is_alphabetic()).take(20).count() >= 20)
            .map(String::as_str)
            .unwrap_or(&self.subject);
        detect_language(sample)
    }

    /// Every analyzed text, in field order. Addresses and names are not
    /// stemmed; the subject and each body part are stemmed in the body's
    /// language (or the part's own, when it reliably differs).
    pub fn texts(&self) -> Vec<FieldText<'_>> {
        let lang = self.language();
        let mut out = Vec::new();
        for (field, list) in [
            (Field::From, &self.from),
            (Field::To, &self.to),
            (Field::Cc, &self.cc),
            (Field::Bcc, &self.bcc),
        ] {
            for a in list {
                if let Some(n) = &a.name {
                    out.push(FieldText {
                        field,
                        text: n,
                        language: None,
                    });
                }
                out.push(FieldText {
                    field,
                    text: &a.email,
                    language: None,
                });
            }
        }
        out.push(FieldText {
            field: Field::Subject,
            text: &self.subject,
            language: lang,
        });
        for (i, b) in self.body.iter().enumerate() {
            let language = if i == 0 { lang } else { detect_language(b) };
            out.push(FieldText {
                field: Field::Body,
                text: b,
                language,
            });
        }
        for n in &self.attachment_names {
            out.push(FieldText {
                field: Field::AttachmentName,
                text: n,
                language: None,
            });
        }
        for t in &self.attachment_text {
            out.push(FieldText {
                field: Field::AttachmentText,
                text: t,
                language: detect_language(t),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_fields_from_a_multipart_message() {
        let raw = b"From: \"Ann Lee\" <ann@example.com>\r\nTo: bob@example.org, Cy <cy@example.net>\r\n\
Subject: =?UTF-8?Q?Vi=E1=BB=87t_Nam?= trip\r\nX-Custom: 1\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
Content-Type: multipart/alternative; boundary=\"a\"\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\n\
Plain body\r\n--a\r\nContent-Type: text/html\r\n\r\n<p>HTML body</p>\r\n--a--\r\n--b\r\n\
Content-Type: text/plain; name=\"notes.txt\"\r\nContent-Disposition: attachment; filename=\"notes.txt\"\r\n\r\n\
Attached notes\r\n--b\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\n\
Content-Disposition: attachment; filename=\"scan.pdf\"\r\n\r\nPDF\r\n--b--\r\n";
        let d = Document::from_message(raw).unwrap();
        assert_eq!(
            d.from,
            vec![Addr {
                name: Some("Ann Lee".into()),
                email: "ann@example.com".into()
            }]
        );
        assert_eq!(d.to.len(), 2);
        assert_eq!(d.subject, "Việt Nam trip");
        assert_eq!(d.body.len(), 1);
        assert!(d.body[0].contains("Plain body"));
        assert_eq!(d.attachment_names, ["notes.txt", "scan.pdf"]);
        assert_eq!(d.attachment_text.len(), 1);
        assert!(d.attachment_text[0].contains("Attached notes"));
        assert!(d.header_names.contains(&"x-custom".to_string()));
        assert!(d.header_names.contains(&"subject".to_string()));
    }

    #[test]
    fn html_only_body_is_text() {
        let raw = b"From: a@b.c\r\nSubject: s\r\nContent-Type: text/html\r\n\r\n\
<html><head><style>x{}</style></head><body>Visible <b>text</b></body></html>\r\n";
        let d = Document::from_message(raw).unwrap();
        assert_eq!(
            d.body[0].split_whitespace().collect::<Vec<_>>(),
            ["Visible", "text"]
        );
    }
}
