//! Spam classifier models and the training queue.
//!
//! The store keeps token counts for a statistical spam classifier: one
//! global model and one model per account. It does not tokenize or
//! classify (that is tern-smtp's `spam` module); it stores counts keyed by
//! a 64-bit token hash, changed only by atomic adds (never read, modified
//! and written back), so concurrent training never conflicts.
//!
//! A model is:
//! - meta counters `[MESSAGES_SPAM, MESSAGES_HAM, GENERATION]`: how many
//!   messages were trained as each class, and a generation bumped by every
//!   training so that caches know when to reload;
//! - one counter per token, packed: `spam × 2³² + ham` (see [`pack`]),
//!   the number of trained spam and ham messages holding the token.
//!
//! Training from the user: when an email's mailboxes change so that it
//! enters or leaves the account's Junk mailbox (role `junk`),
//! [`on_mailboxes_changed`] — called by `email::update` in the same
//! transaction — queues a training operation for the email and flags the
//! account. A background trainer (tern-smtp) takes the queue with
//! [`pending_accounts`] / [`pending`], trains with [`train`] (which also
//! remembers per email how it is trained, so moving a message back
//! *untrains* it first), and clears the flag with [`clear_flag_if_idle`].
//!
//! Layout (`docs/store-format.md`, "Spam models"): global `48` (model),
//! `49 ++ aid` (flag); per account `78` (model), `79` (queue), `7A`
//! (trained as).

use crate::changes::Writer;
use crate::error::Result;
use crate::keys::{self, Key};
use crate::kv::{KeyRange, Kv, RangeOptions, Transaction};
use crate::types::{AccountId, DocumentId};

/// Global family of the global model.
const GLOBAL_MODEL: u8 = 0x48;
/// Global family of the flags "this account has training queued".
const QUEUED_FLAG: u8 = 0x49;

/// Account families.
pub mod family {
    /// The account's model: `++ 00 ++ meta kind` and `++ 01 ++ token`.
    pub const MODEL: u8 = 0x78;
    /// The training queue: `++ email id` -> class byte.
    pub const QUEUE: u8 = 0x79;
    /// How an email is trained in the account's model: `++ email id` ->
    /// class byte.
    pub const TRAINED: u8 = 0x7A;
}

/// Second byte of a model key: meta counters.
const META: u8 = 0x00;
/// Second byte of a model key: token counters.
const TOKEN: u8 = 0x01;

/// Meta counter: messages trained as spam.
pub const MESSAGES_SPAM: u8 = 0;
/// Meta counter: messages trained as ham.
pub const MESSAGES_HAM: u8 = 1;
/// Meta counter: bumped by every training.
pub const GENERATION: u8 = 2;

/// The class of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Unwanted.
    Spam,
    /// Wanted.
    Ham,
}

impl Class {
    /// The byte stored for the class.
    pub fn byte(self) -> u8 {
        match self {
            Class::Spam => 0x01,
            Class::Ham => 0x02,
        }
    }

    /// The class of a stored byte.
    pub fn from_byte(b: u8) -> Option<Class> {
        match b {
            0x01 => Some(Class::Spam),
            0x02 => Some(Class::Ham),
            _ => None,
        }
    }

    /// The token counter delta of one message of this class.
    pub fn unit(self) -> i64 {
        match self {
            Class::Spam => pack(1, 0),
            Class::Ham => pack(0, 1),
        }
    }
}

/// Which model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// The model every account shares.
    Global,
    /// One account's own model.
    Account(AccountId),
}

impl Scope {
    fn model(self) -> Key {
        match self {
            Scope::Global => Key::default().u8(GLOBAL_MODEL),
            Scope::Account(a) => keys::acct(a, family::MODEL),
        }
    }
}

/// The packed token counter value for `spam` and `ham` message counts.
pub fn pack(spam: u32, ham: u32) -> i64 {
    ((spam as i64) << 32) + ham as i64
}

/// The (spam, ham) counts of a packed counter value. Negative parts (only
/// possible after corruption) read as zero.
pub fn unpack(value: i64) -> (u32, u32) {
    let ham = value & 0xFFFF_FFFF;
    let spam = (value - ham) >> 32;
    (spam.clamp(0, u32::MAX as i64) as u32, ham as u32)
}

/// The key of a meta counter of a model.
pub fn meta_key(scope: Scope, kind: u8) -> Vec<u8> {
    scope.model().u8(META).u8(kind).build()
}

/// The key of a token counter of a model.
pub fn token_key(scope: Scope, token: u64) -> Vec<u8> {
    scope.model().u8(TOKEN).u64(token).build()
}

fn tokens_range(scope: Scope) -> KeyRange {
    scope.model().u8(TOKEN).prefix_range()
}

fn queue_key(account: AccountId, email: DocumentId) -> Vec<u8> {
    keys::doc(account, family::QUEUE, email)
}

fn trained_key(account: AccountId, email: DocumentId) -> Vec<u8> {
    keys::doc(account, family::TRAINED, email)
}

fn flag_key(account: AccountId) -> Vec<u8> {
    Key::default().u8(QUEUED_FLAG).u32(account.0).build()
}

fn decode_counter(value: &[u8]) -> i64 {
    value.try_into().map(i64::from_le_bytes).unwrap_or_default()
}

/// A model's meta counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelMeta {
    /// Messages trained as spam (net of untraining).
    pub spam: i64,
    /// Messages trained as ham.
    pub ham: i64,
    /// Changes on every training.
    pub generation: i64,
}

/// Reads a model's meta counters.
pub fn meta(tx: &mut Transaction<'_>, scope: Scope) -> Result<ModelMeta> {
    Ok(ModelMeta {
        spam: tx.get_counter(&meta_key(scope, MESSAGES_SPAM))?,
        ham: tx.get_counter(&meta_key(scope, MESSAGES_HAM))?,
        generation: tx.get_counter(&meta_key(scope, GENERATION))?,
    })
}

/// The generation of a model (one read).
pub fn generation(tx: &mut Transaction<'_>, scope: Scope) -> Result<i64> {
    Ok(tx.get_counter(&meta_key(scope, GENERATION))?)
}

/// Adds `messages` messages of `class` (negative: removes) whose token
/// deltas are `tokens` (already multiplied, see [`Class::unit`]) to a
/// model, and bumps its generation. Atomic adds only.
pub fn add(
    tx: &mut Transaction<'_>,
    scope: Scope,
    spam_messages: i64,
    ham_messages: i64,
    tokens: impl IntoIterator<Item = (u64, i64)>,
) -> Result<()> {
    for (token, delta) in tokens {
        if delta != 0 {
            tx.add(&token_key(scope, token), delta)?;
        }
    }
    if spam_messages != 0 {
        tx.add(&meta_key(scope, MESSAGES_SPAM), spam_messages)?;
    }
    if ham_messages != 0 {
        tx.add(&meta_key(scope, MESSAGES_HAM), ham_messages)?;
    }
    tx.add(&meta_key(scope, GENERATION), 1)?;
    Ok(())
}

/// A whole model read from the store.
#[derive(Debug, Clone, Default)]
pub struct LoadedModel {
    /// Its meta counters (read before the tokens).
    pub meta: ModelMeta,
    /// Every token with its packed counter, zero counters left out.
    pub tokens: Vec<(u64, i64)>,
}

/// Reads a whole model as a chain of short read transactions of
/// `batch` keys each (a model can outgrow one transaction's 5 s). Training
/// that happens during the scan may be seen in part; the generation read
/// first makes the next check reload again.
pub fn load(kv: &Kv, scope: Scope, batch: usize) -> Result<LoadedModel> {
    let meta = kv.read(|tx| meta(tx, scope))?;
    let mut out = LoadedModel {
        meta,
        tokens: Vec::new(),
    };
    let full = tokens_range(scope);
    let mut begin = full.begin.clone();
    loop {
        let range = KeyRange::new(begin.clone(), full.end.clone());
        let rows = kv.read(|tx| tx.range_snapshot(&range, RangeOptions::limit(batch.max(1))))?;
        let done = rows.len() < batch.max(1);
        for (k, v) in &rows {
            if k.len() < 8 {
                continue;
            }
            let token = u64::from_be_bytes(k[k.len() - 8..].try_into().expect("8 bytes"));
            let value = decode_counter(v);
            if value != 0 {
                out.tokens.push((token, value));
            }
        }
        match rows.last() {
            Some((last, _)) if !done => begin = KeyRange::single(last).end,
            _ => break,
        }
    }
    Ok(out)
}

/// Reads the packed counters of some tokens (one read each).
pub fn token_counts(
    tx: &mut Transaction<'_>,
    scope: Scope,
    tokens: &[u64],
) -> Result<Vec<(u64, i64)>> {
    tokens
        .iter()
        .map(|&t| Ok((t, tx.get_counter(&token_key(scope, t))?)))
        .collect()
}

/// Called by `email::update` when an email's mailboxes changed from `old`
/// to `new`: queues training when it entered (spam) or left (ham) the
/// account's Junk mailbox. Blind writes only: concurrent moves of other
/// emails do not conflict.
pub fn on_mailboxes_changed(
    w: &mut Writer<'_, '_>,
    email: DocumentId,
    old: &[DocumentId],
    new: &[DocumentId],
) -> Result<()> {
    let account = w.account;
    let Some(junk) = crate::mailbox::by_role(w.tx, account, "junk")? else {
        return Ok(());
    };
    let class = match (old.contains(&junk), new.contains(&junk)) {
        (false, true) => Class::Spam,
        (true, false) => Class::Ham,
        _ => return Ok(()),
    };
    enqueue(w.tx, account, email, class)
}

/// Queues training of `email` as `class` for `account`.
pub fn enqueue(
    tx: &mut Transaction<'_>,
    account: AccountId,
    email: DocumentId,
    class: Class,
) -> Result<()> {
    tx.set(&queue_key(account, email), &[class.byte()])?;
    tx.set(&flag_key(account), &[])?;
    Ok(())
}

/// Accounts with training queued (at most `limit`).
pub fn pending_accounts(tx: &mut Transaction<'_>, limit: usize) -> Result<Vec<AccountId>> {
    Ok(tx
        .range_snapshot(
            &KeyRange::prefix(&[QUEUED_FLAG]),
            RangeOptions::limit(limit),
        )?
        .into_iter()
        .filter(|(k, _)| k.len() == 5)
        .map(|(k, _)| AccountId(keys::be_u32(&k, 1)))
        .collect())
}

/// Queued training of an account, oldest email first (at most `limit`).
pub fn pending(
    tx: &mut Transaction<'_>,
    account: AccountId,
    limit: usize,
) -> Result<Vec<(DocumentId, Class)>> {
    let range = keys::acct(account, family::QUEUE).prefix_range();
    Ok(tx
        .range_snapshot(&range, RangeOptions::limit(limit))?
        .into_iter()
        .filter_map(|(k, v)| {
            let class = Class::from_byte(*v.first()?)?;
            Some((keys::be_u32(&k, k.len() - 4), class))
        })
        .collect())
}

/// What [`train`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trained {
    /// The email was trained as the class (and untrained from the other
    /// class first, when it was).
    Done,
    /// It was already trained as that class: nothing changed.
    Already,
    /// The queue entry changed or vanished since it was read: nothing done.
    Stale,
}

/// Carries out one queued operation in `tx`: checks the queue entry still
/// asks for `class`, untrains the email's previous class (`tokens` are its
/// distinct token hashes), trains `class`, records it, removes the queue
/// entry. With `tokens` = `None` (the email is gone, or learning is off)
/// only the queue entry is removed.
pub fn train(
    tx: &mut Transaction<'_>,
    account: AccountId,
    email: DocumentId,
    class: Class,
    tokens: Option<&[u64]>,
) -> Result<Trained> {
    let qkey = queue_key(account, email);
    match tx.get(&qkey)?.and_then(|v| v.first().copied()) {
        Some(b) if b == class.byte() => {}
        _ => return Ok(Trained::Stale),
    }
    tx.clear(&qkey)?;
    let Some(tokens) = tokens else {
        return Ok(Trained::Done);
    };
    let tkey = trained_key(account, email);
    let previous = tx
        .get(&tkey)?
        .and_then(|v| v.first().copied())
        .and_then(Class::from_byte);
    if previous == Some(class) {
        return Ok(Trained::Already);
    }
    let scope = Scope::Account(account);
    let mut delta = class.unit();
    let (mut spam, mut ham) = match class {
        Class::Spam => (1, 0),
        Class::Ham => (0, 1),
    };
    if let Some(previous) = previous {
        delta -= previous.unit();
        match previous {
            Class::Spam => spam -= 1,
            Class::Ham => ham -= 1,
        }
    }
    add(tx, scope, spam, ham, tokens.iter().map(|&t| (t, delta)))?;
    tx.set(&tkey, &[class.byte()])?;
    Ok(Trained::Done)
}

/// Clears the account's flag if its queue is empty. The range read makes
/// this conflict with a concurrent [`enqueue`], so a new entry keeps it.
pub fn clear_flag_if_idle(tx: &mut Transaction<'_>, account: AccountId) -> Result<bool> {
    let range = keys::acct(account, family::QUEUE).prefix_range();
    if !tx.range(&range, RangeOptions::limit(1))?.is_empty() {
        return Ok(false);
    }
    tx.clear(&flag_key(account))?;
    Ok(true)
}

/// Forgets how an email is trained (called when it is destroyed; the
/// counts stay: the model keeps what it learned).
pub fn forget(tx: &mut Transaction<'_>, account: AccountId, email: DocumentId) -> Result<()> {
    tx.clear(&trained_key(account, email))?;
    tx.clear(&queue_key(account, email))?;
    Ok(())
}

/// How `email` is trained in its account's model, if it is.
pub fn trained_as(
    tx: &mut Transaction<'_>,
    account: AccountId,
    email: DocumentId,
) -> Result<Option<Class>> {
    Ok(tx
        .get(&trained_key(account, email))?
        .and_then(|v| v.first().copied())
        .and_then(Class::from_byte))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_and_adds() {
        for (s, h) in [(0, 0), (1, 0), (0, 1), (7, 3), (u32::MAX >> 1, u32::MAX)] {
            assert_eq!(unpack(pack(s, h)), (s, h));
        }
        let v = pack(3, 5) + Class::Spam.unit() - Class::Ham.unit();
        assert_eq!(unpack(v), (4, 4));
        // Removing the last ham of a token with spam counts borrows right.
        assert_eq!(unpack(pack(2, 1) - Class::Ham.unit()), (2, 0));
    }

    #[test]
    fn keys_are_the_documented_bytes() {
        assert_eq!(meta_key(Scope::Global, GENERATION), [0x48, 0x00, 0x02]);
        assert_eq!(
            token_key(Scope::Global, 0x0102030405060708),
            [0x48, 0x01, 1, 2, 3, 4, 5, 6, 7, 8]
        );
        assert_eq!(
            token_key(Scope::Account(AccountId(5)), 1),
            [0x20, 0, 0, 0, 5, 0x78, 0x01, 0, 0, 0, 0, 0, 0, 0, 1]
        );
        assert_eq!(
            queue_key(AccountId(5), 9),
            [0x20, 0, 0, 0, 5, 0x79, 0, 0, 0, 9]
        );
        assert_eq!(
            trained_key(AccountId(5), 9),
            [0x20, 0, 0, 0, 5, 0x7A, 0, 0, 0, 9]
        );
        assert_eq!(flag_key(AccountId(5)), [0x49, 0, 0, 0, 5]);
    }
}
