//! Wasm components: the legate-sdk example filters (examples/components, built
//! for wasm32-wasip2) loaded into the real binary and driven by real clients.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An `envoy.filters.http.wasm` entry running a component example.
fn component_filter(name: &str, config_json: &str, extra: &str) -> String {
    wasm_http_filter(name, &component_example(name), config_json, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_header_filter_over_http1_and_http2() {
    let up = echo_upstream("up").await;
    let l = Legate::start(&filtered_config(
        &component_filter("sdk_header_filter", "", ""),
        up,
        "",
    ))
    .await;
    let a = l.listener("ingress").await;
    assert_header_filter(a, "sdk_header_filter");
    // Per-worker instances, counted with proxy-wasm VMs under Envoy's names.
    let active = l.stat("wasm.envoy.wasm.runtime.v8.active").await;
    assert!((1..=2).contains(&active), "{active}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_auth_callout_awaits_a_real_auth_service() {
    let up = echo_upstream("up").await;
    let auth = auth_service().await;
    let filter = component_filter(
        "sdk_auth_callout",
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
    assert_auth_callout(a, "sdk_auth_callout");
    assert!(l.stat("cluster.auth.upstream_cx_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_auth_callout_with_the_auth_service_down() {
    let up = echo_upstream("up").await;
    let dead: SocketAddr = dead_addr();
    let filter = component_filter("sdk_auth_callout", r#"{"cluster": "auth"}"#, "");
    let l = Legate::start(&filtered_config(
        &filter,
        up,
        &cluster("auth", &[(dead, 1)], ""),
    ))
    .await;
    let a = l.listener("ingress").await;
    // The typed interface reports the failure itself, no synthetic 503.
    let (status, _, body) = curl_get(&[&url(a, "/x")]);
    assert_eq!(status, 503);
    assert_eq!(body, "auth service unavailable\n");
    assert!(
        l.stderr_text()
            .contains("auth call failed: connection failure"),
        "{}",
        l.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_api_key_answers_locally_and_counts() {
    let up = echo_upstream("up").await;
    let filter = component_filter("sdk_api_key", r#"{"keys": {"k1": "alice"}}"#, "");
    let l = Legate::start(&filtered_config(&filter, up, "")).await;
    let a = l.listener("ingress").await;
    let (status, head, body) = curl_get(&["-H", "x-api-key: k1", &url(a, "/")]);
    assert_eq!(status, 200, "{head}");
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-api-user"], "alice", "{body}");
    assert!(echo["headers"].get("x-api-key").is_none(), "{body}");
    let (status, head, body) = curl_get(&["-H", "x-api-key: nope", &url(a, "/")]);
    assert_eq!(status, 401);
    assert!(head.contains("content-type: application/json"), "{head}");
    assert!(head.contains("www-authenticate: apikey"), "{head}");
    assert_eq!(body, "{\"error\":\"missing or unknown API key\"}\n");
    assert_eq!(l.stat("wasmcustom.sdk_api_key.allowed").await, 1);
    assert_eq!(l.stat("wasmcustom.sdk_api_key.denied").await, 1);
    // A gRPC request gets the filter's grpc-status in a trailers-only reply.
    let (status, head, _) = curl_get(&[
        "--http2-prior-knowledge",
        "-H",
        "content-type: application/grpc",
        &url(a, "/pkg.Svc/Call"),
    ]);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("grpc-status: 16"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_api_key_refuses_a_bad_configuration() {
    let up = echo_upstream("up").await;
    let (ok, err) = validate(&filtered_config(
        &component_filter("sdk_api_key", "{}", ""),
        up,
        "",
    ));
    assert!(!ok);
    assert!(
        err.contains("Wasm plugin \"sdk_api_key\"")
            && err.contains("configure refused the configuration")
            && err.contains("\"keys\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_tcp_rewrite_network_filter() {
    let echo = tcp_echo().await;
    let wasm = component_example("sdk_tcp_rewrite");
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
            name: sdk_tcp_rewrite
            vm_config:
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
    assert_eq!(&buf, b"PONG HELLO\n");
    drop(s);
    assert_eq!(
        l.wait_stat("wasmcustom.sdk_tcp_rewrite.connections", 1)
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_and_proxy_wasm_filters_mix_in_one_chain() {
    let up = echo_upstream("up").await;
    // Request hooks run in chain order, response hooks in reverse: the
    // component appends first and sets the response header last.
    let filters = component_filter("sdk_header_filter", "", "")
        + "\n"
        + &wasm_http_filter("header_filter", &wasm_example("header_filter"), "", "");
    let l = Legate::start(&filtered_config(&filters, up, "")).await;
    let a = l.listener("ingress").await;
    let (status, head, body) = curl_get(&[&url(a, "/mixed")]);
    assert_eq!(status, 200, "{head}");
    // The component set x-legate-wasm, then the proxy-wasm filter appended its
    // own, which the echo (last value wins) shows. The other order would leave
    // only the component's `set`.
    let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(echo["headers"]["x-legate-wasm"], "header_filter", "{body}");
    // On the way back the proxy-wasm filter ran first; the component's set won.
    assert!(head.contains("x-wasm-filter: sdk_header_filter"), "{head}");
    // The built-in router ran last on the request, first on the response.
    assert!(head.contains("x-envoy-upstream-service-time:"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_the_wrong_world_is_refused() {
    let up = echo_upstream("up").await;
    let (ok, err) = validate(&filtered_config(
        &component_filter("sdk_tcp_rewrite", "", ""),
        up,
        "",
    ));
    assert!(!ok);
    assert!(
        err.contains("code.local.filename")
            && err.contains("built for world legate:filter/network-filter@0.1.0")
            && err.contains("needs world legate:filter/http-filter@0.1.0"),
        "{err}"
    );
}

/// Replaces every `from` in `bytes` with `to` (same length).
fn patch(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut n = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if out[i..].starts_with(from) {
            out[i..i + from.len()].copy_from_slice(to);
            n += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(n > 0, "nothing to patch");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_another_version_is_refused() {
    let up = echo_upstream("up").await;
    // The same filter, renamed throughout as if built for legate:filter@0.2.0.
    let bytes = std::fs::read(component_example("sdk_header_filter")).unwrap();
    let bytes = patch(
        &bytes,
        b"legate:filter/http-handler@0.1.0",
        b"legate:filter/http-handler@0.2.0",
    );
    let dir = tempfile::tempdir().unwrap();
    let wasm = dir.path().join("v2.wasm");
    std::fs::write(&wasm, bytes).unwrap();
    let (ok, err) = validate(&filtered_config(
        &wasm_http_filter("v2", &wasm, "", ""),
        up,
        "",
    ));
    assert!(!ok);
    assert!(
        err.contains("built for legate:filter/http-filter@0.2.0")
            && err.contains("this legate runs legate:filter@0.1.0"),
        "{err}"
    );
}

/// `/` through the misbehaving component; the listener `plain` has no filter.
fn fault_config(up: SocketAddr, policy: &str, limits: &str) -> String {
    let filter = component_filter("sdk_misbehave", "", &plugin_extra(policy, limits));
    fault_bootstrap(&filter, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_component_fails_closed_then_recovers() {
    let up = echo_upstream("up").await;
    let l = Legate::start_with(&fault_config(up, "", ""), &["--concurrency", "1"]).await;
    let a = l.listener("ingress").await;
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"), "{head}");
    let (status, _, body) = curl_get(&["-H", "x-trap: 1", &url(a, "/")]);
    assert_eq!(status, 503);
    assert_eq!(body, "");
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"), "{head}");
    assert_eq!(l.stat("wasm.sdk_misbehave.vm_failed").await, 1);
    assert_eq!(l.stat("wasm.sdk_misbehave.fail_closed").await, 1);
    assert_eq!(l.stat("wasm.sdk_misbehave.vm_reload_success").await, 1);
    let log = l.stderr_text();
    // The SDK logs the panic message before the instance traps.
    assert!(log.contains("x-trap asked for a panic"), "{log}");
    assert!(log.contains("trapped: unreachable"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_component_fails_open() {
    let up = echo_upstream("up").await;
    let l = Legate::start_with(&fault_config(up, "FAIL_OPEN", ""), &["--concurrency", "1"]).await;
    let a = l.listener("ingress").await;
    let (status, head, body) = curl_get(&["-H", "x-trap: 1", &url(a, "/")]);
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("x-misbehave"), "{head}");
    assert!(body.contains("\"upstream\":\"up\""), "{body}");
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"), "{head}");
    assert_eq!(l.stat("wasm.sdk_misbehave.fail_open").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_component_is_cut_at_the_time_limit() {
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
    let (status, _, _) = curl_get(&[&url(plain, "/")]);
    assert_eq!(status, 200);
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"), "{head}");
    assert!(
        l.stderr_text().contains("exceeded the callback time limit"),
        "{}",
        l.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hogging_component_is_stopped_at_the_cap() {
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
async fn component_stdout_stderr_and_environment() {
    let up = echo_upstream("up").await;
    let filter = format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: sdk_misbehave
                vm_config:
                  environment_variables: {{key_values: {{GREETING: hello-env}}}}
                  code: {{local: {{filename: "{}"}}}}"#,
        component_example("sdk_misbehave").display()
    );
    let l = Legate::start(&filtered_config(&filter, up, "")).await;
    let a = l.listener("ingress").await;
    let (status, _, _) = curl_get(&["-H", "x-print: 1", &url(a, "/")]);
    let log = l.stderr_text();
    assert_eq!(status, 200, "{log}");
    assert!(log.contains("stdout says hi"), "{log}");
    assert!(log.contains("stderr says hello-env"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapping_a_module_for_a_component_under_load_drops_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let up = echo_upstream("up").await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("plugin.wasm");
    // The same filter as a proxy-wasm module and as a component.
    let versions = [
        (
            std::fs::read(wasm_example("header_filter")).unwrap(),
            "header_filter",
        ),
        (
            std::fs::read(component_example("sdk_header_filter")).unwrap(),
            "sdk_header_filter",
        ),
    ];
    replace_file(&plugin, &versions[0].0);
    let filter = wasm_http_filter("swap", &plugin, "", "");
    let l = Legate::start(&filtered_config(&filter, up, "")).await;
    let a = l.listener("ingress").await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    // A bounded load loop: 4 keep-alive clients until told to stop, 30 s at most.
    for _ in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        clients.push(tokio::spawn(async move {
            use http_body_util::BodyExt;
            let client =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<bytes::Bytes>>();
            let until = Instant::now() + Duration::from_secs(30);
            while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                let good = match client.get(format!("http://{a}/x").parse().unwrap()).await {
                    Ok(r) if r.status() == 200 && r.headers().contains_key("x-wasm-filter") => {
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
        let (_, head, _) = curl_get(&[&url(a, "/probe")]);
        head.lines()
            .find_map(|l| l.strip_prefix("x-wasm-filter: "))
            .unwrap_or("none")
            .trim()
            .to_string()
    };
    assert_eq!(probe().await, "header_filter");
    let mut expect = "header_filter";
    for i in 1..=3 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let (bytes, name) = &versions[i % 2];
        replace_file(&plugin, bytes);
        expect = name;
        l.wait_stat("server.config_reload", i as i64).await;
        assert_eq!(probe().await, expect, "after swap {i}");
    }
    // A broken component: refused, and the last good filter keeps serving.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    replace_file(&plugin, b"\0asm\x0d\0\x01\0not really a component");
    l.wait_stat("server.config_reload_failed", 1).await;
    assert_eq!(probe().await, expect);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed during swaps"
    );
    assert!(ok.load(Ordering::Relaxed) > 200, "load loop too small");
    assert!(
        l.stderr_text().contains("invalid Wasm component"),
        "{}",
        l.stderr_text()
    );
}

#[test]
fn every_example_config_validates() {
    component_example("sdk_header_filter");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut n = 0;
    for dir in std::fs::read_dir(root.join("examples/components")).unwrap() {
        let cfg = dir.unwrap().path().join("legate.yaml");
        if !cfg.exists() {
            continue;
        }
        // Their .wasm paths are relative to the repository root.
        let out = std::process::Command::new(BIN)
            .args(["--mode", "validate", "-c"])
            .arg(&cfg)
            .current_dir(&root)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}",
            cfg.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        n += 1;
    }
    assert_eq!(n, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_properties_and_shared_data_across_workers() {
    let up = echo_upstream("up").await;
    let l = Legate::start_with(&fault_config(up, "", ""), &["--concurrency", "2"]).await;
    let a = l.listener("ingress").await;
    let (status, _, body) = curl_get(&["-H", "x-props: 1", &url(a, "/p?q")]);
    assert_eq!(status, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines[0], "sdk_misbehave", "{body}");
    assert_eq!(lines[1], "/p?q", "{body}");
    assert!(lines[2].starts_with("127.0.0.1:"), "{body}");
    assert_eq!(lines[3], lines[2].rsplit(':').next().unwrap(), "{body}");
    // Two workers, concurrent clients: compare-and-swap loses no increment.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        tasks.push(tokio::task::spawn_blocking(move || {
            for _ in 0..25 {
                let (status, _, _) = curl_get(&["-H", "x-count: 1", &url(a, "/")]);
                assert_eq!(status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (_, _, body) = curl_get(&["-H", "x-count: 1", &url(a, "/")]);
    assert_eq!(body, "101\n");
    // Every stream ended in the filter too: `on_done` ran 102 times (the
    // guest numbers streams itself and must drop each one it was given).
    let done = "wasmcustom.sdk_misbehave_streams_done";
    assert_eq!(l.wait_stat(done, 102).await, 102);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_pending_on_nothing_fails_the_stream_not_the_instance() {
    let up = echo_upstream("up").await;
    let l = Legate::start_with(&fault_config(up, "", ""), &["--concurrency", "1"]).await;
    let a = l.listener("ingress").await;
    let t = Instant::now();
    let (status, _, _) = curl_get(&["-H", "x-hang: 1", &url(a, "/")]);
    assert_eq!(status, 503);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // The instance itself is fine: the next stream runs on it.
    let (status, head, _) = curl_get(&[&url(a, "/")]);
    assert_eq!(status, 200);
    assert!(head.contains("x-misbehave: ok"), "{head}");
    assert_eq!(l.stat("wasm.sdk_misbehave.fail_closed").await, 1);
    assert_eq!(l.stat("wasm.sdk_misbehave.vm_failed").await, 0);
    assert!(
        l.stderr_text()
            .contains("the hook is pending but awaits no outbound call"),
        "{}",
        l.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_component_and_proxy_wasm_filters_share_a_chain() {
    let up = echo_upstream("up").await;
    // fault (built in) -> component -> proxy-wasm -> rbac (built in) -> router.
    let fault = "          - name: envoy.filters.http.fault\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault\n              abort: {header_abort: {}, percentage: {numerator: 100}}\n";
    let rbac = "          - name: envoy.filters.http.rbac\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC\n              rules:\n                action: DENY\n                policies:\n                  tagged-by-wasm: {permissions: [{header: {name: x-legate-wasm, string_match: {exact: header_filter}}}], principals: [{any: true}]}\n";
    let filters = format!(
        "{fault}{}\n{}\n{rbac}",
        component_filter("sdk_header_filter", "", ""),
        wasm_http_filter("header_filter", &wasm_example("header_filter"), "", "")
    );
    let l = Legate::start(&filtered_config(&filters, up, "")).await;
    let a = l.listener("ingress").await;
    // The fault filter answers before the Wasm filters run.
    let (status, _, body) = curl_get(&["-H", "x-envoy-fault-abort-request: 418", &url(a, "/x")]);
    assert_eq!((status, body.as_str()), (418, "fault filter abort"));
    // Otherwise both Wasm filters tag the request, and RBAC, after them, sees
    // the proxy-wasm filter's header and denies; the response hooks of the Wasm
    // filters still run on the local reply.
    let (status, head, body) = curl_get(&[&url(a, "/x")]);
    assert_eq!(
        (status, body.as_str()),
        (403, "RBAC: access denied"),
        "{head}"
    );
    assert!(head.contains("x-wasm-filter: sdk_header_filter"), "{head}");
    assert_eq!(l.stat("http.ingress.fault.aborts_injected").await, 1);
    assert_eq!(l.stat("http.ingress.rbac.denied").await, 1);
    assert_eq!(l.stat("cluster.up.upstream_rq_total").await, 0);
}
