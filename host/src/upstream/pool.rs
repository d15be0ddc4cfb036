//! HTTP connection pools: one per worker per host. HTTP/1.1 keeps a bounded stack
//! of idle keep-alive connections; HTTP/2 multiplexes over one connection.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::{ClusterShared, ConnectError, Host, WorkerCluster};
use crate::http::body::Body;
use crate::server::LocalExec;
use crate::stats::Counter;

/// Idle HTTP/1.1 connections kept per host per worker.
const MAX_IDLE_H1: usize = 128;

/// A socket that counts its bytes into stats.
pub struct CountingIo<S> {
    inner: S,
    rx: Counter,
    tx: Counter,
}

impl<S> CountingIo<S> {
    pub fn new(inner: S, rx: Counter, tx: Counter) -> Self {
        CountingIo { inner, rx, tx }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.rx.add(n as u64);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.tx.add(*n as u64);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &r {
            self.tx.add(*n as u64);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

type Io = TokioIo<CountingIo<TcpStream>>;

pub struct HostPool {
    pub addr: SocketAddr,
    http2: bool,
    cluster: Arc<ClusterShared>,
    idle: RefCell<Vec<http1::SendRequest<Body>>>,
    h2: RefCell<Option<http2::SendRequest<Body>>>,
    /// An HTTP/2 connect in progress; requests that arrive meanwhile wait for it
    /// instead of opening connections of their own.
    h2_connecting: RefCell<Option<Rc<H2Connect>>>,
}

type H2Connect = tokio::sync::OnceCell<Result<http2::SendRequest<Body>, ConnectError>>;

/// A connection checked out for one request.
pub enum Sender {
    /// Goes back to the pool when the response body ends.
    Http1(http1::SendRequest<Body>),
    Http2(http2::SendRequest<Body>),
}

/// Why a request failed before response headers arrived.
#[derive(Debug)]
pub enum SendError {
    Connect(ConnectError),
    /// The connection was reset or closed before the response headers.
    Reset(hyper::Error),
}

impl HostPool {
    pub fn new(addr: SocketAddr, http2: bool, cluster: Arc<ClusterShared>) -> HostPool {
        HostPool {
            addr,
            http2,
            cluster,
            idle: RefCell::new(Vec::new()),
            h2: RefCell::new(None),
            h2_connecting: RefCell::new(None),
        }
    }

    fn io(&self, s: TcpStream) -> Io {
        let st = &self.cluster.stats;
        TokioIo::new(CountingIo::new(
            s,
            st.upstream_cx_rx_bytes_total.clone(),
            st.upstream_cx_tx_bytes_total.clone(),
        ))
    }

    fn spawn_conn<F>(&self, conn: F)
    where
        F: std::future::Future<Output = Result<(), hyper::Error>> + 'static,
    {
        let cluster = self.cluster.clone();
        cluster.stats.upstream_cx_active.inc();
        tokio::task::spawn_local(async move {
            if let Err(e) = conn.await {
                tracing::debug!(cluster = %cluster.config.name, "upstream connection ended: {e}");
            }
            cluster.stats.upstream_cx_active.dec();
            cluster.stats.upstream_cx_destroy.inc();
        });
    }

    async fn connect_h1(
        &self,
        wc: &WorkerCluster,
        host: &Host,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        let (s, _) = wc.connect(host).await.map_err(SendError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(self.io(s))
            .await
            .map_err(SendError::Reset)?;
        self.cluster.stats.upstream_cx_http1_total.inc();
        self.spawn_conn(conn);
        Ok(sender)
    }

    async fn connect_h2(
        &self,
        wc: &WorkerCluster,
        host: &Host,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        let (s, _) = wc.connect(host).await.map_err(SendError::Connect)?;
        let (sender, conn) = http2::Builder::new(LocalExec)
            .timer(hyper_util::rt::TokioTimer::new())
            .handshake(self.io(s))
            .await
            .map_err(SendError::Reset)?;
        self.cluster.stats.upstream_cx_http2_total.inc();
        self.spawn_conn(conn);
        Ok(sender)
    }

    /// A ready connection: an idle one, or a new one.
    pub async fn checkout(&self, wc: &WorkerCluster, host: &Host) -> Result<Sender, SendError> {
        if self.http2 {
            let existing = self.h2.borrow().clone();
            if let Some(s) = existing
                && !s.is_closed()
            {
                return Ok(Sender::Http2(s));
            }
            let attempt = self
                .h2_connecting
                .borrow_mut()
                .get_or_insert_with(|| Rc::new(H2Connect::new()))
                .clone();
            let result = attempt
                .get_or_init(|| async {
                    self.connect_h2(wc, host).await.map_err(|e| match e {
                        SendError::Connect(c) => c,
                        SendError::Reset(h) => ConnectError::Io(Arc::new(io::Error::other(h))),
                    })
                })
                .await
                .clone();
            {
                let mut slot = self.h2_connecting.borrow_mut();
                if slot.as_ref().is_some_and(|a| Rc::ptr_eq(a, &attempt)) {
                    *slot = None;
                }
            }
            let s = result.map_err(SendError::Connect)?;
            *self.h2.borrow_mut() = Some(s.clone());
            return Ok(Sender::Http2(s));
        }
        loop {
            let popped = self.idle.borrow_mut().pop();
            match popped {
                // Not ready yet may just mean the last response is still being
                // wrapped up; `send` waits for readiness. Only closed ones go.
                Some(s) if !s.is_closed() => return Ok(Sender::Http1(s)),
                Some(_) => continue,
                None => break,
            }
        }
        Ok(Sender::Http1(self.connect_h1(wc, host).await?))
    }

    /// Returns a connection whose response finished.
    pub fn checkin(&self, s: http1::SendRequest<Body>) {
        let mut idle = self.idle.borrow_mut();
        if !s.is_closed() && idle.len() < MAX_IDLE_H1 {
            idle.push(s);
        }
    }

    /// Sends a request on a pooled connection. A reused HTTP/1.1 connection that the
    /// server closed meanwhile is retried once on a fresh one, since the request
    /// never left.
    pub async fn send(
        self: &Rc<Self>,
        wc: &WorkerCluster,
        host: &Host,
        mut req: Request<Body>,
    ) -> Result<(Response<Incoming>, Option<PoolReturn>), SendError> {
        let mut fresh_tried = false;
        // Every idle connection may turn out closed, then one fresh one may too;
        // past that the host is refusing us, not racing a keep-alive close.
        let mut not_ready = 0;
        loop {
            match self.checkout(wc, host).await? {
                Sender::Http2(mut s) => {
                    return s
                        .send_request(req)
                        .await
                        .map(|r| (r, None))
                        .map_err(SendError::Reset);
                }
                Sender::Http1(mut s) => {
                    if let Err(e) = s.ready().await {
                        not_ready += 1;
                        if not_ready > MAX_IDLE_H1 + 1 {
                            return Err(SendError::Reset(e));
                        }
                        continue;
                    }
                    match s.try_send_request(req).await {
                        Ok(resp) => {
                            let ret = PoolReturn {
                                sender: Some(s),
                                pool: Rc::downgrade(self),
                            };
                            return Ok((resp, Some(ret)));
                        }
                        Err(mut e) => match e.take_message() {
                            Some(r) if !fresh_tried => {
                                fresh_tried = true;
                                req = r;
                                self.idle.borrow_mut().clear();
                            }
                            _ => return Err(SendError::Reset(e.into_error())),
                        },
                    }
                }
            }
        }
    }

    /// A dedicated HTTP/1.1 connection with upgrades enabled (WebSocket).
    pub async fn send_upgrade(
        &self,
        wc: &WorkerCluster,
        host: &Host,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let (s, _) = wc.connect(host).await.map_err(SendError::Connect)?;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(self.io(s))
            .await
            .map_err(SendError::Reset)?;
        self.cluster.stats.upstream_cx_http1_total.inc();
        self.spawn_conn(conn.with_upgrades());
        sender.send_request(req).await.map_err(SendError::Reset)
    }
}

/// Puts an HTTP/1.1 connection back into its pool once the response body ended.
pub struct PoolReturn {
    sender: Option<http1::SendRequest<Body>>,
    pool: Weak<HostPool>,
}

impl PoolReturn {
    pub fn release(mut self) {
        if let (Some(s), Some(p)) = (self.sender.take(), self.pool.upgrade()) {
            p.checkin(s);
        }
    }
}
