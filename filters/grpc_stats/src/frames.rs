//! Counts gRPC length-prefixed messages in a byte stream that arrives in chunks
//! split anywhere: a 1-byte flag, a 4-byte big-endian length, then the payload.
//! Pure: bytes in, a count out. A message counts when its first byte arrives,
//! as in Envoy.

/// Where the counter is in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Expecting the flag byte of a new message.
    Flag,
    /// Reading the length: bytes read so far and the value so far.
    Length(u8, u32),
    /// Skipping this many payload bytes.
    Payload(u64),
}

/// A message counter over one direction of a stream.
#[derive(Debug, Clone)]
pub struct FrameCounter {
    state: State,
    count: u64,
}

impl Default for FrameCounter {
    fn default() -> Self {
        FrameCounter {
            state: State::Flag,
            count: 0,
        }
    }
}

impl FrameCounter {
    /// Feeds a chunk; returns how many messages started in it.
    ///
    /// ```
    /// use legate_grpc_stats::FrameCounter;
    /// let mut c = FrameCounter::default();
    /// // One 3-byte message, then the first byte of the next.
    /// assert_eq!(c.feed(&[0, 0, 0, 0, 3, b'a', b'b', b'c', 0]), 2);
    /// assert_eq!(c.count(), 2);
    /// ```
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let before = self.count;
        while !data.is_empty() {
            match self.state {
                State::Flag => {
                    self.count += 1;
                    data = &data[1..];
                    self.state = State::Length(0, 0);
                }
                State::Length(n, v) => {
                    let v = (v << 8) | u32::from(data[0]);
                    data = &data[1..];
                    self.state = if n == 3 {
                        if v == 0 {
                            State::Flag
                        } else {
                            State::Payload(u64::from(v))
                        }
                    } else {
                        State::Length(n + 1, v)
                    };
                }
                State::Payload(left) => {
                    let take = left.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if take == left {
                        State::Flag
                    } else {
                        State::Payload(left - take)
                    };
                }
            }
        }
        self.count - before
    }

    /// Messages seen so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn any_split_counts_the_same() {
        let mut stream = Vec::new();
        for p in [&b""[..], b"hello", &[7u8; 300][..], b"x"] {
            stream.extend(frame(p));
        }
        for split in 0..stream.len() {
            for split2 in split..stream.len() {
                let mut c = FrameCounter::default();
                let n = c.feed(&stream[..split])
                    + c.feed(&stream[split..split2])
                    + c.feed(&stream[split2..]);
                assert_eq!(n, 4, "splits at {split}, {split2}");
                assert_eq!(c.count(), 4);
            }
        }
        // Byte by byte.
        let mut c = FrameCounter::default();
        for b in &stream {
            c.feed(std::slice::from_ref(b));
        }
        assert_eq!(c.count(), 4);
    }

    #[test]
    fn garbage_never_panics() {
        let mut c = FrameCounter::default();
        let junk: Vec<u8> = (0..10_000u32).map(|i| (i * 7919 % 251) as u8).collect();
        c.feed(&junk);
        c.feed(&[0xff; 64]);
        assert!(c.count() >= 1);
    }
}
