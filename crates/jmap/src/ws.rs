//! JMAP over WebSocket (RFC 8887).
//!
//! The client upgrades an authenticated HTTP/1.1 GET of [`PATH`] with the
//! `jmap` subprotocol. On the connection it sends text messages:
//! `Request` objects (processed by the same dispatcher as the HTTP API,
//! [`crate::api::process`], concurrently up to `maxConcurrentRequests`,
//! answered by `Response` or `RequestError` objects carrying the request's
//! `id` as `requestId`), and `WebSocketPushEnable` / `WebSocketPushDisable`.
//! With push enabled the server sends `StateChange` objects with a
//! `pushState`; a client that reconnects and enables push with the last
//! `pushState` it saw is sent what it missed at once.
//!
//! The server pings every [`crate::PushConfig::websocket_ping`] and drops
//! a client it has not heard from in three intervals. Messages are
//! bounded by `maxSizeRequest` (a larger one closes the connection with
//! 1009). At shutdown every connection is closed with 1001.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::Upgraded;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::auth::Principal;
use crate::http::{Inner, ResponseBody, full};
use crate::notify::{AccountState, Filter, Listener, state_change};
use crate::problem::Problem;
use crate::push::ConnectionGuard;

/// The WebSocket endpoint's path (under the base URL's path).
pub const PATH: &str = "/jmap/ws";
/// `urn:ietf:params:jmap:websocket` (RFC 8887 section 4.1).
pub const CAPABILITY: &str = "urn:ietf:params:jmap:websocket";
/// The subprotocol a client must offer.
pub const SUBPROTOCOL: &str = "jmap";

/// Bytes read from the socket at a time: small, so that idle connections
/// cost little memory (a message of any allowed size still arrives, in
/// more reads).
const READ_BUFFER: usize = 4096;

/// How long a closing connection waits for the client's close frame.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// The WebSocket URL for a base URL: `ws://` for `http://`, `wss://` for
/// `https://`.
pub fn url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else {
        base.to_string()
    };
    format!("{rest}{PATH}")
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn refuse(
    status: StatusCode,
    detail: &str,
    extra: &[(header::HeaderName, &'static str)],
) -> Response<ResponseBody> {
    let p = Problem::http(status, detail);
    let mut r = Response::new(full(p.to_json().to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    for (name, value) in extra {
        r.headers_mut()
            .insert(name.clone(), HeaderValue::from_static(value));
    }
    r
}

/// Answers a WebSocket upgrade request of an authenticated `principal`:
/// `101 Switching Protocols` and a task serving the connection, or the
/// reason it cannot be one.
pub(crate) fn upgrade<B>(
    inner: Arc<Inner>,
    principal: Principal,
    mut req: Request<B>,
) -> Response<ResponseBody> {
    let h = req.headers();
    if req.version() != Version::HTTP_11
        || !has_token(h, header::UPGRADE, "websocket")
        || !has_token(h, header::CONNECTION, "upgrade")
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "this is the JMAP WebSocket endpoint (RFC 8887): upgrade an HTTP/1.1 GET to websocket",
            &[
                (header::UPGRADE, "websocket"),
                (header::CONNECTION, "Upgrade"),
            ],
        );
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return refuse(
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket version 13 is required",
            &[(header::SEC_WEBSOCKET_VERSION, "13")],
        );
    }
    let Some(key) = h.get(header::SEC_WEBSOCKET_KEY) else {
        return refuse(StatusCode::BAD_REQUEST, "Sec-WebSocket-Key is missing", &[]);
    };
    if !has_token(h, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        return refuse(
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol must be jmap (Sec-WebSocket-Protocol: jmap)",
            &[],
        );
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let guard = inner.push.connection();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => serve(inner, principal, upgraded, guard).await,
            Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
        }
    });
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    r
}

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// A processed request: its `requestId` and the Response or problem.
type Done = (Value, Result<Value, Problem>);

/// What one client message asks of the connection.
#[derive(Debug, PartialEq)]
enum Incoming {
    /// A JMAP request: its id (or null) and the text to process.
    Request(Value),
    /// WebSocketPushEnable.
    PushEnable {
        types: Option<Vec<String>>,
        push_state: Option<String>,
    },
    /// WebSocketPushDisable.
    PushDisable,
    /// A message to answer with a RequestError at once.
    Error(Value, Problem),
}

/// Classifies a text message (RFC 8887 section 4.3).
fn classify(text: &str) -> Incoming {
    let value = match crate::json::parse(text.as_bytes()) {
        Ok(v) => v,
        Err(e) => return Incoming::Error(Value::Null, Problem::not_json(e.0)),
    };
    let Value::Object(obj) = value else {
        return Incoming::Error(
            Value::Null,
            Problem::not_request("a JMAP WebSocket message is a JSON object"),
        );
    };
    let id = match obj.get("id") {
        None | Some(Value::Null) => Value::Null,
        Some(Value::String(s)) => json!(s),
        Some(_) => {
            return Incoming::Error(Value::Null, Problem::not_request("id must be a string"));
        }
    };
    match obj.get("@type").and_then(Value::as_str) {
        Some("Request") => Incoming::Request(id),
        Some("WebSocketPushEnable") => {
            let types = match obj.get("dataTypes") {
                None | Some(Value::Null) => None,
                Some(Value::Array(a)) if a.iter().all(Value::is_string) => Some(
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect(),
                ),
                Some(_) => {
                    return Incoming::Error(
                        id,
                        Problem::not_request("dataTypes must be null or an array of type names"),
                    );
                }
            };
            let push_state = match obj.get("pushState") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(_) => {
                    return Incoming::Error(id, Problem::not_request("pushState must be a string"));
                }
            };
            Incoming::PushEnable { types, push_state }
        }
        Some("WebSocketPushDisable") => Incoming::PushDisable,
        Some(other) => Incoming::Error(
            id,
            Problem::not_request(format!("unknown message @type {other:?}")),
        ),
        None => Incoming::Error(id, Problem::not_request("the message has no @type")),
    }
}

/// The message answering a processed request: a Response (with the
/// request's id as `requestId` when it had one) or a RequestError (with
/// `requestId`, null when unknown).
fn answer(request_id: Value, result: Result<Value, Problem>) -> Value {
    let is_error = result.is_err();
    let mut out = match result {
        Ok(Value::Object(m)) => {
            let mut m = m;
            m.insert("@type".into(), json!("Response"));
            m
        }
        Ok(other) => {
            tracing::error!(?other, "the API returned a non-object response");
            return answer(
                request_id,
                Err(Problem::http(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "server error",
                )),
            );
        }
        Err(p) => request_error(&p),
    };
    if is_error || !request_id.is_null() {
        out.insert("requestId".into(), request_id);
    }
    Value::Object(out)
}

fn request_error(p: &Problem) -> Map<String, Value> {
    let mut m = match p.to_json() {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    m.insert("@type".into(), json!("RequestError"));
    m
}

async fn send(ws: &mut Socket, value: &Value) -> bool {
    ws.send(Message::text(value.to_string())).await.is_ok()
}

/// Sends a close frame and waits (briefly) for the client's.
async fn close(ws: &mut Socket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    };
    let _ = tokio::time::timeout(CLOSE_WAIT, async {
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// The push side of a connection: what the client listens to.
struct Push {
    listener: Listener,
    filter: Filter,
}

impl Push {
    /// The StateChange message for the newest state, if the client
    /// should get one.
    fn message(&mut self) -> Option<Value> {
        let state = self.listener.borrow_and_update().clone()?;
        self.state_change(&state)
    }

    fn state_change(&mut self, state: &AccountState) -> Option<Value> {
        let changed = self.filter.changes(state)?;
        let mut obj = state_change(state.account, changed);
        obj.insert("pushState".into(), json!(state.push_state()));
        Some(Value::Object(obj))
    }
}

async fn push_changed(push: &mut Option<Push>) -> bool {
    match push {
        Some(p) => p.listener.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

async fn serve(
    inner: Arc<Inner>,
    principal: Principal,
    upgraded: Upgraded,
    _guard: ConnectionGuard,
) {
    let limits = inner.config.limits.clone();
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(limits.max_size_request))
        .max_frame_size(Some(limits.max_size_request));
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
    let session_state =
        crate::session::session_state(&crate::session::session(&principal, &limits, &inner.base));
    let account = principal.account;
    let principal = Arc::new(principal);
    let session_state: Arc<str> = session_state.into();
    let mut shutdown = inner.shutdown_rx();
    let ping_every = inner.push.config.websocket_ping;
    let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
    let mut last_heard = Instant::now();
    let max_inflight = limits.max_concurrent_requests.max(1);
    let mut requests: JoinSet<Done> = JoinSet::new();
    let mut push: Option<Push> = None;
    if *shutdown.borrow() {
        close(&mut ws, CloseCode::Away, "server shutting down").await;
        return;
    }
    loop {
        tokio::select! {
            msg = ws.next(), if requests.len() < max_inflight => {
                let msg = match msg {
                    None => return,
                    Some(Ok(m)) => m,
                    Some(Err(tungstenite::Error::Capacity(_))) => {
                        close(&mut ws, CloseCode::Size, "message larger than maxSizeRequest").await;
                        return;
                    }
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "WebSocket read failed");
                        return;
                    }
                };
                last_heard = Instant::now();
                match msg {
                    Message::Text(text) => match classify(&text) {
                        Incoming::Request(id) => {
                            let inner = inner.clone();
                            let principal = principal.clone();
                            let session_state = session_state.clone();
                            requests.spawn_blocking(move || {
                                let result = crate::api::process(
                                    &inner.store,
                                    &inner.config.limits,
                                    &principal,
                                    &session_state,
                                    text.as_bytes(),
                                );
                                (id, result)
                            });
                        }
                        Incoming::PushEnable { types, push_state } => {
                            let since = push_state.as_deref().and_then(crate::id::parse_state);
                            let filter = Filter::new(
                                types.as_ref().map(|t| t.iter().map(String::as_str)),
                                since,
                            );
                            let listener = inner.push.notifier.subscribe(account);
                            let mut p = Push { listener, filter };
                            if !p.filter.has_baseline() {
                                // Changes from now on: read the states now
                                // rather than wait for the notifier's first.
                                let store = inner.store.clone();
                                match tokio::task::spawn_blocking(move || AccountState::read(&store, account)).await {
                                    Ok(Ok(state)) => {
                                        p.filter.changes(&state);
                                    }
                                    _ => {
                                        let problem = Problem::http(StatusCode::SERVICE_UNAVAILABLE, "cannot enable push now; try again");
                                        if !send(&mut ws, &answer(Value::Null, Err(problem))).await {
                                            return;
                                        }
                                        continue;
                                    }
                                }
                            }
                            if let Some(m) = p.message()
                                && !send(&mut ws, &m).await
                            {
                                return;
                            }
                            push = Some(p);
                        }
                        Incoming::PushDisable => push = None,
                        Incoming::Error(id, p) => {
                            if !send(&mut ws, &answer(id, Err(p))).await {
                                return;
                            }
                        }
                    },
                    Message::Binary(_) => {
                        let p = Problem::not_json("JMAP messages are UTF-8 JSON in text frames");
                        if !send(&mut ws, &answer(Value::Null, Err(p))).await {
                            return;
                        }
                    }
                    // tungstenite queues the pong; send it now.
                    Message::Ping(_) => {
                        if ws.flush().await.is_err() {
                            return;
                        }
                    }
                    Message::Close(_) => {
                        // The reply was queued by tungstenite; flush it.
                        let _ = tokio::time::timeout(CLOSE_WAIT, ws.flush()).await;
                        return;
                    }
                    Message::Pong(_) | Message::Frame(_) => {}
                }
            }
            Some(done) = requests.join_next(), if !requests.is_empty() => {
                let message = match done {
                    Ok((id, result)) => answer(id, result),
                    Err(e) => {
                        tracing::error!(error = %e, "WebSocket request task failed");
                        answer(Value::Null, Err(Problem::http(StatusCode::INTERNAL_SERVER_ERROR, "server error")))
                    }
                };
                if !send(&mut ws, &message).await {
                    return;
                }
            }
            alive = push_changed(&mut push) => {
                if !alive {
                    push = None;
                    continue;
                }
                if let Some(m) = push.as_mut().and_then(Push::message)
                    && !send(&mut ws, &m).await
                {
                    return;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > ping_every * 3 {
                    tracing::debug!("WebSocket client silent; dropping it");
                    return;
                }
                if ws.send(Message::Ping(Bytes::new())).await.is_err() {
                    return;
                }
            }
            _ = shutdown.changed() => {
                // Answer what is being processed, then say goodbye.
                while let Some(done) = requests.join_next().await {
                    if let Ok((id, result)) = done
                        && !send(&mut ws, &answer(id, result)).await
                    {
                        return;
                    }
                }
                close(&mut ws, CloseCode::Away, "server shutting down").await;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_url_follows_the_base_url_scheme() {
        assert_eq!(url("http://127.0.0.1:8080"), "ws://127.0.0.1:8080/jmap/ws");
        assert_eq!(
            url("https://mail.example.com/prefix/"),
            "wss://mail.example.com/prefix/jmap/ws"
        );
    }

    #[test]
    fn messages_are_classified_per_rfc8887_4_3() {
        assert_eq!(
            classify(r#"{"@type":"Request","id":"R1","using":[],"methodCalls":[]}"#),
            Incoming::Request(json!("R1"))
        );
        assert_eq!(
            classify(r#"{"@type":"Request","using":[],"methodCalls":[]}"#),
            Incoming::Request(Value::Null)
        );
        assert_eq!(
            classify(r#"{"@type":"WebSocketPushEnable","dataTypes":["Email"],"pushState":"7"}"#),
            Incoming::PushEnable {
                types: Some(vec!["Email".into()]),
                push_state: Some("7".into())
            }
        );
        assert_eq!(
            classify(r#"{"@type":"WebSocketPushEnable","dataTypes":null}"#),
            Incoming::PushEnable {
                types: None,
                push_state: None
            }
        );
        assert_eq!(
            classify(r#"{"@type":"WebSocketPushDisable"}"#),
            Incoming::PushDisable
        );
        let kind = |m: Incoming| match m {
            Incoming::Error(id, p) => (id, p.to_json()["type"].clone()),
            other => panic!("not an error: {other:?}"),
        };
        assert_eq!(
            kind(classify("The quick brown fox")),
            (Value::Null, json!("urn:ietf:params:jmap:error:notJSON"))
        );
        assert_eq!(
            kind(classify(r#"{"@type":"Nonsense","id":"x"}"#)),
            (json!("x"), json!("urn:ietf:params:jmap:error:notRequest"))
        );
        assert_eq!(
            kind(classify(r#"[1,2]"#)).1,
            json!("urn:ietf:params:jmap:error:notRequest")
        );
    }

    #[test]
    fn answers_carry_type_and_request_id() {
        let ok = answer(
            json!("R1"),
            Ok(json!({"methodResponses": [], "sessionState": "s"})),
        );
        assert_eq!(ok["@type"], "Response");
        assert_eq!(ok["requestId"], "R1");
        let err = answer(Value::Null, Err(Problem::not_json("bad")));
        assert_eq!(err["@type"], "RequestError");
        assert_eq!(err["type"], "urn:ietf:params:jmap:error:notJSON");
        assert_eq!(err["status"], 400);
        assert_eq!(err.get("requestId"), Some(&Value::Null));
        let ok = answer(Value::Null, Ok(json!({"methodResponses": []})));
        assert!(ok.get("requestId").is_none());
    }
}
