//! End-to-end tests with the SMTP server in-process on 127.0.0.1 ports, a
//! RocksDB store in a temp dir, real clients (Python's smtplib, raw
//! sockets), and a DNS server on 127.0.0.1 serving a test zone for SPF,
//! DKIM, ARC, DMARC and iprev. These are the cases that need the server's
//! internals: millisecond timeouts, quotas set mid-session, the stored
//! envelopes, shutdown with a message in flight. The clients' view of the
//! real binary (smtplib, swaks, STARTTLS, AUTH, BDAT, SIGKILL) is in the
//! root `tests/smtp.rs`.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::{A, PTR, TXT};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tern_smtp::{ListenerKind, SmtpConfig, SmtpServer};
use tern_store::MailStore;
use tern_store::email::Listing;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

// ---------------------------------------------------------------- DNS ---

/// A test zone: (lowercase name without the final dot, type) → records.
#[derive(Default, Clone)]
struct Zone(HashMap<(String, RecordType), Vec<RData>>);

impl Zone {
    fn txt(&mut self, name: &str, text: &str) -> &mut Self {
        // TXT strings are at most 255 bytes: split longer ones.
        let parts: Vec<String> = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        self.0
            .entry((name.to_lowercase(), RecordType::TXT))
            .or_default()
            .push(RData::TXT(TXT::new(parts)));
        self
    }

    fn a(&mut self, name: &str, ip: Ipv4Addr) -> &mut Self {
        self.0
            .entry((name.to_lowercase(), RecordType::A))
            .or_default()
            .push(RData::A(A(ip)));
        self
    }

    fn ptr(&mut self, name: &str, target: &str) -> &mut Self {
        self.0
            .entry((name.to_lowercase(), RecordType::PTR))
            .or_default()
            .push(RData::PTR(PTR(Name::from_ascii(target).unwrap())));
        self
    }
}

/// Serves `zone` over UDP on 127.0.0.1 until the runtime ends.
async fn dns_server(zone: Zone) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut response = Message::response(query.metadata.id, query.metadata.op_code);
            response.metadata.message_type = MessageType::Response;
            response.metadata.recursion_desired = query.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.metadata.authoritative = true;
            let mut found_name = false;
            for q in &query.queries {
                let name = q.name.to_ascii().trim_end_matches('.').to_lowercase();
                found_name |= zone.0.keys().any(|(n, _)| *n == name);
                if let Some(records) = zone.0.get(&(name, q.query_type)) {
                    for rdata in records {
                        response.add_answer(Record::from_rdata(q.name.clone(), 60, rdata.clone()));
                    }
                }
            }
            response.add_queries(query.queries.clone());
            if response.answers.is_empty() && !found_name {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    addr
}

// -------------------------------------------------------------- server ---

struct TestServer {
    mx: SocketAddr,
    submission: SocketAddr,
    submissions: SocketAddr,
    store: MailStore,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tern_smtp::Error>>,
    dir: tempfile::TempDir,
}

const ALICE: (&str, &str) = ("alice@example.com", "secret");
const BOB: (&str, &str) = ("bob@example.com", "hunter2");
const UTF8_USER: (&str, &str) = ("δοκιμή@example.com", "secret");

fn open_store(dir: &std::path::Path) -> MailStore {
    MailStore::open(&dir.join("store")).unwrap()
}

/// Starts a server on 127.0.0.1:0 ports with a fresh store holding the
/// domain example.com and the accounts above. `configure` adjusts the
/// config (limits, checks).
async fn start(dns: Option<SocketAddr>, configure: impl FnOnce(&mut SmtpConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().to_owned();
    let store = tokio::task::spawn_blocking(move || {
        let store = open_store(&store_dir);
        store.add_domain("example.com").unwrap();
        for (address, password) in [ALICE, BOB, UTF8_USER] {
            store.create_account(address, password).unwrap();
        }
        store
    })
    .await
    .unwrap();
    start_with(dir, store, dns, configure).await
}

async fn start_with(
    dir: tempfile::TempDir,
    store: MailStore,
    dns: Option<SocketAddr>,
    configure: impl FnOnce(&mut SmtpConfig),
) -> TestServer {
    let mut config = SmtpConfig {
        hostname: "mx.test".into(),
        data_dir: dir.path().to_owned(),
        ..SmtpConfig::default()
    };
    let any = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.smtp = Some(any);
    config.listen.submission = Some(any);
    config.listen.submissions = Some(any);
    match dns {
        Some(dns) => {
            config.dns.nameservers = vec![dns];
            config.dns.timeout = Duration::from_secs(2);
        }
        None => config.checks.enabled = false,
    }
    configure(&mut config);
    let server = SmtpServer::bind(config, store.clone()).await.unwrap();
    let mx = server.local_addr(ListenerKind::Mx).unwrap();
    let submission = server.local_addr(ListenerKind::Submission).unwrap();
    let submissions = server.local_addr(ListenerKind::Submissions).unwrap();
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(server.run(stop_rx));
    TestServer {
        mx,
        submission,
        submissions,
        store,
        stop,
        task,
        dir,
    }
}

impl TestServer {
    async fn shutdown(self) -> (tempfile::TempDir, MailStore) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
        (self.dir, self.store)
    }

    /// The messages of `address`'s account, oldest first.
    async fn messages(&self, address: &str) -> Vec<Stored> {
        messages(&self.store, address).await
    }
}

/// A stored message as a test sees it.
#[derive(Debug)]
struct Stored {
    raw: String,
    mailbox_role: Option<String>,
    keywords: Vec<String>,
}

impl Stored {
    fn header(&self, name: &str) -> Option<String> {
        // Unfolded value of the first header `name`.
        let head = self.raw.split("\r\n\r\n").next().unwrap_or_default();
        let mut lines = head.split("\r\n").peekable();
        while let Some(line) = lines.next() {
            if let Some((n, v)) = line.split_once(':')
                && n.eq_ignore_ascii_case(name)
            {
                let mut value = v.trim().to_owned();
                while lines
                    .peek()
                    .is_some_and(|l| l.starts_with(' ') || l.starts_with('\t'))
                {
                    value.push(' ');
                    value.push_str(lines.next().unwrap().trim());
                }
                return Some(value);
            }
        }
        None
    }
}

async fn messages(store: &MailStore, address: &str) -> Vec<Stored> {
    let store = store.clone();
    let address = address.to_owned();
    tokio::task::spawn_blocking(move || {
        let account = store.lookup_address(&address).unwrap().expect("account");
        store
            .kv()
            .read(|tx| -> tern_store::Result<Vec<Stored>> {
                let mut out = Vec::new();
                let listed = tern_store::email::list_by_date(
                    tx,
                    account,
                    Listing::All,
                    false,
                    None,
                    10_000,
                )?;
                for (_, id) in listed {
                    let meta = tern_store::email::get(tx, account, id)?.expect("meta");
                    let raw = tern_store::blob::read(tx, &meta.blob)?.expect("blob");
                    let mailbox = tern_store::mailbox::get(tx, account, meta.mailbox_ids[0])?
                        .expect("mailbox");
                    out.push(Stored {
                        raw: String::from_utf8_lossy(&raw).into_owned(),
                        mailbox_role: mailbox.role,
                        keywords: meta.keywords,
                    });
                }
                Ok(out)
            })
            .unwrap()
    })
    .await
    .unwrap()
}

// -------------------------------------------------------------- clients ---

/// Runs a Python script with `args`; returns its stdout. Fails the test
/// with the script's stderr when it exits non-zero.
async fn python(script: &str, args: &[String]) -> String {
    let output = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "python failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn port(addr: SocketAddr) -> String {
    addr.port().to_string()
}

/// A line-based raw client.
struct Raw {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        Raw {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// One whole reply (all its lines), or "" at end of stream.
    async fn reply(&mut self) -> String {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
                .await
                .expect("a reply within 10s")
                .unwrap();
            if n == 0 {
                return out;
            }
            out.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return out;
            }
        }
    }

    async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(10), self.reader.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

// -------------------------------------------------------------- limits ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_client_gets_421_and_is_disconnected() {
    let server = start(None, |c| {
        c.limits.command_timeout = Duration::from_millis(500);
        c.limits.data_timeout = Duration::from_millis(500);
    })
    .await;
    let mut c = Raw::connect(server.mx).await;
    c.reply().await;
    let started = Instant::now();
    assert_eq!(
        c.reply().await,
        "421 4.4.2 mx.test Timeout waiting for command; closing connection\r\n"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert!(c.closed().await);

    let mut c = Raw::connect(server.mx).await;
    c.reply().await;
    c.send(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        .await;
    for _ in 0..4 {
        c.reply().await;
    }
    c.send(b"Subject: slow\r\n").await;
    assert_eq!(
        c.reply().await,
        "421 4.4.2 mx.test Timeout waiting for data; closing connection\r\n"
    );
    assert!(c.closed().await);
    assert!(server.messages(ALICE.0).await.is_empty());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_ip_and_rate_limit_get_421() {
    let server = start(None, |c| {
        c.limits.max_connections_per_ip = 2;
        c.limits.rate_limit = 4;
    })
    .await;
    let mut first = Raw::connect(server.mx).await;
    let mut second = Raw::connect(server.submission).await;
    assert!(first.reply().await.starts_with("220 "));
    assert!(second.reply().await.starts_with("220 "));
    let mut third = Raw::connect(server.mx).await;
    assert_eq!(
        third.reply().await,
        "421 4.7.0 Too many connections from your address; try again later\r\n"
    );
    assert!(third.closed().await);
    first.send(b"QUIT\r\n").await;
    first.reply().await;
    assert!(first.closed().await);
    // The place is free again, but this is the fourth connection of the
    // window and the fifth is over the rate.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = Raw::connect(server.mx).await;
    assert!(fourth.reply().await.starts_with("220 "));
    drop(fourth);
    drop(second);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = Raw::connect(server.mx).await;
    assert_eq!(
        fifth.reply().await,
        "421 4.7.0 Connection rate limit exceeded; try again later\r\n"
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_lines_and_repeated_errors_end_the_session() {
    let server = start(None, |c| c.limits.max_errors = 3).await;
    let mut c = Raw::connect(server.mx).await;
    c.reply().await;
    let mut long = b"NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'a', 10_000));
    long.extend_from_slice(b"\r\n");
    c.send(&long).await;
    assert_eq!(c.reply().await, "500 5.5.2 Line too long\r\n");
    c.send(b"NOOP\r\n").await;
    assert_eq!(c.reply().await, "250 2.0.0 OK\r\n");
    c.send(b"BOGUS\r\nRCPT TO:<a@example.com>\r\n").await;
    assert_eq!(c.reply().await, "500 5.5.1 Command unrecognized\r\n");
    assert_eq!(c.reply().await, "503 5.5.1 Send MAIL first\r\n");
    assert_eq!(
        c.reply().await,
        "421 4.7.0 Too many errors; closing connection\r\n"
    );
    assert!(c.closed().await);
    server.shutdown().await;
}

/// Messages of every size are stored whole, with the trace fields on
/// top: a small one is scored on the session's task and awaited from a
/// delivery worker; a larger one takes a blocking thread, and one over
/// the store's inline limit has its blob written before the delivery.
/// Many at once on one session task's runtime thread all get their 250.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_small_and_large_are_stored_whole() {
    // Twenty-three connections from 127.0.0.1, some still closing when
    // the burst starts: over the default 20 per IP.
    let server = start(None, |c| c.limits.max_connections_per_ip = 100).await;
    let body = |tag: &str, size: usize| {
        let line = format!("{tag} {}\r\n", "y".repeat(70));
        format!(
            "Subject: {tag}\r\nMessage-ID: <{tag}@example.org>\r\n\r\n{}",
            line.repeat(size / line.len() + 1)
        )
    };
    let sizes = [("small", 2_000), ("large", 300_000), ("huge", 1_500_000)];
    for (tag, size) in sizes {
        let reply = send_raw(server.mx, "ann@example.org", ALICE.0, &body(tag, size)).await;
        assert!(
            reply.starts_with("250 2.0.0 Message accepted"),
            "{tag}: {reply}"
        );
    }
    // Twenty small ones at once.
    let sent: Vec<_> = (0..20)
        .map(|n| {
            let (mx, data) = (server.mx, body(&format!("burst{n}"), 5_000));
            tokio::spawn(async move { send_raw(mx, "ann@example.org", BOB.0, &data).await })
        })
        .collect();
    for reply in sent {
        let reply = reply.await.unwrap();
        assert!(reply.starts_with("250 2.0.0 Message accepted"), "{reply}");
    }
    let stored = server.messages(ALICE.0).await;
    assert_eq!(stored.len(), 3);
    for (stored, (tag, size)) in stored.iter().zip(sizes) {
        assert!(
            stored.raw.starts_with("Received: from client.example.org"),
            "{tag}"
        );
        assert!(stored.raw.ends_with(&body(tag, size)), "{tag} is whole");
        assert_eq!(stored.mailbox_role.as_deref(), Some("inbox"));
    }
    let mut burst: Vec<_> = server
        .messages(BOB.0)
        .await
        .iter()
        .map(|m| m.header("Subject").unwrap())
        .collect();
    burst.sort();
    let mut expected: Vec<_> = (0..20).map(|n| format!("burst{n}")).collect();
    expected.sort();
    assert_eq!(burst, expected);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_message_in_flight_and_stops_accepting() {
    let server = start(None, |_| {}).await;
    let mut idle = Raw::connect(server.mx).await;
    idle.reply().await;
    let mut busy = Raw::connect(server.mx).await;
    busy.reply().await;
    busy.send(b"HELO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.com>\r\nDATA\r\n")
        .await;
    for _ in 0..4 {
        busy.reply().await;
    }
    busy.send(b"Subject: in flight\r\n\r\n").await;
    let mx = server.mx;
    server.stop.send_replace(true);
    assert_eq!(
        idle.reply().await,
        "421 4.3.2 Server shutting down; closing connection\r\n"
    );
    busy.send(b"the rest\r\n.\r\n").await;
    assert!(busy.reply().await.starts_with("250 2.0.0 Message accepted"));
    assert_eq!(
        busy.reply().await,
        "421 4.3.2 Server shutting down; closing connection\r\n"
    );
    let (_dir, store) = server.shutdown().await;
    assert!(TcpStream::connect(mx).await.is_err(), "no longer accepting");
    let stored = messages(&store, ALICE.0).await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].raw.ends_with("the rest\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_a_restart_and_the_certificate_is_kept() {
    let server = start(None, |_| {}).await;
    let (cert_path, _) = tern_smtp::tls::generated_paths(server.dir.path());
    let cert = std::fs::read(&cert_path).expect("a certificate was generated");
    let mut c = Raw::connect(server.mx).await;
    c.reply().await;
    let mut batch = b"EHLO c\r\n".to_vec();
    for i in 0..20 {
        batch.extend_from_slice(
            format!(
                "MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\nSubject: n{i}\r\n\r\nbody {i}\r\n.\r\n"
            )
            .as_bytes(),
        );
    }
    c.send(&batch).await;
    c.reply().await;
    let mut accepted = 0;
    for _ in 0..20 {
        for _ in 0..4 {
            c.reply().await;
        }
        assert!(c.reply().await.starts_with("250 2.0.0 Message accepted"));
        accepted += 1;
    }
    let (dir, store) = server.shutdown().await;
    drop(store);
    // Reopen the store from disk and serve again from the same directory.
    let path = dir.path().to_owned();
    let store = tokio::task::spawn_blocking(move || open_store(&path))
        .await
        .unwrap();
    assert_eq!(messages(&store, ALICE.0).await.len(), accepted);
    assert_eq!(messages(&store, BOB.0).await.len(), accepted);
    let server = start_with(dir, store, None, |_| {}).await;
    assert_eq!(
        std::fs::read(&cert_path).unwrap(),
        cert,
        "the certificate is reused"
    );
    server.shutdown().await;
}

// -------------------------------------------------------------- checks ---

/// A zone where example.org signs with DKIM (ed25519, selector `sel`),
/// publishes SPF for 127.0.0.1 and DMARC p=reject; reject.test and
/// quarantine.test have SPF -all and DMARC reject/quarantine; 127.0.0.1
/// has a PTR that resolves back (iprev pass).
fn test_zone(dkim_public_key: &[u8]) -> Zone {
    use base64::Engine;
    let mut zone = Zone::default();
    let key = base64::engine::general_purpose::STANDARD.encode(dkim_public_key);
    zone.txt("example.org", "v=spf1 ip4:127.0.0.1 -all")
        .txt("client.example.org", "v=spf1 ip4:127.0.0.1 -all")
        .txt(
            "sel._domainkey.example.org",
            &format!("v=DKIM1; k=ed25519; p={key}"),
        )
        .txt("_dmarc.example.org", "v=DMARC1; p=reject")
        .txt("reject.test", "v=spf1 -all")
        .txt("_dmarc.reject.test", "v=DMARC1; p=reject")
        .txt("quarantine.test", "v=spf1 -all")
        .txt("_dmarc.quarantine.test", "v=DMARC1; p=quarantine")
        .a("client.example.org", Ipv4Addr::LOCALHOST)
        .ptr("1.0.0.127.in-addr.arpa", "client.example.org.");
    zone
}

async fn send_raw(addr: SocketAddr, from: &str, to: &str, message: &str) -> String {
    let mut c = Raw::connect(addr).await;
    c.reply().await;
    c.send(
        format!("EHLO client.example.org\r\nMAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n")
            .as_bytes(),
    )
    .await;
    for _ in 0..4 {
        c.reply().await;
    }
    c.send(message.as_bytes()).await;
    c.send(b".\r\nQUIT\r\n").await;
    c.reply().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_dkim_dmarc_iprev_against_a_local_dns_zone() {
    use mail_auth::common::crypto::Ed25519Key;
    use mail_auth::common::headers::HeaderWriter;
    use mail_auth::dkim::DkimSigner;

    let pkcs8 = Ed25519Key::generate_pkcs8().unwrap();
    let key = Ed25519Key::from_pkcs8_der(&pkcs8).unwrap();
    let zone = test_zone(&key.public_key());
    let dns = dns_server(zone).await;
    let server = start(Some(dns), |_| {}).await;

    // Signed, aligned, from an SPF-authorised address: delivered, all pass.
    let body =
        "From: news@example.org\r\nTo: alice@example.com\r\nSubject: signed\r\n\r\nHello.\r\n";
    let signature = DkimSigner::from_key(key)
        .domain("example.org")
        .selector("sel")
        .headers(["From", "To", "Subject"])
        .sign(body.as_bytes())
        .unwrap();
    let signed = format!("{}{body}", signature.to_header());
    let reply = send_raw(server.mx, "news@example.org", ALICE.0, &signed).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");

    // Fails DMARC with p=reject: refused.
    let forged = "From: ceo@reject.test\r\nSubject: wire money\r\n\r\nNow.\r\n";
    let reply = send_raw(server.mx, "ceo@reject.test", ALICE.0, forged).await;
    assert_eq!(
        reply,
        "550 5.7.1 Rejected by the DMARC policy of reject.test\r\n"
    );

    // Fails DMARC with p=quarantine: delivered to Junk.
    let dubious = "From: promo@quarantine.test\r\nSubject: deal\r\n\r\nBuy.\r\n";
    let reply = send_raw(server.mx, "promo@quarantine.test", ALICE.0, dubious).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");

    // Forwarded through example.org, which sealed an ARC set: arc=pass.
    let forwarded = {
        use mail_auth::{AuthenticatedMessage, AuthenticationResults, arc::ArcSealer};
        let message = AuthenticatedMessage::parse(signed.as_bytes()).unwrap();
        let results = AuthenticationResults::new("forwarder.example.org");
        let set = ArcSealer::from_key(Ed25519Key::from_pkcs8_der(&pkcs8).unwrap())
            .domain("example.org")
            .selector("sel")
            .headers(["From", "To", "Subject", "DKIM-Signature"])
            .seal(&message, &results, &mail_auth::ArcOutput::default())
            .unwrap();
        format!("{}{signed}", set.to_header())
    };
    let reply = send_raw(server.mx, "news@example.org", ALICE.0, &forwarded).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");

    let stored = server.messages(ALICE.0).await;
    assert_eq!(stored.len(), 3);
    let results = stored[2].header("Authentication-Results").unwrap();
    assert!(results.contains("arc=pass"), "{results}");
    let signed = &stored[0];
    assert_eq!(signed.mailbox_role.as_deref(), Some("inbox"));
    let results = signed.header("Authentication-Results").unwrap();
    for expected in [
        "mx.test;",
        "dkim=pass",
        "header.d=example.org",
        "spf=pass",
        "smtp.mailfrom=news@example.org",
        "dmarc=pass",
        "iprev=pass",
    ] {
        assert!(results.contains(expected), "{expected} in {results}");
    }
    let junk = &stored[1];
    assert_eq!(junk.mailbox_role.as_deref(), Some("junk"));
    assert!(junk.keywords.contains(&"$junk".to_owned()));
    let results = junk.header("Authentication-Results").unwrap();
    assert!(results.contains("spf=fail"), "{results}");
    assert!(results.contains("dmarc=fail"), "{results}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dmarc_reject_can_be_downgraded_to_quarantine_by_config() {
    let zone = test_zone(&[0u8; 32]);
    let dns = dns_server(zone).await;
    let server = start(Some(dns), |c| c.checks.dmarc_reject = false).await;
    let forged = "From: ceo@reject.test\r\nSubject: wire money\r\n\r\nNow.\r\n";
    let reply = send_raw(server.mx, "ceo@reject.test", ALICE.0, forged).await;
    assert!(reply.starts_with("250 2.0.0"), "{reply}");
    let stored = server.messages(ALICE.0).await;
    assert_eq!(stored[0].mailbox_role.as_deref(), Some("junk"));
    server.shutdown().await;
}

// ---------------------------------------------------------- quota, DSN ---

/// Sets the quota of `address`'s account.
async fn set_quota(store: &MailStore, address: &str, bytes: u64) {
    let store = store.clone();
    let address = address.to_owned();
    tokio::task::spawn_blocking(move || {
        let id = store.lookup_address(&address).unwrap().unwrap();
        store
            .kv()
            .transact(|tx| -> tern_store::Result<()> {
                let mut record = tern_store::account::get_account(tx, id)?.unwrap();
                record.quota_bytes = bytes;
                tern_store::account::put_account(tx, id, &record)
            })
            .unwrap();
    })
    .await
    .unwrap();
}

/// The envelopes kept with `address`'s messages, oldest first.
async fn envelopes(store: &MailStore, address: &str) -> Vec<Option<tern_store::Envelope>> {
    let store = store.clone();
    let address = address.to_owned();
    tokio::task::spawn_blocking(move || {
        let account = store.lookup_address(&address).unwrap().unwrap();
        let ids = store
            .kv()
            .read(|tx| {
                tern_store::email::list_by_date(tx, account, Listing::All, false, None, 10_000)
            })
            .unwrap();
        ids.into_iter()
            .map(|(_, id)| store.envelope(account, id).unwrap())
            .collect()
    })
    .await
    .unwrap()
}

const SMTPLIB_QUOTA: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.example.org')
msg = b'Subject: quota\r\n\r\n' + b'x' * 1500 + b'\r\n'
# smtplib declares SIZE= itself.
refused = s.sendmail('sender@example.org',
                     ['alice@example.com', 'bob@example.com', 'carol@example.com'], msg)
for rcpt, (code, text) in sorted(refused.items()):
    print(rcpt, code, text.decode())
s.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_over_quota_each_recipient_gets_its_own_answer() {
    let server = start(None, |_| {}).await;
    let store = server.store.clone();
    tokio::task::spawn_blocking(move || store.create_account("carol@example.com", "pw"))
        .await
        .unwrap()
        .unwrap();
    // Bob is at his quota (3 kB used); carol's whole quota is smaller
    // than the message.
    let store = server.store.clone();
    let used = tokio::task::spawn_blocking(move || {
        let bob = store.lookup_address(BOB.0).unwrap().unwrap();
        let raw = format!("Subject: filler\r\n\r\n{}\r\n", "z".repeat(3000));
        store
            .deliver(raw.as_bytes(), &[tern_store::Recipient::inbox(bob)])
            .unwrap();
        store
            .kv()
            .read(|tx| tern_store::account::used_bytes(tx, bob))
            .unwrap()
    })
    .await
    .unwrap();
    set_quota(&server.store, BOB.0, used).await;
    set_quota(&server.store, "carol@example.com", 1000).await;
    let out = python(SMTPLIB_QUOTA, &[port(server.mx)]).await;
    assert_eq!(
        out,
        "bob@example.com 452 4.2.2 Mailbox full; try again later\n\
         carol@example.com 552 5.2.2 Message is larger than the recipient's mailbox quota\n"
    );
    assert_eq!(server.messages(ALICE.0).await.len(), 1);
    assert_eq!(server.messages(BOB.0).await.len(), 1, "only the filler");
    assert!(server.messages("carol@example.com").await.is_empty());
    server.shutdown().await;
}

/// A mailbox that fills up between RCPT and the end of DATA: nothing is
/// stored and the client is told to retry (452 4.2.2); at the retry that
/// recipient alone is refused at RCPT and the other gets exactly one copy.
/// A mailbox under its quota takes a message that crosses the line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_filling_up_during_data_defers_the_message_and_the_retry_splits() {
    let server = start(None, |_| {}).await;
    let envelope = b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n";
    let message = b"Subject: race\r\n\r\nbody\r\n.\r\n";

    let mut c = Raw::connect(server.mx).await;
    c.reply().await;
    c.send(envelope).await;
    c.reply().await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert!(c.reply().await.starts_with("354 "));
    // Bob's mailbox fills up while the data is on its way.
    set_quota(&server.store, BOB.0, 0).await;
    c.send(message).await;
    assert_eq!(
        c.reply().await,
        "452 4.2.2 Mailbox full; try again later\r\n"
    );
    assert!(server.messages(ALICE.0).await.is_empty(), "nothing stored");

    // The client's retry.
    c.send(&envelope[8..]).await;
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert_eq!(
        c.reply().await,
        "452 4.2.2 Mailbox full; try again later\r\n"
    );
    assert!(c.reply().await.starts_with("354 "));
    c.send(message).await;
    assert!(c.reply().await.starts_with("250 2.0.0 Message accepted"));
    assert_eq!(server.messages(ALICE.0).await.len(), 1);
    assert!(server.messages(BOB.0).await.is_empty());

    // Bob gets room for 10 bytes: under his quota, he takes a larger
    // message (the last one crosses the line), then refuses the next.
    set_quota(&server.store, BOB.0, 10).await;
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n")
        .await;
    c.reply().await;
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK\r\n");
    c.reply().await;
    c.send(message).await;
    assert!(c.reply().await.starts_with("250 2.0.0 Message accepted"));
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.com>\r\n")
        .await;
    c.reply().await;
    assert_eq!(
        c.reply().await,
        "452 4.2.2 Mailbox full; try again later\r\n"
    );
    assert_eq!(server.messages(BOB.0).await.len(), 1);
    server.shutdown().await;
}

const SMTPLIB_DSN: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.example.org')
s.ehlo()
print('dsn', s.has_extn('dsn'))
print('mail', *s.mail('sender@example.org', ['RET=HDRS', 'ENVID=QQ+2B314159']))
print('rcpt', *s.rcpt('alice@example.com', ['NOTIFY=SUCCESS,DELAY', 'ORCPT=rfc822;Alice+40example.com']))
print('rcpt', *s.rcpt('bob@example.com', ['NOTIFY=NEVER']))
print('rcpt', *s.rcpt('bob@example.com', ['NOTIFY=FAILURE,NEVER']))
print('data', s.data(b'Subject: dsn\r\n\r\nx\r\n')[0])
s.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_parameters_are_kept_with_each_recipients_copy() {
    let server = start(None, |_| {}).await;
    let out = python(SMTPLIB_DSN, &[port(server.mx)]).await;
    assert_eq!(
        out,
        "dsn True\n\
         mail 250 b'2.1.0 Sender OK'\n\
         rcpt 250 b'2.1.5 Recipient OK'\n\
         rcpt 250 b'2.1.5 Recipient OK'\n\
         rcpt 501 b'5.5.4 Invalid parameter NOTIFY'\n\
         data 250\n"
    );
    use tern_store::{DsnNotify, DsnRet, Envelope, EnvelopeRecipient};
    let common = Envelope {
        mail_from: "sender@example.org".into(),
        ret: Some(DsnRet::Headers),
        envid: Some("QQ+314159".into()),
        body_8bitmime: false,
        smtputf8: false,
        recipients: Vec::new(),
    };
    // Each copy names only its own recipient.
    let alice = envelopes(&server.store, ALICE.0).await;
    assert_eq!(
        alice,
        [Some(Envelope {
            recipients: vec![EnvelopeRecipient {
                address: "alice@example.com".into(),
                notify: Some(DsnNotify {
                    success: true,
                    failure: false,
                    delay: true
                }),
                orcpt: Some("Alice@example.com".into()),
            }],
            ..common.clone()
        })]
    );
    let bob = envelopes(&server.store, BOB.0).await;
    assert_eq!(
        bob,
        [Some(Envelope {
            recipients: vec![EnvelopeRecipient {
                address: "bob@example.com".into(),
                notify: Some(DsnNotify::NEVER),
                orcpt: None,
            }],
            ..common
        })]
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_line_trickled_in_gets_the_command_timeout_in_all() {
    let server = start(None, |c| {
        c.limits.command_timeout = Duration::from_millis(900)
    })
    .await;
    let (reader, mut writer) = TcpStream::connect(server.mx).await.unwrap().into_split();
    let mut reader = BufReader::new(reader);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    assert!(line.starts_with("220 "));
    let started = Instant::now();
    // Each byte comes well within the timeout; the line never ends.
    let trickle = tokio::spawn(async move {
        for b in b"NOOP NOOP NOOP NOOP NOOP NOOP".iter() {
            if writer.write_all(std::slice::from_ref(b)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
    });
    line.clear();
    tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        line,
        "421 4.4.2 mx.test Timeout waiting for command; closing connection\r\n"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_millis(2500),
        "{waited:?}"
    );
    line.clear();
    assert_eq!(reader.read_line(&mut line).await.unwrap_or(0), 0, "closed");
    trickle.abort();
    server.shutdown().await;
}

const SMTPLIB_SUBMISSIONS_REFUSED: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
try:
    smtplib.SMTP_SSL('127.0.0.1', port, context=ctx)
    print('admitted')
except smtplib.SMTPConnectError as e:
    print('refused', e.smtp_code, e.smtp_error.decode())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_refusal_is_a_421_inside_tls() {
    let server = start(None, |c| c.limits.max_connections_per_ip = 1).await;
    let mut held = Raw::connect(server.mx).await;
    assert!(held.reply().await.starts_with("220 "));
    let out = python(SMTPLIB_SUBMISSIONS_REFUSED, &[port(server.submissions)]).await;
    assert_eq!(
        out,
        "refused 421 4.7.0 Too many connections from your address; try again later\n"
    );
    drop(held);
    server.shutdown().await;
}

// ------------------------------------------------------- directory cache ---

/// The reply to `RCPT TO:<to>` on the MX listener.
async fn rcpt(addr: SocketAddr, to: &str) -> String {
    let mut c = Raw::connect(addr).await;
    c.reply().await;
    c.send(
        format!(
            "EHLO client.example.org\r\nMAIL FROM:<x@client.example.org>\r\nRCPT TO:<{to}>\r\nQUIT\r\n"
        )
        .as_bytes(),
    )
    .await;
    c.reply().await;
    c.reply().await;
    c.reply().await
}

/// The server keeps domains, addresses and quotas RCPT found in memory
/// (until a commit writes them): every change made while it runs shows at
/// the next RCPT, each after the old answer was cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rcpt_sees_accounts_aliases_domains_and_quotas_change_while_running() {
    let server = start(None, |_| {}).await;
    let store = server.store.clone();
    let blocking = |f: Box<dyn FnOnce(&MailStore) + Send>| {
        let store = store.clone();
        async move {
            tokio::task::spawn_blocking(move || f(&store))
                .await
                .unwrap()
        }
    };
    let code = |reply: String| reply[..3].to_owned();
    let mx = server.mx;
    for _ in 0..2 {
        assert_eq!(code(rcpt(mx, "carol@example.com").await), "550");
        assert_eq!(code(rcpt(mx, "carol@other.test").await), "554");
        assert_eq!(code(rcpt(mx, ALICE.0).await), "250");
    }
    // A new account and a new domain are accepted at once.
    blocking(Box::new(|s| {
        s.create_account("carol@example.com", "pw").unwrap();
        s.add_domain("other.test").unwrap();
        s.create_account("carol@other.test", "pw").unwrap();
    }))
    .await;
    assert_eq!(code(rcpt(mx, "carol@example.com").await), "250");
    assert_eq!(code(rcpt(mx, "carol@other.test").await), "250");
    // An alias (an address key leading to an account) likewise, and its
    // removal.
    let alias = |add: bool| -> Box<dyn FnOnce(&MailStore) + Send> {
        Box::new(move |s: &MailStore| {
            s.kv()
                .transact(|tx| -> tern_store::Result<()> {
                    let key = tern_store::keys::address("caro@example.com");
                    if add {
                        let id = tx
                            .get(&tern_store::keys::address("carol@example.com"))?
                            .unwrap();
                        tx.set(&key, &id)?;
                    } else {
                        tx.clear(&key)?;
                    }
                    Ok(())
                })
                .unwrap()
        })
    };
    assert_eq!(code(rcpt(mx, "caro@example.com").await), "550");
    blocking(alias(true)).await;
    assert_eq!(code(rcpt(mx, "caro@example.com").await), "250");
    assert_eq!(code(rcpt(mx, "caro@example.com").await), "250");
    blocking(alias(false)).await;
    assert_eq!(code(rcpt(mx, "caro@example.com").await), "550");
    // A removed account is refused, its other addresses with it.
    blocking(alias(true)).await;
    assert_eq!(code(rcpt(mx, "caro@example.com").await), "250");
    blocking(Box::new(|s| s.remove_account("carol@example.com").unwrap())).await;
    assert_eq!(code(rcpt(mx, "carol@example.com").await), "550");
    assert_eq!(code(rcpt(mx, "caro@example.com").await), "550");
    // A quota lowered below what the mailbox holds: full at once.
    set_quota(&server.store, ALICE.0, 0).await;
    assert_eq!(code(rcpt(mx, ALICE.0).await), "452");
    set_quota(&server.store, ALICE.0, 1 << 30).await;
    assert_eq!(code(rcpt(mx, ALICE.0).await), "250");
    server.shutdown().await;
}
