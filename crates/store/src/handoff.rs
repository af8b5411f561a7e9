//! A reply slot between threads whose receiver parks at once.
//!
//! Committers and deliveries wait for a leader's answer on the blocking
//! pool, often twenty threads at a time on two cores: a channel that spins
//! and yields before parking (crossbeam's `recv`) burns the CPU the leader
//! needs. Here the receiver sleeps on a condition variable until the value
//! is set or the sender is dropped.
//!
//! The sender may give several values in turn (a lead hand-off, later the
//! outcome), each taken before the next is given: [`Sender::send`] replaces
//! a value not yet taken.

use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

struct Inner<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    value: Option<T>,
    /// The sender was dropped: no value will come after `value`.
    closed: bool,
}

/// The giving side; dropping it wakes a waiting receiver.
pub(crate) struct Sender<T>(Arc<Inner<T>>);

/// The taking side.
pub(crate) struct Receiver<T>(Arc<Inner<T>>);

/// The sender was dropped and no value is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Disconnected;

/// A new slot.
pub(crate) fn channel<T>() -> (Sender<T>, Receiver<T>) {
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            value: None,
            closed: false,
        }),
        ready: Condvar::new(),
    });
    (Sender(Arc::clone(&inner)), Receiver(inner))
}

impl<T> Sender<T> {
    /// Gives `value` and wakes the receiver.
    pub(crate) fn send(&self, value: T) {
        self.0.state.lock().value = Some(value);
        self.0.ready.notify_one();
    }

    /// Whether this sender gives to `receiver`.
    #[cfg(feature = "rocksdb")]
    pub(crate) fn feeds(&self, receiver: &Receiver<T>) -> bool {
        Arc::ptr_eq(&self.0, &receiver.0)
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.state.lock().closed = true;
        self.0.ready.notify_one();
    }
}

impl<T> Receiver<T> {
    /// Waits (parked) for the next value.
    pub(crate) fn recv(&self) -> Result<T, Disconnected> {
        let mut state = self.0.state.lock();
        loop {
            if let Some(value) = state.value.take() {
                return Ok(value);
            }
            if state.closed {
                return Err(Disconnected);
            }
            self.0.ready.wait(&mut state);
        }
    }

    /// The value given and not yet taken, if any; does not wait.
    #[cfg(any(test, feature = "rocksdb"))]
    pub(crate) fn try_recv(&self) -> Option<T> {
        self.0.state.lock().value.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_waiting_receiver_gets_values_in_turn_then_disconnected() {
        let (tx, rx) = channel::<u32>();
        let waiter = std::thread::spawn(move || {
            let first = rx.recv();
            let second = rx.recv();
            (first, second, rx.recv())
        });
        std::thread::sleep(Duration::from_millis(20));
        tx.send(1);
        // The second value is given after the first was taken.
        std::thread::sleep(Duration::from_millis(20));
        tx.send(2);
        std::thread::sleep(Duration::from_millis(20));
        drop(tx);
        assert_eq!(waiter.join().unwrap(), (Ok(1), Ok(2), Err(Disconnected)));
    }

    #[test]
    fn a_value_given_before_the_sender_dropped_is_still_received() {
        let (tx, rx) = channel::<&str>();
        assert_eq!(rx.try_recv(), None);
        tx.send("done");
        drop(tx);
        assert_eq!(rx.recv(), Ok("done"));
        assert_eq!(rx.recv(), Err(Disconnected));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    #[cfg(feature = "rocksdb")]
    fn a_sender_knows_its_receiver() {
        let (tx, rx) = channel::<u8>();
        let (_, other) = channel::<u8>();
        assert!(tx.feeds(&rx));
        assert!(!tx.feeds(&other));
    }

    #[test]
    fn try_recv_takes_without_waiting() {
        let (tx, rx) = channel::<u8>();
        tx.send(7);
        assert_eq!(rx.try_recv(), Some(7));
        assert_eq!(rx.try_recv(), None);
    }
}
