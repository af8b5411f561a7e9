//! Raw key-value commits on the RocksDB backend, against the disk's own
//! fsync latency.
//!
//! Each commit is one `Kv::transact` writing a 100-byte value under a key
//! no other commit uses, so nothing conflicts: the figures are the
//! resolver, the group commit and the WAL fsync. Configurations: 1, 8 and
//! 64 writer threads, and, on the same directory, one thread appending 100
//! bytes to a file and calling `fdatasync` (`File::sync_data`) in a loop —
//! the floor a durable commit cannot beat.
//!
//! Issue 2's goals: one writer within 1.2x of the fdatasync latency; 64
//! writers at least 10x the commits/s of one.
//!
//! `TERN_BENCH_SECS` sets the seconds per configuration (default 10),
//! `TERN_BENCH_DIR` the parent directory of the database.

mod common;

use std::io::Write;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use common::{Load, Probe, Summary, bench_dir, env_or, heading, ms};
use tern_store::kv::{Kv, RocksOptions};

const VALUE_BYTES: usize = 100;

struct Outcome {
    name: String,
    threads: usize,
    commits: usize,
    elapsed: Duration,
    latency: Summary,
    load: Load,
}

impl Outcome {
    fn per_sec(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }

    fn print(&self) {
        println!(
            "{:<24} threads={:<3} {:>9.0} commits/s  median {}  p99 {}  ({}; {} in {:.1} s)",
            self.name,
            self.threads,
            self.per_sec(),
            ms(self.latency.median),
            ms(self.latency.p99),
            self.latency,
            self.commits,
            self.elapsed.as_secs_f64()
        );
        println!(
            "{:<24} {}; {:.2} disk flushes per commit",
            "",
            self.load,
            self.load.flushes as f64 / self.commits as f64
        );
    }
}

/// One thread: write 100 bytes at the end of a file, `fdatasync`, repeat.
fn fdatasync_loop(dir: &std::path::Path, secs: Duration) -> Outcome {
    let path = dir.join("fdatasync.bench");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the fdatasync file");
    let record = [0x5au8; VALUE_BYTES];
    // Warm up: create the file's first blocks.
    for _ in 0..50 {
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let probe = Probe::start(dir);
    let start = Instant::now();
    let deadline = start + secs;
    let mut samples = Vec::new();
    while Instant::now() < deadline {
        let t = Instant::now();
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
        samples.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    let load = probe.report();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Outcome {
        name: "write+fdatasync (file)".into(),
        threads: 1,
        commits: samples.len(),
        elapsed,
        latency: Summary::of(samples),
        load,
    }
}

/// `threads` writers, each committing one new key per transaction until
/// the deadline.
fn kv_commits(kv: &Kv, dir: &std::path::Path, threads: usize, secs: Duration) -> Outcome {
    let barrier = Arc::new(Barrier::new(threads + 1));
    // Set before the barrier releases the writers, read after it.
    let deadline_cell: Arc<OnceLock<Instant>> = Arc::default();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let kv = kv.clone();
            let barrier = barrier.clone();
            let deadline = deadline_cell.clone();
            std::thread::spawn(move || {
                let mut value = [0u8; VALUE_BYTES];
                for (i, b) in value.iter_mut().enumerate() {
                    *b = (i * 31 + t) as u8;
                }
                let mut samples = Vec::with_capacity(1 << 16);
                barrier.wait();
                let deadline = *deadline.get().expect("deadline set before the barrier");
                let mut seq: u64 = 0;
                while Instant::now() < deadline {
                    let key = format!("bench/commit/{threads:03}/{t:03}/{seq:012}");
                    value[..8].copy_from_slice(&seq.to_le_bytes());
                    let started = Instant::now();
                    kv.transact(|tx| tx.set(key.as_bytes(), &value))
                        .expect("commit");
                    samples.push(started.elapsed());
                    seq += 1;
                }
                samples
            })
        })
        .collect();
    let probe = Probe::start(dir);
    let start = Instant::now();
    deadline_cell.set(start + secs).expect("deadline set once");
    barrier.wait();
    let samples: Vec<Duration> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("writer thread"))
        .collect();
    let elapsed = start.elapsed();
    let load = probe.report();
    Outcome {
        name: "Kv::transact (RocksDB)".into(),
        threads,
        commits: samples.len(),
        elapsed,
        latency: Summary::of(samples),
        load,
    }
}

fn main() {
    heading("commit: raw KV commits vs write+fdatasync");
    let secs = Duration::from_secs(env_or("TERN_BENCH_SECS", 10));
    let dir = bench_dir("commit");
    println!(
        "{} s per configuration; each commit writes one {VALUE_BYTES}-byte value under a new key",
        secs.as_secs()
    );

    let fsync = fdatasync_loop(dir.path(), secs);
    fsync.print();

    let kv = Kv::open_rocksdb(&dir.path().join("db"), RocksOptions::default()).expect("open");
    // Warm up: the WAL file and the memtable exist before measuring.
    for i in 0..200u32 {
        kv.transact(|tx| tx.set(format!("bench/warmup/{i}").as_bytes(), &[0u8; VALUE_BYTES]))
            .expect("warm-up commit");
    }
    let mut outcomes = Vec::new();
    for threads in [1, 8, 64] {
        let o = kv_commits(&kv, dir.path(), threads, secs);
        o.print();
        outcomes.push(o);
    }
    drop(kv);

    // The fdatasync loop again, after the commits: the disk may have
    // changed speed meanwhile (other tenants, write-back).
    let fsync_after = fdatasync_loop(dir.path(), secs);
    fsync_after.print();

    let one = &outcomes[0];
    let many = &outcomes[2];
    let floor = fsync.latency.median.min(fsync_after.latency.median);
    println!();
    println!("summary:");
    println!(
        "  1 writer median {} vs fdatasync median {} (best of before/after): {:.2}x (goal <= 1.2x)",
        ms(one.latency.median),
        ms(floor),
        one.latency.median.as_secs_f64() / floor.as_secs_f64()
    );
    println!(
        "  1 writer p99 {} vs fdatasync p99 {} / {} (before/after)",
        ms(one.latency.p99),
        ms(fsync.latency.p99),
        ms(fsync_after.latency.p99)
    );
    println!(
        "  64 writers {:.0} commits/s vs 1 writer {:.0} commits/s: {:.1}x (goal >= 10x)",
        many.per_sec(),
        one.per_sec(),
        many.per_sec() / one.per_sec()
    );
    println!(
        "  8 writers {:.0} commits/s: {:.1}x one writer",
        outcomes[1].per_sec(),
        outcomes[1].per_sec() / one.per_sec()
    );
}
