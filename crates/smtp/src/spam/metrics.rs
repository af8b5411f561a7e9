//! Counters of the filters, for the metrics endpoint: plain atomics in one
//! process-wide [`Metrics`] ([`METRICS`]). Read them with
//! [`Metrics::snapshot`]: Prometheus-style names (all counters, `_total`)
//! with their values.

use std::sync::atomic::{AtomicU64, Ordering};

/// The filters' counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Inbound messages scored.
    pub inbound_scored: AtomicU64,
    /// Inbound messages filed in Junk (for at least one recipient).
    pub inbound_junk: AtomicU64,
    /// Inbound messages refused as spam (550 5.7.1).
    pub inbound_rejected: AtomicU64,
    /// Submissions scored.
    pub outbound_scored: AtomicU64,
    /// Submissions refused as spam.
    pub outbound_spam_refused: AtomicU64,
    /// Submissions deferred by the per-account rate limits.
    pub outbound_rate_limited: AtomicU64,
    /// Submissions deferred because the account is blocked after spam.
    pub outbound_blocked: AtomicU64,
    /// Messages (inbound or submitted) refused for a virus.
    pub virus_found: AtomicU64,
    /// Messages that could not be scanned (clamd unreachable or erring).
    pub virus_unscanned: AtomicU64,
    /// Messages trained as spam from user moves.
    pub trained_spam: AtomicU64,
    /// Messages trained as ham from user moves.
    pub trained_ham: AtomicU64,
}

/// The process's counters.
pub static METRICS: Metrics = Metrics {
    inbound_scored: AtomicU64::new(0),
    inbound_junk: AtomicU64::new(0),
    inbound_rejected: AtomicU64::new(0),
    outbound_scored: AtomicU64::new(0),
    outbound_spam_refused: AtomicU64::new(0),
    outbound_rate_limited: AtomicU64::new(0),
    outbound_blocked: AtomicU64::new(0),
    virus_found: AtomicU64::new(0),
    virus_unscanned: AtomicU64::new(0),
    trained_spam: AtomicU64::new(0),
    trained_ham: AtomicU64::new(0),
};

impl Metrics {
    /// Adds one to a counter.
    pub fn add(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Every counter with its metric name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        vec![
            ("tern_spam_inbound_scored_total", get(&self.inbound_scored)),
            ("tern_spam_inbound_junk_total", get(&self.inbound_junk)),
            (
                "tern_spam_inbound_rejected_total",
                get(&self.inbound_rejected),
            ),
            (
                "tern_spam_outbound_scored_total",
                get(&self.outbound_scored),
            ),
            (
                "tern_spam_outbound_spam_refused_total",
                get(&self.outbound_spam_refused),
            ),
            (
                "tern_spam_outbound_rate_limited_total",
                get(&self.outbound_rate_limited),
            ),
            (
                "tern_spam_outbound_blocked_total",
                get(&self.outbound_blocked),
            ),
            ("tern_virus_found_total", get(&self.virus_found)),
            ("tern_virus_unscanned_total", get(&self.virus_unscanned)),
            ("tern_spam_trained_spam_total", get(&self.trained_spam)),
            ("tern_spam_trained_ham_total", get(&self.trained_ham)),
        ]
    }
}
