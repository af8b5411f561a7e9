//! The API endpoint's request processing (RFC 8620 section 3): validation
//! into problem details, capability checks, result references, created
//! ids, and the method dispatch table. No I/O besides store calls: the
//! HTTP layer runs [`process`] on a blocking thread.

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};

use hyper::StatusCode;
use serde_json::{Map, Value, json};
use tern_store::MailStore;

use crate::auth::Principal;
use crate::json;
use crate::method::{Arguments, Ctx, Limits, MethodError, MethodResult};
use crate::problem::{self, Problem};
use crate::session::{CAPABILITIES, CORE, MAIL, QUOTA, SUBMISSION, VACATION};

/// The URN namespace of IETF JMAP capabilities (RFC 8620 section 9.3).
const IETF_NAMESPACE: &str = "urn:ietf:params:jmap:";

type Plain = fn(&mut Ctx<'_>, Arguments) -> MethodResult;
type WithMail = fn(&mut Ctx<'_>, Arguments, bool) -> MethodResult;
type WithImplicit =
    fn(&mut Ctx<'_>, Arguments) -> (MethodResult, Option<(&'static str, MethodResult)>);

#[derive(Clone, Copy)]
enum Handler {
    Plain(Plain),
    /// Gets whether the request uses the mail capability (Quota methods
    /// hide types the client did not opt into).
    WithMail(WithMail),
    /// May call for an implicit method (the Email/set of EmailSubmission/set
    /// and of Email/copy), whose response follows with the same call id.
    WithImplicit(WithImplicit),
}

fn echo(_ctx: &mut Ctx<'_>, args: Arguments) -> MethodResult {
    Ok(args)
}

/// The capability a method belongs to and its handler.
fn lookup(name: &str) -> Option<(&'static str, Handler)> {
    use Handler::{Plain as P, WithImplicit as I, WithMail as M};
    Some(match name {
        "Core/echo" => (CORE, P(echo)),
        "Blob/copy" => (CORE, P(crate::blob::copy)),
        "PushSubscription/get" => (CORE, P(crate::push_subscription::get)),
        "PushSubscription/set" => (CORE, P(crate::push_subscription::set)),
        "Mailbox/get" => (MAIL, P(crate::mailbox::get)),
        "Mailbox/changes" => (MAIL, P(crate::mailbox::changes)),
        "Mailbox/query" => (MAIL, P(crate::mailbox::query)),
        "Mailbox/queryChanges" => (MAIL, P(crate::mailbox::query_changes)),
        "Mailbox/set" => (MAIL, P(crate::mailbox::set)),
        "Thread/get" => (MAIL, P(crate::thread::get)),
        "Thread/changes" => (MAIL, P(crate::thread::changes)),
        "Email/get" => (MAIL, P(crate::email::get)),
        "Email/set" => (MAIL, P(crate::email::set)),
        "Email/changes" => (MAIL, P(crate::email::changes)),
        "Email/query" => (MAIL, P(crate::email::query)),
        "Email/queryChanges" => (MAIL, P(crate::email::query_changes)),
        "Email/copy" => (MAIL, I(crate::email::copy)),
        "Email/import" => (MAIL, P(crate::email::import)),
        "Email/parse" => (MAIL, P(crate::email::parse)),
        "SearchSnippet/get" => (MAIL, P(crate::snippet::get)),
        "Identity/get" => (SUBMISSION, P(crate::identity::get)),
        "Identity/changes" => (SUBMISSION, P(crate::identity::changes)),
        "Identity/set" => (SUBMISSION, P(crate::identity::set)),
        "EmailSubmission/get" => (SUBMISSION, P(crate::submission::get)),
        "EmailSubmission/changes" => (SUBMISSION, P(crate::submission::changes)),
        "EmailSubmission/query" => (SUBMISSION, P(crate::submission::query)),
        "EmailSubmission/queryChanges" => (SUBMISSION, P(crate::submission::query_changes)),
        "EmailSubmission/set" => (SUBMISSION, I(crate::submission::set_with_implicit)),
        "VacationResponse/get" => (VACATION, P(crate::vacation::get)),
        "VacationResponse/set" => (VACATION, P(crate::vacation::set)),
        "Quota/get" => (QUOTA, M(crate::quota::get)),
        "Quota/changes" => (QUOTA, M(crate::quota::changes)),
        "Quota/query" => (QUOTA, M(crate::quota::query)),
        "Quota/queryChanges" => (QUOTA, M(crate::quota::query_changes)),
        _ => return None,
    })
}

/// One validated method call.
struct Call {
    name: String,
    args: Arguments,
    id: String,
}

/// A validated Request object.
struct Request {
    using: HashSet<String>,
    calls: Vec<Call>,
    created_ids: Option<HashMap<String, String>>,
}

fn parse_request(body: &[u8], limits: &Limits) -> Result<Request, Problem> {
    let value = json::parse(body).map_err(|e| Problem::not_json(e.0))?;
    let Value::Object(mut obj) = value else {
        return Err(Problem::not_request("the request must be a JSON object"));
    };
    let using = match obj.remove("using") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                _ => Err(Problem::not_request("using must hold strings")),
            })
            .collect::<Result<HashSet<_>, _>>()?,
        _ => return Err(Problem::not_request("using must be an array of strings")),
    };
    let raw_calls = match obj.remove("methodCalls") {
        Some(Value::Array(items)) => items,
        _ => return Err(Problem::not_request("methodCalls must be an array")),
    };
    let created_ids = match obj.remove("createdIds") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(
            m.into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok((k, s)),
                    _ => Err(Problem::not_request("createdIds values must be ids")),
                })
                .collect::<Result<HashMap<_, _>, _>>()?,
        ),
        Some(_) => return Err(Problem::not_request("createdIds must be an object")),
    };
    let mut calls = Vec::with_capacity(raw_calls.len());
    for c in raw_calls {
        let Value::Array(mut parts) = c else {
            return Err(Problem::not_request("an invocation must be an array"));
        };
        if parts.len() != 3 {
            return Err(Problem::not_request("an invocation has three elements"));
        }
        let id = parts.pop();
        let args = parts.pop();
        let name = parts.pop();
        match (name, args, id) {
            (Some(Value::String(name)), Some(Value::Object(args)), Some(Value::String(id))) => {
                calls.push(Call { name, args, id })
            }
            _ => {
                return Err(Problem::not_request(
                    "an invocation is [name, arguments object, call id]",
                ));
            }
        }
    }
    for u in &using {
        // Capabilities of the IETF JMAP namespace that Tern does not
        // implement (contacts, calendars, sieve, ...) are accepted and grant
        // nothing (their methods answer unknownMethod): some clients, such
        // as jmap-client, send the whole registry in every request. Any
        // other unknown URI is refused.
        if !CAPABILITIES.contains(&u.as_str()) && !u.starts_with(IETF_NAMESPACE) {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                problem::UNKNOWN_CAPABILITY,
                format!("the request uses capability {u:?}, which this server does not support"),
            ));
        }
    }
    if calls.len() > limits.max_calls_in_request {
        return Err(Problem::limit(
            StatusCode::BAD_REQUEST,
            "maxCallsInRequest",
            format!(
                "the request has {} method calls; the limit is {}",
                calls.len(),
                limits.max_calls_in_request
            ),
        ));
    }
    Ok(Request {
        using,
        calls,
        created_ids,
    })
}

/// Replaces `#name` result references in `args` by their values (RFC 8620
/// section 3.7).
fn resolve_references(args: Arguments, responses: &[Value]) -> Result<Arguments, MethodError> {
    if !args.keys().any(|k| k.starts_with('#')) {
        return Ok(args);
    }
    let mut out = Map::new();
    let mut refs = Vec::new();
    for (k, v) in args {
        match k.strip_prefix('#') {
            Some(name) => refs.push((name.to_string(), v)),
            None => {
                out.insert(k, v);
            }
        }
    }
    for (name, r) in refs {
        if out.contains_key(&name) {
            return Err(MethodError::invalid_arguments(format!(
                "{name} is given both directly and as a result reference"
            )));
        }
        let bad = |d: String| MethodError::InvalidResultReference(d);
        let Some(r) = r.as_object() else {
            return Err(bad(format!("#{name} must be a ResultReference object")));
        };
        let (Some(result_of), Some(ref_name), Some(path)) = (
            r.get("resultOf").and_then(Value::as_str),
            r.get("name").and_then(Value::as_str),
            r.get("path").and_then(Value::as_str),
        ) else {
            return Err(bad(format!(
                "#{name} needs resultOf, name and path strings"
            )));
        };
        let Some(response) = responses.iter().find(|resp| resp[2] == result_of) else {
            return Err(bad(format!("no response to call {result_of:?}")));
        };
        if response[0] != ref_name {
            return Err(bad(format!(
                "the response to call {result_of:?} is not {ref_name:?}"
            )));
        }
        let value = json::evaluate_pointer(&response[1], path).map_err(|e| bad(e.0))?;
        out.insert(name, value);
    }
    Ok(out)
}

/// Processes one API request body for `principal`: the Response object, or
/// the problem that rejects the whole request. Blocks (store calls).
pub fn process(
    store: &MailStore,
    limits: &Limits,
    principal: &Principal,
    session_state: &str,
    body: &[u8],
) -> Result<Value, Problem> {
    let request = parse_request(body, limits)?;
    let echo_created = request.created_ids.is_some();
    let mut created_ids = request.created_ids.unwrap_or_default();
    let uses_mail = request.using.contains(MAIL);
    let mut responses: Vec<Value> = Vec::with_capacity(request.calls.len());
    for call in request.calls {
        let mut implicit: Option<(&'static str, MethodResult)> = None;
        let result = (|| -> MethodResult {
            let (capability, handler) = lookup(&call.name).ok_or(MethodError::UnknownMethod)?;
            if !request.using.contains(capability) {
                return Err(MethodError::UnknownMethod);
            }
            let args = resolve_references(call.args, &responses)?;
            let mut ctx = Ctx {
                store,
                user: principal.account,
                limits,
                created_ids: &mut created_ids,
            };
            let run = AssertUnwindSafe(|| match handler {
                Handler::Plain(f) => f(&mut ctx, args),
                Handler::WithMail(f) => f(&mut ctx, args, uses_mail),
                Handler::WithImplicit(f) => {
                    let (result, then) = f(&mut ctx, args);
                    implicit = then;
                    result
                }
            });
            match catch_unwind(run) {
                Ok(r) => r,
                Err(_) => {
                    tracing::error!(method = %call.name, "method handler panicked");
                    Err(MethodError::ServerFail("handler panicked".into()))
                }
            }
        })();
        responses.push(match result {
            Ok(args) => json!([call.name, Value::Object(args), call.id]),
            Err(e) => json!(["error", Value::Object(e.to_arguments()), call.id]),
        });
        if let Some((name, result)) = implicit {
            responses.push(match result {
                Ok(args) => json!([name, Value::Object(args), call.id]),
                Err(e) => json!(["error", Value::Object(e.to_arguments()), call.id]),
            });
        }
    }
    let mut out = Map::new();
    out.insert("methodResponses".into(), Value::Array(responses));
    if echo_created {
        out.insert("createdIds".into(), json!(created_ids));
    }
    out.insert("sessionState".into(), json!(session_state));
    Ok(Value::Object(out))
}
