//! The RBAC config model: plain values, checked by the host's config parser.
//! Envoy's `envoy.config.rbac.v3.RBAC` and the matchers it uses.

use std::collections::BTreeMap;

pub use legate_filter_api::matcher::{Cidr, HeaderMatcher, StringMatcher};

/// `RBAC.action`: what a matching policy means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Allow only requests that match a policy (the default).
    #[default]
    Allow,
    /// Deny requests that match a policy; allow the rest.
    Deny,
    /// Allow everything; record in `envoy.common.access_log_hint` whether a
    /// policy matched.
    Log,
}

/// `envoy.config.rbac.v3.RBAC`.
#[derive(Debug, Default)]
pub struct Rbac {
    /// `action`.
    pub action: Action,
    /// `policies`, by name. Evaluated in name order (byte-wise), as Envoy does.
    pub policies: BTreeMap<String, Policy>,
}

/// `envoy.config.rbac.v3.Policy`: matches when one of its permissions and one of
/// its principals match.
#[derive(Debug, Default)]
pub struct Policy {
    /// `permissions` (OR).
    pub permissions: Vec<Permission>,
    /// `principals` (OR).
    pub principals: Vec<Principal>,
}

/// `envoy.config.rbac.v3.Permission`: what is being done.
#[derive(Debug)]
pub enum Permission {
    /// `any: true`.
    Any,
    /// `header`: a request header or pseudo-header (`:path` includes the query).
    /// Never matches outside HTTP, except a matcher that asks for absence.
    Header(HeaderMatcher),
    /// `url_path.path`: the request path without query and fragment. HTTP only.
    UrlPath(StringMatcher),
    /// `destination_ip`: the local address the connection arrived on.
    DestinationIp(Cidr),
    /// `destination_port`.
    DestinationPort(u32),
    /// `destination_port_range`: `[start, end)`.
    DestinationPortRange {
        /// First port in the range.
        start: i64,
        /// First port past the range.
        end: i64,
    },
    /// `metadata`: the stream's (HTTP) or connection's (network) dynamic metadata.
    Metadata(MetadataMatcher),
    /// `requested_server_name`: the TLS SNI. Legate does not terminate TLS, so
    /// the name is always empty, as in Envoy for a plaintext connection.
    RequestedServerName(StringMatcher),
    /// `and_rules.rules`: all must match.
    And(Vec<Permission>),
    /// `or_rules.rules`: one must match.
    Or(Vec<Permission>),
    /// `not_rule`.
    Not(Box<Permission>),
}

/// `envoy.config.rbac.v3.Principal`: who is doing it.
#[derive(Debug)]
pub enum Principal {
    /// `any: true`.
    Any,
    /// `direct_remote_ip`: the socket peer, whatever `x-forwarded-for` says.
    DirectRemoteIp(Cidr),
    /// `remote_ip`: the client address after `x-forwarded-for` processing.
    RemoteIp(Cidr),
    /// `source_ip` (deprecated in Envoy): the connection's peer.
    SourceIp(Cidr),
    /// `header`, as in [`Permission::Header`].
    Header(HeaderMatcher),
    /// `url_path`, as in [`Permission::UrlPath`].
    UrlPath(StringMatcher),
    /// `metadata`, as in [`Permission::Metadata`].
    Metadata(MetadataMatcher),
    /// `and_ids.ids`: all must match.
    And(Vec<Principal>),
    /// `or_ids.ids`: one must match.
    Or(Vec<Principal>),
    /// `not_id`.
    Not(Box<Principal>),
}

/// Envoy's `type.matcher.v3.MetadataMatcher`.
#[derive(Debug)]
pub struct MetadataMatcher {
    /// `filter`: the metadata namespace, e.g. `envoy.filters.network.mysql_proxy`.
    pub filter: String,
    /// `path[].key`: keys into nested structs, from the namespace down.
    pub path: Vec<String>,
    /// `value`.
    pub value: ValueMatcher,
    /// `invert`: negates the result, including for a value that is not there.
    pub invert: bool,
}

/// Envoy's `type.matcher.v3.ValueMatcher`.
#[derive(Debug)]
pub enum ValueMatcher {
    /// `null_match`: the value is `null`.
    Null,
    /// `double_match`: the value is a number.
    Double(DoubleMatch),
    /// `string_match`: the value is a string that matches.
    String(StringMatcher),
    /// `bool_match`: the value is this boolean.
    Bool(bool),
    /// `present_match`: `true` matches any value that is there; `false` matches
    /// nothing (as in Envoy).
    Present(bool),
    /// `list_match.one_of`: the value is a list with an element that matches.
    ListOneOf(Box<ValueMatcher>),
    /// `or_match.value_matchers`: one must match.
    Or(Vec<ValueMatcher>),
}

/// Envoy's `type.matcher.v3.DoubleMatcher`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DoubleMatch {
    /// `exact`.
    Exact(f64),
    /// `range`: `[start, end)`.
    Range {
        /// Lowest value in the range.
        start: f64,
        /// First value past the range.
        end: f64,
    },
}

/// `envoy.extensions.filters.http.rbac.v3.RBAC` (also the body of
/// `RBACPerRoute.rbac`).
#[derive(Debug, Default)]
pub struct HttpRbacConfig {
    /// `rules`: enforced. `None` lets everything through, uncounted.
    pub rules: Option<Rbac>,
    /// `shadow_rules`: evaluated and counted, never enforced.
    pub shadow_rules: Option<Rbac>,
    /// `rules_stat_prefix`.
    pub rules_stat_prefix: String,
    /// `shadow_rules_stat_prefix`; also prefixes the shadow metadata keys.
    pub shadow_rules_stat_prefix: String,
}

/// `envoy.extensions.filters.http.rbac.v3.RBACPerRoute`. A route with one
/// replaces the filter's rules; with no `rbac`, the filter lets the route's
/// requests through.
#[derive(Debug, Default)]
pub struct RbacPerRoute {
    /// `rbac`: only its `rules` and `shadow_rules` are used; stats and metadata
    /// names stay the filter's.
    pub rbac: Option<HttpRbacConfig>,
}

/// `enforcement_type` of the network filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EnforcementType {
    /// Decide once, on the first data from the client (the default).
    #[default]
    OneTimeOnFirstByte,
    /// Decide again on every chunk of data, against the metadata earlier
    /// filters (such as `mysql_proxy`) set meanwhile.
    Continuous,
}

/// `envoy.extensions.filters.network.rbac.v3.RBAC`.
#[derive(Debug, Default)]
pub struct NetworkRbacConfig {
    /// `rules`.
    pub rules: Option<Rbac>,
    /// `shadow_rules`.
    pub shadow_rules: Option<Rbac>,
    /// `stat_prefix` (required by Envoy).
    pub stat_prefix: String,
    /// `shadow_rules_stat_prefix`.
    pub shadow_rules_stat_prefix: String,
    /// `enforcement_type`.
    pub enforcement_type: EnforcementType,
}
