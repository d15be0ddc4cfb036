//! Envoy's `envoy.filters.http.jwt_authn`: checks JSON Web Tokens on requests.
//!
//! A request's requirement comes from the route's `PerRouteConfig`, else from
//! the first matching rule (no match: no check). Tokens are found in headers,
//! query parameters or cookies, checked for issuer, time, audience and
//! signature (keys inline or fetched from a cluster, cached per worker), and a
//! refusal is answered as Envoy does: 401 (403 for a disallowed audience) with
//! the reason as body and a `www-authenticate: Bearer realm=...` header.
//!
//! Token and key-set parsing follow Envoy's rules and statuses; the signature
//! arithmetic is the `jsonwebtoken` crate's (RS/PS 256/384/512, ES256/384,
//! HS256/384/512, EdDSA; ES512 tokens never verify).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
mod extract;
pub mod jwks;
pub mod jwt;
pub mod status;
mod verify;

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use legate_filter_api::matcher::{RequestView, route_matches};
use legate_filter_api::stats::{Counter, Store};
use legate_filter_api::{
    HeadersAction, HttpFilter, HttpFilterFactory, LocalReply, MetadataValue, RequestHead, Step,
    StreamInfo,
};

pub use config::{Config, JwksSource, PerRouteConfig, Provider, RemoteJwks, Requirement, Rule};
use extract::Extractor;
use status::Status;

/// The dynamic metadata namespace of the token data.
pub const METADATA_NAMESPACE: &str = "envoy.filters.http.jwt_authn";

/// The longest path that goes into a `www-authenticate` realm.
const MAX_REALM_PATH: usize = 256;

/// Envoy's `http.<prefix>.jwt_authn.*` counters.
#[derive(Debug)]
struct Stats {
    allowed: Counter,
    cors_preflight_bypassed: Counter,
    denied: Counter,
    jwks_fetch_success: Counter,
    jwks_fetch_failed: Counter,
    jwt_cache_miss: Counter,
}

impl Stats {
    fn new(store: &Store, prefix: &str) -> Stats {
        let c = |n: &str| store.counter(format!("http.{prefix}.jwt_authn.{n}"));
        // Envoy exports the hit count too; without a token cache it stays 0.
        let _ = c("jwt_cache_hit");
        Stats {
            allowed: c("allowed"),
            cors_preflight_bypassed: c("cors_preflight_bypassed"),
            denied: c("denied"),
            jwks_fetch_success: c("jwks_fetch_success"),
            jwks_fetch_failed: c("jwks_fetch_failed"),
            jwt_cache_miss: c("jwt_cache_miss"),
        }
    }
}

/// What all streams of one filter config share.
#[derive(Debug)]
pub(crate) struct Shared {
    config: Config,
    /// The filter's name in `http_filters`, for its per-route config.
    filter_name: String,
    stats: Stats,
    /// Token places per provider, and of all providers (allow-* requirements).
    extractors: Vec<Extractor>,
    all_extractor: Extractor,
    /// `requirement_map` names, sorted and comma-joined, for error messages.
    requirement_names: String,
    kid_refetch_interval: Duration,
}

impl Shared {
    /// The provider for a token of `issuer` when no provider is named: the
    /// first with that issuer, else the first without one.
    fn by_issuer(&self, issuer: &str) -> Option<usize> {
        let ps = &self.config.providers;
        ps.iter().position(|p| p.issuer == issuer).or_else(|| {
            (!issuer.is_empty())
                .then(|| ps.iter().position(|p| p.issuer.is_empty()))
                .flatten()
        })
    }
}

/// Builds [`JwtAuthn`] filters for one config.
pub struct JwtAuthnFactory {
    shared: Arc<Shared>,
}

impl JwtAuthnFactory {
    /// A factory for `config`, for the filter named `filter_name` in an HTTP
    /// connection manager with `stat_prefix`; its counters go into `store`.
    pub fn new(config: Config, filter_name: &str, stat_prefix: &str, store: &Store) -> Self {
        let extractors = config
            .providers
            .iter()
            .map(|p| Extractor::new([p]))
            .collect();
        let all_extractor = Extractor::new(&config.providers);
        let requirement_names = config
            .requirement_map
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(",");
        JwtAuthnFactory {
            shared: Arc::new(Shared {
                stats: Stats::new(store, stat_prefix),
                config,
                filter_name: filter_name.to_string(),
                extractors,
                all_extractor,
                requirement_names,
                kid_refetch_interval: Duration::from_secs(10),
            }),
        }
    }

    /// How soon after a fetch a token naming an unknown `kid` may fetch a
    /// remote key set again (10 s by default).
    pub fn with_kid_refetch_interval(mut self, d: Duration) -> Self {
        if let Some(s) = Arc::get_mut(&mut self.shared) {
            s.kid_refetch_interval = d;
        }
        self
    }
}

impl HttpFilterFactory for JwtAuthnFactory {
    fn create(&self) -> Box<dyn HttpFilter> {
        Box::new(JwtAuthn {
            shared: self.shared.clone(),
        })
    }
}

/// The per-stream filter.
pub struct JwtAuthn {
    shared: Arc<Shared>,
}

/// Which requirement applies to a request.
enum Decision {
    /// The rule's requirement, by index.
    Rule(usize),
    /// A `requirement_map` entry, by index.
    Named(usize),
    Pass,
    Refuse(String),
}

impl Shared {
    fn requirement(&self, d: &Decision) -> Option<&Requirement> {
        match d {
            Decision::Rule(i) => self.config.rules[*i].requires.as_ref(),
            Decision::Named(i) => Some(&self.config.requirement_map[*i].1),
            _ => None,
        }
    }
}

impl JwtAuthn {
    fn decide(&self, head: &RequestHead, info: &StreamInfo) -> Decision {
        let sh = &self.shared;
        let per_route = info
            .per_filter_config
            .as_deref()
            .and_then(|c| c.get::<PerRouteConfig>(&sh.filter_name));
        if let Some(pr) = per_route {
            return match pr {
                PerRouteConfig::Disabled => Decision::Pass,
                PerRouteConfig::RequirementName(n) => {
                    match sh.config.requirement_map.iter().position(|(k, _)| k == n) {
                        Some(i) => Decision::Named(i),
                        None => Decision::Refuse(format!(
                            "Wrong requirement_name: {n}. It should be one of [{}]",
                            sh.requirement_names
                        )),
                    }
                }
            };
        }
        let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
        let view = RequestView {
            method: head.method.as_str(),
            path,
            authority: authority(head),
            scheme: head.uri.scheme_str().unwrap_or("http"),
            headers: &head.headers,
        };
        match sh
            .config
            .rules
            .iter()
            .position(|r| route_matches(&r.matcher, &view))
        {
            Some(i) if sh.config.rules[i].requires.is_some() => Decision::Rule(i),
            _ => Decision::Pass,
        }
    }

    fn refuse(&self, status: Status, realm: &str) -> HeadersAction {
        let sh = &self.shared;
        sh.stats.denied.inc();
        let code = if status == Status::JwtAudienceNotAllowed {
            http::StatusCode::FORBIDDEN
        } else {
            http::StatusCode::UNAUTHORIZED
        };
        let mut reply = LocalReply::new(code, "");
        reply.details = status.details();
        if !sh.config.strip_failure_response {
            reply.body = status.message().into();
            let mut v = format!("Bearer realm=\"{realm}\"");
            if status != Status::JwtMissed {
                v.push_str(", error=\"invalid_token\"");
            }
            if let Ok(v) = http::HeaderValue::from_str(&v) {
                reply.headers.insert(http::header::WWW_AUTHENTICATE, v);
            }
        }
        HeadersAction::Respond(Box::new(reply))
    }
}

fn authority(head: &RequestHead) -> &str {
    head.uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            head.headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
}

/// What the realm of a refusal is made of, kept before the checks edit the
/// request: cheap handles, turned into text only for a refusal.
struct RealmParts {
    proto: Option<http::HeaderValue>,
    host: Option<http::HeaderValue>,
    uri: http::Uri,
}

impl RealmParts {
    fn of(head: &RequestHead) -> RealmParts {
        RealmParts {
            proto: head.headers.get("x-forwarded-proto").cloned(),
            host: head.headers.get(http::header::HOST).cloned(),
            uri: head.uri.clone(),
        }
    }

    /// `scheme://host/path?query` of the request as it came, its path cut at
    /// 256 bytes.
    fn realm(&self) -> String {
        let scheme = self
            .proto
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .or(self.uri.scheme_str())
            .unwrap_or("http");
        let authority = self
            .uri
            .authority()
            .map(|a| a.as_str())
            .or_else(|| self.host.as_ref().and_then(|h| h.to_str().ok()))
            .unwrap_or("");
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        let mut cut = path.len().min(MAX_REALM_PATH);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        format!("{scheme}://{authority}{}", &path[..cut])
    }
}

fn is_cors_preflight(head: &RequestHead) -> bool {
    let present = |n: &str| head.headers.get(n).is_some_and(|v| !v.is_empty());
    head.method == http::Method::OPTIONS
        && present("origin")
        && present("access-control-request-method")
}

/// `%RESPONSE_CODE_DETAILS%` for a refusal that names a config value: made
/// once per distinct text.
fn interned_details(message: &str) -> &'static str {
    static SEEN: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let text = format!("jwt_authn_access_denied{{{}}}", message.replace(' ', "_"));
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    let set = seen.get_or_insert_with(HashSet::new);
    if let Some(s) = set.get(text.as_str()) {
        return s;
    }
    let s: &'static str = Box::leak(text.into_boxed_str());
    set.insert(s);
    s
}

/// Merges the token data into the stream's `envoy.filters.http.jwt_authn`
/// metadata.
fn set_metadata(info: &mut StreamInfo, data: BTreeMap<String, MetadataValue>) {
    if data.is_empty() {
        return;
    }
    let entry = info
        .dynamic_metadata
        .entry(METADATA_NAMESPACE.to_string())
        .or_insert_with(|| MetadataValue::Struct(BTreeMap::new()));
    if !matches!(entry, MetadataValue::Struct(_)) {
        *entry = MetadataValue::Struct(BTreeMap::new());
    }
    if let MetadataValue::Struct(m) = entry {
        m.extend(data);
    }
}

impl HttpFilter for JwtAuthn {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut RequestHead,
        _end_of_stream: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        let sh = &self.shared;
        if sh.config.bypass_cors_preflight && is_cors_preflight(head) {
            sh.stats.cors_preflight_bypassed.inc();
            sh.stats.allowed.inc();
            return Step::Done(HeadersAction::Continue);
        }
        let decision = match self.decide(head, info) {
            Decision::Pass => {
                sh.stats.allowed.inc();
                return Step::Done(HeadersAction::Continue);
            }
            Decision::Refuse(message) => {
                sh.stats.denied.inc();
                let mut reply = LocalReply::new(http::StatusCode::FORBIDDEN, "");
                reply.details = interned_details(&message);
                if !sh.config.strip_failure_response {
                    reply.body = format!("Failed JWT authentication: {message}").into();
                }
                return Step::Done(HeadersAction::Respond(Box::new(reply)));
            }
            d => d,
        };
        let realm = RealmParts::of(head);
        let client = info.http_client.clone();
        Step::wait(async move {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let (status, extracted) = {
                let check = verify::Check {
                    shared: &self.shared,
                    head: RefCell::new(head),
                    client,
                    extracted: RefCell::new(BTreeMap::new()),
                    now,
                    cache: verify::worker_cache(&self.shared),
                };
                let status = match self.shared.requirement(&decision) {
                    Some(r) => check.eval(r).await,
                    None => Status::Ok,
                };
                (status, check.extracted.into_inner())
            };
            set_metadata(info, extracted);
            if status == Status::Ok {
                self.shared.stats.allowed.inc();
                HeadersAction::Continue
            } else {
                self.refuse(status, &realm.realm())
            }
        })
    }
}

#[cfg(test)]
mod tests;
