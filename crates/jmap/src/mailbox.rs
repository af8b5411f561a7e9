//! Mailbox/get, changes, query, queryChanges, set (RFC 8621 section 2).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value, json};
use tern_store::changes::{self, Writer};
use tern_store::email::{self, Listing};
use tern_store::mailbox::{self, Mailbox, MailboxCounts};
use tern_store::{AccountId, DataType, DocumentId, kv::Transaction};

use crate::args::{self, SetRequest, SetResponse};
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult, SetError};
use crate::session::{MAX_MAILBOX_DEPTH, MAX_MAILBOX_NAME};

/// Every Mailbox property.
pub const PROPERTIES: [&str; 11] = [
    "id",
    "name",
    "parentId",
    "role",
    "sortOrder",
    "totalEmails",
    "unreadEmails",
    "totalThreads",
    "unreadThreads",
    "myRights",
    "isSubscribed",
];

/// The properties that change with counts only (Mailbox/changes
/// updatedProperties).
pub const COUNT_PROPERTIES: [&str; 4] = [
    "totalEmails",
    "unreadEmails",
    "totalThreads",
    "unreadThreads",
];

const SERVER_SET: [&str; 6] = [
    "id",
    "totalEmails",
    "unreadEmails",
    "totalThreads",
    "unreadThreads",
    "myRights",
];

/// Roles a mailbox may have: the IANA "IMAP Mailbox Name Attributes" that
/// name a purpose, lowercase, plus `inbox` (RFC 8621 section 2).
pub const ROLES: [&str; 13] = [
    "all",
    "archive",
    "drafts",
    "flagged",
    "important",
    "inbox",
    "junk",
    "sent",
    "subscribed",
    "trash",
    "snoozed",
    "scheduled",
    "memos",
];

fn rights(m: &Mailbox) -> Value {
    let inbox = m.role.as_deref() == Some("inbox");
    json!({
        "mayReadItems": true,
        "mayAddItems": true,
        "mayRemoveItems": true,
        "maySetSeen": true,
        "maySetKeywords": true,
        "mayCreateChild": true,
        "mayRename": true,
        "mayDelete": !inbox,
        "maySubmit": true,
    })
}

/// The JSON object of a mailbox.
pub fn to_json(id: DocumentId, m: &Mailbox, c: &MailboxCounts) -> Map<String, Value> {
    let mut o = Map::new();
    o.insert("id".into(), json!(id::encode(Kind::Mailbox, id)));
    o.insert("name".into(), json!(m.name));
    o.insert(
        "parentId".into(),
        json!(m.parent_id.map(|p| id::encode(Kind::Mailbox, p))),
    );
    o.insert("role".into(), json!(m.role));
    o.insert("sortOrder".into(), json!(m.sort_order));
    o.insert("totalEmails".into(), json!(c.total_emails));
    o.insert("unreadEmails".into(), json!(c.unread_emails));
    o.insert("totalThreads".into(), json!(c.total_threads));
    o.insert("unreadThreads".into(), json!(c.unread_threads));
    o.insert("myRights".into(), rights(m));
    o.insert("isSubscribed".into(), json!(m.is_subscribed));
    o
}

fn state(tx: &mut Transaction<'_>, account: AccountId) -> tern_store::Result<u64> {
    changes::state(tx, account, DataType::Mailbox)
}

/// Mailbox/get.
pub fn get(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let req = args::parse_get(ctx, &args, &PROPERTIES, &[])?;
    let account = req.account;
    let need_counts = req
        .properties
        .as_ref()
        .is_none_or(|p| p.iter().any(|p| COUNT_PROPERTIES.contains(&p.as_str())));
    let max = ctx.limits.max_objects_in_get;
    let (st, list, not_found) = ctx.store.kv().read(|tx| {
        let st = state(tx, account)?;
        let all = mailbox::list(tx, account)?;
        let mut chosen: Vec<(DocumentId, &Mailbox)> = Vec::new();
        let mut not_found = Vec::new();
        match &req.ids {
            None => {
                if all.len() > max {
                    return Ok(Err(MethodError::RequestTooLarge));
                }
                chosen.extend(all.iter().map(|(i, m)| (*i, m)));
            }
            Some(ids) => {
                let by_id: HashMap<DocumentId, &Mailbox> =
                    all.iter().map(|(i, m)| (*i, m)).collect();
                for s in ids {
                    match id::decode(Kind::Mailbox, s).and_then(|i| by_id.get(&i).map(|m| (i, *m)))
                    {
                        Some(found) => chosen.push(found),
                        None => not_found.push(s.clone()),
                    }
                }
            }
        }
        let mut list = Vec::with_capacity(chosen.len());
        for (i, m) in chosen {
            let c = if need_counts {
                mailbox::counts(tx, account, i)?
            } else {
                MailboxCounts::default()
            };
            list.push(args::select(to_json(i, m, &c), &req.properties));
        }
        Ok::<_, tern_store::Error>(Ok((st, list, not_found)))
    })??;
    Ok(args::get_response(account, id::state(st), list, not_found))
}

/// Mailbox/changes, with updatedProperties when only counts changed.
pub fn changes(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let (mut out, c) = args::changes_method(ctx, &args, DataType::Mailbox, Kind::Mailbox)?;
    out.insert(
        "updatedProperties".into(),
        if c.counts_only {
            json!(COUNT_PROPERTIES)
        } else {
            Value::Null
        },
    );
    Ok(out)
}

// ---------------------------------------------------------------- query

#[derive(Debug)]
enum Filter {
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Vec<Filter>),
    Cond(Cond),
}

#[derive(Debug, Default)]
struct Cond {
    parent_id: Option<Option<Option<DocumentId>>>,
    name: Option<String>,
    role: Option<Option<String>>,
    has_any_role: Option<bool>,
    is_subscribed: Option<bool>,
}

fn parse_filter(ctx: &Ctx<'_>, v: &Value, depth: usize) -> Result<Filter, MethodError> {
    let Some(o) = v.as_object() else {
        return Err(MethodError::invalid_arguments("filter must be an object"));
    };
    if depth > 16 {
        return Err(MethodError::UnsupportedFilter(
            "filter nested too deeply".into(),
        ));
    }
    if let Some(op) = o.get("operator") {
        args::allow_only(o, &["operator", "conditions"])?;
        let conditions = match o.get("conditions") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|c| parse_filter(ctx, c, depth + 1))
                .collect::<Result<Vec<_>, _>>()?,
            _ => {
                return Err(MethodError::invalid_arguments(
                    "conditions must be an array",
                ));
            }
        };
        return match op.as_str() {
            Some("AND") => Ok(Filter::And(conditions)),
            Some("OR") => Ok(Filter::Or(conditions)),
            Some("NOT") => Ok(Filter::Not(conditions)),
            _ => Err(MethodError::invalid_arguments("unknown filter operator")),
        };
    }
    let mut c = Cond::default();
    for (k, v) in o {
        match (k.as_str(), v) {
            ("parentId", Value::Null) => c.parent_id = Some(Some(None)),
            ("parentId", Value::String(s)) => {
                // An id that is not a mailbox id matches nothing.
                c.parent_id = Some(id::decode(Kind::Mailbox, &args::resolve_ref(ctx, s)).map(Some));
            }
            ("name", Value::String(s)) => c.name = Some(s.to_lowercase()),
            ("role", Value::Null) => c.role = Some(None),
            ("role", Value::String(s)) => c.role = Some(Some(s.clone())),
            ("hasAnyRole", Value::Bool(b)) => c.has_any_role = Some(*b),
            ("isSubscribed", Value::Bool(b)) => c.is_subscribed = Some(*b),
            _ => {
                return Err(MethodError::invalid_arguments(format!(
                    "invalid filter condition {k:?}"
                )));
            }
        }
    }
    Ok(Filter::Cond(c))
}

fn matches(f: &Filter, m: &Mailbox) -> bool {
    match f {
        Filter::And(c) => c.iter().all(|f| matches(f, m)),
        Filter::Or(c) => c.iter().any(|f| matches(f, m)),
        Filter::Not(c) => !c.iter().any(|f| matches(f, m)),
        Filter::Cond(c) => {
            c.parent_id.as_ref().is_none_or(|p| *p == Some(m.parent_id))
                && c.name
                    .as_ref()
                    .is_none_or(|n| m.name.to_lowercase().contains(n.as_str()))
                && c.role.as_ref().is_none_or(|r| *r == m.role)
                && c.has_any_role.is_none_or(|h| h == m.role.is_some())
                && c.is_subscribed.is_none_or(|s| s == m.is_subscribed)
        }
    }
}

/// Everything a Mailbox/query or queryChanges computes its results from.
struct Query {
    filter: Option<Filter>,
    sort: Vec<(String, bool)>,
    sort_as_tree: bool,
    filter_as_tree: bool,
}

fn parse_query(ctx: &Ctx<'_>, args: &Arguments) -> Result<Query, MethodError> {
    let filter = match args.get("filter") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_filter(ctx, v, 0)?),
    };
    Ok(Query {
        filter,
        sort: args::parse_sort(args, &["sortOrder", "name"])?,
        sort_as_tree: args::bool_arg(args, "sortAsTree", false)?,
        filter_as_tree: args::bool_arg(args, "filterAsTree", false)?,
    })
}

fn compare(
    sort: &[(String, bool)],
    a: (DocumentId, &Mailbox),
    b: (DocumentId, &Mailbox),
) -> Ordering {
    for (property, ascending) in sort {
        let o = match property.as_str() {
            "sortOrder" => a.1.sort_order.cmp(&b.1.sort_order),
            "name" => {
                a.1.name
                    .to_lowercase()
                    .cmp(&b.1.name.to_lowercase())
                    .then_with(|| a.1.name.cmp(&b.1.name))
            }
            _ => Ordering::Equal,
        };
        let o = if *ascending { o } else { o.reverse() };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.0.cmp(&b.0)
}

/// The ordered result ids of a query over `all`.
fn run_query(q: &Query, all: &[(DocumentId, Mailbox)]) -> Vec<DocumentId> {
    let by_id: BTreeMap<DocumentId, &Mailbox> = all.iter().map(|(i, m)| (*i, m)).collect();
    let direct: BTreeSet<DocumentId> = all
        .iter()
        .filter(|(_, m)| q.filter.as_ref().is_none_or(|f| matches(f, m)))
        .map(|(i, _)| *i)
        .collect();
    let included: BTreeSet<DocumentId> = if q.filter_as_tree {
        direct
            .iter()
            .copied()
            .filter(|&i| {
                let mut cur = by_id.get(&i).and_then(|m| m.parent_id);
                let mut steps = 0;
                while let Some(p) = cur {
                    if !direct.contains(&p) || steps > all.len() {
                        return false;
                    }
                    steps += 1;
                    cur = by_id.get(&p).and_then(|m| m.parent_id);
                }
                true
            })
            .collect()
    } else {
        direct
    };
    if q.sort_as_tree {
        // Depth-first over the whole forest, siblings sorted by the
        // comparators; keep the included ones in that order.
        let mut children: BTreeMap<Option<DocumentId>, Vec<DocumentId>> = BTreeMap::new();
        for (i, m) in all {
            let parent = m.parent_id.filter(|p| by_id.contains_key(p));
            children.entry(parent).or_default().push(*i);
        }
        for kids in children.values_mut() {
            kids.sort_by(|a, b| compare(&q.sort, (*a, by_id[a]), (*b, by_id[b])));
        }
        let mut out = Vec::new();
        let mut stack: Vec<DocumentId> = children.get(&None).cloned().unwrap_or_default();
        stack.reverse();
        let mut visited = BTreeSet::new();
        while let Some(i) = stack.pop() {
            if !visited.insert(i) {
                continue;
            }
            if included.contains(&i) {
                out.push(i);
            }
            if let Some(kids) = children.get(&Some(i)) {
                stack.extend(kids.iter().rev().copied());
            }
        }
        out
    } else {
        let mut out: Vec<DocumentId> = included.into_iter().collect();
        out.sort_by(|a, b| compare(&q.sort, (*a, by_id[a]), (*b, by_id[b])));
        out
    }
}

/// Mailbox/query.
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
            "sortAsTree",
            "filterAsTree",
        ],
    )?;
    let account = ctx.account(&args)?;
    let q = parse_query(ctx, &args)?;
    args::query_listing(
        ctx,
        &args,
        account,
        (DataType::Mailbox, Kind::Mailbox),
        mailbox::list,
        |_, all| Ok(run_query(&q, all)),
    )
}

/// Mailbox/queryChanges: every mailbox changed since the old state (other
/// than in its counts, which no filter or sort uses) is reported removed
/// and, if still in the results, added at its new index.
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
            "sortAsTree",
            "filterAsTree",
        ],
    )?;
    let account = ctx.account(&args)?;
    let q = parse_query(ctx, &args)?;
    let p = args::parse_query_changes(&args)?;
    let (st, all, c) =
        args::read_query_changes(ctx, account, DataType::Mailbox, p.since, mailbox::list)?;
    let results = run_query(&q, &all);
    let mut changed: BTreeSet<DocumentId> = c.destroyed.iter().copied().collect();
    if !c.counts_only {
        changed.extend(c.updated.iter().copied());
    }
    let tree = q.sort_as_tree || q.filter_as_tree;
    let anything = !changed.is_empty() || !c.created.is_empty();
    if tree && anything {
        // A change to one mailbox may move or hide its whole subtree.
        changed.extend(results.iter().copied());
    }
    // Removed in the order of their ids' spelling.
    let mut removed: Vec<DocumentId> = changed.into_iter().collect();
    removed.sort_by_key(|&i| id::encode(Kind::Mailbox, i));
    args::query_changes_response(
        account,
        Kind::Mailbox,
        &p,
        st,
        &results,
        &removed,
        &c.created,
    )
}

// ---------------------------------------------------------------- set

/// The client-settable properties of a mailbox being created or updated,
/// before checks against the other mailboxes.
struct Props {
    name: String,
    parent: Option<ParentRef>,
    role: Option<String>,
    sort_order: u32,
    is_subscribed: bool,
}

enum ParentRef {
    Id(DocumentId),
    /// A creation id of this request not (yet) created.
    Pending(String),
}

fn invalid(p: &str, d: impl Into<String>) -> SetError {
    SetError::invalid_properties([p]).with_description(d)
}

/// Reads the client-settable properties of a complete mailbox object.
fn read_props(
    obj: &Map<String, Value>,
    created: &HashMap<String, String>,
) -> Result<Props, SetError> {
    let name = match obj.get("name") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(invalid("name", "name must be a string")),
        None => return Err(invalid("name", "name is required")),
    };
    if name.is_empty() || name.len() > MAX_MAILBOX_NAME || name.chars().any(char::is_control) {
        return Err(invalid(
            "name",
            format!("name must be 1 to {MAX_MAILBOX_NAME} bytes without control characters"),
        ));
    }
    let parent = match obj.get("parentId") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.strip_prefix('#') {
            Some(cid) => match created.get(cid) {
                Some(real) => Some(ParentRef::Id(
                    id::decode(Kind::Mailbox, real)
                        .ok_or_else(|| invalid("parentId", "not a mailbox"))?,
                )),
                None => Some(ParentRef::Pending(cid.to_string())),
            },
            None => Some(ParentRef::Id(
                id::decode(Kind::Mailbox, s)
                    .ok_or_else(|| invalid("parentId", "no such mailbox"))?,
            )),
        },
        Some(_) => return Err(invalid("parentId", "parentId must be an id or null")),
    };
    let role = match obj.get("role") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if ROLES.contains(&r.as_str()) => Some(r.clone()),
        Some(_) => return Err(invalid("role", "unknown role")),
    };
    let sort_order = match obj.get("sortOrder") {
        None => 0,
        Some(v) => match v.as_u64() {
            Some(n) if n < 1 << 31 => n as u32,
            _ => return Err(invalid("sortOrder", "sortOrder must be 0 <= n < 2^31")),
        },
    };
    let is_subscribed = match obj.get("isSubscribed") {
        None => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(invalid("isSubscribed", "isSubscribed must be a boolean")),
    };
    Ok(Props {
        name,
        parent,
        role,
        sort_order,
        is_subscribed,
    })
}

/// Checks a mailbox `m` (new when `id` is `None`) against the others:
/// parent exists, no loop, depth, sibling names, role uniqueness.
fn check_tree(
    all: &BTreeMap<DocumentId, Mailbox>,
    id: Option<DocumentId>,
    m: &Mailbox,
) -> Result<(), SetError> {
    if let Some(p) = m.parent_id {
        if !all.contains_key(&p) {
            return Err(invalid("parentId", "no such mailbox"));
        }
        let mut depth = 1;
        let mut cur = Some(p);
        while let Some(c) = cur {
            if Some(c) == id {
                return Err(invalid("parentId", "a mailbox cannot be its own ancestor"));
            }
            depth += 1;
            if depth > MAX_MAILBOX_DEPTH {
                return Err(invalid("parentId", "mailbox hierarchy too deep"));
            }
            cur = all.get(&c).and_then(|x| x.parent_id);
        }
    }
    if all
        .iter()
        .any(|(i, o)| Some(*i) != id && o.parent_id == m.parent_id && o.name == m.name)
    {
        return Err(invalid("name", "a sibling mailbox has this name"));
    }
    if let Some(r) = &m.role
        && all
            .iter()
            .any(|(i, o)| Some(*i) != id && o.role.as_deref() == Some(r))
    {
        return Err(invalid("role", "another mailbox has this role"));
    }
    // A mailbox moved under another must not make its subtree too deep.
    if let Some(id) = id {
        let mut own_depth = 1;
        let mut cur = m.parent_id;
        while let Some(c) = cur {
            own_depth += 1;
            cur = all.get(&c).and_then(|x| x.parent_id);
        }
        if own_depth + subtree_height(all, id) - 1 > MAX_MAILBOX_DEPTH {
            return Err(invalid("parentId", "mailbox hierarchy too deep"));
        }
    }
    Ok(())
}

fn subtree_height(all: &BTreeMap<DocumentId, Mailbox>, id: DocumentId) -> usize {
    let kids: Vec<DocumentId> = all
        .iter()
        .filter(|(_, m)| m.parent_id == Some(id))
        .map(|(i, _)| *i)
        .collect();
    1 + kids
        .into_iter()
        .map(|k| subtree_height(all, k))
        .max()
        .unwrap_or(0)
}

/// What a /set transaction produced.
struct SetOutcome {
    response: SetResponse,
    old: u64,
    new: u64,
    created_ids: Vec<(String, String)>,
}

/// Mailbox/set, with onDestroyRemoveEmails.
pub fn set(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let req = args::parse_set(ctx, &args, &["onDestroyRemoveEmails"])?;
    let remove_emails = args::bool_arg(&args, "onDestroyRemoveEmails", false)?;
    let account = req.account;
    // Emails of mailboxes about to be destroyed go first, in transactions
    // of bounded size; `drained` is then the state before them (ifInState
    // was checked against it).
    let drained = if remove_emails {
        drain_before_destroy(ctx, &req)?
    } else {
        None
    };
    let outcome = ctx.store.kv().transact(|tx| {
        let mut w = Writer::begin(tx, account)?;
        let old = state(w.tx, account)?;
        if drained.is_none()
            && let Some(expected) = req.if_in_state
            && expected != Some(old)
        {
            return Ok(Err(MethodError::StateMismatch));
        }
        let mut created = ctx.created_ids.clone();
        let mut response = SetResponse::default();
        let mut new_ids = Vec::new();
        apply_set(
            &mut w,
            &req,
            remove_emails,
            &mut created,
            &mut response,
            &mut new_ids,
        )?;
        let wrote = w.finish()?.is_some();
        let new = if wrote { state(tx, account)? } else { old };
        Ok::<_, tern_store::Error>(Ok(SetOutcome {
            response,
            old,
            new,
            created_ids: new_ids,
        }))
    })??;
    for (cid, real) in outcome.created_ids {
        ctx.created_ids.insert(cid, real);
    }
    Ok(outcome.response.into_arguments(
        account,
        Some(id::state(drained.unwrap_or(outcome.old))),
        id::state(outcome.new),
    ))
}

/// Most bytes one transaction taking emails out of a mailbox being
/// destroyed writes before it commits (the store's limit is 10 MB).
const DRAIN_BYTES: usize = 1_000_000;
/// Most emails one such transaction takes out.
const DRAIN_EMAILS: usize = 256;
/// Longest time one such transaction runs (the store's limit is 5 s).
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_millis(500);

/// For Mailbox/set with onDestroyRemoveEmails: takes the emails out of
/// every mailbox whose destruction will succeed (it exists, is not the
/// inbox, and its children are destroyed too), in transactions of at most
/// [`DRAIN_BYTES`], [`DRAIN_EMAILS`] and [`DRAIN_TIME`] each, so that a
/// mailbox of any size can be destroyed within the store's transaction
/// limits. The transaction that destroys the mailboxes then removes only
/// what arrived meanwhile. Returns the Mailbox state before the first
/// change (`None` when nothing was to be done, or ifInState does not match:
/// the destroying transaction answers that).
fn drain_before_destroy(ctx: &Ctx<'_>, req: &SetRequest) -> Result<Option<u64>, MethodError> {
    let account = req.account;
    if req.destroy.is_empty() {
        return Ok(None);
    }
    let (old, all) = ctx.store.kv().read(|tx| {
        Ok::<_, tern_store::Error>((state(tx, account)?, mailbox::list(tx, account)?))
    })?;
    if req
        .if_in_state
        .is_some_and(|expected| expected != Some(old))
    {
        return Ok(None);
    }
    let all: BTreeMap<DocumentId, Mailbox> = all.into_iter().collect();
    // Parents of mailboxes this call creates or moves keep their children.
    let mut keeps_child: BTreeSet<String> = BTreeSet::new();
    for (_, obj) in &req.create {
        if let Some(Value::String(p)) = obj.get("parentId") {
            keeps_child.insert(args::resolve_ref(ctx, p));
        }
    }
    for (_, patch) in &req.update {
        if let Ok(patch) = patch
            && let Some(Value::String(p)) = patch.get("parentId")
        {
            keeps_child.insert(args::resolve_ref(ctx, p));
        }
    }
    let mut doomed: BTreeSet<DocumentId> = req
        .destroy
        .iter()
        .filter(|s| !keeps_child.contains(*s))
        .filter_map(|s| id::decode(Kind::Mailbox, s))
        .filter(|i| {
            all.get(i)
                .is_some_and(|m| m.role.as_deref() != Some("inbox"))
        })
        .collect();
    loop {
        let orphaned: Vec<DocumentId> = doomed
            .iter()
            .copied()
            .filter(|&d| {
                all.iter()
                    .any(|(c, m)| m.parent_id == Some(d) && !doomed.contains(c))
            })
            .collect();
        if orphaned.is_empty() {
            break;
        }
        for d in orphaned {
            doomed.remove(&d);
        }
    }
    let mut changed = false;
    for &m in &doomed {
        loop {
            let (removed, more) = ctx.store.kv().transact(|tx| {
                let started = std::time::Instant::now();
                let mut w = Writer::begin(tx, account)?;
                let mut removed = 0;
                let mut more = true;
                while more
                    && removed < DRAIN_EMAILS
                    && w.tx.size() < DRAIN_BYTES
                    && started.elapsed() < DRAIN_TIME
                {
                    let page =
                        email::list_by_date(w.tx, account, Listing::Mailbox(m), false, None, 16)?;
                    more = page.len() == 16;
                    for (_, e) in page {
                        remove_from(&mut w, e, m)?;
                        removed += 1;
                    }
                }
                w.finish()?;
                Ok::<_, tern_store::Error>((removed, more))
            })?;
            changed |= removed > 0;
            if !more {
                break;
            }
        }
    }
    Ok(changed.then_some(old))
}

/// Takes email `e` out of mailbox `m`, destroying it when it is in no
/// other mailbox.
fn remove_from(w: &mut Writer<'_, '_>, e: DocumentId, m: DocumentId) -> tern_store::Result<()> {
    let Some(meta) = email::get(w.tx, w.account, e)? else {
        return Ok(());
    };
    if meta.mailbox_ids.iter().all(|&x| x == m) {
        email::destroy(w, e)?;
    } else {
        let rest: Vec<DocumentId> = meta
            .mailbox_ids
            .iter()
            .copied()
            .filter(|&x| x != m)
            .collect();
        email::update(w, e, Some(rest), None)?;
    }
    Ok(())
}

fn apply_set(
    w: &mut Writer<'_, '_>,
    req: &SetRequest,
    remove_emails: bool,
    created: &mut HashMap<String, String>,
    response: &mut SetResponse,
    new_ids: &mut Vec<(String, String)>,
) -> tern_store::Result<()> {
    let account = w.account;
    let mut all: BTreeMap<DocumentId, Mailbox> =
        mailbox::list(w.tx, account)?.into_iter().collect();

    // Creates, in an order where a parent created in this call comes
    // before its children.
    let mut pending: Vec<&(String, Map<String, Value>)> = req.create.iter().collect();
    loop {
        let mut progressed = false;
        let mut next = Vec::new();
        for item in pending {
            let (cid, obj) = item;
            if let Some(bad) = obj.keys().find(|k| !PROPERTIES.contains(&k.as_str())) {
                response.not_created(cid, invalid(bad, format!("unknown property {bad:?}")));
                progressed = true;
                continue;
            }
            if let Some(bad) = obj.keys().find(|k| SERVER_SET.contains(&k.as_str())) {
                response.not_created(cid, invalid(bad, format!("{bad} is set by the server")));
                progressed = true;
                continue;
            }
            let props = match read_props(obj, created) {
                Ok(p) => p,
                Err(e) => {
                    response.not_created(cid, e);
                    progressed = true;
                    continue;
                }
            };
            let parent_id = match props.parent {
                None => None,
                Some(ParentRef::Id(p)) => Some(p),
                Some(ParentRef::Pending(ref c))
                    if req.create.iter().any(|(k, _)| k == c)
                        && !response.not_created.contains_key(c) =>
                {
                    next.push(item);
                    continue;
                }
                Some(ParentRef::Pending(_)) => {
                    response.not_created(cid, invalid("parentId", "unknown creation id"));
                    progressed = true;
                    continue;
                }
            };
            let m = Mailbox {
                name: props.name,
                parent_id,
                role: props.role,
                sort_order: props.sort_order,
                is_subscribed: props.is_subscribed,
            };
            progressed = true;
            if let Err(e) = check_tree(&all, None, &m) {
                response.not_created(cid, e);
                continue;
            }
            let new = mailbox::create(w, &m)?;
            let real = id::encode(Kind::Mailbox, new);
            let mut out = to_json(new, &m, &MailboxCounts::default());
            out.retain(|k, _| SERVER_SET.contains(&k.as_str()) || !obj.contains_key(k));
            response.created.insert(cid.clone(), Value::Object(out));
            created.insert(cid.clone(), real.clone());
            new_ids.push((cid.clone(), real));
            all.insert(new, m);
        }
        pending = next;
        if pending.is_empty() {
            break;
        }
        if !progressed {
            for (cid, _) in pending {
                response.not_created(cid, invalid("parentId", "parent creation loop"));
            }
            break;
        }
    }

    // Updates.
    for (sid, patch) in &req.update {
        let Some(i) = id::decode(Kind::Mailbox, sid).filter(|i| all.contains_key(i)) else {
            response.not_updated(sid, SetError::new("notFound"));
            continue;
        };
        let Ok(patch) = patch else {
            response.not_updated(
                sid,
                SetError::new("invalidPatch").with_description("a patch must be an object"),
            );
            continue;
        };
        let current = all[&i].clone();
        let counts = mailbox::counts(w.tx, account, i)?;
        let before = to_json(i, &current, &counts);
        let mut after = before.clone();
        if let Err(e) = args::apply_patch(&mut after, patch) {
            response.not_updated(sid, e);
            continue;
        }
        if let Some(bad) = after.keys().find(|k| !PROPERTIES.contains(&k.as_str())) {
            response.not_updated(sid, invalid(bad, format!("unknown property {bad:?}")));
            continue;
        }
        if let Some(bad) = SERVER_SET
            .iter()
            .find(|k| after.get(**k) != before.get(**k))
        {
            response.not_updated(sid, invalid(bad, format!("{bad} is set by the server")));
            continue;
        }
        // Removed (null) properties take their defaults.
        let props = match read_props(&after, created) {
            Ok(p) => p,
            Err(e) => {
                response.not_updated(sid, e);
                continue;
            }
        };
        let parent_id = match props.parent {
            None => None,
            Some(ParentRef::Id(p)) => Some(p),
            Some(ParentRef::Pending(_)) => {
                response.not_updated(sid, invalid("parentId", "unknown creation id"));
                continue;
            }
        };
        let m = Mailbox {
            name: props.name,
            parent_id,
            role: props.role,
            sort_order: props.sort_order,
            is_subscribed: props.is_subscribed,
        };
        if current.role.as_deref() == Some("inbox") && m.role.as_deref() != Some("inbox") {
            response.not_updated(sid, invalid("role", "the inbox keeps its role"));
            continue;
        }
        if let Err(e) = check_tree(&all, Some(i), &m) {
            response.not_updated(sid, e);
            continue;
        }
        if m != current {
            mailbox::update(w, i, &m)?;
            all.insert(i, m);
        }
        response.updated.insert(sid.clone(), Value::Null);
    }

    // Destroys, deepest first so a parent destroyed with its children is
    // empty by the time it is reached.
    let depth = |i: DocumentId, all: &BTreeMap<DocumentId, Mailbox>| {
        let mut d = 0;
        let mut cur = all.get(&i).and_then(|m| m.parent_id);
        while let Some(c) = cur {
            d += 1;
            if d > all.len() {
                break;
            }
            cur = all.get(&c).and_then(|m| m.parent_id);
        }
        d
    };
    let mut order: Vec<(usize, &String)> = req
        .destroy
        .iter()
        .map(|s| {
            let d = id::decode(Kind::Mailbox, s).map_or(0, |i| depth(i, &all));
            (d, s)
        })
        .collect();
    order.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut seen = BTreeSet::new();
    for (_, sid) in order {
        if !seen.insert(sid.clone()) {
            continue;
        }
        let Some(i) = id::decode(Kind::Mailbox, sid).filter(|i| all.contains_key(i)) else {
            response.not_destroyed(sid, SetError::new("notFound"));
            continue;
        };
        if all[&i].role.as_deref() == Some("inbox") {
            response.not_destroyed(
                sid,
                SetError::new("forbidden").with_description("the inbox cannot be destroyed"),
            );
            continue;
        }
        if all.values().any(|m| m.parent_id == Some(i)) {
            response.not_destroyed(sid, SetError::new("mailboxHasChild"));
            continue;
        }
        let first = email::list_by_date(w.tx, account, Listing::Mailbox(i), false, None, 1)?;
        if !first.is_empty() {
            if !remove_emails {
                response.not_destroyed(sid, SetError::new("mailboxHasEmail"));
                continue;
            }
            remove_all_emails(w, i)?;
        }
        mailbox::destroy(w, i)?;
        all.remove(&i);
        response.destroyed.push(sid.clone());
    }
    Ok(())
}

/// Takes every email out of mailbox `i`, destroying those in no other
/// mailbox.
fn remove_all_emails(w: &mut Writer<'_, '_>, i: DocumentId) -> tern_store::Result<()> {
    let account = w.account;
    let mut after = None;
    loop {
        let page = email::list_by_date(w.tx, account, Listing::Mailbox(i), false, after, 500)?;
        let Some(&last) = page.last() else {
            break;
        };
        for (_, e) in &page {
            remove_from(w, *e, i)?;
        }
        after = Some(last);
    }
    Ok(())
}
