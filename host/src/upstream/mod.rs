//! Clusters: endpoints (with DNS), load balancing, connection pools and stats.
//!
//! [`ClusterManager`] is process-wide and owns what every worker shares: the config,
//! the stats and the current host set (re-resolved for STRICT_DNS). Each worker
//! builds its own [`WorkerClusters`] with its own balancer state and pools, so the
//! request path takes no locks.

pub mod call;
pub mod hash;
mod lb;
pub mod pool;
mod tcp;

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

use crate::config::{Cluster, DiscoveryType, DnsLookupFamily, EndpointAddress, LbPolicy};
use crate::stats::{CodeStats, Counter, Gauge, Histogram, store};

/// A host as the balancer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Host {
    pub address: HostAddress,
    pub weight: u32,
    /// The DNS name the host came from (STRICT_DNS, LOGICAL_DNS), for
    /// `auto_host_rewrite`.
    pub hostname: Option<Arc<str>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum HostAddress {
    Ip(SocketAddr),
    /// LOGICAL_DNS: resolved on each new connection.
    Dns(String, u16),
}

/// Envoy's cluster stats that Legate keeps.
#[derive(Debug)]
pub struct ClusterStats {
    pub upstream_cx_total: Counter,
    pub upstream_cx_active: Gauge,
    pub upstream_cx_http1_total: Counter,
    pub upstream_cx_http2_total: Counter,
    pub upstream_cx_connect_fail: Counter,
    pub upstream_cx_connect_timeout: Counter,
    pub upstream_cx_destroy: Counter,
    pub upstream_cx_rx_bytes_total: Counter,
    pub upstream_cx_tx_bytes_total: Counter,
    pub upstream_cx_none_healthy: Counter,
    pub upstream_rq_total: Counter,
    pub upstream_rq_active: Gauge,
    pub upstream_rq_completed: Counter,
    pub upstream_rq_timeout: Counter,
    /// Always 0 until retries exist; Envoy exports them, so dashboards find them.
    pub upstream_rq_retry: Counter,
    pub upstream_rq_retry_success: Counter,
    pub upstream_rq_rx_reset: Counter,
    pub upstream_rq_pending_failure_eject: Counter,
    pub upstream_rq: CodeStats,
    /// Upstream request start to the response's end (Envoy's `upstream_rq_time`).
    pub upstream_rq_time: Histogram,
    pub membership_total: Gauge,
    pub membership_healthy: Gauge,
}

impl ClusterStats {
    fn new(name: &str) -> ClusterStats {
        let s = store();
        let c = |n: &str| s.counter(format!("cluster.{name}.{n}"));
        let g = |n: &str| s.gauge(format!("cluster.{name}.{n}"));
        ClusterStats {
            upstream_cx_total: c("upstream_cx_total"),
            upstream_cx_active: g("upstream_cx_active"),
            upstream_cx_http1_total: c("upstream_cx_http1_total"),
            upstream_cx_http2_total: c("upstream_cx_http2_total"),
            upstream_cx_connect_fail: c("upstream_cx_connect_fail"),
            upstream_cx_connect_timeout: c("upstream_cx_connect_timeout"),
            upstream_cx_destroy: c("upstream_cx_destroy"),
            upstream_cx_rx_bytes_total: c("upstream_cx_rx_bytes_total"),
            upstream_cx_tx_bytes_total: c("upstream_cx_tx_bytes_total"),
            upstream_cx_none_healthy: c("upstream_cx_none_healthy"),
            upstream_rq_total: c("upstream_rq_total"),
            upstream_rq_active: g("upstream_rq_active"),
            upstream_rq_completed: c("upstream_rq_completed"),
            upstream_rq_timeout: c("upstream_rq_timeout"),
            upstream_rq_retry: c("upstream_rq_retry"),
            upstream_rq_retry_success: c("upstream_rq_retry_success"),
            upstream_rq_rx_reset: c("upstream_rq_rx_reset"),
            upstream_rq_pending_failure_eject: c("upstream_rq_pending_failure_eject"),
            upstream_rq: CodeStats::new(format!("cluster.{name}.upstream_rq"), false),
            upstream_rq_time: s.histogram(format!("cluster.{name}.upstream_rq_time")),
            membership_total: g("membership_total"),
            membership_healthy: g("membership_healthy"),
        }
    }
}

/// What all workers share about one cluster.
#[derive(Debug)]
pub struct ClusterShared {
    pub config: Arc<Cluster>,
    /// `config.name`, shared: streams record it without copying.
    pub name: Arc<str>,
    pub stats: ClusterStats,
    hosts: ArcSwap<Vec<Host>>,
    /// The RING_HASH / MAGLEV table of the current host set (else `None`).
    hash_lb: arc_swap::ArcSwapOption<lb::HashLb>,
}

impl ClusterShared {
    pub fn hosts(&self) -> Arc<Vec<Host>> {
        self.hosts.load_full()
    }

    fn set_hosts(&self, hosts: Vec<Host>) {
        self.stats.membership_total.set(hosts.len() as i64);
        self.stats.membership_healthy.set(hosts.len() as i64);
        let hosts = Arc::new(hosts);
        // Built here, once per host set, and shared by every worker.
        self.hash_lb
            .store(lb::HashLb::build(self.config.lb_policy, &hosts).map(Arc::new));
        self.hosts.store(hosts);
    }
}

/// Process-wide clusters of one config version.
#[derive(Debug, Default)]
pub struct ClusterManager {
    clusters: HashMap<String, Arc<ClusterShared>>,
    order: Vec<String>,
    /// STRICT_DNS refresh tasks; they stop when this version is dropped.
    dns_tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for ClusterManager {
    fn drop(&mut self) {
        for t in self
            .dns_tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            t.abort();
        }
    }
}

impl ClusterManager {
    pub fn new(clusters: &[Arc<Cluster>]) -> ClusterManager {
        let mut cm = ClusterManager::default();
        for c in clusters {
            let hosts = c
                .endpoints
                .iter()
                .filter_map(|e| match &e.address {
                    EndpointAddress::Ip(a) => Some(Host {
                        address: HostAddress::Ip(*a),
                        weight: e.weight,
                        hostname: None,
                    }),
                    EndpointAddress::Dns { host, port } if c.kind == DiscoveryType::LogicalDns => {
                        Some(Host {
                            address: HostAddress::Dns(host.clone(), *port),
                            weight: e.weight,
                            hostname: Some(host.as_str().into()),
                        })
                    }
                    // STRICT_DNS hosts appear once resolved.
                    EndpointAddress::Dns { .. } => None,
                })
                .collect();
            let shared = Arc::new(ClusterShared {
                config: c.clone(),
                name: c.name.as_str().into(),
                stats: ClusterStats::new(&c.name),
                hosts: ArcSwap::from_pointee(Vec::new()),
                hash_lb: arc_swap::ArcSwapOption::empty(),
            });
            shared.set_hosts(hosts);
            cm.order.push(c.name.clone());
            cm.clusters.insert(c.name.clone(), shared);
        }
        cm
    }

    pub fn get(&self, name: &str) -> Option<&Arc<ClusterShared>> {
        self.clusters.get(name)
    }

    /// Clusters in config order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<ClusterShared>> {
        self.order.iter().filter_map(|n| self.clusters.get(n))
    }

    /// Resolves STRICT_DNS clusters now, then every `dns_refresh_rate` until the
    /// returned task is dropped.
    pub async fn resolve_strict_dns(self: Arc<Self>) {
        let dns: Vec<Arc<ClusterShared>> = self
            .iter()
            .filter(|c| c.config.kind == DiscoveryType::StrictDns)
            .cloned()
            .collect();
        for c in &dns {
            refresh(c).await;
        }
        let mut tasks = self.dns_tasks.lock().unwrap_or_else(|e| e.into_inner());
        for c in dns {
            let t = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(c.config.dns_refresh_rate).await;
                    refresh(&c).await;
                }
            });
            tasks.push(t.abort_handle());
        }
    }
}

async fn resolve(host: &str, port: u16, family: DnsLookupFamily) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let v4: Vec<SocketAddr> = addrs.iter().filter(|a| a.is_ipv4()).copied().collect();
    let v6: Vec<SocketAddr> = addrs.iter().filter(|a| a.is_ipv6()).copied().collect();
    Ok(match family {
        DnsLookupFamily::V4Only => v4,
        DnsLookupFamily::V6Only => v6,
        DnsLookupFamily::All => addrs,
        // Envoy's AUTO prefers v6, V4_PREFERRED prefers v4; each falls back.
        DnsLookupFamily::Auto => {
            if v6.is_empty() {
                v4
            } else {
                v6
            }
        }
        DnsLookupFamily::V4Preferred => {
            if v4.is_empty() {
                v6
            } else {
                v4
            }
        }
    })
}

async fn refresh(c: &ClusterShared) {
    let mut hosts = Vec::new();
    for e in &c.config.endpoints {
        match &e.address {
            EndpointAddress::Ip(a) => hosts.push(Host {
                address: HostAddress::Ip(*a),
                weight: e.weight,
                hostname: None,
            }),
            EndpointAddress::Dns { host, port } => {
                let name: Arc<str> = host.as_str().into();
                match resolve(host, *port, c.config.dns_lookup_family).await {
                    Ok(addrs) => hosts.extend(addrs.into_iter().map(|a| Host {
                        address: HostAddress::Ip(a),
                        weight: e.weight,
                        hostname: Some(name.clone()),
                    })),
                    Err(err) => {
                        tracing::warn!(cluster = %c.config.name, %host, "DNS resolution failed: {err}");
                        // Keep the last good answer, as Envoy does.
                        return;
                    }
                }
            }
        }
    }
    if *c.hosts.load_full() != hosts {
        tracing::debug!(cluster = %c.config.name, hosts = hosts.len(), "hosts updated");
        c.set_hosts(hosts);
    }
}

/// Why an upstream connection could not be made. Cloneable, so one failed
/// connect can answer every request that waited on it.
#[derive(Debug, Clone)]
pub enum ConnectError {
    Timeout,
    Io(Arc<io::Error>),
    Resolve(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout => f.write_str("connection timeout"),
            ConnectError::Io(e) => write!(f, "delayed connect error: {}", io_error_text(e)),
            ConnectError::Resolve(h) => write!(f, "resolution failure for {h}"),
        }
    }
}

fn io_error_text(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "Connection refused".into(),
        _ => e.to_string(),
    }
}

/// One worker's view of a cluster.
pub struct WorkerCluster {
    pub shared: Arc<ClusterShared>,
    lb: RefCell<lb::Wrr>,
    pools: RefCell<HashMap<SocketAddr, Rc<pool::HostPool>>>,
}

impl WorkerCluster {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn stats(&self) -> &ClusterStats {
        &self.shared.stats
    }

    /// The next host under the cluster's policy: weighted round robin, uniform
    /// random, or for RING_HASH and MAGLEV a random hash, as Envoy does for a
    /// request that has no hash.
    pub fn pick_host(&self) -> Option<Host> {
        let h = match self.shared.config.lb_policy {
            LbPolicy::RoundRobin => {
                let hosts = self.shared.hosts();
                self.lb.borrow_mut().pick(&hosts)
            }
            // Envoy's RANDOM ignores weights.
            LbPolicy::Random => {
                let hosts = self.shared.hosts();
                (!hosts.is_empty()).then(|| hosts[fastrand::usize(..hosts.len())].clone())
            }
            LbPolicy::RingHash(_) | LbPolicy::Maglev { .. } => self.hashed(fastrand::u64(..)),
        };
        if h.is_none() {
            self.shared.stats.upstream_cx_none_healthy.inc();
        }
        h
    }

    /// The host owning `hash` under the cluster's RING_HASH or MAGLEV policy;
    /// for other policies, the next host as pick_host() chooses.
    pub fn pick_host_for_hash(&self, hash: u64) -> Option<Host> {
        if !self.is_hashing() {
            return self.pick_host();
        }
        let h = self.hashed(hash);
        if h.is_none() {
            self.shared.stats.upstream_cx_none_healthy.inc();
        }
        h
    }

    /// Whether the cluster picks hosts by hash (RING_HASH, MAGLEV), so a
    /// request's hash is worth computing.
    pub fn is_hashing(&self) -> bool {
        self.shared.config.lb_policy.is_hashing()
    }

    fn hashed(&self, hash: u64) -> Option<Host> {
        self.shared
            .hash_lb
            .load()
            .as_ref()
            .and_then(|t| t.pick(hash).cloned())
    }

    async fn resolve_host(&self, host: &Host) -> Result<SocketAddr, ConnectError> {
        match &host.address {
            HostAddress::Ip(a) => Ok(*a),
            HostAddress::Dns(name, port) => {
                resolve(name, *port, self.shared.config.dns_lookup_family)
                    .await
                    .ok()
                    .and_then(|v| v.first().copied())
                    .ok_or_else(|| ConnectError::Resolve(name.clone()))
            }
        }
    }

    /// Opens a TCP connection to a host, counting Envoy's connect stats.
    pub async fn connect(&self, host: &Host) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let addr = match self.resolve_host(host).await {
            Ok(a) => a,
            Err(e) => {
                self.shared.stats.upstream_cx_connect_fail.inc();
                return Err(e);
            }
        };
        Ok((self.connect_addr(addr).await?, addr))
    }

    /// Opens a TCP connection to a resolved host within `connect_timeout`.
    pub async fn connect_addr(&self, addr: SocketAddr) -> Result<TcpStream, ConnectError> {
        let stats = &self.shared.stats;
        stats.upstream_cx_total.inc();
        match tokio::time::timeout(self.shared.config.connect_timeout, TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                Ok(s)
            }
            Ok(Err(e)) => {
                stats.upstream_cx_connect_fail.inc();
                Err(ConnectError::Io(Arc::new(e)))
            }
            Err(_) => {
                stats.upstream_cx_connect_fail.inc();
                stats.upstream_cx_connect_timeout.inc();
                Err(ConnectError::Timeout)
            }
        }
    }

    /// The HTTP pool for a host on this worker.
    pub async fn http_pool(&self, host: &Host) -> Result<Rc<pool::HostPool>, ConnectError> {
        let addr = self.resolve_host(host).await?;
        let mut pools = self.pools.borrow_mut();
        let p = pools.entry(addr).or_insert_with(|| {
            Rc::new(pool::HostPool::new(
                addr,
                self.shared.config.http2,
                self.shared.clone(),
            ))
        });
        Ok(p.clone())
    }
}

/// Every cluster as one worker sees it.
#[derive(Default)]
pub struct WorkerClusters {
    by_name: HashMap<String, Rc<WorkerCluster>>,
}

impl WorkerClusters {
    pub fn new(cm: &ClusterManager) -> WorkerClusters {
        WorkerClusters {
            by_name: cm
                .clusters
                .iter()
                .map(|(n, c)| {
                    (
                        n.clone(),
                        Rc::new(WorkerCluster {
                            shared: c.clone(),
                            lb: RefCell::new(lb::Wrr::default()),
                            pools: RefCell::new(HashMap::new()),
                        }),
                    )
                })
                .collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Rc<WorkerCluster>> {
        self.by_name.get(name)
    }
}
