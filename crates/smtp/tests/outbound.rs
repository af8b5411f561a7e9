//! Outbound delivery against a local DNS zone and scripted SMTP servers on
//! loopback addresses (127.0.0.2, 127.0.0.3, ... share one port, as MX
//! hosts do): MX preference order and fallback, A records without MX,
//! null MX and NXDOMAIN, temporary and permanent failures, expiry, DSNs
//! and delay notices, DKIM signing, per-domain connection limits, the
//! error queue.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mail_auth::hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::{A, MX};
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

    fn a(&mut self, name: &str, ip: Ipv4Addr) {
        self.0
            .entry((name.into(), RecordType::A))
            .or_default()
            .push(RData::A(A(ip)));
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

/// A scripted SMTP server: `greeting` first (a 4xx/5xx one ends the
/// session), `rcpt` for every RCPT; keeps what it accepted and counts
/// connections.
#[derive(Clone, Default)]
struct Log {
    connections: Arc<Mutex<usize>>,
    messages: Arc<Mutex<Vec<String>>>,
    /// Per MAIL command: whether the RCPT commands came with it (RFC 2920
    /// pipelining: already read into the buffer).
    pipelined: Arc<Mutex<Vec<bool>>>,
    /// Sessions open now, and the most ever open at once.
    active: Arc<AtomicUsize>,
    max_active: Arc<AtomicUsize>,
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

async fn scripted(addr: SocketAddr, greeting: &'static str, rcpt: &'static str) -> Log {
    scripted_with(addr, greeting, rcpt, Duration::ZERO).await
}

/// [`scripted`], answering each message's data only after `hold`.
async fn scripted_with(
    addr: SocketAddr,
    greeting: &'static str,
    rcpt: &'static str,
    hold: Duration,
) -> Log {
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
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(format!("{greeting}\r\n").as_bytes()).await;
                if !greeting.starts_with("220") {
                    return;
                }
                let mut accepted = 0;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
                    let reply = match verb.as_str() {
                        "EHLO" => "250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000".to_owned(),
                        "MAIL" => {
                            let buffered = lines.get_ref().buffer();
                            l.pipelined
                                .lock()
                                .unwrap()
                                .push(buffered.windows(7).any(|w| w == b"RCPT TO"));
                            "250 2.1.0 ok".to_owned()
                        }
                        "RCPT" => {
                            accepted += usize::from(rcpt.starts_with('2'));
                            rcpt.to_owned()
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
                            tokio::time::sleep(hold).await;
                            l.messages.lock().unwrap().push(data);
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Setup {
    _dir: tempfile::TempDir,
    store: MailStore,
    stop: tokio::sync::watch::Sender<bool>,
    alice: tern_store::AccountId,
    metrics: Arc<tern_smtp::outbound::Metrics>,
}

async fn setup(zone: Zone, port: u16) -> Setup {
    setup_with(zone, port, |_| {}).await
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

async fn send(store: &MailStore, to: &str, subject: &str) -> u64 {
    let store = store.clone();
    let (to, subject) = (to.to_owned(), subject.to_owned());
    tokio::task::spawn_blocking(move || {
        let raw = format!(
            "From: Alice <alice@here.test>\r\nTo: <{to}>\r\nSubject: {subject}\r\n\
             Message-ID: <{subject}@here.test>\r\n\r\nHello.\r\n"
        );
        let envelope = Envelope {
            mail_from: "alice@here.test".into(),
            recipients: vec![EnvelopeRecipient {
                address: to,
                ..Default::default()
            }],
            ..Default::default()
        };
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
    let port = free_port();
    let mut zone = Zone::default();
    zone.mx("dest.test", 20, "backup.dest.test.");
    zone.mx("dest.test", 10, "primary.dest.test.");
    zone.a("primary.dest.test", Ipv4Addr::new(127, 0, 0, 2));
    zone.a("backup.dest.test", Ipv4Addr::new(127, 0, 0, 3));
    let primary = scripted(
        SocketAddr::from(([127, 0, 0, 2], port)),
        "421 4.3.2 busy",
        "250 ok",
    )
    .await;
    let backup = scripted(
        SocketAddr::from(([127, 0, 0, 3], port)),
        "220 backup ESMTP",
        "250 2.1.5 ok",
    )
    .await;
    let s = setup(zone, port).await;
    send(&s.store, "bob@dest.test", "order").await;
    let m = until("the backup's copy", || {
        backup.messages.lock().unwrap().first().cloned()
    })
    .await;
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
    let port = free_port();
    let mut zone = Zone::default();
    zone.a("bare.test", Ipv4Addr::new(127, 0, 0, 4));
    let bare = scripted(
        SocketAddr::from(([127, 0, 0, 4], port)),
        "220 bare ESMTP",
        "250 2.1.5 ok",
    )
    .await;
    let s = setup(zone, port).await;
    send(&s.store, "carol@bare.test", "implicit").await;
    let m = until("the copy", || {
        bare.messages.lock().unwrap().first().cloned()
    })
    .await;
    assert!(m.contains("Subject: implicit"), "{m}");
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rfc7505_null_mx_and_5xx_fail_at_once_with_a_dsn() {
    let port = free_port();
    let mut zone = Zone::default();
    zone.mx("nullmx.test", 0, ".");
    zone.mx("strict.test", 10, "mx.strict.test.");
    zone.a("mx.strict.test", Ipv4Addr::new(127, 0, 0, 5));
    let strict = scripted(
        SocketAddr::from(([127, 0, 0, 5], port)),
        "220 strict ESMTP",
        "550 5.1.1 unknown user",
    )
    .await;
    let s = setup(zone, port).await;
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
    let port = free_port();
    let mut zone = Zone::default();
    zone.mx("flaky.test", 10, "mx.flaky.test.");
    zone.a("mx.flaky.test", Ipv4Addr::new(127, 0, 0, 6));
    let s = setup(zone, port).await;
    send(&s.store, "z@flaky.test", "patience").await;
    // Nothing listens yet: connection refused, a temporary failure.
    until("a failed attempt", || {
        let l = queue::list(s.store.kv()).unwrap();
        l.first()
            .filter(|(_, m)| m.attempts >= 1 && m.lease.is_none())
            .map(|_| ())
    })
    .await;
    let server = scripted(
        SocketAddr::from(([127, 0, 0, 6], port)),
        "220 flaky ESMTP",
        "250 2.1.5 ok",
    )
    .await;
    let m = until("the retried copy", || {
        server.messages.lock().unwrap().first().cloned()
    })
    .await;
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
    let port = free_port();
    let mut zone = Zone::default();
    zone.mx("busy.test", 10, "mx.busy.test.");
    zone.a("mx.busy.test", Ipv4Addr::new(127, 0, 0, 7));
    // Each message's data is held 300 ms: deliveries overlap.
    let busy = scripted_with(
        SocketAddr::from(([127, 0, 0, 7], port)),
        "220 busy ESMTP",
        "250 2.1.5 ok",
        Duration::from_millis(300),
    )
    .await;
    let s = setup_with(zone, port, |c| c.per_domain = 2).await;
    for i in 0..6 {
        send(&s.store, &format!("u{i}@busy.test"), &format!("m{i}")).await;
    }
    until("six copies", || {
        (busy.messages.lock().unwrap().len() == 6).then_some(())
    })
    .await;
    // Never more than two at once, and two did overlap (the limit, not
    // the scheduler, is what held them back).
    assert_eq!(busy.max_active.load(Ordering::SeqCst), 2);
    assert_eq!(*busy.connections.lock().unwrap(), 6);
    until("an empty queue", || {
        (queue_len(&s.store) == 0).then_some(())
    })
    .await;
    let _ = s.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_failures_bounce_at_expiry_after_a_delay_notice() {
    let port = free_port();
    let mut zone = Zone::default();
    zone.mx("slow.test", 10, "mx.slow.test.");
    zone.a("mx.slow.test", Ipv4Addr::new(127, 0, 0, 9));
    let slow = scripted(
        SocketAddr::from(([127, 0, 0, 9], port)),
        "220 slow ESMTP",
        "451 4.2.1 mailbox busy, try later",
    )
    .await;
    let s = setup_with(zone, port, |c| {
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
    assert!(*slow.connections.lock().unwrap() >= 3, "retried");
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
    let port = free_port();
    let s = setup(Zone::default(), port).await;
    let id = {
        let store = s.store.clone();
        tokio::task::spawn_blocking(move || {
            let envelope = Envelope {
                mail_from: "alice@here.test".into(),
                recipients: vec![EnvelopeRecipient {
                    address: "bob@elsewhere.test".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
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
