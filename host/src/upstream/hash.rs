//! The two 64-bit hashes Envoy's consistent hashing uses, bit for bit: keys hash
//! to the same value here as in Envoy, so they land on the same host.

/// xxHash64 with seed 0 (Envoy's `HashUtil::xxHash64`): route hash policies and
/// the ring/Maglev host keys.
pub fn xx_hash64(data: &[u8]) -> u64 {
    xx_hash64_seeded(data, 0)
}

/// xxHash64 with a seed (Maglev's skip uses seed 1).
pub fn xx_hash64_seeded(data: &[u8], seed: u64) -> u64 {
    xxhash_rust::xxh64::xxh64(data, seed)
}

/// xxHash64 (seed 0) of the concatenation of `parts`, without building it: Envoy
/// hashes the values of a repeated header this way.
pub fn xx_hash64_concat<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h = xxhash_rust::xxh64::Xxh64::new(0);
    for p in parts {
        h.update(p);
    }
    h.digest()
}

/// The seed of libstdc++'s `std::hash<std::string>`, Envoy's `STD_HASH_SEED`.
const MURMUR_SEED: u64 = 0xc70f_6907;
const MURMUR_MUL: u64 = 0xc6a4_a793_5bd1_e995;

fn shift_mix(v: u64) -> u64 {
    v ^ (v >> 47)
}

/// MurmurHash2 64-bit as libstdc++ computes it for `std::hash<std::string>`, with
/// Envoy's seed (`MurmurHash::murmurHash2`, the ring's `MURMUR_HASH_2`). Words are
/// read little-endian, as Envoy does on every platform.
pub fn murmur_hash2_64(data: &[u8]) -> u64 {
    let len = data.len() as u64;
    let mut hash = MURMUR_SEED ^ len.wrapping_mul(MURMUR_MUL);
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let mut b = [0u8; 8];
        b.copy_from_slice(w);
        let v = shift_mix(u64::from_le_bytes(b).wrapping_mul(MURMUR_MUL)).wrapping_mul(MURMUR_MUL);
        hash ^= v;
        hash = hash.wrapping_mul(MURMUR_MUL);
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        // The last 1..7 bytes, first byte lowest.
        let v = tail
            .iter()
            .rev()
            .fold(0u64, |acc, &b| (acc << 8) | b as u64);
        hash ^= v;
        hash = hash.wrapping_mul(MURMUR_MUL);
    }
    hash = shift_mix(hash).wrapping_mul(MURMUR_MUL);
    shift_mix(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xxhash64_reference_values() {
        // The xxHash reference vectors (XXH64, seed 0).
        assert_eq!(xx_hash64(b""), 0xef46_db37_51d8_e999);
        assert_eq!(xx_hash64(b"a"), 0xd24e_c4f1_a98c_6e5b);
        assert_eq!(xx_hash64(b"abc"), 0x44bc_2cf5_ad77_0999);
        assert_eq!(xx_hash64_concat([&b"ab"[..], &b"c"[..]]), xx_hash64(b"abc"));
    }

    #[test]
    fn seeded_xxhash64() {
        // libxxhash's XXH64(s, len, 1).
        assert_eq!(xx_hash64_seeded(b"127.0.0.1:80", 1), 0x2abc_f391_f7de_5a34);
        assert_eq!(xx_hash64(b"127.0.0.1:80"), 0x20e2_606e_5305_da5b);
    }

    #[test]
    fn murmur_hash2_matches_libstdcxx() {
        // `std::hash<std::string>{}(s)` printed by a 64-bit libstdc++ program
        // (lengths 0, 3, 14, 19 and 13 cover the tail and the 8-byte words).
        for (s, want) in [
            ("", 6_142_509_188_972_423_790u64),
            ("foo", 9_631_199_822_919_835_226),
            ("127.0.0.1:80_0", 17_613_279_263_364_193_813),
            ("0123456789abcdefXYZ", 3_947_215_215_395_305_647),
            ("hello world!!", 9_889_543_715_294_181_604),
        ] {
            assert_eq!(murmur_hash2_64(s.as_bytes()), want, "{s:?}");
        }
    }
}
