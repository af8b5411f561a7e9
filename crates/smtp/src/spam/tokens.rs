//! Tokens of a message for the statistical classifier, as 64-bit hashes.
//!
//! A token is a kind byte and a text; its hash is FNV-1a 64 over the kind
//! byte followed by the text's UTF-8 bytes (offset basis
//! `0xcbf29ce484222325`, prime `0x100000001b3`). The hashes are keys of
//! the stored models (`docs/store-format.md`, "Spam models"): changing the
//! tokenizer or the hash invalidates trained models.
//!
//! Kinds: body words, subject words, From address parts, header names,
//! selected header values, URL hosts and path pieces, attachment types,
//! structure facts. A message yields each distinct token once (the
//! classifier counts messages holding a token, not occurrences).

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use super::bayes::IdentityHasher;
use super::message::Analyzed;

/// Token kinds: the first hashed byte.
mod kind {
    pub const WORD: u8 = b'w';
    pub const SUBJECT: u8 = b's';
    pub const FROM: u8 = b'f';
    pub const HEADER_NAME: u8 = b'h';
    pub const HEADER_VALUE: u8 = b'v';
    pub const URL: u8 = b'u';
    pub const URL_PATH: u8 = b'p';
    pub const LONG: u8 = b'l';
    pub const STRUCTURE: u8 = b'x';
    pub const BIGRAM: u8 = b'b';
}

/// Most body words looked at (a cost bound).
const MAX_WORDS: usize = 20_000;

/// FNV-1a 64 over `kind` then `text`.
pub fn hash(kind: u8, text: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    h ^= kind as u64;
    h = h.wrapping_mul(0x0000_0100_0000_01b3);
    for &b in text {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Header fields whose values are tokens (lowercase names).
const VALUE_HEADERS: &[&str] = &[
    "x-mailer",
    "user-agent",
    "content-type",
    "x-priority",
    "precedence",
    "list-id",
    "x-msmail-priority",
    "content-transfer-encoding",
    "mime-version",
    "organization",
];

struct Sink {
    set: HashSet<u64, BuildHasherDefault<IdentityHasher>>,
}

/// FNV-1a 64 fed in pieces: `Fnv::new(kind).feed(a).feed(b).finish()`
/// equals `hash(kind, a ++ b)`.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new(kind: u8) -> Self {
        Self(0xcbf2_9ce4_8422_2325).feed(&[kind])
    }

    fn feed(mut self, bytes: &[u8]) -> Self {
        for &b in bytes {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
}

/// Formatting into the hash: `write!` of a token's pieces hashes what
/// `format!` would have built, without building it.
impl std::fmt::Write for Fnv {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        *self = self.feed(s.as_bytes());
        Ok(())
    }
}

impl Sink {
    fn add(&mut self, kind: u8, text: &str) {
        self.set.insert(hash(kind, text.as_bytes()));
    }

    /// The token `format!("{args}")`, hashed as it is written.
    fn add_fmt(&mut self, kind: u8, args: std::fmt::Arguments<'_>) {
        let mut h = Fnv::new(kind);
        // Writing into a hash cannot fail.
        let _ = std::fmt::Write::write_fmt(&mut h, args);
        self.set.insert(h.0);
    }

    /// The token of a word of `chars` characters (over 20) starting with
    /// `first`, in a text of kind `k`: `format!("{k}{first}:{tens}")`
    /// with `k` as a character and `tens` = `chars / 10` in decimal,
    /// hashed without the formatting machinery (a message of long words,
    /// base64 or hex, has thousands).
    fn add_long(&mut self, k: u8, first: char, chars: usize) {
        let (mut k_buf, mut first_buf) = ([0u8; 4], [0u8; 4]);
        let mut tens = itoa::Buffer::new();
        let h = Fnv::new(kind::LONG)
            .feed(char::from(k).encode_utf8(&mut k_buf).as_bytes())
            .feed(first.encode_utf8(&mut first_buf).as_bytes())
            .feed(b":")
            .feed(tens.format(chars / 10).as_bytes());
        self.set.insert(h.0);
    }

    /// The token `a b` (a space between).
    fn add_parts(&mut self, kind: u8, a: &str, b: &str) {
        let h = Fnv::new(kind)
            .feed(a.as_bytes())
            .feed(b" ")
            .feed(b.as_bytes());
        self.set.insert(h.0);
    }
}

/// The distinct token hashes of an analyzed message, sorted.
pub fn tokenize(a: &Analyzed) -> Vec<u64> {
    let mut sink = Sink {
        set: HashSet::with_capacity_and_hasher(2048, Default::default()),
    };
    headers(a, &mut sink);
    words(&a.text, kind::WORD, &mut sink, MAX_WORDS, true);
    for link in &a.links {
        url(&link.href, &mut sink);
    }
    for att in &a.attachments {
        sink.add_fmt(kind::STRUCTURE, format_args!("att:{}", att.content_type));
        if let Some(ext) = att
            .name
            .as_deref()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, e)| e.to_ascii_lowercase())
        {
            sink.add_fmt(kind::STRUCTURE, format_args!("ext:{ext}"));
        }
    }
    if a.html_only {
        sink.add(kind::STRUCTURE, "html-only");
    }
    if a.hidden_chars > 0 {
        sink.add(kind::STRUCTURE, "hidden-text");
    }
    sink.add_fmt(
        kind::STRUCTURE,
        format_args!("images:{}", bucket(a.images as u64)),
    );
    sink.add_fmt(
        kind::STRUCTURE,
        format_args!("links:{}", bucket(a.links.len() as u64)),
    );
    for cs in &a.charsets {
        sink.add_fmt(kind::STRUCTURE, format_args!("charset:{cs}"));
    }
    let mut out: Vec<u64> = sink.set.into_iter().collect();
    out.sort_unstable();
    out
}

/// 0, 1, 2-3, 4-7, ...: a log2 bucket.
fn bucket(n: u64) -> u32 {
    64 - n.leading_zeros()
}

fn headers(a: &Analyzed, sink: &mut Sink) {
    for (name, value) in &a.headers {
        sink.add(kind::HEADER_NAME, name);
        if name == "received" {
            received(value, sink);
        } else if name == "return-path" || name == "to" || name == "cc" {
            for word in value.split([',', ' ', '<', '>']) {
                if let Some((_, domain)) = word.rsplit_once('@') {
                    let domain = domain
                        .trim_matches(|c: char| !c.is_alphanumeric())
                        .to_lowercase();
                    sink.add_parts(kind::HEADER_VALUE, name, &domain);
                }
            }
        }
        if VALUE_HEADERS.contains(&name.as_str()) {
            let v: String = value.chars().take(60).collect::<String>().to_lowercase();
            sink.add_parts(kind::HEADER_VALUE, name, &v);
        }
    }
    if let Some(subject) = &a.subject {
        words(subject, kind::SUBJECT, sink, 200, false);
        let letters: Vec<char> = subject.chars().filter(|c| c.is_alphabetic()).collect();
        if letters.len() >= 8 && letters.iter().all(|c| c.is_uppercase()) {
            sink.add(kind::STRUCTURE, "subject-all-caps");
        }
        let bangs = subject.matches('!').count();
        if bangs > 0 {
            sink.add_fmt(
                kind::STRUCTURE,
                format_args!("subject-bangs:{}", bangs.min(3)),
            );
        }
    }
    match &a.from {
        Some(from) => {
            if let Some(addr) = &from.address {
                sink.add_fmt(kind::FROM, format_args!("addr:{addr}"));
                if let Some((local, domain)) = addr.rsplit_once('@') {
                    sink.add_fmt(kind::FROM, format_args!("domain:{domain}"));
                    let local_digits = local.chars().filter(char::is_ascii_digit).count();
                    sink.add_fmt(
                        kind::FROM,
                        format_args!("local-digits:{}", bucket(local_digits as u64)),
                    );
                }
            }
            if let Some(name) = &from.name {
                for w in name.split_whitespace().take(6) {
                    sink.add_fmt(kind::FROM, format_args!("name:{}", w.to_lowercase()));
                }
            } else {
                sink.add(kind::FROM, "no-name");
            }
        }
        None => sink.add(kind::FROM, "none"),
    }
    if let Some(reply_to) = a.reply_to.as_ref().and_then(|r| r.domain()) {
        sink.add_fmt(kind::FROM, format_args!("reply-to:{reply_to}"));
    }
    match a.message_id.as_deref().and_then(|m| m.rsplit_once('@')) {
        Some((_, domain)) => {
            let domain = domain.trim_end_matches('>').to_lowercase();
            sink.add_fmt(kind::HEADER_VALUE, format_args!("mid-domain:{domain}"));
        }
        None => sink.add(kind::STRUCTURE, "no-message-id"),
    }
    sink.add_fmt(kind::STRUCTURE, format_args!("ct:{}", a.content_type));
    sink.add_fmt(
        kind::STRUCTURE,
        format_args!("to:{}", bucket(a.recipients as u64)),
    );
}

/// Host names and network prefixes of the relays in a Received field:
/// the last two labels of each name, and the first two octets of each
/// IPv4 address.
fn received(value: &str, sink: &mut Sink) {
    for word in value
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | ';'))
        .take(40)
    {
        let word = word.trim_matches(|c: char| !c.is_alphanumeric());
        if word.contains('.') && word.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            let octets: Vec<&str> = word.split('.').collect();
            if octets.len() == 4 {
                sink.add_parts(kind::HEADER_VALUE, "rcvd-ip", &octets[..2].join("."));
            }
        } else if word.contains('.')
            && !word.contains('@')
            && word
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        {
            let lower = word.to_ascii_lowercase();
            let labels: Vec<&str> = lower.split('.').collect();
            let base = labels[labels.len().saturating_sub(2)..].join(".");
            sink.add_parts(kind::HEADER_VALUE, "rcvd", &base);
        }
    }
}

/// Adds the words of `text`: split at whitespace, edge punctuation
/// trimmed, lowercased; 3 to 20 characters; longer ones become a "long
/// word" token; URLs become URL tokens. With `bigrams`, adjacent word
/// pairs are tokens too.
fn words(text: &str, k: u8, sink: &mut Sink, max: usize, bigrams: bool) {
    // The previous word and the current one, lowercased, in buffers reused
    // for every word (a message has thousands).
    let mut prev = String::new();
    let mut has_prev = false;
    let mut word = String::new();
    for (n, raw) in split_whitespace(text).enumerate() {
        if n >= max {
            break;
        }
        let trimmed = raw.trim_matches(|c: char| {
            matches!(
                c,
                '.' | ','
                    | ';'
                    | ':'
                    | '('
                    | ')'
                    | '['
                    | ']'
                    | '{'
                    | '}'
                    | '<'
                    | '>'
                    | '"'
                    | '\''
                    | '*'
                    | '`'
            )
        });
        if trimmed.is_empty() {
            has_prev = false;
            continue;
        }
        // (The first 8 bytes, when they end at a character boundary: the
        // rule trained models were built with.)
        if trimmed.len() >= 8
            && trimmed.is_char_boundary(8)
            && (starts_with_ignore_case(trimmed, "http://")
                || starts_with_ignore_case(trimmed, "https://")
                || starts_with_ignore_case(trimmed, "www."))
        {
            url(trimmed, sink);
            has_prev = false;
            continue;
        }
        let ascii = trimmed.is_ascii();
        let chars = if ascii {
            trimmed.len()
        } else {
            trimmed.chars().count()
        };
        if chars < 3 {
            has_prev = false;
            continue;
        }
        if chars > 20 {
            let first = trimmed.chars().next().unwrap_or('?');
            sink.add_long(k, first, chars);
            has_prev = false;
            continue;
        }
        word.clear();
        if ascii {
            word.push_str(trimmed);
            word.make_ascii_lowercase();
        } else {
            // `str::to_lowercase`, not per char: it lowers a final sigma
            // by its context.
            word.push_str(&trimmed.to_lowercase());
        }
        if word.bytes().all(|b| b.is_ascii_digit()) {
            sink.add_fmt(k, format_args!("#num{}", word.len()));
            has_prev = false;
            continue;
        }
        sink.add(k, &word);
        if bigrams {
            if has_prev {
                sink.add_parts(kind::BIGRAM, &prev, &word);
            }
            std::mem::swap(&mut prev, &mut word);
            has_prev = true;
        }
    }
}

/// `str::split_whitespace`, a byte at a time when `text` is ASCII (an
/// ASCII character is whitespace exactly when its byte is 9 to 13 or 32).
fn split_whitespace(text: &str) -> Words<'_> {
    if text.is_ascii() {
        Words::Ascii { text, pos: 0 }
    } else {
        Words::Any(text.split_whitespace())
    }
}

enum Words<'a> {
    Ascii { text: &'a str, pos: usize },
    Any(std::str::SplitWhitespace<'a>),
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        match self {
            Words::Any(words) => words.next(),
            Words::Ascii { text, pos } => {
                let bytes = text.as_bytes();
                let space = |b: u8| matches!(b, 9..=13 | b' ');
                let start = *pos + bytes[*pos..].iter().position(|&b| !space(b))?;
                let end = bytes[start..]
                    .iter()
                    .position(|&b| space(b))
                    .map_or(bytes.len(), |n| start + n);
                *pos = end;
                Some(&text[start..end])
            }
        }
    }
}

/// Whether `s` starts with the ASCII `prefix`, ignoring ASCII case.
fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// Host and path tokens of a URL.
fn url(href: &str, sink: &mut Sink) {
    let Some((scheme, host, path)) = split_url(href) else {
        if let Some((scheme, _)) = href.split_once(':') {
            let scheme = scheme.to_ascii_lowercase();
            if scheme.len() < 12 {
                sink.add_fmt(kind::URL, format_args!("scheme:{scheme}"));
            }
        }
        return;
    };
    sink.add_fmt(kind::URL, format_args!("scheme:{scheme}"));
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        sink.add(kind::URL, "ip-host");
    }
    sink.add(kind::URL, &host);
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() > 2 {
        sink.add(kind::URL, &labels[labels.len() - 2..].join("."));
    }
    for piece in path
        .split(|c: char| !c.is_alphanumeric())
        .filter(|p| (3..=20).contains(&p.len()))
        .take(8)
    {
        sink.add(kind::URL_PATH, &piece.to_lowercase());
    }
}

/// (scheme, lowercase host, rest) of an http(s) or www. URL.
pub fn split_url(href: &str) -> Option<(String, String, &str)> {
    let lower_start = href.get(..8).unwrap_or(href).to_ascii_lowercase();
    let (scheme, rest) = if lower_start.starts_with("http://") {
        ("http", &href[7..])
    } else if lower_start.starts_with("https://") {
        ("https", &href[8..])
    } else if lower_start.starts_with("www.") {
        ("http", href)
    } else {
        return None;
    };
    let end = rest.find(['/', '?', '#', '\\']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split(':').next().unwrap_or(host);
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return None;
    }
    Some((scheme.to_owned(), host, &rest[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spam::message::analyze;

    #[test]
    fn the_hash_is_fnv1a_over_kind_and_text() {
        // FNV-1a 64 of the bytes "wfree", computed independently.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in b"wfree" {
            h ^= *b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
        assert_eq!(hash(b'w', b"free"), h);
        assert_ne!(hash(b'w', b"free"), hash(b's', b"free"));
    }

    #[test]
    fn words_urls_and_headers_become_distinct_tokens() {
        let raw = b"From: Shop <deals123@shop.example>\r\nSubject: FREE offer\r\n\
Message-ID: <a@shop.example>\r\n\r\nFree FREE free! Visit https://www.shop.example/buy-now today.\r\n";
        let a = analyze(raw);
        let t = tokenize(&a);
        let has = |k: u8, s: &str| t.binary_search(&hash(k, s.as_bytes())).is_ok();
        assert!(has(kind::WORD, "free"));
        assert!(has(kind::WORD, "free!"));
        assert!(has(kind::WORD, "today"));
        assert!(has(kind::SUBJECT, "free"));
        assert!(has(kind::SUBJECT, "offer"));
        assert!(has(kind::URL, "www.shop.example"));
        assert!(has(kind::URL, "shop.example"));
        assert!(has(kind::URL_PATH, "buy"));
        assert!(has(kind::FROM, "domain:shop.example"));
        assert!(has(kind::HEADER_NAME, "message-id"));
        assert!(has(kind::BIGRAM, "visit today") || has(kind::BIGRAM, "free! visit"));
        let mut sorted = t.clone();
        sorted.dedup();
        assert_eq!(sorted.len(), t.len(), "tokens are distinct");
    }

    /// The word tokens as first written (a `String` per word): trained
    /// models hold these hashes, so the buffer-reusing `words` must give
    /// exactly the same set.
    fn words_reference(text: &str, k: u8, max: usize, bigrams: bool) -> Vec<u64> {
        let mut sink = Sink {
            set: HashSet::default(),
        };
        let mut prev: Option<String> = None;
        for (n, raw) in text.split_whitespace().enumerate() {
            if n >= max {
                break;
            }
            let trimmed = raw.trim_matches(|c: char| ".,;:()[]{}<>\"'*`".contains(c));
            if trimmed.is_empty() {
                prev = None;
                continue;
            }
            let lower_prefix = trimmed.get(..8).map(str::to_ascii_lowercase);
            if let Some(p) = &lower_prefix
                && (p.starts_with("http://") || p.starts_with("https://") || p.starts_with("www."))
            {
                url(trimmed, &mut sink);
                prev = None;
                continue;
            }
            let chars = trimmed.chars().count();
            if chars < 3 {
                prev = None;
                continue;
            }
            if chars > 20 {
                let first = trimmed.chars().next().unwrap_or('?');
                sink.add(
                    kind::LONG,
                    &format!("{}{}:{}", k as char, first, chars / 10),
                );
                prev = None;
                continue;
            }
            let word = trimmed.to_lowercase();
            if word.bytes().all(|b| b.is_ascii_digit()) {
                sink.add(k, &format!("#num{}", word.len()));
                prev = None;
                continue;
            }
            sink.add(k, &word);
            if bigrams {
                if let Some(p) = &prev {
                    sink.add(kind::BIGRAM, &format!("{p} {word}"));
                }
                prev = Some(word);
            }
        }
        let mut out: Vec<u64> = sink.set.into_iter().collect();
        out.sort_unstable();
        out
    }

    #[test]
    fn words_hash_as_the_reference_tokenizer_does() {
        let texts = [
            "Free FREE free! Visit https://www.shop.example/buy-now today.",
            "ΟΔΥΣΣΕΥΣ and ΣΟΦΟΣ wrote; «Ελληνικά» κείμενα ΤΕΛΟΣ.",
            "www.abcé.example WWW.SHOP.EXAMPLE/x HTTPS://Bank.Example:443/login?a=1",
            "12345 000 x1 a ab abc Straße ÀÉÎÕÜ naïve café 이메일로 보내드립니다",
            "supercalifragilisticexpialidocious antidisestablishmentarianism ok",
            "(quoted) [bracketed] {braced} <angled> \"double\" 'single' *star* `tick`",
            "",
            "   \t\r\n  ",
        ];
        for text in texts {
            for (k, max, bigrams) in [(kind::WORD, 20_000, true), (kind::SUBJECT, 3, false)] {
                let mut sink = Sink {
                    set: HashSet::default(),
                };
                words(text, k, &mut sink, max, bigrams);
                let mut got: Vec<u64> = sink.set.into_iter().collect();
                got.sort_unstable();
                assert_eq!(got, words_reference(text, k, max, bigrams), "{text:?}");
            }
        }
        let h = Fnv::new(kind::BIGRAM).feed(b"ab").feed(b" ").feed(b"cd");
        assert_eq!(h.0, hash(kind::BIGRAM, b"ab cd"));
    }

    /// A long word's token, hashed from its pieces, is the hash of the
    /// text `format!` builds (trained models hold those).
    #[test]
    fn long_word_tokens_hash_what_format_builds() {
        for (k, first, chars) in [
            (kind::WORD, 'w', 21),
            (kind::SUBJECT, 'é', 99),
            (kind::WORD, '7', 100),
            (b'\xe9', 'x', 123_456),
            (kind::WORD, '😀', usize::MAX),
        ] {
            let mut sink = Sink {
                set: HashSet::default(),
            };
            sink.add_long(k, first, chars);
            let want = hash(
                kind::LONG,
                format!("{}{}:{}", k as char, first, chars / 10).as_bytes(),
            );
            assert_eq!(
                sink.set.into_iter().collect::<Vec<_>>(),
                [want],
                "{first} {chars}"
            );
        }
    }

    /// Tokens hashed as they are formatted are the hashes of the
    /// formatted text (trained models hold those).
    #[test]
    fn add_fmt_hashes_what_format_builds() {
        let mut sink = Sink {
            set: HashSet::default(),
        };
        sink.add_fmt(kind::LONG, format_args!("{}{}:{}", 'w', 'é', 3));
        sink.add_fmt(kind::FROM, format_args!("name:{}", "zoë"));
        sink.add_fmt(kind::WORD, format_args!("#num{}", 12));
        sink.add_fmt(kind::STRUCTURE, format_args!("images:{}", bucket(5)));
        let mut got: Vec<u64> = sink.set.into_iter().collect();
        got.sort_unstable();
        let mut want = vec![
            hash(kind::LONG, "wé:3".as_bytes()),
            hash(kind::FROM, "name:zoë".as_bytes()),
            hash(kind::WORD, b"#num12"),
            hash(kind::STRUCTURE, b"images:3"),
        ];
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn ascii_text_splits_as_split_whitespace_does() {
        let texts = [
            "",
            " ",
            "one",
            "  two  words  ",
            "a\tb\nc\rd\x0be\x0cf g",
            "\x1cnot\x1fspace\x7f \x00x",
            "trailing\n",
            "ÀÉ mixed\u{a0}nbsp and\u{2003}em",
        ];
        for text in texts {
            let ours: Vec<&str> = split_whitespace(text).collect();
            let std: Vec<&str> = text.split_whitespace().collect();
            assert_eq!(ours, std, "{text:?}");
        }
    }

    #[test]
    fn split_url_takes_the_host() {
        assert_eq!(
            split_url("HTTPS://User@Bank.Example:443/x?y"),
            Some(("https".into(), "bank.example".into(), "/x?y"))
        );
        assert_eq!(split_url("mailto:x@y"), None);
        assert_eq!(
            split_url("www.a.example"),
            Some(("http".into(), "www.a.example".into(), ""))
        );
    }
}
