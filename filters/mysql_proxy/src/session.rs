//! The per-connection session state machine, as Envoy's mysql_proxy decoder tracks
//! it: greeting, login, authentication (switch and more-data), then commands and
//! their responses. Fed each direction's bytes separately; returns [`Event`]s.
//!
//! Like Envoy, a packet out of sequence is a protocol error and is skipped; a
//! malformed packet is a decoder error and stops decoding, as does an SSL request
//! (the bytes after it are TLS). Callers may keep passing bytes after either.

use bytes::Bytes;

use crate::messages::{
    AuthSwitchRequest, ClientHello, Command, DecodeError, EofPacket, ErrPacket, Greeting, Login,
    MARIADB_PROGRESS_CODE, OkPacket, Reader, caps, com, mariadb_caps, status,
};
use crate::packet::{Decoder, FrameError, MAX_PACKET_PAYLOAD, Packet};

/// Which peer sent a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Client to server (downstream).
    Client,
    /// Server to client (upstream).
    Server,
}

/// How a result set ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ResultSetEnd {
    /// An EOF packet (without `CLIENT_DEPRECATE_EOF`).
    Eof(EofPacket),
    /// An OK packet (with `CLIENT_DEPRECATE_EOF`).
    Ok(OkPacket),
    /// An ERR packet in place of a row.
    Err(ErrPacket),
    /// Rows are left open on a server cursor (fetched with `COM_STMT_FETCH`).
    Cursor,
}

/// What the session saw. The stats Envoy keeps map onto events:
/// `login_attempts` on [`Event::Greeting`] (as Envoy counts it), `login_failures` on
/// [`Event::LoginFailed`], `upgraded_to_ssl` on [`Event::SslRequest`],
/// `auth_switch_request` on [`Event::AuthSwitchRequest`], `protocol_errors` on
/// [`Event::ProtocolError`] and `decoder_errors` on [`Event::DecoderError`];
/// `sessions` is counted by the filter per connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The server greeting.
    Greeting(Greeting),
    /// An SSL request; decoding stops for the connection.
    SslRequest {
        /// Client capability flags.
        capabilities: u32,
    },
    /// The client's login.
    Login(Login),
    /// The server asked the client to switch auth plugin.
    AuthSwitchRequest(AuthSwitchRequest),
    /// The client's answer to an auth switch request.
    AuthSwitchResponse {
        /// Length of the auth data.
        len: usize,
    },
    /// Extra auth data from the server (`0x01`), e.g. caching_sha2_password's
    /// fast-auth result (`0x03`) or full-auth request (`0x04`).
    AuthMoreData {
        /// The data after the `0x01` marker.
        data: Bytes,
    },
    /// Extra auth data from the client (e.g. a password over TLS, a key request).
    AuthClientData {
        /// Length of the data.
        len: usize,
    },
    /// Authentication succeeded.
    LoginOk(OkPacket),
    /// Authentication failed.
    LoginFailed(ErrPacket),
    /// A command from the client.
    Command(Command),
    /// An OK response to a command.
    Ok(OkPacket),
    /// An ERR response to a command (or in place of the greeting).
    Err(ErrPacket),
    /// `COM_STMT_PREPARE` succeeded.
    StmtPrepareOk {
        /// The new statement's id.
        statement_id: u32,
        /// Number of result columns.
        columns: u16,
        /// Number of parameters.
        params: u16,
        /// Warning count.
        warnings: u16,
    },
    /// A result set starts.
    ResultSet {
        /// Number of columns.
        columns: u64,
    },
    /// A result set ended.
    ResultSetEnd {
        /// Rows passed through.
        rows: u64,
        /// The terminating packet.
        end: ResultSetEnd,
    },
    /// The server asked for a local file (`LOAD DATA LOCAL INFILE`).
    LocalInfileRequest,
    /// A packet out of sequence, skipped (Envoy's `protocol_errors`).
    ProtocolError {
        /// Who sent it.
        direction: Direction,
        /// Sequence id expected.
        expected: u8,
        /// Sequence id received.
        got: u8,
    },
    /// A malformed packet; decoding has stopped (Envoy's `decoder_errors`).
    DecoderError {
        /// Who sent it.
        direction: Direction,
        /// What was wrong.
        error: DecodeError,
    },
}

/// Limits on what a session keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes kept of one packet the session reads (a query, a login...); a
    /// longer query is reported truncated. Rows and column definitions are never kept.
    /// Defaults to 64 MiB.
    pub max_retained: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // Enough for a query of several packets (MySQL's own max_allowed_packet
            // defaults to 64 MiB), while bounding what one connection can hold.
            max_retained: 64 << 20,
        }
    }
}

/// Enough of a row to tell an OK/EOF terminator (and read its status) from a row.
const ROW_PREFIX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AfterDefs {
    Rows,
    PrepareColumns(u16),
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Response {
    /// OK, ERR, local infile or a result set header.
    First,
    /// OK or ERR.
    Simple,
    /// `COM_STMT_PREPARE`'s OK or ERR.
    Prepare,
    /// Column or parameter definitions still to come.
    Defs { left: u64, then: AfterDefs },
    /// The EOF after definitions (without `CLIENT_DEPRECATE_EOF`).
    DefsEof { then: AfterDefs },
    /// Rows until a terminator.
    Rows { rows: u64 },
    /// Column definitions until EOF (`COM_FIELD_LIST`).
    FieldList,
    /// A command whose response is not followed; skipped until the next command.
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Greeting,
    Login,
    AuthResult,
    AuthSwitchResponse,
    AuthMore,
    Command,
    Response(Response),
    /// File contents from the client until an empty packet, then OK/ERR.
    LocalInfile,
    /// Decoding has stopped (SSL, error, failed login).
    Stopped,
}

/// One connection's decoder.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    state: State,
    client: Decoder,
    server: Decoder,
    /// Sequence id the next packet (either direction) should have.
    expected: u8,
    /// Server capabilities, then those both sides agreed on.
    capabilities: u32,
    /// MariaDB's extended capabilities, likewise (0 unless both sides are MariaDB).
    mariadb_capabilities: u32,
}

impl Default for Session {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Session {
    /// A session awaiting the server greeting.
    pub fn new(limits: Limits) -> Self {
        Session {
            limits,
            state: State::Greeting,
            client: Decoder::new(),
            server: Decoder::new(),
            expected: 0,
            capabilities: 0,
            mariadb_capabilities: 0,
        }
    }

    /// Whether decoding has stopped (SSL request, decoder error or failed login).
    pub fn is_stopped(&self) -> bool {
        self.state == State::Stopped
    }

    /// Whether login is done and the client is sending commands.
    pub fn is_commanding(&self) -> bool {
        matches!(
            self.state,
            State::Command | State::Response(_) | State::LocalInfile
        )
    }

    /// Whether the client's bytes so far end at a packet boundary.
    pub fn client_at_boundary(&self) -> bool {
        self.client.at_boundary()
    }

    /// The sequence id the next packet should carry: after a command, that of
    /// the server's first response packet.
    pub fn next_seq(&self) -> u8 {
        self.expected
    }

    /// The capabilities in force: the server's, then both sides' after login.
    pub fn capabilities(&self) -> u32 {
        self.capabilities
    }

    /// MariaDB's extended capabilities in force (see
    /// [`mariadb_caps`](crate::messages::mariadb_caps)): the server's, then those both
    /// sides set; 0 unless both are MariaDB.
    pub fn mariadb_capabilities(&self) -> u32 {
        self.mariadb_capabilities
    }

    /// Decodes bytes the client sent.
    pub fn on_client(&mut self, data: &[u8]) -> Vec<Event> {
        self.feed(Direction::Client, data)
    }

    /// Decodes bytes the server sent.
    pub fn on_server(&mut self, data: &[u8]) -> Vec<Event> {
        self.feed(Direction::Server, data)
    }

    fn feed(&mut self, dir: Direction, mut data: &[u8]) -> Vec<Event> {
        let mut events = Vec::new();
        while !data.is_empty() && self.state != State::Stopped {
            let retain = self.retain(dir);
            let decoder = match dir {
                Direction::Client => &mut self.client,
                Direction::Server => &mut self.server,
            };
            match decoder.decode(&mut data, retain) {
                Ok(Some(packet)) => self.on_packet(dir, packet, &mut events),
                Ok(None) => break,
                Err(FrameError { expected, got }) => self.fail(
                    dir,
                    DecodeError::new(
                        "packet",
                        format!("continuation has sequence id {got}, expected {expected}"),
                    ),
                    &mut events,
                ),
            }
        }
        events
    }

    /// How much of the next packet from `dir` to keep.
    fn retain(&self, dir: Direction) -> usize {
        let max = self.limits.max_retained;
        match (dir, self.state) {
            (Direction::Server, State::Response(Response::Rows { .. })) => ROW_PREFIX,
            (
                Direction::Server,
                State::Response(Response::Defs { .. } | Response::FieldList | Response::Any),
            ) => ROW_PREFIX.min(max),
            (Direction::Client, State::LocalInfile) => 0,
            (Direction::Client, State::AuthSwitchResponse | State::AuthMore) => 0,
            _ => max,
        }
    }

    fn fail(&mut self, direction: Direction, error: DecodeError, events: &mut Vec<Event>) {
        self.state = State::Stopped;
        events.push(Event::DecoderError { direction, error });
    }

    fn on_packet(&mut self, dir: Direction, p: Packet, events: &mut Vec<Event>) {
        let after_auth = matches!(
            self.state,
            State::Command | State::Response(_) | State::LocalInfile
        );
        if dir == Direction::Client && after_auth && p.seq == 0 {
            // A new command ends whatever response was being followed.
            self.state = State::Command;
        } else if p.seq != self.expected {
            events.push(Event::ProtocolError {
                direction: dir,
                expected: self.expected,
                got: p.seq,
            });
            return;
        }
        self.expected = p.last_seq.wrapping_add(1);
        if let Err(e) = self.dispatch(dir, &p, events) {
            self.fail(dir, e, events);
        }
    }

    fn dispatch(
        &mut self,
        dir: Direction,
        p: &Packet,
        events: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let first = p.payload.first().copied();
        match (self.state, dir) {
            (State::Greeting, Direction::Server) => {
                if first == Some(0xFF) {
                    events.push(Event::Err(ErrPacket::parse(&p.payload)?));
                    self.state = State::Stopped;
                    return Ok(());
                }
                let g = Greeting::parse(&p.payload)?;
                self.capabilities = g.capabilities;
                self.mariadb_capabilities = g.mariadb_capabilities.unwrap_or(0);
                events.push(Event::Greeting(g));
                self.state = State::Login;
            }
            (State::Login, Direction::Client) => match ClientHello::parse(&p.payload)? {
                ClientHello::SslRequest { capabilities } => {
                    events.push(Event::SslRequest { capabilities });
                    self.state = State::Stopped;
                }
                ClientHello::Login(login) => {
                    if self.capabilities != 0 {
                        self.capabilities &= login.capabilities;
                    } else {
                        self.capabilities = login.capabilities;
                    }
                    self.mariadb_capabilities &= login.mariadb_capabilities.unwrap_or(0);
                    events.push(Event::Login(login));
                    self.state = State::AuthResult;
                }
            },
            (State::AuthResult | State::AuthMore, Direction::Server) => match first {
                Some(0x00) => {
                    events.push(Event::LoginOk(OkPacket::parse(
                        &p.payload,
                        self.capabilities,
                    )?));
                    self.state = State::Command;
                    self.expected = 0;
                }
                Some(0xFF) => {
                    events.push(Event::LoginFailed(ErrPacket::parse(&p.payload)?));
                    // The server closes the connection after a failed login.
                    self.state = State::Stopped;
                }
                Some(0xFE) => {
                    events.push(Event::AuthSwitchRequest(AuthSwitchRequest::parse(
                        &p.payload,
                    )?));
                    self.state = State::AuthSwitchResponse;
                }
                Some(0x01) => {
                    events.push(Event::AuthMoreData {
                        data: p.payload.slice(1..),
                    });
                    self.state = State::AuthMore;
                }
                other => {
                    return Err(DecodeError::new(
                        "auth response",
                        format!("unexpected header {other:?}"),
                    ));
                }
            },
            (State::AuthSwitchResponse, Direction::Client) => {
                events.push(Event::AuthSwitchResponse { len: p.len });
                self.state = State::AuthMore;
            }
            (State::AuthMore, Direction::Client) => {
                events.push(Event::AuthClientData { len: p.len });
            }
            (State::Command, Direction::Client) => {
                let command = Command::parse(&p.payload, p.is_truncated())?;
                self.state = match command.code() {
                    com::QUIT | com::STMT_CLOSE | com::STMT_SEND_LONG_DATA => State::Command,
                    com::QUERY | com::STMT_EXECUTE => State::Response(Response::First),
                    com::INIT_DB | com::PING | com::STMT_RESET => State::Response(Response::Simple),
                    com::STMT_PREPARE => State::Response(Response::Prepare),
                    com::STMT_FETCH => State::Response(Response::Rows { rows: 0 }),
                    com::FIELD_LIST => State::Response(Response::FieldList),
                    _ => State::Response(Response::Any),
                };
                events.push(Event::Command(command));
            }
            (State::Response(r), Direction::Server) => self.on_response(r, p, events)?,
            (State::Response(Response::Any), Direction::Client) => {
                // E.g. COM_CHANGE_USER's auth exchange: not followed.
            }
            (State::LocalInfile, Direction::Client) => {
                if p.len == 0 {
                    self.state = State::Response(Response::Simple);
                }
            }
            (_, direction) => {
                return Err(DecodeError::new(
                    "packet",
                    format!(
                        "unexpected packet from the {direction:?} in state {:?}",
                        self.state
                    ),
                ));
            }
        }
        Ok(())
    }

    fn deprecate_eof(&self) -> bool {
        self.capabilities & caps::CLIENT_DEPRECATE_EOF != 0
    }

    fn on_response(
        &mut self,
        r: Response,
        p: &Packet,
        events: &mut Vec<Event>,
    ) -> Result<(), DecodeError> {
        let first = p.payload.first().copied();
        let caps = self.capabilities;
        if first == Some(0xFF)
            && self.mariadb_capabilities & mariadb_caps::MARIADB_CLIENT_PROGRESS != 0
            && p.payload.get(1..3) == Some(&MARIADB_PROGRESS_CODE.to_le_bytes()[..])
        {
            // A MariaDB progress report: the response is still to come.
            return Ok(());
        }
        match r {
            Response::First | Response::Simple => match first {
                Some(0x00) => {
                    let ok = OkPacket::parse(&p.payload, caps)?;
                    self.state = if ok.status & status::SERVER_MORE_RESULTS_EXISTS != 0 {
                        State::Response(Response::First)
                    } else {
                        State::Command
                    };
                    events.push(Event::Ok(ok));
                }
                Some(0xFF) => {
                    events.push(Event::Err(ErrPacket::parse(&p.payload)?));
                    self.state = State::Command;
                }
                Some(0xFB) if r == Response::First => {
                    events.push(Event::LocalInfileRequest);
                    self.state = State::LocalInfile;
                }
                _ if r == Response::First => {
                    let mut rd = Reader::new(&p.payload, "result set header");
                    let columns = rd.lenenc("column count")?;
                    if columns == 0 {
                        return Err(DecodeError::new("result set header", "zero columns"));
                    }
                    let metadata_follows = self.mariadb_capabilities
                        & mariadb_caps::MARIADB_CLIENT_CACHE_METADATA
                        == 0
                        || rd.u8("metadata follows")? != 0;
                    events.push(Event::ResultSet { columns });
                    self.state = if metadata_follows {
                        State::Response(Response::Defs {
                            left: columns,
                            then: AfterDefs::Rows,
                        })
                    } else if self.deprecate_eof() {
                        self.after_defs(AfterDefs::Rows)
                    } else {
                        // The column definitions are skipped, not their EOF.
                        State::Response(Response::DefsEof {
                            then: AfterDefs::Rows,
                        })
                    };
                }
                other => {
                    return Err(DecodeError::new(
                        "command response",
                        format!("unexpected header {other:?}"),
                    ));
                }
            },
            Response::Prepare => match first {
                Some(0x00) => {
                    let mut rd = Reader::new(&p.payload, "COM_STMT_PREPARE_OK");
                    rd.u8("header")?;
                    let statement_id = rd.u32("statement id")?;
                    let columns = rd.u16("columns")?;
                    let params = rd.u16("params")?;
                    let warnings = if rd.remaining() >= 3 {
                        rd.u8("reserved")?;
                        rd.u16("warnings")?
                    } else {
                        0
                    };
                    events.push(Event::StmtPrepareOk {
                        statement_id,
                        columns,
                        params,
                        warnings,
                    });
                    self.state = if params > 0 {
                        State::Response(Response::Defs {
                            left: u64::from(params),
                            then: AfterDefs::PrepareColumns(columns),
                        })
                    } else {
                        self.after_defs(AfterDefs::PrepareColumns(columns))
                    };
                }
                Some(0xFF) => {
                    events.push(Event::Err(ErrPacket::parse(&p.payload)?));
                    self.state = State::Command;
                }
                other => {
                    return Err(DecodeError::new(
                        "COM_STMT_PREPARE response",
                        format!("unexpected header {other:?}"),
                    ));
                }
            },
            Response::Defs { left, then } => {
                let left = left - 1;
                self.state = if left > 0 {
                    State::Response(Response::Defs { left, then })
                } else if self.deprecate_eof() {
                    self.after_defs(then)
                } else {
                    State::Response(Response::DefsEof { then })
                };
            }
            Response::DefsEof { then } => {
                if first != Some(0xFE) || p.len >= 9 {
                    return Err(DecodeError::new(
                        "result set",
                        "expected EOF after definitions",
                    ));
                }
                let eof = EofPacket::parse(&p.payload, caps)?;
                if then == AfterDefs::Rows && eof.status & status::SERVER_STATUS_CURSOR_EXISTS != 0
                {
                    events.push(Event::ResultSetEnd {
                        rows: 0,
                        end: ResultSetEnd::Cursor,
                    });
                    self.state = State::Command;
                } else {
                    self.state = self.after_defs(then);
                }
            }
            Response::Rows { rows } => {
                let terminator = first == Some(0xFE)
                    && if self.deprecate_eof() {
                        p.len < MAX_PACKET_PAYLOAD
                    } else {
                        p.len < 9
                    };
                if terminator {
                    let (end, status) = if self.deprecate_eof() {
                        let ok = OkPacket::parse(&p.payload, caps)?;
                        let s = ok.status;
                        (ResultSetEnd::Ok(ok), s)
                    } else {
                        let eof = EofPacket::parse(&p.payload, caps)?;
                        let s = eof.status;
                        (ResultSetEnd::Eof(eof), s)
                    };
                    events.push(Event::ResultSetEnd { rows, end });
                    self.state = if status & status::SERVER_MORE_RESULTS_EXISTS != 0 {
                        State::Response(Response::First)
                    } else {
                        State::Command
                    };
                } else if first == Some(0xFF) {
                    let err = ErrPacket::parse(&p.payload)?;
                    events.push(Event::ResultSetEnd {
                        rows,
                        end: ResultSetEnd::Err(err),
                    });
                    self.state = State::Command;
                } else {
                    self.state = State::Response(Response::Rows {
                        rows: rows.saturating_add(1),
                    });
                }
            }
            Response::FieldList => {
                if first == Some(0xFF) {
                    events.push(Event::Err(ErrPacket::parse(&p.payload)?));
                    self.state = State::Command;
                } else if first == Some(0xFE) && p.len < 9 {
                    self.state = State::Command;
                }
            }
            Response::Any => {}
        }
        Ok(())
    }

    fn after_defs(&self, then: AfterDefs) -> State {
        match then {
            AfterDefs::Rows => State::Response(Response::Rows { rows: 0 }),
            AfterDefs::PrepareColumns(0) | AfterDefs::Done => State::Command,
            AfterDefs::PrepareColumns(n) => State::Response(Response::Defs {
                left: u64::from(n),
                then: AfterDefs::Done,
            }),
        }
    }
}
