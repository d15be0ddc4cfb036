//! The validated config model. Everything here has been checked; the runtime never
//! re-validates.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use regex::Regex;

pub use legate_filter_api::matcher::{
    Cidr, HeaderMatch, HeaderMatcher, PathMatch, QueryParameterMatcher, RouteMatch, StringMatch,
    StringMatcher, full_match,
};

use crate::access_log::format::Format;

#[derive(Debug)]
pub struct Bootstrap {
    pub node: NodeInfo,
    pub admin: Option<Admin>,
    pub listeners: Vec<Listener>,
    pub clusters: Vec<Arc<Cluster>>,
    /// `bootstrap_extensions` of type `envoy.bootstrap.wasm`.
    pub wasm_services: Vec<WasmService>,
    /// The config as given, for `/config_dump`.
    pub raw: serde_json::Value,
}

impl Bootstrap {
    /// Every Wasm plugin of the config: network and HTTP filters, then services.
    pub fn wasm_plugins(&self) -> Vec<&Arc<WasmPlugin>> {
        let mut out = Vec::new();
        for l in &self.listeners {
            for fc in &l.filter_chains {
                for f in &fc.filters {
                    match f {
                        NetworkFilter::Wasm(w) => out.push(w),
                        NetworkFilter::HttpConnectionManager(h) => {
                            for hf in &h.http_filters {
                                if let HttpFilter::Wasm(w) = hf {
                                    out.push(w);
                                }
                            }
                        }
                        NetworkFilter::TcpProxy(_)
                        | NetworkFilter::Native(_)
                        | NetworkFilter::Terminal(_) => {}
                    }
                }
            }
        }
        out.extend(self.wasm_services.iter().map(|s| &s.plugin));
        out
    }

    /// The `.wasm` files the config loads, watched for reloads.
    pub fn wasm_files(&self) -> Vec<std::path::PathBuf> {
        let mut files: Vec<_> = self
            .wasm_plugins()
            .into_iter()
            .filter_map(|p| p.code_path.clone())
            .collect();
        files.sort();
        files.dedup();
        files
    }
}

#[derive(Debug, Default, Clone)]
pub struct NodeInfo {
    pub id: String,
    pub cluster: String,
}

#[derive(Debug)]
pub struct Admin {
    pub address: SocketAddr,
}

#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Prefix of `listener.<prefix>.` stats; `None` names them by the bound address.
    pub stat_prefix: Option<String>,
    pub filter_chains: Vec<FilterChain>,
}

#[derive(Debug)]
pub struct FilterChain {
    pub destination_port: Option<u16>,
    pub filters: Vec<NetworkFilter>,
}

#[derive(Debug)]
pub enum NetworkFilter {
    Wasm(Arc<WasmPlugin>),
    /// A built-in network filter that sits before the terminal one.
    Native(NativeFilter<dyn legate_filter_api::network::NetworkFilterFactory>),
    TcpProxy(Arc<TcpProxy>),
    HttpConnectionManager(Arc<HttpConnectionManager>),
    /// A built-in terminal filter (`redis_proxy`).
    Terminal(NativeFilter<dyn legate_filter_api::network::TerminalFilterFactory>),
}

#[derive(Debug, Clone)]
pub enum ClusterSpecifier {
    Cluster(String),
    Header(HeaderName),
    Weighted(Vec<WeightedCluster>),
}

#[derive(Debug, Clone)]
pub struct WeightedCluster {
    pub name: String,
    pub weight: u32,
}

#[derive(Debug)]
pub struct TcpProxy {
    pub stat_prefix: String,
    pub cluster: ClusterSpecifier,
    pub idle_timeout: Option<Duration>,
    pub access_log: Vec<Arc<AccessLog>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Auto,
    Http1,
    Http2,
}

#[derive(Debug)]
pub struct HttpConnectionManager {
    pub stat_prefix: String,
    pub codec: Codec,
    pub route_config: RouteConfig,
    pub http_filters: Vec<HttpFilter>,
    pub stream_idle_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
    pub max_request_headers_kb: u32,
    pub use_remote_address: bool,
    pub xff_num_trusted_hops: u32,
    pub generate_request_id: bool,
    pub preserve_external_request_id: bool,
    pub access_log: Vec<Arc<AccessLog>>,
    pub upgrade_types: Vec<String>,
    pub server_name: String,
    /// `internal_address_config.cidr_ranges`: peers whose requests are trusted.
    pub internal_cidrs: Vec<Cidr>,
    pub strip_port: StripPort,
    pub skip_xff_append: bool,
    pub always_set_request_id_in_response: bool,
    /// `via`: appended to request and response `via` headers.
    pub via: Option<http::HeaderValue>,
    pub server_header: ServerHeader,
    /// The router's `suppress_envoy_headers`.
    pub suppress_envoy_headers: bool,
}

/// `server_header_transformation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerHeader {
    Overwrite,
    AppendIfAbsent,
    PassThrough,
}

impl HttpConnectionManager {
    pub fn is_internal(&self, ip: std::net::IpAddr) -> bool {
        self.internal_cidrs.iter().any(|c| c.contains(ip))
    }
}

/// `strip_matching_host_port` / `strip_any_host_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripPort {
    None,
    Matching,
    Any,
}

#[derive(Debug)]
pub enum HttpFilter {
    Wasm(Arc<WasmPlugin>),
    /// A built-in filter (`filters/*`), its factory made from its parsed config.
    Native(NativeFilter<dyn legate_filter_api::HttpFilterFactory>),
    Router {
        suppress_envoy_headers: bool,
    },
}

/// A built-in filter: its name in the config and its factory.
pub struct NativeFilter<F: ?Sized> {
    pub name: String,
    pub factory: Arc<F>,
}

impl<F: ?Sized> std::fmt::Debug for NativeFilter<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NativeFilter({})", self.name)
    }
}

/// `envoy.extensions.wasm.v3.PluginConfig`, with its code compiled.
#[derive(Debug)]
pub struct WasmPlugin {
    pub name: String,
    pub root_id: String,
    pub vm_id: String,
    /// The configured `envoy.wasm.runtime.*` name; every one runs on wasmtime.
    pub runtime: String,
    pub code: Arc<crate::wasm::Code>,
    /// `code.local.filename`, watched for reloads.
    pub code_path: Option<std::path::PathBuf>,
    pub vm_configuration: bytes::Bytes,
    pub configuration: bytes::Bytes,
    pub environment: Vec<(String, String)>,
    pub failure_policy: FailurePolicy,
    /// `reload_config.backoff`: base and max interval between VM rebuilds.
    pub reload_backoff: (Duration, Duration),
    pub limits: WasmLimits,
}

/// `envoy.bootstrap.wasm`.
#[derive(Debug)]
pub struct WasmService {
    pub plugin: Arc<WasmPlugin>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    FailClosed,
    FailOpen,
    FailReload,
}

/// Legate's limits on a Wasm VM (`legate_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmLimits {
    /// Linear memory per VM.
    pub max_memory_bytes: usize,
    /// Wall time one callback may run before it is interrupted.
    pub max_callback_duration: Duration,
    /// Body bytes buffered for a filter that pauses on body chunks.
    pub max_buffered_body_bytes: usize,
}

impl Default for WasmLimits {
    fn default() -> Self {
        WasmLimits {
            max_memory_bytes: 64 << 20,
            max_callback_duration: Duration::from_millis(100),
            max_buffered_body_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Default)]
pub struct HeaderMutations {
    pub request_add: Vec<HeaderValueOption>,
    pub request_remove: Vec<HeaderName>,
    pub response_add: Vec<HeaderValueOption>,
    pub response_remove: Vec<HeaderName>,
}

impl HeaderMutations {
    pub fn is_empty(&self) -> bool {
        self.request_add.is_empty()
            && self.request_remove.is_empty()
            && self.response_add.is_empty()
            && self.response_remove.is_empty()
    }
}

#[derive(Debug)]
pub struct RouteConfig {
    pub name: String,
    pub virtual_hosts: Vec<VirtualHost>,
    pub headers: HeaderMutations,
    /// Stripped from external requests.
    pub internal_only_headers: Vec<HeaderName>,
    /// Apply route config, then vhost, then route mutations (the most specific
    /// wins) instead of Envoy's default order.
    pub most_specific_header_mutations_wins: bool,
    /// A route matches on headers (`headers` or `grpc`): only then can a change
    /// to plain headers alone change which route a request takes.
    pub matches_headers: bool,
}

#[derive(Debug)]
pub struct VirtualHost {
    pub name: String,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub headers: HeaderMutations,
}

#[derive(Debug)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub action: RouteAction,
    pub headers: HeaderMutations,
    /// `typed_per_filter_config` of the route, its virtual host and the route
    /// configuration, the most specific winning; `None` when there is none.
    pub per_filter_config: Option<Arc<legate_filter_api::PerFilterConfig>>,
}

#[derive(Debug)]
pub enum RouteAction {
    Forward(ForwardAction),
    DirectResponse {
        status: StatusCode,
        body: Option<bytes::Bytes>,
    },
    Redirect(Redirect),
}

#[derive(Debug)]
pub enum HostRewrite {
    None,
    Literal(http::HeaderValue),
    Auto,
}

#[derive(Debug)]
pub struct ForwardAction {
    pub cluster: ClusterSpecifier,
    /// Zero disables the timeout.
    pub timeout: Duration,
    /// `x-envoy-expected-rq-timeout-ms` for `timeout`, made once.
    pub timeout_header: http::HeaderValue,
    pub prefix_rewrite: Option<String>,
    pub regex_rewrite: Option<(Regex, String)>,
    pub host_rewrite: HostRewrite,
    pub cluster_not_found_response_code: StatusCode,
    /// `hash_policy[]`, in order: the request's hash for RING_HASH and MAGLEV.
    pub hash_policy: Vec<HashPolicy>,
}

#[derive(Debug)]
pub struct HashPolicy {
    pub kind: HashPolicyKind,
    /// Stop at this policy once a hash exists.
    pub terminal: bool,
}

#[derive(Debug)]
pub enum HashPolicyKind {
    /// `header.header_name`; `pseudo` is set for `:path`, `:authority`, ...
    Header {
        name: HeaderName,
        pseudo: Option<&'static str>,
    },
    /// `connection_properties.source_ip: true`.
    SourceIp,
    QueryParameter(String),
    /// An existing cookie only (cookie generation is refused).
    Cookie(String),
}

#[derive(Debug, Default)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    pub prefix_rewrite: Option<String>,
    pub response_code: u16,
    pub strip_query: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAction {
    AppendIfExistsOrAdd,
    AddIfAbsent,
    OverwriteIfExistsOrAdd,
    OverwriteIfExists,
}

#[derive(Debug)]
pub struct HeaderValueOption {
    pub name: HeaderName,
    pub value: Format,
    pub action: AppendAction,
    pub keep_empty_value: bool,
}

#[derive(Debug, Clone)]
pub enum AccessLogSink {
    File(String),
    Stdout,
    Stderr,
}

#[derive(Debug)]
pub enum AccessLogFormat {
    Text(Format),
    /// Keys in config order; values are formats (nested objects flattened by path).
    Json(Vec<(String, JsonFormatValue)>),
}

#[derive(Debug)]
pub enum JsonFormatValue {
    Format(Format),
    Object(Vec<(String, JsonFormatValue)>),
}

#[derive(Debug)]
pub struct AccessLog {
    pub sink: AccessLogSink,
    pub format: AccessLogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryType {
    Static,
    StrictDns,
    LogicalDns,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsLookupFamily {
    Auto,
    V4Only,
    V6Only,
    V4Preferred,
    All,
}

#[derive(Debug, Clone)]
pub enum EndpointAddress {
    Ip(SocketAddr),
    Dns { host: String, port: u16 },
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    pub address: EndpointAddress,
    pub weight: u32,
}

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub kind: DiscoveryType,
    pub connect_timeout: Duration,
    pub endpoints: Vec<Endpoint>,
    pub http2: bool,
    pub dns_refresh_rate: Duration,
    pub dns_lookup_family: DnsLookupFamily,
    /// `typed_extension_protocol_options` meant for filters (the Redis proxy's).
    pub protocol_options: FilterProtocolOptions,
    pub lb_policy: LbPolicy,
}

/// Protocol options a cluster carries for a filter, by the filter's name, as
/// that filter's parser built them.
#[derive(Default, Clone)]
pub struct FilterProtocolOptions(Vec<(&'static str, Arc<dyn std::any::Any + Send + Sync>)>);

impl FilterProtocolOptions {
    pub fn get(&self, filter: &str) -> Option<Arc<dyn std::any::Any + Send + Sync>> {
        self.0
            .iter()
            .find(|(n, _)| *n == filter)
            .map(|(_, o)| o.clone())
    }

    pub fn insert(&mut self, filter: &'static str, options: Arc<dyn std::any::Any + Send + Sync>) {
        self.0.push((filter, options));
    }
}

impl std::fmt::Debug for FilterProtocolOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(n, _)| n))
            .finish()
    }
}

/// `lb_policy` with its `*_lb_config`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbPolicy {
    RoundRobin,
    Random,
    RingHash(RingHashConfig),
    Maglev { table_size: u64 },
}

impl LbPolicy {
    /// RING_HASH and MAGLEV: a host is chosen by the request's hash.
    pub fn is_hashing(&self) -> bool {
        matches!(self, LbPolicy::RingHash(_) | LbPolicy::Maglev { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingHashConfig {
    pub minimum_ring_size: u64,
    pub maximum_ring_size: u64,
    pub hash_function: RingHashFunction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RingHashFunction {
    XxHash,
    MurmurHash2,
}
