//! Text analysis: the one place that turns text into index terms, used
//! alike for documents, queries and snippets (so the three always agree).
//!
//! 1. Unicode word segmentation (UAX #29, `unicode-segmentation`).
//! 2. Folding: compatibility decomposition (NFKD), combining marks dropped
//!    (so "Việt" and "viet" are one term), a few letters that do not
//!    decompose mapped by hand (`đ`→`d`, `ø`→`o`, `ł`→`l`, `ß`→`ss`, ...),
//!    lower case.
//! 3. Hangul, kana and Han text (no spaces between words, particles glued
//!    to nouns) is indexed as overlapping bigrams plus unigrams: "이메일로"
//!    gives 이메 메일 일로 at positions 0, 1, 2 (and 이, 메, 일, 로), so the
//!    query "이메일" (이메 메일 at 0, 1) matches as a phrase.
//! 4. Words joined by `.`, `_`, `'` or `:` ("example.com", "john.smith")
//!    are one term, and each part is a term too, at consecutive positions.
//! 5. `local@domain` gives one more term, the whole address.
//! 6. Alphabetic words are stemmed (Snowball) in the language detected for
//!    the text ([`detect_language`]: a cheap English test, else
//!    whatlang); queries are expanded to every stem the account's
//!    documents may have used, so a query needs no language.
//!
//! Word segmentation is exactly UAX #29's ([`for_each_word`] takes a
//! byte-class path for ASCII runs between ASCII spaces). The analysis
//! (`Segmenter`) hands folded terms with their stemming language to an
//! `Emit` receiver: [`Analyzer`] stems them through a cache and hands
//! tokens to a sink (queries, snippets); the index's batches look them
//! up in a per-thread word table (`index.rs`).
//!
//! Positions count words: a term's position is the index of the word it
//! came from within its field, so phrases match exactly on adjacency.

use std::borrow::Cow;

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;
use unicode_segmentation::UnicodeSegmentation;

use crate::fasthash::FastMap;

/// Longer terms are not indexed (their position still counts).
pub const MAX_TERM_BYTES: usize = 64;

/// Bytes of a text sampled for language detection.
const DETECT_SAMPLE_BYTES: usize = 384;

/// What a token is, relative to the words of the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A word (a CJK bigram, or a lone CJK character). Phrases are made of
    /// these.
    Word,
    /// One part of a word joined by `.`, `_`, `'` or `:`.
    Part,
    /// A whole address `local@domain`, spanning `span` positions from its
    /// own.
    Joined {
        /// Positions covered.
        span: u32,
    },
    /// One character of a CJK run longer than one character.
    Unigram,
}

/// One token handed to a sink.
#[derive(Debug, Clone, Copy)]
pub struct Tok<'a> {
    /// The term (folded, stemmed when a language was given).
    pub term: &'a str,
    /// Word position in the field.
    pub pos: u32,
    /// The kind.
    pub kind: TokenKind,
    /// Byte offset of the source text where the token starts.
    pub start: usize,
    /// Byte offset where it ends.
    pub end: usize,
}

/// An owned token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The term.
    pub term: String,
    /// Word position.
    pub pos: u32,
    /// The kind.
    pub kind: TokenKind,
    /// Byte range in the source text.
    pub start: usize,
    /// End of the byte range.
    pub end: usize,
}

/// Languages with a stemmer. The discriminant is the bit in an account's
/// language set (part of the index format).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Language {
    /// English.
    English = 0,
    /// French.
    French = 1,
    /// German.
    German = 2,
    /// Spanish.
    Spanish = 3,
    /// Italian.
    Italian = 4,
    /// Portuguese.
    Portuguese = 5,
    /// Dutch.
    Dutch = 6,
    /// Swedish.
    Swedish = 7,
    /// Danish.
    Danish = 8,
    /// Norwegian.
    Norwegian = 9,
    /// Finnish.
    Finnish = 10,
    /// Hungarian.
    Hungarian = 11,
    /// Romanian.
    Romanian = 12,
    /// Russian.
    Russian = 13,
    /// Turkish.
    Turkish = 14,
    /// Greek.
    Greek = 15,
    /// Arabic.
    Arabic = 16,
    /// Tamil.
    Tamil = 17,
}

impl Language {
    /// Every language with a stemmer.
    pub const ALL: [Language; 18] = [
        Language::English,
        Language::French,
        Language::German,
        Language::Spanish,
        Language::Italian,
        Language::Portuguese,
        Language::Dutch,
        Language::Swedish,
        Language::Danish,
        Language::Norwegian,
        Language::Finnish,
        Language::Hungarian,
        Language::Romanian,
        Language::Russian,
        Language::Turkish,
        Language::Greek,
        Language::Arabic,
        Language::Tamil,
    ];

    fn algorithm(self) -> rust_stemmers::Algorithm {
        use rust_stemmers::Algorithm as A;
        match self {
            Language::English => A::English,
            Language::French => A::French,
            Language::German => A::German,
            Language::Spanish => A::Spanish,
            Language::Italian => A::Italian,
            Language::Portuguese => A::Portuguese,
            Language::Dutch => A::Dutch,
            Language::Swedish => A::Swedish,
            Language::Danish => A::Danish,
            Language::Norwegian => A::Norwegian,
            Language::Finnish => A::Finnish,
            Language::Hungarian => A::Hungarian,
            Language::Romanian => A::Romanian,
            Language::Russian => A::Russian,
            Language::Turkish => A::Turkish,
            Language::Greek => A::Greek,
            Language::Arabic => A::Arabic,
            Language::Tamil => A::Tamil,
        }
    }

    /// The stemming language of a language whatlang names, if it has one.
    pub fn from_whatlang(lang: whatlang::Lang) -> Option<Language> {
        use whatlang::Lang as L;
        Some(match lang {
            L::Eng => Language::English,
            L::Fra => Language::French,
            L::Deu => Language::German,
            L::Spa => Language::Spanish,
            L::Ita => Language::Italian,
            L::Por => Language::Portuguese,
            L::Nld => Language::Dutch,
            L::Swe => Language::Swedish,
            L::Dan => Language::Danish,
            L::Nob => Language::Norwegian,
            L::Fin => Language::Finnish,
            L::Hun => Language::Hungarian,
            L::Ron => Language::Romanian,
            L::Rus => Language::Russian,
            L::Tur => Language::Turkish,
            L::Ell => Language::Greek,
            L::Ara => Language::Arabic,
            L::Tam => Language::Tamil,
            _ => return None,
        })
    }

    /// This language's bit in a [`LanguageSet`].
    pub fn bit(self) -> u32 {
        1 << self as u8
    }

    /// The stem of a folded word.
    pub fn stem(self, word: &str) -> Cow<'_, str> {
        rust_stemmers::Stemmer::create(self.algorithm()).stem(word)
    }
}

/// A set of languages, one bit each.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LanguageSet(pub u32);

impl LanguageSet {
    /// Adds a language.
    pub fn insert(&mut self, lang: Language) {
        self.0 |= lang.bit();
    }

    /// The languages in the set.
    pub fn iter(self) -> impl Iterator<Item = Language> {
        Language::ALL
            .into_iter()
            .filter(move |l| self.0 & l.bit() != 0)
    }
}

/// The language of `text` for stemming, from its first
/// `DETECT_SAMPLE_BYTES` (384) bytes:
///
/// 1. English when the sample passes [`looks_english`] (letters at least
///    97 % ASCII, at least four words outside URLs and addresses, at
///    least one in seven of them a frequent English function word).
///    whatlang's answer on such a sample is English too, or unreliable,
///    which step 3 turns into English: the test only skips the cost of
///    asking (whatlang compares the sample with the 300-trigram profile
///    of every language of its script, some 90 µs per call whatever the
///    sample's length).
///    English too when the sample's letters are at least 97 % ASCII but
///    it has no word to detect a language from ([`Cheap::Wordless`]:
///    machine filler, encoded data, bare links), which is what step 3
///    answers for whatlang's unreliable guesses on such samples.
/// 2. Otherwise whatlang (every language it knows, no allowlist): its
///    language when the detection is reliable and the language has a
///    stemmer ([`Language`]); none for a reliable language without one
///    (Vietnamese, Polish, Czech, Indonesian, Catalan, Ukrainian, ...).
/// 3. English when the detection is unreliable and the sample is Latin
///    script with letters at least 97 % ASCII; otherwise none.
///
/// On the SpamAssassin corpus (6,130 texts a document detects: first
/// body parts with text, later parts, attachment texts) step 1 decides
/// 92.5 % of the texts and the result differs from whatlang's alone on 2
/// (English quoted above a Finnish reply); an allowlist of 33 languages
/// for whatlang instead differed on 4 and saved 12 % of its time
/// (`tests/detect.rs` measures both). Queries are expanded to the stems
/// of every language the account's documents were detected in, so a
/// detection that differs costs no recall.
pub fn detect_language(text: &str) -> Option<Language> {
    let mut end = text.len().min(DETECT_SAMPLE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let sample = &text[..end];
    match cheap_test(sample) {
        Cheap::English | Cheap::Wordless => Some(Language::English),
        Cheap::Ask => whatlang_language(whatlang::detect(sample)?, sample),
    }
}

/// Steps 2 and 3 of [`detect_language`]: the stemming language of
/// whatlang's answer `info` about `sample`.
pub fn whatlang_language(info: whatlang::Info, sample: &str) -> Option<Language> {
    if info.is_reliable() {
        return Language::from_whatlang(info.lang());
    }
    if info.script() != whatlang::Script::Latin {
        return None;
    }
    let (mut ascii, mut letters) = (0usize, 0usize);
    for c in sample.chars().filter(|c| c.is_alphabetic()) {
        letters += 1;
        ascii += c.is_ascii() as usize;
    }
    (letters > 0 && ascii * 100 >= letters * 97).then_some(Language::English)
}

/// Frequent English function words (lower case, ASCII, at most eight
/// letters).
const ENGLISH_FUNCTION_WORDS: [&str; 82] = [
    "a", "an", "the", "and", "or", "but", "not", "no", "of", "to", "in", "on", "at", "by", "for",
    "from", "with", "as", "into", "about", "if", "so", "than", "then", "that", "this", "these",
    "those", "there", "here", "is", "are", "was", "were", "be", "been", "have", "has", "had", "do",
    "does", "did", "will", "would", "can", "could", "should", "may", "i", "you", "he", "she", "it",
    "we", "they", "me", "him", "her", "us", "them", "my", "your", "his", "its", "our", "their",
    "what", "which", "who", "when", "where", "how", "all", "any", "some", "more", "just", "only",
    "also", "very", "out", "up",
];

/// A word of up to eight bytes as a number (little-endian, zero-padded).
const fn word_code(w: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let mut i = 0;
    while i < w.len() {
        b[i] = w[i];
        i += 1;
    }
    u64::from_le_bytes(b)
}

/// [`ENGLISH_FUNCTION_WORDS`] as sorted [`word_code`]s.
const ENGLISH_CODES: [u64; ENGLISH_FUNCTION_WORDS.len()] = {
    let mut codes = [0u64; ENGLISH_FUNCTION_WORDS.len()];
    let mut i = 0;
    while i < codes.len() {
        codes[i] = word_code(ENGLISH_FUNCTION_WORDS[i].as_bytes());
        i += 1;
    }
    // Insertion sort (const context).
    let mut i = 1;
    while i < codes.len() {
        let mut j = i;
        while j > 0 && codes[j - 1] > codes[j] {
            let t = codes[j];
            codes[j] = codes[j - 1];
            codes[j - 1] = t;
            j -= 1;
        }
        i += 1;
    }
    codes
};

/// Whether a lower-case ASCII word of up to eight letters is an English
/// function word.
fn english_function_word(w: &[u8]) -> bool {
    ENGLISH_CODES.binary_search(&word_code(w)).is_ok()
}

/// The longest run of letters [`cheap_test`] takes for a word of a
/// language (longer runs are filler, identifiers or encoded data).
const LONGEST_WORD: usize = 24;

/// What [`cheap_test`] finds in a detection sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cheap {
    /// English words: at least four, one in seven a function word.
    English,
    /// Letters at least 97 % ASCII but no word to detect a language from:
    /// every run of letters is longer than 24 letters, or in a chunk with
    /// digits, or inside a URL or an address (filler such as `1XXXX…`,
    /// serial numbers, encoded data, link lists).
    Wordless,
    /// Neither: whatlang decides.
    Ask,
}

/// The cheap English test of [`detect_language`] (step 1): whether
/// [`cheap_test`] finds English.
pub fn looks_english(sample: &str) -> bool {
    cheap_test(sample) == Cheap::English
}

/// The cheap tests of [`detect_language`] (steps 1 and 2). English: letters
/// at least 97 % ASCII, and among the words (runs of letters) of the
/// chunks between ASCII spaces that are not URLs or addresses (no `/`,
/// `@`, `=` or `_`, not starting with `http` or `www.`), at least four
/// words and at least one in seven an English function word. Wordless:
/// letters at least 97 % ASCII and none of those words 24 letters or
/// shorter in a chunk without digits.
pub fn cheap_test(sample: &str) -> Cheap {
    let b = sample.as_bytes();
    let (mut words, mut hits, mut letters, mut ascii) = (0u32, 0u32, 0u32, 0u32);
    let mut natural = 0u32;
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let chunk = &b[start..i];
        let counted = !(chunk.iter().any(|c| matches!(c, b'/' | b'@' | b'=' | b'_'))
            || chunk.starts_with(b"http")
            || chunk.starts_with(b"www."));
        let digits = chunk.iter().any(u8::is_ascii_digit);
        // The current word: lower-case ASCII letters (up to 8), its
        // length, and whether it is all ASCII.
        let mut buf = [0u8; 8];
        let (mut len, mut plain) = (0usize, true);
        let mut j = 0;
        while j <= chunk.len() {
            let c = chunk.get(j).copied().unwrap_or(b' ');
            if c.is_ascii_alphabetic() {
                if len < buf.len() {
                    buf[len] = c.to_ascii_lowercase();
                }
                len += 1;
                letters += 1;
                ascii += 1;
                j += 1;
                continue;
            }
            if c >= 0x80 {
                let ch = sample[start + j..].chars().next().unwrap_or(' ');
                j += ch.len_utf8();
                if ch.is_alphabetic() {
                    len += 1;
                    letters += 1;
                    plain = false;
                    continue;
                }
            } else {
                j += 1;
            }
            if len > 0 && counted {
                words += 1;
                natural += (len <= LONGEST_WORD && !digits) as u32;
                hits += (plain && len <= buf.len() && english_function_word(&buf[..len])) as u32;
            }
            (len, plain) = (0, true);
        }
    }
    if letters == 0 || ascii * 100 < letters * 97 {
        Cheap::Ask
    } else if words >= 4 && hits * 7 >= words {
        Cheap::English
    } else if natural == 0 {
        Cheap::Wordless
    } else {
        Cheap::Ask
    }
}

/// Whether `c` belongs to a script written without spaces between words,
/// indexed by character n-grams: Hangul, Hiragana, Katakana, Han,
/// Bopomofo.
pub fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x1100..=0x11FF | 0x3130..=0x318F | 0xA960..=0xA97F | 0xAC00..=0xD7AF | 0xD7B0..=0xD7FF
        | 0x3040..=0x30FF | 0x31F0..=0x31FF | 0xFF66..=0xFF9F
        | 0x3400..=0x4DBF | 0x4E00..=0x9FFF | 0xF900..=0xFAFF | 0x20000..=0x323AF
        | 0x3100..=0x312F | 0x31A0..=0x31BF
        | 0x3005..=0x3007)
}

/// Word-break classes of ASCII bytes (UAX #29, WordBreakProperty.txt).
mod wb {
    pub const OTHER: u8 = 0;
    /// `A-Z a-z` (ALetter).
    pub const LETTER: u8 = 1;
    /// `0-9` (Numeric).
    pub const DIGIT: u8 = 2;
    /// `_` (ExtendNumLet).
    pub const EXTEND_NUM_LET: u8 = 3;
    /// `:` (MidLetter).
    pub const MID_LETTER: u8 = 4;
    /// `.` (MidNumLet) and `'` (Single_Quote): MidNumLetQ.
    pub const MID_NUM_LET_Q: u8 = 5;
    /// `,` `;` (MidNum).
    pub const MID_NUM: u8 = 6;
    /// Space, tab, LF, VT, FF, CR: a word boundary on both sides.
    pub const SPACE: u8 = 7;
    /// Any byte of a non-ASCII character.
    pub const NON_ASCII: u8 = 8;

    const fn classes() -> [u8; 256] {
        let mut t = [NON_ASCII; 256];
        let mut b = 0;
        while b < 128 {
            t[b] = match b as u8 {
                b'A'..=b'Z' | b'a'..=b'z' => LETTER,
                b'0'..=b'9' => DIGIT,
                b'_' => EXTEND_NUM_LET,
                b':' => MID_LETTER,
                b'.' | b'\'' => MID_NUM_LET_Q,
                b',' | b';' => MID_NUM,
                b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r' => SPACE,
                _ => OTHER,
            };
            b += 1;
        }
        t
    }

    pub static CLASS: [u8; 256] = classes();
}

/// Whether UAX #29 keeps `t[i - 1]` and `t[i]` in one word, for ASCII
/// text without spaces (rules WB5 to WB13b; the others concern classes
/// ASCII does not have, or spaces).
#[inline]
fn ascii_joins(t: &[u8], i: usize) -> bool {
    use wb::*;
    let class = |j: usize| t.get(j).map_or(OTHER, |&b| CLASS[b as usize]);
    let (x, y) = (class(i - 1), class(i));
    match (x, y) {
        // WB5, WB8, WB9, WB10.
        (LETTER | DIGIT, LETTER | DIGIT) => true,
        // WB13a, WB13b.
        (LETTER | DIGIT | EXTEND_NUM_LET, EXTEND_NUM_LET) | (EXTEND_NUM_LET, LETTER | DIGIT) => {
            true
        }
        // WB6: AHLetter × (MidLetter | MidNumLetQ) AHLetter.
        (LETTER, MID_LETTER | MID_NUM_LET_Q) if class(i + 1) == LETTER => true,
        // WB7: AHLetter (MidLetter | MidNumLetQ) × AHLetter.
        (MID_LETTER | MID_NUM_LET_Q, LETTER) if i >= 2 && class(i - 2) == LETTER => true,
        // WB12: Numeric × (MidNum | MidNumLetQ) Numeric.
        (DIGIT, MID_NUM | MID_NUM_LET_Q) if class(i + 1) == DIGIT => true,
        // WB11: Numeric (MidNum | MidNumLetQ) × Numeric.
        (MID_NUM | MID_NUM_LET_Q, DIGIT) if i >= 2 && class(i - 2) == DIGIT => true,
        _ => false,
    }
}

/// Calls `f(offset, word, is_ascii)` for every word of `text`, in order:
/// exactly the words of `text.unicode_word_indices()` (UAX #29 segments
/// holding a letter or digit), faster.
///
/// Between ASCII spaces (space, tab, LF, VT, FF, CR) UAX #29 always
/// breaks, and no rule looks across them at the classes ASCII words are
/// made of, so a run of ASCII bytes between spaces (or the text's ends)
/// segments the same alone as in its text: such runs take an ASCII path
/// (the rules WB5 to WB13b over a byte-class table). Everything else —
/// from the end of the previous ASCII run, spaces included, to the start
/// of the next — goes to `unicode_word_indices` as one piece, which
/// segments it as in the whole text for the same reason.
pub fn for_each_word<'t>(text: &'t str, mut f: impl FnMut(usize, &'t str, bool)) {
    let bytes = text.as_bytes();
    let n = bytes.len();
    // Start of the text not segmented yet that holds non-ASCII runs.
    let mut pending: Option<usize> = None;
    // End of the last ASCII run handled.
    let mut done = 0;
    let mut i = 0;
    while i < n {
        if wb::CLASS[bytes[i] as usize] == wb::SPACE {
            i += 1;
            continue;
        }
        let start = i;
        // The classes seen in the run, one bit each: one pass tells both
        // whether it is ASCII and whether it is letters and digits alone.
        let mut seen = 0u16;
        while i < n {
            let c = wb::CLASS[bytes[i] as usize];
            if c == wb::SPACE {
                break;
            }
            seen |= 1 << c;
            i += 1;
        }
        if seen & (1 << wb::NON_ASCII) != 0 {
            pending.get_or_insert(done);
            continue;
        }
        if let Some(from) = pending.take() {
            for (o, w) in text[from..start].unicode_word_indices() {
                f(from + o, w, w.is_ascii());
            }
        }
        let run = &bytes[start..i];
        // Letters and digits always join (WB5, WB8 to WB10): a run of
        // them alone, most words of most text, is one word.
        if seen & !((1 << wb::LETTER) | (1 << wb::DIGIT)) == 0 {
            f(start, &text[start..i], true);
            done = i;
            continue;
        }
        let mut seg = 0;
        let mut alnum = false;
        for j in 0..run.len() {
            if j > 0 && !ascii_joins(run, j) {
                if alnum {
                    f(start + seg, &text[start + seg..start + j], true);
                }
                seg = j;
                alnum = false;
            }
            alnum |= run[j].is_ascii_alphanumeric();
        }
        if alnum {
            f(start + seg, &text[start + seg..i], true);
        }
        done = i;
    }
    if let Some(from) = pending {
        for (o, w) in text[from..].unicode_word_indices() {
            f(from + o, w, w.is_ascii());
        }
    }
}

/// Folds a (non-CJK) word: NFKD, combining marks dropped, special letters
/// mapped, lower case. Pure ASCII takes a fast path.
pub fn fold_into(word: &str, out: &mut String) {
    out.clear();
    if word.is_ascii() {
        out.push_str(word);
        out.make_ascii_lowercase();
        return;
    }
    for c in word.nfkd() {
        match c {
            'đ' | 'Đ' | 'ð' | 'Ð' => out.push('d'),
            'ø' | 'Ø' => out.push('o'),
            'ł' | 'Ł' => out.push('l'),
            'ħ' | 'Ħ' => out.push('h'),
            'ı' => out.push('i'),
            'æ' | 'Æ' => out.push_str("ae"),
            'œ' | 'Œ' => out.push_str("oe"),
            'ß' | 'ẞ' => out.push_str("ss"),
            'þ' | 'Þ' => out.push_str("th"),
            'ſ' => out.push('s'),
            'ς' => out.push('σ'),
            '\u{2019}' | '\u{2018}' | '\u{02BC}' => out.push('\''),
            c if is_combining_mark(c) => {}
            c => out.extend(c.to_lowercase().filter(|l| !is_combining_mark(*l))),
        }
    }
}

/// Folds a whole string (for comparisons outside the index).
pub fn fold(s: &str) -> String {
    let mut out = String::new();
    fold_into(s, &mut out);
    out
}

const PART_SEPARATORS: [char; 4] = ['.', '_', '\'', ':'];

/// Whether a folded term is stemmed (when its text has a language): all
/// letters.
pub(crate) fn stemmable(term: &str) -> bool {
    if term.is_ascii() {
        return term.bytes().all(|b| b.is_ascii_alphabetic());
    }
    term.chars().all(char::is_alphabetic)
}

/// Receives the terms of an analysis ([`Segmenter::analyze`]), before
/// stemming: what turns them into index terms is up to the receiver
/// (stemming through a cache for [`Analyzer`], interning for the
/// indexer's batches).
pub(crate) trait Emit {
    /// A folded term; `stem` is the language to stem it in when it is
    /// [`stemmable`] (`None`: the term is final as it is).
    fn term(
        &mut self,
        term: &str,
        stem: Option<Language>,
        pos: u32,
        kind: TokenKind,
        start: usize,
        end: usize,
    );
}

/// The buffers of an analysis: segmentation, folding, CJK runs,
/// addresses. Stemming is the receiver's ([`Emit`]).
#[derive(Debug, Default)]
pub(crate) struct Segmenter {
    folded: String,
    prev: String,
    joined: String,
    cjk: Vec<(usize, char)>,
}

/// Reusable analysis state (buffers). Cheap to create; reuse it on hot
/// paths to avoid allocations.
#[derive(Debug, Default)]
pub struct Analyzer {
    segmenter: Segmenter,
    stemmed: String,
    /// Stems already computed, per language (by discriminant): words
    /// repeat (Zipf), stemming is the costliest step per word.
    stems: Vec<FastMap<Box<str>, Option<Box<str>>>>,
}

/// Entries kept in an analyzer's stem cache before it starts afresh.
const STEM_CACHE: usize = 200_000;

/// Stems `term` in `lang` into `buf` (through `cache`); false when the
/// stem is the term itself or the term is not stemmable.
fn stem_cached(
    cache: &mut Vec<FastMap<Box<str>, Option<Box<str>>>>,
    lang: Option<Language>,
    term: &str,
    buf: &mut String,
) -> bool {
    let Some(l) = lang else {
        return false;
    };
    if !stemmable(term) {
        return false;
    }
    if cache.len() <= l as usize {
        cache.resize_with(l as usize + 1, FastMap::default);
    }
    let cache = &mut cache[l as usize];
    // One lookup for a word seen before (the common case).
    let stem = match cache.get(term) {
        Some(stem) => stem.as_deref(),
        None => {
            if cache.len() >= STEM_CACHE {
                cache.clear();
            }
            let s = l.stem(term);
            let v = (s != term).then(|| Box::<str>::from(s.as_ref()));
            cache.entry(term.into()).or_insert(v).as_deref()
        }
    };
    match stem {
        Some(s) => {
            buf.clear();
            buf.push_str(s);
            true
        }
        None => false,
    }
}

/// [`Analyzer::analyze`]'s receiver: stems through the cache, hands
/// tokens to the sink.
struct SinkEmit<'a, 's> {
    stems: &'a mut Vec<FastMap<Box<str>, Option<Box<str>>>>,
    stemmed: &'a mut String,
    sink: &'s mut dyn FnMut(Tok<'_>),
}

impl Emit for SinkEmit<'_, '_> {
    fn term(
        &mut self,
        term: &str,
        stem: Option<Language>,
        pos: u32,
        kind: TokenKind,
        start: usize,
        end: usize,
    ) {
        let term = if stem_cached(self.stems, stem, term, self.stemmed) {
            self.stemmed.as_str()
        } else {
            term
        };
        (self.sink)(Tok {
            term,
            pos,
            kind,
            start,
            end,
        });
    }
}

struct Run<'t> {
    text: &'t str,
    stem: Option<Language>,
    pos: u32,
    /// Folded previous word, its position and byte range, for addresses.
    prev_word: Option<(u32, usize, usize)>,
    cjk_end: usize,
}

impl Analyzer {
    /// A new analyzer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Analyzes `text`, numbering words from `pos`, stemming in `stem`;
    /// hands every token to `sink` and returns the position after the last
    /// word.
    pub fn analyze(
        &mut self,
        text: &str,
        stem: Option<Language>,
        pos: u32,
        sink: &mut dyn FnMut(Tok<'_>),
    ) -> u32 {
        let mut emit = SinkEmit {
            stems: &mut self.stems,
            stemmed: &mut self.stemmed,
            sink,
        };
        self.segmenter.analyze(text, stem, pos, &mut emit)
    }

    /// Every token of `text`, owned (for queries and snippets).
    pub fn tokens(&mut self, text: &str, stem: Option<Language>) -> Vec<Token> {
        let mut out = Vec::new();
        self.analyze(text, stem, 0, &mut |t| {
            out.push(Token {
                term: t.term.to_string(),
                pos: t.pos,
                kind: t.kind,
                start: t.start,
                end: t.end,
            })
        });
        out
    }
}

impl Segmenter {
    /// Analyzes `text`, numbering words from `pos`, with `stem` as the
    /// stemming language of its words; hands every term to `emit` and
    /// returns the position after the last word.
    pub(crate) fn analyze<E: Emit>(
        &mut self,
        text: &str,
        stem: Option<Language>,
        pos: u32,
        emit: &mut E,
    ) -> u32 {
        let mut run = Run {
            text,
            stem,
            pos,
            prev_word: None,
            cjk_end: 0,
        };
        self.cjk.clear();
        for_each_word(text, |offset, word, ascii| {
            if ascii {
                self.word(&mut run, emit, offset, offset + word.len());
                return;
            }
            let mut seg_start = 0;
            let mut seg_cjk: Option<bool> = None;
            for (i, c) in word.char_indices() {
                let cjk = is_cjk(c);
                if seg_cjk != Some(cjk) {
                    if seg_cjk == Some(false) {
                        self.word(&mut run, emit, offset + seg_start, offset + i);
                    }
                    seg_cjk = Some(cjk);
                    seg_start = i;
                }
                if cjk {
                    let at = offset + i;
                    if !self.cjk.is_empty() && run.cjk_end != at {
                        self.flush_cjk(&mut run, emit);
                    }
                    self.cjk.push((at, c));
                    run.cjk_end = at + c.len_utf8();
                }
            }
            if seg_cjk == Some(false) {
                self.word(&mut run, emit, offset + seg_start, offset + word.len());
            }
        });
        self.flush_cjk(&mut run, emit);
        run.pos
    }

    fn word<E: Emit>(&mut self, run: &mut Run<'_>, emit: &mut E, start: usize, end: usize) {
        self.flush_cjk(run, emit);
        let text = &run.text[start..end];
        // Folding keeps an ASCII word's length: one too long for a term
        // (base64, hex) is skipped without folding it.
        if text.len() > MAX_TERM_BYTES && text.is_ascii() {
            run.pos += 1;
            run.prev_word = None;
            return;
        }
        fold_into(text, &mut self.folded);
        if self.folded.is_empty() {
            return;
        }
        if self.folded.len() > MAX_TERM_BYTES {
            run.pos += 1;
            run.prev_word = None;
            return;
        }
        let p = run.pos;
        emit.term(&self.folded, run.stem, p, TokenKind::Word, start, end);
        let mut parts = 0u32;
        if self
            .folded
            .bytes()
            .any(|b| matches!(b, b'.' | b'_' | b'\'' | b':'))
        {
            let count = self
                .folded
                .split(PART_SEPARATORS)
                .filter(|s| !s.is_empty())
                .count();
            if count >= 2 {
                for part in self.folded.split(PART_SEPARATORS).filter(|s| !s.is_empty()) {
                    emit.term(part, run.stem, p + parts, TokenKind::Part, start, end);
                    parts += 1;
                }
            }
        }
        run.pos += parts.max(1);
        if let Some((prev_pos, prev_start, prev_end)) = run.prev_word
            && run.text.get(prev_end..start) == Some("@")
        {
            self.joined.clear();
            self.joined.push_str(&self.prev);
            self.joined.push('@');
            self.joined.push_str(&self.folded);
            if self.joined.len() <= MAX_TERM_BYTES {
                emit.term(
                    &self.joined,
                    None,
                    prev_pos,
                    TokenKind::Joined {
                        span: run.pos - prev_pos,
                    },
                    prev_start,
                    end,
                );
            }
        }
        std::mem::swap(&mut self.prev, &mut self.folded);
        run.prev_word = Some((p, start, end));
    }

    fn flush_cjk<E: Emit>(&mut self, run: &mut Run<'_>, emit: &mut E) {
        let n = self.cjk.len();
        if n == 0 {
            return;
        }
        run.prev_word = None;
        let p = run.pos;
        let mut buf = [0u8; 8];
        if n == 1 {
            let (at, c) = self.cjk[0];
            emit.term(
                c.encode_utf8(&mut buf),
                None,
                p,
                TokenKind::Word,
                at,
                at + c.len_utf8(),
            );
        } else {
            for i in 0..n - 1 {
                let (a, c1) = self.cjk[i];
                let (b, c2) = self.cjk[i + 1];
                self.joined.clear();
                self.joined.push(c1);
                self.joined.push(c2);
                emit.term(
                    &self.joined,
                    None,
                    p + i as u32,
                    TokenKind::Word,
                    a,
                    b + c2.len_utf8(),
                );
            }
            for (i, &(at, c)) in self.cjk.iter().enumerate() {
                emit.term(
                    c.encode_utf8(&mut buf),
                    None,
                    p + i as u32,
                    TokenKind::Unigram,
                    at,
                    at + c.len_utf8(),
                );
            }
        }
        run.pos += n as u32;
        self.cjk.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str, stem: Option<Language>) -> Vec<(String, u32, TokenKind)> {
        let mut t: Vec<_> = Analyzer::new()
            .tokens(text, stem)
            .into_iter()
            .map(|t| (t.term, t.pos, t.kind))
            .collect();
        t.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        t
    }

    fn words(text: &str) -> Vec<String> {
        Analyzer::new()
            .tokens(text, None)
            .into_iter()
            .filter(|t| t.kind == TokenKind::Word)
            .map(|t| t.term)
            .collect()
    }

    #[test]
    fn folds_case_and_diacritics() {
        assert_eq!(words("Việt Nam"), ["viet", "nam"]);
        assert_eq!(words("Đà Nẵng ĐƯỜNG"), ["da", "nang", "duong"]);
        assert_eq!(words("Straße Ærø Łódź"), ["strasse", "aero", "lodz"]);
        assert_eq!(words("ﬁle ＡＢＣ"), ["file", "abc"]);
        assert_eq!(words("ΟΔΟΣ"), ["οδοσ"]);
    }

    #[test]
    fn hangul_runs_become_bigrams_and_unigrams() {
        let t = terms("이메일로 보냄", None);
        let w: Vec<_> = t
            .iter()
            .filter(|x| x.2 == TokenKind::Word)
            .map(|x| (x.0.as_str(), x.1))
            .collect();
        assert_eq!(w, [("이메", 0), ("메일", 1), ("일로", 2), ("보냄", 4)]);
        let u: Vec<_> = t
            .iter()
            .filter(|x| x.2 == TokenKind::Unigram)
            .map(|x| x.1)
            .collect();
        assert_eq!(u, [0, 1, 2, 3, 4, 5]);
        // A lone character is a word.
        assert_eq!(words("책 주세요"), ["책", "주세", "세요"]);
        // Han characters, each its own UAX #29 word, join into one run.
        assert_eq!(words("東京都"), ["東京", "京都"]);
    }

    #[test]
    fn mixed_scripts_split_runs() {
        assert_eq!(words("Gmail로 send"), ["gmail", "로", "send"]);
    }

    #[test]
    fn dotted_words_have_parts_and_addresses_join() {
        let t = terms("Mail John.Smith@Example.com now", None);
        let expected = vec![
            ("mail".to_string(), 0, TokenKind::Word),
            ("john".into(), 1, TokenKind::Part),
            ("john.smith".into(), 1, TokenKind::Word),
            (
                "john.smith@example.com".into(),
                1,
                TokenKind::Joined { span: 4 },
            ),
            ("smith".into(), 2, TokenKind::Part),
            ("example".into(), 3, TokenKind::Part),
            ("example.com".into(), 3, TokenKind::Word),
            ("com".into(), 4, TokenKind::Part),
            ("now".into(), 5, TokenKind::Word),
        ];
        assert_eq!(t, expected);
    }

    #[test]
    fn stems_alphabetic_words_only() {
        assert_eq!(
            Analyzer::new()
                .tokens("Running meetings mp3 running.fast", Some(Language::English))
                .into_iter()
                .map(|t| t.term)
                .collect::<Vec<_>>(),
            ["run", "meet", "mp3", "running.fast", "run", "fast"]
        );
    }

    #[test]
    fn long_terms_are_skipped_but_counted() {
        let long = "x".repeat(MAX_TERM_BYTES + 1);
        let t = terms(&format!("a {long} b"), None);
        assert_eq!(
            t,
            vec![
                ("a".into(), 0, TokenKind::Word),
                ("b".into(), 2, TokenKind::Word)
            ]
        );
    }

    fn uax29(text: &str) -> Vec<(usize, String)> {
        text.unicode_word_indices()
            .map(|(o, w)| (o, w.to_string()))
            .collect()
    }

    fn fast(text: &str) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for_each_word(text, |o, w, ascii| {
            assert_eq!(ascii, w.is_ascii(), "{w:?}");
            out.push((o, w.to_string()));
        });
        out
    }

    #[test]
    fn word_segmentation_is_uax29() {
        for text in [
            "",
            " ",
            "a",
            "john.smith@example.com, x_y 3.14 1,000 it's a:b a::b a.b.c",
            "a. .a 'a a' a'b 1.a a.1 1_a _a_ __ a_1 1,2,3 1;2 1.2.3 a:1 1:2",
            "e.g. U.S.A. v1.2.3-rc1 foo_bar.baz 'quoted' \"dq\"",
            "Việt Nam, đường. Straße: Ærø's café. naïve",
            "이메일로 보냄, 東京都 and ｶﾀｶﾅ ｶﾀ",
            "a\u{301}b a \u{301}b \u{93E}a a\u{200B}b a\u{00A0}b a\u{200D}b",
            "x\ty\r\nz\u{b}w\u{c}v",
            "🇫🇷🇩🇪 a👍🏽b tel:+1-555 http://x.example/a_b?c=d&e=f",
            "א'ב \"אב\" 2'3",
        ] {
            assert_eq!(fast(text), uax29(text), "{text:?}");
        }
    }

    #[test]
    fn word_segmentation_is_uax29_on_random_text() {
        // Bytes of every ASCII word-break class, spaces, and non-ASCII
        // characters next to them (letters, marks, format characters,
        // CJK, a no-break space).
        let alphabet: Vec<char> = "aZk09_.:',;\"-@/ \t\n\r\u{b}"
            .chars()
            .chain([
                'é', '\u{301}', '\u{93E}', '\u{200B}', '\u{200D}', '\u{A0}', '中', 'ｶ', 'א', '🇫',
                '👍',
            ])
            .collect();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 24) as usize;
            let text: String = (0..len)
                .map(|_| {
                    // Mostly ASCII, as mail is.
                    let r = next() as usize;
                    if r.is_multiple_of(8) {
                        alphabet[r / 8 % alphabet.len()]
                    } else {
                        alphabet[r / 8 % 20]
                    }
                })
                .collect();
            assert_eq!(fast(&text), uax29(&text), "{text:?}");
        }
    }

    #[test]
    fn languages_are_listed_by_discriminant() {
        for (i, l) in Language::ALL.iter().enumerate() {
            assert_eq!(*l as usize, i);
        }
    }

    #[test]
    fn english_test_wants_function_words_in_ascii_text() {
        for w in ENGLISH_FUNCTION_WORDS {
            assert!(english_function_word(w.as_bytes()), "{w}");
        }
        for w in ["thee", "xyz", "", "ve", "der", "und", "les"] {
            assert!(!english_function_word(w.as_bytes()), "{w}");
        }
        assert!(looks_english("Please send me the report when you can."));
        // Filler (Postfix's smtp-source), serial numbers, bare links: no
        // words.
        let filler: String = (0..5)
            .map(|i| format!("{}{}\n", i % 10, "X".repeat(78)))
            .collect();
        let serials = "4711-XK9 AB12CD34EF56 x86_64 #3f9a0c7e";
        let links = "https://example.com/a/b?c=d www.example.org/index.html";
        for wordless in [filler.as_str(), serials, links] {
            assert_eq!(cheap_test(wordless), Cheap::Wordless, "{wordless}");
            assert_eq!(detect_language(wordless), Some(Language::English));
            // What asking whatlang would have given: an unreliable guess.
            assert!(whatlang::detect(wordless).is_none_or(|i| !i.is_reliable()));
        }
        assert_eq!(cheap_test("Meeting at 10"), Cheap::Ask);
        assert_eq!(cheap_test("Täglich frische Brötchen"), Cheap::Ask);
        assert_eq!(cheap_test("12345 67890"), Cheap::Ask);
        // Too few words; URLs and addresses do not count.
        assert!(!looks_english("Meeting at 10"));
        assert!(!looks_english(
            "http://a.example/the/and/of me@the.example x y z"
        ));
        // Letters not ASCII enough, or no function words.
        assert!(!looks_english(
            "Chúng tôi sẽ gặp nhau ở Hà Nội vào tuần sau."
        ));
        assert!(!looks_english(
            "Wir treffen uns morgen früh im Büro zur Besprechung."
        ));
        assert!(!looks_english(
            "Lorem ipsum dolor sit amet consectetur adipiscing elit"
        ));
    }

    #[test]
    fn detects_languages() {
        assert_eq!(
            detect_language(
                "The meeting is moved to Thursday afternoon because the projector is broken."
            ),
            Some(Language::English)
        );
        assert_eq!(
            detect_language(
                "Chúng tôi sẽ gặp nhau ở Hà Nội vào tuần sau để bàn về dự án mới của công ty."
            ),
            None
        );
        assert_eq!(
            detect_language("다음 주에 회의실에서 프로젝트 일정을 다시 논의하겠습니다."),
            None
        );
        assert_eq!(
            detect_language(
                "Nous avons reçu votre commande et elle sera expédiée demain matin par la poste."
            ),
            Some(Language::French)
        );
        assert_eq!(detect_language("Lunch?"), Some(Language::English));
    }
}
