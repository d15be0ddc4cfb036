//! The filter's configuration, as the host's config loader builds it from
//! Envoy's `JwtAuthentication` and `PerRouteConfig` messages.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use legate_filter_api::matcher::RouteMatch;

use crate::jwks::Jwks;
use crate::status::Status;

/// Where a provider's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    /// `local_jwks`, read when the config loads. A document that cannot be read
    /// keeps its status: every token of the provider then fails with "no valid
    /// keys", as in Envoy.
    Local(Result<Arc<Jwks>, Status>),
    /// `remote_jwks`.
    Remote(RemoteJwks),
    /// Neither: tokens fail with "no valid keys".
    None,
}

/// `remote_jwks`: fetched by each worker on first use and kept for
/// `cache_duration`.
#[derive(Debug, Clone)]
pub struct RemoteJwks {
    /// `http_uri.cluster`.
    pub cluster: String,
    /// `http_uri.uri`: its authority is the request's `host`.
    pub authority: String,
    /// `http_uri.uri`: path and query.
    pub path: String,
    /// `http_uri.timeout`.
    pub timeout: Duration,
    /// `cache_duration` (10 minutes by default).
    pub cache_duration: Duration,
}

/// `JwtProvider`.
#[derive(Debug, Clone)]
pub struct Provider {
    /// The provider's name (the key of `providers`).
    pub name: String,
    /// `issuer`; empty matches tokens of any issuer.
    pub issuer: String,
    /// `audiences`; empty allows any.
    pub audiences: Vec<String>,
    /// `local_jwks` or `remote_jwks`.
    pub jwks: JwksSource,
    /// `from_headers`: header and value prefix.
    pub from_headers: Vec<(HeaderName, String)>,
    /// `from_params`.
    pub from_params: Vec<String>,
    /// `from_cookies`.
    pub from_cookies: Vec<String>,
    /// `forward`: keep the token in the request.
    pub forward: bool,
    /// `forward_payload_header`.
    pub forward_payload_header: Option<HeaderName>,
    /// `pad_forward_payload_header`.
    pub pad_forward_payload_header: bool,
    /// `claim_to_headers`: header and (dotted) claim name.
    pub claim_to_headers: Vec<(HeaderName, String)>,
    /// `clock_skew_seconds` (60 when unset or 0).
    pub clock_skew_seconds: u64,
    /// `payload_in_metadata`.
    pub payload_in_metadata: Option<String>,
    /// `header_in_metadata`.
    pub header_in_metadata: Option<String>,
}

impl Provider {
    /// A provider with Envoy's defaults: default token places, no keys.
    pub fn new(issuer: &str) -> Provider {
        Provider {
            name: String::new(),
            issuer: issuer.to_string(),
            audiences: Vec::new(),
            jwks: JwksSource::None,
            from_headers: Vec::new(),
            from_params: Vec::new(),
            from_cookies: Vec::new(),
            forward: false,
            forward_payload_header: None,
            pad_forward_payload_header: false,
            claim_to_headers: Vec::new(),
            clock_skew_seconds: 60,
            payload_in_metadata: None,
            header_in_metadata: None,
        }
    }
}

/// `JwtRequirement`.
#[derive(Debug, Clone)]
pub enum Requirement {
    /// `provider_name`, or `provider_and_audiences` (audiences replace the
    /// provider's).
    Provider {
        /// Index into [`Config::providers`].
        provider: usize,
        /// `provider_and_audiences.audiences`.
        audiences: Option<Vec<String>>,
    },
    /// `requires_any`.
    Any(Vec<Requirement>),
    /// `requires_all`.
    All(Vec<Requirement>),
    /// `allow_missing`.
    AllowMissing,
    /// `allow_missing_or_failed`.
    AllowMissingOrFailed,
    /// No requirement set: everything passes.
    Nothing,
}

/// `RequirementRule`: the first rule whose `match` matches decides.
#[derive(Debug)]
pub struct Rule {
    /// `match`.
    pub matcher: RouteMatch,
    /// `requires` (or the `requirement_name` entry); `None` checks nothing.
    pub requires: Option<Requirement>,
}

/// `JwtAuthentication`.
#[derive(Debug)]
pub struct Config {
    /// `providers`, sorted by name.
    pub providers: Vec<Provider>,
    /// `rules`.
    pub rules: Vec<Rule>,
    /// `requirement_map`, sorted by name.
    pub requirement_map: Vec<(String, Requirement)>,
    /// `bypass_cors_preflight`.
    pub bypass_cors_preflight: bool,
    /// `strip_failure_response`: refusals carry no body and no
    /// `www-authenticate`.
    pub strip_failure_response: bool,
}

/// `PerRouteConfig`, read from the route's `typed_per_filter_config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PerRouteConfig {
    /// `disabled: true`: no check on this route.
    Disabled,
    /// `requirement_name`: an entry of `requirement_map`.
    RequirementName(String),
}
