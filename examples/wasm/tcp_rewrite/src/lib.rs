//! tcp_rewrite: an L4 (network) filter that rewrites bytes in both directions.
//!
//! * client -> upstream: every `from` becomes `to`                    (defaults `ping` -> `PONG`);
//! * upstream -> client: every `upstream_from` becomes `upstream_to`  (defaults `hello` -> `HELLO`).
//!
//! Each chunk of data is rewritten as it arrives: an occurrence split across two reads
//! is not matched. Every new connection increments the counter metric
//! `tcp_rewrite.connections`.
//!
//! Plugin configuration (JSON, every field optional):
//! `{"from": "ping", "to": "PONG", "upstream_from": "hello", "upstream_to": "HELLO"}`

use std::rc::Rc;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(TcpRewriteRoot { config: Rc::new(Config::default()), connections_metric: None })
    });
}}

struct Config {
    from: Vec<u8>,
    to: Vec<u8>,
    upstream_from: Vec<u8>,
    upstream_to: Vec<u8>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            from: b"ping".to_vec(),
            to: b"PONG".to_vec(),
            upstream_from: b"hello".to_vec(),
            upstream_to: b"HELLO".to_vec(),
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
            ("upstream_from", &mut config.upstream_from),
            ("upstream_to", &mut config.upstream_to),
        ] {
            if let Some(v) = obj.get(key) {
                let s = v
                    .as_str()
                    .ok_or_else(|| format!("{key:?} must be a string"))?;
                *slot = s.as_bytes().to_vec();
            }
        }
        if config.from.is_empty() || config.upstream_from.is_empty() {
            return Err("\"from\" and \"upstream_from\" must not be empty".to_string());
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

struct TcpRewriteRoot {
    config: Rc<Config>,
    connections_metric: Option<u32>,
}

impl Context for TcpRewriteRoot {}

impl RootContext for TcpRewriteRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                warn!("tcp_rewrite: invalid configuration: {e}");
                return false;
            }
        };
        if self.connections_metric.is_none() {
            match hostcalls::define_metric(MetricType::Counter, "tcp_rewrite.connections") {
                Ok(id) => self.connections_metric = Some(id),
                Err(status) => warn!("tcp_rewrite: cannot define metric: {status:?}"),
            }
        }
        info!("tcp_rewrite: configured");
        self.config = Rc::new(config);
        true
    }

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(TcpRewrite {
            config: Rc::clone(&self.config),
            connections_metric: self.connections_metric,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct TcpRewrite {
    config: Rc<Config>,
    connections_metric: Option<u32>,
}

impl Context for TcpRewrite {}

impl StreamContext for TcpRewrite {
    fn on_new_connection(&mut self) -> Action {
        if let Some(id) = self.connections_metric {
            let _ = hostcalls::increment_metric(id, 1);
        }
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        if data_size > 0
            && let Some(data) = self.get_downstream_data(0, data_size)
            && let Some(new) = replace_all(&data, &self.config.from, &self.config.to)
        {
            self.set_downstream_data(0, data_size, &new);
        }
        Action::Continue
    }

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        let config = &self.config;
        if data_size > 0
            && let Some(data) = self.get_upstream_data(0, data_size)
            && let Some(new) = replace_all(&data, &config.upstream_from, &config.upstream_to)
        {
            self.set_upstream_data(0, data_size, &new);
        }
        Action::Continue
    }
}
