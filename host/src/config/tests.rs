use super::*;

fn hcm_config(hcm_extra: &str, routes: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: l
    address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
{hcm_extra}
          route_config:
            virtual_hosts:
            - name: v
              domains: ["*"]
              routes:
{routes}
          http_filters:
          - name: envoy.filters.http.router
  clusters:
  - name: c
    load_assignment:
      cluster_name: c
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: 2}}}}}}}}]}}]
"#
    )
}

const ROUTE: &str = "              - match: {prefix: \"/\"}\n                route: {cluster: c}";

fn errors(yaml: &str) -> Vec<String> {
    match load_str(yaml, "t") {
        Ok(_) => Vec::new(),
        Err(e) => e.errors.iter().map(|e| e.to_string()).collect(),
    }
}

fn hcm(b: &Bootstrap) -> &HttpConnectionManager {
    match &b.listeners[0].filter_chains[0].filters[0] {
        NetworkFilter::HttpConnectionManager(h) => h,
        other => panic!("{other:?}"),
    }
}

#[test]
fn defaults_match_envoy() {
    let b = load_str(&hcm_config("", ROUTE), "t").unwrap();
    let h = hcm(&b);
    assert_eq!(h.max_request_headers_kb, 60);
    assert_eq!(
        h.stream_idle_timeout,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(h.request_timeout, None);
    assert!(h.generate_request_id);
    assert!(!h.use_remote_address);
    assert_eq!(h.codec, Codec::Auto);
    let c = &b.clusters[0];
    assert_eq!(c.connect_timeout, std::time::Duration::from_secs(5));
    assert_eq!(c.kind, DiscoveryType::Static);
    assert!(!c.http2);
    let RouteAction::Forward(f) = &h.route_config.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(f.timeout, std::time::Duration::from_secs(15));
}

#[test]
fn typed_struct_is_unwrapped() {
    let yaml = hcm_config("", ROUTE).replace(
        "          - name: envoy.filters.http.router\n",
        "          - name: envoy.filters.http.router\n            typed_config:\n              \"@type\": type.googleapis.com/udpa.type.v1.TypedStruct\n              type_url: type.googleapis.com/envoy.extensions.filters.http.router.v3.Router\n              value: {}\n",
    );
    assert_eq!(errors(&yaml), Vec::<String>::new());
}

#[test]
fn filter_named_by_type_only() {
    let yaml = hcm_config("", ROUTE).replace(
        "      - name: envoy.filters.network.http_connection_manager\n",
        "      - typed_config_first: x\n",
    );
    // Unknown key reported, typed_config still read.
    let e = errors(&yaml);
    assert!(
        e.iter()
            .any(|m| m.contains("unknown field \"typed_config_first\"")),
        "{e:?}"
    );
}

#[test]
fn unsupported_filters_say_so() {
    let yaml = hcm_config("", ROUTE).replace(
        "          http_filters:\n",
        "          http_filters:\n          - name: envoy.filters.http.lua\n",
    );
    let e = errors(&yaml);
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(
        e[0].contains("HTTP filter \"envoy.filters.http.lua\" is not supported by legate yet"),
        "{e:?}"
    );
}

#[test]
fn header_value_formats_are_checked() {
    let routes = format!(
        "{ROUTE}\n                request_headers_to_add: [{{header: {{key: x-a, value: \"%NOPE%\"}}}}]"
    );
    let e = errors(&hcm_config("", &routes));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains("unsupported command operator %NOPE%"),
        "{e:?}"
    );
}

#[test]
fn bad_regex_is_reported_where_it_is() {
    let routes =
        "              - match: {safe_regex: {regex: \"([\"}}\n                route: {cluster: c}";
    let e = errors(&hcm_config("", routes));
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("safe_regex.regex: invalid regex"), "{e:?}");
}

#[test]
fn one_of_conflicts() {
    let routes =
        "              - match: {prefix: \"/\", path: \"/x\"}\n                route: {cluster: c}";
    let e = errors(&hcm_config("", routes));
    assert_eq!(e.len(), 1);
    assert!(
        e[0].contains("only one of \"prefix\" and \"path\" may be set"),
        "{e:?}"
    );
}

#[test]
fn validate_clusters_false_allows_unknown_clusters() {
    let routes =
        "              - match: {prefix: \"/\"}\n                route: {cluster: elsewhere}";
    let yaml = hcm_config("", routes);
    assert_eq!(errors(&yaml).len(), 1);
    let yaml = yaml.replace(
        "          route_config:\n",
        "          route_config:\n            validate_clusters: false\n",
    );
    assert_eq!(errors(&yaml), Vec::<String>::new());
}

#[test]
fn json_configs_load_too() {
    let json = r#"{"static_resources": {"clusters": [{"name": "c", "connect_timeout": "0.5s"}]}}"#;
    let b = load_str(json, "t").unwrap();
    assert_eq!(
        b.clusters[0].connect_timeout,
        std::time::Duration::from_millis(500)
    );
}

#[test]
fn duplicate_names_are_errors() {
    let yaml = hcm_config("", ROUTE).replace("  clusters:\n", "  clusters:\n  - name: c\n");
    let e = errors(&yaml);
    assert!(
        e.iter().any(|m| m.contains("duplicate cluster name \"c\"")),
        "{e:?}"
    );
}

#[test]
fn internal_address_cidrs() {
    let yaml = hcm_config(
        "          internal_address_config: {cidr_ranges: [{address_prefix: 10.0.0.0, prefix_len: 8}]}",
        ROUTE,
    );
    let b = load_str(&yaml, "t").unwrap();
    let h = hcm(&b);
    assert!(h.is_internal("10.1.2.3".parse().unwrap()));
    assert!(!h.is_internal("11.0.0.1".parse().unwrap()));
}

#[test]
fn truncated_and_mangled_configs_never_panic() {
    let text = include_str!("../../../examples/quickstart/legate.yaml");
    let mut refused = 0;
    for i in (0..text.len()).filter(|i| text.is_char_boundary(*i)) {
        // Cut anywhere, and also splice the tail onto the wrong line.
        if load_str(&text[..i], "t").is_err() {
            refused += 1;
        }
        let mangled = format!("{}{}", &text[..i], text[i..].replacen(':', "", 1));
        let _ = load_str(&mangled, "t");
    }
    assert!(
        refused > text.len() / 2,
        "most truncations are invalid configs"
    );
}

fn with_lb(lb: &str) -> String {
    hcm_config("", ROUTE).replace(
        "  - name: c\n    load_assignment:",
        &format!("  - name: c\n{lb}\n    load_assignment:"),
    )
}

#[test]
fn lb_policies_and_their_defaults() {
    let policy = |lb: &str| load_str(&with_lb(lb), "t").unwrap().clusters[0].lb_policy;
    assert_eq!(policy("    connect_timeout: 1s"), LbPolicy::RoundRobin);
    assert_eq!(policy("    lb_policy: RANDOM"), LbPolicy::Random);
    assert_eq!(
        policy("    lb_policy: RING_HASH"),
        LbPolicy::RingHash(RingHashConfig {
            minimum_ring_size: 1024,
            maximum_ring_size: 8_388_608,
            hash_function: RingHashFunction::XxHash,
        })
    );
    assert_eq!(
        policy(
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: {minimum_ring_size: 16, maximum_ring_size: \"64\", hash_function: MURMUR_HASH_2}"
        ),
        LbPolicy::RingHash(RingHashConfig {
            minimum_ring_size: 16,
            maximum_ring_size: 64,
            hash_function: RingHashFunction::MurmurHash2,
        })
    );
    assert_eq!(
        policy("    lb_policy: MAGLEV"),
        LbPolicy::Maglev { table_size: 65537 }
    );
    assert_eq!(
        policy("    lb_policy: MAGLEV\n    maglev_lb_config: {table_size: 5000011}"),
        LbPolicy::Maglev {
            table_size: 5_000_011
        }
    );
}

#[test]
fn lb_config_errors_are_precise() {
    let err = |lb: &str| {
        // Only the one error: the cluster is still known to the route.
        let e = errors(&with_lb(lb));
        assert_eq!(e.len(), 1, "{e:?}");
        e[0].clone()
    };
    let cases = [
        (
            "    lb_policy: MAGLEV\n    maglev_lb_config: {table_size: 1000}",
            "static_resources.clusters[0].maglev_lb_config.table_size: The table size of maglev must be prime number (found 1000)",
        ),
        (
            "    lb_policy: MAGLEV\n    maglev_lb_config: {table_size: 1}",
            "The table size of maglev must be prime number (found 1)",
        ),
        (
            "    lb_policy: MAGLEV\n    maglev_lb_config: {table_size: 5000111}",
            "maglev_lb_config.table_size: value must be less than or equal to 5000011 (found 5000111)",
        ),
        (
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: {minimum_ring_size: 2000, maximum_ring_size: 1000}",
            "static_resources.clusters[0].ring_hash_lb_config: ring hash: minimum_ring_size (2000) > maximum_ring_size (1000)",
        ),
        (
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: {maximum_ring_size: 9000000}",
            "ring_hash_lb_config.maximum_ring_size: value must be less than or equal to 8388608 (found 9000000)",
        ),
        (
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: {hash_function: CITY_HASH}",
            "ring_hash_lb_config.hash_function: unknown value \"CITY_HASH\" (expected one of: XX_HASH, MURMUR_HASH_2)",
        ),
        (
            "    lb_policy: RING_HASH\n    ring_hash_lb_config: {hash_balance_factor: 150}",
            "ring_hash_lb_config.hash_balance_factor: unknown field \"hash_balance_factor\"",
        ),
        (
            "    ring_hash_lb_config: {minimum_ring_size: 10}",
            "static_resources.clusters[0].ring_hash_lb_config: ring_hash_lb_config applies only to lb_policy: RING_HASH (lb_policy is ROUND_ROBIN)",
        ),
        (
            "    lb_policy: RING_HASH\n    maglev_lb_config: {table_size: 7}",
            "maglev_lb_config applies only to lb_policy: MAGLEV (lb_policy is RING_HASH)",
        ),
        (
            "    lb_policy: MAGLEV\n    ring_hash_lb_config: {}\n    maglev_lb_config: {}",
            "only one of \"ring_hash_lb_config\" and \"maglev_lb_config\" may be set",
        ),
        (
            "    lb_policy: LEAST_REQUEST",
            "static_resources.clusters[0].lb_policy: value \"LEAST_REQUEST\" is not supported by legate (supported: ROUND_ROBIN, RANDOM, RING_HASH, MAGLEV)",
        ),
        (
            "    lb_policy: MAGLEV\n    common_lb_config: {consistent_hashing_lb_config: {hash_balance_factor: 150}}",
            "static_resources.clusters[0].common_lb_config: field \"common_lb_config\" is not supported by legate",
        ),
    ];
    for (lb, want) in cases {
        let e = err(lb);
        assert!(e.contains(want), "{lb}\n got: {e}\nwant: {want}");
    }
}

fn hash_policy_yaml(policy: &str) -> String {
    let routes = format!("{ROUTE}\n                  hash_policy: {policy}").replace(
        "route: {cluster: c}",
        "route:\n                  cluster: c",
    );
    hcm_config("", &routes)
}

#[test]
fn route_hash_policies() {
    let yaml = hash_policy_yaml(
        "[{header: {header_name: X-User}}, {cookie: {name: s, path: /}, terminal: true}, {query_parameter: {name: u}}, {connection_properties: {source_ip: true}}, {connection_properties: {source_ip: false}}, {header: {header_name: \":authority\"}}]",
    );
    let b = load_str(&yaml, "t").unwrap();
    let RouteAction::Forward(f) = &hcm(&b).route_config.virtual_hosts[0].routes[0].action else {
        panic!("not a forward route");
    };
    let p = &f.hash_policy;
    assert_eq!(p.len(), 5, "source_ip: false adds no policy, as in Envoy");
    assert!(
        matches!(&p[0].kind, HashPolicyKind::Header { name, pseudo: None } if name == "x-user")
    );
    assert!(!p[0].terminal);
    assert!(matches!(&p[1].kind, HashPolicyKind::Cookie(n) if n == "s"));
    assert!(p[1].terminal);
    assert!(matches!(&p[2].kind, HashPolicyKind::QueryParameter(n) if n == "u"));
    assert!(matches!(p[3].kind, HashPolicyKind::SourceIp));
    assert!(matches!(
        p[4].kind,
        HashPolicyKind::Header {
            pseudo: Some(":authority"),
            ..
        }
    ));
}

#[test]
fn route_hash_policy_errors() {
    let cases = [
        (
            "[{filter_state: {key: k}}]",
            "hash_policy[0].filter_state: hash_policy filter_state is not supported by legate",
        ),
        (
            "[{cookie: {name: s, ttl: 10s}}]",
            "hash_policy[0].cookie.ttl: field \"ttl\" is not supported by legate",
        ),
        (
            "[{header: {header_name: x, regex_rewrite: {pattern: {regex: a}, substitution: b}}}]",
            "hash_policy[0].header.regex_rewrite: field \"regex_rewrite\" is not supported by legate",
        ),
        (
            "[{terminal: true}]",
            "hash_policy[0]: one of \"header\", \"cookie\", \"connection_properties\", \"query_parameter\" or \"filter_state\" is required",
        ),
        (
            "[{header: {header_name: x}, cookie: {name: c}}]",
            "only one of \"header\" and \"cookie\" may be set",
        ),
        (
            "[{query_parameter: {name: \"\"}}]",
            "hash_policy[0].query_parameter.name: must not be empty",
        ),
        (
            "[{header: {header_name: \":status\"}}]",
            "unsupported pseudo-header \":status\"",
        ),
    ];
    for (policy, want) in cases {
        let e = errors(&hash_policy_yaml(policy));
        assert_eq!(e.len(), 1, "{policy}: {e:?}");
        assert!(
            e[0].contains(want),
            "{policy}\n got: {}\nwant: {want}",
            e[0]
        );
    }
}
