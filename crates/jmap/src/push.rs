//! The event source (RFC 8620 section 7.3): a `text/event-stream` that
//! pushes a StateChange whenever a committed change moves one of the
//! requested types' states.
//!
//! The stream watches the account's change counter (a store watch: on
//! FoundationDB this works across server nodes), and after each wake-up
//! compares every type's state with what it last sent. Event ids encode
//! all the states, so a client reconnecting with `Last-Event-ID` is sent
//! what it missed at once.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::Response;
use hyper::body::Bytes;
use hyper::header::{self, HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};
use tern_store::keys::{self, family};
use tern_store::{AccountId, DataType, changes};
use tokio::sync::mpsc;

use crate::auth::Principal;
use crate::http::{ChannelBody, Inner, ResponseBody, full};
use crate::problem::Problem;
use crate::{id, quota};

/// The types pushed, by JMAP name.
const TYPES: [(&str, Option<DataType>); 7] = [
    ("Mailbox", Some(DataType::Mailbox)),
    ("Email", Some(DataType::Email)),
    ("Thread", Some(DataType::Thread)),
    ("Identity", Some(DataType::Identity)),
    ("VacationResponse", Some(DataType::VacationResponse)),
    ("EmailDelivery", Some(DataType::EmailDelivery)),
    ("Quota", None),
];

/// Smallest and largest ping interval honoured (RFC 8620: a server's
/// minimum must be at most 30, its maximum at least 300).
const MIN_PING: u64 = 1;
const MAX_PING: u64 = 600;

type States = BTreeMap<&'static str, String>;

fn read_states(store: &tern_store::MailStore, account: AccountId) -> tern_store::Result<States> {
    store.kv().read(|tx| {
        let mut out = States::new();
        for (name, t) in TYPES {
            let s = match t {
                Some(t) => id::state(changes::state(tx, account, t)?),
                None => quota::state_in(tx, account)?,
            };
            out.insert(name, s);
        }
        Ok(out)
    })
}

/// Event ids: the states in [`TYPES`] order, joined by `.`.
fn event_id(states: &States) -> String {
    TYPES
        .iter()
        .map(|(n, _)| states.get(n).cloned().unwrap_or_default())
        .collect::<Vec<_>>()
        .join(".")
}

fn parse_event_id(s: &str) -> Option<States> {
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != TYPES.len() {
        return None;
    }
    Some(
        TYPES
            .iter()
            .zip(parts)
            .map(|((n, _), p)| (*n, p.to_string()))
            .collect(),
    )
}

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

/// Opens an event-source stream for `principal` with the URL's query
/// (`types`, `closeafter`, `ping`).
pub(crate) fn event_source(
    inner: Arc<Inner>,
    principal: Principal,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Response<ResponseBody> {
    let param = |name: &str| -> Option<String> {
        query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| v.replace("%2C", ",").replace("%2c", ","))
        })
    };
    let types: Option<BTreeSet<String>> = match param("types").as_deref() {
        None | Some("*") => None,
        Some(list) => Some(list.split(',').map(str::to_string).collect()),
    };
    let close_after_state = match param("closeafter").as_deref() {
        None | Some("no") => false,
        Some("state") => true,
        Some(_) => return bad_request("closeafter must be state or no"),
    };
    let ping = match param("ping").as_deref() {
        None => 0,
        Some(p) => match p.parse::<u64>() {
            Ok(0) => 0,
            Ok(n) => n.clamp(MIN_PING, MAX_PING),
            Err(_) => return bad_request("ping must be a non-negative integer"),
        },
    };
    let last_sent = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_event_id);
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(run(
        inner,
        principal.account,
        types,
        close_after_state,
        ping,
        last_sent,
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

async fn run(
    inner: Arc<Inner>,
    account: AccountId,
    types: Option<BTreeSet<String>>,
    close_after_state: bool,
    ping: u64,
    mut last_sent: Option<States>,
    tx: mpsc::Sender<Bytes>,
) {
    let counter_key = keys::acct(account, family::CHANGE_COUNTER).build();
    let mut shutdown = inner.shutdown_rx();
    let ping_every = Duration::from_secs(ping);
    let mut next_ping = tokio::time::Instant::now() + ping_every;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Watch before reading so that no commit between the two is missed.
        let watch = inner.store.kv().watch(&counter_key);
        let store = inner.store.clone();
        let states = match tokio::task::spawn_blocking(move || read_states(&store, account)).await {
            Ok(Ok(s)) => s,
            _ => break,
        };
        match &last_sent {
            None => last_sent = Some(states),
            Some(prev) => {
                let changed: Map<String, Value> = states
                    .iter()
                    .filter(|(n, s)| prev.get(*n) != Some(*s))
                    .filter(|(n, _)| types.as_ref().is_none_or(|t| t.contains(**n)))
                    .map(|(n, s)| (n.to_string(), json!(s)))
                    .collect();
                if !changed.is_empty() {
                    let mut accounts = Map::new();
                    accounts.insert(id::account_id(account), Value::Object(changed));
                    let data = json!({"@type": "StateChange", "changed": accounts});
                    let event =
                        format!("event: state\nid: {}\ndata: {data}\n\n", event_id(&states));
                    if tx.send(Bytes::from(event)).await.is_err() {
                        break;
                    }
                    next_ping = tokio::time::Instant::now() + ping_every;
                    if close_after_state {
                        break;
                    }
                }
                last_sent = Some(states);
            }
        }
        tokio::select! {
            r = watch => {
                if r.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep_until(next_ping), if ping > 0 => {
                let event = format!("event: ping\ndata: {}\n\n", json!({"interval": ping}));
                if tx.send(Bytes::from(event)).await.is_err() {
                    break;
                }
                next_ping = tokio::time::Instant::now() + ping_every;
            }
            _ = tx.closed() => break,
            _ = shutdown.changed() => break,
        }
    }
}
