//! Delivery of push subscriptions (RFC 8620 section 7.2): the
//! PushVerification at creation, then a StateChange POSTed to the
//! subscription's URL over HTTPS whenever a wanted type changes.
//!
//! One manager task per server watches the global push epoch key (added
//! to by every PushSubscription write, on any node) and keeps one worker
//! task per stored subscription. A worker first sends the verification
//! code; once the client has confirmed it, the worker listens to the
//! account's notifier like any other push channel (bursts coalesce, and
//! changes arriving while a POST is retried are merged into it). Failed
//! attempts are retried with exponential backoff and jitter; a `429`
//! slows the worker down; `404`/`410`, or `max_failures` failed attempts
//! in a row, remove the subscription; so does its expiry.
//!
//! The HTTPS client is hyper's HTTP/1.1 client over rustls, one
//! connection per POST, trusting the system's roots plus
//! [`PushConfig::extra_roots`]. Unless
//! [`PushConfig::allow_private_addresses`], a URL whose host resolves to a
//! loopback, private or link-local address is refused (a subscription must
//! not probe the server's own network).
//!
//! Known limit: on a store shared by several nodes, every node's manager
//! delivers (duplicate pushes); a lease per subscription would fix it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::header;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Map, Value, json};
use tern_store::{AccountId, DocumentId, MailStore, keys};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::http::Inner;
use crate::notify::{AccountState, Filter, state_change};
use crate::push::PushConfig;
use crate::push_subscription::{self, Subscription};

/// The `TTL` header (RFC 8030 section 5.2): how long a push service may
/// keep an undelivered message, in seconds.
const TTL_SECONDS: &str = "86400";

/// Starts the manager.
pub(crate) fn start(inner: Arc<Inner>) {
    tokio::spawn(manager(inner));
}

/// Why a POST did not get an answer.
#[derive(Debug)]
pub(crate) enum PostError {
    /// The URL is not one this server posts to.
    Url(String),
    /// The host resolves to an address that is not allowed.
    Forbidden(IpAddr),
    /// DNS, TCP, TLS or HTTP failed, or the time ran out.
    Transport(String),
}

impl std::fmt::Display for PostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostError::Url(e) => write!(f, "bad push URL: {e}"),
            PostError::Forbidden(ip) => write!(f, "push URL resolves to a non-public address {ip}"),
            PostError::Transport(e) => write!(f, "{e}"),
        }
    }
}

/// What the push service answered.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answer {
    pub status: StatusCode,
    /// `Retry-After` in seconds, if given.
    pub retry_after: Option<u64>,
}

/// Whether an address is reachable from the public internet.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xC0) == 64)
                || (o[0] == 198 && (o[1] & 0xFE) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xFE00) == 0xFC00
                || (s[0] & 0xFFC0) == 0xFE80
                || (s[0] == 0x2001 && s[1] == 0x0DB8))
        }
    }
}

/// An HTTPS client for push URLs.
#[derive(Debug)]
pub(crate) struct PushClient {
    tls: Arc<rustls::ClientConfig>,
    allow_private: bool,
    timeout: Duration,
}

impl PushClient {
    /// A client trusting the system's roots and `config.extra_roots`.
    /// Blocks (reads certificate files).
    pub fn new(config: &PushConfig) -> Self {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(native.certs);
        for path in &config.extra_roots {
            match CertificateDer::pem_file_iter(path) {
                Ok(certs) => {
                    for cert in certs.flatten() {
                        if let Err(e) = roots.add(cert) {
                            tracing::warn!(path = %path.display(), error = %e, "push: unusable CA certificate");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "push: cannot read CA file")
                }
            }
        }
        if roots.is_empty() {
            tracing::warn!("push: no trusted CA certificates; push deliveries will fail");
        }
        tracing::debug!(
            system = added,
            total = roots.len(),
            "push: CA certificates loaded"
        );
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: Arc::new(tls),
            allow_private: config.allow_private_addresses,
            timeout: config.timeout,
        }
    }

    /// POSTs `body` (JSON) to `url`.
    pub async fn post(&self, url: &str, body: String) -> Result<Answer, PostError> {
        match tokio::time::timeout(self.timeout, self.post_inner(url, body)).await {
            Ok(r) => r,
            Err(_) => Err(PostError::Transport("timed out".into())),
        }
    }

    async fn post_inner(&self, url: &str, body: String) -> Result<Answer, PostError> {
        let uri: Uri = url.parse().map_err(|e| PostError::Url(format!("{e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(PostError::Url("not https".into()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| PostError::Url("no host".into()))?
            .clone();
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(443);
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| PostError::Transport(format!("cannot resolve {host}: {e}")))?
            .collect();
        if addrs.is_empty() {
            return Err(PostError::Transport(format!("{host} has no address")));
        }
        if !self.allow_private
            && let Some(bad) = addrs.iter().find(|a| !is_public(a.ip()))
        {
            return Err(PostError::Forbidden(bad.ip()));
        }
        let mut last_err = String::new();
        let mut stream = None;
        for addr in &addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last_err = format!("connect {addr}: {e}"),
            }
        }
        let stream = stream.ok_or(PostError::Transport(last_err))?;
        let _ = stream.set_nodelay(true);
        let name = match host.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.to_string())
                .map_err(|e| PostError::Url(format!("bad host name: {e}")))?,
        };
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, stream)
            .await
            .map_err(|e| PostError::Transport(format!("TLS: {e}")))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| PostError::Transport(format!("HTTP: {e}")))?;
        let conn = tokio::spawn(conn);
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let len = body.len();
        let req = Request::post(path)
            .header(header::HOST, authority.as_str())
            .header(header::CONTENT_TYPE, "application/json; charset=utf-8")
            .header(header::CONTENT_LENGTH, len)
            .header("TTL", TTL_SECONDS)
            .header("Urgency", "normal")
            .header(
                header::USER_AGENT,
                concat!("tern/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PostError::Url(format!("{e}")))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| PostError::Transport(format!("HTTP: {e}")))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        // Read (a bounded amount of) the body so the exchange completes.
        let _ = http_body_util::Limited::new(response.into_body(), 64 * 1024)
            .collect()
            .await;
        conn.abort();
        Ok(Answer {
            status,
            retry_after,
        })
    }
}

/// A running worker and the subscription it serves.
struct Worker {
    definition: watch::Sender<Subscription>,
    task: JoinHandle<()>,
}

async fn manager(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown_rx();
    let config = inner.push.config.clone();
    let client = match tokio::task::spawn_blocking(move || PushClient::new(&config)).await {
        Ok(c) => Arc::new(c),
        Err(_) => return,
    };
    let mut workers: HashMap<(AccountId, DocumentId), Worker> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let watch = inner.store.kv().watch(keys::PUSH_EPOCH);
        let store = inner.store.clone();
        let subs =
            match tokio::task::spawn_blocking(move || push_subscription::load_all(&store)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "push: cannot load push subscriptions");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
                Err(_) => break,
            };
        let now = tern_store::now();
        let mut live = HashMap::new();
        let mut next_expiry: Option<i64> = None;
        for sub in subs {
            if sub.expires <= now {
                let store = inner.store.clone();
                let (account, doc) = (sub.account, sub.doc);
                tracing::debug!(%account, id = %sub.id(), "push subscription expired");
                let _ = tokio::task::spawn_blocking(move || {
                    push_subscription::remove(&store, account, doc)
                })
                .await;
                continue;
            }
            next_expiry = Some(next_expiry.map_or(sub.expires, |e| e.min(sub.expires)));
            live.insert((sub.account, sub.doc), sub);
        }
        workers.retain(|key, w| {
            let keep = live.contains_key(key);
            if !keep {
                w.task.abort();
            }
            keep
        });
        for (key, sub) in live {
            match workers.get(&key) {
                Some(w) => {
                    w.definition.send_if_modified(|d| {
                        if *d == sub {
                            return false;
                        }
                        *d = sub;
                        true
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(sub);
                    let task = tokio::spawn(worker(inner.clone(), client.clone(), rx));
                    workers.insert(
                        key,
                        Worker {
                            definition: tx,
                            task,
                        },
                    );
                }
            }
        }
        let wake_at = next_expiry
            .map(|e| Duration::from_secs((e - now).max(1) as u64))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            r = watch => {
                if r.is_err() {
                    break;
                }
            }
            _ = tokio::time::sleep(wake_at) => {}
            _ = shutdown.changed() => break,
        }
    }
    for w in workers.into_values() {
        w.task.abort();
    }
}

/// Retry delays: exponential from `initial` up to `max`, with jitter.
fn backoff(config: &PushConfig, failures: u32) -> Duration {
    use rand::Rng;
    let base = config
        .retry_initial
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(config.retry_max);
    let jitter = rand::thread_rng().gen_range(0.0..0.25);
    base.mul_f64(1.0 + jitter)
}

/// What became of a delivery.
enum Outcome {
    Delivered,
    /// The subscription must go (gone, or failing for too long).
    Remove(&'static str),
    /// The subscription expired or changed meanwhile.
    Stop,
}

/// POSTs `body` to the subscription's URL until it is accepted, retrying
/// with backoff; `refresh` may replace the body before each retry (newer
/// changes merged in).
async fn deliver(
    client: &PushClient,
    config: &PushConfig,
    sub: &Subscription,
    failures: &mut u32,
    slow_down: &mut Duration,
    mut body: String,
    mut refresh: impl FnMut() -> Option<String>,
) -> Outcome {
    loop {
        if tern_store::now() >= sub.expires {
            return Outcome::Stop;
        }
        let wait = match client.post(&sub.url, body.clone()).await {
            Ok(a) if a.status.is_success() => {
                *failures = 0;
                *slow_down /= 2;
                return Outcome::Delivered;
            }
            Ok(a) if a.status == StatusCode::NOT_FOUND || a.status == StatusCode::GONE => {
                return Outcome::Remove("the push service says the subscription is gone");
            }
            Ok(a) if a.status == StatusCode::TOO_MANY_REQUESTS => {
                // RFC 8620 section 7.2: a 429 must reduce the frequency.
                *slow_down = (*slow_down * 2).clamp(Duration::from_secs(1), config.retry_max);
                let asked = Duration::from_secs(a.retry_after.unwrap_or(0));
                asked.max(*slow_down)
            }
            Ok(a) => {
                *failures += 1;
                tracing::debug!(status = %a.status, failures = *failures, "push delivery refused");
                let asked = Duration::from_secs(a.retry_after.unwrap_or(0)).min(config.retry_max);
                backoff(config, *failures).max(asked)
            }
            Err(e) => {
                *failures += 1;
                tracing::debug!(error = %e, failures = *failures, "push delivery failed");
                backoff(config, *failures)
            }
        };
        if *failures >= config.max_failures {
            return Outcome::Remove("delivery kept failing");
        }
        tokio::time::sleep(wait).await;
        if let Some(b) = refresh() {
            body = b;
        }
    }
}

async fn remove(inner: &Inner, sub: &Subscription, why: &'static str) {
    tracing::info!(account = %sub.account, id = %sub.id(), reason = why, "push subscription removed");
    let store: MailStore = inner.store.clone();
    let (account, doc) = (sub.account, sub.doc);
    let _ =
        tokio::task::spawn_blocking(move || push_subscription::remove(&store, account, doc)).await;
}

async fn worker(
    inner: Arc<Inner>,
    client: Arc<PushClient>,
    mut definition: watch::Receiver<Subscription>,
) {
    let config = inner.push.config.clone();
    let mut failures = 0u32;
    let mut slow_down = Duration::ZERO;
    let mut verification_sent: Option<String> = None;
    // Verification: send the code once (with retries), then wait for the
    // client to confirm it.
    loop {
        let sub = definition.borrow_and_update().clone();
        if sub.verified {
            break;
        }
        if verification_sent.as_deref() != Some(sub.code.as_str()) {
            let body = json!({
                "@type": "PushVerification",
                "pushSubscriptionId": sub.id(),
                "verificationCode": sub.code,
            })
            .to_string();
            match deliver(
                &client,
                &config,
                &sub,
                &mut failures,
                &mut slow_down,
                body,
                || None,
            )
            .await
            {
                Outcome::Delivered => verification_sent = Some(sub.code.clone()),
                Outcome::Remove(why) => {
                    remove(&inner, &sub, why).await;
                    return;
                }
                Outcome::Stop => return,
            }
        }
        if definition.changed().await.is_err() {
            return;
        }
    }
    let sub = definition.borrow().clone();
    let account = sub.account;
    let mut listener = inner.push.notifier.subscribe(account);
    let new_filter = |sub: &Subscription, since: Option<u64>| {
        Filter::new(
            sub.types.as_ref().map(|t| t.iter().map(String::as_str)),
            since,
        )
    };
    let mut filter = new_filter(&sub, None);
    // Changes from the moment of verification on.
    let store = inner.store.clone();
    match tokio::task::spawn_blocking(move || AccountState::read(&store, account)).await {
        Ok(Ok(state)) => {
            filter.changes(&state);
        }
        _ => return,
    }
    loop {
        tokio::select! {
            r = listener.changed() => {
                if r.is_err() {
                    return;
                }
            }
            r = definition.changed() => {
                if r.is_err() {
                    return;
                }
                let sub = definition.borrow_and_update().clone();
                if !sub.verified {
                    return;
                }
                // New types: keep what was already pushed as the baseline.
                let since = listener.borrow().as_ref().map(|s| s.change);
                filter = new_filter(&sub, since);
                continue;
            }
        }
        let sub = definition.borrow().clone();
        let Some(state) = listener.borrow_and_update().clone() else {
            continue;
        };
        let Some(changed) = filter.changes(&state) else {
            continue;
        };
        let mut pending: Map<String, Value> = changed;
        let body = |changed: &Map<String, Value>| {
            Value::Object(state_change(account, changed.clone())).to_string()
        };
        let first = body(&pending);
        let outcome = deliver(
            &client,
            &config,
            &sub,
            &mut failures,
            &mut slow_down,
            first,
            || {
                // Merge what changed while waiting to retry.
                let newer = listener.borrow_and_update().clone()?;
                let more = filter.changes(&newer)?;
                pending.extend(more);
                Some(body(&pending))
            },
        )
        .await;
        match outcome {
            Outcome::Delivered => {
                if !slow_down.is_zero() {
                    let until = Instant::now() + slow_down;
                    tokio::time::sleep_until(until).await;
                }
            }
            Outcome::Remove(why) => {
                remove(&inner, &sub, why).await;
                return;
            }
            Outcome::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.5.5",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "93.184.216.34", "2606:4700::1111"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn backoff_grows_to_the_cap() {
        let config = PushConfig {
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(1),
            ..PushConfig::default()
        };
        let b1 = backoff(&config, 1);
        let b3 = backoff(&config, 3);
        let b30 = backoff(&config, 30);
        assert!(b1 >= Duration::from_millis(100) && b1 < Duration::from_millis(130));
        assert!(b3 >= Duration::from_millis(400) && b3 < Duration::from_millis(510));
        assert!(b30 >= Duration::from_secs(1) && b30 < Duration::from_millis(1260));
    }
}
