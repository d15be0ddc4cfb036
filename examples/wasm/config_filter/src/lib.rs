//! config_filter: behaviour driven by plugin and VM configuration.
//!
//! Plugin configuration (JSON, every field optional):
//! `{"headers": {"x-a": "1"}, "deny_paths": ["/admin"], "deny_status": 403}`
//!
//! * a request whose `:path` starts with one of `deny_paths` is answered locally with
//!   `deny_status`, header `x-denied-by: config_filter` and body `denied\n`;
//! * every other response gets the configured `headers`;
//! * if the VM configuration is non-empty, responses also get `x-vm-config: <it>`.
//!
//! Invalid JSON (or a field of the wrong type) makes `on_configure` return false, which
//! rejects the configuration.

use std::rc::Rc;

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, GrpcStatusCode, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(ConfigRoot { config: Rc::new(Config::default()), vm_config: None })
    });
}}

struct Config {
    headers: Vec<(String, String)>,
    deny_paths: Vec<String>,
    deny_status: u32,
    /// The VM configuration as UTF-8 (lossy), when non-empty.
    vm_config: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            headers: Vec::new(),
            deny_paths: Vec::new(),
            deny_status: 403,
            vm_config: None,
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
        if let Some(v) = obj.get("headers") {
            let map = v.as_object().ok_or("\"headers\" must be an object")?;
            for (name, value) in map {
                let value = value
                    .as_str()
                    .ok_or_else(|| format!("header {name:?} must have a string value"))?;
                config
                    .headers
                    .push((name.to_ascii_lowercase(), value.to_string()));
            }
        }
        if let Some(v) = obj.get("deny_paths") {
            let list = v.as_array().ok_or("\"deny_paths\" must be an array")?;
            for path in list {
                let path = path.as_str().ok_or("\"deny_paths\" must hold strings")?;
                config.deny_paths.push(path.to_string());
            }
        }
        if let Some(v) = obj.get("deny_status") {
            config.deny_status = v
                .as_u64()
                .filter(|s| (200..=599).contains(s))
                .ok_or("\"deny_status\" must be an HTTP status (200-599)")?
                as u32;
        }
        Ok(config)
    }
}

struct ConfigRoot {
    config: Rc<Config>,
    vm_config: Option<String>,
}

impl Context for ConfigRoot {}

impl RootContext for ConfigRoot {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        // The VM configuration can only be read here, at VM start.
        self.vm_config = self
            .get_vm_configuration()
            .filter(|bytes| !bytes.is_empty())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(mut config) => {
                config.vm_config = self.vm_config.clone();
                info!(
                    "config_filter: {} header(s), {} deny path(s), deny status {}",
                    config.headers.len(),
                    config.deny_paths.len(),
                    config.deny_status
                );
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                warn!("config_filter: rejecting configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(ConfigFilter {
            config: Rc::clone(&self.config),
            denied: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct ConfigFilter {
    config: Rc<Config>,
    /// Set when this filter answered the request itself: its local reply is left as is.
    denied: bool,
}

impl Context for ConfigFilter {}

impl HttpContext for ConfigFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        if self
            .config
            .deny_paths
            .iter()
            .any(|p| path.starts_with(p.as_str()))
        {
            self.denied = true;
            let grpc = self
                .get_http_request_header("content-type")
                .is_some_and(|ct| ct.starts_with("application/grpc"));
            if grpc {
                // gRPC clients get a gRPC status: PERMISSION_DENIED.
                proxy_wasm::hostcalls::send_grpc_response(
                    GrpcStatusCode::PermissionDenied,
                    Some("denied"),
                    vec![("x-denied-by", b"config_filter")],
                )
                .ok();
                return Action::Pause;
            }
            self.send_http_response(
                self.config.deny_status,
                vec![("x-denied-by", "config_filter")],
                Some(b"denied\n"),
            );
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        if self.denied {
            return Action::Continue;
        }
        for (name, value) in &self.config.headers {
            self.add_http_response_header(name, value);
        }
        if let Some(vm_config) = &self.config.vm_config {
            self.set_http_response_header("x-vm-config", Some(vm_config));
        }
        Action::Continue
    }
}
