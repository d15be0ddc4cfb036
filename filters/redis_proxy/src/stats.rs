//! Envoy's `redis.<stat_prefix>.*` stats.

use std::collections::HashMap;

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
    commands: Vec<CommandStats>,
    index: HashMap<&'static str, u16>,
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
        let names: Vec<&'static str> = commands::all().filter(|n| !NO_STATS.contains(n)).collect();
        let commands = names
            .iter()
            .map(|n| {
                let cc = |s: &str| store.counter(format!("{p}command.{n}.{s}"));
                CommandStats {
                    total: cc("total"),
                    success: cc("success"),
                    error: cc("error"),
                    error_fault: cc("error_fault"),
                    delay_fault: cc("delay_fault"),
                    latency: store.histogram(format!("{p}command.{n}.latency")),
                }
            })
            .collect();
        let index = names.into_iter().zip(0u16..).collect();
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
            index,
        }
    }

    /// The stats of a command found by [`Stats::command_index`].
    pub fn command(&self, index: u16) -> &CommandStats {
        &self.commands[usize::from(index)]
    }

    /// Where the stats of a command (any case) are, if Envoy keeps stats for it.
    pub fn command_index(&self, name: &[u8]) -> Option<u16> {
        let mut buf = [0u8; 32];
        let lower = buf.get_mut(..name.len())?;
        for (o, b) in lower.iter_mut().zip(name) {
            *o = b.to_ascii_lowercase();
        }
        self.index.get(std::str::from_utf8(lower).ok()?).copied()
    }
}
