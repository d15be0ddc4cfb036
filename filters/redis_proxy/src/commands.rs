//! The commands Envoy 1.40's redis_proxy supports, in one table, and the rules that
//! pick a command's routing key.
//!
//! The table was measured against the real Envoy 1.40.0 binary: every command
//! redis-server 7.0 knows (plus the RedisBloom `bf.*` family and the Redis 7.4+
//! hash-field-expiry commands) was sent through it; those not answered
//! `ERR unknown command` are here, and `MONITOR` on two upstreams showed which
//! argument each one is routed by. Notably 1.40 does *not* support `eval_ro`,
//! `evalsha_ro`, `dbsize`, blocking commands, pub/sub subscriptions, `asking` or
//! `readonly`.

use std::collections::HashMap;
use std::sync::LazyLock;

use bytes::Bytes;
use foldhash::fast::FixedState;

use crate::resp::Value;

/// How a supported command is handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Routed by its first argument (`get key`, `set key value`, ...).
    Simple,
    /// `eval script numkeys key ...`: routed by the argument after `numkeys`
    /// (the 3rd argument, index 3 of the request); needs at least 4 elements.
    Eval,
    /// `object subcommand key`: routed by the 2nd argument.
    Object,
    /// `mget k1 k2 ...`: one `get` per key, the replies gathered in order.
    Mget,
    /// `mset k1 v1 k2 v2 ...`: one `set` per pair, answered `OK` when all are.
    Mset,
    /// `del`/`exists`/`touch`/`unlink`: one command per key, the integers summed.
    SumMulti,
    /// `multi`, `exec`, `discard`: the connection's transaction, pinned to the
    /// server of its first key.
    Transaction,
    /// Answered by the proxy itself: `auth`, `ping`, `time`, `quit`, `echo`,
    /// `hello`, `select`, `unwatch`, `client` (`setname` only), `cluster`.
    Local,
    /// Not tied to a key: Envoy sends these to every shard of the cluster (one
    /// host when the cluster is not a Redis Cluster) and merges the replies:
    /// `config`, `flushall`, `flushdb`, `info`, `keys`, `randomkey`, `role`,
    /// `scan`, `script`, `slowlog`.
    ClusterScope,
}

/// Commands routed by their first argument, sorted (binary search).
const SIMPLE: &[&str] = &[
    "append",
    "bf.add",
    "bf.card",
    "bf.exists",
    "bf.info",
    "bf.insert",
    "bf.loadchunk",
    "bf.madd",
    "bf.mexists",
    "bf.reserve",
    "bf.scandump",
    "bitcount",
    "bitfield",
    "bitfield_ro",
    "bitop",
    "bitpos",
    "copy",
    "decr",
    "decrby",
    "dump",
    "expire",
    "expireat",
    "geoadd",
    "geodist",
    "geohash",
    "geopos",
    "georadius",
    "georadius_ro",
    "georadiusbymember",
    "georadiusbymember_ro",
    "geosearch",
    "geosearchstore",
    "get",
    "getbit",
    "getdel",
    "getex",
    "getrange",
    "getset",
    "hdel",
    "hexists",
    "hexpire",
    "hexpireat",
    "hget",
    "hgetall",
    "hincrby",
    "hincrbyfloat",
    "hkeys",
    "hlen",
    "hmget",
    "hmset",
    "hpersist",
    "hpexpire",
    "hpttl",
    "hrandfield",
    "hscan",
    "hset",
    "hsetnx",
    "hstrlen",
    "httl",
    "hvals",
    "incr",
    "incrby",
    "incrbyfloat",
    "lindex",
    "linsert",
    "llen",
    "lmove",
    "lpop",
    "lpos",
    "lpush",
    "lpushx",
    "lrange",
    "lrem",
    "lset",
    "ltrim",
    "msetnx",
    "persist",
    "pexpire",
    "pexpireat",
    "pfadd",
    "pfcount",
    "pfmerge",
    "psetex",
    "pttl",
    "publish",
    "rename",
    "renamenx",
    "restore",
    "rpop",
    "rpoplpush",
    "rpush",
    "rpushx",
    "sadd",
    "scard",
    "sdiff",
    "sdiffstore",
    "set",
    "setbit",
    "setex",
    "setnx",
    "setrange",
    "sinter",
    "sinterstore",
    "sismember",
    "smembers",
    "smismember",
    "smove",
    "sort",
    "sort_ro",
    "spop",
    "srandmember",
    "srem",
    "sscan",
    "strlen",
    "substr",
    "sunion",
    "sunionstore",
    "ttl",
    "type",
    "watch",
    "xack",
    "xadd",
    "xautoclaim",
    "xclaim",
    "xdel",
    "xlen",
    "xpending",
    "xrange",
    "xrevrange",
    "xtrim",
    "zadd",
    "zcard",
    "zcount",
    "zdiff",
    "zdiffstore",
    "zincrby",
    "zinter",
    "zinterstore",
    "zlexcount",
    "zmscore",
    "zpopmax",
    "zpopmin",
    "zrandmember",
    "zrange",
    "zrangebylex",
    "zrangebyscore",
    "zrangestore",
    "zrank",
    "zrem",
    "zremrangebylex",
    "zremrangebyrank",
    "zremrangebyscore",
    "zrevrange",
    "zrevrangebylex",
    "zrevrangebyscore",
    "zrevrank",
    "zscan",
    "zscore",
    "zunion",
    "zunionstore",
];

/// Commands not tied to a key, sorted.
const CLUSTER_SCOPE: &[&str] = &[
    "config",
    "flushall",
    "flushdb",
    "info",
    "keys",
    "randomkey",
    "role",
    "scan",
    "script",
    "slowlog",
];

/// Commands the proxy answers itself, sorted.
const LOCAL: &[&str] = &[
    "auth", "client", "cluster", "echo", "hello", "ping", "quit", "select", "time", "unwatch",
];

/// Commands that change data (Envoy's list, used for `read_policy` and mirroring
/// of writes only), sorted.
const WRITE: &[&str] = &[
    "append",
    "bitfield",
    "decr",
    "decrby",
    "del",
    "discard",
    "eval",
    "evalsha",
    "exec",
    "expire",
    "expireat",
    "geoadd",
    "getdel",
    "hdel",
    "hincrby",
    "hincrbyfloat",
    "hmset",
    "hset",
    "hsetnx",
    "incr",
    "incrby",
    "incrbyfloat",
    "linsert",
    "lmove",
    "lpop",
    "lpush",
    "lpushx",
    "lrem",
    "lset",
    "ltrim",
    "mset",
    "multi",
    "persist",
    "pexpire",
    "pexpireat",
    "pfadd",
    "psetex",
    "restore",
    "rpop",
    "rpush",
    "rpushx",
    "sadd",
    "set",
    "setbit",
    "setex",
    "setnx",
    "setrange",
    "spop",
    "srem",
    "touch",
    "unlink",
    "zadd",
    "zincrby",
    "zpopmax",
    "zpopmin",
    "zrem",
    "zremrangebylex",
    "zremrangebyrank",
    "zremrangebyscore",
];

/// Lower-cases an ASCII command name into `buf`; `None` if it is too long to be a
/// command.
fn lower<'a>(name: &[u8], buf: &'a mut [u8; 32]) -> Option<&'a str> {
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

fn kind_of(name: &str) -> Option<Kind> {
    let kind = match name {
        "eval" | "evalsha" => Kind::Eval,
        "object" => Kind::Object,
        "mget" => Kind::Mget,
        "mset" => Kind::Mset,
        "del" | "exists" | "touch" | "unlink" => Kind::SumMulti,
        "multi" | "exec" | "discard" => Kind::Transaction,
        _ if LOCAL.binary_search(&name).is_ok() => Kind::Local,
        _ if CLUSTER_SCOPE.binary_search(&name).is_ok() => Kind::ClusterScope,
        _ if SIMPLE.binary_search(&name).is_ok() => Kind::Simple,
        _ => return None,
    };
    Some(kind)
}

/// Every supported command by lower-case name: its kind and its position in
/// [`all`]. Built once; a lookup is one hash of a short name.
static TABLE: LazyLock<HashMap<&'static [u8], Command, FixedState>> = LazyLock::new(|| {
    all()
        .zip(0u16..)
        .filter_map(|(n, id)| {
            Some((
                n.as_bytes(),
                Command {
                    kind: kind_of(n)?,
                    id,
                },
            ))
        })
        .collect()
});

/// A supported command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Command {
    /// How it is handled.
    pub kind: Kind,
    /// Its position in [`all`], for per-command tables such as stats.
    pub id: u16,
}

/// The command `name` (any case), or `None` if Envoy 1.40 does not support it.
pub fn command(name: &[u8]) -> Option<Command> {
    let mut buf = [0u8; 32];
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    TABLE.get(&*out).copied()
}

/// How Envoy 1.40 handles the command `name` (any case), or `None` if it is not
/// supported.
pub fn lookup(name: &[u8]) -> Option<Kind> {
    command(name).map(|c| c.kind)
}

/// Every supported command name, lower case: the names Envoy creates
/// `command.<name>.*` stats for.
pub fn all() -> impl Iterator<Item = &'static str> {
    SIMPLE
        .iter()
        .chain(CLUSTER_SCOPE)
        .chain(LOCAL)
        .chain(&[
            "del", "discard", "eval", "evalsha", "exec", "exists", "mget", "mset", "multi",
            "object", "touch", "unlink",
        ])
        .copied()
}

/// True for a command that changes data (Envoy's write list); every other command
/// is a read.
pub fn is_write(name: &[u8]) -> bool {
    let mut buf = [0u8; 32];
    lower(name, &mut buf).is_some_and(|n| WRITE.binary_search(&n).is_ok())
}

/// The index of the routing key among a request's elements (0 is the command),
/// for the commands routed by one key.
pub fn key_index(kind: Kind) -> Option<usize> {
    match kind {
        Kind::Simple => Some(1),
        Kind::Object => Some(2),
        Kind::Eval => Some(3),
        _ => None,
    }
}

/// The part of `key` that is hashed. With `enable_hashtagging`, Redis Cluster's
/// rule: if the key has a `{` followed later by a `}` with at least one byte
/// between them, only the bytes between the first `{` and the first `}` after it
/// are hashed; otherwise (no `{`, no `}` after it, or `{}`) the whole key is.
pub fn hash_key(key: &[u8], enable_hashtagging: bool) -> &[u8] {
    if !enable_hashtagging {
        return key;
    }
    let Some(open) = key.iter().position(|&b| b == b'{') else {
        return key;
    };
    match key[open + 1..].iter().position(|&b| b == b'}') {
        Some(0) | None => key,
        Some(len) => &key[open + 1..open + 1 + len],
    }
}

/// Envoy's answer to a request whose first element is not a supported command:
/// `ERR unknown command '<cmd>', with args beginning with: <arg1>`. The command
/// keeps the client's case; only the first argument is shown, unquoted, and with
/// no argument the text ends in `: ` (a trailing space).
pub fn unknown_command(request: &[&Bytes]) -> Value {
    let mut text = Vec::with_capacity(64);
    text.extend_from_slice(b"ERR unknown command '");
    if let Some(cmd) = request.first() {
        text.extend_from_slice(cmd);
    }
    text.extend_from_slice(b"', with args beginning with: ");
    if let Some(arg) = request.get(1) {
        text.extend_from_slice(arg);
    }
    Value::Error(Bytes::from(text))
}

/// Envoy's reply texts (measured on 1.40.0; errors are written with a leading `-`).
pub mod reply {
    /// A request that is not a non-empty array of bulk strings, or lacks the
    /// arguments a command needs (`get` alone, `echo a b`, `*0`).
    pub const INVALID_REQUEST: &str = "invalid request";
    /// No route, or no host to send the command to.
    pub const NO_UPSTREAM_HOST: &str = "no upstream host";
    /// The upstream failed (connection refused or lost, timeout).
    pub const UPSTREAM_FAILURE: &str = "upstream failure";
    /// An `mget` fragment answered with something other than a bulk string,
    /// null or error.
    pub const UPSTREAM_PROTOCOL_ERROR: &str = "upstream protocol error";
    /// A command before `auth` when `downstream_auth_passwords` is set.
    pub const NOAUTH: &str = "NOAUTH Authentication required.";
    /// `auth` when no downstream password is configured.
    pub const AUTH_NOT_SET: &str = "ERR Client sent AUTH, but no password is set";
    /// `hello 3`: Envoy speaks RESP2 only.
    pub const NOPROTO: &str = "NOPROTO unsupported protocol version";
    /// `exec` outside a transaction.
    pub const EXEC_WITHOUT_MULTI: &str = "EXEC without MULTI";
    /// `discard` outside a transaction.
    pub const DISCARD_WITHOUT_MULTI: &str = "DISCARD without MULTI";
    /// `config`/`slowlog` forms Envoy does not fan out.
    pub const UNSUPPORTED_CLUSTER_SCOPE: &str =
        "ERR unsupported cluster scope command or invalid arguments";
    /// The reply of an injected ERROR fault.
    pub const FAULT_ERROR: &str = "Fault Injected: Error";

    /// `wrong number of arguments for '<cmd>' command` (no `ERR` prefix in Envoy),
    /// for `mset` with an odd number of arguments and `eval` with fewer than 3.
    pub fn wrong_number_of_arguments(cmd: &[u8]) -> Vec<u8> {
        let mut t = b"wrong number of arguments for '".to_vec();
        t.extend_from_slice(cmd);
        t.extend_from_slice(b"' command");
        t
    }

    /// `finished with <n> error(s)`: a fanned-out `mset`, `del`, `exists`, `touch`
    /// or `unlink` where `n` fragments failed.
    pub fn finished_with_errors(n: usize) -> String {
        format!("finished with {n} error(s)")
    }
}
