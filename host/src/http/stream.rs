//! One HTTP stream: header rules, the filter chain, the router and the upstream
//! call, then the response on its way back, the stats and the access log.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::{Body as _, Frame};
use hyper::body::Incoming;
use legate_filter_api::{
    BodyShape, HeadersAction, HttpFilter, LocalReply, RequestHead, ResponseFlag, ResponseFlags,
    ResponseHead, StreamInfo,
};

use super::body::{Body, BoxError, RequestProgress};
use super::filter_body::{Chain, SharedChain, filtered};
use super::headers::{self as hdr, X_ENVOY_ORIGINAL_PATH};
use super::{ConnCx, local_reply};
use crate::access_log::format::LogContext;
use crate::config::{
    ClusterSpecifier, HeaderMutations, HostRewrite, RouteAction, ServerHeader, StripPort,
};
use crate::router::{self, RequestView};
use crate::upstream::pool::{PoolReturn, SendError};
use crate::upstream::{ClusterStats, WorkerCluster};

/// What the access log and the stats need once the stream ends.
struct Tail {
    cx: Rc<ConnCx>,
    start: Instant,
    start_time: SystemTime,
    code: u16,
    flags: ResponseFlags,
    details: &'static str,
    bytes_sent: u64,
    progress: Rc<RequestProgress>,
    cluster: Option<Rc<WorkerCluster>>,
    upstream_host: Option<std::net::SocketAddr>,
    /// When the upstream request was sent, for `upstream_rq_time`.
    upstream_start: Option<Instant>,
    route_name: Option<String>,
    log: Option<Box<LogData>>,
    local_reply_body: Option<String>,
    downstream_remote: std::net::SocketAddr,
    /// The filters, for `on_stream_complete` once the stream ends.
    finishers: Option<Finishers>,
}

/// Where a stream's filters are when its response starts.
enum Finishers {
    Owned(Vec<Box<dyn HttpFilter>>, Box<StreamInfo>),
    /// Moved into the chain shared with the body hooks, and the filter that
    /// answered the request itself, which sees no response hooks.
    Shared(SharedChain, Option<Box<dyn HttpFilter>>),
}

impl Finishers {
    fn complete(&mut self, flags: ResponseFlags, details: &'static str, code: u16) {
        let end = |info: &mut StreamInfo| {
            info.response_flags = flags;
            info.response_code_details = Some(details);
            info.response_code = (code != 0).then_some(code);
        };
        match self {
            Finishers::Owned(filters, info) => {
                end(info);
                for f in filters.iter_mut() {
                    f.on_stream_complete(info);
                }
            }
            Finishers::Shared(chain, replied) => {
                // Nothing else holds the chain once both bodies are done.
                if let Some(mut c) = chain.try_lock() {
                    let c = &mut *c;
                    end(&mut c.info);
                    for f in c.filters.iter_mut().chain(replied.iter_mut()) {
                        f.on_stream_complete(&c.info);
                    }
                }
            }
        }
    }
}

/// Request and response heads kept for the access log (only when one is configured).
struct LogData {
    method: String,
    path: String,
    authority: String,
    protocol: &'static str,
    request_headers: HeaderMap,
    response_headers: HeaderMap,
    response_trailers: Option<HeaderMap>,
}

impl Tail {
    fn finish(mut self: Box<Self>, completed: bool) {
        let mut finishers = self.finishers.take();
        let stats = &self.cx.hcm.stats;
        stats.downstream_rq_active.dec();
        stats.downstream_rq_completed.inc();
        stats
            .downstream_rq_time
            .record_duration(self.start.elapsed());
        if let (Some(c), Some(t)) = (&self.cluster, self.upstream_start)
            && completed
            && self.details == "via_upstream"
        {
            c.stats().upstream_rq_time.record_duration(t.elapsed());
        }
        let mut flags = self.flags;
        if !completed {
            stats.downstream_rq_rx_reset.inc();
            flags.set(ResponseFlag::DownstreamConnectionTermination);
        }
        if let Some(c) = &self.cluster
            && self.upstream_host.is_some()
        {
            c.stats().upstream_rq_active.dec();
            c.stats().upstream_rq_completed.inc();
        }
        if let Some(f) = &mut finishers {
            f.complete(flags, self.details, self.code);
        }
        let logs = &self.cx.hcm.access_logs;
        if logs.is_empty() {
            return;
        }
        // The filters' state, for %FILTER_STATE%.
        let shared = match &finishers {
            Some(Finishers::Shared(chain, _)) => chain.try_lock(),
            _ => None,
        };
        let filter_state: &[_] = match (&finishers, &shared) {
            (Some(Finishers::Owned(_, info)), _) => &info.filter_state,
            (_, Some(c)) => &c.info.filter_state,
            _ => &[],
        };
        let ld = self.log.as_deref();
        let duration = self.start.elapsed();
        let lcx = LogContext {
            start_time: Some(self.start_time),
            method: ld.map(|l| l.method.as_str()),
            path: ld.map(|l| l.path.as_str()),
            authority: ld.map(|l| l.authority.as_str()).filter(|a| !a.is_empty()),
            scheme: Some("http"),
            protocol: ld.map(|l| l.protocol),
            request_headers: ld.map(|l| &l.request_headers),
            response_headers: ld.map(|l| &l.response_headers),
            response_trailers: ld.and_then(|l| l.response_trailers.as_ref()),
            response_code: Some(self.code),
            response_code_details: Some(self.details),
            response_flags: flags,
            bytes_received: self.progress.bytes.get(),
            bytes_sent: self.bytes_sent,
            duration: Some(duration),
            request_duration: None,
            response_duration: None,
            upstream_host: self.upstream_host,
            upstream_local_address: None,
            upstream_cluster: self.cluster.as_ref().map(|c| c.name()),
            upstream_transport_failure_reason: None,
            downstream_remote_address: Some(self.downstream_remote),
            downstream_direct_remote_address: Some(self.cx.remote),
            downstream_local_address: Some(self.cx.local),
            route_name: self.route_name.as_deref(),
            connection_id: Some(self.cx.id),
            local_reply_body: self.local_reply_body.as_deref(),
            upstream_request_attempt_count: self.upstream_host.map(|_| 1),
            filter_state,
        };
        for l in logs {
            l.log(&lcx);
        }
    }
}

/// The response body sent downstream. It returns the upstream connection to its
/// pool and finishes the stream (stats, access log) when it ends or is dropped.
pub struct ProxyBody {
    inner: Body,
    pool: Option<PoolReturn>,
    tail: Option<Box<Tail>>,
    /// Upstream responses only: the route timeout and stream_idle_timeout keep
    /// running while the body streams.
    timers: Option<Box<BodyTimers>>,
}

struct BodyTimers {
    route: Option<Pin<Box<tokio::time::Sleep>>>,
    idle: Option<(std::time::Duration, Pin<Box<tokio::time::Sleep>>)>,
}

impl BodyTimers {
    /// Which clock ran out, if one did.
    fn expired(&mut self, cx: &mut Context<'_>) -> Option<Timeout> {
        if let Some(r) = self.route.as_mut()
            && r.as_mut().poll(cx).is_ready()
        {
            return Some(Timeout::Route);
        }
        if let Some((_, i)) = self.idle.as_mut()
            && i.as_mut().poll(cx).is_ready()
        {
            return Some(Timeout::Idle);
        }
        None
    }

    fn activity(&mut self) {
        if let Some((d, i)) = self.idle.as_mut() {
            i.as_mut().reset(tokio::time::Instant::now() + *d);
        }
    }
}

impl ProxyBody {
    fn end(&mut self, completed: bool) {
        if let Some(p) = self.pool.take()
            && completed
        {
            p.release();
        }
        if let Some(t) = self.tail.take() {
            t.finish(completed);
        }
    }
}

impl http_body::Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if r.is_pending()
            && let Some(which) = this.timers.as_mut().and_then(|t| t.expired(cx))
        {
            // The headers are gone: a timeout now resets the stream, as Envoy does.
            this.timers = None;
            this.pool = None;
            if let Some(t) = this.tail.as_mut() {
                match which {
                    Timeout::Route => {
                        t.flags.set(ResponseFlag::UpstreamRequestTimeout);
                        if let Some(c) = &t.cluster {
                            c.stats().upstream_rq_timeout.inc();
                        }
                    }
                    _ => {
                        t.flags.set(ResponseFlag::StreamIdleTimeout);
                        t.cx.hcm.stats.downstream_rq_idle_timeout.inc();
                    }
                }
            }
            this.end(true);
            return Poll::Ready(Some(Err(
                "stream timed out while the response streamed".into()
            )));
        }
        match &r {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(t) = this.timers.as_mut() {
                    t.activity();
                }
                if let Some(t) = this.tail.as_mut() {
                    if let Some(d) = f.data_ref() {
                        t.bytes_sent += d.len() as u64;
                    } else if let (Some(tr), Some(ld)) = (f.trailers_ref(), t.log.as_mut()) {
                        ld.response_trailers = Some(tr.clone());
                    }
                }
                if this.inner.is_end_stream() {
                    this.end(true);
                }
            }
            Poll::Ready(None) => this.end(true),
            Poll::Ready(Some(Err(_))) => {
                if let Some(t) = this.tail.as_mut() {
                    t.flags.set(ResponseFlag::UpstreamRemoteReset);
                }
                this.pool = None;
                this.end(true);
            }
            Poll::Pending => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        let done = self.inner.is_end_stream();
        self.end(done);
    }
}

/// Which clock ended the wait for the upstream response.
enum Timeout {
    Route,
    Request,
    Idle,
}

const CONNECT_FAILURE: &str = "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure";

/// The HTTP/1 reason phrase Envoy writes where it differs from hyper's: Envoy
/// names only the codes in its table and calls the rest `Unknown`.
fn envoy_reason(status: StatusCode) -> Option<&'static [u8]> {
    match status.as_u16() {
        203 => Some(b"Non-Authoritative Information"),
        418 | 451 => Some(b"Unknown"),
        599 => Some(b"Last Unassigned Server Error Code"),
        _ if status.canonical_reason().is_none() => Some(b"Unknown"),
        _ => None,
    }
}

fn protocol_name(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

struct Stream {
    cx: Rc<ConnCx>,
    /// Taken by `respond`; still here when the stream is dropped early (the client
    /// went away before the response), so `Drop` finishes it.
    tail: Option<Box<Tail>>,
    grpc: bool,
    info: StreamInfo,
    protocol: &'static str,
    /// For `always_set_request_id_in_response` and force-traced requests.
    request_id: Option<HeaderValue>,
    /// Echo the request id in the response (`x-envoy-force-trace` from a trusted
    /// client), as Envoy's tracing does.
    echo_request_id: bool,
    /// The request body was not read (local replies): HTTP/1.1 must close.
    unread_body: bool,
    /// Set once filters want bodies: the filters and the stream info live here.
    chain: Option<SharedChain>,
    /// The filter that answered the request itself, kept to be logged.
    replied: Option<Box<dyn HttpFilter>>,
    /// For an upstream response: `Some(route deadline, if any)`; the body keeps
    /// the route timeout and stream_idle_timeout running.
    body_deadline: Option<Option<tokio::time::Instant>>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        if let Some(t) = self.tail.take() {
            t.finish(false);
        }
    }
}

impl Stream {
    /// The stream's tail; present until `respond` hands it to the body.
    fn t(&mut self) -> &mut Tail {
        self.tail
            .as_mut()
            .expect("tail is only taken by respond, which consumes the stream")
    }

    fn tr(&self) -> &Tail {
        self.tail
            .as_ref()
            .expect("tail is only taken by respond, which consumes the stream")
    }

    /// Finishes the response: response header rules, the filters' response hooks in
    /// reverse order, stats, then the body wrapper.
    async fn respond(
        mut self,
        mut resp: Response<Body>,
        levels: &[&HeaderMutations],
        pool: Option<PoolReturn>,
        filters: &mut Vec<Box<dyn HttpFilter>>,
    ) -> Response<ProxyBody> {
        let cfg = &self.cx.hcm.config;
        let version = resp.version();
        let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        hdr::strip_hop_by_hop_response(resp.headers_mut(), upgraded);
        if !levels.is_empty() {
            let lcx = self.header_context();
            hdr::apply_response(levels, resp.headers_mut(), &lcx);
        }
        let h = resp.headers_mut();
        // The server header is set after the route's mutations, as Envoy does.
        match cfg.server_header {
            ServerHeader::Overwrite => {
                h.insert(header::SERVER, self.cx.hcm.server.clone());
            }
            ServerHeader::AppendIfAbsent => {
                if !h.contains_key(header::SERVER) {
                    h.insert(header::SERVER, self.cx.hcm.server.clone());
                }
            }
            ServerHeader::PassThrough => {}
        }
        if let Some(via) = &cfg.via {
            hdr::append_via(h, via);
        }
        if (cfg.always_set_request_id_in_response || self.echo_request_id)
            && let Some(id) = &self.request_id
            && !h.contains_key(&hdr::X_REQUEST_ID)
        {
            h.insert(hdr::X_REQUEST_ID.clone(), id.clone());
        }
        if self.unread_body {
            self.cx.close_after.set(true);
        }
        if let Some(chain) = self.chain.clone() {
            let (mut parts, body) = resp.into_parts();
            let mut head = ResponseHead {
                status: parts.status,
                headers: std::mem::take(&mut parts.headers),
            };
            let eos = body.is_end_stream();
            let details = self.tr().details;
            let mut c = chain.lock().await;
            let c = &mut *c;
            c.info.response_code_details = Some(details);
            let (mut body, mut buffered) = (Some(body), None);
            let reply = run_response_headers(
                &mut c.filters,
                &mut head,
                eos,
                &mut c.info,
                &mut body,
                &mut buffered,
            )
            .await;
            self.info.response_flags = c.info.response_flags;
            let body = response_body(&mut head, body, buffered);
            let body = if body.is_end_stream() {
                body
            } else {
                filtered(body, chain.clone(), false)
            };
            resp = match reply {
                Some(reply) => local_reply::build(
                    reply.status,
                    &reply.body,
                    self.grpc,
                    reply.grpc_status,
                    Some(&reply.headers),
                    None,
                ),
                None => Response::from_parts(parts_with(parts, head), body),
            };
        } else if !filters.is_empty() {
            let (mut parts, body) = resp.into_parts();
            let mut head = ResponseHead {
                status: parts.status,
                headers: std::mem::take(&mut parts.headers),
            };
            let eos = body.is_end_stream();
            self.info.response_code_details = Some(self.tr().details);
            let (mut body, mut buffered) = (Some(body), None);
            let reply = run_response_headers(
                filters,
                &mut head,
                eos,
                &mut self.info,
                &mut body,
                &mut buffered,
            )
            .await;
            let mut body = response_body(&mut head, body, buffered);
            let shape = BodyShape {
                request: false,
                trailers: body.may_have_trailers(version == Version::HTTP_2),
            };
            if reply.is_none()
                && !body.is_end_stream()
                && filters.iter().any(|f| f.wants_body(shape))
            {
                // Filters that want the response body take it from here.
                let chain = SharedChain::new(Chain {
                    filters: std::mem::take(filters),
                    info: self.info.take(),
                    local_reply: None,
                });
                body = filtered(body, chain.clone(), false);
                self.chain = Some(chain);
            }
            let mut r = Response::from_parts(parts_with(parts, head), body);
            if let Some(reply) = reply {
                r = local_reply::build(
                    reply.status,
                    &reply.body,
                    self.grpc,
                    reply.grpc_status,
                    Some(&reply.headers),
                    None,
                );
            }
            resp = r;
        }
        // Envoy's reason phrase for the status the filters left, never the
        // upstream's own.
        match envoy_reason(resp.status()) {
            Some(reason) => {
                resp.extensions_mut()
                    .insert(hyper::ext::ReasonPhrase::from_static(reason));
            }
            None => {
                resp.extensions_mut().remove::<hyper::ext::ReasonPhrase>();
            }
        }
        if (self.cx.close_after.get() || self.cx.draining.get() || self.cx.worker.health_failed())
            && !self.cx.http2
        {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let replied = self.replied.take();
        let finishers = match &self.chain {
            Some(chain) => Some(Finishers::Shared(chain.clone(), replied)),
            None if !filters.is_empty() || replied.is_some() => {
                let mut owned = std::mem::take(filters);
                owned.extend(replied);
                Some(Finishers::Owned(owned, Box::new(self.info.take())))
            }
            None => None,
        };
        self.t().finishers = finishers;
        let code = resp.status().as_u16();
        self.t().code = code;
        self.t().flags = ResponseFlags(self.t().flags.0 | self.info.response_flags.0);
        self.cx.hcm.stats.downstream_rq_xx.record_class(code);
        if let Some(ld) = self.t().log.as_mut() {
            ld.response_headers = resp.headers().clone();
        }
        let (parts, body) = resp.into_parts();
        let idle = self.cx.hcm.config.stream_idle_timeout;
        let timers = match self.body_deadline.take() {
            Some(route) if !body.is_end_stream() => Some(Box::new(BodyTimers {
                route: route.map(|d| Box::pin(tokio::time::sleep_until(d))),
                idle: idle.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            })),
            _ => None,
        };
        Response::from_parts(
            parts,
            ProxyBody {
                inner: body,
                pool,
                tail: self.tail.take(),
                timers,
            },
        )
    }

    fn header_context(&self) -> LogContext<'_> {
        LogContext {
            protocol: Some(self.protocol),
            start_time: Some(self.tr().start_time),
            downstream_remote_address: Some(self.tr().downstream_remote),
            downstream_direct_remote_address: Some(self.cx.remote),
            downstream_local_address: Some(self.cx.local),
            connection_id: Some(self.cx.id),
            upstream_host: self.tr().upstream_host,
            upstream_cluster: self.tr().cluster.as_ref().map(|c| c.name()),
            route_name: self.tr().route_name.as_deref(),
            ..Default::default()
        }
    }

    /// No virtual host or route matched: 404, flag NR, and no route's headers.
    async fn no_route(self, filters: &mut Vec<Box<dyn HttpFilter>>) -> Response<ProxyBody> {
        self.local(
            StatusCode::NOT_FOUND,
            "",
            Some(ResponseFlag::NoRouteFound),
            "route_not_found",
            &[],
            filters,
        )
        .await
    }

    /// Envoy's answer when the upstream cannot be reached: 503, flag UF.
    async fn connect_failure(
        self,
        levels: &[&HeaderMutations],
        filters: &mut Vec<Box<dyn HttpFilter>>,
    ) -> Response<ProxyBody> {
        self.local(
            StatusCode::SERVICE_UNAVAILABLE,
            CONNECT_FAILURE,
            Some(ResponseFlag::UpstreamConnectionFailure),
            "upstream_reset_before_response_started{remote_connection_failure}",
            levels,
            filters,
        )
        .await
    }

    async fn local(
        mut self,
        status: StatusCode,
        body: &str,
        flag: Option<ResponseFlag>,
        details: &'static str,
        levels: &[&HeaderMutations],
        filters: &mut Vec<Box<dyn HttpFilter>>,
    ) -> Response<ProxyBody> {
        if let Some(f) = flag {
            self.t().flags.set(f);
        }
        self.t().details = details;
        if !body.is_empty() {
            self.t().local_reply_body = Some(body.to_string());
        }
        let resp = local_reply::build(status, body.as_bytes(), self.grpc, None, None, None);
        self.respond(resp, levels, None, filters).await
    }
}

/// The response's parts (its version and extensions) with the head the
/// filters left.
fn parts_with(mut parts: http::response::Parts, head: ResponseHead) -> http::response::Parts {
    parts.status = head.status;
    parts.headers = head.headers;
    parts
}

/// The local reply a body hook asked for, taken once.
async fn chain_reply(chain: &Option<SharedChain>) -> Option<LocalReply> {
    let chain = chain.as_ref()?;
    let mut c = chain.lock().await;
    c.local_reply.take()
}

/// Runs response-header hooks in reverse order; stops at the first local reply.
/// A filter that waits for the body gets it here, read from `body` into
/// `buffered` (`body` is then gone).
pub(crate) async fn run_response_headers(
    filters: &mut [Box<dyn HttpFilter>],
    head: &mut ResponseHead,
    eos: bool,
    info: &mut StreamInfo,
    body: &mut Option<Body>,
    buffered: &mut Option<(Bytes, Option<HeaderMap>)>,
) -> Option<LocalReply> {
    for f in filters.iter_mut().rev() {
        let eos = eos
            || buffered
                .as_ref()
                .is_some_and(|(b, t)| b.is_empty() && t.is_none());
        match f.on_response_headers(head, eos, info).action().await {
            HeadersAction::Continue => {}
            HeadersAction::Respond(r) => return Some(*r),
            HeadersAction::WaitForBody { limit } => {
                if buffered.is_none() {
                    match read_response(body.take(), limit).await {
                        Ok(b) => *buffered = Some(b),
                        Err(r) => return Some(*r),
                    }
                }
                let Some((data, trailers)) = buffered.as_mut() else {
                    continue;
                };
                if let HeadersAction::Respond(r) = f
                    .on_response_buffered(head, data, trailers, info)
                    .action()
                    .await
                {
                    return Some(*r);
                }
            }
        }
    }
    None
}

/// A filter may have changed a body it waited for: a stated length follows it.
fn follow_length(headers: &mut HeaderMap, len: usize) {
    if headers.contains_key(header::CONTENT_LENGTH) {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
}

/// The response body after the header hooks: the one a filter waited for, or
/// the upstream's.
fn response_body(
    head: &mut ResponseHead,
    body: Option<Body>,
    buffered: Option<(Bytes, Option<HeaderMap>)>,
) -> Body {
    match buffered {
        Some((data, trailers)) => {
            follow_length(&mut head.headers, data.len());
            Body::Buffered(Some(data), trailers)
        }
        None => body.unwrap_or(Body::Empty),
    }
}

/// A local reply with Envoy's response code details.
fn reply(status: StatusCode, text: &'static str, details: &'static str) -> Box<LocalReply> {
    let mut r = LocalReply::new(status, text);
    r.details = details;
    Box::new(r)
}

/// Why a whole body could not be read.
enum ReadAll {
    TooLarge,
    Broken,
}

/// A whole body, data and trailers, for a filter that waits for it (none when
/// there is no body).
async fn read_all<B>(body: Option<B>, limit: usize) -> Result<(Bytes, Option<HeaderMap>), ReadAll>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let Some(mut body) = body else {
        return Ok((Bytes::new(), None));
    };
    let mut data = bytes::BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadAll::Broken)?;
        match frame.into_data() {
            Ok(d) => {
                if data.len() + d.len() > limit {
                    return Err(ReadAll::TooLarge);
                }
                data.extend_from_slice(&d);
            }
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    Ok((data.freeze(), trailers))
}

/// The whole upstream response body, for a filter that waits for it.
async fn read_response(
    body: Option<Body>,
    limit: usize,
) -> Result<(Bytes, Option<HeaderMap>), Box<LocalReply>> {
    read_all(body, limit).await.map_err(|e| match e {
        // Envoy's answer when a buffering filter overflows.
        ReadAll::TooLarge => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "response_payload_too_large",
        ),
        // The headers have not gone on: the client gets a reply, not a reset.
        ReadAll::Broken => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream reset",
            "upstream_reset_after_response_started",
        ),
    })
}

/// Who answered a request in its header hooks.
#[derive(Debug, PartialEq)]
pub(crate) enum AnsweredBy {
    /// This filter: the ones before it see the reply; it sees no response
    /// hooks but is logged with them.
    Filter(usize),
    /// The proxy, for a filter that waited for a body that could not be read:
    /// this many filters, that one included, see the reply.
    Proxy(usize),
}

/// Runs request-header hooks in order; stops at the first local reply. A filter
/// that waits for the body gets it here, read from `body` into `buffered`.
pub(crate) async fn run_request_headers(
    filters: &mut [Box<dyn HttpFilter>],
    head: &mut RequestHead,
    eos: bool,
    info: &mut StreamInfo,
    body: &mut Option<Incoming>,
    buffered: &mut Option<(Bytes, Option<HeaderMap>)>,
    read_limit: Option<Duration>,
) -> Option<(AnsweredBy, LocalReply)> {
    for (i, f) in filters.iter_mut().enumerate() {
        let eos = eos
            || buffered
                .as_ref()
                .is_some_and(|(b, t)| b.is_empty() && t.is_none());
        match f.on_request_headers(head, eos, info).action().await {
            HeadersAction::Continue => {}
            HeadersAction::Respond(r) => return Some((AnsweredBy::Filter(i), *r)),
            HeadersAction::WaitForBody { limit } => {
                if buffered.is_none() {
                    match read_whole(body.take(), limit, read_limit).await {
                        Ok(b) => *buffered = Some(b),
                        Err(r) => return Some((AnsweredBy::Proxy(i + 1), *r)),
                    }
                }
                let Some((data, trailers)) = buffered.as_mut() else {
                    continue;
                };
                if let HeadersAction::Respond(r) = f
                    .on_request_buffered(head, data, trailers, info)
                    .action()
                    .await
                {
                    return Some((AnsweredBy::Filter(i), *r));
                }
            }
        }
    }
    None
}

/// Whether the request has no body (left).
fn body_empty(body: &Option<Incoming>, buffered: &Option<(Bytes, Option<HeaderMap>)>) -> bool {
    match buffered {
        Some((b, t)) => b.is_empty() && t.is_none(),
        None => body.as_ref().is_none_or(|b| b.is_end_stream()),
    }
}

/// Reads a whole request body for a filter that waits for it: 413 past `limit`,
/// 408 when it does not arrive in time.
async fn read_whole(
    body: Option<Incoming>,
    limit: usize,
    within: Option<Duration>,
) -> Result<(Bytes, Option<HeaderMap>), Box<LocalReply>> {
    let read = async {
        read_all(body, limit).await.map_err(|e| match e {
            ReadAll::TooLarge => reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
                "request_payload_too_large",
            ),
            ReadAll::Broken => reply(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                "downstream_remote_disconnect",
            ),
        })
    };
    match within {
        Some(t) => tokio::time::timeout(t, read).await.unwrap_or_else(|_| {
            Err(reply(
                StatusCode::REQUEST_TIMEOUT,
                "request timeout",
                "request_overall_timeout",
            ))
        }),
        None => read.await,
    }
}

pub(crate) async fn handle(cx: Rc<ConnCx>, req: Request<Incoming>) -> Response<ProxyBody> {
    let hcm = cx.hcm.clone();
    let cfg = &hcm.config;
    let stats = &hcm.stats;
    stats.downstream_rq_total.inc();
    stats.downstream_rq_active.inc();
    if cx.http2 {
        stats.downstream_rq_http2_total.inc();
    } else {
        stats.downstream_rq_http1_total.inc();
    }
    stats.rq_total.inc();
    let start = Instant::now();
    let start_time = SystemTime::now();
    let (mut parts, body) = req.into_parts();
    // The body leaves `body` for `buffered` when a filter waits for all of it.
    let mut body = Some(body);
    let mut buffered: Option<(Bytes, Option<HeaderMap>)> = None;
    let invalid = if cx.http2 {
        None
    } else {
        validate_http1(&parts, cfg.max_request_headers_kb)
    };
    let on_upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let progress = Rc::new(RequestProgress::default());
    let upgrade = if cx.http2 {
        None
    } else {
        hdr::upgrade_type(&parts.headers)
    };
    hdr::strip_hop_by_hop(&mut parts.headers, upgrade.is_some());
    let downstream_remote = hdr::mutate_request(cfg, &mut parts.headers, cx.remote);
    let has_host = parts.uri.authority().is_some() || parts.headers.contains_key(header::HOST);
    // Repeated Host headers travel joined, as Envoy sends them.
    if parts.headers.get_all(header::HOST).iter().nth(1).is_some() {
        let joined: Vec<&[u8]> = parts
            .headers
            .get_all(header::HOST)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b","[..])) {
            parts.headers.insert(header::HOST, v);
        }
    }
    let mut authority = route_authority(&parts, cfg.strip_port, cx.local.port()).to_string();
    let mut path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let protocol = protocol_name(parts.version);
    let log = (!hcm.access_logs.is_empty()).then(|| {
        Box::new(LogData {
            method: parts.method.as_str().to_string(),
            path: path.clone(),
            authority: authority.clone(),
            protocol,
            request_headers: parts.headers.clone(),
            response_headers: HeaderMap::new(),
            response_trailers: None,
        })
    });
    let grpc = local_reply::is_grpc(&parts.headers);
    let info = StreamInfo::new(start_time, downstream_remote, cx.local, cx.id)
        .with_direct_remote(cx.remote);
    let mut st = Stream {
        cx: cx.clone(),
        tail: Some(Box::new(Tail {
            cx: cx.clone(),
            start,
            start_time,
            code: 0,
            flags: ResponseFlags::default(),
            details: "via_upstream",
            bytes_sent: 0,
            progress: progress.clone(),
            cluster: None,
            upstream_host: None,
            upstream_start: None,
            route_name: None,
            log,
            local_reply_body: None,
            downstream_remote,
            finishers: None,
        })),
        grpc,
        info,
        protocol,
        request_id: parts.headers.get(&hdr::X_REQUEST_ID).cloned(),
        // Only trusted requests keep this header past mutate_request.
        echo_request_id: parts.headers.contains_key("x-envoy-force-trace"),
        unread_body: !body_empty(&body, &buffered),
        chain: None,
        replied: None,
        body_deadline: None,
    };
    let mut filters: Vec<Box<dyn HttpFilter>> = hcm.filters.iter().map(|f| f.create()).collect();

    // Envoy refuses HTTP/1.0 unless accept_http_10 is set (Legate has no such option).
    if parts.version == Version::HTTP_10 || parts.version == Version::HTTP_09 {
        cx.close_after.set(true);
        return st
            .local(
                StatusCode::UPGRADE_REQUIRED,
                "Upgrade Required",
                Some(ResponseFlag::DownstreamProtocolError),
                "low_version",
                &[],
                &mut filters,
            )
            .await;
    }
    if let Some((status, body, details)) = invalid {
        cx.close_after.set(true);
        return st
            .local(
                status,
                body,
                Some(ResponseFlag::DownstreamProtocolError),
                details,
                &[],
                &mut filters,
            )
            .await;
    }
    if parts.method == http::Method::CONNECT {
        // Legate has no CONNECT routes (connect_matcher); Envoy answers 404 too.
        stats.no_route.inc();
        cx.close_after.set(true);
        return st.no_route(&mut filters).await;
    }
    if !has_host {
        cx.close_after.set(true);
        return st
            .local(
                StatusCode::BAD_REQUEST,
                "",
                None,
                "missing_host_header",
                &[],
                &mut filters,
            )
            .await;
    }
    if let Some(u) = &upgrade
        && !cfg.upgrade_types.iter().any(|t| t == u)
    {
        stats.downstream_rq_ws_on_non_ws_route.inc();
        cx.close_after.set(true);
        return st
            .local(
                StatusCode::FORBIDDEN,
                "",
                None,
                "upgrade_failed",
                &[],
                &mut filters,
            )
            .await;
    }

    // Route. Matched before the filters, so that they see the route (its
    // per-filter config and cluster), and again after them only if one cleared
    // the route cache (Envoy's clearRouteCache).
    let rc = &cfg.route_config;
    let match_route = |parts: &http::request::Parts, path: &str, authority: &str| {
        let view = RequestView {
            method: parts.method.as_str(),
            path,
            authority,
            scheme: "http",
            headers: &parts.headers,
        };
        router::select_vhost(rc, authority)
            .and_then(|vh| router::select_route(vh, &view).map(|r| (vh, r)))
    };
    let mut matched = match_route(&parts, &path, &authority);
    // The route's cluster, once the filters have been told it: the request goes
    // there, as Envoy caches the cluster with the route (a weighted pick is random).
    let mut picked = None;

    if !filters.is_empty() {
        st.info.http_client = Some(cx.worker.clusters.clone());
        if let Some((_, route)) = matched {
            st.info.route_name = (!route.name.is_empty()).then(|| route.name.clone());
            st.info.per_filter_config = route.per_filter_config.clone();
            if let RouteAction::Forward(f) = &route.action {
                let name = router::cluster_name(&f.cluster, &parts.headers);
                let cluster = name.and_then(|n| cx.worker.clusters.get(n).cloned());
                st.info.upstream_cluster = match (&cluster, name) {
                    (Some(c), _) => Some(c.shared.name.clone()),
                    (None, n) => n.map(std::sync::Arc::from),
                };
                picked = Some(cluster);
            }
        }
        let mut head = RequestHead {
            method: std::mem::take(&mut parts.method),
            uri: std::mem::take(&mut parts.uri),
            version: parts.version,
            headers: std::mem::take(&mut parts.headers),
        };
        let eos = body.as_ref().is_none_or(|b| b.is_end_stream());
        let within = cfg.request_timeout.or(cfg.stream_idle_timeout);
        let reply = run_request_headers(
            &mut filters,
            &mut head,
            eos,
            &mut st.info,
            &mut body,
            &mut buffered,
            within,
        )
        .await;
        if let Some((b, _)) = &buffered {
            progress.bytes.set(b.len() as u64);
            progress.complete.set(true);
            follow_length(&mut head.headers, b.len());
        }
        parts.method = head.method;
        parts.uri = head.uri;
        parts.headers = head.headers;
        if let Some((by, r)) = reply {
            st.t().details = r.details;
            if let Some(f) = r.response_flag {
                st.t().flags.set(f);
            }
            let resp = local_reply::build(
                r.status,
                &r.body,
                grpc,
                r.grpc_status,
                Some(&r.headers),
                None,
            );
            match by {
                // Logged with the others (`on_stream_complete`), as in Envoy.
                AnsweredBy::Filter(i) => {
                    filters.truncate(i + 1);
                    st.replied = filters.pop();
                }
                AnsweredBy::Proxy(n) => filters.truncate(n),
            }
            return st.respond(resp, &[], None, &mut filters).await;
        }
        if st.info.route_cache_cleared {
            // The match reads the authority, the path and, only when a route
            // matches on them, the headers: with those unchanged, so is the route.
            let new_path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let new_authority = route_authority(&parts, cfg.strip_port, cx.local.port());
            if rc.matches_headers || new_path != path || new_authority != authority {
                path = new_path.to_string();
                authority = new_authority.to_string();
                matched = match_route(&parts, &path, &authority);
                picked = None;
            } else if let Some((_, r)) = matched
                && let RouteAction::Forward(f) = &r.action
                && matches!(f.cluster, ClusterSpecifier::Header(_))
            {
                // The header that names the cluster may have changed.
                picked = None;
            }
        }
    }

    // No virtual host and no route answer alike: 404, flag NR.
    let Some((vh, route)) = matched else {
        stats.no_route.inc();
        return st.no_route(&mut filters).await;
    };
    if !route.name.is_empty() && cx.hcm.keeps_route_name() {
        st.t().route_name = Some(route.name.clone());
        st.info.route_name = Some(route.name.clone());
    }
    let levels: [&HeaderMutations; 3] = if rc.most_specific_header_mutations_wins {
        [&rc.headers, &vh.headers, &route.headers]
    } else {
        [&route.headers, &vh.headers, &rc.headers]
    };
    let levels: &[&HeaderMutations] = if levels.iter().all(|l| l.is_empty()) {
        &[]
    } else {
        &levels
    };

    let fwd = match &route.action {
        RouteAction::DirectResponse { status, body } => {
            stats.rq_direct_response.inc();
            st.t().details = "direct_response";
            // A direct response to a gRPC request is a gRPC local reply, as in Envoy.
            let resp = local_reply::build(
                *status,
                body.as_deref().unwrap_or_default(),
                st.grpc,
                None,
                None,
                None,
            );
            return st.respond(resp, levels, None, &mut filters).await;
        }
        RouteAction::Redirect(r) => {
            stats.rq_redirect.inc();
            st.t().details = "direct_response";
            let location = redirect_location(r, &authority, &path, route);
            let mut resp = Response::new(Body::Empty);
            *resp.status_mut() =
                StatusCode::from_u16(r.response_code).unwrap_or(StatusCode::MOVED_PERMANENTLY);
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            return st.respond(resp, levels, None, &mut filters).await;
        }
        RouteAction::Forward(f) => f,
    };

    // Cluster.
    let cluster = picked.unwrap_or_else(|| {
        router::cluster_name(&fwd.cluster, &parts.headers)
            .and_then(|n| cx.worker.clusters.get(n).cloned())
    });
    let Some(cluster) = cluster else {
        stats.no_cluster.inc();
        let code = fwd.cluster_not_found_response_code;
        return st
            .local(
                code,
                "",
                Some(ResponseFlag::NoClusterFound),
                "cluster_not_found",
                levels,
                &mut filters,
            )
            .await;
    };
    if !filters.is_empty() {
        st.info.upstream_cluster = Some(cluster.shared.name.clone());
    }
    st.t().cluster = Some(cluster.clone());

    // Request header rules of the route.
    if !levels.is_empty() {
        let lcx = st.header_context();
        hdr::apply_request(levels, &mut parts.headers, &lcx);
    }
    let mut new_path = None;
    if let Some(p) = router::rewrite_path(
        route,
        fwd.prefix_rewrite.as_deref(),
        fwd.regex_rewrite.as_ref(),
        &path,
    ) {
        if let Ok(v) = HeaderValue::from_str(&path) {
            parts.headers.insert(X_ENVOY_ORIGINAL_PATH.clone(), v);
        }
        new_path = Some(p);
    }
    let mut upstream_authority = authority.clone();
    if let HostRewrite::Literal(v) = &fwd.host_rewrite {
        upstream_authority = v.to_str().unwrap_or_default().to_string();
    }

    // Timeout: the route's, or the client's x-envoy-upstream-rq-timeout-ms when a
    // trusted hop left it in place.
    let mut timeout = fwd.timeout;
    if let Some(ms) = parts
        .headers
        .remove(&hdr::X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        timeout = Duration::from_millis(ms);
    }
    if hdr::has_envoy_headers(&parts.headers) {
        for name in &hdr::ROUTER_CONSUMED {
            parts.headers.remove(name);
        }
    }
    if !timeout.is_zero() && !cfg.suppress_envoy_headers {
        let value = if timeout == fwd.timeout {
            fwd.timeout_header.clone()
        } else {
            HeaderValue::from(timeout.as_millis() as u64)
        };
        parts
            .headers
            .insert(hdr::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), value);
    }

    // The route's hash, over the request as the route's header rules and
    // rewrites left it (Envoy 1.40 hashes after them: measured).
    let hash = if cluster.is_hashing() && !fwd.hash_policy.is_empty() {
        let view = RequestView {
            method: parts.method.as_str(),
            path: new_path
                .as_deref()
                .unwrap_or_else(|| parts.uri.path_and_query().map_or("/", |p| p.as_str())),
            authority: &upstream_authority,
            scheme: "http",
            headers: &parts.headers,
        };
        router::request_hash(&fwd.hash_policy, &view, downstream_remote.ip())
    } else {
        None
    };
    let host = match hash {
        Some(h) => cluster.pick_host_for_hash(h),
        None => cluster.pick_host(),
    };
    let Some(host) = host else {
        return st
            .local(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream",
                Some(ResponseFlag::NoHealthyUpstream),
                "no_healthy_upstream",
                levels,
                &mut filters,
            )
            .await;
    };
    // Envoy's auto_host_rewrite uses the endpoint's DNS name, without a port.
    if let (HostRewrite::Auto, Some(name)) = (&fwd.host_rewrite, &host.hostname) {
        upstream_authority = name.to_string();
    }
    if upstream_authority != authority
        && let Ok(v) = HeaderValue::from_str(&authority)
    {
        parts.headers.insert(hdr::X_ENVOY_ORIGINAL_HOST.clone(), v);
    }

    let cstats: &ClusterStats = cluster.stats();
    cstats.upstream_rq_total.inc();
    cstats.upstream_rq_active.inc();
    let pool = match cluster.http_pool(&host).await {
        Ok(p) => p,
        Err(e) => {
            cstats.upstream_rq_active.dec();
            cstats.upstream_rq_pending_failure_eject.inc();
            cstats.upstream_rq.record(503);
            tracing::debug!(cluster = cluster.name(), "upstream connect failed: {e}");
            return st.connect_failure(levels, &mut filters).await;
        }
    };
    st.t().upstream_host = Some(pool.addr);
    if !filters.is_empty() {
        st.info.upstream_host = Some(pool.addr);
    }

    // Build the upstream request.
    let upstream_h2 = upgrade.is_none() && cluster.shared.config.http2;
    // Without a rewrite the request's own parsed path is reused (no copy).
    let path_and_query = match &new_path {
        Some(p) => http::uri::PathAndQuery::try_from(p.as_str()).map_err(http::Error::from),
        None => Ok(parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"))),
    };
    let uri = path_and_query.and_then(|pq| {
        if upstream_h2 {
            Uri::builder()
                .scheme("http")
                .authority(upstream_authority.as_str())
                .path_and_query(pq)
                .build()
        } else {
            let mut u = http::uri::Parts::default();
            u.path_and_query = Some(pq);
            Uri::from_parts(u).map_err(http::Error::from)
        }
    });
    let Ok(uri) = uri else {
        cstats.upstream_rq_active.dec();
        st.t().upstream_host = None;
        return st
            .local(
                StatusCode::BAD_REQUEST,
                "",
                Some(ResponseFlag::DownstreamProtocolError),
                "invalid_path",
                levels,
                &mut filters,
            )
            .await;
    };
    parts.uri = uri;
    // The proxy answered `100-continue` itself; other expectations pass on.
    if parts
        .headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
    {
        parts.headers.remove(header::EXPECT);
    }
    if let Some(via) = &cfg.via {
        hdr::append_via(&mut parts.headers, via);
    }
    if upstream_h2 {
        parts.headers.remove(header::HOST);
        parts.version = Version::HTTP_2;
    } else {
        let same_host = parts
            .headers
            .get(header::HOST)
            .is_some_and(|h| h.as_bytes() == upstream_authority.as_bytes());
        if !same_host && let Ok(v) = HeaderValue::from_str(&upstream_authority) {
            parts.headers.insert(header::HOST, v);
        }
        hdr::join_cookies(&mut parts.headers);
        // Envoy frames a bodyless OPTIONS explicitly; hyper would send no length.
        if body_empty(&body, &buffered)
            && parts.method == http::Method::OPTIONS
            && !parts.headers.contains_key(header::CONTENT_LENGTH)
            && !parts.headers.contains_key(header::TRANSFER_ENCODING)
        {
            parts
                .headers
                .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        }
        parts.version = Version::HTTP_11;
    }
    st.unread_body = false;
    let body_was_empty = body_empty(&body, &buffered);
    let source = match (buffered, body) {
        (Some((data, trailers)), _) => Some(Body::Buffered(Some(data), trailers)),
        (None, Some(b)) => Some(Body::Counted(b, progress.clone())),
        (None, None) => None,
    };
    if let Some(b) = source.as_ref().filter(|_| !body_was_empty) {
        let shape = BodyShape {
            request: true,
            trailers: b.may_have_trailers(st.cx.http2),
        };
        if filters.iter().any(|f| f.wants_body(shape)) {
            st.chain = Some(SharedChain::new(Chain {
                filters: std::mem::take(&mut filters),
                // The chain's info is the stream's from here on.
                info: st.info.take(),
                local_reply: None,
            }));
        }
    }
    let req_body = match (source, &st.chain) {
        (None, _) => Body::Empty,
        _ if body_was_empty => Body::Empty,
        (Some(b), Some(chain)) => filtered(b, chain.clone(), true),
        (Some(b), None) => b,
    };
    let upstream_req = Request::from_parts(parts, req_body);

    let sent_at = Instant::now();
    st.t().upstream_start = Some(sent_at);
    let send = async {
        if upgrade.is_some() {
            pool.send_upgrade(&cluster, &host, upstream_req)
                .await
                .map(|r| (r, None))
        } else {
            pool.send(&cluster, &host, upstream_req).await
        }
    };
    // Three clocks: the route timeout; request_timeout, which only runs until the
    // whole request has arrived; and stream_idle_timeout, re-armed by request bytes.
    let never = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    let idle = cfg.stream_idle_timeout;
    let mut idle_deadline = idle.map(|d| tokio::time::Instant::now() + d);
    let mut idle_bytes = progress.bytes.get();
    let route_deadline = (!timeout.is_zero()).then(|| tokio::time::Instant::now() + timeout);
    let mut request_deadline = cfg
        .request_timeout
        .filter(|_| !progress.complete.get() && !body_was_empty)
        .map(|t| tokio::time::Instant::from_std(start) + t);
    tokio::pin!(send);
    let result = loop {
        tokio::select! {
            r = &mut send => break Ok(r),
            _ = tokio::time::sleep_until(route_deadline.unwrap_or(never)), if route_deadline.is_some() => {
                break Err(Timeout::Route);
            }
            _ = tokio::time::sleep_until(request_deadline.unwrap_or(never)), if request_deadline.is_some() => {
                if progress.complete.get() {
                    request_deadline = None;
                } else {
                    break Err(Timeout::Request);
                }
            }
            _ = tokio::time::sleep_until(idle_deadline.unwrap_or(never)), if idle_deadline.is_some() => {
                let now_bytes = progress.bytes.get();
                if now_bytes == idle_bytes {
                    break Err(Timeout::Idle);
                }
                idle_bytes = now_bytes;
                idle_deadline = idle.map(|d| tokio::time::Instant::now() + d);
            }
        }
    };
    let (mut resp, pool_ret) = match result {
        Err(Timeout::Idle) => {
            stats.downstream_rq_idle_timeout.inc();
            cstats.upstream_rq_active.dec();
            st.t().upstream_host = None;
            cx.close_after.set(true);
            return st
                .local(
                    StatusCode::REQUEST_TIMEOUT,
                    "stream timeout",
                    Some(ResponseFlag::StreamIdleTimeout),
                    "stream_idle_timeout",
                    &[],
                    &mut filters,
                )
                .await;
        }
        Err(Timeout::Request) => {
            stats.downstream_rq_timeout.inc();
            cstats.upstream_rq_active.dec();
            st.t().upstream_host = None;
            cx.close_after.set(true);
            return st
                .local(
                    StatusCode::REQUEST_TIMEOUT,
                    "request timeout",
                    None,
                    "request_overall_timeout",
                    &[],
                    &mut filters,
                )
                .await;
        }
        Err(Timeout::Route) => {
            cstats.upstream_rq_timeout.inc();
            cstats.upstream_rq.record(504);
            return st
                .local(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                    Some(ResponseFlag::UpstreamRequestTimeout),
                    "response_timeout",
                    levels,
                    &mut filters,
                )
                .await;
        }
        Ok(Err(SendError::Connect(e))) => {
            cstats.upstream_rq.record(503);
            tracing::debug!(cluster = cluster.name(), "upstream connect failed: {e}");
            return st.connect_failure(levels, &mut filters).await;
        }
        Ok(Err(SendError::Reset(e))) => {
            let Some(r) = chain_reply(&st.chain).await else {
                tracing::debug!(cluster = cluster.name(), "upstream reset: {e}");
                cstats.upstream_rq_rx_reset.inc();
                cstats.upstream_rq.record(503);
                return st.local(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
                    Some(ResponseFlag::UpstreamConnectionTermination),
                    "upstream_reset_before_response_started{connection_termination}",
                    levels,
                    &mut filters,
                ).await;
            };
            // A request-body hook answered locally; the upstream request was dropped.
            cstats.upstream_rq_active.dec();
            st.t().upstream_host = None;
            cx.close_after.set(true);
            st.t().details = r.details;
            if let Some(f) = r.response_flag {
                st.t().flags.set(f);
            }
            let resp = local_reply::build(
                r.status,
                &r.body,
                st.grpc,
                r.grpc_status,
                Some(&r.headers),
                None,
            );
            return st.respond(resp, &[], None, &mut filters).await;
        }
        Ok(Ok(r)) => r,
    };
    let service_ms = sent_at.elapsed().as_millis() as u64;
    cstats.upstream_rq.record(resp.status().as_u16());

    if upgrade.is_some() && resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        // A refused upgrade leaves the connection in an unknown state.
        cx.close_after.set(true);
    }
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(down) = on_upgrade
    {
        let up = hyper::upgrade::on(&mut resp);
        let hstats = hcm.clone();
        tokio::task::spawn_local(async move {
            hstats.stats.downstream_cx_upgrades_total.inc();
            hstats.stats.downstream_cx_upgrades_active.inc();
            if let (Ok(d), Ok(u)) = (down.await, up.await) {
                let mut d = hyper_util::rt::TokioIo::new(d);
                let mut u = hyper_util::rt::TokioIo::new(u);
                let _ = tokio::io::copy_bidirectional(&mut d, &mut u).await;
            }
            hstats.stats.downstream_cx_upgrades_active.dec();
        });
    }

    if !cfg.suppress_envoy_headers {
        resp.headers_mut().insert(
            hdr::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(),
            hdr::small_number(service_ms),
        );
    }
    let (rparts, rbody) = resp.into_parts();
    let resp = Response::from_parts(rparts, Body::Incoming(rbody));
    // An upgraded tunnel has no body to time; it lives as long as its peers.
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        st.body_deadline = Some(route_deadline);
    }
    st.respond(resp, levels, pool_ret, &mut filters).await
}

/// The authority routes are matched on: the URI's, else the `host` header,
/// without the port as `strip_any_host_port` / `strip_matching_host_port` say.
fn route_authority(parts: &http::request::Parts, strip: StripPort, local_port: u16) -> &str {
    let authority = match parts.uri.authority() {
        Some(a) => a.as_str(),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default(),
    };
    match strip {
        StripPort::None => authority,
        StripPort::Any => router::strip_port(authority),
        StripPort::Matching => match authority.rsplit_once(':') {
            Some((h, p))
                if p.parse::<u16>() == Ok(local_port)
                    && !p.starts_with(['0', '+'])
                    && (h.ends_with(']') || !h.contains(':')) =>
            {
                h
            }
            _ => authority,
        },
    }
}

fn redirect_location(
    r: &crate::config::Redirect,
    authority: &str,
    path: &str,
    route: &crate::config::Route,
) -> String {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let orig_host = router::strip_port(authority);
    let orig_port = authority[orig_host.len()..].strip_prefix(':');
    let host = r.host.as_deref().unwrap_or(orig_host);
    // A new host drops the old port; a scheme change drops the old scheme's default.
    let port = match (r.port, &r.host) {
        (Some(p), _) => Some(p.to_string()),
        (None, Some(_)) => None,
        (None, None) => orig_port
            .filter(|p| !matches!((scheme, *p), ("https", "80") | ("http", "443")))
            .map(str::to_string),
    };
    let host = match port {
        // host_redirect may carry its own port.
        Some(_) if router::strip_port(host) != host => host.to_string(),
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let (p, q) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut new_path = if let Some(pr) = &r.path {
        pr.clone()
    } else if let Some(rw) = &r.prefix_rewrite {
        router::rewrite_path(route, Some(rw), None, p).unwrap_or_else(|| p.to_string())
    } else {
        p.to_string()
    };
    if !r.strip_query
        && let Some(q) = q
        && !new_path.contains('?')
    {
        new_path.push('?');
        new_path.push_str(q);
    }
    format!("{scheme}://{host}{new_path}")
}

/// HTTP/1.1 requests Envoy's codec refuses but hyper's accepts: the limit on the
/// request head, unknown methods, targets that are not paths, and ambiguous
/// message lengths. Returns the status, body and response code details.
fn validate_http1(
    parts: &http::request::Parts,
    max_kb: u32,
) -> Option<(StatusCode, &'static str, &'static str)> {
    const BAD: &str = "Bad Request";
    // The head as sent: request line, `name: value` lines, and the blank line.
    let target = parts.uri.path_and_query().map_or(1, |p| p.as_str().len());
    let mut size = parts.method.as_str().len() + 1 + target + " HTTP/1.1\r\n".len() + 2;
    for (k, v) in &parts.headers {
        size += k.as_str().len() + 2 + v.len() + 2;
    }
    if size > max_kb as usize * 1024 {
        return Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request Header Fields Too Large",
            "http1.headers_too_large",
        ));
    }
    const METHODS: &[&str] = &[
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "DELETE",
        "CONNECT",
        "OPTIONS",
        "TRACE",
        "PATCH",
        "COPY",
        "LOCK",
        "MKCOL",
        "MOVE",
        "PROPFIND",
        "PROPPATCH",
        "SEARCH",
        "UNLOCK",
        "BIND",
        "REBIND",
        "UNBIND",
        "ACL",
        "REPORT",
        "MKACTIVITY",
        "CHECKOUT",
        "MERGE",
        "M-SEARCH",
        "NOTIFY",
        "SUBSCRIBE",
        "UNSUBSCRIBE",
        "PURGE",
        "MKCALENDAR",
        "LINK",
        "UNLINK",
        "SOURCE",
    ];
    if !METHODS.contains(&parts.method.as_str()) {
        return Some((StatusCode::BAD_REQUEST, BAD, "http1.codec_error"));
    }
    let h = &parts.headers;
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Some((
            StatusCode::BAD_REQUEST,
            BAD,
            "http1.content_length_and_chunked_not_allowed",
        ));
    }
    if h.get_all(header::CONTENT_LENGTH).iter().count() > 1 {
        return Some((StatusCode::BAD_REQUEST, BAD, "http1.codec_error"));
    }
    // Origin form (`/path`) or absolute form (`http://host/path`) only.
    if parts.method != http::Method::CONNECT
        && parts.uri.scheme().is_none()
        && (parts.uri.authority().is_some() || !parts.uri.path().starts_with('/'))
    {
        return Some((StatusCode::BAD_REQUEST, BAD, "http1.codec_error"));
    }
    None
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use legate_filter_api::Step;

    use super::*;

    struct Recorder {
        name: &'static str,
        log: Rc<RefCell<Vec<String>>>,
        reply_on_request: bool,
    }

    impl HttpFilter for Recorder {
        fn on_request_headers<'a>(
            &'a mut self,
            head: &'a mut RequestHead,
            _eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, HeadersAction> {
            // A filter that waits simply awaits.
            Step::wait(async move {
                tokio::task::yield_now().await;
                self.log.borrow_mut().push(format!("req:{}", self.name));
                head.headers.append("x-seen", self.name.parse().unwrap());
                if self.reply_on_request {
                    let r = LocalReply::new(StatusCode::FORBIDDEN, "no");
                    return HeadersAction::Respond(Box::new(r));
                }
                HeadersAction::Continue
            })
        }

        fn on_response_headers<'a>(
            &'a mut self,
            _head: &'a mut ResponseHead,
            _eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, HeadersAction> {
            self.log.borrow_mut().push(format!("resp:{}", self.name));
            Step::Done(HeadersAction::Continue)
        }
    }

    fn info() -> StreamInfo {
        StreamInfo::new(
            SystemTime::now(),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            1,
        )
    }

    fn chain(log: &Rc<RefCell<Vec<String>>>, stop_at: Option<usize>) -> Vec<Box<dyn HttpFilter>> {
        ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                Box::new(Recorder {
                    name: n,
                    log: log.clone(),
                    reply_on_request: stop_at == Some(i),
                }) as Box<dyn HttpFilter>
            })
            .collect()
    }

    #[tokio::test]
    async fn request_in_order_response_in_reverse() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut filters = chain(&log, None);
        let mut head = RequestHead {
            method: http::Method::GET,
            uri: Uri::from_static("/"),
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
        };
        let mut i = info();
        assert!(
            run_request_headers(
                &mut filters,
                &mut head,
                true,
                &mut i,
                &mut None,
                &mut None,
                None
            )
            .await
            .is_none()
        );
        let seen: Vec<_> = head.headers.get_all("x-seen").iter().collect();
        assert_eq!(seen, ["a", "b", "c"]);
        let mut resp = ResponseHead {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
        };
        assert!(
            run_response_headers(&mut filters, &mut resp, true, &mut i, &mut None, &mut None)
                .await
                .is_none()
        );
        assert_eq!(
            *log.borrow(),
            ["req:a", "req:b", "req:c", "resp:c", "resp:b", "resp:a"]
        );
    }

    #[tokio::test]
    async fn a_local_reply_stops_the_chain() {
        let log = Rc::new(RefCell::new(Vec::new()));
        let mut filters = chain(&log, Some(1));
        let mut head = RequestHead {
            method: http::Method::GET,
            uri: Uri::from_static("/"),
            version: Version::HTTP_11,
            headers: HeaderMap::new(),
        };
        let (at, reply) = run_request_headers(
            &mut filters,
            &mut head,
            true,
            &mut info(),
            &mut None,
            &mut None,
            None,
        )
        .await
        .expect("b answers locally");
        assert_eq!(at, AnsweredBy::Filter(1));
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(*log.borrow(), ["req:a", "req:b"]);
    }
}
