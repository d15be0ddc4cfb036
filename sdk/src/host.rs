//! The host services behind the public modules: the proxy's imports inside a
//! Wasm component, the [`crate::testing`] mock on native targets.

use crate::http::{CallError, Request};
use crate::log::Level;
use crate::message::Map;
use crate::shared::Entry;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;
    use crate::bindings::http::legate::filter::{
        http_client, log, message, metrics, properties, shared_data,
    };

    fn map(m: Map) -> message::Map {
        match m {
            Map::RequestHeaders => message::Map::RequestHeaders,
            Map::RequestTrailers => message::Map::RequestTrailers,
            Map::ResponseHeaders => message::Map::ResponseHeaders,
            Map::ResponseTrailers => message::Map::ResponseTrailers,
        }
    }

    pub fn header_get(m: Map, name: &str) -> Option<Vec<u8>> {
        message::get(map(m), name.as_bytes())
    }

    pub fn header_get_all(m: Map, name: &str) -> Vec<Vec<u8>> {
        message::get_all(map(m), name.as_bytes())
    }

    pub fn header_entries(m: Map) -> Vec<(String, Vec<u8>)> {
        message::entries(map(m))
            .into_iter()
            .map(|h| (h.name, h.value))
            .collect()
    }

    pub fn header_set(m: Map, name: &str, value: &[u8]) -> bool {
        message::set(map(m), name.as_bytes(), value)
    }

    pub fn header_append(m: Map, name: &str, value: &[u8]) -> bool {
        message::append(map(m), name.as_bytes(), value)
    }

    pub fn header_remove(m: Map, name: &str) {
        message::remove(map(m), name.as_bytes())
    }

    pub fn body_get() -> Vec<u8> {
        message::body()
    }

    pub fn body_set(data: &[u8]) {
        message::set_body(data)
    }

    pub fn respond(reply: crate::bindings::http::legate::filter::types::LocalReply) {
        message::respond(&reply)
    }

    fn level(l: Level) -> log::Level {
        match l {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        }
    }

    pub fn log(l: Level, message: &str) {
        log::write(level(l), message);
    }

    pub fn log_enabled(l: Level) -> bool {
        log::enabled(level(l))
    }

    pub enum Metric {
        Counter(metrics::Counter),
        Gauge(metrics::Gauge),
        Histogram(metrics::Histogram),
    }

    impl Metric {
        pub fn counter(name: &str) -> Metric {
            Metric::Counter(metrics::Counter::new(name))
        }
        pub fn gauge(name: &str) -> Metric {
            Metric::Gauge(metrics::Gauge::new(name))
        }
        pub fn histogram(name: &str) -> Metric {
            Metric::Histogram(metrics::Histogram::new(name))
        }
        pub fn counter_add(&self, d: u64) {
            if let Metric::Counter(c) = self {
                c.increment(d)
            }
        }
        pub fn counter_value(&self) -> u64 {
            match self {
                Metric::Counter(c) => c.value(),
                _ => 0,
            }
        }
        pub fn gauge_set(&self, v: i64) {
            if let Metric::Gauge(g) = self {
                g.set(v)
            }
        }
        pub fn gauge_add(&self, d: i64) {
            if let Metric::Gauge(g) = self {
                g.add(d)
            }
        }
        pub fn gauge_value(&self) -> i64 {
            match self {
                Metric::Gauge(g) => g.value(),
                _ => 0,
            }
        }
        pub fn histogram_record(&self, v: u64) {
            if let Metric::Histogram(h) = self {
                h.record_value(v)
            }
        }
    }

    pub fn shared_get(key: &str) -> Option<Entry> {
        shared_data::get(key).map(|e| Entry {
            value: e.value,
            version: e.version,
        })
    }

    pub fn shared_set(key: &str, value: &[u8]) {
        shared_data::set(key, value)
    }

    pub fn shared_cas(key: &str, expected: Option<u32>, value: &[u8]) -> bool {
        shared_data::compare_and_swap(key, expected, value)
    }

    pub fn property(path: &[&str]) -> Option<Vec<u8>> {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        properties::get(&path)
    }

    pub fn send(request: Request) -> Result<u32, CallError> {
        http_client::send(&request.into_wit()).map_err(CallError::from_wit)
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::*;
    use crate::message::list;
    use crate::testing::mock;

    pub fn header_get(m: Map, name: &str) -> Option<Vec<u8>> {
        mock(|k| list::get(k.maps.get(&m)?, name).map(<[u8]>::to_vec))
    }

    pub fn header_get_all(m: Map, name: &str) -> Vec<Vec<u8>> {
        mock(|k| {
            k.maps
                .get(&m)
                .map(|l| list::get_all(l, name))
                .unwrap_or_default()
        })
    }

    pub fn header_entries(m: Map) -> Vec<(String, Vec<u8>)> {
        mock(|k| k.maps.get(&m).cloned().unwrap_or_default())
    }

    pub fn header_set(m: Map, name: &str, value: &[u8]) -> bool {
        mock(|k| list::set(k.maps.entry(m).or_default(), name, value));
        true
    }

    pub fn header_append(m: Map, name: &str, value: &[u8]) -> bool {
        mock(|k| list::append(k.maps.entry(m).or_default(), name, value));
        true
    }

    pub fn header_remove(m: Map, name: &str) {
        mock(|k| list::remove(k.maps.entry(m).or_default(), name))
    }

    pub fn body_get() -> Vec<u8> {
        mock(|k| k.body.clone())
    }

    pub fn body_set(data: &[u8]) {
        mock(|k| k.body = data.to_vec())
    }

    /// The harness reads the action itself; nothing to record.
    #[allow(dead_code)]
    pub fn respond(_reply: crate::bindings::http::legate::filter::types::LocalReply) {}

    pub fn log(l: Level, message: &str) {
        mock(|m| m.logs.push((l, message.to_string())));
    }

    pub fn log_enabled(_: Level) -> bool {
        true
    }

    pub enum Metric {
        Counter(String),
        Gauge(String),
        Histogram(String),
    }

    impl Metric {
        pub fn counter(name: &str) -> Metric {
            mock(|m| *m.counters.entry(name.into()).or_default() += 0);
            Metric::Counter(name.into())
        }
        pub fn gauge(name: &str) -> Metric {
            mock(|m| *m.gauges.entry(name.into()).or_default() += 0);
            Metric::Gauge(name.into())
        }
        pub fn histogram(name: &str) -> Metric {
            mock(|m| {
                m.histograms.entry(name.into()).or_default();
            });
            Metric::Histogram(name.into())
        }
        pub fn counter_add(&self, d: u64) {
            if let Metric::Counter(n) = self {
                mock(|m| *m.counters.entry(n.clone()).or_default() += d)
            }
        }
        pub fn counter_value(&self) -> u64 {
            match self {
                Metric::Counter(n) => mock(|m| m.counters.get(n).copied().unwrap_or(0)),
                _ => 0,
            }
        }
        pub fn gauge_set(&self, v: i64) {
            if let Metric::Gauge(n) = self {
                mock(|m| {
                    m.gauges.insert(n.clone(), v);
                })
            }
        }
        pub fn gauge_add(&self, d: i64) {
            if let Metric::Gauge(n) = self {
                mock(|m| *m.gauges.entry(n.clone()).or_default() += d)
            }
        }
        pub fn gauge_value(&self) -> i64 {
            match self {
                Metric::Gauge(n) => mock(|m| m.gauges.get(n).copied().unwrap_or(0)),
                _ => 0,
            }
        }
        pub fn histogram_record(&self, v: u64) {
            if let Metric::Histogram(n) = self {
                mock(|m| m.histograms.entry(n.clone()).or_default().push(v))
            }
        }
    }

    pub fn shared_get(key: &str) -> Option<Entry> {
        mock(|m| m.shared.get(key).cloned())
    }

    pub fn shared_set(key: &str, value: &[u8]) {
        mock(|m| {
            let version = m
                .shared
                .get(key)
                .map_or(1, |e| e.version.wrapping_add(1).max(1));
            m.shared.insert(
                key.into(),
                Entry {
                    value: value.to_vec(),
                    version,
                },
            );
        })
    }

    pub fn shared_cas(key: &str, expected: Option<u32>, value: &[u8]) -> bool {
        let current = mock(|m| m.shared.get(key).map(|e| e.version));
        if current != expected {
            return false;
        }
        shared_set(key, value);
        true
    }

    pub fn property(path: &[&str]) -> Option<Vec<u8>> {
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        mock(|m| m.properties.get(&path).cloned())
    }

    pub fn send(request: Request) -> Result<u32, CallError> {
        Ok(mock(|m| {
            m.next_call += 1;
            let id = m.next_call;
            m.calls.push((id, request));
            id
        }))
    }
}

pub(crate) use imp::*;
