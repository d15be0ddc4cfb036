//! Envoy's `redis.<stat_prefix>.*` stats.

use legate_filter_api::stats::{Counter, Gauge, Histogram, Store};

use crate::commands;

/// `command.<name>.*`.
pub(crate) struct CommandStats {
    pub total: Counter,
    pub success: Counter,
    pub error: Counter,
    pub error_fault: Counter,
    pub delay_fault: Counter,
    /// Milliseconds from the command's arrival to its reply.
    pub latency: Histogram,
}

/// `cluster.<name>.redis_cluster.upstream_commands.<cmd>.*`, with
/// `enable_command_stats`: each command sent to a server of the cluster.
pub(crate) struct UpstreamCommandStats {
    pub total: Counter,
    pub success: Counter,
    pub failure: Counter,
    /// Microseconds from the command's send to its reply.
    pub latency: Histogram,
}

impl UpstreamCommandStats {
    pub fn new(store: &Store, cluster: &str, command: &str) -> UpstreamCommandStats {
        let p = format!("cluster.{cluster}.redis_cluster.upstream_commands.{command}.");
        UpstreamCommandStats {
            total: store.counter(format!("{p}total")),
            success: store.counter(format!("{p}success")),
            failure: store.counter(format!("{p}failure")),
            latency: store.histogram(format!("{p}latency")),
        }
    }
}

pub(crate) struct Stats {
    pub downstream_cx_active: Gauge,
    pub downstream_cx_total: Counter,
    pub downstream_cx_protocol_error: Counter,
    pub downstream_cx_rx_bytes_total: Counter,
    pub downstream_cx_tx_bytes_total: Counter,
    pub downstream_rq_total: Counter,
    pub downstream_rq_active: Gauge,
    pub splitter_invalid_request: Counter,
    pub splitter_unsupported_command: Counter,
    /// By [`commands::Command::id`]; `None` where Envoy keeps no stats.
    commands: Vec<Option<CommandStats>>,
}

/// Commands Envoy answers without command stats.
const NO_STATS: &[&str] = &["auth", "client", "echo", "ping", "quit", "time"];

impl Stats {
    pub fn new(prefix: &str, store: &Store) -> Stats {
        let p = format!("redis.{prefix}.");
        let c = |n: &str| store.counter(format!("{p}{n}"));
        let g = |n: &str| store.gauge(format!("{p}{n}"));
        // Envoy exports these too; legate does not drain Redis connections, and
        // hands bytes on without holding them, so they stay 0.
        let _ = c("downstream_cx_drain_close");
        let _ = c("downstream_rq_noproto");
        let _ = g("downstream_cx_rx_bytes_buffered");
        let _ = g("downstream_cx_tx_bytes_buffered");
        let commands = commands::all()
            .map(|n| {
                if NO_STATS.contains(&n) {
                    return None;
                }
                let cc = |s: &str| store.counter(format!("{p}command.{n}.{s}"));
                Some(CommandStats {
                    total: cc("total"),
                    success: cc("success"),
                    error: cc("error"),
                    error_fault: cc("error_fault"),
                    delay_fault: cc("delay_fault"),
                    latency: store.histogram(format!("{p}command.{n}.latency")),
                })
            })
            .collect();
        Stats {
            downstream_cx_active: g("downstream_cx_active"),
            downstream_cx_total: c("downstream_cx_total"),
            downstream_cx_protocol_error: c("downstream_cx_protocol_error"),
            downstream_cx_rx_bytes_total: c("downstream_cx_rx_bytes_total"),
            downstream_cx_tx_bytes_total: c("downstream_cx_tx_bytes_total"),
            downstream_rq_total: c("downstream_rq_total"),
            downstream_rq_active: g("downstream_rq_active"),
            splitter_invalid_request: c("splitter.invalid_request"),
            splitter_unsupported_command: c("splitter.unsupported_command"),
            commands,
        }
    }

    /// The stats of a command, if Envoy keeps stats for it.
    pub fn command(&self, id: u16) -> Option<&CommandStats> {
        self.commands.get(usize::from(id))?.as_ref()
    }
}
