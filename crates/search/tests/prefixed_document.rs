//! `Document::from_prefixed` (the SMTP server's parse of the data under
//! its trace fields) must give exactly the document the indexer would
//! build from the stored message: what a search finds may not depend on
//! which way a message came in.

mod common;

use mail_parser::MessageParser;
use tern_search::Document;
use tern_testkit::TRACE_PREFIXES;

/// Checks `data` under every prefix: the prefixed document is the whole
/// message's, or `None` (the caller then parses the whole).
fn check(name: &str, data: &[u8]) -> usize {
    let Some(message) = MessageParser::default().parse(data) else {
        return 0;
    };
    let mut same = 0;
    for prefix in TRACE_PREFIXES {
        let whole = [prefix, data].concat();
        if let Some(doc) = Document::from_prefixed(prefix, data, &message) {
            let expected = Document::from_message(&whole).unwrap();
            assert_eq!(
                doc,
                expected,
                "{name} under {:?}",
                String::from_utf8_lossy(prefix)
            );
            same += 1;
        }
    }
    same
}

#[test]
fn the_corpus_gives_the_same_documents_either_way() {
    let corpus = common::corpus();
    for (name, data) in &corpus {
        // As stored, and as it comes over SMTP (CRLF).
        let crlf = String::from_utf8_lossy(data)
            .replace("\r\n", "\n")
            .replace('\n', "\r\n");
        for data in [&data[..], crlf.as_bytes()] {
            assert_eq!(check(name, data), 3, "{name}");
        }
    }
    assert!(corpus.len() >= 10, "only {} messages", corpus.len());
}

#[test]
fn data_or_prefixes_that_would_parse_differently_are_left_to_a_whole_parse() {
    let data = b"Subject: hi\r\nFrom: a@example.org\r\n\r\nbody\r\n";
    let message = MessageParser::default().parse(&data[..]).unwrap();
    assert!(Document::from_prefixed(TRACE_PREFIXES[0], data, &message).is_some());
    // Not whole header lines, a continuation first, a line without a
    // colon, a name with a space.
    for prefix in [
        &b"Received: from a"[..],
        b"\tfolded\r\nReceived: x\r\n",
        b"not a field\r\n",
        b"Bad Name: x\r\n",
    ] {
        assert!(
            Document::from_prefixed(prefix, data, &message).is_none(),
            "{prefix:?}"
        );
    }
    // Data starting with a continuation line or a blank line (it would
    // join the prefix's last field, or end its header).
    for data in [&b" folded\r\n\r\nbody\r\n"[..], b"\r\nbody\r\n"] {
        let message = MessageParser::default().parse(data).unwrap();
        assert!(Document::from_prefixed(TRACE_PREFIXES[0], data, &message).is_none());
    }
}
