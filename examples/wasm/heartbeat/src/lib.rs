//! heartbeat: a background service (no HTTP or TCP traffic of its own) that checks an
//! upstream on a timer and publishes what it finds through shared data.
//!
//! Meant for `envoy.bootstrap.wasm` (a `WasmService` with `singleton: true`), so there
//! is one instance for the whole proxy. It only has a root context:
//!
//! * every `period_ms` (`on_tick`) it increments the counter metric `heartbeat.ticks`
//!   and sends `GET <path>` to `cluster` with `dispatch_http_call` (1 s timeout);
//! * the answer's `:status` (e.g. `200`) is stored in shared data under
//!   `heartbeat.status`, or `none` when the call got no response headers (or could not
//!   be dispatched at all);
//! * it registers the shared queue `heartbeat`; other plugins of the same `vm_id` (see
//!   `heartbeat_client`) enqueue into it, and `on_queue_ready` drains it, incrementing
//!   the counter metric `heartbeat.queued` per item and storing the last item in shared
//!   data under `heartbeat.last_item`.
//!
//! Plugin configuration (JSON, every field optional):
//! `{"cluster": "up", "path": "/health", "period_ms": 200}`
//!
//! Per-tick activity is logged at debug, not info.

use std::time::Duration;

use log::{debug, info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, RootContext};
use proxy_wasm::types::{LogLevel, MetricType};

/// Shared data key holding the last health-check status (`"200"`, `"503"`, `"none"`).
const STATUS_KEY: &str = "heartbeat.status";
/// Shared data key holding the last item taken from the queue.
const LAST_ITEM_KEY: &str = "heartbeat.last_item";
/// Name of the shared queue this service registers (resolve it with vm_id + this name).
const QUEUE_NAME: &str = "heartbeat";
const CALL_TIMEOUT: Duration = Duration::from_secs(1);

proxy_wasm::main! {{
    // Debug, so that the per-tick messages reach the host, which decides (by its own
    // log level, e.g. Envoy's `--component-log-level wasm:debug`) whether to print them.
    proxy_wasm::set_log_level(LogLevel::Debug);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Heartbeat {
            config: Config::default(),
            ticks_metric: None,
            queued_metric: None,
            queue_id: None,
            dispatch_failing: false,
        })
    });
}}

struct Config {
    cluster: String,
    path: String,
    period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster: "up".to_string(),
            path: "/health".to_string(),
            period: Duration::from_millis(200),
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
        if let Some(v) = obj.get("cluster") {
            config.cluster = v
                .as_str()
                .ok_or("\"cluster\" must be a string")?
                .to_string();
        }
        if let Some(v) = obj.get("path") {
            config.path = v.as_str().ok_or("\"path\" must be a string")?.to_string();
        }
        if let Some(v) = obj.get("period_ms") {
            // 0 would turn the timer off, which is never what is meant here.
            let ms = v
                .as_u64()
                .filter(|&ms| ms > 0)
                .ok_or("\"period_ms\" must be a positive integer")?;
            config.period = Duration::from_millis(ms);
        }
        Ok(config)
    }
}

struct Heartbeat {
    config: Config,
    ticks_metric: Option<u32>,
    queued_metric: Option<u32>,
    queue_id: Option<u32>,
    /// Whether the last dispatch failed, so a broken cluster is warned about once, not
    /// on every tick.
    dispatch_failing: bool,
}

impl Heartbeat {
    fn store(&self, key: &str, value: &[u8]) {
        if let Err(status) = self.set_shared_data(key, Some(value), None) {
            warn!("heartbeat: set_shared_data({key}) failed: {status:?}");
        }
    }

    fn bump(metric: Option<u32>, by: i64) {
        if let Some(id) = metric
            && let Err(status) = hostcalls::increment_metric(id, by)
        {
            debug!("heartbeat: increment_metric({id}) failed: {status:?}");
        }
    }
}

fn define_counter(slot: &mut Option<u32>, name: &str) {
    if slot.is_none() {
        match hostcalls::define_metric(MetricType::Counter, name) {
            Ok(id) => *slot = Some(id),
            Err(status) => warn!("heartbeat: cannot define metric {name}: {status:?}"),
        }
    }
}

impl Context for Heartbeat {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        let status = if num_headers == 0 {
            None
        } else {
            self.get_http_call_response_header(":status")
        };
        let value = status.as_deref().unwrap_or("none");
        debug!("heartbeat: call {token_id} answered {value}");
        self.store(STATUS_KEY, value.as_bytes());
    }
}

impl RootContext for Heartbeat {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                warn!("heartbeat: invalid configuration: {e}");
                return false;
            }
        };
        define_counter(&mut self.ticks_metric, "heartbeat.ticks");
        define_counter(&mut self.queued_metric, "heartbeat.queued");
        if self.queue_id.is_none() {
            match hostcalls::register_shared_queue(QUEUE_NAME) {
                Ok(id) => self.queue_id = Some(id),
                Err(status) => warn!("heartbeat: cannot register queue {QUEUE_NAME}: {status:?}"),
            }
        }
        info!(
            "heartbeat: GET {} on cluster {} every {:?}",
            config.path, config.cluster, config.period
        );
        self.set_tick_period(config.period);
        self.config = config;
        true
    }

    fn on_tick(&mut self) {
        Self::bump(self.ticks_metric, 1);
        let headers = vec![
            (":method", "GET"),
            (":path", self.config.path.as_str()),
            (":authority", self.config.cluster.as_str()),
        ];
        match self.dispatch_http_call(&self.config.cluster, headers, None, vec![], CALL_TIMEOUT) {
            Ok(token) => {
                debug!("heartbeat: tick, call {token} sent");
                if self.dispatch_failing {
                    info!(
                        "heartbeat: dispatching to {} works again",
                        self.config.cluster
                    );
                    self.dispatch_failing = false;
                }
            }
            Err(status) => {
                if !self.dispatch_failing {
                    warn!(
                        "heartbeat: dispatch to {:?} failed: {status:?}",
                        self.config.cluster
                    );
                    self.dispatch_failing = true;
                }
                self.store(STATUS_KEY, b"none");
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        let mut last = None;
        let mut count = 0u64;
        loop {
            match self.dequeue_shared_queue(queue_id) {
                Ok(Some(item)) => {
                    Self::bump(self.queued_metric, 1);
                    count += 1;
                    last = Some(item);
                }
                Ok(None) => break,
                Err(status) => {
                    warn!("heartbeat: dequeue from queue {queue_id} failed: {status:?}");
                    break;
                }
            }
        }
        if let Some(item) = last {
            debug!(
                "heartbeat: {count} item(s) from queue {queue_id}, last {:?}",
                String::from_utf8_lossy(&item)
            );
            self.store(LAST_ITEM_KEY, &item);
        }
    }
}
