//! body_rewrite: rewrites request and response bodies, however they are chunked.
//!
//! Each body is buffered whole (the filter returns `Pause` until the last chunk), then
//! every occurrence of a byte string is replaced:
//!
//! * request body:  `from` -> `to`                     (defaults `hello` -> `goodbye`);
//! * response body: `response_from` -> `response_to`   (defaults `world` -> `planet`).
//!
//! `content-length` is removed from requests and responses that have a body, since the
//! rewritten body may have a different length (the proxy re-frames it).
//!
//! Plugin configuration (JSON, every field optional):
//! `{"from": "hello", "to": "goodbye", "response_from": "world", "response_to": "planet"}`
//!
//! Limits: the whole body is held in the proxy's buffer, so bodies larger than the
//! connection's buffer limit are refused by the proxy (413 for requests). A body that
//! ends with trailers is passed on unchanged.

use std::rc::Rc;

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(BodyRewriteRoot { config: Rc::new(Config::default()) })
    });
}}

struct Config {
    from: Vec<u8>,
    to: Vec<u8>,
    response_from: Vec<u8>,
    response_to: Vec<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            from: b"hello".to_vec(),
            to: b"goodbye".to_vec(),
            response_from: b"world".to_vec(),
            response_to: b"planet".to_vec(),
        }
    }
}

impl Config {
    fn parse(bytes: &[u8]) -> Result<Config, String> {
        let mut config = Config::default();
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(config);
        }
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let obj = json
            .as_object()
            .ok_or("configuration must be a JSON object")?;
        for (key, slot) in [
            ("from", &mut config.from),
            ("to", &mut config.to),
            ("response_from", &mut config.response_from),
            ("response_to", &mut config.response_to),
        ] {
            if let Some(v) = obj.get(key) {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("{key:?} must be a string"))?;
                *slot = s.as_bytes().to_vec();
            }
        }
        if config.from.is_empty() || config.response_from.is_empty() {
            return Err("\"from\" and \"response_from\" must not be empty".to_string());
        }
        Ok(config)
    }
}

/// Replaces every non-overlapping occurrence of `from` in `haystack` with `to`.
/// Returns `None` when there is nothing to replace.
fn replace_all(haystack: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    if from.is_empty() || haystack.len() < from.len() {
        return None;
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    let mut replaced = false;
    while i + from.len() <= haystack.len() {
        if &haystack[i..i + from.len()] == from {
            out.extend_from_slice(to);
            i += from.len();
            replaced = true;
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out.extend_from_slice(&haystack[i..]);
    replaced.then_some(out)
}

struct BodyRewriteRoot {
    config: Rc<Config>,
}

impl Context for BodyRewriteRoot {}

impl RootContext for BodyRewriteRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                self.config = Rc::new(config);
                info!("body_rewrite: configured");
                true
            }
            Err(e) => {
                warn!("body_rewrite: invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BodyRewrite {
            config: Rc::clone(&self.config),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct BodyRewrite {
    config: Rc<Config>,
}

impl Context for BodyRewrite {}

impl HttpContext for BodyRewrite {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            self.remove_http_request_header("content-length");
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            // Keep buffering; the proxy calls again with the whole body at the end.
            return Action::Pause;
        }
        if let Some(body) = self.get_http_request_body(0, body_size)
            && let Some(new) = replace_all(&body, &self.config.from, &self.config.to)
        {
            self.set_http_request_body(0, body_size, &new);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            self.remove_http_response_header("content-length");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        if !end_of_stream {
            return Action::Pause;
        }
        let config = &self.config;
        if let Some(body) = self.get_http_response_body(0, body_size)
            && let Some(new) = replace_all(&body, &config.response_from, &config.response_to)
        {
            self.set_http_response_body(0, body_size, &new);
        }
        Action::Continue
    }
}
