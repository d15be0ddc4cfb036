//! Network (L4) filters.
//!
//! A listener's filter chain is a list of [`NetworkFilter`]s followed by one terminal
//! filter. The host reads the downstream socket, runs each chunk through the filters
//! in order, and hands what survives to the terminal filter through [`DownstreamIo`].
//! Bytes the terminal writes back run through the filters' `on_write` in reverse.

use std::net::SocketAddr;

use async_trait::async_trait;
use bytes::BytesMut;

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
