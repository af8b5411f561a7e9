//! The HTTP layer: routing, CORS, authentication, limits, and the
//! session, API, upload, download and event-source endpoints. [`Jmap`]
//! handles one `http::Request` at a time without a socket; [`crate::serve`]
//! puts it behind hyper.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body, Bytes, Frame};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};
use tern_store::{AccountId, MailStore};
use tokio::sync::{mpsc, watch};

use crate::auth::{AuthError, Authenticator, Principal};
use crate::blob::{self, ByteRange, FetchError, UploadError};
use crate::config::JmapConfig;
use crate::problem::Problem;
use crate::{api, id, push, session, ws};

/// The body of every response: a full buffer, or a stream (event source).
pub type ResponseBody = BoxBody<Bytes, Infallible>;

/// The JMAP HTTP handler. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Jmap {
    inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) store: MailStore,
    pub(crate) config: JmapConfig,
    pub(crate) base: String,
    prefix: String,
    auth: Authenticator,
    api_inflight: Mutex<HashMap<AccountId, usize>>,
    upload_inflight: Mutex<HashMap<AccountId, usize>>,
    /// Session states by principal: the session object depends only on the
    /// principal and this server's fixed configuration, and hashing it for
    /// every API response was a visible share of a small request's cost.
    session_states: Mutex<HashMap<(AccountId, String), Arc<str>>>,
    shutdown_tx: watch::Sender<bool>,
    /// Push notifiers and WebSocket connections (`crate::push`).
    pub(crate) push: push::PushRuntime,
}

impl Inner {
    pub(crate) fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }
}

/// Counts a request against a per-account concurrency limit while alive.
struct Slot<'a> {
    map: &'a Mutex<HashMap<AccountId, usize>>,
    account: AccountId,
}

impl<'a> Slot<'a> {
    fn take(
        map: &'a Mutex<HashMap<AccountId, usize>>,
        account: AccountId,
        max: usize,
    ) -> Option<Self> {
        let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(account).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot { map, account })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.account) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.account);
            }
        }
    }
}

pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed()
}

fn json_response(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    // `to_vec`, not `to_string`: `Display` goes through `fmt::Write` a few
    // bytes at a time, several times slower for a large response.
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r
}

fn problem_response(p: &Problem) -> Response<ResponseBody> {
    let mut r = json_response(p.status, &p.to_json());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

fn add_cors(headers: &mut HeaderMap) {
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Content-Disposition, Content-Range, Content-Length, WWW-Authenticate",
        ),
    );
}

fn preflight(req_headers: &HeaderMap) -> Response<ResponseBody> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    let allow = req_headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .cloned()
        .unwrap_or_else(|| {
            HeaderValue::from_static("Authorization, Content-Type, Accept, Last-Event-ID, Range")
        });
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow);
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

fn unauthorized(detail: &str) -> Response<ResponseBody> {
    let mut r = problem_response(&Problem::http(StatusCode::UNAUTHORIZED, detail));
    r.headers_mut().append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tern\", charset=\"UTF-8\""),
    );
    r.headers_mut().append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tern\""),
    );
    r
}

fn server_error() -> Response<ResponseBody> {
    problem_response(&Problem::http(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server could not complete the request; try again later",
    ))
}

/// Decodes `%XX` escapes (invalid escapes are kept as written).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// A Content-Disposition value with `name` as the file name (RFC 6266:
/// an ASCII fallback and the UTF-8 `filename*`).
fn content_disposition(name: &str) -> HeaderValue {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(b as char);
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    HeaderValue::from_str(&format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// A media type safe to put in a header: `type/subtype` of token
/// characters, with parameters; anything else becomes
/// `application/octet-stream`.
fn safe_media_type(t: Option<&str>) -> HeaderValue {
    let t = t.unwrap_or("").trim();
    let essence = t.split(';').next().unwrap_or("").trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let valid = essence
        .split_once('/')
        .is_some_and(|(a, b)| token(a) && token(b))
        && t.len() <= 255;
    if valid && let Ok(v) = HeaderValue::from_str(t) {
        return v;
    }
    HeaderValue::from_static("application/octet-stream")
}

enum BodyError {
    TooLarge,
    Io,
}

async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyError::TooLarge),
        Err(_) => Err(BodyError::Io),
    }
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl Jmap {
    /// A handler over `store` configured by `config`.
    pub fn new(config: JmapConfig, store: MailStore) -> Self {
        let base = config.base_url();
        let prefix = base
            .split_once("://")
            .and_then(|(_, rest)| {
                rest.find('/')
                    .map(|i| rest[i..].trim_end_matches('/').to_string())
            })
            .unwrap_or_default();
        let auth = Authenticator::new(store.clone(), config.auth_cache_ttl);
        let (shutdown_tx, _) = watch::channel(false);
        let push =
            push::PushRuntime::new(store.clone(), config.push.clone(), shutdown_tx.subscribe());
        Self {
            inner: Arc::new(Inner {
                store,
                config,
                base,
                prefix,
                auth,
                api_inflight: Mutex::new(HashMap::new()),
                upload_inflight: Mutex::new(HashMap::new()),
                session_states: Mutex::new(HashMap::new()),
                shutdown_tx,
                push,
            }),
        }
    }

    /// Ends open event-source streams (server shutdown).
    pub fn shutdown(&self) {
        self.inner.shutdown_tx.send_replace(true);
    }

    /// After [`Jmap::shutdown`]: waits until every WebSocket connection has
    /// been closed (with a close frame), at most `limit`. Returns whether
    /// they all closed.
    pub async fn wait_websockets_closed(&self, limit: std::time::Duration) -> bool {
        self.inner.push.wait_closed(limit).await
    }

    /// Starts delivering push subscriptions' notifications (RFC 8620
    /// section 7.2) until [`Jmap::shutdown`]. Call once, inside a Tokio
    /// runtime.
    pub fn start_push_delivery(&self) {
        crate::push_delivery::start(self.inner.clone());
    }

    /// The public base URL the session's URLs start with.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// Handles one request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut response = self.route(req).await;
        add_cors(response.headers_mut());
        response
    }

    async fn route<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if req.method() == Method::OPTIONS {
            return preflight(req.headers());
        }
        let path = req.uri().path().to_string();
        let path = match path.strip_prefix(self.inner.prefix.as_str()) {
            Some(rest) if !self.inner.prefix.is_empty() && rest.starts_with('/') => {
                rest.to_string()
            }
            _ => path,
        };
        enum Route {
            Session,
            Api,
            Upload(String),
            Download(String, String, String),
            EventSource,
            WebSocket,
        }
        let route =
            if path == "/.well-known/jmap" || path == "/jmap/session" || path == "/jmap/session/" {
                Route::Session
            } else if path == "/jmap/api" || path == "/jmap/api/" {
                Route::Api
            } else if let Some(rest) = path.strip_prefix("/jmap/upload/") {
                Route::Upload(percent_decode(rest.trim_end_matches('/')))
            } else if let Some(rest) = path.strip_prefix("/jmap/download/") {
                let mut parts = rest.splitn(3, '/');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(a), Some(b), Some(n)) if !a.is_empty() && !b.is_empty() => {
                        Route::Download(percent_decode(a), percent_decode(b), percent_decode(n))
                    }
                    _ => {
                        return problem_response(&Problem::http(
                            StatusCode::NOT_FOUND,
                            "download URLs are /jmap/download/{accountId}/{blobId}/{name}",
                        ));
                    }
                }
            } else if path == "/jmap/eventsource" || path == "/jmap/eventsource/" {
                Route::EventSource
            } else if path == ws::PATH || path == "/jmap/ws/" {
                Route::WebSocket
            } else {
                return problem_response(&Problem::http(StatusCode::NOT_FOUND, "no such resource"));
            };
        let expected = match route {
            Route::Api | Route::Upload(_) => Method::POST,
            _ => Method::GET,
        };
        if req.method() != expected && !(expected == Method::GET && req.method() == Method::HEAD) {
            let mut r = problem_response(&Problem::http(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("use {expected}"),
            ));
            r.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_str(&format!("{expected}, OPTIONS")).expect("valid"),
            );
            return r;
        }
        let principal = match self.authenticate(req.headers()).await {
            Ok(p) => p,
            Err(r) => return r,
        };
        match route {
            Route::Session => self.session(&principal),
            Route::Api => self.api(principal, req).await,
            Route::Upload(account) => self.upload(principal, account, req).await,
            Route::Download(account, blob_id, name) => {
                self.download(principal, account, blob_id, name, req).await
            }
            Route::EventSource => push::event_source(
                self.inner.clone(),
                principal,
                req.uri().query(),
                req.headers(),
            ),
            Route::WebSocket => ws::upgrade(self.inner.clone(), principal, req),
        }
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, Response<ResponseBody>> {
        let header = match headers.get(header::AUTHORIZATION).map(|h| h.to_str()) {
            None => return Err(unauthorized("authentication required")),
            Some(Err(_)) => return Err(unauthorized("malformed Authorization header")),
            Some(Ok(h)) => h.to_string(),
        };
        if let Some(p) = self.inner.auth.cached(Some(&header)) {
            return Ok(p);
        }
        let inner = self.inner.clone();
        let result =
            tokio::task::spawn_blocking(move || inner.auth.authenticate(Some(&header))).await;
        match result {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(AuthError::Store(e))) => {
                tracing::error!(error = %e, "store error during authentication");
                Err(server_error())
            }
            Ok(Err(_)) => Err(unauthorized("invalid credentials")),
            Err(_) => Err(server_error()),
        }
    }

    fn session_object(&self, principal: &Principal) -> Value {
        session::session(principal, &self.inner.config.limits, &self.inner.base)
    }

    /// The session state for `principal` (the `state` of its session
    /// object), computed once per principal.
    fn session_state(&self, principal: &Principal) -> Arc<str> {
        let key = (principal.account, principal.username.clone());
        if let Some(s) = self
            .inner
            .session_states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return s.clone();
        }
        let object = self.session_object(principal);
        let state: Arc<str> = object["state"].as_str().unwrap_or_default().into();
        let mut map = self
            .inner
            .session_states
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if map.len() >= 65_536 {
            map.clear();
        }
        map.insert(key, state.clone());
        state
    }

    fn session(&self, principal: &Principal) -> Response<ResponseBody> {
        let mut r = json_response(StatusCode::OK, &self.session_object(principal));
        r.headers_mut().insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-cache, no-store, must-revalidate"),
        );
        r
    }

    async fn api<B>(&self, principal: Principal, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limits = &self.inner.config.limits;
        let Some(_slot) = Slot::take(
            &self.inner.api_inflight,
            principal.account,
            limits.max_concurrent_requests,
        ) else {
            return problem_response(&Problem::limit(
                StatusCode::TOO_MANY_REQUESTS,
                "maxConcurrentRequests",
                "too many concurrent requests",
            ));
        };
        let too_large = || {
            problem_response(&Problem::limit(
                StatusCode::BAD_REQUEST,
                "maxSizeRequest",
                format!(
                    "the request is larger than {} bytes",
                    limits.max_size_request
                ),
            ))
        };
        if content_length(req.headers()).is_some_and(|n| n > limits.max_size_request as u64) {
            return too_large();
        }
        if let Some(ct) = req.headers().get(header::CONTENT_TYPE) {
            let essence = ct
                .to_str()
                .unwrap_or("")
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if essence != "application/json" {
                return problem_response(&Problem::not_json(
                    "the request's content type must be application/json",
                ));
            }
        }
        let body = match read_body(req.into_body(), limits.max_size_request).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return too_large(),
            Err(BodyError::Io) => {
                return problem_response(&Problem::http(
                    StatusCode::BAD_REQUEST,
                    "could not read the request body",
                ));
            }
        };
        let inner = self.inner.clone();
        let state = self.session_state(&principal);
        let result = tokio::task::spawn_blocking(move || {
            api::process(
                &inner.store,
                &inner.config.limits,
                &principal,
                &state,
                &body,
            )
        })
        .await;
        match result {
            Ok(Ok(v)) => json_response(StatusCode::OK, &v),
            Ok(Err(p)) => problem_response(&p),
            Err(_) => server_error(),
        }
    }

    async fn upload<B>(
        &self,
        principal: Principal,
        account: String,
        req: Request<B>,
    ) -> Response<ResponseBody>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if account != id::account_id(principal.account) {
            return problem_response(&Problem::http(StatusCode::NOT_FOUND, "no such account"));
        }
        let config = &self.inner.config;
        let max = config.limits.max_size_upload;
        let Some(_slot) = Slot::take(
            &self.inner.upload_inflight,
            principal.account,
            config.limits.max_concurrent_upload,
        ) else {
            return problem_response(&Problem::limit(
                StatusCode::TOO_MANY_REQUESTS,
                "maxConcurrentUpload",
                "too many concurrent uploads",
            ));
        };
        let too_large = || {
            problem_response(&Problem::limit(
                StatusCode::PAYLOAD_TOO_LARGE,
                "maxSizeUpload",
                format!("uploads are limited to {max} bytes"),
            ))
        };
        if content_length(req.headers()).is_some_and(|n| n > max) {
            return too_large();
        }
        let media_type = safe_media_type(
            req.headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let body = match read_body(req.into_body(), max as usize).await {
            Ok(b) => b,
            Err(BodyError::TooLarge) => return too_large(),
            Err(BodyError::Io) => {
                return problem_response(&Problem::http(
                    StatusCode::BAD_REQUEST,
                    "could not read the upload",
                ));
            }
        };
        let inner = self.inner.clone();
        let size = body.len();
        let result = tokio::task::spawn_blocking(move || {
            let c = &inner.config;
            blob::upload(
                &inner.store,
                principal.account,
                &body,
                c.upload_ttl.as_secs().max(3600),
                c.upload_quota,
            )
        })
        .await;
        match result {
            Ok(Ok(hash)) => json_response(
                StatusCode::CREATED,
                &json!({
                    "accountId": account,
                    "blobId": id::blob_id(&hash),
                    "type": media_type.to_str().unwrap_or("application/octet-stream"),
                    "size": size,
                }),
            ),
            Ok(Err(UploadError::OverQuota)) => too_large(),
            Ok(Err(UploadError::Store(e))) => {
                tracing::error!(error = %e, "store error during upload");
                server_error()
            }
            Err(_) => server_error(),
        }
    }

    async fn download<B>(
        &self,
        principal: Principal,
        account: String,
        blob_id: String,
        name: String,
        req: Request<B>,
    ) -> Response<ResponseBody> {
        if account != id::account_id(principal.account) {
            return problem_response(&Problem::http(StatusCode::NOT_FOUND, "no such account"));
        }
        let (name, query_from_name) = match name.split_once('?') {
            Some((n, q)) => (n.to_string(), Some(q.to_string())),
            None => (name, None),
        };
        let media_type = query_param(req.uri().query(), "type")
            .or_else(|| query_param(query_from_name.as_deref(), "type"));
        let range = req
            .headers()
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(ByteRange::parse);
        let head = req.method() == Method::HEAD;
        let inner = self.inner.clone();
        let result = tokio::task::spawn_blocking(move || {
            blob::fetch(&inner.store, principal.account, &blob_id, range)
        })
        .await;
        let fetched = match result {
            Ok(Ok(f)) => f,
            Ok(Err(FetchError::NotFound)) => {
                return problem_response(&Problem::http(StatusCode::NOT_FOUND, "no such blob"));
            }
            Ok(Err(FetchError::Unsatisfiable(total))) => {
                let mut r = problem_response(&Problem::http(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "the range is outside the blob",
                ));
                r.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{total}")).expect("valid"),
                );
                return r;
            }
            Ok(Err(FetchError::Store(e))) => {
                tracing::error!(error = %e, "store error during download");
                return server_error();
            }
            Err(_) => return server_error(),
        };
        let len = fetched.bytes.len() as u64;
        let partial = range.is_some();
        let mut r = Response::new(if head {
            full(Bytes::new())
        } else {
            full(fetched.bytes)
        });
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            safe_media_type(media_type.as_deref().or(fetched.content_type.as_deref())),
        );
        h.insert(header::CONTENT_DISPOSITION, content_disposition(&name));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, immutable, max-age=31536000"),
        );
        h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("sandbox; default-src 'none'"),
        );
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
        if partial {
            *r.status_mut() = StatusCode::PARTIAL_CONTENT;
            let end = fetched.start + len;
            r.headers_mut().insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!(
                    "bytes {}-{}/{}",
                    fetched.start,
                    end.saturating_sub(1),
                    fetched.total
                ))
                .expect("valid"),
            );
        }
        r
    }
}

/// A response body fed by a channel (the event source's stream).
#[derive(Debug)]
pub(crate) struct ChannelBody {
    pub(crate) rx: mpsc::Receiver<Bytes>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() {
        assert_eq!(percent_decode("a%20b%2Fc%zz%4"), "a b/c%zz%4");
        assert_eq!(
            query_param(Some("x=1&type=text%2Fplain"), "type").as_deref(),
            Some("text/plain")
        );
        assert_eq!(
            safe_media_type(Some("text/plain; charset=utf-8")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(
            safe_media_type(Some("text/plain\r\nX: y")),
            "application/octet-stream"
        );
        assert_eq!(
            safe_media_type(Some("nonsense")),
            "application/octet-stream"
        );
        assert_eq!(
            content_disposition("résumé \"1\".pdf"),
            "attachment; filename=\"r_sum_ _1_.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%20%221%22.pdf"
        );
    }
}
