//! Counters of the filters, for the metrics endpoint
//! (`crate::outbound::metrics` serves them): plain atomics in one
//! process-wide [`Metrics`] ([`METRICS`]). [`Metrics::snapshot`] gives each
//! sample's Prometheus name (labels included) with its value;
//! [`Metrics::render`] writes them in the exposition format.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The filters' counters.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Inbound messages scored and delivered to the Inbox of every
    /// recipient.
    pub inbound_accepted: AtomicU64,
    /// Inbound messages filed in Junk (for at least one recipient).
    pub inbound_junk: AtomicU64,
    /// Inbound messages refused as spam (550 5.7.1).
    pub inbound_rejected: AtomicU64,
    /// Submissions (SMTP or JMAP) scored and let through.
    pub outbound_accepted: AtomicU64,
    /// Submissions refused as spam.
    pub outbound_spam_refused: AtomicU64,
    /// Submissions deferred by the per-account rate limits.
    pub outbound_rate_limited: AtomicU64,
    /// Submissions deferred because the account is blocked after spam.
    pub outbound_blocked: AtomicU64,
    /// Messages (inbound or submitted) clamd found clean.
    pub virus_clean: AtomicU64,
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
    inbound_accepted: AtomicU64::new(0),
    inbound_junk: AtomicU64::new(0),
    inbound_rejected: AtomicU64::new(0),
    outbound_accepted: AtomicU64::new(0),
    outbound_spam_refused: AtomicU64::new(0),
    outbound_rate_limited: AtomicU64::new(0),
    outbound_blocked: AtomicU64::new(0),
    virus_clean: AtomicU64::new(0),
    virus_found: AtomicU64::new(0),
    virus_unscanned: AtomicU64::new(0),
    trained_spam: AtomicU64::new(0),
    trained_ham: AtomicU64::new(0),
};

/// One counter family: name, help, and its samples (labels, counter).
type Family<'a> = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'a AtomicU64)>,
);

impl Metrics {
    /// Adds one to a counter.
    pub fn add(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn families(&self) -> [Family<'_>; 4] {
        [
            (
                "tern_spam_verdicts_total",
                "Messages scored by the spam filter, by direction and verdict.",
                vec![
                    (
                        "direction=\"inbound\",verdict=\"accept\"",
                        &self.inbound_accepted,
                    ),
                    ("direction=\"inbound\",verdict=\"junk\"", &self.inbound_junk),
                    (
                        "direction=\"inbound\",verdict=\"reject\"",
                        &self.inbound_rejected,
                    ),
                    (
                        "direction=\"outbound\",verdict=\"accept\"",
                        &self.outbound_accepted,
                    ),
                    (
                        "direction=\"outbound\",verdict=\"reject\"",
                        &self.outbound_spam_refused,
                    ),
                ],
            ),
            (
                "tern_submissions_throttled_total",
                "Submissions deferred by outbound protection, by reason.",
                vec![
                    ("reason=\"rate_limit\"", &self.outbound_rate_limited),
                    ("reason=\"blocked\"", &self.outbound_blocked),
                ],
            ),
            (
                "tern_virus_scans_total",
                "Messages given to clamd, by result (unscanned: clamd unreachable or failing).",
                vec![
                    ("result=\"clean\"", &self.virus_clean),
                    ("result=\"infected\"", &self.virus_found),
                    ("result=\"unscanned\"", &self.virus_unscanned),
                ],
            ),
            (
                "tern_spam_trained_total",
                "Messages trained from users' moves into and out of Junk, by class.",
                vec![
                    ("class=\"spam\"", &self.trained_spam),
                    ("class=\"ham\"", &self.trained_ham),
                ],
            ),
        ]
    }

    /// Every sample with its full name (`family{labels}`) and value.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut out = Vec::new();
        for (name, _, samples) in self.families() {
            for (labels, c) in samples {
                out.push((format!("{name}{{{labels}}}"), c.load(Ordering::Relaxed)));
            }
        }
        out
    }

    /// The value of the sample named `name` (as in [`Metrics::snapshot`]).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.snapshot()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// Appends the counters in the Prometheus text format (0.0.4).
    pub fn render(&self, out: &mut String) {
        for (name, help, samples) in self.families() {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, c) in samples {
                let _ = writeln!(out, "{name}{{{labels}}} {}", c.load(Ordering::Relaxed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_one_typed_family_per_name_and_labelled_samples() {
        let m = Metrics::default();
        m.add(&m.inbound_junk);
        m.add(&m.virus_found);
        m.add(&m.virus_found);
        let mut text = String::new();
        m.render(&mut text);
        assert!(text.contains("# TYPE tern_spam_verdicts_total counter\n"));
        assert!(
            text.contains("tern_spam_verdicts_total{direction=\"inbound\",verdict=\"junk\"} 1\n")
        );
        assert!(text.contains("tern_virus_scans_total{result=\"infected\"} 2\n"));
        assert!(text.contains("tern_submissions_throttled_total{reason=\"blocked\"} 0\n"));
        assert_eq!(text.matches("# TYPE ").count(), 4);
        assert_eq!(
            m.get("tern_virus_scans_total{result=\"infected\"}"),
            Some(2)
        );
        assert_eq!(m.snapshot().len(), 12);
    }
}
