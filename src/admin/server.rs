//! The admin socket service of `tern serve`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use tern_store::MailStore;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;

use super::{ErrorKind, Request, Response};
use crate::serve::Shutdown;

/// Longest request line accepted; requests are a few hundred bytes.
const MAX_LINE: u64 = 64 * 1024;
/// A connection idle this long between requests is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The bound admin socket, ready to [`serve`](AdminListener::serve).
#[derive(Debug)]
pub struct AdminListener {
    listener: UnixListener,
    path: PathBuf,
}

impl AdminListener {
    /// Binds `<data_dir>/admin.sock` with mode 0600, replacing a stale
    /// socket file. Call only while holding the store open: the store's lock
    /// guarantees no other server owns the socket.
    pub fn bind(data_dir: &Path) -> anyhow::Result<AdminListener> {
        let path = data_dir.join(super::SOCKET_NAME);
        // Bound under a temporary name, made private, then renamed into
        // place, so no one can connect before the permissions are set.
        let tmp = data_dir.join(format!(".{}.{}", super::SOCKET_NAME, std::process::id()));
        remove_if_present(&tmp)?;
        let listener = UnixListener::bind(&tmp)
            .with_context(|| format!("cannot bind admin socket {}", tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot set permissions of {}", tmp.display()))?;
        if remove_if_present(&path)? {
            tracing::info!(path = %path.display(), "removed stale admin socket");
        }
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("cannot create admin socket {}", path.display()))?;
        Ok(AdminListener { listener, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts connections until `shutdown`, then lets the requests in
    /// flight finish, and removes the socket file.
    pub async fn serve(self, store: MailStore, mut shutdown: Shutdown) -> anyhow::Result<()> {
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                () = shutdown.wait() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        connections.spawn(handle(stream, store.clone(), shutdown.clone()));
                    }
                    Err(err) => {
                        // E.g. out of file descriptors: back off rather than spin.
                        tracing::warn!(error = %err, "admin socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(joined) = connections.join_next(), if !connections.is_empty() => {
                    log_panic(joined);
                }
            }
        }
        drop(self.listener);
        if let Err(err) = std::fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %err, "cannot remove admin socket");
        }
        while let Some(joined) = connections.join_next().await {
            log_panic(joined);
        }
        Ok(())
    }
}

fn log_panic(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        tracing::error!(error = %err, "admin connection task failed");
    }
}

/// Removes a file if it exists; says whether it did.
fn remove_if_present(path: &Path) -> anyhow::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(err) => Err(err).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Serves one connection: a request per line, a response per line, until
/// the client closes, goes idle, or the server shuts down between requests.
async fn handle(stream: UnixStream, store: MailStore, mut shutdown: Shutdown) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        let mut limited = (&mut reader).take(MAX_LINE + 1);
        let read = tokio::select! {
            () = shutdown.wait() => return,
            read = tokio::time::timeout(IDLE_TIMEOUT, limited.read_until(b'\n', &mut line)) => read,
        };
        let response = match read {
            Err(_elapsed) => return,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "admin connection read failed");
                return;
            }
            Ok(Ok(0)) => return,
            Ok(Ok(_)) if !line.ends_with(b"\n") && line.len() as u64 > MAX_LINE => {
                let response = Response::error(ErrorKind::Invalid, "request line too long");
                let _ = write_response(&mut writer, &response).await;
                return;
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                // Never echo the line: it may hold a password.
                Err(err) => Response::error(ErrorKind::Invalid, format!("bad request: {err}")),
                // Progress lines first, then the answer.
                Ok(Request::SearchReindex { account }) => {
                    crate::reindex::stream(&store, account, &mut writer).await
                }
                Ok(request) => {
                    let store = store.clone();
                    match tokio::task::spawn_blocking(move || super::execute(&store, request)).await
                    {
                        Ok(response) => response,
                        Err(err) => {
                            tracing::error!(error = %err, "admin command panicked");
                            Response::error(ErrorKind::Internal, "the command failed")
                        }
                    }
                }
            },
        };
        if let Err(err) = write_response(&mut writer, &response).await {
            tracing::debug!(error = %err, "admin connection write failed");
            return;
        }
    }
}

async fn write_response(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    response: &Response,
) -> std::io::Result<()> {
    let mut out = serde_json::to_vec(response).map_err(std::io::Error::other)?;
    out.push(b'\n');
    writer.write_all(&out).await?;
    writer.flush().await
}
