//! Data shared by every worker's instance of plugins with the same `vm_id`.
//!
//! ```
//! use legate_sdk::shared;
//! // Count across workers, retrying when another worker wrote in between.
//! loop {
//!     let (n, version) = match shared::get("hits") {
//!         Some(e) => (u64::from_le_bytes(e.value.try_into().unwrap_or([0; 8])), Some(e.version)),
//!         None => (0, None),
//!     };
//!     if shared::compare_and_swap("hits", version, &(n + 1).to_le_bytes()) {
//!         break;
//!     }
//! }
//! ```

/// A stored value and its version.
///
/// ```
/// legate_sdk::shared::set("k", b"v");
/// let e = legate_sdk::shared::get("k").unwrap();
/// assert_eq!(e.value, b"v");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The bytes.
    pub value: Vec<u8>,
    /// Changes on every write.
    pub version: u32,
}

/// The entry under `key`.
///
/// ```
/// assert!(legate_sdk::shared::get("never-set").is_none());
/// ```
pub fn get(key: &str) -> Option<Entry> {
    crate::host::shared_get(key)
}

/// Stores `value` under `key`.
///
/// ```
/// legate_sdk::shared::set("mode", b"on");
/// ```
pub fn set(key: &str, value: &[u8]) {
    crate::host::shared_set(key, value)
}

/// Stores `value` only if `key` is still at `expected` (`None`: absent).
/// Returns whether it stored.
///
/// ```
/// assert!(legate_sdk::shared::compare_and_swap("fresh", None, b"1"));
/// assert!(!legate_sdk::shared::compare_and_swap("fresh", None, b"2"));
/// ```
pub fn compare_and_swap(key: &str, expected: Option<u32>, value: &[u8]) -> bool {
    crate::host::shared_cas(key, expected, value)
}
