//! Byte-exact handshake exchanges replayed through the session decoder:
//!
//! - MySQL 8.0 exchanges written out by hand from the Client/Server Protocol
//!   reference, one field a line (caching_sha2_password fast and full
//!   authentication, an auth switch, a failed login, an SSL request);
//! - MariaDB 10.11 exchanges recorded from a real server and client
//!   (`tests/captures/*.txt`, see the README there).
//!
//! Every exchange is also replayed with each message split at every byte boundary,
//! and one byte at a time: the events must not change.

use bytes::Bytes;
use legate_mysql_proxy::messages::mariadb_caps::{
    MARIADB_CLIENT_CACHE_METADATA, MARIADB_CLIENT_PROGRESS,
};
use legate_mysql_proxy::{
    Command, Direction, EofPacket, ErrPacket, Event, OkPacket, ResultSetEnd, Session,
};

// ------------------------------------------------------------------ harness

/// One read: who sent it, and the bytes.
type Step = (Direction, Vec<u8>);

use Direction::{Client as C, Server as S};

/// A packet as written on the wire: the hand-written 4-byte header (3-byte
/// little-endian payload length, sequence id) and the payload's fields. Checks that
/// the header's length is the payload's, so a miscounted field fails loudly here.
fn wire(header: [u8; 4], fields: &[&[u8]]) -> Vec<u8> {
    let payload = fields.concat();
    let len = usize::from(header[0]) | usize::from(header[1]) << 8 | usize::from(header[2]) << 16;
    assert_eq!(
        len,
        payload.len(),
        "header {header:02x?} says {len} bytes, the fields are {}",
        payload.len()
    );
    [&header[..], &payload].concat()
}

fn feed(session: &mut Session, dir: Direction, bytes: &[u8]) -> Vec<Event> {
    match dir {
        C => session.on_client(bytes),
        S => session.on_server(bytes),
    }
}

/// Replays the steps whole; returns the events and the session.
fn replay(steps: &[Step]) -> (Vec<Event>, Session) {
    let mut session = Session::default();
    let mut events = Vec::new();
    for (dir, bytes) in steps {
        events.extend(feed(&mut session, *dir, bytes));
    }
    (events, session)
}

/// Replays the steps with each cut into pieces by `cut`.
fn replay_cut(steps: &[Step], cut: impl Fn(&[u8]) -> Vec<&[u8]>) -> Vec<Event> {
    let mut session = Session::default();
    let mut events = Vec::new();
    for (dir, bytes) in steps {
        for piece in cut(bytes) {
            events.extend(feed(&mut session, *dir, piece));
        }
    }
    events
}

/// Replays whole, then split at every byte boundary `k` (each step cut in two at
/// `k`), then one byte at a time, and checks the events never change. Returns them.
fn replay_all_splits(steps: &[Step]) -> (Vec<Event>, Session) {
    let (whole, session) = replay(steps);
    let longest = steps.iter().map(|(_, b)| b.len()).max().unwrap_or(0);
    for k in 1..longest {
        let split = replay_cut(steps, |b| {
            if k < b.len() {
                vec![&b[..k], &b[k..]]
            } else {
                vec![b]
            }
        });
        assert_eq!(
            split, whole,
            "events differ with every step split at byte {k}"
        );
    }
    let bytewise = replay_cut(steps, |b| b.chunks(1).collect());
    assert_eq!(bytewise, whole, "events differ when fed one byte at a time");
    // And each direction's consecutive steps joined into one read.
    let mut joined: Vec<Step> = Vec::new();
    for (dir, bytes) in steps {
        match joined.last_mut() {
            Some((d, b)) if d == dir => b.extend_from_slice(bytes),
            _ => joined.push((*dir, bytes.clone())),
        }
    }
    assert_eq!(replay(&joined).0, whole, "events differ with reads joined");
    (whole, session)
}

fn no_errors(events: &[Event]) {
    for e in events {
        assert!(
            !matches!(
                e,
                Event::DecoderError { .. } | Event::ProtocolError { .. } | Event::Err(_)
            ),
            "unexpected {e:?} in {events:#?}"
        );
    }
}

fn b<T: AsRef<[u8]> + ?Sized>(s: &'static T) -> Bytes {
    Bytes::from_static(s.as_ref())
}

// ------------------------------------------------------- MySQL 8.0, by hand
//
// Field layouts from the MySQL Client/Server Protocol reference:
// Protocol::HandshakeV10, Protocol::HandshakeResponse41, Protocol::SSLRequest,
// Protocol::AuthSwitchRequest, Protocol::AuthMoreData, caching_sha2_password's
// fast and full authentication, OK_Packet / ERR_Packet / EOF_Packet, COM_QUERY's
// Text Resultset and Column Definition41.

/// Capabilities the MySQL 8.0 server advertises: 0xDFFF_FFFF, every flag from
/// CLIENT_LONG_PASSWORD (bit 0) to MULTI_FACTOR_AUTHENTICATION (bit 28), and
/// CLIENT_SSL_VERIFY_SERVER_CERT / CLIENT_REMEMBER_OPTIONS (bits 30, 31).
const MYSQL8_SERVER_CAPS: u32 = 0xDFFF_FFFF;

/// The mysql 8.0 CLI's capabilities, 0x01FF_A68D: CLIENT_LONG_PASSWORD |
/// CLIENT_LONG_FLAG | CLIENT_CONNECT_WITH_DB | CLIENT_LOCAL_FILES | CLIENT_PROTOCOL_41
/// | CLIENT_INTERACTIVE | CLIENT_TRANSACTIONS | CLIENT_SECURE_CONNECTION |
/// CLIENT_MULTI_STATEMENTS | CLIENT_MULTI_RESULTS | CLIENT_PS_MULTI_RESULTS |
/// CLIENT_PLUGIN_AUTH | CLIENT_CONNECT_ATTRS | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA |
/// CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS | CLIENT_SESSION_TRACK | CLIENT_DEPRECATE_EOF.
const MYSQL8_CLIENT_CAPS: u32 = 0x01FF_A68D;

const SCRAMBLE_1: &[u8] = b"\x3d\x5e\x1f\x6a\x0c\x47\x11\x78";
const SCRAMBLE_2: &[u8] = b"\x52\x2b\x19\x7e\x33\x08\x64\x4f\x26\x5a\x73\x15";

/// Protocol::HandshakeV10 from MySQL 8.0.36, default plugin `plugin`.
fn mysql8_greeting(plugin: &'static [u8]) -> Vec<u8> {
    let len = 52 + plugin.len() as u8;
    wire(
        [len, 0x00, 0x00, 0x00], // payload length, sequence id 0
        &[
            &[0x0a],                   // protocol version 10
            b"8.0.36\0",               // server version, NUL-terminated
            &[0x2a, 0x00, 0x00, 0x00], // connection id 42
            SCRAMBLE_1,                // auth-plugin-data-part-1 (8 bytes)
            &[0x00],                   // filler
            &[0xff, 0xff],             // capability flags, lower 2 bytes
            &[0xff],                   // character set 255: utf8mb4_0900_ai_ci
            &[0x02, 0x00],             // status flags: SERVER_STATUS_AUTOCOMMIT
            &[0xff, 0xdf],             // capability flags, upper 2 bytes
            &[21],                     // length of auth-plugin-data: 20 + NUL
            &[0; 10],                  // reserved
            SCRAMBLE_2,                // auth-plugin-data-part-2: max(13, 21 - 8) bytes...
            &[0x00],                   // ... the 13th being the scramble's NUL
            plugin,                    // auth plugin name, NUL-terminated
        ],
    )
}

/// The connection attributes the mysql CLI sends (CLIENT_CONNECT_ATTRS): a lenenc
/// total length, then lenenc key / lenenc value pairs.
const MYSQL8_ATTRS: &[&[u8]] = &[
    &[84],                            // length of all key-values
    b"\x0c_client_name\x08libmysql",  // _client_name = libmysql
    b"\x03_os\x05Linux",              // _os = Linux
    b"\x04_pid\x044242",              // _pid = 4242
    b"\x0f_client_version\x068.0.36", // _client_version = 8.0.36
    b"\x0cprogram_name\x05mysql",     // program_name = mysql
];

/// A 32-byte caching_sha2_password scramble:
/// XOR(SHA256(password), SHA256(SHA256(SHA256(password)), nonce)).
const SHA2_SCRAMBLE: &[u8; 32] =
    b"\x8f\x11\x2c\x9a\x47\xd0\x3b\x66\xe2\x05\x71\xbc\x18\x4e\xa9\x30\
\x5d\xc7\x0a\x94\x62\x2f\xe8\x13\x7b\xd6\x41\x88\x0f\xb3\x56\x29";

/// Protocol::HandshakeResponse41 from the mysql 8.0 CLI: user `app`, database
/// `shop`, caching_sha2_password, with connection attributes.
fn mysql8_login() -> Vec<u8> {
    let mut fields: Vec<&[u8]> = vec![
        &[0x8d, 0xa6, 0xff, 0x01],  // client capability flags 0x01FFA68D
        &[0x00, 0x00, 0x00, 0x01],  // max packet size 16 MiB
        &[0xff],                    // character set 255: utf8mb4_0900_ai_ci
        &[0; 23],                   // filler
        b"app\0",                   // user name
        &[32],                      // auth response length (lenenc: PLUGIN_AUTH_LENENC_CLIENT_DATA)
        SHA2_SCRAMBLE,              // auth response
        b"shop\0",                  // database (CLIENT_CONNECT_WITH_DB)
        b"caching_sha2_password\0", // client plugin name (CLIENT_PLUGIN_AUTH)
    ];
    fields.extend_from_slice(MYSQL8_ATTRS); // CLIENT_CONNECT_ATTRS
    wire([0xb5, 0x00, 0x00, 0x01], &fields) // 181 bytes, sequence id 1
}

/// OK_Packet ending the login: with CLIENT_SESSION_TRACK the server reports the
/// schema the login selected.
fn mysql8_login_ok(seq: u8) -> Vec<u8> {
    wire(
        [0x10, 0x00, 0x00, seq],
        &[
            &[0x00],       // header: OK
            &[0x00],       // affected rows (lenenc)
            &[0x00],       // last insert id (lenenc)
            &[0x02, 0x40], // status: AUTOCOMMIT | SERVER_SESSION_STATE_CHANGED
            &[0x00, 0x00], // warnings
            &[0x00],       // info: empty lenenc string (CLIENT_SESSION_TRACK)
            &[0x07],       // session state changes, lenenc length 7
            &[0x01],       //   SESSION_TRACK_SCHEMA
            &[0x05],       //   its data, lenenc length 5
            b"\x04shop",   //   schema name, lenenc string
        ],
    )
}

/// A plain OK_Packet (protocol 4.1, no session state), status AUTOCOMMIT.
fn mysql8_ok(seq: u8) -> Vec<u8> {
    wire(
        [0x07, 0x00, 0x00, seq],
        &[
            &[0x00],       // header: OK
            &[0x00],       // affected rows
            &[0x00],       // last insert id
            &[0x02, 0x00], // status: SERVER_STATUS_AUTOCOMMIT
            &[0x00, 0x00], // warnings
        ],
    )
}

/// COM_QUERY `SELECT id, name FROM items ORDER BY id` and its Text Resultset under
/// CLIENT_DEPRECATE_EOF: no EOF after the column definitions, an OK_Packet with a
/// 0xFE header after the rows.
fn mysql8_query_and_result_set() -> Vec<Step> {
    vec![
        (
            C,
            wire(
                [0x27, 0x00, 0x00, 0x00], // 39 bytes, sequence id 0: a new command
                &[
                    &[0x03],                                   // COM_QUERY
                    b"SELECT id, name FROM items ORDER BY id", // query text (to the end)
                ],
            ),
        ),
        (
            S,
            [
                wire([0x01, 0x00, 0x00, 0x01], &[&[0x02]]), // column count 2 (lenenc)
                wire(
                    [0x28, 0x00, 0x00, 0x02], // Column Definition41, `id`
                    &[
                        b"\x03def",                // catalog
                        b"\x04shop",               // schema
                        b"\x05items",              // table (alias)
                        b"\x05items",              // org_table
                        b"\x02id",                 // name (alias)
                        b"\x02id",                 // org_name
                        &[0x0c],                   // length of the fixed-length fields
                        &[0x3f, 0x00],             // character set 63: binary
                        &[0x0b, 0x00, 0x00, 0x00], // column length 11
                        &[0x03],                   // type: MYSQL_TYPE_LONG
                        &[0x03, 0x40],             // flags: NOT_NULL | PRI_KEY | PART_KEY
                        &[0x00],                   // decimals
                        &[0x00, 0x00],             // filler
                    ],
                ),
                wire(
                    [0x2c, 0x00, 0x00, 0x03], // Column Definition41, `name`
                    &[
                        b"\x03def",
                        b"\x04shop",
                        b"\x05items",
                        b"\x05items",
                        b"\x04name",
                        b"\x04name",
                        &[0x0c],
                        &[0xff, 0x00], // character set 255: utf8mb4_0900_ai_ci
                        &[0x50, 0x00, 0x00, 0x00], // column length 80: VARCHAR(20) x 4
                        &[0xfd],       // type: MYSQL_TYPE_VAR_STRING
                        &[0x00, 0x00], // flags
                        &[0x00],       // decimals
                        &[0x00, 0x00], // filler
                    ],
                ),
                // No EOF_Packet here: CLIENT_DEPRECATE_EOF.
                wire([0x08, 0x00, 0x00, 0x04], &[b"\x011", b"\x05apple"]), // row 1, "apple"
                wire([0x07, 0x00, 0x00, 0x05], &[b"\x012", b"\x04pear"]),  // row 2, "pear"
                wire(
                    [0x07, 0x00, 0x00, 0x06], // the terminator: OK_Packet, 0xFE header
                    &[
                        &[0xfe],       // header (0xFE, payload < 0xFFFFFF: not a row)
                        &[0x00],       // affected rows
                        &[0x00],       // last insert id
                        &[0x22, 0x00], // status: AUTOCOMMIT | SERVER_QUERY_NO_INDEX_USED
                        &[0x00, 0x00], // warnings
                    ],
                ),
            ]
            .concat(),
        ),
    ]
}

fn com_quit() -> Step {
    (C, wire([0x01, 0x00, 0x00, 0x00], &[&[0x01]])) // COM_QUIT
}

fn com_ping() -> Vec<Step> {
    vec![
        (C, wire([0x01, 0x00, 0x00, 0x00], &[&[0x0e]])), // COM_PING
        (S, mysql8_ok(1)),
    ]
}

fn login_event(events: &[Event]) -> &legate_mysql_proxy::Login {
    events
        .iter()
        .find_map(|e| match e {
            Event::Login(l) => Some(l),
            _ => None,
        })
        .expect("a Login event")
}

#[test]
fn mysql8_caching_sha2_fast_auth_then_query() {
    let mut steps = vec![
        (S, mysql8_greeting(b"caching_sha2_password\0")),
        (C, mysql8_login()),
        // AuthMoreData: 0x01, then caching_sha2_password's fast_auth_success (0x03).
        (S, wire([0x02, 0x00, 0x00, 0x02], &[&[0x01], &[0x03]])),
        (S, mysql8_login_ok(3)),
    ];
    steps.extend(mysql8_query_and_result_set());
    steps.push(com_quit());

    let (events, session) = replay_all_splits(&steps);
    no_errors(&events);
    let Event::Greeting(g) = &events[0] else {
        panic!("{events:#?}")
    };
    assert_eq!(g.protocol_version, 10);
    assert_eq!(g.server_version, b("8.0.36"));
    assert_eq!(g.connection_id, 42);
    assert_eq!(g.capabilities, MYSQL8_SERVER_CAPS);
    assert_eq!(g.mariadb_capabilities, None, "CLIENT_MYSQL is set");
    assert_eq!(g.charset, 255);
    assert_eq!(g.status, 2);
    assert_eq!(g.auth_plugin_data, [SCRAMBLE_1, SCRAMBLE_2].concat());
    assert_eq!(
        g.auth_plugin_data.len(),
        20,
        "the scramble's NUL is dropped"
    );
    assert_eq!(g.auth_plugin_name, b("caching_sha2_password"));

    let l = login_event(&events);
    assert_eq!(l.capabilities, MYSQL8_CLIENT_CAPS);
    assert_eq!(l.max_packet, 16 << 20);
    assert_eq!(l.charset, 255);
    assert_eq!(l.user, b("app"));
    assert_eq!(l.auth_response, &SHA2_SCRAMBLE[..]);
    assert_eq!(l.database, Some(b("shop")));
    assert_eq!(l.auth_plugin_name, Some(b("caching_sha2_password")));
    assert_eq!(l.mariadb_capabilities, None);

    assert_eq!(
        events[2..],
        [
            Event::AuthMoreData { data: b(b"\x03") },
            Event::LoginOk(OkPacket {
                status: 0x4002,
                ..OkPacket::default()
            }),
            Event::Command(Command::Query {
                text: b(b"SELECT id, name FROM items ORDER BY id"),
                truncated: false,
            }),
            Event::ResultSet { columns: 2 },
            Event::ResultSetEnd {
                rows: 2,
                end: ResultSetEnd::Ok(OkPacket {
                    status: 0x22,
                    ..OkPacket::default()
                }),
            },
            Event::Command(Command::Quit),
        ]
    );
    assert_eq!(
        session.capabilities(),
        MYSQL8_SERVER_CAPS & MYSQL8_CLIENT_CAPS
    );
    assert_eq!(session.mariadb_capabilities(), 0);
    assert!(!session.is_stopped());
}

/// A throwaway RSA public key, as the server sends it for a password exchange over
/// an unencrypted connection.
const PUBLIC_KEY_PEM: &[u8] = b"-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAwMMQz/vLGYIjSCAiabt9
ZmaUIhCQTye1jg2bs1ueFmF/ZJotDBOHxlZ3QjMToA1ne66JeQR9k24Y9zrx5V6e
041eW7P0QOgyO9iZ4ozYkQMjXFD5r9zay+gpPvIBmkCwLj7/hhynoxkRiL+dSMZB
e5dpKOQ4W57NYmFtK1hkEAuLrjlJFU2wey/xUpOnzrOv+lTjO5eFctk04AVX5Xaj
9Tlojf++HzBMMdlBcX5RTd5NqaM+mEDc2LxZRsVSNbOgeMRnYXEkQznj0cXHlzQi
5POth980VY80vqp3+lL9O2MpuuSv/SZZJCnRsRYdERErSWNSibmxVZTpSCxfLkpW
9QIDAQAB
-----END PUBLIC KEY-----
";

#[test]
fn mysql8_caching_sha2_full_auth_with_public_key() {
    // The RSA-OAEP ciphertext of the XOR-ed password: 256 bytes for a 2048-bit key
    // (opaque to the decoder).
    let ciphertext: Vec<u8> = (0..256u32).map(|i| (i * 37 + 11) as u8).collect();
    let mut steps = vec![
        (S, mysql8_greeting(b"caching_sha2_password\0")),
        (C, mysql8_login()),
        // AuthMoreData: perform_full_authentication (0x04); no cached entry.
        (S, wire([0x02, 0x00, 0x00, 0x02], &[&[0x01], &[0x04]])),
        // No TLS: the client asks for the server's public key (request_public_key).
        (C, wire([0x01, 0x00, 0x00, 0x03], &[&[0x02]])),
        // AuthMoreData carrying the PEM public key (451 bytes).
        (
            S,
            wire([0xc4, 0x01, 0x00, 0x04], &[&[0x01], PUBLIC_KEY_PEM]),
        ),
        // The password, XOR-ed with the scramble and RSA-encrypted.
        (C, wire([0x00, 0x01, 0x00, 0x05], &[&ciphertext])),
        (S, mysql8_ok(6)),
    ];
    steps.extend(com_ping());
    steps.push(com_quit());

    let (events, session) = replay_all_splits(&steps);
    no_errors(&events);
    assert!(matches!(events[0], Event::Greeting(_)));
    assert!(matches!(events[1], Event::Login(_)));
    assert_eq!(
        events[2..],
        [
            Event::AuthMoreData { data: b(b"\x04") },
            Event::AuthClientData { len: 1 },
            Event::AuthMoreData {
                data: Bytes::from_static(PUBLIC_KEY_PEM),
            },
            Event::AuthClientData { len: 256 },
            Event::LoginOk(OkPacket {
                status: 2,
                ..OkPacket::default()
            }),
            Event::Command(Command::Ping),
            Event::Ok(OkPacket {
                status: 2,
                ..OkPacket::default()
            }),
            Event::Command(Command::Quit),
        ]
    );
    assert!(!session.is_stopped());
}

/// The server's default plugin is mysql_native_password, so the client answers the
/// greeting with a native scramble; the account uses caching_sha2_password, so the
/// server switches it. The client is an older connector: a 1-byte auth length
/// (CLIENT_SECURE_CONNECTION, no lenenc), no database, no attributes, no
/// CLIENT_DEPRECATE_EOF (result sets end with EOF_Packets).
#[test]
fn mysql8_auth_switch_native_to_caching_sha2() {
    const CAPS: u32 = 0x000A_A205; // LONG_PASSWORD | LONG_FLAG | PROTOCOL_41 | TRANSACTIONS
    // | SECURE_CONNECTION | MULTI_RESULTS | PLUGIN_AUTH
    let native_scramble =
        b"\x6b\x1d\xe4\x90\x27\x5c\xa3\x0e\x81\x3f\xd2\x74\x19\xc8\x56\x0b\xee\x42\x97\x2d";
    let new_nonce =
        b"\x14\x6e\x2a\x59\x7c\x03\x48\x31\x65\x1b\x77\x2e\x5f\x09\x3a\x6c\x22\x4d\x18\x70";
    let steps = vec![
        (S, mysql8_greeting(b"mysql_native_password\0")),
        (
            C,
            wire(
                [0x4f, 0x00, 0x00, 0x01], // Protocol::HandshakeResponse41, 79 bytes
                &[
                    &[0x05, 0xa2, 0x0a, 0x00],  // capability flags 0x000AA205
                    &[0x00, 0x00, 0x00, 0x40],  // max packet size 1 GiB
                    &[0x2d],                    // character set 45: utf8mb4_general_ci
                    &[0; 23],                   // filler
                    b"app\0",                   // user name
                    &[20],                      // auth response length (1 byte)
                    native_scramble,            // SHA1-based native scramble
                    b"mysql_native_password\0", // client plugin name
                ],
            ),
        ),
        (
            S,
            wire(
                [0x2c, 0x00, 0x00, 0x02], // Protocol::AuthSwitchRequest, 44 bytes
                &[
                    &[0xfe],                    // status tag
                    b"caching_sha2_password\0", // plugin name
                    new_nonce,                  // plugin provided data: a new nonce...
                    &[0x00],                    // ... NUL-terminated
                ],
            ),
        ),
        // Protocol::AuthSwitchResponse: the caching_sha2_password scramble.
        (C, wire([0x20, 0x00, 0x00, 0x03], &[SHA2_SCRAMBLE])),
        // AuthMoreData fast_auth_success, then OK.
        (S, wire([0x02, 0x00, 0x00, 0x04], &[&[0x01], &[0x03]])),
        (S, mysql8_ok(5)),
        // COM_INIT_DB shop, OK.
        (C, wire([0x05, 0x00, 0x00, 0x00], &[&[0x02], b"shop"])),
        (S, mysql8_ok(1)),
        // COM_QUERY SELECT 1: Text Resultset with EOF_Packets.
        (C, wire([0x09, 0x00, 0x00, 0x00], &[&[0x03], b"SELECT 1"])),
        (
            S,
            [
                wire([0x01, 0x00, 0x00, 0x01], &[&[0x01]]), // column count 1
                wire(
                    [0x17, 0x00, 0x00, 0x02], // Column Definition41 of `1`
                    &[
                        b"\x03def",                // catalog
                        &[0x00],                   // schema ""
                        &[0x00],                   // table ""
                        &[0x00],                   // org_table ""
                        b"\x011",                  // name "1"
                        &[0x00],                   // org_name ""
                        &[0x0c],                   // length of the fixed-length fields
                        &[0x3f, 0x00],             // character set 63: binary
                        &[0x01, 0x00, 0x00, 0x00], // column length 1
                        &[0x08],                   // type: MYSQL_TYPE_LONGLONG
                        &[0x81, 0x00],             // flags: NOT_NULL | BINARY
                        &[0x00],                   // decimals
                        &[0x00, 0x00],             // filler
                    ],
                ),
                // EOF_Packet ending the definitions: 0xFE, warnings, status.
                wire(
                    [0x05, 0x00, 0x00, 0x03],
                    &[&[0xfe], &[0x00, 0x00], &[0x02, 0x00]],
                ),
                wire([0x02, 0x00, 0x00, 0x04], &[b"\x011"]), // row: "1"
                // EOF_Packet ending the rows.
                wire(
                    [0x05, 0x00, 0x00, 0x05],
                    &[&[0xfe], &[0x00, 0x00], &[0x02, 0x00]],
                ),
            ]
            .concat(),
        ),
        com_quit(),
    ];

    let (events, session) = replay_all_splits(&steps);
    no_errors(&events);
    let l = login_event(&events);
    assert_eq!(l.capabilities, CAPS);
    assert_eq!(l.auth_response, &native_scramble[..]);
    assert_eq!(l.database, None);
    assert_eq!(l.auth_plugin_name, Some(b("mysql_native_password")));
    let eof = ResultSetEnd::Eof(EofPacket {
        warnings: 0,
        status: 2,
    });
    let ok = Event::Ok(OkPacket {
        status: 2,
        ..OkPacket::default()
    });
    assert_eq!(
        events[2..],
        [
            Event::AuthSwitchRequest(legate_mysql_proxy::AuthSwitchRequest {
                plugin_name: b("caching_sha2_password"),
                plugin_data: Bytes::copy_from_slice(new_nonce),
            }),
            Event::AuthSwitchResponse { len: 32 },
            Event::AuthMoreData { data: b(b"\x03") },
            Event::LoginOk(OkPacket {
                status: 2,
                ..OkPacket::default()
            }),
            Event::Command(Command::InitDb(b("shop"))),
            ok,
            Event::Command(Command::Query {
                text: b("SELECT 1"),
                truncated: false,
            }),
            Event::ResultSet { columns: 1 },
            Event::ResultSetEnd { rows: 1, end: eof },
            Event::Command(Command::Quit),
        ]
    );
    assert_eq!(session.capabilities(), MYSQL8_SERVER_CAPS & CAPS);
}

#[test]
fn mysql8_failed_login() {
    let steps = vec![
        (S, mysql8_greeting(b"caching_sha2_password\0")),
        (C, mysql8_login()),
        (
            S,
            wire(
                [0x47, 0x00, 0x00, 0x02], // ERR_Packet, 71 bytes, sequence id 2
                &[
                    &[0xff],       // header: ERR
                    &[0x15, 0x04], // error code 1045: ER_ACCESS_DENIED_ERROR
                    b"#",          // SQL state marker
                    b"28000",      // SQL state
                    b"Access denied for user 'app'@'localhost' (using password: YES)",
                ],
            ),
        ),
        // The server closes; nothing after is decoded, even bytes in this state.
        com_quit(),
    ];
    let (events, session) = replay_all_splits(&steps);
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(
        events[2],
        Event::LoginFailed(ErrPacket {
            code: 1045,
            sql_state: b("28000"),
            message: b("Access denied for user 'app'@'localhost' (using password: YES)"),
        })
    );
    assert!(session.is_stopped());
}

/// Protocol::SSLRequest: the first 32 bytes of a HandshakeResponse41 with CLIENT_SSL;
/// then the TLS handshake, which the decoder must not try to read.
#[test]
fn mysql8_ssl_request_then_tls() {
    const CAPS: u32 = MYSQL8_CLIENT_CAPS | 0x800; // | CLIENT_SSL
    let ssl_request = wire(
        [0x20, 0x00, 0x00, 0x01], // 32 bytes, sequence id 1
        &[
            &[0x8d, 0xae, 0xff, 0x01], // capability flags 0x01FFAE8D (with CLIENT_SSL)
            &[0x00, 0x00, 0x00, 0x01], // max packet size 16 MiB
            &[0xff],                   // character set 255
            &[0; 23],                  // filler
        ],
    );
    // A TLS 1.3 ClientHello's record header and start, then arbitrary bytes: none is
    // a MySQL packet.
    let mut tls = vec![
        0x16, 0x03, 0x01, 0x02, 0x00, // handshake record, TLS 1.0 legacy version, 512 bytes
        0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, // ClientHello, 508 bytes, TLS 1.2 legacy version
    ];
    tls.extend((0..200u32).map(|i| (i * 91 + 7) as u8));
    let server_tls = vec![
        0x16, 0x03, 0x03, 0x00, 0x7a, 0x02, 0x00, 0x00, 0x76, 0x03, 0x03,
    ];

    for steps in [
        // The TLS bytes in reads of their own.
        vec![
            (S, mysql8_greeting(b"caching_sha2_password\0")),
            (C, ssl_request.clone()),
            (C, tls.clone()),
            (S, server_tls.clone()),
            (C, tls.clone()),
        ],
        // The ClientHello in the same read as the SSL request.
        vec![
            (S, mysql8_greeting(b"caching_sha2_password\0")),
            (C, [ssl_request.clone(), tls.clone()].concat()),
            (S, server_tls.clone()),
        ],
    ] {
        let (events, session) = replay_all_splits(&steps);
        assert_eq!(events.len(), 2, "{events:#?}");
        assert!(matches!(events[0], Event::Greeting(_)));
        assert_eq!(events[1], Event::SslRequest { capabilities: CAPS });
        assert!(session.is_stopped());
    }
}

// ------------------------------------------------------ MariaDB 10.11, recorded

/// Reads a capture: `c <hex>` / `s <hex>` lines, `#` comments.
fn capture(name: &str) -> Vec<Step> {
    let path = format!("{}/tests/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let hex = |s: &str| -> Vec<u8> {
        assert!(s.len().is_multiple_of(2), "{path}: odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    };
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(' ') {
            Some(("c", h)) => (C, hex(h)),
            Some(("s", h)) => (S, hex(h)),
            _ => panic!("{path}: bad line {l:?}"),
        })
        .collect()
}

/// MariaDB 10.11's server capabilities: CLIENT_MYSQL (CLIENT_LONG_PASSWORD) cleared
/// to say "MariaDB", so the greeting's last reserved bytes are its extended
/// capabilities.
const MARIADB_SERVER_CAPS: u32 = 0x81FF_F7FE;
/// libmariadb 3.3's: also without CLIENT_MYSQL, and without CLIENT_DEPRECATE_EOF.
const MARIADB_CLIENT_CAPS: u32 = 0x00BF_A28C;
/// Extended capabilities both send: MARIADB_CLIENT_PROGRESS | STMT_BULK_OPERATIONS |
/// EXTENDED_METADATA | CACHE_METADATA.
const MARIADB_EXT: u32 = 0x1D;

fn check_mariadb_greeting(events: &[Event]) {
    let Event::Greeting(g) = &events[0] else {
        panic!("{events:#?}")
    };
    assert_eq!(g.server_version, b("5.5.5-10.11.19-MariaDB-0+deb12u1"));
    assert_eq!(g.capabilities, MARIADB_SERVER_CAPS);
    assert_eq!(g.mariadb_capabilities, Some(MARIADB_EXT));
    assert_eq!(g.charset, 8, "latin1_swedish_ci, the server's default");
    assert_eq!(g.auth_plugin_data.len(), 20);
    assert!(!g.auth_plugin_data.contains(&0));
    assert_eq!(g.auth_plugin_name, b("mysql_native_password"));
}

fn check_mariadb_login(events: &[Event], user: &'static str) {
    let l = login_event(events);
    assert_eq!(l.capabilities, MARIADB_CLIENT_CAPS);
    assert_eq!(l.mariadb_capabilities, Some(MARIADB_EXT));
    assert_eq!(l.user, b(user.as_bytes()));
    assert_eq!(l.auth_response.len(), 20, "native scramble");
    assert_eq!(l.database, Some(b("captest")));
    assert_eq!(l.auth_plugin_name, Some(b("mysql_native_password")));
}

fn ok_status(status: u16) -> OkPacket {
    OkPacket {
        status,
        ..OkPacket::default()
    }
}

#[test]
fn mariadb_login_and_select() {
    let (events, session) = replay_all_splits(&capture("mariadb-login-select.txt"));
    no_errors(&events);
    check_mariadb_greeting(&events);
    check_mariadb_login(&events, "capture");
    assert_eq!(
        events[2..],
        [
            // The schema tracked in the OK (SERVER_SESSION_STATE_CHANGED).
            Event::LoginOk(ok_status(0x4002)),
            Event::Command(Command::Query {
                text: b("SELECT id, name FROM t ORDER BY id"),
                truncated: false,
            }),
            // The column count is followed by MariaDB's "metadata follows" byte (1).
            Event::ResultSet { columns: 2 },
            Event::ResultSetEnd {
                rows: 2,
                end: ResultSetEnd::Eof(EofPacket {
                    warnings: 0,
                    status: 0x22,
                }),
            },
            Event::Command(Command::Quit),
        ]
    );
    assert_eq!(
        session.capabilities(),
        MARIADB_SERVER_CAPS & MARIADB_CLIENT_CAPS
    );
    assert_eq!(session.mariadb_capabilities(), MARIADB_EXT);
}

#[test]
fn mariadb_failed_login() {
    let (events, session) = replay_all_splits(&capture("mariadb-login-failed.txt"));
    check_mariadb_greeting(&events);
    check_mariadb_login(&events, "capture");
    assert_eq!(events.len(), 3, "{events:#?}");
    let Event::LoginFailed(e) = &events[2] else {
        panic!("{events:#?}")
    };
    assert_eq!(e.code, 1045);
    assert_eq!(e.sql_state, b("28000"));
    assert!(e.message.starts_with(b"Access denied for user 'capture'@"));
    assert!(session.is_stopped());
}

#[test]
fn mariadb_auth_switch_to_ed25519() {
    let (events, _) = replay_all_splits(&capture("mariadb-auth-switch-ed25519.txt"));
    no_errors(&events);
    check_mariadb_greeting(&events);
    check_mariadb_login(&events, "capture_ed");
    let Event::AuthSwitchRequest(sw) = &events[2] else {
        panic!("{events:#?}")
    };
    assert_eq!(sw.plugin_name, b("client_ed25519"));
    assert_eq!(sw.plugin_data.len(), 32, "ed25519 nonce");
    assert_eq!(
        events[3..],
        [
            Event::AuthSwitchResponse { len: 64 }, // the ed25519 signature
            Event::LoginOk(ok_status(0x4002)),
            Event::Command(Command::Query {
                text: b("SELECT CURRENT_USER()"),
                truncated: false,
            }),
            Event::ResultSet { columns: 1 },
            Event::ResultSetEnd {
                rows: 1,
                end: ResultSetEnd::Eof(EofPacket {
                    warnings: 0,
                    status: 2,
                }),
            },
            Event::Command(Command::Quit),
        ]
    );
}

/// The binary protocol with MARIADB_CLIENT_CACHE_METADATA: the prepare sends the
/// definitions, so each execute's column count is followed by a 0 "metadata follows"
/// byte and no column definitions, only their EOF, then the row and the final EOF.
/// (Before the decoder read that byte, it took the EOF and the row for the two
/// column definitions and never saw the result set end.)
#[test]
fn mariadb_prepared_statement_with_cached_metadata() {
    let (events, session) = replay_all_splits(&capture("mariadb-prepared-cache-metadata.txt"));
    no_errors(&events);
    check_mariadb_greeting(&events);
    let l = login_event(&events);
    assert_eq!(l.mariadb_capabilities, Some(MARIADB_EXT));
    let eof = ResultSetEnd::Eof(EofPacket {
        warnings: 0,
        status: 2,
    });
    assert_eq!(
        events[2..],
        [
            Event::LoginOk(ok_status(0x4002)),
            Event::Command(Command::StmtPrepare {
                text: b("SELECT id, name FROM t WHERE id = ?"),
                truncated: false,
            }),
            Event::StmtPrepareOk {
                statement_id: 1,
                columns: 2,
                params: 1,
                warnings: 0,
            },
            Event::Command(Command::StmtExecute {
                statement_id: 1,
                flags: 0,
            }),
            Event::ResultSet { columns: 2 },
            Event::ResultSetEnd {
                rows: 1,
                end: eof.clone(),
            },
            Event::Command(Command::StmtExecute {
                statement_id: 1,
                flags: 0,
            }),
            Event::ResultSet { columns: 2 },
            Event::ResultSetEnd { rows: 1, end: eof },
            Event::Command(Command::StmtClose { statement_id: 1 }),
            Event::Command(Command::Quit),
        ]
    );
    assert_ne!(
        session.mariadb_capabilities() & MARIADB_CLIENT_CACHE_METADATA,
        0
    );
}

/// MARIADB_CLIENT_PROGRESS: a long ALTER TABLE sends progress reports, ERR packets
/// with code 0xFFFF (stage, max stage, progress, state name), before its OK. They are
/// not the response. (Before, the first was taken for the ERR response and the OK
/// that followed was a decoder error that stopped decoding.)
#[test]
fn mariadb_progress_reports_are_not_responses() {
    let (events, session) = replay_all_splits(&capture("mariadb-alter-progress.txt"));
    no_errors(&events);
    assert_eq!(
        events[2..],
        [
            Event::LoginOk(ok_status(0x4002)),
            Event::Command(Command::Query {
                text: b("SET SESSION progress_report_time=1"),
                truncated: false,
            }),
            Event::Ok(ok_status(2)),
            Event::Command(Command::Query {
                text: b("ALTER TABLE big ALGORITHM=COPY, FORCE"),
                truncated: false,
            }),
            Event::Ok(OkPacket {
                affected_rows: 300_000,
                status: 2,
                ..OkPacket::default()
            }),
            Event::Command(Command::Quit),
        ]
    );
    assert!(!session.is_stopped());
    assert_ne!(session.mariadb_capabilities() & MARIADB_CLIENT_PROGRESS, 0);
}

// ------------------------------------- MariaDB extensions, by hand, edge cases

/// A MariaDB greeting/login pair (native password), the login's capabilities and
/// extended capabilities chosen by the caller, and the OK.
fn mariadb_handshake(client_caps: u32, client_ext: u32) -> Vec<Step> {
    let caps = client_caps.to_le_bytes();
    let ext = client_ext.to_le_bytes();
    vec![
        (
            S,
            wire(
                [0x5a, 0x00, 0x00, 0x00], // HandshakeV10, 90 bytes
                &[
                    &[0x0a],                     // protocol version 10
                    b"5.5.5-10.11.19-MariaDB\0", // server version
                    &[0x07, 0x00, 0x00, 0x00],   // connection id 7
                    b"abcdefgh",                 // auth-plugin-data-part-1
                    &[0x00],                     // filler
                    &[0xfe, 0xf7],               // capabilities, lower: no CLIENT_MYSQL
                    &[0x2d],                     // character set 45
                    &[0x02, 0x00],               // status: AUTOCOMMIT
                    &[0xff, 0x81],               // capabilities, upper
                    &[21],                       // auth-plugin-data length
                    &[0; 6],                     // reserved
                    &[0x1d, 0x00, 0x00, 0x00],   // MariaDB extended capabilities
                    b"ijklmnopqrst\0",           // auth-plugin-data-part-2
                    b"mysql_native_password\0",  // auth plugin name
                ],
            ),
        ),
        (
            C,
            wire(
                [0x4d, 0x00, 0x00, 0x01], // HandshakeResponse41, 77 bytes
                &[
                    &caps,                      // capability flags
                    &[0x00, 0x00, 0x00, 0x01],  // max packet size
                    &[0x2d],                    // character set 45
                    &[0; 19],                   // filler
                    &ext,                       // MariaDB extended capabilities
                    b"u\0",                     // user
                    &[20],                      // auth response length
                    &[0x5a; 20],                // auth response
                    b"mysql_native_password\0", // plugin name
                ],
            ),
        ),
        (S, mysql8_ok(2)),
    ]
}

/// COM_STMT_EXECUTE of statement 1, no parameters.
fn stmt_execute() -> Step {
    (
        C,
        wire(
            [0x0a, 0x00, 0x00, 0x00],
            &[&[0x17], &[1, 0, 0, 0], &[0x00], &[1, 0, 0, 0]], // id 1, no cursor, 1 iteration
        ),
    )
}

/// A binary row of one BIGINT column: header 0x00, NULL bitmap, the value.
fn binary_row(seq: u8, v: u8) -> Vec<u8> {
    wire(
        [0x0a, 0x00, 0x00, seq],
        &[&[0x00], &[0x00], &[v, 0, 0, 0, 0, 0, 0, 0]],
    )
}

/// With CLIENT_DEPRECATE_EOF (as MariaDB Connector/J and others send), skipped
/// metadata means the rows follow the column count directly, and an OK ends them.
#[test]
fn mariadb_skipped_metadata_with_deprecate_eof() {
    // LONG_FLAG | LOCAL_FILES | PROTOCOL_41 | TRANSACTIONS | SECURE_CONNECTION |
    // MULTI_STATEMENTS | MULTI_RESULTS | PS_MULTI_RESULTS | PLUGIN_AUTH |
    // PLUGIN_AUTH_LENENC_CLIENT_DATA | DEPRECATE_EOF; not CLIENT_MYSQL.
    const CAPS: u32 = 0x012F_A284;
    let mut steps = mariadb_handshake(CAPS, MARIADB_CLIENT_CACHE_METADATA);
    steps.push(stmt_execute());
    steps.push((
        S,
        [
            // Column count 1, metadata follows: 0. Then no definitions and no EOF.
            wire([0x02, 0x00, 0x00, 0x01], &[&[0x01], &[0x00]]),
            binary_row(2, 5),
            binary_row(3, 6),
            binary_row(4, 7),
            // OK_Packet with the 0xFE header ends the rows.
            wire(
                [0x07, 0x00, 0x00, 0x05],
                &[&[0xfe, 0, 0], &[0x02, 0x00], &[0, 0]],
            ),
        ]
        .concat(),
    ));
    // The next execute sends the metadata again (e.g. the table changed): 1.
    steps.push(stmt_execute());
    steps.push((
        S,
        [
            wire([0x02, 0x00, 0x00, 0x01], &[&[0x01], &[0x01]]),
            wire(
                [0x17, 0x00, 0x00, 0x02], // Column Definition41 of `v`, 23 bytes
                &[
                    b"\x03def",
                    &[0],
                    &[0],
                    &[0],
                    b"\x01v",
                    &[0],
                    &[0x0c],
                    &[0x3f, 0],
                    &[20, 0, 0, 0],
                    &[0x08],
                    &[0x81, 0],
                    &[0],
                    &[0, 0],
                ],
            ),
            binary_row(3, 9),
            wire(
                [0x07, 0x00, 0x00, 0x04],
                &[&[0xfe, 0, 0], &[0x02, 0x00], &[0, 0]],
            ),
        ]
        .concat(),
    ));
    let (events, session) = replay_all_splits(&steps);
    no_errors(&events);
    let ends: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::ResultSetEnd { rows, end } => Some((*rows, end.clone())),
            _ => None,
        })
        .collect();
    let ok = ResultSetEnd::Ok(ok_status(2));
    assert_eq!(ends, [(3, ok.clone()), (1, ok)]);
    assert_eq!(
        session.mariadb_capabilities(),
        MARIADB_CLIENT_CACHE_METADATA
    );
}

/// The metadata byte is read only when both sides set CACHE_METADATA, and 0xFFFF
/// ERR packets are progress reports only when both set PROGRESS: a client without
/// them gets plain result sets and errors.
#[test]
fn mariadb_extensions_need_both_sides() {
    const CAPS: u32 = 0x002F_A284; // as above without DEPRECATE_EOF
    let mut steps = mariadb_handshake(CAPS, 0);
    steps.push(stmt_execute());
    steps.push((
        S,
        [
            wire([0x01, 0x00, 0x00, 0x01], &[&[0x01]]), // column count 1, no metadata byte
            wire(
                [0x17, 0x00, 0x00, 0x02],
                &[
                    b"\x03def",
                    &[0],
                    &[0],
                    &[0],
                    b"\x01v",
                    &[0],
                    &[0x0c],
                    &[0x3f, 0],
                    &[20, 0, 0, 0],
                    &[0x08],
                    &[0x81, 0],
                    &[0],
                    &[0, 0],
                ],
            ),
            wire([0x05, 0x00, 0x00, 0x03], &[&[0xfe], &[0, 0], &[0x02, 0]]), // EOF
            binary_row(4, 1),
            wire([0x05, 0x00, 0x00, 0x05], &[&[0xfe], &[0, 0], &[0x02, 0]]), // EOF
        ]
        .concat(),
    ));
    // An ERR with code 0xFFFF is an error here.
    steps.push((C, wire([0x05, 0x00, 0x00, 0x00], &[&[0x03], b"DO 1"])));
    steps.push((S, wire([0x03, 0x00, 0x00, 0x01], &[&[0xff, 0xff, 0xff]])));
    let (events, session) = replay_all_splits(&steps);
    assert_eq!(session.mariadb_capabilities(), 0);
    assert!(events.contains(&Event::ResultSetEnd {
        rows: 1,
        end: ResultSetEnd::Eof(EofPacket {
            warnings: 0,
            status: 2,
        }),
    }));
    assert_eq!(
        events.last(),
        Some(&Event::Err(ErrPacket {
            code: 0xFFFF,
            sql_state: Bytes::new(),
            message: Bytes::new(),
        }))
    );
}
