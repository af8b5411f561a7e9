//! Runs every data-driven conformance case in `rfc-conformance/jmap/`
//! (except the Email ones, `rfc8621_4_*`, run by `email_conformance.rs`)
//! against a fresh store in a temp dir, through the socket-less handler
//! (`Jmap::handle`). The case format is described in
//! `rfc-conformance/jmap/README.md`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use serde_json::{Map, Value, json};
use tern_jmap::{Jmap, JmapConfig};
use tern_store::{Folder, MailStore, Recipient};

const USER: &str = "alice@example.com";
const PASSWORD: &str = "wonderland";

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../rfc-conformance/jmap")
}

/// Values bound by `${name}` placeholders while a case runs.
type Bindings = HashMap<String, Value>;

/// Replaces `${name}` inside strings (a string that is exactly one
/// placeholder takes the bound value, whatever its type).
fn substitute(v: &Value, b: &Bindings) -> Value {
    match v {
        Value::String(s) => {
            if let Some(name) = whole_placeholder(s)
                && let Some(bound) = b.get(name)
            {
                return bound.clone();
            }
            let mut out = s.clone();
            for (k, val) in b {
                let text = match val {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                out = out.replace(&format!("${{{k}}}"), &text);
            }
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| substitute(x, b)).collect()),
        Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, x)| {
                    let key = match substitute(&Value::String(k.clone()), b) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, substitute(x, b))
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn whole_placeholder(s: &str) -> Option<&str> {
    let name = s.strip_prefix("${")?.strip_suffix('}')?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
}

/// Matches `actual` against `expected`: `"$ANY"` matches anything; a
/// string that is exactly `${name}` binds `name` the first time and must
/// equal the bound value after; objects must have exactly the expected
/// keys unless they hold `"$extra": true`; `"$ABSENT"` as a member value
/// requires the member to be missing.
fn check(expected: &Value, actual: &Value, b: &mut Bindings, path: &str) -> Result<(), String> {
    match expected {
        Value::String(s) if s == "$ANY" => Ok(()),
        Value::String(s) if whole_placeholder(s).is_some() => {
            let name = whole_placeholder(s).unwrap();
            match b.get(name) {
                Some(bound) if bound == actual => Ok(()),
                Some(bound) => Err(format!(
                    "{path}: expected ${{{name}}} = {bound}, got {actual}"
                )),
                None => {
                    b.insert(name.to_string(), actual.clone());
                    Ok(())
                }
            }
        }
        Value::String(_) => {
            let e = substitute(expected, b);
            if &e == actual {
                Ok(())
            } else {
                Err(format!("{path}: expected {e}, got {actual}"))
            }
        }
        Value::Object(eo) => {
            let Some(ao) = actual.as_object() else {
                return Err(format!("{path}: expected an object, got {actual}"));
            };
            let extra = eo.get("$extra") == Some(&Value::Bool(true));
            for (k, ev) in eo {
                if k == "$extra" {
                    continue;
                }
                let key = match substitute(&Value::String(k.clone()), b) {
                    Value::String(s) => s,
                    _ => k.clone(),
                };
                match (ev, ao.get(&key)) {
                    (Value::String(s), None) if s == "$ABSENT" => {}
                    (Value::String(s), Some(v)) if s == "$ABSENT" => {
                        return Err(format!("{path}/{key}: expected no member, got {v}"));
                    }
                    (_, None) => return Err(format!("{path}: missing member {key:?} in {actual}")),
                    (ev, Some(av)) => check(ev, av, b, &format!("{path}/{key}"))?,
                }
            }
            if !extra {
                for k in ao.keys() {
                    let expected_key = eo.keys().any(|ek| {
                        matches!(substitute(&Value::String(ek.clone()), b), Value::String(s) if &s == k)
                    });
                    if !expected_key {
                        return Err(format!("{path}: unexpected member {k:?} in {actual}"));
                    }
                }
            }
            Ok(())
        }
        Value::Array(ea) => {
            let Some(aa) = actual.as_array() else {
                return Err(format!("{path}: expected an array, got {actual}"));
            };
            if ea.len() != aa.len() {
                return Err(format!(
                    "{path}: expected {} items, got {}: {actual}",
                    ea.len(),
                    aa.len()
                ));
            }
            for (i, (e, a)) in ea.iter().zip(aa).enumerate() {
                check(e, a, b, &format!("{path}/{i}"))?;
            }
            Ok(())
        }
        other => {
            if other == actual {
                Ok(())
            } else {
                Err(format!("{path}: expected {other}, got {actual}"))
            }
        }
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

struct Env {
    _dir: tempfile::TempDir,
    store: MailStore,
    jmap: Jmap,
    bindings: Bindings,
}

fn env(config: &Map<String, Value>) -> Env {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("example.com").unwrap();
    let account = store.create_account(USER, PASSWORD).unwrap();
    let mut c = JmapConfig::new("127.0.0.1:8080".parse().unwrap());
    c.base_url = Some("https://jmap.example.com".into());
    if let Some(Value::Object(limits)) = config.get("limits") {
        for (k, v) in limits {
            let n = v.as_u64().expect("limit numbers");
            match k.as_str() {
                "maxSizeUpload" => c.limits.max_size_upload = n,
                "maxSizeRequest" => c.limits.max_size_request = n as usize,
                "maxCallsInRequest" => c.limits.max_calls_in_request = n as usize,
                "maxObjectsInGet" => c.limits.max_objects_in_get = n as usize,
                "maxObjectsInSet" => c.limits.max_objects_in_set = n as usize,
                "maxConcurrentRequests" => c.limits.max_concurrent_requests = n as usize,
                "maxConcurrentUpload" => c.limits.max_concurrent_upload = n as usize,
                "maxChanges" => c.limits.max_changes = n as usize,
                "maxQueryLimit" => c.limits.max_query_limit = n as usize,
                other => panic!("unknown limit {other}"),
            }
        }
    }
    let jmap = Jmap::new(c, store.clone());
    let mut bindings = Bindings::new();
    bindings.insert(
        "accountId".into(),
        json!(tern_jmap::id::account_id(account)),
    );
    bindings.insert("username".into(), json!(USER));
    Env {
        _dir: dir,
        store,
        jmap,
        bindings,
    }
}

/// Runs one step; returns an error message on mismatch.
async fn step(env: &mut Env, step: &Value) -> Result<(), String> {
    let step = step.as_object().ok_or("a step must be an object")?;
    if let Some(raw) = step.get("deliver") {
        let raw = substitute(raw, &env.bindings);
        let raw = raw.as_str().ok_or("deliver takes a message as a string")?;
        let raw = raw.replace("\r\n", "\n").replace('\n', "\r\n");
        let account = env.store.lookup_address(USER).unwrap().unwrap();
        let mut recipient = Recipient::inbox(account);
        if let Some(m) = step.get("mailbox") {
            let m = substitute(m, &env.bindings);
            let m = m.as_str().ok_or("mailbox is an id")?;
            let id =
                tern_jmap::id::decode(tern_jmap::id::Kind::Mailbox, m).ok_or("not a mailbox id")?;
            recipient.folder = Folder::Mailbox(id);
        }
        let delivered = env.store.deliver(raw.as_bytes(), &[recipient]).unwrap();
        assert!(delivered[0].is_ok(), "delivery failed: {delivered:?}");
        if let Some(Value::String(name)) = step.get("as") {
            let blob = tern_jmap::id::blob_id(&tern_store::BlobHash::of(raw.as_bytes()));
            env.bindings.insert(name.clone(), json!(blob));
            env.bindings.insert(
                format!("{name}_hash"),
                json!(tern_store::BlobHash::of(raw.as_bytes()).to_hex()),
            );
            env.bindings
                .insert(format!("{name}_size"), json!(raw.len().to_string()));
        }
        return Ok(());
    }
    let request = substitute(
        step.get("request").ok_or("a step needs a request")?,
        &env.bindings,
    );
    let request = request.as_object().ok_or("request must be an object")?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or("POST");
    let path = request
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or("/jmap/api/");
    let mut builder = Request::builder().method(method).uri(path);
    let mut has_auth = false;
    let mut has_type = false;
    if let Some(Value::Object(h)) = request.get("headers") {
        for (k, v) in h {
            has_auth |= k.eq_ignore_ascii_case("authorization");
            has_type |= k.eq_ignore_ascii_case("content-type");
            builder = builder.header(k, v.as_str().ok_or("header values are strings")?);
        }
    }
    match request.get("auth").and_then(Value::as_str) {
        _ if has_auth => {}
        Some("none") => {}
        Some(other) => builder = builder.header("authorization", other),
        None => builder = builder.header("authorization", basic(USER, PASSWORD)),
    }
    let body: Vec<u8> = match (request.get("body"), request.get("bodyText")) {
        (Some(b), _) => {
            if !has_type {
                builder = builder.header("content-type", "application/json");
            }
            b.to_string().into_bytes()
        }
        (None, Some(Value::String(t))) => t.clone().into_bytes(),
        (None, Some(Value::Object(o))) if o.contains_key("repeat") => {
            let unit = o["repeat"].as_str().unwrap_or("x");
            let times = o["times"].as_u64().unwrap_or(1) as usize;
            format!(
                "{}{}{}",
                o.get("prefix").and_then(Value::as_str).unwrap_or(""),
                unit.repeat(times),
                o.get("suffix").and_then(Value::as_str).unwrap_or("")
            )
            .into_bytes()
        }
        _ => Vec::new(),
    };
    let req = builder
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = env.jmap.handle(req).await;
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let expected = step.get("response").ok_or("a step needs a response")?;
    let expected_status = expected
        .get("status")
        .and_then(Value::as_u64)
        .unwrap_or(200);
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status != StatusCode::from_u16(expected_status as u16).unwrap() {
        return Err(format!(
            "status {status}, expected {expected_status}; body {text}"
        ));
    }
    if let Some(Value::Object(h)) = expected.get("headers") {
        for (k, v) in h {
            let actual = headers.get(k).map(|x| x.to_str().unwrap_or("").to_string());
            let actual = actual.map(Value::String).unwrap_or(Value::Null);
            check(v, &actual, &mut env.bindings, &format!("header {k}"))?;
        }
    }
    if let Some(e) = expected.get("body") {
        let actual: Value = serde_json::from_slice(&bytes)
            .map_err(|err| format!("response is not JSON ({err}): {text}"))?;
        check(e, &actual, &mut env.bindings, "")?;
    }
    if let Some(Value::String(t)) = expected.get("bodyText") {
        let t = match substitute(&Value::String(t.clone()), &env.bindings) {
            Value::String(s) => s,
            _ => unreachable!(),
        };
        if t != text {
            return Err(format!("body {text:?}, expected {t:?}"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc_conformance_cases() {
    let only = std::env::var("CASE").ok();
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .expect("rfc-conformance/jmap exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    let mut ran = 0;
    let mut failures = Vec::new();
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        // RFC 8621 section 4 (Email) cases have their own runner
        // (email_conformance.rs) and format.
        if name.starts_with("rfc8621_4") {
            continue;
        }
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let case: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let Some(steps) = case.get("steps").and_then(Value::as_array) else {
            continue;
        };
        let mut env = env(case.as_object().unwrap());
        ran += 1;
        for (i, s) in steps.iter().enumerate() {
            if let Err(e) = step(&mut env, s).await {
                failures.push(format!("{name} step {i}: {e}"));
                break;
            }
        }
    }
    assert!(ran > 0, "no conformance cases found");
    println!("{ran} conformance cases run");
    assert!(
        failures.is_empty(),
        "{} failing:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_matcher_rejects_mismatches_and_binds_placeholders() {
    let mut b = Bindings::new();
    assert!(check(&json!({"a": 1}), &json!({"a": 2}), &mut b, "").is_err());
    assert!(check(&json!({"a": 1}), &json!({"a": 1, "b": 2}), &mut b, "").is_err());
    assert!(
        check(
            &json!({"a": 1, "$extra": true}),
            &json!({"a": 1, "b": 2}),
            &mut b,
            ""
        )
        .is_ok()
    );
    assert!(check(&json!({"a": "$ABSENT"}), &json!({"a": 1}), &mut b, "").is_err());
    assert!(check(&json!({"a": "$ABSENT"}), &json!({}), &mut b, "").is_ok());
    assert!(check(&json!([1, 2]), &json!([2, 1]), &mut b, "").is_err());
    assert!(check(&json!([1]), &json!([1, 1]), &mut b, "").is_err());
    assert!(check(&json!("$ANY"), &json!({"x": [1]}), &mut b, "").is_ok());
    assert!(check(&json!({"id": "${x}"}), &json!({"id": "M7"}), &mut b, "").is_ok());
    assert!(check(&json!("${x}"), &json!("M8"), &mut b, "").is_err());
    assert!(check(&json!({"${x}": null}), &json!({"M7": null}), &mut b, "").is_ok());
    assert!(check(&json!({"${x}": null}), &json!({"M8": null}), &mut b, "").is_err());
    assert_eq!(
        substitute(&json!({"p": "/a/${x}/b", "q": "${x}"}), &b),
        json!({"p": "/a/M7/b", "q": "M7"})
    );
}
