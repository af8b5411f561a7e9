//! End to end through the `tern` binary: `tern spam train` against a
//! running server (over the admin socket), mail over SMTP scored with the
//! trained global model, then a JMAP client (the third-party `jmap-client`
//! crate) moving a message into Junk with Email/set, after which the same
//! message scores as spam for that account, and out again, after which it
//! scores as ham. And JMAP EmailSubmissions through the same filter as
//! SMTP submissions: the clamd scan (Debian's clamd, started by the test
//! with a signature it writes), the sending rate, and what `/metrics`
//! shows of them.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Listeners, Tern, free_port};
use jmap_client::client::{Client, Credentials};
use jmap_client::core::set::SetErrorType;
use jmap_client::email::{self, Property};
use jmap_client::mailbox::Role;
use tern_testkit::{Clamd, EICAR};

const USER: &str = "alice@example.com";
const PASSWORD: &str = "wonderland";

/// A server (with the metrics listener) with `extra` appended to its
/// config.
fn start(extra: &str) -> Tern {
    let mut tern = Tern::new(
        Listeners {
            metrics: true,
            ..Listeners::default()
        },
        &format!(
            "[smtp.checks]\n\
             enabled = false\n\
             [spam]\n\
             junk_threshold = 5.0\n\
             reject_threshold = 15.0\n\
             learning = true\n\
             {extra}"
        ),
    );
    tern.start();
    tern
}

/// One SMTP transaction on the MX listener; the reply to the data.
fn smtp_send(port: u16, to: &str, message: &str) -> String {
    common::smtp_send(port, "news@elsewhere.test", to, message)
}

/// Writes `n` messages of a made-up vocabulary into `dir`, one per file.
fn write_corpus(dir: &Path, vocabulary: &str, n: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        let words: Vec<String> = (0..40)
            .map(|k| format!("{vocabulary}{}", (i * 7 + k) % 60))
            .collect();
        std::fs::write(
            dir.join(format!("{i}.eml")),
            format!(
                "From x@{vocabulary}.example  Thu Aug 22 13:17:22 2002\n\
                 From: x{i}@{vocabulary}.example\nSubject: {vocabulary} {i}\n\n{}\n",
                words.join(" ")
            ),
        )
        .unwrap();
    }
}

fn newsletter(n: usize) -> String {
    format!(
        "From: News <news@elsewhere.test>\n\
         To: alice@example.com\n\
         Subject: Zanzibar widgets\n\
         Message-ID: <news-{n}@elsewhere.test>\n\
         Date: Mon, 2 Mar 2026 10:00:00 +0000\n\
         \n\
         Quarterly zanzibar widget recalibration newsletter, edition fourteen,\n\
         with peculiar marmalade logistics.\n"
    )
}

fn header(raw: &[u8], name: &str) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let head = text.split("\r\n\r\n").next().unwrap_or("");
    let unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded.split("\r\n").find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
    })
}

/// (id, score, status, in junk) of the newsletter number `n`.
async fn scored(client: &Client, junk_id: &str, n: usize) -> (String, f64, String, bool) {
    let mut request = client.build();
    let query = request.query_email();
    query
        .sort([email::query::Comparator::received_at().descending()])
        .limit(200);
    let reference = query.result_reference();
    request.get_email().ids_ref(reference).properties([
        Property::Id,
        Property::BlobId,
        Property::MailboxIds,
        Property::MessageId,
    ]);
    let mut response = request.send().await.unwrap().unwrap_method_responses();
    let emails = response
        .pop()
        .unwrap()
        .unwrap_get_email()
        .unwrap()
        .take_list();
    let wanted = format!("news-{n}@elsewhere.test");
    let mut out = Vec::new();
    for e in emails {
        if !e.message_id().is_some_and(|ids| ids.contains(&wanted)) {
            continue;
        }
        let raw = client.download(e.blob_id().unwrap()).await.unwrap();
        let score = header(&raw, "X-Spam-Score")
            .expect("X-Spam-Score")
            .parse()
            .unwrap();
        let status = header(&raw, "X-Spam-Status").expect("X-Spam-Status");
        let in_junk = e.mailbox_ids().contains(&junk_id);
        out.push((e.id().unwrap().to_owned(), score, status, in_junk));
    }
    assert_eq!(out.len(), 1, "newsletter {n} is stored once");
    out.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_spam_train_and_jmap_moves_change_the_accounts_score() {
    let tern = start("");
    tern.cli(&["account", "add", USER, "--password", PASSWORD]);

    // Bulk training of the global model through the running server.
    let corpus = tern.dir.path().join("corpus");
    write_corpus(&corpus.join("spam"), "spamword", 25);
    write_corpus(&corpus.join("ham"), "hamword", 25);
    let out = tern.cli(&[
        "spam",
        "train",
        "--spam",
        corpus.join("spam").to_str().unwrap(),
        "--ham",
        corpus.join("ham").to_str().unwrap(),
    ]);
    assert!(
        out.contains("trained 25 spam and 25 ham messages into the global model"),
        "{out}"
    );
    // The server notices the global model changed within 2 s.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let port = tern.smtp;
    let send =
        move |n: usize| tokio::task::spawn_blocking(move || smtp_send(port, USER, &newsletter(n)));
    let r = send(0).await.unwrap();
    assert!(r.starts_with("250"), "{r}");

    let client = Client::new()
        .credentials(Credentials::basic(USER, PASSWORD))
        .timeout(Duration::from_secs(30))
        .connect(&tern.base_url())
        .await
        .unwrap();
    let mut request = client.build();
    request.get_mailbox();
    let mailboxes = request
        .send_single::<jmap_client::core::response::MailboxGetResponse>()
        .await
        .unwrap()
        .take_list();
    let role_id = |role: Role| -> String {
        mailboxes
            .iter()
            .find(|m| m.role() == role)
            .unwrap()
            .id()
            .unwrap()
            .to_string()
    };
    let (inbox_id, junk_id) = (role_id(Role::Inbox), role_id(Role::Junk));

    let first = scored(&client, &junk_id, 0).await;
    let (first_id, neutral) = (first.0.clone(), first.1);
    assert!(
        first.2.contains("BAYES_50"),
        "the global model is in use: {}",
        first.2
    );
    assert!(!first.3, "a neutral message goes to the Inbox");

    // Alice moves it into Junk: trained as spam for her (asynchronously).
    client
        .email_set_mailboxes(&first_id, [junk_id.clone()])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 1;
    let spam_copy = loop {
        let r = send(n).await.unwrap();
        assert!(r.starts_with("250"), "{r}");
        let last = scored(&client, &junk_id, n).await;
        n += 1;
        if last.1 > neutral + 4.0 {
            break last;
        }
        assert!(
            Instant::now() < deadline,
            "the move into Junk was never learned"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(spam_copy.3, "now filed in Junk");
    assert!(spam_copy.2.starts_with("Yes"), "{}", spam_copy.2);
    assert!(spam_copy.2.contains("BAYES_99"), "{}", spam_copy.2);

    // And out of Junk again: untrained as spam, trained as ham.
    client
        .email_set_mailboxes(&first_id, [inbox_id.clone()])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = send(n).await.unwrap();
        assert!(r.starts_with("250"), "{r}");
        let last = scored(&client, &junk_id, n).await;
        n += 1;
        if last.1 < neutral {
            assert!(!last.3, "back in the Inbox");
            assert!(last.2.contains("BAYES_00"), "{}", last.2);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the move out of Junk was never learned"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A message from alice to herself; with the EICAR file attached when
/// `infected`.
fn submission_message(subject: &str, infected: bool) -> Vec<u8> {
    use base64::Engine;
    let attachment = if infected {
        base64::engine::general_purpose::STANDARD.encode(EICAR)
    } else {
        base64::engine::general_purpose::STANDARD.encode(b"quarterly figures")
    };
    let text = if subject == "gtube" {
        "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    } else {
        "The figures, attached."
    };
    format!(
        "From: Alice <alice@example.com>\r\nTo: alice@example.com\r\nSubject: {subject}\r\n\
         Date: Mon, 2 Mar 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@example.com>\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n\
         --zz\r\nContent-Type: text/plain\r\n\r\n{text}\r\n\
         --zz\r\nContent-Type: application/octet-stream\r\n\
         Content-Disposition: attachment; filename=figures.bin\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n{attachment}\r\n--zz--\r\n"
    )
    .into_bytes()
}

fn scrape(port: u16) -> String {
    let r = common::http(port, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

fn sample(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Alice, added to `tern`, as a JMAP client with what she needs to send.
struct Sender {
    client: Client,
    drafts: String,
    inbox: String,
    identity: String,
}

async fn sender(tern: &Tern) -> Sender {
    tern.cli(&["account", "add", USER, "--password", PASSWORD]);
    let client = Client::new()
        .credentials(Credentials::basic(USER, PASSWORD))
        .timeout(Duration::from_secs(60))
        .connect(&tern.base_url())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for role in [Role::Drafts, Role::Inbox] {
        let id = client
            .mailbox_query(
                Some(jmap_client::mailbox::query::Filter::role(role)),
                None::<Vec<_>>,
            )
            .await
            .unwrap()
            .take_ids()
            .remove(0);
        ids.push(id);
    }
    let mut request = client.build();
    request.get_identity();
    let identity = request
        .send_get_identity()
        .await
        .unwrap()
        .take_list()
        .remove(0)
        .id()
        .unwrap()
        .to_owned();
    let inbox = ids.pop().unwrap();
    let drafts = ids.pop().unwrap();
    Sender {
        client,
        drafts,
        inbox,
        identity,
    }
}

impl Sender {
    /// Imports `raw` as a draft and submits it with the identity.
    async fn send(
        &self,
        raw: Vec<u8>,
    ) -> jmap_client::Result<jmap_client::email_submission::EmailSubmission> {
        let email = self
            .client
            .email_import(raw, [self.drafts.as_str()], Some(["$draft"]), None)
            .await
            .unwrap();
        self.client
            .email_submission_create(email.id().unwrap(), self.identity.as_str())
            .await
    }

    /// The ids of the emails in the Inbox.
    async fn inbox_ids(&self) -> Vec<String> {
        self.client
            .email_query(
                Some(jmap_client::email::query::Filter::in_mailbox(
                    self.inbox.as_str(),
                )),
                None::<Vec<_>>,
            )
            .await
            .unwrap()
            .take_ids()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmap_submissions_pass_the_virus_scan_and_sending_limits_and_metrics_count_them() {
    let clamd = match tokio::task::spawn_blocking(Clamd::start).await.unwrap() {
        Ok(c) => c,
        Err(reason) => {
            println!("SKIPPED: clamd cannot start: {reason}");
            return;
        }
    };
    let tern = start(&format!(
        "[spam.outbound]\nmessages_per_hour = 4\n\
         [virus]\nclamd = \"tcp:127.0.0.1:{}\"\non_unreachable = \"tempfail\"\n",
        clamd.port()
    ));
    let alice = sender(&tern).await;
    let submit =
        |subject: &'static str, infected: bool| alice.send(submission_message(subject, infected));
    let refused = |result: jmap_client::Result<_>| match result {
        Err(jmap_client::Error::Set(e)) => (
            e.error().clone(),
            e.description().unwrap_or_default().to_owned(),
        ),
        Err(other) => panic!("not a SetError: {other:?}"),
        Ok(created) => panic!("created: {created:?}"),
    };

    // A virus: forbiddenToSend, nothing delivered.
    let (kind, description) = refused(submit("infected", true).await);
    assert_eq!(kind, SetErrorType::ForbiddenToSend);
    assert!(
        description.contains("virus found (Tern.Test.EICAR"),
        "{description}"
    );
    // Clean: sent (alice is local: delivered at once).
    let sub = submit("clean", false).await.unwrap();
    assert!(sub.id().is_some());
    // Spam (GTUBE): forbiddenToSend, a strike.
    let (kind, description) = refused(submit("gtube", false).await);
    assert_eq!(kind, SetErrorType::ForbiddenToSend);
    assert!(description.contains("refused as spam"), "{description}");
    // clamd gone, policy tempfail: forbiddenToSend, try later.
    drop(clamd);
    let (kind, description) = refused(submit("unscanned", false).await);
    assert_eq!(kind, SetErrorType::ForbiddenToSend);
    assert!(description.contains("try again later"), "{description}");
    // The fifth submission in the hour: rateLimit.
    let (kind, _) = refused(submit("fifth", false).await);
    assert_eq!(kind, SetErrorType::RateLimit);

    // Only the clean one reached the Inbox.
    let inbox = alice.inbox_ids().await;
    assert_eq!(inbox.len(), 1, "{inbox:?}");

    let port = tern.metrics;
    let text = tokio::task::spawn_blocking(move || scrape(port))
        .await
        .unwrap();
    assert_eq!(
        sample(&text, "tern_virus_scans_total{result=\"infected\"}"),
        1
    );
    assert_eq!(sample(&text, "tern_virus_scans_total{result=\"clean\"}"), 2);
    assert_eq!(
        sample(&text, "tern_virus_scans_total{result=\"unscanned\"}"),
        1
    );
    assert_eq!(
        sample(
            &text,
            "tern_spam_verdicts_total{direction=\"outbound\",verdict=\"accept\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "tern_spam_verdicts_total{direction=\"outbound\",verdict=\"reject\"}"
        ),
        1
    );
    assert_eq!(
        sample(
            &text,
            "tern_submissions_throttled_total{reason=\"rate_limit\"}"
        ),
        1
    );
    assert_eq!(
        sample(&text, "tern_throttled_accounts{reason=\"rate_limit\"}"),
        1
    );
    assert_eq!(
        sample(&text, "tern_throttled_accounts{reason=\"blocked\"}"),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jmap_submission_sent_while_clamd_is_down_is_tagged_unscanned_under_accept() {
    // Nothing listens on this port: clamd is down; the policy accepts.
    let port = free_port();
    let tern = start(&format!(
        "[virus]\nclamd = \"tcp:127.0.0.1:{port}\"\non_unreachable = \"accept\"\n"
    ));
    let alice = sender(&tern).await;
    // The draft claims to be clean; only the filter's own tag may stay.
    let draft = String::from_utf8(submission_message("unscanned", false))
        .unwrap()
        .replacen("Subject:", "X-Virus-Status: Clean\r\nSubject:", 1);
    alice
        .send(draft.into_bytes())
        .await
        .expect("accepted while clamd is down");
    // Alice is local: her Inbox copy is the message as sent.
    let ids = alice.inbox_ids().await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let client = &alice.client;
    let copy = client
        .email_get(&ids[0], Some([Property::BlobId]))
        .await
        .unwrap()
        .expect("the delivered copy");
    let raw = client.download(copy.blob_id().unwrap()).await.unwrap();
    assert_eq!(header(&raw, "X-Virus-Status").as_deref(), Some("Unscanned"));
    assert_eq!(
        String::from_utf8_lossy(&raw)
            .matches("X-Virus-Status")
            .count(),
        1
    );
}
