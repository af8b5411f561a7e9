//! Push benchmark against the real `tern` binary (bench profile):
//!
//! 1. Latency: deliveries over SMTP to an account with a WebSocket client
//!    listening (push enabled for Email); for each delivery, the time from
//!    the SMTP `250` to the StateChange carrying it (negative when the
//!    StateChange arrives first: watches fire as the commit lands, before
//!    the SMTP reply is written), and from the end of DATA to the
//!    StateChange. Run paced (a pause longer than the coalescing window
//!    between deliveries, so each is a "first change after a quiet
//!    spell") and back to back.
//! 2. Idle connections: the server's RSS before and after opening N
//!    WebSocket connections with push enabled; then the time one delivery
//!    takes to reach all of them.
//!
//! `scripts/bench-push.sh` raises the fd limit and runs this with
//! `cargo bench --workspace --bench push`. Environment: `PUSH_DELIVERIES`
//! (default 10000), `PUSH_CONNECTIONS` (default 10000), `PUSH_COALESCE_MS`
//! (the server's `[jmap.push] coalesce_ms`, default 2).

use std::net::TcpStream as StdTcpStream;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const BIN: &str = env!("CARGO_BIN_EXE_tern");
const USER: &str = "bench@example.com";
const PASSWORD: &str = "bench";

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

fn free_port() -> u16 {
    tern_testkit::free_port()
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn basic() -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{USER}:{PASSWORD}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                T[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    format!("Basic {out}")
}

struct Server {
    child: Child,
    jmap: u16,
    smtp: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(dir: &Path) -> Server {
    let config = dir.join("tern.toml");
    let (jmap, smtp, submission, metrics) = (free_port(), free_port(), free_port(), free_port());
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\nhostname = \"mx.test\"\ndomains = [\"example.com\"]\n\
             [listen]\njmap = \"127.0.0.1:{jmap}\"\nsmtp = \"127.0.0.1:{smtp}\"\n\
             submission = \"127.0.0.1:{submission}\"\nmetrics = \"127.0.0.1:{metrics}\"\n\
             [smtp]\nmax_connections = 100000\nmax_connections_per_ip = 100000\nconnections_per_minute = 1000000\n\
             [smtp.checks]\nenabled = false\n[log]\nlevel = \"warn\"\n\
             [jmap.push]\ncoalesce_ms = {coalesce}\n",
            data = dir.join("data"),
            coalesce = env_usize("PUSH_COALESCE_MS", 2),
        ),
    )
    .unwrap();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let socket = dir.join("data").join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(60);
    while UnixStream::connect(&socket).is_err()
        || StdTcpStream::connect(("127.0.0.1", jmap)).is_err()
    {
        assert!(Instant::now() < deadline, "tern serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["account", "add", USER, "--password", PASSWORD])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    Server { child, jmap, smtp }
}

/// The server's resident set size in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn ws_connect(jmap: u16, read_buffer: usize) -> Ws {
    let mut req = format!("ws://127.0.0.1:{jmap}/jmap/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("Authorization", HeaderValue::from_str(&basic()).unwrap());
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("jmap"));
    let config = WebSocketConfig::default()
        .read_buffer_size(read_buffer)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
        .await
        .unwrap();
    ws
}

/// Enables push and waits until the server has processed it.
async fn enable_push(ws: &mut Ws) {
    ws.send(Message::text(
        json!({"@type": "WebSocketPushEnable", "dataTypes": ["Email"]}).to_string(),
    ))
    .await
    .unwrap();
    ws.send(Message::text(
        json!({"@type": "Request", "id": "sync", "using": ["urn:ietf:params:jmap:core"],
               "methodCalls": [["Core/echo", {}, "0"]]})
        .to_string(),
    ))
    .await
    .unwrap();
    loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            let v: Value = serde_json::from_str(&t).unwrap();
            if v["@type"] == "Response" {
                return;
            }
        }
    }
}

struct Smtp {
    r: BufReader<TcpStream>,
}

impl Smtp {
    async fn connect(port: u16) -> Smtp {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut smtp = Smtp {
            r: BufReader::new(s),
        };
        smtp.reply().await;
        smtp.cmd("EHLO bench.example.org\r\n").await;
        smtp
    }

    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            assert!(self.r.read_line(&mut line).await.unwrap() > 0);
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    async fn cmd(&mut self, line: &str) -> String {
        self.r.get_mut().write_all(line.as_bytes()).await.unwrap();
        let r = self.reply().await;
        assert!(r.starts_with('2') || r.starts_with('3'), "{line:?}: {r}");
        r
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(name: &str, mut v: Vec<f64>) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "  {name}: n={} min={:.3} median={:.3} p90={:.3} p99={:.3} max={:.3} (ms)",
        v.len(),
        v[0],
        percentile(&v, 0.5),
        percentile(&v, 0.9),
        percentile(&v, 0.99),
        v[v.len() - 1]
    );
}

/// Delivers `n` messages one at a time, each waiting for its 250 and its
/// StateChange; `pause` between deliveries.
async fn latency(server: &Server, ws: &mut Ws, n: usize, pause: Duration) {
    let mut smtp = Smtp::connect(server.smtp).await;
    let mut from_250 = Vec::with_capacity(n);
    let mut from_dot = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        smtp.cmd("MAIL FROM:<sender@example.org>\r\n").await;
        smtp.cmd(&format!("RCPT TO:<{USER}>\r\n")).await;
        smtp.cmd("DATA\r\n").await;
        let msg = format!(
            "From: <sender@example.org>\r\nTo: <{USER}>\r\nSubject: bench {i}\r\n\
             Message-ID: <bench-{i}-{}@example.org>\r\n\r\nHello.\r\n.\r\n",
            started.elapsed().as_nanos()
        );
        let dot = Instant::now();
        smtp.r.get_mut().write_all(msg.as_bytes()).await.unwrap();
        let mut ok_at = None;
        let mut change_at = None;
        while ok_at.is_none() || change_at.is_none() {
            tokio::select! {
                r = smtp.reply(), if ok_at.is_none() => {
                    assert!(r.starts_with("250"), "{r}");
                    ok_at = Some(Instant::now());
                }
                m = ws.next(), if change_at.is_none() => {
                    if let Message::Text(t) = m.unwrap().unwrap()
                        && t.contains("StateChange")
                    {
                        change_at = Some(Instant::now());
                    }
                }
            }
        }
        let (ok, change) = (ok_at.unwrap(), change_at.unwrap());
        let signed = if change >= ok {
            (change - ok).as_secs_f64()
        } else {
            -(ok - change).as_secs_f64()
        };
        from_250.push(signed * 1000.0);
        from_dot.push((change - dot).as_secs_f64() * 1000.0);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "  {n} deliveries in {:.1} s ({:.0}/s), pause {pause:?}",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    summary("SMTP 250 -> StateChange", from_250);
    summary("end of DATA -> StateChange", from_dot);
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    format!(
        "{} x {cpu}; {mem}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("push: bench");
        return;
    }
    let deliveries = env_usize("PUSH_DELIVERIES", 10_000);
    let connections = env_usize("PUSH_CONNECTIONS", 10_000);
    println!("push benchmark");
    println!("  machine: {}", machine());
    println!("  load before: {}", load());
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let pid = server.child.id();

    // 1. Latency.
    let mut ws = ws_connect(server.jmap, 128 * 1024).await;
    enable_push(&mut ws).await;
    // Warm up (caches, first notifier).
    latency(&server, &mut ws, 100, Duration::from_millis(5)).await;
    println!(
        "latency, paced (5 ms between deliveries; coalescing window {} ms):",
        env_usize("PUSH_COALESCE_MS", 2)
    );
    latency(&server, &mut ws, deliveries, Duration::from_millis(5)).await;
    println!("latency, back to back:");
    latency(&server, &mut ws, deliveries, Duration::ZERO).await;
    drop(ws);
    println!("  load after latency: {}", load());

    // 2. Idle connections.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut clients = Vec::with_capacity(connections);
    for i in 0..connections {
        let mut ws = ws_connect(server.jmap, 256).await;
        enable_push(&mut ws).await;
        clients.push(ws);
        if (i + 1) % 2000 == 0 {
            println!(
                "  {} connections open, server RSS {} KiB",
                i + 1,
                rss_kib(pid)
            );
        }
    }
    let opened = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    println!(
        "idle WebSocket connections: {connections} opened (push enabled) in {:.1} s",
        opened.as_secs_f64()
    );
    println!(
        "  server RSS {before} KiB -> {after} KiB: {:.2} KiB per connection",
        (after as f64 - before as f64) / connections as f64
    );
    // One delivery fanned out to every connection.
    let mut smtp = Smtp::connect(server.smtp).await;
    smtp.cmd("MAIL FROM:<sender@example.org>\r\n").await;
    smtp.cmd(&format!("RCPT TO:<{USER}>\r\n")).await;
    smtp.cmd("DATA\r\n").await;
    let t0 = Instant::now();
    smtp.cmd("From: <sender@example.org>\r\nSubject: fan-out\r\n\r\nHi.\r\n.\r\n")
        .await;
    let mut last = Duration::ZERO;
    let mut arrivals = Vec::with_capacity(connections);
    let reads = clients.iter_mut().map(|ws| async move {
        loop {
            if let Message::Text(t) = ws.next().await.unwrap().unwrap()
                && t.contains("StateChange")
            {
                return Instant::now();
            }
        }
    });
    for at in futures_util::future::join_all(reads).await {
        let d = at - t0;
        last = last.max(d);
        arrivals.push(d.as_secs_f64() * 1000.0);
    }
    println!(
        "  one delivery -> StateChange on all {connections} connections: last after {:.1} ms",
        last.as_secs_f64() * 1000.0
    );
    summary("fan-out arrival", arrivals);
    println!("  server RSS after fan-out: {} KiB", rss_kib(pid));
    println!("  load after: {}", load());
    drop(clients);
    drop(server);
}
