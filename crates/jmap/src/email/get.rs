//! Email/get (RFC 8621 section 4.2) and Email/parse (section 4.9): the
//! Email object rendered from `EmailMeta` (list properties), and from
//! `EmailDetail` and the raw message only when a property needs them.

use std::collections::HashSet;

use serde_json::{Map, Value, json};
use tern_store::email::{self, EmailMeta, Listing};
use tern_store::parse::{EmailAddress, EmailDetail, Envelope};
use tern_store::{BlobHash, DataType, DocumentId, blob, changes};

use super::body::{self, BodyOptions, BodyProp};
use super::headers::{self, HeaderProp};
use super::{Fail, dates, read_blob_ref};
use crate::args;
use crate::blob::BlobRef;
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult};

/// A property of the Email object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prop {
    /// id
    Id,
    /// blobId
    BlobId,
    /// threadId
    ThreadId,
    /// mailboxIds
    MailboxIds,
    /// keywords
    Keywords,
    /// size
    Size,
    /// receivedAt
    ReceivedAt,
    /// messageId
    MessageId,
    /// inReplyTo
    InReplyTo,
    /// references
    References,
    /// sender
    Sender,
    /// from
    From,
    /// to
    To,
    /// cc
    Cc,
    /// bcc
    Bcc,
    /// replyTo
    ReplyTo,
    /// subject
    Subject,
    /// sentAt
    SentAt,
    /// hasAttachment
    HasAttachment,
    /// preview
    Preview,
    /// headers
    Headers,
    /// bodyStructure
    BodyStructure,
    /// bodyValues
    BodyValues,
    /// textBody
    TextBody,
    /// htmlBody
    HtmlBody,
    /// attachments
    Attachments,
    /// `header:...`
    Header(HeaderProp),
}

/// Email/get's default `properties` (RFC 8621 section 4.2).
pub const DEFAULT_PROPERTIES: &[&str] = &[
    "id",
    "blobId",
    "threadId",
    "mailboxIds",
    "keywords",
    "size",
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
    "hasAttachment",
    "preview",
    "bodyValues",
    "textBody",
    "htmlBody",
    "attachments",
];

/// Email/parse's default `properties` (RFC 8621 section 4.9).
pub const PARSE_DEFAULT_PROPERTIES: &[&str] = &[
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
    "hasAttachment",
    "preview",
    "bodyValues",
    "textBody",
    "htmlBody",
    "attachments",
];

impl Prop {
    /// Parses a property name; `None` when it is not an Email property.
    pub fn parse(s: &str) -> Option<Result<Prop, String>> {
        Some(Ok(match s {
            "id" => Prop::Id,
            "blobId" => Prop::BlobId,
            "threadId" => Prop::ThreadId,
            "mailboxIds" => Prop::MailboxIds,
            "keywords" => Prop::Keywords,
            "size" => Prop::Size,
            "receivedAt" => Prop::ReceivedAt,
            "messageId" => Prop::MessageId,
            "inReplyTo" => Prop::InReplyTo,
            "references" => Prop::References,
            "sender" => Prop::Sender,
            "from" => Prop::From,
            "to" => Prop::To,
            "cc" => Prop::Cc,
            "bcc" => Prop::Bcc,
            "replyTo" => Prop::ReplyTo,
            "subject" => Prop::Subject,
            "sentAt" => Prop::SentAt,
            "hasAttachment" => Prop::HasAttachment,
            "preview" => Prop::Preview,
            "headers" => Prop::Headers,
            "bodyStructure" => Prop::BodyStructure,
            "bodyValues" => Prop::BodyValues,
            "textBody" => Prop::TextBody,
            "htmlBody" => Prop::HtmlBody,
            "attachments" => Prop::Attachments,
            other => return headers::parse_prop(other).map(|r| r.map(Prop::Header)),
        }))
    }

    /// Whether the property needs `EmailDetail`.
    fn needs_detail(&self) -> bool {
        matches!(
            self,
            Prop::Headers
                | Prop::BodyStructure
                | Prop::BodyValues
                | Prop::TextBody
                | Prop::HtmlBody
                | Prop::Attachments
                | Prop::Header(_)
        )
    }
}

/// The properties and body options of a /get or /parse request.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Properties with their names as written.
    pub props: Vec<(String, Prop)>,
    /// Body part rendering.
    pub body: BodyOptions,
}

impl Selection {
    /// Parses properties, bodyProperties and the body value arguments.
    pub fn parse(args: &Arguments, defaults: &[&str]) -> Result<Selection, MethodError> {
        let names = args::opt_strings(args, "properties")?
            .unwrap_or_else(|| defaults.iter().map(|s| s.to_string()).collect());
        let mut seen = HashSet::new();
        let mut props = Vec::new();
        for n in names {
            if !seen.insert(n.clone()) {
                continue;
            }
            match Prop::parse(&n) {
                Some(Ok(p)) => props.push((n, p)),
                Some(Err(e)) => return Err(MethodError::invalid_arguments(e)),
                None => {
                    return Err(MethodError::invalid_arguments(format!(
                        "unknown property {n:?}"
                    )));
                }
            }
        }
        let body_names = args::opt_strings(args, "bodyProperties")?.unwrap_or_else(|| {
            body::DEFAULT_BODY_PROPERTIES
                .iter()
                .map(|s| s.to_string())
                .collect()
        });
        let mut seen = HashSet::new();
        let body_props = body_names
            .iter()
            .filter(|n| seen.insert(n.to_string()))
            .map(|n| BodyProp::parse(n))
            .collect::<Result<Vec<_>, _>>()?;
        let max_bytes = args::opt_uint(args, "maxBodyValueBytes")?.unwrap_or(0);
        Ok(Selection {
            props,
            body: BodyOptions {
                props: body_props,
                fetch_text: args::bool_arg(args, "fetchTextBodyValues", false)?,
                fetch_html: args::bool_arg(args, "fetchHTMLBodyValues", false)?,
                fetch_all: args::bool_arg(args, "fetchAllBodyValues", false)?,
                max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            },
        })
    }

    fn needs_detail(&self) -> bool {
        self.props.iter().any(|(_, p)| p.needs_detail())
    }

    fn needs_raw(&self) -> bool {
        self.body.fetches_values() && self.props.iter().any(|(_, p)| *p == Prop::BodyValues)
    }
}

/// What one Email is rendered from.
#[derive(Debug)]
pub struct Source<'a> {
    /// The stored email (`None` for a parsed blob).
    pub stored: Option<(DocumentId, &'a EmailMeta)>,
    /// Header-derived properties.
    pub envelope: &'a Envelope,
    /// The blobId.
    pub blob_id: String,
    /// The hash part blobIds are made of.
    pub blob: BlobHash,
    /// Size of the raw message.
    pub size: u64,
    /// Headers and body structure, when a property needs them.
    pub detail: Option<&'a EmailDetail>,
    /// The raw message, when bodyValues need it.
    pub raw: Option<&'a [u8]>,
}

fn addresses(list: &[EmailAddress]) -> Value {
    if list.is_empty() {
        return Value::Null;
    }
    // Display names are unfolded and trimmed (RFC 8621 section 4.1.2.3).
    Value::Array(
        list.iter()
            .map(|a| {
                let name = a.name.as_deref().map(str::trim).filter(|n| !n.is_empty());
                json!({ "name": name, "email": a.email })
            })
            .collect(),
    )
}

fn id_list(list: &[String]) -> Value {
    if list.is_empty() {
        Value::Null
    } else {
        json!(list)
    }
}

/// Renders the selected properties of one Email.
pub fn render(src: &Source<'_>, sel: &Selection) -> Value {
    let mut m = Map::new();
    let env = src.envelope;
    let meta = src.stored.map(|(_, m)| m);
    let empty = EmailDetail::default();
    let detail = src.detail.unwrap_or(&empty);
    for (name, p) in &sel.props {
        let v = match p {
            Prop::Id => json!(src.stored.map(|(i, _)| id::encode(Kind::Email, i))),
            Prop::BlobId => json!(src.blob_id),
            Prop::ThreadId => json!(meta.map(|m| id::encode(Kind::Thread, m.thread_id))),
            Prop::MailboxIds => match meta {
                Some(m) => Value::Object(
                    m.mailbox_ids
                        .iter()
                        .map(|&b| (id::encode(Kind::Mailbox, b), Value::Bool(true)))
                        .collect(),
                ),
                None => Value::Null,
            },
            Prop::Keywords => match meta {
                Some(m) => Value::Object(
                    m.keywords
                        .iter()
                        .map(|k| (k.clone(), Value::Bool(true)))
                        .collect(),
                ),
                None => Value::Null,
            },
            Prop::Size => json!(src.size),
            Prop::ReceivedAt => json!(meta.map(|m| dates::utc_date(m.received_at))),
            Prop::MessageId => id_list(&env.message_id),
            Prop::InReplyTo => id_list(&env.in_reply_to),
            Prop::References => id_list(&env.references),
            Prop::Sender => addresses(&env.sender),
            Prop::From => addresses(&env.from),
            Prop::To => addresses(&env.to),
            Prop::Cc => addresses(&env.cc),
            Prop::Bcc => addresses(&env.bcc),
            Prop::ReplyTo => addresses(&env.reply_to),
            Prop::Subject => json!(env.subject),
            Prop::SentAt => json!(
                env.sent_at
                    .map(|d| dates::local_date(d.unix, d.offset_minutes))
            ),
            Prop::HasAttachment => json!(env.has_attachment),
            Prop::Preview => json!(env.preview),
            Prop::Headers => headers::all_headers(&detail.headers),
            Prop::BodyStructure => {
                if detail.parts.is_empty() {
                    Value::Null
                } else {
                    body::render_part(detail, 0, &src.blob, &sel.body, true)
                }
            }
            Prop::BodyValues => match src.raw {
                Some(raw) => body::render_values(
                    raw,
                    detail,
                    &body::value_parts(detail, &sel.body),
                    sel.body.max_bytes,
                ),
                None => json!({}),
            },
            Prop::TextBody => body::render_list(detail, &detail.text_body, &src.blob, &sel.body),
            Prop::HtmlBody => body::render_list(detail, &detail.html_body, &src.blob, &sel.body),
            Prop::Attachments => {
                body::render_list(detail, &detail.attachments, &src.blob, &sel.body)
            }
            Prop::Header(h) => headers::value(&detail.headers, h),
        };
        m.insert(name.clone(), v);
    }
    Value::Object(m)
}

/// Email/get.
pub fn get(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    args::allow_only(
        &args,
        &[
            "accountId",
            "ids",
            "properties",
            "bodyProperties",
            "fetchTextBodyValues",
            "fetchHTMLBodyValues",
            "fetchAllBodyValues",
            "maxBodyValueBytes",
        ],
    )?;
    let account = ctx.account(&args)?;
    let ids = args::opt_strings(&args, "ids")?.map(|ids| {
        let mut seen = HashSet::new();
        ids.iter()
            .map(|i| args::resolve_ref(ctx, i))
            .filter(|i| seen.insert(i.clone()))
            .collect::<Vec<_>>()
    });
    if ids
        .as_ref()
        .is_some_and(|ids| ids.len() > ctx.limits.max_objects_in_get)
    {
        return Err(MethodError::RequestTooLarge);
    }
    let mut sel = Selection::parse(&args, DEFAULT_PROPERTIES)?;
    if !sel.props.iter().any(|(_, p)| *p == Prop::Id) {
        sel.props.insert(0, ("id".into(), Prop::Id));
    }
    let max = ctx.limits.max_objects_in_get;
    let (need_detail, need_raw) = (sel.needs_detail(), sel.needs_raw());
    let out = ctx.store.kv().read(|tx| -> Result<Arguments, Fail> {
        let state = changes::state(tx, account, DataType::Email)?;
        let wanted: Vec<(String, Option<DocumentId>)> = match &ids {
            Some(ids) => ids
                .iter()
                .map(|s| (s.clone(), id::decode(Kind::Email, s)))
                .collect(),
            None => {
                let all = email::list_by_date(tx, account, Listing::All, true, None, max + 1)?;
                if all.len() > max {
                    return Err(MethodError::RequestTooLarge.into());
                }
                all.into_iter()
                    .map(|(_, i)| (id::encode(Kind::Email, i), Some(i)))
                    .collect()
            }
        };
        let mut list = Vec::new();
        let mut not_found = Vec::new();
        for (name, doc) in wanted {
            let meta = match doc {
                Some(d) => email::get(tx, account, d)?,
                None => None,
            };
            let (Some(doc), Some(meta)) = (doc, meta) else {
                not_found.push(Value::String(name));
                continue;
            };
            let detail = if need_detail {
                email::detail(tx, account, doc)?
            } else {
                None
            };
            let raw = if need_raw {
                blob::read(tx, &meta.blob)?
            } else {
                None
            };
            list.push(render(
                &Source {
                    stored: Some((doc, &meta)),
                    envelope: &meta.envelope,
                    blob_id: id::blob_id(&meta.blob),
                    blob: meta.blob,
                    size: meta.size,
                    detail: detail.as_ref(),
                    raw: raw.as_deref(),
                },
                &sel,
            ));
        }
        let mut out = Map::new();
        out.insert("accountId".into(), json!(id::account_id(account)));
        out.insert("state".into(), json!(id::state(state)));
        out.insert("list".into(), Value::Array(list));
        out.insert("notFound".into(), Value::Array(not_found));
        Ok(out)
    })?;
    Ok(out)
}

/// Email/parse.
pub fn parse(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    args::allow_only(
        &args,
        &[
            "accountId",
            "blobIds",
            "properties",
            "bodyProperties",
            "fetchTextBodyValues",
            "fetchHTMLBodyValues",
            "fetchAllBodyValues",
            "maxBodyValueBytes",
        ],
    )?;
    let account = ctx.account(&args)?;
    let blob_ids = args::opt_strings(&args, "blobIds")?
        .ok_or_else(|| MethodError::invalid_arguments("blobIds is required"))?;
    if blob_ids.len() > ctx.limits.max_objects_in_get {
        return Err(MethodError::RequestTooLarge);
    }
    let sel = Selection::parse(&args, PARSE_DEFAULT_PROPERTIES)?;
    let mut parsed = Map::new();
    let mut not_parsable = Vec::new();
    let mut not_found = Vec::new();
    let mut seen = HashSet::new();
    for blob_id in blob_ids {
        if !seen.insert(blob_id.clone()) {
            continue;
        }
        let Some(r) = BlobRef::parse(&blob_id) else {
            not_found.push(blob_id);
            continue;
        };
        let Some(raw) = read_blob_ref(ctx.store, account, &r)? else {
            not_found.push(blob_id);
            continue;
        };
        let Ok(message) = tern_store::parse::parse_message(&raw) else {
            not_parsable.push(blob_id);
            continue;
        };
        let value = render(
            &Source {
                stored: None,
                envelope: &message.envelope,
                blob_id: blob_id.clone(),
                blob: BlobHash::of(&raw),
                size: raw.len() as u64,
                detail: Some(&message.detail),
                raw: Some(&raw),
            },
            &sel,
        );
        parsed.insert(blob_id, value);
    }
    let or_null = |v: Vec<String>| if v.is_empty() { Value::Null } else { json!(v) };
    let mut out = Map::new();
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert(
        "parsed".into(),
        if parsed.is_empty() {
            Value::Null
        } else {
            Value::Object(parsed)
        },
    );
    out.insert("notParsable".into(), or_null(not_parsable));
    out.insert("notFound".into(), or_null(not_found));
    Ok(out)
}
