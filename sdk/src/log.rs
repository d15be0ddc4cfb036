//! Logging into the proxy's log, tagged with the plugin name.
//!
//! ```
//! legate_sdk::log::info("filter ready");
//! if legate_sdk::log::enabled(legate_sdk::log::Level::Debug) {
//!     legate_sdk::log::debug(&format!("expensive {}", 42));
//! }
//! ```

/// Log severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Finest detail.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected, handled.
    Warn,
    /// Something failed.
    Error,
}

/// Writes a line at `level`.
///
/// ```
/// legate_sdk::log::write(legate_sdk::log::Level::Warn, "careful");
/// ```
pub fn write(level: Level, message: &str) {
    crate::host::log(level, message);
}

/// Whether lines at `level` reach the log.
///
/// ```
/// let _ = legate_sdk::log::enabled(legate_sdk::log::Level::Trace);
/// ```
pub fn enabled(level: Level) -> bool {
    crate::host::log_enabled(level)
}

/// Writes a line at trace level.
///
/// ```
/// legate_sdk::log::trace("t");
/// ```
pub fn trace(message: &str) {
    write(Level::Trace, message)
}

/// Writes a line at debug level.
///
/// ```
/// legate_sdk::log::debug("d");
/// ```
pub fn debug(message: &str) {
    write(Level::Debug, message)
}

/// Writes a line at info level.
///
/// ```
/// legate_sdk::log::info("i");
/// ```
pub fn info(message: &str) {
    write(Level::Info, message)
}

/// Writes a line at warn level.
///
/// ```
/// legate_sdk::log::warn("w");
/// ```
pub fn warn(message: &str) {
    write(Level::Warn, message)
}

/// Writes a line at error level.
///
/// ```
/// legate_sdk::log::error("e");
/// ```
pub fn error(message: &str) {
    write(Level::Error, message)
}

/// Sends panic messages to the proxy's log before the instance traps.
pub(crate) fn install_panic_hook() {
    #[cfg(target_arch = "wasm32")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| error(&format!("filter panicked: {info}"))));
        });
    }
}
