//! The stat store: counters and gauges with Envoy's names.
//!
//! Stats are resolved to handles when config is built; the hot path only does a
//! relaxed atomic add on a handle. The admin thread reads them for output.

mod output;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

pub use output::{json, prometheus, prometheus_histograms, text, text_histograms};

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn value(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct GaugeInner {
    v: AtomicI64,
    used: AtomicBool,
}

/// A value that goes up and down.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<GaugeInner>);

impl Gauge {
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.v.fetch_add(n, Ordering::Relaxed);
        if !self.0.used.load(Ordering::Relaxed) {
            self.0.used.store(true, Ordering::Relaxed);
        }
    }
    pub fn set(&self, n: i64) {
        self.0.v.store(n, Ordering::Relaxed);
        self.0.used.store(true, Ordering::Relaxed);
    }
    pub fn value(&self) -> i64 {
        self.0.v.load(Ordering::Relaxed)
    }
    fn used(&self) -> bool {
        self.0.used.load(Ordering::Relaxed)
    }
}

/// Envoy's default histogram bucket bounds (milliseconds for `*_time` stats).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

#[derive(Debug, Default)]
struct HistogramInner {
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    count: AtomicU64,
    /// Sum of values in microunits, so it stays an integer atomic.
    sum_micro: AtomicU64,
}

/// A distribution of values (Envoy's histograms, with its default buckets).
#[derive(Clone, Debug, Default)]
pub struct Histogram(Arc<HistogramInner>);

impl Histogram {
    pub fn record(&self, value_ms: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| value_ms <= *b)
            .unwrap_or(BUCKETS.len());
        self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.0.count.fetch_add(1, Ordering::Relaxed);
        self.0
            .sum_micro
            .fetch_add((value_ms * 1000.0) as u64, Ordering::Relaxed);
    }

    pub fn record_duration(&self, d: std::time::Duration) {
        self.record(d.as_secs_f64() * 1000.0);
    }

    /// Cumulative bucket counts (one per bound, then `+Inf`), count and sum.
    pub fn read(&self) -> HistogramSample {
        let mut cumulative = Vec::with_capacity(BUCKETS.len() + 1);
        let mut total = 0;
        for b in &self.0.buckets {
            total += b.load(Ordering::Relaxed);
            cumulative.push(total);
        }
        HistogramSample {
            cumulative,
            count: self.0.count.load(Ordering::Relaxed),
            sum: self.0.sum_micro.load(Ordering::Relaxed) as f64 / 1000.0,
        }
    }
}

/// A histogram as read for output.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSample {
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
}

impl HistogramSample {
    /// The value at quantile `q` (0..=1), interpolated within its bucket.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let mut lower = 0.0;
        let mut below = 0u64;
        for (i, c) in self.cumulative.iter().enumerate() {
            let upper = BUCKETS.get(i).copied().unwrap_or(lower * 2.0);
            if *c as f64 >= rank && *c > below {
                let frac = (rank - below as f64) / (*c - below) as f64;
                return Some(lower + (upper - lower) * frac.clamp(0.0, 1.0));
            }
            lower = upper;
            below = *c;
        }
        Some(lower)
    }
}

#[derive(Clone, Debug)]
pub enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

/// One stat as read for output.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub value: i64,
    pub is_counter: bool,
    pub used: bool,
}

/// All stats of the process, by full name. Stats outlive config versions, as in
/// Envoy, so a reload keeps counting where it left off.
#[derive(Default)]
pub struct Store {
    stats: Mutex<BTreeMap<String, Metric>>,
}

static STORE: LazyLock<Store> = LazyLock::new(Store::default);

/// The process-wide store.
pub fn store() -> &'static Store {
    &STORE
}

impl Store {
    pub fn counter(&self, name: impl Into<String>) -> Counter {
        let mut m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match m
            .entry(name.into())
            .or_insert_with(|| Metric::Counter(Counter::default()))
        {
            Metric::Counter(c) => c.clone(),
            // A name registered as another kind stays one; hand out a detached counter.
            _ => Counter::default(),
        }
    }

    pub fn histogram(&self, name: impl Into<String>) -> Histogram {
        let mut m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match m
            .entry(name.into())
            .or_insert_with(|| Metric::Histogram(Histogram::default()))
        {
            Metric::Histogram(h) => h.clone(),
            _ => Histogram::default(),
        }
    }

    /// Every histogram, sorted by name.
    pub fn histograms(&self) -> Vec<(String, HistogramSample)> {
        let m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .filter_map(|(name, metric)| match metric {
                Metric::Histogram(h) => Some((name.clone(), h.read())),
                _ => None,
            })
            .collect()
    }

    pub fn gauge(&self, name: impl Into<String>) -> Gauge {
        let mut m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match m
            .entry(name.into())
            .or_insert_with(|| Metric::Gauge(Gauge::default()))
        {
            Metric::Gauge(g) => g.clone(),
            _ => Gauge::default(),
        }
    }

    /// A snapshot, sorted by name.
    pub fn snapshot(&self) -> Vec<Sample> {
        let m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .filter_map(|(name, metric)| {
                Some(match metric {
                    Metric::Histogram(_) => return None,
                    Metric::Counter(c) => {
                        let v = c.value();
                        Sample {
                            name: name.clone(),
                            value: v as i64,
                            is_counter: true,
                            used: v > 0,
                        }
                    }
                    Metric::Gauge(g) => Sample {
                        name: name.clone(),
                        value: g.value(),
                        is_counter: false,
                        used: g.used(),
                    },
                })
            })
            .collect()
    }

    /// The value of one stat, for tests and admin.
    pub fn get(&self, name: &str) -> Option<i64> {
        let m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        m.get(name).map(|metric| match metric {
            Metric::Counter(c) => c.value() as i64,
            Metric::Gauge(g) => g.value(),
            Metric::Histogram(h) => h.read().count as i64,
        })
    }
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
