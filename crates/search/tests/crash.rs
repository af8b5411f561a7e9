//! Crash safety of the indexer with a real SIGKILL: a child process
//! delivers and destroys emails while its indexer drains the queue; the
//! parent kills it at a random moment, restarts the indexer on the same
//! store and index, and checks that nothing acknowledged is lost and
//! nothing is indexed twice: the index matches a rebuild from the store.
//!
//! The child reports `ACK` after a delivery commits, `DESTROY` before it
//! destroys an email and `DEL` after. A kill between the destroy's commit
//! and `DEL` is common (a commit is durable once its WAL write is done,
//! before the call returns), so an email with `DESTROY` but no `DEL` must be
//! found exactly when the store still has it.
//!
//! The child is this test binary run again with `TERN_SEARCH_CRASH_DIR`
//! set, running only the ignored test [`crash_child`].

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{TermPostings, numbered_message};
use rand::Rng as _;
use tern_search::{Field, Indexer, Query, Scope, SearchIndex, TextField, reindex};
use tern_store::deliver::Recipient;
use tern_store::{AccountId, DocumentId, MailStore};

const DIR_ENV: &str = "TERN_SEARCH_CRASH_DIR";
const BASE_ENV: &str = "TERN_SEARCH_CRASH_BASE";
const LOGIN: &str = "user@example.test";

fn child_abort(what: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "crash child: {what}");
    std::process::exit(2);
}

#[test]
#[ignore = "the child process of `indexer_survives_sigkill`"]
fn crash_child() {
    let Some(dir) = std::env::var_os(DIR_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let base: usize = std::env::var(BASE_ENV)
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| child_abort("no base"));
    let store = MailStore::open(&dir.join("store")).unwrap_or_else(|e| child_abort(&e.to_string()));
    let index =
        SearchIndex::open(&dir.join("search")).unwrap_or_else(|e| child_abort(&e.to_string()));
    let account = store
        .lookup_address(LOGIN)
        .ok()
        .flatten()
        .unwrap_or_else(|| child_abort("no account"));
    let stop = AtomicBool::new(false);
    // A safety net only: the child also stops once the parent is gone
    // (its stdout breaks). Generous, for slow fsyncs on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(300);
    std::thread::scope(|s| {
        let indexer = Indexer::new(store.clone(), index.clone());
        let stop = &stop;
        s.spawn(move || indexer.run_blocking(&|| stop.load(Ordering::Relaxed)));
        let mut out = std::io::stdout().lock();
        for n in base.. {
            if Instant::now() > deadline {
                break;
            }
            let delivered = store
                .deliver(&numbered_message(n), &[Recipient::inbox(account)])
                .unwrap_or_else(|e| child_abort(&e.to_string()));
            let id = delivered[0]
                .as_ref()
                .map(|d| d.email)
                .unwrap_or_else(|e| child_abort(&e.to_string()));
            writeln!(out, "ACK {n} {id}")
                .and_then(|()| out.flush())
                .unwrap_or_else(|_| child_abort("the parent is gone"));
            if n % 7 == 3 {
                // Announced before the commit: a kill after the commit but
                // before `DEL` is written leaves the parent in doubt, and it
                // asks the store (see `Outcome::InDoubt`).
                writeln!(out, "DESTROY {n} {id}")
                    .and_then(|()| out.flush())
                    .unwrap_or_else(|_| child_abort("the parent is gone"));
                store
                    .kv()
                    .transact(|tx| -> tern_store::Result<()> {
                        let mut w = tern_store::Writer::begin(tx, account)?;
                        tern_store::email::destroy(&mut w, id)?;
                        w.finish()?;
                        Ok(())
                    })
                    .unwrap_or_else(|e| child_abort(&e.to_string()));
                writeln!(out, "DEL {n} {id}")
                    .and_then(|()| out.flush())
                    .unwrap_or_else(|_| child_abort("the parent is gone"));
            }
            index.kick();
        }
        stop.store(true, Ordering::Relaxed);
        index.kick();
    });
}

/// Postings of `terms`, keeping only documents in `live`.
fn postings(
    index: &SearchIndex,
    account: AccountId,
    terms: &BTreeSet<(Field, String)>,
    live: &roaring::RoaringBitmap,
) -> Vec<TermPostings> {
    terms
        .iter()
        .map(|(f, t)| {
            let docs = index
                .inspect(account, t, *f)
                .unwrap()
                .into_iter()
                .filter(|(d, _)| live.contains(*d))
                .collect();
            (*f, t.clone(), docs)
        })
        .collect()
}

#[test]
fn indexer_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let account = {
        let store = MailStore::open(&dir.path().join("store")).unwrap();
        store.add_domain("example.test").unwrap();
        store.create_account(LOGIN, "secret").unwrap()
    };
    let iterations: usize = std::env::var("TERN_SEARCH_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut acked: BTreeMap<usize, DocumentId> = BTreeMap::new();
    let mut destroying: BTreeSet<DocumentId> = BTreeSet::new();
    let mut destroyed: BTreeSet<DocumentId> = BTreeSet::new();
    // In-doubt emails: whether the store still had them.
    let mut in_doubt: BTreeMap<DocumentId, bool> = BTreeMap::new();
    let mut rng = rand::thread_rng();
    for iteration in 0..iterations {
        let base = iteration * 100_000;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(DIR_ENV, dir.path())
            .env(BASE_ENV, base.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let want = rng.gen_range(20..120);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = Instant::now();
        let mut got = 0;
        while got < want {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "child too slow"
            );
            let Some(Ok(line)) = lines.next() else {
                panic!("child ended early: {:?}", child.wait());
            };
            if record(&line, &mut acked, &mut destroying, &mut destroyed) {
                got += 1;
            }
        }
        // Let the indexer get somewhere, then kill at a random moment.
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..200)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt as _;
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL");
        for line in lines.map_while(Result::ok) {
            record(&line, &mut acked, &mut destroying, &mut destroyed);
        }

        // Restart: drain what the child left.
        let store = MailStore::open(&dir.path().join("store")).unwrap();
        let index = SearchIndex::open(&dir.path().join("search")).unwrap();
        Indexer::new(store.clone(), index.clone()).drain().unwrap();
        let in_store: roaring::RoaringBitmap = store
            .kv()
            .read(|tx| tern_store::email::list_metas(tx, account, None, usize::MAX))
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let live = index.live(account).unwrap();
        assert_eq!(
            live, in_store,
            "iteration {iteration}: index documents = store emails"
        );
        for (&n, &id) in &acked {
            let hits: Vec<DocumentId> = index
                .search(
                    &store,
                    account,
                    &Query::Text(TextField::From, format!("sender{n}@example.com")),
                )
                .unwrap()
                .iter()
                .collect();
            let exists = in_store.contains(id);
            let expected = match outcome(id, &destroying, &destroyed) {
                Outcome::Live => {
                    assert!(exists, "iteration {iteration}: acknowledged {n} lost");
                    vec![id]
                }
                Outcome::Destroyed => {
                    assert!(!exists, "iteration {iteration}: destroyed {n} in store");
                    vec![]
                }
                // Killed while destroying it: the store says which.
                Outcome::InDoubt => {
                    in_doubt.insert(id, exists);
                    if exists { vec![id] } else { vec![] }
                }
            };
            assert_eq!(
                hits,
                expected,
                "iteration {iteration}: message {n} (in store: {exists}, live: {})",
                live.contains(id)
            );
        }
        // The incrementally built index equals a rebuild from the store.
        let rebuilt = SearchIndex::open(&dir.path().join(format!("rebuilt{iteration}"))).unwrap();
        reindex(&store, &rebuilt, Scope::Account(account), &mut |_| {}).unwrap();
        let mut terms = BTreeSet::new();
        for w in [
            "report",
            "number",
            "message",
            "code",
            "word",
            "alpha",
            "bravo",
            "hotel",
            "then",
            "example.com",
        ] {
            for f in [Field::Subject, Field::Body, Field::From] {
                terms.insert((f, w.to_string()));
            }
        }
        for n in acked.keys().take(50) {
            terms.insert((Field::From, format!("sender{n}@example.com")));
            terms.insert((Field::Body, n.to_string()));
        }
        assert_eq!(
            postings(&index, account, &terms, &live),
            postings(&rebuilt, account, &terms, &live),
            "iteration {iteration}"
        );
    }
    assert!(acked.len() >= 60);
    eprintln!(
        "{} acknowledged, {} destroyed; killed while destroying: {} committed, {} not",
        acked.len(),
        destroyed.len(),
        in_doubt.values().filter(|&&e| !e).count(),
        in_doubt.values().filter(|&&e| e).count()
    );
}

/// What the parent knows of an acknowledged email's fate.
enum Outcome {
    /// Not being destroyed: it must be in the store and found.
    Live,
    /// The child reported the destroy committed.
    Destroyed,
    /// The child was killed between `DESTROY` and `DEL`: the destroy may or
    /// may not have committed (a commit is durable before it returns).
    InDoubt,
}

fn outcome(
    id: DocumentId,
    destroying: &BTreeSet<DocumentId>,
    destroyed: &BTreeSet<DocumentId>,
) -> Outcome {
    if destroyed.contains(&id) {
        Outcome::Destroyed
    } else if destroying.contains(&id) {
        Outcome::InDoubt
    } else {
        Outcome::Live
    }
}

/// Records one line of the child's output; returns whether it was an `ACK`.
fn record(
    line: &str,
    acked: &mut BTreeMap<usize, DocumentId>,
    destroying: &mut BTreeSet<DocumentId>,
    destroyed: &mut BTreeSet<DocumentId>,
) -> bool {
    let parts: Vec<&str> = line.split_whitespace().collect();
    match parts.as_slice() {
        ["ACK", n, id] => {
            acked.insert(n.parse().unwrap(), id.parse().unwrap());
            true
        }
        ["DESTROY", _, id] => {
            destroying.insert(id.parse().unwrap());
            false
        }
        ["DEL", _, id] => {
            destroyed.insert(id.parse().unwrap());
            false
        }
        _ => false,
    }
}
