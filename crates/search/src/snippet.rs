//! Search snippets (RFC 8621 section 5): the subject and a piece of the
//! body with the words that matched the query wrapped in `<mark>`, HTML
//! escaped. Matching uses the same analysis and query parsing as the
//! index, so what is marked is what matched.

use tern_store::{AccountId, DocumentId, MailStore};

use crate::Result;
use crate::analyze::{Analyzer, Language, LanguageSet, Token, TokenKind};
use crate::doc::{Document, Field};
use crate::index::SearchIndex;
use crate::query::{Chunk, Query, parse_text};

/// Largest preview, in bytes, markup included (RFC 8621: 255 octets).
pub const MAX_PREVIEW_BYTES: usize = 255;
/// Bytes of context kept before the first match in a preview.
const CONTEXT_BEFORE: usize = 60;
const ELLIPSIS: &str = "\u{2026}";

/// A SearchSnippet's `subject` and `preview` (either `None` when the
/// filter's text did not match there).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snippet {
    /// The subject, escaped, matches marked.
    pub subject: Option<String>,
    /// Part of the body around the first match, escaped, marked, at most
    /// [`MAX_PREVIEW_BYTES`].
    pub preview: Option<String>,
}

/// The text chunks of a query that highlight the subject and the body
/// (conditions under NOT highlight nothing).
#[derive(Debug, Default)]
struct Marks {
    subject: Vec<Chunk>,
    body: Vec<Chunk>,
}

fn collect(q: &Query, langs: LanguageSet, out: &mut Marks) {
    match q {
        Query::And(c) | Query::Or(c) => c.iter().for_each(|q| collect(q, langs, out)),
        Query::Text(field, text) => {
            let chunks = parse_text(text, langs);
            if field.marks_subject() {
                out.subject.extend(chunks.iter().cloned());
            }
            if field.marks_body() {
                out.body.extend(chunks);
            }
        }
        Query::Not(_) | Query::All | Query::Header(..) => {}
    }
}

/// Byte ranges of `text` where a chunk matches, sorted and merged.
fn spans(
    analyzer: &mut Analyzer,
    text: &str,
    lang: Option<Language>,
    chunks: &[Chunk],
) -> Vec<(usize, usize)> {
    if chunks.is_empty() {
        return Vec::new();
    }
    let tokens: Vec<Token> = analyzer.tokens(text, lang);
    let mut out = Vec::new();
    for chunk in chunks {
        let [first, rest @ ..] = chunk.slots.as_slice() else {
            continue;
        };
        for t in &tokens {
            if !first.terms.contains(&t.term) {
                continue;
            }
            if rest.is_empty() {
                out.push((t.start, t.end));
                continue;
            }
            if t.kind != TokenKind::Word {
                continue;
            }
            let mut end = t.end;
            let all = rest.iter().all(|s| {
                match tokens.iter().find(|u| {
                    u.kind == TokenKind::Word
                        && u.pos == t.pos + s.offset
                        && s.terms.contains(&u.term)
                }) {
                    Some(u) => {
                        end = end.max(u.end);
                        true
                    }
                    None => false,
                }
            });
            if all {
                out.push((t.start, end));
            }
        }
    }
    out.sort_unstable();
    let mut merged: Vec<(usize, usize)> = Vec::with_capacity(out.len());
    for (s, e) in out {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

fn escape_into(out: &mut String, s: &str, collapse: bool) {
    let mut space = false;
    for c in s.chars() {
        if collapse && c.is_whitespace() {
            space = true;
            continue;
        }
        if space {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
            space = false;
        }
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    if space && !out.is_empty() && !out.ends_with(' ') {
        out.push(' ');
    }
}

fn escaped(s: &str, collapse: bool) -> String {
    let mut out = String::new();
    escape_into(&mut out, s, collapse);
    out
}

/// The whole `text` with `spans` marked.
fn mark_all(text: &str, spans: &[(usize, usize)]) -> String {
    let mut out = String::new();
    let mut at = 0;
    for &(s, e) in spans {
        escape_into(&mut out, &text[at..s], false);
        out.push_str("<mark>");
        escape_into(&mut out, &text[s..e], false);
        out.push_str("</mark>");
        at = e;
    }
    escape_into(&mut out, &text[at..], false);
    out
}

/// A window of `text` around the first span, marked, white space
/// collapsed, at most `max` bytes: from the start of the text when the
/// first match is near it, else from a word boundary shortly before the
/// match (after an ellipsis). The cut at the end falls between
/// characters or whole `<mark>` elements, never inside an entity.
fn preview(text: &str, spans: &[(usize, usize)], max: usize) -> String {
    let Some(&(first, first_end)) = spans.first() else {
        return String::new();
    };
    let mut start = 0;
    if first_end > max * 2 / 3 {
        start = first.saturating_sub(CONTEXT_BEFORE);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        start = text[start..first]
            .find(char::is_whitespace)
            .map_or(first, |i| start + i);
    }
    // Units that are never split: an escaped character, one space for a
    // run of white space, a whole <mark> element.
    let mut units: Vec<String> = Vec::new();
    if start > 0 {
        units.push(ELLIPSIS.to_string());
    }
    let push_text = |units: &mut Vec<String>, piece: &str| {
        for c in piece.chars() {
            if c.is_whitespace() {
                if units.last().is_some_and(|u| u != " " && u != ELLIPSIS) {
                    units.push(" ".into());
                }
            } else {
                units.push(escaped(c.encode_utf8(&mut [0; 4]), false));
            }
        }
    };
    let mut at = start;
    for &(s, e) in spans.iter().filter(|(s, _)| *s >= start) {
        push_text(&mut units, &text[at..s]);
        units.push(format!("<mark>{}</mark>", escaped(text[s..e].trim(), true)));
        at = e;
    }
    push_text(&mut units, &text[at..]);
    while units.last().is_some_and(|u| u == " ") {
        units.pop();
    }
    let mut out = String::new();
    for u in units {
        if out.len() + u.len() > max {
            break;
        }
        out.push_str(&u);
    }
    out.truncate(out.trim_end().len());
    out
}

/// The snippet of one document for `query`.
pub fn snippet(query: &Query, langs: LanguageSet, doc: &Document) -> Snippet {
    let mut marks = Marks::default();
    collect(query, langs, &mut marks);
    let mut analyzer = Analyzer::new();
    let mut out = Snippet::default();
    let texts = doc.texts();
    if let Some(subject) = texts.iter().find(|t| t.field == Field::Subject) {
        let s = spans(
            &mut analyzer,
            subject.text,
            subject.language,
            &marks.subject,
        );
        if !s.is_empty() {
            out.subject = Some(mark_all(subject.text, &s));
        }
    }
    for t in texts.iter().filter(|t| t.field == Field::Body) {
        let s = spans(&mut analyzer, t.text, t.language, &marks.body);
        if !s.is_empty() {
            out.preview = Some(preview(t.text, &s, MAX_PREVIEW_BYTES));
            break;
        }
    }
    out
}

impl SearchIndex {
    /// Snippets of `ids` for `query`, in the order asked; `None` for an
    /// email that does not exist.
    pub fn snippets(
        &self,
        store: &MailStore,
        account: AccountId,
        query: &Query,
        ids: &[DocumentId],
    ) -> Result<Vec<(DocumentId, Option<Snippet>)>> {
        let langs = self.languages(account)?;
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let doc = store.kv().read(|tx| Document::load(tx, account, id))?;
            out.push((id, doc.map(|d| snippet(query, langs, &d))));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::TextField;

    fn doc(subject: &str, body: &str) -> Document {
        Document {
            subject: subject.into(),
            body: vec![body.into()],
            ..Default::default()
        }
    }

    fn english() -> LanguageSet {
        let mut l = LanguageSet::default();
        l.insert(Language::English);
        l
    }

    #[test]
    fn marks_subject_and_preview_escaped() {
        let d = doc(
            "Budget <draft> & the meetings",
            "Hello team, please review the budget before Friday's meeting. Thanks!",
        );
        let q = Query::Text(TextField::Text, "budget meeting".into());
        let s = snippet(&q, english(), &d);
        assert_eq!(
            s.subject.as_deref(),
            Some("<mark>Budget</mark> &lt;draft&gt; &amp; the <mark>meetings</mark>")
        );
        assert_eq!(
            s.preview.as_deref(),
            Some(
                "Hello team, please review the <mark>budget</mark> before Friday's \
                 <mark>meeting</mark>. Thanks!"
            )
        );
    }

    #[test]
    fn phrases_mark_only_adjacent_words_and_not_marks_nothing() {
        let d = doc(
            "quarterly report",
            "the report is quarterly; the quarterly report follows",
        );
        let q = Query::And(vec![
            Query::Text(TextField::Body, "\"quarterly report\"".into()),
            Query::Not(vec![Query::Text(TextField::Text, "follows".into())]),
        ]);
        let s = snippet(&q, english(), &d);
        assert_eq!(
            s.subject, None,
            "a body condition does not mark the subject"
        );
        assert_eq!(
            s.preview.as_deref(),
            Some("the report is quarterly; the <mark>quarterly report</mark> follows")
        );
    }

    #[test]
    fn long_previews_are_cut_to_255_bytes() {
        let body = format!(
            "{} needle {}",
            "word ".repeat(100),
            "tail & more ".repeat(100)
        );
        let d = doc("s", &body);
        let q = Query::Text(TextField::Body, "needle".into());
        let p = snippet(&q, english(), &d).preview.unwrap();
        assert!(p.len() <= MAX_PREVIEW_BYTES, "{}", p.len());
        assert!(p.starts_with(ELLIPSIS));
        assert!(p.contains("<mark>needle</mark>"));
        assert!(
            !p.ends_with('&')
                && !p.contains("&am ")
                && p.matches('&').count() == p.matches("&amp;").count()
        );
    }

    #[test]
    fn korean_and_vietnamese_matches_are_marked() {
        let d = doc("Việt Nam", "이메일로 보내 주세요");
        let q = Query::Text(TextField::Text, "viet nam 이메일".into());
        let s = snippet(&q, LanguageSet::default(), &d);
        assert_eq!(
            s.subject.as_deref(),
            Some("<mark>Việt</mark> <mark>Nam</mark>")
        );
        assert_eq!(
            s.preview.as_deref(),
            Some("<mark>이메일</mark>로 보내 주세요")
        );
    }
}
