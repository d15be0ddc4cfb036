//! misbehave: a TEST FIXTURE, not an example to copy. It misbehaves on request so that a
//! host's handling of broken plugins can be exercised.
//!
//! On request headers:
//! * `x-trap`: panics, which aborts, which traps the VM;
//! * `x-loop`: spins forever (the host must interrupt it, or the worker is lost);
//! * `x-hog`: allocates (and touches) 1 MiB chunks until memory runs out, which traps;
//! * `x-bad-status`: does nothing and continues (no `x-misbehave` header);
//! * otherwise: continues, and the response gets `x-misbehave: ok`.
//!
//! No plugin configuration.

use std::hint::black_box;

use log::{error, info};
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
        Box::new(Misbehave { mark_response: false })
    });
}}

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

struct Misbehave {
    mark_response: bool,
}

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
        self.mark_response = true;
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.mark_response {
            self.add_http_response_header("x-misbehave", "ok");
        }
        Action::Continue
    }
}
