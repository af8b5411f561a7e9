//! Outbound protection: a compromised account must not spray mail.
//!
//! Per account, over a sliding hour: at most `messages_per_hour`
//! submissions and `recipients_per_hour` recipients (beyond: 451 4.7.1,
//! the client retries later). A submission that scores as spam is refused
//! (550 5.7.1) and counts as a strike; `max_strikes` strikes within an hour
//! block the account's submissions for `block_for` (451 4.7.1). Every
//! refusal is logged (account id, never addresses) and counted in
//! [`super::METRICS`].
//!
//! The state is in memory, per process: with several nodes each enforces
//! its own limits.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tern_store::AccountId;

use crate::reply::Reply;

/// Limits on what one account may send.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboundConfig {
    /// Submissions per account per hour; 0 = unlimited. Default 500.
    pub messages_per_hour: u32,
    /// Recipients per account per hour; 0 = unlimited. Default 2000.
    pub recipients_per_hour: u32,
    /// Score from which a submission is refused as spam. Default 8.
    pub spam_threshold: f64,
    /// Spam-scored submissions within an hour that block the account.
    /// Default 3.
    pub max_strikes: u32,
    /// How long a blocked account stays blocked. Default 1 hour.
    pub block_for: Duration,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            messages_per_hour: 500,
            recipients_per_hour: 2000,
            spam_threshold: 8.0,
            max_strikes: 3,
            block_for: Duration::from_secs(3600),
        }
    }
}

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct Window {
    /// (when, recipients) of accepted submissions in the last hour.
    sent: VecDeque<(Instant, u32)>,
    recipients: u64,
    /// Times of spam strikes in the last hour.
    strikes: VecDeque<Instant>,
    blocked_until: Option<Instant>,
}

impl Window {
    fn expire(&mut self, now: Instant) {
        while let Some(&(t, n)) = self.sent.front() {
            if now.duration_since(t) < HOUR {
                break;
            }
            self.sent.pop_front();
            self.recipients -= n as u64;
        }
        while let Some(&t) = self.strikes.front() {
            if now.duration_since(t) < HOUR {
                break;
            }
            self.strikes.pop_front();
        }
        if self.blocked_until.is_some_and(|u| now >= u) {
            self.blocked_until = None;
        }
    }

    fn idle(&self) -> bool {
        self.sent.is_empty() && self.strikes.is_empty() && self.blocked_until.is_none()
    }
}

/// Why a submission is not taken now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Over the message or recipient rate.
    RateLimited,
    /// Blocked after spam strikes.
    Blocked,
}

impl Throttle {
    /// The SMTP reply (451 4.7.1).
    pub fn reply(self) -> Reply {
        super::Refusal::from(self).reply()
    }
}

/// The per-account sending state.
#[derive(Debug)]
pub struct OutboundGuard {
    config: OutboundConfig,
    windows: Mutex<HashMap<AccountId, Window>>,
}

impl OutboundGuard {
    /// A guard with these limits.
    pub fn new(config: OutboundConfig) -> OutboundGuard {
        OutboundGuard {
            config,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The limits.
    pub fn config(&self) -> &OutboundConfig {
        &self.config
    }

    /// Admits a submission of `recipients` recipients by `account` at
    /// `now`, counting it, or says why not.
    pub fn admit(&self, account: AccountId, recipients: u32, now: Instant) -> Result<(), Throttle> {
        let mut windows = self.windows.lock();
        if windows.len() > 10_000 {
            windows.retain(|_, w| {
                w.expire(now);
                !w.idle()
            });
        }
        let w = windows.entry(account).or_default();
        w.expire(now);
        let refused = if w.blocked_until.is_some() {
            Some(Throttle::Blocked)
        } else if (self.config.messages_per_hour > 0
            && w.sent.len() as u64 >= self.config.messages_per_hour as u64)
            || (self.config.recipients_per_hour > 0
                && w.recipients + recipients as u64 > self.config.recipients_per_hour as u64)
        {
            Some(Throttle::RateLimited)
        } else {
            None
        };
        match refused {
            Some(t) => {
                let m = &super::METRICS;
                m.add(match t {
                    Throttle::RateLimited => &m.outbound_rate_limited,
                    Throttle::Blocked => &m.outbound_blocked,
                });
                tracing::warn!(account = %account, reason = ?t, "submission throttled");
                Err(t)
            }
            None => {
                w.sent.push_back((now, recipients));
                w.recipients += recipients as u64;
                Ok(())
            }
        }
    }

    /// Accounts whose submissions are refused at `now`: (blocked after
    /// spam, at a rate limit), for the metrics endpoint.
    pub fn throttled(&self, now: Instant) -> (usize, usize) {
        let mut windows = self.windows.lock();
        let (mut blocked, mut limited) = (0, 0);
        for w in windows.values_mut() {
            w.expire(now);
            if w.blocked_until.is_some() {
                blocked += 1;
            } else if (self.config.messages_per_hour > 0
                && w.sent.len() as u64 >= self.config.messages_per_hour as u64)
                || (self.config.recipients_per_hour > 0
                    && w.recipients >= self.config.recipients_per_hour as u64)
            {
                limited += 1;
            }
        }
        (blocked, limited)
    }

    /// Records that a submission of `account` scored as spam; returns
    /// whether the account is now blocked.
    pub fn strike(&self, account: AccountId, now: Instant) -> bool {
        let mut windows = self.windows.lock();
        let w = windows.entry(account).or_default();
        w.expire(now);
        w.strikes.push_back(now);
        if self.config.max_strikes > 0 && w.strikes.len() as u32 >= self.config.max_strikes {
            w.blocked_until = Some(now + self.config.block_for);
            tracing::warn!(account = %account, strikes = w.strikes.len(), "account's sending blocked after spam");
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_and_recipient_rates_slide_over_an_hour() {
        let g = OutboundGuard::new(OutboundConfig {
            messages_per_hour: 3,
            recipients_per_hour: 10,
            ..OutboundConfig::default()
        });
        let a = AccountId(1);
        let t0 = Instant::now();
        for i in 0..3 {
            g.admit(a, 1, t0 + Duration::from_secs(i)).unwrap();
        }
        assert_eq!(
            g.admit(a, 1, t0 + Duration::from_secs(10)),
            Err(Throttle::RateLimited)
        );
        // Another account is not affected.
        g.admit(AccountId(2), 1, t0).unwrap();
        assert_eq!(g.throttled(t0 + Duration::from_secs(10)), (0, 1));
        // An hour after the first, one slot is free again.
        g.admit(a, 1, t0 + HOUR + Duration::from_millis(500))
            .unwrap();
        // Recipients: 9 more would exceed 10 in the window of the last three.
        let b = AccountId(3);
        g.admit(b, 8, t0).unwrap();
        assert_eq!(g.admit(b, 3, t0), Err(Throttle::RateLimited));
        g.admit(b, 2, t0).unwrap();
    }

    #[test]
    fn spam_strikes_block_then_the_block_expires() {
        let g = OutboundGuard::new(OutboundConfig {
            max_strikes: 2,
            block_for: Duration::from_secs(60),
            ..OutboundConfig::default()
        });
        let a = AccountId(1);
        let t0 = Instant::now();
        assert!(!g.strike(a, t0));
        g.admit(a, 1, t0).unwrap();
        assert!(g.strike(a, t0 + Duration::from_secs(1)));
        assert_eq!(
            g.admit(a, 1, t0 + Duration::from_secs(2)),
            Err(Throttle::Blocked)
        );
        assert_eq!(Throttle::Blocked.reply().code, 451);
        assert_eq!(g.throttled(t0 + Duration::from_secs(2)), (1, 0));
        assert_eq!(g.throttled(t0 + Duration::from_secs(62)), (0, 0));
        g.admit(a, 1, t0 + Duration::from_secs(62)).unwrap();
    }
}
