//! Domains, accounts, addresses, passwords and app tokens.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, decode, encode};
use crate::keys::{self, family};
use crate::kv::{KeyRange, RangeOptions, Transaction};
use crate::mailbox;
use crate::types::{AccountId, now};

/// Default quota for new accounts: 10 GiB.
pub const DEFAULT_QUOTA: u64 = 10 << 30;

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The login and primary address (lowercase).
    pub address: String,
    /// Display name.
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Quota in bytes.
    pub quota_bytes: u64,
    /// Creation time, unix seconds.
    pub created: i64,
    /// Additional addresses delivering to this account.
    pub aliases: Vec<String>,
}

/// A summary for listings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountInfo {
    /// The id.
    pub id: AccountId,
    /// The login and primary address.
    pub address: String,
    /// Quota in bytes.
    pub quota_bytes: u64,
    /// Bytes used by stored messages.
    pub used_bytes: u64,
}

/// A stored domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Domain {
    /// Creation time, unix seconds.
    pub created: i64,
}

/// A stored app token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// The account it authenticates.
    pub account: AccountId,
    /// A label chosen at creation.
    pub label: String,
    /// Creation time, unix seconds.
    pub created: i64,
}

/// Lowercases and checks an address: `local@domain`, no spaces or control
/// characters.
pub fn normalize_address(address: &str) -> Result<String> {
    let a = address.trim().to_lowercase();
    let valid = a.len() <= 254
        && a.split_once('@').is_some_and(|(l, d)| {
            !l.is_empty() && !d.is_empty() && !d.contains('@') && is_domain(d)
        })
        && !a
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
    if valid {
        Ok(a)
    } else {
        Err(Error::Invalid(format!("not an address: {address:?}")))
    }
}

/// Lowercases and checks a domain name.
pub fn normalize_domain(domain: &str) -> Result<String> {
    let d = domain.trim().trim_end_matches('.').to_lowercase();
    if is_domain(&d) {
        Ok(d)
    } else {
        Err(Error::Invalid(format!("not a domain: {domain:?}")))
    }
}

fn is_domain(d: &str) -> bool {
    d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '-' || c == '_')
        })
}

/// Hashes a password with Argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String> {
    use argon2::password_hash::{PasswordHasher, SaltString, rand_core::OsRng};
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Password(e.to_string()))
}

/// Checks a password against a stored hash.
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

fn id_value(id: AccountId) -> [u8; 4] {
    id.0.to_be_bytes()
}

fn decode_id(key: &[u8], v: &[u8]) -> Result<AccountId> {
    v.try_into()
        .map(|b| AccountId(u32::from_be_bytes(b)))
        .map_err(|_| crate::kv::Error::corrupt(key, "expected account id").into())
}

/// Adds a local domain.
pub fn add_domain(tx: &mut Transaction<'_>, domain: &str) -> Result<()> {
    let key = keys::domain(domain);
    if tx.get(&key)?.is_some() {
        return Err(Error::AlreadyExists(format!("domain {domain}")));
    }
    tx.set(&key, &encode(&Domain { created: now() }))?;
    Ok(())
}

/// Whether `domain` (normalized) is local.
pub fn is_local_domain(tx: &mut Transaction<'_>, domain: &str) -> Result<bool> {
    Ok(tx.get(&keys::domain(domain))?.is_some())
}

/// All local domains, sorted.
pub fn list_domains(tx: &mut Transaction<'_>) -> Result<Vec<String>> {
    let range = keys::domains();
    Ok(tx
        .range(&range, RangeOptions::default())?
        .into_iter()
        .map(|(k, _)| String::from_utf8_lossy(&k[1..]).into_owned())
        .collect())
}

/// Creates an account with its default mailboxes. `address` is normalized,
/// its domain must be local.
pub fn create_account(
    tx: &mut Transaction<'_>,
    address: &str,
    password_hash: &str,
    quota_bytes: u64,
) -> Result<AccountId> {
    let (_, domain) = address.split_once('@').expect("normalized address");
    if !is_local_domain(tx, domain)? {
        return Err(Error::UnknownDomain(domain.to_string()));
    }
    if tx.get(&keys::login(address))?.is_some() || tx.get(&keys::address(address))?.is_some() {
        return Err(Error::AlreadyExists(format!("account {address}")));
    }
    let next = tx.get_counter(keys::NEXT_ACCOUNT_ID)?.max(1);
    let id =
        AccountId(u32::try_from(next).map_err(|_| Error::Invalid("account ids exhausted".into()))?);
    tx.set(keys::NEXT_ACCOUNT_ID, &(next + 1).to_le_bytes())?;
    tx.set(&keys::login(address), &id_value(id))?;
    tx.set(&keys::address(address), &id_value(id))?;
    let account = Account {
        address: address.to_string(),
        name: address.split('@').next().unwrap_or_default().to_string(),
        password_hash: password_hash.to_string(),
        quota_bytes,
        created: now(),
        aliases: Vec::new(),
    };
    tx.set(&keys::acct(id, family::RECORD).build(), &encode(&account))?;
    let mut w = crate::changes::Writer::begin(tx, id)?;
    mailbox::create_defaults(&mut w)?;
    w.finish()?;
    Ok(id)
}

/// The account record.
pub fn get_account(tx: &mut Transaction<'_>, id: AccountId) -> Result<Option<Account>> {
    let key = keys::acct(id, family::RECORD).build();
    tx.get(&key)?.map(|v| decode(&key, &v)).transpose()
}

/// Replaces the account record.
pub fn put_account(tx: &mut Transaction<'_>, id: AccountId, account: &Account) -> Result<()> {
    tx.set(&keys::acct(id, family::RECORD).build(), &encode(account))?;
    Ok(())
}

/// The account whose login is `address` (normalized).
pub fn lookup_login(tx: &mut Transaction<'_>, address: &str) -> Result<Option<AccountId>> {
    let key = keys::login(address);
    tx.get(&key)?.map(|v| decode_id(&key, &v)).transpose()
}

/// The account that `address` (normalized) delivers to.
pub fn lookup_address(tx: &mut Transaction<'_>, address: &str) -> Result<Option<AccountId>> {
    let key = keys::address(address);
    tx.get(&key)?.map(|v| decode_id(&key, &v)).transpose()
}

/// Every account, by login.
pub fn list_accounts(tx: &mut Transaction<'_>) -> Result<Vec<AccountInfo>> {
    let mut out = Vec::new();
    for (k, v) in tx.range(&keys::logins(), RangeOptions::default())? {
        let id = decode_id(&k, &v)?;
        let Some(account) = get_account(tx, id)? else {
            continue;
        };
        out.push(AccountInfo {
            id,
            address: account.address,
            quota_bytes: account.quota_bytes,
            used_bytes: used_bytes(tx, id)?,
        });
    }
    Ok(out)
}

/// Bytes used by the account's messages.
pub fn used_bytes(tx: &mut Transaction<'_>, id: AccountId) -> Result<u64> {
    Ok(tx
        .get_counter(&keys::acct(id, family::USED_BYTES).build())?
        .max(0) as u64)
}

/// Removes an account's login, addresses and tokens and then all of its
/// data. Blob links are dropped so the collector can free unshared blobs.
/// Runs as several transactions when the account is large (each step
/// idempotent).
pub fn remove_account_login(tx: &mut Transaction<'_>, address: &str) -> Result<AccountId> {
    let id =
        lookup_login(tx, address)?.ok_or_else(|| Error::NotFound(format!("account {address}")))?;
    let account = get_account(tx, id)?;
    tx.clear(&keys::login(address))?;
    tx.clear(&keys::address(address))?;
    if let Some(account) = account {
        for alias in &account.aliases {
            tx.clear(&keys::address(alias))?;
        }
    }
    for (k, v) in tx.range(&keys::tokens(), RangeOptions::default())? {
        let token: Token = decode(&k, &v)?;
        if token.account == id {
            tx.clear(&k)?;
        }
    }
    // Mark the record removed; the data itself is cleared in batches.
    tx.clear(&keys::acct(id, family::RECORD).build())?;
    // The search indexer, finding no such account, clears its index.
    tx.set(&keys::index_dirty(id), &[])?;
    Ok(id)
}

/// Clears up to `batch` keys of a removed account's data; returns whether
/// anything is left. Blob links held by the account are released.
pub fn purge_account_batch(tx: &mut Transaction<'_>, id: AccountId, batch: usize) -> Result<bool> {
    let refs = keys::acct(id, family::BLOB_REF).prefix_range();
    let held = tx.range(&refs, RangeOptions::limit(batch))?;
    if !held.is_empty() {
        for (k, _) in &held {
            let hash = crate::types::BlobHash(k[k.len() - 32..].try_into().expect("32 bytes"));
            tx.clear(&keys::blob_link(&hash, id))?;
            tx.clear(k)?;
        }
        return Ok(true);
    }
    let range = keys::account_range(id);
    let page = tx.range(&range, RangeOptions::limit(batch))?;
    if page.is_empty() {
        return Ok(false);
    }
    let last = &page[page.len() - 1].0;
    tx.clear_range(&KeyRange::new(range.begin, KeyRange::single(last).end))?;
    Ok(page.len() == batch)
}

/// Bytes of a token's SHA-256 that make its public id (hex, 12 digits):
/// what `list` shows and `revoke` takes. The secret is never stored.
pub const TOKEN_ID_BYTES: usize = 6;
/// Longest token label, in bytes.
pub const MAX_TOKEN_LABEL: usize = 200;
/// What every token secret starts with (so leaked ones are recognisable).
pub const TOKEN_SECRET_PREFIX: &str = "tern_";

/// A token as listed: public id, owner and label, never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    /// Public id: the first [`TOKEN_ID_BYTES`] of the secret's SHA-256, hex.
    pub id: String,
    /// The account it authenticates.
    pub account: AccountId,
    /// The account's login (empty if the account is gone).
    pub address: String,
    /// The label given at creation.
    pub label: String,
    /// Creation time, unix seconds.
    pub created: i64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The public id of the token whose secret hashes to `hash`.
pub fn token_id(hash: &[u8; 32]) -> String {
    hex(&hash[..TOKEN_ID_BYTES])
}

/// The SHA-256 of a token secret (the key the token is stored under).
pub fn token_hash(secret: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).into()
}

/// A new random token secret: the prefix and 64 hex digits (256 bits).
pub fn new_token_secret() -> String {
    use rand::RngCore;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    format!("{TOKEN_SECRET_PREFIX}{}", hex(&secret))
}

fn check_label(label: &str) -> Result<()> {
    if label.len() > MAX_TOKEN_LABEL || label.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "a token label is at most {MAX_TOKEN_LABEL} bytes without control characters"
        )));
    }
    Ok(())
}

/// Stores a new app token; returns nothing (the caller keeps the secret).
pub fn add_token(tx: &mut Transaction<'_>, hash: &[u8; 32], token: &Token) -> Result<()> {
    tx.set(&keys::token(hash), &encode(token))?;
    Ok(())
}

/// The token with this SHA-256, if any.
pub fn get_token(tx: &mut Transaction<'_>, hash: &[u8; 32]) -> Result<Option<Token>> {
    let key = keys::token(hash);
    tx.get(&key)?.map(|v| decode(&key, &v)).transpose()
}

/// Creates a token for the account whose login is `address` (normalized),
/// stored under `hash` (the SHA-256 of its secret).
pub fn create_token(
    tx: &mut Transaction<'_>,
    address: &str,
    label: &str,
    hash: &[u8; 32],
) -> Result<TokenInfo> {
    check_label(label)?;
    let account =
        lookup_login(tx, address)?.ok_or_else(|| Error::NotFound(format!("account {address}")))?;
    // Two tokens sharing a public id could not be told apart by revoke:
    // with 48 random bits this does not happen, but never allow it.
    if !tx
        .range(
            &keys::tokens_with_prefix(&hash[..TOKEN_ID_BYTES]),
            RangeOptions::limit(1),
        )?
        .is_empty()
    {
        return Err(Error::AlreadyExists(format!("token {}", token_id(hash))));
    }
    let token = Token {
        account,
        label: label.to_string(),
        created: now(),
    };
    add_token(tx, hash, &token)?;
    Ok(TokenInfo {
        id: token_id(hash),
        account,
        address: address.to_string(),
        label: token.label,
        created: token.created,
    })
}

fn token_info(tx: &mut Transaction<'_>, key: &[u8], value: &[u8]) -> Result<TokenInfo> {
    let token: Token = decode(key, value)?;
    let hash = &key[1..];
    let address = get_account(tx, token.account)?
        .map(|a| a.address)
        .unwrap_or_default();
    Ok(TokenInfo {
        id: hex(&hash[..TOKEN_ID_BYTES.min(hash.len())]),
        account: token.account,
        address,
        label: token.label,
        created: token.created,
    })
}

/// Every token, or those of one account, ordered by public id.
pub fn list_tokens(tx: &mut Transaction<'_>, account: Option<AccountId>) -> Result<Vec<TokenInfo>> {
    let mut out = Vec::new();
    for (k, v) in tx.range(&keys::tokens(), RangeOptions::default())? {
        let info = token_info(tx, &k, &v)?;
        if account.is_none_or(|a| a == info.account) {
            out.push(info);
        }
    }
    Ok(out)
}

/// Deletes the token with public id `id` (its 12 hex digits; a longer
/// prefix of the hash is accepted too). Takes effect for the next request
/// that presents it.
pub fn revoke_token(tx: &mut Transaction<'_>, id: &str) -> Result<TokenInfo> {
    let id = id.trim().to_ascii_lowercase();
    let valid = id.len() >= 2 * TOKEN_ID_BYTES
        && id.len() <= 64
        && id.len().is_multiple_of(2)
        && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !valid {
        return Err(Error::Invalid(format!(
            "a token id is {} hex digits",
            2 * TOKEN_ID_BYTES
        )));
    }
    let prefix: Vec<u8> = (0..id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&id[i..i + 2], 16).expect("hex checked"))
        .collect();
    let found = tx.range(&keys::tokens_with_prefix(&prefix), RangeOptions::limit(2))?;
    match found.as_slice() {
        [] => Err(Error::NotFound(format!("token {id}"))),
        [(k, v)] => {
            let info = token_info(tx, k, v)?;
            tx.clear(k)?;
            Ok(info)
        }
        _ => Err(Error::Invalid(format!("token id {id} is ambiguous"))),
    }
}

impl crate::MailStore {
    /// Creates an app token (a Bearer credential) for the account whose
    /// login is `address`, labelled `label`. Returns the secret, shown to
    /// the user once (only its SHA-256 is stored), and the token's listing.
    pub fn create_token(&self, address: &str, label: &str) -> Result<(String, TokenInfo)> {
        let address = normalize_address(address)?;
        loop {
            let secret = new_token_secret();
            let hash = token_hash(&secret);
            match self
                .kv()
                .transact(|tx| create_token(tx, &address, label, &hash))
            {
                // A public-id collision: draw another secret.
                Err(Error::AlreadyExists(_)) => continue,
                other => return other.map(|info| (secret, info)),
            }
        }
    }

    /// Every token, or those of the account whose login is `address`.
    pub fn list_tokens(&self, address: Option<&str>) -> Result<Vec<TokenInfo>> {
        let address = address.map(normalize_address).transpose()?;
        self.kv().read(|tx| {
            let account = match &address {
                Some(a) => Some(
                    lookup_login(tx, a)?.ok_or_else(|| Error::NotFound(format!("account {a}")))?,
                ),
                None => None,
            };
            list_tokens(tx, account)
        })
    }

    /// Revokes the token with public id `id`.
    pub fn revoke_token(&self, id: &str) -> Result<TokenInfo> {
        self.kv().transact(|tx| revoke_token(tx, id))
    }

    /// The account a token secret authenticates, if the token exists (it
    /// is looked up on every call: a revoked token fails at once).
    pub fn authenticate_token(&self, secret: &str) -> Result<Option<AccountId>> {
        if secret.is_empty() || secret.len() > 512 {
            return Ok(None);
        }
        let hash = token_hash(secret);
        Ok(self
            .kv()
            .read(|tx| get_token(tx, &hash))?
            .map(|t| t.account))
    }
}

#[cfg(test)]
mod tests {
    use crate::{Error, MailStore};

    #[test]
    fn tokens_are_created_listed_authenticated_and_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        store.add_domain("example.com").unwrap();
        let alice = store.create_account("alice@example.com", "pw").unwrap();
        let bob = store.create_account("bob@example.com", "pw").unwrap();
        assert!(matches!(
            store.create_token("carol@example.com", "x"),
            Err(Error::NotFound(_))
        ));
        assert!(matches!(
            store.create_token("alice@example.com", "bad\nlabel"),
            Err(Error::Invalid(_))
        ));

        let (secret, info) = store.create_token("Alice@Example.com", "phone").unwrap();
        assert!(secret.starts_with(super::TOKEN_SECRET_PREFIX), "{secret}");
        assert_eq!(secret.len(), super::TOKEN_SECRET_PREFIX.len() + 64);
        assert_eq!(info.id.len(), 2 * super::TOKEN_ID_BYTES);
        assert_eq!(info.id, super::token_id(&super::token_hash(&secret)));
        assert_eq!(
            (info.account, info.address.as_str(), info.label.as_str()),
            (alice, "alice@example.com", "phone")
        );
        let (bob_secret, bob_info) = store.create_token("bob@example.com", "").unwrap();
        assert_ne!(secret, bob_secret);

        assert_eq!(store.authenticate_token(&secret).unwrap(), Some(alice));
        assert_eq!(store.authenticate_token(&bob_secret).unwrap(), Some(bob));
        assert_eq!(store.authenticate_token("tern_nope").unwrap(), None);
        assert_eq!(store.authenticate_token("").unwrap(), None);

        let all = store.list_tokens(None).unwrap();
        assert_eq!(all.len(), 2);
        assert!(all.windows(2).all(|w| w[0].id < w[1].id), "ordered by id");
        assert_eq!(
            store.list_tokens(Some("alice@example.com")).unwrap(),
            vec![info.clone()]
        );
        assert!(matches!(
            store.list_tokens(Some("carol@example.com")),
            Err(Error::NotFound(_))
        ));

        for bad in ["", "abc", "zzzzzzzzzzzz", &info.id[..11]] {
            assert!(
                matches!(store.revoke_token(bad), Err(Error::Invalid(_))),
                "{bad:?}"
            );
        }
        assert_eq!(store.revoke_token(&info.id.to_uppercase()).unwrap(), info);
        assert_eq!(store.authenticate_token(&secret).unwrap(), None);
        assert!(matches!(
            store.revoke_token(&info.id),
            Err(Error::NotFound(_))
        ));
        assert_eq!(store.list_tokens(None).unwrap(), vec![bob_info]);

        // Removing an account removes its tokens.
        store.remove_account("bob@example.com").unwrap();
        assert_eq!(store.authenticate_token(&bob_secret).unwrap(), None);
        assert!(store.list_tokens(None).unwrap().is_empty());
    }
}
