//! Test support shared by the test suites of several Tern crates (the root
//! package's end-to-end tests, tern-smtp's): things that start external
//! programs the tests talk to. Only a dev-dependency, and std only.

mod clamd;

pub use clamd::{Clamd, EICAR};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Trace fields as Tern's MX puts them on top of a message (CRLF), an LF
/// variant, and none: for the tests holding a parse of the data under them
/// equal to a parse of the whole (the store's and the search document's).
pub const TRACE_PREFIXES: [&[u8]; 3] = [
    b"Received: from client.example (client.example [192.0.2.1])\r\n\
      \tby mx.tern.test (Tern) with ESMTPS id 0123456789abcdef\r\n\
      \tfor <alice@example.com>; Mon, 23 Nov 2026 02:30:00 +0000\r\n\
      Authentication-Results: mx.tern.test;\r\n\
      \tspf=pass smtp.mailfrom=example.org;\r\n\
      \tdkim=none\r\n\
      X-Spam-Status: No, score=0.1\r\n\
      X-Spam-Score: 0.1\r\n",
    b"Received: from a by b; Mon, 23 Nov 2026 02:30:00 +0000\n",
    b"",
];

/// A free TCP port on 127.0.0.1 (free when asked: bind it soon).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// `n` distinct TCP ports on 127.0.0.1, free when asked (bind them soon),
/// for a server started by a test.
///
/// They come from below the system's ephemeral range when it has room
/// there: a port from that range (what binding port 0 gives) can be taken,
/// between the test's asking and the server's binding, as the local port
/// of any outgoing connection on the machine, and the server then fails
/// to bind it. Each candidate is bound to check it is free, and all are
/// held until every one is chosen, so none is handed out twice.
pub fn free_ports(n: usize) -> Vec<u16> {
    use std::hash::BuildHasher;
    const LOWEST: u16 = 10_000;
    let below = ephemeral_start().filter(|&start| start > LOWEST + 1_000);
    let mut held: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut tries = 0u32;
    while held.len() < n {
        tries += 1;
        let port = match below {
            // std's RandomState is seeded randomly: a random candidate.
            Some(start) if tries <= 1_000 => {
                let r = std::collections::hash_map::RandomState::new().hash_one(tries);
                LOWEST + (r % u64::from(start - LOWEST)) as u16
            }
            _ => 0,
        };
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => held.push(l),
            Err(e) if port == 0 => panic!("no free port on 127.0.0.1: {e}"),
            Err(_) => {}
        }
    }
    held.iter()
        .map(|l| l.local_addr().expect("a bound listener's address").port())
        .collect()
}

/// The first port of the system's ephemeral range (Linux), if known.
fn ephemeral_start() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A directory of its own under the system's temp directory, removed
/// with everything in it when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory named after `prefix`.
    pub fn new(prefix: &str) -> std::io::Result<TempDir> {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path)?;
        Ok(TempDir(path))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ports for test servers are distinct, bindable, and outside the
    /// ephemeral range when the system says where that starts.
    #[test]
    fn free_ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports = free_ports(20);
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 20, "{ports:?}");
        if let Some(start) = ephemeral_start() {
            assert!(ports.iter().all(|&p| p < start), "{ports:?} vs {start}");
        }
        let held: Vec<_> = ports
            .iter()
            .map(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).unwrap())
            .collect();
        assert_eq!(held.len(), 20);
    }
}
