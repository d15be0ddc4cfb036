//! The evaluation engine: pure functions from a config and what is known about
//! a request or connection to a decision. No I/O, no panics.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};

use legate_filter_api::matcher::{
    HeaderMatch, HeaderMatcher, RequestView, header_matches, split_query,
};
use legate_filter_api::{DynamicMetadata, MetadataValue};

use crate::model::{
    Action, DoubleMatch, MetadataMatcher, Permission, Policy, Principal, Rbac, ValueMatcher,
};

/// What the rules can look at.
pub struct Input<'a> {
    /// The HTTP request, or `None` for a network (L4) check.
    pub request: Option<RequestView<'a>>,
    /// The local address the connection arrived on (`destination_*`).
    pub local: SocketAddr,
    /// The client after `x-forwarded-for` processing (`remote_ip`).
    pub remote: SocketAddr,
    /// The socket peer (`direct_remote_ip`, `source_ip`).
    pub direct_remote: SocketAddr,
    /// Dynamic metadata of the stream or connection (`metadata`).
    pub metadata: &'a DynamicMetadata,
}

/// The outcome of one set of rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision<'e> {
    /// Whether the request or connection may go on.
    pub allowed: bool,
    /// The first policy (in name order) that matched.
    pub policy: Option<&'e CompiledPolicy>,
    /// For `LOG` rules: whether a policy matched (`access_log_hint`).
    pub log_hint: Option<bool>,
}

/// A policy with the strings the filters report about it, made once.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// The policy's name.
    pub name: String,
    /// `rbac_access_denied_matched_policy[<name>]`, whitespace replaced by `_`.
    pub details: &'static str,
    /// The policy.
    pub policy: Policy,
}

impl PartialEq for CompiledPolicy {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}
impl Eq for CompiledPolicy {}

/// [`Rbac`] ready to evaluate: policies in name order, with their details.
#[derive(Debug)]
pub struct Engine {
    action: Action,
    policies: Vec<CompiledPolicy>,
}

/// Response details of a denial no policy matched (an `ALLOW` miss).
pub const DETAILS_NO_POLICY: &str = "rbac_access_denied_matched_policy[none]";

impl Engine {
    /// Compiles rules.
    pub fn new(rbac: Rbac) -> Engine {
        Engine {
            action: rbac.action,
            policies: rbac
                .policies
                .into_iter()
                .map(|(name, policy)| CompiledPolicy {
                    details: details_for(&name),
                    name,
                    policy,
                })
                .collect(),
        }
    }

    /// The action of these rules.
    pub fn action(&self) -> Action {
        self.action
    }

    /// Evaluates the rules: policies in name order, the first match decides.
    pub fn evaluate(&self, input: &Input<'_>) -> Decision<'_> {
        let policy = self
            .policies
            .iter()
            .find(|p| policy_matches(&p.policy, input));
        let matched = policy.is_some();
        let (allowed, log_hint) = match self.action {
            Action::Allow => (matched, None),
            Action::Deny => (!matched, None),
            Action::Log => (true, Some(matched)),
        };
        Decision {
            allowed,
            policy,
            log_hint,
        }
    }
}

impl Decision<'_> {
    /// Envoy's response details for this decision when it denies.
    pub fn details(&self) -> &'static str {
        self.policy.map_or(DETAILS_NO_POLICY, |p| p.details)
    }
}

/// `rbac_access_denied_matched_policy[<name>]`, interned: a config names a
/// bounded set of policies, and local replies carry `&'static str` details.
fn details_for(name: &str) -> &'static str {
    static SEEN: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let sanitized: String = name
        .chars()
        .map(|c| {
            if matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c') {
                '_'
            } else {
                c
            }
        })
        .collect();
    let s = format!("rbac_access_denied_matched_policy[{sanitized}]");
    let mut seen = SEEN
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(v) = seen.get(s.as_str()) {
        return v;
    }
    let leaked: &'static str = Box::leak(s.into_boxed_str());
    seen.insert(leaked);
    leaked
}

/// Whether one policy matches: a permission and a principal.
pub fn policy_matches(p: &Policy, input: &Input<'_>) -> bool {
    p.permissions.iter().any(|x| permission_matches(x, input))
        && p.principals.iter().any(|x| principal_matches(x, input))
}

/// Whether a permission matches.
pub fn permission_matches(p: &Permission, input: &Input<'_>) -> bool {
    match p {
        Permission::Any => true,
        Permission::Header(h) => header(h, input),
        Permission::UrlPath(m) => url_path(m, input),
        Permission::DestinationIp(c) => c.contains(input.local.ip()),
        Permission::DestinationPort(port) => u32::from(input.local.port()) == *port,
        Permission::DestinationPortRange { start, end } => {
            let port = i64::from(input.local.port());
            *start <= port && port < *end
        }
        Permission::Metadata(m) => metadata_matches(m, input.metadata),
        // No TLS, so no SNI: Envoy matches a plaintext connection's empty name.
        Permission::RequestedServerName(m) => m.matches(""),
        Permission::And(all) => all.iter().all(|x| permission_matches(x, input)),
        Permission::Or(any) => any.iter().any(|x| permission_matches(x, input)),
        Permission::Not(inner) => !permission_matches(inner, input),
    }
}

/// Whether a principal matches.
pub fn principal_matches(p: &Principal, input: &Input<'_>) -> bool {
    match p {
        Principal::Any => true,
        Principal::DirectRemoteIp(c) | Principal::SourceIp(c) => {
            c.contains(input.direct_remote.ip())
        }
        Principal::RemoteIp(c) => c.contains(input.remote.ip()),
        Principal::Header(h) => header(h, input),
        Principal::UrlPath(m) => url_path(m, input),
        Principal::Metadata(m) => metadata_matches(m, input.metadata),
        Principal::And(all) => all.iter().all(|x| principal_matches(x, input)),
        Principal::Or(any) => any.iter().any(|x| principal_matches(x, input)),
        Principal::Not(inner) => !principal_matches(inner, input),
    }
}

fn header(h: &HeaderMatcher, input: &Input<'_>) -> bool {
    match &input.request {
        Some(req) => header_matches(req, h),
        // Outside HTTP every header is absent: only "must be absent" matches
        // (`present_match: false`, or `true` inverted); `invert_match` does
        // not turn a failed value match on a missing header into a match.
        None => match h.kind {
            HeaderMatch::Present(want) => want == h.invert,
            _ => false,
        },
    }
}

fn url_path(m: &legate_filter_api::matcher::StringMatcher, input: &Input<'_>) -> bool {
    match &input.request {
        Some(req) => m.matches(split_query(req.path).0),
        None => false,
    }
}

/// Whether a metadata matcher matches (`invert` also flips a missing value).
pub fn metadata_matches(m: &MetadataMatcher, metadata: &DynamicMetadata) -> bool {
    let value = lookup(metadata, &m.filter, &m.path);
    value_matches(&m.value, value) != m.invert
}

/// The value at `path` under namespace `filter`, if every step is a struct key.
fn lookup<'m>(
    metadata: &'m DynamicMetadata,
    filter: &str,
    path: &[String],
) -> Option<&'m MetadataValue> {
    let mut cur = metadata.get(filter)?;
    if path.is_empty() {
        return None;
    }
    for key in path {
        match cur {
            MetadataValue::Struct(fields) => cur = fields.get(key)?,
            _ => return None,
        }
    }
    Some(cur)
}

/// Whether a value matcher matches a value (`None`: not there).
pub fn value_matches(m: &ValueMatcher, v: Option<&MetadataValue>) -> bool {
    match (m, v) {
        (ValueMatcher::Present(want), v) => *want && v.is_some(),
        (ValueMatcher::Or(ms), v) => ms.iter().any(|m| value_matches(m, v)),
        (_, None) => false,
        (ValueMatcher::Null, Some(v)) => matches!(v, MetadataValue::Null),
        (ValueMatcher::Bool(b), Some(v)) => matches!(v, MetadataValue::Bool(x) if x == b),
        (ValueMatcher::String(sm), Some(v)) => {
            matches!(v, MetadataValue::String(s) if sm.matches(s))
        }
        (ValueMatcher::Double(d), Some(MetadataValue::Number(x))) => match d {
            DoubleMatch::Exact(e) => x == e,
            DoubleMatch::Range { start, end } => start <= x && x < end,
        },
        (ValueMatcher::Double(_), Some(_)) => false,
        (ValueMatcher::ListOneOf(inner), Some(v)) => match v {
            MetadataValue::List(items) => items.iter().any(|i| value_matches(inner, Some(i))),
            _ => false,
        },
    }
}
