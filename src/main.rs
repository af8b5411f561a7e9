//! The `tern` binary: configuration, CLI and the wiring of the services.

mod admin;
mod cli;
mod config;
mod reindex;
mod serve;
mod spam;

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

// mimalloc instead of glibc's malloc: a JMAP request builds and drops many
// small JSON values, and glibc's allocator (arena locking, chunk
// consolidation) took about 40 % of a first-screen request's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tracing_subscriber::EnvFilter;

use crate::admin::Response;
use crate::cli::{Cli, Command};
use crate::config::{Config, LogConfig, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns transparent huge pages off for this process (`serve` and
/// `reindex`, the commands that load the store hard). mimalloc asks for
/// them for its arenas (and the kernel may give them to RocksDB's), and a
/// fault on such a region makes the kernel zero a whole 2 MB page of which
/// a server thread then uses a small part: under the SMTP benchmark's load,
/// page faults took 9 % of the machine's CPU with huge pages and 2–3 %
/// without (BENCHMARKS.md, SMTP, session 8). Failing (a kernel without
/// the setting) only costs that.
fn disable_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(err) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::warn!(error = %err, "cannot turn transparent huge pages off");
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { demo } => {
            init_logging(&config.log, config.log.level.as_str())?;
            disable_huge_pages();
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            runtime.block_on(serve::run(config, serve::ServeOptions { demo }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Account(command) => {
            // Commands print their result; logs are for warnings unless asked.
            init_logging(&config.log, "warn")?;
            admin_command(&config, command.into_request()?)
        }
        Command::Domain(command) => {
            init_logging(&config.log, "warn")?;
            let request = command.into_request(&config);
            admin_command(&config, request)
        }
        Command::Queue(command) => {
            init_logging(&config.log, "warn")?;
            admin_command(&config, command.into_request())
        }
        Command::Token(command) => {
            init_logging(&config.log, "warn")?;
            admin_command(&config, command.into_request())
        }
        Command::Reindex { account } => {
            init_logging(&config.log, "warn")?;
            disable_huge_pages();
            reindex::run(&config, account.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Spam(command) => {
            init_logging(&config.log, "warn")?;
            spam::run(&config, command)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs go to stderr. `TERN_LOG` (env-filter syntax) overrides `level`.
fn init_logging(log: &LogConfig, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("TERN_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(&directives).context("bad TERN_LOG")?
        }
        _ => EnvFilter::new(level),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

fn admin_command(config: &Config, request: admin::Request) -> anyhow::Result<ExitCode> {
    let (route, response) = admin::client::run(&config.data_dir, request)?;
    tracing::debug!(?route, "admin command answered");
    match response {
        Response::Done { message } => println!("{message}"),
        Response::Text { text } => print!("{text}"),
        Response::Domains { domains } => {
            for domain in domains {
                println!("{domain}");
            }
        }
        Response::Accounts { accounts } => {
            let width = accounts.iter().map(|a| a.address.len()).max().unwrap_or(0);
            let width = width.max("ADDRESS".len());
            println!(
                "{:>6}  {:<width$}  {:>12}  {:>12}",
                "ID", "ADDRESS", "USED", "QUOTA"
            );
            for account in accounts {
                println!(
                    "{:>6}  {:<width$}  {:>12}  {:>12}",
                    account.id,
                    account.address,
                    human_size(account.used_bytes),
                    human_size(account.quota_bytes)
                );
            }
        }
        Response::TokenCreated { token, secret } => {
            // The secret alone on stdout, so scripts can capture it; the
            // rest on stderr.
            eprintln!(
                "token {} created for {}; the secret below is shown only now:",
                token.id, token.address
            );
            println!("{secret}");
        }
        Response::Tokens { tokens } => {
            let width = tokens.iter().map(|t| t.address.len()).max().unwrap_or(0);
            let width = width.max("ADDRESS".len());
            println!(
                "{:<12}  {:<width$}  {:<20}  NAME",
                "ID", "ADDRESS", "CREATED"
            );
            for t in tokens {
                println!(
                    "{:<12}  {:<width$}  {:<20}  {}",
                    t.id,
                    t.address,
                    utc_time(t.created),
                    t.name
                );
            }
        }
        Response::Error { message, .. } => {
            eprintln!("error: {message}");
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_time(secs: i64) -> String {
    tern_store::compose::utc_date(secs)
}

/// `1536` → `1.5 KiB`.
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_time() {
        assert_eq!(super::utc_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::utc_time(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn human_size() {
        assert_eq!(super::human_size(0), "0 B");
        assert_eq!(super::human_size(1023), "1023 B");
        assert_eq!(super::human_size(1536), "1.5 KiB");
        assert_eq!(super::human_size(10 << 30), "10.0 GiB");
    }
}
