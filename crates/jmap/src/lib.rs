//! JMAP (RFC 8620 core, RFC 8621 mail) for Tern.
//!
//! Method handlers ([`method`]) are plain functions over the store; the HTTP
//! layer parses requests, authenticates, and dispatches to them.

pub mod id;
pub mod method;
