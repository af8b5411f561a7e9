//! Spam filtering: a score from rules and a statistical classifier, and
//! what the SMTP server does with it.
//!
//! - [`message`]: one parse of the message into what the checks look at;
//!   [`html`]: visible and hidden HTML text, links.
//! - [`rules`]: the tests and their scores, as data
//!   (`resources/spam/rules.toml`); [`auth`]: SPF/DKIM/DMARC results from
//!   this server's Authentication-Results; [`dnsbl`]: DNS blocklists.
//! - [`tokens`], [`bayes`]: hashed tokens and naive Bayes with chi-square
//!   combining; [`learn`]: the models in the store (global and per
//!   account), their cache, bulk training and the trainer of users' moves.
//! - [`outbound`]: per-account sending limits; [`metrics`]: counters.
//!
//! [`SpamFilter::score`] is pure scoring. [`Filter`] is what the SMTP
//! server calls between the authentication checks and delivery: virus
//! scan, rate limits (submissions), DNSBL, score, and the decision —
//! refuse (550 5.7.1 spam, 554 5.7.1 virus, 451 4.7.1 throttled or
//! scanner down), or deliver with `X-Spam-Score`/`X-Spam-Status` headers
//! to the Inbox or Junk of each recipient.

pub mod auth;
pub mod bayes;
pub mod dnsbl;
pub mod html;
pub mod learn;
pub mod message;
pub mod metrics;
pub mod outbound;
pub mod rules;
pub mod tokens;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tern_store::{AccountId, Folder, MailStore, Recipient};

pub use auth::AuthResults;
pub use bayes::{BayesParams, Model};
pub use learn::{Models, Trainer, train_messages};
pub use metrics::{METRICS, Metrics};
pub use outbound::{OutboundConfig, OutboundGuard, Throttle};
pub use rules::{Rules, RulesError};
pub use tern_store::spam::{Class, Scope};

use crate::config::DnsConfig;
use crate::error::Error;
use crate::reply::Reply;
use crate::session::Incoming;
use crate::virus::{ScanResult, Scanner, Unreachable, VirusConfig};

/// The spam filter's configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SpamConfig {
    /// Score mail at all. Default on.
    pub enabled: bool,
    /// From this score, mail goes to Junk. Default 5.
    pub junk_threshold: f64,
    /// From this score, mail is refused at DATA (550 5.7.1). Default 15.
    pub reject_threshold: f64,
    /// DNSBL zones for the client IP (e.g. `zen.spamhaus.org`). Default
    /// none: no DNS query is made.
    pub dnsbl_zones: Vec<String>,
    /// Domain blocklist zones for link domains. Default none.
    pub uribl_zones: Vec<String>,
    /// Learn from each user's moves into and out of Junk. Default on.
    pub learning: bool,
    /// A rules file replacing the shipped `resources/spam/rules.toml`.
    pub rules_file: Option<PathBuf>,
    /// Limits on submissions.
    pub outbound: OutboundConfig,
}

impl Default for SpamConfig {
    fn default() -> Self {
        SpamConfig {
            enabled: true,
            junk_threshold: 5.0,
            reject_threshold: 15.0,
            dnsbl_zones: Vec::new(),
            uribl_zones: Vec::new(),
            learning: true,
            rules_file: None,
            outbound: OutboundConfig::default(),
        }
    }
}

/// Which way a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Received by the MX from another server.
    Inbound,
    /// Submitted by a local user.
    Outbound,
}

/// What to do with a scored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpamAction {
    /// Deliver to the Inbox.
    Accept,
    /// Deliver to Junk.
    Junk,
    /// Refuse at SMTP time.
    Reject,
}

/// The score of a message and the tests that made it.
#[derive(Debug, Clone, PartialEq)]
pub struct SpamVerdict {
    /// Total points.
    pub score: f64,
    /// Tests that hit, with their points, in rule order.
    pub tests: Vec<(String, f64)>,
    /// The classifier's spam probability, when it was used.
    pub bayes: Option<f64>,
    /// The decision under the thresholds.
    pub action: SpamAction,
    /// The GTUBE string was found.
    pub gtube: bool,
}

impl SpamVerdict {
    /// `X-Spam-Score` and `X-Spam-Status` header lines (CRLF-terminated).
    pub fn headers(&self, junk_threshold: f64) -> String {
        let spam = self.action != SpamAction::Accept;
        let mut tests: Vec<&str> = self.tests.iter().map(|(n, _)| n.as_str()).collect();
        tests.sort_unstable();
        let tests = if tests.is_empty() {
            "none".to_owned()
        } else {
            tests.join(",")
        };
        let mut status = format!(
            "{}, score={:.1} required={:.1} tests=",
            if spam { "Yes" } else { "No" },
            self.score,
            junk_threshold
        );
        // Fold the test list at 72 columns.
        let mut line = status.len() + "X-Spam-Status: ".len();
        for (i, t) in tests.split(',').enumerate() {
            if i > 0 {
                status.push(',');
                line += 1;
            }
            if line + t.len() > 76 {
                status.push_str("\r\n\t");
                line = 1;
            }
            status.push_str(t);
            line += t.len();
        }
        if let Some(p) = self.bayes {
            status.push_str(&format!("\r\n\tbayes={p:.4}"));
        }
        format!(
            "X-Spam-Score: {:.1}\r\nX-Spam-Status: {status}\r\n",
            self.score
        )
    }
}

/// A message parsed and tokenized once, scored for one or more accounts.
#[derive(Debug)]
pub struct Prepared {
    analyzed: message::Analyzed,
    tokens: Vec<u64>,
}

impl Prepared {
    /// Parses and tokenizes `raw`.
    pub fn new(raw: &[u8]) -> Prepared {
        let analyzed = message::analyze(raw);
        let tokens = tokens::tokenize(&analyzed);
        Prepared { analyzed, tokens }
    }

    /// What the checks see.
    pub fn analyzed(&self) -> &message::Analyzed {
        &self.analyzed
    }

    /// The distinct token hashes.
    pub fn tokens(&self) -> &[u64] {
        &self.tokens
    }

    /// Link hosts, for domain blocklists.
    pub fn link_domains(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for l in &self.analyzed.links {
            if let Some((_, host, _)) = tokens::split_url(&l.href) {
                let d = rules::base_domain(&host);
                if !out.contains(&d) {
                    out.push(d);
                }
            }
        }
        out
    }
}

/// Scores messages: rules plus the classifier. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SpamFilter {
    rules: Arc<Rules>,
    models: Option<Arc<Models>>,
    junk_threshold: f64,
    reject_threshold: f64,
}

impl SpamFilter {
    /// A filter with `rules` and thresholds, classifying with the models
    /// in `models` (none: rules only).
    pub fn new(rules: Rules, models: Option<Arc<Models>>, junk: f64, reject: f64) -> SpamFilter {
        SpamFilter {
            rules: Arc::new(rules),
            models,
            junk_threshold: junk,
            reject_threshold: reject,
        }
    }

    /// The filter `config` describes, on `store`'s models. Reads the
    /// rules file and loads the global model: blocks.
    pub fn from_config(config: &SpamConfig, store: MailStore) -> Result<SpamFilter, Error> {
        let rules = match &config.rules_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("spam rules {}: {e}", path.display())))?;
                Rules::parse(&text)
                    .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => Rules::default_rules(),
        };
        let models = Models::open(store)
            .map_err(|e| Error::Config(format!("cannot load the spam models: {e}")))?;
        Ok(SpamFilter::new(
            rules,
            Some(Arc::new(models)),
            config.junk_threshold,
            config.reject_threshold,
        ))
    }

    /// The rules.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    /// The models.
    pub fn models(&self) -> Option<&Arc<Models>> {
        self.models.as_ref()
    }

    /// The junk threshold.
    pub fn junk_threshold(&self) -> f64 {
        self.junk_threshold
    }

    /// Scores a raw message with the global model (no DNS). Blocks when
    /// the global model needs a reload.
    pub fn score(&self, raw: &[u8], auth: &AuthResults, direction: Direction) -> SpamVerdict {
        let prepared = Prepared::new(raw);
        let cx = rules::Context {
            auth: auth.clone(),
            now: tern_store::now(),
            ..rules::Context::default()
        };
        let global = self.models.as_ref().map(|m| m.global());
        self.verdict(&prepared, &cx, direction, global.as_deref(), None)
    }

    /// Scores a prepared message for `account` (its own model joins the
    /// global one). Blocks (one store read, plus a reload when the model
    /// changed).
    pub fn score_for(
        &self,
        prepared: &Prepared,
        cx: &rules::Context,
        direction: Direction,
        account: Option<AccountId>,
    ) -> SpamVerdict {
        let global = self.models.as_ref().map(|m| m.global());
        let own = match (&self.models, account) {
            (Some(m), Some(a)) => match m.account(a) {
                Ok(model) => Some(model),
                Err(err) => {
                    tracing::warn!(account = %a, error = %err, "cannot read the account's spam model");
                    None
                }
            },
            _ => None,
        };
        self.verdict(prepared, cx, direction, global.as_deref(), own.as_deref())
    }

    /// Scores with explicit models (benchmarks and tests).
    pub fn verdict(
        &self,
        prepared: &Prepared,
        cx: &rules::Context,
        direction: Direction,
        global: Option<&Model>,
        own: Option<&Model>,
    ) -> SpamVerdict {
        let mut tests = Vec::new();
        let outbound_cx;
        let cx = if direction == Direction::Outbound {
            // Authentication results and blocklists describe senders on
            // the internet, not a local user.
            outbound_cx = rules::Context {
                now: cx.now,
                ..rules::Context::default()
            };
            &outbound_cx
        } else {
            cx
        };
        self.rules.run(&prepared.analyzed, cx, &mut tests);
        let mut models: Vec<(&Model, f64)> = Vec::with_capacity(2);
        if let Some(g) = global {
            models.push((g, 1.0));
        }
        if let Some(o) = own
            && (o.spam > 0 || o.ham > 0)
        {
            models.push((o, self.rules.bayes.account_weight));
        }
        let bayes = bayes::classify(&self.rules.bayes, &models, &prepared.tokens);
        if let Some(p) = bayes
            && let Some(bucket) = self.rules.bucket(p)
        {
            tests.push((bucket.name.clone(), bucket.score));
        }
        let gtube = prepared.analyzed.gtube;
        let mut score: f64 = tests.iter().map(|(_, s)| s).sum();
        if gtube {
            score = score
                .max(self.rules.gtube_score())
                .max(self.reject_threshold);
        }
        let action = if gtube || score >= self.reject_threshold {
            SpamAction::Reject
        } else if score >= self.junk_threshold {
            SpamAction::Junk
        } else {
            SpamAction::Accept
        };
        SpamVerdict {
            score,
            tests,
            bayes,
            action,
            gtube,
        }
    }
}

/// The outcome of [`Filter::filter`] for a message that may be delivered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filtered {
    /// Header lines to prepend (after Received and
    /// Authentication-Results), CRLF-terminated.
    pub headers: String,
    /// Accounts whose copy goes to Junk.
    pub junk: HashSet<AccountId>,
    /// The message-level verdict, when scored.
    pub verdict: Option<SpamVerdict>,
}

impl Filtered {
    /// Files the copies of accounts judged spam in Junk with `$junk`.
    pub fn apply(&self, recipients: &mut [Recipient]) {
        for r in recipients {
            if self.junk.contains(&r.account) {
                r.folder = Folder::Role("junk");
                if !r.keywords.iter().any(|k| k == "$junk") {
                    r.keywords.push("$junk".to_owned());
                }
            }
        }
    }
}

/// Everything between the authentication checks and delivery: virus
/// scanning, outbound limits, DNSBL, spam scoring. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Filter {
    spam: Option<SpamFilter>,
    virus: Option<Scanner>,
    dnsbl: dnsbl::Dnsbl,
    outbound: Arc<OutboundGuard>,
    junk_threshold: f64,
}

impl Filter {
    /// The filter of a server: loads rules and the global model (blocks).
    pub fn new(
        spam: &SpamConfig,
        virus: &VirusConfig,
        dns: &DnsConfig,
        store: MailStore,
    ) -> Result<Filter, Error> {
        let filter = if spam.enabled {
            Some(SpamFilter::from_config(spam, store)?)
        } else {
            None
        };
        Ok(Filter {
            spam: filter,
            virus: Scanner::new(virus.clone()),
            dnsbl: dnsbl::Dnsbl::new(dns, &spam.dnsbl_zones, &spam.uribl_zones)?,
            outbound: Arc::new(OutboundGuard::new(spam.outbound.clone())),
            junk_threshold: spam.junk_threshold,
        })
    }

    /// A filter that does nothing (spam off, no scanner).
    pub fn disabled() -> Filter {
        Filter {
            spam: None,
            virus: None,
            dnsbl: dnsbl::Dnsbl::new(&DnsConfig::default(), &[], &[])
                .expect("no resolver without zones"),
            outbound: Arc::new(OutboundGuard::new(OutboundConfig::default())),
            junk_threshold: 5.0,
        }
    }

    /// The spam filter, when enabled.
    pub fn spam(&self) -> Option<&SpamFilter> {
        self.spam.as_ref()
    }

    /// The virus scanner, when configured.
    pub fn scanner(&self) -> Option<&Scanner> {
        self.virus.as_ref()
    }

    /// Filters a received message. `auth_headers` is the
    /// Authentication-Results this server wrote for it (empty when
    /// unchecked). `Err` is the reply refusing it.
    pub async fn filter(&self, incoming: &Incoming, auth_headers: &str) -> Result<Filtered, Reply> {
        let submitter = incoming.auth.as_ref().map(|a| a.account);
        let direction = if submitter.is_some() {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        let mut out = Filtered::default();
        if let Some(account) = submitter {
            let recipients = incoming.envelope.recipients.len() as u32;
            self.outbound
                .admit(account, recipients, Instant::now())
                .map_err(Throttle::reply)?;
        }
        if let Some(scanner) = &self.virus
            && (direction == Direction::Inbound || scanner.config().scan_submissions)
        {
            match scanner.scan(&incoming.data).await {
                Ok(ScanResult::Clean) => {}
                Ok(ScanResult::Infected(name)) => {
                    METRICS.add(&METRICS.virus_found);
                    tracing::info!(signature = %name, service = incoming.kind.name(), "message refused: virus");
                    return Err(Reply::owned(
                        554,
                        [5, 7, 1],
                        format!(
                            "Message refused: virus found ({})",
                            crate::virus::printable(&name)
                        ),
                    ));
                }
                Err(err) => {
                    METRICS.add(&METRICS.virus_unscanned);
                    tracing::warn!(error = %err, "message not scanned for viruses");
                    match scanner.config().on_unreachable {
                        Unreachable::TempFail => {
                            return Err(Reply::new(
                                451,
                                [4, 7, 1],
                                "Virus scanner unavailable; try again later",
                            ));
                        }
                        Unreachable::Accept => {
                            out.headers.push_str("X-Virus-Status: Unscanned\r\n");
                        }
                    }
                }
            }
        }
        let Some(spam) = self.spam.clone() else {
            return Ok(out);
        };
        let raw = Arc::new(incoming.data.clone());
        let prepared = {
            let raw = Arc::clone(&raw);
            tokio::task::spawn_blocking(move || Prepared::new(&raw))
                .await
                .map_err(|_| crate::reply::TEMP_FAILURE)?
        };
        let mut cx = rules::Context {
            auth: AuthResults::parse(auth_headers),
            now: tern_store::now(),
            ..rules::Context::default()
        };
        if direction == Direction::Inbound && self.dnsbl.enabled() {
            let listed = self
                .dnsbl
                .check(Some(incoming.peer.ip()), &prepared.link_domains())
                .await;
            cx.dnsbl = listed.ip;
            cx.uribl = listed.domains;
        }
        let accounts: Vec<AccountId> = {
            let mut seen = HashSet::new();
            incoming
                .envelope
                .recipients
                .iter()
                .filter_map(|r| r.account)
                .filter(|a| seen.insert(*a))
                .collect()
        };
        let scored = tokio::task::spawn_blocking(move || {
            match direction {
                Direction::Outbound => {
                    let v = spam.score_for(&prepared, &cx, direction, None);
                    (v, Vec::new())
                }
                Direction::Inbound => {
                    // One account: its own model joins the global one for
                    // the message's score. Several: the message's score
                    // is the global one; each copy is filed by its own.
                    let single = (accounts.len() == 1).then(|| accounts[0]);
                    let v = spam.score_for(&prepared, &cx, direction, single);
                    let per_account: Vec<(AccountId, SpamAction)> = if accounts.len() > 1 {
                        accounts
                            .iter()
                            .map(|&a| {
                                (a, spam.score_for(&prepared, &cx, direction, Some(a)).action)
                            })
                            .collect()
                    } else {
                        accounts.iter().map(|&a| (a, v.action)).collect()
                    };
                    (v, per_account)
                }
            }
        })
        .await
        .map_err(|_| crate::reply::TEMP_FAILURE)?;
        let (verdict, per_account) = scored;
        match direction {
            Direction::Outbound => {
                METRICS.add(&METRICS.outbound_scored);
                let account = submitter.expect("outbound has a submitter");
                if verdict.gtube || verdict.score >= self.outbound.config().spam_threshold {
                    METRICS.add(&METRICS.outbound_spam_refused);
                    tracing::warn!(
                        account = %account,
                        score = verdict.score,
                        "submission refused as spam"
                    );
                    self.outbound.strike(account, Instant::now());
                    return Err(Reply::owned(
                        550,
                        [5, 7, 1],
                        format!("Message refused as spam (score {:.1})", verdict.score),
                    ));
                }
            }
            Direction::Inbound => {
                METRICS.add(&METRICS.inbound_scored);
                if verdict.action == SpamAction::Reject {
                    METRICS.add(&METRICS.inbound_rejected);
                    tracing::info!(
                        score = verdict.score,
                        gtube = verdict.gtube,
                        "message refused as spam"
                    );
                    return Err(Reply::owned(
                        550,
                        [5, 7, 1],
                        format!("Message refused as spam (score {:.1})", verdict.score),
                    ));
                }
                out.junk = per_account
                    .into_iter()
                    .filter(|(_, a)| *a != SpamAction::Accept)
                    .map(|(a, _)| a)
                    .collect();
                if !out.junk.is_empty() {
                    METRICS.add(&METRICS.inbound_junk);
                }
                out.headers.push_str(&verdict.headers(self.junk_threshold));
            }
        }
        out.verdict = Some(verdict);
        Ok(out)
    }
}

/// The background trainer of `tern serve`: carries out users' moves into
/// and out of Junk every `interval` until `shutdown`.
pub async fn learner(
    store: MailStore,
    learning: bool,
    interval: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    Trainer::new(store, learning).run(interval, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> SpamFilter {
        SpamFilter::new(Rules::default_rules(), None, 5.0, 15.0)
    }

    #[test]
    fn gtube_is_rejected_whatever_the_weights() {
        let mut raw = b"From: a@a.example\r\nSubject: test\r\n\r\n".to_vec();
        raw.extend_from_slice(message::GTUBE);
        let rules =
            Rules::parse("[[rule]]\nname = \"GTUBE\"\ncheck = \"gtube\"\nscore = 0.1\n").unwrap();
        let f = SpamFilter::new(rules, None, 5.0, 15.0);
        let v = f.score(&raw, &AuthResults::none(), Direction::Inbound);
        assert_eq!(v.action, SpamAction::Reject);
        assert!(v.score >= 15.0);
        let v = filter().score(&raw, &AuthResults::none(), Direction::Inbound);
        assert_eq!(v.action, SpamAction::Reject);
        assert!(v.tests.iter().any(|(n, _)| n == "GTUBE"));
    }

    #[test]
    fn a_clean_message_is_accepted_and_headers_say_so() {
        let raw = b"From: Alice <alice@a.example>\r\nTo: bob@b.example\r\nSubject: Lunch\r\n\
Date: Tue, 14 Nov 2023 22:13:20 +0000\r\nMessage-ID: <1@a.example>\r\n\r\nNoon?\r\n";
        let v = filter().score(raw, &AuthResults::none(), Direction::Inbound);
        assert_eq!(v.action, SpamAction::Accept, "{v:?}");
        let h = v.headers(5.0);
        assert!(h.starts_with("X-Spam-Score: "), "{h}");
        assert!(h.contains("X-Spam-Status: No, score="), "{h}");
        assert!(h.ends_with("\r\n"));
    }

    #[test]
    fn authentication_failures_add_up_and_do_not_apply_outbound() {
        let raw = b"From: a@a.example\r\nSubject: hi\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
Message-ID: <1@a.example>\r\n\r\nhello\r\n";
        let auth = AuthResults::parse(
            "Authentication-Results: mx; spf=fail smtp.mailfrom=a@a.example; dkim=fail; dmarc=fail",
        );
        let inbound = filter().score(raw, &auth, Direction::Inbound);
        let outbound = filter().score(raw, &auth, Direction::Outbound);
        assert!(inbound.tests.iter().any(|(n, _)| n == "DMARC_FAIL"));
        assert!(inbound.score >= 6.0, "{inbound:?}");
        assert!(outbound.tests.iter().all(|(n, _)| !n.contains("FAIL")));
    }

    #[test]
    fn status_header_folds_long_test_lists() {
        let v = SpamVerdict {
            score: 9.3,
            tests: (0..20)
                .map(|i| (format!("SOME_LONG_TEST_NAME_{i}"), 0.5))
                .collect(),
            bayes: Some(0.5),
            action: SpamAction::Junk,
            gtube: false,
        };
        let h = v.headers(5.0);
        assert!(
            h.contains("X-Spam-Status: Yes, score=9.3 required=5.0 tests="),
            "{h}"
        );
        for line in h.split("\r\n") {
            assert!(line.len() <= 80, "{line}");
        }
    }
}
