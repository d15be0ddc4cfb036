//! Envoy v3 bootstrap YAML into the validated [`model`]. All config errors live here.

pub mod model;
mod parse_cluster;
mod parse_fault;
mod parse_grpc_stats;
mod parse_http;
mod parse_jwt;
mod parse_listener;
mod parse_mysql;
mod parse_rbac;
mod parse_redis;
mod parse_wasm;
pub mod walk;
pub mod yaml;

use std::collections::HashSet;
use std::fmt;

pub use model::*;
use walk::{ConfigError, Diag, Field};

/// A config that failed to load: every mistake found, with where it is.
#[derive(Debug)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{e}", self.source)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

pub fn load_file(path: &str) -> Result<Bootstrap, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(text) => load_str(&text, path),
        Err(e) => Err(ConfigErrors {
            source: path.to_string(),
            errors: vec![ConfigError {
                path: String::new(),
                pos: yaml::Pos { line: 0, col: 0 },
                message: format!("cannot read config file: {e}"),
            }],
        }),
    }
}

/// Parses and validates a config. `source` names it in error messages.
pub fn load_str(text: &str, source: &str) -> Result<Bootstrap, ConfigErrors> {
    let fail = |errors| ConfigErrors {
        source: source.to_string(),
        errors,
    };
    let root = yaml::parse(text).map_err(|e| {
        fail(vec![ConfigError {
            path: String::new(),
            pos: e.pos,
            message: format!("YAML syntax error: {}", e.message),
        }])
    })?;
    let d = Diag::default();
    let bootstrap = parse_bootstrap(&d, Field::new(&d, &root, String::new()), root.to_json());
    if d.has_errors() {
        return Err(fail(d.into_errors()));
    }
    Ok(bootstrap.expect("no errors means a model"))
}

fn parse_bootstrap(d: &Diag, f: Field<'_>, raw: serde_json::Value) -> Option<Bootstrap> {
    let mut o = f.obj()?.unsupported(&[
        "dynamic_resources",
        "cluster_manager",
        "stats_sinks",
        "stats_config",
        "stats_flush_interval",
        "tracing",
        "overload_manager",
        "layered_runtime",
        "watchdog",
        "watchdogs",
        "hds_config",
        "flags_path",
        "fatal_actions",
        "default_socket_interface",
        "inline_headers",
        "typed_dns_resolver_config",
        "header_prefix",
        "node_context_params",
        "application_log_config",
    ]);
    let node = o.get("node").map(|g| parse_node(&g)).unwrap_or_default();
    let admin = o.get("admin").and_then(|g| parse_admin(&g));
    let wasm_services = o
        .get("bootstrap_extensions")
        .map(|g| bootstrap_extensions(&g))
        .unwrap_or_default();
    let mut listeners = Vec::new();
    let mut clusters = Vec::new();
    let mut cluster_refs = Vec::new();
    if let Some(sr) = o.get("static_resources") {
        let mut s = sr.obj()?.unsupported(&["secrets"]);
        if let Some(cs) = s.get("clusters") {
            for f in cs.seq() {
                if let Some(c) = parse_cluster::cluster(&f) {
                    clusters.push(std::sync::Arc::new(c));
                }
            }
        }
        if let Some(ls) = s.get("listeners") {
            for f in ls.seq() {
                if let Some(l) = parse_listener::listener(&f, &mut cluster_refs) {
                    listeners.push(l);
                }
            }
        }
        s.finish();
    }
    o.finish();

    let mut names = HashSet::new();
    for c in &clusters {
        if !names.insert(c.name.as_str()) {
            d.error(
                "static_resources.clusters",
                f.pos(),
                format!("duplicate cluster name \"{}\"", c.name),
            );
        }
    }
    // Envoy fails a route to an unknown cluster at load time (validate_clusters).
    let known: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    for r in &cluster_refs {
        if r.needs_addresses
            && let Some(c) = clusters.iter().find(|c| c.name == r.name)
            && c.kind == DiscoveryType::LogicalDns
        {
            d.error(
                &r.path,
                r.pos,
                format!(
                    "cluster \"{}\" is LOGICAL_DNS; the Redis proxy needs each host's address (use STRICT_DNS or STATIC)",
                    r.name
                ),
            );
        }
        if !names.contains(r.name.as_str()) {
            let hint = walk::did_you_mean(&r.name, known.iter().copied())
                .map(|c| format!("; did you mean \"{c}\"?"))
                .unwrap_or_default();
            d.error(
                &r.path,
                r.pos,
                format!("unknown cluster \"{}\"{hint}", r.name),
            );
        }
    }
    let mut listener_names = HashSet::new();
    for l in &listeners {
        if !listener_names.insert(l.name.as_str()) {
            d.error(
                "static_resources.listeners",
                f.pos(),
                format!("duplicate listener name \"{}\"", l.name),
            );
        }
    }
    Some(Bootstrap {
        node,
        admin,
        listeners,
        clusters,
        wasm_services,
        raw,
    })
}

/// `bootstrap_extensions`: only `envoy.bootstrap.wasm`.
fn bootstrap_extensions(f: &Field<'_>) -> Vec<WasmService> {
    let mut out = Vec::new();
    for item in f.seq() {
        let Some(mut o) = item.obj() else { continue };
        let name = o.get("name").and_then(|g| g.str()).unwrap_or_default();
        let tc = o
            .req("typed_config")
            .and_then(|g| typed_config(&g).map(|t| (t, g)));
        o.finish();
        let Some((tc, at)) = tc else { continue };
        if tc.type_url != parse_wasm::SERVICE_TYPE {
            at.error(format!(
                "bootstrap extension \"{name}\" of type \"{}\" is not supported by legate (supported: {} with @type {})",
                tc.type_url,
                names::BOOTSTRAP_WASM,
                parse_wasm::SERVICE_TYPE
            ));
            continue;
        }
        if let Some(s) = parse_wasm::service(tc.obj) {
            out.push(s);
        }
    }
    out
}

/// A reference to a cluster by name, checked once all clusters are known.
pub(crate) struct ClusterRef {
    pub name: String,
    pub path: String,
    pub pos: yaml::Pos,
    /// The referrer picks hosts by address itself (the Redis proxy), which a
    /// LOGICAL_DNS cluster does not have until it connects.
    pub needs_addresses: bool,
}

fn parse_node(f: &Field<'_>) -> NodeInfo {
    let Some(o) = f.obj() else {
        return NodeInfo::default();
    };
    let mut o = o.unsupported(&["metadata", "locality", "user_agent_name", "extensions"]);
    let id = o.get("id").and_then(|g| g.str()).unwrap_or_default();
    let cluster = o.get("cluster").and_then(|g| g.str()).unwrap_or_default();
    o.finish();
    NodeInfo { id, cluster }
}

fn parse_admin(f: &Field<'_>) -> Option<Admin> {
    let mut o = f.obj()?.unsupported(&[
        "access_log",
        "access_log_path",
        "profile_path",
        "socket_options",
        "ignore_global_conn_limit",
    ]);
    let address = o.req("address").and_then(|a| parse_listener::address(&a));
    o.finish();
    Some(Admin { address: address? })
}

/// The inner message of a `typed_config`: its type URL and the node holding its
/// fields (unwrapping `udpa.type.v1.TypedStruct` / `xds.type.v3.TypedStruct`).
pub(crate) struct TypedConfig<'a> {
    pub type_url: String,
    pub obj: walk::Obj<'a>,
}

pub(crate) const TYPED_STRUCT: [&str; 2] = [
    "type.googleapis.com/udpa.type.v1.TypedStruct",
    "type.googleapis.com/xds.type.v3.TypedStruct",
];

pub(crate) fn typed_config<'a>(f: &Field<'a>) -> Option<TypedConfig<'a>> {
    let mut o = f.obj()?;
    let type_url = o.req("@type")?.str()?;
    if TYPED_STRUCT.contains(&type_url.as_str()) {
        let inner_url = o.req("type_url").and_then(|g| g.str());
        let value = o.get("value");
        o.finish();
        let inner_url = inner_url?;
        let obj = match value {
            Some(v) => v.obj()?,
            None => Field::new(f.d, &EMPTY_MAP, f.path().to_string()).obj()?,
        };
        let inner_url = if inner_url.starts_with("type.googleapis.com/") {
            inner_url
        } else {
            format!("type.googleapis.com/{inner_url}")
        };
        return Some(TypedConfig {
            type_url: inner_url,
            obj,
        });
    }
    Some(TypedConfig { type_url, obj: o })
}

static EMPTY_MAP: yaml::Node = yaml::Node {
    pos: yaml::Pos { line: 0, col: 0 },
    value: yaml::Value::Map(Vec::new()),
};

/// Envoy's well-known filter names and their type URLs.
pub(crate) mod names {
    pub const TCP_PROXY: &str = "envoy.filters.network.tcp_proxy";
    pub const TCP_PROXY_TYPE: &str =
        "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy";
    pub const HCM: &str = "envoy.filters.network.http_connection_manager";
    pub const HCM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager";
    pub const ROUTER: &str = "envoy.filters.http.router";
    pub const FAULT: &str = "envoy.filters.http.fault";
    pub const JWT_AUTHN: &str = "envoy.filters.http.jwt_authn";
    pub const GRPC_STATS: &str = "envoy.filters.http.grpc_stats";
    pub const HTTP_RBAC: &str = "envoy.filters.http.rbac";
    pub const NETWORK_RBAC: &str = "envoy.filters.network.rbac";
    pub const REDIS_PROXY: &str = "envoy.filters.network.redis_proxy";
    pub const MYSQL_PROXY: &str = "envoy.filters.network.mysql_proxy";
    pub const HTTP_WASM: &str = "envoy.filters.http.wasm";
    pub const NETWORK_WASM: &str = "envoy.filters.network.wasm";
    pub const BOOTSTRAP_WASM: &str = "envoy.bootstrap.wasm";
    pub const ROUTER_TYPE: &str =
        "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router";
    pub const FILE_LOG_TYPE: &str =
        "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog";
    pub const STDOUT_LOG_TYPE: &str =
        "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";
    pub const STDERR_LOG_TYPE: &str =
        "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog";
    pub const HTTP_PROTOCOL_OPTIONS: &str =
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
    pub const HTTP_PROTOCOL_OPTIONS_TYPE: &str =
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

    /// Envoy network filters that Legate does not have (yet), so the error can say
    /// "not supported" rather than "unknown".
    pub const KNOWN_UNSUPPORTED_NETWORK: &[&str] = &[
        "envoy.filters.network.ext_authz",
        "envoy.filters.network.local_ratelimit",
        "envoy.filters.network.mongo_proxy",
        "envoy.filters.network.echo",
        "envoy.filters.network.connection_limit",
        "envoy.filters.network.direct_response",
        "envoy.filters.network.sni_cluster",
        "envoy.filters.network.thrift_proxy",
        "envoy.filters.network.dubbo_proxy",
        "envoy.filters.network.zookeeper_proxy",
        "envoy.filters.network.postgres_proxy",
        "envoy.filters.network.kafka_broker",
    ];
    pub const KNOWN_UNSUPPORTED_HTTP: &[&str] = &[
        "envoy.filters.http.cors",
        "envoy.filters.http.buffer",
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.lua",
        "envoy.filters.http.local_ratelimit",
        "envoy.filters.http.ratelimit",
        "envoy.filters.http.gzip",
        "envoy.filters.http.compressor",
        "envoy.filters.http.health_check",
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.header_to_metadata",
        "envoy.filters.http.csrf",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.oauth2",
    ];

    /// `envoy.filters.http.fault` from `...filters.http.fault.v3.HTTPFault`-style URLs.
    pub fn name_from_type_url(url: &str) -> Option<String> {
        let msg = url.strip_prefix("type.googleapis.com/envoy.extensions.filters.")?;
        let mut parts = msg.split('.');
        let kind = parts.next()?;
        let name = parts.next()?;
        Some(format!("envoy.filters.{kind}.{name}"))
    }
}

#[cfg(test)]
mod tests;
