//! Errors of the SMTP server at start-up. Errors within a session become
//! SMTP replies and never leave it.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why the SMTP server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A listener could not bind its address.
    #[error("cannot listen on {addr} ({service}): {source}")]
    Bind {
        /// The service (`smtp`, `submission`, `submissions`).
        service: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or key could not be read, parsed or written.
    #[error("TLS certificate {path}: {reason}")]
    Certificate {
        /// The file concerned.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The DNS resolver could not be set up.
    #[error("DNS resolver: {0}")]
    Resolver(String),
    /// The configuration is inconsistent.
    #[error("SMTP configuration: {0}")]
    Config(String),
}
