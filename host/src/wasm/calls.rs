//! Calls out of a VM: `proxy_http_call` and unary `proxy_grpc_call`, sent to a
//! configured cluster through the worker's pools.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;

use crate::http::body::Body;
use crate::upstream::WorkerClusters;

/// A call a callback asked for; the VM starts it once the callback returns.
pub struct OutCall {
    pub token: u32,
    pub context: u32,
    pub cluster: String,
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    pub timeout: Duration,
    pub kind: CallKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Http,
    /// A unary gRPC call: the response is unframed and trailers carry the status.
    Grpc,
}

/// What came back: headers are empty when the call failed before a response.
#[derive(Default)]
pub struct CallResponse {
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    pub trailers: Vec<(Bytes, Bytes)>,
    /// gRPC status and message (from trailers, or 14 UNAVAILABLE on failure).
    pub grpc_status: (u32, Bytes),
}

fn pairs(h: &HeaderMap) -> Vec<(Bytes, Bytes)> {
    h.iter()
        .map(|(k, v)| {
            (
                Bytes::copy_from_slice(k.as_str().as_bytes()),
                Bytes::copy_from_slice(v.as_bytes()),
            )
        })
        .collect()
}

/// Sends a call and waits for the whole response or the timeout.
pub async fn run(call: &OutCall, clusters: &WorkerClusters) -> CallResponse {
    match tokio::time::timeout(call.timeout, send(call, clusters)).await {
        Ok(Some(r)) => r,
        Ok(None) => failed(call.kind, 503, "upstream connect error"),
        Err(_) => failed(call.kind, 504, "timeout"),
    }
}

/// Envoy answers a failed call with a synthetic response: 503 when no upstream
/// answered, 504 on timeout.
fn failed(kind: CallKind, status: u16, why: &str) -> CallResponse {
    CallResponse {
        headers: vec![(
            Bytes::from_static(b":status"),
            Bytes::from(status.to_string()),
        )],
        grpc_status: (
            if kind == CallKind::Http { 0 } else { 14 },
            Bytes::from(why.to_string()),
        ),
        ..Default::default()
    }
}

async fn send(call: &OutCall, clusters: &WorkerClusters) -> Option<CallResponse> {
    let wc = clusters.get(&call.cluster)?.clone();
    let mut b = Request::builder();
    let (mut method, mut path, mut authority) = (None, None, None);
    let mut headers = HeaderMap::new();
    for (k, v) in &call.headers {
        match k.as_ref() {
            b":method" => method = Some(v.clone()),
            b":path" => path = Some(v.clone()),
            b":authority" => authority = Some(v.clone()),
            b":scheme" => {}
            _ => {
                if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(k), HeaderValue::from_bytes(v)) {
                    headers.append(n, v);
                }
            }
        }
    }
    let authority = authority.unwrap_or_else(|| Bytes::from(call.cluster.clone()));
    if let Ok(v) = HeaderValue::from_bytes(&authority) {
        headers.insert(http::header::HOST, v);
    }
    b = b.method(method.as_deref().unwrap_or(b"GET"));
    b = b.uri(path.as_deref().unwrap_or(b"/"));
    if wc.shared.config.http2 {
        b = b.version(http::Version::HTTP_2);
    }
    let mut req = b.body(Body::full(call.body.clone())).ok()?;
    *req.headers_mut() = headers;
    let host = wc.pick_host()?;
    let pool = wc.http_pool(&host).await.ok()?;
    let (resp, ret) = pool.send(&wc, &host, req).await.ok()?;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.ok()?;
    if let Some(r) = ret {
        r.release();
    }
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    let mut headers = vec![(
        Bytes::from_static(b":status"),
        Bytes::from(parts.status.as_str().to_string()),
    )];
    headers.extend(pairs(&parts.headers));
    let mut grpc_status = (0, Bytes::new());
    if call.kind != CallKind::Http {
        let find = |name: &str| {
            trailers
                .get(name)
                .or_else(|| parts.headers.get(name))
                .map(|v| v.as_bytes().to_vec())
        };
        let code = find("grpc-status")
            .and_then(|v| std::str::from_utf8(&v).ok()?.parse().ok())
            .unwrap_or(2);
        grpc_status = (code, Bytes::from(find("grpc-message").unwrap_or_default()));
    }
    Some(CallResponse {
        headers,
        body,
        trailers: pairs(&trailers),
        grpc_status,
    })
}

/// Frames a gRPC message (uncompressed).
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// The messages of a gRPC response body (uncompressed frames).
pub fn grpc_messages(mut body: &[u8]) -> Vec<Bytes> {
    let mut out = Vec::new();
    while body.len() >= 5 {
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if body.len() < 5 + len {
            break;
        }
        out.push(Bytes::copy_from_slice(&body[5..5 + len]));
        body = &body[5 + len..];
    }
    out
}
