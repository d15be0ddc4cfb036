//! sdk_misbehave: a test fixture, not an example to copy. It misbehaves on
//! request headers to show the proxy's isolation of component filters:
//!
//! * `x-trap`: panics (the instance traps);
//! * `x-loop`: loops forever (cut at `max_callback_duration`);
//! * `x-hog`: allocates until the memory cap stops it;
//! * `x-print`: writes to stdout and stderr (they go to the proxy's log), and
//!   reads the environment from `vm_config.environment_variables`;
//! * `x-hang`: awaits a future that never completes, with no call out (the
//!   proxy fails the stream rather than hold it forever);
//! * `x-props`: answers 200 with properties, one per line;
//! * `x-count`: adds one to the shared key `count` with compare-and-swap and
//!   answers the new value;
//! * otherwise the response gets `x-misbehave: ok`.
//!
//! Every stream that ends adds one to the counter `sdk_misbehave_streams_done`.

use legate_sdk::{Action, Headers, HttpFilter, LocalReply, metrics, properties, shared};

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
        if headers.contains("x-hang") {
            std::future::pending::<()>().await;
        }
        if headers.contains("x-props") {
            let text = |p: &[&str]| properties::get_str(p).unwrap_or_else(|| "-".into());
            let port = properties::get_int(&["source", "port"]).unwrap_or(-1);
            let body = format!(
                "{}\n{}\n{}\n{}\n{}\n",
                text(&["plugin_name"]),
                text(&["request", "path"]),
                text(&["source", "address"]),
                port,
                text(&["xds", "route_name"]),
            );
            return Action::Respond(LocalReply::new(200).with_body(body));
        }
        if headers.contains("x-count") {
            let n = loop {
                let (n, version) = match shared::get("count") {
                    Some(e) => (
                        u64::from_le_bytes(e.value.try_into().unwrap_or([0; 8])),
                        Some(e.version),
                    ),
                    None => (0, None),
                };
                if shared::compare_and_swap("count", version, &(n + 1).to_le_bytes()) {
                    break n + 1;
                }
            };
            return Action::Respond(LocalReply::new(200).with_body(format!("{n}\n")));
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

    fn on_done(&mut self) {
        metrics::Counter::new("sdk_misbehave_streams_done").increment(1);
    }
}

legate_sdk::export_http_filter!(Misbehave);
