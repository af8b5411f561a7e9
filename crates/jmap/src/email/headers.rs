//! Header field properties (RFC 8621 sections 4.1.2 and 4.1.3):
//! `header:{name}[:as{Form}][:all]`, and the parsed forms of a raw header
//! field value.

use mail_parser::parsers::MessageStream;
use mail_parser::{Address, HeaderValue};
use serde_json::{Map, Value, json};
use tern_store::parse::RawHeader;

use super::dates;

/// A parsed form of a header field (RFC 8621 section 4.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// The raw octets after the colon.
    Raw,
    /// Unfolded, RFC 2047 decoded text.
    Text,
    /// `EmailAddress[]`.
    Addresses,
    /// `EmailAddressGroup[]`.
    GroupedAddresses,
    /// `String[]|null` of msg-ids.
    MessageIds,
    /// `Date|null`.
    Date,
    /// `String[]|null` of URLs (RFC 2369).
    Urls,
}

impl Form {
    fn parse(s: &str) -> Option<Form> {
        Some(match s {
            "asRaw" => Form::Raw,
            "asText" => Form::Text,
            "asAddresses" => Form::Addresses,
            "asGroupedAddresses" => Form::GroupedAddresses,
            "asMessageIds" => Form::MessageIds,
            "asDate" => Form::Date,
            "asURLs" => Form::Urls,
            _ => return None,
        })
    }
}

/// A `header:` property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderProp {
    /// The field name as the client wrote it.
    pub name: String,
    /// The field name, lowercase (for matching).
    pub lower: String,
    /// The form asked for.
    pub form: Form,
    /// Whether every instance is asked for (`:all`).
    pub all: bool,
}

/// Parses a property name: `None` when it is not a `header:` property,
/// `Some(Err(reason))` when it is one that is malformed or asks for a form
/// the field may not be parsed in.
pub fn parse_prop(prop: &str) -> Option<Result<HeaderProp, String>> {
    let rest = prop.strip_prefix("header:")?;
    let mut parts = rest.split(':');
    let name = parts.next().unwrap_or_default();
    if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b)) {
        return Some(Err(format!("bad header field name in {prop:?}")));
    }
    let mut form = Form::Raw;
    let mut all = false;
    let mut seen_form = false;
    for p in parts {
        if p == "all" && !all {
            all = true;
        } else if !seen_form && !all {
            let Some(f) = Form::parse(p) else {
                return Some(Err(format!("unknown header form in {prop:?}")));
            };
            form = f;
            seen_form = true;
        } else {
            return Some(Err(format!("malformed header property {prop:?}")));
        }
    }
    let lower = name.to_ascii_lowercase();
    if !form_allowed(&lower, form) {
        return Some(Err(format!(
            "{prop:?}: the field may not be parsed in that form"
        )));
    }
    Some(Ok(HeaderProp {
        name: name.to_string(),
        lower,
        form,
        all,
    }))
}

/// Header fields defined by RFC 5322 and RFC 2369, lowercase.
const DEFINED: &[&str] = &[
    "date",
    "from",
    "sender",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "message-id",
    "in-reply-to",
    "references",
    "subject",
    "comments",
    "keywords",
    "resent-date",
    "resent-from",
    "resent-sender",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "resent-message-id",
    "return-path",
    "received",
    "list-help",
    "list-unsubscribe",
    "list-subscribe",
    "list-post",
    "list-owner",
    "list-archive",
];

/// Whether field `lower` may be fetched or set in `form`: any field in
/// Raw form, a field RFC 5322 and RFC 2369 do not define in any form, the
/// others only in the forms RFC 8621 lists for them.
pub fn form_allowed(lower: &str, form: Form) -> bool {
    if form == Form::Raw || !DEFINED.contains(&lower) {
        return true;
    }
    let allowed: &[&str] = match form {
        Form::Raw => return true,
        Form::Text => &["subject", "comments", "keywords", "list-id"],
        Form::Addresses | Form::GroupedAddresses => &[
            "from",
            "sender",
            "reply-to",
            "to",
            "cc",
            "bcc",
            "resent-from",
            "resent-sender",
            "resent-reply-to",
            "resent-to",
            "resent-cc",
            "resent-bcc",
        ],
        Form::MessageIds => &[
            "message-id",
            "in-reply-to",
            "references",
            "resent-message-id",
        ],
        Form::Date => &["date", "resent-date"],
        Form::Urls => &[
            "list-help",
            "list-unsubscribe",
            "list-subscribe",
            "list-post",
            "list-owner",
            "list-archive",
        ],
    };
    allowed.contains(&lower)
}

/// The value of a `header:` property over a list of header fields.
pub fn value(headers: &[RawHeader], prop: &HeaderProp) -> Value {
    let mut found = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(&prop.lower));
    if prop.all {
        Value::Array(found.map(|h| parse_form(&h.value, prop.form)).collect())
    } else {
        found
            .next_back()
            .map_or(Value::Null, |h| parse_form(&h.value, prop.form))
    }
}

/// A raw header value parsed in `form`.
pub fn parse_form(raw: &str, form: Form) -> Value {
    match form {
        Form::Raw => Value::String(raw.replace('\0', "")),
        Form::Text => Value::String(text(raw)),
        Form::Addresses => Value::Array(
            grouped_addresses(raw)
                .into_iter()
                .flat_map(|(_, list)| list)
                .map(|(name, email)| address_json(name, email))
                .collect(),
        ),
        Form::GroupedAddresses => Value::Array(
            grouped_addresses(raw)
                .into_iter()
                .map(|(name, list)| {
                    json!({
                        "name": name,
                        "addresses": list
                            .into_iter()
                            .map(|(n, e)| address_json(n, e))
                            .collect::<Vec<_>>(),
                    })
                })
                .collect(),
        ),
        Form::MessageIds => match message_ids(raw) {
            Some(ids) => json!(ids),
            None => Value::Null,
        },
        Form::Date => match date(raw) {
            Some((unix, offset)) => Value::String(dates::local_date(unix, offset)),
            None => Value::Null,
        },
        Form::Urls => match urls(raw) {
            Some(u) => json!(u),
            None => Value::Null,
        },
    }
}

fn stream_input(raw: &str) -> Vec<u8> {
    let mut bytes = raw.as_bytes().to_vec();
    bytes.retain(|&b| b != 0);
    bytes.extend_from_slice(b"\r\n");
    bytes
}

/// The Text form: unfolded, leading spaces removed, encoded words decoded.
pub fn text(raw: &str) -> String {
    let input = stream_input(raw);
    let decoded = match MessageStream::new(&input).parse_unstructured() {
        HeaderValue::Text(t) => t.into_owned(),
        HeaderValue::TextList(l) => l.join(" "),
        _ => String::new(),
    };
    decoded
        .chars()
        .filter(|c| !c.is_control() || *c == '\t')
        .collect::<String>()
        .trim_start_matches(' ')
        .to_string()
}

/// An address: (display name, addr-spec).
pub type Addr = (Option<String>, String);

/// The address-list of a raw value, as (group name, members) runs;
/// addresses outside any group form runs with no name.
pub fn grouped_addresses(raw: &str) -> Vec<(Option<String>, Vec<Addr>)> {
    let input = stream_input(raw);
    let conv = |a: &mail_parser::Addr<'_>| -> Addr {
        (
            a.name
                .as_ref()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty()),
            a.address
                .as_ref()
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
        )
    };
    match MessageStream::new(&input).parse_address() {
        HeaderValue::Address(Address::List(list)) => {
            vec![(None, list.iter().map(conv).collect())]
        }
        HeaderValue::Address(Address::Group(groups)) => {
            // Consecutive addresses outside groups share one run.
            let mut out: Vec<(Option<String>, Vec<Addr>)> = Vec::new();
            for g in &groups {
                let name = g.name.as_ref().map(|n| n.trim().to_string());
                let members: Vec<Addr> = g.addresses.iter().map(conv).collect();
                match (&name, out.last_mut()) {
                    (None, Some((None, prev))) => prev.extend(members),
                    _ => out.push((name, members)),
                }
            }
            out
        }
        _ => Vec::new(),
    }
}

fn address_json(name: Option<String>, email: String) -> Value {
    json!({ "name": name, "email": email })
}

/// The msg-ids of a raw value, without angle brackets; `None` when it
/// holds none.
pub fn message_ids(raw: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while let Some(start) = rest.find('<') {
        let after = &rest[start + 1..];
        let end = after.find('>')?;
        let id: String = after[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if id.is_empty() {
            return None;
        }
        out.push(id);
        rest = &after[end + 1..];
    }
    if out.is_empty() {
        // A bare id without brackets (common in broken messages).
        let bare = raw.trim();
        if !bare.is_empty() && !bare.contains(char::is_whitespace) && bare.contains('@') {
            return Some(vec![bare.to_string()]);
        }
        return None;
    }
    Some(out)
}

/// The date-time of a raw value: (unix, offset minutes).
pub fn date(raw: &str) -> Option<(i64, i16)> {
    let input = stream_input(raw);
    match MessageStream::new(&input).parse_date() {
        HeaderValue::DateTime(d) if d.is_valid() => {
            let m = d.tz_hour as i16 * 60 + d.tz_minute as i16;
            Some((d.to_timestamp(), if d.tz_before_gmt { -m } else { m }))
        }
        _ => None,
    }
}

/// The URLs of an RFC 2369 list header value: the contents of each
/// `<...>`; `None` when there are none.
pub fn urls(raw: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (i, c) in raw.char_indices() {
        match c {
            '<' if depth == 0 && start.is_none() => start = Some(i + 1),
            '>' => {
                if let Some(s) = start.take() {
                    out.push(raw[s..i].chars().filter(|c| !c.is_whitespace()).collect());
                }
            }
            // Comments are skipped.
            '(' if start.is_none() => depth += 1,
            ')' if start.is_none() && depth > 0 => depth -= 1,
            _ => {}
        }
    }
    if out.is_empty() { None } else { Some(out) }
}

/// The `headers` property: every field with its raw value.
pub fn all_headers(headers: &[RawHeader]) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|h| {
                let mut m = Map::new();
                m.insert("name".into(), Value::String(h.name.clone()));
                m.insert("value".into(), Value::String(h.value.replace('\0', "")));
                Value::Object(m)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prop(s: &str) -> Result<HeaderProp, String> {
        parse_prop(s).expect("a header property")
    }

    #[test]
    fn property_names() {
        assert_eq!(parse_prop("subject"), None);
        let p = prop("header:Resent-To:asAddresses:all").unwrap();
        assert_eq!(
            (p.name.as_str(), p.form, p.all),
            ("Resent-To", Form::Addresses, true)
        );
        let p = prop("header:X-Custom").unwrap();
        assert_eq!(
            (p.lower.as_str(), p.form, p.all),
            ("x-custom", Form::Raw, false)
        );
        assert!(
            prop("header:X-Custom:asDate").is_ok(),
            "undefined fields take any form"
        );
        assert!(prop("header:From:asDate").is_err());
        assert!(prop("header:Subject:asAddresses").is_err());
        assert!(prop("header:List-Post:asURLs").is_ok());
        assert!(prop("header:From:all:asAddresses").is_err(), "suffix order");
        assert!(prop("header:From:asFoo").is_err());
        assert!(prop("header::asRaw").is_err());
        assert!(prop("header:From:all:all").is_err());
    }

    #[test]
    fn rfc_8621_address_example() {
        let raw = " \"  James Smythe\" <james@example.com>, Friends:\r\n  jane@example.com, =?UTF-8?Q?John_Sm=C3=AEth?=\r\n  <john@example.com>;";
        assert_eq!(
            parse_form(raw, Form::Addresses),
            json!([
                { "name": "James Smythe", "email": "james@example.com" },
                { "name": null, "email": "jane@example.com" },
                { "name": "John Smîth", "email": "john@example.com" }
            ])
        );
        assert_eq!(
            parse_form(raw, Form::GroupedAddresses),
            json!([
                { "name": null, "addresses": [
                    { "name": "James Smythe", "email": "james@example.com" }
                ]},
                { "name": "Friends", "addresses": [
                    { "name": null, "email": "jane@example.com" },
                    { "name": "John Smîth", "email": "john@example.com" }
                ]}
            ])
        );
    }

    #[test]
    fn forms() {
        assert_eq!(
            parse_form(" =?UTF-8?Q?caf=C3=A9?= ok\r\n  folded", Form::Text),
            json!("café ok folded")
        );
        assert_eq!(parse_form(" Hello\0", Form::Raw), json!(" Hello"));
        assert_eq!(
            parse_form(" <a@b> (comment)\r\n <c@d>", Form::MessageIds),
            json!(["a@b", "c@d"])
        );
        assert_eq!(parse_form(" not an id", Form::MessageIds), Value::Null);
        assert_eq!(
            parse_form(" Tue, 1 Jul 2003 10:52:37 +0200", Form::Date),
            json!("2003-07-01T10:52:37+02:00")
        );
        assert_eq!(parse_form(" yesterday", Form::Date), Value::Null);
        assert_eq!(
            parse_form(
                " <mailto:list@host.com?subject=help> (List Instructions),\r\n <https://x.example/h>",
                Form::Urls
            ),
            json!(["mailto:list@host.com?subject=help", "https://x.example/h"])
        );
        assert_eq!(parse_form(" none", Form::Urls), Value::Null);
        assert_eq!(parse_form(" ", Form::Addresses), json!([]));
    }

    #[test]
    fn last_instance_and_all() {
        let headers = vec![
            RawHeader {
                name: "X-A".into(),
                value: " one".into(),
            },
            RawHeader {
                name: "x-a".into(),
                value: " two".into(),
            },
        ];
        assert_eq!(value(&headers, &prop("header:X-A").unwrap()), json!(" two"));
        assert_eq!(
            value(&headers, &prop("header:x-A:asText:all").unwrap()),
            json!(["one", "two"])
        );
        assert_eq!(value(&headers, &prop("header:X-B").unwrap()), Value::Null);
        assert_eq!(value(&headers, &prop("header:X-B:all").unwrap()), json!([]));
    }
}
