//! Search over a corpus of English, Korean, Vietnamese and mixed messages
//! (`tests/corpus/*.eml`), delivered through the store and indexed by the
//! indexer from the store's queue: every query has an exact expected set.

mod common;

use common::{Fixture, set};
use tern_search::{Query, TextField};

fn text(field: TextField, s: &str) -> Query {
    Query::Text(field, s.to_string())
}

fn t(s: &str) -> Query {
    text(TextField::Text, s)
}

fn indexed_corpus() -> Fixture {
    let mut f = Fixture::new();
    f.deliver_corpus();
    let applied = f.drain();
    assert_eq!(applied, f.ids.len(), "one queue entry per delivered email");
    f
}

/// `(query, expected file stems)`.
fn check(f: &Fixture, cases: &[(Query, &[&str])]) {
    let mut failures = Vec::new();
    for (q, expected) in cases {
        let got = f.search(q);
        if got != set(expected) {
            failures.push(format!(
                "{q:?}\n  expected {expected:?}\n  got      {got:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn english_words_phrases_stems_and_html() {
    let f = indexed_corpus();
    check(
        &f,
        &[
            // In the subject or body; not in the newsletter's <title>,
            // <style>, <script> or comment.
            (
                t("budget"),
                &["en-01-budget", "en-02-reply", "mx-01-project"],
            ),
            (
                t("BUDGET"),
                &["en-01-budget", "en-02-reply", "mx-01-project"],
            ),
            // A quoted phrase matches adjacent words in order only.
            (t("\"quarterly report\""), &["en-01-budget"]),
            (t("'report quarterly'"), &["en-02-reply"]),
            (t("quarterly report"), &["en-01-budget", "en-02-reply"]),
            // Stemming: "Meetings" and "meeting" share the stem "meet".
            (
                text(TextField::Body, "meeting"),
                &["en-01-budget", "en-02-reply"],
            ),
            (text(TextField::Subject, "meeting"), &[]),
            (t("running"), &["en-01-budget", "en-03-newsletter"]),
            (t("runs"), &["en-01-budget", "en-03-newsletter"]),
            (t("leave"), &["en-05-transit"]),
            (t("buses"), &["en-05-transit"]),
            (t("business"), &["en-05-transit"]),
            // HTML: visible text and alt text count, markup does not.
            (t("free shipping"), &["en-03-newsletter"]),
            (t("discounts"), &["en-03-newsletter"]),
            (t("color"), &[]),
            (t("tracking"), &[]),
            (t("deals"), &[]),
            // Attachments: names, and the text of text attachments (body).
            (
                text(TextField::AttachmentName, "invoice"),
                &["en-04-invoice"],
            ),
            (
                text(TextField::AttachmentName, "notes.txt"),
                &["en-04-invoice"],
            ),
            (text(TextField::AttachmentName, "thirty"), &[]),
            (text(TextField::Body, "thirty days"), &["en-04-invoice"]),
            (t("payment"), &["en-04-invoice"]),
            (text(TextField::Subject, "invoice"), &["en-04-invoice"]),
            // Every chunk must match.
            (t("budget thursday"), &["en-01-budget"]),
            (t("budget nonexistentword"), &[]),
        ],
    );
}

#[test]
fn addresses_by_whole_address_local_part_domain_and_name() {
    let f = indexed_corpus();
    check(
        &f,
        &[
            (
                text(TextField::From, "alice.johnson@example.com"),
                &["en-01-budget", "mx-01-project"],
            ),
            (
                text(TextField::To, "alice.johnson@example.com"),
                &[
                    "en-02-reply",
                    "en-03-newsletter",
                    "ko-02-address",
                    "vi-02-report",
                ],
            ),
            (
                text(TextField::From, "alice"),
                &["en-01-budget", "mx-01-project"],
            ),
            (
                text(TextField::From, "johnson"),
                &["en-01-budget", "mx-01-project"],
            ),
            (
                text(TextField::From, "alice.johnson"),
                &["en-01-budget", "mx-01-project"],
            ),
            (text(TextField::From, "example.org"), &["en-02-reply"]),
            (text(TextField::From, "bob"), &["en-02-reply"]),
            (text(TextField::Cc, "carol"), &["en-02-reply"]),
            (text(TextField::Cc, "carol@example.net"), &["en-02-reply"]),
            (text(TextField::Bcc, "dave@example.com"), &["en-04-invoice"]),
            (text(TextField::To, "dave@example.com"), &[]),
            (
                text(TextField::To, "minsu.kim@example.kr"),
                &["ko-03-lunch", "mx-01-project"],
            ),
            (
                text(TextField::From, "example.kr"),
                &["ko-01-meeting", "ko-02-address", "ko-03-lunch"],
            ),
            (
                text(TextField::From, "김민수"),
                &["ko-01-meeting", "ko-02-address"],
            ),
            (text(TextField::From, "Nguyễn"), &["vi-01-trip"]),
            (text(TextField::From, "nguyen"), &["vi-01-trip"]),
            (text(TextField::From, "tran"), &["vi-02-report"]),
            // An address in a body is findable whole.
            (t("minsu@example.kr"), &["ko-02-address"]),
            // A domain anywhere: addresses of every field and body text.
            (
                t("example.com"),
                &[
                    "en-01-budget",
                    "en-02-reply",
                    "en-03-newsletter",
                    "en-04-invoice",
                    "en-05-transit",
                    "ko-02-address",
                    "mx-01-project",
                    "vi-02-report",
                ],
            ),
        ],
    );
}

#[test]
fn korean_by_bigrams() {
    let f = indexed_corpus();
    check(
        &f,
        &[
            // "이메일" finds "이메일로" (particle attached) and "이메일".
            (
                t("이메일"),
                &["ko-01-meeting", "ko-02-address", "mx-01-project"],
            ),
            (
                t("메일"),
                &["ko-01-meeting", "ko-02-address", "mx-01-project"],
            ),
            (t("회의"), &["ko-01-meeting"]),
            (t("점심"), &["ko-03-lunch"]),
            (t("주소"), &["ko-02-address"]),
            (t("이메일 주소"), &["ko-02-address"]),
            (t("\"이메일 주소\""), &["ko-02-address"]),
            (t("\"주소 이메일\""), &[]),
            (t("프로젝트"), &["mx-01-project"]),
            (text(TextField::Subject, "프로젝트"), &["mx-01-project"]),
            // One syllable: the unigrams.
            (
                t("일"),
                &["ko-01-meeting", "ko-02-address", "mx-01-project"],
            ),
            (t("비빔밥"), &["ko-03-lunch"]),
            (t("김치"), &[]),
        ],
    );
}

#[test]
fn vietnamese_without_diacritics() {
    let f = indexed_corpus();
    check(
        &f,
        &[
            (t("viet nam"), &["vi-01-trip", "vi-03-photos"]),
            (t("Việt Nam"), &["vi-01-trip", "vi-03-photos"]),
            (t("\"viet nam\""), &["vi-01-trip", "vi-03-photos"]),
            (t("\"nam viet\""), &[]),
            (t("Hà Nội"), &["vi-01-trip"]),
            (t("ha noi"), &["vi-01-trip"]),
            (t("da nang"), &["vi-01-trip"]),
            (t("ĐÀ NẴNG"), &["vi-01-trip"]),
            (t("báo cáo"), &["vi-02-report"]),
            (t("bao cao tai chinh"), &["vi-02-report"]),
            (t("email"), &["vi-02-report"]),
        ],
    );
}

#[test]
fn operators_and_headers() {
    let f = indexed_corpus();
    let all: Vec<String> = f.ids.keys().cloned().collect();
    let not_budget: Vec<&str> = all
        .iter()
        .map(String::as_str)
        .filter(|n| !["en-01-budget", "en-02-reply", "mx-01-project"].contains(n))
        .collect();
    check(
        &f,
        &[
            (
                Query::And(vec![
                    t("budget"),
                    Query::Not(vec![text(TextField::From, "alice")]),
                ]),
                &["en-02-reply"],
            ),
            (
                Query::Or(vec![t("이메일"), t("viet nam")]),
                &[
                    "ko-01-meeting",
                    "ko-02-address",
                    "mx-01-project",
                    "vi-01-trip",
                    "vi-03-photos",
                ],
            ),
            (Query::Not(vec![t("budget")]), &not_budget),
            (
                Query::Not(vec![t("budget"), t("이메일"), t("viet")]),
                &[
                    "en-03-newsletter",
                    "en-04-invoice",
                    "en-05-transit",
                    "ko-03-lunch",
                    "vi-02-report",
                ],
            ),
            (Query::Header("X-Mailer".into(), None), &["en-01-budget"]),
            (Query::Header("in-reply-to".into(), None), &["en-02-reply"]),
            (
                Query::Header("Subject".into(), Some("quarterly".into())),
                &["en-01-budget", "en-02-reply"],
            ),
            // Encoded words are decoded, diacritics folded.
            (
                Query::Header("subject".into(), Some("Việt".into())),
                &["vi-01-trip", "vi-03-photos"],
            ),
            (Query::Header("x-nonexistent".into(), None), &[]),
            (
                Query::And(vec![
                    Query::Header("content-transfer-encoding".into(), Some("base64".into())),
                    t("주소"),
                ]),
                &["ko-02-address"],
            ),
        ],
    );
    assert_eq!(f.search(&Query::All).len(), all.len());
    // Nothing searchable in the text: no constraint.
    assert_eq!(f.search(&t("  ?! ")).len(), all.len());
}

#[test]
fn snippets_mark_matches() {
    let f = indexed_corpus();
    let q = t("budget");
    let ids: Vec<u32> = ["en-01-budget", "ko-03-lunch"]
        .iter()
        .map(|n| f.ids[*n])
        .collect();
    let out = f
        .index
        .snippets(&f.store, f.account, &q, &ids)
        .expect("snippets");
    let s = out[0].1.clone().expect("found");
    assert_eq!(
        s.subject.as_deref(),
        Some("Quarterly <mark>budget</mark> review")
    );
    assert_eq!(
        s.preview.as_deref(),
        Some(
            "Hi Bob, The quarterly report is attached. We need to discuss the <mark>budget</mark> \
             before the meeting on Thursday. I am running late on the forecasts. Alice"
        )
    );
    let none = out[1].1.clone().expect("found");
    assert_eq!((none.subject, none.preview), (None, None));
    // Korean and Vietnamese.
    let s = f
        .index
        .snippets(
            &f.store,
            f.account,
            &t("이메일 ha noi"),
            &[f.ids["ko-02-address"], f.ids["vi-01-trip"]],
        )
        .expect("snippets");
    let ko = s[0].1.clone().unwrap();
    assert_eq!(ko.subject.as_deref(), Some("<mark>이메일</mark> 주소 변경"));
    assert_eq!(
        ko.preview.as_deref(),
        Some("새 <mark>이메일</mark> 주소는 minsu@example.kr 입니다. 주소록을 바꿔 주세요.")
    );
    let vi = s[1].1.clone().unwrap();
    assert_eq!(vi.subject, None);
    assert_eq!(
        vi.preview.as_deref(),
        Some(
            "Chúng ta sẽ đến <mark>Hà</mark> <mark>Nội</mark> và Đà Nẵng vào tháng sau. Vé máy bay đã được đặt."
        )
    );
    // An unknown id.
    let missing = f
        .index
        .snippets(&f.store, f.account, &q, &[9999])
        .expect("snippets");
    assert_eq!(missing[0].1, None);
}
