//! Thread/get and Thread/changes (RFC 8621 section 3).

use serde_json::{Map, Value, json};
use tern_store::keys::{self, family};
use tern_store::kv::RangeOptions;
use tern_store::{DataType, changes, email};

use crate::args;
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult};

/// Thread/get. `ids: null` lists every thread (requestTooLarge beyond
/// maxObjectsInGet).
pub fn get(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let req = args::parse_get(ctx, &args, &["id", "emailIds"], &[])?;
    let account = req.account;
    let max = ctx.limits.max_objects_in_get;
    let (st, list, not_found) = ctx.store.kv().read(|tx| {
        let st = changes::state(tx, account, DataType::Thread)?;
        let ids = match &req.ids {
            Some(ids) => ids.clone(),
            None => {
                let range = keys::acct(account, family::THREAD).prefix_range();
                let all = tx.range(&range, RangeOptions::limit(max + 1))?;
                if all.len() > max {
                    return Ok(Err(MethodError::RequestTooLarge));
                }
                all.iter()
                    .map(|(k, _)| id::encode(Kind::Thread, keys::be_u32(k, k.len() - 4)))
                    .collect()
            }
        };
        let mut list = Vec::new();
        let mut not_found = Vec::new();
        for s in &ids {
            let found = match id::decode(Kind::Thread, s) {
                Some(t) if email::thread_exists(tx, account, t)? => {
                    Some(email::thread_emails(tx, account, t)?)
                }
                _ => None,
            };
            match found {
                Some(emails) => {
                    let mut o = Map::new();
                    o.insert("id".into(), json!(s));
                    o.insert(
                        "emailIds".into(),
                        Value::Array(
                            emails
                                .into_iter()
                                .map(|e| json!(id::encode(Kind::Email, e)))
                                .collect(),
                        ),
                    );
                    list.push(args::select(o, &req.properties));
                }
                None => not_found.push(s.clone()),
            }
        }
        Ok::<_, tern_store::Error>(Ok((st, list, not_found)))
    })??;
    Ok(args::get_response(account, id::state(st), list, not_found))
}

/// Thread/changes.
pub fn changes(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    Ok(args::changes_method(ctx, &args, DataType::Thread, Kind::Thread)?.0)
}
