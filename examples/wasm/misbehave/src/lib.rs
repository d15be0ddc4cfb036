//! misbehave: a TEST FIXTURE, not an example to copy. It misbehaves on request so that a
//! host's handling of broken plugins can be exercised.
//!
//! On request headers:
//! * `x-trap`: panics, which aborts, which traps the VM;
//! * `x-loop`: spins forever (the host must interrupt it, or the worker is lost);
//! * `x-hog`: allocates (and touches) 1 MiB chunks until memory runs out, which traps;
//! * `x-bad-status`: does nothing and continues (no `x-misbehave` header);
//! * `x-deny`: answers 403 `denied` itself;
//! * `x-set-authority` / `x-set-path`: sets `:authority` / `:path` to the value;
//! * `x-hold-response`: pauses the response headers until the whole response
//!   body has arrived, then adds the response header `x-response-body-bytes: <size>`;
//! * `x-foreign: <text>`: calls the foreign functions `compress` and
//!   `uncompress` on the text, `clear_route_cache`, an unknown one, and
//!   `uncompress` on bytes that are not zlib, and reports each outcome in an
//!   `x-foreign-*` response header;
//! * `x-hold`: pauses the request headers until the whole body has arrived; then
//!   adds the request header `x-held-body-bytes: <size>`, or answers 403
//!   `denied by body` if the body contains `deny`;
//! * otherwise: continues, and the response gets `x-misbehave: ok`.
//!
//! It also reports what the host tells it, for tests: with `x-props` on the request,
//! the response gets `x-prop-<name>` headers with host properties (strings as they
//! are, integers in decimal) and `x-prop-env` with the `MISBEHAVE_ENV` environment
//! variable; every finished stream counts `misbehave.logged`, and
//! `misbehave.logged_<code>` with the `response.code` property, in `on_log`.
//!
//! No plugin configuration.

use std::hint::black_box;

use log::{error, info};
use proxy_wasm::hostcalls::call_foreign_function;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
        Box::new(Misbehave {
            mark_response: false,
            props: false,
            hold: false,
            hold_response: false,
            foreign: Vec::new(),
        })
    });
}}

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

struct Misbehave {
    mark_response: bool,
    props: bool,
    hold: bool,
    hold_response: bool,
    /// `x-foreign-*` response headers.
    foreign: Vec<(&'static str, String)>,
}

/// The outcome of a foreign function call, as a header value.
fn outcome(r: Result<Option<Vec<u8>>, proxy_wasm::types::Status>) -> String {
    match r {
        Ok(v) => format!("ok {}", String::from_utf8_lossy(&v.unwrap_or_default())),
        Err(s) => format!("{s:?}"),
    }
}

/// Properties reported under `x-props`: (header suffix, path, is an integer).
const PROPS: &[(&str, &[&str], bool)] = &[
    ("plugin-name", &["plugin_name"], false),
    ("source-address", &["source", "address"], false),
    ("destination-address", &["destination", "address"], false),
    ("request-path", &["request", "path"], false),
    ("request-url-path", &["request", "url_path"], false),
    ("request-method", &["request", "method"], false),
    ("request-protocol", &["request", "protocol"], false),
    ("response-code", &["response", "code"], true),
    ("response-code-details", &["response", "code_details"], false),
    ("cluster-name", &["xds", "cluster_name"], false),
    ("route-name", &["xds", "route_name"], false),
    ("upstream-address", &["upstream", "address"], false),
];

impl Context for Misbehave {}

impl HttpContext for Misbehave {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let has = |name: &str| self.get_http_request_header(name).is_some();
        if has("x-trap") {
            error!("misbehave: trapping (panic) on purpose");
            panic!("misbehave: x-trap");
        }
        if has("x-loop") {
            error!("misbehave: looping forever on purpose");
            let mut n: u64 = 0;
            loop {
                // black_box keeps the optimiser from proving the loop has no effect.
                n = black_box(n.wrapping_add(1));
            }
        }
        if has("x-hog") {
            error!("misbehave: allocating until memory runs out, on purpose");
            let mut chunks: Vec<Vec<u8>> = Vec::new();
            loop {
                let mut chunk: Vec<u8> = Vec::with_capacity(MIB);
                // Touch every page, so the memory is really used.
                for i in (0..MIB).step_by(PAGE) {
                    chunk.push(black_box(i as u8));
                    chunk.extend(std::iter::repeat_n(0u8, PAGE - 1));
                }
                chunks.push(black_box(chunk));
                if chunks.len().is_multiple_of(256) {
                    info!("misbehave: holding {} MiB", chunks.len());
                }
            }
        }
        if has("x-bad-status") {
            return Action::Continue;
        }
        if has("x-deny") {
            self.send_http_response(403, vec![], Some(b"denied\n"));
            return Action::Pause;
        }
        // Route tests: a changed authority or path routes the request again.
        if let Some(a) = self.get_http_request_header("x-set-authority") {
            self.set_http_request_header(":authority", Some(&a));
        }
        if let Some(p) = self.get_http_request_header("x-set-path") {
            self.set_http_request_header(":path", Some(&p));
        }
        let mut foreign = Vec::new();
        if let Some(text) = self.get_http_request_header("x-foreign") {
            let packed = call_foreign_function("compress", Some(text.as_bytes()));
            let head = match &packed {
                Ok(Some(p)) => format!("{:02x?}", &p[..2.min(p.len())]),
                _ => String::new(),
            };
            foreign.push(("x-foreign-zlib-header", head));
            let unpacked = packed.and_then(|p| call_foreign_function("uncompress", p.as_deref()));
            foreign.push(("x-foreign-roundtrip", outcome(unpacked)));
            let garbage = call_foreign_function("uncompress", Some(b"not zlib"));
            foreign.push(("x-foreign-garbage", outcome(garbage)));
            let clear = call_foreign_function("clear_route_cache", None);
            foreign.push(("x-foreign-clear-route-cache", outcome(clear)));
            let unknown = call_foreign_function("no_such_function", None);
            foreign.push(("x-foreign-unknown", outcome(unknown)));
        }
        let (props, hold, hold_response) = (has("x-props"), has("x-hold"), has("x-hold-response"));
        self.foreign = foreign;
        self.props = props;
        self.hold_response = hold_response;
        if hold {
            self.hold = true;
            self.mark_response = true;
            return Action::Pause;
        }
        self.mark_response = true;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.mark_response {
            self.add_http_response_header("x-misbehave", "ok");
        }
        for (name, value) in std::mem::take(&mut self.foreign) {
            self.add_http_response_header(name, &value);
        }
        if self.props {
            for (name, path, int) in PROPS {
                let Some(v) = self.get_property(path.to_vec()) else {
                    continue;
                };
                let text = if *int && v.len() == 8 {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&v);
                    i64::from_le_bytes(b).to_string()
                } else {
                    String::from_utf8_lossy(&v).into_owned()
                };
                self.add_http_response_header(&format!("x-prop-{name}"), &text);
            }
            let env = std::env::var("MISBEHAVE_ENV").unwrap_or_default();
            self.add_http_response_header("x-prop-env", &env);
        }
        if self.hold_response {
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.hold_response {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        // The headers were held: they can still change.
        self.set_http_response_header("x-response-body-bytes", Some(&body_size.to_string()));
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !self.hold {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let body = self.get_http_request_body(0, body_size).unwrap_or_default();
        if body.windows(4).any(|w| w == b"deny") {
            self.send_http_response(403, vec![], Some(b"denied by body\n"));
            return Action::Pause;
        }
        self.set_http_request_header("x-held-body-bytes", Some(&body.len().to_string()));
        Action::Continue
    }

    fn on_log(&mut self) {
        let code = self
            .get_property(vec!["response", "code"])
            .filter(|v| v.len() == 8)
            .map(|v| i64::from_le_bytes(v.try_into().unwrap_or_default()).to_string())
            .unwrap_or_else(|| "none".into());
        for name in ["misbehave.logged".to_string(), format!("misbehave.logged_{code}")] {
            if let Ok(id) = proxy_wasm::hostcalls::define_metric(MetricType::Counter, &name) {
                let _ = proxy_wasm::hostcalls::increment_metric(id, 1);
            }
        }
    }
}
