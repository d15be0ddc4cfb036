//! Weighted round robin (smooth, as nginx's), per worker.

use std::sync::Arc;

use super::Host;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::HostAddress;

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
