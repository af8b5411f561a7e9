//! The posting-list value format and the merge operators that append to
//! it (see `docs/search-format.md`).
//!
//! A value holds the documents of one (account, term, field) and, aligned
//! with them, each document's word positions:
//!
//! ```text
//! value     = docs positions
//! docs      = 01 varint(count) varint(first) varint(delta)*     small list
//!           | 02 varint(len) roaring-portable-bytes              roaring bitmap
//! positions = entry*                          one per document, in document order
//! entry     = varint(p << 1)                                     one position p
//!           | varint(first << 1 | 1) varint(n - 1) varint(delta)*(n - 1)
//!                                                                n >= 2 positions
//!           | varint(1) varint(0)                                no positions
//! ```
//!
//! The indexer never reads a value to extend it: it writes one merge
//! operand per (term, field) and batch, in the same format, and RocksDB
//! folds operands together with [`merge`] on reads and compactions. A
//! document that appears in several operands (the indexer re-applied a
//! batch after a crash) keeps the entry of the last operand, so applying a
//! batch twice changes nothing.

use std::collections::BTreeMap;

use roaring::RoaringBitmap;

const TAG_LIST: u8 = 1;
const TAG_ROARING: u8 = 2;
/// Lists up to this long are written as varints (smaller than a bitmap).
const SMALL_LIST: usize = 12;

/// Appends `v` as a LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a LEB128 varint at `*at`, advancing it.
pub fn get_varint(buf: &[u8], at: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    let mut shift = 0;
    loop {
        let b = *buf.get(*at)?;
        *at += 1;
        if shift > 28 {
            return None;
        }
        v |= ((b & 0x7F) as u32) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
    }
}

/// Appends one document's positions entry (`positions` ascending):
///
/// - one position `p`: `varint(p << 1)`;
/// - `n >= 2` positions: `varint(first << 1 | 1) varint(n - 1)` then the
///   `n - 1` deltas;
/// - none: `varint(1) varint(0)` (the `n >= 2` form with no deltas).
///
/// Most terms occur once in a document: they cost one varint.
pub fn put_positions(out: &mut Vec<u8>, positions: &[u32]) {
    match positions {
        [p] => put_varint(out, p << 1),
        [] => {
            put_varint(out, 1);
            put_varint(out, 0);
        }
        [first, rest @ ..] => {
            put_varint(out, (first << 1) | 1);
            put_varint(out, rest.len() as u32);
            let mut prev = *first;
            for &p in rest {
                put_varint(out, p - prev);
                prev = p;
            }
        }
    }
}

/// Skips one positions entry at `*at`, returning its byte range.
fn skip_positions(buf: &[u8], at: &mut usize) -> Option<std::ops::Range<usize>> {
    let start = *at;
    let head = get_varint(buf, at)?;
    if head & 1 == 1 {
        let more = get_varint(buf, at)?;
        for _ in 0..more {
            get_varint(buf, at)?;
        }
    }
    Some(start..*at)
}

/// Reads one positions entry at `*at` into `out` (absolute positions).
fn read_positions(buf: &[u8], at: &mut usize, out: &mut Vec<u32>) -> Option<()> {
    out.clear();
    let head = get_varint(buf, at)?;
    if head & 1 == 0 {
        out.push(head >> 1);
        return Some(());
    }
    let more = get_varint(buf, at)?;
    if more == 0 {
        return Some(());
    }
    let mut p = head >> 1;
    out.push(p);
    for _ in 0..more {
        p = p.checked_add(get_varint(buf, at)?)?;
        out.push(p);
    }
    Some(())
}

/// Encodes a value from sorted, unique document ids and their positions
/// entries (already encoded, in the same order).
pub fn encode(docs: &[u32], positions: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(docs.len() * 3 + positions.len() + 8);
    encode_docs(&mut out, docs);
    out.extend_from_slice(positions);
    out
}

/// The documents part of a value from sorted, unique ids: a small list
/// or a bitmap.
fn encode_docs(out: &mut Vec<u8>, docs: &[u32]) {
    if docs.len() <= SMALL_LIST {
        put_list(out, docs.len(), docs.iter().copied());
    } else {
        let bitmap =
            RoaringBitmap::from_sorted_iter(docs.iter().copied()).expect("documents are sorted");
        encode_bitmap(out, &bitmap);
    }
}

/// A small list: its tag, its length and the ids as deltas.
fn put_list(out: &mut Vec<u8>, len: usize, docs: impl Iterator<Item = u32>) {
    out.push(TAG_LIST);
    put_varint(out, len as u32);
    let mut prev = 0;
    for (i, d) in docs.enumerate() {
        put_varint(out, if i == 0 { d } else { d - prev });
        prev = d;
    }
}

fn encode_bitmap(out: &mut Vec<u8>, bitmap: &RoaringBitmap) {
    if bitmap.len() as usize <= SMALL_LIST {
        put_list(out, bitmap.len() as usize, bitmap.iter());
        return;
    }
    out.push(TAG_ROARING);
    put_varint(out, bitmap.serialized_size() as u32);
    bitmap
        .serialize_into(&mut *out)
        .expect("writing to a Vec cannot fail");
}

/// A decoded value: the documents, and the positions section.
#[derive(Debug, Clone)]
pub struct Postings<'a> {
    /// The documents.
    pub docs: RoaringBitmap,
    positions: &'a [u8],
}

/// Decodes the documents of a value (what a one-term query needs).
pub fn decode(value: &[u8]) -> Option<Postings<'_>> {
    let (&tag, rest) = value.split_first()?;
    let mut at = 0;
    match tag {
        TAG_LIST => {
            let n = get_varint(rest, &mut at)?;
            let mut docs = Vec::with_capacity(n as usize);
            let mut d = 0u32;
            for i in 0..n {
                let delta = get_varint(rest, &mut at)?;
                d = if i == 0 { delta } else { d.checked_add(delta)? };
                docs.push(d);
            }
            let docs = RoaringBitmap::from_sorted_iter(docs).ok()?;
            Some(Postings {
                docs,
                positions: &rest[at..],
            })
        }
        TAG_ROARING => {
            let len = get_varint(rest, &mut at)? as usize;
            let bytes = rest.get(at..at.checked_add(len)?)?;
            let docs = RoaringBitmap::deserialize_from(bytes).ok()?;
            Some(Postings {
                docs,
                positions: &rest[at + len..],
            })
        }
        _ => None,
    }
}

impl<'a> Postings<'a> {
    /// Walks documents and positions together.
    pub fn cursor(&self) -> PositionCursor<'_, 'a> {
        PositionCursor {
            docs: self.docs.iter().peekable(),
            buf: self.positions,
            at: 0,
        }
    }

    /// Each document with the byte range of its positions entry.
    fn entries(&self) -> Option<Vec<(u32, &'a [u8])>> {
        let mut at = 0;
        let mut out = Vec::with_capacity(self.docs.len() as usize);
        for d in &self.docs {
            let r = skip_positions(self.positions, &mut at)?;
            out.push((d, &self.positions[r]));
        }
        Some(out)
    }
}

/// Reads positions of ascending documents from a value.
pub struct PositionCursor<'p, 'a> {
    docs: std::iter::Peekable<roaring::bitmap::Iter<'p>>,
    buf: &'a [u8],
    at: usize,
}

impl std::fmt::Debug for PositionCursor<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PositionCursor")
            .field("at", &self.at)
            .finish_non_exhaustive()
    }
}

impl PositionCursor<'_, '_> {
    /// The positions of `doc` into `out`; false if the value does not hold
    /// `doc`. Calls must ask for ascending documents.
    pub fn seek(&mut self, doc: u32, out: &mut Vec<u32>) -> bool {
        out.clear();
        while let Some(&d) = self.docs.peek() {
            if d > doc {
                return false;
            }
            self.docs.next();
            if d == doc {
                return read_positions(self.buf, &mut self.at, out).is_some();
            }
            if skip_positions(self.buf, &mut self.at).is_none() {
                return false;
            }
        }
        false
    }
}

/// Builds one (term, field) operand of a batch: documents must come in
/// ascending order.
#[derive(Debug, Default, Clone)]
pub struct PostingBuilder {
    docs: Vec<u32>,
    positions: Vec<u8>,
}

impl PostingBuilder {
    /// Adds `doc` with its positions (ascending).
    pub fn push(&mut self, doc: u32, positions: &[u32]) {
        debug_assert!(self.docs.last().is_none_or(|&l| l < doc));
        self.docs.push(doc);
        put_positions(&mut self.positions, positions);
    }

    /// Appends a builder whose documents all come after this one's.
    pub fn append(&mut self, other: PostingBuilder) {
        debug_assert!(match (self.docs.last(), other.docs.first()) {
            (Some(a), Some(b)) => a < b,
            _ => true,
        });
        self.docs.extend(other.docs);
        self.positions.extend(other.positions);
    }

    /// The encoded operand.
    pub fn encode(&self) -> Vec<u8> {
        encode(&self.docs, &self.positions)
    }
}

/// Appends to `out` the operand of `parts`, each (documents, their
/// positions entries), one after the other (each part's documents after
/// the previous part's): the bytes [`encode`] gives for their
/// concatenation.
pub fn encode_parts(out: &mut Vec<u8>, parts: &[(&[u32], &[u8])]) {
    let n: usize = parts.iter().map(|p| p.0.len()).sum();
    let docs = || parts.iter().flat_map(|p| p.0.iter().copied());
    if n <= SMALL_LIST {
        out.push(TAG_LIST);
        put_varint(out, n as u32);
        let mut prev = 0;
        for (i, d) in docs().enumerate() {
            put_varint(out, if i == 0 { d } else { d - prev });
            prev = d;
        }
    } else {
        let bitmap = RoaringBitmap::from_sorted_iter(docs()).expect("documents are sorted");
        encode_bitmap(out, &bitmap);
    }
    for p in parts {
        out.extend_from_slice(p.1);
    }
}

/// The merge operator of the postings column family (full and partial
/// merge alike): folds `existing` and the operands, in order, into one
/// value. `None` (a corrupt input) makes RocksDB report corruption.
pub fn merge<'a>(
    existing: Option<&'a [u8]>,
    operands: impl Iterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    let inputs: Vec<&[u8]> = existing.into_iter().chain(operands).collect();
    if inputs.len() == 1 {
        return Some(inputs[0].to_vec());
    }
    if let Some(out) = merge_lists(&inputs) {
        return Some(out);
    }
    merge_general(&inputs)
}

/// [`merge`] without its fast path.
fn merge_general(inputs: &[&[u8]]) -> Option<Vec<u8>> {
    let decoded: Vec<Postings<'_>> = inputs.iter().map(|v| decode(v)).collect::<Option<_>>()?;
    // Fast path: each input's documents all come after the previous ones
    // (new mail gets higher ids): union the bitmaps, concatenate positions.
    let mut max: Option<u32> = None;
    let mut appends = true;
    for p in &decoded {
        if let (Some(m), Some(min)) = (max, p.docs.min())
            && min <= m
        {
            appends = false;
            break;
        }
        max = p.docs.max().or(max);
    }
    let mut out = Vec::new();
    if appends {
        let mut docs = RoaringBitmap::new();
        for p in &decoded {
            docs |= &p.docs;
        }
        encode_bitmap(&mut out, &docs);
        for p in &decoded {
            out.extend_from_slice(p.positions);
        }
        return Some(out);
    }
    // General case: the last entry of a document wins.
    let mut by_doc: BTreeMap<u32, &[u8]> = BTreeMap::new();
    for p in &decoded {
        for (d, entry) in p.entries()? {
            by_doc.insert(d, entry);
        }
    }
    let docs = RoaringBitmap::from_sorted_iter(by_doc.keys().copied()).ok()?;
    encode_bitmap(&mut out, &docs);
    for entry in by_doc.values() {
        out.extend_from_slice(entry);
    }
    Some(out)
}

/// [`merge`]'s fast path, for inputs that are all small lists whose
/// documents each follow the previous input's (rare terms, new mail):
/// the same bytes as the general path, without bitmaps in between.
/// `None` when the inputs are not like that.
fn merge_lists(inputs: &[&[u8]]) -> Option<Vec<u8>> {
    let mut docs: Vec<u32> = Vec::with_capacity(SMALL_LIST * 2);
    let mut positions: Vec<&[u8]> = Vec::with_capacity(inputs.len());
    for v in inputs {
        let (&TAG_LIST, rest) = v.split_first()? else {
            return None;
        };
        let mut at = 0;
        let n = get_varint(rest, &mut at)?;
        let mut d = 0u32;
        for i in 0..n {
            let delta = get_varint(rest, &mut at)?;
            d = if i == 0 { delta } else { d.checked_add(delta)? };
            if (i == 0 && docs.last().is_some_and(|&l| d <= l)) || (i > 0 && delta == 0) {
                return None;
            }
            docs.push(d);
        }
        positions.push(&rest[at..]);
    }
    let mut out =
        Vec::with_capacity(docs.len() * 3 + positions.iter().map(|p| p.len()).sum::<usize>());
    // Strictly ascending: checked while decoding above.
    encode_docs(&mut out, &docs);
    for p in positions {
        out.extend_from_slice(p);
    }
    Some(out)
}

/// Serializes a bitmap as a value of the meta column family.
pub fn bitmap_bytes(bitmap: &RoaringBitmap) -> Vec<u8> {
    let mut out = Vec::with_capacity(bitmap.serialized_size());
    bitmap
        .serialize_into(&mut out)
        .expect("writing to a Vec cannot fail");
    out
}

/// Union of serialized bitmaps.
pub fn merge_bitmaps<'a>(
    existing: Option<&'a [u8]>,
    operands: impl Iterator<Item = &'a [u8]>,
) -> Option<Vec<u8>> {
    let mut out = RoaringBitmap::new();
    for v in existing.into_iter().chain(operands) {
        out |= RoaringBitmap::deserialize_from(v).ok()?;
    }
    Some(bitmap_bytes(&out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(entries: &[(u32, &[u32])]) -> Vec<u8> {
        let mut b = PostingBuilder::default();
        for (d, p) in entries {
            b.push(*d, p);
        }
        b.encode()
    }

    fn read(v: &[u8]) -> Vec<(u32, Vec<u32>)> {
        let p = decode(v).unwrap();
        let mut c = p.cursor();
        p.docs
            .iter()
            .map(|d| {
                let mut out = Vec::new();
                assert!(c.seek(d, &mut out));
                (d, out)
            })
            .collect()
    }

    #[test]
    fn round_trips_small_and_large() {
        let small: Vec<(u32, Vec<u32>)> = vec![(3, vec![0, 5]), (9, vec![2]), (300, vec![])];
        let v = value(&small.iter().map(|(d, p)| (*d, &p[..])).collect::<Vec<_>>());
        assert_eq!(v[0], TAG_LIST);
        assert_eq!(read(&v), small);
        let large: Vec<(u32, Vec<u32>)> = (0..100).map(|i| (i * 7, vec![i, i + 300])).collect();
        let v = value(&large.iter().map(|(d, p)| (*d, &p[..])).collect::<Vec<_>>());
        assert_eq!(v[0], TAG_ROARING);
        assert_eq!(read(&v), large);
    }

    #[test]
    fn parts_encode_as_their_concatenation() {
        let build = |e: &[(u32, Vec<u32>)]| {
            let mut p = PostingBuilder::default();
            for (d, pos) in e {
                p.push(*d, pos);
            }
            p
        };
        // Totals on both sides of the small-list limit, split anywhere.
        for n in [1u32, 3, 12, 13, 40] {
            let all: Vec<(u32, Vec<u32>)> = (0..n).map(|i| (i * 3 + 1, vec![i, i + 9])).collect();
            for split in 0..=all.len() {
                let (a, b) = all.split_at(split);
                let (pa, pb) = (build(a), build(b));
                let mut out = Vec::new();
                encode_parts(
                    &mut out,
                    &[(&pa.docs, &pa.positions), (&pb.docs, &pb.positions)],
                );
                assert_eq!(out, build(&all).encode(), "{n} split at {split}");
                assert_eq!(read(&out), all);
            }
        }
    }

    #[test]
    fn merge_appends_and_replaces_duplicates() {
        let a = value(&[(1, &[1]), (5, &[2, 3])]);
        let b = value(&[(7, &[4])]);
        let merged = merge(Some(&a), [&b[..]].into_iter()).unwrap();
        assert_eq!(
            read(&merged),
            vec![(1, vec![1]), (5, vec![2, 3]), (7, vec![4])]
        );
        // Re-applying an operand (after a crash) changes nothing.
        let again = merge(Some(&merged), [&b[..], &a[..]].into_iter()).unwrap();
        assert_eq!(read(&again), read(&merged));
        // Interleaved documents.
        let c = value(&[(3, &[9]), (6, &[8])]);
        let merged = merge(None, [&a[..], &c[..]].into_iter()).unwrap();
        assert_eq!(
            read(&merged),
            vec![(1, vec![1]), (3, vec![9]), (5, vec![2, 3]), (6, vec![8])]
        );
    }

    #[test]
    fn list_fast_path_merges_as_the_general_path() {
        // Operands of 1 to 5 small lists, ascending across operands or
        // not, totals on both sides of the small-list limit.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |m: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % m
        };
        let mut fast = 0;
        for _ in 0..2000 {
            let mut doc = next(3) as u32;
            let inputs: Vec<Vec<u8>> = (0..1 + next(5))
                .map(|_| {
                    if next(6) == 0 {
                        doc = doc.saturating_sub(next(8) as u32);
                    }
                    let entries: Vec<(u32, Vec<u32>)> = (0..1 + next(SMALL_LIST as u64))
                        .map(|_| {
                            doc += 1 + next(70_000) as u32;
                            (doc, (0..next(3) as u32).map(|p| p * 2).collect())
                        })
                        .collect();
                    let refs: Vec<(u32, &[u32])> =
                        entries.iter().map(|(d, p)| (*d, &p[..])).collect();
                    value(&refs)
                })
                .collect();
            let inputs: Vec<&[u8]> = inputs.iter().map(Vec::as_slice).collect();
            if let Some(out) = merge_lists(&inputs) {
                fast += 1;
                assert_eq!(Some(out), merge_general(&inputs));
            }
        }
        assert!(fast > 1000, "{fast}");
    }

    #[test]
    fn seek_skips_missing_docs() {
        let v = value(&[(1, &[1]), (5, &[2, 3]), (8, &[0])]);
        let p = decode(&v).unwrap();
        let mut c = p.cursor();
        let mut out = Vec::new();
        assert!(!c.seek(4, &mut out));
        assert!(c.seek(5, &mut out));
        assert_eq!(out, [2, 3]);
        assert!(!c.seek(6, &mut out));
        assert!(c.seek(8, &mut out));
        assert_eq!(out, [0]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(decode(&[]).is_none());
        assert!(decode(&[9, 1, 2]).is_none());
        assert!(decode(&[TAG_ROARING, 50, 1]).is_none());
        assert!(merge(Some(&[7u8][..]), [&[1u8][..]].into_iter()).is_none());
    }
}
