//! DKIM signing keys of local domains (global family `0x14 ++ domain`).
//!
//! The store keeps the key material; it does not sign or generate keys
//! (tern-smtp does, with mail-auth). One key per domain: adding a key
//! replaces the previous one.

use serde::{Deserialize, Serialize};

use crate::error::{Result, decode, encode};
use crate::kv::{KeyRange, Kv, RangeOptions, Transaction};

const DKIM: u8 = 0x14;

/// A DKIM signing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DkimAlgorithm {
    /// `ed25519-sha256` (RFC 8463).
    Ed25519Sha256,
    /// `rsa-sha256` (RFC 6376), 2048-bit keys.
    RsaSha256,
}

/// A domain's DKIM key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimKey {
    /// The algorithm.
    pub algorithm: DkimAlgorithm,
    /// The selector (`s=`): the key is published at
    /// `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// The private key, PKCS#8 DER.
    pub private_key: Vec<u8>,
    /// The public key as published in `p=` (before base64): the raw 32
    /// bytes for Ed25519, SubjectPublicKeyInfo DER for RSA.
    pub public_key: Vec<u8>,
    /// When it was made (unix seconds).
    pub created: i64,
}

/// `0x14 ++ domain (lowercase)` -> record [`DkimKey`].
pub fn key(domain: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(domain.len() + 1);
    k.push(DKIM);
    k.extend_from_slice(domain.to_ascii_lowercase().as_bytes());
    k
}

/// The DKIM key of `domain`.
pub fn get(tx: &mut Transaction<'_>, domain: &str) -> Result<Option<DkimKey>> {
    let k = key(domain);
    tx.get(&k)?.map(|v| decode(&k, &v)).transpose()
}

/// Stores (or replaces) the DKIM key of `domain`.
pub fn put(kv: &Kv, domain: &str, dkim: &DkimKey) -> Result<()> {
    kv.transact(|tx| -> Result<()> {
        tx.set(&key(domain), &encode(dkim))?;
        Ok(())
    })
}

/// Every domain's key, by domain.
pub fn list(kv: &Kv) -> Result<Vec<(String, DkimKey)>> {
    kv.read(|tx| {
        tx.range(&KeyRange::prefix(&[DKIM]), RangeOptions::default())?
            .into_iter()
            .map(|(k, v)| {
                Ok((
                    String::from_utf8_lossy(&k[1..]).into_owned(),
                    decode(&k, &v)?,
                ))
            })
            .collect()
    })
}
