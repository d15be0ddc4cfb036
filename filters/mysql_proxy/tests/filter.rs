//! The network filter on hand-built exchanges: metadata, stats, holding a split
//! command back, the denied-query answer, faults, and bytes that are left alone.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::pkt;
use legate_filter_api::MetadataValue;
use legate_filter_api::network::{
    ConnectionInfo, NetworkAction, NetworkFilter, NetworkFilterFactory,
};
use legate_filter_api::random::Percentage;
use legate_filter_api::stats::Store;
use legate_mysql_proxy::config::{ErrorReply, QueryFault};
use legate_mysql_proxy::messages::caps::*;
use legate_mysql_proxy::sql::Operation;
use legate_mysql_proxy::{Config, MySqlProxyFactory, NAMESPACE};

const CAPS: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH;

fn greeting() -> Vec<u8> {
    pkt(
        0,
        &common::greeting("10.11.19-MariaDB", "mysql_native_password", CAPS, false),
    )
}

fn login(db: &str) -> Vec<u8> {
    pkt(
        1,
        &common::login(CAPS, "app", &[7; 20], Some(db), "mysql_native_password"),
    )
}

fn ok(seq: u8) -> Vec<u8> {
    pkt(seq, &common::ok(2))
}

fn query(sql: &str) -> Vec<u8> {
    let mut q = vec![3];
    q.extend_from_slice(sql.as_bytes());
    pkt(0, &q)
}

fn err(seq: u8, code: u16, state: &str, message: &str) -> Vec<u8> {
    pkt(seq, &common::err(code, state, message))
}

struct Conn {
    filter: Box<dyn NetworkFilter>,
    info: ConnectionInfo,
}

impl Conn {
    async fn new(factory: &MySqlProxyFactory) -> Conn {
        let mut info = ConnectionInfo::new(
            "127.0.0.1:5000".parse().unwrap(),
            "127.0.0.1:3306".parse().unwrap(),
            1,
        );
        let mut filter = factory.create();
        assert_eq!(
            filter.on_new_connection(&mut info).await,
            NetworkAction::Continue
        );
        Conn { filter, info }
    }

    /// Client bytes through `on_read`: what flows on, and the action.
    async fn read(&mut self, bytes: &[u8]) -> (Vec<u8>, NetworkAction) {
        let mut data = BytesMut::from(bytes);
        let action = self.filter.on_read(&mut data, false, &mut self.info).await;
        (data.to_vec(), action)
    }

    /// Server bytes through `on_write`; they always flow unchanged.
    async fn write(&mut self, bytes: &[u8]) {
        let mut data = BytesMut::from(bytes);
        let action = self.filter.on_write(&mut data, false, &mut self.info).await;
        assert_eq!(action, NetworkAction::Continue);
        assert_eq!(&data[..], bytes);
    }

    async fn logged_in(factory: &MySqlProxyFactory, db: &str) -> Conn {
        let mut c = Conn::new(factory).await;
        c.write(&greeting()).await;
        let l = login(db);
        assert_eq!(c.read(&l).await, (l, NetworkAction::Continue));
        c.write(&ok(2)).await;
        c
    }

    fn metadata(&self) -> Vec<(String, Vec<String>)> {
        let Some(MetadataValue::Struct(fields)) = self.info.dynamic_metadata.get(NAMESPACE) else {
            return Vec::new();
        };
        fields
            .iter()
            .map(|(k, v)| {
                let MetadataValue::List(ops) = v else {
                    panic!("{k} is not a list: {v:?}")
                };
                let ops = ops
                    .iter()
                    .map(|o| match o {
                        MetadataValue::String(s) => s.clone(),
                        other => panic!("{other:?}"),
                    })
                    .collect();
                (k.clone(), ops)
            })
            .collect()
    }
}

fn factory(config: Config) -> (MySqlProxyFactory, &'static Store) {
    let store: &'static Store = Box::leak(Box::default());
    (MySqlProxyFactory::new(config, store), store)
}

fn config() -> Config {
    Config {
        stat_prefix: "db".into(),
        ..Config::default()
    }
}

fn stat(store: &Store, name: &str) -> i64 {
    store.get(&format!("mysql.db.{name}")).unwrap_or(0)
}

fn entry(k: &str, ops: &[&str]) -> (String, Vec<String>) {
    (k.to_string(), ops.iter().map(|s| s.to_string()).collect())
}

#[tokio::test]
async fn queries_become_metadata_and_stats() {
    let (f, store) = factory(config());
    let mut c = Conn::logged_in(&f, "shop").await;
    assert_eq!(stat(store, "sessions"), 1);
    assert_eq!(stat(store, "login_attempts"), 1);

    let q = query("INSERT INTO payments (amount) SELECT amount FROM crm.refunds");
    assert_eq!(c.read(&q).await, (q, NetworkAction::Continue));
    assert_eq!(
        c.metadata(),
        vec![
            entry("crm.refunds", &["select"]),
            entry("payments", &["insert"]),
            entry("payments.shop", &["insert"]),
            entry("refunds.crm", &["select"]),
        ]
    );
    c.write(&ok(1)).await;
    assert_eq!(stat(store, "queries_parsed"), 1);
    assert_eq!(stat(store, "query.insert"), 1);

    // USE switches the database once the server agrees; the metadata of the next
    // read replaces the last one's.
    c.read(&query("USE crm")).await;
    c.write(&ok(1)).await;
    c.read(&query("SELECT * FROM accounts")).await;
    assert_eq!(
        c.metadata(),
        vec![
            entry("accounts", &["select"]),
            entry("accounts.crm", &["select"])
        ]
    );
    assert_eq!(stat(store, "query.select"), 1);
    assert_eq!(stat(store, "query.other"), 1);

    // A query the parser refuses still flows, counted.
    let bad = query("SELEKT nonsense FROM");
    assert_eq!(c.read(&bad).await, (bad, NetworkAction::Continue));
    assert_eq!(stat(store, "queries_parse_error"), 1);
    assert!(c.metadata().is_empty());
}

#[tokio::test]
async fn a_failed_login_is_counted() {
    let (f, store) = factory(config());
    let mut c = Conn::new(&f).await;
    c.write(&greeting()).await;
    c.read(&login("shop")).await;
    c.write(&err(2, 1045, "28000", "Access denied for user 'app'"))
        .await;
    assert_eq!(stat(store, "login_failures"), 1);
}

#[tokio::test]
async fn ssl_and_garbage_stop_sniffing_but_bytes_flow() {
    let (f, store) = factory(config());
    let mut c = Conn::new(&f).await;
    c.write(&greeting()).await;
    let mut ssl = Vec::new();
    ssl.extend_from_slice(&(CAPS | CLIENT_SSL).to_le_bytes());
    ssl.extend_from_slice(&(16u32 << 20).to_le_bytes());
    ssl.push(0x2d);
    ssl.extend_from_slice(&[0; 23]);
    let ssl = pkt(1, &ssl);
    assert_eq!(c.read(&ssl).await, (ssl, NetworkAction::Continue));
    let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not mysql".to_vec();
    assert_eq!(c.read(&tls).await, (tls.clone(), NetworkAction::Continue));
    c.write(&tls).await;
    assert_eq!(stat(store, "upgraded_to_ssl"), 1);
    assert_eq!(stat(store, "decoder_errors"), 0);

    let mut c = Conn::new(&f).await;
    let junk = b"\x05\x00\x00\x00hello".to_vec();
    c.write(&junk).await;
    assert_eq!(stat(store, "decoder_errors"), 1);
    let more = b"anything at all".to_vec();
    assert_eq!(c.read(&more).await, (more, NetworkAction::Continue));
}

fn denying() -> Config {
    Config {
        denied_query_error: Some(ErrorReply {
            code: 1142,
            sql_state: "42000".into(),
            message: "INSERT denied".into(),
        }),
        ..config()
    }
}

#[tokio::test]
async fn a_denied_query_can_be_answered_with_an_err_packet() {
    let (f, store) = factory(denying());
    let mut c = Conn::logged_in(&f, "shop").await;
    let q = query("INSERT INTO payments VALUES (1)");
    assert_eq!(c.read(&q).await, (q, NetworkAction::Continue));
    let answer = c.info.deny_response.clone().expect("an answer on offer");
    assert_eq!(&answer[..], &err(1, 1142, "42000", "INSERT denied")[..]);
    // A later filter denied it: the chain takes the answer and writes it.
    c.info.deny_response = None;
    c.write(&answer).await;
    assert_eq!(stat(store, "queries_denied"), 1);

    // Allowed: the server answers, and the offer is withdrawn.
    c.read(&query("SELECT 1")).await;
    assert!(c.info.deny_response.is_some());
    c.write(&ok(1)).await;
    assert!(c.info.deny_response.is_none());
    assert_eq!(stat(store, "queries_denied"), 1);
}

#[tokio::test]
async fn a_split_command_is_held_until_whole_only_when_it_may_be_answered() {
    let q = query("SELECT * FROM payments WHERE id = 1");
    let (head, tail) = q.split_at(10);

    let (f, _) = factory(denying());
    let mut c = Conn::logged_in(&f, "shop").await;
    assert_eq!(c.read(head).await, (Vec::new(), NetworkAction::Continue));
    assert_eq!(c.read(tail).await, (q.clone(), NetworkAction::Continue));
    assert!(c.info.deny_response.is_some());

    // The client's end lets what is held go.
    assert_eq!(c.read(head).await, (Vec::new(), NetworkAction::Continue));
    let mut end = BytesMut::new();
    c.filter.on_read(&mut end, true, &mut c.info).await;
    assert_eq!(&end[..], head);
    let mut c = Conn::logged_in(&f, "shop").await;

    // Two commands in one read cannot be answered alone: no offer.
    let mut two = pkt(0, &[0x19, 1, 0, 0, 0]);
    two.extend_from_slice(&q);
    assert_eq!(c.read(&two).await, (two.clone(), NetworkAction::Continue));
    assert!(c.info.deny_response.is_none());

    // Without anything to answer, bytes flow as they come.
    let (f, _) = factory(config());
    let mut c = Conn::logged_in(&f, "shop").await;
    assert_eq!(c.read(head).await, (head.to_vec(), NetworkAction::Continue));
    assert_eq!(c.read(tail).await, (tail.to_vec(), NetworkAction::Continue));
}

#[tokio::test]
async fn an_abort_fault_answers_without_forwarding() {
    let mut cfg = config();
    cfg.faults = vec![QueryFault {
        tables: vec!["payments.shop".into()],
        operations: vec![Operation::Insert],
        delay: None,
        abort: Some((
            ErrorReply {
                code: 1213,
                sql_state: "40001".into(),
                message: "Deadlock (injected)".into(),
            },
            Percentage::ALWAYS,
        )),
    }];
    let (f, store) = factory(cfg);
    let mut c = Conn::logged_in(&f, "shop").await;

    // A select on the table, and an insert elsewhere, pass.
    let sel = query("SELECT * FROM payments");
    assert_eq!(c.read(&sel).await, (sel, NetworkAction::Continue));
    c.write(&ok(1)).await;
    let other = query("INSERT INTO orders VALUES (1)");
    assert_eq!(c.read(&other).await, (other, NetworkAction::Continue));
    c.write(&ok(1)).await;

    let ins = query("insert into shop.payments values (2)");
    let (flowed, action) = c.read(&ins).await;
    assert!(flowed.is_empty());
    assert_eq!(action, NetworkAction::Close);
    let answer = c.info.deny_response.take().expect("the fault's answer");
    assert_eq!(
        &answer[..],
        &err(1, 1213, "40001", "Deadlock (injected)")[..]
    );
    c.write(&answer).await;
    assert_eq!(stat(store, "aborts_injected"), 1);
    assert_eq!(stat(store, "queries_denied"), 0);

    // The session goes on in step.
    let next = query("SELECT 1");
    assert_eq!(c.read(&next).await, (next, NetworkAction::Continue));
    assert_eq!(stat(store, "protocol_errors"), 0);
}

#[tokio::test]
async fn a_delay_fault_holds_the_query() {
    let mut cfg = config();
    cfg.faults = vec![QueryFault {
        operations: vec![Operation::Update],
        delay: Some((Duration::from_millis(50), Percentage::ALWAYS)),
        ..QueryFault::default()
    }];
    let (f, store) = factory(cfg);
    let mut c = Conn::logged_in(&f, "shop").await;
    let start = std::time::Instant::now();
    let q = query("UPDATE payments SET amount = 0");
    assert_eq!(c.read(&q).await, (q, NetworkAction::Continue));
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert_eq!(stat(store, "delays_injected"), 1);
}

#[tokio::test]
async fn queries_alike_but_for_literals_share_an_analysis_per_database() {
    let (f, store) = factory(config());
    let mut shop = Conn::logged_in(&f, "shop").await;
    let mut crm = Conn::logged_in(&f, "crm").await;
    shop.read(&query("DELETE FROM t WHERE id = 1")).await;
    assert_eq!(
        shop.metadata(),
        vec![entry("t", &["delete"]), entry("t.shop", &["delete"])]
    );
    shop.write(&ok(1)).await;
    shop.read(&query("DELETE FROM t WHERE id = 22")).await;
    assert_eq!(
        shop.metadata(),
        vec![entry("t", &["delete"]), entry("t.shop", &["delete"])]
    );
    crm.read(&query("DELETE FROM t WHERE id = 3")).await;
    assert_eq!(
        crm.metadata(),
        vec![entry("t", &["delete"]), entry("t.crm", &["delete"])]
    );
    // A cached parse error still counts as one.
    crm.write(&ok(1)).await;
    crm.read(&query("DELETE FROM WHERE id = 3")).await;
    crm.write(&ok(1)).await;
    crm.read(&query("DELETE FROM WHERE id = 4")).await;
    assert_eq!(stat(store, "queries_parsed"), 3);
    assert_eq!(stat(store, "queries_parse_error"), 2);
    assert_eq!(stat(store, "query.delete"), 3);
}

#[tokio::test]
async fn unparsed_queries_can_be_refused() {
    // Answered, with the denied-query error, when there is one.
    let (f, store) = factory(Config {
        deny_unparsed: true,
        ..denying()
    });
    let mut c = Conn::logged_in(&f, "shop").await;
    let (flowed, action) = c
        .read(&query("SELECT * FROM t LIMIT 1 ROWS EXAMINED 10"))
        .await;
    assert!(flowed.is_empty());
    assert_eq!(action, NetworkAction::Close);
    let answer = c.info.deny_response.take().expect("an answer");
    assert_eq!(&answer[..], &err(1, 1142, "42000", "INSERT denied")[..]);
    c.write(&answer).await;
    assert_eq!(stat(store, "queries_denied"), 1);
    assert_eq!(stat(store, "queries_parse_error"), 1);
    // What parses still flows.
    let q = query("SELECT * FROM t LIMIT 1");
    assert_eq!(c.read(&q).await, (q, NetworkAction::Continue));

    // Without one, the connection closes.
    let (f, _) = factory(Config {
        deny_unparsed: true,
        ..config()
    });
    let mut c = Conn::logged_in(&f, "shop").await;
    let (flowed, action) = c.read(&query("UPDATE a, b SET a.x = b.y")).await;
    assert!(flowed.is_empty());
    assert_eq!(action, NetworkAction::Close);
    assert!(c.info.deny_response.is_none());
}

#[tokio::test]
async fn a_command_too_long_to_hold_flows_in_order_and_is_not_answered() {
    let (f, _) = factory(denying());
    let mut c = Conn::logged_in(&f, "shop").await;
    let mut q = String::from("INSERT INTO payments VALUES ('");
    q.push_str(&"x".repeat(3 << 20));
    q.push_str("')");
    let bytes = query(&q);
    let (mut flowed, mut sent) = (Vec::new(), 0);
    for chunk in bytes.chunks(64 * 1024) {
        let (out, action) = c.read(chunk).await;
        assert_eq!(action, NetworkAction::Continue);
        flowed.extend_from_slice(&out);
        sent += chunk.len();
        // At most the hold limit is kept back.
        assert!(
            sent - flowed.len() <= 1 << 20,
            "{} held",
            sent - flowed.len()
        );
    }
    assert_eq!(flowed, bytes, "every byte, in order");
    assert!(
        c.info.deny_response.is_none(),
        "part of it flowed: no answer"
    );
    // The next command can be answered again.
    c.write(&ok(1)).await;
    let q = query("SELECT 1");
    assert_eq!(c.read(&q).await, (q, NetworkAction::Continue));
    assert!(c.info.deny_response.is_some());
}
