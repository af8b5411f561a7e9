//! End to end over a real socket with a third-party client (the
//! `jmap-client` crate): session discovery, Mailbox/get, Mailbox/set
//! create, upload and download; then a graceful shutdown. A second test
//! does the same over TLS with a self-signed certificate and checks that
//! HTTP/2 is negotiated.

use std::time::Duration;

use jmap_client::client::{Client, Credentials};
use jmap_client::mailbox::Role;
use tern_jmap::{JmapConfig, TlsConfig};
use tern_store::MailStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

const USER: &str = "alice@example.com";
const PASSWORD: &str = "wonderland";

fn store() -> (tempfile::TempDir, MailStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(&dir.path().join("data")).unwrap();
    store.add_domain("example.com").unwrap();
    store.create_account(USER, PASSWORD).unwrap();
    (dir, store)
}

async fn start(
    store: MailStore,
    tls: Option<TlsConfig>,
) -> (
    String,
    watch::Sender<bool>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = JmapConfig::new(addr);
    let scheme = if tls.is_some() { "https" } else { "http" };
    config.tls = tls;
    let base = format!("{scheme}://{addr}");
    let (tx, rx) = watch::channel(false);
    let server = tokio::spawn(tern_jmap::serve_on(listener, config, store, rx));
    (base, tx, server)
}

async fn exercise(client: &Client) {
    let session = client.session();
    assert_eq!(session.username(), USER);
    assert!(session.has_capability("urn:ietf:params:jmap:mail"));
    let core = session.core_capabilities().unwrap();
    assert!(core.max_size_upload() >= 50_000_000);

    // Mailbox/get of the inbox, found by Mailbox/query.
    let inbox_id = client
        .mailbox_query(
            jmap_client::mailbox::query::Filter::role(Role::Inbox).into(),
            None::<Vec<_>>,
        )
        .await
        .unwrap()
        .take_ids()
        .pop()
        .expect("an inbox");
    let inbox = client
        .mailbox_get(&inbox_id, None::<Vec<_>>)
        .await
        .unwrap()
        .expect("inbox found");
    assert_eq!(inbox.name(), Some("Inbox"));
    assert_eq!(inbox.role(), Role::Inbox);

    // Mailbox/set create, under the inbox, then read back.
    let mut created = client
        .mailbox_create("Projects", Some(inbox_id.clone()), Role::None)
        .await
        .unwrap();
    let id = created.take_id();
    let fetched = client
        .mailbox_get(&id, None::<Vec<_>>)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched.name(), Some("Projects"));
    assert_eq!(fetched.parent_id(), Some(inbox_id.as_str()));
    client.mailbox_rename(&id, "Renamed").await.unwrap();
    client.mailbox_destroy(&id, true).await.unwrap();
    assert!(
        client
            .mailbox_get(&id, None::<Vec<_>>)
            .await
            .unwrap()
            .is_none()
    );

    // Upload and download.
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let uploaded = client
        .upload(None, data.clone(), Some("application/pdf"))
        .await
        .unwrap();
    assert_eq!(uploaded.size(), data.len());
    assert_eq!(uploaded.content_type(), "application/pdf");
    let downloaded = client.download(uploaded.blob_id()).await.unwrap();
    assert_eq!(downloaded, data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmap_client_discovers_the_session_and_manages_mailboxes_and_blobs() {
    let (_dir, store) = store();
    let (base, shutdown, server) = start(store, None).await;
    let client = Client::new()
        .credentials(Credentials::basic(USER, PASSWORD))
        .timeout(Duration::from_secs(30))
        .connect(&base)
        .await
        .unwrap();
    exercise(&client).await;

    // Wrong credentials are refused at discovery.
    let refused = Client::new()
        .credentials(Credentials::basic(USER, "nope"))
        .connect(&base)
        .await;
    assert!(refused.is_err());

    shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after shutdown")
        .unwrap()
        .unwrap();
    // Nothing listens any more.
    let host = base.trim_start_matches("http://");
    assert!(tokio::net::TcpStream::connect(host).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmap_over_tls_negotiates_http2() {
    let (dir, store) = store();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let tls = TlsConfig {
        cert: cert_path,
        key: key_path,
    };
    let (base, shutdown, server) = start(store, Some(tls)).await;

    // A third-party client works over TLS.
    let client = Client::new()
        .credentials(Credentials::basic(USER, PASSWORD))
        .accept_invalid_certs(true)
        .timeout(Duration::from_secs(30))
        .connect(&base)
        .await
        .unwrap();
    exercise(&client).await;

    // ALPN offers h2 first: a client offering h2 gets it.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(base.trim_start_matches("https://"))
        .await
        .unwrap();
    let tls_stream = connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls_stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    drop(tls_stream);

    shutdown.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server stops after shutdown")
        .unwrap()
        .unwrap();
}
