//! DKIM: key generation for `tern domain add`, the DNS records a domain
//! publishes, and signing of outgoing mail with the author domain's key
//! (mail-auth; Ed25519 by default, RSA-2048 on request).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{DkimSigner, Done};
use parking_lot::Mutex;
use tern_store::MailStore;
use tern_store::dkim::{DkimAlgorithm, DkimKey};

/// The selector `tern domain add` uses unless told otherwise.
pub const DEFAULT_SELECTOR: &str = "tern";

/// Header fields signed (when present; absent ones listed once are
/// "oversigned": adding them later breaks the signature).
const SIGNED_HEADERS: [&str; 12] = [
    "From",
    "Sender",
    "Reply-To",
    "Subject",
    "Date",
    "Message-ID",
    "To",
    "Cc",
    "MIME-Version",
    "Content-Type",
    "In-Reply-To",
    "References",
];

/// Generates a key for `selector`. RSA-2048 generation takes a moment
/// (pure Rust; ring cannot generate RSA keys).
pub fn generate(algorithm: DkimAlgorithm, selector: &str) -> Result<DkimKey, String> {
    let (private_key, public_key) = match algorithm {
        DkimAlgorithm::Ed25519Sha256 => {
            let pkcs8 = Ed25519Key::generate_pkcs8().map_err(|e| e.to_string())?;
            let key = Ed25519Key::from_pkcs8_der(&pkcs8).map_err(|e| e.to_string())?;
            (pkcs8, key.public_key())
        }
        DkimAlgorithm::RsaSha256 => {
            use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
            let key =
                rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(|e| e.to_string())?;
            let private = key.to_pkcs8_der().map_err(|e| e.to_string())?;
            let public = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|e| e.to_string())?;
            (private.as_bytes().to_vec(), public.as_bytes().to_vec())
        }
    };
    Ok(DkimKey {
        algorithm,
        selector: selector.to_owned(),
        private_key,
        public_key,
        created: tern_store::now(),
    })
}

/// One DNS record to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// The owner name, with the final dot.
    pub name: String,
    /// `MX` or `TXT`.
    pub kind: &'static str,
    /// The record data as a zone file writes it.
    pub value: String,
}

/// The DKIM TXT record's text (`v=DKIM1; k=...; p=...`).
pub fn dkim_txt(key: &DkimKey) -> String {
    let k = match key.algorithm {
        DkimAlgorithm::Ed25519Sha256 => "ed25519",
        DkimAlgorithm::RsaSha256 => "rsa",
    };
    format!(
        "v=DKIM1; k={k}; p={}",
        tern_store::compose::base64(&key.public_key)
    )
}

/// The records `domain` publishes so that mail from this server (named
/// `hostname`) is delivered to it and passes SPF, DKIM and DMARC.
pub fn dns_records(domain: &str, hostname: &str, key: Option<&DkimKey>) -> Vec<DnsRecord> {
    let mut out = vec![
        DnsRecord {
            name: format!("{domain}."),
            kind: "MX",
            value: format!("10 {hostname}."),
        },
        DnsRecord {
            name: format!("{domain}."),
            kind: "TXT",
            value: "\"v=spf1 mx -all\"".into(),
        },
    ];
    if let Some(key) = key {
        // TXT strings hold at most 255 bytes: split long keys.
        let txt = dkim_txt(key);
        let quoted: Vec<String> = txt
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
            .collect();
        out.push(DnsRecord {
            name: format!("{}._domainkey.{domain}.", key.selector),
            kind: "TXT",
            value: quoted.join(" "),
        });
    }
    out.push(DnsRecord {
        name: format!("_dmarc.{domain}."),
        kind: "TXT",
        value: format!("\"v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}\""),
    });
    out
}

/// The records as zone file lines.
pub fn zone_lines(records: &[DnsRecord]) -> String {
    records
        .iter()
        .map(|r| format!("{}\t3600\tIN\t{}\t{}\n", r.name, r.kind, r.value))
        .collect()
}

/// A domain's loaded signing key, ready to sign.
enum Signer {
    Ed25519(DkimSigner<Ed25519Key, Done>),
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
}

impl Signer {
    fn load(domain: &str, key: &DkimKey) -> Result<Signer, String> {
        Ok(match key.algorithm {
            DkimAlgorithm::Ed25519Sha256 => Signer::Ed25519(
                DkimSigner::from_key(
                    Ed25519Key::from_pkcs8_der(&key.private_key).map_err(|e| e.to_string())?,
                )
                .domain(domain)
                .selector(&key.selector)
                .headers(SIGNED_HEADERS),
            ),
            DkimAlgorithm::RsaSha256 => Signer::Rsa(
                DkimSigner::from_key(
                    RsaKey::<Sha256>::from_key_der(rustls::pki_types::PrivateKeyDer::Pkcs8(
                        key.private_key.clone().into(),
                    ))
                    .map_err(|e| e.to_string())?,
                )
                .domain(domain)
                .selector(&key.selector)
                .headers(SIGNED_HEADERS),
            ),
        })
    }

    fn sign(&self, message: &[u8]) -> Result<String, String> {
        let signature = match self {
            Signer::Ed25519(s) => s.sign(message),
            Signer::Rsa(s) => s.sign(message),
        };
        signature.map(|s| s.to_header()).map_err(|e| e.to_string())
    }
}

/// How long a loaded key (or its absence) is trusted before the store is
/// asked again: keys added with `tern domain add` while the server runs
/// are used within this time.
const KEY_TTL: Duration = Duration::from_secs(30);

/// A domain's signer (or its absence) and when it was loaded.
type Cached = (Instant, Option<Arc<Signer>>);

/// Signs outgoing mail with the keys of local domains, loading them from
/// the store on first use.
#[derive(Default)]
pub struct Signers {
    cache: Mutex<HashMap<String, Cached>>,
}

impl std::fmt::Debug for Signers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signers").finish_non_exhaustive()
    }
}

impl Signers {
    /// The `DKIM-Signature` header (with CRLF) for `message` with the key
    /// of `domain`; `Ok(None)` when the domain has no key. Blocks (store
    /// read on a cache miss; signing).
    pub fn sign(
        &self,
        store: &MailStore,
        domain: &str,
        message: &[u8],
    ) -> Result<Option<String>, String> {
        let domain = domain.to_ascii_lowercase();
        let cached = self
            .cache
            .lock()
            .get(&domain)
            .filter(|(at, _)| at.elapsed() < KEY_TTL)
            .map(|(_, s)| s.clone());
        let signer = match cached {
            Some(s) => s,
            None => {
                let stored = store
                    .kv()
                    .read(|tx| tern_store::dkim::get(tx, &domain))
                    .map_err(|e| e.to_string())?;
                let signer = match stored {
                    Some(key) => Some(Arc::new(Signer::load(&domain, &key)?)),
                    None => None,
                };
                self.cache
                    .lock()
                    .insert(domain.clone(), (Instant::now(), signer.clone()));
                signer
            }
        };
        match signer {
            Some(s) => s.sign(message).map(Some),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_keys_sign_and_publish() {
        let key = generate(DkimAlgorithm::Ed25519Sha256, "s1").unwrap();
        assert_eq!(key.public_key.len(), 32);
        let signer = Signer::load("example.test", &key).unwrap();
        let header = signer
            .sign(b"From: a@example.test\r\nTo: b@x.test\r\nSubject: hi\r\n\r\nbody\r\n")
            .unwrap();
        assert!(header.starts_with("DKIM-Signature: "), "{header}");
        assert!(header.contains("a=ed25519-sha256"));
        assert!(header.contains("d=example.test"));
        assert!(header.contains("s=s1"));
        let records = dns_records("example.test", "mx.example.test", Some(&key));
        let zone = zone_lines(&records);
        assert!(zone.contains("example.test.\t3600\tIN\tMX\t10 mx.example.test."));
        assert!(
            zone.contains("s1._domainkey.example.test.\t3600\tIN\tTXT\t\"v=DKIM1; k=ed25519; p=")
        );
        assert!(zone.contains("_dmarc.example.test."));
        assert!(zone.contains("v=spf1 mx -all"));
    }

    #[test]
    fn rsa_keys_sign_and_publish_spki() {
        let key = generate(DkimAlgorithm::RsaSha256, "r1").unwrap();
        // SubjectPublicKeyInfo of a 2048-bit key: about 294 bytes.
        assert!(
            (290..=300).contains(&key.public_key.len()),
            "{}",
            key.public_key.len()
        );
        let signer = Signer::load("example.test", &key).unwrap();
        let header = signer
            .sign(b"From: a@example.test\r\nSubject: hi\r\n\r\nbody\r\n")
            .unwrap();
        assert!(header.contains("a=rsa-sha256"), "{header}");
        assert!(dkim_txt(&key).starts_with("v=DKIM1; k=rsa; p=MIIBIjAN"));
    }
}
