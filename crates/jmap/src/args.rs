//! Argument parsing and response building shared by the standard methods
//! (RFC 8620 section 5): /get, /changes, /set and /query.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use tern_store::changes::{self, Changes};
use tern_store::kv::Transaction;
use tern_store::{AccountId, DataType, DocumentId};

use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult, SetError};

/// Fails with invalidArguments when `args` holds a name not in `allowed`
/// (RFC 8620 section 3.9: unknown arguments are invalid).
pub fn allow_only(args: &Arguments, allowed: &[&str]) -> Result<(), MethodError> {
    for k in args.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(MethodError::invalid_arguments(format!(
                "unknown argument {k:?}"
            )));
        }
    }
    Ok(())
}

/// An optional string argument (`null` = absent).
pub fn opt_str<'a>(args: &'a Arguments, name: &str) -> Result<Option<&'a str>, MethodError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(MethodError::invalid_arguments(format!(
            "{name} must be a string"
        ))),
    }
}

/// An optional boolean argument with a default.
pub fn bool_arg(args: &Arguments, name: &str, default: bool) -> Result<bool, MethodError> {
    match args.get(name) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(MethodError::invalid_arguments(format!(
            "{name} must be a boolean"
        ))),
    }
}

/// An optional Int argument with a default.
pub fn int_arg(args: &Arguments, name: &str, default: i64) -> Result<i64, MethodError> {
    match args.get(name) {
        None => Ok(default),
        Some(v) => v
            .as_i64()
            .ok_or_else(|| MethodError::invalid_arguments(format!("{name} must be an integer"))),
    }
}

/// An optional UnsignedInt argument (`null` = absent).
pub fn opt_uint(args: &Arguments, name: &str) -> Result<Option<u64>, MethodError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            MethodError::invalid_arguments(format!("{name} must be a non-negative integer"))
        }),
    }
}

/// An optional array of strings (`null` = absent).
pub fn opt_strings(args: &Arguments, name: &str) -> Result<Option<Vec<String>>, MethodError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    MethodError::invalid_arguments(format!("{name} must hold strings"))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(MethodError::invalid_arguments(format!(
            "{name} must be an array of strings"
        ))),
    }
}

/// An id argument that may name a record created earlier in the request
/// (`#creationId`): the real id when it does, the string otherwise.
pub fn resolve_ref(ctx: &Ctx<'_>, s: &str) -> String {
    match s.strip_prefix('#') {
        Some(c) => ctx
            .created_ids
            .get(c)
            .cloned()
            .unwrap_or_else(|| s.to_string()),
        None => s.to_string(),
    }
}

/// A parsed /get request.
#[derive(Debug)]
pub struct GetRequest {
    /// The account.
    pub account: AccountId,
    /// Ids asked for (unique, creation references resolved); `None` for
    /// all.
    pub ids: Option<Vec<String>>,
    /// Properties asked for; `None` for all.
    pub properties: Option<Vec<String>>,
}

/// Parses a standard /get: accountId, ids, properties (checked against
/// `known`), plus `extra` arguments the method accepts. Enforces
/// maxObjectsInGet.
pub fn parse_get(
    ctx: &Ctx<'_>,
    args: &Arguments,
    known: &[&str],
    extra: &[&str],
) -> Result<GetRequest, MethodError> {
    let mut allowed = vec!["accountId", "ids", "properties"];
    allowed.extend_from_slice(extra);
    allow_only(args, &allowed)?;
    let account = ctx.account(args)?;
    let ids = opt_strings(args, "ids")?.map(|ids| {
        let mut seen = std::collections::HashSet::new();
        ids.iter()
            .map(|i| resolve_ref(ctx, i))
            .filter(|i| seen.insert(i.clone()))
            .collect::<Vec<_>>()
    });
    if ids
        .as_ref()
        .is_some_and(|ids| ids.len() > ctx.limits.max_objects_in_get)
    {
        return Err(MethodError::RequestTooLarge);
    }
    let properties = opt_strings(args, "properties")?;
    if let Some(props) = &properties {
        for p in props {
            if !known.contains(&p.as_str()) {
                return Err(MethodError::invalid_arguments(format!(
                    "unknown property {p:?}"
                )));
            }
        }
    }
    Ok(GetRequest {
        account,
        ids,
        properties,
    })
}

/// Keeps only the requested properties of an object (and always `id`).
pub fn select(mut obj: Map<String, Value>, properties: &Option<Vec<String>>) -> Value {
    if let Some(props) = properties {
        obj.retain(|k, _| k == "id" || props.iter().any(|p| p == k));
    }
    Value::Object(obj)
}

/// The standard /get response.
pub fn get_response(
    account: AccountId,
    state: String,
    list: Vec<Value>,
    not_found: Vec<String>,
) -> Arguments {
    let mut out = Map::new();
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert("state".into(), json!(state));
    out.insert("list".into(), Value::Array(list));
    out.insert("notFound".into(), json!(not_found));
    out
}

/// The maxChanges argument: a positive integer or absent, clamped to the
/// server's maximum.
pub fn max_changes(ctx: &Ctx<'_>, args: &Arguments) -> Result<usize, MethodError> {
    match args.get("maxChanges") {
        None | Some(Value::Null) => Ok(ctx.limits.max_changes),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok((n as usize).min(ctx.limits.max_changes)),
            _ => Err(MethodError::invalid_arguments(
                "maxChanges must be a positive integer",
            )),
        },
    }
}

/// A standard /changes over the store's change log for type `t`, ids of
/// `kind`. Returns the response and the raw changes (for extra response
/// arguments such as updatedProperties).
pub fn changes_method(
    ctx: &Ctx<'_>,
    args: &Arguments,
    t: DataType,
    kind: Kind,
) -> Result<(Arguments, Changes), MethodError> {
    allow_only(args, &["accountId", "sinceState", "maxChanges"])?;
    let account = ctx.account(args)?;
    let since = match args.get("sinceState") {
        Some(Value::String(s)) => id::parse_state(s).ok_or(MethodError::CannotCalculateChanges)?,
        _ => return Err(MethodError::invalid_arguments("sinceState is required")),
    };
    let max = max_changes(ctx, args)?;
    let c = ctx.store.kv().read(|tx| {
        // The store stops after the change record that reaches `max` ids,
        // so the last record may overshoot: look for the largest bound
        // whose result fits (results grow with the bound).
        let size = |c: &Changes| c.created.len() + c.updated.len() + c.destroyed.len();
        let first = changes::changes(tx, account, t, since, max)?;
        if size(&first) <= max {
            return Ok(Some(first));
        }
        let (mut lo, mut hi, mut best) = (1usize, max - 1, None);
        while lo <= hi {
            let mid = lo + (hi - lo) / 2;
            let c = changes::changes(tx, account, t, since, mid)?;
            if size(&c) <= max {
                best = Some(c);
                lo = mid + 1;
            } else if mid == 1 {
                break;
            } else {
                hi = mid - 1;
            }
        }
        Ok::<_, tern_store::Error>(best)
    })?;
    // One change record larger than maxChanges: no intermediate state.
    let c = c.ok_or(MethodError::CannotCalculateChanges)?;
    let ids = |v: &[DocumentId]| -> Value {
        Value::Array(v.iter().map(|&i| json!(id::encode(kind, i))).collect())
    };
    let mut out = Map::new();
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert("oldState".into(), json!(id::state(since)));
    out.insert("newState".into(), json!(id::state(c.new_state)));
    out.insert("hasMoreChanges".into(), json!(c.has_more));
    out.insert("created".into(), ids(&c.created));
    out.insert("updated".into(), ids(&c.updated));
    out.insert("destroyed".into(), ids(&c.destroyed));
    Ok((out, c))
}

/// A patch object, or `Err` when the client sent something that is not an
/// object (answered with an invalidPatch SetError).
pub type Patch = Result<Map<String, Value>, ()>;

/// One update's patch as given: `Err(())` when it is not an object (an
/// invalidPatch SetError for that record).
pub type PatchArg = Result<Map<String, Value>, ()>;

/// A parsed /set request.
#[derive(Debug)]
pub struct SetRequest {
    /// The account.
    pub account: AccountId,
    /// ifInState, parsed (a state string that is not ours can never match:
    /// `Some(None)`).
    pub if_in_state: Option<Option<u64>>,
    /// Creation id → object.
    pub create: Vec<(String, Map<String, Value>)>,
    /// Id (creation references resolved) → patch; a patch that is not an
    /// object is kept as `Err` for an invalidPatch SetError.
    pub update: Vec<(String, Patch)>,
    /// Ids to destroy (creation references resolved).
    pub destroy: Vec<String>,
}

/// Parses a standard /set (accepting `extra` arguments too) and enforces
/// maxObjectsInSet.
pub fn parse_set(
    ctx: &Ctx<'_>,
    args: &Arguments,
    extra: &[&str],
) -> Result<SetRequest, MethodError> {
    let mut allowed = vec!["accountId", "ifInState", "create", "update", "destroy"];
    allowed.extend_from_slice(extra);
    allow_only(args, &allowed)?;
    let account = ctx.account(args)?;
    let if_in_state = opt_str(args, "ifInState")?.map(id::parse_state);
    let create = match args.get("create") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| match v {
                Value::Object(o) => Ok((k.clone(), o.clone())),
                _ => Err(MethodError::invalid_arguments(
                    "create values must be objects",
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(MethodError::invalid_arguments("create must be an object")),
    };
    let update = match args.get("update") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                let patch = match v {
                    Value::Object(o) => Ok(o.clone()),
                    _ => Err(()),
                };
                (resolve_ref(ctx, k), patch)
            })
            .collect(),
        Some(_) => return Err(MethodError::invalid_arguments("update must be an object")),
    };
    let destroy = opt_strings(args, "destroy")?
        .unwrap_or_default()
        .iter()
        .map(|s| resolve_ref(ctx, s))
        .collect::<Vec<_>>();
    if create.len() + update.len() + destroy.len() > ctx.limits.max_objects_in_set {
        return Err(MethodError::RequestTooLarge);
    }
    Ok(SetRequest {
        account,
        if_in_state,
        create,
        update,
        destroy,
    })
}

/// A map of a /set or /copy response: `null` when empty.
pub fn or_null(m: Map<String, Value>) -> Value {
    if m.is_empty() {
        Value::Null
    } else {
        Value::Object(m)
    }
}

/// The outcome of a /set, built up item by item.
#[derive(Debug, Default)]
pub struct SetResponse {
    /// Creation id → server-set properties.
    pub created: Map<String, Value>,
    /// Id → changed properties or null.
    pub updated: Map<String, Value>,
    /// Ids destroyed.
    pub destroyed: Vec<String>,
    /// Creation id → error.
    pub not_created: Map<String, Value>,
    /// Id → error.
    pub not_updated: Map<String, Value>,
    /// Id → error.
    pub not_destroyed: Map<String, Value>,
}

impl SetResponse {
    /// Records a failed create.
    pub fn not_created(&mut self, cid: &str, e: SetError) {
        self.not_created.insert(cid.to_string(), e.to_value());
    }

    /// Records a failed update.
    pub fn not_updated(&mut self, id: &str, e: SetError) {
        self.not_updated.insert(id.to_string(), e.to_value());
    }

    /// Records a failed destroy.
    pub fn not_destroyed(&mut self, id: &str, e: SetError) {
        self.not_destroyed.insert(id.to_string(), e.to_value());
    }

    /// The response arguments.
    pub fn into_arguments(
        self,
        account: AccountId,
        old_state: Option<String>,
        new_state: String,
    ) -> Arguments {
        let mut out = Map::new();
        out.insert("accountId".into(), json!(id::account_id(account)));
        out.insert("oldState".into(), json!(old_state));
        out.insert("newState".into(), json!(new_state));
        out.insert("created".into(), or_null(self.created));
        out.insert("updated".into(), or_null(self.updated));
        out.insert(
            "destroyed".into(),
            if self.destroyed.is_empty() {
                Value::Null
            } else {
                json!(self.destroyed)
            },
        );
        out.insert("notCreated".into(), or_null(self.not_created));
        out.insert("notUpdated".into(), or_null(self.not_updated));
        out.insert("notDestroyed".into(), or_null(self.not_destroyed));
        out
    }
}

/// Applies a PatchObject (RFC 8620 section 5.3) to `obj`. Paths may reach
/// into nested objects that exist, never into arrays; no path may be a
/// prefix of another. `null` removes the property (the caller restores
/// defaults when validating).
pub fn apply_patch(
    obj: &mut Map<String, Value>,
    patch: &Map<String, Value>,
) -> Result<(), SetError> {
    let paths: Vec<Vec<String>> = patch
        .keys()
        .map(|k| {
            k.split('/')
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect()
        })
        .collect();
    for (i, a) in paths.iter().enumerate() {
        for (j, b) in paths.iter().enumerate() {
            if i != j && a.len() < b.len() && b.starts_with(a) {
                return Err(SetError::new("invalidPatch")
                    .with_description("one patch path is a prefix of another"));
            }
        }
    }
    for (tokens, value) in paths.iter().zip(patch.values()) {
        let (last, parents) = tokens.split_last().expect("split yields one token");
        let mut target = &mut *obj;
        for t in parents {
            target = match target.get_mut(t) {
                Some(Value::Object(m)) => m,
                _ => {
                    return Err(SetError::new("invalidPatch").with_description(format!(
                        "path {:?} does not reach an existing object",
                        tokens.join("/")
                    )));
                }
            };
        }
        if value.is_null() {
            target.remove(last);
        } else {
            target.insert(last.clone(), value.clone());
        }
    }
    Ok(())
}

/// Parses an id of `kind`; notFound as a SetError otherwise.
pub fn parse_id(kind: Kind, s: &str) -> Result<DocumentId, SetError> {
    id::decode(kind, s).ok_or_else(|| SetError::new("notFound"))
}

/// A /query's window arguments.
#[derive(Debug, Clone)]
pub struct Window {
    /// position (may be negative).
    pub position: i64,
    /// anchor id.
    pub anchor: Option<String>,
    /// anchorOffset.
    pub anchor_offset: i64,
    /// limit (clamped to the server's maximum).
    pub limit: usize,
    /// Whether the limit was clamped (and must be returned).
    pub limit_clamped: bool,
    /// calculateTotal.
    pub calculate_total: bool,
}

/// Parses position, anchor, anchorOffset, limit and calculateTotal.
pub fn parse_window(ctx: &Ctx<'_>, args: &Arguments) -> Result<Window, MethodError> {
    let position = int_arg(args, "position", 0)?;
    let anchor = opt_str(args, "anchor")?.map(|s| resolve_ref(ctx, s));
    let anchor_offset = int_arg(args, "anchorOffset", 0)?;
    let max = ctx.limits.max_query_limit;
    let (limit, limit_clamped) = match args.get("limit") {
        None | Some(Value::Null) => (max, true),
        Some(v) => match v.as_i64() {
            Some(n) if n < 0 => {
                return Err(MethodError::invalid_arguments("limit must not be negative"));
            }
            Some(n) if n as u64 > max as u64 => (max, true),
            Some(n) => (n as usize, false),
            None => return Err(MethodError::invalid_arguments("limit must be an integer")),
        },
    };
    Ok(Window {
        position,
        anchor,
        anchor_offset,
        limit,
        limit_clamped,
        calculate_total: bool_arg(args, "calculateTotal", false)?,
    })
}

/// Applies a window to the full ordered result list: the standard /query
/// response (without queryState and canCalculateChanges, added by the
/// caller).
pub fn window_response(
    account: AccountId,
    ids: &[String],
    w: &Window,
) -> Result<Arguments, MethodError> {
    let total = ids.len() as i64;
    let start = match &w.anchor {
        Some(a) => {
            let at = ids
                .iter()
                .position(|i| i == a)
                .ok_or(MethodError::AnchorNotFound)? as i64;
            (at + w.anchor_offset).max(0)
        }
        None if w.position < 0 => (total + w.position).max(0),
        None => w.position,
    };
    let start = start.min(total) as usize;
    let end = start.saturating_add(w.limit).min(ids.len());
    let mut out = Map::new();
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert("position".into(), json!(start));
    out.insert("ids".into(), json!(ids[start..end]));
    if w.calculate_total {
        out.insert("total".into(), json!(total));
    }
    if w.limit_clamped {
        out.insert("limit".into(), json!(w.limit));
    }
    Ok(out)
}

/// A /query over a listing of the whole account (Mailbox,
/// EmailSubmission): reads the state of `t` and `list` from one snapshot,
/// orders the listing with `run` (which may fail on a bad filter or sort)
/// and answers the window of ids of `kind` with the queryState;
/// canCalculateChanges is true. The caller has checked the arguments'
/// names and `account`.
pub fn query_listing<L>(
    ctx: &mut Ctx<'_>,
    args: &Arguments,
    account: AccountId,
    (t, kind): (DataType, Kind),
    list: impl FnOnce(&mut Transaction<'_>, AccountId) -> tern_store::Result<L>,
    run: impl FnOnce(&mut Ctx<'_>, &L) -> Result<Vec<DocumentId>, MethodError>,
) -> MethodResult {
    let window = parse_window(ctx, args)?;
    let (st, listing) = ctx.store.kv().read(|tx| {
        Ok::<_, tern_store::Error>((changes::state(tx, account, t)?, list(tx, account)?))
    })?;
    let ids: Vec<String> = run(ctx, &listing)?
        .into_iter()
        .map(|i| id::encode(kind, i))
        .collect();
    let mut out = window_response(account, &ids, &window)?;
    out.insert("queryState".into(), json!(id::state(st)));
    out.insert("canCalculateChanges".into(), json!(true));
    Ok(out)
}

/// The arguments of a /queryChanges besides accountId, filter and sort.
#[derive(Debug)]
pub struct QueryChanges {
    /// sinceQueryState.
    pub since: u64,
    /// maxChanges (`usize::MAX` when absent).
    pub max: usize,
    /// calculateTotal.
    pub calculate_total: bool,
}

/// Parses sinceQueryState (required; one Tern never gave is
/// cannotCalculateChanges), maxChanges (positive), upToId (checked, not
/// used: every change is reported) and calculateTotal.
pub fn parse_query_changes(args: &Arguments) -> Result<QueryChanges, MethodError> {
    let since = match args.get("sinceQueryState") {
        Some(Value::String(s)) => id::parse_state(s).ok_or(MethodError::CannotCalculateChanges)?,
        _ => {
            return Err(MethodError::invalid_arguments(
                "sinceQueryState is required",
            ));
        }
    };
    let max = match args.get("maxChanges") {
        None | Some(Value::Null) => usize::MAX,
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => n as usize,
            _ => {
                return Err(MethodError::invalid_arguments(
                    "maxChanges must be a positive integer",
                ));
            }
        },
    };
    let _ = opt_str(args, "upToId")?;
    Ok(QueryChanges {
        since,
        max,
        calculate_total: bool_arg(args, "calculateTotal", false)?,
    })
}

/// Reads, from one snapshot, the state of `t`, `list` and every change
/// to `t` since `since`: what a /queryChanges over a whole-account
/// listing works from.
pub fn read_query_changes<L>(
    ctx: &Ctx<'_>,
    account: AccountId,
    t: DataType,
    since: u64,
    list: impl FnOnce(&mut Transaction<'_>, AccountId) -> tern_store::Result<L>,
) -> Result<(u64, L, Changes), MethodError> {
    Ok(ctx.store.kv().read(|tx| {
        let st = changes::state(tx, account, t)?;
        let listing = list(tx, account)?;
        let c = changes::changes(tx, account, t, since, usize::MAX)?;
        Ok::<_, tern_store::Error>((st, listing, c))
    })?)
}

/// The /queryChanges response: `removed` (in that order) are the ids of
/// `kind` reported removed; every one of them and of `created` still in
/// `results` (the current ordered results) is added at its index.
/// tooManyChanges past maxChanges.
pub fn query_changes_response(
    account: AccountId,
    kind: Kind,
    q: &QueryChanges,
    new_state: u64,
    results: &[DocumentId],
    removed: &[DocumentId],
    created: &[DocumentId],
) -> MethodResult {
    let fresh: BTreeSet<DocumentId> = removed.iter().chain(created).copied().collect();
    let removed: Vec<String> = removed.iter().map(|&i| id::encode(kind, i)).collect();
    let added: Vec<Value> = results
        .iter()
        .enumerate()
        .filter(|(_, i)| fresh.contains(i))
        .map(|(index, &i)| json!({"id": id::encode(kind, i), "index": index}))
        .collect();
    if removed.len() + added.len() > q.max {
        return Err(MethodError::TooManyChanges);
    }
    let mut out = Map::new();
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert("oldQueryState".into(), json!(id::state(q.since)));
    out.insert("newQueryState".into(), json!(id::state(new_state)));
    if q.calculate_total {
        out.insert("total".into(), json!(results.len()));
    }
    out.insert("removed".into(), json!(removed));
    out.insert("added".into(), Value::Array(added));
    Ok(out)
}

/// Checks the sort argument's shape: an array of comparators whose
/// property is one of `sortable`. Returns (property, ascending) pairs.
pub fn parse_sort(args: &Arguments, sortable: &[&str]) -> Result<Vec<(String, bool)>, MethodError> {
    let items = match args.get("sort") {
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
        allow_only(c, &["property", "isAscending", "collation"])?;
        let Some(property) = c.get("property").and_then(Value::as_str) else {
            return Err(MethodError::invalid_arguments(
                "a comparator needs a property",
            ));
        };
        let ascending = bool_arg(c, "isAscending", true)?;
        match c.get("collation") {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == "i;ascii-casemap" || s == "i;unicode-casemap" => {}
            Some(Value::String(_)) => return Err(MethodError::UnsupportedSort),
            Some(_) => return Err(MethodError::invalid_arguments("collation must be a string")),
        }
        if !sortable.contains(&property) {
            return Err(MethodError::UnsupportedSort);
        }
        out.push((property.to_string(), ascending));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_rules() {
        let mut o = json!({"a": 1, "b": {"c": 2}, "l": [1]})
            .as_object()
            .unwrap()
            .clone();
        let p = json!({"b/c": 3, "a": null}).as_object().unwrap().clone();
        apply_patch(&mut o, &p).unwrap();
        assert_eq!(Value::Object(o.clone()), json!({"b": {"c": 3}, "l": [1]}));
        let bad = json!({"l/0": 2}).as_object().unwrap().clone();
        assert_eq!(apply_patch(&mut o, &bad).unwrap_err().kind, "invalidPatch");
        let prefix = json!({"b": {}, "b/c": 1}).as_object().unwrap().clone();
        assert_eq!(
            apply_patch(&mut o, &prefix).unwrap_err().kind,
            "invalidPatch"
        );
        let missing = json!({"x/y": 1}).as_object().unwrap().clone();
        assert_eq!(
            apply_patch(&mut o, &missing).unwrap_err().kind,
            "invalidPatch"
        );
    }
}
