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
pub static X_ENVOY_ORIGINAL_HOST: HeaderName = HeaderName::from_static("x-envoy-original-host");
pub static VIA: HeaderName = HeaderName::from_static("via");
pub static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
pub static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes connection-specific headers, which must not cross a hop (and which
/// HTTP/2 forbids).
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    strip_listed(h, keep_upgrade);
    strip_standard(h, keep_upgrade);
}

/// Response side: Envoy forwards headers that `connection` names, and drops only
/// the standard hop-by-hop ones.
pub fn strip_hop_by_hop_response(h: &mut HeaderMap, keep_upgrade: bool) {
    strip_standard(h, keep_upgrade);
}

fn strip_listed(h: &mut HeaderMap, keep_upgrade: bool) {
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
}

fn strip_standard(h: &mut HeaderMap, keep_upgrade: bool) {
    // One scan finds which hop-by-hop headers are there (usually none, or just
    // `connection`); only those are looked up again.
    let (mut connection, mut upgrade, mut te, mut other) = (false, false, false, false);
    for k in h.keys() {
        if *k == header::CONNECTION {
            connection = true;
        } else if *k == header::UPGRADE {
            upgrade = true;
        } else if *k == header::TE {
            te = true;
        } else if *k == header::TRANSFER_ENCODING || *k == KEEP_ALIVE || *k == PROXY_CONNECTION {
            other = true;
        }
    }
    if !keep_upgrade {
        if connection {
            h.remove(header::CONNECTION);
        }
        if upgrade {
            h.remove(header::UPGRADE);
        }
    }
    if other {
        h.remove(&KEEP_ALIVE);
        h.remove(&PROXY_CONNECTION);
        h.remove(header::TRANSFER_ENCODING);
    }
    // `te` may only carry `trailers` past a hop.
    if te && let Some(v) = h.get(header::TE) {
        let keep = v
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

/// Appends this proxy's `via` value to the `via` header.
pub fn append_via(h: &mut HeaderMap, via: &HeaderValue) {
    let value = match h.get(&VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => {
            HeaderValue::from_str(&format!("{prev}, {}", via.to_str().unwrap_or_default())).ok()
        }
        _ => Some(via.clone()),
    };
    if let Some(v) = value {
        h.insert(VIA.clone(), v);
    }
}

/// HTTP/2 may carry several `cookie` headers; HTTP/1.1 needs one, joined by `; `.
pub fn join_cookies(h: &mut HeaderMap) {
    if h.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = h
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if let Ok(v) = HeaderValue::from_bytes(&joined.join(&b"; "[..])) {
        h.insert(header::COOKIE, v);
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
const INTERNAL_ONLY: [HeaderName; 16] = [
    HeaderName::from_static("x-envoy-internal"),
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    HeaderName::from_static("x-envoy-expected-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-retriable-status-codes"),
    HeaderName::from_static("x-envoy-retriable-header-names"),
    HeaderName::from_static("x-envoy-force-trace"),
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    HeaderName::from_static("x-envoy-ip-tags"),
    HeaderName::from_static("x-envoy-is-timeout-retry"),
    HeaderName::from_static("x-envoy-original-url"),
];

/// Removed too when the proxy is the edge (`use_remote_address`).
const EDGE_ONLY: [HeaderName; 4] = [
    HeaderName::from_static("x-envoy-decorator-operation"),
    HeaderName::from_static("x-envoy-downstream-service-cluster"),
    HeaderName::from_static("x-envoy-downstream-service-node"),
    HeaderName::from_static("x-envoy-original-path"),
];

pub static X_ENVOY_EXTERNAL_ADDRESS: HeaderName =
    HeaderName::from_static("x-envoy-external-address");
pub static X_ENVOY_INTERNAL: HeaderName = HeaderName::from_static("x-envoy-internal");

/// Request headers the router consumes: they steer this hop and never go upstream.
pub const ROUTER_CONSUMED: [HeaderName; 10] = [
    HeaderName::from_static("x-envoy-retry-on"),
    HeaderName::from_static("x-envoy-retry-grpc-on"),
    HeaderName::from_static("x-envoy-max-retries"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms"),
    HeaderName::from_static("x-envoy-upstream-rq-timeout-alt-response"),
    HeaderName::from_static("x-envoy-retriable-status-codes"),
    HeaderName::from_static("x-envoy-retriable-header-names"),
    HeaderName::from_static("x-envoy-upstream-alt-stat-name"),
    HeaderName::from_static("x-envoy-hedge-on-per-try-timeout"),
];

/// A header value for a number; values under 1024 (most service times) come from
/// a table made once, so the hot path does not allocate for them.
pub fn small_number(n: u64) -> HeaderValue {
    static TABLE: std::sync::LazyLock<Vec<HeaderValue>> =
        std::sync::LazyLock::new(|| (0..1024u64).map(HeaderValue::from).collect());
    match TABLE.get(n as usize) {
        Some(v) => v.clone(),
        None => HeaderValue::from(n),
    }
}

/// Whether any `x-envoy-*` header is present.
pub fn has_envoy_headers(h: &HeaderMap) -> bool {
    h.keys().any(|k| k.as_str().starts_with("x-envoy-"))
}

/// The connection manager's request header edits, as Envoy's
/// `ConnectionManagerUtility::mutateRequestHeaders`: `x-forwarded-for`,
/// `x-forwarded-proto`, `x-envoy-external-address`, `x-envoy-internal`,
/// `x-request-id`, and the removal of request-control headers from external
/// clients. Returns the address the rest of the stream treats as the client's.
pub fn mutate_request(
    cfg: &HttpConnectionManager,
    h: &mut HeaderMap,
    remote: SocketAddr,
) -> SocketAddr {
    if cfg.use_remote_address && !cfg.skip_xff_append {
        let value = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
            Some(prev) if !prev.is_empty() => format!("{prev},{}", remote.ip()),
            _ => remote.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(X_FORWARDED_FOR.clone(), v);
        }
    }
    let entries: Vec<std::net::IpAddr> = h
        .get(&X_FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .map(|x| {
            x.split(',')
                .map(|e| {
                    e.trim()
                        .parse()
                        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]))
                })
                .collect()
        })
        .unwrap_or_default();
    let hops = cfg.xff_num_trusted_hops as usize;
    // Without use_remote_address the client is the last address the trusted hops
    // vouch for; with it, the peer itself unless more hops are trusted.
    let from_xff = entries
        .len()
        .checked_sub(1 + hops)
        .map(|i| SocketAddr::new(entries[i], 0));
    let client = if cfg.use_remote_address && hops == 0 {
        remote
    } else {
        from_xff.unwrap_or(remote)
    };
    let internal = entries.len() == 1 && cfg.is_internal(client.ip());
    if (cfg.use_remote_address && hops == 0) || !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    if internal {
        h.insert(X_ENVOY_INTERNAL.clone(), HeaderValue::from_static("true"));
    } else {
        // Most requests carry no x-envoy-* header at all: one scan spares the
        // lookups.
        if has_envoy_headers(h) {
            for name in &INTERNAL_ONLY {
                h.remove(name);
            }
        }
        for name in &cfg.route_config.internal_only_headers {
            h.remove(name);
        }
        if cfg.use_remote_address {
            if has_envoy_headers(h) {
                for name in &EDGE_ONLY {
                    h.remove(name);
                }
            }
            if let Ok(v) = HeaderValue::from_str(&client.ip().to_string()) {
                h.insert(X_ENVOY_EXTERNAL_ADDRESS.clone(), v);
            }
        }
    }
    let edge_external = cfg.use_remote_address && !internal;
    let regenerate = edge_external && !cfg.preserve_external_request_id;
    if cfg.generate_request_id && (regenerate || !h.contains_key(&X_REQUEST_ID)) {
        // A request id needs uniqueness, not secrecy: fastrand is enough.
        let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = id.hyphenated().encode_lower(&mut buf);
        if let Ok(v) = HeaderValue::from_str(s) {
            h.insert(X_REQUEST_ID.clone(), v);
        }
    }
    client
}

fn apply_add(h: &mut HeaderMap, opt: &HeaderValueOption, value: String) {
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

/// Applies one side's mutations level by level. Within a level Envoy removes
/// first, then adds; values are rendered against the headers as they are then.
fn apply<'a>(
    levels: &[&'a HeaderMutations],
    side: impl Fn(&'a HeaderMutations) -> (&'a [HeaderValueOption], &'a [HeaderName]),
    h: &mut HeaderMap,
    base: &LogContext<'_>,
    response: bool,
) {
    for m in levels {
        let (add, remove) = side(m);
        for name in remove {
            h.remove(name);
        }
        if add.is_empty() {
            continue;
        }
        let values: Vec<String> = {
            let mut cx = base.clone();
            if response {
                cx.response_headers = Some(&*h);
            } else {
                cx.request_headers = Some(&*h);
            }
            add.iter()
                .map(|o| match o.value.literal() {
                    Some(s) => s.to_string(),
                    None => o.value.render_string(&cx, ""),
                })
                .collect()
        };
        for (o, v) in add.iter().zip(values) {
            apply_add(h, o, v);
        }
    }
}

/// Request-side mutations, most specific level first (route, vhost, route config)
/// unless `most_specific_header_mutations_wins` reversed the levels.
pub fn apply_request(levels: &[&HeaderMutations], h: &mut HeaderMap, cx: &LogContext<'_>) {
    apply(
        levels,
        |m| (&m.request_add, &m.request_remove),
        h,
        cx,
        false,
    );
}

pub fn apply_response(levels: &[&HeaderMutations], h: &mut HeaderMap, cx: &LogContext<'_>) {
    apply(
        levels,
        |m| (&m.response_add, &m.response_remove),
        h,
        cx,
        true,
    );
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
