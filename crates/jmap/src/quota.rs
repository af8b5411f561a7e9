//! Quota/get, changes, query, queryChanges (RFC 9425): one quota per
//! account, in octets, over the account's emails.
//!
//! Its state is `<change>-<hardLimit>`: `<change>` is the latest of the
//! Email and Quota states (used bytes change only with emails), the limit
//! is carried so a limit change (made by the operator, outside JMAP)
//! changes the state too and Quota/changes can tell whether only `used`
//! changed.

use serde_json::{Map, Value, json};
use tern_store::{AccountId, DataType, account, changes};

use crate::args;
use crate::id;
use crate::method::{Arguments, Ctx, MethodError, MethodResult};

/// The id of the account's quota.
pub const QUOTA_ID: &str = "Q0";

/// Every Quota property.
pub const PROPERTIES: [&str; 10] = [
    "id",
    "resourceType",
    "used",
    "hardLimit",
    "scope",
    "name",
    "types",
    "warnLimit",
    "softLimit",
    "description",
];

struct Snapshot {
    change: u64,
    limit: u64,
    object: Map<String, Value>,
}

impl Snapshot {
    fn state(&self) -> String {
        format!("{}-{}", self.change, self.limit)
    }
}

fn parse_state(s: &str) -> Option<(u64, u64)> {
    let (a, b) = s.split_once('-')?;
    Some((id::parse_state(a)?, id::parse_state(b)?))
}

/// Reads the quota. `mail` tells whether the request uses the mail
/// capability: without it the client knows none of the quota's types and
/// must not see it (RFC 9425 section 4).
fn read(ctx: &Ctx<'_>, account: AccountId, mail: bool) -> Result<Option<Snapshot>, MethodError> {
    let (record, used, email_state, quota_state) = ctx.store.kv().read(|tx| {
        Ok::<_, tern_store::Error>((
            account::get_account(tx, account)?,
            account::used_bytes(tx, account)?,
            changes::state(tx, account, DataType::Email)?,
            changes::state(tx, account, DataType::Quota)?,
        ))
    })?;
    let record = record.ok_or(MethodError::AccountNotFound)?;
    let object = json!({
        "id": QUOTA_ID,
        "resourceType": "octets",
        "used": used,
        "hardLimit": record.quota_bytes,
        "scope": "account",
        "name": record.address,
        "types": if mail { json!(["Email"]) } else { json!([]) },
        "warnLimit": null,
        "softLimit": null,
        "description": "Storage used by the account's email",
    });
    Ok(Some(Snapshot {
        change: email_state.max(quota_state),
        limit: record.quota_bytes,
        object: object.as_object().cloned().expect("object"),
    }))
}

/// Quota/get.
pub fn get(ctx: &mut Ctx<'_>, args: Arguments, mail: bool) -> MethodResult {
    let req = args::parse_get(ctx, &args, &PROPERTIES, &[])?;
    let snap = read(ctx, req.account, mail)?.expect("quota");
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    match &req.ids {
        None if mail => list.push(args::select(snap.object.clone(), &req.properties)),
        None => {}
        Some(ids) => {
            for s in ids {
                if s == QUOTA_ID && mail {
                    list.push(args::select(snap.object.clone(), &req.properties));
                } else {
                    not_found.push(s.clone());
                }
            }
        }
    }
    Ok(args::get_response(
        req.account,
        snap.state(),
        list,
        not_found,
    ))
}

/// Quota/changes, with updatedProperties `["used"]` when only usage
/// changed.
pub fn changes(ctx: &mut Ctx<'_>, args: Arguments, mail: bool) -> MethodResult {
    args::allow_only(&args, &["accountId", "sinceState", "maxChanges"])?;
    let account = ctx.account(&args)?;
    let since = match args.get("sinceState") {
        Some(Value::String(s)) => parse_state(s).ok_or(MethodError::CannotCalculateChanges)?,
        _ => return Err(MethodError::invalid_arguments("sinceState is required")),
    };
    args::max_changes(ctx, &args)?;
    let snap = read(ctx, account, mail)?.expect("quota");
    if since.0 > snap.change {
        return Err(MethodError::CannotCalculateChanges);
    }
    let changed = since != (snap.change, snap.limit);
    let updated: Vec<&str> = if changed && mail {
        vec![QUOTA_ID]
    } else {
        vec![]
    };
    let mut out = Map::new();
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert("oldState".into(), json!(format!("{}-{}", since.0, since.1)));
    out.insert("newState".into(), json!(snap.state()));
    out.insert("hasMoreChanges".into(), json!(false));
    out.insert(
        "updatedProperties".into(),
        if changed && since.1 == snap.limit {
            json!(["used"])
        } else {
            Value::Null
        },
    );
    out.insert("created".into(), json!([]));
    out.insert("updated".into(), json!(updated));
    out.insert("destroyed".into(), json!([]));
    Ok(out)
}

fn matches(filter: &Value, q: &Map<String, Value>) -> Result<bool, MethodError> {
    let Some(f) = filter.as_object() else {
        return Err(MethodError::invalid_arguments("filter must be an object"));
    };
    if let Some(op) = f.get("operator") {
        args::allow_only(f, &["operator", "conditions"])?;
        let Some(conds) = f.get("conditions").and_then(Value::as_array) else {
            return Err(MethodError::invalid_arguments(
                "conditions must be an array",
            ));
        };
        let results = conds
            .iter()
            .map(|c| matches(c, q))
            .collect::<Result<Vec<_>, _>>()?;
        return match op.as_str() {
            Some("AND") => Ok(results.iter().all(|&r| r)),
            Some("OR") => Ok(results.iter().any(|&r| r)),
            Some("NOT") => Ok(!results.iter().any(|&r| r)),
            _ => Err(MethodError::invalid_arguments("unknown filter operator")),
        };
    }
    let mut ok = true;
    for (k, v) in f {
        let Some(s) = v.as_str() else {
            return Err(MethodError::invalid_arguments(format!(
                "filter {k} must be a string"
            )));
        };
        ok &= match k.as_str() {
            "name" => q["name"]
                .as_str()
                .is_some_and(|n| n.to_lowercase().contains(&s.to_lowercase())),
            "scope" => q["scope"] == s,
            "resourceType" => q["resourceType"] == s,
            "type" => q["types"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == s)),
            _ => {
                return Err(MethodError::invalid_arguments(format!(
                    "unknown filter condition {k:?}"
                )));
            }
        };
    }
    Ok(ok)
}

fn results(
    ctx: &Ctx<'_>,
    args: &Arguments,
    account: AccountId,
    mail: bool,
) -> Result<(Snapshot, Vec<String>), MethodError> {
    args::parse_sort(args, &["name", "used"])?;
    let snap = read(ctx, account, mail)?.expect("quota");
    let included = mail
        && match args.get("filter") {
            None | Some(Value::Null) => true,
            Some(f) => matches(f, &snap.object)?,
        };
    let ids = if included {
        vec![QUOTA_ID.to_string()]
    } else {
        vec![]
    };
    Ok((snap, ids))
}

/// Quota/query.
pub fn query(ctx: &mut Ctx<'_>, args: Arguments, mail: bool) -> MethodResult {
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
    let window = args::parse_window(ctx, &args)?;
    let (snap, ids) = results(ctx, &args, account, mail)?;
    let mut out = args::window_response(account, &ids, &window)?;
    out.insert("queryState".into(), json!(snap.state()));
    out.insert("canCalculateChanges".into(), json!(true));
    Ok(out)
}

/// Quota/queryChanges: the one quota is reported removed and re-added
/// whenever the state moved (its `used` may have changed its position
/// under a filter or sort).
pub fn query_changes(ctx: &mut Ctx<'_>, args: Arguments, mail: bool) -> MethodResult {
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
    let since = match args.get("sinceQueryState") {
        Some(Value::String(s)) => parse_state(s).ok_or(MethodError::CannotCalculateChanges)?,
        _ => {
            return Err(MethodError::invalid_arguments(
                "sinceQueryState is required",
            ));
        }
    };
    let max = args::opt_uint(&args, "maxChanges")?;
    let calculate_total = args::bool_arg(&args, "calculateTotal", false)?;
    let (snap, ids) = results(ctx, &args, account, mail)?;
    if since.0 > snap.change {
        return Err(MethodError::CannotCalculateChanges);
    }
    let changed = since != (snap.change, snap.limit);
    let (removed, added) = if changed {
        (
            vec![json!(QUOTA_ID)],
            ids.iter()
                .enumerate()
                .map(|(i, s)| json!({"id": s, "index": i}))
                .collect(),
        )
    } else {
        (vec![], vec![])
    };
    if max.is_some_and(|m| ((removed.len() + added.len()) as u64) > m) {
        return Err(MethodError::TooManyChanges);
    }
    let mut out = Map::new();
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert(
        "oldQueryState".into(),
        json!(format!("{}-{}", since.0, since.1)),
    );
    out.insert("newQueryState".into(), json!(snap.state()));
    if calculate_total {
        out.insert("total".into(), json!(ids.len()));
    }
    out.insert("removed".into(), Value::Array(removed));
    out.insert("added".into(), Value::Array(added));
    Ok(out)
}

/// The Quota state (as Quota/get returns it) inside a read.
pub(crate) fn state_in(
    tx: &mut tern_store::kv::Transaction<'_>,
    account: AccountId,
) -> tern_store::Result<String> {
    let limit = account::get_account(tx, account)?.map_or(0, |r| r.quota_bytes);
    let change = changes::state(tx, account, DataType::Email)?.max(changes::state(
        tx,
        account,
        DataType::Quota,
    )?);
    Ok(format!("{change}-{limit}"))
}
