//! Connections to Redis servers. A worker keeps one per server and shares it by
//! every client connection of that worker: commands from many clients are
//! written as one batch, and the replies, which come back in order, are handed
//! back to whoever sent each command.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use legate_filter_api::network::{TcpCluster, drained};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::commands::reply;
use crate::proxy::Session;
use crate::resp::{Decoder, Frame, Value};
use crate::stats::UpstreamCommandStats;

/// Who gets a reply.
pub(crate) enum Waiter {
    /// The reply to the proxy's own `auth`, `multi` or `asking`, or to a
    /// mirrored command: dropped.
    Discard,
    /// Part `part` of the session's request number `seq`.
    Session {
        session: Rc<Session>,
        seq: u64,
        part: u32,
    },
}

impl Waiter {
    fn deliver(self, reply: Result<Frame, &'static str>) {
        if let Waiter::Session { session, seq, part } = self {
            session.deliver(seq, part, reply);
        }
    }
}

/// A command waiting for its reply.
struct Queued {
    waiter: Waiter,
    sent: Instant,
    stats: Option<Rc<UpstreamCommandStats>>,
}

impl Queued {
    fn deliver(self, reply: Result<Frame, &'static str>) {
        if let Some(s) = &self.stats {
            match &reply {
                Ok(Frame {
                    value: Value::Error(_),
                    ..
                })
                | Err(_) => s.failure.inc(),
                Ok(_) => s.success.inc(),
            }
            s.latency
                .record(self.sent.elapsed().as_secs_f64() * 1_000_000.0);
        }
        self.waiter.deliver(reply);
    }
}

/// How an upstream connection batches writes.
#[derive(Clone, Copy)]
pub(crate) struct Settings {
    pub op_timeout: Duration,
    /// 0: write at the end of each event-loop turn.
    pub max_buffer_size_before_flush: usize,
    pub buffer_flush_timeout: Duration,
}

struct State {
    /// Bytes not yet written.
    out: BytesMut,
    /// When the oldest unwritten byte must go out (batching only).
    flush_at: Option<Instant>,
    /// One per command written or to be written, in order, with its send time
    /// and, with `enable_command_stats`, its stats.
    waiters: VecDeque<Queued>,
    /// A task owns the connection (connecting or connected).
    running: bool,
    /// The pool is gone: no new task.
    closed: bool,
    /// Close once every reply is in (a transaction's own connection).
    close_when_idle: bool,
}

/// One server's connection on this worker.
pub(crate) struct Upstream {
    cluster: Rc<dyn TcpCluster>,
    addr: SocketAddr,
    settings: Settings,
    /// `auth [user] password`, sent first on every new connection.
    hello: Option<Bytes>,
    state: RefCell<State>,
    wake: Notify,
}

impl Upstream {
    pub fn new(
        cluster: Rc<dyn TcpCluster>,
        addr: SocketAddr,
        settings: Settings,
        hello: Option<Bytes>,
    ) -> Rc<Upstream> {
        Rc::new(Upstream {
            cluster,
            addr,
            settings,
            hello,
            state: RefCell::new(State {
                out: BytesMut::new(),
                flush_at: None,
                waiters: VecDeque::new(),
                running: false,
                closed: false,
                close_when_idle: false,
            }),
            wake: Notify::new(),
        })
    }

    /// Queues one command, sent at `now`; its reply goes to `waiter`.
    pub fn send(self: &Rc<Self>, command: &[u8], waiter: Waiter, now: Instant) {
        self.send_counted(command, waiter, now, None);
    }

    /// [`Upstream::send`], counting the command in `stats`.
    pub fn send_counted(
        self: &Rc<Self>,
        command: &[u8],
        waiter: Waiter,
        now: Instant,
        stats: Option<Rc<UpstreamCommandStats>>,
    ) {
        let start = {
            let mut st = self.state.borrow_mut();
            if st.closed {
                drop(st);
                waiter.deliver(Err(reply::UPSTREAM_FAILURE));
                return;
            }
            let start = !st.running;
            if start {
                st.running = true;
                if let Some(h) = &self.hello {
                    st.out.extend_from_slice(h);
                    st.waiters.push_back(Queued {
                        waiter: Waiter::Discard,
                        sent: now,
                        stats: None,
                    });
                }
            }
            if st.out.is_empty() && self.settings.max_buffer_size_before_flush > 0 {
                st.flush_at = Some(now + self.settings.buffer_flush_timeout);
            }
            st.out.extend_from_slice(command);
            if let Some(s) = &stats {
                s.total.inc();
            }
            st.waiters.push_back(Queued {
                waiter,
                sent: now,
                stats,
            });
            start
        };
        self.cluster.count_requests(1, 0);
        if start {
            let me = self.clone();
            tokio::task::spawn_local(async move { me.run().await });
        } else {
            self.wake.notify_one();
        }
    }

    /// Fails every queued command and stops new ones (the config version is gone).
    pub fn close(&self) {
        let mut st = self.state.borrow_mut();
        st.closed = true;
        drop(st);
        self.wake.notify_one();
    }

    /// Closes the connection once the replies already asked for are in.
    pub fn close_when_idle(&self) {
        self.state.borrow_mut().close_when_idle = true;
        self.wake.notify_one();
    }

    /// Owns the connection until it fails, times out or the pool closes.
    async fn run(self: Rc<Self>) {
        // A failed connect is counted by the cluster (`upstream_cx_connect_fail`)
        // and answers the queued commands `upstream failure`.
        if let Ok(stream) = self.cluster.connect(self.addr).await {
            let (rx, tx) = self.serve(stream).await;
            self.cluster.closed(rx, tx);
        }
        let failed = {
            let mut st = self.state.borrow_mut();
            st.running = false;
            st.out.clear();
            st.flush_at = None;
            std::mem::take(&mut st.waiters)
        };
        for q in failed {
            q.deliver(Err(reply::UPSTREAM_FAILURE));
        }
    }

    /// Relays until the connection breaks; returns the bytes read and written.
    async fn serve(&self, stream: TcpStream) -> (u64, u64) {
        let mut rbuf = BytesMut::with_capacity(16 * 1024);
        let mut decoder = Decoder::new();
        let (mut rx, mut tx) = (0u64, 0u64);
        // The op_timeout timer is armed for the oldest waiter and re-armed only
        // when it fires, not for every reply.
        let op_timer = tokio::time::sleep(self.settings.op_timeout);
        tokio::pin!(op_timer);
        let mut armed = false;
        loop {
            // Write what may go now.
            let (want_write, flush_at, oldest, closed) = {
                let mut st = self.state.borrow_mut();
                let batching = self.settings.max_buffer_size_before_flush > 0;
                let due = !batching
                    || st.out.len() >= self.settings.max_buffer_size_before_flush
                    || st.flush_at.is_some_and(|t| t <= Instant::now());
                if due && !st.out.is_empty() {
                    match stream.try_write(&st.out) {
                        Ok(n) => {
                            tx += n as u64;
                            let _ = st.out.split_to(n);
                            if st.out.is_empty() {
                                st.flush_at = None;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
                let idle = st.close_when_idle && st.waiters.is_empty() && st.out.is_empty();
                (
                    due && !st.out.is_empty(),
                    if due { None } else { st.flush_at },
                    st.waiters.front().map(|q| q.sent),
                    st.closed || idle,
                )
            };
            if closed {
                break;
            }
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            match oldest {
                Some(t) if !armed => {
                    op_timer.as_mut().reset(t + self.settings.op_timeout);
                    armed = true;
                }
                None => armed = false,
                _ => {}
            }
            tokio::select! {
                ready = stream.ready(interest) => {
                    let Ok(ready) = ready else { break };
                    if ready.is_readable() {
                        let spare = rbuf.capacity() - rbuf.len();
                        match stream.try_read_buf(&mut rbuf) {
                            Ok(0) => break,
                            Ok(n) => {
                                rx += n as u64;
                                if n < spare {
                                    drained(&stream);
                                }
                                if !self.replies(&mut decoder, &mut rbuf) {
                                    break;
                                }
                            }
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                            Err(_) => break,
                        }
                    }
                }
                _ = self.wake.notified() => {}
                _ = sleep_until(flush_at) => {}
                _ = &mut op_timer, if armed => {
                    armed = false;
                    let st = self.state.borrow();
                    if st.waiters.front().is_some_and(|q| q.sent.elapsed() >= self.settings.op_timeout) {
                        self.cluster.count_requests(0, 1);
                        break;
                    }
                }
            }
            if rbuf.capacity() - rbuf.len() < 4096 {
                rbuf.reserve(16 * 1024);
            }
        }
        (rx, tx)
    }

    /// Hands every whole reply in `buf` to its waiter; false on a protocol error
    /// or a reply nobody asked for.
    fn replies(&self, decoder: &mut Decoder, buf: &mut BytesMut) -> bool {
        loop {
            match decoder.decode(buf) {
                Ok(Some(frame)) => {
                    let q = self.state.borrow_mut().waiters.pop_front();
                    match q {
                        Some(q) => q.deliver(Ok(frame)),
                        None => return false,
                    }
                }
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
