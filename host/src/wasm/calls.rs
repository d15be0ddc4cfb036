//! Calls out of a VM: `proxy_http_call` and unary `proxy_grpc_call`, sent to a
//! configured cluster through the worker's pools.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;

use crate::http::body::Body;
use crate::upstream::WorkerClusters;
use crate::upstream::call as upstream_call;

/// A call a callback asked for; the VM starts it once the callback returns.
pub struct OutCall {
    pub token: u32,
    /// For gRPC streams: the messages the guest sends, and its cancel signal.
    pub stream: Option<(
        tokio::sync::mpsc::UnboundedReceiver<StreamMsg>,
        std::sync::Arc<tokio::sync::Notify>,
    )>,
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
    /// A gRPC stream: messages go out through `proxy_grpc_send` and come back one
    /// event each.
    GrpcStream,
}

/// What the guest sends on a gRPC stream.
pub enum StreamMsg {
    Data(Bytes),
    End,
}

/// The outgoing side of a gRPC stream, kept by the VM while the stream lives.
pub struct StreamHandle {
    pub tx: tokio::sync::mpsc::UnboundedSender<StreamMsg>,
    pub cancel: std::sync::Arc<tokio::sync::Notify>,
}

/// What comes back on a gRPC stream, in order.
pub enum GrpcEvent {
    Initial(Vec<(Bytes, Bytes)>),
    Message(Bytes),
    Trailers(Vec<(Bytes, Bytes)>),
    Close(u32, Bytes),
}

/// A request body fed by the guest's `proxy_grpc_send` calls.
struct ChannelBody(tokio::sync::mpsc::UnboundedReceiver<StreamMsg>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = crate::http::body::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.0.poll_recv(cx) {
            std::task::Poll::Ready(Some(StreamMsg::Data(b))) => {
                std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b))))
            }
            std::task::Poll::Ready(_) => std::task::Poll::Ready(None),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// What came back: headers are empty when the call failed before a response.
#[derive(Default)]
pub struct CallResponse {
    pub headers: Vec<(Bytes, Bytes)>,
    pub body: Bytes,
    pub trailers: Vec<(Bytes, Bytes)>,
    /// gRPC status and message (from trailers, or 14 UNAVAILABLE on failure).
    pub grpc_status: (u32, Bytes),
    /// Why there is no real response: the synthetic 503 or 504 stands in for it.
    pub failure: Option<CallFailure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallFailure {
    Connect,
    Timeout,
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
        Ok(None) => failed(call.kind, CallFailure::Connect),
        Err(_) => failed(call.kind, CallFailure::Timeout),
    }
}

/// Envoy answers a failed call with a synthetic response: 503 when no upstream
/// answered, 504 on timeout.
fn failed(kind: CallKind, failure: CallFailure) -> CallResponse {
    let (status, why) = match failure {
        CallFailure::Connect => (503, "upstream connect error"),
        CallFailure::Timeout => (504, "timeout"),
    };
    CallResponse {
        failure: Some(failure),
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

/// The request of a call: the guest's pseudo-headers become the method, path
/// and authority (default: the cluster name).
fn request(call: &OutCall, body: Body) -> Option<Request<Body>> {
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
    let mut req = Request::builder()
        .method(method.as_deref().unwrap_or(b"GET"))
        .uri(path.as_deref().unwrap_or(b"/"))
        .body(body)
        .ok()?;
    let authority = authority.unwrap_or_else(|| Bytes::from(call.cluster.clone()));
    if let Ok(v) = HeaderValue::from_bytes(&authority) {
        headers.insert(http::header::HOST, v);
    }
    *req.headers_mut() = headers;
    let timeout = (call.kind != CallKind::GrpcStream).then_some(call.timeout);
    upstream_call::mark_internal(&mut req, &call.cluster, timeout);
    Some(req)
}

async fn send(call: &OutCall, clusters: &WorkerClusters) -> Option<CallResponse> {
    let req = request(call, Body::full(call.body.clone()))?;
    let (parts, collected) = upstream_call::whole(clusters, &call.cluster, req)
        .await
        .ok()?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    let mut headers = vec![(
        Bytes::from_static(b":status"),
        Bytes::from(parts.status.as_str().to_string()),
    )];
    headers.extend(pairs(&parts.headers));
    let mut grpc_status = (0, Bytes::new());
    if call.kind != CallKind::Http {
        grpc_status = status_of(&trailers, &parts.headers);
    }
    Some(CallResponse {
        headers,
        body,
        trailers: pairs(&trailers),
        grpc_status,
        failure: None,
    })
}

/// `grpc-status` and `grpc-message` from trailers (or trailers-only headers).
fn status_of(trailers: &HeaderMap, headers: &HeaderMap) -> (u32, Bytes) {
    let find = |name: &str| trailers.get(name).or_else(|| headers.get(name));
    let code = find("grpc-status")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(2);
    let msg = find("grpc-message").map_or(Bytes::new(), |v| Bytes::copy_from_slice(v.as_bytes()));
    (code, msg)
}

/// Runs a gRPC stream, handing each event to `emit` as it arrives. Ends with a
/// `Close` unless cancelled.
pub async fn run_stream(mut call: OutCall, clusters: &WorkerClusters, emit: impl Fn(GrpcEvent)) {
    let Some((rx, cancel)) = call.stream.take() else {
        return;
    };
    let body = Body::Stream(http_body_util::BodyExt::boxed_unsync(ChannelBody(rx)));
    let work = async {
        let unavailable = |why: &str| GrpcEvent::Close(14, Bytes::from(why.to_string()));
        let Some(req) = request(&call, body) else {
            return emit(unavailable("unknown cluster"));
        };
        let (resp, _) = match upstream_call::start(clusters, &call.cluster, req).await {
            Ok(r) => r,
            Err(e) => return emit(unavailable(&e.to_string())),
        };
        let (parts, mut body) = resp.into_parts();
        let mut initial = vec![(
            Bytes::from_static(b":status"),
            Bytes::from(parts.status.as_str().to_string()),
        )];
        initial.extend(pairs(&parts.headers));
        emit(GrpcEvent::Initial(initial));
        let mut buf = BytesMut::new();
        let mut trailers = HeaderMap::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return emit(GrpcEvent::Close(14, Bytes::from_static(b"stream reset")));
            };
            match frame.into_data() {
                Ok(d) => {
                    buf.extend_from_slice(&d);
                    while buf.len() >= 5 {
                        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                        if buf.len() < 5 + len {
                            break;
                        }
                        let msg = buf.split_to(5 + len).split_off(5).freeze();
                        emit(GrpcEvent::Message(msg));
                    }
                }
                Err(f) => {
                    if let Ok(t) = f.into_trailers() {
                        trailers = t;
                    }
                }
            }
        }
        if !trailers.is_empty() {
            emit(GrpcEvent::Trailers(pairs(&trailers)));
        }
        let (code, msg) = status_of(&trailers, &parts.headers);
        emit(GrpcEvent::Close(code, msg));
    };
    tokio::select! {
        _ = work => {}
        _ = cancel.notified() => {}
    }
}

/// Frames a gRPC message (uncompressed).
pub fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + msg.len());
    b.extend_from_slice(&[0]);
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    b.freeze()
}

/// The messages of a unary gRPC response body (uncompressed frames).
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
