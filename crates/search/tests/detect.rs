//! Language detection (`analyze::detect_language`) against whatlang alone
//! with every language it knows (what detection was before the English
//! test of `detect_language` step 1 existed), on the texts a document
//! detects: the first body part with text (else the subject), later body
//! parts, attachment texts.
//!
//! On the repository corpus the two must agree exactly. On the
//! SpamAssassin corpus of the benchmark (`benches/fetch-corpus.sh`; the
//! test says SKIPPED without it), `detect_language` must agree with
//! whatlang at least as often as whatlang restricted to an allowlist of
//! the languages common in mail does (the alternative it replaced).

mod common;

use std::time::Instant;

use tern_search::Document;
use tern_search::analyze::{Language, detect_language, looks_english, whatlang_language};
use whatlang::Lang as L;

/// Bytes `detect_language` samples.
const SAMPLE: usize = 384;

fn sample(text: &str) -> &str {
    let mut end = text.len().min(SAMPLE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The stemming language by `detector` alone (no English test first).
fn by_whatlang(detector: &whatlang::Detector, text: &str) -> Option<Language> {
    let sample = sample(text);
    whatlang_language(detector.detect(sample)?, sample)
}

/// The texts `Document::texts` detects a language for.
fn detected_texts(doc: &Document) -> Vec<String> {
    let first = doc
        .body
        .iter()
        .find(|b| b.chars().filter(|c| c.is_alphabetic()).take(20).count() >= 20)
        .unwrap_or(&doc.subject);
    let mut out = vec![first.clone()];
    out.extend(doc.body.iter().skip(1).cloned());
    out.extend(doc.attachment_text.iter().cloned());
    out
}

/// Languages with a stemmer, and the common Latin and Cyrillic ones of
/// mail without one (they must keep meaning "no stemming").
fn allowlist() -> whatlang::Detector {
    whatlang::Detector::with_allowlist(vec![
        L::Eng,
        L::Fra,
        L::Deu,
        L::Spa,
        L::Ita,
        L::Por,
        L::Nld,
        L::Swe,
        L::Dan,
        L::Nob,
        L::Fin,
        L::Hun,
        L::Ron,
        L::Rus,
        L::Tur,
        L::Ell,
        L::Ara,
        L::Tam,
        L::Vie,
        L::Pol,
        L::Ces,
        L::Slk,
        L::Ind,
        L::Tgl,
        L::Hrv,
        L::Srp,
        L::Slv,
        L::Lit,
        L::Lav,
        L::Est,
        L::Cat,
        L::Ukr,
        L::Bul,
    ])
}

#[test]
fn repository_corpus_detects_as_whatlang_does() {
    let full = whatlang::Detector::new();
    let mut texts = 0;
    for (name, raw) in common::corpus() {
        let doc = Document::from_message(&raw).expect("parses");
        for t in detected_texts(&doc) {
            texts += 1;
            assert_eq!(detect_language(&t), by_whatlang(&full, &t), "{name}: {t:?}");
        }
    }
    assert!(texts >= 12);
}

#[test]
fn spamassassin_agreement_at_least_the_allowlists() {
    let Some(raw) =
        common::spamassassin::load_or_skip("spamassassin_agreement_at_least_the_allowlists")
    else {
        return;
    };
    let texts: Vec<String> = raw
        .iter()
        .filter_map(|r| Document::from_message(r))
        .flat_map(|d| detected_texts(&d))
        .collect();
    let full = whatlang::Detector::new();
    let allow = allowlist();
    let timed = |f: &dyn Fn(&str) -> Option<Language>| {
        let started = Instant::now();
        let out: Vec<Option<Language>> = texts.iter().map(|t| f(t)).collect();
        (out, started.elapsed())
    };
    let (reference, t_full) = timed(&|t| by_whatlang(&full, t));
    let (allowed, t_allow) = timed(&|t| by_whatlang(&allow, t));
    let (ours, t_ours) = timed(&|t| detect_language(t));
    let agree = |v: &[Option<Language>]| v.iter().zip(&reference).filter(|(a, b)| a == b).count();
    let cheap = texts.iter().filter(|t| looks_english(sample(t))).count();
    let n = texts.len();
    let (a_allow, a_ours) = (agree(&allowed), agree(&ours));
    for (i, t) in texts.iter().enumerate() {
        if ours[i] != reference[i] {
            println!(
                "differs: ours {:?}, whatlang {:?}: {:?}",
                ours[i],
                reference[i],
                sample(t).chars().take(100).collect::<String>()
            );
        }
    }
    println!(
        "{n} texts: detect_language agrees with whatlang on {a_ours} ({:.2} %), \
         the allowlist on {a_allow} ({:.2} %); the English test decides {cheap} ({:.1} %); \
         time: whatlang {t_full:?}, allowlist {t_allow:?}, detect_language {t_ours:?}",
        100.0 * a_ours as f64 / n as f64,
        100.0 * a_allow as f64 / n as f64,
        100.0 * cheap as f64 / n as f64,
    );
    assert!(a_ours >= a_allow, "{a_ours} < {a_allow} of {n}");
}
