//! The MySQL messages the session decodes: greeting, login, auth switch, OK, ERR,
//! EOF and commands. Each `parse` takes one logical payload and returns a
//! [`DecodeError`] on a malformed one.

use bytes::Bytes;

/// Capability flags (`CLIENT_*`) used by the decoder.
pub mod caps {
    /// `CLIENT_LONG_PASSWORD`; MariaDB servers clear it to say "MariaDB".
    pub const CLIENT_LONG_PASSWORD: u32 = 1;
    /// `CLIENT_CONNECT_WITH_DB`: the login names a database.
    pub const CLIENT_CONNECT_WITH_DB: u32 = 8;
    /// `CLIENT_PROTOCOL_41`.
    pub const CLIENT_PROTOCOL_41: u32 = 0x200;
    /// `CLIENT_SSL`: the client asks for TLS.
    pub const CLIENT_SSL: u32 = 0x800;
    /// `CLIENT_SECURE_CONNECTION`: the auth response has a 1-byte length.
    pub const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
    /// `CLIENT_PLUGIN_AUTH`: auth plugin names are sent.
    pub const CLIENT_PLUGIN_AUTH: u32 = 0x8_0000;
    /// `CLIENT_CONNECT_ATTRS`: the login carries connection attributes.
    pub const CLIENT_CONNECT_ATTRS: u32 = 0x10_0000;
    /// `CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA`: the auth response has a lenenc length.
    pub const CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA: u32 = 0x20_0000;
    /// `CLIENT_DEPRECATE_EOF`: result sets end with an OK packet, not EOF.
    pub const CLIENT_DEPRECATE_EOF: u32 = 0x100_0000;
}

/// MariaDB's extended capability flags: bits of the 32-bit field a MariaDB server
/// sends in its greeting (where MySQL has reserved bytes) and a MariaDB client in the
/// last 4 bytes of its login's filler, each only when it clears `CLIENT_MYSQL`
/// ([`caps::CLIENT_LONG_PASSWORD`]). In force when both sides set them.
pub mod mariadb_caps {
    /// `MARIADB_CLIENT_PROGRESS`: a long command (`ALTER TABLE`, `LOAD DATA`...) may
    /// send progress reports, ERR packets with error code `0xFFFF`, before its
    /// response.
    pub const MARIADB_CLIENT_PROGRESS: u32 = 1;
    /// `MARIADB_CLIENT_CACHE_METADATA`: a result set's column-count packet has a
    /// "metadata follows" byte after the count; when it is 0 the column definitions
    /// are not sent (the client cached them from an earlier execution).
    pub const MARIADB_CLIENT_CACHE_METADATA: u32 = 0x10;
}

/// Error code of a MariaDB progress report (an ERR packet that is not an error).
pub const MARIADB_PROGRESS_CODE: u16 = 0xFFFF;

/// Server status flags (`SERVER_*`) used by the decoder.
pub mod status {
    /// `SERVER_MORE_RESULTS_EXISTS`: another result follows.
    pub const SERVER_MORE_RESULTS_EXISTS: u16 = 0x0008;
    /// `SERVER_STATUS_CURSOR_EXISTS`: rows are to be fetched with COM_STMT_FETCH.
    pub const SERVER_STATUS_CURSOR_EXISTS: u16 = 0x0040;
}

/// Command bytes (`COM_*`).
pub mod com {
    /// `COM_QUIT`.
    pub const QUIT: u8 = 0x01;
    /// `COM_INIT_DB`.
    pub const INIT_DB: u8 = 0x02;
    /// `COM_QUERY`.
    pub const QUERY: u8 = 0x03;
    /// `COM_FIELD_LIST`.
    pub const FIELD_LIST: u8 = 0x04;
    /// `COM_PING`.
    pub const PING: u8 = 0x0e;
    /// `COM_STMT_PREPARE`.
    pub const STMT_PREPARE: u8 = 0x16;
    /// `COM_STMT_EXECUTE`.
    pub const STMT_EXECUTE: u8 = 0x17;
    /// `COM_STMT_SEND_LONG_DATA`.
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    /// `COM_STMT_CLOSE`.
    pub const STMT_CLOSE: u8 = 0x19;
    /// `COM_STMT_RESET`.
    pub const STMT_RESET: u8 = 0x1a;
    /// `COM_STMT_FETCH`.
    pub const STMT_FETCH: u8 = 0x1c;
}

/// A malformed message: which one and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodeError {
    /// The message being decoded, e.g. `"server greeting"`.
    pub message: &'static str,
    /// What was wrong.
    pub detail: String,
}

impl DecodeError {
    pub(crate) fn new(message: &'static str, detail: impl Into<String>) -> Self {
        DecodeError {
            message,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed {}: {}", self.message, self.detail)
    }
}

impl std::error::Error for DecodeError {}

/// A bounds-checked reader over a payload.
pub(crate) struct Reader<'a> {
    buf: &'a Bytes,
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a Bytes, what: &'static str) -> Self {
        Reader { buf, pos: 0, what }
    }

    fn short(&self, field: &str) -> DecodeError {
        DecodeError::new(self.what, format!("truncated at {field}"))
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.short(field))?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub(crate) fn bytes(&mut self, n: usize, field: &str) -> Result<Bytes, DecodeError> {
        if self.remaining() < n {
            return Err(self.short(field));
        }
        let b = self.buf.slice(self.pos..self.pos + n);
        self.pos += n;
        Ok(b)
    }

    pub(crate) fn uint(&mut self, n: usize, field: &str) -> Result<u64, DecodeError> {
        let b = self.bytes(n, field)?;
        Ok(b.iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        Ok(self.uint(2, field)? as u16)
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        Ok(self.uint(4, field)? as u32)
    }

    /// A length-encoded integer; `0xFB` (NULL) and `0xFF` are errors here.
    pub(crate) fn lenenc(&mut self, field: &str) -> Result<u64, DecodeError> {
        match self.u8(field)? {
            n @ 0..=0xFA => Ok(u64::from(n)),
            0xFC => self.uint(2, field),
            0xFD => self.uint(3, field),
            0xFE => self.uint(8, field),
            b => Err(DecodeError::new(
                self.what,
                format!("bad length-encoded integer 0x{b:02x} at {field}"),
            )),
        }
    }

    pub(crate) fn lenenc_bytes(&mut self, field: &str) -> Result<Bytes, DecodeError> {
        let n = self.lenenc(field)?;
        let n = usize::try_from(n).map_err(|_| self.short(field))?;
        self.bytes(n, field)
    }

    /// A NUL-terminated string; with `lenient`, the end of the payload also ends it.
    pub(crate) fn nul_str(&mut self, field: &str, lenient: bool) -> Result<Bytes, DecodeError> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                let s = self.buf.slice(self.pos..self.pos + i);
                self.pos += i + 1;
                Ok(s)
            }
            None if lenient => self.rest(),
            None => Err(DecodeError::new(
                self.what,
                format!("unterminated string at {field}"),
            )),
        }
    }

    pub(crate) fn skip(&mut self, n: usize, field: &str) -> Result<(), DecodeError> {
        self.bytes(n, field).map(|_| ())
    }

    pub(crate) fn rest(&mut self) -> Result<Bytes, DecodeError> {
        let b = self.buf.slice(self.pos..);
        self.pos = self.buf.len();
        Ok(b)
    }
}

/// The server greeting, protocol version 10 (`Protocol::HandshakeV10`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Greeting {
    /// Protocol version (always 10).
    pub protocol_version: u8,
    /// Server version, e.g. `8.0.36` or `5.5.5-10.11.6-MariaDB-0+deb12u1`.
    pub server_version: Bytes,
    /// Connection (thread) id.
    pub connection_id: u32,
    /// Server capability flags (lower and upper halves joined).
    pub capabilities: u32,
    /// MariaDB's extended capabilities, when the server is MariaDB.
    pub mariadb_capabilities: Option<u32>,
    /// Default character set.
    pub charset: u8,
    /// Status flags.
    pub status: u16,
    /// The scramble (both parts joined, trailing NUL dropped).
    pub auth_plugin_data: Bytes,
    /// Auth plugin name, e.g. `caching_sha2_password`; empty when not sent.
    pub auth_plugin_name: Bytes,
}

impl Greeting {
    /// Decodes a greeting payload.
    pub fn parse(payload: &Bytes) -> Result<Greeting, DecodeError> {
        let mut r = Reader::new(payload, "server greeting");
        let protocol_version = r.u8("protocol version")?;
        if protocol_version != 10 {
            return Err(DecodeError::new(
                "server greeting",
                format!("unsupported protocol version {protocol_version}"),
            ));
        }
        let server_version = r.nul_str("server version", false)?;
        let connection_id = r.u32("connection id")?;
        let part1 = r.bytes(8, "auth plugin data")?;
        r.skip(1, "filler")?;
        let mut capabilities = u32::from(r.u16("capabilities")?);
        let mut g = Greeting {
            protocol_version,
            server_version,
            connection_id,
            capabilities,
            mariadb_capabilities: None,
            charset: 0,
            status: 0,
            auth_plugin_data: part1.clone(),
            auth_plugin_name: Bytes::new(),
        };
        if r.remaining() == 0 {
            return Ok(g);
        }
        g.charset = r.u8("charset")?;
        g.status = r.u16("status")?;
        capabilities |= u32::from(r.u16("capabilities")?) << 16;
        g.capabilities = capabilities;
        let data_len = usize::from(r.u8("auth plugin data length")?);
        r.skip(6, "reserved")?;
        let ext = r.u32("reserved")?;
        if capabilities & caps::CLIENT_LONG_PASSWORD == 0 {
            g.mariadb_capabilities = Some(ext);
        }
        if capabilities & caps::CLIENT_SECURE_CONNECTION != 0 {
            let n = data_len.saturating_sub(8).max(13).min(r.remaining());
            let part2 = r.bytes(n, "auth plugin data")?;
            let mut data = Vec::with_capacity(8 + part2.len());
            data.extend_from_slice(&part1);
            data.extend_from_slice(&part2);
            if data.last() == Some(&0) {
                data.pop();
            }
            g.auth_plugin_data = Bytes::from(data);
        }
        if capabilities & caps::CLIENT_PLUGIN_AUTH != 0 {
            // Some servers omit the final NUL.
            g.auth_plugin_name = r.nul_str("auth plugin name", true)?;
        }
        Ok(g)
    }
}

/// The client's login (`HandshakeResponse41`, or `HandshakeResponse320` from old
/// clients).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// Client capability flags.
    pub capabilities: u32,
    /// Largest packet the client will send.
    pub max_packet: u32,
    /// Character set.
    pub charset: u8,
    /// User name.
    pub user: Bytes,
    /// Auth response (scrambled password), as sent.
    pub auth_response: Bytes,
    /// Database, when `CLIENT_CONNECT_WITH_DB`.
    pub database: Option<Bytes>,
    /// Auth plugin name, when `CLIENT_PLUGIN_AUTH`.
    pub auth_plugin_name: Option<Bytes>,
    /// MariaDB's extended capabilities (see [`mariadb_caps`]), when the client
    /// cleared `CLIENT_MYSQL` (a MariaDB client).
    pub mariadb_capabilities: Option<u32>,
}

/// What the client sent after the greeting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientHello {
    /// An SSL request: TLS starts next.
    SslRequest {
        /// Client capability flags.
        capabilities: u32,
    },
    /// A login.
    Login(Login),
}

/// Length of an SSL request payload (protocol 4.1).
pub const SSL_REQUEST_LEN: usize = 32;

impl ClientHello {
    /// Decodes the client's first packet.
    pub fn parse(payload: &Bytes) -> Result<ClientHello, DecodeError> {
        let what = "client login";
        let mut r = Reader::new(payload, what);
        let low = r.u16("capabilities")?;
        if u32::from(low) & caps::CLIENT_PROTOCOL_41 == 0 {
            // HandshakeResponse320.
            if u32::from(low) & caps::CLIENT_SSL != 0 && payload.len() == 5 {
                return Ok(ClientHello::SslRequest {
                    capabilities: u32::from(low),
                });
            }
            let max_packet = r.uint(3, "max packet")? as u32;
            let user = r.nul_str("user", false)?;
            let auth_response = r.nul_str("auth response", true)?;
            return Ok(ClientHello::Login(Login {
                capabilities: u32::from(low),
                max_packet,
                charset: 0,
                user,
                auth_response,
                database: None,
                auth_plugin_name: None,
                mariadb_capabilities: None,
            }));
        }
        let capabilities = u32::from(low) | u32::from(r.u16("capabilities")?) << 16;
        let max_packet = r.u32("max packet")?;
        let charset = r.u8("charset")?;
        r.skip(19, "filler")?;
        let ext = r.u32("filler")?;
        let mariadb_capabilities = (capabilities & caps::CLIENT_LONG_PASSWORD == 0).then_some(ext);
        if r.remaining() == 0 && capabilities & caps::CLIENT_SSL != 0 {
            return Ok(ClientHello::SslRequest { capabilities });
        }
        let user = r.nul_str("user", false)?;
        let auth_response = if capabilities & caps::CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA != 0 {
            r.lenenc_bytes("auth response")?
        } else if capabilities & caps::CLIENT_SECURE_CONNECTION != 0 {
            let n = usize::from(r.u8("auth response length")?);
            r.bytes(n, "auth response")?
        } else {
            r.nul_str("auth response", true)?
        };
        let database = if capabilities & caps::CLIENT_CONNECT_WITH_DB != 0 && r.remaining() > 0 {
            Some(r.nul_str("database", true)?)
        } else {
            None
        };
        let auth_plugin_name = if capabilities & caps::CLIENT_PLUGIN_AUTH != 0 && r.remaining() > 0
        {
            Some(r.nul_str("auth plugin name", true)?)
        } else {
            None
        };
        // Connection attributes (CLIENT_CONNECT_ATTRS) follow; they are not needed.
        Ok(ClientHello::Login(Login {
            capabilities,
            max_packet,
            charset,
            user,
            auth_response,
            database,
            auth_plugin_name,
            mariadb_capabilities,
        }))
    }
}

/// An auth switch request (`0xFE` during authentication).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSwitchRequest {
    /// The plugin to switch to; empty for the old 0xFE-only request.
    pub plugin_name: Bytes,
    /// Plugin data (a new scramble), trailing NUL dropped.
    pub plugin_data: Bytes,
}

/// Length of the scramble the native and `caching_sha2_password` plugins send.
const SCRAMBLE_LEN: usize = 20;

impl AuthSwitchRequest {
    /// Decodes an auth switch request payload (starting with `0xFE`).
    pub fn parse(payload: &Bytes) -> Result<AuthSwitchRequest, DecodeError> {
        let mut r = Reader::new(payload, "auth switch request");
        if r.u8("header")? != 0xFE {
            return Err(DecodeError::new("auth switch request", "bad header"));
        }
        if r.remaining() == 0 {
            return Ok(AuthSwitchRequest {
                plugin_name: Bytes::new(),
                plugin_data: Bytes::new(),
            });
        }
        let plugin_name = r.nul_str("plugin name", false)?;
        let mut plugin_data = r.rest()?;
        // A 20-byte scramble comes with a NUL terminator; other data (ed25519's
        // 32-byte nonce) is raw and may end in a zero byte of its own.
        if plugin_data.len() == SCRAMBLE_LEN + 1 && plugin_data.last() == Some(&0) {
            plugin_data.truncate(SCRAMBLE_LEN);
        }
        Ok(AuthSwitchRequest {
            plugin_name,
            plugin_data,
        })
    }
}

/// An OK packet (`0x00`, or `0xFE` when it ends a result set under
/// `CLIENT_DEPRECATE_EOF`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OkPacket {
    /// Affected rows.
    pub affected_rows: u64,
    /// Last insert id.
    pub last_insert_id: u64,
    /// Status flags.
    pub status: u16,
    /// Warning count.
    pub warnings: u16,
}

impl OkPacket {
    /// Decodes an OK payload. The info and session-state fields are not read, so a
    /// payload truncated after the warnings still decodes.
    pub fn parse(payload: &Bytes, capabilities: u32) -> Result<OkPacket, DecodeError> {
        let mut r = Reader::new(payload, "OK packet");
        let h = r.u8("header")?;
        if h != 0x00 && h != 0xFE {
            return Err(DecodeError::new(
                "OK packet",
                format!("bad header 0x{h:02x}"),
            ));
        }
        let affected_rows = r.lenenc("affected rows")?;
        let last_insert_id = r.lenenc("last insert id")?;
        let (status, warnings) = if capabilities & caps::CLIENT_PROTOCOL_41 != 0 {
            (r.u16("status")?, r.u16("warnings")?)
        } else {
            (0, 0)
        };
        Ok(OkPacket {
            affected_rows,
            last_insert_id,
            status,
            warnings,
        })
    }
}

/// An ERR packet (`0xFF`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrPacket {
    /// Error code, e.g. 1045 (access denied).
    pub code: u16,
    /// SQL state, e.g. `28000`; empty when not sent.
    pub sql_state: Bytes,
    /// Human-readable message.
    pub message: Bytes,
}

impl ErrPacket {
    /// Decodes an ERR payload. The `#` marker decides whether a SQL state is present,
    /// so it decodes before the capabilities are known.
    pub fn parse(payload: &Bytes) -> Result<ErrPacket, DecodeError> {
        let mut r = Reader::new(payload, "ERR packet");
        if r.u8("header")? != 0xFF {
            return Err(DecodeError::new("ERR packet", "bad header"));
        }
        let code = r.u16("error code")?;
        let sql_state = if r.peek() == Some(b'#') {
            r.skip(1, "sql state marker")?;
            r.bytes(5, "sql state")?
        } else {
            Bytes::new()
        };
        let message = r.rest()?;
        Ok(ErrPacket {
            code,
            sql_state,
            message,
        })
    }

    /// The packet's payload as a protocol 4.1 server sends it (with the SQL state
    /// marker when there is a state). Frame it with [`crate::packet::encode`].
    pub fn payload(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(9 + self.message.len());
        out.push(0xFF);
        out.extend_from_slice(&self.code.to_le_bytes());
        if !self.sql_state.is_empty() {
            out.push(b'#');
            out.extend_from_slice(&self.sql_state);
        }
        out.extend_from_slice(&self.message);
        out
    }
}

/// An EOF packet (`0xFE`, payload shorter than 9 bytes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EofPacket {
    /// Warning count.
    pub warnings: u16,
    /// Status flags.
    pub status: u16,
}

impl EofPacket {
    /// Decodes an EOF payload.
    pub fn parse(payload: &Bytes, capabilities: u32) -> Result<EofPacket, DecodeError> {
        let mut r = Reader::new(payload, "EOF packet");
        if r.u8("header")? != 0xFE {
            return Err(DecodeError::new("EOF packet", "bad header"));
        }
        if capabilities & caps::CLIENT_PROTOCOL_41 == 0 || r.remaining() == 0 {
            return Ok(EofPacket::default());
        }
        Ok(EofPacket {
            warnings: r.u16("warnings")?,
            status: r.u16("status")?,
        })
    }
}

/// A command from the client after authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `COM_QUIT`.
    Quit,
    /// `COM_INIT_DB` with the database name.
    InitDb(Bytes),
    /// `COM_QUERY` with the query text (the retained prefix when `truncated`).
    Query {
        /// The SQL text.
        text: Bytes,
        /// Whether the text was cut at the session's retain limit.
        truncated: bool,
    },
    /// `COM_PING`.
    Ping,
    /// `COM_STMT_PREPARE` with the statement text.
    StmtPrepare {
        /// The SQL text.
        text: Bytes,
        /// Whether the text was cut at the session's retain limit.
        truncated: bool,
    },
    /// `COM_STMT_EXECUTE`.
    StmtExecute {
        /// Statement id.
        statement_id: u32,
        /// Cursor flags.
        flags: u8,
    },
    /// `COM_STMT_CLOSE` (no response).
    StmtClose {
        /// Statement id.
        statement_id: u32,
    },
    /// `COM_STMT_RESET`.
    StmtReset {
        /// Statement id.
        statement_id: u32,
    },
    /// `COM_STMT_SEND_LONG_DATA` (no response).
    StmtSendLongData {
        /// Statement id.
        statement_id: u32,
        /// Parameter index.
        param: u16,
    },
    /// `COM_STMT_FETCH`.
    StmtFetch {
        /// Statement id.
        statement_id: u32,
        /// Rows asked for.
        rows: u32,
    },
    /// Any other command, by its byte.
    Other(u8),
}

impl Command {
    /// Decodes a command packet (`truncated`: the payload is a retained prefix).
    pub fn parse(payload: &Bytes, truncated: bool) -> Result<Command, DecodeError> {
        let mut r = Reader::new(payload, "command");
        let code = r.u8("command byte")?;
        Ok(match code {
            com::QUIT => Command::Quit,
            com::INIT_DB => Command::InitDb(r.rest()?),
            com::QUERY => Command::Query {
                text: r.rest()?,
                truncated,
            },
            com::PING => Command::Ping,
            com::STMT_PREPARE => Command::StmtPrepare {
                text: r.rest()?,
                truncated,
            },
            com::STMT_EXECUTE => Command::StmtExecute {
                statement_id: r.u32("statement id")?,
                flags: r.u8("flags")?,
            },
            com::STMT_CLOSE => Command::StmtClose {
                statement_id: r.u32("statement id")?,
            },
            com::STMT_RESET => Command::StmtReset {
                statement_id: r.u32("statement id")?,
            },
            com::STMT_SEND_LONG_DATA => Command::StmtSendLongData {
                statement_id: r.u32("statement id")?,
                param: r.u16("parameter")?,
            },
            com::STMT_FETCH => Command::StmtFetch {
                statement_id: r.u32("statement id")?,
                rows: r.u32("rows")?,
            },
            other => Command::Other(other),
        })
    }

    /// The command byte.
    pub fn code(&self) -> u8 {
        match self {
            Command::Quit => com::QUIT,
            Command::InitDb(_) => com::INIT_DB,
            Command::Query { .. } => com::QUERY,
            Command::Ping => com::PING,
            Command::StmtPrepare { .. } => com::STMT_PREPARE,
            Command::StmtExecute { .. } => com::STMT_EXECUTE,
            Command::StmtClose { .. } => com::STMT_CLOSE,
            Command::StmtReset { .. } => com::STMT_RESET,
            Command::StmtSendLongData { .. } => com::STMT_SEND_LONG_DATA,
            Command::StmtFetch { .. } => com::STMT_FETCH,
            Command::Other(c) => *c,
        }
    }
}
