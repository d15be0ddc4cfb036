//! Headers as they left a filter callback, kept for later callbacks that read
//! them (request headers in the response phase, response headers in `on_log`).
//! Stored in the proxy-wasm wire format: one allocation to make, one to free,
//! and `proxy_get_header_map_pairs` hands it out as it is.

use legate_filter_api::{RequestHead, ResponseHead};

/// Encodes header pairs in the proxy-wasm wire format (little-endian): a count,
/// each pair's key and value lengths, then each key and value NUL-terminated.
/// `pairs` is called twice: once to size the buffer, once to fill it.
pub fn encode<'a, I: Iterator<Item = (&'a [u8], &'a [u8])>>(pairs: impl Fn() -> I) -> Vec<u8> {
    let (n, size) = pairs().fold((0, 0), |(n, size), (k, v)| {
        (n + 1, size + k.len() + v.len() + 2)
    });
    let mut wire = Vec::with_capacity(4 + n * 8 + size);
    wire.extend_from_slice(&(n as u32).to_le_bytes());
    for (k, v) in pairs() {
        wire.extend_from_slice(&(k.len() as u32).to_le_bytes());
        wire.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs() {
        wire.extend_from_slice(k);
        wire.push(0);
        wire.extend_from_slice(v);
        wire.push(0);
    }
    wire
}

pub struct Snapshot {
    wire: Vec<u8>,
    pub version: http::Version,
}

impl Snapshot {
    /// Pseudo-headers (`:authority`, `:path`, `:method`, `:scheme`), then headers.
    pub fn request(h: &RequestHead) -> Snapshot {
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
        let headers = || {
            h.headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
        };
        Snapshot {
            wire: encode(|| pseudo.into_iter().chain(headers())),
            version: h.version,
        }
    }

    /// `:status`, then headers.
    pub fn response(h: &ResponseHead) -> Snapshot {
        let status: [(&[u8], &[u8]); 1] = [(b":status", h.status.as_str().as_bytes())];
        let headers = || {
            h.headers
                .iter()
                .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes()))
        };
        Snapshot {
            wire: encode(|| status.into_iter().chain(headers())),
            version: http::Version::HTTP_11,
        }
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

    /// Every value of a header joined with commas, as Envoy answers.
    pub fn joined(&self, key: &[u8]) -> Option<Vec<u8>> {
        let mut out: Option<Vec<u8>> = None;
        for (_, v) in self.pairs().filter(|(k, _)| k.eq_ignore_ascii_case(key)) {
            match &mut out {
                Some(o) => {
                    o.push(b',');
                    o.extend_from_slice(v);
                }
                None => out = Some(v.to_vec()),
            }
        }
        out
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
        assert_eq!(s.joined(b"X-A"), Some(b"1,2".to_vec()));
        assert_eq!(s.get(b"missing"), None);
        assert_eq!(s.pairs().count(), 7);
        assert_eq!(s.version, http::Version::HTTP_2);
    }
}
