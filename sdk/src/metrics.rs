//! Metrics that show in the proxy's `/stats` as `wasmcustom.<name>` (and in
//! `/stats/prometheus` without the prefix). Define them once, e.g. in
//! [`crate::HttpPlugin::configure`], and keep them.
//!
//! ```
//! use legate_sdk::metrics::Counter;
//! let denied = Counter::new("myfilter.denied");
//! denied.increment(1);
//! ```

use crate::host;

/// A counter: it only goes up.
///
/// ```
/// let c = legate_sdk::metrics::Counter::new("requests");
/// c.increment(2);
/// ```
pub struct Counter(host::Metric);

impl Counter {
    /// Defines the counter `name`, or finds it.
    ///
    /// ```
    /// let _ = legate_sdk::metrics::Counter::new("hits");
    /// ```
    pub fn new(name: &str) -> Counter {
        Counter(host::Metric::counter(name))
    }

    /// Adds `delta`.
    ///
    /// ```
    /// legate_sdk::metrics::Counter::new("hits").increment(1);
    /// ```
    pub fn increment(&self, delta: u64) {
        self.0.counter_add(delta)
    }

    /// The current value, over every worker.
    ///
    /// ```
    /// let c = legate_sdk::metrics::Counter::new("seen");
    /// c.increment(3);
    /// assert!(c.value() >= 3);
    /// ```
    pub fn value(&self) -> u64 {
        self.0.counter_value()
    }
}

/// A gauge: a value that goes up and down.
///
/// ```
/// let g = legate_sdk::metrics::Gauge::new("inflight");
/// g.add(1);
/// g.add(-1);
/// ```
pub struct Gauge(host::Metric);

impl Gauge {
    /// Defines the gauge `name`, or finds it.
    ///
    /// ```
    /// let _ = legate_sdk::metrics::Gauge::new("level");
    /// ```
    pub fn new(name: &str) -> Gauge {
        Gauge(host::Metric::gauge(name))
    }

    /// Sets the value.
    ///
    /// ```
    /// legate_sdk::metrics::Gauge::new("level").set(5);
    /// ```
    pub fn set(&self, value: i64) {
        self.0.gauge_set(value)
    }

    /// Adds `delta`, which may be negative.
    ///
    /// ```
    /// legate_sdk::metrics::Gauge::new("level").add(-2);
    /// ```
    pub fn add(&self, delta: i64) {
        self.0.gauge_add(delta)
    }

    /// The current value.
    ///
    /// ```
    /// let g = legate_sdk::metrics::Gauge::new("lvl");
    /// g.set(7);
    /// assert_eq!(g.value(), 7);
    /// ```
    pub fn value(&self) -> i64 {
        self.0.gauge_value()
    }
}

/// A histogram, with the proxy's default buckets.
///
/// ```
/// legate_sdk::metrics::Histogram::new("body_size").record(512);
/// ```
pub struct Histogram(host::Metric);

impl Histogram {
    /// Defines the histogram `name`, or finds it.
    ///
    /// ```
    /// let _ = legate_sdk::metrics::Histogram::new("sizes");
    /// ```
    pub fn new(name: &str) -> Histogram {
        Histogram(host::Metric::histogram(name))
    }

    /// Records a value.
    ///
    /// ```
    /// legate_sdk::metrics::Histogram::new("sizes").record(3);
    /// ```
    pub fn record(&self, value: u64) {
        self.0.histogram_record(value)
    }
}
