//! Wasm filters: one wasmtime engine per process, modules compiled once per code
//! hash, and per worker one VM per plugin running the proxy-wasm ABI.
//!
//! - [`Code`]: a compiled module and the ABI version it exports.
//! - [`Plugin`]: a plugin of one config version; its per-worker VMs live in
//!   [`vm`], its HTTP and network filters in [`http`] and [`network`].
//! - [`abi`]: the host functions; [`shared`]: shared data, queues and metrics that
//!   every worker sees.

mod abi;
pub mod cache;
mod calls;
pub mod component;
pub mod http;
pub mod network;
mod properties;
mod shared;
mod slot;
mod snapshot;
mod vm;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use wasmtime::{Config, Engine, Module};

use crate::config::WasmPlugin;
use crate::stats::{Counter, Gauge, store};
use crate::upstream::ClusterManager;

/// How often the epoch advances: the resolution of the per-callback time limit.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The process's engine; its epoch ticker starts with it.
pub(crate) fn engine() -> Result<&'static Engine, String> {
    static ENGINE: OnceLock<Result<Engine, String>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let mut c = Config::new();
            c.epoch_interruption(true);
            c.cranelift_opt_level(wasmtime::OptLevel::Speed);
            let engine = Engine::new(&c).map_err(|e| format!("cannot start wasmtime: {e}"))?;
            let ticker = engine.clone();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(EPOCH_TICK);
                        ticker.increment_epoch();
                    }
                })
                .map_err(|e| format!("cannot start the Wasm epoch thread: {e}"))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// Epoch ticks a callback may run: its time limit in ticks, at least one, plus
/// the tick already under way when it starts.
pub(crate) fn deadline_ticks(limits: &crate::config::WasmLimits) -> u64 {
    let ticks = limits.max_callback_duration.as_millis() as u64 / EPOCH_TICK.as_millis() as u64;
    ticks.max(1) + 1
}

/// The proxy-wasm ABI version a module was built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    V0_1_0,
    V0_2_0,
    V0_2_1,
}

/// Where a plugin runs: the config field that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `envoy.filters.http.wasm`.
    Http,
    /// `envoy.filters.network.wasm`.
    Network,
    /// `envoy.bootstrap.wasm`.
    Service,
}

/// Compiled code, shared by every plugin and worker that uses the same bytes:
/// a proxy-wasm core module or a `legate:filter` component.
pub struct Code {
    pub(crate) kind: CodeKind,
    pub hash: u64,
}

pub(crate) enum CodeKind {
    Module { module: Module, abi: AbiVersion },
    Component(Box<component::Compiled>),
}

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            CodeKind::Module { abi, .. } => write!(f, "Code({:016x}, {abi:?})", self.hash),
            CodeKind::Component(c) => write!(f, "Code({:016x}, {:?})", self.hash, c.world),
        }
    }
}

impl Code {
    /// Compiles a module or component, or returns the one already compiled from
    /// the same bytes.
    pub fn compile(bytes: &[u8]) -> Result<Arc<Code>, String> {
        static CACHE: OnceLock<Mutex<HashMap<u64, Weak<Code>>>> = OnceLock::new();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        let hash = h.finish();
        let cache = CACHE.get_or_init(Default::default);
        if let Some(c) = cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&hash)
            .and_then(Weak::upgrade)
        {
            return Ok(c);
        }
        let kind = if is_component(bytes) {
            CodeKind::Component(Box::new(component::Compiled::new(bytes)?))
        } else {
            let module = cache::module(engine()?, bytes).map_err(|e| {
                format!(
                    "invalid Wasm module: {}",
                    e.root_cause().to_string().lines().next().unwrap_or("")
                )
            })?;
            let abi = abi_version(&module)?;
            abi::check_imports(&module)?;
            CodeKind::Module { module, abi }
        };
        let code = Arc::new(Code { kind, hash });
        let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
        c.retain(|_, w| w.strong_count() > 0);
        c.insert(hash, Arc::downgrade(&code));
        Ok(code)
    }

    /// Whether this code can serve as `role`: components must be of the
    /// matching world, and services are proxy-wasm modules.
    pub fn fits(&self, role: Role) -> Result<(), String> {
        let Some(c) = self.component() else {
            return Ok(());
        };
        let want = match role {
            Role::Http => component::World::HttpFilter,
            Role::Network => component::World::NetworkFilter,
            Role::Service => {
                return Err(
                    "envoy.bootstrap.wasm services run proxy-wasm modules; this is a legate:filter component"
                        .into(),
                );
            }
        };
        if c.world != want {
            return Err(format!(
                "the component was built for world {}; this filter needs world {}",
                c.world.qualified(),
                want.qualified()
            ));
        }
        Ok(())
    }

    /// The proxy-wasm module, if this is one.
    pub(crate) fn module(&self) -> Option<&Module> {
        match &self.kind {
            CodeKind::Module { module, .. } => Some(module),
            CodeKind::Component(_) => None,
        }
    }

    /// The component, if this is one.
    pub(crate) fn component(&self) -> Option<&component::Compiled> {
        match &self.kind {
            CodeKind::Component(c) => Some(c),
            CodeKind::Module { .. } => None,
        }
    }
}

/// A component's preamble: the Wasm magic, then a version and layer other than a
/// core module's `1, 0, 0, 0`.
fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

fn abi_version(module: &Module) -> Result<AbiVersion, String> {
    let mut found = None;
    for e in module.exports() {
        let v = match e.name() {
            "proxy_abi_version_0_2_1" => AbiVersion::V0_2_1,
            "proxy_abi_version_0_2_0" => AbiVersion::V0_2_0,
            "proxy_abi_version_0_1_0" => AbiVersion::V0_1_0,
            _ => continue,
        };
        if found.is_some_and(|f| f != v) {
            return Err("module exports more than one proxy_abi_version_* function".into());
        }
        found = Some(v);
    }
    found.ok_or_else(|| {
        "module exports no proxy_abi_version_0_1_0/0_2_0/0_2_1 function: it is not a proxy-wasm module"
            .into()
    })
}

/// Envoy's `wasm.<runtime>.*` and `wasm.<plugin>.*` stats, plus Legate's
/// failure counters under the same plugin prefix.
pub(crate) struct PluginStats {
    /// VMs created (`wasm.envoy.wasm.runtime.<rt>.created`).
    pub created: Counter,
    /// VMs alive on all workers (`...active`).
    pub active: Gauge,
    /// VM rebuilds tried after a failure (`wasm.<plugin>.vm_reload`).
    pub vm_reload: Counter,
    pub vm_reload_success: Counter,
    pub vm_reload_failure: Counter,
    /// Streams that found the VM waiting out its rebuild backoff.
    pub vm_reload_backoff: Counter,
    /// Legate: callbacks that trapped, ran out of time or memory, or misbehaved.
    pub vm_failed: Counter,
    /// Legate: streams answered 503 (or connections closed) by the policy.
    pub fail_closed: Counter,
    /// Legate: streams passed through by FAIL_OPEN.
    pub fail_open: Counter,
}

impl PluginStats {
    fn new(runtime: &str, plugin: &str) -> PluginStats {
        let s = store();
        let rt = if runtime.is_empty() {
            "envoy.wasm.runtime.v8"
        } else {
            runtime
        };
        let c = |n: &str| s.counter(format!("wasm.{plugin}.{n}"));
        PluginStats {
            created: s.counter(format!("wasm.{rt}.created")),
            active: s.gauge(format!("wasm.{rt}.active")),
            vm_reload: c("vm_reload"),
            vm_reload_success: c("vm_reload_success"),
            vm_reload_failure: c("vm_reload_failure"),
            vm_reload_backoff: c("vm_reload_backoff"),
            vm_failed: c("vm_failed"),
            fail_closed: c("fail_closed"),
            fail_open: c("fail_open"),
        }
    }
}

/// A plugin of one config version. Every worker builds its own VM from it on
/// first use; the VMs end when the plugin is dropped with its config version.
pub struct Plugin {
    pub(crate) config: Arc<WasmPlugin>,
    pub(crate) clusters: Arc<ClusterManager>,
    pub(crate) stats: Arc<PluginStats>,
    /// Tells the VMs' background tasks that the plugin is gone.
    pub(crate) retired: tokio::sync::watch::Sender<bool>,
}

impl Drop for Plugin {
    fn drop(&mut self) {
        self.retired.send_replace(true);
    }
}

impl Plugin {
    /// Builds a plugin and checks it on a throwaway VM: `on_vm_start` and
    /// `on_configure` must succeed, or the config is refused.
    pub fn new(
        config: Arc<WasmPlugin>,
        clusters: Arc<ClusterManager>,
    ) -> Result<Arc<Plugin>, String> {
        if !config.runtime.is_empty() && config.runtime != "envoy.wasm.runtime.wasmtime" {
            static ONCE: OnceLock<()> = OnceLock::new();
            ONCE.get_or_init(|| {
                tracing::info!(
                    "Wasm runtime \"{}\" is served by wasmtime in legate",
                    config.runtime
                )
            });
        }
        let stats = Arc::new(PluginStats::new(&config.runtime, &config.name));
        let plugin = Arc::new(Plugin {
            config,
            clusters,
            stats,
            retired: tokio::sync::watch::channel(false).0,
        });
        let checked = match plugin.config.code.kind {
            CodeKind::Module { .. } => vm::check(&plugin),
            CodeKind::Component(_) => component::check(&plugin),
        };
        checked.map_err(|e| format!("Wasm plugin \"{}\": {e}", plugin.config.name))?;
        Ok(plugin)
    }

    /// Applies the failure policy to a stream or connection whose filter
    /// failed, and counts it: true for FAIL_OPEN (the filter steps aside),
    /// false when the stream gets [`fail_reply`] or the connection closes.
    pub(crate) fn fails_open(&self, why: &str) -> bool {
        tracing::debug!(plugin = %self.config.name, "Wasm filter failed: {why}");
        match self.config.failure_policy {
            crate::config::FailurePolicy::FailOpen => {
                self.stats.fail_open.inc();
                true
            }
            crate::config::FailurePolicy::FailClosed | crate::config::FailurePolicy::FailReload => {
                self.stats.fail_closed.inc();
                false
            }
        }
    }

    /// The HTTP filter factory for this plugin's code (the world was checked
    /// when the config was parsed).
    pub fn http_factory(self: Arc<Self>) -> Arc<dyn legate_filter_api::HttpFilterFactory> {
        match self.config.code.kind {
            CodeKind::Module { .. } => Arc::new(http::WasmHttpFactory::new(self)),
            CodeKind::Component(_) => Arc::new(component::ComponentHttpFactory::new(self)),
        }
    }

    /// The network filter factory for this plugin's code.
    pub fn network_factory(
        self: Arc<Self>,
    ) -> Arc<dyn legate_filter_api::network::NetworkFilterFactory> {
        match self.config.code.kind {
            CodeKind::Module { .. } => Arc::new(network::WasmNetworkFactory::new(self)),
            CodeKind::Component(_) => Arc::new(component::ComponentNetworkFactory::new(self)),
        }
    }
}

/// The answer to a stream whose filter failed under FAIL_CLOSED or FAIL_RELOAD.
pub(crate) fn fail_reply() -> Box<legate_filter_api::LocalReply> {
    let mut r = legate_filter_api::LocalReply::new(
        ::http::StatusCode::SERVICE_UNAVAILABLE,
        bytes::Bytes::new(),
    );
    r.details = "wasm_fail_stream";
    Box::new(r)
}

/// Runs every plugin's `on_vm_start` and `on_configure` on a throwaway VM, as a
/// start would (for `--mode validate`).
pub fn check_all(b: &crate::config::Bootstrap) -> Result<(), String> {
    let clusters = Arc::new(ClusterManager::new(&b.clusters));
    for p in b.wasm_plugins() {
        Plugin::new(p.clone(), clusters.clone())?;
    }
    Ok(())
}

/// Starts `envoy.bootstrap.wasm` services: each runs on a thread of its own with
/// one VM, for timers, logging, shared data and HTTP calls, until its config
/// version is replaced or the process drains.
pub fn start_services(plugins: &[Arc<Plugin>], mut life: tokio::sync::watch::Receiver<u8>) {
    for p in plugins {
        let p = p.clone();
        let mut life = life.clone();
        let name = format!("wasm-service-{}", p.config.name);
        let spawned =
            std::thread::Builder::new().name(name).spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("cannot start Wasm service runtime: {e}");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                let slot = slot::slot::<vm::Vm>(&p);
                let vm = slot.vm();
                if let Err(e) = &vm {
                    tracing::error!(plugin = %p.config.name, "Wasm service failed to start: {e}");
                }
                let _ = life.wait_for(|l| *l != crate::server::lifecycle::RUNNING).await;
                // The VM's tasks end with the plugin's retirement.
                p.retired.send_replace(true);
                drop(vm);
            });
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start Wasm service thread: {e}");
        }
    }
    let _ = life.borrow_and_update();
}
