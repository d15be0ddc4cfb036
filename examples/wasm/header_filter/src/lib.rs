//! header_filter: the smallest useful HTTP filter.
//!
//! Request:  adds `x-legate-wasm: header_filter` (the upstream sees it) and
//!           removes `x-remove-me`.
//! Response: adds `x-wasm-filter: header_filter` and `x-request-path: <:path>`.
//!
//! No plugin configuration. Works with any `root_id` (including the default, empty one).

use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
        Box::new(HeaderFilter { path: None })
    });
}}

struct HeaderFilter {
    /// `:path` of the request, remembered for the response.
    path: Option<String>,
}

impl Context for HeaderFilter {}

impl HttpContext for HeaderFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.path = self.get_http_request_header(":path");
        self.add_http_request_header("x-legate-wasm", "header_filter");
        self.remove_http_request_header("x-remove-me");
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.add_http_response_header("x-wasm-filter", "header_filter");
        if let Some(path) = &self.path {
            self.set_http_response_header("x-request-path", Some(path));
        }
        Action::Continue
    }
}
