//! Load balancers: weighted round robin (smooth, as nginx's) with per-worker
//! state, and Envoy's consistent hashing (RING_HASH, MAGLEV), whose tables are
//! built once per host set and shared by every worker.

use std::sync::Arc;

use super::hash::{murmur_hash2_64, xx_hash64, xx_hash64_seeded};
use super::{Host, HostAddress};
use crate::config::{LbPolicy, RingHashConfig, RingHashFunction};

#[derive(Default)]
pub struct Wrr {
    /// The host set the state belongs to; a new set (DNS refresh) resets it.
    hosts: Option<Arc<Vec<Host>>>,
    current: Vec<i64>,
}

impl Wrr {
    pub fn pick(&mut self, hosts: &Arc<Vec<Host>>) -> Option<Host> {
        if hosts.is_empty() {
            return None;
        }
        if hosts.len() == 1 {
            return Some(hosts[0].clone());
        }
        if !self.hosts.as_ref().is_some_and(|h| Arc::ptr_eq(h, hosts)) {
            self.hosts = Some(hosts.clone());
            // Start each worker at a different point so workers do not move in step.
            self.current = hosts
                .iter()
                .map(|h| -(fastrand::i64(0..=h.weight as i64)))
                .collect();
        }
        let total: i64 = hosts.iter().map(|h| h.weight as i64).sum();
        let mut best = 0;
        for (i, h) in hosts.iter().enumerate() {
            self.current[i] += h.weight as i64;
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= total;
        Some(hosts[best].clone())
    }
}

/// The key a host is hashed by: its address as Envoy prints it, `ip:port`
/// (`[v6]:port`).
fn host_key(h: &Host) -> String {
    match &h.address {
        HostAddress::Ip(a) => a.to_string(),
        // LOGICAL_DNS has a single host, so its key never decides anything.
        HostAddress::Dns(name, port) => format!("{name}:{port}"),
    }
}

/// Envoy's normalised weights (each host's share of the total, as doubles,
/// computed in Envoy's order so the rounding is the same) and their min and max.
fn normalized_weights(hosts: &[Host]) -> (Vec<f64>, f64, f64) {
    let sum: u64 = hosts.iter().map(|h| h.weight as u64).sum();
    let mut min = 1.0f64;
    let mut max = 0.0f64;
    let w: Vec<f64> = hosts
        .iter()
        .map(|h| {
            let w = h.weight as f64 / sum as f64;
            min = min.min(w);
            max = max.max(w);
            w
        })
        .collect();
    (w, min, max)
}

/// A consistent-hashing table over one host set.
#[derive(Debug)]
pub enum HashLb {
    Ring(Ring),
    Maglev(Maglev),
}

impl HashLb {
    /// The table for `policy` over `hosts`; `None` for the other policies and for
    /// an empty host set.
    pub fn build(policy: LbPolicy, hosts: &Arc<Vec<Host>>) -> Option<HashLb> {
        if hosts.is_empty() {
            return None;
        }
        match policy {
            LbPolicy::RingHash(c) => Some(HashLb::Ring(Ring::build(c, hosts))),
            LbPolicy::Maglev { table_size } => {
                Some(HashLb::Maglev(Maglev::build(table_size, hosts)))
            }
            LbPolicy::RoundRobin | LbPolicy::Random => None,
        }
    }

    pub fn pick(&self, hash: u64) -> Option<&Host> {
        match self {
            HashLb::Ring(r) => r.pick(hash),
            HashLb::Maglev(m) => m.pick(hash),
        }
    }
}

/// Envoy's ketama ring: each host `ip:port` appears as the hashes of
/// `ip:port_0`, `ip:port_1`, ..., as many as its weight earns.
#[derive(Debug)]
pub struct Ring {
    hosts: Arc<Vec<Host>>,
    /// (hash, index into `hosts`), sorted by hash.
    entries: Vec<(u64, u32)>,
}

impl Ring {
    pub fn build(c: RingHashConfig, hosts: &Arc<Vec<Host>>) -> Ring {
        let (weights, min_w, _) = normalized_weights(hosts);
        // The least-weighted host gets a whole number of entries, within
        // maximum_ring_size; the same double arithmetic as Envoy.
        let scale =
            ((min_w * c.minimum_ring_size as f64).ceil() / min_w).min(c.maximum_ring_size as f64);
        let mut entries = Vec::with_capacity(scale.ceil() as usize);
        // Running sums, so fractional shares add up across hosts as in Envoy.
        let mut current = 0.0f64;
        let mut target = 0.0f64;
        let mut key = String::new();
        for (idx, (h, w)) in hosts.iter().zip(&weights).enumerate() {
            key.clear();
            key.push_str(&host_key(h));
            key.push('_');
            let base = key.len();
            target += scale * w;
            let mut i = 0u64;
            while current < target {
                key.truncate(base);
                key.push_str(&i.to_string());
                let hash = match c.hash_function {
                    RingHashFunction::XxHash => xx_hash64(key.as_bytes()),
                    RingHashFunction::MurmurHash2 => murmur_hash2_64(key.as_bytes()),
                };
                entries.push((hash, idx as u32));
                i += 1;
                current += 1.0;
            }
        }
        entries.sort_by_key(|e| e.0);
        Ring {
            hosts: hosts.clone(),
            entries,
        }
    }

    /// The first entry at or after `hash`, wrapping to the first (ketama).
    pub fn pick(&self, hash: u64) -> Option<&Host> {
        let i = self.entries.partition_point(|e| e.0 < hash);
        let (_, idx) = self.entries.get(i).or_else(|| self.entries.first())?;
        self.hosts.get(*idx as usize)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

/// Envoy's Maglev table (the paper's listing 1, weighted as Envoy weights it).
#[derive(Debug)]
pub struct Maglev {
    hosts: Arc<Vec<Host>>,
    /// Index into `hosts` per slot.
    table: Vec<u32>,
}

impl Maglev {
    pub fn build(table_size: u64, hosts: &Arc<Vec<Host>>) -> Maglev {
        const EMPTY: u32 = u32::MAX;
        struct Entry {
            host: u32,
            offset: u64,
            skip: u64,
            weight: f64,
            target_weight: f64,
            next: u64,
        }
        let (weights, _, max_w) = normalized_weights(hosts);
        // Envoy fills the table in the order of the host keys, so that it does
        // not depend on the order the hosts came in.
        let mut keyed: Vec<(String, usize)> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| (host_key(h), i))
            .collect();
        keyed.sort();
        let mut entries: Vec<Entry> = keyed
            .iter()
            .map(|(key, i)| Entry {
                host: *i as u32,
                offset: xx_hash64(key.as_bytes()) % table_size,
                skip: xx_hash64_seeded(key.as_bytes(), 1) % (table_size - 1) + 1,
                weight: weights[*i],
                target_weight: 0.0,
                next: 0,
            })
            .collect();
        let size = table_size as usize;
        let mut table = vec![EMPTY; size];
        let slot =
            |e: &Entry| (e.offset.wrapping_add(e.skip.wrapping_mul(e.next)) % table_size) as usize;
        let mut filled = 0usize;
        let mut iteration = 1u32;
        while filled < size {
            for e in entries.iter_mut() {
                if filled == size {
                    break;
                }
                // A host of weight max/3 takes a slot every third round.
                if iteration as f64 * e.weight < e.target_weight {
                    continue;
                }
                e.target_weight += max_w;
                let mut c = slot(e);
                while table[c] != EMPTY {
                    e.next += 1;
                    c = slot(e);
                }
                table[c] = e.host;
                e.next += 1;
                filled += 1;
            }
            iteration = iteration.wrapping_add(1);
        }
        Maglev {
            hosts: hosts.clone(),
            table,
        }
    }

    pub fn pick(&self, hash: u64) -> Option<&Host> {
        let len = self.table.len() as u64;
        if len == 0 {
            return None;
        }
        self.hosts.get(self.table[(hash % len) as usize] as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(weights: &[u32]) -> Arc<Vec<Host>> {
        Arc::new(
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| Host {
                    address: HostAddress::Ip(format!("10.0.0.{}:80", i + 1).parse().unwrap()),
                    weight: *w,
                    hostname: None,
                })
                .collect(),
        )
    }

    fn ring(min: u64, max: u64, f: RingHashFunction, weights: &[u32]) -> Ring {
        let c = RingHashConfig {
            minimum_ring_size: min,
            maximum_ring_size: max,
            hash_function: f,
        };
        Ring::build(c, &hosts(weights))
    }

    /// Entries per host, in host order.
    fn ring_counts(r: &Ring) -> Vec<usize> {
        let mut n = vec![0; r.hosts.len()];
        for (_, i) in &r.entries {
            n[*i as usize] += 1;
        }
        n
    }

    #[test]
    fn ring_entries_are_the_hashes_of_ip_port_n() {
        for (f, h) in [
            (RingHashFunction::XxHash, xx_hash64 as fn(&[u8]) -> u64),
            (RingHashFunction::MurmurHash2, murmur_hash2_64),
        ] {
            let r = ring(4, 100, f, &[1, 1]);
            let mut want: Vec<(u64, u32)> = (0..2u32)
                .flat_map(|i| {
                    (0..2).map(move |n| (h(format!("10.0.0.{}:80_{n}", i + 1).as_bytes()), i))
                })
                .collect();
            want.sort();
            assert_eq!(r.entries, want);
        }
    }

    #[test]
    fn ring_sizes_follow_weights_and_bounds() {
        // Equal weights: minimum_ring_size split evenly.
        let r = ring(1024, 8_388_608, RingHashFunction::XxHash, &[1, 1, 1, 1]);
        assert_eq!(ring_counts(&r), [256; 4]);
        // The lightest host gets ceil(min * share) entries, the others in proportion.
        let r = ring(1024, 8_388_608, RingHashFunction::XxHash, &[1, 2, 3, 5]);
        assert_eq!(ring_counts(&r), [94, 188, 282, 470]);
        // maximum_ring_size wins over minimum_ring_size.
        let r = ring(1024, 100, RingHashFunction::XxHash, &[1, 1, 1, 1]);
        assert_eq!(r.len(), 100);
        // Fractional shares carry over from host to host (running sums).
        let r = ring(1024, 6, RingHashFunction::XxHash, &[1, 1, 1, 1]);
        assert_eq!(ring_counts(&r), [2, 1, 2, 1]);
        // A zero-sized ring has no host (Envoy accepts it and answers 503).
        let r = ring(0, 100, RingHashFunction::XxHash, &[1, 1]);
        assert_eq!(r.len(), 0);
        assert!(r.pick(7).is_none());
    }

    #[test]
    fn ring_lookup_takes_the_next_entry_and_wraps() {
        let r = ring(16, 100, RingHashFunction::XxHash, &[1, 2, 3]);
        let (first_hash, first) = r.entries[0];
        let (last_hash, _) = *r.entries.last().unwrap();
        let host_of = |i: u32| &r.hosts[i as usize];
        assert_eq!(r.pick(0), Some(host_of(first)));
        assert_eq!(r.pick(first_hash), Some(host_of(first)));
        // Past the last entry: back to the first.
        assert_eq!(r.pick(last_hash.wrapping_add(1)), Some(host_of(first)));
        assert_eq!(r.pick(u64::MAX), Some(host_of(first)));
        for w in r.entries.windows(2) {
            assert_eq!(r.pick(w[0].0 + 1), Some(host_of(w[1].1)));
            assert_eq!(r.pick(w[1].0), Some(host_of(w[1].1)));
        }
    }

    fn maglev_counts(m: &Maglev) -> Vec<usize> {
        let mut n = vec![0; m.hosts.len()];
        for i in &m.table {
            n[*i as usize] += 1;
        }
        n
    }

    #[test]
    fn maglev_fills_every_slot_by_weight() {
        let m = Maglev::build(65537, &hosts(&[1, 1, 1, 1]));
        assert_eq!(m.table.len(), 65537);
        let n = maglev_counts(&m);
        assert_eq!(n.iter().sum::<usize>(), 65537);
        // Round robin over the hosts: shares differ by at most one slot.
        assert!(n.iter().all(|c| (16384..=16385).contains(c)), "{n:?}");
        // A host of weight 3 takes a slot each round, one of weight 1 in the
        // first round and then every third (Envoy's target weights).
        let m = Maglev::build(1009, &hosts(&[3, 1]));
        assert_eq!(maglev_counts(&m), [756, 253]);
        let m = Maglev::build(13, &hosts(&[1, 1, 1]));
        assert_eq!(maglev_counts(&m), [5, 4, 4]);
        assert_eq!(m.pick(13 + 4), m.pick(4));
    }

    #[test]
    fn maglev_slots_follow_the_paper_permutation() {
        // One host per slot chosen by offset + n * skip, in host-key order.
        let m = Maglev::build(7, &hosts(&[1, 1]));
        let key = |i: usize| format!("10.0.0.{}:80", i + 1);
        let offset = |i: usize| xx_hash64(key(i).as_bytes()) % 7;
        // The first host (by key) takes its offset; nothing was there before it.
        assert_eq!(m.table[offset(0) as usize], 0);
        let skip = |i: usize| xx_hash64_seeded(key(i).as_bytes(), 1) % 6 + 1;
        assert!((1..7).contains(&skip(1)));
    }

    #[test]
    fn maglev_does_not_depend_on_host_order() {
        let a = hosts(&[1, 2, 3, 4, 5]);
        let mut rev: Vec<Host> = a.iter().cloned().collect();
        rev.reverse();
        let b = Arc::new(rev);
        let (ma, mb) = (Maglev::build(1031, &a), Maglev::build(1031, &b));
        for h in 0..1031u64 {
            assert_eq!(ma.pick(h), mb.pick(h));
        }
    }

    #[test]
    fn only_hashing_policies_have_a_table() {
        let h = hosts(&[1, 1]);
        assert!(HashLb::build(LbPolicy::RoundRobin, &h).is_none());
        assert!(HashLb::build(LbPolicy::Random, &h).is_none());
        assert!(HashLb::build(LbPolicy::Maglev { table_size: 7 }, &Arc::new(vec![])).is_none());
        let t = HashLb::build(LbPolicy::Maglev { table_size: 7 }, &h).unwrap();
        assert!(t.pick(u64::MAX).is_some());
    }

    #[test]
    fn weights_are_respected() {
        let hosts = Arc::new(vec![
            Host {
                address: HostAddress::Ip("127.0.0.1:1".parse().unwrap()),
                weight: 3,
                hostname: None,
            },
            Host {
                address: HostAddress::Ip("127.0.0.1:2".parse().unwrap()),
                weight: 1,
                hostname: None,
            },
        ]);
        let mut w = Wrr::default();
        let firsts = (0..400)
            .filter(|_| w.pick(&hosts).unwrap().weight == 3)
            .count();
        assert_eq!(firsts, 300);
    }
}
