//! `envoy.filters.network.rbac`.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use legate_filter_api::network::{
    ConnectionInfo, NetworkAction, NetworkFilter, NetworkFilterFactory,
};
use legate_filter_api::stats::{Counter, Store};

use crate::engine::{Engine, Input};
use crate::model::{EnforcementType, NetworkRbacConfig};
use crate::{SHADOW_ENGINE_RESULT, SHADOW_POLICY_ID, set_log_hint, set_shadow_result, stat_join};

/// The dynamic metadata namespace of the network filter.
pub const NAMESPACE: &str = "envoy.filters.network.rbac";

#[derive(Debug)]
struct Shared {
    enforced: Option<Engine>,
    shadow: Option<Engine>,
    continuous: bool,
    allowed: Counter,
    denied: Counter,
    shadow_allowed: Counter,
    shadow_denied: Counter,
    shadow_policy_key: String,
    shadow_result_key: String,
}

/// Makes the per-connection network RBAC filters of one config.
pub struct NetworkRbacFactory(Arc<Shared>);

impl NetworkRbacFactory {
    /// A factory; stats are `<stat_prefix>.rbac.allowed`, `denied` and
    /// `...rbac.[<shadow_rules_stat_prefix>.]shadow_allowed`, `shadow_denied`.
    pub fn new(config: NetworkRbacConfig, store: &Store) -> NetworkRbacFactory {
        let base = stat_join("", &config.stat_prefix) + "rbac.";
        let shadow = stat_join(&base, &config.shadow_rules_stat_prefix);
        let p = &config.shadow_rules_stat_prefix;
        NetworkRbacFactory(Arc::new(Shared {
            allowed: store.counter(format!("{base}allowed")),
            denied: store.counter(format!("{base}denied")),
            shadow_allowed: store.counter(format!("{shadow}shadow_allowed")),
            shadow_denied: store.counter(format!("{shadow}shadow_denied")),
            shadow_policy_key: format!("{p}{SHADOW_POLICY_ID}"),
            shadow_result_key: format!("{p}{SHADOW_ENGINE_RESULT}"),
            continuous: config.enforcement_type == EnforcementType::Continuous,
            enforced: config.rules.map(Engine::new),
            shadow: config.shadow_rules.map(Engine::new),
        }))
    }
}

impl NetworkFilterFactory for NetworkRbacFactory {
    fn create(&self) -> Box<dyn NetworkFilter> {
        Box::new(NetworkRbacFilter {
            shared: self.0.clone(),
            shadow_done: false,
            decision: None,
        })
    }
}

struct NetworkRbacFilter {
    shared: Arc<Shared>,
    shadow_done: bool,
    /// The enforced decision, once made (one-time enforcement keeps it).
    decision: Option<bool>,
}

fn input(info: &ConnectionInfo) -> Input<'_> {
    Input {
        request: None,
        local: info.local_address,
        remote: info.remote_address,
        direct_remote: info.remote_address,
        metadata: &info.dynamic_metadata,
    }
}

impl NetworkRbacFilter {
    /// Decides on data from the client: whether the connection may go on.
    fn check(&mut self, info: &mut ConnectionInfo) -> bool {
        let s = &*self.shared;
        if let Some(shadow) = &s.shadow
            && (s.continuous || !self.shadow_done)
        {
            self.shadow_done = true;
            let d = shadow.evaluate(&input(info));
            let (allowed, policy) = (d.allowed, d.policy.map(|p| p.name.clone()));
            if allowed {
                s.shadow_allowed.inc();
            } else {
                s.shadow_denied.inc();
            }
            set_shadow_result(
                &mut info.dynamic_metadata,
                NAMESPACE,
                (&s.shadow_policy_key, &s.shadow_result_key),
                allowed,
                policy,
            );
        }
        let Some(enforced) = &s.enforced else {
            return true;
        };
        if !s.continuous
            && let Some(allowed) = self.decision
        {
            return allowed;
        }
        let d = enforced.evaluate(&input(info));
        let (allowed, hint) = (d.allowed, d.log_hint);
        if let Some(hint) = hint {
            set_log_hint(&mut info.dynamic_metadata, hint);
        }
        if allowed {
            s.allowed.inc();
        } else {
            s.denied.inc();
        }
        self.decision = Some(allowed);
        allowed
    }
}

#[async_trait(?Send)]
impl NetworkFilter for NetworkRbacFilter {
    async fn on_read(
        &mut self,
        data: &mut BytesMut,
        _end_stream: bool,
        info: &mut ConnectionInfo,
    ) -> NetworkAction {
        if self.check(info) {
            NetworkAction::Continue
        } else {
            // Nothing of a denied connection goes on.
            data.clear();
            NetworkAction::Close
        }
    }
}
