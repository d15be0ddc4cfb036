//! `envoy.filters.http.fault` through the real binary: curl and raw HTTP clients,
//! a loopback upstream that records when requests arrive, stats from the admin.
//! The answers themselves are compared with real Envoy in `differential.rs`
//! (`fault_*` cases); here are the parts a differential cannot see: timing,
//! counts over many requests, seeded repeatability, overflow and throttling.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use support::{
    Legate, bootstrap, cluster, curl_get, echo_upstream, http_listener_with_filters, http_raw, url,
    validate,
};

const FAULT_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// The fault filter with `body` (YAML lines at the typed_config's indent).
fn fault(body: &str) -> String {
    format!(
        "          - name: envoy.filters.http.fault\n            typed_config:\n              \"@type\": {FAULT_TYPE}\n{body}"
    )
}

const ROUTE_ALL: &str =
    "              - match: {prefix: \"/\"}\n                route: {cluster: up}\n";

fn config(filter_body: &str, routes: &str, hcm_extra: &str, up: SocketAddr) -> String {
    bootstrap(
        &http_listener_with_filters("in", "in", routes, hcm_extra, &fault(filter_body)),
        &cluster("up", &[(up, 1)], ""),
    )
}

/// An upstream that answers 200 `ok` and records when each request arrived.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let addr = support::http_server(move |_req| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(Instant::now());
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
        }
    })
    .await;
    (addr, seen)
}

fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> String {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_abort_answers_429_and_logs_the_fault() {
    let (up, seen) = recording_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("access.log");
    let hcm_extra = format!(
        "          access_log:\n          - name: envoy.access_loggers.file\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog\n              path: {}\n",
        log.display()
    );
    let legate = Legate::start(&config(
        "              abort: {header_abort: {}, percentage: {numerator: 100}}\n",
        ROUTE_ALL,
        &hcm_extra,
        up,
    ))
    .await;
    let a = legate.listener("in").await;

    let (status, head, body) = curl_get(&["-H", "x-envoy-fault-abort-request: 429", &url(a, "/x")]);
    assert_eq!(status, 429);
    assert_eq!(body, "fault filter abort");
    assert!(head.contains("content-type: text/plain"), "{head}");
    // The same over HTTP/2.
    let (status, _, body) = curl_get(&[
        "--http2-prior-knowledge",
        "-H",
        "x-envoy-fault-abort-request: 503",
        &url(a, "/x"),
    ]);
    assert_eq!((status, body.as_str()), (503, "fault filter abort"));
    // Without the header, or with one out of range, the request goes through.
    assert_eq!(curl_get(&[&url(a, "/x")]).0, 200);
    assert_eq!(
        curl_get(&["-H", "x-envoy-fault-abort-request: 600", &url(a, "/x")]).0,
        200
    );

    assert_eq!(legate.stat("http.in.fault.aborts_injected").await, 2);
    assert_eq!(legate.stat("http.in.fault.active_faults").await, 0);
    // Aborts never reached the upstream.
    assert_eq!(seen.lock().unwrap().len(), 2);
    // The access log flags the aborted streams FI.
    legate.wait_stat("http.in.downstream_rq_completed", 4).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if t.lines().count() >= 4 || Instant::now() > deadline {
            break t;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let flagged: Vec<&str> = text.lines().filter(|l| l.contains(" FI ")).collect();
    assert_eq!(flagged.len(), 2, "{text}");
    assert!(flagged.iter().any(|l| l.contains("\" 429 FI ")), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_delay_is_measured_at_the_upstream() {
    let (up, seen) = recording_upstream().await;
    let legate = Legate::start(&config(
        "              delay: {header_delay: {}, percentage: {numerator: 100}}\n",
        ROUTE_ALL,
        "",
        up,
    ))
    .await;
    let a = legate.listener("in").await;

    let t0 = Instant::now();
    let (status, body) = http_raw(
        a,
        &get_with(a, "/", &[("x-envoy-fault-delay-request", "200")]),
    )
    .await
    .unwrap();
    assert_eq!((status, body.as_str()), (200, "ok"));
    let arrived = seen.lock().unwrap()[0];
    let waited = arrived.duration_since(t0);
    assert!(
        waited >= Duration::from_millis(200),
        "upstream saw it after {waited:?}"
    );
    assert!(
        waited < Duration::from_secs(2),
        "upstream saw it after {waited:?}"
    );

    // No header, no delay.
    let t1 = Instant::now();
    http_raw(a, &get_with(a, "/", &[])).await.unwrap();
    let waited = seen.lock().unwrap()[1].duration_since(t1);
    assert!(waited < Duration::from_millis(150), "{waited:?}");

    assert_eq!(legate.stat("http.in.fault.delays_injected").await, 1);
    // A delay alone stops counting as active once it is over.
    assert_eq!(legate.stat("http.in.fault.active_faults").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn percentage_0_never_and_100_always() {
    let (up, seen) = recording_upstream().await;
    let routes = format!(
        "              - match: {{prefix: \"/never\"}}\n                route: {{cluster: up}}\n                typed_per_filter_config:\n                  envoy.filters.http.fault: {{\"@type\": {FAULT_TYPE}, abort: {{http_status: 503, percentage: {{numerator: 0}}}}}}\n              - match: {{prefix: \"/always\"}}\n                route: {{cluster: up}}\n                typed_per_filter_config:\n                  envoy.filters.http.fault: {{\"@type\": {FAULT_TYPE}, abort: {{http_status: 503, percentage: {{numerator: 1000000, denominator: MILLION}}}}}}\n"
    );
    let legate = Legate::start(&config("", &routes, "", up)).await;
    let a = legate.listener("in").await;
    for _ in 0..50 {
        let (s, _) = http_raw(a, &get_with(a, "/never", &[])).await.unwrap();
        assert_eq!(s, 200);
        let (s, b) = http_raw(a, &get_with(a, "/always", &[])).await.unwrap();
        assert_eq!((s, b.as_str()), (503, "fault filter abort"));
    }
    assert_eq!(seen.lock().unwrap().len(), 50);
    assert_eq!(legate.stat("http.in.fault.aborts_injected").await, 50);
    assert_eq!(legate.stat("cluster.up.upstream_rq_total").await, 50);
}

/// Sends `n` requests one after another; which ones were aborted.
async fn abort_pattern(a: SocketAddr, n: usize) -> Vec<bool> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let (s, _) = http_raw(a, &get_with(a, "/", &[])).await.unwrap();
        assert!(s == 200 || s == 500, "status {s}");
        out.push(s == 500);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_run_repeats_its_decisions() {
    let (up, _) = recording_upstream().await;
    let yaml = config(
        "              abort: {http_status: 500, percentage: {numerator: 10}}\n",
        ROUTE_ALL,
        "",
        up,
    );
    let args = ["--concurrency", "1", "--random-seed", "7"];
    let mut runs = Vec::new();
    for _ in 0..2 {
        let legate = Legate::start_with(&yaml, &args).await;
        let pattern = abort_pattern(legate.listener("in").await, 300).await;
        let n = pattern.iter().filter(|a| **a).count() as i64;
        assert_eq!(legate.stat("http.in.fault.aborts_injected").await, n);
        runs.push(pattern);
    }
    assert_eq!(runs[0], runs[1], "same seed, same decisions");
    let n = runs[0].iter().filter(|a| **a).count();
    // 10% of 300 is 30; a count outside 8..=60 has odds below one in a million.
    assert!((8..=60).contains(&n), "{n} of 300 aborted");
    let other = Legate::start_with(&yaml, &["--concurrency", "1", "--random-seed", "8"]).await;
    let pattern = abort_pattern(other.listener("in").await, 300).await;
    assert_ne!(pattern, runs[0], "another seed, other decisions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_cluster_fault_follows_the_weighted_pick() {
    // Faults only for cluster `a`, on a 50/50 split: the fault filter and the
    // router see the same pick, so no request reaches `a` and every one that
    // was not aborted reached `b`.
    let (a, b) = (echo_upstream("a").await, echo_upstream("b").await);
    let routes = "              - match: {prefix: \"/\"}
                route:
                  weighted_clusters:
                    clusters: [{name: a, weight: 50}, {name: b, weight: 50}]
";
    let filter = fault(
        "              abort: {http_status: 503, percentage: {numerator: 100}}\n              upstream_cluster: a\n",
    );
    let yaml = bootstrap(
        &http_listener_with_filters("in", "in", routes, "", &filter),
        &(cluster("a", &[(a, 1)], "") + &cluster("b", &[(b, 1)], "")),
    );
    let legate = Legate::start(&yaml).await;
    let addr = legate.listener("in").await;
    let (mut aborted, mut passed) = (0, 0);
    for _ in 0..60 {
        let (status, head, _) = curl_get(&[&url(addr, "/")]);
        match status {
            503 => aborted += 1,
            200 => {
                assert!(head.contains("x-upstream: b"), "{head}");
                passed += 1;
            }
            s => panic!("status {s}: {head}"),
        }
    }
    assert!(
        aborted > 0 && passed > 0,
        "aborted {aborted}, passed {passed}"
    );
    assert_eq!(
        legate
            .wait_stat("http.in.fault.aborts_injected", aborted)
            .await,
        aborted
    );
    assert_eq!(legate.stat("cluster.b.upstream_rq_total").await, passed);
    assert_eq!(legate.stat("cluster.a.upstream_rq_total").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_active_faults_overflows_to_no_fault() {
    let (up, _) = recording_upstream().await;
    let legate = Legate::start(&config(
        "              delay: {fixed_delay: 0.6s, percentage: {numerator: 100}}\n              max_active_faults: 2\n",
        ROUTE_ALL,
        "",
        up,
    ))
    .await;
    let a = legate.listener("in").await;
    // Two requests take the only fault slots...
    let mut delayed = Vec::new();
    for _ in 0..2 {
        delayed.push(tokio::spawn(async move {
            let t = Instant::now();
            let (s, _) = http_raw(a, &get_with(a, "/", &[])).await.unwrap();
            (s, t.elapsed())
        }));
    }
    assert_eq!(legate.wait_stat("http.in.fault.active_faults", 2).await, 2);
    // ...so the next ones get no fault and go straight through.
    for _ in 0..3 {
        let t = Instant::now();
        let (s, _) = http_raw(a, &get_with(a, "/", &[])).await.unwrap();
        assert_eq!(s, 200);
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    for d in delayed {
        let (s, took) = d.await.unwrap();
        assert_eq!(s, 200);
        assert!(took >= Duration::from_millis(600), "{took:?}");
    }
    assert_eq!(legate.stat("http.in.fault.faults_overflow").await, 3);
    assert_eq!(legate.stat("http.in.fault.delays_injected").await, 2);
    assert_eq!(legate.wait_stat("http.in.fault.active_faults", 0).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_rate_limit_throttles_the_body() {
    let up = echo_upstream("up").await;
    let legate = Legate::start(&config(
        "              response_rate_limit: {header_limit: {}, percentage: {numerator: 100}}\n",
        ROUTE_ALL,
        "",
        up,
    ))
    .await;
    let a = legate.listener("in").await;
    let fetch = |kbps: &'static str| {
        let u = url(a, "/bytes/32768");
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            let r = curl_get(&[
                "-H",
                &format!("x-envoy-fault-throughput-response: {kbps}"),
                &u,
            ]);
            (r, t.elapsed())
        })
    };
    // 32 KiB at 32 KiB/s: about a second (less the 50 ms head start).
    let ((status, _, body), took) = fetch("32").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.len(), 32768);
    assert!(
        took >= Duration::from_millis(850) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    // A generous limit does not hold it up.
    let ((status, _, body), took) = fetch("100000").await.unwrap();
    assert_eq!((status, body.len()), (200, 32768));
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert_eq!(legate.stat("http.in.fault.response_rl_injected").await, 2);
    assert_eq!(legate.wait_stat("http.in.fault.active_faults", 0).await, 0);
}

#[test]
fn config_errors_name_the_field() {
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cases = [
        (
            config(
                "              abort: {http_status: 700, percentage: {numerator: 100}}\n",
                ROUTE_ALL,
                "",
                up,
            ),
            "http_status must be in [200, 600), found 700",
        ),
        (
            config(
                "              abort: {percentage: {numerator: 100}}\n",
                ROUTE_ALL,
                "",
                up,
            ),
            "one of \"http_status\", \"grpc_status\" or \"header_abort\" is required",
        ),
        (
            config(
                "              delay: {fixed_delay: 5, percentage: {numerator: 1}}\n",
                ROUTE_ALL,
                "",
                up,
            ),
            "durations need an \"s\" suffix",
        ),
        (
            config(
                "              abort: {http_status: 503, percentage: {numerator: 1, denominator: THOUSAND}}\n",
                ROUTE_ALL,
                "",
                up,
            ),
            "unknown value \"THOUSAND\"",
        ),
        (
            config(
                "              response_rate_limit: {fixed_limit: {limit_kbps: 0}}\n",
                ROUTE_ALL,
                "",
                up,
            ),
            "limit_kbps must be at least 1",
        ),
        (
            config("              abort_everything: true\n", ROUTE_ALL, "", up),
            "abort_everything",
        ),
        (
            config(
                "",
                "              - match: {prefix: \"/\"}\n                route: {cluster: up}\n                typed_per_filter_config:\n                  envoy.filters.http.cors: {\"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy}\n",
                "",
                up,
            ),
            "per-route config of type \"type.googleapis.com/envoy.extensions.filters.http.cors.v3.CorsPolicy\" is not supported",
        ),
    ];
    for (yaml, want) in cases {
        let (ok, out) = validate(&yaml);
        assert!(!ok, "accepted:\n{yaml}");
        assert!(out.contains(want), "wanted {want:?} in:\n{out}");
        // Errors say where: file, line and column, then the YAML path.
        let at = out.split(": ").next().unwrap_or("");
        let mut parts = at.rsplitn(3, ':');
        let col = parts.next().and_then(|c| c.parse::<u32>().ok());
        let line = parts.next().and_then(|l| l.parse::<u32>().ok());
        assert!(col.is_some() && line.is_some(), "no line:column in {out}");
        assert!(out.contains("static_resources.listeners[0]"), "{out}");
    }
}

/// `examples/resilience/run.sh`, run as a user would, with this build's binary.
#[test]
fn the_resilience_example_shows_its_faults() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("bash")
        .arg(root.join("examples/resilience/run.sh"))
        .env("LEGATE", support::BIN)
        .env("REQUESTS", "100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (api, rest) = text.split_once("GET / (no faults)").expect("two sections");
    let count = |section: &str, label: &str| -> i64 {
        section
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let aborted = count(api, "status 503:");
    let slow = count(api, "slower than 100 ms:");
    let aborts = count(rest, "http.resilience.fault.aborts_injected:");
    let delays = count(rest, "http.resilience.fault.delays_injected:");
    // 10% and 25% of 100: none at all would be a one-in-30000 event.
    assert!(aborted > 0 && delays > 0, "{text}");
    assert_eq!(count(api, "status 200:") + aborted, 100, "{text}");
    // The stats count what the client saw, plus the caller's own 429.
    assert_eq!(aborts, aborted + 1, "{text}");
    assert!(slow >= delays, "{text}");
    assert_eq!(count(rest, "status 200:"), 100, "{text}");
    assert!(text.contains("a caller asking for a fault: 429"), "{text}");
}
