//! The spam filter, measured (BENCHMARKS.md, section "Spam").
//!
//! 1. Classifier accuracy on the SpamAssassin public corpus
//!    (`scripts/spam-corpus.sh` fetches it; the path comes from
//!    `TERN_SPAM_CORPUS` or the script's default cache). Deterministic
//!    split: a message is in the test set when the FNV-1a hash of its file
//!    name is 0, 1 or 2 modulo 10 (30 %); the rest trains the global model
//!    through the store (`train_messages`, the code `tern spam train`
//!    runs). Reported: spam recall, ham false-positive rate and precision,
//!    for the whole filter at the junk threshold and for the classifier
//!    alone.
//! 2. Filter cost per message, excluding DNS: parse, rules, tokens,
//!    classification with the store-backed models (global model cached,
//!    the account's generation read per message), for a 50 KB message;
//!    median and p99 over many runs.
//!
//! `cargo bench --workspace --bench spam`. Without the corpus, part 1
//! prints SKIPPED and part 2 trains a synthetic model.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tern_smtp::spam::rules::Context;
use tern_smtp::spam::{
    AuthResults, Class, Direction, Models, Prepared, Rules, Scope, SpamAction, SpamFilter,
    train_messages,
};
use tern_store::MailStore;

// The allocator `tern serve` runs with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const JUNK: f64 = 5.0;
const REJECT: f64 = 15.0;

fn fnv(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

struct Sample {
    name: String,
    group: String,
    class: Class,
    raw: Vec<u8>,
}

fn corpus_dir() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("TERN_SPAM_CORPUS") {
        return Some(PathBuf::from(p));
    }
    let home = std::env::var("HOME").ok()?;
    let p = Path::new(&home).join(".cache/tern/spam-corpus/package/data");
    p.is_dir().then_some(p)
}

fn load_corpus(dir: &Path) -> std::io::Result<Vec<Sample>> {
    let mut out = Vec::new();
    for group in ["easy-ham-1", "easy-ham-2", "hard-ham-1", "spam-1", "spam-2"] {
        let class = if group.starts_with("spam") {
            Class::Spam
        } else {
            Class::Ham
        };
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join(group))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "txt"))
            .collect();
        names.sort();
        for path in names {
            let mut raw = std::fs::read(&path)?;
            if raw.starts_with(b"From ")
                && let Some(end) = raw.iter().position(|&b| b == b'\n')
            {
                raw.drain(..=end);
            }
            out.push(Sample {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                group: group.to_owned(),
                class,
                raw,
            });
        }
    }
    Ok(out)
}

fn is_test(name: &str) -> bool {
    fnv(name) % 10 < 3
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn open_store(dir: &Path) -> (MailStore, tern_store::AccountId) {
    let store = MailStore::open(dir).unwrap();
    store.add_domain("example.com").unwrap();
    let account = store.create_account("user@example.com", "pw").unwrap();
    (store, account)
}

/// A 50 KB multipart/alternative message of English-like text with links.
fn message_50k(seed: u64) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the", "meeting", "project", "schedule", "review", "report", "please", "attached",
        "quarter", "results", "team", "update", "customer", "delivery", "invoice", "thanks",
        "regards", "tomorrow", "morning", "budget", "design", "server", "release", "notes",
        "question", "answer", "between", "without", "because", "number", "system", "market",
        "offer", "price", "order", "account", "service", "support", "issue", "change", "email",
        "address", "office", "document", "version", "planning", "weekly", "monthly", "travel",
        "contract", "approval", "feedback", "draft", "final", "summary", "details", "minutes",
        "agenda", "calendar", "holiday", "training", "policy", "security", "network", "storage",
    ];
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = String::new();
    while text.len() < 24_000 {
        let n = rng.gen_range(6..16);
        let sentence: Vec<&str> = (0..n)
            .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
            .collect();
        text.push_str(&sentence.join(" "));
        text.push_str(".\r\n");
    }
    let mut html = String::from("<html><body>");
    for (i, line) in text.lines().enumerate() {
        html.push_str("<p>");
        html.push_str(line);
        if i % 20 == 0 {
            html.push_str(&format!(
                " <a href=\"https://docs.example.com/item/{i}\">docs.example.com</a>"
            ));
        }
        html.push_str("</p>\r\n");
    }
    html.push_str("</body></html>\r\n");
    format!(
        "From: Alice Example <alice@example.org>\r\nTo: user@example.com\r\n\
Subject: Weekly project update {seed}\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
Message-ID: <{seed}@example.org>\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n\
--b1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n{html}\r\n--b1--\r\n"
    )
    .into_bytes()
}

struct Counts {
    tp: usize,
    fn_: usize,
    fp: usize,
    tn: usize,
}

impl Counts {
    fn new() -> Counts {
        Counts {
            tp: 0,
            fn_: 0,
            fp: 0,
            tn: 0,
        }
    }
    fn add(&mut self, truth: Class, said_spam: bool) {
        match (truth, said_spam) {
            (Class::Spam, true) => self.tp += 1,
            (Class::Spam, false) => self.fn_ += 1,
            (Class::Ham, true) => self.fp += 1,
            (Class::Ham, false) => self.tn += 1,
        }
    }
    fn line(&self, what: &str) -> String {
        let recall = self.tp as f64 / (self.tp + self.fn_).max(1) as f64;
        let fpr = self.fp as f64 / (self.fp + self.tn).max(1) as f64;
        let precision = self.tp as f64 / (self.tp + self.fp).max(1) as f64;
        format!(
            "| {what} | {:.2} % ({}/{}) | {:.2} % ({}/{}) | {:.2} % |",
            recall * 100.0,
            self.tp,
            self.tp + self.fn_,
            fpr * 100.0,
            self.fp,
            self.fp + self.tn,
            precision * 100.0
        )
    }
}

fn accuracy(samples: &[Sample], store: &MailStore) -> Arc<Models> {
    let (train, test): (Vec<&Sample>, Vec<&Sample>) =
        samples.iter().partition(|s| !is_test(&s.name));
    let count = |v: &[&Sample], c: Class| v.iter().filter(|s| s.class == c).count();
    println!(
        "corpus: {} messages; train {} spam + {} ham, test {} spam + {} ham",
        samples.len(),
        count(&train, Class::Spam),
        count(&train, Class::Ham),
        count(&test, Class::Spam),
        count(&test, Class::Ham)
    );
    let started = Instant::now();
    for class in [Class::Spam, Class::Ham] {
        train_messages(
            store,
            Scope::Global,
            class,
            train
                .iter()
                .filter(|s| s.class == class)
                .map(|s| s.raw.as_slice()),
            |_| {},
        )
        .unwrap();
    }
    println!(
        "trained {} messages through the store in {:.1} s",
        train.len(),
        started.elapsed().as_secs_f64()
    );
    let models = Arc::new(Models::open(store.clone()).unwrap());
    let global = models.global();
    println!("global model: {} tokens", global.len());
    let filter = SpamFilter::new(
        Rules::default_rules(),
        Some(Arc::clone(&models)),
        JUNK,
        REJECT,
    );
    let mut whole = Counts::new();
    let mut bayes99 = Counts::new();
    let mut bayes50 = Counts::new();
    let mut by_group: Vec<(String, Counts)> = Vec::new();
    let mut fps = Vec::new();
    let sweep = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99];
    let mut swept: Vec<Counts> = sweep.iter().map(|_| Counts::new()).collect();
    for s in &test {
        let prepared = Prepared::new(&s.raw);
        // "Now" is when the message was sent: the corpus is from 2002.
        let cx = Context {
            auth: AuthResults::none(),
            now: prepared.analyzed().date.unwrap_or(1_030_000_000),
            ..Context::default()
        };
        let v = filter.verdict(&prepared, &cx, Direction::Inbound, Some(&global), None);
        let spam = v.action != SpamAction::Accept;
        whole.add(s.class, spam);
        let p = v.bayes.unwrap_or(0.5);
        bayes99.add(s.class, p >= 0.99);
        bayes50.add(s.class, p > 0.5);
        for (t, c) in sweep.iter().zip(swept.iter_mut()) {
            c.add(s.class, p >= *t);
        }
        match by_group.iter_mut().find(|(g, _)| *g == s.group) {
            Some((_, c)) => c.add(s.class, spam),
            None => {
                let mut c = Counts::new();
                c.add(s.class, spam);
                by_group.push((s.group.clone(), c));
            }
        }
        if s.class == Class::Ham && spam {
            fps.push(format!(
                "{}/{} score {:.1} {:?}",
                s.group, s.name, v.score, v.tests
            ));
        }
    }
    println!();
    println!("| decision | spam recall | ham false positives | precision |");
    println!("|---|---|---|---|");
    println!(
        "{}",
        whole.line(&format!("whole filter, score >= {JUNK} (Junk)"))
    );
    println!("{}", bayes99.line("classifier alone, p >= 0.99"));
    println!("{}", bayes50.line("classifier alone, p > 0.5"));
    for (t, c) in sweep.iter().zip(&swept) {
        println!("{}", c.line(&format!("classifier alone, p >= {t}")));
    }
    for (g, c) in &by_group {
        let n = c.tp + c.fn_ + c.fp + c.tn;
        let flagged = c.tp + c.fp;
        println!("  {g}: {flagged}/{n} flagged as spam");
    }
    for fp in fps.iter().take(20) {
        println!("  false positive: {fp}");
    }
    models
}

fn cost(models: Arc<Models>, store: &MailStore, account: tern_store::AccountId) {
    let filter = SpamFilter::new(Rules::default_rules(), Some(models), JUNK, REJECT);
    // The account has its own model too: a few messages trained.
    train_messages(
        store,
        Scope::Account(account),
        Class::Spam,
        (0..5)
            .map(|i| message_50k(1000 + i))
            .collect::<Vec<_>>()
            .iter()
            .map(Vec::as_slice),
        |_| {},
    )
    .unwrap();
    let messages: Vec<Vec<u8>> = (0..50).map(message_50k).collect();
    let size = messages.iter().map(Vec::len).sum::<usize>() / messages.len();
    let cx = Context {
        auth: AuthResults::parse(
            "Authentication-Results: mx; spf=pass smtp.mailfrom=alice@example.org; dkim=pass; dmarc=pass",
        ),
        now: 1_700_000_000,
        ..Context::default()
    };
    let run = |raw: &[u8]| {
        let prepared = Prepared::new(raw);
        filter.score_for(&prepared, &cx, Direction::Inbound, Some(account))
    };
    for m in messages.iter().take(20) {
        std::hint::black_box(run(m));
    }
    let rounds = 2000;
    let mut times = Vec::with_capacity(rounds);
    let mut score = 0.0;
    for i in 0..rounds {
        let m = &messages[i % messages.len()];
        let t = Instant::now();
        let v = run(m);
        times.push(t.elapsed());
        score += v.score;
    }
    times.sort();
    println!();
    println!(
        "filter cost, {size}-byte message (multipart text + HTML), {rounds} runs, one thread:"
    );
    println!(
        "  median {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms (mean score {:.2})",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.9).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
        score / rounds as f64
    );
    // Where the time goes, for the median message, and for the message
    // of the SMTP benchmark (what smtp-source sends).
    parts("of which", &messages[0]);
    parts(
        "the SMTP benchmark's 10 KB message",
        &message_smtp_source(10_240),
    );
}

/// Median times of parse + HTML scan and of tokenizing `m`.
fn parts(what: &str, m: &[u8]) {
    let mut parse = Vec::new();
    let mut tokens = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        let a = tern_smtp::spam::message::analyze(m);
        parse.push(t.elapsed());
        let t = Instant::now();
        std::hint::black_box(tern_smtp::spam::tokens::tokenize(&a));
        tokens.push(t.elapsed());
    }
    parse.sort();
    tokens.sort();
    println!(
        "  {what}: parse + HTML scan median {:.3} ms, tokenize median {:.3} ms",
        percentile(&parse, 0.5).as_secs_f64() * 1e3,
        percentile(&tokens, 0.5).as_secs_f64() * 1e3
    );
}

/// A message as Postfix's smtp-source writes it with `-l len`: four
/// header fields, then numbered lines of 79 `X`s.
fn message_smtp_source(len: usize) -> Vec<u8> {
    let mut m = b"From: <load@example.org>\r\nTo: <alice@example.com>\r\n\
Date: Mon, 23 Nov 2026 09:04:35 +0000 (UTC)\r\n\
Message-Id: <7bad.0003.0000@load.example.org>\r\n\r\n"
        .to_vec();
    let mut line = 0;
    let mut body = 0;
    while body < len {
        line += 1;
        let text = format!("{}{}", line % 10, "X".repeat(79));
        body += text.len() + 2;
        m.extend_from_slice(text.as_bytes());
        m.extend_from_slice(b"\r\n");
    }
    m
}

fn main() {
    // `cargo bench` passes --bench; a filter argument is ignored.
    let dir = tempfile::tempdir().unwrap();
    let (store, account) = open_store(dir.path());
    let models = match corpus_dir() {
        Some(path) => match load_corpus(&path) {
            Ok(samples) if !samples.is_empty() => accuracy(&samples, &store),
            Ok(_) | Err(_) => {
                println!(
                    "accuracy: SKIPPED (no corpus at {}; run scripts/spam-corpus.sh)",
                    path.display()
                );
                synthetic(&store)
            }
        },
        None => {
            println!("accuracy: SKIPPED (no corpus; run scripts/spam-corpus.sh)");
            synthetic(&store)
        }
    };
    cost(models, &store, account);
}

/// Without the corpus: a global model trained on synthetic messages.
fn synthetic(store: &MailStore) -> Arc<Models> {
    let ham: Vec<Vec<u8>> = (0..200).map(|i| message_50k(5000 + i)).collect();
    let spam: Vec<Vec<u8>> = (0..200)
        .map(|i| {
            let mut m = message_50k(9000 + i);
            m.extend_from_slice(b"cheap pills buy now limited offer\r\n");
            m
        })
        .collect();
    train_messages(
        store,
        Scope::Global,
        Class::Ham,
        ham.iter().map(Vec::as_slice),
        |_| {},
    )
    .unwrap();
    train_messages(
        store,
        Scope::Global,
        Class::Spam,
        spam.iter().map(Vec::as_slice),
        |_| {},
    )
    .unwrap();
    Arc::new(Models::open(store.clone()).unwrap())
}
