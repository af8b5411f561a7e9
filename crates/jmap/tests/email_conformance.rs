//! RFC 8621 section 4 conformance: runs every
//! `rfc-conformance/jmap/rfc8621_4_*.json` case against the Email method
//! handlers on a real store in a temp dir.
//!
//! A case is a JSON object:
//!
//! - `title`, `rfc`: what it checks (the RFC section and requirement).
//! - `limits` (optional): `maxObjectsInGet`, `maxObjectsInSet`,
//!   `maxQueryLimit`, `maxChanges`, `maxSizeUpload` (also
//!   maxSizeAttachmentsPerEmail) overrides.
//! - `createdIds` (optional): creation ids resolved before the first
//!   step (as if created by earlier calls of the request).
//! - `emails`: messages stored before the steps, in order (ids `E0`,
//!   `E1`, ...), each `{"name", "raw": [lines], "mailboxes": ["inbox",
//!   ...roles or ids], "keywords": [...], "receivedAt": UTCDate}`.
//! - `steps`: in order, each one of
//!   - `{"call": "Email/get", "args": {...}, "response": {...}}` (the
//!     response must equal, see below) or `..., "error": {...}` for a
//!     method error;
//!   - `{"upload": "name", "raw": [lines]}`: stores an upload whose blobId
//!     is `${name}`;
//!   - `{"deliver": {...an email as in "emails"...}}`.
//!
//! The account is `A1` (alice@example.com) with the default mailboxes
//! `M0` inbox, `M1` drafts, `M2` sent, `M3` archive, `M4` junk, `M5`
//! trash. In any string of `args` or of the expectation, `${name.blobId}`
//! is the blobId of email `name`, `${name.hash}` the hex hash of its
//! message, `${name}` an upload's blobId. In an expectation, `"<any>"`
//! matches any value. Objects must have exactly the expected keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use tern_jmap::method::{Arguments, Ctx, Limits, MethodResult};
use tern_store::email::{self, NewEmail};
use tern_store::{AccountId, MailStore, Writer, mailbox};

type Handler = fn(&mut Ctx<'_>, Arguments) -> MethodResult;

fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "Email/get" => tern_jmap::email::get,
        "Email/set" => tern_jmap::email::set,
        "Email/changes" => tern_jmap::email::changes,
        "Email/query" => tern_jmap::email::query,
        "Email/queryChanges" => tern_jmap::email::query_changes,
        "Email/import" => tern_jmap::email::import,
        "Email/parse" => tern_jmap::email::parse,
        // Its implicit Email/set follows a copy, which needs a second
        // account the user can reach: none here.
        "Email/copy" => |ctx, args| {
            let (result, implicit) = tern_jmap::email::copy(ctx, args);
            assert!(implicit.is_none(), "Email/copy made an implicit call");
            result
        },
        "SearchSnippet/get" => tern_jmap::snippet::get,
        _ => return None,
    })
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rfc-conformance/jmap")
}

fn raw_message(v: &Value) -> Vec<u8> {
    match v {
        Value::Array(lines) => lines
            .iter()
            .map(|l| l.as_str().expect("raw lines are strings"))
            .collect::<Vec<_>>()
            .join("\r\n")
            .into_bytes(),
        Value::String(s) => s.clone().into_bytes(),
        _ => panic!("raw must be an array of lines"),
    }
}

fn parse_utc(s: &str) -> i64 {
    // YYYY-MM-DDTHH:MM:SSZ
    let n = |a: usize, b: usize| s[a..b].parse::<i64>().expect("date digits");
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19)
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: MailStore,
    account: AccountId,
    vars: HashMap<String, String>,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        store.add_domain("example.com").unwrap();
        let account = store.create_account("alice@example.com", "pw").unwrap();
        Fixture {
            _dir: dir,
            store,
            account,
            vars: HashMap::new(),
        }
    }

    fn mailbox(&self, name: &str) -> u32 {
        if let Some(id) = tern_jmap::id::decode(tern_jmap::id::Kind::Mailbox, name) {
            return id;
        }
        let account = self.account;
        self.store
            .kv()
            .read(|tx| mailbox::by_role(tx, account, name))
            .unwrap()
            .unwrap_or_else(|| panic!("no mailbox {name}"))
    }

    fn insert(&mut self, spec: &Value) {
        let raw = raw_message(&spec["raw"]);
        let parsed = tern_store::parse::parse_message(&raw).unwrap();
        let mailboxes: Vec<u32> = match spec.get("mailboxes") {
            Some(Value::Array(l)) => l
                .iter()
                .map(|m| self.mailbox(m.as_str().unwrap()))
                .collect(),
            _ => vec![self.mailbox("inbox")],
        };
        let keywords: Vec<String> = match spec.get("keywords") {
            Some(Value::Array(l)) => l.iter().map(|k| k.as_str().unwrap().to_string()).collect(),
            _ => Vec::new(),
        };
        let received_at = spec
            .get("receivedAt")
            .and_then(Value::as_str)
            .map_or(1_700_000_000, parse_utc);
        let account = self.account;
        let hash = self
            .store
            .kv()
            .transact(|tx| {
                let hash = tern_store::blob::put_in_tx(tx, &raw)?;
                let mut w = Writer::begin(tx, account)?;
                email::insert(
                    &mut w,
                    NewEmail {
                        blob: hash,
                        size: raw.len() as u64,
                        received_at,
                        mailbox_ids: mailboxes.clone(),
                        keywords: keywords.clone(),
                        parsed: &parsed,
                    },
                )?;
                w.finish()?;
                Ok::<_, tern_store::Error>(hash)
            })
            .unwrap();
        if let Some(name) = spec.get("name").and_then(Value::as_str) {
            self.vars
                .insert(format!("{name}.blobId"), tern_jmap::id::blob_id(&hash));
            self.vars.insert(format!("{name}.hash"), hash.to_hex());
        }
    }

    fn upload(&mut self, name: &str, raw: &[u8]) {
        let hash = tern_jmap::blob::upload(&self.store, self.account, raw, 3600, 1 << 30).unwrap();
        self.vars
            .insert(name.to_string(), tern_jmap::id::blob_id(&hash));
    }

    fn substitute(&self, v: &Value) -> Value {
        match v {
            Value::String(s) => {
                let mut s = s.clone();
                if s.contains("${") {
                    // Longest names first, so `${a.blobId}` is not read as `${a}`.
                    let mut names: Vec<&String> = self.vars.keys().collect();
                    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
                    for n in names {
                        s = s.replace(&format!("${{{n}}}"), &self.vars[n]);
                    }
                }
                Value::String(s)
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| self.substitute(x)).collect()),
            Value::Object(m) => Value::Object(
                m.iter()
                    .map(|(k, x)| {
                        let Value::String(k) = self.substitute(&Value::String(k.clone())) else {
                            unreachable!()
                        };
                        (k, self.substitute(x))
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Compares `actual` with `expected`; returns the path of the first
/// difference.
fn compare(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::String(s), _) if s == "<any>" => Ok(()),
        (Value::Object(e), Value::Object(a)) => {
            for k in e.keys() {
                if !a.contains_key(k) {
                    return Err(format!("{path}/{k}: missing"));
                }
            }
            for k in a.keys() {
                if !e.contains_key(k) {
                    return Err(format!("{path}/{k}: unexpected (value {})", a[k]));
                }
            }
            for (k, ev) in e {
                compare(ev, &a[k], &format!("{path}/{k}"))?;
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) => {
            if e.len() != a.len() {
                return Err(format!(
                    "{path}: expected {} items, got {}: {actual}",
                    e.len(),
                    a.len()
                ));
            }
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                compare(ev, av, &format!("{path}/{i}"))?;
            }
            Ok(())
        }
        (e, a) if e == a => Ok(()),
        (e, a) => Err(format!("{path}: expected {e}, got {a}")),
    }
}

fn limits(case: &Value) -> Limits {
    let mut l = Limits::default();
    if let Some(Value::Object(o)) = case.get("limits") {
        for (k, v) in o {
            let n = v.as_u64().expect("limits are numbers") as usize;
            match k.as_str() {
                "maxObjectsInGet" => l.max_objects_in_get = n,
                "maxObjectsInSet" => l.max_objects_in_set = n,
                "maxQueryLimit" => l.max_query_limit = n,
                "maxChanges" => l.max_changes = n,
                "maxSizeUpload" => l.max_size_upload = n as u64,
                other => panic!("unknown limit {other}"),
            }
        }
    }
    l
}

fn run_case(case: &Value) -> Result<(), String> {
    let mut fx = Fixture::new();
    if let Some(Value::Array(emails)) = case.get("emails") {
        for e in emails {
            fx.insert(e);
        }
    }
    let limits = limits(case);
    let mut created_ids: HashMap<String, String> = match case.get("createdIds") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("ids are strings").to_string()))
            .collect(),
        _ => HashMap::new(),
    };
    let steps = case["steps"].as_array().ok_or("steps must be an array")?;
    for (n, step) in steps.iter().enumerate() {
        if let Some(name) = step.get("upload").and_then(Value::as_str) {
            fx.upload(name, &raw_message(&step["raw"]));
            continue;
        }
        if let Some(e) = step.get("deliver") {
            fx.insert(e);
            continue;
        }
        let method = step["call"]
            .as_str()
            .ok_or_else(|| format!("step {n}: no call"))?;
        let h = handler(method).ok_or_else(|| format!("step {n}: unknown method {method}"))?;
        if matches!(
            method,
            "Email/query" | "Email/queryChanges" | "SearchSnippet/get"
        ) {
            // Text conditions read the search index: bring it up to date
            // as the server's indexer does.
            let index =
                tern_search::SearchIndex::for_store(&fx.store).map_err(|e| e.to_string())?;
            tern_search::Indexer::new(fx.store.clone(), index)
                .drain()
                .map_err(|e| e.to_string())?;
        }
        let Value::Object(args) = fx.substitute(&step["args"]) else {
            return Err(format!("step {n}: args must be an object"));
        };
        let mut ctx = Ctx {
            store: &fx.store,
            user: fx.account,
            limits: &limits,
            created_ids: &mut created_ids,
        };
        let result = h(&mut ctx, args);
        let (expected, actual) = match (step.get("response"), step.get("error"), result) {
            (Some(e), None, Ok(a)) => (fx.substitute(e), Value::Object(a)),
            (None, Some(e), Err(err)) => (fx.substitute(e), Value::Object(err.to_arguments())),
            (_, _, Ok(a)) => {
                return Err(format!(
                    "step {n} ({method}): expected an error, got {}",
                    Value::Object(a)
                ));
            }
            (_, _, Err(err)) => {
                return Err(format!(
                    "step {n} ({method}): expected a response, got error {:?}",
                    err
                ));
            }
        };
        // A description is for developers: match it only when given.
        let actual = match (&expected, actual) {
            (Value::Object(e), Value::Object(mut a)) if !e.contains_key("description") => {
                strip_descriptions(&mut a, e);
                Value::Object(a)
            }
            (_, a) => a,
        };
        compare(&expected, &actual, "")
            .map_err(|e| format!("step {n} ({method}): {e}\n  got: {actual}"))?;
    }
    Ok(())
}

/// Removes `description` members the expectation does not mention, at any
/// depth (method errors and SetErrors).
fn strip_descriptions(actual: &mut Map<String, Value>, expected: &Map<String, Value>) {
    if !expected.contains_key("description") {
        actual.remove("description");
    }
    for (k, v) in actual.iter_mut() {
        if let (Value::Object(a), Some(Value::Object(e))) = (v, expected.get(k)) {
            strip_descriptions(a, e);
        }
    }
}

#[test]
fn rfc8621_section_4_cases() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("rfc-conformance/jmap exists")
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("rfc8621_4_") && n.ends_with(".json"))
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases found");
    let only = std::env::var("CASE").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let text = std::fs::read_to_string(f).unwrap();
        let case: Value = match serde_json::from_str(&text) {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{name}: bad JSON: {e}"));
                continue;
            }
        };
        ran += 1;
        if let Err(e) = run_case(&case) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}
