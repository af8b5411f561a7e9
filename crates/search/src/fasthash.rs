//! A fast hasher for the in-memory term maps of the indexing path (the
//! standard SipHash took a fifth of the analysis time). It mixes eight
//! bytes at a time (rotate, xor, multiply), starting from a per-process
//! random seed, so collisions cannot be prepared in advance, and folds
//! the high bits into the low ones at the end (tables index by the low
//! bits).

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::OnceLock;

const K: u64 = 0x517c_c1b7_2722_0a95;

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish()
            | 1
    })
}

/// The hasher.
#[derive(Debug, Clone, Copy)]
pub struct FastHasher {
    hash: u64,
}

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(5) ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The last multiply leaves the low bits depending only on the low
        // bits of the last word, and hash tables take their bucket from
        // the low bits: fold the high bits down (a splitmix64-style
        // finalizer), or short keys sharing their first bytes collide.
        let mut h = self.hash;
        h ^= h >> 32;
        h = h.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h ^ (h >> 29)
    }
}

/// Builds [`FastHasher`]s from the process seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct FastState;

impl BuildHasher for FastState {
    type Hasher = FastHasher;

    fn build_hasher(&self) -> FastHasher {
        FastHasher { hash: seed() }
    }
}

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, FastState>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguishes_lengths_and_contents() {
        let h = |b: &[u8]| {
            let mut x = FastState.build_hasher();
            x.write(b);
            x.finish()
        };
        assert_ne!(h(b"abc"), h(b"abc\0"));
        assert_ne!(h(b"abcdefgh"), h(b"abcdefgi"));
        assert_eq!(h(b"term"), h(b"term"));
        let mut m: FastMap<Box<[u8]>, u32> = FastMap::default();
        for i in 0..1000u32 {
            m.insert(i.to_string().into_bytes().into(), i);
        }
        assert_eq!(m.get(&b"999"[..]), Some(&999));
    }

    #[test]
    fn low_bits_depend_on_every_byte() {
        // Keys alike in their first bytes (a field byte and a common
        // prefix) must spread over the buckets a table takes from the
        // low bits.
        let low = |b: &[u8]| {
            let mut x = FastState.build_hasher();
            x.write(b);
            x.finish() & 0xFFFF
        };
        let buckets: std::collections::HashSet<u64> = (0..1000u32)
            .map(|i| low(format!("\u{6}th{i:04}").as_bytes()))
            .collect();
        assert!(buckets.len() > 900, "{} distinct buckets", buckets.len());
    }
}
