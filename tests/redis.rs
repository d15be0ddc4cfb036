//! `envoy.filters.network.redis_proxy` end to end: the real binary in front of
//! real `redis-server` processes, driven by the `redis` crate and `redis-cli`.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use redis::AsyncCommands;
use support::redis_server::{
    RawConn, RedisServer, cluster, command, connect, listener, raw, raw_until_idle,
};
use support::{Legate, bootstrap};

/// The settings most tests use.
const SETTINGS: &str = "          settings: {op_timeout: 2s}\n";

fn catch_all(cluster: &str) -> String {
    format!("          prefix_routes:\n            catch_all_route: {{cluster: {cluster}}}\n")
}

async fn start(listener_body: &str, clusters: &str) -> (Legate, SocketAddr) {
    let l = Legate::start_with(
        &bootstrap(&listener(listener_body), clusters),
        &["--concurrency", "1", "--random-seed", "7"],
    )
    .await;
    let a = l.listener("redis").await;
    (l, a)
}

/// An error reply's text as the server wrote it (the crate splits off the code).
fn text(e: &redis::RedisError) -> String {
    e.to_string().replace(['"', ':'], "")
}

/// Which server holds each key, read from the servers directly.
async fn owners(servers: &[&RedisServer], keys: &[String]) -> Vec<usize> {
    let mut conns = Vec::new();
    for s in servers {
        conns.push(s.direct().await);
    }
    let mut out = Vec::new();
    for k in keys {
        let mut holders = Vec::new();
        for (i, c) in conns.iter_mut().enumerate() {
            let n: i64 = c.exists(k).await.unwrap();
            if n == 1 {
                holders.push(i);
            }
        }
        assert_eq!(holders.len(), 1, "key {k} is on servers {holders:?}");
        out.push(holders[0]);
    }
    out
}

#[tokio::test]
async fn keys_shard_by_hash_and_split_commands_reassemble() {
    let servers = [
        RedisServer::start().await,
        RedisServer::start().await,
        RedisServer::start().await,
    ];
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let (l, a) = start(
        &format!("{SETTINGS}{}", catch_all("shards")),
        &cluster("shards", &refs, "MAGLEV", ""),
    )
    .await;
    let mut c = connect(a, None).await;
    let keys: Vec<String> = (0..60).map(|i| format!("key:{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        let () = c.set(k, i).await.unwrap();
    }
    let held = owners(&refs, &keys).await;
    for s in 0..3 {
        let n = held.iter().filter(|&&o| o == s).count();
        assert!(n >= 5, "server {s} holds {n} of 60 keys: {held:?}");
    }

    // keys asks every server, once.
    let mut all: Vec<String> = c.keys("key:*").await.unwrap();
    all.sort();
    let mut want = keys.clone();
    want.sort();
    assert_eq!(all, want);
    let roles: Vec<redis::Value> = redis::cmd("role").query_async(&mut c).await.unwrap();
    assert_eq!(roles.len(), 3);

    // mget across servers, in key order, with a missing key as nil.
    let mut ask: Vec<String> = keys[..20].to_vec();
    ask.insert(7, "missing".into());
    let got: Vec<Option<i64>> = c.mget(&ask).await.unwrap();
    let mut want: Vec<Option<i64>> = (0..20).map(Some).collect();
    want.insert(7, None);
    assert_eq!(got, want);

    // mset across servers, then each server holds its own share.
    let pairs: Vec<(String, String)> = (0..30)
        .map(|i| (format!("m:{i}"), format!("v{i}")))
        .collect();
    let () = c.mset(&pairs).await.unwrap();
    let mkeys: Vec<String> = pairs.iter().map(|p| p.0.clone()).collect();
    let mheld = owners(&refs, &mkeys).await;
    assert!(
        mheld.iter().any(|&o| o != mheld[0]),
        "mset keys all on one server"
    );
    let v: String = c.get("m:17").await.unwrap();
    assert_eq!(v, "v17");

    // del / exists / touch / unlink fan out and sum.
    let n: i64 = c.exists(&mkeys[..10]).await.unwrap();
    assert_eq!(n, 10);
    let n: i64 = redis::cmd("touch")
        .arg(&mkeys[..4])
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 4);
    let n: i64 = c.del(&mkeys[..10]).await.unwrap();
    assert_eq!(n, 10);
    let n: i64 = redis::cmd("unlink")
        .arg(&mkeys[10..])
        .arg("nope")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 20);
    let n: i64 = c.exists(&mkeys).await.unwrap();
    assert_eq!(n, 0);

    // Envoy's stats.
    assert_eq!(l.stat("redis.rp.command.set.total").await, 60);
    assert_eq!(l.stat("redis.rp.command.set.success").await, 60);
    assert_eq!(l.stat("redis.rp.command.mget.total").await, 1);
    assert_eq!(l.stat("redis.rp.command.del.success").await, 1);
    assert_eq!(l.stat("redis.rp.downstream_cx_active").await, 1);
    assert!(l.stat("redis.rp.downstream_rq_total").await >= 66);
    // One connection per server, shared: 60 sets, 21 gets, 30 sets, ...
    assert_eq!(l.stat("cluster.shards.upstream_cx_total").await, 3);
}

#[tokio::test]
async fn keys_land_on_the_server_envoy_picks() {
    let servers = [
        RedisServer::start().await,
        RedisServer::start().await,
        RedisServer::start().await,
    ];
    let refs: Vec<&RedisServer> = servers.iter().collect();
    for policy in ["MAGLEV", "RING_HASH"] {
        let yaml = bootstrap(
            &listener(&format!(
                "          settings: {{op_timeout: 2s, enable_hashtagging: true}}\n{}",
                catch_all("shards")
            )),
            &cluster("shards", &refs, policy, ""),
        );
        let keys: Vec<String> = (0..40).map(|i| format!("{policy}:{i}")).collect();
        let envoy = support::envoy::Envoy::start(&yaml).await.unwrap();
        let mut e = connect(envoy.listener("redis").await, None).await;
        for k in &keys {
            let () = e.set(k, 1).await.unwrap();
        }
        let by_envoy = owners(&refs, &keys).await;
        drop(e);
        drop(envoy);
        for s in &refs {
            let () = redis::cmd("flushall")
                .query_async(&mut s.direct().await)
                .await
                .unwrap();
        }
        let l = Legate::start_with(&yaml, &["--concurrency", "2"]).await;
        let mut c = connect(l.listener("redis").await, None).await;
        for k in &keys {
            let () = c.set(k, 1).await.unwrap();
        }
        let by_legate = owners(&refs, &keys).await;
        assert_eq!(
            by_legate, by_envoy,
            "{policy}: legate and Envoy shard differently"
        );
        for s in &refs {
            let () = redis::cmd("flushall")
                .query_async(&mut s.direct().await)
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn hashtags_keep_keys_together_and_prefix_routes_strip() {
    let shards = [RedisServer::start().await, RedisServer::start().await];
    let cache = RedisServer::start().await;
    let mirror = RedisServer::start().await;
    let refs: Vec<&RedisServer> = shards.iter().collect();
    let body = r#"          settings: {op_timeout: 2s, enable_hashtagging: true}
          prefix_routes:
            routes:
            - prefix: "cache:"
              remove_prefix: true
              cluster: cache
            - prefix: "audit:"
              cluster: shards
              request_mirror_policy:
              - cluster: mirror
                exclude_read_commands: true
            catch_all_route: {cluster: shards}
"#;
    let clusters = format!(
        "{}{}{}",
        cluster("shards", &refs, "MAGLEV", ""),
        cluster("cache", &[&cache], "MAGLEV", ""),
        cluster("mirror", &[&mirror], "MAGLEV", "")
    );
    let (_l, a) = start(body, &clusters).await;
    let mut c = connect(a, None).await;
    for user in 0..8 {
        let ka = format!("{{user{user}}}:a");
        let kb = format!("{{user{user}}}:b");
        let () = c.set(&ka, 1).await.unwrap();
        let () = c.set(&kb, 2).await.unwrap();
        let o = owners(&refs, &[ka, kb]).await;
        assert_eq!(o[0], o[1], "user{user}'s keys split across servers");
    }

    // remove_prefix: the cache server holds the key without its prefix.
    let () = c.set("cache:page", "html").await.unwrap();
    let v: String = c.get("cache:page").await.unwrap();
    assert_eq!(v, "html");
    let mut direct = cache.direct().await;
    let v: Option<String> = direct.get("page").await.unwrap();
    assert_eq!(v.as_deref(), Some("html"));
    let v: Option<String> = direct.get("cache:page").await.unwrap();
    assert_eq!(v, None);

    // Mirroring of writes: the mirror sees the set but not the get.
    let () = c.set("audit:1", "x").await.unwrap();
    let _: Option<String> = c.get("audit:1").await.unwrap();
    let mut m = mirror.direct().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // `exists`, so the only reads the mirror sees would be mirrored ones.
        let n: i64 = m.exists("audit:1").await.unwrap();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the mirror never got the write");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info: String = redis::cmd("info")
        .arg("commandstats")
        .query_async(&mut m)
        .await
        .unwrap();
    assert!(info.contains("cmdstat_set:calls=1,"), "{info}");
    assert!(
        !info.contains("cmdstat_get:"),
        "reads are not mirrored: {info}"
    );
}

#[tokio::test]
async fn transactions_auth_and_local_commands() {
    let server = RedisServer::start_with(&["--requirepass", "upstream-secret"]).await;
    let body = format!(
        "{SETTINGS}{}          downstream_auth_passwords: [{{inline_string: s3cret}}, {{inline_string: other}}]\n",
        catch_all("r")
    );
    let extra = r#"    typed_extension_protocol_options:
      envoy.filters.network.redis_proxy:
        "@type": type.googleapis.com/envoy.extensions.filters.network.redis_proxy.v3.RedisProtocolOptions
        auth_password: {inline_string: upstream-secret}
"#;
    let (l, a) = start(&body, &cluster("r", &[&server], "MAGLEV", extra)).await;

    // Before auth, only auth (and quit, hello) are answered.
    let (out, _) = raw(a, &command(&["get", "k"]), 1).await;
    assert_eq!(out, b"-NOAUTH Authentication required.\r\n");
    let (out, _) = raw(
        a,
        &[command(&["auth", "wrong"]), command(&["get", "k"])].concat(),
        2,
    )
    .await;
    assert_eq!(
        out,
        b"-ERR invalid password\r\n-NOAUTH Authentication required.\r\n"
    );
    let (out, _) = raw(a, &command(&["auth", "bob", "s3cret"]), 1).await;
    assert_eq!(out, b"-WRONGPASS invalid username-password pair\r\n");

    // With the password the client works, and legate authenticates upstream.
    let mut c = connect(a, Some("other")).await;
    let () = c.set("k", "v").await.unwrap();
    let (k, v): (String, String) = redis::pipe()
        .atomic()
        .set("k", "w")
        .ignore()
        .get("k")
        .get("k")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((k.as_str(), v.as_str()), ("w", "w"));
    let mut d = server.direct().await;
    let v: String = d.get("k").await.unwrap();
    assert_eq!(v, "w");

    // MULTI/EXEC/DISCARD on the wire, as Envoy answers them.
    let tx = [
        command(&["auth", "s3cret"]),
        command(&["multi"]),
        command(&["set", "t", "1"]),
        command(&["incr", "t"]),
        command(&["ping"]),
        command(&["exec"]),
        command(&["exec"]),
        command(&["multi"]),
        command(&["multi"]),
        command(&["set", "t", "9"]),
        command(&["discard"]),
    ]
    .concat();
    let (out, _) = raw(a, &tx, 10).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n+PONG\r\n*2\r\n+OK\r\n:2\r\n-EXEC without MULTI\r\n\
         +OK\r\n-MULTI calls can not be nested\r\n+QUEUED\r\n+OK\r\n"
    );
    let v: i64 = c.get("t").await.unwrap();
    assert_eq!(v, 2, "the discarded set did not run");

    // Local answers. After `quit`, what came in the same read is still
    // answered (as Envoy does), then the connection closes.
    let (out, closed) = raw_until_idle(
        a,
        &[
            command(&["auth", "s3cret"]),
            command(&["ping"]),
            command(&["echo", "hi"]),
            command(&["select", "3"]),
            command(&["hello", "3"]),
            command(&["quit"]),
            command(&["ping"]),
        ]
        .concat(),
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "+OK\r\n+PONG\r\n$2\r\nhi\r\n+OK\r\n-NOPROTO unsupported protocol version\r\n+OK\r\n+PONG\r\n"
    );
    assert!(closed, "quit closes the connection");
    assert_eq!(l.stat("redis.rp.command.multi.total").await, 4);
}

#[tokio::test]
async fn unsupported_commands_and_garbage_get_envoys_errors() {
    let server = RedisServer::start().await;
    let (l, a) = start(
        &format!("{SETTINGS}{}", catch_all("r")),
        &cluster("r", &[&server], "MAGLEV", ""),
    )
    .await;
    // redis-cli, the real client.
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &a.port().to_string()])
        .args(["subscribe", "news"])
        .output()
        .expect("redis-cli is installed");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "ERR unknown command 'subscribe', with args beginning with: news"
    );
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &a.port().to_string()])
        .args(["set", "cli", "works"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "OK");
    assert_eq!(l.stat("redis.rp.splitter.unsupported_command").await, 1);

    let (out, _) = raw(
        a,
        &[command(&["get"]), command(&["get", "cli"])].concat(),
        2,
    )
    .await;
    assert_eq!(out, b"-invalid request\r\n$5\r\nworks\r\n");
    // Inline commands work; garbage ends the connection after Envoy's error.
    let (out, _) = raw(a, b"PING\r\n", 1).await;
    assert_eq!(out, b"+PONG\r\n");
    let (out, closed) = raw(a, b"*1\r\n$x\r\n", 1).await;
    assert_eq!(out, b"-downstream protocol error\r\n");
    let (_, closed_after) = raw(a, b"*1\r\n$x\r\n", 2).await;
    assert!(
        closed || closed_after,
        "the connection closes after a protocol error"
    );
    assert_eq!(l.stat("redis.rp.downstream_cx_protocol_error").await, 2);
    assert_eq!(l.stat("redis.rp.splitter.invalid_request").await, 1);
}

#[tokio::test]
async fn pipelined_commands_keep_their_order_across_servers() {
    let servers = [RedisServer::start().await, RedisServer::start().await];
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let (l, a) = start(
        &format!("{SETTINGS}{}", catch_all("shards")),
        &cluster("shards", &refs, "MAGLEV", ""),
    )
    .await;
    // 1000 commands in one write: sets and gets of 100 keys, interleaved.
    let mut bytes = Vec::new();
    for i in 0..500 {
        let k = format!("p{}", i % 100);
        bytes.extend(command(&["set", &k, &i.to_string()]));
        bytes.extend(command(&["get", &k]));
    }
    let (out, _) = raw(a, &bytes, 1000).await;
    let mut want = String::new();
    for i in 0..500 {
        let v = i.to_string();
        want.push_str(&format!("+OK\r\n${}\r\n{v}\r\n", v.len()));
    }
    assert_eq!(String::from_utf8_lossy(&out), want);

    // The same through the redis crate's pipeline, across several clients at once.
    let mut tasks = Vec::new();
    for client in 0..4 {
        tasks.push(tokio::spawn(async move {
            let mut c = connect(a, None).await;
            let mut p = redis::pipe();
            for i in 0..250 {
                p.cmd("set").arg(format!("c{client}:{i}")).arg(i).ignore();
                p.cmd("get").arg(format!("c{client}:{i}"));
            }
            let got: Vec<i64> = p.query_async(&mut c).await.unwrap();
            assert_eq!(got, (0..250).collect::<Vec<i64>>());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(l.stat("redis.rp.command.get.total").await, 1500);
    assert_eq!(l.stat("redis.rp.command.get.success").await, 1500);
}

/// A transaction runs on a connection of its own; pipelined with other
/// commands, it still sees the writes sent before it, and the commands after
/// `exec` see its writes: the replies are a direct server's, byte for byte.
/// (Envoy 1.40 gets the first half right but answers the second `multi` with
/// `MULTI calls can not be nested`.)
#[tokio::test]
async fn transactions_in_a_pipeline_keep_their_order() {
    let server = RedisServer::start().await;
    let (_l, a) = start(
        &format!("{SETTINGS}{}", catch_all("r")),
        &cluster("r", &[&server], "MAGLEV", ""),
    )
    .await;
    let pipeline = [
        command(&["set", "k", "1"]),
        command(&["multi"]),
        command(&["set", "k", "2"]),
        command(&["get", "k"]),
        command(&["exec"]),
        command(&["get", "k"]),
        command(&["set", "k", "3"]),
        command(&["multi"]),
        command(&["get", "k"]),
        command(&["incr", "k"]),
        command(&["exec"]),
        command(&["get", "k"]),
    ]
    .concat();
    let (direct, _) = raw(server.addr, &pipeline, 12).await;
    assert_eq!(
        String::from_utf8_lossy(&direct),
        "+OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n$1\r\n2\r\n$1\r\n2\r\n\
         +OK\r\n+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$1\r\n3\r\n:4\r\n$1\r\n4\r\n"
    );
    // Each run is one write; the race this guards against lost it every time.
    for _ in 0..20 {
        let (out, _) = raw(a, &pipeline, 12).await;
        assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&direct)
        );
    }
}

/// `watch` goes to the connection the transaction then runs on, so a key
/// changed by another client after `watch` makes `exec` fail, as on a direct
/// server. (Envoy 1.40 sends `watch` down the shared connection: the `exec`
/// runs anyway and the other client's write is lost.)
#[tokio::test]
async fn watch_guards_the_transaction_that_follows() {
    let servers = [RedisServer::start().await, RedisServer::start().await];
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let (_l, a) = start(
        &format!("{SETTINGS}{}", catch_all("shards")),
        &cluster("shards", &refs, "MAGLEV", ""),
    )
    .await;
    for target in [servers[0].addr, a] {
        let mut c = RawConn::open(target).await;
        let mut other = RawConn::open(target).await;
        // Another client writes the watched key: exec fails.
        assert_eq!(c.cmd(&["set", "w", "1"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["watch", "w"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["get", "w"]).await, "$1\r\n1\r\n");
        assert_eq!(other.cmd(&["set", "w", "2"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["multi"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["set", "w", "mine"]).await, "+QUEUED\r\n");
        assert_eq!(c.cmd(&["exec"]).await, "*-1\r\n", "through {target}");
        assert_eq!(c.cmd(&["get", "w"]).await, "$1\r\n2\r\n");
        // Untouched, it runs; `exec` ended the watch.
        assert_eq!(c.cmd(&["watch", "w"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["multi"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["incr", "w"]).await, "+QUEUED\r\n");
        assert_eq!(c.cmd(&["exec"]).await, "*1\r\n:3\r\n");
        // `unwatch` lets the transaction run whatever happens to the key.
        assert_eq!(c.cmd(&["watch", "w"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["unwatch"]).await, "+OK\r\n");
        assert_eq!(other.cmd(&["set", "w", "5"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["multi"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["incr", "w"]).await, "+QUEUED\r\n");
        assert_eq!(c.cmd(&["exec"]).await, "*1\r\n:6\r\n");
        // `exec` without `multi` keeps the watch (legate answers Envoy's text).
        assert_eq!(c.cmd(&["watch", "w"]).await, "+OK\r\n");
        let want = if target == a {
            "-EXEC without MULTI\r\n"
        } else {
            "-ERR EXEC without MULTI\r\n"
        };
        assert_eq!(c.cmd(&["exec"]).await, want);
        assert_eq!(other.cmd(&["set", "w", "7"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["multi"]).await, "+OK\r\n");
        assert_eq!(c.cmd(&["incr", "w"]).await, "+QUEUED\r\n");
        assert_eq!(c.cmd(&["exec"]).await, "*-1\r\n");
    }
    // Pipelined in one write, the same replies as the server's.
    let pipeline = [
        command(&["set", "p", "1"]),
        command(&["watch", "p"]),
        command(&["get", "p"]),
        command(&["multi"]),
        command(&["incr", "p"]),
        command(&["exec"]),
        command(&["get", "p"]),
    ]
    .concat();
    let (direct, _) = raw(servers[0].addr, &pipeline, 7).await;
    let (proxied, _) = raw(a, &pipeline, 7).await;
    assert_eq!(
        String::from_utf8_lossy(&proxied),
        String::from_utf8_lossy(&direct)
    );
}

/// A client that pipelines without reading its replies is slowed down by the
/// proxy, not buffered in it: legate stops reading once 1024 requests wait,
/// its memory stays flat, and every command the client got to write is
/// answered once it reads. (Envoy 1.40 reads it all: +100 MB for 3M commands.)
#[tokio::test]
async fn a_client_that_does_not_read_is_slowed_not_buffered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = RedisServer::start().await;
    let (l, a) = start(
        &format!("{SETTINGS}{}", catch_all("r")),
        &cluster("r", &[&server], "MAGLEV", ""),
    )
    .await;
    let pid = l.child.id();
    let rss_kib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let value = "v".repeat(1000);
    let mut d = server.direct().await;
    let () = d.set("big", &value).await.unwrap();
    let reply_len = format!("${}\r\n{value}\r\n", value.len()).len();
    let before = rss_kib();

    // Up to 200k `get`s of a 1 KB value (200 MB of replies), written for at
    // most 4 s, replies unread.
    let one = command(&["get", "big"]);
    let chunk = one.repeat(1000);
    let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
    let (mut written, mut at) = (0usize, 0usize);
    let deadline = Instant::now() + Duration::from_secs(4);
    while written < 200 * chunk.len() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), s.write(&chunk[at..])).await {
            Ok(Ok(n)) => {
                written += n;
                at = (at + n) % chunk.len();
            }
            Ok(Err(e)) => panic!("write failed: {e}"),
            // Blocked: the proxy has stopped reading.
            Err(_) => break,
        }
    }
    let commands = written / one.len();
    assert!(commands > 5_000, "only {commands} commands written");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = rss_kib().saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "RSS grew by {grown} KiB with {commands} commands unanswered"
    );

    // The client reads: every whole command it wrote is answered.
    s.shutdown().await.unwrap();
    let mut replies = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    let mut tail = 0usize;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("replies stopped")
            .unwrap();
        if n == 0 {
            break;
        }
        tail += n;
        replies += tail / reply_len;
        tail %= reply_len;
    }
    assert_eq!((replies, tail), (commands, 0));
}

#[tokio::test]
async fn faults_delay_and_error_at_the_configured_percentage() {
    let server = RedisServer::start().await;
    let body = format!(
        r#"{SETTINGS}{}          faults:
          - fault_type: ERROR
            fault_enabled:
              default_value: {{numerator: 30, denominator: HUNDRED}}
            commands: [get, decr]
          - fault_type: DELAY
            fault_enabled:
              default_value: {{numerator: 100, denominator: HUNDRED}}
            delay: 0.2s
            commands: [set]
          - fault_type: DELAY
            fault_enabled:
              default_value: {{numerator: 50, denominator: HUNDRED}}
            delay: 0.01s
            commands: [decr]
"#,
        catch_all("r")
    );
    let (l, a) = start(&body, &cluster("r", &[&server], "MAGLEV", "")).await;
    let mut c = connect(a, None).await;
    let t = Instant::now();
    let () = c.set("f", "1").await.unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(200), "set took {took:?}");
    let t = Instant::now();
    let _: i64 = c.incr("n", 1).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "incr is not delayed"
    );

    let mut errors = 0;
    for _ in 0..400 {
        match c.get::<_, String>("f").await {
            Ok(v) => assert_eq!(v, "1"),
            Err(e) => {
                assert!(text(&e).contains("Fault Injected Error"), "{e}");
                errors += 1;
            }
        }
    }
    assert!(
        (80..=160).contains(&errors),
        "{errors} of 400 gets failed, want about 120"
    );
    assert_eq!(l.stat("redis.rp.command.get.error_fault").await, errors);
    assert_eq!(l.stat("redis.rp.command.get.error").await, errors);
    assert_eq!(l.stat("redis.rp.command.set.delay_fault").await, 1);

    // One draw per command: `decr` fails 30% of the time, and the 50% delay
    // applies to the other 70%, so about 35% are delayed.
    let t = Instant::now();
    let mut failed = 0;
    for _ in 0..200 {
        let r: redis::RedisResult<i64> = redis::cmd("decr").arg("m").query_async(&mut c).await;
        failed += i64::from(r.is_err());
    }
    let delayed = l.stat("redis.rp.command.decr.delay_fault").await;
    assert!(
        (55..=85).contains(&delayed),
        "{delayed} of 200 decrs delayed, want about 70"
    );
    assert!(
        (40..=80).contains(&failed),
        "{failed} of 200 decrs failed, want about 60"
    );
    assert_eq!(l.stat("redis.rp.command.decr.error_fault").await, failed);
    assert!(t.elapsed() >= Duration::from_millis(10) * delayed as u32);
}

#[tokio::test]
async fn a_dead_server_fails_only_its_keys_and_recovers() {
    let mut servers = [
        RedisServer::start().await,
        RedisServer::start().await,
        RedisServer::start().await,
    ];
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let clusters = cluster("shards", &refs, "MAGLEV", "");
    let (l, a) = start(&format!("{SETTINGS}{}", catch_all("shards")), &clusters).await;
    let mut c = connect(a, None).await;
    let keys: Vec<String> = (0..30).map(|i| format!("d{i}")).collect();
    for k in &keys {
        let () = c.set(k, "v").await.unwrap();
    }
    let held = owners(&refs, &keys).await;
    servers[1].kill();
    let mut failed = HashMap::new();
    for (k, owner) in keys.iter().zip(&held) {
        let r: redis::RedisResult<String> = c.get(k).await;
        failed.insert(k.clone(), r.is_err());
        if *owner == 1 {
            let e = text(&r.unwrap_err());
            assert!(e.contains("upstream failure"), "{k}: {e}");
        } else {
            assert_eq!(r.unwrap(), "v", "{k} is on a live server");
        }
    }
    // mget mixes errors for the dead server's keys with values.
    let mut ask = vec!["mget"];
    ask.extend(keys[..6].iter().map(String::as_str));
    let (out, _) = raw(a, &command(&ask), 1).await;
    let mut want = "*6\r\n".to_string();
    for owner in &held[..6] {
        want.push_str(if *owner == 1 {
            "-upstream failure\r\n"
        } else {
            "$1\r\nv\r\n"
        });
    }
    assert_eq!(String::from_utf8_lossy(&out), want);
    servers[1].restart().await;
    for (k, owner) in keys.iter().zip(&held) {
        if *owner == 1 {
            let () = c.set(k, "back").await.unwrap();
            let v: String = c.get(k).await.unwrap();
            assert_eq!(v, "back");
        }
    }
    assert!(l.stat("cluster.shards.upstream_cx_connect_fail").await >= 1);
}

#[tokio::test]
async fn a_silent_server_times_out_and_the_client_stays_usable() {
    // An upstream that accepts and reads but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let server = RedisServer::start().await;
    let body = r#"          settings: {op_timeout: 0.3s}
          prefix_routes:
            routes:
            - {prefix: "slow:", cluster: silent}
            catch_all_route: {cluster: r}
"#;
    let clusters = format!(
        "{}{}",
        support::cluster("silent", &[(silent_addr, 1)], "    lb_policy: MAGLEV\n"),
        cluster("r", &[&server], "MAGLEV", "")
    );
    let (l, a) = start(body, &clusters).await;
    let mut c = connect(a, None).await;
    let t = Instant::now();
    let e = c.get::<_, String>("slow:1").await.unwrap_err();
    assert!(text(&e).contains("upstream failure"), "{e}");
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    let () = c.set("fast", "ok").await.unwrap();
    let v: String = c.get("fast").await.unwrap();
    assert_eq!(v, "ok");
    assert_eq!(l.stat("cluster.silent.upstream_rq_timeout").await, 1);
}

/// The same command sequences through Envoy 1.40 and legate, on the same config
/// and the same server: the bytes each client gets back must be equal.
#[tokio::test]
async fn replies_match_envoy() {
    let server = RedisServer::start().await;
    let yaml = bootstrap(
        &listener(&format!("{SETTINGS}{}", catch_all("r"))),
        &cluster("r", &[&server], "MAGLEV", ""),
    );
    let seqs: Vec<Vec<u8>> = [
        "ping",
        "ping a b",
        "echo hi",
        "echo",
        "echo a b",
        "get",
        "set a 1",
        "get a",
        "mget a b",
        "mset a 1 b",
        "mset a 1 b 2",
        "mget a b c",
        "del a b c",
        "exists a b a",
        "set n 5;incr n;incrby n 10;get n",
        "lpush l x;mget l n",
        "foo bar",
        "foo",
        "FOO Bar baz",
        "hello",
        "hello 2",
        "hello 3",
        "client setname x",
        "client list",
        "client",
        "cluster info",
        "select 1",
        "select",
        "unwatch",
        "auth x",
        "auth a b",
        "auth",
        "multi;set a 1;get a;exec",
        "multi;exec",
        "multi;multi",
        "discard",
        "exec",
        "multi;discard",
        "multi;foo;exec",
        "multi;get;exec",
        "multi;ping;exec",
        "eval",
        "eval s 0",
        "object encoding",
        "object encoding a",
        "object",
        "subscribe c",
        "dbsize",
        "quit",
        "set a 1;quit;get a",
        "GET a",
        "Get a",
        "hset h f v;hget h f;hgetall h",
        "expire a 100;ttl a",
        "append s x;strlen s",
        "set k1 1;keys k*",
        "keys",
        "keys a b",
        "flushall",
        "flushdb",
        "set a 1;flushdb;get a",
    ]
    .iter()
    .map(|seq| {
        seq.split(';')
            .flat_map(|c| command(&c.split(' ').collect::<Vec<_>>()))
            .collect()
    })
    .chain([
        b"*0\r\n".to_vec(),
        b"*1\r\n:1\r\n".to_vec(),
        b"*2\r\n$3\r\nget\r\n*1\r\n$1\r\na\r\n".to_vec(),
        b":1\r\n".to_vec(),
        b"PING\r\n".to_vec(),
        b"*1\r\n$x\r\n".to_vec(),
        b"*-1\r\n".to_vec(),
        b"*1\r\n$4\r\nping\r\n*1\r\n$-5\r\n".to_vec(),
    ])
    .collect();
    compare_with_envoy(&yaml, &[&server], &seqs).await;
}

/// Sends each sequence on a new connection through Envoy, then through legate,
/// on the same config, each from empty servers; the bytes back must be equal.
async fn compare_with_envoy(yaml: &str, servers: &[&RedisServer], seqs: &[Vec<u8>]) {
    let mut direct = Vec::new();
    for s in servers {
        direct.push(s.direct().await);
    }
    let mut flush = async || {
        for d in direct.iter_mut() {
            let () = redis::cmd("flushall").query_async(d).await.unwrap();
        }
    };
    let envoy = support::envoy::Envoy::start(yaml).await.unwrap();
    let ea = envoy.listener("redis").await;
    let mut by_envoy = Vec::new();
    for s in seqs {
        flush().await;
        by_envoy.push(raw_until_idle(ea, s).await);
    }
    drop(envoy);
    let l = Legate::start_with(yaml, &["--concurrency", "1"]).await;
    let la = l.listener("redis").await;
    let mut diffs = Vec::new();
    for (s, want) in seqs.iter().zip(&by_envoy) {
        flush().await;
        let got = raw_until_idle(la, s).await;
        if &got != want {
            diffs.push(format!(
                "{:?}\n  envoy:  {:?} closed={}\n  legate: {:?} closed={}",
                String::from_utf8_lossy(s),
                String::from_utf8_lossy(&want.0),
                want.1,
                String::from_utf8_lossy(&got.0),
                got.1
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} sequences differ:\n{}",
        diffs.len(),
        seqs.len(),
        diffs.join("\n")
    );
}

/// Commands Envoy sends to every server: the merged replies must be Envoy's.
/// One server: with several, Envoy 1.40 (measured) sends them to the same server
/// once per host of a non-Redis-Cluster cluster, so `keys` lists that server's
/// keys N times, while legate asks each server once.
#[tokio::test]
async fn cluster_wide_commands_merge_as_envoys() {
    let server = RedisServer::start().await;
    let refs = [&server];
    let yaml = bootstrap(
        &listener(&format!("{SETTINGS}{}", catch_all("shards"))),
        &cluster("shards", &refs, "MAGLEV", ""),
    );
    let fill = "mset k1 1 k2 2 k3 3 k4 4 k5 5 k6 6";
    let seqs: Vec<Vec<u8>> = [
        format!("{fill};keys k*"),
        format!("{fill};scan 0 count 100"),
        format!("{fill};flushdb;keys *"),
        "flushall".into(),
        "randomkey".into(),
        "role".into(),
        "config get maxmemory".into(),
        "config set maxmemory 0".into(),
        "config resetstat".into(),
        "config rewrite".into(),
        "config help".into(),
        "config".into(),
        "slowlog reset;slowlog len;slowlog get".into(),
        "slowlog".into(),
        "script load return;script exists 63143b6f8007b98c53ca2149822777b3566f9241 abc".into(),
        "script flush".into(),
        "script kill".into(),
        "script".into(),
        "keys a b".into(),
    ]
    .iter()
    .map(|seq| {
        seq.split(';')
            .flat_map(|c| command(&c.split(' ').collect::<Vec<_>>()))
            .collect()
    })
    .collect();
    compare_with_envoy(&yaml, &refs, &seqs).await;
}

/// A server that answers `MOVED`/`ASK` by the key's prefix, pointing at `to`,
/// or at itself for `loop:` keys.
async fn redirecting_server(to: SocketAddr) -> SocketAddr {
    use legate_redis_proxy::resp::Decoder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut d = Decoder::new();
                let mut buf = bytes::BytesMut::new();
                while s.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {
                    while let Ok(Some(f)) = d.decode(&mut buf) {
                        let args = f.value.as_command().unwrap_or_default();
                        let key = args.get(1).map(|k| k.to_vec()).unwrap_or_default();
                        let out = if key.starts_with(b"ask:") {
                            format!("-ASK 7 {to}\r\n")
                        } else if key.starts_with(b"loop:") {
                            format!("-MOVED 7 {me}\r\n")
                        } else {
                            format!("-MOVED 7 {to}\r\n")
                        };
                        if s.write_all(out.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    me
}

#[tokio::test]
async fn moved_and_ask_are_followed_once() {
    let server = RedisServer::start().await;
    let fake = redirecting_server(server.addr).await;
    let body = format!(
        "          settings: {{op_timeout: 2s, enable_redirection: true}}\n{}",
        catch_all("fake")
    );
    let clusters = support::cluster("fake", &[(fake, 1)], "    lb_policy: MAGLEV\n");
    let (_l, a) = start(&body, &clusters).await;
    let mut c = connect(a, None).await;
    let () = c.set("moved:1", "v").await.unwrap();
    let v: String = c.get("moved:1").await.unwrap();
    assert_eq!(v, "v");
    let () = c.set("ask:1", "w").await.unwrap();
    let mut d = server.direct().await;
    let got: Vec<Option<String>> = d.mget(&["moved:1", "ask:1"]).await.unwrap();
    assert_eq!(got, [Some("v".to_string()), Some("w".to_string())]);
    // mget fragments are redirected one by one.
    let got: Vec<Option<String>> = c.mget(&["moved:1", "ask:1", "moved:2"]).await.unwrap();
    assert_eq!(got, [Some("v".to_string()), Some("w".to_string()), None]);
    // A second redirection is handed to the client.
    let (out, _) = raw(a, &command(&["get", "loop:1"]), 1).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("-MOVED 7 {fake}\r\n")
    );

    // Without enable_redirection, the client gets the redirection.
    let (_l2, a2) = start(&format!("{SETTINGS}{}", catch_all("fake")), &clusters).await;
    let (out, _) = raw(a2, &command(&["get", "moved:1"]), 1).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        format!("-MOVED 7 {}\r\n", server.addr)
    );
}

#[tokio::test]
async fn writes_are_batched_until_the_buffer_flush_timeout() {
    let server = RedisServer::start().await;
    let body = format!(
        "          settings: {{op_timeout: 2s, max_buffer_size_before_flush: 1048576, buffer_flush_timeout: 1s}}\n{}",
        catch_all("r")
    );
    let (_l, a) = start(&body, &cluster("r", &[&server], "MAGLEV", "")).await;
    // Raw, since the redis crate gives up on a reply after 0.5 s.
    let t = Instant::now();
    let (out, _) = raw(a, &command(&["set", "b", "1"]), 1).await;
    let took = t.elapsed();
    assert_eq!(out, b"+OK\r\n");
    assert!(
        took >= Duration::from_secs(1),
        "the set went out after {took:?}"
    );
    // Commands that fill the buffer go out at once: the 16th of these passes
    // 1 MiB.
    let mut c = connect(a, None).await;
    let mut p = redis::pipe();
    let big = "x".repeat(64 * 1024);
    for i in 0..16 {
        p.set(format!("big{i}"), &big).ignore();
    }
    // Well under the 1 s flush timeout, even on a loaded machine.
    let t = Instant::now();
    let () = p.query_async(&mut c).await.unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(700),
        "{:?}",
        t.elapsed()
    );
}

/// Counters named `*.upstream_commands.*` and `redis.*.command.*` from Envoy's
/// text `/stats`, without the zero ones.
fn command_counters(text: &str) -> HashMap<String, i64> {
    text.lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(n, _)| n.contains(".upstream_commands.") || n.starts_with("redis.rp.command."))
        .filter_map(|(n, v)| Some((n.to_string(), v.parse::<i64>().ok()?)))
        .filter(|(_, v)| *v != 0)
        .collect()
}

#[tokio::test]
async fn command_stats_count_as_envoys() {
    let servers = [RedisServer::start().await, RedisServer::start().await];
    let refs: Vec<&RedisServer> = servers.iter().collect();
    let yaml = bootstrap(
        &listener(&format!(
            "          settings: {{op_timeout: 2s, enable_command_stats: true}}\n{}",
            catch_all("shards")
        )),
        &cluster("shards", &refs, "MAGLEV", ""),
    );
    let traffic = [
        command(&["set", "a", "1"]),
        command(&["get", "a"]),
        command(&["get", "b"]),
        command(&["mget", "a", "b", "c"]),
        command(&["hget", "a", "x"]),
        command(&["incr", "n"]),
        command(&["del", "a", "n"]),
        command(&["ping"]),
        command(&["foo"]),
    ]
    .concat();
    let envoy = support::envoy::Envoy::start(&yaml).await.unwrap();
    let _ = raw(envoy.listener("redis").await, &traffic, 9).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let by_envoy = command_counters(&envoy.admin_get("/stats").await);
    drop(envoy);
    let l = Legate::start_with(&yaml, &["--concurrency", "1"]).await;
    let _ = raw(l.listener("redis").await, &traffic, 9).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, text) = support::http_get(l.admin, "/stats").await.unwrap();
    let by_legate = command_counters(&text);
    assert_eq!(by_legate, by_envoy);
    assert_eq!(
        by_legate.get("cluster.shards.redis_cluster.upstream_commands.get.total"),
        Some(&5)
    );
}

#[test]
fn broken_configs_are_refused_with_the_field_named() {
    let logical = r#"
  - name: dns
    type: LOGICAL_DNS
    connect_timeout: 1s
    lb_policy: MAGLEV
    load_assignment:
      cluster_name: dns
      endpoints:
      - lb_endpoints:
        - endpoint: {address: {socket_address: {address: localhost, port_value: 6379}}}
"#;
    let cases = [
        (
            listener(&format!("{SETTINGS}{}", catch_all("dns"))),
            logical.to_string(),
            "cluster \"dns\" is LOGICAL_DNS; the Redis proxy needs each host's address",
        ),
        (
            listener(&catch_all("dns")),
            logical.to_string(),
            "typed_config: missing required field \"settings\"",
        ),
        (
            listener(&format!("{SETTINGS}{}", catch_all("nope"))),
            logical.to_string(),
            "unknown cluster \"nope\"",
        ),
        (
            listener(&format!(
                "{SETTINGS}          prefix_routes:\n            routes:\n            - {{prefix: a, cluster: dns}}\n            - {{prefix: a, cluster: dns}}\n"
            )),
            logical.to_string(),
            "prefix `a` appears more than once in prefix_routes",
        ),
        (
            listener(&format!(
                "{SETTINGS}          faults:\n          - {{fault_type: DELAY, fault_enabled: {{default_value: {{numerator: 1}}}}, commands: [get]}}\n"
            )),
            logical.to_string(),
            "a DELAY fault needs \"delay\"",
        ),
        (
            listener(&format!(
                "          settings: {{op_timeout: 1s, read_policy: REPLICA}}\n{}",
                catch_all("dns")
            )),
            logical.to_string(),
            "read_policy",
        ),
    ];
    for (l, c, want) in cases {
        let (ok, err) = support::validate(&bootstrap(&l, &c));
        assert!(!ok && err.contains(want), "want {want:?} in:\n{err}");
    }
}
