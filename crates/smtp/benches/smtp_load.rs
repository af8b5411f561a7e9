//! An SMTP load client that measures what smtp-source does not: the
//! latency of each message, from its MAIL command to the 250 after its
//! data (that 250 is sent only once the message is durable). Plain
//! binary; run it against a running server:
//!
//! ```text
//! cargo bench --workspace --bench smtp_load -- ADDR [SESSIONS] [MESSAGES] [SIZE] [RCPT]
//! ```
//!
//! Defaults: 20 sessions, 20 000 messages of 10 240 bytes to
//! `alice@example.com`. Each session keeps its connection and pipelines
//! MAIL, RCPT and DATA (RFC 2920), then sends the data. Prints the rate and
//! the latency percentiles. See BENCHMARKS.md, section "SMTP".

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let Some(addr) = args.first() else {
        eprintln!(
            "usage: smtp_load ADDR [SESSIONS] [MESSAGES] [SIZE] [RCPT]\n\
             (e.g. cargo bench --workspace --bench smtp_load -- 127.0.0.1:2525)"
        );
        return;
    };
    let addr: SocketAddr = addr.parse().expect("ADDR is host:port");
    let number = |i: usize, default: usize| {
        args.get(i)
            .map(|a| a.parse().expect("a number"))
            .unwrap_or(default)
    };
    let sessions = number(1, 20);
    let messages = number(2, 20_000);
    let size = number(3, 10_240);
    let rcpt = args
        .get(4)
        .cloned()
        .unwrap_or_else(|| "alice@example.com".to_owned());

    let body = Arc::new(message(size));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..sessions)
        .map(|_| {
            let (body, next, rcpt) = (Arc::clone(&body), Arc::clone(&next), rcpt.clone());
            std::thread::spawn(move || session(addr, &rcpt, &body, &next, messages))
        })
        .collect();
    let mut latencies: Vec<Duration> = Vec::with_capacity(messages);
    let mut failed = 0;
    for worker in workers {
        let (ok, bad) = worker.join().expect("a session thread");
        latencies.extend(ok);
        failed += bad;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len().max(1));
        latencies.get(i - 1).copied().unwrap_or_default()
    };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "smtp_load: {} messages of {size} bytes over {sessions} sessions to {addr}: \
         {:.2} s, {:.0} messages/s, {failed} refused",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
    println!(
        "smtp_load: latency MAIL..250 ms: p50 {:.2}  p90 {:.2}  p99 {:.2}  max {:.2}",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(pct(1.0))
    );
}

/// A message of `size` bytes (headers included), in 78-character lines.
fn message(size: usize) -> Vec<u8> {
    let mut out =
        b"From: <load@example.org>\r\nTo: <alice@example.com>\r\nSubject: load\r\n\r\n".to_vec();
    let line = [b'x'; 78];
    while out.len() + 80 <= size {
        out.extend_from_slice(&line);
        out.extend_from_slice(b"\r\n");
    }
    while out.len() + 2 < size {
        out.push(b'y');
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// One session: sends messages while any are left. Returns the latencies
/// of accepted messages and the number refused.
fn session(
    addr: SocketAddr,
    rcpt: &str,
    body: &[u8],
    next: &AtomicUsize,
    total: usize,
) -> (Vec<Duration>, usize) {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    let mut line = String::new();
    let mut reply = |reader: &mut BufReader<TcpStream>| -> String {
        // The last line of a (multi-line) reply.
        loop {
            line.clear();
            if reader.read_line(&mut line).expect("read") == 0 {
                panic!("the server closed the connection");
            }
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.clone();
            }
        }
    };
    assert!(reply(&mut reader).starts_with("220"));
    writer
        .write_all(b"EHLO load.example.org\r\n")
        .expect("write");
    assert!(reply(&mut reader).starts_with("250"));
    let envelope = format!("MAIL FROM:<load@example.org>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
    let mut data = body.to_vec();
    data.extend_from_slice(b".\r\n");
    let (mut latencies, mut refused) = (Vec::new(), 0);
    while next.fetch_add(1, Ordering::Relaxed) < total {
        let start = Instant::now();
        writer.write_all(envelope.as_bytes()).expect("write");
        let replies = [reply(&mut reader), reply(&mut reader), reply(&mut reader)];
        if !replies[2].starts_with("354") {
            refused += 1;
            continue;
        }
        writer.write_all(&data).expect("write");
        if reply(&mut reader).starts_with("250") {
            latencies.push(start.elapsed());
        } else {
            refused += 1;
        }
    }
    let _ = writer.write_all(b"QUIT\r\n");
    (latencies, refused)
}
