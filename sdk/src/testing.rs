//! Unit-test filters natively, with plain `cargo test`: no proxy, no Wasm
//! runtime. Feed configuration, headers and bodies; assert on the action and on
//! what the filter changed. Outbound calls go to a handler the test sets; logs,
//! metrics, shared data and properties live in a per-thread mock.
//!
//! ```
//! use legate_sdk::testing::Harness;
//! use legate_sdk::{Action, Headers, HttpFilter};
//!
//! #[derive(Default)]
//! struct Tag;
//! impl HttpFilter for Tag {
//!     async fn on_request_headers(&mut self, h: &mut Headers, _eos: bool) -> Action {
//!         h.set("x-tag", "1");
//!         Action::Continue
//!     }
//! }
//!
//! let harness = Harness::<legate_sdk::Unconfigured<Tag>>::new(b"").unwrap();
//! let mut stream = harness.stream();
//! let out = stream.request_headers(&[(":path", "/")], true);
//! assert_eq!(out.action, Action::Continue);
//! assert_eq!(out.headers.get_str("x-tag").as_deref(), Some("1"));
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use crate::filter::{Hook, StreamTable, with_streams};
use crate::http::{CallError, Request, Response};
use crate::log::Level;
use crate::message::{List, Map};
use crate::network::data_hook;
use crate::shared::Entry;
use crate::{Action, Headers, HttpPlugin, NetworkAction, NetworkFilter, NetworkPlugin};

/// The host as a test sees it.
#[derive(Default)]
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) struct Mock {
    pub logs: Vec<(Level, String)>,
    pub counters: HashMap<String, u64>,
    pub gauges: HashMap<String, i64>,
    pub histograms: HashMap<String, Vec<u64>>,
    pub shared: HashMap<String, Entry>,
    pub properties: HashMap<Vec<String>, Vec<u8>>,
    pub calls: Vec<(u32, Request)>,
    pub next_call: u32,
    /// The message of the running hook.
    pub maps: HashMap<Map, List>,
    pub body: Vec<u8>,
}

thread_local! {
    static MOCK: RefCell<Mock> = RefCell::new(Mock::default());
}

pub(crate) fn mock<R>(f: impl FnOnce(&mut Mock) -> R) -> R {
    MOCK.with(|m| f(&mut m.borrow_mut()))
}

/// Lines the filter logged on this thread, oldest first.
///
/// ```
/// legate_sdk::log::info("hi");
/// assert!(legate_sdk::testing::logs().iter().any(|(_, m)| m == "hi"));
/// ```
pub fn logs() -> Vec<(Level, String)> {
    mock(|m| m.logs.clone())
}

/// A counter's value, if the filter defined it.
///
/// ```
/// legate_sdk::metrics::Counter::new("c").increment(2);
/// assert_eq!(legate_sdk::testing::counter("c"), Some(2));
/// ```
pub fn counter(name: &str) -> Option<u64> {
    mock(|m| m.counters.get(name).copied())
}

/// A gauge's value, if the filter defined it.
///
/// ```
/// legate_sdk::metrics::Gauge::new("g").set(-1);
/// assert_eq!(legate_sdk::testing::gauge("g"), Some(-1));
/// ```
pub fn gauge(name: &str) -> Option<i64> {
    mock(|m| m.gauges.get(name).copied())
}

/// The values a histogram recorded, if the filter defined it.
///
/// ```
/// legate_sdk::metrics::Histogram::new("h").record(9);
/// assert_eq!(legate_sdk::testing::histogram("h"), Some(vec![9]));
/// ```
pub fn histogram(name: &str) -> Option<Vec<u64>> {
    mock(|m| m.histograms.get(name).cloned())
}

/// Sets what [`crate::properties::get`] returns for `path`.
///
/// ```
/// legate_sdk::testing::set_property(&["source", "address"], "10.0.0.1:5000");
/// assert_eq!(
///     legate_sdk::properties::get_str(&["source", "address"]).as_deref(),
///     Some("10.0.0.1:5000")
/// );
/// ```
pub fn set_property(path: &[&str], value: impl AsRef<[u8]>) {
    let path = path.iter().map(|s| s.to_string()).collect();
    mock(|m| {
        m.properties.insert(path, value.as_ref().to_vec());
    });
}

/// The outbound requests made so far on this thread, oldest first.
///
/// ```
/// assert!(legate_sdk::testing::calls().is_empty());
/// ```
pub fn calls() -> Vec<Request> {
    mock(|m| m.calls.iter().map(|(_, r)| r.clone()).collect())
}

/// Clears logs, metrics, shared data, properties and calls of this thread.
///
/// ```
/// legate_sdk::log::info("x");
/// legate_sdk::testing::reset();
/// assert!(legate_sdk::testing::logs().is_empty());
/// ```
pub fn reset() {
    mock(|m| *m = Mock::default());
}

/// What a hook did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The action it returned.
    pub action: Action,
    /// The headers or trailers after its changes (empty for body hooks).
    pub headers: Headers,
    /// The body after its changes (empty for header hooks).
    pub body: Vec<u8>,
}

type Handler = Box<dyn FnMut(&Request) -> Result<Response, CallError>>;

/// A configured plugin, making test streams.
///
/// ```
/// use legate_sdk::testing::Harness;
/// use legate_sdk::{HttpFilter, Unconfigured};
/// #[derive(Default)]
/// struct F;
/// impl HttpFilter for F {}
/// let h = Harness::<Unconfigured<F>>::new(b"").unwrap();
/// let _stream = h.stream();
/// ```
pub struct Harness<P: HttpPlugin> {
    plugin: Rc<P>,
    handler: RefCell<Option<Handler>>,
}

impl<P: HttpPlugin> Harness<P> {
    /// Configures the plugin, as the proxy does once per instance.
    ///
    /// ```
    /// # use legate_sdk::{HttpFilter, Unconfigured};
    /// # #[derive(Default)] struct F; impl HttpFilter for F {}
    /// assert!(legate_sdk::testing::Harness::<Unconfigured<F>>::new(b"{}").is_ok());
    /// ```
    pub fn new(configuration: &[u8]) -> Result<Harness<P>, String> {
        Ok(Harness {
            plugin: Rc::new(P::configure(configuration)?),
            handler: RefCell::new(None),
        })
    }

    /// Answers the filter's outbound calls with `handler`. Without one, calls
    /// fail with [`CallError::ConnectionFailure`].
    ///
    /// ```
    /// # use legate_sdk::{HttpFilter, Unconfigured};
    /// # #[derive(Default)] struct F; impl HttpFilter for F {}
    /// use legate_sdk::http::Response;
    /// let h = legate_sdk::testing::Harness::<Unconfigured<F>>::new(b"").unwrap();
    /// h.on_call(|req| Ok(Response::new(if req.path == "/ok" { 200 } else { 403 }, "")));
    /// ```
    pub fn on_call(
        &self,
        handler: impl FnMut(&Request) -> Result<Response, CallError> + 'static,
    ) -> &Self {
        *self.handler.borrow_mut() = Some(Box::new(handler));
        self
    }

    /// A new stream with a filter from the plugin.
    ///
    /// ```
    /// # use legate_sdk::{HttpFilter, Unconfigured};
    /// # #[derive(Default)] struct F; impl HttpFilter for F {}
    /// let h = legate_sdk::testing::Harness::<Unconfigured<F>>::new(b"").unwrap();
    /// let mut s = h.stream();
    /// assert_eq!(s.response_headers(&[(":status", "200")], true).action, legate_sdk::Action::Continue);
    /// ```
    pub fn stream(&self) -> TestStream<'_, P> {
        let streams = crate::live::Cell::default();
        let n = with_streams(&streams, |s| s.insert(self.plugin.new_filter()));
        TestStream {
            harness: self,
            streams,
            n,
        }
    }
}

/// One stream through the filter. Each call runs a hook to completion,
/// answering its outbound calls with the harness's handler.
pub struct TestStream<'h, P: HttpPlugin> {
    harness: &'h Harness<P>,
    /// Its own table of one stream, numbered `n`, as the export keeps them;
    /// dropping it runs the filter's `on_done`.
    streams: crate::live::Cell,
    n: u32,
}

fn list(pairs: &[(&str, &str)]) -> List {
    pairs
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.as_bytes().to_vec()))
        .collect()
}

impl<P: HttpPlugin> TestStream<'_, P> {
    /// Runs a hook on `map` (or the body) as the proxy would: the maps of the
    /// other direction are out of reach.
    fn run(&mut self, hook: Hook, map: Option<(Map, List)>, body: &[u8]) -> Outcome {
        let request = matches!(
            hook,
            Hook::RequestHeaders(_) | Hook::RequestBody(..) | Hook::RequestTrailers
        );
        mock(|m| {
            m.maps
                .retain(|k, _| matches!(k, Map::RequestHeaders | Map::RequestTrailers) == request);
            if let Some((k, l)) = map.clone() {
                m.maps.insert(k, l);
            }
            m.body = body.to_vec();
        });
        let seen = mock(|m| m.calls.len());
        let n = self.n;
        let mut out = with_streams(&self.streams, |s: &mut dyn StreamTable<P::Filter>| {
            s.run(n, hook)
        });
        let mut next = seen;
        while out.is_none() {
            let pending: Vec<(u32, Request)> = mock(|m| m.calls[next..].to_vec());
            assert!(
                !pending.is_empty(),
                "the hook is pending but made no outbound call"
            );
            next += pending.len();
            for (id, req) in pending {
                let result = match self.harness.handler.borrow_mut().as_mut() {
                    Some(h) => h(&req),
                    None => Err(CallError::ConnectionFailure),
                };
                out = with_streams(&self.streams, |s: &mut dyn StreamTable<P::Filter>| {
                    s.resume(n, id, result)
                });
                if out.is_some() {
                    break;
                }
            }
        }
        let action = out.unwrap_or_else(|| unreachable!()).action();
        mock(|m| Outcome {
            action,
            headers: Headers::detached(
                map.and_then(|(k, _)| m.maps.get(&k).cloned())
                    .unwrap_or_default(),
            ),
            body: if matches!(hook, Hook::RequestBody(..) | Hook::ResponseBody(..)) {
                m.body.clone()
            } else {
                Vec::new()
            },
        })
    }

    /// Runs `on_request_headers`.
    ///
    /// ```
    /// # use legate_sdk::{HttpFilter, Unconfigured};
    /// # #[derive(Default)] struct F; impl HttpFilter for F {}
    /// # let h = legate_sdk::testing::Harness::<Unconfigured<F>>::new(b"").unwrap();
    /// let out = h.stream().request_headers(&[(":method", "GET"), (":path", "/")], true);
    /// assert_eq!(out.headers.path().as_deref(), Some("/"));
    /// ```
    pub fn request_headers(&mut self, pairs: &[(&str, &str)], end_of_stream: bool) -> Outcome {
        let map = Some((Map::RequestHeaders, list(pairs)));
        self.run(Hook::RequestHeaders(end_of_stream), map, b"")
    }

    /// Runs `on_request_body`.
    ///
    /// ```
    /// # use legate_sdk::{HttpFilter, Unconfigured};
    /// # #[derive(Default)] struct F; impl HttpFilter for F {}
    /// # let h = legate_sdk::testing::Harness::<Unconfigured<F>>::new(b"").unwrap();
    /// assert_eq!(h.stream().request_body(b"abc", true).body, b"abc");
    /// ```
    pub fn request_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Outcome {
        self.run(Hook::RequestBody(chunk.len(), end_of_stream), None, chunk)
    }

    /// Runs `on_request_trailers`.
    ///
    /// ```
    /// # use legate_sdk::{HttpFilter, Unconfigured};
    /// # #[derive(Default)] struct F; impl HttpFilter for F {}
    /// # let h = legate_sdk::testing::Harness::<Unconfigured<F>>::new(b"").unwrap();
    /// let out = h.stream().request_trailers(&[("x-sum", "1")]);
    /// assert_eq!(out.headers.get_str("x-sum").as_deref(), Some("1"));
    /// ```
    pub fn request_trailers(&mut self, pairs: &[(&str, &str)]) -> Outcome {
        let map = Some((Map::RequestTrailers, list(pairs)));
        self.run(Hook::RequestTrailers, map, b"")
    }

    /// Runs `on_response_headers`.
    ///
    /// ```
    /// # use legate_sdk::{HttpFilter, Unconfigured};
    /// # #[derive(Default)] struct F; impl HttpFilter for F {}
    /// # let h = legate_sdk::testing::Harness::<Unconfigured<F>>::new(b"").unwrap();
    /// assert_eq!(h.stream().response_headers(&[(":status", "204")], true).headers.status(), Some(204));
    /// ```
    pub fn response_headers(&mut self, pairs: &[(&str, &str)], end_of_stream: bool) -> Outcome {
        let map = Some((Map::ResponseHeaders, list(pairs)));
        self.run(Hook::ResponseHeaders(end_of_stream), map, b"")
    }

    /// Runs `on_response_body`.
    ///
    /// ```
    /// # use legate_sdk::{HttpFilter, Unconfigured};
    /// # #[derive(Default)] struct F; impl HttpFilter for F {}
    /// # let h = legate_sdk::testing::Harness::<Unconfigured<F>>::new(b"").unwrap();
    /// assert_eq!(h.stream().response_body(b"x", false).body, b"x");
    /// ```
    pub fn response_body(&mut self, chunk: &[u8], end_of_stream: bool) -> Outcome {
        self.run(Hook::ResponseBody(chunk.len(), end_of_stream), None, chunk)
    }

    /// Runs `on_response_trailers`.
    ///
    /// ```
    /// # use legate_sdk::{HttpFilter, Unconfigured};
    /// # #[derive(Default)] struct F; impl HttpFilter for F {}
    /// # let h = legate_sdk::testing::Harness::<Unconfigured<F>>::new(b"").unwrap();
    /// assert_eq!(h.stream().response_trailers(&[("grpc-status", "0")]).action, legate_sdk::Action::Continue);
    /// ```
    pub fn response_trailers(&mut self, pairs: &[(&str, &str)]) -> Outcome {
        let map = Some((Map::ResponseTrailers, list(pairs)));
        self.run(Hook::ResponseTrailers, map, b"")
    }
}

/// A network filter on one test connection.
///
/// ```
/// use legate_sdk::testing::Connection;
/// use legate_sdk::{NetworkAction, NetworkFilter, Unconfigured};
/// #[derive(Default)]
/// struct Pass;
/// impl NetworkFilter for Pass {}
/// let mut c = Connection::<Unconfigured<Pass>>::new(b"").unwrap();
/// assert_eq!(c.downstream(b"ping", false), (b"ping".to_vec(), NetworkAction::Continue));
/// ```
pub struct Connection<P: NetworkPlugin> {
    filter: P::Filter,
}

impl<P: NetworkPlugin> Connection<P> {
    /// Configures the plugin and opens a connection (`on_new_connection`).
    ///
    /// ```
    /// # use legate_sdk::{NetworkFilter, Unconfigured};
    /// # #[derive(Default)] struct Pass; impl NetworkFilter for Pass {}
    /// assert!(legate_sdk::testing::Connection::<Unconfigured<Pass>>::new(b"").is_ok());
    /// ```
    pub fn new(configuration: &[u8]) -> Result<Connection<P>, String> {
        let mut filter = P::configure(configuration)?.new_filter();
        if filter.on_new_connection() == NetworkAction::Close {
            return Err("on_new_connection closed the connection".into());
        }
        Ok(Connection { filter })
    }

    /// Client bytes through `on_downstream_data`: what goes on, and the action.
    ///
    /// ```
    /// # use legate_sdk::{NetworkFilter, Unconfigured};
    /// # #[derive(Default)] struct Pass; impl NetworkFilter for Pass {}
    /// # let mut c = legate_sdk::testing::Connection::<Unconfigured<Pass>>::new(b"").unwrap();
    /// assert_eq!(c.downstream(b"a", true).0, b"a");
    /// ```
    pub fn downstream(&mut self, data: &[u8], end_of_stream: bool) -> (Vec<u8>, NetworkAction) {
        let f = &mut self.filter;
        let (out, close) = data_hook(|b| f.on_downstream_data(b, end_of_stream), data.to_vec());
        (out.unwrap_or_else(|| data.to_vec()), close_action(close))
    }

    /// Upstream bytes through `on_upstream_data`.
    ///
    /// ```
    /// # use legate_sdk::{NetworkFilter, Unconfigured};
    /// # #[derive(Default)] struct Pass; impl NetworkFilter for Pass {}
    /// # let mut c = legate_sdk::testing::Connection::<Unconfigured<Pass>>::new(b"").unwrap();
    /// assert_eq!(c.upstream(b"b", false).0, b"b");
    /// ```
    pub fn upstream(&mut self, data: &[u8], end_of_stream: bool) -> (Vec<u8>, NetworkAction) {
        let f = &mut self.filter;
        let (out, close) = data_hook(|b| f.on_upstream_data(b, end_of_stream), data.to_vec());
        (out.unwrap_or_else(|| data.to_vec()), close_action(close))
    }
}

fn close_action(close: bool) -> NetworkAction {
    if close {
        NetworkAction::Close
    } else {
        NetworkAction::Continue
    }
}

impl<P: NetworkPlugin> Drop for Connection<P> {
    fn drop(&mut self) {
        self.filter.on_close();
    }
}
