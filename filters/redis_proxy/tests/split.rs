//! Command table, splitting, assembly and prefix routes, checked on the wire bytes.

use bytes::Bytes;
use legate_redis_proxy::commands::{self, Kind, hash_key, lookup, reply};
use legate_redis_proxy::prefix::{PrefixRoutes, Route};
use legate_redis_proxy::resp::Value;
use legate_redis_proxy::split::{Merge, Plan, assemble, split};

fn wire(v: &Value) -> String {
    String::from_utf8_lossy(&v.to_bytes()).into_owned()
}

fn reply_of(plan: Plan) -> String {
    match plan {
        Plan::Reply(v) | Plan::Unsupported(v) => wire(&v),
        other => panic!("not a reply: {other:?}"),
    }
}

#[test]
fn table_matches_envoy_1_40() {
    assert_eq!(lookup(b"GET"), Some(Kind::Simple));
    assert_eq!(lookup(b"hexpire"), Some(Kind::Simple));
    assert_eq!(lookup(b"bf.add"), Some(Kind::Simple));
    assert_eq!(lookup(b"EvalSha"), Some(Kind::Eval));
    assert_eq!(lookup(b"object"), Some(Kind::Object));
    assert_eq!(lookup(b"keys"), Some(Kind::ClusterScope));
    assert_eq!(lookup(b"unlink"), Some(Kind::SumMulti));
    assert_eq!(lookup(b"exec"), Some(Kind::Transaction));
    assert_eq!(lookup(b"quit"), Some(Kind::Local));
    for unsupported in [
        "eval_ro",
        "evalsha_ro",
        "dbsize",
        "blpop",
        "subscribe",
        "asking",
        "",
    ] {
        assert_eq!(lookup(unsupported.as_bytes()), None, "{unsupported}");
    }
    assert_eq!(lookup(&[b'g'; 100]), None);
    // 191 names answered by 1.40 (plus quit), each found by lookup.
    let all: Vec<&str> = commands::all().collect();
    assert_eq!(all.len(), 192);
    assert!(all.iter().all(|n| lookup(n.as_bytes()).is_some()));
    assert!(commands::is_write(b"SET"));
    assert!(!commands::is_write(b"get"));
}

#[test]
fn hash_tags_follow_redis_cluster() {
    assert_eq!(hash_key(b"{user1}:a", true), b"user1");
    assert_eq!(hash_key(b"{user1}:a", false), b"{user1}:a");
    assert_eq!(hash_key(b"a{b}c{d}", true), b"b");
    assert_eq!(hash_key(b"{}x", true), b"{}x");
    assert_eq!(hash_key(b"{{a}}", true), b"{a");
    assert_eq!(hash_key(b"x{y", true), b"x{y");
    assert_eq!(hash_key(b"x}y{", true), b"x}y{");
    assert_eq!(hash_key(b"", true), b"");
}

#[test]
fn unsupported_command_text_is_envoys() {
    assert_eq!(
        reply_of(split(&Value::command(["foo", "a", "b", "c"]))),
        "-ERR unknown command 'foo', with args beginning with: a\r\n"
    );
    assert_eq!(
        reply_of(split(&Value::command(["Foo"]))),
        "-ERR unknown command 'Foo', with args beginning with: \r\n"
    );
    assert_eq!(
        reply_of(split(&Value::command(["foo", "", "b"]))),
        "-ERR unknown command 'foo', with args beginning with: \r\n"
    );
}

#[test]
fn invalid_and_short_requests() {
    for req in [
        Value::Array(vec![]),
        Value::NullArray,
        Value::Null,
        Value::Integer(1),
        Value::simple("PING"),
        Value::Array(vec![Value::simple("get"), Value::bulk("a")]),
        Value::command(["get"]),
        Value::command(["MGET"]),
        Value::command(["del"]),
        Value::command(["echo"]),
        Value::command(["keys"]),
    ] {
        assert_eq!(reply_of(split(&req)), "-invalid request\r\n", "{req:?}");
    }
    assert_eq!(
        reply_of(split(&Value::command(["MSET", "a"]))),
        "-wrong number of arguments for 'MSET' command\r\n"
    );
    assert_eq!(
        reply_of(split(&Value::command(["EVAL", "s", "0"]))),
        "-wrong number of arguments for 'EVAL' command\r\n"
    );
    assert_eq!(
        reply_of(split(&Value::command(["object", "encoding"]))),
        "-wrong number of arguments for 'object' command\r\n"
    );
    assert_eq!(split(&Value::command(["PING"])), Plan::Host(Kind::Local));
    assert_eq!(
        split(&Value::command(["multi"])),
        Plan::Host(Kind::Transaction)
    );
    assert_eq!(
        split(&Value::command(["info"])),
        Plan::Host(Kind::ClusterScope)
    );
}

#[test]
fn single_key_routing() {
    let get = Value::command(["GET", "k1"]);
    assert_eq!(
        split(&get),
        Plan::Single {
            key: Bytes::from_static(b"k1"),
        }
    );
    let eval = Value::command(["eval", "return 1", "1", "{t}k", "arg"]);
    match split(&eval) {
        Plan::Single { key } => assert_eq!(&key[..], b"{t}k"),
        other => panic!("{other:?}"),
    }
    match split(&Value::command(["object", "encoding", "k2"])) {
        Plan::Single { key } => assert_eq!(&key[..], b"k2"),
        other => panic!("{other:?}"),
    }
}

fn fanout(req: Value) -> (Merge, Vec<(String, String)>) {
    match split(&req) {
        Plan::Fanout { merge, fragments } => (
            merge,
            fragments
                .iter()
                .map(|f| {
                    (
                        String::from_utf8_lossy(&f.key).into_owned(),
                        wire(&f.request),
                    )
                })
                .collect(),
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn mget_splits_per_key_and_reassembles_in_order() {
    let (merge, frags) = fanout(Value::command(["MGET", "a", "b", "a"]));
    assert_eq!(merge, Merge::Mget);
    assert_eq!(
        frags,
        vec![
            ("a".into(), "*2\r\n$3\r\nget\r\n$1\r\na\r\n".into()),
            ("b".into(), "*2\r\n$3\r\nget\r\n$1\r\nb\r\n".into()),
            ("a".into(), "*2\r\n$3\r\nget\r\n$1\r\na\r\n".into()),
        ]
    );
    let (v, errors) = assemble(
        Merge::Mget,
        vec![
            Value::bulk("1"),
            Value::Null,
            Value::error(reply::UPSTREAM_FAILURE),
            Value::Integer(3),
        ],
    );
    assert_eq!(errors, 2);
    assert_eq!(
        wire(&v),
        "*4\r\n$1\r\n1\r\n$-1\r\n-upstream failure\r\n-upstream protocol error\r\n"
    );
}

#[test]
fn mset_splits_per_pair_and_answers_ok() {
    let (merge, frags) = fanout(Value::command(["mset", "a", "1", "b", "2"]));
    assert_eq!(merge, Merge::Mset);
    assert_eq!(
        frags,
        vec![
            (
                "a".into(),
                "*3\r\n$3\r\nset\r\n$1\r\na\r\n$1\r\n1\r\n".into()
            ),
            (
                "b".into(),
                "*3\r\n$3\r\nset\r\n$1\r\nb\r\n$1\r\n2\r\n".into()
            ),
        ]
    );
    let ok = Value::simple("OK");
    assert_eq!(
        assemble(Merge::Mset, vec![ok.clone(), ok.clone()]),
        (Value::simple("OK"), 0)
    );
    let (v, n) = assemble(
        Merge::Mset,
        vec![
            ok,
            Value::error("no upstream host"),
            Value::simple("QUEUED"),
        ],
    );
    assert_eq!((wire(&v), n), ("-finished with 2 error(s)\r\n".into(), 2));
}

#[test]
fn sum_commands_fan_out_and_sum() {
    let (merge, frags) = fanout(Value::command(["DEL", "a", "b"]));
    assert_eq!(merge, Merge::Sum);
    assert_eq!(
        frags[1],
        ("b".into(), "*2\r\n$3\r\nDEL\r\n$1\r\nb\r\n".into())
    );
    let (v, n) = assemble(
        Merge::Sum,
        vec![Value::Integer(1), Value::Integer(0), Value::Integer(1)],
    );
    assert_eq!((wire(&v), n), (":2\r\n".into(), 0));
    let (v, n) = assemble(
        Merge::Sum,
        vec![Value::Integer(1), Value::error("upstream failure")],
    );
    assert_eq!((wire(&v), n), ("-finished with 1 error(s)\r\n".into(), 1));
    let (v, _) = assemble(
        Merge::Sum,
        vec![Value::Integer(i64::MAX), Value::Integer(1)],
    );
    assert_eq!(v, Value::Integer(i64::MAX));
}

fn routes(ci: bool, catch_all: Option<&str>) -> PrefixRoutes {
    let r = |p: &'static str, remove: bool, c: &str| Route {
        prefix: Bytes::from_static(p.as_bytes()),
        remove_prefix: remove,
        cluster: c.into(),
        mirrors: vec![],
    };
    PrefixRoutes::new(
        vec![
            r("ab", false, "short"),
            r("abc:", true, "long"),
            r("x", false, "x"),
        ],
        ci,
        catch_all.map(|c| Route::catch_all(c.into(), vec![])),
    )
    .unwrap()
}

#[test]
fn prefix_routes_longest_wins() {
    let t = routes(false, Some("all"));
    let m = t.route(b"abc:key").unwrap();
    assert_eq!((m.cluster, m.key), ("long", &b"key"[..]));
    let m = t.route(b"abd").unwrap();
    assert_eq!((m.cluster, m.key), ("short", &b"abd"[..]));
    let m = t.route(b"ABC:key").unwrap();
    assert_eq!((m.cluster, m.key), ("all", &b"ABC:key"[..]));
    assert!(m.route.prefix.is_empty());
    assert!(routes(false, None).route(b"zzz").is_none());
    let ci = routes(true, None);
    let m = ci.route(b"ABC:Key").unwrap();
    assert_eq!((m.cluster, m.key), ("long", &b"Key"[..]));
    let dup = PrefixRoutes::new(
        vec![
            Route {
                prefix: Bytes::from_static(b"A"),
                remove_prefix: false,
                cluster: "1".into(),
                mirrors: vec![],
            },
            Route {
                prefix: Bytes::from_static(b"a"),
                remove_prefix: false,
                cluster: "2".into(),
                mirrors: vec![],
            },
        ],
        true,
        None,
    );
    assert!(dup.is_err());
}

#[test]
fn cluster_wide_replies_merge() {
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    let merge = |args: &[&str]| {
        let args: Vec<Bytes> = args
            .iter()
            .map(|a| Bytes::copy_from_slice(a.as_bytes()))
            .collect();
        legate_redis_proxy::split::cluster_scope(&args.iter().collect::<Vec<_>>())
    };
    assert_eq!(merge(&["scan", "0"]), Ok(Merge::Concat));
    assert_eq!(merge(&["SLOWLOG", "len"]), Ok(Merge::Sum));
    assert_eq!(merge(&["script", "exists", "a"]), Ok(Merge::MinEach));
    assert!(merge(&["info"]).is_err());
    assert!(merge(&["keys"]).is_err());

    let ints = |v: &[i64]| Value::Array(v.iter().copied().map(Value::Integer).collect());
    let (v, _) = assemble(Merge::MinEach, vec![ints(&[1, 1, 0]), ints(&[1, 0, 0])]);
    assert_eq!(v, ints(&[1, 0, 0]));
    let (v, e) = assemble(
        Merge::First,
        vec![
            Value::simple("OK"),
            Value::error("ERR no"),
            Value::error("ERR other"),
        ],
    );
    assert_eq!((v, e), (Value::error("ERR no"), 1));
    let (v, _) = assemble(
        Merge::FirstNonNull,
        vec![Value::Null, Value::bulk(b("k")), Value::bulk(b("j"))],
    );
    assert_eq!(v, Value::bulk(b("k")));
    let (v, _) = assemble(Merge::Each, vec![ints(&[1]), ints(&[2])]);
    assert_eq!(v, Value::Array(vec![ints(&[1]), ints(&[2])]));
}
