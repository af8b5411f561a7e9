//! Change notification for push: one notifier task per account with
//! listeners, shared by every push channel of that account (WebSocket
//! connections, event-source streams, push subscriptions).
//!
//! A notifier watches the account's change counter with a store watch
//! ([`tern_store::kv::Kv::watch`]). Every transaction that writes to the
//! account rewrites that key, whoever commits it — SMTP delivery, a JMAP
//! method, an admin command, another server node on a shared store — so
//! notifications never depend on the code that writes. After each wake
//! the notifier reads the account's per-type states and publishes them
//! in a `tokio::sync::watch` channel: listeners see only the newest value,
//! so a burst of commits coalesces. The first change after a quiet period
//! is published at once; later ones at most once per coalescing window.
//!
//! States are compared by the change id that set them: a type changed
//! since an [`AccountState`] with change counter `c` exactly when its
//! state is above `c`. A push state (the WebSocket `pushState`, the event
//! source's event id) is therefore just the account's change counter.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tern_store::keys::{self, family};
use tern_store::{AccountId, DataType, MailStore, changes};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::id;

/// A pushed data type: its JMAP name and where its state comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The state of a store data type.
    Type(DataType),
    /// Quota: the newest of the Email and Quota states, with the limit.
    Quota,
}

/// Every type pushed, by JMAP name. The order is fixed (indexes into
/// [`AccountState::states`]).
pub(crate) const PUSHED: [(&str, Source); 8] = [
    ("Mailbox", Source::Type(DataType::Mailbox)),
    ("Email", Source::Type(DataType::Email)),
    ("Thread", Source::Type(DataType::Thread)),
    ("Identity", Source::Type(DataType::Identity)),
    ("EmailSubmission", Source::Type(DataType::EmailSubmission)),
    ("VacationResponse", Source::Type(DataType::VacationResponse)),
    ("EmailDelivery", Source::Type(DataType::EmailDelivery)),
    ("Quota", Source::Quota),
];

/// The states of one account at one change id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AccountState {
    /// The account.
    pub account: AccountId,
    /// The account's change counter when read.
    pub change: u64,
    /// The change id of each type's state, in [`PUSHED`] order.
    pub states: [u64; PUSHED.len()],
    /// The Quota state string (it also holds the quota limit).
    pub quota_state: String,
}

impl AccountState {
    /// Reads the account's states. Blocks.
    pub fn read(store: &MailStore, account: AccountId) -> tern_store::Result<Self> {
        store.kv().read(|tx| {
            let change = changes::account_change(tx, account)?;
            let mut states = [0u64; PUSHED.len()];
            for (slot, (_, source)) in states.iter_mut().zip(PUSHED) {
                *slot = match source {
                    Source::Type(t) => changes::state(tx, account, t)?,
                    Source::Quota => changes::state(tx, account, DataType::Email)?
                        .max(changes::state(tx, account, DataType::Quota)?),
                };
            }
            Ok(Self {
                account,
                change,
                states,
                quota_state: crate::quota::state_in(tx, account)?,
            })
        })
    }

    /// The state string of type `i` (as its /get would return it).
    pub fn state_string(&self, i: usize) -> String {
        match PUSHED[i].1 {
            Source::Type(_) => id::state(self.states[i]),
            Source::Quota => self.quota_state.clone(),
        }
    }

    /// The push state: the account's change counter.
    pub fn push_state(&self) -> String {
        id::state(self.change)
    }
}

/// The index in [`PUSHED`] of a type name.
pub(crate) fn type_index(name: &str) -> Option<usize> {
    PUSHED.iter().position(|(n, _)| *n == name)
}

/// Which types a listener wants and what it was last told: decides what
/// a new [`AccountState`] means to it.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    /// Wanted types as a bit set over [`PUSHED`].
    wanted: u16,
    /// The change counter of the state the listener last knew.
    since: Option<u64>,
    /// Whether `since` came from the client (a push state) and has not
    /// been compared yet: it may come from another store.
    from_client: bool,
    /// The Quota state the listener last knew (it changes with the limit
    /// too, which no change id records).
    quota_state: Option<String>,
}

impl Filter {
    /// A filter for `types` (`None`: every type); unknown names are
    /// ignored (the client may ask for types of capabilities this server
    /// lacks). `since` is a push state the client already has.
    pub fn new<'a>(types: Option<impl IntoIterator<Item = &'a str>>, since: Option<u64>) -> Self {
        let wanted = match types {
            None => (1u16 << PUSHED.len()) - 1,
            Some(names) => names
                .into_iter()
                .filter_map(type_index)
                .fold(0, |acc, i| acc | (1 << i)),
        };
        Self {
            wanted,
            since,
            from_client: since.is_some(),
            quota_state: None,
        }
    }

    /// Whether the listener knows a state to compare against.
    pub fn has_baseline(&self) -> bool {
        self.since.is_some()
    }

    /// The StateChange `changed` entry for this listener if `state` holds
    /// changes it wants, and makes `state` the new baseline. Without a
    /// baseline, `state` only becomes the baseline. A state older than
    /// the baseline is ignored, except that a client's push state above the
    /// account's counter (one from another store) counts every type as
    /// changed.
    pub fn changes(&mut self, state: &AccountState) -> Option<Map<String, Value>> {
        let Some(since) = self.since else {
            self.since = Some(state.change);
            self.quota_state = Some(state.quota_state.clone());
            return None;
        };
        let foreign = since > state.change;
        if foreign && !self.from_client {
            return None;
        }
        self.from_client = false;
        let mut changed = Map::new();
        for (i, (name, source)) in PUSHED.iter().enumerate() {
            if self.wanted & (1 << i) == 0 {
                continue;
            }
            let limit_moved = *source == Source::Quota
                && self
                    .quota_state
                    .as_ref()
                    .is_some_and(|q| *q != state.quota_state);
            if foreign || state.states[i] > since || limit_moved {
                changed.insert((*name).to_string(), json!(state.state_string(i)));
            }
        }
        self.since = Some(state.change);
        self.quota_state = Some(state.quota_state.clone());
        (!changed.is_empty()).then_some(changed)
    }
}

/// A StateChange object for one account.
pub(crate) fn state_change(account: AccountId, changed: Map<String, Value>) -> Map<String, Value> {
    let mut accounts = Map::new();
    accounts.insert(id::account_id(account), Value::Object(changed));
    let mut out = Map::new();
    out.insert("@type".into(), json!("StateChange"));
    out.insert("changed".into(), Value::Object(accounts));
    out
}

/// What a listener receives: the newest states (`None` until first read).
pub(crate) type Listener = watch::Receiver<Option<Arc<AccountState>>>;

type Publisher = Arc<watch::Sender<Option<Arc<AccountState>>>>;

/// The notifiers of every account with listeners.
#[derive(Debug)]
pub(crate) struct Notifier {
    store: MailStore,
    window: Duration,
    shutdown: watch::Receiver<bool>,
    accounts: Mutex<HashMap<AccountId, Publisher>>,
}

impl Notifier {
    /// Notifiers over `store` publishing at most once per `window` during
    /// bursts, ending when `shutdown` turns true.
    pub fn new(store: MailStore, window: Duration, shutdown: watch::Receiver<bool>) -> Arc<Self> {
        Arc::new(Self {
            store,
            window,
            shutdown,
            accounts: Mutex::new(HashMap::new()),
        })
    }

    /// Listens to `account`'s changes, starting its notifier task if it
    /// has none. Must be called inside a Tokio runtime.
    pub fn subscribe(self: &Arc<Self>, account: AccountId) -> Listener {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(publisher) = map.get(&account) {
            return publisher.subscribe();
        }
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        map.insert(account, tx.clone());
        tokio::spawn(self.clone().run(account, tx));
        rx
    }

    /// How many accounts have a notifier task.
    #[cfg(test)]
    pub fn active(&self) -> usize {
        self.accounts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Drops the account's notifier if nobody listens; under the map's
    /// lock, so that a concurrent [`Notifier::subscribe`] either finds a
    /// live task or starts a new one.
    fn retire(&self, account: AccountId, tx: &Publisher) -> bool {
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if tx.receiver_count() > 0 {
            return false;
        }
        if map.get(&account).is_some_and(|p| Arc::ptr_eq(p, tx)) {
            map.remove(&account);
        }
        true
    }

    async fn run(self: Arc<Self>, account: AccountId, tx: Publisher) {
        let key = keys::acct(account, family::CHANGE_COUNTER).build();
        let mut shutdown = self.shutdown.clone();
        let mut last_read: Option<Instant> = None;
        loop {
            if *shutdown.borrow() {
                break;
            }
            // Coalesce: at most one read per window while changes stream in.
            if let Some(at) = last_read {
                tokio::time::sleep_until(at + self.window).await;
            }
            // Watch first, then read: a commit between the two fires the
            // watch, so none is missed.
            let watch = self.store.kv().watch(&key);
            let store = self.store.clone();
            last_read = Some(Instant::now());
            match tokio::task::spawn_blocking(move || AccountState::read(&store, account)).await {
                Ok(Ok(state)) => {
                    tx.send_if_modified(|current| {
                        if current.as_deref() == Some(&state) {
                            return false;
                        }
                        *current = Some(Arc::new(state));
                        true
                    });
                }
                Ok(Err(e)) => {
                    tracing::warn!(%account, error = %e, "push: cannot read account states");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Err(_) => break,
            }
            tokio::select! {
                woke = watch => {
                    if woke.is_err() {
                        break;
                    }
                }
                _ = tx.closed() => {
                    if self.retire(account, &tx) {
                        return;
                    }
                    last_read = None;
                }
                _ = shutdown.changed() => break,
            }
        }
        let mut map = self.accounts.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(&account).is_some_and(|p| Arc::ptr_eq(p, &tx)) {
            map.remove(&account);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(change: u64, states: [u64; 8]) -> AccountState {
        AccountState {
            account: AccountId(1),
            change,
            quota_state: format!("{}-100", states[7]),
            states,
        }
    }

    #[test]
    fn filter_reports_types_changed_after_its_baseline() {
        let mut f = Filter::new(Some(["Email", "Mailbox", "CalendarEvent"]), None);
        assert_eq!(f.changes(&state(5, [5, 4, 4, 0, 0, 0, 4, 4])), None);
        // Only Thread changed (not wanted): nothing, but the baseline moves.
        assert_eq!(f.changes(&state(6, [5, 4, 6, 0, 0, 0, 4, 4])), None);
        let c = f.changes(&state(7, [7, 7, 7, 0, 0, 0, 7, 7])).unwrap();
        assert_eq!(
            Value::Object(c),
            json!({"Mailbox": "7", "Email": "7"}),
            "unknown names are ignored, unwanted types left out"
        );
        assert_eq!(f.changes(&state(7, [7, 7, 7, 0, 0, 0, 7, 7])), None);
    }

    #[test]
    fn a_push_state_resumes_and_a_foreign_one_reports_everything() {
        let mut f = Filter::new(None::<[&str; 0]>, Some(3));
        let c = f.changes(&state(9, [2, 9, 9, 0, 0, 0, 9, 9])).unwrap();
        assert_eq!(
            Value::Object(c),
            json!({"Email": "9", "Thread": "9", "EmailDelivery": "9", "Quota": "9-100"})
        );
        let mut f = Filter::new(None::<[&str; 0]>, Some(50));
        let c = f.changes(&state(9, [2, 9, 9, 0, 0, 0, 9, 9])).unwrap();
        assert_eq!(c.len(), PUSHED.len());
        // A baseline the server read itself: an older snapshot (from a
        // notifier that has not caught up) is no change.
        let mut f = Filter::new(None::<[&str; 0]>, None);
        f.changes(&state(9, [2, 9, 9, 0, 0, 0, 9, 9]));
        assert_eq!(f.changes(&state(8, [2, 8, 8, 0, 0, 0, 8, 8])), None);
        let c = f.changes(&state(10, [10, 9, 9, 0, 0, 0, 9, 9])).unwrap();
        assert_eq!(Value::Object(c), json!({"Mailbox": "10"}));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_by_any_writer_notifies_every_listener_once_per_burst() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        store.add_domain("example.com").unwrap();
        let account = store.create_account("a@example.com", "pw").unwrap();
        let other = store.create_account("b@example.com", "pw").unwrap();
        let (_stop, stop_rx) = watch::channel(false);
        let notifier = Notifier::new(store.clone(), Duration::from_millis(20), stop_rx);
        let mut a1 = notifier.subscribe(account);
        let mut a2 = notifier.subscribe(account);
        let mut b = notifier.subscribe(other);
        assert_eq!(notifier.active(), 2, "one task per account");
        a1.wait_for(Option::is_some).await.unwrap();
        b.wait_for(Option::is_some).await.unwrap();
        let before = a1.borrow_and_update().clone().unwrap();
        a2.borrow_and_update();
        b.borrow_and_update();

        // A write that knows nothing of push: a raw store transaction
        // through the change log (as any other writer or node would do).
        let raw = b"From: x@example.org\r\nSubject: hi\r\n\r\nbody\r\n";
        let burst = 20;
        let s2 = store.clone();
        tokio::task::spawn_blocking(move || {
            for _ in 0..burst {
                s2.deliver(raw, &[tern_store::Recipient::inbox(account)])
                    .unwrap();
            }
        })
        .await
        .unwrap();
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            tokio::select! {
                r = a1.changed() => { r.unwrap(); seen += 1; }
                _ = tokio::time::sleep_until(deadline) => panic!("no notification"),
            }
            let now = a1.borrow_and_update().clone().unwrap();
            if now.change >= before.change + burst {
                let i = type_index("Email").unwrap();
                assert_eq!(now.states[i], now.change);
                break;
            }
        }
        assert!(seen < burst, "{seen} notifications for {burst} commits");
        assert!(a2.has_changed().unwrap(), "every listener is told");
        assert!(!b.has_changed().unwrap(), "other accounts are not");
        drop((a1, a2, b));
        let deadline = Instant::now() + Duration::from_secs(5);
        while notifier.active() > 0 {
            // A notifier ends once its last listener is gone.
            assert!(Instant::now() < deadline, "notifier tasks linger");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
