//! Header rules of the connection manager: hop-by-hop headers, `x-forwarded-*`,
//! `x-request-id`, `x-envoy-*` stripping, and configured header mutations.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::access_log::format::LogContext;
use crate::config::{AppendAction, HeaderMutations, HeaderValueOption, HttpConnectionManager};

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");
pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub static X_ENVOY_UPSTREAM_RQ_TIMEOUT_MS: HeaderName =
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName =
    HeaderName::from_static("x-envoy-upstream-service-time");
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes connection-specific headers, which must not cross a hop (and which
/// HTTP/2 forbids).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    if let Some(conn) = h.get(header::CONNECTION).cloned() {
        // Headers named in `connection` are hop-by-hop too.
        if let Ok(list) = conn.to_str() {
            for name in list.split(',') {
                let name = name.trim();
                if name.eq_ignore_ascii_case("upgrade") && keep_upgrade {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(name.as_bytes())
                    && n != header::TE
                {
                    h.remove(n);
                }
            }
        }
    }
    if !keep_upgrade {
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
    h.remove(header::TRANSFER_ENCODING);
    h.remove("http2-settings");
    // `te` may only carry `trailers` past a hop.
    if let Some(te) = h.get(header::TE) {
        let keep = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if keep {
            h.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            h.remove(header::TE);
        }
    }
}

/// Whether the request is an HTTP/1.1 upgrade, and to what.
pub fn upgrade_type(h: &HeaderMap) -> Option<String> {
    let conn = h.get(header::CONNECTION)?.to_str().ok()?;
    if !conn
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
    {
        return None;
    }
    Some(h.get(header::UPGRADE)?.to_str().ok()?.to_ascii_lowercase())
}

/// Request-control headers Envoy removes from external requests
/// (`ConnectionManagerUtility::cleanInternalHeaders`).
const INTERNAL_ONLY: &[&str] = &[
    "x-envoy-internal",
    "x-envoy-retry-on",
    "x-envoy-retry-grpc-on",
    "x-envoy-max-retries",
    "x-envoy-upstream-rq-timeout-ms",
    "x-envoy-upstream-rq-per-try-timeout-ms",
    "x-envoy-upstream-rq-timeout-alt-response",
    "x-envoy-expected-rq-timeout-ms",
    "x-envoy-retriable-status-codes",
    "x-envoy-retriable-header-names",
    "x-envoy-force-trace",
    "x-envoy-hedge-on-per-try-timeout",
    "x-envoy-upstream-alt-stat-name",
    "x-envoy-ip-tags",
    "x-envoy-is-timeout-retry",
];

/// Removed too when the proxy is the edge (`use_remote_address`).
const EDGE_ONLY: &[&str] = &[
    "x-envoy-decorator-operation",
    "x-envoy-downstream-service-cluster",
    "x-envoy-downstream-service-node",
    "x-envoy-original-path",
];

pub static X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");

/// The connection manager's request header edits, as Envoy's: `x-forwarded-for`,
/// `x-forwarded-proto`, `x-request-id`, and the removal of request-control
/// `x-envoy-*` headers from external clients. Returns the address the rest of the
/// stream treats as the client's.
pub fn mutate_request(
    cfg: &HttpConnectionManager,
    h: &mut HeaderMap,
    remote: SocketAddr,
) -> SocketAddr {
    let xff: Option<String> = h
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut client = remote;
    let internal;
    if cfg.use_remote_address {
        internal = cfg.is_internal(remote.ip());
        let value = match xff.as_deref() {
            Some(prev) if !prev.is_empty() => format!("{prev},{}", remote.ip()),
            _ => remote.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        if !internal && let Ok(v) = HeaderValue::from_str(&remote.ip().to_string()) {
            h.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
        }
    } else {
        let parts: Vec<&str> = xff
            .as_deref()
            .map(|x| x.split(',').map(str::trim).collect())
            .unwrap_or_default();
        // The address `xff_num_trusted_hops` from the right is the client.
        if let Some(ip) = parts
            .len()
            .checked_sub(1 + cfg.xff_num_trusted_hops as usize)
            .and_then(|i| parts[i].parse::<std::net::IpAddr>().ok())
        {
            client = SocketAddr::new(ip, 0);
        }
        // Without a single trusted XFF address a request is external.
        internal = parts.len() == 1
            && parts[0]
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| cfg.is_internal(ip));
        if !h.contains_key(&X_FORWARDED_PROTO) {
            h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
        }
    }
    if internal {
        h.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    } else {
        for name in INTERNAL_ONLY {
            h.remove(*name);
        }
        if cfg.use_remote_address {
            for name in EDGE_ONLY {
                h.remove(*name);
            }
        }
    }
    let edge_external = cfg.use_remote_address && !internal;
    let regenerate = edge_external && !cfg.preserve_external_request_id;
    if cfg.generate_request_id && (regenerate || !h.contains_key(&X_REQUEST_ID)) {
        let id = uuid::Uuid::new_v4();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = id.hyphenated().encode_lower(&mut buf);
        if let Ok(v) = HeaderValue::from_str(s) {
            h.insert(X_REQUEST_ID.clone(), v);
        }
    }
    client
}

fn apply_add(h: &mut HeaderMap, opt: &HeaderValueOption, cx: &LogContext<'_>) {
    let value = match opt.value.literal() {
        Some(s) => s.to_string(),
        None => opt.value.render_string(cx, ""),
    };
    if value.is_empty() && !opt.keep_empty_value {
        return;
    }
    let Ok(v) = HeaderValue::from_str(&value) else {
        return;
    };
    match opt.action {
        AppendAction::AppendIfExistsOrAdd => {
            h.append(opt.name.clone(), v);
        }
        AppendAction::AddIfAbsent => {
            if !h.contains_key(&opt.name) {
                h.insert(opt.name.clone(), v);
            }
        }
        AppendAction::OverwriteIfExistsOrAdd => {
            h.insert(opt.name.clone(), v);
        }
        AppendAction::OverwriteIfExists => {
            if h.contains_key(&opt.name) {
                h.insert(opt.name.clone(), v);
            }
        }
    }
}

/// Applies request-side mutations, most specific level first (route, vhost, route
/// config), as Envoy does by default.
pub fn apply_request(levels: &[&HeaderMutations], h: &mut HeaderMap, cx: &LogContext<'_>) {
    for m in levels {
        for opt in &m.request_add {
            apply_add(h, opt, cx);
        }
        for name in &m.request_remove {
            h.remove(name);
        }
    }
}

pub fn apply_response(levels: &[&HeaderMutations], h: &mut HeaderMap, cx: &LogContext<'_>) {
    for m in levels {
        for opt in &m.response_add {
            apply_add(h, opt, cx);
        }
        for name in &m.response_remove {
            h.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-foo"),
        );
        h.insert("x-foo", HeaderValue::from_static("1"));
        h.insert(header::TE, HeaderValue::from_static("gzip, trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        strip_hop_by_hop(&mut h, false);
        assert!(h.get("x-foo").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
    }

    #[test]
    fn upgrade_is_detected() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert_eq!(upgrade_type(&h).as_deref(), Some("websocket"));
    }
}
