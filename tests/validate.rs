//! `legate --mode validate`: OK on a good config, and every mistake reported with
//! its YAML path, line, column and a suggestion.

mod support;

use std::process::Command;

fn validate(yaml: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap();
    let out = Command::new(support::BIN)
        .args(["--mode", "validate", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path.to_str().unwrap(), "c.yaml");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

const GOOD: &str = r#"admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 9901}}
static_resources:
  listeners:
  - name: ingress
    address:
      socket_address: {address: 127.0.0.1, port_value: 10000}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                route: {cluster: backend}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: backend
    type: STATIC
    connect_timeout: 1s
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: 8080}
"#;

fn mutate(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn good_config_prints_ok() {
    let (code, out, err) = validate(GOOD);
    assert_eq!((code, out.as_str()), (0, "OK\n"), "{err}");
}

#[test]
fn shipped_examples_validate() {
    for f in [
        "examples/quickstart/legate.yaml",
        "examples/redis/legate.yaml",
        "examples/mysql/legate.yaml",
        "bench/proxy.yaml",
        "bench/proxy-redis.yaml",
        "bench/proxy-mysql.yaml",
        "bench/proxy-mysql-tcp.yaml",
    ] {
        let path = format!("{}/../{f}", env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(support::BIN)
            .args(["--mode", "validate", "-c", &path])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    }
}

#[test]
fn unknown_field() {
    let (code, out, err) = validate(&mutate(
        "    lb_policy: ROUND_ROBIN",
        "    lb_polcy: ROUND_ROBIN",
    ));
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "c.yaml:29:5: static_resources.clusters[0].lb_polcy: unknown field \"lb_polcy\"; did you mean \"lb_policy\"?\n"
    );
}

#[test]
fn wrong_type() {
    let (code, _, err) = validate(&mutate("port_value: 10000", "port_value: abc"));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "c.yaml:7:56: static_resources.listeners[0].address.socket_address.port_value: expected a port number (0-65535), found \"abc\"\n"
    );
}

#[test]
fn bad_enum() {
    let (code, _, err) = validate(&mutate("lb_policy: ROUND_ROBIN", "lb_policy: ROUND_ROBBIN"));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "c.yaml:29:16: static_resources.clusters[0].lb_policy: unknown value \"ROUND_ROBBIN\"; did you mean \"ROUND_ROBIN\"? (expected one of: ROUND_ROBIN, RANDOM, RING_HASH, MAGLEV)\n"
    );
}

#[test]
fn supported_by_envoy_but_not_legate() {
    let (code, _, err) = validate(&mutate(
        "lb_policy: ROUND_ROBIN",
        "lb_policy: LEAST_REQUEST",
    ));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "c.yaml:29:16: static_resources.clusters[0].lb_policy: value \"LEAST_REQUEST\" is not supported by legate (supported: ROUND_ROBIN, RANDOM, RING_HASH, MAGLEV)\n"
    );
    let (code, _, err) = validate(&mutate(
        "    connect_timeout: 1s",
        "    connect_timeout: 1s\n    circuit_breakers: {}",
    ));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "c.yaml:29:5: static_resources.clusters[0].circuit_breakers: field \"circuit_breakers\" is not supported by legate\n"
    );
}

#[test]
fn unknown_filter_name() {
    let (code, _, err) = validate(&mutate(
        "          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router",
        "          - name: envoy.filters.http.routr",
    ));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "c.yaml:22:13: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.http_filters[0]: unknown HTTP filter \"envoy.filters.http.routr\"; did you mean \"envoy.filters.http.router\"?\n"
    );
}

#[test]
fn missing_cluster_reference() {
    let (code, _, err) = validate(&mutate(
        "route: {cluster: backend}",
        "route: {cluster: bakend}",
    ));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "c.yaml:20:34: static_resources.listeners[0].filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster: unknown cluster \"bakend\"; did you mean \"backend\"?\n"
    );
}

#[test]
fn bad_duration_says_how_to_fix_it() {
    let (code, _, err) = validate(&mutate("connect_timeout: 1s", "connect_timeout: 1"));
    assert_eq!(code, 1);
    assert_eq!(
        err,
        "c.yaml:28:22: static_resources.clusters[0].connect_timeout: expected a duration such as \"1.5s\", found \"1\" (durations need an \"s\" suffix)\n"
    );
}

#[test]
fn three_mistakes_three_errors() {
    let yaml = mutate("lb_policy: ROUND_ROBIN", "lb_policy: ROUND_ROBBIN")
        .replacen("port_value: 10000", "port_value: abc", 1)
        .replacen("route: {cluster: backend}", "route: {cluster: bakend}", 1);
    let (code, out, err) = validate(&yaml);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines[0].starts_with("c.yaml:7:56: "), "{err}");
    assert!(lines[1].starts_with("c.yaml:20:34: "), "{err}");
    assert!(lines[2].starts_with("c.yaml:29:16: "), "{err}");
}

#[test]
fn yaml_syntax_error_has_a_position() {
    let (code, _, err) = validate("static_resources:\n  listeners: [\n");
    assert_eq!(code, 1);
    assert!(err.starts_with("c.yaml:3:1: YAML syntax error: "), "{err}");
}

#[test]
fn inline_config_yaml() {
    let out = Command::new(support::BIN)
        .args(["--mode", "validate", "--config-yaml", GOOD])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
}

#[test]
fn version_and_help() {
    let out = Command::new(support::BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("legate "));
    let out = Command::new(support::BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config-path",
        "--config-yaml",
        "--mode",
        "--concurrency",
        "--log-level",
        "--drain-time-s",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}
