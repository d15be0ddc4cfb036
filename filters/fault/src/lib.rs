//! Envoy's HTTP fault injection filter, `envoy.filters.http.fault`: delays,
//! aborts (HTTP or gRPC status) and response throttling, each with a
//! percentage, for resilience testing.
//!
//! Decisions follow Envoy's order: per-route config replaces the filter's; then
//! the `upstream_cluster`, `downstream_nodes` and `headers` conditions; then the
//! response rate limit, the delay, and the abort (after the delay, so one request
//! can get both). A stream counts once in `active_faults` however many faults it
//! gets, and a new fault is refused (`faults_overflow`) once `max_active_faults`
//! streams have one. Percentages draw from [`legate_filter_api::random`], so a
//! seeded run repeats its decisions.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
mod pacer;

use std::sync::Arc;

use bytes::Bytes;
use legate_filter_api::http::{HeaderMap, StatusCode};
use legate_filter_api::matcher::{RequestView, header_matches};
use legate_filter_api::stats::{Counter, Gauge, Store};
use legate_filter_api::{
    BodyShape, DataAction, HeadersAction, HttpFilter, HttpFilterFactory, LocalReply, RequestHead,
    ResponseFlag, Step, StreamInfo, random,
};

pub use config::{
    AbortKind, FaultAbort, FaultConfig, FaultDelay, FaultRateLimit, Percentage, headers,
};
use pacer::Pacer;

/// The body of an abort, as Envoy sends it.
pub const ABORT_BODY: &str = "fault filter abort";

/// Envoy's `http.<stat_prefix>.fault.*` stats.
struct Stats {
    delays_injected: Counter,
    aborts_injected: Counter,
    response_rl_injected: Counter,
    faults_overflow: Counter,
    active_faults: Gauge,
    /// `http.<stat_prefix>.fault.`, for the per-downstream-cluster counters.
    prefix: String,
    store: &'static Store,
}

struct Shared {
    /// The filter's name in `http_filters`, which keys its per-route config.
    name: String,
    config: Arc<FaultConfig>,
    stats: Stats,
}

/// Makes a [`FaultFilter`] per stream.
pub struct FaultFactory(Arc<Shared>);

impl FaultFactory {
    /// A factory for the filter named `name` in `http_filters`, counting under
    /// `<stat_prefix>fault.` (Envoy passes `http.<hcm stat_prefix>.`).
    ///
    /// ```
    /// use legate_fault::{FaultConfig, FaultFactory};
    /// let store = Box::leak(Box::new(legate_filter_api::stats::Store::default()));
    /// let f = FaultFactory::new("envoy.filters.http.fault", FaultConfig::default(), "http.in.", store);
    /// # let _ = f;
    /// assert_eq!(store.get("http.in.fault.aborts_injected"), Some(0));
    /// ```
    pub fn new(
        name: impl Into<String>,
        config: FaultConfig,
        stat_prefix: &str,
        store: &'static Store,
    ) -> FaultFactory {
        let prefix = format!("{stat_prefix}fault.");
        let c = |n: &str| store.counter(format!("{prefix}{n}"));
        let stats = Stats {
            delays_injected: c("delays_injected"),
            aborts_injected: c("aborts_injected"),
            response_rl_injected: c("response_rl_injected"),
            faults_overflow: c("faults_overflow"),
            active_faults: store.gauge(format!("{prefix}active_faults")),
            prefix,
            store,
        };
        FaultFactory(Arc::new(Shared {
            name: name.into(),
            config: Arc::new(config),
            stats,
        }))
    }
}

impl HttpFilterFactory for FaultFactory {
    fn create(&self) -> Box<dyn HttpFilter> {
        Box::new(FaultFilter {
            shared: self.0.clone(),
            active: false,
            pacer: None,
        })
    }
}

/// The per-stream filter.
pub struct FaultFilter {
    shared: Arc<Shared>,
    /// This stream counts in `active_faults`.
    active: bool,
    /// Set when the response body is throttled.
    pacer: Option<Pacer>,
}

impl Drop for FaultFilter {
    fn drop(&mut self) {
        if self.active {
            self.shared.stats.active_faults.dec();
        }
    }
}

impl FaultFilter {
    /// Counts this stream as active, once; refuses (`faults_overflow`) when the
    /// limit of active faults is reached.
    fn try_activate(&mut self, settings: &FaultConfig) -> bool {
        if self.active {
            return true;
        }
        let stats = &self.shared.stats;
        if let Some(max) = settings.max_active_faults
            && stats.active_faults.value().max(0) as u64 >= max
        {
            stats.faults_overflow.inc();
            return false;
        }
        stats.active_faults.inc();
        self.active = true;
        true
    }

    fn count(&self, downstream: Option<&str>, name: &str, total: &Counter) {
        if let Some(c) = downstream {
            let s = &self.shared.stats;
            s.store.counter(format!("{}{c}.{name}", s.prefix)).inc();
        }
        total.inc();
    }

    /// The abort, if this request gets one.
    fn abort(
        &mut self,
        settings: &FaultConfig,
        h: &HeaderMap,
        downstream: Option<&str>,
        info: &mut StreamInfo,
    ) -> Option<HeadersAction> {
        let a = settings.abort.as_ref()?;
        if !a.percentage(h).hit(random::u64()) {
            return None;
        }
        let (status, grpc_status) = a.status(h)?;
        if !self.try_activate(settings) {
            return None;
        }
        self.count(
            downstream,
            "aborts_injected",
            &self.shared.stats.aborts_injected,
        );
        info.response_flags.set(ResponseFlag::FaultInjected);
        let mut reply = LocalReply::new(
            StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            Bytes::from_static(ABORT_BODY.as_bytes()),
        );
        reply.grpc_status = grpc_status;
        reply.response_flag = Some(ResponseFlag::FaultInjected);
        reply.details = "fault_filter_abort";
        Some(HeadersAction::Respond(Box::new(reply)))
    }
}

fn matches_headers(settings: &FaultConfig, head: &RequestHead) -> bool {
    if settings.headers.is_empty() {
        return true;
    }
    let authority = head
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            head.headers
                .get(legate_filter_api::http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    let view = RequestView {
        method: head.method.as_str(),
        path: head.uri.path_and_query().map_or("/", |p| p.as_str()),
        authority,
        scheme: head.uri.scheme_str().unwrap_or("http"),
        headers: &head.headers,
    };
    settings.headers.iter().all(|m| header_matches(&view, m))
}

impl HttpFilter for FaultFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut RequestHead,
        _end_of_stream: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        let settings = info
            .per_filter_config
            .as_ref()
            .and_then(|c| c.get_arc::<FaultConfig>(&self.shared.name))
            .unwrap_or_else(|| self.shared.config.clone());
        if let Some(c) = &settings.upstream_cluster
            && info.upstream_cluster.as_deref() != Some(c.as_str())
        {
            return Step::Done(HeadersAction::Continue);
        }
        let h = &head.headers;
        if !settings.downstream_nodes.is_empty() {
            let node = h
                .get(headers::DOWNSTREAM_SERVICE_NODE)
                .and_then(|v| v.to_str().ok());
            if !node.is_some_and(|n| settings.downstream_nodes.contains(n)) {
                return Step::Done(HeadersAction::Continue);
            }
        }
        if !matches_headers(&settings, head) {
            return Step::Done(HeadersAction::Continue);
        }
        let downstream: Option<String> = h
            .get(headers::DOWNSTREAM_SERVICE_CLUSTER)
            .and_then(|v| v.to_str().ok())
            .filter(|c| !c.is_empty() && !settings.disable_downstream_cluster_stats)
            .map(str::to_string);

        if let Some(rl) = &settings.response_rate_limit
            && rl.percentage(h).hit(random::u64())
            && let Some(kbps) = rl.kbps(h)
            && self.try_activate(&settings)
        {
            self.shared.stats.response_rl_injected.inc();
            self.pacer = Some(Pacer::new(kbps, tokio::time::Instant::now()));
        }

        let delay = settings.delay.as_ref().and_then(|d| {
            if !d.percentage(h).hit(random::u64()) {
                return None;
            }
            d.duration(h).filter(|d| !d.is_zero())
        });
        if let Some(d) = delay
            && self.try_activate(&settings)
        {
            let total = &self.shared.stats.delays_injected;
            self.count(downstream.as_deref(), "delays_injected", total);
            info.response_flags.set(ResponseFlag::DelayInjected);
            return Step::wait(async move {
                tokio::time::sleep(d).await;
                if let Some(a) = self.abort(&settings, &head.headers, downstream.as_deref(), info) {
                    return a;
                }
                // The delay is over; the stream stays active only if throttled.
                if settings.response_rate_limit.is_none() {
                    self.shared.stats.active_faults.dec();
                    self.active = false;
                }
                HeadersAction::Continue
            });
        }
        let h = &head.headers;
        match self.abort(&settings, h, downstream.as_deref(), info) {
            Some(a) => Step::Done(a),
            None => Step::Done(HeadersAction::Continue),
        }
    }

    fn on_response_body<'a>(
        &'a mut self,
        chunk: &'a mut Bytes,
        _end_of_stream: bool,
        _info: &'a mut StreamInfo,
    ) -> Step<'a, DataAction> {
        let Some(p) = &mut self.pacer else {
            return Step::Done(DataAction::Continue);
        };
        let wait = p.take(chunk.len(), tokio::time::Instant::now());
        if wait.is_zero() {
            return Step::Done(DataAction::Continue);
        }
        Step::wait(async move {
            tokio::time::sleep(wait).await;
            DataAction::Continue
        })
    }

    /// Only the response is paced.
    fn wants_body(&self, body: BodyShape) -> bool {
        !body.request && self.pacer.is_some()
    }

    fn max_response_chunk(&self) -> Option<usize> {
        self.pacer.as_ref().map(Pacer::slice)
    }
}

#[cfg(test)]
mod tests;
