//! The search index queue (family `36`, marker `38`): what the indexer
//! dequeues leaves the queue, what changed meanwhile stays.

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
    let dir = tempfile::tempdir().unwrap();
    let store = MailStore::open(dir.path()).unwrap();
    store.add_domain("example.com").unwrap();
    let a = store.create_account("bob@example.com", "pw").unwrap();
    let ids: Vec<DocumentId> = (0..10)
        .map(|n| {
            store.deliver(&message(n), &[Recipient::inbox(a)]).unwrap()[0]
                .as_ref()
                .unwrap()
                .email
        })
        .collect();
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
    store
        .kv()
        .transact(|tx| -> tern_store::Result<()> {
            let mut w = Writer::begin(tx, a)?;
            email::destroy(&mut w, ids[2])?;
            w.finish()?;
            Ok(())
        })
        .unwrap();
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
    let later = store.deliver(&message(99), &[Recipient::inbox(a)]).unwrap()[0]
        .as_ref()
        .unwrap()
        .email;
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
