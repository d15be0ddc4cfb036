//! Envoy's MySQL proxy, `envoy.filters.network.mysql_proxy`: the pure MySQL
//! wire-protocol decoder and SQL analysis (bytes in, events out, no I/O).
//!
//! - [`packet`]: packet framing, 16 MiB multi-packet payloads joined, incremental;
//! - [`messages`]: greeting, login, auth switch, OK/ERR/EOF and commands;
//! - [`session`]: the per-connection state machine that yields [`Event`]s;
//! - [`sql`]: a `COM_QUERY` text's statements and the tables each touches, with
//!   the operations on them (Envoy's metadata, stats and RBAC input).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod messages;
pub mod packet;
pub mod session;
pub mod sql;

pub use messages::{
    AuthSwitchRequest, Command, DecodeError, EofPacket, ErrPacket, Greeting, Login, OkPacket,
};
pub use packet::{Decoder, Packet};
pub use session::{Direction, Event, Limits, ResultSetEnd, Session};
