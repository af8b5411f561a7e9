//! The RFC 5322 message of a draft created with Email/set (RFC 8621
//! section 4.6): header fields from the convenience and `header:`
//! properties, the MIME tree from `bodyStructure` or from
//! `textBody`/`htmlBody`/`attachments`, text from `bodyValues`, other
//! content from blobs.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use serde_json::{Map, Value};
use tern_store::BlobHash;

use super::dates;
use super::headers::{self, Form};
use crate::method::{MethodError, SetError};

/// Email properties a client may give on create (besides `header:`
/// properties).
const SETTABLE: &[&str] = &[
    "mailboxIds",
    "keywords",
    "receivedAt",
    "messageId",
    "inReplyTo",
    "references",
    "sender",
    "from",
    "to",
    "cc",
    "bcc",
    "replyTo",
    "subject",
    "sentAt",
    "bodyStructure",
    "textBody",
    "htmlBody",
    "attachments",
    "bodyValues",
];

/// The convenience properties and the header field each stands for.
const CONVENIENCE: &[(&str, &str, Form)] = &[
    ("messageId", "Message-ID", Form::MessageIds),
    ("inReplyTo", "In-Reply-To", Form::MessageIds),
    ("references", "References", Form::MessageIds),
    ("sender", "Sender", Form::Addresses),
    ("from", "From", Form::Addresses),
    ("to", "To", Form::Addresses),
    ("cc", "Cc", Form::Addresses),
    ("bcc", "Bcc", Form::Addresses),
    ("replyTo", "Reply-To", Form::Addresses),
    ("subject", "Subject", Form::Text),
    ("sentAt", "Date", Form::Date),
];

/// Why a draft cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// A SetError to return as is.
    Set(SetError),
    /// Blob ids that name nothing the account holds (`blobNotFound`).
    BlobsNotFound(Vec<String>),
    /// Reading a blob failed: the method fails.
    Method(MethodError),
}

impl From<SetError> for BuildError {
    fn from(e: SetError) -> Self {
        BuildError::Set(e)
    }
}

fn invalid(prop: &str, why: impl Into<String>) -> BuildError {
    BuildError::Set(SetError::invalid_properties([prop]).with_description(why))
}

/// A header field to write: name and value (already encoded and folded
/// where needed).
type Field = (String, String);

/// The header fields a set of properties (`header:` and, on the Email,
/// convenience ones) asks for, checking that no field is given twice.
struct Fields {
    fields: Vec<Field>,
    /// Lowercase field name → the property that set it.
    by_name: HashMap<String, String>,
}

impl Fields {
    fn new() -> Self {
        Fields {
            fields: Vec::new(),
            by_name: HashMap::new(),
        }
    }

    fn claim(&mut self, lower: &str, prop: &str) -> Result<(), BuildError> {
        if let Some(other) = self.by_name.insert(lower.to_string(), prop.to_string()) {
            return Err(BuildError::Set(
                SetError::invalid_properties([other, prop.to_string()])
                    .with_description("two properties set the same header field"),
            ));
        }
        Ok(())
    }

    fn has(&self, lower: &str) -> bool {
        self.by_name.contains_key(lower)
    }

    /// Adds a `header:` property's field(s).
    fn add_header_prop(&mut self, prop: &str, value: &Value) -> Result<(), BuildError> {
        let h = match headers::parse_prop(prop) {
            Some(Ok(h)) => h,
            _ => return Err(invalid(prop, "not a valid header property")),
        };
        self.claim(&h.lower, prop)?;
        let values: Vec<&Value> = if h.all {
            match value {
                Value::Array(items) => items.iter().collect(),
                Value::Null => Vec::new(),
                _ => return Err(invalid(prop, ":all takes an array")),
            }
        } else {
            vec![value]
        };
        for v in values {
            if let Some(encoded) = encode_form(&h.name, v, h.form).map_err(|e| invalid(prop, e))? {
                self.fields.push((h.name.clone(), encoded));
            }
        }
        Ok(())
    }
}

/// Encodes a value of `form` as a header field value (with its leading
/// space); `None` for `null` (no field).
fn encode_form(name: &str, v: &Value, form: Form) -> Result<Option<String>, String> {
    if v.is_null() {
        return Ok(None);
    }
    let prefix = name.len() + 2;
    let out = match form {
        Form::Raw => {
            let s = v.as_str().ok_or("a raw value is a string")?;
            check_raw(s)?;
            return Ok(Some(s.to_string()));
        }
        Form::Text => {
            let s = v.as_str().ok_or("a text value is a string")?;
            fold(&encode_text(s), prefix)
        }
        Form::Addresses => fold(&encode_addresses(v)?, prefix),
        Form::GroupedAddresses => {
            let groups = v.as_array().ok_or("grouped addresses are an array")?;
            let mut parts = Vec::new();
            for g in groups {
                let g = g.as_object().ok_or("a group is an object")?;
                let list = encode_addresses(g.get("addresses").unwrap_or(&Value::Null))?;
                match g.get("name") {
                    None | Some(Value::Null) => {
                        if !list.is_empty() {
                            parts.push(list);
                        }
                    }
                    Some(Value::String(n)) => parts.push(format!("{}: {list};", phrase(n))),
                    Some(_) => return Err("a group name is a string".into()),
                }
            }
            fold(&parts.join(", "), prefix)
        }
        Form::MessageIds => {
            let ids = v.as_array().ok_or("message ids are an array")?;
            let mut out = Vec::new();
            for i in ids {
                let i = i.as_str().ok_or("a message id is a string")?;
                if i.is_empty() || i.contains(['<', '>', ' ', '\r', '\n']) {
                    return Err(format!("bad message id {i:?}"));
                }
                out.push(format!("<{i}>"));
            }
            fold(&out.join(" "), prefix)
        }
        Form::Date => {
            let d = v
                .as_str()
                .and_then(dates::parse_rfc3339)
                .ok_or("a date is an RFC 3339 date-time")?;
            dates::rfc5322_date(d.unix, d.offset_minutes)
        }
        Form::Urls => {
            let urls = v.as_array().ok_or("URLs are an array")?;
            let mut out = Vec::new();
            for u in urls {
                let u = u.as_str().ok_or("a URL is a string")?;
                if u.contains(['<', '>', ' ', '\r', '\n']) {
                    return Err(format!("bad URL {u:?}"));
                }
                out.push(format!("<{u}>"));
            }
            fold(&out.join(", "), prefix)
        }
    };
    Ok(Some(format!(" {out}")))
}

/// A raw value may only break lines by folding (CRLF then white space).
fn check_raw(s: &str) -> Result<(), String> {
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        match c {
            0 => return Err("NUL in a raw value".into()),
            b'\r' if b.get(i + 1) == Some(&b'\n') && matches!(b.get(i + 2), Some(b' ' | b'\t')) => {
            }
            b'\n' if i > 0 && b[i - 1] == b'\r' => {}
            b'\r' | b'\n' => return Err("a raw value may only contain folded line breaks".into()),
            _ => {}
        }
    }
    Ok(())
}

fn encode_addresses(v: &Value) -> Result<String, String> {
    let list = match v {
        Value::Array(l) => l,
        Value::Null => return Ok(String::new()),
        _ => return Err("addresses are an array".into()),
    };
    let mut out = Vec::new();
    for a in list {
        let a = a.as_object().ok_or("an address is an object")?;
        let email = match a.get("email") {
            Some(Value::String(e)) => e.trim(),
            _ => return Err("an address needs an email".into()),
        };
        if email.contains(['<', '>', ',', '\r', '\n', ' ']) {
            return Err(format!("bad address {email:?}"));
        }
        match a.get("name") {
            None | Some(Value::Null) => out.push(email.to_string()),
            Some(Value::String(n)) if n.trim().is_empty() => out.push(email.to_string()),
            Some(Value::String(n)) => out.push(format!("{} <{email}>", phrase(n))),
            Some(_) => return Err("a name is a string".into()),
        }
    }
    Ok(out.join(", "))
}

/// A display name: an atom phrase, a quoted string, or encoded words.
fn phrase(name: &str) -> String {
    let name = name.trim();
    if !name.is_ascii() || name.contains("=?") || name.chars().any(|c| c.is_ascii_control()) {
        return encoded_words(name);
    }
    let special = |c: char| "()<>[]:;@\\,.\"".contains(c);
    if name.chars().any(special) {
        let escaped = name.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    } else {
        name.to_string()
    }
}

/// Unstructured text: as is when it is plain printable ASCII, else RFC
/// 2047 encoded words.
fn encode_text(s: &str) -> String {
    let plain =
        s.is_ascii() && !s.contains("=?") && !s.chars().any(|c| c.is_ascii_control() && c != '\t');
    if plain {
        s.to_string()
    } else {
        encoded_words(s)
    }
}

/// `=?UTF-8?B?...?=` words of at most 75 characters, split on character
/// boundaries, separated by spaces.
fn encoded_words(s: &str) -> String {
    let clean: String = s.chars().filter(|c| !matches!(c, '\r' | '\n')).collect();
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in clean.chars() {
        if chunk.len() + c.len_utf8() > 45 {
            words.push(std::mem::take(&mut chunk));
        }
        chunk.push(c);
    }
    if !chunk.is_empty() || words.is_empty() {
        words.push(chunk);
    }
    words
        .iter()
        .map(|w| {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(w)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Folds a value at spaces so lines stay near 78 characters; `used` is
/// the length of the field name and colon on the first line.
fn fold(value: &str, used: usize) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    let mut col = used;
    for (i, word) in value.split(' ').enumerate() {
        if i > 0 {
            if col + 1 + word.len() > 78 && col > 1 {
                out.push_str("\r\n ");
                col = 1;
            } else {
                out.push(' ');
                col += 1;
            }
        }
        out.push_str(word);
        col += word.len();
    }
    out
}

/// Reads the content of a blobId; `Ok(None)` when the account has no such
/// blob.
pub type BlobReader<'a> = dyn FnMut(&str) -> Result<Option<Vec<u8>>, MethodError> + 'a;

/// A MIME part ready to write.
struct Part {
    fields: Vec<Field>,
    body: Body,
}

enum Body {
    Leaf(Vec<u8>),
    Multipart(Vec<Part>),
}

/// What builds the body parts: the body values and the blob reader, and
/// the blob ids found missing.
struct PartBuilder<'a, 'b> {
    values: &'a Map<String, Value>,
    read: &'a mut BlobReader<'b>,
    missing: Vec<String>,
    /// The context a part sits in, for default types and dispositions.
    used_values: Vec<String>,
}

/// Properties of an EmailBodyPart that a client may set.
const PART_SETTABLE: &[&str] = &[
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
    "subParts",
];

impl PartBuilder<'_, '_> {
    /// Builds one EmailBodyPart; `prop` names it in errors.
    fn part(
        &mut self,
        v: &Value,
        prop: &str,
        default_type: &str,
        default_disposition: Option<&str>,
        depth: usize,
    ) -> Result<Part, BuildError> {
        if depth > 16 {
            return Err(invalid(prop, "body structure nested too deeply"));
        }
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(prop, "a body part is an object"))?;
        let mut fields = Fields::new();
        for (k, val) in obj {
            if k.starts_with("header:") {
                let lower = k.to_ascii_lowercase();
                if lower.starts_with("header:content-transfer-encoding") {
                    return Err(invalid(
                        prop,
                        "Content-Transfer-Encoding is set by the server",
                    ));
                }
                fields.add_header_prop(k, val)?;
            } else if !PART_SETTABLE.contains(&k.as_str()) {
                return Err(invalid(prop, format!("{k} cannot be set on a body part")));
            }
        }
        let str_prop = |name: &str| string_prop(obj, prop, name);
        let part_id = str_prop("partId")?;
        let blob_id = str_prop("blobId")?;
        let charset = str_prop("charset")?;
        let name = str_prop("name")?;
        let cid = str_prop("cid")?;
        let location = str_prop("location")?;
        let disposition = str_prop("disposition")?
            .map(str::to_ascii_lowercase)
            .or_else(|| default_disposition.map(str::to_string));
        let language: Option<Vec<String>> = match obj.get("language") {
            None | Some(Value::Null) => None,
            Some(Value::Array(l)) => Some(
                l.iter()
                    .map(|x| x.as_str().map(str::to_string))
                    .collect::<Option<_>>()
                    .ok_or_else(|| invalid(prop, "language is an array of strings"))?,
            ),
            Some(_) => return Err(invalid(prop, "language is an array of strings")),
        };
        // Properties that stand for a header field must not meet a
        // `header:` property for the same field.
        let type_given = str_prop("type")?;
        let raw_type = if fields.has("content-type") {
            if type_given.is_some() || charset.is_some() {
                return Err(invalid(prop, "type and header:Content-Type both given"));
            }
            fields
                .fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                .map(|(_, v)| {
                    v.split(';')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_ascii_lowercase()
                })
        } else {
            None
        };
        for (given, field) in [
            (
                obj.contains_key("disposition") || obj.contains_key("name"),
                "content-disposition",
            ),
            (cid.is_some(), "content-id"),
            (language.is_some(), "content-language"),
            (location.is_some(), "content-location"),
        ] {
            if given && fields.has(field) {
                return Err(invalid(
                    prop,
                    format!("a property and header:{field} both set it"),
                ));
            }
        }
        let ctype = raw_type
            .clone()
            .or_else(|| type_given.map(|t| t.trim().to_ascii_lowercase()))
            .unwrap_or_else(|| {
                if obj.contains_key("subParts") {
                    "multipart/mixed".to_string()
                } else {
                    default_type.to_string()
                }
            });
        if ctype.is_empty() || !ctype.contains('/') || ctype.contains(char::is_whitespace) {
            return Err(invalid(prop, "type must be type/subtype"));
        }
        let mut extra = Vec::new();
        let body = if let Some(subtype) = ctype.strip_prefix("multipart/") {
            if part_id.is_some() || blob_id.is_some() {
                return Err(invalid(prop, "a multipart has subParts, not content"));
            }
            let Some(Value::Array(subs)) = obj.get("subParts") else {
                return Err(invalid(prop, "a multipart needs subParts"));
            };
            let mut children = Vec::new();
            for s in subs {
                let child_default = if subtype == "digest" {
                    "message/rfc822"
                } else {
                    "text/plain"
                };
                children.push(self.part(s, prop, child_default, None, depth + 1)?);
            }
            Body::Multipart(children)
        } else {
            if obj.contains_key("subParts") && !obj["subParts"].is_null() {
                return Err(invalid(prop, "only a multipart has subParts"));
            }
            match (part_id, blob_id) {
                (Some(_), Some(_)) => return Err(invalid(prop, "partId and blobId both given")),
                (None, None) => return Err(invalid(prop, "a part needs a partId or a blobId")),
                (Some(pid), None) => {
                    if charset.is_some() {
                        return Err(invalid(prop, "charset is not given with a partId"));
                    }
                    if obj.contains_key("size") {
                        return Err(invalid(prop, "size is not given with a partId"));
                    }
                    let text = self.value(pid)?;
                    if !ctype.starts_with("text/") {
                        return Err(invalid(prop, "a part from bodyValues is text"));
                    }
                    if raw_type.is_none() {
                        extra.push(("charset".to_string(), "utf-8".to_string()));
                    }
                    Body::Leaf(text.into_bytes())
                }
                (None, Some(bid)) => match (self.read)(bid).map_err(BuildError::Method)? {
                    Some(bytes) => {
                        if let Some(cs) = charset {
                            extra.push(("charset".to_string(), cs.to_string()));
                        }
                        Body::Leaf(bytes)
                    }
                    None => {
                        self.missing.push(bid.to_string());
                        Body::Leaf(Vec::new())
                    }
                },
            }
        };
        let mut out: Vec<Field> = Vec::new();
        if raw_type.is_none() {
            let mut v = ctype.clone();
            for (k, val) in &extra {
                v.push_str(&format!("; {k}={}", param_value(val)));
            }
            if let Some(n) = name {
                v.push_str(&format!("; name={}", param_value(n)));
            }
            out.push(("Content-Type".into(), format!(" {v}")));
        }
        if !fields.has("content-disposition") {
            match (&disposition, name) {
                (Some(d), Some(n)) => out.push((
                    "Content-Disposition".into(),
                    format!(" {d}; {}", filename_param(n)),
                )),
                (Some(d), None) => out.push(("Content-Disposition".into(), format!(" {d}"))),
                (None, Some(n)) => out.push((
                    "Content-Disposition".into(),
                    format!(" attachment; {}", filename_param(n)),
                )),
                (None, None) => {}
            }
        }
        if let Some(c) = cid {
            let c = c.trim().trim_start_matches('<').trim_end_matches('>');
            if c.is_empty() || c.contains(['<', '>', ' ', '\r', '\n']) {
                return Err(invalid(prop, "bad cid"));
            }
            out.push(("Content-ID".into(), format!(" <{c}>")));
        }
        if let Some(l) = &language {
            out.push(("Content-Language".into(), format!(" {}", l.join(", "))));
        }
        if let Some(l) = location {
            out.push(("Content-Location".into(), format!(" {}", encode_text(l))));
        }
        out.extend(fields.fields);
        if let Body::Leaf(bytes) = &body {
            let (encoding, _) = transfer_encoding(&ctype, bytes);
            if let Some(e) = encoding {
                out.push(("Content-Transfer-Encoding".into(), format!(" {e}")));
            }
        }
        let body = match body {
            Body::Leaf(bytes) => Body::Leaf(encode_body(&ctype, bytes)),
            b => b,
        };
        Ok(Part { fields: out, body })
    }

    fn value(&mut self, part_id: &str) -> Result<String, BuildError> {
        let Some(v) = self.values.get(part_id) else {
            return Err(invalid(
                "bodyValues",
                format!("partId {part_id:?} is not in bodyValues"),
            ));
        };
        let v = v
            .as_object()
            .ok_or_else(|| invalid("bodyValues", "a body value is an object"))?;
        for flag in ["isTruncated", "isEncodingProblem"] {
            match v.get(flag) {
                None | Some(Value::Bool(false)) => {}
                _ => return Err(invalid("bodyValues", format!("{flag} must be false"))),
            }
        }
        let text = v
            .get("value")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("bodyValues", "a body value needs a value"))?;
        self.used_values.push(part_id.to_string());
        Ok(text.to_string())
    }
}

/// An optional string property of a body part.
fn string_prop<'a>(
    obj: &'a Map<String, Value>,
    prop: &str,
    name: &str,
) -> Result<Option<&'a str>, BuildError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(prop, format!("{name} is a string"))),
    }
}

/// A parameter value: a token as is, else a quoted string (non-ASCII is
/// kept as UTF-8, RFC 6532).
fn param_value(v: &str) -> String {
    let token = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?=".contains(c));
    if token {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// `filename=` (RFC 2231 `filename*=` for non-ASCII names).
fn filename_param(name: &str) -> String {
    if name.is_ascii() {
        return format!("filename={}", param_value(name));
    }
    let mut enc = String::from("utf-8''");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    format!("filename*={enc}")
}

fn lines_ok(bytes: &[u8]) -> bool {
    bytes.split(|&b| b == b'\n').all(|l| l.len() <= 998)
}

/// The Content-Transfer-Encoding for a leaf (`None`: 7bit, no field) and
/// whether its text is line-oriented.
fn transfer_encoding(ctype: &str, bytes: &[u8]) -> (Option<&'static str>, bool) {
    let textual = ctype.starts_with("text/") || ctype.starts_with("message/");
    let seven_bit = bytes.iter().all(|&b| b != 0 && b < 128) && lines_ok(bytes);
    if textual && seven_bit {
        return (None, true);
    }
    if ctype.starts_with("message/") {
        // RFC 2046: message/* parts are never base64 or quoted-printable.
        return (Some("8bit"), true);
    }
    if ctype.starts_with("text/") {
        return (Some("quoted-printable"), true);
    }
    (Some("base64"), false)
}

/// Line ends as CRLF.
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 40);
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' && (i == 0 || bytes[i - 1] != b'\r') {
            out.push(b'\r');
        }
        if b == b'\r' && bytes.get(i + 1) != Some(&b'\n') {
            out.extend_from_slice(b"\r\n");
            continue;
        }
        out.push(b);
    }
    out
}

fn encode_body(ctype: &str, bytes: Vec<u8>) -> Vec<u8> {
    match transfer_encoding(ctype, &bytes).0 {
        None | Some("8bit") => crlf(&bytes),
        Some("quoted-printable") => quoted_printable(&crlf(&bytes)),
        _ => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
            let mut out = Vec::with_capacity(b64.len() + b64.len() / 38);
            for line in b64.as_bytes().chunks(76) {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
            out
        }
    }
}

/// Quoted-printable (RFC 2045 section 6.7) of CRLF text, soft line breaks
/// before 76 characters.
fn quoted_printable(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() * 2);
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    for (n, line) in lines.iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut col = 0;
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == line.len();
            let literal =
                (b == b' ' || b == b'\t') && !last || (33..=126).contains(&b) && b != b'=';
            let piece: Vec<u8> = if literal {
                vec![b]
            } else {
                format!("={b:02X}").into_bytes()
            };
            if col + piece.len() > 75 {
                out.extend_from_slice(b"=\r\n");
                col = 0;
            }
            out.extend_from_slice(&piece);
            col += piece.len();
        }
        if n + 1 < lines.len() {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

static BOUNDARY_SEQ: AtomicU64 = AtomicU64::new(0);

/// A fresh unique token (boundaries, Message-IDs).
fn unique_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let seq = BOUNDARY_SEQ.fetch_add(1, Ordering::Relaxed);
    let seed = format!("{nanos}-{seq}-{}", std::process::id());
    BlobHash::of(seed.as_bytes()).to_hex()[..24].to_string()
}

fn write_part(out: &mut Vec<u8>, part: &Part) {
    match &part.body {
        Body::Leaf(bytes) => {
            write_fields(out, &part.fields);
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(bytes);
        }
        Body::Multipart(children) => {
            let rendered: Vec<Vec<u8>> = children
                .iter()
                .map(|c| {
                    let mut v = Vec::new();
                    write_part(&mut v, c);
                    v
                })
                .collect();
            let mut boundary = format!("=_{}", unique_token());
            while rendered
                .iter()
                .any(|r| r.windows(boundary.len()).any(|w| w == boundary.as_bytes()))
            {
                boundary = format!("=_{}", unique_token());
            }
            let mut fields = part.fields.clone();
            if let Some((_, v)) = fields
                .iter_mut()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            {
                v.push_str(&format!(";\r\n boundary=\"{boundary}\""));
            }
            write_fields(out, &fields);
            out.extend_from_slice(b"\r\n");
            // The CRLF before each delimiter belongs to the delimiter
            // (RFC 2046 section 5.1.1), not to the part before it.
            for r in &rendered {
                out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                out.extend_from_slice(r);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        }
    }
}

fn write_fields(out: &mut Vec<u8>, fields: &[Field]) {
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

fn multipart(subtype: &str, children: Vec<Part>) -> Part {
    Part {
        fields: vec![("Content-Type".into(), format!(" multipart/{subtype}"))],
        body: Body::Multipart(children),
    }
}

/// The message a create object describes. `read` fetches blob content;
/// `now` is the current time (the default Date).
pub fn build(
    obj: &Map<String, Value>,
    read: &mut BlobReader<'_>,
    now: i64,
) -> Result<Vec<u8>, BuildError> {
    let mut bad: Vec<String> = Vec::new();
    for k in obj.keys() {
        if !k.starts_with("header:") && !SETTABLE.contains(&k.as_str()) {
            bad.push(k.clone());
        }
    }
    if !bad.is_empty() {
        return Err(BuildError::Set(
            SetError::invalid_properties(bad)
                .with_description("these properties cannot be set on create"),
        ));
    }
    let mut fields = Fields::new();
    for &(prop, field, form) in CONVENIENCE {
        let Some(v) = obj.get(prop) else { continue };
        fields.claim(&field.to_ascii_lowercase(), prop)?;
        if let Some(encoded) = encode_form(field, v, form).map_err(|e| invalid(prop, e))? {
            fields.fields.push((field.to_string(), encoded));
        }
    }
    for (k, v) in obj {
        if k.starts_with("header:") {
            if k.to_ascii_lowercase().starts_with("header:content-") {
                return Err(invalid(k, "Content-* fields belong on body parts"));
            }
            fields.add_header_prop(k, v)?;
        }
    }
    if !fields.has("date") {
        fields
            .fields
            .push(("Date".into(), format!(" {}", dates::rfc5322_date(now, 0))));
    }
    if !fields.has("message-id") {
        let domain = obj
            .get("from")
            .and_then(Value::as_array)
            .and_then(|l| l.first())
            .and_then(|a| a.get("email"))
            .and_then(Value::as_str)
            .and_then(|e| e.rsplit_once('@'))
            .map(|(_, d)| d.trim())
            .filter(|d| {
                !d.is_empty()
                    && d.chars()
                        .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c))
            })
            .unwrap_or("tern.invalid")
            .to_string();
        fields.fields.push((
            "Message-ID".into(),
            format!(" <{}@{domain}>", unique_token()),
        ));
    }
    if !fields.has("mime-version") {
        fields.fields.push(("MIME-Version".into(), " 1.0".into()));
    }

    let empty = Map::new();
    let values = match obj.get("bodyValues") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(invalid("bodyValues", "bodyValues is an object")),
    };
    let mut pb = PartBuilder {
        values,
        read,
        missing: Vec::new(),
        used_values: Vec::new(),
    };
    let has = |k: &str| obj.get(k).is_some_and(|v| !v.is_null());
    let root = if has("bodyStructure") {
        for k in ["textBody", "htmlBody", "attachments"] {
            if has(k) {
                return Err(BuildError::Set(
                    SetError::invalid_properties(["bodyStructure", k])
                        .with_description("bodyStructure excludes textBody, htmlBody, attachments"),
                ));
            }
        }
        let root = pb.part(
            &obj["bodyStructure"],
            "bodyStructure",
            "text/plain",
            None,
            0,
        )?;
        // The root part must not repeat a field of the Email.
        for (n, _) in &root.fields {
            if fields.has(&n.to_ascii_lowercase()) {
                return Err(invalid("bodyStructure", format!("{n} is set on the Email")));
            }
        }
        root
    } else {
        let single =
            |pb: &mut PartBuilder<'_, '_>, k: &str, ty: &str| -> Result<Option<Part>, BuildError> {
                match obj.get(k) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Array(l)) if l.len() == 1 => {
                        if let Some(t) = l[0].get("type").and_then(Value::as_str)
                            && !t.eq_ignore_ascii_case(ty)
                        {
                            return Err(invalid(k, format!("{k} is one {ty} part")));
                        }
                        Ok(Some(pb.part(&l[0], k, ty, None, 0)?))
                    }
                    Some(_) => Err(invalid(k, format!("{k} is one {ty} part"))),
                }
            };
        let text = single(&mut pb, "textBody", "text/plain")?;
        let html = single(&mut pb, "htmlBody", "text/html")?;
        let mut inline = Vec::new();
        let mut attached = Vec::new();
        match obj.get("attachments") {
            None | Some(Value::Null) => {}
            Some(Value::Array(l)) => {
                for a in l {
                    let is_inline = a
                        .get("disposition")
                        .and_then(Value::as_str)
                        .is_some_and(|d| d.eq_ignore_ascii_case("inline"))
                        && a.get("cid").is_some_and(|c| !c.is_null());
                    let p = pb.part(
                        a,
                        "attachments",
                        "application/octet-stream",
                        Some("attachment"),
                        0,
                    )?;
                    if is_inline && html.is_some() {
                        inline.push(p);
                    } else {
                        attached.push(p);
                    }
                }
            }
            Some(_) => return Err(invalid("attachments", "attachments is an array")),
        }
        let html = html.map(|h| {
            if inline.is_empty() {
                h
            } else {
                let mut children = vec![h];
                children.append(&mut inline);
                multipart("related", children)
            }
        });
        let body = match (text, html) {
            (Some(t), Some(h)) => Some(multipart("alternative", vec![t, h])),
            (t, h) => t.or(h),
        };
        match (body, attached.len()) {
            (Some(b), 0) => b,
            (None, 0) => Part {
                fields: vec![("Content-Type".into(), " text/plain; charset=utf-8".into())],
                body: Body::Leaf(Vec::new()),
            },
            (None, 1) => attached.pop().expect("one"),
            (b, _) => {
                let mut children: Vec<Part> = b.into_iter().collect();
                children.append(&mut attached);
                multipart("mixed", children)
            }
        }
    };
    if !pb.missing.is_empty() {
        let mut m = pb.missing;
        m.sort();
        m.dedup();
        return Err(BuildError::BlobsNotFound(m));
    }
    let unused: BTreeMap<&String, ()> = values
        .keys()
        .filter(|k| !pb.used_values.contains(k))
        .map(|k| (k, ()))
        .collect();
    if let Some((k, _)) = unused.into_iter().next() {
        return Err(invalid(
            "bodyValues",
            format!("bodyValues has {k:?}, which no part uses"),
        ));
    }
    let mut out = Vec::new();
    write_fields(&mut out, &fields.fields);
    write_part(&mut out, &root);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_blobs(_: &str) -> Result<Option<Vec<u8>>, MethodError> {
        Ok(None)
    }

    fn build_str(v: Value) -> Result<String, BuildError> {
        let obj = v.as_object().unwrap().clone();
        build(&obj, &mut no_blobs, 1_531_184_591).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn rfc_8621_draft_example() {
        let m = build_str(json!({
            "mailboxIds": {"M1": true},
            "from": [{"name": "Joe Bloggs", "email": "joe@example.com"}],
            "subject": "World domination",
            "sentAt": "2018-07-10T11:03:11+10:00",
            "bodyStructure": {
                "type": "text/plain",
                "partId": "bd48",
                "header:Content-Language": "en"
            },
            "bodyValues": {"bd48": {"value": "I have the most brilliant plan.", "isTruncated": false}}
        }))
        .unwrap();
        assert!(m.contains("From: Joe Bloggs <joe@example.com>\r\n"), "{m}");
        assert!(m.contains("Subject: World domination\r\n"));
        assert!(m.contains("Date: Tue, 10 Jul 2018 11:03:11 +1000\r\n"));
        assert!(m.contains("Message-ID: <"));
        assert!(m.contains("@example.com>\r\n"));
        assert!(m.contains("Content-Type: text/plain; charset=utf-8\r\n"));
        // Raw form is written as given (no space was given).
        assert!(m.contains("Content-Language:en\r\n"));
        assert!(m.ends_with("\r\n\r\nI have the most brilliant plan."));
    }

    #[test]
    fn encodes_non_ascii_and_folds() {
        let m = build_str(json!({
            "from": [{"name": "Zoë, \"Z\"", "email": "z@example.com"}],
            "to": (0..8).map(|i| json!({"name": "Person Number", "email": format!("p{i}@example.com")})).collect::<Vec<_>>(),
            "subject": "Crème brûlée",
            "textBody": [{"partId": "t"}],
            "bodyValues": {"t": {"value": "ça va\nline 2"}}
        }))
        .unwrap();
        assert!(
            m.contains("Subject: =?UTF-8?B?Q3LDqG1lIGJyw7tsw6ll?=\r\n"),
            "{m}"
        );
        assert!(m.contains("From: =?UTF-8?B?"));
        assert!(m.lines().all(|l| l.len() <= 78), "{m}");
        assert!(m.contains("Content-Transfer-Encoding: quoted-printable\r\n"));
        assert!(m.contains("=C3=A7a va\r\nline 2"));
        let parsed = tern_store::parse::parse_message(m.as_bytes()).unwrap();
        assert_eq!(parsed.envelope.subject.as_deref(), Some("Crème brûlée"));
        assert_eq!(parsed.envelope.from[0].name.as_deref(), Some("Zoë, \"Z\""));
        assert_eq!(parsed.envelope.to.len(), 8);
    }

    #[test]
    fn rejects_invalid_creates() {
        let kind = |r: Result<String, BuildError>| match r {
            Err(BuildError::Set(e)) => (e.kind, e.properties),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            kind(build_str(json!({"id": "E1", "size": 3}))),
            ("invalidProperties", vec!["id".into(), "size".into()])
        );
        assert_eq!(
            kind(build_str(
                json!({"from": [], "header:From:asAddresses": []})
            ))
            .0,
            "invalidProperties"
        );
        assert_eq!(
            kind(build_str(json!({"header:Content-Type": " text/plain"}))).0,
            "invalidProperties"
        );
        assert_eq!(
            kind(build_str(
                json!({"header:From:asDate": "2018-07-10T11:03:11Z"})
            ))
            .0,
            "invalidProperties"
        );
        assert_eq!(
            kind(build_str(json!({
                "bodyStructure": {"partId": "a"}, "textBody": [{"partId": "a"}],
                "bodyValues": {"a": {"value": "x"}}
            })))
            .1,
            vec!["bodyStructure".to_string(), "textBody".to_string()]
        );
        assert_eq!(
            kind(build_str(json!({"textBody": [{"partId": "a", "type": "text/html"}], "bodyValues": {"a": {"value": "x"}}}))).0,
            "invalidProperties"
        );
        assert_eq!(
            kind(build_str(json!({"bodyStructure": {"partId": "a"}, "bodyValues": {"a": {"value": "x", "isTruncated": true}}}))).0,
            "invalidProperties"
        );
        assert_eq!(
            kind(build_str(json!({"bodyStructure": {"partId": "a", "charset": "utf-8"}, "bodyValues": {"a": {"value": "x"}}}))).0,
            "invalidProperties"
        );
        assert_eq!(
            kind(build_str(json!({"bodyStructure": {"partId": "zz"}}))).0,
            "invalidProperties"
        );
        assert_eq!(
            kind(build_str(json!({"bodyStructure": {"partId": "a", "header:Content-Transfer-Encoding": " base64"}, "bodyValues": {"a": {"value": "x"}}}))).0,
            "invalidProperties"
        );
        assert_eq!(
            build_str(json!({"attachments": [{"blobId": "Bnope"}]})),
            Err(BuildError::BlobsNotFound(vec!["Bnope".into()]))
        );
    }

    #[test]
    fn multipart_structure_round_trips() {
        let mut read = |id: &str| -> Result<Option<Vec<u8>>, MethodError> {
            Ok((id == "Bimg").then(|| vec![0u8, 1, 2, 255]))
        };
        let obj = json!({
            "subject": "s",
            "textBody": [{"partId": "t"}],
            "htmlBody": [{"partId": "h"}],
            "attachments": [
                {"blobId": "Bimg", "type": "image/png", "name": "a.png", "disposition": "inline", "cid": "img1"},
                {"blobId": "Bimg", "type": "application/octet-stream", "name": "résumé.bin"}
            ],
            "bodyValues": {"t": {"value": "plain"}, "h": {"value": "<p>html</p>"}}
        });
        let raw = build(obj.as_object().unwrap(), &mut read, 0).unwrap();
        let p = tern_store::parse::parse_message(&raw).unwrap();
        let types: Vec<&str> = p
            .detail
            .parts
            .iter()
            .map(|x| x.content_type.as_str())
            .collect();
        assert_eq!(
            types,
            [
                "multipart/mixed",
                "multipart/alternative",
                "text/plain",
                "multipart/related",
                "text/html",
                "image/png",
                "application/octet-stream"
            ],
            "{}",
            String::from_utf8_lossy(&raw)
        );
        assert_eq!(p.detail.parts[5].cid.as_deref(), Some("img1"));
        assert_eq!(p.detail.parts[6].name.as_deref(), Some("résumé.bin"));
        let png = crate::email::part_content(&raw, 5).unwrap();
        assert_eq!(png.bytes, vec![0u8, 1, 2, 255]);
        assert!(p.envelope.has_attachment);
    }
}
