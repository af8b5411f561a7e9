//! Connection admission: simultaneous connections in all and per IP, and
//! a per-IP rate of new connections (a fixed window).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::reply::Reply;

/// Why a connection was refused; each answers 421 and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Busy,
    TooManyFromIp,
    RateLimited,
}

impl Refusal {
    pub(crate) fn reply(self) -> Reply {
        match self {
            Refusal::Busy => Reply::new(421, [4, 3, 2], "Too many connections; try again later"),
            Refusal::TooManyFromIp => Reply::new(
                421,
                [4, 7, 0],
                "Too many connections from your address; try again later",
            ),
            Refusal::RateLimited => Reply::new(
                421,
                [4, 7, 0],
                "Connection rate limit exceeded; try again later",
            ),
        }
    }
}

#[derive(Debug)]
struct PerIp {
    active: usize,
    window_start: Instant,
    in_window: u32,
}

#[derive(Debug)]
struct Counts {
    total: usize,
    by_ip: HashMap<IpAddr, PerIp>,
}

/// Shared by every listener of a server.
#[derive(Debug)]
pub(crate) struct Limiter {
    max_total: usize,
    max_per_ip: usize,
    rate: u32,
    period: Duration,
    counts: Mutex<Counts>,
}

/// Holds a connection's place; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct Admitted {
    limiter: Arc<Limiter>,
    ip: IpAddr,
}

impl Limiter {
    pub(crate) fn new(max_total: usize, max_per_ip: usize, rate: u32, period: Duration) -> Self {
        Limiter {
            max_total,
            max_per_ip,
            rate,
            period,
            counts: Mutex::new(Counts {
                total: 0,
                by_ip: HashMap::new(),
            }),
        }
    }

    /// Admits a new connection from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr, now: Instant) -> Result<Admitted, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if counts.by_ip.len() > 10_000 {
            let period = self.period;
            counts
                .by_ip
                .retain(|_, e| e.active > 0 || now.duration_since(e.window_start) < period);
        }
        if counts.total >= self.max_total {
            return Err(Refusal::Busy);
        }
        let entry = counts.by_ip.entry(ip).or_insert(PerIp {
            active: 0,
            window_start: now,
            in_window: 0,
        });
        if now.duration_since(entry.window_start) >= self.period {
            entry.window_start = now;
            entry.in_window = 0;
        }
        if entry.in_window >= self.rate {
            return Err(Refusal::RateLimited);
        }
        entry.in_window += 1;
        if entry.active >= self.max_per_ip {
            return Err(Refusal::TooManyFromIp);
        }
        entry.active += 1;
        counts.total += 1;
        Ok(Admitted {
            limiter: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut counts = self
            .limiter
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(entry) = counts.by_ip.get_mut(&self.ip) {
            entry.active = entry.active.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_connections_and_rate() {
        let limiter = Arc::new(Limiter::new(100, 2, 4, Duration::from_secs(60)));
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let t0 = Instant::now();
        let a = limiter.admit(ip, t0).unwrap();
        let _b = limiter.admit(ip, t0).unwrap();
        assert_eq!(limiter.admit(ip, t0).unwrap_err(), Refusal::TooManyFromIp);
        let _c = limiter.admit(other, t0).unwrap();
        drop(a);
        let _d = limiter.admit(ip, t0).unwrap();
        // Four attempts in the window (one refused) used the rate up.
        assert_eq!(limiter.admit(ip, t0).unwrap_err(), Refusal::RateLimited);
        let later = t0 + Duration::from_secs(61);
        assert_eq!(
            limiter.admit(ip, later).unwrap_err(),
            Refusal::TooManyFromIp
        );
    }

    #[test]
    fn total_connections() {
        let limiter = Arc::new(Limiter::new(1, 10, 100, Duration::from_secs(60)));
        let t0 = Instant::now();
        let _a = limiter.admit("192.0.2.1".parse().unwrap(), t0).unwrap();
        assert_eq!(
            limiter.admit("192.0.2.2".parse().unwrap(), t0).unwrap_err(),
            Refusal::Busy
        );
    }
}
