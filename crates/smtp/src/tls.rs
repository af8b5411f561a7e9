//! The server certificate: loaded from PEM files, or generated once
//! (self-signed, for the hostname) and kept in `<data_dir>/tls/` so that
//! clients that pinned it keep working across restarts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::error::Error;
use crate::session::TlsInfo;

/// Where a generated certificate and key are kept under the data directory.
pub fn generated_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// The rustls configuration for `config`, generating a self-signed
/// certificate for `hostname` under `data_dir` if none is configured and
/// none was generated before.
pub fn server_config(
    config: &TlsConfig,
    data_dir: &Path,
    hostname: &str,
) -> Result<Arc<ServerConfig>, Error> {
    let (cert_path, key_path) = match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => (cert.clone(), key.clone()),
        (None, None) => {
            let (cert, key) = generated_paths(data_dir);
            if !cert.exists() || !key.exists() {
                generate(&cert, &key, hostname)?;
            }
            (cert, key)
        }
        _ => {
            return Err(Error::Config(
                "tls: set both the certificate and the key, or neither".into(),
            ));
        }
    };
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| certificate_error(&cert_path, e))?;
    if certs.is_empty() {
        return Err(Error::Certificate {
            path: cert_path,
            reason: "no certificate in the file".into(),
        });
    }
    let key =
        PrivateKeyDer::from_pem_file(&key_path).map_err(|e| certificate_error(&key_path, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
    server.alpn_protocols.clear();
    Ok(Arc::new(server))
}

fn certificate_error(path: &Path, err: impl std::fmt::Display) -> Error {
    Error::Certificate {
        path: path.to_owned(),
        reason: err.to_string(),
    }
}

fn generate(cert_path: &Path, key_path: &Path, hostname: &str) -> Result<(), Error> {
    let mut names = vec![hostname.to_owned()];
    if hostname != "localhost" {
        names.push("localhost".to_owned());
    }
    let generated =
        rcgen::generate_simple_self_signed(names).map_err(|e| certificate_error(cert_path, e))?;
    if let Some(dir) = cert_path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| certificate_error(dir, e))?;
    }
    write_private(key_path, generated.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(cert_path, generated.cert.pem()).map_err(|e| certificate_error(cert_path, e))?;
    tracing::info!(path = %cert_path.display(), "generated a self-signed TLS certificate");
    Ok(())
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| certificate_error(path, e))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| certificate_error(path, e))
}

/// The negotiated parameters of a server connection.
pub fn info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(other) => format!("{other:?}"),
        None => "unknown".to_owned(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_else(|| "unknown".to_owned());
    TlsInfo { version, cipher }
}
