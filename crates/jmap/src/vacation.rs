//! VacationResponse/get and set (RFC 8621 section 8): one object per
//! account, id `singleton`, stored as a generic singleton object.

use serde_json::{Map, Value, json};
use tern_store::changes::{self, Writer};
use tern_store::{DataType, object};

use crate::args::{self, SetResponse};
use crate::id;
use crate::method::{Arguments, Ctx, MethodError, MethodResult, SetError};

/// The only id.
pub const SINGLETON: &str = "singleton";

/// Every VacationResponse property.
pub const PROPERTIES: [&str; 7] = [
    "id",
    "isEnabled",
    "fromDate",
    "toDate",
    "subject",
    "textBody",
    "htmlBody",
];

fn default_object() -> Map<String, Value> {
    let v = json!({
        "isEnabled": false,
        "fromDate": null,
        "toDate": null,
        "subject": null,
        "textBody": null,
        "htmlBody": null,
    });
    v.as_object().cloned().expect("object")
}

fn current(bytes: Option<Vec<u8>>) -> Map<String, Value> {
    let mut o = default_object();
    if let Some(stored) = bytes
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.as_object().cloned())
    {
        o.extend(stored);
    }
    o.insert("id".into(), json!(SINGLETON));
    o
}

/// Whether `s` is a UTCDate (RFC 8620 section 1.4):
/// `YYYY-MM-DDTHH:MM:SS[.fff]Z`, uppercase `T` and `Z`.
pub fn is_utc_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 || b[b.len() - 1] != b'Z' {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    let num = |r: std::ops::Range<usize>| -> u32 {
        std::str::from_utf8(&b[r])
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(99)
    };
    let frac = &b[19..b.len() - 1];
    digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (1..=12).contains(&num(5..7))
        && (1..=31).contains(&num(8..10))
        && num(11..13) < 24
        && num(14..16) < 60
        && num(17..19) < 61
        && (frac.is_empty()
            || (frac.len() >= 2
                && frac[0] == b'.'
                && frac[1..].iter().all(u8::is_ascii_digit)
                && frac[1..].iter().any(|&d| d != b'0')))
}

fn validate(o: &Map<String, Value>) -> Result<(), SetError> {
    let bad = |p: &str, d: &str| Err(SetError::invalid_properties([p]).with_description(d));
    for k in o.keys() {
        if !PROPERTIES.contains(&k.as_str()) {
            return bad(k, "unknown property");
        }
    }
    if !o.get("isEnabled").is_some_and(Value::is_boolean) {
        return bad("isEnabled", "isEnabled must be a boolean");
    }
    for p in ["fromDate", "toDate"] {
        match o.get(p) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if is_utc_date(s) => {}
            _ => return bad(p, "must be a UTCDate or null"),
        }
    }
    for p in ["subject", "textBody", "htmlBody"] {
        match o.get(p) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.len() <= 1_000_000 => {}
            _ => return bad(p, "must be a string or null"),
        }
    }
    Ok(())
}

/// VacationResponse/get.
pub fn get(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let req = args::parse_get(ctx, &args, &PROPERTIES, &[])?;
    let account = req.account;
    let (st, bytes) = ctx.store.kv().read(|tx| {
        Ok::<_, tern_store::Error>((
            changes::state(tx, account, DataType::VacationResponse)?,
            object::get_singleton(tx, account, DataType::VacationResponse)?,
        ))
    })?;
    let obj = current(bytes);
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    match &req.ids {
        None => list.push(args::select(obj, &req.properties)),
        Some(ids) => {
            for s in ids {
                if s == SINGLETON {
                    list.push(args::select(obj.clone(), &req.properties));
                } else {
                    not_found.push(s.clone());
                }
            }
        }
    }
    Ok(args::get_response(account, id::state(st), list, not_found))
}

/// VacationResponse/set: only updates of `singleton`.
pub fn set(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    let req = args::parse_set(ctx, &args, &[])?;
    let account = req.account;
    let (response, old, new) = ctx.store.kv().transact(|tx| {
        let mut w = Writer::begin(tx, account)?;
        let old = changes::state(w.tx, account, DataType::VacationResponse)?;
        if let Some(expected) = req.if_in_state
            && expected != Some(old)
        {
            return Ok(Err(MethodError::StateMismatch));
        }
        let mut response = SetResponse::default();
        for (cid, _) in &req.create {
            response.not_created(cid, SetError::new("singleton"));
        }
        for (sid, patch) in &req.update {
            if sid != SINGLETON {
                response.not_updated(sid, SetError::new("notFound"));
                continue;
            }
            let Ok(patch) = patch else {
                response.not_updated(sid, SetError::new("invalidPatch"));
                continue;
            };
            let before = current(object::get_singleton(
                w.tx,
                account,
                DataType::VacationResponse,
            )?);
            let mut after = before.clone();
            if let Err(e) = args::apply_patch(&mut after, patch) {
                response.not_updated(sid, e);
                continue;
            }
            // Removed properties return to their defaults.
            for (k, v) in default_object() {
                after.entry(k).or_insert(v);
            }
            if after.get("id") != Some(&json!(SINGLETON)) {
                response.not_updated(
                    sid,
                    SetError::invalid_properties(["id"]).with_description("id is immutable"),
                );
                continue;
            }
            if let Err(e) = validate(&after) {
                response.not_updated(sid, e);
                continue;
            }
            if after != before {
                after.remove("id");
                object::put_singleton(
                    &mut w,
                    DataType::VacationResponse,
                    Value::Object(after).to_string().as_bytes(),
                )?;
            }
            response.updated.insert(sid.clone(), Value::Null);
        }
        for sid in &req.destroy {
            let e = if sid == SINGLETON {
                SetError::new("singleton")
            } else {
                SetError::new("notFound")
            };
            response.not_destroyed(sid, e);
        }
        let wrote = w.finish()?.is_some();
        let new = if wrote {
            changes::state(tx, account, DataType::VacationResponse)?
        } else {
            old
        };
        Ok::<_, tern_store::Error>(Ok((response, old, new)))
    })??;
    Ok(response.into_arguments(account, Some(id::state(old)), id::state(new)))
}

#[cfg(test)]
mod tests {
    use super::is_utc_date;

    #[test]
    fn utc_dates() {
        assert!(is_utc_date("2026-11-22T10:00:00Z"));
        assert!(is_utc_date("2026-11-22T10:00:00.5Z"));
        assert!(!is_utc_date("2026-11-22T10:00:00.0Z"));
        assert!(!is_utc_date("2026-11-22T10:00:00+01:00"));
        assert!(!is_utc_date("2026-13-22T10:00:00Z"));
        assert!(!is_utc_date("2026-11-22t10:00:00z"));
    }
}
