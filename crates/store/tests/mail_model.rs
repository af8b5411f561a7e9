//! The mail model on a real RocksDB store in a temp dir: accounts, default
//! mailboxes, delivery, threads, keywords, counts, changes, blobs.

use tern_store::changes::{self, Writer};
use tern_store::email::{self, Listing};
use tern_store::{
    AccountId, DataType, Error, Folder, MailStore, Recipient, blob, keys, kv::Error as KvError,
    mailbox,
};

fn store() -> (tempfile::TempDir, MailStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("example.com").unwrap();
    (dir, store)
}

fn message(subject: &str, id: &str, refs: &str, body: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Ann <ann@example.org>\r\nTo: bob@example.com\r\nSubject: {subject}\r\n\
         Message-ID: <{id}>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
    );
    if !refs.is_empty() {
        m.push_str(&format!("References: {refs}\r\nIn-Reply-To: {refs}\r\n"));
    }
    m.push_str("\r\n");
    m.push_str(body);
    m.into_bytes()
}

fn inbox(store: &MailStore, account: AccountId) -> u32 {
    store
        .kv()
        .read(|tx| mailbox::by_role(tx, account, "inbox"))
        .unwrap()
        .unwrap()
}

#[test]
fn new_account_has_the_default_mailboxes_with_roles() {
    let (_dir, store) = store();
    let id = store.create_account("Bob@Example.com", "pw").unwrap();
    let boxes = store.kv().read(|tx| mailbox::list(tx, id)).unwrap();
    let roles: Vec<_> = boxes.iter().map(|(_, m)| m.role.clone().unwrap()).collect();
    assert_eq!(
        roles,
        ["inbox", "drafts", "sent", "archive", "junk", "trash"]
    );
    assert_eq!(store.lookup_address("bob@example.com").unwrap(), Some(id));
    assert_eq!(
        store.authenticate("BOB@example.com", "pw").unwrap(),
        Some(id)
    );
    assert_eq!(store.authenticate("bob@example.com", "nope").unwrap(), None);
    let state = store
        .kv()
        .read(|tx| changes::state(tx, id, DataType::Mailbox))
        .unwrap();
    assert_eq!(state, 1);
}

#[test]
fn accounts_need_a_local_domain_and_a_unique_address() {
    let (_dir, store) = store();
    assert!(matches!(
        store.create_account("x@elsewhere.org", "pw"),
        Err(Error::UnknownDomain(_))
    ));
    store.create_account("x@example.com", "pw").unwrap();
    assert!(matches!(
        store.create_account("X@example.com", "pw"),
        Err(Error::AlreadyExists(_))
    ));
    assert!(matches!(
        store.create_account("not an address", "pw"),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        store.add_domain("EXAMPLE.com"),
        Err(Error::AlreadyExists(_))
    ));
    assert_eq!(store.list_domains().unwrap(), ["example.com"]);
}

#[test]
fn delivery_to_several_recipients_is_one_commit_with_exact_counts() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let b = store.create_account("b@example.com", "pw").unwrap();
    let raw = message("Hello", "m1@x", "", "Body text here");
    let out = store
        .deliver(&raw, &[Recipient::inbox(a), Recipient::inbox(b)])
        .unwrap();
    assert_eq!(out.len(), 2);
    for (acct, r) in [(a, &out[0]), (b, &out[1])] {
        let d = r.as_ref().unwrap();
        assert_eq!(d.account, acct);
        let counts = store
            .kv()
            .read(|tx| mailbox::counts(tx, acct, inbox(&store, acct)))
            .unwrap();
        assert_eq!(counts.total_emails, 1);
        assert_eq!(counts.unread_emails, 1);
        assert_eq!(counts.total_threads, 1);
        assert_eq!(counts.unread_threads, 1);
        let meta = store
            .kv()
            .read(|tx| email::get(tx, acct, d.email))
            .unwrap()
            .unwrap();
        assert_eq!(meta.envelope.subject.as_deref(), Some("Hello"));
        assert_eq!(meta.envelope.preview, "Body text here");
        assert_eq!(meta.size, raw.len() as u64);
    }
    // One blob, two accounts linking it.
    let hash = tern_store::BlobHash::of(&raw);
    let links = store
        .kv()
        .read(|tx| tx.range(&keys::blob_links(&hash), Default::default()))
        .unwrap();
    assert_eq!(links.len(), 2);
}

#[test]
fn unread_listing_is_newest_first_and_follows_keywords() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let mut ids = Vec::new();
    for i in 0..5 {
        let raw = message(&format!("n{i}"), &format!("{i}@x"), "", "x");
        ids.push(
            store
                .deliver(&raw, &[Recipient::inbox(a)])
                .unwrap()
                .remove(0)
                .unwrap()
                .email,
        );
    }
    let inbox = inbox(&store, a);
    let unread = store
        .kv()
        .read(|tx| email::list_by_date(tx, a, Listing::MailboxUnseen(inbox), true, None, 3))
        .unwrap();
    // Same second: ties broken by id, newest (highest) first.
    assert_eq!(
        unread.iter().map(|c| c.1).collect::<Vec<_>>(),
        [ids[4], ids[3], ids[2]]
    );
    // Page on from the cursor.
    let rest = store
        .kv()
        .read(|tx| {
            email::list_by_date(
                tx,
                a,
                Listing::MailboxUnseen(inbox),
                true,
                unread.last().copied(),
                10,
            )
        })
        .unwrap();
    assert_eq!(
        rest.iter().map(|c| c.1).collect::<Vec<_>>(),
        [ids[1], ids[0]]
    );

    // Mark two read: they leave the unseen index and the unread counts.
    store
        .kv()
        .transact(|tx| -> tern_store::Result<()> {
            let mut w = Writer::begin(tx, a)?;
            email::update(&mut w, ids[4], None, Some(vec!["$Seen".into()]))?;
            email::update(
                &mut w,
                ids[0],
                None,
                Some(vec!["$seen".into(), "$flagged".into()]),
            )?;
            w.finish()?;
            Ok(())
        })
        .unwrap();
    let unread = store
        .kv()
        .read(|tx| email::list_by_date(tx, a, Listing::MailboxUnseen(inbox), true, None, 10))
        .unwrap();
    assert_eq!(
        unread.iter().map(|c| c.1).collect::<Vec<_>>(),
        [ids[3], ids[2], ids[1]]
    );
    let counts = store.kv().read(|tx| mailbox::counts(tx, a, inbox)).unwrap();
    assert_eq!((counts.total_emails, counts.unread_emails), (5, 3));
    assert_eq!((counts.total_threads, counts.unread_threads), (5, 3));
    let flagged = store
        .kv()
        .read(|tx| email::with_keyword(tx, a, "$flagged"))
        .unwrap();
    assert_eq!(flagged, [ids[0]]);
    // A draft counts as read for unreadEmails (RFC 8621) but stays unseen.
    store
        .kv()
        .transact(|tx| -> tern_store::Result<()> {
            let mut w = Writer::begin(tx, a)?;
            email::update(&mut w, ids[3], None, Some(vec!["$draft".into()]))?;
            w.finish()?;
            Ok(())
        })
        .unwrap();
    let counts = store.kv().read(|tx| mailbox::counts(tx, a, inbox)).unwrap();
    assert_eq!(counts.unread_emails, 2);
}

#[test]
fn replies_join_the_thread_only_with_the_same_base_subject() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let deliver = |raw: Vec<u8>| {
        store
            .deliver(&raw, &[Recipient::inbox(a)])
            .unwrap()
            .remove(0)
            .unwrap()
    };
    let first = deliver(message("Plans", "p1@x", "", "a"));
    let reply = deliver(message("Re: Plans", "p2@x", "<p1@x>", "b"));
    let hijack = deliver(message("Something else", "p3@x", "<p1@x>", "c"));
    let unrelated = deliver(message("Plans", "p4@x", "", "d"));
    assert_eq!(first.thread, reply.thread);
    assert_ne!(first.thread, hijack.thread);
    assert_ne!(first.thread, unrelated.thread);
    let members = store
        .kv()
        .read(|tx| email::thread_emails(tx, a, first.thread))
        .unwrap();
    assert_eq!(members, [first.email, reply.email]);
    // A reply arriving before its parent: the parent joins the reply's thread.
    let child = deliver(message("Re: Late", "l2@x", "<l1@x>", "e"));
    let parent = deliver(message("Late", "l1@x", "", "f"));
    assert_eq!(child.thread, parent.thread);
    let counts = store
        .kv()
        .read(|tx| mailbox::counts(tx, a, inbox(&store, a)))
        .unwrap();
    assert_eq!(counts.total_emails, 6);
    assert_eq!(counts.total_threads, 4);
}

#[test]
fn the_change_log_keeps_its_last_changes_and_up_to_date_clients_keep_working() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let kv = store.kv();
    let state = |t| kv.read(|tx| changes::state(tx, a, t)).unwrap();
    let identity = state(DataType::Identity);
    let mut email_states = vec![state(DataType::Email)];
    for i in 0..6 {
        store
            .deliver(
                &message(&format!("m{i}"), &format!("{i}@x"), "", "x"),
                &[Recipient::inbox(a)],
            )
            .unwrap();
        email_states.push(state(DataType::Email));
    }
    let last = kv.read(|tx| changes::account_change(tx, a)).unwrap();
    // Nothing to drop while the log is shorter than what is kept.
    let n = kv
        .transact(|tx| changes::retain_latest(tx, a, last))
        .unwrap();
    assert_eq!(n, 0);
    // Keep the last two changes: older email states can no longer sync.
    kv.transact(|tx| changes::retain_latest(tx, a, 2)).unwrap();
    let since = |s| kv.read(|tx| changes::changes(tx, a, DataType::Email, s, 100));
    for &old in &email_states[..email_states.len() - 3] {
        assert!(
            matches!(since(old), Err(Error::CannotCalculateChanges)),
            "state {old} was dropped"
        );
    }
    let recent = since(email_states[email_states.len() - 3]).unwrap();
    assert_eq!(recent.created.len(), 2, "{recent:?}");
    assert!(
        since(*email_states.last().unwrap())
            .unwrap()
            .created
            .is_empty()
    );
    // A type untouched since long ago: its current state still works.
    assert_eq!(state(DataType::Identity), identity);
    assert!(
        kv.read(|tx| changes::changes(tx, a, DataType::Identity, identity, 100))
            .is_ok()
    );
    // States are unchanged by truncation.
    assert_eq!(state(DataType::Email), *email_states.last().unwrap());
}

#[test]
fn changes_are_exact_and_merge_created_then_destroyed() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let kv = store.kv();
    let s0 = kv
        .read(|tx| changes::state(tx, a, DataType::Email))
        .unwrap();
    assert_eq!(s0, 0);
    let d1 = store
        .deliver(&message("one", "1@x", "", "x"), &[Recipient::inbox(a)])
        .unwrap()
        .remove(0)
        .unwrap();
    let s1 = kv
        .read(|tx| changes::state(tx, a, DataType::Email))
        .unwrap();
    let d2 = store
        .deliver(&message("two", "2@x", "", "x"), &[Recipient::inbox(a)])
        .unwrap()
        .remove(0)
        .unwrap();
    kv.transact(|tx| -> tern_store::Result<()> {
        let mut w = Writer::begin(tx, a)?;
        email::update(&mut w, d1.email, None, Some(vec!["$seen".into()]))?;
        email::destroy(&mut w, d2.email)?;
        w.finish()?;
        Ok(())
    })
    .unwrap();
    let c = kv
        .read(|tx| changes::changes(tx, a, DataType::Email, s0, 100))
        .unwrap();
    assert_eq!(c.created, [d1.email]);
    assert!(c.updated.is_empty() && c.destroyed.is_empty());
    let c = kv
        .read(|tx| changes::changes(tx, a, DataType::Email, s1, 100))
        .unwrap();
    assert_eq!(c.updated, [d1.email]);
    assert!(c.created.is_empty(), "created then destroyed is omitted");
    assert!(c.destroyed.is_empty());
    assert!(!c.has_more);
    // Destroying d2 destroyed its thread.
    let t = kv
        .read(|tx| changes::changes(tx, a, DataType::Thread, s1, 100))
        .unwrap();
    assert!(t.destroyed.is_empty() && t.created.is_empty(), "{t:?}");
    // Mailbox changes were counts only.
    let m = kv
        .read(|tx| changes::changes(tx, a, DataType::Mailbox, 1, 100))
        .unwrap();
    assert_eq!(m.updated, [inbox(&store, a)]);
    assert!(m.counts_only);
    // maxChanges pages through the log.
    let c = kv
        .read(|tx| changes::changes(tx, a, DataType::Email, s0, 1))
        .unwrap();
    assert!(c.has_more);
    assert_eq!(c.new_state, s1);
    // A truncated log refuses older states.
    kv.transact(|tx| changes::truncate(tx, a, DataType::Email, s1))
        .unwrap();
    assert!(matches!(
        kv.read(|tx| changes::changes(tx, a, DataType::Email, s0, 10)),
        Err(Error::CannotCalculateChanges)
    ));
}

#[test]
fn destroying_the_last_reference_lets_the_collector_free_the_blob() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let raw = message("gc", "gc@x", "", "bytes");
    let d = store
        .deliver(&raw, &[Recipient::inbox(a)])
        .unwrap()
        .remove(0)
        .unwrap();
    let hash = tern_store::BlobHash::of(&raw);
    assert_eq!(
        blob::collect(store.kv(), 0).unwrap(),
        0,
        "referenced blob kept"
    );
    store
        .kv()
        .transact(|tx| -> tern_store::Result<()> {
            let mut w = Writer::begin(tx, a)?;
            email::destroy(&mut w, d.email)?;
            w.finish()?;
            Ok(())
        })
        .unwrap();
    let used = store
        .kv()
        .read(|tx| tern_store::account::used_bytes(tx, a))
        .unwrap();
    assert_eq!(used, 0);
    assert_eq!(
        blob::collect(store.kv(), 3600).unwrap(),
        0,
        "grace period holds"
    );
    assert_eq!(blob::collect(store.kv(), 0).unwrap(), 1);
    assert!(
        store
            .kv()
            .read(|tx| blob::read(tx, &hash))
            .unwrap()
            .is_none()
    );
}

#[test]
fn large_messages_are_chunked_and_read_back_exactly() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let body: String = (0..(25 << 20) / 64).map(|i| format!("{i:063}\n")).collect();
    let raw = message("big", "big@x", "", &body);
    assert!(raw.len() > 25 << 20);
    let d = store
        .deliver(&raw, &[Recipient::inbox(a)])
        .unwrap()
        .remove(0)
        .unwrap();
    let meta = store
        .kv()
        .read(|tx| email::get(tx, a, d.email))
        .unwrap()
        .unwrap();
    let back = store
        .kv()
        .read(|tx| blob::read(tx, &meta.blob))
        .unwrap()
        .unwrap();
    assert!(back == raw);
    let slice = store
        .kv()
        .read(|tx| blob::read_range(tx, &meta.blob, 150_000, 10))
        .unwrap()
        .unwrap();
    assert_eq!(slice, raw[150_000..150_010]);
}

#[test]
fn malformed_mime_is_stored_and_non_messages_are_refused() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let broken = b"Subject: =?utf-8?B?broken\r\nContent-Type: multipart/mixed; boundary=\"zz\"\r\n\r\n--zz\r\nno end";
    let d = store.deliver(broken, &[Recipient::inbox(a)]).unwrap();
    assert!(d[0].is_ok());
    assert!(matches!(
        store.deliver(b"", &[Recipient::inbox(a)]),
        Err(Error::NotAMessage(_))
    ));
    assert!(matches!(
        store.deliver(b"\r\n\r\n", &[Recipient::inbox(a)]),
        Err(Error::NotAMessage(_))
    ));
}

/// Sets account `id`'s quota to `bytes`.
fn set_quota(store: &MailStore, id: AccountId, bytes: u64) {
    store
        .kv()
        .transact(|tx| -> tern_store::Result<()> {
            let mut acct = tern_store::account::get_account(tx, id)?.unwrap();
            acct.quota_bytes = bytes;
            tern_store::account::put_account(tx, id, &acct)
        })
        .unwrap();
}

#[test]
fn a_delivery_refused_for_every_recipient_keeps_no_bytes() {
    let (_dir, store) = store();
    let full = store.create_account("full@example.com", "pw").unwrap();
    set_quota(&store, full, 10);
    let data = message("refused", "r@example.org", "", "body\r\n");
    let raw = [b"Received: by mx; today\r\n".as_slice(), &data].concat();
    let hash = tern_store::BlobHash::of(&raw);
    let parsed = mail_parser::MessageParser::default().parse(&data).unwrap();
    let to = [Recipient::inbox(full)];
    let options = tern_store::DeliverOptions::default();
    let blocking = store
        .deliver_prefixed(&raw, &data, &parsed, &to, &options)
        .unwrap();
    assert!(matches!(blocking[0], Err(Error::OverQuota { .. })));
    assert!(store.recent_blob(&hash).is_none());
    let derived: tern_store::recent::Derived = std::sync::Arc::new("derived");
    let pending = store.deliver_prefixed_async(&raw, &data, &parsed, &to, &options, Some(derived));
    let queued = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(pending)
        .unwrap();
    assert!(matches!(queued[0], Err(Error::OverQuota { .. })));
    assert!(store.recent_blob(&hash).is_none());
    assert!(store.recent_derived(&hash).is_none());
    // Nor does it leave its bytes in the store for the collector.
    let stored = || store.kv().read(|tx| blob::header(tx, &hash)).unwrap();
    assert!(stored().is_none(), "a refused message's blob was written");
    let chunk = store
        .kv()
        .read(|tx| tx.get(&keys::blob_chunk(&hash, 0)))
        .unwrap();
    assert!(chunk.is_none(), "a refused message's bytes were written");
    // Once a recipient has room, the same message is kept.
    let room = store.create_account("room@example.com", "pw").unwrap();
    let both = [Recipient::inbox(full), Recipient::inbox(room)];
    let out = store
        .deliver_prefixed(&raw, &data, &parsed, &both, &options)
        .unwrap();
    assert!(out[0].is_err() && out[1].is_ok());
    assert_eq!(store.recent_blob(&hash).as_deref(), Some(&raw[..]));
    assert!(stored().is_some_and(|h| h.complete));
}

#[test]
fn a_recipient_over_quota_fails_alone() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let b = store.create_account("b@example.com", "pw").unwrap();
    set_quota(&store, b, 10);
    let out = store
        .deliver(
            &message("q", "q@x", "", "x"),
            &[Recipient::inbox(a), Recipient::inbox(b)],
        )
        .unwrap();
    assert!(out[0].is_ok());
    assert!(matches!(out[1], Err(Error::OverQuota { .. })));
    let junk = Recipient {
        account: a,
        folder: Folder::Role("junk"),
        keywords: vec!["$junk".into()],
    };
    let d = store
        .deliver(&message("j", "j@x", "", "x"), &[junk])
        .unwrap()
        .remove(0)
        .unwrap();
    let junk_id = store
        .kv()
        .read(|tx| mailbox::by_role(tx, a, "junk"))
        .unwrap()
        .unwrap();
    assert_eq!(d.mailbox, junk_id);
}

#[test]
fn removing_an_account_purges_its_data() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    store
        .deliver(&message("x", "x@x", "", "x"), &[Recipient::inbox(a)])
        .unwrap();
    store.remove_account("a@example.com").unwrap();
    assert!(store.list_accounts().unwrap().is_empty());
    assert_eq!(store.authenticate("a@example.com", "pw").unwrap(), None);
    let left = store
        .kv()
        .read(|tx| tx.range(&keys::account_range(a), Default::default()))
        .unwrap();
    assert!(left.is_empty());
    assert_eq!(blob::collect(store.kv(), 0).unwrap(), 1);
    assert!(matches!(
        store.remove_account("a@example.com"),
        Err(Error::NotFound(_))
    ));
}

#[test]
fn the_format_version_is_checked_at_open() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = MailStore::open(dir.path()).unwrap();
        store
            .kv()
            .transact(|tx| tx.set(keys::FORMAT, &99u32.to_be_bytes()))
            .unwrap();
    }
    match MailStore::open(dir.path()) {
        Err(Error::FormatVersion {
            found: 99,
            expected,
        }) => assert_eq!(expected, keys::FORMAT_VERSION),
        other => panic!("expected a format version error, got {other:?}"),
    }
    let _ = KvError::Conflict;
}

#[test]
fn concurrent_deliveries_to_one_account_are_all_stored_exactly_once() {
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let b = store.create_account("b@example.com", "pw").unwrap();
    let threads = 8;
    let per_thread = 40;
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = &store;
            s.spawn(move || {
                for i in 0..per_thread {
                    let raw = message(&format!("c{t}-{i}"), &format!("{t}.{i}@x"), "", "x");
                    let to = if i % 4 == 0 {
                        vec![Recipient::inbox(a), Recipient::inbox(b)]
                    } else {
                        vec![Recipient::inbox(a)]
                    };
                    let out = store.deliver(&raw, &to).unwrap();
                    assert_eq!(out.len(), to.len());
                    assert!(out.iter().all(|r| r.is_ok()));
                }
            });
        }
    });
    let inbox_a = inbox(&store, a);
    let counts = store
        .kv()
        .read(|tx| mailbox::counts(tx, a, inbox_a))
        .unwrap();
    assert_eq!(counts.total_emails, (threads * per_thread) as u64);
    let listed = store
        .kv()
        .read(|tx| email::list_by_date(tx, a, Listing::Mailbox(inbox_a), true, None, 10_000))
        .unwrap();
    assert_eq!(listed.len(), threads * per_thread);
    let counts_b = store
        .kv()
        .read(|tx| mailbox::counts(tx, b, inbox(&store, b)))
        .unwrap();
    assert_eq!(counts_b.total_emails, (threads * per_thread / 4) as u64);
    // Every email was announced exactly once in the change log.
    let c = store
        .kv()
        .read(|tx| changes::changes(tx, a, DataType::Email, 0, usize::MAX))
        .unwrap();
    assert_eq!(c.created.len(), threads * per_thread);
}

#[test]
fn concurrent_deliveries_across_accounts_meet_without_loss_or_duplicates() {
    // Deliveries are combined per account (lane: the lowest recipient
    // account), so a message to a and b (lane a) and one to b alone
    // (lane b) are stored at once by different leaders and meet on b's
    // records: the conflict checks must keep every copy exactly once.
    let (_dir, store) = store();
    let a = store.create_account("a@example.com", "pw").unwrap();
    let b = store.create_account("b@example.com", "pw").unwrap();
    let threads = 8;
    let per_thread = 60;
    std::thread::scope(|s| {
        for t in 0..threads {
            let store = &store;
            s.spawn(move || {
                for i in 0..per_thread {
                    let raw = message(&format!("x{t}-{i}"), &format!("x{t}.{i}@x"), "", "x");
                    let to = match i % 3 {
                        0 => vec![Recipient::inbox(a), Recipient::inbox(b)],
                        1 => vec![Recipient::inbox(b)],
                        _ => vec![Recipient::inbox(a)],
                    };
                    let out = store.deliver(&raw, &to).unwrap();
                    assert_eq!(out.len(), to.len());
                    assert!(out.iter().all(|r| r.is_ok()));
                }
            });
        }
    });
    let per_account = (threads * per_thread * 2 / 3) as u64;
    for account in [a, b] {
        let inbox = inbox(&store, account);
        let counts = store
            .kv()
            .read(|tx| mailbox::counts(tx, account, inbox))
            .unwrap();
        assert_eq!(counts.total_emails, per_account, "account {account:?}");
        let listed = store
            .kv()
            .read(|tx| {
                email::list_by_date(tx, account, Listing::Mailbox(inbox), true, None, 10_000)
            })
            .unwrap();
        assert_eq!(listed.len() as u64, per_account);
        let c = store
            .kv()
            .read(|tx| changes::changes(tx, account, DataType::Email, 0, usize::MAX))
            .unwrap();
        assert_eq!(c.created.len() as u64, per_account);
    }
}

/// A message with trace fields put on top of already parsed data is
/// stored as the whole message, by the blocking call and by the async
/// one alike; the async one refuses a message over the inline limit
/// (its blob would be written before the delivery, which blocks) and
/// both refuse a message that does not end with its data. The async one
/// keeps what the caller derived from the message with its bytes.
#[test]
fn prefixed_deliveries_blocking_and_async_store_the_whole_message() {
    let (_dir, store) = store();
    let bob = store.create_account("bob@example.com", "pw").unwrap();
    let data = message("prefixed", "p@example.org", "", "body\r\n");
    let raw = [
        b"Received: from a (b)\r\n\tby mx; today\r\n".as_slice(),
        &data,
    ]
    .concat();
    let parsed = mail_parser::MessageParser::default().parse(&data).unwrap();
    let to = [Recipient::inbox(bob)];
    let options = tern_store::DeliverOptions::default();
    let blocking = store
        .deliver_prefixed(&raw, &data, &parsed, &to, &options)
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    // The blocking call keeps no derived value; the async one keeps its
    // caller's (the same message: the same blob, kept once).
    let blob = |outcome: &tern_store::deliver::Outcome| {
        let email = outcome[0].as_ref().unwrap().email;
        let meta = store.kv().read(|tx| email::get(tx, bob, email)).unwrap();
        meta.unwrap().blob
    };
    assert!(store.recent_derived(&blob(&blocking)).is_none());
    let derived: tern_store::recent::Derived = std::sync::Arc::new("derived");
    let pending = store.deliver_prefixed_async(&raw, &data, &parsed, &to, &options, Some(derived));
    let queued = runtime.block_on(pending).unwrap();
    let derived = store.recent_derived(&blob(&queued)).expect("derived kept");
    assert_eq!(derived.downcast_ref::<&str>(), Some(&"derived"));
    for outcome in [&blocking, &queued] {
        let delivered = outcome[0].as_ref().unwrap();
        let (meta, stored) = store
            .kv()
            .read(|tx| {
                let meta = email::get(tx, bob, delivered.email)?.unwrap();
                let stored = blob::read(tx, &meta.blob)?.unwrap();
                Ok::<_, tern_store::Error>((meta, stored))
            })
            .unwrap();
        assert_eq!(stored, raw);
        assert_eq!(meta.mailbox_ids, vec![inbox(&store, bob)]);
        // Kept for readers following deliveries.
        assert_eq!(store.recent_blob(&meta.blob).as_deref(), Some(&raw[..]));
    }
    let other = message("other", "o@example.org", "", "body\r\n");
    let err = store
        .deliver_prefixed(&raw, &other, &parsed, &to, &options)
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    let pending = store.deliver_prefixed_async(&raw, &other, &parsed, &to, &options, None);
    assert!(matches!(runtime.block_on(pending), Err(Error::Invalid(_))));
    let big = [raw.as_slice(), &vec![b'x'; tern_store::INLINE_BLOB_LIMIT]].concat();
    let big_data = &big[raw.len() - data.len()..];
    let pending = store.deliver_prefixed_async(&big, big_data, &parsed, &to, &options, None);
    let err = runtime.block_on(pending).unwrap_err();
    assert!(err.to_string().contains("blocking call"), "{err}");
    let listed = store
        .kv()
        .read(|tx| email::list_metas(tx, bob, None, 10))
        .unwrap();
    assert_eq!(listed.len(), 2, "nothing stored for the refused ones");
}
