//! Envoy's MySQL proxy, `envoy.filters.network.mysql_proxy`: a pure MySQL
//! wire-protocol decoder (bytes in, events out, no I/O) and the network filter
//! built on it.
//!
//! - [`packet`]: packet framing, 16 MiB multi-packet payloads joined, incremental;
//! - [`messages`]: greeting, login, auth switch, OK/ERR/EOF and commands;
//! - [`session`]: the per-connection state machine that yields [`Event`]s;
//! - [`sql`]: a `COM_QUERY` text's statements and the tables each touches, with
//!   the operations on them;
//! - [`filter`] and [`config`]: the network filter, its stats, metadata and faults.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod filter;
pub mod messages;
pub mod packet;
pub mod session;
pub mod sql;

pub use config::Config;
pub use filter::{MySqlProxyFactory, NAMESPACE};
pub use messages::{
    AuthSwitchRequest, Command, DecodeError, EofPacket, ErrPacket, Greeting, Login, OkPacket,
};
pub use packet::{Decoder, Packet};
pub use session::{Direction, Event, Limits, ResultSetEnd, Session};
