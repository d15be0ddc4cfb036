//! Route tables: virtual host selection, route matching and the path rewrites a
//! route asks for. Pure functions over the request head, so they are easy to test.

use http::HeaderMap;

use crate::config::{
    ClusterSpecifier, HeaderMatch, HeaderMatcher, PathMatch, Route, RouteConfig, RouteMatch,
    VirtualHost, WeightedCluster, full_match,
};

/// What a route matcher reads from a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Path with query, as sent.
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    pub headers: &'a HeaderMap,
}

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

fn split_query(path: &str) -> (&str, Option<&str>) {
    match path.find(['?', '#']) {
        Some(i) if path.as_bytes()[i] == b'?' => {
            let q = &path[i + 1..];
            (&path[..i], Some(q.split('#').next().unwrap_or(q)))
        }
        Some(i) => (&path[..i], None),
        None => (path, None),
    }
}

fn starts_with(s: &str, prefix: &str, case_sensitive: bool) -> bool {
    if case_sensitive {
        s.starts_with(prefix)
    } else {
        s.len() >= prefix.len()
            && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

fn path_matches(m: &RouteMatch, path: &str) -> bool {
    let (p, _) = split_query(path);
    match &m.path {
        PathMatch::Prefix(pre) => starts_with(p, pre, m.case_sensitive),
        PathMatch::Path(exact) => {
            if m.case_sensitive {
                p == exact
            } else {
                p.eq_ignore_ascii_case(exact)
            }
        }
        PathMatch::Regex(r) => full_match(r, p),
        PathMatch::PathSeparatedPrefix(pre) => {
            starts_with(p, pre, m.case_sensitive)
                && (p.len() == pre.len() || p.as_bytes()[pre.len()] == b'/')
        }
    }
}

fn header_value(req: &RequestView<'_>, h: &HeaderMatcher) -> Option<String> {
    if let Some(p) = h.pseudo {
        return Some(
            match p {
                ":path" => req.path,
                ":method" => req.method,
                ":authority" => req.authority,
                _ => req.scheme,
            }
            .to_string(),
        );
    }
    let mut values = req.headers.get_all(&h.name).iter();
    let first = values.next()?;
    let mut s = String::from_utf8_lossy(first.as_bytes()).into_owned();
    // Envoy matches multiple values of a header joined with commas.
    for v in values {
        s.push(',');
        s.push_str(&String::from_utf8_lossy(v.as_bytes()));
    }
    Some(s)
}

pub fn header_matches(req: &RequestView<'_>, h: &HeaderMatcher) -> bool {
    let v = header_value(req, h);
    let m = match (&h.kind, v) {
        (HeaderMatch::Present(want), v) => v.is_some() == *want,
        (HeaderMatch::String(sm), Some(v)) => {
            // Envoy matches the values joined with commas; a repeated header
            // whose single values match counts too.
            sm.matches(&v)
                || (v.contains(',')
                    && h.pseudo.is_none()
                    && req
                        .headers
                        .get_all(&h.name)
                        .iter()
                        .any(|x| x.to_str().is_ok_and(|x| sm.matches(x))))
        }
        (HeaderMatch::Range(start, end), Some(v)) => v
            .trim()
            .parse::<i64>()
            .is_ok_and(|n| *start <= n && n < *end),
        (_, None) => return false,
    };
    m != h.invert
}

fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then_some(v)
    })
}

pub fn route_matches(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    if !path_matches(m, req.path) {
        return false;
    }
    if m.grpc && !crate::http::is_grpc(req.headers) {
        return false;
    }
    if !m.headers.iter().all(|h| header_matches(req, h)) {
        return false;
    }
    if !m.query_parameters.is_empty() {
        let (_, q) = split_query(req.path);
        let q = q.unwrap_or("");
        for qm in &m.query_parameters {
            match (query_value(q, &qm.name), &qm.matcher) {
                (None, _) => return false,
                (Some(_), None) => {}
                (Some(v), Some(sm)) => {
                    if !sm.matches(v) {
                        return false;
                    }
                }
            }
        }
    }
    true
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

#[cfg(test)]
mod tests;
