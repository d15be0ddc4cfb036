use std::time::SystemTime;

use legate_filter_api::http::{HeaderName, Method, Uri, Version};

use super::*;

fn store() -> &'static Store {
    Box::leak(Box::new(Store::default()))
}

fn info(cluster: Option<&str>) -> StreamInfo {
    let mut i = StreamInfo::new(
        SystemTime::now(),
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        1,
    );
    i.upstream_cluster = cluster.map(Arc::from);
    i.upstream_host = Some("127.0.0.1:3".parse().unwrap());
    i
}

fn grpc_head(path: &str) -> RequestHead {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    RequestHead {
        method: Method::POST,
        uri: Uri::try_from(path).unwrap(),
        version: Version::HTTP_2,
        headers,
    }
}

fn frames(n: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..n {
        let payload = vec![b'm'; i * 3];
        out.push(0);
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend(payload);
    }
    out
}

fn trailers(status: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert(
        HeaderName::from_static("grpc-status"),
        HeaderValue::from_str(status).unwrap(),
    );
    t
}

/// A whole call: request with `req` messages split in 3-byte chunks, a 200
/// response with `resp` messages, then trailers with `status`.
async fn call(
    f: &mut Box<dyn HttpFilter>,
    i: &mut StreamInfo,
    path: &str,
    req: usize,
    resp: usize,
    status: &str,
) {
    let mut head = grpc_head(path);
    f.on_request_headers(&mut head, false, i).action().await;
    let body = frames(req);
    let chunks: Vec<&[u8]> = body.chunks(3).collect();
    for (k, c) in chunks.iter().enumerate() {
        let mut b = Bytes::copy_from_slice(c);
        f.on_request_body(&mut b, k + 1 == chunks.len(), i)
            .action()
            .await;
    }
    let mut rh = ResponseHead {
        status: StatusCode::OK,
        headers: grpc_head("/").headers,
    };
    f.on_response_headers(&mut rh, false, i).action().await;
    let mut b = Bytes::from(frames(resp));
    f.on_response_body(&mut b, false, i).action().await;
    let mut t = trailers(status);
    f.on_response_trailers(&mut t, i).action().await;
}

#[tokio::test]
async fn per_method_counts_split_frames_and_statuses() {
    let s = store();
    let cfg = GrpcStatsConfig {
        per_method: PerMethod::All,
        enable_upstream_stats: true,
        ..Default::default()
    };
    let fac = GrpcStatsFactory::new(cfg, s);
    let mut f = fac.create();
    let mut i = info(Some("up"));
    call(&mut f, &mut i, "/pkg.Svc/Chat", 4, 5, "0").await;
    let p = "cluster.up.grpc.pkg.Svc.Chat.";
    assert_eq!(s.get(&format!("{p}request_message_count")), Some(4));
    assert_eq!(s.get(&format!("{p}response_message_count")), Some(5));
    assert_eq!(s.get(&format!("{p}0")), Some(1));
    assert_eq!(s.get(&format!("{p}success")), Some(1));
    assert_eq!(s.get(&format!("{p}total")), Some(1));
    // Made only when counted, as in Envoy.
    assert_eq!(s.get(&format!("{p}failure")), None);
    assert_eq!(s.get(&format!("{p}upstream_rq_time")), Some(1));

    let mut f = fac.create();
    call(&mut f, &mut info(Some("up")), "/pkg.Svc/Chat", 1, 0, "99").await;
    assert_eq!(s.get(&format!("{p}other")), Some(1));
    assert_eq!(s.get(&format!("{p}failure")), Some(1));
    assert_eq!(s.get(&format!("{p}total")), Some(2));
}

#[tokio::test]
async fn trailers_only_responses_count_from_headers() {
    let s = store();
    let fac = GrpcStatsFactory::new(GrpcStatsConfig::default(), s);
    let mut f = fac.create();
    let mut i = info(Some("up"));
    f.on_request_headers(&mut grpc_head("/a.B/C"), true, &mut i)
        .action()
        .await;
    let mut rh = ResponseHead {
        status: StatusCode::OK,
        headers: trailers("14"),
    };
    f.on_response_headers(&mut rh, true, &mut i).action().await;
    assert_eq!(s.get("cluster.up.grpc.14"), Some(1));
    assert_eq!(s.get("cluster.up.grpc.failure"), Some(1));
    assert_eq!(s.get("cluster.up.grpc.total"), Some(1));
}

#[tokio::test]
async fn the_allowlist_picks_methods_and_the_rest_count_per_cluster() {
    let s = store();
    let cfg = GrpcStatsConfig {
        per_method: PerMethod::Allowlist([("a.B".to_string(), ["C".to_string()].into())].into()),
        ..Default::default()
    };
    let fac = GrpcStatsFactory::new(cfg, s);
    call(
        &mut fac.create(),
        &mut info(Some("up")),
        "/a.B/C",
        1,
        1,
        "0",
    )
    .await;
    call(
        &mut fac.create(),
        &mut info(Some("up")),
        "/a.B/D",
        2,
        2,
        "5",
    )
    .await;
    assert_eq!(s.get("cluster.up.grpc.a.B.C.success"), Some(1));
    assert_eq!(s.get("cluster.up.grpc.5"), Some(1));
    assert_eq!(s.get("cluster.up.grpc.request_message_count"), Some(2));
    assert_eq!(s.get("cluster.up.grpc.a.B.D.total"), None);
}

#[tokio::test]
async fn untracked_calls_count_nothing() {
    let s = store();
    let fac = GrpcStatsFactory::new(GrpcStatsConfig::default(), s);
    // No route, a path that is not /service/method, and not gRPC at all.
    call(&mut fac.create(), &mut info(None), "/a.B/C", 1, 1, "0").await;
    call(
        &mut fac.create(),
        &mut info(Some("up")),
        "/a/b/c",
        1,
        1,
        "0",
    )
    .await;
    let mut f = fac.create();
    let mut head = grpc_head("/a.B/C");
    head.headers
        .insert("content-type", HeaderValue::from_static("application/json"));
    f.on_request_headers(&mut head, true, &mut info(Some("up")))
        .action()
        .await;
    assert!(!f.wants_body(BodyShape {
        request: false,
        trailers: true
    }));
    assert!(s.snapshot().is_empty(), "{:?}", s.snapshot());
}

#[tokio::test]
async fn filter_state_holds_the_message_counts() {
    let s = store();
    let cfg = GrpcStatsConfig {
        emit_filter_state: true,
        replace_dots_in_grpc_service_name: true,
        per_method: PerMethod::All,
        ..Default::default()
    };
    let fac = GrpcStatsFactory::new(cfg, s);
    let mut i = info(Some("up"));
    call(&mut fac.create(), &mut i, "/pkg.Svc/M", 2, 0, "0").await;
    let st = i.filter_state(FILTER_STATE_KEY).unwrap();
    assert_eq!(st.json().unwrap(), r#"{"requestMessageCount":"2"}"#);
    assert_eq!(st.plain().unwrap(), "2,0");
    assert_eq!(s.get("cluster.up.grpc.pkg_Svc.M.success"), Some(1));
}

#[test]
fn paths_resolve_as_envoy_reads_them() {
    assert_eq!(service_and_method("/a.B/C"), Some(("a.B", "C")));
    assert_eq!(service_and_method("//a.B//C?x=1"), Some(("a.B", "C")));
    assert_eq!(service_and_method("/a/b/c"), None);
    assert_eq!(service_and_method("/a"), None);
}
