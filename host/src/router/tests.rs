use super::*;
use crate::config::{self, NetworkFilter};

fn route_config(vhosts: &str) -> config::Bootstrap {
    let yaml = format!(
        r#"static_resources:
  listeners:
  - address: {{socket_address: {{address: 127.0.0.1, port_value: 1}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: s
          route_config:
            validate_clusters: false
            virtual_hosts:
{vhosts}
          http_filters:
          - name: envoy.filters.http.router
"#
    );
    config::load_str(&yaml, "t").unwrap_or_else(|e| panic!("{e}"))
}

fn rc(b: &config::Bootstrap) -> &RouteConfig {
    match &b.listeners[0].filter_chains[0].filters[0] {
        NetworkFilter::HttpConnectionManager(h) => &h.route_config,
        _ => unreachable!(),
    }
}

fn view<'a>(path: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView {
        method: "GET",
        path,
        authority: "h",
        scheme: "http",
        headers,
    }
}

#[test]
fn domain_precedence() {
    let b = route_config(
        r#"            - {name: any, domains: ["*"], routes: []}
            - {name: prefix, domains: ["foo.*"], routes: []}
            - {name: short_suffix, domains: ["*.com"], routes: []}
            - {name: long_suffix, domains: ["*.example.com"], routes: []}
            - {name: exact, domains: ["foo.example.com"], routes: []}"#,
    );
    let r = rc(&b);
    let name = |h: &str| select_vhost(r, h).map(|v| v.name.as_str());
    assert_eq!(name("foo.example.com"), Some("exact"));
    assert_eq!(name("FOO.example.com"), Some("exact"));
    assert_eq!(name("bar.example.com"), Some("long_suffix"));
    assert_eq!(name("bar.other.com"), Some("short_suffix"));
    assert_eq!(name("foo.org"), Some("prefix"));
    assert_eq!(name("zzz"), Some("any"));
    // Ports are part of the host unless stripped: the exact and suffix domains miss.
    assert_eq!(name("foo.example.com:80"), Some("prefix"));
    assert_eq!(name("bar.example.com:80"), Some("any"));
}

#[test]
fn path_matchers() {
    let b = route_config(
        r#"            - name: v
              domains: ["*"]
              routes:
              - {name: exact, match: {path: "/a"}, direct_response: {status: 200}}
              - {name: sep, match: {path_separated_prefix: "/b"}, direct_response: {status: 200}}
              - {name: re, match: {safe_regex: {regex: "/c/[0-9]+"}}, direct_response: {status: 200}}
              - {name: ci, match: {prefix: "/D", case_sensitive: false}, direct_response: {status: 200}}"#,
    );
    let vh = &rc(&b).virtual_hosts[0];
    let h = HeaderMap::new();
    let name = |p: &str| select_route(vh, &view(p, &h)).map(|r| r.name.as_str());
    assert_eq!(name("/a?q=1"), Some("exact"));
    assert_eq!(name("/ab"), None);
    assert_eq!(name("/b"), Some("sep"));
    assert_eq!(name("/b/x"), Some("sep"));
    assert_eq!(name("/bx"), None);
    assert_eq!(name("/c/12"), Some("re"));
    assert_eq!(name("/c/12x"), None, "safe_regex matches the whole path");
    assert_eq!(name("/d/e"), Some("ci"));
}

#[test]
fn header_and_query_matchers() {
    let b = route_config(
        r#"            - name: v
              domains: ["*"]
              routes:
              - name: inverted
                match: {prefix: "/", headers: [{name: x-a, string_match: {prefix: "no"}, invert_match: true}, {name: x-a, present_match: true}]}
                direct_response: {status: 200}
              - name: query
                match: {prefix: "/", query_parameters: [{name: q, string_match: {exact: "1"}}, {name: p}]}
                direct_response: {status: 200}
              - name: method
                match: {prefix: "/", headers: [{name: ":method", string_match: {exact: POST}}]}
                direct_response: {status: 200}"#,
    );
    let vh = &rc(&b).virtual_hosts[0];
    let mut h = HeaderMap::new();
    let name = |p: &str, h: &HeaderMap| select_route(vh, &view(p, h)).map(|r| r.name.clone());
    h.insert("x-a", "yes".parse().unwrap());
    assert_eq!(name("/", &h).as_deref(), Some("inverted"));
    h.insert("x-a", "nope".parse().unwrap());
    assert_eq!(name("/", &h), None);
    let empty = HeaderMap::new();
    assert_eq!(name("/?q=1&p", &empty).as_deref(), Some("query"));
    assert_eq!(name("/?q=2&p", &empty), None);
    assert_eq!(name("/?q=1", &empty), None);
}

#[test]
fn rewrites() {
    let b = route_config(
        r#"            - name: v
              domains: ["*"]
              routes:
              - {match: {prefix: "/api/"}, route: {cluster: x, prefix_rewrite: "/"}}"#,
    );
    let route = &rc(&b).virtual_hosts[0].routes[0];
    assert_eq!(
        rewrite_path(route, Some("/"), None, "/api/v1?x").as_deref(),
        Some("/v1?x")
    );
    let re = regex::Regex::new("^/old/(.*)$").unwrap();
    assert_eq!(
        rewrite_path(route, None, Some(&(re, "/new/${1}".into())), "/old/a/b?q").as_deref(),
        Some("/new/a/b?q")
    );
}

#[test]
fn weighted_pick_covers_the_range() {
    let cs = vec![
        WeightedCluster {
            name: "a".into(),
            weight: 9,
        },
        WeightedCluster {
            name: "b".into(),
            weight: 1,
        },
    ];
    let picks: Vec<&str> = (0..10).filter_map(|r| pick_weighted(&cs, r)).collect();
    assert_eq!(picks.iter().filter(|n| **n == "a").count(), 9);
    assert_eq!(picks[9], "b");
    assert_eq!(strip_port("[::1]:80"), "[::1]");
    assert_eq!(strip_port("a:80"), "a");
}

fn header_policy(name: &str, terminal: bool) -> HashPolicy {
    HashPolicy {
        kind: HashPolicyKind::Header {
            name: http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            pseudo: None,
        },
        terminal,
    }
}

fn hash_of(policies: &[HashPolicy], path: &str, headers: &[(&str, &str)]) -> Option<u64> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let req = RequestView {
        method: "GET",
        path,
        authority: "example.com",
        scheme: "http",
        headers: &h,
    };
    request_hash(policies, &req, "10.1.2.3".parse().unwrap())
}

#[test]
fn hash_policies_combine_as_in_envoy() {
    let x = |s: &str| xx_hash64(s.as_bytes());
    let a = [header_policy("x-a", false)];
    assert_eq!(hash_of(&a, "/", &[("x-a", "1")]), Some(x("1")));
    assert_eq!(hash_of(&a, "/", &[]), None);
    // Repeated values are sorted, then hashed as one string.
    assert_eq!(
        hash_of(&a, "/", &[("x-a", "b"), ("x-a", "a")]),
        Some(x("ab"))
    );
    // Each new hash is XORed onto the previous one rotated left by one bit.
    let ab = [header_policy("x-a", false), header_policy("x-b", false)];
    assert_eq!(
        hash_of(&ab, "/", &[("x-a", "1"), ("x-b", "2")]),
        Some(x("1").rotate_left(1) ^ x("2"))
    );
    // A missing value is skipped, without a rotation.
    assert_eq!(hash_of(&ab, "/", &[("x-b", "2")]), Some(x("2")));
    // `terminal` stops once a hash exists, whichever policy made it.
    let t = [
        header_policy("x-a", true),
        header_policy("x-b", true),
        header_policy("x-c", false),
    ];
    assert_eq!(
        hash_of(&t, "/", &[("x-a", "1"), ("x-c", "3")]),
        Some(x("1"))
    );
    assert_eq!(
        hash_of(&t, "/", &[("x-b", "2"), ("x-c", "3")]),
        Some(x("2"))
    );
    assert_eq!(hash_of(&t, "/", &[("x-c", "3")]), Some(x("3")));
    // The source IP is hashed without its port.
    let ip = [HashPolicy {
        kind: HashPolicyKind::SourceIp,
        terminal: false,
    }];
    assert_eq!(hash_of(&ip, "/", &[]), Some(x("10.1.2.3")));
}

#[test]
fn query_parameter_and_cookie_hashes() {
    let x = |s: &str| xx_hash64(s.as_bytes());
    let q = [HashPolicy {
        kind: HashPolicyKind::QueryParameter("u".into()),
        terminal: false,
    }];
    assert_eq!(hash_of(&q, "/p?a=1&u=x%20y&u=2", &[]), Some(x("x%20y")));
    assert_eq!(hash_of(&q, "/p?u", &[]), Some(x("")));
    assert_eq!(hash_of(&q, "/p?uu=1", &[]), None);
    assert_eq!(hash_of(&q, "/p", &[]), None);
    let c = [HashPolicy {
        kind: HashPolicyKind::Cookie("s".into()),
        terminal: false,
    }];
    let cookie = |v: &str| hash_of(&c, "/", &[("cookie", v)]);
    assert_eq!(cookie("a=1; s=abc; b=2"), Some(x("abc")));
    assert_eq!(cookie("s=\"quoted\""), Some(x("quoted")));
    assert_eq!(cookie("  s=a=b"), Some(x("a=b")));
    assert_eq!(cookie("ss=1; bad; s"), None);
    // The first cookie of that name decides, even when empty (no hash).
    assert_eq!(cookie("s=; s=later"), None);
    assert_eq!(
        hash_of(&c, "/", &[("cookie", "a=1"), ("cookie", "s=2")]),
        Some(x("2"))
    );
}
