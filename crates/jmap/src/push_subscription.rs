//! PushSubscription/get and PushSubscription/set (RFC 8620 section 7.2).
//!
//! Subscriptions are generic objects of the account
//! ([`tern_store::object`], collection `07`); their JSON holds the client's
//! properties and the verification code the server sent (`expectedCode`,
//! never returned). Every write also keeps the global `0x39 ++ account`
//! marker (the account has subscriptions) and adds to the global push
//! epoch key, which the senders of every node watch
//! (`crate::push_delivery`).
//!
//! Decisions: subscriptions belong to the account, not to one credential
//! (a Basic password and the account's app tokens see the same ones; they
//! go when the account goes). `keys` is refused with invalidProperties:
//! this server does not encrypt pushes (RFC 8291). `expires` is brought
//! down to [`MAX_EXPIRY`] (7 days) and set to it when missing.

use serde_json::{Map, Value, json};
use tern_store::changes::Writer;
use tern_store::dates::{parse_utc_date, utc_date};
use tern_store::kv::{RangeOptions, Transaction};
use tern_store::{AccountId, Collection, DataType, DocumentId, MailStore, keys, object};

use crate::args::{self, opt_strings};
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult, SetError};

/// Every PushSubscription property.
pub const PROPERTIES: [&str; 7] = [
    "id",
    "deviceClientId",
    "url",
    "keys",
    "verificationCode",
    "expires",
    "types",
];

/// Properties that are never returned (RFC 8620 section 7.2.1).
const PRIVATE: [&str; 2] = ["url", "keys"];

/// Most subscriptions one account may hold.
pub const MAX_PER_ACCOUNT: usize = 50;

/// Longest URL accepted.
const MAX_URL: usize = 2048;

/// The longest lifetime of a subscription, in seconds: later or missing
/// `expires` values are brought down to it (RFC 8620 section 7.2: at least
/// 48 hours, preferably at least 7 days).
pub const MAX_EXPIRY: i64 = 7 * 24 * 3600;

/// The stored field holding the code sent in the PushVerification.
const EXPECTED: &str = "expectedCode";

/// A JSON object.
type Object = Map<String, Value>;

/// A stored subscription, as the sender needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Subscription {
    /// The account it belongs to.
    pub account: AccountId,
    /// Its document id.
    pub doc: DocumentId,
    /// The push URL (https).
    pub url: String,
    /// Types wanted (`None`: all).
    pub types: Option<Vec<String>>,
    /// Unix seconds after which nothing may be sent.
    pub expires: i64,
    /// The code to send in the PushVerification.
    pub code: String,
    /// Whether the client confirmed the code.
    pub verified: bool,
}

impl Subscription {
    /// The JMAP id.
    pub fn id(&self) -> String {
        id::encode(Kind::PushSubscription, self.doc)
    }

    fn from_stored(account: AccountId, doc: DocumentId, obj: &Map<String, Value>) -> Option<Self> {
        let code = obj.get(EXPECTED)?.as_str()?.to_string();
        Some(Self {
            account,
            doc,
            url: obj.get("url")?.as_str()?.to_string(),
            types: match obj.get("types") {
                Some(Value::Array(a)) => Some(
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                ),
                _ => None,
            },
            expires: obj
                .get("expires")
                .and_then(Value::as_str)
                .and_then(parse_utc_date)
                .unwrap_or(0),
            verified: obj.get("verificationCode").and_then(Value::as_str) == Some(code.as_str()),
            code,
        })
    }
}

fn decode(bytes: &[u8]) -> Map<String, Value> {
    serde_json::from_slice::<Value>(bytes)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

/// The public form of a stored subscription: every property but the
/// private ones and the server's code.
fn public(doc: DocumentId, mut stored: Map<String, Value>) -> Map<String, Value> {
    stored.remove(EXPECTED);
    for p in PRIVATE {
        stored.remove(p);
    }
    stored.insert("id".into(), json!(id::encode(Kind::PushSubscription, doc)));
    stored
}

/// PushSubscription/get: no accountId, no state; `url` and `keys` are
/// never returned (asking for them is forbidden).
pub fn get(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    // accountId is tolerated (some clients send it) and ignored.
    args::allow_only(&args, &["ids", "properties", "accountId"])?;
    let ids = opt_strings(&args, "ids")?.map(|ids| {
        let mut seen = std::collections::HashSet::new();
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
    let properties = opt_strings(&args, "properties")?;
    if let Some(props) = &properties {
        for p in props {
            if PRIVATE.contains(&p.as_str()) {
                return Err(MethodError::Forbidden);
            }
            if !PROPERTIES.contains(&p.as_str()) {
                return Err(MethodError::invalid_arguments(format!(
                    "unknown property {p:?}"
                )));
            }
        }
    }
    let account = ctx.user;
    let stored = ctx
        .store
        .kv()
        .read(|tx| object::list(tx, account, Collection::PushSubscription))?;
    let mut list = Vec::new();
    let mut not_found = Vec::new();
    let all: Vec<(DocumentId, Map<String, Value>)> =
        stored.into_iter().map(|(d, b)| (d, decode(&b))).collect();
    match ids {
        None => {
            for (doc, obj) in all {
                list.push(args::select(public(doc, obj), &properties));
            }
        }
        Some(ids) => {
            for s in ids {
                match id::decode(Kind::PushSubscription, &s)
                    .and_then(|d| all.iter().find(|(doc, _)| *doc == d))
                {
                    Some((doc, obj)) => {
                        list.push(args::select(public(*doc, obj.clone()), &properties))
                    }
                    None => not_found.push(s),
                }
            }
        }
    }
    let mut out = Map::new();
    out.insert("list".into(), Value::Array(list));
    out.insert("notFound".into(), json!(not_found));
    Ok(out)
}

fn invalid(prop: &str, why: &str) -> SetError {
    SetError::invalid_properties([prop]).with_description(format!("{prop}: {why}"))
}

/// Whether `url` is an absolute https URL with a host.
fn valid_url(url: &str) -> bool {
    if url.len() > MAX_URL {
        return false;
    }
    match url.parse::<hyper::Uri>() {
        Ok(u) => {
            u.scheme_str()
                .is_some_and(|s| s.eq_ignore_ascii_case("https"))
                && u.host().is_some_and(|h| !h.is_empty())
                && url
                    .get(..8)
                    .is_some_and(|p| p.eq_ignore_ascii_case("https://"))
        }
        Err(_) => false,
    }
}

/// Validates `types` (null or an array of strings).
fn valid_types(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => {
            a.len() <= 64 && a.iter().all(|t| t.as_str().is_some_and(|s| s.len() <= 255))
        }
        _ => false,
    }
}

/// The expiry to store for a requested `expires`: at most `max_secs`
/// from `now`; `None` for an invalid or past value.
fn bounded_expiry(requested: Option<&Value>, now: i64, max_secs: i64) -> Result<i64, SetError> {
    let latest = now + max_secs;
    match requested {
        None | Some(Value::Null) => Ok(latest),
        Some(Value::String(s)) => match parse_utc_date(s) {
            Some(t) if t <= now => Err(invalid("expires", "is in the past")),
            Some(t) => Ok(t.min(latest)),
            None => Err(invalid("expires", "must be a UTCDate")),
        },
        Some(_) => Err(invalid("expires", "must be a UTCDate or null")),
    }
}

fn new_code() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Keeps the account's marker and bumps the push epoch: after any write
/// of the account's subscriptions, in the same transaction.
fn announce(tx: &mut Transaction<'_>, account: AccountId) -> tern_store::Result<()> {
    let any = !object::list(tx, account, Collection::PushSubscription)?.is_empty();
    let marker = keys::push_account(account);
    if any {
        tx.set(&marker, &[])?;
    } else {
        tx.clear(&marker)?;
    }
    tx.add(keys::PUSH_EPOCH, 1)?;
    Ok(())
}

/// One create: the stored object and the created response, or why not.
fn create_one(
    obj: &Map<String, Value>,
    now: i64,
    max_secs: i64,
) -> Result<(Object, Object), SetError> {
    for k in obj.keys() {
        if !PROPERTIES.contains(&k.as_str()) {
            return Err(invalid(k, "is not a PushSubscription property"));
        }
    }
    if obj.contains_key("id") {
        return Err(invalid("id", "is set by the server"));
    }
    let device = match obj.get("deviceClientId") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => s.clone(),
        _ => {
            return Err(invalid(
                "deviceClientId",
                "must be a string of 1 to 255 bytes",
            ));
        }
    };
    let url = match obj.get("url") {
        Some(Value::String(s)) if valid_url(s) => s.clone(),
        _ => return Err(invalid("url", "must be an absolute https:// URL")),
    };
    match obj.get("keys") {
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(invalid(
                "keys",
                "this server does not encrypt push messages (RFC 8291); create the subscription without keys",
            ));
        }
    }
    match obj.get("verificationCode") {
        None | Some(Value::Null) => {}
        Some(_) => return Err(invalid("verificationCode", "must be null at creation")),
    }
    let types = obj.get("types").cloned().unwrap_or(Value::Null);
    if !valid_types(&types) {
        return Err(invalid("types", "must be null or an array of type names"));
    }
    let expires = bounded_expiry(obj.get("expires"), now, max_secs)?;
    let mut stored = Map::new();
    stored.insert("deviceClientId".into(), json!(device));
    stored.insert("url".into(), json!(url));
    stored.insert("keys".into(), Value::Null);
    stored.insert("verificationCode".into(), Value::Null);
    stored.insert("expires".into(), json!(utc_date(expires)));
    stored.insert("types".into(), types.clone());
    stored.insert(EXPECTED.into(), json!(new_code()));
    let mut created = Map::new();
    created.insert("expires".into(), json!(utc_date(expires)));
    for p in ["keys", "verificationCode", "types"] {
        if !obj.contains_key(p) {
            created.insert(p.into(), stored.get(p).cloned().unwrap_or(Value::Null));
        }
    }
    Ok((stored, created))
}

/// One update: the new stored object and the updated response (null or
/// the server-changed properties), or why not.
fn update_one(
    stored: &Map<String, Value>,
    patch: &Map<String, Value>,
    now: i64,
    max_secs: i64,
) -> Result<(Map<String, Value>, Value), SetError> {
    let mut after = stored.clone();
    let mut changed_by_server = Map::new();
    for (k, v) in patch {
        match k.as_str() {
            "verificationCode" => match v {
                Value::String(code)
                    if Some(code.as_str()) == stored.get(EXPECTED).and_then(Value::as_str) =>
                {
                    after.insert(k.clone(), v.clone());
                }
                _ => return Err(invalid(k, "is not the code sent to the push URL")),
            },
            "expires" => {
                let t = bounded_expiry(Some(v), now, max_secs)?;
                let s = json!(utc_date(t));
                if v.as_str() != s.as_str() {
                    changed_by_server.insert(k.clone(), s.clone());
                }
                after.insert(k.clone(), s);
            }
            "types" => {
                if !valid_types(v) {
                    return Err(invalid(k, "must be null or an array of type names"));
                }
                after.insert(k.clone(), v.clone());
            }
            "id" | "deviceClientId" | "url" | "keys" => {
                let current = stored.get(k.as_str()).unwrap_or(&Value::Null);
                if v != current || k == "id" {
                    return Err(invalid(k, "is immutable"));
                }
            }
            _ => return Err(invalid(k, "is not a PushSubscription property")),
        }
    }
    let updated = if changed_by_server.is_empty() {
        Value::Null
    } else {
        Value::Object(changed_by_server)
    };
    Ok((after, updated))
}

/// PushSubscription/set: no accountId, no ifInState, no states.
pub fn set(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    args::allow_only(&args, &["create", "update", "destroy", "accountId"])?;
    let create: Vec<(String, Map<String, Value>)> = match args.get("create") {
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
    let update: Vec<(String, Option<Map<String, Value>>)> = match args.get("update") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (args::resolve_ref(ctx, k), v.as_object().cloned()))
            .collect(),
        Some(_) => return Err(MethodError::invalid_arguments("update must be an object")),
    };
    let destroy: Vec<String> = opt_strings(&args, "destroy")?
        .unwrap_or_default()
        .iter()
        .map(|s| args::resolve_ref(ctx, s))
        .collect();
    if create.len() + update.len() + destroy.len() > ctx.limits.max_objects_in_set {
        return Err(MethodError::RequestTooLarge);
    }
    let account = ctx.user;
    let max_secs = MAX_EXPIRY;
    let now = tern_store::now();
    let response = ctx.store.kv().transact(|tx| {
        let mut w = Writer::begin(tx, account)?;
        let mut r = args::SetResponse::default();
        let mut count = object::list(w.tx, account, Collection::PushSubscription)?.len();
        let mut new_ids = Vec::new();
        for (cid, obj) in &create {
            if count >= MAX_PER_ACCOUNT {
                r.not_created(
                    cid,
                    SetError::new("overQuota").with_description(format!(
                        "an account may hold {MAX_PER_ACCOUNT} push subscriptions"
                    )),
                );
                continue;
            }
            match create_one(obj, now, max_secs) {
                Ok((stored, mut created)) => {
                    let doc = object::create(
                        &mut w,
                        Collection::PushSubscription,
                        DataType::PushSubscription,
                        Value::Object(stored).to_string().as_bytes(),
                    )?;
                    let sid = id::encode(Kind::PushSubscription, doc);
                    created.insert("id".into(), json!(sid));
                    r.created.insert(cid.clone(), Value::Object(created));
                    new_ids.push((cid.clone(), sid));
                    count += 1;
                }
                Err(e) => r.not_created(cid, e),
            }
        }
        for (sid, patch) in &update {
            let Some(patch) = patch else {
                r.not_updated(sid, SetError::new("invalidPatch"));
                continue;
            };
            let Some(doc) = id::decode(Kind::PushSubscription, sid) else {
                r.not_updated(sid, SetError::new("notFound"));
                continue;
            };
            let Some(bytes) = object::get(w.tx, account, Collection::PushSubscription, doc)? else {
                r.not_updated(sid, SetError::new("notFound"));
                continue;
            };
            match update_one(&decode(&bytes), patch, now, max_secs) {
                Ok((after, updated)) => {
                    object::update(
                        &mut w,
                        Collection::PushSubscription,
                        DataType::PushSubscription,
                        doc,
                        Value::Object(after).to_string().as_bytes(),
                    )?;
                    r.updated.insert(sid.clone(), updated);
                }
                Err(e) => r.not_updated(sid, e),
            }
        }
        for sid in &destroy {
            let found = match id::decode(Kind::PushSubscription, sid) {
                Some(doc) => {
                    object::get(w.tx, account, Collection::PushSubscription, doc)?.map(|_| doc)
                }
                None => None,
            };
            match found {
                Some(doc) => {
                    object::destroy(
                        &mut w,
                        Collection::PushSubscription,
                        DataType::PushSubscription,
                        doc,
                    )?;
                    r.destroyed.push(sid.clone());
                }
                None => r.not_destroyed(sid, SetError::new("notFound")),
            }
        }
        if w.finish()?.is_some() {
            announce(tx, account)?;
        }
        Ok::<_, tern_store::Error>((r, new_ids))
    })?;
    let (r, new_ids) = response;
    for (cid, sid) in new_ids {
        ctx.created_ids.insert(cid, sid);
    }
    let or_null = |m: Map<String, Value>| {
        if m.is_empty() {
            Value::Null
        } else {
            Value::Object(m)
        }
    };
    let mut out = Map::new();
    out.insert("created".into(), or_null(r.created));
    out.insert("updated".into(), or_null(r.updated));
    out.insert(
        "destroyed".into(),
        if r.destroyed.is_empty() {
            Value::Null
        } else {
            json!(r.destroyed)
        },
    );
    out.insert("notCreated".into(), or_null(r.not_created));
    out.insert("notUpdated".into(), or_null(r.not_updated));
    out.insert("notDestroyed".into(), or_null(r.not_destroyed));
    Ok(out)
}

/// Every subscription of every account that has some; clears the marker
/// of accounts that have none left (removed accounts). Blocks.
pub(crate) fn load_all(store: &MailStore) -> tern_store::Result<Vec<Subscription>> {
    let accounts: Vec<AccountId> = store.kv().read(|tx| {
        Ok::<_, tern_store::Error>(
            tx.range(&keys::push_accounts(), RangeOptions::default())?
                .into_iter()
                .filter_map(|(k, _)| {
                    k.get(1..5)
                        .map(|b| AccountId(u32::from_be_bytes(b.try_into().expect("4 bytes"))))
                })
                .collect(),
        )
    })?;
    let mut out = Vec::new();
    for account in accounts {
        let subs = store
            .kv()
            .read(|tx| object::list(tx, account, Collection::PushSubscription))?;
        if subs.is_empty() {
            store.kv().transact(|tx| {
                if object::list(tx, account, Collection::PushSubscription)?.is_empty() {
                    tx.clear(&keys::push_account(account))?;
                }
                Ok::<_, tern_store::Error>(())
            })?;
            continue;
        }
        out.extend(
            subs.into_iter()
                .filter_map(|(doc, b)| Subscription::from_stored(account, doc, &decode(&b))),
        );
    }
    Ok(out)
}

/// Removes a subscription (expired, or its URL keeps failing). Blocks.
pub(crate) fn remove(
    store: &MailStore,
    account: AccountId,
    doc: DocumentId,
) -> tern_store::Result<()> {
    store.kv().transact(|tx| {
        let mut w = Writer::begin(tx, account)?;
        if object::get(w.tx, account, Collection::PushSubscription, doc)?.is_none() {
            return Ok(());
        }
        object::destroy(
            &mut w,
            Collection::PushSubscription,
            DataType::PushSubscription,
            doc,
        )?;
        w.finish()?;
        announce(tx, account)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_round_trip() {
        for t in [0i64, 951_782_400, 1_530_843_269, 4_102_444_799] {
            assert_eq!(parse_utc_date(&utc_date(t)), Some(t), "{}", utc_date(t));
        }
        assert_eq!(utc_date(1_530_843_269), "2018-07-06T02:14:29Z");
        assert_eq!(
            parse_utc_date("2018-07-06T02:14:29.123Z"),
            Some(1_530_843_269)
        );
        assert_eq!(parse_utc_date("2018-07-06T02:14:29+00:00"), None);
        assert_eq!(parse_utc_date("2018-02-30T02:14:29Z"), None);
        assert_eq!(parse_utc_date("2018-07-06T02:14:29.Z"), None);
    }

    #[test]
    fn creation_validates_and_bounds_expiry() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        let now = 1_000_000;
        let week = 7 * 86_400;
        let (stored, created) = create_one(
            &obj(
                json!({"deviceClientId": "d1", "url": "https://push.example/x?y=1", "types": null}),
            ),
            now,
            week,
        )
        .unwrap();
        assert_eq!(created["expires"], json!(utc_date(now + week)));
        assert_eq!(created["keys"], Value::Null);
        assert_eq!(stored[EXPECTED].as_str().unwrap().len(), 32);
        let far = utc_date(now + 100 * week);
        let (_, created) = create_one(
            &obj(json!({"deviceClientId": "d1", "url": "https://push.example/", "expires": far})),
            now,
            week,
        )
        .unwrap();
        assert_eq!(created["expires"], json!(utc_date(now + week)), "shortened");
        let refused = |v: Value| create_one(&obj(v), now, week).unwrap_err().properties;
        assert_eq!(
            refused(json!({"deviceClientId": "d", "url": "http://push.example/"})),
            ["url"]
        );
        assert_eq!(
            refused(
                json!({"deviceClientId": "d", "url": "https://p.example/", "keys": {"p256dh": "x", "auth": "y"}})
            ),
            ["keys"]
        );
        assert_eq!(
            refused(
                json!({"deviceClientId": "d", "url": "https://p.example/", "verificationCode": "x"})
            ),
            ["verificationCode"]
        );
        assert_eq!(
            refused(json!({"url": "https://p.example/"})),
            ["deviceClientId"]
        );
        assert_eq!(
            refused(
                json!({"deviceClientId": "d", "url": "https://p.example/", "expires": utc_date(now - 1)})
            ),
            ["expires"]
        );
    }

    #[test]
    fn updates_need_the_right_code_and_keep_immutables() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        let (stored, _) = create_one(
            &obj(json!({"deviceClientId": "d1", "url": "https://push.example/"})),
            0,
            100,
        )
        .unwrap();
        let code = stored[EXPECTED].as_str().unwrap().to_string();
        let sub = |s: &Map<String, Value>| Subscription::from_stored(AccountId(1), 0, s).unwrap();
        assert!(!sub(&stored).verified);
        let err =
            update_one(&stored, &obj(json!({"verificationCode": "nope"})), 0, 100).unwrap_err();
        assert_eq!(err.properties, ["verificationCode"]);
        let (after, updated) =
            update_one(&stored, &obj(json!({"verificationCode": code})), 0, 100).unwrap();
        assert_eq!(updated, Value::Null);
        assert!(sub(&after).verified);
        let err = update_one(
            &stored,
            &obj(json!({"url": "https://other.example/"})),
            0,
            100,
        )
        .unwrap_err();
        assert_eq!(err.properties, ["url"]);
        let (after, updated) =
            update_one(&stored, &obj(json!({"expires": utc_date(1000)})), 0, 100).unwrap();
        assert_eq!(updated, json!({"expires": utc_date(100)}));
        assert_eq!(sub(&after).expires, 100);
    }
}
