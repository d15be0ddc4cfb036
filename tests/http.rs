//! HTTP/1.1 through the real binary: curl and a hyper client against real
//! upstreams; routing, header rules, local replies, timeouts, failures, stats and
//! access logs.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::*;

type HyperClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> HyperClient {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn get(c: &HyperClient, url: &str) -> (u16, http::HeaderMap, String) {
    let resp = tokio::time::timeout(Duration::from_secs(10), c.get(url.parse().unwrap()))
        .await
        .expect("request timed out")
        .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn echo_json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an upstream echo ({e}): {body}"))
}

const ROUTE_ALL: &str =
    "              - match: {prefix: \"/\"}\n                route: {cluster: up}\n";

async fn simple(routes: &str, hcm_extra: &str) -> (Legate, SocketAddr, SocketAddr) {
    let up = echo_upstream("up").await;
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", routes, hcm_extra),
        &cluster("up", &[(up, 1)], ""),
    );
    let l = Legate::start(&yaml).await;
    let addr = l.listener("ingress").await;
    (l, addr, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_get_is_proxied_with_envoy_headers() {
    let (l, addr, up) = simple(ROUTE_ALL, "").await;
    let (ok, out, err) = curl(&[
        "-i",
        &format!("http://{addr}/hello?x=1"),
        "-H",
        "user-agent: curl-test",
    ]);
    assert!(ok, "{err}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    let head_l = head.to_ascii_lowercase();
    assert!(head_l.contains("\r\nserver: legate"), "{head}");
    assert!(
        head_l.contains("\r\nx-envoy-upstream-service-time: "),
        "{head}"
    );
    assert!(head_l.contains("\r\nx-upstream: up"), "{head}");
    let e = echo_json(body);
    assert_eq!(e["path"], "/hello?x=1");
    assert_eq!(e["method"], "GET");
    let h = &e["headers"];
    assert_eq!(h["host"], format!("{addr}"));
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-envoy-expected-rq-timeout-ms"], "15000");
    assert_eq!(h["user-agent"], "curl-test");
    assert_eq!(h["x-request-id"].as_str().unwrap().len(), 36);
    assert!(
        h.get("x-forwarded-for").is_none(),
        "no XFF without use_remote_address"
    );
    assert_eq!(l.wait_stat("http.ingress.downstream_rq_2xx", 1).await, 1);
    assert_eq!(l.stat("http.ingress.downstream_rq_total").await, 1);
    assert_eq!(l.stat("cluster.up.upstream_rq_200").await, 1);
    assert_eq!(l.stat("cluster.up.upstream_rq_total").await, 1);
    assert_eq!(l.stat("cluster.up.upstream_cx_total").await, 1);
    assert_eq!(l.stat("http.ingress.downstream_rq_http1_total").await, 1);
    let _ = up;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_upstream_connections() {
    let (l, addr, _) = simple(ROUTE_ALL, "").await;
    // One client connection, used for every request.
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    for i in 0..30 {
        sender.ready().await.unwrap();
        let req = hyper::Request::get(format!("/n/{i}"))
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            echo_json(&String::from_utf8_lossy(&body))["path"],
            format!("/n/{i}")
        );
    }
    assert_eq!(
        l.wait_stat("cluster.up.upstream_rq_completed", 30).await,
        30
    );
    assert_eq!(l.stat("http.ingress.downstream_cx_total").await, 1);
    // The worker serving that connection kept one upstream connection for all 30.
    assert_eq!(l.stat("cluster.up.upstream_cx_total").await, 1);
    assert_eq!(l.stat("cluster.up.upstream_cx_active").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_request_and_response_bodies() {
    let (l, addr, _) = simple(ROUTE_ALL, "").await;
    // Chunked request body from curl.
    let (ok, out, _) = curl(&[
        "-H",
        "transfer-encoding: chunked",
        "--data-binary",
        "hello body",
        &format!("http://{addr}/post"),
    ]);
    assert!(ok);
    let e = echo_json(&out);
    assert_eq!(e["method"], "POST");
    assert_eq!(e["body"], "hello body");
    // A large response body arrives whole.
    let c = client();
    let (status, _, body) = get(&c, &format!("http://{addr}/bytes/1000000")).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 1_000_000);
    assert!(
        l.wait_stat("http.ingress.downstream_cx_tx_bytes_total", 1)
            .await
            > 1_000_000
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue() {
    let (_l, addr, _) = simple(ROUTE_ALL, "").await;
    let (ok, out, err) = curl(&[
        "-v",
        "-H",
        "expect: 100-continue",
        "--data-binary",
        "abc",
        &format!("http://{addr}/continue"),
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("HTTP/1.1 100 Continue"), "{err}");
    let e = echo_json(&out);
    assert_eq!(e["body"], "abc");
    assert!(
        e["headers"].get("expect").is_none(),
        "expect must not reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies() {
    let routes = "              - match: {path: \"/direct\"}
                direct_response: {status: 200, body: {inline_string: \"hi\"}}
              - match: {prefix: \"/redir\"}
                redirect: {host_redirect: example.com, path_redirect: /x, response_code: FOUND}
              - match: {prefix: \"/api\"}
                route: {cluster: up}
";
    let (l, addr, _) = simple(routes, "").await;
    let (ok, out, _) = curl(&["-i", &format!("http://{addr}/direct")]);
    assert!(ok);
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain")
    );
    assert_eq!(body, "hi");
    let (_, out, _) = curl(&["-i", &format!("http://{addr}/redir/a?b=c")]);
    assert!(out.starts_with("HTTP/1.1 302"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("location: http://example.com/x?b=c"),
        "{out}"
    );
    let (_, out, _) = curl(&["-i", &format!("http://{addr}/nothing")]);
    assert!(out.starts_with("HTTP/1.1 404"), "{out}");
    assert!(out.to_ascii_lowercase().contains("content-length: 0"));
    assert_eq!(l.wait_stat("http.ingress.no_route", 1).await, 1);
    assert_eq!(l.stat("http.ingress.rq_direct_response").await, 1);
    assert_eq!(l.stat("http.ingress.rq_redirect").await, 1);
    assert_eq!(l.wait_stat("http.ingress.downstream_rq_4xx", 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_and_client_timeout_header() {
    let routes = "              - match: {prefix: \"/\"}\n                route: {cluster: up, timeout: 0.2s}\n";
    let hcm = "          use_remote_address: true\n          internal_address_config: {cidr_ranges: [{address_prefix: 127.0.0.1, prefix_len: 32}]}";
    let (l, addr, _) = simple(routes, hcm).await;
    let c = client();
    let (status, h, body) = get(&c, &format!("http://{addr}/sleep/2000")).await;
    assert_eq!(status, 504);
    assert_eq!(body, "upstream request timeout");
    assert_eq!(h["content-type"], "text/plain");
    assert_eq!(l.wait_stat("cluster.up.upstream_rq_timeout", 1).await, 1);
    assert_eq!(l.stat("cluster.up.upstream_rq_504").await, 1);
    // An internal client may shorten or extend the timeout.
    let req = hyper::Request::get(format!("http://{addr}/sleep/500"))
        .header("x-envoy-upstream-rq-timeout-ms", "2000")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let e = echo_json(&String::from_utf8_lossy(&body));
    assert_eq!(e["headers"]["x-envoy-expected-rq-timeout-ms"], "2000");
    assert_eq!(e["headers"]["x-envoy-internal"], "true");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_clients_cannot_steer_the_proxy() {
    let hcm = "          use_remote_address: true";
    let (_l, addr, _) = simple(ROUTE_ALL, hcm).await;
    let c = client();
    let req = hyper::Request::get(format!("http://{addr}/sleep/300"))
        .header("x-envoy-upstream-rq-timeout-ms", "1")
        .header("x-envoy-retry-on", "5xx")
        .header("x-envoy-original-path", "/forged")
        .header("x-envoy-foo", "bar")
        .header("x-request-id", "client-chosen")
        .header("x-forwarded-for", "1.2.3.4")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "the client's 1 ms timeout must be ignored"
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let h = echo_json(&String::from_utf8_lossy(&body))["headers"].clone();
    assert!(h.get("x-envoy-retry-on").is_none());
    assert!(h.get("x-envoy-original-path").is_none());
    assert_eq!(
        h["x-envoy-foo"], "bar",
        "Envoy keeps unknown x-envoy-* headers"
    );
    assert_ne!(
        h["x-request-id"], "client-chosen",
        "edge proxies regenerate x-request-id"
    );
    assert_eq!(h["x-forwarded-for"], "1.2.3.4,127.0.0.1");
    assert_eq!(h["x-envoy-external-address"], "127.0.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connect_failure_is_503_uf() {
    let dead: SocketAddr = dead_addr();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let hcm = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}",
        log.display()
    );
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", ROUTE_ALL, &hcm),
        &cluster("up", &[(dead, 1)], ""),
    );
    let l = Legate::start(&yaml).await;
    let addr = l.listener("ingress").await;
    let (status, _, body) = get(&client(), &format!("http://{addr}/x")).await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        "upstream connect error or disconnect/reset before headers. reset reason: remote connection failure"
    );
    assert_eq!(
        l.wait_stat("cluster.up.upstream_cx_connect_fail", 1).await,
        1
    );
    assert_eq!(l.stat("http.ingress.downstream_rq_5xx").await, 1);
    let mut line = String::new();
    for _ in 0..100 {
        line = std::fs::read_to_string(&log).unwrap_or_default();
        if !line.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(line.contains("\"GET /x HTTP/1.1\" 503 UF 0 98 "), "{line}");
    assert!(
        line.trim_end().ends_with(&format!("\"{addr}\" \"{dead}\"")),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_clusters_follow_weights() {
    let a = echo_upstream("a").await;
    let b = echo_upstream("b").await;
    let routes = "              - match: {prefix: \"/\"}
                route:
                  weighted_clusters:
                    clusters: [{name: a, weight: 90}, {name: b, weight: 10}]
";
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", routes, ""),
        &(cluster("a", &[(a, 1)], "") + &cluster("b", &[(b, 1)], "")),
    );
    let l = Legate::start(&yaml).await;
    let addr = l.listener("ingress").await;
    let c = client();
    let mut to_a = 0;
    for _ in 0..1000 {
        let (status, h, _) = get(&c, &format!("http://{addr}/")).await;
        assert_eq!(status, 200);
        if h["x-upstream"] == "a" {
            to_a += 1;
        }
    }
    assert!(
        (850..=950).contains(&to_a),
        "{to_a} of 1000 went to the 90% cluster"
    );
    assert_eq!(l.wait_stat("cluster.a.upstream_rq_total", to_a).await, to_a);
    assert_eq!(l.stat("cluster.b.upstream_rq_total").await, 1000 - to_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_over_weighted_endpoints() {
    let a = echo_upstream("a").await;
    let b = echo_upstream("b").await;
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", ROUTE_ALL, ""),
        &cluster("up", &[(a, 3), (b, 1)], "    lb_policy: ROUND_ROBIN"),
    );
    let l = Legate::start_with(&yaml, &["--concurrency", "1"]).await;
    let addr = l.listener("ingress").await;
    let c = client();
    let mut to_a = 0;
    for _ in 0..40 {
        let (_, h, _) = get(&c, &format!("http://{addr}/")).await;
        if h["x-upstream"] == "a" {
            to_a += 1;
        }
    }
    // Smooth weighted round robin on one worker is exact.
    assert_eq!(to_a, 30);
    assert_eq!(l.stat("cluster.up.membership_total").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_rules() {
    let b = echo_upstream("b").await;
    let routes = "              - match: {prefix: \"/v1/\"}
                route: {cluster: up, prefix_rewrite: \"/v2/\"}
              - match: {safe_regex: {regex: \"/users/[0-9]+\"}}
                route:
                  cluster: up
                  regex_rewrite: {pattern: {regex: \"^/users/([0-9]+)$\"}, substitution: \"/u/\\\\1\"}
              - match:
                  prefix: \"/h\"
                  headers: [{name: x-env, string_match: {exact: canary}}]
                route: {cluster: b}
              - match:
                  prefix: \"/q\"
                  query_parameters: [{name: debug, string_match: {exact: \"1\"}}]
                route: {cluster: b}
              - match: {prefix: \"/CASE\", case_sensitive: false}
                route: {cluster: b}
              - match: {prefix: \"/dyn\"}
                route: {cluster_header: x-cluster}
              - match: {prefix: \"/\"}
                route: {cluster: up, host_rewrite_literal: rewritten.example}
                request_headers_to_add:
                - header: {key: x-client, value: \"%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\"}
                - header: {key: x-over, value: \"new\"}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
                request_headers_to_remove: [x-secret]
                response_headers_to_add:
                - header: {key: x-route, value: default}
                response_headers_to_remove: [x-upstream]
";
    let up = echo_upstream("up").await;
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", routes, ""),
        &(cluster("up", &[(up, 1)], "") + &cluster("b", &[(b, 1)], "")),
    );
    let l = Legate::start(&yaml).await;
    let addr = l.listener("ingress").await;
    let c = client();

    let (_, _, body) = get(&c, &format!("http://{addr}/v1/items?x=1")).await;
    let e = echo_json(&body);
    assert_eq!(e["path"], "/v2/items?x=1");
    assert_eq!(e["headers"]["x-envoy-original-path"], "/v1/items?x=1");

    let (_, _, body) = get(&c, &format!("http://{addr}/users/42")).await;
    assert_eq!(echo_json(&body)["path"], "/u/42");

    let req = hyper::Request::get(format!("http://{addr}/h"))
        .header("x-env", "canary")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    assert_eq!(resp.headers()["x-upstream"], "b");

    let (_, h, _) = get(&c, &format!("http://{addr}/q?debug=1")).await;
    assert_eq!(h["x-upstream"], "b");
    let (_, h, _) = get(&c, &format!("http://{addr}/q?debug=0")).await;
    assert_eq!(
        h.get("x-upstream"),
        None,
        "default route removes x-upstream"
    );
    assert_eq!(h["x-route"], "default");

    let (_, h, _) = get(&c, &format!("http://{addr}/case/x")).await;
    assert_eq!(h["x-upstream"], "b");

    let req = hyper::Request::get(format!("http://{addr}/dyn"))
        .header("x-cluster", "b")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().headers()["x-upstream"], "b");
    let req = hyper::Request::get(format!("http://{addr}/dyn"))
        .header("x-cluster", "nope")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(c.request(req).await.unwrap().status(), 503);
    assert_eq!(l.wait_stat("http.ingress.no_cluster", 1).await, 1);

    let req = hyper::Request::get(format!("http://{addr}/other"))
        .header("x-over", "old")
        .header("x-secret", "s")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let e = echo_json(&String::from_utf8_lossy(&body));
    assert_eq!(e["headers"]["host"], "rewritten.example");
    assert_eq!(e["headers"]["x-client"], "127.0.0.1");
    assert_eq!(e["headers"]["x-over"], "new");
    assert!(e["headers"].get("x-secret").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_host_domains() {
    let b = echo_upstream("b").await;
    let up = echo_upstream("up").await;
    let routes_b = "              - match: {prefix: \"/\"}\n                route: {cluster: b}\n";
    let listener = format!(
        r#"
  - name: ingress
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: exact
              domains: ["api.example.com"]
              routes:
{routes_b}
            - name: suffix
              domains: ["*.example.com"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: suffix}}}}
            - name: prefix
              domains: ["www.*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: prefix}}}}
            - name: any
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {{cluster: up}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
"#
    );
    let yaml = bootstrap(
        &listener,
        &(cluster("up", &[(up, 1)], "") + &cluster("b", &[(b, 1)], "")),
    );
    let l = Legate::start(&yaml).await;
    let addr = l.listener("ingress").await;
    let host = |h: &str| {
        let (_, out, _) = curl(&["-H", &format!("host: {h}"), &format!("http://{addr}/")]);
        out
    };
    assert_eq!(echo_json(&host("API.example.com"))["upstream"], "b");
    assert_eq!(host("x.example.com"), "suffix");
    assert_eq!(host("www.other.org"), "prefix");
    assert_eq!(echo_json(&host("elsewhere"))["upstream"], "up");
    // Envoy does not strip the port unless asked to.
    assert_eq!(echo_json(&host("api.example.com:80"))["upstream"], "up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests() {
    let (l, addr, _) = simple(ROUTE_ALL, "          max_request_headers_kb: 8").await;
    let out = raw_exchange(addr, b"GARBAGE\r\n\r\n").await.unwrap();
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400 "),
        "{out:?}"
    );
    let out = raw_exchange(addr, b"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n")
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400 "));
    let big = format!(
        "GET / HTTP/1.1\r\nHost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let out = raw_exchange(addr, big.as_bytes()).await.unwrap();
    assert!(
        String::from_utf8_lossy(&out).starts_with("HTTP/1.1 431 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    let out = raw_exchange(addr, b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    // hyper answers an HTTP/1.0 request with an HTTP/1.0 status line; Envoy says HTTP/1.1.
    assert!(
        text.starts_with("HTTP/1.0 426 ") || text.starts_with("HTTP/1.1 426 "),
        "{text}"
    );
    assert!(text.ends_with("Upgrade Required"), "{text}");
    let out = raw_exchange(addr, b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 400 "));
    // The proxy is still healthy.
    let (status, _, _) = get(&client(), &format!("http://{addr}/ok")).await;
    assert_eq!(status, 200);
    assert!(
        l.wait_stat("http.ingress.downstream_cx_protocol_error", 3)
            .await
            >= 3
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vanished_clients_leave_nothing_behind() {
    let (l, addr, _) = simple(ROUTE_ALL, "").await;
    for _ in 0..20 {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        // Headers promise a body that never comes; then the client goes away.
        s.write_all(b"POST /sleep/10 HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\npartial")
            .await
            .unwrap();
        drop(s);
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /sleep/2000 HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        drop(s);
    }
    assert_eq!(l.wait_stat("http.ingress.downstream_cx_active", 0).await, 0);
    assert_eq!(l.wait_stat("http.ingress.downstream_rq_active", 0).await, 0);
    assert_eq!(l.wait_stat("cluster.up.upstream_rq_active", 0).await, 0);
    let (status, _, _) = get(&client(), &format!("http://{addr}/ok")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_access_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.json");
    let hcm = format!(
        r#"          access_log:
          - name: envoy.access_loggers.file
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog
              path: {}
              log_format:
                json_format:
                  code: "%RESPONSE_CODE%"
                  method: "%REQ(:METHOD)%"
                  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
                  upstream: "%UPSTREAM_HOST%"
                  missing: "%REQ(X-NOPE)%"
                  sent: "%BYTES_SENT%"
                  nested: {{flags: "%RESPONSE_FLAGS%"}}"#,
        log.display()
    );
    let (_l, addr, up) = simple(ROUTE_ALL, &hcm).await;
    let (status, _, body) = get(&client(), &format!("http://{addr}/logged")).await;
    assert_eq!(status, 200);
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.ends_with('\n') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(v["code"], 200);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/logged");
    assert_eq!(v["upstream"], up.to_string());
    assert_eq!(v["missing"], serde_json::Value::Null);
    assert_eq!(v["sent"], body.len() as u64);
    assert_eq!(v["nested"]["flags"], "-");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_dns_cluster_resolves_localhost() {
    let up = echo_upstream("up").await;
    let c = format!(
        r#"
  - name: up
    type: STRICT_DNS
    dns_lookup_family: V4_ONLY
    connect_timeout: 1s
    load_assignment:
      cluster_name: up
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: localhost, port_value: {}}}}}}}
"#,
        up.port()
    );
    let routes = "              - match: {prefix: \"/auto\"}\n                route: {cluster: up, auto_host_rewrite: true}\n".to_string() + ROUTE_ALL;
    let yaml = bootstrap(&http_listener("ingress", "ingress", &routes, ""), &c);
    let l = Legate::start(&yaml).await;
    let addr = l.listener("ingress").await;
    let (status, _, body) = get(&client(), &format!("http://{addr}/dns")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(echo_json(&body)["headers"]["host"], addr.to_string());
    assert_eq!(l.stat("cluster.up.membership_total").await, 1);
    // auto_host_rewrite sends the endpoint's DNS name as the host.
    let (_, _, body) = get(&client(), &format!("http://{addr}/auto")).await;
    assert_eq!(echo_json(&body)["headers"]["host"], "localhost");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_covers_a_slow_body() {
    let (l, addr, _) = simple(ROUTE_ALL, "          request_timeout: 0.3s").await;
    // Headers promise 100 bytes; only 7 arrive.
    let t = std::time::Instant::now();
    let out = raw_exchange(
        addr,
        b"POST /slow HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\npartial",
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408 "), "{text}");
    assert!(text.ends_with("request timeout"), "{text}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(
        l.wait_stat("http.ingress.downstream_rq_timeout", 1).await,
        1
    );
    // A complete request is not affected, however long the upstream takes.
    let (status, _, _) = get(&client(), &format!("http://{addr}/sleep/600")).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_answers_408() {
    let routes = "              - match: {prefix: \"/\"}\n                route: {cluster: up, timeout: 0s}\n";
    let (l, addr, _) = simple(routes, "          stream_idle_timeout: 0.3s").await;
    let c = client();
    // No bytes either way for longer than the idle timeout.
    let (status, _, body) = get(&c, &format!("http://{addr}/sleep/1500")).await;
    assert_eq!(status, 408);
    assert_eq!(body, "stream timeout");
    assert_eq!(
        l.wait_stat("http.ingress.downstream_rq_idle_timeout", 1)
            .await,
        1
    );
    let (status, _, _) = get(&c, &format!("http://{addr}/sleep/100")).await;
    assert_eq!(status, 200);
}

/// An upstream that answers 200 at once, then sends `n` chunks `gap` apart.
async fn drip_upstream(n: usize, gap: Duration) -> SocketAddr {
    use http_body_util::StreamBody;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| async move {
                    let (tx, rx) = tokio::sync::mpsc::channel::<
                        Result<hyper::body::Frame<Bytes>, std::convert::Infallible>,
                    >(1);
                    tokio::spawn(async move {
                        for _ in 0..n {
                            tokio::time::sleep(gap).await;
                            if tx
                                .send(Ok(hyper::body::Frame::data(Bytes::from_static(b"drop "))))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    });
                    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn drip_through(
    route_timeout: &str,
    hcm: &str,
    n: usize,
    gap_ms: u64,
) -> (Legate, Result<String, String>) {
    let up = drip_upstream(n, Duration::from_millis(gap_ms)).await;
    let routes = format!(
        "              - match: {{prefix: \"/\"}}\n                route: {{cluster: up, timeout: {route_timeout}}}\n"
    );
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", &routes, hcm),
        &cluster("up", &[(up, 1)], ""),
    );
    let l = Legate::start(&yaml).await;
    let addr = l.listener("ingress").await;
    let resp = client()
        .get(format!("http://{addr}/").parse().unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "headers arrive before any timeout");
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("body neither ended nor failed");
    let body = body
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .map_err(|e| e.to_string());
    (l, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_covers_the_whole_response() {
    // Five chunks 200 ms apart take 1 s; the route allows 0.5 s.
    let (l, body) = drip_through("0.5s", "", 5, 200).await;
    assert!(body.is_err(), "the stream must be reset, got {body:?}");
    assert_eq!(l.wait_stat("cluster.up.upstream_rq_timeout", 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_idle_timeout_covers_a_stalled_body() {
    let (l, body) = drip_through("0s", "          stream_idle_timeout: 0.3s", 2, 800).await;
    assert!(
        body.is_err(),
        "a body silent for 0.8 s must be reset, got {body:?}"
    );
    assert_eq!(
        l.wait_stat("http.ingress.downstream_rq_idle_timeout", 1)
            .await,
        1
    );
    // Chunks 100 ms apart keep the stream alive.
    let (_l, body) = drip_through("0s", "          stream_idle_timeout: 0.3s", 5, 100).await;
    assert_eq!(body.unwrap(), "drop drop drop drop drop ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_dying_mid_stream_is_contained() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that promises 1000 bytes, sends 10, and drops the connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
                    .await;
                // Dropping the socket cuts the body short.
            });
        }
    });
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", ROUTE_ALL, ""),
        &cluster("up", &[(up, 1)], ""),
    );
    let l = Legate::start(&yaml).await;
    let addr = l.listener("ingress").await;
    for _ in 0..5 {
        let resp = client()
            .get(format!("http://{addr}/").parse().unwrap())
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let body = resp.into_body().collect().await;
        assert!(body.is_err(), "a cut upstream body must not look complete");
    }
    // Nothing leaks and the proxy keeps serving.
    assert_eq!(l.wait_stat("http.ingress.downstream_rq_active", 0).await, 0);
    assert_eq!(l.wait_stat("cluster.up.upstream_rq_active", 0).await, 0);
    assert_eq!(l.stat("http.ingress.downstream_rq_completed").await, 5);
    let (status, _) = http_get(l.admin, "/ready").await.unwrap();
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_hangs_up_at_once_gets_a_prompt_503() {
    // Accepts, then closes without reading: every connection is dead on arrival.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                drop(s);
            }
        }
    });
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", ROUTE_ALL, ""),
        &cluster("up", &[(up, 1)], ""),
    );
    let l = Legate::start(&yaml).await;
    let addr = l.listener("ingress").await;
    let t = std::time::Instant::now();
    let (status, _, body) = get(&client(), &format!("http://{addr}/")).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.starts_with("upstream connect error or disconnect/reset before headers"),
        "{body}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "answered in {:?}",
        t.elapsed()
    );
    assert_eq!(l.wait_stat("http.ingress.downstream_rq_active", 0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reason_phrase_is_envoys_not_the_upstreams() {
    // The upstream answers `200 Fine Thanks` and `418 I'm a teapot`; Envoy writes
    // its own phrases (`OK`, `Unknown`), with or without filters in the chain.
    let up = http_server(|req: hyper::Request<hyper::body::Incoming>| async move {
        let teapot = req.uri().path() == "/teapot";
        let mut resp = hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
        if teapot {
            *resp.status_mut() = hyper::StatusCode::IM_A_TEAPOT;
        } else {
            resp.extensions_mut()
                .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Thanks"));
        }
        Ok::<_, std::convert::Infallible>(resp)
    })
    .await;
    let fault = "          - name: envoy.filters.http.fault
            typed_config:
              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault
              abort: {header_abort: {}, percentage: {numerator: 100}}
";
    for filters in ["", fault] {
        let yaml = bootstrap(
            &http_listener_with_filters("ingress", "ingress", ROUTE_ALL, "", filters),
            &cluster("up", &[(up, 1)], ""),
        );
        let l = Legate::start(&yaml).await;
        let addr = l.listener("ingress").await;
        let (_, head, body) = curl_get(&[&format!("http://{addr}/")]);
        assert!(head.starts_with("http/1.1 200 ok\r\n"), "{head}");
        assert_eq!(body, "ok");
        let (_, head, _) = curl_get(&[&format!("http://{addr}/teapot")]);
        assert!(head.starts_with("http/1.1 418 unknown\r\n"), "{head}");
    }
}
