//! Administration of sending: domains with their DKIM keys and DNS
//! records, and the outbound queue (`tern queue …`).

use std::fmt::Write as _;

use tern_smtp::outbound::dkim;
use tern_store::MailStore;
use tern_store::compose::rfc5322_date;
use tern_store::dkim::DkimAlgorithm;
use tern_store::queue::{self, QueueId, QueuedMessage, RcptState};

use super::{ErrorKind, Response, store_error};
use crate::config::DkimKind;

fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
    Response::Error {
        kind,
        message: message.into(),
    }
}

/// Makes a DKIM key for `domain` unless it has one. Returns whether it
/// made one.
pub fn ensure_dkim_key(
    store: &MailStore,
    domain: &str,
    kind: DkimKind,
    selector: &str,
) -> Result<bool, String> {
    let domain = domain.to_ascii_lowercase();
    let existing = store
        .kv()
        .read(|tx| tern_store::dkim::get(tx, &domain))
        .map_err(|e| e.to_string())?;
    if existing.is_some() {
        return Ok(false);
    }
    let key = dkim::generate(kind.algorithm(), selector)?;
    tern_store::dkim::put(store.kv(), &domain, &key).map_err(|e| e.to_string())?;
    Ok(true)
}

/// The DNS records of a local domain, as zone file lines.
fn records(store: &MailStore, domain: &str, hostname: &str) -> Result<String, Response> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    match store.is_local_domain(&domain) {
        Ok(true) => {}
        Ok(false) => {
            return Err(error(
                ErrorKind::NotFound,
                format!("domain {domain} not found (add it with `tern domain add`)"),
            ));
        }
        Err(e) => return Err(store_error(e, "domain", &domain)),
    }
    let key = store
        .kv()
        .read(|tx| tern_store::dkim::get(tx, &domain))
        .map_err(|e| store_error(e, "domain", &domain))?;
    let mut text = format!("; DNS records for {domain} (publish them in its zone)\n");
    text.push_str(&dkim::zone_lines(&dkim::dns_records(
        &domain,
        hostname,
        key.as_ref(),
    )));
    if let Some(k) = &key {
        let alg = match k.algorithm {
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
            DkimAlgorithm::RsaSha256 => "rsa-sha256 (2048 bits)",
        };
        let _ = writeln!(text, "; DKIM key: {alg}, selector {}", k.selector);
    } else {
        text.push_str("; no DKIM key: mail from this domain is not signed\n");
    }
    let _ = writeln!(
        text,
        "; {hostname} itself needs A/AAAA records and a PTR record naming it."
    );
    Ok(text)
}

/// `tern domain add`: the domain, its DKIM key, and the records to
/// publish.
pub fn domain_setup(
    store: &MailStore,
    domain: &str,
    kind: DkimKind,
    selector: &str,
    hostname: &str,
) -> Response {
    if let Err(e) = store.add_domain(domain) {
        return store_error(e, "domain", domain);
    }
    tracing::info!(%domain, "domain added");
    if let Err(e) = ensure_dkim_key(store, domain, kind, selector) {
        return error(
            ErrorKind::Internal,
            format!("domain {domain} added, but its DKIM key was not: {e}"),
        );
    }
    match records(store, domain, hostname) {
        Ok(text) => Response::Text {
            text: format!("domain {domain} added\n{text}"),
        },
        Err(r) => r,
    }
}

/// `tern domain dns`.
pub fn domain_dns(store: &MailStore, domain: &str, hostname: &str) -> Response {
    match records(store, domain, hostname) {
        Ok(text) => Response::Text { text },
        Err(r) => r,
    }
}

fn parse_id(id: &str) -> Result<QueueId, Response> {
    QueueId::from_str_radix(id.trim(), 16)
        .map_err(|_| error(ErrorKind::Invalid, format!("{id:?} is not a queue id")))
}

fn state_name(s: RcptState) -> &'static str {
    match s {
        RcptState::Pending => "pending",
        RcptState::Delivered => "delivered",
        RcptState::Failed => "failed",
    }
}

fn summary(id: QueueId, m: &QueuedMessage) -> String {
    let pending = m
        .recipients
        .iter()
        .filter(|r| r.state == RcptState::Pending)
        .count();
    let status = match (&m.held, &m.lease) {
        (Some(_), _) => "held".to_owned(),
        (None, Some(_)) => "sending".to_owned(),
        (None, None) => format!("next {}", rfc5322_date(m.due)),
    };
    format!(
        "{id:016x}  {:>9}  {:>2}/{:<2} rcpt  {:>3} tries  {}  <{}>",
        m.size,
        pending,
        m.recipients.len(),
        m.attempts,
        status,
        m.mail_from
    )
}

/// `tern queue list`: every message, or only the held ones.
pub fn queue_list(store: &MailStore, errors_only: bool) -> Response {
    let all = match queue::list(store.kv()) {
        Ok(a) => a,
        Err(e) => return store_error(e, "queue", ""),
    };
    let mut text = String::new();
    let shown: Vec<_> = all
        .iter()
        .filter(|(_, m)| !errors_only || m.held.is_some())
        .collect();
    if shown.is_empty() {
        text.push_str(if errors_only {
            "the error queue is empty\n"
        } else {
            "the queue is empty\n"
        });
    } else {
        let _ = writeln!(
            text,
            "{:<16}  {:>9}  {:>5} rcpt  {:>3} tries  STATUS  SENDER",
            "ID", "SIZE", "LEFT", "#"
        );
        for (id, m) in shown {
            let _ = writeln!(text, "{}", summary(*id, m));
        }
    }
    Response::Text { text }
}

/// `tern queue show ID`.
pub fn queue_show(store: &MailStore, id: &str) -> Response {
    let id = match parse_id(id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    let found = store.kv().read(|tx| queue::get(tx, id));
    let m = match found {
        Ok(Some(m)) => m,
        Ok(None) => return error(ErrorKind::NotFound, format!("queue id {id:016x} not found")),
        Err(e) => return store_error(e, "queue", ""),
    };
    let mut t = String::new();
    let _ = writeln!(t, "id:          {id:016x}");
    let _ = writeln!(t, "from:        <{}>", m.mail_from);
    let _ = writeln!(t, "size:        {} bytes", m.size);
    let _ = writeln!(t, "queued:      {}", rfc5322_date(m.created));
    if m.send_at > m.created {
        let _ = writeln!(t, "send at:     {}", rfc5322_date(m.send_at));
    }
    if let Some(e) = m.expires {
        let _ = writeln!(t, "expires:     {}", rfc5322_date(e));
    }
    let _ = writeln!(t, "attempts:    {}", m.attempts);
    match (&m.held, &m.lease) {
        (Some(why), _) => {
            let _ = writeln!(t, "status:      held in the error queue: {why}");
        }
        (None, Some(l)) => {
            let _ = writeln!(
                t,
                "status:      being sent (lease until {})",
                rfc5322_date(l.until)
            );
        }
        (None, None) => {
            let _ = writeln!(t, "status:      next attempt {}", rfc5322_date(m.due));
        }
    }
    if let Some(e) = &m.last_error {
        let _ = writeln!(t, "last error:  {e}");
    }
    for r in &m.recipients {
        let _ = writeln!(
            t,
            "rcpt:        <{}> {}{}{}",
            r.address,
            state_name(r.state),
            r.reply
                .as_ref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default(),
            r.remote_mta
                .as_ref()
                .map(|x| format!(" ({x})"))
                .unwrap_or_default()
        );
    }
    Response::Text { text: t }
}

/// `tern queue retry ID`.
pub fn queue_retry(store: &MailStore, id: &str) -> Response {
    let id = match parse_id(id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    match queue::retry(store.kv(), id) {
        Ok(()) => Response::Done {
            message: format!("message {id:016x} will be tried now"),
        },
        Err(tern_store::Error::NotFound(_)) => {
            error(ErrorKind::NotFound, format!("queue id {id:016x} not found"))
        }
        Err(e) => store_error(e, "queue", ""),
    }
}

/// `tern queue cancel ID`: removes the message without a bounce.
pub fn queue_cancel(store: &MailStore, id: &str) -> Response {
    let id = match parse_id(id) {
        Ok(i) => i,
        Err(r) => return r,
    };
    match queue::cancel(store.kv(), id) {
        Ok(m) => Response::Done {
            message: format!(
                "message {id:016x} removed from the queue ({} recipient(s) not notified)",
                m.recipients
                    .iter()
                    .filter(|r| r.state == RcptState::Pending)
                    .count()
            ),
        },
        Err(tern_store::Error::NotFound(_)) => {
            error(ErrorKind::NotFound, format!("queue id {id:016x} not found"))
        }
        Err(e) => store_error(e, "queue", ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_add_makes_a_key_and_prints_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(&dir.path().join("data")).unwrap();
        let Response::Text { text } = domain_setup(
            &store,
            "example.test",
            DkimKind::Ed25519,
            "tern",
            "mx.example.test",
        ) else {
            panic!("expected the records");
        };
        assert!(text.contains("example.test.\t3600\tIN\tMX\t10 mx.example.test."));
        assert!(
            text.contains("tern._domainkey.example.test.\t3600\tIN\tTXT\t\"v=DKIM1; k=ed25519; p=")
        );
        assert!(text.contains("_dmarc.example.test."));
        // Reprinted the same; the key is kept.
        let Response::Text { text: again } = domain_dns(&store, "example.test", "mx.example.test")
        else {
            panic!("expected the records");
        };
        assert_eq!(text, format!("domain example.test added\n{again}"));
        assert!(!ensure_dkim_key(&store, "example.test", DkimKind::Ed25519, "tern").unwrap());
        assert!(matches!(
            domain_dns(&store, "other.test", "mx"),
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn queue_commands() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(&dir.path().join("data")).unwrap();
        let envelope = tern_store::Envelope {
            mail_from: "a@x.test".into(),
            recipients: vec![tern_store::EnvelopeRecipient {
                address: "b@y.test".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let id = queue::enqueue(
            store.kv(),
            b"Subject: x\r\n\r\nbody\r\n",
            None,
            &envelope,
            0,
        )
        .unwrap();
        let Response::Text { text } = queue_list(&store, false) else {
            panic!("expected a listing");
        };
        assert!(text.contains(&format!("{id:016x}")), "{text}");
        let Response::Text { text } = queue_show(&store, &format!("{id:x}")) else {
            panic!("expected details");
        };
        assert!(text.contains("rcpt:        <b@y.test> pending"), "{text}");
        assert!(matches!(
            queue_retry(&store, &format!("{id:x}")),
            Response::Done { .. }
        ));
        assert!(matches!(
            queue_cancel(&store, &format!("{id:x}")),
            Response::Done { .. }
        ));
        assert!(matches!(
            queue_cancel(&store, &format!("{id:x}")),
            Response::Error {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
        assert!(matches!(
            queue_show(&store, "zz"),
            Response::Error {
                kind: ErrorKind::Invalid,
                ..
            }
        ));
    }
}
