//! Headers as they left a filter callback, kept for later callbacks that read
//! them (request headers in the response phase, response headers in `on_log`).
//! Stored in the proxy-wasm wire format: one allocation to make, one to free,
//! and `proxy_get_header_map_pairs` hands it out as it is.

use legate_filter_api::{RequestHead, ResponseHead};

/// Writes `n` header pairs into `wire` in the proxy-wasm wire format
/// (little-endian): a count, each pair's key and value lengths, then each key and
/// value NUL-terminated. One pass: the lengths are filled in as the pairs go by.
/// `pairs` must yield exactly `n` pairs.
pub fn encode_into<'a>(
    wire: &mut Vec<u8>,
    n: usize,
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) {
    wire.clear();
    wire.resize(4 + n * 8, 0);
    wire[..4].copy_from_slice(&(n as u32).to_le_bytes());
    let mut at = 4;
    for (k, v) in pairs {
        wire[at..at + 4].copy_from_slice(&(k.len() as u32).to_le_bytes());
        wire[at + 4..at + 8].copy_from_slice(&(v.len() as u32).to_le_bytes());
        at += 8;
        wire.extend_from_slice(k);
        wire.push(0);
        wire.extend_from_slice(v);
        wire.push(0);
    }
    debug_assert_eq!(at, 4 + n * 8, "encode_into: fewer pairs than announced");
}

/// [`encode_into`] a new buffer.
pub fn encode<'a>(n: usize, pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut wire = Vec::new();
    encode_into(&mut wire, n, pairs);
    wire
}

/// A header map as it left a callback. Empty until taken; its buffer is kept
/// when the stream data is recycled, so taking one usually allocates nothing.
#[derive(Default)]
pub struct Snapshot {
    wire: Vec<u8>,
    pub version: http::Version,
}

impl Snapshot {
    /// The request head: pseudo-headers (`:authority`, `:path`, `:method`,
    /// `:scheme`), then headers.
    pub fn request(h: &RequestHead) -> Snapshot {
        let mut s = Snapshot::default();
        s.set_request(h);
        s
    }

    /// The response head: `:status`, then headers.
    pub fn response(h: &ResponseHead) -> Snapshot {
        let mut s = Snapshot::default();
        s.set_response(h);
        s
    }

    pub fn set_request(&mut self, h: &RequestHead) {
        let authority = match h.uri.authority() {
            Some(a) => a.as_str().as_bytes(),
            None => h
                .headers
                .get(http::header::HOST)
                .map_or(&b""[..], |v| v.as_bytes()),
        };
        let pseudo: [(&[u8], &[u8]); 4] = [
            (b":authority", authority),
            (
                b":path",
                h.uri
                    .path_and_query()
                    .map_or(&b"/"[..], |p| p.as_str().as_bytes()),
            ),
            (b":method", h.method.as_str().as_bytes()),
            (b":scheme", h.uri.scheme_str().unwrap_or("http").as_bytes()),
        ];
        let headers = h
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()));
        encode_into(
            &mut self.wire,
            4 + h.headers.len(),
            pseudo.into_iter().chain(headers),
        );
        self.version = h.version;
    }

    pub fn set_response(&mut self, h: &ResponseHead) {
        let status: [(&[u8], &[u8]); 1] = [(b":status", h.status.as_str().as_bytes())];
        let headers = h
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()));
        encode_into(
            &mut self.wire,
            1 + h.headers.len(),
            status.into_iter().chain(headers),
        );
        self.version = http::Version::HTTP_11;
    }

    /// Forgets the map, keeping the buffer.
    pub fn clear(&mut self) {
        self.wire.clear();
    }

    /// The snapshot, if one was taken.
    pub fn taken(&self) -> Option<&Snapshot> {
        (!self.wire.is_empty()).then_some(self)
    }

    /// The map in the wire format.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// Every (name, value), pseudo-headers first.
    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let w = &self.wire[..];
        let n = u32::from_le_bytes([w[0], w[1], w[2], w[3]]) as usize;
        let mut at = 4 + n * 8;
        (0..n).map(move |i| {
            let s = 4 + i * 8;
            let k = u32::from_le_bytes([w[s], w[s + 1], w[s + 2], w[s + 3]]) as usize;
            let v = u32::from_le_bytes([w[s + 4], w[s + 5], w[s + 6], w[s + 7]]) as usize;
            let key = &w[at..at + k];
            let value = &w[at + k + 1..at + k + 1 + v];
            at += k + v + 2;
            (key, value)
        })
    }

    /// The first value of a header (names compared without case).
    pub fn get(&self, key: &[u8]) -> Option<&[u8]> {
        self.pairs()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    }

    /// Every value of a header joined with commas, as Envoy answers, written
    /// to `out`; false when there is none.
    pub fn joined(&self, key: &[u8], out: &mut Vec<u8>) -> bool {
        let mut found = false;
        for (_, v) in self.pairs().filter(|(k, _)| k.eq_ignore_ascii_case(key)) {
            if found {
                out.push(b',');
            }
            out.extend_from_slice(v);
            found = true;
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_snapshot_round_trips() {
        let mut headers = http::HeaderMap::new();
        headers.insert("host", "h".parse().unwrap());
        headers.append("x-a", "1".parse().unwrap());
        headers.append("x-a", "2".parse().unwrap());
        let head = RequestHead {
            method: http::Method::POST,
            uri: "/p?q".parse().unwrap(),
            version: http::Version::HTTP_2,
            headers,
        };
        let s = Snapshot::request(&head);
        assert_eq!(s.get(b":path"), Some(&b"/p?q"[..]));
        assert_eq!(s.get(b":authority"), Some(&b"h"[..]));
        assert_eq!(s.get(b":method"), Some(&b"POST"[..]));
        let mut out = Vec::new();
        assert!(s.joined(b"X-A", &mut out));
        assert_eq!(out, b"1,2");
        assert_eq!(s.get(b"missing"), None);
        assert_eq!(s.pairs().count(), 7);
        assert_eq!(s.version, http::Version::HTTP_2);
    }
}
