//! Listeners, filter chains, network filters and access logs.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::model::*;
use super::walk::Field;
use super::{ClusterRef, names, parse_http, typed_config};
use crate::access_log::format::Format;
use legate_filter_api::network::NetworkFilterFactory;

pub(crate) fn address(f: &Field<'_>) -> Option<SocketAddr> {
    let mut o = f.obj()?.unsupported(&["pipe", "envoy_internal_address"]);
    let sa = o.req("socket_address");
    o.finish();
    let sa = sa?;
    let mut s = sa.obj()?.unsupported(&[
        "named_port",
        "resolver_name",
        "ipv4_compat",
        "network_namespace_filepath",
    ]);
    let addr = s.req("address");
    let port = s.req("port_value");
    if let Some(p) = s.get("protocol") {
        p.enumeration(&["TCP"], &["UDP"]);
    }
    s.finish();
    let (addr, port) = (addr?, port?);
    let ip: IpAddr = match addr.str()?.parse() {
        Ok(ip) => ip,
        Err(_) => {
            addr.error(format!(
                "expected an IP address, found \"{}\" (hostnames are only allowed in STRICT_DNS and LOGICAL_DNS clusters)",
                addr.str()?
            ));
            return None;
        }
    };
    let port: u16 = port.int("a port number (0-65535)")?;
    Some(SocketAddr::new(ip, port))
}

pub(crate) fn listener(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<Listener> {
    let mut o = f.obj()?.unsupported(&[
        "listener_filters",
        "listener_filters_timeout",
        "per_connection_buffer_limit_bytes",
        "metadata",
        "drain_type",
        "transparent",
        "freebind",
        "socket_options",
        "tcp_fast_open_queue_length",
        "traffic_direction",
        "udp_listener_config",
        "api_listener",
        "connection_balance_config",
        "reuse_port",
        "enable_reuse_port",
        "access_log",
        "default_filter_chain",
        "filter_chain_matcher",
        "additional_addresses",
        "continue_on_listener_filters_timeout",
        "enable_mptcp",
        "ignore_global_conn_limit",
        "max_connections_to_accept_per_socket_event",
        "bind_to_port",
        "internal_listener",
    ]);
    let name = o.get("name").and_then(|g| g.str());
    let address = o.req("address").and_then(|a| address(&a));
    let stat_prefix = o.get("stat_prefix").and_then(|g| g.str());
    let mut chains = Vec::new();
    if let Some(fc) = o.req("filter_chains") {
        let items = fc.seq();
        if items.is_empty() {
            fc.error("a listener needs at least one filter chain");
        }
        for c in items {
            if let Some(c) = filter_chain(&c, refs) {
                chains.push(c);
            }
        }
    }
    o.finish();
    let address = address?;
    let name = name.unwrap_or_else(|| address.to_string());
    Some(Listener {
        stat_prefix,
        name,
        address,
        filter_chains: chains,
    })
}

fn filter_chain(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<FilterChain> {
    let mut o = f.obj()?.unsupported(&[
        "transport_socket",
        "transport_socket_connect_timeout",
        "metadata",
        "use_proxy_proto",
    ]);
    let _ = o.get("name").and_then(|g| g.str());
    let mut destination_port = None;
    if let Some(m) = o.get("filter_chain_match") {
        let mut mo = m.obj()?.unsupported(&[
            "server_names",
            "transport_protocol",
            "application_protocols",
            "prefix_ranges",
            "address_suffix",
            "suffix_len",
            "direct_source_prefix_ranges",
            "source_type",
            "source_prefix_ranges",
            "source_ports",
        ]);
        destination_port = mo
            .get("destination_port")
            .and_then(|g| g.int::<u16>("a port number (1-65535)"));
        mo.finish();
    }
    let mut filters = Vec::new();
    if let Some(fs) = o.req("filters") {
        let items = fs.seq();
        let n = items.len();
        if n == 0 {
            fs.error("a filter chain needs at least one filter");
        }
        for (i, item) in items.iter().enumerate() {
            if let Some(nf) = network_filter(item, refs) {
                let terminal = matches!(
                    nf,
                    NetworkFilter::TcpProxy(_)
                        | NetworkFilter::HttpConnectionManager(_)
                        | NetworkFilter::Terminal(_)
                );
                if terminal && i + 1 != n {
                    item.error("this filter is terminal and must be the last in the chain");
                } else if !terminal && i + 1 == n {
                    item.error("the last filter of a chain must be a terminal filter");
                } else if matches!(nf, NetworkFilter::HttpConnectionManager(_)) && i > 0 {
                    // The connection manager reads its socket itself: a read
                    // filter in front of it would never see a byte.
                    item.error(format!(
                        "legate does not run network filters before {} yet; this chain has {i} in front of it",
                        names::HCM
                    ));
                }
                filters.push(nf);
            }
        }
    }
    o.finish();
    Some(FilterChain {
        destination_port,
        filters,
    })
}

/// A filter entry: `name` and/or `typed_config`; returns the resolved name and the
/// typed config's message.
/// A filter entry: the filter it is (by type URL, else by name), its
/// typed_config, where to report errors, and the name it was given.
pub(crate) fn filter_entry<'a>(
    f: &Field<'a>,
    kind: &str,
) -> Option<(
    String,
    Option<super::TypedConfig<'a>>,
    Field<'a>,
    Option<String>,
)> {
    let mut o = f
        .obj()?
        .unsupported(&["config_discovery", "disabled", "is_optional"]);
    let name = o.get("name").and_then(|g| g.str());
    let tc_field = o.get("typed_config");
    o.finish();
    let tc = match &tc_field {
        Some(tc) => Some(typed_config(tc)?),
        None => None,
    };
    let by_type = tc
        .as_ref()
        .and_then(|t| names::name_from_type_url(&t.type_url));
    let resolved = match (&name, &by_type) {
        (_, Some(t)) => t.clone(),
        (Some(n), None) if tc.is_none() => n.clone(),
        (_, None) => {
            let url = tc.as_ref().map(|t| t.type_url.clone()).unwrap_or_default();
            tc_field
                .as_ref()
                .unwrap_or(f)
                .error(format!("unknown {kind} filter type \"{url}\""));
            return None;
        }
    };
    Some((resolved, tc, tc_field.unwrap_or_else(|| f.clone()), name))
}

fn unknown_filter(f: &Field<'_>, name: &str, kind: &str, supported: &[&str], known: &[&str]) {
    if known.contains(&name) {
        f.error(format!(
            "{kind} filter \"{name}\" is not supported by legate yet"
        ));
    } else {
        let mut all = supported.to_vec();
        all.extend_from_slice(known);
        let hint = super::walk::did_you_mean(name, all.iter().copied())
            .map(|c| format!("; did you mean \"{c}\"?"))
            .unwrap_or_default();
        f.error(format!("unknown {kind} filter \"{name}\"{hint}"));
    }
}

type NetworkBuild = fn(super::walk::Obj<'_>) -> Option<Arc<dyn NetworkFilterFactory>>;

/// The built-in network (read/write) filters: name, typed_config type URL, and
/// the parser that makes the factory.
const NATIVE_NETWORK: &[(&str, &str, NetworkBuild)] = &[
    (
        names::NETWORK_RBAC,
        super::parse_rbac::NETWORK_TYPE,
        super::parse_rbac::network,
    ),
    (
        names::MYSQL_PROXY,
        super::parse_mysql::TYPE,
        super::parse_mysql::filter,
    ),
];

fn network_filter(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<NetworkFilter> {
    let (name, tc, at, given_name) = filter_entry(f, "network")?;
    let Some(tc) = tc else {
        at.error(format!("filter \"{name}\" needs a typed_config"));
        return None;
    };
    if let Some((_, type_url, build)) = NATIVE_NETWORK.iter().find(|(n, ..)| *n == name) {
        if tc.type_url != *type_url {
            at.error(format!(
                "expected \"@type\" {type_url}, found \"{}\"",
                tc.type_url
            ));
            return None;
        }
        let factory = build(tc.obj)?;
        let name = given_name.unwrap_or(name);
        return Some(NetworkFilter::Native(NativeFilter { name, factory }));
    }
    let expect_type = |want: &str| {
        if tc.type_url != want {
            at.error(format!(
                "expected \"@type\" {want}, found \"{}\"",
                tc.type_url
            ));
        }
    };
    match name.as_str() {
        names::TCP_PROXY => {
            expect_type(names::TCP_PROXY_TYPE);
            tcp_proxy(tc.obj, refs).map(|t| NetworkFilter::TcpProxy(Arc::new(t)))
        }
        names::HCM => {
            expect_type(names::HCM_TYPE);
            parse_http::hcm(tc.obj, refs).map(|h| NetworkFilter::HttpConnectionManager(Arc::new(h)))
        }
        names::REDIS_PROXY => {
            expect_type(super::parse_redis::TYPE);
            let factory = super::parse_redis::filter(tc.obj, refs)?;
            let name = given_name.unwrap_or(name);
            Some(NetworkFilter::Terminal(NativeFilter { name, factory }))
        }
        names::NETWORK_WASM => {
            expect_type(super::parse_wasm::NETWORK_TYPE);
            super::parse_wasm::filter(tc.obj, super::parse_wasm::Role::Network)
                .map(NetworkFilter::Wasm)
        }
        other => {
            unknown_filter(
                &at,
                other,
                "network",
                &[
                    names::TCP_PROXY,
                    names::HCM,
                    names::NETWORK_WASM,
                    names::NETWORK_RBAC,
                    names::MYSQL_PROXY,
                    names::REDIS_PROXY,
                ],
                names::KNOWN_UNSUPPORTED_NETWORK,
            );
            None
        }
    }
}

pub(crate) fn unknown_http_filter(f: &Field<'_>, name: &str) {
    let mut supported = vec![names::ROUTER, names::HTTP_WASM];
    supported.extend(parse_http::NATIVE_HTTP.iter().map(|(n, ..)| *n));
    unknown_filter(f, name, "HTTP", &supported, names::KNOWN_UNSUPPORTED_HTTP);
}

fn tcp_proxy(mut o: super::walk::Obj<'_>, refs: &mut Vec<ClusterRef>) -> Option<TcpProxy> {
    o = o.unsupported(&[
        "metadata_match",
        "downstream_idle_timeout",
        "upstream_idle_timeout",
        "max_connect_attempts",
        "hash_policy",
        "tunneling_config",
        "max_downstream_connection_duration",
        "access_log_flush_interval",
        "flush_access_log_on_connected",
        "access_log_options",
        "on_demand",
        "backoff_options",
        "proxy_protocol_tlvs",
    ]);
    let stat_prefix = o.req("stat_prefix").and_then(|g| g.str());
    let cluster = match o.one_of(&["cluster", "weighted_clusters"]) {
        Some(("cluster", g)) => g.str().map(|name| {
            refs.push(ClusterRef {
                name: name.clone(),
                path: g.path().to_string(),
                pos: g.pos(),
                needs_addresses: false,
            });
            ClusterSpecifier::Cluster(name)
        }),
        Some((_, g)) => weighted_clusters(&g, refs, false),
        None => {
            o.error("one of \"cluster\" or \"weighted_clusters\" is required");
            None
        }
    };
    let idle_timeout = match o.get("idle_timeout") {
        Some(g) => g.duration().filter(|d| !d.is_zero()),
        None => Some(std::time::Duration::from_secs(3600)),
    };
    let access_log = o
        .get("access_log")
        .map(|g| access_logs(&g))
        .unwrap_or_default();
    o.finish();
    Some(TcpProxy {
        stat_prefix: stat_prefix?,
        cluster: cluster?,
        idle_timeout,
        access_log,
    })
}

pub(crate) fn weighted_clusters(
    f: &Field<'_>,
    refs: &mut Vec<ClusterRef>,
    http: bool,
) -> Option<ClusterSpecifier> {
    let mut o = f.obj()?.unsupported(&[
        "total_weight",
        "runtime_key_prefix",
        "header_name",
        "random_value_specifier",
    ]);
    let mut out = Vec::new();
    if let Some(cs) = o.req("clusters") {
        for c in cs.seq() {
            let Some(co) = c.obj() else { continue };
            let mut co = if http {
                co.unsupported(&[
                    "request_headers_to_add",
                    "request_headers_to_remove",
                    "response_headers_to_add",
                    "response_headers_to_remove",
                    "typed_per_filter_config",
                    "metadata_match",
                    "host_rewrite_literal",
                    "cluster_header",
                ])
            } else {
                co.unsupported(&["metadata_match"])
            };
            let name = co.req("name");
            let weight = co.req("weight").and_then(|g| g.u32());
            co.finish();
            if let (Some(n), Some(weight)) = (name, weight)
                && let Some(name) = n.str()
            {
                refs.push(ClusterRef {
                    name: name.clone(),
                    path: n.path().to_string(),
                    pos: n.pos(),
                    needs_addresses: false,
                });
                out.push(WeightedCluster { name, weight });
            }
        }
        if out.iter().map(|c| c.weight as u64).sum::<u64>() == 0 && !out.is_empty() {
            cs.error("the sum of weights must be greater than 0");
        }
    }
    o.finish();
    Some(ClusterSpecifier::Weighted(out))
}

pub(crate) fn access_logs(f: &Field<'_>) -> Vec<Arc<AccessLog>> {
    f.seq()
        .iter()
        .filter_map(access_log)
        .map(Arc::new)
        .collect()
}

fn access_log(f: &Field<'_>) -> Option<AccessLog> {
    let mut o = f.obj()?.unsupported(&["filter"]);
    let name = o.get("name").and_then(|g| g.str());
    let tc = o.req("typed_config");
    o.finish();
    let tc_field = tc?;
    let tc = typed_config(&tc_field)?;
    let mut t = tc.obj;
    let sink = match tc.type_url.as_str() {
        names::FILE_LOG_TYPE => {
            let path = t.req("path").and_then(|g| g.str());
            AccessLogSink::File(path?)
        }
        names::STDOUT_LOG_TYPE => AccessLogSink::Stdout,
        names::STDERR_LOG_TYPE => AccessLogSink::Stderr,
        other => {
            let hint = name.map(|n| format!(" (name \"{n}\")")).unwrap_or_default();
            tc_field.error(format!(
                "unsupported access logger \"{other}\"{hint}; supported: file, stdout, stderr"
            ));
            return None;
        }
    };
    // Deprecated forms of FileAccessLog.
    let legacy_format = t.get("format");
    let legacy_json = t.get("json_format");
    let log_format = t.get("log_format");
    t.finish();
    let format = if let Some(g) = legacy_format {
        AccessLogFormat::Text(text_format(&g, &g.str()?)?)
    } else if let Some(g) = legacy_json {
        AccessLogFormat::Json(json_format(&g)?)
    } else if let Some(g) = log_format {
        substitution_format(&g)?
    } else {
        AccessLogFormat::Text(Format::default_access_log())
    };
    Some(AccessLog { sink, format })
}

fn text_format(f: &Field<'_>, text: &str) -> Option<Format> {
    match Format::parse(text) {
        Ok(fmt) => Some(fmt),
        Err(e) => {
            f.error(e);
            None
        }
    }
}

fn substitution_format(f: &Field<'_>) -> Option<AccessLogFormat> {
    let mut o = f
        .obj()?
        .unsupported(&["formatters", "json_format_options", "typed_json_format"]);
    let _ = o.get("content_type").and_then(|g| g.str());
    if let Some(g) = o.get("omit_empty_values")
        && g.bool() == Some(true)
    {
        g.error("\"omit_empty_values: true\" is not supported by legate");
    }
    let choice = o.one_of(&["text_format", "text_format_source", "json_format"]);
    o.finish();
    match choice {
        Some(("text_format", g)) => text_format(&g, &g.str()?).map(AccessLogFormat::Text),
        Some(("text_format_source", g)) => {
            let mut ds =
                g.obj()?
                    .unsupported(&["filename", "inline_bytes", "environment_variable"]);
            let s = ds.req("inline_string").and_then(|s| s.str());
            ds.finish();
            text_format(&g, &s?).map(AccessLogFormat::Text)
        }
        Some((_, g)) => json_format(&g).map(AccessLogFormat::Json),
        None => Some(AccessLogFormat::Text(Format::default_access_log())),
    }
}

fn json_format(f: &Field<'_>) -> Option<Vec<(String, JsonFormatValue)>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (k, v) in f.map_entries() {
        if matches!(v.node.value, super::yaml::Value::Map(_)) {
            match json_format(&v) {
                Some(inner) => out.push((k, JsonFormatValue::Object(inner))),
                None => ok = false,
            }
        } else {
            match v.str().and_then(|s| text_format(&v, &s)) {
                Some(fmt) => out.push((k, JsonFormatValue::Format(fmt))),
                None => ok = false,
            }
        }
    }
    ok.then_some(out)
}
