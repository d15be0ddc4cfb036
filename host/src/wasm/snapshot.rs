//! Headers as they left a filter callback, kept for later callbacks that read
//! them (request headers in the response phase, response headers in `on_log`).
//! Stored in the proxy-wasm wire format: one allocation to make, one to free,
//! and `proxy_get_header_map_pairs` hands it out as it is.

use legate_filter_api::{RequestHead, ResponseHead};

/// Writes header pairs into `wire` in the proxy-wasm wire format
/// (little-endian): a count, each pair's key and value lengths, then each key and
/// value NUL-terminated. `pairs` is walked twice: once to size the buffer, then
/// to fill it. Every byte is written, so a reused buffer is not zeroed first.
pub fn encode_into<'a, I>(wire: &mut Vec<u8>, pairs: impl Fn() -> I)
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    let (n, bytes) = pairs().fold((0, 0), |(n, b), (k, v)| (n + 1, b + k.len() + v.len() + 2));
    let len = 4 + n * 8 + bytes;
    if wire.len() > len {
        wire.truncate(len);
    } else {
        wire.resize(len, 0);
    }
    let (sizes, strings) = wire.split_at_mut(4 + n * 8);
    sizes[..4].copy_from_slice(&(n as u32).to_le_bytes());
    let (mut sizes, mut strings) = (&mut sizes[4..], strings);
    for (k, v) in pairs().take(n) {
        let (size, rest) = sizes.split_at_mut(8);
        size[..4].copy_from_slice(&(k.len() as u32).to_le_bytes());
        size[4..].copy_from_slice(&(v.len() as u32).to_le_bytes());
        sizes = rest;
        let (key, rest) = strings.split_at_mut(k.len() + 1);
        copy_short(&mut key[..k.len()], k);
        key[k.len()] = 0;
        let (value, rest) = rest.split_at_mut(v.len() + 1);
        copy_short(&mut value[..v.len()], v);
        value[v.len()] = 0;
        strings = rest;
    }
}

/// `dst.copy_from_slice(src)` for equal lengths. Header names and most
/// values are shorter than 17 bytes, which two overlapping word copies move
/// for less than a call to libc's `memcpy`.
#[inline(always)]
fn copy_short(dst: &mut [u8], src: &[u8]) {
    let n = src.len();
    match n {
        8..=16 => {
            dst[..8].copy_from_slice(&src[..8]);
            dst[n - 8..].copy_from_slice(&src[n - 8..]);
        }
        4..=7 => {
            dst[..4].copy_from_slice(&src[..4]);
            dst[n - 4..].copy_from_slice(&src[n - 4..]);
        }
        0..=3 => {
            for (d, s) in dst.iter_mut().zip(src) {
                *d = *s;
            }
        }
        _ => dst.copy_from_slice(src),
    }
}

/// [`encode_into`] a new buffer.
pub fn encode<'a, I>(pairs: impl Fn() -> I) -> Vec<u8>
where
    I: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    let mut wire = Vec::new();
    encode_into(&mut wire, pairs);
    wire
}

/// A header map as it left a callback, once taken. Its buffer is kept when the
/// stream data is recycled, so taking one usually allocates nothing.
#[derive(Default)]
pub struct Snapshot {
    wire: Vec<u8>,
    taken: bool,
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
        encode_into(&mut self.wire, || {
            let headers = h.headers.iter();
            pseudo
                .into_iter()
                .chain(headers.map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())))
        });
        self.version = h.version;
        self.taken = true;
    }

    pub fn set_response(&mut self, h: &ResponseHead) {
        let status: [(&[u8], &[u8]); 1] = [(b":status", h.status.as_str().as_bytes())];
        encode_into(&mut self.wire, || {
            let headers = h.headers.iter();
            status
                .into_iter()
                .chain(headers.map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())))
        });
        self.version = http::Version::HTTP_11;
        self.taken = true;
    }

    /// Forgets the map, keeping the buffer and its bytes (overwritten by
    /// the next one).
    pub fn clear(&mut self) {
        self.taken = false;
    }

    /// The snapshot, if one was taken.
    pub fn taken(&self) -> Option<&Snapshot> {
        self.taken.then_some(self)
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

    #[test]
    fn pairs_of_every_length_round_trip() {
        let text: Vec<u8> = (0..40u8).map(|i| b'a' + i % 26).collect();
        let owned: Vec<(&[u8], &[u8])> = (0..=40).map(|n| (&text[..n], &text[40 - n..])).collect();
        let mut s = Snapshot::default();
        encode_into(&mut s.wire, || owned.iter().copied());
        assert!(s.pairs().eq(owned.iter().copied()));
        // A reused buffer, longer than the next map: no stale bytes or NULs left.
        let few = &owned[30..33];
        encode_into(&mut s.wire, || few.iter().copied());
        assert!(s.pairs().eq(few.iter().copied()));
        assert_eq!(s.wire, encode(|| few.iter().copied()));
        assert_eq!(encode(std::iter::empty), 0u32.to_le_bytes());
    }
}
