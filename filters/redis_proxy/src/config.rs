//! The filter's configuration (`envoy.extensions.filters.network.redis_proxy.v3.RedisProxy`)
//! and the cluster's Redis protocol options, as the host's config parser builds them.

use std::time::Duration;

use bytes::Bytes;
use legate_filter_api::random::Percentage;

use crate::prefix::PrefixRoutes;

/// The filter's config.
#[derive(Debug, Clone)]
pub struct Config {
    /// `stat_prefix`: stats are `redis.<stat_prefix>.*`.
    pub stat_prefix: String,
    /// `settings.op_timeout`: how long a command may wait for its reply.
    pub op_timeout: Duration,
    /// `settings.enable_hashtagging`: hash only the `{tag}` of a key.
    pub enable_hashtagging: bool,
    /// `settings.max_buffer_size_before_flush`: bytes gathered for an upstream
    /// before they are written (0: write at the end of each event-loop turn).
    pub max_buffer_size_before_flush: usize,
    /// `settings.buffer_flush_timeout`: the longest gathered bytes wait
    /// (Envoy's default 3 ms).
    pub buffer_flush_timeout: Duration,
    /// `settings.enable_redirection`: follow `MOVED` and `ASK` replies once.
    pub enable_redirection: bool,
    /// `settings.enable_command_stats`: count each command sent to a cluster
    /// under `cluster.<name>.redis_cluster.upstream_commands.<cmd>.*`.
    pub enable_command_stats: bool,
    /// `prefix_routes`.
    pub routes: PrefixRoutes,
    /// `downstream_auth_passwords` (any one is accepted).
    pub downstream_auth_passwords: Vec<Bytes>,
    /// `downstream_auth_username`: clients must send `auth <user> <password>`.
    pub downstream_auth_username: Option<Bytes>,
    /// `faults`, in config order.
    pub faults: Vec<Fault>,
}

/// `request_mirror_policy` of a route: commands also sent to another cluster,
/// whose replies are dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `cluster`.
    pub cluster: String,
    /// `runtime_fraction.default_value` (always when absent).
    pub fraction: Percentage,
    /// `exclude_read_commands`: mirror only writes.
    pub exclude_read_commands: bool,
}

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// `DELAY`: hold the command this long, then send it.
    Delay(Duration),
    /// `ERROR`: answer `-Fault Injected: Error` without sending it.
    Error,
}

/// One `faults[]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// `fault_type` with its `delay`.
    pub kind: FaultKind,
    /// `fault_enabled.default_value`.
    pub percentage: Percentage,
    /// `commands`, lower case; empty means every command.
    pub commands: Vec<String>,
}

/// The cluster's `typed_extension_protocol_options["envoy.filters.network.redis_proxy"]`
/// (`RedisProtocolOptions`): the credentials sent to each new upstream connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtocolOptions {
    /// `auth_username`.
    pub auth_username: Option<Bytes>,
    /// `auth_password`.
    pub auth_password: Option<Bytes>,
}
