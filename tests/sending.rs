//! End-to-end tests of sending: two `tern` binaries on loopback, each with
//! its own domain (a.test, b.test), a DNS server on 127.0.0.1 serving a
//! test zone (MX, SPF, DKIM, DMARC), and small scripted SMTP servers.
//!
//! - A's user sends to B's user through JMAP EmailSubmission; B's
//!   Authentication-Results shows spf=pass, dkim=pass, dmarc=pass (A signs
//!   with Ed25519), the message came over STARTTLS and without its Bcc;
//!   the draft moves to Sent; the submission's deliveryStatus turns "yes".
//!   B's user answers: A's Authentication-Results shows the same with B's
//!   RSA-2048 signature.
//! - A delayed send (FUTURERELEASE HOLDFOR) is pending, then sent.
//! - A destination answering 4xx and then 250 is retried and delivered.
//! - A destination answering 5xx produces a DSN in the sender's Inbox.
//! - A server killed with SIGKILL while holding queued mail, then
//!   restarted, still delivers it.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Base, CORE, Listeners, MAIL, Ports, SUBMISSION, Tern, basic, free_port, http};
use mail_auth::hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::rdata::{A, MX, TXT};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use serde_json::{Value, json};

// ---------------------------------------------------------------- DNS ---

/// A test zone: (lowercase name, type) → records.
#[derive(Default, Clone)]
struct Zone(HashMap<(String, RecordType), Vec<RData>>);

impl Zone {
    fn add(&mut self, name: &str, kind: RecordType, data: RData) {
        self.0
            .entry((name.to_lowercase(), kind))
            .or_default()
            .push(data);
    }

    fn txt(&mut self, name: &str, text: &str) {
        let parts: Vec<String> = text
            .as_bytes()
            .chunks(255)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        self.add(name, RecordType::TXT, RData::TXT(TXT::new(parts)));
    }

    fn mail_domain(&mut self, domain: &str, dkim_txt: &str) {
        let mx = format!("mx.{domain}");
        self.add(
            domain,
            RecordType::MX,
            RData::MX(MX::new(10, Name::from_ascii(format!("{mx}.")).unwrap())),
        );
        self.add(&mx, RecordType::A, RData::A(A(Ipv4Addr::LOCALHOST)));
        self.txt(domain, "v=spf1 ip4:127.0.0.1 -all");
        self.txt(&format!("tern._domainkey.{domain}"), dkim_txt);
        self.txt(&format!("_dmarc.{domain}"), "v=DMARC1; p=reject");
    }
}

/// Serves the zone over UDP on 127.0.0.1 from a thread of its own.
fn dns_server(zone: Arc<Mutex<Zone>>) -> SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, from)) = socket.recv_from(&mut buf) else {
                return;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let zone = zone.lock().unwrap().clone();
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
                let _ = socket.send_to(&bytes, from);
            }
        }
    });
    addr
}

// ------------------------------------------------------------ servers ---

/// A `tern` for `domain` (hostname `mx.{domain}`, the metrics listener
/// on) on `ports`, resolving names through `dns` and sending to MX hosts
/// on `mx_port` (and to `routes`), with quick retries and short leases;
/// its log at debug for Tern's crates.
fn node(domain: &str, ports: Ports, dns: SocketAddr, mx_port: u16, routes: &[(&str, u16)]) -> Tern {
    let routes: String = routes
        .iter()
        .map(|(d, p)| format!("{d:?} = \"127.0.0.1:{p}\"\n"))
        .collect();
    Tern::with(
        Base {
            hostname: &format!("mx.{domain}"),
            domain,
            ports,
            listeners: Listeners {
                metrics: true,
                ..Listeners::default()
            },
            log: Some("tern=debug,tern_smtp=debug,tern_store=info,info"),
        },
        &format!(
            "[dns]\n\
             nameservers = [\"{dns}\"]\n\
             timeout = 2\n\
             [queue]\n\
             retry_initial = 1\n\
             retry_max = 2\n\
             lease = 3\n\
             smtp_port = {mx_port}\n\
             connect_timeout = 2\n\
             [routes]\n\
             {routes}"
        ),
    )
}

/// The node's `/metrics` text.
fn metrics_text(node: &Tern) -> String {
    http(node.metrics, "GET", "/metrics", &[], b"").text()
}

/// A JMAP user of one node.
struct User {
    port: u16,
    address: String,
    password: String,
    account: String,
}

impl User {
    fn login(node: &Tern, address: &str, password: &str) -> User {
        User {
            port: node.jmap,
            address: address.to_owned(),
            password: password.to_owned(),
            account: common::account_id(node.jmap, address, password),
        }
    }

    /// The `Authorization` value.
    fn auth(&self) -> String {
        basic(&self.address, &self.password)
    }

    /// Runs method calls; returns the methodResponses.
    fn call(&self, calls: Value) -> Vec<Value> {
        common::jmap(
            self.port,
            &self.address,
            &self.password,
            &[CORE, MAIL, SUBMISSION],
            calls,
        )
    }

    fn mailbox(&self, role: &str) -> String {
        let r = self.call(json!([["Mailbox/get", {"accountId": self.account}, "m"]]));
        r[0][1]["list"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["role"] == role)
            .unwrap_or_else(|| panic!("no {role} mailbox"))["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Emails in the mailbox with `role`, with the given properties.
    fn emails(&self, role: &str, properties: Value) -> Vec<Value> {
        let mailbox = self.mailbox(role);
        let r = self.call(json!([
            ["Email/query", {"accountId": self.account, "filter": {"inMailbox": mailbox}}, "q"],
            ["Email/get", {"accountId": self.account, "properties": properties,
                "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"}}, "g"]
        ]));
        assert_eq!(r[1][0], "Email/get", "{r:?}");
        r[1][1]["list"].as_array().cloned().unwrap_or_default()
    }

    /// Whether the submission's message was delivered to `rcpt` (and its
    /// undo status is final).
    fn delivered(&self, submission: &str, rcpt: &str) -> bool {
        let r = self.call(json!([["EmailSubmission/get",
            {"accountId": self.account, "ids": [submission]}, "g"]]));
        let s = &r[0][1]["list"][0];
        s["deliveryStatus"][rcpt]["delivered"] == "yes" && s["undoStatus"] == "final"
    }

    fn identity(&self) -> String {
        let r = self.call(json!([["Identity/get", {"accountId": self.account}, "i"]]));
        r[0][1]["list"][0]["id"].as_str().unwrap().to_owned()
    }

    /// Creates a draft from `from` to `to` and submits it, moving it to
    /// Sent on success. Returns the EmailSubmission/set and implicit
    /// Email/set responses.
    fn send(&self, from: &str, to: &str, subject: &str) -> Vec<Value> {
        self.send_with(from, to, subject, Value::Null)
    }

    /// [`User::send`] with parameters on the envelope's mailFrom.
    fn send_with(&self, from: &str, to: &str, subject: &str, parameters: Value) -> Vec<Value> {
        let drafts = self.mailbox("drafts");
        let sent = self.mailbox("sent");
        let identity = self.identity();
        self.call(json!([
            ["Email/set", {"accountId": self.account, "create": {"draft": {
                "mailboxIds": {drafts.clone(): true},
                "keywords": {"$draft": true, "$seen": true},
                "from": [{"name": "Sender", "email": from}],
                "to": [{"email": to}],
                "bcc": [{"email": "hidden@b.test"}],
                "subject": subject,
                "bodyValues": {"b": {"value": "Hello from the sending test.\n"}},
                "textBody": [{"partId": "b", "type": "text/plain"}]
            }}}, "e"],
            ["EmailSubmission/set", {"accountId": self.account,
                "create": {"sub": {"identityId": identity, "emailId": "#draft",
                    "envelope": {"mailFrom": {"email": from, "parameters": parameters},
                                 "rcptTo": [{"email": to}]}}},
                "onSuccessUpdateEmail": {"#sub": {
                    format!("mailboxIds/{drafts}"): null,
                    format!("mailboxIds/{sent}"): true,
                    "keywords/$draft": null}}}, "s"]
        ]))
    }
}

/// Polls `f` until it gives a value; on timeout, fails with the end of
/// the `nodes`' logs.
fn wait_for<T>(
    what: &str,
    timeout: Duration,
    nodes: &[&Tern],
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            let logs: String = nodes
                .iter()
                .map(|node| {
                    let log = node.log();
                    let tail: Vec<&str> = log.lines().rev().take(60).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!("--- {}\n{}\n", node.config.display(), tail.join("\n"))
                })
                .collect();
            panic!("timed out waiting for {what}\n{logs}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ----------------------------------------------------- scripted SMTP ---

/// A small SMTP server: `rcpt_reply(connection number)` decides the
/// RCPT reply; accepted messages are kept.
struct Scripted {
    port: u16,
    connections: Arc<Mutex<usize>>,
    messages: Arc<Mutex<Vec<String>>>,
}

impl Scripted {
    fn start(rcpt_reply: fn(usize) -> &'static str) -> Scripted {
        Self::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), rcpt_reply)
    }

    fn start_on(listener: TcpListener, rcpt_reply: fn(usize) -> &'static str) -> Scripted {
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(Mutex::new(0));
        let messages = Arc::new(Mutex::new(Vec::new()));
        let (c, m) = (connections.clone(), messages.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let n = {
                    let mut c = c.lock().unwrap();
                    *c += 1;
                    *c
                };
                let m = m.clone();
                std::thread::spawn(move || {
                    let _ = session(stream, rcpt_reply(n), &m);
                });
            }
        });
        Scripted {
            port,
            connections,
            messages,
        }
    }

    fn messages(&self) -> Vec<String> {
        self.messages.lock().unwrap().clone()
    }
}

fn session(
    stream: TcpStream,
    rcpt_reply: &str,
    messages: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    out.write_all(b"220 scripted.test ESMTP\r\n")?;
    let mut line = String::new();
    let mut accepted = 0;
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => out.write_all(b"250-scripted.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")?,
            "MAIL" => {
                accepted = 0;
                out.write_all(b"250 2.1.0 ok\r\n")?
            }
            "RCPT" => {
                accepted += usize::from(rcpt_reply.starts_with('2'));
                out.write_all(format!("{rcpt_reply}\r\n").as_bytes())?
            }
            "DATA" if accepted == 0 => out.write_all(b"554 5.5.1 No valid recipients\r\n")?,
            "DATA" => {
                out.write_all(b"354 go on\r\n")?;
                let mut data = String::new();
                loop {
                    line.clear();
                    input.read_line(&mut line)?;
                    if line == ".\r\n" || line.is_empty() {
                        break;
                    }
                    data.push_str(&line);
                }
                messages.lock().unwrap().push(data);
                out.write_all(b"250 2.0.0 accepted\r\n")?;
            }
            "QUIT" => {
                out.write_all(b"221 bye\r\n")?;
                return Ok(());
            }
            _ => out.write_all(b"250 ok\r\n")?,
        }
    }
}

/// A metric's value in the exposition text.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// The p= part of the DKIM record `tern domain add` printed.
fn dkim_record(printed: &str) -> String {
    let line = printed
        .lines()
        .find(|l| l.contains("._domainkey."))
        .unwrap_or_else(|| panic!("no DKIM record in {printed}"));
    let txt = line.split('\t').next_back().unwrap();
    // "a" "b" → ab
    txt.split('"')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, s)| s)
        .collect()
}

// -------------------------------------------------------------- tests ---

#[test]
fn sending_between_two_servers_with_retries_bounces_and_a_crash() {
    let zone = Arc::new(Mutex::new(Zone::default()));
    let dns = dns_server(zone.clone());

    // Scripted destinations, reached through [routes].
    let tempfail = Scripted::start(|n| {
        if n == 1 {
            "451 4.3.0 busy, try again later"
        } else {
            "250 2.1.5 ok"
        }
    });
    let reject = Scripted::start(|_| "550 5.1.1 no such user here");
    let later_port = free_port();

    // Each sends to the other's MX port: both sets of ports first.
    let [a_ports, b_ports] = Ports::reserve();
    let mut b = node("b.test", b_ports, dns, a_ports.smtp, &[]);
    let mut a = node(
        "a.test",
        a_ports,
        dns,
        b_ports.smtp,
        &[
            ("tempfail.test", tempfail.port),
            ("reject.test", reject.port),
            ("later.test", later_port),
        ],
    );
    // `tern domain add` makes the DKIM key and prints the records.
    let printed_a = a.cli(&["domain", "add", "a.test"]);
    assert!(
        printed_a.contains("a.test.\t3600\tIN\tMX\t10 mx.a.test."),
        "{printed_a}"
    );
    assert!(printed_a.contains("k=ed25519"), "{printed_a}");
    let printed_b = b.cli(&["domain", "add", "b.test", "--dkim", "rsa"]);
    assert!(printed_b.contains("k=rsa"), "{printed_b}");
    assert_eq!(
        b.cli(&["domain", "dns", "b.test"]),
        printed_b.trim_start_matches("domain b.test added\n")
    );
    {
        let mut z = zone.lock().unwrap();
        z.mail_domain("a.test", &dkim_record(&printed_a));
        z.mail_domain("b.test", &dkim_record(&printed_b));
    }
    a.cli(&["account", "add", "alice@a.test", "--password", "pw-a"]);
    b.cli(&["account", "add", "bob@b.test", "--password", "pw-b"]);
    b.cli(&["account", "add", "hidden@b.test", "--password", "pw-h"]);
    b.start();
    a.start();
    let alice = User::login(&a, "alice@a.test", "pw-a");
    let bob = User::login(&b, "bob@b.test", "pw-b");

    // 1. A → B through MX, DKIM-signed; B checks SPF, DKIM and DMARC.
    let r = alice.send("alice@a.test", "bob@b.test", "Hello Bob");
    assert_eq!(r[1][0], "EmailSubmission/set", "{r:?}");
    let sub = r[1][1]["created"]["sub"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("not created: {r:?}"))
        .to_owned();
    assert_eq!(r[2][0], "Email/set", "implicit Email/set: {r:?}");
    assert_eq!(r[2][2], "s", "same call id: {r:?}");
    assert!(
        r[2][1]["updated"].as_object().is_some_and(|u| u.len() == 1),
        "{r:?}"
    );
    let got = wait_for("bob's message", Duration::from_secs(30), &[&a, &b], || {
        let list = bob.emails(
            "inbox",
            json!([
                "subject",
                "header:Authentication-Results:asText",
                "header:DKIM-Signature:asText",
                "header:Received:all",
                "header:Bcc"
            ]),
        );
        list.into_iter().find(|e| e["subject"] == "Hello Bob")
    });
    let results = got["header:Authentication-Results:asText"]
        .as_str()
        .unwrap_or_default();
    assert!(results.contains("spf=pass"), "{results}");
    assert!(results.contains("dkim=pass"), "{results}");
    assert!(results.contains("dmarc=pass"), "{results}");
    assert!(
        got["header:DKIM-Signature:asText"]
            .as_str()
            .is_some_and(|s| s.contains("d=a.test") && s.contains("a=ed25519-sha256")),
        "{got}"
    );
    assert!(got["header:Bcc"].is_null(), "Bcc must not be sent: {got}");
    // A used B's STARTTLS (opportunistic TLS).
    assert!(
        got["header:Received:all"].as_array().is_some_and(|r| r
            .iter()
            .any(|h| h.as_str().is_some_and(|h| h.contains("(using TLS")))),
        "{got}"
    );
    // The draft moved to Sent, without $draft.
    let sent = alice.emails("sent", json!(["subject", "keywords"]));
    assert!(
        sent.iter()
            .any(|e| e["subject"] == "Hello Bob" && e["keywords"].get("$draft").is_none()),
        "{sent:?}"
    );
    assert!(alice.emails("drafts", json!(["subject"])).is_empty());
    // deliveryStatus follows the queue.
    wait_for(
        "deliveryStatus yes",
        Duration::from_secs(15),
        &[&a, &b],
        || alice.delivered(&sub, "bob@b.test").then_some(()),
    );

    // 1b. B answers: signed with B's RSA key, checked by A.
    bob.send("bob@b.test", "alice@a.test", "Hello Alice");
    let got = wait_for("alice's answer", Duration::from_secs(30), &[&a, &b], || {
        alice
            .emails(
                "inbox",
                json!([
                    "subject",
                    "header:Authentication-Results:asText",
                    "header:DKIM-Signature:asText"
                ]),
            )
            .into_iter()
            .find(|e| e["subject"] == "Hello Alice")
    });
    let results = got["header:Authentication-Results:asText"]
        .as_str()
        .unwrap_or_default();
    for pass in ["spf=pass", "dkim=pass", "dmarc=pass"] {
        assert!(results.contains(pass), "{pass}: {results}");
    }
    assert!(
        got["header:DKIM-Signature:asText"]
            .as_str()
            .is_some_and(|s| s.contains("d=b.test") && s.contains("a=rsa-sha256")),
        "{got}"
    );

    // 1c. A delayed send: pending, then sent at its time.
    let queued_at = Instant::now();
    let r = alice.send_with(
        "alice@a.test",
        "bob@b.test",
        "Later, Bob",
        json!({"HOLDFOR": "3"}),
    );
    let later = &r[1][1]["created"]["sub"];
    assert_eq!(later["undoStatus"], "pending", "{r:?}");
    let later = later["id"].as_str().unwrap().to_owned();
    let r = alice.call(json!([["EmailSubmission/get",
        {"accountId": alice.account, "ids": [later]}, "g"]]));
    let status = &r[0][1]["list"][0];
    assert_eq!(status["undoStatus"], "pending", "{r:?}");
    assert_eq!(
        status["deliveryStatus"]["bob@b.test"]["delivered"], "queued",
        "{r:?}"
    );
    wait_for(
        "the delayed send delivered",
        Duration::from_secs(30),
        &[&a, &b],
        || alice.delivered(&later, "bob@b.test").then_some(()),
    );
    assert!(
        queued_at.elapsed() >= Duration::from_secs(2),
        "sent before its time: {:?}",
        queued_at.elapsed()
    );
    assert!(
        bob.emails("inbox", json!(["subject"]))
            .iter()
            .any(|e| e["subject"] == "Later, Bob")
    );

    // 2. 4xx, then 250: retried and delivered.
    alice.send("alice@a.test", "someone@tempfail.test", "Retry me");
    let m = wait_for(
        "the retried delivery",
        Duration::from_secs(30),
        &[&a, &b],
        || tempfail.messages().into_iter().next(),
    );
    assert!(m.contains("Subject: Retry me"), "{m}");
    assert!(*tempfail.connections.lock().unwrap() >= 2);

    // 3. 5xx: a DSN in alice's Inbox.
    alice.send("alice@a.test", "nobody@reject.test", "Doomed");
    let dsn = wait_for("the DSN", Duration::from_secs(30), &[&a, &b], || {
        alice
            .emails("inbox", json!(["subject", "blobId", "from"]))
            .into_iter()
            .find(|e| {
                e["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains("Undelivered"))
            })
    });
    let blob = dsn["blobId"].as_str().unwrap();
    let download = http(
        a.jmap,
        "GET",
        &format!(
            "/jmap/download/{}/{blob}/dsn.eml?type=message/rfc822",
            alice.account
        ),
        &[("Authorization", &alice.auth())],
        b"",
    );
    let raw = download.text();
    assert_eq!(download.status, 200, "{raw}");
    assert!(raw.contains("report-type=delivery-status"), "{raw}");
    assert!(
        raw.contains("Final-Recipient: rfc822; nobody@reject.test"),
        "{raw}"
    );
    assert!(raw.contains("Action: failed"), "{raw}");
    assert!(raw.contains("Status: 5.1.1"), "{raw}");
    assert!(raw.contains("Subject: Doomed"), "{raw}");
    assert!(reject.messages().is_empty());
    let metrics = metrics_text(&a);
    assert!(
        metrics.contains("tern_outbound_deliveries_total{result=\"failed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tern_outbound_deliveries_total{result=\"deferred\"}"),
        "{metrics}"
    );

    // 4. Queued mail survives SIGKILL: nothing listens for later.test yet.
    alice.send("alice@a.test", "friend@later.test", "Survivor");
    let deferred_before = metric(
        &metrics,
        "tern_outbound_deliveries_total{result=\"deferred\"}",
    );
    wait_for(
        "a failed first attempt",
        Duration::from_secs(30),
        &[&a, &b],
        || {
            let m = metrics_text(&a);
            (metric(&m, "tern_queue_messages") == 1
                && metric(&m, "tern_outbound_deliveries_total{result=\"deferred\"}")
                    > deferred_before)
                .then_some(())
        },
    );
    let listed = a.cli(&["queue", "list"]);
    assert!(listed.contains("<alice@a.test>"), "{listed}");
    a.kill();
    let later = Scripted::start_on(
        TcpListener::bind(("127.0.0.1", later_port)).unwrap(),
        |_| "250 2.1.5 ok",
    );
    a.start();
    let m = wait_for(
        "delivery after the restart",
        Duration::from_secs(30),
        &[&a, &b],
        || later.messages().into_iter().next(),
    );
    assert!(m.contains("Subject: Survivor"), "{m}");
    wait_for("an empty queue", Duration::from_secs(15), &[&a, &b], || {
        a.cli(&["queue", "list"])
            .contains("the queue is empty")
            .then_some(())
    });
}

// ------------------------------------------- dsnBlobIds (issue 6) ---

/// Everything an event-source stream of `node` for `user` sends, as it
/// arrives (read on a thread).
fn event_stream(node: &Tern, user: &User) -> Arc<Mutex<String>> {
    let mut stream = TcpStream::connect(("127.0.0.1", node.jmap)).unwrap();
    write!(
        stream,
        "GET /jmap/eventsource/?types=EmailSubmission&closeafter=no&ping=0 HTTP/1.1\r\n\
         Host: 127.0.0.1\r\nAuthorization: {}\r\nAccept: text/event-stream\r\n\r\n",
        user.auth()
    )
    .unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                return;
            }
            s.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    seen
}

#[test]
fn rfc8621_7_a_bounced_submission_lists_its_dsn_in_dsn_blob_ids_and_pushes_the_change() {
    let dns = dns_server(Arc::new(Mutex::new(Zone::default())));
    let reject = Scripted::start(|_| "550 5.1.1 no such user here");
    let mut a = node(
        "a.test",
        Ports::free(),
        dns,
        free_port(),
        &[("reject.test", reject.port)],
    );
    a.cli(&["domain", "add", "a.test"]);
    a.cli(&["account", "add", "alice@a.test", "--password", "pw-a"]);
    a.start();
    let alice = User::login(&a, "alice@a.test", "pw-a");
    let events = event_stream(&a, &alice);

    let r = alice.send("alice@a.test", "nobody@reject.test", "Bounce me");
    assert_eq!(r[1][0], "EmailSubmission/set", "{r:?}");
    let created_state = r[1][1]["newState"].as_str().unwrap().to_owned();
    let sub = r[1][1]["created"]["sub"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("not created: {r:?}"))
        .to_owned();
    assert_eq!(r[1][1]["created"]["sub"].get("dsnBlobIds"), None);

    // The DSN arrives in alice's Inbox; the submission lists its blob.
    let dsn_blob = wait_for("the DSN", Duration::from_secs(30), &[&a], || {
        alice
            .emails("inbox", json!(["subject", "blobId"]))
            .into_iter()
            .find(|e| {
                e["subject"]
                    .as_str()
                    .is_some_and(|s| s.contains("Undelivered"))
            })
            .map(|e| e["blobId"].as_str().unwrap().to_owned())
    });
    let (state, got) = wait_for("dsnBlobIds", Duration::from_secs(15), &[&a], || {
        let r = alice.call(json!([["EmailSubmission/get",
            {"accountId": alice.account, "ids": [sub],
             "properties": ["dsnBlobIds", "deliveryStatus", "mdnBlobIds"]}, "g"]]));
        let s = r[0][1]["list"][0].clone();
        (s["dsnBlobIds"] != json!([])).then(|| (r[0][1]["state"].as_str().unwrap().to_owned(), s))
    });
    assert_eq!(got["dsnBlobIds"], json!([dsn_blob]), "{got}");
    assert_eq!(got["mdnBlobIds"], json!([]), "{got}");
    assert_eq!(
        got["deliveryStatus"]["nobody@reject.test"]["delivered"], "no",
        "{got}"
    );
    // The blob listed is the DSN as delivered: a multipart/report.
    let r = alice.call(json!([["Email/query", {"accountId": alice.account}, "q"],
        ["Email/get", {"accountId": alice.account,
            "properties": ["blobId", "header:Content-Type:asText"],
            "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"}}, "e"]]));
    let report = r[1][1]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["blobId"] == dsn_blob)
        .cloned()
        .unwrap_or_else(|| panic!("no email with the listed blob: {r:?}"));
    let kind = report["header:Content-Type:asText"].as_str().unwrap_or("");
    assert!(
        kind.contains("multipart/report") && kind.contains("delivery-status"),
        "{report}"
    );
    // The change is in EmailSubmission/changes and was pushed.
    let r = alice.call(json!([["EmailSubmission/changes",
        {"accountId": alice.account, "sinceState": created_state}, "c"]]));
    assert!(
        r[0][1]["updated"]
            .as_array()
            .is_some_and(|u| u.contains(&json!(sub))),
        "{r:?}"
    );
    assert_eq!(r[0][1]["newState"], state, "{r:?}");
    wait_for("the pushed state", Duration::from_secs(15), &[&a], || {
        events
            .lock()
            .unwrap()
            .contains(&format!("\"EmailSubmission\":\"{state}\""))
            .then_some(())
    });
}
