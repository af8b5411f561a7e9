//! Identity/get, changes, set (RFC 8621 section 6), stored as generic
//! objects (`tern_store::object`). Every account has a default identity for
//! its login address (`mayDelete: false`), created the first time the
//! account's identities are used.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};
use tern_store::changes::{self, Writer};
use tern_store::kv::Transaction;
use tern_store::{AccountId, Collection, DataType, DocumentId, account, object};

use crate::args::{self, SetResponse};
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult, SetError};

/// Every Identity property.
pub const PROPERTIES: [&str; 8] = [
    "id",
    "name",
    "email",
    "replyTo",
    "bcc",
    "textSignature",
    "htmlSignature",
    "mayDelete",
];

const SETTABLE: [&str; 6] = [
    "name",
    "email",
    "replyTo",
    "bcc",
    "textSignature",
    "htmlSignature",
];

fn decode(bytes: &[u8]) -> Map<String, Value> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn with_id(id: DocumentId, mut stored: Map<String, Value>) -> Map<String, Value> {
    stored.insert("id".into(), json!(id::encode(Kind::Identity, id)));
    stored
}

/// Creates the default identity if the account never had one. Returns
/// whether it wrote.
fn ensure_default(w: &mut Writer<'_, '_>) -> tern_store::Result<bool> {
    if object::allocated(w.tx, w.account, Collection::Identity)? > 0 {
        return Ok(false);
    }
    let Some(record) = account::get_account(w.tx, w.account)? else {
        return Ok(false);
    };
    let value = json!({
        "name": record.name,
        "email": record.address,
        "replyTo": null,
        "bcc": null,
        "textSignature": "",
        "htmlSignature": "",
        "mayDelete": false,
    });
    object::create(
        w,
        Collection::Identity,
        DataType::Identity,
        value.to_string().as_bytes(),
    )?;
    Ok(true)
}

/// Makes sure the default identity exists (one write the first time).
pub(crate) fn initialize(ctx: &Ctx<'_>, account: AccountId) -> Result<(), MethodError> {
    let done = ctx.store.kv().read(|tx| {
        Ok::<_, tern_store::Error>(object::allocated(tx, account, Collection::Identity)? > 0)
    })?;
    if !done {
        ctx.store.kv().transact(|tx| {
            let mut w = Writer::begin(tx, account)?;
            ensure_default(&mut w)?;
            w.finish()?;
            Ok::<_, tern_store::Error>(())
        })?;
    }
    Ok(())
}

fn state(tx: &mut Transaction<'_>, account: AccountId) -> tern_store::Result<u64> {
    changes::state(tx, account, DataType::Identity)
}

/// Identity/get.
pub fn get(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let req = args::parse_get(ctx, &args, &PROPERTIES, &[])?;
    let account = req.account;
    initialize(ctx, account)?;
    let (st, all) = ctx.store.kv().read(|tx| {
        Ok::<_, tern_store::Error>((
            state(tx, account)?,
            object::list(tx, account, Collection::Identity)?,
        ))
    })?;
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    match &req.ids {
        None => {
            for (i, bytes) in all {
                list.push(args::select(with_id(i, decode(&bytes)), &req.properties));
            }
        }
        Some(ids) => {
            for s in ids {
                let found = id::decode(Kind::Identity, s)
                    .and_then(|i| all.iter().find(|(x, _)| *x == i).map(|(x, b)| (*x, b)));
                match found {
                    Some((i, bytes)) => {
                        list.push(args::select(with_id(i, decode(bytes)), &req.properties))
                    }
                    None => not_found.push(s.clone()),
                }
            }
        }
    }
    Ok(args::get_response(account, id::state(st), list, not_found))
}

/// Identity/changes.
pub fn changes(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let account = ctx.account(&args)?;
    initialize(ctx, account)?;
    Ok(args::changes_method(ctx, &args, DataType::Identity, Kind::Identity)?.0)
}

fn invalid(p: &str, d: impl Into<String>) -> SetError {
    SetError::invalid_properties([p]).with_description(d)
}

fn check_addresses(obj: &Map<String, Value>, p: &str) -> Result<(), SetError> {
    match obj.get(p) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(items)) => {
            for a in items {
                let ok = a.as_object().is_some_and(|o| {
                    o.keys().all(|k| k == "name" || k == "email")
                        && matches!(o.get("name"), None | Some(Value::Null | Value::String(_)))
                        && matches!(o.get("email"), Some(Value::String(_)))
                });
                if !ok {
                    return Err(invalid(p, format!("{p} must be EmailAddress[] or null")));
                }
            }
            Ok(())
        }
        Some(_) => Err(invalid(p, format!("{p} must be EmailAddress[] or null"))),
    }
}

/// Checks and completes an identity's settable properties (defaults for
/// the absent ones).
fn normalize(mut obj: Map<String, Value>) -> Result<Map<String, Value>, SetError> {
    for p in ["name", "textSignature", "htmlSignature"] {
        match obj.get(p) {
            None | Some(Value::Null) => {
                obj.insert(p.into(), json!(""));
            }
            Some(Value::String(s)) if s.len() <= 100_000 => {}
            Some(_) => return Err(invalid(p, format!("{p} must be a string"))),
        }
    }
    for p in ["replyTo", "bcc"] {
        check_addresses(&obj, p)?;
        obj.entry(p).or_insert(Value::Null);
    }
    if !matches!(obj.get("email"), Some(Value::String(_))) {
        return Err(invalid("email", "email is required"));
    }
    Ok(obj)
}

/// Identity/set.
pub fn set(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let req = args::parse_set(ctx, &args, &[])?;
    let account = req.account;
    initialize(ctx, account)?;
    let result = ctx.store.kv().transact(|tx| {
        let mut w = Writer::begin(tx, account)?;
        let old = state(w.tx, account)?;
        if let Some(expected) = req.if_in_state
            && expected != Some(old)
        {
            return Ok(Err(MethodError::StateMismatch));
        }
        let record = account::get_account(w.tx, account)?;
        let allowed: BTreeSet<String> = record
            .map(|r| std::iter::once(r.address).chain(r.aliases).collect())
            .unwrap_or_default();
        let mut response = SetResponse::default();
        let mut new_ids = Vec::new();
        for (cid, obj) in &req.create {
            if let Some(bad) = obj.keys().find(|k| !SETTABLE.contains(&k.as_str())) {
                response.not_created(cid, invalid(bad, format!("{bad} cannot be set")));
                continue;
            }
            let mut obj = match normalize(obj.clone()) {
                Ok(o) => o,
                Err(e) => {
                    response.not_created(cid, e);
                    continue;
                }
            };
            let email = obj["email"].as_str().unwrap_or_default().to_lowercase();
            if !allowed.contains(&email) {
                response.not_created(cid, SetError::new("forbiddenFrom"));
                continue;
            }
            obj.insert("email".into(), json!(email));
            obj.insert("mayDelete".into(), json!(true));
            let new = object::create(
                &mut w,
                Collection::Identity,
                DataType::Identity,
                Value::Object(obj.clone()).to_string().as_bytes(),
            )?;
            let real = id::encode(Kind::Identity, new);
            let original = &req.create.iter().find(|(c, _)| c == cid).expect("cid").1;
            let mut out = with_id(new, obj);
            // Server-set, defaulted, and changed (the address lowercased).
            out.retain(|k, v| {
                k == "id" || k == "mayDelete" || original.get(k).is_none_or(|sent| sent != v)
            });
            response.created.insert(cid.clone(), Value::Object(out));
            new_ids.push((cid.clone(), real));
        }
        for (sid, patch) in &req.update {
            let current = match id::decode(Kind::Identity, sid) {
                Some(i) => object::get(w.tx, account, Collection::Identity, i)?.map(|b| (i, b)),
                None => None,
            };
            let Some((i, bytes)) = current else {
                response.not_updated(sid, SetError::new("notFound"));
                continue;
            };
            let Ok(patch) = patch else {
                response.not_updated(sid, SetError::new("invalidPatch"));
                continue;
            };
            let before = with_id(i, decode(&bytes));
            let mut after = before.clone();
            if let Err(e) = args::apply_patch(&mut after, patch) {
                response.not_updated(sid, e);
                continue;
            }
            if let Some(bad) = ["id", "email", "mayDelete"]
                .iter()
                .find(|k| after.get(**k) != before.get(**k))
            {
                response.not_updated(sid, invalid(bad, format!("{bad} is immutable")));
                continue;
            }
            if let Some(bad) = after.keys().find(|k| !PROPERTIES.contains(&k.as_str())) {
                response.not_updated(sid, invalid(bad, format!("unknown property {bad:?}")));
                continue;
            }
            after.remove("id");
            let after = match normalize(after) {
                Ok(o) => o,
                Err(e) => {
                    response.not_updated(sid, e);
                    continue;
                }
            };
            let mut stored = before.clone();
            stored.remove("id");
            if after != stored {
                object::update(
                    &mut w,
                    Collection::Identity,
                    DataType::Identity,
                    i,
                    Value::Object(after).to_string().as_bytes(),
                )?;
            }
            response.updated.insert(sid.clone(), Value::Null);
        }
        for sid in &req.destroy {
            let current = match id::decode(Kind::Identity, sid) {
                Some(i) => object::get(w.tx, account, Collection::Identity, i)?.map(|b| (i, b)),
                None => None,
            };
            let Some((i, bytes)) = current else {
                response.not_destroyed(sid, SetError::new("notFound"));
                continue;
            };
            if decode(&bytes).get("mayDelete") == Some(&json!(false)) {
                response.not_destroyed(sid, SetError::new("forbidden"));
                continue;
            }
            object::destroy(&mut w, Collection::Identity, DataType::Identity, i)?;
            response.destroyed.push(sid.clone());
        }
        let wrote = w.finish()?.is_some();
        let new = if wrote { state(tx, account)? } else { old };
        Ok::<_, tern_store::Error>(Ok((response, old, new, new_ids)))
    })??;
    let (response, old, new, new_ids) = result;
    for (cid, real) in new_ids {
        ctx.created_ids.insert(cid, real);
    }
    Ok(response.into_arguments(account, Some(id::state(old)), id::state(new)))
}
