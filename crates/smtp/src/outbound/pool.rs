//! Connection reuse: SMTP sessions left open after a clean transaction,
//! per destination domain and server address, for the next message to the
//! same place (as Postfix's connection cache does). A reused session
//! starts its transaction with RSET; one the server closed meanwhile is
//! dropped and a fresh one opened, at no cost to the message.
//!
//! Idle sessions count against the domain's connection limit
//! ([`super::OutboundConfig::per_domain`]): a delivery that opens a new
//! connection first closes idle ones of the domain (other addresses) so
//! that open connections never exceed the limit. Idle sessions are closed
//! (QUIT) after [`super::OutboundConfig::reuse_idle`], and never reused
//! once older than [`MAX_AGE`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::client::Session;

/// A session is not reused once this old (Postfix's
/// `smtp_connection_reuse_time_limit`).
pub const MAX_AGE: Duration = Duration::from_secs(300);

struct Idle {
    addr: SocketAddr,
    session: Session,
    since: Instant,
}

/// The idle sessions.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<String, Vec<Idle>>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n: usize = self.idle.lock().values().map(Vec::len).sum();
        f.debug_struct("Pool").field("idle", &n).finish()
    }
}

impl Pool {
    /// An idle session to `addr` for `domain`, if any. `room` is how many
    /// more connections the domain may have open (its free connection
    /// permits): when none is reusable, idle sessions of the domain beyond
    /// `room` are returned in the second place, to be closed before a new
    /// connection is opened.
    pub fn take(
        &self,
        domain: &str,
        addr: SocketAddr,
        room: usize,
        max_idle: Duration,
    ) -> (Option<Session>, Vec<Session>) {
        let mut idle = self.idle.lock();
        let Some(list) = idle.get_mut(domain) else {
            return (None, Vec::new());
        };
        let mut close = Vec::new();
        // Drop what is too old to reuse.
        let mut i = 0;
        while i < list.len() {
            if list[i].since.elapsed() >= max_idle || list[i].session.opened().elapsed() >= MAX_AGE
            {
                close.push(list.swap_remove(i).session);
            } else {
                i += 1;
            }
        }
        // The most recently used session to this address.
        let found = list
            .iter()
            .enumerate()
            .filter(|(_, s)| s.addr == addr)
            .max_by_key(|(_, s)| s.since)
            .map(|(i, _)| i);
        let session = match found {
            Some(i) => Some(list.swap_remove(i).session),
            None => {
                // A new connection is coming: keep the domain in its limit.
                list.sort_by_key(|s| std::cmp::Reverse(s.since));
                while list.len() > room {
                    close.push(list.pop().expect("not empty").session);
                }
                None
            }
        };
        if list.is_empty() {
            idle.remove(domain);
        }
        (session, close)
    }

    /// Keeps `session` (to `addr`, for `domain`) for reuse. Returns it when
    /// it cannot be kept: not clean, or too old.
    pub fn put(&self, domain: &str, addr: SocketAddr, session: Session) -> Option<Session> {
        if !session.reusable() || session.opened().elapsed() >= MAX_AGE {
            return Some(session);
        }
        self.idle
            .lock()
            .entry(domain.to_owned())
            .or_default()
            .push(Idle {
                addr,
                session,
                since: Instant::now(),
            });
        None
    }

    /// Removes and returns the sessions idle for `max_idle` or longer
    /// (every one when `max_idle` is zero).
    pub fn expired(&self, max_idle: Duration) -> Vec<Session> {
        let mut idle = self.idle.lock();
        let mut out = Vec::new();
        idle.retain(|_, list| {
            let mut i = 0;
            while i < list.len() {
                if list[i].since.elapsed() >= max_idle {
                    out.push(list.swap_remove(i).session);
                } else {
                    i += 1;
                }
            }
            !list.is_empty()
        });
        out
    }

    /// Idle sessions now.
    pub fn len(&self) -> usize {
        self.idle.lock().values().map(Vec::len).sum()
    }

    /// Whether no session is idle.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
