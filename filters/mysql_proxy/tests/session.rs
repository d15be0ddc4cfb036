//! The session decoder on hand-built packets: MySQL 8 and MariaDB handshakes,
//! auth switch, queries with result sets, prepared statements, errors.

mod common;

use bytes::Bytes;
use common::*;
use legate_mysql_proxy::messages::caps::*;
use legate_mysql_proxy::packet::{self, Decoder, MAX_PACKET_PAYLOAD};
use legate_mysql_proxy::{Command, Direction, Event, Limits, ResultSetEnd, Session};

const MYSQL8_CAPS: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_DEPRECATE_EOF
    | CLIENT_SSL;

const OLD_CAPS: u32 =
    CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH;

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e {
            Event::Greeting(_) => "greeting",
            Event::SslRequest { .. } => "ssl",
            Event::Login(_) => "login",
            Event::AuthSwitchRequest(_) => "auth_switch",
            Event::AuthSwitchResponse { .. } => "auth_switch_response",
            Event::AuthMoreData { .. } => "auth_more",
            Event::AuthClientData { .. } => "auth_client_data",
            Event::LoginOk(_) => "login_ok",
            Event::LoginFailed(_) => "login_failed",
            Event::Command(_) => "command",
            Event::Ok(_) => "ok",
            Event::Err(_) => "err",
            Event::StmtPrepareOk { .. } => "prepare_ok",
            Event::ResultSet { .. } => "result_set",
            Event::ResultSetEnd { .. } => "result_set_end",
            Event::LocalInfileRequest => "local_infile",
            Event::ProtocolError { .. } => "protocol_error",
            Event::DecoderError { .. } => "decoder_error",
        })
        .collect()
}

/// A MySQL 8 login with caching_sha2_password and fast auth, then a query with a
/// result set of 2 columns and 3 rows (CLIENT_DEPRECATE_EOF: no EOF, OK at the end).
#[test]
fn mysql8_caching_sha2_login_and_query() {
    let mut s = Session::default();
    let ev = s.on_server(&pkt(
        0,
        &greeting("8.0.36", "caching_sha2_password", MYSQL8_CAPS, false),
    ));
    let Event::Greeting(g) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(g.server_version, "8.0.36");
    assert_eq!(g.connection_id, 42);
    assert_eq!(g.auth_plugin_name, "caching_sha2_password");
    assert_eq!(g.auth_plugin_data, "abcdefghijklmnopqrst");
    assert_eq!(g.capabilities, MYSQL8_CAPS);
    assert_eq!(g.mariadb_capabilities, None);

    let client_caps = MYSQL8_CAPS & !CLIENT_SSL;
    let ev = s.on_client(&pkt(
        1,
        &login(
            client_caps,
            "app",
            &[7; 32],
            Some("shop"),
            "caching_sha2_password",
        ),
    ));
    let Event::Login(l) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(l.user, "app");
    assert_eq!(l.auth_response.len(), 32);
    assert_eq!(l.database.as_deref(), Some(&b"shop"[..]));
    assert_eq!(
        l.auth_plugin_name.as_deref(),
        Some(&b"caching_sha2_password"[..])
    );
    assert_eq!(l.max_packet, 16 << 20);

    // Fast auth success (0x01 0x03), then OK.
    let mut bytes = pkt(2, &[0x01, 0x03]);
    bytes.extend(pkt(3, &ok(2)));
    let ev = s.on_server(&bytes);
    assert_eq!(kinds(&ev), ["auth_more", "login_ok"]);
    assert_eq!(
        ev[0],
        Event::AuthMoreData {
            data: Bytes::from_static(&[3])
        }
    );

    let ev = s.on_client(&pkt(0, b"\x03SELECT id, name FROM t"));
    assert_eq!(
        ev,
        [Event::Command(Command::Query {
            text: Bytes::from_static(b"SELECT id, name FROM t"),
            truncated: false
        })]
    );
    let mut resp = pkt(1, &[2]);
    resp.extend(pkt(2, &column_def("id")));
    resp.extend(pkt(3, &column_def("name")));
    resp.extend(pkt(4, &row(&["1", "a"])));
    resp.extend(pkt(5, &row(&["2", "b"])));
    resp.extend(pkt(6, &row(&["3", "c"])));
    let mut end = ok(2);
    end[0] = 0xFE;
    resp.extend(pkt(7, &end));
    let ev = s.on_server(&resp);
    assert_eq!(kinds(&ev), ["result_set", "result_set_end"]);
    assert_eq!(ev[0], Event::ResultSet { columns: 2 });
    let Event::ResultSetEnd {
        rows: 3,
        end: ResultSetEnd::Ok(o),
    } = &ev[1]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(o.status, 2);

    // Ping, then quit.
    assert_eq!(kinds(&s.on_client(&pkt(0, &[0x0e]))), ["command"]);
    assert_eq!(kinds(&s.on_server(&pkt(1, &ok(2)))), ["ok"]);
    assert_eq!(
        s.on_client(&pkt(0, &[0x01])),
        [Event::Command(Command::Quit)]
    );
    assert!(!s.is_stopped());
}

/// MariaDB with mysql_native_password and EOF packets: a 2x3 result set.
#[test]
fn mariadb_native_password_with_eof() {
    let mut s = Session::default();
    let caps = (OLD_CAPS | CLIENT_CONNECT_WITH_DB) & !CLIENT_LONG_PASSWORD;
    let ev = s.on_server(&pkt(
        0,
        &greeting(
            "5.5.5-10.11.6-MariaDB-0+deb12u1",
            "mysql_native_password",
            caps,
            true,
        ),
    ));
    let Event::Greeting(g) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(g.mariadb_capabilities, Some(0x1d));
    let ev = s.on_client(&pkt(
        1,
        &login(
            caps,
            "root",
            &[1; 20],
            Some("test"),
            "mysql_native_password",
        ),
    ));
    assert_eq!(kinds(&ev), ["login"]);
    assert_eq!(kinds(&s.on_server(&pkt(2, &ok(2)))), ["login_ok"]);

    assert_eq!(kinds(&s.on_client(&pkt(0, b"\x02shop"))), ["command"]);
    assert_eq!(kinds(&s.on_server(&pkt(1, &ok(2)))), ["ok"]);

    s.on_client(&pkt(0, b"\x03SELECT a, b FROM t"));
    let mut resp = pkt(1, &[2]);
    resp.extend(pkt(2, &column_def("a")));
    resp.extend(pkt(3, &column_def("b")));
    resp.extend(pkt(4, &eof(2)));
    for (i, r) in [["1", "x"], ["2", "y"], ["3", "z"]].iter().enumerate() {
        resp.extend(pkt(5 + i as u8, &row(r)));
    }
    resp.extend(pkt(8, &eof(2)));
    let ev = s.on_server(&resp);
    assert_eq!(
        ev,
        [
            Event::ResultSet { columns: 2 },
            Event::ResultSetEnd {
                rows: 3,
                end: ResultSetEnd::Eof(legate_mysql_proxy::EofPacket {
                    warnings: 0,
                    status: 2
                })
            }
        ]
    );
}

/// The server asks for mysql_native_password; the client answers; OK.
#[test]
fn auth_switch() {
    let mut s = Session::default();
    s.on_server(&pkt(
        0,
        &greeting("8.0.36", "caching_sha2_password", MYSQL8_CAPS, false),
    ));
    s.on_client(&pkt(
        1,
        &login(
            MYSQL8_CAPS & !CLIENT_SSL,
            "old",
            &[9; 32],
            None,
            "caching_sha2_password",
        ),
    ));
    let mut req = vec![0xFE];
    req.extend_from_slice(b"mysql_native_password\0");
    req.extend_from_slice(b"01234567890123456789\0");
    let ev = s.on_server(&pkt(2, &req));
    let Event::AuthSwitchRequest(r) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(r.plugin_name, "mysql_native_password");
    assert_eq!(r.plugin_data, "01234567890123456789");
    assert_eq!(
        s.on_client(&pkt(3, &[5; 20])),
        [Event::AuthSwitchResponse { len: 20 }]
    );
    assert_eq!(kinds(&s.on_server(&pkt(4, &ok(2)))), ["login_ok"]);
    assert_eq!(kinds(&s.on_client(&pkt(0, b"\x03SELECT 1"))), ["command"]);
}

/// caching_sha2_password full auth: 0x01 0x04, the client's password, then OK.
#[test]
fn caching_sha2_full_auth() {
    let mut s = Session::default();
    s.on_server(&pkt(
        0,
        &greeting("8.0.36", "caching_sha2_password", MYSQL8_CAPS, false),
    ));
    s.on_client(&pkt(
        1,
        &login(
            MYSQL8_CAPS & !CLIENT_SSL,
            "app",
            &[7; 32],
            None,
            "caching_sha2_password",
        ),
    ));
    assert_eq!(kinds(&s.on_server(&pkt(2, &[0x01, 0x04]))), ["auth_more"]);
    assert_eq!(
        s.on_client(&pkt(3, &[2])),
        [Event::AuthClientData { len: 1 }]
    );
    let mut key = vec![0x01];
    key.extend_from_slice(b"-----BEGIN PUBLIC KEY-----");
    assert_eq!(kinds(&s.on_server(&pkt(4, &key))), ["auth_more"]);
    assert_eq!(
        s.on_client(&pkt(5, &[3; 256])),
        [Event::AuthClientData { len: 256 }]
    );
    assert_eq!(kinds(&s.on_server(&pkt(6, &ok(2)))), ["login_ok"]);
}

/// A wrong password: ERR 1045 on login stops decoding.
#[test]
fn login_failure() {
    let mut s = Session::default();
    s.on_server(&pkt(
        0,
        &greeting("8.0.36", "mysql_native_password", OLD_CAPS, false),
    ));
    s.on_client(&pkt(
        1,
        &login(OLD_CAPS, "app", &[1; 20], None, "mysql_native_password"),
    ));
    let ev = s.on_server(&pkt(2, &err(1045, "28000", "Access denied for user 'app'")));
    let Event::LoginFailed(e) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(e.code, 1045);
    assert_eq!(e.sql_state, "28000");
    assert_eq!(e.message, "Access denied for user 'app'");
    assert!(s.is_stopped());
    assert!(s.on_client(b"anything").is_empty());
}

/// An SSL request is reported and decoding stops; TLS bytes are ignored.
#[test]
fn ssl_request() {
    let mut s = Session::default();
    s.on_server(&pkt(
        0,
        &greeting("8.0.36", "caching_sha2_password", MYSQL8_CAPS, false),
    ));
    let mut req = Vec::new();
    req.extend_from_slice(&MYSQL8_CAPS.to_le_bytes());
    req.extend_from_slice(&(16u32 << 20).to_le_bytes());
    req.push(0x2d);
    req.extend_from_slice(&[0; 23]);
    let ev = s.on_client(&pkt(1, &req));
    assert_eq!(
        ev,
        [Event::SslRequest {
            capabilities: MYSQL8_CAPS
        }]
    );
    assert!(s.is_stopped());
    assert!(s.on_client(&[0x16, 0x03, 0x01, 0x02, 0x00]).is_empty());
    assert!(s.on_server(&[0x16, 0x03, 0x03]).is_empty());
}

fn logged_in(caps: u32) -> Session {
    let mut s = Session::default();
    s.on_server(&pkt(
        0,
        &greeting("8.0.36", "mysql_native_password", caps, false),
    ));
    s.on_client(&pkt(
        1,
        &login(caps, "app", &[1; 20], None, "mysql_native_password"),
    ));
    let ev = s.on_server(&pkt(2, &ok(2)));
    assert_eq!(kinds(&ev), ["login_ok"]);
    s
}

/// Prepare (1 param, 2 columns), execute with a binary result set, close, reset.
#[test]
fn prepared_statements() {
    let mut s = logged_in(OLD_CAPS);
    let ev = s.on_client(&pkt(0, b"\x16SELECT a, b FROM t WHERE id = ?"));
    assert_eq!(
        ev,
        [Event::Command(Command::StmtPrepare {
            text: Bytes::from_static(b"SELECT a, b FROM t WHERE id = ?"),
            truncated: false
        })]
    );
    let mut resp = pkt(1, &[0, 7, 0, 0, 0, 2, 0, 1, 0, 0, 0, 0]);
    resp.extend(pkt(2, &column_def("?")));
    resp.extend(pkt(3, &eof(2)));
    resp.extend(pkt(4, &column_def("a")));
    resp.extend(pkt(5, &column_def("b")));
    resp.extend(pkt(6, &eof(2)));
    let ev = s.on_server(&resp);
    assert_eq!(
        ev,
        [Event::StmtPrepareOk {
            statement_id: 7,
            columns: 2,
            params: 1,
            warnings: 0
        }]
    );

    let mut exec = vec![0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 0, 1, 0, 0, 0];
    exec.truncate(18);
    let ev = s.on_client(&pkt(0, &exec));
    assert_eq!(
        ev,
        [Event::Command(Command::StmtExecute {
            statement_id: 7,
            flags: 0
        })]
    );
    let mut resp = pkt(1, &[2]);
    resp.extend(pkt(2, &column_def("a")));
    resp.extend(pkt(3, &column_def("b")));
    resp.extend(pkt(4, &eof(2)));
    resp.extend(pkt(5, &[0, 0, 1, b'x', 1, b'y']));
    resp.extend(pkt(6, &eof(2)));
    let ev = s.on_server(&resp);
    assert_eq!(kinds(&ev), ["result_set", "result_set_end"]);
    assert!(matches!(ev[1], Event::ResultSetEnd { rows: 1, .. }));

    assert_eq!(
        s.on_client(&pkt(0, &[0x19, 7, 0, 0, 0])),
        [Event::Command(Command::StmtClose { statement_id: 7 })]
    );
    // No response to COM_STMT_CLOSE: the next command follows.
    assert_eq!(
        s.on_client(&pkt(0, &[0x1a, 7, 0, 0, 0])),
        [Event::Command(Command::StmtReset { statement_id: 7 })]
    );
    assert_eq!(kinds(&s.on_server(&pkt(1, &ok(2)))), ["ok"]);
    assert_eq!(
        s.on_client(&pkt(0, &[0x18, 7, 0, 0, 0, 1, 0, b'z'])),
        [Event::Command(Command::StmtSendLongData {
            statement_id: 7,
            param: 1
        })]
    );
    assert_eq!(
        s.on_client(&pkt(0, &[0x1c, 7, 0, 0, 0, 10, 0, 0, 0])),
        [Event::Command(Command::StmtFetch {
            statement_id: 7,
            rows: 10
        })]
    );
    let mut rows = pkt(1, &[0, 0, 1, b'x', 1, b'y']);
    rows.extend(pkt(2, &eof(2)));
    assert!(matches!(
        s.on_server(&rows)[..],
        [Event::ResultSetEnd { rows: 1, .. }]
    ));
    assert_eq!(
        s.on_client(&pkt(0, &[0x11, 1])),
        [Event::Command(Command::Other(0x11))]
    );
}

/// An ERR to a query, an ERR in the middle of rows, multi-results.
#[test]
fn errors_and_multi_results() {
    let mut s = logged_in(OLD_CAPS);
    s.on_client(&pkt(0, b"\x03SELECT * FROM nope"));
    let ev = s.on_server(&pkt(
        1,
        &err(1146, "42S02", "Table 'shop.nope' doesn't exist"),
    ));
    let Event::Err(e) = &ev[0] else {
        panic!("{ev:?}")
    };
    assert_eq!(e.code, 1146);

    s.on_client(&pkt(0, b"\x03SELECT 1; SELECT 2"));
    let mut resp = pkt(1, &[1]);
    resp.extend(pkt(2, &column_def("1")));
    resp.extend(pkt(3, &eof(0x0a)));
    resp.extend(pkt(4, &row(&["1"])));
    resp.extend(pkt(5, &eof(0x0a)));
    resp.extend(pkt(6, &[1]));
    resp.extend(pkt(7, &column_def("2")));
    resp.extend(pkt(8, &eof(2)));
    resp.extend(pkt(9, &row(&["2"])));
    resp.extend(pkt(
        10,
        &err(1317, "70100", "Query execution was interrupted"),
    ));
    let ev = s.on_server(&resp);
    assert_eq!(
        kinds(&ev),
        [
            "result_set",
            "result_set_end",
            "result_set",
            "result_set_end"
        ]
    );
    assert!(
        matches!(&ev[3], Event::ResultSetEnd { rows: 1, end: ResultSetEnd::Err(e) } if e.code == 1317)
    );
    assert_eq!(kinds(&s.on_client(&pkt(0, b"\x03DO 1"))), ["command"]);
}

/// A packet out of sequence is a protocol error and is skipped.
#[test]
fn out_of_sequence_is_protocol_error() {
    let mut s = logged_in(OLD_CAPS);
    s.on_client(&pkt(0, b"\x03SELECT 1"));
    let ev = s.on_server(&pkt(5, &ok(2)));
    assert_eq!(
        ev,
        [Event::ProtocolError {
            direction: Direction::Server,
            expected: 1,
            got: 5
        }]
    );
    assert_eq!(kinds(&s.on_server(&pkt(1, &ok(2)))), ["ok"]);
}

/// Malformed packets are decoder errors; decoding stops; more bytes are ignored.
#[test]
fn malformed_is_decoder_error() {
    let mut s = Session::default();
    let ev = s.on_server(&pkt(0, &[9, b'x']));
    assert_eq!(kinds(&ev), ["decoder_error"]);
    assert!(s.is_stopped());
    assert!(s.on_server(&pkt(1, &[1, 2, 3])).is_empty());

    let mut s = Session::default();
    s.on_server(&pkt(0, &greeting("8.0.36", "x", OLD_CAPS, false)));
    // A login without the NUL after the user name.
    let ev = s.on_client(&pkt(1, &[0x00, 0x02, 0, 0, 0, 0, 0, 1, 0x21]));
    assert_eq!(kinds(&ev), ["decoder_error"]);
}

/// LOAD DATA LOCAL INFILE: the file's packets, an empty packet, then OK.
#[test]
fn local_infile() {
    let mut s = logged_in(OLD_CAPS);
    s.on_client(&pkt(0, b"\x03LOAD DATA LOCAL INFILE 'f' INTO TABLE t"));
    assert_eq!(kinds(&s.on_server(&pkt(1, b"\xfbf"))), ["local_infile"]);
    assert!(s.on_client(&pkt(2, b"1,2\n3,4\n")).is_empty());
    assert!(s.on_client(&pkt(3, b"")).is_empty());
    assert_eq!(kinds(&s.on_server(&pkt(4, &ok(2)))), ["ok"]);
}

/// A query longer than 16 MiB spans packets and is joined; one over the retain
/// limit is reported truncated.
#[test]
fn multi_packet_query() {
    let mut text = vec![0x03];
    text.extend(std::iter::repeat_n(b'a', MAX_PACKET_PAYLOAD + 10));
    let framed = pkt(0, &text);
    let mut d = Decoder::new();
    let ps = d.decode_all(&framed).unwrap();
    assert_eq!(ps.len(), 1);
    assert_eq!(ps[0].len, text.len());
    assert_eq!((ps[0].seq, ps[0].last_seq), (0, 1));

    let mut s = logged_in(OLD_CAPS);
    let ev = s.on_client(&framed);
    let [
        Event::Command(Command::Query {
            text: t,
            truncated: false,
        }),
    ] = &ev[..]
    else {
        panic!()
    };
    assert_eq!(t.len(), MAX_PACKET_PAYLOAD + 10);
    // Sequence ids go on from the last fragment.
    assert_eq!(kinds(&s.on_server(&pkt(2, &ok(2)))), ["ok"]);

    let mut s = Session::new(Limits { max_retained: 100 });
    s.on_server(&pkt(0, &greeting("8.0.36", "x", OLD_CAPS, false)));
    s.on_client(&pkt(1, &login(OLD_CAPS, "app", &[1; 20], None, "x")));
    s.on_server(&pkt(2, &ok(2)));
    let ev = s.on_client(&framed);
    let [
        Event::Command(Command::Query {
            text: t,
            truncated: true,
        }),
    ] = &ev[..]
    else {
        panic!("{ev:?}")
    };
    assert_eq!(t.len(), 99);
}

/// A payload of exactly 0xFFFFFF bytes ends with an empty packet.
#[test]
fn exact_multiple_ends_with_empty_packet() {
    let payload = vec![7u8; MAX_PACKET_PAYLOAD];
    let framed = packet::encode(&payload, 3);
    assert_eq!(framed.len(), MAX_PACKET_PAYLOAD + 8);
    let ps = Decoder::new().decode_all(&framed).unwrap();
    assert_eq!(ps.len(), 1);
    assert_eq!(
        (ps[0].seq, ps[0].last_seq, ps[0].len),
        (3, 4, MAX_PACKET_PAYLOAD)
    );
}

/// A multi-packet query cut at odd points, including inside the continuation
/// header, decodes as when fed whole.
#[test]
fn multi_packet_query_chunked() {
    let mut text = vec![0x03];
    text.extend(std::iter::repeat_n(b'q', MAX_PACKET_PAYLOAD + 3));
    let framed = pkt(0, &text);
    let mut whole = logged_in(OLD_CAPS);
    let expected = whole.on_client(&framed);
    for cut in [999_983usize, MAX_PACKET_PAYLOAD + 2, MAX_PACKET_PAYLOAD + 6] {
        let mut s = logged_in(OLD_CAPS);
        let mut ev = s.on_client(&framed[..cut]);
        assert!(ev.is_empty());
        for chunk in framed[cut..].chunks(1 << 20) {
            ev.extend(s.on_client(chunk));
        }
        assert_eq!(ev, expected, "cut at {cut}");
    }
}

/// A continuation fragment out of sequence is a decoder error.
#[test]
fn continuation_out_of_sequence() {
    let mut framed = pkt(0, &vec![0x03; MAX_PACKET_PAYLOAD + 1]);
    framed[MAX_PACKET_PAYLOAD + 4 + 3] = 9;
    let mut s = logged_in(OLD_CAPS);
    let ev = s.on_client(&framed);
    assert_eq!(kinds(&ev), ["decoder_error"]);
    assert!(s.is_stopped());
}

#[test]
fn auth_switch_data_keeps_a_zero_byte_of_its_own() {
    use legate_mysql_proxy::AuthSwitchRequest;
    // A scramble with its NUL terminator: the terminator goes.
    let mut p = b"\xFEmysql_native_password\0".to_vec();
    p.extend_from_slice(&[7; 20]);
    p.push(0);
    let sw = AuthSwitchRequest::parse(&Bytes::from(p)).unwrap();
    assert_eq!(&sw.plugin_data[..], &[7; 20][..]);
    // ed25519's raw 32-byte nonce that happens to end in 0 stays whole.
    let mut p = b"\xFEclient_ed25519\0".to_vec();
    let mut nonce = [9u8; 32];
    nonce[31] = 0;
    p.extend_from_slice(&nonce);
    let sw = AuthSwitchRequest::parse(&Bytes::from(p)).unwrap();
    assert_eq!(&sw.plugin_data[..], &nonce[..]);
}
