//! Email methods (RFC 8621 section 4): Email/get, set, changes, query,
//! queryChanges, copy, import, parse; and the decoding of MIME part blobs.
//!
//! - `get`: rendering the Email object (also for Email/parse);
//!   list properties come from `EmailMeta`, `EmailDetail` and the raw
//!   message are read only for properties that need them.
//! - `headers`: `header:` properties and the parsed header forms.
//! - `body`: body parts, body values, part content.
//! - [`query`]: filters, sorts, paging, Email/queryChanges.
//! - [`set`]: Email/set and Email/import.
//! - `build`: the RFC 5322 message of a draft created with Email/set.
//! - `copy`: Email/copy between accounts.

mod body;
mod build;
mod copy;
mod dates;
mod get;
mod headers;
mod query;
mod set;

pub(crate) use query::snippet_query;
use tern_store::kv::TxError;
use tern_store::{AccountId, BlobHash, DataType, MailStore, blob};

use crate::blob::BlobRef;
use crate::id::Kind;
use crate::method::{Arguments, Ctx, MethodError, MethodResult};

/// Most mailboxes one email may be in (`maxMailboxesPerEmail`); more is
/// `tooManyMailboxes`.
pub const MAX_MAILBOXES_PER_EMAIL: usize = 256;
/// Most keywords one email may have; more is `tooManyKeywords`.
pub const MAX_KEYWORDS_PER_EMAIL: usize = 128;

/// Email/get.
pub fn get(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    get::get(ctx, args)
}

/// Email/set.
pub fn set(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    set::set(ctx, args)
}

/// Email/changes.
pub fn changes(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    crate::args::changes_method(ctx, &args, DataType::Email, Kind::Email).map(|(out, _)| out)
}

/// Email/query.
pub fn query(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    query::query(ctx, args)
}

/// Email/queryChanges.
pub fn query_changes(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    query::query_changes(ctx, args)
}

/// Email/copy, with its implicit Email/set (onSuccessDestroyOriginal).
pub fn copy(
    ctx: &mut Ctx<'_>,
    args: Arguments,
) -> (MethodResult, Option<(&'static str, MethodResult)>) {
    copy::copy(ctx, args)
}

/// Email/import.
pub fn import(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    set::import(ctx, args)
}

/// Email/parse.
pub fn parse(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    get::parse(ctx, args)
}

/// The decoded content of part `index` (an index into the email's
/// `EmailDetail::parts`) of the raw message `raw`, with its media type and
/// file name: what the download endpoint serves for a part blobId.
pub fn part_content(raw: &[u8], index: u32) -> Option<PartContent> {
    body::part_content(raw, index)
}

/// A decoded MIME part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartContent {
    /// The decoded bytes.
    pub bytes: Vec<u8>,
    /// `type/subtype`.
    pub content_type: String,
    /// File name, if any.
    pub name: Option<String>,
}

/// The error of a transaction run by a method: the store's (retried when
/// it is a conflict) or the method's own.
#[derive(Debug)]
enum Fail {
    Store(tern_store::Error),
    Method(MethodError),
}

impl From<tern_store::Error> for Fail {
    fn from(e: tern_store::Error) -> Self {
        Fail::Store(e)
    }
}

impl From<tern_store::kv::Error> for Fail {
    fn from(e: tern_store::kv::Error) -> Self {
        Fail::Store(e.into())
    }
}

impl From<MethodError> for Fail {
    fn from(e: MethodError) -> Self {
        Fail::Method(e)
    }
}

impl TxError for Fail {
    fn as_kv(&self) -> Option<&tern_store::kv::Error> {
        match self {
            Fail::Store(e) => e.as_kv(),
            Fail::Method(_) => None,
        }
    }
}

impl From<Fail> for MethodError {
    fn from(f: Fail) -> Self {
        match f {
            Fail::Store(e) => e.into(),
            Fail::Method(e) => e,
        }
    }
}

/// Reads a whole blob a few MB per transaction; `None` when it does not
/// exist or is incomplete.
fn read_whole(store: &MailStore, hash: &BlobHash) -> tern_store::Result<Option<Vec<u8>>> {
    let Some(h) = store
        .kv()
        .read(|tx| blob::header(tx, hash))?
        .filter(|h| h.complete)
    else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(h.size as usize);
    while (out.len() as u64) < h.size {
        let Some(part) = store
            .kv()
            .read(|tx| blob::read_range(tx, hash, out.len() as u64, 4 << 20))?
        else {
            return Ok(None);
        };
        if part.is_empty() {
            break;
        }
        out.extend_from_slice(&part);
    }
    Ok(Some(out))
}

/// The bytes a blobId names, if the account may read them: a whole blob,
/// or the decoded content of a part of a stored message.
fn read_blob_ref(
    store: &MailStore,
    account: AccountId,
    r: &BlobRef,
) -> Result<Option<Vec<u8>>, MethodError> {
    if !crate::blob::accessible(store, account, r)? {
        return Ok(None);
    }
    Ok(match r {
        BlobRef::Whole(hash) => read_whole(store, hash)?,
        BlobRef::Part(hash, n) => {
            read_whole(store, hash)?.and_then(|raw| part_content(&raw, *n).map(|p| p.bytes))
        }
    })
}
