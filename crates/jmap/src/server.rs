//! The listener: accepts connections, speaks HTTP/1.1 and HTTP/2 (hyper-util
//! auto, ALPN under TLS), and shuts down gracefully: on shutdown it stops
//! accepting, asks every connection to close after its in-flight requests,
//! and ends open event-source streams.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tern_store::MailStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{JmapConfig, TlsConfig};
use crate::http::Jmap;

/// Longest wait for in-flight requests at shutdown.
const DRAIN: Duration = Duration::from_secs(30);

/// Serves JMAP on `config.listen` until `shutdown` turns true.
pub async fn serve(
    config: JmapConfig,
    store: MailStore,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let listener = TcpListener::bind(config.listen).await?;
    serve_on(listener, config, store, shutdown).await
}

/// Loads a rustls server configuration (HTTP/2 and HTTP/1.1 by ALPN).
pub fn tls_acceptor(tls: &TlsConfig) -> io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {e}"))
    };
    let certs = CertificateDer::pem_file_iter(&tls.cert)
        .map_err(|e| invalid(&tls.cert.display().to_string(), &e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(&tls.cert.display().to_string(), &e))?;
    if certs.is_empty() {
        return Err(invalid(&tls.cert.display().to_string(), &"no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| invalid(&tls.key.display().to_string(), &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("tls", &e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| invalid("tls", &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves JMAP on an already bound listener (tests bind port 0) until
/// `shutdown` turns true.
pub async fn serve_on(
    listener: TcpListener,
    config: JmapConfig,
    store: MailStore,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let tls = config.tls.as_ref().map(tls_acceptor).transpose()?;
    let jmap = Jmap::new(config, store);
    jmap.start_push_delivery();
    let builder = Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    tracing::info!(addr = %listener.local_addr()?, base = jmap.base_url(), "JMAP listening");
    loop {
        if *shutdown.borrow() {
            break;
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => continue,
        };
        let _ = stream.set_nodelay(true);
        let service = {
            let jmap = jmap.clone();
            service_fn(move |req: hyper::Request<Incoming>| {
                let jmap = jmap.clone();
                async move { Ok::<_, std::convert::Infallible>(jmap.handle(req).await) }
            })
        };
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    jmap.shutdown();
    tokio::select! {
        // WebSocket connections left hyper at their upgrade: wait for
        // their close handshakes too.
        _ = async { graceful.shutdown().await; jmap.wait_websockets_closed(DRAIN).await } => {}
        _ = tokio::time::sleep(DRAIN) => {
            tracing::warn!("JMAP: in-flight requests still running after {DRAIN:?}; stopping");
        }
    }
    Ok(())
}
