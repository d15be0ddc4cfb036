//! Workers, listeners, filter-chain selection, drain and shutdown.
//!
//! Each of the `--concurrency` workers is a thread with a current-thread tokio
//! runtime and its own `SO_REUSEPORT` socket per listener, so the kernel spreads
//! connections and a worker's connections never leave it. Config is built once on
//! the main thread into an immutable [`Shared`]; workers only read it.

use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::access_log;
use crate::config::{Bootstrap, NetworkFilter};
use crate::http::Hcm;
use crate::network::{Chain, Terminal, tcp_proxy::TcpProxy};
use crate::stats::{Counter, Gauge, store};
use crate::upstream::{ClusterManager, WorkerClusters};

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

pub struct ListenerRt {
    pub name: String,
    pub address: SocketAddr,
    pub chains: Vec<Chain>,
    pub stats: ListenerStats,
    /// The first socket, bound on the main thread so that address errors show at
    /// startup and port 0 resolves once for every worker.
    bound: std::net::TcpListener,
}

impl ListenerRt {
    pub fn local_addr(&self) -> SocketAddr {
        self.bound.local_addr().unwrap_or(self.address)
    }

    fn chain_for(&self, local: &SocketAddr) -> Option<&Chain> {
        self.chains
            .iter()
            .find(|c| c.destination_port == Some(local.port()))
            .or_else(|| self.chains.iter().find(|c| c.destination_port.is_none()))
    }
}

/// Everything built from one config, shared by all workers and the admin.
pub struct Shared {
    pub bootstrap: Arc<Bootstrap>,
    pub clusters: Arc<ClusterManager>,
    pub listeners: Vec<ListenerRt>,
    pub drain: watch::Sender<bool>,
    /// Connections open on all workers, for the drain.
    pub active_connections: AtomicUsize,
    /// Set by `/healthcheck/fail`: `/ready` answers 503 and HTTP/1.1 responses
    /// carry `connection: close`, as Envoy does.
    pub healthcheck_failed: Arc<AtomicBool>,
    pub started: std::time::SystemTime,
    next_conn_id: AtomicU64,
    pub concurrency: usize,
}

impl Shared {
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

/// One worker's state: its view of clusters (balancers, pools).
pub struct Worker {
    pub clusters: WorkerClusters,
    healthcheck_failed: Arc<AtomicBool>,
}

impl Worker {
    pub fn new(clusters: &ClusterManager, healthcheck_failed: Arc<AtomicBool>) -> Worker {
        Worker {
            clusters: WorkerClusters::new(clusters),
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

impl Shared {
    /// Builds runtime objects from a validated config and binds every listener.
    pub fn build(bootstrap: Bootstrap, concurrency: usize) -> Result<Arc<Shared>, String> {
        let bootstrap = Arc::new(bootstrap);
        let clusters = Arc::new(ClusterManager::new(&bootstrap.clusters));
        let mut listeners = Vec::new();
        for l in &bootstrap.listeners {
            let bound = bind(l.address)
                .map_err(|e| format!("listener \"{}\": cannot bind {}: {e}", l.name, l.address))?;
            let mut chains = Vec::new();
            for fc in &l.filter_chains {
                let mut terminal = None;
                for f in &fc.filters {
                    terminal = Some(match f {
                        NetworkFilter::TcpProxy(t) => {
                            let logs = access_log::open(&t.access_log)
                                .map_err(|e| format!("access log: {e}"))?;
                            Terminal::TcpProxy(Arc::new(TcpProxy::new(t.clone(), logs)))
                        }
                        NetworkFilter::HttpConnectionManager(h) => {
                            let logs = access_log::open(&h.access_log)
                                .map_err(|e| format!("access log: {e}"))?;
                            Terminal::Http(Arc::new(Hcm::new(h.clone(), logs)))
                        }
                    });
                }
                if let Some(terminal) = terminal {
                    chains.push(Chain {
                        destination_port: fc.destination_port,
                        filters: Vec::new(),
                        terminal,
                    });
                }
            }
            let bound_addr = bound.local_addr().unwrap_or(l.address);
            let prefix = format!(
                "listener.{}",
                stat_addr(
                    &l.stat_prefix
                        .clone()
                        .unwrap_or_else(|| bound_addr.to_string())
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
        let (drain, _) = watch::channel(false);
        Ok(Arc::new(Shared {
            bootstrap,
            clusters,
            listeners,
            drain,
            active_connections: AtomicUsize::new(0),
            healthcheck_failed: Arc::new(AtomicBool::new(false)),
            started: std::time::SystemTime::now(),
            next_conn_id: AtomicU64::new(1),
            concurrency,
        }))
    }

    pub fn draining(&self) -> bool {
        *self.drain.borrow()
    }

    /// Starts the drain: listeners close, connections finish what is in flight.
    pub fn start_drain(&self) {
        self.drain.send_replace(true);
    }
}

/// Starts the workers; each runs until the drain completes.
pub fn start_workers(shared: &Arc<Shared>) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for i in 0..shared.concurrency {
        // Worker 0 uses the socket bound at startup; the others bind their own.
        let mut sockets = Vec::new();
        for l in &shared.listeners {
            let s = if i == 0 {
                l.bound.try_clone()?
            } else {
                bind(l.local_addr())?
            };
            sockets.push(s);
        }
        let shared = shared.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("worker_{i}"))
                .spawn(move || run_worker(shared, sockets))?,
        );
    }
    Ok(handles)
}

fn run_worker(shared: Arc<Shared>, sockets: Vec<std::net::TcpListener>) {
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
        let worker = Rc::new(Worker::new(
            &shared.clusters,
            shared.healthcheck_failed.clone(),
        ));
        let mut accepts = Vec::new();
        for (idx, sock) in sockets.into_iter().enumerate() {
            let listener = match TcpListener::from_std(sock) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("listener setup failed: {e}");
                    continue;
                }
            };
            accepts.push(tokio::task::spawn_local(accept_loop(
                shared.clone(),
                idx,
                listener,
                worker.clone(),
            )));
        }
        for a in accepts {
            let _ = a.await;
        }
        // Listeners are closed; wait for this worker's connections to finish.
        while shared.active_connections.load(Ordering::Acquire) > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
}

async fn accept_loop(shared: Arc<Shared>, idx: usize, listener: TcpListener, worker: Rc<Worker>) {
    let mut drain = shared.drain.subscribe();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.wait_for(|d| *d) => break,
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
        let local = stream.local_addr().unwrap_or(shared.listeners[idx].address);
        let l = &shared.listeners[idx];
        let Some(_) = l.chain_for(&local) else {
            l.stats.no_filter_chain_match.inc();
            continue;
        };
        l.stats.downstream_cx_total.inc();
        l.stats.downstream_cx_active.inc();
        shared.active_connections.fetch_add(1, Ordering::AcqRel);
        let id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let shared = shared.clone();
        let worker = worker.clone();
        let drain = drain.clone();
        tokio::task::spawn_local(async move {
            let l = &shared.listeners[idx];
            if let Some(chain) = l.chain_for(&local) {
                crate::network::serve(chain, worker, stream, remote, local, id, drain).await;
            }
            l.stats.downstream_cx_active.dec();
            l.stats.downstream_cx_destroy.inc();
            shared.active_connections.fetch_sub(1, Ordering::AcqRel);
        });
    }
}
