//! Durable delivery: `MailStore::deliver` of realistic 10 KB messages
//! (trace and DKIM headers, text body, a unique subject and Message-ID
//! each) from 16 threads at once.
//!
//! Configurations: (a) each thread delivers to its own account; (b) all 16
//! threads deliver to one account (every delivery to an account reads and
//! bumps its change counter, so these serialise); and, as a baseline, one
//! thread to one account. A delivery's latency is the `deliver` call
//! (parse, blob, metadata, indexes, commit): it returns once the commit is
//! durable. The messages are generated before the clock starts, so the
//! figures are the store's alone.
//!
//! The three run one after the other in each of `TERN_BENCH_ROUNDS` rounds
//! (default 3), so that a slow spell of the shared disk does not fall on
//! one of them only; each round starts from a fresh, empty store (which
//! also keeps the disk space used to one round's worth).
//!
//! Issue 2's goal: at least 5,000 messages/s durable.
//!
//! `TERN_BENCH_MESSAGES` sets the messages per 16-thread configuration per
//! round (default 20,000), `TERN_BENCH_DIR` the parent directory of the
//! database, `TERN_BENCH_BLOB_MIN` the backend's value-separation threshold
//! in bytes (default: the store's own, 4096; `0` turns separation off, for
//! comparison).

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Load, Probe, Rng, Summary, bench_dir, env_or, heading, message, ms};
use tern_store::kv::RocksOptions;
use tern_store::{AccountId, MailStore, Recipient, account};

// The allocator `tern serve` runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const THREADS: usize = 16;

struct Outcome {
    name: &'static str,
    threads: usize,
    delivered: usize,
    failed: usize,
    elapsed: Duration,
    latency: Summary,
    samples: Vec<Duration>,
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
            "{:<28} {}; {:.3} disk flushes and {:.0} us of this process's CPU per message",
            "",
            self.load,
            self.load.flushes as f64 / self.delivered.max(1) as f64,
            self.cpu_per_message() * 1e6
        );
    }

    /// Seconds of CPU this process used per delivered message (all its
    /// threads: callers, commit leader, RocksDB's flushes and compactions).
    fn cpu_per_message(&self) -> f64 {
        self.load.own_cores * self.elapsed.as_secs_f64() / self.delivered.max(1) as f64
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
                let messages: Vec<Vec<u8>> = (0..per_thread as u64)
                    .map(|seq| message(&mut rng, &address, stream, seq))
                    .collect();
                let mut samples = Vec::with_capacity(per_thread);
                let mut failed = 0;
                barrier.wait();
                for raw in &messages {
                    let started = Instant::now();
                    let outcome = store.deliver(raw, &recipients);
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
    // Every thread has generated its messages when the barrier opens.
    barrier.wait();
    let probe = Probe::start(dir);
    let start = Instant::now();
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
        latency: Summary::of(samples.clone()),
        samples,
        load,
    }
}

/// A fresh store in a new directory with a domain and `THREADS` accounts.
fn fresh_store() -> (tempfile::TempDir, MailStore, Vec<(AccountId, String)>) {
    let dir = bench_dir("deliver");
    let mut options = RocksOptions::default();
    if let Ok(min) = std::env::var("TERN_BENCH_BLOB_MIN") {
        let min: u64 = min.parse().expect("TERN_BENCH_BLOB_MIN is a number");
        options.blob_min_bytes = (min > 0).then_some(min);
    }
    let store = MailStore::open_with(dir.path(), options).expect("open the store");
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
    // A short warm-up so the WAL and memtable exist.
    let warm = run("warm-up", &store, dir.path(), &accounts, 4, 50, 1000);
    println!("(warm-up: {:.0} messages/s)", warm.per_sec());
    (dir, store, accounts)
}

fn main() {
    heading("deliver: MailStore::deliver of 10 KB messages");
    let total: usize = env_or("TERN_BENCH_MESSAGES", 20_000);
    let per_thread = total / THREADS;
    println!(
        "{} messages of {} bytes per 16-thread configuration ({per_thread} per thread); \
         each round on a fresh store",
        per_thread * THREADS,
        common::MESSAGE_SIZE
    );

    let rounds: usize = env_or("TERN_BENCH_ROUNDS", 3);
    let mut own = Vec::new();
    let mut shared = Vec::new();
    let mut single = Vec::new();
    for round in 0..rounds as u64 {
        println!("round {}:", round + 1);
        let (dir, store, accounts) = fresh_store();
        let o = run(
            "(a) 16 threads, own account",
            &store,
            dir.path(),
            &accounts,
            THREADS,
            per_thread,
            10_000 * round,
        );
        o.print();
        own.push(o);
        let o = run(
            "(b) 16 threads, one account",
            &store,
            dir.path(),
            &accounts[..1],
            THREADS,
            per_thread,
            10_000 * round + 100,
        );
        o.print();
        shared.push(o);
        let o = run(
            "1 thread, one account",
            &store,
            dir.path(),
            &accounts[1..2],
            1,
            2_000,
            10_000 * round + 200,
        );
        o.print();
        single.push(o);
        println!(
            "  database size after the round: {:.0} MB",
            common::dir_size(dir.path()) as f64 / 1e6
        );
    }

    println!();
    println!("summary over {rounds} rounds (goal: >= 5,000 messages/s durable):");
    for (name, runs) in [
        ("(a) 16 threads, own account", &own),
        ("(b) 16 threads, one account", &shared),
        ("1 thread, one account", &single),
    ] {
        let delivered: usize = runs.iter().map(|o| o.delivered).sum();
        let failed: usize = runs.iter().map(|o| o.failed).sum();
        let secs: f64 = runs.iter().map(|o| o.elapsed.as_secs_f64()).sum();
        let all = Summary::of(runs.iter().flat_map(|o| o.samples.clone()).collect());
        let rates: Vec<String> = runs.iter().map(|o| format!("{:.0}", o.per_sec())).collect();
        let cpu: f64 = runs
            .iter()
            .map(|o| o.cpu_per_message() * o.delivered as f64)
            .sum::<f64>()
            / delivered.max(1) as f64;
        let others: f64 = runs
            .iter()
            .map(|o| (o.load.busy_cores - o.load.own_cores).max(0.0))
            .sum::<f64>()
            / runs.len() as f64;
        println!(
            "  {name:<28} {:>7.0} messages/s (rounds: {}), median {}, p99 {}, p99.9 {}, max {}; \
             {delivered} delivered, {failed} failed; {:.0} us CPU per message; \
             other processes used {others:.2} cores",
            delivered as f64 / secs,
            rates.join(", "),
            ms(all.median),
            ms(all.p99),
            ms(all.p999),
            ms(all.max),
            cpu * 1e6
        );
    }
}
