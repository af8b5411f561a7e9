//! End-to-end tests: the SMTP server in-process on 127.0.0.1 ports, a
//! RocksDB store in a temp dir, real clients (Python's smtplib, swaks, raw
//! sockets), and a DNS server on 127.0.0.1 serving a test zone for SPF,
//! DKIM, DMARC and iprev.

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

// ---------------------------------------------------------------- tests ---

const SMTPLIB_MX: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.example.org')
code, _ = s.ehlo()
print('ehlo', code, ' '.join(sorted(s.esmtp_features)))
print('vrfy', s.verify('alice@example.com')[0])
s.mail('sender@example.org')
print('rcpt-alice', s.rcpt('alice@example.com')[0])
print('rcpt-unknown', *s.rcpt('nobody@example.com'))
print('rcpt-relay', *s.rcpt('victim@example.net'))
msg = b'From: sender@example.org\r\nTo: alice@example.com\r\nSubject: hello\r\n\r\nHi Alice.\r\n'
print('data', *s.data(msg))
s.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_mx_delivers_refuses_unknown_users_and_relaying() {
    let server = start(None, |_| {}).await;
    let out = python(SMTPLIB_MX, &[port(server.mx)]).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        "ehlo 250 8bitmime chunking dsn enhancedstatuscodes pipelining size smtputf8 starttls"
    );
    assert_eq!(lines[1], "vrfy 252");
    assert_eq!(lines[2], "rcpt-alice 250");
    assert_eq!(lines[3], "rcpt-unknown 550 b'5.1.1 Mailbox does not exist'");
    assert!(
        lines[4].starts_with("rcpt-relay 554 b'5.7.1 Relay access denied"),
        "{out}"
    );
    assert!(
        lines[5].starts_with("data 250 b'2.0.0 Message accepted"),
        "{out}"
    );

    let stored = server.messages(ALICE.0).await;
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert_eq!(m.mailbox_role.as_deref(), Some("inbox"));
    assert!(m.raw.ends_with("Subject: hello\r\n\r\nHi Alice.\r\n"));
    let received = m.header("Received").unwrap();
    assert!(
        received
            .starts_with("from client.example.org ([127.0.0.1]) by mx.test (Tern) with ESMTP id "),
        "{received}"
    );
    assert!(received.contains("for <alice@example.com>;"), "{received}");
    // No checks configured here: no Authentication-Results.
    assert!(m.header("Authentication-Results").is_none());
    server.shutdown().await;
}

const SMTPLIB_SUBMISSION: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP('127.0.0.1', port, local_hostname='laptop.example.com')
s.ehlo()
print('before-tls auth offered', s.has_extn('auth'))
s.starttls(context=ctx)
s.ehlo()
print('after-tls auth', s.esmtp_features.get('auth', '').strip())
try:
    s.login('alice@example.com', 'wrong')
except smtplib.SMTPAuthenticationError as e:
    print('bad-login', e.smtp_code)
s.login('alice@example.com', 'secret')
print('login ok')
try:
    s.sendmail('bob@example.com', ['alice@example.com'], b'Subject: spoof\r\n\r\nx\r\n')
except smtplib.SMTPSenderRefused as e:
    print('spoof', e.smtp_code, e.smtp_error.decode())
try:
    s.sendmail('alice@example.com', ['friend@example.org'], b'Subject: out\r\n\r\nx\r\n')
except smtplib.SMTPRecipientsRefused as e:
    code, text = e.recipients['friend@example.org']
    print('remote', code, text.decode())
refused = s.sendmail('alice@example.com', ['bob@example.com', 'friend@example.org'],
                     b'From: alice@example.com\r\nSubject: mixed\r\n\r\nhello bob\r\n')
print('mixed refused', sorted(refused))
s.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_submission_starttls_auth_sender_check_and_remote_refusal() {
    let server = start(None, |_| {}).await;
    let out = python(SMTPLIB_SUBMISSION, &[port(server.submission)]).await;
    let expected = "before-tls auth offered False\n\
        after-tls auth PLAIN LOGIN\n\
        bad-login 535\n\
        login ok\n\
        spoof 553 5.7.1 Sender address is not an address of the authenticated user\n\
        remote 451 4.3.0 Remote delivery is not available yet; try again later\n\
        mixed refused ['friend@example.org']\n";
    assert_eq!(out, expected);
    let stored = server.messages(BOB.0).await;
    assert_eq!(stored.len(), 1, "only the mixed message reached bob");
    let received = stored[0].header("Received").unwrap();
    assert!(received.contains("(using TLSv1."), "{received}");
    assert!(received.contains("with ESMTPSA id"), "{received}");
    assert!(stored[0].raw.ends_with("hello bob\r\n"));
    server.shutdown().await;
}

const SMTPLIB_SUBMISSIONS_LOGIN: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP_SSL('127.0.0.1', port, local_hostname='laptop.example.com', context=ctx)
s.ehlo()
print('starttls offered', s.has_extn('starttls'))
s.user, s.password = 'alice@example.com', 'secret'
print('login', s.auth('LOGIN', s.auth_login)[0])
s.sendmail('alice@example.com', ['bob@example.com'], b'Subject: implicit tls\r\n\r\nhi\r\n')
print('sent')
s.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_submissions_implicit_tls_with_auth_login() {
    let server = start(None, |_| {}).await;
    let out = python(SMTPLIB_SUBMISSIONS_LOGIN, &[port(server.submissions)]).await;
    assert_eq!(out, "starttls offered False\nlogin 235\nsent\n");
    let stored = server.messages(BOB.0).await;
    assert_eq!(stored.len(), 1);
    assert!(
        stored[0]
            .header("Received")
            .unwrap()
            .contains("with ESMTPSA")
    );
    server.shutdown().await;
}

const SMTPLIB_UTF8: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.example.org')
s.ehlo()
msg = 'From: χρήστης@example.org\r\nTo: δοκιμή@example.com\r\nSubject: γειά σου\r\n\r\nΚαλημέρα, naïve café\r\n'.encode()
s.sendmail('χρήστης@example.org', ['δοκιμή@example.com'], msg, mail_options=['SMTPUTF8', 'BODY=8BITMIME'])
print('utf8 sent')
s.sendmail('sender@example.org', ['alice@example.com'], 'Subject: 8bit\r\n\r\nnaïve\r\n'.encode(), mail_options=['BODY=8BITMIME'])
print('8bit sent')
s.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_eight_bit_data_and_utf8_addresses() {
    let server = start(None, |_| {}).await;
    let out = python(SMTPLIB_UTF8, &[port(server.mx)]).await;
    assert_eq!(out, "utf8 sent\n8bit sent\n");
    let utf8 = server.messages(UTF8_USER.0).await;
    assert_eq!(utf8.len(), 1);
    assert!(utf8[0].raw.ends_with("Καλημέρα, naïve café\r\n"));
    assert!(
        utf8[0]
            .header("Received")
            .unwrap()
            .contains("for <δοκιμή@example.com>")
    );
    let alice = server.messages(ALICE.0).await;
    assert!(alice[0].raw.ends_with("naïve\r\n"));
    server.shutdown().await;
}

const SMTPLIB_OVERSIZE: &str = r#"
import smtplib, sys
port = int(sys.argv[1])
s = smtplib.SMTP('127.0.0.1', port, local_hostname='client.example.org')
s.ehlo()
print('size', s.esmtp_features['size'])
big = b'Subject: big\r\n\r\n' + (b'x' * 78 + b'\r\n') * 300
try:
    s.sendmail('sender@example.org', ['alice@example.com'], big)
except smtplib.SMTPSenderRefused as e:
    print('mail', e.smtp_code, e.smtp_error.decode())
# Without SIZE= the limit is enforced while reading DATA.
s.mail('sender@example.org')
s.rcpt('alice@example.com')
print('data', *s.data(big))
s.sendmail('sender@example.org', ['alice@example.com'], b'Subject: small\r\n\r\nok\r\n')
print('small sent')
s.quit()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_oversized_message_is_refused_at_mail_and_at_data() {
    let server = start(None, |c| c.limits.max_message_size = 10_000).await;
    let out = python(SMTPLIB_OVERSIZE, &[port(server.mx)]).await;
    assert_eq!(
        out,
        "size 10000\n\
         mail 552 5.3.4 Message size exceeds fixed maximum message size\n\
         data 552 b'5.3.4 Message size exceeds fixed maximum message size'\n\
         small sent\n"
    );
    let stored = server.messages(ALICE.0).await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].raw.contains("Subject: small"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_pipelining_and_bdat_chunks() {
    let server = start(None, |_| {}).await;
    let mut c = Raw::connect(server.mx).await;
    assert!(c.reply().await.starts_with("220 mx.test"));
    // One write: EHLO, MAIL, three RCPTs and a two-chunk BDAT message.
    let body1 = b"Subject: chunks\r\n\r\nfirst part, ";
    let body2 = b"second part\r\n";
    let mut batch = Vec::new();
    batch.extend_from_slice(b"EHLO client.example.org\r\nMAIL FROM:<sender@example.org>\r\n");
    batch.extend_from_slice(b"RCPT TO:<alice@example.com>\r\nRCPT TO:<nobody@example.com>\r\n");
    batch.extend_from_slice(b"RCPT TO:<bob@example.com>\r\n");
    batch.extend_from_slice(format!("BDAT {}\r\n", body1.len()).as_bytes());
    batch.extend_from_slice(body1);
    batch.extend_from_slice(format!("BDAT {} LAST\r\n", body2.len()).as_bytes());
    batch.extend_from_slice(body2);
    batch.extend_from_slice(b"QUIT\r\n");
    c.send(&batch).await;
    assert!(c.reply().await.contains("250 STARTTLS"));
    assert_eq!(c.reply().await, "250 2.1.0 Sender OK\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert_eq!(c.reply().await, "550 5.1.1 Mailbox does not exist\r\n");
    assert_eq!(c.reply().await, "250 2.1.5 Recipient OK\r\n");
    assert_eq!(
        c.reply().await,
        format!("250 2.0.0 {} octets received\r\n", body1.len())
    );
    assert!(c.reply().await.starts_with("250 2.0.0 Message accepted"));
    assert_eq!(c.reply().await, "221 2.0.0 Bye\r\n");
    assert!(c.closed().await);
    for who in [ALICE.0, BOB.0] {
        let stored = server.messages(who).await;
        assert_eq!(stored.len(), 1, "{who}");
        assert!(
            stored[0]
                .raw
                .ends_with("Subject: chunks\r\n\r\nfirst part, second part\r\n")
        );
        // Two recipients: the Received header names neither.
        assert!(!stored[0].header("Received").unwrap().contains(" for "));
    }
    server.shutdown().await;
}

/// swaks, when installed. Returns `None` (after saying why) when not.
async fn swaks(args: &[&str]) -> Option<(bool, String)> {
    let output = match tokio::process::Command::new("swaks")
        .args(args)
        .output()
        .await
    {
        Ok(output) => output,
        Err(err) => {
            eprintln!("SKIPPED: swaks is not installed ({err}); apt-get install -y swaks");
            return None;
        }
    };
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Some((output.status.success(), text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swaks_mx_pipelining_submission_starttls_auth_and_relay() {
    let server = start(None, |_| {}).await;
    let mx = server.mx.to_string();
    let sub = server.submission.to_string();
    let subs = server.submissions.to_string();
    let common = ["--helo", "client.example.org", "--timeout", "20"];

    // MX with pipelining.
    let mut args = vec![
        "--server",
        &mx,
        "--from",
        "sender@example.org",
        "--to",
        "alice@example.com",
    ];
    args.extend(["--pipeline", "--header", "Subject: swaks mx"]);
    args.extend(common);
    let Some((ok, out)) = swaks(&args).await else {
        server.shutdown().await;
        return;
    };
    assert!(ok, "{out}");
    assert!(out.contains("250 2.0.0 Message accepted"), "{out}");

    // Relay attempt: refused, and swaks says so.
    let mut args = vec![
        "--server",
        &mx,
        "--from",
        "sender@example.org",
        "--to",
        "victim@example.net",
    ];
    args.extend(common);
    let (ok, out) = swaks(&args).await.unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("554 5.7.1 Relay access denied"), "{out}");

    // Unknown user.
    let mut args = vec![
        "--server",
        &mx,
        "--from",
        "sender@example.org",
        "--to",
        "nobody@example.com",
    ];
    args.extend(common);
    let (ok, out) = swaks(&args).await.unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("550 5.1.1 Mailbox does not exist"), "{out}");

    // Submission: STARTTLS then AUTH PLAIN.
    let mut args = vec![
        "--server",
        &sub,
        "--from",
        "alice@example.com",
        "--to",
        "bob@example.com",
    ];
    args.extend(["-tls", "-a", "PLAIN", "-au", ALICE.0, "-ap", ALICE.1]);
    args.extend(["--header", "Subject: swaks submission"]);
    args.extend(common);
    let (ok, out) = swaks(&args).await.unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("235 2.7.0 Authentication successful"), "{out}");

    // Submissions (implicit TLS) with AUTH LOGIN.
    let mut args = vec![
        "--server",
        &subs,
        "--from",
        "alice@example.com",
        "--to",
        "bob@example.com",
    ];
    args.extend([
        "--tls-on-connect",
        "-a",
        "LOGIN",
        "-au",
        ALICE.0,
        "-ap",
        ALICE.1,
    ]);
    args.extend(["--header", "Subject: swaks submissions"]);
    args.extend(common);
    let (ok, out) = swaks(&args).await.unwrap();
    assert!(ok, "{out}");

    // Submission without AUTH: refused.
    let mut args = vec![
        "--server",
        &sub,
        "--from",
        "alice@example.com",
        "--to",
        "bob@example.com",
    ];
    args.extend(["-tls"]);
    args.extend(common);
    let (ok, out) = swaks(&args).await.unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("530 5.7.0 Authentication required"), "{out}");

    assert_eq!(server.messages(ALICE.0).await.len(), 1);
    let bob = server.messages(BOB.0).await;
    assert_eq!(bob.len(), 2);
    assert!(
        bob.iter()
            .all(|m| m.header("Received").unwrap().contains("ESMTPSA"))
    );
    server.shutdown().await;
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
