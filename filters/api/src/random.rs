//! Randomness for filters' decisions (fault percentages, sampling).
//!
//! Each worker thread has its own generator, so drawing a number takes no lock.
//! It is seeded from the OS unless the host seeds it (`--random-seed`), which
//! makes percentage decisions repeatable in tests.

use std::cell::RefCell;

thread_local! {
    static RNG: RefCell<fastrand::Rng> = RefCell::new(fastrand::Rng::new());
}

/// Seeds this thread's generator.
///
/// ```
/// use legate_filter_api::random;
/// random::seed(7);
/// let a = random::u64();
/// random::seed(7);
/// assert_eq!(random::u64(), a);
/// ```
pub fn seed(seed: u64) {
    RNG.with(|r| r.borrow_mut().seed(seed));
}

/// A uniformly random `u64` from this thread's generator.
///
/// ```
/// let _roll = legate_filter_api::random::u64() % 100;
/// ```
pub fn u64() -> u64 {
    RNG.with(|r| r.borrow_mut().u64(..))
}

/// Envoy's `FractionalPercent`: `numerator` out of `denominator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Percentage {
    /// How many out of `denominator`; above it means always.
    pub numerator: u32,
    /// 100, 10 000 or 1 000 000 (`HUNDRED`, `TEN_THOUSAND`, `MILLION`).
    pub denominator: u32,
}

impl Percentage {
    /// Envoy's default when a `percentage` is absent: 0 out of 100, so never.
    pub const NEVER: Percentage = Percentage {
        numerator: 0,
        denominator: 100,
    };

    /// Always: 100 out of 100.
    pub const ALWAYS: Percentage = Percentage {
        numerator: 100,
        denominator: 100,
    };

    /// Whether a uniformly random `roll` falls within the percentage.
    ///
    /// ```
    /// use legate_filter_api::random::Percentage;
    /// let half = Percentage { numerator: 50, denominator: 100 };
    /// assert!(half.hit(149) && !half.hit(150));
    /// ```
    pub fn hit(self, roll: u64) -> bool {
        roll % u64::from(self.denominator.max(1)) < u64::from(self.numerator)
    }

    /// Draws from this worker's generator ([`u64`]).
    pub fn roll(self) -> bool {
        self.numerator > 0 && self.hit(u64())
    }
}
