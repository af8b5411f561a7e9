//! The SMTP server's configuration. Plain structs with defaults; the binary
//! maps its TOML onto them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything [`crate::serve`] needs.
#[derive(Debug, Clone, PartialEq)]
pub struct SmtpConfig {
    /// The name in the greeting, EHLO reply, Received and
    /// Authentication-Results headers, and a generated certificate.
    pub hostname: String,
    /// Where a generated certificate is kept (`<data_dir>/tls/`).
    pub data_dir: PathBuf,
    /// The listeners.
    pub listen: ListenConfig,
    /// Certificate and key.
    pub tls: TlsConfig,
    /// Offer AUTH on connections without TLS (submission only). Off by
    /// default: passwords travel only encrypted.
    pub allow_plaintext_auth: bool,
    /// Abuse and size limits.
    pub limits: Limits,
    /// The resolver for SPF, DKIM, DMARC, ARC and iprev.
    pub dns: DnsConfig,
    /// Authentication checks on mail received by the MX listener.
    pub checks: ChecksConfig,
    /// Spam scoring, DNSBL and submission limits (`crate::spam`).
    pub spam: crate::spam::SpamConfig,
    /// Virus scanning with clamd (`crate::virus`).
    pub virus: crate::virus::VirusConfig,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            hostname: "localhost".to_owned(),
            data_dir: PathBuf::from("./data"),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            allow_plaintext_auth: false,
            limits: Limits::default(),
            dns: DnsConfig::default(),
            checks: ChecksConfig::default(),
            spam: crate::spam::SpamConfig::default(),
            virus: crate::virus::VirusConfig::default(),
        }
    }
}

/// Listener addresses; `None` disables one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// MX (port 25 in production). Default 127.0.0.1:2525.
    pub smtp: Option<SocketAddr>,
    /// Submission with STARTTLS (port 587). Default 127.0.0.1:5870.
    pub submission: Option<SocketAddr>,
    /// Submission over implicit TLS (port 465). Off by default.
    pub submissions: Option<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            smtp: Some(SocketAddr::from(([127, 0, 0, 1], 2525))),
            submission: Some(SocketAddr::from(([127, 0, 0, 1], 5870))),
            submissions: None,
        }
    }
}

/// PEM files of the certificate chain and private key. Both or neither:
/// without them a self-signed certificate for the hostname is generated at
/// first start and kept in `<data_dir>/tls/`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: Option<PathBuf>,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
}

/// Limits that bound what one client can cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest message, in bytes; checked at MAIL SIZE= and while reading
    /// DATA/BDAT. Default 50 MiB.
    pub max_message_size: usize,
    /// Recipients per message (RCPT beyond: 452 4.5.3). Default 100.
    pub max_recipients: usize,
    /// Negative replies before the session is closed. Default 10.
    pub max_errors: usize,
    /// Longest command line, CRLF included. Default 4096.
    pub max_line_length: usize,
    /// How long to wait for a command. Default 5 minutes (RFC 5321
    /// §4.5.3.2.7).
    pub command_timeout: Duration,
    /// How long to wait for the next piece of message data. Default 3
    /// minutes (RFC 5321 §4.5.3.2.5).
    pub data_timeout: Duration,
    /// How long a TLS handshake may take. Default 30 seconds.
    pub handshake_timeout: Duration,
    /// Simultaneous connections from one IP address. Default 20.
    pub max_connections_per_ip: usize,
    /// Simultaneous connections in all. Default 1000.
    pub max_connections: usize,
    /// New connections from one IP address per `rate_period`. Default 60.
    pub rate_limit: u32,
    /// The rate limit's window. Default 1 minute.
    pub rate_period: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            max_recipients: 100,
            max_errors: 10,
            max_line_length: 4096,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            handshake_timeout: Duration::from_secs(30),
            max_connections_per_ip: 20,
            max_connections: 1000,
            rate_limit: 60,
            rate_period: Duration::from_secs(60),
        }
    }
}

/// The DNS resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Nameservers to ask (UDP, then TCP). Empty: the system's
    /// (`/etc/resolv.conf`).
    pub nameservers: Vec<SocketAddr>,
    /// Timeout of one query. Default 5 seconds.
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }
}

/// What the MX listener checks and enforces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChecksConfig {
    /// Run SPF, DKIM, ARC, DMARC and iprev. When off, no
    /// Authentication-Results header is added and no DNS query is made.
    pub enabled: bool,
    /// Refuse (550 5.7.1) mail that fails DMARC of a domain with
    /// `p=reject`. When off, such mail is quarantined instead.
    pub dmarc_reject: bool,
    /// File mail that fails DMARC of a domain with `p=quarantine` (or a
    /// `p=reject` not enforced) in Junk with `$junk`.
    pub dmarc_quarantine: bool,
}

impl Default for ChecksConfig {
    fn default() -> Self {
        ChecksConfig {
            enabled: true,
            dmarc_reject: true,
            dmarc_quarantine: true,
        }
    }
}
