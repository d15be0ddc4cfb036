//! The filter's config: Envoy's `envoy.extensions.filters.http.fault.v3.HTTPFault`,
//! already validated by the host. The same type is the per-route override.

use std::collections::HashSet;
use std::time::Duration;

use legate_filter_api::http::HeaderMap;
use legate_filter_api::matcher::HeaderMatcher;

/// The request headers that control faults when a `header_*` variant is set.
pub mod headers {
    /// HTTP status to abort with (`header_abort`).
    pub const ABORT_REQUEST: &str = "x-envoy-fault-abort-request";
    /// gRPC status to abort with (`header_abort`).
    pub const ABORT_GRPC_REQUEST: &str = "x-envoy-fault-abort-grpc-request";
    /// Abort percentage, capped by the configured one (`header_abort`).
    pub const ABORT_REQUEST_PERCENTAGE: &str = "x-envoy-fault-abort-request-percentage";
    /// Delay in milliseconds (`header_delay`).
    pub const DELAY_REQUEST: &str = "x-envoy-fault-delay-request";
    /// Delay percentage, capped by the configured one (`header_delay`).
    pub const DELAY_REQUEST_PERCENTAGE: &str = "x-envoy-fault-delay-request-percentage";
    /// Response rate in KiB/s (`header_limit`).
    pub const THROUGHPUT_RESPONSE: &str = "x-envoy-fault-throughput-response";
    /// Rate limit percentage, capped by the configured one (`header_limit`).
    pub const THROUGHPUT_RESPONSE_PERCENTAGE: &str = "x-envoy-fault-throughput-response-percentage";
    /// The calling service's node, matched against `downstream_nodes`.
    pub const DOWNSTREAM_SERVICE_NODE: &str = "x-envoy-downstream-service-node";
    /// The calling service's cluster, which gets its own fault counters.
    pub const DOWNSTREAM_SERVICE_CLUSTER: &str = "x-envoy-downstream-service-cluster";
}

pub use legate_filter_api::random::Percentage;

/// The percentage after a request header that may lower (never raise) it.
fn capped_by(p: Percentage, headers: &HeaderMap, name: &str) -> Percentage {
    match first_uint(headers, name).and_then(|n| u32::try_from(n).ok()) {
        Some(n) => Percentage {
            numerator: n.min(p.numerator),
            ..p
        },
        None => p,
    }
}

/// `delay`.
#[derive(Debug, Clone)]
pub struct FaultDelay {
    /// `fixed_delay`, or `None` for `header_delay`.
    pub fixed: Option<Duration>,
    /// `percentage`.
    pub percentage: Percentage,
}

impl FaultDelay {
    pub(crate) fn percentage(&self, h: &HeaderMap) -> Percentage {
        match self.fixed {
            Some(_) => self.percentage,
            None => capped_by(self.percentage, h, headers::DELAY_REQUEST_PERCENTAGE),
        }
    }

    pub(crate) fn duration(&self, h: &HeaderMap) -> Option<Duration> {
        match self.fixed {
            Some(d) => Some(d),
            None => first_uint(h, headers::DELAY_REQUEST).map(Duration::from_millis),
        }
    }
}

/// What an abort answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortKind {
    /// `http_status`.
    Http(u16),
    /// `grpc_status`: HTTP 200 with this `grpc-status`.
    Grpc(u32),
    /// `header_abort`: the status comes from the request headers.
    Header,
}

/// `abort`.
#[derive(Debug, Clone)]
pub struct FaultAbort {
    /// The status source.
    pub kind: AbortKind,
    /// `percentage`.
    pub percentage: Percentage,
}

impl FaultAbort {
    pub(crate) fn percentage(&self, h: &HeaderMap) -> Percentage {
        match self.kind {
            AbortKind::Header => capped_by(self.percentage, h, headers::ABORT_REQUEST_PERCENTAGE),
            _ => self.percentage,
        }
    }

    /// The HTTP status, and the gRPC status when aborting with one. `None` when
    /// a header abort has no usable header.
    pub(crate) fn status(&self, h: &HeaderMap) -> Option<(u16, Option<u32>)> {
        match self.kind {
            AbortKind::Http(s) => Some((s, None)),
            AbortKind::Grpc(g) => Some((200, Some(g))),
            // An HTTP status is tried first; without a usable one, a gRPC status.
            AbortKind::Header => first_uint(h, headers::ABORT_REQUEST)
                .filter(|c| (200..600).contains(c))
                .map(|c| (c as u16, None))
                .or_else(|| {
                    first_uint(h, headers::ABORT_GRPC_REQUEST)
                        .and_then(|g| u32::try_from(g).ok())
                        .map(|g| (200, Some(g)))
                }),
        }
    }
}

/// `response_rate_limit`.
#[derive(Debug, Clone)]
pub struct FaultRateLimit {
    /// `fixed_limit.limit_kbps`, or `None` for `header_limit`.
    pub fixed_kbps: Option<u64>,
    /// `percentage`.
    pub percentage: Percentage,
}

impl FaultRateLimit {
    pub(crate) fn percentage(&self, h: &HeaderMap) -> Percentage {
        match self.fixed_kbps {
            Some(_) => self.percentage,
            None => capped_by(self.percentage, h, headers::THROUGHPUT_RESPONSE_PERCENTAGE),
        }
    }

    pub(crate) fn kbps(&self, h: &HeaderMap) -> Option<u64> {
        match self.fixed_kbps {
            Some(k) => Some(k),
            None => first_uint(h, headers::THROUGHPUT_RESPONSE).filter(|k| *k > 0),
        }
    }
}

/// `HTTPFault`.
#[derive(Debug, Default)]
pub struct FaultConfig {
    /// `delay`.
    pub delay: Option<FaultDelay>,
    /// `abort`.
    pub abort: Option<FaultAbort>,
    /// `response_rate_limit`.
    pub response_rate_limit: Option<FaultRateLimit>,
    /// `upstream_cluster`: only requests routed there get faults.
    pub upstream_cluster: Option<String>,
    /// `headers`: all must match for a fault.
    pub headers: Vec<HeaderMatcher>,
    /// `downstream_nodes`: only these callers (`x-envoy-downstream-service-node`).
    pub downstream_nodes: HashSet<String>,
    /// `max_active_faults`.
    pub max_active_faults: Option<u64>,
    /// `disable_downstream_cluster_stats`.
    pub disable_downstream_cluster_stats: bool,
}

/// The first value of a header as an unsigned integer, read as Envoy does
/// (surrounding blanks and a leading `+` allowed; later values ignored, since
/// the header is untrusted).
fn first_uint(h: &HeaderMap, name: &str) -> Option<u64> {
    let v = h.get(name)?.to_str().ok()?.trim_matches([' ', '\t']);
    v.strip_prefix('+').unwrap_or(v).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                legate_filter_api::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        m
    }

    #[test]
    fn percentages_cover_all_denominators() {
        let half = Percentage {
            numerator: 50,
            denominator: 100,
        };
        assert!(half.hit(49) && !half.hit(50) && half.hit(149));
        let tiny = Percentage {
            numerator: 1,
            denominator: 1_000_000,
        };
        assert!(tiny.hit(1_000_000) && !tiny.hit(1));
        let over = Percentage {
            numerator: 20_000,
            denominator: 10_000,
        };
        assert!((0..10_000).all(|r| over.hit(r)));
        assert!((0..1000).all(|r| !Percentage::NEVER.hit(r)));
    }

    #[test]
    fn a_header_lowers_a_percentage_but_never_raises_it() {
        let a = FaultAbort {
            kind: AbortKind::Header,
            percentage: Percentage {
                numerator: 40,
                denominator: 100,
            },
        };
        let low = h(&[(headers::ABORT_REQUEST_PERCENTAGE, "10")]);
        assert_eq!(a.percentage(&low).numerator, 10);
        let high = h(&[(headers::ABORT_REQUEST_PERCENTAGE, "90")]);
        assert_eq!(a.percentage(&high).numerator, 40);
        let junk = h(&[(headers::ABORT_REQUEST_PERCENTAGE, "ten")]);
        assert_eq!(a.percentage(&junk).numerator, 40);
        // A fixed abort ignores the header.
        let fixed = FaultAbort {
            kind: AbortKind::Http(503),
            ..a.clone()
        };
        assert_eq!(fixed.percentage(&low).numerator, 40);
    }

    #[test]
    fn header_abort_statuses() {
        let a = FaultAbort {
            kind: AbortKind::Header,
            percentage: Percentage::NEVER,
        };
        assert_eq!(
            a.status(&h(&[(headers::ABORT_REQUEST, " 429 ")])),
            Some((429, None))
        );
        assert_eq!(a.status(&h(&[(headers::ABORT_REQUEST, "600")])), None);
        assert_eq!(a.status(&h(&[(headers::ABORT_REQUEST, "199")])), None);
        assert_eq!(
            a.status(&h(&[(headers::ABORT_GRPC_REQUEST, "14")])),
            Some((200, Some(14)))
        );
        // A valid HTTP status wins; an invalid one leaves the gRPC one.
        assert_eq!(
            a.status(&h(&[
                (headers::ABORT_REQUEST, "503"),
                (headers::ABORT_GRPC_REQUEST, "14")
            ])),
            Some((503, None))
        );
        assert_eq!(
            a.status(&h(&[
                (headers::ABORT_REQUEST, "x"),
                (headers::ABORT_GRPC_REQUEST, "14")
            ])),
            Some((200, Some(14)))
        );
        assert_eq!(a.status(&h(&[])), None);
        // Only the first value counts.
        assert_eq!(
            a.status(&h(&[
                (headers::ABORT_REQUEST, "503"),
                (headers::ABORT_REQUEST, "429")
            ])),
            Some((503, None))
        );
    }

    #[test]
    fn header_delay_and_limit() {
        let d = FaultDelay {
            fixed: None,
            percentage: Percentage::NEVER,
        };
        assert_eq!(
            d.duration(&h(&[(headers::DELAY_REQUEST, "+250")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(d.duration(&h(&[(headers::DELAY_REQUEST, "-1")])), None);
        let l = FaultRateLimit {
            fixed_kbps: None,
            percentage: Percentage::NEVER,
        };
        assert_eq!(l.kbps(&h(&[(headers::THROUGHPUT_RESPONSE, "0")])), None);
        assert_eq!(
            l.kbps(&h(&[(headers::THROUGHPUT_RESPONSE, "64")])),
            Some(64)
        );
    }
}
