//! Queries: a tree of text conditions under AND/OR/NOT, evaluated to the
//! set of matching document ids of one account.
//!
//! A text condition's string (RFC 8621 section 4.4.1) is split into
//! *chunks*: a quoted string (`"..."` or `'...'`, `\` escapes `"`, `'` and
//! `\`) is one phrase; outside quotes, white space separates chunks. Every
//! chunk must match, each in any field of the condition. A chunk that
//! analyzes to several words ("e-mail", "이메일", a quoted phrase) matches
//! only where those words are adjacent and in order in one field. A word
//! matches its stems too: the index holds stems in each document's
//! language, and the query looks up the word's stem in every language the
//! account's documents use.

use roaring::RoaringBitmap;
use tern_store::{AccountId, DocumentId, MailStore, email};

use crate::analyze::{Analyzer, LanguageSet, TokenKind, fold};
use crate::doc::Field;
use crate::index::{SearchIndex, expand};
use crate::postings;
use crate::{Error, Result};

/// Which fields a text condition searches (RFC 8621 filter properties,
/// plus attachment names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TextField {
    /// `text`: every field.
    Text,
    /// `from`.
    From,
    /// `to`.
    To,
    /// `cc`.
    Cc,
    /// `bcc`.
    Bcc,
    /// `subject`.
    Subject,
    /// `body`: the body parts and the text of text attachments.
    Body,
    /// Attachment file names.
    AttachmentName,
}

impl TextField {
    /// The index fields searched.
    pub fn fields(self) -> &'static [Field] {
        match self {
            TextField::Text => &[
                Field::From,
                Field::To,
                Field::Cc,
                Field::Bcc,
                Field::Subject,
                Field::Body,
                Field::AttachmentName,
                Field::AttachmentText,
            ],
            TextField::From => &[Field::From],
            TextField::To => &[Field::To],
            TextField::Cc => &[Field::Cc],
            TextField::Bcc => &[Field::Bcc],
            TextField::Subject => &[Field::Subject],
            TextField::Body => &[Field::Body, Field::AttachmentText],
            TextField::AttachmentName => &[Field::AttachmentName],
        }
    }

    /// Whether matches of this condition show in the subject snippet.
    pub(crate) fn marks_subject(self) -> bool {
        matches!(self, TextField::Text | TextField::Subject)
    }

    /// Whether matches of this condition show in the preview snippet.
    pub(crate) fn marks_body(self) -> bool {
        matches!(self, TextField::Text | TextField::Body)
    }
}

/// A query over one account's emails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    /// Every email.
    All,
    /// All of the children.
    And(Vec<Query>),
    /// Any of the children.
    Or(Vec<Query>),
    /// None of the children (JMAP's NOT).
    Not(Vec<Query>),
    /// Text in some fields.
    Text(TextField, String),
    /// A header field by name, optionally containing a text
    /// (case-insensitive) in its value.
    Header(String, Option<String>),
}

/// One word of a chunk: its offset in the phrase and the terms that may
/// stand for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Slot {
    pub offset: u32,
    pub terms: Vec<String>,
}

/// A chunk: one word, or a phrase of adjacent words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chunk {
    pub slots: Vec<Slot>,
}

/// Splits a condition's string into raw chunk strings, each flagged
/// whether it was quoted.
pub(crate) fn split_chunks(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut chars = text.chars();
    let mut cur = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' if cur.is_empty() || cur.chars().all(char::is_whitespace) => {
                // A quote at the start of a chunk opens a phrase; find its
                // match (an unmatched quote is plain text).
                let rest: String = chars.clone().collect();
                let mut phrase = String::new();
                let mut closed = None;
                let mut it = rest.char_indices();
                while let Some((i, x)) = it.next() {
                    if x == '\\' {
                        if let Some((_, e)) = it.next() {
                            phrase.push(e);
                        }
                        continue;
                    }
                    if x == c {
                        closed = Some(i + x.len_utf8());
                        break;
                    }
                    phrase.push(x);
                }
                match closed {
                    Some(consumed) => {
                        cur.clear();
                        out.push((phrase, true));
                        let n = rest[..consumed].chars().count();
                        for _ in 0..n {
                            chars.next();
                        }
                    }
                    None => cur.push(c),
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push((std::mem::take(&mut cur), false));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push((cur, false));
    }
    out
}

/// Parses a condition's string into chunks, expanding words to their
/// stems in `langs`.
pub(crate) fn parse_text(text: &str, langs: LanguageSet) -> Vec<Chunk> {
    let mut analyzer = Analyzer::new();
    let mut out = Vec::new();
    for (raw, quoted) in split_chunks(text) {
        let tokens = analyzer.tokens(&raw, None);
        let words: Vec<_> = tokens
            .iter()
            .filter(|t| t.kind == TokenKind::Word)
            .collect();
        let Some(first) = words.first().map(|w| w.pos) else {
            continue;
        };
        // An unquoted address is one term: the whole `local@domain`.
        if !quoted
            && let Some(j) = tokens.iter().find(|t| {
                matches!(t.kind, TokenKind::Joined { span }
                    if t.pos == first && words.iter().all(|w| w.pos < t.pos + span))
            })
        {
            out.push(Chunk {
                slots: vec![Slot {
                    offset: 0,
                    terms: vec![j.term.clone()],
                }],
            });
            continue;
        }
        out.push(Chunk {
            slots: words
                .iter()
                .map(|w| Slot {
                    offset: w.pos - first,
                    terms: expand(&w.term, w.kind, langs),
                })
                .collect(),
        });
    }
    out
}

/// Posting values of one slot's terms in one field.
struct SlotValues {
    offset: u32,
    values: Vec<Vec<u8>>,
}

impl SearchIndex {
    /// The ids of `account`'s emails that match `query`. Text conditions
    /// read the index; a header condition with a value also reads the
    /// header fields of the candidate emails from `store`. Destroyed
    /// emails never match.
    pub fn search(
        &self,
        store: &MailStore,
        account: AccountId,
        query: &Query,
    ) -> Result<RoaringBitmap> {
        let mut ctx = Eval {
            index: self,
            store,
            account,
            langs: self.languages(account)?,
            universe: None,
        };
        let out = ctx.eval(query)?;
        Ok(out - self.deleted(account)?)
    }

    /// The emails matching one text condition (a convenience for callers
    /// that combine conditions themselves).
    pub fn search_text(
        &self,
        store: &MailStore,
        account: AccountId,
        field: TextField,
        text: &str,
    ) -> Result<RoaringBitmap> {
        self.search(store, account, &Query::Text(field, text.to_string()))
    }
}

struct Eval<'a> {
    index: &'a SearchIndex,
    store: &'a MailStore,
    account: AccountId,
    langs: LanguageSet,
    universe: Option<RoaringBitmap>,
}

impl Eval<'_> {
    fn universe(&mut self) -> Result<RoaringBitmap> {
        if self.universe.is_none() {
            self.universe = Some(self.index.live(self.account)?);
        }
        Ok(self.universe.clone().unwrap_or_default())
    }

    fn eval(&mut self, q: &Query) -> Result<RoaringBitmap> {
        match q {
            Query::All => self.universe(),
            Query::And(children) => {
                let mut acc: Option<RoaringBitmap> = None;
                for c in children {
                    let r = self.eval(c)?;
                    acc = Some(match acc {
                        None => r,
                        Some(a) => a & r,
                    });
                    if acc.as_ref().is_some_and(RoaringBitmap::is_empty) {
                        break;
                    }
                }
                match acc {
                    Some(a) => Ok(a),
                    None => self.universe(),
                }
            }
            Query::Or(children) => {
                let mut acc = RoaringBitmap::new();
                for c in children {
                    acc |= self.eval(c)?;
                }
                Ok(acc)
            }
            Query::Not(children) => {
                let mut any = RoaringBitmap::new();
                for c in children {
                    any |= self.eval(c)?;
                }
                Ok(self.universe()? - any)
            }
            Query::Text(field, text) => self.text(*field, text),
            Query::Header(name, value) => self.header(name, value.as_deref()),
        }
    }

    fn text(&mut self, field: TextField, text: &str) -> Result<RoaringBitmap> {
        let chunks = parse_text(text, self.langs);
        if chunks.is_empty() {
            // Nothing searchable (only punctuation): no constraint.
            return self.universe();
        }
        let mut acc: Option<RoaringBitmap> = None;
        for chunk in &chunks {
            let r = self.chunk(field.fields(), chunk)?;
            acc = Some(match acc {
                None => r,
                Some(a) => a & r,
            });
            if acc.as_ref().is_some_and(RoaringBitmap::is_empty) {
                break;
            }
        }
        Ok(acc.unwrap_or_default())
    }

    /// Values of every term of every slot, per field.
    fn fetch(&self, fields: &[Field], chunk: &Chunk) -> Result<Vec<(Field, Vec<SlotValues>)>> {
        let mut per_field: Vec<(Field, Vec<SlotValues>)> = fields
            .iter()
            .map(|&f| {
                (
                    f,
                    chunk
                        .slots
                        .iter()
                        .map(|s| SlotValues {
                            offset: s.offset,
                            values: Vec::new(),
                        })
                        .collect(),
                )
            })
            .collect();
        for (i, slot) in chunk.slots.iter().enumerate() {
            for term in &slot.terms {
                if fields.len() > 2 {
                    for (f, v) in self.index.term_fields(self.account, term)? {
                        if let Some(entry) = per_field.iter_mut().find(|(x, _)| *x == f) {
                            entry.1[i].values.push(v);
                        }
                    }
                } else {
                    for (f, slots) in per_field.iter_mut() {
                        if let Some(v) = self.index.posting(self.account, term, *f)? {
                            slots[i].values.push(v);
                        }
                    }
                }
            }
        }
        Ok(per_field)
    }

    fn chunk(&self, fields: &[Field], chunk: &Chunk) -> Result<RoaringBitmap> {
        let mut out = RoaringBitmap::new();
        for (_, slots) in self.fetch(fields, chunk)? {
            out |= phrase_docs(&slots)?;
        }
        Ok(out)
    }

    fn header(&mut self, name: &str, value: Option<&str>) -> Result<RoaringBitmap> {
        let name = name.trim().to_ascii_lowercase();
        if name.is_empty() {
            return Err(Error::InvalidQuery(
                "a header condition needs a name".into(),
            ));
        }
        let candidates = match self.index.posting(self.account, &name, Field::HeaderName)? {
            None => return Ok(RoaringBitmap::new()),
            Some(v) => {
                postings::decode(&v)
                    .ok_or_else(|| Error::Corrupt("posting value".into()))?
                    .docs
            }
        };
        let Some(value) = value.filter(|v| !v.trim().is_empty()) else {
            return Ok(candidates);
        };
        let needle = fold(value.trim());
        let mut out = RoaringBitmap::new();
        for id in &candidates {
            if header_contains(self.store, self.account, id, &name, &needle)? {
                out.insert(id);
            }
        }
        Ok(out)
    }
}

/// Whether email `id` has a header field `name` whose value (decoded,
/// folded) contains `needle` (folded).
fn header_contains(
    store: &MailStore,
    account: AccountId,
    id: DocumentId,
    name: &str,
    needle: &str,
) -> Result<bool> {
    let Some(detail) = store.kv().read(|tx| email::detail(tx, account, id))? else {
        return Ok(false);
    };
    for h in detail
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
    {
        let raw = h.value.split_whitespace().collect::<Vec<_>>().join(" ");
        if fold(&raw).contains(needle) {
            return Ok(true);
        }
        if raw.contains("=?") && decode_words(&raw).is_some_and(|t| fold(&t).contains(needle)) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A header value with its RFC 2047 encoded words decoded (parsed as an
/// unstructured field).
fn decode_words(raw: &str) -> Option<String> {
    let message = format!("Subject: {raw}\r\n\r\nx\r\n");
    let m = mail_parser::MessageParser::default().parse(message.as_bytes())?;
    m.subject().map(str::to_string)
}

/// Documents where the slots' terms occur at their offsets from one
/// common position (a single slot: documents holding any of its terms).
fn phrase_docs(slots: &[SlotValues]) -> Result<RoaringBitmap> {
    let corrupt = || Error::Corrupt("posting value".into());
    let decoded: Vec<Vec<postings::Postings<'_>>> = slots
        .iter()
        .map(|s| {
            s.values
                .iter()
                .map(|v| postings::decode(v).ok_or_else(corrupt))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<_>>()?;
    let unions: Vec<RoaringBitmap> = decoded
        .iter()
        .map(|alts| {
            let mut u = RoaringBitmap::new();
            for p in alts {
                u |= &p.docs;
            }
            u
        })
        .collect();
    let mut candidates = match unions.split_first() {
        None => return Ok(RoaringBitmap::new()),
        Some((first, rest)) => {
            let mut c = first.clone();
            for u in rest {
                c &= u;
            }
            c
        }
    };
    if slots.len() == 1 || candidates.is_empty() {
        return Ok(candidates);
    }
    let mut cursors: Vec<Vec<_>> = decoded
        .iter()
        .map(|alts| alts.iter().map(|p| p.cursor()).collect())
        .collect();
    let mut buf = Vec::new();
    let mut positions: Vec<Vec<u32>> = vec![Vec::new(); slots.len()];
    let mut rejected = Vec::new();
    for doc in &candidates {
        for (i, alts) in cursors.iter_mut().enumerate() {
            positions[i].clear();
            for c in alts.iter_mut() {
                if c.seek(doc, &mut buf) {
                    positions[i].extend_from_slice(&buf);
                }
            }
            positions[i].sort_unstable();
        }
        let found = positions[0].iter().any(|&p| {
            slots.iter().enumerate().skip(1).all(|(i, s)| {
                p.checked_add(s.offset)
                    .is_some_and(|want| positions[i].binary_search(&want).is_ok())
            })
        });
        if !found {
            rejected.push(doc);
        }
    }
    for d in rejected {
        candidates.remove(d);
    }
    Ok(candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_encoded_words() {
        assert_eq!(
            decode_words(" =?UTF-8?Q?Chuy=E1=BA=BFn_=C4=91i_Vi=E1=BB=87t_Nam?=").as_deref(),
            Some("Chuyến đi Việt Nam")
        );
    }

    #[test]
    fn splits_words_and_quoted_phrases() {
        assert_eq!(
            split_chunks(r#"foo "bar baz" 'it\'s here' x"y "#),
            vec![
                ("foo".to_string(), false),
                ("bar baz".into(), true),
                ("it's here".into(), true),
                ("x\"y".into(), false),
            ]
        );
        assert_eq!(
            split_chunks(r#""unclosed phrase"#),
            vec![("\"unclosed".to_string(), false), ("phrase".into(), false)]
        );
        assert_eq!(split_chunks("  "), Vec::<(String, bool)>::new());
    }

    #[test]
    fn chunks_expand_stems_and_keep_offsets() {
        let mut langs = LanguageSet::default();
        langs.insert(crate::analyze::Language::English);
        let c = parse_text("Meetings \"quarterly report\" alice@example.com", langs);
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].slots[0].terms, ["meetings", "meet"]);
        assert_eq!(c[1].slots.len(), 2);
        assert_eq!(c[1].slots[1].offset, 1);
        assert_eq!(c[2].slots[0].terms, ["alice@example.com"]);
        let k = parse_text("이메일", LanguageSet::default());
        assert_eq!(k[0].slots.len(), 2);
        assert_eq!(k[0].slots[0].terms, ["이메"]);
        assert_eq!(k[0].slots[1].terms, ["메일"]);
    }
}
