//! The key hash Envoy's redis_proxy gives the cluster's load balancer:
//! `MurmurHash::murmurHash2`, the 64-bit MurmurHash2 variant of libstdc++'s
//! `std::hash<std::string>`, with Envoy's seed. Matching it makes a key land on
//! the same server behind legate as behind Envoy, so a fleet can switch proxies
//! without resharding.

const SEED: u64 = 0xc70f_6907;
const MUL: u64 = (0xc6a4_a793_u64 << 32) + 0x5bd1_e995;

fn shift_mix(v: u64) -> u64 {
    v ^ (v >> 47)
}

/// Envoy's `MurmurHash::murmurHash2(key)`.
///
/// ```
/// assert_eq!(legate_redis_proxy::hash::murmur_hash2(b"foo"), 9631199822919835226);
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
