//! HTTP/2 downstream through legate, driven with the `h2` crate directly
//! (prior knowledge, no TLS), to HTTP/1.1 and h2c upstreams.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use http::{HeaderMap, Method, Request, StatusCode};
use support::{Legate, bootstrap, cluster, echo_upstream, http_listener};
use tokio::net::TcpStream;

/// Bounds a whole test body.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test timed out");
}

/// Bounds one step.
async fn step<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .expect("step timed out")
}

const ROUTES: &str =
    "              - match: {prefix: \"/\"}\n                route: {cluster: up}\n";

const H2_TYPED: &str = r#"    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}"#;

async fn start(upstream: SocketAddr, cluster_extra: &str) -> Legate {
    Legate::start(&bootstrap(
        &http_listener("h2_in", "h2", ROUTES, ""),
        &cluster("up", &[(upstream, 1)], cluster_extra),
    ))
    .await
}

/// An HTTP/2 prior-knowledge connection to `addr`.
async fn connect(addr: SocketAddr) -> SendRequest<Bytes> {
    let tcp = step(TcpStream::connect(addr)).await.unwrap();
    let (client, conn) = step(h2::client::handshake(tcp))
        .await
        .expect("h2 handshake with legate");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    step(client.ready()).await.unwrap()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("bad json ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads a whole response, releasing flow-control capacity as data arrives.
async fn read_reply(fut: h2::client::ResponseFuture) -> Reply {
    let resp = step(fut).await.expect("response headers");
    let (parts, mut body) = resp.into_parts();
    let mut buf = Vec::new();
    while let Some(chunk) = step(body.data()).await {
        let chunk = chunk.expect("response data");
        body.flow_control().release_capacity(chunk.len()).unwrap();
        buf.extend_from_slice(&chunk);
    }
    let trailers = step(body.trailers()).await.expect("response trailers");
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: buf.into(),
        trailers,
    }
}

fn request(method: Method, addr: SocketAddr, path: &str) -> Request<()> {
    Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .body(())
        .unwrap()
}

async fn get(client: &mut SendRequest<Bytes>, addr: SocketAddr, path: &str) -> Reply {
    let mut c = step(client.clone().ready()).await.unwrap();
    let (fut, _) = c
        .send_request(request(Method::GET, addr, path), true)
        .unwrap();
    read_reply(fut).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_to_h1_upstream() {
    bounded(async {
        let up = echo_upstream("up1").await;
        let legate = start(up, "").await;
        let addr = legate.listener("h2_in").await;
        let client = connect(addr).await;

        // Ten streams at once on one connection, each a different path.
        let mut tasks = Vec::new();
        for i in 0..10 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                let r = get(&mut c, addr, &format!("/s/{i}?q={i}")).await;
                (i, r)
            }));
        }
        for t in tasks {
            let (i, r) = step(t).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.headers["x-upstream"], "up1");
            assert!(r.headers.contains_key("x-envoy-upstream-service-time"));
            let v = r.json();
            assert_eq!(v["version"], "HTTP/1.1");
            assert_eq!(v["method"], "GET");
            assert_eq!(v["path"], format!("/s/{i}?q={i}"));
            assert_eq!(
                v["headers"]["host"],
                addr.to_string(),
                "authority becomes host"
            );
            assert_eq!(v["headers"]["x-forwarded-proto"], "http");
            assert!(v["headers"]["x-request-id"].is_string());
        }

        // Streams really run in parallel: five 300 ms upstream waits at once.
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                get(&mut c, addr, "/sleep/300").await
            }));
        }
        for t in tasks {
            assert_eq!(step(t).await.unwrap().status, 200);
        }
        let took = t0.elapsed();
        assert!(
            took < Duration::from_millis(1200),
            "streams were serialized: {took:?}"
        );

        assert_eq!(legate.stat("http.h2.downstream_cx_http2_total").await, 1);
        assert_eq!(legate.stat("http.h2.downstream_cx_http1_total").await, 0);
        assert_eq!(
            legate
                .wait_stat("http.h2.downstream_rq_http2_total", 15)
                .await,
            15
        );
        assert_eq!(
            legate
                .wait_stat("http.h2.downstream_rq_completed", 15)
                .await,
            15
        );
        assert_eq!(legate.stat("http.h2.downstream_rq_2xx").await, 15);
        assert_eq!(legate.stat("cluster.up.upstream_rq_200").await, 15);
        assert_eq!(legate.stat("cluster.up.upstream_cx_http2_total").await, 0);
        assert!(legate.stat("cluster.up.upstream_cx_http1_total").await >= 5);
        assert_eq!(legate.stat("http.h2.downstream_cx_http2_active").await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_body_and_statuses() {
    bounded(async {
        let up = echo_upstream("up1").await;
        let legate = start(up, "").await;
        let addr = legate.listener("h2_in").await;
        let client = connect(addr).await;

        // A POST whose body comes in two DATA frames, without content-length.
        let mut c = step(client.clone().ready()).await.unwrap();
        let mut req = request(Method::POST, addr, "/post/here");
        req.headers_mut()
            .insert("content-type", "text/plain".parse().unwrap());
        let (fut, mut send) = c.send_request(req, false).unwrap();
        send.send_data(Bytes::from_static(b"hello "), false)
            .unwrap();
        send.send_data(Bytes::from_static(b"world"), true).unwrap();
        let r = read_reply(fut).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["method"], "POST");
        assert_eq!(v["path"], "/post/here");
        assert_eq!(v["body"], "hello world");
        assert_eq!(v["version"], "HTTP/1.1");
        assert_eq!(v["headers"]["content-type"], "text/plain");

        // With content-length, in one frame.
        let mut c = step(client.clone().ready()).await.unwrap();
        let mut req = request(Method::PUT, addr, "/put");
        req.headers_mut()
            .insert("content-length", "3".parse().unwrap());
        let (fut, mut send) = c.send_request(req, false).unwrap();
        send.send_data(Bytes::from_static(b"abc"), true).unwrap();
        let r = read_reply(fut).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["body"], "abc");
        assert_eq!(r.json()["headers"]["content-length"], "3");

        // Upstream status codes pass through.
        let mut c = client.clone();
        let r = get(&mut c, addr, "/status/503").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.headers["x-upstream"], "up1");
        let r = get(&mut c, addr, "/status/404").await;
        assert_eq!(r.status, 404);

        // A 1 MB response needs several windows of flow control.
        let r = get(&mut c, addr, "/bytes/1000000").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 1_000_000);
        assert!(r.body.iter().all(|&b| b == b'x'));

        assert_eq!(
            legate.wait_stat("http.h2.downstream_rq_completed", 5).await,
            5
        );
        assert_eq!(legate.stat("http.h2.downstream_rq_http2_total").await, 5);
        assert_eq!(legate.stat("http.h2.downstream_rq_2xx").await, 3);
        assert_eq!(legate.stat("http.h2.downstream_rq_5xx").await, 1);
        assert_eq!(legate.stat("http.h2.downstream_rq_4xx").await, 1);
        assert_eq!(legate.stat("cluster.up.upstream_rq_503").await, 1);
        assert_eq!(legate.stat("cluster.up.upstream_rq_404").await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_trailers_to_h1_upstream() {
    bounded(async {
        let up = echo_upstream("up1").await;
        let legate = start(up, "").await;
        let addr = legate.listener("h2_in").await;
        let client = connect(addr).await;

        let mut c = step(client.clone().ready()).await.unwrap();
        let mut req = request(Method::POST, addr, "/with-trailers");
        req.headers_mut().insert("te", "trailers".parse().unwrap());
        let (fut, mut send) = c.send_request(req, false).unwrap();
        send.send_data(Bytes::from_static(b"body-before-trailers"), false)
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        send.send_trailers(trailers).unwrap();
        let r = read_reply(fut).await;
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["body"], "body-before-trailers");
        assert_eq!(v["version"], "HTTP/1.1");
        assert!(r.trailers.is_none());

        // The connection and the proxy are still fine.
        let r = get(&mut client.clone(), addr, "/after").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["path"], "/after");
        assert_eq!(
            legate.wait_stat("http.h2.downstream_rq_completed", 2).await,
            2
        );
        assert_eq!(legate.stat("http.h2.downstream_rq_2xx").await, 2);
        assert_eq!(legate.stat("http.h2.downstream_rq_rx_reset").await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_upstream() {
    bounded(async {
        let up = echo_upstream("up2").await;
        let legate = start(up, H2_TYPED).await;
        let addr = legate.listener("h2_in").await;
        let client = connect(addr).await;

        let mut tasks = Vec::new();
        for i in 0..6 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                (i, get(&mut c, addr, &format!("/h2/{i}")).await)
            }));
        }
        for t in tasks {
            let (i, r) = step(t).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.headers["x-upstream"], "up2");
            let v = r.json();
            assert_eq!(v["version"], "HTTP/2.0");
            assert_eq!(v["path"], format!("/h2/{i}"));
        }

        // A POST with request trailers reaches an h2 upstream intact.
        let mut c = step(client.clone().ready()).await.unwrap();
        let (fut, mut send) = c
            .send_request(request(Method::POST, addr, "/h2/post"), false)
            .unwrap();
        send.send_data(Bytes::from_static(b"payload"), false)
            .unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        send.send_trailers(trailers).unwrap();
        let r = read_reply(fut).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["body"], "payload");
        assert_eq!(r.json()["version"], "HTTP/2.0");

        assert_eq!(
            legate.wait_stat("http.h2.downstream_rq_completed", 7).await,
            7
        );
        assert_eq!(legate.stat("http.h2.downstream_rq_http2_total").await, 7);
        assert_eq!(legate.stat("http.h2.downstream_cx_http2_total").await, 1);
        assert_eq!(legate.stat("cluster.up.upstream_rq_200").await, 7);
        assert!(legate.stat("cluster.up.upstream_cx_http2_total").await >= 1);
        assert_eq!(legate.stat("cluster.up.upstream_cx_http1_total").await, 0);
    })
    .await;
}

/// Streams that arrive together on one downstream connection (so one worker)
/// before any upstream h2 connection exists must share the one being opened, as
/// Envoy's pool does, not each open their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_h2_upstream_connection() {
    bounded(async {
        let up = echo_upstream("up2").await;
        let legate = start(up, H2_TYPED).await;
        let addr = legate.listener("h2_in").await;
        let mut client = connect(addr).await;

        // All HEADERS frames queued back to back, so legate sees them together.
        let mut tasks = Vec::new();
        for i in 0..20 {
            client = step(client.ready()).await.unwrap();
            let (fut, _) = client
                .send_request(request(Method::GET, addr, &format!("/c/{i}")), true)
                .unwrap();
            tasks.push(tokio::spawn(read_reply(fut)));
        }
        for t in tasks {
            let r = step(t).await.unwrap();
            assert_eq!(r.status, 200);
            assert_eq!(r.json()["version"], "HTTP/2.0");
        }
        assert_eq!(
            legate
                .wait_stat("cluster.up.upstream_rq_completed", 20)
                .await,
            20
        );
        assert_eq!(legate.stat("http.h2.downstream_cx_http2_total").await, 1);
        assert_eq!(
            legate.stat("cluster.up.upstream_cx_http2_total").await,
            1,
            "one worker opened several h2 connections to the same host"
        );
        assert_eq!(legate.stat("cluster.up.upstream_cx_active").await, 1);
    })
    .await;
}

/// An h2c upstream that answers with the request body, and trailers naming the
/// request trailers it got (`x-got-trailers`) plus one of its own.
async fn trailer_upstream() -> SocketAddr {
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let collected = req.into_body().collect().await?;
                        let got = collected
                            .trailers()
                            .map(|t| {
                                let mut v: Vec<String> = t
                                    .iter()
                                    .map(|(k, v)| format!("{k}={}", v.to_str().unwrap_or("")))
                                    .collect();
                                v.sort();
                                v.join(",")
                            })
                            .unwrap_or_else(|| "none".into());
                        let body = collected.to_bytes();
                        let mut tr = HeaderMap::new();
                        tr.insert("x-got-trailers", got.parse().unwrap());
                        tr.insert("x-upstream-trailer", "t-up".parse().unwrap());
                        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                            vec![Ok(Frame::data(body)), Ok(Frame::trailers(tr))];
                        let resp = hyper::Response::new(StreamBody::new(
                            futures_util::stream::iter(frames),
                        ));
                        Ok::<_, hyper::Error>(resp)
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_both_ways_with_h2_upstream() {
    bounded(async {
        let up = trailer_upstream().await;
        let legate = start(up, H2_TYPED).await;
        let addr = legate.listener("h2_in").await;
        let client = connect(addr).await;

        let mut c = step(client.clone().ready()).await.unwrap();
        let (fut, mut send) = c
            .send_request(request(Method::POST, addr, "/t"), false)
            .unwrap();
        send.send_data(Bytes::from_static(b"data"), false).unwrap();
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", "abc123".parse().unwrap());
        trailers.insert("x-second", "2".parse().unwrap());
        send.send_trailers(trailers).unwrap();
        let r = read_reply(fut).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "data");
        let t = r.trailers.expect("response trailers reach the client");
        assert_eq!(t["x-upstream-trailer"], "t-up");
        assert_eq!(t["x-got-trailers"], "x-checksum=abc123,x-second=2");

        // Without request trailers the upstream still answers with its own.
        let mut c = step(client.clone().ready()).await.unwrap();
        let (fut, mut send) = c
            .send_request(request(Method::POST, addr, "/t"), false)
            .unwrap();
        send.send_data(Bytes::from_static(b"x"), true).unwrap();
        let r = read_reply(fut).await;
        let t = r.trailers.expect("response trailers reach the client");
        assert_eq!(t["x-got-trailers"], "none");

        assert_eq!(
            legate.wait_stat("http.h2.downstream_rq_completed", 2).await,
            2
        );
        assert_eq!(legate.stat("cluster.up.upstream_rq_200").await, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_route_and_dead_upstream_over_h2() {
    bounded(async {
        let dead: SocketAddr = support::dead_addr();
        let routes =
            "              - match: {prefix: \"/dead\"}\n                route: {cluster: up}\n";
        let legate = Legate::start(&bootstrap(
            &http_listener("h2_in", "h2", routes, ""),
            &cluster("up", &[(dead, 1)], ""),
        ))
        .await;
        let addr = legate.listener("h2_in").await;
        let mut client = connect(addr).await;

        let r = get(&mut client, addr, "/nowhere").await;
        assert_eq!(r.status, 404);
        let r = get(&mut client, addr, "/dead").await;
        assert_eq!(r.status, 503);
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert!(body.starts_with("upstream connect error"), "body: {body}");
        // The connection survives local replies.
        let r = get(&mut client, addr, "/nowhere/again").await;
        assert_eq!(r.status, 404);

        assert_eq!(
            legate.wait_stat("http.h2.downstream_rq_completed", 3).await,
            3
        );
        assert_eq!(legate.stat("http.h2.no_route").await, 2);
        assert_eq!(legate.stat("http.h2.downstream_rq_4xx").await, 2);
        assert_eq!(legate.stat("http.h2.downstream_rq_5xx").await, 1);
        assert_eq!(legate.stat("http.h2.downstream_cx_http2_total").await, 1);
    })
    .await;
}
