//! RESP2 decoder properties, checked with proptest (the fixed cases are in resp.rs):
//! round trips at any split points, pipelines mixing typed and inline requests,
//! arbitrary bytes, and memory that stays bounded whatever size a header declares.

use bytes::{Bytes, BytesMut};
use legate_peak_alloc::{Counting, peak_alloc};
use legate_redis_proxy::resp::{Decoder, Frame, Limits, ProtocolError, Value};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::FileFailurePersistence;

// ---------------------------------------------------------------- allocation count

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn the_allocation_count_is_live() {
    // Else the bounds below would hold vacuously.
    let (v, peak) = peak_alloc(|| vec![0u8; 10_000]);
    assert!(peak >= 10_000, "{peak}");
    drop(v);
}

// ---------------------------------------------------------------- feeding

/// What a connection saw: the frames, then the error if one came, and the bytes
/// left in the buffer.
struct Fed {
    frames: Vec<Frame>,
    error: Option<ProtocolError>,
    rest: BytesMut,
    /// Most bytes one `decode` call had allocated at once.
    peak_alloc: usize,
}

/// Feeds `wire` to a fresh decoder in pieces cut at `cuts`, decoding after each piece
/// until it asks for more, as a proxy does after each read. Checks on the way that
/// an error, once returned, is all the decoder ever returns again.
fn feed(limits: Limits, wire: &[u8], cuts: &[Index]) -> Result<Fed, TestCaseError> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
    points.push(wire.len());
    points.sort_unstable();
    let mut d = Decoder::with_limits(limits);
    let mut buf = BytesMut::with_capacity(wire.len());
    let mut fed = Fed {
        frames: Vec::new(),
        error: None,
        rest: BytesMut::new(),
        peak_alloc: 0,
    };
    let mut at = 0;
    for point in points {
        buf.extend_from_slice(&wire[at..point]);
        at = point;
        loop {
            let (result, peak) = peak_alloc(|| d.decode(&mut buf));
            fed.peak_alloc = fed.peak_alloc.max(peak);
            match result {
                Ok(Some(frame)) => {
                    prop_assert!(fed.error.is_none(), "a value after {:?}", fed.error);
                    fed.frames.push(frame);
                }
                Ok(None) => {
                    prop_assert!(fed.error.is_none(), "Ok(None) after {:?}", fed.error);
                    break;
                }
                Err(e) => match &fed.error {
                    Some(first) => {
                        prop_assert_eq!(&e, first);
                        break;
                    }
                    // Call again at once: the same error must come back.
                    None => fed.error = Some(e),
                },
            }
        }
    }
    fed.rest = buf;
    Ok(fed)
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 0..16)
}

// ---------------------------------------------------------------- values

/// The text of a simple string or an error: any byte but CR and LF, which the
/// encoder would turn into spaces.
fn line_text() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(
        any::<u8>().prop_map(|b| if b == b'\r' || b == b'\n' { b'_' } else { b }),
        0..24,
    )
    .prop_map(Bytes::from)
}

/// Bulk string data: arbitrary bytes, with CRLF and RESP-looking pieces inside.
fn payload() -> impl Strategy<Value = Bytes> {
    let piece = prop_oneof![
        4 => any::<u8>().prop_map(|b| vec![b]),
        1 => prop::sample::select(vec![&b"\r\n"[..], b"\r", b"\n", b"$-1\r\n", b"*2\r\n", b"$3\r\n"])
            .prop_map(<[u8]>::to_vec),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|p| Bytes::from(p.concat()))
}

/// Any RESP2 value, arrays nested up to 6 deep.
fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        line_text().prop_map(Value::SimpleString),
        line_text().prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        prop_oneof![Just(0i64), Just(-1), -20i64..20].prop_map(Value::Integer),
        payload().prop_map(Value::BulkString),
        Just(Value::Null),
        Just(Value::NullArray),
    ];
    leaf.prop_recursive(6, 64, 6, |inner| {
        prop::collection::vec(inner, 0..6).prop_map(Value::Array)
    })
}

/// An inline command: its arguments and the line a client would type for them,
/// each argument bare, in double quotes (escapes) or in single quotes.
fn inline_command() -> impl Strategy<Value = (Vec<Vec<u8>>, Vec<u8>)> {
    let arg = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..12),
        prop::collection::vec(prop::sample::select(b"abcGETSET019-+$*:_".to_vec()), 1..8),
    ];
    let sep = prop::sample::select(vec![&b" "[..], b"  ", b"\t", b" \t "]);
    (
        prop::collection::vec((arg, 0u8..3, sep), 0..6),
        prop::sample::select(vec![&b""[..], b" "]),
    )
        .prop_map(|(parts, lead)| {
            let mut line = lead.to_vec();
            let mut args = Vec::new();
            for (i, (arg, style, sep)) in parts.into_iter().enumerate() {
                if i > 0 {
                    line.extend_from_slice(sep);
                }
                // A line starting with a type byte would be a typed value.
                let first = line.is_empty();
                render_arg(&mut line, &arg, style, first);
                args.push(arg);
            }
            line.extend_from_slice(b"\r\n");
            (args, line)
        })
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

fn render_arg(line: &mut Vec<u8>, arg: &[u8], style: u8, first: bool) {
    // Bare: no separator or quote inside, and no type byte to start a line.
    let needs_quotes = |b: u8| is_space(b) || b == b'"' || b == b'\'';
    let bare_ok = match arg.first() {
        None => false,
        Some(b) if first && b"+-:$*".contains(b) => false,
        Some(_) => !arg.iter().any(|&b| needs_quotes(b)),
    };
    // In single quotes only `\'` is an escape: a trailing `\` would eat the quote.
    let single_ok = !arg.iter().any(|&b| b == b'\r' || b == b'\n') && arg.last() != Some(&b'\\');
    match style {
        0 if bare_ok => line.extend_from_slice(arg),
        1 if single_ok => {
            line.push(b'\'');
            for &b in arg {
                if b == b'\'' {
                    line.push(b'\\');
                }
                line.push(b);
            }
            line.push(b'\'');
        }
        _ => {
            line.push(b'"');
            for &b in arg {
                match b {
                    b'"' | b'\\' => line.extend_from_slice(&[b'\\', b]),
                    b'\r' => line.extend_from_slice(b"\\r"),
                    b'\n' => line.extend_from_slice(b"\\n"),
                    0x20..=0x7e => line.push(b),
                    _ => line.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
                }
            }
            line.push(b'"');
        }
    }
}

/// One request of a pipeline, with the frame it must decode to.
#[derive(Clone, Debug)]
enum Request {
    Typed(Value),
    Inline(Vec<Vec<u8>>, Vec<u8>),
}

impl Request {
    fn wire(&self) -> Bytes {
        match self {
            Request::Typed(v) => v.to_bytes(),
            Request::Inline(_, line) => Bytes::from(line.clone()),
        }
    }

    fn expected(&self) -> Frame {
        match self {
            Request::Typed(v) => Frame {
                value: v.clone(),
                raw: v.to_bytes(),
                inline: false,
            },
            Request::Inline(args, line) => Frame {
                value: Value::command(args.iter().map(|a| Bytes::from(a.clone()))),
                raw: Bytes::from(line.clone()),
                inline: true,
            },
        }
    }
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        value().prop_map(Request::Typed),
        inline_command().prop_map(|(args, line)| Request::Inline(args, line)),
    ]
}

// ---------------------------------------------------------------- garbage

/// Bytes that are mostly RESP-shaped but anything may go wrong: random bytes, type
/// bytes, lengths, line ends, quotes and whole encoded values, in any order.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let tokens: Vec<&'static [u8]> = vec![
        b"*",
        b"$",
        b"+",
        b"-",
        b":",
        b"\r\n",
        b"\r",
        b"\n",
        b"0",
        b"1",
        b"3",
        b"-1",
        b"-0",
        b"01",
        b"99999999999999999999",
        b"536870912",
        b"\"",
        b"'",
        b"\\",
        b"\\x4",
        b" ",
        b"GET",
        b"*1\r\n",
        b"*2\r\n",
        b"$3\r\nabc\r\n",
        b"$0\r\n\r\n",
        b":7\r\n",
        b"+OK\r\n",
    ];
    let piece = prop_oneof![
        3 => any::<u8>().prop_map(|b| vec![b]),
        4 => prop::sample::select(tokens).prop_map(<[u8]>::to_vec),
        1 => value().prop_map(|v| v.to_bytes().to_vec()),
    ];
    prop::collection::vec(piece, 0..48).prop_map(|p| p.concat())
}

/// Small limits, so that garbage reaches them; sometimes Envoy's.
fn limits() -> impl Strategy<Value = Limits> {
    prop_oneof![
        3 => (0usize..80, 0usize..10, 0usize..6, 0usize..40).prop_map(|(bulk, array, depth, line)| {
            Limits {
                max_bulk_len: bulk,
                max_array_len: array,
                max_depth: depth,
                max_line_len: line,
            }
        }),
        1 => Just(Limits::default()),
    ]
}

// ---------------------------------------------------------------- properties

/// A bound on what decoding `input` may allocate with `depth` arrays open: a few
/// bytes per input byte (values, inline arguments) and a little per open array,
/// never anything that grows with a declared size.
fn alloc_bound(input: usize, depth: usize) -> usize {
    64 * input + 1024 * (depth + 1) + 16 * 1024
}

proptest! {
    // About a second in all (debug build). A shrunk failure is kept next to this file and tried
    // first on the next run.
    #![proptest_config(ProptestConfig {
        cases: 1024,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// Values encoded back to back (a pipeline) decode to themselves and their own
    /// bytes, wherever the reads cut them.
    #[test]
    fn values_roundtrip_at_any_split(values in prop::collection::vec(value(), 1..6), cuts in cuts()) {
        let mut wire = BytesMut::new();
        for v in &values {
            v.encode(&mut wire);
        }
        let fed = feed(Limits::default(), &wire, &cuts)?;
        prop_assert_eq!(fed.error, None);
        prop_assert!(fed.rest.is_empty(), "left over: {:?}", fed.rest);
        let got: Vec<&Value> = fed.frames.iter().map(|f| &f.value).collect();
        prop_assert_eq!(got, values.iter().collect::<Vec<_>>());
        for (f, v) in fed.frames.iter().zip(&values) {
            prop_assert_eq!(&f.raw, &v.to_bytes());
            prop_assert!(!f.inline);
        }
    }

    /// Typed and inline requests mixed in one pipeline decode to the expected
    /// frames (an inline line keeps its own bytes as `raw`), wherever the reads cut.
    #[test]
    fn pipelines_with_inline_commands(requests in prop::collection::vec(request(), 1..8), cuts in cuts()) {
        let wire: Vec<u8> = requests.iter().flat_map(|r| r.wire().to_vec()).collect();
        let fed = feed(Limits::default(), &wire, &cuts)?;
        prop_assert_eq!(fed.error, None);
        prop_assert!(fed.rest.is_empty(), "left over: {:?}", fed.rest);
        let expected: Vec<Frame> = requests.iter().map(Request::expected).collect();
        prop_assert_eq!(fed.frames, expected);
    }

    /// Arbitrary bytes never panic; each call yields a value, asks for more or fails,
    /// and a failure is final. The frames and whether it fails do not depend on
    /// where the reads cut; the frames are exactly the bytes consumed; every value
    /// re-encodes to bytes that decode to it again.
    #[test]
    fn garbage_is_decoded_waited_for_or_refused(
        wire in garbage(),
        limits in limits(),
        cuts in cuts(),
    ) {
        let whole = feed(limits, &wire, &[])?;
        let split = feed(limits, &wire, &cuts)?;
        prop_assert_eq!(&split.frames, &whole.frames);
        prop_assert_eq!(split.error.is_some(), whole.error.is_some(), "{:?} vs {:?}", split.error, whole.error);

        let consumed: Vec<u8> = split.frames.iter().flat_map(|f| f.raw.to_vec()).collect();
        prop_assert!(wire.starts_with(&consumed));
        if split.error.is_none() {
            prop_assert_eq!(&split.rest[..], &wire[consumed.len()..]);
        }
        for f in &split.frames {
            let again = feed(Limits::default(), &f.value.to_bytes(), &[])?;
            prop_assert_eq!(again.error, None);
            prop_assert_eq!(again.frames.len(), 1);
            prop_assert_eq!(&again.frames[0].value, &f.value);
        }
        prop_assert!(split.peak_alloc <= alloc_bound(wire.len(), limits.max_depth),
            "{} bytes allocated for {} bytes of input", split.peak_alloc, wire.len());
    }

    /// With Envoy's limits, arrays declaring up to 2,000,000 elements nested up to
    /// 127 deep and then a bulk string declaring up to 512 MiB, followed by a few
    /// bytes, only make the decoder wait; it allocates for what arrived, never for
    /// what was declared.
    #[test]
    fn declared_sizes_within_envoys_limits_are_waited_for(
        arrays in prop::collection::vec(prop_oneof![Just(2_000_000usize), 1usize..=2_000_000], 0..=127),
        bulk in prop_oneof![Just(536_870_912usize), 64usize..=536_870_912],
        tail in prop::collection::vec(any::<u8>(), 0..64),
        cuts in cuts(),
    ) {
        let mut wire = Vec::new();
        for n in &arrays {
            wire.extend_from_slice(format!("*{n}\r\n").as_bytes());
        }
        wire.extend_from_slice(format!("${bulk}\r\n").as_bytes());
        wire.extend_from_slice(&tail);
        let fed = feed(Limits::default(), &wire, &cuts)?;
        prop_assert!(fed.frames.is_empty());
        prop_assert_eq!(fed.error, None);
        prop_assert_eq!(fed.rest.len(), wire.len());
        prop_assert!(fed.peak_alloc <= alloc_bound(wire.len(), arrays.len()),
            "{} bytes allocated for {} bytes of input", fed.peak_alloc, wire.len());
    }

    /// With small limits, any declared size is refused above its limit and waited
    /// for up to it, and the memory a few bytes after the header cost stays bounded
    /// (`$999999999` included) whatever the size.
    #[test]
    fn declared_sizes_under_small_limits(
        bulk_limit in 0usize..4096,
        array_limit in 0usize..64,
        depth_limit in 0usize..8,
        opened in 0usize..8,
        kind in prop::sample::select(vec![b'$', b'*']),
        declared in prop_oneof![
            Just(999_999_999u64),
            Just(i64::MAX as u64),
            Just(u64::MAX),
            0u64..5000,
            any::<u64>(),
        ],
        tail in prop::collection::vec(any::<u8>(), 0..32),
        cuts in cuts(),
    ) {
        let limits = Limits {
            max_bulk_len: bulk_limit,
            max_array_len: array_limit,
            max_depth: depth_limit,
            max_line_len: 64,
        };
        let opened = opened.min(depth_limit);
        let mut wire = b"*2\r\n".repeat(opened);
        if array_limit < 2 {
            wire.clear();
        }
        let opened = if array_limit < 2 { 0 } else { opened };
        wire.extend_from_slice(format!("{}{declared}\r\n", kind as char).as_bytes());
        wire.extend_from_slice(&tail);
        let fed = feed(limits, &wire, &cuts)?;
        prop_assert!(fed.peak_alloc <= alloc_bound(wire.len(), depth_limit),
            "{} bytes allocated for {} bytes of input", fed.peak_alloc, wire.len());

        let limit = if kind == b'$' { bulk_limit } else { array_limit };
        let too_deep = kind == b'*' && declared > 0 && declared <= limit as u64 && opened >= depth_limit;
        if declared > limit as u64 || too_deep {
            // Refused as soon as the header is whole, whatever follows.
            let expected = match kind {
                b'$' => "Protocol error: invalid bulk length",
                _ if too_deep => "Protocol error: too many nested arrays",
                _ => "Protocol error: invalid multibulk length",
            };
            prop_assert!(fed.frames.is_empty());
            prop_assert_eq!(fed.error.as_ref().map(ProtocolError::message), Some(expected));
        } else if kind == b'$' && (tail.len() as u64) < declared + 2 {
            // Not all of the bulk string arrived: wait, holding only what did.
            prop_assert!(fed.frames.is_empty());
            prop_assert_eq!(fed.error, None);
            prop_assert_eq!(fed.rest.len(), wire.len());
        }
    }
}
