//! Authentication: HTTP Basic against account passwords (Argon2, so
//! verified credentials are remembered briefly, keyed by a hash of the
//! header), and Bearer app tokens (looked up by their SHA-256 on every
//! request, so revoking one takes effect at once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};
use tern_store::{AccountId, MailStore, account};

/// Who a request is from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user's account.
    pub account: AccountId,
    /// The login (primary address).
    pub username: String,
}

/// Why a request is not authenticated.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthError {
    /// No Authorization header.
    Missing,
    /// Wrong credentials or an unknown scheme.
    Invalid,
    /// The store failed.
    Store(tern_store::Error),
}

const MAX_CACHED: usize = 10_000;

/// Checks Authorization headers.
#[derive(Debug)]
pub struct Authenticator {
    store: MailStore,
    ttl: Duration,
    /// Verified Basic credentials: principal, when, and the store's
    /// credentials epoch then (a password change or an account removal,
    /// on any node, drops them).
    cache: Mutex<HashMap<[u8; 32], (Principal, Instant, u64)>>,
}

impl Authenticator {
    /// An authenticator remembering verified Basic credentials for `ttl`.
    pub fn new(store: MailStore, ttl: Duration) -> Self {
        Self {
            store,
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The principal of a cached Basic credential, without blocking.
    pub fn cached(&self, header: Option<&str>) -> Option<Principal> {
        let header = header?;
        // Only Basic credentials are remembered; a Bearer token is looked up
        // every time so that revoking it takes effect at once.
        if !header
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
        {
            return None;
        }
        let key: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        // Unknown without a store read: not answered here (the blocking
        // path reads it).
        let epoch = self.store.credentials_epoch_cached()?;
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(&key)
            .filter(|(_, at, seen)| at.elapsed() < self.ttl && *seen == epoch)
            .map(|(p, _, _)| p.clone())
    }

    /// Authenticates an Authorization header value. Blocks (store reads,
    /// Argon2): call from a blocking thread.
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, AuthError> {
        let header = header.ok_or(AuthError::Missing)?.trim();
        let (scheme, rest) = header.split_once(' ').ok_or(AuthError::Invalid)?;
        let rest = rest.trim();
        if scheme.eq_ignore_ascii_case("bearer") {
            return self.bearer(rest);
        }
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(AuthError::Invalid);
        }
        // Read before verifying: a change that lands during the check
        // leaves a stale epoch in the entry, never a stale password. (Read
        // first, then the cache: `cached` cannot tell an unknown epoch.)
        let epoch = self.store.credentials_epoch().map_err(AuthError::Store)?;
        if let Some(p) = self.cached(Some(header)) {
            return Ok(p);
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .map_err(|_| AuthError::Invalid)?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::Invalid)?;
        let id = self
            .store
            .authenticate(user, password)
            .map_err(AuthError::Store)?
            .ok_or(AuthError::Invalid)?;
        let principal = self.principal(id)?;
        let key: [u8; 32] = Sha256::digest(header.as_bytes()).into();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_CACHED {
            let ttl = self.ttl;
            cache.retain(|_, (_, at, seen)| at.elapsed() < ttl && *seen == epoch);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(key, (principal.clone(), Instant::now(), epoch));
        Ok(principal)
    }

    fn bearer(&self, token: &str) -> Result<Principal, AuthError> {
        // Never cached: a token revoked with `tern token revoke` fails on
        // the next request.
        let account = self
            .store
            .authenticate_token(token)
            .map_err(AuthError::Store)?
            .ok_or(AuthError::Invalid)?;
        self.principal(account)
    }

    fn principal(&self, id: AccountId) -> Result<Principal, AuthError> {
        let record = self
            .store
            .kv()
            .read(|tx| account::get_account(tx, id))
            .map_err(AuthError::Store)?
            .ok_or(AuthError::Invalid)?;
        Ok(Principal {
            account: id,
            username: record.address,
        })
    }
}
