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

/// MurmurHash2 64-bit as Envoy computes it (the ring's `MURMUR_HASH_2`).
pub use legate_filter_api::hash::murmur_hash2 as murmur_hash2_64;

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
}
