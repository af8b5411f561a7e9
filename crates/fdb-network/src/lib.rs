//! The FoundationDB client network, started once per process.
//!
//! The `foundationdb` crate's `boot()` is `unsafe` because the network
//! thread must be stopped (its guard dropped) before the process exits.
//! [`Network::start`] makes that a value the caller owns: keep it alive for
//! as long as any FoundationDB database is used — `tern serve` holds it in
//! `main` — and drop it before returning from `main`. This is the only
//! `unsafe` in the workspace; everything else forbids it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};

#[cfg(feature = "foundationdb")]
use foundationdb::api::NetworkAutoStop;

#[cfg(feature = "foundationdb")]
static STARTED: AtomicBool = AtomicBool::new(false);
static RUNNING: AtomicBool = AtomicBool::new(false);

/// The running network thread. Dropping it stops the network; FoundationDB
/// cannot start it again in the same process.
pub struct Network {
    #[cfg(feature = "foundationdb")]
    _guard: NetworkAutoStop,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network").finish_non_exhaustive()
    }
}

/// Why the network could not start.
#[derive(Debug)]
pub enum StartError {
    /// It was started before in this process (FoundationDB allows once).
    AlreadyStarted,
    /// This build has no FoundationDB client (the `foundationdb` feature).
    NotBuilt,
    /// The client library refused (e.g. an API version it lacks).
    Fdb(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::AlreadyStarted => {
                f.write_str("the FoundationDB network was already started in this process")
            }
            StartError::NotBuilt => f.write_str(
                "this build of Tern has no FoundationDB client (feature `foundationdb`)",
            ),
            StartError::Fdb(message) => {
                write!(f, "cannot start the FoundationDB network: {message}")
            }
        }
    }
}

impl std::error::Error for StartError {}

impl Network {
    /// Without the `foundationdb` feature: always [`StartError::NotBuilt`].
    #[cfg(not(feature = "foundationdb"))]
    pub fn start() -> Result<Network, StartError> {
        Err(StartError::NotBuilt)
    }

    /// Selects the API version and starts the network thread.
    #[cfg(feature = "foundationdb")]
    pub fn start() -> Result<Network, StartError> {
        if STARTED.swap(true, Ordering::SeqCst) {
            return Err(StartError::AlreadyStarted);
        }
        let builder = foundationdb::api::FdbApiBuilder::default()
            .build()
            .map_err(|err| StartError::Fdb(err.to_string()))?;
        // SAFETY: the guard returned by `boot` is owned by the `Network`
        // we return, whose documented contract is to be dropped before the
        // process exits; `STARTED` ensures a single boot per process.
        #[allow(unsafe_code)]
        let guard = unsafe { builder.boot() }.map_err(|err| StartError::Fdb(err.to_string()))?;
        RUNNING.store(true, Ordering::SeqCst);
        Ok(Network { _guard: guard })
    }

    /// Whether a [`Network`] is alive now: databases may be opened.
    pub fn is_running() -> bool {
        RUNNING.load(Ordering::SeqCst)
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        RUNNING.store(false, Ordering::SeqCst);
    }
}
