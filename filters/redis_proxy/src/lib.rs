//! Envoy's Redis proxy, `envoy.filters.network.redis_proxy`: the pure parts.
//!
//! - [`resp`]: RESP2 values, encoder and incremental decoder (inline commands too);
//! - [`commands`]: the command table of Envoy 1.40 and key extraction (hash tags);
//! - [`split`]: `mget`/`mset`/`del`... splitting and reply assembly;
//! - [`prefix`]: `prefix_routes` matching.
//!
//! Nothing here does I/O; the host drives connections and upstreams.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod commands;
pub mod prefix;
pub mod resp;
pub mod split;
