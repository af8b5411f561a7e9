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
//!    the text; queries are expanded to every stem the account's documents
//!    may have used, so a query needs no language.
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

    fn from_whatlang(lang: whatlang::Lang) -> Option<Language> {
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

/// The language of `text` for stemming: the detected language when the
/// detection is reliable and the language has a stemmer; English for
/// short, unreliable samples of plain ASCII Latin text; otherwise none.
pub fn detect_language(text: &str) -> Option<Language> {
    let mut end = text.len().min(DETECT_SAMPLE_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let sample = &text[..end];
    let info = whatlang::detect(sample)?;
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

/// Folds a (non-CJK) word: NFKD, combining marks dropped, special letters
/// mapped, lower case. Pure ASCII takes a fast path.
pub fn fold_into(word: &str, out: &mut String) {
    out.clear();
    if word.is_ascii() {
        out.extend(word.bytes().map(|b| b.to_ascii_lowercase() as char));
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

fn stemmable(term: &str) -> bool {
    term.chars().all(char::is_alphabetic)
}

/// Reusable analysis state (buffers). Cheap to create; reuse it on hot
/// paths to avoid allocations.
#[derive(Debug, Default)]
pub struct Analyzer {
    folded: String,
    prev: String,
    stemmed: String,
    joined: String,
    cjk: Vec<(usize, char)>,
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

struct Run<'t, 's> {
    text: &'t str,
    stem: Option<Language>,
    pos: u32,
    /// Folded previous word, its position and byte range, for addresses.
    prev_word: Option<(u32, usize, usize)>,
    cjk_end: usize,
    sink: &'s mut dyn FnMut(Tok<'_>),
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
        let mut run = Run {
            text,
            stem,
            pos,
            prev_word: None,
            cjk_end: 0,
            sink,
        };
        self.cjk.clear();
        for (offset, word) in text.unicode_word_indices() {
            let mut seg_start = 0;
            let mut seg_cjk: Option<bool> = None;
            for (i, c) in word.char_indices() {
                let cjk = is_cjk(c);
                if seg_cjk != Some(cjk) {
                    if seg_cjk == Some(false) {
                        self.word(&mut run, offset + seg_start, offset + i);
                    }
                    seg_cjk = Some(cjk);
                    seg_start = i;
                }
                if cjk {
                    let at = offset + i;
                    if !self.cjk.is_empty() && run.cjk_end != at {
                        self.flush_cjk(&mut run);
                    }
                    self.cjk.push((at, c));
                    run.cjk_end = at + c.len_utf8();
                }
            }
            if seg_cjk == Some(false) {
                self.word(&mut run, offset + seg_start, offset + word.len());
            }
        }
        self.flush_cjk(&mut run);
        run.pos
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

    fn word(&mut self, run: &mut Run<'_, '_>, start: usize, end: usize) {
        self.flush_cjk(run);
        fold_into(&run.text[start..end], &mut self.folded);
        if self.folded.is_empty() {
            return;
        }
        if self.folded.len() > MAX_TERM_BYTES {
            run.pos += 1;
            run.prev_word = None;
            return;
        }
        let p = run.pos;
        let whole = if stem_cached(&mut self.stems, run.stem, &self.folded, &mut self.stemmed) {
            self.stemmed.as_str()
        } else {
            self.folded.as_str()
        };
        (run.sink)(Tok {
            term: whole,
            pos: p,
            kind: TokenKind::Word,
            start,
            end,
        });
        let mut parts = 0u32;
        if self.folded.contains(PART_SEPARATORS) {
            let count = self
                .folded
                .split(PART_SEPARATORS)
                .filter(|s| !s.is_empty())
                .count();
            if count >= 2 {
                for part in self.folded.split(PART_SEPARATORS).filter(|s| !s.is_empty()) {
                    let term = if stem_cached(&mut self.stems, run.stem, part, &mut self.stemmed) {
                        self.stemmed.as_str()
                    } else {
                        part
                    };
                    (run.sink)(Tok {
                        term,
                        pos: p + parts,
                        kind: TokenKind::Part,
                        start,
                        end,
                    });
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
                (run.sink)(Tok {
                    term: &self.joined,
                    pos: prev_pos,
                    kind: TokenKind::Joined {
                        span: run.pos - prev_pos,
                    },
                    start: prev_start,
                    end,
                });
            }
        }
        std::mem::swap(&mut self.prev, &mut self.folded);
        run.prev_word = Some((p, start, end));
    }

    fn flush_cjk(&mut self, run: &mut Run<'_, '_>) {
        let n = self.cjk.len();
        if n == 0 {
            return;
        }
        run.prev_word = None;
        let p = run.pos;
        let mut buf = [0u8; 8];
        if n == 1 {
            let (at, c) = self.cjk[0];
            (run.sink)(Tok {
                term: c.encode_utf8(&mut buf),
                pos: p,
                kind: TokenKind::Word,
                start: at,
                end: at + c.len_utf8(),
            });
        } else {
            for i in 0..n - 1 {
                let (a, c1) = self.cjk[i];
                let (b, c2) = self.cjk[i + 1];
                self.joined.clear();
                self.joined.push(c1);
                self.joined.push(c2);
                (run.sink)(Tok {
                    term: &self.joined,
                    pos: p + i as u32,
                    kind: TokenKind::Word,
                    start: a,
                    end: b + c2.len_utf8(),
                });
            }
            for (i, &(at, c)) in self.cjk.iter().enumerate() {
                (run.sink)(Tok {
                    term: c.encode_utf8(&mut buf),
                    pos: p + i as u32,
                    kind: TokenKind::Unigram,
                    start: at,
                    end: at + c.len_utf8(),
                });
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
