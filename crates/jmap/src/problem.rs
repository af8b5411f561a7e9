//! Request-level errors as RFC 7807 problem details (RFC 8620 section
//! 3.6.1).

use hyper::StatusCode;
use serde_json::{Map, Value, json};

/// A request-level error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// HTTP status.
    pub status: StatusCode,
    /// Problem type URI.
    pub kind: &'static str,
    /// For `limit` problems: the name of the limit.
    pub limit: Option<&'static str>,
    /// Human-readable detail.
    pub detail: String,
}

/// `urn:ietf:params:jmap:error:notJSON`.
pub const NOT_JSON: &str = "urn:ietf:params:jmap:error:notJSON";
/// `urn:ietf:params:jmap:error:notRequest`.
pub const NOT_REQUEST: &str = "urn:ietf:params:jmap:error:notRequest";
/// `urn:ietf:params:jmap:error:unknownCapability`.
pub const UNKNOWN_CAPABILITY: &str = "urn:ietf:params:jmap:error:unknownCapability";
/// `urn:ietf:params:jmap:error:limit`.
pub const LIMIT: &str = "urn:ietf:params:jmap:error:limit";

impl Problem {
    /// A problem of type `kind`.
    pub fn new(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            limit: None,
            detail: detail.into(),
        }
    }

    /// notJSON (400).
    pub fn not_json(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, NOT_JSON, detail)
    }

    /// notRequest (400).
    pub fn not_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, NOT_REQUEST, detail)
    }

    /// A `limit` problem naming the limit.
    pub fn limit(status: StatusCode, limit: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            kind: LIMIT,
            limit: Some(limit),
            detail: detail.into(),
        }
    }

    /// A problem with a standard HTTP `about:blank` type.
    pub fn http(status: StatusCode, detail: impl Into<String>) -> Self {
        Self::new(status, "about:blank", detail)
    }

    /// The problem details object.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("type".into(), json!(self.kind));
        m.insert("status".into(), json!(self.status.as_u16()));
        if let Some(limit) = self.limit {
            m.insert("limit".into(), json!(limit));
        }
        if self.kind == "about:blank" {
            m.insert(
                "title".into(),
                json!(self.status.canonical_reason().unwrap_or("Error")),
            );
        }
        m.insert("detail".into(), json!(self.detail));
        Value::Object(m)
    }
}
