//! The HTTP connection manager: decodes HTTP/1.1 or HTTP/2 on a downstream
//! connection (hyper) and runs each stream through the filter chain and router.

pub mod body;
mod filter_body;
mod headers;
mod local_reply;
mod stream;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::watch;

use legate_filter_api::HttpFilterFactory;

use crate::access_log::AccessLogger;
use crate::config::{Codec, HttpConnectionManager};
use crate::server::{LocalExec, Worker, lifecycle};
use std::error::Error as StdError;
use std::pin::Pin;

use crate::stats::{CodeStats, Counter, Gauge, Histogram, store};
use crate::upstream::pool::CountingIo;
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::service::HttpService;

pub use local_reply::is_grpc;
pub use stream::ProxyBody;

/// Envoy's `http.<stat_prefix>.*` stats.
pub struct HcmStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_http1_total: Counter,
    pub downstream_cx_http2_total: Counter,
    pub downstream_cx_http1_active: Gauge,
    pub downstream_cx_http2_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub downstream_cx_upgrades_total: Counter,
    pub downstream_cx_upgrades_active: Gauge,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub downstream_rq_http1_total: Counter,
    pub downstream_rq_http2_total: Counter,
    pub downstream_rq_completed: Counter,
    pub downstream_rq_timeout: Counter,
    pub downstream_rq_idle_timeout: Counter,
    pub downstream_rq_rx_reset: Counter,
    pub downstream_rq_ws_on_non_ws_route: Counter,
    pub downstream_rq_xx: CodeStats,
    pub downstream_rq_time: Histogram,
    pub no_route: Counter,
    pub no_cluster: Counter,
    pub rq_redirect: Counter,
    pub rq_direct_response: Counter,
    pub rq_total: Counter,
}

impl HcmStats {
    fn new(prefix: &str) -> HcmStats {
        let s = store();
        let c = |n: &str| s.counter(format!("http.{prefix}.{n}"));
        let g = |n: &str| s.gauge(format!("http.{prefix}.{n}"));
        HcmStats {
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_http1_total: c("downstream_cx_http1_total"),
            downstream_cx_http2_total: c("downstream_cx_http2_total"),
            downstream_cx_http1_active: g("downstream_cx_http1_active"),
            downstream_cx_http2_active: g("downstream_cx_http2_active"),
            downstream_cx_destroy: c("downstream_cx_destroy"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_cx_upgrades_total: c("downstream_cx_upgrades_total"),
            downstream_cx_upgrades_active: g("downstream_cx_upgrades_active"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            downstream_rq_http1_total: c("downstream_rq_http1_total"),
            downstream_rq_http2_total: c("downstream_rq_http2_total"),
            downstream_rq_completed: c("downstream_rq_completed"),
            downstream_rq_timeout: c("downstream_rq_timeout"),
            downstream_rq_idle_timeout: c("downstream_rq_idle_timeout"),
            downstream_rq_rx_reset: c("downstream_rq_rx_reset"),
            downstream_rq_ws_on_non_ws_route: c("downstream_rq_ws_on_non_ws_route"),
            downstream_rq_xx: CodeStats::new(format!("http.{prefix}.downstream_rq"), true),
            downstream_rq_time: s.histogram(format!("http.{prefix}.downstream_rq_time")),
            no_route: c("no_route"),
            no_cluster: c("no_cluster"),
            rq_redirect: c("rq_redirect"),
            rq_direct_response: c("rq_direct_response"),
            rq_total: c("rq_total"),
        }
    }
}

/// An HTTP connection manager of one config version, shared by all workers.
pub struct Hcm {
    pub config: Arc<HttpConnectionManager>,
    pub stats: HcmStats,
    pub access_logs: Vec<AccessLogger>,
    /// Factories of the HTTP filters before the router, in chain order.
    pub filters: Vec<Arc<dyn HttpFilterFactory>>,
    /// The `server` header value, made once.
    pub server: http::HeaderValue,
}

impl Hcm {
    /// Whether streams must keep their route name (for access logs or filters).
    pub fn keeps_route_name(&self) -> bool {
        !self.access_logs.is_empty() || !self.filters.is_empty()
    }

    pub fn new(config: Arc<HttpConnectionManager>, access_logs: Vec<AccessLogger>) -> Hcm {
        Hcm {
            stats: HcmStats::new(&config.stat_prefix),
            server: http::HeaderValue::from_str(&config.server_name)
                .unwrap_or(http::HeaderValue::from_static("legate")),
            config,
            access_logs,
            filters: Vec::new(),
        }
    }
}

/// Per-connection context shared by the connection's streams.
pub(crate) struct ConnCx {
    pub hcm: Arc<Hcm>,
    pub worker: Rc<Worker>,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    pub id: u64,
    pub http2: bool,
    /// Set once a drain started, so HTTP/1.1 responses carry `connection: close`.
    pub draining: Cell<bool>,
    /// The connection must close after this response (protocol errors).
    pub close_after: Cell<bool>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether the client speaks HTTP/2 with prior knowledge, by peeking at the preface.
async fn sniff_h2(s: &TcpStream) -> bool {
    let mut buf = [0u8; 24];
    loop {
        match s.peek(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => {
                if buf[..n] != H2_PREFACE[..n] {
                    return false;
                }
                if n == H2_PREFACE.len() {
                    return true;
                }
                // Partial preface: wait for more bytes.
                if s.readable().await.is_err() {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

/// A server connection that can be asked to finish gracefully (hyper's HTTP/1.1
/// upgradeable and HTTP/2 connections).
trait Graceful: std::future::Future<Output = Result<(), hyper::Error>> {
    fn shutdown(self: Pin<&mut Self>);
}

impl<I, B, S> Graceful for http1::UpgradeableConnection<I, S>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin + Send + 'static,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, B, S, E> Graceful for http2::Connection<I, S, E>
where
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn StdError + Send + Sync>>,
    I: Read + Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shutdown(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How long an HTTP/1.1 connection of a replaced config may stay open waiting
/// for a next request to answer with `connection: close` (Envoy's HCM
/// `drain_timeout` default).
const RETIRE_GRACE: Duration = Duration::from_secs(5);

/// Runs a connection until it ends, closing it gracefully when its config version
/// is replaced or the process drains. HTTP/1.1 first asks the client to leave
/// (`connection: close` on the next response), so a client that is just sending
/// its next request is not cut off.
async fn drive<C>(
    conn: C,
    mut life: watch::Receiver<u8>,
    cx: &ConnCx,
    soft_first: bool,
) -> Result<(), hyper::Error>
where
    C: Graceful,
{
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => return r,
        _ = life.wait_for(|s| *s != lifecycle::RUNNING) => {}
    }
    cx.draining.set(true);
    if soft_first && *life.borrow() == lifecycle::RETIRED {
        tokio::select! {
            r = conn.as_mut() => return r,
            _ = tokio::time::sleep(RETIRE_GRACE) => {}
            _ = life.wait_for(|s| *s == lifecycle::DRAINING) => {}
        }
    }
    conn.as_mut().shutdown();
    conn.await
}

/// Serves one downstream connection until it closes or the drain completes.
pub async fn serve(
    hcm: Arc<Hcm>,
    worker: Rc<Worker>,
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    id: u64,
    life: watch::Receiver<u8>,
) {
    let cfg = &hcm.config;
    let http2 = match cfg.codec {
        Codec::Http1 => false,
        Codec::Http2 => true,
        Codec::Auto => sniff_h2(&stream).await,
    };
    let stats = &hcm.stats;
    stats.downstream_cx_total.inc();
    stats.downstream_cx_active.inc();
    let proto_active = if http2 {
        stats.downstream_cx_http2_total.inc();
        &stats.downstream_cx_http2_active
    } else {
        stats.downstream_cx_http1_total.inc();
        &stats.downstream_cx_http1_active
    };
    proto_active.inc();
    let io = TokioIo::new(CountingIo::new(
        stream,
        stats.downstream_cx_rx_bytes_total.clone(),
        stats.downstream_cx_tx_bytes_total.clone(),
    ));
    let cx = Rc::new(ConnCx {
        hcm: hcm.clone(),
        worker,
        remote,
        local,
        id,
        http2,
        draining: Cell::new(*life.borrow() != lifecycle::RUNNING),
        close_after: Cell::new(false),
    });
    let svc_cx = cx.clone();
    let svc = service_fn(move |req| {
        let cx = svc_cx.clone();
        async move { Ok::<_, std::convert::Infallible>(stream::handle(cx, req).await) }
    });
    // HTTP/2 spawns a task per stream and moves the stream's future several times on
    // the way in; boxed, each move is a pointer.
    let h2_cx = cx.clone();
    let h2_svc = service_fn(move |req| {
        let cx = h2_cx.clone();
        Box::pin(async move { Ok::<_, std::convert::Infallible>(stream::handle(cx, req).await) })
    });
    let header_bytes = (cfg.max_request_headers_kb as usize) * 1024;
    let result = if http2 {
        let mut b = http2::Builder::new(LocalExec);
        b.timer(TokioTimer::new())
            .max_header_list_size(header_bytes as u32)
            .max_concurrent_streams(2147483647);
        drive(b.serve_connection(io, h2_svc), life, &cx, false).await
    } else {
        let mut b = http1::Builder::new();
        b.timer(TokioTimer::new())
            .max_buf_size(header_bytes.max(8192) + 1024)
            .keep_alive(true);
        if let Some(t) = cfg.request_timeout.or(cfg.stream_idle_timeout) {
            b.header_read_timeout(t);
        }
        drive(b.serve_connection(io, svc).with_upgrades(), life, &cx, true).await
    };
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            stats.downstream_cx_protocol_error.inc();
        }
        tracing::debug!(conn = id, "downstream connection ended: {e}");
    }
    proto_active.dec();
    stats.downstream_cx_active.dec();
    stats.downstream_cx_destroy.inc();
}

#[cfg(test)]
mod tests {
    //! The filter chain in the real connection manager, in process: a test filter
    //! rewrites headers, both bodies and trailers of a stream proxied to a real
    //! upstream over TCP.

    use std::sync::atomic::AtomicBool;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use legate_filter_api::{
        DataAction, HeadersAction, HttpFilter, RequestHead, ResponseHead, Step, StreamInfo,
    };

    use super::*;
    use crate::upstream::ClusterManager;

    struct Shout;

    impl HttpFilter for Shout {
        fn on_request_headers<'a>(
            &'a mut self,
            head: &'a mut RequestHead,
            _eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, HeadersAction> {
            head.headers.insert("x-filtered", "yes".parse().unwrap());
            // Body length changes below.
            head.headers.remove(http::header::CONTENT_LENGTH);
            Step::Done(HeadersAction::Continue)
        }
        fn on_request_body<'a>(
            &'a mut self,
            chunk: &'a mut Bytes,
            _eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, DataAction> {
            // A filter that waits simply awaits.
            Step::wait(async move {
                tokio::task::yield_now().await;
                *chunk = Bytes::from(chunk.to_ascii_uppercase());
                DataAction::Continue
            })
        }
        fn on_response_headers<'a>(
            &'a mut self,
            head: &'a mut ResponseHead,
            _eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, HeadersAction> {
            head.headers.remove(http::header::CONTENT_LENGTH);
            Step::Done(HeadersAction::Continue)
        }
        fn on_response_body<'a>(
            &'a mut self,
            chunk: &'a mut Bytes,
            eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, DataAction> {
            let mut v = chunk.to_vec();
            if eos {
                v.extend_from_slice(b"!");
            }
            *chunk = Bytes::from(v);
            Step::Done(DataAction::Continue)
        }
        fn wants_body(&self, _body: legate_filter_api::BodyShape) -> bool {
            true
        }
    }

    struct ShoutFactory;
    impl HttpFilterFactory for ShoutFactory {
        fn create(&self) -> Box<dyn HttpFilter> {
            Box::new(Shout)
        }
    }

    async fn echo_upstream() -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::task::spawn_local(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                let svc = service_fn(|req: http::Request<hyper::body::Incoming>| async move {
                    let seen = req.headers().get("x-filtered").cloned();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let mut r = http::Response::new(Full::new(body));
                    if let Some(v) = seen {
                        r.headers_mut().insert("x-saw-filtered", v);
                    }
                    Ok::<_, std::convert::Infallible>(r)
                });
                tokio::task::spawn_local(
                    http1::Builder::new().serve_connection(TokioIo::new(s), svc),
                );
            }
        });
        a
    }

    /// Proxies one POST through a real connection manager whose chain holds `filter`,
    /// to a real echo upstream; returns status and body.
    async fn proxy_once(
        filter: Arc<dyn HttpFilterFactory>,
        body: &'static str,
    ) -> (u16, http::HeaderMap, Bytes) {
        let up = echo_upstream().await;
        let yaml = format!(
            r#"static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: filtered
          route_config:
            virtual_hosts:
            - {{name: v, domains: ["*"], routes: [{{match: {{prefix: "/"}}, route: {{cluster: up}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
  clusters:
  - name: up
    load_assignment:
      cluster_name: up
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]
"#,
            up.port()
        );
        let b = crate::config::load_str(&yaml, "t").unwrap();
        let crate::config::NetworkFilter::HttpConnectionManager(cfg) =
            &b.listeners[0].filter_chains[0].filters[0]
        else {
            unreachable!()
        };
        let mut hcm = Hcm::new(cfg.clone(), Vec::new());
        hcm.filters.push(filter);
        let hcm = Arc::new(hcm);
        let cm = ClusterManager::new(&b.clusters);
        let worker = Rc::new(Worker::new(&cm, Arc::new(AtomicBool::new(false))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_life_tx, life) = watch::channel(0u8);
        tokio::task::spawn_local(async move {
            let (s, remote) = listener.accept().await.unwrap();
            serve(hcm, worker, s, remote, addr, 1, life).await;
        });
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(s))
                .await
                .unwrap();
        tokio::task::spawn_local(conn);
        let req = http::Request::post("/")
            .header("host", "x")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, headers, body)
    }

    #[tokio::test]
    async fn filters_see_headers_and_bodies_both_ways() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (status, headers, body) = proxy_once(Arc::new(ShoutFactory), "hello").await;
                assert_eq!(status, 200);
                assert_eq!(headers["x-saw-filtered"], "yes");
                // Uppercased on the way up, `!` appended on the way down.
                assert_eq!(body, "HELLO!");
            })
            .await;
    }

    /// Refuses any request body with a local reply.
    struct Refuse;

    impl HttpFilter for Refuse {
        fn on_request_body<'a>(
            &'a mut self,
            _chunk: &'a mut Bytes,
            _eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, DataAction> {
            let mut r = legate_filter_api::LocalReply::new(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "body refused",
            );
            r.details = "test_refused";
            Step::Done(DataAction::Respond(Box::new(r)))
        }
        fn wants_body(&self, _body: legate_filter_api::BodyShape) -> bool {
            true
        }
    }

    struct RefuseFactory;
    impl HttpFilterFactory for RefuseFactory {
        fn create(&self) -> Box<dyn HttpFilter> {
            Box::new(Refuse)
        }
    }

    #[tokio::test]
    async fn a_body_hook_can_answer_locally() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let (status, _, body) = proxy_once(Arc::new(RefuseFactory), "payload").await;
                assert_eq!(status, 413);
                assert_eq!(body, "body refused");
            })
            .await;
    }

    /// Waits for the whole body, then signs the request with its length and
    /// reverses the body.
    struct Whole;

    impl HttpFilter for Whole {
        fn on_request_headers<'a>(
            &'a mut self,
            _head: &'a mut RequestHead,
            _eos: bool,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, HeadersAction> {
            Step::Done(HeadersAction::WaitForBody { limit: 64 })
        }
        fn on_request_buffered<'a>(
            &'a mut self,
            head: &'a mut RequestHead,
            body: &'a mut Bytes,
            _trailers: &'a mut Option<http::HeaderMap>,
            _info: &'a mut StreamInfo,
        ) -> Step<'a, HeadersAction> {
            head.headers
                .insert("x-filtered", http::HeaderValue::from(body.len()));
            *body = body.iter().rev().copied().collect::<Vec<u8>>().into();
            Step::Done(HeadersAction::Continue)
        }
    }

    struct WholeFactory;
    impl HttpFilterFactory for WholeFactory {
        fn create(&self) -> Box<dyn HttpFilter> {
            Box::new(Whole)
        }
    }

    #[tokio::test]
    async fn a_headers_hook_can_wait_for_the_whole_body() {
        tokio::task::LocalSet::new()
            .run_until(async {
                // The echo upstream returns the body it got.
                let (status, headers, body) = proxy_once(Arc::new(WholeFactory), "abc").await;
                assert_eq!(status, 200);
                // Headers changed after the body was seen; the body replaced.
                assert_eq!(headers["x-saw-filtered"], "3");
                assert_eq!(body, "cba");
                let (status, _, _) =
                    proxy_once(Arc::new(WholeFactory), "x".repeat(65).leak()).await;
                assert_eq!(status, 413);
            })
            .await;
    }

    /// Records `on_stream_complete`, with and without body hooks.
    struct Completes(Arc<std::sync::Mutex<Vec<String>>>, bool);

    impl HttpFilter for Completes {
        fn wants_body(&self, _body: legate_filter_api::BodyShape) -> bool {
            self.1
        }
        fn on_stream_complete(&mut self, info: &StreamInfo) {
            let mut log = self.0.lock().unwrap();
            log.push(format!("complete via {:?}", info.upstream_cluster));
        }
    }

    struct CompletesFactory(Arc<std::sync::Mutex<Vec<String>>>, bool);
    impl HttpFilterFactory for CompletesFactory {
        fn create(&self) -> Box<dyn HttpFilter> {
            Box::new(Completes(self.0.clone(), self.1))
        }
    }

    #[tokio::test]
    async fn filters_hear_that_the_stream_completed() {
        tokio::task::LocalSet::new()
            .run_until(async {
                for wants_body in [false, true] {
                    let log = Arc::new(std::sync::Mutex::new(Vec::new()));
                    let f = Arc::new(CompletesFactory(log.clone(), wants_body));
                    let (status, _, _) = proxy_once(f, "x").await;
                    assert_eq!(status, 200);
                    assert_eq!(*log.lock().unwrap(), ["complete via Some(\"up\")"]);
                }
            })
            .await;
    }
}
