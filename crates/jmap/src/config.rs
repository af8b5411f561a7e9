//! What the JMAP server needs to be told: where to listen, the URL clients
//! reach it at, its limits and an optional TLS certificate.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::method::Limits;

/// The JMAP server's configuration.
#[derive(Debug, Clone)]
pub struct JmapConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// The URL clients reach the server at (scheme, host, optional port,
    /// optional path prefix, no trailing slash needed), used to build the
    /// session's absolute URLs. `None`: `http://<listen>` (`https://` when
    /// TLS is configured).
    pub base_url: Option<String>,
    /// Request limits, advertised in the session and enforced.
    pub limits: Limits,
    /// TLS certificate and key; `None` serves plain HTTP.
    pub tls: Option<TlsConfig>,
    /// How long a verified Basic credential is remembered, so that not
    /// every request pays for an Argon2 verification.
    pub auth_cache_ttl: Duration,
    /// How long an uploaded blob is kept while nothing references it
    /// (RFC 8620 section 6: at least one hour).
    pub upload_ttl: Duration,
    /// Most bytes of unreferenced uploads an account may hold; older
    /// uploads are released first when a new one would exceed it.
    pub upload_quota: u64,
    /// Push: event source, WebSocket, push subscriptions.
    pub push: crate::push::PushConfig,
}

/// PEM files for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// Certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

impl JmapConfig {
    /// A configuration listening on `listen` with default limits.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            base_url: None,
            limits: Limits::default(),
            tls: None,
            auth_cache_ttl: Duration::from_secs(60),
            upload_ttl: Duration::from_secs(24 * 3600),
            upload_quota: 200_000_000,
            push: crate::push::PushConfig::default(),
        }
    }

    /// The public base URL without a trailing slash.
    pub fn base_url(&self) -> String {
        match &self.base_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", self.listen)
            }
        }
    }
}

impl Default for JmapConfig {
    fn default() -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], 8080)))
    }
}
