//! `envoy.filters.network.mysql_proxy` end to end: the real binary in front of
//! a real MariaDB 10.11 server (one per test, see `support::mariadb_server`),
//! driven by the real `mariadb` client and by `mysql_async`.
//!
//! The `tcp_proxy_*` tests run the same client checks through a plain
//! `tcp_proxy` chain: they show the harness and the clients work on their own.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::process::Output;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use support::mariadb_server::{self, DB, MariaDb, PASSWORD, USER, app_cli, app_conn, cli, errors};
use support::{Legate, bootstrap, cluster};

/// Every test finishes within this, or fails.
const TEST_LIMIT: Duration = Duration::from_secs(45);

async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test did not finish within its time limit");
}

/// A mysql_proxy stat (the filter's `stat_prefix` is `db`).
fn m(stat: &str) -> String {
    format!("mysql.db.{stat}")
}

/// Network RBAC (`stat_prefix: sql`) denying inserts into `shop.payments`,
/// decided per query on the mysql_proxy metadata.
const DENY_PAYMENT_INSERTS: &str = r#"      - name: envoy.filters.network.rbac
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC
          stat_prefix: sql
          enforcement_type: CONTINUOUS
          rules:
            action: DENY
            policies:
              no-payment-inserts:
                permissions:
                - metadata:
                    filter: envoy.filters.network.mysql_proxy
                    path: [{key: payments.shop}]
                    value: {list_match: {one_of: {string_match: {exact: insert}}}}
                principals: [{any: true}]
"#;

/// Listener `mysql` in front of `db`: mysql_proxy (stat prefix `db`; `mysql`
/// is the rest of its config at indent 10, `None` leaves the filter out),
/// then `rbac` (a filter list item, may be empty), then tcp_proxy.
fn config(db: &MariaDb, mysql: Option<&str>, rbac: &str) -> String {
    let proxy = match mysql {
        Some(extra) => format!(
            r#"      - name: envoy.filters.network.mysql_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.mysql_proxy.v3.MySQLProxy
          stat_prefix: db
{extra}"#
        ),
        None => String::new(),
    };
    let listener = format!(
        r#"
  - name: mysql
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
{proxy}{rbac}      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: mysql_tcp
          cluster: mariadb
"#
    );
    bootstrap(&listener, &cluster("mariadb", &[(db.addr, 1)], ""))
}

/// A server, and legate in front of it on `config(mysql, rbac)`.
async fn start(mysql: Option<&str>, rbac: &str) -> (MariaDb, Legate, SocketAddr) {
    let db = MariaDb::start().await;
    let legate = Legate::start(&config(&db, mysql, rbac)).await;
    let a = legate.listener("mysql").await;
    (db, legate, a)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The client's output when it must have succeeded.
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "mariadb failed ({}): {}{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// The client printed `CONNECTION_ID()`, then that id again with `value`: its
/// statements in between, errors and all, ran on one connection.
fn same_session(out: &Output, value: &str) {
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}{}", stderr(out));
    assert_eq!(lines[1], format!("{}\t{value}", lines[0]), "same session");
}

/// A server error from `mysql_async`, or a panic naming what came instead.
fn server_error<T: std::fmt::Debug>(
    r: mysql_async::Result<T>,
    what: &str,
) -> mysql_async::ServerError {
    match r {
        Err(mysql_async::Error::Server(e)) => e,
        other => panic!("{what}: expected a server error, got {other:?}"),
    }
}

async fn connection_id(c: &mut mysql_async::Conn) -> u64 {
    c.query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap()
}

/// A good login and a wrong password with the `mariadb` client.
fn cli_logins(a: SocketAddr) {
    let out = ok(app_cli(a, "SELECT CURRENT_USER(), DATABASE()", &[]));
    assert_eq!(out, "app@%\tshop\n");
    let bad = cli(a, USER, "wrong", DB, "SELECT 1", &[]);
    assert!(!bad.status.success(), "{}", stdout(&bad));
    assert!(stdout(&bad).is_empty(), "{}", stdout(&bad));
    assert!(
        stderr(&bad).contains("ERROR 1045 (28000)")
            && stderr(&bad).contains("Access denied for user 'app'@"),
        "{}",
        stderr(&bad)
    );
}

/// A good login and a wrong password with `mysql_async`.
async fn rust_logins(a: SocketAddr) {
    let mut c = app_conn(a).await;
    let who: Option<(String, String)> = c
        .query_first("SELECT CURRENT_USER(), DATABASE()")
        .await
        .unwrap();
    assert_eq!(who, Some(("app@%".to_string(), "shop".to_string())));
    c.disconnect().await.unwrap();
    let e = server_error(
        mariadb_server::connect(a, USER, "wrong", DB).await,
        "wrong password",
    );
    assert_eq!((e.code, e.state.as_str()), (1045, "28000"), "{e:?}");
    assert!(
        e.message.starts_with("Access denied for user 'app'@"),
        "{e:?}"
    );
}

/// A TLS session with the `mariadb` client (server certificate not verified):
/// the server reports TLS, and queries work.
fn cli_tls(a: SocketAddr) {
    let out = ok(app_cli(
        a,
        "SHOW SESSION STATUS LIKE 'Ssl_version';\nSELECT SUM(amount) FROM payments;",
        &["--ssl"],
    ));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[0].starts_with("Ssl_version\tTLSv1."), "{out}");
    assert_eq!(lines[1], "60");
}

/// Prepared statements with parameters, result sets, NULL and UTF-8, then a
/// text query on the same session (returns its connection).
async fn prepared_statements(a: SocketAddr) -> mysql_async::Conn {
    let mut c = app_conn(a).await;
    let insert = c
        .prep("INSERT INTO orders (item, qty) VALUES (?, ?)")
        .await
        .unwrap();
    assert_eq!(insert.num_params(), 2);
    for (item, qty) in [("kiwi", 5), ("lime", 9), ("ñandú 🥝", 40)] {
        c.exec_drop(&insert, (item, qty)).await.unwrap();
        assert_eq!(c.affected_rows(), 1);
    }
    c.close(insert).await.unwrap();
    let rows: Vec<(String, i32)> = c
        .exec(
            "SELECT item, qty FROM orders WHERE qty >= ? AND item <> ? ORDER BY qty",
            (7, "plum"),
        )
        .await
        .unwrap();
    let want = [("pear", 7), ("lime", 9), ("ñandú 🥝", 40)];
    assert_eq!(
        rows,
        want.map(|(i, q)| (i.to_string(), q)).to_vec(),
        "prepared select"
    );
    let none: Option<i32> = c
        .exec_first("SELECT qty FROM orders WHERE item = ?", (None::<String>,))
        .await
        .unwrap();
    assert_eq!(none, None);
    // A statement prepared once, run with several parameter sets.
    let by_item = c
        .prep("SELECT qty FROM orders WHERE item = ?")
        .await
        .unwrap();
    for (item, qty) in [("apple", 3), ("ñandú 🥝", 40), ("pear", 7)] {
        let got: Option<i32> = c.exec_first(&by_item, (item,)).await.unwrap();
        assert_eq!(got, Some(qty), "{item}");
    }
    let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM orders").await.unwrap();
    assert_eq!(n, Some(6));
    c
}

/// The first index where two byte strings differ, for a readable failure.
fn same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{what}: {} bytes back for {}, first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

/// 20,000,000 random bytes inserted with a prepared statement (sent as long
/// data in 16 MiB packets), read back with the binary and the text protocol
/// (a 20 MB row: two packets); then 9 MB sent as an 18 MB hex literal in a
/// text query (a two-packet COM_QUERY) and read back.
async fn blob_round_trip(a: SocketAddr, db: &MariaDb) -> mysql_async::Conn {
    let mut data = vec![0u8; 20_000_000];
    fastrand::Rng::with_seed(20).fill(&mut data);
    let mut c = app_conn(a).await;
    c.exec_drop(
        "INSERT INTO blobs (id, data) VALUES (?, ?)",
        (1, data.as_slice()),
    )
    .await
    .unwrap();
    assert_eq!(
        db.exec_root("SELECT LENGTH(data) FROM shop.blobs WHERE id = 1"),
        "20000000\n"
    );
    let back: Option<Vec<u8>> = c
        .exec_first("SELECT data FROM blobs WHERE id = ?", (1,))
        .await
        .unwrap();
    same_bytes(&back.expect("row 1"), &data, "binary protocol");
    let back: Option<Vec<u8>> = c
        .query_first("SELECT data FROM blobs WHERE id = 1")
        .await
        .unwrap();
    same_bytes(&back.expect("row 1"), &data, "text protocol");

    let small = &data[..9_000_000];
    let mut sql = String::with_capacity(2 * small.len() + 64);
    sql.push_str("INSERT INTO blobs (id, data) VALUES (2, x'");
    for b in small {
        sql.push_str(&format!("{b:02x}"));
    }
    sql.push_str("')");
    c.query_drop(sql).await.unwrap();
    assert_eq!(c.affected_rows(), 1);
    let back: Option<Vec<u8>> = c
        .query_first("SELECT data FROM blobs WHERE id = 2")
        .await
        .unwrap();
    same_bytes(&back.expect("row 2"), small, "hex literal");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_a_wrong_password_are_counted() {
    bounded(async {
        let (_db, l, a) = start(Some(""), "").await;

        cli_logins(a);
        assert_eq!(l.wait_stat(&m("login_failures"), 1).await, 1);
        assert_eq!(l.stat(&m("login_attempts")).await, 2);
        assert_eq!(l.stat(&m("sessions")).await, 2);

        rust_logins(a).await;
        assert_eq!(l.wait_stat(&m("login_failures"), 2).await, 2);
        assert_eq!(l.stat(&m("login_attempts")).await, 4);
        assert_eq!(l.stat(&m("sessions")).await, 4);
        // Both clients answer the server's mysql_native_password challenge
        // directly, in the clear.
        assert_eq!(l.stat(&m("auth_switch_request")).await, 0);
        assert_eq!(l.stat(&m("upgraded_to_ssl")).await, 0);
        // Each good session ran one SELECT.
        assert_eq!(l.stat(&m("query.select")).await, 2);
        assert_eq!(l.stat(&m("decoder_errors")).await, 0);
        assert_eq!(l.stat(&m("protocol_errors")).await, 0);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_statement_is_counted_by_operation() {
    bounded(async {
        let (db, l, a) = start(Some(""), "").await;
        let out = ok(app_cli(
            a,
            "CREATE TABLE ops (id INT PRIMARY KEY, v INT NOT NULL);
             INSERT INTO ops VALUES (1, 10), (2, 20), (3, 30);
             SELECT v FROM ops WHERE id = 2;
             UPDATE ops SET v = v + 1 WHERE id = 1;
             DELETE FROM ops WHERE id = 3;
             SELECT id, v FROM ops ORDER BY id;",
            &[],
        ));
        assert_eq!(out, "20\n1\t11\n2\t20\n");
        for (op, n) in [
            ("create", 1),
            ("insert", 1),
            ("select", 2),
            ("update", 1),
            ("delete", 1),
            ("drop", 0),
        ] {
            assert_eq!(l.stat(&m(&format!("query.{op}"))).await, n, "query.{op}");
        }
        assert_eq!(l.stat(&m("queries_parsed")).await, 6);
        assert_eq!(l.stat(&m("queries_parse_error")).await, 0);

        // MariaDB's `LIMIT ROWS EXAMINED` is no standard (or MySQL) SQL: the
        // parser refuses it, the server runs it.
        let out = ok(app_cli(
            a,
            "SELECT amount FROM payments ORDER BY id LIMIT 2 ROWS EXAMINED 100",
            &[],
        ));
        assert_eq!(out, "10\n20\n");
        assert_eq!(l.stat(&m("queries_parse_error")).await, 1);
        assert_eq!(l.stat(&m("queries_parsed")).await, 6);
        let selects = l.stat(&m("query.select")).await;

        // The same counts from the Rust client, and a DROP.
        let mut c = app_conn(a).await;
        c.query_drop("INSERT INTO ops VALUES (4, 40)")
            .await
            .unwrap();
        let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM ops").await.unwrap();
        assert_eq!(n, Some(3));
        c.query_drop("DROP TABLE ops").await.unwrap();
        c.disconnect().await.unwrap();
        assert_eq!(l.stat(&m("query.insert")).await, 2);
        assert_eq!(l.stat(&m("query.select")).await, selects + 1);
        assert_eq!(l.stat(&m("query.drop")).await, 1);
        assert_eq!(l.stat(&m("queries_parsed")).await, 9);
        assert_eq!(l.stat(&m("sessions")).await, 3);
        assert_eq!(l.stat(&m("decoder_errors")).await, 0);
        assert_eq!(
            db.exec_root("SHOW TABLES FROM shop LIKE 'ops'"),
            "",
            "the DROP ran"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_insert_closes_the_connection() {
    bounded(async {
        let (db, l, a) = start(Some(""), DENY_PAYMENT_INSERTS).await;

        let out = app_cli(
            a,
            "INSERT INTO orders (item, qty) VALUES ('fig', 1);
             SELECT COUNT(*) FROM payments;
             INSERT INTO payments (amount) VALUES (99);
             SELECT 'after';",
            &[],
        );
        assert!(!out.status.success());
        assert_eq!(stdout(&out), "3\n", "{}", stderr(&out));
        let errs = errors(&out);
        assert!(
            errs.len() == 1 && errs[0].starts_with("ERROR 2013 (HY000) at line 3: Lost connection"),
            "{}",
            stderr(&out)
        );
        assert_eq!(l.wait_stat("sql.rbac.denied", 1).await, 1);

        // mysql_async: the select passes, the insert loses the connection.
        let mut c = app_conn(a).await;
        let sum: Option<i64> = c
            .query_first("SELECT SUM(amount) FROM payments")
            .await
            .unwrap();
        assert_eq!(sum, Some(60));
        let r = c
            .query_drop("INSERT INTO payments (amount) VALUES (98)")
            .await;
        assert!(
            r.is_err() && !matches!(r, Err(mysql_async::Error::Server(_))),
            "{r:?}"
        );
        assert!(c.query_drop("SELECT 1").await.is_err());
        assert_eq!(l.wait_stat("sql.rbac.denied", 2).await, 2);
        assert_eq!(l.stat(&m("queries_denied")).await, 0);

        // Neither insert reached the server; the allowed one did.
        assert_eq!(db.exec_root("SELECT COUNT(*) FROM shop.payments"), "3\n");
        assert_eq!(db.exec_root("SELECT COUNT(*) FROM shop.orders"), "4\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_insert_is_answered_with_an_error_and_the_session_goes_on() {
    bounded(async {
        let denied = r#"          legate_denied_query_error:
            error_code: 1142
            sql_state: "42000"
            message: "INSERT on shop.payments is not allowed here"
"#;
        let (db, l, a) = start(Some(denied), DENY_PAYMENT_INSERTS).await;
        let msg = "(42000) at line 2: INSERT on shop.payments is not allowed here";

        // --force: the client goes on after an error, on the same connection.
        let out = app_cli(
            a,
            "SELECT CONNECTION_ID();
             INSERT INTO payments (amount) VALUES (99);
             INSERT INTO orders (item, qty) VALUES ('fig', 1);
             SELECT CONNECTION_ID(), COUNT(*) FROM payments;",
            &["--force"],
        );
        same_session(&out, "3");
        assert_eq!(errors(&out), [format!("ERROR 1142 {msg}")]);
        assert_eq!(l.wait_stat(&m("queries_denied"), 1).await, 1);

        // No default database: the query names it.
        let out = cli(
            a,
            USER,
            PASSWORD,
            "",
            "SELECT COUNT(*) FROM shop.payments;
             INSERT INTO shop.payments (amount) VALUES (98);
             SELECT COUNT(*) FROM shop.payments;",
            &["--force"],
        );
        assert_eq!(stdout(&out), "3\n3\n", "{}", stderr(&out));
        assert_eq!(errors(&out), [format!("ERROR 1142 {msg}")]);
        assert_eq!(l.wait_stat(&m("queries_denied"), 2).await, 2);

        // mysql_async: a server error, then the same connection goes on.
        let mut c = app_conn(a).await;
        let id = connection_id(&mut c).await;
        let e = server_error(
            c.query_drop("INSERT INTO payments (amount) VALUES (97)")
                .await,
            "denied insert",
        );
        assert_eq!(
            (e.code, e.state.as_str(), e.message.as_str()),
            (1142, "42000", "INSERT on shop.payments is not allowed here")
        );
        assert_eq!(connection_id(&mut c).await, id);
        let rows: Vec<i32> = c
            .exec(
                "SELECT amount FROM payments WHERE amount > ? ORDER BY id",
                (15,),
            )
            .await
            .unwrap();
        assert_eq!(rows, [20, 30]);
        c.query_drop("UPDATE payments SET amount = 11 WHERE id = 1")
            .await
            .unwrap();
        c.disconnect().await.unwrap();

        assert_eq!(l.wait_stat(&m("queries_denied"), 3).await, 3);
        assert_eq!(l.stat("sql.rbac.denied").await, 3);
        assert_eq!(
            db.exec_root("SELECT amount FROM shop.payments ORDER BY id"),
            "11\n20\n30\n"
        );
        assert_eq!(db.exec_root("SELECT COUNT(*) FROM shop.orders"), "4\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_session_is_counted_and_works() {
    bounded(async {
        let (_db, l, a) = start(Some(""), "").await;
        cli_tls(a);
        assert_eq!(l.wait_stat(&m("upgraded_to_ssl"), 1).await, 1);
        assert_eq!(l.stat(&m("sessions")).await, 1);
        assert_eq!(l.stat(&m("login_failures")).await, 0);
        // The rest of the session is encrypted: nothing to decode or parse.
        assert_eq!(l.stat(&m("decoder_errors")).await, 0);
        assert_eq!(l.stat(&m("queries_parsed")).await, 0);

        // A session in the clear after it is decoded again.
        assert_eq!(ok(app_cli(a, "SELECT 1", &[])), "1\n");
        assert_eq!(l.wait_stat(&m("query.select"), 1).await, 1);
        assert_eq!(l.stat(&m("upgraded_to_ssl")).await, 1);
        assert_eq!(l.stat(&m("sessions")).await, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_fault_answers_the_configured_error_and_the_session_goes_on() {
    bounded(async {
        let faults = r#"          legate_query_faults:
          - tables: ["orders.shop"]
            operations: ["update"]
            abort:
              error_code: 1213
              sql_state: "40001"
              message: "Deadlock found when trying to get lock (injected)"
              percentage: {numerator: 100, denominator: HUNDRED}
"#;
        let (db, l, a) = start(Some(faults), "").await;
        let injected = "Deadlock found when trying to get lock (injected)";

        let out = app_cli(
            a,
            "SELECT CONNECTION_ID();
             UPDATE orders SET qty = qty + 1 WHERE item = 'apple';
             UPDATE payments SET amount = amount + 1 WHERE id = 1;
             SELECT CONNECTION_ID(), qty FROM orders WHERE item = 'apple';",
            &["--force"],
        );
        same_session(&out, "3");
        assert_eq!(
            errors(&out),
            [format!("ERROR 1213 (40001) at line 2: {injected}")]
        );
        assert_eq!(l.wait_stat(&m("aborts_injected"), 1).await, 1);

        // mysql_async checks every packet's sequence id: the injected error
        // and the queries after it must all be in order.
        let mut c = app_conn(a).await;
        let id = connection_id(&mut c).await;
        let e = server_error(
            c.query_drop("UPDATE orders SET qty = 0 WHERE item = 'pear'")
                .await,
            "injected abort",
        );
        assert_eq!(
            (e.code, e.state.as_str(), e.message.as_str()),
            (1213, "40001", injected)
        );
        assert_eq!(connection_id(&mut c).await, id);
        let qty: Option<i32> = c
            .exec_first("SELECT qty FROM orders WHERE item = ?", ("pear",))
            .await
            .unwrap();
        assert_eq!(qty, Some(7));
        let e = server_error(
            c.query_drop("UPDATE shop.orders SET qty = 0").await,
            "injected abort, database named",
        );
        assert_eq!(e.code, 1213);
        c.query_drop("UPDATE payments SET amount = amount + 1 WHERE id = 1")
            .await
            .unwrap();
        assert_eq!(c.affected_rows(), 1);
        c.disconnect().await.unwrap();
        assert_eq!(l.wait_stat(&m("aborts_injected"), 3).await, 3);
        assert_eq!(l.stat(&m("delays_injected")).await, 0);

        // The aborted updates never ran; the others did.
        assert_eq!(
            db.exec_root("SELECT qty FROM shop.orders ORDER BY id"),
            "3\n7\n12\n"
        );
        assert_eq!(
            db.exec_root("SELECT amount FROM shop.payments WHERE id = 1"),
            "12\n"
        );
    })
    .await;
}

/// How long `sql` takes on `c`, the best of `n` runs.
async fn fastest(c: &mut mysql_async::Conn, sql: &str, n: usize) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..n {
        let t = Instant::now();
        c.query_drop(sql).await.unwrap();
        best = best.min(t.elapsed());
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_fault_delays_matching_queries_only() {
    bounded(async {
        let faults = r#"          legate_query_faults:
          - tables: ["payments.shop"]
            operations: ["select"]
            delay:
              fixed_delay: 0.3s
              percentage: {numerator: 100, denominator: HUNDRED}
"#;
        let (_db, l, a) = start(Some(faults), "").await;
        let delay = Duration::from_millis(300);
        let mut c = app_conn(a).await;

        let t = Instant::now();
        let amount: Option<i32> = c
            .query_first("SELECT amount FROM payments WHERE id = 1")
            .await
            .unwrap();
        let slow = t.elapsed();
        assert_eq!(amount, Some(10));
        assert!(slow >= delay, "a matching select took {slow:?}");
        assert_eq!(l.wait_stat(&m("delays_injected"), 1).await, 1);

        // Another table, another operation on the same table: not delayed.
        let other_table = fastest(&mut c, "SELECT qty FROM orders WHERE id = 1", 3).await;
        assert!(other_table < delay, "select on orders took {other_table:?}");
        let other_op = fastest(&mut c, "INSERT INTO payments (amount) VALUES (1)", 3).await;
        assert!(other_op < delay, "insert into payments took {other_op:?}");
        assert_eq!(l.stat(&m("delays_injected")).await, 1);
        assert_eq!(l.stat(&m("aborts_injected")).await, 0);

        // The delayed session stays in step: the next matching select is
        // delayed again and answered correctly.
        let t = Instant::now();
        let n: Option<i64> = c
            .query_first("SELECT COUNT(*) FROM payments")
            .await
            .unwrap();
        assert_eq!(n, Some(6));
        assert!(t.elapsed() >= delay, "took {:?}", t.elapsed());
        assert_eq!(l.wait_stat(&m("delays_injected"), 2).await, 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_pass_through() {
    bounded(async {
        let (db, l, a) = start(Some(""), "").await;
        let mut c = prepared_statements(a).await;
        // Text queries after the binary protocol are still decoded.
        let before = l.stat(&m("query.select")).await;
        let n: Option<i64> = c
            .query_first("SELECT COUNT(*) FROM orders WHERE qty > 5")
            .await
            .unwrap();
        assert_eq!(n, Some(4));
        assert_eq!(l.stat(&m("query.select")).await, before + 1);
        c.disconnect().await.unwrap();
        assert_eq!(l.stat(&m("decoder_errors")).await, 0);
        assert_eq!(l.stat(&m("protocol_errors")).await, 0);
        assert_eq!(
            db.exec_root("SELECT qty FROM shop.orders WHERE item LIKE 'ñand%'"),
            "40\n"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_blob_round_trips_through_the_filter() {
    bounded(async {
        let (db, l, a) = start(Some(""), "").await;
        let mut c = blob_round_trip(a, &db).await;
        // The session is still in step after the multi-packet messages.
        let before = l.stat(&m("query.select")).await;
        let n: Option<i64> = c.query_first("SELECT COUNT(*) FROM blobs").await.unwrap();
        assert_eq!(n, Some(2));
        assert_eq!(l.stat(&m("query.select")).await, before + 1);
        c.disconnect().await.unwrap();
        assert_eq!(l.stat(&m("decoder_errors")).await, 0);
        assert_eq!(l.stat(&m("protocol_errors")).await, 0);
    })
    .await;
}

/// The control: everything the clients do above, through tcp_proxy alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_passes_logins_tls_and_prepared_statements() {
    bounded(async {
        let (db, l, a) = start(None, "").await;
        cli_logins(a);
        rust_logins(a).await;
        cli_tls(a);
        prepared_statements(a).await.disconnect().await.unwrap();
        assert_eq!(db.exec_root("SELECT COUNT(*) FROM shop.orders"), "6\n");
        assert_eq!(l.wait_stat("tcp.mysql_tcp.downstream_cx_total", 6).await, 6);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_proxy_passes_a_20_mb_blob() {
    bounded(async {
        let (db, _l, a) = start(None, "").await;
        blob_round_trip(a, &db).await.disconnect().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_the_parser_refuses_can_be_denied() {
    bounded(async {
        // Legate's own: a query no table policy can judge is refused.
        let strict = r#"          legate_unparsed_queries: DENY
          legate_denied_query_error:
            message: "not understood by the proxy"
"#;
        let (_db, l, a) = start(Some(strict), "").await;
        let out = app_cli(
            a,
            "SELECT CONNECTION_ID();
             SELECT amount FROM payments ORDER BY id LIMIT 2 ROWS EXAMINED 100;
             SELECT CONNECTION_ID(), COUNT(*) FROM payments;",
            &["--force"],
        );
        same_session(&out, "3");
        assert_eq!(
            errors(&out),
            ["ERROR 1142 (42000) at line 2: not understood by the proxy"]
        );
        assert_eq!(l.wait_stat(&m("queries_denied"), 1).await, 1);
        assert_eq!(l.stat(&m("queries_parse_error")).await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_garbage_stops_sniffing_and_still_reaches_the_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    bounded(async {
        let (_db, l, a) = start(Some(""), "").await;
        let mut s = tokio::net::TcpStream::connect(a).await.unwrap();
        // The greeting arrives whole through the filter.
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.unwrap();
        let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
        let mut greeting = vec![0u8; len];
        s.read_exact(&mut greeting).await.unwrap();
        assert_eq!(greeting[0], 10, "protocol v10 greeting");
        // A "login" that is no login: the filter gives up on the connection,
        // and the server, which gets the bytes, answers them itself.
        s.write_all(b"\x05\x00\x00\x01hello").await.unwrap();
        let mut reply = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut reply)).await;
        assert!(reply.len() > 7, "{reply:?}");
        assert_eq!(reply[4], 0xFF, "an ERR packet from the server: {reply:?}");
        let code = u16::from_le_bytes([reply[5], reply[6]]);
        assert_eq!(code, 1043, "ER_HANDSHAKE_ERROR: {reply:?}");
        assert_eq!(l.wait_stat(&m("decoder_errors"), 1).await, 1);
        assert_eq!(l.stat(&m("login_attempts")).await, 1);
        // The proxy goes on serving.
        assert_eq!(ok(app_cli(a, "SELECT 41 + 1", &[])), "42\n");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_dies_mid_query_fails_the_client_not_the_proxy() {
    bounded(async {
        let (db, l, a) = start(Some(""), "").await;
        let mut c = app_conn(a).await;
        let slow = tokio::spawn(async move {
            let started = Instant::now();
            let r: mysql_async::Result<Option<i64>> = c.query_first("SELECT SLEEP(20)").await;
            (r, started.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        drop(db); // kills mariadbd mid-query
        let (r, took) = slow.await.unwrap();
        assert!(r.is_err(), "the query cannot succeed: {r:?}");
        assert!(
            took < Duration::from_secs(10),
            "the client heard at once: {took:?}"
        );
        // The proxy is up, counted the query, and saw nothing malformed.
        assert_eq!(l.stat(&m("query.select")).await, 1);
        assert_eq!(l.stat(&m("decoder_errors")).await, 0);
        assert_eq!(l.wait_stat("tcp.mysql_tcp.downstream_cx_total", 1).await, 1);
    })
    .await;
}
