//! The index's own RocksDB: column families, batches, reads, and the
//! per-account progress the query side waits on.
//!
//! Column families (layout in `docs/search-format.md`):
//!
//! - `postings`: `account (u32 BE) ++ term ++ 00 ++ field (u8)` → a
//!   posting value ([`crate::postings`]), appended with the `tern_postings`
//!   merge operator. The term before the field puts one term's fields side
//!   by side: a query over every field is one short range read.
//! - `meta`: format version, and per account the documents indexed and
//!   destroyed (roaring bitmaps, appended with the `tern_search_meta` merge
//!   operator), the stemming languages seen, and the cursor of an
//!   unfinished rebuild.
//!
//! Every write is one `WriteBatch` with a synced WAL: when
//! [`SearchIndex::write`] returns, the batch survives a crash.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use roaring::RoaringBitmap;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, Direction, IteratorMode,
    MergeOperands, Options, ReadOptions, WriteBatch, WriteOptions,
};
use tern_store::{AccountId, DataType, DocumentId, MailStore, changes, email};

use crate::analyze::{Emit, Language, LanguageSet, Segmenter, TokenKind};
use crate::doc::{Document, Field};
use crate::fasthash::{FastMap, SmallKey};
use crate::postings;
use crate::{Error, Result};

/// The index format version, stored in `meta` and checked at open.
pub const FORMAT_VERSION: u32 = 1;

const CF_POSTINGS: &str = "postings";
const CF_META: &str = "meta";

const META_FORMAT: u8 = 0x01;
const META_DELETED: u8 = 0x10;
const META_INDEXED: u8 = 0x11;
const META_LANGUAGES: u8 = 0x12;
const META_REBUILD: u8 = 0x13;
const META_DATES: u8 = 0x14;
const META_DATE_BLOCKS: u8 = 0x15;

/// Documents per `meta` dates value (`14 ++ aid ++ block`): a block holds
/// the documents whose id shifted right by this many bits is `block`.
const DATE_BLOCK_BITS: u32 = 10;
/// Bytes of one dates record: `doc (u32 BE) ++ receivedAt (i64 BE)`.
const DATE_RECORD: usize = 12;

fn dates_key(account: AccountId, block: u32) -> [u8; 9] {
    let mut k = [META_DATES, 0, 0, 0, 0, 0, 0, 0, 0];
    k[1..5].copy_from_slice(&account.0.to_be_bytes());
    k[5..].copy_from_slice(&block.to_be_bytes());
    k
}

/// Encodes dates records (ascending, unique documents).
fn encode_dates(records: &[(DocumentId, i64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * DATE_RECORD);
    for &(id, at) in records {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&at.to_be_bytes());
    }
    out
}

/// The records of a dates value, if well formed.
fn decode_dates(v: &[u8]) -> Option<impl Iterator<Item = (DocumentId, i64)> + '_> {
    v.len().is_multiple_of(DATE_RECORD).then(|| {
        v.chunks_exact(DATE_RECORD).map(|r| {
            (
                u32::from_be_bytes(r[..4].try_into().expect("4 bytes")),
                i64::from_be_bytes(r[4..].try_into().expect("8 bytes")),
            )
        })
    })
}

/// Folds date-block summaries: per block, the latest receivedAt.
fn merge_date_blocks<'a>(inputs: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let mut by_block = std::collections::BTreeMap::new();
    for v in inputs {
        for (block, at) in decode_dates(v)? {
            let e = by_block.entry(block).or_insert(at);
            *e = (*e).max(at);
        }
    }
    let records: Vec<(u32, i64)> = by_block.into_iter().collect();
    Some(encode_dates(&records))
}

/// Folds dates values: the union by document, the last input's record
/// winning (re-applying a batch changes nothing). Inputs whose documents
/// all follow the previous ones' are concatenated as they are.
fn merge_dates<'a>(inputs: impl Iterator<Item = &'a [u8]>) -> Option<Vec<u8>> {
    let inputs: Vec<&[u8]> = inputs.collect();
    let mut out = Vec::with_capacity(inputs.iter().map(|v| v.len()).sum());
    let mut last: Option<DocumentId> = None;
    let mut appends = true;
    for v in &inputs {
        let mut records = decode_dates(v)?;
        if let (Some(l), Some((first, _))) = (last, records.next())
            && first <= l
        {
            appends = false;
            break;
        }
        if let Some(r) = v.len().checked_sub(DATE_RECORD) {
            last = Some(u32::from_be_bytes(v[r..r + 4].try_into().expect("4 bytes")));
        }
    }
    if appends {
        for v in &inputs {
            out.extend_from_slice(v);
        }
        return Some(out);
    }
    let mut by_doc = std::collections::BTreeMap::new();
    for v in &inputs {
        by_doc.extend(decode_dates(v)?);
    }
    let records: Vec<(DocumentId, i64)> = by_doc.into_iter().collect();
    Some(encode_dates(&records))
}

fn meta_key(kind: u8, account: AccountId) -> [u8; 5] {
    let mut k = [kind, 0, 0, 0, 0];
    k[1..].copy_from_slice(&account.0.to_be_bytes());
    k
}

/// `account ++ term ++ 00 ++ field`.
pub(crate) fn posting_key(account: AccountId, term: &str, field: Field) -> Vec<u8> {
    let mut k = Vec::with_capacity(term.len() + 6);
    k.extend_from_slice(&account.0.to_be_bytes());
    k.extend_from_slice(term.as_bytes());
    k.push(0);
    k.push(field as u8);
    k
}

fn merge_postings(_key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    let out = postings::merge(existing, ops.iter());
    if out.is_none() {
        tracing::error!("search index: corrupt posting value");
    }
    out
}

fn merge_meta(key: &[u8], existing: Option<&[u8]>, ops: &MergeOperands) -> Option<Vec<u8>> {
    match key.first() {
        Some(&META_DELETED) | Some(&META_INDEXED) => postings::merge_bitmaps(existing, ops.iter()),
        Some(&META_DATES) => merge_dates(existing.into_iter().chain(ops.iter())),
        Some(&META_DATE_BLOCKS) => merge_date_blocks(existing.into_iter().chain(ops.iter())),
        Some(&META_LANGUAGES) => {
            let mut bits = 0u32;
            for v in existing.into_iter().chain(ops.iter()) {
                bits |= u32::from_le_bytes(v.try_into().ok()?);
            }
            Some(bits.to_le_bytes().to_vec())
        }
        // Other meta keys are only put; a merge keeps the last operand.
        _ => ops.iter().last().or(existing).map(<[u8]>::to_vec),
    }
}

/// Options for the index's RocksDB.
#[derive(Debug, Clone)]
pub struct IndexOptions {
    /// Block cache size in bytes.
    pub cache_bytes: usize,
    /// Whether writes wait for the WAL to reach the disk. Always on in
    /// production (the indexer removes queue entries after a write).
    pub sync: bool,
    /// How long a text query waits for the index to catch up with the
    /// state it read before answering from the index as it is
    /// ([`SearchIndex::query_wait`]).
    pub query_wait: Duration,
}

impl Default for IndexOptions {
    fn default() -> Self {
        Self {
            cache_bytes: 64 << 20,
            sync: true,
            query_wait: Duration::from_secs(2),
        }
    }
}

/// The indexes opened through [`SearchIndex::for_store`], by path.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<Inner>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<Inner>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

struct Inner {
    db: DB,
    sync: bool,
    query_wait: Duration,
    /// Per account: the Email state the index is known to reflect.
    caught_up: Mutex<HashMap<AccountId, u64>>,
    progress: Condvar,
    /// Set by [`SearchIndex::kick`]; the indexer sleeps on it.
    kicked: Mutex<bool>,
    kick: Condvar,
    /// This open created the index (it had no format version yet); taken
    /// by [`SearchIndex::take_created`].
    created: AtomicBool,
}

/// A handle to the search index. Cheap to clone; every clone shares one
/// database.
#[derive(Clone)]
pub struct SearchIndex {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").finish_non_exhaustive()
    }
}

/// What a batch writes for one account: postings of new documents,
/// documents removed, languages seen, and optionally a rebuild cursor.
///
/// Documents are analyzed into shares, each by one `Worker` (one per
/// analysis thread): a share holds the postings of each (term, field) of
/// its documents, sorted by (term, field) when it ends.
/// [`SearchIndex::write`] merges the shares into one merge operand per
/// key; the shares' documents follow each other, so the merge appends.
#[derive(Debug)]
pub struct IndexBatch {
    account: AccountId,
    /// Finished shares, in document order.
    shares: Vec<Sorted>,
    /// The share [`IndexBatch::add`] adds to.
    open: Option<Share>,
    indexed: Vec<DocumentId>,
    deleted: Vec<DocumentId>,
    /// (document, receivedAt) of documents added with a date.
    dates: Vec<(DocumentId, i64)>,
    languages: LanguageSet,
    rebuild: Option<Option<DocumentId>>,
    text_bytes: usize,
}

/// The position recorded for a term without positions (header names).
const NO_POSITION: u32 = u32::MAX;

/// No index (term ids, builders, hits).
const NONE: u32 = u32::MAX;

/// Idle workers kept for the next batches.
const POOL_WORKERS: usize = 8;

/// Words a worker keeps before it starts afresh (at the start of a
/// share): bounds a worker's memory to some 20 MB.
const WORKER_WORDS: usize = 1 << 18;

/// A word of [`WorkerState::words`]: its final term, and its builder in
/// the share of serial `serial`.
#[derive(Debug, Clone, Copy)]
struct WordEntry {
    term: u32,
    serial: u32,
    builder: u32,
}

/// What a worker keeps between shares (and batches) besides its
/// analyzer buffers.
#[derive(Debug, Default)]
struct WorkerState {
    /// Words seen, by `field ++ language ++ word` (the folded word before
    /// stemming; language 0 for none, else 1 + its discriminant). A word
    /// seen before in the share costs one lookup; seen in an earlier
    /// share, one lookup and a builder; never seen, stemming.
    words: FastMap<SmallKey, WordEntry>,
    /// Final terms → term id.
    ids: FastMap<SmallKey, u32>,
    /// Term id → final term.
    terms: Vec<SmallKey>,
    /// Per term id: the serial of the share that last used it, and the
    /// first of its builders there (chained through [`Builder::next`]).
    slots: Vec<(u32, u32)>,
    /// The current share's serial (0: none yet).
    serial: u32,
    /// The keys of the text being analyzed ([`Collect`]).
    keys: Vec<(SmallKey, u32)>,
}

impl WorkerState {
    /// The id of the final term of `term` (folded; stemmed in `stem` when
    /// it is [`crate::analyze::stemmable`]).
    fn term_id(&mut self, term: &str, stem: Option<Language>) -> u32 {
        let stemmed = match stem {
            Some(l) if crate::analyze::stemmable(term) => l.stem(term),
            _ => std::borrow::Cow::Borrowed(term),
        };
        if let Some(&id) = self.ids.get(stemmed.as_bytes()) {
            return id;
        }
        let id = self.terms.len() as u32;
        let key = SmallKey::new(stemmed.as_bytes());
        self.terms.push(key.clone());
        self.ids.insert(key, id);
        id
    }

    fn clear(&mut self) {
        self.words.clear();
        self.ids.clear();
        self.terms.clear();
        self.slots.clear();
        self.serial = 0;
    }
}

/// The analysis state of one thread, taken from a process-wide pool for
/// a share and put back after: its allocations and vocabulary outlive
/// batches.
#[derive(Debug, Default)]
struct Worker {
    segmenter: Segmenter,
    state: WorkerState,
    /// The current share's postings.
    acc: Accumulator,
}

fn pool() -> &'static Mutex<Vec<Worker>> {
    static POOL: OnceLock<Mutex<Vec<Worker>>> = OnceLock::new();
    POOL.get_or_init(Default::default)
}

/// One (term, field) of a share. Its postings are records of
/// [`Accumulator::records`], put together when the share ends.
#[derive(Debug)]
struct Builder {
    field: u8,
    /// The share's next builder of the same term.
    next: u32,
    /// The term: `Accumulator::terms[at..at + len]`.
    at: u32,
    len: u32,
    /// Documents, and bytes of their positions entries.
    docs: u32,
    bytes: u32,
}

/// A document of a builder: its positions entry ends at `end` in
/// [`Accumulator::positions_log`] (and starts where the previous record's
/// ends).
#[derive(Debug, Clone, Copy)]
struct Record {
    builder: u32,
    doc: DocumentId,
    end: u32,
}

/// A builder's hits in the current document: the document (its number
/// in the share), first and last hit (a chain through
/// [`Accumulator::hits`]).
#[derive(Debug, Clone, Copy)]
struct Chain {
    doc: u32,
    head: u32,
    tail: u32,
}

/// A share's builders and the current document's hits.
#[derive(Debug, Default)]
struct Accumulator {
    builders: Vec<Builder>,
    chains: Vec<Chain>,
    /// The terms of the builders.
    terms: Vec<u8>,
    /// (position, next hit of the same builder) of the current document.
    hits: Vec<(u32, u32)>,
    /// Builders with hits in the current document.
    touched: Vec<u32>,
    /// The current document's number in the share, from 1.
    doc: u32,
    positions: Vec<u32>,
    /// Every (builder, document) of the share, in document order.
    records: Vec<Record>,
    /// Their positions entries, one after the other.
    positions_log: Vec<u8>,
}

impl Accumulator {
    /// Empties it for a new share (keeping its allocations).
    fn clear(&mut self) {
        self.builders.clear();
        self.chains.clear();
        self.terms.clear();
        self.hits.clear();
        self.touched.clear();
        self.doc = 1;
        self.records.clear();
        self.positions_log.clear();
    }

    /// The builder of (term `id`, `field`) in the share of `serial`,
    /// created if new (`slots` and `terms`: the worker's).
    fn builder(
        &mut self,
        slots: &mut Vec<(u32, u32)>,
        terms: &[SmallKey],
        serial: u32,
        id: u32,
        field: u8,
    ) -> u32 {
        if slots.len() <= id as usize {
            slots.resize(id as usize + 1, (0, NONE));
        }
        let slot = &mut slots[id as usize];
        if slot.0 != serial {
            *slot = (serial, NONE);
        }
        let mut b = slot.1;
        while b != NONE {
            let builder = &self.builders[b as usize];
            if builder.field == field {
                return b;
            }
            b = builder.next;
        }
        let b = self.builders.len() as u32;
        let term = terms[id as usize].as_bytes();
        let at = self.terms.len() as u32;
        self.terms.extend_from_slice(term);
        self.builders.push(Builder {
            field,
            next: slot.1,
            at,
            len: term.len() as u32,
            docs: 0,
            bytes: 0,
        });
        self.chains.push(Chain {
            doc: 0,
            head: NONE,
            tail: NONE,
        });
        slot.1 = b;
        b
    }

    /// Records a hit of builder `b` at `pos` in the current document.
    #[inline]
    fn hit(&mut self, b: u32, pos: u32) {
        let h = self.hits.len() as u32;
        self.hits.push((pos, NONE));
        let chain = &mut self.chains[b as usize];
        if chain.doc != self.doc {
            *chain = Chain {
                doc: self.doc,
                head: h,
                tail: h,
            };
            self.touched.push(b);
        } else {
            self.hits[chain.tail as usize].1 = h;
            chain.tail = h;
        }
    }

    /// Ends document `id`: each builder it touched gets a record of the
    /// document with its positions (ascending, unique).
    fn end_document(&mut self, id: DocumentId) {
        for &b in &self.touched {
            let chain = self.chains[b as usize];
            let before = self.positions_log.len();
            if chain.head == chain.tail {
                // One hit (most terms of a document).
                match self.hits[chain.head as usize].0 {
                    NO_POSITION => postings::put_positions(&mut self.positions_log, &[]),
                    p => postings::put_varint(&mut self.positions_log, p << 1),
                }
            } else {
                self.positions.clear();
                let mut sorted = true;
                let mut h = chain.head;
                while h != NONE {
                    let (p, next) = self.hits[h as usize];
                    if p != NO_POSITION {
                        match self.positions.last() {
                            Some(&last) if p == last => {}
                            Some(&last) if p < last => {
                                sorted = false;
                                self.positions.push(p);
                            }
                            _ => self.positions.push(p),
                        }
                    }
                    h = next;
                }
                if !sorted {
                    self.positions.sort_unstable();
                    self.positions.dedup();
                }
                postings::put_positions(&mut self.positions_log, &self.positions);
            }
            let builder = &mut self.builders[b as usize];
            builder.docs += 1;
            builder.bytes += (self.positions_log.len() - before) as u32;
            self.records.push(Record {
                builder: b,
                doc: id,
                end: self.positions_log.len() as u32,
            });
        }
        self.touched.clear();
        self.hits.clear();
        self.doc += 1;
    }
}

/// The receiver of a text's terms: collects their keys (`field ++
/// language ++ word`) and positions, looked up once the text is
/// segmented ([`Share::resolve`]): lookups that do not depend on each
/// other, in a tight loop, let the processor wait for several cache
/// misses at once (most of a lookup's cost, the table being larger than
/// the caches).
struct Collect<'a> {
    keys: &'a mut Vec<(SmallKey, u32)>,
    field: u8,
}

impl Emit for Collect<'_> {
    #[inline]
    fn term(
        &mut self,
        term: &str,
        stem: Option<Language>,
        pos: u32,
        _kind: TokenKind,
        _start: usize,
        _end: usize,
    ) {
        let head = [self.field, stem.map_or(0, |l| l as u8 + 1)];
        // Most keys fit inline: built on the stack, compared in place.
        let key = SmallKey::inline(&[&head, term.as_bytes()]).unwrap_or_else(|| {
            let mut k = Vec::with_capacity(term.len() + 2);
            k.extend_from_slice(&head);
            k.extend_from_slice(term.as_bytes());
            SmallKey::Heap(k.into())
        });
        self.keys.push((key, pos));
    }
}

/// A share being built: documents analyzed by one worker, in ascending
/// order, or in descending order (`descending`; [`Share::sorted`] puts
/// them back in order).
#[derive(Debug)]
struct Share {
    worker: Option<Worker>,
    languages: LanguageSet,
    descending: bool,
}

impl Share {
    fn start(descending: bool) -> Share {
        let mut worker = pool().lock().pop().unwrap_or_default();
        let state = &mut worker.state;
        if state.words.len() > WORKER_WORDS || state.serial == u32::MAX {
            state.clear();
        }
        state.serial += 1;
        worker.acc.clear();
        Share {
            worker: Some(worker),
            languages: LanguageSet::default(),
            descending,
        }
    }

    /// Analyzes and adds a document (ascending ids).
    fn add(&mut self, id: DocumentId, doc: &Document) {
        let worker = self.worker.as_mut().expect("a share has its worker");
        let Worker {
            segmenter,
            state,
            acc,
        } = worker;
        let mut next_pos = [0u32; Field::ALL.len() + 1];
        for t in doc.texts() {
            if let Some(l) = t.language {
                self.languages.insert(l);
            }
            let field = t.field as u8;
            let mut keys = std::mem::take(&mut state.keys);
            keys.clear();
            let mut collect = Collect {
                keys: &mut keys,
                field,
            };
            // One empty position between values keeps phrases from
            // running across two addresses or parts.
            let pos = &mut next_pos[field as usize];
            *pos = segmenter.analyze(t.text, t.language, *pos, &mut collect) + 1;
            Self::resolve(acc, state, field, &keys);
            state.keys = keys;
        }
        for name in &doc.header_names {
            let id = state.term_id(name, None);
            let b = acc.builder(
                &mut state.slots,
                &state.terms,
                state.serial,
                id,
                Field::HeaderName as u8,
            );
            acc.hit(b, NO_POSITION);
        }
        acc.end_document(id);
    }

    /// Records the hits of a text's keys ([`Collect`]).
    fn resolve(
        acc: &mut Accumulator,
        state: &mut WorkerState,
        field: u8,
        keys: &[(SmallKey, u32)],
    ) {
        for (key, pos) in keys {
            let WorkerState {
                words,
                terms,
                slots,
                serial,
                ..
            } = &mut *state;
            let b = match words.get_mut(key) {
                Some(e) if e.serial == *serial => e.builder,
                Some(e) => {
                    // First seen in an earlier share: its term is known.
                    let b = acc.builder(slots, terms, *serial, e.term, field);
                    e.serial = *serial;
                    e.builder = b;
                    b
                }
                None => Self::new_word(acc, state, key),
            };
            acc.hit(b, *pos);
        }
    }

    /// The builder of a word never seen (`key`: `field ++ language ++
    /// word`).
    #[cold]
    fn new_word(acc: &mut Accumulator, state: &mut WorkerState, key: &SmallKey) -> u32 {
        let bytes = key.as_bytes();
        let stem = bytes[1].checked_sub(1).map(|l| Language::ALL[l as usize]);
        let term = std::str::from_utf8(&bytes[2..]).expect("keys hold a term");
        let id = state.term_id(term, stem);
        let b = acc.builder(&mut state.slots, &state.terms, state.serial, id, bytes[0]);
        state.words.insert(
            key.clone(),
            WordEntry {
                term: id,
                serial: state.serial,
                builder: b,
            },
        );
        b
    }

    /// The share's postings sorted by (term, field): each builder's
    /// documents and positions entries gathered from the records.
    fn sorted(&self) -> Sorted {
        let acc = &self.worker.as_ref().expect("a share has its worker").acc;
        let term = |b: &Builder| &acc.terms[b.at as usize..(b.at + b.len) as usize];
        let mut order: Vec<(u64, u32)> = acc
            .builders
            .iter()
            .enumerate()
            .map(|(i, b)| (prefix(term(b)), i as u32))
            .collect();
        order.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                let (x, y) = (&acc.builders[a.1 as usize], &acc.builders[b.1 as usize]);
                term(x).cmp(term(y)).then(x.field.cmp(&y.field))
            })
        });
        // Each builder's place in the output, in sorted order.
        let mut cursors = vec![(0u32, 0u32); acc.builders.len()];
        let mut entries = Vec::with_capacity(order.len());
        let (mut docs_at, mut bytes_at) = (0u32, 0u32);
        for (prefix, i) in order {
            let b = &acc.builders[i as usize];
            cursors[i as usize] = (docs_at, bytes_at);
            entries.push(Entry {
                prefix,
                at: b.at,
                len: b.len,
                field: b.field,
                docs: docs_at..docs_at + b.docs,
                positions: bytes_at..bytes_at + b.bytes,
            });
            docs_at += b.docs;
            bytes_at += b.bytes;
        }
        let mut docs = vec![0u32; docs_at as usize];
        let mut positions = vec![0u8; bytes_at as usize];
        // Records in document order: each builder's documents ascending.
        let n = acc.records.len();
        for k in 0..n {
            let i = if self.descending { n - 1 - k } else { k };
            let r = &acc.records[i];
            let start = i.checked_sub(1).map_or(0, |j| acc.records[j].end as usize);
            let end = r.end as usize;
            let (d, p) = &mut cursors[r.builder as usize];
            docs[*d as usize] = r.doc;
            *d += 1;
            let len = end - start;
            positions[*p as usize..*p as usize + len]
                .copy_from_slice(&acc.positions_log[start..end]);
            *p += len as u32;
        }
        Sorted {
            terms: acc.terms.clone(),
            docs,
            positions,
            entries,
        }
    }

    /// Ends the share: its sorted postings; the worker goes back to the
    /// pool.
    fn finish(self) -> (Sorted, LanguageSet) {
        (self.sorted(), self.languages)
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Some(w) = self.worker.take() {
            let mut pool = pool().lock();
            if pool.len() < POOL_WORKERS {
                pool.push(w);
            }
        }
    }
}

/// The first eight bytes of a term, big-endian, zero-padded: orders as
/// the term does, up to ties.
#[inline]
fn prefix(term: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = term.len().min(8);
    b[..n].copy_from_slice(&term[..n]);
    u64::from_be_bytes(b)
}

/// One (term, field) of a finished share.
#[derive(Debug)]
struct Entry {
    prefix: u64,
    /// The term: `Sorted::terms[at..at + len]`.
    at: u32,
    len: u32,
    field: u8,
    /// Its documents, in `Sorted::docs`, and their positions entries, in
    /// `Sorted::positions`.
    docs: std::ops::Range<u32>,
    positions: std::ops::Range<u32>,
}

/// A finished share: entries sorted by (term, field).
#[derive(Debug, Default)]
struct Sorted {
    terms: Vec<u8>,
    docs: Vec<u32>,
    positions: Vec<u8>,
    entries: Vec<Entry>,
}

impl Sorted {
    fn term(&self, e: &Entry) -> &[u8] {
        &self.terms[e.at as usize..(e.at + e.len) as usize]
    }

    /// Entry `i`'s documents and positions entries.
    fn postings(&self, i: usize) -> (&[u32], &[u8]) {
        let e = &self.entries[i];
        (
            &self.docs[e.docs.start as usize..e.docs.end as usize],
            &self.positions[e.positions.start as usize..e.positions.end as usize],
        )
    }

    /// Orders entry `i` of `self` against entry `j` of `other`.
    fn cmp_entry(&self, i: usize, other: &Sorted, j: usize) -> std::cmp::Ordering {
        let (a, b) = (&self.entries[i], &other.entries[j]);
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| self.term(a).cmp(other.term(b)))
            .then(a.field.cmp(&b.field))
    }
}

/// A worker's part of [`IndexBatch::add_all`]: a segment of the
/// documents, whether it takes them from the back, and the segment's
/// number.
type Job<'s, 'd> = (&'s [(DocumentId, &'d Document)], bool, usize);

impl IndexBatch {
    /// An empty batch for `account`.
    pub fn new(account: AccountId) -> Self {
        Self {
            account,
            shares: Vec::new(),
            open: None,
            indexed: Vec::new(),
            deleted: Vec::new(),
            dates: Vec::new(),
            languages: LanguageSet::default(),
            rebuild: None,
            text_bytes: 0,
        }
    }

    /// The account.
    pub fn account(&self) -> AccountId {
        self.account
    }

    /// Documents added so far.
    pub fn documents(&self) -> usize {
        self.indexed.len()
    }

    /// Text bytes of the documents added so far.
    pub fn text_bytes(&self) -> usize {
        self.text_bytes
    }

    /// Whether the batch writes nothing.
    pub fn is_empty(&self) -> bool {
        self.indexed.is_empty()
            && self.deleted.is_empty()
            && self.dates.is_empty()
            && self.rebuild.is_none()
    }

    /// Analyzes and adds a document. Documents must be added in ascending
    /// id order (queue and rebuild order).
    pub fn add(&mut self, id: DocumentId, doc: &Document) {
        debug_assert!(self.indexed.last().is_none_or(|&l| l < id));
        self.text_bytes += doc.text_bytes();
        self.open
            .get_or_insert_with(|| Share::start(false))
            .add(id, doc);
        self.indexed.push(id);
    }

    /// Analyzes and adds many documents (ascending ids, after those added
    /// before), on up to four threads: each analyzes a contiguous share.
    pub fn add_all(&mut self, docs: &[(DocumentId, &Document)]) {
        debug_assert!(docs.windows(2).all(|w| w[0].0 < w[1].0));
        debug_assert!(
            docs.first()
                .is_none_or(|f| self.indexed.last().is_none_or(|&l| l < f.0))
        );
        if docs.is_empty() {
            return;
        }
        if let Some(open) = self.open.take() {
            self.push_share(open.finish());
        }
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(4);
        if threads <= 1 || docs.len() < 32 {
            let mut share = Share::start(false);
            for (id, d) in docs {
                share.add(*id, d);
            }
            let share = share.finish();
            self.push_share(share);
        } else {
            // Segments of the batch, two workers each: one takes documents
            // from the front, ascending, the other from the back,
            // descending, until they meet. Each worker's share is
            // contiguous, and however the work per document varies (and
            // whatever else the cores run), both finish together.
            let segments = threads.div_ceil(2);
            let per = docs.len().div_ceil(segments);
            let jobs: Vec<Job<'_, '_>> = docs
                .chunks(per)
                .enumerate()
                .flat_map(|(i, seg)| {
                    let back = (2 * i + 1 < threads).then_some((seg, true, i));
                    std::iter::once((seg, false, i)).chain(back)
                })
                .collect();
            let meetings: Vec<Mutex<(usize, usize)>> = docs
                .chunks(per)
                .map(|seg| Mutex::new((0, seg.len())))
                .collect();
            let meetings = &meetings;
            let run = move |(seg, from_back, i): Job<'_, '_>| {
                let mut share = Share::start(from_back);
                loop {
                    let next = {
                        let mut m = meetings[i].lock();
                        if m.0 >= m.1 {
                            break;
                        }
                        if from_back {
                            m.1 -= 1;
                            m.1
                        } else {
                            m.0 += 1;
                            m.0 - 1
                        }
                    };
                    let (id, d) = seg[next];
                    share.add(id, d);
                }
                share.finish()
            };
            let mut jobs = jobs.into_iter();
            let first = jobs.next().expect("documents");
            let shares: Vec<(Sorted, LanguageSet)> = std::thread::scope(|s| {
                let handles: Vec<_> = jobs.map(|job| s.spawn(move || run(job))).collect();
                let mut out = vec![run(first)];
                out.extend(
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("an analysis thread panicked")),
                );
                out
            });
            for share in shares {
                self.push_share(share);
            }
        }
        for (id, d) in docs {
            self.text_bytes += d.text_bytes();
            self.indexed.push(*id);
        }
    }

    fn push_share(&mut self, (share, languages): (Sorted, LanguageSet)) {
        self.languages.0 |= languages.0;
        if !share.entries.is_empty() {
            self.shares.push(share);
        }
    }

    /// Records a document's receivedAt (unix seconds; immutable in the
    /// store), which lets [`SearchIndex::date_order`] order matches by date
    /// without reading the store. The indexer and rebuilds record one for
    /// every document they add.
    pub fn set_received_at(&mut self, id: DocumentId, received_at: i64) {
        self.dates.push((id, received_at));
    }

    /// Removes a document from the index (it was destroyed).
    pub fn remove(&mut self, id: DocumentId) {
        self.deleted.push(id);
    }

    /// Records the rebuild cursor (`Some(id)`: every document up to `id`
    /// is indexed; `None`: the rebuild is finished) with this batch.
    pub fn set_rebuild_cursor(&mut self, cursor: Option<DocumentId>) {
        self.rebuild = Some(cursor);
    }

    /// Adds the posting operands of every share, merged by key in key
    /// order (the memtable inserts them along one path), to `wb`.
    fn write_postings(&self, wb: &mut WriteBatch, cf: &ColumnFamily) {
        let open = self.open.as_ref().map(Share::sorted);
        let shares: Vec<&Sorted> = self.shares.iter().chain(open.as_ref()).collect();
        let mut heads = vec![0usize; shares.len()];
        let mut parts: Vec<(&[u32], &[u8])> = Vec::with_capacity(shares.len());
        let mut key = Vec::with_capacity(80);
        let mut value = Vec::with_capacity(256);
        key.extend_from_slice(&self.account.0.to_be_bytes());
        loop {
            let mut best: Option<usize> = None;
            for s in 0..shares.len() {
                if heads[s] < shares[s].entries.len()
                    && best
                        .is_none_or(|b| shares[s].cmp_entry(heads[s], shares[b], heads[b]).is_lt())
                {
                    best = Some(s);
                }
            }
            let Some(b) = best else {
                break;
            };
            let (bs, bi) = (shares[b], heads[b]);
            parts.clear();
            for s in 0..shares.len() {
                if heads[s] < shares[s].entries.len()
                    && (s == b || shares[s].cmp_entry(heads[s], bs, bi).is_eq())
                {
                    parts.push(shares[s].postings(heads[s]));
                    heads[s] += 1;
                }
            }
            let e = &bs.entries[bi];
            key.truncate(4);
            key.extend_from_slice(bs.term(e));
            key.push(0);
            key.push(e.field);
            value.clear();
            postings::encode_parts(&mut value, &parts);
            wb.merge_cf(cf, &key, &value);
        }
    }
}

/// Writes batches ([`SearchIndex::write`]) in order on a thread of its own
/// while the caller analyzes the next ones ([`SearchIndex::batch_writer`]):
/// at most one batch waits while another is written, so a write slower
/// than the next batch's analysis does not stall the caller at once (on
/// two cores, the encoding, memtable inserts and WAL sync of one batch
/// overlap the analysis of the next). A batch is durable once its tag
/// comes back from [`BatchWriter::submit`] or [`BatchWriter::finish`];
/// after a failed write nothing more is written. Dropping it waits for
/// the thread (no write outlives its caller's error or panic; batches
/// already queued are written).
#[derive(Debug)]
pub struct BatchWriter {
    send: Option<std::sync::mpsc::SyncSender<(IndexBatch, u64)>>,
    landed: std::sync::mpsc::Receiver<Result<u64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BatchWriter {
    /// Queues `batch` (tagged `tag`), waiting while another batch is
    /// already queued. Returns the tags of the batches durable since the
    /// last call, in order, or the error of a failed write.
    pub fn submit(&mut self, batch: IndexBatch, tag: u64) -> Result<Vec<u64>> {
        let mut done = self.landed_so_far()?;
        let sent = match &self.send {
            Some(send) => send.send((batch, tag)).is_ok(),
            None => false,
        };
        if !sent {
            // The writer stopped: its last word is an error.
            self.send = None;
            self.join()?;
            self.landed_so_far()?;
            return Err(Error::Index("the index writer stopped".into()));
        }
        done.extend(self.landed_so_far()?);
        Ok(done)
    }

    /// Waits until every queued batch is durable; their tags in order.
    pub fn finish(mut self) -> Result<Vec<u64>> {
        self.send = None;
        self.join()?;
        self.landed_so_far()
    }

    fn landed_so_far(&self) -> Result<Vec<u64>> {
        self.landed.try_iter().collect()
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Err(_)) => Err(Error::Index("the index writer panicked".into())),
            _ => Ok(()),
        }
    }
}

impl Drop for BatchWriter {
    fn drop(&mut self) {
        self.send = None;
        let _ = self.join();
    }
}

/// Documents newest first ([`SearchIndex::date_order`]).
#[derive(Debug)]
pub struct DateOrder<'a> {
    index: &'a SearchIndex,
    account: AccountId,
    docs: &'a RoaringBitmap,
    /// Blocks not read yet: (latest receivedAt, block), latest last.
    blocks: Vec<(i64, u32)>,
    /// Documents of the blocks read and not handed out yet.
    pool: std::collections::BinaryHeap<(i64, DocumentId)>,
    missing: bool,
}

impl DateOrder<'_> {
    /// The next document (newest first) with its receivedAt, `None` at
    /// the end, or when a document turned out to have no recorded date
    /// ([`DateOrder::missing_date`]). A document is handed out only when
    /// no unread block can hold a later one.
    pub fn next_dated(&mut self) -> Result<Option<(DocumentId, i64)>> {
        loop {
            let bound = self.blocks.last().map(|&(latest, _)| latest);
            match (self.pool.peek(), bound) {
                // Strictly later than anything unread (an unread document
                // of the same second could have a higher id).
                (Some(&(at, id)), b) if b.is_none_or(|b| at > b) => {
                    self.pool.pop();
                    return Ok(Some((id, at)));
                }
                (None, None) => return Ok(None),
                _ => {}
            }
            let (_, block) = self.blocks.pop().expect("a bound means a block");
            let value = self
                .index
                .inner
                .db
                .get_pinned_cf(self.index.cf(CF_META), dates_key(self.account, block))?;
            let lo = block << DATE_BLOCK_BITS;
            let hi = lo | ((1 << DATE_BLOCK_BITS) - 1);
            let mut wanted = self.docs.range(lo..=hi).peekable();
            if let Some(v) = value {
                let records =
                    decode_dates(&v).ok_or_else(|| Error::Corrupt("dates value".into()))?;
                for (id, at) in records {
                    match wanted.peek() {
                        Some(&d) if d == id => {
                            self.pool.push((at, id));
                            wanted.next();
                        }
                        Some(&d) if d < id => break,
                        _ => {}
                    }
                }
            }
            if wanted.next().is_some() {
                self.missing = true;
                self.blocks.clear();
                self.pool.clear();
                return Ok(None);
            }
        }
    }

    /// Whether [`DateOrder::next_dated`] stopped because a document has no
    /// recorded date (the caller then orders by other means).
    pub fn missing_date(&self) -> bool {
        self.missing
    }
}

/// Index statistics of an account.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccountStats {
    /// Documents indexed (including destroyed ones).
    pub indexed: u64,
    /// Documents destroyed.
    pub deleted: u64,
}

impl SearchIndex {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, IndexOptions::default())
    }

    /// [`SearchIndex::open`] with options.
    pub fn open_with(path: &Path, options: IndexOptions) -> Result<Self> {
        let cache = Cache::new_lru_cache(options.cache_bytes);
        let table = |bloom: bool| {
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            t.set_block_size(16 << 10);
            t.set_cache_index_and_filter_blocks(true);
            if bloom {
                t.set_bloom_filter(10.0, false);
            }
            t
        };
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        db_opts.set_max_background_jobs(2);
        db_opts.set_bytes_per_sync(1 << 20);
        let mut post = Options::default();
        post.set_merge_operator("tern_postings", merge_postings, merge_postings);
        post.set_compression_type(rocksdb::DBCompressionType::Lz4);
        post.set_block_based_table_factory(&table(true));
        post.set_write_buffer_size(64 << 20);
        let mut meta = Options::default();
        meta.set_merge_operator("tern_search_meta", merge_meta, merge_meta);
        meta.set_compression_type(rocksdb::DBCompressionType::Lz4);
        meta.set_block_based_table_factory(&table(false));
        let db = DB::open_cf_descriptors(
            &db_opts,
            path,
            vec![
                ColumnFamilyDescriptor::new(CF_POSTINGS, post),
                ColumnFamilyDescriptor::new(CF_META, meta),
            ],
        )?;
        let index = SearchIndex {
            inner: Arc::new(Inner {
                db,
                sync: options.sync,
                query_wait: options.query_wait,
                caught_up: Mutex::new(HashMap::new()),
                progress: Condvar::new(),
                kicked: Mutex::new(false),
                kick: Condvar::new(),
                created: AtomicBool::new(false),
            }),
        };
        let meta = index.cf(CF_META);
        match index.inner.db.get_cf(meta, [META_FORMAT])? {
            Some(v) => {
                let found = v
                    .as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| Error::Corrupt("bad format version".into()))?;
                if found != FORMAT_VERSION {
                    return Err(Error::FormatVersion {
                        found,
                        expected: FORMAT_VERSION,
                    });
                }
            }
            None => {
                index.inner.db.put_cf_opt(
                    meta,
                    [META_FORMAT],
                    FORMAT_VERSION.to_be_bytes(),
                    &index.write_options(),
                )?;
                index.inner.created.store(true, Ordering::Relaxed);
            }
        }
        Ok(index)
    }

    /// The index of `store`, at [`crate::default_path`] of the store's
    /// data directory, shared by every caller in the process: the first
    /// call opens it (with `options`), later calls get the same handle
    /// while any handle is alive. This is how `tern serve` wires the
    /// indexer and the JMAP methods to one index without passing it
    /// through every layer.
    pub fn for_store_with(store: &MailStore, options: IndexOptions) -> Result<Self> {
        let data_dir = store.path().parent().unwrap_or(store.path());
        let path = crate::default_path(data_dir);
        let mut reg = registry().lock();
        if let Some(inner) = reg.get(&path).and_then(Weak::upgrade) {
            return Ok(SearchIndex { inner });
        }
        let index = Self::open_with(&path, options)?;
        reg.insert(path, Arc::downgrade(&index.inner));
        Ok(index)
    }

    /// [`SearchIndex::for_store_with`] with default options.
    pub fn for_store(store: &MailStore) -> Result<Self> {
        Self::for_store_with(store, IndexOptions::default())
    }

    /// Whether this handle's open created the index (a new data directory,
    /// or an index deleted or lost); true once, for the first caller.
    pub fn take_created(&self) -> bool {
        self.inner.created.swap(false, Ordering::Relaxed)
    }

    /// How long a text query should wait for the index to catch up
    /// ([`IndexOptions::query_wait`]).
    pub fn query_wait(&self) -> Duration {
        self.inner.query_wait
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        self.inner
            .db
            .cf_handle(name)
            .expect("column family created at open")
    }

    fn write_options(&self) -> WriteOptions {
        let mut w = WriteOptions::default();
        w.set_sync(self.inner.sync);
        w
    }

    /// Writes a batch durably (synced WAL): its posting operands (the
    /// shares merged, encoded) and its meta updates, in one write.
    pub fn write(&self, batch: &IndexBatch) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let account = batch.account;
        let (post, meta) = (self.cf(CF_POSTINGS), self.cf(CF_META));
        // Sized up front (the operands come to 70-90 % of the text's bytes
        // on the SpamAssassin corpus; pages reserved but not written cost
        // nothing): growing a batch of a few MB by doubling copies it again
        // and again.
        let mut wb = WriteBatch::with_capacity_bytes(batch.text_bytes + 4096);
        batch.write_postings(&mut wb, post);
        let bitmap = |ids: &[DocumentId]| postings::bitmap_bytes(&ids.iter().copied().collect());
        if !batch.indexed.is_empty() {
            wb.merge_cf(
                meta,
                meta_key(META_INDEXED, account),
                bitmap(&batch.indexed),
            );
        }
        if !batch.deleted.is_empty() {
            wb.merge_cf(
                meta,
                meta_key(META_DELETED, account),
                bitmap(&batch.deleted),
            );
        }
        if !batch.dates.is_empty() {
            let mut dates = batch.dates.clone();
            dates.sort_unstable_by_key(|&(id, _)| id);
            dates.dedup_by_key(|&mut (id, _)| id);
            let mut latest = Vec::new();
            for block in dates.chunk_by(|a, b| a.0 >> DATE_BLOCK_BITS == b.0 >> DATE_BLOCK_BITS) {
                let b = block[0].0 >> DATE_BLOCK_BITS;
                wb.merge_cf(meta, dates_key(account, b), encode_dates(block));
                latest.push((b, block.iter().map(|&(_, at)| at).max().unwrap_or(0)));
            }
            wb.merge_cf(
                meta,
                meta_key(META_DATE_BLOCKS, account),
                encode_dates(&latest),
            );
        }
        if batch.languages.0 != 0 {
            wb.merge_cf(
                meta,
                meta_key(META_LANGUAGES, account),
                batch.languages.0.to_le_bytes(),
            );
        }
        match batch.rebuild {
            Some(Some(cursor)) => {
                wb.put_cf(meta, meta_key(META_REBUILD, account), cursor.to_be_bytes())
            }
            Some(None) => wb.delete_cf(meta, meta_key(META_REBUILD, account)),
            None => {}
        }
        self.inner.db.write_opt(wb, &self.write_options())?;
        Ok(())
    }

    /// A [`BatchWriter`] for this index.
    pub fn batch_writer(&self) -> Result<BatchWriter> {
        let (send, queue) = std::sync::mpsc::sync_channel::<(IndexBatch, u64)>(1);
        let (report, landed) = std::sync::mpsc::channel();
        let index = self.clone();
        let thread = std::thread::Builder::new()
            .name("tern-index-write".into())
            .spawn(move || {
                for (batch, tag) in queue {
                    let written = index.write(&batch);
                    let failed = written.is_err();
                    if report.send(written.map(|()| tag)).is_err() || failed {
                        return;
                    }
                }
            })
            .map_err(|e| Error::Index(format!("cannot start a writer: {e}")))?;
        Ok(BatchWriter {
            send: Some(send),
            landed,
            thread: Some(thread),
        })
    }

    /// Removes everything indexed for `account` and, when `rebuild` is
    /// set, marks a rebuild as started (cursor before the first email), in
    /// one durable write.
    pub fn clear_account(&self, account: AccountId, rebuild: bool) -> Result<()> {
        let (post, meta) = (self.cf(CF_POSTINGS), self.cf(CF_META));
        let mut wb = WriteBatch::default();
        let begin = account.0.to_be_bytes().to_vec();
        let end = match account.0.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            None => vec![0xFF; 5],
        };
        wb.delete_range_cf(post, begin, end);
        for kind in [
            META_DELETED,
            META_INDEXED,
            META_LANGUAGES,
            META_REBUILD,
            META_DATE_BLOCKS,
        ] {
            wb.delete_cf(meta, meta_key(kind, account));
        }
        wb.delete_range_cf(
            meta,
            dates_key(account, 0).to_vec(),
            match account.0.checked_add(1) {
                Some(next) => dates_key(AccountId(next), 0).to_vec(),
                None => vec![META_DATES + 1],
            },
        );
        if rebuild {
            wb.put_cf(meta, meta_key(META_REBUILD, account), b"");
        }
        self.inner.db.write_opt(wb, &self.write_options())?;
        self.inner.caught_up.lock().remove(&account);
        Ok(())
    }

    /// The cursor of an unfinished rebuild of `account`: `Some(None)` when
    /// it started and no email is indexed yet, `Some(Some(id))` when every
    /// email up to `id` is.
    pub fn rebuild_cursor(&self, account: AccountId) -> Result<Option<Option<DocumentId>>> {
        match self
            .inner
            .db
            .get_cf(self.cf(CF_META), meta_key(META_REBUILD, account))?
        {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(Some(None)),
            Some(v) => Ok(Some(Some(u32::from_be_bytes(
                v.as_slice()
                    .try_into()
                    .map_err(|_| Error::Corrupt("bad rebuild cursor".into()))?,
            )))),
        }
    }

    /// Accounts with an unfinished rebuild.
    pub fn unfinished_rebuilds(&self) -> Result<Vec<AccountId>> {
        let mut out = Vec::new();
        let iter = self.inner.db.iterator_cf(
            self.cf(CF_META),
            IteratorMode::From(&[META_REBUILD], Direction::Forward),
        );
        for item in iter {
            let (k, _) = item?;
            if k.first() != Some(&META_REBUILD) {
                break;
            }
            if k.len() == 5 {
                out.push(AccountId(u32::from_be_bytes(
                    k[1..5].try_into().expect("4 bytes"),
                )));
            }
        }
        Ok(out)
    }

    fn bitmap(&self, kind: u8, account: AccountId) -> Result<RoaringBitmap> {
        match self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_META), meta_key(kind, account))?
        {
            None => Ok(RoaringBitmap::new()),
            Some(v) => RoaringBitmap::deserialize_from(&v[..])
                .map_err(|e| Error::Corrupt(format!("document bitmap: {e}"))),
        }
    }

    /// Documents of `account` that were destroyed.
    pub fn deleted(&self, account: AccountId) -> Result<RoaringBitmap> {
        self.bitmap(META_DELETED, account)
    }

    /// Documents of `account` that were indexed (destroyed ones included).
    pub fn indexed(&self, account: AccountId) -> Result<RoaringBitmap> {
        self.bitmap(META_INDEXED, account)
    }

    /// Documents searchable in `account`: indexed and not destroyed.
    pub fn live(&self, account: AccountId) -> Result<RoaringBitmap> {
        Ok(self.indexed(account)? - self.deleted(account)?)
    }

    /// The documents of `docs` newest first, by the receivedAt recorded
    /// when each was indexed ([`IndexBatch::set_received_at`]), ties by
    /// id descending. Reads the blocks of dates lazily, latest block
    /// first, so the first few cost one or two block reads when ids grow
    /// with dates. `None` when some document of `docs` has no recorded
    /// date (indexed before dates were recorded; a rebuild records them).
    pub fn date_order<'a>(
        &'a self,
        account: AccountId,
        docs: &'a RoaringBitmap,
    ) -> Result<Option<DateOrder<'a>>> {
        let summary = match self
            .inner
            .db
            .get_pinned_cf(self.cf(CF_META), meta_key(META_DATE_BLOCKS, account))?
        {
            Some(v) => decode_dates(&v)
                .ok_or_else(|| Error::Corrupt("date blocks value".into()))?
                .collect::<FastMap<u32, i64>>(),
            None => FastMap::default(),
        };
        // Every block holding a document must have dates.
        let mut blocks = Vec::new();
        let mut from = 0u64;
        while from <= u64::from(u32::MAX) {
            let Some(d) = docs.range(from as u32..).next() else {
                break;
            };
            let block = d >> DATE_BLOCK_BITS;
            let Some(&latest) = summary.get(&block) else {
                return Ok(None);
            };
            blocks.push((latest, block));
            from = (u64::from(block) + 1) << DATE_BLOCK_BITS;
        }
        // Popped from the end: latest first.
        blocks.sort_unstable();
        Ok(Some(DateOrder {
            index: self,
            account,
            docs,
            blocks,
            pool: std::collections::BinaryHeap::new(),
            missing: false,
        }))
    }

    /// Counts of `account`'s documents.
    pub fn stats(&self, account: AccountId) -> Result<AccountStats> {
        Ok(AccountStats {
            indexed: self.indexed(account)?.len(),
            deleted: self.deleted(account)?.len(),
        })
    }

    /// Stemming languages seen in `account`'s documents.
    pub fn languages(&self, account: AccountId) -> Result<LanguageSet> {
        Ok(
            match self
                .inner
                .db
                .get_pinned_cf(self.cf(CF_META), meta_key(META_LANGUAGES, account))?
            {
                Some(v) => LanguageSet(u32::from_le_bytes(
                    v[..]
                        .try_into()
                        .map_err(|_| Error::Corrupt("bad language set".into()))?,
                )),
                None => LanguageSet::default(),
            },
        )
    }

    /// The posting value of one (term, field), if any.
    pub fn posting(&self, account: AccountId, term: &str, field: Field) -> Result<Option<Vec<u8>>> {
        Ok(self
            .inner
            .db
            .get_cf(self.cf(CF_POSTINGS), posting_key(account, term, field))?)
    }

    /// The posting values of `term` in every field that has it.
    pub fn term_fields(&self, account: AccountId, term: &str) -> Result<Vec<(Field, Vec<u8>)>> {
        let mut prefix = Vec::with_capacity(term.len() + 5);
        prefix.extend_from_slice(&account.0.to_be_bytes());
        prefix.extend_from_slice(term.as_bytes());
        prefix.push(0);
        let mut upper = prefix.clone();
        *upper.last_mut().expect("not empty") = 1;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(upper);
        let iter = self.inner.db.iterator_cf_opt(
            self.cf(CF_POSTINGS),
            ro,
            IteratorMode::From(&prefix, Direction::Forward),
        );
        let mut out = Vec::new();
        for item in iter {
            let (k, v) = item?;
            if k.len() != prefix.len() + 1 || !k.starts_with(&prefix) {
                continue;
            }
            if let Some(f) = Field::from_u8(k[k.len() - 1]) {
                out.push((f, v.into_vec()));
            }
        }
        Ok(out)
    }

    /// The documents and positions of one (term, field) in `account`: for
    /// tests and tools.
    pub fn inspect(
        &self,
        account: AccountId,
        term: &str,
        field: Field,
    ) -> Result<Vec<(DocumentId, Vec<u32>)>> {
        let Some(v) = self.posting(account, term, field)? else {
            return Ok(Vec::new());
        };
        let p = postings::decode(&v).ok_or_else(|| Error::Corrupt("posting value".into()))?;
        let mut c = p.cursor();
        let mut out = Vec::new();
        for d in &p.docs {
            let mut positions = Vec::new();
            if !c.seek(d, &mut positions) {
                return Err(Error::Corrupt("posting positions".into()));
            }
            out.push((d, positions));
        }
        Ok(out)
    }

    /// Flushes memtables and compacts everything (benchmarks, tools).
    pub fn compact(&self) -> Result<()> {
        for name in [CF_POSTINGS, CF_META] {
            let cf = self.cf(name);
            self.inner.db.flush_cf(cf)?;
            self.inner
                .db
                .compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    /// Bytes of SST files and memtables of both column families.
    pub fn size_bytes(&self) -> u64 {
        [CF_POSTINGS, CF_META]
            .into_iter()
            .map(|name| {
                let cf = self.cf(name);
                let p = |prop: &str| {
                    self.inner
                        .db
                        .property_int_value_cf(cf, prop)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                };
                p("rocksdb.total-sst-files-size") + p("rocksdb.cur-size-all-mem-tables")
            })
            .sum()
    }

    /// Wakes the indexer (work was queued, or a query waits).
    pub fn kick(&self) {
        *self.inner.kicked.lock() = true;
        self.inner.kick.notify_all();
    }

    /// Sleeps until kicked or `timeout` passes; clears the kick.
    pub(crate) fn wait_kick(&self, timeout: Duration) {
        let mut k = self.inner.kicked.lock();
        if !*k {
            self.inner.kick.wait_for(&mut k, timeout);
        }
        *k = false;
    }

    /// Records that `account`'s index reflects every email change up to
    /// Email state `state`, and wakes waiting queries.
    pub(crate) fn set_caught_up(&self, account: AccountId, state: u64) {
        let mut map = self.inner.caught_up.lock();
        let e = map.entry(account).or_insert(0);
        *e = (*e).max(state);
        drop(map);
        self.inner.progress.notify_all();
    }

    /// Wakes waiting queries (a batch was written).
    pub(crate) fn notify_progress(&self) {
        self.inner.progress.notify_all();
    }

    /// The Email state `account`'s index is known to reflect, if the
    /// indexer has caught up since the process started.
    pub fn caught_up(&self, account: AccountId) -> Option<u64> {
        self.inner.caught_up.lock().get(&account).copied()
    }

    /// Whether the index reflects every email change of `account` up to
    /// Email state `state`: the indexer reported it, or the store has no
    /// index work queued for the account (queue entries are removed only
    /// after their batch is durable) and no rebuild is unfinished.
    pub fn is_caught_up(&self, store: &MailStore, account: AccountId, state: u64) -> Result<bool> {
        if self.caught_up(account).is_some_and(|s| s >= state) {
            return Ok(true);
        }
        if self.rebuild_cursor(account)?.is_some() {
            return Ok(false);
        }
        let (pending, now) = store.kv().read(|tx| -> Result<(bool, u64)> {
            Ok((
                email::has_index_work(tx, account)?,
                changes::state(tx, account, DataType::Email)?,
            ))
        })?;
        if !pending {
            self.set_caught_up(account, now);
            return Ok(now >= state);
        }
        Ok(false)
    }

    /// Waits until `account`'s index reflects Email state `state` (read
    /// your writes), at most `timeout`; kicks the indexer. Returns whether
    /// it caught up; on `false` the caller answers from the index as it is.
    pub fn wait_caught_up(
        &self,
        store: &MailStore,
        account: AccountId,
        state: u64,
        timeout: Duration,
    ) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.is_caught_up(store, account, state)? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            self.kick();
            let mut map = self.inner.caught_up.lock();
            if map.get(&account).is_some_and(|&s| s >= state) {
                return Ok(true);
            }
            // Woken after each batch; re-check the store then.
            self.inner
                .progress
                .wait_for(&mut map, (deadline - now).min(Duration::from_millis(50)));
        }
    }
}

/// Expands analyzed query words into the terms a document may hold: the
/// folded word and its stem in every language of `langs`.
pub(crate) fn expand(term: &str, kind: TokenKind, langs: LanguageSet) -> Vec<String> {
    let mut out = vec![term.to_string()];
    if matches!(kind, TokenKind::Word | TokenKind::Part) && term.chars().all(char::is_alphabetic) {
        for l in langs.iter() {
            let s = l.stem(term);
            if !out.iter().any(|t| *t == s) {
                out.push(s.into_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(index: &SearchIndex, account: AccountId, docs: &RoaringBitmap) -> Option<Vec<u32>> {
        let mut o = index.date_order(account, docs).unwrap()?;
        let mut out = Vec::new();
        while let Some((id, _)) = o.next_dated().unwrap() {
            out.push(id);
        }
        (!o.missing_date()).then_some(out)
    }

    #[test]
    fn a_batch_writer_lands_batches_in_order_and_reports_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        let account = AccountId(2);
        let mut writer = index.batch_writer().unwrap();
        let mut landed = Vec::new();
        for tag in 1..=6u64 {
            let mut batch = IndexBatch::new(account);
            let doc = Document::from_message(
                format!("Subject: heron{tag} gannet\r\n\r\nbody\r\n").as_bytes(),
            )
            .unwrap();
            batch.add(tag as u32, &doc);
            landed.extend(writer.submit(batch, tag).unwrap());
        }
        landed.extend(writer.finish().unwrap());
        assert_eq!(landed, [1, 2, 3, 4, 5, 6]);
        let ids: Vec<DocumentId> = index
            .inspect(account, "gannet", Field::Subject)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn date_order_is_newest_first_across_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let index = SearchIndex::open(dir.path()).unwrap();
        let account = AccountId(7);
        // Dates unrelated to ids, each used twice (ties go to the higher
        // id), over five blocks, written in two batches (one re-applied).
        let date = |id: u32| i64::from((id * 7919) % 2500) * 60;
        let ids: Vec<u32> = (0..5000).step_by(2).collect();
        for half in ids.chunks(1250) {
            let mut batch = IndexBatch::new(account);
            for &id in half {
                batch.set_received_at(id, date(id));
            }
            index.write(&batch).unwrap();
            if half[0] == 0 {
                index.write(&batch).unwrap();
            }
        }
        let docs: RoaringBitmap = ids.iter().copied().filter(|i| i % 3 != 0).collect();
        let mut expected: Vec<u32> = docs.iter().collect();
        expected.sort_by_key(|&i| std::cmp::Reverse((date(i), i)));
        assert_eq!(order(&index, account, &docs), Some(expected));
        index.compact().unwrap();
        let all: RoaringBitmap = ids.iter().copied().collect();
        let mut expected: Vec<u32> = all.iter().collect();
        expected.sort_by_key(|&i| std::cmp::Reverse((date(i), i)));
        assert_eq!(order(&index, account, &all), Some(expected));
        // Another account's dates are its own.
        assert_eq!(order(&index, AccountId(8), &docs), None);
        // A document without a date: in a block with dates, or not.
        for missing in [3u32, 9000] {
            let mut with: RoaringBitmap = docs.clone();
            with.insert(missing);
            assert_eq!(order(&index, account, &with), None, "{missing}");
        }
        assert_eq!(order(&index, account, &RoaringBitmap::new()), Some(vec![]));
        // A rebuild clears them.
        index.clear_account(account, false).unwrap();
        assert_eq!(order(&index, account, &docs), None);
    }
}
