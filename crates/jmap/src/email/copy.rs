//! Email/copy (RFC 8621 section 4.7, the standard /copy of RFC 8620
//! section 5.4): copies emails from another account the user can access
//! into `accountId`, and with `onSuccessDestroyOriginal` destroys the
//! originals through an implicit Email/set on the source account.
//!
//! The message blob is not copied: blobs are stored once by hash, so the
//! copy takes a reference to the same blob in the target account. Only
//! `mailboxIds` (required: mailbox ids belong to one account), `keywords`
//! and `receivedAt` may be given; the rest comes from the original. A
//! target account that already has an email with the same message (the
//! same blob) answers `alreadyExists` with its `existingId`.
//!
//! Access: an authenticated user reaches only their own account, so
//! `fromAccountId` is either that account (the same as `accountId`,
//! invalidArguments) or one the user cannot access
//! (fromAccountNotFound): over the API every call ends before
//! [`copy_between`], which does the copy once access is granted and is
//! tested directly on a store.

use std::collections::HashMap;

use serde_json::{Map, Value, json};
use tern_store::parse::parse_message;
use tern_store::{AccountId, BlobHash, DocumentId, Writer, blob, changes, email};

use super::set::{self, Prepared};
use super::{Fail, read_whole};
use crate::args;
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult, SetError};

/// The properties a copy may set (besides `id`, the original).
const SETTABLE: [&str; 3] = ["mailboxIds", "keywords", "receivedAt"];

/// How many email records one scan for an existing copy reads at a time.
const SCAN_PAGE: usize = 512;

/// The arguments of an Email/copy call, checked for shape.
#[derive(Debug)]
pub(crate) struct Request {
    from_account_id: String,
    if_from_in_state: Option<Option<u64>>,
    if_in_state: Option<Option<u64>>,
    create: Map<String, Value>,
    on_success_destroy_original: bool,
    destroy_from_if_in_state: Option<String>,
}

/// Parses the arguments (every one but accountId, checked by the
/// caller). A state string Tern never gave is kept as `Some(None)`: it
/// matches no state.
pub(crate) fn parse(args: &Arguments, max_objects: usize) -> Result<Request, MethodError> {
    args::allow_only(
        args,
        &[
            "fromAccountId",
            "ifFromInState",
            "accountId",
            "ifInState",
            "create",
            "onSuccessDestroyOriginal",
            "destroyFromIfInState",
        ],
    )?;
    let from_account_id = match args.get("fromAccountId") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(MethodError::invalid_arguments("fromAccountId is required")),
    };
    let create = match args.get("create") {
        Some(Value::Object(m)) => m.clone(),
        _ => return Err(MethodError::invalid_arguments("create is required")),
    };
    if create.len() > max_objects {
        return Err(MethodError::RequestTooLarge);
    }
    Ok(Request {
        from_account_id,
        if_from_in_state: args::opt_str(args, "ifFromInState")?.map(id::parse_state),
        if_in_state: args::opt_str(args, "ifInState")?.map(id::parse_state),
        create,
        on_success_destroy_original: args::bool_arg(args, "onSuccessDestroyOriginal", false)?,
        destroy_from_if_in_state: args::opt_str(args, "destroyFromIfInState")?.map(str::to_owned),
    })
}

/// The account named `s` if the user may read it: only their own.
fn accessible(ctx: &Ctx<'_>, s: &str) -> Option<AccountId> {
    (s == id::account_id(ctx.user)).then_some(ctx.user)
}

/// Email/copy, with the implicit Email/set that destroys the originals
/// when `onSuccessDestroyOriginal` is true.
pub fn copy(
    ctx: &mut Ctx<'_>,
    args: Arguments,
) -> (MethodResult, Option<(&'static str, MethodResult)>) {
    let checked = (|| {
        let req = parse(&args, ctx.limits.max_objects_in_set)?;
        let to = ctx.account(&args)?;
        if req.from_account_id == id::account_id(to) {
            return Err(MethodError::invalid_arguments(
                "fromAccountId must differ from accountId",
            ));
        }
        let from = accessible(ctx, &req.from_account_id).ok_or(MethodError::FromAccountNotFound)?;
        Ok((req, from, to))
    })();
    match checked {
        Ok((req, from, to)) => copy_between(ctx, from, to, &req),
        Err(e) => (Err(e), None),
    }
}

/// One create entry read from the source account: what to insert, or why
/// not.
type Entry = Result<(Prepared, BlobHash, DocumentId), SetError>;

/// Copies `req.create` from account `from` into `to` (access to both
/// already checked), then destroys the originals if asked.
pub(crate) fn copy_between(
    ctx: &mut Ctx<'_>,
    from: AccountId,
    to: AccountId,
    req: &Request,
) -> (MethodResult, Option<(&'static str, MethodResult)>) {
    let copied = match copy_emails(ctx, from, to, req) {
        Ok(c) => c,
        Err(e) => return (Err(e), None),
    };
    let (response, originals) = copied;
    let implicit = req.on_success_destroy_original.then(|| {
        let mut set_args = Map::new();
        set_args.insert("accountId".into(), json!(req.from_account_id));
        if let Some(s) = &req.destroy_from_if_in_state {
            set_args.insert("ifInState".into(), json!(s));
        }
        set_args.insert("destroy".into(), json!(originals));
        // The user may write the source account (access was checked):
        // the Email/set runs as on that account.
        let mut from_ctx = Ctx {
            store: ctx.store,
            user: from,
            limits: ctx.limits,
            created_ids: &mut *ctx.created_ids,
        };
        ("Email/set", super::set(&mut from_ctx, set_args))
    });
    (Ok(response), implicit)
}

/// Phases 1 and 2 of the copy: the response, and the ids of the originals
/// that were copied.
fn copy_emails(
    ctx: &mut Ctx<'_>,
    from: AccountId,
    to: AccountId,
    req: &Request,
) -> Result<(Arguments, Vec<String>), MethodError> {
    // Phase 1: read the originals from the source account.
    let (from_state, metas) = ctx.store.kv().read(|tx| {
        let st = changes::state(tx, from, tern_store::DataType::Email)?;
        let mut metas = HashMap::new();
        for obj in req.create.values() {
            let original = obj
                .get("id")
                .and_then(Value::as_str)
                .map(|s| args::resolve_ref(ctx, s));
            if let Some(doc) = original.and_then(|s| id::decode(Kind::Email, &s))
                && let Some(meta) = email::get(tx, from, doc)?
            {
                metas.insert(doc, meta);
            }
        }
        Ok::<_, tern_store::Error>((st, metas))
    })?;
    if let Some(expected) = req.if_from_in_state
        && expected != Some(from_state)
    {
        return Err(MethodError::StateMismatch);
    }
    let mut entries: Vec<(String, Entry)> = Vec::with_capacity(req.create.len());
    for (cid, obj) in &req.create {
        let entry = read_entry(ctx, cid, obj, &metas)?;
        entries.push((cid.clone(), entry));
    }

    // Phase 2: write the copies in one transaction on the target account.
    let created_ids = ctx.created_ids.clone();
    let (old, new, stored, not_created, originals) =
        ctx.store.kv().transact(|tx| -> Result<_, Fail> {
            let old = set::check_state(tx, to, req.if_in_state)?;
            let mut existing = existing_copies(tx, to, &entries)?;
            let mut w = Writer::begin(tx, to)?;
            let mut stored = Vec::new();
            let mut not_created = Map::new();
            let mut originals = Vec::new();
            for (cid, entry) in &entries {
                let (p, hash, original) = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        not_created.insert(cid.clone(), e.to_value());
                        continue;
                    }
                };
                if let Some(eid) = existing.get(hash) {
                    let mut e = SetError::new("alreadyExists").to_value();
                    e["existingId"] = json!(eid);
                    not_created.insert(cid.clone(), e);
                    continue;
                }
                let s = set::insert_all(&mut w, &created_ids, std::slice::from_ref(p))?;
                if let Some((_, eid)) = s.ids.first() {
                    existing.insert(*hash, eid.clone());
                    originals.push(id::encode(Kind::Email, *original));
                }
                stored.push(s);
            }
            let new = w.finish()?.unwrap_or(old);
            Ok((old, new, stored, not_created, originals))
        })?;
    let mut created = Map::new();
    let mut not_created = not_created;
    for s in stored {
        for (cid, eid) in s.ids {
            ctx.created_ids.insert(cid, eid);
        }
        created.extend(s.created);
        not_created.extend(s.not_created);
    }
    let mut out = Map::new();
    out.insert("fromAccountId".into(), json!(req.from_account_id));
    out.insert("accountId".into(), json!(id::account_id(to)));
    out.insert("oldState".into(), json!(id::state(old)));
    out.insert("newState".into(), json!(id::state(new)));
    out.insert("created".into(), args::or_null(created));
    out.insert("notCreated".into(), args::or_null(not_created));
    Ok((out, originals))
}

/// Checks one create entry and reads its message: the email to insert,
/// or the SetError.
fn read_entry(
    ctx: &Ctx<'_>,
    cid: &str,
    obj: &Value,
    metas: &HashMap<DocumentId, email::EmailMeta>,
) -> Result<Entry, MethodError> {
    let Value::Object(obj) = obj else {
        return Ok(Err(
            SetError::new("invalidProperties").with_description("not an object")
        ));
    };
    let unknown: Vec<&String> = obj
        .keys()
        .filter(|k| k.as_str() != "id" && !SETTABLE.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Ok(Err(SetError::invalid_properties(unknown).with_description(
            "a copy may set only mailboxIds, keywords and receivedAt",
        )));
    }
    let Some(original) = obj.get("id").and_then(Value::as_str) else {
        return Ok(Err(
            SetError::invalid_properties(["id"]).with_description("the id to copy is required")
        ));
    };
    let Some((doc, meta)) = id::decode(Kind::Email, &args::resolve_ref(ctx, original))
        .and_then(|doc| Some((doc, metas.get(&doc)?)))
    else {
        return Ok(Err(
            SetError::new("notFound").with_description(format!("no email {original}"))
        ));
    };
    let Some(mailbox_ids) = obj.get("mailboxIds").filter(|v| !v.is_null()).cloned() else {
        return Ok(Err(SetError::invalid_properties(["mailboxIds"])
            .with_description(
                "mailbox ids differ between accounts: mailboxIds is required",
            )));
    };
    let keywords = match obj.get("keywords") {
        None | Some(Value::Null) => meta.keywords.clone(),
        Some(v) => match set::parse_keywords(v) {
            Ok(k) => k,
            Err(e) => return Ok(Err(e)),
        },
    };
    let received_at = match set::parse_received_at(obj.get("receivedAt")) {
        Ok(r) => r.unwrap_or(meta.received_at),
        Err(e) => return Ok(Err(e)),
    };
    // The message is parsed again for the target account's threads.
    let Some(raw) = read_whole(ctx.store, &meta.blob)? else {
        return Ok(Err(
            SetError::new("notFound").with_description(format!("the message of {original}"))
        ));
    };
    let parsed = match parse_message(&raw) {
        Ok(p) => p,
        Err(e) => return Err(MethodError::ServerFail(format!("stored message: {e}"))),
    };
    Ok(Ok((
        Prepared {
            creation_id: cid.to_owned(),
            mailbox_ids,
            keywords,
            received_at,
            raw: Vec::new(),
            size: meta.size,
            parsed,
            stored: Some(meta.blob),
        },
        meta.blob,
        doc,
    )))
}

/// For each message blob of `entries` that `account` already has as an
/// email: that email's id. One scan of the account's email records, made
/// only when the account holds a reference to one of the blobs.
fn existing_copies(
    tx: &mut tern_store::kv::Transaction<'_>,
    account: AccountId,
    entries: &[(String, Entry)],
) -> Result<HashMap<BlobHash, String>, Fail> {
    let mut wanted = Vec::new();
    for (_, entry) in entries {
        if let Ok((_, hash, _)) = entry
            && !wanted.contains(hash)
            && blob::refs(tx, account, hash)? > 0
        {
            wanted.push(*hash);
        }
    }
    let mut found = HashMap::new();
    let mut after = None;
    while !wanted.is_empty() {
        let page = email::list_metas(tx, account, after, SCAN_PAGE)?;
        for (doc, meta) in &page {
            if let Some(i) = wanted.iter().position(|h| *h == meta.blob) {
                found.insert(wanted.swap_remove(i), id::encode(Kind::Email, *doc));
            }
        }
        match page.last() {
            Some((doc, _)) if page.len() == SCAN_PAGE => after = Some(*doc),
            _ => break,
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    //! The copy itself, between two accounts of a real store: no user can
    //! reach another's account over the API yet, so these call
    //! [`copy_between`] as the API would once access is granted.

    use std::collections::HashMap;

    use serde_json::{Value, json};
    use tern_store::email::NewEmail;
    use tern_store::{AccountId, DocumentId, MailStore, Writer, account, email, mailbox};

    use super::{copy, copy_between, parse};
    use crate::id::{self, Kind};
    use crate::method::{Arguments, Ctx, Limits, MethodError, MethodResult};

    const RAW: &str = "From: Bob <bob@example.com>\r\nTo: alice@example.com\r\n\
                       Subject: The plan\r\nMessage-ID: <plan@example.com>\r\n\r\nSee you.\r\n";

    struct Fixture {
        _dir: tempfile::TempDir,
        store: MailStore,
        alice: AccountId,
        bob: AccountId,
        limits: Limits,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = MailStore::open(dir.path()).unwrap();
            store.add_domain("example.com").unwrap();
            let alice = store.create_account("alice@example.com", "pw").unwrap();
            let bob = store.create_account("bob@example.com", "pw").unwrap();
            Fixture {
                _dir: dir,
                store,
                alice,
                bob,
                limits: Limits::default(),
            }
        }

        fn mailbox(&self, account: AccountId, role: &str) -> String {
            let m = self
                .store
                .kv()
                .read(|tx| mailbox::by_role(tx, account, role))
                .unwrap()
                .unwrap();
            id::encode(Kind::Mailbox, m)
        }

        /// Stores `raw` in `account`'s inbox, flagged, received at 1000.
        fn insert(&self, account: AccountId, raw: &str) -> DocumentId {
            let parsed = tern_store::parse::parse_message(raw.as_bytes()).unwrap();
            let inbox = id::decode(Kind::Mailbox, &self.mailbox(account, "inbox")).unwrap();
            self.store
                .kv()
                .transact(|tx| {
                    let hash = tern_store::blob::put_in_tx(tx, raw.as_bytes())?;
                    let mut w = Writer::begin(tx, account)?;
                    let (doc, _) = email::insert(
                        &mut w,
                        NewEmail {
                            blob: hash,
                            size: raw.len() as u64,
                            received_at: 1000,
                            mailbox_ids: vec![inbox],
                            keywords: vec!["$flagged".into()],
                            parsed: &parsed,
                        },
                    )?;
                    w.finish()?;
                    Ok::<_, tern_store::Error>(doc)
                })
                .unwrap()
        }

        fn meta(&self, account: AccountId, eid: &str) -> Option<email::EmailMeta> {
            let doc = id::decode(Kind::Email, eid).unwrap();
            self.store
                .kv()
                .read(|tx| email::get(tx, account, doc))
                .unwrap()
        }

        /// Email/copy as bob (who, as the test has it, may access
        /// alice's account) from alice's account into his.
        fn copy(&self, args: Value) -> (MethodResult, Option<(&'static str, MethodResult)>) {
            let Value::Object(mut args) = args else {
                panic!()
            };
            args.insert("fromAccountId".into(), json!(id::account_id(self.alice)));
            args.insert("accountId".into(), json!(id::account_id(self.bob)));
            let mut created = HashMap::new();
            let mut ctx = Ctx {
                store: &self.store,
                user: self.bob,
                limits: &self.limits,
                created_ids: &mut created,
            };
            let req = parse(&args, self.limits.max_objects_in_set).unwrap();
            copy_between(&mut ctx, self.alice, self.bob, &req)
        }

        /// Email/copy through the method, as `user`.
        fn call(&self, user: AccountId, args: Value) -> MethodResult {
            let Value::Object(args) = args else { panic!() };
            let mut created = HashMap::new();
            let mut ctx = Ctx {
                store: &self.store,
                user,
                limits: &self.limits,
                created_ids: &mut created,
            };
            let (result, implicit) = copy(&mut ctx, args);
            assert!(implicit.is_none());
            result
        }
    }

    fn ok(r: MethodResult) -> Arguments {
        r.unwrap_or_else(|e| panic!("{e:?}"))
    }

    #[test]
    fn copies_with_overrides_and_destroys_the_original() {
        let f = Fixture::new();
        let original = id::encode(Kind::Email, f.insert(f.alice, RAW));
        let bob_archive = f.mailbox(f.bob, "archive");
        let (result, implicit) = f.copy(json!({
            "create": {"c1": {
                "id": original,
                "mailboxIds": {bob_archive.clone(): true},
                "keywords": {"$Seen": true},
            }},
            "onSuccessDestroyOriginal": true,
        }));
        let out = ok(result);
        assert_eq!(out["fromAccountId"], json!(id::account_id(f.alice)));
        assert_eq!(out["accountId"], json!(id::account_id(f.bob)));
        assert_eq!(out["notCreated"], Value::Null, "{out:?}");
        assert_ne!(out["oldState"], out["newState"]);
        let c1 = out["created"]["c1"].as_object().unwrap();
        let keys: Vec<&str> = c1.keys().map(String::as_str).collect();
        assert_eq!(keys, ["blobId", "id", "size", "threadId"]);
        assert_eq!(c1["size"], json!(RAW.len()));
        let copy = f.meta(f.bob, c1["id"].as_str().unwrap()).unwrap();
        assert_eq!(c1["blobId"], json!(id::blob_id(&copy.blob)));
        assert_eq!(copy.keywords, ["$seen"]);
        assert_eq!(copy.received_at, 1000, "kept from the original");
        assert_eq!(
            copy.mailbox_ids,
            [id::decode(Kind::Mailbox, &bob_archive).unwrap()]
        );
        assert_eq!(copy.envelope.subject.as_deref(), Some("The plan"));

        // The implicit Email/set on alice's account destroyed the original.
        let (name, set) = implicit.expect("an implicit Email/set");
        assert_eq!(name, "Email/set");
        let set = ok(set);
        assert_eq!(set["accountId"], json!(id::account_id(f.alice)));
        assert_eq!(set["destroyed"], json!([original]));
        assert!(f.meta(f.alice, &original).is_none());
        // The blob lives on for bob's copy.
        let raw = f
            .store
            .kv()
            .read(|tx| tern_store::blob::read(tx, &copy.blob))
            .unwrap();
        assert_eq!(raw.as_deref(), Some(RAW.as_bytes()));
    }

    #[test]
    fn defaults_come_from_the_original_and_received_at_may_be_set() {
        let f = Fixture::new();
        let original = id::encode(Kind::Email, f.insert(f.alice, RAW));
        let inbox = f.mailbox(f.bob, "inbox");
        let (result, implicit) = f.copy(json!({"create": {
            "c1": {"id": original, "mailboxIds": {inbox.clone(): true},
                   "receivedAt": "2024-01-02T03:04:05Z"},
        }}));
        assert!(implicit.is_none(), "no destroy unless asked");
        let out = ok(result);
        let copy = f
            .meta(f.bob, out["created"]["c1"]["id"].as_str().unwrap())
            .unwrap();
        assert_eq!(copy.keywords, ["$flagged"]);
        assert_eq!(copy.received_at, 1_704_164_645);
        assert!(f.meta(f.alice, &original).is_some());
    }

    #[test]
    fn a_message_the_target_already_has_is_already_exists_with_its_id() {
        let f = Fixture::new();
        let original = id::encode(Kind::Email, f.insert(f.alice, RAW));
        let inbox = f.mailbox(f.bob, "inbox");
        let args = json!({"create": {
            "a": {"id": original, "mailboxIds": {inbox.clone(): true}},
            "b": {"id": original, "mailboxIds": {inbox.clone(): true}},
        }});
        let out = ok(f.copy(args.clone()).0);
        let first = out["created"]["a"]["id"].clone();
        assert!(first.is_string(), "{out:?}");
        assert_eq!(
            out["notCreated"],
            json!({"b": {"type": "alreadyExists", "existingId": first}})
        );
        // Again later: both are refused, the account unchanged.
        let again = ok(f.copy(args).0);
        assert_eq!(again["created"], Value::Null);
        assert_eq!(again["oldState"], again["newState"]);
        assert_eq!(again["notCreated"]["a"]["existingId"], first);
        assert_eq!(again["notCreated"]["b"]["existingId"], first);
        // Bob's own, separately delivered message is found the same way.
        let bob_own = id::encode(Kind::Email, f.insert(f.bob, &RAW.replace("See", "Saw")));
        let theirs = id::encode(Kind::Email, f.insert(f.alice, &RAW.replace("See", "Saw")));
        let out = ok(f
            .copy(json!({"create": {"c": {"id": theirs, "mailboxIds": {inbox: true}}}}))
            .0);
        assert_eq!(out["notCreated"]["c"]["existingId"], json!(bob_own));
    }

    #[test]
    fn bad_entries_fail_alone_and_states_are_checked() {
        let f = Fixture::new();
        let original = id::encode(Kind::Email, f.insert(f.alice, RAW));
        let inbox = f.mailbox(f.bob, "inbox");
        let (result, implicit) = f.copy(json!({
            "create": {
                "missing": {"id": "Ezzzz", "mailboxIds": {inbox.clone(): true}},
                "noMailbox": {"id": original},
                "badMailbox": {"id": original, "mailboxIds": {"Mzzz": true}},
                "subject": {"id": original, "mailboxIds": {inbox.clone(): true}, "subject": "x"},
                "badKeyword": {"id": original, "mailboxIds": {inbox.clone(): true},
                               "keywords": {"a b": true}},
                "noId": {"mailboxIds": {inbox.clone(): true}},
                "good": {"id": original, "mailboxIds": {inbox.clone(): true}},
            },
            "onSuccessDestroyOriginal": true,
            "destroyFromIfInState": "999",
        }));
        let out = ok(result);
        let kind = |cid: &str| out["notCreated"][cid]["type"].clone();
        assert_eq!(kind("missing"), "notFound");
        assert_eq!(kind("noMailbox"), "invalidProperties");
        assert_eq!(
            out["notCreated"]["noMailbox"]["properties"],
            json!(["mailboxIds"])
        );
        assert_eq!(kind("badMailbox"), "invalidProperties");
        assert_eq!(
            out["notCreated"]["subject"]["properties"],
            json!(["subject"])
        );
        assert_eq!(
            out["notCreated"]["badKeyword"]["properties"],
            json!(["keywords"])
        );
        assert_eq!(out["notCreated"]["noId"]["properties"], json!(["id"]));
        assert!(out["created"]["good"]["id"].is_string());
        // The copy stands; the implicit destroy failed on its state.
        let (_, set) = implicit.unwrap();
        assert_eq!(set.unwrap_err(), MethodError::StateMismatch);
        assert!(f.meta(f.alice, &original).is_some());

        let (r, implicit) = f.copy(json!({"ifFromInState": "999", "create": {}}));
        assert_eq!(r.unwrap_err(), MethodError::StateMismatch);
        assert!(implicit.is_none());
        let (r, _) = f.copy(json!({"ifInState": "999", "create": {}}));
        assert_eq!(r.unwrap_err(), MethodError::StateMismatch);
    }

    #[test]
    fn over_quota_is_refused_per_email() {
        let f = Fixture::new();
        let original = id::encode(Kind::Email, f.insert(f.alice, RAW));
        f.store
            .kv()
            .transact(|tx| {
                let mut record = account::get_account(tx, f.bob)?.unwrap();
                record.quota_bytes = 10;
                account::put_account(tx, f.bob, &record)
            })
            .unwrap();
        let inbox = f.mailbox(f.bob, "inbox");
        let out = ok(f
            .copy(json!({"create": {"c": {"id": original, "mailboxIds": {inbox: true}}}}))
            .0);
        assert_eq!(out["notCreated"]["c"]["type"], "overQuota");
        assert_eq!(out["created"], Value::Null);
    }

    #[test]
    fn over_the_api_only_the_users_own_account_is_reachable() {
        let f = Fixture::new();
        let (alice, bob) = (id::account_id(f.alice), id::account_id(f.bob));
        let create = json!({"c": {"id": "E0", "mailboxIds": {"M0": true}}});
        let same = f.call(
            f.alice,
            json!({"fromAccountId": alice, "accountId": alice, "create": create}),
        );
        assert!(
            matches!(same, Err(MethodError::InvalidArguments(_))),
            "{same:?}"
        );
        let other = f.call(
            f.alice,
            json!({"fromAccountId": bob, "accountId": alice, "create": create}),
        );
        assert_eq!(other.unwrap_err(), MethodError::FromAccountNotFound);
        let into_other = f.call(
            f.alice,
            json!({"fromAccountId": alice, "accountId": bob, "create": create}),
        );
        assert_eq!(into_other.unwrap_err(), MethodError::AccountNotFound);
    }
}
