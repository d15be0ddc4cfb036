//! Network filter chains: the read/write filters of a chain and its terminal filter.

pub mod tcp_proxy;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::BytesMut;
use legate_filter_api::network::{
    ConnectionInfo, DownstreamIo, DownstreamRead, DownstreamWrite, NetworkAction, NetworkFilter,
    NetworkFilterFactory, TcpClusters, TerminalFilterFactory,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

use crate::http::Hcm;
use crate::server::Worker;

/// The last filter of a chain.
pub enum Terminal {
    TcpProxy(Arc<tcp_proxy::TcpProxy>),
    Http(Arc<Hcm>),
    /// A terminal filter from a filter crate (`filters/*`), through the API's
    /// [`TerminalFilterFactory`].
    Filter(Arc<dyn TerminalFilterFactory>),
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
    life: watch::Receiver<u8>,
) {
    let mut info = ConnectionInfo::new(remote, local, id);
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
            tcp_proxy::serve(t.clone(), worker, stream, filters, info, life).await
        }
        Terminal::Filter(f) => {
            let io = Downstream {
                stream,
                chain: FilterChain { filters, info },
                closed: false,
                clusters: worker.clusters.clone(),
            };
            f.create().serve(Box::new(io)).await;
        }
        Terminal::Http(h) => {
            // Read filters before the connection manager come with the first
            // filter that needs them; the parser refuses such chains until then.
            debug_assert!(filters.is_empty());
            crate::http::serve(h.clone(), worker, stream, remote, local, id, life).await
        }
    }
}

const READ_CHUNK: usize = 16 * 1024;

/// The chain's read/write filters and the connection's info. `on_close` runs
/// when it is dropped, after the terminal filter let go of the connection.
struct FilterChain {
    filters: Vec<Box<dyn NetworkFilter>>,
    info: ConnectionInfo,
}

impl FilterChain {
    /// Runs `on_read` in order; false when a filter closed the connection.
    async fn read(&mut self, buf: &mut BytesMut, eos: bool) -> bool {
        for f in self.filters.iter_mut() {
            if f.on_read(buf, eos, &mut self.info).await == NetworkAction::Close {
                return false;
            }
        }
        true
    }

    /// Runs `on_write` in reverse order; false when a filter closed the connection.
    async fn write(&mut self, data: &mut BytesMut) -> bool {
        for f in self.filters.iter_mut().rev() {
            if f.on_write(data, false, &mut self.info).await == NetworkAction::Close {
                return false;
            }
        }
        true
    }
}

impl Drop for FilterChain {
    fn drop(&mut self) {
        for f in self.filters.iter_mut() {
            f.on_close(&self.info);
        }
    }
}

async fn read_chunk<R: AsyncReadExt + Unpin>(
    rd: &mut R,
    chain: &mut FilterChain,
    closed: &mut bool,
) -> std::io::Result<Option<BytesMut>> {
    while !*closed {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let eos = rd.read_buf(&mut buf).await? == 0;
        if !chain.read(&mut buf, eos).await {
            *closed = true;
            return Ok(None);
        }
        *closed = eos;
        if !buf.is_empty() {
            return Ok(Some(buf));
        }
    }
    Ok(None)
}

/// The downstream socket as a terminal filter sees it: reads pass the chain's
/// `on_read` in order, writes pass `on_write` in reverse.
struct Downstream {
    stream: TcpStream,
    chain: FilterChain,
    closed: bool,
    clusters: Rc<crate::upstream::WorkerClusters>,
}

#[async_trait(?Send)]
impl DownstreamIo for Downstream {
    async fn read(&mut self) -> std::io::Result<Option<BytesMut>> {
        read_chunk(&mut self.stream, &mut self.chain, &mut self.closed).await
    }

    async fn write(&mut self, mut data: BytesMut) -> std::io::Result<()> {
        if !self.chain.write(&mut data).await {
            self.closed = true;
            let _ = self.stream.shutdown().await;
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        }
        self.stream.write_all(&data).await
    }

    async fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.stream.shutdown().await
    }

    fn info(&mut self) -> &mut ConnectionInfo {
        &mut self.chain.info
    }

    fn clusters(&self) -> Rc<dyn TcpClusters> {
        self.clusters.clone()
    }

    fn split(self: Box<Self>) -> (Box<dyn DownstreamRead>, Box<dyn DownstreamWrite>) {
        let Downstream {
            stream,
            chain,
            closed,
            ..
        } = *self;
        let (rd, wr) = stream.into_split();
        // The halves run concurrently; an async lock keeps a filter's `on_read`
        // and `on_write` from overlapping. Without filters it is never taken.
        let has_filters = !chain.filters.is_empty();
        let chain = Rc::new(tokio::sync::Mutex::new(chain));
        (
            Box::new(ReadHalf {
                rd,
                chain: chain.clone(),
                has_filters,
                closed,
            }),
            Box::new(WriteHalf {
                wr,
                chain,
                has_filters,
            }),
        )
    }
}

struct ReadHalf {
    rd: OwnedReadHalf,
    chain: Rc<tokio::sync::Mutex<FilterChain>>,
    has_filters: bool,
    closed: bool,
}

#[async_trait(?Send)]
impl DownstreamRead for ReadHalf {
    async fn read(&mut self) -> std::io::Result<Option<BytesMut>> {
        if !self.has_filters {
            if self.closed {
                return Ok(None);
            }
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let n = self.rd.read_buf(&mut buf).await?;
            if n == 0 {
                self.closed = true;
                return Ok(None);
            }
            if buf.len() < buf.capacity() {
                legate_filter_api::network::drained(self.rd.as_ref());
            }
            return Ok(Some(buf));
        }
        let mut chain = self.chain.lock().await;
        read_chunk(&mut self.rd, &mut chain, &mut self.closed).await
    }
}

struct WriteHalf {
    wr: OwnedWriteHalf,
    chain: Rc<tokio::sync::Mutex<FilterChain>>,
    has_filters: bool,
}

#[async_trait(?Send)]
impl DownstreamWrite for WriteHalf {
    async fn write(&mut self, mut data: BytesMut) -> std::io::Result<()> {
        if self.has_filters && !self.chain.lock().await.write(&mut data).await {
            let _ = self.wr.shutdown().await;
            return Err(std::io::ErrorKind::ConnectionAborted.into());
        }
        self.wr.write_all(&data).await
    }

    async fn shutdown_write(&mut self) -> std::io::Result<()> {
        self.wr.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::sync::atomic::AtomicBool;

    use legate_filter_api::network::TerminalFilter;

    use super::*;
    use crate::upstream::ClusterManager;

    /// A terminal that answers each chunk in upper case until the client closes,
    /// through the split halves.
    struct Upper;

    #[async_trait(?Send)]
    impl TerminalFilter for Upper {
        async fn serve(self: Box<Self>, io: Box<dyn DownstreamIo>) {
            let (mut rd, mut wr) = io.split();
            while let Ok(Some(chunk)) = rd.read().await {
                let up = BytesMut::from(&chunk.to_ascii_uppercase()[..]);
                if wr.write(up).await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown_write().await;
        }
    }

    struct UpperFactory;
    impl TerminalFilterFactory for UpperFactory {
        fn create(&self) -> Box<dyn TerminalFilter> {
            Box::new(Upper)
        }
    }

    /// A read filter that drops the word "secret" and records the close.
    struct Redact(Rc<RefCell<bool>>);

    #[async_trait(?Send)]
    impl NetworkFilter for Redact {
        async fn on_read(
            &mut self,
            data: &mut BytesMut,
            _eos: bool,
            _info: &mut ConnectionInfo,
        ) -> NetworkAction {
            let text = String::from_utf8_lossy(data).replace("secret", "");
            *data = BytesMut::from(text.as_bytes());
            NetworkAction::Continue
        }
        fn on_close(&mut self, _info: &ConnectionInfo) {
            *self.0.borrow_mut() = true;
        }
    }

    #[tokio::test]
    async fn terminal_filters_plug_in_through_the_api() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let closed = Rc::new(RefCell::new(false));
                let cm = ClusterManager::new(&[]);
                let worker = Rc::new(Worker::new(&cm, Arc::new(AtomicBool::new(false))));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let (_tx, drain) = watch::channel(0u8);
                let flag = closed.clone();
                tokio::task::spawn_local(async move {
                    let (s, remote) = listener.accept().await.unwrap();
                    let chain = Chain {
                        destination_port: None,
                        filters: Vec::new(),
                        terminal: Terminal::Filter(Arc::new(UpperFactory)),
                    };
                    // Factories are Send + Sync and this filter holds an Rc, so
                    // the test builds the connection's filters as `serve` would.
                    let mut info = ConnectionInfo::new(remote, addr, 1);
                    let mut filters: Vec<Box<dyn NetworkFilter>> = vec![Box::new(Redact(flag))];
                    for f in filters.iter_mut() {
                        f.on_new_connection(&mut info).await;
                    }
                    let Terminal::Filter(t) = &chain.terminal else {
                        unreachable!()
                    };
                    let io = Downstream {
                        stream: s,
                        chain: FilterChain { filters, info },
                        closed: false,
                        clusters: worker.clusters.clone(),
                    };
                    t.create().serve(Box::new(io)).await;
                    drop((worker, drain));
                });
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"hello secret world").await.unwrap();
                s.shutdown().await.unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.unwrap();
                assert_eq!(out, b"HELLO  WORLD");
                tokio::task::yield_now().await;
                assert!(*closed.borrow(), "filters hear about the close");
            })
            .await;
    }

    #[tokio::test]
    async fn serve_runs_a_filter_terminal() {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async {
                let cm = ClusterManager::new(&[]);
                let worker = Rc::new(Worker::new(&cm, Arc::new(AtomicBool::new(false))));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let (_tx, drain) = watch::channel(0u8);
                tokio::task::spawn_local(async move {
                    let (s, remote) = listener.accept().await.unwrap();
                    let chain = Chain {
                        destination_port: None,
                        filters: Vec::new(),
                        terminal: Terminal::Filter(Arc::new(UpperFactory)),
                    };
                    serve(&chain, worker, s, remote, addr, 7, drain).await;
                });
                let mut s = TcpStream::connect(addr).await.unwrap();
                s.write_all(b"abc").await.unwrap();
                s.shutdown().await.unwrap();
                let mut out = Vec::new();
                s.read_to_end(&mut out).await.unwrap();
                assert_eq!(out, b"ABC");
            })
            .await;
    }
}
