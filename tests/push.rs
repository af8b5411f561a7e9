//! End to end: push from the real `tern` binary (`tern serve` with a temp
//! config on free ports). Mail arrives over SMTP on the MX listener and
//! changes are made over the JMAP API; clients listen with a real
//! WebSocket client (tokio-tungstenite, RFC 8887), with `jmap-client`'s
//! WebSocket support, and with a raw event-source reader (plain TCP,
//! chunked `text/event-stream`, RFC 8620 section 7.3). Push subscriptions
//! (section 7.2) are delivered to an HTTPS server run by the test with a
//! self-signed certificate the server is told to trust.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{CORE, Listeners, MAIL, Tern};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const PASSWORD: &str = "wonderland";

fn basic(user: &str) -> String {
    common::basic(user, PASSWORD)
}

/// Starts the server with `extra` appended to its config (sections such
/// as `[jmap.push]`), with alice and bob as accounts. DNS is unreachable
/// here: no SPF/DKIM/DMARC checks on the MX.
fn start(extra: &str) -> Tern {
    let mut tern = Tern::new(
        Listeners::default(),
        &format!("[smtp.checks]\nenabled = false\n[log]\nlevel = \"warn\"\n{extra}\n"),
    );
    tern.start();
    for user in [ALICE, BOB] {
        tern.cli(&["account", "add", user, "--password", PASSWORD]);
    }
    tern
}

impl Tern {
    /// One HTTP/1.1 exchange with the JMAP listener: status, headers
    /// (lowercase names), body.
    async fn http(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, HashMap<String, String>, Vec<u8>) {
        let mut s = TcpStream::connect(("127.0.0.1", self.jmap)).await.unwrap();
        let request = common::request(self.jmap, method, path, headers, body);
        s.write_all(&request).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let r = common::parse_response(&raw);
        (r.status, r.headers, r.body)
    }

    async fn session(&self, user: &str) -> Value {
        let (status, _, body) = self
            .http(
                "GET",
                "/.well-known/jmap",
                &[("Authorization", &basic(user))],
                b"",
            )
            .await;
        assert_eq!(status, 200);
        serde_json::from_slice(&body).unwrap()
    }

    /// A JMAP API request over HTTP; returns the method responses.
    async fn api(&self, user: &str, calls: Value) -> Vec<Value> {
        let body = json!({"using": [CORE, MAIL], "methodCalls": calls}).to_string();
        let (status, _, body) = self
            .http(
                "POST",
                "/jmap/api/",
                &[
                    ("Authorization", &basic(user)),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )
            .await;
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "{v}");
        v["methodResponses"].as_array().unwrap().clone()
    }

    async fn account_id(&self, user: &str) -> String {
        self.session(user).await["primaryAccounts"][MAIL]
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn email_state(&self, user: &str) -> String {
        let account = self.account_id(user).await;
        let r = self
            .api(
                user,
                json!([["Email/get", {"accountId": account, "ids": []}, "0"]]),
            )
            .await;
        r[0][1]["state"].as_str().unwrap().to_string()
    }

    async fn smtp(&self) -> Smtp {
        Smtp::connect(self.smtp).await
    }
}

/// An SMTP client session on the MX listener.
struct Smtp {
    r: BufReader<TcpStream>,
    n: u32,
}

impl Smtp {
    async fn connect(port: u16) -> Smtp {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut smtp = Smtp {
            r: BufReader::new(s),
            n: 0,
        };
        assert!(smtp.reply().await.starts_with("220"));
        smtp.cmd("EHLO client.example.org\r\n", "250").await;
        smtp
    }

    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).await.unwrap();
            assert!(n > 0, "SMTP connection closed");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str, expect: &str) -> String {
        self.r.get_mut().write_all(line.as_bytes()).await.unwrap();
        let reply = self.reply().await;
        assert!(reply.starts_with(expect), "{line:?} -> {reply:?}");
        reply
    }

    /// Delivers one message to `to`; returns when the 250 for its data
    /// has arrived.
    async fn deliver(&mut self, to: &str) -> Instant {
        self.n += 1;
        self.cmd("MAIL FROM:<sender@example.org>\r\n", "250").await;
        self.cmd(&format!("RCPT TO:<{to}>\r\n"), "250").await;
        self.cmd("DATA\r\n", "354").await;
        let msg = format!(
            "From: Sender <sender@example.org>\r\nTo: <{to}>\r\nSubject: push test {}\r\n\
             Message-ID: <push-{}-{}@example.org>\r\n\r\nHello.\r\n.\r\n",
            self.n,
            self.n,
            std::process::id()
        );
        self.cmd(&msg, "250").await;
        Instant::now()
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a JMAP WebSocket with Basic credentials and the `jmap`
/// subprotocol.
async fn ws_connect(tern: &Tern, user: &str) -> Ws {
    let url = tern.session(user).await["capabilities"]["urn:ietf:params:jmap:websocket"]["url"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(url, format!("ws://127.0.0.1:{}/jmap/ws", tern.jmap));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut().insert(
        "Authorization",
        HeaderValue::from_str(&basic(user)).unwrap(),
    );
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("jmap"));
    let (ws, response) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers()["sec-websocket-protocol"], "jmap");
    ws
}

/// The next JSON message within `wait` (pings and pongs skipped).
async fn ws_next(ws: &mut Ws, wait: Duration) -> Option<Value> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next()).await.ok()??;
        match msg.unwrap() {
            Message::Text(t) => return Some(serde_json::from_str(&t).unwrap()),
            Message::Close(f) => panic!("closed by the server: {f:?}"),
            _ => continue,
        }
    }
}

async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Sends a Core/echo request and waits for its response: everything sent
/// before it has been processed when this returns (StateChanges met on
/// the way are returned).
async fn ws_sync(ws: &mut Ws, id: &str) -> Vec<Value> {
    ws_send(
        ws,
        json!({"@type": "Request", "id": id, "using": [CORE],
               "methodCalls": [["Core/echo", {"ping": id}, "c"]]}),
    )
    .await;
    let mut other = Vec::new();
    loop {
        let m = ws_next(ws, Duration::from_secs(10))
            .await
            .expect("echo answered");
        if m["@type"] == "Response" && m["requestId"] == id {
            assert_eq!(m["methodResponses"][0][1]["ping"], id);
            return other;
        }
        other.push(m);
    }
}

/// Waits for a StateChange whose Email state for `account` is `state`;
/// returns it.
async fn ws_wait_email(ws: &mut Ws, account: &str, state: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let m = ws_next(ws, left)
            .await
            .unwrap_or_else(|| panic!("no StateChange with Email state {state}"));
        if m["@type"] == "StateChange" && m["changed"][account]["Email"] == state {
            return m;
        }
    }
}

/// One event of an event-source stream.
#[derive(Debug, Default, Clone)]
struct Event {
    event: String,
    id: Option<String>,
    data: String,
}

/// A raw event-source reader: an HTTP/1.1 GET whose chunked body is
/// parsed as `text/event-stream`.
struct EventStream {
    r: BufReader<TcpStream>,
    pending: String,
    ended: bool,
}

impl EventStream {
    async fn open(
        tern: &Tern,
        user: &str,
        query: &str,
        last_event_id: Option<&str>,
    ) -> EventStream {
        let s = TcpStream::connect(("127.0.0.1", tern.jmap)).await.unwrap();
        let mut r = BufReader::new(s);
        let mut req = format!(
            "GET /jmap/eventsource/?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {}\r\nAccept: text/event-stream\r\n",
            basic(user)
        );
        if let Some(id) = last_event_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        r.get_mut().write_all(req.as_bytes()).await.unwrap();
        let mut status = String::new();
        r.read_line(&mut status).await.unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            let (k, v) = line.split_once(':').unwrap();
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
        assert_eq!(headers["content-type"], "text/event-stream");
        assert_eq!(headers["transfer-encoding"], "chunked");
        EventStream {
            r,
            pending: String::new(),
            ended: false,
        }
    }

    /// The next event (an id-only block counts) within `wait`; `None` on
    /// timeout or at the end of the stream.
    async fn next(&mut self, wait: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut e = Event::default();
                for line in block.lines() {
                    match line.split_once(':') {
                        Some(("event", v)) => e.event = v.trim_start().to_string(),
                        Some(("id", v)) => e.id = Some(v.trim_start().to_string()),
                        Some(("data", v)) => e.data.push_str(v.trim_start()),
                        _ => {}
                    }
                }
                return Some(e);
            }
            if self.ended {
                return None;
            }
            let mut size = String::new();
            let n = tokio::time::timeout_at(deadline, self.r.read_line(&mut size))
                .await
                .ok()?
                .unwrap();
            if n == 0 {
                self.ended = true;
                continue;
            }
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                self.ended = true;
                continue;
            }
            let mut chunk = vec![0; size + 2];
            self.r.read_exact(&mut chunk).await.unwrap();
            self.pending
                .push_str(std::str::from_utf8(&chunk[..size]).unwrap());
        }
    }

    /// Waits for a `state` event.
    async fn next_state(&mut self, wait: Duration) -> Option<Event> {
        let deadline = Instant::now() + wait;
        loop {
            let e = self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await?;
            if e.event == "state" {
                return Some(e);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_push_reports_smtp_and_jmap_changes_and_resumes_with_push_state() {
    let mut tern = start("");
    let account = tern.account_id(ALICE).await;

    // Authentication as for HTTP: no credentials, no upgrade.
    let (status, headers, _) = tern
        .http(
            "GET",
            "/jmap/ws",
            &[
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("Sec-WebSocket-Protocol", "jmap"),
            ],
            b"",
        )
        .await;
    assert_eq!(status, 401);
    assert!(headers.contains_key("www-authenticate"));
    // Without the jmap subprotocol: refused.
    let (status, _, _) = tern
        .http(
            "GET",
            "/jmap/ws",
            &[
                ("Authorization", &basic(ALICE)),
                ("Upgrade", "websocket"),
                ("Connection", "Upgrade"),
                ("Sec-WebSocket-Version", "13"),
                ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            b"",
        )
        .await;
    assert_eq!(status, 400);

    let mut ws = ws_connect(&tern, ALICE).await;
    // Requests are processed like HTTP API requests.
    ws_send(
        &mut ws,
        json!({"@type": "Request", "id": "R1", "using": [CORE, MAIL],
               "methodCalls": [["Mailbox/get", {"accountId": account, "ids": null, "properties": ["role"]}, "m"]]}),
    )
    .await;
    let r = ws_next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(r["@type"], "Response");
    assert_eq!(r["requestId"], "R1");
    assert!(r["sessionState"].is_string());
    assert_eq!(r["methodResponses"][0][0], "Mailbox/get");
    assert!(
        !r["methodResponses"][0][1]["list"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    // Errors are RequestErrors in the protocol's terms.
    ws.send(Message::text("The quick brown fox")).await.unwrap();
    let e = ws_next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(e["@type"], "RequestError");
    assert_eq!(e["type"], "urn:ietf:params:jmap:error:notJSON");
    assert_eq!(e["status"], 400);
    assert_eq!(e["requestId"], Value::Null);
    ws_send(
        &mut ws,
        json!({"@type": "Request", "id": "R2", "using": ["urn:example:nope"], "methodCalls": []}),
    )
    .await;
    let e = ws_next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(e["@type"], "RequestError");
    assert_eq!(e["type"], "urn:ietf:params:jmap:error:unknownCapability");
    assert_eq!(e["requestId"], "R2");

    // Push: an SMTP delivery produces a StateChange with the new Email state.
    ws_send(
        &mut ws,
        json!({"@type": "WebSocketPushEnable", "dataTypes": null}),
    )
    .await;
    assert!(
        ws_sync(&mut ws, "sync1").await.is_empty(),
        "nothing changed yet"
    );
    let mut smtp = tern.smtp().await;
    smtp.deliver(ALICE).await;
    let email_state = tern.email_state(ALICE).await;
    let change = ws_wait_email(&mut ws, &account, &email_state).await;
    assert!(change["changed"][&account]["Mailbox"].is_string());
    assert!(change["changed"][&account]["EmailDelivery"].is_string());
    assert_eq!(
        change["changed"].as_object().unwrap().len(),
        1,
        "one account"
    );
    let push_state = change["pushState"].as_str().unwrap().to_string();

    // A change made over JMAP (HTTP) is pushed too: Mailbox only.
    let created = tern
        .api(
            ALICE,
            json!([["Mailbox/set", {"accountId": account, "create": {"n": {"name": "Pushed"}}}, "0"]]),
        )
        .await;
    let mailbox_state = created[0][1]["newState"].as_str().unwrap().to_string();
    let m = loop {
        let m = ws_next(&mut ws, Duration::from_secs(10))
            .await
            .expect("Mailbox StateChange");
        if m["@type"] == "StateChange" && m["changed"][&account]["Mailbox"] == mailbox_state {
            break m;
        }
    };
    assert!(m["changed"][&account].get("Email").is_none(), "{m}");
    let push_state_2 = m["pushState"].as_str().unwrap().to_string();
    assert_ne!(push_state, push_state_2);

    // Disconnect; mail arrives meanwhile.
    ws.close(None).await.unwrap();
    drop(ws);
    smtp.deliver(ALICE).await;
    smtp.deliver(ALICE).await;
    let missed_state = tern.email_state(ALICE).await;
    assert_ne!(missed_state, email_state);

    // Reconnecting with the last pushState: what was missed comes at once.
    let mut ws = ws_connect(&tern, ALICE).await;
    ws_send(
        &mut ws,
        json!({"@type": "WebSocketPushEnable", "dataTypes": ["Email"], "pushState": push_state_2}),
    )
    .await;
    let m = ws_next(&mut ws, Duration::from_secs(10))
        .await
        .expect("missed changes");
    assert_eq!(m["@type"], "StateChange");
    assert_eq!(
        m["changed"][&account],
        json!({"Email": missed_state}),
        "only the asked types"
    );
    let current = m["pushState"].as_str().unwrap().to_string();

    // With the current pushState nothing is sent until something changes.
    let mut ws2 = ws_connect(&tern, ALICE).await;
    ws_send(
        &mut ws2,
        json!({"@type": "WebSocketPushEnable", "dataTypes": ["Email"], "pushState": current}),
    )
    .await;
    assert!(ws_sync(&mut ws2, "sync2").await.is_empty());
    // WebSocketPushDisable stops pushes on one connection, not the other.
    ws_send(&mut ws, json!({"@type": "WebSocketPushDisable"})).await;
    assert!(ws_sync(&mut ws, "sync3").await.is_empty());
    smtp.deliver(ALICE).await;
    let latest = tern.email_state(ALICE).await;
    ws_wait_email(&mut ws2, &account, &latest).await;
    assert!(
        ws_sync(&mut ws, "sync4").await.is_empty(),
        "push was disabled on this connection"
    );

    // Keep-alive: the server answers pings.
    ws.send(Message::Ping(b"hi".to_vec().into())).await.unwrap();
    let pong = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Ok(Message::Pong(p))) = ws.next().await {
                return p;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(&pong[..], b"hi");
    drop((ws, ws2));
    tern.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_of_one_account_are_notified_and_other_accounts_are_not() {
    let tern = start("");
    let alice = tern.account_id(ALICE).await;
    let bob = tern.account_id(BOB).await;
    let mut alice_ws = Vec::new();
    for i in 0..8 {
        let mut ws = ws_connect(&tern, ALICE).await;
        ws_send(
            &mut ws,
            json!({"@type": "WebSocketPushEnable", "dataTypes": null}),
        )
        .await;
        ws_sync(&mut ws, &format!("a{i}")).await;
        alice_ws.push(ws);
    }
    let mut alice_es = Vec::new();
    for _ in 0..3 {
        let mut es = EventStream::open(&tern, ALICE, "types=*&closeafter=no&ping=0", None).await;
        let first = es.next(Duration::from_secs(10)).await.unwrap();
        assert!(first.id.is_some() && first.data.is_empty(), "{first:?}");
        alice_es.push(es);
    }
    let mut bob_ws = ws_connect(&tern, BOB).await;
    ws_send(
        &mut bob_ws,
        json!({"@type": "WebSocketPushEnable", "dataTypes": null}),
    )
    .await;
    ws_sync(&mut bob_ws, "b").await;
    let mut bob_es = EventStream::open(&tern, BOB, "types=*&closeafter=no&ping=0", None).await;
    bob_es.next(Duration::from_secs(10)).await.unwrap();

    let mut smtp = tern.smtp().await;
    smtp.deliver(ALICE).await;
    let state = tern.email_state(ALICE).await;
    for ws in &mut alice_ws {
        let m = ws_wait_email(ws, &alice, &state).await;
        assert!(m["changed"].get(&bob).is_none());
    }
    for es in &mut alice_es {
        let e = es
            .next_state(Duration::from_secs(10))
            .await
            .expect("state event");
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(data["@type"], "StateChange");
        assert_eq!(data["changed"][&alice]["Email"], state);
    }
    assert!(
        ws_sync(&mut bob_ws, "b2").await.is_empty(),
        "bob is not told of alice's mail"
    );
    assert!(
        bob_es
            .next_state(Duration::from_millis(300))
            .await
            .is_none()
    );

    // And bob is told of his own.
    smtp.deliver(BOB).await;
    let bob_state = tern.email_state(BOB).await;
    ws_wait_email(&mut bob_ws, &bob, &bob_state).await;
    let e = bob_es.next_state(Duration::from_secs(10)).await.unwrap();
    assert!(e.data.contains(&bob_state));
    for ws in &mut alice_ws {
        assert!(
            ws_sync(ws, "a-after").await.is_empty(),
            "alice is not told of bob's"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_source_follows_rfc8620_7_3() {
    let tern = start("");
    let account = tern.account_id(ALICE).await;
    // Only Email, pings every second.
    let mut es = EventStream::open(&tern, ALICE, "types=Email&closeafter=no&ping=1", None).await;
    let first = es.next(Duration::from_secs(10)).await.unwrap();
    let id0 = first
        .id
        .expect("the current push state as the first event id");
    let ping = es
        .next(Duration::from_secs(5))
        .await
        .expect("a ping within the interval");
    assert_eq!(ping.event, "ping");
    assert!(ping.id.is_none(), "pings set no event id");
    assert_eq!(
        serde_json::from_str::<Value>(&ping.data).unwrap(),
        json!({"interval": 1})
    );

    // A Mailbox-only change is not an Email change: no state event.
    tern.api(
        ALICE,
        json!([["Mailbox/set", {"accountId": account, "create": {"n": {"name": "Quiet"}}}, "0"]]),
    )
    .await;
    let mut smtp = tern.smtp().await;
    smtp.deliver(ALICE).await;
    let state = tern.email_state(ALICE).await;
    let e = es.next_state(Duration::from_secs(10)).await.unwrap();
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(
        data,
        json!({"@type": "StateChange", "changed": {&account: {"Email": state}}})
    );
    let id1 = e.id.expect("a state event carries the new event id");
    assert_ne!(id0, id1);
    drop(es);

    // closeafter=state (the long-poll fallback) with Last-Event-ID: what
    // was missed comes at once, then the response ends.
    smtp.deliver(ALICE).await;
    let state2 = tern.email_state(ALICE).await;
    let mut es =
        EventStream::open(&tern, ALICE, "types=*&closeafter=state&ping=0", Some(&id1)).await;
    let e = es.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(e.event, "state");
    let data: Value = serde_json::from_str(&e.data).unwrap();
    assert_eq!(data["changed"][&account]["Email"], state2);
    assert!(es.next(Duration::from_secs(5)).await.is_none());
    assert!(es.ended, "the stream ends after the state event");

    // closeafter=state without a Last-Event-ID waits for the next change.
    let mut es = EventStream::open(&tern, ALICE, "types=Email&closeafter=state&ping=0", None).await;
    let first = es.next(Duration::from_secs(10)).await.unwrap();
    assert!(first.event.is_empty() && first.id.is_some());
    smtp.deliver(ALICE).await;
    let e = es.next(Duration::from_secs(10)).await.unwrap();
    assert_eq!(e.event, "state");
    assert!(es.next(Duration::from_secs(5)).await.is_none());

    // A bad closeafter is a 400.
    let (status, _, _) = tern
        .http(
            "GET",
            "/jmap/eventsource/?types=*&closeafter=maybe&ping=0",
            &[("Authorization", &basic(ALICE))],
            b"",
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_deliveries_coalesces_into_few_state_changes() {
    // A 100 ms window makes the bound independent of machine speed.
    let tern = start("[jmap.push]\ncoalesce_ms = 100\n");
    let account = tern.account_id(ALICE).await;
    let mut ws = ws_connect(&tern, ALICE).await;
    ws_send(
        &mut ws,
        json!({"@type": "WebSocketPushEnable", "dataTypes": ["Email"]}),
    )
    .await;
    ws_sync(&mut ws, "s").await;
    let connections = 8;
    let per = 25;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let port = tern.smtp;
        tasks.push(tokio::spawn(async move {
            let mut smtp = Smtp::connect(port).await;
            for _ in 0..per {
                smtp.deliver(ALICE).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = started.elapsed();
    let final_state = tern.email_state(ALICE).await;
    let mut changes = 0;
    loop {
        let m = ws_next(&mut ws, Duration::from_secs(10))
            .await
            .expect("the final state is pushed");
        assert_eq!(m["@type"], "StateChange");
        changes += 1;
        if m["changed"][&account]["Email"] == final_state {
            break;
        }
    }
    let deliveries = connections * per;
    let bound = elapsed.as_millis() as usize / 100 + 3;
    println!("{deliveries} deliveries in {elapsed:?} -> {changes} StateChanges");
    assert!(
        changes <= bound,
        "{changes} StateChanges for {deliveries} deliveries in {elapsed:?}"
    );
    assert!(changes < deliveries / 4);
    // Nothing else trails behind.
    assert!(ws_sync(&mut ws, "after").await.is_empty());
}

/// The next item of a stream, within 10 seconds.
async fn next_item<S: futures_util::Stream + Unpin>(s: &mut S) -> S::Item {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("a message in time")
        .expect("the stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmap_client_websocket_gets_responses_and_state_changes() {
    use jmap_client::client::{Client, Credentials};
    use jmap_client::client_ws::WebSocketMessage;
    use jmap_client::{DataType, PushObject};
    let tern = start("");
    let client = Client::new()
        .credentials(Credentials::basic(ALICE, PASSWORD))
        .timeout(Duration::from_secs(30))
        .connect(&format!("http://127.0.0.1:{}", tern.jmap))
        .await
        .unwrap();
    let account = client.default_account_id().to_string();
    let mut stream = client.connect_ws().await.unwrap();
    let mut request = client.build();
    request.get_mailbox();
    let request_id = client.send_ws(request).await.unwrap();
    match next_item(&mut stream).await.unwrap() {
        WebSocketMessage::Response(r) => {
            assert_eq!(r.request_id(), Some(request_id.as_str()));
            assert!(!r.method_responses().is_empty());
        }
        other => panic!("expected a response, got {other:?}"),
    }
    client
        .enable_push_ws(Some([DataType::Email, DataType::Mailbox]), None::<String>)
        .await
        .unwrap();
    // Make sure the enable was processed before mail arrives.
    let mut request = client.build();
    request.get_mailbox();
    client.send_ws(request).await.unwrap();
    assert!(matches!(
        next_item(&mut stream).await.unwrap(),
        WebSocketMessage::Response(_)
    ));
    tern.smtp().await.deliver(ALICE).await;
    let state = tern.email_state(ALICE).await;
    loop {
        match next_item(&mut stream).await.unwrap() {
            WebSocketMessage::PushNotification(PushObject::StateChange { changed }) => {
                let types = &changed[&account];
                if types.get(&DataType::Email) == Some(&state) {
                    assert!(types.contains_key(&DataType::Mailbox));
                    assert!(!types.contains_key(&DataType::Thread), "not asked for");
                    break;
                }
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_limits_and_shutdown_close_cleanly() {
    let mut tern = start("[jmap]\nmax_request_size = 4096\n");
    // A message over maxSizeRequest closes the connection with 1009.
    let mut ws = ws_connect(&tern, ALICE).await;
    let big = format!(
        r#"{{"@type":"Request","id":"big","using":[],"methodCalls":[],"pad":"{}"}}"#,
        "x".repeat(8000)
    );
    ws.send(Message::text(big)).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f,
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed.unwrap().code, CloseCode::Size);

    // At shutdown every connection gets a close frame (1001).
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut ws = ws_connect(&tern, ALICE).await;
        ws_sync(&mut ws, "x").await;
        clients.push(ws);
    }
    let stopper = std::thread::spawn(move || tern.stop());
    for mut ws in clients {
        let frame = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => return f,
                    Some(Ok(_)) => continue,
                    other => panic!("connection ended without a close frame: {other:?}"),
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(frame.unwrap().code, CloseCode::Away);
    }
    stopper.join().unwrap();
}

/// An HTTPS server standing in for a push service: records what it is
/// sent; `/push/fail` answers 500, `/push/gone` 410, `/push/flaky` 503
/// to its first two requests, everything else 201.
struct PushTarget {
    port: u16,
    received: tokio::sync::mpsc::UnboundedReceiver<(String, HashMap<String, String>, Value)>,
    /// Holds `push-ca.pem`, its certificate.
    dir: tempfile::TempDir,
}

/// A server whose push sender trusts a [`PushTarget`] (a private address,
/// quick retries, three failures at most), and the target.
async fn start_with_push_target() -> (Tern, PushTarget) {
    let target = push_target().await;
    let tern = start(&format!(
        "[jmap.push]\nca_files = [{:?}]\nallow_private_addresses = true\nretry_initial_ms = 50\nretry_max = 1\nmax_failures = 3\n",
        target.dir.path().join("push-ca.pem")
    ));
    (tern, target)
}

async fn push_target() -> PushTarget {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("push-ca.pem");
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let key = PrivateKeyDer::from_pem_slice(cert.signing_key.serialize_pem().as_bytes()).unwrap();
    let chain = vec![CertificateDer::from_pem_slice(cert.cert.pem().as_bytes()).unwrap()];
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, received) = tokio::sync::mpsc::unbounded_channel();
    let flaky = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let mut r = BufReader::new(tls);
                let mut request_line = String::new();
                r.read_line(&mut request_line).await.unwrap();
                let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
                let mut headers = HashMap::new();
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).await.unwrap();
                    if line == "\r\n" || line.is_empty() {
                        break;
                    }
                    let (k, v) = line.split_once(':').unwrap();
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
                let len: usize = headers["content-length"].parse().unwrap();
                let mut body = vec![0; len];
                r.read_exact(&mut body).await.unwrap();
                let status = if path.starts_with("/push/fail") {
                    "500 Internal Server Error"
                } else if path.starts_with("/push/gone") {
                    "410 Gone"
                } else if path.starts_with("/push/flaky")
                    && flaky.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2
                {
                    "503 Service Unavailable"
                } else {
                    "201 Created"
                };
                let reply =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                r.get_mut().write_all(reply.as_bytes()).await.unwrap();
                let _ = r.get_mut().shutdown().await;
                let _ = tx.send((path, headers, serde_json::from_slice(&body).unwrap()));
            });
        }
    });
    PushTarget {
        port,
        received,
        dir,
    }
}

impl PushTarget {
    async fn next(&mut self, wait: Duration) -> Option<(String, HashMap<String, String>, Value)> {
        tokio::time::timeout(wait, self.received.recv())
            .await
            .ok()?
    }

    /// The next body POSTed to `path` within `wait` (posts to other paths
    /// are skipped).
    async fn next_to(&mut self, path: &str, wait: Duration) -> Option<Value> {
        let deadline = Instant::now() + wait;
        loop {
            let (p, _, body) = self
                .next(deadline.saturating_duration_since(Instant::now()))
                .await?;
            if p == path {
                return Some(body);
            }
        }
    }

    /// Every body POSTed to `path` until nothing has come for `quiet`.
    async fn all_to(&mut self, path: &str, quiet: Duration) -> Vec<Value> {
        let mut out = Vec::new();
        while let Some((p, _, body)) = self.next(quiet).await {
            if p == path {
                out.push(body);
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_subscriptions_verify_deliver_over_https_and_drop_failing_urls() {
    let (tern, mut target) = start_with_push_target().await;
    let account = tern.account_id(ALICE).await;
    let url = format!("https://localhost:{}/push/ok", target.port);

    // Refused: plain http, encryption keys (RFC 8291 is not implemented).
    let r = tern
        .api(
            ALICE,
            json!([["PushSubscription/set", {"create": {
                "h": {"deviceClientId": "dev1", "url": format!("http://localhost:{}/x", target.port)},
                "k": {"deviceClientId": "dev1", "url": url, "keys": {"p256dh": "BNcR", "auth": "tBHI"}}
            }}, "0"]]),
        )
        .await;
    assert_eq!(r[0][1]["notCreated"]["h"]["type"], "invalidProperties");
    assert_eq!(r[0][1]["notCreated"]["h"]["properties"], json!(["url"]));
    assert_eq!(r[0][1]["notCreated"]["k"]["properties"], json!(["keys"]));

    let far = "2099-01-01T00:00:00Z";
    let r = tern
        .api(
            ALICE,
            json!([["PushSubscription/set", {"create": {
                "s": {"deviceClientId": "dev1", "url": url, "types": ["Email"], "expires": far}
            }}, "0"]]),
        )
        .await;
    let created = &r[0][1]["created"]["s"];
    let id = created["id"].as_str().expect("created").to_string();
    assert!(r[0][1].get("accountId").is_none() && r[0][1].get("newState").is_none());
    let expires = created["expires"].as_str().unwrap();
    assert!(
        expires < far,
        "the expiry is shortened to the server's limit: {expires}"
    );

    // The PushVerification arrives at the URL.
    let (path, headers, body) = target
        .next(Duration::from_secs(10))
        .await
        .expect("verification");
    assert_eq!(path, "/push/ok");
    assert!(headers["content-type"].starts_with("application/json"));
    assert!(headers.contains_key("ttl"), "RFC 8030 TTL header");
    assert_eq!(body["@type"], "PushVerification");
    assert_eq!(body["pushSubscriptionId"], id);
    let code = body["verificationCode"].as_str().unwrap().to_string();
    assert!(code.len() >= 32);

    // Nothing is pushed before verification.
    let mut smtp = tern.smtp().await;
    smtp.deliver(ALICE).await;
    assert!(target.next(Duration::from_millis(500)).await.is_none());

    let r = tern
        .api(
            ALICE,
            json!([["PushSubscription/set", {"update": {&id: {"verificationCode": "guess"}}}, "0"]]),
        )
        .await;
    assert_eq!(r[0][1]["notUpdated"][&id]["type"], "invalidProperties");
    let r = tern
        .api(
            ALICE,
            json!([["PushSubscription/set", {"update": {&id: {"verificationCode": code}}}, "0"]]),
        )
        .await;
    assert!(r[0][1]["updated"].get(&id).is_some(), "{r:?}");

    // /get never shows url or keys, and refuses to.
    let r = tern
        .api(ALICE, json!([["PushSubscription/get", {"ids": null}, "0"], ["PushSubscription/get", {"properties": ["url"]}, "1"]]))
        .await;
    let list = r[0][1]["list"].as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], id);
    assert_eq!(list[0]["deviceClientId"], "dev1");
    assert_eq!(list[0]["verificationCode"], code);
    assert!(list[0].get("url").is_none() && list[0].get("keys").is_none());
    assert_eq!(r[1][0], "error");
    assert_eq!(r[1][1]["type"], "forbidden");
    // Bob does not see alice's subscriptions.
    let r = tern
        .api(BOB, json!([["PushSubscription/get", {}, "0"]]))
        .await;
    assert_eq!(r[0][1]["list"], json!([]));

    // Now a delivery is POSTed as a StateChange.
    smtp.deliver(ALICE).await;
    let state = tern.email_state(ALICE).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (path, _, body) = target
            .next(deadline.saturating_duration_since(Instant::now()))
            .await
            .expect("a StateChange POST");
        assert_eq!(path, "/push/ok");
        assert_eq!(body["@type"], "StateChange");
        assert_eq!(
            body["changed"][&account].as_object().unwrap().len(),
            1,
            "types: Email only"
        );
        if body["changed"][&account]["Email"] == state {
            break;
        }
    }

    // A URL that keeps failing is dropped after max_failures attempts.
    let fail = format!("https://localhost:{}/push/fail", target.port);
    let r = tern
        .api(
            ALICE,
            json!([["PushSubscription/set", {"create": {"f": {"deviceClientId": "dev2", "url": fail}}}, "0"]]),
        )
        .await;
    let fail_id = r[0][1]["created"]["f"]["id"].as_str().unwrap().to_string();
    let mut attempts = 0;
    while let Some((path, _, _)) = target.next(Duration::from_secs(3)).await {
        assert_eq!(path, "/push/fail");
        attempts += 1;
    }
    assert_eq!(attempts, 3);
    let r = tern
        .api(
            ALICE,
            json!([["PushSubscription/get", {"ids": [fail_id]}, "0"]]),
        )
        .await;
    assert_eq!(r[0][1]["notFound"], json!([fail_id]), "removed");

    // Destroyed: no more pushes.
    let r = tern
        .api(
            ALICE,
            json!([["PushSubscription/set", {"destroy": [id]}, "0"]]),
        )
        .await;
    assert_eq!(r[0][1]["destroyed"], json!([id]));
    smtp.deliver(ALICE).await;
    assert!(target.next(Duration::from_millis(500)).await.is_none());
}

/// A UTCDate `secs` seconds from now.
fn utc_in(secs: i64) -> String {
    tern_store::dates::utc_date(tern_store::now() + secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_subscriptions_are_retried_and_removed_when_gone_or_expired() {
    let (tern, mut target) = start_with_push_target().await;
    let account = tern.account_id(ALICE).await;
    let port = target.port;
    let create = |name: &str, path: &str, expires: Option<String>| {
        let mut sub =
            json!({"deviceClientId": name, "url": format!("https://localhost:{port}{path}")});
        if let Some(e) = expires {
            sub["expires"] = json!(e);
        }
        json!([["PushSubscription/set", {"create": {name: sub}}, "0"]])
    };
    let get = |id: &str| json!([["PushSubscription/get", {"ids": [id]}, "0"]]);
    let verify = |id: &str, code: &str| json!([["PushSubscription/set", {"update": {id: {"verificationCode": code}}}, "0"]]);
    let wait = Duration::from_secs(10);

    // A push service that fails twice, then accepts: the verification
    // arrives on the third attempt and the subscription stays.
    let r = tern.api(ALICE, create("flaky", "/push/flaky", None)).await;
    let flaky = r[0][1]["created"]["flaky"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let attempts = target.all_to("/push/flaky", Duration::from_secs(3)).await;
    assert_eq!(attempts.len(), 3, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|b| b["@type"] == "PushVerification" && b["pushSubscriptionId"] == flaky)
    );
    let code = attempts[2]["verificationCode"]
        .as_str()
        .unwrap()
        .to_string();
    let r = tern.api(ALICE, get(&flaky)).await;
    assert_eq!(r[0][1]["list"][0]["id"], flaky, "kept after a success");
    let r = tern.api(ALICE, verify(&flaky, &code)).await;
    assert!(r[0][1]["updated"].get(&flaky).is_some(), "{r:?}");
    tern.smtp().await.deliver(ALICE).await;
    let state = tern.email_state(ALICE).await;
    loop {
        let body = target
            .next_to("/push/flaky", wait)
            .await
            .expect("a StateChange for the verified subscription");
        if body["changed"][&account]["Email"] == state {
            break;
        }
    }

    // 410 Gone: removed after the first answer, never retried.
    let r = tern.api(ALICE, create("gone", "/push/gone", None)).await;
    let gone = r[0][1]["created"]["gone"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let posts = target.all_to("/push/gone", Duration::from_secs(3)).await;
    assert_eq!(posts.len(), 1, "not retried: {posts:?}");
    let r = tern.api(ALICE, get(&gone)).await;
    assert_eq!(r[0][1]["notFound"], json!([gone]), "removed");

    // Expiry: a subscription is removed when it expires.
    let r = tern
        .api(ALICE, create("brief", "/push/ok", Some(utc_in(6))))
        .await;
    let brief = r[0][1]["created"]["brief"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let body = target
        .next_to("/push/ok", wait)
        .await
        .expect("verification");
    let code = body["verificationCode"].as_str().unwrap().to_string();
    let r = tern.api(ALICE, verify(&brief, &code)).await;
    assert!(r[0][1]["updated"].get(&brief).is_some(), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = tern.api(ALICE, get(&brief)).await;
        if r[0][1]["notFound"] == json!([brief]) {
            break;
        }
        assert_eq!(r[0][1]["list"][0]["id"], brief);
        assert!(Instant::now() < deadline, "not removed at expiry: {r:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Only the live subscription hears of new mail now.
    target.all_to("/push/ok", Duration::from_millis(500)).await;
    tern.smtp().await.deliver(ALICE).await;
    let state = tern.email_state(ALICE).await;
    loop {
        let body = target
            .next_to("/push/flaky", wait)
            .await
            .expect("the live subscription's StateChange");
        if body["changed"][&account]["Email"] == state {
            break;
        }
    }
    assert_eq!(
        target.all_to("/push/ok", Duration::from_secs(1)).await,
        Vec::<Value>::new(),
        "nothing is pushed to an expired subscription"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_pings_websocket_clients_and_drops_silent_ones() {
    // Pings every second; a client not heard from in three intervals goes.
    let tern = start("[jmap.push]\nwebsocket_ping = 1\n");
    let mut silent = ws_connect(&tern, ALICE).await;
    let mut live = ws_connect(&tern, ALICE).await;
    // The live client reads (tungstenite answers each ping with a pong);
    // the silent one does not read, so it answers nothing.
    let mut pings = 0;
    let until = Instant::now() + Duration::from_secs(5);
    while let Ok(m) = tokio::time::timeout_at(until.into(), live.next()).await {
        match m {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(_)) => {}
            other => panic!("the live client was dropped: {other:?}"),
        }
    }
    assert!(pings >= 3, "{pings} pings in 5 s");
    // Still served.
    assert_eq!(ws_sync(&mut live, "still-here").await, Vec::<Value>::new());
    // The silent one was pinged, then dropped.
    let mut silent_pings = 0;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match silent.next().await {
                Some(Ok(Message::Ping(_))) => silent_pings += 1,
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(other)) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent client is still connected");
    assert!(silent_pings >= 1, "it was pinged first");
}
