//! One VM of a plugin on one worker: its store, the guest's exports, the contexts
//! it runs, and the background task that delivers timers, queue items and the
//! root context's call responses.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use legate_filter_api::{LocalReply, RequestHead, ResponseHead, StreamInfo};
use wasmtime::{Instance, Memory, Store, StoreLimits, StoreLimitsBuilder, TypedFunc};

use super::calls::{self, CallKind, CallResponse, GrpcEvent, OutCall};
use super::shared::{Metric, QueueOwner};
use super::snapshot::Snapshot;
use super::{Plugin, PluginStats, abi};
use crate::config::WasmPlugin;
use crate::upstream::WorkerClusters;

/// Connection facts for network filters' properties.
#[derive(Debug, Clone, Copy)]
pub struct ConnFacts {
    pub remote: std::net::SocketAddr,
    pub local: std::net::SocketAddr,
    pub id: u64,
}

/// The data of the stream a callback runs for. A filter owns it between
/// callbacks and lends it to the store during one.
#[derive(Default)]
pub struct StreamData {
    pub req: Lend<RequestHead>,
    /// Request headers as they left the filter, readable in later callbacks.
    pub req_seen: Snapshot,
    pub resp: Lend<ResponseHead>,
    pub resp_seen: Snapshot,
    pub req_trailers: Lend<http::HeaderMap>,
    pub resp_trailers: Lend<http::HeaderMap>,
    /// The body buffer of the callback, and its proxy-wasm buffer type. Shared
    /// bytes: the guest reads it without a copy; a write copies it if need be.
    pub body: Option<(u32, Bytes)>,
    pub info: Lend<StreamInfo>,
    pub conn: Option<ConnFacts>,
    /// `proxy_set_property` values: filter state of this stream.
    pub properties: HashMap<Vec<u8>, Bytes>,
}

impl StreamData {
    fn unlend(&mut self) {
        self.req.ptr = None;
        self.resp.ptr = None;
        self.req_trailers.ptr = None;
        self.resp_trailers.ptr = None;
        self.info.ptr = None;
    }

    /// Envoy's `clearRouteCache`: the route is matched again after the request
    /// hooks. Envoy does it whenever a Wasm filter edits request headers.
    pub fn clear_route_cache(&mut self) {
        if let Some(i) = self.info.as_mut() {
            i.route_cache_cleared = true;
        }
    }

    /// Clears the data for the next stream, keeping the snapshot buffers.
    pub(super) fn reset(&mut self) {
        let (mut req_seen, mut resp_seen) = (
            std::mem::take(&mut self.req_seen),
            std::mem::take(&mut self.resp_seen),
        );
        req_seen.clear();
        resp_seen.clear();
        *self = StreamData {
            req_seen,
            resp_seen,
            ..StreamData::default()
        };
    }
}

/// Stream data as lent to the store: boxed, so lending is a pointer swap.
pub type Data = Box<StreamData>;

/// A value of the stream's (its head, trailers or info) that guest calls may
/// reach while [`lend`] runs. A pointer, not the value moved into the store
/// and back: for a request's heads and stream info those moves cost more
/// instructions than the callbacks that read them.
pub struct Lend<T> {
    ptr: Option<NonNull<T>>,
    writable: bool,
}

impl<T> Default for Lend<T> {
    fn default() -> Self {
        Lend {
            ptr: None,
            writable: false,
        }
    }
}

impl<T> Lend<T> {
    #[allow(unsafe_code)]
    pub fn as_ref(&self) -> Option<&T> {
        // SAFETY: only `lend` sets the pointer, from a borrow that outlives
        // its closure, and clears it before returning (or unwinding); see there.
        self.ptr.map(|p| unsafe { p.as_ref() })
    }

    /// The value, unless it was lent read-only.
    #[allow(unsafe_code)]
    pub fn as_mut(&mut self) -> Option<&mut T> {
        // SAFETY: as in `as_ref`; a writable pointer came from a `&mut`, and
        // `&mut self` keeps this the only reference made from it.
        self.ptr
            .filter(|_| self.writable)
            .map(|mut p| unsafe { p.as_mut() })
    }

    pub fn is_none(&self) -> bool {
        self.ptr.is_none()
    }

    fn set(&mut self, v: Option<&mut T>) {
        self.writable = true;
        self.ptr = v.map(NonNull::from);
    }
}

/// What a stream lends to the guest calls [`lend`] runs.
#[derive(Default)]
pub struct Loans<'a> {
    pub req: Option<&'a mut RequestHead>,
    pub resp: Option<&'a mut ResponseHead>,
    pub req_trailers: Option<&'a mut http::HeaderMap>,
    pub resp_trailers: Option<&'a mut http::HeaderMap>,
    pub info: Option<&'a mut StreamInfo>,
    /// Stream info the calls may read but not change (`on_log`).
    pub info_seen: Option<&'a StreamInfo>,
}

impl<'a> Loans<'a> {
    /// The same loans for a shorter while, to lend again.
    pub fn reborrow(&mut self) -> Loans<'_> {
        Loans {
            req: self.req.as_deref_mut(),
            resp: self.resp.as_deref_mut(),
            req_trailers: self.req_trailers.as_deref_mut(),
            resp_trailers: self.resp_trailers.as_deref_mut(),
            info: self.info.as_deref_mut(),
            info_seen: self.info_seen,
        }
    }
}

/// Runs `f`, whose guest calls see `loans` through `data`. The pointers are
/// cleared before this returns or unwinds, while the loans' borrows still
/// hold, so no pointer outlives its value: that is what makes [`Lend`]'s
/// dereferences sound.
pub fn lend<R>(data: &mut Data, loans: Loans<'_>, f: impl FnOnce(&mut Data) -> R) -> R {
    let d: &mut StreamData = data;
    d.req.set(loans.req);
    d.resp.set(loans.resp);
    d.req_trailers.set(loans.req_trailers);
    d.resp_trailers.set(loans.resp_trailers);
    match (loans.info, loans.info_seen) {
        (Some(i), _) => d.info.set(Some(i)),
        (None, Some(i)) => {
            d.info.ptr = Some(NonNull::from(i));
            d.info.writable = false;
        }
        (None, None) => d.info.set(None),
    }
    let at: *const StreamData = &**data;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(data)));
    if !std::ptr::eq(at, &**data) {
        // The pointers went with a box `f` kept: nothing could clear them.
        std::process::abort();
    }
    data.unlend();
    r.unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// What callbacks asked of the host, acted on once they return.
#[derive(Default)]
pub struct Effects {
    pub resume: Vec<u32>,
    pub replies: Vec<(u32, Box<LocalReply>)>,
    pub close: Vec<u32>,
    pub calls: Vec<OutCall>,
    pub tick: Option<Duration>,
}

impl Effects {
    fn is_empty(&self) -> bool {
        self.resume.is_empty()
            && self.replies.is_empty()
            && self.close.is_empty()
            && self.calls.is_empty()
            && self.tick.is_none()
    }
}

/// The store's data: what host functions see.
pub struct HostState {
    pub limits: StoreLimits,
    pub plugin: Arc<WasmPlugin>,
    pub memory: Option<Memory>,
    pub malloc: Option<TypedFunc<i32, i32>>,
    /// `proxy_set_effective_context`, or the context being called.
    pub effective: u32,
    pub stream: Data,
    /// The call response being delivered.
    pub call: Option<CallResponse>,
    /// A gRPC message being delivered.
    pub grpc_message: Option<Bytes>,
    /// gRPC stream metadata being delivered: map type 4 (initial) or 5 (trailing).
    pub grpc_meta: Option<(i32, Vec<(Bytes, Bytes)>)>,
    /// The status of a gRPC stream being closed, for `proxy_get_status`.
    pub grpc_status: Option<(u32, Bytes)>,
    /// Open gRPC streams, by token.
    pub streams: HashMap<u32, calls::StreamHandle>,
    pub effects: Effects,
    pub metrics: Vec<Metric>,
    /// A value on its way to the guest, kept for the next one.
    pub scratch: Vec<u8>,
    /// Reused by the guest's header edits (see `abi::HeaderScratch`).
    pub header_scratch: super::abi::HeaderScratch,
    /// Metric ids by (type, name).
    pub metric_ids: HashMap<(u32, String), u32>,
    pub next_token: u32,
    pub queue_owner: Arc<QueueOwner>,
    pub cluster_names: Arc<Vec<String>>,
    /// The callback being run, for error messages.
    pub callback: &'static str,
}

/// An event for one context, handled by whoever owns the context's data.
pub enum Event {
    Call(u32, CallKind, CallResponse),
    Grpc(u32, GrpcEvent),
    Resume,
    Reply(Box<LocalReply>),
    Close,
}

/// A context's pending events.
#[derive(Default)]
pub struct Inbox {
    pub events: RefCell<VecDeque<Event>>,
    pub notify: tokio::sync::Notify,
    /// Calls in flight whose responses will land here.
    pending: Cell<u32>,
}

/// What a stream callback amounted to for its own context.
#[derive(Default)]
pub struct Outcome {
    pub action: u32,
    pub reply: Option<Box<LocalReply>>,
    pub resume: bool,
    pub close: bool,
}

impl Outcome {
    fn merge(&mut self, o: Outcome) {
        self.resume |= o.resume;
        self.close |= o.close;
        if o.reply.is_some() {
            self.reply = o.reply;
        }
    }
}

/// A callback failed: trap, time or memory limit, or a bad return value.
#[derive(Debug)]
pub struct Failed(pub String);

type F1 = TypedFunc<i32, ()>;
type F1R = TypedFunc<i32, i32>;
type F2 = TypedFunc<(i32, i32), ()>;
type F2R = TypedFunc<(i32, i32), i32>;
type F3R = TypedFunc<(i32, i32, i32), i32>;
type F3 = TypedFunc<(i32, i32, i32), ()>;
type F5 = TypedFunc<(i32, i32, i32, i32, i32), ()>;

/// Header hooks take `end_of_stream` from ABI 0.2.0 on.
#[derive(Clone)]
enum HeadersFn {
    V1(F2R),
    V2(F3R),
}

#[derive(Clone, Default)]
struct Exports {
    context_create: Option<F2>,
    vm_start: Option<F2R>,
    configure: Option<F2R>,
    tick: Option<F1>,
    queue_ready: Option<F2>,
    new_connection: Option<F1R>,
    downstream_data: Option<F3R>,
    upstream_data: Option<F3R>,
    downstream_close: Option<F2>,
    upstream_close: Option<F2>,
    request_headers: Option<HeadersFn>,
    request_body: Option<F3R>,
    request_trailers: Option<F2R>,
    response_headers: Option<HeadersFn>,
    response_body: Option<F3R>,
    response_trailers: Option<F2R>,
    http_call_response: Option<F5>,
    grpc_initial: Option<F3>,
    grpc_receive: Option<F3>,
    grpc_trailing: Option<F3>,
    grpc_close: Option<F3>,
    log: Option<F1>,
    done: Option<F1R>,
    delete: Option<F1>,
}

fn exports(store: &mut Store<HostState>, i: &Instance) -> Exports {
    macro_rules! get {
        ($name:literal) => {
            i.get_typed_func(&mut *store, $name).ok()
        };
    }
    let headers = |store: &mut Store<HostState>, name: &str| {
        if let Ok(f) = i.get_typed_func::<(i32, i32, i32), i32>(&mut *store, name) {
            Some(HeadersFn::V2(f))
        } else {
            i.get_typed_func::<(i32, i32), i32>(&mut *store, name)
                .ok()
                .map(HeadersFn::V1)
        }
    };
    Exports {
        context_create: get!("proxy_on_context_create"),
        vm_start: get!("proxy_on_vm_start"),
        configure: get!("proxy_on_configure"),
        tick: get!("proxy_on_tick"),
        queue_ready: get!("proxy_on_queue_ready"),
        new_connection: get!("proxy_on_new_connection"),
        downstream_data: get!("proxy_on_downstream_data"),
        upstream_data: get!("proxy_on_upstream_data"),
        downstream_close: get!("proxy_on_downstream_connection_close"),
        upstream_close: get!("proxy_on_upstream_connection_close"),
        request_headers: headers(store, "proxy_on_request_headers"),
        request_body: get!("proxy_on_request_body"),
        request_trailers: get!("proxy_on_request_trailers"),
        response_headers: headers(store, "proxy_on_response_headers"),
        response_body: get!("proxy_on_response_body"),
        response_trailers: get!("proxy_on_response_trailers"),
        http_call_response: get!("proxy_on_http_call_response"),
        grpc_initial: get!("proxy_on_grpc_receive_initial_metadata"),
        grpc_receive: get!("proxy_on_grpc_receive"),
        grpc_trailing: get!("proxy_on_grpc_receive_trailing_metadata"),
        grpc_close: get!("proxy_on_grpc_close"),
        log: get!("proxy_on_log"),
        done: get!("proxy_on_done"),
        delete: get!("proxy_on_delete"),
    }
}

/// Context ids are small sequential integers, and plugin addresses differ in
/// their high bits: a multiply spreads both well enough, at a fraction of
/// SipHash's cost.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8 | u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn write_usize(&mut self, n: usize) {
        // Addresses end in zero bits (alignment); the rotation brings mixed
        // bits down to where the table takes its index from.
        self.0 = (n as u64)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(32);
    }
}

/// Live contexts, each with its inbox once something was sent to it.
type Contexts = HashMap<u32, Option<Rc<Inbox>>, std::hash::BuildHasherDefault<IdHasher>>;

/// A plugin's VM on one worker.
pub struct Vm {
    store: RefCell<Store<HostState>>,
    f: Exports,
    pub root: u32,
    next_ctx: Cell<u32>,
    contexts: RefCell<Contexts>,
    /// Stream data for callbacks that have none (root context, context creation).
    scratch: RefCell<Data>,
    failed: Cell<bool>,
    deadline_ticks: u64,
    pub stats: Arc<PluginStats>,
    pub plugin: Arc<WasmPlugin>,
    /// Set on worker VMs; the throwaway check VM starts no tasks.
    live: Option<Live>,
}

struct Live {
    clusters: Rc<WorkerClusters>,
    tick: Cell<Option<Duration>>,
    root_inbox: Rc<Inbox>,
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stats.active.dec();
    }
}

impl Vm {
    fn new(plugin: &Plugin, live: bool) -> Result<Rc<Vm>, Failed> {
        let config = plugin.config.clone();
        let engine = super::engine().map_err(Failed)?;
        let queue_owner = Arc::new(QueueOwner {
            notify: tokio::sync::Notify::new(),
            ready: Default::default(),
        });
        let state = HostState {
            limits: StoreLimitsBuilder::new()
                .memory_size(config.limits.max_memory_bytes)
                .trap_on_grow_failure(true)
                .instances(1)
                .build(),
            plugin: config.clone(),
            memory: None,
            malloc: None,
            effective: 1,
            stream: Data::default(),
            call: None,
            grpc_message: None,
            grpc_meta: None,
            grpc_status: None,
            streams: HashMap::new(),
            effects: Effects::default(),
            metrics: Vec::new(),
            metric_ids: HashMap::new(),
            header_scratch: Default::default(),
            scratch: Vec::new(),
            next_token: 1,
            queue_owner: queue_owner.clone(),
            cluster_names: Arc::new(
                plugin
                    .clusters
                    .iter()
                    .map(|c| c.config.name.clone())
                    .collect(),
            ),
            callback: "instantiate",
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limits);
        let deadline_ticks = super::deadline_ticks(&config.limits);
        store.set_epoch_deadline(deadline_ticks);
        let module = config
            .code
            .module()
            .ok_or_else(|| Failed("not a proxy-wasm module".into()))?;
        let linker = abi::linker(module).map_err(|e| Failed(e.to_string()))?;
        let instance = linker
            .instantiate(&mut store, module)
            .map_err(|e| Failed(describe(&e, "instantiate", &config)))?;
        let memory = instance.get_memory(&mut store, "memory");
        if memory.is_none() {
            return Err(Failed("module exports no memory".into()));
        }
        let malloc = instance
            .get_typed_func::<i32, i32>(&mut store, "proxy_on_memory_allocate")
            .or_else(|_| instance.get_typed_func::<i32, i32>(&mut store, "malloc"))
            .map_err(|_| {
                Failed("module exports neither proxy_on_memory_allocate nor malloc".into())
            })?;
        store.data_mut().memory = memory;
        store.data_mut().malloc = Some(malloc);
        // WASI reactors initialise in `_initialize`; commands in `_start`.
        for init in ["_initialize", "_start"] {
            if let Ok(f) = instance.get_typed_func::<(), ()>(&mut store, init) {
                store.data_mut().callback = init;
                f.call(&mut store, ())
                    .map_err(|e| Failed(describe(&e, init, &config)))?;
                break;
            }
        }
        let f = exports(&mut store, &instance);
        plugin.stats.created.inc();
        plugin.stats.active.inc();
        let live = live.then(|| Live {
            clusters: Rc::new(WorkerClusters::new(&plugin.clusters)),
            tick: Cell::new(None),
            root_inbox: Rc::new(Inbox::default()),
        });
        let vm = Rc::new(Vm {
            store: RefCell::new(store),
            f,
            root: 1,
            next_ctx: Cell::new(2),
            contexts: RefCell::new(Contexts::default()),
            scratch: RefCell::new(Data::default()),
            failed: Cell::new(false),
            deadline_ticks,
            stats: plugin.stats.clone(),
            plugin: config.clone(),
            live,
        });
        if let Some(l) = &vm.live {
            vm.contexts
                .borrow_mut()
                .insert(1, Some(l.root_inbox.clone()));
        }
        vm.start_root()?;
        if vm.live.is_some() {
            tokio::task::spawn_local(root_task(
                Rc::downgrade(&vm),
                plugin.retired.subscribe(),
                queue_owner,
            ));
        }
        Ok(vm)
    }

    /// Root context: create, `on_vm_start`, `on_configure`.
    fn start_root(self: &Rc<Self>) -> Result<(), Failed> {
        let root = self.root;
        let r = root as i32;
        if let Some(f) = &self.f.context_create {
            self.call_scratch(root, "proxy_on_context_create", |s| f.call(s, (r, 0)))?;
        }
        let vm_cfg = self.plugin.vm_configuration.len() as i32;
        if let Some(f) = &self.f.vm_start {
            let ok = self.call_scratch(root, "proxy_on_vm_start", |s| f.call(s, (r, vm_cfg)))?;
            if ok == 0 {
                return Err(Failed("on_vm_start returned false".into()));
            }
        }
        let cfg = self.plugin.configuration.len() as i32;
        if let Some(f) = &self.f.configure {
            let ok = self.call_scratch(root, "proxy_on_configure", |s| f.call(s, (r, cfg)))?;
            if ok == 0 {
                return Err(Failed(
                    "on_configure returned false: the plugin rejected its configuration".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether the context waits on something the host will deliver.
    pub fn has_pending(&self, ctx: u32) -> bool {
        self.contexts
            .borrow()
            .get(&ctx)
            .and_then(|i| i.as_ref())
            .is_some_and(|i| i.pending.get() > 0 || !i.events.borrow().is_empty())
    }

    /// A live context's inbox, made on first use; `None` once the context ended.
    pub fn inbox(&self, ctx: u32) -> Option<Rc<Inbox>> {
        let mut c = self.contexts.borrow_mut();
        let slot = c.get_mut(&ctx)?;
        Some(slot.get_or_insert_with(Default::default).clone())
    }

    pub fn is_failed(&self) -> bool {
        self.failed.get()
    }

    /// Runs one guest call for context `ctx` with `data` lent to the store, then
    /// acts on the effects: the context's own (resume, reply, close) come back,
    /// the others go to their contexts' inboxes and calls start.
    fn call<R>(
        &self,
        ctx: u32,
        callback: &'static str,
        data: &mut Data,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<(R, Outcome), Failed> {
        let (r, fx) = {
            let Ok(mut store) = self.store.try_borrow_mut() else {
                return Err(Failed("re-entrant call into the VM".into()));
            };
            if self.failed.get() {
                return Err(Failed("the VM has failed".into()));
            }
            store.set_epoch_deadline(self.deadline_ticks);
            let st = store.data_mut();
            std::mem::swap(&mut st.stream, data);
            st.callback = callback;
            st.effective = ctx;
            // A panicking host function still hands the data back (see `lend`).
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut store)));
            let st = store.data_mut();
            std::mem::swap(&mut st.stream, data);
            let r = r.unwrap_or_else(|p| std::panic::resume_unwind(p));
            // Most callbacks ask nothing of the host: their effects stay put.
            let fx = (!st.effects.is_empty()).then(|| std::mem::take(&mut st.effects));
            (r, fx)
        };
        match r {
            Ok(r) => Ok((
                r,
                fx.map_or_else(Outcome::default, |fx| self.dispatch(fx, ctx)),
            )),
            Err(e) => {
                let why = describe(&e, callback, &self.plugin);
                self.fail(&why);
                Err(Failed(why))
            }
        }
    }

    /// A call with no stream data (root context, context creation).
    fn call_scratch<R>(
        &self,
        ctx: u32,
        callback: &'static str,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<R>,
    ) -> Result<R, Failed> {
        let Ok(mut scratch) = self.scratch.try_borrow_mut() else {
            return Err(Failed("re-entrant call into the VM".into()));
        };
        self.call(ctx, callback, &mut scratch, f).map(|(r, _)| r)
    }

    fn fail(&self, why: &str) {
        if !self.failed.replace(true) {
            if let Some(l) = &self.live {
                l.root_inbox.notify.notify_one();
            }
            self.stats.vm_failed.inc();
            tracing::error!(plugin = %self.plugin.name, "Wasm VM failed: {why}");
        }
    }

    /// Acts on a callback's effects; returns those for context `own`.
    fn dispatch(&self, fx: Effects, own: u32) -> Outcome {
        let mut out = Outcome::default();
        let Effects {
            resume,
            replies,
            close,
            calls,
            tick,
        } = fx;
        let push = |ctx: u32, e: Event| {
            if let Some(i) = self.inbox(ctx) {
                i.events.borrow_mut().push_back(e);
                i.notify.notify_one();
            }
        };
        for c in resume {
            if c == own {
                out.resume = true;
            } else {
                push(c, Event::Resume);
            }
        }
        for (c, r) in replies {
            if c == own {
                out.reply = Some(r);
            } else {
                push(c, Event::Reply(r));
            }
        }
        for c in close {
            if c == own {
                out.close = true;
            } else {
                push(c, Event::Close);
            }
        }
        let Some(live) = &self.live else { return out };
        if let Some(t) = tick {
            live.tick.set((!t.is_zero()).then_some(t));
            live.root_inbox.notify.notify_one();
        }
        for call in calls {
            let Some(inbox) = self.inbox(call.context) else {
                continue;
            };
            let clusters = live.clusters.clone();
            inbox.pending.set(inbox.pending.get() + 1);
            if call.kind == CallKind::GrpcStream {
                tokio::task::spawn_local(async move {
                    let token = call.token;
                    calls::run_stream(call, &clusters, |e| {
                        inbox.events.borrow_mut().push_back(Event::Grpc(token, e));
                        inbox.notify.notify_one();
                    })
                    .await;
                    inbox.pending.set(inbox.pending.get().saturating_sub(1));
                    inbox.notify.notify_one();
                });
                continue;
            }
            tokio::task::spawn_local(async move {
                let resp = calls::run(&call, &clusters).await;
                inbox.pending.set(inbox.pending.get().saturating_sub(1));
                inbox
                    .events
                    .borrow_mut()
                    .push_back(Event::Call(call.token, call.kind, resp));
                inbox.notify.notify_one();
            });
        }
        out
    }

    /// A new stream or connection context under the root.
    pub fn new_context(&self) -> Result<u32, Failed> {
        let id = self.next_ctx.get();
        self.next_ctx.set(id.wrapping_add(1).max(2));
        self.contexts.borrow_mut().insert(id, None);
        if let Some(f) = &self.f.context_create {
            let root = self.root as i32;
            self.call_scratch(id, "proxy_on_context_create", |s| {
                f.call(s, (id as i32, root))
            })?;
        }
        Ok(id)
    }

    /// A stream callback returning an action, with the context's own effects.
    fn stream_call(
        &self,
        ctx: u32,
        callback: &'static str,
        data: &mut Data,
        f: impl FnOnce(&mut Store<HostState>) -> wasmtime::Result<i32>,
    ) -> Result<Outcome, Failed> {
        let (action, mut out) = self.call(ctx, callback, data, f)?;
        out.action = action as u32;
        // Envoy's filter statuses go up to 4; anything else is a broken guest.
        if out.action > 4 {
            let why = format!("{callback} returned an invalid action {action}");
            self.fail(&why);
            return Err(Failed(why));
        }
        Ok(out)
    }

    /// Delivers the context's pending events with `data` lent to the VM, and
    /// merges what they asked of the context into `out`. Returns whether any
    /// event was handled.
    pub fn drain(&self, ctx: u32, data: &mut Data, out: &mut Outcome) -> Result<bool, Failed> {
        let inbox = match self.contexts.borrow().get(&ctx) {
            Some(Some(i)) => i.clone(),
            _ => return Ok(false),
        };
        let mut any = false;
        loop {
            let next = inbox.events.borrow_mut().pop_front();
            let Some(e) = next else { return Ok(any) };
            any = true;
            let got = match e {
                Event::Call(token, kind, resp) => self.deliver(ctx, token, kind, resp, data)?,
                Event::Grpc(token, g) => self.grpc(ctx, token, g, data)?,
                Event::Resume => Outcome {
                    resume: true,
                    ..Default::default()
                },
                Event::Reply(r) => Outcome {
                    reply: Some(r),
                    ..Default::default()
                },
                Event::Close => Outcome {
                    close: true,
                    ..Default::default()
                },
            };
            out.merge(got);
        }
    }

    pub fn headers(
        &self,
        ctx: u32,
        request: bool,
        n: usize,
        eos: bool,
        data: &mut Data,
    ) -> Result<Outcome, Failed> {
        let (f, name) = if request {
            (&self.f.request_headers, "proxy_on_request_headers")
        } else {
            (&self.f.response_headers, "proxy_on_response_headers")
        };
        let (c, n, e) = (ctx as i32, n as i32, eos as i32);
        match f {
            Some(HeadersFn::V2(f)) => self.stream_call(ctx, name, data, |s| f.call(s, (c, n, e))),
            Some(HeadersFn::V1(f)) => self.stream_call(ctx, name, data, |s| f.call(s, (c, n))),
            None => Ok(Outcome::default()),
        }
    }

    pub fn body(
        &self,
        ctx: u32,
        request: bool,
        size: usize,
        eos: bool,
        data: &mut Data,
    ) -> Result<Outcome, Failed> {
        let (f, name) = if request {
            (&self.f.request_body, "proxy_on_request_body")
        } else {
            (&self.f.response_body, "proxy_on_response_body")
        };
        match f {
            Some(f) => self.stream_call(ctx, name, data, |s| {
                f.call(s, (ctx as i32, size as i32, eos as i32))
            }),
            None => Ok(Outcome::default()),
        }
    }

    pub fn trailers(
        &self,
        ctx: u32,
        request: bool,
        n: usize,
        data: &mut Data,
    ) -> Result<Outcome, Failed> {
        let (f, name) = if request {
            (&self.f.request_trailers, "proxy_on_request_trailers")
        } else {
            (&self.f.response_trailers, "proxy_on_response_trailers")
        };
        match f {
            Some(f) => self.stream_call(ctx, name, data, |s| f.call(s, (ctx as i32, n as i32))),
            None => Ok(Outcome::default()),
        }
    }

    pub fn new_connection(&self, ctx: u32, data: &mut Data) -> Result<Outcome, Failed> {
        match &self.f.new_connection {
            Some(f) => self.stream_call(ctx, "proxy_on_new_connection", data, |s| {
                f.call(s, ctx as i32)
            }),
            None => Ok(Outcome::default()),
        }
    }

    pub fn data(
        &self,
        ctx: u32,
        downstream: bool,
        size: usize,
        eos: bool,
        data: &mut Data,
    ) -> Result<Outcome, Failed> {
        let (f, name) = if downstream {
            (&self.f.downstream_data, "proxy_on_downstream_data")
        } else {
            (&self.f.upstream_data, "proxy_on_upstream_data")
        };
        match f {
            Some(f) => self.stream_call(ctx, name, data, |s| {
                f.call(s, (ctx as i32, size as i32, eos as i32))
            }),
            None => Ok(Outcome::default()),
        }
    }

    pub fn connection_closed(&self, ctx: u32, data: &mut Data) {
        // Envoy reports the downstream close with peer type "remote" (2).
        if let Some(f) = &self.f.downstream_close {
            let _ = self.call(ctx, "proxy_on_downstream_connection_close", data, |s| {
                f.call(s, (ctx as i32, 2))
            });
        }
        if let Some(f) = &self.f.upstream_close {
            let _ = self.call(ctx, "proxy_on_upstream_connection_close", data, |s| {
                f.call(s, (ctx as i32, 1))
            });
        }
    }

    /// Delivers a call response to the context whose data is `data`.
    pub fn deliver(
        &self,
        ctx: u32,
        token: u32,
        kind: CallKind,
        resp: CallResponse,
        data: &mut Data,
    ) -> Result<Outcome, Failed> {
        match kind {
            CallKind::Http => {
                let Some(f) = &self.f.http_call_response else {
                    return Ok(Outcome::default());
                };
                let (nh, nb, nt) = (resp.headers.len(), resp.body.len(), resp.trailers.len());
                self.set_call(Some(resp));
                let r = self.call(ctx, "proxy_on_http_call_response", data, |s| {
                    f.call(
                        s,
                        (ctx as i32, token as i32, nh as i32, nb as i32, nt as i32),
                    )
                });
                self.set_call(None);
                r.map(|(_, o)| o)
            }
            CallKind::Grpc | CallKind::GrpcStream => {
                // Unary: a response message on success, a close on failure,
                // never both (the SDKs forget the token after either).
                let status = resp.grpc_status.clone();
                let message = calls::grpc_messages(&resp.body).into_iter().next();
                self.set_call(Some(resp));
                let r = if status.0 == 0 {
                    self.grpc(
                        ctx,
                        token,
                        GrpcEvent::Message(message.unwrap_or_default()),
                        data,
                    )
                } else {
                    self.grpc(ctx, token, GrpcEvent::Close(status.0, status.1), data)
                };
                self.set_call(None);
                r
            }
        }
    }

    /// Delivers one gRPC event; events of a cancelled stream are dropped.
    pub fn grpc(
        &self,
        ctx: u32,
        token: u32,
        e: GrpcEvent,
        data: &mut Data,
    ) -> Result<Outcome, Failed> {
        {
            let Ok(mut s) = self.store.try_borrow_mut() else {
                return Err(Failed("re-entrant call into the VM".into()));
            };
            let st = s.data_mut();
            let is_stream = st.streams.contains_key(&token);
            let unary = st.call.is_some();
            if !is_stream && !unary {
                return Ok(Outcome::default());
            }
            match &e {
                GrpcEvent::Initial(h) => st.grpc_meta = Some((4, h.clone())),
                GrpcEvent::Trailers(t) => st.grpc_meta = Some((5, t.clone())),
                GrpcEvent::Message(m) => st.grpc_message = Some(m.clone()),
                GrpcEvent::Close(code, msg) => {
                    st.grpc_status = Some((*code, msg.clone()));
                    st.streams.remove(&token);
                }
            }
        }
        let (t, c) = (token as i32, ctx as i32);
        let r = match e {
            GrpcEvent::Initial(h) => match &self.f.grpc_initial {
                Some(f) => self.call(ctx, "proxy_on_grpc_receive_initial_metadata", data, |s| {
                    f.call(s, (c, t, h.len() as i32))
                }),
                None => Ok(((), Outcome::default())),
            },
            GrpcEvent::Message(m) => match &self.f.grpc_receive {
                Some(f) => self.call(ctx, "proxy_on_grpc_receive", data, |s| {
                    f.call(s, (c, t, m.len() as i32))
                }),
                None => Ok(((), Outcome::default())),
            },
            GrpcEvent::Trailers(tr) => match &self.f.grpc_trailing {
                Some(f) => self.call(ctx, "proxy_on_grpc_receive_trailing_metadata", data, |s| {
                    f.call(s, (c, t, tr.len() as i32))
                }),
                None => Ok(((), Outcome::default())),
            },
            GrpcEvent::Close(code, _) => match &self.f.grpc_close {
                Some(f) => self.call(ctx, "proxy_on_grpc_close", data, |s| {
                    f.call(s, (c, t, code as i32))
                }),
                None => Ok(((), Outcome::default())),
            },
        };
        if let Ok(mut s) = self.store.try_borrow_mut() {
            let st = s.data_mut();
            st.grpc_meta = None;
            st.grpc_message = None;
            st.grpc_status = None;
        }
        r.map(|(_, o)| o)
    }

    fn set_call(&self, resp: Option<CallResponse>) {
        if let Ok(mut s) = self.store.try_borrow_mut() {
            s.data_mut().call = resp;
        }
    }

    /// `on_log`, `on_done`, `on_delete`, and the context is forgotten.
    pub fn finish(&self, ctx: u32, log: bool, data: &mut Data) {
        if !self.failed.get() {
            let c = ctx as i32;
            if log && let Some(f) = &self.f.log {
                let _ = self.call(ctx, "proxy_on_log", data, |s| f.call(s, c));
            }
            if let Some(f) = &self.f.done {
                let _ = self.call(ctx, "proxy_on_done", data, |s| f.call(s, c));
            }
            if let Some(f) = &self.f.delete {
                let _ = self.call(ctx, "proxy_on_delete", data, |s| f.call(s, c));
            }
        }
        self.contexts.borrow_mut().remove(&ctx);
    }

    fn tick(&self) {
        if let Some(f) = &self.f.tick {
            let root = self.root;
            let _ = self.call_scratch(root, "proxy_on_tick", |s| f.call(s, root as i32));
        }
    }

    fn queue_ready(&self, id: u32) {
        if let Some(f) = &self.f.queue_ready {
            let root = self.root;
            let _ = self.call_scratch(root, "proxy_on_queue_ready", |s| {
                f.call(s, (root as i32, id as i32))
            });
        }
    }

    /// Delivers an event to the root context.
    fn root_event(&self, e: Event) {
        let Ok(mut scratch) = self.scratch.try_borrow_mut() else {
            return;
        };
        let _ = match e {
            Event::Call(token, kind, resp) => {
                self.deliver(self.root, token, kind, resp, &mut scratch)
            }
            Event::Grpc(token, g) => self.grpc(self.root, token, g, &mut scratch),
            _ => Ok(Outcome::default()),
        };
    }
}

/// Delivers the root context's timers, queue items and call responses. It holds
/// the VM weakly, so a failed or retired VM ends it.
async fn root_task(
    vm: std::rc::Weak<Vm>,
    mut retired: tokio::sync::watch::Receiver<bool>,
    queues: Arc<QueueOwner>,
) {
    let period = |v: &Vm| v.live.as_ref().and_then(|l| l.tick.get());
    let Some(inbox) = vm
        .upgrade()
        .and_then(|v| v.live.as_ref().map(|l| l.root_inbox.clone()))
    else {
        return;
    };
    let mut next_tick: Option<Instant> = None;
    loop {
        {
            let Some(v) = vm.upgrade() else { return };
            if v.is_failed() {
                return;
            }
            if next_tick.is_none() {
                next_tick = period(&v).map(|t| Instant::now() + t);
            }
        }
        let sleep = async {
            match next_tick {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = retired.wait_for(|r| *r) => return,
            _ = sleep => {
                let Some(v) = vm.upgrade() else { return };
                v.tick();
                next_tick = period(&v).map(|t| Instant::now() + t);
            }
            _ = inbox.notify.notified() => {
                let Some(v) = vm.upgrade() else { return };
                let events: Vec<Event> = inbox.events.borrow_mut().drain(..).collect();
                for e in events {
                    v.root_event(e);
                }
                // The period may have changed.
                next_tick = period(&v).map(|t| Instant::now() + t);
            }
            _ = queues.notify.notified() => {
                let Some(v) = vm.upgrade() else { return };
                let ready = std::mem::take(&mut *queues.ready.lock().unwrap_or_else(|e| e.into_inner()));
                for id in ready {
                    v.queue_ready(id);
                }
            }
        }
    }
}

/// Why a guest call failed, in a line.
pub(super) fn describe(e: &wasmtime::Error, callback: &str, plugin: &WasmPlugin) -> String {
    let what = if let Some(t) = e.downcast_ref::<wasmtime::Trap>() {
        match t {
            wasmtime::Trap::Interrupt => format!(
                "exceeded the callback time limit of {:?}",
                plugin.limits.max_callback_duration
            ),
            wasmtime::Trap::UnreachableCodeReached => {
                "trapped: unreachable (a panic or abort in the filter)".to_string()
            }
            other => format!("trapped: {other}"),
        }
    } else {
        let s = format!("{e:#}");
        if s.contains("memory") && s.contains("grow")
            || s.contains("forcing trap when growing memory")
        {
            format!(
                "exceeded the memory limit of {} bytes",
                plugin.limits.max_memory_bytes
            )
        } else {
            // The root cause: wasmtime wraps host errors in backtrace context.
            e.root_cause().to_string()
        }
    };
    format!("{callback}: {what}")
}

impl super::slot::Instance for Vm {
    fn build(plugin: &Plugin) -> Result<Rc<Vm>, String> {
        Vm::new(plugin, true).map_err(|Failed(e)| e)
    }

    fn is_failed(&self) -> bool {
        Vm::is_failed(self)
    }
}

/// Checks a plugin on a throwaway VM: instantiation, `on_vm_start`, `on_configure`.
pub fn check(plugin: &Plugin) -> Result<(), String> {
    Vm::new(plugin, false).map(|_| ()).map_err(|Failed(e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head() -> RequestHead {
        RequestHead {
            method: http::Method::GET,
            uri: http::Uri::from_static("/"),
            version: http::Version::HTTP_11,
            headers: http::HeaderMap::new(),
        }
    }

    #[test]
    fn loans_end_with_lend_even_when_it_panics() {
        let mut data = Data::default();
        let mut h = head();
        lend(
            &mut data,
            Loans {
                req: Some(&mut h),
                ..Loans::default()
            },
            |d| {
                let lent = d.req.as_mut().expect("lent");
                lent.headers.insert("x-edited", "1".parse().unwrap());
            },
        );
        assert!(data.req.is_none());
        assert_eq!(h.headers["x-edited"], "1");

        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lend(
                &mut data,
                Loans {
                    req: Some(&mut h),
                    ..Loans::default()
                },
                |_| panic!("a host bug"),
            )
        }));
        assert!(unwound.is_err());
        assert!(data.req.is_none());

        let info = StreamInfo::new(
            std::time::SystemTime::now(),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            7,
        );
        lend(
            &mut data,
            Loans {
                info_seen: Some(&info),
                ..Loans::default()
            },
            |d| {
                assert_eq!(d.info.as_ref().map(|i| i.connection_id), Some(7));
                assert!(d.info.as_mut().is_none(), "lent read-only");
            },
        );
        assert!(data.info.is_none());
    }
}
