//! Matchers shared by the router and built-in filters: Envoy's `StringMatcher`,
//! `HeaderMatcher`, query parameter matchers and the route `match` block (the
//! JWT filter's `rules` use the same shape). Pure functions over the request head.

use http::{HeaderMap, HeaderName};
use regex::Regex;

/// How a route `match` compares the path (without the query).
#[derive(Debug)]
pub enum PathMatch {
    /// `prefix`.
    Prefix(String),
    /// `path`: the whole path.
    Path(String),
    /// `safe_regex`, matched in full.
    Regex(Regex),
    /// `path_separated_prefix`: a prefix that ends at a `/` or the end.
    PathSeparatedPrefix(String),
}

/// Envoy's `RouteMatch`: every part must match.
#[derive(Debug)]
pub struct RouteMatch {
    /// The path condition.
    pub path: PathMatch,
    /// `case_sensitive` (default true) for prefix and path.
    pub case_sensitive: bool,
    /// `headers`: all must match.
    pub headers: Vec<HeaderMatcher>,
    /// `query_parameters`: all must match.
    pub query_parameters: Vec<QueryParameterMatcher>,
    /// `grpc: {}`: only gRPC requests match.
    pub grpc: bool,
}

/// The comparison of a `StringMatcher`.
#[derive(Debug)]
pub enum StringMatch {
    /// `exact`.
    Exact(String),
    /// `prefix`.
    Prefix(String),
    /// `suffix`.
    Suffix(String),
    /// `contains`.
    Contains(String),
    /// `safe_regex`, matched in full.
    Regex(Regex),
}

/// Envoy's `type.matcher.v3.StringMatcher`.
///
/// ```
/// use legate_filter_api::matcher::{StringMatch, StringMatcher};
/// let m = StringMatcher { kind: StringMatch::Prefix("/api".into()), ignore_case: true };
/// assert!(m.matches("/API/v1"));
/// ```
#[derive(Debug)]
pub struct StringMatcher {
    /// The comparison.
    pub kind: StringMatch,
    /// `ignore_case` (not applied to `safe_regex`'s pattern).
    pub ignore_case: bool,
}

impl StringMatcher {
    /// Whether `s` matches.
    pub fn matches(&self, s: &str) -> bool {
        if self.ignore_case {
            let s = s.to_ascii_lowercase();
            match &self.kind {
                StringMatch::Exact(v) => s == v.to_ascii_lowercase(),
                StringMatch::Prefix(v) => s.starts_with(&v.to_ascii_lowercase()),
                StringMatch::Suffix(v) => s.ends_with(&v.to_ascii_lowercase()),
                StringMatch::Contains(v) => s.contains(&v.to_ascii_lowercase()),
                StringMatch::Regex(r) => full_match(r, &s),
            }
        } else {
            match &self.kind {
                StringMatch::Exact(v) => s == v,
                StringMatch::Prefix(v) => s.starts_with(v.as_str()),
                StringMatch::Suffix(v) => s.ends_with(v.as_str()),
                StringMatch::Contains(v) => s.contains(v.as_str()),
                StringMatch::Regex(r) => full_match(r, s),
            }
        }
    }
}

/// RE2 `FullMatch` semantics, as Envoy's `safe_regex`.
pub fn full_match(r: &Regex, s: &str) -> bool {
    r.find(s)
        .is_some_and(|m| m.start() == 0 && m.end() == s.len())
}

/// The condition of a `HeaderMatcher`.
#[derive(Debug)]
pub enum HeaderMatch {
    /// `string_match` (and the older `exact_match`, `prefix_match`, ...).
    String(StringMatcher),
    /// `present_match`: whether the header must be there.
    Present(bool),
    /// `range_match`: an integer in `[start, end)`.
    Range(i64, i64),
}

/// Envoy's `config.route.v3.HeaderMatcher`.
#[derive(Debug)]
pub struct HeaderMatcher {
    /// The header (lowercase).
    pub name: HeaderName,
    /// `:path`, `:method`, `:authority`, `:scheme` are matched too.
    pub pseudo: Option<&'static str>,
    /// The condition.
    pub kind: HeaderMatch,
    /// `invert_match`.
    pub invert: bool,
}

/// Envoy's `QueryParameterMatcher`.
#[derive(Debug)]
pub struct QueryParameterMatcher {
    /// The parameter name.
    pub name: String,
    /// `None` is `present_match`.
    pub matcher: Option<StringMatcher>,
}

/// What a route matcher reads from a request.
pub struct RequestView<'a> {
    /// `:method`.
    pub method: &'a str,
    /// Path with query, as sent.
    pub path: &'a str,
    /// `:authority` (or `host`).
    pub authority: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// The other headers.
    pub headers: &'a HeaderMap,
}

/// The path and its query (without a fragment).
///
/// ```
/// let (p, q) = legate_filter_api::matcher::split_query("/a?b=1#f");
/// assert_eq!((p, q), ("/a", Some("b=1")));
/// ```
pub fn split_query(path: &str) -> (&str, Option<&str>) {
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

/// Whether a header matcher matches the request (multiple values are joined
/// with commas, as in Envoy).
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

/// Whether a route `match` matches the request.
pub fn route_matches(m: &RouteMatch, req: &RequestView<'_>) -> bool {
    if !path_matches(m, req.path) {
        return false;
    }
    if m.grpc && !is_grpc(req.headers) {
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

/// An address prefix: Envoy's `config.core.v3.CidrRange` (`address_prefix`,
/// `prefix_len`). An IPv4 range never contains an IPv6 address, nor the reverse.
///
/// ```
/// use legate_filter_api::matcher::Cidr;
/// let c = Cidr { addr: "10.1.0.0".parse().unwrap(), len: 16 };
/// assert!(c.contains("10.1.200.3".parse().unwrap()));
/// assert!(!c.contains("10.2.0.1".parse().unwrap()));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// `address_prefix`.
    pub addr: std::net::IpAddr,
    /// `prefix_len`; lengths past the address size count as the full length.
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        match (self.addr, ip) {
            (std::net::IpAddr::V4(a), std::net::IpAddr::V4(b)) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.len.min(32))
                };
                u32::from(a) & m == u32::from(b) & m
            }
            (std::net::IpAddr::V6(a), std::net::IpAddr::V6(b)) => {
                let m = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.len.min(128))
                };
                u128::from(a) & m == u128::from(b) & m
            }
            _ => false,
        }
    }
}

/// Whether a request or response is gRPC (`content-type: application/grpc[+...]`).
pub fn is_grpc(h: &HeaderMap) -> bool {
    h.get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct == "application/grpc" || ct.starts_with("application/grpc+"))
}
