//! JMAP ids and states as strings.
//!
//! Ids are short opaque strings: a one-letter prefix naming the kind, then
//! the document id in lowercase base 32 (`M3`, `E1a`, `T0`). The prefix
//! makes an email id handed to Mailbox/get fail to parse instead of naming
//! a wrong object. States are the change id in decimal.

use tern_store::{AccountId, BlobHash, DocumentId};

const DIGITS: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";

fn base32(mut n: u64) -> String {
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 32) as usize]);
        n /= 32;
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

fn parse_base32(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 13 || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    let mut n: u64 = 0;
    for c in s.bytes() {
        let d = DIGITS.iter().position(|&x| x == c)? as u64;
        n = n.checked_mul(32)?.checked_add(d)?;
    }
    Some(n)
}

/// Kinds of id, by prefix letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `A`: account.
    Account,
    /// `M`: mailbox.
    Mailbox,
    /// `E`: email.
    Email,
    /// `T`: thread.
    Thread,
    /// `I`: identity.
    Identity,
    /// `S`: email submission.
    Submission,
    /// `P`: push subscription.
    PushSubscription,
}

impl Kind {
    fn prefix(self) -> char {
        match self {
            Kind::Account => 'A',
            Kind::Mailbox => 'M',
            Kind::Email => 'E',
            Kind::Thread => 'T',
            Kind::Identity => 'I',
            Kind::Submission => 'S',
            Kind::PushSubscription => 'P',
        }
    }
}

/// The id string of a document.
pub fn encode(kind: Kind, id: DocumentId) -> String {
    format!("{}{}", kind.prefix(), base32(id as u64))
}

/// The document id named by `s`, if it is an id of `kind`.
pub fn decode(kind: Kind, s: &str) -> Option<DocumentId> {
    let rest = s.strip_prefix(kind.prefix())?;
    parse_base32(rest).and_then(|n| u32::try_from(n).ok())
}

/// The JMAP accountId of an account.
pub fn account_id(account: AccountId) -> String {
    encode(Kind::Account, account.0)
}

/// The account named by an accountId string.
pub fn parse_account_id(s: &str) -> Option<AccountId> {
    decode(Kind::Account, s).map(AccountId)
}

/// A state string.
pub fn state(change: u64) -> String {
    change.to_string()
}

/// The change id of a state string.
pub fn parse_state(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A blobId for a whole stored blob: `B` + hex SHA-256.
pub fn blob_id(hash: &BlobHash) -> String {
    format!("B{}", hash.to_hex())
}

/// The blob named by a whole-blob blobId.
pub fn parse_blob_id(s: &str) -> Option<BlobHash> {
    BlobHash::from_hex(s.strip_prefix('B')?)
}

/// A blobId for one MIME part of a stored message: `P` + hex SHA-256 of
/// the raw message + `_` + the part's index in the email's body structure
/// (`EmailDetail::parts`, deterministic for the same bytes).
pub fn part_blob_id(hash: &BlobHash, part: u32) -> String {
    format!("P{}_{}", hash.to_hex(), base32(part as u64))
}

/// The message blob and part index named by a part blobId.
pub fn parse_part_blob_id(s: &str) -> Option<(BlobHash, u32)> {
    let (hash, part) = s.strip_prefix('P')?.split_once('_')?;
    Some((
        BlobHash::from_hex(hash)?,
        u32::try_from(parse_base32(part)?).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_reject_other_kinds() {
        for n in [0u32, 1, 31, 32, 1000, u32::MAX] {
            let s = encode(Kind::Email, n);
            assert_eq!(decode(Kind::Email, &s), Some(n));
            assert_eq!(decode(Kind::Mailbox, &s), None);
        }
        assert_eq!(encode(Kind::Mailbox, 33), "M11");
        assert_eq!(decode(Kind::Email, "E"), None);
        assert_eq!(
            decode(Kind::Email, "E01"),
            None,
            "no leading zeros: one spelling per id"
        );
        assert_eq!(decode(Kind::Email, "EZZ"), None);
        assert_eq!(decode(Kind::Email, "Evvvvvvvvvvvvv"), None);
        assert_eq!(parse_state("12"), Some(12));
        assert_eq!(parse_state("-1"), None);
    }
}
