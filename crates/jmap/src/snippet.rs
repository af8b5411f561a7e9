//! SearchSnippet/get (RFC 8621 section 5.1): for each requested email,
//! its subject and a preview of its body with the words that matched the
//! filter's text conditions wrapped in `<mark>` (`tern-search` makes
//! them).

use serde_json::{Map, Value, json};
use tern_search::SearchIndex;

use crate::args;
use crate::id::{self, Kind};
use crate::method::{Arguments, Ctx, MethodError, MethodResult};

/// SearchSnippet/get.
pub fn get(ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    args::allow_only(&args, &["accountId", "filter", "emailIds"])?;
    let account = ctx.account(&args)?;
    let Some(Value::Array(requested)) = args.get("emailIds") else {
        return Err(MethodError::invalid_arguments(
            "emailIds must be an array of ids",
        ));
    };
    let requested: Vec<String> = requested
        .iter()
        .map(|v| v.as_str().map(|s| args::resolve_ref(ctx, s)))
        .collect::<Option<_>>()
        .ok_or_else(|| MethodError::invalid_arguments("emailIds must be an array of ids"))?;
    if requested.len() > ctx.limits.max_objects_in_get {
        return Err(MethodError::RequestTooLarge);
    }
    let query =
        crate::email::snippet_query(ctx, args.get("filter"))?.unwrap_or(tern_search::Query::All);
    let fail = |e: tern_search::Error| {
        tracing::error!(error = %e, "search error in SearchSnippet/get");
        MethodError::ServerFail(e.to_string())
    };
    let index = SearchIndex::for_store(ctx.store).map_err(fail)?;
    let mut ids = Vec::with_capacity(requested.len());
    let mut not_found = Vec::new();
    for s in &requested {
        match id::decode(Kind::Email, s) {
            Some(i) => ids.push((s, i)),
            None => not_found.push(Value::String(s.clone())),
        }
    }
    let numbers: Vec<_> = ids.iter().map(|(_, i)| *i).collect();
    let snippets = index
        .snippets(ctx.store, account, &query, &numbers)
        .map_err(fail)?;
    let mut list = Vec::with_capacity(ids.len());
    for ((s, _), (_, snippet)) in ids.iter().zip(snippets) {
        match snippet {
            Some(snippet) => list.push(json!({
                "emailId": s,
                "subject": snippet.subject,
                "preview": snippet.preview,
            })),
            None => not_found.push(Value::String((*s).clone())),
        }
    }
    let mut out = Map::new();
    out.insert("accountId".into(), json!(id::account_id(account)));
    out.insert("list".into(), Value::Array(list));
    out.insert(
        "notFound".into(),
        if not_found.is_empty() {
            Value::Null
        } else {
            Value::Array(not_found)
        },
    );
    Ok(out)
}
