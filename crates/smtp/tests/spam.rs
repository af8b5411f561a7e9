//! The spam and virus filters end to end: the SMTP server in-process on
//! 127.0.0.1 ports, a RocksDB store in a temp dir, a raw SMTP client, a
//! DNS server on 127.0.0.1 for the blocklists, and Debian's clamd started
//! by the test with its own config and a signature database the test
//! writes (SKIPPED when clamd cannot start).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use base64::Engine;
use mail_auth::hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::A;
use mail_auth::hickory_resolver::proto::rr::{RData, Record, RecordType};
use tern_smtp::spam::{Class, Scope, Trainer, train_messages};
use tern_smtp::{ClamdAddress, ListenerKind, SmtpConfig, SmtpServer, Unreachable};
use tern_store::{AccountId, MailStore};
use tern_testkit::{Clamd, EICAR, free_port};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::watch;

const ALICE: &str = "alice@example.com";
const BOB: &str = "bob@example.com";
const PASSWORD: &str = "secret";
const GTUBE: &str = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

// -------------------------------------------------------------- server ---

struct TestServer {
    mx: SocketAddr,
    submission: SocketAddr,
    store: MailStore,
    filter: tern_smtp::spam::Filter,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), tern_smtp::Error>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    async fn start(configure: impl FnOnce(&mut SmtpConfig)) -> TestServer {
        let (dir, store) = open_store().await;
        TestServer::start_with(dir, store, configure).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        store: MailStore,
        configure: impl FnOnce(&mut SmtpConfig),
    ) -> TestServer {
        let mut config = SmtpConfig {
            hostname: "mx.test".into(),
            data_dir: dir.path().to_owned(),
            allow_plaintext_auth: true,
            ..SmtpConfig::default()
        };
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        config.listen.smtp = Some(any);
        config.listen.submission = Some(any);
        config.listen.submissions = None;
        // No DNS for SPF/DKIM in these tests.
        config.checks.enabled = false;
        configure(&mut config);
        let filter = tern_smtp::spam::Filter::load(&config, store.clone())
            .await
            .unwrap();
        let server = SmtpServer::bind_with_filter(config, store.clone(), filter.clone())
            .await
            .unwrap();
        let mx = server.local_addr(ListenerKind::Mx).unwrap();
        let submission = server.local_addr(ListenerKind::Submission).unwrap();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(server.run(rx));
        TestServer {
            mx,
            submission,
            store,
            filter,
            stop,
            task,
            _dir: dir,
        }
    }

    async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    fn account(&self, address: &str) -> AccountId {
        self.store.lookup_address(address).unwrap().unwrap()
    }
}

/// A fresh store with the domain example.com and the accounts above.
async fn open_store() -> (tempfile::TempDir, MailStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let store = tokio::task::spawn_blocking(move || {
        let store = MailStore::open(&path).unwrap();
        store.add_domain("example.com").unwrap();
        for a in [ALICE, BOB] {
            store.create_account(a, PASSWORD).unwrap();
        }
        store
    })
    .await
    .unwrap();
    (dir, store)
}

/// One stored copy.
#[derive(Debug)]
struct Stored {
    id: u32,
    raw: String,
    mailbox_role: Option<String>,
    keywords: Vec<String>,
}

impl Stored {
    fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or("");
        let unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ");
        unfolded.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }

    fn score(&self) -> f64 {
        self.header("X-Spam-Score")
            .expect("X-Spam-Score header")
            .parse()
            .unwrap()
    }
}

async fn stored(store: &MailStore, account: AccountId) -> Vec<Stored> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store
            .kv()
            .read(|tx| -> tern_store::Result<Vec<Stored>> {
                let mut out = Vec::new();
                for (id, meta) in tern_store::email::list_metas(tx, account, None, 10_000)? {
                    let raw = tern_store::blob::read(tx, &meta.blob)?.expect("blob");
                    let mailbox = tern_store::mailbox::get(tx, account, meta.mailbox_ids[0])?
                        .expect("mailbox");
                    out.push(Stored {
                        id,
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

// -------------------------------------------------------------- client ---

struct Client {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, w) = stream.into_split();
        let mut c = Client {
            reader: BufReader::new(r),
            writer: w,
        };
        let greeting = c.reply().await;
        assert!(greeting.starts_with("220"), "{greeting}");
        c
    }

    /// One reply, multi-line replies joined; the last line decides.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(30), self.reader.read_line(&mut line))
                .await
                .expect("reply in time")
                .unwrap();
            assert!(n > 0, "connection closed; so far: {all}");
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.writer
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .unwrap();
        self.reply().await
    }

    async fn login(&mut self, user: &str) {
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{PASSWORD}"));
        let r = self.cmd(&format!("AUTH PLAIN {token}")).await;
        assert!(r.starts_with("235"), "{r}");
    }

    /// MAIL, RCPT, DATA; the reply to the final dot.
    async fn send(&mut self, from: &str, to: &[&str], message: &str) -> String {
        let r = self.cmd(&format!("MAIL FROM:<{from}>")).await;
        if !r.starts_with("250") {
            return r;
        }
        for rcpt in to {
            let r = self.cmd(&format!("RCPT TO:<{rcpt}>")).await;
            assert!(r.starts_with("250"), "{r}");
        }
        let r = self.cmd("DATA").await;
        assert!(r.starts_with("354"), "{r}");
        let mut body = String::new();
        for line in message.split("\r\n") {
            if line.starts_with('.') {
                body.push('.');
            }
            body.push_str(line);
            body.push_str("\r\n");
        }
        body.push_str(".\r\n");
        self.writer.write_all(body.as_bytes()).await.unwrap();
        self.reply().await
    }
}

/// Sends one message over a new MX connection; the final reply.
async fn mx_send(addr: SocketAddr, to: &[&str], message: &str) -> String {
    let mut c = Client::connect(addr).await;
    let r = c.cmd("EHLO client.test").await;
    assert!(r.starts_with("250"), "{r}");
    c.send("sender@remote.example", to, message).await
}

fn message(subject: &str, body: &str) -> String {
    format!(
        "From: Sender <sender@remote.example>\r\nTo: alice@example.com\r\nSubject: {subject}\r\n\
Date: {}\r\nMessage-ID: <{}@remote.example>\r\n\r\n{body}\r\n",
        rfc2822_now(),
        rand_id()
    )
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

/// The current time as an RFC 5322 date (UTC), so date rules stay quiet.
fn rfc2822_now() -> String {
    tern_store::dates::rfc5322_date(tern_store::now(), 0)
}

/// HTML-only, hidden text, a link showing another host, pharmacy words:
/// well above the junk threshold (5), below the reject threshold (15).
fn spammy() -> String {
    format!(
        "From: Pharmacy <deals@remote.example>\r\nTo: alice@example.com\r\nSubject: Your order\r\n\
Date: {}\r\nMessage-ID: <{}@remote.example>\r\nContent-Type: text/html\r\n\r\n\
<html><body><p>Best prices on cialis this week.</p>\r\n\
<a href=\"http://203.0.113.7/shop\">https://www.pharmacy.example/shop</a>\r\n\
<div style=\"display:none\">lorem ipsum dolor sit amet consectetur adipiscing elit</div>\r\n\
</body></html>\r\n",
        rfc2822_now(),
        rand_id()
    )
}

// --------------------------------------------------------------- tests ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gtube_is_refused_spam_goes_to_junk_clean_mail_to_the_inbox() {
    let server = TestServer::start(|_| {}).await;
    let alice = server.account(ALICE);

    let gtube = message("test", &format!("This is the GTUBE, the\r\n{GTUBE}\r\n"));
    let r = mx_send(server.mx, &[ALICE], &gtube).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");

    let r = mx_send(server.mx, &[ALICE], &spammy()).await;
    assert!(r.starts_with("250"), "{r}");
    let r = mx_send(
        server.mx,
        &[ALICE],
        &message("Lunch", "Shall we meet at noon?"),
    )
    .await;
    assert!(r.starts_with("250"), "{r}");

    let copies = stored(&server.store, alice).await;
    assert_eq!(copies.len(), 2, "the GTUBE message was not stored");
    let (spam, clean) = (&copies[0], &copies[1]);
    assert_eq!(spam.mailbox_role.as_deref(), Some("junk"));
    assert!(spam.keywords.iter().any(|k| k == "$junk"));
    let status = spam.header("X-Spam-Status").unwrap();
    assert!(status.starts_with("Yes, score="), "{status}");
    for test in [
        "HTML_HIDDEN_TEXT",
        "LINK_TEXT_MISMATCH",
        "BODY_PHARMA",
        "HTML_ONLY",
    ] {
        assert!(status.contains(test), "{test} missing from {status}");
    }
    assert!(spam.score() >= 5.0 && spam.score() < 15.0);

    assert_eq!(clean.mailbox_role.as_deref(), Some("inbox"));
    let status = clean.header("X-Spam-Status").unwrap();
    assert!(status.starts_with("No, score="), "{status}");
    assert!(clean.score() < 5.0);
    let get = |n: &str| tern_smtp::spam::METRICS.get(n).unwrap();
    assert!(get("tern_spam_verdicts_total{direction=\"inbound\",verdict=\"reject\"}") >= 1);
    assert!(get("tern_spam_verdicts_total{direction=\"inbound\",verdict=\"junk\"}") >= 1);
    assert!(get("tern_spam_verdicts_total{direction=\"inbound\",verdict=\"accept\"}") >= 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_x_spam_headers_are_removed_before_ours_are_added() {
    let server = TestServer::start(|_| {}).await;
    let alice = server.account(ALICE);
    // Spam that claims to be clean, in the fields other filters write
    // (one at the very top, one folded, one in lower case).
    let forged = format!(
        "X-Spam-Flag: NO\r\n{}",
        spammy().replacen(
            "Subject: Your order\r\n",
            "Subject: Your order\r\nX-Spam-Status: No, score=-10.0 required=5.0\r\n\
             x-spam-score: -10.0\r\nX-Spam-Report: all\r\n\tclean, folded\r\n",
            1,
        )
    );
    let r = mx_send(server.mx, &[ALICE], &forged).await;
    assert!(r.starts_with("250"), "{r}");
    // And a clean message quoting such a header in its body.
    let quoting = message("Headers", "X-Spam-Status: Yes, quoted in the body").replacen(
        "Subject:",
        "X-Spam-Status: Yes, score=99\r\nSubject:",
        1,
    );
    let r = mx_send(server.mx, &[ALICE], &quoting).await;
    assert!(r.starts_with("250"), "{r}");

    let copies = stored(&server.store, alice).await;
    let (spam, clean) = (&copies[0], &copies[1]);
    for copy in [spam, clean] {
        let head = copy
            .raw
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_ascii_lowercase();
        assert_eq!(head.matches("\nx-spam-status:").count(), 1, "{head}");
        assert_eq!(head.matches("\nx-spam-score:").count(), 1, "{head}");
        assert!(!head.contains("x-spam-flag"), "{head}");
        assert!(!head.contains("x-spam-report") && !head.contains("clean, folded"));
        assert!(
            copy.header("X-Spam-Status")
                .unwrap()
                .contains("required=5.0 tests=")
        );
    }
    assert!(spam.header("X-Spam-Status").unwrap().starts_with("Yes"));
    assert!(spam.score() >= 5.0);
    assert_eq!(spam.mailbox_role.as_deref(), Some("junk"));
    assert!(clean.header("X-Spam-Status").unwrap().starts_with("No"));
    assert!(
        clean
            .raw
            .contains("\r\n\r\nX-Spam-Status: Yes, quoted in the body")
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_come_from_the_config_and_spam_can_be_off() {
    // A lower reject threshold refuses the spammy message at DATA.
    let server = TestServer::start(|c| {
        c.spam.junk_threshold = 2.0;
        c.spam.reject_threshold = 4.0;
    })
    .await;
    let r = mx_send(server.mx, &[ALICE], &spammy()).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    server.shutdown().await;

    let server = TestServer::start(|c| c.spam.enabled = false).await;
    let r = mx_send(server.mx, &[ALICE], &spammy()).await;
    assert!(r.starts_with("250"), "{r}");
    let copies = stored(&server.store, server.account(ALICE)).await;
    assert_eq!(copies[0].mailbox_role.as_deref(), Some("inbox"));
    assert_eq!(copies[0].header("X-Spam-Status"), None);
    server.shutdown().await;
}

/// Words of two made-up vocabularies, so the test controls what the
/// classifier knows.
fn corpus_message(vocabulary: &str, n: usize) -> Vec<u8> {
    let words: Vec<String> = (0..40)
        .map(|i| format!("{vocabulary}{}", (n * 7 + i) % 60))
        .collect();
    format!(
        "From: x{n}@{vocabulary}.example\r\nSubject: {vocabulary} {n}\r\n\r\n{}\r\n",
        words.join(" ")
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_into_and_out_of_junk_trains_the_accounts_model() {
    // A global model that knows none of the test message's words.
    let (dir, store) = open_store().await;
    let trained = store.clone();
    tokio::task::spawn_blocking(move || {
        let store = trained;
        let spam: Vec<Vec<u8>> = (0..25).map(|n| corpus_message("spamword", n)).collect();
        let ham: Vec<Vec<u8>> = (0..25).map(|n| corpus_message("hamword", n)).collect();
        train_messages(
            &store,
            Scope::Global,
            Class::Spam,
            spam.iter().map(Vec::as_slice),
            |_| {},
        )
        .unwrap();
        train_messages(
            &store,
            Scope::Global,
            Class::Ham,
            ham.iter().map(Vec::as_slice),
            |_| {},
        )
        .unwrap();
    })
    .await
    .unwrap();
    let server = TestServer::start_with(dir, store, |_| {}).await;
    let (alice, bob) = (server.account(ALICE), server.account(BOB));

    let body = "Quarterly zanzibar widget recalibration newsletter, edition fourteen, \
                with peculiar marmalade logistics";
    let newsletter = || message("Zanzibar widgets", body);
    mx_send(server.mx, &[ALICE, BOB], &newsletter()).await;
    let first = stored(&server.store, alice).await.remove(0);
    let neutral = first.score();
    assert_eq!(first.mailbox_role.as_deref(), Some("inbox"));
    assert!(first.header("X-Spam-Status").unwrap().contains("BAYES_50"));

    // Alice moves it into Junk, as JMAP Email/set does: the store queues
    // training in the same transaction; the trainer carries it out.
    let move_to = |role: &'static str, account: AccountId, id: u32| {
        let store = server.store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .kv()
                .transact(|tx| -> tern_store::Result<()> {
                    let target = tern_store::mailbox::by_role(tx, account, role)?.unwrap();
                    let mut w = tern_store::Writer::begin(tx, account)?;
                    tern_store::email::update(&mut w, id, Some(vec![target]), None)?;
                    w.finish()?;
                    Ok(())
                })
                .unwrap();
            Trainer::new(store, true).run_once().unwrap()
        })
    };
    assert_eq!(move_to("junk", alice, first.id).await.unwrap(), 1);

    // The same newsletter again: spam for Alice now, not for Bob.
    mx_send(server.mx, &[ALICE], &newsletter()).await;
    mx_send(server.mx, &[BOB], &newsletter()).await;
    let again = stored(&server.store, alice).await.pop().unwrap();
    assert!(
        again.score() > neutral + 4.0,
        "{} -> {}",
        neutral,
        again.score()
    );
    assert_eq!(again.mailbox_role.as_deref(), Some("junk"));
    assert!(again.header("X-Spam-Status").unwrap().contains("BAYES_99"));
    let bobs = stored(&server.store, bob).await.pop().unwrap();
    assert_eq!(bobs.mailbox_role.as_deref(), Some("inbox"));
    assert!((bobs.score() - neutral).abs() < 0.01);

    // Both in one transaction: each copy is filed by its account's own
    // model; the headers (one message) carry the global model's score.
    let r = mx_send(server.mx, &[ALICE, BOB], &newsletter()).await;
    assert!(r.starts_with("250"), "{r}");
    let alices = stored(&server.store, alice).await.pop().unwrap();
    let bobs = stored(&server.store, bob).await.pop().unwrap();
    assert_eq!(alices.mailbox_role.as_deref(), Some("junk"));
    assert!(alices.keywords.iter().any(|k| k == "$junk"));
    assert_eq!(bobs.mailbox_role.as_deref(), Some("inbox"));
    assert!(!bobs.keywords.iter().any(|k| k == "$junk"));
    assert_eq!(alices.score(), bobs.score());
    assert!((bobs.score() - neutral).abs() < 0.01);

    // Out of Junk again: untrained as spam, trained as ham.
    assert_eq!(move_to("inbox", alice, first.id).await.unwrap(), 1);
    let class = {
        let store = server.store.clone();
        tokio::task::spawn_blocking(move || {
            store
                .kv()
                .read(|tx| tern_store::spam::trained_as(tx, alice, first.id))
                .unwrap()
        })
        .await
        .unwrap()
    };
    assert_eq!(class, Some(Class::Ham));
    mx_send(server.mx, &[ALICE], &newsletter()).await;
    let after = stored(&server.store, alice).await.pop().unwrap();
    assert!(after.score() < neutral, "{} -> {}", neutral, after.score());
    assert_eq!(after.mailbox_role.as_deref(), Some("inbox"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_are_rate_limited_and_spam_is_refused_then_the_account_blocked() {
    let server = TestServer::start(|c| {
        c.spam.outbound.messages_per_hour = 3;
        c.spam.outbound.max_strikes = 2;
    })
    .await;
    let mut c = Client::connect(server.submission).await;
    c.cmd("EHLO client.test").await;
    c.login(ALICE).await;
    for i in 0..3 {
        let r = c
            .send(ALICE, &[BOB], &message(&format!("note {i}"), "hello"))
            .await;
        assert!(r.starts_with("250"), "{r}");
    }
    let r = c.send(ALICE, &[BOB], &message("note 4", "hello")).await;
    assert!(r.starts_with("451 4.7.1"), "{r}");

    // Bob sends spam: refused, and two strikes block him.
    let mut c = Client::connect(server.submission).await;
    c.cmd("EHLO client.test").await;
    c.login(BOB).await;
    let exe = format!(
        "From: bob@example.com\r\nTo: alice@example.com\r\nSubject: Make $5000 fast\r\nDate: {}\r\n\
Message-ID: <{}@example.com>\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
Content-Type: text/plain\r\n\r\ncheap viagra, see attached\r\n--b\r\n\
Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"invoice.exe\"\r\n\r\n\
AAAA\r\n--b--\r\n",
        rfc2822_now(),
        rand_id()
    );
    let r = c.send(BOB, &[ALICE], &exe).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let gtube = message("t", GTUBE);
    let r = c.send(BOB, &[ALICE], &gtube).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let r = c
        .send(BOB, &[ALICE], &message("hi", "an honest message"))
        .await;
    assert!(r.starts_with("451 4.7.1"), "{r}");
    assert!(r.contains("spam"), "{r}");

    let get = |n: &str| tern_smtp::spam::METRICS.get(n).unwrap();
    assert!(get("tern_submissions_throttled_total{reason=\"rate_limit\"}") >= 1);
    assert!(get("tern_spam_verdicts_total{direction=\"outbound\",verdict=\"reject\"}") >= 2);
    assert!(get("tern_submissions_throttled_total{reason=\"blocked\"}") >= 1);
    // Bob got Alice's three notes; Alice got nothing from Bob.
    assert_eq!(stored(&server.store, server.account(BOB)).await.len(), 3);
    assert_eq!(stored(&server.store, server.account(ALICE)).await.len(), 0);
    server.shutdown().await;
}

// ---------------------------------------------------------- metrics ---

/// GET /metrics; (content type, body).
async fn scrape(addr: SocketAddr) -> (String, String) {
    use tokio::io::AsyncReadExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ctype = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Type: "))
        .unwrap_or_default()
        .to_owned();
    (ctype, body.to_owned())
}

fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_shows_spam_verdicts_throttled_accounts_and_virus_results() {
    // clamd is not there and the policy is to accept: each message is
    // counted unscanned.
    let dead = free_port();
    let server = TestServer::start(|c| {
        c.virus.clamd = Some(ClamdAddress::Tcp(format!("127.0.0.1:{dead}")));
        c.virus.on_unreachable = Unreachable::Accept;
        c.spam.outbound.messages_per_hour = 1;
    })
    .await;
    let listener = tern_smtp::outbound::metrics::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let endpoint = listener.local_addr().unwrap();
    let (stop, rx) = watch::channel(false);
    tokio::spawn(tern_smtp::outbound::metrics::serve(
        listener,
        server.store.clone(),
        Default::default(),
        Some(server.filter.outbound_guard()),
        rx,
    ));
    // The counters are the process's (other tests run alongside): compare
    // with a first scrape.
    let (ctype, before) = scrape(endpoint).await;
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let verdict =
        |v: &str| format!("tern_spam_verdicts_total{{direction=\"inbound\",verdict=\"{v}\"}}");
    let unscanned = "tern_virus_scans_total{result=\"unscanned\"}";
    let limited = "tern_submissions_throttled_total{reason=\"rate_limit\"}";
    assert_eq!(
        sample(&before, "tern_throttled_accounts{reason=\"rate_limit\"}"),
        0
    );

    let r = mx_send(server.mx, &[ALICE], &message("Lunch", "At noon?")).await;
    assert!(r.starts_with("250"), "{r}");
    let r = mx_send(server.mx, &[ALICE], &spammy()).await;
    assert!(r.starts_with("250"), "{r}");
    let r = mx_send(server.mx, &[ALICE], &message("t", GTUBE)).await;
    assert!(r.starts_with("550 5.7.1"), "{r}");
    let mut c = Client::connect(server.submission).await;
    c.cmd("EHLO client.test").await;
    c.login(BOB).await;
    let r = c.send(BOB, &[ALICE], &message("one", "fine")).await;
    assert!(r.starts_with("250"), "{r}");
    let r = c.send(BOB, &[ALICE], &message("two", "too many")).await;
    assert!(r.starts_with("451 4.7.1"), "{r}");

    let (_, after) = scrape(endpoint).await;
    for v in ["accept", "junk", "reject"] {
        assert!(
            sample(&after, &verdict(v)) > sample(&before, &verdict(v)),
            "{v}:\n{after}"
        );
    }
    assert!(sample(&after, unscanned) >= sample(&before, unscanned) + 4);
    assert!(sample(&after, limited) > sample(&before, limited));
    // This server's limits: exactly Bob is throttled now.
    assert_eq!(
        sample(&after, "tern_throttled_accounts{reason=\"rate_limit\"}"),
        1
    );
    assert_eq!(
        sample(&after, "tern_throttled_accounts{reason=\"blocked\"}"),
        0
    );
    assert!(after.contains("# TYPE tern_throttled_accounts gauge\n"));
    assert!(after.contains("# TYPE tern_virus_scans_total counter\n"));
    assert_eq!(sample(&after, "tern_queue_messages"), 0);
    // Every delivered copy says it was not scanned.
    let copies = stored(&server.store, server.account(ALICE)).await;
    assert_eq!(copies.len(), 3);
    assert!(
        copies
            .iter()
            .all(|c| c.header("X-Virus-Status").as_deref() == Some("Unscanned"))
    );
    stop.send_replace(true);
    server.shutdown().await;
}

// ------------------------------------------------------------ DNSBL ---

/// Answers A queries for the names in `listed` with 127.0.0.2 and
/// NXDOMAIN otherwise; counts queries.
async fn dns_server(
    listed: Vec<String>,
) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = std::sync::Arc::clone(&count);
    let zone: HashMap<String, Ipv4Addr> = listed
        .into_iter()
        .map(|n| (n, Ipv4Addr::new(127, 0, 0, 2)))
        .collect();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut response = Message::response(query.metadata.id, query.metadata.op_code);
            response.metadata.message_type = MessageType::Response;
            response.metadata.recursion_desired = query.metadata.recursion_desired;
            response.metadata.recursion_available = true;
            response.metadata.authoritative = true;
            for q in &query.queries {
                let name = q.name.to_ascii().trim_end_matches('.').to_lowercase();
                if q.query_type == RecordType::A
                    && let Some(ip) = zone.get(&name)
                {
                    response.add_answer(Record::from_rdata(q.name.clone(), 60, RData::A(A(*ip))));
                }
            }
            response.add_queries(query.queries.clone());
            if response.answers.is_empty() {
                response.metadata.response_code = ResponseCode::NXDomain;
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, from).await;
            }
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnsbl_and_uribl_listings_add_their_scores() {
    // 127.0.0.1 (the test client) is listed in one IP zone, not another;
    // the link domain bad.example is listed in the domain zone.
    let (dns, queries) = dns_server(vec![
        "1.0.0.127.bl.test".into(),
        "bad.example.uribl.test".into(),
    ])
    .await;
    let server = TestServer::start(|c| {
        c.dns.nameservers = vec![dns];
        c.dns.timeout = Duration::from_secs(2);
        c.spam.dnsbl_zones = vec!["bl.test".into(), "clean.test".into()];
        c.spam.uribl_zones = vec!["uribl.test".into()];
    })
    .await;
    let html = format!(
        "From: a@remote.example\r\nTo: alice@example.com\r\nSubject: links\r\nDate: {}\r\n\
Message-ID: <{}@remote.example>\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nsee links\r\n--b\r\nContent-Type: text/html\r\n\r\n\
<a href=\"https://www.bad.example/x\">here</a> <a href=\"https://good.example/\">there</a>\r\n--b--\r\n",
        rfc2822_now(),
        rand_id()
    );
    let r = mx_send(server.mx, &[ALICE], &html).await;
    assert!(r.starts_with("250"), "{r}");
    let copy = stored(&server.store, server.account(ALICE)).await.remove(0);
    let status = copy.header("X-Spam-Status").unwrap();
    assert!(status.contains("RCVD_IN_DNSBL(bl.test)"), "{status}");
    assert!(!status.contains("clean.test"), "{status}");
    assert!(status.contains("URIBL_LISTED(uribl.test)"), "{status}");
    // Two IP zones + two link domains in one domain zone.
    assert!(queries.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    server.shutdown().await;

    // Off by default: no query at all.
    let (dns, queries) = dns_server(vec![]).await;
    let server = TestServer::start(|c| c.dns.nameservers = vec![dns]).await;
    let r = mx_send(server.mx, &[ALICE], &message("x", "y")).await;
    assert!(r.starts_with("250"), "{r}");
    assert_eq!(queries.load(std::sync::atomic::Ordering::Relaxed), 0);
    server.shutdown().await;
}

// ------------------------------------------------------------ clamd ---

fn eicar_message() -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(EICAR);
    format!(
        "From: a@remote.example\r\nTo: alice@example.com\r\nSubject: invoice\r\nDate: {}\r\n\
Message-ID: <{}@remote.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n\
--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--zz\r\nContent-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=report.pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}\r\n--zz--\r\n",
        rfc2822_now(),
        rand_id()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eicar_is_refused_with_554_by_clamd_and_an_unreachable_clamd_tempfails() {
    let clamd = match tokio::task::spawn_blocking(Clamd::start).await.unwrap() {
        Ok(c) => c,
        Err(reason) => {
            println!("SKIPPED: clamd cannot start: {reason}");
            return;
        }
    };
    // Inbound over TCP to clamd.
    let server = TestServer::start(|c| {
        c.virus.clamd = Some(ClamdAddress::Tcp(format!("127.0.0.1:{}", clamd.port())));
    })
    .await;
    let r = mx_send(server.mx, &[ALICE], &eicar_message()).await;
    assert!(r.starts_with("554 5.7.1"), "{r}");
    assert!(r.contains("Tern.Test.EICAR"), "{r}");
    let r = mx_send(server.mx, &[ALICE], &message("clean", "nothing to see")).await;
    assert!(r.starts_with("250"), "{r}");
    // A submission too.
    let mut c = Client::connect(server.submission).await;
    c.cmd("EHLO client.test").await;
    c.login(BOB).await;
    let r = c
        .send(
            BOB,
            &[ALICE],
            &eicar_message().replace("a@remote.example", BOB),
        )
        .await;
    assert!(r.starts_with("554 5.7.1"), "{r}");
    assert_eq!(stored(&server.store, server.account(ALICE)).await.len(), 1);
    server.shutdown().await;

    // The JMAP EmailSubmission entry point (tern serve's SubmissionPolicy),
    // over the unix socket.
    let (dir, store) = open_store().await;
    let bob = store.lookup_address(BOB).unwrap().unwrap();
    let filter = tern_smtp::spam::Filter::new(
        &tern_smtp::SpamConfig::default(),
        &tern_smtp::VirusConfig {
            clamd: Some(ClamdAddress::Unix(clamd.socket().to_path_buf())),
            ..tern_smtp::VirusConfig::default()
        },
        &tern_smtp::DnsConfig::default(),
        store,
    )
    .unwrap();
    let infected = eicar_message().replace("a@remote.example", BOB);
    let refusal = filter
        .check_submission(bob, 1, infected.as_bytes())
        .await
        .unwrap_err();
    assert_eq!(refusal.kind, tern_smtp::spam::RefusalKind::Virus);
    assert!(!refusal.temporary());
    assert!(
        refusal.description.contains("virus found (Tern.Test.EICAR"),
        "{refusal:?}"
    );
    filter
        .check_submission(bob, 1, message("ok", "fine").as_bytes())
        .await
        .unwrap();
    drop(dir);

    // clamd gone: tempfail by default, or accept and tag.
    let port = clamd.port();
    drop(clamd);
    let server = TestServer::start(|c| {
        c.virus.clamd = Some(ClamdAddress::Tcp(format!("127.0.0.1:{port}")));
    })
    .await;
    let r = mx_send(server.mx, &[ALICE], &message("clean", "nothing")).await;
    assert!(r.starts_with("451 4.7.1"), "{r}");
    server.shutdown().await;
    let server = TestServer::start(|c| {
        c.virus.clamd = Some(ClamdAddress::Tcp(format!("127.0.0.1:{port}")));
        c.virus.on_unreachable = Unreachable::Accept;
    })
    .await;
    // A sender's own X-Virus-Status is not kept.
    let claim =
        message("clean", "nothing").replacen("Subject:", "X-Virus-Status: Clean\r\nSubject:", 1);
    let r = mx_send(server.mx, &[ALICE], &claim).await;
    assert!(r.starts_with("250"), "{r}");
    let copy = stored(&server.store, server.account(ALICE)).await.remove(0);
    assert_eq!(copy.header("X-Virus-Status").as_deref(), Some("Unscanned"));
    assert_eq!(copy.raw.matches("X-Virus-Status").count(), 1);
    server.shutdown().await;

    // The JMAP entry point under the same policy: the message to send
    // instead carries the tag, and only the filter's own.
    let (dir, store) = open_store().await;
    let bob = store.lookup_address(BOB).unwrap().unwrap();
    let filter = tern_smtp::spam::Filter::new(
        &tern_smtp::SpamConfig::default(),
        &tern_smtp::VirusConfig {
            clamd: Some(ClamdAddress::Tcp(format!("127.0.0.1:{port}"))),
            on_unreachable: Unreachable::Accept,
            ..tern_smtp::VirusConfig::default()
        },
        &tern_smtp::DnsConfig::default(),
        store,
    )
    .unwrap();
    let claim = message("ok", "fine").replacen("Subject:", "X-Virus-Status: Clean\r\nSubject:", 1);
    let sent = filter
        .check_submission(bob, 1, claim.as_bytes())
        .await
        .unwrap()
        .expect("a changed message");
    let sent = String::from_utf8(sent).unwrap();
    assert!(sent.starts_with("X-Virus-Status: Unscanned\r\n"), "{sent}");
    assert_eq!(sent.matches("X-Virus-Status").count(), 1, "{sent}");
    assert!(
        sent.ends_with("\r\n\r\nfine\r\n"),
        "the body is kept: {sent}"
    );
    drop(dir);
}
