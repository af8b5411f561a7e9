//! clamd (Debian's `clamav-daemon`) started for a test, with its own
//! config in a temp directory and one signature: the EICAR test string.

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{TempDir, free_port};

/// The EICAR anti-virus test file: every scanner reports it, and the
/// signature [`Clamd`] loads names it `Tern.Test.EICAR`.
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// A running clamd listening on a TCP port of 127.0.0.1 and on a unix
/// socket; killed when dropped.
#[derive(Debug)]
pub struct Clamd {
    child: Child,
    port: u16,
    socket: PathBuf,
    dir: TempDir,
}

impl Clamd {
    /// Starts clamd and waits (up to 30 s, while it loads its one
    /// signature) until it answers PING; or says why it cannot, for the
    /// test to print that it SKIPPED. Blocks: async tests call it through
    /// `spawn_blocking`.
    pub fn start() -> Result<Clamd, String> {
        let binary = ["/usr/sbin/clamd", "/usr/bin/clamd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .ok_or("clamd is not installed (apt-get install clamav-daemon)")?;
        let dir = TempDir::new("tern-clamd").map_err(|e| e.to_string())?;
        let db = dir.path().join("db");
        std::fs::create_dir(&db).map_err(|e| e.to_string())?;
        // An extended (body) signature: any file type, any offset.
        let hex: String = EICAR.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::write(
            db.join("tern-test.ndb"),
            format!("Tern.Test.EICAR:0:*:{hex}\n"),
        )
        .map_err(|e| e.to_string())?;
        let port = free_port();
        let socket = dir.path().join("clamd.sock");
        let config = dir.path().join("clamd.conf");
        std::fs::write(
            &config,
            format!(
                "Foreground yes\nTCPSocket {port}\nTCPAddr 127.0.0.1\nLocalSocket {}\n\
                 DatabaseDirectory {}\nTemporaryDirectory {}\nLogFile {}\n",
                socket.display(),
                db.display(),
                dir.path().display(),
                dir.path().join("clamd.log").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {binary}: {e}"))?;
        let mut clamd = Clamd {
            child,
            port,
            socket,
            dir,
        };
        for _ in 0..300 {
            if clamd.answers_ping() {
                return Ok(clamd);
            }
            if let Ok(Some(status)) = clamd.child.try_wait() {
                let log =
                    std::fs::read_to_string(clamd.dir.path().join("clamd.log")).unwrap_or_default();
                return Err(format!(
                    "clamd exited ({status}): {}",
                    log.lines().last().unwrap_or("")
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err("clamd did not answer PING within 30 s".into())
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let _ = s.write_all(b"zPING\0");
        let mut reply = Vec::new();
        let _ = BufReader::new(s).read_until(0, &mut reply);
        reply.starts_with(b"PONG")
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its unix socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

impl Drop for Clamd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
