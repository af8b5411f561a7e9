//! DNS blocklists: the client's IP in IP zones (`4.3.2.1.zone` for
//! 1.2.3.4, nibbles for IPv6) and link domains in domain zones
//! (`example.com.zone`). Listed = an A record in 127.0.0.0/8 other than
//! 127.255.255.0/24 (which zones use to report errors such as "query
//! refused"). Queries go to the resolver of `[dns]`, in parallel, each
//! bounded by its timeout; a failed query counts as not listed.

use std::net::IpAddr;
use std::time::Duration;

use mail_auth::MessageAuthenticator;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::config::{ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::rr::RData;

use crate::config::DnsConfig;
use crate::error::Error;

/// Most link domains looked up per message.
const MAX_DOMAINS: usize = 8;

/// A DNSBL client. Cheap to clone.
#[derive(Clone)]
pub struct Dnsbl {
    resolver: Option<TokioResolver>,
    ip_zones: Vec<String>,
    domain_zones: Vec<String>,
    timeout: Duration,
}

impl std::fmt::Debug for Dnsbl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dnsbl")
            .field("ip_zones", &self.ip_zones)
            .field("domain_zones", &self.domain_zones)
            .finish_non_exhaustive()
    }
}

/// What the lists said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listings {
    /// IP zones listing the client.
    pub ip: Vec<String>,
    /// (zone, domain) for listed link domains.
    pub domains: Vec<(String, String)>,
}

impl Dnsbl {
    /// A client of these zones through the `dns` resolver. No zones: no
    /// resolver is made and nothing is ever queried.
    pub fn new(
        dns: &DnsConfig,
        ip_zones: &[String],
        domain_zones: &[String],
    ) -> Result<Dnsbl, Error> {
        let normalize = |zones: &[String]| -> Vec<String> {
            zones
                .iter()
                .map(|z| z.trim().trim_matches('.').to_ascii_lowercase())
                .filter(|z| !z.is_empty())
                .collect()
        };
        let ip_zones = normalize(ip_zones);
        let domain_zones = normalize(domain_zones);
        let resolver = if ip_zones.is_empty() && domain_zones.is_empty() {
            None
        } else {
            let mut options = ResolverOpts::default();
            options.timeout = dns.timeout;
            options.attempts = 1;
            let auth = if dns.nameservers.is_empty() {
                MessageAuthenticator::new_system_conf()
            } else {
                let servers = dns
                    .nameservers
                    .iter()
                    .map(crate::checks::name_server)
                    .collect();
                MessageAuthenticator::new(ResolverConfig::from_name_servers(servers), options)
            }
            .map_err(|e| Error::Resolver(e.to_string()))?;
            Some(auth.0)
        };
        Ok(Dnsbl {
            resolver,
            ip_zones,
            domain_zones,
            timeout: dns.timeout,
        })
    }

    /// Whether any zone is configured.
    pub fn enabled(&self) -> bool {
        self.resolver.is_some()
    }

    /// Looks up `ip` in the IP zones and `domains` in the domain zones.
    pub async fn check(&self, ip: Option<IpAddr>, domains: &[String]) -> Listings {
        let Some(resolver) = &self.resolver else {
            return Listings::default();
        };
        let mut queries: Vec<(bool, String, String)> = Vec::new();
        if let Some(ip) = ip {
            let reversed = reverse(ip);
            for zone in &self.ip_zones {
                queries.push((true, zone.clone(), format!("{reversed}.{zone}.")));
            }
        }
        let mut seen = Vec::new();
        for d in domains {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if seen.len() >= MAX_DOMAINS || seen.contains(&d) || !d.contains('.') {
                continue;
            }
            seen.push(d.clone());
            for zone in &self.domain_zones {
                queries.push((false, zone.clone(), format!("{d}.{zone}.")));
            }
        }
        let mut set = tokio::task::JoinSet::new();
        for (i, (_, _, name)) in queries.iter().enumerate() {
            let resolver = resolver.clone();
            let name = name.clone();
            let timeout = self.timeout;
            set.spawn(async move {
                let listed = matches!(
                    tokio::time::timeout(timeout, resolver.ipv4_lookup(name.as_str())).await,
                    Ok(Ok(lookup)) if lookup.answers().iter().any(|r| match &r.data {
                        RData::A(a) => {
                            let o = a.0.octets();
                            o[0] == 127 && !(o[1] == 255 && o[2] == 255)
                        }
                        _ => false,
                    })
                );
                (i, listed)
            });
        }
        let mut out = Listings::default();
        let mut hits = vec![false; queries.len()];
        while let Some(joined) = set.join_next().await {
            if let Ok((i, listed)) = joined {
                hits[i] = listed;
            }
        }
        for (i, (is_ip, zone, name)) in queries.into_iter().enumerate() {
            if !hits[i] {
                continue;
            }
            if is_ip {
                out.ip.push(zone);
            } else {
                let domain = name
                    .trim_end_matches('.')
                    .trim_end_matches(zone.as_str())
                    .trim_end_matches('.')
                    .to_owned();
                out.domains.push((zone, domain));
            }
        }
        out
    }
}

/// The DNSBL form of an address: reversed octets, or reversed nibbles.
pub fn reverse(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut parts = Vec::with_capacity(32);
            for b in v6.octets().iter().rev() {
                parts.push(format!("{:x}", b & 0xF));
                parts.push(format!("{:x}", b >> 4));
            }
            parts.join(".")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_forms() {
        assert_eq!(reverse("192.0.2.99".parse().unwrap()), "99.2.0.192");
        let v6 = reverse("2001:db8::1".parse().unwrap());
        assert!(v6.starts_with("1.0.0.0.0.0.0.0"));
        assert!(v6.ends_with("8.b.d.0.1.0.0.2"));
        assert_eq!(v6.split('.').count(), 32);
    }

    #[tokio::test]
    async fn without_zones_nothing_is_queried() {
        let d = Dnsbl::new(&DnsConfig::default(), &[], &[]).unwrap();
        assert!(!d.enabled());
        assert_eq!(
            d.check(Some("127.0.0.2".parse().unwrap()), &["x.example".into()])
                .await,
            Listings::default()
        );
    }
}
