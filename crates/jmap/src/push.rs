//! Push (RFC 8620 section 7): the configuration, the per-server push
//! runtime, and the event source (section 7.3), a `text/event-stream`
//! that pushes a StateChange whenever a committed change moves one of the
//! requested types' states.
//!
//! Every push channel — event source, WebSocket ([`crate::ws`]), push
//! subscription (`crate::push_delivery`) — listens to the account's
//! notifier (`crate::notify`), which is driven by a store watch, so a
//! change notifies whoever wrote it. Event ids are push states (the
//! account's change counter), so a client reconnecting with
//! `Last-Event-ID` is sent what it missed at once.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use serde_json::{Value, json};
use tern_store::{AccountId, MailStore};
use tokio::sync::{mpsc, watch};

use crate::auth::Principal;
use crate::http::{ChannelBody, Inner, ResponseBody, full, query_param};
use crate::notify::{Filter, Notifier, state_change};
use crate::problem::Problem;

/// Push settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// During a burst of changes to one account, the shortest time between
    /// two notifications (the first change after a quiet spell is pushed at
    /// once).
    pub coalesce: Duration,
    /// How often the server pings a WebSocket client; a client silent for
    /// three intervals is disconnected.
    pub websocket_ping: Duration,
    /// PEM files of certificate authorities trusted for push URLs besides
    /// the system's.
    pub extra_roots: Vec<PathBuf>,
    /// Whether push URLs may resolve to loopback, private or link-local
    /// addresses. Off, a push subscription cannot probe the server's own
    /// network (RFC 8620 section 8.6).
    pub allow_private_addresses: bool,
    /// The wait before the first retry of a failed push delivery; it
    /// doubles with each failure up to `retry_max`.
    pub retry_initial: Duration,
    /// The longest wait between two delivery attempts.
    pub retry_max: Duration,
    /// Consecutive failed delivery attempts after which a push
    /// subscription is removed.
    pub max_failures: u32,
    /// How long one delivery (connect, TLS, request, response) may take.
    pub timeout: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            coalesce: Duration::from_millis(2),
            websocket_ping: Duration::from_secs(30),
            extra_roots: Vec::new(),
            allow_private_addresses: false,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            max_failures: 12,
            timeout: Duration::from_secs(15),
        }
    }
}

/// The push machinery of one JMAP server: account notifiers and the
/// count of open WebSocket connections (waited for at shutdown).
#[derive(Debug)]
pub(crate) struct PushRuntime {
    pub notifier: Arc<Notifier>,
    pub config: PushConfig,
    connections: watch::Sender<usize>,
}

/// Counts one open WebSocket connection while alive.
#[derive(Debug)]
pub(crate) struct ConnectionGuard(watch::Sender<usize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl PushRuntime {
    pub fn new(store: MailStore, config: PushConfig, shutdown: watch::Receiver<bool>) -> Self {
        Self {
            notifier: Notifier::new(store, config.coalesce, shutdown),
            config,
            connections: watch::Sender::new(0),
        }
    }

    /// Registers an open WebSocket connection.
    pub fn connection(&self) -> ConnectionGuard {
        self.connections.send_modify(|n| *n += 1);
        ConnectionGuard(self.connections.clone())
    }

    /// Waits until every WebSocket connection has closed, at most `limit`.
    /// Returns whether they all did.
    pub async fn wait_closed(&self, limit: Duration) -> bool {
        let mut rx = self.connections.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|n| *n == 0))
            .await
            .is_ok()
    }
}

/// Smallest and largest ping interval honoured (RFC 8620: a server's
/// minimum must be at most 30, its maximum at least 300).
const MIN_PING: u64 = 1;
const MAX_PING: u64 = 600;

fn bad_request(detail: &str) -> Response<ResponseBody> {
    let p = Problem::http(hyper::StatusCode::BAD_REQUEST, detail);
    let mut r = Response::new(full(p.to_json().to_string()));
    *r.status_mut() = p.status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

/// What the event source's URL asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
struct EventSourceQuery {
    /// `None`: every type (`*`).
    types: Option<Vec<String>>,
    close_after_state: bool,
    /// Seconds; 0 = no pings.
    ping: u64,
}

fn parse_query(query: Option<&str>) -> Result<EventSourceQuery, &'static str> {
    let types = match query_param(query, "types").as_deref().map(str::trim) {
        None | Some("*") => None,
        Some(list) => Some(
            list.split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
        ),
    };
    let close_after_state = match query_param(query, "closeafter").as_deref() {
        None | Some("no") | Some("") => false,
        Some("state") => true,
        Some(_) => return Err("closeafter must be state or no"),
    };
    let ping = match query_param(query, "ping").as_deref() {
        None | Some("") => 0,
        Some(p) => match p.parse::<u64>() {
            Ok(0) => 0,
            Ok(n) => n.clamp(MIN_PING, MAX_PING),
            Err(_) => return Err("ping must be a non-negative integer"),
        },
    };
    Ok(EventSourceQuery {
        types,
        close_after_state,
        ping,
    })
}

/// Opens an event-source stream for `principal` with the URL's query
/// (`types`, `closeafter`, `ping`).
pub(crate) fn event_source(
    inner: Arc<Inner>,
    principal: Principal,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<ResponseBody> {
    let q = match parse_query(query) {
        Ok(q) => q,
        Err(detail) => return bad_request(detail),
    };
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| crate::id::parse_state(s.trim()));
    let filter = Filter::new(
        q.types.as_ref().map(|t| t.iter().map(String::as_str)),
        since,
    );
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(run(
        inner,
        principal.account,
        filter,
        q.close_after_state,
        q.ping,
        tx,
    ));
    let mut r = Response::new(ChannelBody { rx }.boxed());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store"),
    );
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}

fn state_event(account: AccountId, changed: serde_json::Map<String, Value>, id: &str) -> Bytes {
    let data = Value::Object(state_change(account, changed));
    Bytes::from(format!("event: state\nid: {id}\ndata: {data}\n\n"))
}

async fn run(
    inner: Arc<Inner>,
    account: AccountId,
    mut filter: Filter,
    close_after_state: bool,
    ping: u64,
    tx: mpsc::Sender<Bytes>,
) {
    let mut shutdown = inner.shutdown_rx();
    let mut listener = inner.push.notifier.subscribe(account);
    let ping_every = Duration::from_secs(ping.max(1));
    let mut next_ping = tokio::time::Instant::now() + ping_every;
    let resumed = filter.has_baseline();
    let mut first = true;
    loop {
        let state = listener.borrow_and_update().clone();
        if let Some(state) = state {
            match filter.changes(&state) {
                Some(changed) => {
                    let event = state_event(account, changed, &state.push_state());
                    if tx.send(event).await.is_err() {
                        return;
                    }
                    next_ping = tokio::time::Instant::now() + ping_every;
                    if close_after_state {
                        return;
                    }
                }
                None if first && !resumed => {
                    // A new client gets the current push state as its
                    // last event id (no event is dispatched for it), so
                    // that its reconnection says what it has seen.
                    let id = Bytes::from(format!("id: {}\n\n", state.push_state()));
                    if tx.send(id).await.is_err() {
                        return;
                    }
                }
                None => {}
            }
            first = false;
        }
        tokio::select! {
            r = listener.changed() => {
                if r.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next_ping), if ping > 0 => {
                let event = format!("event: ping\ndata: {}\n\n", json!({"interval": ping}));
                if tx.send(Bytes::from(event)).await.is_err() {
                    return;
                }
                next_ping = tokio::time::Instant::now() + ping_every;
            }
            _ = tx.closed() => return,
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_source_query_follows_rfc8620_7_3() {
        let q = parse_query(Some("types=Email%2CMailbox&closeafter=state&ping=5")).unwrap();
        assert_eq!(
            q,
            EventSourceQuery {
                types: Some(vec!["Email".into(), "Mailbox".into()]),
                close_after_state: true,
                ping: 5
            }
        );
        let q = parse_query(Some("types=*&closeafter=no&ping=0")).unwrap();
        assert_eq!(q.types, None);
        assert!(!q.close_after_state);
        assert_eq!(q.ping, 0);
        assert_eq!(parse_query(Some("ping=100000")).unwrap().ping, MAX_PING);
        assert_eq!(parse_query(None).unwrap().ping, 0);
        assert!(parse_query(Some("closeafter=sometimes")).is_err());
        assert!(parse_query(Some("ping=-1")).is_err());
        assert_eq!(
            parse_query(Some("types=")).unwrap().types,
            Some(vec![]),
            "an empty list asks for nothing"
        );
    }
}
