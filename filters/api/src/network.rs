//! Network (L4) filters.
//!
//! A listener's filter chain is a list of [`NetworkFilter`]s followed by one terminal
//! filter. The host reads the downstream socket, runs each chunk through the filters
//! in order, and hands what survives to the terminal filter through [`DownstreamIo`].
//! Bytes the terminal writes back run through the filters' `on_write` in reverse.

use std::any::Any;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;

use crate::DynamicMetadata;

/// Facts about a downstream connection, and metadata shared by its filters.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The downstream peer.
    pub remote_address: SocketAddr,
    /// The local address the connection arrived on.
    pub local_address: SocketAddr,
    /// The connection's id, unique within the process.
    pub connection_id: u64,
    /// Metadata set by filters, per filter namespace (e.g. `envoy.filters.network.mysql_proxy`).
    pub dynamic_metadata: DynamicMetadata,
    /// What to answer the client, instead of closing, when a filter returns
    /// [`NetworkAction::Close`] from `on_read`: a protocol-aware filter sets it for
    /// a read that holds exactly one request (mysql_proxy's ERR packet), so that a
    /// later filter's denial (network RBAC) fails that request and not the
    /// connection. The read's bytes are dropped and the answer passes the chain's
    /// `on_write` like a server's. Honoured by `tcp_proxy` chains.
    pub deny_response: Option<Bytes>,
}

impl ConnectionInfo {
    /// Info for a new connection, with no metadata yet.
    pub fn new(remote_address: SocketAddr, local_address: SocketAddr, connection_id: u64) -> Self {
        ConnectionInfo {
            remote_address,
            local_address,
            connection_id,
            dynamic_metadata: DynamicMetadata::default(),
            deny_response: None,
        }
    }
}

/// What a network filter wants after seeing data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NetworkAction {
    /// Pass the (possibly rewritten) data on.
    Continue,
    /// Close the connection.
    Close,
}

/// A per-connection network filter that sits before the terminal filter.
#[async_trait(?Send)]
pub trait NetworkFilter {
    /// A connection was accepted.
    async fn on_new_connection(&mut self, _info: &mut ConnectionInfo) -> NetworkAction {
        NetworkAction::Continue
    }

    /// Bytes arrived from the downstream client. The filter may rewrite `data`.
    /// `end_stream` is true when the client half-closed.
    async fn on_read(
        &mut self,
        _data: &mut BytesMut,
        _end_stream: bool,
        _info: &mut ConnectionInfo,
    ) -> NetworkAction {
        NetworkAction::Continue
    }

    /// Bytes are about to be written to the downstream client. The filter may
    /// rewrite `data`.
    async fn on_write(
        &mut self,
        _data: &mut BytesMut,
        _end_stream: bool,
        _info: &mut ConnectionInfo,
    ) -> NetworkAction {
        NetworkAction::Continue
    }

    /// The connection closed.
    fn on_close(&mut self, _info: &ConnectionInfo) {}
}

/// Builds per-connection [`NetworkFilter`]s; made once per config version and
/// shared by every worker.
pub trait NetworkFilterFactory: Send + Sync {
    /// Makes the filter for a new connection.
    fn create(&self) -> Box<dyn NetworkFilter>;
}

/// The downstream connection as a terminal filter sees it: reads have passed the
/// chain's `on_read`, writes pass the chain's `on_write`.
#[async_trait(?Send)]
pub trait DownstreamIo {
    /// The next chunk from the client; `None` when the client half-closed or a filter
    /// closed the connection.
    async fn read(&mut self) -> std::io::Result<Option<BytesMut>>;
    /// Writes bytes to the client.
    async fn write(&mut self, data: BytesMut) -> std::io::Result<()>;
    /// Half-closes the client side for writing.
    async fn shutdown_write(&mut self) -> std::io::Result<()>;
    /// The connection's info and metadata.
    fn info(&mut self) -> &mut ConnectionInfo;
    /// The clusters of the config version this connection belongs to, for
    /// terminal filters that open their own upstream connections.
    fn clusters(&self) -> Rc<dyn TcpClusters>;
    /// Splits the connection into a read half and a write half, so a terminal
    /// filter can answer pipelined requests while more arrive. The chain's
    /// filters still see every read and write; `on_close` runs once both halves
    /// are dropped.
    fn split(self: Box<Self>) -> (Box<dyn DownstreamRead>, Box<dyn DownstreamWrite>);
}

/// The read half of a split [`DownstreamIo`].
#[async_trait(?Send)]
pub trait DownstreamRead {
    /// As [`DownstreamIo::read`].
    async fn read(&mut self) -> std::io::Result<Option<BytesMut>>;
}

/// The write half of a split [`DownstreamIo`].
#[async_trait(?Send)]
pub trait DownstreamWrite {
    /// As [`DownstreamIo::write`].
    async fn write(&mut self, data: BytesMut) -> std::io::Result<()>;
    /// As [`DownstreamIo::shutdown_write`].
    async fn shutdown_write(&mut self) -> std::io::Result<()>;
}

/// The future of [`TcpCluster::connect`].
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = std::io::Result<TcpStream>> + 'a>>;

/// The clusters of a config version as one worker sees them. Not `Send`: each
/// worker has its own.
pub trait TcpClusters {
    /// The cluster called `name`, if the config has one.
    fn get(&self, name: &str) -> Option<Rc<dyn TcpCluster>>;
}

/// One cluster, for a terminal filter that keeps its own connections to the
/// cluster's hosts (the Redis proxy keeps one per host per worker).
pub trait TcpCluster {
    /// The cluster's name.
    fn name(&self) -> &str;
    /// The host that owns `hash` under the cluster's `lb_policy` (RING_HASH,
    /// MAGLEV); with other policies, the next host the policy picks. `None` when
    /// the cluster has no host (counted as `upstream_cx_none_healthy`).
    fn pick(&self, hash: u64) -> Option<SocketAddr>;
    /// Every host of the cluster, in config order.
    fn hosts(&self) -> Vec<SocketAddr>;
    /// Connects to one of the cluster's hosts within its `connect_timeout`,
    /// counting the cluster's `upstream_cx_*` stats.
    fn connect(&self, addr: SocketAddr) -> ConnectFuture<'_>;
    /// Counts the end of a connection made by [`TcpCluster::connect`]
    /// (`upstream_cx_active`, `upstream_cx_destroy`) and the bytes it carried.
    fn closed(&self, rx_bytes: u64, tx_bytes: u64);
    /// Counts requests sent (`upstream_rq_total`) and timed out
    /// (`upstream_rq_timeout`) on the cluster's connections.
    fn count_requests(&self, total: u64, timeouts: u64);
    /// The cluster's `typed_extension_protocol_options` entry for a filter
    /// (e.g. `envoy.filters.network.redis_proxy`), as the host parsed it.
    fn protocol_options(&self, filter: &str) -> Option<Arc<dyn Any + Send + Sync>>;
}

/// The last filter of a chain: it owns the connection until it ends.
#[async_trait(?Send)]
pub trait TerminalFilter {
    /// Serves the connection to its end.
    async fn serve(self: Box<Self>, io: Box<dyn DownstreamIo>);
}

/// Builds per-connection [`TerminalFilter`]s; made once per config version and
/// shared by every worker.
pub trait TerminalFilterFactory: Send + Sync {
    /// Makes the terminal filter for a new connection.
    fn create(&self) -> Box<dyn TerminalFilter>;
}

/// Marks a socket not readable after a read returned less than it asked for: the
/// kernel had nothing more, so the next read would only say "would block". This
/// saves that system call, a third of a small request/response exchange. Bytes
/// that arrive later raise a new readiness event, as after any "would block".
pub fn drained(stream: &TcpStream) {
    let _ = stream.try_io(tokio::io::Interest::READABLE, || {
        Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
    });
}
