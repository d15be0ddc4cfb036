//! `envoy.filters.http.jwt_authn`
//! (`envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication`) and its
//! per-route `PerRouteConfig`.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use legate_filter_api::HttpFilterFactory;
use legate_jwt_authn::jwks::Jwks;
use legate_jwt_authn::{
    Config, JwksSource, JwtAuthnFactory, PerRouteConfig, Provider, RemoteJwks, Requirement, Rule,
};

use super::ClusterRef;
use super::parse_http::{header_name, route_match};
use super::walk::{Field, Obj};

pub(crate) const TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication";
pub(crate) const PER_ROUTE_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig";

/// The filter, counting under `http.<stat_prefix>.jwt_authn.`. The clusters of
/// `remote_jwks` are checked once all clusters are known, as route clusters are.
pub(crate) fn http(
    o: Obj<'_>,
    filter_name: &str,
    stat_prefix: &str,
    refs: &mut Vec<ClusterRef>,
) -> Option<Arc<dyn HttpFilterFactory>> {
    let config = authentication(o, refs)?;
    Some(Arc::new(JwtAuthnFactory::new(
        config,
        filter_name,
        stat_prefix,
        crate::stats::store(),
    )))
}

/// A route's `PerRouteConfig`: `disabled: true` or a `requirement_name`.
pub(crate) fn per_route(o: Obj<'_>) -> Option<Arc<dyn Any + Send + Sync>> {
    let mut o = o;
    let c = match o.one_of(&["disabled", "requirement_name"]) {
        Some(("disabled", g)) => match g.bool()? {
            true => PerRouteConfig::Disabled,
            false => {
                g.error("disabled must be true (leave it out to check the route)");
                return None;
            }
        },
        Some((_, g)) => PerRouteConfig::RequirementName(g.non_empty_str()?),
        None => {
            o.error("one of \"disabled\" or \"requirement_name\" is required");
            return None;
        }
    };
    o.finish();
    Some(Arc::new(c))
}

fn authentication(o: Obj<'_>, refs: &mut Vec<ClusterRef>) -> Option<Config> {
    let mut o = o.unsupported(&["filter_state_rules", "stat_prefix"]);
    let mut ok = true;
    // Providers are kept in name order, so requirements refer to them by index.
    let mut providers: Vec<Provider> = Vec::new();
    if let Some(g) = o.get("providers") {
        let mut entries = g.map_entries();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, f) in entries {
            match provider(&f, &name, refs) {
                Some(p) => providers.push(p),
                None => ok = false,
            }
        }
    }
    let names: Vec<String> = providers.iter().map(|p| p.name.clone()).collect();
    let mut requirement_map: Vec<(String, Requirement)> = Vec::new();
    if let Some(g) = o.get("requirement_map") {
        let mut entries = g.map_entries();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, f) in entries {
            match requirement(&f, &names) {
                Some(r) => requirement_map.push((name, r)),
                None => ok = false,
            }
        }
    }
    let mut rules = Vec::new();
    if let Some(g) = o.get("rules") {
        for item in g.seq() {
            match rule(&item, &names, &requirement_map) {
                Some(r) => rules.push(r),
                None => ok = false,
            }
        }
    }
    let bypass_cors_preflight = o
        .get("bypass_cors_preflight")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    let strip_failure_response = o
        .get("strip_failure_response")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    o.finish();
    ok.then_some(Config {
        providers,
        rules,
        requirement_map,
        bypass_cors_preflight,
        strip_failure_response,
    })
}

fn provider(f: &Field<'_>, name: &str, refs: &mut Vec<ClusterRef>) -> Option<Provider> {
    let mut o = f.obj()?.unsupported(&[
        "subjects",
        "require_expiration",
        "max_lifetime",
        "failed_status_in_metadata",
        "normalize_payload_in_metadata",
        "jwt_cache_config",
        "clear_route_cache",
    ]);
    let mut p = Provider::new("");
    p.name = name.to_string();
    let mut ok = true;
    p.issuer = o.get("issuer").and_then(|g| g.str()).unwrap_or_default();
    if let Some(g) = o.get("audiences") {
        p.audiences = g.strings();
    }
    match o.one_of(&["remote_jwks", "local_jwks"]) {
        Some(("remote_jwks", g)) => match remote_jwks(&g, refs) {
            Some(r) => p.jwks = JwksSource::Remote(r),
            None => ok = false,
        },
        Some((_, g)) => match super::walk::data_source(&g) {
            Some(text) => p.jwks = JwksSource::Local(Jwks::parse(&text).map(Arc::new)),
            None => ok = false,
        },
        None => {
            o.error("one of \"remote_jwks\" or \"local_jwks\" is required");
            ok = false;
        }
    }
    p.forward = o.get("forward").and_then(|g| g.bool()).unwrap_or(false);
    if let Some(g) = o.get("from_headers") {
        for item in g.seq() {
            let Some(mut h) = item.obj() else {
                ok = false;
                continue;
            };
            let hn = h.req("name").and_then(|g| header_name(&g));
            let prefix = h
                .get("value_prefix")
                .and_then(|g| g.str())
                .unwrap_or_default();
            h.finish();
            match hn {
                Some(hn) => p.from_headers.push((hn, prefix)),
                None => ok = false,
            }
        }
    }
    if let Some(g) = o.get("from_params") {
        p.from_params = g.strings();
    }
    if let Some(g) = o.get("from_cookies") {
        p.from_cookies = g.strings();
    }
    if let Some(g) = o.get("forward_payload_header") {
        match header_name(&g) {
            Some(h) => p.forward_payload_header = Some(h),
            None => ok = false,
        }
    }
    p.pad_forward_payload_header = o
        .get("pad_forward_payload_header")
        .and_then(|g| g.bool())
        .unwrap_or(false);
    p.payload_in_metadata = o
        .get("payload_in_metadata")
        .and_then(|g| g.str())
        .filter(|s| !s.is_empty());
    p.header_in_metadata = o
        .get("header_in_metadata")
        .and_then(|g| g.str())
        .filter(|s| !s.is_empty());
    if let Some(g) = o.get("clock_skew_seconds") {
        match g.u32() {
            Some(0) => {}
            Some(v) => p.clock_skew_seconds = v as u64,
            None => ok = false,
        }
    }
    if let Some(g) = o.get("claim_to_headers") {
        for item in g.seq() {
            let Some(mut c) = item.obj() else {
                ok = false;
                continue;
            };
            let header = c.req("header_name").and_then(|g| header_name(&g));
            let claim = c.req("claim_name").and_then(|g| g.non_empty_str());
            c.finish();
            match (header, claim) {
                (Some(h), Some(c)) => p.claim_to_headers.push((h, c)),
                _ => ok = false,
            }
        }
    }
    o.finish();
    ok.then_some(p)
}

fn remote_jwks(f: &Field<'_>, refs: &mut Vec<ClusterRef>) -> Option<RemoteJwks> {
    let mut o = f.obj()?.unsupported(&["async_fetch", "retry_policy"]);
    let http_uri = o.req("http_uri");
    let cache_duration = match o.get("cache_duration") {
        Some(g) => g.duration()?,
        None => Duration::from_secs(600),
    };
    o.finish();
    let mut h = http_uri?.obj()?;
    let uri = h.req("uri");
    let cluster = h.req("cluster");
    let timeout = h.req("timeout").and_then(|g| g.duration());
    h.finish();
    let (uri, cluster) = (uri?, cluster?);
    let text = uri.str()?;
    let parsed: Option<http::Uri> = text.parse().ok();
    let Some((authority, path)) = parsed.and_then(|u| {
        let a = u.authority()?.as_str().to_string();
        let p = u.path_and_query().map_or("/", |p| p.as_str()).to_string();
        (u.scheme().is_some()).then_some((a, p))
    }) else {
        uri.error(format!(
            "invalid URI \"{text}\" (expected http://host/path)"
        ));
        return None;
    };
    let name = cluster.non_empty_str()?;
    refs.push(ClusterRef {
        name: name.clone(),
        path: cluster.path().to_string(),
        pos: cluster.pos(),
        needs_addresses: false,
    });
    Some(RemoteJwks {
        cluster: name,
        authority,
        path,
        timeout: timeout?,
        cache_duration,
    })
}

fn rule(f: &Field<'_>, providers: &[String], map: &[(String, Requirement)]) -> Option<Rule> {
    let mut o = f.obj()?;
    let matcher = o.req("match").and_then(|g| route_match(&g));
    let requires = match o.one_of(&["requires", "requirement_name"]) {
        Some(("requires", g)) => Some(requirement(&g, providers)?),
        Some((_, g)) => {
            let n = g.str()?;
            match map.iter().find(|(k, _)| *k == n) {
                Some((_, r)) => Some(r.clone()),
                None => {
                    let names: Vec<&str> = map.iter().map(|(k, _)| k.as_str()).collect();
                    g.error(format!(
                        "Wrong requirement_name: {n}. It should be one of [{}]",
                        names.join(",")
                    ));
                    return None;
                }
            }
        }
        None => None,
    };
    o.finish();
    Some(Rule {
        matcher: matcher?,
        requires,
    })
}

fn provider_index(g: &Field<'_>, providers: &[String]) -> Option<usize> {
    let n = g.str()?;
    match providers.iter().position(|p| *p == n) {
        Some(i) => Some(i),
        None => {
            let hint = super::walk::did_you_mean(&n, providers.iter().map(String::as_str))
                .map(|c| format!("; did you mean \"{c}\"?"))
                .unwrap_or_default();
            g.error(format!("Required provider ['{n}'] is not configured{hint}"));
            None
        }
    }
}

fn requirement(f: &Field<'_>, providers: &[String]) -> Option<Requirement> {
    let mut o = f.obj()?;
    let r = match o.one_of(&[
        "provider_name",
        "provider_and_audiences",
        "requires_any",
        "requires_all",
        "allow_missing_or_failed",
        "allow_missing",
    ]) {
        Some(("provider_name", g)) => Requirement::Provider {
            provider: provider_index(&g, providers)?,
            audiences: None,
        },
        Some(("provider_and_audiences", g)) => {
            let mut pa = g.obj()?;
            let p = pa
                .req("provider_name")
                .map(|g| provider_index(&g, providers));
            let audiences = pa.get("audiences").map(|g| g.strings()).unwrap_or_default();
            pa.finish();
            Requirement::Provider {
                provider: p??,
                audiences: Some(audiences),
            }
        }
        Some((kind @ ("requires_any" | "requires_all"), g)) => {
            let mut l = g.obj()?;
            let items = l.req("requirements").map(|g| g.seq()).unwrap_or_default();
            l.finish();
            if items.len() < 2 {
                g.error(format!("{kind}.requirements needs at least 2 items"));
                return None;
            }
            let list: Vec<Requirement> = items
                .iter()
                .map(|i| requirement(i, providers))
                .collect::<Vec<_>>()
                .into_iter()
                .collect::<Option<_>>()?;
            if kind == "requires_any" {
                Requirement::Any(list)
            } else {
                Requirement::All(list)
            }
        }
        Some((kind, g)) => {
            if let Some(e) = g.obj() {
                e.finish();
            }
            if kind == "allow_missing" {
                Requirement::AllowMissing
            } else {
                Requirement::AllowMissingOrFailed
            }
        }
        None => Requirement::Nothing,
    };
    o.finish();
    Some(r)
}
