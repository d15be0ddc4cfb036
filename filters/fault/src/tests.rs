use std::time::{Duration, SystemTime};

use legate_filter_api::http::{self, HeaderName, HeaderValue, Method, Uri, Version};
use legate_filter_api::{PerFilterConfig, ResponseFlags};

use super::*;

const NAME: &str = "envoy.filters.http.fault";

fn store() -> &'static Store {
    Box::leak(Box::new(Store::default()))
}

fn pct(n: u32) -> Percentage {
    Percentage {
        numerator: n,
        denominator: 100,
    }
}

fn head(pairs: &[(&str, &str)]) -> RequestHead {
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        headers.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    RequestHead {
        method: Method::GET,
        uri: Uri::from_static("/x"),
        version: Version::HTTP_11,
        headers,
    }
}

fn info() -> StreamInfo {
    StreamInfo::new(
        SystemTime::now(),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        1,
    )
}

fn abort_http(status: u16, p: u32) -> FaultConfig {
    FaultConfig {
        abort: Some(FaultAbort {
            kind: AbortKind::Http(status),
            percentage: pct(p),
        }),
        ..Default::default()
    }
}

/// Runs the request headers hook; the reply (if any) and the stream info.
async fn run(
    f: &mut Box<dyn HttpFilter>,
    h: &mut RequestHead,
    i: &mut StreamInfo,
) -> Option<LocalReply> {
    match f.on_request_headers(h, true, i).action().await {
        HeadersAction::Respond(r) => Some(*r),
        _ => None,
    }
}

#[tokio::test]
async fn a_full_abort_answers_locally_and_counts() {
    let s = store();
    let fac = FaultFactory::new(NAME, abort_http(503, 100), "http.t.", s);
    let mut f = fac.create();
    let mut i = info();
    let r = run(&mut f, &mut head(&[]), &mut i).await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.body, ABORT_BODY);
    assert_eq!(r.details, "fault_filter_abort");
    assert_eq!(r.response_flag, Some(ResponseFlag::FaultInjected));
    assert!(i.response_flags.has(ResponseFlag::FaultInjected));
    assert_eq!(s.get("http.t.fault.aborts_injected"), Some(1));
    assert_eq!(s.get("http.t.fault.active_faults"), Some(1));
    drop(f);
    assert_eq!(s.get("http.t.fault.active_faults"), Some(0));
}

#[tokio::test]
async fn zero_percent_never_faults() {
    let s = store();
    let fac = FaultFactory::new(NAME, abort_http(503, 0), "http.t.", s);
    for _ in 0..200 {
        assert!(
            run(&mut fac.create(), &mut head(&[]), &mut info())
                .await
                .is_none()
        );
    }
    assert_eq!(s.get("http.t.fault.aborts_injected"), Some(0));
}

#[tokio::test]
async fn seeded_percentages_repeat() {
    let s = store();
    let fac = FaultFactory::new(NAME, abort_http(500, 10), "http.t.", s);
    let mut runs = Vec::new();
    for _ in 0..2 {
        random::seed(42);
        let mut pattern = Vec::new();
        for _ in 0..1000 {
            pattern.push(
                run(&mut fac.create(), &mut head(&[]), &mut info())
                    .await
                    .is_some(),
            );
        }
        runs.push(pattern);
    }
    assert_eq!(runs[0], runs[1]);
    let n = runs[0].iter().filter(|a| **a).count();
    // 10% of 1000: a binomial count this far out has odds below 1e-6.
    assert!((50..=150).contains(&n), "{n} aborts");
}

#[tokio::test]
async fn header_abort_needs_the_header() {
    let s = store();
    let cfg = FaultConfig {
        abort: Some(FaultAbort {
            kind: AbortKind::Header,
            percentage: pct(100),
        }),
        ..Default::default()
    };
    let fac = FaultFactory::new(NAME, cfg, "http.t.", s);
    assert!(
        run(&mut fac.create(), &mut head(&[]), &mut info())
            .await
            .is_none()
    );
    let r = run(
        &mut fac.create(),
        &mut head(&[(headers::ABORT_REQUEST, "429")]),
        &mut info(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 429);
    let r = run(
        &mut fac.create(),
        &mut head(&[(headers::ABORT_GRPC_REQUEST, "14")]),
        &mut info(),
    )
    .await
    .unwrap();
    assert_eq!((r.status.as_u16(), r.grpc_status), (200, Some(14)));
    // A percentage header of 0 turns it off.
    let none = run(
        &mut fac.create(),
        &mut head(&[
            (headers::ABORT_REQUEST, "429"),
            (headers::ABORT_REQUEST_PERCENTAGE, "0"),
        ]),
        &mut info(),
    )
    .await;
    assert!(none.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_delay_comes_before_the_abort() {
    let s = store();
    let mut cfg = abort_http(503, 100);
    cfg.delay = Some(FaultDelay {
        fixed: Some(Duration::from_millis(200)),
        percentage: pct(100),
    });
    let fac = FaultFactory::new(NAME, cfg, "http.t.", s);
    let mut f = fac.create();
    let mut i = info();
    let t0 = tokio::time::Instant::now();
    let r = run(&mut f, &mut head(&[]), &mut i).await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(200));
    assert_eq!(r.status, 503);
    assert!(i.response_flags.has(ResponseFlag::DelayInjected));
    assert!(i.response_flags.has(ResponseFlag::FaultInjected));
    assert_eq!(s.get("http.t.fault.delays_injected"), Some(1));
    assert_eq!(s.get("http.t.fault.aborts_injected"), Some(1));
    // One stream, one active fault.
    assert_eq!(s.get("http.t.fault.active_faults"), Some(1));
}

#[tokio::test(start_paused = true)]
async fn a_delay_alone_stops_counting_once_over() {
    let s = store();
    let cfg = FaultConfig {
        delay: Some(FaultDelay {
            fixed: None,
            percentage: pct(100),
        }),
        ..Default::default()
    };
    let fac = FaultFactory::new(NAME, cfg, "http.t.", s);
    let mut f = fac.create();
    let mut i = info();
    let mut h = head(&[
        (headers::DELAY_REQUEST, "150"),
        (headers::DOWNSTREAM_SERVICE_CLUSTER, "web"),
    ]);
    let t0 = tokio::time::Instant::now();
    assert!(run(&mut f, &mut h, &mut i).await.is_none());
    assert_eq!(t0.elapsed(), Duration::from_millis(150));
    assert_eq!(s.get("http.t.fault.active_faults"), Some(0));
    assert_eq!(s.get("http.t.fault.web.delays_injected"), Some(1));
    assert_eq!(i.response_flags, {
        let mut f = ResponseFlags::default();
        f.set(ResponseFlag::DelayInjected);
        f
    });
}

#[tokio::test]
async fn max_active_faults_overflows() {
    let s = store();
    let mut cfg = abort_http(503, 100);
    cfg.max_active_faults = Some(1);
    let fac = FaultFactory::new(NAME, cfg, "http.t.", s);
    let mut first = fac.create();
    assert!(run(&mut first, &mut head(&[]), &mut info()).await.is_some());
    // The first stream is still alive, so the second may not fault.
    assert!(
        run(&mut fac.create(), &mut head(&[]), &mut info())
            .await
            .is_none()
    );
    assert_eq!(s.get("http.t.fault.faults_overflow"), Some(1));
    drop(first);
    assert!(
        run(&mut fac.create(), &mut head(&[]), &mut info())
            .await
            .is_some()
    );
}

#[tokio::test]
async fn conditions_select_requests() {
    let s = store();
    let mut cfg = abort_http(503, 100);
    cfg.upstream_cluster = Some("payments".into());
    cfg.downstream_nodes = ["canary".to_string()].into();
    let fac = FaultFactory::new(NAME, cfg, "http.t.", s);
    let node = [(headers::DOWNSTREAM_SERVICE_NODE, "canary")];
    let mut i = info();
    i.upstream_cluster = Some("payments".into());
    assert!(
        run(&mut fac.create(), &mut head(&node), &mut i)
            .await
            .is_some()
    );
    let mut other = info();
    other.upstream_cluster = Some("web".into());
    assert!(
        run(&mut fac.create(), &mut head(&node), &mut other)
            .await
            .is_none()
    );
    let mut i = info();
    i.upstream_cluster = Some("payments".into());
    assert!(
        run(&mut fac.create(), &mut head(&[]), &mut i)
            .await
            .is_none()
    );
}

#[tokio::test]
async fn a_route_override_replaces_the_filter_config() {
    let s = store();
    let fac = FaultFactory::new(NAME, abort_http(503, 100), "http.t.", s);
    let mut per = PerFilterConfig::default();
    per.insert(NAME, Arc::new(abort_http(418, 100)));
    let mut i = info();
    i.per_filter_config = Some(Arc::new(per));
    let r = run(&mut fac.create(), &mut head(&[]), &mut i)
        .await
        .unwrap();
    assert_eq!(r.status, 418);
    // Another filter's entry is not ours.
    let mut per = PerFilterConfig::default();
    per.insert("other", Arc::new(abort_http(418, 100)));
    let mut i = info();
    i.per_filter_config = Some(Arc::new(per));
    let r = run(&mut fac.create(), &mut head(&[]), &mut i)
        .await
        .unwrap();
    assert_eq!(r.status, 503);
}

#[tokio::test(start_paused = true)]
async fn a_throttled_response_takes_its_time() {
    let s = store();
    let cfg = FaultConfig {
        response_rate_limit: Some(FaultRateLimit {
            fixed_kbps: Some(4),
            percentage: pct(100),
        }),
        ..Default::default()
    };
    let fac = FaultFactory::new(NAME, cfg, "http.t.", s);
    let mut f = fac.create();
    let mut i = info();
    assert!(run(&mut f, &mut head(&[]), &mut i).await.is_none());
    let body = |request| BodyShape {
        request,
        trailers: false,
    };
    assert!(f.wants_body(body(false)));
    assert!(!f.wants_body(body(true)), "only the response is paced");
    let slice = f.max_response_chunk().unwrap();
    assert_eq!(slice, 204);
    let t0 = tokio::time::Instant::now();
    // 8 KiB at 4 KiB/s, after a 50 ms head start.
    let mut sent = 0;
    while sent < 8192 {
        let mut chunk = Bytes::from(vec![b'x'; slice.min(8192 - sent)]);
        sent += chunk.len();
        let a = f
            .on_response_body(&mut chunk, sent == 8192, &mut i)
            .action()
            .await;
        assert!(matches!(a, DataAction::Continue));
    }
    let took = t0.elapsed().as_secs_f64();
    assert!((1.9..2.0).contains(&took), "took {took}");
    assert_eq!(s.get("http.t.fault.response_rl_injected"), Some(1));
    assert_eq!(s.get("http.t.fault.active_faults"), Some(1));
}

#[test]
fn headers_condition_uses_route_matchers() {
    use legate_filter_api::matcher::{HeaderMatch, HeaderMatcher, StringMatch, StringMatcher};
    let cfg = FaultConfig {
        headers: vec![HeaderMatcher {
            name: http::HeaderName::from_static("x-chaos"),
            pseudo: None,
            kind: HeaderMatch::String(StringMatcher {
                kind: StringMatch::Exact("on".into()),
                ignore_case: false,
            }),
            invert: false,
        }],
        ..Default::default()
    };
    assert!(matches_headers(&cfg, &head(&[("x-chaos", "on")])));
    assert!(!matches_headers(&cfg, &head(&[("x-chaos", "off")])));
    assert!(!matches_headers(&cfg, &head(&[])));
}
