//! JMAP (RFC 8620 core, RFC 8621 mail, RFC 9425 quotas) for Tern.
//!
//! Method handlers ([`method`]) are plain functions over the store; the HTTP
//! layer ([`Jmap`]) parses requests, authenticates, and dispatches to them;
//! [`serve`] puts it behind hyper (HTTP/1.1, HTTP/2, optional TLS).
//!
//! Map of the crate:
//! - [`http`]: routing, CORS, auth, limits, the session/API/upload/download
//!   endpoints; [`push`]: push settings and the event source; [`ws`]: JMAP
//!   over WebSocket; [`push_subscription`]: PushSubscription/get, set;
//!   [`server`]: the listener.
//! - [`api`]: request validation, result references, dispatch table.
//! - [`args`]: the standard /get, /changes, /set, /query scaffolding.
//! - one module per data type: [`mailbox`], [`thread`], [`email`] (its own
//!   owner), [`identity`], [`vacation`], [`quota`], [`blob`].

pub mod api;
pub mod args;
pub mod auth;
pub mod blob;
pub mod config;
pub mod email;
pub mod http;
pub mod id;
pub mod identity;
pub mod json;
pub mod mailbox;
pub mod method;
mod notify;
pub mod problem;
pub mod push;
mod push_delivery;
pub mod push_subscription;
pub mod quota;
pub mod server;
pub mod session;
pub mod snippet;
pub mod submission;
pub mod thread;
pub mod vacation;
pub mod ws;

pub use config::{JmapConfig, TlsConfig};
pub use http::{Jmap, ResponseBody};
pub use method::Limits;
pub use push::PushConfig;
pub use server::{serve, serve_on};
