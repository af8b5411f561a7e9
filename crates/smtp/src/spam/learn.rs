//! The classifier's models in the store, cached in memory, and training:
//! in bulk (`tern spam train`, [`train_messages`]) and from users moving
//! mail into and out of Junk (the store queues those moves; [`Trainer`]
//! carries them out in the background).
//!
//! Caching: the global model is held in memory and reloaded when its
//! generation counter changed, checked at most every
//! [`GLOBAL_CHECK_INTERVAL`]. An account's model is small; its generation
//! is kept in memory until a commit writes it (a store watch,
//! [`tern_store::watched`]), so a message costs no store read, and the
//! model is reloaded when the generation changed: a user's training
//! shows in the next message. At most [`MAX_CACHED_ACCOUNTS`] account
//! models (and generations) are kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tern_store::spam::{self as store_spam, Class, Scope, Trained};
use tern_store::watched::WatchedCache;
use tern_store::{AccountId, MailStore, blob, email};

use super::bayes::Model;
use super::message::analyze;
use super::tokens::tokenize;

/// How often the global model's generation is checked.
pub const GLOBAL_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Account models kept in memory.
pub const MAX_CACHED_ACCOUNTS: usize = 1024;
/// Keys per read transaction when loading a model.
const LOAD_BATCH: usize = 20_000;
/// Messages per transaction in bulk training.
const TRAIN_BATCH: usize = 64;

/// Models from the store, cached.
#[derive(Debug)]
pub struct Models {
    store: MailStore,
    global: RwLock<Arc<Model>>,
    global_checked: Mutex<Instant>,
    reloading: AtomicBool,
    accounts: Mutex<HashMap<AccountId, (Arc<Model>, Instant)>>,
    /// Each account's model generation, until a commit writes it.
    generations: WatchedCache<AccountId, i64>,
    /// The model of an account that never trained.
    empty: Arc<Model>,
}

impl Models {
    /// Loads the global model.
    pub fn open(store: MailStore) -> tern_store::Result<Models> {
        let global = Model::from_loaded(store_spam::load(store.kv(), Scope::Global, LOAD_BATCH)?);
        Ok(Models {
            store,
            global: RwLock::new(Arc::new(global)),
            global_checked: Mutex::new(Instant::now()),
            reloading: AtomicBool::new(false),
            accounts: Mutex::new(HashMap::new()),
            generations: WatchedCache::new(MAX_CACHED_ACCOUNTS),
            empty: Arc::new(Model::new()),
        })
    }

    /// The store.
    pub fn store(&self) -> &MailStore {
        &self.store
    }

    /// The global model, reloaded first when it changed (checked at most
    /// every [`GLOBAL_CHECK_INTERVAL`]; a reload in progress elsewhere is
    /// not waited for). Blocks.
    pub fn global(&self) -> Arc<Model> {
        let due = {
            let mut checked = self.global_checked.lock();
            if checked.elapsed() >= GLOBAL_CHECK_INTERVAL {
                *checked = Instant::now();
                true
            } else {
                false
            }
        };
        if due {
            let _ = self.refresh_global();
        }
        Arc::clone(&self.global.read())
    }

    /// Reloads the global model now if its generation changed.
    pub fn refresh_global(&self) -> tern_store::Result<()> {
        let current = self.global.read().generation;
        let generation = self
            .store
            .kv()
            .read(|tx| store_spam::generation(tx, Scope::Global))?;
        if generation == current || self.reloading.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let loaded = store_spam::load(self.store.kv(), Scope::Global, LOAD_BATCH);
        self.reloading.store(false, Ordering::Release);
        *self.global.write() = Arc::new(Model::from_loaded(loaded?));
        Ok(())
    }

    /// An account's own model, current (no store read when cached and
    /// unchanged). Blocks.
    pub fn account(&self, account: AccountId) -> tern_store::Result<Arc<Model>> {
        let scope = Scope::Account(account);
        let generation = self.generations.get(
            self.store.kv(),
            &account,
            &store_spam::meta_key(scope, store_spam::GENERATION),
            |tx| store_spam::generation(tx, scope),
        )?;
        if generation == 0 {
            return Ok(Arc::clone(&self.empty));
        }
        {
            let mut cache = self.accounts.lock();
            if let Some((model, used)) = cache.get_mut(&account)
                && model.generation == generation
            {
                *used = Instant::now();
                return Ok(Arc::clone(model));
            }
        }
        let model = Arc::new(Model::from_loaded(store_spam::load(
            self.store.kv(),
            scope,
            LOAD_BATCH,
        )?));
        let mut cache = self.accounts.lock();
        if cache.len() >= MAX_CACHED_ACCOUNTS
            && let Some(oldest) = cache
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(a, _)| *a)
        {
            cache.remove(&oldest);
        }
        cache.insert(account, (Arc::clone(&model), Instant::now()));
        Ok(model)
    }
}

/// Trains raw messages as `class` into a model (`Scope::Global` for the
/// shared one) in batched transactions of atomic adds; `progress` is
/// called after each batch with the number of messages done. Returns how
/// many were trained.
pub fn train_messages<'a>(
    store: &MailStore,
    scope: Scope,
    class: Class,
    messages: impl IntoIterator<Item = &'a [u8]>,
    mut progress: impl FnMut(usize),
) -> tern_store::Result<usize> {
    let mut done = 0;
    let mut batch: HashMap<u64, i64> = HashMap::new();
    let mut in_batch = 0i64;
    let flush = |batch: &mut HashMap<u64, i64>, n: i64| -> tern_store::Result<()> {
        if n == 0 {
            return Ok(());
        }
        let (spam, ham) = match class {
            Class::Spam => (n, 0),
            Class::Ham => (0, n),
        };
        store.kv().transact(|tx| {
            store_spam::add(tx, scope, spam, ham, batch.iter().map(|(&t, &d)| (t, d)))
        })?;
        batch.clear();
        Ok(())
    };
    for raw in messages {
        let tokens = tokenize(&analyze(raw));
        for t in tokens {
            *batch.entry(t).or_default() += class.unit();
        }
        in_batch += 1;
        done += 1;
        if in_batch as usize >= TRAIN_BATCH {
            flush(&mut batch, in_batch)?;
            in_batch = 0;
            progress(done);
        }
    }
    flush(&mut batch, in_batch)?;
    progress(done);
    Ok(done)
}

/// Carries out the training queued by users' moves. Blocks.
#[derive(Debug, Clone)]
pub struct Trainer {
    store: MailStore,
    /// Per-account learning; when off, queued moves are dropped.
    pub learning: bool,
}

impl Trainer {
    /// A trainer on `store`.
    pub fn new(store: MailStore, learning: bool) -> Trainer {
        Trainer { store, learning }
    }

    /// Processes everything queued now; returns how many emails were
    /// trained. Each email is one transaction: re-checks its queue entry
    /// (so a later move wins), untrains a previous class, trains, records.
    pub fn run_once(&self) -> tern_store::Result<usize> {
        let kv = self.store.kv();
        let mut trained = 0;
        let accounts = kv.read(|tx| store_spam::pending_accounts(tx, 1000))?;
        for account in accounts {
            loop {
                let queued = kv.read(|tx| store_spam::pending(tx, account, 100))?;
                if queued.is_empty() {
                    break;
                }
                for (email_id, class) in queued {
                    let tokens = if self.learning {
                        self.tokens_of(account, email_id)?
                    } else {
                        None
                    };
                    let outcome = kv.transact(|tx| {
                        store_spam::train(tx, account, email_id, class, tokens.as_deref())
                    })?;
                    if outcome == Trained::Done && tokens.is_some() {
                        trained += 1;
                        let m = &super::METRICS;
                        m.add(match class {
                            Class::Spam => &m.trained_spam,
                            Class::Ham => &m.trained_ham,
                        });
                        tracing::debug!(account = %account, email = email_id, ?class, "trained from a move");
                    }
                }
            }
            kv.transact(|tx| store_spam::clear_flag_if_idle(tx, account))?;
        }
        Ok(trained)
    }

    /// The distinct tokens of a stored email, `None` if it is gone.
    fn tokens_of(&self, account: AccountId, id: u32) -> tern_store::Result<Option<Vec<u64>>> {
        let raw = self.store.kv().read(|tx| -> tern_store::Result<_> {
            let Some(meta) = email::get(tx, account, id)? else {
                return Ok(None);
            };
            blob::read(tx, &meta.blob)
        })?;
        Ok(raw.map(|raw| tokenize(&analyze(&raw))))
    }

    /// Runs [`Trainer::run_once`] every `interval` until `shutdown` is
    /// true.
    pub async fn run(self, interval: Duration, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        loop {
            let trainer = self.clone();
            match tokio::task::spawn_blocking(move || trainer.run_once()).await {
                Ok(Ok(n)) if n > 0 => tracing::info!(trained = n, "spam training from user moves"),
                Ok(Ok(_)) => {}
                Ok(Err(err)) => tracing::warn!(error = %err, "spam training failed"),
                Err(err) => tracing::error!(error = %err, "spam training panicked"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.wait_for(|&stop| stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPAM: &[u8] =
        b"From: a@spam.example\r\nSubject: cheap pills\r\n\r\nBuy cheap pills now\r\n";

    /// An account's model follows its training at once: the cached
    /// generation is dropped by the training's commit.
    #[test]
    fn an_accounts_model_follows_its_training() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        store.add_domain("here.test").unwrap();
        let a = store.create_account("a@here.test", "pw").unwrap();
        let b = store.create_account("b@here.test", "pw").unwrap();
        let models = Models::open(store.clone()).unwrap();
        let empty = models.account(a).unwrap();
        assert_eq!((empty.generation, empty.spam), (0, 0));
        assert_eq!(models.account(a).unwrap().spam, 0, "cached, untrained");
        for n in 1..=2 {
            train_messages(&store, Scope::Account(a), Class::Spam, [SPAM], |_| {}).unwrap();
            let model = models.account(a).unwrap();
            assert_eq!(model.spam, n, "training {n} is seen by the next message");
            assert!(model.generation > 0);
            assert_eq!(models.account(a).unwrap().generation, model.generation);
        }
        assert_eq!(models.account(b).unwrap().spam, 0, "b's model is its own");
    }
}
