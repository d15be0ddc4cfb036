//! The stat store: counters and gauges with Envoy's names.
//!
//! Stats are resolved to handles when config is built; the hot path only does a
//! relaxed atomic add on a handle. The admin thread reads them for output.

mod output;

use std::sync::{LazyLock, OnceLock};

pub use output::{json, prometheus, prometheus_histograms, text, text_histograms};

pub use legate_filter_api::stats::{
    BUCKETS, Counter, Gauge, Histogram, HistogramSample, Metric, Sample, Store,
};

static STORE: LazyLock<Store> = LazyLock::new(Store::default);

/// The process-wide store.
pub fn store() -> &'static Store {
    &STORE
}

/// Counters per response code (`<prefix>_200`) and class (`<prefix>_2xx`), created
/// on first use so unused codes do not appear.
pub struct CodeStats {
    prefix: String,
    classes: [OnceLock<Counter>; 5],
    codes: Box<[OnceLock<Counter>]>,
}

impl CodeStats {
    /// `prefix` is e.g. `cluster.foo.upstream_rq`. Envoy creates the class counters
    /// up front for the connection manager and on first use for clusters.
    pub fn new(prefix: String, eager_classes: bool) -> CodeStats {
        let cs = CodeStats {
            prefix,
            classes: Default::default(),
            codes: (100..600).map(|_| OnceLock::new()).collect(),
        };
        if eager_classes {
            for c in 0..5 {
                cs.class(c);
            }
        }
        cs
    }

    fn class(&self, i: usize) -> &Counter {
        self.classes[i].get_or_init(|| store().counter(format!("{}_{}xx", self.prefix, i + 1)))
    }

    pub fn record(&self, code: u16) {
        if !(100..600).contains(&code) {
            return;
        }
        self.class((code / 100 - 1) as usize).inc();
        self.codes[(code - 100) as usize]
            .get_or_init(|| store().counter(format!("{}_{code}", self.prefix)))
            .inc();
    }

    /// Only the class counters (Envoy's downstream stats have no per-code counters).
    pub fn record_class(&self, code: u16) {
        if (100..600).contains(&code) {
            self.class((code / 100 - 1) as usize).inc();
        }
    }
}

impl std::fmt::Debug for CodeStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeStats")
            .field("prefix", &self.prefix)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_by_name() {
        let a = store().counter("test.shared");
        let b = store().counter("test.shared");
        a.inc();
        b.add(2);
        assert_eq!(store().get("test.shared"), Some(3));
    }

    #[test]
    fn histograms_bucket_and_estimate() {
        let h = store().histogram("test.hist");
        for v in [0.3, 3.0, 3.0, 7.0, 2000.0] {
            h.record(v);
        }
        let s = h.read();
        assert_eq!(s.count, 5);
        assert_eq!(s.cumulative[0], 1); // <= 0.5
        assert_eq!(s.cumulative[2], 3); // <= 5
        assert_eq!(s.cumulative[3], 4); // <= 10
        assert_eq!(*s.cumulative.last().unwrap(), 5);
        assert!((s.sum - 2013.3).abs() < 0.01);
        let p50 = s.quantile(0.5).unwrap();
        assert!((1.0..=5.0).contains(&p50), "{p50}");
    }

    #[test]
    fn code_stats_create_on_use() {
        let c = CodeStats::new("test.codes.upstream_rq".into(), false);
        c.record(503);
        c.record(200);
        c.record(200);
        assert_eq!(store().get("test.codes.upstream_rq_200"), Some(2));
        assert_eq!(store().get("test.codes.upstream_rq_5xx"), Some(1));
        assert_eq!(store().get("test.codes.upstream_rq_404"), None);
        assert_eq!(store().get("test.codes.upstream_rq_4xx"), None);
    }
}
