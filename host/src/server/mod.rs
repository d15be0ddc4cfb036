//! Workers, listeners, filter-chain selection, config versions, drain and shutdown.
//!
//! Each of the `--concurrency` workers is a thread with a current-thread tokio
//! runtime and its own `SO_REUSEPORT` socket per listener, so the kernel spreads
//! connections and a worker's connections never leave it.
//!
//! Config is built on the main thread into an immutable [`ConfigVersion`], which
//! [`Shared`] swaps atomically on reload. A connection keeps the version it was
//! accepted under, so streams in flight finish on the config they started with. A
//! listener whose name and address are unchanged keeps its sockets across a reload.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access_log;
use crate::config::{Bootstrap, HttpFilter, NetworkFilter};
use crate::http::Hcm;
use crate::network::{Chain, Terminal, tcp_proxy::TcpProxy};
use crate::stats::{Counter, Gauge, store};
use crate::upstream::{ClusterManager, WorkerClusters};
use crate::wasm;
use legate_filter_api::network::NetworkFilterFactory;

/// Spawns hyper's background futures on the worker's `LocalSet`, so they need
/// not be `Send`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// Envoy's `listener.<address>.*` stats.
pub struct ListenerStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_active: Gauge,
    pub downstream_cx_destroy: Counter,
    pub no_filter_chain_match: Counter,
}

/// A listener's identity across reloads.
type ListenerKey = (String, SocketAddr);

pub struct ListenerRt {
    pub name: String,
    /// The configured address (its port may be 0).
    pub address: SocketAddr,
    pub chains: Vec<Chain>,
    pub stats: ListenerStats,
    /// The first socket, bound on the main thread so that address errors show
    /// before a config is used and port 0 resolves once for every worker. Shared
    /// by the versions that keep this listener.
    bound: Arc<std::net::TcpListener>,
}

impl ListenerRt {
    pub fn local_addr(&self) -> SocketAddr {
        self.bound.local_addr().unwrap_or(self.address)
    }

    fn key(&self) -> ListenerKey {
        (self.name.clone(), self.address)
    }

    fn chain_for(&self, local: &SocketAddr) -> Option<usize> {
        self.chains
            .iter()
            .position(|c| c.destination_port == Some(local.port()))
            .or_else(|| {
                self.chains
                    .iter()
                    .position(|c| c.destination_port.is_none())
            })
    }
}

/// A config version's life, as its connections see it.
pub mod lifecycle {
    /// In force.
    pub const RUNNING: u8 = 0;
    /// Replaced by a newer version: HTTP/1.1 connections close after their next
    /// response (or a grace period), HTTP/2 ones get GOAWAY.
    pub const RETIRED: u8 = 1;
    /// The process is shutting down.
    pub const DRAINING: u8 = 2;
}

/// Everything built from one config.
pub struct ConfigVersion {
    /// 1 for the config the process started with, then one more per reload.
    pub version: u64,
    /// Tells this version's connections when it is replaced or the process drains.
    pub lifecycle: watch::Sender<u8>,
    pub bootstrap: Arc<Bootstrap>,
    pub clusters: Arc<ClusterManager>,
    pub listeners: Vec<ListenerRt>,
    /// `envoy.bootstrap.wasm` services, started when the version goes in force.
    pub services: Vec<Arc<wasm::Plugin>>,
}

/// What lives for the whole process: the current config, drain and health state.
pub struct Shared {
    config: ArcSwap<ConfigVersion>,
    /// Tells workers that a new version is in place.
    version: watch::Sender<u64>,
    pub drain: watch::Sender<bool>,
    /// Connections open on all workers, for the drain.
    pub active_connections: AtomicUsize,
    /// Set by `/healthcheck/fail`: `/ready` answers 503 and HTTP/1.1 responses
    /// carry `connection: close`, as Envoy does.
    pub healthcheck_failed: Arc<AtomicBool>,
    pub started: std::time::SystemTime,
    next_conn_id: AtomicU64,
    pub concurrency: usize,
    /// Serialises reloads.
    reloading: Mutex<()>,
}

/// One worker's state for one config version: its view of clusters (balancers,
/// pools), shared with native filters as their HTTP client.
pub struct Worker {
    pub clusters: Rc<WorkerClusters>,
    healthcheck_failed: Arc<AtomicBool>,
}

impl Worker {
    pub fn new(clusters: &ClusterManager, healthcheck_failed: Arc<AtomicBool>) -> Worker {
        Worker {
            clusters: Rc::new(WorkerClusters::new(clusters)),
            healthcheck_failed,
        }
    }

    pub fn health_failed(&self) -> bool {
        self.healthcheck_failed.load(Ordering::Relaxed)
    }
}

fn stat_addr(a: &str) -> String {
    a.replace(':', "_")
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

/// Builds runtime objects from a validated config. Listeners that `previous` has
/// under the same name and address keep their socket; new ones are bound now.
fn build_version(
    bootstrap: Bootstrap,
    version: u64,
    previous: Option<&ConfigVersion>,
) -> Result<ConfigVersion, String> {
    let bootstrap = Arc::new(bootstrap);
    let clusters = Arc::new(ClusterManager::new(&bootstrap.clusters));
    let mut listeners = Vec::new();
    for l in &bootstrap.listeners {
        let key = (l.name.clone(), l.address);
        let kept = previous.and_then(|p| p.listeners.iter().find(|o| o.key() == key));
        let bound =
            match kept {
                Some(o) => o.bound.clone(),
                None => Arc::new(bind(l.address).map_err(|e| {
                    format!("listener \"{}\": cannot bind {}: {e}", l.name, l.address)
                })?),
            };
        let mut chains = Vec::new();
        for fc in &l.filter_chains {
            let mut terminal = None;
            let mut filters: Vec<Arc<dyn NetworkFilterFactory>> = Vec::new();
            for f in &fc.filters {
                terminal = Some(match f {
                    NetworkFilter::Wasm(w) => {
                        let p = wasm::Plugin::new(w.clone(), clusters.clone())?;
                        filters.push(p.network_factory());
                        continue;
                    }
                    NetworkFilter::Native(n) => {
                        filters.push(n.factory.clone());
                        continue;
                    }
                    NetworkFilter::TcpProxy(t) => {
                        let logs = access_log::open(&t.access_log)
                            .map_err(|e| format!("access log: {e}"))?;
                        Terminal::TcpProxy(Arc::new(TcpProxy::new(t.clone(), logs)))
                    }
                    NetworkFilter::Terminal(t) => Terminal::Filter(t.factory.clone()),
                    NetworkFilter::HttpConnectionManager(h) => {
                        let logs = access_log::open(&h.access_log)
                            .map_err(|e| format!("access log: {e}"))?;
                        let mut hcm = Hcm::new(h.clone(), logs);
                        for hf in &h.http_filters {
                            match hf {
                                HttpFilter::Wasm(w) => {
                                    let p = wasm::Plugin::new(w.clone(), clusters.clone())?;
                                    hcm.filters.push(p.http_factory());
                                }
                                HttpFilter::Native(n) => hcm.filters.push(n.factory.clone()),
                                HttpFilter::Router { .. } => {}
                            }
                        }
                        Terminal::Http(Arc::new(hcm))
                    }
                });
            }
            if let Some(terminal) = terminal {
                chains.push(Chain {
                    destination_port: fc.destination_port,
                    filters,
                    terminal,
                });
            }
        }
        // Envoy names listener stats by the configured address (port 0 stays 0).
        let prefix = format!(
            "listener.{}",
            stat_addr(
                &l.stat_prefix
                    .clone()
                    .unwrap_or_else(|| l.address.to_string())
            )
        );
        let s = store();
        listeners.push(ListenerRt {
            name: l.name.clone(),
            address: l.address,
            chains,
            stats: ListenerStats {
                downstream_cx_total: s.counter(format!("{prefix}.downstream_cx_total")),
                downstream_cx_active: s.gauge(format!("{prefix}.downstream_cx_active")),
                downstream_cx_destroy: s.counter(format!("{prefix}.downstream_cx_destroy")),
                no_filter_chain_match: s.counter(format!("{prefix}.no_filter_chain_match")),
            },
            bound,
        });
    }
    let services = bootstrap
        .wasm_services
        .iter()
        .map(|s| wasm::Plugin::new(s.plugin.clone(), clusters.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ConfigVersion {
        version,
        lifecycle: watch::channel(lifecycle::RUNNING).0,
        bootstrap,
        clusters,
        listeners,
        services,
    })
}

impl Shared {
    /// Builds the first config version and binds every listener.
    pub fn build(bootstrap: Bootstrap, concurrency: usize) -> Result<Arc<Shared>, String> {
        let first = build_version(bootstrap, 1, None)?;
        wasm::start_services(&first.services, first.lifecycle.subscribe());
        let (drain, _) = watch::channel(false);
        let (version, _) = watch::channel(1);
        store().gauge("server.config_version").set(1);
        Ok(Arc::new(Shared {
            config: ArcSwap::from_pointee(first),
            version,
            drain,
            active_connections: AtomicUsize::new(0),
            healthcheck_failed: Arc::new(AtomicBool::new(false)),
            started: std::time::SystemTime::now(),
            next_conn_id: AtomicU64::new(1),
            concurrency,
            reloading: Mutex::new(()),
        }))
    }

    /// The config in force.
    pub fn config(&self) -> Arc<ConfigVersion> {
        self.config.load_full()
    }

    /// Builds the next version from a validated config (binding new listeners)
    /// without putting it in force yet.
    pub fn prepare(&self, bootstrap: Bootstrap) -> Result<ConfigVersion, String> {
        let _g = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.config();
        build_version(bootstrap, current.version + 1, Some(&current))
    }

    /// Puts a prepared version in force: new connections use it from now on.
    pub fn install(&self, next: ConfigVersion) -> u64 {
        let _g = self.reloading.lock().unwrap_or_else(|e| e.into_inner());
        let v = next.version;
        wasm::start_services(&next.services, next.lifecycle.subscribe());
        let old = self.config.swap(Arc::new(next));
        old.lifecycle.send_replace(lifecycle::RETIRED);
        store().gauge("server.config_version").set(v as i64);
        self.version.send_replace(v);
        v
    }

    pub fn draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Starts the drain: listeners close, connections finish what is in flight.
    pub fn start_drain(&self) {
        self.drain.send_replace(true);
        self.config().lifecycle.send_replace(lifecycle::DRAINING);
    }

    /// Refreshes Envoy's `server.*` gauges; the admin calls this before output.
    pub fn update_server_stats(&self) {
        let s = store();
        let live = !self.draining() && !self.healthcheck_failed.load(Ordering::Relaxed);
        s.gauge("server.live").set(live as i64);
        // Envoy's server.state: 0 LIVE, 1 DRAINING.
        s.gauge("server.state").set(if live { 0 } else { 1 });
        let up = self.started.elapsed().map_or(0, |d| d.as_secs());
        s.gauge("server.uptime").set(up as i64);
        s.gauge("server.concurrency").set(self.concurrency as i64);
        s.gauge("server.total_connections")
            .set(self.active_connections.load(Ordering::Relaxed) as i64);
    }
}

/// Starts the workers; each runs until the drain completes. With a
/// `random_seed`, worker `i` seeds its filters' generator with `seed + i`, so a
/// run's random decisions (fault percentages) repeat.
pub fn start_workers(
    shared: &Arc<Shared>,
    random_seed: Option<u64>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for i in 0..shared.concurrency {
        let shared = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker_{i}"))
                .spawn(move || {
                    if let Some(seed) = random_seed {
                        legate_filter_api::random::seed(seed.wrapping_add(i as u64));
                    }
                    run_worker(shared, i)
                })?,
        );
    }
    Ok(handles)
}

/// A worker's per-version state, rebuilt when a new version shows up.
struct WorkerCache {
    version: Cell<u64>,
    worker: RefCell<Option<Rc<Worker>>>,
}

impl WorkerCache {
    fn get(&self, cfg: &ConfigVersion, health: &Arc<AtomicBool>) -> Rc<Worker> {
        let mut w = self.worker.borrow_mut();
        if self.version.get() != cfg.version || w.is_none() {
            *w = Some(Rc::new(Worker::new(&cfg.clusters, health.clone())));
            self.version.set(cfg.version);
        }
        w.clone().expect("set above")
    }
}

fn run_worker(shared: Arc<Shared>, index: usize) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start worker runtime: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let cache = Rc::new(WorkerCache {
            version: Cell::new(0),
            worker: RefCell::new(None),
        });
        let mut running: HashMap<ListenerKey, (watch::Sender<bool>, tokio::task::JoinHandle<()>)> =
            HashMap::new();
        let mut versions = shared.version.subscribe();
        let mut drain = shared.drain.subscribe();
        loop {
            let cfg = shared.config();
            let keys: HashSet<ListenerKey> = cfg.listeners.iter().map(ListenerRt::key).collect();
            // Listeners gone from the config stop accepting on this worker.
            running.retain(|k, (stop, _)| {
                let keep = keys.contains(k);
                if !keep {
                    stop.send_replace(true);
                }
                keep
            });
            for l in &cfg.listeners {
                let key = l.key();
                if running.contains_key(&key) {
                    continue;
                }
                // Worker 0 uses the socket bound on the main thread; the others
                // bind their own on the same address.
                let sock = if index == 0 {
                    l.bound.try_clone()
                } else {
                    bind(l.local_addr())
                };
                let listener = match sock.and_then(TcpListener::from_std) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(listener = %l.name, "worker {index}: cannot listen: {e}");
                        continue;
                    }
                };
                let (stop, stop_rx) = watch::channel(false);
                let task = tokio::task::spawn_local(accept_loop(
                    shared.clone(),
                    key.clone(),
                    listener,
                    stop_rx,
                    cache.clone(),
                ));
                running.insert(key, (stop, task));
            }
            tokio::select! {
                r = versions.changed() => if r.is_err() { break },
                _ = drain.wait_for(|d| *d) => break,
            }
        }
        for (_, (stop, task)) in running {
            stop.send_replace(true);
            let _ = task.await;
        }
        // Listeners are closed; wait for connections to finish.
        while shared.active_connections.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
}

async fn accept_loop(
    shared: Arc<Shared>,
    key: ListenerKey,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
    cache: Rc<WorkerCache>,
) {
    let mut drain = shared.drain.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.wait_for(|d| *d) => break,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (stream, remote) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        // The connection lives on the version in force when it arrived.
        let cfg = shared.config();
        let Some(li) = cfg.listeners.iter().position(|l| l.key() == key) else {
            continue;
        };
        let l = &cfg.listeners[li];
        let local = stream.local_addr().unwrap_or(l.address);
        let Some(ci) = l.chain_for(&local) else {
            l.stats.no_filter_chain_match.inc();
            continue;
        };
        l.stats.downstream_cx_total.inc();
        l.stats.downstream_cx_active.inc();
        shared.active_connections.fetch_add(1, Ordering::AcqRel);
        let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let worker = cache.get(&cfg, &shared.healthcheck_failed);
        let shared = shared.clone();
        let life = cfg.lifecycle.subscribe();
        tokio::task::spawn_local(async move {
            let l = &cfg.listeners[li];
            crate::network::serve(&l.chains[ci], worker, stream, remote, local, id, life).await;
            l.stats.downstream_cx_active.dec();
            l.stats.downstream_cx_destroy.inc();
            shared.active_connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
