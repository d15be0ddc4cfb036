//! `envoy.filters.http.rbac` (with its per-route `RBACPerRoute`) and
//! `envoy.filters.network.rbac`, into the models of the `legate-rbac` crate.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;

use legate_filter_api::HttpFilterFactory;
use legate_filter_api::network::NetworkFilterFactory;
use legate_rbac::http::{HttpRbacFactory, RouteRules};
use legate_rbac::model::{
    Action, DoubleMatch, EnforcementType, HttpRbacConfig, MetadataMatcher, NetworkRbacConfig,
    Permission, Policy, Principal, Rbac, RbacPerRoute, ValueMatcher,
};
use legate_rbac::network::NetworkRbacFactory;

use super::parse_http::{cidr, header_matcher, string_matcher};
use super::walk::{Field, Obj};

pub(crate) const HTTP_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
pub(crate) const PER_ROUTE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute";
pub(crate) const NETWORK_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";

/// `envoy.filters.http.rbac`, named `filter_name` in `http_filters`, in a
/// connection manager with `stat_prefix`.
pub(crate) fn http(
    o: Obj<'_>,
    filter_name: &str,
    stat_prefix: &str,
    _refs: &mut Vec<super::ClusterRef>,
) -> Option<Arc<dyn HttpFilterFactory>> {
    let config = http_config(o)?;
    Some(Arc::new(HttpRbacFactory::new(
        config,
        filter_name,
        stat_prefix,
        crate::stats::store(),
    )))
}

/// `RBACPerRoute` from a route's `typed_per_filter_config`.
pub(crate) fn per_route(mut o: Obj<'_>) -> Option<Arc<dyn Any + Send + Sync>> {
    let rbac = match o.get("rbac") {
        Some(g) => Some(http_config(g.obj()?)?),
        None => None,
    };
    o.finish();
    Some(RouteRules::new(RbacPerRoute { rbac }).into_any())
}

/// `envoy.filters.network.rbac`.
pub(crate) fn network(mut o: Obj<'_>) -> Option<Arc<dyn NetworkFilterFactory>> {
    o = o.unsupported(&["matcher", "shadow_matcher", "delay_deny"]);
    let stat_prefix = o.req("stat_prefix").and_then(|g| g.non_empty_str());
    let rules = network_rules(&mut o, "rules");
    let shadow_rules = network_rules(&mut o, "shadow_rules");
    let shadow_rules_stat_prefix = o
        .get("shadow_rules_stat_prefix")
        .and_then(|g| g.str())
        .unwrap_or_default();
    let enforcement_type = o
        .get("enforcement_type")
        .and_then(|g| g.enumeration(&["ONE_TIME_ON_FIRST_BYTE", "CONTINUOUS"], &[]))
        .map(|e| match e {
            "CONTINUOUS" => EnforcementType::Continuous,
            _ => EnforcementType::OneTimeOnFirstByte,
        })
        .unwrap_or_default();
    o.finish();
    let config = NetworkRbacConfig {
        rules: rules?,
        shadow_rules: shadow_rules?,
        stat_prefix: stat_prefix?,
        shadow_rules_stat_prefix,
        enforcement_type,
    };
    Some(Arc::new(NetworkRbacFactory::new(
        config,
        crate::stats::store(),
    )))
}

/// Rules of the network filter: Envoy refuses `header` rules there.
fn network_rules(o: &mut Obj<'_>, key: &'static str) -> Option<Option<Rbac>> {
    let Some(field) = o.get(key) else {
        return Some(None);
    };
    let rules = rbac(&field)?;
    let mut ok = true;
    for (name, p) in &rules.policies {
        if p.permissions.iter().any(permission_has_header)
            || p.principals.iter().any(principal_has_header)
        {
            field.error(format!(
                "policy \"{name}\": header rules are not supported by the network RBAC filter (Envoy refuses them too)"
            ));
            ok = false;
        }
    }
    ok.then_some(Some(rules))
}

fn permission_has_header(p: &Permission) -> bool {
    match p {
        Permission::Header(_) => true,
        Permission::And(v) | Permission::Or(v) => v.iter().any(permission_has_header),
        Permission::Not(inner) => permission_has_header(inner),
        _ => false,
    }
}

fn principal_has_header(p: &Principal) -> bool {
    match p {
        Principal::Header(_) => true,
        Principal::And(v) | Principal::Or(v) => v.iter().any(principal_has_header),
        Principal::Not(inner) => principal_has_header(inner),
        _ => false,
    }
}

fn http_config(mut o: Obj<'_>) -> Option<HttpRbacConfig> {
    o = o.unsupported(&["matcher", "shadow_matcher", "track_per_rule_stats"]);
    let rules = optional_rules(&mut o, "rules");
    let shadow_rules = optional_rules(&mut o, "shadow_rules");
    let rules_stat_prefix = o
        .get("rules_stat_prefix")
        .and_then(|g| g.str())
        .unwrap_or_default();
    let shadow_rules_stat_prefix = o
        .get("shadow_rules_stat_prefix")
        .and_then(|g| g.str())
        .unwrap_or_default();
    o.finish();
    Some(HttpRbacConfig {
        rules: rules?,
        shadow_rules: shadow_rules?,
        rules_stat_prefix,
        shadow_rules_stat_prefix,
    })
}

/// An optional `RBAC` field: `Some(None)` when absent, `None` on an error.
fn optional_rules(o: &mut Obj<'_>, key: &'static str) -> Option<Option<Rbac>> {
    match o.get(key) {
        Some(g) => rbac(&g).map(Some),
        None => Some(None),
    }
}

/// `envoy.config.rbac.v3.RBAC`.
fn rbac(f: &Field<'_>) -> Option<Rbac> {
    let mut o = f
        .obj()?
        .unsupported(&["audit_logging_options", "cel_config"]);
    let action = match o.get("action") {
        Some(g) => match g.enumeration(&["ALLOW", "DENY", "LOG"], &[])? {
            "DENY" => Action::Deny,
            "LOG" => Action::Log,
            _ => Action::Allow,
        },
        None => Action::Allow,
    };
    let mut policies = BTreeMap::new();
    let mut ok = true;
    if let Some(g) = o.get("policies") {
        for (name, p) in g.map_entries() {
            match policy(&p) {
                Some(p) => {
                    policies.insert(name, p);
                }
                None => ok = false,
            }
        }
    }
    o.finish();
    ok.then_some(Rbac { action, policies })
}

/// `envoy.config.rbac.v3.Policy`.
fn policy(f: &Field<'_>) -> Option<Policy> {
    let mut o = f.obj()?.unsupported(&["cel_config"]);
    for key in ["condition", "checked_condition"] {
        if let Some(g) = o.get(key) {
            g.error(format!(
                "field \"{key}\" is not supported by legate: CEL expressions are not evaluated (use permissions and principals)"
            ));
        }
    }
    let permissions = o
        .req("permissions")
        .map(|g| at_least_one(&g, "permission", permission));
    let principals = o
        .req("principals")
        .map(|g| at_least_one(&g, "principal", principal));
    o.finish();
    Some(Policy {
        permissions: permissions??,
        principals: principals??,
    })
}

/// A list that Envoy requires non-empty, each item read by `item`.
fn at_least_one<T>(f: &Field<'_>, what: &str, item: fn(&Field<'_>) -> Option<T>) -> Option<Vec<T>> {
    let items = f.seq();
    if items.is_empty() {
        f.error(format!("at least one {what} is required"));
        return None;
    }
    let out: Vec<T> = items.iter().filter_map(item).collect();
    (out.len() == items.len()).then_some(out)
}

/// `any: true` (Envoy refuses `false`).
fn any(g: &Field<'_>) -> Option<()> {
    match g.bool()? {
        true => Some(()),
        false => {
            g.error("\"any\" must be true");
            None
        }
    }
}

/// `Permission.Set` / `Principal.Set`: `{<key>: [...]}` with at least one item.
fn set<T>(
    f: &Field<'_>,
    key: &'static str,
    what: &str,
    item: fn(&Field<'_>) -> Option<T>,
) -> Option<Vec<T>> {
    let mut o = f.obj()?;
    let items = o.req(key).map(|g| at_least_one(&g, what, item));
    o.finish();
    items?
}

/// `envoy.config.rbac.v3.Permission`.
fn permission(f: &Field<'_>) -> Option<Permission> {
    let mut o = f.obj()?;
    let choice = o.one_of(&[
        "and_rules",
        "or_rules",
        "any",
        "header",
        "url_path",
        "destination_ip",
        "destination_port",
        "destination_port_range",
        "metadata",
        "not_rule",
        "requested_server_name",
        "matcher",
        "uri_template",
        "sourced_metadata",
    ]);
    o.finish();
    let Some((key, g)) = choice else {
        f.error("a permission needs one rule: and_rules, or_rules, any, header, url_path, destination_ip, destination_port, destination_port_range, metadata, not_rule or requested_server_name");
        return None;
    };
    Some(match key {
        "and_rules" => Permission::And(set(&g, "rules", "rule", permission)?),
        "or_rules" => Permission::Or(set(&g, "rules", "rule", permission)?),
        "any" => any(&g).map(|_| Permission::Any)?,
        "header" => Permission::Header(header_matcher(&g)?),
        "url_path" => Permission::UrlPath(path_matcher(&g)?),
        "destination_ip" => Permission::DestinationIp(cidr(&g)?),
        "destination_port" => {
            let port = g.u32()?;
            if port > 65535 {
                g.error("destination_port must be at most 65535");
                return None;
            }
            Permission::DestinationPort(port)
        }
        "destination_port_range" => {
            let mut r = g.obj()?;
            let start = r
                .get("start")
                .map_or(Some(0), |s| s.int::<i32>("a 32-bit integer"));
            let end = r
                .get("end")
                .map_or(Some(0), |s| s.int::<i32>("a 32-bit integer"));
            r.finish();
            Permission::DestinationPortRange {
                start: i64::from(start?),
                end: i64::from(end?),
            }
        }
        "metadata" => Permission::Metadata(metadata_matcher(&g)?),
        "not_rule" => Permission::Not(Box::new(permission(&g)?)),
        "requested_server_name" => Permission::RequestedServerName(string_matcher(&g)?),
        other => {
            g.error(format!("permission \"{other}\" is not supported by legate"));
            return None;
        }
    })
}

/// `envoy.config.rbac.v3.Principal`.
fn principal(f: &Field<'_>) -> Option<Principal> {
    let mut o = f.obj()?;
    let choice = o.one_of(&[
        "and_ids",
        "or_ids",
        "any",
        "authenticated",
        "source_ip",
        "direct_remote_ip",
        "remote_ip",
        "header",
        "url_path",
        "metadata",
        "filter_state",
        "not_id",
        "sourced_metadata",
        "custom",
    ]);
    o.finish();
    let Some((key, g)) = choice else {
        f.error("a principal needs one identifier: and_ids, or_ids, any, source_ip, direct_remote_ip, remote_ip, header, url_path, metadata or not_id");
        return None;
    };
    Some(match key {
        "and_ids" => Principal::And(set(&g, "ids", "id", principal)?),
        "or_ids" => Principal::Or(set(&g, "ids", "id", principal)?),
        "any" => any(&g).map(|_| Principal::Any)?,
        "authenticated" => {
            g.error("authenticated.principal_name needs TLS, which legate does not terminate yet");
            return None;
        }
        "source_ip" => Principal::SourceIp(cidr(&g)?),
        "direct_remote_ip" => Principal::DirectRemoteIp(cidr(&g)?),
        "remote_ip" => Principal::RemoteIp(cidr(&g)?),
        "header" => Principal::Header(header_matcher(&g)?),
        "url_path" => Principal::UrlPath(path_matcher(&g)?),
        "metadata" => Principal::Metadata(metadata_matcher(&g)?),
        "not_id" => Principal::Not(Box::new(principal(&g)?)),
        other => {
            g.error(format!("principal \"{other}\" is not supported by legate"));
            return None;
        }
    })
}

/// `type.matcher.v3.PathMatcher`: `{path: StringMatcher}`.
fn path_matcher(f: &Field<'_>) -> Option<legate_rbac::model::StringMatcher> {
    let mut o = f.obj()?;
    let m = o.req("path").and_then(|g| string_matcher(&g));
    o.finish();
    m
}

/// `type.matcher.v3.MetadataMatcher`.
fn metadata_matcher(f: &Field<'_>) -> Option<MetadataMatcher> {
    let mut o = f.obj()?;
    let filter = o.req("filter").and_then(|g| g.str());
    let path = o.req("path").map(|g| {
        let items = g.seq();
        if items.is_empty() {
            g.error("at least one path segment is required");
            return None;
        }
        let keys: Vec<String> = items
            .iter()
            .filter_map(|seg| {
                let mut so = seg.obj()?;
                let k = so.req("key").and_then(|k| k.str());
                so.finish();
                k
            })
            .collect();
        (keys.len() == items.len()).then_some(keys)
    });
    let value = o.req("value").and_then(|g| value_matcher(&g));
    let invert = o.get("invert").and_then(|g| g.bool()).unwrap_or(false);
    o.finish();
    Some(MetadataMatcher {
        filter: filter?,
        path: path??,
        value: value?,
        invert,
    })
}

/// `type.matcher.v3.ValueMatcher`.
fn value_matcher(f: &Field<'_>) -> Option<ValueMatcher> {
    let mut o = f.obj()?;
    let choice = o.one_of(&[
        "null_match",
        "double_match",
        "string_match",
        "bool_match",
        "present_match",
        "list_match",
        "or_match",
    ]);
    o.finish();
    let Some((key, g)) = choice else {
        f.error("a value matcher needs one of null_match, double_match, string_match, bool_match, present_match, list_match or or_match");
        return None;
    };
    Some(match key {
        "null_match" => {
            g.obj()?.finish();
            ValueMatcher::Null
        }
        "double_match" => {
            let mut d = g.obj()?;
            let m = match d.one_of(&["range", "exact"]) {
                Some(("range", r)) => {
                    let mut ro = r.obj()?;
                    let start = ro.get("start").map_or(Some(0.0), |s| float(&s));
                    let end = ro.get("end").map_or(Some(0.0), |s| float(&s));
                    ro.finish();
                    Some(DoubleMatch::Range {
                        start: start?,
                        end: end?,
                    })
                }
                Some((_, e)) => float(&e).map(DoubleMatch::Exact),
                None => {
                    d.error("one of \"range\" or \"exact\" is required");
                    None
                }
            };
            d.finish();
            ValueMatcher::Double(m?)
        }
        "string_match" => ValueMatcher::String(string_matcher(&g)?),
        "bool_match" => ValueMatcher::Bool(g.bool()?),
        "present_match" => ValueMatcher::Present(g.bool()?),
        "list_match" => {
            let mut l = g.obj()?;
            let inner = l.req("one_of").and_then(|v| value_matcher(&v));
            l.finish();
            ValueMatcher::ListOneOf(Box::new(inner?))
        }
        _ => {
            let mut or = g.obj()?;
            let ms = or
                .req("value_matchers")
                .map(|v| at_least_one(&v, "value matcher", value_matcher));
            or.finish();
            ValueMatcher::Or(ms??)
        }
    })
}

fn float(f: &Field<'_>) -> Option<f64> {
    match f.node.as_str().and_then(|s| s.parse::<f64>().ok()) {
        Some(v) if v.is_finite() => Some(v),
        _ => {
            f.error("expected a number");
            None
        }
    }
}
