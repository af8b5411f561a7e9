//! Body parts (RFC 8621 section 4.1.4): `EmailBodyPart` objects from the
//! stored body structure, `bodyValues` and the decoded content of a part
//! from the raw message.

use std::collections::BTreeSet;

use mail_parser::{Encoding, Message, MessageParser, MessagePart, PartType};
use serde_json::{Map, Value, json};
use tern_store::BlobHash;
use tern_store::parse::{BodyPart, EmailDetail};

use super::PartContent;
use super::headers::{self, HeaderProp};
use crate::id;
use crate::method::MethodError;

/// A property of an `EmailBodyPart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyProp {
    /// partId
    PartId,
    /// blobId
    BlobId,
    /// size
    Size,
    /// headers
    Headers,
    /// name
    Name,
    /// type
    Type,
    /// charset
    Charset,
    /// disposition
    Disposition,
    /// cid
    Cid,
    /// language
    Language,
    /// location
    Location,
    /// subParts
    SubParts,
    /// `header:...`
    Header(HeaderProp),
}

/// The `bodyProperties` default (RFC 8621 section 4.2).
pub const DEFAULT_BODY_PROPERTIES: &[&str] = &[
    "partId",
    "blobId",
    "size",
    "name",
    "type",
    "charset",
    "disposition",
    "cid",
    "language",
    "location",
];

impl BodyProp {
    /// Parses a body property name.
    pub fn parse(s: &str) -> Result<(String, BodyProp), MethodError> {
        let p = match s {
            "partId" => BodyProp::PartId,
            "blobId" => BodyProp::BlobId,
            "size" => BodyProp::Size,
            "headers" => BodyProp::Headers,
            "name" => BodyProp::Name,
            "type" => BodyProp::Type,
            "charset" => BodyProp::Charset,
            "disposition" => BodyProp::Disposition,
            "cid" => BodyProp::Cid,
            "language" => BodyProp::Language,
            "location" => BodyProp::Location,
            "subParts" => BodyProp::SubParts,
            other => match headers::parse_prop(other) {
                Some(Ok(h)) => BodyProp::Header(h),
                Some(Err(e)) => return Err(MethodError::invalid_arguments(e)),
                None => {
                    return Err(MethodError::invalid_arguments(format!(
                        "unknown body property {other:?}"
                    )));
                }
            },
        };
        Ok((s.to_string(), p))
    }
}

/// How body parts and values are rendered for one /get or /parse.
#[derive(Debug, Clone)]
pub struct BodyOptions {
    /// bodyProperties, with the names as written.
    pub props: Vec<(String, BodyProp)>,
    /// fetchTextBodyValues
    pub fetch_text: bool,
    /// fetchHTMLBodyValues
    pub fetch_html: bool,
    /// fetchAllBodyValues
    pub fetch_all: bool,
    /// maxBodyValueBytes (0: no truncation)
    pub max_bytes: usize,
}

impl BodyOptions {
    /// Whether rendering `bodyValues` needs the raw message.
    pub fn fetches_values(&self) -> bool {
        self.fetch_text || self.fetch_html || self.fetch_all
    }
}

fn is_multipart(part: &BodyPart) -> bool {
    part.content_type.starts_with("multipart/")
}

/// One `EmailBodyPart`. In `bodyStructure` (`tree`), multipart parts
/// carry their `subParts` even when not asked for (the structure is
/// otherwise lost); in the flat lists they never do.
pub fn render_part(
    detail: &EmailDetail,
    index: u32,
    blob: &BlobHash,
    opts: &BodyOptions,
    tree: bool,
) -> Value {
    let Some(part) = detail.parts.get(index as usize) else {
        return Value::Null;
    };
    let multipart = is_multipart(part);
    let mut m = Map::new();
    let mut subparts_done = false;
    for (name, p) in &opts.props {
        let v = match p {
            BodyProp::PartId => {
                if multipart {
                    Value::Null
                } else {
                    Value::String(index.to_string())
                }
            }
            BodyProp::BlobId => {
                if multipart {
                    Value::Null
                } else {
                    Value::String(id::part_blob_id(blob, index))
                }
            }
            BodyProp::Size => json!(if multipart { 0 } else { part.size }),
            BodyProp::Headers => headers::all_headers(&part.headers),
            BodyProp::Name => json!(part.name),
            BodyProp::Type => json!(part.content_type),
            BodyProp::Charset => json!(part.charset),
            BodyProp::Disposition => json!(part.disposition),
            BodyProp::Cid => json!(part.cid),
            BodyProp::Language => {
                if part.language.is_empty() {
                    Value::Null
                } else {
                    json!(part.language)
                }
            }
            BodyProp::Location => json!(part.location),
            BodyProp::SubParts => {
                subparts_done = true;
                sub_parts(detail, part, blob, opts, tree)
            }
            BodyProp::Header(h) => headers::value(&part.headers, h),
        };
        m.insert(name.clone(), v);
    }
    if tree && multipart && !subparts_done {
        m.insert("subParts".into(), sub_parts(detail, part, blob, opts, tree));
    }
    Value::Object(m)
}

fn sub_parts(
    detail: &EmailDetail,
    part: &BodyPart,
    blob: &BlobHash,
    opts: &BodyOptions,
    tree: bool,
) -> Value {
    if !is_multipart(part) {
        return Value::Null;
    }
    Value::Array(
        part.sub_parts
            .iter()
            .map(|&i| render_part(detail, i, blob, opts, tree))
            .collect(),
    )
}

/// A flat list of parts (`textBody`, `htmlBody`, `attachments`).
pub fn render_list(
    detail: &EmailDetail,
    list: &[u32],
    blob: &BlobHash,
    opts: &BodyOptions,
) -> Value {
    Value::Array(
        list.iter()
            .map(|&i| render_part(detail, i, blob, opts, false))
            .collect(),
    )
}

/// The parts whose values `bodyValues` holds: text parts of the lists
/// asked for.
pub fn value_parts(detail: &EmailDetail, opts: &BodyOptions) -> BTreeSet<u32> {
    let mut out = BTreeSet::new();
    let text = |i: &u32| {
        detail
            .parts
            .get(*i as usize)
            .is_some_and(|p| p.content_type.starts_with("text/"))
    };
    if opts.fetch_all {
        out.extend((0..detail.parts.len() as u32).filter(text));
    }
    if opts.fetch_text {
        out.extend(detail.text_body.iter().filter(|i| text(i)));
    }
    if opts.fetch_html {
        out.extend(detail.html_body.iter().filter(|i| text(i)));
    }
    out
}

/// `bodyValues`: for each part in `parts`, its decoded text.
pub fn render_values(
    raw: &[u8],
    detail: &EmailDetail,
    parts: &BTreeSet<u32>,
    max_bytes: usize,
) -> Value {
    let mut m = Map::new();
    if parts.is_empty() {
        return Value::Object(m);
    }
    let Some(message) = MessageParser::default().parse(raw) else {
        return Value::Object(m);
    };
    let order = flat_order(&message);
    for &i in parts {
        let Some(part) = order.get(i as usize).and_then(|&p| message.parts.get(p)) else {
            continue;
        };
        let html = detail
            .parts
            .get(i as usize)
            .is_some_and(|p| p.content_type == "text/html");
        let (text, problem) = match &part.body {
            PartType::Text(t) | PartType::Html(t) => (t.to_string(), part.is_encoding_problem),
            PartType::Binary(b) | PartType::InlineBinary(b) => {
                let s = String::from_utf8_lossy(b);
                let lossy = matches!(s, std::borrow::Cow::Owned(_));
                (s.into_owned(), lossy)
            }
            _ => continue,
        };
        let text = text.replace("\r\n", "\n");
        let (value, truncated) = truncate(&text, max_bytes, html);
        m.insert(
            i.to_string(),
            json!({
                "value": value,
                "isEncodingProblem": problem,
                "isTruncated": truncated,
            }),
        );
    }
    Value::Object(m)
}

/// Cuts `s` to at most `max` bytes (0: no limit) on a character boundary,
/// and for HTML not inside a tag.
pub fn truncate(s: &str, max: usize, html: bool) -> (&str, bool) {
    if max == 0 || s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut cut = &s[..end];
    if html
        && let Some(open) = cut.rfind('<')
        && !cut[open..].contains('>')
    {
        cut = &cut[..open];
    }
    (cut, true)
}

/// For each index of `EmailDetail::parts`, the index of the same part in
/// mail-parser's `Message::parts`: the store numbers parts depth first
/// from the root (see `tern_store::parse`), which this walk repeats.
pub fn flat_order(message: &Message<'_>) -> Vec<usize> {
    fn walk(parts: &[MessagePart<'_>], at: usize, seen: &mut [bool], out: &mut Vec<usize>) {
        seen[at] = true;
        out.push(at);
        if let PartType::Multipart(children) = &parts[at].body {
            for &child in children {
                let child = child as usize;
                if child < parts.len() && !seen[child] {
                    walk(parts, child, seen, out);
                }
            }
        }
    }
    let mut out = Vec::with_capacity(message.parts.len());
    if !message.parts.is_empty() {
        let mut seen = vec![false; message.parts.len()];
        walk(&message.parts, 0, &mut seen, &mut out);
    }
    out
}

/// The content of part `index` of `raw` after transfer decoding (not
/// charset decoding: the octets a download serves).
pub fn part_content(raw: &[u8], index: u32) -> Option<PartContent> {
    let message = MessageParser::default().parse(raw)?;
    let order = flat_order(&message);
    let part = message.parts.get(*order.get(index as usize)?)?;
    let bytes = match &part.body {
        PartType::Multipart(_) => return None,
        PartType::Binary(b) | PartType::InlineBinary(b) => b.to_vec(),
        PartType::Text(_) | PartType::Html(_) | PartType::Message(_) => {
            let body = raw
                .get(part.offset_body as usize..part.offset_end as usize)
                .unwrap_or_default();
            match part.encoding {
                Encoding::Base64 => {
                    mail_parser::decoders::base64::base64_decode(body).unwrap_or_default()
                }
                Encoding::QuotedPrintable => {
                    mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
                        .unwrap_or_default()
                }
                Encoding::None => body.to_vec(),
            }
        }
    };
    let parsed = tern_store::parse::parse_message(raw).ok();
    let stored = parsed
        .as_ref()
        .and_then(|p| p.detail.parts.get(index as usize));
    Some(PartContent {
        bytes,
        content_type: stored.map_or_else(
            || "application/octet-stream".to_string(),
            |p| p.content_type.clone(),
        ),
        name: stored.and_then(|p| p.name.clone()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_utf8_and_tags_whole() {
        assert_eq!(truncate("héllo", 0, false), ("héllo", false));
        assert_eq!(truncate("héllo", 2, false), ("h", true));
        assert_eq!(truncate("héllo", 3, false), ("hé", true));
        assert_eq!(truncate("ab<a href=x>c", 6, true), ("ab", true));
        assert_eq!(truncate("ab<b>cdef", 7, true), ("ab<b>cd", true));
    }

    const RAW: &[u8] = b"From: a@b\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"x\"\r\n\r\n\
--x\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
caf=C3=A9\r\n--x\r\nContent-Type: application/octet-stream; name=\"d.bin\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--x--\r\n";

    #[test]
    fn part_content_decodes_transfer_encoding() {
        let text = part_content(RAW, 1).unwrap();
        assert_eq!(text.bytes, "café".as_bytes());
        assert_eq!(text.content_type, "text/plain");
        let bin = part_content(RAW, 2).unwrap();
        assert_eq!(bin.bytes, vec![0, 1, 2]);
        assert_eq!(bin.name.as_deref(), Some("d.bin"));
        assert_eq!(part_content(RAW, 0), None, "multipart has no content");
        assert_eq!(part_content(RAW, 3), None);
    }
}
