//! Envoy's MySQL proxy, `envoy.filters.network.mysql_proxy`: the pure MySQL
//! wire-protocol decoder (bytes in, events out, no I/O).
//!
//! - [`packet`]: packet framing, 16 MiB multi-packet payloads joined, incremental;
//! - [`messages`]: greeting, login, auth switch, OK/ERR/EOF and commands;
//! - [`session`]: the per-connection state machine that yields [`Event`]s.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod messages;
pub mod packet;
pub mod session;

pub use messages::{
    AuthSwitchRequest, Command, DecodeError, EofPacket, ErrPacket, Greeting, Login, OkPacket,
};
pub use packet::{Decoder, Packet};
pub use session::{Direction, Event, Limits, ResultSetEnd, Session};
