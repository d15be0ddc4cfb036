//! HTTP filters: the trait authors implement, the values hooks get, and the
//! adapter that exports a filter as the `http-handler` interface.

use std::any::Any;
use std::cell::RefCell;
use std::marker::PhantomData;
use std::rc::Rc;

use crate::bindings::http::exports::legate::filter::http_handler as wit_handler;
use crate::bindings::http::legate::filter::types as wit;
use crate::exec::Slot;
use crate::http::{CallError, Response};

/// A header or trailer map as a hook sees it: names are lowercase, values are
/// bytes, and request and response headers start with their pseudo-headers
/// (`:method`, `:path`, `:authority`, `:scheme`; `:status`). Changes are sent
/// back to the proxy when the hook returns.
///
/// ```
/// let mut h = legate_sdk::Headers::from_pairs([(":path", "/a"), ("x-id", "7")]);
/// h.set("x-id", "8");
/// h.append("x-more", "1");
/// h.remove("x-gone");
/// assert_eq!(h.get_str("x-id"), Some("8"));
/// assert_eq!(h.path(), Some("/a"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    list: Vec<(String, Vec<u8>)>,
    edits: Vec<Edit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Edit {
    Set(String, Vec<u8>),
    Append(String, Vec<u8>),
    Remove(String),
}

impl Headers {
    /// Headers from name/value pairs, e.g. for tests. Names are lowercased.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("Content-Type", "text/plain")]);
    /// assert_eq!(h.get_str("content-type"), Some("text/plain"));
    /// ```
    pub fn from_pairs<N: AsRef<str>, V: AsRef<[u8]>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Headers {
        Headers {
            list: pairs
                .into_iter()
                .map(|(n, v)| (n.as_ref().to_ascii_lowercase(), v.as_ref().to_vec()))
                .collect(),
            edits: Vec::new(),
        }
    }

    pub(crate) fn from_wit(list: Vec<wit::Header>) -> Headers {
        Headers {
            list: list.into_iter().map(|h| (h.name, h.value)).collect(),
            edits: Vec::new(),
        }
    }

    /// The first value of `name` (case-insensitive).
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("x-a", "1"), ("x-a", "2")]);
    /// assert_eq!(h.get("X-A"), Some(&b"1"[..]));
    /// ```
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        self.list
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name`, if it is UTF-8.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("x-a", "yes")]);
    /// assert_eq!(h.get_str("x-a"), Some("yes"));
    /// ```
    pub fn get_str(&self, name: &str) -> Option<&str> {
        std::str::from_utf8(self.get(name)?).ok()
    }

    /// Every value of `name`, in order.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("x-a", "1"), ("x-a", "2")]);
    /// assert_eq!(h.get_all("x-a").count(), 2);
    /// ```
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.list
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Every header, in order, pseudo-headers first.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([("a", "1"), ("b", "2")]);
    /// let names: Vec<&str> = h.iter().map(|(n, _)| n).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.list.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }

    /// How many values there are.
    ///
    /// ```
    /// assert_eq!(legate_sdk::Headers::default().len(), 0);
    /// ```
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    ///
    /// ```
    /// assert!(legate_sdk::Headers::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Replaces every value of `name` with `value`, or adds it.
    ///
    /// ```
    /// let mut h = legate_sdk::Headers::from_pairs([("x-a", "1"), ("x-a", "2")]);
    /// h.set("x-a", "3");
    /// assert_eq!(h.get_all("x-a").collect::<Vec<_>>(), [b"3"]);
    /// ```
    pub fn set(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let name = name.to_ascii_lowercase();
        let value = value.as_ref().to_vec();
        match self.list.iter().position(|(n, _)| *n == name) {
            Some(i) => {
                self.list[i].1 = value.clone();
                let mut j = i + 1;
                while j < self.list.len() {
                    if self.list[j].0 == name {
                        self.list.remove(j);
                    } else {
                        j += 1;
                    }
                }
            }
            None => self.list.push((name.clone(), value.clone())),
        }
        self.edits.push(Edit::Set(name, value));
    }

    /// Adds a value of `name`, keeping the others.
    ///
    /// ```
    /// let mut h = legate_sdk::Headers::default();
    /// h.append("x-a", "1");
    /// h.append("x-a", "2");
    /// assert_eq!(h.get_all("x-a").count(), 2);
    /// ```
    pub fn append(&mut self, name: &str, value: impl AsRef<[u8]>) {
        let name = name.to_ascii_lowercase();
        let value = value.as_ref().to_vec();
        self.list.push((name.clone(), value.clone()));
        self.edits.push(Edit::Append(name, value));
    }

    /// Removes every value of `name`.
    ///
    /// ```
    /// let mut h = legate_sdk::Headers::from_pairs([("x-a", "1")]);
    /// h.remove("x-a");
    /// assert!(h.get("x-a").is_none());
    /// ```
    pub fn remove(&mut self, name: &str) {
        let name = name.to_ascii_lowercase();
        self.list.retain(|(n, _)| *n != name);
        self.edits.push(Edit::Remove(name));
    }

    /// `:path` of request headers.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([(":path", "/x?y=1")]);
    /// assert_eq!(h.path(), Some("/x?y=1"));
    /// ```
    pub fn path(&self) -> Option<&str> {
        self.get_str(":path")
    }

    /// `:method` of request headers.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([(":method", "GET")]);
    /// assert_eq!(h.method(), Some("GET"));
    /// ```
    pub fn method(&self) -> Option<&str> {
        self.get_str(":method")
    }

    /// `:authority` of request headers.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([(":authority", "example.com")]);
    /// assert_eq!(h.authority(), Some("example.com"));
    /// ```
    pub fn authority(&self) -> Option<&str> {
        self.get_str(":authority")
    }

    /// `:status` of response headers.
    ///
    /// ```
    /// let h = legate_sdk::Headers::from_pairs([(":status", "404")]);
    /// assert_eq!(h.status(), Some(404));
    /// ```
    pub fn status(&self) -> Option<u16> {
        self.get_str(":status")?.parse().ok()
    }

    fn take_edits(&mut self) -> Vec<wit::HeaderOp> {
        self.edits
            .drain(..)
            .map(|e| match e {
                Edit::Set(name, value) => wit::HeaderOp::Set(wit::Header { name, value }),
                Edit::Append(name, value) => wit::HeaderOp::Append(wit::Header { name, value }),
                Edit::Remove(name) => wit::HeaderOp::Remove(name),
            })
            .collect()
    }
}

/// A chunk of body (or the whole body, after [`Action::WaitForBody`]).
///
/// ```
/// let mut b = legate_sdk::Body::new("hello");
/// let upper = b.bytes().to_ascii_uppercase();
/// b.set(upper);
/// assert_eq!(b.bytes(), b"HELLO");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Body {
    data: Vec<u8>,
    changed: bool,
}

impl Body {
    /// A body with these bytes, e.g. for tests.
    ///
    /// ```
    /// assert_eq!(legate_sdk::Body::new("x").len(), 1);
    /// ```
    pub fn new(data: impl Into<Vec<u8>>) -> Body {
        Body {
            data: data.into(),
            changed: false,
        }
    }

    /// The bytes.
    ///
    /// ```
    /// assert_eq!(legate_sdk::Body::new("x").bytes(), b"x");
    /// ```
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Replaces the bytes that go on.
    ///
    /// ```
    /// let mut b = legate_sdk::Body::new("x");
    /// b.set("y");
    /// assert_eq!(b.bytes(), b"y");
    /// ```
    pub fn set(&mut self, data: impl Into<Vec<u8>>) {
        self.data = data.into();
        self.changed = true;
    }

    /// How many bytes there are.
    ///
    /// ```
    /// assert_eq!(legate_sdk::Body::new("ab").len(), 2);
    /// ```
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether there are none.
    ///
    /// ```
    /// assert!(legate_sdk::Body::default().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn changed(&self) -> bool {
        self.changed
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.data
    }
}

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
    async fn on_request_headers(&mut self, _headers: &mut Headers, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    /// A chunk of request body, or the whole body after [`Action::WaitForBody`].
    async fn on_request_body(&mut self, _body: &mut Body, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    /// Request trailers: the end of the request.
    async fn on_request_trailers(&mut self, _trailers: &mut Headers) -> Action {
        Action::Continue
    }

    /// Response headers, `:status` first.
    async fn on_response_headers(
        &mut self,
        _headers: &mut Headers,
        _end_of_stream: bool,
    ) -> Action {
        Action::Continue
    }

    /// A chunk of response body.
    async fn on_response_body(&mut self, _body: &mut Body, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    /// Response trailers.
    async fn on_response_trailers(&mut self, _trailers: &mut Headers) -> Action {
        Action::Continue
    }

    /// The stream ended, completed or reset.
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
    /// `google.protobuf.Struct`). An error refuses the proxy config.
    fn configure(configuration: &[u8]) -> Result<Self, String>;
    /// A filter for a new stream.
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
    /// The configured plugin root (Wasm instances are single-threaded).
    static ROOT: RefCell<Option<Rc<dyn Any>>> = const { RefCell::new(None) };
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

/// What a finished hook hands back.
pub(crate) struct HookOut {
    pub headers: Option<Headers>,
    pub body: Option<Body>,
    pub action: Action,
}

impl HookOut {
    fn into_wit(mut self) -> wit::Outcome {
        wit::Outcome {
            edits: self
                .headers
                .as_mut()
                .map(Headers::take_edits)
                .unwrap_or_default(),
            body: self.body.filter(|b| b.changed).map(|b| b.data),
            action: match self.action {
                Action::Continue => wit::Action::Continue,
                Action::Respond(r) => wit::Action::Respond(r.into_wit()),
                Action::WaitForBody => wit::Action::WaitForBody,
            },
        }
    }
}

/// One stream's filter and its pending hook; used by the export and by
/// [`crate::testing`].
pub(crate) struct Stream<F: HttpFilter> {
    slot: RefCell<Slot<F, HookOut>>,
}

/// Which hook to run.
pub(crate) enum Hook {
    RequestHeaders(Headers, bool),
    RequestBody(Body, bool),
    RequestTrailers(Headers),
    ResponseHeaders(Headers, bool),
    ResponseBody(Body, bool),
    ResponseTrailers(Headers),
}

impl<F: HttpFilter> Stream<F> {
    pub(crate) fn new(f: F) -> Self {
        Stream {
            slot: RefCell::new(Slot::Idle(f)),
        }
    }

    /// Runs a hook; `None` while it awaits calls.
    pub(crate) fn run(&self, hook: Hook) -> Option<HookOut> {
        self.slot.borrow_mut().start(|mut f| async move {
            let out = match hook {
                Hook::RequestHeaders(mut h, eos) => {
                    let action = f.on_request_headers(&mut h, eos).await;
                    HookOut::headers(h, action)
                }
                Hook::RequestBody(mut b, eos) => {
                    let action = f.on_request_body(&mut b, eos).await;
                    HookOut::body(b, action)
                }
                Hook::RequestTrailers(mut t) => {
                    let action = f.on_request_trailers(&mut t).await;
                    HookOut::headers(t, action)
                }
                Hook::ResponseHeaders(mut h, eos) => {
                    let action = f.on_response_headers(&mut h, eos).await;
                    HookOut::headers(h, action)
                }
                Hook::ResponseBody(mut b, eos) => {
                    let action = f.on_response_body(&mut b, eos).await;
                    HookOut::body(b, action)
                }
                Hook::ResponseTrailers(mut t) => {
                    let action = f.on_response_trailers(&mut t).await;
                    HookOut::headers(t, action)
                }
            };
            (f, out)
        })
    }

    /// Delivers a call's result and continues the pending hook.
    pub(crate) fn resume(&self, call: u32, result: Result<Response, CallError>) -> Option<HookOut> {
        crate::exec::deliver(call, result);
        self.slot.borrow_mut().resume()
    }

    pub(crate) fn done(&self) {
        if let Some(f) = self.slot.borrow_mut().idle() {
            f.on_done();
        }
    }
}

impl HookOut {
    fn headers(h: Headers, action: Action) -> HookOut {
        HookOut {
            headers: Some(h),
            body: None,
            action,
        }
    }
    fn body(b: Body, action: Action) -> HookOut {
        HookOut {
            headers: None,
            body: Some(b),
            action,
        }
    }
}

/// The `http-handler` export of plugin `P`; made by [`crate::export_http_filter`].
#[doc(hidden)]
pub struct __HttpExport<P>(PhantomData<P>);

/// The exported `stream` resource.
#[doc(hidden)]
pub struct HttpStreamExport<P: HttpPlugin>(Stream<P::Filter>);

fn poll(out: Option<HookOut>) -> wit::Poll {
    match out {
        Some(o) => wit::Poll::Ready(o.into_wit()),
        None => wit::Poll::Pending,
    }
}

impl<P: HttpPlugin> wit_handler::Guest for __HttpExport<P> {
    type HttpStream = HttpStreamExport<P>;

    fn configure(configuration: Vec<u8>) -> Result<(), String> {
        configure(|| P::configure(&configuration))
    }
}

impl<P: HttpPlugin> wit_handler::GuestHttpStream for HttpStreamExport<P> {
    fn new() -> Self {
        HttpStreamExport(Stream::new(root(|| P::configure(b"")).new_filter()))
    }

    fn on_request_headers(&self, headers: Vec<wit::Header>, end_of_stream: bool) -> wit::Poll {
        poll(self.0.run(Hook::RequestHeaders(
            Headers::from_wit(headers),
            end_of_stream,
        )))
    }

    fn on_request_body(&self, chunk: Vec<u8>, end_of_stream: bool) -> wit::Poll {
        poll(
            self.0
                .run(Hook::RequestBody(Body::new(chunk), end_of_stream)),
        )
    }

    fn on_request_trailers(&self, trailers: Vec<wit::Header>) -> wit::Poll {
        poll(
            self.0
                .run(Hook::RequestTrailers(Headers::from_wit(trailers))),
        )
    }

    fn on_response_headers(&self, headers: Vec<wit::Header>, end_of_stream: bool) -> wit::Poll {
        poll(self.0.run(Hook::ResponseHeaders(
            Headers::from_wit(headers),
            end_of_stream,
        )))
    }

    fn on_response_body(&self, chunk: Vec<u8>, end_of_stream: bool) -> wit::Poll {
        poll(
            self.0
                .run(Hook::ResponseBody(Body::new(chunk), end_of_stream)),
        )
    }

    fn on_response_trailers(&self, trailers: Vec<wit::Header>) -> wit::Poll {
        poll(
            self.0
                .run(Hook::ResponseTrailers(Headers::from_wit(trailers))),
        )
    }

    fn resume(
        &self,
        call: u32,
        outcome: Result<
            crate::bindings::http::legate::filter::http_client::Response,
            crate::bindings::http::legate::filter::http_client::CallError,
        >,
    ) -> wit::Poll {
        let result = outcome.map(Response::from_wit).map_err(CallError::from_wit);
        poll(self.0.resume(call, result))
    }

    fn on_done(&self) {
        self.0.done();
    }
}
