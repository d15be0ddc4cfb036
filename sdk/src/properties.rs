//! Facts about the stream or connection, by Envoy attribute path.
//!
//! ```
//! if let Some(addr) = legate_sdk::properties::get_str(&["source", "address"]) {
//!     legate_sdk::log::info(&format!("client {addr}"));
//! }
//! ```

/// The raw value at `path`: strings as UTF-8, integers as 8 bytes little-endian.
///
/// ```
/// let _ = legate_sdk::properties::get(&["request", "path"]);
/// ```
pub fn get(path: &[&str]) -> Option<Vec<u8>> {
    crate::host::property(path)
}

/// A string value.
///
/// ```
/// let _ = legate_sdk::properties::get_str(&["xds", "cluster_name"]);
/// ```
pub fn get_str(path: &[&str]) -> Option<String> {
    String::from_utf8(get(path)?).ok()
}

/// An integer value.
///
/// ```
/// let _ = legate_sdk::properties::get_int(&["source", "port"]);
/// ```
pub fn get_int(path: &[&str]) -> Option<i64> {
    Some(i64::from_le_bytes(get(path)?.try_into().ok()?))
}
