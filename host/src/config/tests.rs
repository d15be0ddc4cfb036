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
        let mangled = format!("{}{}", &text[..i], &text[i..].replacen(':', "", 1));
        let _ = load_str(&mangled, "t");
    }
    assert!(
        refused > text.len() / 2,
        "most truncations are invalid configs"
    );
}
