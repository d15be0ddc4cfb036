//! sdk_header_filter: the same job as the proxy-wasm `header_filter` example,
//! written with legate-sdk.
//!
//! Request:  adds `x-legate-wasm: sdk_header_filter` (the upstream sees it) and
//!           removes `x-remove-me`.
//! Response: adds `x-wasm-filter: sdk_header_filter` and `x-request-path: <:path>`.

use legate_sdk::{Action, Headers, HttpFilter};

#[derive(Default)]
pub struct HeaderFilter {
    /// `:path` of the request, remembered for the response.
    path: Option<String>,
}

impl HttpFilter for HeaderFilter {
    async fn on_request_headers(&mut self, headers: &mut Headers, _eos: bool) -> Action {
        self.path = headers.path();
        headers.set("x-legate-wasm", "sdk_header_filter");
        headers.remove("x-remove-me");
        Action::Continue
    }

    async fn on_response_headers(&mut self, headers: &mut Headers, _eos: bool) -> Action {
        headers.set("x-wasm-filter", "sdk_header_filter");
        if let Some(path) = &self.path {
            headers.set("x-request-path", path);
        }
        Action::Continue
    }
}

legate_sdk::export_http_filter!(HeaderFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use legate_sdk::Unconfigured;
    use legate_sdk::testing::Harness;

    #[test]
    fn tags_request_and_response() {
        let harness = Harness::<Unconfigured<HeaderFilter>>::new(b"").unwrap();
        let mut stream = harness.stream();
        let req = stream.request_headers(&[(":path", "/a?b"), ("x-remove-me", "1")], true);
        assert_eq!(req.action, Action::Continue);
        assert_eq!(req.headers.get_str("x-legate-wasm").as_deref(), Some("sdk_header_filter"));
        assert!(req.headers.get("x-remove-me").is_none());
        let resp = stream.response_headers(&[(":status", "200")], false);
        assert_eq!(resp.headers.get_str("x-request-path").as_deref(), Some("/a?b"));
        assert_eq!(resp.headers.get_str("x-wasm-filter").as_deref(), Some("sdk_header_filter"));
    }
}
