//! Shared helpers for the black-box tests: start the real `legate` binary on a
//! config, find its ports, read its stats, and run small upstreams.
//!
//! Every listener in test configs uses `port_value: 0`; the admin address comes
//! from `--admin-address-path` and listener ports from `/listeners?format=json`,
//! so tests never race for ports.

#![allow(dead_code)]

pub mod envoy;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub mod jwt;
pub mod mariadb_server;
pub mod redis_server;

pub const BIN: &str = env!("CARGO_BIN_EXE_legate");

/// A running `legate` process, killed on drop.
pub struct Legate {
    pub child: Child,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

impl Legate {
    /// Starts legate on `yaml` with two workers and waits until `/ready` is 200.
    pub async fn start(yaml: &str) -> Legate {
        Self::start_with(yaml, &["--concurrency", "2"]).await
    }

    pub async fn start_with(yaml: &str, extra: &[&str]) -> Legate {
        match Self::try_start_with(yaml, extra).await {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`Legate::start_with`], but a refused config or a failed start is an
    /// error value, so callers comparing many configs can report it and go on.
    pub async fn try_start_with(yaml: &str, extra: &[&str]) -> Result<Legate, String> {
        Self::try_start_in(yaml, extra, None).await
    }

    /// Like [`Legate::try_start_with`], run from directory `cwd` (for configs
    /// with relative paths).
    pub async fn try_start_in(
        yaml: &str,
        extra: &[&str],
        cwd: Option<&std::path::Path>,
    ) -> Result<Legate, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let cfg = dir.path().join("legate.yaml");
        std::fs::write(&cfg, yaml).map_err(|e| e.to_string())?;
        let admin_file = dir.path().join("admin.addr");
        let stdout = dir.path().join("stdout.log");
        let stderr = dir.path().join("stderr.log");
        let file = |p: &PathBuf| std::fs::File::create(p).map_err(|e| e.to_string());
        let level: &[&str] = if extra.contains(&"-l") {
            &[]
        } else {
            &["-l", "info"]
        };
        let mut cmd = Command::new(BIN);
        if let Some(cwd) = cwd {
            cmd.current_dir(cwd);
        }
        let child = cmd
            .arg("-c")
            .arg(&cfg)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(level)
            .args(extra)
            .stdout(Stdio::from(file(&stdout)?))
            .stderr(Stdio::from(file(&stderr)?))
            .spawn()
            .map_err(|e| format!("spawn legate: {e}"))?;
        let mut l = Legate {
            child,
            admin: "127.0.0.1:0".parse().unwrap(),
            dir,
            stdout,
            stderr,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = l.child.try_wait() {
                return Err(format!(
                    "legate exited early with {status}:\n{}",
                    l.stderr_text()
                ));
            }
            if let Ok(a) = std::fs::read_to_string(&admin_file)
                && let Ok(addr) = a.trim().parse()
            {
                l.admin = addr;
                if let Ok((200, _)) = http_get(addr, "/ready").await {
                    return Ok(l);
                }
            }
            if Instant::now() > deadline {
                return Err(format!("legate did not become ready:\n{}", l.stderr_text()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The bound address of a listener, by name.
    pub async fn listener(&self, name: &str) -> SocketAddr {
        let (_, body) = http_get(self.admin, "/listeners?format=json")
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        for l in v["listener_statuses"].as_array().unwrap() {
            if l["name"] == name {
                let sa = &l["local_address"]["socket_address"];
                return format!("{}:{}", sa["address"].as_str().unwrap(), sa["port_value"])
                    .parse()
                    .unwrap();
            }
        }
        panic!("no listener {name} in {body}");
    }

    /// All counters and gauges as a map (the trailing `histograms` element of
    /// Envoy's JSON is skipped).
    pub async fn stats(&self) -> HashMap<String, i64> {
        let (_, body) = http_get(self.admin, "/stats?format=json").await.unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["stats"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| Some((s["name"].as_str()?.to_string(), s["value"].as_i64()?)))
            .collect()
    }

    /// One stat's value (0 when absent).
    pub async fn stat(&self, name: &str) -> i64 {
        self.stats().await.get(name).copied().unwrap_or(0)
    }

    /// Waits until a stat reaches `want` (stats at stream end are recorded just
    /// after the client sees the response).
    pub async fn wait_stat(&self, name: &str, want: i64) -> i64 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.stat(name).await;
            if v == want || Instant::now() > deadline {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn stdout_text(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Legate {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET (`Connection: close`), for admin calls.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

pub async fn http_post(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_raw(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    )
    .await
}

/// Sends raw bytes, reads to EOF, returns status and body (chunked is not decoded).
pub async fn http_raw(addr: SocketAddr, req: &str) -> std::io::Result<(u16, String)> {
    let raw = raw_exchange(addr, req.as_bytes()).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Writes bytes and reads everything the peer sends until it closes (5 s max).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    Ok(out)
}

/// Runs `curl` with arguments; returns (exit ok, stdout, stderr).
pub fn curl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10"])
        .args(args)
        .output()
        .expect("curl is installed (.ci/run installs it)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An upstream HTTP server (HTTP/1.1 and h2c) that answers with a JSON echo of
/// the request, plus a few behaviours chosen by path:
/// `/status/N` answers N, `/sleep/MS` waits first, `/bytes/N` sends N bytes.
/// The response carries `x-upstream: <name>`.
pub async fn echo_upstream(name: &'static str) -> SocketAddr {
    http_server(move |req| echo(name, req)).await
}

/// Serves `handler` on a loopback port, HTTP/1.1 (with upgrades) and h2c.
pub async fn http_server<F, Fut, B>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(handler);
                let _ = hyper_util::server::conn::auto::Builder::new(
                    hyper_util::rt::TokioExecutor::new(),
                )
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(s), svc)
                .await;
            });
        }
    });
    addr
}

async fn echo(
    name: &'static str,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let mut status = 200;
    if let Some(ms) = path.strip_prefix("/sleep/") {
        let ms: u64 = ms.split('/').next().unwrap_or("0").parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(code) = path.strip_prefix("/status/") {
        status = code.parse().unwrap_or(500);
    }
    let payload = if let Some(n) = path.strip_prefix("/bytes/") {
        Bytes::from(vec![b'x'; n.parse().unwrap_or(0)])
    } else {
        let headers: serde_json::Map<String, serde_json::Value> = parts
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
            .collect();
        Bytes::from(
            serde_json::json!({
                "upstream": name,
                "method": parts.method.as_str(),
                "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
                "version": format!("{:?}", parts.version),
                "headers": headers,
                "body": String::from_utf8_lossy(&body),
            })
            .to_string(),
        )
    };
    let mut resp = Response::new(Full::new(payload));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    resp.headers_mut()
        .insert("x-upstream", name.parse().unwrap());
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    Ok(resp)
}

/// A raw TCP echo server.
pub async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A port with nothing listening on it.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// An address on which connections are refused, for the whole test process: the
/// port stays bound without listening, so no server another test starts (on a
/// port the kernel picks) can take it. A port from [`closed_port`] can be reused
/// that way, and a "dead" upstream would then answer.
pub fn dead_addr() -> SocketAddr {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    std::mem::forget(s);
    addr
}

/// An HCM listener named `name` routing everything to `cluster`, plus extra YAML
/// for the HCM (indented to sit under typed_config).
pub fn http_listener(name: &str, stat_prefix: &str, routes: &str, hcm_extra: &str) -> String {
    http_listener_with_filters(name, stat_prefix, routes, hcm_extra, "")
}

/// Like [`http_listener`], with HTTP filters (YAML list items indented to sit
/// under `http_filters`) before the router.
pub fn http_listener_with_filters(
    name: &str,
    stat_prefix: &str,
    routes: &str,
    hcm_extra: &str,
    filters: &str,
) -> String {
    format!(
        r#"
  - name: {name}
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {stat_prefix}
{hcm_extra}
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
{routes}
          http_filters:
{filters}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
"#
    )
}

/// A STATIC cluster over the given endpoints (address, weight).
pub fn cluster(name: &str, endpoints: &[(SocketAddr, u32)], extra: &str) -> String {
    let eps: String = endpoints
        .iter()
        .map(|(a, w)| {
            format!(
                "        - endpoint: {{address: {{socket_address: {{address: {}, port_value: {}}}}}}}\n          load_balancing_weight: {w}\n",
                a.ip(),
                a.port()
            )
        })
        .collect();
    format!(
        r#"
  - name: {name}
    type: STATIC
    connect_timeout: 1s
{extra}
    load_assignment:
      cluster_name: {name}
      endpoints:
      - lb_endpoints:
{eps}"#
    )
}

/// A full bootstrap from listener and cluster snippets, admin on port 0.
pub fn bootstrap(listeners: &str, clusters: &str) -> String {
    format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:{listeners}
  clusters:{clusters}
"#
    )
}

/// Builds the example Wasm filters (once per test binary; cargo serialises
/// concurrent builds) and returns the path of one `.wasm`.
pub fn wasm_example(name: &str) -> PathBuf {
    wasm_example_for(name, "wasm32-wasip1")
}

pub fn wasm_example_for(name: &str, target: &str) -> PathBuf {
    build_examples("examples/wasm", target, "target/wasm").join(format!("{name}.wasm"))
}

/// Builds the example filters written with legate-sdk (Wasm components, once
/// per test binary) and returns the path of one `.wasm`.
pub fn component_example(name: &str) -> PathBuf {
    build_examples("examples/components", "wasm32-wasip2", "target/components")
        .join(format!("{name}.wasm"))
}

/// Builds an examples workspace for `target` once per test binary; returns the
/// directory of its release outputs.
fn build_examples(workspace: &str, target: &str, target_dir: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target_dir = root.join(target_dir);
    let key = format!("{workspace} {target}");
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if !built.contains(&key) {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "--release", "--target", target, "--manifest-path"])
            .arg(root.join(workspace).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target_dir)
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building {workspace} for {target} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        built.push(key);
    }
    target_dir.join(format!("{target}/release"))
}

/// An `envoy.filters.http.wasm` entry for `http_filters`, with a JSON plugin
/// configuration and extra PluginConfig YAML (indented 16 spaces).
pub fn wasm_http_filter(
    name: &str,
    wasm: &std::path::Path,
    config_json: &str,
    extra: &str,
) -> String {
    format!(
        r#"          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: {name}
                root_id: ""
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{config_json}'
{extra}
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{}"}}}}"#,
        wasm.display()
    )
}

/// `curl -si` through the proxy; returns (status, lowercased head, body).
pub fn curl_get(args: &[&str]) -> (u16, String, String) {
    let mut a = vec!["-i"];
    a.extend_from_slice(args);
    let (ok, out, err) = curl(&a);
    assert!(ok, "curl failed: {err}");
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

pub fn url(a: SocketAddr, path: &str) -> String {
    format!("http://{a}{path}")
}

/// An auth service: `authorization: Bearer good` gets 200 and `x-auth-user`,
/// anything else 401.
pub async fn auth_service() -> SocketAddr {
    http_server(|req: hyper::Request<hyper::body::Incoming>| async move {
        let good = req
            .headers()
            .get("authorization")
            .is_some_and(|v| v == "Bearer good");
        let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
        if good && req.uri().path() == "/check" {
            resp.headers_mut()
                .insert("x-auth-user", "alice".parse().unwrap());
        } else {
            *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
        }
        Ok::<_, std::convert::Infallible>(resp)
    })
    .await
}

/// Runs `legate --mode validate` on a config; returns (success, stderr).
pub fn validate(yaml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("config.yaml");
    std::fs::write(&p, yaml).unwrap();
    let out = Command::new(BIN)
        .args(["--mode", "validate", "-c"])
        .arg(&p)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A route sending every path to cluster `up`.
pub const ROUTE_ALL_TO_UP: &str =
    "              - match: {prefix: \"/\"}\n                route: {cluster: up}\n";

/// One listener `ingress` with the given HTTP filters in front of `up`, plus
/// extra clusters.
pub fn filtered_config(filters: &str, up: SocketAddr, extra_clusters: &str) -> String {
    bootstrap(
        &http_listener_with_filters("ingress", "ingress", ROUTE_ALL_TO_UP, "", filters),
        &(cluster("up", &[(up, 1)], "") + extra_clusters),
    )
}

/// PluginConfig lines (for `wasm_http_filter`'s `extra`) setting a
/// failure policy and limits; either may be empty.
pub fn plugin_extra(policy: &str, limits: &str) -> String {
    let mut extra = String::new();
    if !policy.is_empty() {
        extra.push_str(&format!("                failure_policy: {policy}\n"));
    }
    if !limits.is_empty() {
        extra.push_str(&format!("                legate_limits: {limits}\n"));
    }
    extra.trim_end_matches('\n').to_string()
}

/// Listener `ingress` runs `filter` in front of `up`; listener `plain` has no
/// filter, to show the proxy keeps serving when a filter misbehaves.
pub fn fault_bootstrap(filter: &str, up: SocketAddr) -> String {
    bootstrap(
        &(http_listener_with_filters("ingress", "ingress", ROUTE_ALL_TO_UP, "", filter)
            + &http_listener("plain", "plain", ROUTE_ALL_TO_UP, "")),
        &cluster("up", &[(up, 1)], ""),
    )
}

/// Replaces a file as deploy tools do, write then rename, so a watcher never
/// sees half of it.
pub fn replace_file(dst: &std::path::Path, bytes: &[u8]) {
    let tmp = dst.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, dst).unwrap();
}

/// The header filter examples' behaviour, over HTTP/1.1 and HTTP/2, through
/// listener address `a`: the upstream sees `x-legate-wasm: <name>` and no
/// `x-remove-me`; the response carries `x-wasm-filter: <name>` and the path.
pub fn assert_header_filter(a: SocketAddr, name: &str) {
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, head, body) =
            curl_get(&[proto, "-H", "x-remove-me: 1", &url(a, "/some/path?q=1")]);
        assert_eq!(status, 200, "{proto}: {head}");
        assert!(
            head.contains(&format!("x-wasm-filter: {name}")),
            "{proto}: {head}"
        );
        assert!(
            head.contains("x-request-path: /some/path?q=1"),
            "{proto}: {head}"
        );
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["headers"]["x-legate-wasm"], name, "{body}");
        assert!(echo["headers"].get("x-remove-me").is_none(), "{body}");
    }
}

/// The auth callout examples' behaviour against [`auth_service`], over
/// HTTP/1.1 and HTTP/2: a good token passes with the service's user (a
/// client-sent `x-auth-user` replaced), a bad one gets 403 from filter `name`.
pub fn assert_auth_callout(a: SocketAddr, name: &str) {
    for proto in ["--http1.1", "--http2-prior-knowledge"] {
        let (status, head, body) = curl_get(&[
            proto,
            "-H",
            "authorization: Bearer good",
            "-H",
            "x-auth-user: mallory",
            &url(a, "/x"),
        ]);
        assert_eq!(status, 200, "{proto}: {head}{body}");
        let echo: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(echo["headers"]["x-auth-user"], "alice", "{body}");
        let (status, head, body) =
            curl_get(&[proto, "-H", "authorization: Bearer bad", &url(a, "/x")]);
        assert_eq!(status, 403, "{proto}: {head}");
        assert!(head.contains("x-auth-denied: 1"), "{head}");
        assert_eq!(body, format!("denied by {name}\n"));
    }
}
