//! MySQL packet framing: a 3-byte little-endian length and a 1-byte sequence id,
//! then the payload. A payload of exactly `0xFFFFFF` bytes continues in the next
//! packet; the fragments are joined into one logical payload.
//!
//! The [`Decoder`] is incremental: it is fed chunks of any size, keeps its state
//! between calls and never looks at a byte twice. It keeps at most `retain` bytes of
//! each logical payload (the caller chooses per packet), so a result-set row or a
//! blob of any size costs no memory, and nothing is allocated for a declared length
//! before its bytes have arrived.

use bytes::{Bytes, BytesMut};

/// Largest payload of one physical packet; a packet this long is continued.
pub const MAX_PACKET_PAYLOAD: usize = 0xFF_FFFF;

/// One logical packet: the fragments of a multi-packet payload joined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// Sequence id of the first fragment.
    pub seq: u8,
    /// Sequence id of the last fragment (equal to `seq` for a single packet).
    pub last_seq: u8,
    /// Length of the whole logical payload.
    pub len: usize,
    /// The first `min(len, retain)` bytes of the payload.
    pub payload: Bytes,
}

impl Packet {
    /// Whether bytes past the retained prefix were dropped.
    pub fn is_truncated(&self) -> bool {
        self.payload.len() < self.len
    }
}

/// A framing error: the fragments of one payload are out of sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameError {
    /// Sequence id the continuation should have had.
    pub expected: u8,
    /// Sequence id it had.
    pub got: u8,
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "continuation packet has sequence id {}, expected {}",
            self.got, self.expected
        )
    }
}

impl std::error::Error for FrameError {}

/// Incremental packet decoder for one direction of a connection.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Header bytes seen so far (up to 4).
    header: [u8; 4],
    header_len: usize,
    /// Payload bytes still to come in the current physical packet.
    remaining: usize,
    /// Whether a physical packet body is in progress.
    in_body: bool,
    /// Whether the current physical packet is `0xFFFFFF` long (so one more follows).
    continued: bool,
    /// The logical packet being assembled; `None` between packets.
    current: Option<Partial>,
}

#[derive(Debug)]
struct Partial {
    seq: u8,
    last_seq: u8,
    len: usize,
    retain: usize,
    payload: BytesMut,
}

impl Decoder {
    /// A decoder at a packet boundary.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the decoder is between packets (no partial header or payload held).
    pub fn at_boundary(&self) -> bool {
        self.current.is_none() && self.header_len == 0
    }

    /// Consumes bytes from the front of `input` until one logical packet is complete
    /// (returned, with at most `retain` bytes of its payload kept) or `input` is
    /// empty (`Ok(None)`). `retain` is read when a packet's first header arrives.
    pub fn decode(
        &mut self,
        input: &mut &[u8],
        retain: usize,
    ) -> Result<Option<Packet>, FrameError> {
        loop {
            if !self.in_body {
                let need = 4 - self.header_len;
                let take = need.min(input.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&input[..take]);
                self.header_len += take;
                *input = &input[take..];
                if self.header_len < 4 {
                    return Ok(None);
                }
                self.header_len = 0;
                let len = usize::from(self.header[0])
                    | usize::from(self.header[1]) << 8
                    | usize::from(self.header[2]) << 16;
                let seq = self.header[3];
                match &mut self.current {
                    Some(p) => {
                        let expected = p.last_seq.wrapping_add(1);
                        if seq != expected {
                            self.current = None;
                            self.continued = false;
                            return Err(FrameError { expected, got: seq });
                        }
                        p.last_seq = seq;
                        p.len = p.len.saturating_add(len);
                    }
                    None => {
                        self.current = Some(Partial {
                            seq,
                            last_seq: seq,
                            len,
                            retain,
                            payload: BytesMut::new(),
                        });
                    }
                }
                self.remaining = len;
                self.continued = len == MAX_PACKET_PAYLOAD;
                self.in_body = true;
            }
            let take = self.remaining.min(input.len());
            if let Some(p) = &mut self.current {
                let keep = take.min(p.retain.saturating_sub(p.payload.len()));
                p.payload.extend_from_slice(&input[..keep]);
            }
            *input = &input[take..];
            self.remaining -= take;
            if self.remaining > 0 {
                return Ok(None);
            }
            self.in_body = false;
            if self.continued {
                // The payload goes on in the next physical packet.
                if input.is_empty() {
                    return Ok(None);
                }
                continue;
            }
            let Some(p) = self.current.take() else {
                return Ok(None);
            };
            return Ok(Some(Packet {
                seq: p.seq,
                last_seq: p.last_seq,
                len: p.len,
                payload: p.payload.freeze(),
            }));
        }
    }

    /// Decodes every complete packet in `input`, keeping all of each payload.
    /// Convenient for tests and small inputs.
    pub fn decode_all(&mut self, mut input: &[u8]) -> Result<Vec<Packet>, FrameError> {
        let mut out = Vec::new();
        while let Some(p) = self.decode(&mut input, usize::MAX)? {
            out.push(p);
        }
        Ok(out)
    }
}

/// Frames `payload` as one or more packets starting at sequence id `seq`, splitting
/// it as MySQL does (a payload that is a multiple of `0xFFFFFF` ends with an empty
/// packet). Returns the framed bytes.
pub fn encode(payload: &[u8], seq: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4 * (payload.len() / MAX_PACKET_PAYLOAD + 1));
    let mut seq = seq;
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PACKET_PAYLOAD);
        let len = u32::try_from(n).unwrap_or(0).to_le_bytes();
        out.extend_from_slice(&len[..3]);
        out.push(seq);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        seq = seq.wrapping_add(1);
        if n < MAX_PACKET_PAYLOAD {
            return out;
        }
    }
}
