//! HTTP filters: the trait authors implement, the values hooks get, and the
//! adapter that exports a filter as the `http-handler` interface.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::bindings::http::exports::legate::filter::http_handler as wit_handler;
use crate::bindings::http::legate::filter::types as wit;
use crate::exec::{Slot, Spare};
use crate::http::{CallError, Response};
use crate::live::Live;
use crate::message::{Body, Headers, Map};

/// A response the filter makes instead of the upstream's.
///
/// ```
/// let r = legate_sdk::LocalReply::new(403)
///     .with_body("forbidden\n")
///     .with_header("x-reason", "no key");
/// assert_eq!(r.status, 403);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// HTTP status, 200..=599.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Response body; `text/plain` unless a `content-type` header is set.
    pub body: Vec<u8>,
    /// For gRPC requests, the `grpc-status` to send; derived from `status` when
    /// unset.
    pub grpc_status: Option<u32>,
}

impl LocalReply {
    /// A reply with a status and nothing else.
    ///
    /// ```
    /// assert!(legate_sdk::LocalReply::new(429).body.is_empty());
    /// ```
    pub fn new(status: u16) -> LocalReply {
        LocalReply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            grpc_status: None,
        }
    }

    /// Sets the body.
    ///
    /// ```
    /// assert_eq!(legate_sdk::LocalReply::new(200).with_body("ok").body, b"ok");
    /// ```
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> LocalReply {
        self.body = body.into();
        self
    }

    /// Adds a response header.
    ///
    /// ```
    /// let r = legate_sdk::LocalReply::new(200).with_header("x-a", "1");
    /// assert_eq!(r.headers.len(), 1);
    /// ```
    pub fn with_header(mut self, name: &str, value: impl AsRef<[u8]>) -> LocalReply {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sets the `grpc-status` for gRPC requests.
    ///
    /// ```
    /// let r = legate_sdk::LocalReply::new(403).with_grpc_status(7);
    /// assert_eq!(r.grpc_status, Some(7));
    /// ```
    pub fn with_grpc_status(mut self, status: u32) -> LocalReply {
        self.grpc_status = Some(status);
        self
    }

    fn into_wit(self) -> wit::LocalReply {
        wit::LocalReply {
            status: self.status,
            headers: self
                .headers
                .into_iter()
                .map(|(name, value)| wit::Header { name, value })
                .collect(),
            body: self.body,
            grpc_status: self.grpc_status,
        }
    }
}

/// What a hook decided.
///
/// ```
/// use legate_sdk::{Action, LocalReply};
/// let deny = Action::Respond(LocalReply::new(403));
/// assert!(matches!(deny, Action::Respond(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Go on with the message, as edited.
    Continue,
    /// Stop the stream and answer with this reply.
    Respond(LocalReply),
    /// From `on_request_headers` only: hold the request until its whole body has
    /// arrived, then call `on_request_body` once with all of it. Elsewhere it
    /// means `Continue`.
    WaitForBody,
}

impl Action {
    fn into_wit(self) -> wit::Action {
        match self {
            Action::Continue => wit::Action::Continue,
            Action::Respond(r) => {
                crate::host::respond(r.into_wit());
                wit::Action::Respond
            }
            Action::WaitForBody => wit::Action::WaitForBody,
        }
    }
}

/// A per-stream HTTP filter. Every hook defaults to [`Action::Continue`], so a
/// filter implements only what it needs. Hooks are `async`: await
/// [`crate::http::send`] inside one and the stream waits while others go on.
///
/// ```
/// use legate_sdk::{Action, Headers, HttpFilter, LocalReply};
///
/// #[derive(Default)]
/// struct RequireKey;
///
/// impl HttpFilter for RequireKey {
///     async fn on_request_headers(&mut self, h: &mut Headers, _eos: bool) -> Action {
///         match h.get("x-api-key") {
///             Some(_) => Action::Continue,
///             None => Action::Respond(LocalReply::new(401).with_body("missing key\n")),
///         }
///     }
/// }
/// ```
#[allow(async_fn_in_trait)]
pub trait HttpFilter: 'static {
    /// Request headers, pseudo-headers first. `end_of_stream` is true when the
    /// request has no body.
    ///
    /// ```
    /// # use legate_sdk::{Action, Headers, HttpFilter};
    /// struct NoDelete;
    /// impl HttpFilter for NoDelete {
    ///     async fn on_request_headers(&mut self, h: &mut Headers, _eos: bool) -> Action {
    ///         if h.method().as_deref() == Some("DELETE") {
    ///             return Action::Respond(legate_sdk::LocalReply::new(405));
    ///         }
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_request_headers(&mut self, _headers: &mut Headers, _end_of_stream: bool) -> Action {
        unimplemented_hook()
    }

    /// A chunk of request body, or the whole body after [`Action::WaitForBody`].
    ///
    /// ```
    /// # use legate_sdk::{Action, Body, Headers, HttpFilter, LocalReply};
    /// struct NoSecrets;
    /// impl HttpFilter for NoSecrets {
    ///     async fn on_request_headers(&mut self, _h: &mut Headers, eos: bool) -> Action {
    ///         if eos { Action::Continue } else { Action::WaitForBody }
    ///     }
    ///     async fn on_request_body(&mut self, body: &mut Body, _eos: bool) -> Action {
    ///         if body.bytes().windows(6).any(|w| w == b"secret") {
    ///             return Action::Respond(LocalReply::new(400).with_body("no secrets\n"));
    ///         }
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_request_body(&mut self, _body: &mut Body, _end_of_stream: bool) -> Action {
        unimplemented_hook()
    }

    /// Request trailers: the end of the request.
    ///
    /// ```
    /// # use legate_sdk::{Action, Headers, HttpFilter};
    /// struct Tag;
    /// impl HttpFilter for Tag {
    ///     async fn on_request_trailers(&mut self, t: &mut Headers) -> Action {
    ///         t.set("x-seen-by", "legate");
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_request_trailers(&mut self, _trailers: &mut Headers) -> Action {
        unimplemented_hook()
    }

    /// Response headers, `:status` first.
    ///
    /// ```
    /// # use legate_sdk::{Action, Headers, HttpFilter};
    /// struct HideServer;
    /// impl HttpFilter for HideServer {
    ///     async fn on_response_headers(&mut self, h: &mut Headers, _eos: bool) -> Action {
    ///         h.remove("server");
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_response_headers(
        &mut self,
        _headers: &mut Headers,
        _end_of_stream: bool,
    ) -> Action {
        unimplemented_hook()
    }

    /// A chunk of response body.
    ///
    /// ```
    /// # use legate_sdk::{Action, Body, HttpFilter};
    /// struct Shout;
    /// impl HttpFilter for Shout {
    ///     async fn on_response_body(&mut self, body: &mut Body, _eos: bool) -> Action {
    ///         let loud = body.bytes().to_ascii_uppercase();
    ///         body.set(loud);
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_response_body(&mut self, _body: &mut Body, _end_of_stream: bool) -> Action {
        unimplemented_hook()
    }

    /// Response trailers.
    ///
    /// ```
    /// # use legate_sdk::{Action, Headers, HttpFilter};
    /// struct GrpcStatus;
    /// impl HttpFilter for GrpcStatus {
    ///     async fn on_response_trailers(&mut self, t: &mut Headers) -> Action {
    ///         if t.get_str("grpc-status").as_deref() != Some("0") {
    ///             legate_sdk::log::warn("a gRPC call failed");
    ///         }
    ///         Action::Continue
    ///     }
    /// }
    /// ```
    async fn on_response_trailers(&mut self, _trailers: &mut Headers) -> Action {
        unimplemented_hook()
    }

    /// The stream ended, completed or reset. Not called while a hook awaits a
    /// call (the stream was reset under it).
    ///
    /// ```
    /// # use legate_sdk::HttpFilter;
    /// struct Count;
    /// impl HttpFilter for Count {
    ///     fn on_done(&mut self) {
    ///         legate_sdk::metrics::Counter::new("streams_done").increment(1);
    ///     }
    /// }
    /// ```
    fn on_done(&mut self) {}
}

/// The per-plugin root of an HTTP filter: gets the plugin configuration once
/// and makes a filter per stream.
///
/// ```
/// use legate_sdk::{HttpFilter, HttpPlugin};
/// use std::rc::Rc;
///
/// struct Greeter { greeting: Rc<String> }
/// struct Greet { greeting: Rc<String> }
/// impl HttpFilter for Greet {}
///
/// impl HttpPlugin for Greeter {
///     type Filter = Greet;
///     fn configure(configuration: &[u8]) -> Result<Self, String> {
///         let g = String::from_utf8(configuration.to_vec()).map_err(|e| e.to_string())?;
///         Ok(Greeter { greeting: Rc::new(g) })
///     }
///     fn new_filter(&self) -> Greet {
///         Greet { greeting: self.greeting.clone() }
///     }
/// }
/// legate_sdk::export_http_filter!(plugin = Greeter);
/// ```
pub trait HttpPlugin: Sized + 'static {
    /// The per-stream filter.
    type Filter: HttpFilter;
    /// Builds the root from the plugin's `configuration` (raw bytes; JSON for a
    /// `google.protobuf.Struct`). An error refuses the proxy config. See the
    /// trait's example.
    fn configure(configuration: &[u8]) -> Result<Self, String>;
    /// A filter for a new stream. See the trait's example.
    fn new_filter(&self) -> Self::Filter;
}

/// The plugin of a filter that takes no configuration: each stream gets
/// `F::default()`. Used by `export_http_filter!(F)` and
/// `export_network_filter!(F)`.
///
/// ```
/// use legate_sdk::{HttpFilter, HttpPlugin, Unconfigured};
/// #[derive(Default)]
/// struct F;
/// impl HttpFilter for F {}
/// assert!(<Unconfigured<F> as HttpPlugin>::configure(b"").is_ok());
/// ```
pub struct Unconfigured<F>(pub(crate) PhantomData<F>);

impl<F: HttpFilter + Default> HttpPlugin for Unconfigured<F> {
    type Filter = F;
    fn configure(_: &[u8]) -> Result<Self, String> {
        Ok(Unconfigured(PhantomData))
    }
    fn new_filter(&self) -> F {
        F::default()
    }
}

thread_local! {
    /// Set by the default hook bodies: the filter does not implement the hook.
    static UNIMPLEMENTED: Cell<bool> = const { Cell::new(false) };
    /// The configured plugin root (Wasm instances are single-threaded).
    static ROOT: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
}

/// The default hook body: continue, and tell the proxy it can skip the hook.
fn unimplemented_hook() -> Action {
    UNIMPLEMENTED.with(|u| u.set(true));
    Action::Continue
}

/// What a hook came to: an action, or "not implemented".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Done {
    Action(Action),
    Unimplemented,
}

impl Done {
    pub(crate) fn action(self) -> Action {
        match self {
            Done::Action(a) => a,
            Done::Unimplemented => Action::Continue,
        }
    }
}

/// Configures the root of plugin type `P`.
pub(crate) fn configure<P: 'static>(
    make: impl FnOnce() -> Result<P, String>,
) -> Result<(), String> {
    crate::log::install_panic_hook();
    let p = make()?;
    ROOT.with(|r| *r.borrow_mut() = Some(Rc::new(p)));
    Ok(())
}

/// The configured root of plugin type `P`, configured with no bytes if the host
/// never called `configure`.
pub(crate) fn root<P: 'static>(configure_empty: impl FnOnce() -> Result<P, String>) -> Rc<P> {
    let have = ROOT.with(|r| r.borrow().clone());
    if let Some(p) = have.and_then(|p| p.downcast::<P>().ok()) {
        return p;
    }
    let p = Rc::new(configure_empty().unwrap_or_else(|e| panic!("configure: {e}")));
    ROOT.with(|r| *r.borrow_mut() = Some(p.clone()));
    p
}

/// Which hook to run.
#[derive(Clone, Copy)]
pub(crate) enum Hook {
    RequestHeaders(bool),
    RequestBody(usize, bool),
    RequestTrailers,
    ResponseHeaders(bool),
    ResponseBody(usize, bool),
    ResponseTrailers,
}

/// One hook run on a stream's filter. Every hook of a filter type runs as this
/// one future type, so finished futures' boxes can take the next ones.
async fn hook<F: HttpFilter>(mut f: F, hook: Hook) -> (F, Done) {
    let action = match hook {
        Hook::RequestHeaders(eos) => {
            let mut h = Headers::live(Map::RequestHeaders);
            f.on_request_headers(&mut h, eos).await
        }
        Hook::RequestBody(len, eos) => f.on_request_body(&mut Body::live(len), eos).await,
        Hook::RequestTrailers => {
            let mut t = Headers::live(Map::RequestTrailers);
            f.on_request_trailers(&mut t).await
        }
        Hook::ResponseHeaders(eos) => {
            let mut h = Headers::live(Map::ResponseHeaders);
            f.on_response_headers(&mut h, eos).await
        }
        Hook::ResponseBody(len, eos) => f.on_response_body(&mut Body::live(len), eos).await,
        Hook::ResponseTrailers => {
            let mut t = Headers::live(Map::ResponseTrailers);
            f.on_response_trailers(&mut t).await
        }
    };
    let done = if UNIMPLEMENTED.with(|u| u.replace(false)) {
        Done::Unimplemented
    } else {
        Done::Action(action)
    };
    (f, done)
}

/// One stream's filter and its pending hook.
struct Stream<F: HttpFilter, Fut>(Slot<F, Fut>);

impl<F: HttpFilter, Fut> Drop for Stream<F, Fut> {
    fn drop(&mut self) {
        if let Slot::Idle(f) = &mut self.0 {
            f.on_done();
        }
    }
}

/// The live streams of an instance (or of a test stream), and the boxes their
/// hooks run in.
struct Streams<F: HttpFilter, Fut> {
    live: Live<Stream<F, Fut>>,
    spare: Spare<Fut>,
    /// [`hook`] for `F`, whose future type is `Fut`.
    make: fn(F, Hook) -> Fut,
}

/// What the export and [`crate::testing`] do with streams of filter type `F`.
pub(crate) trait StreamTable<F> {
    /// Keeps a new stream with filter `f`; returns its number.
    fn insert(&mut self, f: F) -> u32;
    /// Runs a hook of stream `n`; `None` while it awaits calls.
    fn run(&mut self, n: u32, hook: Hook) -> Option<Done>;
    /// Delivers a call's result and continues stream `n`'s pending hook.
    fn resume(&mut self, n: u32, call: u32, result: Result<Response, CallError>) -> Option<Done>;
    /// Ends stream `n`: the filter's `on_done` runs (unless a hook still had
    /// it) and its number may be given again.
    fn remove(&mut self, n: u32);
}

impl<F: HttpFilter, Fut: Future<Output = (F, Done)>> StreamTable<F> for Streams<F, Fut> {
    fn insert(&mut self, f: F) -> u32 {
        self.live.insert(Stream(Slot::Idle(f)))
    }

    fn run(&mut self, n: u32, hook: Hook) -> Option<Done> {
        UNIMPLEMENTED.with(|u| u.set(false));
        let make = self.make;
        self.live.get(n).0.start(|f| make(f, hook), &mut self.spare)
    }

    fn resume(&mut self, n: u32, call: u32, result: Result<Response, CallError>) -> Option<Done> {
        crate::exec::deliver(call, result);
        self.live.get(n).0.resume(&mut self.spare)
    }

    fn remove(&mut self, n: u32) {
        self.live.remove(n);
    }
}

/// Runs `f` on the streams of filter type `F` kept in `cell`.
pub(crate) fn with_streams<F: HttpFilter, R>(
    cell: &crate::live::Cell,
    f: impl FnOnce(&mut dyn StreamTable<F>) -> R,
) -> R {
    typed(cell, hook::<F>, |s| f(s))
}

/// [`with_streams`] with the future type, which has no name: passing
/// `hook::<F>` lets the compiler infer it.
fn typed<F: HttpFilter, Fut: Future<Output = (F, Done)> + 'static, R>(
    cell: &crate::live::Cell,
    make: fn(F, Hook) -> Fut,
    f: impl FnOnce(&mut Streams<F, Fut>) -> R,
) -> R {
    let new = || Streams {
        live: Live::default(),
        spare: Spare::default(),
        make,
    };
    crate::live::with(cell, new, f)
}

/// The `http-handler` export of plugin `P`; made by [`crate::export_http_filter`].
#[doc(hidden)]
pub struct __HttpExport<P>(PhantomData<P>);

fn poll(out: Option<Done>) -> wit::Poll {
    match out {
        Some(Done::Action(a)) => wit::Poll::Ready(a.into_wit()),
        Some(Done::Unimplemented) => wit::Poll::Unimplemented,
        None => wit::Poll::Pending,
    }
}

/// Runs `f` on the instance's streams of plugin `P`.
fn streams<P: HttpPlugin, R>(f: impl FnOnce(&mut dyn StreamTable<P::Filter>) -> R) -> R {
    crate::live::instance(|cell| with_streams(cell, f))
}

/// A new filter of plugin `P`.
fn new_filter<P: HttpPlugin>() -> P::Filter {
    root(|| P::configure(b"")).new_filter()
}

impl<P: HttpPlugin> wit_handler::Guest for __HttpExport<P> {
    fn configure(configuration: Vec<u8>) -> Result<(), String> {
        configure(|| P::configure(&configuration))
    }

    fn new_stream() -> u32 {
        let f = new_filter::<P>();
        streams::<P, _>(|s| s.insert(f))
    }

    fn start(end_of_stream: bool) -> (u32, wit::Poll) {
        let f = new_filter::<P>();
        let (n, out) = streams::<P, _>(|s| {
            let n = s.insert(f);
            (n, s.run(n, Hook::RequestHeaders(end_of_stream)))
        });
        (n, poll(out))
    }

    fn on_request_headers(stream: u32, end_of_stream: bool) -> wit::Poll {
        poll(streams::<P, _>(|s| {
            s.run(stream, Hook::RequestHeaders(end_of_stream))
        }))
    }

    fn on_request_body(stream: u32, len: u64, end_of_stream: bool) -> wit::Poll {
        poll(streams::<P, _>(|s| {
            s.run(stream, Hook::RequestBody(size(len), end_of_stream))
        }))
    }

    fn on_request_trailers(stream: u32) -> wit::Poll {
        poll(streams::<P, _>(|s| s.run(stream, Hook::RequestTrailers)))
    }

    fn on_response_headers(stream: u32, end_of_stream: bool) -> wit::Poll {
        poll(streams::<P, _>(|s| {
            s.run(stream, Hook::ResponseHeaders(end_of_stream))
        }))
    }

    fn on_response_body(stream: u32, len: u64, end_of_stream: bool) -> wit::Poll {
        poll(streams::<P, _>(|s| {
            s.run(stream, Hook::ResponseBody(size(len), end_of_stream))
        }))
    }

    fn on_response_trailers(stream: u32) -> wit::Poll {
        poll(streams::<P, _>(|s| s.run(stream, Hook::ResponseTrailers)))
    }

    fn resume(
        stream: u32,
        call: u32,
        outcome: Result<
            crate::bindings::http::legate::filter::http_client::Response,
            crate::bindings::http::legate::filter::http_client::CallError,
        >,
    ) -> wit::Poll {
        let result = outcome.map(Response::from_wit).map_err(CallError::from_wit);
        poll(streams::<P, _>(|s| s.resume(stream, call, result)))
    }

    fn drop_stream(stream: u32) {
        streams::<P, _>(|s| s.remove(stream));
    }
}

fn size(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
