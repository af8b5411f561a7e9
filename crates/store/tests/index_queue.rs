//! The search index queue (family `60`, its low-water mark `61`, marker
//! `38`): what the indexer dequeues leaves the queue, what changed
//! meanwhile stays, and work queued below the mark is found.

use tern_store::changes::Writer;
use tern_store::email::{self, IndexOp};
use tern_store::{AccountId, DocumentId, MailStore, Recipient, keys};

fn message(n: usize) -> Vec<u8> {
    format!(
        "From: ann@example.org\r\nTo: bob@example.com\r\nSubject: note {n}\r\n\
         Message-ID: <{n}@example.org>\r\n\r\nbody {n}\r\n"
    )
    .into_bytes()
}

/// A store with one account and `n` messages delivered to it: their ids.
fn account_with_mail(n: usize) -> (tempfile::TempDir, MailStore, AccountId, Vec<DocumentId>) {
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("example.com").unwrap();
    let a = store.create_account("bob@example.com", "pw").unwrap();
    let ids = (0..n).map(|n| deliver(&store, a, n)).collect();
    (dir, store, a, ids)
}

fn deliver(store: &MailStore, account: AccountId, n: usize) -> DocumentId {
    store
        .deliver(&message(n), &[Recipient::inbox(account)])
        .unwrap()[0]
        .as_ref()
        .unwrap()
        .email
}

fn destroy(store: &MailStore, account: AccountId, id: DocumentId) {
    store
        .kv()
        .transact(|tx| -> tern_store::Result<()> {
            let mut w = Writer::begin(tx, account)?;
            email::destroy(&mut w, id)?;
            w.finish()?;
            Ok(())
        })
        .unwrap();
}

fn queue(store: &MailStore, account: AccountId) -> Vec<(DocumentId, IndexOp)> {
    store
        .kv()
        .read(|tx| email::index_queue(tx, account, None, usize::MAX))
        .unwrap()
}

fn marked(store: &MailStore, account: AccountId) -> bool {
    store
        .kv()
        .read(|tx| tx.get(&keys::index_dirty(account)))
        .unwrap()
        .is_some()
}

#[test]
fn dequeue_removes_what_was_applied_and_keeps_the_rest() {
    let (_dir, store, a, ids) = account_with_mail(10);
    let all = queue(&store, a);
    assert_eq!(
        all,
        ids.iter()
            .map(|&id| (id, IndexOp::Index))
            .collect::<Vec<_>>()
    );
    assert!(marked(&store, a));

    // The indexer applies 0, 2 and 4 (not 1 and 3, which lie between), and
    // meanwhile email 2 is destroyed: its `Remove` replaces the `Index`.
    destroy(&store, a, ids[2]);
    let applied = [
        (ids[0], IndexOp::Index),
        (ids[2], IndexOp::Index),
        (ids[4], IndexOp::Index),
    ];
    let empty = store
        .kv()
        .transact(|tx| email::dequeue_index(tx, a, &applied))
        .unwrap();
    assert!(!empty);
    let mut expected = vec![
        (ids[1], IndexOp::Index),
        (ids[2], IndexOp::Remove),
        (ids[3], IndexOp::Index),
    ];
    expected.extend(ids[5..].iter().map(|&id| (id, IndexOp::Index)));
    assert_eq!(queue(&store, a), expected);
    assert!(marked(&store, a));

    // Everything else applied: the queue is empty and the marker gone.
    let empty = store
        .kv()
        .transact(|tx| email::dequeue_index(tx, a, &expected))
        .unwrap();
    assert!(empty);
    assert!(queue(&store, a).is_empty());
    assert!(!marked(&store, a));

    // A later delivery queues again, after the cleared spans.
    let later = deliver(&store, a, 99);
    assert_eq!(queue(&store, a), [(later, IndexOp::Index)]);
    assert!(marked(&store, a));
    let empty = store
        .kv()
        .transact(|tx| email::dequeue_index(tx, a, &[]))
        .unwrap();
    assert!(
        !empty,
        "an empty dequeue must not clear the marker over work"
    );
}

#[test]
fn dequeued_spans_move_the_mark_and_work_below_it_is_found() {
    let (_dir, store, a, ids) = account_with_mail(6);
    let mark = keys::acct(a, keys::family::INDEX_QUEUE_MARK).build();
    let mark_value = || store.kv().read(|tx| tx.get(&mark)).unwrap();
    assert_eq!(mark_value(), None, "no mark before the first dequeue");

    // The indexer applies everything: the mark moves just past the span.
    let all = queue(&store, a);
    assert!(
        store
            .kv()
            .transact(|tx| email::dequeue_index(tx, a, &all))
            .unwrap()
    );
    let past_last = {
        let mut k = keys::doc(a, keys::family::INDEX_QUEUE, ids[5]);
        k.push(0);
        k
    };
    assert_eq!(mark_value(), Some(past_last));

    // Destroying an email whose entry was dequeued queues a Remove below
    // the mark: the mark comes down to it and the indexer finds it.
    destroy(&store, a, ids[1]);
    assert_eq!(
        mark_value(),
        Some(keys::doc(a, keys::family::INDEX_QUEUE, ids[1]))
    );
    assert_eq!(queue(&store, a), [(ids[1], IndexOp::Remove)]);
    assert!(marked(&store, a));
    let later = deliver(&store, a, 7);
    let expected = [(ids[1], IndexOp::Remove), (later, IndexOp::Index)];
    assert_eq!(queue(&store, a), expected);
    // `after` still pages through from the mark.
    let after = store
        .kv()
        .read(|tx| email::index_queue(tx, a, Some(ids[1]), 10))
        .unwrap();
    assert_eq!(after, [(later, IndexOp::Index)]);
    assert!(
        store
            .kv()
            .transact(|tx| email::dequeue_index(tx, a, &expected))
            .unwrap()
    );
    assert!(queue(&store, a).is_empty());
    assert!(!marked(&store, a));
}

#[test]
fn delivered_messages_stay_in_memory_for_the_indexer_once_durable() {
    let (_dir, store, a, ids) = account_with_mail(3);
    for (n, id) in ids.iter().enumerate() {
        let meta = store
            .kv()
            .read(|tx| email::get(tx, a, *id))
            .unwrap()
            .unwrap();
        let stored = store
            .kv()
            .read(|tx| tern_store::blob::read(tx, &meta.blob))
            .unwrap()
            .unwrap();
        assert_eq!(stored, message(n));
        assert_eq!(store.recent_blob(&meta.blob).as_deref(), Some(&stored[..]));
    }
    // A message over the inline limit is stored in its own transactions
    // and not kept in memory.
    let mut big = message(7);
    big.extend(std::iter::repeat_n(b'x', tern_store::INLINE_BLOB_LIMIT));
    big.extend_from_slice(b"\r\n");
    let id = store.deliver(&big, &[Recipient::inbox(a)]).unwrap()[0]
        .as_ref()
        .unwrap()
        .email;
    let meta = store
        .kv()
        .read(|tx| email::get(tx, a, id))
        .unwrap()
        .unwrap();
    assert!(store.recent_blob(&meta.blob).is_none());
}
