//! EmailSubmission/get, changes, query, queryChanges and set (RFC 8621
//! section 7).
//!
//! A submission is a generic object (collection `05`: `identityId`,
//! `emailId`, `threadId`, `envelope`, `sendAt`) plus a delivery status
//! record the store's queue keeps up to date (`tern_store::queue::
//! SubmissionStatus`: `undoStatus` and one `deliveryStatus` entry per
//! recipient). Creating one:
//! - checks the identity (the From address must be the identity's, or on
//!   the domain of a `*@domain` identity) and the envelope (MAIL FROM
//!   must be one of the account's addresses);
//! - derives the envelope from the headers when none is given (Sender or
//!   From; To, Cc and Bcc);
//! - removes the Bcc header from what is sent;
//! - delivers to recipients on local domains at once (store delivery),
//!   and queues the rest in the same transaction that creates the
//!   submission. A delayed send (FUTURERELEASE `HOLDUNTIL`/`HOLDFOR` on
//!   the envelope's mailFrom) queues every recipient with `undoStatus`
//!   `pending` until it is released; an update to `canceled` withdraws it.
//!
//! - passes the message (as it will be sent) through the deployment's
//!   [`SubmissionPolicy`] (`Limits::submission_policy`: the account's
//!   sending rate, the virus scan, the outbound spam score) before
//!   anything is delivered or queued: a refusal is the SetError
//!   `rateLimit` (try later) or `forbiddenToSend` (a virus, spam, a
//!   suspended account, the scanner down), with a description.
//!
//! `onSuccessUpdateEmail` / `onSuccessDestroyEmail` run an implicit
//! Email/set whose response follows this method's ([`set_with_implicit`]).

use std::collections::{BTreeSet, HashMap};

use serde_json::{Map, Value, json};
use tern_store::changes::{self, Writer};
use tern_store::compose::{parse_utc_date, utc_date};
use tern_store::envelope::{DsnNotify, DsnRet, Envelope, EnvelopeRecipient};
use tern_store::kv::Transaction;
use tern_store::queue::{self, Delivery, RecipientStatus, SubmissionStatus, UndoStatus};
use tern_store::{
    AccountId, Collection, DataType, DocumentId, Recipient, account, blob, email, now, object,
};

use crate::args::{self, SetResponse};
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult, SetError};

/// Every EmailSubmission property.
pub const PROPERTIES: [&str; 10] = [
    "id",
    "identityId",
    "emailId",
    "threadId",
    "envelope",
    "sendAt",
    "undoStatus",
    "deliveryStatus",
    "dsnBlobIds",
    "mdnBlobIds",
];

/// The longest delay a submission may ask for (`maxDelayedSend`): 30 days.
pub const MAX_DELAYED_SEND: u64 = 30 * 86_400;

/// Most recipients of one submission.
pub const MAX_RECIPIENTS: usize = 1000;

/// Largest message one submission sends.
pub const MAX_SIZE: usize = 50 << 20;

/// The `submissionExtensions` advertised: the SMTP extensions whose
/// envelope parameters Tern honours (EHLO keyword → arguments).
/// FUTURERELEASE's latest release date-time is given to the day, so the
/// session (and its state) changes once a day.
pub fn submission_extensions() -> Value {
    let today = now() - now().rem_euclid(86_400);
    json!({
        "FUTURERELEASE": [MAX_DELAYED_SEND.to_string(), utc_date(today + MAX_DELAYED_SEND as i64)],
        "DSN": [],
        "SIZE": [MAX_SIZE.to_string()],
    })
}

/// A check every submitted message passes before it is sent: plugged in
/// by the deployment (`Limits::submission_policy`), since the filters live
/// in the SMTP crate.
pub trait SubmissionPolicy: Send + Sync + std::fmt::Debug {
    /// Checks `raw` (the message as it will be sent, without Bcc) that
    /// `account` sends to `recipients` recipients. Called on a blocking
    /// thread; may wait (for clamd). `Ok(Some(message))`: send `message`
    /// instead (the policy removed or added header fields, e.g.
    /// `X-Virus-Status: Unscanned`).
    fn check(
        &self,
        account: AccountId,
        recipients: usize,
        raw: &[u8],
    ) -> Result<Option<Vec<u8>>, Refused>;
}

/// Why a [`SubmissionPolicy`] refuses a message; the text is shown to the
/// user as the SetError's description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Over the account's sending rate: SetError `rateLimit`.
    RateLimited(String),
    /// Not to be sent (a virus, spam, a suspended account) or not now
    /// (the virus scanner is down): SetError `forbiddenToSend`.
    Forbidden(String),
}

impl Refused {
    fn set_error(self) -> SetError {
        match self {
            Refused::RateLimited(d) => SetError::new("rateLimit").with_description(d),
            Refused::Forbidden(d) => SetError::new("forbiddenToSend").with_description(d),
        }
    }
}

fn decode(bytes: &[u8]) -> Map<String, Value> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn undo_name(u: UndoStatus) -> &'static str {
    match u {
        UndoStatus::Pending => "pending",
        UndoStatus::Final => "final",
        UndoStatus::Canceled => "canceled",
    }
}

fn delivered_name(d: Delivery) -> &'static str {
    match d {
        Delivery::Queued => "queued",
        Delivery::Yes => "yes",
        Delivery::No => "no",
        Delivery::Unknown => "unknown",
    }
}

/// The full object: stored properties plus the status record's.
fn render(id: DocumentId, stored: &[u8], status: Option<&SubmissionStatus>) -> Map<String, Value> {
    let mut o = decode(stored);
    o.insert("id".into(), json!(id::encode(Kind::Submission, id)));
    let (undo, delivery) = match status {
        Some(s) => {
            let mut d = Map::new();
            for r in &s.recipients {
                d.insert(
                    r.address.clone(),
                    json!({
                        "smtpReply": r.reply,
                        "delivered": delivered_name(r.delivered),
                        "displayed": "unknown",
                    }),
                );
            }
            (undo_name(s.undo), Value::Object(d))
        }
        None => ("final", Value::Null),
    };
    o.insert("undoStatus".into(), json!(undo));
    o.insert("deliveryStatus".into(), delivery);
    // The DSNs delivered to the sender about it (RFC 8621 section 7), as
    // the queue records them.
    let dsns: Vec<String> = status
        .map(|s| s.dsn_blobs.iter().map(id::blob_id).collect())
        .unwrap_or_default();
    o.insert("dsnBlobIds".into(), json!(dsns));
    o.entry("mdnBlobIds").or_insert(json!([]));
    o
}

type Row = (DocumentId, Vec<u8>, Option<SubmissionStatus>);

fn all(tx: &mut Transaction<'_>, account: AccountId) -> tern_store::Result<Vec<Row>> {
    let mut out = Vec::new();
    for (i, bytes) in object::list(tx, account, Collection::EmailSubmission)? {
        let status = queue::get_status(tx, account, i)?;
        out.push((i, bytes, status));
    }
    Ok(out)
}

fn state(tx: &mut Transaction<'_>, account: AccountId) -> tern_store::Result<u64> {
    changes::state(tx, account, DataType::EmailSubmission)
}

/// EmailSubmission/get.
pub fn get(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let req = args::parse_get(ctx, &args, &PROPERTIES, &[])?;
    let account = req.account;
    let (st, rows) = ctx
        .store
        .kv()
        .read(|tx| Ok::<_, tern_store::Error>((state(tx, account)?, all(tx, account)?)))?;
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    match &req.ids {
        None => {
            for (i, bytes, status) in &rows {
                list.push(args::select(
                    render(*i, bytes, status.as_ref()),
                    &req.properties,
                ));
            }
        }
        Some(ids) => {
            for s in ids {
                let found = id::decode(Kind::Submission, s)
                    .and_then(|i| rows.iter().find(|(x, _, _)| *x == i));
                match found {
                    Some((i, bytes, status)) => list.push(args::select(
                        render(*i, bytes, status.as_ref()),
                        &req.properties,
                    )),
                    None => not_found.push(s.clone()),
                }
            }
        }
    }
    Ok(args::get_response(account, id::state(st), list, not_found))
}

/// EmailSubmission/changes.
pub fn changes(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    Ok(args::changes_method(ctx, &args, DataType::EmailSubmission, Kind::Submission)?.0)
}

// -------------------------------------------------------------- query ---

#[derive(Debug, Default)]
struct Filter {
    identity_ids: Option<Vec<String>>,
    email_ids: Option<Vec<String>>,
    thread_ids: Option<Vec<String>>,
    undo_status: Option<String>,
    before: Option<i64>,
    after: Option<i64>,
}

fn parse_filter(ctx: &Ctx<'_>, args: &Arguments) -> Result<Filter, MethodError> {
    let Some(v) = args.get("filter").filter(|v| !v.is_null()) else {
        return Ok(Filter::default());
    };
    let Some(f) = v.as_object() else {
        return Err(MethodError::invalid_arguments("filter must be an object"));
    };
    if f.contains_key("operator") {
        return Err(MethodError::UnsupportedFilter(
            "FilterOperator is not supported for EmailSubmission".into(),
        ));
    }
    for k in f.keys() {
        if ![
            "identityIds",
            "emailIds",
            "threadIds",
            "undoStatus",
            "before",
            "after",
        ]
        .contains(&k.as_str())
        {
            return Err(MethodError::UnsupportedFilter(format!(
                "unknown filter property {k:?}"
            )));
        }
    }
    let ids = |name: &str| -> Result<Option<Vec<String>>, MethodError> {
        Ok(args::opt_strings(f, name)?
            .map(|v| v.iter().map(|s| args::resolve_ref(ctx, s)).collect()))
    };
    let date = |name: &str| -> Result<Option<i64>, MethodError> {
        match args::opt_str(f, name)? {
            None => Ok(None),
            Some(s) => parse_utc_date(s)
                .map(Some)
                .ok_or_else(|| MethodError::invalid_arguments(format!("{name} is a UTCDate"))),
        }
    };
    Ok(Filter {
        identity_ids: ids("identityIds")?,
        email_ids: ids("emailIds")?,
        thread_ids: ids("threadIds")?,
        undo_status: args::opt_str(f, "undoStatus")?.map(str::to_owned),
        before: date("before")?,
        after: date("after")?,
    })
}

fn matches(f: &Filter, o: &Map<String, Value>) -> bool {
    let str_of = |k: &str| o.get(k).and_then(Value::as_str).unwrap_or_default();
    let within = |list: &Option<Vec<String>>, k: &str| {
        list.as_ref()
            .is_none_or(|l| l.iter().any(|x| x == str_of(k)))
    };
    let send_at = parse_utc_date(str_of("sendAt")).unwrap_or(0);
    within(&f.identity_ids, "identityId")
        && within(&f.email_ids, "emailId")
        && within(&f.thread_ids, "threadId")
        && f.undo_status
            .as_deref()
            .is_none_or(|u| u == str_of("undoStatus"))
        && f.before.is_none_or(|b| send_at < b)
        && f.after.is_none_or(|a| send_at >= a)
}

fn run_query(
    ctx: &Ctx<'_>,
    args: &Arguments,
    rows: &[Row],
) -> Result<Vec<DocumentId>, MethodError> {
    let filter = parse_filter(ctx, args)?;
    let sort = args::parse_sort(args, &["emailId", "threadId", "sentAt"])?;
    let mut objects: Vec<(DocumentId, Map<String, Value>)> = rows
        .iter()
        .map(|(i, b, s)| (*i, render(*i, b, s.as_ref())))
        .filter(|(_, o)| matches(&filter, o))
        .collect();
    objects.sort_by(|(ia, a), (ib, b)| {
        for (property, ascending) in &sort {
            let key = |o: &Map<String, Value>| -> (i64, String) {
                match property.as_str() {
                    "sentAt" => (
                        parse_utc_date(o.get("sendAt").and_then(Value::as_str).unwrap_or_default())
                            .unwrap_or(0),
                        String::new(),
                    ),
                    p => (
                        0,
                        o.get(p)
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned(),
                    ),
                }
            };
            let ord = key(a).cmp(&key(b));
            let ord = if *ascending { ord } else { ord.reverse() };
            if ord.is_ne() {
                return ord;
            }
        }
        ia.cmp(ib)
    });
    Ok(objects.into_iter().map(|(i, _)| i).collect())
}

/// EmailSubmission/query.
pub fn query(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    args::allow_only(
        &args,
        &[
            "accountId",
            "filter",
            "sort",
            "position",
            "anchor",
            "anchorOffset",
            "limit",
            "calculateTotal",
        ],
    )?;
    let account = ctx.account(&args)?;
    args::query_listing(
        ctx,
        &args,
        account,
        (DataType::EmailSubmission, Kind::Submission),
        all,
        |ctx, rows| run_query(ctx, &args, rows),
    )
}

/// EmailSubmission/queryChanges: every submission changed since the old
/// state is reported removed, and added at its current index when it
/// still matches.
pub fn query_changes(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    args::allow_only(
        &args,
        &[
            "accountId",
            "filter",
            "sort",
            "sinceQueryState",
            "maxChanges",
            "upToId",
            "calculateTotal",
        ],
    )?;
    let account = ctx.account(&args)?;
    let p = args::parse_query_changes(&args)?;
    let (st, rows, c) =
        args::read_query_changes(ctx, account, DataType::EmailSubmission, p.since, all)?;
    let results = run_query(ctx, &args, &rows)?;
    let removed: BTreeSet<DocumentId> = c
        .destroyed
        .iter()
        .chain(c.updated.iter())
        .copied()
        .collect();
    let removed: Vec<DocumentId> = removed.into_iter().collect();
    args::query_changes_response(
        account,
        Kind::Submission,
        &p,
        st,
        &results,
        &removed,
        &c.created,
    )
}

// ---------------------------------------------------------------- set ---

fn invalid(p: &str, d: impl Into<String>) -> SetError {
    SetError::invalid_properties([p]).with_description(d)
}

/// An envelope address with its SMTP parameters.
#[derive(Debug, Clone)]
struct Addr {
    email: String,
    params: Map<String, Value>,
}

fn parse_addr(v: &Value, what: &str) -> Result<Addr, SetError> {
    let Some(o) = v.as_object() else {
        return Err(invalid("envelope", format!("{what} must be an Address")));
    };
    let Some(email) = o.get("email").and_then(Value::as_str) else {
        return Err(invalid("envelope", format!("{what} needs an email")));
    };
    let params = match o.get("parameters") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(invalid("envelope", "parameters must be an object or null")),
    };
    Ok(Addr {
        email: email.trim().to_owned(),
        params,
    })
}

fn valid_address(a: &str) -> bool {
    account::normalize_address(a).is_ok()
}

/// The SMTP envelope for the message: explicit or derived from headers.
fn envelope_of(
    given: Option<&Value>,
    meta: &email::EmailMeta,
) -> Result<(Addr, Vec<Addr>), SetError> {
    match given {
        Some(Value::Object(e)) => {
            let from = parse_addr(
                e.get("mailFrom").unwrap_or(&Value::Null),
                "envelope/mailFrom",
            )?;
            let Some(Value::Array(to)) = e.get("rcptTo") else {
                return Err(invalid("envelope", "envelope/rcptTo must be an array"));
            };
            let to = to
                .iter()
                .map(|a| parse_addr(a, "envelope/rcptTo"))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((from, to))
        }
        None | Some(Value::Null) => {
            let env = &meta.envelope;
            let from = env
                .sender
                .first()
                .or_else(|| env.from.first())
                .map(|a| a.email.clone())
                .unwrap_or_default();
            let mut seen = BTreeSet::new();
            let to = env
                .to
                .iter()
                .chain(env.cc.iter())
                .chain(env.bcc.iter())
                .filter(|a| seen.insert(a.email.to_lowercase()))
                .map(|a| Addr {
                    email: a.email.clone(),
                    params: Map::new(),
                })
                .collect();
            Ok((
                Addr {
                    email: from,
                    params: Map::new(),
                },
                to,
            ))
        }
        Some(_) => Err(invalid("envelope", "envelope must be an object or null")),
    }
}

fn envelope_value(from: &Addr, to: &[Addr]) -> Value {
    let addr = |a: &Addr| {
        json!({
            "email": a.email,
            "parameters": if a.params.is_empty() { Value::Null } else { Value::Object(a.params.clone()) },
        })
    };
    json!({
        "mailFrom": addr(from),
        "rcptTo": to.iter().map(addr).collect::<Vec<_>>(),
    })
}

/// The raw message without its Bcc header field(s).
fn without_bcc(raw: &[u8]) -> Vec<u8> {
    let header_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .or_else(|| raw.windows(2).position(|w| w == b"\n\n").map(|p| p + 1))
        .unwrap_or(raw.len());
    let mut out = Vec::with_capacity(raw.len());
    let mut skipping = false;
    let mut pos = 0;
    while pos < header_end {
        let end = raw[pos..header_end]
            .iter()
            .position(|&b| b == b'\n')
            .map(|p| pos + p + 1)
            .unwrap_or(header_end);
        let line = &raw[pos..end];
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            skipping = line.len() >= 4 && line[..4].eq_ignore_ascii_case(b"bcc:");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    out.extend_from_slice(&raw[header_end..]);
    out
}

/// What the DSN and FUTURERELEASE parameters ask for.
struct Params {
    ret: Option<DsnRet>,
    envid: Option<String>,
    hold_until: Option<i64>,
}

fn mail_params(from: &Addr, at: i64) -> Result<Params, SetError> {
    let mut p = Params {
        ret: None,
        envid: None,
        hold_until: None,
    };
    let bad = |d: String| invalid("envelope", d);
    for (k, v) in &from.params {
        let value = v.as_str();
        match k.to_ascii_uppercase().as_str() {
            "RET" => {
                p.ret = match value.map(str::to_ascii_uppercase).as_deref() {
                    Some("FULL") => Some(DsnRet::Full),
                    Some("HDRS") => Some(DsnRet::Headers),
                    _ => return Err(bad("RET must be FULL or HDRS".into())),
                }
            }
            "ENVID" => match value {
                Some(s) if !s.is_empty() && s.len() <= 100 => p.envid = Some(s.to_owned()),
                _ => {
                    return Err(bad(
                        "ENVID must be a string of at most 100 characters".into()
                    ));
                }
            },
            "HOLDFOR" => {
                let secs = value
                    .and_then(|s| s.parse::<u64>().ok())
                    .or_else(|| v.as_u64())
                    .ok_or_else(|| bad("HOLDFOR must be a number of seconds".into()))?;
                if secs > MAX_DELAYED_SEND {
                    return Err(bad(format!("HOLDFOR is at most {MAX_DELAYED_SEND}")));
                }
                p.hold_until = Some(at + secs as i64);
            }
            "HOLDUNTIL" => {
                let t = value
                    .and_then(parse_utc_date)
                    .ok_or_else(|| bad("HOLDUNTIL must be a UTC date-time".into()))?;
                if t - at > MAX_DELAYED_SEND as i64 {
                    return Err(bad("HOLDUNTIL is too far in the future".into()));
                }
                p.hold_until = Some(t.max(at));
            }
            "SIZE" | "BODY" | "SMTPUTF8" => {}
            other => return Err(bad(format!("unsupported mailFrom parameter {other}"))),
        }
    }
    Ok(p)
}

fn rcpt_params(to: &Addr) -> Result<(Option<DsnNotify>, Option<String>), SetError> {
    let mut notify = None;
    let mut orcpt = None;
    for (k, v) in &to.params {
        let value = v.as_str().unwrap_or_default();
        match k.to_ascii_uppercase().as_str() {
            "NOTIFY" => {
                let mut n = DsnNotify::NEVER;
                for w in value.split(',') {
                    match w.trim().to_ascii_uppercase().as_str() {
                        "NEVER" => {}
                        "SUCCESS" => n.success = true,
                        "FAILURE" => n.failure = true,
                        "DELAY" => n.delay = true,
                        _ => return Err(invalid("envelope", format!("bad NOTIFY {value:?}"))),
                    }
                }
                notify = Some(n);
            }
            "ORCPT" => {
                let addr = value
                    .split_once(';')
                    .map(|(_, a)| a)
                    .unwrap_or(value)
                    .trim();
                orcpt = Some(addr.to_owned());
            }
            other => {
                return Err(invalid(
                    "envelope",
                    format!("unsupported rcptTo parameter {other}"),
                ));
            }
        }
    }
    Ok((notify, orcpt))
}

/// Whether `from` may be used by an identity whose email is `identity`.
fn identity_allows(identity: &str, from: &str) -> bool {
    let (identity, from) = (identity.to_lowercase(), from.to_lowercase());
    match identity.strip_prefix("*@") {
        Some(domain) => from.rsplit_once('@').is_some_and(|(_, d)| d == domain),
        None => identity == from,
    }
}

/// A created submission: its id, the `created` response entry and the
/// email id it sent.
type CreatedOne = (DocumentId, Map<String, Value>, String);

/// One created submission, for the implicit Email/set.
struct Created {
    key: String,
    email_id: String,
}

fn create_one(
    ctx: &Ctx<'_>,
    account: AccountId,
    obj: &Map<String, Value>,
) -> Result<Result<CreatedOne, SetError>, MethodError> {
    for k in obj.keys() {
        match k.as_str() {
            "identityId" | "emailId" | "envelope" => {}
            "id" | "threadId" | "sendAt" | "undoStatus" | "deliveryStatus" | "dsnBlobIds"
            | "mdnBlobIds" => {
                return Ok(Err(invalid(k, format!("{k} is set by the server"))));
            }
            _ => return Ok(Err(invalid(k, format!("unknown property {k:?}")))),
        }
    }
    let Some(identity_ref) = obj.get("identityId").and_then(Value::as_str) else {
        return Ok(Err(invalid("identityId", "identityId is required")));
    };
    let Some(email_ref) = obj.get("emailId").and_then(Value::as_str) else {
        return Ok(Err(invalid("emailId", "emailId is required")));
    };
    let identity_id = args::resolve_ref(ctx, identity_ref);
    let email_id = args::resolve_ref(ctx, email_ref);
    let at = now();
    let store = ctx.store;
    crate::identity::initialize(ctx, account)?;
    // Read what the checks need.
    let identity_doc = id::decode(Kind::Identity, &identity_id);
    let email_doc = id::decode(Kind::Email, &email_id);
    let found = store.kv().read(|tx| {
        let identity = match identity_doc {
            Some(i) => object::get(tx, account, Collection::Identity, i)?,
            None => None,
        };
        let meta = match email_doc {
            Some(e) => email::get(tx, account, e)?,
            None => None,
        };
        let record = account::get_account(tx, account)?;
        Ok::<_, tern_store::Error>((identity, meta, record))
    })?;
    let (Some(identity), meta, Some(record)) = found else {
        return Ok(Err(invalid("identityId", "no such identity")));
    };
    let Some(meta) = meta else {
        return Ok(Err(invalid("emailId", "no such email")));
    };
    let identity_email = decode(&identity)
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let from_header: Vec<&str> = meta
        .envelope
        .from
        .iter()
        .map(|a| a.email.as_str())
        .collect();
    if from_header.is_empty()
        || !from_header
            .iter()
            .all(|f| identity_allows(&identity_email, f))
    {
        return Ok(Err(SetError::new("forbiddenFrom").with_description(
            "the email's From address does not belong to the identity",
        )));
    }
    let (from, to) = match envelope_of(obj.get("envelope"), &meta) {
        Ok(e) => e,
        Err(e) => return Ok(Err(e)),
    };
    let own: Vec<String> = std::iter::once(record.address.clone())
        .chain(record.aliases.iter().cloned())
        .collect();
    let from_ok = own.iter().any(|a| a.eq_ignore_ascii_case(&from.email))
        || (!identity_email.starts_with("*@") && identity_allows(&identity_email, &from.email));
    if !from_ok {
        return Ok(Err(SetError::new("forbiddenMailFrom").with_description(
            "the envelope's mailFrom is not one of the account's addresses",
        )));
    }
    if to.is_empty() {
        return Ok(Err(SetError::new("noRecipients")));
    }
    if to.len() > MAX_RECIPIENTS {
        return Ok(Err(SetError::new("tooManyRecipients")
            .with_description(format!("at most {MAX_RECIPIENTS} recipients"))));
    }
    let bad: Vec<String> = to
        .iter()
        .filter(|a| !valid_address(&a.email))
        .map(|a| a.email.clone())
        .collect();
    if !bad.is_empty() {
        return Ok(Err(SetError::new("invalidRecipients").with_description(
            format!("invalid addresses: {}", bad.join(", ")),
        )));
    }
    let params = match mail_params(&from, at) {
        Ok(p) => p,
        Err(e) => return Ok(Err(e)),
    };
    let mut recipients = Vec::with_capacity(to.len());
    for a in &to {
        let (notify, orcpt) = match rcpt_params(a) {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        recipients.push(EnvelopeRecipient {
            address: account::normalize_address(&a.email).unwrap_or_else(|_| a.email.clone()),
            notify,
            orcpt,
        });
    }
    if meta.size as usize > MAX_SIZE {
        return Ok(Err(SetError::new("tooLarge").with_description(format!(
            "the message is over {MAX_SIZE} bytes"
        ))));
    }
    let raw = store
        .kv()
        .read(|tx| blob::read(tx, &meta.blob))?
        .ok_or_else(|| MethodError::ServerFail("the email's blob is missing".into()))?;
    let mut raw = without_bcc(&raw);
    if let Some(policy) = &ctx.limits.submission_policy {
        match policy.check(account, recipients.len(), &raw) {
            Ok(None) => {}
            Ok(Some(changed)) => raw = changed,
            Err(refused) => return Ok(Err(refused.set_error())),
        }
    }
    let held = params.hold_until.filter(|&t| t > at);
    let send_at = held.unwrap_or(at);
    // Split local and remote recipients (a delayed send queues all).
    let mut local: Vec<(usize, Option<AccountId>)> = Vec::new();
    let mut remote: Vec<usize> = Vec::new();
    for (i, r) in recipients.iter().enumerate() {
        let domain = r.address.rsplit('@').next().unwrap_or_default();
        if held.is_none() && store.is_local_domain(domain)? {
            local.push((i, store.lookup_address(&r.address)?));
        } else {
            remote.push(i);
        }
    }
    let mut statuses: Vec<RecipientStatus> = recipients
        .iter()
        .map(|r| RecipientStatus {
            address: r.address.clone(),
            delivered: Delivery::Queued,
            reply: "250 2.0.0 queued".into(),
        })
        .collect();
    // Local recipients: delivered now, one copy per account.
    let mut seen = BTreeSet::new();
    let targets: Vec<AccountId> = local
        .iter()
        .filter_map(|(_, a)| *a)
        .filter(|a| seen.insert(*a))
        .collect();
    let mut outcomes: HashMap<AccountId, bool> = HashMap::new();
    if !targets.is_empty() {
        let inbox: Vec<Recipient> = targets.iter().map(|a| Recipient::inbox(*a)).collect();
        let results = store.deliver(&raw, &inbox)?;
        for (a, r) in targets.iter().zip(results) {
            outcomes.insert(*a, r.is_ok());
        }
        for a in &targets {
            if outcomes.get(a) == Some(&true)
                && let Err(e) = tern_store::vacation::auto_reply(store, *a, &from.email, &raw)
            {
                tracing::warn!(error = %e, "vacation reply failed");
            }
        }
    }
    for (i, target) in &local {
        statuses[*i] = match target.map(|a| outcomes.get(&a) == Some(&true)) {
            Some(true) => RecipientStatus {
                address: recipients[*i].address.clone(),
                delivered: Delivery::Yes,
                reply: "250 2.0.0 delivered to the local mailbox".into(),
            },
            Some(false) => RecipientStatus {
                address: recipients[*i].address.clone(),
                delivered: Delivery::No,
                reply: "552 5.2.2 mailbox full".into(),
            },
            None => RecipientStatus {
                address: recipients[*i].address.clone(),
                delivered: Delivery::No,
                reply: "550 5.1.1 no such user here".into(),
            },
        };
    }
    // Remote (or delayed) recipients: into the queue with the submission.
    let hash = if remote.is_empty() {
        None
    } else {
        Some(blob::put(store.kv(), &raw)?)
    };
    let envelope = Envelope {
        mail_from: from.email.clone(),
        ret: params.ret,
        envid: params.envid.clone(),
        body_8bitmime: raw.iter().any(|b| *b >= 0x80),
        smtputf8: recipients.iter().any(|r| !r.address.is_ascii()) || !from.email.is_ascii(),
        recipients: remote.iter().map(|&i| recipients[i].clone()).collect(),
    };
    let stored = json!({
        "identityId": identity_id,
        "emailId": email_id,
        "threadId": id::encode(Kind::Thread, meta.thread_id),
        "envelope": envelope_value(&from, &to),
        "sendAt": utc_date(send_at),
        "dsnBlobIds": [],
        "mdnBlobIds": [],
    });
    let size = raw.len() as u64;
    let new = store.kv().transact(|tx| {
        let mut w = Writer::begin(tx, account)?;
        let sid = object::create(
            &mut w,
            Collection::EmailSubmission,
            DataType::EmailSubmission,
            stored.to_string().as_bytes(),
        )?;
        let queue_id = match hash {
            Some(hash) => Some(queue::enqueue_in(
                w.tx,
                &queue::NewMessage {
                    blob: hash,
                    size,
                    account: Some(account),
                    submission: Some(sid),
                    envelope: &envelope,
                    send_at,
                },
            )?),
            None => None,
        };
        let status = SubmissionStatus {
            queue_id,
            undo: if held.is_some() {
                UndoStatus::Pending
            } else {
                UndoStatus::Final
            },
            recipients: statuses.clone(),
            dsn_blobs: Vec::new(),
        };
        queue::put_status(w.tx, account, sid, &status)?;
        w.finish()?;
        Ok::<_, tern_store::Error>((sid, status))
    })?;
    let (sid, status) = new;
    let mut created = Map::new();
    created.insert("id".into(), json!(id::encode(Kind::Submission, sid)));
    created.insert("threadId".into(), stored["threadId"].clone());
    created.insert("sendAt".into(), stored["sendAt"].clone());
    created.insert("undoStatus".into(), json!(undo_name(status.undo)));
    Ok(Ok((sid, created, email_id)))
}

/// EmailSubmission/set without the implicit Email/set (its response is
/// dropped).
pub fn set(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    set_with_implicit(ctx, args).0
}

/// EmailSubmission/set, and the implicit Email/set the
/// `onSuccessUpdateEmail`/`onSuccessDestroyEmail` arguments call for: its
/// name and result, to be answered right after this method's response
/// with the same call id.
pub fn set_with_implicit(
    ctx: &mut Ctx<'_>,
    args: Arguments,
) -> (MethodResult, Option<(&'static str, MethodResult)>) {
    match set_inner(ctx, args) {
        Ok((response, implicit)) => {
            let implicit = implicit.map(|a| ("Email/set", crate::email::set(ctx, a)));
            (Ok(response), implicit)
        }
        Err(e) => (Err(e), None),
    }
}

fn set_inner(
    ctx: &mut Ctx<'_>,
    args: Arguments,
) -> Result<(Arguments, Option<Arguments>), MethodError> {
    let req = args::parse_set(
        ctx,
        &args,
        &["onSuccessUpdateEmail", "onSuccessDestroyEmail"],
    )?;
    let account = req.account;
    let on_update = match args.get("onSuccessUpdateEmail") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => {
            return Err(MethodError::invalid_arguments(
                "onSuccessUpdateEmail must be an object",
            ));
        }
    };
    let on_destroy = args::opt_strings(&args, "onSuccessDestroyEmail")?.unwrap_or_default();
    let old = ctx.store.kv().read(|tx| state(tx, account))?;
    if let Some(expected) = req.if_in_state
        && expected != Some(old)
    {
        return Err(MethodError::StateMismatch);
    }
    let mut response = SetResponse::default();
    let mut done: Vec<Created> = Vec::new();
    for (cid, obj) in &req.create {
        match create_one(ctx, account, obj)? {
            Ok((sid, created, email_id)) => {
                let real = id::encode(Kind::Submission, sid);
                ctx.created_ids.insert(cid.clone(), real.clone());
                response.created.insert(cid.clone(), Value::Object(created));
                done.push(Created {
                    key: format!("#{cid}"),
                    email_id: email_id.clone(),
                });
                done.push(Created {
                    key: real,
                    email_id,
                });
            }
            Err(e) => response.not_created(cid, e),
        }
    }
    for (sid, patch) in &req.update {
        let Some(doc) = id::decode(Kind::Submission, sid) else {
            response.not_updated(sid, SetError::new("notFound"));
            continue;
        };
        let Ok(patch) = patch else {
            response.not_updated(sid, SetError::new("invalidPatch"));
            continue;
        };
        let outcome =
            ctx.store
                .kv()
                .transact(|tx| -> tern_store::Result<Result<(), SetError>> {
                    let Some(bytes) = object::get(tx, account, Collection::EmailSubmission, doc)?
                    else {
                        return Ok(Err(SetError::new("notFound")));
                    };
                    let status = queue::get_status(tx, account, doc)?;
                    let before = render(doc, &bytes, status.as_ref());
                    let mut after = before.clone();
                    if let Err(e) = args::apply_patch(&mut after, patch) {
                        return Ok(Err(e));
                    }
                    if let Some(bad) = PROPERTIES
                        .iter()
                        .find(|p| **p != "undoStatus" && after.get(**p) != before.get(**p))
                    {
                        return Ok(Err(invalid(bad, format!("{bad} cannot be changed"))));
                    }
                    if let Some(bad) = after.keys().find(|k| !PROPERTIES.contains(&k.as_str())) {
                        return Ok(Err(invalid(bad, format!("unknown property {bad:?}"))));
                    }
                    match after.get("undoStatus").and_then(Value::as_str) {
                        Some(u) if Some(u) == before.get("undoStatus").and_then(Value::as_str) => {
                            Ok(Ok(()))
                        }
                        Some("canceled") => {
                            let Some(mut status) = status else {
                                return Ok(Err(SetError::new("cannotUnsend")));
                            };
                            let cancelled = status.undo == UndoStatus::Pending
                                && match status.queue_id {
                                    Some(q) => queue::cancel_pending(tx, q)?,
                                    None => false,
                                };
                            if !cancelled {
                                return Ok(Err(SetError::new("cannotUnsend")
                                    .with_description("sending has begun")));
                            }
                            status.undo = UndoStatus::Canceled;
                            for r in &mut status.recipients {
                                r.delivered = Delivery::No;
                                r.reply = "550 5.0.0 cancelled before sending".into();
                            }
                            let mut w = Writer::begin(tx, account)?;
                            queue::put_status(w.tx, account, doc, &status)?;
                            w.updated(DataType::EmailSubmission, doc);
                            w.finish()?;
                            Ok(Ok(()))
                        }
                        _ => Ok(Err(invalid(
                            "undoStatus",
                            "undoStatus may only be set to canceled",
                        ))),
                    }
                })?;
        match outcome {
            Ok(()) => {
                response.updated.insert(sid.clone(), Value::Null);
                let email_id = ctx
                    .store
                    .kv()
                    .read(|tx| object::get(tx, account, Collection::EmailSubmission, doc))?
                    .map(|b| decode(&b))
                    .and_then(|o| o.get("emailId").and_then(Value::as_str).map(str::to_owned))
                    .unwrap_or_default();
                done.push(Created {
                    key: sid.clone(),
                    email_id,
                });
            }
            Err(e) => response.not_updated(sid, e),
        }
    }
    for sid in &req.destroy {
        let Some(doc) = id::decode(Kind::Submission, sid) else {
            response.not_destroyed(sid, SetError::new("notFound"));
            continue;
        };
        let gone = ctx.store.kv().transact(|tx| {
            if object::get(tx, account, Collection::EmailSubmission, doc)?.is_none() {
                return Ok(false);
            }
            let mut w = Writer::begin(tx, account)?;
            object::destroy(
                &mut w,
                Collection::EmailSubmission,
                DataType::EmailSubmission,
                doc,
            )?;
            queue::clear_status(w.tx, account, doc)?;
            w.finish()?;
            Ok::<_, tern_store::Error>(true)
        })?;
        if gone {
            response.destroyed.push(sid.clone());
        } else {
            response.not_destroyed(sid, SetError::new("notFound"));
        }
    }
    let new = ctx.store.kv().read(|tx| state(tx, account))?;
    // The implicit Email/set.
    let mut update = Map::new();
    for (key, patch) in &on_update {
        if let Some(c) = done.iter().find(|c| &c.key == key) {
            update.insert(c.email_id.clone(), patch.clone());
        }
    }
    let destroy: Vec<String> = on_destroy
        .iter()
        .filter_map(|key| done.iter().find(|c| &c.key == key))
        .map(|c| c.email_id.clone())
        .collect();
    let implicit = (!update.is_empty() || !destroy.is_empty()).then(|| {
        let mut a = Map::new();
        a.insert("accountId".into(), json!(id::account_id(account)));
        if !update.is_empty() {
            a.insert("update".into(), Value::Object(update));
        }
        if !destroy.is_empty() {
            a.insert("destroy".into(), json!(destroy));
        }
        a
    });
    Ok((
        response.into_arguments(account, Some(id::state(old)), id::state(new)),
        implicit,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bcc_is_removed_with_its_continuation_lines() {
        let raw =
            b"From: a@x\r\nBcc: secret@y,\r\n  other@z\r\nTo: b@y\r\n\r\nBcc: in body stays\r\n";
        assert_eq!(
            without_bcc(raw),
            b"From: a@x\r\nTo: b@y\r\n\r\nBcc: in body stays\r\n"
        );
    }

    #[test]
    fn identities_allow_their_address_or_their_domain() {
        assert!(identity_allows("A@x.test", "a@X.test"));
        assert!(!identity_allows("a@x.test", "b@x.test"));
        assert!(identity_allows("*@x.test", "b@x.test"));
        assert!(!identity_allows("*@x.test", "b@y.test"));
    }
}
