//! sdk_tcp_rewrite: the same job as the proxy-wasm `tcp_rewrite` example,
//! written with legate-sdk: an L4 filter that rewrites bytes both ways.
//!
//! * client -> upstream: every `from` becomes `to` (defaults `ping` -> `PONG`);
//! * upstream -> client: every `upstream_from` becomes `upstream_to`
//!   (defaults `hello` -> `HELLO`).
//!
//! Each chunk is rewritten as it arrives. Every connection increments the
//! counter `sdk_tcp_rewrite.connections`.
//!
//! Plugin configuration (JSON, every field optional):
//! `{"from": "ping", "to": "PONG", "upstream_from": "hello", "upstream_to": "HELLO"}`

use std::rc::Rc;

use legate_sdk::metrics::Counter;
use legate_sdk::{Body, NetworkAction, NetworkFilter, NetworkPlugin};

pub struct Rules {
    from: Vec<u8>,
    to: Vec<u8>,
    upstream_from: Vec<u8>,
    upstream_to: Vec<u8>,
}

pub struct Rewrite {
    rules: Rc<Rules>,
    connections: Counter,
}

impl NetworkPlugin for Rewrite {
    type Filter = Conn;

    fn configure(configuration: &[u8]) -> Result<Self, String> {
        let json: serde_json::Value = if configuration.iter().all(u8::is_ascii_whitespace) {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(configuration).map_err(|e| e.to_string())?
        };
        let get = |k: &str, d: &str| -> Vec<u8> {
            json.get(k).and_then(|v| v.as_str()).unwrap_or(d).as_bytes().to_vec()
        };
        Ok(Rewrite {
            rules: Rc::new(Rules {
                from: get("from", "ping"),
                to: get("to", "PONG"),
                upstream_from: get("upstream_from", "hello"),
                upstream_to: get("upstream_to", "HELLO"),
            }),
            connections: Counter::new("sdk_tcp_rewrite.connections"),
        })
    }

    fn new_filter(&self) -> Conn {
        self.connections.increment(1);
        Conn {
            rules: self.rules.clone(),
        }
    }
}

pub struct Conn {
    rules: Rc<Rules>,
}

/// `data` with every `from` replaced, or None if there is none.
fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Option<Vec<u8>> {
    if from.is_empty() || !data.windows(from.len()).any(|w| w == from) {
        return None;
    }
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    Some(out)
}

impl NetworkFilter for Conn {
    fn on_downstream_data(&mut self, data: &mut Body, _eos: bool) -> NetworkAction {
        if let Some(new) = replace_all(data.bytes(), &self.rules.from, &self.rules.to) {
            data.set(new);
        }
        NetworkAction::Continue
    }

    fn on_upstream_data(&mut self, data: &mut Body, _eos: bool) -> NetworkAction {
        let r = &self.rules;
        if let Some(new) = replace_all(data.bytes(), &r.upstream_from, &r.upstream_to) {
            data.set(new);
        }
        NetworkAction::Continue
    }
}

legate_sdk::export_network_filter!(plugin = Rewrite);

#[cfg(test)]
mod tests {
    use super::*;
    use legate_sdk::testing::Connection;

    #[test]
    fn rewrites_both_ways() {
        let mut c = Connection::<Rewrite>::new(b"").unwrap();
        assert_eq!(c.downstream(b"ping ping", false).0, b"PONG PONG");
        assert_eq!(c.upstream(b"hello", false).0, b"HELLO");
        assert_eq!(legate_sdk::testing::counter("sdk_tcp_rewrite.connections"), Some(1));
    }
}
