//! Write [Legate](https://github.com/legate-proxy) proxy filters in safe Rust.
//!
//! A filter is a Wasm component of the `legate:filter` world (see `wit/` in the
//! Legate repository). This crate hides the component plumbing: you implement
//! [`HttpFilter`] (or [`NetworkFilter`]), call one export macro, and build with
//! `cargo build --release --target wasm32-wasip2`. There is no `unsafe`, no
//! pointer and no integer status code to handle.
//!
//! ```
//! use legate_sdk::{Action, Headers, HttpFilter};
//!
//! #[derive(Default)]
//! struct AddHeader;
//!
//! impl HttpFilter for AddHeader {
//!     async fn on_request_headers(&mut self, headers: &mut Headers, _end_of_stream: bool) -> Action {
//!         headers.set("x-hello", "from legate-sdk");
//!         Action::Continue
//!     }
//! }
//!
//! legate_sdk::export_http_filter!(AddHeader);
//! ```
//!
//! Hooks are `async`: awaiting an outbound call ([`http::send`]) reads as
//! straight-line code, while the proxy keeps serving other streams. The
//! [`testing`] module runs a filter natively under plain `cargo test`.

#![deny(missing_docs)]

#[doc(hidden)]
pub mod bindings;
mod exec;
mod filter;
mod host;
pub mod http;
mod live;
pub mod log;
mod message;
pub mod metrics;
mod network;
pub mod properties;
pub mod shared;
pub mod testing;

pub use filter::{__HttpExport, Action, HttpFilter, HttpPlugin, LocalReply, Unconfigured};
pub use message::{Body, Headers};
pub use network::{__NetworkExport, NetworkAction, NetworkFilter, NetworkPlugin};

/// Exports an HTTP filter from the component.
///
/// `export_http_filter!(MyFilter)` exports a filter that implements
/// [`HttpFilter`] and [`Default`] and takes no configuration: each stream gets a
/// `MyFilter::default()`. `export_http_filter!(plugin = MyPlugin)` exports an
/// [`HttpPlugin`], which receives the plugin configuration once and makes each
/// stream's filter.
///
/// ```
/// # use legate_sdk::{HttpFilter};
/// #[derive(Default)]
/// struct Nothing;
/// impl HttpFilter for Nothing {}
/// legate_sdk::export_http_filter!(Nothing);
/// ```
#[macro_export]
macro_rules! export_http_filter {
    (plugin = $plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LegateHttpExport = $crate::__HttpExport<$plugin>;
            $crate::bindings::http::export_http!(__LegateHttpExport with_types_in $crate::bindings::http);
        };
    };
    ($filter:ty) => {
        $crate::export_http_filter!(plugin = $crate::Unconfigured<$filter>);
    };
}

/// Exports a network (L4) filter from the component.
///
/// `export_network_filter!(MyFilter)` exports a [`NetworkFilter`] that implements
/// [`Default`]; `export_network_filter!(plugin = MyPlugin)` exports a
/// [`NetworkPlugin`] that receives the configuration.
///
/// ```
/// # use legate_sdk::NetworkFilter;
/// #[derive(Default)]
/// struct Pass;
/// impl NetworkFilter for Pass {}
/// legate_sdk::export_network_filter!(Pass);
/// ```
#[macro_export]
macro_rules! export_network_filter {
    (plugin = $plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            type __LegateNetworkExport = $crate::__NetworkExport<$plugin>;
            $crate::bindings::network::export_network!(__LegateNetworkExport with_types_in $crate::bindings::network);
        };
    };
    ($filter:ty) => {
        $crate::export_network_filter!(plugin = $crate::Unconfigured<$filter>);
    };
}
