//! Raw key-value commits on the RocksDB backend, against the disk's own
//! fsync latency, in the same run and the same directory.
//!
//! Each commit is one `Kv::transact` writing a 100-byte value under a key
//! no other commit uses, so nothing conflicts: the figures are the
//! resolver, the group commit and the WAL fsync. Configurations: 1, 8 and
//! 64 writer threads, and one thread appending 100 bytes to a file in the
//! database's directory and calling `fdatasync` (`File::sync_data`) in a
//! loop — the floor a durable commit cannot beat.
//!
//! The disk of a shared machine changes speed from one second to the next
//! (other tenants, write-back), so the comparisons are made side by side.
//! For latency, one thread alternates the two, operation by operation: an
//! fdatasync append, then a one-writer commit, then an fdatasync append...
//! so both see the same disk at the same moments (this pair is the one-
//! writer goal). For throughput, each round runs 1, 8 and 64 writers for
//! the same time each, and the summary gives the figures over all rounds
//! and the ratio within each round. Each round also runs the fdatasync
//! loop alone, and a last configuration, one writer on a second database
//! opened *without* WAL sync, which is not durable and not a goal: it shows
//! what a commit costs apart from the fsync.
//!
//! Issue 2's goals: one writer within 1.2x of the fdatasync latency; 64
//! writers at least 10x the commits/s of one.
//!
//! `TERN_BENCH_ROUNDS` (default 5) and `TERN_BENCH_SECS` (seconds per
//! configuration per round, default 4) size the run; `TERN_BENCH_DIR`
//! chooses the parent directory of the database.

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use common::{Load, Probe, Summary, bench_dir, env_or, heading, ms};
use tern_store::kv::{Kv, RocksOptions};

const VALUE_BYTES: usize = 100;
const WRITERS: [usize; 3] = [1, 8, 64];

/// One configuration in one round.
struct Run {
    samples: Vec<Duration>,
    elapsed: Duration,
    load: Load,
}

impl Run {
    fn per_sec(&self) -> f64 {
        self.samples.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn median(&self) -> Duration {
        Summary::of(self.samples.clone()).median
    }

    fn print(&self, name: &str) {
        let s = Summary::of(self.samples.clone());
        println!(
            "  {name:<26} {:>8.0} commits/s  median {}  p99 {}  max {}  n={}",
            self.per_sec(),
            ms(s.median),
            ms(s.p99),
            ms(s.max),
            s.count
        );
        println!(
            "  {:<26} {}; {:.3} disk flushes per commit",
            "",
            self.load,
            self.load.flushes as f64 / s.count as f64
        );
    }
}

/// Every round of one configuration.
#[derive(Default)]
struct Series {
    runs: Vec<Run>,
}

impl Series {
    fn all(&self) -> Summary {
        Summary::of(self.runs.iter().flat_map(|r| r.samples.clone()).collect())
    }

    fn per_sec(&self) -> f64 {
        let n: usize = self.runs.iter().map(|r| r.samples.len()).sum();
        let t: f64 = self.runs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        n as f64 / t
    }

    fn others_cores(&self) -> (f64, f64) {
        let v = self
            .runs
            .iter()
            .map(|r| (r.load.busy_cores - r.load.own_cores).max(0.0));
        let max = v.clone().fold(0.0, f64::max);
        (v.sum::<f64>() / self.runs.len() as f64, max)
    }
}

/// One thread: write 100 bytes at the end of a file, `fdatasync`, repeat.
fn fdatasync_loop(dir: &Path, secs: Duration) -> Run {
    let path = dir.join("fdatasync.bench");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the fdatasync file");
    let record = [0x5au8; VALUE_BYTES];
    // Warm up: the file exists and has blocks.
    for _ in 0..50 {
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let probe = Probe::start(dir);
    let start = Instant::now();
    let deadline = start + secs;
    let mut samples = Vec::with_capacity(1 << 16);
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
    Run {
        samples,
        elapsed,
        load,
    }
}

/// One thread alternating an fdatasync append and a one-writer commit
/// until the deadline: (fdatasync run, commit run).
fn paired(kv: &Kv, dir: &Path, secs: Duration, tag: &str) -> (Run, Run) {
    let path = dir.join("fdatasync-paired.bench");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open the fdatasync file");
    let record = [0x5au8; VALUE_BYTES];
    let mut value = [7u8; VALUE_BYTES];
    for _ in 0..50 {
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
    }
    let probe = Probe::start(dir);
    let start = Instant::now();
    let deadline = start + secs;
    let (mut fsyncs, mut commits) = (Vec::with_capacity(1 << 15), Vec::with_capacity(1 << 15));
    let mut seq: u64 = 0;
    while Instant::now() < deadline {
        let t = Instant::now();
        file.write_all(&record).expect("write");
        file.sync_data().expect("fdatasync");
        fsyncs.push(t.elapsed());
        let key = format!("bench/commit/{tag}/{seq:012}");
        value[..8].copy_from_slice(&seq.to_le_bytes());
        let t = Instant::now();
        kv.transact(|tx| tx.set(key.as_bytes(), &value))
            .expect("commit");
        commits.push(t.elapsed());
        seq += 1;
    }
    let elapsed = start.elapsed();
    let load = probe.report();
    drop(file);
    let _ = std::fs::remove_file(&path);
    // Each side had about half of the time.
    let half = |samples: Vec<Duration>| {
        let busy: Duration = samples.iter().sum();
        Run {
            samples,
            elapsed: busy.min(elapsed),
            load: load.clone(),
        }
    };
    (half(fsyncs), half(commits))
}

/// `threads` writers, each committing one new key per transaction until
/// the deadline. `tag` keeps the keys of every run distinct.
fn kv_commits(kv: &Kv, dir: &Path, threads: usize, secs: Duration, tag: &str) -> Run {
    let barrier = Arc::new(Barrier::new(threads + 1));
    // Set before the barrier releases the writers, read after it.
    let deadline_cell: Arc<OnceLock<Instant>> = Arc::default();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let kv = kv.clone();
            let barrier = barrier.clone();
            let deadline = deadline_cell.clone();
            let tag = tag.to_string();
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
                    let key = format!("bench/commit/{tag}/{t:03}/{seq:012}");
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
    Run {
        samples,
        elapsed,
        load,
    }
}

fn warm_up(kv: &Kv) {
    // The WAL file and the memtable exist before measuring.
    for i in 0..200u32 {
        kv.transact(|tx| tx.set(format!("bench/warmup/{i}").as_bytes(), &[0u8; VALUE_BYTES]))
            .expect("warm-up commit");
    }
}

fn median_of(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    heading("commit: raw KV commits vs write+fdatasync");
    let rounds: usize = env_or("TERN_BENCH_ROUNDS", 5);
    let secs = Duration::from_secs_f64(env_or("TERN_BENCH_SECS", 4.0));
    let dir = bench_dir("commit");
    println!(
        "{rounds} rounds of {:.1} s per configuration; each commit writes one \
         {VALUE_BYTES}-byte value under a new key",
        secs.as_secs_f64()
    );

    let kv = Kv::open_rocksdb(&dir.path().join("db"), RocksOptions::default()).expect("open");
    let unsynced = Kv::open_rocksdb(
        &dir.path().join("db-nosync"),
        RocksOptions {
            sync: false,
            ..RocksOptions::default()
        },
    )
    .expect("open");
    warm_up(&kv);
    warm_up(&unsynced);

    let mut fsync = Series::default();
    let mut paired_fsync = Series::default();
    let mut paired_kv = Series::default();
    let mut writers: Vec<Series> = WRITERS.iter().map(|_| Series::default()).collect();
    let mut nosync = Series::default();
    for round in 0..rounds {
        println!("round {}:", round + 1);
        let (f, k) = paired(&kv, dir.path(), secs, &format!("r{round}paired"));
        f.print("paired: write+fdatasync");
        k.print("paired: Kv::transact, 1");
        paired_fsync.runs.push(f);
        paired_kv.runs.push(k);
        let f = fdatasync_loop(dir.path(), secs);
        f.print("write+fdatasync (file)");
        fsync.runs.push(f);
        for (i, &threads) in WRITERS.iter().enumerate() {
            let r = kv_commits(
                &kv,
                dir.path(),
                threads,
                secs,
                &format!("r{round}w{threads}"),
            );
            r.print(&format!("Kv::transact, {threads} writers"));
            writers[i].runs.push(r);
        }
        let r = kv_commits(
            &unsynced,
            dir.path(),
            1,
            secs / 4,
            &format!("r{round}nosync"),
        );
        r.print("(no WAL sync, 1 writer)");
        nosync.runs.push(r);
    }
    drop(kv);
    drop(unsynced);

    println!();
    println!("summary over {rounds} rounds (all samples of a configuration together):");
    let print = |name: &str, s: &Series| {
        let all = s.all();
        let (others_mean, others_max) = s.others_cores();
        println!(
            "  {name:<26} {:>8.0} commits/s  median {}  p99 {}  p99.9 {}  n={}  \
             (other processes: {others_mean:.2} cores on average, {others_max:.2} at most)",
            s.per_sec(),
            ms(all.median),
            ms(all.p99),
            ms(all.p999),
            all.count
        );
    };
    print("paired: write+fdatasync", &paired_fsync);
    print("paired: Kv::transact, 1", &paired_kv);
    print("write+fdatasync (file)", &fsync);
    for (s, threads) in writers.iter().zip(WRITERS) {
        print(&format!("Kv::transact, {threads} writers"), s);
    }
    print("(no WAL sync, 1 writer)", &nosync);

    let one = &writers[0];
    let many = &writers[2];
    let per_round_latency: Vec<f64> = paired_kv
        .runs
        .iter()
        .zip(&paired_fsync.runs)
        .map(|(k, f)| k.median().as_secs_f64() / f.median().as_secs_f64())
        .collect();
    let per_round_scaling: Vec<f64> = many
        .runs
        .iter()
        .zip(&one.runs)
        .map(|(m, o)| m.per_sec() / o.per_sec())
        .collect();
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!();
    println!("goals:");
    println!(
        "  paired: 1 writer median / fdatasync median: all rounds {:.2}x; per round [{}], median {:.2}x  (goal <= 1.2x)",
        paired_kv.all().median.as_secs_f64() / paired_fsync.all().median.as_secs_f64(),
        fmt(&per_round_latency),
        median_of(per_round_latency.clone())
    );
    println!(
        "  paired: 1 writer p99 {} vs fdatasync p99 {}",
        ms(paired_kv.all().p99),
        ms(paired_fsync.all().p99)
    );
    println!(
        "  separate runs: 1 writer median {} vs fdatasync loop median {}: {:.2}x",
        ms(one.all().median),
        ms(fsync.all().median),
        one.all().median.as_secs_f64() / fsync.all().median.as_secs_f64()
    );
    println!(
        "  64 writers / 1 writer commits/s: all rounds {:.1}x; per round [{}], median {:.1}x  (goal >= 10x)",
        many.per_sec() / one.per_sec(),
        fmt(&per_round_scaling),
        median_of(per_round_scaling.clone())
    );
    println!(
        "  8 writers / 1 writer commits/s: {:.1}x",
        writers[1].per_sec() / one.per_sec()
    );
}
