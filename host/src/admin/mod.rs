//! The admin listener: readiness, stats, config and cluster views, and the
//! mutating endpoints (health check, logging, quit). Runs on the main thread, off
//! the data path.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::server::Shared;
use crate::stats::{self, store};

/// Sets the log level; an error text for a bad level.
pub type SetLogLevel = dyn Fn(&str) -> Result<(), String> + Send + Sync;

/// What the admin can do to the process beyond reading it.
pub struct Control {
    pub shared: Arc<Shared>,
    /// Sets the log level; returns an error text for a bad level.
    pub set_log_level: Box<SetLogLevel>,
    pub log_level: Box<dyn Fn() -> String + Send + Sync>,
    pub command_line: serde_json::Value,
}

const POST_ONLY: &[&str] = &[
    "/healthcheck/fail",
    "/healthcheck/ok",
    "/logging",
    "/quitquitquit",
    "/drain_listeners",
    "/reset_counters",
];

const HELP: &str = "admin commands are:
  /: Admin home page
  /clusters: upstream cluster status
  /config_dump: dump current Envoy configs
  /drain_listeners (POST): drain listeners
  /healthcheck/fail (POST): cause the server to fail health checks
  /healthcheck/ok (POST): cause the server to pass health checks
  /listeners: print listener info
  /logging (POST): query/change logging levels
  /quitquitquit (POST): exit the server
  /ready: print server state, return 200 if LIVE, otherwise return 503
  /server_info: print server version/status information
  /stats: print server stats
  /stats/prometheus: print server stats in prometheus format
";

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(ctype),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-cache, max-age=0"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        header::HeaderValue::from_static("nosniff"),
    );
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=UTF-8", body)
}

fn json(body: String) -> Response<Full<Bytes>> {
    reply(StatusCode::OK, "application/json", body)
}

fn query_params(q: Option<&str>) -> Vec<(String, String)> {
    q.unwrap_or("")
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex(b[i + 1]), hex(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn stats_endpoint(q: &[(String, String)], prometheus: bool) -> Response<Full<Bytes>> {
    let mut samples = store().snapshot();
    let mut hists = store().histograms();
    let used_only = q.iter().any(|(k, _)| k == "usedonly");
    if let Some((_, f)) = q.iter().find(|(k, _)| k == "filter") {
        match regex::Regex::new(f) {
            Ok(re) => {
                samples.retain(|s| re.is_match(&s.name));
                hists.retain(|(n, _)| re.is_match(n));
            }
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("Invalid re2 regex: {e}\n")),
        }
    }
    let format = q
        .iter()
        .find(|(k, _)| k == "format")
        .map(|(_, v)| v.as_str());
    if prometheus || format == Some("prometheus") {
        let used_only = used_only && prometheus;
        let mut body = stats::prometheus(&samples, used_only);
        body.push_str(&stats::prometheus_histograms(&hists));
        return reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=UTF-8",
            body,
        );
    }
    if used_only {
        samples.retain(|s| s.used);
        hists.retain(|(_, h)| h.count > 0);
    }
    match format {
        Some("json") => json(stats::json(&samples, &hists)),
        Some("text") | None => {
            let mut body = stats::text(&samples);
            body.push_str(&stats::text_histograms(&hists));
            text(StatusCode::OK, body)
        }
        Some(other) => text(
            StatusCode::BAD_REQUEST,
            format!(
                "usage: /stats?format=(html|active-html|json|prometheus|text)\n\nunknown format: {other}\n"
            ),
        ),
    }
}

fn clusters_endpoint(c: &Control, q: &[(String, String)]) -> Response<Full<Bytes>> {
    let as_json = q.iter().any(|(k, v)| k == "format" && v == "json");
    let mut out = String::new();
    let mut jclusters = Vec::new();
    let cfg = c.shared.config();
    for cl in cfg.clusters.iter() {
        let name = &cl.config.name;
        let hosts = cl.hosts();
        if as_json {
            let hs: Vec<serde_json::Value> = hosts
                .iter()
                .map(|h| {
                    let addr = match &h.address {
                        crate::upstream::HostAddress::Ip(a) => a.to_string(),
                        crate::upstream::HostAddress::Dns(n, p) => format!("{n}:{p}"),
                    };
                    serde_json::json!({"address": addr, "weight": h.weight, "health_status": {"eds_health_status": "HEALTHY"}})
                })
                .collect();
            jclusters.push(
                serde_json::json!({"name": name, "observability_name": name, "host_statuses": hs}),
            );
            continue;
        }
        out.push_str(&format!("{name}::observability_name::{name}\n"));
        for (k, v) in [
            ("max_connections", 1024),
            ("max_pending_requests", 1024),
            ("max_requests", 1024),
            ("max_retries", 3),
        ] {
            out.push_str(&format!("{name}::default_priority::{k}::{v}\n"));
        }
        out.push_str(&format!("{name}::added_via_api::false\n"));
        for h in hosts.iter() {
            let addr = match &h.address {
                crate::upstream::HostAddress::Ip(a) => a.to_string(),
                crate::upstream::HostAddress::Dns(n, p) => format!("{n}:{p}"),
            };
            out.push_str(&format!("{name}::{addr}::health_flags::healthy\n"));
            out.push_str(&format!("{name}::{addr}::weight::{}\n", h.weight));
        }
    }
    if as_json {
        return json(
            serde_json::to_string_pretty(&serde_json::json!({"cluster_statuses": jclusters}))
                .unwrap_or_default(),
        );
    }
    text(StatusCode::OK, out)
}

fn listeners_endpoint(c: &Control, q: &[(String, String)]) -> Response<Full<Bytes>> {
    if q.iter().any(|(k, v)| k == "format" && v == "json") {
        let cfg = c.shared.config();
        let ls: Vec<serde_json::Value> = cfg
            .listeners
            .iter()
            .map(|l| {
                let a = l.local_addr();
                serde_json::json!({"name": l.name, "local_address": {"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}}})
            })
            .collect();
        return json(
            serde_json::to_string_pretty(&serde_json::json!({"listener_statuses": ls}))
                .unwrap_or_default(),
        );
    }
    let mut out = String::new();
    let cfg = c.shared.config();
    for l in &cfg.listeners {
        out.push_str(&format!("{}::{}\n", l.name, l.local_addr()));
    }
    text(StatusCode::OK, out)
}

fn server_info(c: &Control) -> Response<Full<Bytes>> {
    let s = &c.shared;
    let uptime = s.started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    let state = if s.draining() { "DRAINING" } else { "LIVE" };
    let cfg = s.config();
    let node = &cfg.bootstrap.node;
    let body = serde_json::json!({
        "version": format!("legate/{}", env!("CARGO_PKG_VERSION")),
        "state": state,
        // Legate's addition: which config version is in force (1, then +1 per reload).
        "config_version": cfg.version,
        "hot_restart_version": "disabled",
        "command_line_options": c.command_line,
        "node": {"id": node.id, "cluster": node.cluster},
        "uptime_current_epoch": format!("{uptime}s"),
        "uptime_all_epochs": format!("{uptime}s"),
    });
    json(serde_json::to_string_pretty(&body).unwrap_or_default())
}

async fn handle(c: Arc<Control>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let q = query_params(req.uri().query());
    if POST_ONLY.contains(&path.as_str()) && req.method() != Method::POST {
        // Envoy 1.40 answers 405 here (older versions said 400).
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("Method {} not allowed, POST required.", req.method()),
        );
    }
    let s = &c.shared;
    match path.as_str() {
        "/" => text(StatusCode::OK, HELP),
        "/ready" => {
            if s.draining() || s.healthcheck_failed.load(Ordering::Relaxed) {
                text(StatusCode::SERVICE_UNAVAILABLE, "DRAINING\n")
            } else {
                text(StatusCode::OK, "LIVE\n")
            }
        }
        "/stats" => {
            s.update_server_stats();
            stats_endpoint(&q, false)
        }
        "/stats/prometheus" => {
            s.update_server_stats();
            stats_endpoint(&q, true)
        }
        "/clusters" => clusters_endpoint(&c, &q),
        "/listeners" => listeners_endpoint(&c, &q),
        "/server_info" => server_info(&c),
        "/config_dump" => json(
            serde_json::to_string_pretty(&serde_json::json!({
                "configs": [{
                    "@type": "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
                    "bootstrap": s.config().bootstrap.raw,
                }]
            }))
            .unwrap_or_default(),
        ),
        "/healthcheck/fail" => {
            s.healthcheck_failed.store(true, Ordering::Relaxed);
            store().counter("server.healthcheck_failed_total").inc();
            text(StatusCode::OK, "OK\n")
        }
        "/healthcheck/ok" => {
            s.healthcheck_failed.store(false, Ordering::Relaxed);
            text(StatusCode::OK, "OK\n")
        }
        "/logging" => {
            if let Some((_, level)) = q.iter().find(|(k, _)| k == "level")
                && (c.set_log_level)(level).is_err()
            {
                return text(
                    StatusCode::BAD_REQUEST,
                    "error: unknown logger level\n\nusage: /logging?level=<level> (trace, debug, info, warning, error, critical, off)\n",
                );
            }
            text(
                StatusCode::OK,
                format!("active loggers:\n  legate: {}\n", (c.log_level)()),
            )
        }
        "/quitquitquit" | "/drain_listeners" => {
            s.start_drain();
            text(StatusCode::OK, "OK\n")
        }
        "/reset_counters" => text(StatusCode::OK, "OK\n"),
        _ => text(StatusCode::NOT_FOUND, format!("invalid path. {HELP}")),
    }
}

/// Serves the admin API until the process exits.
pub async fn serve(listener: TcpListener, control: Arc<Control>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let c = control.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let c = c.clone();
                async move { Ok::<_, Infallible>(handle(c, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding() {
        let q = query_params(Some("filter=cluster%5C.up&usedonly"));
        assert_eq!(q[0], ("filter".into(), "cluster\\.up".into()));
        assert_eq!(q[1], ("usedonly".into(), String::new()));
    }
}
