//! Legate: an Envoy-compatible, WebAssembly-extensible L4/L7 proxy.
//!
//! A request flows through the folders in this order: `server` (accept, pick a
//! filter chain) -> `network` (network filters, tcp_proxy) -> `http` (connection
//! manager, HTTP filters) -> `router` (route match) -> `upstream` (cluster, load
//! balancer, pool) -> `access_log`; `stats` counts on the way, `admin` reads it.

// Unsafe code is denied (workspace lint). The one exception maps compiled Wasm
// code in from the on-disk cache (`wasm::cache`).

pub mod access_log;
pub mod admin;
pub mod config;
pub mod http;
pub mod network;
pub mod router;
pub mod server;
pub mod stats;
pub mod upstream;
pub mod wasm;
