//! Outbound delivery throughput: N queued 10 KB messages (default 20,000)
//! drained by the outbound workers to Postfix's `smtp-sink`, each message
//! DKIM-signed with Ed25519; plus the signing cost per message alone.
//!
//! Needs `smtp-sink` (scripts/postfix-tools.sh fetches it without
//! installing Postfix); prints SKIPPED without it. Run with
//! `cargo bench --workspace --bench outbound` (env: TERN_BENCH_MESSAGES,
//! TERN_BENCH_CONCURRENCY). See BENCHMARKS.md, section "Sending".

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tern_smtp::outbound::{Outbound, OutboundConfig, dkim};
use tern_store::dkim::DkimAlgorithm;
use tern_store::queue;
use tern_store::{Envelope, EnvelopeRecipient, MailStore};

// The allocator `tern serve` runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn message(i: usize) -> Vec<u8> {
    let mut m = format!(
        "From: Sender <sender@bench.test>\r\nTo: <rcpt{i}@sink.test>\r\n\
         Subject: Benchmark message {i}\r\nDate: Sun, 22 Nov 2026 07:00:00 +0000\r\n\
         Message-ID: <{i}@bench.test>\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    let line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghij.\r\n";
    while m.len() < 10 * 1024 {
        m.extend_from_slice(line);
    }
    m
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let tools = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/postfix-tools.sh"
        ))
        .stderr(Stdio::inherit())
        .output();
    let Some(bin) = tools
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    else {
        println!("outbound: SKIPPED (smtp-sink unavailable; see scripts/postfix-tools.sh)");
        return;
    };
    let n = env("TERN_BENCH_MESSAGES", 20_000);
    let concurrency = env("TERN_BENCH_CONCURRENCY", 64);
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("bench.test").unwrap();
    let key = dkim::generate(DkimAlgorithm::Ed25519Sha256, "bench").unwrap();
    tern_store::dkim::put(store.kv(), "bench.test", &key).unwrap();

    // Signing cost alone.
    let signers = dkim::Signers::default();
    let sample = message(0);
    let mut costs = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        let h = signers
            .sign(&store, "bench.test", &sample)
            .unwrap()
            .unwrap();
        costs.push(t.elapsed());
        assert!(h.starts_with("DKIM-Signature"));
    }
    costs.sort();
    println!(
        "dkim ed25519 sign, 10 KB message: median {:?}, p99 {:?} (2000 signatures)",
        percentile(&costs, 0.5),
        percentile(&costs, 0.99)
    );

    // The sink.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut sink = Command::new(format!("{bin}/smtp-sink"))
        .args(["-u", "nobody", &format!("127.0.0.1:{port}"), "1024"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("smtp-sink");
    std::thread::sleep(Duration::from_millis(300));

    // Queue the messages.
    let t = Instant::now();
    for i in 0..n {
        let envelope = Envelope {
            mail_from: "sender@bench.test".into(),
            recipients: vec![EnvelopeRecipient {
                address: format!("rcpt{i}@sink.test"),
                ..Default::default()
            }],
            ..Default::default()
        };
        queue::enqueue(store.kv(), &message(i), None, &envelope, 0).unwrap();
    }
    println!("queued {n} messages in {:?}", t.elapsed());

    let config = OutboundConfig {
        hostname: "bench.test".into(),
        routes: BTreeMap::from([("sink.test".to_owned(), format!("127.0.0.1:{port}"))]),
        concurrency,
        per_domain: concurrency,
        starttls: false,
        poll: Duration::from_millis(100),
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let outbound = Outbound::new(config, store.clone()).unwrap();
    let metrics = outbound.metrics();
    let started = Instant::now();
    let task = runtime.spawn(outbound.run(rx));
    loop {
        std::thread::sleep(Duration::from_millis(50));
        if queue::stats(store.kv()).unwrap().depth == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            println!("gave up after 900 s");
            break;
        }
    }
    let elapsed = started.elapsed();
    let _ = stop.send(true);
    runtime.block_on(task).unwrap().unwrap();
    let delivered = metrics.delivered.load(std::sync::atomic::Ordering::Relaxed);
    let deferred = metrics.deferred.load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "drained {n} messages to smtp-sink in {elapsed:?}: {:.0} messages/s \
         (delivered {delivered}, deferred {deferred}, concurrency {concurrency}, dkim ed25519)",
        n as f64 / elapsed.as_secs_f64()
    );
    let _ = sink.kill();
    let _ = sink.wait();
}
