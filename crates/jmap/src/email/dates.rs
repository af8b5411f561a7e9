//! Dates as JMAP writes them (RFC 3339: `UTCDate` ends in `Z`, `Date`
//! keeps its offset) and as RFC 5322 header fields write them: the store's
//! [`tern_store::dates`], the one home of Tern's calendar code.

pub use tern_store::dates::{local_date, parse_rfc3339, rfc5322_date, utc_date};
