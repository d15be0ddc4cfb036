//! Decoder properties, checked with proptest (the fixed cases are in session.rs):
//! any chunking decodes to the same events, garbage never panics, and a huge
//! declared length allocates nothing before its bytes arrive.

mod common;

use common::{column_def, pkt};
use legate_mysql_proxy::messages::caps::*;
use legate_mysql_proxy::packet::Decoder;
use legate_mysql_proxy::{Event, Session};
use legate_peak_alloc::{Counting, peak_alloc};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

// ---------------------------------------------------------------- allocation count

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn the_allocation_count_is_live() {
    let (v, peak) = peak_alloc(|| vec![0u8; 10_000]);
    assert!(peak >= 10_000, "{peak}");
    drop(v);
}

// ---------------------------------------------------------------- a conversation

const CAPS: u32 = CLIENT_LONG_PASSWORD
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_PROTOCOL_41
    | CLIENT_SECURE_CONNECTION
    | CLIENT_PLUGIN_AUTH;

fn greeting() -> Vec<u8> {
    common::greeting("8.0.36", "caching_sha2_password", CAPS, false)
}

fn login() -> Vec<u8> {
    common::login(CAPS, "app", &[1; 20], Some("shop"), "caching_sha2_password")
}

const EOF: [u8; 5] = [0xFE, 0, 0, 2, 0];
const OK: [u8; 7] = [0, 0, 0, 2, 0, 0, 0];

/// Steps of one conversation: (from the client?, bytes). Rows may be large, to cross
/// chunk boundaries mid-payload.
fn conversation(row_len: usize, rows: usize) -> Vec<(bool, Vec<u8>)> {
    let mut steps = vec![
        (false, pkt(0, &greeting())),
        (true, pkt(1, &login())),
        (false, [pkt(2, &[1, 3]), pkt(3, &OK)].concat()),
        (true, pkt(0, b"\x03SELECT a, b FROM t")),
    ];
    let mut resp = [
        pkt(1, &[2]),
        pkt(2, &column_def("a")),
        pkt(3, &column_def("b")),
        pkt(4, &EOF),
    ]
    .concat();
    let mut seq = 5u8;
    for i in 0..rows {
        let mut row = vec![1, b'0' + (i % 10) as u8];
        row.extend_from_slice(&[0xFC, row_len as u8, (row_len >> 8) as u8]);
        row.extend(std::iter::repeat_n(b'x', row_len));
        resp.extend(pkt(seq, &row));
        seq = seq.wrapping_add(1);
    }
    resp.extend(pkt(seq, &EOF));
    steps.push((false, resp));
    steps.push((true, pkt(0, b"\x02shop")));
    steps.push((false, pkt(1, &OK)));
    steps.push((true, pkt(0, &[0x0e])));
    steps.push((
        false,
        pkt(
            1,
            &[0xFF, 0x15, 0x04, b'#', b'0', b'8', b'S', b'0', b'1', b'x'],
        ),
    ));
    steps.push((true, pkt(0, &[0x01])));
    steps
}

fn run_whole(steps: &[(bool, Vec<u8>)]) -> Vec<Event> {
    let mut s = Session::default();
    let mut out = Vec::new();
    for (client, bytes) in steps {
        out.extend(if *client {
            s.on_client(bytes)
        } else {
            s.on_server(bytes)
        });
    }
    out
}

fn run_chunked(steps: &[(bool, Vec<u8>)], cuts: &[usize]) -> Vec<Event> {
    let mut s = Session::default();
    let mut out = Vec::new();
    let mut c = cuts.iter().cycle();
    for (client, bytes) in steps {
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            let n = (*c.next().unwrap_or(&1)).clamp(1, rest.len());
            let (head, tail) = rest.split_at(n);
            out.extend(if *client {
                s.on_client(head)
            } else {
                s.on_server(head)
            });
            rest = tail;
        }
    }
    out
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 128,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    }
}

#[test]
fn the_conversation_decodes_cleanly() {
    let events = run_whole(&conversation(300, 3));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::DecoderError { .. } | Event::ProtocolError { .. })),
        "{events:?}"
    );
    assert!(events.contains(&Event::ResultSetEnd {
        rows: 3,
        end: legate_mysql_proxy::ResultSetEnd::Eof(legate_mysql_proxy::EofPacket {
            warnings: 0,
            status: 2
        })
    }));
    assert_eq!(events.len(), 12, "{events:?}");
}

proptest! {
    #![proptest_config(config())]

    /// Any chunking decodes to the same events as whole steps.
    #[test]
    fn any_split_decodes_the_same(
        row_len in 0usize..600,
        rows in 0usize..6,
        cuts in proptest::collection::vec(1usize..64, 1..16),
    ) {
        let steps = conversation(row_len, rows);
        prop_assert_eq!(run_chunked(&steps, &cuts), run_whole(&steps));
    }

    /// Garbage in either direction never panics, whatever state it arrives in.
    #[test]
    fn garbage_never_panics(
        prefix in 0usize..6,
        chunks in proptest::collection::vec(
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..80)), 0..12),
    ) {
        let steps = conversation(5, 2);
        let mut s = Session::default();
        for (client, bytes) in steps.iter().take(prefix) {
            if *client { s.on_client(bytes); } else { s.on_server(bytes); }
        }
        for (client, bytes) in &chunks {
            if *client { s.on_client(bytes); } else { s.on_server(bytes); }
        }
    }

    /// Well-framed packets with random payloads reach deeper states; still no panic,
    /// and every event after a decoder error is absent.
    #[test]
    fn random_payloads_never_panic(
        prefix in 0usize..6,
        packets in proptest::collection::vec(
            (any::<bool>(), any::<u8>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..12),
    ) {
        let steps = conversation(5, 2);
        let mut s = Session::default();
        for (client, bytes) in steps.iter().take(prefix) {
            if *client { s.on_client(bytes); } else { s.on_server(bytes); }
        }
        let mut stopped = false;
        for (client, seq, payload) in &packets {
            let bytes = pkt(*seq, payload);
            let ev = if *client { s.on_client(&bytes) } else { s.on_server(&bytes) };
            if stopped {
                prop_assert!(ev.is_empty());
            }
            stopped |= s.is_stopped();
        }
    }

    /// A declared length (up to 16 MiB, continued) allocates nothing before its
    /// bytes arrive, and rows of any size are not kept.
    #[test]
    fn huge_declared_length_does_not_allocate(len in 0x10000usize..=0xFF_FFFF, have in 0usize..256) {
        let mut bytes = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, 0];
        bytes.extend(std::iter::repeat_n(0u8, have));
        let mut d = Decoder::new();
        let ((), peak) = peak_alloc(|| {
            let mut input = &bytes[..];
            let r = d.decode(&mut input, usize::MAX);
            assert!(matches!(r, Ok(None)));
        });
        prop_assert!(peak <= 4096, "peak {peak} for {have} bytes");
    }
}

/// A large row is passed through without being kept: memory stays small while
/// megabytes of row data flow.
#[test]
fn big_rows_are_not_materialised() {
    let steps = conversation(0, 0);
    let mut s = Session::default();
    for (client, bytes) in steps.iter().take(4) {
        if *client {
            s.on_client(bytes);
        } else {
            s.on_server(bytes);
        }
    }
    let header = [pkt(1, &[1]), pkt(2, &column_def("a")), pkt(3, &EOF)].concat();
    assert_eq!(s.on_server(&header), [Event::ResultSet { columns: 1 }]);
    // A 20 MB row: two packets, the first 0xFFFFFF long.
    let mut row = vec![0xFE];
    let n: u64 = 20_000_000;
    row.extend_from_slice(&n.to_le_bytes());
    row.extend(std::iter::repeat_n(b'z', n as usize));
    let framed = pkt(4, &row);
    let (events, peak) = peak_alloc(|| {
        let mut ev = Vec::new();
        for chunk in framed.chunks(64 * 1024) {
            ev.extend(s.on_server(chunk));
        }
        ev.extend(s.on_server(&pkt(6, &EOF)));
        ev
    });
    assert!(
        matches!(&events[..], [Event::ResultSetEnd { rows: 1, .. }]),
        "{events:?}"
    );
    assert!(peak < 64 * 1024, "peak {peak}");
}
