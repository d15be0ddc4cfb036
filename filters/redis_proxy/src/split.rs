//! Request splitting and reply assembly, as Envoy's command splitter does them.
//! Pure: [`split`] turns a decoded request into a [`Plan`]; the host sends each
//! fragment to the server owning its key and gives the replies, in fragment order,
//! to [`assemble`].
//!
//! A fragment that could not be sent or failed upstream is given to [`assemble`]
//! as the error Envoy uses for it ([`reply::NO_UPSTREAM_HOST`],
//! [`reply::UPSTREAM_FAILURE`]).

use bytes::Bytes;

use crate::commands::{self, Kind, reply};
use crate::resp::Value;

/// One command to send to the server that owns `key`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// The routing key, as the client wrote it (hash tags are applied when hashing,
    /// see [`commands::hash_key`]).
    pub key: Bytes,
    /// The command to send.
    pub request: Value,
}

/// How a fanned-out command's replies are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// `mget`: an array of the replies, in key order.
    Mget,
    /// `mset`: `OK` when every `set` said `OK`.
    Mset,
    /// `del`, `exists`, `touch`, `unlink`: the sum of the integers.
    Sum,
    /// Sent to every server (`keys`, `scan`, `config get`, `slowlog get`): the
    /// arrays joined, in server order.
    Concat,
    /// Sent to every server (`flushall`, `config set`, `script load`...): the
    /// first error, else the first reply.
    First,
    /// `role` sent to every server: an array of the replies.
    Each,
    /// `randomkey` sent to every server: the first reply that is not null.
    FirstNonNull,
    /// `script exists` sent to every server: per position, the smallest integer
    /// (a script exists only where every server has it).
    MinEach,
}

/// How Envoy 1.40 answers a command it sends to every server of the cluster
/// ([`Kind::ClusterScope`]): the merge of the servers' replies, or the error
/// to answer at once.
pub fn cluster_scope(args: &[&Bytes]) -> Result<Merge, Value> {
    let is = |i: usize, n: &str| {
        args.get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(n.as_bytes()))
    };
    let merge = if is(0, "keys") {
        if args.len() != 2 {
            return Err(error("ERR wrong number of arguments for 'keys' command"));
        }
        Merge::Concat
    } else if is(0, "scan") {
        Merge::Concat
    } else if is(0, "flushall") || is(0, "flushdb") {
        Merge::First
    } else if is(0, "role") {
        Merge::Each
    } else if is(0, "randomkey") {
        Merge::FirstNonNull
    } else if is(0, "config") && is(1, "get") {
        Merge::Concat
    } else if is(0, "config") && (is(1, "set") || is(1, "resetstat") || is(1, "rewrite")) {
        Merge::First
    } else if is(0, "slowlog") && is(1, "get") {
        Merge::Concat
    } else if is(0, "slowlog") && is(1, "len") {
        Merge::Sum
    } else if is(0, "slowlog") && is(1, "reset") {
        Merge::First
    } else if is(0, "script") && is(1, "exists") {
        Merge::MinEach
    } else if is(0, "script") && (is(1, "load") || is(1, "flush") || is(1, "kill")) {
        Merge::First
    } else {
        // `info` (Envoy merges the sections), other subcommands.
        return Err(error(reply::UNSUPPORTED_CLUSTER_SCOPE));
    };
    Ok(merge)
}

/// What to do with one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Answer at once with this value (a malformed or short request).
    Reply(Value),
    /// An unsupported command: answer with this error and count
    /// `splitter.unsupported_command`.
    Unsupported(Value),
    /// Send the request as it is to the server owning `key`.
    Single {
        /// The routing key, as the client wrote it.
        key: Bytes,
    },
    /// Send every fragment, then [`assemble`] the replies.
    Fanout {
        /// How the replies combine.
        merge: Merge,
        /// One command per key (or key-value pair), in request order.
        fragments: Vec<Fragment>,
    },
    /// A command the host handles itself with connection state: [`Kind::Local`],
    /// [`Kind::Transaction`] or [`Kind::ClusterScope`].
    Host(Kind),
}

fn error(text: impl Into<Bytes>) -> Value {
    Value::Error(text.into())
}

/// Commands valid with no argument at all (others answer `invalid request`).
fn allows_no_args(kind: Kind, name: &[u8]) -> bool {
    match kind {
        Kind::Transaction => true,
        Kind::Local => ["ping", "time", "quit", "hello", "unwatch"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes())),
        Kind::ClusterScope => ["info", "role", "randomkey", "flushall", "flushdb"]
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_bytes())),
        _ => false,
    }
}

/// Decides how to handle one decoded request.
pub fn split(request: &Value) -> Plan {
    match request.as_command() {
        Some(args) => split_args(&args),
        None => Plan::Reply(error(reply::INVALID_REQUEST)),
    }
}

/// [`split`] for a request whose arguments were already taken out with
/// [`Value::as_command`].
pub fn split_args(args: &[&Bytes]) -> Plan {
    let Some(&name) = args.first() else {
        return Plan::Reply(error(reply::INVALID_REQUEST));
    };
    let Some(kind) = commands::lookup(name) else {
        return Plan::Unsupported(commands::unknown_command(args));
    };
    if args.len() < 2 && !allows_no_args(kind, name) {
        return Plan::Reply(error(reply::INVALID_REQUEST));
    }
    match kind {
        Kind::Simple | Kind::Object | Kind::Eval => {
            let index = commands::key_index(kind).unwrap_or(1);
            if kind == Kind::Eval && args.len() < 4 {
                return Plan::Reply(error(reply::wrong_number_of_arguments(name)));
            }
            match args.get(index) {
                Some(key) => Plan::Single {
                    key: (*key).clone(),
                },
                // `object encoding` with no key.
                None => Plan::Reply(error(reply::wrong_number_of_arguments(name))),
            }
        }
        Kind::Mget => Plan::Fanout {
            merge: Merge::Mget,
            fragments: args[1..]
                .iter()
                .map(|key| Fragment {
                    key: (*key).clone(),
                    request: Value::command([Bytes::from_static(b"get"), (*key).clone()]),
                })
                .collect(),
        },
        Kind::Mset => {
            if !(args.len() - 1).is_multiple_of(2) {
                return Plan::Reply(error(reply::wrong_number_of_arguments(name)));
            }
            Plan::Fanout {
                merge: Merge::Mset,
                fragments: args[1..]
                    .chunks_exact(2)
                    .map(|kv| Fragment {
                        key: kv[0].clone(),
                        request: Value::command([
                            Bytes::from_static(b"set"),
                            kv[0].clone(),
                            kv[1].clone(),
                        ]),
                    })
                    .collect(),
            }
        }
        Kind::SumMulti => Plan::Fanout {
            merge: Merge::Sum,
            fragments: args[1..]
                .iter()
                .map(|key| Fragment {
                    key: (*key).clone(),
                    request: Value::command([name.clone(), (*key).clone()]),
                })
                .collect(),
        },
        Kind::Local | Kind::Transaction | Kind::ClusterScope => Plan::Host(kind),
    }
}

/// Combines the replies of a [`Plan::Fanout`], given in fragment order, into the
/// one reply the client gets. Also returns the number of fragments that failed
/// (Envoy counts the command as an error when it is not zero).
///
/// - `mget`: a bulk string or null reply is kept, an error is kept and counted,
///   anything else becomes `upstream protocol error` and is counted.
/// - `mset`: `OK` if every reply is the simple string `OK`, otherwise
///   `finished with <n> error(s)`.
/// - sum: the sum of the integers if every reply is one, otherwise
///   `finished with <n> error(s)` (the sum saturates instead of overflowing).
pub fn assemble(merge: Merge, replies: Vec<Value>) -> (Value, usize) {
    match merge {
        Merge::Mget => {
            let mut errors = 0;
            let items = replies
                .into_iter()
                .map(|r| match r {
                    Value::BulkString(_) | Value::Null => r,
                    Value::Error(_) => {
                        errors += 1;
                        r
                    }
                    _ => {
                        errors += 1;
                        error(reply::UPSTREAM_PROTOCOL_ERROR)
                    }
                })
                .collect();
            (Value::Array(items), errors)
        }
        Merge::Concat => {
            let mut items = Vec::new();
            let mut errors = 0;
            for r in replies {
                match r {
                    Value::Array(mut a) => items.append(&mut a),
                    _ => errors += 1,
                }
            }
            if errors == 0 {
                (Value::Array(items), 0)
            } else {
                (error(reply::finished_with_errors(errors)), errors)
            }
        }
        Merge::First => {
            let first_error = replies.iter().position(|r| matches!(r, Value::Error(_)));
            let mut replies = replies;
            match first_error {
                Some(i) => (replies.swap_remove(i), 1),
                None if replies.is_empty() => (Value::Null, 0),
                None => (replies.swap_remove(0), 0),
            }
        }
        Merge::Each => (Value::Array(replies), 0),
        Merge::FirstNonNull => (
            replies
                .into_iter()
                .find(|r| !matches!(r, Value::Null))
                .unwrap_or(Value::Null),
            0,
        ),
        Merge::MinEach => {
            let mut out: Option<Vec<i64>> = None;
            for r in &replies {
                let Value::Array(items) = r else {
                    return (error(reply::UPSTREAM_PROTOCOL_ERROR), 1);
                };
                let ints: Option<Vec<i64>> = items
                    .iter()
                    .map(|v| match v {
                        Value::Integer(n) => Some(*n),
                        _ => None,
                    })
                    .collect();
                let Some(ints) = ints else {
                    return (error(reply::UPSTREAM_PROTOCOL_ERROR), 1);
                };
                out = Some(match out {
                    None => ints,
                    Some(o) => o.iter().zip(&ints).map(|(a, b)| *a.min(b)).collect(),
                });
            }
            (
                Value::Array(
                    out.unwrap_or_default()
                        .into_iter()
                        .map(Value::Integer)
                        .collect(),
                ),
                0,
            )
        }
        Merge::Mset => {
            let errors = replies
                .iter()
                .filter(|r| !matches!(r, Value::SimpleString(s) if s.as_ref() == b"OK"))
                .count();
            if errors == 0 {
                (Value::simple("OK"), 0)
            } else {
                (error(reply::finished_with_errors(errors)), errors)
            }
        }
        Merge::Sum => {
            let mut total: i64 = 0;
            let mut errors = 0;
            for r in &replies {
                match r {
                    Value::Integer(n) => total = total.saturating_add(*n),
                    _ => errors += 1,
                }
            }
            if errors == 0 {
                (Value::Integer(total), 0)
            } else {
                (error(reply::finished_with_errors(errors)), errors)
            }
        }
    }
}
