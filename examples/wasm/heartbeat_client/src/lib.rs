//! heartbeat_client: an HTTP filter that reads what the `heartbeat` service publishes
//! and feeds it work, through shared data and a shared queue.
//!
//! It must run with the same `vm_id` as the `heartbeat` service (`heartbeat` in the
//! example configuration): shared data and shared queues are per `vm_id`.
//!
//! * Request headers: reads shared data `heartbeat.status` (written by the service after
//!   every health check) and remembers it; resolves the shared queue `heartbeat` of
//!   vm_id `heartbeat` and, if it exists, enqueues the request's `:path` (the service
//!   counts the items in the metric `heartbeat.queued` and keeps the last one in shared
//!   data `heartbeat.last_item`).
//! * Response headers: adds `x-heartbeat: <status>`, or `x-heartbeat: unknown` when the
//!   service has not stored a status yet (or is not running).
//!
//! No plugin configuration. Works with any `root_id` (including the default, empty one).

use log::debug;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, LogLevel};

/// vm_id and queue name the `heartbeat` service registers its queue under.
const QUEUE_VM_ID: &str = "heartbeat";
const QUEUE_NAME: &str = "heartbeat";
const STATUS_KEY: &str = "heartbeat.status";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_http_context(|_context_id, _root_context_id| -> Box<dyn HttpContext> {
        Box::new(HeartbeatClient { status: None })
    });
}}

struct HeartbeatClient {
    /// `heartbeat.status` as it was when the request arrived.
    status: Option<String>,
}

impl Context for HeartbeatClient {}

impl HttpContext for HeartbeatClient {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (value, _cas) = self.get_shared_data(STATUS_KEY);
        self.status = value.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());

        match self.resolve_shared_queue(QUEUE_VM_ID, QUEUE_NAME) {
            Some(queue_id) => {
                let path = self
                    .get_http_request_header_bytes(":path")
                    .unwrap_or_default();
                if let Err(status) = self.enqueue_shared_queue(queue_id, Some(&path)) {
                    debug!("heartbeat_client: enqueue to queue {queue_id} failed: {status:?}");
                }
            }
            None => debug!("heartbeat_client: no queue {QUEUE_NAME} in vm_id {QUEUE_VM_ID}"),
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let status = self.status.as_deref().unwrap_or("unknown");
        self.add_http_response_header("x-heartbeat", status);
        Action::Continue
    }
}
