//! The TOML configuration file.
//!
//! One struct per section, each with `#[serde(default, deny_unknown_fields)]`
//! and a `Default` that is the value a newcomer gets without a config file.
//! To add a section for a new service (say `[jmap]`):
//!
//! 1. define `JmapConfig` here, deriving like [`ListenConfig`], with a
//!    `Default` impl;
//! 2. add `pub jmap: JmapConfig` to [`Config`];
//! 3. document the section with its defaults in `resources/config.toml`
//!    (a test checks that file parses to `Config::default()`);
//! 4. check values serde cannot check in [`Config::validate`], naming the key.
//!
//! A config file is refused at start, with the key named, if it has an
//! unknown key or a bad value: [`Config::parse`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the store keeps its files, and where `admin.sock` lives.
    pub data_dir: PathBuf,
    /// The name this server gives itself (SMTP greeting, Message-IDs).
    pub hostname: String,
    /// Local mail domains, ensured to exist in the store at `tern serve`.
    pub domains: Vec<String>,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub jmap: JmapSection,
    pub smtp: SmtpSection,
    pub dns: DnsSection,
    pub log: LogConfig,
    pub queue: QueueSection,
    /// `[routes]`: domain (or `*`) = "host:port": where mail for a domain
    /// goes instead of its MX hosts (smart hosts, tests).
    pub routes: std::collections::BTreeMap<String, String>,
    pub dkim: DkimSection,
    pub spam: SpamSection,
    pub virus: VirusSection,
    pub search: SearchSection,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            hostname: machine_hostname(),
            domains: vec!["localhost".to_owned()],
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            jmap: JmapSection::default(),
            smtp: SmtpSection::default(),
            dns: DnsSection::default(),
            log: LogConfig::default(),
            queue: QueueSection::default(),
            routes: std::collections::BTreeMap::new(),
            dkim: DkimSection::default(),
            spam: SpamSection::default(),
            virus: VirusSection::default(),
            search: SearchSection::default(),
        }
    }
}

/// `[listen]`: socket addresses of the network services.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// JMAP over HTTP.
    pub jmap: SocketAddr,
    /// SMTP for other mail servers (MX).
    pub smtp: SocketAddr,
    /// SMTP submission for users and applications (AUTH required).
    pub submission: SocketAddr,
    /// SMTP submission over implicit TLS (port 465); off unless set.
    pub submissions: Option<SocketAddr>,
    /// Prometheus metrics (`GET /metrics`). Keep it on loopback or behind
    /// a firewall. A port in use is logged, not fatal.
    pub metrics: Option<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            jmap: SocketAddr::from(([127, 0, 0, 1], 8080)),
            smtp: SocketAddr::from(([127, 0, 0, 1], 2525)),
            submission: SocketAddr::from(([127, 0, 0, 1], 5870)),
            submissions: None,
            metrics: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
        }
    }
}

/// `[tls]`: the certificate of this server, for JMAP (HTTPS) and SMTP
/// (STARTTLS and implicit TLS). Both keys or neither. Without them JMAP
/// serves plain HTTP (put it behind a TLS proxy) and SMTP uses a
/// self-signed certificate generated at first start in `<data_dir>/tls/`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// `[jmap]`: the JMAP server's public URL and limits (advertised in the
/// session resource and enforced).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JmapSection {
    /// The URL clients reach the server at, used for the session's
    /// absolute URLs. Default: `http(s)://<listen.jmap>`.
    pub base_url: Option<String>,
    /// maxSizeUpload, bytes. At least 50 MB so 25 MB attachments fit after
    /// base64.
    pub max_upload_size: u64,
    /// maxConcurrentUpload per account.
    pub max_concurrent_uploads: usize,
    /// maxSizeRequest, bytes.
    pub max_request_size: usize,
    /// maxConcurrentRequests per account.
    pub max_concurrent_requests: usize,
    /// maxCallsInRequest.
    pub max_calls_in_request: usize,
    /// maxObjectsInGet.
    pub max_objects_in_get: usize,
    /// maxObjectsInSet.
    pub max_objects_in_set: usize,
    /// Changes kept in each account's change log (all data types
    /// together); a client whose state is older gets
    /// cannotCalculateChanges and resynchronises. 0 keeps everything.
    pub changes_kept: u64,
    pub push: PushSection,
}

/// `[jmap.push]`: push notifications (event source, WebSocket, push
/// subscriptions).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushSection {
    /// During a burst of changes to one account, the shortest time between
    /// two notifications, in milliseconds (the first change after a quiet
    /// spell is pushed at once).
    pub coalesce_ms: u64,
    /// Seconds between WebSocket pings; a client silent for three
    /// intervals is disconnected.
    pub websocket_ping: u64,
    /// PEM files of certificate authorities trusted for push subscription
    /// URLs, besides the system's.
    pub ca_files: Vec<PathBuf>,
    /// Allow push subscription URLs on loopback, private and link-local
    /// addresses (off: a subscription cannot probe this server's network).
    pub allow_private_addresses: bool,
    /// Milliseconds before the first retry of a failed push delivery; the
    /// wait doubles with each failure up to `retry_max`.
    pub retry_initial_ms: u64,
    /// Longest wait between two delivery attempts, in seconds.
    pub retry_max: u64,
    /// Failed delivery attempts in a row after which a push subscription is
    /// removed.
    pub max_failures: u32,
    /// Seconds one delivery may take.
    pub timeout: u64,
}

impl Default for PushSection {
    fn default() -> Self {
        let push = tern_jmap::PushConfig::default();
        PushSection {
            coalesce_ms: push.coalesce.as_millis() as u64,
            websocket_ping: push.websocket_ping.as_secs(),
            ca_files: push.extra_roots,
            allow_private_addresses: push.allow_private_addresses,
            retry_initial_ms: push.retry_initial.as_millis() as u64,
            retry_max: push.retry_max.as_secs(),
            max_failures: push.max_failures,
            timeout: push.timeout.as_secs(),
        }
    }
}

impl Default for JmapSection {
    fn default() -> Self {
        let limits = tern_jmap::Limits::default();
        JmapSection {
            base_url: None,
            max_upload_size: limits.max_size_upload,
            max_concurrent_uploads: limits.max_concurrent_upload,
            max_request_size: limits.max_size_request,
            max_concurrent_requests: limits.max_concurrent_requests,
            max_calls_in_request: limits.max_calls_in_request,
            max_objects_in_get: limits.max_objects_in_get,
            max_objects_in_set: limits.max_objects_in_set,
            changes_kept: 10_000,
            push: PushSection::default(),
        }
    }
}

/// `[smtp]`: limits and policy of the SMTP listeners.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SmtpSection {
    /// Largest message in bytes (SIZE, DATA, BDAT).
    pub max_message_size: usize,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Offer AUTH on submission connections without TLS. Leave off in
    /// production: passwords would travel in clear text.
    pub allow_plaintext_auth: bool,
    /// Simultaneous connections from one IP address.
    pub max_connections_per_ip: usize,
    /// Simultaneous connections in all.
    pub max_connections: usize,
    /// New connections from one IP address per minute.
    pub connections_per_minute: u32,
    /// Seconds to wait for a command.
    pub command_timeout: u64,
    /// Seconds to wait for the next piece of message data.
    pub data_timeout: u64,
    pub checks: ChecksSection,
}

impl Default for SmtpSection {
    fn default() -> Self {
        let limits = tern_smtp::Limits::default();
        SmtpSection {
            max_message_size: limits.max_message_size,
            max_recipients: limits.max_recipients,
            allow_plaintext_auth: false,
            max_connections_per_ip: limits.max_connections_per_ip,
            max_connections: limits.max_connections,
            connections_per_minute: limits.rate_limit,
            command_timeout: limits.command_timeout.as_secs(),
            data_timeout: limits.data_timeout.as_secs(),
            checks: ChecksSection::default(),
        }
    }
}

/// `[smtp.checks]`: sender authentication on the MX listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChecksSection {
    /// SPF, DKIM, ARC, DMARC and iprev, recorded in Authentication-Results.
    pub enabled: bool,
    /// Refuse mail failing DMARC of a domain whose policy is `reject`.
    pub dmarc_reject: bool,
    /// File mail failing DMARC of a `quarantine` domain in Junk.
    pub dmarc_quarantine: bool,
}

impl Default for ChecksSection {
    fn default() -> Self {
        let checks = tern_smtp::ChecksConfig::default();
        ChecksSection {
            enabled: checks.enabled,
            dmarc_reject: checks.dmarc_reject,
            dmarc_quarantine: checks.dmarc_quarantine,
        }
    }
}

/// `[spam]`: spam scoring of received mail and limits on submissions
/// (tern-smtp's `spam` module).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpamSection {
    /// Score mail; off: no spam headers, nothing filed in Junk.
    pub enabled: bool,
    /// From this score mail goes to Junk.
    pub junk_threshold: Points,
    /// From this score mail is refused at DATA (550 5.7.1).
    pub reject_threshold: Points,
    /// DNS blocklist zones for the client's IP; empty: no DNS query.
    pub dnsbl_zones: Vec<String>,
    /// Domain blocklist zones for link domains.
    pub uribl_zones: Vec<String>,
    /// Learn each user's spam from moves into and out of Junk.
    pub learning: bool,
    /// A rules file replacing the shipped resources/spam/rules.toml.
    pub rules_file: Option<PathBuf>,
    pub outbound: SpamOutboundSection,
}

/// A score (points); compared bit for bit so the config stays `Eq`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(transparent)]
pub struct Points(pub f64);

impl PartialEq for Points {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Points {}

impl Default for SpamSection {
    fn default() -> Self {
        let d = tern_smtp::SpamConfig::default();
        SpamSection {
            enabled: d.enabled,
            junk_threshold: Points(d.junk_threshold),
            reject_threshold: Points(d.reject_threshold),
            dnsbl_zones: d.dnsbl_zones,
            uribl_zones: d.uribl_zones,
            learning: d.learning,
            rules_file: d.rules_file,
            outbound: SpamOutboundSection::default(),
        }
    }
}

/// `[spam.outbound]`: per-account limits on submissions.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpamOutboundSection {
    /// Messages one account may submit per hour (0: unlimited).
    pub messages_per_hour: u32,
    /// Recipients one account may send to per hour (0: unlimited).
    pub recipients_per_hour: u32,
    /// From this score a submission is refused as spam.
    pub spam_threshold: Points,
    /// Spam-scored submissions within an hour that suspend the account's
    /// sending (0: never).
    pub max_strikes: u32,
    /// Minutes a suspension lasts.
    pub block_minutes: u64,
}

impl Default for SpamOutboundSection {
    fn default() -> Self {
        let d = tern_smtp::spam::OutboundConfig::default();
        SpamOutboundSection {
            messages_per_hour: d.messages_per_hour,
            recipients_per_hour: d.recipients_per_hour,
            spam_threshold: Points(d.spam_threshold),
            max_strikes: d.max_strikes,
            block_minutes: d.block_for.as_secs() / 60,
        }
    }
}

/// `[virus]`: virus scanning with clamd.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VirusSection {
    /// clamd's address: "tcp:HOST:PORT" or "unix:PATH". Unset: no scanning.
    pub clamd: Option<String>,
    /// When clamd cannot be reached: "tempfail" (451 4.7.1) or "accept"
    /// (delivered with X-Virus-Status: Unscanned).
    pub on_unreachable: OnUnreachable,
    /// Seconds one scan may take.
    pub timeout: u64,
    /// Bytes of a message sent to clamd at most (its StreamMaxLength).
    pub max_size: usize,
    /// Scan submissions too, not only received mail.
    pub scan_submissions: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnreachable {
    #[default]
    Tempfail,
    Accept,
}

impl Default for VirusSection {
    fn default() -> Self {
        let d = tern_smtp::VirusConfig::default();
        VirusSection {
            clamd: None,
            on_unreachable: OnUnreachable::Tempfail,
            timeout: d.timeout.as_secs(),
            max_size: d.max_size,
            scan_submissions: d.scan_submissions,
        }
    }
}

/// `[search]`: the full-text index behind Email/query's text filters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchSection {
    /// Milliseconds an Email/query with a text filter waits at most for
    /// the index to catch up with the mail the request can see (read your
    /// writes) before answering from the index as it is. 0: never wait.
    pub query_wait_ms: u64,
    /// How much the indexer lowers its CPU priority (nice increment, 0 to
    /// 19; 0: none). Indexing yields to SMTP and JMAP under load and
    /// catches up when they leave room; its queue is durable.
    pub indexer_nice: i32,
}

/// Longest `search.query_wait_ms` accepted: a waiting query holds one of
/// the account's JMAP request slots.
pub const MAX_QUERY_WAIT_MS: u64 = 30_000;

impl Default for SearchSection {
    fn default() -> Self {
        SearchSection {
            query_wait_ms: tern_search::IndexOptions::default()
                .query_wait
                .as_millis()
                .try_into()
                .unwrap_or(u64::MAX),
            indexer_nice: tern_search::IndexerConfig::default().nice,
        }
    }
}

/// `[dns]`: the resolver used for SPF, DKIM, DMARC and iprev.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// Nameservers as "ip:port". Empty: the system's (/etc/resolv.conf).
    pub nameservers: Vec<SocketAddr>,
    /// Seconds one query may take.
    pub timeout: u64,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            nameservers: Vec::new(),
            timeout: tern_smtp::DnsConfig::default().timeout.as_secs(),
        }
    }
}

/// `[queue]`: outbound delivery: retries, expiry, concurrency.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSection {
    /// Seconds before the first retry of a temporary failure; the delay
    /// doubles with each attempt (with ±20% jitter).
    pub retry_initial: u64,
    /// Longest delay between attempts, seconds.
    pub retry_max: u64,
    /// Seconds a message is tried before it bounces.
    pub expiry: u64,
    /// Seconds after which the sender gets a delay notice; 0: never.
    pub delay_notice: u64,
    /// Seconds a delivery worker holds a message before another may take
    /// it over (after a crash).
    pub lease: u64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// Connections to one destination domain at once.
    pub per_domain: usize,
    /// Port of MX hosts (25; other values are for tests).
    pub smtp_port: u16,
    /// Use STARTTLS when the next server offers it (any certificate is
    /// accepted: opportunistic TLS).
    pub starttls: bool,
    /// Seconds to wait for a connection.
    pub connect_timeout: u64,
    /// Milliseconds an SMTP session to a destination is kept open after a
    /// delivery, for the next message to the same server (sent after RSET);
    /// 0: one session per message. Idle sessions count against
    /// `per_domain`.
    pub reuse_idle_ms: u64,
}

impl Default for QueueSection {
    fn default() -> Self {
        let d = tern_smtp::outbound::OutboundConfig::default();
        QueueSection {
            retry_initial: d.retry_initial.as_secs(),
            retry_max: d.retry_max.as_secs(),
            expiry: d.expiry.as_secs(),
            delay_notice: 0,
            lease: d.lease.as_secs(),
            concurrency: d.concurrency,
            per_domain: d.per_domain,
            smtp_port: d.smtp_port,
            starttls: d.starttls,
            connect_timeout: d.connect_timeout.as_secs(),
            reuse_idle_ms: u64::try_from(d.reuse_idle.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// `[dkim]`: signing of outgoing mail.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DkimSection {
    /// Sign outgoing mail with the From domain's key when it has one.
    pub sign: bool,
    /// The selector of keys made by `tern domain add` and at start for
    /// configured domains without a key.
    pub selector: String,
    /// The algorithm of new keys.
    pub algorithm: DkimKind,
}

impl Default for DkimSection {
    fn default() -> Self {
        DkimSection {
            sign: true,
            selector: tern_smtp::outbound::dkim::DEFAULT_SELECTOR.to_owned(),
            algorithm: DkimKind::Ed25519,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DkimKind {
    /// Ed25519-SHA256 (RFC 8463).
    #[default]
    Ed25519,
    /// RSA-SHA256 with a 2048-bit key.
    Rsa,
}

impl DkimKind {
    pub fn algorithm(self) -> tern_store::dkim::DkimAlgorithm {
        match self {
            DkimKind::Ed25519 => tern_store::dkim::DkimAlgorithm::Ed25519Sha256,
            DkimKind::Rsa => tern_store::dkim::DkimAlgorithm::RsaSha256,
        }
    }
}

/// `[log]`: what is logged (to stderr) and how.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Overridden by the `TERN_LOG` environment variable (an env-filter
    /// directive such as `debug` or `tern=debug,tern_store=info`).
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Config {
    /// The configuration for `--config FILE`, or the defaults without it.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Config> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Config::parse(&text).with_context(|| format!("config file {} refused", path.display()))
    }

    /// Parses and validates a config file's text. Errors name the offending
    /// key as a dotted path (`listen.smtp`, `domains[1]`).
    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let config: Config = serde_path_to_error::deserialize(toml::Deserializer::new(text))
            .map_err(|err| {
                let key = err.path().to_string();
                let detail = err.inner().to_string();
                let detail = detail.trim_end();
                if key == "." {
                    // A syntax error: no key to name; toml shows line and column.
                    anyhow::anyhow!("{detail}")
                } else if detail.contains("unknown field") {
                    anyhow::anyhow!("unknown key `{key}`: {detail}")
                } else {
                    anyhow::anyhow!("bad value for key `{key}`: {detail}")
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    fn validate(&self) -> anyhow::Result<()> {
        if self.data_dir.as_os_str().is_empty() {
            bail!("bad value for key `data_dir`: must not be empty");
        }
        if !is_domain_name(&self.hostname) {
            bail!(
                "bad value for key `hostname`: {:?} is not a host name",
                self.hostname
            );
        }
        for (i, domain) in self.domains.iter().enumerate() {
            if !is_domain_name(domain) {
                bail!("bad value for key `domains[{i}]`: {domain:?} is not a domain name");
            }
        }
        let mut listen = vec![
            ("listen.jmap", self.listen.jmap),
            ("listen.smtp", self.listen.smtp),
            ("listen.submission", self.listen.submission),
        ];
        if let Some(addr) = self.listen.submissions {
            listen.push(("listen.submissions", addr));
        }
        if let Some(addr) = self.listen.metrics {
            listen.push(("listen.metrics", addr));
        }
        for (i, (key, addr)) in listen.iter().enumerate() {
            if let Some((other, _)) = listen[..i].iter().find(|(_, a)| a == addr) {
                bail!("bad value for key `{key}`: {addr} is already used by `{other}`");
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            let missing = if self.tls.cert.is_none() {
                "cert"
            } else {
                "key"
            };
            bail!("bad value for key `tls.{missing}`: `tls.cert` and `tls.key` go together");
        }
        if let Some(url) = &self.jmap.base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            bail!("bad value for key `jmap.base_url`: {url:?} is not an http(s) URL");
        }
        let minimums = [
            ("jmap.max_upload_size", self.jmap.max_upload_size, 1),
            (
                "jmap.max_concurrent_uploads",
                self.jmap.max_concurrent_uploads as u64,
                1,
            ),
            (
                "jmap.max_request_size",
                self.jmap.max_request_size as u64,
                1024,
            ),
            (
                "jmap.max_concurrent_requests",
                self.jmap.max_concurrent_requests as u64,
                1,
            ),
            (
                "jmap.max_calls_in_request",
                self.jmap.max_calls_in_request as u64,
                1,
            ),
            (
                "jmap.max_objects_in_get",
                self.jmap.max_objects_in_get as u64,
                1,
            ),
            (
                "jmap.max_objects_in_set",
                self.jmap.max_objects_in_set as u64,
                1,
            ),
            (
                "smtp.max_message_size",
                self.smtp.max_message_size as u64,
                1024,
            ),
            ("smtp.max_recipients", self.smtp.max_recipients as u64, 1),
            (
                "smtp.max_connections_per_ip",
                self.smtp.max_connections_per_ip as u64,
                1,
            ),
            ("smtp.max_connections", self.smtp.max_connections as u64, 1),
            (
                "smtp.connections_per_minute",
                u64::from(self.smtp.connections_per_minute),
                1,
            ),
            ("smtp.command_timeout", self.smtp.command_timeout, 1),
            ("smtp.data_timeout", self.smtp.data_timeout, 1),
            ("dns.timeout", self.dns.timeout, 1),
            ("queue.retry_initial", self.queue.retry_initial, 1),
            ("queue.retry_max", self.queue.retry_max, 1),
            ("queue.expiry", self.queue.expiry, 1),
            ("queue.lease", self.queue.lease, 1),
            ("queue.concurrency", self.queue.concurrency as u64, 1),
            ("queue.per_domain", self.queue.per_domain as u64, 1),
            ("queue.smtp_port", u64::from(self.queue.smtp_port), 1),
            ("queue.connect_timeout", self.queue.connect_timeout, 1),
            ("jmap.push.websocket_ping", self.jmap.push.websocket_ping, 1),
            ("jmap.push.retry_max", self.jmap.push.retry_max, 1),
            (
                "jmap.push.max_failures",
                u64::from(self.jmap.push.max_failures),
                1,
            ),
            ("jmap.push.timeout", self.jmap.push.timeout, 1),
        ];
        for (key, value, min) in minimums {
            if value < min {
                bail!("bad value for key `{key}`: must be at least {min}");
            }
        }
        self.validate_spam()?;
        if self.queue.retry_max < self.queue.retry_initial {
            bail!("bad value for key `queue.retry_max`: must be at least `queue.retry_initial`");
        }
        for (domain, target) in &self.routes {
            if domain != "*" && !is_domain_name(domain) {
                bail!(
                    "bad value for key `routes.{domain}`: the key must be a domain name or \"*\""
                );
            }
            let valid =
                tern_smtp::outbound::route::split_host_port(target, 25).is_some_and(|(host, _)| {
                    is_domain_name(&host) || host.parse::<std::net::IpAddr>().is_ok()
                });
            if !valid {
                bail!("bad value for key `routes.{domain}`: {target:?} is not \"host:port\"");
            }
        }
        if self.search.query_wait_ms > MAX_QUERY_WAIT_MS {
            bail!("bad value for key `search.query_wait_ms`: must be at most {MAX_QUERY_WAIT_MS}");
        }
        if !(0..=19).contains(&self.search.indexer_nice) {
            bail!("bad value for key `search.indexer_nice`: must be from 0 to 19");
        }
        if !is_domain_name(&self.dkim.selector) {
            bail!(
                "bad value for key `dkim.selector`: {:?} is not a DNS label",
                self.dkim.selector
            );
        }
        Ok(())
    }

    /// The JMAP server's configuration.
    pub fn jmap_config(&self) -> tern_jmap::JmapConfig {
        let mut jmap = tern_jmap::JmapConfig::new(self.listen.jmap);
        jmap.base_url = self.jmap.base_url.clone();
        jmap.tls = match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => Some(tern_jmap::TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        };
        let limits = &mut jmap.limits;
        limits.max_size_upload = self.jmap.max_upload_size;
        limits.max_concurrent_upload = self.jmap.max_concurrent_uploads;
        limits.max_size_request = self.jmap.max_request_size;
        limits.max_concurrent_requests = self.jmap.max_concurrent_requests;
        limits.max_calls_in_request = self.jmap.max_calls_in_request;
        limits.max_objects_in_get = self.jmap.max_objects_in_get;
        limits.max_objects_in_set = self.jmap.max_objects_in_set;
        let p = &self.jmap.push;
        jmap.push = tern_jmap::PushConfig {
            coalesce: Duration::from_millis(p.coalesce_ms),
            websocket_ping: Duration::from_secs(p.websocket_ping),
            extra_roots: p.ca_files.clone(),
            allow_private_addresses: p.allow_private_addresses,
            retry_initial: Duration::from_millis(p.retry_initial_ms),
            retry_max: Duration::from_secs(p.retry_max),
            max_failures: p.max_failures,
            timeout: Duration::from_secs(p.timeout),
        };
        jmap
    }

    /// The search index's options (`[search]`).
    pub fn search_options(&self) -> tern_search::IndexOptions {
        tern_search::IndexOptions {
            query_wait: Duration::from_millis(self.search.query_wait_ms),
            ..Default::default()
        }
    }

    /// The search indexer's settings (`[search]`).
    pub fn indexer_config(&self) -> tern_search::IndexerConfig {
        tern_search::IndexerConfig {
            nice: self.search.indexer_nice,
            ..Default::default()
        }
    }

    /// Outbound delivery's configuration.
    pub fn outbound_config(&self) -> tern_smtp::outbound::OutboundConfig {
        let q = &self.queue;
        let secs = Duration::from_secs;
        tern_smtp::outbound::OutboundConfig {
            hostname: self.hostname.clone(),
            dns: tern_smtp::DnsConfig {
                nameservers: self.dns.nameservers.clone(),
                timeout: secs(self.dns.timeout),
            },
            routes: self.routes.clone(),
            smtp_port: q.smtp_port,
            retry_initial: secs(q.retry_initial),
            retry_max: secs(q.retry_max),
            expiry: secs(q.expiry),
            delay_notice: (q.delay_notice > 0).then(|| secs(q.delay_notice)),
            lease: secs(q.lease),
            concurrency: q.concurrency,
            per_domain: q.per_domain,
            starttls: q.starttls,
            dkim: self.dkim.sign,
            connect_timeout: secs(q.connect_timeout),
            reuse_idle: std::time::Duration::from_millis(q.reuse_idle_ms),
            ..Default::default()
        }
    }

    /// The SMTP server's configuration.
    pub fn smtp_config(&self) -> tern_smtp::SmtpConfig {
        let defaults = tern_smtp::SmtpConfig::default();
        let s = &self.smtp;
        tern_smtp::SmtpConfig {
            hostname: self.hostname.clone(),
            data_dir: self.data_dir.clone(),
            listen: tern_smtp::ListenConfig {
                smtp: Some(self.listen.smtp),
                submission: Some(self.listen.submission),
                submissions: self.listen.submissions,
            },
            tls: tern_smtp::TlsConfig {
                cert: self.tls.cert.clone(),
                key: self.tls.key.clone(),
            },
            allow_plaintext_auth: s.allow_plaintext_auth,
            limits: tern_smtp::Limits {
                max_message_size: s.max_message_size,
                max_recipients: s.max_recipients,
                max_connections_per_ip: s.max_connections_per_ip,
                max_connections: s.max_connections,
                rate_limit: s.connections_per_minute,
                rate_period: Duration::from_secs(60),
                command_timeout: Duration::from_secs(s.command_timeout),
                data_timeout: Duration::from_secs(s.data_timeout),
                ..defaults.limits
            },
            dns: tern_smtp::DnsConfig {
                nameservers: self.dns.nameservers.clone(),
                timeout: Duration::from_secs(self.dns.timeout),
            },
            checks: tern_smtp::ChecksConfig {
                enabled: s.checks.enabled,
                dmarc_reject: s.checks.dmarc_reject,
                dmarc_quarantine: s.checks.dmarc_quarantine,
            },
            spam: self.spam_config(),
            virus: self.virus_config(),
        }
    }

    /// `[spam]` and `[virus]`: what `validate` cannot see from types.
    fn validate_spam(&self) -> anyhow::Result<()> {
        let s = &self.spam;
        let (junk, reject) = (s.junk_threshold.0, s.reject_threshold.0);
        if !junk.is_finite() {
            bail!("bad value for key `spam.junk_threshold`: must be a number");
        }
        if !reject.is_finite() || reject <= junk {
            bail!("bad value for key `spam.reject_threshold`: must be above `spam.junk_threshold`");
        }
        if !s.outbound.spam_threshold.0.is_finite() {
            bail!("bad value for key `spam.outbound.spam_threshold`: must be a number");
        }
        for (key, zones) in [
            ("spam.dnsbl_zones", &s.dnsbl_zones),
            ("spam.uribl_zones", &s.uribl_zones),
        ] {
            for (i, zone) in zones.iter().enumerate() {
                if !is_domain_name(zone) {
                    bail!("bad value for key `{key}[{i}]`: {zone:?} is not a DNS zone");
                }
            }
        }
        if let Some(path) = &s.rules_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                anyhow::anyhow!(
                    "bad value for key `spam.rules_file`: {}: {e}",
                    path.display()
                )
            })?;
            if let Err(err) = tern_smtp::spam::Rules::parse(&text) {
                bail!(
                    "bad value for key `spam.rules_file`: {}: {err}",
                    path.display()
                );
            }
        }
        if let Some(addr) = &self.virus.clamd
            && tern_smtp::ClamdAddress::parse(addr).is_none()
        {
            bail!(
                "bad value for key `virus.clamd`: {addr:?} is not \"tcp:HOST:PORT\" or \"unix:PATH\""
            );
        }
        if self.virus.timeout == 0 {
            bail!("bad value for key `virus.timeout`: must be at least 1");
        }
        if self.virus.max_size < 1024 {
            bail!("bad value for key `virus.max_size`: must be at least 1024");
        }
        Ok(())
    }

    /// The spam filter's configuration.
    pub fn spam_config(&self) -> tern_smtp::SpamConfig {
        let s = &self.spam;
        tern_smtp::SpamConfig {
            enabled: s.enabled,
            junk_threshold: s.junk_threshold.0,
            reject_threshold: s.reject_threshold.0,
            dnsbl_zones: s.dnsbl_zones.clone(),
            uribl_zones: s.uribl_zones.clone(),
            learning: s.learning,
            rules_file: s.rules_file.clone(),
            outbound: tern_smtp::spam::OutboundConfig {
                messages_per_hour: s.outbound.messages_per_hour,
                recipients_per_hour: s.outbound.recipients_per_hour,
                spam_threshold: s.outbound.spam_threshold.0,
                max_strikes: s.outbound.max_strikes,
                block_for: Duration::from_secs(s.outbound.block_minutes * 60),
            },
        }
    }

    /// The virus scanner's configuration.
    pub fn virus_config(&self) -> tern_smtp::VirusConfig {
        let v = &self.virus;
        tern_smtp::VirusConfig {
            clamd: v.clamd.as_deref().and_then(tern_smtp::ClamdAddress::parse),
            on_unreachable: match v.on_unreachable {
                OnUnreachable::Tempfail => tern_smtp::Unreachable::TempFail,
                OnUnreachable::Accept => tern_smtp::Unreachable::Accept,
            },
            timeout: Duration::from_secs(v.timeout),
            max_size: v.max_size,
            scan_submissions: v.scan_submissions,
        }
    }
}

/// Letters, digits, `-` and `.`, in labels of 1..=63 characters.
fn is_domain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// This machine's host name, or `localhost` when it has no usable one.
fn machine_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .find(|name| is_domain_name(name))
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text`, expecting a refusal whose message contains each of `expected`.
    fn check_refused(text: &str, expected: &[&str]) {
        let err = match Config::parse(text) {
            Ok(config) => panic!("accepted {text:?} as {config:?}"),
            Err(err) => format!("{err:#}"),
        };
        for want in expected {
            assert!(
                err.contains(want),
                "error for {text:?} lacks {want:?}:\n{err}"
            );
        }
    }

    #[test]
    fn shipped_config_file_is_the_defaults() {
        let text = include_str!("../resources/config.toml");
        assert_eq!(Config::parse(text).unwrap(), Config::default());
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = Config::default();
        assert_eq!(config.data_dir, Path::new("./data"));
        assert_eq!(config.domains, ["localhost"]);
        assert_eq!(config.listen.jmap.to_string(), "127.0.0.1:8080");
        assert_eq!(config.listen.smtp.to_string(), "127.0.0.1:2525");
        assert_eq!(config.listen.submission.to_string(), "127.0.0.1:5870");
        assert_eq!(config.log, LogConfig::default());
        assert!(is_domain_name(&config.hostname));
    }

    #[test]
    fn production_example_parses() {
        let config = Config::parse(
            r#"
            data_dir = "/var/lib/tern"
            hostname = "mx.example.com"
            domains = ["example.com", "example.org"]
            [listen]
            jmap = "0.0.0.0:443"
            smtp = "0.0.0.0:25"
            submission = "0.0.0.0:587"
            [log]
            level = "debug"
            format = "json"
            "#,
        )
        .unwrap();
        assert_eq!(config.data_dir, Path::new("/var/lib/tern"));
        assert_eq!(config.hostname, "mx.example.com");
        assert_eq!(config.domains, ["example.com", "example.org"]);
        assert_eq!(config.listen.jmap.to_string(), "0.0.0.0:443");
        assert_eq!(config.listen.smtp.to_string(), "0.0.0.0:25");
        assert_eq!(config.listen.submission.to_string(), "0.0.0.0:587");
        assert_eq!(config.log.level, LogLevel::Debug);
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn partial_section_keeps_other_defaults() {
        let config = Config::parse("[listen]\nsmtp = \"0.0.0.0:25\"\n").unwrap();
        assert_eq!(config.listen.smtp.to_string(), "0.0.0.0:25");
        assert_eq!(config.listen.jmap, ListenConfig::default().jmap);
    }

    #[test]
    fn bad_socket_address_names_the_key() {
        check_refused(
            "[listen]\nsmtp = \"not-an-address\"\n",
            &["`listen.smtp`", "line 2"],
        );
        check_refused("[listen]\nsubmission = 587\n", &["`listen.submission`"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        check_refused("colour = \"blue\"\n", &["unknown key `colour`"]);
        check_refused(
            "[listen]\nimap = \"127.0.0.1:143\"\n",
            &["unknown key `listen.imap`"],
        );
        check_refused("[logging]\nlevel = \"info\"\n", &["unknown key `logging`"]);
        check_refused("[log]\nlevle = \"info\"\n", &["unknown key `log.levle`"]);
    }

    #[test]
    fn bad_enum_values_are_named() {
        check_refused("[log]\nlevel = \"loud\"\n", &["`log.level`", "loud"]);
        check_refused("[log]\nformat = \"xml\"\n", &["`log.format`", "xml"]);
    }

    #[test]
    fn bad_types_are_named() {
        check_refused("domains = \"example.com\"\n", &["`domains`"]);
        check_refused("domains = [\"example.com\", 7]\n", &["`domains[1]`"]);
        check_refused("listen = 3\n", &["`listen`"]);
    }

    #[test]
    fn validation_names_the_key() {
        check_refused(
            "domains = [\"ok.example\", \"not a domain\"]\n",
            &["`domains[1]`"],
        );
        check_refused("hostname = \"\"\n", &["`hostname`"]);
        check_refused("data_dir = \"\"\n", &["`data_dir`"]);
        check_refused(
            "[listen]\nsmtp = \"127.0.0.1:2525\"\nsubmission = \"127.0.0.1:2525\"\n",
            &["`listen.submission`", "`listen.smtp`"],
        );
    }

    #[test]
    fn spam_and_virus_sections_map_and_validate() {
        let config = Config::parse(
            "[spam]\njunk_threshold = 4.5\nreject_threshold = 12\ndnsbl_zones = [\"zen.example\"]\n\
             learning = false\n[spam.outbound]\nmessages_per_hour = 10\nblock_minutes = 5\n\
             [virus]\nclamd = \"unix:/run/clamav/clamd.ctl\"\non_unreachable = \"accept\"\n",
        )
        .unwrap();
        let spam = config.spam_config();
        assert_eq!(spam.junk_threshold, 4.5);
        assert_eq!(spam.reject_threshold, 12.0);
        assert_eq!(spam.dnsbl_zones, ["zen.example"]);
        assert!(!spam.learning);
        assert_eq!(spam.outbound.messages_per_hour, 10);
        assert_eq!(spam.outbound.block_for, Duration::from_secs(300));
        let virus = config.virus_config();
        assert_eq!(
            virus.clamd,
            Some(tern_smtp::ClamdAddress::Unix(
                "/run/clamav/clamd.ctl".into()
            ))
        );
        assert_eq!(virus.on_unreachable, tern_smtp::Unreachable::Accept);
        assert_eq!(Config::default().virus_config().clamd, None);
        check_refused(
            "[spam]\njunk_threshold = 9\nreject_threshold = 8\n",
            &["`spam.reject_threshold`"],
        );
        check_refused(
            "[spam]\ndnsbl_zones = [\"not a zone\"]\n",
            &["`spam.dnsbl_zones[0]`"],
        );
        check_refused("[spam]\nthreshold = 3\n", &["unknown key `spam.threshold`"]);
        check_refused(
            "[spam.outbound]\nrate = 3\n",
            &["unknown key `spam.outbound.rate`"],
        );
        check_refused("[virus]\nclamd = \"somewhere\"\n", &["`virus.clamd`"]);
        check_refused(
            "[virus]\non_unreachable = \"drop\"\n",
            &["`virus.on_unreachable`"],
        );
        check_refused(
            "[spam]\nrules_file = \"/nonexistent/rules.toml\"\n",
            &["`spam.rules_file`"],
        );
    }

    #[test]
    fn search_section_maps_and_validates() {
        assert_eq!(
            Config::default().search_options().query_wait,
            Duration::from_secs(2)
        );
        let config = Config::parse("[search]\nquery_wait_ms = 250\n").unwrap();
        assert_eq!(
            config.search_options().query_wait,
            Duration::from_millis(250)
        );
        let config = Config::parse("[search]\nquery_wait_ms = 0\n").unwrap();
        assert_eq!(config.search_options().query_wait, Duration::ZERO);
        check_refused(
            "[search]\nquery_wait_ms = 30001\n",
            &["`search.query_wait_ms`", "at most 30000"],
        );
        check_refused(
            "[search]\nquery_wait_ms = -1\n",
            &["`search.query_wait_ms`"],
        );
        check_refused("[search]\nwait = 1\n", &["unknown key `search.wait`"]);
        assert_eq!(Config::default().indexer_config().nice, 10);
        let config = Config::parse("[search]\nindexer_nice = 0\n").unwrap();
        assert_eq!(config.indexer_config().nice, 0);
        check_refused(
            "[search]\nindexer_nice = 20\n",
            &["`search.indexer_nice`", "from 0 to 19"],
        );
    }

    #[test]
    fn syntax_errors_give_the_line() {
        check_refused("data_dir = \n", &["line 1"]);
    }
}
