//! Responses the proxy makes itself: no route, upstream failures, direct
//! responses, filter replies. gRPC requests get a trailers-only gRPC answer.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::body::Body;

/// Envoy's HTTP status to gRPC status mapping for local replies.
pub fn grpc_status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// gRPC's percent-encoding of `grpc-message`.
fn grpc_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Envoy's test: `application/grpc` or `application/grpc+<codec>` (not grpc-web).
pub use legate_filter_api::matcher::is_grpc;

/// Builds a local reply. `grpc_status` overrides the mapped one.
pub fn build(
    status: StatusCode,
    body: &[u8],
    grpc: bool,
    grpc_status: Option<u32>,
    extra: Option<&HeaderMap>,
    content_type: Option<&'static str>,
) -> Response<Body> {
    let mut resp = if grpc {
        let mut r = Response::new(Body::Empty);
        *r.status_mut() = StatusCode::OK;
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        let code = grpc_status.unwrap_or_else(|| grpc_status_for(status));
        h.insert("grpc-status", HeaderValue::from(code));
        if !body.is_empty() {
            let msg = grpc_message(&String::from_utf8_lossy(body));
            if let Ok(v) = HeaderValue::from_str(&msg) {
                h.insert("grpc-message", v);
            }
        }
        r
    } else {
        let mut r = Response::new(Body::full(bytes::Bytes::copy_from_slice(body)));
        *r.status_mut() = status;
        let h = r.headers_mut();
        if !body.is_empty() {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(content_type.unwrap_or("text/plain")),
            );
        }
        r
    };
    if let Some(extra) = extra {
        for (k, v) in extra {
            resp.headers_mut().append(k.clone(), v.clone());
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_replies_are_trailers_only() {
        let r = build(
            StatusCode::SERVICE_UNAVAILABLE,
            b"no healthy upstream",
            true,
            None,
            None,
            None,
        );
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "no healthy upstream");
        assert!(matches!(r.body(), Body::Empty));
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(grpc_message("a%b\n"), "a%25b%0A");
    }
}
