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
use wasmtime::component::{
    Component, ComponentType, Instance as CInstance, Lift, Linker, Lower, Resource, ResourceType,
    TypedFunc,
};
use wasmtime::{Store, StoreLimits, StoreLimitsBuilder};

use super::Plugin;
use super::calls::{self, CallFailure, CallKind, CallResponse, OutCall};
use super::shared::{self, Metric};
use super::slot::{Instance, Slot, slot};
use super::vm::{ConnFacts, Data, describe};
use crate::config::WasmPlugin;
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
const HOST_INTERFACES: [&str; 7] = [
    "types",
    "message",
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
        let component = super::cache::component(engine, bytes).map_err(|e| {
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
    /// Reused by the guest's header edits (see `abi::HeaderScratch`).
    header_scratch: super::abi::HeaderScratch,
    /// Reused buffers for header edits read from guest memory.
    scratch: (Vec<u8>, Vec<u8>),
    /// The reply the running hook passed to `message.respond`.
    reply: Option<WLocalReply>,
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
#[component(record)]
struct WLocalReply {
    status: u16,
    headers: Vec<WHeader>,
    body: Vec<u8>,
    #[component(name = "grpc-status")]
    grpc_status: Option<u32>,
}

/// `types.action` as the guest returns it (only ever lifted).
#[allow(dead_code)]
#[derive(ComponentType, Lift, Clone, Copy)]
#[component(enum)]
#[repr(u8)]
enum WActionKind {
    #[component(name = "continue")]
    Continue,
    #[component(name = "respond")]
    Respond,
    #[component(name = "wait-for-body")]
    WaitForBody,
}

/// A hook's decision, with the reply it gave `message.respond`.
enum WAction {
    Continue,
    Respond(WLocalReply),
    WaitForBody,
}

#[derive(ComponentType, Lift)]
#[component(variant)]
enum WPoll {
    #[component(name = "ready")]
    Ready(WActionKind),
    #[component(name = "pending")]
    Pending,
    #[component(name = "unimplemented")]
    Unimplemented,
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

/// The typed exports of an `http-handler`. Streams are named by the numbers
/// the guest gives them.
struct HttpFns {
    new: TypedFunc<(), (u32,)>,
    start: TypedFunc<(bool,), ((u32, WPoll),)>,
    request_headers: TypedFunc<(u32, bool), (WPoll,)>,
    request_body: TypedFunc<(u32, u64, bool), (WPoll,)>,
    request_trailers: TypedFunc<(u32,), (WPoll,)>,
    response_headers: TypedFunc<(u32, bool), (WPoll,)>,
    response_body: TypedFunc<(u32, u64, bool), (WPoll,)>,
    response_trailers: TypedFunc<(u32,), (WPoll,)>,
    resume: TypedFunc<(u32, u32, Result<WResponse<'static>, WCallError>), (WPoll,)>,
    drop: TypedFunc<(u32,), ()>,
}

/// The typed exports of a `network-handler`, connections named as streams are.
struct NetFns {
    new: TypedFunc<(), (u32,)>,
    new_connection: TypedFunc<(u32,), (bool,)>,
    downstream: TypedFunc<(u32, &'static [u8], bool), (WDataOutcome,)>,
    upstream: TypedFunc<(u32, &'static [u8], bool), (WDataOutcome,)>,
    close: TypedFunc<(u32,), ()>,
    drop: TypedFunc<(u32,), ()>,
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
    /// Hooks the filter said it does not implement, by bit: skipped.
    unimplemented: Cell<u8>,
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
            header_scratch: Default::default(),
            scratch: Default::default(),
            reply: None,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        let deadline_ticks = super::deadline_ticks(&config.limits);
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
                new: typed(s, &instance, &iface, "new-stream")?,
                start: typed(s, &instance, &iface, "start")?,
                request_headers: typed(s, &instance, &iface, "on-request-headers")?,
                request_body: typed(s, &instance, &iface, "on-request-body")?,
                request_trailers: typed(s, &instance, &iface, "on-request-trailers")?,
                response_headers: typed(s, &instance, &iface, "on-response-headers")?,
                response_body: typed(s, &instance, &iface, "on-response-body")?,
                response_trailers: typed(s, &instance, &iface, "on-response-trailers")?,
                resume: typed(s, &instance, &iface, "resume")?,
                drop: typed(s, &instance, &iface, "drop-stream")?,
            }),
            World::NetworkFilter => Fns::Network(NetFns {
                new: typed(s, &instance, &iface, "new-connection")?,
                new_connection: typed(s, &instance, &iface, "on-new-connection")?,
                downstream: typed(s, &instance, &iface, "on-downstream-data")?,
                upstream: typed(s, &instance, &iface, "on-upstream-data")?,
                close: typed(s, &instance, &iface, "on-close")?,
                drop: typed(s, &instance, &iface, "drop-connection")?,
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
            unimplemented: Cell::new(0),
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
        // A panicking host function still hands the data back (see `vm::lend`).
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self, &mut store)));
        let st = store.data_mut();
        std::mem::swap(&mut st.stream, data);
        let r = r.unwrap_or_else(|p| std::panic::resume_unwind(p));
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

    /// The `http-handler` exports (the world was checked at config load).
    fn http(&self) -> wasmtime::Result<&HttpFns> {
        match &self.fns {
            Fns::Http(f) => Ok(f),
            Fns::Network(_) => Err(wasmtime::Error::msg("not an http-handler component")),
        }
    }

    /// The `network-handler` exports (the world was checked at config load).
    fn net(&self) -> wasmtime::Result<&NetFns> {
        match &self.fns {
            Fns::Network(f) => Ok(f),
            Fns::Http(_) => Err(wasmtime::Error::msg("not a network-handler component")),
        }
    }

    /// What a hook that returned `kind` decided; `respond` takes the reply it
    /// passed to `message.respond` (a 500 if it passed none).
    fn decide(&self, kind: WActionKind) -> WAction {
        let reply = self.store.borrow_mut().data_mut().reply.take();
        match kind {
            WActionKind::Continue => WAction::Continue,
            WActionKind::WaitForBody => WAction::WaitForBody,
            WActionKind::Respond => WAction::Respond(reply.unwrap_or(WLocalReply {
                status: 500,
                headers: Vec::new(),
                body: b"the filter answered without a reply\n".to_vec(),
                grpc_status: None,
            })),
        }
    }

    /// Tells the guest a stream or connection ended, so that it drops it
    /// (`on_done` / `Drop` run there). A failed instance is discarded anyway.
    fn drop_item(&self, n: u32, data: &mut Data) {
        if self.failed.get() {
            return;
        }
        let (name, drop) = match &self.fns {
            Fns::Http(f) => ("drop-stream", &f.drop),
            Fns::Network(f) => ("drop-connection", &f.drop),
        };
        let _ = self.call(name, data, false, |_, s| drop.call(s, (n,)));
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

impl Inbox {
    /// The next finished call; `None` if none is in flight.
    async fn next(&self) -> Option<(u32, CallResponse)> {
        loop {
            if let Some(d) = self.done.borrow_mut().pop_front() {
                self.pending.set(self.pending.get() - 1);
                return Some(d);
            }
            if self.pending.get() == 0 {
                return None;
            }
            self.notify.notified().await;
        }
    }
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
    cx: Option<(Rc<CVm>, u32)>,
    bypass: bool,
    data: Data,
}

impl ComponentNetworkFilter {
    fn failure(&mut self, Failed(why): Failed) -> NetworkAction {
        if self.plugin.fails_open(&why) {
            self.bypass = true;
            NetworkAction::Continue
        } else {
            NetworkAction::Close
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
        let Some((vm, id)) = self.cx.clone() else {
            return NetworkAction::Continue;
        };
        let name = if downstream {
            "on-downstream-data"
        } else {
            "on-upstream-data"
        };
        let res = vm.call(name, &mut self.data, false, |vm, s| {
            let f = vm.net()?;
            if downstream {
                f.downstream.call(s, (id, &data[..], eos))
            } else {
                f.upstream.call(s, (id, &data[..], eos))
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
            let f = vm.net()?;
            let (id,) = f.new.call(&mut *s, ())?;
            let (keep,) = f.new_connection.call(&mut *s, (id,))?;
            Ok((id, keep))
        });
        match res {
            Ok(((id, keep), _)) => {
                self.cx = Some((vm, id));
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
        if let Some((vm, id)) = self.cx.take() {
            if !self.bypass {
                let _ = vm.call("on-close", &mut self.data, false, |vm, s| {
                    vm.net()?.close.call(s, (id,))
                });
            }
            vm.drop_item(id, &mut self.data);
        }
    }
}

impl Drop for ComponentNetworkFilter {
    fn drop(&mut self) {
        if let Some((vm, id)) = self.cx.take() {
            vm.drop_item(id, &mut self.data);
        }
    }
}

mod host;
mod http;
mod wasi;

pub use http::ComponentHttpFactory;
