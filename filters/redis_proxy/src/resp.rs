//! RESP2: values, an encoder and an incremental decoder. Pure: bytes in, values out.
//!
//! The decoder is fed whatever the socket delivered. It keeps its place between
//! calls (the offset reached, the arrays still open, the bulk string it is waiting
//! for), so a value split at any byte boundary decodes the same, and a large bulk
//! string fed in small chunks costs one length check per chunk, never a re-scan.
//! A declared size only bounds what may arrive: nothing is allocated up front.
//!
//! The accepted language and its limits follow Envoy 1.40's redis_proxy, measured
//! against the real binary: a bulk string of at most 512 MiB, an array of at most
//! 2,000,000 elements, at most 127 nested arrays, `\r\n` after every line (a bare
//! `\r` or `\n` does not end one), and inline commands split as redis-server splits
//! them (quotes and escapes). An empty inline line decodes to an empty array, which
//! the command layer answers `invalid request`, as Envoy does.

use std::fmt;
use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// One RESP2 value.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Value {
    /// `+text\r\n`.
    SimpleString(Bytes),
    /// `-text\r\n`.
    Error(Bytes),
    /// `:123\r\n`.
    Integer(i64),
    /// `$3\r\nabc\r\n`.
    BulkString(Bytes),
    /// The null bulk string, `$-1\r\n`.
    Null,
    /// `*2\r\n...`; may nest.
    Array(Vec<Value>),
    /// The null array, `*-1\r\n`.
    NullArray,
}

impl Value {
    /// A simple string (`+...`).
    pub fn simple(text: impl Into<Bytes>) -> Value {
        Value::SimpleString(text.into())
    }

    /// An error (`-...`).
    pub fn error(text: impl Into<Bytes>) -> Value {
        Value::Error(text.into())
    }

    /// A bulk string (`$n`).
    pub fn bulk(data: impl Into<Bytes>) -> Value {
        Value::BulkString(data.into())
    }

    /// A request as clients send it: an array of bulk strings.
    pub fn command<I, B>(args: I) -> Value
    where
        I: IntoIterator<Item = B>,
        B: Into<Bytes>,
    {
        Value::Array(
            args.into_iter()
                .map(|a| Value::BulkString(a.into()))
                .collect(),
        )
    }

    /// The arguments of a request, if it is a non-empty array of bulk strings
    /// (the only shape Envoy accepts as a command; anything else is `invalid request`).
    pub fn as_command(&self) -> Option<Vec<&Bytes>> {
        match self {
            Value::Array(items) if !items.is_empty() => items
                .iter()
                .map(|v| match v {
                    Value::BulkString(b) => Some(b),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }

    /// Appends the wire form of this value to `out`.
    ///
    /// A simple string or error cannot carry `\r` or `\n`; any found is written as a
    /// space, so the output is always one well-formed value.
    pub fn encode(&self, out: &mut BytesMut) {
        match self {
            Value::SimpleString(s) => encode_line(out, b'+', s),
            Value::Error(s) => encode_line(out, b'-', s),
            Value::Integer(n) => {
                out.put_u8(b':');
                put_int(out, *n);
                out.put_slice(b"\r\n");
            }
            Value::BulkString(b) => {
                out.put_u8(b'$');
                put_int(out, b.len() as i64);
                out.put_slice(b"\r\n");
                out.put_slice(b);
                out.put_slice(b"\r\n");
            }
            Value::Null => out.put_slice(b"$-1\r\n"),
            Value::Array(items) => {
                out.put_u8(b'*');
                put_int(out, items.len() as i64);
                out.put_slice(b"\r\n");
                for item in items {
                    item.encode(out);
                }
            }
            Value::NullArray => out.put_slice(b"*-1\r\n"),
        }
    }

    /// The wire form of this value.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::new();
        self.encode(&mut out);
        out.freeze()
    }
}

fn encode_line(out: &mut BytesMut, kind: u8, text: &[u8]) {
    out.put_u8(kind);
    if text.iter().any(|&b| b == b'\r' || b == b'\n') {
        out.extend(
            text.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
    } else {
        out.put_slice(text);
    }
    out.put_slice(b"\r\n");
}

fn put_int(out: &mut BytesMut, n: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        out.put_u8(b'-');
    }
    out.put_slice(&digits[i..]);
}

/// What the decoder accepts. The defaults are Envoy 1.40's (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest declared bulk string length.
    pub max_bulk_len: usize,
    /// Largest declared array length.
    pub max_array_len: usize,
    /// Most arrays open at once.
    pub max_depth: usize,
    /// Longest line (inline command, simple string, error or header) before its `\r\n`.
    pub max_line_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 512 * 1024 * 1024,
            max_array_len: 2_000_000,
            max_depth: 127,
            max_line_len: 64 * 1024,
        }
    }
}

/// Malformed input. Its text follows redis-server's wording where it has one
/// (`Protocol error: invalid bulk length`). Envoy answers any of them with
/// [`DOWNSTREAM_PROTOCOL_ERROR`] and closes the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError {
    message: String,
}

impl ProtocolError {
    fn new(detail: impl fmt::Display) -> Self {
        ProtocolError {
            message: format!("Protocol error: {detail}"),
        }
    }

    /// The message, starting with `Protocol error: `.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProtocolError {}

/// The error text Envoy 1.40 writes to a client that sent malformed RESP, just
/// before it closes the connection.
pub const DOWNSTREAM_PROTOCOL_ERROR: &str = "downstream protocol error";

/// One decoded top-level value and the exact bytes it came from (so a proxy can
/// forward the client's own bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// The value.
    pub value: Value,
    /// Its bytes on the wire. For an inline command these are the inline line, not
    /// the array encoding of [`Frame::value`].
    pub raw: Bytes,
    /// True when the value came from an inline command.
    pub inline: bool,
}

/// A value still being built, as ranges into the buffer that holds its bytes.
#[derive(Debug)]
enum Node {
    Simple(Range<usize>),
    Error(Range<usize>),
    Integer(i64),
    Bulk(Range<usize>),
    Null,
    Array(Vec<Node>),
    NullArray,
    Inline(Vec<Vec<u8>>),
}

impl Node {
    fn into_value(self, raw: &Bytes) -> Value {
        match self {
            Node::Simple(r) => Value::SimpleString(raw.slice(r)),
            Node::Error(r) => Value::Error(raw.slice(r)),
            Node::Integer(n) => Value::Integer(n),
            Node::Bulk(r) => Value::BulkString(raw.slice(r)),
            Node::Null => Value::Null,
            Node::Array(items) => {
                Value::Array(items.into_iter().map(|n| n.into_value(raw)).collect())
            }
            Node::NullArray => Value::NullArray,
            Node::Inline(args) => Value::Array(
                args.into_iter()
                    .map(|a| Value::BulkString(Bytes::from(a)))
                    .collect(),
            ),
        }
    }
}

/// An array still waiting for elements.
#[derive(Debug)]
struct Open {
    items: Vec<Node>,
    remaining: usize,
}

/// Incremental RESP2 decoder. Feed it a growing buffer; it takes whole values off
/// the front.
///
/// ```
/// use bytes::BytesMut;
/// use legate_redis_proxy::resp::{Decoder, Value};
///
/// let mut d = Decoder::new();
/// let mut buf = BytesMut::from(&b"*1\r\n$4\r\nPI"[..]);
/// assert_eq!(d.decode(&mut buf), Ok(None));
/// buf.extend_from_slice(b"NG\r\n");
/// let frame = d.decode(&mut buf).unwrap().unwrap();
/// assert_eq!(frame.value, Value::command(["PING"]));
/// ```
#[derive(Debug, Default)]
pub struct Decoder {
    limits: Limits,
    /// Offset of the first byte not yet parsed (bytes before it belong to the value
    /// being built).
    pos: usize,
    /// Offset up to which the current line was searched for `\r\n`.
    scan: usize,
    /// Declared length of the bulk string whose header was read.
    bulk: Option<usize>,
    /// Arrays still open, outermost first.
    stack: Vec<Open>,
    /// Set once input was malformed: every later call returns it.
    failed: Option<ProtocolError>,
}

impl Decoder {
    /// A decoder with Envoy's limits.
    pub fn new() -> Self {
        Self::default()
    }

    /// A decoder with the given limits.
    pub fn with_limits(limits: Limits) -> Self {
        Decoder {
            limits,
            ..Self::default()
        }
    }

    /// Takes the next whole value off the front of `buf`.
    ///
    /// `Ok(None)` means more bytes are needed: append them to `buf` (keeping what
    /// is there) and call again. After an error the stream is unusable and every
    /// later call returns the same error.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.step(buf) {
            Ok(Some((node, inline))) => {
                let raw = buf.split_to(self.pos).freeze();
                self.pos = 0;
                self.scan = 0;
                Ok(Some(Frame {
                    value: node.into_value(&raw),
                    raw,
                    inline,
                }))
            }
            Ok(None) => Ok(None),
            Err(e) => {
                self.failed = Some(e.clone());
                Err(e)
            }
        }
    }

    fn step(&mut self, buf: &[u8]) -> Result<Option<(Node, bool)>, ProtocolError> {
        loop {
            if let Some(len) = self.bulk {
                let end = self.pos + len;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(ProtocolError::new("expected '\\r\\n' after bulk string"));
                }
                let node = Node::Bulk(self.pos..end);
                self.bulk = None;
                self.pos = end + 2;
                self.scan = self.pos;
                if let Some(done) = self.complete(node) {
                    return Ok(Some((done, false)));
                }
                continue;
            }

            let Some(cr) = self.find_line_end(buf)? else {
                return Ok(None);
            };
            let start = self.pos;
            let kind = buf[start];
            let body = start + 1..cr;
            self.pos = cr + 2;
            self.scan = self.pos;
            let top = self.stack.is_empty();
            let node = match kind {
                b'+' => Node::Simple(body),
                b'-' => Node::Error(body),
                b':' => Node::Integer(
                    parse_int(&buf[body]).ok_or_else(|| ProtocolError::new("invalid integer"))?,
                ),
                b'$' => match parse_int(&buf[body]) {
                    Some(-1) => Node::Null,
                    Some(n) if n >= 0 && n as u64 <= self.limits.max_bulk_len as u64 => {
                        self.bulk = Some(n as usize);
                        continue;
                    }
                    _ => return Err(ProtocolError::new("invalid bulk length")),
                },
                b'*' => match parse_int(&buf[body]) {
                    Some(-1) => Node::NullArray,
                    Some(0) => Node::Array(Vec::new()),
                    Some(n) if n > 0 && n as u64 <= self.limits.max_array_len as u64 => {
                        if self.stack.len() >= self.limits.max_depth {
                            return Err(ProtocolError::new("too many nested arrays"));
                        }
                        let n = n as usize;
                        self.stack.push(Open {
                            items: Vec::with_capacity(n.min(16)),
                            remaining: n,
                        });
                        continue;
                    }
                    _ => return Err(ProtocolError::new("invalid multibulk length")),
                },
                _ if top => {
                    let args = split_inline(&buf[start..cr])
                        .ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))?;
                    return Ok(Some((Node::Inline(args), true)));
                }
                other => {
                    return Err(ProtocolError::new(format_args!(
                        "unexpected type byte '{}'",
                        other.escape_ascii()
                    )));
                }
            };
            if let Some(done) = self.complete(node) {
                return Ok(Some((done, false)));
            }
        }
    }

    /// Finds the `\r` of the `\r\n` ending the line that starts at `self.pos`,
    /// resuming where the last search stopped.
    fn find_line_end(&mut self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        let mut i = self.scan.max(self.pos);
        while let Some(off) = buf[i..].iter().position(|&b| b == b'\r' || b == b'\n') {
            let at = i + off;
            if buf[at] == b'\n' {
                // A bare '\n' ends nothing in Envoy's grammar; inline lines keep it
                // as data, typed lines reject it.
                if buf.get(self.pos).is_some_and(|b| b"+-:$*".contains(b)) {
                    return Err(ProtocolError::new("unexpected '\\n'"));
                }
                i = at + 1;
                continue;
            }
            match buf.get(at + 1) {
                None => {
                    self.scan = at;
                    return self.check_line_len(at).map(|()| None);
                }
                Some(b'\n') => {
                    self.check_line_len(at)?;
                    return Ok(Some(at));
                }
                Some(_) => return Err(ProtocolError::new("expected '\\r\\n'")),
            }
        }
        self.scan = buf.len();
        self.check_line_len(buf.len()).map(|()| None)
    }

    fn check_line_len(&self, end: usize) -> Result<(), ProtocolError> {
        if end - self.pos > self.limits.max_line_len {
            return Err(ProtocolError::new(
                if self.stack.is_empty() && self.pos < end {
                    "too big inline request"
                } else {
                    "too big line"
                },
            ));
        }
        Ok(())
    }

    /// Adds a finished node to the innermost open array, closing arrays that are
    /// now full. Returns the top-level value once it is whole.
    fn complete(&mut self, mut node: Node) -> Option<Node> {
        loop {
            let Some(open) = self.stack.last_mut() else {
                return Some(node);
            };
            open.items.push(node);
            open.remaining -= 1;
            if open.remaining > 0 {
                return None;
            }
            let open = self.stack.pop()?;
            node = Node::Array(open.items);
        }
    }
}

/// Parses a RESP integer: an optional `-` and 1 to 19 digits, within `i64`.
/// Leading zeros are accepted; `+` and empty are not (as in Envoy).
fn parse_int(text: &[u8]) -> Option<i64> {
    let (neg, digits) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, text),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut n: i128 = 0;
    for &d in digits {
        n = n * 10 + i128::from(d - b'0');
        if n > i128::from(i64::MAX) + 1 {
            return None;
        }
    }
    let n = if neg { -n } else { n };
    i64::try_from(n).ok()
}

/// Splits an inline command line the way redis-server does: runs of non-space
/// bytes, `"..."` with `\xHH`, `\n`, `\r`, `\t`, `\b`, `\a` and `\<any>` escapes,
/// and `'...'` with only `\'`. A closing quote must be followed by a space or the
/// end of the line. `None` for unbalanced quotes.
pub fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && is_space(line[i]) {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let mut in_double = false;
        let mut in_single = false;
        loop {
            let Some(&c) = line.get(i) else {
                if in_double || in_single {
                    return None;
                }
                break;
            };
            if in_double {
                if c == b'\\' && line.get(i + 1) == Some(&b'x') {
                    let hex = |b: Option<&u8>| b.and_then(|b| (*b as char).to_digit(16));
                    if let (Some(h), Some(l)) = (hex(line.get(i + 2)), hex(line.get(i + 3))) {
                        cur.push((h * 16 + l) as u8);
                        i += 4;
                        continue;
                    }
                }
                if c == b'\\' && i + 1 < line.len() {
                    cur.push(match line[i + 1] {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    i += 2;
                    continue;
                }
                if c == b'"' {
                    if line.get(i + 1).is_some_and(|&b| !is_space(b)) {
                        return None;
                    }
                    i += 1;
                    break;
                }
                cur.push(c);
                i += 1;
            } else if in_single {
                if c == b'\\' && line.get(i + 1) == Some(&b'\'') {
                    cur.push(b'\'');
                    i += 2;
                    continue;
                }
                if c == b'\'' {
                    if line.get(i + 1).is_some_and(|&b| !is_space(b)) {
                        return None;
                    }
                    i += 1;
                    break;
                }
                cur.push(c);
                i += 1;
            } else {
                match c {
                    _ if is_space(c) => break,
                    b'"' => in_double = true,
                    b'\'' => in_single = true,
                    _ => cur.push(c),
                }
                i += 1;
            }
        }
        args.push(cur);
    }
}
