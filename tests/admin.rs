//! The admin listener: readiness, stats in three formats (Prometheus checked with
//! the reference parser), cluster/listener/config views and mutating endpoints.

mod support;

use std::process::Command;

use support::*;

async fn started() -> (Legate, std::net::SocketAddr) {
    let up = echo_upstream("up").await;
    let routes = "              - match: {prefix: \"/\"}\n                route: {cluster: up}\n";
    let yaml = bootstrap(
        &http_listener("ingress", "ingress", routes, ""),
        &cluster("up", &[(up, 1)], ""),
    );
    let l = Legate::start(&yaml).await;
    let a = l.listener("ingress").await;
    // Some traffic so per-code stats exist.
    for _ in 0..3 {
        let (s, _) = http_get(a, "/status/200").await.unwrap();
        assert_eq!(s, 200);
    }
    let (s, _) = http_get(a, "/status/503").await.unwrap();
    assert_eq!(s, 503);
    l.wait_stat("cluster.up.upstream_rq_completed", 4).await;
    (l, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_health_check() {
    let (l, a) = started().await;
    assert_eq!(
        http_get(l.admin, "/ready").await.unwrap(),
        (200, "LIVE\n".into())
    );
    assert_eq!(
        http_post(l.admin, "/healthcheck/fail").await.unwrap(),
        (200, "OK\n".into())
    );
    assert_eq!(
        http_get(l.admin, "/ready").await.unwrap(),
        (503, "DRAINING\n".into())
    );
    // A failed health check asks HTTP/1.1 clients to go elsewhere.
    let raw = raw_exchange(a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_ascii_lowercase();
    assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
    assert_eq!(
        http_post(l.admin, "/healthcheck/ok").await.unwrap(),
        (200, "OK\n".into())
    );
    assert_eq!(http_get(l.admin, "/ready").await.unwrap().0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_on_post_endpoints_is_refused() {
    let (l, _) = started().await;
    for p in [
        "/quitquitquit",
        "/healthcheck/fail",
        "/logging",
        "/drain_listeners",
    ] {
        let (s, body) = http_get(l.admin, p).await.unwrap();
        assert_eq!(s, 405, "{p}");
        assert_eq!(body, "Method GET not allowed, POST required.");
    }
    // Still serving.
    assert_eq!(http_get(l.admin, "/ready").await.unwrap().0, 200);
    let (s, body) = http_get(l.admin, "/nonexistent").await.unwrap();
    assert_eq!(s, 404);
    assert!(body.starts_with("invalid path. admin commands are:"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_text_json_filter_usedonly() {
    let (l, _) = started().await;
    let (s, text) = http_get(l.admin, "/stats").await.unwrap();
    assert_eq!(s, 200);
    assert!(text.contains("\ncluster.up.upstream_rq_200: 3\n"), "{text}");
    assert!(text.contains("\ncluster.up.upstream_rq_503: 1\n"));
    assert!(text.contains("\nhttp.ingress.downstream_rq_2xx: 3\n"));
    assert!(text.contains("\nhttp.ingress.downstream_rq_5xx: 1\n"));
    assert!(text.contains("\nserver.live: 1\n"), "{text}");
    assert!(text.contains("\nserver.concurrency: 2\n"));
    assert!(text.contains("\ncluster.up.upstream_rq_retry: 0\n"));
    assert!(
        text.contains("\ncluster.up.upstream_rq_time: P0("),
        "{text}"
    );
    let names: Vec<&str> = text
        .lines()
        .filter(|l| !l.contains(" P0("))
        .map(|l| l.split(':').next().unwrap())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "text stats are sorted");

    let (_, f) = http_get(
        l.admin,
        "/stats?filter=%5Ecluster%5C.up%5C.upstream_rq_%5B0-9%5D%2B%24",
    )
    .await
    .unwrap();
    assert_eq!(
        f,
        "cluster.up.upstream_rq_200: 3\ncluster.up.upstream_rq_503: 1\n"
    );

    let (_, used) = http_get(l.admin, "/stats?usedonly&filter=downstream_rq_%5B0-9%5Dxx")
        .await
        .unwrap();
    assert!(used.contains("http.ingress.downstream_rq_2xx: 3"));
    assert!(!used.contains("downstream_rq_1xx"), "{used}");

    let (_, j) = http_get(l.admin, "/stats?format=json&filter=upstream_rq_200")
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&j).unwrap();
    assert_eq!(v["stats"][0]["name"], "cluster.up.upstream_rq_200");
    assert_eq!(v["stats"][0]["value"], 3);

    let (s, _) = http_get(l.admin, "/stats?filter=(").await.unwrap();
    assert_eq!(s, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_output_parses() {
    let (l, _) = started().await;
    let (s, text) = http_get(l.admin, "/stats/prometheus").await.unwrap();
    assert_eq!(s, 200);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    // The reference parser; it raises on any malformed line.
    let script = r#"
import sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(open(sys.argv[1]).read()):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        out.append(f"{fam.type} {s.name} {labels} {int(s.value)}")
print("\n".join(out))
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&file)
        .output()
        .expect("python3 with prometheus_client (installed by .ci/run)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parsed = String::from_utf8_lossy(&out.stdout);
    assert!(
        parsed.contains("counter envoy_cluster_upstream_rq_total envoy_cluster_name=up,envoy_response_code=200 3"),
        "{parsed}"
    );
    assert!(parsed.contains(
        "counter envoy_http_downstream_rq_xx_total envoy_http_conn_manager_prefix=ingress,envoy_response_code_class=5 1"
    ));
    assert!(parsed.contains("gauge envoy_cluster_upstream_cx_active envoy_cluster_name=up "));
    assert!(parsed.contains("gauge envoy_server_live  1"), "{parsed}");
    // Latency histograms with Envoy's buckets: 4 upstream responses, 4 requests.
    assert!(
        parsed.contains("histogram envoy_cluster_upstream_rq_time_count envoy_cluster_name=up 4"),
        "{parsed}"
    );
    assert!(parsed.contains(
        "histogram envoy_cluster_upstream_rq_time_bucket envoy_cluster_name=up,le=+Inf 4"
    ));
    assert!(parsed.contains(
        "histogram envoy_http_downstream_rq_time_count envoy_http_conn_manager_prefix=ingress 4"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_logging() {
    let (l, a) = started().await;
    let (_, clusters) = http_get(l.admin, "/clusters").await.unwrap();
    let up = clusters
        .lines()
        .find(|x| x.contains("::health_flags::"))
        .unwrap();
    assert!(up.starts_with("up::127.0.0.1:"), "{clusters}");
    assert!(clusters.contains("up::observability_name::up\n"));

    let (_, listeners) = http_get(l.admin, "/listeners").await.unwrap();
    assert_eq!(listeners, format!("ingress::{a}\n"));

    let (_, dump) = http_get(l.admin, "/config_dump").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        v["configs"][0]["bootstrap"]["static_resources"]["clusters"][0]["name"],
        "up"
    );

    let (_, info) = http_get(l.admin, "/server_info").await.unwrap();
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["state"], "LIVE");
    assert!(v["version"].as_str().unwrap().starts_with("legate/"));

    let (s, body) = http_post(l.admin, "/logging?level=debug").await.unwrap();
    assert_eq!(
        (s, body.as_str()),
        (200, "active loggers:\n  legate: debug\n")
    );
    let (s, body) = http_post(l.admin, "/logging?level=bogus").await.unwrap();
    assert_eq!(s, 400);
    assert!(body.starts_with("error: unknown logger level"));
}
