//! Tern's storage: the transactional key-value contract and its backends
//! ([`kv`]), and the mail data model built on it: accounts and domains
//! ([`account`]), mailboxes ([`mailbox`]), emails, threads and their indexes
//! ([`email`]), content-addressed blobs ([`blob`]), the per-account change
//! log ([`changes`]), delivery ([`MailStore::deliver`]) and the SMTP
//! envelope kept with received mail ([`envelope`]).
//!
//! This crate knows nothing of JMAP, HTTP or SMTP. Every call blocks the
//! calling thread (a commit waits for its fsync): async callers run them on a
//! blocking thread pool (`tokio::task::spawn_blocking`).
//!
//! The layout of every key is in [`keys`] and `docs/store-format.md`.

pub mod account;
pub mod blob;
pub mod changes;
pub mod compose;
pub mod dates;
pub mod deliver;
pub mod dkim;
pub mod email;
pub mod envelope;
mod error;
mod handoff;
pub mod keys;
pub mod kv;
pub mod mailbox;
pub mod object;
pub mod parse;
pub mod queue;
pub mod recent;
pub mod spam;
mod types;
pub mod vacation;
pub mod watched;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use account::AccountInfo;
pub use changes::Writer;
pub use deliver::{DeliverOptions, Delivered, Folder, QuotaPolicy, Recipient};
pub use email::EmailMeta;
pub use envelope::{DsnNotify, DsnRet, Envelope, EnvelopeRecipient};
pub use error::{Error, Result};
pub use types::{AccountId, BlobHash, Collection, DataType, DocumentId, now};

use kv::Kv;
#[cfg(feature = "rocksdb")]
use kv::RocksOptions;

/// A message's hash and bytes, stored inside its delivery's transaction.
type InlineBlob = (BlobHash, Arc<[u8]>);

/// Messages up to this size share the delivery transaction with their
/// metadata (one commit); larger ones are written in their own transactions
/// first.
pub const INLINE_BLOB_LIMIT: usize = 1 << 20;

/// The mail store: a handle to the key-value store plus the mail model's
/// operations. Cheap to clone; every clone shares one database.
#[derive(Debug, Clone)]
pub struct MailStore {
    kv: Kv,
    path: PathBuf,
    combiner: Arc<deliver::Combiner>,
    /// The credentials epoch ([`keys::CREDENTIALS_EPOCH`]), kept while no
    /// commit writes it.
    credentials: Arc<watched::WatchedCache<(), u64>>,
    recent: Arc<recent::RecentBlobs>,
}

impl MailStore {
    /// Opens (creating if needed) the store under `data_dir`, on the
    /// embedded RocksDB backend, and checks the format version.
    #[cfg(feature = "rocksdb")]
    pub fn open(data_dir: &Path) -> Result<Self> {
        Self::open_with(data_dir, RocksOptions::default())
    }

    /// [`MailStore::open`] with backend options.
    #[cfg(feature = "rocksdb")]
    pub fn open_with(data_dir: &Path, options: RocksOptions) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| kv::Error::Backend(format!("{}: {e}", data_dir.display())))?;
        let path = data_dir.join("db");
        let kv = Kv::open_rocksdb(&path, options)?;
        Self::from_kv(kv, path)
    }

    /// Wraps an open key-value store (any backend), checking or writing the
    /// format version.
    pub fn from_kv(kv: Kv, path: PathBuf) -> Result<Self> {
        kv.transact(|tx| -> Result<()> {
            match tx.get(keys::FORMAT)? {
                Some(v) => {
                    let found = v
                        .as_slice()
                        .try_into()
                        .map(u32::from_be_bytes)
                        .map_err(|_| kv::Error::corrupt(keys::FORMAT, "bad format version"))?;
                    if found != keys::FORMAT_VERSION {
                        return Err(Error::FormatVersion {
                            found,
                            expected: keys::FORMAT_VERSION,
                        });
                    }
                }
                None => tx.set(keys::FORMAT, &keys::FORMAT_VERSION.to_be_bytes())?,
            }
            Ok(())
        })?;
        Ok(Self {
            combiner: Arc::new(deliver::Combiner::new(kv.clone())),
            kv,
            path,
            credentials: Arc::new(watched::WatchedCache::new(1)),
            recent: Arc::default(),
        })
    }

    /// A number that changes whenever any process sharing the store
    /// changes or removes an account's credentials (password, account
    /// removal): a counter in the store, added to in the same transaction.
    /// Caches of verified passwords compare it to drop what they hold.
    /// Read once, then kept in memory until a commit writes it (a store
    /// watch: at once in this process, within the backend's watch latency
    /// on other FoundationDB nodes).
    pub fn credentials_epoch(&self) -> Result<u64> {
        self.credentials
            .get(&self.kv, &(), keys::CREDENTIALS_EPOCH, |tx| {
                Ok(tx.get_counter(keys::CREDENTIALS_EPOCH)? as u64)
            })
    }

    /// [`MailStore::credentials_epoch`] if known without reading the store
    /// (it has not changed since it was last read); never blocks.
    pub fn credentials_epoch_cached(&self) -> Option<u64> {
        self.credentials.cached(&())
    }

    /// The key-value store underneath.
    pub fn kv(&self) -> &Kv {
        &self.kv
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a local domain.
    pub fn add_domain(&self, domain: &str) -> Result<()> {
        let domain = account::normalize_domain(domain)?;
        self.kv.transact(|tx| account::add_domain(tx, &domain))
    }

    /// Local domains, sorted.
    pub fn list_domains(&self) -> Result<Vec<String>> {
        self.kv.read(account::list_domains)
    }

    /// Whether `domain` is local.
    pub fn is_local_domain(&self, domain: &str) -> Result<bool> {
        let Ok(domain) = account::normalize_domain(domain) else {
            return Ok(false);
        };
        self.kv.read(|tx| account::is_local_domain(tx, &domain))
    }

    /// Creates an account (with the default mailboxes) whose login and
    /// primary address is `address`, on a local domain.
    pub fn create_account(&self, address: &str, password: &str) -> Result<AccountId> {
        let address = account::normalize_address(address)?;
        if password.is_empty() {
            return Err(Error::Invalid("empty password".into()));
        }
        let hash = account::hash_password(password)?;
        self.kv
            .transact(|tx| account::create_account(tx, &address, &hash, account::DEFAULT_QUOTA))
    }

    /// Every account.
    pub fn list_accounts(&self) -> Result<Vec<AccountInfo>> {
        self.kv.read(account::list_accounts)
    }

    /// Removes an account and all of its data.
    pub fn remove_account(&self, address: &str) -> Result<()> {
        let address = account::normalize_address(address)?;
        let id = self.kv.transact(|tx| {
            let id = account::remove_account_login(tx, &address)?;
            tx.add(keys::CREDENTIALS_EPOCH, 1)?;
            Ok::<_, Error>(id)
        })?;
        while self
            .kv
            .transact(|tx| account::purge_account_batch(tx, id, 1000))?
        {}
        Ok(())
    }

    /// Sets an account's password.
    pub fn set_password(&self, address: &str, password: &str) -> Result<()> {
        let address = account::normalize_address(address)?;
        if password.is_empty() {
            return Err(Error::Invalid("empty password".into()));
        }
        let hash = account::hash_password(password)?;
        self.kv.transact(|tx| {
            let id = account::lookup_login(tx, &address)?
                .ok_or_else(|| Error::NotFound(format!("account {address}")))?;
            let mut record = account::get_account(tx, id)?
                .ok_or_else(|| Error::NotFound(format!("account {address}")))?;
            record.password_hash = hash.clone();
            account::put_account(tx, id, &record)?;
            tx.add(keys::CREDENTIALS_EPOCH, 1)?;
            Ok::<_, Error>(())
        })?;
        Ok(())
    }

    /// The account whose login is `address` if `password` is right.
    pub fn authenticate(&self, address: &str, password: &str) -> Result<Option<AccountId>> {
        let Ok(address) = account::normalize_address(address) else {
            return Ok(None);
        };
        let found = self.kv.read(|tx| -> Result<_> {
            let Some(id) = account::lookup_login(tx, &address)? else {
                return Ok(None);
            };
            Ok(account::get_account(tx, id)?.map(|a| (id, a.password_hash)))
        })?;
        Ok(found.and_then(|(id, hash)| account::verify_password(&hash, password).then_some(id)))
    }

    /// The account that mail for `address` is delivered to.
    pub fn lookup_address(&self, address: &str) -> Result<Option<AccountId>> {
        let Ok(address) = account::normalize_address(address) else {
            return Ok(None);
        };
        self.kv.read(|tx| account::lookup_address(tx, &address))
    }

    /// Delivers one raw message to every recipient in one transaction and
    /// returns once it is durable. Each recipient gets its own copy (sharing
    /// one blob). A recipient over quota gets `Err(OverQuota)` in its slot
    /// while the others are delivered; an error of the store fails the
    /// whole delivery and nothing is stored. Concurrent deliveries share
    /// transactions (see [`deliver`]).
    ///
    /// Malformed MIME is stored with what could be parsed; input that is not
    /// a message at all fails with [`Error::NotAMessage`].
    pub fn deliver(&self, raw: &[u8], recipients: &[Recipient]) -> Result<deliver::Outcome> {
        self.deliver_with(raw, recipients, &DeliverOptions::default())
    }

    /// [`MailStore::deliver`] with options: the SMTP envelope to keep with
    /// each copy, and the quota policy ([`QuotaPolicy`]). Fails with
    /// [`Error::Invalid`] when `options.envelopes` is neither empty nor
    /// one per recipient.
    pub fn deliver_with(
        &self,
        raw: &[u8],
        recipients: &[Recipient],
        options: &DeliverOptions,
    ) -> Result<deliver::Outcome> {
        self.deliver_checked(raw, recipients, options, || parse::parse_message(raw))
    }

    /// [`MailStore::deliver_with`] for `raw` = `prefix ++ data`, where
    /// `prefix` is header fields put on top of the message (trace fields)
    /// and `message` is `data` already parsed with mail-parser's default
    /// parser: the message is not parsed again (see
    /// [`parse::parse_message_prefixed`]; what is stored is the same).
    /// Fails with [`Error::Invalid`] when `raw` does not end with `data`.
    pub fn deliver_prefixed(
        &self,
        raw: &[u8],
        data: &[u8],
        message: &mail_parser::Message<'_>,
        recipients: &[Recipient],
        options: &DeliverOptions,
    ) -> Result<deliver::Outcome> {
        let (job, inline) = self.prefixed_job(raw, data, message, recipients, options)?;
        self.submit(job, inline)
    }

    /// [`MailStore::deliver_prefixed`] for callers on an async runtime:
    /// the message is parsed and hashed here and queued for a delivery
    /// worker; the returned future resolves once it is durable, without
    /// holding a thread meanwhile. Only for messages up to
    /// [`INLINE_BLOB_LIMIT`] (a larger one's blob is written before the
    /// delivery, which blocks): a larger `raw` fails with
    /// [`Error::Invalid`]. Dropping the future does not cancel the
    /// delivery. `derived` is kept with the message for readers that
    /// follow deliveries ([`MailStore::recent_derived`]).
    pub fn deliver_prefixed_async(
        &self,
        raw: &[u8],
        data: &[u8],
        message: &mail_parser::Message<'_>,
        recipients: &[Recipient],
        options: &DeliverOptions,
        derived: Option<recent::Derived>,
    ) -> impl std::future::Future<Output = Result<deliver::Outcome>> + Send + use<> {
        let queued = if raw.len() > INLINE_BLOB_LIMIT {
            Err(Error::Invalid(format!(
                "a message of {} bytes is delivered by the blocking call",
                raw.len()
            )))
        } else {
            self.prefixed_job(raw, data, message, recipients, options)
                .map(|(job, inline)| (self.combiner.queue(job), inline))
        };
        let recent = Arc::clone(&self.recent);
        async move {
            let (pending, inline) = queued?;
            let outcome = pending
                .await
                .unwrap_or_else(|_| Err(deliver::failed_hard()))?;
            keep_recent(&recent, &outcome, inline, derived);
            Ok(outcome)
        }
    }

    fn prefixed_job(
        &self,
        raw: &[u8],
        data: &[u8],
        message: &mail_parser::Message<'_>,
        recipients: &[Recipient],
        options: &DeliverOptions,
    ) -> Result<(deliver::Job, Option<InlineBlob>)> {
        let Some(prefix) = raw.strip_suffix(data) else {
            return Err(Error::Invalid(
                "the message does not end with its data".into(),
            ));
        };
        self.job(raw, recipients, options, || {
            parse::parse_message_prefixed(prefix, data, message)
        })
    }

    fn deliver_checked(
        &self,
        raw: &[u8],
        recipients: &[Recipient],
        options: &DeliverOptions,
        parse: impl FnOnce() -> Result<parse::ParsedMessage>,
    ) -> Result<deliver::Outcome> {
        let (job, inline) = self.job(raw, recipients, options, parse)?;
        self.submit(job, inline)
    }

    /// Stores `job` (blocking until durable) and keeps its inline bytes
    /// for the indexer.
    fn submit(&self, job: deliver::Job, inline: Option<InlineBlob>) -> Result<deliver::Outcome> {
        let outcome = self.combiner.submit(job)?;
        keep_recent(&self.recent, &outcome, inline, None);
        Ok(outcome)
    }

    /// The delivery job for `raw`, and the message's bytes when they go
    /// into the delivery's transaction (kept in [`recent::RecentBlobs`]
    /// once durable). A message over [`INLINE_BLOB_LIMIT`] has its blob
    /// written here.
    fn job(
        &self,
        raw: &[u8],
        recipients: &[Recipient],
        options: &DeliverOptions,
        parse: impl FnOnce() -> Result<parse::ParsedMessage>,
    ) -> Result<(deliver::Job, Option<InlineBlob>)> {
        if !options.envelopes.is_empty() && options.envelopes.len() != recipients.len() {
            return Err(Error::Invalid(format!(
                "{} envelopes for {} recipients",
                options.envelopes.len(),
                recipients.len()
            )));
        }
        let parsed = parse()?;
        let big = raw.len() > INLINE_BLOB_LIMIT;
        // A small message is stored in the delivery's transaction; its
        // hash is taken here, outside the account's delivery lane.
        let (inline, blob) = if big {
            (None, Some(blob::put(&self.kv, raw)?))
        } else {
            (Some((BlobHash::of(raw), Arc::<[u8]>::from(raw))), None)
        };
        let job = deliver::Job {
            raw: inline.clone(),
            blob,
            size: raw.len() as u64,
            parsed,
            recipients: recipients.to_vec(),
            received_at: now(),
            envelopes: options.envelopes.clone(),
            quota: options.quota,
        };
        Ok((job, inline))
    }

    /// The bytes of blob `hash` if this process delivered that message
    /// lately ([`recent::RecentBlobs`]): readers that follow deliveries
    /// try it before reading the store.
    pub fn recent_blob(&self, hash: &BlobHash) -> Option<Arc<[u8]>> {
        self.recent.get(hash)
    }

    /// What the deliverer derived from blob `hash`'s message, if this
    /// process delivered it lately with a derived value
    /// ([`MailStore::deliver_prefixed_async`]).
    pub fn recent_derived(&self, hash: &BlobHash) -> Option<recent::Derived> {
        self.recent.derived(hash)
    }

    /// The SMTP envelope the email `email` of `account` was received with
    /// (its recipients: those of this account only), if it came in over
    /// SMTP.
    pub fn envelope(&self, account: AccountId, email: DocumentId) -> Result<Option<Envelope>> {
        self.kv.read(|tx| envelope::get(tx, account, email))
    }
}

/// Keeps a durable delivery's inline bytes (and what the caller derived
/// from them) for the indexer, which reads them back shortly, when at
/// least one recipient got the message: a delivery refused for every
/// recipient stored nothing anyone will read.
fn keep_recent(
    recent: &recent::RecentBlobs,
    outcome: &deliver::Outcome,
    inline: Option<InlineBlob>,
    derived: Option<recent::Derived>,
) {
    if let Some((hash, data)) = inline
        && outcome.iter().any(Result::is_ok)
    {
        recent.insert(hash, data, derived);
    }
}
