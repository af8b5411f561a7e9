//! Outbound delivery against a local DNS zone and scripted SMTP servers on
//! loopback addresses (127.0.0.2, 127.0.0.3, ... share one port, as MX
//! hosts do): MX preference order and fallback, A records without MX,
//! null MX and NXDOMAIN, temporary and permanent failures, expiry, DSNs
//! and delay notices, DKIM signing, per-domain connection limits, the
//! error queue.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::{A, AAAA, MX};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tern_smtp::DnsConfig;
use tern_smtp::outbound::{Outbound, OutboundConfig, dkim};
use tern_store::email::Listing;
use tern_store::queue;
use tern_store::{Envelope, EnvelopeRecipient, MailStore};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};

#[derive(Default, Clone)]
struct Zone(HashMap<(String, RecordType), Vec<RData>>);

impl Zone {
    fn mx(&mut self, domain: &str, preference: u16, host: &str) {
        self.0
            .entry((domain.into(), RecordType::MX))
            .or_default()
            .push(RData::MX(MX::new(
                preference,
                Name::from_ascii(host).unwrap(),
            )));
    }

    /// An A or AAAA record.
    fn address(&mut self, name: &str, ip: IpAddr) {
        let (kind, data) = match ip {
            IpAddr::V4(v4) => (RecordType::A, RData::A(A(v4))),
            IpAddr::V6(v6) => (RecordType::AAAA, RData::AAAA(AAAA(v6))),
        };
        self.0.entry((name.into(), kind)).or_default().push(data);
    }
}

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

/// What a scripted SMTP server logged: connections, accepted messages.
#[derive(Clone, Default)]
struct Log {
    connections: Arc<Mutex<usize>>,
    messages: Arc<Mutex<Vec<String>>>,
    /// Per MAIL command: whether the RCPT commands came with it (RFC 2920
    /// pipelining: already read into the buffer).
    pipelined: Arc<Mutex<Vec<bool>>>,
    /// Per connection: whether the client asked for STARTTLS.
    starttls: Arc<Mutex<Vec<bool>>>,
    /// RSET commands received.
    rsets: Arc<AtomicUsize>,
    /// Sessions open now, and the most ever open at once.
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
}

impl Log {
    /// The first message accepted, once there is one.
    async fn first_message(&self, what: &str) -> String {
        until(what, || self.messages.lock().unwrap().first().cloned()).await
    }
}

/// Counts a session as open until `close` (or the drop).
struct Open(Option<Arc<AtomicUsize>>);

impl Open {
    fn close(&mut self) {
        if let Some(a) = self.0.take() {
            a.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.close();
    }
}

/// How a scripted SMTP server behaves: `greeting` first (a 4xx/5xx one
/// ends the session), `rcpt` for every RCPT.
#[derive(Clone, Copy)]
struct Script {
    greeting: &'static str,
    rcpt: &'static str,
    /// Each message's data is answered only after this.
    hold: Duration,
    /// Offers STARTTLS, agrees to it, then answers the handshake with
    /// garbage.
    broken_tls: bool,
    /// Closes the connection right after accepting each message, without
    /// telling (as a server's idle timeout would).
    drop_after_message: bool,
}

impl Script {
    fn new(greeting: &'static str, rcpt: &'static str) -> Script {
        Script {
            greeting,
            rcpt,
            hold: Duration::ZERO,
            broken_tls: false,
            drop_after_message: false,
        }
    }

    /// Greets and accepts every recipient.
    fn accepting() -> Script {
        Script::new("220 scripted ESMTP", "250 2.1.5 ok")
    }

    fn holding(self, hold: Duration) -> Script {
        Script { hold, ..self }
    }

    fn with_broken_tls(self) -> Script {
        Script {
            broken_tls: true,
            ..self
        }
    }

    fn dropping_after_each(self) -> Script {
        Script {
            drop_after_message: true,
            ..self
        }
    }
}

async fn scripted(addr: SocketAddr, script: Script) -> Log {
    let listener = TcpListener::bind(addr).await.unwrap();
    let log = Log::default();
    let l = log.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            *l.connections.lock().unwrap() += 1;
            let now = l.active.fetch_add(1, Ordering::SeqCst) + 1;
            l.max_active.fetch_max(now, Ordering::SeqCst);
            let mut open = Open(Some(l.active.clone()));
            let l = l.clone();
            tokio::spawn(async move {
                let connection = {
                    let mut t = l.starttls.lock().unwrap();
                    t.push(false);
                    t.len() - 1
                };
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let greeting = script.greeting;
                let _ = write.write_all(format!("{greeting}\r\n").as_bytes()).await;
                if !greeting.starts_with("220") {
                    return;
                }
                let mut accepted = 0;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    let reply = match verb.as_str() {
                        "EHLO" if script.broken_tls => {
                            "250-scripted\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SIZE 1000000"
                                .to_owned()
                        }
                        "EHLO" => "250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000".to_owned(),
                        "STAR" => {
                            l.starttls.lock().unwrap()[connection] = true;
                            let _ = write.write_all(b"220 2.0.0 go ahead\r\n").await;
                            // Whatever the client sends, this is no TLS.
                            let _ = write.write_all(b"this is not a TLS server\r\n").await;
                            return;
                        }
                        "RSET" => {
                            l.rsets.fetch_add(1, Ordering::SeqCst);
                            accepted = 0;
                            "250 2.0.0 ok".to_owned()
                        }
                        "MAIL" => {
                            let buffered = lines.get_ref().buffer();
                            l.pipelined
                                .lock()
                                .unwrap()
                                .push(buffered.windows(7).any(|w| w == b"RCPT TO"));
                            "250 2.1.0 ok".to_owned()
                        }
                        "RCPT" => {
                            accepted += usize::from(script.rcpt.starts_with('2'));
                            script.rcpt.to_owned()
                        }
                        "DATA" if accepted == 0 => "554 5.5.1 No valid recipients".to_owned(),
                        "DATA" => {
                            let _ = write.write_all(b"354 go on\r\n").await;
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(&l);
                                data.push('\n');
                            }
                            tokio::time::sleep(script.hold).await;
                            l.messages.lock().unwrap().push(data);
                            accepted = 0;
                            if script.drop_after_message {
                                open.close();
                                let _ = write.write_all(b"250 2.0.0 accepted\r\n").await;
                                return;
                            }
                            "250 2.0.0 accepted".to_owned()
                        }
                        "QUIT" => {
                            // Closed before the client can go on.
                            open.close();
                            let _ = write.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        _ => "250 2.0.0 ok".to_owned(),
                    };
                    if write
                        .write_all(format!("{reply}\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    log
}

/// The fake network of a test: a DNS zone, and scripted SMTP servers on
/// loopback addresses (127.0.0.2, 127.0.0.3, ..., ::1) that share one
/// port, as MX hosts do.
struct Net {
    zone: Zone,
    port: u16,
}

impl Net {
    fn new() -> Net {
        Net {
            zone: Zone::default(),
            port: free_port(),
        }
    }

    /// `label.domain`, an MX of `domain` with `preference`, at `ip`,
    /// running `script`.
    async fn mx(
        &mut self,
        domain: &str,
        preference: u16,
        label: &str,
        ip: impl Into<IpAddr>,
        script: Script,
    ) -> Log {
        let ip = ip.into();
        let host = format!("{label}.{domain}");
        self.zone.mx(domain, preference, &format!("{host}."));
        self.zone.address(&host, ip);
        scripted(SocketAddr::new(ip, self.port), script).await
    }

    /// `domain` without MX: its own address record, `ip`, runs `script`.
    async fn bare(&mut self, domain: &str, ip: impl Into<IpAddr>, script: Script) -> Log {
        let ip = ip.into();
        self.zone.address(domain, ip);
        scripted(SocketAddr::new(ip, self.port), script).await
    }

    /// An MX of `domain` whose server is not started (see [`Net::serve`]).
    fn mx_unserved(&mut self, domain: &str, host: &str, ip: Ipv4Addr) -> SocketAddr {
        self.zone.mx(domain, 10, &format!("{host}."));
        self.zone.address(host, ip.into());
        SocketAddr::from((ip, self.port))
    }

    /// Outbound delivery over this network.
    async fn start(self) -> Setup {
        self.start_with(|_| {}).await
    }

    async fn start_with(self, configure: impl FnOnce(&mut OutboundConfig)) -> Setup {
        setup_with(self.zone, self.port, configure).await
    }
}

fn free_port() -> u16 {
    tern_testkit::free_port()
}

struct Setup {
    _dir: tempfile::TempDir,
    store: MailStore,
    stop: tokio::sync::watch::Sender<bool>,
    alice: tern_store::AccountId,
    metrics: Arc<tern_smtp::outbound::Metrics>,
}

async fn setup_with(zone: Zone, port: u16, configure: impl FnOnce(&mut OutboundConfig)) -> Setup {
    let dns = dns_server(zone).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_owned();
    let (store, alice) = tokio::task::spawn_blocking(move || {
        let store = MailStore::open(&path).unwrap();
        store.add_domain("here.test").unwrap();
        let alice = store.create_account("alice@here.test", "pw").unwrap();
        let key = dkim::generate(tern_store::dkim::DkimAlgorithm::Ed25519Sha256, "s1").unwrap();
        tern_store::dkim::put(store.kv(), "here.test", &key).unwrap();
        (store, alice)
    })
    .await
    .unwrap();
    let config = OutboundConfig {
        hostname: "mx.here.test".into(),
        dns: DnsConfig {
            nameservers: vec![dns],
            timeout: Duration::from_secs(2),
        },
        smtp_port: port,
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(1),
        connect_timeout: Duration::from_secs(2),
        poll: Duration::from_millis(200),
        ..Default::default()
    };
    let mut config = config;
    configure(&mut config);
    let (stop, rx) = tokio::sync::watch::channel(false);
    let outbound = Outbound::new(config, store.clone()).unwrap();
    let metrics = outbound.metrics();
    tokio::spawn(outbound.run(rx));
    Setup {
        _dir: dir,
        store,
        stop,
        alice,
        metrics,
    }
}

/// The envelope of a message from alice to `to`.
fn alice_to(to: &str) -> Envelope {
    Envelope {
        mail_from: "alice@here.test".into(),
        recipients: vec![EnvelopeRecipient {
            address: to.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

async fn send(store: &MailStore, to: &str, subject: &str) -> u64 {
    let store = store.clone();
    let (to, subject) = (to.to_owned(), subject.to_owned());
    tokio::task::spawn_blocking(move || {
        let raw = format!(
            "From: Alice <alice@here.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
             Message-ID: <{subject}@here.test>\r\n\r\nHello.\r\n"
        );
        let envelope = alice_to(&to);
        let alice = store.lookup_address("alice@here.test").unwrap();
        queue::enqueue(store.kv(), raw.as_bytes(), alice, &envelope, 0).unwrap()
    })
    .await
    .unwrap()
}

async fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (subject, raw message) of every email in the account.
fn inbox_messages(store: &MailStore, account: tern_store::AccountId) -> Vec<(String, String)> {
    store
        .kv()
        .read(|tx| {
            let ids = tern_store::email::list_by_date(tx, account, Listing::All, true, None, 50)?;
            ids.into_iter()
                .map(|(_, id)| {
                    let meta = tern_store::email::get(tx, account, id)?.expect("listed");
                    let raw = tern_store::blob::read(tx, &meta.blob)?.expect("blob");
                    Ok((
                        meta.envelope.subject.unwrap_or_default(),
                        String::from_utf8_lossy(&raw).into_owned(),
                    ))
                })
                .collect::<tern_store::Result<Vec<_>>>()
        })
        .unwrap()
}

fn inbox_subjects(store: &MailStore, account: tern_store::AccountId) -> Vec<String> {
    store
        .kv()
        .read(|tx| {
            let ids = tern_store::email::list_by_date(tx, account, Listing::All, true, None, 50)?;
            ids.into_iter()
                .map(|(_, id)| {
                    Ok(tern_store::email::get(tx, account, id)?
                        .and_then(|m| m.envelope.subject)
                        .unwrap_or_default())
                })
                .collect::<tern_store::Result<Vec<_>>>()
        })
        .unwrap()
}

fn queue_len(store: &MailStore) -> u64 {
    queue::stats(store.kv()).unwrap().depth
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc5321_5_1_lowest_preference_first_then_the_next_host() {
    let mut net = Net::new();
    let backup = net
        .mx(
            "dest.test",
            20,
            "backup",
            [127, 0, 0, 3],
            Script::accepting(),
        )
        .await;
    let primary_script = Script::new("421 4.3.2 busy", "250 ok");
    let primary = net
        .mx("dest.test", 10, "primary", [127, 0, 0, 2], primary_script)
        .await;
    let s = net.start().await;
    send(&s.store, "bob@dest.test", "order").await;
    let m = backup.first_message("the backup's copy").await;
    assert_eq!(*primary.connections.lock().unwrap(), 1, "the primary first");
    // RFC 2920: MAIL, RCPT and DATA in one write to a PIPELINING server.
    assert_eq!(*backup.pipelined.lock().unwrap(), vec![true]);
    // Signed with the author domain's key.
    assert!(m.starts_with("DKIM-Signature: "), "{m}");
    assert!(m.contains("d=here.test") && m.contains("s=s1"), "{m}");
    until("an empty queue", || {
        (queue_len(&s.store) == 0).then_some(())
    })
    .await;
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc5321_5_1_without_mx_the_address_record_is_used() {
    let mut net = Net::new();
    let bare = net
        .bare("bare.test", [127, 0, 0, 4], Script::accepting())
        .await;
    let s = net.start().await;
    send(&s.store, "carol@bare.test", "implicit").await;
    let m = bare.first_message("the copy").await;
    assert!(m.contains("Subject: implicit"), "{m}");
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7505_null_mx_and_5xx_fail_at_once_with_a_dsn() {
    let mut net = Net::new();
    net.zone.mx("nullmx.test", 0, ".");
    let strict_script = Script::new("220 strict ESMTP", "550 5.1.1 unknown user");
    let strict = net
        .mx("strict.test", 10, "mx", [127, 0, 0, 5], strict_script)
        .await;
    let s = net.start().await;
    send(&s.store, "x@nullmx.test", "nowhere").await;
    send(&s.store, "y@strict.test", "refused").await;
    // A domain that does not exist (NXDOMAIN): permanent too.
    send(&s.store, "w@no-such-domain.test", "nxdomain").await;
    let subjects = until("three DSNs", || {
        let s = inbox_subjects(&s.store, s.alice);
        (s.len() == 3).then_some(s)
    })
    .await;
    let reports: Vec<String> = inbox_messages(&s.store, s.alice)
        .into_iter()
        .map(|(_, raw)| raw)
        .collect();
    for (rcpt, status) in [
        ("x@nullmx.test", "5.1.2"),
        ("y@strict.test", "5.1.1"),
        ("w@no-such-domain.test", "5.1.2"),
    ] {
        assert!(
            reports
                .iter()
                .any(|r| r.contains(&format!("Final-Recipient: rfc822; {rcpt}"))
                    && r.contains(&format!("Status: {status}"))
                    && r.contains("Action: failed")),
            "{rcpt}: {reports:?}"
        );
    }
    assert!(
        subjects.iter().all(|x| x.contains("Undelivered")),
        "{subjects:?}"
    );
    assert_eq!(*strict.connections.lock().unwrap(), 1, "no retry after 5xx");
    assert!(strict.messages.lock().unwrap().is_empty());
    until("an empty queue", || {
        (queue_len(&s.store) == 0).then_some(())
    })
    .await;
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_are_retried_until_they_succeed() {
    let mut net = Net::new();
    let flaky = net.mx_unserved("flaky.test", "mx.flaky.test", Ipv4Addr::new(127, 0, 0, 6));
    let s = net.start().await;
    send(&s.store, "z@flaky.test", "patience").await;
    // Nothing listens yet: connection refused, a temporary failure.
    until("a failed attempt", || {
        let l = queue::list(s.store.kv()).unwrap();
        l.first()
            .filter(|(_, m)| m.attempts >= 1 && m.lease.is_none())
            .map(|_| ())
    })
    .await;
    let server = scripted(flaky, Script::accepting()).await;
    let m = server.first_message("the retried copy").await;
    assert!(m.contains("Subject: patience"), "{m}");
    until("an empty queue", || {
        (queue_len(&s.store) == 0).then_some(())
    })
    .await;
    assert!(inbox_subjects(&s.store, s.alice).is_empty(), "no DSN");
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_one_domain_are_limited_by_per_domain() {
    let mut net = Net::new();
    // Each message's data is held 300 ms: deliveries overlap.
    let busy_script = Script::accepting().holding(Duration::from_millis(300));
    let busy = net
        .mx("busy.test", 10, "mx", [127, 0, 0, 7], busy_script)
        .await;
    let s = net.start_with(|c| c.per_domain = 2).await;
    for i in 0..6 {
        send(&s.store, &format!("u{i}@busy.test"), &format!("m{i}")).await;
    }
    until("six copies", || {
        (busy.messages.lock().unwrap().len() == 6).then_some(())
    })
    .await;
    // Never more than two connections open at once (idle ones kept for
    // reuse included), and two did overlap (the limit, not the scheduler,
    // is what held them back); sessions were reused.
    assert_eq!(busy.max_active.load(Ordering::SeqCst), 2);
    assert!(*busy.connections.lock().unwrap() < 6);
    until("an empty queue", || {
        (queue_len(&s.store) == 0).then_some(())
    })
    .await;
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_bounce_at_expiry_after_a_delay_notice() {
    let mut net = Net::new();
    let slow_script = Script::new("220 slow ESMTP", "451 4.2.1 mailbox busy, try later");
    let slow = net
        .mx("slow.test", 10, "mx", [127, 0, 0, 9], slow_script)
        .await;
    let s = net
        .start_with(|c| {
            c.expiry = Duration::from_secs(4);
            c.delay_notice = Some(Duration::from_secs(1));
        })
        .await;
    send(&s.store, "v@slow.test", "stuck").await;
    let reports = until("a delay notice and a bounce", || {
        let m = inbox_messages(&s.store, s.alice);
        (m.len() == 2 && m.iter().any(|(s, _)| s.contains("Undelivered"))).then_some(m)
    })
    .await;
    let delay = reports
        .iter()
        .find(|(s, _)| s.starts_with("Delayed Mail"))
        .unwrap_or_else(|| panic!("no delay notice: {reports:?}"));
    assert!(delay.1.contains("Action: delayed"), "{}", delay.1);
    assert!(delay.1.contains("Status: 4.2.1"), "{}", delay.1);
    assert!(delay.1.contains("Will-Retry-Until: "), "{}", delay.1);
    let bounce = reports
        .iter()
        .find(|(s, _)| s.starts_with("Undelivered"))
        .unwrap();
    assert!(bounce.1.contains("Action: failed"), "{}", bounce.1);
    // Expired after retries (RFC 3463 4.4.7), with the last reply.
    assert!(bounce.1.contains("Status: 4.4.7"), "{}", bounce.1);
    assert!(bounce.1.contains("mailbox busy"), "{}", bounce.1);
    // Retried: a transaction per attempt (on one session or several).
    assert!(slow.pipelined.lock().unwrap().len() >= 3, "retried");
    assert!(slow.messages.lock().unwrap().is_empty());
    until("an empty queue", || {
        (queue_len(&s.store) == 0).then_some(())
    })
    .await;
    let m = &s.metrics;
    assert_eq!(m.dsn_delay.load(Ordering::Relaxed), 1);
    assert_eq!(m.dsn_failure.load(Ordering::Relaxed), 1);
    assert_eq!(m.failed.load(Ordering::Relaxed), 1);
    assert!(m.deferred.load(Ordering::Relaxed) >= 2);
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsendable_messages_wait_in_the_error_queue_until_retried_or_cancelled() {
    let s = Net::new().start().await;
    let id = {
        let store = s.store.clone();
        tokio::task::spawn_blocking(move || {
            let envelope = alice_to("bob@elsewhere.test");
            // Not a message: no line ends.
            queue::enqueue(store.kv(), b"garbage without line ends", None, &envelope, 0).unwrap()
        })
        .await
        .unwrap()
    };
    until("the message held", || {
        (queue::held(s.store.kv()).unwrap() == vec![id]).then_some(())
    })
    .await;
    let stats = queue::stats(s.store.kv()).unwrap();
    assert_eq!((stats.depth, stats.held), (1, 1));
    let held = s.store.kv().read(|tx| queue::get(tx, id)).unwrap().unwrap();
    assert_eq!(held.held.as_deref(), Some("not a valid message"));
    assert_eq!(s.metrics.held.load(Ordering::Relaxed), 1);
    // An operator's retry: out of the error queue, tried, held again.
    queue::retry(s.store.kv(), id).unwrap();
    until("a second hold", || {
        (s.metrics.held.load(Ordering::Relaxed) == 2).then_some(())
    })
    .await;
    until("held again", || {
        (queue::held(s.store.kv()).unwrap() == vec![id]).then_some(())
    })
    .await;
    queue::cancel(s.store.kv(), id).unwrap();
    assert_eq!(queue_len(&s.store), 0);
    assert!(queue::held(s.store.kv()).unwrap().is_empty());
    let _ = s.stop.send(true);
}

/// Whether this machine has an IPv6 loopback to listen on.
fn ipv6_loopback() -> bool {
    std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc5321_5_1_aaaa_records_are_used_for_mx_hosts_and_bare_domains() {
    if !ipv6_loopback() {
        println!("SKIPPED: no IPv6 loopback (::1) on this machine");
        return;
    }
    let mut net = Net::new();
    // An MX host with only an AAAA record, and a domain without MX whose
    // only address is an AAAA record: both on ::1.
    let v6 = net
        .mx(
            "v6.test",
            10,
            "mx",
            Ipv6Addr::LOCALHOST,
            Script::accepting(),
        )
        .await;
    net.zone.address("bare6.test", Ipv6Addr::LOCALHOST.into());
    let s = net.start().await;
    send(&s.store, "ann@v6.test", "over-ipv6-mx").await;
    send(&s.store, "bo@bare6.test", "over-ipv6-bare").await;
    let got = until("both copies over IPv6", || {
        let m = v6.messages.lock().unwrap().clone();
        (m.len() == 2).then_some(m)
    })
    .await;
    for subject in ["over-ipv6-mx", "over-ipv6-bare"] {
        assert!(
            got.iter()
                .any(|m| m.contains(&format!("Subject: {subject}"))),
            "{subject}: {got:?}"
        );
    }
    until("an empty queue", || {
        (queue_len(&s.store) == 0).then_some(())
    })
    .await;
    assert_eq!(s.metrics.deferred.load(Ordering::Relaxed), 0);
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7435_a_failed_starttls_handshake_falls_back_to_plain_text() {
    let mut net = Net::new();
    let broken_script = Script::accepting().with_broken_tls();
    let broken = net
        .mx("badtls.test", 10, "mx", [127, 0, 0, 10], broken_script)
        .await;
    let s = net.start().await;
    send(&s.store, "dee@badtls.test", "plain-after-all").await;
    let m = broken.first_message("the plain-text copy").await;
    assert!(m.contains("Subject: plain-after-all"), "{m}");
    // The first session asked for STARTTLS and failed in the handshake;
    // the same attempt reconnected without it.
    assert_eq!(*broken.starttls.lock().unwrap(), vec![true, false]);
    assert_eq!(*broken.connections.lock().unwrap(), 2);
    until("an empty queue", || {
        (queue_len(&s.store) == 0).then_some(())
    })
    .await;
    assert_eq!(
        s.metrics.deferred.load(Ordering::Relaxed),
        0,
        "no retry needed"
    );
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_reused_with_rset_and_replaced_when_the_server_dropped_them() {
    let mut net = Net::new();
    let accepting = Script::accepting();
    let keeps = net
        .mx("keeps.test", 10, "mx", [127, 0, 0, 11], accepting)
        .await;
    let drops_script = Script::accepting().dropping_after_each();
    let drops = net
        .mx("drops.test", 10, "mx", [127, 0, 0, 12], drops_script)
        .await;
    let s = net
        .start_with(|c| c.reuse_idle = Duration::from_secs(30))
        .await;
    // One message after the other to each server.
    for i in 0..3 {
        send(&s.store, &format!("k{i}@keeps.test"), &format!("keep{i}")).await;
        send(&s.store, &format!("d{i}@drops.test"), &format!("drop{i}")).await;
        until("both copies", || {
            (keeps.messages.lock().unwrap().len() == i + 1
                && drops.messages.lock().unwrap().len() == i + 1)
                .then_some(())
        })
        .await;
    }
    // One session carried the three messages, each later one after RSET.
    assert_eq!(*keeps.connections.lock().unwrap(), 1);
    assert_eq!(keeps.rsets.load(Ordering::SeqCst), 2);
    // A session the server closed is replaced at once: nothing deferred.
    assert_eq!(*drops.connections.lock().unwrap(), 3);
    until("an empty queue", || {
        (queue_len(&s.store) == 0).then_some(())
    })
    .await;
    assert_eq!(s.metrics.deferred.load(Ordering::Relaxed), 0);
    assert_eq!(s.metrics.delivered.load(Ordering::Relaxed), 6);
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc8621_7_a_submissions_dsns_are_listed_in_its_status() {
    let mut net = Net::new();
    let refusing = Script::new("220 refuses ESMTP", "550 5.1.1 unknown user");
    net.mx("refuses.test", 10, "mx", [127, 0, 0, 13], refusing)
        .await;
    let s = net.start().await;
    // A message queued for a JMAP submission (document 1 of alice).
    let submission = 1;
    {
        let (store, alice) = (s.store.clone(), s.alice);
        tokio::task::spawn_blocking(move || {
            let raw = b"From: <alice@here.test>\r\nTo: <x@refuses.test>\r\n\
                        Subject: refused\r\n\r\nHello.\r\n";
            let hash = tern_store::blob::put(store.kv(), raw).unwrap();
            let envelope = alice_to("x@refuses.test");
            store
                .kv()
                .transact(|tx| {
                    let id = queue::enqueue_in(
                        tx,
                        &queue::NewMessage {
                            blob: hash,
                            size: raw.len() as u64,
                            account: Some(alice),
                            submission: Some(submission),
                            envelope: &envelope,
                            send_at: 0,
                        },
                    )?;
                    let status = queue::SubmissionStatus {
                        queue_id: Some(id),
                        undo: queue::UndoStatus::Final,
                        recipients: Vec::new(),
                        dsn_blobs: Vec::new(),
                    };
                    queue::put_status(tx, alice, submission, &status)
                })
                .unwrap();
        })
        .await
        .unwrap();
    }
    let (_, report) = until("the DSN", || {
        inbox_messages(&s.store, s.alice).into_iter().next()
    })
    .await;
    let status = until("the DSN listed", || {
        let st = s
            .store
            .kv()
            .read(|tx| queue::get_status(tx, s.alice, submission))
            .unwrap()
            .unwrap();
        (!st.dsn_blobs.is_empty()).then_some(st)
    })
    .await;
    // The blob listed is the DSN in the inbox, byte for byte.
    let listed = s
        .store
        .kv()
        .read(|tx| tern_store::blob::read(tx, &status.dsn_blobs[0]))
        .unwrap()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&listed), report);
    assert_eq!(status.dsn_blobs.len(), 1);
    assert_eq!(status.recipients[0].delivered, queue::Delivery::No);
    let _ = s.stop.send(true);
}
