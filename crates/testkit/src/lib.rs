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
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
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
