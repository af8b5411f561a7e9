//! The Session resource (RFC 8620 section 2) and the capabilities the
//! server advertises.

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::method::Limits;

/// `urn:ietf:params:jmap:core`
pub const CORE: &str = "urn:ietf:params:jmap:core";
/// `urn:ietf:params:jmap:mail`
pub const MAIL: &str = "urn:ietf:params:jmap:mail";
/// `urn:ietf:params:jmap:submission`
pub const SUBMISSION: &str = "urn:ietf:params:jmap:submission";
/// `urn:ietf:params:jmap:vacationresponse`
pub const VACATION: &str = "urn:ietf:params:jmap:vacationresponse";
/// `urn:ietf:params:jmap:quota` (RFC 9425)
pub const QUOTA: &str = "urn:ietf:params:jmap:quota";

/// Every capability the server supports.
pub const CAPABILITIES: [&str; 5] = [CORE, MAIL, SUBMISSION, VACATION, QUOTA];

/// Longest mailbox name, in UTF-8 bytes.
pub const MAX_MAILBOX_NAME: usize = 255;
/// Deepest mailbox hierarchy (one more than the most ancestors).
pub const MAX_MAILBOX_DEPTH: usize = 16;
/// `Email/query` sort properties advertised in the mail capability (the
/// ones `crate::email` sorts by).
pub const EMAIL_QUERY_SORT_OPTIONS: [&str; 9] = [
    "receivedAt",
    "sentAt",
    "size",
    "from",
    "to",
    "subject",
    "hasKeyword",
    "allInThreadHaveKeyword",
    "someInThreadHaveKeyword",
];

/// The session object for `principal`, with URLs under `base` (no
/// trailing slash).
pub fn session(principal: &Principal, limits: &Limits, base: &str) -> Value {
    let account_id = crate::id::account_id(principal.account);
    let core = json!({
        "maxSizeUpload": limits.max_size_upload,
        "maxConcurrentUpload": limits.max_concurrent_upload,
        "maxSizeRequest": limits.max_size_request,
        "maxConcurrentRequests": limits.max_concurrent_requests,
        "maxCallsInRequest": limits.max_calls_in_request,
        "maxObjectsInGet": limits.max_objects_in_get,
        "maxObjectsInSet": limits.max_objects_in_set,
        "collationAlgorithms": ["i;ascii-casemap", "i;unicode-casemap"],
    });
    let mail_account = json!({
        "maxMailboxesPerEmail": crate::email::MAX_MAILBOXES_PER_EMAIL,
        "maxMailboxDepth": MAX_MAILBOX_DEPTH,
        "maxSizeMailboxName": MAX_MAILBOX_NAME,
        "maxSizeAttachmentsPerEmail": limits.max_size_upload,
        "emailQuerySortOptions": EMAIL_QUERY_SORT_OPTIONS,
        "mayCreateTopLevelMailbox": true,
    });
    let submission_account = json!({
        "maxDelayedSend": crate::submission::MAX_DELAYED_SEND,
        "submissionExtensions": crate::submission::submission_extensions(),
    });
    let mut capabilities = Map::new();
    capabilities.insert(CORE.into(), core);
    for c in [MAIL, SUBMISSION, VACATION, QUOTA] {
        capabilities.insert(c.into(), json!({}));
    }
    // RFC 8887: JMAP over WebSocket, with push.
    capabilities.insert(
        crate::ws::CAPABILITY.into(),
        json!({"url": crate::ws::url(base), "supportsPush": true}),
    );
    let mut account_caps = Map::new();
    account_caps.insert(MAIL.into(), mail_account);
    account_caps.insert(SUBMISSION.into(), submission_account);
    account_caps.insert(VACATION.into(), json!({}));
    account_caps.insert(QUOTA.into(), json!({}));
    let mut primary = Map::new();
    for c in [MAIL, SUBMISSION, VACATION, QUOTA] {
        primary.insert(c.into(), json!(account_id));
    }
    let mut accounts = Map::new();
    accounts.insert(
        account_id.clone(),
        json!({
            "name": principal.username,
            "isPersonal": true,
            "isReadOnly": false,
            "accountCapabilities": account_caps,
        }),
    );
    let mut s = json!({
        "capabilities": capabilities,
        "accounts": accounts,
        "primaryAccounts": primary,
        "username": principal.username,
        "apiUrl": format!("{base}/jmap/api/"),
        "downloadUrl": format!("{base}/jmap/download/{{accountId}}/{{blobId}}/{{name}}?type={{type}}"),
        "uploadUrl": format!("{base}/jmap/upload/{{accountId}}/"),
        "eventSourceUrl": format!("{base}/jmap/eventsource/?types={{types}}&closeafter={{closeafter}}&ping={{ping}}"),
    });
    let state = session_state(&s);
    s["state"] = json!(state);
    s
}

/// The session state: a hash of everything else in the session object, so
/// it changes exactly when the session does.
pub fn session_state(session: &Value) -> String {
    let mut copy = session.clone();
    if let Some(m) = copy.as_object_mut() {
        m.remove("state");
    }
    let digest = Sha256::digest(copy.to_string().as_bytes());
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}
