//! `tern spam train`: bulk training of the spam classifier from
//! directories of messages (one raw message per file; an mbox `From `
//! line at the start is skipped), with a progress bar.
//!
//! Without `--account` the global model is trained; with it, that
//! account's own model. When a server runs, files are handed to it in
//! batches of paths over the admin socket ([`Request::SpamTrain`]; the
//! server reads them, so they must be readable by it); otherwise the store
//! is opened here once.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use tern_smtp::spam::{Class, Scope, train_messages};
use tern_store::MailStore;

use crate::admin::{self, Request, Response};
use crate::config::Config;

/// Paths per admin request (the socket's lines are at most 64 KiB).
const PATHS_PER_REQUEST: usize = 64;
/// Largest file trained (bigger ones are skipped).
const MAX_FILE: u64 = 10 << 20;

#[derive(Debug, Subcommand)]
pub enum SpamCommand {
    /// Train the classifier from directories of spam and ham messages.
    Train {
        /// A directory of spam messages (one per file, searched
        /// recursively). May be given more than once.
        #[arg(long, value_name = "DIR")]
        spam: Vec<PathBuf>,
        /// A directory of ham (wanted) messages.
        #[arg(long, value_name = "DIR")]
        ham: Vec<PathBuf>,
        /// Train this account's own model instead of the global one.
        #[arg(long, value_name = "ADDRESS")]
        account: Option<String>,
    },
}

/// Runs a `tern spam` command.
pub fn run(config: &Config, command: SpamCommand) -> anyhow::Result<()> {
    let SpamCommand::Train { spam, ham, account } = command;
    if spam.is_empty() && ham.is_empty() {
        bail!("nothing to train: give --spam DIR and/or --ham DIR");
    }
    let mut jobs: Vec<(Class, PathBuf)> = Vec::new();
    for (class, dirs) in [(Class::Spam, &spam), (Class::Ham, &ham)] {
        for dir in dirs {
            let mut files = Vec::new();
            walk(dir, &mut files).with_context(|| format!("cannot read {}", dir.display()))?;
            files.sort();
            jobs.extend(files.into_iter().map(|f| (class, f)));
        }
    }
    let bar = ProgressBar::new(jobs.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} messages ({per_sec}, eta {eta})",
        )
        .expect("a valid template"),
    );
    let socket = config.data_dir.join(admin::SOCKET_NAME);
    let (mut spam_done, mut ham_done) = (0usize, 0usize);
    if UnixStream::connect(&socket).is_ok() {
        // A server runs: it does the training.
        for class in [Class::Spam, Class::Ham] {
            let paths: Vec<String> = jobs
                .iter()
                .filter(|(c, _)| *c == class)
                .map(|(_, p)| absolute(p))
                .collect::<anyhow::Result<_>>()?;
            for chunk in paths.chunks(PATHS_PER_REQUEST) {
                let request = Request::SpamTrain {
                    class: class_name(class).to_owned(),
                    account: account.clone(),
                    paths: chunk.to_vec(),
                };
                match admin::client::run(&config.data_dir, request)?.1 {
                    Response::Done { message } => tracing::debug!(%message, "batch trained"),
                    Response::Error { message, .. } => bail!("{message}"),
                    other => bail!("unexpected answer {other:?}"),
                }
                bar.inc(chunk.len() as u64);
            }
            match class {
                Class::Spam => spam_done = paths.len(),
                Class::Ham => ham_done = paths.len(),
            }
        }
    } else {
        let store = MailStore::open(&config.data_dir).with_context(|| {
            format!(
                "cannot open the store in {} (is another tern process using it?)",
                config.data_dir.display()
            )
        })?;
        let scope = scope_of(&store, account.as_deref()).map_err(|r| anyhow::anyhow!("{r:?}"))?;
        for class in [Class::Spam, Class::Ham] {
            let files: Vec<&PathBuf> = jobs
                .iter()
                .filter(|(c, _)| *c == class)
                .map(|(_, p)| p)
                .collect();
            let mut before = 0;
            let n = train_files(&store, scope, class, &files, |done| {
                bar.inc((done - before) as u64);
                before = done;
            })?;
            match class {
                Class::Spam => spam_done = n,
                Class::Ham => ham_done = n,
            }
        }
    }
    bar.finish_and_clear();
    println!(
        "trained {spam_done} spam and {ham_done} ham messages into the {} model",
        match &account {
            Some(a) => format!("{a} account's"),
            None => "global".to_owned(),
        }
    );
    Ok(())
}

fn class_name(class: Class) -> &'static str {
    match class {
        Class::Spam => "spam",
        Class::Ham => "ham",
    }
}

fn absolute(p: &Path) -> anyhow::Result<String> {
    let abs = std::fs::canonicalize(p).with_context(|| format!("{}", p.display()))?;
    abs.into_os_string()
        .into_string()
        .map_err(|p| anyhow::anyhow!("not a UTF-8 path: {}", p.to_string_lossy()))
}

/// Regular files under `dir`, recursively (hidden files skipped).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), out)?;
        } else if kind.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}

/// The raw message of a file: an mbox `From ` line at the start dropped.
pub fn read_message(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    if std::fs::metadata(path)?.len() > MAX_FILE {
        return Ok(None);
    }
    let data = std::fs::read(path)?;
    Ok(Some(strip_mbox_from(data)))
}

fn strip_mbox_from(mut data: Vec<u8>) -> Vec<u8> {
    if data.starts_with(b"From ")
        && let Some(end) = data.iter().position(|&b| b == b'\n')
    {
        data.drain(..=end);
    }
    data
}

fn train_files(
    store: &MailStore,
    scope: Scope,
    class: Class,
    files: &[&PathBuf],
    progress: impl FnMut(usize),
) -> anyhow::Result<usize> {
    let mut messages = Vec::with_capacity(files.len());
    for f in files {
        if let Some(m) = read_message(f).with_context(|| format!("{}", f.display()))? {
            messages.push(m);
        }
    }
    Ok(train_messages(
        store,
        scope,
        class,
        messages.iter().map(Vec::as_slice),
        progress,
    )?)
}

fn scope_of(store: &MailStore, account: Option<&str>) -> Result<Scope, Response> {
    let Some(address) = account else {
        return Ok(Scope::Global);
    };
    match store.lookup_address(address) {
        Ok(Some(id)) => Ok(Scope::Account(id)),
        Ok(None) => Err(Response::Error {
            kind: admin::ErrorKind::NotFound,
            message: format!("account {address} not found"),
        }),
        Err(err) => Err(Response::Error {
            kind: admin::ErrorKind::Internal,
            message: format!("store error: {err}"),
        }),
    }
}

/// The admin socket's side of [`Request::SpamTrain`].
pub fn execute_train(
    store: &MailStore,
    class: &str,
    account: Option<&str>,
    paths: &[String],
) -> Response {
    let class = match class {
        "spam" => Class::Spam,
        "ham" => Class::Ham,
        other => {
            return Response::Error {
                kind: admin::ErrorKind::Invalid,
                message: format!("unknown class {other:?} (spam or ham)"),
            };
        }
    };
    let scope = match scope_of(store, account) {
        Ok(s) => s,
        Err(response) => return response,
    };
    let files: Vec<PathBuf> = paths.iter().map(PathBuf::from).collect();
    let refs: Vec<&PathBuf> = files.iter().collect();
    match train_files(store, scope, class, &refs, |_| {}) {
        Ok(n) => Response::Done {
            message: format!("trained {n} messages as {}", class_name(class)),
        },
        Err(err) => Response::Error {
            kind: admin::ErrorKind::Invalid,
            message: format!("{err:#}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_from_line_is_dropped() {
        assert_eq!(
            strip_mbox_from(b"From a@b  Thu Aug 22 13:17:22 2002\nSubject: x\n\nbody".to_vec()),
            b"Subject: x\n\nbody"
        );
        assert_eq!(
            strip_mbox_from(b"From: a@b\n\nx".to_vec()),
            b"From: a@b\n\nx"
        );
    }
}
