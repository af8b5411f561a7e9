//! The key-value contract, checked against every backend.
//!
//! Each case is a plain function taking a [`Store`]: a fresh handle whose keys
//! all live under [`Store::prefix`], so backends that share one database
//! between tests (FoundationDB) keep tests apart. [`backend!`] instantiates
//! every case for one backend; adding a backend is one more `backend!` line
//! and a factory function.
//!
//! The FoundationDB run needs `FDB_CLUSTER_FILE`; without it every
//! `foundationdb::*` case passes without running and the binary prints once
//! that the FoundationDB run was skipped.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Once};
use std::time::Duration;

use tern_store::kv::{
    Error, KeyRange, Kv, QueueFamily, RangeOptions, RocksOptions, Transaction, Watch, limits,
};

/// A store under test: a fresh key space for one case.
struct Store {
    kv: Kv,
    /// Every key a case uses starts with this.
    prefix: Vec<u8>,
    _dir: Option<tempfile::TempDir>,
}

impl Store {
    /// The full key for `key`.
    fn k(&self, key: &[u8]) -> Vec<u8> {
        [self.prefix.as_slice(), key].concat()
    }

    /// The full range for `[begin, end)`.
    fn r(&self, begin: &[u8], end: &[u8]) -> KeyRange {
        KeyRange::new(self.k(begin), self.k(end))
    }

    /// Pairs with the prefix taken off the keys, as `(String, value)`.
    fn strip(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
        pairs
            .into_iter()
            .map(|(k, v)| {
                let k = k
                    .strip_prefix(self.prefix.as_slice())
                    .expect("key under the prefix");
                (String::from_utf8_lossy(k).into_owned(), v)
            })
            .collect()
    }

    /// Only the keys of `pairs`, prefix taken off.
    fn keys(&self, pairs: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<String> {
        self.strip(pairs).into_iter().map(|(k, _)| k).collect()
    }

    /// Commits `f` (retrying on conflicts), panicking on any error.
    fn write(&self, f: impl FnMut(&mut Transaction<'_>) -> Result<(), Error>) {
        self.kv.transact(f).expect("transaction commits");
    }

    /// The committed value at `key` (unprefixed).
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let key = self.k(key);
        self.kv.read::<_, Error>(|tx| tx.get(&key)).expect("read")
    }

    /// Every committed pair in `[begin, end)` (unprefixed), keys as strings.
    fn scan(&self, begin: &[u8], end: &[u8], options: RangeOptions) -> Vec<(String, Vec<u8>)> {
        let range = self.r(begin, end);
        let pairs = self
            .kv
            .read::<_, Error>(|tx| tx.range(&range, options))
            .expect("range read");
        self.strip(pairs)
    }

    /// Keys of every committed pair in `[begin, end)`.
    fn scan_keys(&self, begin: &[u8], end: &[u8], options: RangeOptions) -> Vec<String> {
        self.scan(begin, end, options)
            .into_iter()
            .map(|(k, _)| k)
            .collect()
    }

    /// Sets each `key = value` (unprefixed) in one transaction.
    fn fill(&self, pairs: &[(&str, &str)]) {
        self.write(|tx| {
            for (k, v) in pairs {
                tx.set(&self.k(k.as_bytes()), v.as_bytes())?;
            }
            Ok(())
        });
    }
}

fn counter(v: i64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn decode(v: &[u8]) -> i64 {
    i64::from_le_bytes(v.try_into().expect("8-byte counter"))
}

fn is_conflict<T: std::fmt::Debug>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Conflict))
}

// ---------------------------------------------------------------------------
// Backends.

/// A RocksDB store in a fresh temporary directory, as production opens it.
fn open_rocksdb() -> Option<Store> {
    let dir = tempfile::tempdir().expect("temp dir");
    let kv = Kv::open_rocksdb(dir.path(), RocksOptions::default()).expect("open rocksdb");
    Some(Store {
        kv,
        prefix: b"t/".to_vec(),
        _dir: Some(dir),
    })
}

/// A store on the FoundationDB cluster named by `FDB_CLUSTER_FILE`, each
/// case under its own random prefix. `None` (and a printed line saying so)
/// when the run is skipped.
fn open_foundationdb() -> Option<Store> {
    static SKIPPED: Once = Once::new();
    let reason = match std::env::var_os("FDB_CLUSTER_FILE") {
        None => "FDB_CLUSTER_FILE is unset",
        #[cfg(feature = "foundationdb")]
        Some(cluster_file) => return Some(foundationdb_store(&cluster_file)),
        #[cfg(not(feature = "foundationdb"))]
        Some(_) => "built without the `foundationdb` feature",
    };
    SKIPPED.call_once(|| {
        // Straight to the stream: the test harness captures `eprintln!`.
        let _ = writeln!(
            std::io::stderr(),
            "kv_conformance: FoundationDB run SKIPPED ({reason})"
        );
    });
    None
}

/// A fresh random prefix on the cluster. The network starts once for the
/// test process and is never stopped: the harness gives no hook to stop it
/// before exit, which FoundationDB tolerates for a process that ends.
#[cfg(feature = "foundationdb")]
fn foundationdb_store(cluster_file: &std::ffi::OsStr) -> Store {
    use std::sync::OnceLock;
    static NETWORK: OnceLock<tern_fdb_network::Network> = OnceLock::new();
    NETWORK.get_or_init(|| tern_fdb_network::Network::start().expect("FoundationDB network"));
    let kv = Kv::open_foundationdb(Some(std::path::Path::new(cluster_file)))
        .expect("open the FoundationDB cluster");
    let mut prefix = b"tern-conformance/".to_vec();
    prefix.extend_from_slice(format!("{:016x}/", rand_u64()).as_bytes());
    Store {
        kv,
        prefix,
        _dir: None,
    }
}

#[cfg(feature = "foundationdb")]
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

macro_rules! cases {
    ($open:ident) => {
        cases!(
            @each $open;
            get_set_clear,
            abort_discards_writes,
            read_only_commit_touches_nothing,
            read_your_writes_get,
            read_your_writes_range,
            range_forward_reverse_limit,
            range_empty,
            range_prefix,
            range_keys_with_ff_and_zero_bytes,
            clear_range_then_set_inside,
            atomic_add,
            concurrent_adds_never_conflict,
            read_then_foreign_write_conflicts,
            foreign_clear_range_and_add_conflict_with_reads,
            write_only_never_conflicts,
            range_read_conflicts,
            limited_range_conflicts_only_on_covered_part,
            snapshot_reads_do_not_conflict,
            transact_retries_conflicting_closure,
            limit_key_size,
            limit_value_size,
            limit_transaction_size,
            chunked_values,
            chunked_overwrite_and_clear_leave_no_chunks,
            watch_fires_on_every_kind_of_write,
            watch_ignores_other_keys,
            watch_fires_for_commit_while_waiting,
            bank_transfers_are_serializable,
            queue_family_scans_from_its_mark,
            queue_family_matches_a_model,
            queue_family_hands_out_each_entry_once,
        );
    };
    (@each $open:ident; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                if let Some(store) = super::$open() {
                    super::$case(&store);
                }
            }
        )*
    };
}

/// Every conformance case, as tests in module `$name`, on stores from `$open`.
macro_rules! backend {
    ($name:ident => $open:ident) => {
        mod $name {
            cases!($open);
        }
    };
}

backend!(rocksdb => open_rocksdb);
backend!(foundationdb => open_foundationdb);

// ---------------------------------------------------------------------------
// Basic reads and writes.

fn get_set_clear(s: &Store) {
    assert_eq!(s.get(b"a"), None);
    s.write(|tx| tx.set(&s.k(b"a"), b"1"));
    assert_eq!(s.get(b"a").as_deref(), Some(&b"1"[..]));
    s.write(|tx| tx.set(&s.k(b"a"), b"2"));
    assert_eq!(s.get(b"a").as_deref(), Some(&b"2"[..]));
    // An empty value is a value, not an absence.
    s.write(|tx| tx.set(&s.k(b"e"), b""));
    assert_eq!(s.get(b"e").as_deref(), Some(&b""[..]));
    s.write(|tx| tx.clear(&s.k(b"a")));
    assert_eq!(s.get(b"a"), None);
    // Clearing an absent key is fine.
    s.write(|tx| tx.clear(&s.k(b"never")));
    assert_eq!(s.get(b"e").as_deref(), Some(&b""[..]));
}

fn abort_discards_writes(s: &Store) {
    s.fill(&[("a", "1")]);
    let mut tx = s.kv.begin().unwrap();
    tx.set(&s.k(b"a"), b"2").unwrap();
    tx.set(&s.k(b"b"), b"2").unwrap();
    tx.clear_range(&s.r(b"", b"\xff")).unwrap();
    drop(tx);
    assert_eq!(
        s.scan(b"", b"\xff", RangeOptions::default()),
        vec![("a".into(), b"1".to_vec())]
    );
}

fn read_only_commit_touches_nothing(s: &Store) {
    s.fill(&[("a", "1")]);
    let mut tx = s.kv.begin().unwrap();
    assert_eq!(tx.get(&s.k(b"a")).unwrap().as_deref(), Some(&b"1"[..]));
    tx.range(&s.r(b"", b"\xff"), RangeOptions::default())
        .unwrap();
    // A concurrent write to what it read does not matter: it wrote nothing.
    s.fill(&[("a", "2")]);
    assert_eq!(s.kv.commit(tx).unwrap(), None);
}

fn read_your_writes_get(s: &Store) {
    s.fill(&[("a", "1"), ("b", "1"), ("c", "1"), ("n", "x")]);
    let mut tx = s.kv.begin().unwrap();
    tx.set(&s.k(b"a"), b"2").unwrap();
    tx.clear(&s.k(b"b")).unwrap();
    tx.clear_range(&s.r(b"c", b"d")).unwrap();
    tx.add(&s.k(b"n"), 5).unwrap(); // over a non-counter value
    tx.add(&s.k(b"z"), -3).unwrap(); // over an absent key
    tx.set(&s.k(b"new"), b"v").unwrap();
    assert_eq!(tx.get(&s.k(b"a")).unwrap(), Some(b"2".to_vec()));
    assert_eq!(tx.get(&s.k(b"b")).unwrap(), None);
    assert_eq!(tx.get(&s.k(b"c")).unwrap(), None);
    assert_eq!(tx.get_snapshot(&s.k(b"c")).unwrap(), None);
    // "x" is one byte: a short little-endian counter of 0x78.
    assert_eq!(tx.get(&s.k(b"n")).unwrap(), Some(counter(0x78 + 5)));
    assert_eq!(tx.get(&s.k(b"z")).unwrap(), Some(counter(-3)));
    assert_eq!(tx.get_counter(&s.k(b"z")).unwrap(), -3);
    assert_eq!(tx.get(&s.k(b"new")).unwrap(), Some(b"v".to_vec()));
    // Later writes override earlier ones, in program order.
    tx.set(&s.k(b"b"), b"again").unwrap();
    tx.add(&s.k(b"z"), 10).unwrap();
    tx.clear(&s.k(b"a")).unwrap();
    tx.add(&s.k(b"a"), 1).unwrap(); // after a clear: counts from zero
    tx.set(&s.k(b"c"), b"back").unwrap(); // inside the cleared range
    assert_eq!(tx.get(&s.k(b"b")).unwrap(), Some(b"again".to_vec()));
    assert_eq!(tx.get(&s.k(b"z")).unwrap(), Some(counter(7)));
    assert_eq!(tx.get(&s.k(b"a")).unwrap(), Some(counter(1)));
    assert_eq!(tx.get(&s.k(b"c")).unwrap(), Some(b"back".to_vec()));
    // Other transactions see none of it until commit.
    assert_eq!(s.get(b"a").as_deref(), Some(&b"1"[..]));
    assert_eq!(s.get(b"z"), None);
    s.kv.commit(tx).unwrap();
    assert_eq!(s.get(b"a"), Some(counter(1)));
    assert_eq!(s.get(b"b"), Some(b"again".to_vec()));
    assert_eq!(s.get(b"c"), Some(b"back".to_vec()));
    assert_eq!(s.get(b"n"), Some(counter(0x78 + 5)));
    assert_eq!(s.get(b"z"), Some(counter(7)));
    assert_eq!(s.get(b"new"), Some(b"v".to_vec()));
}

fn read_your_writes_range(s: &Store) {
    s.fill(&[
        ("a", "1"),
        ("b", "1"),
        ("c", "1"),
        ("d", "1"),
        ("e", "1"),
        ("f", "1"),
    ]);
    let mut tx = s.kv.begin().unwrap();
    tx.set(&s.k(b"a"), b"2").unwrap(); // overwrite
    tx.clear(&s.k(b"b")).unwrap(); // clear
    tx.clear_range(&s.r(b"c", b"e")).unwrap(); // c, d gone
    tx.set(&s.k(b"c1"), b"new").unwrap(); // inside the cleared range
    tx.add(&s.k(b"e"), 1).unwrap(); // "1" = 0x31
    tx.add(&s.k(b"g"), 2).unwrap(); // new counter after every stored key
    tx.set(&s.k(b"0"), b"first").unwrap(); // before every stored key
    let want = vec![
        ("0".to_string(), b"first".to_vec()),
        ("a".into(), b"2".to_vec()),
        ("c1".into(), b"new".to_vec()),
        ("e".into(), counter(0x31 + 1)),
        ("f".into(), b"1".to_vec()),
        ("g".into(), counter(2)),
    ];
    let all = tx
        .range(&s.r(b"", b"\xff"), RangeOptions::default())
        .unwrap();
    assert_eq!(s.strip(all), want);
    let rev = tx
        .range(&s.r(b"", b"\xff"), RangeOptions::reverse(usize::MAX))
        .unwrap();
    let mut want_rev = want.clone();
    want_rev.reverse();
    assert_eq!(s.strip(rev), want_rev);
    // Limits count merged pairs, skipping cleared ones.
    for limit in 1..=want.len() + 1 {
        let fwd = tx
            .range(&s.r(b"", b"\xff"), RangeOptions::limit(limit))
            .unwrap();
        assert_eq!(s.strip(fwd), want[..limit.min(want.len())], "limit {limit}");
        let rev = tx
            .range(&s.r(b"", b"\xff"), RangeOptions::reverse(limit))
            .unwrap();
        assert_eq!(
            s.strip(rev),
            want_rev[..limit.min(want.len())],
            "reverse limit {limit}"
        );
    }
    let snap = tx
        .range_snapshot(&s.r(b"b", b"e\0"), RangeOptions::default())
        .unwrap();
    assert_eq!(s.keys(snap), ["c1", "e"]);
    s.kv.commit(tx).unwrap();
    assert_eq!(s.scan(b"", b"\xff", RangeOptions::default()), want);
}

fn range_forward_reverse_limit(s: &Store) {
    s.fill(&[
        ("k1", "1"),
        ("k2", "2"),
        ("k3", "3"),
        ("k4", "4"),
        ("k5", "5"),
        ("l", "x"),
    ]);
    let all = RangeOptions::default();
    assert_eq!(s.scan_keys(b"k", b"l", all), ["k1", "k2", "k3", "k4", "k5"]);
    // Begin inclusive, end exclusive.
    assert_eq!(s.scan_keys(b"k2", b"k4", all), ["k2", "k3"]);
    assert_eq!(s.scan_keys(b"k2", b"k4\0", all), ["k2", "k3", "k4"]);
    assert_eq!(
        s.scan_keys(b"k", b"l", RangeOptions::limit(2)),
        ["k1", "k2"]
    );
    assert_eq!(
        s.scan_keys(b"k", b"l", RangeOptions::reverse(2)),
        ["k5", "k4"]
    );
    assert_eq!(
        s.scan_keys(b"k", b"l", RangeOptions::reverse(usize::MAX)),
        ["k5", "k4", "k3", "k2", "k1"]
    );
    assert_eq!(
        s.scan_keys(b"k2", b"k4", RangeOptions::reverse(usize::MAX)),
        ["k3", "k2"]
    );
    assert_eq!(s.scan_keys(b"k", b"l", RangeOptions::limit(100)).len(), 5);
    assert_eq!(
        s.scan_keys(b"k", b"l", RangeOptions::limit(0)),
        Vec::<String>::new()
    );
    assert_eq!(
        s.scan_keys(b"k", b"l", RangeOptions::reverse(0)),
        Vec::<String>::new()
    );
    // Values come with their keys.
    assert_eq!(
        s.scan(b"k3", b"k5", RangeOptions::reverse(1)),
        vec![("k4".to_string(), b"4".to_vec())]
    );
}

fn range_empty(s: &Store) {
    s.fill(&[("a", "1"), ("b", "1"), ("c", "1")]);
    let all = RangeOptions::default();
    let none: Vec<String> = Vec::new();
    // Nothing stored in the range.
    assert_eq!(s.scan_keys(b"x", b"z", all), none);
    assert_eq!(
        s.scan_keys(b"x", b"z", RangeOptions::reverse(usize::MAX)),
        none
    );
    // begin == end and begin > end hold nothing, even over stored keys.
    assert_eq!(s.scan_keys(b"b", b"b", all), none);
    assert_eq!(s.scan_keys(b"c", b"a", all), none);
    assert_eq!(
        s.scan_keys(b"c", b"a", RangeOptions::reverse(usize::MAX)),
        none
    );
    // Also inside a transaction with local writes in the would-be range.
    let mut tx = s.kv.begin().unwrap();
    tx.set(&s.k(b"b"), b"2").unwrap();
    assert!(tx.range(&s.r(b"c", b"a"), all).unwrap().is_empty());
    assert!(tx.range(&s.r(b"b", b"b"), all).unwrap().is_empty());
    // Clearing an empty or inverted range clears nothing.
    tx.clear_range(&s.r(b"c", b"a")).unwrap();
    tx.clear_range(&s.r(b"b", b"b")).unwrap();
    s.kv.commit(tx).unwrap();
    assert_eq!(s.scan_keys(b"", b"\xff", all), ["a", "b", "c"]);
    // An empty store range after clearing everything.
    s.write(|tx| tx.clear_range(&s.r(b"", b"\xff")));
    assert_eq!(s.scan_keys(b"", b"\xff", all), none);
}

fn range_prefix(s: &Store) {
    s.fill(&[
        ("p", "0"),
        ("p/", "1"),
        ("p/a", "2"),
        ("p/b/c", "3"),
        ("p0", "4"),
        ("o", "5"),
        ("p/\u{ff}", "6"),
    ]);
    let range = KeyRange::prefix(&s.k(b"p/"));
    let got =
        s.kv.read::<_, Error>(|tx| tx.range(&range, RangeOptions::default()))
            .unwrap();
    assert_eq!(s.keys(got), ["p/", "p/a", "p/b/c", "p/\u{ff}"]);
    let got =
        s.kv.read::<_, Error>(|tx| tx.range(&range, RangeOptions::reverse(2)))
            .unwrap();
    assert_eq!(s.keys(got), ["p/\u{ff}", "p/b/c"]);
    // The prefix of a single key holds that key and its extensions.
    let range = KeyRange::prefix(&s.k(b"p"));
    let got =
        s.kv.read::<_, Error>(|tx| tx.range(&range, RangeOptions::default()))
            .unwrap();
    assert_eq!(s.keys(got).len(), 6);
}

fn range_keys_with_ff_and_zero_bytes(s: &Store) {
    let keys: [&[u8]; 7] = [
        b"a",
        b"a\x00",
        b"a\x00\x00",
        b"a\x01",
        b"a\xff",
        b"a\xff\xff",
        b"b",
    ];
    s.write(|tx| {
        for k in keys {
            tx.set(&s.k(k), k)?;
        }
        Ok(())
    });
    let read = |range: KeyRange, options: RangeOptions| -> Vec<Vec<u8>> {
        s.kv.read::<_, Error>(|tx| tx.range(&range, options))
            .unwrap()
            .into_iter()
            .map(|(k, v)| {
                assert_eq!(k, s.k(&v));
                v
            })
            .collect()
    };
    // Byte order: 0x00 < 0x01 < 0xff, shorter before longer.
    assert_eq!(
        read(KeyRange::prefix(&s.k(b"a")), RangeOptions::default()),
        keys[..6].to_vec()
    );
    // strinc of "a\xff" is "b": the prefix holds both 0xff extensions.
    assert_eq!(
        read(KeyRange::prefix(&s.k(b"a\xff")), RangeOptions::default()),
        keys[4..6].to_vec()
    );
    // single() holds exactly one key, not its 0x00 extension.
    assert_eq!(
        read(KeyRange::single(&s.k(b"a")), RangeOptions::default()),
        keys[..1].to_vec()
    );
    assert_eq!(
        read(KeyRange::single(&s.k(b"a\x00")), RangeOptions::reverse(9)),
        keys[1..2].to_vec()
    );
    let mut rev = keys.to_vec();
    rev.reverse();
    assert_eq!(
        read(s.r(b"", b"\xff"), RangeOptions::reverse(usize::MAX)),
        rev
    );
}

fn clear_range_then_set_inside(s: &Store) {
    s.fill(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1"), ("e", "1")]);
    // In one transaction: clear [b, e), then set c; only c survives inside.
    s.write(|tx| {
        tx.clear_range(&s.r(b"b", b"e"))?;
        tx.set(&s.k(b"c"), b"2")?;
        tx.add(&s.k(b"d"), 4)?;
        Ok(())
    });
    assert_eq!(
        s.scan(b"", b"\xff", RangeOptions::default()),
        vec![
            ("a".to_string(), b"1".to_vec()),
            ("c".into(), b"2".to_vec()),
            ("d".into(), counter(4)),
            ("e".into(), b"1".to_vec()),
        ]
    );
    // Set, then a clear range over it: the set is gone too.
    s.write(|tx| {
        tx.set(&s.k(b"x1"), b"1")?;
        tx.clear_range(&s.r(b"d", b"y"))?;
        tx.set(&s.k(b"x2"), b"2")?;
        Ok(())
    });
    assert_eq!(
        s.scan_keys(b"", b"\xff", RangeOptions::default()),
        ["a", "c", "x2"]
    );
}

fn atomic_add(s: &Store) {
    // Absent key counts as zero.
    s.write(|tx| tx.add(&s.k(b"n"), 5));
    assert_eq!(s.get(b"n"), Some(counter(5)));
    s.write(|tx| {
        tx.add(&s.k(b"n"), -7)?;
        tx.add(&s.k(b"n"), 1)
    });
    assert_eq!(s.get(b"n"), Some(counter(-1)));
    // Wraps around like FoundationDB's ADD.
    s.write(|tx| tx.set(&s.k(b"m"), &counter(i64::MAX)));
    s.write(|tx| tx.add(&s.k(b"m"), 1));
    assert_eq!(s.get(b"m"), Some(counter(i64::MIN)));
    // A cleared counter starts again from zero.
    s.write(|tx| tx.clear(&s.k(b"n")));
    s.write(|tx| tx.add(&s.k(b"n"), 3));
    assert_eq!(s.get(b"n"), Some(counter(3)));
    // Adds from separate transactions accumulate.
    for _ in 0..10 {
        s.write(|tx| tx.add(&s.k(b"n"), 2));
    }
    assert_eq!(
        s.kv.read::<_, Error>(|tx| tx.get_counter(&s.k(b"n")))
            .unwrap(),
        23
    );
    assert_eq!(
        s.kv.read::<_, Error>(|tx| tx.get_counter(&s.k(b"absent")))
            .unwrap(),
        0
    );
}

fn concurrent_adds_never_conflict(s: &Store) {
    const THREADS: usize = 8;
    const ADDS: usize = 100;
    let key = s.k(b"hits");
    let other = s.k(b"other");
    let start = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (key, other, start, kv) = (&key, &other, &start, &s.kv);
            scope.spawn(move || {
                start.wait();
                for i in 0..ADDS {
                    // One attempt each: an add takes no read conflict, so a
                    // conflict here is a bug, not bad luck.
                    let mut tx = kv.begin().unwrap();
                    tx.add(key, 1).unwrap();
                    tx.add(other, (t * ADDS + i) as i64).unwrap();
                    kv.commit(tx).expect("adds never conflict");
                }
            });
        }
    });
    let n = THREADS * ADDS;
    assert_eq!(s.get(b"hits"), Some(counter(n as i64)));
    assert_eq!(s.get(b"other"), Some(counter((n * (n - 1) / 2) as i64)));
}

// ---------------------------------------------------------------------------
// Conflicts.

fn read_then_foreign_write_conflicts(s: &Store) {
    s.fill(&[("k", "0")]);
    let mut t1 = s.kv.begin().unwrap();
    assert_eq!(t1.get(&s.k(b"k")).unwrap(), Some(b"0".to_vec()));
    let mut t2 = s.kv.begin().unwrap();
    t2.set(&s.k(b"k"), b"2").unwrap();
    s.kv.commit(t2).unwrap();
    // T1 still reads its snapshot.
    assert_eq!(t1.get(&s.k(b"k")).unwrap(), Some(b"0".to_vec()));
    t1.set(&s.k(b"k"), b"1").unwrap();
    let r = s.kv.commit(t1);
    assert!(is_conflict(&r), "{r:?}");
    assert!(r.unwrap_err().is_retryable());
    assert_eq!(s.get(b"k"), Some(b"2".to_vec()));

    // Reading an absent key conflicts with its creation too (a phantom).
    let mut t1 = s.kv.begin().unwrap();
    assert_eq!(t1.get(&s.k(b"absent")).unwrap(), None);
    s.fill(&[("absent", "now")]);
    t1.set(&s.k(b"elsewhere"), b"1").unwrap();
    assert!(is_conflict(&s.kv.commit(t1)));
    assert_eq!(s.get(b"elsewhere"), None);

    // A write that commits before T1 begins does not conflict.
    s.fill(&[("k", "3")]);
    let mut t1 = s.kv.begin().unwrap();
    t1.get(&s.k(b"k")).unwrap();
    t1.set(&s.k(b"k"), b"4").unwrap();
    s.kv.commit(t1).unwrap();
    // Nor does a write to another key.
    let mut t1 = s.kv.begin().unwrap();
    t1.get(&s.k(b"k")).unwrap();
    s.fill(&[("k2", "x"), ("k\0", "x"), ("j", "x")]);
    t1.set(&s.k(b"k"), b"5").unwrap();
    s.kv.commit(t1).unwrap();
    assert_eq!(s.get(b"k"), Some(b"5".to_vec()));
}

fn foreign_clear_range_and_add_conflict_with_reads(s: &Store) {
    s.fill(&[("a", "1"), ("b", "1")]);
    // A clear range over a key T1 read.
    let mut t1 = s.kv.begin().unwrap();
    t1.get(&s.k(b"a")).unwrap();
    s.write(|tx| tx.clear_range(&s.r(b"0", b"a\0")));
    t1.set(&s.k(b"out"), b"1").unwrap();
    assert!(is_conflict(&s.kv.commit(t1)));
    // A clear range that covers only absent keys still conflicts: T1 read
    // "a" as absent, and a clear of it is a write to it.
    let mut t1 = s.kv.begin().unwrap();
    t1.get(&s.k(b"a")).unwrap();
    s.write(|tx| tx.clear_range(&s.r(b"a", b"b")));
    t1.set(&s.k(b"out"), b"1").unwrap();
    assert!(is_conflict(&s.kv.commit(t1)));
    // An atomic add to a key T1 read.
    let mut t1 = s.kv.begin().unwrap();
    t1.get(&s.k(b"b")).unwrap();
    s.write(|tx| tx.add(&s.k(b"b"), 1));
    t1.set(&s.k(b"out"), b"1").unwrap();
    assert!(is_conflict(&s.kv.commit(t1)));
    // A clear range next to the key does not.
    let mut t1 = s.kv.begin().unwrap();
    t1.get(&s.k(b"b")).unwrap();
    s.write(|tx| tx.clear_range(&s.r(b"b\0", b"z")));
    s.write(|tx| tx.clear_range(&s.r(b"a", b"b")));
    t1.set(&s.k(b"out"), b"1").unwrap();
    s.kv.commit(t1).unwrap();
}

fn write_only_never_conflicts(s: &Store) {
    s.fill(&[("k", "0")]);
    let mut t1 = s.kv.begin().unwrap();
    t1.set(&s.k(b"k"), b"1").unwrap();
    t1.clear_range(&s.r(b"x", b"z")).unwrap();
    t1.add(&s.k(b"n"), 1).unwrap();
    t1.clear(&s.k(b"c")).unwrap();
    // Concurrent commits write every key T1 writes.
    s.write(|tx| {
        tx.set(&s.k(b"k"), b"2")?;
        tx.set(&s.k(b"y"), b"2")?;
        tx.set(&s.k(b"n"), &counter(10))?;
        tx.set(&s.k(b"c"), b"2")
    });
    // T1 read nothing, so it orders after them: blind writes win.
    s.kv.commit(t1)
        .expect("a write-only transaction never conflicts");
    assert_eq!(s.get(b"k"), Some(b"1".to_vec()));
    assert_eq!(s.get(b"y"), None);
    assert_eq!(s.get(b"n"), Some(counter(11)));
    assert_eq!(s.get(b"c"), None);
    // Snapshot reads keep a transaction write-only for conflicts.
    let mut t1 = s.kv.begin().unwrap();
    t1.get_snapshot(&s.k(b"k")).unwrap();
    s.fill(&[("k", "3")]);
    t1.set(&s.k(b"k"), b"4").unwrap();
    s.kv.commit(t1).unwrap();
    assert_eq!(s.get(b"k"), Some(b"4".to_vec()));
}

fn range_read_conflicts(s: &Store) {
    s.fill(&[("r/1", "1"), ("r/3", "3")]);
    // An insert into the scanned range (a phantom) conflicts.
    let mut t1 = s.kv.begin().unwrap();
    let got = t1
        .range(&s.r(b"r/", b"r0"), RangeOptions::default())
        .unwrap();
    assert_eq!(s.keys(got), ["r/1", "r/3"]);
    s.fill(&[("r/2", "2")]);
    t1.set(&s.k(b"sum"), b"4").unwrap();
    assert!(is_conflict(&s.kv.commit(t1)));
    // So does an insert into a scanned range that was empty.
    let mut t1 = s.kv.begin().unwrap();
    assert!(
        t1.range(&s.r(b"q/", b"q0"), RangeOptions::reverse(usize::MAX))
            .unwrap()
            .is_empty()
    );
    s.fill(&[("q/x", "1")]);
    t1.set(&s.k(b"sum"), b"0").unwrap();
    assert!(is_conflict(&s.kv.commit(t1)));
    // The begin key is inside the half-open range...
    let mut t1 = s.kv.begin().unwrap();
    t1.range(&s.r(b"r/", b"r/3"), RangeOptions::default())
        .unwrap();
    s.fill(&[("r/", "new")]);
    t1.set(&s.k(b"sum"), b"0").unwrap();
    assert!(is_conflict(&s.kv.commit(t1)));
    // ...the end key and keys around the range are not.
    let mut t1 = s.kv.begin().unwrap();
    t1.range(&s.r(b"r/", b"r/3"), RangeOptions::default())
        .unwrap();
    s.fill(&[("r/3", "newer"), ("r.", "y"), ("r/30", "z")]);
    t1.set(&s.k(b"sum"), b"0").unwrap();
    s.kv.commit(t1)
        .expect("writes outside the scanned range do not conflict");
}

fn limited_range_conflicts_only_on_covered_part(s: &Store) {
    s.fill(&[
        ("r/1", "1"),
        ("r/2", "2"),
        ("r/3", "3"),
        ("r/4", "4"),
        ("r/5", "5"),
    ]);
    // Forward, limit 2: covered [r/, r/2] inclusive.
    let scan = |t: &mut Transaction<'_>, options: RangeOptions| {
        let got = t.range(&s.r(b"r/", b"r0"), options).unwrap();
        t.set(&s.k(b"out"), b"1").unwrap();
        s.keys(got)
    };
    let attempt = |options: RangeOptions, want: &[&str], foreign: &str| {
        let mut t1 = s.kv.begin().unwrap();
        assert_eq!(scan(&mut t1, options), want);
        s.write(|tx| tx.set(&s.k(foreign.as_bytes()), b"x"));
        s.kv.commit(t1)
    };
    let fwd = RangeOptions::limit(2);
    let rev = RangeOptions::reverse(2);
    // Writes past what a forward scan returned do not conflict...
    attempt(fwd, &["r/1", "r/2"], "r/4").expect("beyond the covered part");
    attempt(fwd, &["r/1", "r/2"], "r/2\0").expect("just after the last key");
    attempt(fwd, &["r/1", "r/2"], "r/9").expect("at the end of the range");
    // ...writes to what it returned, or between, or before, do.
    assert!(is_conflict(&attempt(fwd, &["r/1", "r/2"], "r/2")));
    assert!(is_conflict(&attempt(fwd, &["r/1", "r/2"], "r/15")));
    assert!(is_conflict(&attempt(fwd, &["r/1", "r/15"], "r/")));
    // Reverse, limit 2: covered [r/4, end).
    s.write(|tx| tx.clear_range(&s.r(b"r/", b"r0")));
    s.fill(&[
        ("r/1", "1"),
        ("r/2", "2"),
        ("r/3", "3"),
        ("r/4", "4"),
        ("r/5", "5"),
    ]);
    attempt(rev, &["r/5", "r/4"], "r/3").expect("below the covered part");
    attempt(rev, &["r/5", "r/4"], "r/39").expect("just below the last key");
    assert!(is_conflict(&attempt(rev, &["r/5", "r/4"], "r/4")));
    assert!(is_conflict(&attempt(rev, &["r/5", "r/4"], "r/45")));
    assert!(is_conflict(&attempt(rev, &["r/5", "r/45"], "r/6")));
    // A limit larger than the result covers the whole range.
    assert!(is_conflict(&attempt(
        RangeOptions::limit(100),
        &["r/1", "r/2", "r/3", "r/39", "r/4", "r/45", "r/5", "r/6"],
        "r/99"
    )));
}

fn snapshot_reads_do_not_conflict(s: &Store) {
    s.fill(&[("k", "0"), ("r/1", "1")]);
    let mut t1 = s.kv.begin().unwrap();
    assert_eq!(t1.get_snapshot(&s.k(b"k")).unwrap(), Some(b"0".to_vec()));
    let got = t1
        .range_snapshot(&s.r(b"r/", b"r0"), RangeOptions::default())
        .unwrap();
    assert_eq!(s.keys(got), ["r/1"]);
    s.fill(&[("k", "1"), ("r/2", "2"), ("r/1", "9")]);
    // Still the old snapshot.
    assert_eq!(t1.get_snapshot(&s.k(b"k")).unwrap(), Some(b"0".to_vec()));
    t1.set(&s.k(b"out"), b"1").unwrap();
    s.kv.commit(t1).expect("snapshot reads take no conflict");
    // The same reads made with get/range would have conflicted.
    let mut t1 = s.kv.begin().unwrap();
    t1.get_snapshot(&s.k(b"k")).unwrap();
    t1.range(&s.r(b"r/", b"r0"), RangeOptions::default())
        .unwrap();
    s.fill(&[("r/3", "3")]);
    t1.set(&s.k(b"out"), b"2").unwrap();
    assert!(is_conflict(&s.kv.commit(t1)));
}

fn transact_retries_conflicting_closure(s: &Store) {
    s.write(|tx| tx.set(&s.k(b"n"), &counter(10)));
    let mut attempts = 0;
    let seen =
        s.kv.transact::<_, Error>(|tx| {
            attempts += 1;
            let n = tx.get_counter(&s.k(b"n"))?;
            if attempts == 1 {
                // Another writer gets in between our read and our commit.
                s.write(|other| other.set(&s.k(b"n"), &counter(100)));
            }
            tx.set(&s.k(b"n"), &counter(n + 1))?;
            Ok(n)
        })
        .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(seen, 100, "the retry saw the other writer's value");
    assert_eq!(s.get(b"n"), Some(counter(101)));
    // Errors the closure returns itself are not retried.
    let mut attempts = 0;
    let r = s.kv.transact::<(), Error>(|_| {
        attempts += 1;
        Err(Error::Backend("closure gave up".into()))
    });
    assert!(matches!(r, Err(Error::Backend(_))));
    assert_eq!(attempts, 1);
}

// ---------------------------------------------------------------------------
// Limits.

/// A full key of exactly `len` bytes under the store prefix.
fn key_of_len(s: &Store, len: usize) -> Vec<u8> {
    let mut k = s.k(b"big/");
    k.resize(len, b'k');
    k
}

fn limit_key_size(s: &Store) {
    let ok = key_of_len(s, limits::MAX_KEY);
    let over = key_of_len(s, limits::MAX_KEY + 1);
    s.write(|tx| tx.set(&ok, b"v"));
    assert_eq!(
        s.kv.read::<_, Error>(|tx| tx.get(&ok)).unwrap(),
        Some(b"v".to_vec())
    );
    let mut tx = s.kv.begin().unwrap();
    assert!(matches!(tx.set(&over, b"v"), Err(Error::KeyTooLarge(n)) if n == limits::MAX_KEY + 1));
    assert!(matches!(tx.get(&over), Err(Error::KeyTooLarge(_))));
    assert!(matches!(tx.get_snapshot(&over), Err(Error::KeyTooLarge(_))));
    assert!(matches!(tx.clear(&over), Err(Error::KeyTooLarge(_))));
    assert!(matches!(tx.add(&over, 1), Err(Error::KeyTooLarge(_))));
    assert!(matches!(
        tx.clear_range(&KeyRange::new(s.k(b"a"), over.clone())),
        Err(Error::KeyTooLarge(_))
    ));
    assert!(matches!(
        tx.range(
            &KeyRange::new(over.clone(), s.k(b"z")),
            RangeOptions::default()
        ),
        Err(Error::KeyTooLarge(_))
    ));
    // The failed calls wrote nothing.
    assert!(tx.is_read_only());
}

fn limit_value_size(s: &Store) {
    let ok = vec![7u8; limits::MAX_VALUE];
    let over = vec![7u8; limits::MAX_VALUE + 1];
    s.write(|tx| tx.set(&s.k(b"v"), &ok));
    assert_eq!(s.get(b"v").map(|v| v.len()), Some(limits::MAX_VALUE));
    let mut tx = s.kv.begin().unwrap();
    let r = tx.set(&s.k(b"w"), &over);
    assert!(
        matches!(r, Err(Error::ValueTooLarge(n)) if n == limits::MAX_VALUE + 1),
        "{r:?}"
    );
    assert!(tx.is_read_only());
}

fn limit_transaction_size(s: &Store) {
    let value = vec![1u8; limits::MAX_VALUE];
    // Just under the limit commits.
    let per_key = s.k(b"tx/0000").len() + value.len();
    let fits = limits::MAX_TRANSACTION_BYTES / per_key;
    s.write(|tx| {
        for i in 0..fits {
            tx.set(&s.k(format!("tx/{i:04}").as_bytes()), &value)?;
        }
        Ok(())
    });
    assert_eq!(s.scan(b"tx/", b"tx0", RangeOptions::default()).len(), fits);
    // One more value goes over.
    let mut tx = s.kv.begin().unwrap();
    let mut failed = None;
    for i in 0..=fits {
        if let Err(e) = tx.set(&s.k(format!("ty/{i:04}").as_bytes()), &value) {
            failed = Some((i, e));
            break;
        }
    }
    match failed {
        Some((i, Error::TransactionTooLarge(n))) => {
            assert_eq!(i, fits);
            assert!(n > limits::MAX_TRANSACTION_BYTES);
        }
        other => panic!("expected TransactionTooLarge, got {other:?}"),
    }
    // Clears and adds count too.
    let mut tx = s.kv.begin().unwrap();
    let key = key_of_len(s, limits::MAX_KEY);
    let r =
        (0..limits::MAX_TRANSACTION_BYTES / limits::MAX_KEY + 1).try_for_each(|_| tx.clear(&key));
    assert!(matches!(r, Err(Error::TransactionTooLarge(_))), "{r:?}");
    // Transact passes the error through without retrying.
    let mut attempts = 0;
    let r = s.kv.transact(|tx| {
        attempts += 1;
        for i in 0..=fits {
            tx.set(&s.k(format!("tz/{i:04}").as_bytes()), &value)?;
        }
        Ok::<_, Error>(())
    });
    assert!(matches!(r, Err(Error::TransactionTooLarge(_))));
    assert_eq!(attempts, 1);
    assert!(s.scan(b"tz/", b"tz0", RangeOptions::limit(1)).is_empty());
}

// ---------------------------------------------------------------------------
// Chunked values.

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ seed).collect()
}

fn chunked_values(s: &Store) {
    for (i, len) in [0, 1, 99_999, 100_000, 100_001, 250_000, 5_000_000]
        .into_iter()
        .enumerate()
    {
        let key = s.k(format!("blob/{len}").as_bytes());
        let value = pattern(len, i as u8);
        // Read your own chunked write, then read it committed. A new key
        // may also be written without the read of an old header.
        s.write(|tx| {
            if i % 2 == 0 {
                tx.set_chunked(&key, &value)?;
            } else {
                tx.set_chunked_new(&key, &value)?;
            }
            assert_eq!(
                tx.get_chunked(&key)?.as_deref(),
                Some(value.as_slice()),
                "len {len} in tx"
            );
            Ok(())
        });
        let got = s.kv.read::<_, Error>(|tx| tx.get_chunked(&key)).unwrap();
        assert_eq!(got.map(|v| v.len()), Some(len));
        let got = s.kv.read::<_, Error>(|tx| tx.get_chunked(&key)).unwrap();
        assert!(
            got.as_deref() == Some(value.as_slice()),
            "len {len}: content differs"
        );
        // Every stored value respects the value limit.
        let stored =
            s.kv.read::<_, Error>(|tx| tx.range(&KeyRange::prefix(&key), RangeOptions::default()))
                .unwrap();
        assert!(stored.iter().all(|(_, v)| v.len() <= limits::MAX_VALUE));
    }
    // Neighbouring chunked values do not see each other.
    let absent = s.k(b"blob/absent");
    assert_eq!(
        s.kv.read::<_, Error>(|tx| tx.get_chunked(&absent)).unwrap(),
        None
    );
}

fn chunked_overwrite_and_clear_leave_no_chunks(s: &Store) {
    let key = s.k(b"doc");
    let chunk_range = KeyRange::new(
        [key.as_slice(), b"\x00"].concat(),
        [key.as_slice(), b"\x01"].concat(),
    );
    let chunks = || {
        s.kv.read::<_, Error>(|tx| tx.range(&chunk_range, RangeOptions::default()))
            .unwrap()
            .len()
    };
    s.write(|tx| tx.set_chunked(&key, &pattern(350_000, 1)));
    assert_eq!(chunks(), 4);
    // Shrinking to three chunks leaves no fourth one behind.
    s.write(|tx| tx.set_chunked(&key, &pattern(250_000, 2)));
    assert_eq!(chunks(), 3);
    assert_eq!(
        s.kv.read::<_, Error>(|tx| tx.get_chunked(&key)).unwrap(),
        Some(pattern(250_000, 2))
    );
    // Small again: no chunks at all.
    s.write(|tx| tx.set_chunked(&key, b"small"));
    assert_eq!(chunks(), 0);
    assert_eq!(
        s.kv.read::<_, Error>(|tx| tx.get_chunked(&key)).unwrap(),
        Some(b"small".to_vec())
    );
    s.write(|tx| tx.set_chunked(&key, &pattern(200_000, 3)));
    s.write(|tx| {
        tx.clear_chunked(&key)?;
        assert_eq!(tx.get_chunked(&key)?, None);
        Ok(())
    });
    assert_eq!(chunks(), 0);
    assert_eq!(
        s.kv.read::<_, Error>(|tx| tx.get_chunked(&key)).unwrap(),
        None
    );
    // Keys sorting right after the chunked key are untouched.
    s.fill(&[("doc\x01", "n"), ("doc0", "n")]);
    s.write(|tx| tx.set_chunked(&key, &pattern(150_000, 4)));
    s.write(|tx| tx.clear_chunked(&key));
    assert_eq!(
        s.scan_keys(b"doc", b"doc\xff", RangeOptions::default()),
        ["doc\u{1}", "doc0"]
    );
}

// ---------------------------------------------------------------------------
// Watches.

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime")
}

/// Whether `watch` resolves (successfully) within `wait`.
fn fires(rt: &tokio::runtime::Runtime, watch: Watch, wait: Duration) -> bool {
    // The timer must be made inside the runtime.
    match rt.block_on(async { tokio::time::timeout(wait, watch).await }) {
        Ok(result) => {
            result.expect("watch resolves without error");
            true
        }
        Err(_elapsed) => false,
    }
}

const FIRES: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(200);

/// A boxed write, for tables of writes.
type Write<'a> = Box<dyn Fn(&mut Transaction<'_>) -> Result<(), Error> + 'a>;

fn w<'a>(f: impl Fn(&mut Transaction<'_>) -> Result<(), Error> + 'a) -> Write<'a> {
    Box::new(f)
}

fn watch_fires_on_every_kind_of_write(s: &Store) {
    let rt = runtime();
    let key = s.k(b"w");
    let writes: Vec<(&str, Write<'_>)> = vec![
        ("set", w(|tx| tx.set(&key, b"1"))),
        ("set same value", w(|tx| tx.set(&key, b"1"))),
        ("clear", w(|tx| tx.clear(&key))),
        ("clear absent", w(|tx| tx.clear(&key))),
        ("add", w(|tx| tx.add(&key, 1))),
        ("clear_range", w(|tx| tx.clear_range(&s.r(b"v", b"x")))),
        (
            "prefix clear_range",
            w(|tx| tx.clear_range(&KeyRange::prefix(&key))),
        ),
        (
            "set_chunked",
            w(|tx| tx.set_chunked(&key, &pattern(150_000, 0))),
        ),
        ("clear_chunked", w(|tx| tx.clear_chunked(&key))),
        (
            "set among others",
            w(|tx| {
                tx.set(&s.k(b"a"), b"1")?;
                tx.set(&key, b"2")?;
                tx.set(&s.k(b"z"), b"1")
            }),
        ),
    ];
    for (what, write) in &writes {
        let watch = s.kv.watch(&key);
        let second = s.kv.watch(&key); // two watchers of one key both wake
        s.write(|tx| write(tx));
        assert!(fires(&rt, watch, FIRES), "watch did not fire on {what}");
        assert!(
            fires(&rt, second, FIRES),
            "second watch did not fire on {what}"
        );
    }
}

fn watch_ignores_other_keys(s: &Store) {
    let rt = runtime();
    let key = s.k(b"w");
    let watch = s.kv.watch(&key);
    s.write(|tx| {
        tx.set(&s.k(b"w\0"), b"1")?; // the next key
        tx.set(&s.k(b"v"), b"1")?; // the previous one
        tx.set(&s.k(b"ww"), b"1")?;
        tx.add(&s.k(b"x"), 1)?;
        tx.clear(&s.k(b"wx"))?;
        tx.clear_range(&s.r(b"w\0", b"z"))?; // starts just after
        tx.clear_range(&s.r(b"a", b"w")) // ends just before
    });
    // Reads, aborted writes and snapshot reads are not writes either.
    let mut tx = s.kv.begin().unwrap();
    tx.get(&key).unwrap();
    tx.set(&key, b"never committed").unwrap();
    drop(tx);
    s.kv.read::<_, Error>(|tx| tx.get(&key)).unwrap();
    let mut watch = watch;
    let still_waiting =
        rt.block_on(async { tokio::time::timeout(QUIET, &mut watch).await.is_err() });
    assert!(still_waiting, "watch fired for a write to another key");
    // The same watch then fires for its own key.
    s.write(|tx| tx.set(&key, b"now"));
    assert!(fires(&rt, watch, FIRES));
}

fn watch_fires_for_commit_while_waiting(s: &Store) {
    let rt = runtime();
    let key = s.k(b"w");
    let watch = s.kv.watch(&key);
    let committed = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            s.write(|tx| tx.add(&key, 1));
            committed.store(true, Ordering::SeqCst);
        });
        assert!(
            fires(&rt, watch, FIRES),
            "watch did not fire for a concurrent commit"
        );
    });
    assert!(committed.load(Ordering::SeqCst));
    // Abandoned watches do not stop later writes or later watches.
    for _ in 0..100 {
        drop(s.kv.watch(&key));
    }
    let watch = s.kv.watch(&key);
    s.write(|tx| tx.add(&key, 1));
    assert!(fires(&rt, watch, FIRES));
}

// ---------------------------------------------------------------------------
// Serializability.

/// Threads move money between accounts with read-then-write transactions;
/// a concurrent auditor reads every balance in one snapshot. Lost updates or
/// torn snapshots would change the total.
fn bank_transfers_are_serializable(s: &Store) {
    const ACCOUNTS: usize = 8;
    const THREADS: usize = 4;
    const TRANSFERS: usize = 100;
    const START: i64 = 1_000;
    let account = |i: usize| s.k(format!("bank/{i:02}").as_bytes());
    s.write(|tx| {
        for i in 0..ACCOUNTS {
            tx.set(&account(i), &counter(START))?;
        }
        Ok(())
    });
    let total = START * ACCOUNTS as i64;
    let done = AtomicBool::new(false);
    let retries = AtomicUsize::new(0);
    let audits = AtomicUsize::new(0);
    let start = Arc::new(Barrier::new(THREADS));
    std::thread::scope(|scope| {
        let mut workers = Vec::new();
        for t in 0..THREADS {
            let (account, retries, start) = (&account, &retries, start.clone());
            workers.push(scope.spawn(move || {
                start.wait();
                let mut seed = t as u64 * 7919 + 1;
                let mut next = move |n: usize| {
                    // xorshift: cheap, deterministic per thread.
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed % n as u64) as usize
                };
                for _ in 0..TRANSFERS {
                    let from = next(ACCOUNTS);
                    let to = (from + 1 + next(ACCOUNTS - 1)) % ACCOUNTS;
                    let amount = next(50) as i64 + 1;
                    let mut attempt = 0;
                    s.kv.transact::<_, Error>(|tx| {
                        attempt += 1;
                        let a = decode(&tx.get(&account(from))?.expect("account exists"));
                        let b = decode(&tx.get(&account(to))?.expect("account exists"));
                        tx.set(&account(from), &counter(a - amount))?;
                        tx.set(&account(to), &counter(b + amount))
                    })
                    .expect("transfer commits within the retry budget");
                    retries.fetch_add(attempt - 1, Ordering::Relaxed);
                }
            }));
        }
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                let range = s.r(b"bank/", b"bank0");
                let balances =
                    s.kv.read::<_, Error>(|tx| tx.range(&range, RangeOptions::default()))
                        .unwrap();
                assert_eq!(balances.len(), ACCOUNTS);
                let sum: i64 = balances.iter().map(|(_, v)| decode(v)).sum();
                assert_eq!(sum, total, "a snapshot saw money appear or vanish");
                audits.fetch_add(1, Ordering::Relaxed);
            }
        });
        for worker in workers {
            if let Err(panic) = worker.join() {
                done.store(true, Ordering::SeqCst);
                std::panic::resume_unwind(panic);
            }
        }
        done.store(true, Ordering::SeqCst);
    });
    let balances: BTreeMap<String, i64> = s
        .scan(b"bank/", b"bank0", RangeOptions::default())
        .into_iter()
        .map(|(k, v)| (k, decode(&v)))
        .collect();
    assert_eq!(
        balances.values().sum::<i64>(),
        total,
        "balances {balances:?}"
    );
    // The run must actually have contended, or it proved nothing.
    assert!(
        retries.load(Ordering::Relaxed) > 0,
        "no transfer ever conflicted"
    );
    assert!(audits.load(Ordering::Relaxed) > 0);
}

// ---------------------------------------------------------------------------
// Queue families (`QueueFamily`): scans from a low-water mark.

/// The queue family `q/` of a store, its mark at `qm`.
fn queue(s: &Store) -> QueueFamily {
    QueueFamily::new(s.r(b"q/", b"q0"), s.k(b"qm"))
}

/// The key of entry `n` of [`queue`].
fn qk(s: &Store, n: usize) -> Vec<u8> {
    s.k(format!("q/{n:04}").as_bytes())
}

/// Every entry of the queue from the mark on, keys unprefixed.
fn queue_from_mark(s: &Store) -> Vec<String> {
    let q = queue(s);
    let pairs =
        s.kv.read::<_, Error>(|tx| {
            let range = KeyRange::new(q.start_snapshot(tx)?, q.range().end.clone());
            tx.range(&range, RangeOptions::default())
        })
        .unwrap();
    s.keys(pairs)
}

/// Takes up to `limit` entries from the queue's low end, keeping those
/// `keep` selects; returns the keys taken (unprefixed).
fn take(s: &Store, limit: usize, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let q = queue(s);
    s.kv.transact::<_, Error>(|tx| {
        let head = q.head(tx, None, limit)?;
        let keys = s.keys(head.entries().to_vec());
        let prefix = s.prefix.len();
        head.consume(tx, |k, _| keep(&String::from_utf8_lossy(&k[prefix..])))?;
        Ok(keys.into_iter().filter(|k| !keep(k)).collect())
    })
    .unwrap()
}

/// The entries below the mark, in one snapshot (keys unprefixed).
fn below_the_mark(s: &Store) -> Vec<String> {
    let q = queue(s);
    let pairs =
        s.kv.read::<_, Error>(|tx| {
            let range = KeyRange::new(q.range().begin.clone(), q.start_snapshot(tx)?);
            tx.range(&range, RangeOptions::default())
        })
        .unwrap();
    s.keys(pairs)
}

/// The family's invariant: no entry lies below the mark.
fn assert_nothing_below_the_mark(s: &Store) {
    assert_eq!(
        below_the_mark(s),
        Vec::<String>::new(),
        "an entry lies below the mark"
    );
}

fn queue_family_scans_from_its_mark(s: &Store) {
    let q = queue(s);
    s.write(|tx| {
        for n in [5, 10, 15] {
            q.set(tx, &qk(s, n), b"v")?;
        }
        Ok(())
    });
    assert_eq!(take(s, 2, |_| false), ["q/0005", "q/0010"]);
    // The mark is the key just after the span consumed.
    assert_eq!(s.get(b"qm"), Some(s.k(b"q/0010\0")));
    assert_eq!(queue_from_mark(s), ["q/0015"]);

    // An entry written below the mark lowers it: still found.
    s.write(|tx| q.set(tx, &qk(s, 3), b"v"));
    assert_eq!(s.get(b"qm"), Some(qk(s, 3)));
    assert_eq!(queue_from_mark(s), ["q/0003", "q/0015"]);
    assert_nothing_below_the_mark(s);

    // What is kept is written back, and the mark stops at it.
    assert_eq!(take(s, 10, |k| k == "q/0003"), ["q/0015"]);
    assert_eq!(s.get(b"qm"), Some(qk(s, 3)));
    assert_eq!(queue_from_mark(s), ["q/0003"]);
    assert_eq!(s.get(b"q/0003"), Some(b"v".to_vec()));

    // Consuming stops at `end`.
    s.write(|tx| q.set(tx, &qk(s, 20), b"v"));
    let end = qk(s, 10);
    let taken =
        s.kv.transact::<_, Error>(|tx| {
            let head = q.head(tx, Some(&end), 10)?;
            let n = head.entries().len();
            head.consume(tx, |_, _| false)?;
            Ok(n)
        })
        .unwrap();
    assert_eq!(taken, 1);
    assert_eq!(queue_from_mark(s), ["q/0020"]);

    // An entry put below the mark without lowering it (as a writer that
    // does not keep the mark would) is found once nothing lies above it.
    s.write(|tx| tx.set(&qk(s, 2), b"v"));
    assert_eq!(queue_from_mark(s), ["q/0020"]);
    assert_eq!(take(s, 10, |_| false), ["q/0020"]);
    assert!(!s.kv.read::<_, Error>(|tx| q.is_empty(tx)).unwrap());
    assert_eq!(take(s, 10, |_| false), ["q/0002"]);
    assert_eq!(s.get(b"qm"), Some(s.k(b"q/0002\0")));
    assert!(s.kv.read::<_, Error>(|tx| q.is_empty(tx)).unwrap());

    // A mark that does not lie in the family counts as its start.
    s.write(|tx| tx.set(&s.k(b"qm"), b"elsewhere"));
    s.write(|tx| tx.set(&qk(s, 1), b"v"));
    s.write(|tx| q.set(tx, &qk(s, 30), b"v"));
    assert_eq!(queue_from_mark(s), ["q/0001", "q/0030"]);
    assert!(!s.kv.read::<_, Error>(|tx| q.is_empty(tx)).unwrap());
    assert_eq!(take(s, 10, |_| false), ["q/0001", "q/0030"]);
    assert!(s.kv.read::<_, Error>(|tx| q.is_empty(tx)).unwrap());
}

fn queue_family_matches_a_model(s: &Store) {
    let q = queue(s);
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for step in 0..300u64 {
        match next(4) {
            // Add or overwrite anywhere, below the mark too.
            0 | 1 => {
                let n = next(120) as usize;
                let value = step.to_be_bytes().to_vec();
                s.write(|tx| q.set(tx, &qk(s, n), &value));
                model.insert(format!("q/{n:04}"), value);
            }
            // Take the low end, keeping some.
            2 => {
                let limit = next(6) as usize + 1;
                let keep_odd = next(2) == 0;
                let keep = |k: &str| keep_odd && k.ends_with(['1', '3', '5', '7', '9']);
                let expected: Vec<String> = model
                    .keys()
                    .take(limit)
                    .filter(|k| !keep(k))
                    .cloned()
                    .collect();
                assert_eq!(take(s, limit, keep), expected, "step {step}");
                for k in &expected {
                    model.remove(k);
                }
            }
            // Remove one entry.
            _ => {
                let n = next(120) as usize;
                s.write(|tx| tx.clear(&qk(s, n)));
                model.remove(&format!("q/{n:04}"));
            }
        }
        let expected: Vec<String> = model.keys().cloned().collect();
        assert_eq!(queue_from_mark(s), expected, "step {step}");
        assert_nothing_below_the_mark(s);
    }
}

fn queue_family_hands_out_each_entry_once(s: &Store) {
    const WRITERS: usize = 2;
    const CONSUMERS: usize = 3;
    const PER_WRITER: usize = 150;
    const SLOTS: usize = WRITERS * PER_WRITER;
    // Every other slot is queued up front: the spans consumers take then
    // reach past the free slots that writers fill meanwhile.
    let q = queue(s);
    s.write(|tx| {
        for n in 0..SLOTS {
            q.set(tx, &qk(s, 2 * n + 1), b"p")?;
        }
        Ok(())
    });
    let writing = AtomicUsize::new(WRITERS);
    let consumed = std::sync::Mutex::new(Vec::new());
    let start = Arc::new(Barrier::new(WRITERS + CONSUMERS));
    std::thread::scope(|scope| {
        for w in 0..WRITERS {
            let (writing, start) = (&writing, start.clone());
            scope.spawn(move || {
                start.wait();
                let q = queue(s);
                // Free slots all over the family, so that many lie in a
                // span being consumed or below a mark moved past them.
                for i in 0..PER_WRITER {
                    let n = 2 * ((i * 7919) % PER_WRITER * WRITERS + w);
                    s.write(|tx| {
                        q.set(tx, &qk(s, n), b"w")?;
                        // Widen the window between the writer's snapshot
                        // and its commit, in which a consumer may move the
                        // mark past the entry.
                        std::thread::sleep(Duration::from_micros(300));
                        Ok(())
                    });
                }
                writing.fetch_sub(1, Ordering::SeqCst);
            });
        }
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let (writing, consumed, start) = (&writing, &consumed, start.clone());
                scope.spawn(move || {
                    start.wait();
                    loop {
                        let finished = writing.load(Ordering::SeqCst) == 0;
                        let got = take(s, 4, |_| false);
                        if got.is_empty() && finished {
                            return;
                        }
                        consumed.lock().unwrap().extend(got);
                    }
                })
            })
            .collect();
        // Every snapshot keeps the invariant (consumers would still find
        // an entry below the mark in the end, by looking below it).
        let audits = scope.spawn(|| {
            let mut audits = 0;
            while writing.load(Ordering::SeqCst) > 0 {
                assert_nothing_below_the_mark(s);
                audits += 1;
            }
            audits
        });
        for consumer in consumers {
            consumer.join().unwrap();
        }
        assert!(audits.join().unwrap() > 0);
    });
    let mut consumed = consumed.into_inner().unwrap();
    let total = consumed.len();
    consumed.sort();
    consumed.dedup();
    assert_eq!(consumed.len(), total, "an entry was handed out twice");
    assert_eq!(total, 2 * SLOTS, "an entry was lost");
    assert!(queue_from_mark(s).is_empty());
    assert_nothing_below_the_mark(s);
}
