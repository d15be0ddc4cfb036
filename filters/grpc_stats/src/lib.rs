//! Envoy's gRPC statistics filter, `envoy.filters.http.grpc_stats`: per service
//! and method, calls by outcome and by status code, and the messages each way,
//! counted across frames split over body chunks.
//!
//! Stats live under `cluster.<routed cluster>.grpc.`, followed by
//! `<service>.<method>.` for methods that get their own stats
//! (`stats_for_all_methods`, or the `individual_method_stats_allowlist`):
//! `success`, `failure`, `total`, one counter per status (`0`..`16`, `other`),
//! `request_message_count`, `response_message_count`, and with
//! `enable_upstream_stats` the histogram `upstream_rq_time`. Like Envoy's, each is
//! created when first counted. The status comes from the trailers, or from the
//! headers of a trailers-only response.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod frames;

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use bytes::Bytes;
use legate_filter_api::http::{HeaderMap, HeaderValue, StatusCode};
use legate_filter_api::matcher::{is_grpc, split_query};
use legate_filter_api::stats::{Counter, Histogram, Store};
use legate_filter_api::{
    BodyShape, DataAction, FilterStateObject, HeadersAction, HttpFilter, HttpFilterFactory,
    RequestHead, ResponseHead, Step, StreamInfo,
};

pub use frames::FrameCounter;

/// The filter state key, as in Envoy.
pub const FILTER_STATE_KEY: &str = "envoy.filters.http.grpc_stats";

/// Which methods get stats of their own.
#[derive(Debug, Clone, Default)]
pub enum PerMethod {
    /// `stats_for_all_methods: true`: every method (unbounded: each new method
    /// name makes new stats).
    All,
    /// `individual_method_stats_allowlist`: these services' methods; others count
    /// at the cluster level.
    Allowlist(HashMap<String, HashSet<String>>),
    /// Neither: everything counts at the cluster level.
    #[default]
    None,
}

/// `envoy.extensions.filters.http.grpc_stats.v3.FilterConfig`.
#[derive(Debug, Clone, Default)]
pub struct GrpcStatsConfig {
    /// `emit_filter_state`: message counts in the filter state.
    pub emit_filter_state: bool,
    /// `stats_for_all_methods` / `individual_method_stats_allowlist`.
    pub per_method: PerMethod,
    /// `enable_upstream_stats`: the `upstream_rq_time` histogram.
    pub enable_upstream_stats: bool,
    /// `replace_dots_in_grpc_service_name`: `pkg.Svc` counts as `pkg_Svc`.
    pub replace_dots_in_grpc_service_name: bool,
}

/// gRPC status codes with a name; any other value counts as `other`.
const STATUSES: [&str; 17] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
];

/// The stats of one cluster, or of one method of one cluster, each made on
/// first use.
struct Names {
    /// `cluster.<c>.grpc.` plus `<service>.<method>.` when per method.
    prefix: String,
    success: OnceLock<Counter>,
    failure: OnceLock<Counter>,
    total: OnceLock<Counter>,
    request_message_count: OnceLock<Counter>,
    response_message_count: OnceLock<Counter>,
    statuses: [OnceLock<Counter>; STATUSES.len() + 1],
    upstream_rq_time: OnceLock<Histogram>,
}

impl Names {
    fn new(prefix: String) -> Names {
        Names {
            prefix,
            success: OnceLock::new(),
            failure: OnceLock::new(),
            total: OnceLock::new(),
            request_message_count: OnceLock::new(),
            response_message_count: OnceLock::new(),
            statuses: Default::default(),
            upstream_rq_time: OnceLock::new(),
        }
    }

    fn counter<'a>(&'a self, store: &Store, c: &'a OnceLock<Counter>, name: &str) -> &'a Counter {
        c.get_or_init(|| store.counter(format!("{}{name}", self.prefix)))
    }

    /// One call ended with `status` (the header's exact text).
    fn charge(&self, store: &Store, status: &[u8]) {
        let slot = STATUSES
            .iter()
            .position(|s| s.as_bytes() == status)
            .unwrap_or(STATUSES.len());
        let name = STATUSES.get(slot).copied().unwrap_or("other");
        self.counter(store, &self.statuses[slot], name).inc();
        if status == b"0" {
            self.counter(store, &self.success, "success").inc();
        } else {
            self.counter(store, &self.failure, "failure").inc();
        }
        self.counter(store, &self.total, "total").inc();
    }
}

/// Stats by method name, made on first use.
type ByMethod = HashMap<String, Arc<Names>>;

struct Shared {
    config: GrpcStatsConfig,
    store: &'static Store,
    /// Stats by cluster, then service and method; service `""` holds the
    /// cluster-level ones.
    names: Mutex<HashMap<Arc<str>, HashMap<String, ByMethod>>>,
}

impl Shared {
    /// The stats of `cluster`, per method when `method` is given. Looked up by
    /// borrowed names: a known method costs no allocation.
    fn names(&self, cluster: &Arc<str>, method: Option<(&str, &str)>) -> Arc<Names> {
        let (service, method) = method.unwrap_or(("", ""));
        let mut all = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = all
            .get(&**cluster)
            .and_then(|m| m.get(service))
            .and_then(|m| m.get(method))
        {
            return n.clone();
        }
        let prefix = if service.is_empty() {
            format!("cluster.{cluster}.grpc.")
        } else {
            format!("cluster.{cluster}.grpc.{service}.{method}.")
        };
        let n = Arc::new(Names::new(prefix));
        all.entry(cluster.clone())
            .or_default()
            .entry(service.to_string())
            .or_default()
            .insert(method.to_string(), n.clone());
        n
    }
}

/// Makes a [`GrpcStatsFilter`] per stream.
pub struct GrpcStatsFactory(Arc<Shared>);

impl GrpcStatsFactory {
    /// A factory counting into `store`.
    ///
    /// ```
    /// use legate_grpc_stats::{GrpcStatsConfig, GrpcStatsFactory};
    /// let store = Box::leak(Box::new(legate_filter_api::stats::Store::default()));
    /// let _f = GrpcStatsFactory::new(GrpcStatsConfig::default(), store);
    /// ```
    pub fn new(config: GrpcStatsConfig, store: &'static Store) -> GrpcStatsFactory {
        GrpcStatsFactory(Arc::new(Shared {
            config,
            store,
            names: Mutex::new(HashMap::new()),
        }))
    }
}

impl HttpFilterFactory for GrpcStatsFactory {
    fn create(&self) -> Box<dyn HttpFilter> {
        Box::new(GrpcStatsFilter {
            shared: self.0.clone(),
            names: None,
            grpc_request: false,
            grpc_response: false,
            request: FrameCounter::default(),
            response: FrameCounter::default(),
            state: None,
            request_sent: None,
            timed: false,
        })
    }
}

/// The message counts in the filter state (Envoy's `FilterObject`).
#[derive(Debug, Default)]
struct MessageCounts {
    request: Cell<u64>,
    response: Cell<u64>,
}

impl FilterStateObject for MessageCounts {
    fn json(&self) -> Option<String> {
        // Proto3 JSON: 64-bit integers are strings, zero fields are left out.
        let mut fields = Vec::new();
        if self.request.get() > 0 {
            fields.push(format!(
                "\"requestMessageCount\":\"{}\"",
                self.request.get()
            ));
        }
        if self.response.get() > 0 {
            fields.push(format!(
                "\"responseMessageCount\":\"{}\"",
                self.response.get()
            ));
        }
        Some(format!("{{{}}}", fields.join(",")))
    }

    fn plain(&self) -> Option<String> {
        Some(format!("{},{}", self.request.get(), self.response.get()))
    }
}

/// The per-stream filter.
pub struct GrpcStatsFilter {
    shared: Arc<Shared>,
    /// Where this call counts; `None` when it is not tracked.
    names: Option<Arc<Names>>,
    grpc_request: bool,
    grpc_response: bool,
    request: FrameCounter,
    response: FrameCounter,
    state: Option<Rc<MessageCounts>>,
    /// When the whole request had passed, for `upstream_rq_time`.
    request_sent: Option<Instant>,
    timed: bool,
}

/// `/service/method` (query ignored, empty segments skipped), as Envoy reads it.
fn service_and_method(path: &str) -> Option<(&str, &str)> {
    let (p, _) = split_query(path);
    let mut parts = p.split('/').filter(|s| !s.is_empty());
    let service = parts.next()?;
    let method = parts.next()?;
    parts.next().is_none().then_some((service, method))
}

impl GrpcStatsFilter {
    fn resolve(&self, head: &RequestHead, cluster: &Arc<str>) -> Option<Arc<Names>> {
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let (service, method) = service_and_method(path)?;
        let shared = &self.shared;
        let per_method = match &shared.config.per_method {
            PerMethod::All => true,
            PerMethod::Allowlist(l) => l.get(service).is_some_and(|m| m.contains(method)),
            PerMethod::None => false,
        };
        if !per_method {
            return Some(shared.names(cluster, None));
        }
        if shared.config.replace_dots_in_grpc_service_name && service.contains('.') {
            let service = service.replace('.', "_");
            return Some(shared.names(cluster, Some((&service, method))));
        }
        Some(shared.names(cluster, Some((service, method))))
    }

    fn counted(&mut self, request: bool, delta: u64, info: &mut StreamInfo) {
        if delta == 0 {
            return;
        }
        if self.shared.config.emit_filter_state {
            let state = self.state.get_or_insert_with(|| {
                let s = Rc::new(MessageCounts::default());
                info.set_filter_state(FILTER_STATE_KEY, s.clone());
                s
            });
            state.request.set(self.request.count());
            state.response.set(self.response.count());
        }
        if let Some(n) = &self.names {
            let store = self.shared.store;
            let c = if request {
                n.counter(store, &n.request_message_count, "request_message_count")
            } else {
                n.counter(store, &n.response_message_count, "response_message_count")
            };
            c.add(delta);
        }
    }

    fn charge(&self, status: Option<&HeaderValue>) {
        if let (Some(n), Some(s)) = (&self.names, status) {
            n.charge(self.shared.store, s.as_bytes());
        }
    }

    /// `upstream_rq_time`, once, for calls that reached an upstream.
    fn time_upstream(&mut self, info: &StreamInfo) {
        if self.timed || !self.shared.config.enable_upstream_stats || info.upstream_host.is_none() {
            return;
        }
        if let (Some(n), Some(sent)) = (&self.names, self.request_sent) {
            self.timed = true;
            let h = n.upstream_rq_time.get_or_init(|| {
                self.shared
                    .store
                    .histogram(format!("{}upstream_rq_time", n.prefix))
            });
            h.record_duration(sent.elapsed());
        }
    }
}

impl HttpFilter for GrpcStatsFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut RequestHead,
        end_of_stream: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        self.grpc_request = is_grpc(&head.headers);
        if self.grpc_request
            && let Some(cluster) = &info.upstream_cluster
        {
            self.names = self.resolve(head, cluster);
        }
        if end_of_stream {
            self.request_sent = Some(Instant::now());
        }
        Step::Done(HeadersAction::Continue)
    }

    fn on_request_body<'a>(
        &'a mut self,
        chunk: &'a mut Bytes,
        end_of_stream: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        if self.grpc_request {
            let delta = self.request.feed(chunk);
            self.counted(true, delta, info);
        }
        if end_of_stream {
            self.request_sent = Some(Instant::now());
        }
        Step::Done(DataAction::Continue)
    }

    fn on_request_trailers<'a>(
        &'a mut self,
        _trailers: &'a mut HeaderMap,
        _info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        self.request_sent = Some(Instant::now());
        Step::Done(DataAction::Continue)
    }

    fn on_response_headers<'a>(
        &'a mut self,
        head: &'a mut ResponseHead,
        end_of_stream: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        let status = head.headers.get("grpc-status");
        self.grpc_response = if end_of_stream {
            status.is_some()
        } else {
            head.status == StatusCode::OK && is_grpc(&head.headers)
        };
        self.charge(status);
        if end_of_stream {
            self.time_upstream(info);
        }
        Step::Done(HeadersAction::Continue)
    }

    fn on_response_body<'a>(
        &'a mut self,
        chunk: &'a mut Bytes,
        _end_of_stream: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        if self.grpc_response {
            let delta = self.response.feed(chunk);
            self.counted(false, delta, info);
        }
        Step::Done(DataAction::Continue)
    }

    fn on_response_trailers<'a>(
        &'a mut self,
        trailers: &'a mut HeaderMap,
        info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        if self.grpc_request {
            self.charge(trailers.get("grpc-status"));
            self.time_upstream(info);
        }
        Step::Done(DataAction::Continue)
    }

    fn wants_body(&self, _body: BodyShape) -> bool {
        self.grpc_request && (self.names.is_some() || self.shared.config.emit_filter_state)
    }
}

#[cfg(test)]
mod tests;
