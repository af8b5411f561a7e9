//! Email/query (RFC 8621 section 4.4) and Email/queryChanges (section
//! 4.5).
//!
//! The common listing — a mailbox (optionally without `$seen`), or every
//! email, newest first — is read from the date indexes: one range read of
//! index keys for the page, no metadata read unless threads are collapsed
//! (then metadata of the emails up to the end of the page). Every other
//! query reads the metadata of the candidate emails (the mailbox's when
//! the filter requires one, else the account's), filters and sorts in
//! memory.
//!
//! Text conditions (`text`, `from`, `to`, `cc`, `bcc`, `subject`, `body`,
//! `header`, and `attachmentName`, an extension: attachment file names)
//! are answered by the search index (`tern-search`). Before the query's
//! snapshot is taken, the query waits (bounded by the index's
//! `query_wait`, `[search] query_wait_ms`) until the index reflects the
//! account's current Email state: read your writes, without holding a
//! transaction open while waiting. Inside the snapshot each text condition
//! is evaluated to the set of matching ids, which then takes part in
//! AND/OR/NOT like any other condition. When the top-level conjunction
//! holds text conditions, only their matches are read as candidates; and
//! when the rest of it is what a date index answers (a mailbox, not
//! `$seen`, newest first), the matches are ordered by the receivedAt the
//! search index recorded for each (read block by block, latest first) and
//! the newest confirmed with one point read each of the date index
//! ([`dated_page`]), or else that index is walked for the first matches,
//! as long as that is cheaper ([`text_page`]).
//!
//! A query's state is the Email state. Email/queryChanges recomputes the
//! result and reports every email created, updated or destroyed since the
//! old state (and, when threads matter, every email of a thread that
//! changed) as removed and re-added at its new index: exact for any
//! filter, since mailboxes and keywords are mutable.

use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};

use serde_json::{Map, Value, json};
use tern_search::{RoaringBitmap, SearchIndex, TextField};
use tern_store::email::{self, EmailMeta, Listing};
use tern_store::kv::Transaction;
use tern_store::{AccountId, DataType, DocumentId, MailStore, changes, mailbox};

use super::{Fail, dates};
use crate::args::{self, Window};
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult};

/// A filter (RFC 8620 section 5.5: FilterOperator | FilterCondition).
#[derive(Debug, Clone, PartialEq)]
enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Vec<Filter>),
    /// A FilterCondition: all of its properties must hold.
    Cond(Vec<Cond>),
}

/// One property of a FilterCondition (RFC 8621 section 4.4.1).
#[derive(Debug, Clone, PartialEq)]
enum Cond {
    /// `None`: an id that names no mailbox (matches nothing).
    InMailbox(Option<DocumentId>),
    InMailboxOtherThan(Vec<DocumentId>),
    /// receivedAt before, in milliseconds.
    Before(i64),
    /// receivedAt at or after, in milliseconds.
    After(i64),
    MinSize(u64),
    MaxSize(u64),
    AllInThreadHaveKeyword(String),
    SomeInThreadHaveKeyword(String),
    NoneInThreadHaveKeyword(String),
    HasKeyword(String),
    NotKeyword(String),
    HasAttachment(bool),
    /// A text condition (`text`, `from`, `to`, `cc`, `bcc`, `subject`,
    /// `body`, `header`, `attachmentName`), answered by the search index:
    /// `hits` holds its matches once [`Filter::resolve_text`] ran.
    Text {
        query: tern_search::Query,
        hits: Option<RoaringBitmap>,
    },
}

impl Cond {
    fn needs_threads(&self) -> bool {
        matches!(
            self,
            Cond::AllInThreadHaveKeyword(_)
                | Cond::SomeInThreadHaveKeyword(_)
                | Cond::NoneInThreadHaveKeyword(_)
        )
    }
}

impl Filter {
    fn needs_threads(&self) -> bool {
        match self {
            Filter::And(f) | Filter::Or(f) | Filter::Not(f) => f.iter().any(Filter::needs_threads),
            Filter::Cond(c) => c.iter().any(Cond::needs_threads),
        }
    }

    /// The conditions, when the filter is a conjunction of conditions.
    fn conjunction(&self) -> Option<Vec<&Cond>> {
        match self {
            Filter::Cond(c) => Some(c.iter().collect()),
            Filter::And(children) => {
                let mut out = Vec::new();
                for c in children {
                    out.extend(c.conjunction()?);
                }
                Some(out)
            }
            _ => None,
        }
    }

    /// Whether any condition needs the search index.
    fn has_text(&self) -> bool {
        match self {
            Filter::And(f) | Filter::Or(f) | Filter::Not(f) => f.iter().any(Filter::has_text),
            Filter::Cond(c) => c.iter().any(|c| matches!(c, Cond::Text { .. })),
        }
    }

    /// The text conditions, for filling in their matches.
    fn text_conds(&mut self) -> Vec<&mut Cond> {
        match self {
            Filter::And(f) | Filter::Or(f) | Filter::Not(f) => {
                f.iter_mut().flat_map(Filter::text_conds).collect()
            }
            Filter::Cond(c) => c
                .iter_mut()
                .filter(|c| matches!(c, Cond::Text { .. }))
                .collect(),
        }
    }

    /// Evaluates every text condition with the search index; the
    /// non-text conditions are then matched as usual, under the same
    /// AND/OR/NOT.
    fn resolve_text(&mut self, store: &MailStore, account: AccountId) -> Result<(), Fail> {
        if !self.has_text() {
            return Ok(());
        }
        let index = SearchIndex::for_store(store).map_err(search_fail)?;
        for cond in self.text_conds() {
            if let Cond::Text { query, hits } = cond {
                *hits = Some(index.search(store, account, query).map_err(search_fail)?);
            }
        }
        Ok(())
    }

    /// The matches every result must be among: the intersection of the
    /// text conditions of the top-level conjunction, once resolved.
    fn required_hits(&self) -> Option<RoaringBitmap> {
        let mut out: Option<RoaringBitmap> = None;
        for c in self.conjunction()? {
            if let Cond::Text { hits: Some(h), .. } = c {
                out = Some(match out {
                    None => h.clone(),
                    Some(o) => o & h,
                });
            }
        }
        out
    }

    /// The text conditions as a search query (for SearchSnippet/get):
    /// every other condition stands for "all".
    fn to_search_query(&self) -> tern_search::Query {
        use tern_search::Query as Q;
        let all = |f: &[Filter]| f.iter().map(Filter::to_search_query).collect();
        match self {
            Filter::And(f) => Q::And(all(f)),
            Filter::Or(f) => Q::Or(all(f)),
            Filter::Not(f) => Q::Not(all(f)),
            Filter::Cond(c) => Q::And(
                c.iter()
                    .map(|c| match c {
                        Cond::Text { query, .. } => query.clone(),
                        _ => Q::All,
                    })
                    .collect(),
            ),
        }
    }

    /// A mailbox every match must be in (from a top-level inMailbox).
    fn required_mailbox(&self) -> Option<Option<DocumentId>> {
        match self {
            Filter::Cond(c) => c.iter().find_map(|c| match c {
                Cond::InMailbox(m) => Some(*m),
                _ => None,
            }),
            Filter::And(children) => children.iter().find_map(Filter::required_mailbox),
            _ => None,
        }
    }
}

fn keyword_arg(v: &Value, name: &str) -> Result<String, MethodError> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(s.to_lowercase()),
        _ => Err(MethodError::invalid_arguments(format!(
            "{name} must be a keyword"
        ))),
    }
}

fn mailbox_arg(ctx: &Ctx<'_>, v: &Value, name: &str) -> Result<Option<DocumentId>, MethodError> {
    match v {
        Value::String(s) => Ok(id::decode(Kind::Mailbox, &args::resolve_ref(ctx, s))),
        _ => Err(MethodError::invalid_arguments(format!(
            "{name} must be a mailbox id"
        ))),
    }
}

fn date_arg(v: &Value, name: &str) -> Result<i64, MethodError> {
    v.as_str()
        .and_then(dates::parse_rfc3339)
        .map(|d| d.unix_millis())
        .ok_or_else(|| MethodError::invalid_arguments(format!("{name} must be a UTCDate")))
}

fn uint_arg(v: &Value, name: &str) -> Result<u64, MethodError> {
    v.as_u64().ok_or_else(|| {
        MethodError::invalid_arguments(format!("{name} must be a non-negative integer"))
    })
}

fn search_fail(e: tern_search::Error) -> Fail {
    match e {
        tern_search::Error::InvalidQuery(d) => Fail::Method(MethodError::invalid_arguments(d)),
        e => {
            tracing::error!(error = %e, "search index error in Email/query");
            Fail::Method(MethodError::ServerFail(e.to_string()))
        }
    }
}

fn text_arg(v: &Value, name: &str) -> Result<String, MethodError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(MethodError::invalid_arguments(format!(
            "{name} must be a string"
        ))),
    }
}

/// `header`: `[name]` or `[name, text]` (RFC 8621 section 4.4.1).
fn header_arg(v: &Value) -> Result<tern_search::Query, MethodError> {
    let invalid =
        || MethodError::invalid_arguments("header must be an array of one or two strings");
    let Value::Array(items) = v else {
        return Err(invalid());
    };
    let strings: Vec<&str> = items
        .iter()
        .map(Value::as_str)
        .collect::<Option<_>>()
        .ok_or_else(invalid)?;
    match strings.as_slice() {
        [name] if !name.trim().is_empty() => Ok(tern_search::Query::Header(name.to_string(), None)),
        [name, text] if !name.trim().is_empty() => Ok(tern_search::Query::Header(
            name.to_string(),
            Some(text.to_string()),
        )),
        _ => Err(invalid()),
    }
}

fn parse_filter(ctx: &Ctx<'_>, v: &Value, depth: usize) -> Result<Filter, MethodError> {
    if depth > 32 {
        return Err(MethodError::invalid_arguments("filter nested too deeply"));
    }
    let Value::Object(m) = v else {
        return Err(MethodError::invalid_arguments("a filter must be an object"));
    };
    if let Some(op) = m.get("operator") {
        args::allow_only(m, &["operator", "conditions"])?;
        let Some(Value::Array(conds)) = m.get("conditions") else {
            return Err(MethodError::invalid_arguments(
                "a FilterOperator needs conditions",
            ));
        };
        let children = conds
            .iter()
            .map(|c| parse_filter(ctx, c, depth + 1))
            .collect::<Result<Vec<_>, _>>()?;
        return match op.as_str() {
            Some("AND") => Ok(Filter::And(children)),
            Some("OR") => Ok(Filter::Or(children)),
            Some("NOT") => Ok(Filter::Not(children)),
            _ => Err(MethodError::invalid_arguments(
                "operator must be AND, OR or NOT",
            )),
        };
    }
    let mut conds = Vec::new();
    for (k, v) in m {
        let c = match k.as_str() {
            "inMailbox" => Cond::InMailbox(mailbox_arg(ctx, v, k)?),
            "inMailboxOtherThan" => {
                let Value::Array(ids) = v else {
                    return Err(MethodError::invalid_arguments(
                        "inMailboxOtherThan must be an array of ids",
                    ));
                };
                let mut out = Vec::new();
                for i in ids {
                    out.extend(mailbox_arg(ctx, i, k)?);
                }
                Cond::InMailboxOtherThan(out)
            }
            "before" => Cond::Before(date_arg(v, k)?),
            "after" => Cond::After(date_arg(v, k)?),
            "minSize" => Cond::MinSize(uint_arg(v, k)?),
            "maxSize" => Cond::MaxSize(uint_arg(v, k)?),
            "allInThreadHaveKeyword" => Cond::AllInThreadHaveKeyword(keyword_arg(v, k)?),
            "someInThreadHaveKeyword" => Cond::SomeInThreadHaveKeyword(keyword_arg(v, k)?),
            "noneInThreadHaveKeyword" => Cond::NoneInThreadHaveKeyword(keyword_arg(v, k)?),
            "hasKeyword" => Cond::HasKeyword(keyword_arg(v, k)?),
            "notKeyword" => Cond::NotKeyword(keyword_arg(v, k)?),
            "hasAttachment" => match v {
                Value::Bool(b) => Cond::HasAttachment(*b),
                _ => {
                    return Err(MethodError::invalid_arguments(
                        "hasAttachment must be a boolean",
                    ));
                }
            },
            "text" | "from" | "to" | "cc" | "bcc" | "subject" | "body" | "attachmentName" => {
                let field = match k.as_str() {
                    "text" => TextField::Text,
                    "from" => TextField::From,
                    "to" => TextField::To,
                    "cc" => TextField::Cc,
                    "bcc" => TextField::Bcc,
                    "subject" => TextField::Subject,
                    "attachmentName" => TextField::AttachmentName,
                    _ => TextField::Body,
                };
                Cond::Text {
                    query: tern_search::Query::Text(field, text_arg(v, k)?),
                    hits: None,
                }
            }
            "header" => Cond::Text {
                query: header_arg(v)?,
                hits: None,
            },
            other => {
                return Err(MethodError::UnsupportedFilter(format!(
                    "unknown filter property {other:?}"
                )));
            }
        };
        conds.push(c);
    }
    Ok(Filter::Cond(conds))
}

/// The text conditions of an Email/query filter as a search query, for
/// SearchSnippet/get: parsed and validated as Email/query does; `None`
/// for a null filter.
pub(crate) fn snippet_query(
    ctx: &Ctx<'_>,
    filter: Option<&Value>,
) -> Result<Option<tern_search::Query>, MethodError> {
    match filter {
        None | Some(Value::Null) => Ok(None),
        Some(f) => Ok(Some(parse_filter(ctx, f, 0)?.to_search_query())),
    }
}

/// A sort property (RFC 8621 section 4.4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
enum SortKey {
    ReceivedAt,
    Size,
    From,
    To,
    Subject,
    SentAt,
    HasKeyword(String),
    AllInThreadHaveKeyword(String),
    SomeInThreadHaveKeyword(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collation {
    AsciiCasemap,
    UnicodeCasemap,
}

impl Collation {
    fn fold(self, s: &str) -> String {
        match self {
            Collation::AsciiCasemap => s.to_ascii_lowercase(),
            Collation::UnicodeCasemap => s.to_lowercase(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Comparator {
    key: SortKey,
    ascending: bool,
    collation: Collation,
}

fn parse_sort(v: Option<&Value>) -> Result<Vec<Comparator>, MethodError> {
    let items = match v {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(MethodError::invalid_arguments("sort must be an array")),
    };
    let mut out = Vec::new();
    for item in items {
        let Some(c) = item.as_object() else {
            return Err(MethodError::invalid_arguments(
                "a comparator must be an object",
            ));
        };
        args::allow_only(c, &["property", "isAscending", "collation", "keyword"])?;
        let Some(property) = c.get("property").and_then(Value::as_str) else {
            return Err(MethodError::invalid_arguments(
                "a comparator needs a property",
            ));
        };
        let ascending = args::bool_arg(c, "isAscending", true)?;
        let collation = match c.get("collation") {
            None | Some(Value::Null) => Collation::UnicodeCasemap,
            Some(Value::String(s)) if s == "i;ascii-casemap" => Collation::AsciiCasemap,
            Some(Value::String(s)) if s == "i;unicode-casemap" => Collation::UnicodeCasemap,
            Some(Value::String(_)) => return Err(MethodError::UnsupportedSort),
            Some(_) => {
                return Err(MethodError::invalid_arguments("collation must be a string"));
            }
        };
        let keyword = || -> Result<String, MethodError> {
            match c.get("keyword") {
                Some(v) => keyword_arg(v, "keyword"),
                None => Err(MethodError::invalid_arguments(format!(
                    "sorting by {property} needs a keyword"
                ))),
            }
        };
        let key = match property {
            "receivedAt" => SortKey::ReceivedAt,
            "size" => SortKey::Size,
            "from" => SortKey::From,
            "to" => SortKey::To,
            "subject" => SortKey::Subject,
            "sentAt" => SortKey::SentAt,
            "hasKeyword" => SortKey::HasKeyword(keyword()?),
            "allInThreadHaveKeyword" => SortKey::AllInThreadHaveKeyword(keyword()?),
            "someInThreadHaveKeyword" => SortKey::SomeInThreadHaveKeyword(keyword()?),
            _ => return Err(MethodError::UnsupportedSort),
        };
        out.push(Comparator {
            key,
            ascending,
            collation,
        });
    }
    Ok(out)
}

/// A parsed query: filter, sort and thread collapsing.
#[derive(Debug, Clone)]
struct Spec {
    filter: Option<Filter>,
    sort: Vec<Comparator>,
    collapse: bool,
}

impl Spec {
    fn parse(ctx: &Ctx<'_>, args: &Arguments) -> Result<Spec, MethodError> {
        let filter = match args.get("filter") {
            None | Some(Value::Null) => None,
            Some(f) => Some(parse_filter(ctx, f, 0)?),
        };
        let mut sort = parse_sort(args.get("sort"))?;
        if sort.is_empty() {
            // The server's order when the client gives none: newest first.
            sort.push(Comparator {
                key: SortKey::ReceivedAt,
                ascending: false,
                collation: Collation::UnicodeCasemap,
            });
        }
        Ok(Spec {
            filter,
            sort,
            collapse: args::bool_arg(args, "collapseThreads", false)?,
        })
    }

    /// Evaluates the filter's text conditions ([`Filter::resolve_text`]).
    fn resolve_text(&mut self, store: &MailStore, account: AccountId) -> Result<(), Fail> {
        match &mut self.filter {
            Some(f) => f.resolve_text(store, account),
            None => Ok(()),
        }
    }

    /// Read your writes: when the filter has text conditions, waits
    /// (bounded by the index's `query_wait`) until the search index
    /// reflects the account's Email state as of now, so that a query sees
    /// every email created or destroyed before it was made. Called before
    /// the query's snapshot is taken, so no transaction stays open while
    /// waiting. On time-out the query answers from the index as it is.
    fn wait_for_index(&self, store: &MailStore, account: AccountId) -> Result<(), Fail> {
        if !self.filter.as_ref().is_some_and(Filter::has_text) {
            return Ok(());
        }
        let index = SearchIndex::for_store(store).map_err(search_fail)?;
        let state = store
            .kv()
            .read(|tx| changes::state(tx, account, DataType::Email))?;
        let caught_up = index
            .wait_caught_up(store, account, state, index.query_wait())
            .map_err(search_fail)?;
        if !caught_up {
            tracing::debug!(
                account = account.0,
                "search index behind; answering from it as it is"
            );
        }
        Ok(())
    }

    /// The date index that a query with text conditions walks instead of
    /// reading every match ([`text_page`]): newest first, threads not
    /// collapsed, and a filter that is a conjunction of text conditions
    /// with at most one mailbox and "not `$seen`" (what
    /// [`Spec::index_listing`] takes).
    fn text_listing(&self) -> Option<Listing> {
        let newest_first = self.sort.len() == 1
            && self.sort[0].key == SortKey::ReceivedAt
            && !self.sort[0].ascending;
        if !newest_first || self.collapse {
            return None;
        }
        let mut mailbox = None;
        let mut unseen = false;
        let mut text = false;
        for c in self.filter.as_ref()?.conjunction()? {
            match c {
                Cond::Text { .. } => text = true,
                Cond::InMailbox(Some(m)) if mailbox.is_none() => mailbox = Some(*m),
                Cond::NotKeyword(k) if k == email::SEEN && !unseen => unseen = true,
                _ => return None,
            }
        }
        match (text, mailbox, unseen) {
            (false, _, _) | (true, None, true) => None,
            (true, None, false) => Some(Listing::All),
            (true, Some(m), false) => Some(Listing::Mailbox(m)),
            (true, Some(m), true) => Some(Listing::MailboxUnseen(m)),
        }
    }

    /// Whether matching or ordering an email depends on the other emails
    /// of its thread.
    fn needs_threads(&self) -> bool {
        self.filter.as_ref().is_some_and(Filter::needs_threads)
            || self.sort.iter().any(|c| {
                matches!(
                    c.key,
                    SortKey::AllInThreadHaveKeyword(_) | SortKey::SomeInThreadHaveKeyword(_)
                )
            })
    }

    /// The date index that answers this query directly, if one does:
    /// every email, a mailbox, or a mailbox without `$seen`, newest first.
    fn index_listing(&self) -> Option<Option<Listing>> {
        let newest_first = self.sort.len() == 1
            && self.sort[0].key == SortKey::ReceivedAt
            && !self.sort[0].ascending;
        if !newest_first {
            return None;
        }
        let Some(filter) = &self.filter else {
            return Some(Some(Listing::All));
        };
        let conds = filter.conjunction()?;
        let mut mailbox = None;
        let mut unseen = false;
        for c in conds {
            match c {
                Cond::InMailbox(m) if mailbox.is_none() => mailbox = Some(*m),
                Cond::NotKeyword(k) if k == email::SEEN && !unseen => unseen = true,
                _ => return None,
            }
        }
        match (mailbox, unseen) {
            (None, false) => Some(Some(Listing::All)),
            (None, true) => None,
            // A mailbox id that names nothing: the result is empty.
            (Some(None), _) => Some(None),
            (Some(Some(m)), false) => Some(Some(Listing::Mailbox(m))),
            (Some(Some(m)), true) => Some(Some(Listing::MailboxUnseen(m))),
        }
    }
}

/// Thread id → the keywords of each of its emails.
type Threads = HashMap<DocumentId, Vec<Vec<String>>>;

fn has(keywords: &[String], k: &str) -> bool {
    keywords.iter().any(|x| x == k)
}

fn thread_keywords<'a>(threads: &'a Threads, meta: &'a EmailMeta) -> Vec<&'a [String]> {
    match threads.get(&meta.thread_id) {
        Some(list) => list.iter().map(Vec::as_slice).collect(),
        None => vec![meta.keywords.as_slice()],
    }
}

fn cond_matches(c: &Cond, id: DocumentId, meta: &EmailMeta, threads: &Threads) -> bool {
    match c {
        Cond::InMailbox(m) => m.is_some_and(|m| meta.mailbox_ids.contains(&m)),
        Cond::InMailboxOtherThan(ids) => meta.mailbox_ids.iter().any(|m| !ids.contains(m)),
        Cond::Before(ms) => meta.received_at.saturating_mul(1000) < *ms,
        Cond::After(ms) => meta.received_at.saturating_mul(1000) >= *ms,
        Cond::MinSize(n) => meta.size >= *n,
        Cond::MaxSize(n) => meta.size < *n,
        Cond::AllInThreadHaveKeyword(k) => {
            thread_keywords(threads, meta).iter().all(|kw| has(kw, k))
        }
        Cond::SomeInThreadHaveKeyword(k) => {
            thread_keywords(threads, meta).iter().any(|kw| has(kw, k))
        }
        Cond::NoneInThreadHaveKeyword(k) => {
            !thread_keywords(threads, meta).iter().any(|kw| has(kw, k))
        }
        Cond::HasKeyword(k) => meta.has_keyword(k),
        Cond::NotKeyword(k) => !meta.has_keyword(k),
        Cond::HasAttachment(b) => meta.envelope.has_attachment == *b,
        Cond::Text { hits, .. } => hits.as_ref().is_some_and(|h| h.contains(id)),
    }
}

fn matches(f: &Filter, id: DocumentId, meta: &EmailMeta, threads: &Threads) -> bool {
    match f {
        Filter::And(c) => c.iter().all(|f| matches(f, id, meta, threads)),
        Filter::Or(c) => c.iter().any(|f| matches(f, id, meta, threads)),
        Filter::Not(c) => !c.iter().any(|f| matches(f, id, meta, threads)),
        Filter::Cond(c) => c.iter().all(|c| cond_matches(c, id, meta, threads)),
    }
}

/// A precomputed sort value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SortValue {
    Int(i64, i64),
    Bool(bool),
    Text(String),
}

fn first_address(list: &[tern_store::parse::EmailAddress]) -> &str {
    list.first()
        .map(|a| match a.name.as_deref() {
            Some(n) if !n.is_empty() => n,
            _ => a.email.as_str(),
        })
        .unwrap_or("")
}

fn sort_value(c: &Comparator, id: DocumentId, meta: &EmailMeta, threads: &Threads) -> SortValue {
    let env = &meta.envelope;
    match &c.key {
        // Ties on the date are ordered by id, as in the date indexes.
        SortKey::ReceivedAt => SortValue::Int(meta.received_at, id as i64),
        SortKey::Size => SortValue::Int(meta.size as i64, 0),
        SortKey::From => SortValue::Text(c.collation.fold(first_address(&env.from))),
        SortKey::To => SortValue::Text(c.collation.fold(first_address(&env.to))),
        SortKey::Subject => SortValue::Text(c.collation.fold(&env.base_subject)),
        SortKey::SentAt => SortValue::Int(env.sent_at.map_or(i64::MIN, |d| d.unix), 0),
        SortKey::HasKeyword(k) => SortValue::Bool(meta.has_keyword(k)),
        SortKey::AllInThreadHaveKeyword(k) => {
            SortValue::Bool(thread_keywords(threads, meta).iter().all(|kw| has(kw, k)))
        }
        SortKey::SomeInThreadHaveKeyword(k) => {
            SortValue::Bool(thread_keywords(threads, meta).iter().any(|kw| has(kw, k)))
        }
    }
}

/// Every result of a query, in order: (email, thread).
fn full_results(
    tx: &mut Transaction<'_>,
    account: AccountId,
    spec: &Spec,
) -> Result<Vec<(DocumentId, DocumentId)>, Fail> {
    let needs_threads = spec.needs_threads();
    let required = spec.filter.as_ref().and_then(Filter::required_mailbox);
    let hits = spec.filter.as_ref().and_then(Filter::required_hits);
    let candidates: Vec<(DocumentId, EmailMeta)> = match required {
        Some(None) => Vec::new(),
        // Text conditions every result must meet: only their matches are
        // candidates (thread conditions need every email of a thread).
        _ if hits.is_some() && !needs_threads => {
            let mut out = Vec::new();
            for i in hits.iter().flatten() {
                if let Some(meta) = email::get(tx, account, i)? {
                    out.push((i, meta));
                }
            }
            out
        }
        Some(Some(m)) if !needs_threads => {
            let mut out = Vec::new();
            for (_, i) in
                email::list_by_date(tx, account, Listing::Mailbox(m), true, None, usize::MAX)?
            {
                if let Some(meta) = email::get(tx, account, i)? {
                    out.push((i, meta));
                }
            }
            out
        }
        _ => {
            let mut out: Vec<(DocumentId, EmailMeta)> = Vec::new();
            loop {
                let after = out.last().map(|(i, _)| *i);
                let page = email::list_metas(tx, account, after, 1000)?;
                let done = page.len() < 1000;
                out.extend(page);
                if done {
                    break;
                }
            }
            out
        }
    };
    let mut threads: Threads = HashMap::new();
    if needs_threads {
        for (_, meta) in &candidates {
            threads
                .entry(meta.thread_id)
                .or_default()
                .push(meta.keywords.clone());
        }
    }
    let mut rows: Vec<(Vec<SortValue>, DocumentId, DocumentId)> = candidates
        .iter()
        .filter(|(i, meta)| {
            spec.filter
                .as_ref()
                .is_none_or(|f| matches(f, *i, meta, &threads))
        })
        .map(|(i, meta)| {
            let values = spec
                .sort
                .iter()
                .map(|c| sort_value(c, *i, meta, &threads))
                .collect();
            (values, *i, meta.thread_id)
        })
        .collect();
    rows.sort_by(|a, b| {
        for (k, c) in spec.sort.iter().enumerate() {
            let o = a.0[k].cmp(&b.0[k]);
            let o = if c.ascending { o } else { o.reverse() };
            if o != Ordering::Equal {
                return o;
            }
        }
        b.1.cmp(&a.1)
    });
    let mut seen = HashSet::new();
    Ok(rows
        .into_iter()
        .filter(|r| !spec.collapse || seen.insert(r.2))
        .map(|r| (r.1, r.2))
        .collect())
}

/// A page read from a date index: (ids, position, total if counted).
fn index_page(
    tx: &mut Transaction<'_>,
    account: AccountId,
    listing: Listing,
    collapse: bool,
    w: &Window,
) -> Result<(Vec<DocumentId>, usize, Option<usize>), Fail> {
    let start = usize::try_from(w.position).unwrap_or(usize::MAX);
    let end = start.saturating_add(w.limit);
    if !collapse {
        let keys = email::list_by_date(tx, account, listing, true, None, end)?;
        let position = start.min(keys.len());
        let ids = keys[position..].iter().map(|&(_, i)| i).collect();
        let total = if !w.calculate_total {
            None
        } else if keys.len() < end {
            Some(keys.len())
        } else {
            Some(match listing {
                Listing::Mailbox(m) => mailbox::counts(tx, account, m)?.total_emails as usize,
                _ => email::list_by_date(tx, account, listing, true, None, usize::MAX)?.len(),
            })
        };
        return Ok((ids, position, total));
    }
    // Collapsed: walk the index until the page holds `end` threads (and,
    // for a total that no counter holds, to the end).
    let counted_total = match (w.calculate_total, listing) {
        (true, Listing::Mailbox(m)) => {
            Some(mailbox::counts(tx, account, m)?.total_threads as usize)
        }
        _ => None,
    };
    let walk_all = w.calculate_total && counted_total.is_none();
    let mut seen = HashSet::new();
    let mut ids = Vec::new();
    let mut distinct = 0usize;
    let mut cursor = None;
    loop {
        let page = email::list_by_date(tx, account, listing, true, cursor, 256)?;
        for &(t, i) in &page {
            cursor = Some((t, i));
            let Some(meta) = email::get(tx, account, i)? else {
                continue;
            };
            if seen.insert(meta.thread_id) {
                if distinct >= start && distinct < end {
                    ids.push(i);
                }
                distinct += 1;
            }
        }
        if page.len() < 256 || (!walk_all && distinct >= end) {
            break;
        }
    }
    let exhausted = distinct < end || walk_all;
    let total = if !w.calculate_total {
        None
    } else if exhausted {
        Some(distinct)
    } else {
        counted_total
    };
    Ok((ids, start.min(distinct), total))
}

/// A page of results: ids, position, total when counted.
type Page = (Vec<DocumentId>, usize, Option<usize>);

/// Keys of a date index walked per text match before [`text_page`] gives
/// up (reading a key costs a fraction of reading an email's metadata).
const WALK_PER_HIT: u64 = 16;
/// Keys walked at least.
const WALK_MIN: u64 = 256;
/// Keys read per range read of the walk.
const WALK_PAGE: usize = 256;

/// A page of a text query answered from a date index: walks `listing`
/// newest first keeping the emails among `hits` (the text matches), until
/// the window is full (and, for a total, to the end). Cheap when matches
/// are common, where reading and sorting the metadata of every match is
/// not; when they are rare, gives up (`None`: read the matches instead)
/// after [`WALK_PER_HIT`] keys per match. The order is the date index's,
/// the same as sorting by receivedAt (ties by id), newest first.
fn text_page(
    tx: &mut Transaction<'_>,
    account: AccountId,
    listing: Listing,
    hits: &RoaringBitmap,
    w: &Window,
) -> Result<Option<Page>, Fail> {
    let start = usize::try_from(w.position).unwrap_or(usize::MAX);
    let end = start.saturating_add(w.limit);
    let budget = hits
        .len()
        .saturating_mul(WALK_PER_HIT)
        .saturating_add(WALK_MIN);
    let (mut walked, mut matched) = (0u64, 0usize);
    let mut ids = Vec::new();
    let mut cursor = None;
    loop {
        if walked >= budget {
            return Ok(None);
        }
        let page = email::list_by_date(tx, account, listing, true, cursor, WALK_PAGE)?;
        walked += page.len() as u64;
        for &(at, i) in &page {
            cursor = Some((at, i));
            if !hits.contains(i) {
                continue;
            }
            if matched >= start && matched < end {
                ids.push(i);
            }
            matched += 1;
            if matched >= end && !w.calculate_total {
                return Ok(Some((ids, start, None)));
            }
        }
        if page.len() < WALK_PAGE {
            let total = w.calculate_total.then_some(matched);
            return Ok(Some((ids, start.min(matched), total)));
        }
    }
}

/// Date-index keys [`dated_page`] may find missing (matches destroyed
/// since they were indexed, or outside the mailbox) per result of the
/// window, beyond [`DATED_MISSES_MIN`], before it gives up.
const DATED_MISSES_PER_RESULT: usize = 4;
/// Missing date-index keys [`dated_page`] tolerates at least.
const DATED_MISSES_MIN: usize = 256;

/// A page of a text query ordered by the receivedAt the search index
/// recorded for each match ([`SearchIndex::date_order`], which reads its
/// dates block by block, latest first): each match, newest first, is
/// confirmed with one point read of `listing`'s date index key (it still
/// exists, is in the mailbox, and has that date: receivedAt is
/// immutable), until the window is full. The order and the ids are those
/// [`text_page`] finds by walking the date index. `None` (use
/// [`text_page`]) for a total (counting needs every match confirmed),
/// when a match has no recorded date, or when too many matches are not in
/// `listing`.
fn dated_page(
    tx: &mut Transaction<'_>,
    store: &MailStore,
    account: AccountId,
    listing: Listing,
    hits: &RoaringBitmap,
    w: &Window,
) -> Result<Option<Page>, Fail> {
    if w.calculate_total {
        return Ok(None);
    }
    let index = SearchIndex::for_store(store).map_err(search_fail)?;
    let Some(mut order) = index.date_order(account, hits).map_err(search_fail)? else {
        return Ok(None);
    };
    let start = usize::try_from(w.position).unwrap_or(usize::MAX);
    let end = start.saturating_add(w.limit);
    let budget = end
        .saturating_mul(DATED_MISSES_PER_RESULT)
        .saturating_add(DATED_MISSES_MIN);
    let (mut ids, mut matched, mut missed) = (Vec::new(), 0usize, 0usize);
    while let Some((id, at)) = order.next_dated().map_err(search_fail)? {
        if !email::in_listing(tx, account, listing, (at, id))? {
            missed += 1;
            if missed > budget {
                return Ok(None);
            }
            continue;
        }
        if matched >= start && matched < end {
            ids.push(id);
        }
        matched += 1;
        if matched >= end {
            return Ok(Some((ids, start, None)));
        }
    }
    if order.missing_date() {
        return Ok(None);
    }
    Ok(Some((ids, start.min(matched), None)))
}

fn query_state(tx: &mut Transaction<'_>, account: AccountId) -> Result<u64, Fail> {
    Ok(changes::state(tx, account, DataType::Email)?)
}

/// Email/query.
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
            "collapseThreads",
        ],
    )?;
    let account = ctx.account(&args)?;
    let mut spec = Spec::parse(ctx, &args)?;
    let window = args::parse_window(ctx, &args)?;
    let store = ctx.store;
    spec.wait_for_index(store, account)?;
    let out = store.kv().read(|tx| -> Result<Arguments, Fail> {
        let state = query_state(tx, account)?;
        spec.resolve_text(store, account)?;
        let simple = window.anchor.is_none() && window.position >= 0;
        let page = match spec.index_listing().filter(|_| simple) {
            Some(Some(l)) => Some(index_page(tx, account, l, spec.collapse, &window)?),
            Some(None) => Some((Vec::new(), 0, Some(0))),
            None => match (
                spec.text_listing().filter(|_| simple),
                spec.filter.as_ref().and_then(Filter::required_hits),
            ) {
                (Some(l), Some(hits)) => match dated_page(tx, store, account, l, &hits, &window)? {
                    Some(page) => Some(page),
                    None => text_page(tx, account, l, &hits, &window)?,
                },
                _ => None,
            },
        };
        let mut out = match page {
            Some((ids, position, total)) => {
                let mut out = Map::new();
                out.insert("accountId".into(), json!(id::account_id(account)));
                out.insert("position".into(), json!(position));
                out.insert(
                    "ids".into(),
                    Value::Array(
                        ids.into_iter()
                            .map(|i| json!(id::encode(Kind::Email, i)))
                            .collect(),
                    ),
                );
                if window.calculate_total {
                    out.insert("total".into(), json!(total.unwrap_or(0)));
                }
                if window.limit_clamped {
                    out.insert("limit".into(), json!(window.limit));
                }
                out
            }
            None => {
                let ids: Vec<String> = full_results(tx, account, &spec)?
                    .into_iter()
                    .map(|(i, _)| id::encode(Kind::Email, i))
                    .collect();
                args::window_response(account, &ids, &window)?
            }
        };
        out.insert("queryState".into(), json!(id::state(state)));
        out.insert("canCalculateChanges".into(), json!(true));
        Ok(out)
    })?;
    Ok(out)
}

/// Email/queryChanges.
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
            "collapseThreads",
        ],
    )?;
    let account = ctx.account(&args)?;
    let mut spec = Spec::parse(ctx, &args)?;
    let since = match args.get("sinceQueryState") {
        Some(Value::String(s)) => id::parse_state(s).ok_or(MethodError::CannotCalculateChanges)?,
        _ => {
            return Err(MethodError::invalid_arguments(
                "sinceQueryState is required",
            ));
        }
    };
    let max_changes = args::opt_uint(&args, "maxChanges")?;
    args::opt_str(&args, "upToId")?;
    let calculate_total = args::bool_arg(&args, "calculateTotal", false)?;
    let store = ctx.store;
    spec.wait_for_index(store, account)?;
    let out = store.kv().read(|tx| -> Result<Arguments, Fail> {
        let state = query_state(tx, account)?;
        spec.resolve_text(store, account)?;
        let c = changes::changes(tx, account, DataType::Email, since, usize::MAX)?;
        let results = full_results(tx, account, &spec)?;
        let mut touched: HashSet<DocumentId> = c.updated.iter().copied().collect();
        touched.extend(c.destroyed.iter().copied());
        let created: HashSet<DocumentId> = c.created.iter().copied().collect();
        if spec.collapse || spec.needs_threads() {
            // Emails whose thread changed may have moved in or out even
            // though they did not change themselves.
            let mut threads: HashSet<DocumentId> = HashSet::new();
            if since < changes::state(tx, account, DataType::Thread)? {
                let t = changes::changes(tx, account, DataType::Thread, since, usize::MAX)?;
                threads.extend(t.created.iter().chain(&t.updated).chain(&t.destroyed));
            }
            for &i in c.created.iter().chain(&c.updated) {
                if let Some(meta) = email::get(tx, account, i)? {
                    threads.insert(meta.thread_id);
                }
            }
            for &(i, t) in &results {
                if threads.contains(&t) && !created.contains(&i) {
                    touched.insert(i);
                }
            }
        }
        let removed: BTreeSet<DocumentId> = touched.iter().copied().collect();
        let added: Vec<Value> = results
            .iter()
            .enumerate()
            .filter(|(_, (i, _))| touched.contains(i) || created.contains(i))
            .map(|(index, (i, _))| json!({ "id": id::encode(Kind::Email, *i), "index": index }))
            .collect();
        if let Some(max) = max_changes
            && (removed.len() + added.len()) as u64 > max
        {
            return Err(MethodError::TooManyChanges.into());
        }
        let mut out = Map::new();
        out.insert("accountId".into(), json!(id::account_id(account)));
        out.insert("oldQueryState".into(), json!(id::state(since)));
        out.insert("newQueryState".into(), json!(id::state(state)));
        out.insert(
            "removed".into(),
            Value::Array(
                removed
                    .into_iter()
                    .map(|i| json!(id::encode(Kind::Email, i)))
                    .collect(),
            ),
        );
        out.insert("added".into(), Value::Array(added));
        if calculate_total {
            out.insert("total".into(), json!(results.len()));
        }
        Ok(out)
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(filter: Option<Filter>, sort: &[(SortKey, bool)], collapse: bool) -> Spec {
        let mut sort: Vec<Comparator> = sort
            .iter()
            .map(|(key, ascending)| Comparator {
                key: key.clone(),
                ascending: *ascending,
                collation: Collation::UnicodeCasemap,
            })
            .collect();
        if sort.is_empty() {
            sort.push(Comparator {
                key: SortKey::ReceivedAt,
                ascending: false,
                collation: Collation::UnicodeCasemap,
            });
        }
        Spec {
            filter,
            sort,
            collapse,
        }
    }

    fn unseen() -> Cond {
        Cond::NotKeyword("$seen".into())
    }

    #[test]
    fn date_index_answers_the_listing_queries_only() {
        let newest = [(SortKey::ReceivedAt, false)];
        let cases: Vec<(Option<Filter>, Option<Option<Listing>>)> = vec![
            (None, Some(Some(Listing::All))),
            (Some(Filter::Cond(vec![])), Some(Some(Listing::All))),
            (
                Some(Filter::Cond(vec![Cond::InMailbox(Some(3))])),
                Some(Some(Listing::Mailbox(3))),
            ),
            (
                Some(Filter::Cond(vec![Cond::InMailbox(Some(3)), unseen()])),
                Some(Some(Listing::MailboxUnseen(3))),
            ),
            (
                Some(Filter::And(vec![
                    Filter::Cond(vec![unseen()]),
                    Filter::Cond(vec![Cond::InMailbox(Some(3))]),
                ])),
                Some(Some(Listing::MailboxUnseen(3))),
            ),
            (Some(Filter::Cond(vec![Cond::InMailbox(None)])), Some(None)),
            (Some(Filter::Cond(vec![unseen()])), None),
            (
                Some(Filter::Cond(vec![
                    Cond::InMailbox(Some(3)),
                    Cond::HasKeyword("$flagged".into()),
                ])),
                None,
            ),
            (
                Some(Filter::Cond(vec![
                    Cond::InMailbox(Some(3)),
                    Cond::InMailbox(Some(4)),
                ])),
                None,
            ),
            (
                Some(Filter::Or(vec![Filter::Cond(vec![Cond::InMailbox(Some(
                    3,
                ))])])),
                None,
            ),
            (
                Some(Filter::Not(vec![Filter::Cond(vec![Cond::InMailbox(
                    Some(3),
                )])])),
                None,
            ),
        ];
        for (filter, expected) in cases {
            let s = spec(filter.clone(), &newest, false);
            assert_eq!(s.index_listing(), expected, "{filter:?}");
            // Collapsing threads still walks the index.
            let s = spec(filter.clone(), &newest, true);
            assert_eq!(s.index_listing(), expected, "{filter:?} collapsed");
        }
        let inbox = Some(Filter::Cond(vec![Cond::InMailbox(Some(0))]));
        assert_eq!(
            spec(inbox.clone(), &[], false).index_listing(),
            Some(Some(Listing::Mailbox(0))),
            "no sort means newest first"
        );
        for other in [
            vec![(SortKey::ReceivedAt, true)],
            vec![(SortKey::Size, false)],
            vec![(SortKey::ReceivedAt, false), (SortKey::Size, false)],
        ] {
            assert_eq!(spec(inbox.clone(), &other, false).index_listing(), None);
        }
    }

    #[test]
    fn thread_dependence() {
        let s = spec(
            Some(Filter::Not(vec![Filter::Cond(vec![
                Cond::SomeInThreadHaveKeyword("$seen".into()),
            ])])),
            &[],
            false,
        );
        assert!(s.needs_threads());
        let s = spec(
            None,
            &[(SortKey::AllInThreadHaveKeyword("$seen".into()), true)],
            false,
        );
        assert!(s.needs_threads());
        let s = spec(
            Some(Filter::Cond(vec![Cond::HasKeyword("$seen".into())])),
            &[(SortKey::HasKeyword("$seen".into()), true)],
            true,
        );
        assert!(!s.needs_threads());
        assert_eq!(
            Filter::And(vec![Filter::Cond(vec![Cond::InMailbox(Some(2))])]).required_mailbox(),
            Some(Some(2))
        );
        assert_eq!(
            Filter::Or(vec![Filter::Cond(vec![Cond::InMailbox(Some(2))])]).required_mailbox(),
            None
        );
    }
}
