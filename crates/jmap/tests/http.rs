//! HTTP-level behaviour that does not fit a request/response case: Bearer
//! app tokens, the event source's stream, upload expiry and quota.

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes};
use hyper::{Request, Response};
use serde_json::{Value, json};
use tern_jmap::{Jmap, JmapConfig, ResponseBody};
use tern_store::{AccountId, MailStore, blob};

const USER: &str = "alice@example.com";
const PASSWORD: &str = "wonderland";

fn setup() -> (tempfile::TempDir, MailStore, AccountId, Jmap) {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("example.com").unwrap();
    let account = store.create_account(USER, PASSWORD).unwrap();
    let jmap = Jmap::new(JmapConfig::default(), store.clone());
    (dir, store, account, jmap)
}

fn token(store: &MailStore) -> String {
    tern_jmap::create_app_token(store, USER, "tests").unwrap()
}

async fn send(jmap: &Jmap, req: Request<Full<Bytes>>) -> Response<ResponseBody> {
    jmap.handle(req).await
}

async fn api(jmap: &Jmap, auth: &str, body: Value) -> Value {
    let req = Request::post("/jmap/api/")
        .header("authorization", auth)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let r = send(jmap, req).await;
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

/// The next chunk of a streaming body, or `None` at its end.
async fn next_chunk(body: &mut ResponseBody, wait: Duration) -> Option<String> {
    let frame = tokio::time::timeout(wait, body.frame())
        .await
        .expect("the stream produced nothing in time")?;
    let frame = frame.unwrap();
    Some(String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap())
}

#[tokio::test]
async fn bearer_app_tokens_authenticate_and_unknown_ones_do_not() {
    let (_dir, store, account, jmap) = setup();
    let bearer = format!("Bearer {}", token(&store));
    let req = Request::get("/jmap/session")
        .header("authorization", &bearer)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&jmap, req).await;
    assert_eq!(r.status(), 200);
    let session: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(session["username"], USER);
    assert!(session["accounts"][tern_jmap::id::account_id(account)].is_object());

    let req = Request::get("/jmap/session")
        .header("authorization", format!("{bearer}x"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = send(&jmap, req).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get_all("www-authenticate").iter().count() >= 1);
}

async fn open_events(jmap: &Jmap, auth: &str, query: &str, last: Option<&str>) -> ResponseBody {
    let mut req = Request::get(format!("/jmap/eventsource/?{query}")).header("authorization", auth);
    if let Some(id) = last {
        req = req.header("last-event-id", id);
    }
    let r = send(jmap, req.body(Full::new(Bytes::new())).unwrap()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    r.into_body()
}

fn parse_event(text: &str) -> (String, Option<String>, Value) {
    let mut event = String::new();
    let mut id = None;
    let mut data = Value::Null;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event: ") {
            event = v.to_string();
        } else if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_string());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = serde_json::from_str(v).unwrap();
        }
    }
    (event, id, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_source_pushes_a_state_change_and_closes_after_state() {
    let (_dir, store, account, jmap) = setup();
    let auth = format!("Bearer {}", token(&store));
    let mut body = open_events(&jmap, &auth, "types=Mailbox&closeafter=state&ping=0", None).await;
    // The stream first reads the current states; a change made before that
    // read is not news to it, so keep changing until an event arrives.
    let aid = tern_jmap::id::account_id(account);
    let mut states = Vec::new();
    let text = loop {
        assert!(
            states.len() < 10,
            "no state event after {} changes",
            states.len()
        );
        let set = api(
            &jmap,
            &auth,
            json!({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": [
                ["Mailbox/set", {"accountId": aid, "create": {"a": {"name": format!("A{}", states.len())}}}, "0"]
            ]}),
        )
        .await;
        states.push(set["methodResponses"][0][1]["newState"].clone());
        if let Ok(chunk) = tokio::time::timeout(Duration::from_secs(2), body.frame()).await {
            let frame = chunk.expect("an event").unwrap();
            break String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
        }
    };
    let (event, id, data) = parse_event(&text);
    assert_eq!(event, "state");
    assert!(id.is_some());
    let pushed = data["changed"][&aid]["Mailbox"].clone();
    assert!(states.contains(&pushed), "{pushed} is one of {states:?}");
    assert_eq!(
        data,
        json!({"@type": "StateChange", "changed": {aid: {"Mailbox": pushed}}})
    );
    assert_eq!(
        next_chunk(&mut body, Duration::from_secs(5)).await,
        None,
        "closeafter=state ends the stream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_source_filters_types_pings_and_replays_from_last_event_id() {
    let (_dir, store, account, jmap) = setup();
    let auth = format!("Bearer {}", token(&store));
    let aid = tern_jmap::id::account_id(account);
    // Only Email and EmailDelivery are asked for: a mailbox change is not
    // pushed, a delivery is.
    let mut body = open_events(
        &jmap,
        &auth,
        "types=Email,EmailDelivery&closeafter=no&ping=1",
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    api(
        &jmap,
        &auth,
        json!({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": [
            ["Mailbox/set", {"accountId": aid, "create": {"a": {"name": "A"}}}, "0"]
        ]}),
    )
    .await;
    let text = next_chunk(&mut body, Duration::from_secs(5)).await.unwrap();
    let (event, id, data) = parse_event(&text);
    assert_eq!(
        event, "ping",
        "a mailbox change is not pushed to an Email listener: {text}"
    );
    assert_eq!(id, None, "pings set no event id");
    assert_eq!(data, json!({"interval": 1}));
    let raw = b"From: a@example.org\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\nhello\r\n";
    let store2 = store.clone();
    tokio::task::spawn_blocking(move || {
        store2
            .deliver(raw, &[tern_store::Recipient::inbox(account)])
            .unwrap()
    })
    .await
    .unwrap();
    let (event, id, data) = loop {
        let text = next_chunk(&mut body, Duration::from_secs(5)).await.unwrap();
        let e = parse_event(&text);
        if e.0 == "state" {
            break e;
        }
    };
    assert_eq!(event, "state");
    let changed = data["changed"][&aid].as_object().unwrap();
    let mut names: Vec<&String> = changed.keys().collect();
    names.sort();
    assert_eq!(names, ["Email", "EmailDelivery"]);
    drop(body);

    // A client that reconnects with an old Last-Event-ID is told at once.
    let first_id = id.unwrap();
    api(
        &jmap,
        &auth,
        json!({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": [
            ["Mailbox/set", {"accountId": aid, "create": {"b": {"name": "B"}}}, "0"]
        ]}),
    )
    .await;
    let mut body = open_events(
        &jmap,
        &auth,
        "types=*&closeafter=state&ping=0",
        Some(&first_id),
    )
    .await;
    let text = next_chunk(&mut body, Duration::from_secs(5)).await.unwrap();
    let (event, _, data) = parse_event(&text);
    assert_eq!(event, "state");
    assert!(data["changed"][&aid]["Mailbox"].is_string(), "{data}");
    assert!(data["changed"][&aid].get("Email").is_none(), "{data}");
}

#[tokio::test]
async fn event_source_rejects_bad_parameters() {
    let (_dir, store, _account, jmap) = setup();
    let auth = format!("Bearer {}", token(&store));
    for q in [
        "types=*&closeafter=maybe&ping=0",
        "types=*&closeafter=no&ping=soon",
    ] {
        let req = Request::get(format!("/jmap/eventsource/?{q}"))
            .header("authorization", &auth)
            .body(Full::new(Bytes::new()))
            .unwrap();
        assert_eq!(send(&jmap, req).await.status(), 400, "{q}");
    }
}

#[test]
fn uploads_expire_and_respect_the_upload_quota() {
    let (_dir, store, account, _jmap) = setup();
    let refs = |data: &[u8]| {
        store
            .kv()
            .read(|tx| blob::refs(tx, account, &tern_store::BlobHash::of(data)))
            .unwrap()
    };
    // Expired uploads are released by the next upload.
    tern_jmap::blob::upload(&store, account, b"old", 0, 1000).unwrap();
    assert_eq!(refs(b"old"), 1, "an upload is held by the account");
    tern_jmap::blob::upload(&store, account, b"new", 3600, 1000).unwrap();
    assert_eq!(refs(b"old"), 0, "expired upload released");
    assert_eq!(refs(b"new"), 1);
    // Uploading the same bytes again keeps one reference.
    tern_jmap::blob::upload(&store, account, b"new", 3600, 1000).unwrap();
    assert_eq!(refs(b"new"), 1);
    // Over the upload quota the oldest uploads go first.
    tern_jmap::blob::upload(&store, account, &[1u8; 400], 3600, 1000).unwrap();
    tern_jmap::blob::upload(&store, account, &[2u8; 400], 3601, 1000).unwrap();
    tern_jmap::blob::upload(&store, account, &[3u8; 400], 3602, 1000).unwrap();
    assert_eq!(refs(b"new"), 0);
    assert_eq!(refs(&[1u8; 400]), 0);
    assert_eq!(refs(&[2u8; 400]), 1);
    assert_eq!(refs(&[3u8; 400]), 1);
    assert!(matches!(
        tern_jmap::blob::upload(&store, account, &[4u8; 1001], 3600, 1000),
        Err(tern_jmap::blob::UploadError::OverQuota)
    ));
}

#[tokio::test]
async fn concurrent_request_limit_is_a_limit_problem() {
    // maxConcurrentRequests = 0 makes every API request exceed it.
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("example.com").unwrap();
    store.create_account(USER, PASSWORD).unwrap();
    let mut config = JmapConfig::default();
    config.limits.max_concurrent_requests = 0;
    config.limits.max_concurrent_upload = 0;
    let jmap = Jmap::new(config, store.clone());
    let auth = format!("Bearer {}", token(&store));
    let req = Request::post("/jmap/api/")
        .header("authorization", &auth)
        .body(Full::new(Bytes::from(r#"{"using":[],"methodCalls":[]}"#)))
        .unwrap();
    let r = send(&jmap, req).await;
    assert_eq!(r.status(), 429);
    let body: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["type"], "urn:ietf:params:jmap:error:limit");
    assert_eq!(body["limit"], "maxConcurrentRequests");
    let req = Request::post("/jmap/upload/A1/")
        .header("authorization", &auth)
        .body(Full::new(Bytes::from("x")))
        .unwrap();
    let r = send(&jmap, req).await;
    assert_eq!(r.status(), 429);
    let body: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["limit"], "maxConcurrentUpload");
}

#[allow(dead_code)]
fn assert_body_is_send(b: ResponseBody) -> impl Body + Send {
    b
}
