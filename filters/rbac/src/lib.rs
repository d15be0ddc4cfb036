//! Envoy's role-based access control filters for Legate:
//! `envoy.filters.http.rbac` ([`http`]) and `envoy.filters.network.rbac`
//! ([`network`]).
//!
//! The host parses the config into the plain types of [`model`]; [`engine`]
//! evaluates them (pure, no I/O); the filters count Envoy's stats, set its
//! dynamic metadata and deny with a 403 or by closing the connection.
//!
//! Envoy's behaviour, kept here:
//! - policies are tried in name order; the first that matches is the effective
//!   policy. `ALLOW` allows iff one matches, `DENY` denies iff one matches, `LOG`
//!   allows everything and sets `envoy.common.access_log_hint` to whether one
//!   matched (enforced rules only);
//! - shadow rules are evaluated and counted but never enforced; their result goes
//!   to dynamic metadata (`<shadow_rules_stat_prefix>shadow_engine_result`:
//!   `allowed` / `denied`, and `<shadow_rules_stat_prefix>shadow_effective_policy_id`
//!   when a policy matched) under the filter's namespace;
//! - an HTTP denial is a 403 `RBAC: access denied` with details
//!   `rbac_access_denied_matched_policy[<policy or none>]`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::BTreeMap;

use legate_filter_api::{DynamicMetadata, MetadataValue};

pub mod engine;
pub mod http;
pub mod model;
pub mod network;

#[cfg(test)]
mod tests;

/// The shared metadata namespace of the `access_log_hint`.
pub const COMMON_NAMESPACE: &str = "envoy.common";
/// The key of the `LOG` action's result in [`COMMON_NAMESPACE`].
pub const ACCESS_LOG_HINT: &str = "access_log_hint";
/// The shadow rules' effective policy (after the shadow stat prefix).
pub const SHADOW_POLICY_ID: &str = "shadow_effective_policy_id";
/// The shadow rules' result, `allowed` or `denied` (after the shadow stat prefix).
pub const SHADOW_ENGINE_RESULT: &str = "shadow_engine_result";

/// `base` followed by the stat prefix `p` as its own segment, as Envoy joins a
/// configured prefix: nothing for an empty one, one `.` after it otherwise.
fn stat_join(base: &str, p: &str) -> String {
    let p = p.strip_suffix('.').unwrap_or(p);
    if p.is_empty() {
        base.to_string()
    } else {
        format!("{base}{p}.")
    }
}

/// Runs `f` on the struct of namespace `ns`, made (or made a struct) if needed.
fn with_namespace(
    md: &mut DynamicMetadata,
    ns: &str,
    f: impl FnOnce(&mut BTreeMap<String, MetadataValue>),
) {
    let mut fields = match md.remove(ns) {
        Some(MetadataValue::Struct(fields)) => fields,
        _ => BTreeMap::new(),
    };
    f(&mut fields);
    md.insert(ns.to_string(), MetadataValue::Struct(fields));
}

/// Merges a shadow result into namespace `ns` (keys: effective policy, result).
fn set_shadow_result(
    md: &mut DynamicMetadata,
    ns: &str,
    (policy_key, result_key): (&str, &str),
    allowed: bool,
    policy: Option<String>,
) {
    with_namespace(md, ns, |fields| {
        if let Some(p) = policy {
            fields.insert(policy_key.to_string(), MetadataValue::String(p));
        }
        let result = if allowed { "allowed" } else { "denied" };
        fields.insert(
            result_key.to_string(),
            MetadataValue::String(result.to_string()),
        );
    });
}

/// Sets `envoy.common.access_log_hint`.
fn set_log_hint(md: &mut DynamicMetadata, hint: bool) {
    with_namespace(md, COMMON_NAMESPACE, |fields| {
        fields.insert(ACCESS_LOG_HINT.to_string(), MetadataValue::Bool(hint));
    });
}
