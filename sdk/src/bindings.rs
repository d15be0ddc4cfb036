//! Bindings generated from `wit/` (the `legate:filter` package). Filter authors
//! use the safe API of this crate instead; the export macros refer to this module.
#![allow(unsafe_code, missing_docs, clippy::all)]

/// The `http-filter` world: host imports and the `http-handler` export.
pub mod http {
    wit_bindgen::generate!({
        world: "http-filter",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_http",
        default_bindings_module: "::legate_sdk::bindings::http",
    });
}

/// The `network-filter` world; its imports are the `http` module's.
pub mod network {
    wit_bindgen::generate!({
        world: "network-filter",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_network",
        default_bindings_module: "::legate_sdk::bindings::network",
        with: {
            "legate:filter/types@0.1.0": crate::bindings::http::legate::filter::types,
            "legate:filter/log@0.1.0": crate::bindings::http::legate::filter::log,
            "legate:filter/metrics@0.1.0": crate::bindings::http::legate::filter::metrics,
            "legate:filter/shared-data@0.1.0": crate::bindings::http::legate::filter::shared_data,
            "legate:filter/properties@0.1.0": crate::bindings::http::legate::filter::properties,
            "legate:filter/http-client@0.1.0": crate::bindings::http::legate::filter::http_client,
        },
    });
}
