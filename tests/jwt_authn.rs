//! `envoy.filters.http.jwt_authn` through the real binary, driven with curl:
//! tokens signed in the test, key sets inline and served by a real HTTP
//! upstream on loopback. The cases Envoy can run are also compared with Envoy
//! 1.40 in `differential.rs` (`jwt_*` cases and `jwt_stats_match_envoy`).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use support::jwt::{self, Key};
use support::{Legate, bootstrap, cluster, curl_get, dead_addr, echo_upstream, url, validate};

/// An upstream `up` behind the filter, with `routes` (YAML) and extra clusters.
fn config(filter: &Value, routes: &str, up: SocketAddr, extra_clusters: &str) -> String {
    bootstrap(
        &support::http_listener_with_filters("main", "ingress", routes, "", &jwt::filter(filter)),
        &format!("{}{extra_clusters}", cluster("up", &[(up, 1)], "")),
    )
}

const ALL_TO_UP: &str = "              - {match: {prefix: /}, route: {cluster: up}}\n";

fn claims(aud: &str, exp_in: i64) -> Value {
    json!({"iss": "https://issuer", "sub": "alice", "aud": aud, "exp": jwt::now() + exp_in,
           "org": {"team": "core"}})
}

fn local_provider(keys: &[&Key]) -> Value {
    json!({"issuer": "https://issuer", "audiences": ["api"],
           "local_jwks": {"inline_string": jwt::jwks(keys)},
           "forward_payload_header": "x-jwt-payload",
           "claim_to_headers": [{"header_name": "x-team", "claim_name": "org.team"}]})
}

/// The request headers the upstream echoed.
fn upstream_headers(body: &str) -> serde_json::Map<String, Value> {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["headers"].as_object().unwrap().clone()
}

fn bearer(t: &str) -> String {
    format!("authorization: Bearer {t}")
}

fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::trim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_expired_missing_and_wrong_audience_tokens() {
    let up = echo_upstream("up").await;
    let (rs, es) = (Key::rs256("rs"), Key::es256("es"));
    let filter = json!({"providers": {"idp": local_provider(&[&rs, &es])},
                        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]});
    let l = Legate::start(&config(&filter, ALL_TO_UP, up, "")).await;
    let a = l.listener("main").await;

    for key in [&rs, &es] {
        let t = key.sign(&claims("api", 600));
        let (code, _, body) = curl_get(&[&url(a, "/good"), "-H", &bearer(&t)]);
        assert_eq!(code, 200, "{body}");
        let h = upstream_headers(&body);
        assert_eq!(h["x-jwt-payload"], jwt::payload(&t));
        assert_eq!(h["x-team"], "core");
        assert!(!h.contains_key("authorization"), "token forwarded: {h:?}");
    }

    let expired = rs.sign(&claims("api", -3600));
    let (code, head, body) = curl_get(&[&url(a, "/old?x=1"), "-H", &bearer(&expired)]);
    assert_eq!((code, body.as_str()), (401, "Jwt is expired"));
    // curl_get lowercases the head.
    let realm = format!("bearer realm=\"http://{a}/old?x=1\"");
    assert_eq!(
        header(&head, "www-authenticate"),
        Some(format!("{realm}, error=\"invalid_token\"").as_str())
    );

    let (code, head, body) = curl_get(&[&url(a, "/old?x=1")]);
    assert_eq!((code, body.as_str()), (401, "Jwt is missing"));
    assert_eq!(header(&head, "www-authenticate"), Some(realm.as_str()));

    let other = es.sign(&claims("someone-else", 600));
    let (code, _, body) = curl_get(&[&url(a, "/"), "-H", &bearer(&other)]);
    assert_eq!(
        (code, body.as_str()),
        (403, "Audiences in Jwt are not allowed")
    );

    let forged = format!("{}x", rs.sign(&claims("api", 600)));
    let (code, _, body) = curl_get(&[&url(a, "/"), "-H", &bearer(&forged)]);
    assert_eq!((code, body.as_str()), (401, "Jwt verification fails"));

    let s = l.stats().await;
    let stat = |n: &str| s[&format!("http.ingress.jwt_authn.{n}")];
    assert_eq!((stat("allowed"), stat("denied")), (2, 4));
    assert_eq!(stat("jwt_cache_miss"), 5);
    assert_eq!(
        (stat("jwks_fetch_success"), stat("jwks_fetch_failed")),
        (0, 0)
    );
}

/// A JWKS server counting its requests; answers `status` with `doc`, after
/// `delay`.
async fn jwks_server(doc: String, status: u16, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let addr = support::http_server(move |req: hyper::Request<hyper::body::Incoming>| {
        let (doc, h) = (doc.clone(), h.clone());
        async move {
            assert_eq!(req.uri().path(), "/.well-known/jwks.json");
            h.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            let mut r = hyper::Response::new(Full::new(Bytes::from(doc)));
            *r.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            Ok::<_, Infallible>(r)
        }
    })
    .await;
    (addr, hits)
}

fn remote(cluster: &str, timeout: &str) -> Value {
    json!({"issuer": "https://issuer",
           "remote_jwks": {"http_uri": {"uri": "http://idp.example/.well-known/jwks.json",
                                        "cluster": cluster, "timeout": timeout},
                           "cache_duration": "300s"},
           "forward": true})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_jwks_is_fetched_from_a_real_upstream_and_cached() {
    let up = echo_upstream("up").await;
    let key = Key::ed25519("ed");
    let (idp, hits) = jwks_server(jwt::jwks(&[&key]), 200, Duration::ZERO).await;
    let filter = json!({"providers": {"idp": remote("idp", "1s")},
                        "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]});
    let yaml = config(&filter, ALL_TO_UP, up, &cluster("idp", &[(idp, 1)], ""));
    let l = Legate::start_with(&yaml, &["--concurrency", "1"]).await;
    let a = l.listener("main").await;
    let t = key.sign(&claims("api", 600));
    for _ in 0..4 {
        let (code, _, body) = curl_get(&[&url(a, "/r"), "-H", &bearer(&t)]);
        assert_eq!(code, 200, "{body}");
        // forward: true keeps the token.
        assert_eq!(
            upstream_headers(&body)["authorization"],
            format!("Bearer {t}")
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1, "one fetch, then the cache");
    assert_eq!(l.stat("http.ingress.jwt_authn.jwks_fetch_success").await, 1);
    // A token the fetched keys do not verify.
    let other = Key::ed25519("other").sign(&claims("api", 600));
    let (code, _, body) = curl_get(&[&url(a, "/r"), "-H", &bearer(&other)]);
    assert_eq!(
        (code, body.as_str()),
        (401, "Jwks doesn't have key to match kid or alg from Jwt")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_jwks_upstreams_answer_401_promptly() {
    let up = echo_upstream("up").await;
    let key = Key::rs256("rs");
    let (broken, _) = jwks_server("oops".into(), 500, Duration::ZERO).await;
    let (slow, _) = jwks_server(jwt::jwks(&[&key]), 200, Duration::from_secs(5)).await;
    let (garbled, _) = jwks_server("{\"keys\": 3}".into(), 200, Duration::ZERO).await;
    let dead: SocketAddr = dead_addr();
    let filter = json!({
        "providers": {"dead": remote("dead", "2s"), "broken": remote("broken", "2s"),
                      "slow": remote("slow", "0.3s"), "garbled": remote("garbled", "2s")},
        "rules": [
            {"match": {"prefix": "/dead"}, "requires": {"provider_name": "dead"}},
            {"match": {"prefix": "/broken"}, "requires": {"provider_name": "broken"}},
            {"match": {"prefix": "/slow"}, "requires": {"provider_name": "slow"}},
            {"match": {"prefix": "/garbled"}, "requires": {"provider_name": "garbled"}}]});
    let clusters = [
        cluster("dead", &[(dead, 1)], ""),
        cluster("broken", &[(broken, 1)], ""),
        cluster("slow", &[(slow, 1)], ""),
        cluster("garbled", &[(garbled, 1)], ""),
    ]
    .concat();
    let l = Legate::start_with(
        &config(&filter, ALL_TO_UP, up, &clusters),
        &["--concurrency", "1"],
    )
    .await;
    let a = l.listener("main").await;
    let t = key.sign(&claims("api", 600));
    for (path, within) in [
        ("/dead", 2.0),
        ("/broken", 2.0),
        ("/slow", 1.5),
        ("/garbled", 2.0),
    ] {
        let started = Instant::now();
        let (code, head, body) = curl_get(&[&url(a, path), "-H", &bearer(&t)]);
        let took = started.elapsed().as_secs_f64();
        assert_eq!(
            (code, body.as_str()),
            (401, "Jwks remote fetch is failed"),
            "{path}"
        );
        assert!(took < within, "{path} took {took:.2}s");
        assert!(
            header(&head, "www-authenticate")
                .is_some_and(|v| v.ends_with("error=\"invalid_token\"")),
            "{head}"
        );
    }
    assert_eq!(l.stat("http.ingress.jwt_authn.jwks_fetch_failed").await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirements_per_route_and_cors() {
    let up = echo_upstream("up").await;
    let (a_key, b_key) = (Key::hs256("a"), Key::es256("b"));
    let mut b = local_provider(&[&b_key]);
    b["issuer"] = json!("https://b");
    b["from_headers"] = json!([{"name": "x-b-token"}]);
    let filter = json!({
        "providers": {"a": local_provider(&[&a_key]), "b": b},
        "rules": [
            {"match": {"prefix": "/any"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "a"}, {"provider_name": "b"}]}}},
            {"match": {"prefix": "/both"}, "requires": {"requires_all": {"requirements": [
                {"provider_name": "a"}, {"provider_name": "b"}]}}},
            {"match": {"prefix": "/optional"}, "requires": {"requires_any": {"requirements": [
                {"provider_name": "a"}, {"allow_missing": {}}]}}},
            {"match": {"prefix": "/public"}},
            {"match": {"prefix": "/"}, "requires": {"provider_name": "a"}}],
        "requirement_map": {"b_only": {"provider_name": "b"}},
        "bypass_cors_preflight": true});
    let routes = format!(
        "              - {}\n              - {}\n              - {}\n",
        json!({"match": {"prefix": "/named"}, "route": {"cluster": "up"},
               "typed_per_filter_config": {"envoy.filters.http.jwt_authn": {
                   "@type": jwt::PER_ROUTE, "requirement_name": "b_only"}}}),
        json!({"match": {"prefix": "/off"}, "route": {"cluster": "up"},
               "typed_per_filter_config": {"envoy.filters.http.jwt_authn": {
                   "@type": jwt::PER_ROUTE, "disabled": true}}}),
        json!({"match": {"prefix": "/"}, "route": {"cluster": "up"}}),
    );
    let l = Legate::start(&config(&filter, &routes, up, "")).await;
    let addr = l.listener("main").await;
    let ta = a_key.sign(&claims("api", 600));
    let mut tb_claims = claims("api", 600);
    tb_claims["iss"] = json!("https://b");
    let tb = b_key.sign(&tb_claims);
    let go = |path: &str, h: &[String]| {
        let mut args = vec![url(addr, path)];
        for x in h {
            args.push("-H".into());
            args.push(x.clone());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, body) = curl_get(&args);
        (code, if code == 200 { String::new() } else { body })
    };
    let ok = (200, String::new());
    let no = |c: u16, b: &str| (c, b.to_string());
    let hb = format!("x-b-token: {tb}");
    assert_eq!(go("/any", &[bearer(&ta)]), ok);
    assert_eq!(go("/any", std::slice::from_ref(&hb)), ok);
    assert_eq!(go("/any", &[]), no(401, "Jwt is missing"));
    assert_eq!(go("/both", &[bearer(&ta)]), no(401, "Jwt is missing"));
    assert_eq!(go("/both", &[bearer(&ta), hb.clone()]), ok);
    assert_eq!(go("/optional", &[]), ok);
    let expired = a_key.sign(&claims("api", -3600));
    assert_eq!(
        go("/optional", &[bearer(&expired)]),
        no(401, "Jwt is expired")
    );
    assert_eq!(go("/public", &[]), ok);
    assert_eq!(go("/named", &[bearer(&ta)]), no(401, "Jwt is missing"));
    assert_eq!(go("/named", std::slice::from_ref(&hb)), ok);
    assert_eq!(go("/off", &[]), ok);
    assert_eq!(go("/else", &[]), no(401, "Jwt is missing"));
    let (code, _, _) = curl_get(&[
        "-X",
        "OPTIONS",
        &url(addr, "/else"),
        "-H",
        "origin: https://app.example",
        "-H",
        "access-control-request-method: GET",
    ]);
    assert_eq!(code, 200);
    assert_eq!(
        l.stat("http.ingress.jwt_authn.cors_preflight_bypassed")
            .await,
        1
    );
}

#[test]
fn config_mistakes_are_refused_with_their_place() {
    let up: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let key = Key::hs256("k");
    let cases = [
        (
            json!({"providers": {"idp": local_provider(&[&key])},
                   "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "ipd"}}]}),
            "Required provider ['ipd'] is not configured; did you mean \"idp\"?",
        ),
        (
            json!({"providers": {"idp": remote("jwks-cluster", "1s")}}),
            "unknown cluster \"jwks-cluster\"",
        ),
        (
            json!({"providers": {"idp": {"issuer": "x"}}}),
            "one of \"remote_jwks\" or \"local_jwks\" is required",
        ),
        (
            json!({"providers": {"idp": {"local_jwks": {"inline_string": "{}"},
                                         "jwt_cache_config": {"jwt_cache_size": 10}}}}),
            "field \"jwt_cache_config\" is not supported by legate",
        ),
        (
            json!({"providers": {"idp": local_provider(&[&key])},
                   "rules": [{"match": {"prefix": "/"},
                              "requires": {"requires_any": {"requirements": [{"provider_name": "idp"}]}}}]}),
            "requires_any.requirements needs at least 2 items",
        ),
        (
            json!({"providers": {"idp": local_provider(&[&key])},
                   "rules": [{"match": {"prefix": "/"}, "requirement_name": "nope"}]}),
            "Wrong requirement_name: nope. It should be one of []",
        ),
    ];
    for (filter, want) in cases {
        let (ok, err) = validate(&config(&filter, ALL_TO_UP, up, ""));
        assert!(!ok, "accepted: {filter}");
        assert!(err.contains(want), "want {want:?} in:\n{err}");
        assert!(
            err.contains("jwt_authn") || err.contains("typed_config"),
            "{err}"
        );
    }
    // And a good one passes.
    let good = json!({"providers": {"idp": local_provider(&[&key])},
                      "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "idp"}}]});
    let (ok, err) = validate(&config(&good, ALL_TO_UP, up, ""));
    assert!(ok, "{err}");
}
