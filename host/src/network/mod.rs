//! Network filter chains: the read/write filters of a chain and its terminal filter.

pub mod tcp_proxy;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use legate_filter_api::network::{
    ConnectionInfo, NetworkAction, NetworkFilter, NetworkFilterFactory,
};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::http::Hcm;
use crate::server::Worker;

/// The last filter of a chain.
pub enum Terminal {
    TcpProxy(Arc<tcp_proxy::TcpProxy>),
    Http(Arc<Hcm>),
}

/// A filter chain of one config version, shared by every worker.
pub struct Chain {
    pub destination_port: Option<u16>,
    pub filters: Vec<Arc<dyn NetworkFilterFactory>>,
    pub terminal: Terminal,
}

/// Runs one accepted connection through its chain.
pub async fn serve(
    chain: &Chain,
    worker: Rc<Worker>,
    stream: TcpStream,
    remote: SocketAddr,
    local: SocketAddr,
    id: u64,
    drain: watch::Receiver<bool>,
) {
    let mut info = ConnectionInfo {
        remote_address: remote,
        local_address: local,
        connection_id: id,
        dynamic_metadata: Default::default(),
    };
    let mut filters: Vec<Box<dyn NetworkFilter>> =
        chain.filters.iter().map(|f| f.create()).collect();
    for f in filters.iter_mut() {
        if f.on_new_connection(&mut info).await == NetworkAction::Close {
            for f in filters.iter_mut() {
                f.on_close(&info);
            }
            return;
        }
    }
    match &chain.terminal {
        Terminal::TcpProxy(t) => {
            tcp_proxy::serve(t.clone(), worker, stream, filters, info, drain).await
        }
        Terminal::Http(h) => {
            // Read filters before the connection manager come with the first
            // filter that needs them; the parser refuses such chains until then.
            debug_assert!(filters.is_empty());
            crate::http::serve(h.clone(), worker, stream, remote, local, id, drain).await
        }
    }
}
