//! Outbound HTTP calls to clusters of the proxy's config, awaited inside a hook.
//!
//! ```no_run
//! use legate_sdk::{Action, Headers, HttpFilter, LocalReply, http};
//!
//! #[derive(Default)]
//! struct Auth;
//!
//! impl HttpFilter for Auth {
//!     async fn on_request_headers(&mut self, h: &mut Headers, _eos: bool) -> Action {
//!         let check = http::Request::get("auth", "/check")
//!             .header("x-token", h.get("authorization").unwrap_or_default());
//!         match http::send(check).await {
//!             Ok(r) if r.status == 200 => Action::Continue,
//!             _ => Action::Respond(LocalReply::new(403).with_body("denied\n")),
//!         }
//!     }
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::Headers;
use crate::bindings::http::legate::filter::http_client as wit;
use crate::bindings::http::legate::filter::types::Header;

/// An outbound request.
///
/// ```
/// use std::time::Duration;
/// let r = legate_sdk::http::Request::post("backend", "/log", "hello")
///     .header("content-type", "text/plain")
///     .timeout(Duration::from_millis(200));
/// assert_eq!(r.method, "POST");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// A cluster of the proxy's config.
    pub cluster: String,
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path with query.
    pub path: String,
    /// `:authority`; the cluster name when empty.
    pub authority: String,
    /// Request headers, without pseudo-headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Request body.
    pub body: Vec<u8>,
    /// How long to wait for the response (default 5 s).
    pub timeout: Duration,
}

impl Request {
    /// A request with any method and no body.
    ///
    /// ```
    /// let r = legate_sdk::http::Request::new("DELETE", "cache", "/k");
    /// assert_eq!(r.path, "/k");
    /// ```
    pub fn new(method: &str, cluster: &str, path: &str) -> Request {
        Request {
            cluster: cluster.into(),
            method: method.into(),
            path: path.into(),
            authority: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout: Duration::from_secs(5),
        }
    }

    /// A `GET` request.
    ///
    /// ```
    /// assert_eq!(legate_sdk::http::Request::get("c", "/").method, "GET");
    /// ```
    pub fn get(cluster: &str, path: &str) -> Request {
        Request::new("GET", cluster, path)
    }

    /// A `POST` request with a body.
    ///
    /// ```
    /// assert_eq!(legate_sdk::http::Request::post("c", "/", "x").body, b"x");
    /// ```
    pub fn post(cluster: &str, path: &str, body: impl Into<Vec<u8>>) -> Request {
        let mut r = Request::new("POST", cluster, path);
        r.body = body.into();
        r
    }

    /// Adds a header.
    ///
    /// ```
    /// let r = legate_sdk::http::Request::get("c", "/").header("x-a", "1");
    /// assert_eq!(r.headers[0].0, "x-a");
    /// ```
    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Request {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets `:authority`.
    ///
    /// ```
    /// let r = legate_sdk::http::Request::get("c", "/").authority("auth.local");
    /// assert_eq!(r.authority, "auth.local");
    /// ```
    pub fn authority(mut self, authority: &str) -> Request {
        self.authority = authority.into();
        self
    }

    /// Sets the timeout.
    ///
    /// ```
    /// let r = legate_sdk::http::Request::get("c", "/").timeout(std::time::Duration::from_secs(1));
    /// assert_eq!(r.timeout.as_secs(), 1);
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Request {
        self.timeout = timeout;
        self
    }

    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    pub(crate) fn into_wit(self) -> wit::Request {
        wit::Request {
            cluster: self.cluster,
            method: self.method,
            path: self.path,
            authority: self.authority,
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| Header { name, value })
                .collect(),
            body: self.body,
            timeout_ms: self.timeout.as_millis().min(u32::MAX as u128) as u32,
        }
    }
}

/// The upstream's answer to a call.
///
/// ```
/// let r = legate_sdk::http::Response::new(200, "ok");
/// assert_eq!(r.body, b"ok");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Response headers.
    pub headers: Headers,
    /// The whole body.
    pub body: Vec<u8>,
}

impl Response {
    /// A response, e.g. for a test's call handler.
    ///
    /// ```
    /// assert_eq!(legate_sdk::http::Response::new(204, "").status, 204);
    /// ```
    pub fn new(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            headers: Headers::default(),
            body: body.into(),
        }
    }

    pub(crate) fn from_wit(r: wit::Response) -> Response {
        Response {
            status: r.status,
            headers: Headers::detached(r.headers.into_iter().map(|h| (h.name, h.value)).collect()),
            body: r.body,
        }
    }
}

/// Why a call has no response.
///
/// ```
/// let e = legate_sdk::http::CallError::Timeout;
/// assert_eq!(e.to_string(), "timeout");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The cluster is not in the proxy's config.
    UnknownCluster(String),
    /// The request was refused before sending.
    InvalidRequest(String),
    /// No connection could be made, or it broke.
    ConnectionFailure,
    /// No response in time.
    Timeout,
    /// Calls are only possible from HTTP stream hooks.
    NotAllowed,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::UnknownCluster(c) => write!(f, "unknown cluster {c:?}"),
            CallError::InvalidRequest(why) => write!(f, "invalid request: {why}"),
            CallError::ConnectionFailure => f.write_str("connection failure"),
            CallError::Timeout => f.write_str("timeout"),
            CallError::NotAllowed => f.write_str("calls are not allowed here"),
        }
    }
}

impl std::error::Error for CallError {}

impl CallError {
    pub(crate) fn from_wit(e: wit::CallError) -> CallError {
        match e {
            wit::CallError::UnknownCluster(c) => CallError::UnknownCluster(c),
            wit::CallError::InvalidRequest(w) => CallError::InvalidRequest(w),
            wit::CallError::ConnectionFailure => CallError::ConnectionFailure,
            wit::CallError::Timeout => CallError::Timeout,
            wit::CallError::NotAllowed => CallError::NotAllowed,
        }
    }
}

/// Sends a request and waits for the response. Only from inside an HTTP hook.
///
/// ```no_run
/// # async fn f() {
/// let r = legate_sdk::http::send(legate_sdk::http::Request::get("auth", "/")).await;
/// # }
/// ```
pub fn send(request: Request) -> impl Future<Output = Result<Response, CallError>> {
    let started = crate::host::send(request);
    Call { started }
}

/// A call in flight.
struct Call {
    started: Result<u32, CallError>,
}

impl Future for Call {
    type Output = Result<Response, CallError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        match &self.started {
            Err(e) => Poll::Ready(Err(e.clone())),
            Ok(id) => match crate::exec::take(*id) {
                Some(r) => Poll::Ready(r),
                None => Poll::Pending,
            },
        }
    }
}
