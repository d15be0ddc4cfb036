//! Wasm filters: the example proxy-wasm filters (built with the public `proxy-wasm`
//! crate for wasm32-wasip1) loaded into the real binary and driven by real clients.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_filter_over_http1_and_http2() {
    let up = echo_upstream("up").await;
    let wasm = wasm_example("header_filter");
    let l = Legate::start(&filtered_config(
        &wasm_http_filter("header_filter", &wasm, "", ""),
        up,
        "",
    ))
    .await;
    let a = l.listener("ingress").await;
    assert_header_filter(a, "header_filter");
    // One VM per worker that served a stream; the config check's VM is gone.
    let active = l.stat("wasm.envoy.wasm.runtime.v8.active").await;
    assert!((1..=2).contains(&active), "{active}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_callout_to_a_real_auth_service() {
    let up = echo_upstream("up").await;
    let auth = auth_service().await;
    let wasm = wasm_example("auth_callout");
    let filter = wasm_http_filter(
        "auth_callout",
        &wasm,
        r#"{"cluster": "auth", "path": "/check", "timeout_ms": 1000}"#,
        "",
    );
    let l = Legate::start(&filtered_config(
        &filter,
        up,
        &cluster("auth", &[(auth, 1)], ""),
    ))
    .await;
    let a = l.listener("ingress").await;
    assert_auth_callout(a, "auth_callout");
    // The auth cluster's stats show the calls went through its pool.
    assert!(l.stat("cluster.auth.upstream_cx_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_callout_with_the_auth_service_down() {
    let up = echo_upstream("up").await;
    let dead: SocketAddr = dead_addr();
    let wasm = wasm_example("auth_callout");
    let filter = wasm_http_filter("auth_callout", &wasm, r#"{"cluster": "auth"}"#, "");
    let l = Legate::start(&filtered_config(
        &filter,
        up,
        &cluster("auth", &[(dead, 1)], ""),
    ))
    .await;
    let a = l.listener("ingress").await;
    // As in Envoy: the failed call comes back as a synthetic 503, which this
    // filter turns into a denial.
    let (status, _, body) = curl_get(&[&url(a, "/x")]);
    assert_eq!(status, 403);
    assert_eq!(body, "denied by auth_callout\n");
}

/// Sends a chunked request in several writes, with pauses, and returns the
/// response.
async fn chunked_post(a: SocketAddr, chunks: &[&str]) -> String {
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for c in chunks {
        s.write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes a chunked HTTP/1.1 body.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_rewrite_across_chunks() {
    let up = echo_upstream("up").await;
    let wasm = wasm_example("body_rewrite");
    let l = Legate::start(&filtered_config(
        &wasm_http_filter("body_rewrite", &wasm, "{}", ""),
        up,
        "",
    ))
    .await;
    let a = l.listener("ingress").await;
    // "hello" split across chunk boundaries still gets rewritten: the filter
    // buffers until the end of the body.
    let resp = chunked_post(a, &["he", "llo wor", "ld, hel", "lo"]).await;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    // Upstream saw the request rewritten; the response's "world" became "planet".
    assert_eq!(echo["body"], "goodbye planet, goodbye", "{body}");
    // HTTP/2 with a body sent in one go.
    let (status, _, body) = curl_get(&[
        "--http2-prior-knowledge",
        "--data-binary",
        "hello world",
        &url(a, "/echo"),
    ]);
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["body"], "goodbye planet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_buffer_limit_gives_413() {
    let up = echo_upstream("up").await;
    let wasm = wasm_example("body_rewrite");
    let extra = "                legate_limits: {max_buffered_body_bytes: 1024}";
    let l = Legate::start(&filtered_config(
        &wasm_http_filter("body_rewrite", &wasm, "{}", extra),
        up,
        "",
    ))
    .await;
    let a = l.listener("ingress").await;
    let big = "x".repeat(4096);
    let (status, _, body) = curl_get(&["--data-binary", &big, &url(a, "/echo")]);
    assert_eq!(status, 413, "{body}");
    // Small bodies still pass.
    let (status, _, _) = curl_get(&["--data-binary", "hello", &url(a, "/echo")]);
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_filter_follows_its_configuration() {
    let up = echo_upstream("up").await;
    let wasm = wasm_example("config_filter");
    let cfg =
        r#"{"headers": {"x-a": "1", "x-b": "2"}, "deny_paths": ["/admin"], "deny_status": 451}"#;
    let mut filter = wasm_http_filter("config_filter", &wasm, cfg, "");
    filter = filter.replace(
        "                  runtime: envoy.wasm.runtime.v8\n",
        "                  runtime: envoy.wasm.runtime.v8\n                  configuration: {\"@type\": type.googleapis.com/google.protobuf.StringValue, value: vm-config-example}\n",
    );
    let l = Legate::start(&filtered_config(&filter, up, "")).await;
    let a = l.listener("ingress").await;
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-a: 1") && head.contains("x-b: 2"), "{head}");
    assert!(head.contains("x-vm-config: vm-config-example"), "{head}");
    let (status, head, body) = curl_get(&[&url(a, "/admin/users")]);
    assert_eq!(status, 451);
    assert!(head.contains("x-denied-by: config_filter"), "{head}");
    assert_eq!(body, "denied\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_rejecting_its_configuration_fails_the_config() {
    let up = echo_upstream("up").await;
    let wasm = wasm_example("config_filter");
    let yaml = filtered_config(
        &wasm_http_filter("config_filter", &wasm, "{not json", ""),
        up,
        "",
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, yaml).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--mode", "validate", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Wasm plugin \"config_filter\"")
            && err.contains("on_configure returned false"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_module_is_refused_at_the_field() {
    let up = echo_upstream("up").await;
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0garbage").unwrap();
    let yaml = filtered_config(&wasm_http_filter("junk", &junk, "", ""), up, "");
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, yaml).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--mode", "validate", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("code.local.filename") && err.contains("invalid Wasm module"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limiter_holds_its_limit_across_two_workers() {
    let up = echo_upstream("up").await;
    let wasm = wasm_example("rate_limiter");
    let filter = wasm_http_filter(
        "rate_limiter",
        &wasm,
        r#"{"limit": 10, "window_s": 86400, "key_header": "x-user"}"#,
        "",
    );
    let l = Legate::start_with(&filtered_config(&filter, up, ""), &["--concurrency", "2"]).await;
    let a = l.listener("ingress").await;
    let get = move || async move {
        http_raw(
            a,
            "GET / HTTP/1.1\r\nHost: x\r\nx-user: bob\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap()
        .0
    };
    // The first request creates the window's key. Creating a key has no CAS in
    // the proxy-wasm ABI (in Envoy too), so two workers creating it at once can
    // both count as first; after that every increment is a CAS.
    let mut codes = vec![get().await];
    // 39 more on new connections, spread over both workers, 8 at a time.
    let mut tasks = Vec::new();
    for i in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut codes = Vec::new();
            for _ in 0..if i == 0 { 4 } else { 5 } {
                codes.push(get().await);
            }
            codes
        }));
    }
    for t in tasks {
        codes.extend(t.await.unwrap());
    }
    let mut ok = 0;
    let mut limited = 0;
    for c in codes {
        match c {
            200 => ok += 1,
            429 => limited += 1,
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!((ok, limited), (10, 30));
    // The plugin's metric is a stat, in every output format.
    assert_eq!(l.stat("wasmcustom.rate_limiter.rejected").await, 30);
    let (_, prom) = http_get(l.admin, "/stats/prometheus").await.unwrap();
    assert!(prom.contains("rate_limiter_rejected"), "{prom}");
    // Both workers built a VM.
    assert!(l.stat("wasm.envoy.wasm.runtime.v8.created").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_rewrite_network_filter() {
    let echo = tcp_echo().await;
    let wasm = wasm_example("tcp_rewrite");
    let listener = format!(
        r#"
  - name: tcp
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.wasm
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.wasm.v3.Wasm
          config:
            name: tcp_rewrite
            configuration:
              "@type": type.googleapis.com/google.protobuf.StringValue
              value: '{{"from": "ping", "to": "PONG"}}'
            vm_config:
              runtime: envoy.wasm.runtime.v8
              code: {{local: {{filename: "{}"}}}}
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: echo
"#,
        wasm.display()
    );
    let l = Legate::start(&bootstrap(&listener, &cluster("echo", &[(echo, 1)], ""))).await;
    let a = l.listener("tcp").await;
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"ping hello\n").await.unwrap();
    let mut buf = vec![0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    // ping -> PONG on the way up; hello -> HELLO on the way back.
    assert_eq!(&buf, b"PONG HELLO\n");
    drop(s);
    assert_eq!(
        l.wait_stat("wasmcustom.tcp_rewrite.connections", 1).await,
        1
    );
}

/// Two routes: `/wasm` runs the misbehaving filter; the listener `plain` has none.
fn fault_config(up: SocketAddr, policy: &str, limits: &str) -> String {
    let filter = wasm_http_filter(
        "misbehave",
        &wasm_example("misbehave"),
        "",
        &plugin_extra(policy, limits),
    );
    fault_bootstrap(&filter, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_filter_fails_closed_then_recovers() {
    let up = echo_upstream("up").await;
    let l = Legate::start_with(&fault_config(up, "", ""), &["--concurrency", "1"]).await;
    let a = l.listener("ingress").await;
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"));
    let (status, _, body) = curl_get(&["-H", "x-trap: 1", &url(a, "/")]);
    assert_eq!(status, 503);
    assert_eq!(body, "");
    // The next request gets a fresh VM.
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"), "{head}");
    assert_eq!(l.stat("wasm.misbehave.vm_failed").await, 1);
    assert_eq!(l.stat("wasm.misbehave.fail_closed").await, 1);
    assert_eq!(l.stat("wasm.misbehave.vm_reload_success").await, 1);
    assert!(
        l.stderr_text().contains("trapped: unreachable"),
        "{}",
        l.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_filter_fails_open() {
    let up = echo_upstream("up").await;
    let l = Legate::start_with(&fault_config(up, "FAIL_OPEN", ""), &["--concurrency", "1"]).await;
    let a = l.listener("ingress").await;
    let (status, head, body) = curl_get(&["-H", "x-trap: 1", &url(a, "/")]);
    // The stream skips the filter and reaches the upstream.
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("x-misbehave"), "{head}");
    assert!(body.contains("\"upstream\":\"up\""), "{body}");
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"), "{head}");
    assert_eq!(l.stat("wasm.misbehave.fail_open").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_infinite_loop_is_cut_at_the_time_limit() {
    let up = echo_upstream("up").await;
    let l = Legate::start_with(
        &fault_config(up, "", "{max_callback_duration: 0.2s}"),
        &["--concurrency", "1"],
    )
    .await;
    let a = l.listener("ingress").await;
    let plain = l.listener("plain").await;
    let t = Instant::now();
    let (status, _, _) = curl_get(&["-H", "x-loop: 1", &url(a, "/")]);
    let took = t.elapsed();
    assert_eq!(status, 503);
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // The worker is free: other routes and the filter itself serve again.
    let (status, _, _) = curl_get(&[&url(plain, "/")]);
    assert_eq!(status, 200);
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"));
    assert!(
        l.stderr_text().contains("exceeded the callback time limit"),
        "{}",
        l.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_is_stopped_at_the_cap() {
    let up = echo_upstream("up").await;
    let l = Legate::start_with(
        &fault_config(up, "", "{max_memory_bytes: 16777216}"),
        &["--concurrency", "1"],
    )
    .await;
    let a = l.listener("ingress").await;
    let plain = l.listener("plain").await;
    let (status, _, _) = curl_get(&["-H", "x-hog: 1", &url(a, "/")]);
    assert_eq!(status, 503);
    let (status, _, _) = curl_get(&[&url(plain, "/")]);
    assert_eq!(status, 200);
    let (status, _, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    let log = l.stderr_text();
    assert!(
        log.contains("exceeded the memory limit of 16777216 bytes"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_built_for_wasm32_unknown_unknown_load() {
    let up = echo_upstream("up").await;
    let wasm = wasm_example_for("header_filter", "wasm32-unknown-unknown");
    let l = Legate::start(&filtered_config(
        &wasm_http_filter("header_filter", &wasm, "", ""),
        up,
        "",
    ))
    .await;
    let a = l.listener("ingress").await;
    let (status, head, _) = curl_get(&[&url(a, "/p")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-wasm-filter: header_filter"), "{head}");
}

/// Which example answered: header_filter marks `x-wasm-filter`, config_filter
/// adds the configured `x-a`.
fn which(h: &http::HeaderMap) -> Option<&'static str> {
    if h.contains_key("x-wasm-filter") {
        Some("header_filter")
    } else if h.get("x-a").is_some_and(|v| v == "config") {
        Some("config_filter")
    } else {
        None
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasm_file_swaps_under_load_drop_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let up = echo_upstream("up").await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("plugin.wasm");
    let versions = [
        std::fs::read(wasm_example("header_filter")).unwrap(),
        std::fs::read(wasm_example("config_filter")).unwrap(),
    ];
    replace_file(&plugin, &versions[0]);
    let filter = wasm_http_filter("swap", &plugin, r#"{"headers": {"x-a": "config"}}"#, "");
    let l = Legate::start(&filtered_config(&filter, up, "")).await;
    let a = l.listener("ingress").await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    // A bounded load loop: 8 keep-alive clients until told to stop, 40 s at most.
    for _ in 0..8 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            use http_body_util::BodyExt;
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let until = Instant::now() + Duration::from_secs(40);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let good = match client.get(format!("http://{a}/x").parse().unwrap()).await {
                    Ok(r) if r.status() == 200 && which(r.headers()).is_some() => {
                        r.into_body().collect().await.is_ok()
                    }
                    _ => false,
                };
                let counter = if good { &ok } else { &failed };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let probe = || async {
        let (ok, out, _) = curl(&["-si", &url(a, "/probe")]);
        assert!(ok);
        let lower = out.to_ascii_lowercase();
        if lower.contains("x-wasm-filter: header_filter") {
            "header_filter"
        } else if lower.contains("x-a: config") {
            "config_filter"
        } else {
            "none"
        }
    };
    // Five swaps, each checked to be in force before the next.
    let mut expect = "header_filter";
    for i in 1..=5 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        replace_file(&plugin, &versions[i % 2]);
        expect = ["header_filter", "config_filter"][i % 2];
        l.wait_stat("server.config_reload", i as i64).await;
        assert_eq!(probe().await, expect, "after swap {i}");
    }
    // A broken module: the reload is refused and the last good one keeps serving.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    replace_file(&plugin, b"\0asm\x01\0\0\0not really wasm");
    l.wait_stat("server.config_reload_failed", 1).await;
    assert_eq!(probe().await, expect);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during swaps"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 500,
        "load loop too small: {}",
        ok.load(Ordering::Relaxed)
    );
    assert_eq!(l.stat("server.config_reload").await, 5);
    assert!(
        l.stderr_text().contains("invalid Wasm module"),
        "{}",
        l.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_backs_off_between_rebuilds() {
    let up = echo_upstream("up").await;
    let policy = "FAIL_RELOAD\n                reload_config: {backoff: {base_interval: 1s, max_interval: 4s}}";
    let l = Legate::start_with(&fault_config(up, policy, ""), &["--concurrency", "1"]).await;
    let a = l.listener("ingress").await;
    // The first failure is rebuilt at once; a rebuilt VM that fails right away
    // makes the next rebuild wait the base interval.
    for _ in 0..2 {
        let (status, _, _) = curl_get(&["-H", "x-trap: 1", &url(a, "/")]);
        assert_eq!(status, 503);
    }
    let (status, _, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 503, "a clean request during the backoff");
    assert!(l.stat("wasm.misbehave.vm_reload_backoff").await >= 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"));
    assert_eq!(l.stat("wasm.misbehave.vm_reload_success").await, 2);
    assert_eq!(l.stat("wasm.misbehave.vm_failed").await, 2);
}

/// A cluster over h2c.
fn h2_cluster(name: &str, addr: SocketAddr) -> String {
    cluster(
        name,
        &[(addr, 1)],
        "    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bootstrap_service_ticks_calls_out_and_drains_a_queue() {
    let up = echo_upstream("up").await;
    let service = format!(
        r#"bootstrap_extensions:
- name: envoy.bootstrap.wasm
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.wasm.v3.WasmService
    singleton: true
    config:
      name: heartbeat
      configuration:
        "@type": type.googleapis.com/google.protobuf.StringValue
        value: '{{"cluster": "up", "path": "/status/204", "period_ms": 100}}'
      vm_config:
        vm_id: heartbeat
        runtime: envoy.wasm.runtime.v8
        code: {{local: {{filename: "{}"}}}}
"#,
        wasm_example("heartbeat").display()
    );
    let client = wasm_http_filter(
        "heartbeat_client",
        &wasm_example("heartbeat_client"),
        "",
        "",
    )
    .replace(
        "                  runtime: envoy.wasm.runtime.v8\n",
        "                  vm_id: heartbeat\n                  runtime: envoy.wasm.runtime.v8\n",
    );
    let yaml = service + &filtered_config(&client, up, "");
    let l = Legate::start(&yaml).await;
    let a = l.listener("ingress").await;
    // The service's timer fires every 100 ms and each tick calls the cluster;
    // the status it stores in shared data reaches the filter on the workers.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = String::new();
    while Instant::now() < deadline {
        let (_, head, _) = curl_get(&[&url(a, "/n")]);
        seen = head;
        if seen.contains("x-heartbeat: 204") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen.contains("x-heartbeat: 204"), "{seen}");
    assert!(l.stat("wasmcustom.heartbeat.ticks").await >= 1);
    // Every request's path went through the shared queue to the service.
    let before = l.stat("wasmcustom.heartbeat.queued").await;
    for i in 0..5 {
        let (status, _, _) = curl_get(&[&url(a, &format!("/q{i}"))]);
        assert_eq!(status, 200);
    }
    assert_eq!(
        l.wait_stat("wasmcustom.heartbeat.queued", before + 5).await,
        before + 5
    );
    let ticks = l.stat("wasmcustom.heartbeat.ticks").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(l.stat("wasmcustom.heartbeat.ticks").await >= ticks + 3);
    assert!(l.stat("cluster.up.upstream_rq_total").await >= 3);
}

/// A gRPC echo over h2c: every message of the request comes back, then
/// `grpc-status` 0, or 7 when the path contains `Fail`.
async fn grpc_echo() -> SocketAddr {
    use http_body_util::{BodyExt, StreamBody};
    http_server(|req: hyper::Request<hyper::body::Incoming>| async move {
        let fail = req.uri().path().contains("Fail");
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<hyper::body::Frame<bytes::Bytes>, std::convert::Infallible>,
        >(16);
        tokio::spawn(async move {
            let mut body = req.into_body();
            while let Some(Ok(f)) = body.frame().await {
                if let Ok(d) = f.into_data()
                    && !fail
                {
                    let _ = tx.send(Ok(hyper::body::Frame::data(d))).await;
                }
            }
            let mut t = http::HeaderMap::new();
            t.insert("grpc-status", if fail { "7" } else { "0" }.parse().unwrap());
            let _ = tx.send(Ok(hyper::body::Frame::trailers(t))).await;
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx)).boxed();
        let mut resp = hyper::Response::new(body);
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        Ok::<_, std::convert::Infallible>(resp)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callout_makes_a_unary_call() {
    let up = echo_upstream("up").await;
    let grpc = grpc_echo().await;
    let dead: SocketAddr = dead_addr();
    let filter = |cluster: &str, method: &str| {
        wasm_http_filter(
            "grpc_callout",
            &wasm_example("grpc_callout"),
            &format!(
                r#"{{"cluster": "{cluster}", "service": "test.Echo", "method": "{method}", "timeout_ms": 1000}}"#
            ),
            "",
        )
    };
    for (cluster, method, want) in [
        ("grpc", "Unary", 200),
        ("grpc", "Fail", 502),
        ("dead", "Unary", 502),
    ] {
        let clusters = h2_cluster("grpc", grpc) + &h2_cluster("dead", dead);
        let l = Legate::start(&filtered_config(&filter(cluster, method), up, &clusters)).await;
        let a = l.listener("ingress").await;
        let (status, head, body) = curl_get(&[&url(a, "/hello?x=1")]);
        assert_eq!(status, want, "{cluster}/{method}: {head}{body}");
        match want {
            200 => {
                // The echoed message carried the path; the filter put it in a
                // request header the upstream saw.
                let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(echo["headers"]["x-grpc-reply"], "/hello?x=1", "{body}");
            }
            _ if cluster == "dead" => assert!(head.contains("x-grpc-status: 14"), "{head}"),
            _ => assert!(head.contains("x-grpc-status: 7"), "{head}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callout_streams_messages_both_ways() {
    let up = echo_upstream("up").await;
    let grpc = grpc_echo().await;
    for (method, want) in [("Bidi", 200), ("Fail", 502)] {
        let filter = wasm_http_filter(
            "grpc_callout",
            &wasm_example("grpc_callout"),
            &format!(
                r#"{{"cluster": "grpc", "service": "test.Echo", "method": "{method}", "stream": true}}"#
            ),
            "",
        );
        let l = Legate::start(&filtered_config(&filter, up, &h2_cluster("grpc", grpc))).await;
        let a = l.listener("ingress").await;
        let (status, head, body) = curl_get(&[&url(a, "/s")]);
        assert_eq!(status, want, "{method}: {head}{body}");
        if want == 200 {
            // Both messages came back, then initial metadata and one trailer.
            let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(echo["headers"]["x-grpc-stream"], "/s,second", "{body}");
            assert_eq!(
                echo["headers"]["x-grpc-stream-meta"], "application/grpc;1",
                "{body}"
            );
        } else {
            assert!(head.contains("x-grpc-status: 7"), "{head}");
        }
    }
}

/// A response-headers pause waits for the whole response body, and the body
/// callback can still change the response headers; the body goes on intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_headers_pause_waits_for_the_body() {
    let up = echo_upstream("up").await;
    let l = Legate::start_with(&fault_config(up, "", ""), &["--concurrency", "1"]).await;
    let a = l.listener("ingress").await;
    let (status, head, body) = curl_get(&["-H", "x-hold-response: 1", &url(a, "/held")]);
    assert_eq!(status, 200, "{head}");
    let want = format!("x-response-body-bytes: {}", body.len());
    assert!(head.contains(&want), "{want:?} in {head}");
    assert!(head.contains("x-misbehave: ok"), "{head}");
    assert!(body.contains("\"upstream\":\"up\""), "{body}");
    let length = format!("content-length: {}", body.len());
    assert!(
        !head.contains("content-length") || head.contains(&length),
        "{head}"
    );
    // Without the pause, the response is as before.
    let (status, head, _) = curl_get(&[&url(a, "/plain")]);
    assert_eq!(status, 200);
    assert!(!head.contains("x-response-body-bytes"), "{head}");
}

/// A filter that changes `:authority` or `:path` sends the request down the
/// route of the new values (Envoy's clearRouteCache); other header changes keep
/// the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_authority_or_path_is_routed_again() {
    let filter = wasm_http_filter("misbehave", &wasm_example("misbehave"), "", "");
    let direct = |body: &str| {
        format!("direct_response: {{status: 200, body: {{inline_string: \"{body}\"}}}}")
    };
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
            - name: a
              domains: ["a.example"]
              routes:
              - match: {{prefix: "/other"}}
                {other}
              - match: {{prefix: "/"}}
                {a}
            - name: b
              domains: ["b.example"]
              routes:
              - match: {{prefix: "/"}}
                {b}
          http_filters:
{filter}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#,
        other = direct("route other"),
        a = direct("vhost a"),
        b = direct("vhost b"),
    );
    let l = Legate::start(&bootstrap(&listener, "")).await;
    let a = l.listener("ingress").await;
    let get = |extra: &[&str]| {
        let mut args = vec!["-H", "host: a.example"];
        args.extend_from_slice(extra);
        let u = url(a, "/");
        args.push(&u);
        curl_get(&args)
    };
    let (status, head, body) = get(&["-H", "x-other: 1"]);
    assert_eq!((status, body.as_str()), (200, "vhost a"), "{head}");
    assert!(head.contains("x-misbehave: ok"), "{head}");
    let (status, _, body) = get(&["-H", "x-set-authority: b.example"]);
    assert_eq!((status, body.as_str()), (200, "vhost b"));
    let (status, _, body) = get(&["-H", "x-set-path: /other/x"]);
    assert_eq!((status, body.as_str()), (200, "route other"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_environment_and_on_log_reach_the_filter() {
    let up = echo_upstream("up").await;
    let filter = wasm_http_filter("misbehave", &wasm_example("misbehave"), "", "").replace(
        "                  runtime: envoy.wasm.runtime.v8\n",
        "                  runtime: envoy.wasm.runtime.v8\n                  environment_variables: {key_values: {MISBEHAVE_ENV: from-config}}\n",
    );
    let routes = "              - match: {prefix: \"/\"}\n                name: main-route\n                route: {cluster: up}\n";
    let yaml = bootstrap(
        &http_listener_with_filters("ingress", "ingress", routes, "", &filter),
        &cluster("up", &[(up, 1)], ""),
    );
    let l = Legate::start(&yaml).await;
    let a = l.listener("ingress").await;
    let (status, head, _) = curl_get(&["-H", "x-props: 1", &url(a, "/p/q?x=1")]);
    assert_eq!(status, 200);
    for want in [
        "x-prop-plugin-name: misbehave".to_string(),
        "x-prop-source-address: 127.0.0.1:".to_string(),
        format!("x-prop-destination-address: {a}"),
        "x-prop-request-path: /p/q?x=1".to_string(),
        "x-prop-request-url-path: /p/q".to_string(),
        "x-prop-request-method: get".to_string(),
        "x-prop-request-protocol: http/1.1".to_string(),
        "x-prop-response-code: 200".to_string(),
        "x-prop-response-code-details: via_upstream".to_string(),
        "x-prop-cluster-name: up".to_string(),
        "x-prop-route-name: main-route".to_string(),
        format!("x-prop-upstream-address: {up}"),
        "x-prop-env: from-config".to_string(),
    ] {
        assert!(head.contains(&want), "missing {want:?} in {head}");
    }
    assert_eq!(l.wait_stat("wasmcustom.misbehave.logged", 1).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_answers_is_logged_with_the_status_it_sent() {
    // As in Envoy, `on_log` runs for the filter that answered in its request
    // hook, and reads `response.code` (checked against Envoy 1.40 by hand:
    // `logged_403`).
    let up = echo_upstream("up").await;
    let filter = wasm_http_filter("misbehave", &wasm_example("misbehave"), "", "");
    let l = Legate::start(&filtered_config(&filter, up, "")).await;
    let a = l.listener("ingress").await;
    let (status, _, body) = curl_get(&["-H", "x-deny: 1", &url(a, "/")]);
    assert_eq!((status, body.as_str()), (403, "denied\n"));
    let (status, _, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert_eq!(l.wait_stat("wasmcustom.misbehave.logged", 2).await, 2);
    assert_eq!(l.stat("wasmcustom.misbehave.logged_403").await, 1);
    assert_eq!(l.stat("wasmcustom.misbehave.logged_200").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_functions_answer_as_envoys() {
    let up = echo_upstream("up").await;
    let filter = wasm_http_filter("misbehave", &wasm_example("misbehave"), "", "");
    let l = Legate::start(&filtered_config(&filter, up, "")).await;
    let a = l.listener("ingress").await;
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, head, _) =
            curl_get(&[proto, "-H", "x-foreign: some text, some text", &url(a, "/")]);
        assert_eq!(status, 200, "{head}");
        for want in [
            // A zlib stream at the default level, which uncompress reverses.
            "x-foreign-zlib-header: [78, 9c]",
            "x-foreign-roundtrip: ok some text, some text",
            "x-foreign-garbage: serializationfailure",
            "x-foreign-clear-route-cache: ok",
            "x-foreign-unknown: notfound",
        ] {
            assert!(head.contains(want), "{proto}: missing {want:?} in {head}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_struct_wrapping_and_deprecated_fail_open() {
    let up = echo_upstream("up").await;
    // As Istio and many examples write it: a TypedStruct around the Wasm message,
    // with the deprecated `fail_open`.
    let filter = format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/udpa.type.v1.TypedStruct
              type_url: type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              value:
                config:
                  name: misbehave
                  fail_open: true
                  vm_config:
                    runtime: envoy.wasm.runtime.wamr
                    code: {{local: {{filename: "{}"}}}}"#,
        wasm_example("misbehave").display()
    );
    let l = Legate::start(&filtered_config(&filter, up, "")).await;
    let a = l.listener("ingress").await;
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"), "{head}");
    let (status, _, body) = curl_get(&["-H", "x-trap: 1", &url(a, "/")]);
    assert_eq!(status, 200, "fail_open: true passes the stream on: {body}");
    // Any envoy.wasm.runtime.* runs on wasmtime, and says so.
    assert!(
        l.stderr_text()
            .contains("envoy.wasm.runtime.wamr\" is served by wasmtime")
    );
    assert!(l.stat("wasm.envoy.wasm.runtime.wamr.created").await >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_mistakes_are_reported_together_with_their_paths() {
    let up = echo_upstream("up").await;
    let wasm = wasm_example("header_filter");
    let filter = format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: one
                failure_polcy: FAIL_OPEN
                vm_config:
                  runtime: wasmtime
                  code: {{local: {{filename: "{}"}}}}
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: two
                vm_config:
                  code: {{remote: {{http_uri: {{uri: "http://x/f.wasm"}}}}}}"#,
        wasm.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.yaml");
    std::fs::write(&p, filtered_config(&filter, up, "")).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["--mode", "validate", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for want in [
        "unknown field \"failure_polcy\"; did you mean \"failure_policy\"?",
        "unknown Wasm runtime \"wasmtime\"",
        "field \"remote\" is not supported by legate",
        "config.vm_config.runtime",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headers_pause_waits_for_the_body_and_may_still_change_headers() {
    let up = echo_upstream("up").await;
    let extra = "                legate_limits: {max_buffered_body_bytes: 4096}";
    let filter = wasm_http_filter("misbehave", &wasm_example("misbehave"), "", extra);
    let l = Legate::start(&filtered_config(&filter, up, "")).await;
    let a = l.listener("ingress").await;
    // The body arrives in pieces; the headers are held until all of it is there,
    // then changed by the body callback before they go upstream.
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    s.write_all(b"POST /hold HTTP/1.1\r\nHost: x\r\nx-hold: 1\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b" world").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["headers"]["x-held-body-bytes"], "11", "{body}");
    assert_eq!(echo["body"], "hello world");
    // A body the filter refuses never reaches the upstream.
    let before = l.stat("cluster.up.upstream_rq_total").await;
    let (status, _, body) = curl_get(&[
        "-H",
        "x-hold: 1",
        "--data-binary",
        "please deny",
        &url(a, "/hold"),
    ]);
    assert_eq!((status, body.as_str()), (403, "denied by body\n"));
    // Past the buffer limit: 413, as Envoy's buffering filters answer. The
    // proxy answers for the filter that waited, which sees the reply's headers.
    let big = "x".repeat(5000);
    let (status, head, _) = curl_get(&["-H", "x-hold: 1", "--data-binary", &big, &url(a, "/hold")]);
    assert_eq!(status, 413);
    assert!(head.contains("x-misbehave: ok"), "{head}");
    assert_eq!(l.stat("cluster.up.upstream_rq_total").await, before);
    // HTTP/2 too.
    let (status, _, body) = curl_get(&[
        "--http2-prior-knowledge",
        "-H",
        "x-hold: 1",
        "--data-binary",
        "abc",
        &url(a, "/hold"),
    ]);
    assert_eq!(status, 200);
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-held-body-bytes"], "3", "{body}");
}

/// The cache entry of `wasm` in `dir`: `<sha256 of the file>-<engine>.cwasm`.
fn cache_entry(dir: &std::path::Path, wasm: &std::path::Path) -> Option<std::path::PathBuf> {
    use sha2::Digest;
    let sha: String = sha2::Sha256::digest(std::fs::read(wasm).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("{sha}-")) && name.ends_with(".cwasm")
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_code_is_kept_on_disk_and_reused() {
    let up = echo_upstream("up").await;
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("wasm-cache");
    let flags = [
        "--concurrency",
        "2",
        "--wasm-cache-dir",
        dir.to_str().unwrap(),
    ];
    let examples = [
        ("header_filter", wasm_example("header_filter")),
        ("sdk_header_filter", component_example("sdk_header_filter")),
    ];
    for (name, wasm) in &examples {
        let yaml = filtered_config(&wasm_http_filter(name, wasm, "", ""), up, "");
        // First start: compiled and saved under the code's digest.
        let l = Legate::start_with(&yaml, &flags).await;
        assert_header_filter(l.listener("ingress").await, name);
        let log = l.stderr_text();
        assert!(log.contains("compiled in"), "{name}: {log}");
        assert!(!log.contains("loaded from the cache"), "{name}: {log}");
        let entry = cache_entry(&dir, wasm).unwrap_or_else(|| panic!("{name}: no cache entry"));
        drop(l);

        // Second start: mapped in from the cache, not compiled.
        let l = Legate::start_with(&yaml, &flags).await;
        assert_header_filter(l.listener("ingress").await, name);
        let log = l.stderr_text();
        assert!(log.contains("loaded from the cache"), "{name}: {log}");
        assert!(!log.contains("compiled in"), "{name}: {log}");
        drop(l);

        // A damaged entry is compiled again and replaced; nothing fails.
        std::fs::write(&entry, b"\x7fELF not machine code").unwrap();
        let l = Legate::start_with(&yaml, &flags).await;
        assert_header_filter(l.listener("ingress").await, name);
        let log = l.stderr_text();
        assert!(
            log.contains("ignoring the cached Wasm code"),
            "{name}: {log}"
        );
        assert!(log.contains("compiled in"), "{name}: {log}");
        drop(l);
        let l = Legate::start_with(&yaml, &flags).await;
        assert!(
            l.stderr_text().contains("loaded from the cache"),
            "{name}: {}",
            l.stderr_text()
        );
    }
    // Only the proxy's user may write code the proxy will run.
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let yaml = filtered_config(&wasm_http_filter("h", &examples[0].1, "", ""), up, "");
    let err = Legate::try_start_with(&yaml, &flags).await.err().unwrap();
    assert!(
        err.contains("is writable by other users (mode 0777)"),
        "{err}"
    );
    // Nor one another user owns (only root can hand it over; CI runs as root).
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    if std::os::unix::fs::chown(&dir, Some(65534), None).is_ok() {
        let err = Legate::try_start_with(&yaml, &flags).await.err().unwrap();
        assert!(err.contains("belongs to another user (uid 65534)"), "{err}");
    }
}
