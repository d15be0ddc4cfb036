//! The terminal filter: reads a client's commands, sends each to the server
//! that owns its key, and writes the replies back in the order the commands came.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use foldhash::fast::FixedState;
use legate_filter_api::hash::murmur_hash2;
use legate_filter_api::network::{
    DownstreamIo, DownstreamRead, DownstreamWrite, TcpCluster, TcpClusters, TerminalFilter,
    TerminalFilterFactory,
};
use legate_filter_api::stats::Store;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::commands::{self, Kind, reply};
use crate::config::{Config, FaultKind, Mirror, ProtocolOptions};
use crate::resp::{DOWNSTREAM_PROTOCOL_ERROR, Decoder, Frame, Value};
use crate::split::{self, Merge, Plan};
use crate::stats::{Stats, UpstreamCommandStats};
use crate::upstream::{Settings, Upstream, Waiter};

/// The filter's name in `typed_extension_protocol_options`.
pub const NAME: &str = "envoy.filters.network.redis_proxy";

/// Requests a connection may have waiting for their replies, or for the
/// client to read them, before the proxy stops reading from it: a client that
/// pipelines without reading is slowed down, not buffered without bound
/// (Envoy 1.40 buffers all of it).
const MAX_PENDING: usize = 1024;

/// Builds the filter for each connection; one per config version.
pub struct RedisProxyFactory {
    id: u64,
    config: Arc<Config>,
    stats: Arc<Stats>,
    store: &'static Store,
}

impl RedisProxyFactory {
    /// The filter for `config`, counting into `store`.
    pub fn new(config: Config, store: &'static Store) -> RedisProxyFactory {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        RedisProxyFactory {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            stats: Arc::new(Stats::new(&config.stat_prefix, store)),
            config: Arc::new(config),
            store,
        }
    }

    /// The config it runs.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl TerminalFilterFactory for RedisProxyFactory {
    fn create(&self) -> Box<dyn TerminalFilter> {
        Box::new(RedisProxy {
            id: self.id,
            config: self.config.clone(),
            stats: self.stats.clone(),
            store: self.store,
        })
    }
}

struct RedisProxy {
    id: u64,
    config: Arc<Config>,
    stats: Arc<Stats>,
    store: &'static Store,
}

#[async_trait(?Send)]
impl TerminalFilter for RedisProxy {
    async fn serve(self: Box<Self>, io: Box<dyn DownstreamIo>) {
        let pools = Pools::for_worker(self.id, || Pools {
            config: self.config.clone(),
            store: self.store,
            clusters: io.clusters(),
            by_cluster: RefCell::new(HashMap::default()),
        });
        let stats = self.stats;
        stats.downstream_cx_total.inc();
        stats.downstream_cx_active.inc();
        let session = Rc::new(Session {
            state: RefCell::new(State {
                base: 0,
                queue: VecDeque::new(),
                authed: false,
                transaction: None,
                reading: true,
                dedicated: false,
                fenced: false,
                full: false,
            }),
            now: std::cell::Cell::new(Instant::now()),
            pools,
            ready: Notify::new(),
            settled: Notify::new(),
            drained: Notify::new(),
            stats: stats.clone(),
        });
        let (rd, wr) = io.split();
        let reading = read_loop(rd, session.clone());
        let writing = write_loop(wr, session.clone());
        tokio::pin!(reading, writing);
        tokio::select! {
            _ = &mut reading => writing.await,
            _ = &mut writing => {}
        }
        // Requests still waiting upstream are dropped with the connection.
        let left = session.state.borrow().queue.len();
        stats.downstream_rq_active.add(-(left as i64));
        stats.downstream_cx_active.dec();
    }
}

/// One worker's upstream connections for one config version, shared by its
/// client connections and closed when the last of them ends.
struct Pools {
    config: Arc<Config>,
    store: &'static Store,
    clusters: Rc<dyn TcpClusters>,
    by_cluster: RefCell<HashMap<String, Option<Rc<ClusterPool>>, FixedState>>,
}

struct ClusterPool {
    cluster: Rc<dyn TcpCluster>,
    /// `auth` for new connections, from the cluster's protocol options.
    hello: Option<Bytes>,
    hosts: RefCell<HashMap<SocketAddr, Rc<Upstream>, FixedState>>,
    /// `enable_command_stats`, by command id, made on first use (as Envoy).
    command_stats: RefCell<Vec<Option<Rc<UpstreamCommandStats>>>>,
}

impl ClusterPool {
    fn command_stats(&self, id: u16, store: &Store) -> Option<Rc<UpstreamCommandStats>> {
        let mut all = self.command_stats.borrow_mut();
        let i = usize::from(id);
        if all.len() <= i {
            all.resize(i + 1, None);
        }
        if all[i].is_none() {
            let name = commands::all().nth(i)?;
            all[i] = Some(Rc::new(UpstreamCommandStats::new(
                store,
                self.cluster.name(),
                name,
            )));
        }
        all[i].clone()
    }
}

thread_local! {
    static WORKER_POOLS: RefCell<Vec<(u64, Weak<Pools>)>> = const { RefCell::new(Vec::new()) };
}

impl Pools {
    fn for_worker(id: u64, make: impl FnOnce() -> Pools) -> Rc<Pools> {
        WORKER_POOLS.with(|w| {
            let mut w = w.borrow_mut();
            w.retain(|(_, p)| p.strong_count() > 0);
            if let Some(p) = w
                .iter()
                .find(|(i, _)| *i == id)
                .and_then(|(_, p)| p.upgrade())
            {
                return p;
            }
            let p = Rc::new(make());
            w.push((id, Rc::downgrade(&p)));
            p
        })
    }

    fn settings(&self) -> Settings {
        Settings {
            op_timeout: self.config.op_timeout,
            max_buffer_size_before_flush: self.config.max_buffer_size_before_flush,
            buffer_flush_timeout: self.config.buffer_flush_timeout,
        }
    }

    fn cluster(&self, name: &str) -> Option<Rc<ClusterPool>> {
        if let Some(p) = self.by_cluster.borrow().get(name) {
            return p.clone();
        }
        let pool = self.clusters.get(name).map(|cluster| {
            let hello = cluster
                .protocol_options(NAME)
                .and_then(|o| o.downcast::<ProtocolOptions>().ok())
                .and_then(|o| auth_command(&o));
            Rc::new(ClusterPool {
                cluster,
                hello,
                hosts: RefCell::new(HashMap::default()),
                command_stats: RefCell::new(Vec::new()),
            })
        });
        self.by_cluster
            .borrow_mut()
            .insert(name.to_string(), pool.clone());
        pool
    }

    /// The shared connection to the server owning `key` in `cluster`.
    fn upstream(&self, cluster: &str, key: &[u8]) -> Option<Rc<Upstream>> {
        let pool = self.cluster(cluster)?;
        let hash = murmur_hash2(commands::hash_key(key, self.config.enable_hashtagging));
        let addr = pool.cluster.pick(hash)?;
        Some(self.upstream_at(&pool, addr))
    }

    /// The shared connection to one server of a cluster.
    fn upstream_at(&self, pool: &ClusterPool, addr: SocketAddr) -> Rc<Upstream> {
        pool.hosts
            .borrow_mut()
            .entry(addr)
            .or_insert_with(|| {
                Upstream::new(
                    pool.cluster.clone(),
                    addr,
                    self.settings(),
                    pool.hello.clone(),
                )
            })
            .clone()
    }

    /// A connection of its own to the server owning `key`, for a transaction.
    fn dedicated(&self, cluster: &str, key: &[u8]) -> Option<Rc<Upstream>> {
        let pool = self.cluster(cluster)?;
        let hash = murmur_hash2(commands::hash_key(key, self.config.enable_hashtagging));
        let addr = pool.cluster.pick(hash)?;
        Some(Upstream::new(
            pool.cluster.clone(),
            addr,
            self.settings(),
            pool.hello.clone(),
        ))
    }
}

impl Drop for Pools {
    fn drop(&mut self) {
        for pool in self.by_cluster.get_mut().values().flatten() {
            for up in pool.hosts.borrow().values() {
                up.close();
            }
        }
    }
}

fn auth_command(o: &ProtocolOptions) -> Option<Bytes> {
    let password = o.auth_password.clone()?;
    let mut args = vec![Bytes::from_static(b"auth")];
    args.extend(o.auth_username.clone());
    args.push(password);
    Some(Value::command(args).to_bytes())
}

/// What a queued request is waiting for.
enum Reply {
    /// The reply, ready to write.
    Ready(Bytes),
    /// One upstream reply, forwarded as it is.
    Single,
    /// The replies of a split command, combined when all are in.
    Fanout { merge: Merge, parts: Vec<Value> },
}

struct Pending {
    reply: Reply,
    /// Upstream replies still expected.
    left: u32,
    start: Instant,
    /// Where the command's stats are.
    command: Option<u16>,
    error: bool,
    /// Close the connection once this reply is written (`quit`, protocol error).
    close: bool,
    /// With `enable_redirection`: each part's pool and bytes, to send again
    /// where a `MOVED` or `ASK` points (once).
    resend: Vec<Option<(Rc<ClusterPool>, Bytes)>>,
}

/// A client's `multi` or `watch`: the commands of the transaction go, unsplit,
/// to the server of its first key (the watched key, if any), on a connection of
/// their own, so that the server's `watch` applies to the `exec`.
struct Transaction {
    upstream: Option<Rc<Upstream>>,
    /// `multi` was sent; before it, only `watch` and `unwatch` go to `upstream`.
    multi: bool,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Some(up) = &self.upstream {
            up.close_when_idle();
        }
    }
}

impl State {
    /// Some request still waits for an upstream reply.
    fn in_flight(&self) -> bool {
        self.queue.iter().any(|p| p.left > 0)
    }
}

struct State {
    /// Sequence number of `queue[0]`.
    base: u64,
    queue: VecDeque<Pending>,
    authed: bool,
    transaction: Option<Transaction>,
    reading: bool,
    /// The last command went to a transaction's own connection (see
    /// `Session::fence`).
    dedicated: bool,
    /// The reader waits in `Session::fence` for the replies in flight.
    fenced: bool,
    /// The reader waits in `Session::room` for the queue to shrink.
    full: bool,
}

/// One client connection.
pub(crate) struct Session {
    state: RefCell<State>,
    /// When the bytes being dispatched were read (one clock read per read).
    now: std::cell::Cell<Instant>,
    pools: Rc<Pools>,
    /// The reply at the head of the queue is ready, or reading stopped.
    ready: Notify,
    /// The last reply in flight arrived while the reader was fenced.
    settled: Notify,
    /// The writer took replies off a full queue.
    drained: Notify,
    stats: Arc<Stats>,
}

impl Session {
    /// An upstream reply (or why there is none) for part `part` of request `seq`.
    pub(crate) fn deliver(
        self: &Rc<Self>,
        seq: u64,
        part: u32,
        reply: Result<Frame, &'static str>,
    ) {
        let mut st = self.state.borrow_mut();
        let Some(idx) = seq.checked_sub(st.base) else {
            return;
        };
        let Some(p) = st.queue.get_mut(idx as usize) else {
            return;
        };
        if let Ok(Frame {
            value: Value::Error(text),
            ..
        }) = &reply
            && let Some((ask, addr)) = redirection(text)
            && let Some(Some((pool, bytes))) = p.resend.get_mut(part as usize).map(Option::take)
        {
            drop(st);
            let up = self.pools.upstream_at(&pool, addr);
            let now = Instant::now();
            if ask {
                up.send(b"*1\r\n$6\r\nasking\r\n", Waiter::Discard, now);
            }
            let session = self.clone();
            up.send(&bytes, Waiter::Session { session, seq, part }, now);
            return;
        }
        match &mut p.reply {
            Reply::Single => {
                // An error the server answered counts as a success, as in
                // Envoy: only a failed or missing reply is an error.
                p.reply = Reply::Ready(match reply {
                    Ok(f) => f.raw,
                    Err(text) => {
                        p.error = true;
                        Value::error(text).to_bytes()
                    }
                });
            }
            Reply::Fanout { parts, .. } => {
                if let Some(slot) = parts.get_mut(part as usize) {
                    *slot = match reply {
                        Ok(f) => f.value,
                        Err(text) => Value::error(text),
                    };
                }
            }
            Reply::Ready(_) => return,
        }
        p.left = p.left.saturating_sub(1);
        let head_ready = idx == 0 && p.left == 0;
        let settled = st.fenced && !st.in_flight();
        drop(st);
        if head_ready {
            self.ready.notify_one();
        }
        if settled {
            self.settled.notify_one();
        }
    }

    /// Waits while `MAX_PENDING` requests are queued.
    async fn room(&self) {
        loop {
            {
                let mut st = self.state.borrow_mut();
                st.full = st.queue.len() >= MAX_PENDING;
                if !st.full {
                    return;
                }
            }
            self.drained.notified().await;
        }
    }

    /// A transaction runs on a connection of its own, so a client's pipelined
    /// commands would race across it: the first command of the transaction
    /// could overtake the commands before it on the shared connection, and the
    /// command after `exec` could overtake the transaction. When a command goes
    /// to the other connection than the one before it, the reader waits until
    /// every reply in flight has arrived.
    async fn fence(&self, frame: &Frame) {
        {
            let mut st = self.state.borrow_mut();
            let name = command_name(&frame.value);
            let is = |n: &str| name.is_some_and(|c| c.eq_ignore_ascii_case(n.as_bytes()));
            let dedicated = is("watch")
                || st.transaction.as_ref().is_some_and(|t| {
                    t.multi || is("unwatch") || is("multi") || is("exec") || is("discard")
                });
            let switched = std::mem::replace(&mut st.dedicated, dedicated) != dedicated;
            if !switched || !st.in_flight() {
                return;
            }
            st.fenced = true;
        }
        loop {
            self.settled.notified().await;
            let mut st = self.state.borrow_mut();
            if !st.in_flight() {
                st.fenced = false;
                return;
            }
        }
    }

    /// Keeps what part `part` of request `seq` sent, for a redirection.
    fn remember(&self, seq: u64, part: u32, r: &Routed<'_>, pools: &Pools) {
        let Some(pool) = pools.cluster(r.cluster) else {
            return;
        };
        let mut st = self.state.borrow_mut();
        let idx = (seq - st.base) as usize;
        if let Some(p) = st.queue.get_mut(idx) {
            let part = part as usize;
            if p.resend.len() <= part {
                p.resend.resize(part + 1, None);
            }
            p.resend[part] = Some((pool, r.bytes.clone()));
        }
    }

    /// Queues a request; returns its sequence number.
    fn push(&self, reply: Reply, left: u32, command: Option<u16>) -> u64 {
        let mut st = self.state.borrow_mut();
        let seq = st.base + st.queue.len() as u64;
        let ready = st.queue.is_empty() && left == 0;
        st.queue.push_back(Pending {
            reply,
            left,
            start: self.now.get(),
            command,
            error: false,
            close: false,
            resend: Vec::new(),
        });
        drop(st);
        if ready {
            self.ready.notify_one();
        }
        seq
    }

    /// Queues a reply known now.
    fn answer(&self, value: Value, command: Option<u16>) {
        let error = matches!(value, Value::Error(_));
        let seq = self.push(Reply::Ready(value.to_bytes()), 0, command);
        if error {
            self.mark_error(seq);
        }
    }

    fn mark_error(&self, seq: u64) {
        let mut st = self.state.borrow_mut();
        let idx = (seq - st.base) as usize;
        if let Some(p) = st.queue.get_mut(idx) {
            p.error = true;
        }
    }

    /// Takes the replies that are ready at the head of the queue, encoded;
    /// also whether the connection must close after them.
    fn take_ready(&self, out: &mut BytesMut) -> bool {
        let mut st = self.state.borrow_mut();
        let mut close = false;
        let now = Instant::now();
        while let Some(p) = st.queue.front() {
            if p.left > 0 {
                break;
            }
            let Some(p) = st.queue.pop_front() else { break };
            st.base += 1;
            let mut error = p.error;
            match p.reply {
                Reply::Ready(b) => out.extend_from_slice(&b),
                Reply::Fanout { merge, parts } => {
                    let (value, errors) = split::assemble(merge, parts);
                    error |= errors > 0;
                    value.encode(out);
                }
                Reply::Single => {}
            }
            self.stats.downstream_rq_active.dec();
            if let Some(s) = p.command.and_then(|i| self.stats.command(i)) {
                if error {
                    s.error.inc();
                } else {
                    s.success.inc();
                }
                s.latency
                    .record_duration(now.saturating_duration_since(p.start));
            }
            if p.close {
                close = true;
                break;
            }
        }
        if st.full && st.queue.len() < MAX_PENDING {
            self.drained.notify_one();
        }
        close || (!st.reading && st.queue.is_empty())
    }
}

async fn read_loop(mut rd: Box<dyn DownstreamRead>, session: Rc<Session>) {
    let stats = session.stats.clone();
    let pools = session.pools.clone();
    let mut decoder = Decoder::new();
    let mut buf = BytesMut::new();
    let mut quit = false;
    'read: while let Ok(Some(chunk)) = rd.read().await {
        stats.downstream_cx_rx_bytes_total.add(chunk.len() as u64);
        session.now.set(Instant::now());
        if buf.is_empty() {
            buf = chunk;
        } else {
            buf.extend_from_slice(&chunk);
        }
        loop {
            match decoder.decode(&mut buf) {
                // After `quit`, Envoy still answers what the same read brought,
                // then closes.
                Ok(Some(frame)) => {
                    session.room().await;
                    session.fence(&frame).await;
                    quit |= !dispatch(&session, &pools, frame);
                }
                Ok(None) if quit => {
                    close_after_last(&session);
                    break 'read;
                }
                Ok(None) => break,
                Err(_) => {
                    stats.downstream_cx_protocol_error.inc();
                    stats.downstream_rq_total.inc();
                    stats.downstream_rq_active.inc();
                    session.answer(Value::error(DOWNSTREAM_PROTOCOL_ERROR), None);
                    close_after_last(&session);
                    break 'read;
                }
            }
        }
    }
    session.state.borrow_mut().reading = false;
    session.ready.notify_one();
}

async fn write_loop(mut wr: Box<dyn DownstreamWrite>, session: Rc<Session>) {
    let stats = session.stats.clone();
    loop {
        session.ready.notified().await;
        let mut out = BytesMut::new();
        let done = session.take_ready(&mut out);
        if !out.is_empty() {
            stats.downstream_cx_tx_bytes_total.add(out.len() as u64);
            if wr.write(out).await.is_err() {
                return;
            }
        }
        if done {
            break;
        }
    }
    let _ = wr.shutdown_write().await;
}

/// The command name of a request, if it is one.
fn command_name(v: &Value) -> Option<&Bytes> {
    match v {
        Value::Array(items) => match items.first() {
            Some(Value::BulkString(b)) => Some(b),
            _ => None,
        },
        _ => None,
    }
}

fn close_after_last(session: &Session) {
    if let Some(p) = session.state.borrow_mut().queue.back_mut() {
        p.close = true;
    }
}

/// Handles one request; false for `quit`.
fn dispatch(session: &Rc<Session>, pools: &Rc<Pools>, frame: Frame) -> bool {
    let stats = &session.stats;
    stats.downstream_rq_total.inc();
    stats.downstream_rq_active.inc();
    let config = &pools.config;
    let Some(args) = frame.value.as_command() else {
        stats.splitter_invalid_request.inc();
        session.answer(Value::error(reply::INVALID_REQUEST), None);
        return true;
    };
    let name = args[0];
    let Some(cmd) = commands::command(name) else {
        stats.splitter_unsupported_command.inc();
        session.answer(commands::unknown_command(&args), None);
        return true;
    };
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("auth") {
        let v = auth(session, config, &args[1..]);
        session.answer(v, None);
        return true;
    }
    if is("quit") {
        session.answer(Value::simple("OK"), None);
        return false;
    }
    let needs_auth = !config.downstream_auth_passwords.is_empty();
    if needs_auth && !is("hello") && !session.state.borrow().authed {
        session.answer(Value::error(reply::NOAUTH), None);
        return true;
    }
    let kind = cmd.kind;
    let command = stats.command(cmd.id).map(|s| {
        s.total.inc();
        cmd.id
    });
    let plan = split::split_args(&args);
    if let Plan::Reply(v) = &plan {
        stats.splitter_invalid_request.inc();
        session.answer(v.clone(), command);
        return true;
    }
    // Inside `multi`, every keyed command goes whole to the transaction's server.
    let (in_multi, watching) = match &session.state.borrow().transaction {
        Some(t) => (t.multi, !t.multi),
        None => (false, false),
    };
    if in_multi && kind != Kind::Local {
        transaction(session, pools, &frame, &args, kind, command);
        return true;
    }
    if is("watch") || (watching && is("unwatch")) {
        watch(session, pools, &frame, &args, command);
        return true;
    }
    match plan {
        Plan::Reply(_) => {}
        Plan::Unsupported(v) => {
            stats.splitter_unsupported_command.inc();
            session.answer(v, command);
        }
        Plan::Host(Kind::Local) => session.answer(local(session, config, &args), command),
        Plan::Host(Kind::Transaction) => transaction(session, pools, &frame, &args, kind, command),
        Plan::Host(_) => cluster_scope(session, pools, &frame, &args, command),
        Plan::Single { key } => {
            let delay = match fault(config, name, command, stats) {
                Ok(delay) => delay,
                Err(reply) => {
                    session.answer(reply, command);
                    return true;
                }
            };
            let seq = session.push(Reply::Single, 1, command);
            let routed = route(pools, &key, &frame.value, &frame.raw, name);
            send_routed(session, pools, routed, seq, 0, delay);
        }
        Plan::Fanout { merge, fragments } => {
            let delay = match fault(config, name, command, stats) {
                Ok(delay) => delay,
                Err(reply) => {
                    session.answer(reply, command);
                    return true;
                }
            };
            let n = fragments.len() as u32;
            let parts = vec![Value::Null; fragments.len()];
            let seq = session.push(Reply::Fanout { merge, parts }, n, command);
            for (i, f) in fragments.iter().enumerate() {
                let raw = f.request.to_bytes();
                let routed = route(pools, &f.key, &f.request, &raw, &f.request_name());
                send_routed(session, pools, routed, seq, i as u32, delay);
            }
        }
    }
    true
}

/// Commands for every server of the cluster that owns the empty key, merged as
/// [`split::cluster_scope`] says.
fn cluster_scope(
    session: &Rc<Session>,
    pools: &Rc<Pools>,
    frame: &Frame,
    args: &[&Bytes],
    command: Option<u16>,
) {
    let merge = match split::cluster_scope(args) {
        Ok(m) => m,
        Err(v) => {
            session.answer(v, command);
            return;
        }
    };
    let pool = pools
        .config
        .routes
        .route(b"")
        .and_then(|m| pools.cluster(m.cluster));
    let hosts = pool.as_ref().map(|p| p.cluster.hosts()).unwrap_or_default();
    let (Some(pool), false) = (pool, hosts.is_empty()) else {
        session.answer(Value::error(reply::NO_UPSTREAM_HOST), command);
        return;
    };
    let parts = vec![Value::Null; hosts.len()];
    let seq = session.push(Reply::Fanout { merge, parts }, hosts.len() as u32, command);
    for (i, addr) in hosts.into_iter().enumerate() {
        let up = pools.upstream_at(&pool, addr);
        up.send(
            &frame.raw,
            Waiter::Session {
                session: session.clone(),
                seq,
                part: i as u32,
            },
            session.now.get(),
        );
    }
}

/// `MOVED <slot> <host:port>` or `ASK <slot> <host:port>`: whether it is `ASK`,
/// and where to go.
fn redirection(text: &[u8]) -> Option<(bool, SocketAddr)> {
    let text = std::str::from_utf8(text).ok()?;
    let mut words = text.split(' ');
    let ask = match words.next()? {
        "MOVED" => false,
        "ASK" => true,
        _ => return None,
    };
    words.next()?.parse::<u16>().ok()?;
    let addr = words.next()?.parse().ok()?;
    words.next().is_none().then_some((ask, addr))
}

/// Where a command goes: its cluster, the key to hash, the bytes to send, and
/// the mirrors that also get it.
struct Routed<'a> {
    cluster: &'a str,
    key: Bytes,
    bytes: Bytes,
    mirrors: &'a [Mirror],
    write: bool,
    /// The command sent, with `enable_command_stats`.
    command: Option<u16>,
}

fn route<'a>(
    pools: &'a Pools,
    key: &'a Bytes,
    request: &Value,
    raw: &Bytes,
    name: &[u8],
) -> Option<Routed<'a>> {
    let m = pools.config.routes.route(key)?;
    let (key, bytes) = if m.key.len() == key.len() {
        (key.clone(), raw.clone())
    } else {
        // `remove_prefix`: the key is rewritten, so the command is re-encoded.
        let stripped = key.slice(key.len() - m.key.len()..);
        (
            stripped.clone(),
            replace_key(request, key, &stripped).to_bytes(),
        )
    };
    Some(Routed {
        cluster: m.cluster,
        key,
        bytes,
        mirrors: &m.route.mirrors,
        write: !m.route.mirrors.is_empty() && commands::is_write(name),
        command: if pools.config.enable_command_stats {
            commands::command(name).map(|c| c.id)
        } else {
            None
        },
    })
}

/// The request with its routing key (the first element equal to `key` after
/// the command) replaced.
fn replace_key(request: &Value, key: &Bytes, new: &Bytes) -> Value {
    let Value::Array(items) = request else {
        return request.clone();
    };
    let mut done = false;
    Value::Array(
        items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::BulkString(b) if i > 0 && !done && b == key => {
                    done = true;
                    Value::BulkString(new.clone())
                }
                other => other.clone(),
            })
            .collect(),
    )
}

fn send_routed(
    session: &Rc<Session>,
    pools: &Rc<Pools>,
    routed: Option<Routed<'_>>,
    seq: u64,
    part: u32,
    delay: Option<std::time::Duration>,
) {
    let Some(r) = routed else {
        session.deliver(seq, part, Err(reply::NO_UPSTREAM_HOST));
        return;
    };
    for m in r.mirrors {
        if (m.exclude_read_commands && !r.write) || !m.fraction.roll() {
            continue;
        }
        if let Some(up) = pools.upstream(&m.cluster, &r.key) {
            up.send(&r.bytes, Waiter::Discard, session.now.get());
        }
    }
    let Some(up) = pools.upstream(r.cluster, &r.key) else {
        session.deliver(seq, part, Err(reply::NO_UPSTREAM_HOST));
        return;
    };
    if pools.config.enable_redirection {
        session.remember(seq, part, &r, pools);
    }
    let waiter = Waiter::Session {
        session: session.clone(),
        seq,
        part,
    };
    let stats = r.command.and_then(|id| {
        pools
            .cluster(r.cluster)
            .and_then(|p| p.command_stats(id, pools.store))
    });
    match delay {
        None => up.send_counted(&r.bytes, waiter, session.now.get(), stats),
        Some(d) => {
            tokio::task::spawn_local(async move {
                tokio::time::sleep(d).await;
                up.send_counted(&r.bytes, waiter, Instant::now(), stats);
            });
        }
    }
}

impl split::Fragment {
    /// The command name of a fragment (`get`, `set`, `del`...).
    fn request_name(&self) -> Bytes {
        match &self.request {
            Value::Array(items) => match items.first() {
                Some(Value::BulkString(b)) => b.clone(),
                _ => Bytes::new(),
            },
            _ => Bytes::new(),
        }
    }
}

/// The first fault of the config that applies to `name` and fires.
fn fault_for(config: &Config, name: &[u8]) -> Option<FaultKind> {
    config
        .faults
        .iter()
        .filter(|f| {
            f.commands.is_empty()
                || f.commands
                    .iter()
                    .any(|c| name.eq_ignore_ascii_case(c.as_bytes()))
        })
        .find(|f| f.percentage.roll())
        .map(|f| f.kind)
}

/// The fault for this command, drawn once: `Err` with the reply of an `ERROR`
/// fault, else the delay of a `DELAY` fault, if any.
fn fault(
    config: &Config,
    name: &[u8],
    command: Option<u16>,
    stats: &Stats,
) -> Result<Option<std::time::Duration>, Value> {
    if config.faults.is_empty() {
        return Ok(None);
    }
    let stats = command.and_then(|i| stats.command(i));
    match fault_for(config, name) {
        None => Ok(None),
        Some(FaultKind::Error) => {
            if let Some(s) = stats {
                s.error_fault.inc();
            }
            Err(Value::error(reply::FAULT_ERROR))
        }
        Some(FaultKind::Delay(d)) => {
            if let Some(s) = stats {
                s.delay_fault.inc();
            }
            Ok(Some(d))
        }
    }
}

/// `auth [user] password`: Envoy's checks and texts.
fn auth(session: &Session, config: &Config, args: &[&Bytes]) -> Value {
    let passwords = &config.downstream_auth_passwords;
    let ok = match args {
        [] => return Value::error(reply::INVALID_REQUEST),
        [password] => {
            if passwords.is_empty() {
                return Value::error(reply::AUTH_NOT_SET);
            }
            passwords.iter().any(|p| p == *password)
        }
        [user, password] => {
            if passwords.is_empty() {
                return Value::error("ERR Client sent AUTH, but no username-password pair is set");
            }
            let ok = config.downstream_auth_username.as_ref() == Some(*user)
                && passwords.iter().any(|p| p == *password);
            if !ok {
                session.state.borrow_mut().authed = false;
                return Value::error("WRONGPASS invalid username-password pair");
            }
            true
        }
        _ => false,
    };
    session.state.borrow_mut().authed = ok;
    if ok {
        Value::simple("OK")
    } else {
        Value::error("ERR invalid password")
    }
}

/// Commands the proxy answers itself, with Envoy's replies.
fn local(session: &Session, config: &Config, args: &[&Bytes]) -> Value {
    let name = args[0];
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    if is("ping") {
        Value::simple("PONG")
    } else if is("echo") {
        match args {
            [_, text] => Value::bulk((*text).clone()),
            _ => Value::error(reply::INVALID_REQUEST),
        }
    } else if is("time") {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        // Envoy's second element is the whole time in microseconds.
        Value::command([
            Bytes::from(now.as_secs().to_string()),
            Bytes::from(now.as_micros().to_string()),
        ])
    } else if is("hello") {
        hello(session, config, &args[1..])
    } else if is("client") {
        match args.get(1) {
            Some(sub) if sub.eq_ignore_ascii_case(b"setname") => Value::simple("OK"),
            Some(sub) => {
                let mut t = b"ERR CLIENT subcommand '".to_vec();
                t.extend_from_slice(sub);
                t.extend_from_slice(b"' is not supported by the proxy");
                Value::error(t)
            }
            None => Value::error(reply::INVALID_REQUEST),
        }
    } else if is("cluster") {
        Value::error("ERR This instance has cluster support disabled")
    } else {
        // `select`, `unwatch`.
        Value::simple("OK")
    }
}

fn hello(session: &Session, config: &Config, args: &[&Bytes]) -> Value {
    if args.first().is_some_and(|v| v.as_ref() != b"2") {
        return Value::error(reply::NOPROTO);
    }
    if let Some(i) = args.iter().position(|a| a.eq_ignore_ascii_case(b"auth")) {
        match args.get(i + 1..i + 3) {
            Some(cred) => {
                let v = auth(session, config, cred);
                if matches!(v, Value::Error(_)) {
                    return v;
                }
            }
            None => return Value::error(reply::INVALID_REQUEST),
        }
    }
    let s = |t: &'static str| Value::bulk(Bytes::from_static(t.as_bytes()));
    Value::Array(vec![
        s("server"),
        s("envoy-redis-proxy"),
        s("version"),
        s("6.0.0"),
        s("proto"),
        Value::Integer(2),
        s("id"),
        Value::Integer(0),
        s("mode"),
        s("standalone"),
        s("role"),
        s("master"),
        s("modules"),
        Value::Array(vec![]),
    ])
}

/// `multi`, `exec`, `discard`, and the commands in between.
fn transaction(
    session: &Rc<Session>,
    pools: &Rc<Pools>,
    frame: &Frame,
    args: &[&Bytes],
    kind: Kind,
    command: Option<u16>,
) {
    let name = args[0];
    let is = |n: &str| name.eq_ignore_ascii_case(n.as_bytes());
    let mut st = session.state.borrow_mut();
    if is("multi") {
        let v = match st.transaction.as_mut() {
            Some(t) if t.multi => Value::error("MULTI calls can not be nested"),
            // After `watch`: the transaction starts on the watching connection.
            Some(t) => {
                t.multi = true;
                if let Some(up) = &t.upstream {
                    up.send(
                        &Value::command([Bytes::from_static(b"multi")]).to_bytes(),
                        Waiter::Discard,
                        session.now.get(),
                    );
                }
                Value::simple("OK")
            }
            None => {
                st.transaction = Some(Transaction {
                    upstream: None,
                    multi: true,
                });
                Value::simple("OK")
            }
        };
        drop(st);
        session.answer(v, command);
        return;
    }
    if is("exec") || is("discard") {
        // Without `multi` (a `watch` alone stays), the answer is the server's error.
        let t = match st.transaction.take() {
            Some(t) if t.multi => Some(t),
            other => {
                st.transaction = other;
                None
            }
        };
        let Some(t) = t else {
            drop(st);
            let text = if is("exec") {
                reply::EXEC_WITHOUT_MULTI
            } else {
                reply::DISCARD_WITHOUT_MULTI
            };
            session.answer(Value::error(text), command);
            return;
        };
        drop(st);
        match t.upstream.clone() {
            // Dropping `t` closes the connection once this reply is in.
            Some(up) => forward(session, Some(&up), frame, command),
            None if is("exec") => session.answer(Value::Array(vec![]), command),
            None => session.answer(Value::simple("OK"), command),
        }
        return;
    }
    let existing = st.transaction.as_ref().and_then(|t| t.upstream.clone());
    drop(st);
    let up = match existing {
        Some(up) => Some(up),
        None => {
            // The first keyed command picks the server.
            let key_index = commands::key_index(kind).unwrap_or(1);
            let key = args
                .get(key_index)
                .map(|k| (*k).clone())
                .unwrap_or_default();
            let routed = pools
                .config
                .routes
                .route(&key)
                .map(|m| m.cluster.to_string());
            let up = routed.and_then(|c| pools.dedicated(&c, &key));
            if let Some(up) = &up {
                up.send(
                    &Value::command([Bytes::from_static(b"multi")]).to_bytes(),
                    Waiter::Discard,
                    session.now.get(),
                );
                if let Some(t) = session.state.borrow_mut().transaction.as_mut() {
                    t.upstream = Some(up.clone());
                }
            }
            up
        }
    };
    forward(session, up.as_ref(), frame, command);
}

/// `watch` outside `multi`: it goes to a connection of its own, on the server of
/// its first key, where the transaction will run. `unwatch` after `watch` goes
/// there too and ends it.
fn watch(
    session: &Rc<Session>,
    pools: &Rc<Pools>,
    frame: &Frame,
    args: &[&Bytes],
    command: Option<u16>,
) {
    let unwatch = args[0].eq_ignore_ascii_case(b"unwatch");
    let existing = session
        .state
        .borrow()
        .transaction
        .as_ref()
        .map(|t| t.upstream.clone());
    let up = match existing {
        Some(up) => up,
        None => {
            let key = args.get(1).map(|k| (*k).clone()).unwrap_or_default();
            let up = pools
                .config
                .routes
                .route(&key)
                .and_then(|m| pools.dedicated(m.cluster, &key));
            session.state.borrow_mut().transaction = Some(Transaction {
                upstream: up.clone(),
                multi: false,
            });
            up
        }
    };
    forward(session, up.as_ref(), frame, command);
    if unwatch {
        // Dropping it closes the connection once the reply is in.
        session.state.borrow_mut().transaction = None;
    }
}

/// Sends the client's command as it is and queues its reply (`no upstream host`
/// when there is no server).
fn forward(session: &Rc<Session>, up: Option<&Rc<Upstream>>, frame: &Frame, command: Option<u16>) {
    let seq = session.push(Reply::Single, 1, command);
    match up {
        Some(up) => up.send(
            &frame.raw,
            Waiter::Session {
                session: session.clone(),
                seq,
                part: 0,
            },
            session.now.get(),
        ),
        None => session.deliver(seq, 0, Err(reply::NO_UPSTREAM_HOST)),
    }
}
