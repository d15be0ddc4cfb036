//! Requests the proxy makes on its own behalf (Wasm filters' calls, native
//! filters' [`HttpClient`]): sent to a configured cluster through the worker's
//! pools, as Envoy's async client does.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use legate_filter_api::upstream::{CallError, CallFuture, HttpClient};

use super::WorkerClusters;
use super::pool::PoolReturn;
use crate::http::body::Body;

/// Marks a request as the proxy's own, as Envoy does: `x-envoy-internal`, the
/// expected timeout (unless `None`, for streams), and a `host` (default: the
/// cluster name).
pub fn mark_internal(req: &mut Request<Body>, cluster: &str, timeout: Option<Duration>) {
    let h = req.headers_mut();
    h.insert("x-envoy-internal", HeaderValue::from_static("true"));
    if let Some(t) = timeout {
        h.insert(
            "x-envoy-expected-rq-timeout-ms",
            HeaderValue::from(t.as_millis() as u64),
        );
    }
    if !h.contains_key(http::header::HOST)
        && let Ok(v) = HeaderValue::from_str(cluster)
    {
        h.insert(http::header::HOST, v);
    }
}

/// Sends `req` (origin-form URI, authority in `host`) to a host of `cluster`.
/// The response body streams; the HTTP/1.1 connection goes back to its pool
/// once the caller releases the returned handle after reading the body.
pub async fn start(
    clusters: &WorkerClusters,
    cluster: &str,
    mut req: Request<Body>,
) -> Result<(Response<Incoming>, Option<PoolReturn>), CallError> {
    let wc = clusters
        .get(cluster)
        .ok_or(CallError::UnknownCluster)?
        .clone();
    if wc.shared.config.http2 {
        // HTTP/2 carries :scheme and :authority, so the URI is absolute.
        let authority = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(cluster)
            .to_string();
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        match format!("http://{authority}{path}").parse() {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Err(CallError::Connect),
        }
        *req.version_mut() = http::Version::HTTP_2;
    }
    let host = wc.pick_host().ok_or(CallError::NoHealthyUpstream)?;
    let pool = wc.http_pool(&host).await.map_err(|_| CallError::Connect)?;
    pool.send(&wc, &host, req)
        .await
        .map_err(|_| CallError::Connect)
}

/// Sends `req` and reads the whole response: head, body and trailers.
pub async fn whole(
    clusters: &WorkerClusters,
    cluster: &str,
    req: Request<Body>,
) -> Result<(http::response::Parts, http_body_util::Collected<Bytes>), CallError> {
    let (resp, ret) = start(clusters, cluster, req).await?;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.map_err(|_| CallError::Connect)?;
    if let Some(r) = ret {
        r.release();
    }
    Ok((parts, collected))
}

/// A native filter's client is its worker's clusters and pools. Its requests
/// count in the cluster's request stats, as the router's do.
impl HttpClient for WorkerClusters {
    fn send(&self, cluster: &str, request: Request<Bytes>, timeout: Duration) -> CallFuture<'_> {
        let cluster = cluster.to_string();
        Box::pin(async move {
            let wc = self.get(&cluster).ok_or(CallError::UnknownCluster)?.clone();
            let (parts, body) = request.into_parts();
            let mut req = Request::from_parts(parts, Body::full(body));
            mark_internal(&mut req, &cluster, Some(timeout));
            let stats = wc.stats();
            stats.upstream_rq_total.inc();
            stats.upstream_rq_active.inc();
            let started = Instant::now();
            let r = tokio::time::timeout(timeout, whole(self, &cluster, req)).await;
            stats.upstream_rq_active.dec();
            match r {
                Ok(Ok((parts, collected))) => {
                    stats.upstream_rq.record(parts.status.as_u16());
                    stats.upstream_rq_time.record_duration(started.elapsed());
                    stats.upstream_rq_completed.inc();
                    Ok(Response::from_parts(parts, collected.to_bytes()))
                }
                Ok(Err(e)) => {
                    stats.upstream_rq_pending_failure_eject.inc();
                    stats.upstream_rq.record(503);
                    Err(e)
                }
                Err(_) => {
                    stats.upstream_rq_timeout.inc();
                    stats.upstream_rq.record(504);
                    Err(CallError::Timeout)
                }
            }
        })
    }
}
