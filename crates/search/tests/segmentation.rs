//! `analyze::for_each_word` (the ASCII fast path of word segmentation)
//! gives exactly `unicode_word_indices` (UAX #29) on every text of the
//! repository corpus and, when present, of the benchmark's SpamAssassin
//! corpus (`benches/fetch-corpus.sh`; without it that part says SKIPPED):
//! addresses, names, subjects, bodies, attachment names and texts.

mod common;

use tern_search::Document;
use tern_search::analyze::for_each_word;
use unicode_segmentation::UnicodeSegmentation;

fn texts(doc: &Document) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for a in doc
        .from
        .iter()
        .chain(&doc.to)
        .chain(&doc.cc)
        .chain(&doc.bcc)
    {
        out.push(&a.email);
        out.extend(a.name.as_deref());
    }
    out.push(&doc.subject);
    out.extend(doc.body.iter().map(String::as_str));
    out.extend(doc.attachment_names.iter().map(String::as_str));
    out.extend(doc.attachment_text.iter().map(String::as_str));
    out
}

/// Compares both segmentations on every text; returns the words seen.
fn compare(docs: &[Document]) -> usize {
    let mut words = 0;
    for doc in docs {
        for text in texts(doc) {
            let expected: Vec<(usize, &str)> = text.unicode_word_indices().collect();
            let mut got = Vec::with_capacity(expected.len());
            for_each_word(text, |o, w, _| got.push((o, w)));
            if got != expected {
                let at = got
                    .iter()
                    .zip(&expected)
                    .position(|(a, b)| a != b)
                    .unwrap_or(got.len().min(expected.len()));
                panic!(
                    "segmentation differs at word {at}: {:?} vs {:?}",
                    got.get(at),
                    expected.get(at)
                );
            }
            words += got.len();
        }
    }
    words
}

#[test]
fn repository_corpus() {
    let docs: Vec<Document> = common::corpus()
        .into_iter()
        .map(|(_, raw)| Document::from_message(&raw).expect("parses"))
        .collect();
    assert!(compare(&docs) > 100);
}

#[test]
fn spamassassin_corpus() {
    let Some(raw) = common::spamassassin::load_or_skip("spamassassin_corpus") else {
        return;
    };
    let docs: Vec<Document> = raw
        .iter()
        .filter_map(|r| Document::from_message(r))
        .collect();
    let words = compare(&docs);
    println!("{} messages, {words} words: equal", docs.len());
}
