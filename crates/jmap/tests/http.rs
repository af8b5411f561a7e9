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
    store.create_token(USER, "tests").unwrap().0
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
/// Whether an event-stream block only sets the last event id (the stream
/// starts with one: the current push state).
fn is_id_only(text: &str) -> bool {
    text.lines().all(|l| l.is_empty() || l.starts_with("id:"))
}

async fn next_chunk(body: &mut ResponseBody, wait: Duration) -> Option<String> {
    loop {
        let frame = tokio::time::timeout(wait, body.frame())
            .await
            .expect("the stream produced nothing in time")?;
        let frame = frame.unwrap();
        let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
        if !is_id_only(&text) {
            return Some(text);
        }
    }
}

#[tokio::test]
async fn bearer_app_tokens_authenticate_and_unknown_or_revoked_ones_do_not() {
    let (_dir, store, account, jmap) = setup();
    let secret = token(&store);
    let bearer = format!("Bearer {secret}");
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

    // Revoked: refused on the very next request (tokens are not cached).
    let id = tern_store::account::token_id(&tern_store::account::token_hash(&secret));
    store.revoke_token(&id).unwrap();
    let req = Request::get("/jmap/session")
        .header("authorization", &bearer)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&jmap, req).await.status(), 401);
}

#[tokio::test]
async fn a_changed_password_stops_working_on_the_next_request() {
    use base64::Engine as _;
    let (_dir, store, _account, jmap) = setup();
    let basic = |password: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"))
        )
    };
    let status = |auth: String| {
        let jmap = &jmap;
        async move {
            let req = Request::get("/jmap/session")
                .header("authorization", auth)
                .body(Full::new(Bytes::new()))
                .unwrap();
            send(jmap, req).await.status()
        }
    };
    // Verified once, then served from the cache.
    assert_eq!(status(basic(PASSWORD)).await, 200);
    assert_eq!(status(basic(PASSWORD)).await, 200);
    // The cache does not outlive a password change (nor a removal).
    store.set_password(USER, "looking-glass").unwrap();
    assert_eq!(status(basic(PASSWORD)).await, 401);
    assert_eq!(status(basic("looking-glass")).await, 200);
    // Another node sharing the store (its own handle, its own caches)
    // changes it: this node's cache does not outlive that either.
    let other = MailStore::from_kv(store.kv().clone(), store.path().to_path_buf()).unwrap();
    other.set_password(USER, "mad-hatter").unwrap();
    assert_eq!(status(basic("looking-glass")).await, 401);
    assert_eq!(status(basic("mad-hatter")).await, 200);
    other.remove_account(USER).unwrap();
    assert_eq!(status(basic("mad-hatter")).await, 401);
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
            let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
            if !is_id_only(&text) {
                break text;
            }
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

/// The references `account` holds to the blob of `data`.
fn upload_refs(store: &MailStore, account: tern_store::AccountId, data: &[u8]) -> u32 {
    store
        .kv()
        .read(|tx| blob::refs(tx, account, &tern_store::BlobHash::of(data)))
        .unwrap()
}

#[test]
fn uploads_expire_and_respect_the_upload_quota() {
    let (_dir, store, account, _jmap) = setup();
    let refs = |data: &[u8]| upload_refs(&store, account, data);
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

#[test]
fn uploads_recorded_before_the_expiry_index_count_after_an_upgrade() {
    use tern_store::keys::{self, family};
    let (_dir, store, account, _jmap) = setup();
    let refs = |data: &[u8]| upload_refs(&store, account, data);
    // Two uploads as the first format recorded them: `0x51` -> expiry
    // only, no `0x52`/`0x53`/`0x54`.
    let now = tern_store::now() as u64;
    for (data, expiry) in [(&[7u8; 300][..], now + 100), (&[8u8; 300][..], now + 200)] {
        let hash = blob::put(store.kv(), data).unwrap();
        store
            .kv()
            .transact(|tx| {
                blob::add_ref(tx, account, &hash, 1)?;
                let key = keys::acct(account, family::BLOB_UPLOAD)
                    .bytes(&hash.0)
                    .build();
                tx.set(&key, &expiry.to_be_bytes())?;
                Ok::<_, tern_store::Error>(())
            })
            .unwrap();
    }
    // A new upload that fits only without the older of the two.
    tern_jmap::blob::upload(&store, account, &[9u8; 500], 3600, 1000).unwrap();
    assert_eq!(
        refs(&[7u8; 300]),
        0,
        "the oldest upgraded upload is evicted"
    );
    assert_eq!(refs(&[8u8; 300]), 1);
    assert_eq!(refs(&[9u8; 500]), 1);
    let bytes = store
        .kv()
        .read(|tx| tx.get_counter(&keys::acct(account, family::BLOB_UPLOAD_BYTES).build()))
        .unwrap();
    assert_eq!(bytes, 800, "the counter holds the live uploads' sizes");
    // Many live uploads: each new one still finds its way (and the counter
    // stays exact).
    for i in 0..200u32 {
        tern_jmap::blob::upload(&store, account, &i.to_be_bytes(), 3600, 1_000_000).unwrap();
    }
    let bytes = store
        .kv()
        .read(|tx| tx.get_counter(&keys::acct(account, family::BLOB_UPLOAD_BYTES).build()))
        .unwrap();
    assert_eq!(bytes, 800 + 200 * 4);
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

/// A request body fed by the test through a channel, without a
/// Content-Length: it stays open until the sender sends or is dropped.
struct Streamed(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Streamed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

fn streamed() -> (tokio::sync::mpsc::Sender<Bytes>, Streamed) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, Streamed(rx))
}

async fn problem(r: Response<ResponseBody>) -> Value {
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_count_requests_in_flight_per_account() {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("example.com").unwrap();
    store.create_account(USER, PASSWORD).unwrap();
    store.create_account("bob@example.com", PASSWORD).unwrap();
    let mut config = JmapConfig::default();
    config.limits.max_concurrent_requests = 1;
    config.limits.max_concurrent_upload = 1;
    let jmap = Jmap::new(config, store.clone());
    let alice = format!("Bearer {}", token(&store));
    let bob = format!(
        "Bearer {}",
        store.create_token("bob@example.com", "t").unwrap().0
    );
    let echo =
        json!({"using": ["urn:ietf:params:jmap:core"], "methodCalls": [["Core/echo", {}, "0"]]});

    for (path, limit, status) in [
        ("/jmap/api/", "maxConcurrentRequests", 429),
        ("/jmap/upload/A1/", "maxConcurrentUpload", 429),
    ] {
        // A request whose body is still arriving holds the account's slot.
        let (tx, body) = streamed();
        let req = Request::post(path)
            .header("authorization", &alice)
            .body(body)
            .unwrap();
        let held = tokio::spawn({
            let jmap = jmap.clone();
            async move { jmap.handle(req).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let second = Request::post(path)
            .header("authorization", &alice)
            .body(Full::new(Bytes::from(echo.to_string())))
            .unwrap();
        let r = send(&jmap, second).await;
        assert_eq!(r.status(), status, "{path}");
        let p = problem(r).await;
        assert_eq!(p["type"], "urn:ietf:params:jmap:error:limit");
        assert_eq!(p["limit"], limit);
        // Another account has its own slots.
        if path == "/jmap/api/" {
            assert_eq!(
                api(&jmap, &bob, echo.clone()).await["methodResponses"][0][0],
                "Core/echo"
            );
        }
        // The first request finishes; the slot is free again.
        tx.send(Bytes::from(echo.to_string())).await.unwrap();
        drop(tx);
        let r = held.await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        let again = Request::post(path)
            .header("authorization", &alice)
            .body(Full::new(Bytes::from(echo.to_string())))
            .unwrap();
        assert!(send(&jmap, again).await.status().is_success(), "{path}");

        // A client that goes away mid-body releases its slot too.
        let (tx, body) = streamed();
        let req = Request::post(path)
            .header("authorization", &alice)
            .body(body)
            .unwrap();
        let held = tokio::spawn({
            let jmap = jmap.clone();
            async move { jmap.handle(req).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        tx.send(Bytes::from_static(b"{")).await.unwrap();
        drop(tx);
        held.await.unwrap();
        let again = Request::post(path)
            .header("authorization", &alice)
            .body(Full::new(Bytes::from(echo.to_string())))
            .unwrap();
        assert!(send(&jmap, again).await.status().is_success(), "{path}");
    }
}

#[tokio::test]
async fn size_limits_hold_for_bodies_without_a_content_length() {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("example.com").unwrap();
    store.create_account(USER, PASSWORD).unwrap();
    let mut config = JmapConfig::default();
    config.limits.max_size_request = 1000;
    config.limits.max_size_upload = 1000;
    let jmap = Jmap::new(config, store.clone());
    let auth = format!("Bearer {}", token(&store));
    for (path, status, limit) in [
        ("/jmap/api/", 400, "maxSizeRequest"),
        ("/jmap/upload/A1/", 413, "maxSizeUpload"),
    ] {
        let (tx, body) = streamed();
        let req = Request::post(path)
            .header("authorization", &auth)
            .body(body)
            .unwrap();
        let feeder = tokio::spawn(async move {
            // 600 + 600 bytes: the second chunk crosses the limit.
            for _ in 0..2 {
                if tx.send(Bytes::from(vec![b' '; 600])).await.is_err() {
                    break;
                }
            }
        });
        let r = jmap.handle(req).await;
        assert_eq!(r.status(), status, "{path}");
        let p = problem(r).await;
        assert_eq!(p["type"], "urn:ietf:params:jmap:error:limit");
        assert_eq!(p["limit"], limit);
        feeder.await.unwrap();
    }
}

#[tokio::test]
async fn session_urls_are_absolute_under_a_base_url_with_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("example.com").unwrap();
    store.create_account(USER, PASSWORD).unwrap();
    let config = JmapConfig {
        base_url: Some("https://mail.example.com/tern/".into()),
        ..JmapConfig::default()
    };
    let jmap = Jmap::new(config, store.clone());
    let auth = format!("Bearer {}", token(&store));
    // Behind a proxy that keeps the prefix, and at the well-known URL.
    for path in ["/tern/.well-known/jmap", "/.well-known/jmap"] {
        let req = Request::get(path)
            .header("authorization", &auth)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send(&jmap, req).await;
        assert_eq!(r.status(), 200, "{path}");
        let s: Value =
            serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(s["apiUrl"], "https://mail.example.com/tern/jmap/api/");
        assert_eq!(
            s["uploadUrl"],
            "https://mail.example.com/tern/jmap/upload/{accountId}/"
        );
        assert_eq!(
            s["downloadUrl"],
            "https://mail.example.com/tern/jmap/download/{accountId}/{blobId}/{name}?type={type}"
        );
        assert!(
            s["eventSourceUrl"]
                .as_str()
                .unwrap()
                .starts_with("https://mail.example.com/tern/jmap/eventsource/?"),
            "{s}"
        );
    }
    // The API answers under the prefix.
    let req = Request::post("/tern/jmap/api/")
        .header("authorization", &auth)
        .body(Full::new(Bytes::from(
            json!({"using": ["urn:ietf:params:jmap:core"], "methodCalls": [["Core/echo", {"x": 1}, "0"]]})
                .to_string(),
        )))
        .unwrap();
    assert_eq!(send(&jmap, req).await.status(), 200);
}

#[tokio::test]
async fn a_truncated_change_log_answers_cannot_calculate_changes() {
    let (_dir, store, account, jmap) = setup();
    let auth = format!("Bearer {}", token(&store));
    let using = json!(["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]);
    let acct = tern_jmap::id::account_id(account);
    let states = |v: &Value| {
        (
            v["methodResponses"][0][1]["state"]
                .as_str()
                .unwrap()
                .to_string(),
            v["methodResponses"][1][1]["queryState"]
                .as_str()
                .unwrap()
                .to_string(),
            v["methodResponses"][2][1]["state"]
                .as_str()
                .unwrap()
                .to_string(),
        )
    };
    let snapshot = json!({"using": using, "methodCalls": [
        ["Email/get", {"accountId": acct, "ids": []}, "0"],
        ["Email/query", {"accountId": acct}, "1"],
        ["Mailbox/get", {"accountId": acct, "ids": []}, "2"],
    ]});
    let old = states(&api(&jmap, &auth, snapshot.clone()).await);
    for i in 0..3 {
        let raw = format!("From: a@example.org\r\nSubject: {i}\r\n\r\nbody\r\n");
        store
            .deliver(raw.as_bytes(), &[tern_store::Recipient::inbox(account)])
            .unwrap();
    }
    let mid = states(&api(&jmap, &auth, snapshot.clone()).await);
    // The log keeps everything: both states can be asked about.
    let ask = |s: &(String, String, String)| {
        json!({"using": using, "methodCalls": [
            ["Email/changes", {"accountId": acct, "sinceState": s.0}, "0"],
            ["Email/queryChanges", {"accountId": acct, "sinceQueryState": s.1}, "1"],
            ["Mailbox/changes", {"accountId": acct, "sinceState": s.2}, "2"],
        ]})
    };
    let r = api(&jmap, &auth, ask(&old)).await;
    assert_eq!(
        r["methodResponses"][0][1]["created"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(
        r["methodResponses"][1][1]["added"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(r["methodResponses"][2][0], "Mailbox/changes");
    // Drop the log up to `mid`: older states cannot be answered, later
    // ones still can.
    let upto = |s: &str| s.parse::<u64>().unwrap();
    store
        .kv()
        .transact(|tx| {
            tern_store::changes::truncate(tx, account, tern_store::DataType::Email, upto(&mid.0))?;
            tern_store::changes::truncate(tx, account, tern_store::DataType::Mailbox, upto(&mid.2))
        })
        .unwrap();
    let r = api(&jmap, &auth, ask(&old)).await;
    for i in 0..3 {
        assert_eq!(r["methodResponses"][i][0], "error", "{r}");
        assert_eq!(
            r["methodResponses"][i][1]["type"], "cannotCalculateChanges",
            "{r}"
        );
    }
    let r = api(&jmap, &auth, ask(&mid)).await;
    assert_eq!(r["methodResponses"][0][0], "Email/changes", "{r}");
    assert_eq!(r["methodResponses"][1][0], "Email/queryChanges", "{r}");
    assert_eq!(r["methodResponses"][2][0], "Mailbox/changes", "{r}");
}

/// Stores `n` emails in `mailboxes` through the store (no JMAP), each with
/// `keywords` long keywords, a few per transaction.
fn store_emails(
    store: &MailStore,
    account: AccountId,
    mailboxes: &[tern_store::DocumentId],
    n: usize,
    keywords: usize,
) {
    let kw: Vec<String> = (0..keywords)
        .map(|k| format!("k{k:03}{}", "x".repeat(240)))
        .collect();
    for start in (0..n).step_by(25) {
        store
            .kv()
            .transact(|tx| {
                let mut w = tern_store::Writer::begin(tx, account)?;
                for i in start..(start + 25).min(n) {
                    let raw = format!(
                        "From: a@example.org\r\nSubject: bulk {i}\r\nMessage-ID: <{i}.{}@bulk>\r\n\r\nbody {i}\r\n",
                        mailboxes[0]
                    );
                    let parsed = tern_store::parse::parse_message(raw.as_bytes()).unwrap();
                    let hash = blob::put_in_tx(w.tx, raw.as_bytes())?;
                    tern_store::email::insert(
                        &mut w,
                        tern_store::email::NewEmail {
                            blob: hash,
                            size: raw.len() as u64,
                            received_at: 1_700_000_000 + i as i64,
                            mailbox_ids: mailboxes.to_vec(),
                            keywords: kw.clone(),
                            parsed: &parsed,
                        },
                    )?;
                }
                w.finish()?;
                Ok::<_, tern_store::Error>(())
            })
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroying_a_mailbox_removes_any_number_of_emails_within_the_store_limits() {
    // RFC 8621 section 2.5, onDestroyRemoveEmails: every email of the
    // mailbox goes, however many, although one transaction may write at
    // most 10 MB (FoundationDB's limit, enforced by every backend). Each
    // email here carries 120 keywords of 244 bytes, so removing the 400 of
    // them writes well over 10 MB.
    let (_dir, store, account, jmap) = setup();
    let auth = format!("Bearer {}", token(&store));
    let acct = tern_jmap::id::account_id(account);
    let using = json!(["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]);
    let r = api(
        &jmap,
        &auth,
        json!({"using": using, "methodCalls": [
            ["Mailbox/set", {"accountId": acct, "create": {"big": {"name": "Big"}, "other": {"name": "Other"}}}, "0"]
        ]}),
    )
    .await;
    let created = &r["methodResponses"][0][1]["created"];
    let big_id = created["big"]["id"].as_str().unwrap().to_string();
    let other_id = created["other"]["id"].as_str().unwrap().to_string();
    let big = tern_jmap::id::decode(tern_jmap::id::Kind::Mailbox, &big_id).unwrap();
    let other = tern_jmap::id::decode(tern_jmap::id::Kind::Mailbox, &other_id).unwrap();
    store_emails(&store, account, &[big], 400, 120);
    store_emails(&store, account, &[big, other], 3, 0);

    let snapshot = json!({"using": using, "methodCalls": [
        ["Mailbox/get", {"accountId": acct, "ids": [big_id, other_id], "properties": ["totalEmails"]}, "0"],
        ["Email/get", {"accountId": acct, "ids": []}, "1"],
    ]});
    let before = api(&jmap, &auth, snapshot.clone()).await;
    let mailbox_state = before["methodResponses"][0][1]["state"].clone();
    let email_state = before["methodResponses"][1][1]["state"].clone();
    assert_eq!(
        before["methodResponses"][0][1]["list"][0]["totalEmails"],
        403
    );

    // A stale ifInState changes nothing.
    let destroy = |if_in_state: Value| {
        json!({"using": using, "methodCalls": [
            ["Mailbox/set", {"accountId": acct, "ifInState": if_in_state,
                             "destroy": [big_id], "onDestroyRemoveEmails": true}, "0"]
        ]})
    };
    let r = api(&jmap, &auth, destroy(json!("1"))).await;
    assert_eq!(r["methodResponses"][0][1]["type"], "stateMismatch", "{r}");
    let unchanged = api(&jmap, &auth, snapshot.clone()).await;
    assert_eq!(unchanged["methodResponses"][1][1]["state"], email_state);

    let r = api(&jmap, &auth, destroy(mailbox_state.clone())).await;
    let set = &r["methodResponses"][0];
    assert_eq!(set[0], "Mailbox/set", "{r}");
    assert_eq!(set[1]["destroyed"], json!([big_id]), "{r}");
    assert_eq!(
        set[1]["oldState"], mailbox_state,
        "the state before the call"
    );

    let after = api(&jmap, &auth, snapshot).await;
    assert_eq!(after["methodResponses"][0][1]["notFound"], json!([big_id]));
    assert_eq!(
        after["methodResponses"][0][1]["list"],
        json!([{"id": other_id, "totalEmails": 3}])
    );
    assert_eq!(
        after["methodResponses"][0][1]["state"], set[1]["newState"],
        "newState is the state after every change the call made"
    );
    // Email/changes reports each email once: the 400 destroyed, the 3 in
    // Other updated.
    let r = api(
        &jmap,
        &auth,
        json!({"using": using, "methodCalls": [
            ["Email/changes", {"accountId": acct, "sinceState": email_state}, "0"],
            ["Email/query", {"accountId": acct}, "1"]
        ]}),
    )
    .await;
    let changes = &r["methodResponses"][0][1];
    assert_eq!(changes["hasMoreChanges"], false);
    assert_eq!(changes["destroyed"].as_array().unwrap().len(), 400, "{r}");
    assert_eq!(changes["updated"].as_array().unwrap().len(), 3, "{r}");
    assert_eq!(changes["created"], json!([]));
    assert_eq!(
        r["methodResponses"][1][1]["ids"].as_array().unwrap().len(),
        3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_comes_from_the_store_whoever_writes_and_whichever_node_listens() {
    // Two JMAP servers ("nodes") over one store, and a writer that is no
    // JMAP server at all: a client of node B hears of changes made through
    // node A and of changes written straight to the store.
    let (_dir, store, account, node_a) = setup();
    let node_b = Jmap::new(JmapConfig::default(), store.clone());
    let auth = format!("Bearer {}", token(&store));
    let acct = tern_jmap::id::account_id(account);
    let mut events = open_events(&node_b, &auth, "types=*&closeafter=no&ping=0", None).await;
    // The stream starts with the current push state.
    let first = tokio::time::timeout(Duration::from_secs(10), events.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let first = String::from_utf8(first.into_data().unwrap().to_vec()).unwrap();
    assert!(is_id_only(&first), "{first:?}");

    // Through node A's API.
    let r = api(
        &node_a,
        &auth,
        json!({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": [
            ["Mailbox/set", {"accountId": acct, "create": {"n": {"name": "From A"}}}, "0"]
        ]}),
    )
    .await;
    let mailbox_state = r["methodResponses"][0][1]["newState"].clone();
    let (event, _, data) = parse_event(
        &next_chunk(&mut events, Duration::from_secs(10))
            .await
            .unwrap(),
    );
    assert_eq!(event, "state");
    assert_eq!(data["changed"][&acct]["Mailbox"], mailbox_state, "{data}");

    // Straight into the store (as `tern` admin commands or an importer do).
    let raw = b"From: x@example.org\r\nSubject: direct\r\n\r\nbody\r\n";
    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        s.deliver(raw, &[tern_store::Recipient::inbox(account)])
            .unwrap()
    })
    .await
    .unwrap();
    let r = api(
        &node_b,
        &auth,
        json!({"using": ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"], "methodCalls": [
            ["Email/get", {"accountId": acct, "ids": []}, "0"]
        ]}),
    )
    .await;
    let email_state = r["methodResponses"][0][1]["state"].clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = next_chunk(
            &mut events,
            deadline.saturating_duration_since(tokio::time::Instant::now()),
        )
        .await
        .unwrap();
        let (event, _, data) = parse_event(&text);
        assert_eq!(event, "state");
        assert!(
            data["changed"][&acct].get("Mailbox").is_none()
                || data["changed"][&acct]["Mailbox"] != mailbox_state,
            "nothing is pushed twice: {data}"
        );
        if data["changed"][&acct]["Email"] == email_state {
            break;
        }
    }
}
