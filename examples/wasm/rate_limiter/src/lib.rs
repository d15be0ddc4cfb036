//! rate_limiter: a fixed-window rate limiter shared by every worker of the proxy.
//!
//! The count for the current window lives in the proxy's shared data (shared by all VMs
//! with the same `vm_id`, so by all worker threads) under the key
//! `rl:<window>:<key value>`, where `<window>` is `unix time / window_s` and
//! `<key value>` is the value of the request header named by `key_header` (empty when
//! `key_header` is empty or the header is absent). The count is a little-endian u64,
//! updated with a compare-and-swap loop (up to 10 tries; after that the request is let
//! through).
//!
//! * over the limit: `429`, header `x-ratelimit-limit: <limit>`, body `rate limited\n`,
//!   and the counter metric `rate_limiter.rejected` is incremented;
//! * under it: the response gets `x-ratelimit-remaining: <n>`.
//!
//! Plugin configuration (JSON, every field optional):
//! `{"limit": 10, "window_s": 60, "key_header": ""}`
//!
//! Old windows' keys are not deleted (the proxy-wasm ABI has no way to remove a key):
//! one small entry is left per window and key value.

use std::rc::Rc;
use std::time::UNIX_EPOCH;

use log::{info, warn};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, Status};

const CAS_TRIES: usize = 10;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(RateLimitRoot { config: Rc::new(Config::default()), rejected_metric: None })
    });
}}

struct Config {
    limit: u64,
    window_s: u64,
    key_header: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limit: 10,
            window_s: 60,
            key_header: String::new(),
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
        if let Some(v) = obj.get("limit") {
            config.limit = v
                .as_u64()
                .ok_or("\"limit\" must be a non-negative integer")?;
        }
        if let Some(v) = obj.get("window_s") {
            config.window_s = v
                .as_u64()
                .filter(|&w| w > 0)
                .ok_or("\"window_s\" must be a positive integer")?;
        }
        if let Some(v) = obj.get("key_header") {
            config.key_header = v
                .as_str()
                .ok_or("\"key_header\" must be a string")?
                .to_ascii_lowercase();
        }
        Ok(config)
    }
}

struct RateLimitRoot {
    config: Rc<Config>,
    rejected_metric: Option<u32>,
}

impl Context for RateLimitRoot {}

impl RootContext for RateLimitRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match Config::parse(&bytes) {
            Ok(config) => config,
            Err(e) => {
                warn!("rate_limiter: invalid configuration: {e}");
                return false;
            }
        };
        if self.rejected_metric.is_none() {
            match hostcalls::define_metric(MetricType::Counter, "rate_limiter.rejected") {
                Ok(id) => self.rejected_metric = Some(id),
                Err(status) => warn!("rate_limiter: cannot define metric: {status:?}"),
            }
        }
        info!(
            "rate_limiter: limit {} per {}s, key header {:?}",
            config.limit, config.window_s, config.key_header
        );
        self.config = Rc::new(config);
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(RateLimiter {
            config: Rc::clone(&self.config),
            rejected_metric: self.rejected_metric,
            remaining: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct RateLimiter {
    config: Rc<Config>,
    rejected_metric: Option<u32>,
    /// Requests left in the window after this one, for `x-ratelimit-remaining`.
    remaining: Option<u64>,
}

enum Verdict {
    Allowed {
        remaining: u64,
    },
    Rejected,
    /// The CAS loop gave up (heavy contention) or the host refused the write.
    Unknown,
}

impl RateLimiter {
    fn shared_key(&self) -> String {
        let secs = self
            .get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let window = secs / self.config.window_s;
        let key_value = if self.config.key_header.is_empty() {
            String::new()
        } else {
            self.get_http_request_header(&self.config.key_header)
                .unwrap_or_default()
        };
        format!("rl:{window}:{key_value}")
    }

    fn take(&self, key: &str) -> Verdict {
        for _ in 0..CAS_TRIES {
            let (value, cas) = self.get_shared_data(key);
            let count = value
                .and_then(|bytes| <[u8; 8]>::try_from(bytes.as_slice()).ok())
                .map(u64::from_le_bytes)
                .unwrap_or(0);
            if count >= self.config.limit {
                return Verdict::Rejected;
            }
            let next = count + 1;
            match self.set_shared_data(key, Some(&next.to_le_bytes()), cas) {
                Ok(()) => {
                    return Verdict::Allowed {
                        remaining: self.config.limit - next,
                    };
                }
                Err(Status::CasMismatch) => continue,
                Err(status) => {
                    warn!("rate_limiter: set_shared_data({key}) failed: {status:?}");
                    return Verdict::Unknown;
                }
            }
        }
        warn!("rate_limiter: gave up on {key} after {CAS_TRIES} CAS mismatches");
        Verdict::Unknown
    }
}

impl Context for RateLimiter {}

impl HttpContext for RateLimiter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let key = self.shared_key();
        match self.take(&key) {
            Verdict::Allowed { remaining } => {
                self.remaining = Some(remaining);
                Action::Continue
            }
            Verdict::Unknown => Action::Continue,
            Verdict::Rejected => {
                if let Some(id) = self.rejected_metric {
                    let _ = hostcalls::increment_metric(id, 1);
                }
                let limit = self.config.limit.to_string();
                self.send_http_response(
                    429,
                    vec![("x-ratelimit-limit", limit.as_str())],
                    Some(b"rate limited\n"),
                );
                Action::Pause
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if let Some(remaining) = self.remaining {
            self.set_http_response_header("x-ratelimit-remaining", Some(&remaining.to_string()));
        }
        Action::Continue
    }
}
