//! Engine and filter tests: every permission and principal kind, nesting,
//! policy order, CIDR v4/v6, port ranges, metadata, stats and metadata output.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use legate_filter_api::matcher::{
    HeaderMatch, HeaderMatcher, RequestView, StringMatch, StringMatcher,
};
use legate_filter_api::network::{ConnectionInfo, NetworkAction, NetworkFilterFactory};
use legate_filter_api::stats::Store;
use legate_filter_api::{
    DynamicMetadata, HeadersAction, HttpFilterFactory, MetadataValue, PerFilterConfig, RequestHead,
    StreamInfo,
};

use crate::engine::{Engine, Input, metadata_matches, permission_matches, principal_matches};
use crate::http::{HttpRbacFactory, RouteRules};
use crate::model::*;
use crate::network::NetworkRbacFactory;

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        kind: StringMatch::Exact(s.into()),
        ignore_case: false,
    }
}

fn prefix(s: &str) -> StringMatcher {
    StringMatcher {
        kind: StringMatch::Prefix(s.into()),
        ignore_case: false,
    }
}

fn hdr(name: &str, kind: HeaderMatch) -> HeaderMatcher {
    let pseudo = match name {
        ":path" => Some(":path"),
        ":method" => Some(":method"),
        ":authority" => Some(":authority"),
        ":scheme" => Some(":scheme"),
        _ => None,
    };
    HeaderMatcher {
        name: if pseudo.is_some() {
            http::header::HOST
        } else {
            HeaderName::from_bytes(name.as_bytes()).unwrap()
        },
        pseudo,
        kind,
        invert: false,
    }
}

fn cidr(s: &str, len: u8) -> Cidr {
    Cidr {
        addr: s.parse().unwrap(),
        len,
    }
}

/// A request and its connection, to build [`Input`]s from.
struct Req {
    method: &'static str,
    path: &'static str,
    headers: HeaderMap,
    local: SocketAddr,
    remote: SocketAddr,
    direct: SocketAddr,
    metadata: DynamicMetadata,
    http: bool,
}

impl Req {
    fn get(path: &'static str) -> Req {
        Req {
            method: "GET",
            path,
            headers: HeaderMap::new(),
            local: "10.0.0.1:8080".parse().unwrap(),
            remote: "192.168.1.7:40000".parse().unwrap(),
            direct: "127.0.0.1:40000".parse().unwrap(),
            metadata: DynamicMetadata::new(),
            http: true,
        }
    }
    fn l4() -> Req {
        Req {
            http: false,
            ..Req::get("/")
        }
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Req {
        self.headers.append(k, v.parse().unwrap());
        self
    }
    fn input(&self) -> Input<'_> {
        Input {
            request: self.http.then_some(RequestView {
                method: self.method,
                path: self.path,
                authority: "example.com",
                scheme: "http",
                headers: &self.headers,
            }),
            local: self.local,
            remote: self.remote,
            direct_remote: self.direct,
            metadata: &self.metadata,
        }
    }
}

fn perm(p: &Permission, r: &Req) -> bool {
    permission_matches(p, &r.input())
}

fn prin(p: &Principal, r: &Req) -> bool {
    principal_matches(p, &r.input())
}

fn policy(permissions: Vec<Permission>, principals: Vec<Principal>) -> Policy {
    Policy {
        permissions,
        principals,
    }
}

fn rbac(action: Action, policies: Vec<(&str, Policy)>) -> Rbac {
    Rbac {
        action,
        policies: policies
            .into_iter()
            .map(|(n, p)| (n.to_string(), p))
            .collect(),
    }
}

#[test]
fn any_matches_everything() {
    assert!(perm(&Permission::Any, &Req::get("/")));
    assert!(prin(&Principal::Any, &Req::l4()));
}

#[test]
fn header_includes_query_in_path_and_sees_pseudo_headers() {
    let r = Req::get("/a?x=1").header("x-user", "alice");
    let path_exact = Permission::Header(hdr(":path", HeaderMatch::String(exact("/a?x=1"))));
    assert!(perm(&path_exact, &r));
    let path_no_query = Permission::Header(hdr(":path", HeaderMatch::String(exact("/a"))));
    assert!(!perm(&path_no_query, &r));
    let method = Permission::Header(hdr(":method", HeaderMatch::String(exact("GET"))));
    assert!(perm(&method, &r));
    let user = Principal::Header(hdr("x-user", HeaderMatch::String(exact("alice"))));
    assert!(prin(&user, &r));
    assert!(!prin(&user, &Req::get("/")));
    let present = Principal::Header(hdr("x-user", HeaderMatch::Present(true)));
    assert!(prin(&present, &r));
    assert!(!prin(&present, &Req::get("/")));
}

#[test]
fn header_invert_and_range() {
    let mut m = hdr("x-n", HeaderMatch::Range(10, 20));
    let r = Req::get("/").header("x-n", "15");
    assert!(perm(
        &Permission::Header(hdr("x-n", HeaderMatch::Range(10, 20))),
        &r
    ));
    assert!(!perm(
        &Permission::Header(hdr("x-n", HeaderMatch::Range(10, 20))),
        &Req::get("/").header("x-n", "20")
    ));
    m.invert = true;
    let inv = Permission::Header(m);
    assert!(!perm(&inv, &r));
    assert!(perm(&inv, &Req::get("/").header("x-n", "9")));
    // Inverting a string match does not make a missing header match.
    assert!(!perm(&inv, &Req::get("/")));
}

#[test]
fn headers_outside_http_are_absent() {
    let l4 = Req::l4();
    let path = Permission::Header(hdr(":path", HeaderMatch::Present(true)));
    assert!(!perm(&path, &l4));
    let absent = Permission::Header(hdr("x-a", HeaderMatch::Present(false)));
    assert!(perm(&absent, &l4));
    let mut inv = hdr("x-a", HeaderMatch::Present(true));
    inv.invert = true;
    assert!(perm(&Permission::Header(inv), &l4));
    let string = Permission::Header(hdr(":method", HeaderMatch::String(prefix(""))));
    assert!(!perm(&string, &l4));
    assert!(!perm(&Permission::UrlPath(prefix("/")), &l4));
}

#[test]
fn url_path_ignores_query_and_fragment() {
    let p = Permission::UrlPath(exact("/api/v1"));
    assert!(perm(&p, &Req::get("/api/v1?user=admin")));
    assert!(perm(&p, &Req::get("/api/v1#frag")));
    assert!(!perm(&p, &Req::get("/api/v10")));
    let ci = Principal::UrlPath(StringMatcher {
        kind: StringMatch::Prefix("/ADMIN".into()),
        ignore_case: true,
    });
    assert!(prin(&ci, &Req::get("/admin/x?y")));
    let re = Permission::UrlPath(StringMatcher {
        kind: StringMatch::Regex(regex::Regex::new("/items/[0-9]+").unwrap()),
        ignore_case: false,
    });
    assert!(perm(&re, &Req::get("/items/42?q")));
    assert!(!perm(&re, &Req::get("/items/42/x")));
}

#[test]
fn destination_ip_and_ports() {
    let r = Req::get("/");
    assert!(perm(&Permission::DestinationIp(cidr("10.0.0.0", 8)), &r));
    assert!(!perm(&Permission::DestinationIp(cidr("10.0.1.0", 24)), &r));
    assert!(perm(&Permission::DestinationPort(8080), &r));
    assert!(!perm(&Permission::DestinationPort(80), &r));
    let range = |start, end| Permission::DestinationPortRange { start, end };
    assert!(perm(&range(8000, 9000), &r));
    assert!(perm(&range(8080, 8081), &r));
    assert!(!perm(&range(8000, 8080), &r), "end is exclusive");
    assert!(
        !perm(&range(9000, 8000), &r),
        "an empty range matches nothing"
    );
}

#[test]
fn cidr_v4_and_v6() {
    let mut r = Req::get("/");
    r.remote = "[2001:db8::7]:1".parse().unwrap();
    r.direct = "[::1]:2".parse().unwrap();
    assert!(prin(&Principal::RemoteIp(cidr("2001:db8::", 32)), &r));
    assert!(!prin(&Principal::RemoteIp(cidr("2001:db9::", 32)), &r));
    assert!(
        !prin(&Principal::RemoteIp(cidr("0.0.0.0", 0)), &r),
        "v4 never holds v6"
    );
    assert!(prin(&Principal::RemoteIp(cidr("::", 0)), &r));
    assert!(prin(&Principal::DirectRemoteIp(cidr("::1", 128)), &r));
    assert!(prin(&Principal::SourceIp(cidr("::1", 128)), &r));
    let r = Req::get("/");
    assert!(prin(&Principal::RemoteIp(cidr("192.168.0.0", 16)), &r));
    assert!(prin(&Principal::RemoteIp(cidr("192.168.1.7", 32)), &r));
    assert!(!prin(&Principal::RemoteIp(cidr("192.168.1.8", 32)), &r));
    assert!(prin(&Principal::RemoteIp(cidr("1.2.3.4", 0)), &r));
}

#[test]
fn remote_ip_is_xff_and_direct_remote_ip_is_the_peer() {
    let r = Req::get("/");
    let local = cidr("127.0.0.0", 8);
    assert!(!prin(&Principal::RemoteIp(local), &r));
    assert!(prin(&Principal::DirectRemoteIp(local), &r));
    assert!(prin(&Principal::SourceIp(local), &r));
}

#[test]
fn requested_server_name_is_empty_without_tls() {
    let r = Req::get("/");
    assert!(perm(&Permission::RequestedServerName(exact("")), &r));
    assert!(!perm(
        &Permission::RequestedServerName(exact("a.example")),
        &r
    ));
}

#[test]
fn and_or_not_nest() {
    let r = Req::get("/admin").header("x-role", "ops");
    let get = Permission::Header(hdr(":method", HeaderMatch::String(exact("GET"))));
    let admin = || Permission::UrlPath(prefix("/admin"));
    let both = Permission::And(vec![get, admin()]);
    assert!(perm(&both, &r));
    let post = Permission::Header(hdr(":method", HeaderMatch::String(exact("POST"))));
    let neither = Permission::And(vec![post, admin()]);
    assert!(!perm(&neither, &r));
    let either = Permission::Or(vec![neither, Permission::Not(Box::new(Permission::Any))]);
    assert!(!perm(&either, &r));
    let deep = Permission::Not(Box::new(Permission::Or(vec![either, Permission::Any])));
    assert!(!perm(&deep, &r));
    assert!(!perm(&Permission::Or(vec![]), &r), "an empty OR is false");
    assert!(perm(&Permission::And(vec![]), &r), "an empty AND is true");

    let ops = || Principal::Header(hdr("x-role", HeaderMatch::String(exact("ops"))));
    let p = Principal::And(vec![
        ops(),
        Principal::Not(Box::new(Principal::RemoteIp(cidr("10.0.0.0", 8)))),
        Principal::Or(vec![Principal::Any]),
    ]);
    assert!(prin(&p, &r));
    assert!(!prin(&Principal::Not(Box::new(ops())), &r));
    assert!(!prin(&Principal::Or(vec![]), &r));
}

#[test]
fn a_policy_needs_a_permission_and_a_principal() {
    let r = Req::get("/");
    let p = policy(
        vec![Permission::Any],
        vec![Principal::RemoteIp(cidr("10.0.0.0", 8))],
    );
    let e = Engine::new(rbac(Action::Allow, vec![("p", p)]));
    assert!(!e.evaluate(&r.input()).allowed);
    let p = policy(
        vec![Permission::DestinationPort(1), Permission::Any],
        vec![Principal::RemoteIp(cidr("10.0.0.0", 8)), Principal::Any],
    );
    let e = Engine::new(rbac(Action::Allow, vec![("p", p)]));
    assert!(e.evaluate(&r.input()).allowed);
    let empty = Engine::new(rbac(
        Action::Allow,
        vec![("p", policy(vec![], vec![Principal::Any]))],
    ));
    assert!(!empty.evaluate(&r.input()).allowed);
}

#[test]
fn actions_and_policy_order() {
    let r = Req::get("/");
    let any = || policy(vec![Permission::Any], vec![Principal::Any]);
    let none = || policy(vec![Permission::DestinationPort(1)], vec![Principal::Any]);
    // Name order, not config order: "a-second" is tried before "b-first".
    let e = Engine::new(rbac(
        Action::Deny,
        vec![("b-first", any()), ("a-second", any()), ("c", none())],
    ));
    let d = e.evaluate(&r.input());
    assert!(!d.allowed);
    assert_eq!(d.policy.map(|p| p.name.as_str()), Some("a-second"));
    assert_eq!(d.details(), "rbac_access_denied_matched_policy[a-second]");
    assert_eq!(d.log_hint, None);

    let e = Engine::new(rbac(Action::Deny, vec![("c", none())]));
    let d = e.evaluate(&r.input());
    assert!(d.allowed && d.policy.is_none());

    let e = Engine::new(rbac(Action::Allow, vec![("c", none())]));
    let d = e.evaluate(&r.input());
    assert!(!d.allowed);
    assert_eq!(d.details(), "rbac_access_denied_matched_policy[none]");

    let e = Engine::new(rbac(Action::Allow, vec![]));
    assert!(
        !e.evaluate(&r.input()).allowed,
        "ALLOW with no policy denies all"
    );
    let e = Engine::new(rbac(Action::Deny, vec![]));
    assert!(
        e.evaluate(&r.input()).allowed,
        "DENY with no policy allows all"
    );

    let e = Engine::new(rbac(Action::Log, vec![("c", none())]));
    let d = e.evaluate(&r.input());
    assert!(d.allowed);
    assert_eq!(d.log_hint, Some(false));
    let e = Engine::new(rbac(Action::Log, vec![("z", any())]));
    let d = e.evaluate(&r.input());
    assert!(d.allowed);
    assert_eq!(d.log_hint, Some(true));
}

#[test]
fn details_replace_whitespace() {
    let e = Engine::new(rbac(
        Action::Deny,
        vec![(
            "my policy\tx",
            policy(vec![Permission::Any], vec![Principal::Any]),
        )],
    ));
    let r = Req::get("/");
    assert_eq!(
        e.evaluate(&r.input()).details(),
        "rbac_access_denied_matched_policy[my_policy_x]"
    );
}

fn md(ns: &str, v: MetadataValue) -> DynamicMetadata {
    let mut m = DynamicMetadata::new();
    m.insert(ns.to_string(), v);
    m
}

fn st(kv: Vec<(&str, MetadataValue)>) -> MetadataValue {
    MetadataValue::Struct(
        kv.into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect::<BTreeMap<_, _>>(),
    )
}

fn mm(path: &[&str], value: ValueMatcher) -> MetadataMatcher {
    MetadataMatcher {
        filter: "ns".into(),
        path: path.iter().map(|s| s.to_string()).collect(),
        value,
        invert: false,
    }
}

#[test]
fn metadata_values() {
    let m = md(
        "ns",
        st(vec![
            ("s", MetadataValue::String("select".into())),
            ("n", MetadataValue::Number(3.5)),
            ("b", MetadataValue::Bool(true)),
            ("z", MetadataValue::Null),
            (
                "l",
                MetadataValue::List(vec![
                    MetadataValue::String("insert".into()),
                    MetadataValue::String("select".into()),
                ]),
            ),
            ("inner", st(vec![("k", MetadataValue::String("v".into()))])),
        ]),
    );
    let ok = |m2: MetadataMatcher| metadata_matches(&m2, &m);
    assert!(ok(mm(&["s"], ValueMatcher::String(exact("select")))));
    assert!(!ok(mm(&["s"], ValueMatcher::String(exact("insert")))));
    assert!(
        !ok(mm(&["n"], ValueMatcher::String(prefix("")))),
        "a number is no string"
    );
    assert!(ok(mm(
        &["n"],
        ValueMatcher::Double(DoubleMatch::Exact(3.5))
    )));
    assert!(ok(mm(
        &["n"],
        ValueMatcher::Double(DoubleMatch::Range {
            start: 3.0,
            end: 4.0
        })
    )));
    assert!(!ok(mm(
        &["n"],
        ValueMatcher::Double(DoubleMatch::Range {
            start: 0.0,
            end: 3.5
        })
    )));
    assert!(ok(mm(&["b"], ValueMatcher::Bool(true))));
    assert!(!ok(mm(&["b"], ValueMatcher::Bool(false))));
    assert!(ok(mm(&["z"], ValueMatcher::Null)));
    assert!(!ok(mm(&["s"], ValueMatcher::Null)));
    assert!(ok(mm(&["z"], ValueMatcher::Present(true))));
    assert!(!ok(mm(&["missing"], ValueMatcher::Present(true))));
    assert!(
        !ok(mm(&["s"], ValueMatcher::Present(false))),
        "present_match: false never matches"
    );
    assert!(ok(mm(
        &["l"],
        ValueMatcher::ListOneOf(Box::new(ValueMatcher::String(exact("select"))))
    )));
    assert!(!ok(mm(
        &["l"],
        ValueMatcher::ListOneOf(Box::new(ValueMatcher::String(exact("drop"))))
    )));
    assert!(!ok(mm(
        &["s"],
        ValueMatcher::ListOneOf(Box::new(ValueMatcher::String(exact("select"))))
    )));
    assert!(ok(mm(&["inner", "k"], ValueMatcher::String(exact("v")))));
    assert!(
        !ok(mm(&["s", "k"], ValueMatcher::Present(true))),
        "path through a non-struct"
    );
    assert!(ok(mm(
        &["s"],
        ValueMatcher::Or(vec![
            ValueMatcher::Bool(true),
            ValueMatcher::String(exact("select"))
        ])
    )));
    let mut inv = mm(&["missing"], ValueMatcher::String(exact("x")));
    inv.invert = true;
    assert!(ok(inv), "invert flips a missing value too");
    let mut other_ns = mm(&["s"], ValueMatcher::Present(true));
    other_ns.filter = "other".into();
    assert!(!ok(other_ns));
    assert!(
        !ok(mm(&[], ValueMatcher::Present(true))),
        "an empty path finds nothing"
    );
}

#[test]
fn metadata_in_permissions_and_principals() {
    let mut r = Req::l4();
    r.metadata = md(
        "envoy.filters.network.mysql_proxy",
        st(vec![(
            "shop.payments",
            MetadataValue::List(vec![MetadataValue::String("update".into())]),
        )]),
    );
    let m = || MetadataMatcher {
        filter: "envoy.filters.network.mysql_proxy".into(),
        path: vec!["shop.payments".into()],
        value: ValueMatcher::ListOneOf(Box::new(ValueMatcher::String(exact("update")))),
        invert: false,
    };
    assert!(perm(&Permission::Metadata(m()), &r));
    assert!(prin(&Principal::Metadata(m()), &r));
    assert!(!perm(&Permission::Metadata(m()), &Req::l4()));
}

// --- the filters ---------------------------------------------------------

fn head(method: &str, path: &str) -> RequestHead {
    RequestHead {
        method: method.parse().unwrap(),
        uri: path.parse().unwrap(),
        version: http::Version::HTTP_11,
        headers: HeaderMap::new(),
    }
}

fn info() -> StreamInfo {
    StreamInfo::new(
        std::time::SystemTime::now(),
        "203.0.113.9:1234".parse().unwrap(),
        "127.0.0.1:10000".parse().unwrap(),
        1,
    )
    .with_direct_remote("127.0.0.1:5555".parse().unwrap())
}

fn get_only() -> Rbac {
    rbac(
        Action::Allow,
        vec![(
            "get",
            policy(
                vec![Permission::Header(hdr(
                    ":method",
                    HeaderMatch::String(exact("GET")),
                ))],
                vec![Principal::Any],
            ),
        )],
    )
}

fn run(f: &HttpRbacFactory, h: &mut RequestHead, i: &mut StreamInfo) -> HeadersAction {
    let mut filter = f.create();
    match filter.on_request_headers(h, true, i) {
        legate_filter_api::Step::Done(a) => a,
        legate_filter_api::Step::Wait(_) => panic!("rbac never waits"),
    }
}

fn s(v: &str) -> MetadataValue {
    MetadataValue::String(v.into())
}

#[test]
fn http_filter_denies_with_envoy_reply_and_counts() {
    let store = Store::default();
    let cfg = HttpRbacConfig {
        rules: Some(get_only()),
        ..Default::default()
    };
    let f = HttpRbacFactory::new(cfg, "envoy.filters.http.rbac", "ingress", &store);
    assert!(matches!(
        run(&f, &mut head("GET", "/"), &mut info()),
        HeadersAction::Continue
    ));
    match run(&f, &mut head("POST", "/"), &mut info()) {
        HeadersAction::Respond(r) => {
            assert_eq!(r.status, 403);
            assert_eq!(&r.body[..], b"RBAC: access denied");
            assert_eq!(r.details, "rbac_access_denied_matched_policy[none]");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.get("http.ingress.rbac.allowed"), Some(1));
    assert_eq!(store.get("http.ingress.rbac.denied"), Some(1));
    assert_eq!(store.get("http.ingress.rbac.shadow_allowed"), Some(0));
}

#[test]
fn http_shadow_rules_only_count_and_set_metadata() {
    let store = Store::default();
    let cfg = HttpRbacConfig {
        rules: None,
        shadow_rules: Some(rbac(
            Action::Deny,
            vec![(
                "deny-post",
                policy(
                    vec![Permission::Header(hdr(
                        ":method",
                        HeaderMatch::String(exact("POST")),
                    ))],
                    vec![Principal::Any],
                ),
            )],
        )),
        rules_stat_prefix: "r.".into(),
        shadow_rules_stat_prefix: "sh_".into(),
    };
    let f = HttpRbacFactory::new(cfg, "rbac", "in", &store);
    let mut i = info();
    assert!(matches!(
        run(&f, &mut head("POST", "/"), &mut i),
        HeadersAction::Continue
    ));
    let ns = &i.dynamic_metadata[crate::http::NAMESPACE];
    assert_eq!(
        *ns,
        st(vec![
            ("sh_shadow_effective_policy_id", s("deny-post")),
            ("sh_shadow_engine_result", s("denied")),
        ])
    );
    let mut i = info();
    assert!(matches!(
        run(&f, &mut head("GET", "/"), &mut i),
        HeadersAction::Continue
    ));
    assert_eq!(
        i.dynamic_metadata[crate::http::NAMESPACE],
        st(vec![("sh_shadow_engine_result", s("allowed"))])
    );
    assert_eq!(store.get("http.in.rbac.sh_.shadow_denied"), Some(1));
    assert_eq!(store.get("http.in.rbac.sh_.shadow_allowed"), Some(1));
    assert_eq!(store.get("http.in.rbac.r.allowed"), Some(0));
}

#[test]
fn http_log_action_sets_the_hint() {
    let store = Store::default();
    let mut rules = get_only();
    rules.action = Action::Log;
    let cfg = HttpRbacConfig {
        rules: Some(rules),
        ..Default::default()
    };
    let f = HttpRbacFactory::new(cfg, "rbac", "in", &store);
    let mut i = info();
    assert!(matches!(
        run(&f, &mut head("POST", "/"), &mut i),
        HeadersAction::Continue
    ));
    assert_eq!(
        i.dynamic_metadata[crate::COMMON_NAMESPACE],
        st(vec![("access_log_hint", MetadataValue::Bool(false))])
    );
    let mut i = info();
    assert!(matches!(
        run(&f, &mut head("GET", "/"), &mut i),
        HeadersAction::Continue
    ));
    assert_eq!(
        i.dynamic_metadata[crate::COMMON_NAMESPACE],
        st(vec![("access_log_hint", MetadataValue::Bool(true))])
    );
    assert_eq!(store.get("http.in.rbac.allowed"), Some(2));
}

#[test]
fn http_per_route_rules_replace_the_filter_rules() {
    let store = Store::default();
    let cfg = HttpRbacConfig {
        rules: Some(get_only()),
        ..Default::default()
    };
    let f = HttpRbacFactory::new(cfg, "my-rbac", "in", &store);
    // An empty RBACPerRoute lets everything through, uncounted.
    let mut pfc = PerFilterConfig::default();
    pfc.insert(
        "my-rbac",
        RouteRules::new(RbacPerRoute { rbac: None }).into_any(),
    );
    let mut i = info();
    i.per_filter_config = Some(Arc::new(pfc));
    assert!(matches!(
        run(&f, &mut head("POST", "/"), &mut i),
        HeadersAction::Continue
    ));
    assert_eq!(store.get("http.in.rbac.allowed"), Some(0));
    // A route's own rules.
    let deny_all = HttpRbacConfig {
        rules: Some(rbac(
            Action::Deny,
            vec![("all", policy(vec![Permission::Any], vec![Principal::Any]))],
        )),
        ..Default::default()
    };
    let mut pfc = PerFilterConfig::default();
    pfc.insert(
        "my-rbac",
        RouteRules::new(RbacPerRoute {
            rbac: Some(deny_all),
        })
        .into_any(),
    );
    let mut i = info();
    i.per_filter_config = Some(Arc::new(pfc));
    match run(&f, &mut head("GET", "/"), &mut i) {
        HeadersAction::Respond(r) => {
            assert_eq!(r.details, "rbac_access_denied_matched_policy[all]")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.get("http.in.rbac.denied"), Some(1));
    // Another filter's per-route config does not count.
    let mut pfc = PerFilterConfig::default();
    pfc.insert(
        "other",
        RouteRules::new(RbacPerRoute { rbac: None }).into_any(),
    );
    let mut i = info();
    i.per_filter_config = Some(Arc::new(pfc));
    assert!(matches!(
        run(&f, &mut head("POST", "/"), &mut i),
        HeadersAction::Respond(_)
    ));
}

#[test]
fn http_remote_ip_uses_xff_address_and_direct_the_peer() {
    let store = Store::default();
    let only = |p: Principal| HttpRbacConfig {
        rules: Some(rbac(
            Action::Allow,
            vec![("p", policy(vec![Permission::Any], vec![p]))],
        )),
        ..Default::default()
    };
    let remote = HttpRbacFactory::new(
        only(Principal::RemoteIp(cidr("203.0.113.0", 24))),
        "r",
        "a",
        &store,
    );
    let direct = HttpRbacFactory::new(
        only(Principal::DirectRemoteIp(cidr("203.0.113.0", 24))),
        "r",
        "b",
        &store,
    );
    assert!(matches!(
        run(&remote, &mut head("GET", "/"), &mut info()),
        HeadersAction::Continue
    ));
    assert!(matches!(
        run(&direct, &mut head("GET", "/"), &mut info()),
        HeadersAction::Respond(_)
    ));
}

fn conn() -> ConnectionInfo {
    ConnectionInfo::new(
        "127.0.0.1:5000".parse().unwrap(),
        "127.0.0.1:9000".parse().unwrap(),
        7,
    )
}

fn read(
    f: &mut Box<dyn legate_filter_api::network::NetworkFilter>,
    c: &mut ConnectionInfo,
) -> NetworkAction {
    let mut data = bytes::BytesMut::from(&b"hello"[..]);
    let fut = f.on_read(&mut data, false, c);
    // The filter never waits: poll once with a no-op waker.
    let mut fut = std::pin::pin!(fut);
    let waker = std::task::Waker::noop();
    match fut
        .as_mut()
        .poll(&mut std::task::Context::from_waker(waker))
    {
        std::task::Poll::Ready(a) => a,
        std::task::Poll::Pending => panic!("network rbac never waits"),
    }
}

use std::future::Future;

fn mysql_update_denied(enforcement_type: EnforcementType) -> NetworkRbacConfig {
    NetworkRbacConfig {
        rules: Some(rbac(
            Action::Deny,
            vec![(
                "no-update",
                policy(
                    vec![Permission::Metadata(MetadataMatcher {
                        filter: "envoy.filters.network.mysql_proxy".into(),
                        path: vec!["payments".into()],
                        value: ValueMatcher::ListOneOf(Box::new(ValueMatcher::String(exact(
                            "update",
                        )))),
                        invert: false,
                    })],
                    vec![Principal::Any],
                ),
            )],
        )),
        shadow_rules: None,
        stat_prefix: "db".into(),
        shadow_rules_stat_prefix: String::new(),
        enforcement_type,
    }
}

fn set_update(c: &mut ConnectionInfo) {
    c.dynamic_metadata.insert(
        "envoy.filters.network.mysql_proxy".into(),
        st(vec![("payments", MetadataValue::List(vec![s("update")]))]),
    );
}

#[test]
fn network_one_time_decides_on_the_first_data() {
    let store = Store::default();
    let f = NetworkRbacFactory::new(
        mysql_update_denied(EnforcementType::OneTimeOnFirstByte),
        &store,
    );
    let mut filter = f.create();
    let mut c = conn();
    assert_eq!(read(&mut filter, &mut c), NetworkAction::Continue);
    set_update(&mut c);
    assert_eq!(
        read(&mut filter, &mut c),
        NetworkAction::Continue,
        "decided once"
    );
    assert_eq!(store.get("db.rbac.allowed"), Some(1));
    assert_eq!(store.get("db.rbac.denied"), Some(0));
}

#[test]
fn network_continuous_checks_every_read() {
    let store = Store::default();
    let f = NetworkRbacFactory::new(mysql_update_denied(EnforcementType::Continuous), &store);
    let mut filter = f.create();
    let mut c = conn();
    assert_eq!(read(&mut filter, &mut c), NetworkAction::Continue);
    assert_eq!(read(&mut filter, &mut c), NetworkAction::Continue);
    set_update(&mut c);
    assert_eq!(read(&mut filter, &mut c), NetworkAction::Close);
    assert_eq!(store.get("db.rbac.allowed"), Some(2));
    assert_eq!(store.get("db.rbac.denied"), Some(1));
}

#[test]
fn network_shadow_and_ip_rules() {
    let store = Store::default();
    let cfg = NetworkRbacConfig {
        rules: Some(rbac(
            Action::Allow,
            vec![(
                "local",
                policy(
                    vec![Permission::DestinationPortRange {
                        start: 9000,
                        end: 9001,
                    }],
                    vec![Principal::RemoteIp(cidr("127.0.0.0", 8))],
                ),
            )],
        )),
        shadow_rules: Some(rbac(Action::Allow, vec![])),
        stat_prefix: "tcp.".into(),
        shadow_rules_stat_prefix: "s".into(),
        enforcement_type: EnforcementType::OneTimeOnFirstByte,
    };
    let f = NetworkRbacFactory::new(cfg, &store);
    let mut c = conn();
    assert_eq!(read(&mut f.create(), &mut c), NetworkAction::Continue);
    assert_eq!(
        c.dynamic_metadata[crate::network::NAMESPACE],
        st(vec![("sshadow_engine_result", s("denied"))])
    );
    let mut far = conn();
    far.remote_address = "10.1.1.1:1".parse().unwrap();
    assert_eq!(read(&mut f.create(), &mut far), NetworkAction::Close);
    assert_eq!(store.get("tcp.rbac.allowed"), Some(1));
    assert_eq!(store.get("tcp.rbac.denied"), Some(1));
    assert_eq!(store.get("tcp.rbac.s.shadow_denied"), Some(2));
}

#[test]
fn stat_prefixes_join_like_envoy() {
    assert_eq!(crate::stat_join("http.a.rbac.", ""), "http.a.rbac.");
    assert_eq!(crate::stat_join("http.a.rbac.", "r"), "http.a.rbac.r.");
    assert_eq!(crate::stat_join("http.a.rbac.", "r."), "http.a.rbac.r.");
    assert_eq!(crate::stat_join("", "tcp"), "tcp.");
}
