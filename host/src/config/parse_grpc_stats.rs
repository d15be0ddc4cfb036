//! `envoy.filters.http.grpc_stats`
//! (`envoy.extensions.filters.http.grpc_stats.v3.FilterConfig`).

use std::sync::Arc;

use legate_filter_api::HttpFilterFactory;
use legate_grpc_stats::{GrpcStatsConfig, GrpcStatsFactory, PerMethod};

use super::walk::{Field, Obj};

pub(crate) const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig";

/// The filter; its stats go under `cluster.<cluster>.grpc.`, so the HCM's stat
/// prefix is not used.
pub(crate) fn http(
    mut o: Obj<'_>,
    _name: &str,
    _stat_prefix: &str,
    _refs: &mut Vec<super::ClusterRef>,
) -> Option<Arc<dyn HttpFilterFactory>> {
    let flag =
        |o: &mut Obj<'_>, key: &'static str| o.get(key).and_then(|g| g.bool()).unwrap_or(false);
    let emit_filter_state = flag(&mut o, "emit_filter_state");
    let enable_upstream_stats = flag(&mut o, "enable_upstream_stats");
    let replace_dots_in_grpc_service_name = flag(&mut o, "replace_dots_in_grpc_service_name");
    let per_method = match o.one_of(&["stats_for_all_methods", "individual_method_stats_allowlist"])
    {
        Some(("stats_for_all_methods", g)) => match bool_value(&g)? {
            true => PerMethod::All,
            false => PerMethod::None,
        },
        Some((_, g)) => allowlist(&g)?,
        None => PerMethod::None,
    };
    o.finish();
    let config = GrpcStatsConfig {
        emit_filter_state,
        per_method,
        enable_upstream_stats,
        replace_dots_in_grpc_service_name,
    };
    Some(Arc::new(GrpcStatsFactory::new(
        config,
        crate::stats::store(),
    )))
}

/// A `google.protobuf.BoolValue`: a bare bool or `{value: b}`.
fn bool_value(f: &Field<'_>) -> Option<bool> {
    if f.is_map() {
        let mut o = f.obj()?;
        let v = o.get("value").and_then(|g| g.bool()).unwrap_or(false);
        o.finish();
        return Some(v);
    }
    f.bool()
}

/// `envoy.config.core.v3.GrpcMethodList`.
fn allowlist(f: &Field<'_>) -> Option<PerMethod> {
    let mut o = f.obj()?;
    let mut services = std::collections::HashMap::new();
    if let Some(s) = o.get("services") {
        for item in s.seq() {
            let mut so = item.obj()?;
            let name = so.req("name").and_then(|g| g.str());
            let methods = so
                .get("method_names")
                .map(|g| g.strings())
                .unwrap_or_default();
            so.finish();
            services
                .entry(name?)
                .or_insert_with(std::collections::HashSet::new)
                .extend(methods);
        }
    }
    o.finish();
    Some(PerMethod::Allowlist(services))
}
