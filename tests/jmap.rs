//! End to end: the real `tern` binary (`tern serve` with a temp config on
//! free ports), mail delivered over SMTP on the MX listener, read and
//! changed over JMAP with the third-party `jmap-client` crate: session,
//! Mailbox/get with roles and counts, Email/query + Email/get through a
//! back-reference, Email/set keywords, Email/changes, Mailbox/set, an
//! attachment download, upload + Email/import, Email/queryChanges and
//! Thread/get. Then a clean SIGTERM stop. And the vacation auto-reply:
//! VacationResponse/set over JMAP, mail over SMTP, one reply per sender.

mod common;

use std::time::{Duration, Instant};

use common::{Listeners, Tern, smtp_deliver};
use jmap_client::client::{Client, Credentials};
use jmap_client::core::query::Filter;
use jmap_client::email::{self, Property};
use jmap_client::mailbox::Role;

const USER: &str = "alice@example.com";
const PASSWORD: &str = "wonderland";

/// `tern serve` on free ports; DNS is unreachable here: no SPF/DKIM/DMARC
/// checks on the MX.
fn start() -> Tern {
    let mut tern = Tern::new(
        Listeners::default(),
        "[smtp.checks]\nenabled = false\n[log]\nlevel = \"info\"\n",
    );
    tern.start();
    tern
}

fn attachment_bytes() -> Vec<u8> {
    (0..3000u32).map(|i| (i * 7 % 256) as u8).collect()
}

/// Base64 in 76-character lines, as MIME wants.
fn base64(data: &[u8]) -> String {
    common::base64(data)
        .as_bytes()
        .chunks(76)
        .map(|l| std::str::from_utf8(l).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

fn messages() -> [String; 3] {
    [
        "From: Bob <bob@elsewhere.test>\n\
         To: Alice <alice@example.com>\n\
         Subject: Lunch on Friday\n\
         Message-ID: <lunch-1@elsewhere.test>\n\
         Date: Mon, 2 Mar 2026 10:00:00 +0000\n\
         \n\
         Shall we have lunch on Friday?\n\
         .A line starting with a dot.\n"
            .to_string(),
        format!(
            "From: Carol <carol@elsewhere.test>\n\
             To: alice@example.com\n\
             Subject: The report\n\
             Message-ID: <report@elsewhere.test>\n\
             Date: Mon, 2 Mar 2026 11:00:00 +0000\n\
             MIME-Version: 1.0\n\
             Content-Type: multipart/mixed; boundary=\"b1\"\n\
             \n\
             --b1\n\
             Content-Type: text/plain; charset=utf-8\n\
             \n\
             The report is attached.\n\
             --b1\n\
             Content-Type: application/octet-stream\n\
             Content-Disposition: attachment; filename=\"report.bin\"\n\
             Content-Transfer-Encoding: base64\n\
             \n\
             {}\n\
             --b1--\n",
            base64(&attachment_bytes())
        ),
        "From: Bob <bob@elsewhere.test>\n\
         To: Alice <alice@example.com>\n\
         Subject: Re: Lunch on Friday\n\
         Message-ID: <lunch-2@elsewhere.test>\n\
         In-Reply-To: <lunch-1@elsewhere.test>\n\
         References: <lunch-1@elsewhere.test>\n\
         Date: Mon, 2 Mar 2026 12:00:00 +0000\n\
         \n\
         Or Saturday.\n"
            .to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jmap_client_reads_mail_delivered_over_smtp_to_the_tern_binary() {
    let mut tern = start();
    tern.cli(&["account", "add", USER, "--password", PASSWORD]);

    // Three messages over SMTP, one after the other (receivedAt order).
    let port = tern.smtp;
    tokio::task::spawn_blocking(move || {
        for m in messages() {
            smtp_deliver(port, "sender@elsewhere.test", USER, &m);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .await
    .unwrap();

    let client = Client::new()
        .credentials(Credentials::basic(USER, PASSWORD))
        .timeout(Duration::from_secs(30))
        .connect(&tern.base_url())
        .await
        .unwrap();

    // Session: capabilities and absolute URLs on the configured listener.
    let session = client.session();
    assert_eq!(session.username(), USER);
    for c in [
        "urn:ietf:params:jmap:core",
        "urn:ietf:params:jmap:mail",
        "urn:ietf:params:jmap:submission",
        "urn:ietf:params:jmap:vacationresponse",
        "urn:ietf:params:jmap:quota",
    ] {
        assert!(session.has_capability(c), "{c} missing");
    }
    assert_eq!(session.api_url(), format!("{}/jmap/api/", tern.base_url()));
    assert!(session.upload_url().starts_with(&tern.base_url()));
    assert!(session.download_url().starts_with(&tern.base_url()));
    assert!(session.core_capabilities().unwrap().max_size_upload() >= 50_000_000);

    // Mailbox/get: every default role, and the inbox's counts.
    let mut request = client.build();
    request.get_mailbox();
    let mut mailboxes = request
        .send_single::<jmap_client::core::response::MailboxGetResponse>()
        .await
        .unwrap();
    let mailbox_state = mailboxes.take_state();
    let mailboxes = mailboxes.take_list();
    let role_id = |role: Role| -> String {
        mailboxes
            .iter()
            .find(|m| m.role() == role)
            .unwrap_or_else(|| panic!("no mailbox with role {role:?}"))
            .id()
            .unwrap()
            .to_string()
    };
    for role in [
        Role::Inbox,
        Role::Drafts,
        Role::Sent,
        Role::Archive,
        Role::Junk,
        Role::Trash,
    ] {
        role_id(role);
    }
    let inbox_id = role_id(Role::Inbox);
    let archive_id = role_id(Role::Archive);
    let inbox = mailboxes.iter().find(|m| m.role() == Role::Inbox).unwrap();
    assert_eq!(inbox.name(), Some("Inbox"));
    assert_eq!(inbox.total_emails(), 3);
    assert_eq!(inbox.unread_emails(), 3);
    assert_eq!(inbox.total_threads(), 2, "the reply joins the lunch thread");
    assert_eq!(inbox.unread_threads(), 2);

    // Email/query (inbox, newest first) and Email/get of the page through
    // a back-reference, in one request.
    let mut request = client.build();
    let query = request.query_email();
    query
        .filter(Filter::from(email::query::Filter::in_mailbox(&inbox_id)))
        .sort([email::query::Comparator::received_at().descending()])
        .limit(50)
        .calculate_total(true);
    let reference = query.result_reference();
    request.get_email().ids_ref(reference).properties([
        Property::Id,
        Property::ThreadId,
        Property::MailboxIds,
        Property::Keywords,
        Property::From,
        Property::Subject,
        Property::ReceivedAt,
        Property::Preview,
        Property::HasAttachment,
        Property::Size,
    ]);
    let mut responses = request.send().await.unwrap().unwrap_method_responses();
    assert_eq!(responses.len(), 2);
    let mut got = responses.pop().unwrap().unwrap_get_email().unwrap();
    let mut queried = responses.pop().unwrap().unwrap_query_email().unwrap();
    let email_state = got.take_state();
    let query_state = queried.take_query_state();
    assert_eq!(queried.total(), Some(3));
    let ids = queried.take_ids();
    let list = got.take_list();
    assert_eq!(
        list.iter().map(|e| e.id().unwrap()).collect::<Vec<_>>(),
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        "Email/get answers in the order of the query"
    );
    let subjects: Vec<&str> = list.iter().map(|e| e.subject().unwrap()).collect();
    assert_eq!(
        subjects,
        ["Re: Lunch on Friday", "The report", "Lunch on Friday"]
    );
    assert_eq!(list[0].thread_id(), list[2].thread_id());
    assert_ne!(list[0].thread_id(), list[1].thread_id());
    assert!(list[1].has_attachment() && !list[0].has_attachment());
    assert_eq!(list[0].preview(), Some("Or Saturday."));
    assert_eq!(list[2].from().unwrap()[0].email(), "bob@elsewhere.test");
    assert_eq!(list[2].mailbox_ids(), [inbox_id.as_str()]);
    assert!(list.iter().all(|e| e.keywords().is_empty()));
    // Dot-stuffing undone by the SMTP server: the body is intact.
    let mut request = client.build();
    request
        .get_email()
        .ids([ids[2].as_str()])
        .properties([Property::TextBody, Property::BodyValues])
        .arguments()
        .fetch_text_body_values(true);
    let first = request
        .send_single::<jmap_client::core::response::EmailGetResponse>()
        .await
        .unwrap()
        .take_list()
        .pop()
        .unwrap();
    let part = first.text_body().unwrap()[0].part_id().unwrap();
    assert_eq!(
        first.body_value(part).unwrap().value(),
        "Shall we have lunch on Friday?\n.A line starting with a dot.\n"
    );

    // Download the attachment of "The report".
    let report = client
        .email_get(&ids[1], Some([Property::Attachments]))
        .await
        .unwrap()
        .unwrap();
    let attachment = &report.attachments().unwrap()[0];
    assert_eq!(attachment.name(), Some("report.bin"));
    let downloaded = client
        .download(attachment.blob_id().unwrap())
        .await
        .unwrap();
    assert_eq!(downloaded, attachment_bytes());

    // Email/set: mark the oldest read; the inbox's unread counts follow.
    client
        .email_set_keyword(&ids[2], "$seen", true)
        .await
        .unwrap();
    let seen = client
        .email_get(&ids[2], Some([Property::Keywords]))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(seen.keywords(), ["$seen"]);
    let inbox = client
        .mailbox_get(&inbox_id, None::<Vec<_>>)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(inbox.unread_emails(), 2);
    assert_eq!(
        inbox.unread_threads(),
        2,
        "the lunch thread still has an unread email"
    );

    // Email/changes: exactly that email was updated.
    let changes = client.email_changes(&email_state, None).await.unwrap();
    assert!(changes.created().is_empty());
    assert_eq!(changes.updated(), [ids[2].clone()]);
    assert!(changes.destroyed().is_empty());
    assert!(!changes.has_more_changes());
    let after_seen = changes.new_state().to_string();
    // Mailbox/changes: the inbox's counts changed.
    let changes = client.mailbox_changes(&mailbox_state, 100).await.unwrap();
    assert_eq!(changes.updated(), std::slice::from_ref(&inbox_id));

    // Mailbox/set: a new folder under the inbox.
    let projects = client
        .mailbox_create("Projects", Some(inbox_id.clone()), Role::None)
        .await
        .unwrap()
        .take_id();

    // Upload + Email/import into it, as read.
    let raw = b"From: Dave <dave@elsewhere.test>\r\n\
                To: alice@example.com\r\n\
                Subject: Imported\r\n\
                Date: Tue, 3 Mar 2026 09:00:00 +0000\r\n\
                \r\n\
                Imported by the client.\r\n"
        .to_vec();
    let imported = client
        .email_import(raw.clone(), [projects.as_str()], Some(["$seen"]), None)
        .await
        .unwrap();
    let imported_id = imported.id().unwrap().to_string();
    assert_eq!(imported.size(), raw.len());
    let got = client
        .email_get(
            &imported_id,
            Some([Property::Subject, Property::MailboxIds, Property::Keywords]),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.subject(), Some("Imported"));
    assert_eq!(got.mailbox_ids(), [projects.as_str()]);
    assert_eq!(got.keywords(), ["$seen"]);
    let in_projects = client
        .email_query(
            Some(email::query::Filter::in_mailbox(&projects)),
            None::<Vec<_>>,
        )
        .await
        .unwrap();
    assert_eq!(in_projects.ids(), std::slice::from_ref(&imported_id));
    let changes = client.email_changes(&after_seen, None).await.unwrap();
    assert_eq!(changes.created(), std::slice::from_ref(&imported_id));
    assert!(changes.updated().is_empty());

    // Move the report to the archive; Email/queryChanges of the inbox
    // query reports it removed (and the keyword change as re-added).
    client
        .email_set_mailboxes(&ids[1], [archive_id.as_str()])
        .await
        .unwrap();
    let query_changes = client
        .email_query_changes(
            &query_state,
            Some(email::query::Filter::in_mailbox(&inbox_id)),
        )
        .await
        .unwrap();
    assert!(query_changes.removed().contains(&ids[1]));
    assert!(query_changes.added().iter().all(|a| a.id() != ids[1]));
    let inbox_now = client
        .email_query(
            Some(email::query::Filter::in_mailbox(&inbox_id)),
            None::<Vec<_>>,
        )
        .await
        .unwrap();
    assert_eq!(inbox_now.ids(), [ids[0].clone(), ids[2].clone()]);

    // Thread/get: the lunch thread holds both lunch emails, oldest first.
    let thread = client
        .thread_get(list[0].thread_id().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(thread.email_ids(), [ids[2].as_str(), ids[0].as_str()]);

    tern.stop();
}

/// The responses to `calls` as `user` (password `PASSWORD`): JSON with
/// `ACCOUNT` standing for the account id.
fn jmap_api(port: u16, user: &str, calls: &str) -> serde_json::Value {
    let account = common::account_id(port, user, PASSWORD);
    let calls = serde_json::from_str(&calls.replace("ACCOUNT", &account)).unwrap();
    let using = [
        common::CORE,
        common::MAIL,
        "urn:ietf:params:jmap:vacationresponse",
    ];
    serde_json::Value::Array(common::jmap(port, user, PASSWORD, &using, calls))
}

/// Subject, To and Auto-Submitted of every email in `user`'s Inbox.
fn inbox(port: u16, user: &str) -> Vec<serde_json::Value> {
    let r = jmap_api(
        port,
        user,
        r#"[["Mailbox/query", {"accountId": "ACCOUNT", "filter": {"role": "inbox"}}, "m"]]"#,
    );
    let inbox = r[0][1]["ids"][0].as_str().unwrap().to_string();
    let r = jmap_api(
        port,
        user,
        &r##"[["Email/query", {"accountId": "ACCOUNT", "filter": {"inMailbox": "INBOX"}}, "q"],
              ["Email/get", {"accountId": "ACCOUNT",
                "#ids": {"resultOf": "q", "name": "Email/query", "path": "/ids"},
                "properties": ["subject", "to", "header:Auto-Submitted:asText"]}, "g"]]"##
            .replace("INBOX", &inbox),
    );
    assert_eq!(r[1][0], "Email/get", "{r}");
    r[1][1]["list"].as_array().cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacation_response_set_over_jmap_answers_smtp_mail_once_per_sender() {
    let mut tern = start();
    for user in [USER, "bob@example.com", "carol@example.com"] {
        tern.cli(&["account", "add", user, "--password", PASSWORD]);
    }
    let port = tern.jmap;
    let smtp = tern.smtp;
    tokio::task::spawn_blocking(move || {
        let r = jmap_api(
            port,
            USER,
            r#"[["VacationResponse/set", {"accountId": "ACCOUNT", "update": {"singleton": {
                 "isEnabled": true, "subject": "Away until Monday",
                 "textBody": "I am away; back on Monday."}}}, "v"]]"#,
        );
        assert_eq!(
            r[0][1]["updated"]["singleton"],
            serde_json::Value::Null,
            "{r}"
        );
        // Bob writes twice, Carol through a mailing list.
        for n in 1..=2 {
            smtp_deliver(
                smtp,
                "bob@example.com",
                USER,
                &format!(
                    "From: Bob <bob@example.com>\nTo: Alice <{USER}>\nSubject: Question {n}\n\
                     Message-ID: <q{n}@example.com>\n\nAre you there?\n"
                ),
            );
        }
        smtp_deliver(
            smtp,
            "carol@example.com",
            USER,
            &format!(
                "From: Carol <carol@example.com>\nTo: Alice <{USER}>\nSubject: News\n\
                 List-Id: <news.example.com>\nMessage-ID: <n1@example.com>\n\nNews.\n"
            ),
        );
        assert_eq!(inbox(port, USER).len(), 3, "alice got all three");
        // The reply is sent after the 250, off the SMTP reply's path.
        let deadline = Instant::now() + Duration::from_secs(20);
        let replies = loop {
            let replies = inbox(port, "bob@example.com");
            if !replies.is_empty() || Instant::now() > deadline {
                break replies;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // Give a second (wrong) reply time to arrive.
        std::thread::sleep(Duration::from_secs(2));
        let replies_now = inbox(port, "bob@example.com");
        assert_eq!(
            replies_now.len(),
            1,
            "one reply per sender: {replies_now:?}"
        );
        assert_eq!(replies, replies_now);
        let reply = &replies[0];
        assert_eq!(reply["subject"], "Away until Monday", "{reply}");
        assert_eq!(reply["to"][0]["email"], "bob@example.com", "{reply}");
        assert_eq!(
            reply["header:Auto-Submitted:asText"], "auto-replied",
            "{reply}"
        );
        assert!(
            inbox(port, "carol@example.com").is_empty(),
            "list mail is not answered (RFC 3834)"
        );
    })
    .await
    .unwrap();
    tern.stop();
}

/// Email/copy over the real server: alice cannot reach bob's account
/// (fromAccountNotFound, and no implicit Email/set for
/// onSuccessDestroyOriginal), nor copy within her own (invalidArguments);
/// bob's email stays where it was.
#[test]
fn email_copy_from_an_account_the_user_cannot_reach_is_refused() {
    let mut tern = start();
    for user in [USER, "bob@example.com"] {
        tern.cli(&["account", "add", user, "--password", PASSWORD]);
    }
    smtp_deliver(
        tern.smtp,
        "carol@elsewhere.test",
        "bob@example.com",
        "From: Carol <carol@elsewhere.test>\nTo: bob@example.com\nSubject: For Bob\n\nHello.\n",
    );
    let port = tern.jmap;
    let bob = common::account_id(port, "bob@example.com", PASSWORD);
    let bob_emails = || {
        jmap_api(
            port,
            "bob@example.com",
            r#"[["Email/query", {"accountId": "ACCOUNT"}, "q"]]"#,
        )[0][1]["ids"]
            .clone()
    };
    let ids = bob_emails();
    assert_eq!(ids.as_array().unwrap().len(), 1, "{ids}");
    let inbox = jmap_api(
        port,
        USER,
        r#"[["Mailbox/query", {"accountId": "ACCOUNT", "filter": {"role": "inbox"}}, "m"]]"#,
    )[0][1]["ids"][0]
        .clone();

    let copy = |from: &str| {
        jmap_api(
            port,
            USER,
            &format!(
                r#"[["Email/copy", {{"fromAccountId": "{from}", "accountId": "ACCOUNT",
                     "create": {{"c": {{"id": {id}, "mailboxIds": {{{inbox}: true}}}}}},
                     "onSuccessDestroyOriginal": true}}, "c"]]"#,
                id = ids[0],
            ),
        )
    };
    let r = copy(&bob);
    assert_eq!(r.as_array().unwrap().len(), 1, "no implicit Email/set: {r}");
    assert_eq!(r[0][0], "error", "{r}");
    assert_eq!(r[0][1]["type"], "fromAccountNotFound", "{r}");
    assert_eq!(r[0][2], "c", "{r}");
    let r = copy("ACCOUNT");
    assert_eq!(r[0][1]["type"], "invalidArguments", "{r}");
    assert_eq!(bob_emails(), ids);
    tern.stop();
}
