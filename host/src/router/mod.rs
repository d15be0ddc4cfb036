//! Route tables: virtual host selection, route matching and the path rewrites a
//! route asks for. Pure functions over the request head, so they are easy to test.

use std::net::IpAddr;

use http::HeaderMap;

use crate::config::{
    ClusterSpecifier, HashPolicy, HashPolicyKind, Route, RouteConfig, VirtualHost, WeightedCluster,
};
use crate::upstream::hash::{xx_hash64, xx_hash64_concat};

pub use legate_filter_api::matcher::{
    PathMatch, RequestView, header_matches, route_matches, split_query,
};

fn wildcard_match(pattern: &str, host: &str) -> Option<usize> {
    if pattern == "*" {
        return Some(0);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        // `*.foo.com` needs at least one character before the suffix.
        return (host.len() > suffix.len() && host.ends_with(suffix)).then_some(suffix.len());
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return (host.len() > prefix.len() && host.starts_with(prefix)).then_some(prefix.len());
    }
    None
}

fn find_vhost<'a>(rc: &'a RouteConfig, host: &str) -> Option<&'a VirtualHost> {
    // Envoy's order: exact, then longest suffix wildcard, then longest prefix
    // wildcard, then `*`.
    let mut best: Option<(u8, usize, &VirtualHost)> = None;
    for vh in &rc.virtual_hosts {
        for d in &vh.domains {
            let rank = if d == host {
                Some((3, d.len()))
            } else if d == "*" {
                Some((0, 0))
            } else if d.starts_with('*') {
                wildcard_match(d, host).map(|l| (2, l))
            } else if d.ends_with('*') {
                wildcard_match(d, host).map(|l| (1, l))
            } else {
                None
            };
            if let Some((r, l)) = rank
                && best.is_none_or(|(br, bl, _)| (r, l) > (br, bl))
            {
                best = Some((r, l, vh));
            }
        }
    }
    best.map(|(_, _, vh)| vh)
}

/// The virtual host for an authority, matched case-insensitively and with its port
/// (Envoy strips the port only when `strip_*_host_port` says so).
pub fn select_vhost<'a>(rc: &'a RouteConfig, authority: &str) -> Option<&'a VirtualHost> {
    find_vhost(rc, &authority.to_ascii_lowercase())
}

/// `host:port` -> `host`; IPv6 literals keep their brackets.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find("]:") {
            Some(i) => &host[..=i],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, p))
            if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') =>
        {
            h
        }
        _ => host,
    }
}

/// The first route of the vhost that matches.
pub fn select_route<'a>(vh: &'a VirtualHost, req: &RequestView<'_>) -> Option<&'a Route> {
    vh.routes.iter().find(|r| route_matches(&r.matcher, req))
}

/// The path after `prefix_rewrite` / `regex_rewrite`, or `None` when unchanged.
pub fn rewrite_path(
    route: &Route,
    prefix_rewrite: Option<&str>,
    regex_rewrite: Option<&(regex::Regex, String)>,
    path: &str,
) -> Option<String> {
    if let Some(rw) = prefix_rewrite {
        let matched_len = match &route.matcher.path {
            PathMatch::Prefix(p) | PathMatch::PathSeparatedPrefix(p) => p.len(),
            PathMatch::Path(p) => p.len(),
            PathMatch::Regex(_) => return None,
        };
        let matched_len = matched_len.min(path.len());
        return Some(format!("{rw}{}", &path[matched_len..]));
    }
    if let Some((re, sub)) = regex_rewrite {
        let (p, q) = split_query(path);
        let new = re.replace_all(p, sub.as_str());
        return Some(match q {
            Some(q) => format!("{new}?{q}"),
            None => new.into_owned(),
        });
    }
    None
}

/// Picks a weighted cluster by a random draw over the total weight, as Envoy does.
pub fn pick_weighted(clusters: &[WeightedCluster], random: u64) -> Option<&str> {
    let total: u64 = clusters.iter().map(|c| c.weight as u64).sum();
    if total == 0 {
        return None;
    }
    let mut r = random % total;
    for c in clusters {
        if r < c.weight as u64 {
            return Some(&c.name);
        }
        r -= c.weight as u64;
    }
    None
}

/// The cluster name a route targets for this request (`None`: header absent).
pub fn cluster_name<'a>(spec: &'a ClusterSpecifier, headers: &'a HeaderMap) -> Option<&'a str> {
    match spec {
        ClusterSpecifier::Cluster(c) => Some(c),
        ClusterSpecifier::Header(h) => headers.get(h).and_then(|v| v.to_str().ok()),
        ClusterSpecifier::Weighted(w) => pick_weighted(w, fastrand::u64(..)),
    }
}

/// The request's hash under a route's `hash_policy` (RING_HASH and MAGLEV
/// clusters pick the host owning it), computed as Envoy does; `None` when no
/// policy produced one.
pub fn request_hash(
    policies: &[HashPolicy],
    req: &RequestView<'_>,
    source_ip: IpAddr,
) -> Option<u64> {
    let mut hash: Option<u64> = None;
    for p in policies {
        if let Some(new) = policy_hash(&p.kind, req, source_ip) {
            // Rotating the old value keeps two equal policies from cancelling out.
            hash = Some(hash.map_or(0, |h| h.rotate_left(1)) ^ new);
        }
        if p.terminal && hash.is_some() {
            break;
        }
    }
    hash
}

fn policy_hash(kind: &HashPolicyKind, req: &RequestView<'_>, source_ip: IpAddr) -> Option<u64> {
    match kind {
        HashPolicyKind::Header { name, pseudo } => {
            if let Some(p) = pseudo {
                let v = match *p {
                    ":path" => req.path,
                    ":method" => req.method,
                    ":authority" => req.authority,
                    _ => req.scheme,
                };
                return Some(xx_hash64(v.as_bytes()));
            }
            let mut values: Vec<&[u8]> = req
                .headers
                .get_all(name)
                .iter()
                .map(|v| v.as_bytes())
                .collect();
            if values.is_empty() {
                return None;
            }
            // Envoy sorts repeated values, so their order does not matter.
            values.sort_unstable();
            Some(xx_hash64_concat(values))
        }
        HashPolicyKind::SourceIp => Some(xx_hash64(source_ip.to_string().as_bytes())),
        HashPolicyKind::QueryParameter(name) => {
            let (_, query) = req.path.split_once('?')?;
            // Raw, not percent-decoded; the first occurrence wins.
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (k == name).then(|| xx_hash64(v.as_bytes()))
            })
        }
        HashPolicyKind::Cookie(name) => {
            let v = cookie_value(req.headers, name)?;
            // An empty value is no hash (Envoy would generate one with `ttl`).
            (!v.is_empty()).then(|| xx_hash64(v))
        }
    }
}

/// The first cookie named `name` in the `cookie` headers, as Envoy parses them:
/// `;`-separated, leading spaces skipped, surrounding double quotes removed.
fn cookie_value<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    for h in headers.get_all(http::header::COOKIE) {
        for c in h.as_bytes().split(|b| *b == b';') {
            let Some(eq) = c.iter().position(|b| *b == b'=') else {
                continue;
            };
            let start = c.iter().position(|b| *b != b' ').unwrap_or(eq).min(eq);
            if &c[start..eq] != name.as_bytes() {
                continue;
            }
            let v = &c[eq + 1..];
            return Some(match v {
                [b'"', inner @ .., b'"'] => inner,
                _ => v,
            });
        }
    }
    None
}

#[cfg(test)]
mod tests;
