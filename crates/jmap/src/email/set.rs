//! Email/set (RFC 8621 section 4.6) and Email/import (section 4.8).
//!
//! Messages are built (drafts) or read (imports) and parsed before the
//! writing transaction; a message over the inline limit has its blob
//! stored in its own transactions first. Then one transaction applies
//! every create, update and destroy through one `Writer`: one change, so
//! `newState` follows `oldState` by one step.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tern_store::email::{self, EmailMeta};
use tern_store::parse::{ParsedMessage, parse_message};
use tern_store::{
    AccountId, BlobHash, DataType, DocumentId, Error, INLINE_BLOB_LIMIT, Writer, blob, changes,
    mailbox, now,
};

use super::build::{self, BuildError};
use super::get::{self, Prop, Selection, Source};
use super::{Fail, MAX_KEYWORDS_PER_EMAIL, MAX_MAILBOXES_PER_EMAIL, dates, headers, read_blob_ref};
use crate::args::{self, SetResponse};
use crate::blob::BlobRef;
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult, SetError};

/// Whether `k` is a valid keyword (RFC 8621 section 4.1.1): 1-255
/// characters of %x21-%x7e except `( ) { ] % * " \`.
fn valid_keyword(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 255
        && k.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !b"(){]%*\"\\".contains(&b))
}

/// Parses a `keywords` value: `String[Boolean]` with every value true.
pub(super) fn parse_keywords(v: &Value) -> Result<Vec<String>, SetError> {
    let bad = || SetError::invalid_properties(["keywords"]);
    let Value::Object(m) = v else {
        return Err(bad().with_description("keywords is an object"));
    };
    let mut out = Vec::with_capacity(m.len());
    for (k, val) in m {
        if *val != Value::Bool(true) || !valid_keyword(k) {
            return Err(bad().with_description(format!("bad keyword {k:?}")));
        }
        out.push(k.to_lowercase());
    }
    let out = email::normalize_keywords(&out);
    if out.len() > MAX_KEYWORDS_PER_EMAIL {
        return Err(SetError::new("tooManyKeywords"));
    }
    Ok(out)
}

/// Parses a `mailboxIds` value (`Id[Boolean]`, creation references
/// resolved) and checks that each mailbox exists.
fn parse_mailboxes(
    tx: &mut tern_store::kv::Transaction<'_>,
    account: AccountId,
    created: &HashMap<String, String>,
    v: &Value,
) -> Result<Result<Vec<DocumentId>, SetError>, Fail> {
    let bad = |d: String| SetError::invalid_properties(["mailboxIds"]).with_description(d);
    let Value::Object(m) = v else {
        return Ok(Err(bad("mailboxIds is an object".into())));
    };
    let mut out = Vec::with_capacity(m.len());
    for (k, val) in m {
        if *val != Value::Bool(true) {
            return Ok(Err(bad(format!("mailboxIds/{k} must be true"))));
        }
        let resolved = resolve(created, k);
        let Some(id) = id::decode(Kind::Mailbox, &resolved) else {
            return Ok(Err(bad(format!("no mailbox {k}"))));
        };
        if mailbox::get(tx, account, id)?.is_none() {
            return Ok(Err(bad(format!("no mailbox {k}"))));
        }
        out.push(id);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Ok(Err(bad("an email is in at least one mailbox".into())));
    }
    if out.len() > MAX_MAILBOXES_PER_EMAIL {
        return Ok(Err(SetError::new("tooManyMailboxes")));
    }
    Ok(Ok(out))
}

fn resolve(created: &HashMap<String, String>, s: &str) -> String {
    match s.strip_prefix('#') {
        Some(c) => created.get(c).cloned().unwrap_or_else(|| s.to_string()),
        None => s.to_string(),
    }
}

pub(super) fn parse_received_at(v: Option<&Value>) -> Result<Option<i64>, SetError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => dates::parse_rfc3339(s)
            .map(|d| Some(d.unix))
            .ok_or_else(|| SetError::invalid_properties(["receivedAt"])),
        Some(_) => Err(SetError::invalid_properties(["receivedAt"])),
    }
}

/// A message ready to be stored.
#[derive(Debug)]
pub(super) struct Prepared {
    pub(super) creation_id: String,
    pub(super) mailbox_ids: Value,
    pub(super) keywords: Vec<String>,
    pub(super) received_at: i64,
    /// The message; emptied once its blob is stored (`stored`), so that a
    /// call creating many large messages holds one at a time.
    pub(super) raw: Vec<u8>,
    /// The message's size.
    pub(super) size: u64,
    pub(super) parsed: ParsedMessage,
    /// The blob, when it was stored ahead of the transaction.
    pub(super) stored: Option<BlobHash>,
}

impl Prepared {
    /// Stores a large message's blob in its own transactions, and lets go
    /// of the bytes of a message whose blob is stored.
    fn store_if_large(&mut self, ctx: &Ctx<'_>) -> Result<(), MethodError> {
        if self.stored.is_none() && self.raw.len() > INLINE_BLOB_LIMIT {
            self.stored = Some(blob::put(ctx.store.kv(), &self.raw)?);
        }
        if self.stored.is_some() {
            self.raw = Vec::new();
        }
        Ok(())
    }
}

/// The outcome of storing prepared messages.
pub(super) struct Stored {
    pub(super) created: Map<String, Value>,
    pub(super) not_created: Map<String, Value>,
    pub(super) ids: Vec<(String, String)>,
}

/// Inserts prepared messages through `w`.
pub(super) fn insert_all(
    w: &mut Writer<'_, '_>,
    created_ids: &HashMap<String, String>,
    prepared: &[Prepared],
) -> Result<Stored, Fail> {
    let account = w.account;
    let mut out = Stored {
        created: Map::new(),
        not_created: Map::new(),
        ids: Vec::new(),
    };
    for p in prepared {
        let mailboxes = match parse_mailboxes(w.tx, account, created_ids, &p.mailbox_ids)? {
            Ok(m) => m,
            Err(e) => {
                out.not_created.insert(p.creation_id.clone(), e.to_value());
                continue;
            }
        };
        let hash = match p.stored {
            Some(h) => h,
            None => blob::put_in_tx(w.tx, &p.raw)?,
        };
        let inserted = email::insert(
            w,
            email::NewEmail {
                blob: hash,
                size: p.size,
                received_at: p.received_at,
                mailbox_ids: mailboxes,
                keywords: p.keywords.clone(),
                parsed: &p.parsed,
            },
        );
        match inserted {
            Ok((doc, thread)) => {
                let eid = id::encode(Kind::Email, doc);
                out.created.insert(
                    p.creation_id.clone(),
                    json!({
                        "id": eid,
                        "blobId": id::blob_id(&hash),
                        "threadId": id::encode(Kind::Thread, thread),
                        "size": p.size,
                    }),
                );
                out.ids.push((p.creation_id.clone(), eid));
            }
            Err(Error::OverQuota { .. }) => {
                out.not_created
                    .insert(p.creation_id.clone(), SetError::new("overQuota").to_value());
            }
            Err(Error::NotFound(what)) => {
                out.not_created.insert(
                    p.creation_id.clone(),
                    SetError::invalid_properties(["mailboxIds"])
                        .with_description(format!("{what} not found"))
                        .to_value(),
                );
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// The current value of an immutable property, to compare with a patch
/// that repeats it.
fn current_value(
    tx: &mut tern_store::kv::Transaction<'_>,
    account: AccountId,
    doc: DocumentId,
    meta: &EmailMeta,
    name: &str,
    prop: Prop,
) -> Result<Value, Fail> {
    let sel = Selection {
        props: vec![(name.to_string(), prop.clone())],
        body: super::body::BodyOptions {
            props: super::body::DEFAULT_BODY_PROPERTIES
                .iter()
                .map(|p| super::body::BodyProp::parse(p).expect("default body property"))
                .collect(),
            fetch_text: false,
            fetch_html: false,
            fetch_all: false,
            max_bytes: 0,
        },
    };
    let detail = if matches!(
        prop,
        Prop::Header(_)
            | Prop::Headers
            | Prop::BodyStructure
            | Prop::TextBody
            | Prop::HtmlBody
            | Prop::Attachments
    ) {
        email::detail(tx, account, doc)?
    } else {
        None
    };
    let v = get::render(
        &Source {
            stored: Some((doc, meta)),
            envelope: &meta.envelope,
            blob_id: id::blob_id(&meta.blob),
            blob: meta.blob,
            size: meta.size,
            detail: detail.as_ref(),
            raw: None,
        },
        &sel,
    );
    Ok(v.get(name).cloned().unwrap_or(Value::Null))
}

/// Applies one update; `Ok(Err(_))` is the SetError for the client.
fn update_one(
    w: &mut Writer<'_, '_>,
    created_ids: &HashMap<String, String>,
    id_str: &str,
    patch: &Map<String, Value>,
) -> Result<Result<(), SetError>, Fail> {
    let account = w.account;
    let Some(doc) = id::decode(Kind::Email, id_str) else {
        return Ok(Err(SetError::new("notFound")));
    };
    let Some(meta) = email::get(w.tx, account, doc)? else {
        return Ok(Err(SetError::new("notFound")));
    };
    // The mutable part of the Email as JSON, with creation references in
    // mailbox ids resolved; other properties may only repeat their value.
    let mut obj = Map::new();
    obj.insert(
        "keywords".into(),
        Value::Object(
            meta.keywords
                .iter()
                .map(|k| (k.clone(), Value::Bool(true)))
                .collect(),
        ),
    );
    obj.insert(
        "mailboxIds".into(),
        Value::Object(
            meta.mailbox_ids
                .iter()
                .map(|&m| (id::encode(Kind::Mailbox, m), Value::Bool(true)))
                .collect(),
        ),
    );
    let mut mutable = Map::new();
    let mut invalid = Vec::new();
    for (path, value) in patch {
        let (head, rest) = match path.split_once('/') {
            Some((h, r)) => (h, Some(r)),
            None => (path.as_str(), None),
        };
        match (head, rest) {
            ("keywords", Some(k)) => {
                // Keywords are case-insensitive: patch the lowercase one.
                let k = k.replace("~1", "/").replace("~0", "~");
                if !valid_keyword(&k) || !(value.is_null() || *value == Value::Bool(true)) {
                    invalid.push("keywords".to_string());
                    continue;
                }
                mutable.insert(
                    format!(
                        "keywords/{}",
                        k.to_lowercase().replace('~', "~0").replace('/', "~1")
                    ),
                    value.clone(),
                );
            }
            ("mailboxIds", Some(m)) => {
                if !(value.is_null() || *value == Value::Bool(true)) {
                    invalid.push("mailboxIds".to_string());
                    continue;
                }
                mutable.insert(
                    format!("mailboxIds/{}", resolve(created_ids, m)),
                    value.clone(),
                );
            }
            ("keywords", None) => {
                mutable.insert(path.clone(), value.clone());
            }
            ("mailboxIds", None) => {
                let resolved = match value {
                    Value::Object(m) => Value::Object(
                        m.iter()
                            .map(|(k, v)| (resolve(created_ids, k), v.clone()))
                            .collect(),
                    ),
                    other => other.clone(),
                };
                mutable.insert(path.clone(), resolved);
            }
            (_, Some(_)) => {
                return Ok(Err(SetError::new("invalidPatch").with_description(
                    format!("{path}: only keywords and mailboxIds can be patched"),
                )));
            }
            (name, None) => match get::Prop::parse(name) {
                Some(Ok(prop)) => {
                    if current_value(w.tx, account, doc, &meta, name, prop)? != *value {
                        invalid.push(name.to_string());
                    }
                }
                _ => invalid.push(name.to_string()),
            },
        }
    }
    if !invalid.is_empty() {
        invalid.sort();
        invalid.dedup();
        return Ok(Err(SetError::invalid_properties(invalid)));
    }
    if let Err(e) = args::apply_patch(&mut obj, &mutable) {
        return Ok(Err(e));
    }
    let keywords = if mutable.keys().any(|k| k.starts_with("keywords")) {
        match parse_keywords(obj.get("keywords").unwrap_or(&json!({}))) {
            Ok(k) => Some(k),
            Err(e) => return Ok(Err(e)),
        }
    } else {
        None
    };
    let mailboxes = if mutable.keys().any(|k| k.starts_with("mailboxIds")) {
        let v = obj.get("mailboxIds").cloned().unwrap_or(json!({}));
        match parse_mailboxes(w.tx, account, created_ids, &v)? {
            Ok(m) => Some(m),
            Err(e) => return Ok(Err(e)),
        }
    } else {
        None
    };
    match email::update(w, doc, mailboxes, keywords) {
        Ok(_) => Ok(Ok(())),
        Err(Error::NotFound(_)) => Ok(Err(SetError::new("notFound"))),
        Err(Error::Invalid(d)) => Ok(Err(
            SetError::invalid_properties(["mailboxIds"]).with_description(d)
        )),
        Err(e) => Err(e.into()),
    }
}

/// Checks ifInState against the Email state read in the transaction.
pub(super) fn check_state(
    tx: &mut tern_store::kv::Transaction<'_>,
    account: AccountId,
    if_in_state: Option<Option<u64>>,
) -> Result<u64, Fail> {
    let state = changes::state(tx, account, DataType::Email)?;
    match if_in_state {
        Some(s) if s != Some(state) => Err(MethodError::StateMismatch.into()),
        _ => Ok(state),
    }
}

/// Email/set.
pub fn set(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let req = args::parse_set(ctx, &args, &[])?;
    let account = req.account;
    let mut resp = SetResponse::default();
    let mut prepared = Vec::new();
    let now = now();
    for (cid, obj) in &req.create {
        match prepare_draft(ctx, account, cid, obj, now)? {
            Ok(p) => prepared.push(p),
            Err(e) => {
                resp.not_created.insert(cid.clone(), e);
            }
        }
    }
    let created_ids = ctx.created_ids.clone();
    let (stored, updated, destroyed, old, new) =
        ctx.store.kv().transact(|tx| -> Result<_, Fail> {
            let old = check_state(tx, account, req.if_in_state)?;
            let mut w = Writer::begin(tx, account)?;
            let mut ids = created_ids.clone();
            let stored = insert_all(&mut w, &ids, &prepared)?;
            for (cid, eid) in &stored.ids {
                ids.insert(cid.clone(), eid.clone());
            }
            let mut updated = Vec::new();
            for (id_str, patch) in &req.update {
                let id_str = resolve(&ids, id_str);
                let outcome = match patch {
                    Ok(p) => update_one(&mut w, &ids, &id_str, p)?,
                    Err(()) => {
                        Err(SetError::new("invalidPatch").with_description("a patch is an object"))
                    }
                };
                updated.push((id_str, outcome));
            }
            let mut destroyed = Vec::new();
            for id_str in &req.destroy {
                let id_str = resolve(&ids, id_str);
                let outcome = match id::decode(Kind::Email, &id_str) {
                    None => Err(SetError::new("notFound")),
                    Some(doc) => match email::destroy(&mut w, doc) {
                        Ok(_) => Ok(()),
                        Err(Error::NotFound(_)) => Err(SetError::new("notFound")),
                        Err(e) => return Err(e.into()),
                    },
                };
                destroyed.push((id_str, outcome));
            }
            let new = w.finish()?.unwrap_or(old);
            Ok((stored, updated, destroyed, old, new))
        })?;
    for (cid, eid) in &stored.ids {
        ctx.created_ids.insert(cid.clone(), eid.clone());
    }
    resp.created = stored.created;
    resp.not_created.extend(stored.not_created);
    for (id_str, outcome) in updated {
        match outcome {
            Ok(()) => {
                resp.updated.insert(id_str, Value::Null);
            }
            Err(e) => resp.not_updated(&id_str, e),
        }
    }
    for (id_str, outcome) in destroyed {
        match outcome {
            Ok(()) => resp.destroyed.push(id_str),
            Err(e) => resp.not_destroyed(&id_str, e),
        }
    }
    Ok(resp.into_arguments(account, Some(id::state(old)), id::state(new)))
}

/// Builds a draft. `Ok(Err(v))` is the SetError object for notCreated.
fn prepare_draft(
    ctx: &Ctx<'_>,
    account: AccountId,
    cid: &str,
    obj: &Map<String, Value>,
    now: i64,
) -> Result<Result<Prepared, Value>, MethodError> {
    let keywords = match obj.get("keywords") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => match parse_keywords(v) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e.to_value())),
        },
    };
    let received_at = match parse_received_at(obj.get("receivedAt")) {
        Ok(r) => r.unwrap_or(now),
        Err(e) => return Ok(Err(e.to_value())),
    };
    let Some(mailbox_ids) = obj.get("mailboxIds").cloned() else {
        return Ok(Err(SetError::invalid_properties(["mailboxIds"])
            .with_description("mailboxIds is required")
            .to_value()));
    };
    let store = ctx.store;
    // maxSizeAttachmentsPerEmail: the blobs' decoded bytes, counted as they
    // are read so that an oversized draft stops before it is all in memory.
    let limit = ctx.limits.max_size_upload;
    let mut attached: u64 = 0;
    let mut read = |blob_id: &str| -> Result<Option<Vec<u8>>, MethodError> {
        let bytes = match BlobRef::parse(blob_id) {
            Some(r) => read_blob_ref(store, account, &r)?,
            None => None,
        };
        attached += bytes.as_ref().map_or(0, |b| b.len() as u64);
        if attached > limit {
            return Err(MethodError::RequestTooLarge);
        }
        Ok(bytes)
    };
    let raw = match build::build(obj, &mut read, now) {
        Ok(raw) => raw,
        Err(BuildError::Method(MethodError::RequestTooLarge)) => {
            return Ok(Err(SetError::new("tooLarge")
                .with_description(format!(
                    "the attachments add up to more than maxSizeAttachmentsPerEmail ({limit} octets)"
                ))
                .to_value()));
        }
        Err(BuildError::Set(e)) => return Ok(Err(e.to_value())),
        Err(BuildError::BlobsNotFound(ids)) => {
            let mut v = SetError::new("blobNotFound").to_value();
            v["notFound"] = json!(ids);
            return Ok(Err(v));
        }
        Err(BuildError::Method(e)) => return Err(e),
    };
    let parsed = match parse_message(&raw) {
        Ok(p) => p,
        Err(e) => {
            return Ok(Err(SetError::new("invalidProperties")
                .with_description(e.to_string())
                .to_value()));
        }
    };
    let mut p = Prepared {
        creation_id: cid.to_string(),
        mailbox_ids,
        keywords,
        received_at,
        size: raw.len() as u64,
        raw,
        parsed,
        stored: None,
    };
    p.store_if_large(ctx)?;
    Ok(Ok(p))
}

/// The date of the most recent Received field (the topmost), if any.
fn last_received(parsed: &ParsedMessage) -> Option<i64> {
    let h = parsed
        .detail
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("received"))?;
    let (_, date) = h.value.rsplit_once(';')?;
    headers::date(date).map(|(unix, _)| unix)
}

/// Email/import.
pub fn import(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    args::allow_only(&args, &["accountId", "ifInState", "emails"])?;
    let account = ctx.account(&args)?;
    let if_in_state = args::opt_str(&args, "ifInState")?.map(id::parse_state);
    let emails = match args.get("emails") {
        Some(Value::Object(m)) => m,
        _ => return Err(MethodError::invalid_arguments("emails is required")),
    };
    if emails.len() > ctx.limits.max_objects_in_set {
        return Err(MethodError::RequestTooLarge);
    }
    let now = now();
    let mut not_created = Map::new();
    let mut prepared = Vec::new();
    for (cid, e) in emails {
        let fail = |e: SetError| e.to_value();
        let Value::Object(e) = e else {
            not_created.insert(
                cid.clone(),
                fail(SetError::new("invalidProperties").with_description("not an object")),
            );
            continue;
        };
        let unknown: Vec<&String> = e
            .keys()
            .filter(|k| !["blobId", "mailboxIds", "keywords", "receivedAt"].contains(&k.as_str()))
            .collect();
        if !unknown.is_empty() {
            not_created.insert(cid.clone(), fail(SetError::invalid_properties(unknown)));
            continue;
        }
        let keywords = match e.get("keywords") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => match parse_keywords(v) {
                Ok(k) => k,
                Err(err) => {
                    not_created.insert(cid.clone(), fail(err));
                    continue;
                }
            },
        };
        let received_at = match parse_received_at(e.get("receivedAt")) {
            Ok(r) => r,
            Err(err) => {
                not_created.insert(cid.clone(), fail(err));
                continue;
            }
        };
        let Some(mailbox_ids) = e.get("mailboxIds").cloned() else {
            not_created.insert(
                cid.clone(),
                fail(SetError::invalid_properties(["mailboxIds"])),
            );
            continue;
        };
        let blob_ref = e
            .get("blobId")
            .and_then(Value::as_str)
            .and_then(BlobRef::parse);
        let raw = match blob_ref {
            Some(r) => read_blob_ref(ctx.store, account, &r)?.map(|raw| (r, raw)),
            None => None,
        };
        let Some((r, raw)) = raw else {
            not_created.insert(
                cid.clone(),
                fail(SetError::invalid_properties(["blobId"]).with_description("no such blob")),
            );
            continue;
        };
        let parsed = match parse_message(&raw) {
            Ok(p) => p,
            Err(err) => {
                not_created.insert(
                    cid.clone(),
                    fail(SetError::new("invalidEmail").with_description(err.to_string())),
                );
                continue;
            }
        };
        let received_at = received_at
            .or_else(|| last_received(&parsed))
            .unwrap_or(now);
        let mut p = Prepared {
            creation_id: cid.clone(),
            mailbox_ids,
            keywords,
            received_at,
            size: raw.len() as u64,
            raw,
            parsed,
            stored: match r {
                BlobRef::Whole(h) => Some(h),
                BlobRef::Part(..) => None,
            },
        };
        p.store_if_large(ctx)?;
        prepared.push(p);
    }
    let created_ids = ctx.created_ids.clone();
    let (stored, old, new) = ctx.store.kv().transact(|tx| -> Result<_, Fail> {
        let old = check_state(tx, account, if_in_state)?;
        let mut w = Writer::begin(tx, account)?;
        let stored = insert_all(&mut w, &created_ids, &prepared)?;
        let new = w.finish()?.unwrap_or(old);
        Ok((stored, old, new))
    })?;
    for (cid, eid) in &stored.ids {
        ctx.created_ids.insert(cid.clone(), eid.clone());
    }
    not_created.extend(stored.not_created);
    let or_null = |m: Map<String, Value>| {
        if m.is_empty() {
            Value::Null
        } else {
            Value::Object(m)
        }
    };
    let mut out = Map::new();
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert("oldState".into(), json!(id::state(old)));
    out.insert("newState".into(), json!(id::state(new)));
    out.insert("created".into(), or_null(stored.created));
    out.insert("notCreated".into(), or_null(not_created));
    Ok(out)
}
