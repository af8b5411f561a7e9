//! "The newest 50 unread in the Inbox, with their header fields" at 10,000
//! and at 1,000,000 emails in one account.
//!
//! The query is what a client's first screen asks for:
//! `email::list_by_date(MailboxUnseen(inbox), newest first, 50)` and then
//! `email::get` of each of the 50 (the `EmailMeta`: subject, addresses,
//! dates, preview), all in one read transaction.
//!
//! Delivering a million messages one by one would take hours, so a loader
//! builds the account with the store's own public functions in large
//! transactions: one `Writer` and 500 `email::insert`s per transaction.
//! Each email is a 10 KB message of its own (one of a few generated
//! templates given a unique Message-ID and subject in its raw header and
//! its parsed envelope) stored as its own blob (`blob::put_in_tx`), so the
//! database holds the bodies too, as after real deliveries; about half are
//! inserted `$seen`. Arrival times are 30 s apart, in order. Every index,
//! counter, thread, blob reference and change record is written exactly as
//! in a delivery. (`TERN_BENCH_SHARED_BLOB=1` makes every email reference
//! one blob instead: a smaller, faster database without the bodies.)
//!
//! Each size is measured twice: right after loading (recent writes still in
//! the memtable, the compactions the load left behind running on one of
//! the two cores) and after reopening the store and waiting until those
//! compactions are done (everything in table files, block cache cold
//! before the warm-up).
//!
//! Issue 2's goal: p99 < 1 ms, and at most 1.5x growth from 10k to 1M.
//!
//! `TERN_BENCH_SIZES` (default `10000,1000000`) and `TERN_BENCH_QUERIES`
//! (default 10,000) change the workload; `TERN_BENCH_DIR` the parent
//! directory of the databases. With `TERN_BENCH_KEEP=1` each size's
//! database is kept in `$TERN_BENCH_DIR/listing-SIZE-KIND` and reused by the
//! next run (which then measures it after reopening only).

mod common;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Probe, Rng, Summary, bench_dir, env_or, heading, message, ms};
use tern_store::email::{self, Listing};
use tern_store::parse::{self, ParsedMessage};
use tern_store::{AccountId, BlobHash, DocumentId, MailStore, Writer, account, blob, mailbox};

const PER_TRANSACTION: u64 = 500;
const TEMPLATES: usize = 8;
const PAGE: usize = 50;
const FIRST_ARRIVAL: i64 = 1_600_000_000;
const ADDRESS: &str = "reader@example.com";
/// Written into a kept database's directory once it is fully loaded.
const MARKER: &str = "tern-bench-loaded";

struct Template {
    raw: Vec<u8>,
    parsed: ParsedMessage,
}

struct Fixture {
    account: AccountId,
    inbox: DocumentId,
    templates: Vec<Template>,
    /// The one blob every email references, with `TERN_BENCH_SHARED_BLOB`.
    shared_blob: Option<BlobHash>,
    rng: Rng,
    loaded: u64,
}

fn open(path: &Path) -> MailStore {
    MailStore::open(path).expect("open the store")
}

fn templates() -> Vec<Template> {
    let mut rng = Rng::new(42);
    (0..TEMPLATES as u64)
        .map(|i| {
            let raw = message(&mut rng, ADDRESS, 9, i);
            let parsed = parse::parse_message(&raw).expect("parse a template");
            Template { raw, parsed }
        })
        .collect()
}

fn ids(store: &MailStore) -> Option<(AccountId, DocumentId)> {
    store
        .kv()
        .read(|tx| -> tern_store::Result<_> {
            let Some(account) = account::lookup_login(tx, ADDRESS)? else {
                return Ok(None);
            };
            Ok(mailbox::by_role(tx, account, "inbox")?.map(|inbox| (account, inbox)))
        })
        .expect("read the account")
}

fn setup(store: &MailStore, shared: bool) -> Fixture {
    store.add_domain("example.com").expect("add the domain");
    store
        .kv()
        .transact(|tx| account::create_account(tx, ADDRESS, "!", u64::MAX >> 2))
        .expect("create the account");
    let (account, inbox) = ids(store).expect("an account with an inbox");
    let templates = templates();
    let shared_blob = shared.then(|| {
        store
            .kv()
            .transact(|tx| blob::put_in_tx(tx, &templates[0].raw))
            .expect("store the shared blob")
    });
    Fixture {
        account,
        inbox,
        templates,
        shared_blob,
        rng: Rng::new(7),
        loaded: 0,
    }
}

/// `raw` with the value of header field `name` replaced by `value`.
fn replace_header(raw: &[u8], name: &str, value: &str) -> Vec<u8> {
    let needle = format!("\r\n{name}: ");
    let text = std::str::from_utf8(raw).expect("templates are UTF-8");
    let at = text.find(&needle).expect("the template has the field") + needle.len();
    let end = at + text[at..].find("\r\n").expect("the field ends");
    let mut out = Vec::with_capacity(raw.len() + value.len());
    out.extend_from_slice(&raw[..at]);
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(&raw[end..]);
    out
}

/// Template `i % TEMPLATES` with its own Message-ID and subject, in the
/// raw header and in the parsed envelope and header fields.
fn nth_message(f: &Fixture, i: u64) -> (Vec<u8>, ParsedMessage) {
    let t = &f.templates[i as usize % TEMPLATES];
    let mut p = t.parsed.clone();
    let message_id = format!("{i}.load@example.org");
    let subject = format!("Loaded message number {i}");
    p.envelope.message_id = vec![message_id.clone()];
    p.envelope.subject = Some(subject.clone());
    p.envelope.base_subject = subject.clone();
    for h in &mut p.detail.headers {
        if h.name.eq_ignore_ascii_case("message-id") {
            h.value = format!(" <{message_id}>");
        } else if h.name.eq_ignore_ascii_case("subject") {
            h.value = format!(" {subject}");
        }
    }
    let raw = if f.shared_blob.is_some() {
        Vec::new()
    } else {
        let raw = replace_header(&t.raw, "Message-ID", &format!("<{message_id}>"));
        replace_header(&raw, "Subject", &subject)
    };
    (raw, p)
}

/// Loads emails until the account holds `target`; returns emails/s.
fn load(store: &MailStore, f: &mut Fixture, target: u64) -> f64 {
    let kv = store.kv();
    let start = Instant::now();
    let from = f.loaded;
    let mut last_print = Instant::now();
    while f.loaded < target {
        let first = f.loaded;
        let n = PER_TRANSACTION.min(target - first);
        // Decide $seen outside the closure so a retry writes the same.
        let seen: Vec<bool> = (0..n).map(|_| f.rng.below(2) == 0).collect();
        let messages: Vec<(Vec<u8>, ParsedMessage)> =
            (first..first + n).map(|i| nth_message(f, i)).collect();
        kv.transact(|tx| -> tern_store::Result<()> {
            let mut blobs = Vec::with_capacity(messages.len());
            for (raw, parsed) in &messages {
                let hash = match f.shared_blob {
                    Some(h) => h,
                    None => blob::put_in_tx(tx, raw)?,
                };
                let size = if raw.is_empty() {
                    f.templates[0].raw.len()
                } else {
                    raw.len()
                };
                blobs.push((hash, size as u64, parsed));
            }
            let mut w = Writer::begin(tx, f.account)?;
            for (k, (hash, size, parsed)) in blobs.into_iter().enumerate() {
                let i = first + k as u64;
                let keywords = if seen[k] {
                    vec![email::SEEN.to_string()]
                } else {
                    Vec::new()
                };
                email::insert(
                    &mut w,
                    email::NewEmail {
                        blob: hash,
                        size,
                        received_at: FIRST_ARRIVAL + 30 * i as i64,
                        mailbox_ids: vec![f.inbox],
                        keywords,
                        parsed,
                    },
                )?;
            }
            w.finish()?;
            Ok(())
        })
        .expect("load a batch");
        f.loaded += n;
        if last_print.elapsed() > Duration::from_secs(30) {
            last_print = Instant::now();
            let done = f.loaded - from;
            println!(
                "  loaded {} emails ({:.0} emails/s, {:.0} s)",
                f.loaded,
                done as f64 / start.elapsed().as_secs_f64(),
                start.elapsed().as_secs_f64()
            );
        }
    }
    (f.loaded - from) as f64 / start.elapsed().as_secs_f64()
}

/// One query: the newest `PAGE` unseen emails of the inbox with their
/// metadata. Returns how many were read.
fn query(store: &MailStore, f: &Fixture, check: bool) -> usize {
    store
        .kv()
        .read(|tx| -> tern_store::Result<usize> {
            let page = email::list_by_date(
                tx,
                f.account,
                Listing::MailboxUnseen(f.inbox),
                true,
                None,
                PAGE,
            )?;
            let mut read = 0;
            for (received, id) in page {
                let meta = email::get(tx, f.account, id)?.expect("listed email exists");
                if check {
                    assert!(!meta.has_keyword(email::SEEN), "listed email is unseen");
                    assert_eq!(meta.received_at, received);
                    assert!(meta.envelope.subject.is_some() && !meta.envelope.from.is_empty());
                }
                black_box(&meta);
                read += 1;
            }
            Ok(read)
        })
        .expect("query")
}

fn measure(store: &MailStore, f: &Fixture, dir: &std::path::Path, label: &str) -> Summary {
    let iterations: usize = env_or("TERN_BENCH_QUERIES", 10_000);
    let expected = PAGE.min(f.loaded as usize);
    for _ in 0..500 {
        assert_eq!(query(store, f, true), expected);
    }
    let probe = Probe::start(dir);
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let n = query(store, f, false);
        samples.push(t.elapsed());
        assert_eq!(n, expected);
    }
    let load = probe.report();
    let s = Summary::of(samples);
    println!(
        "  {:>9} emails, {label:<13} median {}  p99 {}  ({s})",
        f.loaded,
        ms(s.median),
        ms(s.p99)
    );
    println!("  {:>9}         {:<13} {load}", "", "");
    s
}

/// Where one size's database lives: kept (and maybe already loaded) or
/// temporary.
enum Place {
    Kept(PathBuf),
    Temporary(tempfile::TempDir),
}

impl Place {
    fn path(&self) -> &Path {
        match self {
            Place::Kept(p) => p,
            Place::Temporary(t) => t.path(),
        }
    }
}

fn main() {
    heading("listing: newest 50 unread in Inbox with header fields");
    let sizes: Vec<u64> = std::env::var("TERN_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("TERN_BENCH_SIZES: numbers"))
        .collect();
    let shared = env_or("TERN_BENCH_SHARED_BLOB", 0) == 1;
    let keep = env_or("TERN_BENCH_KEEP", 0) == 1;
    let kind = if shared { "shared-blob" } else { "own-blobs" };
    println!(
        "{PER_TRANSACTION} emails per loader transaction, {TEMPLATES} templates of {} bytes, {}",
        common::MESSAGE_SIZE,
        if shared {
            "one blob shared by every email"
        } else {
            "one blob per email"
        }
    );
    let mut results: Vec<(u64, Option<f64>, Option<Summary>, Summary)> = Vec::new();
    for &size in &sizes {
        let place = if keep {
            let base = std::env::var_os("TERN_BENCH_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
            let path = base.join(format!("listing-{size}-{kind}"));
            println!("kept database: {}", path.display());
            Place::Kept(path)
        } else {
            Place::Temporary(bench_dir(&format!("listing-{size}")))
        };
        let dir = place.path();
        let db_dir = dir.join("store");
        let marker = dir.join(MARKER);
        let reuse =
            keep && std::fs::read_to_string(&marker).ok().as_deref() == Some(&size.to_string());
        let (mut f, rate, loaded) = if reuse {
            println!("{size} emails: reusing the database loaded by an earlier run");
            let store = open(&db_dir);
            let (account, inbox) = ids(&store).expect("the kept database has the account");
            let f = Fixture {
                account,
                inbox,
                templates: Vec::new(),
                shared_blob: None,
                rng: Rng::new(7),
                loaded: size,
            };
            (f, None, None)
        } else {
            if keep {
                let _ = std::fs::remove_dir_all(dir);
                std::fs::create_dir_all(dir).expect("create the kept directory");
            }
            let store = open(&db_dir);
            let mut f = setup(&store, shared);
            println!("loading {size} emails ...");
            let probe = Probe::start(dir);
            let rate = load(&store, &mut f, size);
            println!("  loading: {rate:.0} emails/s; {}", probe.report());
            let loaded = measure(&store, &f, dir, "as loaded");
            drop(store);
            if keep {
                std::fs::write(&marker, size.to_string()).expect("write the marker");
            }
            (f, Some(rate), Some(loaded))
        };
        // Reopened: the memtable is flushed, caches start cold.
        let t = Instant::now();
        let store = open(&db_dir);
        println!(
            "  reopened in {:.1} s; database {:.0} MB on disk",
            t.elapsed().as_secs_f64(),
            common::dir_size(&db_dir) as f64 / 1e6
        );
        f.loaded = size;
        // Measure the database at rest: the compactions the load left
        // behind are done (they would otherwise take a core of this 2-core
        // machine away from the queries).
        let waited = common::wait_until_idle(Duration::from_secs(1800));
        println!(
            "  waited {:.0} s for background compactions to finish",
            waited.as_secs_f64()
        );
        let reopened = measure(&store, &f, dir, "after reopen");
        results.push((size, rate, loaded, reopened));
    }

    println!();
    println!("summary (goal: p99 < 1 ms; growth 1M/10k <= 1.5x):");
    for (size, rate, loaded, reopened) in &results {
        let as_loaded = loaded.map_or("(reused)".to_string(), |l| {
            format!("median {} p99 {}", ms(l.median), ms(l.p99))
        });
        println!(
            "  {size:>9} emails: as loaded {as_loaded}; after reopen median {} p99 {} p99.9 {}{}",
            ms(reopened.median),
            ms(reopened.p99),
            ms(reopened.p999),
            rate.map_or(String::new(), |r| format!("; loaded at {r:.0} emails/s"))
        );
    }
    if let (Some(small), Some(big)) = (results.first(), results.last())
        && results.len() > 1
    {
        let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
        if let (Some(a), Some(b)) = (small.2, big.2) {
            println!(
                "  growth {}/{} as loaded: median {:.2}x p99 {:.2}x",
                big.0,
                small.0,
                ratio(a.median, b.median),
                ratio(a.p99, b.p99)
            );
        }
        println!(
            "  growth {}/{} after reopen: median {:.2}x p99 {:.2}x",
            big.0,
            small.0,
            ratio(small.3.median, big.3.median),
            ratio(small.3.p99, big.3.p99)
        );
    }
}
