//! Helpers shared by the store benchmarks: where databases go, latency
//! percentiles, what else the machine was doing during a run, and realistic
//! messages.
//!
//! Each benchmark is a plain binary (`harness = false`) so that it can run
//! many writer threads and report latency percentiles, which a
//! single-threaded micro-benchmark harness cannot.

#![allow(dead_code)]

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A fresh directory for a benchmark's database, on a real disk.
///
/// `TERN_BENCH_DIR` chooses the parent; by default it is Cargo's
/// `target/tmp`, which lives with the build output (not on a tmpfs such as
/// `/tmp` can be). The directory is removed when the value is dropped.
pub fn bench_dir(name: &str) -> tempfile::TempDir {
    let base = std::env::var_os("TERN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    std::fs::create_dir_all(&base).expect("create the benchmark directory");
    let dir = tempfile::Builder::new()
        .prefix(&format!("tern-bench-{name}-"))
        .tempdir_in(&base)
        .expect("create a temporary directory");
    let mount = mount_of(dir.path());
    println!(
        "data directory: {} (device {}, filesystem {})",
        dir.path().display(),
        mount.device,
        mount.fstype
    );
    if matches!(mount.fstype.as_str(), "tmpfs" | "ramfs") {
        println!("WARNING: the data directory is in memory; fsync costs nothing there");
    }
    dir
}

/// The mount holding a path.
#[derive(Debug, Clone, Default)]
pub struct Mount {
    /// The mounted device (`/dev/vda`).
    pub device: String,
    /// The filesystem type (`ext4`, `tmpfs`).
    pub fstype: String,
}

/// The mount that holds `path` (the longest mount point that prefixes it).
pub fn mount_of(path: &Path) -> Mount {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, Mount)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(point), Some(fstype)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path.starts_with(point) && best.as_ref().is_none_or(|(len, _)| point.len() > *len) {
            best = Some((
                point.len(),
                Mount {
                    device: device.to_string(),
                    fstype: fstype.to_string(),
                },
            ));
        }
    }
    best.map(|(_, m)| m).unwrap_or_default()
}

/// Latency figures of one configuration.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Operations measured.
    pub count: usize,
    /// Median latency.
    pub median: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// 99.9th percentile latency.
    pub p999: Duration,
    /// Slowest operation.
    pub max: Duration,
    /// Mean latency.
    pub mean: Duration,
}

impl Summary {
    /// Summarises latencies (exact nearest-rank percentiles over every
    /// sample; the sample counts here are small enough to sort).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        assert!(!samples.is_empty(), "no samples");
        samples.sort_unstable();
        let n = samples.len();
        let rank = |p: f64| samples[((p / 100.0 * n as f64).ceil() as usize).clamp(1, n) - 1];
        let total: Duration = samples.iter().sum();
        Self {
            count: n,
            median: rank(50.0),
            p99: rank(99.0),
            p999: rank(99.9),
            max: samples[n - 1],
            mean: total / n as u32,
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} median={} p99={} p99.9={} max={} mean={}",
            self.count,
            ms(self.median),
            ms(self.p99),
            ms(self.p999),
            ms(self.max),
            ms(self.mean)
        )
    }
}

/// A duration in milliseconds with three decimals.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// What the machine did between [`Probe::start`] and [`Probe::report`]:
/// load average, CPU used by this process and by everything else, and the
/// disk's writes and cache flushes (fsyncs reach the disk as flushes).
#[derive(Debug, Clone)]
pub struct Probe {
    at: Instant,
    cpu: CpuTimes,
    own_ticks: u64,
    disk: DiskStats,
    device: String,
}

/// The report of a [`Probe`].
#[derive(Debug, Clone)]
pub struct Load {
    /// 1-minute load average at the end.
    pub loadavg: f64,
    /// Cores kept busy by the whole machine (average over the interval).
    pub busy_cores: f64,
    /// Cores kept busy by this process.
    pub own_cores: f64,
    /// Disk cache flushes per second.
    pub flushes_per_sec: f64,
    /// Disk flushes in the interval.
    pub flushes: u64,
    /// Megabytes written to the disk per second.
    pub write_mb_per_sec: f64,
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "load avg {:.2}; CPU busy {:.2} cores (this process {:.2}, others {:.2}); \
             disk {:.0} flushes/s, {:.1} MB/s written",
            self.loadavg,
            self.busy_cores,
            self.own_cores,
            (self.busy_cores - self.own_cores).max(0.0),
            self.flushes_per_sec,
            self.write_mb_per_sec
        )
    }
}

impl Probe {
    /// Starts measuring; `dir` names the disk to watch.
    pub fn start(dir: &Path) -> Self {
        let device = mount_of(dir)
            .device
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Self {
            at: Instant::now(),
            cpu: CpuTimes::read(),
            own_ticks: own_ticks(),
            disk: DiskStats::read(&device),
            device,
        }
    }

    /// What happened since [`Probe::start`].
    pub fn report(&self) -> Load {
        let secs = self.at.elapsed().as_secs_f64().max(1e-9);
        let cpu = CpuTimes::read();
        let total = cpu.total.saturating_sub(self.cpu.total) as f64;
        let idle = cpu.idle.saturating_sub(self.cpu.idle) as f64;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        // Ticks per second per core, measured rather than assumed.
        let hz = (total / cores / secs).max(1.0);
        let own = own_ticks().saturating_sub(self.own_ticks) as f64;
        let disk = DiskStats::read(&self.device);
        let flushes = disk.flushes.saturating_sub(self.disk.flushes);
        Load {
            loadavg: loadavg(),
            busy_cores: (total - idle) / hz / secs,
            own_cores: own / hz / secs,
            flushes_per_sec: flushes as f64 / secs,
            flushes,
            write_mb_per_sec: disk
                .sectors_written
                .saturating_sub(self.disk.sectors_written) as f64
                * 512.0
                / 1e6
                / secs,
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    total: u64,
    /// Idle plus iowait.
    idle: u64,
}

impl CpuTimes {
    fn read() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
            return Self::default();
        };
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal (guest time is
        // already counted in user).
        let total = v.iter().take(8).sum();
        let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
        Self { total, idle }
    }
}

/// User plus system ticks of this process (all threads).
fn own_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name may hold spaces; fields after it are plain.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3, utime 14, stime 15 (1-based over the
    // whole line), so indexes 11 and 12 here.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|x| x.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, Copy, Default)]
struct DiskStats {
    sectors_written: u64,
    flushes: u64,
}

impl DiskStats {
    fn read(device: &str) -> Self {
        let stats = std::fs::read_to_string("/proc/diskstats").unwrap_or_default();
        for line in stats.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(2) == Some(&device) {
                let get = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
                return Self {
                    sectors_written: get(9),
                    flushes: get(19),
                };
            }
        }
        Self::default()
    }
}

/// A small deterministic random generator (xorshift64*), so runs are
/// repeatable and the benchmarks need no extra dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// One element of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "the",
    "meeting",
    "quarterly",
    "report",
    "attached",
    "please",
    "review",
    "before",
    "friday",
    "budget",
    "team",
    "project",
    "deadline",
    "update",
    "schedule",
    "customer",
    "invoice",
    "shipment",
    "delivery",
    "thanks",
    "regards",
    "question",
    "about",
    "server",
    "migration",
    "database",
    "release",
    "notes",
    "feedback",
    "design",
    "proposal",
    "agenda",
    "minutes",
    "holiday",
    "travel",
    "expenses",
    "contract",
    "renewal",
    "support",
    "ticket",
    "issue",
    "resolved",
    "pending",
    "approval",
    "draft",
    "final",
    "version",
    "summary",
    "details",
    "tomorrow",
    "morning",
    "afternoon",
    "call",
    "conference",
    "room",
    "booked",
    "available",
    "we",
    "you",
    "they",
    "will",
    "can",
    "should",
    "would",
    "could",
    "and",
    "or",
    "but",
    "with",
    "from",
    "for",
    "into",
    "over",
    "under",
    "again",
    "further",
    "then",
    "once",
    "here",
    "there",
];

const SUBJECTS: &[&str] = &[
    "Quarterly report",
    "Meeting notes",
    "Invoice for June",
    "Re: Server migration plan",
    "Your order has shipped",
    "Project update",
    "Fwd: Holiday schedule",
    "Contract renewal",
    "Weekly newsletter",
    "Re: Re: Budget question",
];

const NAMES: &[&str] = &[
    "Alice Martin",
    "Bob Nguyen",
    "Carla Jensen",
    "Dong-hyun Kim",
    "Erik Svensson",
    "Fatima Haddad",
    "Giulia Rossi",
    "Hiroshi Tanaka",
];

/// Size of the generated messages, in bytes.
pub const MESSAGE_SIZE: usize = 10 * 1024;

/// A realistic plain-text message of [`MESSAGE_SIZE`] bytes: a trace
/// header, a DKIM signature, the usual header fields with a subject and
/// Message-ID unique to (`stream`, `seq`), and a text body of words.
pub fn message(rng: &mut Rng, to: &str, stream: u64, seq: u64) -> Vec<u8> {
    let name = *rng.pick(NAMES);
    let local: String = name
        .split(' ')
        .next()
        .unwrap_or("x")
        .to_lowercase()
        .replace('-', "");
    let subject = *rng.pick(SUBJECTS);
    let day = 1 + seq % 28;
    let (h, m, s) = ((seq / 3600) % 24, (seq / 60) % 60, seq % 60);
    let signature: String = (0..344)
        .map(|_| {
            let c = rng.below(64) as u8;
            (match c {
                0..26 => b'A' + c,
                26..52 => b'a' + c - 26,
                52..62 => b'0' + c - 52,
                62 => b'+',
                _ => b'/',
            }) as char
        })
        .collect();
    let folded: Vec<&str> = signature
        .as_bytes()
        .chunks(72)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    let mut out = format!(
        "Return-Path: <{local}@example.org>\r\n\
         Received: from mail.example.org (mail.example.org [192.0.2.{ip}])\r\n\
         \tby mx.example.com with ESMTPS id {stream:x}{seq:x}\r\n\
         \tfor <{to}>; Tue, {day} Jun 2025 {h:02}:{m:02}:{s:02} +0000\r\n\
         DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.org;\r\n\
         \ts=sel1; h=from:to:subject:date:message-id;\r\n\
         \tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\r\n\
         \tb={sig}\r\n\
         From: \"{name}\" <{local}@example.org>\r\n\
         To: <{to}>\r\n\
         Subject: {subject} #{stream}-{seq}\r\n\
         Date: Tue, {day} Jun 2025 {h:02}:{m:02}:{s:02} +0200\r\n\
         Message-ID: <{stream}.{seq}.{rand:x}@example.org>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         Content-Transfer-Encoding: 8bit\r\n\
         \r\n",
        ip = 1 + rng.below(250),
        sig = folded.join("\r\n\t  "),
        rand = rng.next_u64(),
    )
    .into_bytes();
    // The body: lines of about 72 characters, a blank line between
    // paragraphs, up to exactly MESSAGE_SIZE bytes.
    let mut line = String::new();
    let mut lines_in_paragraph = 0;
    while out.len() < MESSAGE_SIZE {
        let word = *rng.pick(WORDS);
        if line.len() + word.len() + 1 > 72 {
            line.push_str("\r\n");
            lines_in_paragraph += 1;
            if lines_in_paragraph > 6 + rng.below(6) {
                line.push_str("\r\n");
                lines_in_paragraph = 0;
            }
            out.extend_from_slice(line.as_bytes());
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    out.truncate(MESSAGE_SIZE - 2);
    out.extend_from_slice(b"\r\n");
    out
}

/// Prints a benchmark's heading with the machine's state.
pub fn heading(name: &str) {
    println!("=== {name} ===");
    println!(
        "cores: {}; load avg at start: {:.2}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg()
    );
}

/// An environment variable parsed as a number, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Total size of the files under `path`, in bytes.
pub fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Waits until this process has been idle (under 5% of a core) for three
/// seconds in a row — the store's background flushes and compactions are
/// done — or until `limit` has passed. Returns the time waited.
pub fn wait_until_idle(limit: Duration) -> Duration {
    let start = Instant::now();
    let mut quiet_since = Instant::now();
    let mut ticks = own_ticks();
    let mut at = Instant::now();
    // Ticks per second, from the kernel's own clock (USER_HZ is 100 on
    // Linux, and /proc reports in it).
    const HZ: f64 = 100.0;
    while start.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(500));
        let now = own_ticks();
        let cores = (now - ticks) as f64 / HZ / at.elapsed().as_secs_f64();
        ticks = now;
        at = Instant::now();
        if cores > 0.05 {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(3) {
            break;
        }
    }
    start.elapsed()
}
