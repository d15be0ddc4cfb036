//! Where tokens are found (headers, query parameters, cookies), which issuers
//! may use each place, and how a token is taken out of the request again.

use std::collections::{BTreeMap, BTreeSet};

use http::HeaderName;
use legate_filter_api::RequestHead;

use crate::config::Provider;

/// The issuers a location is configured for; an empty issuer allows all.
#[derive(Debug, Default, Clone)]
pub struct Issuers {
    all: bool,
    names: BTreeSet<String>,
}

impl Issuers {
    fn add(&mut self, issuer: &str) {
        if issuer.is_empty() {
            self.all = true;
        } else {
            self.names.insert(issuer.to_string());
        }
    }

    /// Whether a token of `issuer` may come from this location.
    pub fn allows(&self, issuer: &str) -> bool {
        self.all || self.names.contains(issuer)
    }
}

/// Where a token was found, to remove it after a successful check.
#[derive(Debug, Clone)]
pub enum Place {
    /// A header (all its values are removed).
    Header(HeaderName),
    /// A query parameter (all its occurrences are removed).
    Param(String),
    /// A cookie (left in place, as Envoy does).
    Cookie,
}

/// A token and where it came from.
#[derive(Debug, Clone)]
pub struct Found<'e> {
    /// The token text.
    pub token: String,
    /// Its location.
    pub place: Place,
    /// Issuers allowed at that location.
    pub issuers: &'e Issuers,
}

/// The locations of one provider or of several.
#[derive(Debug, Default)]
pub struct Extractor {
    /// Keyed by header name then prefix, in that order (Envoy's map order).
    headers: BTreeMap<String, (HeaderName, String, Issuers)>,
    params: BTreeMap<String, Issuers>,
    cookies: BTreeMap<String, Issuers>,
    /// Headers the filter itself sets: a client must not send them.
    sanitize: Vec<HeaderName>,
}

const TOKEN_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

impl Extractor {
    /// The locations of `providers`.
    pub fn new<'p>(providers: impl IntoIterator<Item = &'p Provider>) -> Extractor {
        let mut e = Extractor::default();
        for p in providers {
            for (name, prefix) in &p.from_headers {
                e.headers
                    .entry(format!("{}{prefix}", name.as_str()))
                    .or_insert_with(|| (name.clone(), prefix.clone(), Issuers::default()))
                    .2
                    .add(&p.issuer);
            }
            for name in &p.from_params {
                e.params.entry(name.clone()).or_default().add(&p.issuer);
            }
            for name in &p.from_cookies {
                e.cookies.entry(name.clone()).or_default().add(&p.issuer);
            }
            if p.from_headers.is_empty() && p.from_params.is_empty() && p.from_cookies.is_empty() {
                e.headers
                    .entry("authorizationBearer ".to_string())
                    .or_insert_with(|| {
                        (
                            http::header::AUTHORIZATION,
                            "Bearer ".to_string(),
                            Issuers::default(),
                        )
                    })
                    .2
                    .add(&p.issuer);
                e.params
                    .entry("access_token".to_string())
                    .or_default()
                    .add(&p.issuer);
            }
            e.sanitize.extend(p.forward_payload_header.iter().cloned());
            e.sanitize
                .extend(p.claim_to_headers.iter().map(|(h, _)| h.clone()));
        }
        e
    }

    /// Removes the headers the filter sets from a client's request.
    pub fn sanitize(&self, head: &mut RequestHead) {
        for h in &self.sanitize {
            head.headers.remove(h);
        }
    }

    /// Every token in the request: headers first, then parameters, then cookies.
    pub fn extract(&self, head: &RequestHead) -> Vec<Found<'_>> {
        let mut out = Vec::new();
        for (name, prefix, issuers) in self.headers.values() {
            for v in head.headers.get_all(name) {
                let v = v.as_bytes();
                let token = if prefix.is_empty() {
                    v
                } else {
                    let Some(pos) = find(v, prefix.as_bytes()) else {
                        continue;
                    };
                    let after = pos + prefix.len();
                    match v[after..].iter().position(|c| TOKEN_CHARS.contains(c)) {
                        Some(i) => &v[after + i..],
                        None => v,
                    }
                };
                out.push(Found {
                    token: text(token),
                    place: Place::Header(name.clone()),
                    issuers,
                });
            }
        }
        if !self.params.is_empty() {
            let query = head.uri.query().unwrap_or("");
            for (name, issuers) in &self.params {
                let first = query.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k) == *name).then(|| percent_decode(v))
                });
                if let Some(token) = first {
                    out.push(Found {
                        token,
                        place: Place::Param(name.clone()),
                        issuers,
                    });
                }
            }
        }
        if !self.cookies.is_empty() {
            let jar = cookies(head);
            for (name, issuers) in &self.cookies {
                if let Some(v) = jar.get(name.as_str()) {
                    out.push(Found {
                        token: v.clone(),
                        place: Place::Cookie,
                        issuers,
                    });
                }
            }
        }
        out
    }
}

/// Takes a verified token out of the request.
pub fn remove(head: &mut RequestHead, place: &Place) {
    match place {
        Place::Header(h) => {
            head.headers.remove(h);
        }
        Place::Param(name) => {
            let Some(pq) = head.uri.path_and_query() else {
                return;
            };
            let Some(query) = pq.query() else { return };
            let kept: Vec<&str> = query
                .split('&')
                .filter(|kv| {
                    let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
                    percent_decode(k) != *name
                })
                .collect();
            let new = if kept.is_empty() {
                pq.path().to_string()
            } else {
                format!("{}?{}", pq.path(), kept.join("&"))
            };
            let mut parts = head.uri.clone().into_parts();
            if let Ok(p) = new.parse() {
                parts.path_and_query = Some(p);
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    head.uri = uri;
                }
            }
        }
        Place::Cookie => {}
    }
}

/// A header's bytes as text: tokens are ASCII, which the strict check passes
/// quickly; anything else is taken lossily, as before.
fn text(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(b).into_owned(),
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > hay.len() {
        return if needle.is_empty() { Some(0) } else { None };
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The request's cookies; the first of a name wins, quotes are dropped.
fn cookies(head: &RequestHead) -> BTreeMap<String, String> {
    let mut jar = BTreeMap::new();
    for v in head.headers.get_all(http::header::COOKIE) {
        let v = String::from_utf8_lossy(v.as_bytes());
        for pair in v.split(';') {
            let pair = pair.trim();
            let Some((k, v)) = pair.split_once('=') else {
                continue;
            };
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            jar.entry(k.to_string()).or_insert_with(|| v.to_string());
        }
    }
    jar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Provider;

    fn head(uri: &str, headers: &[(&str, &str)]) -> RequestHead {
        let mut h = http::HeaderMap::new();
        for (k, v) in headers {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        RequestHead {
            method: http::Method::GET,
            uri: uri.parse().unwrap(),
            version: http::Version::HTTP_11,
            headers: h,
        }
    }

    #[test]
    fn default_places() {
        let p = Provider::new("iss");
        let e = Extractor::new([&p]);
        let h = head(
            "/a?x=1&access_token=q%2Ev&y",
            &[
                ("authorization", "Bearer   a.b.c trailing"),
                ("authorization", "Basic x"),
            ],
        );
        let found = e.extract(&h);
        let tokens: Vec<&str> = found.iter().map(|f| f.token.as_str()).collect();
        assert_eq!(tokens, ["a.b.c trailing", "q.v"]);
        assert!(found[0].issuers.allows("iss"));
        assert!(!found[0].issuers.allows("other"));
        let mut h = h;
        remove(&mut h, &found[1].place);
        assert_eq!(h.uri, "/a?x=1&y");
        remove(&mut h, &found[0].place);
        assert!(h.headers.get("authorization").is_none());
    }

    #[test]
    fn configured_places() {
        let mut p = Provider::new("");
        p.from_headers = vec![(HeaderName::from_static("x-t"), "Tok ".into())];
        p.from_params = vec!["t".into()];
        p.from_cookies = vec!["c".into()];
        p.forward_payload_header = Some(HeaderName::from_static("x-payload"));
        let e = Extractor::new([&p]);
        let mut h = head(
            "/p?t=p1",
            &[
                ("x-t", "Tok h1"),
                ("cookie", "a=1; c=\"k1\""),
                ("cookie", "c=k2"),
                ("x-payload", "spoofed"),
            ],
        );
        let tokens: Vec<String> = e.extract(&h).into_iter().map(|f| f.token).collect();
        assert_eq!(tokens, ["h1", "p1", "k1"]);
        assert!(e.extract(&h)[0].issuers.allows("anyone"));
        e.sanitize(&mut h);
        assert!(h.headers.get("x-payload").is_none());
        let mut only_param = head("/p?t=p1", &[]);
        remove(&mut only_param, &Place::Param("t".into()));
        assert_eq!(only_param.uri, "/p");
    }
}
