//! The HTTP connection manager, its filters and the route config.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, StatusCode};
use regex::Regex;

use legate_filter_api::{HttpFilterFactory, PerFilterConfig};

use super::model::*;
use super::parse_listener::{access_logs, filter_entry, unknown_http_filter, weighted_clusters};
use super::parse_rbac;
use super::walk::{Field, Obj};
use super::{ClusterRef, names};
use super::{parse_fault, parse_grpc_stats, parse_jwt};
use crate::access_log::format::Format;

pub(crate) fn hcm(mut o: Obj<'_>, refs: &mut Vec<ClusterRef>) -> Option<HttpConnectionManager> {
    o = o.unsupported(&[
        "rds",
        "scoped_routes",
        "tracing",
        "common_http_protocol_options",
        "http_protocol_options",
        "http2_protocol_options",
        "http3_protocol_options",
        "scheme_header_transformation",
        "max_request_headers_count",
        "request_headers_timeout",
        "drain_timeout",
        "delayed_close_timeout",
        "local_reply_config",
        "forward_client_cert_details",
        "set_current_client_cert_details",
        "proxy_100_continue",
        "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
        "normalize_path",
        "merge_slashes",
        "path_with_escaped_slashes_action",
        "request_id_extension",
        "stream_error_on_invalid_http_message",
        "original_ip_detection_extensions",
        "early_header_mutation_extensions",
        "typed_header_validation_config",
        "append_x_forwarded_port",
        "add_proxy_protocol_connection_state",
        "access_log_options",
        "user_agent",
        "strip_trailing_host_dot",
        "proxy_status_config",
        "max_stream_duration",
        "append_local_overload",
    ]);
    let stat_prefix = o.req("stat_prefix").and_then(|g| g.str());
    let codec = o
        .get("codec_type")
        .and_then(|g| g.enumeration(&["AUTO", "HTTP1", "HTTP2"], &["HTTP3"]))
        .map(|c| match c {
            "HTTP1" => Codec::Http1,
            "HTTP2" => Codec::Http2,
            _ => Codec::Auto,
        })
        .unwrap_or(Codec::Auto);
    let route_config = o.req("route_config").and_then(|g| route_config(&g, refs));
    let mut http_filters = Vec::new();
    if let Some(hf) = o.get("http_filters") {
        let items = hf.seq();
        let n = items.len();
        let mut failed = false;
        for (i, item) in items.iter().enumerate() {
            let Some(f) = http_filter(item, stat_prefix.as_deref().unwrap_or_default(), refs)
            else {
                failed = true;
                continue;
            };
            {
                let terminal = matches!(f, HttpFilter::Router { .. });
                if terminal && i + 1 != n {
                    item.error(
                        "envoy.filters.http.router is terminal and must be the last HTTP filter",
                    );
                }
                http_filters.push(f);
            }
        }
        // A filter that failed to parse already has its error; do not pile on.
        if !failed && !matches!(http_filters.last(), Some(HttpFilter::Router { .. })) && n > 0 {
            hf.error("the last HTTP filter must be envoy.filters.http.router");
        }
    }
    if http_filters.is_empty() && !o.has("http_filters") {
        // Envoy requires the router to be configured; say so clearly.
        o.error("missing required field \"http_filters\" (add envoy.filters.http.router)");
    }
    let stream_idle_timeout = match o.get("stream_idle_timeout") {
        Some(g) => g.duration().filter(|d| !d.is_zero()),
        None => Some(Duration::from_secs(300)),
    };
    let request_timeout = o
        .get("request_timeout")
        .and_then(|g| g.duration())
        .filter(|d| !d.is_zero());
    let max_request_headers_kb = match o.get("max_request_headers_kb") {
        Some(g) => match g.u32() {
            Some(v) if (1..=8192).contains(&v) => Some(v),
            Some(_) => {
                g.error("max_request_headers_kb must be between 1 and 8192");
                None
            }
            None => None,
        },
        None => Some(60),
    };
    let use_remote_address = o
        .get("use_remote_address")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    let xff_num_trusted_hops = o
        .get("xff_num_trusted_hops")
        .and_then(|g| g.u32())
        .unwrap_or(0);
    let generate_request_id = o
        .get("generate_request_id")
        .and_then(|g| g.bool())
        .unwrap_or(true);
    let preserve_external_request_id = o
        .get("preserve_external_request_id")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    let access_log = o
        .get("access_log")
        .map(|g| access_logs(&g))
        .unwrap_or_default();
    let mut upgrade_types = Vec::new();
    if let Some(u) = o.get("upgrade_configs") {
        for item in u.seq() {
            let Some(uo) = item.obj() else { continue };
            let mut uo = uo.unsupported(&["filters"]);
            let t = uo.req("upgrade_type").and_then(|g| g.str());
            let enabled = uo.get("enabled").and_then(|g| g.bool()).unwrap_or(true);
            uo.finish();
            if let Some(t) = t
                && enabled
            {
                upgrade_types.push(t.to_ascii_lowercase());
            }
        }
    }
    let mut internal_cidrs = Vec::new();
    if let Some(g) = o.get("internal_address_config")
        && let Some(io) = g.obj()
    {
        let mut io = io.unsupported(&["unix_sockets"]);
        if let Some(r) = io.get("cidr_ranges") {
            internal_cidrs = r.seq().iter().filter_map(cidr).collect();
        }
        io.finish();
    }
    let strip_port = match o.one_of(&["strip_matching_host_port", "strip_any_host_port"]) {
        Some(("strip_any_host_port", g)) if g.bool() == Some(true) => StripPort::Any,
        Some(("strip_matching_host_port", g)) if g.bool() == Some(true) => StripPort::Matching,
        _ => StripPort::None,
    };
    let skip_xff_append = o
        .get("skip_xff_append")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    let always_set_request_id_in_response = o
        .get("always_set_request_id_in_response")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    let via = match o.get("via") {
        Some(g) => {
            let v = g.str().unwrap_or_default();
            match http::HeaderValue::from_str(&v) {
                Ok(h) if !v.is_empty() => Some(h),
                Ok(_) => None,
                Err(_) => {
                    g.error("invalid header value");
                    None
                }
            }
        }
        None => None,
    };
    let server_header = o
        .get("server_header_transformation")
        .and_then(|g| g.enumeration(&["OVERWRITE", "APPEND_IF_ABSENT", "PASS_THROUGH"], &[]))
        .map(|v| match v {
            "APPEND_IF_ABSENT" => ServerHeader::AppendIfAbsent,
            "PASS_THROUGH" => ServerHeader::PassThrough,
            _ => ServerHeader::Overwrite,
        })
        .unwrap_or(ServerHeader::Overwrite);
    let suppress_envoy_headers = http_filters.iter().any(|f| {
        matches!(
            f,
            HttpFilter::Router {
                suppress_envoy_headers: true
            }
        )
    });
    let server_name = o
        .get("server_name")
        .and_then(|g| g.str())
        .unwrap_or_else(|| "legate".to_string());
    o.finish();
    Some(HttpConnectionManager {
        stat_prefix: stat_prefix?,
        codec,
        route_config: route_config?,
        http_filters,
        stream_idle_timeout,
        request_timeout,
        max_request_headers_kb: max_request_headers_kb?,
        use_remote_address,
        xff_num_trusted_hops,
        generate_request_id,
        preserve_external_request_id,
        access_log,
        upgrade_types,
        server_name,
        internal_cidrs,
        strip_port,
        skip_xff_append,
        always_set_request_id_in_response,
        via,
        server_header,
        suppress_envoy_headers,
    })
}

/// `envoy.config.core.v3.CidrRange`.
pub(crate) fn cidr(f: &Field<'_>) -> Option<Cidr> {
    let mut o = f.obj()?;
    let prefix = o.req("address_prefix");
    let len = o.get("prefix_len").and_then(|g| g.u32());
    o.finish();
    let prefix = prefix?;
    let addr: std::net::IpAddr = match prefix.str()?.parse() {
        Ok(a) => a,
        Err(_) => {
            prefix.error("expected an IP address");
            return None;
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    // An unset prefix_len is 0, as in Envoy: the range holds every address of
    // the family (checked on Envoy 1.40).
    let len = len.unwrap_or(0);
    if len > max {
        f.error(format!("prefix_len must be at most {max}"));
        return None;
    }
    Some(Cidr {
        addr,
        len: len as u8,
    })
}

type HttpBuild =
    fn(Obj<'_>, &str, &str, &mut Vec<ClusterRef>) -> Option<Arc<dyn HttpFilterFactory>>;

/// The built-in HTTP filters: name, typed_config type URL, and the parser that
/// makes the factory from the config, the filter's name and the HCM's stat prefix
/// (noting the clusters it calls, checked once all clusters are known).
pub(crate) const NATIVE_HTTP: &[(&str, &str, HttpBuild)] = &[
    (names::FAULT, parse_fault::TYPE, parse_fault::http),
    (
        names::GRPC_STATS,
        parse_grpc_stats::TYPE,
        parse_grpc_stats::http,
    ),
    (names::HTTP_RBAC, parse_rbac::HTTP_TYPE, parse_rbac::http),
    (names::JWT_AUTHN, parse_jwt::TYPE, parse_jwt::http),
];

type PerRouteParse = fn(Obj<'_>) -> Option<Arc<dyn Any + Send + Sync>>;

/// The per-route configs built-in filters take in `typed_per_filter_config`, by
/// type URL.
const PER_ROUTE: &[(&str, PerRouteParse)] = &[
    (parse_fault::TYPE, parse_fault::per_route),
    (parse_jwt::PER_ROUTE_TYPE, parse_jwt::per_route),
    (parse_rbac::PER_ROUTE_TYPE, parse_rbac::per_route),
];

/// `typed_per_filter_config` of one level (route, virtual host or route config).
fn per_filter_config(o: &mut Obj<'_>) -> PerFilterConfig {
    let mut out = PerFilterConfig::default();
    let Some(g) = o.get("typed_per_filter_config") else {
        return out;
    };
    for (name, f) in g.map_entries() {
        let Some(tc) = super::typed_config(&f) else {
            continue;
        };
        match PER_ROUTE.iter().find(|(t, _)| *t == tc.type_url) {
            Some((_, parse)) => {
                if let Some(c) = parse(tc.obj) {
                    out.insert(name, c);
                }
            }
            None => f.error(format!(
                "per-route config of type \"{}\" is not supported by legate (supported: {})",
                tc.type_url,
                PER_ROUTE
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
    out
}

/// Adds a less specific level's per-filter configs under a route's own.
fn inherit(route: &mut Route, less_specific: &PerFilterConfig) {
    if less_specific.is_empty() {
        return;
    }
    let mut merged = route
        .per_filter_config
        .as_deref()
        .cloned()
        .unwrap_or_default();
    merged.merge(less_specific);
    route.per_filter_config = Some(Arc::new(merged));
}

fn http_filter(f: &Field<'_>, stat_prefix: &str, refs: &mut Vec<ClusterRef>) -> Option<HttpFilter> {
    let (name, tc, at, given_name) = filter_entry(f, "HTTP")?;
    if let Some((_, type_url, build)) = NATIVE_HTTP.iter().find(|(n, ..)| *n == name) {
        let Some(tc) = tc else {
            at.error(format!("filter \"{name}\" needs a typed_config"));
            return None;
        };
        if tc.type_url != *type_url {
            at.error(format!(
                "expected \"@type\" {type_url}, found \"{}\"",
                tc.type_url
            ));
            return None;
        }
        // Per-route configs find the filter by the name it was given.
        let name = given_name.unwrap_or(name);
        let factory = build(tc.obj, &name, stat_prefix, refs)?;
        return Some(HttpFilter::Native(NativeFilter { name, factory }));
    }
    match name.as_str() {
        names::ROUTER => {
            if let Some(tc) = tc {
                if tc.type_url != names::ROUTER_TYPE {
                    at.error(format!(
                        "expected \"@type\" {}, found \"{}\"",
                        names::ROUTER_TYPE,
                        tc.type_url
                    ));
                }
                let mut o = tc.obj.unsupported(&[
                    "dynamic_stats",
                    "start_child_span",
                    "upstream_log",
                    "upstream_log_options",
                    "strict_check_headers",
                    "respect_expected_rq_timeout",
                    "suppress_grpc_request_failure_code_stats",
                    "upstream_http_filters",
                ]);
                let suppress = o
                    .get("suppress_envoy_headers")
                    .and_then(|g| g.bool())
                    .unwrap_or(false);
                o.finish();
                return Some(HttpFilter::Router {
                    suppress_envoy_headers: suppress,
                });
            }
            Some(HttpFilter::Router {
                suppress_envoy_headers: false,
            })
        }
        names::HTTP_WASM => {
            let Some(tc) = tc else {
                at.error(format!("filter \"{name}\" needs a typed_config"));
                return None;
            };
            if tc.type_url != super::parse_wasm::HTTP_TYPE {
                at.error(format!(
                    "expected \"@type\" {}, found \"{}\"",
                    super::parse_wasm::HTTP_TYPE,
                    tc.type_url
                ));
            }
            super::parse_wasm::filter(tc.obj, super::parse_wasm::Role::Http).map(HttpFilter::Wasm)
        }
        other => {
            unknown_http_filter(&at, other);
            None
        }
    }
}

fn route_config(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<RouteConfig> {
    let mut o = f.obj()?.unsupported(&[
        "vhds",
        "max_direct_response_body_size_bytes",
        "cluster_specifier_plugins",
        "request_mirror_policies",
        "ignore_port_in_host_matching",
        "ignore_path_parameters_in_path_matching",
        "metadata",
    ]);
    let name = o.get("name").and_then(|g| g.str()).unwrap_or_default();
    let validate = o
        .get("validate_clusters")
        .and_then(|g| g.bool())
        .unwrap_or(true);
    let mut local_refs = Vec::new();
    let mut virtual_hosts = Vec::new();
    let pfc = per_filter_config(&mut o);
    if let Some(vh) = o.get("virtual_hosts") {
        for item in vh.seq() {
            if let Some(mut v) = virtual_host(&item, &mut local_refs) {
                for r in &mut v.routes {
                    inherit(r, &pfc);
                }
                virtual_hosts.push(v);
            }
        }
    }
    let headers = header_mutations(&mut o);
    let internal_only_headers = o
        .get("internal_only_headers")
        .map(|g| header_names(&g))
        .unwrap_or_default();
    let most_specific_header_mutations_wins = o
        .get("most_specific_header_mutations_wins")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    o.finish();
    if validate {
        refs.extend(local_refs);
    }
    let matches_headers = virtual_hosts
        .iter()
        .flat_map(|vh| &vh.routes)
        .any(|r| r.matcher.grpc || !r.matcher.headers.is_empty());
    Some(RouteConfig {
        name,
        matches_headers,
        virtual_hosts,
        headers,
        internal_only_headers,
        most_specific_header_mutations_wins,
    })
}

fn header_mutations(o: &mut Obj<'_>) -> HeaderMutations {
    let mut h = HeaderMutations::default();
    if let Some(g) = o.get("request_headers_to_add") {
        h.request_add = header_value_options(&g);
    }
    if let Some(g) = o.get("request_headers_to_remove") {
        h.request_remove = header_names(&g);
    }
    if let Some(g) = o.get("response_headers_to_add") {
        h.response_add = header_value_options(&g);
    }
    if let Some(g) = o.get("response_headers_to_remove") {
        h.response_remove = header_names(&g);
    }
    h
}

pub(crate) fn header_name(f: &Field<'_>) -> Option<HeaderName> {
    let s = f.str()?;
    match HeaderName::from_bytes(s.to_ascii_lowercase().as_bytes()) {
        Ok(n) => Some(n),
        Err(_) => {
            f.error(format!("invalid header name \"{s}\""));
            None
        }
    }
}

fn header_names(f: &Field<'_>) -> Vec<HeaderName> {
    f.seq().iter().filter_map(header_name).collect()
}

fn header_value_options(f: &Field<'_>) -> Vec<HeaderValueOption> {
    f.seq().iter().filter_map(header_value_option).collect()
}

fn header_value_option(f: &Field<'_>) -> Option<HeaderValueOption> {
    let mut o = f.obj()?;
    let header = o.req("header");
    let append = o.get("append");
    let append_action = o.get("append_action");
    let keep_empty_value = o
        .get("keep_empty_value")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    o.finish();
    let mut action = AppendAction::AppendIfExistsOrAdd;
    if let Some(a) = append_action {
        if append.is_some() {
            a.error("only one of \"append\" and \"append_action\" may be set");
        }
        action = match a.enumeration(
            &[
                "APPEND_IF_EXISTS_OR_ADD",
                "ADD_IF_ABSENT",
                "OVERWRITE_IF_EXISTS_OR_ADD",
                "OVERWRITE_IF_EXISTS",
            ],
            &[],
        )? {
            "ADD_IF_ABSENT" => AppendAction::AddIfAbsent,
            "OVERWRITE_IF_EXISTS_OR_ADD" => AppendAction::OverwriteIfExistsOrAdd,
            "OVERWRITE_IF_EXISTS" => AppendAction::OverwriteIfExists,
            _ => AppendAction::AppendIfExistsOrAdd,
        };
    } else if let Some(a) = append
        && a.bool() == Some(false)
    {
        action = AppendAction::OverwriteIfExistsOrAdd;
    }
    let header = header?;
    let mut h = header.obj()?.unsupported(&["raw_value"]);
    let key = h.req("key");
    let value = h.get("value").and_then(|g| g.str()).unwrap_or_default();
    h.finish();
    let key = key?;
    let name = header_name(&key)?;
    if name.as_str().starts_with(':') || name == http::header::HOST {
        key.error(format!("header \"{name}\" cannot be modified"));
        return None;
    }
    let value = match Format::parse(&value) {
        Ok(v) => v,
        Err(e) => {
            header.error(e);
            return None;
        }
    };
    Some(HeaderValueOption {
        name,
        value,
        action,
        keep_empty_value,
    })
}

fn virtual_host(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<VirtualHost> {
    let mut o = f.obj()?.unsupported(&[
        "require_tls",
        "virtual_clusters",
        "rate_limits",
        "cors",
        "include_request_attempt_count",
        "include_attempt_count_in_response",
        "retry_policy",
        "retry_policy_typed_config",
        "hedge_policy",
        "per_request_buffer_limit_bytes",
        "request_mirror_policies",
        "matcher",
        "metadata",
        "include_is_timeout_retry_header",
        "request_body_buffer_limit",
    ]);
    let name = o.req("name").and_then(|g| g.str());
    let mut domains = Vec::new();
    if let Some(d) = o.req("domains") {
        for item in d.seq() {
            if let Some(s) = item.str() {
                if s.is_empty() {
                    item.error("a domain must not be empty");
                } else if s != "*" && s[1..s.len().saturating_sub(1)].contains('*') {
                    item.error(format!(
                        "domain \"{s}\": wildcards are only allowed as a prefix (*.example.com), a suffix (example.*) or alone (*)"
                    ));
                }
                domains.push(s.to_ascii_lowercase());
            }
        }
    }
    let mut routes = Vec::new();
    let pfc = per_filter_config(&mut o);
    if let Some(r) = o.get("routes") {
        for item in r.seq() {
            if let Some(mut route) = route(&item, refs) {
                inherit(&mut route, &pfc);
                routes.push(route);
            }
        }
    }
    let headers = header_mutations(&mut o);
    o.finish();
    Some(VirtualHost {
        name: name?,
        domains,
        routes,
        headers,
    })
}

fn route(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<Route> {
    let mut o = f.obj()?.unsupported(&[
        "metadata",
        "decorator",
        "tracing",
        "per_request_buffer_limit_bytes",
        "stat_prefix",
        "filter_action",
        "non_forwarding_action",
        "request_body_buffer_limit",
    ]);
    let name = o.get("name").and_then(|g| g.str()).unwrap_or_default();
    let matcher = o.req("match").and_then(|g| route_match(&g));
    let action = match o.one_of(&["route", "direct_response", "redirect"]) {
        Some(("route", g)) => forward_action(&g, refs).map(RouteAction::Forward),
        Some(("direct_response", g)) => direct_response(&g),
        Some((_, g)) => redirect(&g).map(RouteAction::Redirect),
        None => {
            o.error("one of \"route\", \"redirect\" or \"direct_response\" is required");
            None
        }
    };
    let headers = header_mutations(&mut o);
    let pfc = per_filter_config(&mut o);
    o.finish();
    Some(Route {
        name,
        matcher: matcher?,
        action: action?,
        headers,
        per_filter_config: (!pfc.is_empty()).then(|| Arc::new(pfc)),
    })
}

fn regex(f: &Field<'_>) -> Option<Regex> {
    let mut o = f.obj()?;
    let r = o.req("regex");
    if let Some(g) = o.get("google_re2") {
        let _ = g
            .obj()
            .map(|o| o.unsupported(&["max_program_size"]).finish());
    }
    o.finish();
    let r = r?;
    let text = r.str()?;
    match Regex::new(&text) {
        Ok(re) => Some(re),
        Err(e) => {
            r.error(format!("invalid regex: {e}"));
            None
        }
    }
}

pub(crate) fn route_match(f: &Field<'_>) -> Option<RouteMatch> {
    let mut o = f.obj()?.unsupported(&[
        "connect_matcher",
        "path_match_policy",
        "runtime_fraction",
        "tls_context",
        "dynamic_metadata",
        "filter_state",
        "cel_expr",
    ]);
    let path = match o.one_of(&["prefix", "path", "safe_regex", "path_separated_prefix"]) {
        Some(("prefix", g)) => g.str().map(PathMatch::Prefix),
        Some(("path", g)) => g.str().map(PathMatch::Path),
        Some(("safe_regex", g)) => regex(&g).map(PathMatch::Regex),
        Some((_, g)) => g.str().and_then(|s| {
            if !s.starts_with('/') || (s.len() > 1 && s.ends_with('/')) || s.contains(['?', '#']) {
                g.error("path_separated_prefix must start with '/', must not end with '/' and must not contain '?' or '#'");
                None
            } else {
                Some(PathMatch::PathSeparatedPrefix(s))
            }
        }),
        None => {
            o.error("one of \"prefix\", \"path\", \"safe_regex\" or \"path_separated_prefix\" is required");
            None
        }
    };
    let case_sensitive = o
        .get("case_sensitive")
        .and_then(|g| g.bool())
        .unwrap_or(true);
    let headers = o
        .get("headers")
        .map(|g| g.seq().iter().filter_map(header_matcher).collect())
        .unwrap_or_default();
    let query_parameters = o
        .get("query_parameters")
        .map(|g| g.seq().iter().filter_map(query_matcher).collect())
        .unwrap_or_default();
    let grpc = match o.get("grpc") {
        Some(g) => {
            if let Some(go) = g.obj() {
                go.finish();
            }
            true
        }
        None => o.has("grpc"),
    };
    o.finish();
    Some(RouteMatch {
        path: path?,
        case_sensitive,
        headers,
        query_parameters,
        grpc,
    })
}

pub(crate) fn string_matcher(f: &Field<'_>) -> Option<StringMatcher> {
    let mut o = f.obj()?;
    let kind = match o.one_of(&["exact", "prefix", "suffix", "contains", "safe_regex"]) {
        Some(("exact", g)) => g.str().map(StringMatch::Exact),
        Some(("prefix", g)) => g.str().map(StringMatch::Prefix),
        Some(("suffix", g)) => g.str().map(StringMatch::Suffix),
        Some(("contains", g)) => g.str().map(StringMatch::Contains),
        Some((_, g)) => regex(&g).map(StringMatch::Regex),
        None => {
            o.error("one of \"exact\", \"prefix\", \"suffix\", \"contains\" or \"safe_regex\" is required");
            None
        }
    };
    let ignore_case = o.get("ignore_case").and_then(|g| g.bool()).unwrap_or(false);
    o.finish();
    Some(StringMatcher {
        kind: kind?,
        ignore_case,
    })
}

pub(crate) fn header_matcher(f: &Field<'_>) -> Option<HeaderMatcher> {
    let mut o = f.obj()?.unsupported(&["treat_missing_header_as_empty"]);
    let name = o.req("name");
    let kind = match o.one_of(&[
        "string_match",
        "exact_match",
        "safe_regex_match",
        "prefix_match",
        "suffix_match",
        "contains_match",
        "present_match",
        "range_match",
    ]) {
        Some(("string_match", g)) => string_matcher(&g).map(HeaderMatch::String),
        Some(("range_match", g)) => {
            let mut r = g.obj()?;
            let start = r.req("start").and_then(|s| s.int::<i64>("an integer"));
            let end = r.req("end").and_then(|s| s.int::<i64>("an integer"));
            r.finish();
            Some(HeaderMatch::Range(start?, end?))
        }
        Some(("present_match", g)) => g.bool().map(HeaderMatch::Present),
        Some(("safe_regex_match", g)) => regex(&g).map(|r| {
            HeaderMatch::String(StringMatcher {
                kind: StringMatch::Regex(r),
                ignore_case: false,
            })
        }),
        Some((k, g)) => g.str().map(|s| {
            let kind = match k {
                "exact_match" => StringMatch::Exact(s),
                "prefix_match" => StringMatch::Prefix(s),
                "suffix_match" => StringMatch::Suffix(s),
                _ => StringMatch::Contains(s),
            };
            HeaderMatch::String(StringMatcher {
                kind,
                ignore_case: false,
            })
        }),
        // Envoy: no match specifier means "present".
        None => Some(HeaderMatch::Present(true)),
    };
    let invert = o
        .get("invert_match")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    o.finish();
    let name_field = name?;
    let raw = name_field.str()?;
    let (name, pseudo) = header_or_pseudo(&name_field, &raw)?;
    Some(HeaderMatcher {
        name,
        pseudo,
        kind: kind?,
        invert,
    })
}

fn query_matcher(f: &Field<'_>) -> Option<QueryParameterMatcher> {
    let mut o = f.obj()?;
    let name = o.req("name").and_then(|g| g.str());
    let matcher = match o.one_of(&["string_match", "present_match"]) {
        Some(("string_match", g)) => Some(string_matcher(&g)),
        Some((_, g)) => {
            if g.bool() == Some(false) {
                g.error("present_match: false is not meaningful; omit the matcher");
            }
            None
        }
        None => None,
    };
    o.finish();
    let matcher = match matcher {
        Some(m) => Some(m?),
        None => None,
    };
    Some(QueryParameterMatcher {
        name: name?,
        matcher,
    })
}

fn forward_action(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<ForwardAction> {
    let mut o = f.obj()?.unsupported(&[
        "cluster_specifier_plugin",
        "inline_cluster_specifier_plugin",
        "metadata_match",
        "path_rewrite_policy",
        "host_rewrite_header",
        "host_rewrite_path_regex",
        "append_x_forwarded_host",
        "idle_timeout",
        "early_data_policy",
        "retry_policy",
        "retry_policy_typed_config",
        "request_mirror_policies",
        "priority",
        "rate_limits",
        "include_vh_rate_limits",
        "cors",
        "max_grpc_timeout",
        "grpc_timeout_offset",
        "upgrade_configs",
        "internal_redirect_policy",
        "internal_redirect_action",
        "max_internal_redirects",
        "hedge_policy",
        "max_stream_duration",
        "auto_host_rewrite_header",
        "host_rewrite_path_regex",
    ]);
    let cluster = match o.one_of(&["cluster", "cluster_header", "weighted_clusters"]) {
        Some(("cluster", g)) => g.str().map(|name| {
            refs.push(ClusterRef {
                name: name.clone(),
                path: g.path().to_string(),
                pos: g.pos(),
                needs_addresses: false,
            });
            ClusterSpecifier::Cluster(name)
        }),
        Some(("cluster_header", g)) => header_name(&g).map(ClusterSpecifier::Header),
        Some((_, g)) => weighted_clusters(&g, refs, true),
        None => {
            o.error("one of \"cluster\", \"cluster_header\" or \"weighted_clusters\" is required");
            None
        }
    };
    let timeout = o
        .get("timeout")
        .map(|g| g.duration())
        .unwrap_or(Some(Duration::from_secs(15)));
    let prefix_rewrite = o.get("prefix_rewrite").and_then(|g| g.str());
    let regex_rewrite = match o.get("regex_rewrite") {
        Some(g) => {
            let mut ro = g.obj()?;
            let pattern = ro.req("pattern").and_then(|p| regex(&p));
            let sub = ro.req("substitution").and_then(|s| s.str());
            ro.finish();
            // RE2 substitutions use \1; the regex crate uses ${1}.
            Some((pattern?, re2_substitution(&sub?)))
        }
        None => None,
    };
    if prefix_rewrite.is_some() && regex_rewrite.is_some() {
        o.error("only one of \"prefix_rewrite\" and \"regex_rewrite\" may be set");
    }
    let host_rewrite = match o.one_of(&["host_rewrite_literal", "auto_host_rewrite"]) {
        Some(("host_rewrite_literal", g)) => {
            let s = g.str()?;
            match HeaderValue::from_str(&s) {
                Ok(v) => HostRewrite::Literal(v),
                Err(_) => {
                    g.error("invalid host");
                    return None;
                }
            }
        }
        Some((_, g)) => {
            if g.bool() == Some(true) {
                HostRewrite::Auto
            } else {
                HostRewrite::None
            }
        }
        None => HostRewrite::None,
    };
    let cluster_not_found_response_code = o
        .get("cluster_not_found_response_code")
        .and_then(|g| {
            g.enumeration(
                &["SERVICE_UNAVAILABLE", "NOT_FOUND", "INTERNAL_SERVER_ERROR"],
                &[],
            )
        })
        .map(|c| match c {
            "NOT_FOUND" => StatusCode::NOT_FOUND,
            "INTERNAL_SERVER_ERROR" => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        })
        .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    let hash_policy = o.get("hash_policy").map(|g| {
        // Every entry is read, so that all their errors are reported.
        let all: Vec<Option<Option<HashPolicy>>> = g.seq().iter().map(hash_policy).collect();
        all.into_iter()
            .collect::<Option<Vec<_>>>()
            .map(|v| v.into_iter().flatten().collect::<Vec<_>>())
    });
    let hash_policy = hash_policy.unwrap_or(Some(Vec::new()));
    o.finish();
    let timeout = timeout?;
    Some(ForwardAction {
        cluster: cluster?,
        timeout_header: http::HeaderValue::from(timeout.as_millis() as u64),
        timeout,
        prefix_rewrite,
        regex_rewrite,
        host_rewrite,
        cluster_not_found_response_code,
        hash_policy: hash_policy?,
    })
}

/// One `RouteAction.HashPolicy`: `None` for an error, `Some(None)` for
/// `connection_properties {source_ip: false}`, which Envoy drops.
fn hash_policy(f: &Field<'_>) -> Option<Option<HashPolicy>> {
    let mut o = f.obj()?;
    let kind = match o.one_of(&[
        "header",
        "cookie",
        "connection_properties",
        "query_parameter",
        "filter_state",
    ]) {
        Some(("header", g)) => {
            let mut h = g.obj()?.unsupported(&["regex_rewrite"]);
            let name = h.req("header_name");
            h.finish();
            hash_header(&name?)
        }
        Some(("cookie", g)) => {
            // Generating the cookie (`ttl`) would need a Set-Cookie on the response.
            let mut c = g.obj()?.unsupported(&["ttl", "attributes"]);
            let name = c.req("name").and_then(|n| n.non_empty_str());
            // Envoy uses `path` only for a generated cookie, which legate refuses.
            let _ = c.get("path").and_then(|p| p.str());
            c.finish();
            name.map(|n| Some(HashPolicyKind::Cookie(n)))
        }
        Some(("connection_properties", g)) => {
            let mut c = g.obj()?;
            let on = c.get("source_ip").and_then(|b| b.bool()).unwrap_or(false);
            c.finish();
            Some(on.then_some(HashPolicyKind::SourceIp))
        }
        Some(("query_parameter", g)) => {
            let mut q = g.obj()?;
            let name = q.req("name").and_then(|n| n.non_empty_str());
            q.finish();
            name.map(|n| Some(HashPolicyKind::QueryParameter(n)))
        }
        Some((_, g)) => {
            g.error("hash_policy filter_state is not supported by legate");
            None
        }
        None => {
            o.error("one of \"header\", \"cookie\", \"connection_properties\", \"query_parameter\" or \"filter_state\" is required");
            None
        }
    };
    let terminal = o.get("terminal").and_then(|g| g.bool()).unwrap_or(false);
    o.finish();
    Some(kind?.map(|kind| HashPolicy { kind, terminal }))
}

fn hash_header(f: &Field<'_>) -> Option<Option<HashPolicyKind>> {
    let raw = f.non_empty_str()?;
    let (name, pseudo) = header_or_pseudo(f, &raw)?;
    Some(Some(HashPolicyKind::Header { name, pseudo }))
}

/// A header name as routes name one: a regular header, or one of the
/// pseudo-headers `:path`, `:method`, `:authority`, `:scheme` (then the name is a
/// placeholder and the pseudo-header says what is read).
fn header_or_pseudo(f: &Field<'_>, raw: &str) -> Option<(HeaderName, Option<&'static str>)> {
    let pseudo = match raw.to_ascii_lowercase().as_str() {
        ":path" => Some(":path"),
        ":method" => Some(":method"),
        ":authority" => Some(":authority"),
        ":scheme" => Some(":scheme"),
        s if s.starts_with(':') => {
            f.error(format!("unsupported pseudo-header \"{s}\""));
            return None;
        }
        _ => None,
    };
    let name = match pseudo {
        Some(_) => http::header::HOST,
        None => header_name(f)?,
    };
    Some((name, pseudo))
}

fn re2_substitution(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.peek() {
                Some(d) if d.is_ascii_digit() => {
                    out.push_str(&format!("${{{d}}}"));
                    chars.next();
                }
                Some('\\') => {
                    out.push('\\');
                    chars.next();
                }
                _ => out.push('\\'),
            },
            '$' => out.push_str("$$"),
            c => out.push(c),
        }
    }
    out
}

fn direct_response(f: &Field<'_>) -> Option<RouteAction> {
    let mut o = f.obj()?;
    let status = o.req("status").and_then(|g| {
        let v = g.u32()?;
        match StatusCode::from_u16(v as u16) {
            Ok(s) if (200..600).contains(&v) => Some(s),
            _ => {
                g.error("status must be between 200 and 599");
                None
            }
        }
    });
    let body = match o.get("body") {
        Some(g) => {
            let mut b = g.obj()?.unsupported(&["filename", "environment_variable"]);
            let v = match b.one_of(&["inline_string", "inline_bytes"]) {
                Some(("inline_string", s)) => s.str().map(bytes::Bytes::from),
                Some((_, s)) => s.str().and_then(|t| match base64_decode(&t) {
                    Some(v) => Some(bytes::Bytes::from(v)),
                    None => {
                        s.error("inline_bytes must be base64");
                        None
                    }
                }),
                None => Some(bytes::Bytes::new()),
            };
            b.finish();
            Some(v?)
        }
        None => None,
    };
    o.finish();
    Some(RouteAction::DirectResponse {
        status: status?,
        body,
    })
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn redirect(f: &Field<'_>) -> Option<Redirect> {
    let mut o = f.obj()?.unsupported(&["regex_rewrite"]);
    let mut r = Redirect {
        response_code: 301,
        ..Default::default()
    };
    match o.one_of(&["scheme_redirect", "https_redirect"]) {
        Some(("scheme_redirect", g)) => r.scheme = g.str().map(|s| s.to_ascii_lowercase()),
        Some((_, g)) if g.bool() == Some(true) => r.scheme = Some("https".into()),
        _ => {}
    }
    r.host = o.get("host_redirect").and_then(|g| g.str());
    r.port = o
        .get("port_redirect")
        .and_then(|g| g.int::<u16>("a port number"));
    match o.one_of(&["path_redirect", "prefix_rewrite"]) {
        Some(("path_redirect", g)) => r.path = g.str(),
        Some((_, g)) => r.prefix_rewrite = g.str(),
        None => {}
    }
    if let Some(g) = o.get("response_code") {
        r.response_code = match g.enumeration(
            &[
                "MOVED_PERMANENTLY",
                "FOUND",
                "SEE_OTHER",
                "TEMPORARY_REDIRECT",
                "PERMANENT_REDIRECT",
            ],
            &[],
        )? {
            "FOUND" => 302,
            "SEE_OTHER" => 303,
            "TEMPORARY_REDIRECT" => 307,
            "PERMANENT_REDIRECT" => 308,
            _ => 301,
        };
    }
    r.strip_query = o.get("strip_query").and_then(|g| g.bool()).unwrap_or(false);
    o.finish();
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn re2_substitutions_translate() {
        assert_eq!(re2_substitution("/v2/\\1/x"), "/v2/${1}/x");
        assert_eq!(re2_substitution("$5"), "$$5");
    }

    #[test]
    fn base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
    }
}
