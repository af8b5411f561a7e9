//! Email/query text filters and SearchSnippet/get against a real store and
//! search index (RFC 8621 sections 4.4.1 and 5), on the search crate's
//! corpus of English, Korean and Vietnamese messages.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tern_jmap::method::{Arguments, Ctx, Limits, MethodError, MethodResult};
use tern_search::{IndexOptions, Indexer, SearchIndex};
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

/// The store's id of a corpus email.
fn email_number(w: &World, name: &str) -> u32 {
    tern_jmap::id::decode(tern_jmap::id::Kind::Email, &w.ids[name]).unwrap()
}

/// The JMAP id of the mailbox with `role`.
fn mailbox_id(w: &World, role: &str) -> String {
    let m = w
        .store
        .kv()
        .read(|tx| tern_store::mailbox::by_role(tx, w.account, role))
        .unwrap()
        .unwrap();
    tern_jmap::id::encode(tern_jmap::id::Kind::Mailbox, m)
}

/// Sets an email's keywords and, when given, its only mailbox.
fn update(w: &World, name: &str, keywords: &[&str], mailbox: Option<&str>) {
    let id = email_number(w, name);
    let mailbox = mailbox.map(|m| {
        w.store
            .kv()
            .read(|tx| tern_store::mailbox::by_role(tx, w.account, m))
            .unwrap()
            .unwrap()
    });
    w.store
        .kv()
        .transact(|tx| -> tern_store::Result<()> {
            let mut wr = tern_store::Writer::begin(tx, w.account)?;
            let k = keywords.iter().map(|s| s.to_string()).collect();
            tern_store::email::update(&mut wr, id, mailbox.map(|m| vec![m]), Some(k))?;
            wr.finish()?;
            Ok(())
        })
        .unwrap();
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
fn attachment_name_filter() {
    let w = world();
    drain(&w);
    let _keep = index(&w);
    assert_eq!(
        query(&w, json!({"attachmentName": "invoice"})),
        ["en-04-invoice"]
    );
    assert_eq!(
        query(&w, json!({"attachmentName": "notes.txt"})),
        ["en-04-invoice"]
    );
    // The text of an attachment is not its name; its name is not the body.
    assert!(query(&w, json!({"attachmentName": "thirty"})).is_empty());
    assert!(query(&w, json!({"body": "invoice-2024.pdf"})).is_empty());
    assert_eq!(query(&w, json!({"text": "notes.txt"})), ["en-04-invoice"]);
    assert_eq!(
        query(
            &w,
            json!({"operator": "NOT", "conditions": [{"attachmentName": "invoice"}, {"text": "budget"}]})
        )
        .len(),
        w.ids.len() - 4
    );
    let err = call(
        &w,
        tern_jmap::email::query,
        json!({"accountId": account_id(&w), "filter": {"attachmentName": ["x"]}}),
    )
    .unwrap_err();
    assert!(matches!(err, MethodError::InvalidArguments(_)), "{err:?}");
    // It marks neither the subject nor the preview.
    let out = call(
        &w,
        tern_jmap::snippet::get,
        json!({"accountId": account_id(&w), "filter": {"attachmentName": "invoice"},
               "emailIds": [w.ids["en-04-invoice"]]}),
    )
    .unwrap();
    assert_eq!(
        out["list"],
        json!([{"emailId": w.ids["en-04-invoice"], "subject": null, "preview": null}])
    );
}

/// Every non-text condition of RFC 8621 section 4.4.1, combined with text
/// conditions under AND, OR and NOT (operators and one FilterCondition
/// holding both), gives exactly the set algebra of the two alone.
#[test]
fn text_conditions_combine_with_every_non_text_condition() {
    let w = world();
    update(&w, "en-01-budget", &["$flagged", "$seen"], None);
    update(&w, "en-02-reply", &["$seen"], Some("archive"));
    update(&w, "ko-01-meeting", &["$flagged"], None);
    update(&w, "ko-02-address", &["$seen"], None);
    update(&w, "vi-02-report", &[], Some("archive"));
    drain(&w);
    let _keep = index(&w);
    let (inbox, archive) = (mailbox_id(&w, "inbox"), mailbox_id(&w, "archive"));
    let set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<String>>();
    let all = set(w.ids.keys().cloned().collect());
    let non_text = [
        json!({"inMailbox": inbox}),
        json!({"inMailbox": archive}),
        json!({"inMailboxOtherThan": [inbox]}),
        json!({"before": "2000-01-01T00:00:00Z"}),
        json!({"after": "2000-01-01T00:00:00Z"}),
        json!({"minSize": 500}),
        json!({"maxSize": 500}),
        json!({"allInThreadHaveKeyword": "$seen"}),
        json!({"someInThreadHaveKeyword": "$seen"}),
        json!({"noneInThreadHaveKeyword": "$seen"}),
        json!({"hasKeyword": "$flagged"}),
        json!({"notKeyword": "$flagged"}),
        json!({"hasAttachment": true}),
        json!({"hasAttachment": false}),
    ];
    let text = [
        json!({"text": "budget"}),
        json!({"body": "이메일"}),
        json!({"from": "example.com"}),
        json!({"subject": "viet nam"}),
        json!({"header": ["In-Reply-To"]}),
        json!({"attachmentName": "invoice"}),
    ];
    let mut split = 0;
    for t in &text {
        let tq = set(query(&w, t.clone()));
        assert!(!tq.is_empty(), "{t} matches something");
        for c in &non_text {
            let cq = set(query(&w, c.clone()));
            let and = json!({"operator": "AND", "conditions": [t, c]});
            let both = &tq & &cq;
            assert_eq!(set(query(&w, and)), both, "{t} AND {c}");
            // One FilterCondition with both properties is a conjunction.
            let mut one = c.as_object().unwrap().clone();
            one.extend(t.as_object().unwrap().clone());
            assert_eq!(set(query(&w, Value::Object(one))), both, "{t} & {c}");
            let or = json!({"operator": "OR", "conditions": [t, c]});
            assert_eq!(set(query(&w, or)), &tq | &cq, "{t} OR {c}");
            let but_not = json!({"operator": "AND", "conditions": [
                c, {"operator": "NOT", "conditions": [t]}
            ]});
            assert_eq!(set(query(&w, but_not)), &cq - &tq, "{c} AND NOT {t}");
            let neither = json!({"operator": "NOT", "conditions": [t, c]});
            assert_eq!(
                set(query(&w, neither)),
                &(&all - &tq) - &cq,
                "NOT ({t} OR {c})"
            );
            if !both.is_empty() && !(&tq - &cq).is_empty() {
                split += 1;
            }
        }
    }
    assert!(split >= 20, "conditions split the text matches: {split}");
    // Spot checks of the fixture itself.
    assert_eq!(
        sorted(query(
            &w,
            json!({"text": "budget", "hasKeyword": "$flagged"})
        )),
        ["en-01-budget"]
    );
    assert_eq!(
        sorted(query(
            &w,
            json!({"text": "budget", "allInThreadHaveKeyword": "$seen"})
        )),
        ["en-01-budget", "en-02-reply"]
    );
    assert_eq!(
        sorted(query(&w, json!({"text": "budget", "inMailbox": archive}))),
        ["en-02-reply"]
    );
}

/// Email/query's raw answer for `filter`, newest first (the default
/// sort), with a window.
fn page(w: &World, filter: &Value, position: usize, limit: usize, total: bool) -> Value {
    let out = call(
        w,
        tern_jmap::email::query,
        json!({
            "accountId": account_id(w),
            "filter": filter,
            "position": position,
            "limit": limit,
            "calculateTotal": total,
        }),
    )
    .unwrap_or_else(|e| panic!("{e:?}"));
    Value::Object(out)
}

/// Newest-first text queries answered by walking a date index (common
/// terms) give exactly what reading and sorting every match gives (rare
/// terms, or any filter with another condition: `minSize: 0`, always true,
/// turns the walk off), in every mailbox listing, over windows and totals.
#[test]
fn newest_first_text_pages_match_the_full_evaluation() {
    let mut w = world();
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    for n in 0..400 {
        let raw = format!(
            "From: Sender {n} <sender{n}@example.com>\r\nSubject: Report number {n} {w1}\r\n\
             Message-ID: <n{n}@example.com>\r\n\r\nThis is message {n}, about {w2}.\r\n",
            w1 = words[n % 8],
            w2 = words[(n / 8) % 8],
        );
        let d = w
            .store
            .deliver(raw.as_bytes(), &[Recipient::inbox(w.account)])
            .unwrap();
        let id = tern_jmap::id::encode(tern_jmap::id::Kind::Email, d[0].as_ref().unwrap().email);
        w.ids.insert(format!("n{n:03}"), id);
    }
    for n in (0..400).step_by(3) {
        update(&w, &format!("n{n:03}"), &["$seen"], None);
    }
    update(&w, "n008", &[], Some("archive"));
    drain(&w);
    let _keep = index(&w);
    let inbox = mailbox_id(&w, "inbox");
    let filters = [
        json!({"text": "report"}),
        json!({"subject": "alpha"}),
        json!({"text": "alpha"}),
        json!({"text": "alpha", "inMailbox": inbox}),
        json!({"text": "bravo", "inMailbox": inbox, "notKeyword": "$seen"}),
        json!({"operator": "AND", "conditions": [
            {"text": "report"}, {"body": "charlie"}, {"inMailbox": inbox}
        ]}),
        json!({"from": "sender7@example.com"}),
        json!({"text": "budget"}),
        json!({"text": "nothingmatches"}),
    ];
    let windows = [
        (0, 50, false),
        (0, 10, true),
        (3, 5, true),
        (45, 10, false),
        (395, 10, true),
        (1000, 10, true),
    ];
    for f in &filters {
        let mut slow = f.as_object().unwrap().clone();
        if slow.contains_key("operator") {
            slow = json!({"operator": "AND", "conditions": [f, {"minSize": 0}]})
                .as_object()
                .unwrap()
                .clone();
        } else {
            slow.insert("minSize".into(), json!(0));
        }
        let slow = Value::Object(slow);
        for &(position, limit, total) in &windows {
            let fast = page(&w, f, position, limit, total);
            let full = page(&w, &slow, position, limit, total);
            for key in ["ids", "position", "total"] {
                assert_eq!(
                    fast.get(key),
                    full.get(key),
                    "{f} at {position}+{limit}, total {total}: {key}"
                );
            }
        }
    }
    // Anchors of the fixture: Subject "alpha" is every eighth message.
    let by_id: HashMap<&String, &String> = w.ids.iter().map(|(n, i)| (i, n)).collect();
    let first = page(&w, &json!({"subject": "alpha"}), 0, 4, true);
    let names: Vec<&str> = first["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| by_id[&i.as_str().unwrap().to_string()].as_str())
        .collect();
    assert_eq!(names, ["n392", "n384", "n376", "n368"]);
    assert_eq!(first["total"], json!(50));
    let unseen = page(
        &w,
        &json!({"subject": "alpha", "inMailbox": inbox, "notKeyword": "$seen"}),
        0,
        100,
        true,
    );
    // Of n = 0, 8, ..., 392: not n % 3 == 0, and n008 was moved.
    assert_eq!(unseen["total"], json!(50 - 17 - 1));
}

#[test]
fn the_read_your_writes_wait_is_bounded_by_the_configured_time() {
    let w = world();
    // No indexer runs: the index never catches up.
    let index = SearchIndex::for_store_with(
        &w.store,
        IndexOptions {
            query_wait: Duration::from_millis(400),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(index.query_wait(), Duration::from_millis(400));
    let started = Instant::now();
    assert!(query(&w, json!({"text": "budget"})).is_empty());
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_millis(1900),
        "{waited:?}"
    );
    // A query without text conditions never waits.
    let started = Instant::now();
    assert_eq!(query(&w, json!({"hasAttachment": true})).len(), 1);
    assert!(started.elapsed() < Duration::from_millis(400));
    // Caught up: no wait.
    drain(&w);
    let started = Instant::now();
    assert_eq!(query(&w, json!({"text": "budget"})).len(), 3);
    assert!(started.elapsed() < Duration::from_millis(400));
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
    // HTML-escaped around the marks (RFC 8621 section 5.1).
    let raw = "From: eve@example.com\r\nSubject: Budget <draft> & \"notes\"\r\n\r\n\
               <b>budget</b> & costs > 5 budget\r\n";
    let d = w
        .store
        .deliver(raw.as_bytes(), &[Recipient::inbox(w.account)])
        .unwrap();
    drain(&w);
    let id = tern_jmap::id::encode(tern_jmap::id::Kind::Email, d[0].as_ref().unwrap().email);
    let out = call(
        &w,
        tern_jmap::snippet::get,
        json!({"accountId": account_id(&w), "filter": {"text": "budget"}, "emailIds": [id]}),
    )
    .unwrap();
    assert_eq!(
        out["list"][0]["subject"],
        json!("<mark>Budget</mark> &lt;draft&gt; &amp; &quot;notes&quot;")
    );
    assert_eq!(
        out["list"][0]["preview"],
        json!("&lt;b&gt;<mark>budget</mark>&lt;/b&gt; &amp; costs &gt; 5 <mark>budget</mark>")
    );
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

/// Newest-first text pages ordered by the dates the index records for
/// each match (several blocks of ids, receivedAt unrelated to id order,
/// ties on the date) give exactly what reading and sorting every match
/// gives, in the account and in mailboxes, also while destroyed emails are
/// still in the index.
#[test]
fn dated_text_pages_follow_received_at_not_ids() {
    let w = world();
    // No waiting for the indexer: destroyed emails stay in the index.
    let index = SearchIndex::for_store_with(
        &w.store,
        IndexOptions {
            query_wait: Duration::ZERO,
            ..Default::default()
        },
    )
    .unwrap();
    let inbox = mailbox_id(&w, "inbox");
    let archive = mailbox_id(&w, "archive");
    let total = 2100;
    // Minutes of the day, each used twice, scrambled against ids.
    let minute = |n: usize| (n * 7919) % 1050;
    let mut created = Vec::new();
    for first in (0..total).step_by(300) {
        let mut create = serde_json::Map::new();
        for n in first..(first + 300).min(total) {
            let m = minute(n);
            let mailbox = if n % 5 == 0 { &archive } else { &inbox };
            create.insert(
                format!("c{n}"),
                json!({
                    "mailboxIds": {mailbox: true},
                    "subject": format!(
                        "Kilo {} {}",
                        if n % 3 == 0 { "lima" } else { "oscar" },
                        if n % 97 == 0 { "mike" } else { "papa" }
                    ),
                    "receivedAt": format!("2021-03-04T{:02}:{:02}:00Z", m / 60, m % 60),
                    "bodyValues": {"b": {"value": format!("Body number {n}.")}},
                    "textBody": [{"partId": "b", "type": "text/plain"}],
                }),
            );
        }
        let out = call(
            &w,
            tern_jmap::email::set,
            json!({"accountId": account_id(&w), "create": create}),
        )
        .unwrap();
        let done = out["created"].as_object().unwrap();
        assert_eq!(done.len(), (first + 300).min(total) - first, "{out:?}");
        for n in first..(first + 300).min(total) {
            created.push(done[&format!("c{n}")]["id"].as_str().unwrap().to_string());
        }
    }
    drain(&w);
    let hits = index
        .search(
            &w.store,
            w.account,
            &tern_search::Query::Text(tern_search::TextField::Text, "kilo".into()),
        )
        .unwrap();
    assert_eq!(hits.len(), total as u64);
    assert!(index.date_order(w.account, &hits).unwrap().is_some());
    // Destroy some of the newest without indexing the change.
    let doomed: Vec<&String> = (0..total)
        .filter(|&n| minute(n) >= 1020 && n % 2 == 0)
        .map(|n| &created[n])
        .collect();
    assert!(doomed.len() >= 10);
    let out = call(
        &w,
        tern_jmap::email::set,
        json!({"accountId": account_id(&w), "destroy": doomed}),
    )
    .unwrap();
    assert_eq!(out["destroyed"].as_array().unwrap().len(), doomed.len());
    let filters = [
        json!({"text": "kilo"}),
        json!({"subject": "lima"}),
        json!({"text": "mike"}),
        json!({"text": "kilo", "inMailbox": inbox}),
        json!({"text": "lima", "inMailbox": archive}),
        json!({"text": "oscar", "inMailbox": archive, "notKeyword": "$seen"}),
    ];
    for f in &filters {
        let mut slow = f.as_object().unwrap().clone();
        slow.insert("minSize".into(), json!(0));
        let slow = Value::Object(slow);
        for (position, limit) in [(0, 50), (0, 7), (45, 10), (1000, 30), (2090, 20), (5000, 5)] {
            let fast = page(&w, f, position, limit, false);
            let full = page(&w, &slow, position, limit, false);
            for key in ["ids", "position"] {
                assert_eq!(
                    fast.get(key),
                    full.get(key),
                    "{f} at {position}+{limit}: {key}"
                );
            }
        }
    }
    // The first page of every match is newest first by receivedAt.
    let first = page(&w, &json!({"text": "kilo"}), 0, 60, false);
    let ids = first["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 60);
    assert!(
        ids.iter()
            .all(|i| !doomed.contains(&&i.as_str().unwrap().to_string()))
    );
    let got = call(
        &w,
        tern_jmap::email::get,
        json!({"accountId": account_id(&w), "ids": ids, "properties": ["receivedAt"]}),
    )
    .unwrap();
    let dates: Vec<&str> = got["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["receivedAt"].as_str().unwrap())
        .collect();
    assert!(dates.windows(2).all(|d| d[0] >= d[1]), "{dates:?}");
}
