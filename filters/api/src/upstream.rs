//! Calls a native filter makes to a configured cluster (a JWKS fetch, an auth
//! check, ...), sent through the worker's own connection pools.
//!
//! The host gives each stream a client in [`StreamInfo::http_client`]; a filter
//! awaits [`HttpClient::send`] inside its hook (see [`crate::Step::wait`]). The
//! whole response is buffered, so this is meant for small control-plane bodies.
//!
//! [`StreamInfo::http_client`]: crate::StreamInfo::http_client

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;

/// Why a call produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    /// No cluster of that name in the config.
    UnknownCluster,
    /// The cluster has no host to send to.
    NoHealthyUpstream,
    /// Connecting failed, or the connection broke before the whole response arrived.
    Connect,
    /// The response did not arrive in time.
    Timeout,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CallError::UnknownCluster => "unknown cluster",
            CallError::NoHealthyUpstream => "no healthy upstream",
            CallError::Connect => "upstream connect error",
            CallError::Timeout => "timeout",
        })
    }
}

impl std::error::Error for CallError {}

/// The future of a call: the whole response, or why there is none.
pub type CallFuture<'a> =
    Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, CallError>> + 'a>>;

/// Sends HTTP requests to clusters of the running config. Lives on one worker,
/// hence not `Send`.
///
/// The request's URI is origin-form (`/path?query`); its `host` header, if any,
/// becomes the authority (default: the cluster name). The host adds Envoy's
/// marks of an internal call (`x-envoy-internal`,
/// `x-envoy-expected-rq-timeout-ms`).
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use legate_filter_api::upstream::{CallError, CallFuture, HttpClient};
///
/// /// A client that answers every call with the same body (as a test double).
/// struct Canned(&'static str);
/// impl HttpClient for Canned {
///     fn send(&self, _cluster: &str, _req: http::Request<Bytes>, _t: Duration) -> CallFuture<'_> {
///         let body = Bytes::from_static(self.0.as_bytes());
///         Box::pin(async move { Ok(http::Response::new(body)) })
///     }
/// }
/// ```
pub trait HttpClient {
    /// Sends `request` to `cluster` and waits at most `timeout` for the whole
    /// response (headers and body).
    fn send(
        &self,
        cluster: &str,
        request: http::Request<Bytes>,
        timeout: Duration,
    ) -> CallFuture<'_>;
}

impl fmt::Debug for dyn HttpClient + '_ {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HttpClient")
    }
}
