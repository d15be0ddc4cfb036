//! Clusters and their endpoints.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::model::*;
use super::walk::{Field, Obj};
use super::{names, typed_config};

pub(crate) fn cluster(f: &Field<'_>) -> Option<Cluster> {
    let mut o = f.obj()?.unsupported(&[
        "eds_cluster_config",
        "cluster_type",
        "circuit_breakers",
        "outlier_detection",
        "health_checks",
        "transport_socket",
        "transport_socket_matches",
        "common_lb_config",
        "least_request_lb_config",
        "round_robin_lb_config",
        "load_balancing_policy",
        "upstream_connection_options",
        "per_connection_buffer_limit_bytes",
        "max_requests_per_connection",
        "common_http_protocol_options",
        "http_protocol_options",
        "upstream_http_protocol_options",
        "dns_resolvers",
        "dns_resolution_config",
        "typed_dns_resolver_config",
        "use_tcp_for_dns_lookups",
        "respect_dns_ttl",
        "dns_failure_refresh_rate",
        "dns_jitter",
        "wait_for_warm_on_init",
        "cleanup_interval",
        "upstream_bind_config",
        "lb_subset_config",
        "metadata",
        "protocol_selection",
        "close_connections_on_host_health_failure",
        "ignore_health_on_host_removal",
        "filters",
        "track_timeout_budgets",
        "track_cluster_stats",
        "preconnect_policy",
        "connection_pool_per_downstream_connection",
        "alt_stat_name",
        "lrs_server",
        "lrs_report_endpoint_metrics",
        "upstream_config",
        "hosts",
    ]);
    let name = o.req("name").and_then(|g| g.str());
    let kind = o
        .get("type")
        .and_then(|g| {
            g.enumeration(
                &["STATIC", "STRICT_DNS", "LOGICAL_DNS"],
                &["EDS", "ORIGINAL_DST"],
            )
        })
        .map(|t| match t {
            "STRICT_DNS" => DiscoveryType::StrictDns,
            "LOGICAL_DNS" => DiscoveryType::LogicalDns,
            _ => DiscoveryType::Static,
        })
        .unwrap_or(DiscoveryType::Static);
    let connect_timeout = o
        .get("connect_timeout")
        .and_then(|g| g.duration())
        .unwrap_or(Duration::from_secs(5));
    let lb_policy = lb_policy_of(&mut o);
    let dns_refresh_rate = o
        .get("dns_refresh_rate")
        .and_then(|g| g.duration())
        .unwrap_or(Duration::from_secs(5));
    let dns_lookup_family = o
        .get("dns_lookup_family")
        .and_then(|g| g.enumeration(&["AUTO", "V4_ONLY", "V6_ONLY", "V4_PREFERRED", "ALL"], &[]))
        .map(|v| match v {
            "V4_ONLY" => DnsLookupFamily::V4Only,
            "V6_ONLY" => DnsLookupFamily::V6Only,
            "V4_PREFERRED" => DnsLookupFamily::V4Preferred,
            "ALL" => DnsLookupFamily::All,
            _ => DnsLookupFamily::Auto,
        })
        .unwrap_or(DnsLookupFamily::Auto);
    let mut http2 = false;
    if let Some(g) = o.get("http2_protocol_options") {
        http2_options(&g);
        http2 = true;
    }
    let mut protocol_options = FilterProtocolOptions::default();
    if let Some(g) = o.get("typed_extension_protocol_options") {
        for (key, v) in g.map_entries() {
            if key == names::REDIS_PROXY {
                if let Some(p) = super::parse_redis::protocol_options(&v) {
                    protocol_options.insert(names::REDIS_PROXY, p);
                }
                continue;
            }
            if key != names::HTTP_PROTOCOL_OPTIONS {
                v.error(format!(
                    "unsupported protocol options \"{key}\" (supported: {}, {})",
                    names::HTTP_PROTOCOL_OPTIONS,
                    names::REDIS_PROXY
                ));
                continue;
            }
            if let Some(h2) = http_protocol_options(&v) {
                http2 |= h2;
            }
        }
    }
    let endpoints = o
        .get("load_assignment")
        .and_then(|g| load_assignment(&g, kind))
        .unwrap_or_default();
    o.finish();
    if kind == DiscoveryType::LogicalDns && endpoints.len() > 1 {
        f.error("LOGICAL_DNS clusters must have exactly one endpoint");
    }
    Some(Cluster {
        name: name?,
        kind,
        connect_timeout,
        endpoints,
        http2,
        dns_refresh_rate,
        dns_lookup_family,
        protocol_options,
        // A refused policy is reported already; the cluster stays, so that routes
        // to it do not add "unknown cluster" errors.
        lb_policy: lb_policy.unwrap_or(LbPolicy::RoundRobin),
    })
}

/// Envoy's upper bound on ring sizes (`RingHashLbConfig`'s validation rules).
const MAX_RING_SIZE: u64 = 8_388_608;
/// Envoy's upper bound on the Maglev table (`MaglevLbConfig.table_size`).
const MAX_MAGLEV_TABLE_SIZE: u64 = 5_000_011;

/// `lb_policy` and the `*_lb_config` that goes with it.
fn lb_policy_of(o: &mut Obj<'_>) -> Option<LbPolicy> {
    let policy = match o.get("lb_policy") {
        Some(g) => g.enumeration(
            &["ROUND_ROBIN", "RANDOM", "RING_HASH", "MAGLEV"],
            &[
                "LEAST_REQUEST",
                "CLUSTER_PROVIDED",
                "LOAD_BALANCING_POLICY_CONFIG",
            ],
        ),
        None => Some("ROUND_ROBIN"),
    };
    // Read before bailing out, so that they are never reported as unknown.
    let ring = o.get("ring_hash_lb_config");
    let maglev = o.get("maglev_lb_config");
    let policy = policy?;
    if let (Some(_), Some(m)) = (&ring, &maglev) {
        // Both sit in Envoy's `lb_config` oneof.
        m.error("only one of \"ring_hash_lb_config\" and \"maglev_lb_config\" may be set");
        return None;
    }
    // Envoy silently ignores the config of another policy; legate refuses it.
    for (field, g, wants) in [
        ("ring_hash_lb_config", &ring, "RING_HASH"),
        ("maglev_lb_config", &maglev, "MAGLEV"),
    ] {
        if let Some(g) = g
            && policy != wants
        {
            g.error(format!(
                "{field} applies only to lb_policy: {wants} (lb_policy is {policy})"
            ));
            return None;
        }
    }
    Some(match policy {
        "RANDOM" => LbPolicy::Random,
        "RING_HASH" => LbPolicy::RingHash(match ring {
            Some(g) => ring_hash_lb_config(&g)?,
            None => RingHashConfig {
                minimum_ring_size: 1024,
                maximum_ring_size: MAX_RING_SIZE,
                hash_function: RingHashFunction::XxHash,
            },
        }),
        "MAGLEV" => LbPolicy::Maglev {
            table_size: match maglev {
                Some(g) => maglev_table_size(&g)?,
                None => 65537,
            },
        },
        _ => LbPolicy::RoundRobin,
    })
}

fn ring_size(g: &Field<'_>) -> Option<u64> {
    let v = g.u64()?;
    if v > MAX_RING_SIZE {
        // Envoy's proto validation, in its words.
        g.error(format!(
            "value must be less than or equal to {MAX_RING_SIZE} (found {v})"
        ));
        return None;
    }
    Some(v)
}

fn ring_hash_lb_config(f: &Field<'_>) -> Option<RingHashConfig> {
    let mut o = f.obj()?;
    let min = o.get("minimum_ring_size").map(|g| ring_size(&g));
    let max = o.get("maximum_ring_size").map(|g| ring_size(&g));
    let hash_function = o
        .get("hash_function")
        .map(|g| g.enumeration(&["XX_HASH", "MURMUR_HASH_2"], &[]));
    o.finish();
    let minimum_ring_size = min.unwrap_or(Some(1024))?;
    let maximum_ring_size = max.unwrap_or(Some(MAX_RING_SIZE))?;
    let hash_function = match hash_function.unwrap_or(Some("XX_HASH"))? {
        "MURMUR_HASH_2" => RingHashFunction::MurmurHash2,
        _ => RingHashFunction::XxHash,
    };
    if minimum_ring_size > maximum_ring_size {
        // Envoy's own words.
        f.error(format!(
            "ring hash: minimum_ring_size ({minimum_ring_size}) > maximum_ring_size ({maximum_ring_size})"
        ));
        return None;
    }
    Some(RingHashConfig {
        minimum_ring_size,
        maximum_ring_size,
        hash_function,
    })
}

fn maglev_table_size(f: &Field<'_>) -> Option<u64> {
    let mut o = f.obj()?;
    let size = o.get("table_size").map(|g| (g.u64(), g));
    o.finish();
    let Some((size, g)) = size else {
        return Some(65537);
    };
    let size = size?;
    if size > MAX_MAGLEV_TABLE_SIZE {
        g.error(format!(
            "value must be less than or equal to {MAX_MAGLEV_TABLE_SIZE} (found {size})"
        ));
        return None;
    }
    if !is_prime(size) {
        // Envoy's own words.
        g.error(format!(
            "The table size of maglev must be prime number (found {size})"
        ));
        return None;
    }
    Some(size)
}

fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    let mut d = 2u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 1;
    }
    true
}

fn http2_options(f: &Field<'_>) {
    if let Some(o) = f.obj() {
        // Every tuning knob of Http2ProtocolOptions is refused rather than ignored.
        o.unsupported(&[
            "hpack_table_size",
            "max_concurrent_streams",
            "initial_stream_window_size",
            "initial_connection_window_size",
            "allow_connect",
            "allow_metadata",
            "max_outbound_frames",
            "max_outbound_control_frames",
            "max_consecutive_inbound_frames_with_empty_payload",
            "max_inbound_priority_frames_per_stream",
            "max_inbound_window_update_frames_per_data_frame_sent",
            "stream_error_on_invalid_http_messaging",
            "override_stream_error_on_invalid_http_message",
            "custom_settings_parameters",
            "connection_keepalive",
            "use_oghttp2_codec",
            "max_metadata_size",
        ])
        .finish();
    }
}

/// Returns whether HTTP/2 is selected.
fn http_protocol_options(f: &Field<'_>) -> Option<bool> {
    let tc = typed_config(f)?;
    if tc.type_url != names::HTTP_PROTOCOL_OPTIONS_TYPE {
        f.error(format!(
            "expected \"@type\" {}, found \"{}\"",
            names::HTTP_PROTOCOL_OPTIONS_TYPE,
            tc.type_url
        ));
        return None;
    }
    let mut o = tc.obj.unsupported(&[
        "common_http_protocol_options",
        "upstream_http_protocol_options",
        "use_downstream_protocol_config",
        "auto_config",
        "http_filters",
        "header_validation_config",
        "outlier_detection",
    ]);
    let explicit = o.req("explicit_http_config");
    o.finish();
    let mut e = explicit?.obj()?;
    let choice = e.one_of(&[
        "http_protocol_options",
        "http2_protocol_options",
        "http3_protocol_options",
    ]);
    e.finish();
    match choice {
        Some(("http2_protocol_options", g)) => {
            http2_options(&g);
            Some(true)
        }
        Some(("http_protocol_options", g)) => {
            if let Some(o) = g.obj() {
                o.unsupported(&[
                    "allow_absolute_url",
                    "accept_http_10",
                    "default_host_for_http_10",
                    "header_key_format",
                    "enable_trailers",
                    "allow_chunked_length",
                    "override_stream_error_on_invalid_http_message",
                    "send_fully_qualified_url",
                    "use_balsa_parser",
                    "allow_custom_methods",
                ])
                .finish();
            }
            Some(false)
        }
        Some((_, g)) => {
            g.error("HTTP/3 upstreams are not supported by legate");
            None
        }
        None => None,
    }
}

fn load_assignment(f: &Field<'_>, kind: DiscoveryType) -> Option<Vec<Endpoint>> {
    let mut o = f.obj()?.unsupported(&["policy", "named_endpoints"]);
    let _ = o.get("cluster_name").and_then(|g| g.str());
    let mut out = Vec::new();
    if let Some(eps) = o.get("endpoints") {
        for loc in eps.seq() {
            let Some(lo) = loc.obj() else { continue };
            let mut lo = lo.unsupported(&[
                "priority",
                "load_balancing_weight",
                "metadata",
                "leds_cluster_locality_config",
                "proximity",
            ]);
            if let Some(l) = lo.get("locality")
                && let Some(mut lm) = l.obj()
            {
                let _ = lm.get("region");
                let _ = lm.get("zone");
                let _ = lm.get("sub_zone");
                lm.finish();
            }
            if let Some(lbs) = lo.get("lb_endpoints") {
                for lb in lbs.seq() {
                    if let Some(ep) = lb_endpoint(&lb, kind) {
                        out.push(ep);
                    }
                }
            }
            lo.finish();
        }
    }
    o.finish();
    Some(out)
}

fn lb_endpoint(f: &Field<'_>, kind: DiscoveryType) -> Option<Endpoint> {
    let mut o = f
        .obj()?
        .unsupported(&["health_status", "metadata", "endpoint_name"]);
    let weight = match o.get("load_balancing_weight") {
        Some(g) => match g.u32() {
            Some(0) => {
                g.error("load_balancing_weight must be at least 1");
                None
            }
            w => w,
        },
        None => Some(1),
    };
    let ep = o.req("endpoint");
    o.finish();
    let mut e = ep?
        .obj()?
        .unsupported(&["health_check_config", "additional_addresses"]);
    let _ = e.get("hostname").and_then(|g| g.str());
    let addr = e.req("address");
    e.finish();
    let address = endpoint_address(&addr?, kind)?;
    Some(Endpoint {
        address,
        weight: weight?,
    })
}

fn endpoint_address(f: &Field<'_>, kind: DiscoveryType) -> Option<EndpointAddress> {
    let mut o = f.obj()?.unsupported(&["pipe", "envoy_internal_address"]);
    let sa = o.req("socket_address");
    o.finish();
    let mut s = sa?
        .obj()?
        .unsupported(&["named_port", "resolver_name", "ipv4_compat"]);
    let addr = s.req("address");
    let port = s
        .req("port_value")
        .and_then(|g| g.int::<u16>("a port number (0-65535)"));
    if let Some(p) = s.get("protocol") {
        p.enumeration(&["TCP"], &["UDP"]);
    }
    s.finish();
    let addr_field = addr?;
    let host = addr_field.str()?;
    let port = port?;
    match host.parse::<IpAddr>() {
        Ok(ip) => Some(EndpointAddress::Ip(SocketAddr::new(ip, port))),
        Err(_) if kind != DiscoveryType::Static => Some(EndpointAddress::Dns { host, port }),
        Err(_) => {
            addr_field.error(format!(
                "\"{host}\" is not an IP address; STATIC clusters need IPs (use type: STRICT_DNS or LOGICAL_DNS for hostnames)"
            ));
            None
        }
    }
}
