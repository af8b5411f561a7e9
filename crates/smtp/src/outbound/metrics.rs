//! Prometheus metrics, served as text (exposition format 0.0.4) at
//! `GET /metrics` by a tiny HTTP/1.1 listener (`[listen] metrics`,
//! loopback by default): outbound delivery, and the spam and virus
//! filters.
//!
//! Queue gauges are read from the store at each scrape (queue depth from
//! a counter, the error queue and the oldest message with two short range
//! reads); delivery counters count recipients by outcome since the
//! process started. Then the filters' counters ([`crate::spam::METRICS`]:
//! spam verdicts, throttled submissions, virus scans, training) and the
//! accounts throttled at the moment of the scrape
//! ([`crate::spam::OutboundGuard::throttled`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tern_store::MailStore;
use tern_store::queue::Stats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::spam::OutboundGuard;

/// Counters of outbound delivery.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Recipients delivered (remote or local).
    pub delivered: AtomicU64,
    /// Recipient attempts that failed temporarily.
    pub deferred: AtomicU64,
    /// Recipients that failed for good.
    pub failed: AtomicU64,
    /// Failure DSNs delivered.
    pub dsn_failure: AtomicU64,
    /// Delay notices delivered.
    pub dsn_delay: AtomicU64,
    /// Messages moved to the error queue.
    pub held: AtomicU64,
    /// Messages signed with DKIM.
    pub dkim_signed: AtomicU64,
}

impl Metrics {
    /// Adds one to a counter.
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The exposition text for these counters and the queue's `stats` at
    /// `now` (unix seconds).
    pub fn render(&self, stats: &Stats, now: i64) -> String {
        let mut out = String::new();
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "tern_queue_messages",
            "Messages in the outbound queue (held ones included).",
            stats.depth,
        );
        gauge(
            "tern_queue_held_messages",
            "Messages in the error queue, waiting for an operator.",
            stats.held,
        );
        gauge(
            "tern_queue_oldest_message_age_seconds",
            "Age of the oldest message in the queue (0 when it is empty).",
            stats.oldest.map_or(0, |t| (now - t).max(0) as u64),
        );
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP tern_outbound_deliveries_total Recipient delivery attempts by result.\n\
             # TYPE tern_outbound_deliveries_total counter\n\
             tern_outbound_deliveries_total{{result=\"delivered\"}} {}\n\
             tern_outbound_deliveries_total{{result=\"deferred\"}} {}\n\
             tern_outbound_deliveries_total{{result=\"failed\"}} {}",
            get(&self.delivered),
            get(&self.deferred),
            get(&self.failed)
        );
        let _ = writeln!(
            out,
            "# HELP tern_outbound_dsn_total Delivery status notifications sent to senders.\n\
             # TYPE tern_outbound_dsn_total counter\n\
             tern_outbound_dsn_total{{kind=\"failure\"}} {}\n\
             tern_outbound_dsn_total{{kind=\"delay\"}} {}",
            get(&self.dsn_failure),
            get(&self.dsn_delay)
        );
        let _ = writeln!(
            out,
            "# HELP tern_outbound_held_total Messages moved to the error queue.\n\
             # TYPE tern_outbound_held_total counter\n\
             tern_outbound_held_total {}\n\
             # HELP tern_outbound_dkim_signed_total Messages signed with DKIM.\n\
             # TYPE tern_outbound_dkim_signed_total counter\n\
             tern_outbound_dkim_signed_total {}",
            get(&self.held),
            get(&self.dkim_signed)
        );
        out
    }
}

/// The whole exposition text: queue and delivery (`metrics`, `stats` at
/// `now`), the filters' counters, and, with the sending limits `guard`,
/// the accounts throttled now.
pub fn exposition(
    metrics: &Metrics,
    stats: &Stats,
    guard: Option<&OutboundGuard>,
    now: i64,
) -> String {
    let mut out = metrics.render(stats, now);
    crate::spam::METRICS.render(&mut out);
    if let Some(guard) = guard {
        let (blocked, limited) = guard.throttled(Instant::now());
        let _ = writeln!(
            out,
            "# HELP tern_throttled_accounts Accounts whose submissions are refused now, by reason.\n\
             # TYPE tern_throttled_accounts gauge\n\
             tern_throttled_accounts{{reason=\"blocked\"}} {blocked}\n\
             tern_throttled_accounts{{reason=\"rate_limit\"}} {limited}"
        );
    }
    out
}

/// Serves `GET /metrics` on `listener` until `shutdown` turns true.
/// `guard`: the sending limits shared by the SMTP and JMAP submissions
/// (for the throttled-accounts gauge).
pub async fn serve(
    listener: TcpListener,
    store: MailStore,
    metrics: Arc<Metrics>,
    guard: Option<Arc<OutboundGuard>>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    loop {
        let (mut stream, _) = tokio::select! {
            _ = async { let _ = shutdown.wait_for(|&s| s).await; } => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let store = store.clone();
        let metrics = metrics.clone();
        let guard = guard.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    let n = stream.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let line = String::from_utf8_lossy(&buf);
            let mut parts = line.split_whitespace();
            let (method, path) = (parts.next(), parts.next());
            let (status, body) = match (method, path) {
                (Some("GET"), Some("/metrics")) => {
                    let stats =
                        tokio::task::spawn_blocking(move || tern_store::queue::stats(store.kv()))
                            .await;
                    match stats {
                        Ok(Ok(stats)) => (
                            "200 OK",
                            exposition(&metrics, &stats, guard.as_deref(), tern_store::now()),
                        ),
                        _ => ("500 Internal Server Error", "store error\n".to_owned()),
                    }
                }
                (Some("GET"), _) => ("404 Not Found", "try /metrics\n".to_owned()),
                _ => ("405 Method Not Allowed", "GET only\n".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_text() {
        let m = Metrics::default();
        Metrics::inc(&m.delivered);
        Metrics::inc(&m.delivered);
        Metrics::inc(&m.failed);
        let text = m.render(
            &Stats {
                depth: 3,
                held: 1,
                oldest: Some(100),
            },
            160,
        );
        assert!(text.contains("tern_queue_messages 3\n"));
        assert!(text.contains("tern_queue_held_messages 1\n"));
        assert!(text.contains("tern_queue_oldest_message_age_seconds 60\n"));
        assert!(text.contains("tern_outbound_deliveries_total{result=\"delivered\"} 2\n"));
        assert!(text.contains("tern_outbound_deliveries_total{result=\"failed\"} 1\n"));
        assert!(text.contains("# TYPE tern_outbound_deliveries_total counter\n"));
    }
}
