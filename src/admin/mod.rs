//! Administration: accounts and domains.
//!
//! RocksDB lets one process open a database, so the CLI cannot simply open
//! the store while `tern serve` runs. Instead the server listens on a unix
//! socket, `<data_dir>/admin.sock` (mode 0600), speaking newline-delimited
//! JSON: one [`Request`] per line in, one [`Response`] per line out. The CLI
//! ([`client::run`]) sends its command there when the socket accepts a
//! connection, and otherwise opens the store itself. Either way the command
//! runs through [`execute`], so both paths behave the same.

pub mod client;
pub mod sending;
pub mod server;

use serde::{Deserialize, Serialize};
use tern_store::MailStore;

use crate::config::DkimKind;

/// The socket's file name inside the data directory.
pub const SOCKET_NAME: &str = "admin.sock";

/// One administrative command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    AccountAdd {
        address: String,
        password: String,
    },
    // `{}` rather than unit variants: serde ignores unknown fields next to
    // the tag of a unit variant, and these should be refused like the rest.
    AccountList {},
    AccountRemove {
        address: String,
    },
    AccountPasswd {
        address: String,
        password: String,
    },
    DomainAdd {
        domain: String,
    },
    DomainList {},
    /// Create an app token; the answer holds its secret, the only time
    /// the secret is ever shown.
    TokenCreate {
        address: String,
        #[serde(default)]
        name: Option<String>,
    },
    /// Tokens of one account, or all.
    TokenList {
        #[serde(default)]
        address: Option<String>,
    },
    TokenRevoke {
        id: String,
    },
    /// `tern domain add`: the domain, a DKIM key, the DNS records.
    DomainSetup {
        domain: String,
        dkim: DkimKind,
        selector: String,
        hostname: String,
    },
    /// `tern domain dns`: the DNS records to publish.
    DomainDns {
        domain: String,
        hostname: String,
    },
    QueueList {
        errors_only: bool,
    },
    QueueShow {
        id: String,
    },
    QueueRetry {
        id: String,
    },
    QueueCancel {
        id: String,
    },
    /// `tern spam train`: train messages read from these files.
    SpamTrain {
        /// "spam" or "ham".
        class: String,
        /// The account whose model to train; none: the global model.
        #[serde(default)]
        account: Option<String>,
        paths: Vec<String>,
    },
    /// `tern reindex`: rebuild the search index of one account (by
    /// address) or of all. The server answers with progress lines
    /// ([`crate::reindex::ProgressLine`]) before the final answer.
    SearchReindex {
        #[serde(default)]
        account: Option<String>,
    },
}

/// The answer to one [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Done {
        message: String,
    },
    Accounts {
        accounts: Vec<AccountRow>,
    },
    Domains {
        domains: Vec<String>,
    },
    /// A token just created, with its secret.
    TokenCreated {
        token: TokenRow,
        secret: String,
    },
    Tokens {
        tokens: Vec<TokenRow>,
    },
    /// Lines to print as they are.
    Text {
        text: String,
    },
    Error {
        kind: ErrorKind,
        message: String,
    },
}

/// An app token as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRow {
    /// Public id (what `tern token revoke` takes).
    pub id: String,
    pub address: String,
    pub name: String,
    /// Creation time, unix seconds.
    pub created: i64,
}

impl From<tern_store::account::TokenInfo> for TokenRow {
    fn from(info: tern_store::account::TokenInfo) -> TokenRow {
        TokenRow {
            id: info.id,
            address: info.address,
            name: info.label,
            created: info.created,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountRow {
    pub id: String,
    pub address: String,
    pub quota_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    AlreadyExists,
    NotFound,
    UnknownDomain,
    /// The request itself is malformed (bad JSON, empty password, …).
    Invalid,
    /// The store failed; the server's log has the details.
    Internal,
}

impl Response {
    fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response::Error {
            kind,
            message: message.into(),
        }
    }
}

/// Runs one command against the store. Blocks (store commits fsync): async
/// callers run it on the blocking pool.
pub fn execute(store: &MailStore, request: Request) -> Response {
    match request {
        Request::SpamTrain {
            class,
            account,
            paths,
        } => crate::spam::execute_train(store, &class, account.as_deref(), &paths),
        Request::SearchReindex { account } => crate::reindex::execute(store, account.as_deref()),
        Request::AccountAdd { address, password } => {
            if password.is_empty() {
                return Response::error(ErrorKind::Invalid, "the password must not be empty");
            }
            match store.create_account(&address, &password) {
                Ok(id) => {
                    tracing::debug!(%address, %id, "account created");
                    tracing::info!(%id, "account created");
                    Response::Done {
                        message: format!("account {address} created (id {id})"),
                    }
                }
                Err(err) => store_error(err, "account", &address),
            }
        }
        Request::AccountList {} => match store.list_accounts() {
            Ok(accounts) => Response::Accounts {
                accounts: accounts
                    .into_iter()
                    .map(|info| AccountRow {
                        id: info.id.to_string(),
                        address: info.address,
                        quota_bytes: info.quota_bytes,
                        used_bytes: info.used_bytes,
                    })
                    .collect(),
            },
            Err(err) => store_error(err, "account", ""),
        },
        Request::AccountRemove { address } => match store.remove_account(&address) {
            Ok(()) => {
                tracing::debug!(%address, "account removed");
                tracing::info!("account removed");
                Response::Done {
                    message: format!("account {address} removed"),
                }
            }
            Err(err) => store_error(err, "account", &address),
        },
        Request::AccountPasswd { address, password } => {
            if password.is_empty() {
                return Response::error(ErrorKind::Invalid, "the password must not be empty");
            }
            match store.set_password(&address, &password) {
                Ok(()) => {
                    tracing::debug!(%address, "password changed");
                    tracing::info!("account password changed");
                    Response::Done {
                        message: format!("password of {address} changed"),
                    }
                }
                Err(err) => store_error(err, "account", &address),
            }
        }
        Request::DomainAdd { domain } => match store.add_domain(&domain) {
            Ok(()) => {
                tracing::info!(%domain, "domain added");
                Response::Done {
                    message: format!("domain {domain} added"),
                }
            }
            Err(err) => store_error(err, "domain", &domain),
        },
        Request::DomainSetup {
            domain,
            dkim,
            selector,
            hostname,
        } => sending::domain_setup(store, &domain, dkim, &selector, &hostname),
        Request::DomainDns { domain, hostname } => sending::domain_dns(store, &domain, &hostname),
        Request::QueueList { errors_only } => sending::queue_list(store, errors_only),
        Request::QueueShow { id } => sending::queue_show(store, &id),
        Request::QueueRetry { id } => sending::queue_retry(store, &id),
        Request::QueueCancel { id } => sending::queue_cancel(store, &id),
        Request::DomainList {} => match store.list_domains() {
            Ok(domains) => Response::Domains { domains },
            Err(err) => store_error(err, "domain", ""),
        },
        Request::TokenCreate { address, name } => {
            match store.create_token(&address, name.as_deref().unwrap_or("")) {
                Ok((secret, info)) => {
                    tracing::info!(token = %info.id, account = %info.account, "app token created");
                    Response::TokenCreated {
                        token: info.into(),
                        secret,
                    }
                }
                Err(err) => store_error(err, "account", &address),
            }
        }
        Request::TokenList { address } => match store.list_tokens(address.as_deref()) {
            Ok(tokens) => Response::Tokens {
                tokens: tokens.into_iter().map(TokenRow::from).collect(),
            },
            Err(err) => store_error(err, "account", address.as_deref().unwrap_or("")),
        },
        Request::TokenRevoke { id } => match store.revoke_token(&id) {
            Ok(info) => {
                tracing::info!(token = %info.id, account = %info.account, "app token revoked");
                Response::Done {
                    message: format!("token {} revoked", info.id),
                }
            }
            Err(err) => store_error(err, "token", &id),
        },
    }
}

/// Maps a store error to the protocol's kinds. `what` and `name` say which
/// object the command was about, for the message.
fn store_error(err: tern_store::Error, what: &str, name: &str) -> Response {
    use tern_store::Error;
    match err {
        Error::AlreadyExists { .. } => Response::error(
            ErrorKind::AlreadyExists,
            format!("{what} {name} already exists"),
        ),
        Error::NotFound { .. } => {
            Response::error(ErrorKind::NotFound, format!("{what} {name} not found"))
        }
        Error::UnknownDomain { .. } => Response::error(
            ErrorKind::UnknownDomain,
            format!("{name}: the domain is not local (add it with `tern domain add`)"),
        ),
        Error::Invalid(detail) => Response::error(ErrorKind::Invalid, format!("invalid: {detail}")),
        err => {
            tracing::error!(error = %err, "admin command failed in the store");
            Response::error(ErrorKind::Internal, format!("store error: {err}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, MailStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = MailStore::open(&dir.path().join("data")).unwrap();
        (dir, store)
    }

    fn done(response: Response) {
        assert!(
            matches!(response, Response::Done { .. }),
            "expected Done, got {response:?}"
        );
    }

    fn error_kind(response: Response) -> ErrorKind {
        match response {
            Response::Error { kind, .. } => kind,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    fn add(address: &str, password: &str) -> Request {
        Request::AccountAdd {
            address: address.into(),
            password: password.into(),
        }
    }

    #[test]
    fn request_wire_format() {
        let line = serde_json::to_string(&add("a@example.com", "pw")).unwrap();
        assert_eq!(
            line,
            r#"{"op":"account_add","address":"a@example.com","password":"pw"}"#
        );
        let parsed: Request = serde_json::from_str(r#"{"op":"domain_list"}"#).unwrap();
        assert_eq!(parsed, Request::DomainList {});
        assert!(serde_json::from_str::<Request>(r#"{"op":"domain_list","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"op":"drop_tables"}"#).is_err());
    }

    #[test]
    fn response_wire_format() {
        let response = Response::error(ErrorKind::NotFound, "account x not found");
        let line = serde_json::to_string(&response).unwrap();
        assert_eq!(
            line,
            r#"{"result":"error","kind":"not_found","message":"account x not found"}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), response);
    }

    #[test]
    fn account_lifecycle() {
        let (_dir, store) = store();
        assert_eq!(
            error_kind(execute(&store, add("a@example.com", "pw1"))),
            ErrorKind::UnknownDomain
        );
        done(execute(
            &store,
            Request::DomainAdd {
                domain: "example.com".into(),
            },
        ));
        assert_eq!(
            execute(&store, Request::DomainList {}),
            Response::Domains {
                domains: vec!["example.com".into()]
            }
        );
        done(execute(&store, add("a@example.com", "pw1")));
        assert_eq!(
            error_kind(execute(&store, add("a@example.com", "pw1"))),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            error_kind(execute(&store, add("b@example.com", ""))),
            ErrorKind::Invalid
        );

        let Response::Accounts { accounts } = execute(&store, Request::AccountList {}) else {
            panic!("expected accounts");
        };
        assert_eq!(accounts.len(), 1);
        assert_eq!(accounts[0].address, "a@example.com");
        let id = store.authenticate("a@example.com", "pw1").unwrap().unwrap();
        assert_eq!(accounts[0].id, id.to_string());

        done(execute(
            &store,
            Request::AccountPasswd {
                address: "a@example.com".into(),
                password: "pw2".into(),
            },
        ));
        assert_eq!(store.authenticate("a@example.com", "pw1").unwrap(), None);
        assert_eq!(
            store.authenticate("a@example.com", "pw2").unwrap(),
            Some(id)
        );

        done(execute(
            &store,
            Request::AccountRemove {
                address: "a@example.com".into(),
            },
        ));
        assert_eq!(
            error_kind(execute(
                &store,
                Request::AccountRemove {
                    address: "a@example.com".into(),
                },
            )),
            ErrorKind::NotFound
        );
        assert_eq!(
            execute(&store, Request::AccountList {}),
            Response::Accounts { accounts: vec![] }
        );
        assert_eq!(store.authenticate("a@example.com", "pw2").unwrap(), None);
    }

    #[test]
    fn token_lifecycle() {
        let (_dir, store) = store();
        store.add_domain("example.com").unwrap();
        store.create_account("a@example.com", "pw").unwrap();
        let parsed: Request =
            serde_json::from_str(r#"{"op":"token_create","address":"a@example.com"}"#).unwrap();
        assert_eq!(
            parsed,
            Request::TokenCreate {
                address: "a@example.com".into(),
                name: None
            }
        );
        let Response::TokenCreated { token, secret } = execute(
            &store,
            Request::TokenCreate {
                address: "a@example.com".into(),
                name: Some("laptop".into()),
            },
        ) else {
            panic!("expected a token");
        };
        assert_eq!(token.name, "laptop");
        assert_eq!(token.address, "a@example.com");
        assert!(store.authenticate_token(&secret).unwrap().is_some());
        assert_eq!(
            execute(&store, Request::TokenList { address: None }),
            Response::Tokens {
                tokens: vec![token.clone()]
            }
        );
        assert_eq!(
            error_kind(execute(
                &store,
                Request::TokenCreate {
                    address: "nobody@example.com".into(),
                    name: None
                }
            )),
            ErrorKind::NotFound
        );
        done(execute(
            &store,
            Request::TokenRevoke {
                id: token.id.clone(),
            },
        ));
        assert_eq!(store.authenticate_token(&secret).unwrap(), None);
        assert_eq!(
            error_kind(execute(&store, Request::TokenRevoke { id: token.id })),
            ErrorKind::NotFound
        );
        assert_eq!(
            error_kind(execute(&store, Request::TokenRevoke { id: "xyz".into() })),
            ErrorKind::Invalid
        );
    }
}
