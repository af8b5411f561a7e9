//! The index `IndexBatch` builds (per-thread shares, the workers'
//! word tables, posting records, the merge of shares at write time)
//! against a reference built the plain way: every token of
//! `Analyzer::analyze` over `Document::texts`, collected per (term,
//! field) and document. Every posting list of the reference must read
//! back exactly, with nothing more in any field of its term.
//!
//! Documents: the repository corpus (ten times over), and the first
//! 1,500 messages of the benchmark's SpamAssassin corpus when it is
//! present (`benches/fetch-corpus.sh`; without it that part says
//! SKIPPED).

mod common;

use std::collections::BTreeMap;

use tern_search::analyze::{Analyzer, Tok};
use tern_search::{Document, Field, IndexBatch, IndexOptions, SearchIndex};
use tern_store::{AccountId, DocumentId};

type Reference = BTreeMap<(String, Field), BTreeMap<DocumentId, Vec<u32>>>;

fn reference(docs: &[(DocumentId, Document)]) -> Reference {
    let mut out = Reference::new();
    let mut analyzer = Analyzer::new();
    for (id, doc) in docs {
        let mut next = [0u32; 16];
        for t in doc.texts() {
            let pos = &mut next[t.field as usize];
            let mut sink = |tok: Tok<'_>| {
                let e = out
                    .entry((tok.term.to_string(), t.field))
                    .or_default()
                    .entry(*id)
                    .or_default();
                e.push(tok.pos);
            };
            *pos = analyzer.analyze(t.text, t.language, *pos, &mut sink) + 1;
        }
        for name in &doc.header_names {
            out.entry((name.clone(), Field::HeaderName))
                .or_default()
                .entry(*id)
                .or_default();
        }
    }
    for docs in out.values_mut() {
        for p in docs.values_mut() {
            p.sort_unstable();
            p.dedup();
        }
    }
    out
}

fn check(docs: &[(DocumentId, Document)]) {
    let dir = tempfile::tempdir().expect("temp dir");
    let index = SearchIndex::open_with(
        dir.path(),
        IndexOptions {
            sync: false,
            ..Default::default()
        },
    )
    .expect("open");
    let account = AccountId(3);
    // Batches of 700 (several shares each on a multi-core machine, and
    // several merge operands per key); the first documents one by one.
    for (n, chunk) in docs.chunks(700).enumerate() {
        let mut batch = IndexBatch::new(account);
        let refs: Vec<(DocumentId, &Document)> = chunk.iter().map(|(i, d)| (*i, d)).collect();
        if n == 0 {
            for (id, d) in &refs[..refs.len().min(5)] {
                batch.add(*id, d);
            }
            batch.add_all(&refs[refs.len().min(5)..]);
        } else {
            batch.add_all(&refs);
        }
        index.write(&batch).expect("write");
    }
    let expected = reference(docs);
    let mut by_term: BTreeMap<&str, Vec<Field>> = BTreeMap::new();
    for (term, field) in expected.keys() {
        by_term.entry(term).or_default().push(*field);
    }
    for ((term, field), want) in &expected {
        let got: BTreeMap<DocumentId, Vec<u32>> = index
            .inspect(account, term, *field)
            .expect("inspect")
            .into_iter()
            .collect();
        assert_eq!(&got, want, "{term:?} in {field:?}");
    }
    for (term, fields) in by_term {
        let mut got: Vec<Field> = index
            .term_fields(account, term)
            .expect("term fields")
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        got.sort();
        assert_eq!(got, fields, "fields of {term:?}");
    }
    println!(
        "{} documents, {} posting lists equal",
        docs.len(),
        expected.len()
    );
}

#[test]
fn repository_corpus_indexes_as_the_reference() {
    // The corpus ten times over (120 documents: enough for `add_all` to
    // use every core).
    let corpus = common::corpus();
    let docs: Vec<(DocumentId, Document)> = (0..10)
        .flat_map(|_| corpus.iter())
        .enumerate()
        .map(|(i, (_, raw))| {
            (
                i as u32 * 3 + 1,
                Document::from_message(raw).expect("parses"),
            )
        })
        .collect();
    check(&docs);
}

#[test]
fn spamassassin_messages_index_as_the_reference() {
    let Some(raw) =
        common::spamassassin::load_or_skip("spamassassin_messages_index_as_the_reference")
    else {
        return;
    };
    let docs: Vec<(DocumentId, Document)> = raw
        .iter()
        .filter_map(|r| Document::from_message(r))
        .take(1500)
        .enumerate()
        .map(|(i, d)| (i as u32 + 10, d))
        .collect();
    check(&docs);
}
