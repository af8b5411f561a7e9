//! Vacation auto-replies (RFC 8621 section 8, RFC 3834).
//!
//! When mail is delivered to an account whose VacationResponse is enabled
//! (the JSON object tern-jmap keeps as the account's VacationResponse
//! singleton, see [`crate::object`]), [`auto_reply`] answers its sender at
//! most once per [`REPLY_PERIOD`] per sender and vacation setting, and
//! never to:
//! - the null sender, or mail from the account itself;
//! - mail with `Auto-Submitted` other than `no`, `Precedence: bulk`,
//!   `list` or `junk`, or a `List-Id`/`List-Unsubscribe` header;
//! - mail that does not name one of the account's addresses in To or Cc
//!   (Bcc copies and list traffic);
//! - senders such as `MAILER-DAEMON`, `owner-*` and `*-request`.
//!
//! The reply has `Auto-Submitted: auto-replied`, `In-Reply-To` and
//! `References`, and the null reverse-path, so it can never bounce back.
//! A local sender gets it in their inbox directly; a remote one through
//! the outbound queue. The last reply time per sender is kept at
//! `20 ++ aid ++ 71 ++ sha256(lowercase sender)[0..16]`.

use serde_json::Value;

use crate::compose::{base64_body, header_text, message_id, parse_utc_date, rfc5322_date};
use crate::deliver::Recipient;
use crate::envelope::{Envelope, EnvelopeRecipient};
use crate::error::Result;
use crate::keys;
use crate::kv::Transaction;
use crate::types::{AccountId, DataType};
use crate::watched::WatchedCache;
use crate::{MailStore, account, changes, now, object, parse, queue};

/// How long after replying to a sender no further reply goes to them
/// (RFC 3834 section 4 recommends at least seven days).
pub const REPLY_PERIOD: i64 = 7 * 86_400;

const VACATION_SENT: u8 = 0x71;

/// What [`auto_reply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AutoReply {
    /// A reply went to the sender's inbox (local sender).
    Delivered,
    /// A reply was queued for a remote sender.
    Queued,
    /// No reply, and why.
    Skipped(&'static str),
}

fn sent_key(account: AccountId, sender: &str) -> Vec<u8> {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(sender.as_bytes());
    keys::acct(account, VACATION_SENT)
        .bytes(&digest[..16])
        .build()
}

/// The account's vacation response, if enabled and in its date window.
struct Vacation {
    subject: Option<String>,
    text: Option<String>,
    html: Option<String>,
    /// The VacationResponse state: a changed setting replies again.
    state: u64,
}

/// The account's VacationResponse object, if it is enabled.
fn enabled(
    tx: &mut Transaction<'_>,
    account: AccountId,
) -> Result<Option<serde_json::Map<String, Value>>> {
    let Some(bytes) = object::get_singleton(tx, account, DataType::VacationResponse)? else {
        return Ok(None);
    };
    let Ok(Value::Object(v)) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(None);
    };
    Ok((v.get("isEnabled") == Some(&Value::Bool(true))).then_some(v))
}

/// When an enabled vacation response applies: `fromDate` (inclusive) to
/// `toDate` (exclusive), unix seconds, either open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    from: Option<i64>,
    to: Option<i64>,
}

impl Window {
    fn of(v: &serde_json::Map<String, Value>) -> Window {
        let date = |k: &str| v.get(k).and_then(Value::as_str).and_then(parse_utc_date);
        Window {
            from: date("fromDate"),
            to: date("toDate"),
        }
    }

    /// Whether the response is on at `at`.
    pub fn covers(&self, at: i64) -> bool {
        !(self.from.is_some_and(|from| at < from) || self.to.is_some_and(|to| at >= to))
    }
}

/// The window of `account`'s vacation response, if it is enabled.
pub fn window(tx: &mut Transaction<'_>, account: AccountId) -> Result<Option<Window>> {
    Ok(enabled(tx, account)?.map(|v| Window::of(&v)))
}

fn active_vacation(
    tx: &mut Transaction<'_>,
    account: AccountId,
    at: i64,
) -> Result<Option<Vacation>> {
    let Some(v) = enabled(tx, account)? else {
        return Ok(None);
    };
    if !Window::of(&v).covers(at) {
        return Ok(None);
    }
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    Ok(Some(Vacation {
        subject: text("subject"),
        text: text("textBody"),
        html: text("htmlBody"),
        state: changes::state(tx, account, DataType::VacationResponse)?,
    }))
}

fn header<'a>(detail: &'a parse::EmailDetail, name: &str) -> Option<&'a str> {
    detail
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.trim())
}

/// Why mail must not be answered automatically, if it must not.
fn refusal(parsed: &parse::ParsedMessage, sender: &str, own: &[String]) -> Option<&'static str> {
    let detail = &parsed.detail;
    if header(detail, "Auto-Submitted").is_some_and(|v| !v.eq_ignore_ascii_case("no")) {
        return Some("auto-submitted");
    }
    if header(detail, "Precedence").is_some_and(|v| {
        let v = v.to_ascii_lowercase();
        v == "bulk" || v == "list" || v == "junk"
    }) {
        return Some("bulk or list precedence");
    }
    if header(detail, "List-Id").is_some() || header(detail, "List-Unsubscribe").is_some() {
        return Some("list mail");
    }
    let local = sender.split('@').next().unwrap_or_default();
    if local == "mailer-daemon"
        || local == "postmaster"
        || local.starts_with("owner-")
        || local.ends_with("-request")
        || local.starts_with("noreply")
        || local.starts_with("no-reply")
    {
        return Some("automated sender");
    }
    if own.iter().any(|a| a == sender) {
        return Some("own address");
    }
    let env = &parsed.envelope;
    let named = env
        .to
        .iter()
        .chain(env.cc.iter())
        .any(|a| own.iter().any(|o| o.eq_ignore_ascii_case(&a.email)));
    if !named {
        return Some("not addressed in To or Cc");
    }
    None
}

/// Whether `account`'s vacation response is on now (a delivery owes a
/// reply only then): one read.
pub fn is_on(store: &MailStore, account: AccountId) -> Result<bool> {
    let at = now();
    Ok(store
        .kv()
        .read(|tx| window(tx, account))?
        .is_some_and(|w| w.covers(at)))
}

/// Accounts' vacation windows kept in memory until their VacationResponse
/// is written (a store watch, see [`crate::watched`]): [`is_on`] for every
/// delivered message without a store read.
#[derive(Debug)]
pub struct VacationCache(WatchedCache<AccountId, Option<Window>>);

impl VacationCache {
    /// A cache of at most `capacity` accounts.
    pub fn new(capacity: usize) -> Self {
        Self(WatchedCache::new(capacity))
    }

    /// [`is_on`], from the cache while the account's VacationResponse is
    /// unchanged.
    pub fn is_on(&self, store: &MailStore, account: AccountId) -> Result<bool> {
        let key = object::singleton_key(account, DataType::VacationResponse);
        let window = self
            .0
            .get(store.kv(), &account, &key, |tx| window(tx, account))?;
        Ok(window.is_some_and(|w| w.covers(now())))
    }
}

/// Answers mail delivered to `account` from the envelope sender
/// `mail_from` when the account's vacation response is on (see the module
/// documentation for when it is not). `raw` is the delivered message.
pub fn auto_reply(
    store: &MailStore,
    account: AccountId,
    mail_from: &str,
    raw: &[u8],
) -> Result<AutoReply> {
    let at = now();
    let Some(vacation) = store.kv().read(|tx| active_vacation(tx, account, at))? else {
        return Ok(AutoReply::Skipped("no active vacation response"));
    };
    let sender = mail_from.trim().to_lowercase();
    if sender.is_empty() || !sender.contains('@') {
        return Ok(AutoReply::Skipped("null sender"));
    }
    let Some(record) = store.kv().read(|tx| account::get_account(tx, account))? else {
        return Ok(AutoReply::Skipped("no such account"));
    };
    let own: Vec<String> = std::iter::once(record.address.clone())
        .chain(record.aliases.iter().cloned())
        .collect();
    let parsed = parse::parse_message(raw)?;
    if let Some(why) = refusal(&parsed, &sender, &own) {
        return Ok(AutoReply::Skipped(why));
    }
    // Once per period per sender (and vacation setting): claim the slot
    // first, so concurrent deliveries send one reply.
    let key = sent_key(account, &sender);
    let claimed = store.kv().transact(|tx| -> Result<bool> {
        if let Some(v) = tx.get(&key)?
            && v.len() == 16
        {
            let last = i64::from_be_bytes(v[..8].try_into().expect("8 bytes"));
            let state = u64::from_be_bytes(v[8..].try_into().expect("8 bytes"));
            if state == vacation.state && at - last < REPLY_PERIOD {
                return Ok(false);
            }
        }
        let mut v = at.to_be_bytes().to_vec();
        v.extend_from_slice(&vacation.state.to_be_bytes());
        tx.set(&key, &v)?;
        Ok(true)
    })?;
    if !claimed {
        return Ok(AutoReply::Skipped("already replied to this sender"));
    }
    let reply = compose(&record, &sender, &parsed, &vacation, at);
    match store.lookup_address(&sender)? {
        Some(local) => {
            store.deliver(&reply, &[Recipient::inbox(local)])?;
            Ok(AutoReply::Delivered)
        }
        None => {
            let envelope = Envelope {
                mail_from: String::new(),
                recipients: vec![EnvelopeRecipient {
                    address: sender,
                    ..Default::default()
                }],
                ..Default::default()
            };
            queue::enqueue(store.kv(), &reply, Some(account), &envelope, 0)?;
            Ok(AutoReply::Queued)
        }
    }
}

fn strip_tags(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

fn compose(
    record: &account::Account,
    to: &str,
    original: &parse::ParsedMessage,
    vacation: &Vacation,
    at: i64,
) -> Vec<u8> {
    let domain = record.address.rsplit('@').next().unwrap_or("localhost");
    let subject = match &vacation.subject {
        Some(s) => s.clone(),
        None => format!(
            "Auto: {}",
            original.envelope.subject.as_deref().unwrap_or_default()
        ),
    };
    let from = if record.name.is_empty() {
        format!("<{}>", record.address)
    } else {
        format!("{} <{}>", header_text(&record.name), record.address)
    };
    let mut m = String::new();
    m.push_str(&format!("From: {from}\r\n"));
    m.push_str(&format!("To: <{to}>\r\n"));
    m.push_str(&format!("Subject: {}\r\n", header_text(&subject)));
    m.push_str(&format!("Date: {}\r\n", rfc5322_date(at)));
    m.push_str(&format!("Message-ID: {}\r\n", message_id(domain)));
    if let Some(id) = original.envelope.message_id.first() {
        m.push_str(&format!("In-Reply-To: <{id}>\r\n"));
        let refs: Vec<String> = original
            .envelope
            .references
            .iter()
            .chain(std::iter::once(id))
            .map(|r| format!("<{r}>"))
            .collect();
        m.push_str(&format!("References: {}\r\n", refs.join(" ")));
    }
    m.push_str("Auto-Submitted: auto-replied\r\n");
    m.push_str("MIME-Version: 1.0\r\n");
    let text = vacation
        .text
        .clone()
        .or_else(|| vacation.html.as_deref().map(strip_tags))
        .unwrap_or_default();
    let part = |kind: &str, body: &str| {
        format!(
            "Content-Type: text/{kind}; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
            base64_body(body.as_bytes())
        )
    };
    match &vacation.html {
        None => m.push_str(&part("plain", &text)),
        Some(html) => {
            let boundary = format!("=_vacation_{at:x}");
            m.push_str(&format!(
                "Content-Type: multipart/alternative; boundary=\"{boundary}\"\r\n\r\n"
            ));
            m.push_str(&format!("--{boundary}\r\n{}", part("plain", &text)));
            m.push_str(&format!("--{boundary}\r\n{}", part("html", html)));
            m.push_str(&format!("--{boundary}--\r\n"));
        }
    }
    m.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Writer;
    use crate::email::Listing;

    fn setup() -> (tempfile::TempDir, MailStore, AccountId, AccountId) {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        store.add_domain("here.test").unwrap();
        let away = store.create_account("away@here.test", "pw").unwrap();
        let other = store.create_account("other@here.test", "pw").unwrap();
        (dir, store, away, other)
    }

    fn enable(store: &MailStore, account: AccountId, json: &str) {
        store
            .kv()
            .transact(|tx| {
                let mut w = Writer::begin(tx, account)?;
                object::put_singleton(&mut w, DataType::VacationResponse, json.as_bytes())?;
                w.finish()?;
                Ok::<_, crate::Error>(())
            })
            .unwrap();
    }

    fn inbox_len(store: &MailStore, account: AccountId) -> usize {
        store
            .kv()
            .read(|tx| crate::email::list_by_date(tx, account, Listing::All, true, None, 100))
            .unwrap()
            .len()
    }

    fn mail(from: &str, extra: &str) -> Vec<u8> {
        format!(
            "From: {from}\r\nTo: away@here.test\r\nSubject: Lunch?\r\nMessage-ID: <m1@x>\r\n{extra}\r\nAre you in?\r\n"
        )
        .into_bytes()
    }

    /// The cache answers as [`is_on`] after every change of the setting
    /// (each change is a write its watch sees), and judges the window
    /// against the clock at each call.
    #[test]
    fn the_vacation_cache_follows_every_change() {
        let (_dir, store, away, other) = setup();
        let cache = VacationCache::new(4);
        let both = |account| {
            let cached = cache.is_on(&store, account).unwrap();
            assert_eq!(cached, is_on(&store, account).unwrap());
            cached
        };
        assert!(!both(away));
        assert!(!both(away), "cached off");
        enable(&store, away, r#"{"isEnabled": true, "subject": "Away"}"#);
        assert!(both(away), "on after being cached off");
        assert!(!both(other), "another account is not");
        enable(&store, away, r#"{"isEnabled": false, "subject": "Away"}"#);
        assert!(!both(away), "off after being cached on");
        enable(
            &store,
            away,
            r#"{"isEnabled": true, "toDate": "2001-01-01T00:00:00Z"}"#,
        );
        assert!(!both(away), "a window that has ended");
        enable(
            &store,
            away,
            r#"{"isEnabled": true, "fromDate": "2001-01-01T00:00:00Z"}"#,
        );
        assert!(both(away), "a window that has begun");
        enable(
            &store,
            away,
            r#"{"isEnabled": true, "fromDate": "2999-01-01T00:00:00Z"}"#,
        );
        assert!(!both(away), "a window yet to come");
        enable(&store, other, r#"{"isEnabled": true}"#);
        assert!(both(other));
        assert!(!both(away));
    }

    #[test]
    fn rfc3834_replies_once_per_sender_and_never_to_automated_mail() {
        let (_dir, store, away, other) = setup();
        let raw = mail("other@here.test", "");
        assert_eq!(
            auto_reply(&store, away, "other@here.test", &raw).unwrap(),
            AutoReply::Skipped("no active vacation response")
        );
        enable(
            &store,
            away,
            r#"{"isEnabled":true,"subject":"Away","textBody":"Back Monday."}"#,
        );
        assert_eq!(
            auto_reply(&store, away, "other@here.test", &raw).unwrap(),
            AutoReply::Delivered
        );
        assert_eq!(inbox_len(&store, other), 1);
        // Once per period.
        assert_eq!(
            auto_reply(&store, away, "other@here.test", &raw).unwrap(),
            AutoReply::Skipped("already replied to this sender")
        );
        // The reply's shape.
        let id = store
            .kv()
            .read(|tx| crate::email::list_by_date(tx, other, Listing::All, true, None, 1))
            .unwrap()[0]
            .1;
        let detail = store
            .kv()
            .read(|tx| crate::email::detail(tx, other, id))
            .unwrap()
            .unwrap();
        assert_eq!(header(&detail, "Auto-Submitted"), Some("auto-replied"));
        assert_eq!(header(&detail, "In-Reply-To"), Some("<m1@x>"));
        assert_eq!(header(&detail, "Subject"), Some("Away"));
        // Never to automated mail.
        for (from, extra, why) in [
            (
                "x@there.test",
                "Auto-Submitted: auto-generated\r\n",
                "auto-submitted",
            ),
            (
                "x@there.test",
                "Precedence: bulk\r\n",
                "bulk or list precedence",
            ),
            ("x@there.test", "List-Id: <l.there.test>\r\n", "list mail"),
            ("mailer-daemon@there.test", "", "automated sender"),
        ] {
            assert_eq!(
                auto_reply(&store, away, from, &mail(from, extra)).unwrap(),
                AutoReply::Skipped(why)
            );
        }
        assert_eq!(
            auto_reply(&store, away, "", &raw).unwrap(),
            AutoReply::Skipped("null sender")
        );
        // A remote sender's reply goes through the queue, null sender.
        assert_eq!(
            auto_reply(&store, away, "x@there.test", &mail("x@there.test", "")).unwrap(),
            AutoReply::Queued
        );
        let queued = queue::list(store.kv()).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].1.mail_from, "");
        assert_eq!(queued[0].1.recipients[0].address, "x@there.test");
    }

    #[test]
    fn outside_the_date_window_nothing_is_sent() {
        let (_dir, store, away, _) = setup();
        enable(
            &store,
            away,
            r#"{"isEnabled":true,"fromDate":"2999-01-01T00:00:00Z","textBody":"x"}"#,
        );
        assert_eq!(
            auto_reply(
                &store,
                away,
                "other@here.test",
                &mail("other@here.test", "")
            )
            .unwrap(),
            AutoReply::Skipped("no active vacation response")
        );
    }
}
