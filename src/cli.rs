//! Command-line arguments.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};

use crate::admin::Request;

/// Tern, a JMAP mail server.
#[derive(Debug, Parser)]
#[command(name = "tern", version)]
pub struct Cli {
    /// TOML config file (default: built-in defaults, data in ./data).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server until SIGTERM or Ctrl-C.
    Serve {
        /// Also ensure the domain `localhost` and the account
        /// demo@localhost (password "demo") exist.
        #[arg(long)]
        demo: bool,
    },
    /// Manage accounts (works whether or not the server runs).
    #[command(subcommand)]
    Account(AccountCommand),
    /// Manage local domains (works whether or not the server runs).
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Manage app tokens: Bearer credentials for JMAP (works whether or
    /// not the server runs).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Inspect and manage the outbound queue (works whether or not the
    /// server runs).
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Rebuild the full-text search index from the store, with a progress
    /// bar (works whether or not the server runs).
    Reindex {
        /// Only this account's index (default: every account).
        #[arg(long, value_name = "ADDRESS")]
        account: Option<String>,
    },
    /// Spam filter: train the classifier (`tern spam train --spam DIR
    /// --ham DIR [--account ADDRESS]`).
    #[command(subcommand)]
    Spam(crate::spam::SpamCommand),
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Create an account; its domain must be local.
    Add {
        /// The account's address, also its login.
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
    /// List accounts with their usage.
    List,
    /// Delete an account and all its mail.
    Remove {
        /// The account's address.
        address: String,
    },
    /// Set an account's password.
    Passwd {
        /// The account's address.
        address: String,
        #[command(flatten)]
        password: PasswordArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum DomainCommand {
    /// Add a local domain with a DKIM key, and print the DNS records to
    /// publish (MX, SPF, DKIM, DMARC).
    Add {
        /// The domain, e.g. example.com.
        domain: String,
        /// The DKIM key's algorithm (default: `[dkim] algorithm`).
        #[arg(long, value_enum)]
        dkim: Option<DkimArg>,
    },
    /// Print the DNS records a local domain publishes.
    Dns {
        /// The domain.
        domain: String,
    },
    /// List local domains.
    List,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum DkimArg {
    /// Ed25519-SHA256 (RFC 8463).
    Ed25519,
    /// RSA-SHA256, 2048 bits.
    Rsa,
}

#[derive(Debug, Subcommand)]
pub enum QueueCommand {
    /// List queued messages.
    List {
        /// Only the error queue (messages held for an operator).
        #[arg(long)]
        errors: bool,
    },
    /// Show a message's envelope and each recipient's status.
    Show {
        /// The queue id (hex, from `tern queue list`).
        id: String,
    },
    /// Try a message now (also releases it from the error queue).
    Retry {
        /// The queue id.
        id: String,
    },
    /// Remove a message from the queue without notifying its sender.
    Cancel {
        /// The queue id.
        id: String,
    },
}

impl QueueCommand {
    pub fn into_request(self) -> Request {
        match self {
            QueueCommand::List { errors } => Request::QueueList {
                errors_only: errors,
            },
            QueueCommand::Show { id } => Request::QueueShow { id },
            QueueCommand::Retry { id } => Request::QueueRetry { id },
            QueueCommand::Cancel { id } => Request::QueueCancel { id },
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token for an account and print its secret (shown once).
    Create {
        /// The account's address.
        address: String,
        /// A label to recognise the token by in `tern token list`.
        #[arg(long, value_name = "LABEL")]
        name: Option<String>,
    },
    /// List tokens (id, account, label, creation time), never secrets.
    List {
        /// Only this account's tokens.
        address: Option<String>,
    },
    /// Revoke a token by the id `tern token list` shows; it stops working
    /// at once.
    Revoke {
        /// The token's id.
        id: String,
    },
}

impl TokenCommand {
    pub fn into_request(self) -> Request {
        match self {
            TokenCommand::Create { address, name } => Request::TokenCreate { address, name },
            TokenCommand::List { address } => Request::TokenList { address },
            TokenCommand::Revoke { id } => Request::TokenRevoke { id },
        }
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct PasswordArgs {
    /// The password (visible to other local users in the process list;
    /// prefer --password-stdin).
    #[arg(long, value_name = "PW")]
    password: Option<String>,
    /// Read the password from the first line of standard input.
    #[arg(long)]
    password_stdin: bool,
}

impl PasswordArgs {
    fn resolve(self) -> anyhow::Result<String> {
        let password = match self.password {
            Some(password) => password,
            None => {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("cannot read the password from standard input")?;
                line.trim_end_matches(['\n', '\r']).to_owned()
            }
        };
        if password.is_empty() {
            bail!("the password must not be empty");
        }
        Ok(password)
    }
}

impl AccountCommand {
    pub fn into_request(self) -> anyhow::Result<Request> {
        Ok(match self {
            AccountCommand::Add { address, password } => Request::AccountAdd {
                address,
                password: password.resolve()?,
            },
            AccountCommand::List => Request::AccountList {},
            AccountCommand::Remove { address } => Request::AccountRemove { address },
            AccountCommand::Passwd { address, password } => Request::AccountPasswd {
                address,
                password: password.resolve()?,
            },
        })
    }
}

impl DomainCommand {
    pub fn into_request(self, config: &crate::config::Config) -> Request {
        use crate::config::DkimKind;
        match self {
            DomainCommand::Add { domain, dkim } => Request::DomainSetup {
                domain,
                dkim: match dkim {
                    Some(DkimArg::Ed25519) => DkimKind::Ed25519,
                    Some(DkimArg::Rsa) => DkimKind::Rsa,
                    None => config.dkim.algorithm,
                },
                selector: config.dkim.selector.clone(),
                hostname: config.hostname.clone(),
            },
            DomainCommand::Dns { domain } => Request::DomainDns {
                domain,
                hostname: config.hostname.clone(),
            },
            DomainCommand::List => Request::DomainList {},
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tern").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn config_goes_before_or_after_the_command() {
        for args in [
            &["--config", "t.toml", "serve"][..],
            &["serve", "--config", "t.toml"][..],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.config, Some(PathBuf::from("t.toml")));
            assert!(matches!(cli.command, Command::Serve { demo: false }));
        }
    }

    #[test]
    fn account_add_needs_exactly_one_password_source() {
        let cli = parse(&["account", "add", "a@example.com", "--password", "pw"]).unwrap();
        let Command::Account(command) = cli.command else {
            panic!("not an account command");
        };
        assert_eq!(
            command.into_request().unwrap(),
            Request::AccountAdd {
                address: "a@example.com".into(),
                password: "pw".into()
            }
        );
        assert!(parse(&["account", "add", "a@example.com"]).is_err());
        assert!(
            parse(&[
                "account",
                "add",
                "a@example.com",
                "--password",
                "pw",
                "--password-stdin"
            ])
            .is_err()
        );
    }

    #[test]
    fn token_commands() {
        let cli = parse(&["token", "create", "a@example.com", "--name", "phone"]).unwrap();
        let Command::Token(command) = cli.command else {
            panic!("not a token command");
        };
        assert_eq!(
            command.into_request(),
            Request::TokenCreate {
                address: "a@example.com".into(),
                name: Some("phone".into())
            }
        );
        let Command::Token(command) = parse(&["token", "list"]).unwrap().command else {
            panic!("not a token command");
        };
        assert_eq!(command.into_request(), Request::TokenList { address: None });
        assert!(parse(&["token", "revoke"]).is_err());
    }

    #[test]
    fn empty_password_is_refused() {
        let cli = parse(&["account", "passwd", "a@example.com", "--password", ""]).unwrap();
        let Command::Account(command) = cli.command else {
            panic!("not an account command");
        };
        assert!(command.into_request().is_err());
    }
}
