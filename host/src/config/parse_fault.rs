//! `envoy.filters.http.fault` (`envoy.extensions.filters.http.fault.v3.HTTPFault`),
//! as the filter's config and as its per-route override.

use std::any::Any;
use std::sync::Arc;

use legate_fault::{
    AbortKind, FaultAbort, FaultConfig, FaultDelay, FaultFactory, FaultRateLimit, Percentage,
};
use legate_filter_api::HttpFilterFactory;

use super::parse_http::header_matcher;
use super::walk::{Field, Obj};

pub(crate) const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault";

/// The filter, counting under `http.<stat_prefix>.fault.`.
pub(crate) fn http(
    o: Obj<'_>,
    name: &str,
    stat_prefix: &str,
    _refs: &mut Vec<super::ClusterRef>,
) -> Option<Arc<dyn HttpFilterFactory>> {
    let config = fault(o)?;
    let prefix = format!("http.{stat_prefix}.");
    Some(Arc::new(FaultFactory::new(
        name,
        config,
        &prefix,
        crate::stats::store(),
    )))
}

/// A route's `HTTPFault`, which replaces the filter's config on that route.
pub(crate) fn per_route(o: Obj<'_>) -> Option<Arc<dyn Any + Send + Sync>> {
    fault(o).map(|c| Arc::new(c) as Arc<dyn Any + Send + Sync>)
}

fn fault(mut o: Obj<'_>) -> Option<FaultConfig> {
    // The `*_runtime` fields name runtime keys that override the config. Legate has
    // no runtime (`layered_runtime` is refused), so a key never has a value and the
    // config applies, as in Envoy with no runtime values set.
    for key in [
        "delay_percent_runtime",
        "abort_percent_runtime",
        "delay_duration_runtime",
        "abort_http_status_runtime",
        "abort_grpc_status_runtime",
        "max_active_faults_runtime",
        "response_rate_limit_percent_runtime",
    ] {
        if let Some(g) = o.get(key) {
            g.str();
        }
    }
    let delay = o.get("delay").and_then(|g| delay(&g));
    let abort = o.get("abort").and_then(|g| abort(&g));
    let response_rate_limit = o.get("response_rate_limit").and_then(|g| rate_limit(&g));
    let upstream_cluster = o
        .get("upstream_cluster")
        .and_then(|g| g.str())
        .filter(|c| !c.is_empty());
    let headers = o
        .get("headers")
        .map(|g| g.seq().iter().filter_map(header_matcher).collect())
        .unwrap_or_default();
    let downstream_nodes = o
        .get("downstream_nodes")
        .map(|g| g.strings().into_iter().collect())
        .unwrap_or_default();
    let max_active_faults = o.get("max_active_faults").and_then(|g| uint32_value(&g));
    let disable_downstream_cluster_stats = o
        .get("disable_downstream_cluster_stats")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    o.finish();
    Some(FaultConfig {
        delay,
        abort,
        response_rate_limit,
        upstream_cluster,
        headers,
        downstream_nodes,
        max_active_faults,
        disable_downstream_cluster_stats,
    })
}

/// A `google.protobuf.UInt32Value`: a bare number or `{value: n}`.
fn uint32_value(f: &Field<'_>) -> Option<u64> {
    if f.is_map() {
        let mut o = f.obj()?;
        let v = o.req("value").and_then(|g| g.u32());
        o.finish();
        return v.map(u64::from);
    }
    f.u32().map(u64::from)
}

/// `envoy.type.v3.FractionalPercent`; absent means Envoy's default, 0%.
pub(crate) fn fractional_percent(o: &mut Obj<'_>) -> Percentage {
    fractional_percent_at(o, "percentage")
}

/// A `FractionalPercent` under `key`; absent means 0%.
pub(crate) fn fractional_percent_at(o: &mut Obj<'_>, key: &'static str) -> Percentage {
    let Some(g) = o.get(key) else {
        return Percentage::NEVER;
    };
    let Some(mut p) = g.obj() else {
        return Percentage::NEVER;
    };
    let numerator = p.get("numerator").and_then(|g| g.u32()).unwrap_or(0);
    let denominator = p
        .get("denominator")
        .and_then(|g| g.enumeration(&["HUNDRED", "TEN_THOUSAND", "MILLION"], &[]))
        .map_or(100, |d| match d {
            "TEN_THOUSAND" => 10_000,
            "MILLION" => 1_000_000,
            _ => 100,
        });
    p.finish();
    Percentage {
        numerator,
        denominator,
    }
}

/// An empty message such as `header_delay: {}`.
fn empty(f: &Field<'_>) {
    if let Some(o) = f.obj() {
        o.finish();
    }
}

fn delay(f: &Field<'_>) -> Option<FaultDelay> {
    let mut o = f.obj()?.unsupported(&["type"]);
    let fixed = match o.one_of(&["fixed_delay", "header_delay"]) {
        Some(("fixed_delay", g)) => Some(Some(g.duration()?)),
        Some((_, g)) => {
            empty(&g);
            Some(None)
        }
        None => {
            o.error("one of \"fixed_delay\" or \"header_delay\" is required");
            None
        }
    };
    let percentage = fractional_percent(&mut o);
    o.finish();
    Some(FaultDelay {
        fixed: fixed?,
        percentage,
    })
}

fn abort(f: &Field<'_>) -> Option<FaultAbort> {
    let mut o = f.obj()?;
    let kind = match o.one_of(&["http_status", "grpc_status", "header_abort"]) {
        Some(("http_status", g)) => match g.u32() {
            Some(s) if (200..600).contains(&s) => Some(AbortKind::Http(s as u16)),
            Some(s) => {
                g.error(format!("http_status must be in [200, 600), found {s}"));
                None
            }
            None => None,
        },
        Some(("grpc_status", g)) => g.u32().map(AbortKind::Grpc),
        Some((_, g)) => {
            empty(&g);
            Some(AbortKind::Header)
        }
        None => {
            o.error("one of \"http_status\", \"grpc_status\" or \"header_abort\" is required");
            None
        }
    };
    let percentage = fractional_percent(&mut o);
    o.finish();
    Some(FaultAbort {
        kind: kind?,
        percentage,
    })
}

fn rate_limit(f: &Field<'_>) -> Option<FaultRateLimit> {
    let mut o = f.obj()?;
    let fixed_kbps = match o.one_of(&["fixed_limit", "header_limit"]) {
        Some(("fixed_limit", g)) => {
            let mut l = g.obj()?;
            let kbps = l.req("limit_kbps").and_then(|k| {
                let v = k.u64()?;
                if v == 0 {
                    k.error("limit_kbps must be at least 1");
                    return None;
                }
                Some(v)
            });
            l.finish();
            Some(Some(kbps?))
        }
        Some((_, g)) => {
            empty(&g);
            Some(None)
        }
        None => {
            o.error("one of \"fixed_limit\" or \"header_limit\" is required");
            None
        }
    };
    let percentage = fractional_percent(&mut o);
    o.finish();
    Some(FaultRateLimit {
        fixed_kbps: fixed_kbps?,
        percentage,
    })
}
