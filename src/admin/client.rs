//! The CLI side: send a command to a running server, or run it on the store.

use std::io::{BufRead, BufReader, ErrorKind as IoErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use tern_store::MailStore;

use super::{Request, Response};

/// How long the CLI waits for a running server's answer.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Which way a command went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Through `admin.sock` to a running `tern serve`.
    Socket,
    /// The store opened by this process (no server running).
    Direct,
}

/// Runs `request` against the data directory: through the admin socket when
/// a server accepts on it, otherwise by opening the store here.
pub fn run(data_dir: &Path, request: Request) -> anyhow::Result<(Route, Response)> {
    let socket = data_dir.join(super::SOCKET_NAME);
    match UnixStream::connect(&socket) {
        Ok(stream) => {
            tracing::debug!(path = %socket.display(), "sending command to the running server");
            let response = over_socket(stream, &request)
                .with_context(|| format!("admin socket {}", socket.display()))?;
            Ok((Route::Socket, response))
        }
        // No socket, or a stale one that nobody listens on: no server runs.
        Err(err)
            if matches!(
                err.kind(),
                IoErrorKind::NotFound | IoErrorKind::ConnectionRefused
            ) =>
        {
            tracing::debug!(path = %data_dir.display(), "no server running; opening the store");
            let store = MailStore::open(data_dir).with_context(|| {
                format!(
                    "cannot open the store in {} (is another tern process using it?)",
                    data_dir.display()
                )
            })?;
            Ok((Route::Direct, super::execute(&store, request)))
        }
        Err(err) => Err(err).with_context(|| format!("cannot connect to {}", socket.display())),
    }
}

fn over_socket(stream: UnixStream, request: &Request) -> anyhow::Result<Response> {
    stream.set_read_timeout(Some(RESPONSE_TIMEOUT))?;
    stream.set_write_timeout(Some(RESPONSE_TIMEOUT))?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .context("cannot send the command")?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .context("no answer from the server")?;
    if answer.is_empty() {
        bail!("the server closed the connection without answering (shutting down?)");
    }
    serde_json::from_str(&answer).context("the server's answer is not understood")
}
