//! What every JMAP method handler receives and returns.
//!
//! A handler is a plain function `fn(&mut Ctx<'_>, Arguments) ->
//! MethodResult`: it gets the store, the authenticated account and the
//! request's limits and created ids, and returns the response arguments or a
//! method-level error (RFC 8620 section 3.6.2). Handlers do no I/O besides
//! store calls, so they are tested without sockets.

use std::collections::HashMap;

use serde_json::{Map, Value};
use tern_store::{AccountId, MailStore};

/// A method's arguments or response, as a JSON object.
pub type Arguments = Map<String, Value>;

/// The outcome of one method call.
pub type MethodResult = Result<Arguments, MethodError>;

/// Limits advertised in the session's core capability and enforced.
#[derive(Debug, Clone)]
pub struct Limits {
    /// maxSizeUpload, bytes.
    pub max_size_upload: u64,
    /// maxConcurrentUpload.
    pub max_concurrent_upload: usize,
    /// maxSizeRequest, bytes.
    pub max_size_request: usize,
    /// maxConcurrentRequests.
    pub max_concurrent_requests: usize,
    /// maxCallsInRequest.
    pub max_calls_in_request: usize,
    /// maxObjectsInGet.
    pub max_objects_in_get: usize,
    /// maxObjectsInSet.
    pub max_objects_in_set: usize,
    /// Largest change list returned by /changes when the client asks for
    /// more (or none).
    pub max_changes: usize,
    /// Largest page returned by /query when the client asks for more.
    pub max_query_limit: usize,
    /// What every EmailSubmission's message must pass before it is sent
    /// (sending rate, virus scan, spam score; `tern serve` plugs in the
    /// SMTP server's filter). `None`: nothing. Not advertised.
    pub submission_policy: Option<std::sync::Arc<dyn crate::submission::SubmissionPolicy>>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_size_upload: 50_000_000,
            max_concurrent_upload: 4,
            max_size_request: 10_000_000,
            max_concurrent_requests: 8,
            max_calls_in_request: 32,
            max_objects_in_get: 500,
            max_objects_in_set: 500,
            max_changes: 5_000,
            max_query_limit: 1_000,
            submission_policy: None,
        }
    }
}

/// Everything a method handler may use.
#[derive(Debug)]
pub struct Ctx<'a> {
    /// The mail store.
    pub store: &'a MailStore,
    /// The authenticated user's account (the only account it may access
    /// until sharing exists).
    pub user: AccountId,
    /// Request limits.
    pub limits: &'a Limits,
    /// Creation ids resolved so far in this request (`#id` → id), shared by
    /// every method call of the request (RFC 8620 section 5.3).
    pub created_ids: &'a mut HashMap<String, String>,
}

impl Ctx<'_> {
    /// Checks the `accountId` argument: it must be the user's own account.
    /// Returns the account.
    pub fn account(&self, args: &Arguments) -> Result<AccountId, MethodError> {
        match args.get("accountId") {
            Some(Value::String(s)) if s == &crate::id::account_id(self.user) => Ok(self.user),
            Some(Value::String(_)) => Err(MethodError::AccountNotFound),
            _ => Err(MethodError::invalid_arguments("accountId is required")),
        }
    }
}

/// A method-level error (RFC 8620 section 3.6.2 and the method sections).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MethodError {
    /// serverUnavailable
    ServerUnavailable,
    /// serverFail, with a description for the log (not the client).
    ServerFail(String),
    /// serverPartialFail
    ServerPartialFail,
    /// unknownMethod
    UnknownMethod,
    /// invalidArguments, with a description.
    InvalidArguments(String),
    /// invalidResultReference, with a description.
    InvalidResultReference(String),
    /// forbidden
    Forbidden,
    /// accountNotFound
    AccountNotFound,
    /// accountNotSupportedByMethod
    AccountNotSupportedByMethod,
    /// accountReadOnly
    AccountReadOnly,
    /// requestTooLarge (too many ids in get/set)
    RequestTooLarge,
    /// stateMismatch (ifInState)
    StateMismatch,
    /// cannotCalculateChanges
    CannotCalculateChanges,
    /// anchorNotFound
    AnchorNotFound,
    /// unsupportedSort
    UnsupportedSort,
    /// unsupportedFilter
    UnsupportedFilter(String),
    /// tooManyChanges (queryChanges)
    TooManyChanges,
    /// fromAccountNotFound (copy)
    FromAccountNotFound,
    /// fromAccountNotSupportedByMethod (copy)
    FromAccountNotSupportedByMethod,
}

impl MethodError {
    /// invalidArguments with a description.
    pub fn invalid_arguments(msg: impl Into<String>) -> Self {
        MethodError::InvalidArguments(msg.into())
    }

    /// The error's JMAP type string.
    pub fn type_name(&self) -> &'static str {
        match self {
            MethodError::ServerUnavailable => "serverUnavailable",
            MethodError::ServerFail(_) => "serverFail",
            MethodError::ServerPartialFail => "serverPartialFail",
            MethodError::UnknownMethod => "unknownMethod",
            MethodError::InvalidArguments(_) => "invalidArguments",
            MethodError::InvalidResultReference(_) => "invalidResultReference",
            MethodError::Forbidden => "forbidden",
            MethodError::AccountNotFound => "accountNotFound",
            MethodError::AccountNotSupportedByMethod => "accountNotSupportedByMethod",
            MethodError::AccountReadOnly => "accountReadOnly",
            MethodError::RequestTooLarge => "requestTooLarge",
            MethodError::StateMismatch => "stateMismatch",
            MethodError::CannotCalculateChanges => "cannotCalculateChanges",
            MethodError::AnchorNotFound => "anchorNotFound",
            MethodError::UnsupportedSort => "unsupportedSort",
            MethodError::UnsupportedFilter(_) => "unsupportedFilter",
            MethodError::TooManyChanges => "tooManyChanges",
            MethodError::FromAccountNotFound => "fromAccountNotFound",
            MethodError::FromAccountNotSupportedByMethod => "fromAccountNotSupportedByMethod",
        }
    }

    /// The error response arguments: `{"type": ..., "description"?: ...}`.
    pub fn to_arguments(&self) -> Arguments {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(self.type_name().into()));
        let description = match self {
            MethodError::InvalidArguments(d)
            | MethodError::InvalidResultReference(d)
            | MethodError::UnsupportedFilter(d) => Some(d.clone()),
            _ => None,
        };
        if let Some(d) = description {
            m.insert("description".into(), Value::String(d));
        }
        m
    }
}

impl From<tern_store::Error> for MethodError {
    fn from(e: tern_store::Error) -> Self {
        match e {
            tern_store::Error::CannotCalculateChanges => MethodError::CannotCalculateChanges,
            // More than one transaction may write (FoundationDB's 10 MB):
            // the client can split the call (e.g. fewer objects per /set).
            tern_store::Error::Kv(tern_store::kv::Error::TransactionTooLarge(n)) => {
                tracing::info!(bytes = n, "method call too large for one transaction");
                MethodError::RequestTooLarge
            }
            // Conflicts that outlasted every retry, or a transaction that
            // outlived the backend's history: the same call may succeed
            // later (RFC 8620 section 3.6.2, serverUnavailable).
            tern_store::Error::Kv(ref kv) if kv.is_retryable() => {
                tracing::warn!(error = %kv, "store busy in method");
                MethodError::ServerUnavailable
            }
            other => {
                tracing::error!(error = %other, "store error in method");
                MethodError::ServerFail(other.to_string())
            }
        }
    }
}

/// A per-object error in a /set response (RFC 8620 section 5.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetError {
    /// The SetError type (`invalidProperties`, `notFound`, `overQuota`, ...).
    pub kind: &'static str,
    /// A description for the client's developer.
    pub description: Option<String>,
    /// For invalidProperties: the offending properties.
    pub properties: Vec<String>,
}

impl SetError {
    /// A SetError of `kind`.
    pub fn new(kind: &'static str) -> Self {
        Self {
            kind,
            description: None,
            properties: Vec::new(),
        }
    }

    /// With a description.
    pub fn with_description(mut self, d: impl Into<String>) -> Self {
        self.description = Some(d.into());
        self
    }

    /// invalidProperties naming `props`.
    pub fn invalid_properties<I: IntoIterator<Item = S>, S: Into<String>>(props: I) -> Self {
        Self {
            kind: "invalidProperties",
            description: None,
            properties: props.into_iter().map(Into::into).collect(),
        }
    }

    /// The SetError object.
    pub fn to_value(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), Value::String(self.kind.into()));
        if let Some(d) = &self.description {
            m.insert("description".into(), Value::String(d.clone()));
        }
        if !self.properties.is_empty() {
            m.insert(
                "properties".into(),
                Value::Array(self.properties.iter().cloned().map(Value::String).collect()),
            );
        }
        Value::Object(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_errors_map_to_method_errors() {
        use tern_store::kv::Error as Kv;
        let cases = [
            (
                tern_store::Error::CannotCalculateChanges,
                "cannotCalculateChanges",
            ),
            (tern_store::Error::Kv(Kv::Conflict), "serverUnavailable"),
            (
                tern_store::Error::Kv(Kv::TransactionTooOld),
                "serverUnavailable",
            ),
            (
                tern_store::Error::Kv(Kv::Backend("disk".into())),
                "serverFail",
            ),
            (tern_store::Error::Invalid("x".into()), "serverFail"),
            (
                tern_store::Error::Kv(Kv::TransactionTooLarge(10_000_001)),
                "requestTooLarge",
            ),
        ];
        for (e, expected) in cases {
            let m: MethodError = e.into();
            assert_eq!(m.type_name(), expected);
            // serverFail's detail is for the log, not the client.
            assert!(m.to_arguments().get("description").is_none());
        }
    }
}
