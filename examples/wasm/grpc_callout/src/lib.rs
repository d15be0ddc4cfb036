//! grpc_callout: makes a unary gRPC call before letting a request through.
//!
//! On request headers it calls `<service>/<method>` on the configured cluster with
//! `dispatch_grpc_call` (initial metadata `x-from-wasm: 1`) and pauses the request. The
//! request message is a protobuf message with one field, `1: string` = the request's
//! `:path`, encoded by hand (no protobuf library):
//!
//! ```text
//! message Request { string path = 1; }   // bytes: 0x0a, varint(len), path bytes
//! message Reply   { string text = 1; }
//! ```
//!
//! * gRPC status `0` (OK): field 1 of the reply goes upstream as the request header
//!   `x-grpc-reply` (a client-sent `x-grpc-reply` is always removed first) and the
//!   request resumes; a reply that is not such a message gets `502`;
//! * any other gRPC status: `502` with `x-grpc-status: <code>`, body `grpc call failed`;
//! * the call cannot be dispatched at all: `503`, body `grpc dispatch failed`.
//!
//! With `"stream": true` it opens a gRPC stream instead (`open_grpc_stream`), sends two
//! messages (the `:path`, then `second`) and half-closes; when the stream closes with
//! status 0 the request goes upstream with `x-grpc-stream: <reply1>,<reply2>` and
//! `x-grpc-stream-meta: <initial content-type>;<trailer count>`.
//!
//! Plugin configuration (JSON, every field optional):
//! `{"cluster": "grpc", "service": "test.Echo", "method": "Unary", "timeout_ms": 1000,
//! "stream": false}`

use std::rc::Rc;
use std::time::Duration;

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(GrpcRoot { config: Rc::new(Config::default()) })
    });
}}

struct Config {
    cluster: String,
    service: String,
    method: String,
    timeout: Duration,
    stream: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster: "grpc".to_string(),
            service: "test.Echo".to_string(),
            method: "Unary".to_string(),
            timeout: Duration::from_millis(1000),
            stream: false,
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
        for (name, field) in [
            ("cluster", &mut config.cluster),
            ("service", &mut config.service),
            ("method", &mut config.method),
        ] {
            if let Some(v) = obj.get(name) {
                *field = v
                    .as_str()
                    .ok_or_else(|| format!("\"{name}\" must be a string"))?
                    .to_string();
            }
        }
        if let Some(v) = obj.get("stream") {
            config.stream = v.as_bool().ok_or("\"stream\" must be a boolean")?;
        }
        if let Some(v) = obj.get("timeout_ms") {
            let ms = v
                .as_u64()
                .ok_or("\"timeout_ms\" must be a non-negative integer")?;
            config.timeout = Duration::from_millis(ms);
        }
        Ok(config)
    }
}

/// Appends `value` as a protobuf base-128 varint.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads a varint at `*pos`, advancing `*pos`; `None` if truncated or over 64 bits.
fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// A message with field 1 (`string`, wire type 2) set to `value`.
fn encode_field1(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + 6);
    out.push(0x0a); // field 1, wire type 2 (length-delimited)
    put_varint(&mut out, value.len() as u64);
    out.extend_from_slice(value);
    out
}

/// Field 1 (length-delimited) of a message, skipping any other fields. The last
/// occurrence wins, as in protobuf. `Ok(None)` when field 1 is absent (an empty string
/// in proto3); `Err` when the message is malformed.
fn decode_field1(bytes: &[u8]) -> Result<Option<&[u8]>, &'static str> {
    let mut pos = 0;
    let mut found = None;
    while pos < bytes.len() {
        let tag = get_varint(bytes, &mut pos).ok_or("bad tag")?;
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == 1 && wire_type != 2 {
            return Err("field 1 is not length-delimited");
        }
        match wire_type {
            0 => {
                get_varint(bytes, &mut pos).ok_or("bad varint")?;
            }
            1 => pos = pos.checked_add(8).ok_or("truncated")?,
            2 => {
                let len = get_varint(bytes, &mut pos).ok_or("bad length")?;
                let len = usize::try_from(len).map_err(|_| "bad length")?;
                let end = pos.checked_add(len).ok_or("bad length")?;
                let value = bytes.get(pos..end).ok_or("truncated")?;
                if field == 1 {
                    found = Some(value);
                }
                pos = end;
            }
            5 => pos = pos.checked_add(4).ok_or("truncated")?,
            _ => return Err("unsupported wire type"),
        }
        if pos > bytes.len() {
            return Err("truncated");
        }
    }
    Ok(found)
}

/// Whether `value` can be sent as an HTTP header value (no control characters).
fn header_safe(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

struct GrpcRoot {
    config: Rc<Config>,
}

impl Context for GrpcRoot {}

impl RootContext for GrpcRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                info!(
                    "grpc_callout: {}/{} on cluster {} timeout={:?}",
                    config.service, config.method, config.cluster, config.timeout
                );
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                warn!("grpc_callout: invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(GrpcFilter {
            config: Rc::clone(&self.config),
            replies: Vec::new(),
            meta: String::new(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct GrpcFilter {
    config: Rc<Config>,
    /// Stream mode: the decoded replies so far, and what the metadata said.
    replies: Vec<String>,
    meta: String,
}

impl HttpContext for GrpcFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Only the gRPC service sets this header.
        self.remove_http_request_header("x-grpc-reply");
        let path = self
            .get_http_request_header_bytes(":path")
            .unwrap_or_default();
        let message = encode_field1(&path);
        if self.config.stream {
            return match self.open_grpc_stream(
                &self.config.cluster,
                &self.config.service,
                &self.config.method,
                vec![("x-from-wasm", b"1")],
            ) {
                Ok(token) => {
                    self.send_grpc_stream_message(token, Some(&message), false);
                    self.send_grpc_stream_message(token, Some(&encode_field1(b"second")), true);
                    Action::Pause
                }
                Err(status) => {
                    warn!(
                        "grpc_callout: stream to {:?} failed: {status:?}",
                        self.config.cluster
                    );
                    self.send_http_response(503, vec![], Some(b"grpc dispatch failed\n"));
                    Action::Pause
                }
            };
        }
        match self.dispatch_grpc_call(
            &self.config.cluster,
            &self.config.service,
            &self.config.method,
            vec![("x-from-wasm", b"1")],
            Some(&message),
            self.config.timeout,
        ) {
            Ok(_token) => Action::Pause,
            Err(status) => {
                warn!(
                    "grpc_callout: dispatch to {:?} failed: {status:?}",
                    self.config.cluster
                );
                self.send_http_response(503, vec![], Some(b"grpc dispatch failed\n"));
                Action::Pause
            }
        }
    }
}

impl Context for GrpcFilter {
    fn on_grpc_stream_initial_metadata(&mut self, _token_id: u32, _num_elements: u32) {
        let ct = self
            .get_grpc_stream_initial_metadata_value("content-type")
            .unwrap_or_default();
        self.meta = String::from_utf8_lossy(&ct).into_owned();
    }

    fn on_grpc_stream_message(&mut self, _token_id: u32, message_size: usize) {
        let body = self
            .get_grpc_stream_message(0, message_size)
            .unwrap_or_default();
        if let Ok(Some(reply)) = decode_field1(&body) {
            self.replies
                .push(String::from_utf8_lossy(reply).into_owned());
        }
    }

    fn on_grpc_stream_trailing_metadata(&mut self, _token_id: u32, num_elements: u32) {
        self.meta = format!("{};{num_elements}", self.meta);
    }

    fn on_grpc_stream_close(&mut self, _token_id: u32, status_code: u32) {
        if status_code != 0 {
            let code = status_code.to_string();
            self.send_http_response(
                502,
                vec![("x-grpc-status", &code)],
                Some(b"grpc stream failed\n"),
            );
            return;
        }
        let joined = self.replies.join(",");
        if header_safe(joined.as_bytes()) && header_safe(self.meta.as_bytes()) {
            self.add_http_request_header("x-grpc-stream", &joined);
            self.add_http_request_header("x-grpc-stream-meta", &self.meta);
        }
        self.resume_http_request();
    }

    fn on_grpc_call_response(&mut self, _token_id: u32, status_code: u32, response_size: usize) {
        if status_code != 0 {
            let (_, message) = self.get_grpc_status();
            info!(
                "grpc_callout: call failed: status {status_code} ({})",
                message.as_deref().unwrap_or("no message")
            );
            let code = status_code.to_string();
            self.send_http_response(
                502,
                vec![("x-grpc-status", &code)],
                Some(b"grpc call failed\n"),
            );
            return;
        }
        let body = self
            .get_grpc_call_response_body(0, response_size)
            .unwrap_or_default();
        match decode_field1(&body) {
            Ok(reply) if header_safe(reply.unwrap_or_default()) => {
                self.add_http_request_header_bytes("x-grpc-reply", reply.unwrap_or_default());
                self.resume_http_request();
            }
            Ok(_) => {
                warn!("grpc_callout: reply has control characters, not a header value");
                self.send_http_response(502, vec![], Some(b"grpc reply unusable\n"));
            }
            Err(e) => {
                warn!("grpc_callout: malformed reply ({} bytes): {e}", body.len());
                self.send_http_response(502, vec![], Some(b"grpc reply unusable\n"));
            }
        }
    }
}
