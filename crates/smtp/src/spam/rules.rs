//! Rules as data: `resources/spam/rules.toml` names each test, its score
//! and which built-in check it runs with which parameters; `[bayes]` sets
//! the classifier's parameters and the scores of its probability buckets.
//! The file is compiled in as the default and can be replaced by a file
//! named in the config (`spam.rules_file`), read once at start.
//!
//! ```toml
//! [[rule]]
//! name = "MISSING_DATE"          # shown in X-Spam-Status
//! check = "missing_header"       # a built-in check (see `Check`)
//! header = "Date"                # its parameters
//! score = 1.0
//! description = "No Date header"
//! ```

use std::collections::HashSet;

use regex::Regex;
use serde::Deserialize;

use super::auth::AuthResults;
use super::bayes::BayesParams;
use super::message::Analyzed;
use super::tokens::split_url;

/// The rules shipped with Tern.
pub const DEFAULT_RULES: &str = include_str!("../../../../resources/spam/rules.toml");

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("spam rules: {0}")]
pub struct RulesError(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    bayes: BayesFile,
    #[serde(default)]
    rule: Vec<RuleFile>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BayesFile {
    #[serde(default)]
    bucket: Vec<BucketFile>,
    min_spam: Option<u32>,
    min_ham: Option<u32>,
    strength: Option<f64>,
    unknown: Option<f64>,
    min_deviation: Option<f64>,
    max_tokens: Option<usize>,
    account_weight: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BucketFile {
    name: String,
    /// Lowest probability of the bucket (inclusive).
    min: f64,
    /// Highest probability (exclusive; 1.0 inclusive).
    max: f64,
    score: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    check: String,
    score: f64,
    #[serde(default)]
    description: Option<String>,
    header: Option<String>,
    pattern: Option<String>,
    extensions: Option<Vec<String>>,
    min: Option<f64>,
    ratio: Option<f64>,
    method: Option<String>,
    result: Option<Vec<String>>,
}

/// A built-in check with its parameters.
#[derive(Debug)]
pub enum Check {
    /// The GTUBE test string is present (always spam, see `Rules::gtube`).
    Gtube,
    /// A header field is absent.
    MissingHeader(String),
    /// A header field's value (Subject: decoded) matches.
    HeaderRegex(String, Regex),
    /// The text (plain and visible HTML) matches.
    BodyRegex(Regex),
    /// A link's host matches.
    UriRegex(Regex),
    /// Date more than `min` hours ahead of now.
    DateInFuture(f64),
    /// Date more than `min` days before now.
    DateInPast(f64),
    /// A Date field that does not parse.
    InvalidDate,
    /// A Message-ID that is not `<left@right>`.
    InvalidMessageId,
    /// Reply-To's domain differs from From's.
    FromReplyToMismatch,
    /// From's display name holds an address of another domain.
    FromNameMismatch,
    /// HTML without a plain-text alternative.
    HtmlOnly,
    /// At least `min` characters of HTML text a reader cannot see.
    HiddenText(f64),
    /// A link whose text names another host than its target.
    LinkTextMismatch,
    /// An attachment whose name ends in one of these extensions.
    ExecutableAttachment(Vec<String>),
    /// Subject letters: at least `min` of them, `ratio` upper case.
    SubjectCaps(f64, f64),
    /// Body letters: at least `min`, `ratio` upper case.
    BodyCaps(f64, f64),
    /// To + Cc at least `min`.
    ManyRecipients(f64),
    /// The method's result is one of these.
    Auth(String, Vec<String>),
    /// The client's IP is listed in a DNSBL zone (one hit per zone).
    Dnsbl,
    /// A link's domain is listed in a domain DNSBL zone.
    Uribl,
}

/// A test with its score.
#[derive(Debug)]
pub struct Rule {
    /// Its name in X-Spam-Status.
    pub name: String,
    /// Points added when it hits.
    pub score: f64,
    /// What it looks for.
    pub description: String,
    /// How it is checked.
    pub check: Check,
}

/// A Bayes probability bucket.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Test name.
    pub name: String,
    /// Probability range [min, max).
    pub min: f64,
    /// Upper bound.
    pub max: f64,
    /// Points.
    pub score: f64,
}

/// The compiled rules.
#[derive(Debug)]
pub struct Rules {
    /// Every rule, in file order.
    pub rules: Vec<Rule>,
    /// Classifier parameters.
    pub bayes: BayesParams,
    /// Bayes buckets, by probability.
    pub buckets: Vec<Bucket>,
}

/// What the rules see besides the message.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Sender authentication.
    pub auth: AuthResults,
    /// DNSBL zones listing the client IP.
    pub dnsbl: Vec<String>,
    /// Domain zones listing a link domain: (zone, domain).
    pub uribl: Vec<(String, String)>,
    /// Now, unix seconds.
    pub now: i64,
}

fn need<T>(v: Option<T>, rule: &str, key: &str) -> Result<T, RulesError> {
    v.ok_or_else(|| RulesError(format!("rule {rule}: `{key}` is required by its check")))
}

fn regex(pattern: Option<String>, rule: &str) -> Result<Regex, RulesError> {
    let p = need(pattern, rule, "pattern")?;
    regex::RegexBuilder::new(&p)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| RulesError(format!("rule {rule}: bad pattern: {e}")))
}

impl Rules {
    /// The shipped rules.
    pub fn default_rules() -> Rules {
        Rules::parse(DEFAULT_RULES).expect("the shipped spam rules are valid")
    }

    /// Compiles a rules file's text.
    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let file: File = toml::from_str(text).map_err(|e| RulesError(e.to_string()))?;
        let d = BayesParams::default();
        let p = &file.bayes;
        let bayes = BayesParams {
            min_spam: p.min_spam.unwrap_or(d.min_spam),
            min_ham: p.min_ham.unwrap_or(d.min_ham),
            strength: p.strength.unwrap_or(d.strength),
            unknown: p.unknown.unwrap_or(d.unknown),
            min_deviation: p.min_deviation.unwrap_or(d.min_deviation),
            max_tokens: p.max_tokens.unwrap_or(d.max_tokens),
            account_weight: p.account_weight.unwrap_or(d.account_weight),
        };
        let mut buckets: Vec<Bucket> = file
            .bayes
            .bucket
            .iter()
            .map(|b| Bucket {
                name: b.name.clone(),
                min: b.min,
                max: b.max,
                score: b.score,
            })
            .collect();
        buckets.sort_by(|a, b| a.min.total_cmp(&b.min));
        let mut names = HashSet::new();
        let mut rules = Vec::new();
        for r in file.rule {
            if !names.insert(r.name.clone()) {
                return Err(RulesError(format!("rule {} is defined twice", r.name)));
            }
            let name = r.name.clone();
            let check = match r.check.as_str() {
                "gtube" => Check::Gtube,
                "missing_header" => {
                    Check::MissingHeader(need(r.header, &name, "header")?.to_ascii_lowercase())
                }
                "header_regex" => Check::HeaderRegex(
                    need(r.header, &name, "header")?.to_ascii_lowercase(),
                    regex(r.pattern, &name)?,
                ),
                "body_regex" => Check::BodyRegex(regex(r.pattern, &name)?),
                "uri_regex" => Check::UriRegex(regex(r.pattern, &name)?),
                "date_in_future" => Check::DateInFuture(need(r.min, &name, "min")?),
                "date_in_past" => Check::DateInPast(need(r.min, &name, "min")?),
                "invalid_date" => Check::InvalidDate,
                "invalid_message_id" => Check::InvalidMessageId,
                "from_reply_to_mismatch" => Check::FromReplyToMismatch,
                "from_name_mismatch" => Check::FromNameMismatch,
                "html_only" => Check::HtmlOnly,
                "hidden_text" => Check::HiddenText(need(r.min, &name, "min")?),
                "link_text_mismatch" => Check::LinkTextMismatch,
                "executable_attachment" => Check::ExecutableAttachment(
                    need(r.extensions, &name, "extensions")?
                        .into_iter()
                        .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                        .collect(),
                ),
                "subject_caps" => {
                    Check::SubjectCaps(need(r.min, &name, "min")?, need(r.ratio, &name, "ratio")?)
                }
                "body_caps" => {
                    Check::BodyCaps(need(r.min, &name, "min")?, need(r.ratio, &name, "ratio")?)
                }
                "many_recipients" => Check::ManyRecipients(need(r.min, &name, "min")?),
                "auth" => {
                    let method = need(r.method, &name, "method")?.to_ascii_lowercase();
                    if !["spf", "dkim", "dmarc", "arc", "iprev"].contains(&method.as_str()) {
                        return Err(RulesError(format!(
                            "rule {name}: unknown method {method:?}"
                        )));
                    }
                    Check::Auth(
                        method,
                        need(r.result, &name, "result")?
                            .into_iter()
                            .map(|s| s.to_ascii_lowercase())
                            .collect(),
                    )
                }
                "dnsbl" => Check::Dnsbl,
                "uribl" => Check::Uribl,
                other => {
                    return Err(RulesError(format!("rule {name}: unknown check {other:?}")));
                }
            };
            rules.push(Rule {
                name,
                score: r.score,
                description: r.description.unwrap_or_default(),
                check,
            });
        }
        Ok(Rules {
            rules,
            bayes,
            buckets,
        })
    }

    /// The score of a GTUBE message: the GTUBE rule's, or 1000.
    pub fn gtube_score(&self) -> f64 {
        self.rules
            .iter()
            .find(|r| matches!(r.check, Check::Gtube))
            .map_or(1000.0, |r| r.score)
    }

    /// The bucket of a Bayes probability.
    pub fn bucket(&self, p: f64) -> Option<&Bucket> {
        self.buckets
            .iter()
            .find(|b| p >= b.min && (p < b.max || (b.max >= 1.0 && p <= 1.0)))
    }

    /// Runs every rule; appends (name, score) of those that hit.
    pub fn run(&self, a: &Analyzed, cx: &Context, hits: &mut Vec<(String, f64)>) {
        for rule in &self.rules {
            match &rule.check {
                Check::Dnsbl => {
                    for zone in &cx.dnsbl {
                        hits.push((format!("{}({zone})", rule.name), rule.score));
                    }
                }
                Check::Uribl => {
                    for (zone, _) in &cx.uribl {
                        hits.push((format!("{}({zone})", rule.name), rule.score));
                    }
                }
                check => {
                    if hit(check, a, cx) {
                        hits.push((rule.name.clone(), rule.score));
                    }
                }
            }
        }
    }
}

/// Whether one (non-DNS) check hits.
pub fn hit(check: &Check, a: &Analyzed, cx: &Context) -> bool {
    match check {
        Check::Gtube => a.gtube,
        Check::MissingHeader(h) => a.parsed && !a.has_header(h),
        Check::HeaderRegex(h, re) => {
            if h == "subject" {
                a.subject.as_deref().is_some_and(|s| re.is_match(s))
            } else {
                a.headers.iter().any(|(n, v)| n == h && re.is_match(v))
            }
        }
        Check::BodyRegex(re) => re.is_match(&a.text),
        Check::UriRegex(re) => a
            .links
            .iter()
            .filter_map(|l| split_url(&l.href))
            .any(|(_, host, _)| re.is_match(&host)),
        Check::DateInFuture(hours) => a.date.is_some_and(|d| (d - cx.now) as f64 > hours * 3600.0),
        Check::DateInPast(days) => a.date.is_some_and(|d| (cx.now - d) as f64 > days * 86400.0),
        Check::InvalidDate => a.has_date && a.date.is_none(),
        Check::InvalidMessageId => a.message_id.as_deref().is_some_and(|m| !valid_msg_id(m)),
        Check::FromReplyToMismatch => match (
            a.from.as_ref().and_then(|f| f.domain()),
            a.reply_to.as_ref().and_then(|r| r.domain()),
        ) {
            (Some(f), Some(r)) => base_domain(f) != base_domain(r),
            _ => false,
        },
        Check::FromNameMismatch => {
            let Some(from) = &a.from else { return false };
            let (Some(name), Some(domain)) = (&from.name, from.domain()) else {
                return false;
            };
            name.split(|c: char| {
                c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\'' | '(' | ')')
            })
            .filter_map(|w| w.rsplit_once('@'))
            .any(|(_, d)| {
                let d = d.trim_end_matches(['.', ',']).to_ascii_lowercase();
                d.contains('.') && base_domain(&d) != base_domain(domain)
            })
        }
        Check::HtmlOnly => a.html_only,
        Check::HiddenText(min) => a.hidden_chars as f64 >= *min,
        Check::LinkTextMismatch => a.links.iter().any(|l| {
            let Some((_, target, _)) = split_url(&l.href) else {
                return false;
            };
            match shown_host(l.text.trim()) {
                Some(shown) => base_domain(&shown) != base_domain(&target),
                None => false,
            }
        }),
        Check::ExecutableAttachment(exts) => a.attachments.iter().any(|att| {
            att.name
                .as_deref()
                .and_then(|n| n.rsplit_once('.'))
                .is_some_and(|(_, e)| {
                    let e = e.trim().to_ascii_lowercase();
                    exts.contains(&e)
                })
        }),
        Check::SubjectCaps(min, ratio) => {
            a.subject.as_deref().is_some_and(|s| caps(s, *min, *ratio))
        }
        Check::BodyCaps(min, ratio) => caps(&a.text, *min, *ratio),
        Check::ManyRecipients(min) => a.recipients as f64 >= *min,
        Check::Auth(method, results) => cx
            .auth
            .get(method)
            .is_some_and(|r| results.iter().any(|x| x == r)),
        Check::Dnsbl | Check::Uribl => false,
    }
}

/// The host a link's text shows: a URL, or a bare host name with a dot
/// ("paypal.com/login").
fn shown_host(text: &str) -> Option<String> {
    if let Some((_, host, _)) = split_url(text) {
        return Some(host);
    }
    let first = text.split_whitespace().next()?;
    let host = first.split('/').next()?;
    let plausible = host.contains('.')
        && !host.starts_with('.')
        && !host.ends_with('.')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && host
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.len() >= 2 && tld.bytes().all(|b| b.is_ascii_alphabetic()));
    plausible.then(|| host.to_ascii_lowercase())
}

/// `<left@right>` with no spaces.
fn valid_msg_id(m: &str) -> bool {
    let m = m.trim();
    let Some(inner) = m.strip_prefix('<').and_then(|r| r.strip_suffix('>')) else {
        return false;
    };
    match inner.split_once('@') {
        Some((l, r)) => !l.is_empty() && !r.is_empty() && !inner.contains(char::is_whitespace),
        None => false,
    }
}

/// The last two labels of a domain (an approximation of the registrable
/// domain without the public suffix list).
pub fn base_domain(d: &str) -> String {
    let d = d.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() <= 2 {
        return d;
    }
    labels[labels.len() - 2..].join(".")
}

fn caps(text: &str, min: f64, ratio: f64) -> bool {
    const LOOKED_AT: usize = 100_000;
    let (mut letters, mut upper) = (0usize, 0usize);
    let head = &text.as_bytes()[..text.len().min(LOOKED_AT)];
    if head.is_ascii() {
        // The common case, a byte at a time (the same counts: an ASCII
        // character is alphabetic or upper case exactly as its byte is).
        (letters, upper) = ascii_letters(head);
    } else {
        for c in text.chars().take(LOOKED_AT) {
            if c.is_alphabetic() {
                letters += 1;
                if c.is_uppercase() {
                    upper += 1;
                }
            }
        }
    }
    letters as f64 >= min && upper as f64 >= ratio * letters as f64
}

/// Letters and upper-case letters among ASCII `bytes`. In blocks of 255
/// with byte-wide counters and no branches, which the compiler vectorizes
/// sixteen bytes at a time: `b | 0x20` lowers an ASCII letter.
fn ascii_letters(bytes: &[u8]) -> (usize, usize) {
    let (mut letters, mut upper) = (0, 0);
    for block in bytes.chunks(255) {
        let (mut l, mut u) = ([0u8; 16], [0u8; 16]);
        let mut lanes = block.chunks_exact(16);
        for lane in &mut lanes {
            for k in 0..16 {
                let b = lane[k];
                l[k] += u8::from((b | 0x20).wrapping_sub(b'a') < 26);
                u[k] += u8::from(b.wrapping_sub(b'A') < 26);
            }
        }
        for &b in lanes.remainder() {
            letters += usize::from((b | 0x20).wrapping_sub(b'a') < 26);
            upper += usize::from(b.wrapping_sub(b'A') < 26);
        }
        letters += l.iter().map(|&c| usize::from(c)).sum::<usize>();
        upper += u.iter().map(|&c| usize::from(c)).sum::<usize>();
    }
    (letters, upper)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spam::message::analyze;

    #[test]
    fn ascii_letters_counts_as_the_char_predicates_do() {
        // Every byte value, at lengths around the block and lane sizes.
        let all: Vec<u8> = (0u8..128).cycle().take(5000).collect();
        for len in [0, 1, 15, 16, 17, 254, 255, 256, 511, 1000, 5000] {
            let bytes = &all[..len];
            let letters = bytes.iter().filter(|b| b.is_ascii_alphabetic()).count();
            let upper = bytes.iter().filter(|b| b.is_ascii_uppercase()).count();
            assert_eq!(ascii_letters(bytes), (letters, upper), "{len} bytes");
        }
        let caps = vec![b'X'; 10_000];
        assert_eq!(ascii_letters(&caps), (10_000, 10_000));
    }

    #[test]
    fn caps_counts_letters_in_ascii_and_in_any_script() {
        assert!(caps("BUY NOW!!! CHEAP PILLS", 10.0, 0.9));
        assert!(!caps("Buy now, cheap pills", 10.0, 0.9));
        assert!(!caps("BUY", 10.0, 0.9), "too few letters");
        // Non-ASCII letters count, upper and lower case by Unicode.
        assert!(caps("ÜBERALL GÜNSTIG ÄRZTE", 10.0, 0.9));
        assert!(!caps("überall günstig ärzte", 10.0, 0.9));
        assert!(!caps("12345 !!! ... 이메일", 10.0, 0.5));
        // Only the first 100,000 characters are looked at.
        let long = format!("{}{}", "a".repeat(100_000), "B".repeat(100_000));
        assert!(!caps(&long, 10.0, 0.1));
    }

    fn check(rule: &str, raw: &str, auth: &str) -> bool {
        let rules = Rules::default_rules();
        let r = rules
            .rules
            .iter()
            .find(|r| r.name == rule)
            .unwrap_or_else(|| panic!("no rule {rule}"));
        let cx = Context {
            auth: AuthResults::parse(auth),
            now: 1_700_000_000,
            ..Context::default()
        };
        hit(&r.check, &analyze(raw.as_bytes()), &cx)
    }

    const CLEAN: &str = "From: Alice <alice@a.example>\r\nTo: bob@b.example\r\n\
Subject: Lunch tomorrow\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
Message-ID: <1@a.example>\r\n\r\nShall we meet at noon?\r\n";

    /// Each rule on a message that hits it, and the clean message that
    /// does not.
    #[test]
    fn each_rule_hits_its_case_and_not_a_clean_message() {
        let html = |body: &str| {
            format!(
                "From: Alice <alice@a.example>\r\nSubject: x\r\nDate: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
Message-ID: <1@a.example>\r\nContent-Type: text/html\r\n\r\n{body}\r\n"
            )
        };
        let with = |header: &str| CLEAN.replacen("\r\n\r\n", &format!("\r\n{header}\r\n\r\n"), 1);
        let without = |name: &str| {
            CLEAN
                .split("\r\n")
                .filter(|l| !l.starts_with(name))
                .collect::<Vec<_>>()
                .join("\r\n")
        };
        let future = CLEAN.replace("Tue, 14 Nov 2023", "Fri, 14 Nov 2025");
        let past = CLEAN.replace("Tue, 14 Nov 2023", "Thu, 14 Nov 2019");
        let exe = "From: a@a.example\r\nSubject: invoice\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n\
--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/octet-stream\r\n\
Content-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\n\r\nAAAA\r\n--b--\r\n";
        let gtube = format!(
            "{CLEAN}{}\r\n",
            std::str::from_utf8(crate::spam::message::GTUBE).unwrap()
        );
        let cases: Vec<(&str, String, &str)> = vec![
            ("GTUBE", gtube, ""),
            ("MISSING_DATE", without("Date:"), ""),
            ("MISSING_MID", without("Message-ID:"), ""),
            ("MISSING_FROM", without("From:"), ""),
            ("MISSING_SUBJECT", without("Subject:"), ""),
            ("DATE_IN_FUTURE", future, ""),
            ("DATE_IN_PAST", past, ""),
            (
                "INVALID_DATE",
                CLEAN.replace("Tue, 14 Nov 2023 22:13:20 +0000", "yesterday-ish"),
                "",
            ),
            (
                "INVALID_MSGID",
                CLEAN.replace("<1@a.example>", "no-brackets"),
                "",
            ),
            (
                "FROM_REPLYTO_DIFFER",
                with("Reply-To: x@freemail.example"),
                "",
            ),
            (
                "FROM_NAME_FORGED",
                CLEAN.replace(
                    "Alice <alice@a.example>",
                    "\"support@bank.example\" <x@evil.example>",
                ),
                "",
            ),
            ("HTML_ONLY", html("<p>hello there</p>"), ""),
            (
                "HTML_HIDDEN_TEXT",
                html(
                    "<p>hi</p><div style=\"display:none\">lots of hidden words to fool filters</div>",
                ),
                "",
            ),
            (
                "LINK_TEXT_MISMATCH",
                html("<a href=\"http://203.0.113.9/login\">https://www.bank.example/login</a>"),
                "",
            ),
            ("EXECUTABLE_ATTACHMENT", exe.to_owned(), ""),
            (
                "SUBJECT_ALL_CAPS",
                CLEAN.replace("Lunch tomorrow", "BUY NOW CHEAP MEDS"),
                "",
            ),
            (
                "BODY_MOSTLY_CAPS",
                CLEAN.replace(
                    "Shall we meet at noon?",
                    "YOU HAVE WON A PRIZE CLAIM IT NOW BEFORE IT EXPIRES",
                ),
                "",
            ),
            (
                "SPF_FAIL",
                CLEAN.to_owned(),
                "Authentication-Results: h; spf=fail smtp.mailfrom=a@a.example",
            ),
            (
                "SPF_SOFTFAIL",
                CLEAN.to_owned(),
                "Authentication-Results: h; spf=softfail smtp.mailfrom=a@a.example",
            ),
            (
                "DKIM_FAIL",
                CLEAN.to_owned(),
                "Authentication-Results: h; dkim=fail header.d=a.example",
            ),
            (
                "DMARC_FAIL",
                CLEAN.to_owned(),
                "Authentication-Results: h; dmarc=fail header.from=a.example",
            ),
            (
                "DKIM_VALID",
                CLEAN.to_owned(),
                "Authentication-Results: h; dkim=pass header.d=a.example",
            ),
            (
                "DMARC_PASS",
                CLEAN.to_owned(),
                "Authentication-Results: h; dmarc=pass header.from=a.example",
            ),
            (
                "SUBJ_MONEY",
                CLEAN.replace("Lunch tomorrow", "Make $5000 fast"),
                "",
            ),
            (
                "BODY_PHARMA",
                CLEAN.replace("Shall we meet at noon?", "cheap v1agra and cialis"),
                "",
            ),
            (
                "BODY_UNSUBSCRIBE_CLICK",
                CLEAN.replace(
                    "Shall we meet at noon?",
                    "click here to be removed from our list",
                ),
                "",
            ),
            (
                "MANY_RECIPIENTS",
                CLEAN.replace(
                    "To: bob@b.example",
                    &format!(
                        "To: {}",
                        (0..30)
                            .map(|i| format!("u{i}@b.example"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                "",
            ),
        ];
        let rules = Rules::default_rules();
        let tested: HashSet<&str> = cases.iter().map(|(n, _, _)| *n).collect();
        for rule in &rules.rules {
            if matches!(rule.check, Check::Dnsbl | Check::Uribl) {
                continue; // tests/spam_dnsbl: against a local DNS server
            }
            assert!(
                tested.contains(rule.name.as_str()),
                "rule {} has no test case here",
                rule.name
            );
        }
        for (rule, raw, auth) in &cases {
            assert!(
                check(rule, raw, auth),
                "{rule} does not hit its case:\n{raw}"
            );
            if !rule.starts_with("DKIM_VALID") && !rule.starts_with("DMARC_PASS") {
                assert!(!check(rule, CLEAN, ""), "{rule} hits the clean message");
            }
        }
    }

    #[test]
    fn buckets_cover_zero_to_one() {
        let rules = Rules::default_rules();
        for p in [0.0, 0.001, 0.2, 0.5, 0.7, 0.95, 0.999, 1.0] {
            assert!(rules.bucket(p).is_some(), "no bucket for {p}");
        }
    }

    #[test]
    fn bad_rule_files_are_refused_with_the_rule_named() {
        for (text, want) in [
            (
                "[[rule]]\nname = \"X\"\ncheck = \"nope\"\nscore = 1.0\n",
                "unknown check",
            ),
            (
                "[[rule]]\nname = \"X\"\ncheck = \"missing_header\"\nscore = 1.0\n",
                "`header`",
            ),
            (
                "[[rule]]\nname = \"X\"\ncheck = \"body_regex\"\npattern = \"(\"\nscore = 1.0\n",
                "bad pattern",
            ),
            (
                "[[rule]]\nname = \"X\"\ncheck = \"html_only\"\nscore = 1.0\ncolour = 1\n",
                "colour",
            ),
            (
                "[[rule]]\nname = \"X\"\ncheck = \"html_only\"\nscore = 1.0\n[[rule]]\nname = \"X\"\ncheck = \"html_only\"\nscore = 1.0\n",
                "twice",
            ),
        ] {
            let err = Rules::parse(text).unwrap_err().to_string();
            assert!(err.contains(want), "{err} lacks {want}");
        }
    }
}
