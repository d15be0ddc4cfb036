//! The stat store: counters and gauges with Envoy's names.
//!
//! Stats are resolved to handles when config is built; the hot path only does a
//! relaxed atomic add on a handle. The admin thread reads them for output.

mod output;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

pub use output::{json, prometheus, text};

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

#[derive(Clone, Debug)]
pub enum Metric {
    Counter(Counter),
    Gauge(Gauge),
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
            // A name registered as a gauge stays one; hand out a detached counter.
            Metric::Gauge(_) => Counter::default(),
        }
    }

    pub fn gauge(&self, name: impl Into<String>) -> Gauge {
        let mut m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        match m
            .entry(name.into())
            .or_insert_with(|| Metric::Gauge(Gauge::default()))
        {
            Metric::Gauge(g) => g.clone(),
            Metric::Counter(_) => Gauge::default(),
        }
    }

    /// A snapshot, sorted by name.
    pub fn snapshot(&self) -> Vec<Sample> {
        let m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        m.iter()
            .map(|(name, metric)| match metric {
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
            .collect()
    }

    /// The value of one stat, for tests and admin.
    pub fn get(&self, name: &str) -> Option<i64> {
        let m = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        m.get(name).map(|metric| match metric {
            Metric::Counter(c) => c.value() as i64,
            Metric::Gauge(g) => g.value(),
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
