//! `/stats` text and JSON, and `/stats/prometheus` with Envoy's tag extraction.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::{BUCKETS, HistogramSample, Sample};

/// Envoy's text format: `name: value`, sorted.
pub fn text(samples: &[Sample]) -> String {
    let mut out = String::new();
    for s in samples {
        let _ = writeln!(out, "{}: {}", s.name, s.value);
    }
    out
}

/// Histograms in Envoy's text form: `name: P0(..) P25(..) ...`, or
/// `name: No recorded values`. Legate keeps cumulative values only, so each
/// quantile shows the same number twice, as Envoy's `(interval,cumulative)`.
pub fn text_histograms(hists: &[(String, HistogramSample)]) -> String {
    const Q: [f64; 10] = [0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0];
    let mut out = String::new();
    for (name, h) in hists {
        if h.count == 0 {
            let _ = writeln!(out, "{name}: No recorded values");
            continue;
        }
        let parts: Vec<String> = Q
            .iter()
            .map(|q| {
                let v = h.quantile(*q).unwrap_or(0.0);
                format!("P{}({v:.1},{v:.1})", q * 100.0)
            })
            .collect();
        let _ = writeln!(out, "{name}: {}", parts.join(" "));
    }
    out
}

/// Envoy's JSON format: `{"stats":[{"name":..,"value":..},..]}`.
pub fn json(samples: &[Sample], hists: &[(String, HistogramSample)]) -> String {
    const Q: [f64; 10] = [0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 100.0];
    let mut stats: Vec<serde_json::Value> = samples
        .iter()
        .map(|s| serde_json::json!({"name": s.name, "value": s.value}))
        .collect();
    if !hists.is_empty() {
        let computed: Vec<serde_json::Value> = hists
            .iter()
            .map(|(name, h)| {
                let values: Vec<serde_json::Value> = Q
                    .iter()
                    .map(|q| {
                        let v = h.quantile(q / 100.0);
                        serde_json::json!({"cumulative": v, "interval": v})
                    })
                    .collect();
                serde_json::json!({"name": name, "values": values})
            })
            .collect();
        stats.push(serde_json::json!({"histograms": {
            "supported_quantiles": Q,
            "computed_quantiles": computed,
        }}));
    }
    serde_json::json!({ "stats": stats }).to_string()
}

/// Envoy's default tag extraction, for the stat families Legate has: turns
/// `cluster.up.upstream_rq_200` into `cluster.upstream_rq` with
/// `envoy_cluster_name="up"` and `envoy_response_code="200"`.
fn extract(name: &str) -> (String, Vec<(&'static str, String)>) {
    let mut tags = Vec::new();
    let mut rest = name.to_string();
    const PREFIXED: [(&str, &str); 5] = [
        ("cluster.", "envoy_cluster_name"),
        ("http.", "envoy_http_conn_manager_prefix"),
        ("listener.", "envoy_listener_address"),
        ("tcp.", "envoy_tcp_prefix"),
        ("redis.", "envoy_redis_prefix"),
    ];
    // `<stat_prefix>.rbac.<stat>`: network RBAC (Envoy's `$.rbac.**`).
    if let Some((first, after)) = name.split_once('.')
        && let Some(stat) = after.strip_prefix("rbac.")
        && !PREFIXED
            .iter()
            .any(|(p, _)| p.trim_end_matches('.') == first)
    {
        tags.push(("envoy_rbac_prefix", first.to_string()));
        return (format!("rbac.{stat}"), tags);
    }
    for (prefix, tag) in PREFIXED {
        if let Some(after) = rest.strip_prefix(prefix) {
            let value = if prefix == "listener." {
                listener_address(after)
            } else {
                after.split_once('.').map(|(v, _)| v)
            };
            if let Some(value) = value {
                let tail = &after[value.len() + 1..];
                tags.push((tag, value.to_string()));
                rest = format!("{prefix}{tail}");
            }
            break;
        }
    }
    // `cluster.grpc.<service>.<method>.<stat>`: the first two names after `grpc`
    // are Envoy's service and method tags, taken only when a stat name follows
    // each (Envoy's `cluster.*.grpc.$.**` and `cluster.*.grpc.*.$.**`). A dotted
    // service such as `pkg.Svc` therefore tags `pkg` and `Svc`, as in Envoy.
    if let Some(after) = rest.strip_prefix("cluster.grpc.") {
        let tokens: Vec<&str> = after.split('.').collect();
        if tokens.len() >= 2 {
            tags.push(("envoy_grpc_bridge_service", tokens[0].to_string()));
            let skip = if tokens.len() >= 3 {
                tags.push(("envoy_grpc_bridge_method", tokens[1].to_string()));
                2
            } else {
                1
            };
            rest = format!("cluster.grpc.{}", tokens[skip..].join("."));
        }
    }
    // `http.rbac.<rules or shadow stat prefix>.<stat>` (`http.*.rbac.$.**`).
    if let Some(after) = rest.strip_prefix("http.rbac.")
        && let Some((prefix, stat)) = after.split_once('.')
    {
        tags.push(("envoy_rbac_http_prefix", prefix.to_string()));
        rest = format!("http.rbac.{stat}");
    }
    // `http.fault.<downstream cluster>.aborts_injected`: the fault filter's
    // per-caller counters.
    if let Some(after) = rest.strip_prefix("http.fault.")
        && let Some((cluster, stat)) = after.split_once('.')
    {
        tags.push(("envoy_fault_downstream_cluster", cluster.to_string()));
        rest = format!("http.fault.{stat}");
    }
    // `..._rq_200` -> `..._rq` + envoy_response_code; `..._rq_2xx` -> `..._rq_xx`.
    if let Some((head, last)) = rest.rsplit_once('_') {
        let b = last.as_bytes();
        if head.ends_with("_rq") || head.ends_with(".rq") {
            if b.len() == 3 && b.iter().all(u8::is_ascii_digit) {
                tags.push(("envoy_response_code", last.to_string()));
                rest = head.to_string();
            } else if b.len() == 3 && b[0].is_ascii_digit() && &b[1..] == b"xx" {
                tags.push(("envoy_response_code_class", (b[0] as char).to_string()));
                rest = format!("{head}_xx");
            }
        }
    }
    (rest, tags)
}

/// Envoy's listener address tag: `127.0.0.1_10000` in `listener.127.0.0.1_10000.x`
/// (digits, dots and underscores up to the last dot of that run). A listener with
/// its own `stat_prefix` gets no tag, as in Envoy.
fn listener_address(after: &str) -> Option<&str> {
    let run = after
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.' || *b == b'_')
        .count();
    let value = &after[..after[..run].rfind('.')?];
    (!value.is_empty()).then_some(value)
}

fn sanitize(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 6);
    s.push_str("envoy_");
    for c in name.chars() {
        s.push(if c.is_ascii_alphanumeric() || c == '_' {
            c
        } else {
            '_'
        });
    }
    s
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(tags: &[(&'static str, String)], extra: Option<(&str, String)>) -> String {
    let mut inner: Vec<String> = tags
        .iter()
        .rev()
        .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
        .collect();
    if let Some((k, v)) = extra {
        inner.push(format!("{k}=\"{v}\""));
    }
    format!("{{{}}}", inner.join(","))
}

/// Histograms as Prometheus histograms: `_bucket{le=..}`, `_sum`, `_count`.
pub fn prometheus_histograms(hists: &[(String, HistogramSample)]) -> String {
    let mut families: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, h) in hists {
        // As Envoy: a histogram appears once a value was recorded in it (a
        // cluster's upstream_rq_time only after its first upstream request).
        if h.count == 0 {
            continue;
        }
        let (base, tags) = extract(name);
        let family = sanitize(&base);
        let lines = families.entry(family.clone()).or_default();
        for (i, c) in h.cumulative.iter().enumerate() {
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            lines.push(format!(
                "{family}_bucket{} {c}",
                labels(&tags, Some(("le", le)))
            ));
        }
        lines.push(format!("{family}_sum{} {}", labels(&tags, None), h.sum));
        lines.push(format!("{family}_count{} {}", labels(&tags, None), h.count));
    }
    let mut out = String::new();
    for (family, lines) in families {
        let _ = writeln!(out, "# TYPE {family} histogram");
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// Prometheus text exposition 0.0.4: one `# TYPE` per family, samples grouped.
pub fn prometheus(samples: &[Sample], used_only: bool) -> String {
    let mut families: BTreeMap<String, (bool, Vec<String>)> = BTreeMap::new();
    for s in samples {
        if used_only && !s.used {
            continue;
        }
        let (base, mut tags) = extract(&s.name);
        let family = sanitize(&base);
        tags.reverse();
        let labels = if tags.is_empty() {
            "{}".to_string()
        } else {
            let inner: Vec<String> = tags
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape_label(v)))
                .collect();
            format!("{{{}}}", inner.join(","))
        };
        let entry = families
            .entry(family.clone())
            .or_insert_with(|| (s.is_counter, Vec::new()));
        entry.1.push(format!("{family}{labels} {}", s.value));
    }
    // Envoy prints every counter family, then every gauge family.
    let mut out = String::new();
    for want_counters in [true, false] {
        for (family, (is_counter, lines)) in &families {
            if *is_counter != want_counters {
                continue;
            }
            let _ = writeln!(
                out,
                "# TYPE {family} {}",
                if *is_counter { "counter" } else { "gauge" }
            );
            for l in lines {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(name: &str, v: i64, c: bool) -> Sample {
        Sample {
            name: name.into(),
            value: v,
            is_counter: c,
            used: true,
        }
    }

    #[test]
    fn tags_are_extracted() {
        let out = prometheus(
            &[
                s("cluster.up.upstream_rq_200", 3, true),
                s("cluster.up.upstream_rq_2xx", 3, true),
                s("http.ingress.downstream_rq_5xx", 1, true),
                s("cluster.up.upstream_cx_active", 2, false),
            ],
            false,
        );
        assert!(out.contains("# TYPE envoy_cluster_upstream_rq counter\nenvoy_cluster_upstream_rq{envoy_response_code=\"200\",envoy_cluster_name=\"up\"} 3\n"), "{out}");
        assert!(out.contains("envoy_cluster_upstream_rq_xx{envoy_response_code_class=\"2\",envoy_cluster_name=\"up\"} 3"));
        assert!(out.contains("envoy_http_downstream_rq_xx{envoy_response_code_class=\"5\",envoy_http_conn_manager_prefix=\"ingress\"} 1"));
        assert!(out.contains("# TYPE envoy_cluster_upstream_cx_active gauge"));
        let out = prometheus(
            &[
                s("http.in.fault.web.aborts_injected", 2, true),
                s("http.in.fault.aborts_injected", 5, true),
            ],
            false,
        );
        assert!(out.contains("envoy_http_fault_aborts_injected{envoy_fault_downstream_cluster=\"web\",envoy_http_conn_manager_prefix=\"in\"} 2"), "{out}");
        assert!(
            out.contains(
                "envoy_http_fault_aborts_injected{envoy_http_conn_manager_prefix=\"in\"} 5"
            ),
            "{out}"
        );
        let out = prometheus(
            &[
                s("cluster.up.grpc.pkg.Svc.Get.0", 2, true),
                s("cluster.up.grpc.Svc.Get.total", 3, true),
                s("cluster.up.grpc.5", 1, true),
            ],
            false,
        );
        assert!(out.contains("envoy_cluster_grpc_Get_0{envoy_grpc_bridge_method=\"Svc\",envoy_grpc_bridge_service=\"pkg\",envoy_cluster_name=\"up\"} 2"), "{out}");
        assert!(out.contains("envoy_cluster_grpc_total{envoy_grpc_bridge_method=\"Get\",envoy_grpc_bridge_service=\"Svc\",envoy_cluster_name=\"up\"} 3"), "{out}");
        assert!(
            out.contains("envoy_cluster_grpc_5{envoy_cluster_name=\"up\"} 1"),
            "{out}"
        );
        let out = prometheus(
            &[
                s("http.ingress.rbac.r_.allowed", 2, true),
                s("http.ingress.rbac.denied", 1, true),
                s("net.rbac.allowed", 1, true),
                s("net.rbac.nsh_.shadow_denied", 1, true),
            ],
            false,
        );
        assert!(out.contains("envoy_http_rbac_allowed{envoy_rbac_http_prefix=\"r_\",envoy_http_conn_manager_prefix=\"ingress\"} 2"), "{out}");
        assert!(
            out.contains("envoy_http_rbac_denied{envoy_http_conn_manager_prefix=\"ingress\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("envoy_rbac_allowed{envoy_rbac_prefix=\"net\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("envoy_rbac_nsh__shadow_denied{envoy_rbac_prefix=\"net\"} 1"),
            "{out}"
        );
        let out = prometheus(
            &[s("listener.127.0.0.1_10000.downstream_cx_total", 4, true)],
            false,
        );
        assert!(
            out.contains(
                "envoy_listener_downstream_cx_total{envoy_listener_address=\"127.0.0.1_10000\"} 4"
            ),
            "{out}"
        );
    }
}
