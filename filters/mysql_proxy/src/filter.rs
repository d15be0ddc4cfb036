//! The network filter: sits before `tcp_proxy`, decodes both directions with a
//! [`Session`], counts Envoy's stats, and turns each query into dynamic metadata
//! (`{"<table>": ["select", ...]}`) for network RBAC. It never changes the bytes,
//! except that Legate's query faults and denied-query answers replace a query
//! with an ERR packet.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use legate_filter_api::MetadataValue;
use legate_filter_api::network::{
    ConnectionInfo, NetworkAction, NetworkFilter, NetworkFilterFactory,
};
use legate_filter_api::stats::{Counter, Store};

use crate::config::{Access, Config, ErrorReply};
use crate::messages::ErrPacket;
use crate::session::{Event, Limits, Session};
use crate::sql::{self, Operation};
use crate::{Command, packet};

/// The dynamic metadata namespace the filter writes.
pub const NAMESPACE: &str = "envoy.filters.network.mysql_proxy";

/// Longest query text parsed, and most bytes of an unfinished command held back
/// so that it can still be answered by the filter. A longer query counts
/// `queries_parse_error` and flows as it arrives.
const MAX_QUERY: usize = 1 << 20;

/// Prepared statements remembered per connection, for metadata on execution.
const MAX_STATEMENTS: usize = 16 * 1024;

/// Envoy's `mysql.<stat_prefix>.*` stats, and Legate's.
struct Stats {
    sessions: Counter,
    login_attempts: Counter,
    login_failures: Counter,
    decoder_errors: Counter,
    protocol_errors: Counter,
    upgraded_to_ssl: Counter,
    auth_switch_request: Counter,
    queries_parsed: Counter,
    queries_parse_error: Counter,
    delays_injected: Counter,
    aborts_injected: Counter,
    queries_denied: Counter,
    /// `query.<op>`, indexed as [`Operation::ALL`].
    operations: Vec<Counter>,
}

struct Shared {
    config: Config,
    stats: Stats,
    /// Whether the filter may have to answer a query itself, so must see each
    /// command whole before it flows.
    answers: bool,
    /// `denied_query_error` framed for a one-packet command (sequence id 1).
    denied: Option<Bytes>,
}

/// Makes the per-connection filters of one config.
pub struct MySqlProxyFactory(Arc<Shared>);

impl MySqlProxyFactory {
    /// A factory counting under `mysql.<stat_prefix>.`.
    pub fn new(config: Config, store: &Store) -> MySqlProxyFactory {
        let p = format!("mysql.{}.", config.stat_prefix);
        let c = |n: &str| store.counter(format!("{p}{n}"));
        let stats = Stats {
            sessions: c("sessions"),
            login_attempts: c("login_attempts"),
            login_failures: c("login_failures"),
            decoder_errors: c("decoder_errors"),
            protocol_errors: c("protocol_errors"),
            upgraded_to_ssl: c("upgraded_to_ssl"),
            auth_switch_request: c("auth_switch_request"),
            queries_parsed: c("queries_parsed"),
            queries_parse_error: c("queries_parse_error"),
            delays_injected: c("delays_injected"),
            aborts_injected: c("aborts_injected"),
            queries_denied: c("queries_denied"),
            operations: Operation::ALL
                .iter()
                .map(|o| c(&format!("query.{}", o.as_str())))
                .collect(),
        };
        let answers =
            config.denied_query_error.is_some() || config.faults.iter().any(|f| f.abort.is_some());
        let denied = config.denied_query_error.as_ref().map(|r| frame(r, 1));
        MySqlProxyFactory(Arc::new(Shared {
            config,
            stats,
            answers,
            denied,
        }))
    }
}

impl NetworkFilterFactory for MySqlProxyFactory {
    fn create(&self) -> Box<dyn NetworkFilter> {
        Box::new(MySqlProxyFilter {
            shared: self.0.clone(),
            session: Session::new(Limits {
                max_retained: MAX_QUERY,
            }),
            sniffing: true,
            held: BytesMut::new(),
            held_commands: 0,
            passing: false,
            database: None,
            pending_database: None,
            preparing: None,
            statements: HashMap::new(),
            deny_armed: false,
            unparsed: false,
        })
    }
}

/// What a query does, with the session's database applied to its table names.
#[derive(Debug)]
struct Analyzed {
    statements: Vec<Operation>,
    tables: Vec<Access>,
    use_database: Option<String>,
}

impl Analyzed {
    fn new(info: sql::QueryInfo, database: Option<&str>) -> Analyzed {
        let tables = info
            .tables
            .into_iter()
            .map(|t| {
                let mut keys = vec![t.name];
                if let Some(db) = t.database.as_deref().or(database) {
                    keys.push(format!("{}.{db}", t.table));
                }
                Access {
                    keys,
                    operations: t.operations,
                }
            })
            .collect();
        Analyzed {
            statements: info.statements,
            tables,
            use_database: info.use_database,
        }
    }
}

/// Analyses kept per worker.
const MAX_CACHED: usize = 1024;
/// Longest query whose analysis is kept.
const MAX_CACHED_QUERY: usize = 2048;

thread_local! {
    static ANALYSES: RefCell<Analyses> = RefCell::new(Analyses::default());
}

/// A worker's analyses by session database and query [shape](sql::shape), so a
/// query that differs from an earlier one only in its literals skips the parser.
/// `None` records a query that does not parse.
#[derive(Default)]
struct Analyses {
    map: HashMap<Box<[u8]>, Option<Rc<Analyzed>>>,
    key: Vec<u8>,
}

impl Analyses {
    fn get(&mut self, text: &str, database: Option<&str>) -> Option<Rc<Analyzed>> {
        let key = &mut self.key;
        key.clear();
        key.extend_from_slice(database.unwrap_or_default().as_bytes());
        key.extend_from_slice(&[0xFF, b'd']);
        let cacheable = text.len() <= MAX_CACHED_QUERY && sql::shape(text, key);
        if cacheable && let Some(hit) = self.map.get(&key[..]) {
            return hit.clone();
        }
        let analyzed = sql::parse(text)
            .ok()
            .map(|info| Rc::new(Analyzed::new(info, database)));
        if cacheable {
            if self.map.len() >= MAX_CACHED {
                self.map.clear();
            }
            self.map.insert(key[..].into(), analyzed.clone());
        }
        analyzed
    }
}

struct MySqlProxyFilter {
    shared: Arc<Shared>,
    session: Session,
    /// False after an SSL request or a decoder error: bytes flow unseen.
    sniffing: bool,
    /// An unfinished command held back until it is whole.
    held: BytesMut,
    /// Commands completed in `held` (more than one cannot be answered alone).
    held_commands: usize,
    /// Part of the current command has flowed (too long to hold, or nothing to
    /// answer), so the filter cannot answer it.
    passing: bool,
    /// The session's database: from login, then `COM_INIT_DB` / `USE`.
    database: Option<String>,
    /// A database switch awaiting the server's OK.
    pending_database: Option<String>,
    /// A statement being prepared, awaiting its id.
    preparing: Option<Rc<Analyzed>>,
    /// Prepared statements by id.
    statements: HashMap<u32, Rc<Analyzed>>,
    /// `deny_response` was offered for the last read.
    deny_armed: bool,
    /// A query that did not parse was read.
    unparsed: bool,
}

/// A command this read may be answered for.
struct Answerable {
    query: Rc<Analyzed>,
    /// Executes (faults apply), rather than prepares.
    runs: bool,
}

impl MySqlProxyFilter {
    /// Parses a query's text, counting Envoy's `queries_parsed` /
    /// `queries_parse_error`; `None` when it does not parse.
    fn analyze(&mut self, text: &Bytes, truncated: bool) -> Option<Rc<Analyzed>> {
        let s = &self.shared.stats;
        let query = if truncated {
            None
        } else {
            let text = String::from_utf8_lossy(text);
            ANALYSES.with(|a| a.borrow_mut().get(&text, self.database.as_deref()))
        };
        let Some(q) = query else {
            s.queries_parse_error.inc();
            self.unparsed = true;
            return None;
        };
        s.queries_parsed.inc();
        if let Some(db) = &q.use_database {
            self.pending_database = Some(db.clone());
        }
        Some(q)
    }

    fn count_statements(&self, q: &Analyzed) {
        for op in &q.statements {
            self.shared.stats.operations[*op as usize].inc();
        }
    }

    /// Handles one event from the client; returns the command it may answer.
    fn on_client_event(&mut self, e: Event, info: &mut ConnectionInfo) -> Option<Answerable> {
        let s = &self.shared.stats;
        match e {
            Event::Login(login) => {
                self.database = login
                    .database
                    .filter(|d| !d.is_empty())
                    .map(|d| String::from_utf8_lossy(&d).into_owned());
            }
            Event::SslRequest { .. } => s.upgraded_to_ssl.inc(),
            Event::ProtocolError { .. } => s.protocol_errors.inc(),
            Event::DecoderError { .. } => s.decoder_errors.inc(),
            Event::Command(c) => {
                self.held_commands += 1;
                return self.on_command(c, info);
            }
            _ => {}
        }
        None
    }

    fn on_command(&mut self, c: Command, info: &mut ConnectionInfo) -> Option<Answerable> {
        match c {
            Command::Query { text, truncated } => {
                let q = self.analyze(&text, truncated)?;
                self.count_statements(&q);
                set_metadata(info, &q);
                Some(Answerable {
                    query: q,
                    runs: true,
                })
            }
            Command::StmtPrepare { text, truncated } => {
                self.preparing = self.analyze(&text, truncated);
                let q = self.preparing.clone()?;
                set_metadata(info, &q);
                Some(Answerable {
                    query: q,
                    runs: false,
                })
            }
            Command::StmtExecute { statement_id, .. } => {
                let q = self.statements.get(&statement_id)?.clone();
                self.count_statements(&q);
                set_metadata(info, &q);
                Some(Answerable {
                    query: q,
                    runs: true,
                })
            }
            Command::StmtClose { statement_id } => {
                self.statements.remove(&statement_id);
                None
            }
            Command::InitDb(db) => {
                self.pending_database = Some(String::from_utf8_lossy(&db).into_owned());
                None
            }
            _ => None,
        }
    }

    fn on_server_event(&mut self, e: Event) {
        let s = &self.shared.stats;
        match e {
            // Envoy counts an attempt per greeting.
            Event::Greeting(_) => s.login_attempts.inc(),
            Event::LoginFailed(_) => s.login_failures.inc(),
            Event::AuthSwitchRequest(_) => s.auth_switch_request.inc(),
            Event::ProtocolError { .. } => s.protocol_errors.inc(),
            Event::DecoderError { .. } => s.decoder_errors.inc(),
            Event::Ok(_) => {
                if let Some(db) = self.pending_database.take() {
                    self.database = Some(db);
                }
            }
            Event::Err(_) => {
                self.pending_database = None;
                self.preparing = None;
            }
            Event::StmtPrepareOk { statement_id, .. } => {
                if let Some(q) = self.preparing.take()
                    && self.statements.len() < MAX_STATEMENTS
                {
                    self.statements.insert(statement_id, q);
                }
            }
            _ => {}
        }
    }

    /// `denied_query_error` framed to answer the command just read.
    fn denied_reply(&self) -> Option<Bytes> {
        let reply = self.shared.config.denied_query_error.as_ref()?;
        let seq = self.session.next_seq();
        match &self.shared.denied {
            Some(framed) if seq == 1 => Some(framed.clone()),
            _ => Some(frame(reply, seq)),
        }
    }

    /// Applies the first matching fault to a query about to run: delays it, or
    /// answers it when it came `alone`; true when it was answered.
    async fn inject(&mut self, q: &Analyzed, alone: bool, info: &mut ConnectionInfo) -> bool {
        if self.shared.config.faults.is_empty() {
            return false;
        }
        let shared = self.shared.clone();
        let Some(fault) = shared
            .config
            .faults
            .iter()
            .find(|f| f.matches(&q.statements, &q.tables))
        else {
            return false;
        };
        if let Some((delay, pct)) = fault.delay
            && pct.roll()
        {
            shared.stats.delays_injected.inc();
            tokio::time::sleep(delay).await;
        }
        if let Some((reply, pct)) = &fault.abort
            && alone
            && pct.roll()
        {
            shared.stats.aborts_injected.inc();
            info.deny_response = Some(frame(reply, self.session.next_seq()));
            return true;
        }
        false
    }
}

/// The ERR packet answering the command just sent, as the server would frame it.
fn frame(reply: &ErrorReply, seq: u8) -> Bytes {
    let err = ErrPacket {
        code: reply.code,
        sql_state: Bytes::copy_from_slice(reply.sql_state.as_bytes()),
        message: Bytes::copy_from_slice(reply.message.as_bytes()),
    };
    packet::encode(&err.payload(), seq).into()
}

/// Adds a query's tables and operations to the connection's metadata.
fn set_metadata(info: &mut ConnectionInfo, q: &Analyzed) {
    if q.tables.is_empty() {
        return;
    }
    let ns = info
        .dynamic_metadata
        .entry(NAMESPACE.to_string())
        .or_insert_with(|| MetadataValue::Struct(Default::default()));
    let MetadataValue::Struct(fields) = ns else {
        return;
    };
    for t in &q.tables {
        for key in &t.keys {
            let entry = fields
                .entry(key.clone())
                .or_insert_with(|| MetadataValue::List(Vec::new()));
            let MetadataValue::List(ops) = entry else {
                continue;
            };
            for op in &t.operations {
                let v = MetadataValue::String(op.as_str().to_string());
                if !ops.contains(&v) {
                    ops.push(v);
                }
            }
        }
    }
}

#[async_trait(?Send)]
impl NetworkFilter for MySqlProxyFilter {
    async fn on_new_connection(&mut self, _info: &mut ConnectionInfo) -> NetworkAction {
        self.shared.stats.sessions.inc();
        NetworkAction::Continue
    }

    async fn on_read(
        &mut self,
        data: &mut BytesMut,
        end_stream: bool,
        info: &mut ConnectionInfo,
    ) -> NetworkAction {
        self.deny_armed = false;
        info.deny_response = None;
        if !self.sniffing {
            if !self.held.is_empty() {
                let mut all = std::mem::take(&mut self.held);
                all.extend_from_slice(data);
                *data = all;
            }
            return NetworkAction::Continue;
        }
        // As Envoy, the metadata describes the latest read's queries only.
        info.dynamic_metadata.remove(NAMESPACE);
        let mut last = None;
        for e in self.session.on_client(data) {
            last = self.on_client_event(e, info);
        }
        if self.session.is_stopped() {
            self.sniffing = false;
        }
        let whole = self.session.client_at_boundary();
        // Nothing is held past the client's end: the server gets what it sent.
        if self.sniffing && self.session.is_commanding() && !whole && !end_stream {
            if self.shared.answers && !self.passing && self.held.len() + data.len() <= MAX_QUERY {
                self.held.extend_from_slice(data);
                data.clear();
                return NetworkAction::Continue;
            }
            self.passing = true;
        }
        if !self.held.is_empty() {
            let mut all = std::mem::take(&mut self.held);
            all.extend_from_slice(data);
            *data = all;
        }
        let alone = whole && !self.passing && self.held_commands == 1;
        self.held_commands = 0;
        if whole {
            self.passing = false;
        }
        if std::mem::take(&mut self.unparsed) && self.shared.config.deny_unparsed {
            // No table policy can judge it: refuse it, as a denied query.
            data.clear();
            if alone && let Some(reply) = self.denied_reply() {
                self.shared.stats.queries_denied.inc();
                info.deny_response = Some(reply);
            }
            return NetworkAction::Close;
        }
        let Some(cmd) = last else {
            return NetworkAction::Continue;
        };
        if cmd.runs && self.inject(&cmd.query, alone, info).await {
            data.clear();
            return NetworkAction::Close;
        }
        if !alone {
            return NetworkAction::Continue;
        }
        if let Some(reply) = self.denied_reply() {
            info.deny_response = Some(reply);
            self.deny_armed = true;
        }
        NetworkAction::Continue
    }

    async fn on_write(
        &mut self,
        data: &mut BytesMut,
        _end_stream: bool,
        info: &mut ConnectionInfo,
    ) -> NetworkAction {
        if std::mem::take(&mut self.deny_armed) && info.deny_response.take().is_none() {
            // The chain used the answer: a later filter denied the query.
            self.shared.stats.queries_denied.inc();
        }
        if !self.sniffing {
            return NetworkAction::Continue;
        }
        for e in self.session.on_server(data) {
            self.on_server_event(e);
        }
        if self.session.is_stopped() {
            self.sniffing = false;
        }
        NetworkAction::Continue
    }
}
