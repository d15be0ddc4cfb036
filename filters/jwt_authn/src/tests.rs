//! The filter end to end on one stream: tokens signed in the test with the keys
//! in `testdata/`, a fake HTTP client for remote key sets.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderName;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use legate_filter_api::matcher::{PathMatch, RouteMatch};
use legate_filter_api::upstream::{CallError, CallFuture, HttpClient};
use legate_filter_api::{HeadersAction, PerFilterConfig, RequestHead, StreamInfo};
use serde_json::{Value, json};

use super::*;
use crate::jwks::Jwks;

const NAME: &str = "envoy.filters.http.jwt_authn";

fn testdata(f: &str) -> Vec<u8> {
    std::fs::read(format!("{}/testdata/{f}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A signing key and the public JWK that verifies it.
struct Signer {
    alg: Algorithm,
    key: EncodingKey,
    kid: &'static str,
}

impl Signer {
    fn new(alg: Algorithm, kid: &'static str) -> Signer {
        let key = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
                EncodingKey::from_rsa_pem(&testdata("rsa.pem")).unwrap()
            }
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => {
                EncodingKey::from_rsa_pem(&testdata("rsa2.pem")).unwrap()
            }
            Algorithm::ES256 => EncodingKey::from_ec_pem(&testdata("ec256.pem")).unwrap(),
            Algorithm::ES384 => EncodingKey::from_ec_pem(&testdata("ec384.pem")).unwrap(),
            Algorithm::EdDSA => EncodingKey::from_ed_pem(&testdata("ed25519.pem")).unwrap(),
            _ => EncodingKey::from_secret(b"a shared secret of 32 bytes ...."),
        };
        Signer { alg, key, kid }
    }

    fn jwk(&self) -> Value {
        let mut v = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&self.key, self.alg).unwrap(),
        )
        .unwrap();
        v["kid"] = json!(self.kid);
        v
    }

    fn sign(&self, claims: &Value) -> String {
        let mut h = Header::new(self.alg);
        h.kid = Some(self.kid.to_string());
        jsonwebtoken::encode(&h, claims, &self.key).unwrap()
    }
}

fn jwks_of(signers: &[&Signer]) -> String {
    json!({"keys": signers.iter().map(|s| s.jwk()).collect::<Vec<_>>()}).to_string()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims() -> Value {
    json!({"iss": "https://issuer", "sub": "alice", "aud": "api", "exp": now() + 3600,
           "org": {"team": "core", "level": 3, "admin": true, "ratio": 1.5}})
}

fn local(issuer: &str, jwks: &str) -> Provider {
    let mut p = Provider::new(issuer);
    p.jwks = JwksSource::Local(Jwks::parse(jwks.as_bytes()).map(Arc::new));
    p
}

fn prefix(p: &str) -> RouteMatch {
    RouteMatch {
        path: PathMatch::Prefix(p.into()),
        case_sensitive: true,
        headers: Vec::new(),
        query_parameters: Vec::new(),
        grpc: false,
    }
}

fn rule(p: &str, r: Requirement) -> Rule {
    Rule {
        matcher: prefix(p),
        requires: Some(r),
    }
}

fn needs(provider: usize) -> Requirement {
    Requirement::Provider {
        provider,
        audiences: None,
    }
}

fn config(mut providers: Vec<Provider>, rules: Vec<Rule>) -> Config {
    for (i, p) in providers.iter_mut().enumerate() {
        if p.name.is_empty() {
            p.name = format!("p{i}");
        }
    }
    Config {
        providers,
        rules,
        requirement_map: Vec::new(),
        bypass_cors_preflight: false,
        strip_failure_response: false,
    }
}

struct Run {
    store: Store,
    factory: JwtAuthnFactory,
    client: Option<Rc<dyn HttpClient>>,
    per_route: Option<PerRouteConfig>,
}

struct Outcome {
    action: HeadersAction,
    head: RequestHead,
    info: StreamInfo,
}

impl Outcome {
    fn status(&self) -> u16 {
        match &self.action {
            HeadersAction::Respond(r) => r.status.as_u16(),
            _ => 200,
        }
    }
    fn body(&self) -> String {
        match &self.action {
            HeadersAction::Respond(r) => String::from_utf8_lossy(&r.body).into_owned(),
            _ => String::new(),
        }
    }
    fn challenge(&self) -> String {
        match &self.action {
            HeadersAction::Respond(r) => r
                .headers
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
            _ => String::new(),
        }
    }
    fn header(&self, n: &str) -> Option<String> {
        self.head
            .headers
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
    }
}

impl Run {
    fn new(c: Config) -> Run {
        let store = Store::default();
        let factory = JwtAuthnFactory::new(c, NAME, "in", &store);
        Run {
            store,
            factory,
            client: None,
            per_route: None,
        }
    }

    fn stat(&self, n: &str) -> i64 {
        self.store
            .get(&format!("http.in.jwt_authn.{n}"))
            .unwrap_or(-1)
    }

    fn request(&self, method: &str, uri: &str, headers: &[(&str, &str)]) -> Outcome {
        let mut h = http::HeaderMap::new();
        h.insert("host", "example.com".parse().unwrap());
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let mut head = RequestHead {
            method: method.parse().unwrap(),
            uri: uri.parse().unwrap(),
            version: http::Version::HTTP_11,
            headers: h,
        };
        let mut info = StreamInfo::new(
            std::time::SystemTime::now(),
            "10.0.0.1:1000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
            1,
        );
        info.http_client = self.client.clone();
        if let Some(pr) = &self.per_route {
            let mut c = PerFilterConfig::default();
            c.insert(NAME, Arc::new(pr.clone()));
            info.per_filter_config = Some(Arc::new(c));
        }
        let mut filter = self.factory.create();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let action = rt.block_on(
            filter
                .on_request_headers(&mut head, true, &mut info)
                .action(),
        );
        Outcome { action, head, info }
    }

    fn get(&self, uri: &str, headers: &[(&str, &str)]) -> Outcome {
        self.request("GET", uri, headers)
    }
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

#[test]
fn every_algorithm_family_verifies_and_rejects_a_forged_signature() {
    let algs = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::EdDSA,
    ];
    for alg in algs {
        let s = Signer::new(alg, "k1");
        let mut p = local("https://issuer", &jwks_of(&[&s]));
        p.forward_payload_header = Some(HeaderName::from_static("x-payload"));
        let run = Run::new(config(vec![p], vec![rule("/", needs(0))]));
        let token = s.sign(&claims());
        let ok = run.get("/a", &[("authorization", &bearer(&token))]);
        assert_eq!(ok.status(), 200, "{alg:?}: {}", ok.body());
        assert_eq!(
            ok.header("x-payload").as_deref(),
            token.split('.').nth(1),
            "{alg:?}"
        );
        assert!(
            ok.header("authorization").is_none(),
            "{alg:?}: token not stripped"
        );

        // Same header and payload, signature of other content.
        let other = s.sign(&json!({"iss": "https://issuer", "aud": "api", "x": 1}));
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            other.split('.').nth(2).unwrap()
        );
        let bad = run.get("/a", &[("authorization", &bearer(&forged))]);
        assert_eq!(bad.status(), 401, "{alg:?}");
        assert_eq!(bad.body(), "Jwt verification fails", "{alg:?}");
        assert_eq!(
            bad.challenge(),
            "Bearer realm=\"http://example.com/a\", error=\"invalid_token\""
        );
        assert_eq!((run.stat("allowed"), run.stat("denied")), (1, 1), "{alg:?}");
    }
}

#[test]
fn refusals_carry_envoys_status_texts() {
    let s = Signer::new(Algorithm::ES256, "k1");
    let mut p = local("https://issuer", &jwks_of(&[&s]));
    p.audiences = vec!["api".into()];
    let run = Run::new(config(vec![p], vec![rule("/", needs(0))]));
    let n = now();
    let with = |c: Value| {
        let t = s.sign(&c);
        run.get("/r?q=1", &[("authorization", &bearer(&t))])
    };
    let missing = run.get("/r?q=1", &[]);
    assert_eq!(
        (missing.status(), missing.body().as_str()),
        (401, "Jwt is missing")
    );
    assert_eq!(
        missing.challenge(),
        "Bearer realm=\"http://example.com/r?q=1\""
    );

    let cases = [
        (
            json!({"iss": "https://issuer", "aud": "api", "exp": n - 61}),
            401,
            "Jwt is expired",
        ),
        (
            json!({"iss": "https://issuer", "aud": "api", "exp": n - 30}),
            200,
            "",
        ),
        (
            json!({"iss": "https://issuer", "aud": "api", "nbf": n + 61}),
            401,
            "Jwt not yet valid",
        ),
        (
            json!({"iss": "https://issuer", "aud": "api", "nbf": n + 30}),
            200,
            "",
        ),
        (
            json!({"iss": "https://issuer", "aud": "other"}),
            403,
            "Audiences in Jwt are not allowed",
        ),
        (
            json!({"iss": "https://issuer", "aud": ["x", "https://api/"]}),
            200,
            "",
        ),
        (
            json!({"iss": "https://other", "aud": "api"}),
            401,
            "Jwt issuer is not configured",
        ),
        (json!({"aud": "api"}), 401, "Jwt issuer is not configured"),
        (
            json!({"iss": 7}),
            401,
            "Jwt payload [iss] field is not a string",
        ),
    ];
    for (c, code, body) in cases {
        let o = with(c.clone());
        assert_eq!((o.status(), o.body().as_str()), (code, body), "{c}");
        if code != 200 {
            assert!(o.challenge().ends_with(", error=\"invalid_token\""), "{c}");
        }
    }
    let garbage = run.get("/r", &[("authorization", "Bearer abc")]);
    assert_eq!(
        garbage.body(),
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
    );
    // A kid the key set lacks.
    let stranger = Signer::new(Algorithm::ES256, "k9").sign(&claims());
    let o = run.get("/r", &[("authorization", &bearer(&stranger))]);
    assert_eq!(
        o.body(),
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
}

#[test]
fn clock_skew_is_configurable() {
    let s = Signer::new(Algorithm::HS256, "k1");
    let mut p = local("", &jwks_of(&[&s]));
    p.clock_skew_seconds = 5;
    let run = Run::new(config(vec![p], vec![rule("/", needs(0))]));
    let t = s.sign(&json!({"exp": now() - 30}));
    let o = run.get("/", &[("authorization", &bearer(&t))]);
    assert_eq!(o.body(), "Jwt is expired");
}

#[test]
fn token_places_claims_and_forwarding() {
    let s = Signer::new(Algorithm::RS256, "k1");
    let mut p = local("https://issuer", &jwks_of(&[&s]));
    p.from_headers = vec![(HeaderName::from_static("x-token"), "Tok ".into())];
    p.from_params = vec!["tok".into()];
    p.from_cookies = vec!["jwt".into()];
    p.claim_to_headers = vec![
        (HeaderName::from_static("x-team"), "org.team".into()),
        (HeaderName::from_static("x-level"), "org.level".into()),
        (HeaderName::from_static("x-admin"), "org.admin".into()),
        (HeaderName::from_static("x-ratio"), "org.ratio".into()),
        (HeaderName::from_static("x-org"), "org".into()),
        (HeaderName::from_static("x-none"), "nope.nothing".into()),
    ];
    p.forward_payload_header = Some(HeaderName::from_static("x-payload"));
    p.pad_forward_payload_header = true;
    p.payload_in_metadata = Some("jwt_payload".into());
    let run = Run::new(config(vec![p], vec![rule("/", needs(0))]));
    let t = s.sign(&claims());

    let o = run.get(
        "/h",
        &[("x-token", &format!("Tok {t}")), ("x-team", "spoofed")],
    );
    assert_eq!(o.status(), 200, "{}", o.body());
    assert!(o.header("x-token").is_none());
    assert_eq!(o.header("x-team").as_deref(), Some("core"));
    assert_eq!(o.header("x-level").as_deref(), Some("3"));
    assert_eq!(o.header("x-admin").as_deref(), Some("true"));
    assert_eq!(o.header("x-ratio").as_deref(), Some("1.500000"));
    assert!(o.header("x-org").is_none() && o.header("x-none").is_none());
    let payload = o.header("x-payload").unwrap();
    assert_eq!(payload.len() % 4, 0);
    assert_eq!(payload.trim_end_matches('='), t.split('.').nth(1).unwrap());
    let md = &o.info.dynamic_metadata[METADATA_NAMESPACE];
    let MetadataValue::Struct(m) = md else {
        panic!("{md:?}")
    };
    let MetadataValue::Struct(payload) = &m["jwt_payload"] else {
        panic!()
    };
    assert_eq!(payload["sub"], MetadataValue::String("alice".into()));

    let o = run.get(&format!("/p?a=1&tok={t}&b=2"), &[]);
    assert_eq!(o.status(), 200);
    assert_eq!(o.head.uri, "/p?a=1&b=2");

    let cookie = format!("x=1; jwt={t}");
    let o = run.get("/c", &[("cookie", &cookie)]);
    assert_eq!(o.status(), 200);
    assert_eq!(o.header("cookie").as_deref(), Some(cookie.as_str()));

    // Authorization is not a place of this provider.
    let o = run.get("/c", &[("authorization", &bearer(&t))]);
    assert_eq!(o.body(), "Jwt is missing");
    // Every token found must pass.
    let expired = s.sign(&json!({"iss": "https://issuer", "exp": now() - 3600}));
    let o = run.get(
        &format!("/p?tok={expired}"),
        &[("x-token", &format!("Tok {t}"))],
    );
    assert_eq!(o.body(), "Jwt is expired");
}

#[test]
fn requirement_combinations() {
    let a = Signer::new(Algorithm::HS256, "a");
    let b = Signer::new(Algorithm::ES256, "b");
    let mut pa = local("https://a", &jwks_of(&[&a]));
    pa.from_headers = vec![(HeaderName::from_static("x-a"), String::new())];
    let mut pb = local("https://b", &jwks_of(&[&b]));
    pb.from_headers = vec![(HeaderName::from_static("x-b"), String::new())];
    pb.audiences = vec!["b-api".into()];
    let any = Requirement::Any(vec![needs(0), needs(1)]);
    let all = Requirement::All(vec![needs(0), needs(1)]);
    let rules = vec![
        rule("/any", any),
        rule("/all", all),
        rule(
            "/opt",
            Requirement::Any(vec![needs(0), Requirement::AllowMissing]),
        ),
        rule("/miss", Requirement::AllowMissing),
        rule("/fail", Requirement::AllowMissingOrFailed),
        rule(
            "/aud",
            Requirement::Provider {
                provider: 1,
                audiences: Some(vec!["other".into()]),
            },
        ),
        Rule {
            matcher: prefix("/open"),
            requires: None,
        },
    ];
    let run = Run::new(config(vec![pa, pb], rules));
    let ta = a.sign(&json!({"iss": "https://a"}));
    let tb = b.sign(&json!({"iss": "https://b", "aud": "b-api"}));
    let tb_other = b.sign(&json!({"iss": "https://b", "aud": "other"}));
    let ta_expired = a.sign(&json!({"iss": "https://a", "exp": now() - 3600}));
    let code = |p: &str, h: &[(&str, &str)]| {
        let o = run.get(p, h);
        (o.status(), o.body())
    };
    let ok = (200, String::new());
    let err = |c: u16, b: &str| (c, b.to_string());
    assert_eq!(code("/any", &[("x-a", &ta)]), ok);
    assert_eq!(code("/any", &[("x-b", &tb)]), ok);
    assert_eq!(code("/any", &[]), err(401, "Jwt is missing"));
    // A real error wins over "missing" in the answer of requires_any.
    assert_eq!(
        code("/any", &[("x-b", &ta_expired)]),
        err(401, "Jwt issuer is not configured")
    );
    assert_eq!(
        code("/any", &[("x-a", &ta_expired)]),
        err(401, "Jwt is expired")
    );
    assert_eq!(code("/all", &[("x-a", &ta)]), err(401, "Jwt is missing"));
    assert_eq!(code("/all", &[("x-a", &ta), ("x-b", &tb)]), ok);
    assert_eq!(code("/opt", &[]), ok);
    assert_eq!(
        code("/opt", &[("x-a", &ta_expired)]),
        err(401, "Jwt is expired")
    );
    assert_eq!(code("/miss", &[]), ok);
    assert_eq!(
        code("/miss", &[("x-a", &ta_expired)]),
        err(401, "Jwt is expired")
    );
    assert_eq!(code("/miss", &[("x-b", &tb)]), ok);
    assert_eq!(code("/fail", &[("x-a", &ta_expired)]), ok);
    assert_eq!(code("/fail", &[("x-a", "garbage")]), ok);
    assert_eq!(
        code("/aud", &[("x-b", &tb)]),
        err(403, "Audiences in Jwt are not allowed")
    );
    assert_eq!(code("/aud", &[("x-b", &tb_other)]), ok);
    assert_eq!(code("/open", &[]), ok);
    assert_eq!(code("/unmatched", &[]), ok);
    // A failed token stays in the request under allow_missing_or_failed.
    let o = run.get("/fail", &[("x-a", &ta_expired)]);
    assert_eq!(o.header("x-a").as_deref(), Some(ta_expired.as_str()));
}

#[test]
fn per_route_config_and_cors() {
    let s = Signer::new(Algorithm::EdDSA, "k");
    let mut c = config(vec![local("", &jwks_of(&[&s]))], vec![rule("/", needs(0))]);
    c.requirement_map = vec![
        ("open".into(), Requirement::AllowMissing),
        ("strict".into(), needs(0)),
    ];
    c.bypass_cors_preflight = true;
    let mut run = Run::new(c);
    let preflight = [
        ("origin", "http://x"),
        ("access-control-request-method", "GET"),
    ];
    assert_eq!(run.request("OPTIONS", "/", &preflight).status(), 200);
    assert_eq!(run.request("OPTIONS", "/", &preflight[..1]).status(), 401);
    assert_eq!(run.stat("cors_preflight_bypassed"), 1);

    run.per_route = Some(PerRouteConfig::RequirementName("open".into()));
    assert_eq!(run.get("/", &[]).status(), 200);
    run.per_route = Some(PerRouteConfig::RequirementName("strict".into()));
    assert_eq!(run.get("/", &[]).status(), 401);
    run.per_route = Some(PerRouteConfig::Disabled);
    assert_eq!(run.get("/", &[]).status(), 200);
    run.per_route = Some(PerRouteConfig::RequirementName("nope".into()));
    let o = run.get("/", &[]);
    assert_eq!(o.status(), 403);
    assert_eq!(
        o.body(),
        "Failed JWT authentication: Wrong requirement_name: nope. It should be one of [open,strict]"
    );
    assert_eq!(o.challenge(), "");
    let HeadersAction::Respond(r) = &o.action else {
        panic!()
    };
    assert_eq!(
        r.details,
        "jwt_authn_access_denied{Wrong_requirement_name:_nope._It_should_be_one_of_[open,strict]}"
    );
}

/// Serves key sets from memory, counting requests.
struct FakeJwks {
    docs: RefCell<Vec<(u16, String)>>,
    calls: Cell<usize>,
    fail: Cell<bool>,
}

impl HttpClient for FakeJwks {
    fn send(&self, cluster: &str, req: http::Request<Bytes>, _t: Duration) -> CallFuture<'_> {
        assert_eq!(cluster, "idp");
        assert_eq!(req.uri(), "/keys");
        assert_eq!(req.headers()["host"], "idp.example");
        self.calls.set(self.calls.get() + 1);
        let r = if self.fail.get() {
            Err(CallError::Connect)
        } else {
            let (code, body) = self.docs.borrow()[0].clone();
            let mut resp = http::Response::new(Bytes::from(body));
            *resp.status_mut() = http::StatusCode::from_u16(code).unwrap();
            Ok(resp)
        };
        Box::pin(async move { r })
    }
}

fn remote_provider(cache: Duration) -> Provider {
    let mut p = Provider::new("https://issuer");
    p.jwks = JwksSource::Remote(RemoteJwks {
        cluster: "idp".into(),
        authority: "idp.example".into(),
        path: "/keys".into(),
        timeout: Duration::from_secs(1),
        cache_duration: cache,
    });
    p
}

#[test]
fn remote_keys_are_fetched_once_cached_and_refetched_for_new_kids() {
    let old = Signer::new(Algorithm::RS256, "old");
    let new = Signer::new(Algorithm::ES384, "new");
    let fake = Rc::new(FakeJwks {
        docs: RefCell::new(vec![(200, jwks_of(&[&old]))]),
        calls: Cell::new(0),
        fail: Cell::new(false),
    });
    let mut run = Run::new(config(
        vec![remote_provider(Duration::from_secs(600))],
        vec![rule("/", needs(0))],
    ));
    run.factory = run.factory.with_kid_refetch_interval(Duration::ZERO);
    run.client = Some(fake.clone());
    let t_old = old.sign(&claims());
    for _ in 0..3 {
        assert_eq!(
            run.get("/", &[("authorization", &bearer(&t_old))]).status(),
            200
        );
    }
    assert_eq!(fake.calls.get(), 1);
    assert_eq!(run.stat("jwks_fetch_success"), 1);

    // Rotation: a token with a kid the cached set lacks fetches again.
    *fake.docs.borrow_mut() = vec![(200, jwks_of(&[&old, &new]))];
    let t_new = new.sign(&claims());
    assert_eq!(
        run.get("/", &[("authorization", &bearer(&t_new))]).status(),
        200
    );
    assert_eq!(fake.calls.get(), 2);

    // A kid nobody has: one more fetch, then the refusal.
    let stranger = Signer::new(Algorithm::ES256, "stranger").sign(&claims());
    let o = run.get("/", &[("authorization", &bearer(&stranger))]);
    assert_eq!(
        o.body(),
        "Jwks doesn't have key to match kid or alg from Jwt"
    );
    assert_eq!(fake.calls.get(), 3);
    assert_eq!(run.stat("jwks_fetch_success"), 3);
}

#[test]
fn unknown_kid_refetches_are_rate_limited() {
    let s = Signer::new(Algorithm::HS512, "k1");
    let fake = Rc::new(FakeJwks {
        docs: RefCell::new(vec![(200, jwks_of(&[&s]))]),
        calls: Cell::new(0),
        fail: Cell::new(false),
    });
    let mut run = Run::new(config(
        vec![remote_provider(Duration::from_secs(600))],
        vec![rule("/", needs(0))],
    ));
    run.client = Some(fake.clone());
    assert_eq!(
        run.get("/", &[("authorization", &bearer(&s.sign(&claims())))])
            .status(),
        200
    );
    let stranger = Signer::new(Algorithm::HS512, "k2").sign(&claims());
    for _ in 0..5 {
        assert_eq!(
            run.get("/", &[("authorization", &bearer(&stranger))])
                .status(),
            401
        );
    }
    assert_eq!(fake.calls.get(), 1, "refetches within 10 s of a fetch");
}

#[test]
fn remote_fetch_failures_answer_at_once_and_expired_sets_are_fetched_again() {
    let s = Signer::new(Algorithm::PS256, "k1");
    let fake = Rc::new(FakeJwks {
        docs: RefCell::new(vec![(503, "down".into())]),
        calls: Cell::new(0),
        fail: Cell::new(true),
    });
    let mut run = Run::new(config(
        vec![remote_provider(Duration::ZERO)],
        vec![rule("/", needs(0))],
    ));
    let t = s.sign(&claims());
    let auth = bearer(&t);
    // No client at all, a connect failure, a non-200, a bad document.
    let o = run.get("/", &[("authorization", &auth)]);
    assert_eq!(
        (o.status(), o.body().as_str()),
        (401, "Jwks remote fetch is failed")
    );
    run.client = Some(fake.clone());
    assert_eq!(
        run.get("/", &[("authorization", &auth)]).body(),
        "Jwks remote fetch is failed"
    );
    fake.fail.set(false);
    assert_eq!(
        run.get("/", &[("authorization", &auth)]).body(),
        "Jwks remote fetch is failed"
    );
    *fake.docs.borrow_mut() = vec![(200, "{\"keys\": []}".into())];
    assert_eq!(
        run.get("/", &[("authorization", &auth)]).body(),
        "Jwks remote fetch is failed"
    );
    assert_eq!(run.stat("jwks_fetch_failed"), 4);
    // A missing token needs no keys.
    assert_eq!(run.get("/", &[]).body(), "Jwt is missing");
    *fake.docs.borrow_mut() = vec![(200, jwks_of(&[&s]))];
    // cache_duration 0: every token fetches.
    assert_eq!(run.get("/", &[("authorization", &auth)]).status(), 200);
    assert_eq!(run.get("/", &[("authorization", &auth)]).status(), 200);
    assert_eq!(run.stat("jwks_fetch_success"), 2);
    assert_eq!(fake.calls.get(), 5);
}

#[test]
fn strip_failure_response_sends_bare_refusals() {
    let mut c = config(vec![local("", "{}")], vec![rule("/", needs(0))]);
    c.strip_failure_response = true;
    let run = Run::new(c);
    let o = run.get("/", &[]);
    assert_eq!(
        (o.status(), o.body(), o.challenge()),
        (401, String::new(), String::new())
    );
    // A provider whose inline keys cannot be read fails every token.
    let s = Signer::new(Algorithm::HS256, "k");
    let o = run.get("/", &[("authorization", &bearer(&s.sign(&claims())))]);
    let HeadersAction::Respond(r) = &o.action else {
        panic!()
    };
    assert_eq!(
        r.details,
        "jwt_authn_access_denied{Jwks_doesn't_have_any_valid_public_key}"
    );
}

#[test]
fn arbitrary_tokens_never_panic() {
    let s = Signer::new(Algorithm::EdDSA, "k");
    let h = Signer::new(Algorithm::HS256, "h");
    let run = Run::new(config(
        vec![local("", &jwks_of(&[&s, &h]))],
        vec![rule("/", needs(0))],
    ));
    let good = s.sign(&claims());
    // Every single-byte change of a good token, plus truncations.
    let alphabet = b"A_-.=+/%z0";
    let mut tried = 0;
    for i in 0..good.len() {
        for c in alphabet {
            let mut t = good.clone().into_bytes();
            t[i] = *c;
            let t = String::from_utf8(t).unwrap();
            let o = run.get("/", &[("authorization", &bearer(&t))]);
            assert!(o.status() == 200 || o.status() == 401, "{t}");
            tried += 1;
        }
        let o = run.get("/", &[("authorization", &bearer(&good[..i]))]);
        assert_eq!(o.status(), 401, "{}", &good[..i]);
    }
    assert!(tried > 1000);
    // Short Ed25519 signatures are named as such.
    let parts: Vec<&str> = good.split('.').collect();
    let short = format!("{}.{}.AAAA", parts[0], parts[1]);
    let o = run.get("/", &[("authorization", &bearer(&short))]);
    assert_eq!(o.body(), "Jwt ED25519 signature is wrong length");
}

#[test]
fn a_remembered_token_is_still_checked_for_time_and_still_forwarded() {
    let s = Signer::new(Algorithm::HS256, "k1");
    let mut p = local("", &jwks_of(&[&s]));
    p.clock_skew_seconds = 1;
    p.forward_payload_header = Some(HeaderName::from_static("x-payload"));
    let run = Run::new(config(vec![p], vec![rule("/", needs(0))]));
    let t = s.sign(&json!({"sub": "alice", "exp": now() + 1}));
    // The second request finds the token verified already; both are treated
    // alike, and both count as Envoy counts them without a jwt_cache_config.
    let first = run.get("/", &[("authorization", &bearer(&t))]);
    let second = run.get("/", &[("authorization", &bearer(&t))]);
    assert_eq!((first.status(), second.status()), (200, 200));
    assert!(first.header("x-payload").is_some());
    assert_eq!(first.header("x-payload"), second.header("x-payload"));
    assert_eq!(second.header("authorization"), None);
    assert_eq!(run.stat("jwt_cache_miss"), 2);
    assert_eq!(run.stat("jwt_cache_hit"), 0);
    // Once expired (past the 1 s skew), the remembered token is refused.
    std::thread::sleep(Duration::from_millis(3100));
    let late = run.get("/", &[("authorization", &bearer(&t))]);
    assert_eq!(
        (late.status(), late.body().as_str()),
        (401, "Jwt is expired")
    );
    // A forged copy of a good token differs in text, so it is verified, and fails.
    let good = s.sign(&json!({"sub": "bob", "exp": now() + 3600}));
    assert_eq!(
        run.get("/", &[("authorization", &bearer(&good))]).status(),
        200
    );
    let mut forged = good.clone().into_bytes();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let o = run.get("/", &[("authorization", &bearer(&forged))]);
    assert_eq!(o.body(), "Jwt verification fails");
}
