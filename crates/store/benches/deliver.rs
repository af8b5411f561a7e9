//! Durable delivery: `MailStore::deliver` of realistic 10 KB messages
//! (trace and DKIM headers, text body, a unique subject and Message-ID
//! each) from 16 threads at once.
//!
//! Configurations: (a) each thread delivers to its own account; (b) all 16
//! threads deliver to one account (every delivery to an account reads and
//! bumps its change counter, so these serialise); and, as a baseline, one
//! thread to one account. A delivery's latency is the `deliver` call: it
//! returns once the commit is durable.
//!
//! Issue 2's goal: at least 5,000 messages/s durable.
//!
//! `TERN_BENCH_MESSAGES` sets the messages per 16-thread configuration
//! (default 20,000), `TERN_BENCH_DIR` the parent directory of the database.

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Load, Probe, Rng, Summary, bench_dir, env_or, heading, message, ms};
use tern_store::{AccountId, MailStore, Recipient, account};

const THREADS: usize = 16;

struct Outcome {
    name: &'static str,
    threads: usize,
    delivered: usize,
    failed: usize,
    elapsed: Duration,
    latency: Summary,
    load: Load,
}

impl Outcome {
    fn per_sec(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        println!(
            "{:<28} threads={:<2} {:>7.0} messages/s  median {}  p99 {}  ({}; {} delivered, {} failed, {:.1} s)",
            self.name,
            self.threads,
            self.per_sec(),
            ms(self.latency.median),
            ms(self.latency.p99),
            self.latency,
            self.delivered,
            self.failed,
            self.elapsed.as_secs_f64()
        );
        println!(
            "{:<28} {}; {:.3} disk flushes per message",
            "",
            self.load,
            self.load.flushes as f64 / self.delivered.max(1) as f64
        );
    }
}

/// `threads` threads each deliver `per_thread` messages; thread `t` to
/// `targets[t % targets.len()]`.
fn run(
    name: &'static str,
    store: &MailStore,
    dir: &std::path::Path,
    targets: &[(AccountId, String)],
    threads: usize,
    per_thread: usize,
    stream_base: u64,
) -> Outcome {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            let barrier = barrier.clone();
            let (account, address) = targets[t % targets.len()].clone();
            let stream = stream_base + t as u64;
            std::thread::spawn(move || {
                let mut rng = Rng::new(stream);
                let recipients = [Recipient::inbox(account)];
                let mut samples = Vec::with_capacity(per_thread);
                let mut failed = 0;
                barrier.wait();
                for seq in 0..per_thread as u64 {
                    let raw = message(&mut rng, &address, stream, seq);
                    let started = Instant::now();
                    let outcome = store.deliver(&raw, &recipients);
                    let took = started.elapsed();
                    match outcome {
                        Ok(slots) if slots.iter().all(Result::is_ok) => samples.push(took),
                        Ok(slots) => {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("delivery refused: {:?}", slots[0]);
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            if failed <= 3 {
                                eprintln!("delivery failed: {e}");
                            }
                        }
                    }
                }
                (samples, failed)
            })
        })
        .collect();
    let probe = Probe::start(dir);
    let start = Instant::now();
    barrier.wait();
    let mut samples = Vec::new();
    let mut failed = 0;
    for h in handles {
        let (s, f) = h.join().expect("delivery thread");
        samples.extend(s);
        failed += f;
    }
    let elapsed = start.elapsed();
    let load = probe.report();
    Outcome {
        name,
        threads,
        delivered: samples.len(),
        failed,
        elapsed,
        latency: Summary::of(samples),
        load,
    }
}

fn main() {
    heading("deliver: MailStore::deliver of 10 KB messages");
    let total: usize = env_or("TERN_BENCH_MESSAGES", 20_000);
    let per_thread = total / THREADS;
    let dir = bench_dir("deliver");
    let store = MailStore::open(dir.path()).expect("open the store");
    store.add_domain("example.com").expect("add the domain");
    // Accounts are created directly (no argon2 hashing: nobody logs in).
    let accounts: Vec<(AccountId, String)> = (0..THREADS)
        .map(|i| {
            let address = format!("user{i}@example.com");
            let id = store
                .kv()
                .transact(|tx| account::create_account(tx, &address, "!", account::DEFAULT_QUOTA))
                .expect("create an account");
            (id, address)
        })
        .collect();
    println!(
        "{} messages of {} bytes per 16-thread configuration ({per_thread} per thread)",
        per_thread * THREADS,
        common::MESSAGE_SIZE
    );

    // A short warm-up so the WAL and memtable exist.
    let warm = run("warm-up", &store, dir.path(), &accounts, 4, 50, 1000);
    println!("(warm-up: {:.0} messages/s)", warm.per_sec());

    let own = run(
        "(a) 16 threads, own account",
        &store,
        dir.path(),
        &accounts,
        THREADS,
        per_thread,
        0,
    );
    own.print();
    let shared = run(
        "(b) 16 threads, one account",
        &store,
        dir.path(),
        &accounts[..1],
        THREADS,
        per_thread,
        100,
    );
    shared.print();
    let single = run(
        "1 thread, one account",
        &store,
        dir.path(),
        &accounts[1..2],
        1,
        2_000,
        200,
    );
    single.print();

    println!();
    println!("summary (goal: >= 5,000 messages/s durable):");
    for o in [&own, &shared, &single] {
        println!(
            "  {:<28} {:>7.0} messages/s, median {}, p99 {}",
            o.name,
            o.per_sec(),
            ms(o.latency.median),
            ms(o.latency.p99)
        );
    }
    println!(
        "database size after the run: {:.0} MB",
        common::dir_size(dir.path()) as f64 / 1e6
    );
}
