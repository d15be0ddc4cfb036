//! Envoy's Redis proxy, `envoy.filters.network.redis_proxy`.
//!
//! The pure parts (no I/O):
//!
//! - [`resp`]: RESP2 values, encoder and incremental decoder (inline commands too);
//! - [`commands`]: the command table of Envoy 1.40 and key extraction (hash tags);
//! - [`split`]: `mget`/`mset`/`del`... splitting and reply assembly;
//! - [`prefix`]: `prefix_routes` matching.
//!
//! The I/O is in [`RedisProxyFactory`], the terminal network filter that runs them
//! with one connection per server per worker, shared by the worker's clients.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod commands;
pub mod config;
pub mod prefix;
mod proxy;
pub mod resp;
pub mod split;
mod stats;
mod upstream;

pub use config::{Config, ProtocolOptions};
pub use proxy::RedisProxyFactory;
