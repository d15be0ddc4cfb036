//! `envoy.filters.network.redis_proxy` (`envoy.extensions.filters.network.redis_proxy.v3.RedisProxy`)
//! and the cluster's `RedisProtocolOptions`.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use legate_filter_api::network::TerminalFilterFactory;
use legate_filter_api::random::Percentage;
use legate_redis_proxy::config::{Fault, FaultKind, Mirror};
use legate_redis_proxy::prefix::{PrefixRoutes, Route};
use legate_redis_proxy::{Config, ProtocolOptions, RedisProxyFactory};

use super::ClusterRef;
use super::walk::{Field, Obj, data_source};

pub(crate) const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProxy";
pub(crate) const PROTOCOL_OPTIONS_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions";

/// The filter, counting under `redis.<stat_prefix>.`.
pub(crate) fn filter(
    mut o: Obj<'_>,
    refs: &mut Vec<ClusterRef>,
) -> Option<Arc<dyn TerminalFilterFactory>> {
    o = o.unsupported(&[
        "latency_in_micros",
        "external_auth_provider",
        "custom_commands",
        "downstream_auth_password",
        "cluster",
    ]);
    let stat_prefix = o.req("stat_prefix").and_then(|g| g.str());
    let settings = o.req("settings").and_then(|g| settings(&g));
    let routes = match o.get("prefix_routes") {
        Some(g) => prefix_routes(&g, refs),
        None => Some(PrefixRoutes::default()),
    };
    let downstream_auth_passwords = o
        .get("downstream_auth_passwords")
        .map(|g| {
            g.seq()
                .iter()
                .filter_map(|p| data_source(p).map(Bytes::from))
                .collect()
        })
        .unwrap_or_default();
    let downstream_auth_username = o
        .get("downstream_auth_username")
        .and_then(|g| data_source(&g))
        .map(Bytes::from);
    let faults = o
        .get("faults")
        .map(|g| g.seq().iter().filter_map(fault).collect())
        .unwrap_or_default();
    o.finish();
    let s = settings?;
    let config = Config {
        stat_prefix: stat_prefix?,
        op_timeout: s.op_timeout,
        enable_hashtagging: s.enable_hashtagging,
        max_buffer_size_before_flush: s.max_buffer_size_before_flush,
        buffer_flush_timeout: s.buffer_flush_timeout,
        enable_redirection: s.enable_redirection,
        enable_command_stats: s.enable_command_stats,
        routes: routes?,
        downstream_auth_passwords,
        downstream_auth_username,
        faults,
    };
    Some(Arc::new(RedisProxyFactory::new(
        config,
        crate::stats::store(),
    )))
}

struct Settings {
    op_timeout: Duration,
    enable_hashtagging: bool,
    max_buffer_size_before_flush: usize,
    buffer_flush_timeout: Duration,
    enable_redirection: bool,
    enable_command_stats: bool,
}

fn settings(f: &Field<'_>) -> Option<Settings> {
    let mut o = f.obj()?.unsupported(&[
        "dns_cache_config",
        "max_upstream_unknown_connections",
        "read_policy",
        "connection_rate_limit",
    ]);
    let op_timeout = o.req("op_timeout").and_then(|g| g.duration());
    let enable_hashtagging = o
        .get("enable_hashtagging")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    let max_buffer_size_before_flush = o
        .get("max_buffer_size_before_flush")
        .and_then(|g| g.u32())
        .unwrap_or(0) as usize;
    let buffer_flush_timeout = o
        .get("buffer_flush_timeout")
        .and_then(|g| g.duration())
        .unwrap_or(Duration::from_millis(3));
    let enable_redirection = o
        .get("enable_redirection")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    let enable_command_stats = o
        .get("enable_command_stats")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    o.finish();
    Some(Settings {
        op_timeout: op_timeout?,
        enable_hashtagging,
        max_buffer_size_before_flush,
        buffer_flush_timeout,
        enable_redirection,
        enable_command_stats,
    })
}

fn cluster_ref(g: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<String> {
    let name = g.str()?;
    refs.push(ClusterRef {
        name: name.clone(),
        path: g.path().to_string(),
        pos: g.pos(),
        needs_addresses: true,
    });
    Some(name)
}

fn prefix_routes(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<PrefixRoutes> {
    let mut o = f.obj()?;
    let routes: Vec<Route> = o
        .get("routes")
        .map(|g| g.seq().iter().filter_map(|r| route(r, refs)).collect())
        .unwrap_or_default();
    let case_insensitive = o
        .get("case_insensitive")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    let catch_all = o.get("catch_all_route").and_then(|g| route(&g, refs));
    o.finish();
    let catch_all = catch_all.map(|r| Route::catch_all(r.cluster, r.mirrors));
    match PrefixRoutes::new(routes, case_insensitive, catch_all) {
        Ok(r) => Some(r),
        Err(e) => {
            f.error(e.to_string());
            None
        }
    }
}

fn route(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<Route> {
    let mut o = f
        .obj()?
        .unsupported(&["key_formatter", "read_command_policy"]);
    let prefix = o.get("prefix").and_then(|g| g.str()).unwrap_or_default();
    let remove_prefix = o
        .get("remove_prefix")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    let cluster = o.req("cluster").and_then(|g| cluster_ref(&g, refs));
    let mirrors = o
        .get("request_mirror_policy")
        .map(|g| g.seq().iter().filter_map(|m| mirror(m, refs)).collect())
        .unwrap_or_default();
    o.finish();
    Some(Route {
        prefix: Bytes::from(prefix),
        remove_prefix,
        cluster: cluster?,
        mirrors,
    })
}

fn mirror(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<Mirror> {
    let mut o = f.obj()?;
    let cluster = o.req("cluster").and_then(|g| cluster_ref(&g, refs));
    let fraction = o
        .get("runtime_fraction")
        .map(|g| runtime_fraction(&g))
        .unwrap_or(Percentage::ALWAYS);
    let exclude_read_commands = o
        .get("exclude_read_commands")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    o.finish();
    Some(Mirror {
        cluster: cluster?,
        fraction,
        exclude_read_commands,
    })
}

/// `RuntimeFractionalPercent`: legate has no runtime, so `runtime_key` never
/// has a value and `default_value` applies, as in Envoy with no runtime set.
fn runtime_fraction(f: &Field<'_>) -> Percentage {
    let Some(mut o) = f.obj() else {
        return Percentage::NEVER;
    };
    if let Some(g) = o.get("runtime_key") {
        g.str();
    }
    let p = super::parse_fault::fractional_percent_at(&mut o, "default_value");
    o.finish();
    p
}

fn fault(f: &Field<'_>) -> Option<Fault> {
    let mut o = f.obj()?;
    let kind = o
        .get("fault_type")
        .and_then(|g| g.enumeration(&["ERROR", "DELAY"], &[]))
        .unwrap_or("ERROR");
    let percentage = o
        .req("fault_enabled")
        .map(|g| runtime_fraction(&g))
        .unwrap_or(Percentage::NEVER);
    let delay = o.get("delay").and_then(|g| g.duration());
    let commands = o
        .get("commands")
        .map(|g| {
            g.seq()
                .iter()
                .filter_map(|c| {
                    let name = c.str()?.to_ascii_lowercase();
                    if legate_redis_proxy::commands::lookup(name.as_bytes()).is_none() {
                        c.error(format!("\"{name}\" is not a command redis_proxy supports"));
                        return None;
                    }
                    Some(name)
                })
                .collect()
        })
        .unwrap_or_default();
    let kind = match kind {
        "DELAY" => match delay {
            Some(d) => FaultKind::Delay(d),
            None => {
                o.error("a DELAY fault needs \"delay\"");
                return None;
            }
        },
        _ => FaultKind::Error,
    };
    o.finish();
    Some(Fault {
        kind,
        percentage,
        commands,
    })
}

/// A cluster's `typed_extension_protocol_options["envoy.filters.network.redis_proxy"]`.
pub(crate) fn protocol_options(f: &Field<'_>) -> Option<Arc<dyn Any + Send + Sync>> {
    let tc = super::typed_config(f)?;
    if tc.type_url != PROTOCOL_OPTIONS_TYPE {
        f.error(format!(
            "expected \"@type\" {PROTOCOL_OPTIONS_TYPE}, found \"{}\"",
            tc.type_url
        ));
        return None;
    }
    let mut o = tc.obj;
    let auth_password = o
        .get("auth_password")
        .and_then(|g| data_source(&g))
        .map(Bytes::from);
    let auth_username = o
        .get("auth_username")
        .and_then(|g| data_source(&g))
        .map(Bytes::from);
    o.finish();
    Some(Arc::new(ProtocolOptions {
        auth_username,
        auth_password,
    }))
}
