//! `legate:filter` components (the worlds in `wit/`): recognised by their
//! binary, checked against the world and version legate implements, and run
//! with `wasmtime::component`, under the same limits, failure policy, per-worker
//! instances and stats as proxy-wasm modules.
//!
//! Hooks are synchronous calls. A hook that awaits an outbound call returns
//! `pending`; the host runs the call on the worker and passes its result to the
//! stream's `resume`, so a waiting stream never holds the instance.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use legate_filter_api::network::{
    ConnectionInfo, NetworkAction, NetworkFilter, NetworkFilterFactory,
};
use legate_filter_api::{
    DataAction, HeadersAction, HttpFilter, HttpFilterFactory, LocalReply, RequestHead,
    ResponseHead, StreamInfo,
};
use wasmtime::component::{
    Component, ComponentType, Instance as CInstance, Lift, Linker, Lower, Resource, ResourceAny,
    ResourceType, TypedFunc,
};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};

use super::Plugin;
use super::abi::{Op, edit, set_request_pseudo};
use super::calls::{self, CallFailure, CallKind, CallResponse, OutCall};
use super::http::placeholder_info;
use super::shared::{self, Metric};
use super::slot::{Instance, Slot, slot};
use super::snapshot::Snapshot;
use super::vm::{ConnFacts, Data, describe};
use crate::config::{FailurePolicy, WasmPlugin};
use crate::upstream::WorkerClusters;

/// The `legate:filter` version this host implements; components of any
/// `0.1.x` load.
const PACKAGE: &str = "legate:filter";
const VERSION: &str = "0.1.0";
const COMPATIBLE: &str = "0.1.";

/// Which world a component was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    HttpFilter,
    NetworkFilter,
}

impl World {
    /// The world's full name, e.g. `legate:filter/http-filter@0.1.0`.
    pub fn qualified(self) -> String {
        format!("{PACKAGE}/{}@{VERSION}", self.name())
    }

    fn name(self) -> &'static str {
        match self {
            World::HttpFilter => "http-filter",
            World::NetworkFilter => "network-filter",
        }
    }
}

/// A compiled component and what it was checked to be.
pub struct Compiled {
    component: Component,
    pub world: World,
    /// The export's full name, e.g. `legate:filter/http-handler@0.1.0`.
    export: String,
    linker: Linker<CState>,
}

/// The interfaces legate provides to components.
const HOST_INTERFACES: [&str; 6] = [
    "types",
    "log",
    "metrics",
    "shared-data",
    "properties",
    "http-client",
];

fn expected() -> String {
    format!(
        "a component of world {PACKAGE}/http-filter@{VERSION} or {PACKAGE}/network-filter@{VERSION} (built with legate-sdk or from wit/)"
    )
}

/// Splits `legate:filter/log@0.1.0` into (`log`, `0.1.0`).
fn legate_name(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix(PACKAGE)?.strip_prefix('/')?;
    Some(rest.split_once('@').unwrap_or((rest, "")))
}

impl Compiled {
    pub fn new(bytes: &[u8]) -> Result<Compiled, String> {
        let engine = super::engine()?;
        let component = Component::new(engine, bytes).map_err(|e| {
            format!(
                "invalid Wasm component: {}",
                e.root_cause().to_string().lines().next().unwrap_or("")
            )
        })?;
        let ty = component.component_type();
        let mut found = None;
        for (name, _) in ty.exports(engine) {
            let Some((iface, version)) = legate_name(name) else {
                continue;
            };
            let world = match iface {
                "http-handler" => World::HttpFilter,
                "network-handler" => World::NetworkFilter,
                _ => continue,
            };
            if !version.starts_with(COMPATIBLE) {
                return Err(format!(
                    "the component was built for {PACKAGE}/{}@{version}; this legate runs {PACKAGE}@{VERSION} (world {PACKAGE}/{}@{VERSION})",
                    world.name(),
                    world.name()
                ));
            }
            if found.is_some() {
                return Err(format!(
                    "the component exports both {PACKAGE} handlers; expected {}",
                    expected()
                ));
            }
            found = Some((world, name.to_string()));
        }
        let Some((world, export)) = found else {
            let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
            return Err(format!(
                "the component exports [{}], not a {PACKAGE} handler; expected {}",
                exports.join(", "),
                expected()
            ));
        };
        let mut linker = Linker::new(engine);
        for (name, _) in ty.imports(engine) {
            if name.starts_with("wasi:") {
                wasi::define(&mut linker, name).map_err(|e| format!("{name}: {e:#}"))?;
                continue;
            }
            let Some((iface, version)) = legate_name(name) else {
                return Err(format!(
                    "the component imports {name}, which legate does not provide; expected {}",
                    expected()
                ));
            };
            if !version.starts_with(COMPATIBLE) || !HOST_INTERFACES.contains(&iface) {
                return Err(format!(
                    "the component imports {name}; this legate provides {PACKAGE}@{VERSION} ({})",
                    HOST_INTERFACES.join(", ")
                ));
            }
            host::define(&mut linker, name, iface).map_err(|e| format!("{name}: {e:#}"))?;
        }
        // The rest of WASI (files, sockets, polling): called, they trap.
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| format!("{e:#}"))?;
        linker
            .instantiate_pre(&component)
            .map_err(|e| format!("the component does not link: {e:#}"))?;
        Ok(Compiled {
            component,
            world,
            export,
            linker,
        })
    }
}

/// The store's data: what host functions reach during a hook.
pub struct CState {
    limits: StoreLimits,
    plugin: Arc<WasmPlugin>,
    /// The stream's facts, lent for the hook (for properties).
    stream: Data,
    metrics: Vec<Metric>,
    /// Calls the hook started; the filter runs them when it returns.
    calls: Vec<OutCall>,
    calls_allowed: bool,
    next_call: u32,
    cluster_names: Arc<Vec<String>>,
    /// Partial lines written to stdout and stderr.
    stdio: [Vec<u8>; 2],
}

/// A header as lowered into the guest, borrowed from the host's maps.
#[derive(ComponentType, Lower)]
#[component(record)]
struct HeaderRef<'a> {
    name: &'a str,
    value: &'a [u8],
}

/// A header as lifted from the guest.
#[derive(ComponentType, Lift, Lower, Clone)]
#[component(record)]
struct WHeader {
    name: String,
    value: Vec<u8>,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
enum WHeaderOp {
    #[component(name = "set")]
    Set(WHeader),
    #[component(name = "append")]
    Append(WHeader),
    #[component(name = "remove")]
    Remove(String),
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct WLocalReply {
    status: u16,
    headers: Vec<WHeader>,
    body: Vec<u8>,
    #[component(name = "grpc-status")]
    grpc_status: Option<u32>,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
enum WAction {
    #[component(name = "continue")]
    Continue,
    #[component(name = "respond")]
    Respond(WLocalReply),
    #[component(name = "wait-for-body")]
    WaitForBody,
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct WOutcome {
    edits: Vec<WHeaderOp>,
    body: Option<Vec<u8>>,
    action: WAction,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
enum WPoll {
    #[component(name = "ready")]
    Ready(WOutcome),
    #[component(name = "pending")]
    Pending,
}

#[derive(ComponentType, Lower)]
#[component(record)]
struct WResponse<'a> {
    status: u16,
    headers: Vec<HeaderRef<'a>>,
    body: &'a [u8],
}

#[derive(ComponentType, Lift, Lower, Clone, Debug)]
#[component(variant)]
enum WCallError {
    #[component(name = "unknown-cluster")]
    UnknownCluster(String),
    #[component(name = "invalid-request")]
    InvalidRequest(String),
    #[component(name = "connection-failure")]
    ConnectionFailure,
    #[component(name = "timeout")]
    Timeout,
    #[component(name = "not-allowed")]
    NotAllowed,
}

#[derive(ComponentType, Lift)]
#[component(record)]
struct WDataOutcome {
    data: Option<Vec<u8>>,
    close: bool,
}

type Headers<'a> = &'a [HeaderRef<'a>];

/// The typed exports of an `http-handler`.
struct HttpFns {
    new: TypedFunc<(), (ResourceAny,)>,
    request_headers: TypedFunc<(ResourceAny, Headers<'static>, bool), (WPoll,)>,
    request_body: TypedFunc<(ResourceAny, &'static [u8], bool), (WPoll,)>,
    request_trailers: TypedFunc<(ResourceAny, Headers<'static>), (WPoll,)>,
    response_headers: TypedFunc<(ResourceAny, Headers<'static>, bool), (WPoll,)>,
    response_body: TypedFunc<(ResourceAny, &'static [u8], bool), (WPoll,)>,
    response_trailers: TypedFunc<(ResourceAny, Headers<'static>), (WPoll,)>,
    resume: TypedFunc<(ResourceAny, u32, Result<WResponse<'static>, WCallError>), (WPoll,)>,
    done: TypedFunc<(ResourceAny,), ()>,
}

/// The typed exports of a `network-handler`.
struct NetFns {
    new: TypedFunc<(), (ResourceAny,)>,
    new_connection: TypedFunc<(ResourceAny,), (bool,)>,
    downstream: TypedFunc<(ResourceAny, &'static [u8], bool), (WDataOutcome,)>,
    upstream: TypedFunc<(ResourceAny, &'static [u8], bool), (WDataOutcome,)>,
    close: TypedFunc<(ResourceAny,), ()>,
}

enum Fns {
    Http(HttpFns),
    Network(NetFns),
}

/// A failed hook: the reason, for the log.
pub struct Failed(String);

/// One worker's instance of a component plugin.
pub struct CVm {
    store: RefCell<Store<CState>>,
    fns: Fns,
    failed: Cell<bool>,
    deadline_ticks: u64,
    config: Arc<WasmPlugin>,
    stats: Arc<super::PluginStats>,
    clusters: Rc<WorkerClusters>,
}

impl Instance for CVm {
    fn build(plugin: &Plugin) -> Result<Rc<CVm>, String> {
        CVm::new(plugin).map_err(|Failed(e)| e)
    }

    fn is_failed(&self) -> bool {
        self.failed.get()
    }
}

fn typed<P, R>(
    store: &mut Store<CState>,
    instance: &CInstance,
    iface: &wasmtime::component::ComponentExportIndex,
    name: &str,
) -> Result<TypedFunc<P, R>, Failed>
where
    P: wasmtime::component::ComponentNamedList + Lower,
    R: wasmtime::component::ComponentNamedList + Lift,
{
    let idx = instance
        .get_export_index(&mut *store, Some(iface), name)
        .ok_or_else(|| Failed(format!("the component does not export {name}")))?;
    instance
        .get_typed_func::<P, R>(&mut *store, &idx)
        .map_err(|e| Failed(format!("{name}: {e:#}")))
}

impl CVm {
    fn new(plugin: &Plugin) -> Result<Rc<CVm>, Failed> {
        let config = plugin.config.clone();
        let compiled = config
            .code
            .component()
            .ok_or_else(|| Failed("not a component".into()))?;
        let engine = super::engine().map_err(Failed)?;
        let state = CState {
            limits: StoreLimitsBuilder::new()
                .memory_size(config.limits.max_memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            plugin: config.clone(),
            stream: Data::default(),
            metrics: Vec::new(),
            calls: Vec::new(),
            calls_allowed: false,
            next_call: 1,
            cluster_names: Arc::new(
                plugin
                    .clusters
                    .iter()
                    .map(|c| c.config.name.clone())
                    .collect(),
            ),
            stdio: Default::default(),
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        let ticks = config.limits.max_callback_duration.as_millis() as u64
            / super::EPOCH_TICK.as_millis() as u64;
        let deadline_ticks = ticks.max(1) + 1;
        store.set_epoch_deadline(deadline_ticks);
        let instance = compiled
            .linker
            .instantiate(&mut store, &compiled.component)
            .map_err(|e| Failed(describe(&e, "instantiate", &config)))?;
        let iface = instance
            .get_export_index(&mut store, None, &compiled.export)
            .ok_or_else(|| Failed(format!("the component does not export {}", compiled.export)))?;
        let s = &mut store;
        let configure: TypedFunc<(&[u8],), (Result<(), String>,)> =
            typed(s, &instance, &iface, "configure")?;
        let fns = match compiled.world {
            World::HttpFilter => Fns::Http(HttpFns {
                new: typed(s, &instance, &iface, "[constructor]http-stream")?,
                request_headers: typed(
                    s,
                    &instance,
                    &iface,
                    "[method]http-stream.on-request-headers",
                )?,
                request_body: typed(s, &instance, &iface, "[method]http-stream.on-request-body")?,
                request_trailers: typed(
                    s,
                    &instance,
                    &iface,
                    "[method]http-stream.on-request-trailers",
                )?,
                response_headers: typed(
                    s,
                    &instance,
                    &iface,
                    "[method]http-stream.on-response-headers",
                )?,
                response_body: typed(s, &instance, &iface, "[method]http-stream.on-response-body")?,
                response_trailers: typed(
                    s,
                    &instance,
                    &iface,
                    "[method]http-stream.on-response-trailers",
                )?,
                resume: typed(s, &instance, &iface, "[method]http-stream.resume")?,
                done: typed(s, &instance, &iface, "[method]http-stream.on-done")?,
            }),
            World::NetworkFilter => Fns::Network(NetFns {
                new: typed(s, &instance, &iface, "[constructor]connection")?,
                new_connection: typed(
                    s,
                    &instance,
                    &iface,
                    "[method]connection.on-new-connection",
                )?,
                downstream: typed(
                    s,
                    &instance,
                    &iface,
                    "[method]connection.on-downstream-data",
                )?,
                upstream: typed(s, &instance, &iface, "[method]connection.on-upstream-data")?,
                close: typed(s, &instance, &iface, "[method]connection.on-close")?,
            }),
        };
        let configured = configure
            .call(&mut store, (&config.configuration[..],))
            .map_err(|e| Failed(describe(&e, "configure", &config)))?;
        if let (Err(why),) = configured {
            return Err(Failed(format!(
                "configure refused the configuration: {why}"
            )));
        }
        plugin.stats.created.inc();
        plugin.stats.active.inc();
        Ok(Rc::new(CVm {
            store: RefCell::new(store),
            fns,
            failed: Cell::new(false),
            deadline_ticks,
            config,
            stats: plugin.stats.clone(),
            clusters: Rc::new(WorkerClusters::new(&plugin.clusters)),
        }))
    }

    /// Runs one guest call with the stream's data lent to the store. A trap,
    /// timeout or memory fault marks the instance failed.
    fn call<R>(
        &self,
        callback: &'static str,
        data: &mut Data,
        calls_allowed: bool,
        f: impl FnOnce(&Self, &mut Store<CState>) -> wasmtime::Result<R>,
    ) -> Result<(R, Vec<OutCall>), Failed> {
        if self.failed.get() {
            return Err(Failed("the VM failed earlier".into()));
        }
        let mut store = self.store.borrow_mut();
        store.set_epoch_deadline(self.deadline_ticks);
        let st = store.data_mut();
        std::mem::swap(&mut st.stream, data);
        st.calls_allowed = calls_allowed;
        let r = f(self, &mut store);
        let st = store.data_mut();
        std::mem::swap(&mut st.stream, data);
        let calls = std::mem::take(&mut st.calls);
        match r {
            Ok(r) => Ok((r, calls)),
            Err(e) => {
                self.failed.set(true);
                self.stats.vm_failed.inc();
                let why = describe(&e, callback, &self.config);
                tracing::warn!(plugin = %self.config.name, "Wasm filter failed: {why}");
                Err(Failed(why))
            }
        }
    }

    fn http(&self) -> &HttpFns {
        match &self.fns {
            Fns::Http(f) => f,
            Fns::Network(_) => unreachable!("an HTTP filter runs an http-handler component"),
        }
    }

    fn net(&self) -> &NetFns {
        match &self.fns {
            Fns::Network(f) => f,
            Fns::Http(_) => unreachable!("a network filter runs a network-handler component"),
        }
    }

    /// Drops a guest resource (best effort: a failed instance is discarded anyway).
    fn drop_resource(&self, r: ResourceAny) {
        if self.failed.get() {
            return;
        }
        let mut store = self.store.borrow_mut();
        store.set_epoch_deadline(self.deadline_ticks);
        if let Err(e) = r.resource_drop(&mut *store) {
            self.failed.set(true);
            self.stats.vm_failed.inc();
            tracing::warn!(plugin = %self.config.name, "Wasm filter failed: {}", describe(&e, "drop", &self.config));
        }
    }
}

impl Drop for CVm {
    fn drop(&mut self) {
        self.stats.active.dec();
    }
}

/// Checks a component plugin on a throwaway instance: instantiation and
/// `configure`.
pub fn check(plugin: &Plugin) -> Result<(), String> {
    CVm::new(plugin).map(|_| ()).map_err(|Failed(e)| e)
}

/// Results of a stream's outbound calls, as the worker tasks deliver them.
#[derive(Default)]
struct Inbox {
    done: RefCell<VecDeque<(u32, CallResponse)>>,
    notify: tokio::sync::Notify,
    pending: Cell<u32>,
}

/// Starts the calls a hook made; their results arrive in `inbox`.
fn start_calls(vm: &CVm, inbox: &Rc<Inbox>, calls: Vec<OutCall>) {
    for call in calls {
        let clusters = vm.clusters.clone();
        let inbox = inbox.clone();
        inbox.pending.set(inbox.pending.get() + 1);
        tokio::task::spawn_local(async move {
            let resp = calls::run(&call, &clusters).await;
            inbox.done.borrow_mut().push_back((call.token, resp));
            inbox.notify.notify_one();
        });
    }
}

/// A call's result as the guest sees it.
fn call_result(r: &CallResponse) -> Result<WResponse<'_>, WCallError> {
    match r.failure {
        Some(CallFailure::Connect) => return Err(WCallError::ConnectionFailure),
        Some(CallFailure::Timeout) => return Err(WCallError::Timeout),
        None => {}
    }
    let mut status = 0;
    let mut headers = Vec::with_capacity(r.headers.len());
    for (k, v) in &r.headers {
        if &k[..] == b":status" {
            status = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Ok(name) = std::str::from_utf8(k) {
            headers.push(HeaderRef { name, value: v });
        }
    }
    Ok(WResponse {
        status,
        headers,
        body: &r.body,
    })
}

// ---------------------------------------------------------------------------
// HTTP filters

/// Builds the per-stream filters of a component plugin.
pub struct ComponentHttpFactory {
    plugin: Arc<Plugin>,
}

impl ComponentHttpFactory {
    pub fn new(plugin: Arc<Plugin>) -> ComponentHttpFactory {
        ComponentHttpFactory { plugin }
    }
}

impl HttpFilterFactory for ComponentHttpFactory {
    fn create(&self) -> Box<dyn HttpFilter> {
        Box::new(ComponentHttpFilter {
            slot: slot(&self.plugin),
            plugin: self.plugin.clone(),
            cx: None,
            inbox: Rc::new(Inbox::default()),
            bypass: false,
            data: Data::default(),
            request_buffered: false,
        })
    }
}

pub struct ComponentHttpFilter {
    slot: Rc<Slot<CVm>>,
    plugin: Arc<Plugin>,
    /// The instance and the stream's `http-stream` resource in it.
    cx: Option<(Rc<CVm>, ResourceAny)>,
    inbox: Rc<Inbox>,
    /// FAIL_OPEN after a failure: the filter steps aside for the rest of the stream.
    bypass: bool,
    data: Data,
    /// The request body went through `on_request_buffered`: the body hooks pass.
    request_buffered: bool,
}

/// Which hook runs, with what it is given.
enum Hook<'a> {
    Headers(bool, Headers<'a>, bool),
    Body(bool, &'a [u8], bool),
    Trailers(bool, Headers<'a>),
}

/// A finished hook.
struct Done {
    edits: Vec<WHeaderOp>,
    body: Option<Vec<u8>>,
    action: WAction,
}

impl ComponentHttpFilter {
    fn context(&mut self) -> Result<(Rc<CVm>, ResourceAny), Failed> {
        if let Some((vm, r)) = &self.cx {
            return Ok((vm.clone(), *r));
        }
        let vm = self.slot.vm().map_err(Failed)?;
        let ((r,), _) = vm.call("constructor", &mut self.data, false, |vm, s| {
            vm.http().new.call(s, ())
        })?;
        self.cx = Some((vm.clone(), r));
        Ok((vm, r))
    }

    /// Runs a hook, then feeds it the results of the calls it awaits until it
    /// finishes.
    async fn run(&mut self, hook: Hook<'_>) -> Result<Done, Failed> {
        let (vm, r) = self.context()?;
        let name = match hook {
            Hook::Headers(true, ..) => "on-request-headers",
            Hook::Headers(false, ..) => "on-response-headers",
            Hook::Body(true, ..) => "on-request-body",
            Hook::Body(false, ..) => "on-response-body",
            Hook::Trailers(true, ..) => "on-request-trailers",
            Hook::Trailers(false, ..) => "on-response-trailers",
        };
        let ((mut poll,), calls) = vm.call(name, &mut self.data, true, |vm, s| {
            let f = vm.http();
            match hook {
                Hook::Headers(true, h, eos) => f.request_headers.call(s, (r, h, eos)),
                Hook::Headers(false, h, eos) => f.response_headers.call(s, (r, h, eos)),
                Hook::Body(true, b, eos) => f.request_body.call(s, (r, b, eos)),
                Hook::Body(false, b, eos) => f.response_body.call(s, (r, b, eos)),
                Hook::Trailers(true, t) => f.request_trailers.call(s, (r, t)),
                Hook::Trailers(false, t) => f.response_trailers.call(s, (r, t)),
            }
        })?;
        start_calls(&vm, &self.inbox, calls);
        loop {
            match poll {
                WPoll::Ready(o) => {
                    return Ok(Done {
                        edits: o.edits,
                        body: o.body,
                        action: o.action,
                    });
                }
                WPoll::Pending => {}
            }
            let next = loop {
                if let Some(d) = self.inbox.done.borrow_mut().pop_front() {
                    break d;
                }
                if self.inbox.pending.get() == 0 {
                    return Err(Failed(format!(
                        "{name}: the hook is pending but awaits no outbound call"
                    )));
                }
                self.inbox.notify.notified().await;
            };
            self.inbox.pending.set(self.inbox.pending.get() - 1);
            let (token, resp) = next;
            let ((p,), calls) = vm.call("resume", &mut self.data, true, |vm, s| {
                vm.http().resume.call(s, (r, token, call_result(&resp)))
            })?;
            start_calls(&vm, &self.inbox, calls);
            poll = p;
        }
    }

    /// What the failure policy gives the stream.
    fn failure(&mut self, Failed(why): Failed) -> Option<LocalReply> {
        let stats = &self.plugin.stats;
        tracing::debug!(plugin = %self.plugin.config.name, "Wasm filter failed: {why}");
        match self.plugin.config.failure_policy {
            FailurePolicy::FailOpen => {
                stats.fail_open.inc();
                self.bypass = true;
                None
            }
            FailurePolicy::FailClosed | FailurePolicy::FailReload => {
                stats.fail_closed.inc();
                let mut r = LocalReply::new(http::StatusCode::SERVICE_UNAVAILABLE, Bytes::new());
                r.details = "wasm_fail_stream";
                Some(r)
            }
        }
    }

    fn headers_action(&mut self, r: Result<WAction, Failed>, request: bool) -> HeadersAction {
        match r {
            Ok(WAction::Continue) => HeadersAction::Continue,
            Ok(WAction::WaitForBody) if request => HeadersAction::WaitForBody {
                limit: self.plugin.config.limits.max_buffered_body_bytes,
            },
            Ok(WAction::WaitForBody) => HeadersAction::Continue,
            Ok(WAction::Respond(reply)) => HeadersAction::Respond(local_reply(reply)),
            Err(e) => match self.failure(e) {
                Some(r) => HeadersAction::Respond(r),
                None => HeadersAction::Continue,
            },
        }
    }

    fn data_action(&mut self, r: Result<WAction, Failed>) -> DataAction {
        match self.headers_action(r, false) {
            HeadersAction::Respond(r) => DataAction::Respond(r),
            _ => DataAction::Continue,
        }
    }

    /// Runs the request headers hook on a snapshot of the head, then applies
    /// the hook's edits to it.
    async fn request_headers(
        &mut self,
        head: &mut RequestHead,
        eos: bool,
        info: &mut StreamInfo,
    ) -> Result<WAction, Failed> {
        let snap = Snapshot::request(head);
        let refs = refs(&snap);
        let info_lent = std::mem::replace(info, placeholder_info(info));
        self.data.info = Some(info_lent);
        self.data.req_seen = None;
        self.data.conn = None;
        let r = self.run(Hook::Headers(true, &refs, eos)).await;
        drop(refs);
        self.data.req_seen = Some(snap);
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        let done = r?;
        let names = &mut Vec::new();
        for op in &done.edits {
            let (key, value, op) = op_parts(op);
            if key.starts_with(':') {
                set_request_pseudo(head, key.as_bytes(), value, op);
            } else {
                edit(&mut head.headers, names, key.as_bytes(), value, op);
            }
        }
        Ok(done.action)
    }

    async fn response_headers(
        &mut self,
        head: &mut ResponseHead,
        eos: bool,
        info: &mut StreamInfo,
    ) -> Result<WAction, Failed> {
        let snap = Snapshot::response(head);
        let refs = refs(&snap);
        self.data.info = Some(std::mem::replace(info, placeholder_info(info)));
        let r = self.run(Hook::Headers(false, &refs, eos)).await;
        drop(refs);
        self.data.resp_seen = Some(snap);
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        let done = r?;
        let names = &mut Vec::new();
        for op in &done.edits {
            let (key, value, op) = op_parts(op);
            if key == ":status" {
                if let Some(s) = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u16>().ok())
                    .and_then(|v| http::StatusCode::from_u16(v).ok())
                {
                    head.status = s;
                }
            } else if !key.starts_with(':') {
                edit(&mut head.headers, names, key.as_bytes(), value, op);
            }
        }
        Ok(done.action)
    }

    async fn body(
        &mut self,
        request: bool,
        chunk: &mut Bytes,
        eos: bool,
        info: &mut StreamInfo,
    ) -> DataAction {
        if self.bypass {
            return DataAction::Continue;
        }
        self.data.info = Some(std::mem::replace(info, placeholder_info(info)));
        let taken = std::mem::take(chunk);
        let r = self.run(Hook::Body(request, &taken, eos)).await;
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        *chunk = taken;
        let r = r.map(|done| {
            if let Some(b) = done.body {
                *chunk = Bytes::from(b);
            }
            done.action
        });
        self.data_action(r)
    }

    async fn trailers(
        &mut self,
        request: bool,
        trailers: &mut http::HeaderMap,
        info: &mut StreamInfo,
    ) -> DataAction {
        if self.bypass {
            return DataAction::Continue;
        }
        let list: Vec<HeaderRef> = trailers
            .iter()
            .map(|(k, v)| HeaderRef {
                name: k.as_str(),
                value: v.as_bytes(),
            })
            .collect();
        self.data.info = Some(std::mem::replace(info, placeholder_info(info)));
        let r = self.run(Hook::Trailers(request, &list)).await;
        drop(list);
        if let Some(i) = self.data.info.take() {
            *info = i;
        }
        let r = r.map(|done| {
            let names = &mut Vec::new();
            for op in &done.edits {
                let (key, value, op) = op_parts(op);
                edit(trailers, names, key.as_bytes(), value, op);
            }
            done.action
        });
        self.data_action(r)
    }

    fn finish(&mut self) {
        if let Some((vm, r)) = self.cx.take() {
            if !self.bypass {
                let _ = vm.call("on-done", &mut self.data, false, |vm, s| {
                    vm.http().done.call(s, (r,))
                });
            }
            vm.drop_resource(r);
        }
    }
}

/// Borrowed guest views of a snapshot's headers.
fn refs(snap: &Snapshot) -> Vec<HeaderRef<'_>> {
    snap.pairs()
        .filter_map(|(k, v)| {
            Some(HeaderRef {
                name: std::str::from_utf8(k).ok()?,
                value: v,
            })
        })
        .collect()
}

fn op_parts(op: &WHeaderOp) -> (&str, &[u8], Op) {
    match op {
        WHeaderOp::Set(h) => (&h.name, &h.value, Op::Replace),
        WHeaderOp::Append(h) => (&h.name, &h.value, Op::Add),
        WHeaderOp::Remove(n) => (n, &[], Op::Remove),
    }
}

fn local_reply(r: WLocalReply) -> LocalReply {
    let status =
        http::StatusCode::from_u16(r.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let mut reply = LocalReply::new(status, Bytes::from(r.body));
    let names = &mut Vec::new();
    for h in &r.headers {
        edit(
            &mut reply.headers,
            names,
            h.name.as_bytes(),
            &h.value,
            Op::Add,
        );
    }
    reply.grpc_status = r.grpc_status;
    reply.details = "wasm_local_reply";
    reply
}

#[async_trait(?Send)]
impl HttpFilter for ComponentHttpFilter {
    async fn on_request_headers(
        &mut self,
        head: &mut RequestHead,
        eos: bool,
        info: &mut StreamInfo,
    ) -> HeadersAction {
        if self.bypass {
            return HeadersAction::Continue;
        }
        let r = self.request_headers(head, eos, info).await;
        self.headers_action(r, true)
    }

    async fn on_request_buffered(
        &mut self,
        _head: &mut RequestHead,
        body: &mut Bytes,
        trailers: &mut Option<http::HeaderMap>,
        info: &mut StreamInfo,
    ) -> HeadersAction {
        self.request_buffered = true;
        if self.bypass {
            return HeadersAction::Continue;
        }
        let eos = trailers.is_none();
        if let DataAction::Respond(r) = self.body(true, body, eos, info).await {
            return HeadersAction::Respond(r);
        }
        if let Some(t) = trailers.as_mut()
            && let DataAction::Respond(r) = self.trailers(true, t, info).await
        {
            return HeadersAction::Respond(r);
        }
        HeadersAction::Continue
    }

    async fn on_request_body(
        &mut self,
        chunk: &mut Bytes,
        eos: bool,
        info: &mut StreamInfo,
    ) -> DataAction {
        if self.request_buffered {
            return DataAction::Continue;
        }
        self.body(true, chunk, eos, info).await
    }

    async fn on_request_trailers(
        &mut self,
        trailers: &mut http::HeaderMap,
        info: &mut StreamInfo,
    ) -> DataAction {
        if self.request_buffered {
            return DataAction::Continue;
        }
        self.trailers(true, trailers, info).await
    }

    async fn on_response_headers(
        &mut self,
        head: &mut ResponseHead,
        eos: bool,
        info: &mut StreamInfo,
    ) -> HeadersAction {
        if self.bypass {
            return HeadersAction::Continue;
        }
        let r = self.response_headers(head, eos, info).await;
        self.headers_action(r, false)
    }

    async fn on_response_body(
        &mut self,
        chunk: &mut Bytes,
        eos: bool,
        info: &mut StreamInfo,
    ) -> DataAction {
        self.body(false, chunk, eos, info).await
    }

    async fn on_response_trailers(
        &mut self,
        trailers: &mut http::HeaderMap,
        info: &mut StreamInfo,
    ) -> DataAction {
        self.trailers(false, trailers, info).await
    }

    fn wants_body(&self) -> bool {
        true
    }

    fn on_stream_complete(&mut self, _info: &StreamInfo) {
        self.finish();
    }
}

impl Drop for ComponentHttpFilter {
    fn drop(&mut self) {
        self.finish();
    }
}

// ---------------------------------------------------------------------------
// Network filters

/// Builds the per-connection filters of a component plugin.
pub struct ComponentNetworkFactory {
    plugin: Arc<Plugin>,
}

impl ComponentNetworkFactory {
    pub fn new(plugin: Arc<Plugin>) -> ComponentNetworkFactory {
        ComponentNetworkFactory { plugin }
    }
}

impl NetworkFilterFactory for ComponentNetworkFactory {
    fn create(&self) -> Box<dyn NetworkFilter> {
        Box::new(ComponentNetworkFilter {
            slot: slot(&self.plugin),
            plugin: self.plugin.clone(),
            cx: None,
            bypass: false,
            data: Data::default(),
        })
    }
}

pub struct ComponentNetworkFilter {
    slot: Rc<Slot<CVm>>,
    plugin: Arc<Plugin>,
    cx: Option<(Rc<CVm>, ResourceAny)>,
    bypass: bool,
    data: Data,
}

impl ComponentNetworkFilter {
    fn failure(&mut self, Failed(why): Failed) -> NetworkAction {
        tracing::debug!(plugin = %self.plugin.config.name, "Wasm network filter failed: {why}");
        let stats = &self.plugin.stats;
        match self.plugin.config.failure_policy {
            FailurePolicy::FailOpen => {
                stats.fail_open.inc();
                self.bypass = true;
                NetworkAction::Continue
            }
            _ => {
                stats.fail_closed.inc();
                NetworkAction::Close
            }
        }
    }

    fn data_hook(
        &mut self,
        downstream: bool,
        data: &mut bytes::BytesMut,
        eos: bool,
    ) -> NetworkAction {
        if self.bypass {
            return NetworkAction::Continue;
        }
        let Some((vm, r)) = self.cx.clone() else {
            return NetworkAction::Continue;
        };
        let name = if downstream {
            "on-downstream-data"
        } else {
            "on-upstream-data"
        };
        let res = vm.call(name, &mut self.data, false, |vm, s| {
            let f = vm.net();
            if downstream {
                f.downstream.call(s, (r, &data[..], eos))
            } else {
                f.upstream.call(s, (r, &data[..], eos))
            }
        });
        match res {
            Ok(((out,), _)) => {
                if let Some(d) = out.data {
                    *data = bytes::BytesMut::from(&d[..]);
                }
                if out.close {
                    NetworkAction::Close
                } else {
                    NetworkAction::Continue
                }
            }
            Err(e) => self.failure(e),
        }
    }
}

#[async_trait(?Send)]
impl NetworkFilter for ComponentNetworkFilter {
    async fn on_new_connection(&mut self, info: &mut ConnectionInfo) -> NetworkAction {
        self.data.conn = Some(ConnFacts {
            remote: info.remote_address,
            local: info.local_address,
            id: info.connection_id,
        });
        let vm = match self.slot.vm() {
            Ok(vm) => vm,
            Err(e) => return self.failure(Failed(e)),
        };
        let res = vm.call("on-new-connection", &mut self.data, false, |vm, s| {
            let f = vm.net();
            let (r,) = f.new.call(&mut *s, ())?;
            let (keep,) = f.new_connection.call(&mut *s, (r,))?;
            Ok((r, keep))
        });
        match res {
            Ok(((r, keep), _)) => {
                self.cx = Some((vm, r));
                if keep {
                    NetworkAction::Continue
                } else {
                    NetworkAction::Close
                }
            }
            Err(e) => self.failure(e),
        }
    }

    async fn on_read(
        &mut self,
        data: &mut bytes::BytesMut,
        end_stream: bool,
        _info: &mut ConnectionInfo,
    ) -> NetworkAction {
        self.data_hook(true, data, end_stream)
    }

    async fn on_write(
        &mut self,
        data: &mut bytes::BytesMut,
        end_stream: bool,
        _info: &mut ConnectionInfo,
    ) -> NetworkAction {
        self.data_hook(false, data, end_stream)
    }

    fn on_close(&mut self, _info: &ConnectionInfo) {
        if let Some((vm, r)) = self.cx.take() {
            if !self.bypass {
                let _ = vm.call("on-close", &mut self.data, false, |vm, s| {
                    vm.net().close.call(s, (r,))
                });
            }
            vm.drop_resource(r);
        }
    }
}

impl Drop for ComponentNetworkFilter {
    fn drop(&mut self) {
        if let Some((vm, r)) = self.cx.take() {
            vm.drop_resource(r);
        }
    }
}

mod host;
mod wasi;
