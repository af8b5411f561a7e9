//! `parse_message_prefixed` (reusing a parse of the data under prepended
//! trace fields) must give exactly what `parse_message` gives for the
//! whole: what the store persists (offsets, headers, the envelope) may not
//! depend on which way a message came in.
//!
//! Always: the search tests' corpus and hand-made edge cases. With
//! `TERN_SPAM_CORPUS` set to the SpamAssassin corpus
//! (`scripts/spam-corpus.sh`), its ~6,000 real messages too.

use std::io::Write as _;
use std::path::Path;

use mail_parser::MessageParser;
use tern_store::parse::{parse_message, parse_message_prefixed};
use tern_testkit::TRACE_PREFIXES;

/// Checks one message under every prefix; returns whether mail-parser
/// parsed it at all.
fn check(name: &str, data: &[u8]) -> bool {
    let Some(message) = MessageParser::default().parse(data) else {
        return false;
    };
    for prefix in TRACE_PREFIXES {
        let whole = parse_message(&[prefix, data].concat());
        let reused = parse_message_prefixed(prefix, data, &message);
        match (whole, reused) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{name} under a {}-byte prefix", prefix.len()),
            (Err(_), Err(_)) => {}
            (a, b) => panic!("{name}: whole {a:?}, reused {b:?}"),
        }
    }
    true
}

#[test]
fn edge_cases_parse_the_same_either_way() {
    // (name, message, whether mail-parser parses it: one it does not is
    // delivered through the whole parse, so there is nothing to compare).
    let cases: &[(&str, &[u8], bool)] = &[
        ("plain", b"From: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n", true),
        ("lf only", b"From: a@b.example\nSubject: hi\n\nbody\n", true),
        ("headers only", b"Subject: no body\r\n", true),
        ("starts with a continuation", b" folded\r\nSubject: x\r\n\r\nbody\r\n", true),
        ("starts with the blank line", b"\r\nbody only\r\n", true),
        ("no header at all", b"just text, no colon\r\n", false),
        ("empty", b"", false),
        (
            "nested multipart with a message/rfc822",
            b"From: a@b.example\r\nMIME-Version: 1.0\r\n\
              Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
              preamble\r\n--outer\r\nContent-Type: multipart/alternative; boundary=\"inner\"\r\n\r\n\
              --inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain \xc3\xa9\r\n\
              --inner\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--inner--\r\n\
              --outer\r\nContent-Type: message/rfc822\r\n\r\n\
              From: c@d.example\r\nSubject: inner\r\n\r\ninner body\r\n\
              --outer\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\n\
              Content-Disposition: attachment; filename=\"a.pdf\"\r\n\
              Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--outer--\r\n",
            true,
        ),
        (
            "its own Received and X-Spam fields",
            b"Received: from x by y; Sun, 22 Nov 2026 10:00:00 +0000\r\n\
              X-Spam-Status: Yes\r\nFrom: a@b.example\r\nSubject: s\r\n\r\nb\r\n",
            true,
        ),
        ("8-bit header", b"Subject: caf\xc3\xa9 \xff\r\nFrom: a@b.example\r\n\r\nx\r\n", true),
    ];
    for (name, data, parses) in cases {
        assert_eq!(check(name, data), *parses, "{name}: parsed by mail-parser?");
    }
}

#[test]
fn the_search_corpus_parses_the_same_either_way() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../search/tests/corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "eml") {
            let data = std::fs::read(&path).unwrap();
            assert!(check(&path.display().to_string(), &data));
            // The same message as it comes over SMTP (CRLF).
            let crlf = String::from_utf8_lossy(&data)
                .replace("\r\n", "\n")
                .replace('\n', "\r\n");
            assert!(check(&path.display().to_string(), crlf.as_bytes()));
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} messages in {}", dir.display());
}

#[test]
fn the_spamassassin_corpus_parses_the_same_either_way() {
    let Some(root) = std::env::var_os("TERN_SPAM_CORPUS") else {
        // Straight to the stream: the test harness captures `println!`.
        let _ = writeln!(
            std::io::stderr(),
            "parse_prefixed: SpamAssassin corpus run SKIPPED (TERN_SPAM_CORPUS is unset; see scripts/spam-corpus.sh)"
        );
        return;
    };
    let mut n = 0;
    for folder in std::fs::read_dir(&root).unwrap() {
        let folder = folder.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if check(&path.display().to_string(), &data) {
                n += 1;
            }
        }
    }
    println!("{n} messages compared");
    assert!(n > 1000, "only {n} messages parsed under {root:?}");
}
