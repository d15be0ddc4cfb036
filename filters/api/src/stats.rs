//! Stats: counters, gauges and histograms with Envoy's names.
//!
//! Filters resolve their stats to handles when their factory is built; the hot path
//! only does a relaxed atomic add on a handle. The host serves them on its admin
//! endpoints (`/stats`, `/stats/prometheus`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The current count.
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
    /// Adds one.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    /// Subtracts one.
    #[inline]
    pub fn dec(&self) {
        self.add(-1);
    }
    /// Adds `n` (which may be negative).
    #[inline]
    pub fn add(&self, n: i64) {
        self.0.v.fetch_add(n, Ordering::Relaxed);
        if !self.0.used.load(Ordering::Relaxed) {
            self.0.used.store(true, Ordering::Relaxed);
        }
    }
    /// Sets the value.
    pub fn set(&self, n: i64) {
        self.0.v.store(n, Ordering::Relaxed);
        self.0.used.store(true, Ordering::Relaxed);
    }
    /// The current value.
    pub fn value(&self) -> i64 {
        self.0.v.load(Ordering::Relaxed)
    }
    /// Whether the gauge was ever set (Envoy hides unused gauges).
    pub fn used(&self) -> bool {
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
    /// Records a value (milliseconds for `*_time` stats).
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

    /// Records a duration in milliseconds.
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
    /// Cumulative counts, one per bound of [`BUCKETS`], then `+Inf`.
    pub cumulative: Vec<u64>,
    /// Number of values recorded.
    pub count: u64,
    /// Sum of the values recorded.
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
/// A stat of any kind.
pub enum Metric {
    /// A counter.
    Counter(Counter),
    /// A gauge.
    Gauge(Gauge),
    /// A histogram.
    Histogram(Histogram),
}

/// One stat as read for output.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Full stat name.
    pub name: String,
    /// Current value.
    pub value: i64,
    /// A counter (else a gauge).
    pub is_counter: bool,
    /// Whether it was ever touched.
    pub used: bool,
}

/// A set of stats by full name; the host keeps one for the process.
///
/// ```
/// let store = legate_filter_api::stats::Store::default();
/// store.counter("http.in.fault.aborts_injected").inc();
/// assert_eq!(store.get("http.in.fault.aborts_injected"), Some(1));
/// ```
///
/// All stats of the process, by full name. Stats outlive config versions, as in
/// Envoy, so a reload keeps counting where it left off.
#[derive(Default)]
pub struct Store {
    stats: Mutex<BTreeMap<String, Metric>>,
}

impl Store {
    /// The counter named `name`, created at zero on first use.
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

    /// The histogram named `name`, created empty on first use.
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

    /// The gauge named `name`, created at zero on first use.
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
