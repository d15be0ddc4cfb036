//! Envoy's `MurmurHash::murmurHash2`: the 64-bit MurmurHash2 of libstdc++'s
//! `std::hash<std::string>`, with Envoy's seed. The Redis proxy hashes keys with
//! it and ring hash can hash hosts with it; matching it bit for bit makes a key
//! land on the same server behind legate as behind Envoy.

const SEED: u64 = 0xc70f_6907;
const MUL: u64 = (0xc6a4_a793_u64 << 32) + 0x5bd1_e995;

fn shift_mix(v: u64) -> u64 {
    v ^ (v >> 47)
}

/// Envoy's `MurmurHash::murmurHash2(key)`.
///
/// ```
/// assert_eq!(legate_filter_api::hash::murmur_hash2(b"foo"), 9631199822919835226);
/// ```
pub fn murmur_hash2(key: &[u8]) -> u64 {
    let mut hash = SEED ^ (key.len() as u64).wrapping_mul(MUL);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let data = shift_mix(u64::from_le_bytes(w).wrapping_mul(MUL)).wrapping_mul(MUL);
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let data = rest
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        hash ^= data;
        hash = hash.wrapping_mul(MUL);
    }
    hash = shift_mix(hash).wrapping_mul(MUL);
    shift_mix(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libstdcxx() {
        // `std::hash<std::string>{}(s)` printed by a 64-bit libstdc++ program
        // (lengths 0, 3, 14, 19 and 13 cover the tail and the 8-byte words).
        for (s, want) in [
            ("", 6_142_509_188_972_423_790u64),
            ("foo", 9_631_199_822_919_835_226),
            ("127.0.0.1:80_0", 17_613_279_263_364_193_813),
            ("0123456789abcdefXYZ", 3_947_215_215_395_305_647),
            ("hello world!!", 9_889_543_715_294_181_604),
        ] {
            assert_eq!(murmur_hash2(s.as_bytes()), want, "{s:?}");
        }
    }
}
