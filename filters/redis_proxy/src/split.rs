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
    /// `keys` sent to every server: the arrays joined, in server order.
    Concat,
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
