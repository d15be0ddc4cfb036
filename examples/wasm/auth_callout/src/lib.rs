//! auth_callout: asks an authorization service before letting a request through.
//!
//! On request headers it sends `GET <path>` to the cluster named in the plugin
//! configuration (forwarding the request's `authorization` header, if any) and pauses
//! the request until the answer comes back:
//!
//! * `200`: the request goes on, with `x-auth-user` copied from the auth response
//!   (a client-sent `x-auth-user` is always removed first);
//! * any other status: `403` with `x-auth-denied: 1`;
//! * no answer (unknown cluster, timeout, reset): `503`.
//!
//! Plugin configuration (JSON, every field optional):
//! `{"cluster": "auth", "path": "/check", "timeout_ms": 1000}`

use std::rc::Rc;
use std::time::Duration;

use log::{info, warn};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(AuthRoot { config: Rc::new(Config::default()) })
    });
}}

struct Config {
    cluster: String,
    path: String,
    timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            cluster: "auth".to_string(),
            path: "/check".to_string(),
            timeout: Duration::from_millis(1000),
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
        if let Some(v) = obj.get("timeout_ms") {
            let ms = v
                .as_u64()
                .ok_or("\"timeout_ms\" must be a non-negative integer")?;
            config.timeout = Duration::from_millis(ms);
        }
        Ok(config)
    }
}

struct AuthRoot {
    config: Rc<Config>,
}

impl Context for AuthRoot {}

impl RootContext for AuthRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&bytes) {
            Ok(config) => {
                info!(
                    "auth_callout: cluster={} path={} timeout={:?}",
                    config.cluster, config.path, config.timeout
                );
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                warn!("auth_callout: invalid configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(AuthFilter {
            config: Rc::clone(&self.config),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct AuthFilter {
    config: Rc<Config>,
}

impl HttpContext for AuthFilter {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        // Never trust an identity the client made up: only the auth service sets it.
        self.remove_http_request_header("x-auth-user");
        let authorization = self.get_http_request_header("authorization");
        let mut headers = vec![
            (":method", "GET"),
            (":path", self.config.path.as_str()),
            (":authority", self.config.cluster.as_str()),
        ];
        if let Some(value) = authorization.as_deref() {
            headers.push(("authorization", value));
        }
        match self.dispatch_http_call(
            &self.config.cluster,
            headers,
            None,
            vec![],
            self.config.timeout,
        ) {
            Ok(_token) => Action::Pause,
            Err(status) => {
                warn!(
                    "auth_callout: dispatch to {:?} failed: {status:?}",
                    self.config.cluster
                );
                self.send_http_response(503, vec![], Some(b"auth service unavailable\n"));
                Action::Pause
            }
        }
    }
}

impl Context for AuthFilter {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        _body_size: usize,
        _num_trailers: usize,
    ) {
        let status = if num_headers == 0 {
            None
        } else {
            self.get_http_call_response_header(":status")
        };
        match status.as_deref() {
            Some("200") => {
                if let Some(user) = self.get_http_call_response_header("x-auth-user") {
                    self.set_http_request_header("x-auth-user", Some(&user));
                }
                self.resume_http_request();
            }
            Some(other) => {
                info!("auth_callout: denied (auth service answered {other})");
                self.send_http_response(
                    403,
                    vec![("x-auth-denied", "1")],
                    Some(b"denied by auth_callout\n"),
                );
            }
            None => {
                warn!("auth_callout: the auth call failed (no response)");
                self.send_http_response(503, vec![], Some(b"auth service unavailable\n"));
            }
        }
    }
}
