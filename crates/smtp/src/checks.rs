//! Sender authentication of received mail with mail-auth: SPF for the HELO
//! and MAIL FROM identities (RFC 7208), DKIM (RFC 6376), ARC (RFC 8617),
//! DMARC with the author domain's policy (RFC 7489), and iprev (RFC 8601
//! §3). The results become one `Authentication-Results` header; DMARC's
//! policy becomes a [`Verdict`].
//!
//! DNS goes through a hickory resolver whose nameservers come from
//! [`DnsConfig`], so tests point it at a local server with a test zone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use mail_auth::dmarc::Policy;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DmarcResult, MessageAuthenticator,
    dmarc::verify::DmarcParameters,
};

use crate::config::{ChecksConfig, DnsConfig};
use crate::error::Error;
use crate::reply::Reply;

/// What to do with a message after its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Deliver to the inbox.
    Accept,
    /// Deliver to Junk, marked `$junk` (DMARC p=quarantine).
    Quarantine,
    /// Refuse with this reply (DMARC p=reject).
    Reject(Reply),
}

/// The checks' results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckOutcome {
    /// Header lines to prepend, each ending in CRLF.
    pub headers: String,
    /// The decision.
    pub verdict: Verdict,
}

/// What the checks look at.
#[derive(Debug, Clone, Copy)]
pub struct CheckInput<'a> {
    /// The client's address.
    pub ip: IpAddr,
    /// Its EHLO/HELO name.
    pub helo: &'a str,
    /// The MAIL FROM address; empty for `<>`.
    pub mail_from: &'a str,
    /// The message as received.
    pub message: &'a [u8],
}

/// Runs the checks. Cheap to clone (the resolver and its cache are shared).
#[derive(Clone)]
pub struct MailAuthChecker {
    resolver: MessageAuthenticator,
    hostname: Arc<str>,
    policy: ChecksConfig,
}

impl std::fmt::Debug for MailAuthChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailAuthChecker")
            .field("hostname", &self.hostname)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl MailAuthChecker {
    /// A checker resolving through `dns`, naming itself `hostname` in the
    /// headers it writes.
    pub fn new(hostname: &str, dns: &DnsConfig, policy: ChecksConfig) -> Result<Self, Error> {
        let mut options = ResolverOpts::default();
        options.timeout = dns.timeout;
        options.attempts = 1;
        let resolver = if dns.nameservers.is_empty() {
            MessageAuthenticator::new_system_conf()
        } else {
            let servers = dns.nameservers.iter().map(name_server).collect();
            MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), options)
        }
        .map_err(|e| Error::Resolver(e.to_string()))?;
        Ok(MailAuthChecker {
            resolver,
            hostname: hostname.into(),
            policy,
        })
    }

    /// Checks one message received from `input.ip`.
    pub async fn check(&self, input: CheckInput<'_>) -> CheckOutcome {
        let auth = &self.resolver;
        let host = &*self.hostname;
        let helo = input.helo;
        let ip = input.ip;
        let spf_ehlo = auth
            .verify_spf(SpfParameters::verify_ehlo(ip, helo, host))
            .await;
        let spf_mail_from = if input.mail_from.is_empty() {
            // The null sender: the MAIL FROM identity is postmaster@helo
            // (RFC 7208 §2.4), which the HELO check just did.
            spf_ehlo.clone()
        } else {
            auth.verify_spf(SpfParameters::verify_mail_from(
                ip,
                helo,
                host,
                input.mail_from,
            ))
            .await
        };
        let iprev = auth.verify_iprev(ip).await;

        let mut results = AuthenticationResults::new(host);
        let verdict;
        match AuthenticatedMessage::parse(input.message) {
            Some(message) => {
                let dkim = auth.verify_dkim(&message).await;
                let arc = auth.verify_arc(&message).await;
                let mail_from_domain = match input.mail_from.rsplit_once('@') {
                    Some((_, domain)) => domain,
                    None => helo,
                };
                let dmarc = auth
                    .verify_dmarc(DmarcParameters::new(
                        &message,
                        &dkim,
                        mail_from_domain,
                        &spf_mail_from,
                    ))
                    .await;
                verdict = self.verdict(&dmarc);
                results = results
                    .with_dkim_results(&dkim, message.from())
                    .with_spf_ehlo_result(&spf_ehlo, ip, helo)
                    .with_spf_mailfrom_result(&spf_mail_from, ip, input.mail_from, helo)
                    .with_arc_result(&arc, ip)
                    .with_dmarc_result(&dmarc)
                    .with_iprev_result(&iprev, ip);
            }
            None => {
                // Headers mail-auth cannot parse: SPF and iprev still apply.
                verdict = Verdict::Accept;
                results = results
                    .with_spf_ehlo_result(&spf_ehlo, ip, helo)
                    .with_spf_mailfrom_result(&spf_mail_from, ip, input.mail_from, helo)
                    .with_iprev_result(&iprev, ip);
            }
        }
        let mut headers = String::new();
        push_header(&mut headers, "Authentication-Results", &results.to_string());
        CheckOutcome { headers, verdict }
    }

    fn verdict(&self, dmarc: &mail_auth::DmarcOutput) -> Verdict {
        if !matches!(dmarc.result(), DmarcResult::Fail(_)) {
            return Verdict::Accept;
        }
        match dmarc.policy() {
            Policy::Reject if self.policy.dmarc_reject => Verdict::Reject(Reply::owned(
                550,
                [5, 7, 1],
                format!(
                    "Rejected by the DMARC policy of {}",
                    sanitize(dmarc.domain())
                ),
            )),
            Policy::Reject | Policy::Quarantine if self.policy.dmarc_quarantine => {
                Verdict::Quarantine
            }
            _ => Verdict::Accept,
        }
    }
}

pub(crate) fn name_server(addr: &SocketAddr) -> NameServerConfig {
    let mut udp = ConnectionConfig::udp();
    udp.port = addr.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = addr.port();
    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
    server.connections = vec![udp, tcp];
    server
}

/// Appends `Name: value` CRLF, folding the value's own CRLFs as they are.
fn push_header(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push_str(": ");
    out.push_str(value);
    out.push_str("\r\n");
}

/// A domain for a reply text: printable ASCII only.
fn sanitize(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect()
}
