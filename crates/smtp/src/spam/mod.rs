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
//! server calls between the authentication checks and delivery: removal
//! of the `X-Spam-*` fields the message came with, virus scan, rate
//! limits (submissions), DNSBL, score, and the decision — refuse (550
//! 5.7.1 spam, 554 5.7.1 virus, 451 4.7.1 throttled or scanner down), or
//! deliver with our `X-Spam-Score`/`X-Spam-Status` headers to the Inbox
//! or Junk of each recipient. [`Filter::check_submission`] is the same
//! path for JMAP EmailSubmission, with a [`Refusal`] the JMAP layer turns
//! into a SetError.

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
use crate::virus::{Scanner, VirusConfig};

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

/// A message parsed once, scored for one or more accounts. Its tokens
/// are made when a classifier first needs them, once: until the models
/// have seen enough spam and ham (`[bayes] min_spam`/`min_ham`) nothing
/// reads them, and tokenizing is the largest part of a score.
#[derive(Debug)]
pub struct Prepared {
    analyzed: message::Analyzed,
    tokens: std::sync::OnceLock<Vec<u64>>,
}

impl Prepared {
    /// Parses `raw`.
    pub fn new(raw: &[u8]) -> Prepared {
        Prepared::from_analyzed(message::analyze(raw))
    }

    /// Analyzes `raw`, already parsed with mail-parser's default parser.
    pub fn from_parsed(raw: &[u8], message: &mail_parser::Message<'_>) -> Prepared {
        Prepared::from_analyzed(message::analyze_parsed(raw, Some(message)))
    }

    fn from_analyzed(analyzed: message::Analyzed) -> Prepared {
        Prepared {
            analyzed,
            tokens: std::sync::OnceLock::new(),
        }
    }

    /// What the checks see.
    pub fn analyzed(&self) -> &message::Analyzed {
        &self.analyzed
    }

    /// The distinct token hashes (made on the first call).
    pub fn tokens(&self) -> &[u64] {
        self.tokens.get_or_init(|| tokens::tokenize(&self.analyzed))
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
        let bayes = bayes::classify(&self.rules.bayes, &models, || prepared.tokens());
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

/// The outcome of [`Screened::finish`] for a message that may be delivered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filtered {
    /// Header lines to prepend (after Received and
    /// Authentication-Results), CRLF-terminated.
    pub headers: String,
    /// The message without the header fields only this server may write
    /// (see [`Filter::screen`]), when it had any: deliver this instead of
    /// the received data.
    pub message: Option<Vec<u8>>,
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

/// Why a message from a local user is not sent. SMTP answers it with
/// [`Refusal::reply`]; JMAP EmailSubmission/set reports it as a SetError
/// (`rateLimit` for [`RefusalKind::RateLimited`], `forbiddenToSend`
/// otherwise, with the description).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Why.
    pub kind: RefusalKind,
    /// Text for the user (printable ASCII).
    pub description: String,
}

/// The reasons of a [`Refusal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// clamd found a virus: refused for good.
    Virus,
    /// clamd could not be asked and the policy is to tempfail.
    ScannerUnavailable,
    /// The message scored as spam: refused for good (and a strike).
    Spam,
    /// Over the account's sending rate.
    RateLimited,
    /// The account's sending is suspended after spam.
    Blocked,
}

impl Refusal {
    /// Whether trying again later may succeed.
    pub fn temporary(&self) -> bool {
        matches!(
            self.kind,
            RefusalKind::ScannerUnavailable | RefusalKind::RateLimited | RefusalKind::Blocked
        )
    }

    /// The SMTP reply: 554 5.7.1 for a virus, 550 5.7.1 for spam, 451
    /// 4.7.1 for the temporary ones.
    pub fn reply(&self) -> Reply {
        let (code, enhanced) = match self.kind {
            RefusalKind::Virus => (554, [5, 7, 1]),
            RefusalKind::Spam => (550, [5, 7, 1]),
            _ => (451, [4, 7, 1]),
        };
        Reply::owned(code, enhanced, self.description.clone())
    }
}

impl From<Throttle> for Refusal {
    fn from(t: Throttle) -> Refusal {
        let (kind, description) = match t {
            Throttle::RateLimited => (
                RefusalKind::RateLimited,
                "Sending rate limit exceeded; try again later",
            ),
            Throttle::Blocked => (
                RefusalKind::Blocked,
                "Sending suspended after messages scored as spam; try again later",
            ),
        };
        Refusal {
            kind,
            description: description.to_owned(),
        }
    }
}

/// Whether a header field name is one only this server writes when it
/// scores (`X-Spam-*`) or scans (`X-Virus-Status`).
fn ours(name: &[u8], spam: bool, virus: bool) -> bool {
    (spam && name.len() >= 7 && name[..7].eq_ignore_ascii_case(b"X-Spam-"))
        || (virus && name.eq_ignore_ascii_case(b"X-Virus-Status"))
}

/// `raw` without the header fields (with their continuation lines) whose
/// name `drop` matches; `None` when it has none. The body is untouched.
pub fn strip_header_fields(raw: &[u8], drop: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let header_end = if raw.starts_with(b"\r\n") || raw.starts_with(b"\n") {
        0
    } else {
        memchr::memmem::find(raw, b"\r\n\r\n")
            .map(|p| p + 2)
            .or_else(|| memchr::memmem::find(raw, b"\n\n").map(|p| p + 1))
            .unwrap_or(raw.len())
    };
    // (start, end) of each field to drop.
    let mut cut: Vec<(usize, usize)> = Vec::new();
    let mut pos = 0;
    let mut dropping = false;
    while pos < header_end {
        let end = memchr::memchr(b'\n', &raw[pos..header_end])
            .map(|p| pos + p + 1)
            .unwrap_or(header_end);
        let line = &raw[pos..end];
        if !matches!(line.first(), Some(b' ' | b'\t')) {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            dropping = line.contains(&b':') && drop(name.trim_ascii_end());
        }
        if dropping {
            match cut.last_mut() {
                Some((_, e)) if *e == pos => *e = end,
                _ => cut.push((pos, end)),
            }
        }
        pos = end;
    }
    if cut.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut from = 0;
    for (s, e) in cut {
        out.extend_from_slice(&raw[from..s]);
        from = e;
    }
    out.extend_from_slice(&raw[from..]);
    Some(out)
}

/// Everything between the authentication checks and delivery: virus
/// scanning, outbound limits, DNSBL, spam scoring. Cheap to clone; clones
/// share the outbound limits' state.
#[derive(Debug, Clone)]
pub struct Filter {
    spam: Option<SpamFilter>,
    virus: Option<Scanner>,
    dnsbl: dnsbl::Dnsbl,
    outbound: Arc<OutboundGuard>,
    junk_threshold: f64,
}

impl Filter {
    /// [`Filter::new`] for a server's configuration, on a blocking thread
    /// (loading the model reads the store).
    pub async fn load(config: &crate::SmtpConfig, store: MailStore) -> Result<Filter, Error> {
        let (spam, virus, dns) = (
            config.spam.clone(),
            config.virus.clone(),
            config.dns.clone(),
        );
        tokio::task::spawn_blocking(move || Filter::new(&spam, &virus, &dns, store))
            .await
            .map_err(|e| Error::Config(e.to_string()))?
    }

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

    /// The per-account sending limits (for the metrics endpoint's
    /// throttled-accounts gauge).
    pub fn outbound_guard(&self) -> Arc<OutboundGuard> {
        Arc::clone(&self.outbound)
    }

    /// The message without the header fields a sender must not be able to
    /// forge: `X-Spam-*` when the spam filter is on (it writes its own),
    /// `X-Virus-Status` when a scanner is; `None` when there is nothing to
    /// remove.
    pub fn strip_foreign_headers(&self, raw: &[u8]) -> Option<Vec<u8>> {
        let (spam, virus) = (self.spam.is_some(), self.virus.is_some());
        if !spam && !virus {
            return None;
        }
        strip_header_fields(raw, |name| ours(name, spam, virus))
    }

    /// Checks a message a local user submits (JMAP EmailSubmission: the
    /// SMTP submission listeners go through [`Filter::screen`]): the
    /// account's sending limits, the virus scan (when `scan_submissions`)
    /// and the outbound spam score, as for SMTP submissions. `raw` is the
    /// message as it will be sent. Returns the message to send instead when
    /// the filter changes it, as it does an SMTP submission's: header fields
    /// only the filter may write (`X-Spam-*`, `X-Virus-Status`) removed,
    /// and `X-Virus-Status: Unscanned` added when clamd was down and the
    /// policy accepts.
    pub async fn check_submission(
        &self,
        account: AccountId,
        recipients: u32,
        raw: &[u8],
    ) -> Result<Option<Vec<u8>>, Refusal> {
        self.outbound
            .admit(account, recipients, Instant::now())
            .map_err(Refusal::from)?;
        let stripped = self.strip_foreign_headers(raw);
        let data = stripped.as_deref().unwrap_or(raw);
        let mut unscanned = false;
        if let Some(scanner) = &self.virus
            && scanner.config().scan_submissions
        {
            unscanned = !scanner.check(data).await?;
        }
        if let Some(spam) = self.spam.clone() {
            self.score_submission(spam, account, Arc::new(data.to_vec()))
                .await?;
        }
        Ok(match (unscanned, stripped) {
            (true, stripped) => {
                let mut out = b"X-Virus-Status: Unscanned\r\n".to_vec();
                out.extend_from_slice(stripped.as_deref().unwrap_or(raw));
                Some(out)
            }
            (false, stripped) => stripped,
        })
    }

    /// Scores a submission of `account`; refuses it (and strikes the
    /// account) from the outbound spam threshold.
    async fn score_submission(
        &self,
        spam: SpamFilter,
        account: AccountId,
        raw: Arc<Vec<u8>>,
    ) -> Result<SpamVerdict, Refusal> {
        let verdict = tokio::task::spawn_blocking(move || {
            let prepared = Prepared::new(&raw);
            let cx = rules::Context {
                now: tern_store::now(),
                ..rules::Context::default()
            };
            spam.score_for(&prepared, &cx, Direction::Outbound, None)
        })
        .await
        .map_err(|_| Refusal {
            kind: RefusalKind::ScannerUnavailable,
            description: "The spam filter failed; try again later".into(),
        })?;
        if verdict.gtube || verdict.score >= self.outbound.config().spam_threshold {
            METRICS.add(&METRICS.outbound_spam_refused);
            tracing::warn!(
                account = %account,
                score = verdict.score,
                "submission refused as spam"
            );
            self.outbound.strike(account, Instant::now());
            return Err(Refusal {
                kind: RefusalKind::Spam,
                description: format!("Message refused as spam (score {:.1})", verdict.score),
            });
        }
        METRICS.add(&METRICS.outbound_accepted);
        Ok(verdict)
    }

    /// The asynchronous half of filtering a received message:
    /// submission limits, the virus scan and DNS blocklists. `auth_headers`
    /// is the Authentication-Results this server wrote for it (empty when
    /// unchecked). `Err` is the reply refusing it. Header fields only this
    /// server may write are removed first ([`Filter::strip_foreign_headers`]):
    /// they are neither scored nor delivered. An inbound message's spam
    /// score is left to [`Screened::finish`], which blocks, so that the
    /// caller can run it on the same blocking thread as the delivery.
    pub async fn screen(&self, incoming: &Incoming, auth_headers: &str) -> Result<Screened, Reply> {
        let submitter = incoming.auth.as_ref().map(|a| a.account);
        let direction = if submitter.is_some() {
            Direction::Outbound
        } else {
            Direction::Inbound
        };
        let mut out = Filtered {
            message: self.strip_foreign_headers(&incoming.data),
            ..Filtered::default()
        };
        if let Some(account) = submitter {
            let recipients = incoming.envelope.recipients.len() as u32;
            self.outbound
                .admit(account, recipients, Instant::now())
                .map_err(|t| Refusal::from(t).reply())?;
        }
        let data: &[u8] = out.message.as_deref().unwrap_or(&incoming.data);
        if let Some(scanner) = &self.virus
            && (direction == Direction::Inbound || scanner.config().scan_submissions)
        {
            match scanner.check(data).await {
                Ok(true) => {}
                Ok(false) => out.headers.push_str("X-Virus-Status: Unscanned\r\n"),
                Err(refusal) => {
                    tracing::info!(service = incoming.kind.name(), reason = ?refusal.kind, "message refused by the virus scan");
                    return Err(refusal.reply());
                }
            }
        }
        let Some(spam) = self.spam.clone() else {
            return Ok(Screened { out, inbound: None });
        };
        if let Some(account) = submitter {
            let verdict = self
                .score_submission(spam, account, Arc::new(data.to_vec()))
                .await
                .map_err(|r| r.reply())?;
            out.verdict = Some(verdict);
            return Ok(Screened { out, inbound: None });
        }
        let mut cx = rules::Context {
            auth: AuthResults::parse(auth_headers),
            now: tern_store::now(),
            ..rules::Context::default()
        };
        // Blocklists look up the links' domains: the message is prepared
        // here then (on a blocking thread), otherwise in `finish`.
        let mut prepared = None;
        if self.dnsbl.enabled() {
            let raw = Arc::new(data.to_vec());
            let ready = tokio::task::spawn_blocking(move || Prepared::new(&raw))
                .await
                .map_err(|_| crate::reply::TEMP_FAILURE)?;
            let listed = self
                .dnsbl
                .check(Some(incoming.peer.ip()), &ready.link_domains())
                .await;
            cx.dnsbl = listed.ip;
            cx.uribl = listed.domains;
            prepared = Some(ready);
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
        Ok(Screened {
            out,
            inbound: Some(InboundScore {
                spam,
                prepared,
                cx,
                accounts,
                junk_threshold: self.junk_threshold,
            }),
        })
    }
}

/// A received message past [`Filter::screen`], its spam score to come.
#[derive(Debug)]
pub struct Screened {
    out: Filtered,
    inbound: Option<InboundScore>,
}

/// What scoring an inbound message needs.
#[derive(Debug)]
struct InboundScore {
    spam: SpamFilter,
    prepared: Option<Prepared>,
    cx: rules::Context,
    accounts: Vec<AccountId>,
    junk_threshold: f64,
}

impl Screened {
    /// Takes out the message to deliver instead of the received data, when
    /// the filter removed header fields from it; [`Filtered::message`] is
    /// then `None`.
    pub fn take_message(&mut self) -> Option<Vec<u8>> {
        self.out.message.take()
    }

    /// Scores an inbound message and decides each account's folder.
    /// `data` is what will be delivered — the received data, or what
    /// [`Screened::take_message`] took out — and `parsed` its parse by
    /// mail-parser's default parser when the caller has one (the SMTP
    /// server parses once, for this and for the store); without one, or
    /// when the filter still holds a stripped message, the filter parses.
    /// Blocks: reads the accounts' models. `Err` is the reply refusing it
    /// as spam.
    pub fn finish(
        self,
        data: &[u8],
        parsed: Option<&mail_parser::Message<'_>>,
    ) -> Result<Filtered, Reply> {
        let Screened { mut out, inbound } = self;
        let Some(InboundScore {
            spam,
            prepared,
            cx,
            accounts,
            junk_threshold,
        }) = inbound
        else {
            return Ok(out);
        };
        let prepared = prepared.unwrap_or_else(|| match (out.message.as_deref(), parsed) {
            (Some(stripped), _) => Prepared::new(stripped),
            (None, Some(message)) => Prepared::from_parsed(data, message),
            (None, None) => Prepared::new(data),
        });
        // One account: its own model joins the global one for the
        // message's score. Several: the message's score (its headers) is
        // the global one; each copy is filed by its account's own.
        let single = (accounts.len() == 1).then(|| accounts[0]);
        let verdict = spam.score_for(&prepared, &cx, Direction::Inbound, single);
        let per_account: Vec<(AccountId, SpamAction)> = if accounts.len() > 1 {
            accounts
                .iter()
                .map(|&a| {
                    let own = spam.score_for(&prepared, &cx, Direction::Inbound, Some(a));
                    (a, own.action)
                })
                .collect()
        } else {
            accounts.iter().map(|&a| (a, verdict.action)).collect()
        };
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
        METRICS.add(if out.junk.is_empty() {
            &METRICS.inbound_accepted
        } else {
            &METRICS.inbound_junk
        });
        out.headers.push_str(&verdict.headers(junk_threshold));
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

    /// The tokens are made only for a classifier with enough training,
    /// and are the message's whole token set then.
    #[test]
    fn a_message_is_tokenized_only_for_a_trained_classifier() {
        let raw = b"From: a@a.example\r\nSubject: cheap watches\r\n\r\nbuy cheap watches now\r\n";
        let prepared = Prepared::new(raw);
        let f = filter();
        let cx = rules::Context::default();
        let mut untrained = Model::new();
        untrained.train(&[1, 2, 3], tern_store::spam::Class::Spam);
        let v = f.verdict(&prepared, &cx, Direction::Inbound, Some(&untrained), None);
        assert_eq!(v.bayes, None);
        assert!(
            prepared.tokens.get().is_none(),
            "tokenized for no classifier"
        );

        let expected = tokens::tokenize(&message::analyze(raw));
        let mut trained = Model::new();
        for _ in 0..20 {
            trained.train(&expected, tern_store::spam::Class::Spam);
            trained.train(&[1, 2, 3], tern_store::spam::Class::Ham);
        }
        let v = f.verdict(&prepared, &cx, Direction::Inbound, Some(&trained), None);
        assert!(v.bayes.is_some_and(|p| p > 0.9), "{v:?}");
        assert_eq!(prepared.tokens.get(), Some(&expected));
        assert_eq!(prepared.tokens(), &expected[..]);
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
    fn foreign_spam_fields_are_stripped_with_their_continuations_and_the_body_kept() {
        let spam_only = |n: &[u8]| ours(n, true, false);
        let raw = b"X-Spam-Flag: YES\r\nFrom: a@b\r\nx-spam-status: No,\r\n\ttests=none\r\n\
X-Spammer: keep\r\nX-Virus-Status: Clean\r\nSubject: s\r\nX-SPAM-SCORE : -5\r\n\r\n\
X-Spam-Status: body text\r\n";
        let out = strip_header_fields(raw, spam_only).unwrap();
        assert_eq!(
            out,
            b"From: a@b\r\nX-Spammer: keep\r\nX-Virus-Status: Clean\r\nSubject: s\r\n\r\n\
X-Spam-Status: body text\r\n"
        );
        let both = strip_header_fields(raw, |n| ours(n, true, true)).unwrap();
        assert!(!both.windows(14).any(|w| w == b"X-Virus-Status"));
        // LF only, no body, nothing to strip.
        assert_eq!(
            strip_header_fields(b"Subject: s\nX-Spam-Score: 1\n", spam_only).unwrap(),
            b"Subject: s\n"
        );
        assert_eq!(
            strip_header_fields(b"Subject: s\r\n\r\nX-Spam-Score: 1\r\n", spam_only),
            None
        );
        assert_eq!(
            strip_header_fields(b"\r\nX-Spam-Score: 1\r\n", spam_only),
            None
        );
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
