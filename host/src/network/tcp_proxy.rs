//! `envoy.filters.network.tcp_proxy`: connect to a cluster and relay bytes both
//! ways, with half-close and an idle timeout.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::BytesMut;
use legate_filter_api::network::{ConnectionInfo, NetworkAction, NetworkFilter, drained};
use legate_filter_api::{ResponseFlag, ResponseFlags};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::access_log::AccessLogger;
use crate::access_log::format::LogContext;
use crate::config::{self, ClusterSpecifier};
use crate::server::Worker;
use crate::stats::{Counter, Gauge, store};

/// Envoy's `tcp.<stat_prefix>.*` stats.
pub struct TcpStats {
    pub downstream_cx_total: Counter,
    pub downstream_cx_no_route: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub idle_timeout: Counter,
    pub upstream_flush_active: Gauge,
}

pub struct TcpProxy {
    pub config: Arc<config::TcpProxy>,
    pub stats: TcpStats,
    pub access_logs: Vec<AccessLogger>,
}

impl TcpProxy {
    pub fn new(config: Arc<config::TcpProxy>, access_logs: Vec<AccessLogger>) -> TcpProxy {
        let p = &config.stat_prefix;
        let s = store();
        let c = |n: &str| s.counter(format!("tcp.{p}.{n}"));
        TcpProxy {
            stats: TcpStats {
                downstream_cx_total: c("downstream_cx_total"),
                downstream_cx_no_route: c("downstream_cx_no_route"),
                downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
                downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
                idle_timeout: c("idle_timeout"),
                upstream_flush_active: s.gauge(format!("tcp.{p}.upstream_flush_active")),
            },
            config,
            access_logs,
        }
    }
}

const BUF: usize = 16 * 1024;

struct Outcome {
    flags: ResponseFlags,
    upstream: Option<std::net::SocketAddr>,
    cluster: Option<String>,
    rx: u64,
    tx: u64,
}

pub async fn serve(
    proxy: Arc<TcpProxy>,
    worker: Rc<Worker>,
    mut down: TcpStream,
    mut filters: Vec<Box<dyn NetworkFilter>>,
    mut info: ConnectionInfo,
    _life: watch::Receiver<u8>,
) {
    let start = Instant::now();
    let start_time = SystemTime::now();
    proxy.stats.downstream_cx_total.inc();
    let mut out = Outcome {
        flags: ResponseFlags::default(),
        upstream: None,
        cluster: None,
        rx: 0,
        tx: 0,
    };
    let cluster_name = match &proxy.config.cluster {
        ClusterSpecifier::Cluster(c) => Some(c.as_str()),
        ClusterSpecifier::Weighted(w) => crate::router::pick_weighted(w, fastrand::u64(..)),
        ClusterSpecifier::Header(_) => None,
    };
    out.cluster = cluster_name.map(str::to_string);
    let cluster = cluster_name.and_then(|n| worker.clusters.get(n).cloned());
    match cluster {
        None => {
            proxy.stats.downstream_cx_no_route.inc();
            out.flags.set(ResponseFlag::NoClusterFound);
        }
        Some(cluster) => match cluster.pick_host() {
            None => out.flags.set(ResponseFlag::NoHealthyUpstream),
            Some(host) => match cluster.connect(&host).await {
                Err(e) => {
                    tracing::debug!(cluster = cluster.name(), "tcp_proxy connect failed: {e}");
                    out.flags.set(ResponseFlag::UpstreamConnectionFailure);
                }
                Ok((up, addr)) => {
                    out.upstream = Some(addr);
                    let cs = cluster.stats();
                    cs.upstream_cx_active.inc();
                    relay(&proxy, &mut down, up, &mut filters, &mut info, &mut out, cs).await;
                    cs.upstream_cx_active.dec();
                    cs.upstream_cx_destroy.inc();
                }
            },
        },
    }
    for f in filters.iter_mut() {
        f.on_close(&info);
    }
    let _ = down.shutdown().await;
    if !proxy.access_logs.is_empty() {
        let lcx = LogContext {
            start_time: Some(start_time),
            response_flags: out.flags,
            bytes_received: out.rx,
            bytes_sent: out.tx,
            duration: Some(start.elapsed()),
            upstream_host: out.upstream,
            upstream_cluster: out.cluster.as_deref(),
            downstream_remote_address: Some(info.remote_address),
            downstream_direct_remote_address: Some(info.remote_address),
            downstream_local_address: Some(info.local_address),
            connection_id: Some(info.connection_id),
            ..Default::default()
        };
        for l in &proxy.access_logs {
            l.log(&lcx);
        }
    }
}

/// Relays until both directions ended, a filter closes, or the idle timeout fires.
async fn relay(
    proxy: &TcpProxy,
    down: &mut TcpStream,
    mut up: TcpStream,
    filters: &mut [Box<dyn NetworkFilter>],
    info: &mut ConnectionInfo,
    out: &mut Outcome,
    cs: &crate::upstream::ClusterStats,
) {
    let _ = up.set_nodelay(true);
    let (mut dr, mut dw) = down.split();
    let (mut ur, mut uw) = up.split();
    let mut dbuf = BytesMut::with_capacity(BUF);
    let mut ubuf = BytesMut::with_capacity(BUF);
    let (mut down_open, mut up_open) = (true, true);
    let idle = proxy.config.idle_timeout;
    let sleep = tokio::time::sleep(idle.unwrap_or(std::time::Duration::from_secs(86_400 * 365)));
    tokio::pin!(sleep);
    while down_open || up_open {
        dbuf.reserve(BUF);
        ubuf.reserve(BUF);
        let (dspare, uspare) = (dbuf.capacity() - dbuf.len(), ubuf.capacity() - ubuf.len());
        tokio::select! {
            r = dr.read_buf(&mut dbuf), if down_open => {
                let n = r.unwrap_or(0);
                if n > 0 && n < dspare {
                    drained(dr.as_ref());
                }
                let eos = n == 0;
                for f in filters.iter_mut() {
                    if f.on_read(&mut dbuf, eos, info).await == NetworkAction::Close {
                        // A protocol filter may have said how to fail just this
                        // request; otherwise the connection ends.
                        let Some(reply) = info.deny_response.take() else {
                            return;
                        };
                        dbuf.clear();
                        if !answer(proxy, &mut dw, filters, info, out, reply).await {
                            return;
                        }
                        break;
                    }
                }
                if !dbuf.is_empty() {
                    out.rx += dbuf.len() as u64;
                    proxy.stats.downstream_cx_rx_bytes_total.add(dbuf.len() as u64);
                    cs.upstream_cx_tx_bytes_total.add(dbuf.len() as u64);
                    if uw.write_all(&dbuf).await.is_err() {
                        return;
                    }
                    dbuf.clear();
                }
                if eos {
                    down_open = false;
                    let _ = uw.shutdown().await;
                }
            }
            r = ur.read_buf(&mut ubuf), if up_open => {
                let n = r.unwrap_or(0);
                if n > 0 && n < uspare {
                    drained(ur.as_ref());
                }
                let eos = n == 0;
                for f in filters.iter_mut().rev() {
                    if f.on_write(&mut ubuf, eos, info).await == NetworkAction::Close {
                        return;
                    }
                }
                if !ubuf.is_empty() {
                    out.tx += ubuf.len() as u64;
                    proxy.stats.downstream_cx_tx_bytes_total.add(ubuf.len() as u64);
                    cs.upstream_cx_rx_bytes_total.add(ubuf.len() as u64);
                    if dw.write_all(&ubuf).await.is_err() {
                        return;
                    }
                    ubuf.clear();
                }
                if eos {
                    up_open = false;
                    let _ = dw.shutdown().await;
                }
            }
            _ = &mut sleep, if idle.is_some() => {
                proxy.stats.idle_timeout.inc();
                return;
            }
        }
        if let Some(d) = idle {
            sleep.as_mut().reset(tokio::time::Instant::now() + d);
        }
    }
}

/// Writes a filter's answer to the client in place of the upstream's, through the
/// filters' `on_write`; false when a filter closed the connection or the write failed.
async fn answer(
    proxy: &TcpProxy,
    dw: &mut tokio::net::tcp::WriteHalf<'_>,
    filters: &mut [Box<dyn NetworkFilter>],
    info: &mut ConnectionInfo,
    out: &mut Outcome,
    reply: bytes::Bytes,
) -> bool {
    let mut reply = BytesMut::from(reply);
    for f in filters.iter_mut().rev() {
        if f.on_write(&mut reply, false, info).await == NetworkAction::Close {
            return false;
        }
    }
    out.tx += reply.len() as u64;
    proxy
        .stats
        .downstream_cx_tx_bytes_total
        .add(reply.len() as u64);
    dw.write_all(&reply).await.is_ok()
}
