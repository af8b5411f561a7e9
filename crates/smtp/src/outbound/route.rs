//! Where mail for a domain goes: a static route from the configuration
//! (`[routes]`: smart hosts, tests), or the domain's MX records (RFC 5321
//! §5.1): lowest preference first, equal preferences in random order, the
//! domain's own A/AAAA records when it has no MX, and a permanent failure
//! for a null MX (RFC 7505) or a domain that does not exist.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use mail_auth::common::cache::NoCache;
use mail_auth::hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts,
};
use mail_auth::hickory_resolver::proto::op::ResponseCode;
use mail_auth::{
    DnsError, Error as AuthError, IpLookupStrategy, MX, MessageAuthenticator, RecordSet,
};

use crate::config::DnsConfig;

/// One host to try, with its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The host's name (for TLS and the DSN's Remote-MTA).
    pub host: String,
    /// Its addresses with the port.
    pub addrs: Vec<SocketAddr>,
}

/// Why no host could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// The domain accepts no mail: a null MX, or it does not exist.
    Permanent(String),
    /// DNS failed for now.
    Temporary(String),
}

/// A resolver for MX, A and AAAA through the configured nameservers.
pub fn resolver(dns: &DnsConfig) -> Result<MessageAuthenticator, String> {
    let mut options = ResolverOpts::default();
    options.timeout = dns.timeout;
    options.attempts = 2;
    if dns.nameservers.is_empty() {
        MessageAuthenticator::new_system_conf()
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                server.connections = vec![udp, tcp];
                server
            })
            .collect();
        MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), options)
    }
    .map_err(|e| e.to_string())
}

type Uncached<T> = Option<&'static NoCache<Box<str>, RecordSet<T>>>;
const NO_IPV4: Uncached<std::net::Ipv4Addr> = None;
const NO_IPV6: Uncached<std::net::Ipv6Addr> = None;
const NO_MX: Uncached<MX> = None;

fn not_found(e: &AuthError) -> Option<ResponseCode> {
    match e {
        AuthError::Dns(DnsError::RecordNotFound(code)) => Some(*code),
        _ => None,
    }
}

async fn addresses(
    resolver: &MessageAuthenticator,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, AuthError> {
    if let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let ips = resolver
        .ip_lookup(host, IpLookupStrategy::Ipv4thenIpv6, 4, NO_IPV4, NO_IPV6)
        .await?;
    Ok(ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

/// Splits `host:port` (a bracketed IPv6 literal allowed); the port
/// defaults to `default_port`.
pub fn split_host_port(s: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((host.to_owned(), port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None => Some((s.to_owned(), default_port)),
    }
}

/// The hosts to try for `domain`, in order. `routes` maps a domain (or
/// `*`, every domain) to `host:port`; MX hosts are contacted on `port`.
pub async fn resolve(
    resolver: &MessageAuthenticator,
    routes: &BTreeMap<String, String>,
    domain: &str,
    port: u16,
) -> Result<Vec<Hop>, RouteError> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if let Some(route) = routes.get(&domain).or_else(|| routes.get("*")) {
        let (host, port) = split_host_port(route, port)
            .ok_or_else(|| RouteError::Permanent(format!("bad route {route:?}")))?;
        let addrs = addresses(resolver, &host, port)
            .await
            .map_err(|e| RouteError::Temporary(format!("route host {host}: {e}")))?;
        return Ok(vec![Hop { host, addrs }]);
    }
    let exchanges: Vec<String> = match resolver.mx_lookup(domain.as_str(), NO_MX).await {
        Ok(set) => {
            let mut hosts = Vec::new();
            for mx in set.rrset.iter() {
                let mut group: Vec<String> = mx
                    .exchanges
                    .iter()
                    .map(|e| e.trim_end_matches('.').to_owned())
                    .collect();
                {
                    use rand::seq::SliceRandom;
                    group.shuffle(&mut rand::thread_rng());
                }
                hosts.extend(group);
            }
            if hosts.len() == 1 && hosts[0].is_empty() {
                return Err(RouteError::Permanent(format!(
                    "{domain} does not accept mail (null MX, RFC 7505)"
                )));
            }
            hosts.retain(|h| !h.is_empty());
            hosts
        }
        Err(e) => match not_found(&e) {
            Some(ResponseCode::NXDomain) => {
                return Err(RouteError::Permanent(format!("{domain} does not exist")));
            }
            // No MX: the domain itself is the mail host (RFC 5321 §5.1).
            Some(_) => vec![domain.clone()],
            None => {
                return Err(RouteError::Temporary(format!(
                    "MX lookup for {domain}: {e}"
                )));
            }
        },
    };
    let implicit = exchanges.len() == 1 && exchanges[0] == domain;
    let mut hops = Vec::new();
    let mut last_error = None;
    for host in exchanges {
        match addresses(resolver, &host, port).await {
            Ok(addrs) if !addrs.is_empty() => hops.push(Hop { host, addrs }),
            Ok(_) => {}
            Err(e) => {
                if implicit && not_found(&e).is_some() {
                    return Err(RouteError::Permanent(format!(
                        "{domain} has neither MX nor address records"
                    )));
                }
                last_error = Some(format!("{host}: {e}"));
            }
        }
    }
    if hops.is_empty() {
        return Err(RouteError::Temporary(last_error.unwrap_or_else(|| {
            format!("no address for the mail hosts of {domain}")
        })));
    }
    Ok(hops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("mx.example.com:2525", 25),
            Some(("mx.example.com".into(), 2525))
        );
        assert_eq!(
            split_host_port("mx.example.com", 25),
            Some(("mx.example.com".into(), 25))
        );
        assert_eq!(
            split_host_port("[::1]:2525", 25),
            Some(("::1".into(), 2525))
        );
        assert_eq!(split_host_port("host:notaport", 25), None);
    }
}
