//! RESP2 codec: exact bytes, every split point, limits, and random garbage.

use bytes::{Bytes, BytesMut};
use legate_redis_proxy::resp::{Decoder, Frame, Limits, Value, split_inline};

fn decode_all(input: &[u8]) -> Result<Vec<Frame>, String> {
    let mut d = Decoder::new();
    let mut buf = BytesMut::from(input);
    let mut out = Vec::new();
    while let Some(f) = d.decode(&mut buf).map_err(|e| e.to_string())? {
        out.push(f);
    }
    Ok(out)
}

fn one(input: &[u8]) -> Value {
    let frames = decode_all(input).unwrap();
    assert_eq!(frames.len(), 1, "{input:?}");
    frames.into_iter().next().unwrap().value
}

fn err(input: &[u8]) -> String {
    let mut d = Decoder::new();
    let mut buf = BytesMut::from(input);
    loop {
        match d.decode(&mut buf) {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("no error for {input:?}"),
            Err(e) => return e.to_string(),
        }
    }
}

fn nested_sample() -> Vec<u8> {
    b"+OK\r\n-ERR bad\r\n:-42\r\n:0\r\n$5\r\nhello\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n\
*3\r\n*2\r\n:1\r\n$1\r\na\r\n$-1\r\n*1\r\n+x\r\n\
*2\r\n$3\r\nGET\r\n$3\r\nkey\r\nSET \"a b\" 'c'\r\n"
        .to_vec()
}

#[test]
fn every_type_decodes_and_reencodes_byte_for_byte() {
    let input = nested_sample();
    let frames = decode_all(&input).unwrap();
    let values: Vec<Value> = frames.iter().map(|f| f.value.clone()).collect();
    assert_eq!(
        values,
        vec![
            Value::simple("OK"),
            Value::error("ERR bad"),
            Value::Integer(-42),
            Value::Integer(0),
            Value::bulk("hello"),
            Value::bulk(""),
            Value::Null,
            Value::NullArray,
            Value::Array(vec![]),
            Value::Array(vec![
                Value::Array(vec![Value::Integer(1), Value::bulk("a")]),
                Value::Null,
                Value::Array(vec![Value::simple("x")]),
            ]),
            Value::command(["GET", "key"]),
            Value::command(["SET", "a b", "c"]),
        ]
    );
    // Typed frames re-encode to their own raw bytes; the inline one does not.
    let mut joined = Vec::new();
    for f in &frames {
        if f.inline {
            assert_eq!(&f.raw[..], b"SET \"a b\" 'c'\r\n");
            assert_eq!(
                &f.value.to_bytes()[..],
                b"*3\r\n$3\r\nSET\r\n$3\r\na b\r\n$1\r\nc\r\n"
            );
        } else {
            assert_eq!(f.value.to_bytes(), f.raw);
        }
        joined.extend_from_slice(&f.raw);
    }
    assert_eq!(joined, input);
}

#[test]
fn encoder_exact_bytes() {
    assert_eq!(
        &Value::Integer(i64::MIN).to_bytes()[..],
        b":-9223372036854775808\r\n"
    );
    assert_eq!(
        &Value::Integer(i64::MAX).to_bytes()[..],
        b":9223372036854775807\r\n"
    );
    assert_eq!(&Value::Null.to_bytes()[..], b"$-1\r\n");
    assert_eq!(&Value::NullArray.to_bytes()[..], b"*-1\r\n");
    assert_eq!(&Value::bulk("a\r\nb").to_bytes()[..], b"$4\r\na\r\nb\r\n");
    // A line value cannot carry CR/LF: they become spaces, keeping one value.
    assert_eq!(
        &Value::error("bad\r\nthing").to_bytes()[..],
        b"-bad  thing\r\n"
    );
    assert_eq!(&Value::simple("").to_bytes()[..], b"+\r\n");
}

#[test]
fn every_split_point_decodes_the_same() {
    let input = nested_sample();
    let whole = decode_all(&input).unwrap();
    for cut in 0..=input.len() {
        let mut d = Decoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for part in [&input[..cut], &input[cut..]] {
            buf.extend_from_slice(part);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, whole, "cut at {cut}");
        assert!(buf.is_empty());
    }
}

#[test]
fn every_pair_of_split_points_decodes_the_same() {
    let input = b"*2\r\n$3\r\nget\r\n$10\r\n0123456789\r\n:7\r\nPING\r\n";
    let whole = decode_all(input).unwrap();
    for a in 0..=input.len() {
        for b in a..=input.len() {
            let mut d = Decoder::new();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&input[..a], &input[a..b], &input[b..]] {
                buf.extend_from_slice(part);
                while let Some(f) = d.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, whole, "cuts at {a},{b}");
        }
    }
}

#[test]
fn byte_by_byte_big_bulk_is_linear_and_zero_copy() {
    let len = 4 * 1024 * 1024;
    let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut input = format!("*2\r\n$3\r\nset\r\n${len}\r\n").into_bytes();
    input.extend_from_slice(&payload);
    input.extend_from_slice(b"\r\n");
    let mut d = Decoder::new();
    let mut buf = BytesMut::with_capacity(input.len());
    let start = std::time::Instant::now();
    let mut frame = None;
    // Small chunks: a re-scanning decoder would do ~len^2/14 work here.
    for chunk in input.chunks(7) {
        buf.extend_from_slice(chunk);
        if let Some(f) = d.decode(&mut buf).unwrap() {
            frame = Some(f);
        }
    }
    let frame = frame.expect("decoded");
    assert_eq!(
        frame.value,
        Value::command([Bytes::from_static(b"set"), Bytes::from(payload)])
    );
    assert_eq!(frame.raw.len(), input.len());
    assert!(start.elapsed().as_secs() < 20, "took {:?}", start.elapsed());
}

#[test]
fn declared_sizes_do_not_allocate_up_front() {
    // 512 MiB declared, a few bytes sent: waits, holding only what arrived.
    let mut d = Decoder::new();
    let mut buf = BytesMut::from(&b"$536870912\r\nabc"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    assert_eq!(buf.len(), 15);
    let mut d = Decoder::new();
    let mut buf = BytesMut::from(&b"*2000000\r\n:1\r\n"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
}

#[test]
fn limits_match_envoy() {
    assert_eq!(
        err(b"*1\r\n$536870913\r\n"),
        "Protocol error: invalid bulk length"
    );
    assert_eq!(
        err(b"*2000001\r\n"),
        "Protocol error: invalid multibulk length"
    );
    assert_eq!(
        err(b"*2147483648\r\n"),
        "Protocol error: invalid multibulk length"
    );
    let mut deep = b"*1\r\n".repeat(127);
    deep.extend_from_slice(b":1\r\n");
    let mut v = one(&deep);
    for _ in 0..127 {
        v = match v {
            Value::Array(mut items) => items.pop().unwrap(),
            other => panic!("{other:?}"),
        };
    }
    assert_eq!(v, Value::Integer(1));
    let mut too_deep = b"*1\r\n".repeat(128);
    too_deep.extend_from_slice(b":1\r\n");
    assert_eq!(err(&too_deep), "Protocol error: too many nested arrays");
    let long = vec![b'a'; 64 * 1024 + 1];
    assert_eq!(err(&long), "Protocol error: too big inline request");
}

#[test]
fn malformed_input_is_an_error() {
    assert_eq!(err(b"*x\r\n"), "Protocol error: invalid multibulk length");
    assert_eq!(err(b"*-5\r\n"), "Protocol error: invalid multibulk length");
    assert_eq!(err(b"*+1\r\n"), "Protocol error: invalid multibulk length");
    assert_eq!(err(b"*\r\n"), "Protocol error: invalid multibulk length");
    assert_eq!(err(b"$x\r\n"), "Protocol error: invalid bulk length");
    assert_eq!(err(b"*1\r\n$-5\r\n"), "Protocol error: invalid bulk length");
    assert_eq!(err(b"*1\r\n$\r\n"), "Protocol error: invalid bulk length");
    assert_eq!(err(b":12x\r\n"), "Protocol error: invalid integer");
    assert_eq!(err(b":+5\r\n"), "Protocol error: invalid integer");
    assert_eq!(
        err(b":9223372036854775808\r\n"),
        "Protocol error: invalid integer"
    );
    assert_eq!(err(b":\r\n"), "Protocol error: invalid integer");
    assert_eq!(
        err(b"*1\r\n$3\r\nabcd\r\n"),
        "Protocol error: expected '\\r\\n' after bulk string"
    );
    assert_eq!(err(b"+OK\rx\r\n"), "Protocol error: expected '\\r\\n'");
    assert_eq!(err(b"+OK\nx\r\n"), "Protocol error: unexpected '\\n'");
    assert_eq!(
        err(b"*1\r\n!x\r\n"),
        "Protocol error: unexpected type byte '!'"
    );
    assert_eq!(
        err(b"get \"a\r\n"),
        "Protocol error: unbalanced quotes in request"
    );
    assert_eq!(
        err(b"get \"a\"b\r\n"),
        "Protocol error: unbalanced quotes in request"
    );
    // The decoder stays failed.
    let mut d = Decoder::new();
    let mut buf = BytesMut::from(&b"$x\r\n"[..]);
    assert!(d.decode(&mut buf).is_err());
    buf.extend_from_slice(b"+OK\r\n");
    assert!(d.decode(&mut buf).is_err());
}

#[test]
fn accepted_edge_forms() {
    assert_eq!(one(b"*01\r\n$04\r\nping\r\n"), Value::command(["ping"]));
    assert_eq!(one(b":-0\r\n"), Value::Integer(0));
    assert_eq!(one(b":-9223372036854775808\r\n"), Value::Integer(i64::MIN));
    // An empty inline line is an empty array (Envoy answers it `invalid request`).
    assert_eq!(one(b"\r\n"), Value::Array(vec![]));
    // Envoy needs "\r\n" to end an inline line: a bare "\n" does not.
    let mut d = Decoder::new();
    let mut buf = BytesMut::from(&b"PING\n"[..]);
    assert_eq!(d.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"\r\n");
    assert_eq!(
        d.decode(&mut buf).unwrap().unwrap().value,
        Value::command(["PING"])
    );
}

#[test]
fn inline_split_like_redis() {
    let s = |l: &[u8]| {
        split_inline(l).map(|v| {
            v.into_iter()
                .map(|a| String::from_utf8_lossy(&a).into_owned())
                .collect::<Vec<_>>()
        })
    };
    assert_eq!(
        s(b"  set  a\tb  "),
        Some(vec!["set".into(), "a".into(), "b".into()])
    );
    assert_eq!(
        s(b"set \"a b\" c"),
        Some(vec!["set".into(), "a b".into(), "c".into()])
    );
    assert_eq!(
        s(b"x \"\\x41\\n\\\"\""),
        Some(vec!["x".into(), "A\n\"".into()])
    );
    assert_eq!(s(b"x 'it\\'s'"), Some(vec!["x".into(), "it's".into()]));
    assert_eq!(s(b"x 'a\\nb'"), Some(vec!["x".into(), "a\\nb".into()]));
    assert_eq!(s(b"x ''"), Some(vec!["x".into(), "".into()]));
    assert_eq!(s(b""), Some(vec![]));
    assert_eq!(s(b"x 'a"), None);
    assert_eq!(s(b"x 'a'b"), None);
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = fastrand::Rng::with_seed(0x5eed_2026);
    let alphabet = b"*$+-:\r\n0123456789-ab \"'\\x{}";
    for round in 0..20_000 {
        let len = rng.usize(0..64);
        let input: Vec<u8> = (0..len)
            .map(|_| {
                if rng.bool() {
                    alphabet[rng.usize(..alphabet.len())]
                } else {
                    rng.u8(..)
                }
            })
            .collect();
        let mut d = Decoder::with_limits(Limits {
            max_depth: 4,
            max_line_len: 16,
            ..Limits::default()
        });
        let mut buf = BytesMut::new();
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len());
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Ok(Some(f)) = d.decode(&mut buf) {
                // What was decoded re-encodes to the bytes it came from.
                if !f.inline {
                    assert_eq!(f.value.to_bytes(), f.raw, "round {round}");
                }
            }
        }
    }
}

#[test]
fn random_values_roundtrip_at_random_splits() {
    fn random_value(rng: &mut fastrand::Rng, depth: usize) -> Value {
        match rng.u8(..if depth > 3 { 5 } else { 7 }) {
            0 => Value::simple(format!("s{}", rng.u32(..))),
            1 => Value::error(format!("ERR {}", rng.u16(..))),
            2 => Value::Integer(rng.i64(..)),
            3 => Value::bulk(
                (0..rng.usize(0..300))
                    .map(|_| rng.u8(..))
                    .collect::<Vec<u8>>(),
            ),
            4 => Value::Null,
            5 => Value::Array(
                (0..rng.usize(0..5))
                    .map(|_| random_value(rng, depth + 1))
                    .collect(),
            ),
            _ => Value::NullArray,
        }
    }
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..500 {
        let values: Vec<Value> = (0..rng.usize(1..6))
            .map(|_| random_value(&mut rng, 0))
            .collect();
        let mut wire = BytesMut::new();
        for v in &values {
            v.encode(&mut wire);
        }
        let mut d = Decoder::new();
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        while !rest.is_empty() {
            let n = rng.usize(1..=rest.len().min(40));
            buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f.value);
            }
        }
        assert_eq!(got, values);
    }
}
