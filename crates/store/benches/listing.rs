//! "The newest 50 unread in the Inbox, with their header fields" at 10,000
//! and at 1,000,000 emails in one account.
//!
//! The query is what a client's first screen asks for:
//! `email::list_by_date(MailboxUnseen(inbox), newest first, 50)` and then
//! `email::get` of each of the 50 (the `EmailMeta`: subject, addresses,
//! dates, preview), all in one read transaction.
//!
//! Delivering a million messages one by one would take long, so a loader
//! builds the account with the store's own public functions in large
//! transactions: one `Writer` and 500 `email::insert`s per transaction, all
//! referencing one shared blob, from a few parsed 10 KB templates given a
//! unique Message-ID and subject each; about half are inserted `$seen`.
//! Arrival times are 30 s apart, in order. Every index, counter, thread and
//! change record is written exactly as in a delivery.
//!
//! Each size is measured twice: right after loading (recent writes still in
//! the memtable, compactions possibly running) and after reopening the
//! store (everything flushed to table files, block cache cold before the
//! warm-up).
//!
//! Issue 2's goal: p99 < 1 ms, and at most 1.5x growth from 10k to 1M.
//!
//! `TERN_BENCH_SIZES` (default `10000,1000000`) and `TERN_BENCH_QUERIES`
//! (default 10,000) change the workload; `TERN_BENCH_DIR` the parent
//! directory of the database.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::{Probe, Rng, Summary, bench_dir, env_or, heading, message, ms};
use tern_store::email::{self, Listing};
use tern_store::parse::{self, ParsedMessage};
use tern_store::{AccountId, BlobHash, DocumentId, MailStore, Writer, account, blob, mailbox};

const PER_TRANSACTION: u64 = 500;
const TEMPLATES: usize = 8;
const PAGE: usize = 50;
const FIRST_ARRIVAL: i64 = 1_600_000_000;

struct Fixture {
    account: AccountId,
    inbox: DocumentId,
    blob: BlobHash,
    size: u64,
    templates: Vec<ParsedMessage>,
    rng: Rng,
    loaded: u64,
}

fn open(path: &std::path::Path) -> MailStore {
    MailStore::open(path).expect("open the store")
}

fn setup(store: &MailStore) -> Fixture {
    store.add_domain("example.com").expect("add the domain");
    let address = "reader@example.com";
    let account = store
        .kv()
        .transact(|tx| account::create_account(tx, address, "!", u64::MAX >> 2))
        .expect("create the account");
    let inbox = store
        .kv()
        .read(|tx| mailbox::by_role(tx, account, "inbox"))
        .expect("read mailboxes")
        .expect("an inbox");
    let mut rng = Rng::new(42);
    let raws: Vec<Vec<u8>> = (0..TEMPLATES as u64)
        .map(|i| message(&mut rng, address, 9, i))
        .collect();
    let templates = raws
        .iter()
        .map(|raw| parse::parse_message(raw).expect("parse a template"))
        .collect();
    let blob = store
        .kv()
        .transact(|tx| blob::put_in_tx(tx, &raws[0]))
        .expect("store the shared blob");
    Fixture {
        account,
        inbox,
        blob,
        size: raws[0].len() as u64,
        templates,
        rng,
        loaded: 0,
    }
}

/// Template `i % TEMPLATES` with its own Message-ID and subject (in the
/// envelope and in the raw header fields).
fn nth_message(f: &Fixture, i: u64) -> ParsedMessage {
    let mut p = f.templates[i as usize % TEMPLATES].clone();
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
    p
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
        let messages: Vec<ParsedMessage> = (first..first + n).map(|i| nth_message(f, i)).collect();
        kv.transact(|tx| -> tern_store::Result<()> {
            let mut w = Writer::begin(tx, f.account)?;
            for (k, parsed) in messages.iter().enumerate() {
                let i = first + k as u64;
                let keywords = if seen[k] {
                    vec![email::SEEN.to_string()]
                } else {
                    Vec::new()
                };
                email::insert(
                    &mut w,
                    email::NewEmail {
                        blob: f.blob,
                        size: f.size,
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
        if last_print.elapsed() > Duration::from_secs(15) {
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

fn main() {
    heading("listing: newest 50 unread in Inbox with header fields");
    let sizes: Vec<u64> = std::env::var("TERN_BENCH_SIZES")
        .unwrap_or_else(|_| "10000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("TERN_BENCH_SIZES: numbers"))
        .collect();
    let dir = bench_dir("listing");
    let db_dir = dir.path().join("store");
    let mut store = open(&db_dir);
    let mut f = setup(&store);
    println!(
        "{PER_TRANSACTION} emails per loader transaction, {TEMPLATES} templates of {} bytes, one shared blob",
        f.size
    );
    let mut results: Vec<(u64, f64, Summary, Summary)> = Vec::new();
    for &size in &sizes {
        println!("loading to {size} emails ...");
        let probe = Probe::start(dir.path());
        let rate = load(&store, &mut f, size);
        println!("  loading: {rate:.0} emails/s; {}", probe.report());
        let loaded = measure(&store, &f, dir.path(), "as loaded");
        // Reopen: the memtable is flushed, caches start cold.
        drop(store);
        let t = Instant::now();
        store = open(&db_dir);
        println!(
            "  reopened in {:.1} s; database {:.0} MB on disk",
            t.elapsed().as_secs_f64(),
            common::dir_size(&db_dir) as f64 / 1e6
        );
        let reopened = measure(&store, &f, dir.path(), "after reopen");
        results.push((size, rate, loaded, reopened));
    }

    println!();
    println!("summary (goal: p99 < 1 ms; growth 1M/10k <= 1.5x):");
    for (size, rate, loaded, reopened) in &results {
        println!(
            "  {size:>9} emails: as loaded median {} p99 {}; after reopen median {} p99 {}; loaded at {rate:.0} emails/s",
            ms(loaded.median),
            ms(loaded.p99),
            ms(reopened.median),
            ms(reopened.p99)
        );
    }
    if let (Some(small), Some(big)) = (results.first(), results.last())
        && results.len() > 1
    {
        let ratio = |a: Duration, b: Duration| b.as_secs_f64() / a.as_secs_f64();
        println!(
            "  growth {}/{}: as loaded median {:.2}x p99 {:.2}x; after reopen median {:.2}x p99 {:.2}x",
            big.0,
            small.0,
            ratio(small.2.median, big.2.median),
            ratio(small.2.p99, big.2.p99),
            ratio(small.3.median, big.3.median),
            ratio(small.3.p99, big.3.p99)
        );
    }
}
