//! `envoy.filters.http.rbac`.

use std::any::Any;
use std::sync::Arc;

use legate_filter_api::matcher::RequestView;
use legate_filter_api::stats::{Counter, Store};
use legate_filter_api::{
    HeadersAction, HttpFilter, HttpFilterFactory, LocalReply, RequestHead, Step, StreamInfo,
};

use crate::engine::{Engine, Input};
use crate::model::{HttpRbacConfig, RbacPerRoute};
use crate::{SHADOW_ENGINE_RESULT, SHADOW_POLICY_ID, set_log_hint, set_shadow_result, stat_join};

/// The dynamic metadata namespace of the HTTP filter.
pub const NAMESPACE: &str = "envoy.filters.http.rbac";

/// The body of a denial.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// Rules of one level (the filter or a route), compiled.
#[derive(Debug, Default)]
pub struct Rules {
    enforced: Option<Engine>,
    shadow: Option<Engine>,
}

impl Rules {
    fn new(config: HttpRbacConfig) -> Rules {
        Rules {
            enforced: config.rules.map(Engine::new),
            shadow: config.shadow_rules.map(Engine::new),
        }
    }
}

/// A route's `RBACPerRoute`, compiled: what the host stores in the route's
/// per-filter config and the filter looks up by its name.
#[derive(Debug)]
pub struct RouteRules(Rules);

impl RouteRules {
    /// Compiles a per-route config; an empty one (no `rbac`) lets the route's
    /// requests through.
    pub fn new(config: RbacPerRoute) -> RouteRules {
        RouteRules(config.rbac.map(Rules::new).unwrap_or_default())
    }

    /// The same, type-erased, as a route's per-filter config.
    pub fn into_any(self) -> Arc<dyn Any + Send + Sync> {
        Arc::new(self)
    }
}

#[derive(Debug)]
struct Stats {
    allowed: Counter,
    denied: Counter,
    shadow_allowed: Counter,
    shadow_denied: Counter,
}

#[derive(Debug)]
struct Shared {
    filter_name: String,
    rules: Rules,
    stats: Stats,
    shadow_policy_key: String,
    shadow_result_key: String,
}

/// Makes the per-stream HTTP RBAC filters of one config.
pub struct HttpRbacFactory(Arc<Shared>);

impl HttpRbacFactory {
    /// A factory for the filter named `filter_name` in `http_filters` (the key
    /// of its per-route configs), in a connection manager whose `stat_prefix`
    /// is `hcm_stat_prefix`. Stats are `http.<hcm_stat_prefix>.rbac.[<rules_stat_prefix>.]allowed`
    /// and `denied`, and `...rbac.[<shadow_rules_stat_prefix>.]shadow_allowed` and
    /// `shadow_denied`, as Envoy names them.
    pub fn new(
        config: HttpRbacConfig,
        filter_name: &str,
        hcm_stat_prefix: &str,
        store: &Store,
    ) -> HttpRbacFactory {
        let base = format!("http.{hcm_stat_prefix}.rbac.");
        let enforced = stat_join(&base, &config.rules_stat_prefix);
        let shadow = stat_join(&base, &config.shadow_rules_stat_prefix);
        let stats = Stats {
            allowed: store.counter(format!("{enforced}allowed")),
            denied: store.counter(format!("{enforced}denied")),
            shadow_allowed: store.counter(format!("{shadow}shadow_allowed")),
            shadow_denied: store.counter(format!("{shadow}shadow_denied")),
        };
        let p = &config.shadow_rules_stat_prefix;
        HttpRbacFactory(Arc::new(Shared {
            filter_name: filter_name.to_string(),
            shadow_policy_key: format!("{p}{SHADOW_POLICY_ID}"),
            shadow_result_key: format!("{p}{SHADOW_ENGINE_RESULT}"),
            stats,
            rules: Rules::new(config),
        }))
    }
}

impl HttpFilterFactory for HttpRbacFactory {
    fn create(&self) -> Box<dyn HttpFilter> {
        Box::new(HttpRbacFilter(self.0.clone()))
    }
}

struct HttpRbacFilter(Arc<Shared>);

impl HttpFilter for HttpRbacFilter {
    fn on_request_headers<'a>(
        &'a mut self,
        head: &'a mut RequestHead,
        _end_of_stream: bool,
        info: &'a mut StreamInfo,
    ) -> Step<'a, HeadersAction> {
        Step::Done(check(&self.0, head, info))
    }
}

fn check(shared: &Shared, head: &RequestHead, info: &mut StreamInfo) -> HeadersAction {
    // The route's rules replace the filter's; keep them alive past `info`'s borrow.
    let per_route = info.per_filter_config.clone();
    let rules = per_route
        .as_deref()
        .and_then(|p| p.get::<RouteRules>(&shared.filter_name))
        .map_or(&shared.rules, |r| &r.0);
    let path = head.uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = head
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            head.headers
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or("");
    let request = || RequestView {
        method: head.method.as_str(),
        path,
        authority,
        scheme: head.uri.scheme_str().unwrap_or("http"),
        headers: &head.headers,
    };

    if let Some(shadow) = &rules.shadow {
        let d = shadow.evaluate(&input(request(), info));
        let (allowed, policy) = (d.allowed, d.policy.map(|p| p.name.clone()));
        if allowed {
            shared.stats.shadow_allowed.inc();
        } else {
            shared.stats.shadow_denied.inc();
        }
        set_shadow_result(
            &mut info.dynamic_metadata,
            NAMESPACE,
            (&shared.shadow_policy_key, &shared.shadow_result_key),
            allowed,
            policy,
        );
    }

    let Some(enforced) = &rules.enforced else {
        return HeadersAction::Continue;
    };
    let d = enforced.evaluate(&input(request(), info));
    let (allowed, details, hint) = (d.allowed, d.details(), d.log_hint);
    if let Some(hint) = hint {
        set_log_hint(&mut info.dynamic_metadata, hint);
    }
    if allowed {
        shared.stats.allowed.inc();
        HeadersAction::Continue
    } else {
        shared.stats.denied.inc();
        let mut reply = LocalReply::new(http::StatusCode::FORBIDDEN, DENIED_BODY);
        reply.details = details;
        HeadersAction::Respond(Box::new(reply))
    }
}

fn input<'a>(request: RequestView<'a>, info: &'a StreamInfo) -> Input<'a> {
    Input {
        request: Some(request),
        local: info.downstream_local_address,
        remote: info.downstream_remote_address,
        direct_remote: info.downstream_direct_remote_address,
        metadata: &info.dynamic_metadata,
    }
}
