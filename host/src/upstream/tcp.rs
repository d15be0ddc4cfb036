//! Clusters as terminal network filters use them ([`TcpClusters`]): the Redis
//! proxy picks a host by key hash and keeps its own connection to it.

use std::any::Any;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use legate_filter_api::network::{ConnectFuture, TcpCluster, TcpClusters};

use super::{HostAddress, WorkerCluster, WorkerClusters};

impl TcpClusters for WorkerClusters {
    fn get(&self, name: &str) -> Option<Rc<dyn TcpCluster>> {
        WorkerClusters::get(self, name).map(|c| c.clone() as Rc<dyn TcpCluster>)
    }
}

impl TcpCluster for WorkerCluster {
    fn name(&self) -> &str {
        WorkerCluster::name(self)
    }

    fn pick(&self, hash: u64) -> Option<SocketAddr> {
        match self.pick_host_for_hash(hash)?.address {
            HostAddress::Ip(a) => Some(a),
            // The config parser refuses LOGICAL_DNS clusters behind these filters.
            HostAddress::Dns(..) => None,
        }
    }

    fn hosts(&self) -> Vec<SocketAddr> {
        self.shared
            .hosts()
            .iter()
            .filter_map(|h| match h.address {
                HostAddress::Ip(a) => Some(a),
                HostAddress::Dns(..) => None,
            })
            .collect()
    }

    fn connect(&self, addr: SocketAddr) -> ConnectFuture<'_> {
        Box::pin(async move {
            let stream = self
                .connect_addr(addr)
                .await
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            self.shared.stats.upstream_cx_active.inc();
            Ok(stream)
        })
    }

    fn closed(&self, rx_bytes: u64, tx_bytes: u64) {
        let s = &self.shared.stats;
        s.upstream_cx_active.dec();
        s.upstream_cx_destroy.inc();
        s.upstream_cx_rx_bytes_total.add(rx_bytes);
        s.upstream_cx_tx_bytes_total.add(tx_bytes);
    }

    fn count_requests(&self, total: u64, timeouts: u64) {
        let s = &self.shared.stats;
        s.upstream_rq_total.add(total);
        s.upstream_rq_timeout.add(timeouts);
    }

    fn protocol_options(&self, filter: &str) -> Option<Arc<dyn Any + Send + Sync>> {
        self.shared.config.protocol_options.get(filter)
    }
}
