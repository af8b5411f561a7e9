//! `tern reindex [--account ADDRESS]`: rebuilds the full-text search index
//! (`<data_dir>/search`) from the store, with a progress bar.
//!
//! RocksDB lets one process open a database, so while `tern serve` runs the
//! server does the rebuild, on the index its indexer and JMAP use: the CLI
//! sends [`Request::SearchReindex`] over the admin socket and the server
//! answers with one [`ProgressLine`] per batch, then one [`Response`]. A
//! dropped connection does not stop a rebuild, and an interrupted one
//! (crash, stop) is resumed by the indexer at the next start. Without a
//! server the CLI opens the store and the index itself. Mail keeps being
//! delivered and indexed meanwhile; text queries of an account being
//! rebuilt see a partial index until it is done.

use std::io::{BufRead, BufReader, ErrorKind as IoErrorKind, IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};
use tern_search::{Scope, SearchIndex};
use tern_store::{AccountId, MailStore};
use tokio::io::AsyncWriteExt;

use crate::admin::{self, ErrorKind, Request, Response};
use crate::config::Config;

/// How long the CLI waits for the next line from a running server (one
/// batch of a rebuild).
const LINE_TIMEOUT: Duration = Duration::from_secs(300);

/// The progress of a rebuild, sent by the server after every batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename = "progress")]
pub struct ProgressLine {
    /// The account being rebuilt.
    pub account: String,
    /// Accounts finished before it.
    pub accounts_done: usize,
    /// Accounts to rebuild.
    pub accounts: usize,
    /// Its emails indexed so far.
    pub done: u64,
    /// Its emails when its rebuild started.
    pub total: u64,
}

/// Runs `tern reindex`: through a running server, or on the data directory.
pub fn run(config: &Config, account: Option<&str>) -> anyhow::Result<()> {
    let socket = config.data_dir.join(admin::SOCKET_NAME);
    let mut display = Display::new();
    let response = match UnixStream::connect(&socket) {
        Ok(stream) => {
            tracing::debug!(route = "socket", path = %socket.display(), "the running server rebuilds");
            over_socket(stream, account, &mut display)
                .with_context(|| format!("admin socket {}", socket.display()))?
        }
        Err(err)
            if matches!(
                err.kind(),
                IoErrorKind::NotFound | IoErrorKind::ConnectionRefused
            ) =>
        {
            tracing::debug!(route = "direct", path = %config.data_dir.display(), "no server running; opening the store");
            let store = MailStore::open(&config.data_dir).with_context(|| {
                format!(
                    "cannot open the store in {} (is another tern process using it?)",
                    config.data_dir.display()
                )
            })?;
            let index = SearchIndex::for_store_with(&store, config.search_options())
                .context("cannot open the search index")?;
            // A new index: the accounts not rebuilt here are marked, for the
            // server's indexer to rebuild when it starts.
            tern_search::schedule_if_created(&store, &index)
                .context("cannot schedule the search index rebuild")?;
            rebuild(&store, &index, account, &mut |p| display.show(&p))
        }
        Err(err) => {
            return Err(err).with_context(|| format!("cannot connect to {}", socket.display()));
        }
    };
    display.finish();
    match response {
        Response::Done { message } => {
            println!("{message}");
            Ok(())
        }
        Response::Error { message, .. } => bail!("{message}"),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Sends the request and shows the server's progress until its answer.
fn over_socket(
    stream: UnixStream,
    account: Option<&str>,
    display: &mut Display,
) -> anyhow::Result<Response> {
    stream.set_read_timeout(Some(LINE_TIMEOUT))?;
    stream.set_write_timeout(Some(LINE_TIMEOUT))?;
    let request = Request::SearchReindex {
        account: account.map(str::to_owned),
    };
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .context("cannot send the command")?;
    let mut reader = BufReader::new(&stream);
    loop {
        let mut answer = String::new();
        reader
            .read_line(&mut answer)
            .context("no answer from the server")?;
        if answer.is_empty() {
            bail!("the server closed the connection without answering (shutting down?)");
        }
        if let Ok(progress) = serde_json::from_str::<ProgressLine>(&answer) {
            display.show(&progress);
            continue;
        }
        return serde_json::from_str(&answer).context("the server's answer is not understood");
    }
}

/// The server's side of [`Request::SearchReindex`]: rebuilds on the
/// server's index, writing a [`ProgressLine`] per batch to `writer`, and
/// returns the final answer (for the caller to write). Progress that cannot
/// be written (the CLI went away) is dropped; the rebuild goes on.
pub async fn stream(
    store: &MailStore,
    account: Option<String>,
    writer: &mut tokio::net::unix::OwnedWriteHalf,
) -> Response {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ProgressLine>();
    let store = store.clone();
    let job = tokio::task::spawn_blocking(move || match SearchIndex::for_store(&store) {
        Ok(index) => rebuild(&store, &index, account.as_deref(), &mut |p| {
            let _ = tx.send(p);
        }),
        Err(err) => internal(err),
    });
    let mut connected = true;
    while let Some(progress) = rx.recv().await {
        if connected {
            let mut line = serde_json::to_vec(&progress).expect("serializable");
            line.push(b'\n');
            connected = writer.write_all(&line).await.is_ok();
        }
    }
    match job.await {
        Ok(response) => response,
        Err(err) => {
            tracing::error!(error = %err, "search index rebuild panicked");
            Response::Error {
                kind: ErrorKind::Internal,
                message: "the rebuild failed".into(),
            }
        }
    }
}

/// [`Request::SearchReindex`] without progress (for [`admin::execute`]).
pub fn execute(store: &MailStore, account: Option<&str>) -> Response {
    match SearchIndex::for_store(store) {
        Ok(index) => rebuild(store, &index, account, &mut |_| {}),
        Err(err) => internal(err),
    }
}

fn internal(err: tern_search::Error) -> Response {
    tracing::error!(error = %err, "search index rebuild failed");
    Response::Error {
        kind: ErrorKind::Internal,
        message: format!("search index error: {err}"),
    }
}

/// Rebuilds the index of one account (by address) or of all, reporting
/// progress; answers as an admin command does.
fn rebuild(
    store: &MailStore,
    index: &SearchIndex,
    account: Option<&str>,
    progress: &mut dyn FnMut(ProgressLine),
) -> Response {
    let accounts: Vec<(AccountId, String)> = match store.list_accounts() {
        Ok(list) => list.into_iter().map(|a| (a.id, a.address)).collect(),
        Err(err) => {
            tracing::error!(error = %err, "cannot list accounts");
            return Response::Error {
                kind: ErrorKind::Internal,
                message: format!("store error: {err}"),
            };
        }
    };
    let scope = match account {
        None => Scope::All,
        Some(address) => match store.lookup_address(address) {
            Ok(Some(id)) => Scope::Account(id),
            Ok(None) => {
                return Response::Error {
                    kind: ErrorKind::NotFound,
                    message: format!("account {address} not found"),
                };
            }
            Err(err) => {
                return Response::Error {
                    kind: ErrorKind::Invalid,
                    message: format!("invalid: {err}"),
                };
            }
        },
    };
    let name = |id: AccountId| {
        accounts
            .iter()
            .find(|(a, _)| *a == id)
            .map_or_else(|| format!("account {id}"), |(_, n)| n.clone())
    };
    let started = Instant::now();
    let result = tern_search::reindex(store, index, scope, &mut |p| {
        progress(ProgressLine {
            account: name(p.account),
            accounts_done: p.accounts_done,
            accounts: p.accounts,
            done: p.done,
            total: p.total,
        })
    });
    let count = match scope {
        Scope::All => accounts.len(),
        Scope::Account(_) => 1,
    };
    match result {
        Ok(emails) => {
            tracing::info!(
                emails,
                accounts = count,
                seconds = started.elapsed().as_secs(),
                "search index rebuilt"
            );
            Response::Done {
                message: format!(
                    "search index rebuilt: {emails} emails in {count} account{}",
                    if count == 1 { "" } else { "s" }
                ),
            }
        }
        Err(err) => internal(err),
    }
}

/// What the bar says: the account and which of how many it is.
fn label(p: &ProgressLine) -> String {
    format!("{} ({}/{})", p.account, p.accounts_done + 1, p.accounts)
}

/// The progress bar on a terminal; otherwise a line per account (and at
/// most one a second), for logs.
struct Display {
    terminal: bool,
    /// Made at the first progress, so that it never shows empty.
    bar: Option<ProgressBar>,
    current: Option<(String, usize)>,
    last_line: Option<Instant>,
}

impl Display {
    fn new() -> Display {
        Display {
            terminal: std::io::stderr().is_terminal(),
            bar: None,
            current: None,
            last_line: None,
        }
    }

    fn show(&mut self, p: &ProgressLine) {
        let which = (p.account.clone(), p.accounts_done);
        let new_account = self.current.as_ref() != Some(&which);
        self.current = Some(which);
        if self.terminal && self.bar.is_none() {
            // Hidden until styled and named: no empty first frame.
            let bar = ProgressBar::hidden();
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} emails ({per_sec}, eta {eta})",
                )
                .expect("a valid template"),
            );
            bar.set_message(label(p));
            bar.set_draw_target(ProgressDrawTarget::stderr());
            self.bar = Some(bar);
        }
        match &self.bar {
            Some(bar) => {
                if new_account {
                    bar.reset();
                    bar.set_message(label(p));
                }
                bar.set_length(p.total);
                bar.set_position(p.done);
            }
            None => {
                let finished = p.done >= p.total;
                let due = self
                    .last_line
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
                if new_account || finished || due {
                    eprintln!(
                        "reindex: {} (account {}/{}): {}/{} emails",
                        p.account,
                        p.accounts_done + 1,
                        p.accounts,
                        p.done,
                        p.total
                    );
                    self.last_line = Some(Instant::now());
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_answers_are_told_apart_on_the_wire() {
        let p = ProgressLine {
            account: "a@example.com".into(),
            accounts_done: 0,
            accounts: 2,
            done: 256,
            total: 1000,
        };
        let line = serde_json::to_string(&p).unwrap();
        assert_eq!(
            line,
            r#"{"result":"progress","account":"a@example.com","accounts_done":0,"accounts":2,"done":256,"total":1000}"#
        );
        assert_eq!(serde_json::from_str::<ProgressLine>(&line).unwrap(), p);
        let done = serde_json::to_string(&Response::Done {
            message: "x".into(),
        })
        .unwrap();
        assert!(serde_json::from_str::<ProgressLine>(&done).is_err());
        let request: Request =
            serde_json::from_str(r#"{"op":"search_reindex","account":"a@example.com"}"#).unwrap();
        assert_eq!(
            request,
            Request::SearchReindex {
                account: Some("a@example.com".into())
            }
        );
        let all: Request = serde_json::from_str(r#"{"op":"search_reindex"}"#).unwrap();
        assert_eq!(all, Request::SearchReindex { account: None });
    }

    #[test]
    fn rebuilds_one_account_or_all_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(&dir.path().join("data")).unwrap();
        store.add_domain("example.com").unwrap();
        let a = store.create_account("a@example.com", "pw").unwrap();
        store.create_account("b@example.com", "pw").unwrap();
        for n in 0..3 {
            let raw = format!("From: x@example.org\r\nSubject: walrus {n}\r\n\r\nbody\r\n");
            store
                .deliver(raw.as_bytes(), &[tern_store::deliver::Recipient::inbox(a)])
                .unwrap();
        }
        let index = SearchIndex::open(&dir.path().join("search")).unwrap();
        let mut seen = Vec::new();
        let answer = rebuild(&store, &index, Some("a@example.com"), &mut |p| seen.push(p));
        assert_eq!(
            answer,
            Response::Done {
                message: "search index rebuilt: 3 emails in 1 account".into()
            }
        );
        let last = seen.last().unwrap();
        assert_eq!(
            (last.account.as_str(), last.done, last.total, last.accounts),
            ("a@example.com", 3, 3, 1)
        );
        let hits = index
            .search_text(&store, a, tern_search::TextField::Subject, "walrus")
            .unwrap();
        assert_eq!(hits.len(), 3);

        let mut accounts = std::collections::BTreeSet::new();
        let answer = rebuild(&store, &index, None, &mut |p| {
            accounts.insert(p.account);
        });
        assert_eq!(
            answer,
            Response::Done {
                message: "search index rebuilt: 3 emails in 2 accounts".into()
            }
        );
        assert_eq!(
            accounts.into_iter().collect::<Vec<_>>(),
            ["a@example.com", "b@example.com"]
        );
        let missing = rebuild(&store, &index, Some("nobody@example.com"), &mut |_| {});
        assert!(
            matches!(
                missing,
                Response::Error {
                    kind: ErrorKind::NotFound,
                    ..
                }
            ),
            "{missing:?}"
        );
    }
}
