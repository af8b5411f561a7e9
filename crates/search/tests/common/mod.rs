//! A store and an index in a temporary directory, with the test corpus.
#![allow(dead_code)]

pub mod spamassassin;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use tern_search::{Indexer, Query, SearchIndex};
use tern_store::deliver::Recipient;
use tern_store::{AccountId, DocumentId, MailStore};

/// The corpus directory (English, Korean, Vietnamese and mixed messages).
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

/// Every corpus message, by file stem, in name order.
pub fn corpus() -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(corpus_dir())
        .expect("corpus directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).expect("read message"))
        })
        .collect()
}

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub store: MailStore,
    pub index: SearchIndex,
    pub account: AccountId,
    pub ids: BTreeMap<String, DocumentId>,
}

impl Fixture {
    pub fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = MailStore::open(&dir.path().join("store")).expect("open store");
        store.add_domain("example.test").expect("domain");
        let account = store
            .create_account("user@example.test", "secret")
            .expect("account");
        let index = SearchIndex::open(&dir.path().join("search")).expect("open index");
        Fixture {
            dir,
            store,
            index,
            account,
            ids: BTreeMap::new(),
        }
    }

    pub fn index_path(&self) -> PathBuf {
        self.dir.path().join("search")
    }

    /// Closes and reopens the index (what a restart does). Every other
    /// handle to it must be gone.
    pub fn reopen_index(&mut self) {
        let placeholder = SearchIndex::open(&self.dir.path().join("placeholder")).expect("open");
        drop(std::mem::replace(&mut self.index, placeholder));
        self.index = SearchIndex::open(&self.index_path()).expect("reopen index");
    }

    pub fn deliver(&mut self, name: &str, raw: &[u8]) -> DocumentId {
        let out = self
            .store
            .deliver(raw, &[Recipient::inbox(self.account)])
            .expect("deliver");
        let id = out[0].as_ref().expect("delivered").email;
        self.ids.insert(name.to_string(), id);
        id
    }

    pub fn deliver_corpus(&mut self) {
        for (name, raw) in corpus() {
            self.deliver(&name, &raw);
        }
    }

    pub fn indexer(&self) -> Indexer {
        Indexer::new(self.store.clone(), self.index.clone())
    }

    pub fn drain(&self) -> usize {
        self.indexer().drain().expect("drain")
    }

    pub fn name(&self, id: DocumentId) -> String {
        self.ids
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("#{id}"))
    }

    pub fn search(&self, q: &Query) -> BTreeSet<String> {
        self.index
            .search(&self.store, self.account, q)
            .expect("search")
            .iter()
            .map(|id| self.name(id))
            .collect()
    }
}

impl Fixture {
    /// Destroys an email through the store (queues its removal).
    pub fn destroy(&self, id: DocumentId) {
        self.store
            .kv()
            .transact(|tx| -> tern_store::Result<()> {
                let mut w = tern_store::Writer::begin(tx, self.account)?;
                tern_store::email::destroy(&mut w, id)?;
                w.finish()?;
                Ok(())
            })
            .expect("destroy");
    }

    /// Sets an email's keywords and moves it to `mailbox` when given.
    pub fn update(&self, id: DocumentId, keywords: &[&str], mailbox: Option<DocumentId>) {
        self.store
            .kv()
            .transact(|tx| -> tern_store::Result<()> {
                let mut w = tern_store::Writer::begin(tx, self.account)?;
                let k = keywords.iter().map(|s| s.to_string()).collect();
                tern_store::email::update(&mut w, id, mailbox.map(|m| vec![m]), Some(k))?;
                w.finish()?;
                Ok(())
            })
            .expect("update");
    }

    /// Queued index operations of the account.
    pub fn queued(&self) -> Vec<(DocumentId, tern_store::email::IndexOp)> {
        self.store
            .kv()
            .read(|tx| tern_store::email::index_queue(tx, self.account, None, usize::MAX))
            .expect("queue")
    }

    /// The account's Email state.
    pub fn email_state(&self) -> u64 {
        self.store
            .kv()
            .read(|tx| tern_store::changes::state(tx, self.account, tern_store::DataType::Email))
            .expect("state")
    }

    /// Every (field, term) the corpus documents produce, for comparing two
    /// indexes posting by posting.
    pub fn corpus_terms() -> BTreeSet<(tern_search::Field, String)> {
        let mut out = BTreeSet::new();
        let mut analyzer = tern_search::analyze::Analyzer::new();
        for (_, raw) in corpus() {
            let doc = tern_search::Document::from_message(&raw).expect("parse");
            for t in doc.texts() {
                analyzer.analyze(t.text, t.language, 0, &mut |tok| {
                    out.insert((t.field, tok.term.to_string()));
                });
            }
            for h in &doc.header_names {
                out.insert((tern_search::Field::HeaderName, h.clone()));
            }
        }
        out
    }

    /// Every posting of `terms`, for comparison.
    pub fn postings(&self, terms: &BTreeSet<(tern_search::Field, String)>) -> Vec<TermPostings> {
        terms
            .iter()
            .map(|(f, t)| {
                (
                    *f,
                    t.clone(),
                    self.index.inspect(self.account, t, *f).expect("inspect"),
                )
            })
            .collect()
    }
}

/// One term's postings: the field, the term, each document with positions.
pub type TermPostings = (tern_search::Field, String, Vec<(DocumentId, Vec<u32>)>);

/// A plain English message numbered `n` (for volume tests).
pub fn numbered_message(n: usize) -> Vec<u8> {
    let words = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    format!(
        "From: Sender {n} <sender{n}@example.com>\r\nTo: user@example.test\r\n\
         Subject: Report number {n} {w1}\r\nMessage-ID: <n{n}@example.com>\r\n\r\n\
         This is message {n}. The code word is {w1} then {w2}.\r\n",
        w1 = words[n % words.len()],
        w2 = words[(n / words.len()) % words.len()],
    )
    .into_bytes()
}

pub fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}
