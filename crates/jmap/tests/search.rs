//! Email/query text filters and SearchSnippet/get against a real store and
//! search index (RFC 8621 sections 4.4.1 and 5), on the search crate's
//! corpus of English, Korean and Vietnamese messages.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tern_jmap::method::{Arguments, Ctx, Limits, MethodError, MethodResult};
use tern_search::{Indexer, SearchIndex};
use tern_store::deliver::Recipient;
use tern_store::{AccountId, MailStore};

struct World {
    _dir: tempfile::TempDir,
    store: MailStore,
    account: AccountId,
    /// Corpus file stem → JMAP email id.
    ids: HashMap<String, String>,
}

fn call(w: &World, f: fn(&mut Ctx<'_>, Arguments) -> MethodResult, args: Value) -> MethodResult {
    let limits = Limits::default();
    let mut created = HashMap::new();
    let mut ctx = Ctx {
        store: &w.store,
        user: w.account,
        limits: &limits,
        created_ids: &mut created,
    };
    let Value::Object(args) = args else {
        panic!("arguments must be an object")
    };
    f(&mut ctx, args)
}

fn account_id(w: &World) -> String {
    tern_jmap::id::account_id(w.account)
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(&dir.path().join("data")).unwrap();
    store.add_domain("example.test").unwrap();
    let account = store.create_account("user@example.test", "pw").unwrap();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../search/tests/corpus");
    let mut files: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    let mut ids = HashMap::new();
    for p in files {
        let raw = std::fs::read(&p).unwrap();
        let d = store.deliver(&raw, &[Recipient::inbox(account)]).unwrap();
        let n = d[0].as_ref().unwrap().email;
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        ids.insert(name, tern_jmap::id::encode(tern_jmap::id::Kind::Email, n));
    }
    World {
        _dir: dir,
        store,
        account,
        ids,
    }
}

fn index(w: &World) -> SearchIndex {
    SearchIndex::for_store(&w.store).unwrap()
}

fn drain(w: &World) {
    Indexer::new(w.store.clone(), index(w)).drain().unwrap();
}

/// The names of the emails an Email/query with `filter` returns, in order.
fn query(w: &World, filter: Value) -> Vec<String> {
    let out = call(
        w,
        tern_jmap::email::query,
        json!({
            "accountId": account_id(w),
            "filter": filter,
            "sort": [{"property": "receivedAt", "isAscending": true}],
        }),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    let by_id: HashMap<&String, &String> = w.ids.iter().map(|(n, i)| (i, n)).collect();
    out["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| by_id[&i.as_str().unwrap().to_string()].clone())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn text_filters_combine_with_other_conditions() {
    let w = world();
    drain(&w);
    let _keep = index(&w);
    assert_eq!(
        sorted(query(&w, json!({"text": "budget"}))),
        ["en-01-budget", "en-02-reply", "mx-01-project"]
    );
    assert_eq!(
        query(&w, json!({"subject": "\"quarterly budget\""})).len(),
        2
    );
    assert_eq!(
        query(&w, json!({"from": "alice.johnson@example.com"})).len(),
        2
    );
    assert_eq!(
        sorted(query(&w, json!({"text": "이메일"}))),
        ["ko-01-meeting", "ko-02-address", "mx-01-project"]
    );
    assert_eq!(
        sorted(query(&w, json!({"body": "viet nam"}))),
        ["vi-03-photos"],
        "body only: vi-01 has the words in its subject alone"
    );
    assert_eq!(
        sorted(query(&w, json!({"subject": "viet nam"}))),
        ["vi-01-trip", "vi-03-photos"]
    );
    // With a non-text condition under AND, OR and NOT.
    assert_eq!(
        query(
            &w,
            json!({"operator": "AND", "conditions": [
                {"text": "budget"}, {"hasAttachment": false},
                {"operator": "NOT", "conditions": [{"from": "alice"}]}
            ]})
        ),
        ["en-02-reply"]
    );
    assert_eq!(
        sorted(query(
            &w,
            json!({"operator": "OR", "conditions": [
                {"text": "점심"}, {"hasAttachment": true}
            ]})
        )),
        ["en-04-invoice", "ko-03-lunch"]
    );
    assert_eq!(
        sorted(query(&w, json!({"header": ["X-Mailer"]}))),
        ["en-01-budget"]
    );
    assert_eq!(
        sorted(query(&w, json!({"header": ["Subject", "Việt"]}))),
        ["vi-01-trip", "vi-03-photos"]
    );
    // Malformed text conditions.
    for bad in [
        json!({"text": 5}),
        json!({"header": []}),
        json!({"header": ["a", "b", "c"]}),
        json!({"header": [1]}),
    ] {
        let err = call(
            &w,
            tern_jmap::email::query,
            json!({"accountId": account_id(&w), "filter": bad}),
        )
        .unwrap_err();
        assert!(matches!(err, MethodError::InvalidArguments(_)), "{err:?}");
    }
}

#[test]
fn a_query_right_after_delivery_sees_the_new_email() {
    let w = world();
    let index = index(&w);
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let indexer = Indexer::new(w.store.clone(), index.clone());
        let stop = &stop;
        s.spawn(move || indexer.run_blocking(&|| stop.load(std::sync::atomic::Ordering::Relaxed)));
        for n in 0..3 {
            let raw = format!(
                "From: fresh{n}@example.com\r\nSubject: zebra{n} sighting\r\n\r\nA striped visitor.\r\n"
            );
            let d = w
                .store
                .deliver(raw.as_bytes(), &[Recipient::inbox(w.account)])
                .unwrap();
            let id =
                tern_jmap::id::encode(tern_jmap::id::Kind::Email, d[0].as_ref().unwrap().email);
            let out = call(
                &w,
                tern_jmap::email::query,
                json!({"accountId": account_id(&w), "filter": {"subject": format!("zebra{n}")}}),
            )
            .unwrap();
            assert_eq!(out["ids"], json!([id]));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        index.kick();
    });
    assert!(index.query_wait() >= Duration::from_millis(100));
}

#[test]
fn search_snippets() {
    let w = world();
    drain(&w);
    let _keep = index(&w);
    let out = call(
        &w,
        tern_jmap::snippet::get,
        json!({
            "accountId": account_id(&w),
            "filter": {"operator": "AND", "conditions": [{"text": "budget"}, {"inMailbox": "Mbogus"}]},
            "emailIds": [w.ids["en-01-budget"], w.ids["ko-03-lunch"], "Mzzzzzz", "not an id"],
        }),
    )
    .unwrap();
    assert_eq!(out["accountId"], json!(account_id(&w)));
    let list = out["list"].as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["emailId"], json!(w.ids["en-01-budget"]));
    assert_eq!(
        list[0]["subject"],
        json!("Quarterly <mark>budget</mark> review")
    );
    let preview = list[0]["preview"].as_str().unwrap();
    assert!(preview.contains("<mark>budget</mark>"), "{preview}");
    assert!(preview.len() <= 255);
    assert_eq!(list[1]["subject"], Value::Null);
    assert_eq!(list[1]["preview"], Value::Null);
    assert_eq!(out["notFound"], json!(["Mzzzzzz", "not an id"]));
    // No filter: every snippet is null, found emails are listed.
    let out = call(
        &w,
        tern_jmap::snippet::get,
        json!({"accountId": account_id(&w), "filter": null, "emailIds": [w.ids["vi-01-trip"]]}),
    )
    .unwrap();
    assert_eq!(
        out["list"],
        json!([{"emailId": w.ids["vi-01-trip"], "subject": null, "preview": null}])
    );
    assert_eq!(out["notFound"], Value::Null);
    // Errors: too many ids, unknown filter property, missing emailIds.
    let many: Vec<String> = (0..501).map(|i| format!("M{i}")).collect();
    let err = call(
        &w,
        tern_jmap::snippet::get,
        json!({"accountId": account_id(&w), "filter": {"text": "x"}, "emailIds": many}),
    )
    .unwrap_err();
    assert_eq!(err, MethodError::RequestTooLarge);
    let err = call(
        &w,
        tern_jmap::snippet::get,
        json!({"accountId": account_id(&w), "filter": {"bogus": "x"}, "emailIds": []}),
    )
    .unwrap_err();
    assert!(matches!(err, MethodError::UnsupportedFilter(_)));
    let err = call(
        &w,
        tern_jmap::snippet::get,
        json!({"accountId": account_id(&w), "filter": null}),
    )
    .unwrap_err();
    assert!(matches!(err, MethodError::InvalidArguments(_)));
}
