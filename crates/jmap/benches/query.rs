//! Issue 3's JMAP benchmark: the first screen of a mail client.
//!
//! 50,000 messages in one account's Inbox, filled through the store's
//! delivery API (`MailStore::deliver` from 32 threads, so the delivery
//! combiner stores them in batches of up to 256 per transaction). Then one
//! JMAP request, over HTTP/1.1 keep-alive to the real server
//! (`tern_jmap::serve_on` on a loopback socket, Basic auth):
//!
//! ```text
//! Email/query  {inMailbox: Inbox, sort: receivedAt descending, limit: 50}
//! Email/get    {#ids: → the query's /ids, properties: id, threadId,
//!               mailboxIds, keywords, from, subject, receivedAt, preview,
//!               hasAttachment, size}
//! ```
//!
//! at concurrency 1 (one connection, one request at a time: latency
//! percentiles) and 16 (sixteen connections: requests per second). Goal:
//! p50 < 1 ms and p99 < 5 ms at concurrency 1.
//!
//! Every response is checked (50 ids, 50 emails with every property) in
//! the warm-up, and its size in the measured runs.
//!
//! With `TERN_BENCH_CYRUS=http://host:port` the same workload runs in the
//! same process against a Cyrus IMAP JMAP server too (user
//! `TERN_BENCH_CYRUS_USER`, password `TERN_BENCH_CYRUS_PASSWORD`); when its
//! Inbox holds fewer messages than Tern's, the same generated messages are
//! first delivered to it over LMTP at `TERN_BENCH_CYRUS_LMTP` (host:port).
//!
//! Environment: `TERN_BENCH_MESSAGES` (50000), `TERN_BENCH_REQUESTS`
//! (requests measured at concurrency 1, 5000), `TERN_BENCH_SECONDS`
//! (duration at concurrency 16, 10), `TERN_BENCH_DIR` (parent of the temp
//! database).

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tern_jmap::JmapConfig;
use tern_store::{AccountId, MailStore, Recipient};

// The allocator `tern serve` runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USER: &str = "bench@example.com";
const PASSWORD: &str = "bench-password";
const PAGE: usize = 50;
const FILL_THREADS: usize = 32;
const PROPERTIES: [&str; 10] = [
    "id",
    "threadId",
    "mailboxIds",
    "keywords",
    "from",
    "subject",
    "receivedAt",
    "preview",
    "hasAttachment",
    "size",
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

// ---------------------------------------------------------------- messages

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const WORDS: [&str; 24] = [
    "meeting",
    "report",
    "budget",
    "lunch",
    "project",
    "review",
    "invoice",
    "draft",
    "travel",
    "schedule",
    "update",
    "quarterly",
    "design",
    "release",
    "notes",
    "question",
    "agenda",
    "proposal",
    "contract",
    "deadline",
    "summary",
    "feedback",
    "plan",
    "team",
];
const NAMES: [&str; 8] = [
    "Ada Lovelace",
    "Grace Hopper",
    "Alan Turing",
    "Edsger Dijkstra",
    "Barbara Liskov",
    "Donald Knuth",
    "Frances Allen",
    "Ken Thompson",
];

/// Message `i` of the corpus: 1.5-6 KB of text, every eighth with a small
/// attachment, every fourth a reply to the one before (same thread).
fn message(i: u64) -> Vec<u8> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    for _ in 0..4 {
        rng.next();
    }
    let name = NAMES[rng.below(NAMES.len() as u64) as usize];
    let from = name.split(' ').next().unwrap_or("x").to_lowercase();
    let topic = i - i % 4;
    let subject = format!(
        "{}{} {} #{topic}",
        if i.is_multiple_of(4) { "" } else { "Re: " },
        WORDS[(topic % 24) as usize],
        WORDS[(topic / 24 % 24) as usize]
    );
    let mut body = String::new();
    let paragraphs = 3 + rng.below(10);
    for _ in 0..paragraphs {
        for w in 0..(40 + rng.below(40)) {
            body.push_str(WORDS[rng.below(24) as usize]);
            body.push(if w % 12 == 11 { '\n' } else { ' ' });
        }
        body.push_str(".\n\n");
    }
    let day = 1 + i / 2000 % 28;
    let second = i % 86_400;
    let mut m = format!(
        "From: {name} <{from}@example.org>\r\n\
         To: Bench <{USER}>\r\n\
         Subject: {subject}\r\n\
         Date: Mon, {day} Feb 2026 {:02}:{:02}:{:02} +0000\r\n\
         Message-ID: <{i}.bench@example.org>\r\n",
        second / 3600,
        second / 60 % 60,
        second % 60
    );
    if !i.is_multiple_of(4) {
        m.push_str(&format!(
            "In-Reply-To: <{}.bench@example.org>\r\nReferences: <{topic}.bench@example.org>\r\n",
            i - 1
        ));
    }
    m.push_str("MIME-Version: 1.0\r\n");
    if i % 8 == 5 {
        m.push_str(
            "Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\n",
        );
        m.push_str(&body.replace('\n', "\r\n"));
        m.push_str(
            "\r\n--b\r\nContent-Type: application/pdf\r\n\
             Content-Disposition: attachment; filename=\"notes.pdf\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n",
        );
        for _ in 0..12 {
            m.push_str(
                "JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFIvRmlsdGVyIC9GbGF0ZURl\r\n",
            );
        }
        m.push_str("--b--\r\n");
    } else {
        m.push_str("Content-Type: text/plain; charset=utf-8\r\n\r\n");
        m.push_str(&body.replace('\n', "\r\n"));
    }
    m.into_bytes()
}

/// Two thirds of the messages are read.
fn seen(i: u64) -> bool {
    !i.is_multiple_of(3)
}

// ------------------------------------------------------------ HTTP client

/// One HTTP/1.1 keep-alive connection.
struct Conn {
    addr: SocketAddr,
    host: String,
    reader: Option<BufReader<TcpStream>>,
    /// The Location header of the last response, if any.
    location: Option<String>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn {
            addr,
            host: addr.to_string(),
            reader: None,
            location: None,
        }
    }

    fn stream(&mut self) -> io::Result<&mut BufReader<TcpStream>> {
        if self.reader.is_none() {
            let s = TcpStream::connect(self.addr)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.reader = Some(BufReader::with_capacity(64 * 1024, s));
        }
        Ok(self.reader.as_mut().expect("connected"))
    }

    /// Sends one request and reads the whole response: (status, body).
    fn request(
        &mut self,
        method: &str,
        path: &str,
        auth: &str,
        body: &[u8],
    ) -> io::Result<(u16, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut out = Vec::with_capacity(head.len() + body.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(body);
        let result = (|| {
            let r = self.stream()?;
            r.get_mut().write_all(&out)?;
            read_response(r)
        })();
        match result {
            Ok((status, body, close, location)) => {
                self.location = location;
                if close {
                    self.reader = None;
                }
                Ok((status, body))
            }
            Err(e) => {
                self.reader = None;
                Err(e)
            }
        }
    }
}

/// Reads a response: status, body (Content-Length or chunked), and
/// whether the server closes the connection.
type Parsed = (u16, Vec<u8>, bool, Option<String>);

fn read_response(r: &mut BufReader<TcpStream>) -> io::Result<Parsed> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    let status: u16 = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("status line"))?;
    let (mut length, mut chunked, mut close, mut location) = (None, false, false, None);
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let Some((k, v)) = l.split_once(':') else {
            continue;
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = Some(v.parse::<usize>().map_err(|_| bad("content-length"))?);
        } else if k.eq_ignore_ascii_case("transfer-encoding") {
            chunked = v.to_ascii_lowercase().contains("chunked");
        } else if k.eq_ignore_ascii_case("location") {
            location = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("connection") {
            close = v.eq_ignore_ascii_case("close");
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| bad("chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                loop {
                    line.clear();
                    r.read_line(&mut line)?;
                    if line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            let mut crlf = [0u8; 2];
            r.read_exact(&mut crlf)?;
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
        close = true;
    }
    Ok((status, body, close, location))
}

fn basic(user: &str, password: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let data = format!("{user}:{password}").into_bytes();
    let mut out = String::from("Basic ");
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            out.push(if k <= c.len() {
                T[(n >> (18 - 6 * k) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

// ------------------------------------------------------------- workload

/// A JMAP server under test: where to send the request, and the request.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    api_path: String,
    auth: String,
    body: Vec<u8>,
}

/// GETs a JSON resource, following redirects to a path on the same server
/// (Cyrus redirects `/.well-known/jmap` to `/jmap`).
fn get_json(conn: &mut Conn, path: &str, auth: &str) -> Value {
    let mut path = path.to_string();
    let (mut status, mut body) = conn.request("GET", &path, auth, b"").expect("GET");
    for _ in 0..3 {
        if !(300..400).contains(&status) {
            break;
        }
        let location = conn.location.clone().expect("a redirect has a Location");
        path = match location.split_once("://") {
            Some((_, r)) => r[r.find('/').unwrap_or(r.len())..].to_string(),
            None => location,
        };
        (status, body) = conn.request("GET", &path, auth, b"").expect("GET");
    }
    assert_eq!(
        status,
        200,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("JSON")
}

fn post_json(conn: &mut Conn, path: &str, auth: &str, v: &Value) -> Value {
    let (status, body) = conn
        .request("POST", path, auth, v.to_string().as_bytes())
        .expect("POST");
    assert_eq!(
        status,
        200,
        "POST {path}: {}",
        String::from_utf8_lossy(&body)
    );
    serde_json::from_slice(&body).expect("JSON")
}

/// Discovers the session (account, API path) and the Inbox, and builds the
/// benchmark request. Returns the target and the Inbox's total.
fn target(name: &'static str, base: &str, auth: String) -> (Target, u64) {
    let rest = base.trim_start_matches("http://");
    let hostport = rest.split('/').next().expect("host");
    let addr: SocketAddr = std::net::ToSocketAddrs::to_socket_addrs(hostport)
        .expect("address")
        .next()
        .expect("an address");
    let mut conn = Conn::new(addr);
    let session = get_json(&mut conn, "/.well-known/jmap", &auth);
    let account = session["primaryAccounts"]["urn:ietf:params:jmap:mail"]
        .as_str()
        .expect("a mail account")
        .to_string();
    let api_url = session["apiUrl"].as_str().expect("apiUrl");
    let api_path = match api_url.split_once("://") {
        Some((_, r)) => r[r.find('/').unwrap_or(r.len())..].to_string(),
        None => api_url.to_string(),
    };
    let using = json!(["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"]);
    let found = post_json(
        &mut conn,
        &api_path,
        &auth,
        &json!({"using": using, "methodCalls": [
            ["Mailbox/query", {"accountId": account, "filter": {"role": "inbox"}}, "q"],
            ["Mailbox/get", {"accountId": account, "#ids": {"resultOf": "q", "name": "Mailbox/query", "path": "/ids"}, "properties": ["totalEmails"]}, "g"]
        ]}),
    );
    let inbox = found["methodResponses"][1][1]["list"][0].clone();
    let inbox_id = inbox["id"].as_str().expect("an inbox").to_string();
    let total = inbox["totalEmails"].as_u64().unwrap_or(0);
    let body = json!({
        "using": using,
        "methodCalls": [
            ["Email/query", {
                "accountId": account,
                "filter": {"inMailbox": inbox_id},
                "sort": [{"property": "receivedAt", "isAscending": false}],
                "limit": PAGE,
            }, "q"],
            ["Email/get", {
                "accountId": account,
                "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                "properties": PROPERTIES,
            }, "g"],
        ],
    })
    .to_string()
    .into_bytes();
    (
        Target {
            name,
            addr,
            api_path,
            auth,
            body,
        },
        total,
    )
}

/// Checks one response fully: 50 ids, 50 emails in that order, each with
/// every property.
fn check(body: &[u8]) {
    let v: Value = serde_json::from_slice(body).expect("JSON response");
    let r = &v["methodResponses"];
    assert_eq!(r[0][0], "Email/query", "{v}");
    assert_eq!(r[1][0], "Email/get", "{v}");
    let ids = r[0][1]["ids"].as_array().expect("ids");
    let list = r[1][1]["list"].as_array().expect("list");
    assert_eq!(ids.len(), PAGE, "{v}");
    assert_eq!(list.len(), PAGE, "{v}");
    for (id, email) in ids.iter().zip(list) {
        assert_eq!(&email["id"], id);
        for p in PROPERTIES {
            assert!(email.get(p).is_some(), "{p} missing in {email}");
        }
    }
}

/// One request; returns its latency.
fn once(conn: &mut Conn, t: &Target, expect_len: Option<usize>) -> Duration {
    let start = Instant::now();
    let (status, body) = conn
        .request("POST", &t.api_path, &t.auth, &t.body)
        .expect("request");
    let took = start.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    if let Some(n) = expect_len {
        // The page is the same every time: so is the response's size.
        assert_eq!(body.len(), n, "{}", String::from_utf8_lossy(&body));
    }
    took
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1000.0)
}

struct Figures {
    c1_p50: Duration,
    c1_p99: Duration,
    c16_rps: f64,
}

fn run(t: &Target, requests: usize, seconds: u64) -> Figures {
    println!("\n## {} ({})", t.name, t.addr);
    let mut conn = Conn::new(t.addr);
    let (status, body) = conn
        .request("POST", &t.api_path, &t.auth, &t.body)
        .expect("first request");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    check(&body);
    let len = body.len();
    println!("response: {len} bytes");
    for _ in 0..(requests / 10).max(100) {
        once(&mut conn, t, Some(len));
    }

    // Concurrency 1.
    let load_before = load();
    let started = Instant::now();
    let mut lat: Vec<Duration> = (0..requests)
        .map(|_| once(&mut conn, t, Some(len)))
        .collect();
    let wall = started.elapsed();
    lat.sort();
    let mean = lat.iter().sum::<Duration>() / lat.len() as u32;
    let f1 = (pct(&lat, 0.5), pct(&lat, 0.99));
    println!(
        "concurrency 1: {requests} requests in {:.2} s = {:.0} req/s; p50 {}, p90 {}, p99 {}, \
         p99.9 {}, max {}, mean {} (load before: {load_before}, after: {})",
        wall.as_secs_f64(),
        requests as f64 / wall.as_secs_f64(),
        ms(f1.0),
        ms(pct(&lat, 0.9)),
        ms(f1.1),
        ms(pct(&lat, 0.999)),
        ms(*lat.last().expect("some")),
        ms(mean),
        load()
    );

    // Concurrency 16: sixteen connections for `seconds`.
    let load_before = load();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..16)
        .map(|_| {
            let stop = stop.clone();
            let t = Target {
                name: t.name,
                addr: t.addr,
                api_path: t.api_path.clone(),
                auth: t.auth.clone(),
                body: t.body.clone(),
            };
            std::thread::spawn(move || {
                let mut conn = Conn::new(t.addr);
                let mut lat = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    lat.push(once(&mut conn, &t, Some(len)));
                }
                lat
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Duration> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("worker"))
        .collect();
    let wall = started.elapsed();
    lat.sort();
    let rps = lat.len() as f64 / wall.as_secs_f64();
    println!(
        "concurrency 16: {} requests in {:.2} s = {rps:.0} req/s; p50 {}, p99 {}, max {} \
         (load before: {load_before}, after: {})",
        lat.len(),
        wall.as_secs_f64(),
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(*lat.last().expect("some")),
        load()
    );
    Figures {
        c1_p50: f1.0,
        c1_p99: f1.1,
        c16_rps: rps,
    }
}

// ------------------------------------------------------------------ fill

fn fill(store: &MailStore, account: AccountId, n: u64) {
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..FILL_THREADS as u64 {
            s.spawn(move || {
                let mut i = t;
                while i < n {
                    let mut r = Recipient::inbox(account);
                    if seen(i) {
                        r.keywords.push("$seen".into());
                    }
                    let out = store.deliver(&message(i), &[r]).expect("deliver");
                    out[0].as_ref().expect("delivered");
                    i += FILL_THREADS as u64;
                }
            });
        }
    });
    let took = started.elapsed();
    println!(
        "filled {n} messages in {:.1} s ({:.0} messages/s, {FILL_THREADS} delivering threads)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

/// Delivers messages `0..n` to Cyrus over LMTP (pipelined in one
/// connection per thread); `keywords` are not LMTP's business, so Cyrus's
/// copies are all unread (the listing does not depend on them).
fn fill_lmtp(lmtp: &str, user: &str, n: u64) {
    let started = Instant::now();
    let threads = 8u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                let stream = TcpStream::connect(lmtp).expect("connect to LMTP");
                let mut r = BufReader::new(stream.try_clone().expect("clone"));
                let mut w = stream;
                let mut line = String::new();
                let mut expect = |r: &mut BufReader<TcpStream>, code: &str| loop {
                    line.clear();
                    r.read_line(&mut line).expect("LMTP reply");
                    assert!(
                        line.starts_with(code),
                        "LMTP: expected {code}, got {line:?}"
                    );
                    if line.as_bytes().get(3) != Some(&b'-') {
                        break;
                    }
                };
                expect(&mut r, "220");
                write!(w, "LHLO bench\r\n").expect("write");
                expect(&mut r, "250");
                let mut i = t;
                while i < n {
                    write!(
                        w,
                        "MAIL FROM:<sender@example.org>\r\nRCPT TO:<{user}>\r\nDATA\r\n"
                    )
                    .expect("write");
                    expect(&mut r, "250");
                    expect(&mut r, "250");
                    expect(&mut r, "354");
                    let m = message(i);
                    let text = String::from_utf8(m).expect("ascii");
                    for l in text.split("\r\n") {
                        if l.starts_with('.') {
                            w.write_all(b".").expect("write");
                        }
                        w.write_all(l.as_bytes()).expect("write");
                        w.write_all(b"\r\n").expect("write");
                    }
                    w.write_all(b".\r\n").expect("write");
                    expect(&mut r, "250");
                    i += threads;
                }
                let _ = write!(w, "QUIT\r\n");
            });
        }
    });
    let took = started.elapsed();
    println!(
        "Cyrus: delivered {n} messages over LMTP in {:.1} s ({:.0}/s)",
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is expected.
    let messages: u64 = env_or("TERN_BENCH_MESSAGES", 50_000);
    let requests: usize = env_or("TERN_BENCH_REQUESTS", 5_000);
    let seconds: u64 = env_or("TERN_BENCH_SECONDS", 10);
    println!(
        "# JMAP first screen: Email/query + Email/get (back-reference) over HTTP/1.1 keep-alive"
    );
    println!(
        "{messages} messages; {requests} requests at concurrency 1; {seconds} s at concurrency 16; \
         {} CPUs; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load()
    );

    let parent = std::env::var_os("TERN_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(parent).expect("temp dir");
    let store = MailStore::open(&dir.path().join("data")).expect("open the store");
    store.add_domain("example.com").expect("domain");
    let account = store.create_account(USER, PASSWORD).expect("account");
    fill(&store, account, messages);

    // The server: its own runtime (two workers, as many as this machine
    // has cores), the real listener, Basic auth.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let mut config = JmapConfig::new(addr);
    // Sixteen concurrent requests of one account: above the default
    // maxConcurrentRequests (8), which would answer 429 to the rest.
    config.limits.max_concurrent_requests = 64;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let server = runtime.spawn(tern_jmap::serve_on(
        listener,
        config,
        store.clone(),
        stop_rx,
    ));

    let (tern, total) = target("Tern", &format!("http://{addr}"), basic(USER, PASSWORD));
    assert_eq!(total, messages, "the Inbox holds every message");
    let tern_figures = run(&tern, requests, seconds);
    let goal = tern_figures.c1_p50 < Duration::from_millis(1)
        && tern_figures.c1_p99 < Duration::from_millis(5);
    println!(
        "goal (p50 < 1 ms, p99 < 5 ms at concurrency 1): {}",
        if goal { "met" } else { "NOT met" }
    );
    stop_tx.send_replace(true);
    let _ = runtime.block_on(server);

    if let Ok(base) = std::env::var("TERN_BENCH_CYRUS") {
        let user = std::env::var("TERN_BENCH_CYRUS_USER").unwrap_or_else(|_| "bench".into());
        let password =
            std::env::var("TERN_BENCH_CYRUS_PASSWORD").unwrap_or_else(|_| PASSWORD.into());
        let auth = basic(&user, &password);
        let (_, have) = target("Cyrus", &base, auth.clone());
        if have < messages {
            let lmtp = std::env::var("TERN_BENCH_CYRUS_LMTP")
                .expect("Cyrus's Inbox is short of messages: set TERN_BENCH_CYRUS_LMTP");
            fill_lmtp(&lmtp, &user, messages - have);
        }
        let (cyrus, total) = target("Cyrus IMAP (JMAP)", &base, auth);
        println!("Cyrus Inbox: {total} messages");
        let c = run(&cyrus, requests, seconds);
        println!(
            "\nratio Cyrus/Tern: p50 {:.1}x, p99 {:.1}x; Tern/Cyrus requests/s at 16: {:.1}x",
            c.c1_p50.as_secs_f64() / tern_figures.c1_p50.as_secs_f64(),
            c.c1_p99.as_secs_f64() / tern_figures.c1_p99.as_secs_f64(),
            tern_figures.c16_rps / c.c16_rps
        );
    } else {
        println!("\nCyrus: SKIPPED (TERN_BENCH_CYRUS not set)");
    }
}
