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
