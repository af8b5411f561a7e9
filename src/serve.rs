//! `tern serve`: open the store, start every service, stop them together.
//!
//! Each service is a future built from the config and a [`MailStore`]
//! handle that runs until its [`Shutdown`] fires, then finishes its work in
//! flight and returns. [`Services`] spawns them and, on SIGTERM/SIGINT (or
//! when one service fails), signals all of them and waits, bounded by
//! [`SHUTDOWN_GRACE`]. Adding a listener is one `services.spawn(..)` call in
//! [`run`].

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tern_store::MailStore;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::server::AdminListener;
use crate::config::Config;

/// How long services get to finish their work in flight after a stop
/// signal: longer than the JMAP server's 30-second drain, so that it, not
/// an abort, ends slow requests.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(35);

/// The demo account `tern serve --demo` ensures.
pub const DEMO_ADDRESS: &str = "demo@localhost";
pub const DEMO_PASSWORD: &str = "demo";

#[derive(Debug, Clone, Copy, Default)]
pub struct ServeOptions {
    /// Ensure the `localhost` domain and the demo account exist.
    pub demo: bool,
}

/// The shutdown signal a service watches. Cheap to clone. The protocol
/// crates take the inner `watch::Receiver<bool>` (true = stop).
#[derive(Debug, Clone)]
pub struct Shutdown(pub watch::Receiver<bool>);

impl Shutdown {
    /// Resolves once shutdown has begun (at once if it already has).
    pub async fn wait(&mut self) {
        // An error means the sender is gone, which also means: stop.
        let _ = self.0.wait_for(|&stopping| stopping).await;
    }
}

/// The running services and their common shutdown signal.
#[derive(Debug)]
struct Services {
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    stop: watch::Sender<bool>,
}

impl Services {
    fn new() -> Services {
        Services {
            tasks: JoinSet::new(),
            stop: watch::Sender::new(false),
        }
    }

    fn shutdown(&self) -> Shutdown {
        Shutdown(self.stop.subscribe())
    }

    fn spawn<F>(&mut self, name: &'static str, service: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        tracing::debug!(service = name, "starting");
        self.tasks.spawn(async move { (name, service.await) });
    }

    /// Resolves when a service ends before shutdown: that is a failure.
    async fn first_exit(&mut self) -> anyhow::Error {
        match self.tasks.join_next().await {
            Some(Ok((name, Ok(())))) => anyhow::anyhow!("service {name} stopped unexpectedly"),
            Some(Ok((name, Err(err)))) => err.context(format!("service {name} failed")),
            Some(Err(err)) => anyhow::anyhow!("a service panicked: {err}"),
            None => std::future::pending().await,
        }
    }

    /// Signals every service to stop and waits up to `grace` for them.
    /// Returns whether all of them stopped cleanly.
    async fn stop(mut self, grace: Duration) -> bool {
        self.stop.send_replace(true);
        let mut clean = true;
        let drained = tokio::time::timeout(grace, async {
            while let Some(joined) = self.tasks.join_next().await {
                match joined {
                    Ok((name, Ok(()))) => tracing::debug!(service = name, "stopped"),
                    Ok((name, Err(err))) => {
                        tracing::error!(
                            service = name,
                            error = format!("{err:#}"),
                            "failed while stopping"
                        );
                        clean = false;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "a service panicked while stopping");
                        clean = false;
                    }
                }
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                remaining = self.tasks.len(),
                "services did not stop within {}s; aborting them",
                grace.as_secs()
            );
            self.tasks.shutdown().await;
            clean = false;
        }
        clean
    }
}

/// Runs the server until SIGTERM/SIGINT. Returns `Ok` after a clean stop.
pub async fn run(config: Config, options: ServeOptions) -> anyhow::Result<()> {
    // Install the handlers first: a signal from now on stops us cleanly.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let data_dir = config.data_dir.clone();
    let store = blocking(move || {
        MailStore::open(&data_dir).with_context(|| {
            format!(
                "cannot open the store in {} (is another tern process using it?)",
                data_dir.display()
            )
        })
    })
    .await?;
    tracing::info!(data_dir = %config.data_dir.display(), "store opened");

    let mut domains = config.domains.clone();
    if options.demo && !domains.iter().any(|d| d == "localhost") {
        domains.push("localhost".to_owned());
    }
    let setup_store = store.clone();
    blocking(move || ensure_setup(&setup_store, &domains, options.demo)).await?;
    // Configured domains get a DKIM key on first start.
    let (keys_store, dkim) = (store.clone(), config.dkim.clone());
    let key_domains = config.domains.clone();
    blocking(move || {
        for domain in &key_domains {
            let made = crate::admin::sending::ensure_dkim_key(
                &keys_store,
                domain,
                dkim.algorithm,
                &dkim.selector,
            )
            .map_err(|e| anyhow::anyhow!("cannot make a DKIM key for {domain}: {e}"))?;
            if made {
                tracing::info!(%domain, "DKIM key made; `tern domain dns` prints its record");
            }
        }
        Ok(())
    })
    .await?;

    // One filter (spam, virus, sending limits) for SMTP and JMAP
    // submissions alike: an account's sending rate counts both.
    let smtp = config.smtp_config();
    let filter = tern_smtp::spam::Filter::load(&smtp, store.clone())
        .await
        .context("spam and virus filter")?;

    // The full-text index, opened before JMAP starts so that its text
    // filters, SearchSnippet/get and `tern reindex` over the admin socket
    // (all through `SearchIndex::for_store`) share this handle and its
    // configured options.
    let (search_store, search_options) = (store.clone(), config.search_options());
    let search = blocking(move || {
        let index = tern_search::SearchIndex::for_store_with(&search_store, search_options)
            .context("cannot open the search index")?;
        // A new index beside existing mail is rebuilt by the indexer.
        tern_search::schedule_if_created(&search_store, &index)
            .context("cannot schedule the search index rebuild")?;
        Ok(index)
    })
    .await?;

    let mut services = Services::new();
    let admin = AdminListener::bind(&config.data_dir)?;
    let admin_path = admin.path().to_owned();
    services.spawn("admin", admin.serve(store.clone(), services.shutdown()));
    let mut jmap = config.jmap_config();
    // Session URLs must be absolute and reachable: never 0.0.0.0.
    jmap.base_url = Some(public_base_url(&config));
    jmap.limits.submission_policy = Some(std::sync::Arc::new(SubmissionFilter {
        filter: filter.clone(),
        runtime: tokio::runtime::Handle::current(),
    }));
    let (jmap_store, stop) = (store.clone(), services.shutdown().0);
    let jmap_addr = jmap.listen;
    services.spawn("jmap", async move {
        tern_jmap::serve(jmap, jmap_store, stop)
            .await
            .with_context(|| format!("JMAP on {jmap_addr}"))
    });
    let (smtp_store, smtp_filter, stop) = (store.clone(), filter.clone(), services.shutdown().0);
    services.spawn("smtp", async move {
        tern_smtp::SmtpServer::bind_with_filter(smtp, smtp_store, smtp_filter)
            .await
            .context("SMTP")?
            .run(stop)
            .await
            .context("SMTP")
    });
    // Spam training from users' moves into and out of Junk.
    let (learning, learn_store, stop) = (
        config.spam.enabled && config.spam.learning,
        store.clone(),
        services.shutdown().0,
    );
    services.spawn("spam-learning", async move {
        tern_smtp::spam::learner(learn_store, learning, Duration::from_secs(1), stop).await;
        Ok(())
    });

    let outbound = tern_smtp::outbound::Outbound::new(config.outbound_config(), store.clone())
        .context("outbound delivery")?;
    if let Some(addr) = config.listen.metrics {
        match tern_smtp::outbound::metrics::bind(addr).await {
            Ok(listener) => {
                let (metrics, metrics_store) = (outbound.metrics(), store.clone());
                let (guard, stop) = (filter.outbound_guard(), services.shutdown().0);
                services.spawn("metrics", async move {
                    tern_smtp::outbound::metrics::serve(
                        listener,
                        metrics_store,
                        metrics,
                        Some(guard),
                        stop,
                    )
                    .await
                    .with_context(|| format!("metrics on {addr}"))
                });
            }
            Err(err) => {
                tracing::warn!(%addr, error = %err, "metrics endpoint not started");
            }
        }
    }
    let stop = services.shutdown().0;
    services.spawn("outbound", async move {
        outbound.run(stop).await.context("outbound delivery")
    });

    // The indexer drains the store's index queue (written with every
    // delivery and destroy) into the search index.
    let (index_store, index, stop) = (store.clone(), search.clone(), services.shutdown().0);
    let indexer_config = config.indexer_config();
    services.spawn("search-indexer", async move {
        tern_search::Indexer::with_config(index_store, index, indexer_config)
            .run(stop)
            .await
            .context("search indexer")
    });

    // Change-log retention: each account keeps its last `changes_kept`
    // changes; trimmed a minute after start, then hourly.
    if config.jmap.changes_kept > 0 {
        let (keep, trim_store, mut stop) = (
            config.jmap.changes_kept,
            store.clone(),
            services.shutdown().0,
        );
        services.spawn("change-log-retention", async move {
            let mut next = Duration::from_secs(60);
            loop {
                tokio::select! {
                    _ = stop.wait_for(|&s| s) => return Ok(()),
                    _ = tokio::time::sleep(next) => {}
                }
                next = Duration::from_secs(3600);
                let store = trim_store.clone();
                let trimmed = tokio::task::spawn_blocking(move || trim_change_logs(&store, keep))
                    .await
                    .context("change-log retention")?;
                match trimmed {
                    Ok(n) => tracing::debug!(accounts = n, "change logs trimmed"),
                    Err(err) => tracing::warn!(error = %err, "trimming change logs failed"),
                }
            }
        });
    }

    println!("{}", banner(&config, &admin_path, options));
    tracing::info!(hostname = %config.hostname, "tern is running");

    let outcome = tokio::select! {
        _ = sigterm.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
        _ = sigint.recv() => { tracing::info!("SIGINT: stopping"); Ok(()) }
        err = services.first_exit() => Err(err),
    };
    let clean = services.stop(SHUTDOWN_GRACE).await;
    // The last handle: dropping it closes the store, which flushes.
    blocking(move || {
        drop(search);
        drop(store);
        Ok(())
    })
    .await?;
    tracing::info!("stopped");
    outcome?;
    anyhow::ensure!(clean, "services did not stop cleanly");
    Ok(())
}

/// JMAP EmailSubmissions through the SMTP server's filter: the same
/// sending limits, virus scan and outbound spam score as SMTP submissions.
#[derive(Debug)]
struct SubmissionFilter {
    filter: tern_smtp::spam::Filter,
    runtime: tokio::runtime::Handle,
}

impl tern_jmap::submission::SubmissionPolicy for SubmissionFilter {
    fn check(
        &self,
        account: tern_store::AccountId,
        recipients: usize,
        raw: &[u8],
    ) -> Result<Option<Vec<u8>>, tern_jmap::submission::Refused> {
        use tern_jmap::submission::Refused;
        let recipients = u32::try_from(recipients).unwrap_or(u32::MAX);
        // JMAP handlers run on the blocking pool, where waiting is fine.
        self.runtime
            .block_on(self.filter.check_submission(account, recipients, raw))
            .map_err(|r| match r.kind {
                tern_smtp::spam::RefusalKind::RateLimited => Refused::RateLimited(r.description),
                _ => Refused::Forbidden(r.description),
            })
    }
}

async fn blocking<T, F>(f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .context("a blocking task panicked")?
}

/// Adds the configured domains the store lacks; with `demo`, ensures the
/// demo account exists and has the demo password.
fn ensure_setup(store: &MailStore, domains: &[String], demo: bool) -> anyhow::Result<()> {
    let existing = store.list_domains().context("cannot list domains")?;
    for domain in domains {
        if !existing.contains(domain) {
            match store.add_domain(domain) {
                Ok(()) | Err(tern_store::Error::AlreadyExists { .. }) => {}
                Err(err) => return Err(err).context(format!("cannot add domain {domain}")),
            }
            tracing::info!(%domain, "domain added from the config");
        }
    }
    if demo {
        match store.create_account(DEMO_ADDRESS, DEMO_PASSWORD) {
            Ok(id) => tracing::info!(%id, "demo account created"),
            // It exists: reset its password so the printed credentials work.
            Err(tern_store::Error::AlreadyExists { .. }) => store
                .set_password(DEMO_ADDRESS, DEMO_PASSWORD)
                .context("cannot reset the demo account's password")?,
            Err(err) => return Err(err).context("cannot create the demo account"),
        }
    }
    Ok(())
}

/// What `tern serve` prints once it runs: how to reach it.
fn banner(config: &Config, admin_path: &std::path::Path, options: ServeOptions) -> String {
    let l = &config.listen;
    let mut out = format!(
        "Tern {} is running (data in {}).\n\
         \x20 JMAP session:  {}\n\
         \x20 SMTP (MX):     {} (unauthenticated; local domains only)\n\
         \x20 submission:    {} (STARTTLS, then AUTH PLAIN/LOGIN)\n",
        env!("CARGO_PKG_VERSION"),
        config.data_dir.display(),
        session_url(config),
        l.smtp,
        l.submission,
    );
    if let Some(addr) = l.submissions {
        out.push_str(&format!("  submissions:   {addr} (implicit TLS)\n"));
    }
    out.push_str(&format!(
        "  admin socket:  {} (used by `tern account …` and `tern domain …`)\n",
        admin_path.display()
    ));
    if options.demo {
        out.push_str(&format!(
            "  demo account:  {DEMO_ADDRESS}, password {DEMO_PASSWORD:?}\n"
        ));
    }
    out.push_str("Stop with Ctrl-C or SIGTERM.");
    out
}

/// The JMAP session URL a client would use: under `jmap.base_url` when set.
fn session_url(config: &Config) -> String {
    format!("{}/.well-known/jmap", public_base_url(config))
}

/// `jmap.base_url`, or the listener's address (the hostname when it
/// listens on every interface).
fn public_base_url(config: &Config) -> String {
    if let Some(url) = &config.jmap.base_url {
        return url.trim_end_matches('/').to_owned();
    }
    let addr = config.listen.jmap;
    let scheme = if config.tls.cert.is_some() {
        "https"
    } else {
        "http"
    };
    let host = if addr.ip().is_unspecified() {
        config.hostname.clone()
    } else {
        match addr {
            SocketAddr::V4(v4) => v4.ip().to_string(),
            SocketAddr::V6(v6) => format!("[{}]", v6.ip()),
        }
    };
    format!("{scheme}://{host}:{}", addr.port())
}

/// Keeps every account's change log to its last `keep` changes; answers
/// how many accounts had records dropped.
fn trim_change_logs(store: &MailStore, keep: u64) -> tern_store::Result<usize> {
    let mut trimmed = 0;
    for account in store.list_accounts()? {
        let n = store
            .kv()
            .transact(|tx| tern_store::changes::retain_latest(tx, account.id, keep))?;
        trimmed += usize::from(n > 0);
    }
    Ok(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_store::{DataType, Recipient, changes};

    #[test]
    fn trimming_drops_old_changes_of_every_account_with_a_long_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(dir.path()).unwrap();
        store.add_domain("example.com").unwrap();
        let a = store.create_account("a@example.com", "pw").unwrap();
        let b = store.create_account("b@example.com", "pw").unwrap();
        let email_state = |acct| {
            store
                .kv()
                .read(|tx| changes::state(tx, acct, DataType::Email))
                .unwrap()
        };
        let before = (email_state(a), email_state(b));
        for i in 0..3 {
            let raw = format!("From: x@example.org\r\nSubject: {i}\r\n\r\nbody\r\n");
            store
                .deliver(raw.as_bytes(), &[Recipient::inbox(a), Recipient::inbox(b)])
                .unwrap();
        }
        let last = store
            .kv()
            .read(|tx| changes::account_change(tx, a))
            .unwrap();
        assert_eq!(trim_change_logs(&store, last + 1).unwrap(), 0);
        assert_eq!(trim_change_logs(&store, 1).unwrap(), 2);
        for (acct, old) in [(a, before.0), (b, before.1)] {
            let since = store
                .kv()
                .read(|tx| changes::changes(tx, acct, DataType::Email, old, 10));
            assert!(
                matches!(since, Err(tern_store::Error::CannotCalculateChanges)),
                "{since:?}"
            );
            let now = email_state(acct);
            assert!(
                store
                    .kv()
                    .read(|tx| changes::changes(tx, acct, DataType::Email, now, 10))
                    .is_ok()
            );
        }
    }

    #[test]
    fn session_url_for_defaults_and_production() {
        let mut config = Config::default();
        assert_eq!(
            session_url(&config),
            "http://127.0.0.1:8080/.well-known/jmap"
        );
        config.hostname = "mx.example.com".into();
        config.listen.jmap = "0.0.0.0:443".parse().unwrap();
        assert_eq!(
            session_url(&config),
            "http://mx.example.com:443/.well-known/jmap"
        );
        config.listen.jmap = "[::1]:8080".parse().unwrap();
        assert_eq!(session_url(&config), "http://[::1]:8080/.well-known/jmap");
    }

    #[test]
    fn banner_tells_how_to_reach_every_listener() {
        let mut config = Config::default();
        let text = banner(
            &config,
            std::path::Path::new("data/admin.sock"),
            ServeOptions { demo: true },
        );
        assert!(text.contains("JMAP session:  http://127.0.0.1:8080/.well-known/jmap"));
        assert!(text.contains("SMTP (MX):     127.0.0.1:2525"));
        assert!(text.contains("submission:    127.0.0.1:5870"));
        assert!(!text.contains("submissions:"));
        assert!(text.contains("demo@localhost, password \"demo\""));

        config.listen.submissions = Some("127.0.0.1:4650".parse().unwrap());
        config.jmap.base_url = Some("https://mail.example.com/".into());
        let text = banner(
            &config,
            std::path::Path::new("data/admin.sock"),
            ServeOptions { demo: false },
        );
        assert!(text.contains("submissions:   127.0.0.1:4650 (implicit TLS)"));
        assert!(text.contains("JMAP session:  https://mail.example.com/.well-known/jmap"));
        assert!(!text.contains("demo account"));
    }

    #[tokio::test]
    async fn stop_waits_for_services_and_bounds_the_wait() {
        let mut services = Services::new();
        let mut shutdown = services.shutdown();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        services.spawn("polite", async move {
            shutdown.wait().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = done_tx.send(());
            Ok(())
        });
        assert!(services.stop(Duration::from_secs(5)).await);
        done_rx
            .await
            .expect("the service finished its work before stop returned");

        let mut services = Services::new();
        services.spawn("stubborn", std::future::pending());
        assert!(!services.stop(Duration::from_millis(50)).await);
    }

    #[tokio::test]
    async fn a_failing_service_is_reported() {
        let mut services = Services::new();
        services.spawn("broken", async { anyhow::bail!("port taken") });
        let err = services.first_exit().await;
        assert!(format!("{err:#}").contains("service broken failed: port taken"));
    }
}
