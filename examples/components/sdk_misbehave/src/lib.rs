//! sdk_misbehave: a test fixture, not an example to copy. It misbehaves on
//! request headers to show the proxy's isolation of component filters:
//!
//! * `x-trap`: panics (the instance traps);
//! * `x-loop`: loops forever (cut at `max_callback_duration`);
//! * `x-hog`: allocates until the memory cap stops it;
//! * `x-print`: writes to stdout and stderr (they go to the proxy's log), and
//!   reads the environment from `vm_config.environment_variables`;
//! * otherwise the response gets `x-misbehave: ok`.

use legate_sdk::{Action, Headers, HttpFilter};

#[derive(Default)]
pub struct Misbehave;

impl HttpFilter for Misbehave {
    async fn on_request_headers(&mut self, headers: &mut Headers, _eos: bool) -> Action {
        if headers.contains("x-trap") {
            panic!("x-trap asked for a panic");
        }
        if headers.contains("x-loop") {
            let mut n: u64 = 0;
            loop {
                n = std::hint::black_box(n.wrapping_add(1));
            }
        }
        if headers.contains("x-hog") {
            let mut hog: Vec<Vec<u8>> = Vec::new();
            loop {
                hog.push(vec![1u8; 1 << 20]);
                std::hint::black_box(&hog);
            }
        }
        if headers.contains("x-print") {
            println!("stdout says hi");
            eprintln!("stderr says {}", std::env::var("GREETING").unwrap_or_default());
        }
        Action::Continue
    }

    async fn on_response_headers(&mut self, headers: &mut Headers, _eos: bool) -> Action {
        headers.set("x-misbehave", "ok");
        Action::Continue
    }
}

legate_sdk::export_http_filter!(Misbehave);
